//! R2T pacing, task management, several connections per session.

use super::*;

/// Logs in (no digests, RFC 7143 default keys); returns the stream in full
/// feature phase, its CmdSN starting at 1.
pub(super) fn login_plain(port: u16, initiator: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&login_pdu_at(
        &format!("InitiatorName={initiator};SessionType=Normal;TargetName={IQN}"),
        0,
        0,
        1,
    ))
    .unwrap();
    let (hdr, _) = read_pdu(&mut s).expect("no login response");
    assert_eq!((hdr[36], hdr[37]), (0, 0), "login failed");
    assert_eq!(hdr[1] & 0x83, 0x83, "not in full feature phase");
    s
}

/// Reads one PDU (no digests): its header and data segment, None on EOF
/// or timeout.
pub(super) fn read_pdu(s: &mut TcpStream) -> Option<([u8; 48], Vec<u8>)> {
    let mut hdr = [0u8; 48];
    s.read_exact(&mut hdr).ok()?;
    let dsl = u32::from_be_bytes([0, hdr[5], hdr[6], hdr[7]]) as usize;
    let mut data = vec![0u8; dsl.div_ceil(4) * 4];
    s.read_exact(&mut data).ok()?;
    data.truncate(dsl);
    Some((hdr, data))
}

/// A SCSI Command PDU (simple task attribute, LUN 0): READ(10) of 8
/// blocks at `lba` or, with `write`, WRITE(10) of 8 blocks with them as
/// immediate data.
pub(super) fn scsi_rw(itt: u32, cmd_sn: u32, lba: u32, write: Option<&[u8]>) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0] = 0x01;
    b[1] = if write.is_some() { 0xa1 } else { 0xc1 };
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[20..24].copy_from_slice(&4096u32.to_be_bytes());
    b[24..28].copy_from_slice(&cmd_sn.to_be_bytes());
    b[32] = if write.is_some() { 0x2a } else { 0x28 };
    b[34..38].copy_from_slice(&lba.to_be_bytes());
    b[39..41].copy_from_slice(&8u16.to_be_bytes());
    if let Some(d) = write {
        b[5..8].copy_from_slice(&(d.len() as u32).to_be_bytes()[1..]);
        b.extend_from_slice(d);
    }
    b
}

/// A Data-Out PDU (LUN 0) answering R2T `ttt` of task `itt`.
pub(super) fn data_out(
    itt: u32,
    ttt: u32,
    data_sn: u32,
    off: u32,
    data: &[u8],
    last: bool,
) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0] = 0x05;
    b[1] = if last { 0x80 } else { 0 };
    b[5..8].copy_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[20..24].copy_from_slice(&ttt.to_be_bytes());
    b[36..40].copy_from_slice(&data_sn.to_be_bytes());
    b[40..44].copy_from_slice(&off.to_be_bytes());
    b.extend_from_slice(data);
    b.resize(48 + data.len().div_ceil(4) * 4, 0);
    b
}

/// Answers R2T (`itt`, `ttt`, `off`, `len`) with Data-Out PDUs of 8 KiB
/// (the target's MaxRecvDataSegmentLength) filled with `fill`, sent by a
/// writer thread (`w`) so that reading the target's PDUs never waits on
/// our own sends.
pub(super) fn answer_r2t(
    w: &std::sync::mpsc::Sender<Vec<u8>>,
    itt: u32,
    ttt: u32,
    off: u32,
    len: u32,
    fill: u8,
) {
    let chunk = vec![fill; 8192];
    let mut out = Vec::new();
    let mut done = 0u32;
    let mut sn = 0;
    while done < len {
        let n = 8192.min(len - done);
        out.extend(data_out(
            itt,
            ttt,
            sn,
            off + done,
            &chunk[..n as usize],
            done + n == len,
        ));
        done += n;
        sn += 1;
    }
    w.send(out).unwrap();
}

/// The target paces its R2Ts: an initiator that leaves the last burst of
/// each of 32 WRITEs of 2 MiB unanswered (64 MiB in all) is solicited at
/// most the connection's 32 MiB budget, where without a cap
/// the target would solicit and hold all of it; once the initiator
/// finishes the bursts it holds, the rest is solicited and all 32 WRITEs
/// complete with their data on the LUN.
#[test]
pub(super) fn r2ts_are_paced_by_a_per_connection_budget() {
    const CMDS: u32 = 32;
    const EDTL: u32 = 2 << 20;
    const BURST: u32 = 256 << 10;
    let t = start(512);
    let mut s = login_plain(t.port, "iqn.2026-01.io.rspdk:r2t");
    let mut cmds = Vec::new();
    for i in 0..CMDS {
        let mut b = vec![0u8; 48];
        b[0] = 0x01;
        b[1] = 0xa1; // F, W, simple
        b[16..20].copy_from_slice(&(1000 + i).to_be_bytes());
        b[20..24].copy_from_slice(&EDTL.to_be_bytes());
        b[24..28].copy_from_slice(&(1 + i).to_be_bytes());
        b[32] = 0x2a;
        b[34..38].copy_from_slice(&(i * (EDTL / 512)).to_be_bytes());
        b[39..41].copy_from_slice(&((EDTL / 512) as u16).to_be_bytes());
        cmds.extend_from_slice(&b);
    }
    s.write_all(&cmds).unwrap();
    let (w, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut ws = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for b in rx {
            ws.write_all(&b).unwrap();
        }
    });
    let r2t = |h: &[u8; 48]| {
        let f = |o: usize| u32::from_be_bytes(h[o..o + 4].try_into().unwrap());
        (f(16), f(20), f(40), f(44))
    };
    // Phase 1: answer every burst but each WRITE's last, until the target
    // stops soliciting (nothing for 2 s).
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (mut solicited, mut held) = (0u64, Vec::new());
    while let Some((h, _)) = read_pdu(&mut s) {
        assert_eq!(h[0] & 0x3f, 0x31, "expected an R2T, got {h:02x?}");
        let (itt, ttt, off, len) = r2t(&h);
        assert!(len <= BURST);
        solicited += u64::from(len);
        if off + len < EDTL {
            answer_r2t(&w, itt, ttt, off, len, itt as u8);
        } else {
            held.push((itt, ttt, off, len));
        }
    }
    assert!(
        solicited <= 32 << 20,
        "the target solicited {solicited} bytes with R2Ts"
    );
    assert!(
        (held.len() as u32) < CMDS,
        "every WRITE was solicited to its end: no budget"
    );
    // Phase 2: finish the held bursts; the target solicits the rest.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let held_n = held.len();
    for (itt, ttt, off, len) in held.drain(..) {
        answer_r2t(&w, itt, ttt, off, len, itt as u8);
    }
    let mut good = 0;
    while good < CMDS {
        let Some((h, _)) = read_pdu(&mut s) else {
            panic!("the WRITEs did not all complete: {good} of {CMDS} (solicited {solicited} in phase 1, {} held)", held_n);
        };
        match h[0] & 0x3f {
            0x31 => {
                let (itt, ttt, off, len) = r2t(&h);
                answer_r2t(&w, itt, ttt, off, len, itt as u8);
            }
            0x21 => {
                assert_eq!(h[3], 0, "WRITE status {h:02x?}");
                good += 1;
            }
            op => panic!("unexpected PDU {op:#x}"),
        }
    }
    drop(w);
    writer.join().unwrap();
    // The last WRITE's data is on the LUN.
    s.write_all(&scsi_rw(1, 1 + CMDS, (CMDS - 1) * (EDTL / 512), None))
        .unwrap();
    let (h, d) = read_pdu(&mut s).expect("READ after the WRITEs");
    assert_eq!((h[0] & 0x3f, h[3]), (0x25, 0), "{h:02x?}");
    assert!(d.iter().all(|&b| b == (1000 + CMDS - 1) as u8));
}

/// An immediate Task Management Function Request (LUN 0).
pub(super) fn tmf(func: u8, itt: u32, rtt: u32, cmd_sn: u32, ref_cmd_sn: u32) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0] = 0x42;
    b[1] = 0x80 | func;
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[20..24].copy_from_slice(&rtt.to_be_bytes());
    b[24..28].copy_from_slice(&cmd_sn.to_be_bytes());
    b[32..36].copy_from_slice(&ref_cmd_sn.to_be_bytes());
    b
}

/// ABORT TASK and LOGICAL UNIT RESET while the tasks' bdev I/O runs (a
/// delay bdev, 1.5 s per I/O): the TMF response comes once the I/O has
/// finished, the aborted tasks get no response, their ITTs are free again,
/// and the connection keeps working.
#[test]
pub(super) fn abort_and_lun_reset_during_io() {
    const LAT_US: u64 = 1_500_000;
    let t = start_cfg(
        512,
        Vec::new(),
        vec![
            json!({"method": "bdev_delay_create", "params": {"base_bdev_name": "Malloc0",
            "name": "Delay0", "avg_read_latency": LAT_US, "p99_read_latency": LAT_US,
            "avg_write_latency": LAT_US, "p99_write_latency": LAT_US}}),
        ],
        "Delay0",
        &[],
    );
    let mut s = login_plain(t.port, "iqn.2026-01.io.rspdk:abort");
    let lat = Duration::from_micros(LAT_US);

    // ABORT TASK on a running READ (ITT 1, CmdSN 1).
    let t0 = std::time::Instant::now();
    // The target handles a connection's PDUs in order: the READ's I/O is
    // under way (for 1.5 s) when the TMF is handled; no wait needed.
    s.write_all(&scsi_rw(1, 1, 0, None)).unwrap();
    s.write_all(&tmf(1, 0x100, 1, 2, 1)).unwrap();
    let (h, _) = read_pdu(&mut s).expect("no TMF response");
    assert_eq!(
        h[0] & 0x3f,
        0x22,
        "expected the TMF response first, got {h:02x?}"
    );
    assert_eq!(&h[16..20], &0x100u32.to_be_bytes());
    assert_eq!(h[2], 0, "ABORT TASK: function complete");
    assert!(
        t0.elapsed() >= lat - Duration::from_millis(100),
        "the TMF response came before the aborted I/O finished"
    );
    // The ITT is free again: a READ with ITT 1 (CmdSN 2) runs normally,
    // and it is the next PDU (no late response for the aborted one).
    s.write_all(&scsi_rw(1, 2, 0, None)).unwrap();
    let (h, d) = read_pdu(&mut s).expect("no answer to the second READ");
    assert_eq!(h[0] & 0x3f, 0x25, "expected Data-In, got {h:02x?}");
    assert_eq!((h[1] & 0x81, h[3]), (0x81, 0), "Data-In with GOOD status");
    assert_eq!(d.len(), 4096);

    // LUN RESET with a WRITE and a READ running (CmdSN 3 and 4).
    let pattern = vec![0x5au8; 4096];
    s.write_all(&scsi_rw(2, 3, 64, Some(&pattern))).unwrap();
    s.write_all(&scsi_rw(3, 4, 128, None)).unwrap();
    let t0 = std::time::Instant::now();
    s.write_all(&tmf(5, 0x101, 0xffff_ffff, 5, 0)).unwrap();
    let (h, _) = read_pdu(&mut s).expect("no TMF response to LUN RESET");
    assert_eq!(h[0] & 0x3f, 0x22, "expected the TMF response, got {h:02x?}");
    assert_eq!(&h[16..20], &0x101u32.to_be_bytes());
    assert_eq!(h[2], 0, "LUN RESET: function complete");
    assert!(t0.elapsed() < lat * 3, "LUN RESET took {:?}", t0.elapsed());
    // Next command: the reset's unit attention (29h/03h) ...
    s.write_all(&scsi_rw(4, 5, 64, None)).unwrap();
    let (h, d) = read_pdu(&mut s).expect("no answer after the LUN RESET");
    assert_eq!(
        (h[0] & 0x3f, h[3]),
        (0x21, 0x02),
        "expected CHECK CONDITION, got {h:02x?}"
    );
    assert_eq!(&h[16..20], &4u32.to_be_bytes());
    assert_eq!(
        (d[2 + 2] & 0x0f, d[2 + 12], d[2 + 13]),
        (6, 0x29, 0x03),
        "{d:02x?}"
    );
    // ... then the aborted WRITE's data is on the LUN (the I/O had started)
    // or not, but the READ works and the connection is healthy.
    s.write_all(&scsi_rw(5, 6, 64, None)).unwrap();
    let (h, d) = read_pdu(&mut s).expect("no answer to the READ after the reset");
    assert_eq!((h[0] & 0x3f, h[3]), (0x25, 0), "{h:02x?}");
    assert_eq!(d.len(), 4096);
    // Nothing else is queued: a NOP-Out is answered next.
    let mut nop = vec![0u8; 48];
    nop[0] = 0x40;
    nop[1] = 0x80;
    nop[16..20].copy_from_slice(&0x200u32.to_be_bytes());
    nop[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
    nop[24..28].copy_from_slice(&7u32.to_be_bytes());
    s.write_all(&nop).unwrap();
    let (h, _) = read_pdu(&mut s).expect("no NOP-In");
    assert_eq!(
        (h[0] & 0x3f, &h[16..20]),
        (0x20, &0x200u32.to_be_bytes()[..])
    );
    assert_eq!(
        ok(&t.sock, "iscsi_get_connections", None)
            .as_array()
            .map(|a| a.len()),
        Some(1)
    );
}

/// A Logout Request (immediate) for connection `cid` with `reason`.
pub(super) fn logout_pdu(itt: u32, reason: u8, cid: u16, cmd_sn: u32) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0] = 0x46;
    b[1] = 0x80 | reason;
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[20..22].copy_from_slice(&cid.to_be_bytes());
    b[24..28].copy_from_slice(&cmd_sn.to_be_bytes());
    b
}

/// Sends a login for session `tsih`, connection `cid`; returns the stream
/// and the response header and text.
pub(super) fn login_mcs(
    port: u16,
    tsih: u16,
    cid: u16,
    cmd_sn: u32,
) -> (TcpStream, [u8; 48], String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&login_pdu_at(
        &format!(
            "InitiatorName=iqn.2026-01.io.rspdk:mcs;SessionType=Normal;TargetName={IQN};\
             MaxConnections=4;ImmediateData=Yes"
        ),
        tsih,
        cid,
        cmd_sn,
    ))
    .unwrap();
    let (h, d) = read_pdu(&mut s).expect("no login response");
    (s, h, String::from_utf8_lossy(&d).replace('\0', ";"))
}

/// Multiple connections per session (MaxConnections 2, the default): a
/// second login with the session's ISID and TSIH joins it, a third is
/// refused (too many connections), a wrong TSIH too (session does not
/// exist); commands on either connection share one CmdSN window (also out
/// of order across connections; duplicates dropped), each answered on its
/// own connection; the connections sit on different poll groups; logging
/// out one connection keeps the session.
#[test]
pub(super) fn multiple_connections_per_session() {
    // Two reactors: one poll group each (the default is one per CPU of
    // the core mask).
    let t = start_cfg(512, Vec::new(), Vec::new(), "Malloc0", &["-m", "0x3"]);
    let (mut a, h, text) = login_mcs(t.port, 0, 0, 1);
    assert_eq!((h[36], h[37]), (0, 0), "leading login failed: {text}");
    assert!(text.contains("MaxConnections=2"), "{text}");
    let tsih = u16::from_be_bytes([h[14], h[15]]);
    assert_ne!(tsih, 0);

    let (mut b, h, text) = login_mcs(t.port, tsih, 1, 1);
    assert_eq!((h[36], h[37]), (0, 0), "second connection refused: {text}");
    assert_eq!(u16::from_be_bytes([h[14], h[15]]), tsih, "TSIH");
    assert_eq!(
        h[1] & 0x83,
        0x83,
        "second connection not in full feature phase"
    );
    // Leading-only keys keep the session's values.
    assert!(text.contains("MaxConnections=Irrelevant"), "{text}");
    let (_c, h, _) = login_mcs(t.port, tsih, 2, 1);
    assert_eq!(
        (h[36], h[37]),
        (2, 6),
        "third connection: too many connections"
    );
    let (_d, h, _) = login_mcs(t.port, tsih.wrapping_add(100), 1, 1);
    assert_eq!(
        (h[36], h[37]),
        (2, 0x0a),
        "unknown TSIH: session does not exist"
    );

    let conns = ok(&t.sock, "iscsi_get_connections", None);
    let conns = conns.as_array().unwrap();
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert!(conns.iter().all(|c| c["tsih"] == json!(tsih)), "{conns:?}");
    assert_ne!(
        conns[0]["thread_name"], conns[1]["thread_name"],
        "both connections on one poll group: {conns:?}"
    );

    // A WRITE on one connection, read back on the other (CmdSN 1, 2).
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    a.write_all(&scsi_rw(1, 1, 100, Some(&pattern))).unwrap();
    let (h, _) = read_pdu(&mut a).expect("no WRITE response");
    assert_eq!((h[0] & 0x3f, h[3]), (0x21, 0), "WRITE: {h:02x?}");
    b.write_all(&scsi_rw(2, 2, 100, None)).unwrap();
    let (h, d) = read_pdu(&mut b).expect("no READ answer on the second connection");
    assert_eq!((h[0] & 0x3f, h[3]), (0x25, 0), "READ: {h:02x?}");
    assert!(d == pattern, "the other connection read different data");
    // Session-wide ExpCmdSN (bytes 28..32): 3 after CmdSN 1 and 2.
    assert_eq!(&h[28..32], &3u32.to_be_bytes());
    // CmdSN 4 on A before CmdSN 3 on B: both run.
    a.write_all(&scsi_rw(3, 4, 100, None)).unwrap();
    let (h, _) = read_pdu(&mut a).expect("CmdSN 4 ahead of 3 not answered");
    assert_eq!((h[0] & 0x3f, h[3]), (0x25, 0));
    assert_eq!(
        &h[28..32],
        &3u32.to_be_bytes(),
        "ExpCmdSN waits for CmdSN 3"
    );
    b.write_all(&scsi_rw(4, 3, 100, None)).unwrap();
    let (h, _) = read_pdu(&mut b).expect("CmdSN 3 after 4 not answered");
    assert_eq!((h[0] & 0x3f, h[3]), (0x25, 0));
    assert_eq!(&h[28..32], &5u32.to_be_bytes(), "ExpCmdSN past 3 and 4");
    // A duplicate CmdSN (4) is dropped: the immediate NOP-Out after it is
    // the next thing answered.
    a.write_all(&scsi_rw(5, 4, 100, None)).unwrap();
    let mut nop = vec![0u8; 48];
    nop[0] = 0x40;
    nop[1] = 0x80;
    nop[16..20].copy_from_slice(&0x300u32.to_be_bytes());
    nop[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
    nop[24..28].copy_from_slice(&5u32.to_be_bytes());
    a.write_all(&nop).unwrap();
    let (h, _) = read_pdu(&mut a).expect("no NOP-In");
    assert_eq!(h[0] & 0x3f, 0x20, "duplicate CmdSN answered: {h:02x?}");

    // Logout of connection 1 (reason 1: close the connection) on itself.
    b.write_all(&logout_pdu(6, 1, 1, 5)).unwrap();
    let (h, _) = read_pdu(&mut b).expect("no logout response");
    assert_eq!((h[0] & 0x3f, h[2]), (0x26, 0), "logout: {h:02x?}");
    assert!(read_pdu(&mut b).is_none(), "connection 1 still open");
    // The session goes on, on connection 0.
    a.write_all(&scsi_rw(7, 5, 100, None)).unwrap();
    let (h, d) = read_pdu(&mut a).expect("session gone with its second connection");
    assert_eq!((h[0] & 0x3f, h[3]), (0x25, 0));
    assert!(d == pattern);
    let n = ok(&t.sock, "iscsi_get_connections", None)
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, 1);
    // A connection joins again, then logout reason 0 closes both.
    let (mut b, h, _) = login_mcs(t.port, tsih, 1, 6);
    assert_eq!((h[36], h[37]), (0, 0), "rejoining failed");
    a.write_all(&logout_pdu(8, 0, 0, 6)).unwrap();
    let (h, _) = read_pdu(&mut a).expect("no logout response");
    assert_eq!((h[0] & 0x3f, h[2]), (0x26, 0));
    assert!(read_pdu(&mut a).is_none(), "connection 0 still open");
    assert!(
        read_pdu(&mut b).is_none(),
        "connection 1 outlived its session"
    );
    assert_eq!(ok(&t.sock, "iscsi_get_connections", None), json!([]));
}

/// An immediate NOP-Out asking for an answer (ITT `itt`).
pub(super) fn nop_ping(itt: u32, cmd_sn: u32) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0] = 0x40;
    b[1] = 0x80;
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
    b[24..28].copy_from_slice(&cmd_sn.to_be_bytes());
    b
}

/// Task management across the connections of one session (on two poll
/// groups): ABORT TASK and LUN RESET sent on connection 0 abort a running
/// READ (1.5 s delay bdev) allegiant to connection 1; the response waits for
/// that I/O, and connection 1 gets no response for the aborted task.
#[test]
pub(super) fn task_management_across_connections() {
    const LAT_US: u64 = 1_500_000;
    let t = start_cfg(
        512,
        Vec::new(),
        vec![
            json!({"method": "bdev_delay_create", "params": {"base_bdev_name": "Malloc0",
            "name": "Delay0", "avg_read_latency": LAT_US, "p99_read_latency": LAT_US,
            "avg_write_latency": LAT_US, "p99_write_latency": LAT_US}}),
        ],
        "Delay0",
        &["-m", "0x3"],
    );
    let lat = Duration::from_micros(LAT_US);
    let (mut a, h, _) = login_mcs(t.port, 0, 0, 1);
    assert_eq!((h[36], h[37]), (0, 0));
    let tsih = u16::from_be_bytes([h[14], h[15]]);
    let (mut b, h, _) = login_mcs(t.port, tsih, 1, 1);
    assert_eq!((h[36], h[37]), (0, 0));

    for (n, func) in [(0u32, 1u8), (1, 5)] {
        let (itt, cmd_sn) = (1 + n, 1 + n);
        // The READ, then a ping on the same connection: once the ping is
        // answered, the READ has been submitted (PDUs run in order).
        let t0 = std::time::Instant::now();
        b.write_all(&scsi_rw(itt, cmd_sn, 0, None)).unwrap();
        b.write_all(&nop_ping(0x400 + n, cmd_sn + 1)).unwrap();
        let (h, _) = read_pdu(&mut b).expect("no NOP-In on connection 1");
        assert_eq!(
            (h[0] & 0x3f, &h[16..20]),
            (0x20, &(0x400 + n).to_be_bytes()[..])
        );
        let rtt = if func == 1 { itt } else { 0xffff_ffff };
        a.write_all(&tmf(func, 0x100 + n, rtt, cmd_sn + 1, cmd_sn))
            .unwrap();
        let (h, _) = read_pdu(&mut a).expect("no TMF response");
        assert_eq!(h[0] & 0x3f, 0x22, "function {func}: {h:02x?}");
        assert_eq!(h[2], 0, "function {func}: function complete");
        assert!(
            t0.elapsed() >= lat,
            "function {func}: answered before the other connection's I/O finished"
        );
        // Connection 1: no response for the aborted READ, the ping is next.
        b.write_all(&nop_ping(0x200 + n, cmd_sn + 1)).unwrap();
        let (h, _) = read_pdu(&mut b).expect("no NOP-In on connection 1");
        assert_eq!(
            (h[0] & 0x3f, &h[16..20]),
            (0x20, &(0x200 + n).to_be_bytes()[..]),
            "function {func}: connection 1 answered the aborted task: {h:02x?}"
        );
    }
    // ABORT TASK for a task no connection has, received already: does not exist.
    a.write_all(&tmf(1, 0x300, 0x77, 3, 1)).unwrap();
    let (h, _) = read_pdu(&mut a).expect("no TMF response");
    assert_eq!((h[0] & 0x3f, h[2]), (0x22, 1), "{h:02x?}");
}

/// `iscsi_set_options` `max_connections_per_session` 1: MaxConnections
/// negotiates to 1 and a second connection is refused (too many
/// connections); 0 is refused with the valid range.
#[test]
pub(super) fn max_connections_option() {
    let t = start_with(
        512,
        vec![json!({"method": "iscsi_set_options",
            "params": {"max_connections_per_session": 1}})],
    );
    let (_a, h, text) = login_mcs(t.port, 0, 0, 1);
    assert_eq!((h[36], h[37]), (0, 0), "{text}");
    assert!(text.contains("MaxConnections=1"), "{text}");
    let tsih = u16::from_be_bytes([h[14], h[15]]);
    let (_b, h, _) = login_mcs(t.port, tsih, 1, 1);
    assert_eq!(
        (h[36], h[37]),
        (2, 6),
        "second connection with MaxConnections=1"
    );
    let opts = ok(&t.sock, "iscsi_get_options", None);
    assert_eq!(opts["max_connections_per_session"], json!(1));
    drop(t);

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.json");
    std::fs::write(
        &cfg,
        json!({"subsystems": [{"subsystem": "iscsi", "config": [
            {"method": "iscsi_set_options", "params": {"max_connections_per_session": 0}}]}]})
        .to_string(),
    )
    .unwrap();
    let out = Command::new("timeout")
        .args(["30", TGT, "--no-huge", "-r"])
        .arg(dir.path().join("s.sock"))
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with max_connections_per_session 0"
    );
    assert!(
        err.contains("max_connections_per_session must be 1 to 65535"),
        "{err}"
    );
}

/// ABORT TASK for a command that has not arrived yet (sent on another
/// connection, RefCmdSN in the window): "function complete", and the command
/// is dropped when it comes (RFC 7143 11.5.1 b); the next one runs.
#[test]
pub(super) fn abort_task_before_the_task_arrives() {
    let t = start_cfg(512, Vec::new(), Vec::new(), "Malloc0", &["-m", "0x3"]);
    let (mut a, h, _) = login_mcs(t.port, 0, 0, 1);
    assert_eq!((h[36], h[37]), (0, 0));
    let tsih = u16::from_be_bytes([h[14], h[15]]);
    let (mut b, h, _) = login_mcs(t.port, tsih, 1, 1);
    assert_eq!((h[36], h[37]), (0, 0));
    // ABORT TASK (immediate, CmdSN 2) for ITT 5 with RefCmdSN 1, on A.
    a.write_all(&tmf(1, 0x100, 5, 2, 1)).unwrap();
    let (h, _) = read_pdu(&mut a).expect("no TMF response");
    assert_eq!((h[0] & 0x3f, h[2]), (0x22, 0), "{h:02x?}");
    // The READ it names (ITT 5, CmdSN 1) arrives on B: dropped.
    b.write_all(&scsi_rw(5, 1, 0, None)).unwrap();
    b.write_all(&nop_ping(0x200, 2)).unwrap();
    let (h, _) = read_pdu(&mut b).expect("no NOP-In");
    assert_eq!(
        (h[0] & 0x3f, &h[16..20]),
        (0x20, &0x200u32.to_be_bytes()[..]),
        "the aborted READ was answered: {h:02x?}"
    );
    // Its CmdSN was consumed: ExpCmdSN 2. The ITT works again.
    assert_eq!(&h[28..32], &2u32.to_be_bytes());
    b.write_all(&scsi_rw(5, 2, 0, None)).unwrap();
    let (h, _) = read_pdu(&mut b).expect("no answer to the next READ");
    assert_eq!((h[0] & 0x3f, h[3]), (0x25, 0), "{h:02x?}");
}
