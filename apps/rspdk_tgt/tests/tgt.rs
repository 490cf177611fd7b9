//! `rspdk_tgt` as a process: every framework method answers with SPDK's
//! shape, the JSON config at start, signals and `spdk_kill_instance`, bad
//! flags, and an idle `--interrupt-mode` target using ~0% CPU.

#[path = "../../../crates/event/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{ok, rpc, wait_started};
use serde_json::{json, Value};

const TGT: &str = env!("CARGO_BIN_EXE_rspdk_tgt");

struct Tgt {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tgt {
    /// Starts `rspdk_tgt` on a temp socket, `--no-huge`, plus `args`.
    fn spawn(args: &[&str]) -> Tgt {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("spdk.sock");
        let log = dir.path().join("stderr.log");
        let child = Command::new(TGT)
            .arg("-r")
            .arg(&sock)
            .arg("--no-huge")
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Tgt {
            child,
            sock,
            log,
            _dir: dir,
        }
    }

    fn start(args: &[&str]) -> Tgt {
        let t = Tgt::spawn(args);
        wait_started(&t.sock);
        t
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The save_config section of `subsystem`.
fn section<'a>(saved: &'a Value, subsystem: &str) -> &'a Value {
    saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == subsystem)
        .unwrap_or_else(|| panic!("no {subsystem} section in {saved}"))
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// `--demo` applies the embedded demo config: Malloc0 exported as cnode1,
/// written back by save_config.
#[test]
fn demo_flag_applies_the_embedded_config() {
    let t = Tgt::start(&["--demo"]);
    let s = &t.sock;
    let saved = ok(s, "save_config", None);
    let bdev_cfg = section(&saved, "bdev")["config"].as_array().unwrap();
    assert!(
        bdev_cfg.iter().any(|e| e["method"] == "bdev_malloc_create"
            && e["params"]["name"] == "Malloc0"
            && e["params"]["num_blocks"] == 131072),
        "{saved}"
    );
    assert_eq!(ok(s, "bdev_get_bdevs", None)[0]["name"], json!("Malloc0"));
    let subs = ok(s, "nvmf_get_subsystems", None);
    assert!(
        subs.as_array()
            .unwrap()
            .iter()
            .any(|x| x["nqn"] == "nqn.2016-06.io.spdk:cnode1"),
        "{subs}"
    );
}

#[test]
fn every_framework_method_answers_with_spdk_shape() {
    let t = Tgt::start(&["--interrupt-mode"]);
    let s = &t.sock;
    let v = ok(s, "spdk_get_version", None);
    assert_eq!(keys(&v), ["version", "fields"]);
    assert_eq!(keys(&v["fields"]), ["major", "minor", "patch", "suffix"]);
    assert!(v["version"].as_str().unwrap().starts_with("rspdk v"));

    assert_eq!(ok(s, "framework_wait_init", None), json!(true));
    let r = ok(s, "framework_get_reactors", None);
    assert_eq!(keys(&r), ["tick_rate", "pid", "reactors"]);
    assert_eq!(r["pid"], json!(t.child.id()));
    let r0 = &r["reactors"][0];
    assert_eq!(
        keys(r0),
        [
            "lcore",
            "tid",
            "busy",
            "idle",
            "in_interrupt",
            "irq",
            "sys",
            "usr",
            "lw_threads"
        ]
    );
    assert_eq!(r0["in_interrupt"], json!(true));
    assert_eq!(r0["lw_threads"][0]["name"], json!("app_thread"));
    assert_eq!(
        ok(s, "framework_get_subsystems", None),
        json!([
            {"subsystem": "sock", "depends_on": []},
            {"subsystem": "iobuf", "depends_on": []},
            {"subsystem": "bdev", "depends_on": []},
            {"subsystem": "nvmf", "depends_on": ["bdev"]},
            {"subsystem": "scsi", "depends_on": []},
            {"subsystem": "iscsi", "depends_on": ["bdev", "scsi"]}
        ])
    );
    // A bare target starts empty, as spdk_tgt does: SPDK's scripts create
    // Malloc0 and cnode1 themselves.
    assert_eq!(ok(s, "bdev_get_bdevs", None), json!([]));
    assert_eq!(
        ok(s, "nvmf_get_subsystems", None).as_array().unwrap().len(),
        1
    );
    let saved = ok(s, "save_config", None);
    // SPDK's order: the sock layer first, then iobuf.
    assert_eq!(saved["subsystems"][0]["subsystem"], json!("sock"));
    assert_eq!(saved["subsystems"][1]["subsystem"], json!("iobuf"));
    assert_eq!(
        section(&saved, "iobuf")["config"][0]["method"],
        json!("iobuf_set_options")
    );
    let bdev_cfg = section(&saved, "bdev")["config"].as_array().unwrap();
    assert!(
        !bdev_cfg.iter().any(|e| e["method"] == "bdev_malloc_create"),
        "{saved}"
    );
    let st = ok(s, "thread_get_stats", None);
    assert_eq!(keys(&st), ["tick_rate", "threads"]);
    assert_eq!(
        keys(&st["threads"][0]),
        [
            "name",
            "id",
            "cpumask",
            "busy",
            "idle",
            "in_interrupt",
            "active_pollers_count",
            "timed_pollers_count",
            "paused_pollers_count"
        ]
    );
    let p = ok(s, "thread_get_pollers", None);
    let t0 = &p["threads"][0];
    assert_eq!(
        keys(t0),
        [
            "name",
            "id",
            "active_pollers",
            "timed_pollers",
            "paused_pollers"
        ]
    );
    assert_eq!(t0["timed_pollers"][0]["name"], json!("rpc_subsystem_poll"));
    assert_eq!(t0["timed_pollers"][0]["period_ticks"], json!(4_000_000));
    let c = ok(s, "thread_get_io_channels", None);
    assert_eq!(keys(&c["threads"][0]), ["name", "id", "io_channels"]);

    let m = ok(s, "env_dpdk_get_mem_stats", None);
    assert_eq!(m["filename"], json!("/tmp/spdk_mem_dump.txt"));
    assert!(m["heaps"].is_array());
    assert!(Path::new("/tmp/spdk_mem_dump.txt").exists());

    // Logs.
    let flags = ok(s, "log_get_flags", None);
    assert_eq!(flags["rpc"], json!(false));
    assert_eq!(
        ok(s, "log_set_flag", Some(json!({"flag": "rpc"}))),
        json!(true)
    );
    assert_eq!(ok(s, "log_get_flags", None)["rpc"], json!(true));
    assert_eq!(
        ok(s, "log_clear_flag", Some(json!({"flag": "all"}))),
        json!(true)
    );
    assert_eq!(ok(s, "log_get_flags", None)["rpc"], json!(false));
    let e = rpc(s, "log_set_flag", Some(json!({"flag": "nope"}))).unwrap_err();
    assert_eq!(e.code, -32602);
    assert!(
        e.message.contains("unknown log flag 'nope'"),
        "{}",
        e.message
    );
    assert_eq!(ok(s, "log_get_level", None), json!("NOTICE"));
    assert_eq!(
        ok(s, "log_set_level", Some(json!({"level": "ERROR"}))),
        json!(true)
    );
    assert_eq!(ok(s, "log_get_level", None), json!("ERROR"));
    assert_eq!(
        ok(s, "log_set_print_level", Some(json!({"level": "WARNING"}))),
        json!(true)
    );
    assert_eq!(ok(s, "log_get_print_level", None), json!("WARNING"));
    let e = rpc(s, "log_set_level", Some(json!({"level": "LOUD"}))).unwrap_err();
    assert!(
        e.message.contains("level: unknown log level 'LOUD'"),
        "{}",
        e.message
    );

    // Strict params, SPDK messages.
    let e = rpc(s, "spdk_get_version", Some(json!({"x": 1}))).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (-32602, "spdk_get_version method requires no parameters")
    );
    let e = rpc(s, "log_set_flag", Some(json!({"flag": "rpc", "extra": 1}))).unwrap_err();
    assert!(e.message.contains("unknown field `extra`"), "{}", e.message);
    let e = rpc(s, "spdk_kill_instance", Some(json!({"sig_name": "SIGFOO"}))).unwrap_err();
    assert!(
        e.message.contains("sig_name: unknown signal 'SIGFOO'"),
        "{}",
        e.message
    );
    let e = rpc(s, "framework_start_init", None).unwrap_err();
    assert_eq!(e.code, -1);

    let methods = ok(s, "rpc_get_methods", None);
    for m in [
        "spdk_get_version",
        "framework_wait_init",
        "framework_start_init",
        "framework_get_reactors",
        "framework_get_subsystems",
        "framework_get_config",
        "save_config",
        "thread_get_stats",
        "thread_get_pollers",
        "thread_get_io_channels",
        "env_dpdk_get_mem_stats",
        "log_set_flag",
        "log_clear_flag",
        "log_get_flags",
        "log_set_level",
        "log_get_level",
        "log_set_print_level",
        "log_get_print_level",
        "spdk_kill_instance",
    ] {
        assert!(
            methods.as_array().unwrap().contains(&json!(m)),
            "{m} missing"
        );
    }
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut t = Tgt::start(&[]);
    t.signal(libc::SIGTERM);
    let st = t.wait(Duration::from_secs(5)).expect("exits within 5 s");
    assert_eq!(st.code(), Some(0), "{}", t.stderr());
    assert!(!t.sock.exists(), "socket file removed");
    assert!(t.stderr().contains("SIGTERM received: shutting down"));
}

#[test]
fn sigint_shuts_down_cleanly_in_interrupt_mode() {
    let mut t = Tgt::start(&["--interrupt-mode", "-m", "0x1"]);
    t.signal(libc::SIGINT);
    let st = t.wait(Duration::from_secs(5)).expect("exits within 5 s");
    assert_eq!(st.code(), Some(0), "{}", t.stderr());
    assert!(!t.sock.exists());
}

#[test]
fn spdk_kill_instance_shuts_down_cleanly() {
    for sig in ["SIGINT", "SIGTERM"] {
        let mut t = Tgt::start(&["--interrupt-mode"]);
        assert_eq!(
            ok(
                &t.sock,
                "spdk_kill_instance",
                Some(json!({"sig_name": sig}))
            ),
            json!(true)
        );
        let st = t.wait(Duration::from_secs(5)).expect("exits within 5 s");
        assert_eq!(st.code(), Some(0), "{sig}: {}", t.stderr());
        assert!(!t.sock.exists());
    }
    // SIGKILL is delivered as is, as SPDK does.
    let mut t = Tgt::start(&["--interrupt-mode"]);
    let mut c = rspdk_rpc::RpcClient::connect(
        &rspdk_rpc::ListenAddr::Unix(t.sock.clone()),
        Duration::from_secs(5),
    )
    .unwrap();
    // The process may die before the answer is written.
    let _ = c.call("spdk_kill_instance", Some(json!({"sig_name": "SIGKILL"})));
    use std::os::unix::process::ExitStatusExt;
    let st = t.wait(Duration::from_secs(5)).expect("killed");
    assert_eq!(st.signal(), Some(libc::SIGKILL));
}

#[test]
fn json_config_applied_at_start_and_errors_abort() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"// comments are allowed, as in SPDK
        {"subsystems": [{"subsystem": "bdev", "config": [
            {"method": "log_set_flag", "params": {"flag": "app_config"}},
            {"method": "log_set_print_level", "params": {"level": "INFO"}}
        ]}]}"#,
    )
    .unwrap();
    let t = Tgt::start(&["--interrupt-mode", "-c", good.to_str().unwrap()]);
    assert_eq!(
        ok(&t.sock, "log_get_flags", None)["app_config"],
        json!(true)
    );
    assert_eq!(ok(&t.sock, "log_get_print_level", None), json!("INFO"));
    drop(t);

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"subsystems": [{"subsystem": "bdev", "config": [
            {"method": "log_set_flag", "params": {"flag": "no_such_flag"}},
            {"method": "log_set_flag", "params": {"flag": "rpc"}}
        ]}]}"#,
    )
    .unwrap();
    let mut t = Tgt::spawn(&["--interrupt-mode", "-c", bad.to_str().unwrap()]);
    let st = t.wait(Duration::from_secs(10)).expect("start fails");
    assert_eq!(st.code(), Some(1));
    let err = t.stderr();
    assert!(
        err.contains("JSON config: subsystem 'bdev': method 'log_set_flag' failed: invalid params: flag: unknown log flag 'no_such_flag'"),
        "{err}"
    );
    assert!(!t.sock.exists());

    let t = Tgt::start(&[
        "--interrupt-mode",
        "-c",
        bad.to_str().unwrap(),
        "--json-ignore-init-errors",
    ]);
    assert_eq!(ok(&t.sock, "log_get_flags", None)["rpc"], json!(true));
}

#[test]
fn wait_for_rpc_then_start_init() {
    let t = Tgt::spawn(&["--interrupt-mode", "--wait-for-rpc"]);
    assert!(common::wait_for_socket(&t.sock, Duration::from_secs(20)));
    let e = rpc(&t.sock, "thread_get_stats", None).unwrap_err();
    assert_eq!(e.code, -1);
    assert_eq!(ok(&t.sock, "framework_start_init", None), json!(true));
    ok(&t.sock, "thread_get_stats", None);
}

#[test]
fn bad_flags_give_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["-m", "0xZ"], "invalid value '0xZ' for '--cpumask <MASK>'"),
        (&["-s", "lots"], "invalid memory size 'lots'"),
        (
            &["--iova-mode", "xx"],
            "IOVA mode 'xx' is not one of pa, va, auto",
        ),
        (&["--bogus"], "unexpected argument '--bogus'"),
    ];
    for (args, want) in cases {
        let out = Command::new(TGT).args(*args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let mut t = Tgt::spawn(&["-L", "not_a_flag"]);
    let st = t.wait(Duration::from_secs(10)).expect("fails");
    assert_eq!(st.code(), Some(1));
    assert!(
        t.stderr().contains("unknown log flag 'not_a_flag'"),
        "{}",
        t.stderr()
    );
    let mut t = Tgt::spawn(&["-m", "0x8000000000"]);
    let st = t.wait(Duration::from_secs(10)).expect("fails");
    assert_eq!(st.code(), Some(1));
    assert!(
        t.stderr().contains("is not available to this process"),
        "{}",
        t.stderr()
    );
}

#[test]
fn second_instance_on_the_same_socket_fails() {
    let t = Tgt::start(&["--interrupt-mode"]);
    let out = Command::new(TGT)
        .arg("-r")
        .arg(&t.sock)
        .args(["--no-huge", "--interrupt-mode"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is in use by another process"), "{err}");
    ok(&t.sock, "spdk_get_version", None);
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s[s.rfind(')').unwrap() + 1..].split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn idle_interrupt_mode_target_uses_almost_no_cpu() {
    let t = Tgt::start(&["--interrupt-mode"]);
    std::thread::sleep(Duration::from_millis(200));
    let pid = t.child.id();
    let (c0, t0) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (c1, el) = (cpu_ticks(pid), t0.elapsed());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (c1 - c0) as f64 / hz / el.as_secs_f64();
    eprintln!("idle --interrupt-mode rspdk_tgt: {:.2}% CPU", cpu * 100.0);
    assert!(cpu < 0.05, "idle CPU {:.1}%", cpu * 100.0);
}

/// A misspelled subsystem in a config file stops the start with an error
/// that names it and the likely fix; an SPDK subsystem rspdk lacks, with
/// an empty section (as SPDK's save_config writes them), is skipped.
#[test]
fn config_subsystem_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"subsystems": [{"subsystem": "bdve", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M", "num_blocks": 64, "block_size": 512}}]}]}"#,
    )
    .unwrap();
    let mut t = Tgt::spawn(&["-c", bad.to_str().unwrap()]);
    let st = t.wait(Duration::from_secs(20)).expect("rspdk_tgt exits");
    assert!(!st.success());
    let err = t.stderr();
    assert!(
        err.contains("unknown subsystem 'bdve'") && err.contains("did you mean 'bdev'"),
        "{err}"
    );

    let spdk = dir.path().join("spdk.json");
    std::fs::write(
        &spdk,
        r#"{"subsystems": [{"subsystem": "vmd", "config": []}, {"subsystem": "keyring", "config": null},
            {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M", "num_blocks": 64, "block_size": 512}}]}]}"#,
    )
    .unwrap();
    let t = Tgt::start(&["-c", spdk.to_str().unwrap()]);
    assert_eq!(ok(&t.sock, "bdev_get_bdevs", None)[0]["name"], json!("M"));
}

/// `spdk_kill_instance SIGHUP` answers `true` and shuts down cleanly
/// (exit 0, the RPC socket removed), as SIGTERM does; SIGKILL answers
/// `true` before the process dies.
#[test]
fn kill_instance_replies_before_the_signal() {
    let mut t = Tgt::start(&[]);
    assert_eq!(
        ok(
            &t.sock,
            "spdk_kill_instance",
            Some(json!({"sig_name": "SIGHUP"}))
        ),
        json!(true)
    );
    let st = t.wait(Duration::from_secs(20)).expect("exits after SIGHUP");
    assert_eq!(st.code(), Some(0), "clean shutdown: {}", t.stderr());
    assert!(!t.sock.exists(), "socket removed");

    let mut t = Tgt::start(&[]);
    assert_eq!(
        ok(
            &t.sock,
            "spdk_kill_instance",
            Some(json!({"sig_name": "SIGKILL"}))
        ),
        json!(true)
    );
    let st = t.wait(Duration::from_secs(20)).expect("killed");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL));
}

/// `-s 100T` is refused before any hugepage is reserved: the start fails
/// at once with a message naming the machine's memory, and the hugepage
/// pool is what it was (it used to grab ~20 GiB and keep it).
#[test]
fn impossible_memory_size_reserves_nothing() {
    let nr = "/proc/sys/vm/nr_hugepages";
    let before = std::fs::read_to_string(nr).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(TGT)
        .arg("-r")
        .arg(dir.path().join("s.sock"))
        .args(["-s", "100T"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("more than this machine's memory"), "{err}");
    assert_eq!(
        std::fs::read_to_string(nr).unwrap(),
        before,
        "hugepages changed"
    );
}

/// framework_get/set_scheduler (static only, period kept; dynamic refused
/// by name), framework_get_governor (none), framework_get_pci_devices,
/// log_enable_timestamps (log lines lose and regain their timestamp).
#[test]
fn scheduler_governor_pci_and_timestamps() {
    let t = Tgt::start(&[]);
    let s = &t.sock;
    let g = ok(s, "framework_get_scheduler", None);
    assert_eq!(g["scheduler_name"], json!("static"));
    assert_eq!(g["scheduler_period"], json!(1_000_000));
    ok(
        s,
        "framework_set_scheduler",
        Some(json!({"name": "static", "period": 500_000})),
    );
    assert_eq!(
        ok(s, "framework_get_scheduler", None)["scheduler_period"],
        json!(500_000)
    );
    let e = rpc(
        s,
        "framework_set_scheduler",
        Some(json!({"name": "dynamic"})),
    )
    .unwrap_err();
    assert!(e.message.contains("'dynamic' is not supported"), "{e:?}");
    assert_eq!(ok(s, "framework_get_governor", None), json!({}));
    assert!(ok(s, "framework_get_pci_devices", None).is_array());

    let line_with = |marker: &str| {
        t.stderr()
            .lines()
            .find(|l| l.contains(marker))
            .map(str::to_string)
    };
    ok(s, "log_enable_timestamps", Some(json!({"enabled": false})));
    ok(s, "log_set_print_level", Some(json!({"level": "INFO"})));
    ok(
        s,
        "bdev_malloc_create",
        Some(json!({"name": "NoStamp", "num_blocks": 64, "block_size": 512})),
    );
    ok(s, "log_enable_timestamps", Some(json!({"enabled": true})));
    ok(
        s,
        "bdev_malloc_create",
        Some(json!({"name": "Stamped", "num_blocks": 64, "block_size": 512})),
    );
    let plain = line_with("NoStamp").expect("a log line about NoStamp");
    let stamped = line_with("Stamped").expect("a log line about Stamped");
    assert!(!plain.trim_start().starts_with("20"), "{plain}");
    assert!(stamped.starts_with("20"), "{stamped}");
}

/// `thread_set_cpumask` on a two-reactor app: a mask that keeps the
/// thread's reactor becomes its cpumask (thread_get_stats and
/// framework_get_reactors show it); a mask that would move it to another
/// reactor is refused, saying rspdk does not move threads; a mask naming
/// no reactor of the app, a bad mask and an unknown id are refused.
#[test]
fn thread_set_cpumask_on_two_reactors() {
    let t = Tgt::start(&["-m", "0x3"]);
    let portal = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The iSCSI portal group starts a poll group thread on each reactor.
    ok(
        &t.sock,
        "iscsi_create_portal_group",
        Some(json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": portal.to_string()}]})),
    );
    let thread = |name: &str| -> Value {
        let st = ok(&t.sock, "thread_get_stats", None);
        st["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|th| th["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no thread {name}: {st}"))
    };
    let pg1 = thread("iscsi_poll_group_1");
    assert_eq!(pg1["cpumask"], "2", "{pg1}");
    let id = pg1["id"].as_u64().unwrap();

    assert_eq!(
        ok(
            &t.sock,
            "thread_set_cpumask",
            Some(json!({"id": id, "cpumask": "0x3"}))
        ),
        json!(true)
    );
    assert_eq!(thread("iscsi_poll_group_1")["cpumask"], "3");
    let reactors = ok(&t.sock, "framework_get_reactors", None);
    let on1 = &reactors["reactors"][1];
    assert_eq!(on1["lcore"], 1);
    assert!(
        on1["lw_threads"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == id && l["cpumask"] == "3"),
        "{reactors}"
    );

    let refused = |mask: &str, id: Value, needle: &str| {
        let e = rpc(
            &t.sock,
            "thread_set_cpumask",
            Some(json!({"id": id, "cpumask": mask})),
        )
        .unwrap_err();
        assert!(e.message.contains(needle), "{mask}: {}", e.message);
    };
    refused("0x1", json!(id), "does not move threads");
    refused("0x4", json!(id), "names no core with a reactor");
    refused("0xzz", json!(id), "cpumask '0xzz'");
    refused("0x1", json!(99_999), "no thread with id 99999");
    // The refusals changed nothing.
    assert_eq!(thread("iscsi_poll_group_1")["cpumask"], "3");
    // The id as a string (SPDK's doc example) works too.
    ok(
        &t.sock,
        "thread_set_cpumask",
        Some(json!({"id": id.to_string(), "cpumask": "2"})),
    );
    assert_eq!(thread("iscsi_poll_group_1")["cpumask"], "2");
}
