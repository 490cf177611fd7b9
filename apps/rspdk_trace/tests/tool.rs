//! rspdk_trace on a trace file written through the library in this
//! process: SPDK-style text with object ids and times, the core filter, the
//! `-s`/`-p` lookup, the Perfetto export, and errors that name the problem.

use std::process::Command;

use rspdk_trace::{
    bind_core, enable_group, group, init, object, record_tsc, register_tpoints, tpoint_id,
    TpointDef, TraceOpts,
};

const TOOL: &str = env!("CARGO_BIN_EXE_rspdk_trace");
const START: u16 = tpoint_id(group::BDEV, 0);
const DONE: u16 = tpoint_id(group::BDEV, 1);

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(TOOL).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn prints_and_exports_the_events_of_a_trace_file() {
    register_tpoints(&[
        TpointDef {
            id: START,
            name: "BDEV_IO_START",
            object_type: object::BDEV_IO,
            new_object: true,
            args: &["type", "offset"],
        },
        TpointDef {
            id: DONE,
            name: "BDEV_IO_DONE",
            object_type: object::BDEV_IO,
            new_object: false,
            args: &["status"],
        },
    ]);
    let app = format!("tracetool{}", std::process::id());
    let path = init(&TraceOpts {
        app_name: app.clone(),
        shm_id: None,
        rings: 2,
        entries: 64,
    })
    .unwrap();
    enable_group("bdev").unwrap();
    // Three I/Os on core 1 (the second reuses the first's address, as a
    // freed and reused I/O does), one on core 0.
    bind_core(1);
    record_tsc(START, 1_000, 0xa0, &[1, 8]);
    record_tsc(DONE, 3_500, 0xa0, &[0]);
    record_tsc(START, 4_000, 0xa0, &[2, 16]);
    record_tsc(START, 4_100, 0xb0, &[1, 24]);
    record_tsc(DONE, 9_100, 0xb0, &[0]);
    record_tsc(DONE, 10_000, 0xa0, &[1]);
    std::thread::spawn(|| {
        bind_core(0);
        record_tsc(START, 2_000, 0xc0, &[1, 0]);
    })
    .join()
    .unwrap();

    let file = path.to_str().unwrap();
    let (ok, out, err) = run(&["-f", file]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    // Time order across cores; objects numbered in order of their start.
    assert!(
        lines[0].starts_with(" 1:        0.000 BDEV_IO_START"),
        "{out}"
    );
    assert!(
        lines[0].contains("id:    i0") && lines[0].contains("type: 1 offset: 8"),
        "{out}"
    );
    assert!(
        lines[1].starts_with(" 0:        1.000 BDEV_IO_START") && lines[1].contains("id:    i1"),
        "{out}"
    );
    assert!(
        lines[2].contains("BDEV_IO_DONE")
            && lines[2].contains("id:    i0")
            && lines[2].contains("time: 2.500"),
        "{out}"
    );
    assert!(lines[3].contains("id:    i2"), "{out}");
    assert!(
        lines[6].contains("BDEV_IO_DONE")
            && lines[6].contains("id:    i2")
            && lines[6].contains("time: 6.000")
            && lines[6].contains("status: 1"),
        "{out}"
    );

    // One core only, and the lookup by app name and pid.
    let pid = std::process::id().to_string();
    let (ok, out, _) = run(&["-s", &app, "-p", &pid, "-c", "0"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1, "{out}");

    // Perfetto (Chrome JSON): one async span per I/O, begin before end.
    let json = std::env::temp_dir().join(format!("{app}.json"));
    let (ok, _, err) = run(&["-f", file, "--export", "perfetto", json.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let evs = v["traceEvents"].as_array().unwrap();
    let begins: Vec<_> = evs.iter().filter(|e| e["ph"] == "b").collect();
    assert_eq!(begins.len(), 4);
    for b in &begins {
        let end = evs
            .iter()
            .find(|e| e["ph"] == "e" && e["id"] == b["id"])
            .unwrap();
        assert!(end["ts"].as_f64().unwrap() >= b["ts"].as_f64().unwrap());
    }
    let i0 = evs
        .iter()
        .find(|e| e["ph"] == "e" && e["id"] == "i0")
        .unwrap();
    assert_eq!(i0["ts"].as_f64().unwrap(), 2.5);
    assert_eq!(evs.iter().filter(|e| e["ph"] == "i").count(), 7);
    std::fs::remove_file(&json).unwrap();

    // Errors name the problem.
    let (ok, _, err) = run(&["-s", &app]);
    assert!(!ok && err.contains("needs -p PID or -i SHM_ID"), "{err}");
    let (ok, _, err) = run(&["-f", "/dev/null"]);
    assert!(
        !ok && err.contains("truncated or not a trace file"),
        "{err}"
    );
    let (ok, _, err) = run(&["-f", file, "--export", "svg", "x"]);
    assert!(!ok && err.contains("export format is perfetto"), "{err}");
    std::fs::remove_file(&path).unwrap();
}
