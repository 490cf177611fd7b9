//! Namespace visibility by host NQN and several named targets.

use super::*;

/// Per-namespace host visibility (`no_auto_visible`, `nvmf_ns_add_host`,
/// `nvmf_ns_remove_host`): a host not added neither sees the namespace
/// (active list, Identify Namespace zeroed) nor reaches it with I/O; added,
/// it gets a namespace attribute notice, the changed namespace log lists
/// it, and it sees and reads it; another host never does; removed, it is
/// gone again. save_config writes it as SPDK does.
#[test]
pub(super) fn ns_visibility_follows_the_host_nqn() {
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
pub(super) fn a_second_target_has_its_own_subsystems_and_listeners() {
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
