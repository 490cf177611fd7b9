//! `rspdk_nvme_perf`: an I/O load generator like SPDK's spdk_nvme_perf.
//!
//! `rspdk_nvme_perf -r 'trtype:PCIe traddr:0000:00:04.0' -q 32 -o 4096 -w randread -t 10 -c 0x1`
//! `rspdk_nvme_perf -r 'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:NQN' -q 32 -o 4096 -w randread -t 10 -c 0x2`
//!
//! One worker thread per core in the mask (pinned) and namespace, each
//! with `-P` queue pairs keeping `-q` I/Os of `-o` bytes in flight for `-t`
//! seconds. Prints IOPS, MiB/s and latency (average, min, max) per
//! namespace and core, a total, and latency percentiles (hdrhistogram).
//! `-w verify` writes a pattern and reads it back, comparing every byte.
//! The main thread polls each controller's admin queue (keep alive).

use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rspdk_env::DmaBuf;
use rspdk_nvme::{Controller, ControllerOpts, Namespace, QpairOpts, TransportId, TransportType};

#[derive(Parser, Clone)]
#[command(name = "rspdk_nvme_perf", version, about = "NVMe I/O load generator")]
struct Cli {
    /// Transport ID, e.g. 'trtype:PCIe traddr:0000:00:04.0' (repeatable;
    /// default: every NVMe controller bound to vfio-pci/uio_pci_generic).
    #[arg(short = 'r', long = "transport")]
    trid: Vec<String>,
    /// Queue depth per namespace and core.
    #[arg(short = 'q', long = "io-depth")]
    qd: u32,
    /// I/O size in bytes.
    #[arg(short = 'o', long = "io-size")]
    io_size: usize,
    /// Pattern: read, write, randread, randwrite, rw, randrw, verify (write,
    /// read back and compare).
    #[arg(short = 'w', long = "io-pattern")]
    pattern: String,
    /// Percentage of reads for rw and randrw.
    #[arg(short = 'M', long = "rwmixread")]
    rwmixread: Option<u32>,
    /// Run time in seconds.
    #[arg(short = 't', long = "time")]
    time: u64,
    /// Core mask (hex), one worker per core.
    #[arg(short = 'c', long = "core-mask", default_value = "0x1")]
    core_mask: String,
    /// Memory to reserve in MiB.
    #[arg(short = 's', long = "mem-size", default_value_t = 0)]
    mem_size: usize,
    /// IOVA mode: pa, va or auto.
    #[arg(long = "iova-mode", default_value = "auto")]
    iova_mode: String,
    /// I/O queue pairs per namespace and core (the queue depth is spread
    /// over them).
    #[arg(short = 'P', long = "num-qpairs", default_value_t = 1)]
    num_qpairs: u32,
    /// NVMe/TCP header digest.
    #[arg(short = 'H', long = "enable-tcp-hdgst")]
    hdgst: bool,
    /// NVMe/TCP data digest.
    #[arg(short = 'I', long = "enable-tcp-ddgst")]
    ddgst: bool,
}

#[derive(Clone, Copy)]
struct Workload {
    random: bool,
    read_pct: u32,
    qd: u32,
    io_size: usize,
    time: Duration,
    verify: bool,
    qpairs: u32,
}

/// An I/O buffer: DMA memory for PCIe, heap memory for TCP (the fabrics
/// transport copies to and from it).
enum Buf {
    Dma(DmaBuf),
    Heap(Vec<u8>),
}

impl Buf {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            Buf::Dma(b) => b.as_mut_ptr(),
            Buf::Heap(v) => v.as_mut_ptr(),
        }
    }
}

/// The verify pattern of block `lba`, pass `pass`.
fn pattern_byte(lba: u64, pass: u32, i: usize) -> u8 {
    (lba as u8)
        .wrapping_mul(13)
        .wrapping_add(pass as u8)
        .wrapping_add((i as u8).wrapping_mul(31))
        ^ (i >> 8) as u8
}

struct Result1 {
    name: String,
    core: u32,
    ios: u64,
    bytes: u64,
    errors: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

/// xorshift64*: per-worker randomness without allocation or locks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn parse_mask(s: &str) -> Result<Vec<u32>, String> {
    let v = u64::from_str_radix(s.trim_start_matches("0x").trim_start_matches("0X"), 16)
        .map_err(|_| format!("core mask '{s}' is not hex like 0x3"))?;
    let cores: Vec<u32> = (0..64).filter(|b| v & (1 << b) != 0).collect();
    if cores.is_empty() {
        return Err("core mask selects no core".into());
    }
    let usable = usable_cores();
    if let Some(c) = cores.iter().find(|c| !usable.contains(c)) {
        return Err(format!(
            "core mask '{s}' names core {c}, which this process cannot run on (usable cores: {usable:?})"
        ));
    }
    Ok(cores)
}

/// The CPUs this process may run on (its affinity mask).
fn usable_cores() -> Vec<u32> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // fills that local set and CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..64).collect();
        }
        (0..libc::CPU_SETSIZE as u32)
            .filter(|&c| libc::CPU_ISSET(c as usize, &set))
            .collect()
    }
}

/// Waits on the start barrier once: at the start of the measured run, or
/// when a worker gives up before it (dropped), so that the other workers
/// never wait for one that failed.
struct StartGate<'a> {
    barrier: &'a Barrier,
    passed: bool,
}

impl StartGate<'_> {
    fn pass(&mut self) {
        if !self.passed {
            self.passed = true;
            self.barrier.wait();
        }
    }
}

impl Drop for StartGate<'_> {
    fn drop(&mut self) {
        self.pass();
    }
}

fn pin(core: u32) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only read/write that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core as usize, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("warning: could not pin a worker to core {core}");
        }
    }
}

fn worker(
    ctrlr: &Controller,
    ns: &Namespace,
    core: u32,
    w: Workload,
    start: &Barrier,
) -> Result<Result1, String> {
    let mut start = StartGate {
        barrier: start,
        passed: false,
    };
    let bs = ns.block_size as usize;
    if w.io_size == 0 || w.io_size % bs != 0 {
        return Err(format!(
            "I/O size {} is not a multiple of namespace {}'s block size {bs}",
            w.io_size, ns.id
        ));
    }
    let nlb = (w.io_size / bs) as u32;
    let slots = ns.num_blocks / nlb as u64;
    if slots == 0 {
        return Err(format!("namespace {} is smaller than one I/O", ns.id));
    }
    let np = w.qpairs.clamp(1, w.qd) as usize;
    let mut qps = Vec::with_capacity(np);
    for k in 0..np {
        let depth = (w.qd as usize).div_ceil(np) as u32;
        let _ = k;
        qps.push(
            ctrlr
                .alloc_io_qpair(Some(QpairOpts {
                    io_queue_size: (depth + 1).clamp(2, 1024) as u16,
                    io_queue_requests: depth * 2,
                    delay_doorbell: true,
                }))
                .map_err(|e| e.to_string())?,
        );
    }
    let fabrics = ctrlr.is_fabrics();
    let mut bufs: Vec<Buf> = (0..w.qd)
        .map(|_| {
            if fabrics {
                Ok(Buf::Heap(vec![0u8; w.io_size]))
            } else {
                DmaBuf::zeroed(w.io_size).map(Buf::Dma)
            }
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let ptrs: Vec<*mut u8> = bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
    let mut sent = vec![Instant::now(); w.qd as usize];
    // Verify: each task writes a pattern at its LBA, then reads it back.
    let mut task_lba = vec![0u64; w.qd as usize];
    let mut task_read = vec![false; w.qd as usize];
    let mut task_pass = vec![0u32; w.qd as usize];
    let mut pass = 0u32;
    let mut mismatches = 0u64;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((core as u64 + 1) << 32) ^ ns.id as u64);
    let mut seq = 0u64;
    // Verify tasks own disjoint slots (task i: slots = i mod qd).
    let vslots = (slots / w.qd as u64).max(1);
    let mut next = |rng: &mut Rng, i: usize| -> (u64, bool) {
        if w.verify {
            let slot = (rng.next() % vslots) * w.qd as u64 + i as u64;
            return ((slot % slots) * nlb as u64, false);
        }
        let slot = if w.random {
            rng.next() % slots
        } else {
            seq = (seq + 1) % slots;
            seq
        };
        let read = (rng.next() % 100) < w.read_pct as u64;
        (slot * nlb as u64, read)
    };
    let fill = |p: *mut u8, lba: u64, pass: u32| {
        // SAFETY: `p` is a task buffer of `io_size` bytes that no command
        // uses now (its last one completed).
        let b = unsafe { std::slice::from_raw_parts_mut(p, w.io_size) };
        for (i, x) in b.iter_mut().enumerate() {
            *x = pattern_byte(lba, pass, i);
        }
    };
    let check = |p: *mut u8, lba: u64, pass: u32| -> bool {
        // SAFETY: as in `fill`: the read into it has completed.
        let b = unsafe { std::slice::from_raw_parts(p, w.io_size) };
        b.iter()
            .enumerate()
            .all(|(i, &x)| x == pattern_byte(lba, pass, i))
    };
    let submit = |qps: &mut [rspdk_nvme::IoQpair], i: usize, lba: u64, read: bool| {
        let qp = &mut qps[i % np];
        // SAFETY: each task's buffer lives in `bufs` until the end of the
        // run, after every command has completed; a task is resubmitted
        // only after its completion.
        unsafe {
            if read {
                qp.read(ns.id, ptrs[i], lba, nlb, i as u64)
            } else {
                qp.write(ns.id, ptrs[i], lba, nlb, i as u64)
            }
        }
        .map_err(|e| e.to_string())
    };
    start.pass();
    let t0 = Instant::now();
    let end = t0 + w.time;
    for (i, t) in sent.iter_mut().enumerate() {
        let (lba, read) = next(&mut rng, i);
        task_lba[i] = lba;
        if w.verify {
            fill(ptrs[i], lba, pass);
        }
        *t = Instant::now();
        submit(&mut qps, i, lba, read)?;
    }
    let (mut ios, mut errors, mut inflight) = (0u64, 0u64, w.qd as u64);
    let mut stopping = false;
    let mut done_ids = [0usize; 1024];
    let mut done_failed = [false; 1024];
    while inflight > 0 {
        let mut k = 0;
        for qp in qps.iter_mut() {
            qp.process_completions(0, |c| {
                if c.status.is_error() {
                    errors += 1;
                }
                if k < done_ids.len() {
                    done_ids[k] = c.ctx as usize;
                    done_failed[k] = c.status.is_error();
                    k += 1;
                }
            })
            .map_err(|e| e.to_string())?;
        }
        if k == 0 {
            continue;
        }
        let now = Instant::now();
        if !stopping && now >= end {
            stopping = true;
        }
        for (&i, &failed) in done_ids[..k].iter().zip(&done_failed[..k]) {
            let lat = now.duration_since(sent[i]).as_nanos() as u64;
            let _ = hist.record(lat.max(1));
            ios += 1;
            if w.verify {
                // A failed read is an I/O error (counted above), not a
                // mismatch; a failed write is not read back.
                if task_read[i] && !failed && !check(ptrs[i], task_lba[i], task_pass[i]) {
                    mismatches += 1;
                }
                if !task_read[i] && !stopping && !failed {
                    // Read back what was just written.
                    task_read[i] = true;
                    // SAFETY: the write completed; the buffer is reused.
                    unsafe { std::ptr::write_bytes(ptrs[i], 0, w.io_size) };
                    sent[i] = Instant::now();
                    submit(&mut qps, i, task_lba[i], true)?;
                    continue;
                }
            }
            if stopping {
                inflight -= 1;
            } else {
                let (lba, read) = next(&mut rng, i);
                if w.verify {
                    task_read[i] = false;
                    pass = pass.wrapping_add(1);
                    task_lba[i] = lba;
                    fill(ptrs[i], lba, pass);
                    task_pass[i] = pass;
                }
                sent[i] = Instant::now();
                submit(&mut qps, i, lba, read)?;
            }
        }
    }
    let elapsed = t0.elapsed();
    drop(qps);
    drop(bufs);
    if mismatches > 0 {
        return Err(format!(
            "verify: {mismatches} reads did not return what was written (NSID {})",
            ns.id
        ));
    }
    Ok(Result1 {
        name: transport_name(ctrlr, ns.id),
        core,
        ios,
        bytes: ios * w.io_size as u64,
        errors,
        elapsed,
        hist,
    })
}

fn transport_name(c: &Controller, nsid: u32) -> String {
    let t = c.trid();
    if c.is_fabrics() {
        format!(
            "TCP  ({}:{}) NSID {nsid}",
            t.traddr,
            t.trsvcid.as_deref().unwrap_or("4420")
        )
    } else {
        format!("PCIE ({}) NSID {nsid}", t.traddr)
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let (random, default_read) = match cli.pattern.as_str() {
        "read" => (false, 100),
        "write" => (false, 0),
        "randread" => (true, 100),
        "randwrite" => (true, 0),
        "rw" => (false, 50),
        "randrw" => (true, 50),
        "verify" => (true, 0),
        p => {
            return Err(format!(
                "-w {p}: use read, write, randread, randwrite, rw, randrw or verify"
            ))
        }
    };
    let read_pct = if cli.pattern.ends_with("rw") {
        let m = cli
            .rwmixread
            .ok_or("rw and randrw need -M (read percentage)")?;
        if m > 100 {
            return Err(format!("-M {m} is over 100"));
        }
        m
    } else {
        default_read
    };
    if cli.qd == 0 || cli.qd > 1023 {
        return Err(format!("-q {} is not in 1..=1023", cli.qd));
    }
    if cli.time == 0 {
        return Err("-t 0: the run time must be at least 1 second".into());
    }
    let cores = parse_mask(&cli.core_mask)?;
    let w = Workload {
        random,
        read_pct,
        qd: cli.qd,
        io_size: cli.io_size,
        time: Duration::from_secs(cli.time),
        verify: cli.pattern == "verify",
        qpairs: cli.num_qpairs.max(1),
    };
    let iova_mode = cli
        .iova_mode
        .parse()
        .map_err(|e: rspdk_env::EnvError| e.to_string())?;
    let parsed: Vec<TransportId> = cli
        .trid
        .iter()
        .map(|s| s.parse().map_err(|e: rspdk_nvme::NvmeError| e.to_string()))
        .collect::<Result<_, _>>()?;
    // The fabrics host needs no DMA memory: only PCIe initialises the env.
    if parsed.is_empty() || parsed.iter().any(|t| t.trtype != TransportType::Tcp) {
        rspdk_env::init(&rspdk_env::EnvOpts {
            name: "perf".into(),
            mem_size_mb: cli.mem_size,
            iova_mode,
            ..Default::default()
        })
        .map_err(|e| format!("env init: {e}"))?;
    }
    let mut trids: Vec<TransportId> = Vec::new();
    if parsed.is_empty() {
        trids = rspdk_nvme::probe_pcie(&Default::default());
    }
    for t in parsed {
        if t.trtype == TransportType::Tcp && t.is_discovery() {
            // A discovery trid: every NVM subsystem in its log page.
            let d = Controller::connect(&t, &ControllerOpts::default())
                .map_err(|e| format!("attaching {t}: {e}"))?;
            let log = d
                .discovery_log()
                .map_err(|e| format!("discovery log of {t}: {e}"))?;
            let _ = d.detach();
            for e in log.iter().filter(|e| e.subtype == 2) {
                if let Some(mut x) = e.trid() {
                    x.hostnqn = t.hostnqn.clone();
                    trids.push(x);
                }
            }
        } else {
            trids.push(t);
        }
    }
    let copts = ControllerOpts {
        header_digest: cli.hdgst,
        data_digest: cli.ddgst,
        num_io_queues: (cores.len() as u32 * cli.num_qpairs.max(1) * 4).max(16),
        ..Default::default()
    };
    if trids.is_empty() {
        return Err("no NVMe controllers (bind them with rspdk_setup config, or pass -r)".into());
    }
    let mut ctrlrs = Vec::new();
    for t in &trids {
        let c = Controller::connect(t, &copts).map_err(|e| format!("attaching {t}: {e}"))?;
        println!(
            "Attached to NVMe{} Controller at {} [{:04x}:{:04x}]",
            if c.is_fabrics() { " over Fabrics" } else { "" },
            t.traddr,
            c.data().vid(),
            c.data().ssvid()
        );
        ctrlrs.push(c);
    }
    let mut jobs = Vec::new();
    for c in &ctrlrs {
        for ns in c.namespaces() {
            // As SPDK's perf: a namespace that cannot run the workload is
            // skipped with a warning, the others run.
            let bs = ns.block_size as usize;
            if w.io_size % bs != 0 || (ns.num_blocks * bs as u64) < w.io_size as u64 {
                eprintln!(
                    "WARNING: {} skipped: its block size {bs} B and size {} blocks cannot take {} B I/Os",
                    transport_name(c, ns.id),
                    ns.num_blocks,
                    w.io_size
                );
                continue;
            }
            for &core in &cores {
                println!("Associating {} with lcore {core}", transport_name(c, ns.id));
                jobs.push((c.clone(), ns.clone(), core));
            }
        }
    }
    if jobs.is_empty() {
        return Err(format!(
            "no namespace can run {} B I/Os (-o must be a multiple of the block size)",
            w.io_size
        ));
    }
    println!("Initialization complete. Launching workers.");
    let barrier = Arc::new(Barrier::new(jobs.len()));
    let results: Vec<Result<Result1, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|(c, ns, core)| {
                let b = barrier.clone();
                s.spawn(move || {
                    pin(*core);
                    worker(c, ns, *core, w, &b)
                })
            })
            .collect();
        // Poll the admin queues (keep alive) while the workers run.
        while !hs.iter().all(|h| h.is_finished()) {
            for c in &ctrlrs {
                if let Err(e) = c.process_admin_completions() {
                    eprintln!("rspdk_nvme_perf: {}: {e}", c.trid());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    let mut all =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let (mut tiops, mut tmib, mut terr) = (0f64, 0f64, 0u64);
    println!("========================================================");
    println!("{:<55}{:>36}", "", "Latency(us)");
    println!(
        "{:<55}: {:>10} {:>10} {:>10} {:>10} {:>10}",
        "Device Information", "IOPS", "MiB/s", "Average", "min", "max"
    );
    let mut failed = None;
    for r in results {
        match r {
            Ok(r) => {
                let secs = r.elapsed.as_secs_f64();
                let iops = r.ios as f64 / secs;
                let mib = r.bytes as f64 / secs / (1 << 20) as f64;
                println!(
                    "{:<55}: {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                    format!("{} from core {:>2}", r.name, r.core),
                    iops,
                    mib,
                    r.hist.mean() / 1000.0,
                    r.hist.min() as f64 / 1000.0,
                    r.hist.max() as f64 / 1000.0
                );
                tiops += iops;
                tmib += mib;
                terr += r.errors;
                all.add(&r.hist).map_err(|e| e.to_string())?;
            }
            Err(e) => failed = Some(e),
        }
    }
    println!("========================================================");
    println!(
        "{:<55}: {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
        "Total",
        tiops,
        tmib,
        all.mean() / 1000.0,
        all.min() as f64 / 1000.0,
        all.max() as f64 / 1000.0
    );
    println!();
    println!("Summary latency data for all devices and cores:");
    println!("=================================================================================");
    for p in [
        1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 98.0, 99.0, 99.5, 99.9, 99.99, 99.999,
    ] {
        println!(
            "{p:>10.5}% : {:>12.3}us",
            all.value_at_percentile(p) as f64 / 1000.0
        );
    }
    for c in ctrlrs {
        let _ = c.detach();
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if terr > 0 {
        return Err(format!("{terr} I/Os completed with an error"));
    }
    if w.verify {
        println!("verify: every byte read back matched what was written");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rspdk_nvme_perf: {e}");
            ExitCode::FAILURE
        }
    }
}
