//! Bdevs, the module interface, registration, descriptors and claims.
//!
//! A module provides a [`BdevBackend`] per bdev (SPDK: `spdk_bdev_fn_table`)
//! and registers it with [`bdev_register`]. Consumers [`bdev_open`] it,
//! getting a [`BdevDesc`] with an event callback (hot remove, resize) that
//! runs on the opening thread, then a per-thread [`crate::BdevIoChannel`]
//! to submit I/O through. Virtual bdevs are built in a module's
//! [`BdevModule::examine`], which sees every new bdev, and take their base
//! with a claim ([`BdevDesc::claim`]) so no one else can write it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use rspdk_thread::{IoDevice, IoDeviceKey, Thread, ThreadHandle};
use serde_json::{json, Value};

use crate::channel::{self, BdevIoChannel, ChannelCtx};
use crate::io::BdevIo;
use crate::qos::Qos;
use crate::stats::IoStats;
use crate::types::{BdevError, BdevEvent, BdevProps, IoType};

/// One bdev's implementation (SPDK: `struct spdk_bdev_fn_table`). Shared by
/// every thread: per-thread state lives in the channels it creates.
pub trait BdevBackend: Send + Sync + 'static {
    /// Creates the calling thread's channel (SPDK: `get_io_channel`). Runs
    /// on that thread, once per thread that uses the bdev.
    fn create_channel(&self) -> Result<Box<dyn BackendChannel>, BdevError>;

    /// Whether the backend executes `io_type` (SPDK: `io_type_supported`).
    fn io_type_supported(&self, io_type: IoType) -> bool;

    /// Module-specific details for `bdev_get_bdevs` (`driver_specific`).
    fn dump_info_json(&self) -> Value {
        Value::Null
    }

    /// The RPC call that re-creates this bdev (SPDK: `write_config_json`),
    /// e.g. `{"method": "bdev_malloc_create", "params": {...}}`; `None` for
    /// bdevs that are re-created some other way (examine).
    fn write_config_json(&self, props: &BdevProps) -> Option<Value>;

    /// Releases the backend's resources when the bdev is unregistered
    /// (SPDK: `destruct`); called once, after the last descriptor closed.
    fn destruct(&self) {}
}

/// A backend's per-thread channel: where I/O is executed.
pub trait BackendChannel {
    /// Starts `io`. The backend completes it exactly once with
    /// [`BdevIo::complete`], now or later, on this thread.
    fn submit(&mut self, io: BdevIo);
}

/// A bdev module (SPDK: `struct spdk_bdev_module`): its RPC methods, log
/// flags, save_config entries, examine and shutdown. Each module crate
/// (`modules/bdev/*`) has one; the app registers the modules it ships with
/// [`module_register`], in one list, before the framework starts.
pub trait BdevModule: Send + Sync + 'static {
    /// The module's name (`bdev_get_bdevs` shows it as the claimer).
    fn name(&self) -> &'static str;

    /// Told of every bdev registered after the module (SPDK:
    /// `examine_config`/`examine_disk`): a virtual-bdev module may open
    /// and claim it and register bdevs on top. Runs on the registering thread.
    fn examine(&self, _bdev: &Bdev) {}

    /// Module-wide RPC calls for save_config (before the bdevs' own).
    fn config_json(&self) -> Vec<Value> {
        Vec::new()
    }

    /// Registers the module's RPC methods (SPDK's `bdev_<module>_*`): the
    /// one place a module adds methods, called once when the `bdev`
    /// subsystem registers its own.
    fn register_rpcs(&self, _reg: &rspdk_rpc::RpcRegistry) {}

    /// SPDK's log flags of the module (`-L FLAG`, `log_set_flag`), each
    /// with the tracing target whose debug logs it enables.
    fn log_flags(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// Called at subsystem shutdown.
    fn fini(&self) {}
}

static MODULES: Mutex<Vec<Arc<dyn BdevModule>>> = Mutex::new(Vec::new());

/// Registers a module so that it examines new bdevs.
pub fn module_register(module: Arc<dyn BdevModule>) {
    let mut m = lock(&MODULES);
    if !m.iter().any(|x| x.name() == module.name()) {
        m.push(module);
    }
}

/// The registered modules, in registration order.
pub fn modules() -> Vec<Arc<dyn BdevModule>> {
    lock(&MODULES).clone()
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Registered,
    Removing,
}

struct DescEntry {
    id: u64,
    thread: Option<ThreadHandle>,
    write: bool,
    on_event: Arc<dyn Fn(BdevEvent) + Send + Sync>,
}

struct BdevState {
    status: Status,
    descs: Vec<DescEntry>,
    claim: Option<String>,
    unregister_done: Vec<Box<dyn FnOnce() + Send>>,
}

/// What every thread shares about one bdev.
pub(crate) struct BdevShared {
    pub props: BdevProps,
    pub num_blocks: AtomicU64,
    pub backend: Box<dyn BdevBackend>,
    pub module_name: &'static str,
    state: Mutex<BdevState>,
    pub io_device: OnceLock<IoDevice<ChannelCtx>>,
    /// Statistics of channels that are gone.
    pub retired_stats: Mutex<IoStats>,
    pub qos: Qos,
    pub removing: std::sync::atomic::AtomicBool,
    /// `io_type_supported` for every type, asked once at registration
    /// (bit `IoType as usize`), so the I/O path makes no virtual call.
    pub supported: u32,
    /// Histogram settings; channels pick them up when `hist_gen` moves.
    pub hist: Mutex<crate::histogram::HistConfig>,
    /// Bumped by every `bdev_enable_histogram`.
    pub hist_gen: AtomicU64,
    /// Queue depth sampling (`bdev_set_qd_sampling_period`).
    pub qd: Mutex<QdState>,
}

/// Queue depth sampling state (SPDK: `measured_queue_depth`, `io_time`,
/// `weighted_io_time`, `period`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct QdState {
    /// Sampling period in microseconds; 0: off.
    pub period_us: u64,
    /// The last sample: I/Os outstanding over every channel.
    pub queue_depth: u64,
    /// Sum of the periods (us) whose sample was not idle.
    pub io_time: u64,
    /// Sum of period x queue depth over the samples.
    pub weighted_io_time: u64,
    /// A sample is being taken.
    pub in_progress: bool,
}

/// A registered block device. Cheap to clone.
#[derive(Clone)]
pub struct Bdev(pub(crate) Arc<BdevShared>);

impl std::fmt::Debug for Bdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bdev({})", self.0.props.name)
    }
}

struct Registry {
    by_name: BTreeMap<String, Bdev>,
    /// Registration order, for listings and save_config.
    order: Vec<String>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    by_name: BTreeMap::new(),
    order: Vec::new(),
});

static DESC_IDS: AtomicU64 = AtomicU64::new(1);
static DEVICE_KEYS: AtomicUsize = AtomicUsize::new(0x6264_0000);

/// Registers a bdev made by `module` and lets every module examine it
/// (SPDK: `spdk_bdev_register`). Must run on an rspdk thread.
pub fn bdev_register(
    props: BdevProps,
    module: &'static str,
    backend: Box<dyn BdevBackend>,
) -> Result<Bdev, BdevError> {
    validate_props(&props)?;
    let bdev = {
        let mut reg = lock(&REGISTRY);
        for n in std::iter::once(&props.name).chain(props.aliases.iter()) {
            if reg.by_name.contains_key(n) {
                return Err(BdevError::Exists(n.clone()));
            }
        }
        if let Some(other) = reg.by_name.values().find(|b| b.0.props.uuid == props.uuid) {
            return Err(BdevError::UuidExists {
                uuid: props.uuid,
                bdev: other.name().to_string(),
            });
        }
        let supported = IoType::ALL
            .iter()
            .filter(|t| backend.io_type_supported(**t))
            .fold(0u32, |m, t| m | 1 << t.index());
        let shared = Arc::new(BdevShared {
            supported,
            num_blocks: AtomicU64::new(props.num_blocks),
            props,
            backend,
            module_name: module,
            state: Mutex::new(BdevState {
                status: Status::Registered,
                descs: Vec::new(),
                claim: None,
                unregister_done: Vec::new(),
            }),
            io_device: OnceLock::new(),
            retired_stats: Mutex::new(IoStats::default()),
            qos: Qos::default(),
            removing: std::sync::atomic::AtomicBool::new(false),
            hist: Mutex::new(Default::default()),
            hist_gen: AtomicU64::new(0),
            qd: Mutex::new(QdState::default()),
        });
        let key = IoDeviceKey(DEVICE_KEYS.fetch_add(1, Ordering::Relaxed));
        let dev = channel::register_io_device(key, &shared)?;
        let _ = shared.io_device.set(dev);
        let bdev = Bdev(shared);
        for n in std::iter::once(&bdev.0.props.name).chain(bdev.0.props.aliases.iter()) {
            reg.by_name.insert(n.clone(), bdev.clone());
        }
        reg.order.push(bdev.0.props.name.clone());
        bdev
    };
    tracing::info!(bdev = %bdev.name(), module, "bdev registered");
    rspdk_event::notify::send("bdev_register", bdev.name());
    if auto_examine() || lock(&EXAMINE_ALLOW).iter().any(|n| n == bdev.name()) {
        for m in modules() {
            m.examine(&bdev);
        }
    }
    Ok(bdev)
}

/// Whether every new bdev is examined (SPDK: `bdev_auto_examine`, on by
/// default); when off, only bdevs named by [`examine_by_name`] are.
static AUTO_EXAMINE: AtomicBool = AtomicBool::new(true);
/// Bdev names to examine when auto examine is off (SPDK's examine
/// allowlist), in the order given.
static EXAMINE_ALLOW: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Turns examining of every new bdev on or off (`bdev_set_options`
/// `bdev_auto_examine`).
pub fn set_auto_examine(on: bool) {
    AUTO_EXAMINE.store(on, Ordering::Relaxed);
}

/// Whether every new bdev is examined.
pub fn auto_examine() -> bool {
    AUTO_EXAMINE.load(Ordering::Relaxed)
}

/// Examines the bdev `name` now if it exists, and whenever a bdev of that
/// name is registered later (SPDK: `spdk_bdev_examine`, RPC
/// `bdev_examine`). Only with auto examine off, as SPDK.
pub fn examine_by_name(name: &str) -> Result<(), BdevError> {
    if auto_examine() {
        return Err(BdevError::InvalidParam(
            "bdev_examine: auto examine is on, so every bdev is examined when it is registered; \
             turn it off first (bdev_set_options --no-auto-examine, before framework_start_init)"
                .into(),
        ));
    }
    {
        let mut allow = lock(&EXAMINE_ALLOW);
        if allow.iter().any(|n| n == name) {
            return Err(BdevError::Exists(format!(
                "{name} (already named for manual examine)"
            )));
        }
        allow.push(name.to_string());
    }
    if let Some(b) = bdev_get(name) {
        for m in modules() {
            m.examine(&b);
        }
    }
    Ok(())
}

/// The names given to [`examine_by_name`], in order (for `save_config`).
pub fn examine_allowlist() -> Vec<String> {
    lock(&EXAMINE_ALLOW).clone()
}

fn validate_props(p: &BdevProps) -> Result<(), BdevError> {
    if p.name.is_empty() {
        return Err(BdevError::InvalidParam("name is empty".into()));
    }
    for n in std::iter::once(&p.name).chain(p.aliases.iter()) {
        check_name(n)?;
    }
    if p.block_size == 0 || !p.block_size.is_power_of_two() || p.block_size < 512 {
        return Err(BdevError::InvalidParam(format!(
            "block_size {} must be a power of two and at least 512",
            p.block_size
        )));
    }
    if p.num_blocks == 0 {
        return Err(BdevError::InvalidParam("num_blocks is 0".into()));
    }
    check_size(p.num_blocks, p.block_size)?;
    if p.physical_block_size % 512 != 0 {
        return Err(BdevError::InvalidParam(format!(
            "physical_block_size {} must be a multiple of 512 (or omitted)",
            p.physical_block_size
        )));
    }
    if p.required_alignment == 0 || !p.required_alignment.is_power_of_two() {
        return Err(BdevError::InvalidParam(format!(
            "required_alignment {} must be a power of two",
            p.required_alignment
        )));
    }
    if p.write_unit_size == 0 {
        return Err(BdevError::InvalidParam("write_unit_size is 0".into()));
    }
    Ok(())
}

/// Refuses names that could forge log lines or terminal output: control
/// characters (newlines, ESC sequences, ...). Modules call it for any
/// user-given name they log before registering.
pub fn check_name(name: &str) -> Result<(), BdevError> {
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(BdevError::InvalidParam(format!(
            "name {name:?} contains the control character {c:?}: use printable characters only"
        )));
    }
    Ok(())
}

/// Refuses a block count whose byte size does not fit in 64 bits.
pub(crate) fn check_size(num_blocks: u64, block_size: u32) -> Result<u64, BdevError> {
    num_blocks.checked_mul(block_size as u64).ok_or_else(|| {
        BdevError::InvalidParam(format!(
            "num_blocks {num_blocks} x block_size {block_size} bytes overflows 64 bits: use at most {} blocks",
            u64::MAX / block_size.max(1) as u64
        ))
    })
}

/// Finds a bdev by name or alias (SPDK: `spdk_bdev_get_by_name`).
pub fn bdev_get(name: &str) -> Option<Bdev> {
    lock(&REGISTRY).by_name.get(name).cloned()
}

/// Every registered bdev, in registration order.
pub fn bdevs() -> Vec<Bdev> {
    let reg = lock(&REGISTRY);
    reg.order
        .iter()
        .filter_map(|n| reg.by_name.get(n).cloned())
        .collect()
}

/// Unregisters a bdev (SPDK: `spdk_bdev_unregister`): every open
/// descriptor is told [`BdevEvent::Remove`] on its thread; new I/O fails;
/// once the last descriptor closes and its channels are gone the backend is
/// destructed and `done` runs (on the thread that closed last).
pub fn bdev_unregister(name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    let bdev = bdev_get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    {
        let mut reg = lock(&REGISTRY);
        let real = bdev.0.props.name.clone();
        reg.by_name.retain(|_, b| !Arc::ptr_eq(&b.0, &bdev.0));
        reg.order.retain(|n| *n != real);
    }
    bdev.0.removing.store(true, Ordering::Release);
    let (events, finish_now) = {
        let mut st = lock(bdev.0.state());
        st.status = Status::Removing;
        st.unregister_done.push(Box::new(done));
        let events: Vec<_> = st
            .descs
            .iter()
            .map(|d| (d.thread.clone(), d.on_event.clone()))
            .collect();
        (events, st.descs.is_empty())
    };
    for (thread, cb) in events {
        match thread {
            Some(t) => {
                let _ = t.send_msg(move || cb(BdevEvent::Remove));
            }
            None => cb(BdevEvent::Remove),
        }
    }
    if finish_now {
        finish_unregister(&bdev);
    }
    Ok(())
}

fn finish_unregister(bdev: &Bdev) {
    let callbacks = std::mem::take(&mut lock(bdev.0.state()).unregister_done);
    bdev.0.backend.destruct();
    let name = bdev.name().to_string();
    let run = move || {
        tracing::info!(bdev = %name, "bdev unregistered");
        rspdk_event::notify::send("bdev_unregister", &name);
        for cb in callbacks {
            cb();
        }
    };
    match bdev.0.io_device.get() {
        Some(dev) if Thread::current().is_some() => dev.clone().unregister(run),
        _ => run(),
    }
}

impl BdevShared {
    fn state(&self) -> &Mutex<BdevState> {
        &self.state
    }
}

impl Bdev {
    /// The name.
    pub fn name(&self) -> &str {
        &self.0.props.name
    }

    /// The properties (block count as registered; see [`Bdev::num_blocks`]).
    pub fn props(&self) -> &BdevProps {
        &self.0.props
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.0.props.block_size
    }

    /// Current block count.
    pub fn num_blocks(&self) -> u64 {
        self.0.num_blocks.load(Ordering::Relaxed)
    }

    /// The module that registered it.
    pub fn module_name(&self) -> &'static str {
        self.0.module_name
    }

    /// True if `io_type` is supported.
    pub fn io_type_supported(&self, io_type: IoType) -> bool {
        self.0.backend.io_type_supported(io_type)
    }

    /// The module holding a claim on it.
    pub fn claimed_by(&self) -> Option<String> {
        lock(self.0.state()).claim.clone()
    }

    /// The backend's `write_config_json`.
    pub fn config_json(&self) -> Option<Value> {
        self.0.backend.write_config_json(&self.0.props)
    }

    /// Changes the block count and tells every descriptor (SPDK:
    /// `spdk_bdev_notify_blockcnt_change`).
    pub fn resize(&self, num_blocks: u64) -> Result<(), BdevError> {
        if num_blocks == 0 {
            return Err(BdevError::InvalidParam("new block count is 0".into()));
        }
        check_size(num_blocks, self.block_size())?;
        self.0.num_blocks.store(num_blocks, Ordering::Relaxed);
        let events: Vec<_> = lock(self.0.state())
            .descs
            .iter()
            .map(|d| (d.thread.clone(), d.on_event.clone()))
            .collect();
        for (thread, cb) in events {
            let ev = BdevEvent::Resize { num_blocks };
            match thread {
                Some(t) => {
                    let _ = t.send_msg(move || cb(ev));
                }
                None => cb(ev),
            }
        }
        Ok(())
    }

    /// The JSON object `bdev_get_bdevs` returns for this bdev, in SPDK's shape.
    pub fn info_json(&self) -> Value {
        let p = &self.0.props;
        let supported: serde_json::Map<String, Value> = IoType::ALL
            .iter()
            .map(|t| {
                (
                    t.name().to_string(),
                    Value::Bool(self.io_type_supported(*t)),
                )
            })
            .chain(
                [
                    "nvme_admin",
                    "nvme_io",
                    "abort",
                    "seek_hole",
                    "seek_data",
                    "copy",
                    "nvme_iov_md",
                ]
                .iter()
                .map(|n| (n.to_string(), Value::Bool(false))),
            )
            .collect();
        let claim = self.claimed_by();
        let mut v = json!({
            "name": p.name,
            "aliases": p.aliases,
            "product_name": p.product_name,
            "block_size": p.block_size,
            "num_blocks": self.num_blocks(),
            "preferred_write_alignment": p.preferred_write_alignment,
            "preferred_write_granularity": p.preferred_write_granularity,
            "optimal_write_size": p.optimal_write_size,
            "preferred_unmap_alignment": p.preferred_unmap_alignment,
            "preferred_unmap_granularity": p.preferred_unmap_granularity,
            "uuid": p.uuid.to_string(),
            "assigned_rate_limits": self.0.qos.limits_json(),
            "claimed": claim.is_some(),
            "zoned": false,
            "supported_io_types": supported,
            "driver_specific": self.0.backend.dump_info_json(),
        });
        if let Some(id) = p.numa_id {
            v["numa_id"] = json!(id);
        }
        if let Some(m) = claim {
            v["claim_type"] = json!("exclusive_write");
            v["claimed_by"] = json!(m);
        }
        if p.write_unit_size > 1 {
            v["write_unit_size"] = json!(p.write_unit_size);
        }
        if p.optimal_io_boundary > 0 {
            v["optimal_io_boundary"] = json!(p.optimal_io_boundary);
        }
        if p.required_alignment > 1 {
            v["required_alignment"] = json!(p.required_alignment.trailing_zeros());
        }
        if p.md_size > 0 {
            v["md_size"] = json!(p.md_size);
            v["md_interleave"] = json!(p.md_interleave);
            v["dif_type"] = json!(p.dif_type);
        }
        v
    }

    /// Sets QoS limits (0 = unlimited): read+write IOPS, read+write MB/s,
    /// read MB/s, write MB/s (SPDK: `bdev_set_qos_limit`).
    pub fn set_qos_limits(&self, limits: crate::qos::QosLimits) {
        self.0.qos.set(limits);
    }
}

/// An open bdev (SPDK: `struct spdk_bdev_desc`). Dropping it closes it.
pub struct BdevDesc {
    pub(crate) bdev: Bdev,
    id: u64,
    write: bool,
    claimed: bool,
}

impl std::fmt::Debug for BdevDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BdevDesc({}, write: {})", self.bdev.name(), self.write)
    }
}

/// Opens a bdev by name (SPDK: `spdk_bdev_open_ext`). `on_event` runs on
/// the calling thread (if it is an rspdk thread) when the bdev is removed
/// or resized; on Remove the holder should drop the descriptor.
pub fn bdev_open(
    name: &str,
    write: bool,
    on_event: impl Fn(BdevEvent) + Send + Sync + 'static,
) -> Result<BdevDesc, BdevError> {
    let bdev = bdev_get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    let id = DESC_IDS.fetch_add(1, Ordering::Relaxed);
    {
        let mut st = lock(bdev.0.state());
        if st.status != Status::Registered {
            return Err(BdevError::Removing(name.to_string()));
        }
        if write {
            if let Some(m) = &st.claim {
                return Err(BdevError::Claimed {
                    bdev: name.to_string(),
                    module: m.clone(),
                });
            }
        }
        st.descs.push(DescEntry {
            id,
            thread: Thread::current().map(|t| t.handle()),
            write,
            on_event: Arc::new(on_event),
        });
    }
    Ok(BdevDesc {
        bdev,
        id,
        write,
        claimed: false,
    })
}

impl BdevDesc {
    /// The bdev.
    pub fn bdev(&self) -> &Bdev {
        &self.bdev
    }

    /// True if opened for writing.
    pub fn writable(&self) -> bool {
        self.write
    }

    /// Claims the bdev for `module` (SPDK: `spdk_bdev_module_claim_bdev`,
    /// exclusive write): no one else may open it for writing or claim it
    /// until this descriptor closes. Other writers already open block it.
    pub fn claim(&mut self, module: &str) -> Result<(), BdevError> {
        let mut st = lock(self.bdev.0.state());
        if let Some(m) = &st.claim {
            return Err(BdevError::Claimed {
                bdev: self.bdev.name().to_string(),
                module: m.clone(),
            });
        }
        if st.descs.iter().any(|d| d.write && d.id != self.id) {
            return Err(BdevError::InvalidParam(format!(
                "bdev '{}' is open for writing elsewhere; it cannot be claimed",
                self.bdev.name()
            )));
        }
        st.claim = Some(module.to_string());
        self.claimed = true;
        self.write = true;
        if let Some(d) = st.descs.iter_mut().find(|d| d.id == self.id) {
            d.write = true;
        }
        Ok(())
    }

    /// This thread's I/O channel for the bdev (SPDK: `spdk_bdev_get_io_channel`).
    pub fn get_io_channel(&self) -> Result<BdevIoChannel, BdevError> {
        channel::get_channel(self)
    }
}

impl Drop for BdevDesc {
    fn drop(&mut self) {
        let finish = {
            let mut st = lock(self.bdev.0.state());
            st.descs.retain(|d| d.id != self.id);
            if self.claimed {
                st.claim = None;
            }
            st.status == Status::Removing && st.descs.is_empty()
        };
        if finish {
            finish_unregister(&self.bdev);
        }
    }
}
