//! The nvmf RPCs and save_config, clean shutdown, many queues, keep-alive,
//! random PDUs on live connections, fused compare and write, interrupt mode.

use super::*;

#[test]
pub(super) fn rpcs_and_save_config() {
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
pub(super) fn shutdown_with_connected_hosts_is_clean_in_both_modes() {
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
pub(super) fn many_queues_from_many_threads() {
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
pub(super) fn transport_keep_alive_and_masked_commands() {
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
pub(super) fn keep_alive_timeout_drops_a_silent_host() {
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
pub(super) fn random_pdus_on_live_connections_only_hurt_themselves() {
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
pub(super) fn save_config_output_starts_an_identical_target() {
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
pub(super) fn fused_compare_and_write() {
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
pub(super) fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
pub(super) fn interrupt_mode_with_connected_hosts_sleeps_when_idle() {
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
pub(super) fn send_in_pieces(h: &mut Host, raw: &[u8], cuts: &[usize]) {
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
pub(super) fn write_sqe(cid: u16, lba: u64, len: usize, in_capsule: bool) -> rspdk_nvme::spec::Sqe {
    let mut sqe = rspdk_nvme::spec::Sqe::new(0x01, 1);
    sqe.set_cid(cid);
    sqe.set_psdt(1);
    sqe.set_slba(lba);
    sqe.dw[12] = (len / BS) as u32 - 1;
    sqe.dw[8] = len as u32;
    sqe.dw[9] = if in_capsule { 0x01 } else { 0x5a } << 24;
    sqe
}

pub(super) fn expect_resp(h: &mut Host, cid: u16) -> (u8, u8) {
    match h.recv() {
        Rx::Resp(c) => {
            assert_eq!(c.cid(), cid, "response for command {cid}");
            status(&c)
        }
        other => panic!("expected the response of command {cid}, got {other:?}"),
    }
}
