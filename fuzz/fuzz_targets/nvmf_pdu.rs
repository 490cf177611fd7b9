//! Fuzz the NVMe/TCP PDU parser as a target connection uses it: parse PDUs
//! off the front of the buffer until one is incomplete or bad. It must
//! never panic; accepted PDUs must re-emit and re-parse to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rspdk_nvme::tcp::pdu::{parse, Digests};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else { return };
    let dg = Digests { header: flags & 1 != 0, data: flags & 2 != 0 };
    let mut off = 0;
    while off < bytes.len() {
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
