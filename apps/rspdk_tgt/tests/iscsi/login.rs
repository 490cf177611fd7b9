//! Logins, digests, NOP-In keep-alives and random PDUs from a raw socket.

use super::*;

/// Builds a Login Request PDU (CSG 1 -> NSG 3, transit) with `keys`.
pub(super) fn login_pdu(keys: &str) -> Vec<u8> {
    login_pdu_at(keys, 0, 0, 0)
}

/// [`login_pdu`] for session `tsih` (0: a new session), connection `cid`,
/// CmdSN `cmd_sn`.
pub(super) fn login_pdu_at(keys: &str, tsih: u16, cid: u16, cmd_sn: u32) -> Vec<u8> {
    let mut b = login_pdu_keys(keys);
    b[14..16].copy_from_slice(&tsih.to_be_bytes());
    b[20..22].copy_from_slice(&cid.to_be_bytes());
    b[24..28].copy_from_slice(&cmd_sn.to_be_bytes());
    b
}

pub(super) fn login_pdu_keys(keys: &str) -> Vec<u8> {
    let mut data = keys.replace(';', "\0").into_bytes();
    data.push(0);
    let mut b = vec![0u8; 48];
    b[0] = 0x43;
    b[1] = 0x87;
    let len = data.len() as u32;
    b[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
    b[8..14].copy_from_slice(&[0x40, 0, 0, 0, 0, 1]);
    b[16..20].copy_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&data);
    while b.len() % 4 != 0 {
        b.push(0);
    }
    b
}

/// Sends `pdu`, returns the login response status (class, detail), or None
/// if the target closed the connection.
pub(super) fn login_status(port: u16, pdu: &[u8]) -> Option<(u8, u8)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(pdu).unwrap();
    let mut hdr = [0u8; 48];
    s.read_exact(&mut hdr).ok()?;
    assert_eq!(hdr[0] & 0x3f, 0x23, "not a login response");
    Some((hdr[36], hdr[37]))
}

#[test]
pub(super) fn bad_logins_and_rpcs() {
    let t = start(512);
    let s = &t.sock;
    let init = "InitiatorName=iqn.2026-01.io.rspdk:test";
    // Unknown target: initiator error, not found.
    assert_eq!(
        login_status(
            t.port,
            &login_pdu(&format!("{init};SessionType=Normal;TargetName=iqn.nope"))
        ),
        Some((2, 3))
    );
    // Denied initiator: authorization failure.
    assert_eq!(
        login_status(
            t.port,
            &login_pdu(&format!(
                "InitiatorName=iqn.2026-01.io.rspdk:denied;SessionType=Normal;TargetName={IQN}"
            ))
        ),
        Some((2, 2))
    );
    // No InitiatorName: missing parameter.
    assert_eq!(
        login_status(
            t.port,
            &login_pdu(&format!("SessionType=Normal;TargetName={IQN}"))
        ),
        Some((2, 7))
    );
    // A data segment above the login limit: the connection is dropped.
    let mut huge = login_pdu(init);
    huge[5..8].copy_from_slice(&[0x10, 0, 0]);
    assert_eq!(login_status(t.port, &huge), None);
    // Garbage text (no '='): initiator error.
    assert_eq!(login_status(t.port, &login_pdu("garbage")), Some((2, 0)));
    // A good login still works afterwards.
    assert_eq!(
        login_status(
            t.port,
            &login_pdu(&format!("{init};SessionType=Normal;TargetName={IQN}"))
        ),
        Some((0, 0))
    );

    // RPCs.
    let nodes = ok(s, "iscsi_get_target_nodes", None);
    assert_eq!(nodes[0]["name"], json!(IQN));
    assert_eq!(
        nodes[0]["luns"],
        json!([{"bdev_name": "Malloc0", "lun_id": 0}])
    );
    assert_eq!(
        ok(s, "iscsi_get_portal_groups", None)[0]["portals"][0]["port"],
        json!(t.port.to_string())
    );
    assert_eq!(
        ok(s, "iscsi_get_initiator_groups", None)[0]["tag"],
        json!(2)
    );
    ok(
        s,
        "bdev_malloc_create",
        Some(json!({"name": "Malloc1", "num_blocks": 2048, "block_size": 512})),
    );
    ok(
        s,
        "iscsi_target_node_add_lun",
        Some(json!({"name": "disk1", "bdev_name": "Malloc1"})),
    );
    assert_eq!(
        ok(s, "iscsi_get_target_nodes", None)[0]["luns"][1],
        json!({"bdev_name": "Malloc1", "lun_id": 1})
    );
    // Hot remove of a LUN's bdev while the target runs: the LUN goes away,
    // its commands end with CHECK CONDITION, LUN 0 keeps working.
    require("iscsi-readcapacity16", "libiscsi-bin");
    {
        let lun1 = format!("iscsi://127.0.0.1:{}/{IQN}/1", t.port);
        let lun0 = format!("iscsi://127.0.0.1:{}/{IQN}/0", t.port);
        assert!(run("iscsi-readcapacity16", &[&lun1]).contains("Total size:1048576"));
        ok(s, "bdev_malloc_delete", Some(json!({"name": "Malloc1"})));
        let out = Command::new("timeout")
            .args(["30", "iscsi-readcapacity16", &lun1])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "LUN 1 still answers after hot remove"
        );
        assert!(run("iscsi-readcapacity16", &[&lun0]).contains("Total size:67108864"));
        assert_eq!(
            ok(s, "iscsi_get_target_nodes", None)[0]["luns"],
            json!([{"bdev_name": "Malloc0", "lun_id": 0}])
        );
    }
    // CHAP: a target node that requires it, one-way and mutual.
    ok(
        s,
        "iscsi_create_auth_group",
        Some(json!({"tag": 1, "secrets": [
            {"user": "chapuser", "secret": "chapsecret12"},
            {"user": "mutualuser", "secret": "mutualsecret1", "muser": "tgtuser", "msecret": "tgtsecret123"}]})),
    );
    ok(
        s,
        "iscsi_create_target_node",
        Some(
            json!({"name": "chap1", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
            "luns": [{"bdev_name": "Malloc0", "lun_id": 0}], "queue_depth": 8,
            "require_chap": true, "chap_group": 1}),
        ),
    );
    require("iscsi-inq", "libiscsi-bin");
    {
        let chap_url = |cred: &str| {
            format!(
                "iscsi://{cred}127.0.0.1:{}/iqn.2016-06.io.spdk:chap1/0",
                t.port
            )
        };
        let inq = |cred: &str| {
            let out = Command::new("timeout")
                .args(["30", "iscsi-inq", &chap_url(cred)])
                .output()
                .unwrap();
            eprintln!("iscsi-inq {cred}: {}", String::from_utf8_lossy(&out.stderr));
            out.status.success()
        };
        assert!(
            inq("chapuser%chapsecret12@"),
            "CHAP login with the right secret failed"
        );
        assert!(
            !inq("chapuser%wrongsecret1@"),
            "CHAP login with a wrong secret worked"
        );
        assert!(!inq(""), "login without CHAP to a CHAP target worked");
        // Mutual: libiscsi's target credentials go in the URL parameters.
        let mutual = format!(
            "{}?target_user=tgtuser&target_password=tgtsecret123",
            chap_url("mutualuser%mutualsecret1@")
        );
        let out = Command::new("timeout")
            .args(["30", "iscsi-inq", &mutual])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mutual CHAP: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ok(
        s,
        "iscsi_delete_target_node",
        Some(json!({"name": "chap1"})),
    );
    let e = rpc(
        s,
        "iscsi_create_target_node",
        Some(
            json!({"name": "x", "pg_ig_maps": [{"pg_tag": 9, "ig_tag": 2}],
            "luns": [{"bdev_name": "Malloc0", "lun_id": 0}], "queue_depth": 8}),
        ),
    )
    .unwrap_err();
    assert_eq!(e.code, -22, "{e:?}");
    let saved = ok(s, "save_config", None);
    let iscsi = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["subsystem"] == "iscsi")
        .unwrap()
        .clone();
    let methods: Vec<&str> = iscsi["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "iscsi_set_options",
            "iscsi_create_auth_group",
            "iscsi_create_portal_group",
            "iscsi_create_initiator_group",
            "iscsi_create_target_node"
        ]
    );
    let _: Value = ok(s, "iscsi_get_connections", None);
    ok(s, "iscsi_delete_target_node", Some(json!({"name": IQN})));
    assert_eq!(ok(s, "iscsi_get_target_nodes", None), json!([]));
}

/// Logs in with digests on; returns the stream in full feature phase.
pub(super) fn login_with_digests(port: u16, initiator: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&login_pdu(&format!(
        "InitiatorName={initiator};SessionType=Normal;TargetName={IQN};\
         HeaderDigest=CRC32C;DataDigest=CRC32C"
    )))
    .unwrap();
    let mut hdr = [0u8; 48];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!((hdr[36], hdr[37]), (0, 0), "login failed");
    assert_eq!(
        hdr[1] & 0x83,
        0x83,
        "login did not reach full feature phase"
    );
    let dsl = u32::from_be_bytes([0, hdr[5], hdr[6], hdr[7]]) as usize;
    let mut data = vec![0u8; dsl.div_ceil(4) * 4];
    s.read_exact(&mut data).unwrap();
    let text = String::from_utf8_lossy(&data);
    assert!(text.contains("HeaderDigest=CRC32C"), "{text}");
    s
}

/// A NOP-Out (ITT 0x10, CmdSN 1) with 4 bytes of data, header and data digests.
pub(super) fn nop_out(bad_header: bool, bad_data: bool) -> Vec<u8> {
    use rspdk_iscsi::pdu::crc32c;
    let mut b = vec![0u8; 48];
    b[0] = 0x40;
    b[1] = 0x80;
    b[7] = 4;
    b[16..20].copy_from_slice(&0x10u32.to_be_bytes());
    b[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
    b[24..28].copy_from_slice(&1u32.to_be_bytes());
    let hd = crc32c(&b) ^ u32::from(bad_header);
    b.extend_from_slice(&hd.to_le_bytes());
    let data = [1u8, 2, 3, 4];
    b.extend_from_slice(&data);
    let dd = crc32c(&data) ^ u32::from(bad_data);
    b.extend_from_slice(&dd.to_le_bytes());
    b
}

#[test]
pub(super) fn digests_checked() {
    let t = start(512);
    // Good digests: NOP-In echoes the data.
    let mut s = login_with_digests(t.port, "iqn.2026-01.io.rspdk:digest1");
    s.write_all(&nop_out(false, false)).unwrap();
    let mut r = [0u8; 48 + 4 + 4 + 4];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[0] & 0x3f, 0x20, "expected NOP-In");
    assert_eq!(&r[52..56], &[1, 2, 3, 4]);
    // A bad data digest: Reject (reason 02h), the connection goes on.
    s.write_all(&nop_out(false, true)).unwrap();
    // Reject: header + header digest + the rejected header + data digest.
    let mut r = [0u8; 48 + 4 + 48 + 4];
    s.read_exact(&mut r).unwrap();
    assert_eq!(
        (r[0] & 0x3f, r[2]),
        (0x3f, 0x02),
        "expected Reject (data digest)"
    );
    // A bad header digest: the connection is closed.
    // (Another initiator: the same one would reinstate, closing the first session.)
    let mut s2 = login_with_digests(t.port, "iqn.2026-01.io.rspdk:digest2");
    s2.write_all(&nop_out(true, false)).unwrap();
    let mut buf = [0u8; 64];
    let n = s2.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "connection not closed after a header digest error");
    // The first connection still works.
    s.write_all(&nop_out(false, false)).unwrap();
    let mut r = [0u8; 48 + 4 + 4 + 4];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[0] & 0x3f, 0x20);
}

#[test]
pub(super) fn nop_in_keepalive() {
    let t = start_with(
        512,
        vec![json!({"method": "iscsi_set_options",
            "params": {"nop_in_interval": 1, "nop_timeout": 2}})],
    );
    let mut s = TcpStream::connect(("127.0.0.1", t.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&login_pdu(&format!(
        "InitiatorName=iqn.2026-01.io.rspdk:nop;SessionType=Normal;TargetName={IQN}"
    )))
    .unwrap();
    let mut hdr = [0u8; 48];
    s.read_exact(&mut hdr).unwrap();
    let dsl = u32::from_be_bytes([0, hdr[5], hdr[6], hdr[7]]) as usize;
    let mut data = vec![0u8; dsl.div_ceil(4) * 4];
    s.read_exact(&mut data).unwrap();
    // An idle initiator gets a NOP-In ping (ITT ffffffffh, a real TTT) ...
    let t0 = std::time::Instant::now();
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(hdr[0] & 0x3f, 0x20, "expected NOP-In");
    assert_eq!(&hdr[16..20], &[0xff; 4]);
    assert_ne!(&hdr[20..24], &[0xff; 4]);
    // ... and, not answering, is disconnected after nop_timeout.
    let mut buf = [0u8; 48];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "still connected");
    assert!(t0.elapsed() < Duration::from_secs(8));
}

/// Random and mutated PDUs on a logged-in connection: the target may reject
/// or drop that connection, but never crashes or stops serving others.
#[test]
pub(super) fn random_pdus_after_login() {
    let t = start(512);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", t.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s.write_all(&login_pdu(&format!(
            "InitiatorName=iqn.2026-01.io.rspdk:fuzz{round};SessionType=Normal;TargetName={IQN}"
        )))
        .unwrap();
        let mut wire = Vec::new();
        for _ in 0..200 {
            let mut b = vec![0u8; 48];
            for x in b.iter_mut() {
                *x = rnd() as u8;
            }
            // Mostly plausible headers: a real opcode, no AHS, short data.
            let ops = [0x00u8, 0x01, 0x02, 0x04, 0x05, 0x06, 0x10, 0x1c];
            b[0] = ops[(rnd() % ops.len() as u64) as usize] | (rnd() as u8 & 0x40);
            b[4] = if rnd() % 8 == 0 { 1 } else { 0 };
            let dsl = (rnd() % 80) as usize;
            b[5] = 0;
            b[6] = 0;
            b[7] = dsl as u8;
            wire.extend_from_slice(&b);
            for _ in 0..(dsl + b[4] as usize * 4).div_ceil(4) * 4 {
                wire.push(rnd() as u8);
            }
        }
        let _ = s.write_all(&wire);
        let mut sink = [0u8; 65536];
        while let Ok(n) = s.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
    }
    // Still serving, on every poll group (connections go round robin).
    for i in 0..4 {
        assert_eq!(
            login_status(
                t.port,
                &login_pdu(&format!(
                    "InitiatorName=iqn.2026-01.io.rspdk:after{i};SessionType=Normal;TargetName={IQN}"
                ))
            ),
            Some((0, 0))
        );
    }
    assert!(ok(&t.sock, "iscsi_get_target_nodes", None)[0]["name"] == json!(IQN));
}
