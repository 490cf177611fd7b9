//! The NVMe bdev module's controller RPCs against rspdk_tgt's own
//! NVMe-oF/TCP target: a discovery service attaches the subsystems the
//! discovery log lists and follows them as they come and go; error
//! injection makes reads fail with the injected status (seen by a host
//! reading the NVMe bdev through a second target's NVMe-oF subsystem) until it is
//! removed; disable fails I/O and enable brings it back; I/O passthrough
//! with `bdev_nvme_send_cmd`.

#[path = "../../../crates/event/tests/common/mod.rs"]
mod common;
mod common_tgt;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{ok, rpc};
use common_tgt::{free_port, Tgt};
use rspdk_nvme::{Controller, ControllerOpts, IoQpair, Status, TransportId};
use serde_json::{json, Value};

const BS: u64 = 512;

fn malloc(name: &str) -> Value {
    json!({"method": "bdev_malloc_create", "params": {"name": name, "num_blocks": 2048, "block_size": BS}})
}

fn listener(nqn: &str, port: u16) -> Value {
    json!({"method": "nvmf_subsystem_add_listener", "params": {"nqn": nqn, "listen_address":
        {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}})
}

fn subsystem(sock: &Path, nqn: &str, bdev: &str, port: u16) {
    ok(
        sock,
        "nvmf_create_subsystem",
        Some(json!({"nqn": nqn, "allow_any_host": true})),
    );
    ok(
        sock,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": nqn, "namespace": {"bdev_name": bdev}})),
    );
    let l = listener(nqn, port);
    ok(
        sock,
        "nvmf_subsystem_add_listener",
        Some(l["params"].clone()),
    );
}

/// A target with malloc bdevs `M1`..`M3` and the TCP transport.
fn start() -> Tgt {
    let port = free_port();
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [malloc("M1"), malloc("M2"), malloc("M3")]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}
        ]}
    ]});
    Tgt::spawn(tempfile::tempdir().unwrap(), port, &cfg, &["-m", "0x1"])
}

/// Prints the target's stderr when the test fails.
struct DumpOnPanic<'a>(&'a Tgt);

impl Drop for DumpOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- rspdk_tgt stderr ---\n{}", self.0.stderr());
        }
    }
}

/// subnqn -> controller name, of the attached NVMe controllers.
fn controllers(sock: &Path) -> Vec<(String, String)> {
    ok(sock, "bdev_nvme_get_controllers", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["ctrlrs"][0]["trid"]["subnqn"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                c["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Polls `cond` until it holds (20 s at most), failing with `what`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn bdev_exists(sock: &Path, name: &str) -> bool {
    rpc(sock, "bdev_get_bdevs", Some(json!({"name": name}))).is_ok()
}

#[test]
fn discovery_attaches_the_subsystems_and_follows_the_log_page() {
    // The subsystems and the discovery service are on target `a`; `t` runs
    // the discovery client. (One single-reactor process doing both can
    // stall: a known limitation, like an NVMe/TCP channel to itself.)
    let a = start();
    let _dump_a = DumpOnPanic(&a);
    let t = start();
    let _dump = DumpOnPanic(&t);
    let s = &t.sock;
    let (c1, c2, c3) = (
        "nqn.2016-06.io.spdk:disc1",
        "nqn.2016-06.io.spdk:disc2",
        "nqn.2016-06.io.spdk:disc3",
    );
    subsystem(&a.sock, c1, "M1", a.port);
    subsystem(&a.sock, c2, "M2", a.port);
    assert_eq!(
        ok(
            s,
            "bdev_nvme_start_discovery",
            Some(
                json!({"name": "nvme", "trtype": "tcp", "traddr": "127.0.0.1",
                "adrfam": "ipv4", "trsvcid": a.port.to_string(), "wait_for_attach": true})
            ),
        ),
        json!(true)
    );
    // wait_for_attach: both are attached when the answer comes.
    let mut got = controllers(s);
    got.sort();
    assert_eq!(
        got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
        [c1, c2],
        "{got:?}"
    );
    for (_, name) in &got {
        assert!(name.starts_with("nvme"), "{name}");
        assert!(bdev_exists(s, &format!("{name}n1")), "{name}n1");
    }
    let info = ok(s, "bdev_nvme_get_discovery_info", None);
    assert_eq!(info[0]["name"], "nvme", "{info}");
    assert_eq!(info[0]["trid"]["trsvcid"], a.port.to_string(), "{info}");
    assert_eq!(
        info[0]["trid"]["subnqn"], "nqn.2014-08.org.nvmexpress.discovery",
        "{info}"
    );
    // The same service twice is refused.
    let e = rpc(
        s,
        "bdev_nvme_start_discovery",
        Some(
            json!({"name": "nvme", "trtype": "tcp", "traddr": "127.0.0.1",
            "trsvcid": a.port.to_string()}),
        ),
    )
    .unwrap_err();
    assert!(e.message.contains("already runs"), "{}", e.message);
    // save_config restarts the service rather than attaching its
    // controllers one by one.
    let cfg = ok(s, "framework_get_config", Some(json!({"name": "bdev"}))).to_string();
    assert!(cfg.contains("bdev_nvme_start_discovery"), "{cfg}");
    assert!(!cfg.contains("bdev_nvme_attach_controller"), "{cfg}");

    // A subsystem leaves the log page: its controller and bdev go.
    let gone = got.iter().find(|g| g.0 == c2).unwrap().1.clone();
    ok(&a.sock, "nvmf_delete_subsystem", Some(json!({"nqn": c2})));
    wait_until("the removed subsystem's controller to be detached", || {
        !controllers(s).iter().any(|c| c.0 == c2)
    });
    assert!(!bdev_exists(s, &format!("{gone}n1")));
    assert!(controllers(s).iter().any(|c| c.0 == c1));
    // A new one appears: attached under the next name.
    subsystem(&a.sock, c3, "M3", a.port);
    wait_until("the new subsystem to be attached", || {
        controllers(s).iter().any(|c| c.0 == c3)
    });
    let new = controllers(s).into_iter().find(|c| c.0 == c3).unwrap().1;
    assert!(!got.iter().any(|g| g.1 == new), "{new} reuses a name");
    wait_until("the new controller's bdev", || {
        bdev_exists(s, &format!("{new}n1"))
    });

    // Stopping the service detaches what it attached.
    ok(s, "bdev_nvme_stop_discovery", Some(json!({"name": "nvme"})));
    assert_eq!(controllers(s), vec![]);
    assert_eq!(ok(s, "bdev_nvme_get_discovery_info", None), json!([]));
    let e = rpc(s, "bdev_nvme_stop_discovery", Some(json!({"name": "nvme"}))).unwrap_err();
    assert!(e.message.contains("no discovery service"), "{}", e.message);
}

/// Reads block 0 through `qp` and returns the completion status.
fn read_status(qp: &mut IoQpair, buf: &mut [u8]) -> Status {
    // SAFETY: `buf` outlives the wait for the completion below.
    unsafe { qp.read(1, buf.as_mut_ptr(), 0, 1, 7) }.unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let mut st = None;
    while st.is_none() {
        qp.process_completions(0, |c| st = Some(c.status)).unwrap();
        assert!(Instant::now() < end, "no completion");
    }
    st.unwrap()
}

#[test]
fn error_injection_disable_and_enable_seen_through_a_second_subsystem() {
    // Two targets: `a` exports M1 as `base`; `b` attaches it as Nvme0
    // and exports Nvme0n1 as `front` (a channel of Nvme0n1 connects to
    // `a` while `b`'s reactor waits, so they are separate processes).
    let a = start();
    let _dump_a = DumpOnPanic(&a);
    let t = start();
    let _dump = DumpOnPanic(&t);
    let s = &t.sock;
    let base = "nqn.2016-06.io.spdk:base";
    let front = "nqn.2016-06.io.spdk:front";
    subsystem(&a.sock, base, "M1", a.port);
    let port = a.port.to_string();
    assert_eq!(
        ok(
            s,
            "bdev_nvme_attach_controller",
            Some(
                json!({"name": "Nvme0", "trtype": "tcp", "traddr": "127.0.0.1",
                "adrfam": "ipv4", "trsvcid": port, "subnqn": base})
            ),
        ),
        json!(["Nvme0n1"])
    );
    // Nvme0n1 exported again: a host reads it through `front`.
    subsystem(s, front, "Nvme0n1", t.port);
    let port = t.port.to_string();
    let trid: TransportId =
        format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{front}")
            .parse()
            .unwrap();
    let host = Controller::connect(
        &trid,
        &ControllerOpts {
            keep_alive_timeout_ms: 0,
            admin_timeout_ms: 5000,
            ..Default::default()
        },
    )
    .unwrap();
    let mut qp = host.alloc_io_qpair(None).unwrap();
    let mut buf = vec![0u8; BS as usize];
    assert_eq!(read_status(&mut qp, &mut buf), Status::SUCCESS);

    // Reads (opcode 02h) fail with Unrecovered Read Error (SCT 2, SC 81h).
    ok(
        s,
        "bdev_nvme_add_error_injection",
        Some(
            json!({"name": "Nvme0", "cmd_type": "io", "opc": 2, "err_count": 1000,
            "sct": 2, "sc": 0x81}),
        ),
    );
    let st = read_status(&mut qp, &mut buf);
    assert_eq!((st.sct(), st.sc()), (2, 0x81), "{st}");
    // Writes are untouched.
    // SAFETY: `buf` outlives the wait below.
    unsafe { qp.write(1, buf.as_ptr(), 1, 1, 8) }.unwrap();
    let mut w = None;
    let end = Instant::now() + Duration::from_secs(10);
    while w.is_none() {
        qp.process_completions(0, |c| w = Some(c.status)).unwrap();
        assert!(Instant::now() < end);
    }
    assert_eq!(w, Some(Status::SUCCESS));
    // Removed: reads succeed again.
    ok(
        s,
        "bdev_nvme_remove_error_injection",
        Some(json!({"name": "Nvme0", "cmd_type": "io", "opc": 2})),
    );
    assert_eq!(read_status(&mut qp, &mut buf), Status::SUCCESS);
    // do_not_submit with a count of one: the next read completes with the
    // status after the timeout, the one after it is served.
    ok(
        s,
        "bdev_nvme_add_error_injection",
        Some(
            json!({"name": "Nvme0", "cmd_type": "io", "opc": 2, "do_not_submit": true,
            "timeout_in_us": 20000, "sct": 0, "sc": 6}),
        ),
    );
    let st = read_status(&mut qp, &mut buf);
    assert_eq!((st.sct(), st.sc()), (0, 6), "{st}");
    assert_eq!(read_status(&mut qp, &mut buf), Status::SUCCESS);

    // Disabled: I/O fails; enabled: it is served again.
    ok(
        s,
        "bdev_nvme_disable_controller",
        Some(json!({"name": "Nvme0"})),
    );
    let c = ok(
        s,
        "bdev_nvme_get_controllers",
        Some(json!({"name": "Nvme0"})),
    );
    assert_eq!(c[0]["ctrlrs"][0]["state"], "disabled", "{c}");
    assert!(read_status(&mut qp, &mut buf).is_error());
    ok(
        s,
        "bdev_nvme_enable_controller",
        Some(json!({"name": "Nvme0"})),
    );
    let c = ok(
        s,
        "bdev_nvme_get_controllers",
        Some(json!({"name": "Nvme0"})),
    );
    assert_eq!(c[0]["ctrlrs"][0]["state"], "enabled", "{c}");
    assert_eq!(read_status(&mut qp, &mut buf), Status::SUCCESS);

    // The channel that served the reads is an I/O path with counters.
    let paths = ok(
        s,
        "bdev_nvme_get_io_paths",
        Some(json!({"name": "Nvme0n1"})),
    );
    let p = &paths["poll_groups"][0]["io_paths"][0];
    assert_eq!(p["bdev_name"], "Nvme0n1", "{paths}");
    assert_eq!(p["transport"]["subnqn"], base, "{paths}");
    assert_eq!(p["connected"], true, "{paths}");
    let stats = ok(s, "bdev_nvme_get_transport_statistics", None);
    let tr = &stats["poll_groups"][0]["transports"][0];
    assert_eq!(tr["trname"], "TCP", "{stats}");
    assert!(tr["submitted_requests"].as_u64().unwrap() >= 4, "{stats}");

    // I/O passthrough: Read (02h) of block 0, one block, as cmdbuf.
    let mut sqe = [0u8; 64];
    sqe[0] = 2;
    sqe[4] = 1; // NSID 1
    let b64 = base64::engine::general_purpose::URL_SAFE;
    let r = ok(
        s,
        "bdev_nvme_send_cmd",
        Some(
            json!({"name": "Nvme0", "cmd_type": "io", "data_direction": "c2h",
            "cmdbuf": b64.encode(sqe), "data_len": BS, "timeout_ms": 5000}),
        ),
    );
    let data = b64.decode(r["data"].as_str().unwrap()).unwrap();
    assert_eq!(data.len(), BS as usize);
    assert_eq!(data, buf, "passthrough read = the host's read");
    let cpl = b64.decode(r["cpl"].as_str().unwrap()).unwrap();
    assert_eq!(u32::from_le_bytes(cpl[12..16].try_into().unwrap()) >> 17, 0);
    drop(qp);
    let _ = host.detach();
}

/// Admin commands (`bdev_nvme_send_cmd`, health info) to a controller that
/// a single-reactor target attached to its own NVMe-oF subsystem never
/// deadlock. They run on a helper thread holding the admin queue; the
/// module's admin poller on the reactor used to wait for that lock, so the
/// reactor that had to answer the command was stuck until the 20 s command
/// timeout (seen in CI). 400 commands, each racing the 10 ms admin poller
/// (without the fix this failed within 400).
#[test]
fn admin_commands_to_the_targets_own_subsystem_do_not_deadlock() {
    let t = start();
    let _dump = DumpOnPanic(&t);
    let s = &t.sock;
    let nqn = "nqn.2016-06.io.spdk:self";
    subsystem(s, nqn, "M1", t.port);
    ok(
        s,
        "bdev_nvme_attach_controller",
        Some(
            json!({"name": "Self0", "trtype": "tcp", "traddr": "127.0.0.1",
            "adrfam": "ipv4", "trsvcid": t.port.to_string(), "subnqn": nqn}),
        ),
    );
    // Identify Controller (opcode 06h, CNS 1).
    let mut sqe = [0u8; 64];
    sqe[0] = 0x06;
    sqe[40] = 1;
    let cmdbuf = base64::engine::general_purpose::STANDARD.encode(sqe);
    for i in 0..400 {
        let started = Instant::now();
        let r = ok(
            s,
            "bdev_nvme_send_cmd",
            Some(
                json!({"name": "Self0", "cmd_type": "admin", "data_direction": "c2h",
                "cmdbuf": cmdbuf, "data_len": 4096}),
            ),
        );
        assert!(r["data"].is_string(), "command {i}: {r}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "command {i} took {:?}",
            started.elapsed()
        );
        if i % 10 == 0 {
            ok(
                s,
                "bdev_nvme_get_controller_health_info",
                Some(json!({"name": "Self0"})),
            );
        }
    }
}
