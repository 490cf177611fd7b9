//! What every controller keeps whatever its transport (SPDK: the generic
//! part of `struct spdk_nvme_ctrlr`): its state and generation, the
//! registers and Identify data read at init, the namespaces, the I/O queue
//! ids, and the reset lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::ThreadId;

use super::{state, ControllerOpts, Namespace};
use crate::error::{NvmeError, Result};
use crate::spec::{Cap, IdentifyController};
use crate::trid::TransportId;

/// Locks `m`, ignoring poisoning (a panicking holder leaves consistent data
/// behind: every critical section is a plain read or write).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A controller's transport-independent state, shared with its queue pairs.
pub(crate) struct CtrlrCommon {
    pub trid: TransportId,
    pub opts: ControllerOpts,
    /// One of [`state`]'s values.
    pub state: AtomicU8,
    /// Bumped by every reset: queue pairs of an older generation re-create
    /// (PCIe) or reconnect (TCP) their queues on their next poll.
    pub generation: AtomicU32,
    /// CAP and VS, read at init.
    cap: AtomicU64,
    vs: AtomicU32,
    pub cdata: Mutex<IdentifyController>,
    pub namespaces: Mutex<Vec<Namespace>>,
    /// Free I/O queue ids.
    qids: Mutex<Vec<u16>>,
    /// I/O queues the controller granted.
    pub max_io_queues: AtomicU32,
    qids_init: AtomicBool,
    /// One reset, disable or detach at a time.
    pub reset_lock: Mutex<()>,
    /// The thread running a reset or detach (it alone uses the admin queue
    /// meanwhile).
    pub resetter: Mutex<Option<ThreadId>>,
    failure: Mutex<String>,
}

impl CtrlrCommon {
    /// The state of a controller for `trid` in state `st`, before init.
    pub(crate) fn new(trid: &TransportId, opts: &ControllerOpts, st: u8, cap: u64) -> Self {
        CtrlrCommon {
            trid: trid.clone(),
            opts: opts.clone(),
            state: AtomicU8::new(st),
            generation: AtomicU32::new(0),
            cap: AtomicU64::new(cap),
            vs: AtomicU32::new(0),
            cdata: Mutex::new(IdentifyController::default()),
            namespaces: Mutex::new(Vec::new()),
            qids: Mutex::new(Vec::new()),
            max_io_queues: AtomicU32::new(0),
            qids_init: AtomicBool::new(false),
            reset_lock: Mutex::new(()),
            resetter: Mutex::new(None),
            failure: Mutex::new(String::new()),
        }
    }

    /// CAP, as read at init.
    pub(crate) fn cap(&self) -> Cap {
        Cap(self.cap.load(Ordering::Acquire))
    }

    /// VS, as read at init.
    pub(crate) fn vs(&self) -> u32 {
        self.vs.load(Ordering::Acquire)
    }

    /// Records CAP and VS.
    pub(crate) fn set_regs(&self, cap: Cap, vs: u32) {
        self.cap.store(cap.0, Ordering::Release);
        self.vs.store(vs, Ordering::Release);
    }

    /// Marks the controller failed (unless it was detached) with `reason`,
    /// and returns the error to report.
    pub(crate) fn fail(&self, reason: &str) -> NvmeError {
        if self.state.load(Ordering::Acquire) != state::DETACHED {
            self.state.store(state::FAILED, Ordering::Release);
        }
        *lock(&self.failure) = reason.to_string();
        tracing::error!(trid = %self.trid, reason, "controller failed");
        NvmeError::ControllerFailed {
            traddr: self.trid.traddr.clone(),
            reason: reason.to_string(),
        }
    }

    /// The error for the controller's current non-OK state.
    pub(crate) fn state_error(&self) -> NvmeError {
        match self.state.load(Ordering::Acquire) {
            state::DETACHED => NvmeError::Detached(self.trid.traddr.clone()),
            state::RESETTING => NvmeError::ControllerFailed {
                traddr: self.trid.traddr.clone(),
                reason: "resetting (reconnecting); retry after the reset".into(),
            },
            _ => NvmeError::ControllerFailed {
                traddr: self.trid.traddr.clone(),
                reason: lock(&self.failure).clone(),
            },
        }
    }

    /// Records the number of I/O queues granted (Set Features Number of
    /// Queues); the first time, also the free queue ids (after a reset,
    /// queue pairs keep theirs).
    pub(crate) fn set_io_queues(&self, granted: u32) {
        self.max_io_queues.store(granted, Ordering::Relaxed);
        if !self.qids_init.swap(true, Ordering::AcqRel) {
            *lock(&self.qids) = (1..=granted as u16).rev().collect();
        }
    }

    /// A free I/O queue id.
    pub(crate) fn alloc_qid(&self) -> Result<u16> {
        lock(&self.qids).pop().ok_or_else(|| {
            NvmeError::NotSupported(format!(
                "no I/O queue left: the controller granted {} (ControllerOpts::num_io_queues)",
                self.max_io_queues.load(Ordering::Relaxed)
            ))
        })
    }

    /// Gives back I/O queue id `qid`.
    pub(crate) fn free_qid(&self, qid: u16) {
        lock(&self.qids).push(qid);
    }

    /// The active namespaces.
    pub(crate) fn namespaces(&self) -> Vec<Namespace> {
        lock(&self.namespaces).clone()
    }

    /// MDTS from Identify Controller (in 4 KiB pages; 0: no limit).
    pub(crate) fn mdts(&self) -> u8 {
        lock(&self.cdata).mdts()
    }

    /// The thread running a reset or detach, if it is this one.
    pub(crate) fn is_resetter(&self) -> bool {
        *lock(&self.resetter) == Some(std::thread::current().id())
    }
}

/// Marks the current thread as the one resetting, for its lifetime.
pub(crate) struct Resetter<'a>(&'a CtrlrCommon);

impl<'a> Resetter<'a> {
    /// Marks the current thread.
    pub(crate) fn new(c: &'a CtrlrCommon) -> Self {
        *lock(&c.resetter) = Some(std::thread::current().id());
        Resetter(c)
    }
}

impl Drop for Resetter<'_> {
    fn drop(&mut self) {
        *lock(&self.0.resetter) = None;
    }
}
