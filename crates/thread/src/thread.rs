//! Lightweight threads: message ring, pollers, lifecycle, interrupt mode.

use std::cell::{Cell, RefCell};
use std::cmp::Ordering as CmpOrdering;
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::cpuset::CpuSet;
use crate::current::{self, CurrentGuard};
use crate::io_channel::ChannelEntry;
use crate::msg::Msg;
use crate::ring::{Consumer, MsgRing};
use crate::sys::{Epoll, EventFd, TimerFd};

/// Ticks per second of the time values passed to [`Thread::poll`]: ticks are
/// nanoseconds (SPDK reports `tick_rate` in its stats RPCs; ours is 1e9).
pub const TICK_RATE: u64 = 1_000_000_000;

/// Default number of ring messages run per [`Thread::poll`] when `max_msgs`
/// is 0.
pub const DEFAULT_MSG_BATCH: u32 = 64;

pub use crate::clock::now_ns;

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

type PollerFn = Box<dyn FnMut(&Poller) -> PollerStatus>;

pub(crate) struct PollerInner {
    id: u64,
    name: String,
    period: u64,
    state: Cell<PollerState>,
    running: Cell<bool>,
    gen: Cell<u64>,
    f: RefCell<Option<PollerFn>>,
    run_count: Cell<u64>,
    busy_count: Cell<u64>,
    thread: Weak<ThreadInner>,
}

/// Handle to a registered poller (SPDK's `struct spdk_poller *`). Not `Send`:
/// pollers live on their thread; the handle is passed to the poller closure
/// so it can pause/unregister itself.
#[derive(Clone)]
pub struct Poller(Rc<PollerInner>);

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

struct TimedEntry {
    at: u64,
    seq: u64,
    gen: u64,
    p: Poller,
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

struct LocalIntr {
    epoll: Epoll,
    timer: TimerFd,
}

/// Epoll tokens: 0 = message eventfd, 1 = timerfd, `INTR_TOKEN_BASE + id` =
/// registered fd interrupt `id`.
const INTR_TOKEN_BASE: u64 = 2;

type IntrFn = Box<dyn FnMut() -> PollerStatus>;

struct IntrInner {
    id: u64,
    fd: RawFd,
    name: String,
    f: RefCell<Option<IntrFn>>,
    live: Cell<bool>,
    thread: Weak<ThreadInner>,
}

/// Handle to an fd interrupt registered with [`Thread::interrupt_register`].
#[derive(Clone)]
pub struct Interrupt(Rc<IntrInner>);

impl fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Interrupt({}: fd {})", self.0.name, self.0.fd)
    }
}

impl Interrupt {
    /// Name given at registration.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The watched fd.
    pub fn fd(&self) -> RawFd {
        self.0.fd
    }

    /// Stops watching the fd and drops the callback (after its current run
    /// when called from inside it). Callable from inside the callback.
    pub fn unregister(&self) {
        let i = &self.0;
        if !i.live.replace(false) {
            return;
        }
        if let Some(t) = i.thread.upgrade() {
            if let Some(li) = &t.intr {
                let _ = li.epoll.remove(i.fd);
            }
            t.intrs.borrow_mut().retain(|x| !Rc::ptr_eq(&x.0, i));
        }
        if let Ok(mut g) = i.f.try_borrow_mut() {
            let f = g.take();
            drop(g);
            drop(f);
        }
    }
}

type LocalFn = Box<dyn FnOnce()>;

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

/// A lightweight thread (SPDK's `struct spdk_thread`): a message queue,
/// pollers, I/O channels and statistics, polled by whoever owns it (a reactor
/// or the test harness). Cheap to clone (reference counted); not `Send` —
/// it stays on the OS thread that [started](PendingThread::start) it.
#[derive(Clone)]
pub struct Thread {
    pub(crate) inner: Rc<ThreadInner>,
}

impl fmt::Debug for Thread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thread({}:{})", self.id(), self.name())
    }
}

impl Thread {
    /// Creates a thread bound to the calling OS thread (shorthand for
    /// [`PendingThread::new`] + [`PendingThread::start`]).
    pub fn new(opts: ThreadOpts, now: u64) -> Result<Thread, ThreadError> {
        Ok(PendingThread::new(opts)?.start(now))
    }

    /// The thread currently being polled (or entered) on this OS thread, as
    /// SPDK's `spdk_get_thread()`.
    #[inline]
    pub fn current() -> Option<Thread> {
        current::current().map(|inner| Thread { inner })
    }

    /// Runs `f` with this thread as the current thread (to register pollers,
    /// get channels, ... from outside a poll).
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        let _g = CurrentGuard::enter(&self.inner);
        f()
    }

    /// This thread's handle.
    pub fn handle(&self) -> ThreadHandle {
        ThreadHandle(self.inner.shared.clone())
    }

    /// Thread id.
    pub fn id(&self) -> u64 {
        self.inner.shared.id
    }

    /// Thread name.
    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// Thread cpumask.
    pub fn cpumask(&self) -> CpuSet {
        lock(&self.inner.shared.cpumask).clone()
    }

    /// Time (ticks = ns) of the poll in progress or of the last poll.
    pub fn now(&self) -> u64 {
        self.inner.now.get()
    }

    /// Statistics so far.
    pub fn stats(&self) -> ThreadStats {
        let t = &self.inner;
        ThreadStats {
            busy_ns: t.st_busy.get(),
            idle_ns: t.st_idle.get(),
            msgs: t.st_msgs.get(),
            polls: t.st_polls.get(),
            poller_runs: t.st_runs.get(),
            sleeps: t.st_sleeps.get(),
        }
    }

    /// Whether this thread runs in interrupt mode.
    pub fn is_interrupt_mode(&self) -> bool {
        self.inner.shared.interrupt
    }

    /// Whether the thread is asleep right now (between
    /// [`prepare_sleep`](Self::prepare_sleep) and
    /// [`finish_sleep`](Self::finish_sleep)).
    pub fn is_sleeping(&self) -> bool {
        self.inner.in_interrupt.get()
    }

    /// Sends `f` to this thread (asynchronous, see [`ThreadHandle::send_msg`]).
    pub fn send_msg<F: FnOnce() + Send + 'static>(&self, f: F) -> Result<(), SendError> {
        self.handle().send_msg(f)
    }

    /// Defers a non-`Send` closure to this thread's next poll (runs before
    /// ring messages). For same-thread continuations only.
    pub fn defer(&self, f: impl FnOnce() + 'static) {
        self.inner.local.borrow_mut().push_back(Box::new(f));
    }

    /// Registers a poller on this thread: `period_us == 0` runs it on every
    /// poll, otherwise about every `period_us` microseconds of poll time.
    /// The closure gets its own [`Poller`] handle (to pause or unregister
    /// itself) and returns whether it did work.
    pub fn poller_register(
        &self,
        name: &str,
        period_us: u64,
        f: impl FnMut(&Poller) -> PollerStatus + 'static,
    ) -> Poller {
        let t = &self.inner;
        let id = t.next_poller_id.get();
        t.next_poller_id.set(id + 1);
        let period = period_us.saturating_mul(1000);
        let p = Poller(Rc::new(PollerInner {
            id,
            name: name.to_string(),
            period,
            state: Cell::new(PollerState::Waiting),
            running: Cell::new(false),
            gen: Cell::new(0),
            f: RefCell::new(Some(Box::new(f))),
            run_count: Cell::new(0),
            busy_count: Cell::new(0),
            thread: Rc::downgrade(t),
        }));
        t.pollers.borrow_mut().push(p.clone());
        if period == 0 {
            t.active.borrow_mut().push(p.clone());
        } else {
            t.schedule_timed(p.clone(), t.now.get() + period);
        }
        p
    }

    /// Pollers registered and not yet unregistered, in registration order.
    pub fn pollers(&self) -> Vec<Poller> {
        self.inner
            .pollers
            .borrow()
            .iter()
            .filter(|p| p.state() != PollerState::Unregistered)
            .cloned()
            .collect()
    }

    /// Number of I/O channels this thread holds.
    pub fn io_channel_count(&self) -> usize {
        self.inner.channels.borrow().len()
    }

    /// `(device name, reference count)` of each I/O channel held.
    pub fn io_channels(&self) -> Vec<(String, usize)> {
        self.inner
            .channels
            .borrow()
            .iter()
            .map(|c| (c.dev_name().to_string(), c.refs()))
            .collect()
    }

    /// Requests exit (SPDK's `spdk_thread_exit`): the thread keeps being
    /// polled — messages run, pollers run, [`on_exit`](Self::on_exit) hooks
    /// run — until all its pollers are unregistered, its I/O channels
    /// released and its queue empty; then it is exited. If that takes longer
    /// than the exit timeout, what holds it is reported
    /// ([`exit_report`](Self::exit_report), `tracing::error!`) and it is
    /// forced to exited: messages still queued are then dropped unrun when
    /// the thread is dropped (their captures are released), its channels
    /// are destroyed and its pollers dropped.
    pub fn exit(&self) {
        let s = &self.inner.shared;
        if s.state
            .compare_exchange(RUNNING, EXITING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.inner.exit_started.set(self.inner.now.get());
            let hooks = std::mem::take(&mut *self.inner.exit_hooks.borrow_mut());
            let mut local = self.inner.local.borrow_mut();
            for h in hooks {
                local.push_back(h);
            }
        }
    }

    /// Registers `f` to run on this thread (during its next poll) when exit
    /// is requested — e.g. by [`ReactorSet::stop`] — so the owner of its
    /// pollers and channels can release them and let the thread drain.
    /// Hooks run in registration order; if exit was already requested, `f`
    /// is simply deferred to the next poll.
    ///
    /// [`ReactorSet::stop`]: https://docs.rs/rspdk_event
    pub fn on_exit(&self, f: impl FnOnce() + 'static) {
        if self.is_exiting() {
            self.defer(f);
        } else {
            self.inner.exit_hooks.borrow_mut().push(Box::new(f));
        }
    }

    /// Whether exit was requested.
    pub fn is_exiting(&self) -> bool {
        self.inner.shared.state.load(Ordering::Acquire) != RUNNING
    }

    /// Whether the thread is exited (it can be dropped).
    pub fn is_exited(&self) -> bool {
        self.inner.shared.state.load(Ordering::Acquire) == EXITED
    }

    /// Set when an exit timed out: what was still holding the thread.
    pub fn exit_report(&self) -> Option<ExitReport> {
        self.inner.exit_report.borrow().clone()
    }

    /// What currently prevents the thread from exiting.
    pub fn exit_blockers(&self) -> ExitReport {
        let t = &self.inner;
        ExitReport {
            thread: self.name().to_string(),
            pollers: self
                .pollers()
                .iter()
                .map(|p| p.name().to_string())
                .collect(),
            io_channels: t
                .channels
                .borrow()
                .iter()
                .map(|c| c.dev_name().to_string())
                .collect(),
            interrupts: t.intrs.borrow().iter().map(|i| i.0.name.clone()).collect(),
            queued_msgs: t.queued(),
        }
    }

    /// Polls the thread once at time `now` (ticks = ns, monotonic): runs
    /// deferred local work, up to `max_msgs` ring messages (0 = default batch;
    /// the overflow list is drained once the ring is empty), every waiting
    /// period-0 poller, and each timed poller whose time has come. Sets the
    /// current thread for the duration.
    pub fn poll(&self, max_msgs: u32, now: u64) -> PollOutcome {
        let t = &*self.inner;
        let s = &*t.shared;
        let state = s.state.load(Ordering::Acquire);
        if state == EXITED {
            return PollOutcome::default();
        }
        let _g = CurrentGuard::enter(&self.inner);
        let delta = now.saturating_sub(t.last_now.get());
        let acc = if t.last_busy.get() {
            &t.st_busy
        } else {
            &t.st_idle
        };
        acc.set(acc.get() + delta);
        t.st_polls.set(t.st_polls.get() + 1);
        t.last_now.set(now);
        t.now.set(now);

        let mut msgs = 0u32;
        // Thread-local deferred work (e.g. I/O channel destruction).
        let n_local = t.local.borrow().len();
        for _ in 0..n_local {
            let f = t.local.borrow_mut().pop_front();
            match f {
                Some(f) => {
                    f();
                    msgs += 1;
                }
                None => break,
            }
        }
        // Ring messages, in a batch.
        let max = if max_msgs == 0 {
            DEFAULT_MSG_BATCH
        } else {
            max_msgs
        };
        let mut ring_msgs = 0u32;
        let mut ring_empty = false;
        while ring_msgs < max {
            match t.consumer.pop() {
                Some(m) => {
                    m.run();
                    ring_msgs += 1;
                }
                None => {
                    ring_empty = true;
                    break;
                }
            }
        }
        msgs += ring_msgs;
        if ring_empty && s.overflow_flag.load(Ordering::Acquire) {
            // Only once the ring is empty: any ring message a sender queued
            // before its first overflowed message has run by now, so
            // per-sender order holds.
            let batch = {
                let mut q = lock(&s.overflow);
                if t.consumer.is_empty() {
                    s.overflow_flag.store(false, Ordering::Release);
                    std::mem::take(&mut *q)
                } else {
                    VecDeque::new()
                }
            };
            for m in batch {
                m.run();
                msgs += 1;
            }
        }

        let mut pollers_busy = 0u32;
        // Fd interrupts (interrupt mode only): one non-blocking epoll_wait,
        // only when some are registered.
        if !t.intrs.borrow().is_empty() {
            pollers_busy += self.dispatch_interrupts();
        }
        // Period-0 pollers.
        let mut runs = 0u64;
        let n = t.active.borrow().len();
        for i in 0..n {
            let p = match t.active.borrow().get(i) {
                Some(p) => p.clone(),
                None => break,
            };
            if p.0.state.get() != PollerState::Waiting {
                continue;
            }
            runs += 1;
            if run_poller(&p) == PollerStatus::Busy {
                pollers_busy += 1;
            }
        }
        // Expired timed pollers: only the heap top is examined. The entry is
        // rescheduled in place before the run (one sift-down instead of a
        // pop + push); pause/unregister during the run bump the poller's
        // generation, which turns that entry stale.
        loop {
            let (p, gen) = {
                let mut heap = t.timed.borrow_mut();
                let Some(mut top) = heap.peek_mut() else {
                    break;
                };
                if top.at > now {
                    break;
                }
                let p = top.p.clone();
                if top.gen != p.0.gen.get() || p.0.state.get() != PollerState::Waiting {
                    PeekMut::pop(top);
                    continue;
                }
                let seq = t.timer_seq.get() + 1;
                t.timer_seq.set(seq);
                top.at = now + p.0.period;
                top.seq = seq;
                (p, top.gen)
            };
            runs += 1;
            if run_poller(&p) == PollerStatus::Busy {
                pollers_busy += 1;
            }
            if p.0.state.get() == PollerState::Waiting && p.0.gen.get() != gen {
                // Paused and resumed during its own run: the in-place entry
                // is stale, schedule a fresh one.
                t.schedule_timed(p.clone(), now + p.0.period);
            }
        }
        if t.pollers_dirty.replace(false) {
            let live = |p: &Poller| p.0.state.get() != PollerState::Unregistered;
            t.active.borrow_mut().retain(live);
            t.pollers.borrow_mut().retain(live);
        }
        if s.state.load(Ordering::Acquire) == EXITING {
            self.check_exit(now);
        }
        let busy = msgs > 0 || pollers_busy > 0;
        t.last_busy.set(busy);
        t.st_msgs.set(t.st_msgs.get() + msgs as u64);
        t.st_runs.set(t.st_runs.get() + runs);
        PollOutcome {
            busy,
            msgs,
            pollers_busy,
        }
    }

    fn check_exit(&self, now: u64) {
        let t = &*self.inner;
        let live = t
            .pollers
            .borrow()
            .iter()
            .any(|p| p.0.state.get() != PollerState::Unregistered);
        let chans = !t.channels.borrow().is_empty() || !t.intrs.borrow().is_empty();
        let queued = t.queued() > 0;
        if !live && !chans && !queued {
            t.shared.state.store(EXITED, Ordering::Release);
            return;
        }
        if now.saturating_sub(t.exit_started.get()) > t.exit_timeout {
            let rep = self.exit_blockers();
            tracing::error!(
                thread = %rep.thread,
                pollers = ?rep.pollers,
                io_channels = ?rep.io_channels,
                queued_msgs = rep.queued_msgs,
                "thread did not drain within its exit timeout; forcing exit"
            );
            *t.exit_report.borrow_mut() = Some(rep);
            t.shared.state.store(EXITED, Ordering::Release);
        }
    }

    /// Whether the thread has a waiting period-0 poller (then it must keep
    /// being polled and cannot sleep).
    pub fn has_active_pollers(&self) -> bool {
        self.inner
            .active
            .borrow()
            .iter()
            .any(|p| p.0.state.get() == PollerState::Waiting)
    }

    /// Registers `f` to run on this thread whenever `fd` is readable (SPDK's
    /// `spdk_interrupt_register`; level-triggered: `f` runs on every poll
    /// while the fd stays readable, so it should consume what it reads).
    /// Interrupt mode only ([`ThreadError::NotInterruptMode`] otherwise):
    /// the fd joins the thread's epoll set, so it also wakes a sleeping
    /// thread. The caller keeps `fd` open until it unregisters.
    pub fn interrupt_register(
        &self,
        fd: RawFd,
        name: &str,
        f: impl FnMut() -> PollerStatus + 'static,
    ) -> Result<Interrupt, ThreadError> {
        let t = &self.inner;
        let li = t.intr.as_ref().ok_or(ThreadError::NotInterruptMode)?;
        let id = t.next_poller_id.get();
        t.next_poller_id.set(id + 1);
        li.epoll
            .add(fd, INTR_TOKEN_BASE + id)
            .map_err(|e| ThreadError::Interrupt(e.to_string()))?;
        let i = Interrupt(Rc::new(IntrInner {
            id,
            fd,
            name: name.to_string(),
            f: RefCell::new(Some(Box::new(f))),
            live: Cell::new(true),
            thread: Rc::downgrade(t),
        }));
        t.intrs.borrow_mut().push(i.clone());
        Ok(i)
    }

    fn dispatch_interrupts(&self) -> u32 {
        let t = &*self.inner;
        let Some(li) = &t.intr else { return 0 };
        let mut tokens = [0u64; 32];
        let n = li
            .epoll
            .wait(&mut tokens, Some(Duration::ZERO))
            .unwrap_or(0);
        let mut busy = 0;
        for &tok in &tokens[..n] {
            if tok < INTR_TOKEN_BASE {
                continue;
            }
            let id = tok - INTR_TOKEN_BASE;
            let found = t.intrs.borrow().iter().find(|i| i.0.id == id).cloned();
            let Some(i) = found else { continue };
            let st = {
                let mut g = i.0.f.borrow_mut();
                g.as_mut().map(|f| f())
            };
            if st == Some(PollerStatus::Busy) {
                busy += 1;
            }
            if !i.0.live.get() {
                let f = i.0.f.borrow_mut().take();
                drop(f);
            }
        }
        busy
    }

    /// Earliest time (ticks) a timed poller is due, dropping stale entries.
    pub fn next_timer(&self) -> Option<u64> {
        let mut heap = self.inner.timed.borrow_mut();
        while let Some(e) = heap.peek() {
            if e.gen == e.p.0.gen.get() && e.p.0.state.get() == PollerState::Waiting {
                return Some(e.at);
            }
            heap.pop();
        }
        None
    }

    /// The epoll fd that becomes readable when this interrupt-mode thread
    /// has work (a message arrived or its timer fired); `None` in polling
    /// mode. A reactor adds it to its own epoll set.
    pub fn interrupt_fd(&self) -> Option<RawFd> {
        self.inner.intr.as_ref().map(|i| i.epoll.as_raw_fd())
    }

    /// Prepares to sleep (interrupt mode): returns false — do not sleep, poll
    /// again — if the thread is in polling mode, is exiting, has waiting
    /// period-0 pollers or queued work. Otherwise marks the thread sleeping
    /// (so senders write its eventfd) and arms its timerfd for the next timed
    /// poller; the caller then waits on [`interrupt_fd`](Self::interrupt_fd)
    /// and must call [`finish_sleep`](Self::finish_sleep) when woken.
    pub fn prepare_sleep(&self, now: u64) -> bool {
        let t = &*self.inner;
        let s = &*t.shared;
        let Some(intr) = &t.intr else { return false };
        if s.state.load(Ordering::Acquire) != RUNNING
            || !t.local.borrow().is_empty()
            || self.has_active_pollers()
        {
            return false;
        }
        let next = self.next_timer();
        if let Some(at) = next {
            if at <= now {
                return false;
            }
        }
        s.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !t.consumer.is_empty() || s.overflow_flag.load(Ordering::SeqCst) {
            s.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        let armed = intr
            .timer
            .set(next.map(|at| Duration::from_nanos(at - now)));
        if armed.is_err() {
            s.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        t.in_interrupt.set(true);
        t.st_sleeps.set(t.st_sleeps.get() + 1);
        true
    }

    /// Ends a sleep started by [`prepare_sleep`](Self::prepare_sleep):
    /// clears the sleeping flag and drains the eventfd and timerfd.
    pub fn finish_sleep(&self) {
        let t = &*self.inner;
        t.shared.sleeping.store(false, Ordering::SeqCst);
        t.in_interrupt.set(false);
        if let Some(intr) = &t.intr {
            if let Some(e) = &t.shared.eventfd {
                e.drain();
            }
            intr.timer.drain();
        }
    }

    /// Standalone sleep for an interrupt-mode thread not run by a reactor:
    /// if [`prepare_sleep`](Self::prepare_sleep) allows, blocks until a
    /// message, the next timer, or `timeout`. Returns whether it slept.
    pub fn sleep(&self, now: u64, timeout: Option<Duration>) -> bool {
        if !self.prepare_sleep(now) {
            return false;
        }
        if let Some(intr) = &self.inner.intr {
            let mut tokens = [0u64; 2];
            let _ = intr.epoll.wait(&mut tokens, timeout);
        }
        self.finish_sleep();
        true
    }
}

#[inline(always)]
fn run_poller(p: &Poller) -> PollerStatus {
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

/// The current thread (SPDK's `spdk_get_thread`).
pub fn get_thread() -> Option<Thread> {
    Thread::current()
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

/// Runs `f` once on every live thread, one after another (a message hop to
/// each), then `done` on the calling thread (SPDK's `spdk_for_each_thread`).
pub fn for_each_thread(
    f: impl Fn() + Send + Sync + 'static,
    done: impl FnOnce() + Send + 'static,
) -> Result<(), ThreadError> {
    let orig = Thread::current().ok_or(ThreadError::NotOnThread)?.handle();
    let st = Box::new(ThreadIterState {
        threads: all_threads(),
        idx: 0,
        f: Arc::new(f),
        done: Box::new(done),
        orig,
    });
    thread_iter_next(st);
    Ok(())
}

struct ThreadIterState {
    threads: Vec<ThreadHandle>,
    idx: usize,
    f: Arc<dyn Fn() + Send + Sync>,
    done: Box<dyn FnOnce() + Send>,
    orig: ThreadHandle,
}

fn thread_iter_next(mut st: Box<ThreadIterState>) {
    loop {
        if st.idx >= st.threads.len() {
            let ThreadIterState { done, orig, .. } = *st;
            if let Err(done) = orig.try_send(done) {
                done();
            }
            return;
        }
        let target = st.threads[st.idx].clone();
        if target.is_exited() {
            st.idx += 1;
            continue;
        }
        let sent = target.send_msg(move || {
            (st.f)();
            st.idx += 1;
            thread_iter_next(st);
        });
        if sent.is_err() {
            // Lost a race with the target's exit: the state went with the
            // dropped message, so the iteration ends without `done`.
            tracing::warn!("for_each_thread: target exited mid-iteration; iteration dropped");
        }
        return;
    }
}

/// Collects `f(thread)` from every live thread (serially, one message hop
/// each) and hands the results, in thread creation order, to `done` on the
/// calling thread. Convenient for the `thread_get_*` RPCs.
pub fn gather_from_threads<R: Send + 'static>(
    f: impl Fn(&Thread) -> R + Send + Sync + 'static,
    done: impl FnOnce(Vec<R>) + Send + 'static,
) -> Result<(), ThreadError> {
    let acc = Arc::new(Mutex::new(Vec::new()));
    let acc2 = acc.clone();
    for_each_thread(
        move || {
            if let Some(t) = Thread::current() {
                let r = f(&t);
                lock(&acc2).push(r);
            }
        },
        move || {
            let v = std::mem::take(&mut *lock(&acc));
            done(v)
        },
    )
}
