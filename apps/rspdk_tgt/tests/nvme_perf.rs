//! `rspdk_nvme_perf` (SPDK's `spdk_nvme_perf` flags) over NVMe/TCP against
//! `rspdk_tgt`: bad flags are refused by name, a namespace that cannot run
//! the workload is skipped instead of hanging the run, and `-w verify`
//! tells I/O errors apart from data mismatches.

#[path = "../../../crates/event/tests/common/mod.rs"]
mod common;
mod common_tgt;

use std::path::PathBuf;
use std::process::Command;

use common::ok;
use common_tgt::{free_port, Tgt};
use serde_json::json;

const NQN: &str = "nqn.2016-06.io.spdk:perf";

/// The `rspdk_nvme_perf` built beside this test's `rspdk_tgt`
/// (`apps/rspdk_nvme_perf`). `cargo test --workspace` builds it; `cargo
/// test -p rspdk_tgt` builds only this package's binaries, so it is built
/// here, once, into the same target directory and profile.
fn perf_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let tgt = PathBuf::from(env!("CARGO_BIN_EXE_rspdk_tgt"));
    let p = tgt.with_file_name("rspdk_nvme_perf");
    BUILT.get_or_init(|| {
        if p.exists() {
            return;
        }
        let dir = tgt.parent().expect("the binary's directory");
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "rspdk_nvme_perf",
                "--bin",
                "rspdk_nvme_perf",
            ])
            .args(["--profile", profile])
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"))
            .arg("--target-dir")
            .arg(dir.parent().expect("the target directory"))
            .status();
        if let Err(e) = st {
            eprintln!("building rspdk_nvme_perf: {e}");
        }
    });
    assert!(
        p.exists(),
        "{} is missing: cargo build -p rspdk_nvme_perf (cargo test --workspace builds it)",
        p.display()
    );
    p
}

/// A target exporting three namespaces: 512 B blocks (NSID 1), 4 KiB blocks
/// (NSID 2), and 512 B blocks behind an error-injecting bdev (NSID 3).
fn start() -> Tgt {
    let port = free_port();
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M512", "num_blocks": 16384, "block_size": 512}},
            {"method": "bdev_malloc_create", "params": {"name": "M4K", "num_blocks": 2048, "block_size": 4096}},
            {"method": "bdev_malloc_create", "params": {"name": "MErr", "num_blocks": 16384, "block_size": 512}},
            {"method": "bdev_error_create", "params": {"base_name": "MErr"}}
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "M512", "nsid": 1}}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "M4K", "nsid": 2}}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": format!("{NQN}-err"), "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": format!("{NQN}-err"), "namespace": {"bdev_name": "EE_MErr", "nsid": 1}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address":
                {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": format!("{NQN}-err"), "listen_address":
                {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}
        ]}
    ]});
    Tgt::spawn(tempfile::tempdir().unwrap(), port, &cfg, &[])
}

/// Runs perf with `args` (under a 60 s timeout: a hang fails the test);
/// returns (exit code, stdout + stderr).
fn perf(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .arg("60")
        .arg(perf_bin())
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("panicked"), "{text}");
    (out.status.code(), text)
}

#[test]
fn bad_flags_are_refused_by_name() {
    let r = "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:1 subnqn:nqn.x";
    let (code, out) = perf(&["-r", r, "-q", "1", "-o", "512", "-w", "read", "-t", "0"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("-t 0"), "{out}");
    let (code, out) = perf(&[
        "-r",
        r,
        "-q",
        "1",
        "-o",
        "512",
        "-w",
        "read",
        "-t",
        "1",
        "-c",
        "0x8000000000",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("core 39") && out.contains("usable cores"),
        "{out}"
    );
}

/// `-o 512` on a subsystem with a 4 KiB namespace: that namespace is
/// skipped with a warning (as SPDK's perf does), the 512 B one runs, and
/// the run ends (it used to hang on the start barrier).
#[test]
fn a_namespace_that_cannot_run_is_skipped_not_hung() {
    let t = start();
    let r = format!(
        "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:{NQN}",
        t.port
    );
    let (code, out) = perf(&[
        "-r", &r, "-q", "4", "-o", "512", "-w", "randread", "-t", "1",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("WARNING") && out.contains("skipped"), "{out}");
    assert!(out.contains("Total"), "{out}");
}

/// `-w verify` where every read fails: reported as I/O errors, never as
/// data mismatches.
#[test]
fn verify_reports_io_errors_as_errors() {
    let t = start();
    ok(
        &t.sock,
        "bdev_error_inject_error",
        Some(
            json!({"name": "EE_MErr", "io_type": "read", "error_type": "failure", "num": 1000000}),
        ),
    );
    let r = format!(
        "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:{NQN}-err",
        t.port
    );
    let (code, out) = perf(&["-r", &r, "-q", "4", "-o", "512", "-w", "verify", "-t", "1"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("completed with an error"), "{out}");
    assert!(!out.contains("did not return what was written"), "{out}");
}
