//! Reads allocate nothing per I/O and wait for iobuf buffers.

use super::*;

#[test]
pub(super) fn no_allocation_per_read() {
    require("iscsi-perf", "libiscsi-bin");
    let t = start_cfg_env(
        512,
        Vec::new(),
        Vec::new(),
        "Malloc0",
        &[],
        &[("RSPDK_COUNT_ALLOCS", "1")],
    );
    let reports = |t: &Tgt| -> Vec<u64> {
        t.stderr()
            .lines()
            .filter_map(|l| l.strip_prefix("allocs/s "))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let before = reports(&t).len();
    let url = format!("iscsi://127.0.0.1:{}/{IQN}/0", t.port);
    let out = Command::new("timeout")
        .args([
            "60",
            "iscsi-perf",
            "-r",
            "-m",
            "32",
            "-b",
            "8",
            "-t",
            "5",
            &url,
        ])
        .output()
        .expect("iscsi-perf runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("iops average"), "iscsi-perf: {text}");
    // One more report after the run, so that its last second is counted.
    let at_end = reports(&t).len();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reports(&t).len() <= at_end {
        assert!(std::time::Instant::now() < deadline, "no allocation report");
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = reports(&t);
    let during = &all[before..];
    assert!(during.len() >= 4, "too few reports: {all:?}");
    let middle = &during[1..during.len() - 2];
    // Not quite 0: the pools grow (once each) when a loaded machine
    // changes how many I/Os are in flight or batched per poll.
    assert!(
        middle.iter().all(|&n| n <= 64),
        "allocations per second under I/O: {during:?}"
    );
}

/// READ data comes from iobuf (DMA memory: no bounce on a PCIe NVMe
/// LUN), and a READ finding iobuf's pool exhausted waits for a buffer
/// instead of failing: 32 READs of 64 KiB at once, with 8 large buffers
/// in the whole pool, all complete with the right data, and
/// `iobuf_get_stats` counts the "scsi" module's gets and its waits.
#[test]
pub(super) fn reads_wait_for_iobuf_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = iscsi_cfg(512, Vec::new(), Vec::new(), "Malloc0", port);
    cfg["subsystems"].as_array_mut().unwrap().insert(
        0,
        json!({"subsystem": "iobuf", "config": [{"method": "iobuf_set_options",
            "params": {"small_pool_count": 64, "large_pool_count": 8}}]}),
    );
    let t = Tgt::spawn(dir, port, &cfg, &[]);
    let mut s = login_plain(port, "iqn.2026-01.io.rspdk:iobuf");
    // A pattern in the first 4 KiB.
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    s.write_all(&scsi_rw(1, 1, 0, Some(&pattern))).unwrap();
    let (hdr, _) = read_pdu(&mut s).expect("write response");
    assert_eq!((hdr[0] & 0x3f, hdr[3]), (0x21, 0), "write failed");
    // 32 READ(10)s of 128 blocks (64 KiB: iobuf's large class) at once.
    let n = 32u32;
    let mut burst = Vec::new();
    for i in 0..n {
        let mut b = vec![0u8; 48];
        b[0] = 0x01;
        b[1] = 0xc1;
        b[16..20].copy_from_slice(&(100 + i).to_be_bytes());
        b[20..24].copy_from_slice(&65536u32.to_be_bytes());
        b[24..28].copy_from_slice(&(2 + i).to_be_bytes());
        b[32] = 0x28;
        b[39..41].copy_from_slice(&128u16.to_be_bytes());
        burst.extend_from_slice(&b);
    }
    s.write_all(&burst).unwrap();
    let mut got = std::collections::HashMap::<u32, Vec<u8>>::new();
    let mut done = 0;
    while done < n {
        let (hdr, data) = read_pdu(&mut s).expect("a READ did not complete");
        let itt = u32::from_be_bytes(hdr[16..20].try_into().unwrap());
        match hdr[0] & 0x3f {
            0x25 => {
                let off = u32::from_be_bytes(hdr[40..44].try_into().unwrap()) as usize;
                let buf = got.entry(itt).or_insert_with(|| vec![0xee; 65536]);
                buf[off..off + data.len()].copy_from_slice(&data);
                if hdr[1] & 0x01 != 0 {
                    assert_eq!(hdr[3], 0, "READ {itt} status");
                    done += 1;
                }
            }
            op => panic!(
                "unexpected PDU opcode {op:#x} (itt {itt}, status {})",
                hdr[3]
            ),
        }
    }
    for (itt, buf) in &got {
        assert_eq!(&buf[..4096], &pattern[..], "READ {itt}: wrong data");
        assert!(
            buf[4096..].iter().all(|&b| b == 0),
            "READ {itt}: wrong data"
        );
    }
    let stats = ok(&t.sock, "iobuf_get_stats", None);
    let scsi = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["module"] == "scsi")
        .unwrap_or_else(|| panic!("no scsi module in iobuf_get_stats: {stats}"));
    let large = &scsi["large_pool"];
    // Served at once (from the thread's cache or the pool), or after
    // waiting (handed a buffer another READ freed): every READ is one.
    let now = large["cache"].as_u64().unwrap() + large["main"].as_u64().unwrap();
    let waited = large["retry"].as_u64().unwrap();
    assert!(now <= 8, "more than the pool's 8 buffers at once: {stats}");
    assert!(waited > 0, "no READ waited: {stats}");
    assert_eq!(now + waited, u64::from(n), "{stats}");
}
