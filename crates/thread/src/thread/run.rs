//! The thread itself: polling (messages, pollers, timers), exit, and
//! interrupt-mode sleep.

use std::cell::{Cell, RefCell};
use std::collections::binary_heap::PeekMut;
use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use crate::cpuset::CpuSet;
use crate::current::{self, CurrentGuard};

use super::*;

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
