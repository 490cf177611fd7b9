//! The bdev benchmark matrix of issue 4: `bdevperf` on one core against
//! null and malloc bdevs, printed beside SPDK v26.05's figures on this kind
//! of machine and beside the bound measured in the same run (a memcpy of the
//! same sizes from the same-sized buffer, for malloc).
//!
//! Run: `cargo bench -p rspdk_bdev --bench bdevperf_matrix [-- SECONDS]`
//! (root for hugepages; otherwise bdevperf runs with --no-huge).

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

/// One bdevperf run's summary.
struct Run {
    iops: f64,
    avg_us: f64,
    p99_us: f64,
    allocs_per_io: f64,
}

fn bdevperf(config: &std::path::Path, args: &[&str]) -> Option<Run> {
    let sock = std::env::temp_dir().join(format!("bdevperf-matrix-{}.sock", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bdevperf"));
    cmd.arg("-c")
        .arg(config)
        .arg("-r")
        .arg(&sock)
        .arg("-m")
        .arg("0x1");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        cmd.arg("--no-huge");
    }
    let out = cmd.args(args).output().ok()?;
    let json: serde_json::Value = {
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
        serde_json::json!({"iops": f.first()?, "avg": f.get(4)?, "p99": p99, "allocs": allocs})
    };
    Some(Run {
        iops: json["iops"].as_f64()?,
        avg_us: json["avg"].as_f64()?,
        p99_us: json["p99"].as_f64().unwrap_or(f64::NAN),
        allocs_per_io: json["allocs"].as_f64().unwrap_or(f64::NAN),
    })
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
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
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
    // (label, bdev, workload, qd, io size, SPDK IOPS from issue 4 or 0)
    let rows: [(&str, &str, &str, &str, &str, f64); 9] = [
        (
            "null randread 4K QD32",
            "Null0",
            "randread",
            "32",
            "4096",
            12.4e6,
        ),
        (
            "null randwrite 4K QD32",
            "Null0",
            "randwrite",
            "32",
            "4096",
            12.9e6,
        ),
        (
            "null randread 4K QD128",
            "Null0",
            "randread",
            "128",
            "4096",
            0.0,
        ),
        (
            "null randwrite 4K QD128",
            "Null0",
            "randwrite",
            "128",
            "4096",
            0.0,
        ),
        (
            "malloc randread 4K QD32",
            "Malloc0",
            "randread",
            "32",
            "4096",
            1.65e6,
        ),
        (
            "malloc randwrite 4K QD32",
            "Malloc0",
            "randwrite",
            "32",
            "4096",
            1.56e6,
        ),
        (
            "malloc randread 4K QD128",
            "Malloc0",
            "randread",
            "128",
            "4096",
            0.0,
        ),
        (
            "malloc randwrite 4K QD128",
            "Malloc0",
            "randwrite",
            "128",
            "4096",
            0.0,
        ),
        (
            "malloc read 128K QD128",
            "Malloc0",
            "read",
            "128",
            "131072",
            76e3,
        ),
    ];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bdevperf on one core, {seconds} s per run; loadavg at start: {}",
        load.trim()
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
        "{:<27} {:>12} {:>10} {:>10} {:>12} {:>10} {:>12} {:>10}",
        "workload",
        "IOPS",
        "avg us",
        "p99 us",
        "SPDK IOPS",
        "rspdk/SPDK",
        "memcpy bound",
        "allocs/IO"
    );
    for (label, bdev, w, qd, size, spdk) in rows {
        let bound = match (bdev, size) {
            ("Malloc0", "4096") if w.contains("write") => format!("{:.2}M", copy4k_w / 1e6),
            ("Malloc0", "4096") => format!("{:.2}M", copy4k / 1e6),
            ("Malloc0", _) => format!("{:.1}K", copy128k / 1e3),
            _ => "-".into(),
        };
        match bdevperf(
            &config,
            &["-q", qd, "-o", size, "-w", w, "-t", &t, "-T", bdev],
        ) {
            Some(r) => println!(
                "{label:<27} {:>12.0} {:>10.2} {:>10.2} {:>12} {:>10} {:>12} {:>10.4}",
                r.iops,
                r.avg_us,
                r.p99_us,
                if spdk > 0.0 {
                    format!("{spdk:.0}")
                } else {
                    "-".into()
                },
                if spdk > 0.0 {
                    format!("{:.2}", r.iops / spdk)
                } else {
                    "-".into()
                },
                bound,
                r.allocs_per_io
            ),
            None => println!("{label:<27} bdevperf failed"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
