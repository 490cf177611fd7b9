//! In-process tests of the connection core: each builds a [`Harness`] on
//! its own target, speaks NVMe/TCP to it as a host would and checks every
//! PDU that comes back.

use rspdk_nvme::spec::fabrics::Property;
use rspdk_nvme::spec::status::{command_specific, generic, Status};
use rspdk_nvme::spec::{
    cns, csts, ctrlr_field as cf, log_page, reg, AdminOpcode, Cqe, IdentifyController, IoOpcode,
    Sqe,
};

use super::harness::{in_capsule, transport_data, Harness, HostPdu, BLOCK_SIZE, HOSTNQN, NQN};
use crate::pdu::{fes, field, DataHeader, Digests, Pdu};

const SEC: u64 = 1_000_000_000;

fn st(c: &Cqe) -> Status {
    c.status()
}

fn resp(v: &[HostPdu]) -> Cqe {
    v.iter()
        .find_map(|p| match p {
            HostPdu::Resp(c) => Some(*c),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no response in {v:?}"))
}

fn c2h_data(v: &[HostPdu]) -> Vec<u8> {
    v.iter()
        .filter_map(|p| match p {
            HostPdu::C2hData { data, .. } => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// An admin queue connected and enabled (CC.EN) on target `tgt`.
fn admin(tgt: &str, digests: bool) -> (Harness, u16) {
    let mut h = Harness::new(tgt);
    h.icreq(digests, digests).expect("ICResp");
    let c = h
        .fabric_connect(0, 31, 0xffff, 0)
        .expect("Connect response");
    assert_eq!(st(&c), generic::SUCCESS);
    assert_eq!(
        st(&h.enable().expect("Property Set response")),
        generic::SUCCESS
    );
    (h, c.cdw0() as u16)
}

/// An I/O queue (qid 1) of controller `cntlid` on target `tgt`.
fn io_queue(tgt: &str, cntlid: u16, digests: bool) -> Harness {
    let mut h = Harness::new(tgt);
    h.icreq(digests, digests).expect("ICResp");
    let c = h
        .fabric_connect(1, 31, cntlid, 0)
        .expect("Connect response");
    assert_eq!(st(&c), generic::SUCCESS, "I/O queue Connect");
    h
}

fn rw(op: IoOpcode, cid: u16, slba: u64, blocks: u32) -> Sqe {
    let mut s = Sqe::new(op.into(), 1);
    s.set_cid(cid);
    s.set_slba(slba);
    s.dw[12] = blocks - 1;
    s
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn icreq_gets_icresp_and_a_second_one_terminates() {
    let mut h = Harness::new("ut_icreq");
    let r = h.icreq(true, false).expect("ICResp");
    assert_eq!((r.pfv, r.cpda, r.hdgst, r.ddgst), (0, 0, true, false));
    assert_eq!(r.maxh2cdata, 131072);
    h.send(&Pdu::IcReq(Default::default()));
    let v = h.pdus();
    assert_eq!(
        v,
        vec![HostPdu::TermReq {
            fes: fes::PDU_SEQUENCE_ERROR as u16,
            fei: 0
        }]
    );
    assert!(h.conn.is_closed());
}

#[test]
fn a_pdu_before_icreq_terminates_the_connection() {
    let mut h = Harness::new("ut_before_icreq");
    let sqe = Sqe::new(AdminOpcode::KeepAlive.into(), 0);
    let v = h.command(sqe, &[]);
    assert_eq!(
        v,
        vec![HostPdu::TermReq {
            fes: fes::PDU_SEQUENCE_ERROR as u16,
            fei: 0
        }]
    );
    assert!(h.conn.is_closed());
}

#[test]
fn connect_and_identify_controller() {
    let (mut h, cntlid) = admin("ut_identify", false);
    assert!(cntlid >= 1);
    let mut sqe = Sqe::new(AdminOpcode::Identify.into(), 0);
    sqe.set_cid(7);
    sqe.dw[10] = cns::CONTROLLER as u32;
    transport_data(&mut sqe, 4096);
    let v = h.command(sqe, &[]);
    let id = IdentifyController::from_bytes(&c2h_data(&v)).expect("4096 bytes");
    assert_eq!(id.cntlid(), cntlid);
    assert_eq!(id.serial(), "RSPDK0001");
    assert_eq!(id.model(), "rspdk harness");
    assert_eq!(id.subnqn(), NQN);
    assert_eq!(id.nn(), 1024);
    assert_eq!(id.cntrltype(), 1);
    assert_eq!(id.ioccsz(), (64 + 4096) / 16);
    let c = resp(&v);
    assert_eq!((c.cid(), st(&c)), (7, generic::SUCCESS));
    // Unknown CNS and opcode.
    sqe.dw[10] = 0x55;
    assert_eq!(st(&resp(&h.command(sqe, &[]))), generic::INVALID_FIELD);
    let bad = Sqe::new(0xc5, 0);
    assert_eq!(st(&resp(&h.command(bad, &[]))), generic::INVALID_OPCODE);
    let mut log = Sqe::new(AdminOpcode::GetLogPage.into(), 0);
    log.dw[10] = log_page::DISCOVERY as u32 | (127 << 16);
    transport_data(&mut log, 512);
    assert_eq!(
        st(&resp(&h.command(log, &[]))),
        command_specific::INVALID_LOG_PAGE
    );
}

#[test]
fn connect_refusals_name_the_parameter() {
    let mut h = Harness::new("ut_connect_refused");
    h.icreq(false, false).unwrap();
    // An I/O queue of a controller that does not exist: CNTLID in the data.
    let c = h.fabric_connect(1, 31, 0x77, 0).unwrap();
    assert_eq!(st(&c), command_specific::CONNECT_INVALID_PARAMETERS);
    assert_eq!(c.cdw0(), (1 << 16) | 16);
    // SQSIZE 0: the command's SQSIZE field.
    let c = h.fabric_connect(0, 0, 0xffff, 0).unwrap();
    assert_eq!(st(&c), command_specific::CONNECT_INVALID_PARAMETERS);
    assert_eq!(c.cdw0(), 44);
    assert!(!h.conn.is_closed());
    assert!(HOSTNQN.starts_with("nqn."));
}

#[test]
fn property_get_and_set() {
    let mut h = Harness::new("ut_property");
    h.icreq(false, false).unwrap();
    // Before Connect: Command Sequence Error.
    let mut get = Sqe::default();
    let prop = |offset: usize, eight: bool| Property {
        eight_bytes: eight,
        offset: offset as u32,
        value: 0,
    };
    prop(reg::CAP, true).emit(&mut get, false);
    assert_eq!(st(&resp(&h.command(get, &[]))), generic::SEQUENCE_ERROR);
    assert_eq!(
        st(&h.fabric_connect(0, 31, 0xffff, 0).unwrap()),
        generic::SUCCESS
    );
    let value = |h: &mut Harness, offset: usize, eight: bool| {
        let mut s = Sqe::default();
        prop(offset, eight).emit(&mut s, false);
        let c = resp(&h.command(s, &[]));
        assert_eq!(st(&c), generic::SUCCESS);
        c.dw[0] as u64 | ((c.dw[1] as u64) << 32)
    };
    assert_eq!(value(&mut h, reg::CAP, true), crate::admin::cap(128));
    assert_eq!(
        value(&mut h, reg::CAP, false),
        crate::admin::cap(128) & 0xffff_ffff
    );
    assert_eq!(value(&mut h, reg::VS, false), 0x0001_0300);
    assert_eq!(value(&mut h, reg::CSTS, false) & csts::RDY as u64, 0);
    assert_eq!(st(&h.enable().unwrap()), generic::SUCCESS);
    assert_eq!(value(&mut h, reg::CSTS, false) & csts::RDY as u64, 1);
    // A property the target does not have.
    let mut s = Sqe::default();
    prop(0x400, false).emit(&mut s, false);
    assert_eq!(st(&resp(&h.command(s, &[]))), generic::INVALID_FIELD);
}

/// Writes with in-capsule data and with R2T/H2CData, reads back.
fn write_read(tgt: &str, digests: bool) {
    let (_a, cntlid) = admin(tgt, digests);
    let mut q = io_queue(tgt, cntlid, digests);
    // In-capsule write of one block.
    let one = pattern(1, BLOCK_SIZE);
    let mut w = rw(IoOpcode::Write, 1, 3, 1);
    in_capsule(&mut w, BLOCK_SIZE);
    let c = resp(&q.command(w, &one));
    assert_eq!((c.cid(), st(&c)), (1, generic::SUCCESS));
    // R2T write of four blocks, in two H2CData PDUs.
    let four = pattern(2, 4 * BLOCK_SIZE);
    let mut w = rw(IoOpcode::Write, 2, 8, 4);
    transport_data(&mut w, four.len());
    let v = q.command(w, &[]);
    let r2t = match v.as_slice() {
        [HostPdu::R2t(h)] => *h,
        other => panic!("expected one R2T, got {other:?}"),
    };
    assert_eq!((r2t.cccid, r2t.datao, r2t.datal), (2, 0, four.len() as u32));
    let half = four.len() / 2;
    for (i, part) in four.chunks(half).enumerate() {
        q.send(&Pdu::H2cData {
            hdr: DataHeader {
                cccid: 2,
                ttag: r2t.ttag,
                datao: (i * half) as u32,
                datal: part.len() as u32,
            },
            last: i == 1,
            data: part,
        });
    }
    let c = resp(&q.pdus());
    assert_eq!((c.cid(), st(&c)), (2, generic::SUCCESS));
    // Read both back.
    for (cid, slba, blocks, want) in [(3, 3, 1, &one), (4, 8, 4, &four)] {
        let mut r = rw(IoOpcode::Read, cid, slba, blocks);
        transport_data(&mut r, want.len());
        let v = q.command(r, &[]);
        assert_eq!(&c2h_data(&v), want, "read of LBA {slba}");
        assert_eq!(st(&resp(&v)), generic::SUCCESS);
    }
    // A transfer length that does not match the blocks.
    let mut r = rw(IoOpcode::Read, 5, 0, 2);
    transport_data(&mut r, BLOCK_SIZE);
    assert_eq!(st(&resp(&q.command(r, &[]))), generic::SGL_LENGTH_INVALID);
}

#[test]
fn write_and_read_without_digests() {
    write_read("ut_rw_plain", false);
}

#[test]
fn write_and_read_with_digests() {
    write_read("ut_rw_digests", true);
}

#[test]
fn a_stream_split_anywhere_gives_the_same_answers() {
    let (_a, cntlid) = admin("ut_split", true);
    let mut q = io_queue("ut_split", cntlid, true);
    let data = pattern(9, 2 * BLOCK_SIZE);
    let mut w = rw(IoOpcode::Write, 1, 0, 2);
    in_capsule(&mut w, data.len());
    let mut r = rw(IoOpcode::Read, 2, 0, 2);
    transport_data(&mut r, data.len());
    let mut bytes = Vec::new();
    Pdu::CapsuleCmd {
        sqe: w,
        data: &data,
    }
    .emit(&mut bytes, q.digests);
    Pdu::CapsuleCmd { sqe: r, data: &[] }.emit(&mut bytes, q.digests);
    for b in bytes.chunks(7) {
        q.feed(b);
    }
    let v = q.pdus();
    assert_eq!(c2h_data(&v), data);
    let cids: Vec<u16> = v
        .iter()
        .filter_map(|p| match p {
            HostPdu::Resp(c) if st(c) == generic::SUCCESS => Some(c.cid()),
            _ => None,
        })
        .collect();
    assert_eq!(cids, vec![1, 2]);
}

#[test]
fn a_bad_data_digest_fails_the_command_and_keeps_the_connection() {
    let (_a, cntlid) = admin("ut_ddgst", true);
    let mut q = io_queue("ut_ddgst", cntlid, true);
    let data = pattern(3, BLOCK_SIZE);
    let mut w = rw(IoOpcode::Write, 9, 0, 1);
    in_capsule(&mut w, data.len());
    let mut bytes = Vec::new();
    Pdu::CapsuleCmd {
        sqe: w,
        data: &data,
    }
    .emit(&mut bytes, q.digests);
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    q.feed(&bytes);
    let c = resp(&q.pdus());
    assert_eq!((c.cid(), st(&c)), (9, generic::TRANSIENT_TRANSPORT));
    assert!(!q.conn.is_closed());
    // A bad header digest is fatal.
    let mut bytes = Vec::new();
    Pdu::CapsuleCmd {
        sqe: w,
        data: &data,
    }
    .emit(&mut bytes, q.digests);
    bytes[field::SQE.start] ^= 1;
    q.feed(&bytes);
    assert_eq!(
        q.pdus(),
        vec![HostPdu::TermReq {
            fes: fes::HDGST_ERROR as u16,
            fei: 0
        }]
    );
    assert!(q.conn.is_closed());
}

#[test]
fn bad_pdus_get_the_right_termination() {
    // H2CData naming no R2T: the TTAG field is at fault.
    let (_a, cntlid) = admin("ut_bad_pdus", false);
    let mut q = io_queue("ut_bad_pdus", cntlid, false);
    q.send(&Pdu::H2cData {
        hdr: DataHeader {
            cccid: 1,
            ttag: 77,
            datao: 0,
            datal: 4,
        },
        last: true,
        data: &[0; 4],
    });
    assert_eq!(
        q.pdus(),
        vec![HostPdu::TermReq {
            fes: fes::INVALID_HEADER_FIELD as u16,
            fei: field::TTAG.start as u32
        }]
    );
    assert!(q.conn.is_closed());
    // A controller-to-host PDU from the host.
    let mut h = Harness::new("ut_bad_pdus");
    h.icreq(false, false).unwrap();
    h.send(&Pdu::R2t(DataHeader::default()));
    assert!(matches!(
        h.pdus().as_slice(),
        [HostPdu::TermReq { fes, .. }] if *fes == fes::INVALID_HEADER_FIELD as u16
    ));
    // ICReq with an unknown PFV.
    let mut h = Harness::new("ut_bad_pdus");
    h.send(&Pdu::IcReq(crate::pdu::IcReq {
        pfv: 1,
        ..Default::default()
    }));
    assert_eq!(
        h.pdus(),
        vec![HostPdu::TermReq {
            fes: fes::UNSUPPORTED_PARAMETER as u16,
            fei: field::PFV.start as u32
        }]
    );
    assert_eq!(h.digests, Digests::default());
}

#[test]
fn keep_alive_timeout_closes_a_silent_admin_queue() {
    let mut h = Harness::new("ut_kato");
    h.icreq(false, false).unwrap();
    // KATO 500 ms is raised to min_kato, 10 s.
    assert_eq!(
        st(&h.fabric_connect(0, 31, 0xffff, 500).unwrap()),
        generic::SUCCESS
    );
    h.advance(15 * SEC);
    assert!(!h.conn.is_closed(), "within twice the timeout");
    let ka = Sqe::new(AdminOpcode::KeepAlive.into(), 0);
    assert_eq!(st(&resp(&h.command(ka, &[]))), generic::SUCCESS);
    h.advance(15 * SEC);
    assert!(!h.conn.is_closed(), "the keep alive restarted the timer");
    h.advance(10 * SEC);
    assert!(h.conn.is_closed(), "20 s of silence");
}

#[test]
fn a_connection_without_connect_times_out() {
    let mut h = Harness::new("ut_handshake");
    h.icreq(false, false).unwrap();
    h.advance(9 * SEC);
    assert!(!h.conn.is_closed());
    h.advance(2 * SEC);
    assert!(h.conn.is_closed());
}

#[test]
fn identify_reads_cf_fields_where_the_host_does() {
    // The target and host agree on the Identify layout: one table.
    let (mut h, _) = admin("ut_identify_fields", false);
    let mut sqe = Sqe::new(AdminOpcode::Identify.into(), 0);
    sqe.dw[10] = cns::CONTROLLER as u32;
    transport_data(&mut sqe, 4096);
    let d = c2h_data(&h.command(sqe, &[]));
    assert_eq!(&d[cf::SUBNQN][..NQN.len()], NQN.as_bytes());
    assert_eq!(d[cf::SQES.start], 0x66);
}
