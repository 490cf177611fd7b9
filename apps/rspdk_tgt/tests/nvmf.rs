//! The NVMe/TCP target in `rspdk_tgt`, driven by SPDK's RPCs and a small
//! NVMe/TCP host (`common_nvmf`): discovery, admin and I/O queues, identify,
//! in-capsule and R2T writes read back and compared, digests on and off,
//! the SUCCESS flag, bad input closing only the offending connection, data
//! digest errors failing only their command, and the RPC views and
//! save_config.

#[path = "../../../crates/event/tests/common/mod.rs"]
mod common;
mod common_nvmf;
mod common_tgt;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::{ok, rpc, wait_started};
use common_nvmf::{admin_queue, io_queue, status, Host, Rx, HOSTNQN};
use common_tgt::{free_port, Tgt};
use serde_json::{json, Value};

const TGT: &str = env!("CARGO_BIN_EXE_rspdk_tgt");
const NQN: &str = "nqn.2016-06.io.spdk:test1";
const BS: usize = 512;

/// `rspdk_tgt` with a 16 MiB malloc bdev exported as `NQN` on a free port.
fn start(extra: &[&str]) -> Tgt {
    start_transport(
        json!({"trtype": "TCP", "in_capsule_data_size": 4096, "max_io_size": 131072,
            // Sub-second keep-alive timeouts for the keep-alive tests.
            "kas": 1, "min_kato": 100}),
        extra,
    )
}

/// [`start`] with `transport` as nvmf_create_transport's params.
fn start_transport(transport: Value, extra: &[&str]) -> Tgt {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 32768, "block_size": BS}}
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": transport},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true,
                "serial_number": "SPDK001", "model_number": "rspdk test"}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address":
                {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}
        ]}
    ]});
    Tgt::spawn(dir, port, &cfg, extra)
}

fn addr(t: &Tgt) -> SocketAddr {
    format!("127.0.0.1:{}", t.port).parse().unwrap()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

#[test]
fn discovery_lists_the_listener() {
    let t = start(&[]);
    let mut h = admin_queue(addr(&t), rspdk_nvmf::DISCOVERY, false, false);
    let qp = ok(
        &t.sock,
        "nvmf_subsystem_get_qpairs",
        Some(json!({"nqn": "discovery"})),
    );
    assert_eq!(
        qp[0]["qid"],
        json!(0),
        "rpc.py's 'discovery' shortcut: {qp}"
    );
    let (c, id) = h.identify(1, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(id[111], 2, "CNTRLTYPE: discovery controller");
    let (c, hdr) = h.get_log(0x70, 1024, 0);
    assert_eq!(status(&c), (0, 0));
    let numrec = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
    assert_eq!(numrec, 1);
    let (c, log) = h.get_log(0x70, 2048, 0);
    assert_eq!(status(&c), (0, 0));
    let e = &log[1024..2048];
    assert_eq!((e[0], e[1], e[2]), (3, 1, 2), "TCP, IPv4, NVM subsystem");
    let s = |r: std::ops::Range<usize>| {
        String::from_utf8_lossy(&e[r])
            .trim_end_matches('\0')
            .to_string()
    };
    assert_eq!(s(32..64), t.port.to_string());
    assert_eq!(s(256..512), NQN);
    assert_eq!(s(512..768), "127.0.0.1");
    // A referral to another discovery service joins the log page.
    ok(
        &t.sock,
        "nvmf_discovery_add_referral",
        Some(
            json!({"address": {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.2", "trsvcid": "4430"}}),
        ),
    );
    let (c, log) = h.get_log(0x70, 3072, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(u64::from_le_bytes(log[8..16].try_into().unwrap()), 2);
    let r = &log[2048..3072];
    assert_eq!(
        (r[0], r[1], r[2]),
        (3, 1, 1),
        "TCP, IPv4, a discovery service"
    );
    let rs = |x: std::ops::Range<usize>| {
        String::from_utf8_lossy(&r[x])
            .trim_end_matches('\0')
            .to_string()
    };
    assert_eq!(rs(32..64), "4430");
    assert_eq!(rs(256..512), rspdk_nvmf::DISCOVERY);
    assert_eq!(rs(512..768), "127.0.0.2");
    h.disconnect();
}

#[test]
fn identify_write_read_compare_without_digests() {
    io_round(false, false, false);
}

#[test]
fn identify_write_read_compare_with_digests_and_success_flag() {
    io_round(true, true, true);
}

fn io_round(hd: bool, dd: bool, sqflow_off: bool) {
    let t = start(&["-m", "0x3"]);
    let mut a = admin_queue(addr(&t), NQN, hd, dd);
    let (c, id) = a.identify(1, 0);
    assert_eq!(status(&c), (0, 0));
    let txt = |r: std::ops::Range<usize>| {
        String::from_utf8_lossy(&id[r])
            .trim_end_matches([' ', '\0'])
            .to_string()
    };
    assert_eq!(txt(4..24), "SPDK001");
    assert_eq!(txt(24..64), "rspdk test");
    assert_eq!(txt(768..1024), NQN);
    assert_eq!(id[111], 1, "I/O controller");
    let ioccsz = u32::from_le_bytes(id[1792..1796].try_into().unwrap());
    assert_eq!(ioccsz, (64 + 4096) / 16);
    let cntlid = u16::from_le_bytes([id[78], id[79]]);
    assert_eq!(cntlid, a.cntlid);
    // Number of queues.
    let mut sqe = rspdk_nvme::spec::Sqe::new(0x09, 0);
    sqe.dw[10] = 0x07;
    sqe.dw[11] = 3 | (3 << 16);
    let (c, _) = a.cmd(sqe, &[], false, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(c.dw[0], 3 | (3 << 16));
    // Namespaces.
    let (c, list) = a.identify(2, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(&list[0..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
    let (c, ns) = a.identify(0, 1);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(u64::from_le_bytes(ns[0..8].try_into().unwrap()), 32768);
    assert_eq!(ns[130], 9, "LBADS: 512-byte blocks");
    let (c, desc) = a.identify(3, 1);
    assert_eq!(status(&c), (0, 0));
    assert!(desc.windows(2).any(|w| w == [3, 16]), "a UUID descriptor");
    let (c, _) = a.identify(0, 7);
    assert_eq!(status(&c), (0, 0), "inactive NSID: zeroes");
    let (c, _) = a.get_log(0x02, 512, 0);
    assert_eq!(status(&c), (0, 0));

    // Two I/O queues, on (probably) different poll groups.
    let mut q1 = io_queue(addr(&t), NQN, a.cntlid, 1, hd, dd, sqflow_off);
    let mut q2 = io_queue(addr(&t), NQN, a.cntlid, 2, hd, dd, false);
    // In-capsule write (4 KiB), read back on the other queue.
    let d1 = pattern(1, 4096);
    assert_eq!(status(&q1.write(1, 0, &d1, BS, true)), (0, 0));
    let (c, r) = q2.read(1, 0, 8, BS);
    assert_eq!(status(&c), (0, 0));
    assert!(r == d1, "in-capsule write read back");
    // R2T writes of several sizes up to the max I/O size.
    for (i, len) in [512usize, 4096, 8192, 65536, 131072]
        .into_iter()
        .enumerate()
    {
        let d = pattern(10 + i as u8, len);
        let lba = 1000 + i as u64 * 512;
        assert_eq!(
            status(&q1.write(1, lba, &d, BS, false)),
            (0, 0),
            "R2T write of {len}"
        );
        let (c, r) = q1.read(1, lba, (len / BS) as u32, BS);
        assert_eq!(status(&c), (0, 0));
        assert!(r == d, "R2T write of {len} read back");
        assert_eq!(status(&q2.compare(1, lba, &d, BS)), (0, 0), "compare equal");
    }
    let mut other = pattern(1, 4096);
    other[100] ^= 0xff;
    assert_eq!(
        status(&q2.compare(1, 0, &other, BS)),
        (2, 0x85),
        "compare failure"
    );
    // Write zeroes, then read zeroes.
    let mut sqe = rspdk_nvme::spec::Sqe::new(0x08, 1);
    sqe.set_slba(0);
    sqe.dw[12] = 7;
    let (c, _) = q1.cmd(sqe, &[], false, 0);
    assert_eq!(status(&c), (0, 0));
    let (_, r) = q1.read(1, 0, 8, BS);
    assert!(r.iter().all(|&b| b == 0), "write zeroes");
    // Flush, DSM deallocate.
    let (c, _) = q1.cmd(rspdk_nvme::spec::Sqe::new(0x00, 1), &[], false, 0);
    assert_eq!(status(&c), (0, 0));
    let mut range = vec![0u8; 16];
    range[4..8].copy_from_slice(&8u32.to_le_bytes());
    range[8..16].copy_from_slice(&1000u64.to_le_bytes());
    let mut sqe = rspdk_nvme::spec::Sqe::new(0x09, 1);
    sqe.dw[11] = 4;
    let (c, _) = q1.cmd(sqe, &range, true, 0);
    assert_eq!(status(&c), (0, 0), "DSM deallocate");
    // Out of range, bad namespace, too large.
    let (c, _) = q1.read(1, 32767, 2, BS);
    assert_eq!(status(&c), (0, 0x80), "LBA out of range");
    let (c, _) = q1.read(9, 0, 1, BS);
    assert_eq!(status(&c), (0, 0x0b), "invalid namespace");
    let (c, _) = q1.read(1, 0, 512, BS);
    assert_eq!(status(&c), (0, 0x0f), "transfer above max_io_size");

    // RPC views.
    let ctrlrs = ok(
        &t.sock,
        "nvmf_subsystem_get_controllers",
        Some(json!({"nqn": NQN})),
    );
    assert_eq!(ctrlrs[0]["cntlid"], json!(a.cntlid));
    assert_eq!(ctrlrs[0]["hostnqn"], json!(HOSTNQN));
    assert_eq!(ctrlrs[0]["num_io_qpairs"], json!(2));
    let qp = ok(
        &t.sock,
        "nvmf_subsystem_get_qpairs",
        Some(json!({"nqn": NQN})),
    );
    assert_eq!(qp.as_array().unwrap().len(), 3);
    let st = ok(&t.sock, "nvmf_get_stats", None);
    let groups = st["poll_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "one poll group per core: {st}");
    let io: u64 = groups
        .iter()
        .map(|g| g["current_io_qpairs"].as_u64().unwrap())
        .sum();
    assert_eq!(io, 2);

    // Namespace change: AER completes, changed NS log lists NSID 2.
    let mut aer = rspdk_nvme::spec::Sqe::new(0x0c, 0);
    aer.set_cid(900);
    a.send(&rspdk_nvmf::pdu::Pdu::CapsuleCmd {
        sqe: aer,
        data: &[],
    });
    ok(
        &t.sock,
        "bdev_malloc_create",
        Some(json!({"name": "Malloc1", "num_blocks": 2048, "block_size": 4096})),
    );
    let nsid = ok(
        &t.sock,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc1", "nsid": 2}})),
    );
    assert_eq!(nsid, json!(2));
    match a.recv() {
        Rx::Resp(c) => {
            assert_eq!(c.cid(), 900);
            assert_eq!(c.dw[0], 0x02 | (0x04 << 16), "namespace attribute notice");
        }
        other => panic!("expected the AER completion, got {other:?}"),
    }
    let (c, log) = a.get_log(0x04, 4096, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(&log[0..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
    let d = pattern(7, 8192);
    assert_eq!(status(&q2.write(2, 5, &d, 4096, false)), (0, 0));
    let (c, r) = q1.read(2, 5, 2, 4096);
    assert_eq!(status(&c), (0, 0));
    assert!(r == d, "new namespace serves I/O");

    q1.disconnect();
    q2.disconnect();
    a.disconnect();
    assert!(!t.stderr().contains("panicked"), "{}", t.stderr());
}

#[test]
fn bad_connects_and_bad_pdus_affect_only_their_connection() {
    let t = start(&[]);
    let mut good = admin_queue(addr(&t), NQN, false, false);
    // Unknown subsystem.
    let mut h = Host::connect(addr(&t), false, false);
    let c = h.fabric_connect(0, 32, "nqn.2016-06.io.spdk:nope", HOSTNQN, 0xffff, 0);
    assert_eq!(status(&c), (1, 0x82));
    assert_eq!(c.dw[0], 256 | (1 << 16), "IPO: SUBNQN in the data");
    // Host not allowed.
    ok(
        &t.sock,
        "nvmf_subsystem_allow_any_host",
        Some(json!({"nqn": NQN, "allow_any_host": false})),
    );
    let mut h = Host::connect(addr(&t), false, false);
    let c = h.fabric_connect(0, 32, NQN, HOSTNQN, 0xffff, 0);
    assert_eq!(status(&c), (1, 0x84));
    ok(
        &t.sock,
        "nvmf_subsystem_add_host",
        Some(json!({"nqn": NQN, "host": HOSTNQN})),
    );
    let mut h = Host::connect(addr(&t), false, false);
    assert_eq!(
        status(&h.fabric_connect(0, 32, NQN, HOSTNQN, 0xffff, 0)),
        (0, 0)
    );
    // I/O queue for a controller that does not exist.
    let mut h = Host::connect(addr(&t), false, false);
    assert_eq!(
        status(&h.fabric_connect(1, 32, NQN, HOSTNQN, 999, 0)),
        (1, 0x82)
    );
    // Garbage: a terminate request naming the field, then close.
    let mut h = Host::connect(addr(&t), false, false);
    h.send_raw(&[0x04, 0, 71, 0, 72, 0, 0, 0]);
    match h.try_recv() {
        Some(Rx::Term { fes, fei }) => assert_eq!((fes, fei), (1, 2), "invalid HLEN"),
        other => panic!("expected C2HTermReq, got {other:?}"),
    }
    assert!(h.try_recv().is_none(), "closed after the termination");
    // A header digest mismatch.
    let mut h = Host::connect(addr(&t), true, false);
    let mut raw = Vec::new();
    rspdk_nvmf::pdu::Pdu::CapsuleCmd {
        sqe: rspdk_nvme::spec::Sqe::new(0x7f, 1),
        data: &[],
    }
    .emit(&mut raw, h.dg);
    raw[73] ^= 1;
    h.send_raw(&raw);
    assert!(
        matches!(h.try_recv(), Some(Rx::Term { fes: 3, .. })),
        "header digest error"
    );
    // A PDU before the ICReq.
    let mut s = std::net::TcpStream::connect(addr(&t)).unwrap();
    use std::io::{Read, Write};
    let mut raw = Vec::new();
    rspdk_nvmf::pdu::Pdu::CapsuleCmd {
        sqe: rspdk_nvme::spec::Sqe::new(0x7f, 1),
        data: &[],
    }
    .emit(&mut raw, Default::default());
    s.write_all(&raw).unwrap();
    let mut b = vec![0u8; 256];
    let n = s.read(&mut b).unwrap();
    assert_eq!(b[0], 0x03, "C2HTermReq ({n} bytes)");
    // The good connection still works.
    let (c, _) = good.identify(1, 0);
    assert_eq!(status(&c), (0, 0));
    good.disconnect();
}

#[test]
fn rpcs_and_save_config() {
    let t = start(&[]);
    let s = &t.sock;
    let subs = ok(s, "nvmf_get_subsystems", None);
    assert_eq!(subs[0]["nqn"], json!(rspdk_nvmf::DISCOVERY));
    assert_eq!(subs[0]["subtype"], json!("Discovery"));
    assert_eq!(subs[1]["nqn"], json!(NQN));
    assert_eq!(subs[1]["namespaces"][0]["bdev_name"], json!("Malloc0"));
    assert_eq!(
        subs[1]["listen_addresses"][0]["trsvcid"],
        json!(t.port.to_string())
    );
    assert_eq!(subs[1]["listen_addresses"][0]["adrfam"], json!("IPv4"));
    let tr = ok(s, "nvmf_get_transports", None);
    assert_eq!(tr[0]["trtype"], json!("TCP"));
    assert_eq!(tr[0]["in_capsule_data_size"], json!(4096));
    // Errors name the problem.
    let e = rpc(s, "nvmf_create_subsystem", Some(json!({"nqn": "bogus"}))).unwrap_err();
    assert!(e.message.contains("nqn 'bogus'"), "{}", e.message);
    let e = rpc(s, "nvmf_create_subsystem", Some(json!({"nqn": NQN}))).unwrap_err();
    assert!(e.message.contains("already exists"), "{}", e.message);
    let e = rpc(
        s,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": NQN, "namespace": {"bdev_name": "nope"}})),
    )
    .unwrap_err();
    assert!(e.message.contains("nope"), "{}", e.message);
    let e = rpc(s, "nvmf_create_transport", Some(json!({"trtype": "RDMA"}))).unwrap_err();
    assert!(e.message.contains("RDMA"), "{}", e.message);
    // SPDK's target-wide settings are accepted and saved.
    ok(s, "nvmf_set_crdt", Some(json!({"crdt1": 5})));
    ok(
        s,
        "nvmf_set_config",
        Some(
            json!({"discovery_filter": "match_any", "admin_cmd_passthru": {"identify_ctrlr": false}}),
        ),
    );
    let e = rpc(
        s,
        "nvmf_set_config",
        Some(json!({"discovery_filter": "bogus"})),
    )
    .unwrap_err();
    assert!(e.message.contains("bogus"), "{}", e.message);
    // Create, populate, save, delete.
    let n2 = "nqn.2016-06.io.spdk:cnode2";
    ok(
        s,
        "nvmf_create_subsystem",
        Some(json!({"nqn": n2, "serial_number": "S2", "max_namespaces": 4})),
    );
    ok(
        s,
        "bdev_null_create",
        Some(json!({"name": "Null0", "num_blocks": 1024, "block_size": 512})),
    );
    let nsid = ok(
        s,
        "nvmf_subsystem_add_ns",
        Some(
            json!({"nqn": n2, "namespace": {"bdev_name": "Null0", "uuid": "12345678-1234-4234-8234-123456789abc"}}),
        ),
    );
    assert_eq!(nsid, json!(1));
    ok(
        s,
        "nvmf_subsystem_add_host",
        Some(json!({"nqn": n2, "host": HOSTNQN})),
    );
    let port2 = free_port().to_string();
    let la = json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port2});
    ok(
        s,
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": n2, "listen_address": la})),
    );
    let saved = ok(s, "save_config", None);
    let nvmf = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["subsystem"] == json!("nvmf"))
        .expect("an nvmf section");
    let methods: Vec<&str> = nvmf["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods[..4],
        [
            "nvmf_set_config",
            "nvmf_set_max_subsystems",
            "nvmf_set_crdt",
            "nvmf_create_transport"
        ]
    );
    assert!(methods.contains(&"nvmf_subsystem_add_host"));
    let ns: Vec<&Value> = nvmf["config"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["method"] == json!("nvmf_subsystem_add_ns"))
        .collect();
    assert_eq!(
        ns[1]["params"]["namespace"]["uuid"],
        json!("12345678-1234-4234-8234-123456789abc")
    );
    // The new listener serves discovery and its subsystem.
    let a2: SocketAddr = format!("127.0.0.1:{port2}").parse().unwrap();
    let mut h = admin_queue(a2, n2, false, false);
    let (c, id) = h.identify(1, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(
        u32::from_le_bytes(id[516..520].try_into().unwrap()),
        4,
        "NN = max_namespaces"
    );
    // Delete closes its controllers.
    ok(
        s,
        "nvmf_subsystem_remove_ns",
        Some(json!({"nqn": n2, "nsid": 1})),
    );
    ok(
        s,
        "nvmf_subsystem_remove_listener",
        Some(json!({"nqn": n2, "listen_address": la})),
    );
    ok(s, "nvmf_delete_subsystem", Some(json!({"nqn": n2})));
    let mut closed = false;
    for _ in 0..100 {
        if h.try_recv().is_none() {
            closed = true;
            break;
        }
    }
    assert!(closed, "the deleted subsystem's controller is disconnected");
    assert!(std::net::TcpStream::connect(a2).is_err(), "listener closed");
    assert_eq!(
        ok(s, "nvmf_get_subsystems", None).as_array().unwrap().len(),
        2
    );
}

#[test]
fn shutdown_with_connected_hosts_is_clean_in_both_modes() {
    for mode in [&["-m", "0x3"][..], &["--interrupt-mode", "-m", "0x3"][..]] {
        let mut t = start(mode);
        let mut a = admin_queue(addr(&t), NQN, false, false);
        let mut q = io_queue(addr(&t), NQN, a.cntlid, 1, false, false, false);
        let d = pattern(3, 8192);
        assert_eq!(status(&q.write(1, 64, &d, BS, false)), (0, 0));
        let (c, r) = q.read(1, 64, 16, BS);
        assert_eq!(status(&c), (0, 0));
        assert!(r == d, "{mode:?}");
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(t.child.id() as i32, libc::SIGTERM) }, 0);
        let t0 = std::time::Instant::now();
        let st = loop {
            if let Some(s) = t.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed().as_secs() < 10,
                "rspdk_tgt did not exit with hosts connected ({mode:?})"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(st.success(), "{mode:?}: {st:?}\n{}", t.stderr());
        assert!(
            t0.elapsed().as_secs() < 4,
            "exit took {:?} ({mode:?})\n{}",
            t0.elapsed(),
            t.stderr()
        );
        assert!(!t.stderr().contains("panicked"), "{}", t.stderr());
        assert!(
            q.try_recv().is_none() && a.try_recv().is_none(),
            "connections closed"
        );
    }
}

#[test]
fn many_queues_from_many_threads() {
    let t = start(&["-m", "0x3"]);
    let a = admin_queue(addr(&t), NQN, false, false);
    let addr = addr(&t);
    let cntlid = a.cntlid;
    let workers: Vec<_> = (1..=8u16)
        .map(|qid| {
            std::thread::spawn(move || {
                let mut q = io_queue(
                    addr,
                    NQN,
                    cntlid,
                    qid,
                    qid % 2 == 0,
                    qid % 3 == 0,
                    qid % 4 == 0,
                );
                for i in 0..50u64 {
                    let len = [512usize, 4096, 16384, 131072][(i % 4) as usize];
                    let d = pattern(qid as u8 ^ i as u8, len);
                    let lba = qid as u64 * 2048 + (i % 4) * 256;
                    let in_capsule = len <= 4096 && i % 2 == 0;
                    assert_eq!(status(&q.write(1, lba, &d, BS, in_capsule)), (0, 0));
                    let (c, r) = q.read(1, lba, (len / BS) as u32, BS);
                    assert_eq!(status(&c), (0, 0));
                    assert!(r == d, "queue {qid} op {i}");
                }
                q.disconnect();
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let st = ok(&t.sock, "nvmf_get_stats", None);
    let done: u64 = st["poll_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["completed_nvme_io"].as_u64().unwrap())
        .sum();
    assert!(done >= 8 * 100, "{st}");
    drop(a);
}

/// SPDK's transport options act: `kas` and `min_kato` shape the keep-alive
/// timeout a host gets (Identify KAS, Get Features KATO), `masked_oncs`
/// hides Compare from Identify and refuses the command, `masked_fuses`
/// hides Compare and Write.
#[test]
fn transport_keep_alive_and_masked_commands() {
    let t = start_transport(
        json!({"trtype": "TCP", "masked_oncs": ["compare"], "masked_fuses": ["compare_and_write"]}),
        &[],
    );
    let mut a = Host::connect(addr(&t), false, false);
    assert_eq!(
        status(&a.fabric_connect(0, 32, NQN, HOSTNQN, 0xffff, 500)),
        (0, 0)
    );
    a.enable();
    let (c, id) = a.identify(1, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(
        u16::from_le_bytes([id[320], id[321]]),
        100,
        "KAS: SPDK's default"
    );
    let oncs = u16::from_le_bytes([id[520], id[521]]);
    assert_eq!(oncs & 1, 0, "Compare masked: ONCS {oncs:#x}");
    assert_ne!(
        oncs & (1 << 3),
        0,
        "Write Zeroes still there: ONCS {oncs:#x}"
    );
    assert_eq!(u16::from_le_bytes([id[522], id[523]]), 0, "FUSES masked");
    // KATO 500 ms asked: raised to min_kato (10 s, SPDK's default).
    let mut sqe = rspdk_nvme::spec::Sqe::new(0x0a, 0);
    sqe.dw[10] = 0x0f;
    let (c, _) = a.cmd(sqe, &[], false, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(c.dw[0], 10_000, "KATO after min_kato");
    let mut q = io_queue(addr(&t), NQN, a.cntlid, 1, false, false, false);
    let mut sqe = rspdk_nvme::spec::Sqe::new(0x05, 1);
    sqe.dw[12] = 0;
    let (c, _) = q.cmd(sqe, &[0u8; BS], true, 0);
    assert_eq!(status(&c), (0, 0x01), "Compare: Invalid Command Opcode");
    let mut sqe = rspdk_nvme::spec::Sqe::new(0x01, 1);
    sqe.dw[12] = 0;
    let (c, _) = q.cmd(sqe, &[7u8; BS], true, 0);
    assert_eq!(status(&c), (0, 0), "Write still works");
}

#[test]
fn keep_alive_timeout_drops_a_silent_host() {
    let t = start(&[]);
    let mut a = Host::connect(addr(&t), false, false);
    assert_eq!(
        status(&a.fabric_connect(0, 32, NQN, HOSTNQN, 0xffff, 500)),
        (0, 0)
    );
    a.enable();
    let cntlid = a.cntlid;
    let mut q = io_queue(addr(&t), NQN, cntlid, 1, false, false, false);
    // Keep alives keep it up past the timeout...
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (c, _) = a.cmd(rspdk_nvme::spec::Sqe::new(0x18, 0), &[], false, 0);
        assert_eq!(status(&c), (0, 0));
    }
    // ...silence ends the controller and its I/O queue.
    let t0 = std::time::Instant::now();
    assert!(a.try_recv().is_none(), "admin queue closed");
    assert!(
        q.try_recv().is_none(),
        "I/O queue closed with its controller"
    );
    assert!(t0.elapsed().as_millis() >= 500, "not before KATO");
    let c = ok(
        &t.sock,
        "nvmf_subsystem_get_controllers",
        Some(json!({"nqn": NQN})),
    );
    assert_eq!(c, json!([]));
}

#[test]
fn random_pdus_on_live_connections_only_hurt_themselves() {
    use std::io::{Read, Write};
    let t = start(&["-m", "0x3"]);
    let mut good = admin_queue(addr(&t), NQN, true, true);
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..60 {
        let (hd, dd) = (round % 2 == 0, round % 3 == 0);
        let mut h = Host::connect(addr(&t), hd, dd);
        // A valid PDU of some kind, mutated, truncated or padded.
        let mut sqe = rspdk_nvme::spec::Sqe::new(if round % 4 == 0 { 0x7f } else { 0x01 }, 1);
        sqe.dw[8] = (rnd() % 9000) as u32;
        sqe.dw[9] = if rnd() % 2 == 0 {
            0x01 << 24
        } else {
            0x5a << 24
        };
        let data = vec![0x5au8; (rnd() % 5000) as usize];
        let mut raw = Vec::new();
        let p = match round % 4 {
            0 | 1 => rspdk_nvmf::pdu::Pdu::CapsuleCmd { sqe, data: &data },
            2 => rspdk_nvmf::pdu::Pdu::H2cData {
                hdr: rspdk_nvmf::pdu::DataHeader {
                    cccid: 1,
                    ttag: rnd() as u16,
                    datao: 0,
                    datal: data.len() as u32,
                },
                last: true,
                data: &data,
            },
            _ => rspdk_nvmf::pdu::Pdu::R2t(Default::default()),
        };
        p.emit(&mut raw, h.dg);
        for _ in 0..(rnd() % 6) {
            let i = (rnd() as usize) % raw.len();
            raw[i] = rnd() as u8;
        }
        let cut = if rnd() % 3 == 0 {
            (rnd() as usize) % raw.len()
        } else {
            raw.len()
        };
        h.send_raw(&raw[..cut]);
        if rnd() % 2 == 0 {
            let _ = h.s.write_all(&[0u8; 200]);
        }
        // The target answers, terminates, or waits for more bytes; closing
        // our end must always be fine.
        h.s.set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        let mut b = [0u8; 4096];
        let _ = h.s.read(&mut b);
        drop(h);
        if round % 10 == 9 {
            let (c, _) = good.identify(1, 0);
            assert_eq!(
                status(&c),
                (0, 0),
                "the good connection still works after round {round}"
            );
        }
    }
    // Nothing leaks: only the good connection's queue is left.
    let mut qp = Value::Null;
    for _ in 0..100 {
        qp = ok(
            &t.sock,
            "nvmf_subsystem_get_qpairs",
            Some(json!({"nqn": NQN})),
        );
        if qp.as_array().unwrap().len() == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(qp.as_array().unwrap().len(), 1, "{qp}");
    assert!(!t.stderr().contains("panicked"), "{}", t.stderr());
    good.disconnect();
}

#[test]
fn save_config_output_starts_an_identical_target() {
    let mut t = start(&[]);
    ok(
        &t.sock,
        "nvmf_subsystem_add_host",
        Some(json!({"nqn": NQN, "host": HOSTNQN})),
    );
    ok(
        &t.sock,
        "nvmf_subsystem_allow_any_host",
        Some(json!({"nqn": NQN, "allow_any_host": false})),
    );
    let saved = ok(&t.sock, "save_config", None);
    let before = ok(&t.sock, "nvmf_get_subsystems", None);
    let _ = t.child.kill();
    let _ = t.child.wait();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("saved.json");
    std::fs::write(&cfg, saved.to_string()).unwrap();
    let sock = dir.path().join("spdk.sock");
    let mut child = Command::new(TGT)
        .arg("-r")
        .arg(&sock)
        .arg("--no-huge")
        .arg("-c")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_started(&sock);
    let after = ok(&sock, "nvmf_get_subsystems", None);
    assert_eq!(before, after);
    // And it serves: the listed host connects.
    let mut h = admin_queue(addr(&t), NQN, false, false);
    let (c, _) = h.identify(1, 0);
    assert_eq!(status(&c), (0, 0));
    h.disconnect();
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn fused_compare_and_write() {
    use rspdk_nvme::spec::Sqe;
    let t = start(&[]);
    let mut a = admin_queue(addr(&t), NQN, false, false);
    let (_, id) = a.identify(1, 0);
    assert_eq!(id[522] & 1, 1, "FUSES: compare and write");
    let mut q = io_queue(addr(&t), NQN, a.cntlid, 1, false, false, false);
    let old = pattern(40, 4096);
    let new = pattern(41, 4096);
    assert_eq!(status(&q.write(1, 300, &old, BS, true)), (0, 0));
    let fused = |q: &mut Host, cmp: &[u8], data: &[u8], cid: u16| -> ((u8, u8), (u8, u8)) {
        let mk = |op: u8, fuse: u32, cid: u16| {
            let mut s = Sqe::new(op, 1);
            s.set_slba(300);
            s.dw[12] = 7;
            s.set_cid(cid);
            s.set_psdt(1);
            s.dw[0] |= fuse << 8;
            s.dw[8] = 4096;
            s.dw[9] = 0x01 << 24;
            s
        };
        q.send(&rspdk_nvmf::pdu::Pdu::CapsuleCmd {
            sqe: mk(0x05, 1, cid),
            data: cmp,
        });
        q.send(&rspdk_nvmf::pdu::Pdu::CapsuleCmd {
            sqe: mk(0x01, 2, cid + 1),
            data,
        });
        let mut st = [(9, 9); 2];
        for _ in 0..2 {
            match q.recv() {
                Rx::Resp(c) => st[(c.cid() - cid) as usize] = status(&c),
                other => panic!("{other:?}"),
            }
        }
        (st[0], st[1])
    };
    // Matches: written.
    assert_eq!(fused(&mut q, &old, &new, 500), ((0, 0), (0, 0)));
    let (_, r) = q.read(1, 300, 8, BS);
    assert!(r == new, "compare-and-write wrote");
    // Differs: compare failure, write aborted, data unchanged.
    assert_eq!(
        fused(&mut q, &old, &pattern(42, 4096), 510),
        ((2, 0x85), (0, 0x05))
    );
    let (_, r) = q.read(1, 300, 8, BS);
    assert!(r == new, "a failed compare-and-write writes nothing");
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn interrupt_mode_with_connected_hosts_sleeps_when_idle() {
    let t = start(&["--interrupt-mode", "-m", "0x3"]);
    let mut a = admin_queue(addr(&t), NQN, false, false);
    let mut q = io_queue(addr(&t), NQN, a.cntlid, 1, true, true, true);
    for i in 0..20u64 {
        let d = pattern(i as u8, 65536);
        assert_eq!(status(&q.write(1, i * 128, &d, BS, false)), (0, 0));
        let (c, r) = q.read(1, i * 128, 128, BS);
        assert_eq!(status(&c), (0, 0));
        assert!(r == d);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = t.child.id();
    let (c0, t0) = (cpu_ticks(pid), std::time::Instant::now());
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (c1, el) = (cpu_ticks(pid), t0.elapsed());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (c1 - c0) as f64 / hz / el.as_secs_f64();
    eprintln!(
        "--interrupt-mode rspdk_tgt with 2 idle queue pairs: {:.2}% CPU",
        cpu * 100.0
    );
    // The connections sleep on their sockets (fd interrupts plus a 1 ms
    // housekeeping poller), but the bdev layer's channel poller (period 0,
    // rspdk_bdev) keeps the poll group's reactor awake while it holds a
    // channel: at most one of the two reactors spins, the other sleeps.
    assert!(
        cpu < 0.75,
        "CPU {:.1}% with idle connections: both reactors spin",
        cpu * 100.0
    );
    // Still serving after sleeping.
    let (c, _) = a.identify(1, 0);
    assert_eq!(status(&c), (0, 0));
    let (c, _) = q.read(1, 0, 8, BS);
    assert_eq!(status(&c), (0, 0));
    q.disconnect();
    a.disconnect();
}

/// Sends `raw` in pieces cut at `cuts`, pausing between them so that the
/// target sees each piece in its own read.
fn send_in_pieces(h: &mut Host, raw: &[u8], cuts: &[usize]) {
    let mut from = 0;
    for &c in cuts.iter().chain(std::iter::once(&raw.len())) {
        let c = c.min(raw.len());
        if c > from {
            h.send_raw(&raw[from..c]);
            std::thread::sleep(std::time::Duration::from_millis(5));
            from = c;
        }
    }
}

/// A write command's SQE: `len` bytes at `lba`, in-capsule or through R2T.
fn write_sqe(cid: u16, lba: u64, len: usize, in_capsule: bool) -> rspdk_nvme::spec::Sqe {
    let mut sqe = rspdk_nvme::spec::Sqe::new(0x01, 1);
    sqe.set_cid(cid);
    sqe.set_psdt(1);
    sqe.set_slba(lba);
    sqe.dw[12] = (len / BS) as u32 - 1;
    sqe.dw[8] = len as u32;
    sqe.dw[9] = if in_capsule { 0x01 } else { 0x5a } << 24;
    sqe
}

fn expect_resp(h: &mut Host, cid: u16) -> (u8, u8) {
    match h.recv() {
        Rx::Resp(c) => {
            assert_eq!(c.cid(), cid, "response for command {cid}");
            status(&c)
        }
        other => panic!("expected the response of command {cid}, got {other:?}"),
    }
}

/// NVMe/TCP (TP 8000 section 7.4.6): a data digest error on command data
/// fails that command with Transient Transport Error; the connection and
/// the queue go on. In-capsule data and H2CData, each whole in one read
/// and cut into pieces (so the payload arrives straight into the command's
/// buffer across several reads), with and without header digests.
#[test]
fn data_digest_error_fails_the_command_and_the_connection_survives() {
    use rspdk_nvmf::pdu::{DataHeader, Pdu};
    let t = start(&[]);
    for hd in [false, true] {
        let mut a = admin_queue(addr(&t), NQN, hd, true);
        let mut q = io_queue(addr(&t), NQN, a.cntlid, 1, hd, true, false);
        let old = pattern(3, 65536);
        let lba = 4096;
        assert_eq!(status(&q.write(1, lba, &old, BS, false)), (0, 0));
        let new = pattern(4, 65536);
        for pieces in [false, true] {
            // In-capsule, 4 KiB, the digest's last byte flipped.
            let mut raw = Vec::new();
            Pdu::CapsuleCmd {
                sqe: write_sqe(0x100, lba, 4096, true),
                data: &new[..4096],
            }
            .emit(&mut raw, q.dg);
            let n = raw.len();
            raw[n - 1] ^= 0x80;
            let cuts = if pieces {
                vec![3, 40, 75, 1000, n - 2]
            } else {
                vec![]
            };
            send_in_pieces(&mut q, &raw, &cuts);
            assert_eq!(
                expect_resp(&mut q, 0x100),
                (0, 0x22),
                "in-capsule data digest error (pieces {pieces}, hd {hd})"
            );
            // R2T write of 64 KiB in four H2CData PDUs; the second is bad.
            let mut raw = Vec::new();
            Pdu::CapsuleCmd {
                sqe: write_sqe(0x101, lba, 65536, false),
                data: &[],
            }
            .emit(&mut raw, q.dg);
            q.send_raw(&raw);
            let r2t = match q.recv() {
                Rx::R2t(h) => h,
                other => panic!("expected an R2T, got {other:?}"),
            };
            assert_eq!((r2t.cccid, r2t.datao, r2t.datal), (0x101, 0, 65536));
            for i in 0..4usize {
                let mut raw = Vec::new();
                Pdu::H2cData {
                    hdr: DataHeader {
                        cccid: 0x101,
                        ttag: r2t.ttag,
                        datao: (i * 16384) as u32,
                        datal: 16384,
                    },
                    last: i == 3,
                    data: &new[i * 16384..(i + 1) * 16384],
                }
                .emit(&mut raw, q.dg);
                if i == 1 {
                    let n = raw.len();
                    raw[n - 3] ^= 1;
                }
                let cuts = if pieces {
                    vec![10, 30, 5000, raw.len() - 3]
                } else {
                    vec![]
                };
                send_in_pieces(&mut q, &raw, &cuts);
            }
            assert_eq!(
                expect_resp(&mut q, 0x101),
                (0, 0x22),
                "H2CData digest error (pieces {pieces}, hd {hd})"
            );
            // Nothing was written, and the queue works.
            let (c, r) = q.read(1, lba, (65536 / BS) as u32, BS);
            assert_eq!(status(&c), (0, 0), "a read after the digest errors");
            assert!(r == old, "failed writes left the blocks alone");
        }
        // Good writes after them, in pieces, land.
        let mut raw = Vec::new();
        Pdu::CapsuleCmd {
            sqe: write_sqe(0x102, lba, 4096, true),
            data: &new[..4096],
        }
        .emit(&mut raw, q.dg);
        let n = raw.len();
        send_in_pieces(&mut q, &raw, &[1, 8, 72, 76, 77, 2000, n - 4, n - 1]);
        assert_eq!(expect_resp(&mut q, 0x102), (0, 0));
        assert_eq!(
            status(&q.write(1, lba + 8, &new[4096..], BS, false)),
            (0, 0)
        );
        let (c, r) = q.read(1, lba, (65536 / BS) as u32, BS);
        assert_eq!(status(&c), (0, 0));
        assert!(r == new, "writes after the digest errors read back");
        q.disconnect();
        a.disconnect();
    }
    assert!(
        t.stderr().contains("Transient Transport Error"),
        "{}",
        t.stderr()
    );
    assert!(!t.stderr().contains("panicked"), "{}", t.stderr());
}

/// Wrong lengths and truncated PDUs: each gets a C2HTermReq naming the
/// field (FES and the byte offset in FEI) and a close, or, when cut short,
/// the target waits for the rest; other connections go on.
#[test]
fn wrong_lengths_and_truncated_pdus_name_the_field() {
    use rspdk_nvmf::pdu::{DataHeader, Pdu};
    let t = start(&[]);
    let mut a = admin_queue(addr(&t), NQN, false, false);
    let cntlid = a.cntlid;
    let term = |h: &mut Host| -> (u16, u32) {
        let r = match h.try_recv() {
            Some(Rx::Term { fes, fei }) => (fes, fei),
            other => panic!("expected C2HTermReq, got {other:?}"),
        };
        assert!(h.try_recv().is_none(), "closed after the termination");
        r
    };
    // PLEN beyond what the target accepts (in-capsule size + header).
    let mut q = io_queue(addr(&t), NQN, cntlid, 1, false, false, false);
    let mut raw = Vec::new();
    Pdu::CapsuleCmd {
        sqe: write_sqe(1, 0, 4096, true),
        data: &[0u8; 4096],
    }
    .emit(&mut raw, q.dg);
    raw[4..8].copy_from_slice(&(1u32 << 20).to_le_bytes());
    q.send_raw(&raw[..72]);
    assert_eq!(term(&mut q), (1, 4), "PLEN too large: FEI names PLEN");
    // PDO inside the header.
    let mut q = io_queue(addr(&t), NQN, cntlid, 1, false, false, false);
    let mut raw = Vec::new();
    Pdu::CapsuleCmd {
        sqe: write_sqe(1, 0, 512, true),
        data: &[0u8; 512],
    }
    .emit(&mut raw, q.dg);
    raw[3] = 16;
    q.send_raw(&raw);
    assert_eq!(term(&mut q), (1, 3), "PDO in the header: FEI names PDO");
    // H2CData whose DATAL disagrees with PLEN: found from the header alone,
    // before any of the data is awaited.
    let mut q = io_queue(addr(&t), NQN, cntlid, 1, false, false, false);
    let mut raw = Vec::new();
    Pdu::CapsuleCmd {
        sqe: write_sqe(2, 0, 8192, false),
        data: &[],
    }
    .emit(&mut raw, q.dg);
    q.send_raw(&raw);
    let Rx::R2t(r2t) = q.recv() else {
        panic!("expected an R2T")
    };
    let mut raw = Vec::new();
    Pdu::H2cData {
        hdr: DataHeader {
            cccid: 2,
            ttag: r2t.ttag,
            datao: 0,
            datal: 8192,
        },
        last: true,
        data: &[0u8; 8192],
    }
    .emit(&mut raw, q.dg);
    raw[16..20].copy_from_slice(&4096u32.to_le_bytes());
    q.send_raw(&raw[..24]);
    assert_eq!(term(&mut q), (1, 16), "DATAL mismatch: FEI names DATAL");
    // H2CData past the end of the transfer, and at the wrong offset.
    for (datao, datal) in [(4096u32, 8192u32), (512, 512)] {
        let mut q = io_queue(addr(&t), NQN, cntlid, 1, false, false, false);
        let mut raw = Vec::new();
        Pdu::CapsuleCmd {
            sqe: write_sqe(3, 0, 8192, false),
            data: &[],
        }
        .emit(&mut raw, q.dg);
        q.send_raw(&raw);
        let Rx::R2t(r2t) = q.recv() else {
            panic!("expected an R2T")
        };
        let data = vec![0u8; datal as usize];
        let mut raw = Vec::new();
        Pdu::H2cData {
            hdr: DataHeader {
                cccid: 3,
                ttag: r2t.ttag,
                datao,
                datal,
            },
            last: true,
            data: &data,
        }
        .emit(&mut raw, q.dg);
        q.send_raw(&raw);
        assert_eq!(
            term(&mut q),
            (4, 12),
            "DATAO {datao} DATAL {datal}: out of range"
        );
    }
    // H2CData naming no R2T.
    let mut q = io_queue(addr(&t), NQN, cntlid, 1, false, false, false);
    let mut raw = Vec::new();
    Pdu::H2cData {
        hdr: DataHeader {
            cccid: 9,
            ttag: 77,
            datao: 0,
            datal: 512,
        },
        last: true,
        data: &[0u8; 512],
    }
    .emit(&mut raw, q.dg);
    q.send_raw(&raw);
    assert_eq!(term(&mut q), (1, 10), "unknown TTAG: FEI names TTAG");
    // Truncated: the target waits for the rest (header, data or digest cut
    // short), then runs the command.
    let mut q = io_queue(addr(&t), NQN, cntlid, 1, true, true, false);
    let d = pattern(9, 4096);
    for cut in [5usize, 60, 74, 76, 1000, 4172, 4174] {
        let mut raw = Vec::new();
        Pdu::CapsuleCmd {
            sqe: write_sqe(4, 64, 4096, true),
            data: &d,
        }
        .emit(&mut raw, q.dg);
        q.send_raw(&raw[..cut]);
        q.s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let mut b = [0u8; 64];
        use std::io::Read;
        assert!(
            q.s.read(&mut b).is_err(),
            "nothing sent back for a PDU cut at {cut} of {}",
            raw.len()
        );
        q.s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        q.send_raw(&raw[cut..]);
        assert_eq!(expect_resp(&mut q, 4), (0, 0), "write cut at {cut}");
    }
    let (c, r) = q.read(1, 64, 8, BS);
    assert_eq!(status(&c), (0, 0));
    assert!(r == d);
    // Truncated, then the host goes away: the queue pair goes with it.
    let mut raw = Vec::new();
    Pdu::CapsuleCmd {
        sqe: write_sqe(5, 64, 4096, true),
        data: &d,
    }
    .emit(&mut raw, q.dg);
    q.send_raw(&raw[..2000]);
    drop(q);
    let mut n = usize::MAX;
    for _ in 0..100 {
        let qp = ok(
            &t.sock,
            "nvmf_subsystem_get_qpairs",
            Some(json!({"nqn": NQN})),
        );
        n = qp.as_array().unwrap().len();
        if n == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(n, 1, "only the admin queue is left");
    let (c, _) = a.identify(1, 0);
    assert_eq!(status(&c), (0, 0), "the admin queue still works");
    a.disconnect();
    assert!(!t.stderr().contains("panicked"), "{}", t.stderr());
}

/// The target's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Sockets that connect and never send an ICReq cost little memory (a
/// few KiB each until their ICReq: 300 of them used to pin 38 MiB)
/// and are closed after the 10 s handshake timeout, their memory freed
/// for the next ones.
#[test]
fn idle_sockets_are_cheap_and_time_out() {
    use std::io::Read;
    let t = start(&[]);
    let pid = t.child.id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let fds_before = fds();
    let before = rss_kib(pid);
    let t0 = std::time::Instant::now();
    let mut idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(addr(&t)).unwrap())
        .collect();
    // Wait until the target has taken them all in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // (Less a few: an RPC connection may have been open at the count.)
    while fds() < fds_before + 295 {
        assert!(
            std::time::Instant::now() < deadline,
            "the target took {} of 300 connections",
            fds().saturating_sub(fds_before)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 48 * 1024,
        "1,000 idle sockets grew RSS by {grown} KiB"
    );
    // Each is closed by the target after the handshake timeout.
    for s in idle.iter_mut().take(20) {
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!("{n} bytes from the target before any ICReq"),
            Err(e) => panic!("not closed by the target within 20 s: {e}"),
        }
    }
    let waited = t0.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(9),
        "closed before the handshake timeout ({waited:?})"
    );
    // A host that does complete its handshake is not affected.
    let mut a = admin_queue(addr(&t), NQN, false, false);
    let (c, _) = a.identify(1, 0);
    assert_eq!(status(&c), (0, 0));
}

/// Per-namespace host visibility (`no_auto_visible`, `nvmf_ns_add_host`,
/// `nvmf_ns_remove_host`): a host not added neither sees the namespace
/// (active list, Identify Namespace zeroed) nor reaches it with I/O; added,
/// it gets a namespace attribute notice, the changed namespace log lists
/// it, and it sees and reads it; another host never does; removed, it is
/// gone again. save_config writes it as SPDK does.
#[test]
fn ns_visibility_follows_the_host_nqn() {
    const OTHER: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000002";
    let t = start(&[]);
    ok(
        &t.sock,
        "bdev_malloc_create",
        Some(json!({"name": "Hidden", "num_blocks": 2048, "block_size": BS})),
    );
    let nsid = ok(
        &t.sock,
        "nvmf_subsystem_add_ns",
        Some(
            json!({"nqn": NQN, "namespace": {"bdev_name": "Hidden", "nsid": 3, "no_auto_visible": true}}),
        ),
    );
    assert_eq!(nsid, json!(3));
    // Adding a host to an auto-visible namespace is refused, naming why.
    let e = rpc(
        &t.sock,
        "nvmf_ns_add_host",
        Some(json!({"nqn": NQN, "nsid": 1, "host": HOSTNQN})),
    )
    .unwrap_err();
    assert!(e.message.contains("no_auto_visible"), "{}", e.message);

    let mut a = admin_queue(addr(&t), NQN, false, false);
    let mut q = io_queue(addr(&t), NQN, a.cntlid, 1, false, false, false);
    let mut o = Host::connect(addr(&t), false, false);
    assert_eq!(
        status(&o.fabric_connect(0, 32, NQN, OTHER, 0xffff, 0)),
        (0, 0)
    );
    o.enable();
    let active = |h: &mut Host| -> Vec<u32> {
        let (c, d) = h.identify(2, 0);
        assert_eq!(status(&c), (0, 0));
        d.chunks(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .take_while(|&n| n != 0)
            .collect()
    };
    assert_eq!(active(&mut a), vec![1]);
    let (c, id) = a.identify(0, 3);
    assert_eq!(status(&c), (0, 0));
    assert!(
        id.iter().all(|&b| b == 0),
        "hidden: Identify Namespace zeroed"
    );
    let (c, _) = q.read(3, 0, 1, BS);
    assert_eq!(status(&c), (0, 0x0b), "hidden: I/O gets Invalid Namespace");

    // Added: AER, changed namespace log, visible, readable.
    let mut aer = rspdk_nvme::spec::Sqe::new(0x0c, 0);
    aer.set_cid(901);
    a.send(&rspdk_nvmf::pdu::Pdu::CapsuleCmd {
        sqe: aer,
        data: &[],
    });
    ok(
        &t.sock,
        "nvmf_ns_add_host",
        Some(json!({"nqn": NQN, "nsid": 3, "host": HOSTNQN})),
    );
    match a.recv() {
        Rx::Resp(c) => {
            assert_eq!(c.cid(), 901);
            assert_eq!(c.dw[0], 0x02 | (0x04 << 16), "namespace attribute notice");
        }
        other => panic!("expected the AER completion, got {other:?}"),
    }
    let (c, log) = a.get_log(0x04, 4096, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(&log[0..8], &[3, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(active(&mut a), vec![1, 3]);
    let (c, id) = a.identify(0, 3);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(
        u64::from_le_bytes(id[0..8].try_into().unwrap()),
        2048,
        "NSZE"
    );
    let d = pattern(9, 2 * BS);
    assert_eq!(status(&q.write(3, 4, &d, BS, true)), (0, 0));
    let (c, r) = q.read(3, 4, 2, BS);
    assert_eq!(status(&c), (0, 0));
    assert!(r == d);

    // The other host still sees nothing of it, and got no change logged.
    assert_eq!(active(&mut o), vec![1]);
    let (c, log) = o.get_log(0x04, 4096, 0);
    assert_eq!(status(&c), (0, 0));
    assert!(log[0..4] == [0; 4], "no change for the other host");

    // save_config: no_auto_visible on the namespace, then its host.
    let cfg = ok(
        &t.sock,
        "framework_get_config",
        Some(json!({"name": "nvmf"})),
    );
    let ns3 = cfg
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["method"] == "nvmf_subsystem_add_ns" && e["params"]["namespace"]["nsid"] == 3)
        .unwrap_or_else(|| panic!("{cfg}"));
    assert_eq!(ns3["params"]["namespace"]["no_auto_visible"], true);
    assert!(
        cfg.as_array()
            .unwrap()
            .iter()
            .any(|e| e["method"] == "nvmf_ns_add_host"
                && e["params"] == json!({"nqn": NQN, "nsid": 3, "host": HOSTNQN})),
        "{cfg}"
    );

    // Removed: hidden again, I/O refused.
    ok(
        &t.sock,
        "nvmf_ns_remove_host",
        Some(json!({"nqn": NQN, "nsid": 3, "host": HOSTNQN})),
    );
    assert_eq!(active(&mut a), vec![1]);
    let (c, _) = q.read(3, 4, 1, BS);
    assert_eq!(status(&c), (0, 0x0b), "removed: Invalid Namespace");
    let (c, log) = a.get_log(0x04, 4096, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(&log[0..8], &[3, 0, 0, 0, 0, 0, 0, 0]);
    assert!(!t.stderr().contains("panicked"), "{}", t.stderr());
}

/// A second NVMe-oF target (`nvmf_create_target`): its own transport,
/// subsystems and listeners. Its subsystem is listed with its `tgt_name`
/// and not without; hosts reach it through its listener only (not through
/// the default target's); the same NQN may exist in both; a listen
/// address belongs to one target; deleting the target ends its
/// connections.
#[test]
fn a_second_target_has_its_own_subsystems_and_listeners() {
    const T2: &str = "tgt2";
    const NQN2: &str = "nqn.2016-06.io.spdk:second";
    let t = start(&[]);
    assert_eq!(ok(&t.sock, "nvmf_get_targets", None), json!(["nvmf_tgt"]));
    assert_eq!(
        ok(
            &t.sock,
            "nvmf_create_target",
            Some(json!({"name": T2, "max_subsystems": 8}))
        ),
        json!(T2)
    );
    assert_eq!(
        ok(&t.sock, "nvmf_get_targets", None),
        json!(["nvmf_tgt", T2])
    );
    let e = rpc(&t.sock, "nvmf_create_target", Some(json!({"name": T2}))).unwrap_err();
    assert!(e.message.contains("exists"), "{}", e.message);
    // No transport on the new target yet.
    let port2 = free_port();
    let listen2 = json!({"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port2.to_string()});
    ok(
        &t.sock,
        "nvmf_create_subsystem",
        Some(json!({"nqn": NQN2, "allow_any_host": true, "tgt_name": T2})),
    );
    let e = rpc(
        &t.sock,
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": NQN2, "listen_address": listen2, "tgt_name": T2})),
    )
    .unwrap_err();
    assert!(e.message.contains("transport"), "{}", e.message);
    ok(
        &t.sock,
        "nvmf_create_transport",
        Some(json!({"trtype": "TCP", "tgt_name": T2})),
    );
    ok(
        &t.sock,
        "bdev_malloc_create",
        Some(json!({"name": "M2", "num_blocks": 1024, "block_size": BS})),
    );
    ok(
        &t.sock,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": NQN2, "namespace": {"bdev_name": "M2"}, "tgt_name": T2})),
    );
    ok(
        &t.sock,
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": NQN2, "listen_address": listen2, "tgt_name": T2})),
    );
    // The same NQN as the default target's subsystem, in the second one.
    ok(
        &t.sock,
        "nvmf_create_subsystem",
        Some(json!({"nqn": NQN, "tgt_name": T2})),
    );

    // Listed with tgt_name only.
    let nqns = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["nqn"].as_str().unwrap().to_string())
            .collect()
    };
    let default = nqns(ok(&t.sock, "nvmf_get_subsystems", None));
    assert!(!default.contains(&NQN2.to_string()), "{default:?}");
    let second = nqns(ok(
        &t.sock,
        "nvmf_get_subsystems",
        Some(json!({"tgt_name": T2})),
    ));
    assert!(
        second.contains(&NQN2.to_string()) && second.contains(&NQN.to_string()),
        "{second:?}"
    );
    let e = rpc(
        &t.sock,
        "nvmf_get_subsystems",
        Some(json!({"tgt_name": "nope"})),
    )
    .unwrap_err();
    assert!(e.message.contains("nope"), "{}", e.message);
    assert_eq!(
        ok(
            &t.sock,
            "nvmf_get_transports",
            Some(json!({"tgt_name": T2}))
        )
        .as_array()
        .unwrap()
        .len(),
        1
    );

    // A listen address belongs to one target.
    let e = rpc(
        &t.sock,
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": NQN, "listen_address": listen2})),
    )
    .unwrap_err();
    assert!(e.message.contains(T2), "{}", e.message);

    // Hosts reach the second target's subsystem on its listener only.
    let a2: SocketAddr = format!("127.0.0.1:{port2}").parse().unwrap();
    let mut h = Host::connect(addr(&t), false, false);
    let c = h.fabric_connect(0, 32, NQN2, HOSTNQN, 0xffff, 0);
    assert_ne!(status(&c), (0, 0), "the default target has no {NQN2}");
    let mut a = admin_queue(a2, NQN2, false, false);
    let mut q = io_queue(a2, NQN2, a.cntlid, 1, false, false, false);
    let d = pattern(3, 4 * BS);
    assert_eq!(status(&q.write(1, 0, &d, BS, true)), (0, 0));
    let (c, r) = q.read(1, 0, 4, BS);
    assert_eq!(status(&c), (0, 0));
    assert!(r == d);
    let qp = ok(
        &t.sock,
        "nvmf_subsystem_get_qpairs",
        Some(json!({"nqn": NQN2, "tgt_name": T2})),
    );
    assert_eq!(qp.as_array().unwrap().len(), 2, "{qp}");
    // Its discovery service lists its own subsystems.
    let mut disc = admin_queue(a2, rspdk_nvmf::DISCOVERY, false, false);
    let (c, log) = disc.get_log(0x70, 4096, 0);
    assert_eq!(status(&c), (0, 0));
    let text = String::from_utf8_lossy(&log).into_owned();
    assert!(text.contains(NQN2), "second target's discovery log");
    drop(disc);
    let _ = a.identify(1, 0);

    // Deleting the target ends its connections.
    ok(&t.sock, "nvmf_delete_target", Some(json!({"name": T2})));
    assert_eq!(ok(&t.sock, "nvmf_get_targets", None), json!(["nvmf_tgt"]));
    assert!(q.try_recv().is_none(), "the I/O queue closes");
    let e = rpc(
        &t.sock,
        "nvmf_delete_target",
        Some(json!({"name": "nvmf_tgt"})),
    )
    .unwrap_err();
    assert!(e.message.contains("cannot be deleted"), "{}", e.message);
    // The port is free again: the default target may listen there.
    ok(
        &t.sock,
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": NQN, "listen_address": listen2})),
    );
    assert!(!t.stderr().contains("panicked"), "{}", t.stderr());
}
