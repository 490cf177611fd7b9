//! The rspdk_rpc binary against an in-process server.

#[path = "../../../crates/rpc/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::TestServer;

fn run(server: &TestServer, args: &[&str]) -> Output {
    run_with_stdin(server.path.to_str().unwrap(), args, None)
}

fn run_with_stdin(socket: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rspdk_rpc"))
        .arg("-s")
        .arg(socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn prints_result_as_pretty_json() {
    let server = TestServer::start();
    let output = run(&server, &["spdk_get_version"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout(&output),
        "{\n  \"version\": \"rspdk test\",\n  \"fields\": {\n    \"major\": 0\n  }\n}\n"
    );

    let output = run(&server, &["rpc_get_methods", "--current"]);
    assert!(output.status.success());
    let names: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(names.contains(&"startup_only".to_string()));
    assert!(!names.contains(&"runtime_only".to_string()));
}

#[test]
fn true_result_prints_nothing_and_params_are_sent() {
    let server = TestServer::start();
    let output = run(&server, &["log_set_level", "DEBUG"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), "");
    // Invalid choice is rejected by the CLI like argparse (exit 2).
    let output = run(&server, &["log_set_level", "LOUD"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn error_response_exits_nonzero_with_rpc_py_message() {
    let server = TestServer::start();
    let output = run(&server, &["call", "nope", r#"{"x": 1}"#]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.starts_with("request:\n{\n  \"x\": 1,\n  \"method\": \"nope\",\n  \"req_id\": 1\n}\n"),
        "{text}"
    );
    assert!(text.contains("Got JSON-RPC error response\nresponse:\n{\n  \"code\": -32601,\n  \"message\": \"Method not found\"\n}"), "{text}");

    let output = run(&server, &["call", "runtime_only"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("\"code\": -1"));
}

#[test]
fn no_server_gives_clear_message() {
    let missing = common::temp_socket_path();
    let output = run_with_stdin(missing.to_str().unwrap(), &["spdk_get_version"], None);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.contains(&format!("Error while connecting to {}", missing.display())),
        "{text}"
    );
    assert!(text.contains("Is SPDK application running?"), "{text}");
}

#[test]
fn timeout_exits_nonzero() {
    let server = TestServer::start();
    let output = run(&server, &["-t", "0.3", "call", "park"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("Timeout while waiting for response"));
}

#[test]
fn save_config_collects_every_subsystem() {
    let server = TestServer::start();
    let output = run(&server, &["save_config", "-i", "-1", "-s", "alpha"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout(&output),
        "{\"subsystems\": [{\"subsystem\": \"alpha\", \"config\": [{\"method\": \"echo\", \"params\": {\"from\": \"alpha\"}}]}]}\n"
    );
    let output = run(&server, &["save_config"]);
    let config: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(config["subsystems"].as_array().unwrap().len(), 2);
}

#[test]
fn load_config_applies_entries_across_states() {
    let server = TestServer::start();
    let config = r#"{"subsystems": [
        {"subsystem": "a", "config": [{"method": "runtime_only"}, {"method": "startup_only"}]},
        {"subsystem": "b", "config": []}
    ]}"#;
    let output = run_with_stdin(
        server.path.to_str().unwrap(),
        &["load_config"],
        Some(config),
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), "");
    // framework_start_init ran, so runtime methods are now callable.
    let output = run(&server, &["call", "runtime_only"]);
    assert!(output.status.success(), "{output:?}");

    let bad = r#"{"subsystems": [{"subsystem": "a", "config": [{"method": "unknown_thing"}]}]}"#;
    let output = run(&server, &["load_config", "-j", bad]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("Unknown method was included in the config file"));
}

#[test]
fn dry_run_shows_request_without_server() {
    let output = run_with_stdin(
        "/nonexistent/sock",
        &["--dry-run", "framework_get_config", "bdev"],
        None,
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout(&output),
        "Request:\n{\n  \"method\": \"framework_get_config\",\n  \"params\": {\n    \"name\": \"bdev\",\n    \"with_batches\": false\n  }\n}\n"
    );
}

/// The JSON params a subcommand would send.
fn dry_params(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--dry-run"];
    all.extend_from_slice(args);
    let output = run_with_stdin("/nonexistent/sock", &all, None);
    assert!(output.status.success(), "{args:?}: {output:?}");
    let text = stdout(&output);
    let json = text.strip_prefix("Request:\n").expect("dry-run header");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["params"].clone()
}

#[test]
fn bdev_subcommands_send_spdk_params() {
    // rpc.py: total_size in MB and block_size become num_blocks.
    assert_eq!(
        dry_params(&["bdev_malloc_create", "-b", "Malloc1", "64", "4096"]),
        serde_json::json!({"name": "Malloc1", "block_size": 4096, "num_blocks": 16384})
    );
    assert_eq!(
        dry_params(&["bdev_null_create", "Null1", "8", "512"]),
        serde_json::json!({"name": "Null1", "block_size": 512, "num_blocks": 16384})
    );
    // Flags whose JSON key differs from the flag.
    let d = dry_params(&[
        "bdev_delay_create",
        "-b",
        "Malloc0",
        "-d",
        "D0",
        "-r",
        "10",
        "-t",
        "100",
        "-w",
        "20",
        "-n",
        "200",
    ]);
    assert_eq!(d["p99_read_latency"], 100);
    assert_eq!(d["p99_write_latency"], 200);
    assert_eq!(d["base_bdev_name"], "Malloc0");
    let q = dry_params(&["bdev_set_qos_limit", "Malloc0", "--rw_ios_per_sec", "20000"]);
    assert_eq!(
        q,
        serde_json::json!({"name": "Malloc0", "rw_ios_per_sec": 20000})
    );
    let e = dry_params(&["bdev_error_inject_error", "EE_Malloc0", "read", "failure"]);
    assert_eq!(e["num"], 1);
    let s = dry_params(&["bdev_split_create", "Malloc0", "4", "-s", "16"]);
    assert_eq!(
        s,
        serde_json::json!({"base_bdev": "Malloc0", "split_count": 4, "split_size_mb": 16})
    );
    // A missing required flag is a usage error, not a request.
    let bad = run_with_stdin(
        "/nonexistent/sock",
        &["--dry-run", "bdev_passthru_create", "-b", "Malloc0"],
        None,
    );
    assert!(!bad.status.success());
}

/// A reader that went away (a closed pipe) or a full disk ends rspdk_rpc
/// with a status and, for the disk, a message: never a panic.
#[test]
fn closed_pipe_and_full_disk_are_not_panics() {
    let server = TestServer::start();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_rspdk_rpc"))
        .arg("-s")
        .arg(&server.path)
        .arg("spdk_get_version")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rspdk_rpc"))
        .arg("-s")
        .arg(&server.path)
        .arg("spdk_get_version")
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
}
