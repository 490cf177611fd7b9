//! Fuzz a whole iSCSI connection in process: arbitrary bytes, split at
//! arbitrary points, go through the sans-I/O connection core (login, full
//! feature phase, SCSI tasks answered by a tiny in-memory LUN). Never
//! panics; the output and the input the connection holds stay bounded.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use rspdk_iscsi::pdu::{op, Bhs, Pdu};
use rspdk_iscsi::target::Auth;
use rspdk_iscsi::testing::{register_target, Loopback, OUTPUT_BOUND};
use rspdk_iscsi::text::emit_text;

const TARGET: &str = "iqn.2026-01.io.rspdk:fuzz";
const PG: u32 = 1;

/// A login straight to the full feature phase, so that the fuzzer starts
/// there half of the time.
fn login(header_digest: bool, data_digest: bool) -> Vec<u8> {
    let d = |on: bool| if on { "CRC32C" } else { "None" }.to_string();
    let keys = [
        (
            "InitiatorName".to_string(),
            "iqn.2026-01.io.rspdk:fuzzer".to_string(),
        ),
        ("TargetName".to_string(), TARGET.to_string()),
        ("AuthMethod".to_string(), "None".to_string()),
        ("HeaderDigest".to_string(), d(header_digest)),
        ("DataDigest".to_string(), d(data_digest)),
        ("InitialR2T".to_string(), "No".to_string()),
    ];
    let mut b = Bhs::new(op::LOGIN_REQ, 0x87);
    b.set_immediate(true);
    b.set_isid([0x80, 0, 0, 0, 0, 1]);
    b.set_itt(1);
    let mut out = Vec::new();
    Pdu::new(b, emit_text(&keys)).emit(&mut out, false, false);
    out
}

fuzz_target!(|data: &[u8]| {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        register_target(
            TARGET,
            PG,
            Auth {
                disable_chap: true,
                require_chap: false,
                mutual_chap: false,
                chap_group: 0,
            },
        );
    });
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut lb = Loopback::new(PG);
    lb.hold_tasks = flags & 8 != 0;
    if flags & 1 != 0 {
        lb.feed(&login(flags & 2 != 0, flags & 4 != 0));
    }
    while let Some((&n, tail)) = rest.split_first() {
        let n = (usize::from(n) + 1).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        // A driver reads only while the connection wants input.
        let out = if lb.wants_input() {
            lb.feed(chunk)
        } else {
            lb.run()
        };
        assert!(
            out.len() <= OUTPUT_BOUND + (1 << 20),
            "{} bytes out for one poll",
            out.len()
        );
        // Tasks held count as running: the task limit (2 per unit of the
        // target's queue depth, 64) stops new commands.
        assert!(lb.held.len() <= 128, "{} tasks held", lb.held.len());
        // Time moves on (login timeout, NOP-In pings).
        lb.now_ns += u64::from(chunk.first().copied().unwrap_or(0)) * 100_000_000;
        if flags & 16 != 0 && chunk.len() % 3 == 0 {
            lb.release_held();
        }
    }
    lb.release_held();
    lb.run();
    lb.core.close();
});
