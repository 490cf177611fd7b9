//! NVMe/TCP PDU parse/emit: round trips of every type with and without
//! digests, and a fuzz-style proptest feeding random and mutated PDUs to the
//! parser (it must never panic, and whatever it accepts must re-emit to the
//! same bytes).

use proptest::prelude::*;
use rspdk_nvme::spec::{Cqe, Sqe};
use rspdk_nvme::tcp::pdu::{self, CommonHeader, DataHeader, Digests, IcReq, IcResp, Pdu};
use rspdk_nvme::tcp::PduError;

const MAX: u32 = 1 << 20;

fn all_digests() -> [Digests; 4] {
    [
        Digests::default(),
        Digests {
            header: true,
            data: false,
        },
        Digests {
            header: false,
            data: true,
        },
        Digests {
            header: true,
            data: true,
        },
    ]
}

fn samples(data: &[u8]) -> Vec<Pdu<'_>> {
    let mut sqe = Sqe::new(0x02, 1);
    sqe.set_cid(0x1234);
    sqe.set_slba(0xdead_beef_0001);
    let cqe = Cqe {
        dw: [1, 2, 3, 0x0001_0042],
    };
    let hdr = DataHeader {
        cccid: 7,
        ttag: 9,
        datao: 4096,
        datal: data.len() as u32,
    };
    vec![
        Pdu::IcReq(IcReq {
            pfv: 0,
            hpda: 3,
            hdgst: true,
            ddgst: false,
            maxr2t: 5,
        }),
        Pdu::IcResp(IcResp {
            pfv: 0,
            cpda: 0,
            hdgst: false,
            ddgst: true,
            maxh2cdata: 131072,
        }),
        Pdu::CapsuleCmd { sqe, data },
        Pdu::CapsuleCmd { sqe, data: &[] },
        Pdu::CapsuleResp(cqe),
        Pdu::H2cData {
            hdr,
            last: true,
            data,
        },
        Pdu::C2hData {
            hdr,
            last: true,
            success: true,
            data,
        },
        Pdu::C2hData {
            hdr,
            last: false,
            success: false,
            data,
        },
        Pdu::R2t(DataHeader {
            cccid: 1,
            ttag: 2,
            datao: 0,
            datal: 65536,
        }),
        Pdu::C2hTermReq {
            fes: 1,
            fei: 2,
            data: &data[..data.len().min(128)],
        },
        Pdu::H2cTermReq {
            fes: 3,
            fei: 0,
            data: &[],
        },
    ]
}

#[test]
fn every_type_round_trips_with_every_digest_setting() {
    let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    for dg in all_digests() {
        for p in samples(&data) {
            let mut out = Vec::new();
            p.emit(&mut out, dg);
            let ch = CommonHeader::parse(&out).unwrap();
            assert_eq!(ch.plen as usize, out.len(), "PLEN of {p:?}");
            let (q, n) = pdu::parse(&out, dg, MAX)
                .unwrap()
                .unwrap_or_else(|| panic!("{p:?} incomplete"));
            assert_eq!(n, out.len());
            assert_eq!(q, p, "round trip with {dg:?}");
            // Every proper prefix is "incomplete", never an error or a PDU.
            for cut in [0, 1, 7, 8, out.len() / 2, out.len() - 1] {
                assert!(
                    matches!(pdu::parse(&out[..cut], dg, MAX), Ok(None)),
                    "prefix {cut} of {p:?}"
                );
            }
        }
    }
}

#[test]
fn errors_name_the_field() {
    let mut out = Vec::new();
    Pdu::CapsuleResp(Cqe::default()).emit(&mut out, Digests::default());
    // PLEN smaller than the header.
    let mut b = out.clone();
    b[4] = 10;
    let e = pdu::parse(&b, Digests::default(), MAX).unwrap_err();
    assert!(e.to_string().contains("PLEN 10"), "{e}");
    // Header digest flag without negotiation.
    let mut b = out.clone();
    b[1] |= pdu::flags::HDGSTF;
    let e = pdu::parse(&b, Digests::default(), MAX).unwrap_err();
    assert!(e.to_string().contains("HDGSTF"), "{e}");
    // Over the receiver's limit: refused before the data arrives.
    let mut b = Vec::new();
    Pdu::CapsuleCmd {
        sqe: Sqe::default(),
        data: &[0; 64],
    }
    .emit(&mut b, Digests::default());
    let e = pdu::parse(&b[..8], Digests::default(), 100).unwrap_err();
    assert!(
        matches!(
            e,
            PduError::BadPdu {
                fes: 1,
                offset: 4,
                ..
            }
        ),
        "{e}"
    );
    // Unknown types are kept.
    let raw = [0x7e, 0, 8, 0, 12, 0, 0, 0, 1, 2, 3, 4];
    let (p, n) = pdu::parse(&raw, Digests::default(), MAX).unwrap().unwrap();
    assert_eq!(n, 12);
    assert!(matches!(p, Pdu::Unknown { ch, rest } if ch.pdu_type == 0x7e && rest == [1, 2, 3, 4]));
    let mut again = Vec::new();
    p.emit(&mut again, Digests::default());
    assert_eq!(again, raw);
}

fn check_no_panic(bytes: &[u8], dg: Digests) {
    // Parse everything in the buffer like a connection does.
    let mut off = 0;
    while off < bytes.len() {
        match pdu::parse(&bytes[off..], dg, 1 << 16) {
            Ok(Some((p, n))) => {
                assert!(n >= 8 && off + n <= bytes.len());
                // Accepted PDUs re-emit to bytes that parse to the same PDU.
                let mut out = Vec::new();
                p.emit(&mut out, dg);
                if let Ok(Some((q, _))) = pdu::parse(&out, dg, 1 << 20) {
                    assert_eq!(format!("{p:?}"), format!("{q:?}"));
                }
                off += n;
            }
            Ok(None) | Err(_) => break,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), h: bool, d: bool) {
        check_no_panic(&bytes, Digests { header: h, data: d });
    }

    #[test]
    fn mutated_pdus_never_panic(
        which in 0usize..11,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
        h: bool, d: bool,
    ) {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let dg = Digests { header: h, data: d };
        let mut out = Vec::new();
        samples(&data)[which].emit(&mut out, dg);
        for (pos, val) in flips {
            let i = pos % out.len();
            out[i] = val;
        }
        let cut = cut % (out.len() + 1);
        check_no_panic(&out[..cut], dg);
        check_no_panic(&out, dg);
    }
}
