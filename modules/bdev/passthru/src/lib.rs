//! The passthru bdev (SPDK: module/bdev/passthru): a virtual bdev that
//! claims its base and forwards every I/O unchanged. The template for
//! virtual bdevs.
//!
//! As in SPDK, `bdev_passthru_create` on a base that does not exist yet
//! succeeds: the configuration is remembered and the passthru is built by
//! the module's `examine` when the base appears. A hot-removed base takes
//! its passthru with it (the configuration stays, so the passthru comes
//! back with the base).

use std::rc::Rc;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use rspdk_bdev::rpc::{delete_method, method, NameParam};
use rspdk_bdev::vbdev::{check_free, complete_upper, open_base, BaseDesc, BaseLink};
use rspdk_bdev::Bdev;
use rspdk_bdev::BdevIo;
use rspdk_bdev::{bdev_register, bdev_unregister, BackendChannel, BdevBackend, BdevModule};
use rspdk_bdev::{BdevError, BdevProps, IoType};

/// The module name (shown as the base's claimer).
pub const MODULE: &str = "passthru";

/// Parameters of `bdev_passthru_create`, as SPDK names them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PassthruOpts {
    /// The base bdev (need not exist yet).
    pub base_bdev_name: String,
    /// The passthru bdev's name.
    pub name: String,
    /// UUID; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<uuid::Uuid>,
}

/// Configured passthrus, built or waiting for their base.
static CONFIGS: Mutex<Vec<PassthruOpts>> = Mutex::new(Vec::new());

fn configs() -> std::sync::MutexGuard<'static, Vec<PassthruOpts>> {
    CONFIGS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The passthru bdev module, for the app's module list
/// (`rspdk_bdev::module_register`): it examines new bdevs to build the
/// passthrus waiting for them.
#[derive(Debug, Default)]
pub struct PassthruModule;

impl BdevModule for PassthruModule {
    fn name(&self) -> &'static str {
        MODULE
    }

    fn register_rpcs(&self, reg: &rspdk_rpc::RpcRegistry) {
        register_rpcs(reg)
    }

    fn log_flags(&self) -> &'static [(&'static str, &'static str)] {
        &[("vbdev_passthru", "rspdk_bdev_passthru")]
    }

    fn examine(&self, bdev: &Bdev) {
        let waiting: Vec<PassthruOpts> = configs()
            .iter()
            .filter(|c| c.base_bdev_name == bdev.name() && rspdk_bdev::bdev_get(&c.name).is_none())
            .cloned()
            .collect();
        for c in waiting {
            match build(&c) {
                Ok(_) => {
                    tracing::info!(passthru = %c.name, base = %c.base_bdev_name, "passthru created on its base's arrival")
                }
                Err(e) => {
                    tracing::error!(passthru = %c.name, error = %e, "passthru creation failed")
                }
            }
        }
    }
}

/// Creates a passthru bdev (SPDK: `bdev_passthru_create_disk`). Returns
/// its name; if the base does not exist yet, creation is deferred until it
/// appears.
pub fn create(opts: PassthruOpts) -> Result<String, BdevError> {
    check_free(&opts.name)?;
    if opts.base_bdev_name.is_empty() {
        return Err(BdevError::InvalidParam("base_bdev_name is empty".into()));
    }
    // Logged below while creation waits for the base: refuse log forgery.
    rspdk_bdev::check_name(&opts.base_bdev_name)?;
    {
        let mut c = configs();
        if c.iter().any(|x| x.name == opts.name) {
            return Err(BdevError::Exists(opts.name.clone()));
        }
        c.push(opts.clone());
    }
    if rspdk_bdev::bdev_get(&opts.base_bdev_name).is_none() {
        tracing::info!(passthru = %opts.name, base = %opts.base_bdev_name,
            "base bdev not found: passthru creation deferred until it appears");
        return Ok(opts.name);
    }
    match build(&opts) {
        Ok(b) => Ok(b.name().to_string()),
        Err(e) => {
            configs().retain(|x| x.name != opts.name);
            Err(e)
        }
    }
}

fn build(opts: &PassthruOpts) -> Result<Bdev, BdevError> {
    let name = opts.name.clone();
    let desc = open_base(&opts.base_bdev_name, MODULE, move || {
        let _ = bdev_unregister(&name, || {});
    })?;
    let base = desc.bdev().clone();
    let mut props = BdevProps::new(&opts.name, base.block_size(), base.num_blocks(), "passthru");
    let bp = base.props();
    props.required_alignment = bp.required_alignment;
    props.write_unit_size = bp.write_unit_size;
    props.optimal_io_boundary = bp.optimal_io_boundary;
    props.max_transfer_blocks = bp.max_transfer_blocks;
    props.write_cache = bp.write_cache;
    if let Some(u) = opts.uuid {
        props.uuid = u;
    }
    let mut opts = opts.clone();
    opts.uuid = Some(props.uuid);
    bdev_register(
        props,
        MODULE,
        Box::new(PassthruBackend {
            base: BaseDesc::new(desc),
            base_bdev: base,
            opts,
        }),
    )
}

/// Deletes a passthru bdev (and its configuration); `done` runs when it is
/// gone.
pub fn delete(name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    let had_config = {
        let mut c = configs();
        let before = c.len();
        c.retain(|x| x.name != name);
        c.len() != before
    };
    match rspdk_bdev::bdev_get(name) {
        Some(b) if b.module_name() == MODULE => bdev_unregister(name, done),
        Some(_) => Err(BdevError::InvalidParam(format!(
            "bdev '{name}' is not a passthru bdev"
        ))),
        None if had_config => {
            done();
            Ok(())
        }
        None => Err(BdevError::NotFound(name.to_string())),
    }
}

struct PassthruBackend {
    base: BaseDesc,
    base_bdev: Bdev,
    opts: PassthruOpts,
}

struct PassthruChannel(Rc<BaseLink>);

impl BdevBackend for PassthruBackend {
    fn create_channel(&self) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(PassthruChannel(self.base.link()?)))
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        self.base_bdev.io_type_supported(io_type)
    }

    fn dump_info_json(&self) -> Value {
        json!({"passthru": {"name": self.opts.name, "base_bdev_name": self.opts.base_bdev_name}})
    }

    fn write_config_json(&self, props: &BdevProps) -> Option<Value> {
        let mut o = self.opts.clone();
        o.uuid = Some(props.uuid);
        Some(json!({"method": "bdev_passthru_create", "params": o}))
    }

    fn destruct(&self) {
        self.base.release();
    }
}

impl BackendChannel for PassthruChannel {
    #[inline]
    fn submit(&mut self, io: BdevIo) {
        let off = io.offset_blocks();
        self.0.forward(io, off, complete_upper);
    }
}

/// Registers `bdev_passthru_create` and `bdev_passthru_delete`.
fn register_rpcs(reg: &rspdk_rpc::RpcRegistry) {
    let rt = rspdk_rpc::StateMask::RUNTIME;
    method(reg, "bdev_passthru_create", rt, |o: PassthruOpts| {
        create(o).map(|n| json!(n))
    });
    delete_method(reg, "bdev_passthru_delete", |p: &NameParam| &p.name, delete);
}
