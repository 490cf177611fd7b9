//! The null bdev: completes every I/O without moving data (SPDK:
//! module/bdev/null). Reads return whatever the buffers held.

/// The module name bdevs of this module carry (`bdev_get_bdevs` `product_name` aside).
pub const MODULE: &str = "null";

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use rspdk_bdev::Bdev;
use rspdk_bdev::BdevIo;
use rspdk_bdev::{bdev_register, bdev_unregister, BackendChannel, BdevBackend};
use rspdk_bdev::{BdevError, BdevProps, IoStatus, IoType};

/// Parameters of `bdev_null_create`, as SPDK names them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NullOpts {
    /// Bdev name.
    pub name: String,
    /// Number of blocks.
    pub num_blocks: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Physical block size (reported only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_block_size: Option<u32>,
    /// UUID; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<uuid::Uuid>,
    /// Metadata size (only 0 is supported).
    #[serde(default)]
    pub md_size: u32,
    /// DIF type (only 0 is supported).
    #[serde(default)]
    pub dif_type: u8,
    /// DIF at the head of metadata (only false is supported).
    #[serde(default)]
    pub dif_is_head_of_md: bool,
    /// Protection information format (only 0 is supported: no DIF).
    #[serde(default)]
    pub dif_pi_format: u32,
    /// Preferred write alignment in blocks (reported to consumers, e.g.
    /// NVMe-oF's NPWA).
    #[serde(default)]
    pub preferred_write_alignment: u32,
    /// Preferred write granularity in blocks (NVMe NPWG).
    #[serde(default)]
    pub preferred_write_granularity: u32,
    /// Optimal write size in blocks (NVMe NOWS).
    #[serde(default)]
    pub optimal_write_size: u32,
    /// Preferred unmap alignment in blocks (NVMe NPDA).
    #[serde(default)]
    pub preferred_unmap_alignment: u32,
    /// Preferred unmap granularity in blocks (NVMe NPDG).
    #[serde(default)]
    pub preferred_unmap_granularity: u32,
}

struct NullBackend {
    opts: std::sync::Mutex<NullOpts>,
}

struct NullChannel;

/// Creates a null bdev.
pub fn create(opts: NullOpts) -> Result<Bdev, BdevError> {
    if opts.md_size != 0 || opts.dif_type != 0 || opts.dif_is_head_of_md || opts.dif_pi_format != 0
    {
        return Err(BdevError::InvalidParam(
            "metadata and DIF (md_size, dif_type, dif_is_head_of_md, dif_pi_format) are not supported: omit them or give 0/false".into(),
        ));
    }
    let mut props = BdevProps::new(&opts.name, opts.block_size, opts.num_blocks, "Null disk");
    if let Some(u) = opts.uuid {
        props.uuid = u;
    }
    props.physical_block_size = opts.physical_block_size.unwrap_or(0);
    props.preferred_write_alignment = opts.preferred_write_alignment;
    props.preferred_write_granularity = opts.preferred_write_granularity;
    props.optimal_write_size = opts.optimal_write_size;
    props.preferred_unmap_alignment = opts.preferred_unmap_alignment;
    props.preferred_unmap_granularity = opts.preferred_unmap_granularity;
    let mut opts = opts;
    opts.uuid = Some(props.uuid);
    bdev_register(
        props,
        MODULE,
        Box::new(NullBackend {
            opts: std::sync::Mutex::new(opts),
        }),
    )
}

/// Deletes a null bdev.
pub fn delete(name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    match rspdk_bdev::bdev_get(name) {
        Some(b) if b.module_name() == MODULE => bdev_unregister(name, done),
        Some(_) => Err(BdevError::InvalidParam(format!(
            "bdev '{name}' is not a null bdev"
        ))),
        None => Err(BdevError::NotFound(name.to_string())),
    }
}

/// Resizes a null bdev to `new_size_mib` MiB (SPDK: `bdev_null_resize`);
/// shrinking is refused as SPDK does.
pub fn resize(name: &str, new_size_mib: u64) -> Result<(), BdevError> {
    let bdev = rspdk_bdev::bdev_get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    if bdev.module_name() != "null" {
        return Err(BdevError::InvalidParam(format!(
            "bdev '{name}' is not a null bdev"
        )));
    }
    let bs = bdev.block_size() as u64;
    let new_blocks = new_size_mib
        .checked_mul(1 << 20)
        .map(|b| b / bs)
        .ok_or_else(|| {
            BdevError::InvalidParam(format!(
                "new_size {new_size_mib} MiB overflows 64 bits of bytes: give at most {} MiB",
                u64::MAX >> 20
            ))
        })?;
    if new_blocks < bdev.num_blocks() {
        return Err(BdevError::InvalidParam(format!(
            "new size {new_size_mib} MiB is smaller than the current {} MiB: null bdevs only grow",
            (bdev.num_blocks() * bs) >> 20
        )));
    }
    bdev.resize(new_blocks)
}

impl BdevBackend for NullBackend {
    fn create_channel(&self) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(NullChannel))
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        matches!(
            io_type,
            IoType::Read
                | IoType::Write
                | IoType::WriteZeroes
                | IoType::Flush
                | IoType::Reset
                | IoType::Unmap
        )
    }

    fn write_config_json(&self, props: &BdevProps) -> Option<Value> {
        let mut o = self.opts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        o.name = props.name.clone();
        o.uuid = Some(props.uuid);
        if let Some(b) = rspdk_bdev::bdev_get(&props.name) {
            o.num_blocks = b.num_blocks();
        }
        Some(json!({"method": "bdev_null_create", "params": o}))
    }
}

impl BackendChannel for NullChannel {
    #[inline]
    fn submit(&mut self, io: BdevIo) {
        io.complete(IoStatus::Success);
    }
}

/// The null bdev module, for the app's module list
/// (`rspdk_bdev::module_register`).
#[derive(Debug, Default)]
pub struct NullModule;

impl rspdk_bdev::BdevModule for NullModule {
    fn name(&self) -> &'static str {
        MODULE
    }

    fn register_rpcs(&self, reg: &rspdk_rpc::RpcRegistry) {
        register_rpcs(reg)
    }

    fn log_flags(&self) -> &'static [(&'static str, &'static str)] {
        &[("bdev_null", "rspdk_bdev_null")]
    }
}

/// `bdev_null_resize` params.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NullResizeParams {
    name: String,
    new_size: u64,
}

/// Registers `bdev_null_create`, `bdev_null_delete` and `bdev_null_resize`.
fn register_rpcs(reg: &rspdk_rpc::RpcRegistry) {
    use rspdk_bdev::rpc::{delete_method, method, NameParam};
    use serde_json::json;
    let rt = rspdk_rpc::StateMask::RUNTIME;
    method(reg, "bdev_null_create", rt, |o: NullOpts| {
        create(o).map(|b| json!(b.name()))
    });
    delete_method(reg, "bdev_null_delete", |p: &NameParam| &p.name, delete);
    method(reg, "bdev_null_resize", rt, |p: NullResizeParams| {
        resize(&p.name, p.new_size).map(|()| json!(true))
    });
}
