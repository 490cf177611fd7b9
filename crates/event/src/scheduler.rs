//! Thread placement. [`RoundRobin`] is the default; a dynamic scheduler
//! (SPDK's `dynamic`: move threads by load, consolidate idle ones) would
//! implement [`Scheduler`] too and additionally needs thread migration,
//! which is not implemented yet.

use rspdk_thread::CpuSet;

/// What the scheduler knows when placing a new thread.
#[derive(Debug)]
pub struct ThreadPlacement<'a> {
    /// Thread name.
    pub name: &'a str,
    /// Thread cpumask (empty = any).
    pub cpumask: &'a CpuSet,
    /// Core of each reactor, by reactor index.
    pub cores: &'a [u32],
    /// Reactor indices allowed by the cpumask (never empty).
    pub candidates: &'a [usize],
    /// Threads currently on each reactor, by reactor index.
    pub threads_per_reactor: &'a [usize],
}

/// Chooses the reactor for each new thread.
pub trait Scheduler: Send {
    /// Scheduler name (`framework_get_scheduler`).
    fn name(&self) -> &str;
    /// Returns a reactor index out of `p.candidates` (anything else falls
    /// back to the first candidate).
    fn place(&mut self, p: &ThreadPlacement<'_>) -> usize;
}

/// Places threads on the candidate reactors in turn (SPDK's default
/// `static` placement of new threads).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl Scheduler for RoundRobin {
    fn name(&self) -> &str {
        "static"
    }

    fn place(&mut self, p: &ThreadPlacement<'_>) -> usize {
        // Walk reactor indices round-robin, skipping non-candidates.
        let n = p.cores.len();
        for _ in 0..n {
            let i = self.next % n;
            self.next = (self.next + 1) % n;
            if p.candidates.contains(&i) {
                return i;
            }
        }
        p.candidates[0]
    }
}
