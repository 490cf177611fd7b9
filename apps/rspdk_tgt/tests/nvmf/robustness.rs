//! Bad connects and bad PDUs affect only their own connection.

use super::*;

#[test]
pub(super) fn bad_connects_and_bad_pdus_affect_only_their_connection() {
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
