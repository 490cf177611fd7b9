//! The bdevperf binary end to end: config file, workloads, JSON output, errors.

use std::process::Command;

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("bdevs.json");
    std::fs::write(
        &p,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
          {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":16384,"block_size":512}},
          {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":16384,"block_size":4096}}]}]}"#,
    )
    .unwrap();
    p
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bdevperf-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bdevperf(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let cfg = config(dir);
    let sock = dir.join("rpc.sock");
    Command::new(env!("CARGO_BIN_EXE_bdevperf"))
        .arg("-c")
        .arg(&cfg)
        .arg("-r")
        .arg(&sock)
        .arg("--no-huge")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn verify_on_malloc_writes_json_results() {
    let dir = tmpdir("verify");
    let out_json = dir.join("results.json");
    let out = bdevperf(
        &dir,
        &[
            "-q",
            "8",
            "-o",
            "4096",
            "-w",
            "verify",
            "-t",
            "1",
            "-T",
            "Malloc0",
            "-j",
            out_json.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Job: Malloc0 (Core Mask 0x1)"), "{stdout}");
    assert!(stdout.contains("Latency(us)"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    let r = &v["results"][0];
    assert_eq!(r["job"], "Malloc0");
    assert_eq!(r["workload"], "verify");
    assert_eq!(r["status"], "finished");
    assert!(r["iops"].as_f64().unwrap() > 100.0, "{r}");
    assert_eq!(r["io_failed"], 0);
    assert!(r["p99_latency_us"].as_f64().unwrap() >= r["p50_latency_us"].as_f64().unwrap());
}

#[test]
fn every_workload_runs_on_null_and_reports_no_steady_state_allocations() {
    let dir = tmpdir("workloads");
    for w in [
        "randread",
        "randwrite",
        "read",
        "write",
        "write_zeroes",
        "flush",
        "unmap",
        "reset",
    ] {
        let out = bdevperf(
            &dir,
            &["-q", "4", "-o", "4096", "-w", w, "-t", "2", "-T", "Null0"],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{w}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("Total"), "{w}: {stdout}");
        let allocs: f64 = stdout
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("heap allocations per I/O in steady state:")
            })
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(allocs < 0.01, "{w}: {allocs} allocations per I/O");
    }
    let out = bdevperf(
        &dir,
        &[
            "-q", "4", "-o", "4096", "-w", "randrw", "-M", "70", "-t", "1", "-T", "Malloc0",
        ],
    );
    assert!(out.status.success());
}

#[test]
fn bad_flags_and_sizes_get_clear_errors() {
    let dir = tmpdir("errors");
    let out = bdevperf(&dir, &["-o", "4096", "-w", "randread", "-t", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing -q"));
    let out = bdevperf(&dir, &["-q", "4", "-o", "4096", "-w", "rw", "-t", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("-M"));
    let out = bdevperf(
        &dir,
        &[
            "-q", "4", "-o", "1000", "-w", "read", "-t", "1", "-T", "Null0",
        ],
    );
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("not a multiple"), "{all}");
    let out = bdevperf(
        &dir,
        &[
            "-q", "4", "-o", "4096", "-w", "read", "-t", "1", "-T", "Nope",
        ],
    );
    assert!(!out.status.success());
}

/// `-e bdev`: every I/O's BDEV_IO_START and BDEV_IO_DONE land in the
/// process's trace file, which stays after exit for rspdk_trace.
#[test]
fn tracepoints_record_every_io_into_the_trace_file() {
    let dir = tmpdir("trace");
    let out = bdevperf(
        &dir,
        &[
            "-q",
            "4",
            "-o",
            "4096",
            "-w",
            "randread",
            "-t",
            "1",
            "-T",
            "Null0",
            "-e",
            "bdev",
            "--num-trace-entries",
            "1048576",
            "-i",
            &format!("{}", std::process::id() % 100_000),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = format!("/dev/shm/bdevperf_trace.{}", std::process::id() % 100_000);
    let bytes = std::fs::read(&path).expect("the trace file stays after exit when it has events");
    std::fs::remove_file(&path).unwrap();
    let t = rspdk_trace::Trace::parse(&bytes).unwrap();
    assert_eq!(t.app_name, "bdevperf");
    let start = rspdk_bdev::trace::IO_START;
    let done = rspdk_bdev::trace::IO_DONE;
    assert_eq!(t.tpoint(start).unwrap().name, "BDEV_IO_START");
    let starts = t.events.iter().filter(|e| e.tpoint == start).count();
    let dones = t.events.iter().filter(|e| e.tpoint == done).count();
    let (written, lost) = t.ring_counts[0];
    // A second of null I/O at QD 4 is far more than a thousand events; the
    // ring was large enough to keep them all, and each I/O started once and
    // finished once (the last four may still have been in flight at exit).
    assert!(starts > 1000, "{starts} starts");
    assert_eq!(lost, 0, "{written} written");
    assert!(
        starts >= dones && starts - dones <= 4,
        "{starts} starts, {dones} dones"
    );
    // Every done follows a start of the same I/O object.
    let mut open = std::collections::HashSet::new();
    for e in &t.events {
        if e.tpoint == start {
            assert!(
                open.insert(e.object_id),
                "I/O {:#x} started twice",
                e.object_id
            );
        } else if e.tpoint == done {
            assert!(
                open.remove(&e.object_id),
                "I/O {:#x} done without a start",
                e.object_id
            );
        }
    }
}
