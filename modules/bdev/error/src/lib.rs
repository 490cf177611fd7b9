//! The error injection bdev (SPDK: module/bdev/error): `EE_<base>`, a
//! virtual bdev that forwards I/O to its base except where an injected
//! error says otherwise.
//!
//! `bdev_error_inject_error` arms, per I/O type (or all), one kind for the
//! next `num` I/Os of that type:
//! - `failure`: complete them with [`IoStatus::Failed`] without touching the base;
//! - `nvme_failure`: complete them with the NVMe status `nvme_sct`/`nvme_sc`
//!   ([`IoStatus::Nvme`]);
//! - `pending`: hold them until `bdev_error_resume_pending` (then they are
//!   submitted again), a reset reaches the bdev (then [`IoStatus::Aborted`]),
//!   or it goes away;
//! - `corrupt_data`: reads succeed but byte `corrupt_offset` of the data
//!   is XORed with `corrupt_value`;
//! - `clear` (as an error type, or io_type `clear`, or `num` 0): disarm.
//!
//! With `queue_depth` set, an I/O is hit only while that many I/Os (itself
//! included) are outstanding on its channel. The armed state is shared by
//! every channel (atomics: no lock on the I/O path).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use rspdk_thread::{poller_register, Poller, PollerStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use rspdk_bdev::rpc::{delete_method, method, NameParam};
use rspdk_bdev::vbdev::{open_base, BaseDesc, BaseLink};
use rspdk_bdev::Bdev;
use rspdk_bdev::BdevIo;
use rspdk_bdev::{bdev_register, bdev_unregister, BackendChannel, BdevBackend};
use rspdk_bdev::{BdevError, BdevProps, IoStatus, IoType, IoVec};

/// The module name.
pub const MODULE: &str = "error";

/// Parameters of `bdev_error_create`, as SPDK names them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ErrorCreateOpts {
    /// The base bdev; the error bdev is `EE_<base_name>`.
    pub base_name: String,
    /// UUID; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<uuid::Uuid>,
}

/// The I/O types `bdev_error_inject_error` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectIoType {
    /// Disarm every type (SPDK: io_type `clear`).
    Clear,
    /// Reads.
    Read,
    /// Writes.
    Write,
    /// Unmaps.
    Unmap,
    /// Flushes.
    Flush,
    /// Every type.
    All,
}

/// The kinds of error `bdev_error_inject_error` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// Complete with failure.
    Failure,
    /// Complete with an NVMe status (`nvme_sct`, `nvme_sc`).
    NvmeFailure,
    /// Hold until a reset.
    Pending,
    /// Corrupt read data.
    CorruptData,
    /// Out of resources (not supported yet: refused with a clear error).
    Nomem,
    /// Disarm.
    Clear,
}

/// Parameters of `bdev_error_inject_error`, as SPDK names them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InjectOpts {
    /// The error bdev (`EE_...`).
    pub name: String,
    /// Which I/O type.
    pub io_type: InjectIoType,
    /// Which error.
    pub error_type: ErrorType,
    /// NVMe status code type for `nvme_failure` (0..=7).
    #[serde(default)]
    pub nvme_sct: u32,
    /// NVMe status code for `nvme_failure` (0..=255).
    #[serde(default)]
    pub nvme_sc: u32,
    /// How many I/Os to hit (default 1; 0 disarms, as in SPDK).
    #[serde(default = "one")]
    pub num: u32,
    /// Hit only while this many I/Os are outstanding on the channel (0 = always).
    #[serde(default)]
    pub queue_depth: u64,
    /// Byte of the read data to corrupt (`corrupt_data`).
    #[serde(default)]
    pub corrupt_offset: u64,
    /// XOR value for the corrupted byte (`corrupt_data`; not 0).
    #[serde(default)]
    pub corrupt_value: u8,
}

fn one() -> u32 {
    1
}

const KIND_NONE: u8 = 0;
const KIND_FAILURE: u8 = 1;
const KIND_PENDING: u8 = 2;
const KIND_CORRUPT: u8 = 3;
const KIND_NVME: u8 = 4;

/// One I/O type's armed error.
#[derive(Default)]
struct Armed {
    kind: AtomicU8,
    left: AtomicU32,
    queue_depth: AtomicU32,
    corrupt_offset: AtomicU64,
    corrupt_value: AtomicU8,
    nvme_sct: AtomicU8,
    nvme_sc: AtomicU8,
}

struct ErrorShared {
    armed: [Armed; 8],
    /// Set when the bdev goes away: channels abort what they hold.
    removing: AtomicBool,
    /// Bumped by `bdev_error_resume_pending`: channels submit what they
    /// hold again.
    resume_gen: AtomicU64,
}

impl ErrorShared {
    /// The kind to apply to an I/O of `io_type` with `inflight` outstanding
    /// (itself included), consuming one of the armed count.
    fn take(&self, io_type: IoType, inflight: u32) -> u8 {
        let a = &self.armed[io_type.index()];
        let kind = a.kind.load(Ordering::Relaxed);
        if kind == KIND_NONE {
            return KIND_NONE;
        }
        let qd = a.queue_depth.load(Ordering::Relaxed);
        if qd != 0 && inflight < qd {
            return KIND_NONE;
        }
        let got = a
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if got {
            kind
        } else {
            KIND_NONE
        }
    }
}

/// Error bdevs by name, for `inject_error`.
type ErrorList = Vec<(String, Arc<ErrorShared>)>;
static ERRORS: std::sync::Mutex<ErrorList> = std::sync::Mutex::new(Vec::new());

fn errors() -> std::sync::MutexGuard<'static, ErrorList> {
    ERRORS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates `EE_<base_name>` (SPDK: `vbdev_error_create`).
pub fn create(opts: ErrorCreateOpts) -> Result<Bdev, BdevError> {
    let name = format!("EE_{}", opts.base_name);
    rspdk_bdev::vbdev::check_free(&name)?;
    if rspdk_bdev::bdev_get(&opts.base_name).is_none() {
        return Err(BdevError::NotFound(opts.base_name.clone()));
    }
    let shared = Arc::new(ErrorShared {
        armed: Default::default(),
        removing: AtomicBool::new(false),
        resume_gen: AtomicU64::new(0),
    });
    let (n2, s2) = (name.clone(), shared.clone());
    let desc = open_base(&opts.base_name, MODULE, move || {
        s2.removing.store(true, Ordering::Release);
        let _ = bdev_unregister(&n2, || {});
    })?;
    let base = desc.bdev().clone();
    let bp = base.props();
    let mut props = BdevProps::new(
        &name,
        bp.block_size,
        base.num_blocks(),
        "Error Injection Disk",
    );
    props.required_alignment = bp.required_alignment;
    props.write_unit_size = bp.write_unit_size;
    props.optimal_io_boundary = bp.optimal_io_boundary;
    props.max_transfer_blocks = bp.max_transfer_blocks;
    props.write_cache = bp.write_cache;
    if let Some(u) = opts.uuid {
        props.uuid = u;
    }
    errors().push((name.clone(), shared.clone()));
    let r = bdev_register(
        props,
        MODULE,
        Box::new(ErrorBackend {
            base: BaseDesc::new(desc),
            base_bdev: base,
            shared: shared.clone(),
            opts,
        }),
    );
    if r.is_err() {
        errors().retain(|(_, s)| !Arc::ptr_eq(s, &shared));
    }
    r
}

/// Deletes an error bdev; `done` runs when it is gone.
pub fn delete(name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    match rspdk_bdev::bdev_get(name) {
        Some(b) if b.module_name() == MODULE => {
            if let Some((_, s)) = errors().iter().find(|(n, _)| n == name) {
                s.removing.store(true, Ordering::Release);
            }
            bdev_unregister(name, done)
        }
        Some(_) => Err(BdevError::InvalidParam(format!(
            "bdev '{name}' is not an error bdev"
        ))),
        None => Err(BdevError::NotFound(name.to_string())),
    }
}

fn find(name: &str) -> Result<Arc<ErrorShared>, BdevError> {
    errors()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| s.clone())
        .ok_or_else(|| match rspdk_bdev::bdev_get(name) {
            Some(_) => BdevError::InvalidParam(format!(
                "bdev '{name}' is not an error bdev (create one with bdev_error_create)"
            )),
            None => BdevError::NotFound(name.to_string()),
        })
}

/// Arms (or with `clear`, disarms) an error (SPDK: `vbdev_error_inject_error`).
pub fn inject_error(opts: &InjectOpts) -> Result<(), BdevError> {
    let shared = find(&opts.name)?;
    let nvme = opts.error_type == ErrorType::NvmeFailure;
    if nvme && opts.nvme_sct == 0 && opts.nvme_sc == 0 {
        return Err(BdevError::InvalidParam(
            "error_type nvme_failure needs nvme_sct or nvme_sc: give the NVMe status to complete with"
                .into(),
        ));
    }
    if !nvme && (opts.nvme_sct != 0 || opts.nvme_sc != 0) {
        return Err(BdevError::InvalidParam(
            "nvme_sct and nvme_sc apply only to error_type nvme_failure: omit them".into(),
        ));
    }
    if opts.nvme_sct > 7 || opts.nvme_sc > 255 {
        return Err(BdevError::InvalidParam(format!(
            "nvme_sct {} / nvme_sc {} out of range: the status code type is 0..=7, the code 0..=255",
            opts.nvme_sct, opts.nvme_sc
        )));
    }
    let kind = match opts.error_type {
        ErrorType::Failure => KIND_FAILURE,
        ErrorType::NvmeFailure => KIND_NVME,
        ErrorType::Pending => KIND_PENDING,
        ErrorType::CorruptData => {
            if opts.corrupt_value == 0 {
                return Err(BdevError::InvalidParam(
                    "corrupt_value must be non-zero for corrupt_data (it is XORed into the data)"
                        .into(),
                ));
            }
            KIND_CORRUPT
        }
        ErrorType::Nomem => return Err(BdevError::InvalidParam(
            "error_type 'nomem' is not supported: use failure, nvme_failure, pending or corrupt_data"
                .into(),
        )),
        ErrorType::Clear => KIND_NONE,
    };
    // SPDK: num 0 and io_type clear disarm.
    let kind = if opts.num == 0 || opts.io_type == InjectIoType::Clear {
        KIND_NONE
    } else {
        kind
    };
    let types: &[IoType] = match opts.io_type {
        InjectIoType::Read => &[IoType::Read],
        InjectIoType::Write => &[IoType::Write],
        InjectIoType::Unmap => &[IoType::Unmap],
        InjectIoType::Flush => &[IoType::Flush],
        InjectIoType::All | InjectIoType::Clear => &IoType::ALL,
    };
    for t in types {
        if opts.io_type == InjectIoType::All && *t == IoType::Reset {
            continue;
        }
        let a = &shared.armed[t.index()];
        a.kind.store(KIND_NONE, Ordering::Release);
        a.left.store(
            if kind == KIND_NONE { 0 } else { opts.num },
            Ordering::Release,
        );
        a.queue_depth.store(
            opts.queue_depth.min(u32::MAX as u64) as u32,
            Ordering::Release,
        );
        a.corrupt_offset
            .store(opts.corrupt_offset, Ordering::Release);
        a.corrupt_value.store(opts.corrupt_value, Ordering::Release);
        a.nvme_sct.store(opts.nvme_sct as u8, Ordering::Release);
        a.nvme_sc.store(opts.nvme_sc as u8, Ordering::Release);
        a.kind.store(kind, Ordering::Release);
    }
    Ok(())
}

/// Submits every I/O held by `pending` again, on its channel, and disarms
/// `pending` (SPDK: `vbdev_error_resume_pending`). Returns at once; each
/// channel picks it up on its next poll.
pub fn resume_pending(name: &str) -> Result<(), BdevError> {
    let shared = find(name)?;
    for a in &shared.armed {
        if a.kind.load(Ordering::Acquire) == KIND_PENDING {
            a.left.store(0, Ordering::Release);
        }
    }
    shared.resume_gen.fetch_add(1, Ordering::AcqRel);
    Ok(())
}

struct ErrorBackend {
    base: BaseDesc,
    base_bdev: Bdev,
    shared: Arc<ErrorShared>,
    opts: ErrorCreateOpts,
}

struct ErrorChannelState {
    base: Rc<BaseLink>,
    shared: Arc<ErrorShared>,
    inflight: Cell<u32>,
    pending: RefCell<VecDeque<BdevIo>>,
    /// The `resume_gen` this channel last acted on.
    resumed: Cell<u64>,
}

struct ErrorChannel {
    st: Rc<ErrorChannelState>,
    poller: Option<Poller>,
}

impl BdevBackend for ErrorBackend {
    fn create_channel(&self) -> Result<Box<dyn BackendChannel>, BdevError> {
        let st = Rc::new(ErrorChannelState {
            base: self.base.link()?,
            shared: self.shared.clone(),
            inflight: Cell::new(0),
            pending: RefCell::new(VecDeque::new()),
            resumed: Cell::new(self.shared.resume_gen.load(Ordering::Acquire)),
        });
        let weak = Rc::downgrade(&st);
        // Held I/O is aborted once the bdev goes away, so none is lost, and
        // submitted again when resumed.
        let poller = poller_register("error_pending", 0, move |_| match weak.upgrade() {
            Some(st) if st.shared.removing.load(Ordering::Acquire) => {
                if st.abort_pending() > 0 {
                    PollerStatus::Busy
                } else {
                    PollerStatus::Idle
                }
            }
            Some(st) => {
                let gen = st.shared.resume_gen.load(Ordering::Acquire);
                if gen == st.resumed.get() {
                    return PollerStatus::Idle;
                }
                st.resumed.set(gen);
                let held = std::mem::take(&mut *st.pending.borrow_mut());
                for io in held {
                    st.inflight.set(st.inflight.get() - 1);
                    st.submit(io);
                }
                PollerStatus::Busy
            }
            None => PollerStatus::Idle,
        })
        .map_err(|e| BdevError::Channel {
            bdev: format!("EE_{}", self.opts.base_name),
            detail: e.to_string(),
        })?;
        Ok(Box::new(ErrorChannel {
            st,
            poller: Some(poller),
        }))
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        self.base_bdev.io_type_supported(io_type)
    }

    fn dump_info_json(&self) -> Value {
        json!({"error": {"base_bdev": self.opts.base_name}})
    }

    fn write_config_json(&self, props: &BdevProps) -> Option<Value> {
        let mut o = self.opts.clone();
        o.uuid = Some(props.uuid);
        Some(json!({"method": "bdev_error_create", "params": o}))
    }

    fn destruct(&self) {
        self.shared.removing.store(true, Ordering::Release);
        errors().retain(|(_, s)| !Arc::ptr_eq(s, &self.shared));
        self.base.release();
    }
}

impl ErrorChannelState {
    /// Completes every held (`pending`) I/O as aborted; returns how many.
    fn abort_pending(&self) -> usize {
        let mut n = 0;
        loop {
            let next = self.pending.borrow_mut().pop_front();
            match next {
                Some(io) => {
                    self.inflight.set(self.inflight.get() - 1);
                    io.complete(IoStatus::Aborted);
                    n += 1;
                }
                None => return n,
            }
        }
    }

    fn forward(self: &Rc<Self>, io: BdevIo, corrupt: bool) {
        let off = io.offset_blocks();
        let st = self.clone();
        self.base.forward(io, off, move |io, status| {
            st.inflight.set(st.inflight.get() - 1);
            if status.is_ok() && corrupt {
                st.corrupt(&io);
            }
            if io.io_type() == IoType::Reset {
                st.abort_pending();
            }
            io.complete(status);
        });
    }

    /// XORs the armed byte of a read's data.
    fn corrupt(&self, io: &BdevIo) {
        let a = &self.shared.armed[io.io_type().index()];
        let mut off = a.corrupt_offset.load(Ordering::Relaxed) as usize;
        let val = a.corrupt_value.load(Ordering::Relaxed);
        for v in io.iovs() {
            let IoVec { base, len } = *v;
            if off < len {
                // SAFETY: the read just completed into this buffer, which the
                // submitter keeps valid until we complete the I/O; `off < len`.
                unsafe { *base.add(off) ^= val };
                return;
            }
            off -= len;
        }
    }
}

impl ErrorChannelState {
    /// Applies the armed error, if any, to `io`, or forwards it.
    fn submit(self: &Rc<Self>, io: BdevIo) {
        let st = self;
        st.inflight.set(st.inflight.get() + 1);
        match st.shared.take(io.io_type(), st.inflight.get()) {
            KIND_FAILURE => {
                st.inflight.set(st.inflight.get() - 1);
                io.complete(IoStatus::Failed);
            }
            KIND_NVME => {
                st.inflight.set(st.inflight.get() - 1);
                let a = &st.shared.armed[io.io_type().index()];
                let sct = a.nvme_sct.load(Ordering::Relaxed);
                let sc = a.nvme_sc.load(Ordering::Relaxed);
                io.complete(IoStatus::Nvme { sct, sc });
            }
            KIND_PENDING => st.pending.borrow_mut().push_back(io),
            KIND_CORRUPT => {
                let corrupt = io.io_type() == IoType::Read;
                st.forward(io, corrupt);
            }
            _ => st.forward(io, false),
        }
    }
}

impl BackendChannel for ErrorChannel {
    fn submit(&mut self, io: BdevIo) {
        self.st.submit(io);
    }
}

impl Drop for ErrorChannel {
    fn drop(&mut self) {
        if let Some(p) = self.poller.take() {
            p.unregister();
        }
        self.st.abort_pending();
    }
}

/// Registers `bdev_error_create`, `bdev_error_delete`,
/// `bdev_error_inject_error` and `bdev_error_resume_pending`.
fn register_rpcs(reg: &rspdk_rpc::RpcRegistry) {
    let rt = rspdk_rpc::StateMask::RUNTIME;
    method(reg, "bdev_error_create", rt, |o: ErrorCreateOpts| {
        create(o).map(|b| json!(b.name()))
    });
    delete_method(reg, "bdev_error_delete", |p: &NameParam| &p.name, delete);
    method(reg, "bdev_error_inject_error", rt, |o: InjectOpts| {
        inject_error(&o).map(|()| json!(true))
    });
    method(reg, "bdev_error_resume_pending", rt, |p: NameParam| {
        resume_pending(&p.name).map(|()| json!(true))
    });
}

/// The error bdev module, for the app's module list
/// (`rspdk_bdev::module_register`).
#[derive(Debug, Default)]
pub struct ErrorModule;

impl rspdk_bdev::BdevModule for ErrorModule {
    fn name(&self) -> &'static str {
        MODULE
    }

    fn register_rpcs(&self, reg: &rspdk_rpc::RpcRegistry) {
        register_rpcs(reg)
    }

    fn log_flags(&self) -> &'static [(&'static str, &'static str)] {
        &[("vbdev_error", "rspdk_bdev_error")]
    }
}
