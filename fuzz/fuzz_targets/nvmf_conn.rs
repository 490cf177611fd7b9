//! Fuzz a whole NVMe/TCP target connection in process: arbitrary bytes,
//! split at arbitrary points, go through the sans-I/O connection core
//! (`rspdk_nvmf::conn`), whose bdev requests the harness serves from a
//! small in-memory disk. Optionally the connection first does a valid
//! ICReq and Connect (an admin queue, or an I/O queue of an enabled
//! controller) so that the input reaches commands. It must never panic,
//! and what it holds and sends must stay bounded by what it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rspdk_nvmf::conn::harness::Harness;

/// The target all iterations use (made once, with the harness subsystem).
const TGT: &str = "nvmf_conn_fuzz";
/// Most bytes a connection may hold: every request slot with the largest
/// admin transfer (1 MiB), and its buffers.
const MAX_FOOTPRINT: usize = 256 << 20;
/// Most output per 72 bytes of input (one command capsule): an admin
/// command's largest transfer plus its headers.
const MAX_OUT_PER_CMD: usize = (1 << 20) + 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((&split, stream)) = rest.split_first() else {
        return;
    };
    let (hdgst, ddgst) = (mode & 1 != 0, mode & 2 != 0);
    // The admin queue of the I/O queue's controller lives as long as it.
    let mut admin = None;
    let mut h = match (mode >> 2) & 3 {
        0 => Harness::new(TGT),
        1 | 2 => {
            let mut a = Harness::new(TGT);
            a.icreq(hdgst, ddgst).expect("ICResp");
            let c = a.fabric_connect(0, 31, 0xffff, 0).expect("Connect");
            a.enable().expect("Property Set");
            if mode >> 2 & 3 == 1 {
                a
            } else {
                let mut q = Harness::new(TGT);
                q.icreq(hdgst, ddgst).expect("ICResp");
                q.fabric_connect(1, 31, c.cdw0() as u16, 0).expect("Connect");
                admin = Some(a);
                q
            }
        }
        _ => {
            // Only the ICReq: the stream starts right after it.
            let mut a = Harness::new(TGT);
            a.icreq(hdgst, ddgst);
            a
        }
    };
    // Chunk sizes cycle through 1..=split+1 so the same stream is cut in
    // different places for different `split` bytes.
    let mut off = 0;
    let mut k = 0usize;
    while off < stream.len() && !h.conn.is_closed() {
        let len = 1 + (k * 7 + split as usize) % (split as usize + 1);
        let chunk = &stream[off..(off + len).min(stream.len())];
        off += chunk.len();
        k += 1;
        h.feed(chunk);
        let out = h.discard_output();
        assert!(
            out <= MAX_OUT_PER_CMD * (1 + chunk.len() / 72 + 4),
            "{out} output bytes for {} input bytes",
            chunk.len()
        );
        assert!(h.conn.footprint() <= MAX_FOOTPRINT, "{}", h.conn.footprint());
        // Time passes with the bytes: timers may fire mid-stream.
        if split & 0x80 != 0 {
            h.advance(250_000_000);
        }
    }
    drop(h);
    drop(admin);
});
