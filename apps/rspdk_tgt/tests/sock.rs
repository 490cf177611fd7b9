//! `sock_impl_set_options` takes effect: the NVMe/TCP target's and the
//! iSCSI target's accepted sockets, and the NVMe/TCP host's sockets, get
//! the receive and send buffer sizes it sets (read back from the kernel
//! with `ss -tm`), and save_config writes them first, as SPDK does.

#[path = "../../../crates/event/tests/common/mod.rs"]
mod common;
mod common_tgt;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::ok;
use common_tgt::{free_port, Tgt};
use serde_json::json;

const NQN: &str = "nqn.2016-06.io.spdk:sock1";
// Linux doubles what SO_RCVBUF/SO_SNDBUF ask for (its bookkeeping share),
// so the kernel reports twice these; neither is a default of any kind.
const RCV: u64 = 200_000;
const SND: u64 = 300_000;

/// `(rb, tb)` of the established TCP socket whose local port is `sport`
/// and peer port `dport` (either may be 0: any), from `ss -tmn`.
fn skmem(sport: u16, dport: u16) -> Option<(u64, u64)> {
    let out = Command::new("ss")
        .args(["-tmnH", "state", "established"])
        .output()
        .expect("ss is missing: install iproute2");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    // ss prints the skmem line after the address line (same line with -H
    // on newer versions); search the text after the matching addresses.
    for (i, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let port = |s: &str| s.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        let (lp, pp) = (port(f[2]), port(f[3]));
        if (sport == 0 || lp == Some(sport)) && (dport == 0 || pp == Some(dport)) {
            let rest = format!("{l} {}", lines.get(i + 1).copied().unwrap_or(""));
            let field = |k: &str| {
                rest.split([',', '(', ')', ' '])
                    .find_map(|t| t.strip_prefix(k).and_then(|v| v.parse::<u64>().ok()))
            };
            return Some((field("rb")?, field("tb")?));
        }
    }
    None
}

/// Waits until the socket `sport -> dport` shows `(rb, tb)` for which
/// `want` holds (the kernel has the connection before the target's accept
/// and setsockopt reach it); returns the last values seen.
fn wait_skmem(sport: u16, dport: u16, want: impl Fn(u64, u64) -> bool) -> (u64, u64) {
    let end = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    loop {
        if let Some((rb, tb)) = skmem(sport, dport) {
            last = Some((rb, tb));
            if want(rb, tb) {
                return (rb, tb);
            }
        }
        if Instant::now() >= end {
            return last
                .unwrap_or_else(|| panic!("no established socket {sport} -> {dport} in ss -tm"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sock_options_reach_accepted_and_connected_sockets() {
    let port = free_port();
    let portal = free_port();
    let cfg = json!({"subsystems": [
        {"subsystem": "sock", "config": [
            {"method": "sock_impl_set_options", "params": {"impl_name": "posix",
                "recv_buf_size": RCV, "send_buf_size": SND, "enable_quickack": true}}
        ]},
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 2048, "block_size": 512}}
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address":
                {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}
        ]},
        {"subsystem": "iscsi", "config": [
            {"method": "iscsi_create_portal_group", "params": {"tag": 1,
                "portals": [{"host": "127.0.0.1", "port": portal.to_string()}]}}
        ]}
    ]});
    let t = Tgt::spawn(tempfile::tempdir().unwrap(), port, &cfg, &["-m", "0x1"]);

    let got = ok(
        &t.sock,
        "sock_impl_get_options",
        Some(json!({"impl_name": "posix"})),
    );
    assert_eq!(got["recv_buf_size"], RCV, "{got}");
    assert_eq!(got["enable_quickack"], true, "{got}");

    // The NVMe/TCP target's accepted socket (local port = the listener).
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let cport = c.local_addr().unwrap().port();
    let (rb, tb) = wait_skmem(port, cport, |r, t| (r, t) == (2 * RCV, 2 * SND));
    assert_eq!((rb, tb), (2 * RCV, 2 * SND), "nvmf target socket");
    // The plain client socket of this test kept the kernel's defaults,
    // so the check above can tell.
    let (crb, _) = wait_skmem(cport, port, |_, _| true);
    assert_ne!(crb, 2 * RCV);
    drop(c);

    // The iSCSI target's accepted socket.
    let c = TcpStream::connect(("127.0.0.1", portal)).unwrap();
    let cport = c.local_addr().unwrap().port();
    assert_eq!(
        wait_skmem(portal, cport, |r, t| (r, t) == (2 * RCV, 2 * SND)),
        (2 * RCV, 2 * SND),
        "iscsi target socket"
    );
    drop(c);

    // Changed at run time: new connections get the new sizes.
    ok(
        &t.sock,
        "sock_impl_set_options",
        Some(json!({"impl_name": "posix", "recv_buf_size": 2 * RCV})),
    );
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let cport = c.local_addr().unwrap().port();
    assert_eq!(
        wait_skmem(port, cport, |r, _| r == 4 * RCV).0,
        4 * RCV,
        "after set_options"
    );
    drop(c);

    // The NVMe/TCP host applies the options of its own process.
    rspdk_sock::set_impl_opts(&rspdk_sock::SetImplOpts {
        impl_name: "posix".into(),
        recv_buf_size: Some(3 * RCV as u32),
        ..Default::default()
    })
    .unwrap();
    let trid = format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}")
        .parse()
        .unwrap();
    let ctrlr = rspdk_nvme::Controller::connect(
        &trid,
        &rspdk_nvme::ControllerOpts {
            keep_alive_timeout_ms: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let (hrb, _) = wait_skmem(0, port, |r, _| r == 6 * RCV);
    assert_eq!(hrb, 6 * RCV, "nvme/tcp host socket");
    drop(ctrlr);

    // save_config: the sock subsystem, with the options set.
    let cfg = ok(
        &t.sock,
        "framework_get_config",
        Some(json!({"name": "sock"})),
    );
    assert_eq!(cfg[0]["method"], "sock_set_default_impl", "{cfg}");
    assert_eq!(cfg[1]["params"]["recv_buf_size"], 2 * RCV, "{cfg}");
    let subs = ok(&t.sock, "framework_get_subsystems", None);
    assert_eq!(subs[0]["subsystem"], "sock", "sock first, as SPDK: {subs}");

    // What rspdk cannot do is refused by name.
    for (p, v) in [
        ("enable_placement_id", json!(1)),
        ("enable_zerocopy_send_client", json!(true)),
        ("enable_ktls", json!(true)),
        ("tls_version", json!(13)),
    ] {
        let e = common::rpc(
            &t.sock,
            "sock_impl_set_options",
            Some(json!({"impl_name": "posix", p: v})),
        )
        .unwrap_err();
        assert!(e.message.contains(p), "{p}: {}", e.message);
    }
    let e = common::rpc(
        &t.sock,
        "sock_set_default_impl",
        Some(json!({"impl_name": "uring"})),
    )
    .unwrap_err();
    assert!(e.message.contains("uring"), "{}", e.message);
}
