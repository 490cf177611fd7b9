//! SPDK's own client drives `rspdk_tgt` unchanged: `spdk-rpc` (SPDK's
//! `scripts/rpc.py`) and `spdk-cli` (`scripts/spdkcli.py`) from PyPI's
//! `spdk` package, pinned by `scripts/spdk-client` (which installs them in
//! `target/spdk-venv`; `.ci/run` runs it). rpc.py always sends its
//! defaults (`no_srq`, `hide_metadata`, `nowait`, ...), so every method is
//! called the way SPDK's documentation and scripts call it, and each
//! unsupported option is checked to be refused by name, not ignored.
//!
//! The test also checks that every method `rpc_get_methods` lists is
//! driven here at least once: a method added to rspdk without a call from
//! SPDK's client fails this test.

#[path = "../../../crates/event/tests/common/mod.rs"]
mod common;
mod common_tgt;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ok, wait_for_socket};
use common_tgt::free_port;
use serde_json::Value;

/// `target/spdk-venv/bin/<tool>`, or a failure saying how to get it.
fn spdk_tool(tool: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/spdk-venv/bin")
        .join(tool);
    assert!(
        p.exists(),
        "{} is missing: run scripts/spdk-client (it installs SPDK's Python client from PyPI; .ci/run does)",
        p.display()
    );
    p
}

/// A target started with `--wait-for-rpc`, killed when dropped.
struct Target {
    child: std::process::Child,
    sock: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Target {
    fn start(args: &[&str]) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("spdk.sock");
        let log = dir.path().join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_rspdk_tgt"))
            .arg("-r")
            .arg(&sock)
            .arg("--no-huge")
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        assert!(
            wait_for_socket(&sock, Duration::from_secs(20)),
            "rspdk_tgt did not open its RPC socket"
        );
        Target {
            child,
            sock,
            log,
            _dir: dir,
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `spdk-rpc -s SOCK args...`; returns (success, stdout, stderr).
fn spdk_rpc(sock: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("timeout")
        .arg("60")
        .arg(spdk_tool("spdk-rpc"))
        .arg("-s")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a step expects.
enum Expect<'a> {
    /// Success, with stdout containing each string.
    Ok(&'a [&'a str]),
    /// Failure, with the error containing the string.
    Err(&'a str),
}

/// The steps run so far, and the methods they called.
struct Driver<'a> {
    sock: &'a Path,
    called: BTreeSet<String>,
}

impl Driver<'_> {
    fn step(&mut self, args: &[&str], expect: Expect<'_>) -> String {
        let (success, out, err) = spdk_rpc(self.sock, args);
        self.called.insert(args[0].to_string());
        let line = args.join(" ");
        match expect {
            Expect::Ok(needles) => {
                assert!(success, "spdk-rpc {line} failed:\n{err}{out}");
                for n in needles {
                    assert!(
                        out.contains(n),
                        "spdk-rpc {line}: output lacks {n:?}:\n{out}"
                    );
                }
            }
            Expect::Err(needle) => {
                assert!(!success, "spdk-rpc {line} should have failed:\n{out}");
                assert!(
                    err.contains(needle) || out.contains(needle),
                    "spdk-rpc {line}: error lacks {needle:?}:\n{err}{out}"
                );
            }
        }
        out
    }

    fn ok(&mut self, args: &[&str]) -> String {
        self.step(args, Expect::Ok(&[]))
    }
}

/// Every method rspdk_tgt serves, called as SPDK's documentation calls
/// it, with SPDK's client; then save_config's output loads into a second
/// target, and the method list is checked against what was called.
#[test]
fn spdk_rpc_drives_every_method() {
    let tmp = tempfile::tempdir().unwrap();
    let aio = tmp.path().join("aio.img");
    let uring = tmp.path().join("uring.img");
    for f in [&aio, &uring] {
        std::fs::File::create(f).unwrap().set_len(64 << 20).unwrap();
    }
    let (aio, uring) = (aio.to_str().unwrap(), uring.to_str().unwrap());
    let nvmf_port = free_port().to_string();
    let iscsi_portal = format!("127.0.0.1:{}", free_port());
    let iscsi_portal2 = format!("127.0.0.1:{}", free_port());
    let nqn = "nqn.2016-06.io.spdk:cnode1";
    let host = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";

    let t = Target::start(&["--wait-for-rpc"]);
    let mut d = Driver {
        sock: &t.sock,
        called: BTreeSet::new(),
    };
    // Before framework_start_init: the STARTUP-only options.
    d.ok(&[
        "bdev_set_options",
        "-p",
        "65535",
        "-c",
        "256",
        "--iobuf-small-cache-size",
        "64",
        "--iobuf-large-cache-size",
        "8",
    ]);
    d.ok(&[
        "iobuf_set_options",
        "--small-pool-count",
        "4096",
        "--large-pool-count",
        "512",
    ]);
    d.step(
        &["iobuf_set_options", "--enable-numa"],
        Expect::Err("enable_numa"),
    );
    d.ok(&["iscsi_set_options", "-o", "30", "-a", "16"]);
    d.ok(&["nvmf_set_config", "-d", "match_any"]);
    d.step(
        &[
            "nvmf_set_config",
            "--dup-host-policy",
            "restrict_per_listener",
        ],
        Expect::Err("dup_host_policy"),
    );
    d.ok(&["nvmf_set_max_subsystems", "-x", "1024"]);
    d.ok(&["nvmf_set_crdt", "-t1", "0"]);
    d.ok(&["framework_start_init"]);
    d.ok(&["framework_wait_init"]);

    // The framework.
    d.step(&["spdk_get_version"], Expect::Ok(&["rspdk v"]));
    d.step(&["rpc_get_methods", "-c"], Expect::Ok(&["bdev_get_bdevs"]));
    d.step(&["framework_get_reactors"], Expect::Ok(&["\"reactors\""]));
    d.step(&["framework_get_subsystems"], Expect::Ok(&["\"nvmf\""]));
    d.ok(&["framework_get_config", "bdev"]);
    d.step(&["thread_get_stats"], Expect::Ok(&["app_thread"]));
    d.ok(&["thread_get_pollers"]);
    d.ok(&["thread_get_io_channels"]);
    d.ok(&["env_dpdk_get_mem_stats"]);
    d.ok(&["log_set_level", "DEBUG"]);
    d.step(&["log_get_level"], Expect::Ok(&["DEBUG"]));
    d.ok(&["log_set_level", "NOTICE"]);
    d.ok(&["log_set_print_level", "INFO"]);
    d.step(&["log_get_print_level"], Expect::Ok(&["INFO"]));
    // SPDK's per-component log flags.
    for flag in ["bdev", "bdev_nvme", "nvmf", "nvmf_tcp", "iscsi", "scsi"] {
        d.ok(&["log_set_flag", flag]);
    }
    d.step(
        &["log_get_flags"],
        Expect::Ok(&["\"bdev\": true", "\"nvmf_tcp\": true"]),
    );
    d.ok(&["log_clear_flag", "bdev"]);
    d.step(&["log_get_flags"], Expect::Ok(&["\"bdev\": false"]));
    d.step(
        &["log_set_flag", "no_such_flag"],
        Expect::Err("no_such_flag"),
    );
    // Notifications: the bdevs registered so far, then one more and its
    // deletion, read from the last id seen.
    d.step(
        &["notify_get_types"],
        Expect::Ok(&["\"bdev_register\"", "\"bdev_unregister\""]),
    );
    let seen: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["notify_get_notifications"])).unwrap();
    let next = seen
        .last()
        .map_or(0, |e| e["id"].as_u64().unwrap() + 1)
        .to_string();
    d.ok(&["bdev_null_create", "NotifyNull", "8", "512"]);
    d.ok(&["bdev_null_delete", "NotifyNull"]);
    let new: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["notify_get_notifications", "-i", &next, "-n", "10"]))
            .unwrap();
    assert_eq!(
        new.iter()
            .map(|e| (e["type"].as_str().unwrap(), e["ctx"].as_str().unwrap()))
            .collect::<Vec<_>>(),
        [
            ("bdev_register", "NotifyNull"),
            ("bdev_unregister", "NotifyNull")
        ]
    );
    // Tracepoints: SPDK's trace RPCs on SPDK's group names.
    let info = d.step(
        &["trace_get_info"],
        Expect::Ok(&["\"tpoint_shm_path\": \"/dev/shm/", "\"bdev\""]),
    );
    // The target keeps its mapping; the test leaves no file behind.
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    std::fs::remove_file(info["tpoint_shm_path"].as_str().unwrap()).unwrap();
    d.ok(&["trace_enable_tpoint_group", "bdev"]);
    d.step(
        &["trace_get_tpoint_group_mask"],
        Expect::Ok(&[
            "\"tpoint_group_mask\": \"0x8\"",
            "\"tpoint_mask\": \"0xffffffffffffffff\"",
        ]),
    );
    d.ok(&["trace_clear_tpoint_mask", "bdev", "0xfffffffffffffffc"]);
    d.step(
        &["trace_get_info"],
        Expect::Ok(&["\"tpoint_mask\": \"0x3\""]),
    );
    d.ok(&["trace_disable_tpoint_group", "bdev"]);
    d.ok(&["trace_set_tpoint_mask", "thread", "0x1"]);
    d.step(
        &["trace_get_tpoint_group_mask"],
        Expect::Ok(&["\"tpoint_group_mask\": \"0x400\""]),
    );
    d.ok(&["trace_clear_tpoint_mask", "thread", "0x1"]);
    d.ok(&["trace_clear"]);
    d.step(
        &["trace_enable_tpoint_group", "no_such_group"],
        Expect::Err("unknown tracepoint group 'no_such_group'"),
    );
    d.ok(&["log_enable_timestamps", "--no-timestamps"]);
    d.ok(&["log_enable_timestamps", "--timestamps"]);
    d.step(
        &["framework_get_scheduler"],
        Expect::Ok(&["\"scheduler_name\": \"static\""]),
    );
    d.ok(&["framework_set_scheduler", "static", "-p", "500000"]);
    d.step(
        &["framework_set_scheduler", "dynamic"],
        Expect::Err("'dynamic' is not supported"),
    );
    d.step(&["framework_get_governor"], Expect::Ok(&["{}"]));
    d.ok(&["framework_get_pci_devices"]);
    d.step(&["iobuf_get_stats"], Expect::Ok(&["["]));

    // Bdevs, as the Block Device User Guide creates them.
    d.step(
        &["bdev_malloc_create", "-b", "Malloc0", "64", "512"],
        Expect::Ok(&["Malloc0"]),
    );
    d.ok(&[
        "bdev_malloc_create",
        "-b",
        "Malloc1",
        "-u",
        "5f8e0c6a-7a8b-4c2d-9e1f-2a3b4c5d6e7f",
        "32",
        "4096",
    ]);
    d.step(
        &["bdev_null_create", "Null0", "64", "512"],
        Expect::Ok(&["Null0"]),
    );
    d.ok(&["bdev_null_resize", "Null0", "128"]);
    d.step(
        &["bdev_aio_create", aio, "AIO0", "512"],
        Expect::Ok(&["AIO0"]),
    );
    d.ok(&["bdev_aio_rescan", "AIO0"]);
    d.step(
        &["bdev_uring_create", uring, "Uring0", "512"],
        Expect::Ok(&["Uring0"]),
    );
    d.ok(&[
        "bdev_delay_create",
        "-b",
        "Null0",
        "-d",
        "Delay0",
        "-r",
        "10",
        "-t",
        "20",
        "-w",
        "10",
        "-n",
        "20",
    ]);
    d.ok(&["bdev_delay_update_latency", "Delay0", "avg_read", "15"]);
    d.ok(&["bdev_error_create", "Malloc1"]);
    d.ok(&[
        "bdev_error_inject_error",
        "EE_Malloc1",
        "read",
        "failure",
        "-n",
        "1",
    ]);
    d.ok(&["bdev_passthru_create", "-b", "AIO0", "-p", "Pass0"]);
    d.step(
        &["bdev_split_create", "Uring0", "2"],
        Expect::Ok(&["Uring0p0", "Uring0p1"]),
    );
    d.step(
        &["bdev_get_bdevs"],
        Expect::Ok(&[
            "Malloc0",
            "Null0",
            "AIO0",
            "Delay0",
            "EE_Malloc1",
            "Pass0",
            "Uring0p1",
        ]),
    );
    d.step(
        &["bdev_get_bdevs", "-b", "Malloc0"],
        Expect::Ok(&["\"num_blocks\": 131072"]),
    );
    d.step(&["bdev_get_iostat"], Expect::Ok(&["\"bdevs\""]));
    d.ok(&["bdev_set_qos_limit", "--rw-ios-per-sec", "20000", "Malloc0"]);
    d.ok(&["bdev_enable_histogram", "--histogram", "Malloc0"]);
    d.step(
        &["bdev_get_histogram", "Malloc0"],
        Expect::Ok(&["\"histogram\"", "\"tsc_rate\""]),
    );
    d.ok(&["bdev_reset_iostat", "-b", "Malloc0", "-m", "all"]);
    d.ok(&["bdev_set_qd_sampling_period", "Malloc0", "1000"]);
    d.ok(&["bdev_uring_rescan", "Uring0"]);
    d.ok(&[
        "bdev_error_inject_error",
        "EE_Malloc1",
        "write",
        "pending",
        "-n",
        "1",
    ]);
    d.ok(&["bdev_error_resume_pending", "EE_Malloc1"]);
    // With auto examine on (the default) every bdev is examined when
    // registered; SPDK refuses a manual examine then.
    d.step(
        &["bdev_examine", "-b", "Malloc0"],
        Expect::Err("auto examine is on"),
    );
    d.ok(&["bdev_wait_for_examine"]);

    // NVMe-oF, as the NVMe-oF Target guide sets it up.
    d.step(
        &["nvmf_create_transport", "-t", "TCP", "-r"],
        Expect::Err("no_srq applies to the RDMA transport only"),
    );
    d.step(
        &["nvmf_create_transport", "-t", "TCP", "-z"],
        Expect::Err("zcopy"),
    );
    d.ok(&[
        "nvmf_create_transport",
        "-t",
        "TCP",
        "-u",
        "16384",
        "-m",
        "8",
        "-c",
        "8192",
    ]);
    d.step(
        &["nvmf_get_transports"],
        Expect::Ok(&["\"trtype\": \"TCP\""]),
    );
    d.ok(&[
        "nvmf_create_subsystem",
        nqn,
        "-a",
        "-s",
        "SPDK00000000000001",
        "-d",
        "SPDK_Controller1",
    ]);
    d.step(
        &["nvmf_create_subsystem", "nqn.2016-06.io.spdk:cnode2", "-r"],
        Expect::Err("ana_reporting"),
    );
    d.step(&["nvmf_subsystem_add_ns", nqn, "Malloc0"], Expect::Ok(&[]));
    d.step(
        &[
            "nvmf_subsystem_add_ns",
            "-n",
            "5",
            "-e",
            "0011223344556677",
            nqn,
            "Pass0",
        ],
        Expect::Ok(&[]),
    );
    d.ok(&[
        "nvmf_subsystem_add_listener",
        nqn,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &nvmf_port,
    ]);
    // Port 0: the listener is recorded under the port the kernel chose.
    d.ok(&[
        "nvmf_subsystem_add_listener",
        nqn,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        "0",
    ]);
    let listeners: Value =
        serde_json::from_str(&d.ok(&["nvmf_subsystem_get_listeners", nqn])).unwrap();
    let ports: Vec<&str> = listeners
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["address"]["trsvcid"].as_str().unwrap())
        .collect();
    assert_eq!(ports.len(), 2, "{listeners}");
    assert!(ports.contains(&nvmf_port.as_str()), "{listeners}");
    let chosen = ports.iter().find(|p| **p != nvmf_port).unwrap().to_string();
    assert_ne!(
        chosen, "0",
        "a port-0 listener is recorded as port 0: {listeners}"
    );
    std::net::TcpStream::connect(("127.0.0.1", chosen.parse::<u16>().unwrap()))
        .expect("the kernel-chosen port listens");
    d.ok(&[
        "nvmf_subsystem_remove_listener",
        nqn,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &chosen,
    ]);
    d.step(
        &[
            "nvmf_subsystem_remove_listener",
            nqn,
            "-t",
            "rdmaX",
            "-a",
            "127.0.0.1",
            "-s",
            "1",
        ],
        Expect::Err("trtype 'rdmaX'"),
    );
    d.step(
        &[
            "nvmf_subsystem_add_listener",
            nqn,
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            "1",
            "-k",
        ],
        Expect::Err("secure_channel"),
    );
    d.ok(&[
        "nvmf_discovery_add_referral",
        "-t",
        "tcp",
        "-a",
        "127.0.0.2",
        "-s",
        "4430",
    ]);
    d.step(
        &["nvmf_discovery_get_referrals"],
        Expect::Ok(&["127.0.0.2"]),
    );
    d.step(
        &[
            "nvmf_discovery_add_referral",
            "-t",
            "tcp",
            "-a",
            "127.0.0.2",
            "-s",
            "4431",
            "-k",
        ],
        Expect::Err("secure_channel"),
    );
    d.ok(&["nvmf_subsystem_add_host", nqn, host]);
    d.step(
        &[
            "nvmf_subsystem_add_host",
            nqn,
            "nqn.2014-08.org.example:h2",
            "--psk",
            "key0",
        ],
        Expect::Err("psk"),
    );
    d.ok(&["nvmf_subsystem_remove_host", nqn, host]);
    d.ok(&["nvmf_subsystem_allow_any_host", "--allow-any-host", nqn]);
    d.step(&["nvmf_get_subsystems"], Expect::Ok(&[nqn, "Pass0"]));
    d.ok(&["nvmf_get_stats"]);
    d.ok(&["nvmf_subsystem_get_controllers", nqn]);
    d.ok(&["nvmf_subsystem_get_qpairs", nqn]);
    // The NVMe bdev module's options: only before a controller exists.
    d.ok(&[
        "bdev_nvme_set_options",
        "-k",
        "5000",
        "-a",
        "abort",
        "-t",
        "30000000",
        "--timeout-admin-us",
        "20000000",
        "-s",
        "1024",
    ]);
    d.step(
        &["bdev_nvme_set_options", "--generate-uuids"],
        Expect::Err("generate_uuids"),
    );
    d.step(
        &["bdev_nvme_set_options", "-r", "5"],
        Expect::Err("bdev_retry_count"),
    );
    d.ok(&["bdev_nvme_set_hotplug", "--hotplug", "-r", "2000000"]);
    d.step(
        &["framework_get_config", "bdev"],
        Expect::Ok(&["\"keep_alive_timeout_ms\": 5000", "\"period_us\": 2000000"]),
    );
    d.ok(&["bdev_nvme_set_hotplug", "--no-hotplug"]);
    d.step(
        &["bdev_nvme_set_hotplug", "--hotplug", "-r", "20000000"],
        Expect::Err("period_us"),
    );
    // The NVMe bdev module, attached to this very target over TCP.
    d.step(
        &[
            "bdev_nvme_attach_controller",
            "-b",
            "Nvme0",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-f",
            "ipv4",
            "-s",
            &nvmf_port,
            "-n",
            nqn,
        ],
        Expect::Ok(&["Nvme0n1"]),
    );
    d.step(
        &[
            "bdev_nvme_attach_controller",
            "-b",
            "Nvme1",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            &nvmf_port,
            "-n",
            nqn,
            "--dhchap-key",
            "key0",
        ],
        Expect::Err("dhchap_key"),
    );
    d.step(&["bdev_nvme_get_controllers"], Expect::Ok(&["Nvme0"]));
    d.step(
        &["bdev_nvme_set_options", "-k", "6000"],
        Expect::Err("not permitted"),
    );
    d.ok(&["bdev_nvme_reset_controller", "Nvme0"]);
    // SMART / Health log of our own NVMe-oF controller.
    let h: Value = serde_json::from_str(&d.step(
        &["bdev_nvme_get_controller_health_info", "-c", "Nvme0"],
        Expect::Ok(&["\"model_number\": \"SPDK_Controller1\""]),
    ))
    .unwrap();
    assert_eq!(h["temperature_celsius"], 38, "{h}");
    assert_eq!(h["available_spare_percentage"], 100, "{h}");
    assert_eq!(h["traddr"], "127.0.0.1", "{h}");
    assert!(
        h["power_on_hours"].is_u64() && h["media_errors"] == 0,
        "{h}"
    );
    // Identify Controller (opcode 06h, CNS 1) passed through.
    let ident =
        "BgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==";
    let r: Value = serde_json::from_str(&d.ok(&[
        "bdev_nvme_send_cmd",
        "-n",
        "Nvme0",
        "-t",
        "admin",
        "-r",
        "c2h",
        "-c",
        ident,
        "-D",
        "4096",
    ]))
    .unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE;
    let id = b64.decode(r["data"].as_str().unwrap()).unwrap();
    assert_eq!(id.len(), 4096);
    assert!(
        String::from_utf8_lossy(&id[24..64]).starts_with("SPDK_Controller1"),
        "model number: {:?}",
        String::from_utf8_lossy(&id[24..64])
    );
    let cpl = b64.decode(r["cpl"].as_str().unwrap()).unwrap();
    assert_eq!(cpl.len(), 16);
    assert_eq!(
        u32::from_le_bytes(cpl[12..16].try_into().unwrap()) >> 17,
        0,
        "status"
    );
    d.step(
        &[
            "bdev_nvme_send_cmd",
            "-n",
            "Nvme0",
            "-t",
            "admin",
            "-r",
            "c2h",
            "-c",
            ident,
            "-D",
            "4096",
            "-M",
            "8",
        ],
        Expect::Err("metadata"),
    );
    d.step(
        &["bdev_nvme_get_io_paths"],
        Expect::Ok(&["\"poll_groups\""]),
    );
    d.step(
        &["bdev_nvme_get_io_paths", "-n", "Nvme0n1"],
        Expect::Ok(&["\"poll_groups\""]),
    );
    d.step(
        &["bdev_nvme_get_transport_statistics"],
        Expect::Ok(&["\"poll_groups\""]),
    );
    d.ok(&[
        "bdev_nvme_add_error_injection",
        "-n",
        "Nvme0",
        "-t",
        "io",
        "-o",
        "2",
        "-e",
        "3",
        "-u",
        "0",
        "-c",
        "6",
    ]);
    d.ok(&[
        "bdev_nvme_remove_error_injection",
        "-n",
        "Nvme0",
        "-t",
        "io",
        "-o",
        "2",
    ]);
    d.step(
        &[
            "bdev_nvme_add_error_injection",
            "-n",
            "Nvme0",
            "-t",
            "admin",
            "-o",
            "6",
        ],
        Expect::Err("cmd_type admin"),
    );
    d.ok(&["bdev_nvme_disable_controller", "Nvme0"]);
    d.step(
        &["bdev_nvme_get_controllers", "-n", "Nvme0"],
        Expect::Ok(&["\"state\": \"disabled\""]),
    );
    d.ok(&["bdev_nvme_enable_controller", "Nvme0"]);
    d.step(
        &["bdev_nvme_get_controllers", "-n", "Nvme0"],
        Expect::Ok(&["\"state\": \"enabled\""]),
    );
    d.step(
        &["bdev_nvme_enable_controller", "-c", "77", "Nvme0"],
        Expect::Err("cntlid 77"),
    );
    d.ok(&["bdev_nvme_detach_controller", "Nvme0"]);
    // A discovery service on this target's discovery subsystem attaches
    // cnode1 as nvme0 (and lists the referral).
    d.ok(&[
        "bdev_nvme_start_discovery",
        "-b",
        "nvme",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-f",
        "ipv4",
        "-s",
        &nvmf_port,
        "-w",
    ]);
    d.step(
        &["bdev_get_bdevs", "-b", "nvme0n1"],
        Expect::Ok(&["nvme0n1"]),
    );
    d.step(
        &["bdev_nvme_get_discovery_info"],
        Expect::Ok(&[
            "\"name\": \"nvme\"",
            "nqn.2014-08.org.nvmexpress.discovery",
            "127.0.0.2",
        ]),
    );
    d.step(
        &["framework_get_config", "bdev"],
        Expect::Ok(&["bdev_nvme_start_discovery"]),
    );
    d.ok(&["bdev_nvme_stop_discovery", "-b", "nvme"]);
    d.step(&["bdev_nvme_get_controllers"], Expect::Ok(&["[]"]));

    // iSCSI, as the iSCSI Target guide sets it up.
    d.ok(&["iscsi_get_options"]);
    d.ok(&["iscsi_create_portal_group", "1", &iscsi_portal]);
    d.ok(&["iscsi_create_initiator_group", "2", "ANY", "127.0.0.1/32"]);
    d.ok(&[
        "iscsi_create_auth_group",
        "1",
        "-c",
        "user:u1 secret:s1secret1234",
    ]);
    d.ok(&[
        "iscsi_create_target_node",
        "disk1",
        "Data Disk1",
        "Malloc0:0",
        "1:2",
        "64",
        "-d",
    ]);
    d.ok(&[
        "iscsi_target_node_add_lun",
        "iqn.2016-06.io.spdk:disk1",
        "Pass0",
        "-i",
        "1",
    ]);
    d.ok(&["iscsi_set_discovery_auth", "-d"]);
    d.step(
        &["iscsi_get_target_nodes"],
        Expect::Ok(&["iqn.2016-06.io.spdk:disk1", "Pass0"]),
    );
    d.step(
        &["iscsi_get_portal_groups"],
        Expect::Ok(&[&iscsi_portal[10..]]),
    );
    d.ok(&["iscsi_get_initiator_groups"]);
    d.ok(&["iscsi_get_connections"]);
    d.ok(&[
        "iscsi_auth_group_add_secret",
        "-u",
        "u2",
        "-s",
        "s2secret1234",
        "1",
    ]);
    d.step(&["iscsi_get_auth_groups"], Expect::Ok(&["\"u2\""]));
    d.ok(&["iscsi_auth_group_remove_secret", "-u", "u2", "1"]);
    d.ok(&[
        "iscsi_target_node_set_auth",
        "-g",
        "1",
        "-r",
        "iqn.2016-06.io.spdk:disk1",
    ]);
    d.ok(&[
        "iscsi_target_node_set_auth",
        "-d",
        "iqn.2016-06.io.spdk:disk1",
    ]);
    d.ok(&["iscsi_create_initiator_group", "3", "ANY", "127.0.0.1/32"]);
    d.ok(&[
        "iscsi_target_node_add_pg_ig_maps",
        "iqn.2016-06.io.spdk:disk1",
        "1:3",
    ]);
    d.ok(&[
        "iscsi_target_node_remove_pg_ig_maps",
        "iqn.2016-06.io.spdk:disk1",
        "1:3",
    ]);
    d.ok(&[
        "iscsi_initiator_group_add_initiators",
        "-n",
        "iqn.2016-06.io.spdk:host1",
        "-m",
        "10.0.0.0/8",
        "3",
    ]);
    d.ok(&[
        "iscsi_initiator_group_remove_initiators",
        "-n",
        "iqn.2016-06.io.spdk:host1",
        "-m",
        "10.0.0.0/8",
        "3",
    ]);
    d.ok(&["iscsi_delete_initiator_group", "3"]);
    let long_name = format!("iqn.2016-06.io.spdk:{}", "x".repeat(220));
    d.step(
        &[
            "iscsi_create_initiator_group",
            "4",
            &long_name,
            "127.0.0.1/32",
        ],
        Expect::Err("223"),
    );
    d.ok(&["iscsi_create_portal_group", "5", &iscsi_portal2, "-w"]);
    d.ok(&["iscsi_start_portal_group", "5"]);
    d.ok(&["iscsi_portal_group_set_auth", "-d", "5"]);
    d.ok(&["iscsi_delete_portal_group", "5"]);
    d.ok(&[
        "iscsi_target_node_request_logout",
        "iqn.2016-06.io.spdk:disk1",
    ]);
    d.ok(&["iscsi_get_stats"]);
    d.ok(&[
        "iscsi_enable_histogram",
        "--histogram",
        "iqn.2016-06.io.spdk:disk1",
    ]);
    d.step(
        &["iscsi_get_histogram", "iqn.2016-06.io.spdk:disk1"],
        Expect::Ok(&["\"histogram\""]),
    );
    d.step(
        &["scsi_get_devices"],
        Expect::Ok(&["iqn.2016-06.io.spdk:disk1"]),
    );

    // sock_*, nvmf targets and per-namespace hosts, thread_set_cpumask.
    drive_sock_targets_ns_hosts_cpumask(&mut d, nqn);

    // save_config (rpc.py builds it from framework_get_subsystems and
    // framework_get_config) loads into a second target.
    let subs = d.ok(&["framework_get_subsystems"]);
    assert!(subs.contains("\"nvmf\""), "{subs}");
    let saved = d.step(
        &["save_config"],
        Expect::Ok(&[
            "nvmf_create_transport",
            "0011223344556677",
            "\"iobuf_small_cache_size\": 64",
            "\"iobuf_large_cache_size\": 8",
        ]),
    );
    let cfg_path = tmp.path().join("saved.json");
    std::fs::write(&cfg_path, &saved).unwrap();

    // Tear down in reverse.
    d.ok(&[
        "nvmf_discovery_remove_referral",
        "-t",
        "tcp",
        "-a",
        "127.0.0.2",
        "-s",
        "4430",
    ]);
    d.ok(&["nvmf_subsystem_remove_ns", nqn, "5"]);
    d.ok(&["iscsi_delete_target_node", "iqn.2016-06.io.spdk:disk1"]);
    d.ok(&["iscsi_delete_auth_group", "1"]);
    d.ok(&["iscsi_delete_portal_group", "1"]);
    d.ok(&["iscsi_delete_initiator_group", "2"]);
    d.ok(&["nvmf_delete_subsystem", nqn]);
    d.ok(&["bdev_malloc_delete", "MallocVis"]); // drive_sock_targets_ns_hosts_cpumask's
    d.ok(&["bdev_split_delete", "Uring0"]);
    d.ok(&["bdev_passthru_delete", "Pass0"]);
    d.ok(&["bdev_error_delete", "EE_Malloc1"]);
    d.ok(&["bdev_delay_delete", "Delay0"]);
    d.ok(&["bdev_uring_delete", "Uring0"]);
    d.ok(&["bdev_aio_delete", "AIO0"]);
    d.ok(&["bdev_null_delete", "Null0"]);
    d.ok(&["bdev_malloc_delete", "Malloc1"]);
    d.ok(&["bdev_malloc_delete", "Malloc0"]);
    d.step(&["bdev_get_bdevs"], Expect::Ok(&["[]"]));

    // Every method the target lists was driven by SPDK's client.
    let listed: BTreeSet<String> = ok(&t.sock, "rpc_get_methods", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    d.ok(&["spdk_kill_instance", "SIGTERM"]);
    let not_driven: Vec<&String> = listed.difference(&d.called).collect();
    assert!(
        not_driven.is_empty(),
        "methods rspdk_tgt serves that this test does not drive with spdk-rpc: {not_driven:?}"
    );
    eprintln!(
        "spdk-rpc drove all {} methods rspdk_tgt serves",
        listed.len()
    );
    drop(t);

    // The saved config loads.
    let t2 = Target::start(&["-c", cfg_path.to_str().unwrap()]);
    common::wait_started(&t2.sock);
    let bdevs = ok(&t2.sock, "bdev_get_bdevs", None);
    let names: Vec<&str> = bdevs
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Pass0") && names.contains(&"Malloc0"),
        "{names:?}\n{}",
        std::fs::read_to_string(&t2.log).unwrap_or_default()
    );
}

// ---- sock_*, nvmf_*_target(s), nvmf_ns_{add,remove}_host,
// ---- thread_set_cpumask (kept apart from the other blocks for merging).

/// Calls one of SPDK's private methods (`nvmf_create_target`,
/// `nvmf_delete_target`, `nvmf_get_targets`: rpc.py has no command for
/// them) through SPDK's own Python client, `spdk.rpc.client.JSONRPCClient`,
/// as SPDK's `test/nvmf/target/multitarget_rpc.py` does; checks the
/// outcome like [`Driver::step`].
fn private_call(
    d: &mut Driver<'_>,
    method: &str,
    params: Option<Value>,
    expect: Expect<'_>,
) -> String {
    let script = "import sys, json\n\
from spdk.rpc.client import JSONRPCClient\n\
c = JSONRPCClient(sys.argv[1])\n\
p = json.loads(sys.argv[3]) if sys.argv[3] else None\n\
print(json.dumps(c.call(sys.argv[2], p), indent=2))\n";
    let out = Command::new("timeout")
        .arg("60")
        .arg(spdk_tool("python"))
        .arg("-c")
        .arg(script)
        .arg(d.sock)
        .arg(method)
        .arg(params.as_ref().map(Value::to_string).unwrap_or_default())
        .output()
        .unwrap();
    d.called.insert(method.to_string());
    let (ok, so, se) = (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    match expect {
        Expect::Ok(needles) => {
            assert!(ok, "{method} {params:?} failed:\n{se}{so}");
            for n in needles {
                assert!(so.contains(n), "{method}: output lacks {n:?}:\n{so}");
            }
        }
        Expect::Err(needle) => {
            assert!(!ok, "{method} {params:?} should have failed:\n{so}");
            assert!(
                se.contains(needle) || so.contains(needle),
                "{method}: error lacks {needle:?}:\n{se}{so}"
            );
        }
    }
    so
}

/// The sock layer's, NVMe-oF targets', per-namespace hosts' and
/// thread_set_cpumask's methods, as SPDK's docs call them.
fn drive_sock_targets_ns_hosts_cpumask(d: &mut Driver<'_>, nqn: &str) {
    // NVMe-oF targets: a second one with its own transport and
    // subsystem, driven through rpc.py's -t/--tgt-name.
    private_call(d, "nvmf_get_targets", None, Expect::Ok(&["\"nvmf_tgt\""]));
    private_call(
        d,
        "nvmf_create_target",
        Some(serde_json::json!({"name": "tgt2", "max_subsystems": 16})),
        Expect::Ok(&["tgt2"]),
    );
    private_call(
        d,
        "nvmf_create_target",
        Some(serde_json::json!({"name": "tgt3", "dup_host_policy": "restrict_per_listener"})),
        Expect::Err("dup_host_policy"),
    );
    d.ok(&["nvmf_create_transport", "-t", "TCP", "-g", "tgt2"]);
    d.step(
        &["nvmf_get_transports", "--tgt-name", "tgt2"],
        Expect::Ok(&["\"trtype\": \"TCP\""]),
    );
    d.ok(&[
        "nvmf_create_subsystem",
        "nqn.2016-06.io.spdk:tgt2sub",
        "-a",
        "-t",
        "tgt2",
    ]);
    d.step(
        &["nvmf_get_subsystems", "--tgt-name", "tgt2"],
        Expect::Ok(&["nqn.2016-06.io.spdk:tgt2sub"]),
    );
    let default = d.ok(&["nvmf_get_subsystems"]);
    assert!(!default.contains("tgt2sub"), "{default}");
    d.step(&["nvmf_get_subsystems", "-t", "nope"], Expect::Err("nope"));
    private_call(d, "nvmf_get_targets", None, Expect::Ok(&["\"tgt2\""]));
    private_call(
        d,
        "nvmf_delete_target",
        Some(serde_json::json!({"name": "tgt2"})),
        Expect::Ok(&["true"]),
    );
    private_call(
        d,
        "nvmf_delete_target",
        Some(serde_json::json!({"name": "tgt2"})),
        Expect::Err("tgt2"),
    );
    // The app thread (id 1) on the main reactor (core 0).
    d.ok(&["thread_set_cpumask", "-i", "1", "-m", "0x1"]);
    d.step(
        &["thread_set_cpumask", "-i", "1", "-m", "0x80"],
        Expect::Err("names no core with a reactor"),
    );
    d.step(&["thread_get_stats"], Expect::Ok(&["\"cpumask\": \"1\""]));
    let host0 = "nqn.2024-01.io.spdk:host0";
    // A namespace only the hosts added with nvmf_ns_add_host see.
    d.ok(&["bdev_malloc_create", "-b", "MallocVis", "8", "512"]);
    d.ok(&["nvmf_subsystem_add_ns", "-n", "7", "-i", nqn, "MallocVis"]);
    d.ok(&["nvmf_ns_add_host", nqn, "7", host0]);
    d.ok(&["nvmf_ns_add_host", nqn, "7", "nqn.2024-01.io.spdk:host1"]);
    d.ok(&["nvmf_ns_remove_host", nqn, "7", "nqn.2024-01.io.spdk:host1"]);
    d.step(
        &["nvmf_ns_add_host", nqn, "1", host0],
        Expect::Err("no_auto_visible"),
    );
    d.step(
        &["nvmf_ns_add_host", nqn, "9", host0],
        Expect::Err("nsid 9"),
    );
    d.step(
        &["framework_get_config", "nvmf"],
        Expect::Ok(&["\"no_auto_visible\": true", "nvmf_ns_add_host", host0]),
    );

    d.step(
        &["sock_get_default_impl"],
        Expect::Ok(&["\"impl_name\": \"posix\""]),
    );
    d.ok(&["sock_set_default_impl", "-i", "posix"]);
    d.step(
        &["sock_set_default_impl", "-i", "uring"],
        Expect::Err("io_uring"),
    );
    d.ok(&[
        "sock_impl_set_options",
        "-i",
        "posix",
        "-r",
        "1048576",
        "-s",
        "1048576",
        "--quickack",
        "--recv-pipe",
    ]);
    d.step(
        &["sock_impl_get_options", "-i", "posix"],
        Expect::Ok(&["\"recv_buf_size\": 1048576", "\"enable_quickack\": true"]),
    );
    d.step(
        &["sock_impl_set_options", "-i", "posix", "-p", "2"],
        Expect::Err("enable_placement_id"),
    );
    d.step(
        &["sock_impl_set_options", "-i", "posix", "--no-recv-pipe"],
        Expect::Err("enable_recv_pipe"),
    );
    d.step(
        &[
            "sock_impl_set_options",
            "-i",
            "posix",
            "--zerocopy-send-client",
        ],
        Expect::Err("enable_zerocopy_send_client"),
    );
    d.step(
        &["sock_impl_set_options", "-i", "ssl", "--ktls"],
        Expect::Err("TLS"),
    );
    d.step(
        &["sock_impl_get_options", "-i", "uring"],
        Expect::Err("uring"),
    );
    d.step(
        &["framework_get_config", "sock"],
        Expect::Ok(&["sock_set_default_impl", "\"recv_buf_size\": 1048576"]),
    );
}

/// With auto examine off (`bdev_set_options --no-auto-examine`), a new
/// bdev is examined only once `bdev_examine` names it: a passthru waiting
/// for its base appears only then; save_config keeps both settings.
#[test]
fn manual_examine_without_auto_examine() {
    let t = Target::start(&["--wait-for-rpc"]);
    let mut d = Driver {
        sock: &t.sock,
        called: BTreeSet::new(),
    };
    d.ok(&["bdev_set_options", "--no-auto-examine"]);
    d.ok(&["framework_start_init"]);
    d.ok(&["bdev_passthru_create", "-b", "Malloc9", "-p", "PT9"]);
    d.ok(&["bdev_malloc_create", "8", "512", "-b", "Malloc9"]);
    let names = || {
        ok(&t.sock, "bdev_get_bdevs", None)
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(), ["Malloc9"], "not examined without bdev_examine");
    d.ok(&["bdev_examine", "-b", "Malloc9"]);
    assert!(names().contains(&"PT9".to_string()), "{:?}", names());
    d.step(
        &["bdev_examine", "-b", "Malloc9"],
        Expect::Err("already named"),
    );
    let saved = d.ok(&["save_config"]);
    let cfg: Value = serde_json::from_str(&saved).unwrap();
    let bdev = cfg["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "bdev")
        .unwrap()["config"]
        .clone();
    assert_eq!(bdev[0]["method"], "bdev_set_options");
    assert_eq!(bdev[0]["params"]["bdev_auto_examine"], false);
    assert_eq!(bdev[1]["method"], "bdev_examine");
    assert_eq!(bdev[1]["params"]["name"], "Malloc9");
    // The saved config rebuilds the passthru in a fresh target.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, &saved).unwrap();
    let t2 = Target::start(&["-c", path.to_str().unwrap()]);
    common::wait_started(&t2.sock);
    let b2 = ok(&t2.sock, "bdev_get_bdevs", None).to_string();
    assert!(b2.contains("PT9"), "{b2}");
}

/// spdk-cli (SPDK's configshell UI) lists and creates bdevs, an NVMe-oF
/// subsystem and an iSCSI target node.
#[test]
fn spdk_cli_lists_and_creates() {
    let t = Target::start(&[]);
    common::wait_started(&t.sock);
    let cli = |cmd: &str| {
        let out = Command::new("timeout")
            .arg("60")
            .arg(spdk_tool("spdk-cli"))
            .arg("-s")
            .arg(&t.sock)
            .arg(cmd)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "spdk-cli {cmd} failed:\n{text}");
        assert!(
            !text.contains("Traceback"),
            "spdk-cli {cmd} raised:\n{text}"
        );
        text
    };
    cli("/bdevs/malloc create 32 512 Malloc7");
    cli("/bdevs/null create Null7 16 512");
    let port = free_port();
    cli("/nvmf/transport create TCP max_io_qpairs_per_ctrlr=4 io_unit_size=8192");
    cli("/nvmf/subsystem create nqn.2016-06.io.spdk:cli1 N37SXV509SRW max_namespaces=4 allow_any_host=True");
    cli("/nvmf/subsystem/nqn.2016-06.io.spdk:cli1/namespaces create Malloc7 1");
    cli(&format!(
        "/nvmf/subsystem/nqn.2016-06.io.spdk:cli1/listen_addresses create tcp 127.0.0.1 {port} IPv4"
    ));
    cli(&format!(
        "/iscsi/portal_groups create 1 127.0.0.1:{}",
        free_port()
    ));
    cli("/iscsi/initiator_groups create 2 ANY 127.0.0.1/32");
    cli("/iscsi/target_nodes create Target7 Target7_alias Null7:0 1:2 64 d=true");
    let ls = cli("ls");
    for want in [
        "Malloc7",
        "Null7",
        "nqn.2016-06.io.spdk:cli1",
        "127.0.0.1",
        "iqn.2016-06.io.spdk:Target7",
    ] {
        assert!(ls.contains(want), "spdk-cli ls lacks {want}:\n{ls}");
    }
    let subs = ok(&t.sock, "nvmf_get_subsystems", None);
    assert!(subs.to_string().contains("Malloc7"), "{subs}");
    assert_eq!(
        ok(&t.sock, "iscsi_get_target_nodes", None)[0]["luns"][0]["bdev_name"],
        "Null7"
    );
}
