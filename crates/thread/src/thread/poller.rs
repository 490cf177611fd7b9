//! Pollers: functions a thread runs on every poll (period 0) or on a
//! timer, with pause, resume and unregister from inside or outside.

use std::cell::{Cell, RefCell};
use std::cmp::Ordering as CmpOrdering;
use std::fmt;
use std::rc::{Rc, Weak};

use super::*;

/// What a poller did in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollerStatus {
    /// Did work.
    Busy,
    /// Found nothing to do.
    Idle,
}

/// Lifecycle state of a poller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollerState {
    /// Registered and eligible to run.
    Waiting,
    /// Paused with [`Poller::pause`].
    Paused,
    /// Unregistered; will never run again.
    Unregistered,
}

pub(crate) type PollerFn = Box<dyn FnMut(&Poller) -> PollerStatus>;

pub(crate) struct PollerInner {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) period: u64,
    pub(crate) state: Cell<PollerState>,
    pub(crate) running: Cell<bool>,
    pub(crate) gen: Cell<u64>,
    pub(crate) f: RefCell<Option<PollerFn>>,
    pub(crate) run_count: Cell<u64>,
    pub(crate) busy_count: Cell<u64>,
    pub(crate) thread: Weak<ThreadInner>,
}

/// Handle to a registered poller (SPDK's `struct spdk_poller *`). Not `Send`:
/// pollers live on their thread; the handle is passed to the poller closure
/// so it can pause/unregister itself.
#[derive(Clone)]
pub struct Poller(pub(crate) Rc<PollerInner>);

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Poller({}:{})", self.0.id, self.0.name)
    }
}

impl Poller {
    /// Poller id (unique within its thread).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Poller name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Period in microseconds (0 = runs on every poll).
    pub fn period_us(&self) -> u64 {
        self.0.period / 1000
    }

    /// Current state.
    pub fn state(&self) -> PollerState {
        self.0.state.get()
    }

    /// Times it ran.
    pub fn run_count(&self) -> u64 {
        self.0.run_count.get()
    }

    /// Times it returned [`PollerStatus::Busy`].
    pub fn busy_count(&self) -> u64 {
        self.0.busy_count.get()
    }

    /// Stops running the poller until [`resume`](Self::resume). Callable from
    /// inside the poller itself.
    pub fn pause(&self) {
        let p = &self.0;
        if p.state.get() == PollerState::Waiting {
            p.state.set(PollerState::Paused);
            p.gen.set(p.gen.get() + 1);
        }
    }

    /// Resumes a paused poller (a timed poller next runs one period from
    /// now). Callable from inside the poller itself.
    pub fn resume(&self) {
        let p = &self.0;
        if p.state.get() != PollerState::Paused {
            return;
        }
        p.state.set(PollerState::Waiting);
        p.gen.set(p.gen.get() + 1);
        if p.period > 0 && !p.running.get() {
            if let Some(t) = p.thread.upgrade() {
                let at = t.now.get() + p.period;
                t.schedule_timed(self.clone(), at);
            }
        }
    }

    /// Unregisters the poller: it never runs again and its closure (with
    /// everything it captured) is dropped — immediately, or right after the
    /// current run when called from inside the poller itself.
    pub fn unregister(&self) {
        let p = &self.0;
        if p.state.get() == PollerState::Unregistered {
            return;
        }
        p.state.set(PollerState::Unregistered);
        p.gen.set(p.gen.get() + 1);
        if let Some(t) = p.thread.upgrade() {
            t.pollers_dirty.set(true);
        }
        if !p.running.get() {
            let f = p.f.borrow_mut().take();
            drop(f);
        }
    }
}

pub(crate) struct TimedEntry {
    pub(crate) at: u64,
    pub(crate) seq: u64,
    pub(crate) gen: u64,
    pub(crate) p: Poller,
}

impl PartialEq for TimedEntry {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for TimedEntry {}
impl PartialOrd for TimedEntry {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for TimedEntry {
    fn cmp(&self, o: &Self) -> CmpOrdering {
        // Min-heap on (at, seq).
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

#[inline(always)]
pub(crate) fn run_poller(p: &Poller) -> PollerStatus {
    let inner = &p.0;
    inner.running.set(true);
    let status = {
        let mut g = inner.f.borrow_mut();
        match g.as_mut() {
            Some(f) => f(p),
            None => PollerStatus::Idle,
        }
    };
    inner.running.set(false);
    inner.run_count.set(inner.run_count.get() + 1);
    if status == PollerStatus::Busy {
        inner.busy_count.set(inner.busy_count.get() + 1);
    }
    if inner.state.get() == PollerState::Unregistered {
        let f = inner.f.borrow_mut().take();
        drop(f);
    }
    status
}

/// Registers a poller on the current thread (SPDK's `spdk_poller_register`).
pub fn poller_register(
    name: &str,
    period_us: u64,
    f: impl FnMut(&Poller) -> PollerStatus + 'static,
) -> Result<Poller, ThreadError> {
    let t = Thread::current().ok_or(ThreadError::NotOnThread)?;
    Ok(t.poller_register(name, period_us, f))
}
