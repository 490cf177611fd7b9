//! Fuzz iSCSI PDU framing and login text negotiation: never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rspdk_iscsi::pdu::{Parsed, Pdu};
use rspdk_iscsi::text::{negotiate, parse_text, Params, TargetLimits};

fuzz_target!(|data: &[u8]| {
    let (flags, rest) = match data.split_first() {
        Some((f, r)) => (*f, r),
        None => return,
    };
    let (hd, dd) = (flags & 1 != 0, flags & 2 != 0);
    let mut buf = rest;
    while let Ok(Parsed::Pdu(p, n)) = Pdu::parse(buf, hd, dd, 8192) {
        let mut out = Vec::new();
        p.emit(&mut out, hd, dd);
        buf = &buf[n.min(buf.len())..];
        if let Ok(kv) = parse_text(&p.data) {
            let ours = TargetLimits::default();
            let mut params = Params::rfc_defaults();
            for (k, v) in &kv {
                let _ = negotiate(&mut params, &ours, flags & 4 != 0, k, v);
            }
            assert!(params.first_burst_length <= params.max_burst_length);
        }
        if n == 0 {
            break;
        }
    }
});
