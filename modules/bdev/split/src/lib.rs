//! The split bdev (SPDK: module/bdev/split): `<base>p0` .. `<base>p<n-1>`,
//! virtual bdevs over consecutive ranges of one base, which they claim
//! together. I/O is remapped by adding the part's first block.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use rspdk_bdev::rpc::{delete_method, method};
use rspdk_bdev::vbdev::{check_free, complete_upper, open_base, BaseDesc, BaseLink};
use rspdk_bdev::Bdev;
use rspdk_bdev::BdevIo;
use rspdk_bdev::{bdev_register, bdev_unregister, BackendChannel, BdevBackend};
use rspdk_bdev::{BdevError, BdevProps, IoType};

/// The module name.
pub const MODULE: &str = "split";

/// Parameters of `bdev_split_create`, as SPDK names them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SplitOpts {
    /// The base bdev.
    pub base_bdev: String,
    /// How many parts.
    pub split_count: u32,
    /// Size of each part in MiB; 0 or absent: the base divided evenly.
    #[serde(default)]
    pub split_size_mb: u64,
}

/// Bases that are split, with their parts' names.
static SPLITS: Mutex<BTreeMap<String, Vec<String>>> = Mutex::new(BTreeMap::new());

fn splits() -> std::sync::MutexGuard<'static, BTreeMap<String, Vec<String>>> {
    SPLITS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Splits `base_bdev` (SPDK: `create_vbdev_split`); returns the parts' names.
pub fn create(opts: SplitOpts) -> Result<Vec<String>, BdevError> {
    if opts.split_count == 0 {
        return Err(BdevError::InvalidParam(
            "split_count 0: give the number of parts, at least 1".into(),
        ));
    }
    let base = rspdk_bdev::bdev_get(&opts.base_bdev).ok_or_else(|| BdevError::Module {
        errno: libc::ENODEV,
        message: format!(
            "base_bdev '{}' does not exist: create it first (bdev_get_bdevs lists the bdevs)",
            opts.base_bdev
        ),
    })?;
    if splits().contains_key(base.name()) {
        return Err(BdevError::Module {
            errno: libc::EEXIST,
            message: format!(
                "base_bdev '{}' is already split: bdev_split_delete it first",
                base.name()
            ),
        });
    }
    let bs = base.block_size() as u64;
    let total = base.num_blocks();
    let count = opts.split_count as u64;
    let part_blocks = if opts.split_size_mb == 0 {
        total / count
    } else {
        let want = opts
            .split_size_mb
            .checked_mul(1 << 20)
            .map(|b| b / bs)
            .ok_or_else(|| {
                BdevError::InvalidParam(format!(
                    "split_size_mb {} is too large: give at most {} MiB per part for base bdev '{}'",
                    opts.split_size_mb,
                    ((total * bs) >> 20) / count,
                    base.name()
                ))
            })?;
        if want.checked_mul(count).is_none_or(|n| n > total) {
            return Err(BdevError::InvalidParam(format!(
                "split_count {count} x split_size_mb {} MiB exceeds base bdev '{}' ({} MiB): give at most {} MiB per part, or fewer parts",
                opts.split_size_mb,
                base.name(),
                (total * bs) >> 20,
                ((total * bs) >> 20) / count
            )));
        }
        want
    };
    if part_blocks == 0 {
        return Err(BdevError::InvalidParam(format!(
            "base bdev '{}' ({total} blocks) is too small for {count} parts: give split_count at most {total}",
            base.name()
        )));
    }
    let names: Vec<String> = (0..count).map(|i| format!("{}p{i}", base.name())).collect();
    for n in &names {
        check_free(n)?;
    }
    let base_name = base.name().to_string();
    let on_remove_base = base_name.clone();
    let desc = open_base(&base_name, MODULE, move || {
        // The base is going away: so do its parts.
        let parts = splits().remove(&on_remove_base).unwrap_or_default();
        for p in parts {
            let _ = bdev_unregister(&p, || {});
        }
    })?;
    let desc = Arc::new(desc);
    splits().insert(base_name.clone(), names.clone());
    let mut made: Vec<Bdev> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let bp = base.props();
        let mut props = BdevProps::new(n, bp.block_size, part_blocks, "Split Disk");
        props.required_alignment = bp.required_alignment;
        props.write_unit_size = bp.write_unit_size;
        props.max_transfer_blocks = bp.max_transfer_blocks;
        props.write_cache = bp.write_cache;
        let backend = SplitBackend {
            base: BaseDesc::from_arc(desc.clone()),
            base_bdev: base.clone(),
            offset_blocks: i as u64 * part_blocks,
            first: i == 0,
            opts: opts.clone(),
        };
        match bdev_register(props, MODULE, Box::new(backend)) {
            Ok(b) => made.push(b),
            Err(e) => {
                splits().remove(&base_name);
                for b in made {
                    let _ = bdev_unregister(b.name(), || {});
                }
                return Err(e);
            }
        }
    }
    Ok(names)
}

/// Deletes every part of `base_bdev`'s split (SPDK:
/// `vbdev_split_destruct`); `done` runs when all are gone.
pub fn delete(base_bdev: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    let parts = splits()
        .remove(base_bdev)
        .ok_or_else(|| BdevError::Module {
            errno: libc::ENODEV,
            message: format!(
            "base_bdev '{base_bdev}' is not split: give the base bdev that bdev_split_create split"
        ),
        })?;
    let left = Arc::new(AtomicUsize::new(parts.len()));
    let done = Arc::new(Mutex::new(Some(done)));
    let finish = {
        let done = done.clone();
        move || {
            if let Some(d) = done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                d();
            }
        }
    };
    for p in parts {
        let (l2, f2) = (left.clone(), finish.clone());
        let one = move || {
            if l2.fetch_sub(1, Ordering::AcqRel) == 1 {
                f2();
            }
        };
        if bdev_unregister(&p, one).is_err() && left.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Already gone (e.g. removed with its base).
            finish();
        }
    }
    Ok(())
}

struct SplitBackend {
    base: BaseDesc,
    base_bdev: Bdev,
    offset_blocks: u64,
    /// Part 0 writes the split's config (once for all parts).
    first: bool,
    opts: SplitOpts,
}

struct SplitChannel {
    base: Rc<BaseLink>,
    offset_blocks: u64,
}

impl BdevBackend for SplitBackend {
    fn create_channel(&self) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(SplitChannel {
            base: self.base.link()?,
            offset_blocks: self.offset_blocks,
        }))
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        self.base_bdev.io_type_supported(io_type)
    }

    fn dump_info_json(&self) -> Value {
        json!({"split": {"base_bdev": self.opts.base_bdev, "offset_blocks": self.offset_blocks}})
    }

    fn write_config_json(&self, _props: &BdevProps) -> Option<Value> {
        self.first
            .then(|| json!({"method": "bdev_split_create", "params": self.opts}))
    }

    fn destruct(&self) {
        self.base.release();
    }
}

impl BackendChannel for SplitChannel {
    #[inline]
    fn submit(&mut self, io: BdevIo) {
        let off = io.offset_blocks() + self.offset_blocks;
        self.base.forward(io, off, complete_upper);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    base_bdev: String,
}

/// Registers `bdev_split_create` and `bdev_split_delete`.
fn register_rpcs(reg: &rspdk_rpc::RpcRegistry) {
    let rt = rspdk_rpc::StateMask::RUNTIME;
    method(reg, "bdev_split_create", rt, |o: SplitOpts| {
        create(o).map(|n| json!(n))
    });
    delete_method(
        reg,
        "bdev_split_delete",
        |p: &DeleteParams| &p.base_bdev,
        delete,
    );
}

/// The split bdev module, for the app's module list
/// (`rspdk_bdev::module_register`).
#[derive(Debug, Default)]
pub struct SplitModule;

impl rspdk_bdev::BdevModule for SplitModule {
    fn name(&self) -> &'static str {
        MODULE
    }

    fn register_rpcs(&self, reg: &rspdk_rpc::RpcRegistry) {
        register_rpcs(reg)
    }

    fn log_flags(&self) -> &'static [(&'static str, &'static str)] {
        &[("vbdev_split", "rspdk_bdev_split")]
    }
}
