//! Message and poller throughput, like SPDK's `event_perf`, `reactor_perf`
//! and `poller_perf`, each next to a crossbeam-channel (or plain loop)
//! baseline measured in the same run.
//!
//! Run: `cargo bench -p rspdk_event --bench reactor_perf` (optional argument:
//! seconds per measurement, default 1).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use rspdk_event::{parse_core_mask, ReactorOpts, ReactorSet};
use rspdk_thread::{now_ns, PollerStatus, Thread, ThreadHandle, ThreadOpts};

const QD: usize = 32;

struct Ctx {
    handles: std::sync::OnceLock<Vec<ThreadHandle>>,
    counts: Vec<CachePadded<AtomicU64>>,
    stop: AtomicBool,
}

/// One event: count it on thread `here`, pass a new one to the next thread.
fn hop(ctx: &'static Ctx, here: usize) {
    let c = &ctx.counts[here];
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    if ctx.stop.load(Ordering::Relaxed) {
        return;
    }
    let hs = ctx.handles.get().expect("handles");
    let next = (here + 1) % hs.len();
    let _ = hs[next].send_msg(move || hop(ctx, next));
}

fn total(ctx: &Ctx) -> u64 {
    ctx.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// Threads `0..n` on reactors `mask`, thread i on core `cores[i]`; each
/// thread starts `QD` events. Returns events/s.
fn rspdk_events(mask: &str, cores: &[u32], secs: f64) -> f64 {
    let set = ReactorSet::start(ReactorOpts::new(parse_core_mask(mask).unwrap())).unwrap();
    let n = cores.len();
    let ctx: &'static Ctx = Box::leak(Box::new(Ctx {
        handles: std::sync::OnceLock::new(),
        counts: (0..n)
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect(),
        stop: AtomicBool::new(false),
    }));
    let hs: Vec<ThreadHandle> = cores
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            set.handle()
                .spawn_thread_on(c, &format!("perf{i}"), || {})
                .unwrap()
        })
        .collect();
    let _ = ctx.handles.set(hs.clone());
    for (i, h) in hs.iter().enumerate() {
        h.send_msg(move || {
            for _ in 0..QD {
                hop(ctx, i);
            }
        })
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let (c0, t0) = (total(ctx), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (c1, t1) = (total(ctx), Instant::now());
    ctx.stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(20));
    set.stop();
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

fn pin(cpu: usize) {
    // SAFETY: all-zero is a valid empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu < CPU_SETSIZE for the cores used here (0 and 1).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: valid cpu_set_t of the given size; pid 0 = calling thread.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

/// crossbeam-channel baseline: one pinned OS thread per entry of `cores`,
/// each with an unbounded channel of boxed closures (the general "send a
/// function" equivalent); the same QD ping-pong. Returns events/s.
fn crossbeam_events(cores: &[usize], secs: f64, boxed: bool) -> f64 {
    type Job = Box<dyn FnOnce() + Send>;
    let n = cores.len();
    let chans: Vec<_> = (0..n)
        .map(|_| crossbeam_channel::unbounded::<Job>())
        .collect();
    let tok: Vec<_> = (0..n)
        .map(|_| crossbeam_channel::unbounded::<u64>())
        .collect();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let counts: std::sync::Arc<Vec<CachePadded<AtomicU64>>> = std::sync::Arc::new(
        (0..n)
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect(),
    );
    let senders: Vec<_> = chans.iter().map(|(s, _)| s.clone()).collect();
    let tsenders: Vec<_> = tok.iter().map(|(s, _)| s.clone()).collect();
    // Each OS thread serves every "lightweight thread" mapped to its core.
    let mut by_core: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, &c) in cores.iter().enumerate() {
        match by_core.iter_mut().find(|(cc, _)| *cc == c) {
            Some((_, v)) => v.push(i),
            None => by_core.push((c, vec![i])),
        }
    }
    let joins: Vec<_> = by_core
        .into_iter()
        .map(|(core, mine)| {
            let rx: Vec<_> = mine.iter().map(|&i| chans[i].1.clone()).collect();
            let trx: Vec<_> = mine.iter().map(|&i| tok[i].1.clone()).collect();
            let (senders, tsenders, stop, counts) = (
                senders.clone(),
                tsenders.clone(),
                stop.clone(),
                counts.clone(),
            );
            std::thread::spawn(move || {
                pin(core);
                while !stop.load(Ordering::Relaxed) {
                    for (k, &i) in mine.iter().enumerate() {
                        let next = (i + 1) % n;
                        for _ in 0..64 {
                            if boxed {
                                match rx[k].try_recv() {
                                    Ok(job) => {
                                        job();
                                        let c = &counts[i];
                                        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                                        let _ = senders[next].send(Box::new(|| {}));
                                    }
                                    Err(_) => break,
                                }
                            } else {
                                match trx[k].try_recv() {
                                    Ok(v) => {
                                        let c = &counts[i];
                                        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                                        let _ = tsenders[next].send(v + 1);
                                    }
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for i in 0..n {
        for _ in 0..QD {
            if boxed {
                senders[i].send(Box::new(|| {})).unwrap();
            } else {
                tsenders[i].send(0).unwrap();
            }
        }
    }
    let sum = |c: &Vec<CachePadded<AtomicU64>>| -> u64 {
        c.iter().map(|x| x.load(Ordering::Relaxed)).sum()
    };
    std::thread::sleep(Duration::from_millis(200));
    let (c0, t0) = (sum(&counts), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (c1, t1) = (sum(&counts), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for j in joins {
        j.join().unwrap();
    }
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// ns per poller run: `n` pollers of period `period_us` on one thread
/// polled in a tight loop (clock read each poll, as a reactor does).
fn rspdk_poller_ns(n: usize, period_us: u64, secs: f64) -> f64 {
    pin(0);
    let t = Thread::new(ThreadOpts::named("poller_perf"), now_ns()).unwrap();
    t.enter(|| {
        for i in 0..n {
            t.poller_register(&format!("p{i}"), period_us, |_| PollerStatus::Idle);
        }
    });
    let runs0 = t.stats().poller_runs;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut iter = 0u32;
    loop {
        t.poll(0, now_ns());
        iter += 1;
        if iter % 1024 == 0 && Instant::now() >= end {
            break;
        }
    }
    let runs = t.stats().poller_runs - runs0;
    start.elapsed().as_nanos() as f64 / runs as f64
}

/// Baseline: `n` boxed `FnMut` called in a loop (no thread machinery).
fn baseline_poller_ns(n: usize, secs: f64) -> f64 {
    let mut v: Vec<Box<dyn FnMut() -> PollerStatus>> = (0..n)
        .map(|i| {
            let mut k = i as u64;
            Box::new(move || {
                k = std::hint::black_box(k + 1);
                PollerStatus::Idle
            }) as Box<dyn FnMut() -> PollerStatus>
        })
        .collect();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut runs = 0u64;
    loop {
        let _now = std::hint::black_box(now_ns());
        for f in v.iter_mut() {
            std::hint::black_box(f());
        }
        runs += n as u64;
        if runs % (1024 * n as u64) == 0 && Instant::now() >= end {
            break;
        }
    }
    start.elapsed().as_nanos() as f64 / runs as f64
}

fn m(x: f64) -> String {
    format!("{:.1}M/s", x / 1e6)
}

/// Median of `REPS` runs of `f`.
fn med(f: impl Fn() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..REPS).map(|_| f()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

const REPS: usize = 3;

/// (name, reactor mask, core of each lightweight thread, core of each
/// baseline OS-thread slot, SPDK figure).
type Case<'a> = (&'a str, &'a str, &'a [u32], &'a [usize], &'a str);

fn row(name: &str, a: String, b: String, c: String, spdk: &str) {
    println!("{name:<46} {a:>11} {b:>16} {c:>15} {spdk:>12}");
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1.0);
    println!("reactor_perf: median of {REPS} runs x {secs} s; QD {QD} events in flight per thread");
    // Other processes on these cores distort the cross-core figures most.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("loadavg at start: {}", load.trim());
    // RSPDK_BENCH_ONLY=event|poller runs one half only.
    let only = std::env::var("RSPDK_BENCH_ONLY").unwrap_or_default();
    if only != "poller" {
        events(secs);
    }
    if only != "event" {
        pollers(secs);
    }
}

fn events(secs: f64) {
    row(
        "benchmark (events/s, higher is better)",
        "rspdk".into(),
        "crossbeam(u64)".into(),
        "crossbeam(Box)".into(),
        "SPDK v26.05",
    );
    let cases: [Case<'_>; 3] = [
        (
            "event_perf: 2 reactors (cores 0,1) ping-pong",
            "0x3",
            &[0, 1],
            &[0, 1],
            "14.0M/s",
        ),
        (
            "event_perf: 1 reactor, 2 threads ping-pong",
            "0x1",
            &[0, 0],
            &[0, 0],
            "30.6M/s",
        ),
        (
            "reactor_perf: 1 thread sending to itself",
            "0x1",
            &[0],
            &[0],
            "18.7M/s",
        ),
    ];
    for (name, mask, cores, os_cores, spdk) in cases {
        let r = med(|| rspdk_events(mask, cores, secs));
        let b = med(|| crossbeam_events(os_cores, secs, false));
        let bb = med(|| crossbeam_events(os_cores, secs, true));
        row(name, m(r), m(b), m(bb), spdk);
    }
    println!();
}

fn pollers(secs: f64) {
    row(
        "benchmark (ns per poller run, lower is better)",
        "rspdk".into(),
        "Vec<Box<FnMut>>".into(),
        "".into(),
        "SPDK v26.05",
    );
    let mut per_poll = Vec::new();
    for n in [1usize, 16] {
        let p = med(|| rspdk_poller_ns(n, 0, secs));
        let b = med(|| baseline_poller_ns(n, secs));
        per_poll.push((n as f64, p, b));
        row(
            &format!("poller_perf: {n} period-0 poller(s)"),
            format!("{p:.1} ns"),
            format!("{b:.1} ns"),
            String::new(),
            "6 ns",
        );
    }
    // Marginal cost of one more period-0 poller in a poll (the fixed cost
    // of a poll — clock read, current-thread switch, ring check — excluded).
    let (n1, p1, b1) = per_poll[0];
    let (n2, p2, b2) = per_poll[1];
    row(
        "poller_perf: marginal period-0 poller run",
        format!("{:.1} ns", (p2 * n2 - p1 * n1) / (n2 - n1)),
        format!("{:.1} ns", (b2 * n2 - b1 * n1) / (n2 - n1)),
        String::new(),
        "6 ns",
    );
    // Timed pollers with a 1 us period and enough of them that every poll
    // finds all of them expired: measures the timer path (heap pop + push),
    // not the period.
    for n in [64usize, 1024] {
        let p = med(|| rspdk_poller_ns(n, 1, secs));
        row(
            &format!("poller_perf: {n} timed (1 us) pollers"),
            format!("{p:.1} ns"),
            String::new(),
            String::new(),
            "47 ns",
        );
    }
}
