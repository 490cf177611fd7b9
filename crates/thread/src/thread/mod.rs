//! Lightweight threads: message ring, pollers, lifecycle, interrupt mode.

use std::cell::{Cell, RefCell};
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::cpuset::CpuSet;
use crate::io_channel::ChannelEntry;
use crate::msg::Msg;
use crate::ring::{Consumer, MsgRing};
use crate::sys::{Epoll, EventFd, TimerFd};

mod interrupt;
mod iter;
mod poller;
mod run;

pub use interrupt::Interrupt;
pub(crate) use interrupt::*;
pub use iter::{for_each_thread, gather_from_threads, get_thread};
pub(crate) use poller::*;
pub use poller::{poller_register, Poller, PollerState, PollerStatus};
pub use run::Thread;

/// Ticks per second of the time values passed to [`Thread::poll`]: ticks are
/// nanoseconds (SPDK reports `tick_rate` in its stats RPCs; ours is 1e9).
pub const TICK_RATE: u64 = 1_000_000_000;

/// Default number of ring messages run per [`Thread::poll`] when `max_msgs`
/// is 0.
pub const DEFAULT_MSG_BATCH: u32 = 64;

pub use rspdk_util::clock::now_ns;

const RUNNING: u8 = 0;
const EXITING: u8 = 1;
const EXITED: u8 = 2;

static NEXT_THREAD_ID: AtomicU64 = AtomicU64::new(1);
static REGISTRY: Mutex<Vec<ThreadHandle>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every live (not yet dropped) thread, in creation order.
pub fn all_threads() -> Vec<ThreadHandle> {
    lock(&REGISTRY).clone()
}

/// Looks a live thread up by id.
pub fn thread_by_id(id: u64) -> Option<ThreadHandle> {
    lock(&REGISTRY).iter().find(|h| h.id() == id).cloned()
}

/// Errors of thread-level operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThreadError {
    /// The call must be made from a lightweight thread (inside its poll or
    /// [`Thread::enter`]) and was not.
    #[error("not called from an rspdk thread")]
    NotOnThread,
    /// The target thread has exited.
    #[error("thread has exited")]
    Exited,
    /// Creating the interrupt-mode file descriptors failed.
    #[error("interrupt fd setup failed: {0}")]
    Interrupt(String),
    /// [`thread_create`] was called but no create hook is installed (no
    /// reactors running).
    #[error("no thread create hook installed (start the reactors first)")]
    NoCreateHook,
    /// The create hook could not place the thread.
    #[error("thread placement failed: {0}")]
    Placement(String),
    /// Fd interrupts need a thread in interrupt mode (use a poller in
    /// polling mode, as SPDK does).
    #[error("thread is not in interrupt mode")]
    NotInterruptMode,
}

/// Options for creating a thread.
#[derive(Clone, Debug)]
pub struct ThreadOpts {
    /// Thread name (shown by the stats RPCs).
    pub name: String,
    /// CPUs this thread may run on; empty = any.
    pub cpumask: CpuSet,
    /// Interrupt mode: the thread can sleep on an eventfd/timerfd when it has
    /// nothing to do (see crate docs). Polling mode (false) is the default.
    pub interrupt_mode: bool,
    /// Capacity of the lock-free message ring (rounded to at least 2).
    pub msg_ring_size: usize,
    /// How long an exiting thread may take to drain before it is reported
    /// and forced to the exited state.
    pub exit_timeout: Duration,
}

impl Default for ThreadOpts {
    fn default() -> Self {
        ThreadOpts {
            name: "thread".to_string(),
            cpumask: CpuSet::new(),
            interrupt_mode: false,
            msg_ring_size: 4096,
            exit_timeout: Duration::from_secs(5),
        }
    }
}

impl ThreadOpts {
    /// Default options with the given name.
    pub fn named(name: &str) -> ThreadOpts {
        ThreadOpts {
            name: name.to_string(),
            ..ThreadOpts::default()
        }
    }
}

/// State shared with other OS threads (everything a sender touches).
pub(crate) struct Shared {
    id: u64,
    name: String,
    /// Changed by `thread_set_cpumask` (control path only).
    cpumask: Mutex<CpuSet>,
    ring: Arc<MsgRing>,
    overflow_flag: CachePadded<AtomicBool>,
    overflow: Mutex<VecDeque<Msg>>,
    overflowed: AtomicU64,
    state: AtomicU8,
    interrupt: bool,
    sleeping: CachePadded<AtomicBool>,
    eventfd: Option<EventFd>,
}

/// Why [`ThreadHandle::send_msg`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The target thread has exited; the message was dropped unrun.
    #[error("target thread has exited")]
    Exited,
}

/// A `Send + Sync + Clone` address of a thread, usable from any OS thread.
#[derive(Clone)]
pub struct ThreadHandle(pub(crate) Arc<Shared>);

impl fmt::Debug for ThreadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ThreadHandle({}:{})", self.0.id, self.0.name)
    }
}

impl PartialEq for ThreadHandle {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.0, &o.0)
    }
}
impl Eq for ThreadHandle {}

impl ThreadHandle {
    /// Unique thread id (starts at 1).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Thread name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The thread's cpumask (empty = any CPU).
    pub fn cpumask(&self) -> CpuSet {
        lock(&self.0.cpumask).clone()
    }

    /// Replaces the thread's cpumask (SPDK: `spdk_thread_set_cpumask`).
    /// The thread stays on its reactor: whoever calls this checks that the
    /// new mask includes that reactor's core (rspdk does not move threads
    /// between reactors).
    pub fn set_cpumask(&self, mask: CpuSet) {
        *lock(&self.0.cpumask) = mask;
    }

    /// Whether the thread runs in interrupt mode.
    pub fn is_interrupt_mode(&self) -> bool {
        self.0.interrupt
    }

    /// Whether the thread has reached the exited state.
    pub fn is_exited(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == EXITED
    }

    /// Whether exit was requested (exiting or exited).
    pub fn is_exiting(&self) -> bool {
        self.0.state.load(Ordering::Acquire) != RUNNING
    }

    /// Number of messages that went to the overflow list since creation
    /// (the ring was full, or the list was non-empty so order required it).
    pub fn overflow_count(&self) -> u64 {
        self.0.overflowed.load(Ordering::Relaxed)
    }

    /// Sends `f` to run on this thread during one of its later polls.
    ///
    /// Always asynchronous (never runs inline, even when sent to the current
    /// thread); messages from one sender run in send order; no allocation for
    /// closures up to 48 bytes. When the ring is full the message goes to an
    /// overflow list that keeps per-sender order, so this only fails if the
    /// target has exited.
    #[inline]
    pub fn send_msg<F: FnOnce() + Send + 'static>(&self, f: F) -> Result<(), SendError> {
        self.try_send(f).map_err(|_| SendError::Exited)
    }

    /// Like [`send_msg`](Self::send_msg) but gives the closure back when the
    /// target has exited.
    #[inline]
    pub fn try_send<F: FnOnce() + Send + 'static>(&self, f: F) -> Result<(), F> {
        let s = &*self.0;
        if s.state.load(Ordering::Acquire) == EXITED {
            return Err(f);
        }
        self.push(Msg::new(f));
        Ok(())
    }

    #[inline]
    fn push(&self, m: Msg) {
        let s = &*self.0;
        let m = if !s.overflow_flag.load(Ordering::Acquire) {
            match s.ring.push(m) {
                Ok(()) => {
                    self.wake();
                    return;
                }
                Err(m) => m,
            }
        } else {
            m
        };
        {
            let mut q = lock(&s.overflow);
            q.push_back(m);
            s.overflow_flag.store(true, Ordering::Release);
        }
        s.overflowed.fetch_add(1, Ordering::Relaxed);
        self.wake();
    }

    #[inline]
    fn wake(&self) {
        let s = &*self.0;
        if s.interrupt {
            fence(Ordering::SeqCst);
            if s.sleeping.load(Ordering::SeqCst) && s.sleeping.swap(false, Ordering::SeqCst) {
                if let Some(e) = &s.eventfd {
                    e.notify();
                }
            }
        }
    }

    /// Asks the thread to exit (sends it a message calling [`Thread::exit`]).
    pub fn request_exit(&self) -> Result<(), SendError> {
        self.send_msg(|| {
            if let Some(t) = Thread::current() {
                t.exit();
            }
        })
    }
}

/// Creates and places a thread on behalf of [`thread_create`] (SPDK's
/// `new_thread_fn` given to `spdk_thread_lib_init`). The reactors install
/// one; it may override mode/ring/timeout options with the app's.
pub type ThreadCreateHook = dyn Fn(ThreadOpts) -> Result<ThreadHandle, ThreadError> + Send + Sync;

static CREATE_HOOK: Mutex<Option<Arc<ThreadCreateHook>>> = Mutex::new(None);

/// Installs the process-wide create hook; returns false (and installs
/// nothing) if one is already installed.
pub fn set_thread_create_hook(hook: Arc<ThreadCreateHook>) -> bool {
    let mut g = lock(&CREATE_HOOK);
    if g.is_some() {
        return false;
    }
    *g = Some(hook);
    true
}

/// Removes the create hook if it is `hook` (by identity).
pub fn clear_thread_create_hook(hook: &Arc<ThreadCreateHook>) {
    let mut g = lock(&CREATE_HOOK);
    if g.as_ref().is_some_and(|h| Arc::ptr_eq(h, hook)) {
        *g = None;
    }
}

/// Creates a thread from library code that does not know who runs threads
/// (SPDK's `spdk_thread_create`): the installed hook — the reactors' —
/// places it. Send it messages through the returned handle.
pub fn thread_create(opts: ThreadOpts) -> Result<ThreadHandle, ThreadError> {
    let hook = lock(&CREATE_HOOK)
        .clone()
        .ok_or(ThreadError::NoCreateHook)?;
    hook(opts)
}

/// Sends `f` to `thread` (SPDK's `spdk_thread_send_msg`); see
/// [`ThreadHandle::send_msg`].
#[inline]
pub fn send_msg<F: FnOnce() + Send + 'static>(
    thread: &ThreadHandle,
    f: F,
) -> Result<(), SendError> {
    thread.send_msg(f)
}

/// Per-thread counters (time in ticks = ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadStats {
    /// Time attributed to polls that did work.
    pub busy_ns: u64,
    /// Time attributed to polls that found nothing to do.
    pub idle_ns: u64,
    /// Messages run.
    pub msgs: u64,
    /// Calls to [`Thread::poll`].
    pub polls: u64,
    /// Poller runs (all pollers).
    pub poller_runs: u64,
    /// Times the thread went to sleep in interrupt mode.
    pub sleeps: u64,
}

/// What held an exiting thread when its exit timed out.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExitReport {
    /// Thread name.
    pub thread: String,
    /// Pollers still registered.
    pub pollers: Vec<String>,
    /// Device names of I/O channels still held.
    pub io_channels: Vec<String>,
    /// Fd interrupts still registered.
    pub interrupts: Vec<String>,
    /// Messages still queued.
    pub queued_msgs: usize,
}

/// Result of one [`Thread::poll`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// Whether anything was done (a message ran or a poller was busy).
    pub busy: bool,
    /// Messages run.
    pub msgs: u32,
    /// Pollers that returned busy.
    pub pollers_busy: u32,
}

pub(crate) struct ThreadInner {
    pub(crate) shared: Arc<Shared>,
    consumer: Consumer,
    _reg: Registration,
    intr: Option<LocalIntr>,
    pub(crate) local: RefCell<VecDeque<LocalFn>>,
    active: RefCell<Vec<Poller>>,
    timed: RefCell<BinaryHeap<TimedEntry>>,
    pollers: RefCell<Vec<Poller>>,
    pollers_dirty: Cell<bool>,
    pub(crate) channels: RefCell<Vec<Rc<dyn ChannelEntry>>>,
    intrs: RefCell<Vec<Interrupt>>,
    now: Cell<u64>,
    last_now: Cell<u64>,
    last_busy: Cell<bool>,
    st_busy: Cell<u64>,
    st_idle: Cell<u64>,
    st_msgs: Cell<u64>,
    st_polls: Cell<u64>,
    st_runs: Cell<u64>,
    st_sleeps: Cell<u64>,
    in_interrupt: Cell<bool>,
    exit_started: Cell<u64>,
    exit_timeout: u64,
    exit_report: RefCell<Option<ExitReport>>,
    exit_hooks: RefCell<Vec<LocalFn>>,
    next_poller_id: Cell<u64>,
    timer_seq: Cell<u64>,
}

impl ThreadInner {
    fn schedule_timed(&self, p: Poller, at: u64) {
        let seq = self.timer_seq.get() + 1;
        self.timer_seq.set(seq);
        let gen = p.0.gen.get();
        self.timed.borrow_mut().push(TimedEntry { at, seq, gen, p });
    }

    fn queued(&self) -> usize {
        let s = &self.shared;
        let mut n = s.ring.len() + self.local.borrow().len();
        if s.overflow_flag.load(Ordering::Acquire) {
            n += lock(&s.overflow).len();
        }
        n
    }
}

/// Membership in the global thread registry: created with the thread,
/// dropped with it — or with a [`PendingThread`] that is never started —
/// which marks the thread exited and unregisters it.
struct Registration(Arc<Shared>);

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.state.store(EXITED, Ordering::Release);
        lock(&REGISTRY).retain(|h| !Arc::ptr_eq(&h.0, &self.0));
    }
}

impl Drop for ThreadInner {
    fn drop(&mut self) {
        self.shared.state.store(EXITED, Ordering::Release);
        // Release channels still held (only on a forced exit) so their
        // devices can finish unregistering.
        let chans = std::mem::take(&mut *self.channels.borrow_mut());
        for c in chans {
            c.release_from_dead_thread();
        }
        for i in std::mem::take(&mut *self.intrs.borrow_mut()) {
            i.0.live.set(false);
            let f = i.0.f.borrow_mut().take();
            drop(f);
        }
        for p in self.pollers.borrow().iter() {
            p.0.state.set(PollerState::Unregistered);
            let f = p.0.f.borrow_mut().take();
            drop(f);
        }
    }
}

/// A thread that has been created (it has an id, a [`ThreadHandle`], and can
/// already receive messages) but is not yet bound to the OS thread that will
/// poll it. `Send`: create it anywhere, move it to the reactor, call
/// [`start`](Self::start) there.
pub struct PendingThread {
    shared: Arc<Shared>,
    reg: Registration,
    consumer: Consumer,
    intr: Option<LocalIntr>,
    exit_timeout: u64,
}

impl fmt::Debug for PendingThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PendingThread({}:{})", self.shared.id, self.shared.name)
    }
}

impl PendingThread {
    /// Creates the thread's shared part and registers it globally.
    pub fn new(opts: ThreadOpts) -> Result<PendingThread, ThreadError> {
        let ierr = |e: std::io::Error| ThreadError::Interrupt(e.to_string());
        let (eventfd, intr) = if opts.interrupt_mode {
            let ev = EventFd::new().map_err(ierr)?;
            let epoll = Epoll::new().map_err(ierr)?;
            let timer = TimerFd::new().map_err(ierr)?;
            epoll.add(ev.as_raw_fd(), 0).map_err(ierr)?;
            epoll.add(timer.as_raw_fd(), 1).map_err(ierr)?;
            (Some(ev), Some(LocalIntr { epoll, timer }))
        } else {
            (None, None)
        };
        let (ring, consumer) = MsgRing::new(opts.msg_ring_size);
        let shared = Arc::new(Shared {
            id: NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed),
            name: opts.name,
            cpumask: Mutex::new(opts.cpumask),
            ring,
            overflow_flag: CachePadded::new(AtomicBool::new(false)),
            overflow: Mutex::new(VecDeque::new()),
            overflowed: AtomicU64::new(0),
            state: AtomicU8::new(RUNNING),
            interrupt: opts.interrupt_mode,
            sleeping: CachePadded::new(AtomicBool::new(false)),
            eventfd,
        });
        lock(&REGISTRY).push(ThreadHandle(shared.clone()));
        Ok(PendingThread {
            reg: Registration(shared.clone()),
            shared,
            consumer,
            intr,
            exit_timeout: opts.exit_timeout.as_nanos() as u64,
        })
    }

    /// The handle other threads use to address this thread.
    pub fn handle(&self) -> ThreadHandle {
        ThreadHandle(self.shared.clone())
    }

    /// Binds the thread to the calling OS thread; `now` is the current time
    /// in the clock later passed to [`Thread::poll`].
    pub fn start(self, now: u64) -> Thread {
        let inner = Rc::new(ThreadInner {
            shared: self.shared,
            consumer: self.consumer,
            _reg: self.reg,
            intr: self.intr,
            local: RefCell::new(VecDeque::new()),
            active: RefCell::new(Vec::new()),
            timed: RefCell::new(BinaryHeap::new()),
            pollers: RefCell::new(Vec::new()),
            pollers_dirty: Cell::new(false),
            channels: RefCell::new(Vec::new()),
            intrs: RefCell::new(Vec::new()),
            now: Cell::new(now),
            last_now: Cell::new(now),
            last_busy: Cell::new(false),
            st_busy: Cell::new(0),
            st_idle: Cell::new(0),
            st_msgs: Cell::new(0),
            st_polls: Cell::new(0),
            st_runs: Cell::new(0),
            st_sleeps: Cell::new(0),
            in_interrupt: Cell::new(false),
            exit_started: Cell::new(0),
            exit_timeout: self.exit_timeout,
            exit_report: RefCell::new(None),
            exit_hooks: RefCell::new(Vec::new()),
            next_poller_id: Cell::new(1),
            timer_seq: Cell::new(0),
        });
        Thread { inner }
    }
}
