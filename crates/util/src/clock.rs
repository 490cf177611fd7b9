//! The tick clock passed to `Thread::poll` by reactors (fenced `unsafe`
//! module: the only unsafe is reading the TSC).
//!
//! [`now_ns`] is monotonic nanoseconds since the first call in the process.
//! On x86-64 with an invariant TSC (`constant_tsc` and `nonstop_tsc` in
//! `/proc/cpuinfo`) it reads the TSC (~8 ns instead of ~20 ns for
//! `clock_gettime` under KVM) scaled by a factor calibrated once against
//! `Instant` over 5 ms (preemption-safe sampling); otherwise it uses `Instant`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Tsc {
    tsc0: u64,
    /// Nanoseconds per tick, fixed point 32.32.
    mult: u64,
}

enum Source {
    Tsc(Tsc),
    Instant(Instant),
}

static SOURCE: OnceLock<Source> = OnceLock::new();

#[cfg(target_arch = "x86_64")]
#[inline]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects and is available on every x86-64
    // CPU; it is only used when /proc/cpuinfo reports an invariant TSC.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// An `Instant` and the TSC value at (about) the same moment.
#[cfg(target_arch = "x86_64")]
fn tight_pair() -> (Instant, u64) {
    let mut best = None;
    for _ in 0..1000 {
        let a = rdtsc();
        let i = Instant::now();
        let b = rdtsc();
        let gap = b.wrapping_sub(a);
        let mid = a.wrapping_add(gap / 2);
        if gap < 20_000 {
            return (i, mid);
        }
        match best {
            Some((g, _, _)) if g <= gap => {}
            _ => best = Some((gap, i, mid)),
        }
    }
    let (_, i, mid) = best.expect("at least one sample");
    (i, mid)
}

#[cfg(target_arch = "x86_64")]
fn calibrate() -> Source {
    let invariant = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.contains(&"constant_tsc") && f.contains(&"nonstop_tsc")
                })
                .unwrap_or(false)
        })
        .unwrap_or(false);
    if !invariant {
        return Source::Instant(Instant::now());
    }
    // Each sample pairs an `Instant` with the TSC read around it; a sample
    // whose two TSC reads are far apart (the thread was preempted in
    // between) is retried, so preemption can only lengthen the window, not
    // skew it.
    let (t0, c0) = tight_pair();
    while t0.elapsed() < Duration::from_millis(5) {
        std::hint::spin_loop();
    }
    let (t1, c1) = tight_pair();
    let ns = t1.duration_since(t0).as_nanos() as u64;
    let ticks = c1.wrapping_sub(c0);
    if ticks == 0 {
        return Source::Instant(t0);
    }
    let mult = ((ns as u128) << 32) / ticks as u128;
    Source::Tsc(Tsc {
        tsc0: c0,
        mult: mult as u64,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn calibrate() -> Source {
    Source::Instant(Instant::now())
}

/// Monotonic nanoseconds since the first call in this process: the clock
/// reactors pass to `Thread::poll`.
#[inline]
pub fn now_ns() -> u64 {
    match SOURCE.get_or_init(calibrate) {
        #[cfg(target_arch = "x86_64")]
        Source::Tsc(t) => {
            let d = rdtsc().wrapping_sub(t.tsc0);
            ((d as u128 * t.mult as u128) >> 32) as u64
        }
        #[cfg(not(target_arch = "x86_64"))]
        Source::Tsc(_) => 0,
        Source::Instant(i) => i.elapsed().as_nanos() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_close_to_real_time() {
        let a = now_ns();
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let b = now_ns();
        let real = t.elapsed().as_nanos() as u64;
        assert!(b > a);
        let d = b - a;
        // Within 5% of the real elapsed time.
        assert!(
            d.abs_diff(real) < real / 20,
            "clock {d} ns vs real {real} ns"
        );
    }
}
