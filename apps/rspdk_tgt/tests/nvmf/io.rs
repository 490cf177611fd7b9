//! Discovery and I/O round trips with and without digests.

use super::*;

#[test]
pub(super) fn discovery_lists_the_listener() {
    let t = start(&[]);
    let mut h = admin_queue(addr(&t), rspdk_nvmf::DISCOVERY, false, false);
    let qp = ok(
        &t.sock,
        "nvmf_subsystem_get_qpairs",
        Some(json!({"nqn": "discovery"})),
    );
    assert_eq!(
        qp[0]["qid"],
        json!(0),
        "rpc.py's 'discovery' shortcut: {qp}"
    );
    let (c, id) = h.identify(1, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(id[111], 2, "CNTRLTYPE: discovery controller");
    let (c, hdr) = h.get_log(0x70, 1024, 0);
    assert_eq!(status(&c), (0, 0));
    let numrec = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
    assert_eq!(numrec, 1);
    let (c, log) = h.get_log(0x70, 2048, 0);
    assert_eq!(status(&c), (0, 0));
    let e = &log[1024..2048];
    assert_eq!((e[0], e[1], e[2]), (3, 1, 2), "TCP, IPv4, NVM subsystem");
    let s = |r: std::ops::Range<usize>| {
        String::from_utf8_lossy(&e[r])
            .trim_end_matches('\0')
            .to_string()
    };
    assert_eq!(s(32..64), t.port.to_string());
    assert_eq!(s(256..512), NQN);
    assert_eq!(s(512..768), "127.0.0.1");
    // A referral to another discovery service joins the log page.
    ok(
        &t.sock,
        "nvmf_discovery_add_referral",
        Some(
            json!({"address": {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.2", "trsvcid": "4430"}}),
        ),
    );
    let (c, log) = h.get_log(0x70, 3072, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(u64::from_le_bytes(log[8..16].try_into().unwrap()), 2);
    let r = &log[2048..3072];
    assert_eq!(
        (r[0], r[1], r[2]),
        (3, 1, 1),
        "TCP, IPv4, a discovery service"
    );
    let rs = |x: std::ops::Range<usize>| {
        String::from_utf8_lossy(&r[x])
            .trim_end_matches('\0')
            .to_string()
    };
    assert_eq!(rs(32..64), "4430");
    assert_eq!(rs(256..512), rspdk_nvmf::DISCOVERY);
    assert_eq!(rs(512..768), "127.0.0.2");
    h.disconnect();
}

#[test]
pub(super) fn identify_write_read_compare_without_digests() {
    io_round(false, false, false);
}

#[test]
pub(super) fn identify_write_read_compare_with_digests_and_success_flag() {
    io_round(true, true, true);
}

pub(super) fn io_round(hd: bool, dd: bool, sqflow_off: bool) {
    let t = start(&["-m", "0x3"]);
    let mut a = admin_queue(addr(&t), NQN, hd, dd);
    let (c, id) = a.identify(1, 0);
    assert_eq!(status(&c), (0, 0));
    let txt = |r: std::ops::Range<usize>| {
        String::from_utf8_lossy(&id[r])
            .trim_end_matches([' ', '\0'])
            .to_string()
    };
    assert_eq!(txt(4..24), "SPDK001");
    assert_eq!(txt(24..64), "rspdk test");
    assert_eq!(txt(768..1024), NQN);
    assert_eq!(id[111], 1, "I/O controller");
    let ioccsz = u32::from_le_bytes(id[1792..1796].try_into().unwrap());
    assert_eq!(ioccsz, (64 + 4096) / 16);
    let cntlid = u16::from_le_bytes([id[78], id[79]]);
    assert_eq!(cntlid, a.cntlid);
    // Number of queues.
    let mut sqe = rspdk_nvme::spec::Sqe::new(0x09, 0);
    sqe.dw[10] = 0x07;
    sqe.dw[11] = 3 | (3 << 16);
    let (c, _) = a.cmd(sqe, &[], false, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(c.dw[0], 3 | (3 << 16));
    // Namespaces.
    let (c, list) = a.identify(2, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(&list[0..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
    let (c, ns) = a.identify(0, 1);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(u64::from_le_bytes(ns[0..8].try_into().unwrap()), 32768);
    assert_eq!(ns[130], 9, "LBADS: 512-byte blocks");
    let (c, desc) = a.identify(3, 1);
    assert_eq!(status(&c), (0, 0));
    assert!(desc.windows(2).any(|w| w == [3, 16]), "a UUID descriptor");
    let (c, _) = a.identify(0, 7);
    assert_eq!(status(&c), (0, 0), "inactive NSID: zeroes");
    let (c, _) = a.get_log(0x02, 512, 0);
    assert_eq!(status(&c), (0, 0));

    // Two I/O queues, on (probably) different poll groups.
    let mut q1 = io_queue(addr(&t), NQN, a.cntlid, 1, hd, dd, sqflow_off);
    let mut q2 = io_queue(addr(&t), NQN, a.cntlid, 2, hd, dd, false);
    // In-capsule write (4 KiB), read back on the other queue.
    let d1 = pattern(1, 4096);
    assert_eq!(status(&q1.write(1, 0, &d1, BS, true)), (0, 0));
    let (c, r) = q2.read(1, 0, 8, BS);
    assert_eq!(status(&c), (0, 0));
    assert!(r == d1, "in-capsule write read back");
    // R2T writes of several sizes up to the max I/O size.
    for (i, len) in [512usize, 4096, 8192, 65536, 131072]
        .into_iter()
        .enumerate()
    {
        let d = pattern(10 + i as u8, len);
        let lba = 1000 + i as u64 * 512;
        assert_eq!(
            status(&q1.write(1, lba, &d, BS, false)),
            (0, 0),
            "R2T write of {len}"
        );
        let (c, r) = q1.read(1, lba, (len / BS) as u32, BS);
        assert_eq!(status(&c), (0, 0));
        assert!(r == d, "R2T write of {len} read back");
        assert_eq!(status(&q2.compare(1, lba, &d, BS)), (0, 0), "compare equal");
    }
    let mut other = pattern(1, 4096);
    other[100] ^= 0xff;
    assert_eq!(
        status(&q2.compare(1, 0, &other, BS)),
        (2, 0x85),
        "compare failure"
    );
    // Write zeroes, then read zeroes.
    let mut sqe = rspdk_nvme::spec::Sqe::new(0x08, 1);
    sqe.set_slba(0);
    sqe.dw[12] = 7;
    let (c, _) = q1.cmd(sqe, &[], false, 0);
    assert_eq!(status(&c), (0, 0));
    let (_, r) = q1.read(1, 0, 8, BS);
    assert!(r.iter().all(|&b| b == 0), "write zeroes");
    // Flush, DSM deallocate.
    let (c, _) = q1.cmd(rspdk_nvme::spec::Sqe::new(0x00, 1), &[], false, 0);
    assert_eq!(status(&c), (0, 0));
    let mut range = vec![0u8; 16];
    range[4..8].copy_from_slice(&8u32.to_le_bytes());
    range[8..16].copy_from_slice(&1000u64.to_le_bytes());
    let mut sqe = rspdk_nvme::spec::Sqe::new(0x09, 1);
    sqe.dw[11] = 4;
    let (c, _) = q1.cmd(sqe, &range, true, 0);
    assert_eq!(status(&c), (0, 0), "DSM deallocate");
    // Out of range, bad namespace, too large.
    let (c, _) = q1.read(1, 32767, 2, BS);
    assert_eq!(status(&c), (0, 0x80), "LBA out of range");
    let (c, _) = q1.read(9, 0, 1, BS);
    assert_eq!(status(&c), (0, 0x0b), "invalid namespace");
    let (c, _) = q1.read(1, 0, 512, BS);
    assert_eq!(status(&c), (0, 0x0f), "transfer above max_io_size");

    // RPC views.
    let ctrlrs = ok(
        &t.sock,
        "nvmf_subsystem_get_controllers",
        Some(json!({"nqn": NQN})),
    );
    assert_eq!(ctrlrs[0]["cntlid"], json!(a.cntlid));
    assert_eq!(ctrlrs[0]["hostnqn"], json!(HOSTNQN));
    assert_eq!(ctrlrs[0]["num_io_qpairs"], json!(2));
    let qp = ok(
        &t.sock,
        "nvmf_subsystem_get_qpairs",
        Some(json!({"nqn": NQN})),
    );
    assert_eq!(qp.as_array().unwrap().len(), 3);
    let st = ok(&t.sock, "nvmf_get_stats", None);
    let groups = st["poll_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "one poll group per core: {st}");
    let io: u64 = groups
        .iter()
        .map(|g| g["current_io_qpairs"].as_u64().unwrap())
        .sum();
    assert_eq!(io, 2);

    // Namespace change: AER completes, changed NS log lists NSID 2.
    let mut aer = rspdk_nvme::spec::Sqe::new(0x0c, 0);
    aer.set_cid(900);
    a.send(&rspdk_nvmf::pdu::Pdu::CapsuleCmd {
        sqe: aer,
        data: &[],
    });
    ok(
        &t.sock,
        "bdev_malloc_create",
        Some(json!({"name": "Malloc1", "num_blocks": 2048, "block_size": 4096})),
    );
    let nsid = ok(
        &t.sock,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc1", "nsid": 2}})),
    );
    assert_eq!(nsid, json!(2));
    match a.recv() {
        Rx::Resp(c) => {
            assert_eq!(c.cid(), 900);
            assert_eq!(c.dw[0], 0x02 | (0x04 << 16), "namespace attribute notice");
        }
        other => panic!("expected the AER completion, got {other:?}"),
    }
    let (c, log) = a.get_log(0x04, 4096, 0);
    assert_eq!(status(&c), (0, 0));
    assert_eq!(&log[0..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
    let d = pattern(7, 8192);
    assert_eq!(status(&q2.write(2, 5, &d, 4096, false)), (0, 0));
    let (c, r) = q1.read(2, 5, 2, 4096);
    assert_eq!(status(&c), (0, 0));
    assert!(r == d, "new namespace serves I/O");

    q1.disconnect();
    q2.disconnect();
    a.disconnect();
    assert!(!t.stderr().contains("panicked"), "{}", t.stderr());
}
