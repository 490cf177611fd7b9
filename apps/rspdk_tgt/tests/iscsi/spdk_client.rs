//! SPDK's own client on the iSCSI methods, names and save_config.

use super::*;

/// SPDK's own client (`scripts/spdk-client` installs it in the workspace's
/// target/spdk-venv): runs `spdk-rpc -s SOCK ARGS`, returns (success,
/// stdout + stderr). Fails, never skips, when the client is missing.
pub(super) fn spdk_rpc(sock: &std::path::Path, args: &[&str]) -> (bool, String) {
    let rpc = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/spdk-venv/bin/spdk-rpc"
    );
    assert!(
        std::path::Path::new(rpc).exists(),
        "{rpc} is missing: run scripts/spdk-client (.ci/run does)"
    );
    let out = Command::new("timeout")
        .args(["60", rpc, "-s"])
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    let s =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), s)
}

/// [`spdk_rpc`] that must succeed; returns its output as JSON (or Null).
pub(super) fn spdk_ok(sock: &std::path::Path, args: &[&str]) -> Value {
    let (ok, out) = spdk_rpc(sock, args);
    assert!(ok, "spdk-rpc {args:?} failed: {out}");
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

/// The iscsi subsystem's entries of a save_config.
pub(super) fn saved_iscsi(sock: &std::path::Path) -> (Value, Vec<Value>) {
    let saved = ok(sock, "save_config", None);
    let iscsi = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["subsystem"] == "iscsi")
        .unwrap()["config"]
        .as_array()
        .unwrap()
        .clone();
    (saved, iscsi)
}

/// Starts another target with `cfg` (a save_config) on `port`.
pub(super) fn restart_with(cfg: &Value, port: u16) -> Tgt {
    Tgt::spawn(tempfile::tempdir().unwrap(), port, cfg, &[])
}

/// The auth group, initiator group, map, CHAP and portal group methods
/// SPDK's client sends (`spdk-rpc`, unchanged), their effect on logins,
/// and save_config carrying them to a new target.
#[test]
pub(super) fn spdk_client_auth_and_group_methods() {
    require("iscsi-ls", "libiscsi-bin");
    let t = start(512);
    let s = t.sock.as_path();
    // Auth groups and their secrets.
    spdk_ok(
        s,
        &[
            "iscsi_create_auth_group",
            "5",
            "-c",
            "user:u1 secret:secret1",
        ],
    );
    spdk_ok(
        s,
        &[
            "iscsi_auth_group_add_secret",
            "-u",
            "u2",
            "-s",
            "secret22",
            "-m",
            "tu",
            "-r",
            "tsecret22",
            "5",
        ],
    );
    let (ok_dup, out) = spdk_rpc(
        s,
        &["iscsi_auth_group_add_secret", "-u", "u2", "-s", "x", "5"],
    );
    assert!(!ok_dup && out.contains("already"), "{out}");
    spdk_ok(s, &["iscsi_auth_group_remove_secret", "-u", "u1", "5"]);
    let (ok_gone, out) = spdk_rpc(s, &["iscsi_auth_group_remove_secret", "-u", "u1", "5"]);
    assert!(!ok_gone && out.contains("no secret"), "{out}");
    assert_eq!(
        spdk_ok(s, &["iscsi_get_auth_groups"]),
        json!([{"tag": 5, "secrets": [{"user": "u2", "secret": "secret22", "muser": "tu", "msecret": "tsecret22"}]}])
    );
    spdk_ok(s, &["iscsi_create_auth_group", "6"]);
    spdk_ok(s, &["iscsi_delete_auth_group", "6"]);
    let (ok_gone, out) = spdk_rpc(s, &["iscsi_delete_auth_group", "6"]);
    assert!(!ok_gone && out.contains("no auth group 6"), "{out}");

    // Initiator groups: add and remove initiators and netmasks.
    spdk_ok(
        s,
        &[
            "iscsi_create_initiator_group",
            "3",
            "iqn.2026-01.io.rspdk:a",
            "10.0.0.0/8",
        ],
    );
    spdk_ok(
        s,
        &[
            "iscsi_initiator_group_add_initiators",
            "-n",
            "iqn.2026-01.io.rspdk:b ANY",
            "-m",
            "127.0.0.1/32",
            "3",
        ],
    );
    spdk_ok(
        s,
        &[
            "iscsi_initiator_group_remove_initiators",
            "-n",
            "iqn.2026-01.io.rspdk:a",
            "-m",
            "10.0.0.0/8",
            "3",
        ],
    );
    let igs = ok(s, "iscsi_get_initiator_groups", None);
    let ig3 = igs
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["tag"] == 3)
        .unwrap();
    assert_eq!(ig3["initiators"], json!(["iqn.2026-01.io.rspdk:b", "ANY"]));
    assert_eq!(ig3["netmasks"], json!(["127.0.0.1/32"]));
    let (ok_last, out) = spdk_rpc(
        s,
        &[
            "iscsi_initiator_group_remove_initiators",
            "-m",
            "127.0.0.1/32",
            "3",
        ],
    );
    assert!(
        !ok_last && out.contains("iscsi_delete_initiator_group"),
        "{out}"
    );

    // Maps: portal group 1 to initiator group 3 added, then removed.
    spdk_ok(s, &["iscsi_target_node_add_pg_ig_maps", IQN, "1:3"]);
    let (ok_dup, out) = spdk_rpc(s, &["iscsi_target_node_add_pg_ig_maps", IQN, "1:3"]);
    assert!(!ok_dup && out.contains("already"), "{out}");
    assert_eq!(
        ok(s, "iscsi_get_target_nodes", None)[0]["pg_ig_maps"],
        json!([{"pg_tag": 1, "ig_tag": 2}, {"pg_tag": 1, "ig_tag": 3}])
    );
    spdk_ok(s, &["iscsi_target_node_remove_pg_ig_maps", IQN, "1:2"]);
    let (ok_gone, out) = spdk_rpc(s, &["iscsi_target_node_remove_pg_ig_maps", IQN, "1:2"]);
    assert!(!ok_gone && out.contains("no map"), "{out}");
    // Initiator group 2 denied iqn...:denied; group 3 allows anyone now.
    let login = |name: &str| {
        login_status(
            t.port,
            &login_pdu(&format!(
                "InitiatorName={name};SessionType=Normal;TargetName={IQN}"
            )),
        )
    };
    assert_eq!(login("iqn.2026-01.io.rspdk:denied"), Some((0, 0)));

    // Target CHAP: required with auth group 5; a login without it fails.
    spdk_ok(s, &["iscsi_target_node_set_auth", "-g", "5", "-r", IQN]);
    let node = ok(s, "iscsi_get_target_nodes", None)[0].clone();
    assert_eq!(
        (
            &node["require_chap"],
            &node["chap_group"],
            &node["mutual_chap"]
        ),
        (&json!(true), &json!(5), &json!(false))
    );
    assert_eq!(
        login("iqn.2026-01.io.rspdk:x"),
        Some((2, 1)),
        "login without CHAP"
    );
    let (ok_bad, out) = spdk_rpc(s, &["iscsi_target_node_set_auth", "-m", IQN]);
    assert!(!ok_bad && out.contains("require_chap"), "{out}");

    // Discovery CHAP on portal group 1.
    spdk_ok(s, &["iscsi_portal_group_set_auth", "-g", "5", "-r", "1"]);
    let ls = |cred: &str| {
        Command::new("timeout")
            .args([
                "30",
                "iscsi-ls",
                "-s",
                &format!("iscsi://{cred}127.0.0.1:{}", t.port),
            ])
            .output()
            .unwrap()
    };
    assert!(!ls("").status.success(), "discovery without CHAP worked");
    let out = ls("u2%secret22@");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(IQN),
        "discovery with CHAP: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // save_config carries it all to a new target.
    let (saved, iscsi) = saved_iscsi(s);
    assert!(
        iscsi
            .iter()
            .any(|e| e["method"] == "iscsi_portal_group_set_auth"
                && e["params"]["require_chap"] == json!(true)),
        "{iscsi:?}"
    );
    let gets = |s: &std::path::Path| {
        [
            "iscsi_get_auth_groups",
            "iscsi_get_initiator_groups",
            "iscsi_get_target_nodes",
            "iscsi_get_portal_groups",
        ]
        .map(|m| ok(s, m, None))
    };
    let before = gets(s);
    let port = t.port;
    drop(t);
    let t2 = restart_with(&saved, port);
    assert_eq!(gets(&t2.sock), before);
    let out = Command::new("timeout")
        .args(["30", "iscsi-ls", "-s", &format!("iscsi://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success(), "discovery CHAP lost in save_config");

    // Unknown and missing params: errors naming them.
    let e = rpc(
        &t2.sock,
        "iscsi_target_node_set_auth",
        Some(json!({"name": IQN, "bogus": 1})),
    )
    .unwrap_err();
    assert!(e.message.contains("bogus"), "{e:?}");
    let e = rpc(
        &t2.sock,
        "iscsi_auth_group_add_secret",
        Some(json!({"tag": 5, "user": "u"})),
    )
    .unwrap_err();
    assert!(e.message.contains("secret"), "{e:?}");
}

/// `iscsi_create_portal_group --wait` binds but accepts no logins until
/// `iscsi_start_portal_group`; `iscsi_target_node_request_logout` sends the
/// Async Message; `iscsi_get_stats` and `scsi_get_devices` answer as SPDK's.
#[test]
pub(super) fn spdk_client_portal_start_logout_stats_devices() {
    let t = start(512);
    let s = t.sock.as_path();
    let port2 = free_port();
    spdk_ok(
        s,
        &[
            "iscsi_create_portal_group",
            "-w",
            "7",
            &format!("127.0.0.1:{port2}"),
        ],
    );
    spdk_ok(s, &["iscsi_target_node_add_pg_ig_maps", IQN, "7:2"]);
    let (_, iscsi) = saved_iscsi(s);
    let pg7 = iscsi
        .iter()
        .find(|e| e["method"] == "iscsi_create_portal_group" && e["params"]["tag"] == 7)
        .unwrap();
    assert_eq!(
        pg7["params"]["wait"],
        json!(true),
        "not started: saved with wait"
    );
    // The connection waits in the backlog: no login response yet.
    let mut c = TcpStream::connect(("127.0.0.1", port2)).unwrap();
    c.write_all(&login_pdu_at(
        &format!("InitiatorName=iqn.2026-01.io.rspdk:wait;SessionType=Normal;TargetName={IQN}"),
        0,
        0,
        1,
    ))
    .unwrap();
    c.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(
        c.peek(&mut b).is_err(),
        "a portal group created with wait answered before it was started"
    );
    spdk_ok(s, &["iscsi_start_portal_group", "7"]);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (h, _) = read_pdu(&mut c).expect("no login response after start");
    assert_eq!((h[36], h[37]), (0, 0), "login failed");
    let (ok_no, out) = spdk_rpc(s, &["iscsi_start_portal_group", "99"]);
    assert!(!ok_no && out.contains("no portal group 99"), "{out}");

    // Stats: one running connection (c), and another on portal group 1.
    let mut d = login_plain(t.port, "iqn.2026-01.io.rspdk:other");
    let stats = spdk_ok(s, &["iscsi_get_stats"]);
    assert_eq!(
        stats,
        json!({"invalid": 0, "running": 2, "exiting": 0, "exited": 0})
    );
    assert_eq!(
        spdk_ok(s, &["scsi_get_devices"]),
        json!([{"id": 0, "device_name": IQN}])
    );

    // Logout request through portal group 7 only: c gets the Async
    // Message (event 1, Parameter3 = seconds to log out), d nothing.
    spdk_ok(s, &["iscsi_target_node_request_logout", "-t", "7", IQN]);
    let (h, _) = read_pdu(&mut c).expect("no Async Message");
    assert_eq!(
        (h[0] & 0x3f, h[36]),
        (0x32, 1),
        "not a logout request: {h:02x?}"
    );
    assert_eq!(u16::from_be_bytes([h[42], h[43]]), 30);
    d.write_all(&nop_ping(0x33, 1)).unwrap();
    let (h, _) = read_pdu(&mut d).expect("no NOP-In");
    assert_eq!(
        h[0] & 0x3f,
        0x20,
        "portal group 1's connection got {h:02x?}"
    );
    // The initiator logs out as asked.
    c.write_all(&logout_pdu(9, 0, 0, 1)).unwrap();
    let (h, _) = read_pdu(&mut c).expect("no logout response");
    assert_eq!(h[0] & 0x3f, 0x26);
    let (ok_no, out) = spdk_rpc(s, &["iscsi_target_node_request_logout", "iqn.nope:x"]);
    assert!(!ok_no && out.contains("no target node"), "{out}");
    // A connection still logging in to the node (security stage, no
    // transit) is closed by a logout request for all portal groups.
    let mut l = TcpStream::connect(("127.0.0.1", t.port)).unwrap();
    l.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut p = login_pdu(&format!(
        "InitiatorName=iqn.2026-01.io.rspdk:slow;SessionType=Normal;TargetName={IQN};AuthMethod=None"
    ));
    p[1] = 0x01; // CSG 0, no transit
    l.write_all(&p).unwrap();
    let (h, _) = read_pdu(&mut l).expect("no login response");
    assert_eq!((h[0] & 0x3f, h[36], h[1] & 0x80), (0x23, 0, 0), "{h:02x?}");
    let listed = ok(s, "iscsi_get_connections", None);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["state"] == "invalid" && c["target_node_name"] == IQN),
        "{listed}"
    );
    spdk_ok(s, &["iscsi_target_node_request_logout", IQN]);
    assert!(read_pdu(&mut l).is_none(), "connection in login not closed");
    let (h, _) = read_pdu(&mut d).expect("no Async Message on portal group 1");
    assert_eq!((h[0] & 0x3f, h[36]), (0x32, 1));

    // The latency histogram: off, then on and counting READs, saved.
    let (ok_off, out) = spdk_rpc(s, &["iscsi_get_histogram", IQN]);
    assert!(!ok_off && out.contains("not enabled"), "{out}");
    spdk_ok(s, &["iscsi_enable_histogram", "--histogram", IQN]);
    for i in 0..10u32 {
        d.write_all(&scsi_rw(0x100 + i, 1 + i, i, None)).unwrap();
        let (h, _) = read_pdu(&mut d).expect("no READ answer");
        assert_eq!((h[0] & 0x3f, h[3]), (0x25, 0));
    }
    let hist = spdk_ok(s, &["iscsi_get_histogram", IQN]);
    assert_eq!(
        (
            &hist["granularity"],
            &hist["min_range"],
            &hist["max_range"],
            &hist["tsc_rate"]
        ),
        (&json!(7), &json!(0), &json!(57), &json!(1_000_000_000u64))
    );
    let bytes = base64_decode(hist["histogram"].as_str().unwrap());
    assert_eq!(bytes.len(), 58 * 128 * 8);
    let total: u64 = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .sum();
    assert_eq!(total, 10, "10 READs counted");
    let (_, iscsi) = saved_iscsi(s);
    assert!(
        iscsi.iter().any(|e| e["method"] == "iscsi_enable_histogram"
            && e["params"] == json!({"name": IQN, "enable": true})),
        "{iscsi:?}"
    );
    spdk_ok(s, &["iscsi_enable_histogram", "--no-histogram", IQN]);
    let (ok_off, _) = spdk_rpc(s, &["iscsi_get_histogram", IQN]);
    assert!(!ok_off, "histogram still on");
}

/// Decodes standard base64 (with padding).
pub(super) fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for q in s.as_bytes().chunks(4) {
        let n = q.iter().filter(|&&c| c != b'=').count();
        let mut v = 0u32;
        for (i, &c) in q.iter().enumerate() {
            if c != b'=' {
                v |= u32::from(val(c)) << (18 - 6 * i);
            }
        }
        out.extend_from_slice(&v.to_be_bytes()[1..n]);
    }
    out
}

/// Target names, initiator names and netmasks are checked: empty names,
/// spaces, newlines, control characters, names over 223 bytes and
/// malformed netmasks are refused with an error naming the problem, and
/// nothing is created.
#[test]
pub(super) fn names_and_netmasks_validated() {
    let t = start(512);
    let s = &t.sock;
    let long = format!("iqn.2026-01.io.rspdk:{}", "a".repeat(210));
    for name in [
        "",
        "bad name",
        "bad\nname",
        "bad\u{1}name",
        long.as_str(),
        "iqn.20x6-01.io.rspdk:x",
    ] {
        let e = rpc(
            s,
            "iscsi_create_target_node",
            Some(
                json!({"name": name, "alias_name": "", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
                "luns": [{"bdev_name": "Malloc0", "lun_id": 0}], "queue_depth": 8}),
            ),
        )
        .unwrap_err();
        assert_eq!(e.code, -22, "{name:?}: {e:?}");
        assert!(e.message.contains("target name"), "{name:?}: {e:?}");
    }
    let long = format!("iqn.2026-01.io.rspdk:{}", "b".repeat(210));
    for ini in ["", "!", "iqn.a b", "iqn.a\nb", "iqn.a\tb", long.as_str()] {
        let e = rpc(
            s,
            "iscsi_create_initiator_group",
            Some(json!({"tag": 9, "initiators": [ini], "netmasks": ["ANY"]})),
        )
        .unwrap_err();
        assert_eq!(e.code, -22, "{ini:?}: {e:?}");
        assert!(e.message.contains("initiator"), "{ini:?}: {e:?}");
    }
    for mask in [
        "",
        "bogus",
        "10.0.0.0/33",
        "10.0.0.0/",
        "10.0.0.0/0",
        "1.2.3",
        "[::1",
        "::1/129",
        "10.0.0.0/8 ",
    ] {
        let e = rpc(
            s,
            "iscsi_create_initiator_group",
            Some(json!({"tag": 9, "initiators": ["ANY"], "netmasks": [mask]})),
        )
        .unwrap_err();
        assert_eq!(e.code, -22, "{mask:?}: {e:?}");
        assert!(e.message.contains("netmask"), "{mask:?}: {e:?}");
        let e = rpc(
            s,
            "iscsi_initiator_group_add_initiators",
            Some(json!({"tag": 2, "netmasks": [mask]})),
        )
        .unwrap_err();
        assert!(e.message.contains("netmask"), "{mask:?}: {e:?}");
    }
    let e = rpc(
        s,
        "iscsi_initiator_group_add_initiators",
        Some(json!({"tag": 2, "initiators": ["two names"]})),
    )
    .unwrap_err();
    assert!(e.message.contains("initiator"), "{e:?}");
    assert_eq!(
        ok(s, "iscsi_get_target_nodes", None)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        ok(s, "iscsi_get_initiator_groups", None)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Good ones still go in.
    ok(
        s,
        "iscsi_create_initiator_group",
        Some(
            json!({"tag": 9, "initiators": ["ANY", "!iqn.2026-01.io.rspdk:x"],
            "netmasks": ["ANY", "10.0.0.0/8", "[fd00::]/64", "::1", "255.255.0.0"]}),
        ),
    );
}

/// A target node whose only LUN's bdev was deleted: save_config leaves it
/// out (iscsi_create_target_node needs a LUN), so the saved config loads in
/// a new target, which has the other node.
#[test]
pub(super) fn save_config_loads_after_last_lun_bdev_deleted() {
    let t = start(512);
    let s = &t.sock;
    ok(
        s,
        "bdev_malloc_create",
        Some(json!({"name": "Malloc9", "num_blocks": 2048, "block_size": 512})),
    );
    ok(
        s,
        "iscsi_create_target_node",
        Some(
            json!({"name": "gone", "alias_name": "", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
            "luns": [{"bdev_name": "Malloc9", "lun_id": 0}], "queue_depth": 8}),
        ),
    );
    ok(s, "bdev_malloc_delete", Some(json!({"name": "Malloc9"})));
    let (saved, _) = saved_iscsi(s);
    let port = t.port;
    drop(t);
    let t2 = restart_with(&saved, port);
    let names: Vec<Value> = ok(&t2.sock, "iscsi_get_target_nodes", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].clone())
        .collect();
    assert_eq!(names, [json!(IQN)]);
}
