//! The delay bdev (SPDK: module/bdev/delay): a virtual bdev that
//! completes its base's I/O only after a configured latency.
//!
//! Reads and writes get the average latency, about 1 in 100 the p99
//! latency instead (as SPDK); other I/O types pass straight through. The
//! deadline is taken at submission; when the base completes, the I/O waits
//! in the channel's queue, kept sorted by deadline, until the channel's
//! poller sees the deadline pass. Latencies are in microseconds and can be
//! changed at run time with `bdev_delay_update_latency`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rspdk_thread::{now_ns, poller_register, Poller, PollerStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use rspdk_bdev::rpc::{delete_method, method, NameParam};
use rspdk_bdev::vbdev::{check_free, open_base, BaseDesc, BaseLink};
use rspdk_bdev::Bdev;
use rspdk_bdev::BdevIo;
use rspdk_bdev::{bdev_register, bdev_unregister, BackendChannel, BdevBackend};
use rspdk_bdev::{BdevError, BdevProps, IoStatus, IoType};

/// The module name.
pub const MODULE: &str = "delay";

/// Parameters of `bdev_delay_create`, as SPDK names them (latencies in
/// microseconds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DelayOpts {
    /// The base bdev.
    pub base_bdev_name: String,
    /// The delay bdev's name.
    pub name: String,
    /// Average read latency (us).
    pub avg_read_latency: u64,
    /// p99 read latency (us), at least the average.
    pub p99_read_latency: u64,
    /// Average write latency (us).
    pub avg_write_latency: u64,
    /// p99 write latency (us), at least the average.
    pub p99_write_latency: u64,
    /// UUID; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<uuid::Uuid>,
}

/// Which latency `bdev_delay_update_latency` changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyType {
    /// Average read latency.
    AvgRead,
    /// p99 read latency.
    P99Read,
    /// Average write latency.
    AvgWrite,
    /// p99 write latency.
    P99Write,
}

const AVG_READ: usize = 0;
const P99_READ: usize = 1;
const AVG_WRITE: usize = 2;
const P99_WRITE: usize = 3;

struct DelayShared {
    /// avg read, p99 read, avg write, p99 write; microseconds.
    lat_us: [AtomicU64; 4],
}

/// Creates a delay bdev on an existing base (SPDK: `create_delay_disk`).
pub fn create(opts: DelayOpts) -> Result<Bdev, BdevError> {
    check_free(&opts.name)?;
    if opts.p99_read_latency < opts.avg_read_latency {
        return Err(BdevError::InvalidParam(format!(
            "p99_read_latency {} must be at least avg_read_latency {}",
            opts.p99_read_latency, opts.avg_read_latency
        )));
    }
    if opts.p99_write_latency < opts.avg_write_latency {
        return Err(BdevError::InvalidParam(format!(
            "p99_write_latency {} must be at least avg_write_latency {}",
            opts.p99_write_latency, opts.avg_write_latency
        )));
    }
    if rspdk_bdev::bdev_get(&opts.base_bdev_name).is_none() {
        return Err(BdevError::NotFound(opts.base_bdev_name.clone()));
    }
    let name = opts.name.clone();
    let desc = open_base(&opts.base_bdev_name, MODULE, move || {
        let _ = bdev_unregister(&name, || {});
    })?;
    let base = desc.bdev().clone();
    let bp = base.props();
    let mut props = BdevProps::new(&opts.name, bp.block_size, base.num_blocks(), "delay");
    props.required_alignment = bp.required_alignment;
    props.write_unit_size = bp.write_unit_size;
    props.optimal_io_boundary = bp.optimal_io_boundary;
    props.max_transfer_blocks = bp.max_transfer_blocks;
    props.write_cache = bp.write_cache;
    if let Some(u) = opts.uuid {
        props.uuid = u;
    }
    let shared = Arc::new(DelayShared {
        lat_us: [
            AtomicU64::new(opts.avg_read_latency),
            AtomicU64::new(opts.p99_read_latency),
            AtomicU64::new(opts.avg_write_latency),
            AtomicU64::new(opts.p99_write_latency),
        ],
    });
    let name = opts.name.clone();
    DELAYS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((name.clone(), shared.clone()));
    let r = bdev_register(
        props,
        MODULE,
        Box::new(DelayBackend {
            base: BaseDesc::new(desc),
            base_bdev: base,
            shared: shared.clone(),
            opts,
        }),
    );
    if r.is_err() {
        DELAYS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, s)| !(*n == name && Arc::ptr_eq(s, &shared)));
    }
    r
}

/// Deletes a delay bdev; `done` runs when it is gone.
pub fn delete(name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    match rspdk_bdev::bdev_get(name) {
        Some(b) if b.module_name() == MODULE => bdev_unregister(name, done),
        Some(_) => Err(BdevError::InvalidParam(format!(
            "bdev '{name}' is not a delay bdev"
        ))),
        None => Err(BdevError::NotFound(name.to_string())),
    }
}

/// Changes one latency of a delay bdev (SPDK:
/// `vbdev_delay_update_latency_value`); an average may not exceed its p99
/// nor a p99 go below its average. Applies to I/O submitted from now on.
pub fn update_latency(
    name: &str,
    latency_type: LatencyType,
    latency_us: u64,
) -> Result<(), BdevError> {
    let b = rspdk_bdev::bdev_get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    if b.module_name() != MODULE {
        return Err(BdevError::InvalidParam(format!(
            "bdev '{name}' is not a delay bdev"
        )));
    }
    let shared = DELAYS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s.clone())
        .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    let l = &shared.lat_us;
    let get = |i: usize| l[i].load(Ordering::Relaxed);
    let (idx, bad) = match latency_type {
        LatencyType::AvgRead => (AVG_READ, latency_us > get(P99_READ)),
        LatencyType::P99Read => (P99_READ, latency_us < get(AVG_READ)),
        LatencyType::AvgWrite => (AVG_WRITE, latency_us > get(P99_WRITE)),
        LatencyType::P99Write => (P99_WRITE, latency_us < get(AVG_WRITE)),
    };
    if bad {
        return Err(BdevError::InvalidParam(format!(
            "latency_us {latency_us} for {latency_type:?}: an average may not exceed its p99 latency, nor a p99 be below its average"
        )));
    }
    l[idx].store(latency_us, Ordering::Relaxed);
    Ok(())
}

/// Delay bdevs by name, for `update_latency` (registry lookups give the
/// `Bdev`, not the backend).
type DelayList = Vec<(String, Arc<DelayShared>)>;
static DELAYS: std::sync::Mutex<DelayList> = std::sync::Mutex::new(Vec::new());

struct DelayBackend {
    base: BaseDesc,
    base_bdev: Bdev,
    shared: Arc<DelayShared>,
    opts: DelayOpts,
}

/// An I/O whose base completed, waiting for its deadline.
struct Held {
    deadline: u64,
    io: BdevIo,
    status: IoStatus,
}

struct DelayChannelState {
    base: Rc<BaseLink>,
    shared: Arc<DelayShared>,
    /// Sorted by deadline, earliest first.
    queue: RefCell<VecDeque<Held>>,
    rng: Cell<u64>,
}

struct DelayChannel {
    st: Rc<DelayChannelState>,
    poller: Option<Poller>,
}

impl BdevBackend for DelayBackend {
    fn create_channel(&self) -> Result<Box<dyn BackendChannel>, BdevError> {
        let st = Rc::new(DelayChannelState {
            base: self.base.link()?,
            shared: self.shared.clone(),
            queue: RefCell::new(VecDeque::with_capacity(256)),
            rng: Cell::new(now_ns() | 1),
        });
        let weak = Rc::downgrade(&st);
        let poller = poller_register("delay_poller", 0, move |_| match weak.upgrade() {
            Some(st) => st.release_due(),
            None => PollerStatus::Idle,
        })
        .map_err(|e| BdevError::Channel {
            bdev: self.opts.name.clone(),
            detail: e.to_string(),
        })?;
        Ok(Box::new(DelayChannel {
            st,
            poller: Some(poller),
        }))
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        self.base_bdev.io_type_supported(io_type)
    }

    fn dump_info_json(&self) -> Value {
        let l = &self.shared.lat_us;
        json!({"delay": {
            "name": self.opts.name,
            "base_bdev_name": self.opts.base_bdev_name,
            "avg_read_latency": l[AVG_READ].load(Ordering::Relaxed),
            "p99_read_latency": l[P99_READ].load(Ordering::Relaxed),
            "avg_write_latency": l[AVG_WRITE].load(Ordering::Relaxed),
            "p99_write_latency": l[P99_WRITE].load(Ordering::Relaxed),
        }})
    }

    fn write_config_json(&self, props: &BdevProps) -> Option<Value> {
        let l = &self.shared.lat_us;
        let mut o = self.opts.clone();
        o.uuid = Some(props.uuid);
        o.avg_read_latency = l[AVG_READ].load(Ordering::Relaxed);
        o.p99_read_latency = l[P99_READ].load(Ordering::Relaxed);
        o.avg_write_latency = l[AVG_WRITE].load(Ordering::Relaxed);
        o.p99_write_latency = l[P99_WRITE].load(Ordering::Relaxed);
        Some(json!({"method": "bdev_delay_create", "params": o}))
    }

    fn destruct(&self) {
        DELAYS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, s)| !(n == &self.opts.name && Arc::ptr_eq(s, &self.shared)));
        self.base.release();
    }
}

impl DelayChannelState {
    /// xorshift64: is this I/O one of the ~1% that get the p99 latency?
    fn one_in_100(&self) -> bool {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x % 100 == 0
    }

    fn latency_ns(&self, io_type: IoType) -> u64 {
        let (avg, p99) = match io_type {
            IoType::Read => (AVG_READ, P99_READ),
            IoType::Write => (AVG_WRITE, P99_WRITE),
            _ => return 0,
        };
        let idx = if self.one_in_100() { p99 } else { avg };
        self.shared.lat_us[idx].load(Ordering::Relaxed) * 1000
    }

    /// Holds a completed I/O until `deadline`, keeping the queue sorted.
    fn hold(&self, deadline: u64, io: BdevIo, status: IoStatus) {
        let mut q = self.queue.borrow_mut();
        // Deadlines mostly arrive in order: search from the back.
        let mut at = q.len();
        while at > 0 && q[at - 1].deadline > deadline {
            at -= 1;
        }
        q.insert(
            at,
            Held {
                deadline,
                io,
                status,
            },
        );
    }

    /// Completes every held I/O whose deadline passed.
    fn release_due(&self) -> PollerStatus {
        if self.queue.borrow().is_empty() {
            return PollerStatus::Idle;
        }
        let now = now_ns();
        let mut n = 0;
        loop {
            let next = {
                let mut q = self.queue.borrow_mut();
                match q.front() {
                    Some(h) if h.deadline <= now => q.pop_front(),
                    _ => None,
                }
            };
            match next {
                Some(h) => {
                    h.io.complete(h.status);
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 {
            PollerStatus::Busy
        } else {
            PollerStatus::Idle
        }
    }

    /// Completes every held I/O now (a reset went through).
    fn release_all(&self) {
        loop {
            let next = self.queue.borrow_mut().pop_front();
            match next {
                Some(h) => h.io.complete(h.status),
                None => break,
            }
        }
    }
}

impl BackendChannel for DelayChannel {
    fn submit(&mut self, io: BdevIo) {
        let off = io.offset_blocks();
        let lat = self.st.latency_ns(io.io_type());
        if io.io_type() == IoType::Reset {
            let st = self.st.clone();
            self.st.base.forward(io, off, move |io, status| {
                st.release_all();
                io.complete(status);
            });
            return;
        }
        if lat == 0 {
            self.st
                .base
                .forward(io, off, rspdk_bdev::vbdev::complete_upper);
            return;
        }
        let deadline = now_ns() + lat;
        let st = self.st.clone();
        self.st.base.forward(io, off, move |io, status| {
            st.hold(deadline, io, status);
        });
    }
}

impl Drop for DelayChannel {
    fn drop(&mut self) {
        if let Some(p) = self.poller.take() {
            p.unregister();
        }
        self.st.release_all();
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateParams {
    delay_bdev_name: String,
    latency_type: LatencyType,
    latency_us: u64,
}

/// Registers `bdev_delay_create`, `bdev_delay_delete` and
/// `bdev_delay_update_latency`.
fn register_rpcs(reg: &rspdk_rpc::RpcRegistry) {
    let rt = rspdk_rpc::StateMask::RUNTIME;
    method(reg, "bdev_delay_create", rt, |o: DelayOpts| {
        create(o).map(|b| json!(b.name()))
    });
    delete_method(reg, "bdev_delay_delete", |p: &NameParam| &p.name, delete);
    method(reg, "bdev_delay_update_latency", rt, |p: UpdateParams| {
        update_latency(&p.delay_bdev_name, p.latency_type, p.latency_us).map(|()| json!(true))
    });
}

/// The delay bdev module, for the app's module list
/// (`rspdk_bdev::module_register`).
#[derive(Debug, Default)]
pub struct DelayModule;

impl rspdk_bdev::BdevModule for DelayModule {
    fn name(&self) -> &'static str {
        MODULE
    }

    fn register_rpcs(&self, reg: &rspdk_rpc::RpcRegistry) {
        register_rpcs(reg)
    }

    fn log_flags(&self) -> &'static [(&'static str, &'static str)] {
        &[("vbdev_delay", "rspdk_bdev_delay")]
    }
}
