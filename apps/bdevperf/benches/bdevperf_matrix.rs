//! The bdev benchmark matrix of issue 4: `bdevperf` on one core against
//! null and malloc bdevs, beside the bound measured in the same run (a
//! memcpy of the same sizes from the same-sized buffer, for malloc) and,
//! when `SPDK_BDEVPERF` names SPDK's bdevperf binary (built outside this
//! repository), beside SPDK's figure for the same JSON config, flags and
//! core, measured in the same run, rounds interleaved (ours, then SPDK's).
//! Each row is the median of the rounds. The cost per I/O on the core (ns,
//! and instructions and cycles where the CPU's counters can be read) comes
//! from bdevperf's own report.
//!
//! Run: `[SPDK_BDEVPERF=/path/to/spdk/build/examples/bdevperf] cargo bench
//! -p bdevperf --bench bdevperf_matrix [-- SECONDS [ROUNDS]]` (root for
//! hugepages; otherwise rspdk's bdevperf runs with --no-huge).

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

/// One bdevperf run's summary.
#[derive(Clone, Copy)]
struct Run {
    iops: f64,
    avg_us: f64,
    p99_us: f64,
    allocs_per_io: f64,
    /// ns, instructions, cycles per I/O on the core (NaN where missing).
    cpu: [f64; 3],
}

/// Runs `binary` (rspdk's bdevperf, or SPDK's with `spdk`) on core 0 with
/// `config` and `args`; the summary of its report.
fn bdevperf(binary: &str, spdk: bool, config: &std::path::Path, args: &[&str]) -> Option<Run> {
    let sock = std::env::temp_dir().join(format!("bdevperf-matrix-{}.sock", std::process::id()));
    let mut cmd = Command::new(binary);
    cmd.arg(if spdk { "--json" } else { "-c" })
        .arg(config)
        .arg("-r")
        .arg(&sock)
        .arg("-m")
        .arg("0x1");
    if !spdk && !rspdk_env::sys::is_root() {
        cmd.arg("--no-huge");
    }
    let out = cmd.args(args).output().ok()?;
    let json: (serde_json::Value, [f64; 3]) = {
        let text = String::from_utf8_lossy(&out.stdout);
        let allocs = text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("heap allocations per I/O in steady state:")
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        // The "Total" line of the table: IOPS MiB/s Fail/s TO/s Average min max.
        let line = text.lines().find(|l| l.trim_start().starts_with("Total"))?;
        let f: Vec<f64> = line
            .split(':')
            .nth(1)?
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let p99 = text
            .lines()
            .find_map(|l| l.split("p99 ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        // "per I/O on its core: 61.2 ns, 402.1 instructions, 181.0 cycles".
        let cpu = text
            .lines()
            .find_map(|l| l.split("per I/O on its core:").nth(1))
            .unwrap_or("");
        let figure = |unit: &str| {
            cpu.split([',', ';'])
                .find_map(|part| {
                    let mut w = part.split_whitespace();
                    let v = w.next()?.parse::<f64>().ok()?;
                    (w.next()? == unit).then_some(v)
                })
                .unwrap_or(f64::NAN)
        };
        let cpu = [figure("ns"), figure("instructions"), figure("cycles")];
        (
            serde_json::json!({"iops": f.first()?, "avg": f.get(4)?, "p99": p99, "allocs": allocs}),
            cpu,
        )
    };
    let (json, cpu) = json;
    Some(Run {
        iops: json["iops"].as_f64()?,
        avg_us: json["avg"].as_f64()?,
        p99_us: json["p99"].as_f64().unwrap_or(f64::NAN),
        allocs_per_io: json["allocs"].as_f64().unwrap_or(f64::NAN),
        cpu,
    })
}

/// The run with the median IOPS.
fn median(mut runs: Vec<Run>) -> Option<Run> {
    runs.sort_by(|a, b| a.iops.total_cmp(&b.iops));
    runs.get(runs.len() / 2).copied()
}

fn fmt(v: f64, prec: usize) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.prec$}")
    }
}

/// Copies of `size` bytes between random offsets of a `span`-byte buffer
/// and a small one, per second on this thread: what a malloc read
/// (`to_span` false) or write (true) can at most do on one core.
fn memcpy_rate(span: usize, size: usize, seconds: f64, to_span: bool) -> f64 {
    let mut big = vec![7u8; span];
    let mut small = vec![0u8; size];
    let slots = span / size;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < seconds {
        for _ in 0..1024 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x as usize % slots) * size;
            if to_span {
                big[off..off + size].copy_from_slice(&small);
                black_box(&big);
            } else {
                small.copy_from_slice(&big[off..off + size]);
                black_box(&small);
            }
        }
        n += 1024;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let nums: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = nums.first().copied().unwrap_or(5);
    let rounds = nums.get(1).copied().unwrap_or(1).max(1);
    let spdk_bin = std::env::var("SPDK_BDEVPERF").ok();
    if let Some(b) = &spdk_bin {
        assert!(
            std::path::Path::new(b).exists(),
            "SPDK_BDEVPERF={b} does not exist"
        );
    }
    let dir = std::env::temp_dir().join(format!("bdevperf-matrix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bdevs.json");
    // 128 MiB each, 512-byte blocks, like SPDK's bdevperf test configs.
    std::fs::write(
        &config,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
          {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":262144,"block_size":512}},
          {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":262144,"block_size":512}}]}]}"#,
    )
    .unwrap();
    let t = seconds.to_string();
    // (label, bdev, workload, qd, io size)
    let rows: [(&str, &str, &str, &str, &str); 9] = [
        ("null randread 4K QD32", "Null0", "randread", "32", "4096"),
        ("null randwrite 4K QD32", "Null0", "randwrite", "32", "4096"),
        ("null randread 4K QD128", "Null0", "randread", "128", "4096"),
        (
            "null randwrite 4K QD128",
            "Null0",
            "randwrite",
            "128",
            "4096",
        ),
        (
            "malloc randread 4K QD32",
            "Malloc0",
            "randread",
            "32",
            "4096",
        ),
        (
            "malloc randwrite 4K QD32",
            "Malloc0",
            "randwrite",
            "32",
            "4096",
        ),
        (
            "malloc randread 4K QD128",
            "Malloc0",
            "randread",
            "128",
            "4096",
        ),
        (
            "malloc randwrite 4K QD128",
            "Malloc0",
            "randwrite",
            "128",
            "4096",
        ),
        ("malloc read 128K QD128", "Malloc0", "read", "128", "131072"),
    ];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bdevperf on one core, {seconds} s per run, median of {rounds} round(s); loadavg at start: {}",
        load.trim()
    );
    println!(
        "CPU: {}; SPDK: {}",
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name\t: "))
            .unwrap_or("?"),
        spdk_bin.as_deref().unwrap_or("not run (set SPDK_BDEVPERF)")
    );
    let copy4k = memcpy_rate(128 << 20, 4096, 2.0, false);
    let copy4k_w = memcpy_rate(128 << 20, 4096, 2.0, true);
    let copy128k = memcpy_rate(128 << 20, 128 << 10, 2.0, false);
    println!(
        "bound (same run): memcpy with random offsets in 128 MiB: 4 KiB out {:.2}M/s ({:.1} GB/s), 4 KiB in {:.2}M/s ({:.1} GB/s), 128 KiB out {:.1}K/s ({:.1} GB/s)",
        copy4k / 1e6,
        copy4k * 4096.0 / 1e9,
        copy4k_w / 1e6,
        copy4k_w * 4096.0 / 1e9,
        copy128k / 1e3,
        copy128k * 131072.0 / 1e9
    );
    println!(
        "{:<27} {:>11} {:>8} {:>8} {:>7} {:>7} {:>7} {:>11} {:>7} {:>8} {:>9}",
        "workload",
        "IOPS",
        "avg us",
        "p99 us",
        "ns/IO",
        "ins/IO",
        "cyc/IO",
        "SPDK IOPS",
        "x SPDK",
        "bound",
        "allocs/IO"
    );
    let ours = env!("CARGO_BIN_EXE_bdevperf");
    for (label, bdev, w, qd, size) in rows {
        let bound = match (bdev, size) {
            ("Malloc0", "4096") if w.contains("write") => format!("{:.2}M", copy4k_w / 1e6),
            ("Malloc0", "4096") => format!("{:.2}M", copy4k / 1e6),
            ("Malloc0", _) => format!("{:.1}K", copy128k / 1e3),
            _ => "-".into(),
        };
        let args = ["-q", qd, "-o", size, "-w", w, "-t", &t, "-T", bdev];
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            mine.extend(bdevperf(ours, false, &config, &args));
            if let Some(b) = &spdk_bin {
                theirs.extend(bdevperf(b, true, &config, &args));
            }
        }
        let spdk = median(theirs);
        match median(mine) {
            Some(r) => println!(
                "{label:<27} {:>11.0} {:>8.2} {:>8.2} {:>7} {:>7} {:>7} {:>11} {:>7} {:>8} {:>9.4}",
                r.iops,
                r.avg_us,
                r.p99_us,
                fmt(r.cpu[0], 1),
                fmt(r.cpu[1], 0),
                fmt(r.cpu[2], 0),
                spdk.map_or("-".into(), |s| format!("{:.0}", s.iops)),
                spdk.map_or("-".into(), |s| format!("{:.2}", r.iops / s.iops)),
                bound,
                r.allocs_per_io
            ),
            None => println!("{label:<27} bdevperf failed"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
