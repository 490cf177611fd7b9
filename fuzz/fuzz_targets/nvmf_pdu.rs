//! Fuzz the NVMe/TCP PDU parser as a target connection uses it: parse PDUs
//! off the front of the buffer until one is incomplete or bad. It must
//! never panic; accepted PDUs must re-emit and re-parse to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rspdk_nvme::tcp::pdu::{parse, pdu_type, CommonHeader, Digests, CH_LEN, DIGEST_LEN};

/// The target takes a capsule's or H2CData's header before its data has
/// arrived, trusting that a common header `parse` accepts (`Ok(None)` on
/// its first 8 bytes) gives a data offset inside the PDU with room for the
/// digest: check that, for any bytes.
fn header_first(b: &[u8], dg: Digests) {
    let Some(ch) = CommonHeader::parse(b) else {
        return;
    };
    if !matches!(ch.pdu_type, pdu_type::CAPSULE_CMD | pdu_type::H2C_DATA) {
        return;
    }
    if let Ok(None) = parse(&b[..CH_LEN], dg, 1 << 16) {
        let hd = if dg.header { DIGEST_LEN } else { 0 };
        let dd = if dg.data { DIGEST_LEN } else { 0 };
        let (hlen, plen, pdo) = (ch.hlen as usize, ch.plen as usize, ch.pdo as usize);
        assert!(hlen >= 24 && plen >= hlen + hd, "{ch:?}");
        if plen > hlen + hd {
            assert!(pdo >= hlen + hd && pdo + dd <= plen, "{ch:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let dg = Digests {
        header: flags & 1 != 0,
        data: flags & 2 != 0,
    };
    let mut off = 0;
    while off < bytes.len() {
        header_first(&bytes[off..], dg);
        match parse(&bytes[off..], dg, 1 << 16) {
            Ok(Some((p, n))) => {
                let mut out = Vec::new();
                p.emit(&mut out, dg);
                if let Ok(Some((q, _))) = parse(&out, dg, 1 << 20) {
                    assert_eq!(format!("{p:?}"), format!("{q:?}"));
                }
                off += n;
            }
            _ => break,
        }
    }
});
