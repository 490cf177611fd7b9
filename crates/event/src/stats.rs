//! `framework_get_reactors` JSON structs (SPDK field names).

use serde::Serialize;

/// One lightweight thread on a reactor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LwThreadInfo {
    /// Thread name.
    pub name: String,
    /// Thread id.
    pub id: u64,
    /// Cpumask, hex without `0x`.
    pub cpumask: String,
    /// Ticks since the thread was placed on this reactor.
    pub elapsed: u64,
}

/// One reactor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReactorInfo {
    /// Core.
    pub lcore: u32,
    /// Kernel thread id of the reactor's OS thread.
    pub tid: i32,
    /// Busy ticks (loop iterations in which some thread did work).
    pub busy: u64,
    /// Idle ticks.
    pub idle: u64,
    /// Whether the reactor runs in interrupt mode (the mode, as SPDK).
    pub in_interrupt: bool,
    /// Interrupt time (not measured; always 0).
    pub irq: u64,
    /// System CPU time of the reactor OS thread, in clock ticks (`USER_HZ`).
    pub sys: u64,
    /// User CPU time of the reactor OS thread, in clock ticks (`USER_HZ`).
    pub usr: u64,
    /// Lightweight threads on it.
    pub lw_threads: Vec<LwThreadInfo>,
}

/// Result of `framework_get_reactors`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrameworkGetReactors {
    /// Ticks per second of `busy`/`idle`/`elapsed`.
    pub tick_rate: u64,
    /// Process id.
    pub pid: u32,
    /// One entry per reactor.
    pub reactors: Vec<ReactorInfo>,
}

/// (utime, stime) in clock ticks of task `tid` of this process, from
/// `/proc/self/task/<tid>/stat`.
pub(crate) fn task_cpu_ticks(tid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // Fields after the ")" closing the command name; utime and stime are
    // fields 14 and 15 overall, i.e. 12th and 13th after it.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}
