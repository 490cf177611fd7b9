//! Reactors: one pinned OS thread per core, each polling its lightweight
//! threads in a loop.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rspdk_thread::{
    clear_thread_create_hook, now_ns, set_thread_create_hook, CpuSet, Epoll, EventFd,
    PendingThread, Thread, ThreadCreateHook, ThreadError, ThreadHandle, ThreadOpts, TICK_RATE,
};

use crate::scheduler::{RoundRobin, Scheduler, ThreadPlacement};
use crate::stats::{FrameworkGetReactors, LwThreadInfo, ReactorInfo};
use crate::sys;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Errors starting reactors or placing threads.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    /// The core mask selects no core.
    #[error("empty core mask")]
    EmptyMask,
    /// A core in the mask is not available to this process.
    #[error("core {core} is not available to this process (allowed: {allowed:?})")]
    CoreNotAvailable {
        /// The requested core.
        core: u32,
        /// The cores the process may run on.
        allowed: Vec<u32>,
    },
    /// No reactor runs on a core of the thread's cpumask.
    #[error("no reactor runs on a core of cpumask {0}")]
    NoReactorForMask(CpuSet),
    /// No reactor on that core.
    #[error("no reactor on core {0}")]
    NoSuchReactor(u32),
    /// The set is stopping; no new threads.
    #[error("reactors are stopping")]
    Stopping,
    /// Thread creation failed.
    #[error(transparent)]
    Thread(#[from] ThreadError),
    /// An OS call failed.
    #[error("{what}: {err}")]
    Os {
        /// What was attempted.
        what: &'static str,
        /// The OS error.
        err: std::io::Error,
    },
}

/// Options for [`ReactorSet::start`].
pub struct ReactorOpts {
    /// Cores to run reactors on (SPDK `-m`), see [`crate::parse_core_mask`].
    pub core_mask: CpuSet,
    /// Run lightweight threads in interrupt mode: a reactor whose threads are
    /// all idle sleeps in epoll (about 0% CPU when idle). Default: polling.
    pub interrupt_mode: bool,
    /// Pin each reactor's OS thread to its core (default true).
    pub pin: bool,
    /// Max ring messages per thread poll (0 = the thread crate default).
    pub msg_batch: u32,
    /// Message ring capacity of threads created by the set.
    pub msg_ring_size: usize,
    /// Exit timeout of threads created by the set (after it, a thread that
    /// still holds pollers/channels is reported and forced out).
    pub thread_exit_timeout: Duration,
    /// Thread placement policy (default [`RoundRobin`]).
    pub scheduler: Box<dyn Scheduler>,
}

impl ReactorOpts {
    /// Defaults for a core mask: polling mode, pinned, round-robin.
    pub fn new(core_mask: CpuSet) -> ReactorOpts {
        ReactorOpts {
            core_mask,
            interrupt_mode: false,
            pin: true,
            msg_batch: 0,
            msg_ring_size: ThreadOpts::default().msg_ring_size,
            thread_exit_timeout: Duration::from_secs(5),
            scheduler: Box::new(RoundRobin::default()),
        }
    }
}

struct NewThread {
    pending: PendingThread,
}

struct ReactorShared {
    lcore: u32,
    inbox: Mutex<Vec<NewThread>>,
    has_new: AtomicBool,
    wake: EventFd,
    tid: AtomicI32,
    busy: AtomicU64,
    idle: AtomicU64,
    sleeping: AtomicBool,
    nthreads: AtomicUsize,
    lw: Mutex<Vec<(ThreadHandle, u64)>>,
}

impl ReactorShared {
    fn notify(&self) {
        self.wake.notify();
    }
}

struct SetShared {
    reactors: Vec<Arc<ReactorShared>>,
    scheduler: Mutex<Box<dyn Scheduler>>,
    stopping: AtomicBool,
    interrupt_mode: bool,
    msg_batch: u32,
    msg_ring_size: usize,
    exit_timeout: Duration,
}

/// `Send + Sync + Clone` handle to a running [`ReactorSet`]: place threads,
/// read stats, request a stop — from any OS thread or lightweight thread.
#[derive(Clone)]
pub struct ReactorSetHandle(Arc<SetShared>);

impl std::fmt::Debug for ReactorSetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cores: Vec<u32> = self.0.reactors.iter().map(|r| r.lcore).collect();
        write!(f, "ReactorSetHandle({cores:?})")
    }
}

/// The running reactors. Every reactor, including the main (first) one,
/// runs on its own spawned OS thread named `reactor_<core>`; the thread that
/// called [`start`](Self::start) stays free (to wait for signals, or to call
/// [`wait`](Self::wait)).
pub struct ReactorSet {
    handle: ReactorSetHandle,
    joins: Vec<JoinHandle<()>>,
    hook: Option<Arc<ThreadCreateHook>>,
}

impl std::fmt::Debug for ReactorSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.handle.fmt(f)
    }
}

impl ReactorSet {
    /// Starts one reactor per core of `opts.core_mask`.
    pub fn start(opts: ReactorOpts) -> Result<ReactorSet, ReactorError> {
        if opts.core_mask.is_empty() {
            return Err(ReactorError::EmptyMask);
        }
        if opts.pin {
            let allowed = sys::allowed_cpus().map_err(|err| ReactorError::Os {
                what: "sched_getaffinity",
                err,
            })?;
            if let Some(core) = opts.core_mask.iter().find(|c| !allowed.contains(c)) {
                return Err(ReactorError::CoreNotAvailable { core, allowed });
            }
        }
        let mut reactors = Vec::new();
        for lcore in opts.core_mask.iter() {
            let wake = EventFd::new().map_err(|err| ReactorError::Os {
                what: "eventfd",
                err,
            })?;
            reactors.push(Arc::new(ReactorShared {
                lcore,
                inbox: Mutex::new(Vec::new()),
                has_new: AtomicBool::new(false),
                wake,
                tid: AtomicI32::new(0),
                busy: AtomicU64::new(0),
                idle: AtomicU64::new(0),
                sleeping: AtomicBool::new(false),
                nthreads: AtomicUsize::new(0),
                lw: Mutex::new(Vec::new()),
            }));
        }
        let set = Arc::new(SetShared {
            reactors,
            scheduler: Mutex::new(opts.scheduler),
            stopping: AtomicBool::new(false),
            interrupt_mode: opts.interrupt_mode,
            msg_batch: opts.msg_batch,
            msg_ring_size: opts.msg_ring_size,
            exit_timeout: opts.thread_exit_timeout,
        });
        let mut joins = Vec::new();
        for i in 0..set.reactors.len() {
            let s = set.clone();
            let pin = opts.pin;
            let lcore = set.reactors[i].lcore;
            let (tx, rx) = std::sync::mpsc::channel();
            let j = std::thread::Builder::new()
                .name(format!("reactor_{lcore}"))
                .spawn(move || {
                    let r = s.reactors[i].clone();
                    if pin {
                        if let Err(e) = sys::pin_to_cpu(lcore) {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                    r.tid.store(sys::gettid(), Ordering::Release);
                    // Tracepoints of this core's threads go to its ring.
                    rspdk_trace::bind_core(lcore);
                    let _ = tx.send(Ok(()));
                    reactor_run(&s, &r);
                })
                .map_err(|err| ReactorError::Os {
                    what: "spawn reactor",
                    err,
                })?;
            let started = rx
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("reactor thread died during start")));
            joins.push(j);
            if let Err(err) = started {
                set.stopping.store(true, Ordering::Release);
                for r in &set.reactors {
                    r.notify();
                }
                for j in joins {
                    let _ = j.join();
                }
                return Err(ReactorError::Os {
                    what: "sched_setaffinity",
                    err,
                });
            }
        }
        // Serve `rspdk_thread::thread_create` (library code creating threads)
        // unless another running set already does.
        let weak = Arc::downgrade(&set);
        let hook: Arc<ThreadCreateHook> = Arc::new(move |opts: ThreadOpts| {
            let s = weak.upgrade().ok_or(ThreadError::NoCreateHook)?;
            let mask = Some(opts.cpumask).filter(|m| !m.is_empty());
            ReactorSetHandle(s)
                .spawn_thread(&opts.name, mask, || {})
                .map_err(|e| match e {
                    ReactorError::Thread(t) => t,
                    other => ThreadError::Placement(other.to_string()),
                })
        });
        let hook = set_thread_create_hook(hook.clone()).then_some(hook);
        Ok(ReactorSet {
            handle: ReactorSetHandle(set),
            joins,
            hook,
        })
    }

    /// A handle usable from anywhere.
    pub fn handle(&self) -> ReactorSetHandle {
        self.handle.clone()
    }

    /// See [`ReactorSetHandle::spawn_thread`].
    pub fn spawn_thread(
        &self,
        name: &str,
        cpumask: Option<CpuSet>,
        init: impl FnOnce() + Send + 'static,
    ) -> Result<ThreadHandle, ReactorError> {
        self.handle.spawn_thread(name, cpumask, init)
    }

    /// See [`ReactorSetHandle::reactors_info`].
    pub fn reactors_info(&self) -> FrameworkGetReactors {
        self.handle.reactors_info()
    }

    /// Stops: every thread is asked to exit, reactors keep polling until
    /// their threads have drained (or hit their exit timeout), then the OS
    /// threads are joined.
    pub fn stop(mut self) {
        self.handle.request_stop();
        self.join_all();
    }

    /// Blocks until some holder of a handle calls
    /// [`ReactorSetHandle::request_stop`] and all reactors have finished.
    pub fn wait(mut self) {
        self.join_all();
    }

    fn join_all(&mut self) {
        if let Some(h) = self.hook.take() {
            clear_thread_create_hook(&h);
        }
        for j in std::mem::take(&mut self.joins) {
            let _ = j.join();
        }
    }
}

impl Drop for ReactorSet {
    /// Dropping a running set stops it (as [`ReactorSet::stop`]).
    fn drop(&mut self) {
        if !self.joins.is_empty() {
            self.handle.request_stop();
            self.join_all();
        }
    }
}

impl ReactorSetHandle {
    /// Cores with a reactor, ascending; the first is the main reactor.
    pub fn cores(&self) -> Vec<u32> {
        self.0.reactors.iter().map(|r| r.lcore).collect()
    }

    /// The core of the reactor that runs thread `id`, if it is on one.
    pub fn thread_core(&self, id: u64) -> Option<u32> {
        self.0
            .reactors
            .iter()
            .find(|r| lock(&r.lw).iter().any(|(h, _)| h.id() == id))
            .map(|r| r.lcore)
    }

    /// The main (first) reactor's core.
    pub fn main_core(&self) -> u32 {
        self.0.reactors[0].lcore
    }

    /// Creates a lightweight thread, places it with the scheduler (on a
    /// reactor whose core is in `cpumask`, any if `None`), and queues `init`
    /// as its first message. Returns as soon as the thread is addressable;
    /// it starts running on its reactor's next loop.
    pub fn spawn_thread(
        &self,
        name: &str,
        cpumask: Option<CpuSet>,
        init: impl FnOnce() + Send + 'static,
    ) -> Result<ThreadHandle, ReactorError> {
        let s = &*self.0;
        if s.stopping.load(Ordering::Acquire) {
            return Err(ReactorError::Stopping);
        }
        let cores = self.cores();
        // No cpumask = every reactor core (as SPDK: the app's core mask).
        let mask = cpumask
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| CpuSet::from_cpus(cores.iter().copied()));
        let candidates: Vec<usize> = (0..cores.len())
            .filter(|&i| mask.is_empty() || mask.contains(cores[i]))
            .collect();
        if candidates.is_empty() {
            return Err(ReactorError::NoReactorForMask(mask));
        }
        let load: Vec<usize> = s
            .reactors
            .iter()
            .map(|r| r.nthreads.load(Ordering::Relaxed))
            .collect();
        let idx = {
            let mut sched = lock(&s.scheduler);
            let placement = ThreadPlacement {
                name,
                cpumask: &mask,
                cores: &cores,
                candidates: &candidates,
                threads_per_reactor: &load,
            };
            sched.place(&placement)
        };
        let idx = if candidates.contains(&idx) {
            idx
        } else {
            candidates[0]
        };
        self.spawn_on_index(idx, name, mask, init)
    }

    /// Creates a thread on the reactor of core `lcore` (e.g. the app thread
    /// on the main core), bypassing the scheduler.
    pub fn spawn_thread_on(
        &self,
        lcore: u32,
        name: &str,
        init: impl FnOnce() + Send + 'static,
    ) -> Result<ThreadHandle, ReactorError> {
        let idx = self
            .0
            .reactors
            .iter()
            .position(|r| r.lcore == lcore)
            .ok_or(ReactorError::NoSuchReactor(lcore))?;
        let mut mask = CpuSet::new();
        mask.insert(lcore);
        self.spawn_on_index(idx, name, mask, init)
    }

    fn spawn_on_index(
        &self,
        idx: usize,
        name: &str,
        cpumask: CpuSet,
        init: impl FnOnce() + Send + 'static,
    ) -> Result<ThreadHandle, ReactorError> {
        let s = &*self.0;
        if s.stopping.load(Ordering::Acquire) {
            return Err(ReactorError::Stopping);
        }
        let pending = PendingThread::new(ThreadOpts {
            name: name.to_string(),
            cpumask,
            interrupt_mode: s.interrupt_mode,
            msg_ring_size: s.msg_ring_size,
            exit_timeout: s.exit_timeout,
        })?;
        let h = pending.handle();
        h.send_msg(init).map_err(|_| ThreadError::Exited)?;
        let r = &s.reactors[idx];
        r.nthreads.fetch_add(1, Ordering::Relaxed);
        lock(&r.inbox).push(NewThread { pending });
        r.has_new.store(true, Ordering::Release);
        r.notify();
        Ok(h)
    }

    /// Asks every reactor to stop (asynchronous; safe from inside a
    /// lightweight thread). [`ReactorSet::wait`] / [`ReactorSet::stop`] join.
    pub fn request_stop(&self) {
        self.0.stopping.store(true, Ordering::Release);
        for r in &self.0.reactors {
            r.notify();
        }
    }

    /// Name of the current scheduler (`framework_get_scheduler`).
    pub fn scheduler_name(&self) -> String {
        lock(&self.0.scheduler).name().to_string()
    }

    /// Replaces the placement policy for threads created from now on
    /// (`framework_set_scheduler`; existing threads are not moved — thread
    /// migration is not implemented yet).
    pub fn set_scheduler(&self, scheduler: Box<dyn Scheduler>) {
        *lock(&self.0.scheduler) = scheduler;
    }

    /// Whether the reactor on `lcore` is asleep in epoll right now
    /// (interrupt mode with every thread idle).
    pub fn is_sleeping(&self, lcore: u32) -> bool {
        self.0
            .reactors
            .iter()
            .any(|r| r.lcore == lcore && r.sleeping.load(Ordering::Relaxed))
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.0.stopping.load(Ordering::Acquire)
    }

    /// Stats for `framework_get_reactors`.
    pub fn reactors_info(&self) -> FrameworkGetReactors {
        let now = now_ns();
        let reactors = self
            .0
            .reactors
            .iter()
            .map(|r| {
                let tid = r.tid.load(Ordering::Acquire);
                let (usr, sys) = crate::stats::task_cpu_ticks(tid).unwrap_or((0, 0));
                ReactorInfo {
                    lcore: r.lcore,
                    tid,
                    busy: r.busy.load(Ordering::Relaxed),
                    idle: r.idle.load(Ordering::Relaxed),
                    in_interrupt: self.0.interrupt_mode,
                    irq: 0,
                    sys,
                    usr,
                    lw_threads: lock(&r.lw)
                        .iter()
                        .map(|(h, start)| LwThreadInfo {
                            name: h.name().to_string(),
                            id: h.id(),
                            cpumask: h.cpumask().to_hex(),
                            elapsed: now.saturating_sub(*start),
                        })
                        .collect(),
                }
            })
            .collect();
        FrameworkGetReactors {
            tick_rate: TICK_RATE,
            pid: std::process::id(),
            reactors,
        }
    }
}

const WAKE_TOKEN: u64 = u64::MAX;

fn reactor_run(s: &SetShared, r: &ReactorShared) {
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(lcore = r.lcore, "reactor epoll: {e}");
            return;
        }
    };
    if let Err(e) = epoll.add(r.wake.as_raw_fd(), WAKE_TOKEN) {
        tracing::error!(lcore = r.lcore, "reactor epoll add: {e}");
        return;
    }
    let mut threads: Vec<Thread> = Vec::new();
    let mut stop_sent = false;
    let mut last = now_ns();
    let mut last_busy = false;
    let (mut busy_ns, mut idle_ns) = (0u64, 0u64);
    let mut tokens = [0u64; 32];
    loop {
        let now = now_ns();
        let d = now.saturating_sub(last);
        if last_busy {
            busy_ns += d;
            r.busy.store(busy_ns, Ordering::Relaxed);
        } else {
            idle_ns += d;
            r.idle.store(idle_ns, Ordering::Relaxed);
        }
        last = now;

        if r.has_new.load(Ordering::Acquire) {
            r.has_new.store(false, Ordering::Release);
            r.wake.drain();
            let new: Vec<NewThread> = std::mem::take(&mut *lock(&r.inbox));
            for n in new {
                let t = n.pending.start(now);
                if let Some(fd) = t.interrupt_fd() {
                    if let Err(e) = epoll.add(fd, t.id()) {
                        tracing::error!(thread = t.name(), "epoll add: {e}");
                    }
                }
                if stop_sent {
                    t.exit();
                }
                lock(&r.lw).push((t.handle(), now));
                threads.push(t);
            }
        }

        let mut busy = false;
        for t in &threads {
            busy |= t.poll(s.msg_batch, now).busy;
        }

        if threads.iter().any(|t| t.is_exited()) {
            threads.retain(|t| {
                if !t.is_exited() {
                    return true;
                }
                if let Some(fd) = t.interrupt_fd() {
                    let _ = epoll.remove(fd);
                }
                let id = t.id();
                lock(&r.lw).retain(|(h, _)| h.id() != id);
                r.nthreads.fetch_sub(1, Ordering::Relaxed);
                false
            });
        }

        if s.stopping.load(Ordering::Acquire) {
            if !stop_sent {
                for t in &threads {
                    t.exit();
                }
                stop_sent = true;
                busy = true;
            }
            if threads.is_empty() && !r.has_new.load(Ordering::Acquire) {
                break;
            }
        }
        last_busy = busy;

        if s.interrupt_mode && !busy && !stop_sent {
            // Sleep only if every thread agrees; undo the ones that did if
            // one refuses.
            let now = now_ns();
            let mut prepared = 0;
            for t in &threads {
                if !t.prepare_sleep(now) {
                    break;
                }
                prepared += 1;
            }
            if prepared == threads.len() {
                r.sleeping.store(true, Ordering::Relaxed);
                let _ = epoll.wait(&mut tokens, None);
                r.sleeping.store(false, Ordering::Relaxed);
                r.wake.drain();
            }
            for t in &threads[..prepared] {
                t.finish_sleep();
            }
        }
    }
    drop(threads);
}
