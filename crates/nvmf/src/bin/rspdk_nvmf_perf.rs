//! `rspdk_nvmf_perf`: an NVMe/TCP load generator with `spdk_nvme_perf`'s
//! flags, on `rspdk_nvmf::host` (until `rspdk_nvme_perf` speaks TCP).
//! One I/O queue per run, polled on the calling thread.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rspdk_nvme::TransportId;
use rspdk_nvmf::host::{read_cmd, write_cmd, HostOpts, TcpController};

/// NVMe/TCP perf (spdk_nvme_perf's flags).
#[derive(Parser, Debug)]
#[command(
    name = "rspdk_nvmf_perf",
    version,
    about = "NVMe/TCP load generator (spdk_nvme_perf's flags)"
)]
struct Cli {
    /// Transport ID: 'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:NQN'.
    #[arg(short = 'r', long = "transport")]
    trid: String,
    /// Queue depth.
    #[arg(short = 'q', long = "io-depth", default_value_t = 32)]
    depth: usize,
    /// I/O size in bytes.
    #[arg(short = 'o', long = "io-size", default_value_t = 4096)]
    size: usize,
    /// read, write, randread, randwrite, rw, randrw, verify (write, read
    /// back and compare, a queue depth at a time).
    #[arg(short = 'w', long = "io-pattern")]
    pattern: String,
    /// Read percentage for rw/randrw.
    #[arg(short = 'M', long = "rwmixread", default_value_t = 50)]
    mix: u32,
    /// Seconds.
    #[arg(short = 't', long = "time", default_value_t = 5)]
    time: u64,
    /// Core mask: the first core is the one the poller runs on.
    #[arg(short = 'c', long = "core-mask")]
    mask: Option<String>,
    /// Header digests.
    #[arg(short = 'H', long = "enable-tcp-hdgst")]
    hdgst: bool,
    /// Data digests.
    #[arg(short = 'I', long = "enable-tcp-ddgst")]
    ddgst: bool,
}

fn pin(mask: &str) -> Result<(), String> {
    let set = rspdk_event::parse_core_mask(mask).map_err(|e| e.to_string())?;
    let cpu = set.first().ok_or("empty core mask")?;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut cs: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (parse_core_mask bounds it).
    unsafe { libc::CPU_SET(cpu as usize, &mut cs) };
    // SAFETY: valid pointer and size for this thread's affinity.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &cs) };
    if r != 0 {
        return Err(format!(
            "pin to core {cpu}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    if let Some(m) = &cli.mask {
        pin(m)?;
    }
    let (rand, read_pct) = match cli.pattern.as_str() {
        "verify" => (true, 0),
        "read" => (false, 100),
        "write" => (false, 0),
        "randread" => (true, 100),
        "randwrite" => (true, 0),
        "rw" => (false, cli.mix.min(100)),
        "randrw" => (true, cli.mix.min(100)),
        p => {
            return Err(format!(
                "-w {p}: one of read, write, randread, randwrite, rw, randrw"
            ))
        }
    };
    let trid: TransportId = cli.trid.parse().map_err(|e| format!("-r: {e}"))?;
    let opts = HostOpts {
        header_digest: cli.hdgst,
        data_digest: cli.ddgst,
        io_queue_size: (cli.depth + 1).clamp(2, 1024) as u16,
        ..HostOpts::default()
    };
    let mut c = TcpController::connect(&trid, &opts).map_err(|e| e.to_string())?;
    let (nsid, nblocks, bs) = *c
        .namespaces()
        .map_err(|e| e.to_string())?
        .first()
        .ok_or("the subsystem has no namespace")?;
    if cli.size % bs as usize != 0 || cli.size == 0 {
        return Err(format!(
            "-o {}: not a multiple of the {bs}-byte block",
            cli.size
        ));
    }
    let nlb = (cli.size / bs as usize) as u32;
    let slots = nblocks / nlb as u64;
    println!(
        "Attached to NVMe over Fabrics controller at {}: {} {} (namespace {nsid}: {} blocks of {bs})",
        cli.trid,
        c.model(),
        c.serial(),
        nblocks
    );
    let mut q = c.alloc_io_qpair().map_err(|e| e.to_string())?;
    if cli.pattern == "verify" {
        return verify(&mut q, &cli, nsid, nlb, slots);
    }
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m.max(1)
    };
    let mut seq = 0u64;
    let mut bufs: Vec<Vec<u8>> = (0..cli.depth).map(|_| vec![0xa5; cli.size]).collect();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(cli.time);
    let mut ios = 0u64;
    let mut submit =
        |q: &mut rspdk_nvmf::host::TcpQpair, buf: Vec<u8>, next: &mut dyn FnMut(u64) -> u64| {
            let slot = if rand {
                next(slots)
            } else {
                seq = (seq + 1) % slots;
                seq
            };
            let is_read = next(100) < read_pct as u64;
            let sqe = if is_read {
                read_cmd(nsid, slot * nlb as u64, nlb)
            } else {
                write_cmd(nsid, slot * nlb as u64, nlb)
            };
            let now = t0.elapsed().as_nanos() as u64;
            q.submit(sqe, buf, !is_read, now).map_err(|e| e.to_string())
        };
    for _ in 0..cli.depth {
        let b = bufs.pop().expect("depth buffers");
        submit(&mut q, b, &mut next)?;
    }
    let mut failed = 0u64;
    let mut last = Instant::now();
    while q.outstanding() > 0 {
        let mut back = Vec::new();
        q.process_completions(|comp| {
            let lat = (t0.elapsed().as_nanos() as u64).saturating_sub(comp.ctx);
            let _ = hist.record(lat.max(1));
            if comp.status() != (0, 0) {
                failed += 1;
            }
            back.push(comp.buf);
        })
        .map_err(|e| e.to_string())?;
        ios += back.len() as u64;
        let now = Instant::now();
        for b in back {
            if now < end {
                submit(&mut q, b, &mut next)?;
            }
        }
        if now.duration_since(last) >= Duration::from_secs(1) && now < end {
            last = now;
            println!(
                "{:>12.2} IOPS so far",
                ios as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let iops = ios as f64 / secs;
    println!("========================================================");
    println!("                                                           Latency(us)");
    println!("Device Information                     :       IOPS      MiB/s    Average        min        max");
    println!(
        "TCP (nsid {nsid}) from core {:<18}: {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
        cli.mask.as_deref().unwrap_or("-"),
        iops,
        iops * cli.size as f64 / (1 << 20) as f64,
        hist.mean() / 1000.0,
        hist.min() as f64 / 1000.0,
        hist.max() as f64 / 1000.0
    );
    println!(
        "percentiles (us): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}",
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.9) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.value_at_quantile(0.999) as f64 / 1000.0
    );
    if failed > 0 {
        return Err(format!("{failed} I/Os failed"));
    }
    Ok(())
}

/// Batches of `depth` writes of seeded patterns at random slots, each read
/// back and compared, until the time is up.
fn verify(
    q: &mut rspdk_nvmf::host::TcpQpair,
    cli: &Cli,
    nsid: u32,
    nlb: u32,
    slots: u64,
) -> Result<(), String> {
    use rspdk_nvmf::host::HostCompletion;
    let end = Instant::now() + Duration::from_secs(cli.time);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let (mut rounds, mut ios) = (0u64, 0u64);
    let wait =
        |q: &mut rspdk_nvmf::host::TcpQpair, n: usize| -> Result<Vec<HostCompletion>, String> {
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                q.process_completions(|c| out.push(c))
                    .map_err(|e| e.to_string())?;
            }
            Ok(out)
        };
    while Instant::now() < end || rounds == 0 {
        // Distinct slots per batch so the reads see this batch's writes.
        let mut batch: Vec<u64> = Vec::with_capacity(cli.depth);
        while batch.len() < cli.depth.min(slots as usize) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let s = seed % slots.max(1);
            if !batch.contains(&s) {
                batch.push(s);
            }
        }
        let pat = |slot: u64| -> Vec<u8> {
            (0..cli.size)
                .map(|i| (i as u64 ^ slot.wrapping_mul(0x9e37) ^ rounds) as u8)
                .collect()
        };
        for (i, &slot) in batch.iter().enumerate() {
            q.submit(
                write_cmd(nsid, slot * nlb as u64, nlb),
                pat(slot),
                true,
                i as u64,
            )
            .map_err(|e| e.to_string())?;
        }
        for c in wait(q, batch.len())? {
            if c.status() != (0, 0) {
                return Err(format!(
                    "write of slot {} failed: status {:?}",
                    batch[c.ctx as usize],
                    c.status()
                ));
            }
        }
        for (i, &slot) in batch.iter().enumerate() {
            q.submit(
                read_cmd(nsid, slot * nlb as u64, nlb),
                vec![0; cli.size],
                false,
                i as u64,
            )
            .map_err(|e| e.to_string())?;
        }
        for c in wait(q, batch.len())? {
            let slot = batch[c.ctx as usize];
            if c.status() != (0, 0) {
                return Err(format!(
                    "read of slot {slot} failed: status {:?}",
                    c.status()
                ));
            }
            let want = pat(slot);
            if let Some(i) = (0..cli.size).find(|&i| c.buf[i] != want[i]) {
                return Err(format!(
                    "miscompare at LBA {} byte {i}: read {:#04x}, wrote {:#04x}",
                    slot * nlb as u64,
                    c.buf[i],
                    want[i]
                ));
            }
        }
        rounds += 1;
        ios += 2 * batch.len() as u64;
    }
    println!(
        "verify: {rounds} rounds, {ios} I/Os of {} bytes, every byte read back matched",
        cli.size
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rspdk_nvmf_perf: {e}");
            ExitCode::FAILURE
        }
    }
}
