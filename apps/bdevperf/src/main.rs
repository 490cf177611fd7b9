//! `bdevperf`: I/O load on bdevs, as SPDK's examples/bdev/bdevperf.
//!
//! Flags as SPDK's: `-q` depth, `-o` I/O size, `-w` workload, `-M` read
//! percent, `-t` seconds, `-m` core mask, `-c/--json` config, `-T` target
//! bdev, `-z` wait for the `perform_tests` RPC, `-C` every core on every
//! bdev, `-j` JSON results file. One job per bdev (round-robin over cores),
//! or per (core, bdev) with `-C`. Each job keeps `-q` I/Os in flight from
//! its own lightweight thread; latencies go to an HDR histogram; `verify`
//! checks every byte it reads back.

use std::cell::{Cell, RefCell};
use std::io::{IsTerminal, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use rspdk_bdev::{bdev_open, bdevs, BdevDesc, BdevIoChannel, BdevSubsystem, IoStatus, IoType};
use rspdk_env::DmaBuf;
use rspdk_event::{App, AppContext, AppOpts};
use rspdk_rpc::{Responder, StateMask};
use rspdk_thread::{get_thread, now_ns, poller_register, PollerStatus};
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: rspdk_util::CountingAlloc = rspdk_util::CountingAlloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Workload {
    Read,
    Write,
    Randread,
    Randwrite,
    Rw,
    Randrw,
    Verify,
    Reset,
    Unmap,
    Flush,
    #[value(name = "write_zeroes")]
    WriteZeroes,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::Randread => "randread",
            Workload::Randwrite => "randwrite",
            Workload::Rw => "rw",
            Workload::Randrw => "randrw",
            Workload::Verify => "verify",
            Workload::Reset => "reset",
            Workload::Unmap => "unmap",
            Workload::Flush => "flush",
            Workload::WriteZeroes => "write_zeroes",
        }
    }

    fn random(self) -> bool {
        matches!(
            self,
            Workload::Randread | Workload::Randwrite | Workload::Randrw | Workload::Reset
        )
    }
}

/// bdevperf: I/O load on bdevs (SPDK's bdevperf flags).
#[derive(Parser, Debug, Clone)]
#[command(name = "bdevperf", version, about)]
struct Cli {
    #[command(flatten)]
    app: AppOpts,
    /// Queue depth per job.
    #[arg(short = 'q', long = "queue-depth", value_parser = clap::value_parser!(u32).range(1..=65536))]
    queue_depth: Option<u32>,
    /// I/O size in bytes (suffixes k, m accepted: 4k, 128k).
    #[arg(short = 'o', long = "io-size", value_parser = parse_size)]
    io_size: Option<usize>,
    /// Workload.
    #[arg(short = 'w', long = "workload", value_enum)]
    workload: Option<Workload>,
    /// Read percentage for rw and randrw (0-100).
    #[arg(short = 'M', long = "rwmixread", value_parser = clap::value_parser!(u32).range(0..=100))]
    rw_mix_read: Option<u32>,
    /// Run time in seconds.
    #[arg(short = 't', long = "time", value_parser = clap::value_parser!(u64).range(1..))]
    time: Option<u64>,
    /// Only this bdev (default: every bdev).
    #[arg(short = 'T', long = "target")]
    target: Option<String>,
    /// Wait for the perform_tests RPC instead of starting at once.
    #[arg(short = 'z', long = "wait-for-tests")]
    wait_for_tests: bool,
    /// Run every bdev on every core.
    #[arg(short = 'C', long = "multithread")]
    every_core: bool,
    /// Write results as JSON to this file.
    #[arg(short = 'j', long = "json-output")]
    json_output: Option<std::path::PathBuf>,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1024),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        _ => (t.as_str(), 1),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 4096, 4k or 1m"))?;
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("I/O size '{s}' must be positive")),
        Some(v) => Ok(v),
    }
}

/// What every job runs.
#[derive(Debug, Clone)]
struct TestParams {
    qd: u32,
    io_size: usize,
    workload: Workload,
    rw_mix_read: u32,
    seconds: u64,
    target: Option<String>,
    every_core: bool,
}

impl TestParams {
    fn from_cli(c: &Cli) -> Result<TestParams, String> {
        let missing = |f: &str| {
            format!("missing {f}: bdevperf needs -q, -o, -w and -t (e.g. -q 32 -o 4096 -w randread -t 10)")
        };
        let workload = c.workload.ok_or_else(|| missing("-w"))?;
        let rw_mix_read = match (workload, c.rw_mix_read) {
            (Workload::Rw | Workload::Randrw, Some(m)) => m,
            (Workload::Rw | Workload::Randrw, None) => {
                return Err("-w rw and -w randrw need -M (read percentage, 0-100)".into())
            }
            (_, _) => 0,
        };
        Ok(TestParams {
            qd: c.queue_depth.ok_or_else(|| missing("-q"))?,
            io_size: c.io_size.ok_or_else(|| missing("-o"))?,
            workload,
            rw_mix_read,
            seconds: c.time.ok_or_else(|| missing("-t"))?,
            target: c.target.clone(),
            every_core: c.every_core,
        })
    }
}

/// What a job shares with the reporter (any thread).
struct JobShared {
    bdev: String,
    core: u32,
    ios: AtomicU64,
    failed: AtomicU64,
    done: AtomicBool,
    result: Mutex<Option<JobResult>>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct JobResult {
    runtime_s: f64,
    ios: u64,
    failed: u64,
    avg_us: f64,
    min_us: f64,
    max_us: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// Per I/O on the job's core: wall-clock ns (the core polls all the
    /// time, so this is its whole cost), and, where the CPU's counters can
    /// be read, instructions and core cycles.
    cpu: CpuPerIo,
    error: Option<String>,
}

/// What one I/O costs the core that runs it.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct CpuPerIo {
    ns: f64,
    instructions: Option<f64>,
    cycles: Option<f64>,
    /// Why instructions and cycles are missing.
    unavailable: Option<String>,
}

/// The job thread's instruction and cycle counters (perf_event_open; a
/// VM without a virtual PMU has none).
struct CpuCounters {
    counters: Result<(perf_event::Counter, perf_event::Counter), String>,
}

impl CpuCounters {
    /// Counters of the calling thread, started now.
    fn start() -> CpuCounters {
        use perf_event::events::Hardware;
        let open = |e| -> std::io::Result<perf_event::Counter> {
            let mut c = perf_event::Builder::new(e)
                .observe_self()
                .any_cpu()
                .build()?;
            c.enable()?;
            Ok(c)
        };
        let counters = open(Hardware::INSTRUCTIONS)
            .and_then(|i| Ok((i, open(Hardware::CPU_CYCLES)?)))
            .map_err(|e| {
                format!("no CPU counters (perf_event_open: {e}; a VM needs a virtual PMU, and kernel.perf_event_paranoid <= 2)")
            });
        CpuCounters { counters }
    }

    /// The cost per I/O of `ios` I/Os over `runtime_ns`.
    fn per_io(&mut self, ios: u64, runtime_ns: u64) -> CpuPerIo {
        let n = ios.max(1) as f64;
        let mut out = CpuPerIo {
            ns: runtime_ns as f64 / n,
            ..Default::default()
        };
        match &mut self.counters {
            Ok((i, c)) => match (i.read(), c.read()) {
                (Ok(i), Ok(c)) => {
                    out.instructions = Some(i as f64 / n);
                    out.cycles = Some(c as f64 / n);
                }
                (Err(e), _) | (_, Err(e)) => {
                    out.unavailable = Some(format!("reading counters: {e}"))
                }
            },
            Err(e) => out.unavailable = Some(e.clone()),
        }
        out
    }
}

/// One in-flight slot's state.
struct Slot {
    submit_ns: Cell<u64>,
    offset: Cell<u64>,
    /// For verify: the write finished, the read-back is in flight.
    verifying: Cell<bool>,
}

/// A job on its own thread.
struct Job {
    p: TestParams,
    desc: BdevDesc,
    ch: BdevIoChannel,
    blocks_per_io: u64,
    /// How many whole I/Os fit in the bdev; offsets are `slot * blocks_per_io`.
    io_slots: u64,
    seq: Cell<u64>,
    rng: Cell<u64>,
    end_ns: Cell<u64>,
    start_ns: Cell<u64>,
    stopping: Cell<bool>,
    outstanding: Cell<u32>,
    last_reset_ns: Cell<u64>,
    slots: Vec<Slot>,
    hist: RefCell<rspdk_bdev::Histogram>,
    lat_sum: Cell<u128>,
    lat_min: Cell<u64>,
    lat_max: Cell<u64>,
    ios: Cell<u64>,
    failed: Cell<u64>,
    error: RefCell<Option<String>>,
    counters: RefCell<CpuCounters>,
    shared: Arc<JobShared>,
}

fn xorshift(r: &Cell<u64>) -> u64 {
    let mut x = r.get();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    r.set(x);
    x
}

/// The verify pattern: each 8-byte word names its block, word and pass.
fn fill_pattern(buf: &mut [u8], lba: u64, block_size: usize) {
    for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
        let block = lba + (i * 8 / block_size) as u64;
        let word = (block << 20) ^ (i as u64 & 0xf_ffff) ^ 0x5a5a_0000_0000_0000;
        chunk.copy_from_slice(&word.to_le_bytes());
    }
}

fn check_pattern(buf: &[u8], lba: u64, block_size: usize) -> Option<usize> {
    buf.chunks_exact(8).enumerate().find_map(|(i, chunk)| {
        let block = lba + (i * 8 / block_size) as u64;
        let word = (block << 20) ^ (i as u64 & 0xf_ffff) ^ 0x5a5a_0000_0000_0000;
        (chunk != word.to_le_bytes()).then_some(i * 8)
    })
}

impl Job {
    fn next_offset(&self) -> u64 {
        let slots = self.io_slots;
        let idx = if self.p.workload.random() {
            // Lemire's multiply-shift maps the 64-bit random number onto
            // 0..slots without a division (two 64-bit divisions per I/O
            // were ~4% of a null-bdev I/O).
            ((xorshift(&self.rng) as u128 * slots as u128) >> 64) as u64
        } else {
            let s = self.seq.get();
            let next = s + 1;
            self.seq.set(if next == slots { 0 } else { next });
            s
        };
        idx * self.blocks_per_io
    }

    fn is_read(&self) -> bool {
        match self.p.workload {
            Workload::Read | Workload::Randread | Workload::Reset => true,
            Workload::Rw | Workload::Randrw => {
                (xorshift(&self.rng) % 100) < self.p.rw_mix_read as u64
            }
            _ => false,
        }
    }

    /// Starts the next I/O of slot `i` with `buf`.
    fn submit(self: &Rc<Self>, i: usize, buf: DmaBuf) {
        let now = self.ch.now_ns();
        if self.stopping.get() || now >= self.end_ns.get() {
            self.retire();
            return;
        }
        let slot = &self.slots[i];
        slot.submit_ns.set(now);
        let bs = self.desc.bdev().block_size() as usize;
        let me = self.clone();
        let result = match self.p.workload {
            Workload::Verify if slot.verifying.get() => {
                self.ch
                    .read(&self.desc, buf, slot.offset.get(), move |st, b| {
                        me.done(i, st, b)
                    })
            }
            Workload::Verify => {
                let off = self.next_offset();
                slot.offset.set(off);
                let mut buf = buf;
                fill_pattern(&mut buf, off, bs);
                self.ch
                    .write(&self.desc, buf, off, move |st, b| me.done(i, st, b))
            }
            Workload::Unmap | Workload::Flush | Workload::WriteZeroes => {
                let t = match self.p.workload {
                    Workload::Unmap => IoType::Unmap,
                    Workload::Flush => IoType::Flush,
                    _ => IoType::WriteZeroes,
                };
                let off = self.next_offset();
                // The buffer is not needed: keep it in the slot's closure.
                let r = self
                    .ch
                    .submit_nodata(&self.desc, t, off, self.blocks_per_io, move |st| {
                        me.done(i, st, buf)
                    });
                r.map_err(|e| (e, DmaBuf::zeroed(64).expect("small DMA buffer")))
            }
            _ => {
                if self.p.workload == Workload::Reset
                    && now.saturating_sub(self.last_reset_ns.get()) > 1_000_000_000
                {
                    self.last_reset_ns.set(now);
                    let _ = self
                        .ch
                        .submit_nodata(&self.desc, IoType::Reset, 0, 0, |_| {});
                }
                let off = self.next_offset();
                if self.is_read() {
                    self.ch
                        .read(&self.desc, buf, off, move |st, b| me.done(i, st, b))
                } else {
                    self.ch
                        .write(&self.desc, buf, off, move |st, b| me.done(i, st, b))
                }
            }
        };
        if let Err((e, buf)) = result {
            if matches!(e, rspdk_bdev::BdevError::NoMemory) {
                let me = self.clone();
                self.ch.queue_io_wait(move || me.submit(i, buf));
            } else {
                *self.error.borrow_mut() = Some(e.to_string());
                self.stopping.set(true);
                self.retire();
            }
        }
    }

    fn done(self: &Rc<Self>, i: usize, status: IoStatus, buf: DmaBuf) {
        let slot = &self.slots[i];
        let lat = self.ch.now_ns().saturating_sub(slot.submit_ns.get());
        let next = buf;
        if !status.is_ok() {
            self.failed.set(self.failed.get() + 1);
            self.shared
                .failed
                .store(self.failed.get(), Ordering::Relaxed);
            if self.p.workload == Workload::Verify {
                *self.error.borrow_mut() = Some(format!(
                    "I/O at block {} failed: {status:?}",
                    slot.offset.get()
                ));
                self.stopping.set(true);
            }
        } else if self.p.workload == Workload::Verify {
            if slot.verifying.get() {
                let bs = self.desc.bdev().block_size() as usize;
                if let Some(at) = check_pattern(&next, slot.offset.get(), bs) {
                    *self.error.borrow_mut() = Some(format!(
                        "verify failed: block {} byte {} (offset {} of the I/O) differs",
                        slot.offset.get() + (at / bs) as u64,
                        at % bs,
                        at
                    ));
                    self.failed.set(self.failed.get() + 1);
                    self.stopping.set(true);
                }
                slot.verifying.set(false);
            } else {
                slot.verifying.set(true);
            }
        }
        // Count each completed I/O (a verify pair counts as two).
        self.ios.set(self.ios.get() + 1);
        // Only this job's thread writes the shared count: a plain store, not
        // a locked read-modify-write (which cost ~6% of a null I/O).
        self.shared.ios.store(self.ios.get(), Ordering::Relaxed);
        self.lat_sum.set(self.lat_sum.get() + lat as u128);
        self.lat_min.set(self.lat_min.get().min(lat));
        self.lat_max.set(self.lat_max.get().max(lat));
        self.hist.borrow_mut().tally(lat);
        self.submit(i, next);
    }

    /// A slot stops; the last one finishes the job.
    fn retire(self: &Rc<Self>) {
        let left = self.outstanding.get() - 1;
        self.outstanding.set(left);
        if left > 0 {
            return;
        }
        let runtime_ns = now_ns() - self.start_ns.get();
        let runtime = runtime_ns as f64 / 1e9;
        let h = self.hist.borrow();
        let ios = self.ios.get();
        let cpu = self.counters.borrow_mut().per_io(ios, runtime_ns);
        let us = |ns: u64| ns as f64 / 1000.0;
        let r = JobResult {
            runtime_s: runtime,
            ios,
            failed: self.failed.get(),
            avg_us: if ios > 0 {
                self.lat_sum.get() as f64 / ios as f64 / 1000.0
            } else {
                0.0
            },
            min_us: if ios > 0 { us(self.lat_min.get()) } else { 0.0 },
            max_us: us(self.lat_max.get()),
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            cpu,
            error: self.error.borrow().clone(),
        };
        *self.shared.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        self.shared.done.store(true, Ordering::Release);
        // The job's channel and descriptor go when the last Rc does.
    }
}

/// Starts a job for `bdev` on the current thread.
fn start_job(p: TestParams, shared: Arc<JobShared>) -> Result<(), String> {
    let desc = bdev_open(&shared.bdev, true, |_| {}).map_err(|e| e.to_string())?;
    let bdev = desc.bdev().clone();
    let bs = bdev.block_size() as usize;
    if p.io_size % bs != 0 {
        return Err(format!(
            "I/O size {} is not a multiple of {}'s block size {bs}",
            p.io_size,
            bdev.name()
        ));
    }
    let blocks_per_io = (p.io_size / bs) as u64;
    if blocks_per_io > bdev.num_blocks() {
        return Err(format!(
            "I/O size {} is larger than {}",
            p.io_size,
            bdev.name()
        ));
    }
    let ch = desc.get_io_channel().map_err(|e| e.to_string())?;
    let now = now_ns();
    let job = Rc::new(Job {
        blocks_per_io,
        io_slots: bdev.num_blocks() / blocks_per_io,
        seq: Cell::new(0),
        rng: Cell::new(0x9e37_79b9_7f4a_7c15 ^ ((shared.core as u64 + 1) * 0x2545_f491)),
        end_ns: Cell::new(now + p.seconds * 1_000_000_000),
        start_ns: Cell::new(now),
        stopping: Cell::new(false),
        outstanding: Cell::new(p.qd),
        last_reset_ns: Cell::new(now),
        slots: (0..p.qd)
            .map(|_| Slot {
                submit_ns: Cell::new(0),
                offset: Cell::new(0),
                verifying: Cell::new(false),
            })
            .collect(),
        // SPDK's histogram layout (granularity 7: within 1%), one bucket
        // increment per I/O; 1 ns to 10 minutes.
        hist: RefCell::new(
            rspdk_bdev::Histogram::new(
                rspdk_bdev::HISTOGRAM_DEFAULT_GRANULARITY,
                1,
                600_000_000_000,
            )
            .ok_or("latency histogram bounds")?,
        ),
        lat_sum: Cell::new(0),
        lat_min: Cell::new(u64::MAX),
        lat_max: Cell::new(0),
        ios: Cell::new(0),
        failed: Cell::new(0),
        error: RefCell::new(None),
        counters: RefCell::new(CpuCounters::start()),
        shared,
        desc,
        ch,
        p,
    });
    for i in 0..job.p.qd as usize {
        let buf = DmaBuf::zeroed_aligned(job.p.io_size, 4096, -1).map_err(|e| e.to_string())?;
        job.submit(i, buf);
    }
    Ok(())
}

/// Plans the jobs: one per bdev round-robin over cores, or every core with -C.
fn plan(p: &TestParams, cores: &[u32]) -> Result<Vec<(String, u32)>, String> {
    let names: Vec<String> = match &p.target {
        Some(t) => {
            if rspdk_bdev::bdev_get(t).is_none() {
                return Err(format!(
                    "target bdev '{t}' does not exist (create it in the --json config)"
                ));
            }
            vec![t.clone()]
        }
        None => bdevs()
            .iter()
            .filter(|b| b.claimed_by().is_none())
            .map(|b| b.name().to_string())
            .collect(),
    };
    if names.is_empty() {
        return Err(
            "no bdevs to test: give a --json config that creates some (e.g. bdev_malloc_create)"
                .into(),
        );
    }
    let mut jobs = Vec::new();
    for (i, n) in names.iter().enumerate() {
        if p.every_core {
            jobs.extend(cores.iter().map(|c| (n.clone(), *c)));
        } else {
            jobs.push((n.clone(), cores[i % cores.len()]));
        }
    }
    Ok(jobs)
}

/// `61.2 ns, 402.1 instructions, 181.0 cycles (IPC 2.22)`, or the ns and
/// why the counters are missing.
fn cpu_line(c: &CpuPerIo) -> String {
    match (c.instructions, c.cycles) {
        (Some(i), Some(cy)) => format!(
            "{:.1} ns, {i:.1} instructions, {cy:.1} cycles (IPC {:.2})",
            c.ns,
            i / cy.max(1e-9)
        ),
        _ => format!(
            "{:.1} ns; instructions and cycles: {}",
            c.ns,
            c.unavailable.as_deref().unwrap_or("not measured")
        ),
    }
}

fn core_mask(core: u32) -> String {
    format!("0x{:x}", 1u128 << core)
}

/// Prints SPDK's final table and returns the JSON results.
fn report(p: &TestParams, jobs: &[Arc<JobShared>], allocs_per_io: f64) -> Value {
    let mib = p.io_size as f64 / (1 << 20) as f64;
    println!();
    println!("{:>98}", "Latency(us)");
    println!(
        " {:<28}: {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10}",
        "Device Information",
        "runtime(s)",
        "IOPS",
        "MiB/s",
        "Fail/s",
        "TO/s",
        "Average",
        "min",
        "max"
    );
    let (mut t_iops, mut t_fail, mut t_lat, mut t_min, mut t_max) =
        (0.0, 0.0, 0.0, f64::MAX, 0.0f64);
    let mut results = Vec::new();
    let mut failed_any = false;
    for j in jobs {
        let r = j.result.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(r) = r else { continue };
        let iops = r.ios as f64 / r.runtime_s;
        let fail = r.failed as f64 / r.runtime_s;
        println!(" Job: {} (Core Mask {})", j.bdev, core_mask(j.core));
        if let Some(e) = &r.error {
            println!("\t {}: {e}", j.bdev);
            failed_any = true;
        }
        println!(
            "\t {:<20}: {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2}",
            j.bdev,
            r.runtime_s,
            iops,
            iops * mib,
            fail,
            0.0,
            r.avg_us,
            r.min_us,
            r.max_us
        );
        println!(
            "\t {:<20}  latency percentiles (us): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}",
            "", r.p50_us, r.p90_us, r.p99_us, r.p999_us
        );
        println!("\t {:<20}  per I/O on its core: {}", "", cpu_line(&r.cpu));
        t_lat += r.avg_us * iops;
        t_iops += iops;
        t_fail += fail;
        t_min = t_min.min(r.min_us);
        t_max = t_max.max(r.max_us);
        results.push(json!({
            "job": j.bdev, "core_mask": core_mask(j.core), "workload": p.workload.name(),
            "status": if r.error.is_some() { "failed" } else { "finished" },
            "queue_depth": p.qd, "io_size": p.io_size, "runtime": r.runtime_s,
            "iops": iops, "mibps": iops * mib, "io_failed": r.failed, "io_timeout": 0,
            "avg_latency_us": r.avg_us, "min_latency_us": r.min_us, "max_latency_us": r.max_us,
            "p50_latency_us": r.p50_us, "p99_latency_us": r.p99_us, "p999_latency_us": r.p999_us,
            "cpu_ns_per_io": r.cpu.ns, "instructions_per_io": r.cpu.instructions,
            "cycles_per_io": r.cpu.cycles,
            "error": r.error,
        }));
    }
    println!(" {}", "=".repeat(113));
    let avg = if t_iops > 0.0 { t_lat / t_iops } else { 0.0 };
    println!(
        " {:<28}: {:>10} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2}",
        "Total",
        "",
        t_iops,
        t_iops * mib,
        t_fail,
        0.0,
        avg,
        if t_min == f64::MAX { 0.0 } else { t_min },
        t_max
    );
    println!(" heap allocations per I/O in steady state: {allocs_per_io:.4}");
    json!({"results": results, "core_count": jobs.iter().map(|j| j.core).collect::<std::collections::BTreeSet<_>>().len(),
           "allocs_per_io": allocs_per_io, "failed": failed_any})
}

/// Runs the tests; `finished(results_json)` on the app thread at the end.
fn run_tests(
    ctx_reactors: rspdk_event::ReactorSetHandle,
    p: TestParams,
    finished: impl FnOnce(Value) + 'static,
) -> Result<(), String> {
    let cores = ctx_reactors.cores();
    let plan = plan(&p, &cores)?;
    let jobs: Vec<Arc<JobShared>> = plan
        .iter()
        .map(|(b, c)| {
            Arc::new(JobShared {
                bdev: b.clone(),
                core: *c,
                ios: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                done: AtomicBool::new(false),
                result: Mutex::new(None),
            })
        })
        .collect();
    println!(
        "Running I/O for {} seconds... ({} job(s), -q {} -o {} -w {})",
        p.seconds,
        jobs.len(),
        p.qd,
        p.io_size,
        p.workload.name()
    );
    for j in &jobs {
        let j2 = j.clone();
        let p2 = p.clone();
        ctx_reactors
            .spawn_thread_on(
                j.core,
                &format!("bdevperf_{}_{}", j.bdev, j.core),
                move || {
                    if let Err(e) = start_job(p2, j2.clone()) {
                        *j2.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(JobResult {
                            runtime_s: 1e-9,
                            ios: 0,
                            failed: 0,
                            avg_us: 0.0,
                            min_us: 0.0,
                            max_us: 0.0,
                            p50_us: 0.0,
                            p90_us: 0.0,
                            p99_us: 0.0,
                            p999_us: 0.0,
                            cpu: CpuPerIo::default(),
                            error: Some(e),
                        });
                        j2.done.store(true, Ordering::Release);
                    }
                    // The job thread exits when its job is done.
                    let me = get_thread();
                    let j3 = j2.clone();
                    let _ = poller_register("bdevperf_exit", 100_000, move |poller| {
                        if j3.done.load(Ordering::Acquire) {
                            poller.unregister();
                            if let Some(t) = &me {
                                t.exit();
                            }
                        }
                        PollerStatus::Idle
                    });
                },
            )
            .map_err(|e| e.to_string())?;
    }
    // Progress once a second on this (the app) thread; the end when all are done.
    let tty = std::io::stdout().is_terminal();
    let last = Cell::new((now_ns(), 0u64, rspdk_util::allocations()));
    let warm = Cell::new(None::<(u64, u64)>);
    let steady = Cell::new((0u64, 0u64));
    let finished = RefCell::new(Some(finished));
    let start = now_ns();
    let total_s = p.seconds;
    let io_size = p.io_size;
    let pp = p.clone();
    poller_register("bdevperf_progress", 1_000_000, move |poller| {
        let now = now_ns();
        let ios: u64 = jobs.iter().map(|j| j.ios.load(Ordering::Relaxed)).sum();
        let allocs = rspdk_util::allocations();
        let (t0, ios0, _) = last.get();
        let dt = (now - t0) as f64 / 1e9;
        let iops = (ios - ios0) as f64 / dt;
        // Allocations per I/O from the second second on (after warm-up).
        match warm.get() {
            None => warm.set(Some((ios, allocs))),
            Some((wi, wa)) => steady.set((ios - wi, allocs - wa)),
        }
        last.set((now, ios, allocs));
        let all_done = jobs.iter().all(|j| j.done.load(Ordering::Acquire));
        if !all_done {
            let elapsed = (now - start) / 1_000_000_000;
            if tty {
                let w = 30usize;
                let filled = (elapsed as usize * w / total_s.max(1) as usize).min(w);
                print!(
                    "\r[{}{}] {:>10.2} IOPS, {:>10.2} MiB/s",
                    "#".repeat(filled),
                    " ".repeat(w - filled),
                    iops,
                    iops * io_size as f64 / (1 << 20) as f64
                );
                let _ = std::io::stdout().flush();
            } else {
                println!(
                    "{:>12.2} IOPS, {:>10.2} MiB/s",
                    iops,
                    iops * io_size as f64 / (1 << 20) as f64
                );
            }
            return PollerStatus::Idle;
        }
        poller.unregister();
        let (si, sa) = steady.get();
        let per_io = if si > 0 { sa as f64 / si as f64 } else { 0.0 };
        let v = report(&pp, &jobs, per_io);
        if let Some(f) = finished.borrow_mut().take() {
            f(v);
        }
        PollerStatus::Busy
    })
    .map_err(|e| e.to_string())?;
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if !cli.wait_for_tests {
        if let Err(e) = TestParams::from_cli(&cli) {
            eprintln!("bdevperf: {e}");
            std::process::exit(2);
        }
    }
    rspdk_bdev_modules::register_all();
    let app = App::new(cli.app.clone())
        .name("bdevperf")
        .subsystem(BdevSubsystem);
    let code = app.run(move |ctx: &AppContext| {
        let reactors = ctx.reactors().clone();
        let stopper = ctx.stopper();
        let out = cli.json_output.clone();
        if cli.wait_for_tests {
            let base = cli.clone();
            let reactors2 = reactors.clone();
            let r = ctx.registry().register(
                "perform_tests",
                StateMask::RUNTIME,
                move |params: Option<Value>, resp: Responder| {
                    let mut c = base.clone();
                    if let Some(Value::Object(m)) = &params {
                        if let Some(v) = m.get("time_in_sec").and_then(Value::as_u64) {
                            c.time = Some(v);
                        }
                        if let Some(v) = m.get("queue_depth").and_then(Value::as_u64) {
                            c.queue_depth = Some(v as u32);
                        }
                        if let Some(v) = m.get("io_size").and_then(Value::as_u64) {
                            c.io_size = Some(v as usize);
                        }
                    }
                    match TestParams::from_cli(&c) {
                        Ok(p) => {
                            let resp = RefCell::new(Some(resp));
                            if let Err(e) = run_tests(reactors2.clone(), p, move |v| {
                                if let Some(r) = resp.borrow_mut().take() {
                                    r.success(&v)
                                }
                            }) {
                                // run_tests failed before taking the responder's closure: answer is dropped.
                                tracing::error!("perform_tests: {e}");
                            }
                        }
                        Err(e) => resp.error(rspdk_rpc::RpcError::invalid_params(e)),
                    }
                },
            );
            if let Err(e) = r {
                eprintln!("bdevperf: {e}");
                stopper.stop(1);
            }
            println!(
                "bdevperf: waiting for perform_tests RPC on {}",
                ctx.rpc_socket().display()
            );
            return;
        }
        let p = TestParams::from_cli(&cli).expect("checked before start");
        let stop2 = stopper.clone();
        if let Err(e) = run_tests(reactors, p, move |v| {
            if let Some(path) = &out {
                if let Err(e) =
                    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap_or_default())
                {
                    eprintln!("bdevperf: writing {}: {e}", path.display());
                }
            }
            stop2.stop(if v["failed"] == true { 1 } else { 0 });
        }) {
            eprintln!("bdevperf: {e}");
            stopper.stop(1);
        }
    });
    std::process::exit(code);
}
