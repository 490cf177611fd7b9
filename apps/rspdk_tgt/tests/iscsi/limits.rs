//! Bounded memory and time: unread responses, idle logins, waiting writes, hot remove.

use super::*;

/// VmRSS of process `pid` in bytes.
pub(super) fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb * 1024
}

/// READ(10) of 512 blocks (256 KiB at 512 B) at `lba`.
pub(super) fn read_256k(itt: u32, cmd_sn: u32, lba: u32) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0] = 0x01;
    b[1] = 0xc1;
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[20..24].copy_from_slice(&(256u32 << 10).to_be_bytes());
    b[24..28].copy_from_slice(&cmd_sn.to_be_bytes());
    b[32] = 0x28;
    b[34..38].copy_from_slice(&lba.to_be_bytes());
    b[39..41].copy_from_slice(&512u16.to_be_bytes());
    b
}

/// An initiator that sends 5,000 256 KiB READs and does not read the
/// answers: the target's memory stays bounded (it stops taking that
/// connection's commands while its output queue is full), another
/// connection keeps working meanwhile, and once the initiator reads it
/// gets every READ's data and GOOD status.
#[test]
pub(super) fn unread_responses_bounded() {
    const N: u32 = 5000;
    let t = start(512);
    let pid = t.child.id();
    // A pattern in the first blocks, to check the data read back.
    let mut w = login_plain(t.port, "iqn.2026-01.io.rspdk:writer");
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    w.write_all(&scsi_rw(1, 1, 0, Some(&pattern))).unwrap();
    let (h, _) = read_pdu(&mut w).expect("no WRITE response");
    assert_eq!((h[0] & 0x3f, h[3]), (0x21, 0), "WRITE failed");

    let mut hog = login_plain(t.port, "iqn.2026-01.io.rspdk:hog");
    let base = rss(pid);
    let mut sender = hog.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut all = Vec::with_capacity(N as usize * 48);
        for i in 0..N {
            all.extend_from_slice(&read_256k(i + 1, i + 1, (i * 512) % (131_072 - 512)));
        }
        sender.write_all(&all).unwrap();
    });
    // 5,000 x 256 KiB would be 1.25 GiB queued; watch the target for a
    // few seconds: it must stay within 200 MB of where it started.
    let mut peak = base;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(rss(pid));
        assert!(
            peak < base + (200 << 20),
            "target RSS grew from {base} to {peak} bytes"
        );
    }
    // Another connection still gets answers.
    w.write_all(&scsi_rw(2, 2, 0, None)).unwrap();
    let (h, d) = read_pdu(&mut w).expect("other connection starved");
    assert_eq!((h[0] & 0x3f, h[3]), (0x25, 0));
    assert!(d == pattern, "other connection read wrong data");
    // Now the hog reads: every READ completes, with the right data.
    hog.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut done = vec![false; N as usize + 1];
    let mut left = N;
    while left > 0 {
        let (h, d) = read_pdu(&mut hog).expect("responses stopped");
        if h[0] & 0x3f == 0x20 {
            // A keep-alive ping: the target read nothing from this
            // connection for nop_in_interval while it was held back.
            continue;
        }
        assert_eq!(h[0] & 0x3f, 0x25, "expected Data-In, got {h:02x?}");
        let itt = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
        let off = u32::from_be_bytes([h[40], h[41], h[42], h[43]]);
        if itt == 1 && off == 0 {
            assert!(d[..4096] == pattern[..], "READ 1 returned wrong data");
        }
        if h[1] & 0x01 != 0 {
            assert_eq!(h[3], 0, "READ {itt} status");
            assert_eq!(off as usize + d.len(), 256 << 10, "READ {itt} length");
            assert!(!done[itt as usize], "READ {itt} answered twice");
            done[itt as usize] = true;
            left -= 1;
        }
    }
    writer.join().unwrap();
    eprintln!("target RSS {base} bytes before the READs, {peak} at most while unread");
    assert!(peak < base + (200 << 20));
}

/// A TCP connection that never logs in is closed after the login timeout
/// (30 s, SPDK's), listed by `iscsi_get_connections` (state invalid) and
/// counted by `iscsi_get_stats` until then, and gone from both afterwards.
#[test]
pub(super) fn login_timeout_closes_idle_connection() {
    let t = start(512);
    let s = &t.sock;
    let mut c = TcpStream::connect(("127.0.0.1", t.port)).unwrap();
    let t0 = std::time::Instant::now();
    let deadline = t0 + Duration::from_secs(10);
    loop {
        let conns = ok(s, "iscsi_get_connections", None);
        if conns.as_array().unwrap().len() == 1 {
            assert_eq!(conns[0]["state"], json!("invalid"), "{conns}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connection not listed: {conns}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ok(s, "iscsi_get_stats", None)["invalid"], json!(1));
    c.set_read_timeout(Some(Duration::from_secs(45))).unwrap();
    let mut b = [0u8; 48];
    let n = c.read(&mut b).unwrap_or(0);
    let waited = t0.elapsed();
    assert_eq!(n, 0, "connection got data instead of being closed");
    assert!(
        waited >= Duration::from_secs(29) && waited < Duration::from_secs(40),
        "closed after {waited:?}, not the 30 s login timeout"
    );
    assert_eq!(ok(s, "iscsi_get_connections", None), json!([]));
    assert_eq!(
        ok(s, "iscsi_get_stats", None),
        json!({"invalid": 0, "running": 0, "exiting": 0, "exited": 0})
    );
}

/// 200 WRITEs without immediate data sent back to back, their Data-Out only
/// after all of them (as an initiator does once the R2Ts come): more tasks
/// than the per-connection limit of running ones, but tasks waiting for
/// data do not count against it, so every WRITE gets its R2T and completes
/// (no deadlock with the data behind a held-back command).
#[test]
pub(super) fn many_writes_waiting_for_data() {
    const N: u32 = 200;
    let t = start(512);
    let mut c = login_plain(t.port, "iqn.2026-01.io.rspdk:writes");
    let mut cmds = Vec::new();
    for i in 0..N {
        let mut b = scsi_rw(i + 1, i + 1, i * 8, None);
        b[1] = 0xa1; // WRITE, final, simple: data to follow on R2T
        b[32] = 0x2a;
        cmds.extend_from_slice(&b);
    }
    c.write_all(&cmds).unwrap();
    let mut r2ts = Vec::new();
    while r2ts.len() < N as usize {
        let (h, _) = read_pdu(&mut c).expect("R2Ts stopped");
        assert_eq!(h[0] & 0x3f, 0x31, "expected R2T, got {h:02x?}");
        let itt = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
        let ttt = [h[20], h[21], h[22], h[23]];
        r2ts.push((itt, ttt));
    }
    let mut data = Vec::new();
    for (itt, ttt) in &r2ts {
        let mut b = vec![0u8; 48];
        b[0] = 0x05;
        b[1] = 0x80;
        b[5..8].copy_from_slice(&4096u32.to_be_bytes()[1..]);
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b[20..24].copy_from_slice(ttt);
        b.extend(std::iter::repeat_n(*itt as u8, 4096));
        data.extend_from_slice(&b);
    }
    c.write_all(&data).unwrap();
    let mut done = 0;
    while done < N {
        let (h, _) = read_pdu(&mut c).expect("WRITE responses stopped");
        assert_eq!((h[0] & 0x3f, h[3]), (0x21, 0), "WRITE failed: {h:02x?}");
        done += 1;
    }
    // The data landed: READ back one of them.
    c.write_all(&scsi_rw(0x1000, N + 1, 7 * 8, None)).unwrap();
    let (h, d) = read_pdu(&mut c).expect("no READ answer");
    assert_eq!((h[0] & 0x3f, h[3]), (0x25, 0));
    assert!(d.iter().all(|&x| x == 8), "WRITE 8's data not read back");
}

/// Deleting the bdev of a LUN that has served I/O answers (it used to hang
/// forever: the poll groups kept their bdev channels, so the unregister
/// never finished), on one reactor and on two.
#[test]
pub(super) fn deleting_a_bdev_that_served_io_answers() {
    require("qemu-io", "qemu-utils");
    for args in [&[][..], &["-m", "0x3"][..]] {
        let t = start_cfg(512, Vec::new(), Vec::new(), "Malloc0", args);
        let url = format!("iscsi://127.0.0.1:{}/{IQN}/0", t.port);
        let (ok_, out) = run_status(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "write -P 0xa5 0 1M",
                "-c",
                "read -P 0xa5 0 1M",
                &url,
            ],
        );
        assert!(ok_ && !out.contains("failed"), "{out}");
        let sock = t.sock.clone();
        let del = std::thread::spawn(move || {
            common::rpc(
                &sock,
                "bdev_malloc_delete",
                Some(json!({"name": "Malloc0"})),
            )
        });
        let t0 = std::time::Instant::now();
        while !del.is_finished() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(20),
                "bdev_malloc_delete of a LUN's bdev did not answer"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(del.join().unwrap().unwrap(), json!(true));
        assert_eq!(ok(&t.sock, "bdev_get_bdevs", None), json!([]));
    }
}
