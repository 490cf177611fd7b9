//! Malformed and split PDUs: digests, lengths, truncation, idle and silent sockets.

use super::*;

/// NVMe/TCP (TP 8000 section 7.4.6): a data digest error on command data
/// fails that command with Transient Transport Error; the connection and
/// the queue go on. In-capsule data and H2CData, each whole in one read
/// and cut into pieces (so the payload arrives straight into the command's
/// buffer across several reads), with and without header digests.
#[test]
pub(super) fn data_digest_error_fails_the_command_and_the_connection_survives() {
    use rspdk_nvmf::pdu::{DataHeader, Pdu};
    let t = start(&[]);
    for hd in [false, true] {
        let mut a = admin_queue(addr(&t), NQN, hd, true);
        let mut q = io_queue(addr(&t), NQN, a.cntlid, 1, hd, true, false);
        let old = pattern(3, 65536);
        let lba = 4096;
        assert_eq!(status(&q.write(1, lba, &old, BS, false)), (0, 0));
        let new = pattern(4, 65536);
        for pieces in [false, true] {
            // In-capsule, 4 KiB, the digest's last byte flipped.
            let mut raw = Vec::new();
            Pdu::CapsuleCmd {
                sqe: write_sqe(0x100, lba, 4096, true),
                data: &new[..4096],
            }
            .emit(&mut raw, q.dg);
            let n = raw.len();
            raw[n - 1] ^= 0x80;
            let cuts = if pieces {
                vec![3, 40, 75, 1000, n - 2]
            } else {
                vec![]
            };
            send_in_pieces(&mut q, &raw, &cuts);
            assert_eq!(
                expect_resp(&mut q, 0x100),
                (0, 0x22),
                "in-capsule data digest error (pieces {pieces}, hd {hd})"
            );
            // R2T write of 64 KiB in four H2CData PDUs; the second is bad.
            let mut raw = Vec::new();
            Pdu::CapsuleCmd {
                sqe: write_sqe(0x101, lba, 65536, false),
                data: &[],
            }
            .emit(&mut raw, q.dg);
            q.send_raw(&raw);
            let r2t = match q.recv() {
                Rx::R2t(h) => h,
                other => panic!("expected an R2T, got {other:?}"),
            };
            assert_eq!((r2t.cccid, r2t.datao, r2t.datal), (0x101, 0, 65536));
            for i in 0..4usize {
                let mut raw = Vec::new();
                Pdu::H2cData {
                    hdr: DataHeader {
                        cccid: 0x101,
                        ttag: r2t.ttag,
                        datao: (i * 16384) as u32,
                        datal: 16384,
                    },
                    last: i == 3,
                    data: &new[i * 16384..(i + 1) * 16384],
                }
                .emit(&mut raw, q.dg);
                if i == 1 {
                    let n = raw.len();
                    raw[n - 3] ^= 1;
                }
                let cuts = if pieces {
                    vec![10, 30, 5000, raw.len() - 3]
                } else {
                    vec![]
                };
                send_in_pieces(&mut q, &raw, &cuts);
            }
            assert_eq!(
                expect_resp(&mut q, 0x101),
                (0, 0x22),
                "H2CData digest error (pieces {pieces}, hd {hd})"
            );
            // Nothing was written, and the queue works.
            let (c, r) = q.read(1, lba, (65536 / BS) as u32, BS);
            assert_eq!(status(&c), (0, 0), "a read after the digest errors");
            assert!(r == old, "failed writes left the blocks alone");
        }
        // Good writes after them, in pieces, land.
        let mut raw = Vec::new();
        Pdu::CapsuleCmd {
            sqe: write_sqe(0x102, lba, 4096, true),
            data: &new[..4096],
        }
        .emit(&mut raw, q.dg);
        let n = raw.len();
        send_in_pieces(&mut q, &raw, &[1, 8, 72, 76, 77, 2000, n - 4, n - 1]);
        assert_eq!(expect_resp(&mut q, 0x102), (0, 0));
        assert_eq!(
            status(&q.write(1, lba + 8, &new[4096..], BS, false)),
            (0, 0)
        );
        let (c, r) = q.read(1, lba, (65536 / BS) as u32, BS);
        assert_eq!(status(&c), (0, 0));
        assert!(r == new, "writes after the digest errors read back");
        q.disconnect();
        a.disconnect();
    }
    assert!(
        t.stderr().contains("Transient Transport Error"),
        "{}",
        t.stderr()
    );
    assert!(!t.stderr().contains("panicked"), "{}", t.stderr());
}

/// Wrong lengths and truncated PDUs: each gets a C2HTermReq naming the
/// field (FES and the byte offset in FEI) and a close, or, when cut short,
/// the target waits for the rest; other connections go on.
#[test]
pub(super) fn wrong_lengths_and_truncated_pdus_name_the_field() {
    use rspdk_nvmf::pdu::{DataHeader, Pdu};
    let t = start(&[]);
    let mut a = admin_queue(addr(&t), NQN, false, false);
    let cntlid = a.cntlid;
    let term = |h: &mut Host| -> (u16, u32) {
        let r = match h.try_recv() {
            Some(Rx::Term { fes, fei }) => (fes, fei),
            other => panic!("expected C2HTermReq, got {other:?}"),
        };
        assert!(h.try_recv().is_none(), "closed after the termination");
        r
    };
    // PLEN beyond what the target accepts (in-capsule size + header).
    let mut q = io_queue(addr(&t), NQN, cntlid, 1, false, false, false);
    let mut raw = Vec::new();
    Pdu::CapsuleCmd {
        sqe: write_sqe(1, 0, 4096, true),
        data: &[0u8; 4096],
    }
    .emit(&mut raw, q.dg);
    raw[4..8].copy_from_slice(&(1u32 << 20).to_le_bytes());
    q.send_raw(&raw[..72]);
    assert_eq!(term(&mut q), (1, 4), "PLEN too large: FEI names PLEN");
    // PDO inside the header.
    let mut q = io_queue(addr(&t), NQN, cntlid, 1, false, false, false);
    let mut raw = Vec::new();
    Pdu::CapsuleCmd {
        sqe: write_sqe(1, 0, 512, true),
        data: &[0u8; 512],
    }
    .emit(&mut raw, q.dg);
    raw[3] = 16;
    q.send_raw(&raw);
    assert_eq!(term(&mut q), (1, 3), "PDO in the header: FEI names PDO");
    // H2CData whose DATAL disagrees with PLEN: found from the header alone,
    // before any of the data is awaited.
    let mut q = io_queue(addr(&t), NQN, cntlid, 1, false, false, false);
    let mut raw = Vec::new();
    Pdu::CapsuleCmd {
        sqe: write_sqe(2, 0, 8192, false),
        data: &[],
    }
    .emit(&mut raw, q.dg);
    q.send_raw(&raw);
    let Rx::R2t(r2t) = q.recv() else {
        panic!("expected an R2T")
    };
    let mut raw = Vec::new();
    Pdu::H2cData {
        hdr: DataHeader {
            cccid: 2,
            ttag: r2t.ttag,
            datao: 0,
            datal: 8192,
        },
        last: true,
        data: &[0u8; 8192],
    }
    .emit(&mut raw, q.dg);
    raw[16..20].copy_from_slice(&4096u32.to_le_bytes());
    q.send_raw(&raw[..24]);
    assert_eq!(term(&mut q), (1, 16), "DATAL mismatch: FEI names DATAL");
    // H2CData past the end of the transfer, and at the wrong offset.
    for (datao, datal) in [(4096u32, 8192u32), (512, 512)] {
        let mut q = io_queue(addr(&t), NQN, cntlid, 1, false, false, false);
        let mut raw = Vec::new();
        Pdu::CapsuleCmd {
            sqe: write_sqe(3, 0, 8192, false),
            data: &[],
        }
        .emit(&mut raw, q.dg);
        q.send_raw(&raw);
        let Rx::R2t(r2t) = q.recv() else {
            panic!("expected an R2T")
        };
        let data = vec![0u8; datal as usize];
        let mut raw = Vec::new();
        Pdu::H2cData {
            hdr: DataHeader {
                cccid: 3,
                ttag: r2t.ttag,
                datao,
                datal,
            },
            last: true,
            data: &data,
        }
        .emit(&mut raw, q.dg);
        q.send_raw(&raw);
        assert_eq!(
            term(&mut q),
            (4, 12),
            "DATAO {datao} DATAL {datal}: out of range"
        );
    }
    // H2CData naming no R2T.
    let mut q = io_queue(addr(&t), NQN, cntlid, 1, false, false, false);
    let mut raw = Vec::new();
    Pdu::H2cData {
        hdr: DataHeader {
            cccid: 9,
            ttag: 77,
            datao: 0,
            datal: 512,
        },
        last: true,
        data: &[0u8; 512],
    }
    .emit(&mut raw, q.dg);
    q.send_raw(&raw);
    assert_eq!(term(&mut q), (1, 10), "unknown TTAG: FEI names TTAG");
    // Truncated: the target waits for the rest (header, data or digest cut
    // short), then runs the command.
    let mut q = io_queue(addr(&t), NQN, cntlid, 1, true, true, false);
    let d = pattern(9, 4096);
    for cut in [5usize, 60, 74, 76, 1000, 4172, 4174] {
        let mut raw = Vec::new();
        Pdu::CapsuleCmd {
            sqe: write_sqe(4, 64, 4096, true),
            data: &d,
        }
        .emit(&mut raw, q.dg);
        q.send_raw(&raw[..cut]);
        q.s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let mut b = [0u8; 64];
        use std::io::Read;
        assert!(
            q.s.read(&mut b).is_err(),
            "nothing sent back for a PDU cut at {cut} of {}",
            raw.len()
        );
        q.s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        q.send_raw(&raw[cut..]);
        assert_eq!(expect_resp(&mut q, 4), (0, 0), "write cut at {cut}");
    }
    let (c, r) = q.read(1, 64, 8, BS);
    assert_eq!(status(&c), (0, 0));
    assert!(r == d);
    // Truncated, then the host goes away: the queue pair goes with it.
    let mut raw = Vec::new();
    Pdu::CapsuleCmd {
        sqe: write_sqe(5, 64, 4096, true),
        data: &d,
    }
    .emit(&mut raw, q.dg);
    q.send_raw(&raw[..2000]);
    drop(q);
    let mut n = usize::MAX;
    for _ in 0..100 {
        let qp = ok(
            &t.sock,
            "nvmf_subsystem_get_qpairs",
            Some(json!({"nqn": NQN})),
        );
        n = qp.as_array().unwrap().len();
        if n == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(n, 1, "only the admin queue is left");
    let (c, _) = a.identify(1, 0);
    assert_eq!(status(&c), (0, 0), "the admin queue still works");
    a.disconnect();
    assert!(!t.stderr().contains("panicked"), "{}", t.stderr());
}

/// The target's resident memory, from /proc.
pub(super) fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Sockets that connect and never send an ICReq cost little memory (a
/// few KiB each until their ICReq: 300 of them used to pin 38 MiB)
/// and are closed after the 10 s handshake timeout, their memory freed
/// for the next ones.
#[test]
pub(super) fn idle_sockets_are_cheap_and_time_out() {
    use std::io::Read;
    let t = start(&[]);
    let pid = t.child.id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let fds_before = fds();
    let before = rss_kib(pid);
    let t0 = std::time::Instant::now();
    let mut idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(addr(&t)).unwrap())
        .collect();
    // Wait until the target has taken them all in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // (Less a few: an RPC connection may have been open at the count.)
    while fds() < fds_before + 295 {
        assert!(
            std::time::Instant::now() < deadline,
            "the target took {} of 300 connections",
            fds().saturating_sub(fds_before)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 48 * 1024,
        "1,000 idle sockets grew RSS by {grown} KiB"
    );
    // Each is closed by the target after the handshake timeout.
    for s in idle.iter_mut().take(20) {
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!("{n} bytes from the target before any ICReq"),
            Err(e) => panic!("not closed by the target within 20 s: {e}"),
        }
    }
    let waited = t0.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(9),
        "closed before the handshake timeout ({waited:?})"
    );
    // A host that does complete its handshake is not affected.
    let mut a = admin_queue(addr(&t), NQN, false, false);
    let (c, _) = a.identify(1, 0);
    assert_eq!(status(&c), (0, 0));
}
