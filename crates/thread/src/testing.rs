//! Deterministic multi-thread test harness (like SPDK's
//! `test/common/lib/ut_multithread.c`): N lightweight threads polled in turn
//! on the calling OS thread, with a fake clock that only moves when told.

use crate::thread::{Thread, ThreadHandle, ThreadOpts};

/// N threads and a fake clock (ticks = ns, starting at 0).
#[derive(Debug)]
pub struct UtThreads {
    threads: Vec<Thread>,
    now: u64,
}

/// Upper bound on rounds in [`UtThreads::poll_threads`] before it panics
/// (a poller that is always busy would otherwise loop forever).
pub const MAX_ROUNDS: usize = 1_000_000;

impl UtThreads {
    /// Creates `n` polling-mode threads named `ut_thread0..`.
    pub fn new(n: usize) -> UtThreads {
        Self::with_opts(n, |i| ThreadOpts::named(&format!("ut_thread{i}")))
    }

    /// Creates `n` threads with per-index options.
    pub fn with_opts(n: usize, opts: impl Fn(usize) -> ThreadOpts) -> UtThreads {
        let threads = (0..n)
            .map(|i| Thread::new(opts(i), 0).expect("thread create"))
            .collect();
        UtThreads { threads, now: 0 }
    }

    /// Thread `i`.
    pub fn thread(&self, i: usize) -> &Thread {
        &self.threads[i]
    }

    /// Handle of thread `i`.
    pub fn handle(&self, i: usize) -> ThreadHandle {
        self.threads[i].handle()
    }

    /// Number of threads.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether there are no threads.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Runs `f` with thread `i` as the current thread (SPDK UT's
    /// `set_thread(i)` followed by a direct call).
    pub fn run_on<R>(&self, i: usize, f: impl FnOnce() -> R) -> R {
        self.threads[i].enter(f)
    }

    /// Current fake time in ns.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Moves the fake clock forward (nothing runs until the next poll).
    pub fn advance_time_us(&mut self, us: u64) {
        self.now += us * 1000;
    }

    /// Polls thread `i` once at the fake time; returns whether it was busy.
    pub fn poll_thread(&self, i: usize) -> bool {
        self.threads[i].poll(0, self.now).busy
    }

    /// Polls every thread in turn until a whole round finds no work;
    /// returns the number of busy polls.
    pub fn poll_threads(&self) -> usize {
        let mut busy_polls = 0;
        for _ in 0..MAX_ROUNDS {
            let mut any = false;
            for t in &self.threads {
                if t.poll(0, self.now).busy {
                    any = true;
                    busy_polls += 1;
                }
            }
            if !any {
                return busy_polls;
            }
        }
        panic!("poll_threads: threads still busy after {MAX_ROUNDS} rounds");
    }

    /// Advances the clock in `step_us` steps up to `total_us`, running
    /// [`poll_threads`](Self::poll_threads) at each step.
    pub fn run_for_us(&mut self, total_us: u64, step_us: u64) {
        let mut t = 0;
        while t < total_us {
            self.advance_time_us(step_us);
            t += step_us;
            self.poll_threads();
        }
    }

    /// Drops exited threads, returning how many remain.
    pub fn reap_exited(&mut self) -> usize {
        self.threads.retain(|t| !t.is_exited());
        self.threads.len()
    }
}
