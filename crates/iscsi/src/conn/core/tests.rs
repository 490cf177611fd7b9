//! The connection core in process: an initiator written against the
//! typed BHS drives a [`Loopback`] (no socket, no bdev) through login,
//! text, NOP, SCSI READ/WRITE with immediate data, unsolicited Data-Out
//! and R2T, digests, rejects, task management and logout.

use std::sync::atomic::{AtomicU32, Ordering};

use super::State;
use crate::pdu::{op, reject, Bhs, Parsed, Pdu};
use crate::target::{with_registry, Auth, AuthGroup, ChapSecret};
use crate::testing::{register_target, Loopback};
use crate::text::{emit_text, parse_text, TargetLimits};

const NO_TAG: u32 = 0xffff_ffff;
const INITIATOR: &str = "iqn.2026-01.io.rspdk:unit";

/// A fresh portal group tag and target name per test (the registry is
/// shared by the tests of the process).
fn fresh_target(auth: Auth) -> (u32, String) {
    static NEXT: AtomicU32 = AtomicU32::new(5000);
    let tag = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("iqn.2026-01.io.rspdk:unit{tag}");
    register_target(&name, tag, auth);
    (tag, name)
}

fn no_auth() -> Auth {
    Auth {
        disable_chap: true,
        require_chap: false,
        mutual_chap: false,
        chap_group: 0,
    }
}

fn kv(pairs: &[(&str, &str)]) -> Vec<u8> {
    let v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    emit_text(&v)
}

fn keys(p: &Pdu) -> Vec<(String, String)> {
    parse_text(&p.data).unwrap()
}

fn key(p: &Pdu, k: &str) -> Option<String> {
    keys(p).into_iter().find(|(kk, _)| kk == k).map(|(_, v)| v)
}

/// The initiator side.
struct Ini {
    lb: Loopback,
    hd: bool,
    dd: bool,
    cmd_sn: u32,
    exp_stat_sn: u32,
}

impl Ini {
    fn new(pg_tag: u32) -> Ini {
        Ini::with(Loopback::new(pg_tag))
    }

    fn with(lb: Loopback) -> Ini {
        Ini {
            lb,
            hd: false,
            dd: false,
            cmd_sn: 1,
            exp_stat_sn: 0,
        }
    }

    fn bytes(&self, b: &Bhs, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Pdu::new(*b, data.to_vec()).emit(&mut out, self.hd, self.dd);
        out
    }

    fn parse_all(&self, mut out: &[u8]) -> Vec<Pdu> {
        let mut v = Vec::new();
        while !out.is_empty() {
            match Pdu::parse(out, self.hd, self.dd, 1 << 24).unwrap() {
                Parsed::Pdu(p, n) => {
                    v.push(p);
                    out = &out[n..];
                }
                Parsed::Incomplete(_) => panic!("partial PDU in the output"),
            }
        }
        v
    }

    /// Sends a PDU; returns the PDUs the target answered with.
    fn send(&mut self, b: Bhs, data: &[u8]) -> Vec<Pdu> {
        let wire = self.bytes(&b, data);
        let out = self.lb.feed(&wire);
        let v = self.parse_all(&out);
        if let Some(last) = v.last() {
            self.exp_stat_sn = last.bhs.stat_sn().wrapping_add(1);
        }
        v
    }

    /// A request header with the next CmdSN (not advanced for immediate).
    fn req(&mut self, opcode: u8, flags: u8, itt: u32, immediate: bool) -> Bhs {
        let mut b = Bhs::new(opcode, flags);
        b.set_immediate(immediate);
        b.set_itt(itt);
        b.set_cmd_sn(self.cmd_sn);
        b.set_exp_stat_sn(self.exp_stat_sn);
        if !immediate {
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        b
    }

    fn login_pdu(&mut self, flags: u8, tsih: u16, pairs: &[(&str, &str)]) -> Vec<Pdu> {
        let mut b = Bhs::new(op::LOGIN_REQ, flags);
        b.set_immediate(true);
        b.set_isid([0x80, 0, 0, 0, 0, 1]);
        b.set_tsih(tsih);
        b.set_itt(0x10);
        b.set_cid(1);
        b.set_cmd_sn(self.cmd_sn);
        b.set_exp_stat_sn(self.exp_stat_sn);
        self.send(b, &kv(pairs))
    }

    /// A normal session login without authentication, straight from the
    /// security stage to the full feature phase through the operational
    /// one, with `extra` operational keys. Returns the final response.
    fn login(&mut self, target: &str, extra: &[(&str, &str)]) -> Pdu {
        let r = self.login_pdu(
            0x81,
            0,
            &[
                ("InitiatorName", INITIATOR),
                ("SessionType", "Normal"),
                ("TargetName", target),
                ("AuthMethod", "None"),
            ],
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].bhs.login_status(), (0, 0), "{:?}", keys(&r[0]));
        let r = self.login_pdu(0x87, 0, extra).remove(0);
        assert_eq!(r.bhs.login_status(), (0, 0), "{:?}", keys(&r));
        assert_eq!(r.bhs.flags(), 0x87);
        self.hd = key(&r, "HeaderDigest").as_deref() == Some("CRC32C");
        self.dd = key(&r, "DataDigest").as_deref() == Some("CRC32C");
        assert_eq!(self.lb.core.state(), State::FullFeature);
        r
    }

    fn scsi(&mut self, itt: u32, cdb: &[u8], rw: (bool, bool), edtl: u32, imm: &[u8]) -> Vec<Pdu> {
        let flags = 0x80 | if rw.0 { 0x40 } else { 0 } | if rw.1 { 0x20 } else { 0 };
        let mut b = self.req(op::SCSI_CMD, flags, itt, false);
        b.set_lun(0);
        b.set_edtl(edtl);
        b.set_cdb(cdb);
        self.send(b, imm)
    }

    fn data_out(
        &mut self,
        itt: u32,
        ttt: u32,
        data_sn: u32,
        off: u32,
        data: &[u8],
        last: bool,
    ) -> Vec<Pdu> {
        let mut b = Bhs::new(op::DATA_OUT, if last { 0x80 } else { 0 });
        b.set_itt(itt);
        b.set_ttt(ttt);
        b.set_exp_stat_sn(self.exp_stat_sn);
        b.set_data_sn(data_sn);
        b.set_buffer_offset(off);
        self.send(b, data)
    }
}

fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0x28, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn login_security_operational_full_feature() {
    let (pg, target) = fresh_target(no_auth());
    let mut ini = Ini::new(pg);
    let r = ini.login_pdu(
        0x81,
        0,
        &[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Normal"),
            ("TargetName", &target),
            ("AuthMethod", "None"),
        ],
    );
    let r = &r[0];
    assert_eq!(r.bhs.opcode(), op::LOGIN_RESP);
    assert_eq!(r.bhs.flags(), 0x81, "transit from security to operational");
    assert_eq!(r.bhs.itt(), 0x10);
    assert_eq!(r.bhs.isid(), [0x80, 0, 0, 0, 0, 1]);
    assert_eq!(key(r, "AuthMethod").as_deref(), Some("None"));
    assert_eq!(key(r, "TargetPortalGroupTag"), Some(pg.to_string()));
    assert_eq!(ini.lb.core.state(), State::Login);
    let r = ini.login_pdu(0x87, 0, &[("MaxRecvDataSegmentLength", "16384")]);
    let r = &r[0];
    assert_eq!(r.bhs.flags(), 0x87);
    assert_eq!(r.bhs.login_status(), (0, 0));
    assert_ne!(r.bhs.tsih(), 0, "a new session has a TSIH");
    assert_eq!(ini.lb.core.state(), State::FullFeature);
    assert!(crate::connections()
        .iter()
        .any(|c| c.target_node_name == target && c.state == "running"));
}

#[test]
fn login_text_spread_over_pdus_with_the_continue_bit() {
    let (pg, target) = fresh_target(no_auth());
    let mut ini = Ini::new(pg);
    let r = ini.login_pdu(0x40, 0, &[("InitiatorName", INITIATOR)]);
    assert_eq!(r[0].bhs.login_status(), (0, 0));
    assert!(r[0].data.is_empty(), "a partial text is answered empty");
    let r = ini.login_pdu(0x81, 0, &[("TargetName", &target), ("AuthMethod", "None")]);
    assert_eq!(r[0].bhs.login_status(), (0, 0));
    assert_eq!(r[0].bhs.flags(), 0x81);
}

#[test]
fn bad_logins_get_the_right_status() {
    let (pg, target) = fresh_target(no_auth());
    type Case<'a> = (u8, Vec<(&'a str, &'a str)>, (u8, u8));
    let cases: Vec<Case> = vec![
        // No such target: not found.
        (
            0x81,
            vec![
                ("InitiatorName", INITIATOR),
                ("TargetName", "iqn.2026-01.io.rspdk:none"),
            ],
            (2, 3),
        ),
        // No InitiatorName: missing parameter.
        (0x81, vec![("TargetName", &target)], (2, 7)),
        // Normal session without TargetName: missing parameter.
        (0x81, vec![("InitiatorName", INITIATOR)], (2, 7)),
        // An unknown SessionType: initiator error.
        (
            0x81,
            vec![("InitiatorName", INITIATOR), ("SessionType", "Bogus")],
            (2, 0),
        ),
        // Transit and continue together: initiator error.
        (
            0xc1,
            vec![("InitiatorName", INITIATOR), ("TargetName", &target)],
            (2, 0),
        ),
        // CSG 2 (reserved): initiator error.
        (
            0x88,
            vec![("InitiatorName", INITIATOR), ("TargetName", &target)],
            (2, 0),
        ),
        // No common AuthMethod: authentication failure.
        (
            0x81,
            vec![
                ("InitiatorName", INITIATOR),
                ("TargetName", &target),
                ("AuthMethod", "SRP"),
            ],
            (2, 1),
        ),
    ];
    for (flags, pairs, want) in cases {
        let mut ini = Ini::new(pg);
        let r = ini.login_pdu(flags, 0, &pairs);
        assert_eq!(r.len(), 1, "{pairs:?}");
        assert_eq!(r[0].bhs.login_status(), want, "{pairs:?}");
        assert_ne!(ini.lb.core.state(), State::FullFeature);
        // A failed login closes the connection once the response is out.
        assert_eq!(ini.lb.core.state(), State::Closed, "{pairs:?}");
    }
    // Version-Min above ours: unsupported version.
    let mut ini = Ini::new(pg);
    let mut b = Bhs::new(op::LOGIN_REQ, 0x81);
    b.set_versions(1, 1);
    let r = ini.send(b, &kv(&[("InitiatorName", INITIATOR)]));
    assert_eq!(r[0].bhs.login_status(), (2, 5));
    // A session that does not exist (TSIH set): session does not exist.
    let mut ini = Ini::new(pg);
    let r = ini.login_pdu(
        0x81,
        0x7777,
        &[
            ("InitiatorName", INITIATOR),
            ("TargetName", &target),
            ("AuthMethod", "None"),
        ],
    );
    assert_eq!(r[0].bhs.login_status(), (2, 0x0a));
    // A PDU other than a login during login closes the connection unanswered.
    let mut ini = Ini::new(pg);
    let b = ini.req(op::NOP_OUT, 0x80, 1, true);
    assert!(ini.send(b, &[]).is_empty());
    assert_eq!(ini.lb.core.state(), State::Closed);
}

fn chap_target(secret: &str) -> (u32, String) {
    let group = 7000 + fresh_target(no_auth()).0 as i32;
    with_registry(|r| {
        r.auth_groups.insert(
            group,
            AuthGroup {
                tag: group,
                secrets: vec![ChapSecret {
                    user: "user".into(),
                    secret: secret.into(),
                    muser: None,
                    msecret: None,
                }],
            },
        )
    });
    fresh_target(Auth {
        disable_chap: false,
        require_chap: true,
        mutual_chap: false,
        chap_group: group,
    })
}

/// Runs CHAP with `secret`; returns the final login response.
fn chap_login(ini: &mut Ini, target: &str, secret: &str) -> Pdu {
    let r = ini.login_pdu(
        0x01,
        0,
        &[
            ("InitiatorName", INITIATOR),
            ("TargetName", target),
            ("AuthMethod", "CHAP,None"),
        ],
    );
    assert_eq!(r[0].bhs.login_status(), (0, 0));
    assert_eq!(key(&r[0], "AuthMethod").as_deref(), Some("CHAP"));
    let r = ini.login_pdu(0x01, 0, &[("CHAP_A", "5")]);
    let id: u8 = key(&r[0], "CHAP_I").unwrap().parse().unwrap();
    let c = crate::chap::from_hex(&key(&r[0], "CHAP_C").unwrap()).unwrap();
    assert_eq!(key(&r[0], "CHAP_A").as_deref(), Some("5"));
    let resp = crate::chap::to_hex(&crate::chap::response(id, secret.as_bytes(), &c));
    ini.login_pdu(0x81, 0, &[("CHAP_N", "user"), ("CHAP_R", &resp)])
        .remove(0)
}

#[test]
fn chap_login_passes_with_the_secret_and_fails_without() {
    let (pg, target) = chap_target("secret-of-12-bytes");
    let mut ini = Ini::new(pg);
    let r = chap_login(&mut ini, &target, "secret-of-12-bytes");
    assert_eq!(r.bhs.login_status(), (0, 0));
    assert_eq!(
        r.bhs.flags(),
        0x81,
        "authenticated: on to the operational stage"
    );
    let r = ini.login_pdu(0x87, 0, &[]);
    assert_eq!(r[0].bhs.login_status(), (0, 0));
    assert_eq!(ini.lb.core.state(), State::FullFeature);

    let mut ini = Ini::new(pg);
    let r = chap_login(&mut ini, &target, "the-wrong-secret!!");
    assert_eq!(r.bhs.login_status(), (2, 1), "authentication failure");
    assert_eq!(ini.lb.core.state(), State::Closed);

    // CHAP required: AuthMethod=None alone fails.
    let mut ini = Ini::new(pg);
    let r = ini.login_pdu(
        0x81,
        0,
        &[
            ("InitiatorName", INITIATOR),
            ("TargetName", &target),
            ("AuthMethod", "None"),
        ],
    );
    assert_eq!(r[0].bhs.login_status(), (2, 1));
}

#[test]
fn discovery_session_send_targets() {
    let (pg, target) = fresh_target(no_auth());
    let mut ini = Ini::new(pg);
    let r = ini.login_pdu(
        0x87,
        0,
        &[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ],
    );
    // Security straight to full feature: the target stops at operational
    // only if authentication is not done; with None it is.
    assert_eq!(r[0].bhs.login_status(), (0, 0));
    if ini.lb.core.state() != State::FullFeature {
        let r = ini.login_pdu(0x87, 0, &[]);
        assert_eq!(r[0].bhs.login_status(), (0, 0));
    }
    assert_eq!(ini.lb.core.state(), State::FullFeature);
    let b = ini.req(op::TEXT_REQ, 0x80, 0x20, false);
    let r = ini.send(b, &kv(&[("SendTargets", "All")]));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].bhs.opcode(), op::TEXT_RESP);
    assert_eq!(r[0].bhs.itt(), 0x20);
    assert!(r[0].bhs.final_bit());
    assert!(keys(&r[0]).contains(&("TargetName".to_string(), target.clone())));
    // SCSI commands have no place in a discovery session.
    let r = ini.scsi(1, &read10(0, 1), (true, false), 512, &[]);
    assert_eq!(r[0].bhs.opcode(), op::REJECT);
    assert_eq!(r[0].bhs.reject_reason(), reject::NOT_SUPPORTED);
}

#[test]
fn nop_out_is_answered_and_idle_initiators_are_pinged() {
    let (pg, target) = fresh_target(no_auth());
    let mut ini = Ini::with(Loopback::with_limits(pg, TargetLimits::default(), 5, 10));
    ini.login(&target, &[]);
    let b = ini.req(op::NOP_OUT, 0x80, 0x33, false);
    let mut b = b;
    b.set_ttt(NO_TAG);
    let r = ini.send(b, b"ping data");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].bhs.opcode(), op::NOP_IN);
    assert_eq!(r[0].bhs.itt(), 0x33);
    assert_eq!(r[0].bhs.ttt(), NO_TAG);
    assert_eq!(r[0].data, b"ping data");
    assert_eq!(r[0].bhs.exp_cmd_sn(), ini.cmd_sn);
    // ITT 0xffffffff: no answer wanted.
    let mut b = ini.req(op::NOP_OUT, 0x80, NO_TAG, true);
    b.set_ttt(NO_TAG);
    assert!(ini.send(b, &[]).is_empty());
    // Idle for more than the interval: a NOP-In ping with a TTT.
    ini.lb.now_ns += 6_000_000_000;
    let out = ini.lb.run();
    let r = ini.parse_all(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].bhs.opcode(), op::NOP_IN);
    assert_eq!(r[0].bhs.itt(), NO_TAG);
    assert_ne!(r[0].bhs.ttt(), NO_TAG);
    // No answer within the timeout: closed.
    ini.lb.now_ns += 11_000_000_000;
    ini.lb.run();
    assert_eq!(ini.lb.core.state(), State::Closed);
}

#[test]
fn scsi_read_returns_data_in_with_status() {
    let (pg, target) = fresh_target(no_auth());
    let mut ini = Ini::new(pg);
    ini.login(&target, &[("MaxRecvDataSegmentLength", "4096")]);
    let data = pattern(16 * 512, 3);
    ini.lb.lun.data[512 * 10..512 * 26].copy_from_slice(&data);
    let r = ini.scsi(5, &read10(10, 16), (true, false), 8192, &[]);
    // 8 KiB in Data-In PDUs of at most 4 KiB (the initiator's limit),
    // status in the last (phase collapse).
    assert_eq!(r.len(), 2);
    let mut got = Vec::new();
    for (i, p) in r.iter().enumerate() {
        assert_eq!(p.bhs.opcode(), op::DATA_IN);
        assert_eq!(p.bhs.itt(), 5);
        assert_eq!(p.bhs.data_sn(), i as u32);
        assert_eq!(p.bhs.buffer_offset() as usize, got.len());
        got.extend_from_slice(&p.data);
    }
    assert_eq!(got, data);
    let last = &r[1].bhs;
    assert_eq!(last.flags() & 0x81, 0x81, "final, with status");
    assert_eq!(last.status(), 0);
    // A shorter expected length: underflow... of the initiator's buffer
    // is an overflow residual.
    let r = ini.scsi(6, &read10(10, 2), (true, false), 512, &[]);
    let last = &r.last().unwrap().bhs;
    assert_eq!(last.flags() & 0x04, 0x04, "overflow");
    assert_eq!(last.residual_count(), 512);
    // Out of range: CHECK CONDITION in a SCSI Response with sense data.
    let r = ini.scsi(7, &read10(1 << 30, 1), (true, false), 512, &[]);
    assert_eq!(r[0].bhs.opcode(), op::SCSI_RESP);
    assert_eq!(r[0].bhs.status(), 2);
    assert_eq!(r[0].data[2 + 12], 0x21, "LBA out of range");
}

#[test]
fn scsi_write_with_immediate_data() {
    let (pg, target) = fresh_target(no_auth());
    let mut ini = Ini::new(pg);
    ini.login(&target, &[("ImmediateData", "Yes")]);
    let data = pattern(1024, 9);
    let r = ini.scsi(1, &write10(4, 2), (false, true), 1024, &data);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].bhs.opcode(), op::SCSI_RESP);
    assert_eq!((r[0].bhs.response(), r[0].bhs.status()), (0, 0));
    assert_eq!(r[0].bhs.itt(), 1);
    assert_eq!(&ini.lb.lun.data[2048..3072], &data[..]);
}

#[test]
fn scsi_write_solicited_with_r2t() {
    let (pg, target) = fresh_target(no_auth());
    let mut ini = Ini::new(pg);
    ini.login(&target, &[("ImmediateData", "Yes"), ("InitialR2T", "Yes")]);
    let data = pattern(8192, 1);
    // 512 bytes immediate, the rest solicited.
    let r = ini.scsi(2, &write10(0, 16), (false, true), 8192, &data[..512]);
    assert_eq!(r.len(), 1);
    let r2t = &r[0].bhs;
    assert_eq!(r2t.opcode(), op::R2T);
    assert_eq!(r2t.itt(), 2);
    assert_eq!(r2t.data_sn(), 0, "R2TSN");
    assert_eq!(r2t.buffer_offset(), 512);
    assert_eq!(r2t.desired_len(), 8192 - 512);
    let ttt = r2t.ttt();
    assert_ne!(ttt, NO_TAG);
    // A Data-Out with the wrong DataSN is a protocol error.
    let r = ini.data_out(2, ttt, 1, 512, &data[512..1024], false);
    assert_eq!(r[0].bhs.opcode(), op::REJECT);
    assert_eq!(r[0].bhs.reject_reason(), reject::PROTOCOL_ERROR);
    // In two Data-Outs, the second final: then the response.
    assert!(ini
        .data_out(2, ttt, 0, 512, &data[512..4096], false)
        .is_empty());
    let r = ini.data_out(2, ttt, 1, 4096, &data[4096..], true);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].bhs.opcode(), op::SCSI_RESP);
    assert_eq!(r[0].bhs.status(), 0);
    assert_eq!(&ini.lb.lun.data[..8192], &data[..]);
}

#[test]
fn scsi_write_with_unsolicited_data_out() {
    let (pg, target) = fresh_target(no_auth());
    // InitialR2T is an OR: the target must offer No too.
    let limits = TargetLimits {
        initial_r2t: false,
        ..TargetLimits::default()
    };
    let mut ini = Ini::with(Loopback::with_limits(pg, limits, 0, 0));
    let r = ini.login(
        &target,
        &[("InitialR2T", "No"), ("FirstBurstLength", "8192")],
    );
    assert_eq!(key(&r, "InitialR2T").as_deref(), Some("No"));
    let data = pattern(4096, 5);
    // No immediate data, all of it unsolicited (TTT 0xffffffff).
    assert!(ini
        .scsi(3, &write10(8, 8), (false, true), 4096, &[])
        .is_empty());
    assert!(ini
        .data_out(3, NO_TAG, 0, 0, &data[..2048], false)
        .is_empty());
    let r = ini.data_out(3, NO_TAG, 1, 2048, &data[2048..], true);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].bhs.opcode(), op::SCSI_RESP);
    assert_eq!(r[0].bhs.status(), 0);
    assert_eq!(&ini.lb.lun.data[4096..8192], &data[..]);
}

#[test]
fn digests_are_used_and_checked() {
    let (pg, target) = fresh_target(no_auth());
    let mut ini = Ini::new(pg);
    let r = ini.login(
        &target,
        &[
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "CRC32C,None"),
        ],
    );
    assert_eq!(key(&r, "HeaderDigest").as_deref(), Some("CRC32C"));
    assert!(ini.hd && ini.dd);
    // Round trip with both digests (the answer parses with them).
    let mut b = ini.req(op::NOP_OUT, 0x80, 0x44, false);
    b.set_ttt(NO_TAG);
    let r = ini.send(b, b"abcd");
    assert_eq!(
        (r[0].bhs.opcode(), r[0].data.as_slice()),
        (op::NOP_IN, &b"abcd"[..])
    );
    // A bad data digest: Reject (data digest error), the connection lives.
    let mut b = ini.req(op::NOP_OUT, 0x80, 0x45, true);
    b.set_ttt(NO_TAG);
    let mut wire = ini.bytes(&b, b"abcd");
    let n = wire.len();
    wire[n - 1] ^= 0xff;
    let out = ini.lb.feed(&wire);
    let r = ini.parse_all(&out);
    assert_eq!(r[0].bhs.opcode(), op::REJECT);
    assert_eq!(r[0].bhs.reject_reason(), reject::DATA_DIGEST);
    assert_eq!(ini.lb.core.state(), State::FullFeature);
    // A bad header digest: the connection closes.
    let mut wire = ini.bytes(&b, b"abcd");
    wire[48] ^= 0xff;
    assert!(ini.lb.feed(&wire).is_empty());
    assert_eq!(ini.lb.core.state(), State::Closed);
}

#[test]
fn bad_pdus_are_rejected() {
    let (pg, target) = fresh_target(no_auth());
    let mut ini = Ini::new(pg);
    ini.login(&target, &[]);
    let cases = [
        (Bhs::new(0x1f, 0x80), reject::NOT_SUPPORTED),
        (Bhs::new(op::SNACK, 0x80), reject::PROTOCOL_ERROR),
        (Bhs::new(op::LOGIN_REQ, 0x87), reject::PROTOCOL_ERROR),
    ];
    for (b, reason) in cases {
        let r = ini.send(b, &[]);
        assert_eq!(r.len(), 1, "{b:?}");
        assert_eq!(r[0].bhs.opcode(), op::REJECT);
        assert_eq!(r[0].bhs.reject_reason(), reason, "{b:?}");
        // The data segment is the rejected header.
        assert_eq!(&r[0].data[..], b.as_bytes());
    }
    // Data-Out for a task that does not exist.
    let r = ini.data_out(0x99, 5, 0, 0, &[0; 512], true);
    assert_eq!(r[0].bhs.reject_reason(), reject::INVALID_FIELD);
    // Immediate data on a READ: protocol error.
    let r = ini.scsi(9, &read10(0, 1), (true, false), 512, &[0; 512]);
    assert_eq!(r[0].bhs.reject_reason(), reject::PROTOCOL_ERROR);
    // An ITT in use: task in progress.
    ini.lb.hold_tasks = true;
    assert!(ini
        .scsi(10, &read10(0, 1), (true, false), 512, &[])
        .is_empty());
    let r = ini.scsi(10, &read10(0, 1), (true, false), 512, &[]);
    assert_eq!(r[0].bhs.reject_reason(), reject::TASK_IN_PROGRESS);
    let out = ini.lb.release_held();
    let r = ini.parse_all(&out);
    assert_eq!(r[0].bhs.opcode(), op::DATA_IN);
    ini.lb.hold_tasks = false;
    assert_eq!(ini.lb.core.state(), State::FullFeature);
    // A data segment over our MaxRecvDataSegmentLength: Reject, closed.
    let mut b = ini.req(op::NOP_OUT, 0x80, 0x50, true);
    b.set_ttt(NO_TAG);
    let r = ini.send(b, &vec![0; 65536 + 4]);
    assert_eq!(r[0].bhs.reject_reason(), reject::PROTOCOL_ERROR);
    assert_eq!(ini.lb.core.state(), State::Closed);
}

#[test]
fn abort_task_waits_for_the_running_task() {
    let (pg, target) = fresh_target(no_auth());
    let mut ini = Ini::new(pg);
    ini.login(&target, &[]);
    ini.lb.hold_tasks = true;
    let read_sn = ini.cmd_sn;
    assert!(ini
        .scsi(1, &read10(0, 1), (true, false), 512, &[])
        .is_empty());
    let mut b = ini.req(op::TMF_REQ, 0x80 | 1, 0x100, true);
    b.set_ref_task_tag(1);
    b.set_ref_cmd_sn(read_sn);
    assert!(ini.send(b, &[]).is_empty(), "the TMF response waits");
    let out = ini.lb.release_held();
    let r = ini.parse_all(&out);
    assert_eq!(r.len(), 1, "the aborted READ gets no response");
    assert_eq!(r[0].bhs.opcode(), op::TMF_RESP);
    assert_eq!(r[0].bhs.itt(), 0x100);
    assert_eq!(r[0].bhs.response(), 0, "function complete");
}

#[test]
fn logout_closes_the_connection() {
    let (pg, target) = fresh_target(no_auth());
    let mut ini = Ini::new(pg);
    ini.login(&target, &[]);
    let mut b = ini.req(op::LOGOUT_REQ, 0x80, 0x77, true);
    b.set_cid(1);
    let r = ini.send(b, &[]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].bhs.opcode(), op::LOGOUT_RESP);
    assert_eq!(r[0].bhs.itt(), 0x77);
    assert_eq!(r[0].bhs.response(), 0);
    assert_eq!(ini.lb.core.state(), State::Closed);
    assert!(!crate::connections()
        .iter()
        .any(|c| c.target_node_name == target));
}

#[test]
fn bytes_split_anywhere_give_the_same_answers() {
    let (pg, target) = fresh_target(no_auth());
    let mut whole = Ini::new(pg);
    whole.login(&target, &[]);
    let mut split = Ini::new(pg);
    let mut wire = Vec::new();
    let login1 = {
        let mut b = Bhs::new(op::LOGIN_REQ, 0x87);
        b.set_immediate(true);
        b.set_isid([0x80, 0, 0, 0, 0, 2]);
        b.set_itt(1);
        b
    };
    wire.extend(split.bytes(
        &login1,
        &kv(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", &target),
            ("AuthMethod", "None"),
        ]),
    ));
    let mut nop = Bhs::new(op::NOP_OUT, 0x80);
    nop.set_itt(2);
    nop.set_ttt(NO_TAG);
    nop.set_cmd_sn(1);
    wire.extend(split.bytes(&nop, b"xyz"));
    let mut out = Vec::new();
    for chunk in wire.chunks(7) {
        out.extend(split.lb.feed(chunk));
    }
    let r = split.parse_all(&out);
    let ops: Vec<u8> = r.iter().map(|p| p.bhs.opcode()).collect();
    assert!(ops.starts_with(&[op::LOGIN_RESP]), "{ops:02x?}");
    assert_eq!(r.last().unwrap().bhs.opcode(), op::NOP_IN);
    assert_eq!(r.last().unwrap().data, b"xyz");
}
