//! The NVMe/TCP host of `rspdk_nvme` (the same `Controller`/`IoQpair` API
//! as PCIe) against `rspdk_tgt` on loopback: identify, many I/O queue
//! pairs, digests on and off, in-capsule and R2T writes of every size up to
//! the maximum read back and compared, vectored I/O, compare, write zeroes,
//! deallocate, discovery and probe, clear errors for bad transport IDs,
//! a host vanishing mid-I/O, and the target restarted under a connected
//! host (reset reconnects, I/O resumes).

#[path = "../../../crates/event/tests/common/mod.rs"]
mod common;
mod common_tgt;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok, wait_started};
use common_tgt::{free_port, Tgt};
use rspdk_nvme::{Completion, Controller, ControllerOpts, IoQpair, NvmeError, SgeFns, TransportId};
use serde_json::json;

const TGT: &str = env!("CARGO_BIN_EXE_rspdk_tgt");
const NQN: &str = "nqn.2016-06.io.spdk:tcphost";
const BS: usize = 512;
const BLOCKS: u64 = 32768;
const ICD: usize = 4096;
const MAX_IO: usize = 131072;

/// `rspdk_tgt` exporting a 16 MiB malloc bdev as `NQN` on `port`.
fn start_on(port: u16, dir: tempfile::TempDir) -> Tgt {
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": BLOCKS, "block_size": BS}}
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP", "in_capsule_data_size": ICD, "max_io_size": MAX_IO,
                // Sub-second keep-alive timeouts for the keep-alive tests.
                "kas": 1, "min_kato": 100}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true,
                "serial_number": "TCPHOST01", "model_number": "rspdk tcp host test"}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address":
                {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}
        ]}
    ]});
    Tgt::spawn(dir, port, &cfg, &["-m", "0x1"])
}

fn start() -> Tgt {
    start_on(free_port(), tempfile::tempdir().unwrap())
}

fn trid(port: u16, nqn: &str) -> TransportId {
    format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{nqn}")
        .parse()
        .unwrap()
}

fn opts(hd: bool, dd: bool) -> ControllerOpts {
    ControllerOpts {
        header_digest: hd,
        data_digest: dd,
        admin_timeout_ms: 5000,
        // These tests do not poll the admin queue (see keep_alive_*).
        keep_alive_timeout_ms: 0,
        ..Default::default()
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8).wrapping_mul(31).wrapping_add(seed as u8) ^ (i >> 9) as u8 ^ (seed >> 8) as u8
        })
        .collect()
}

/// Polls until `n` completions arrived (10 s at most).
fn wait(qp: &mut IoQpair, n: usize) -> Vec<Completion> {
    let mut out = Vec::with_capacity(n);
    let end = Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        qp.process_completions(0, |c| out.push(*c)).unwrap();
        assert!(Instant::now() < end, "{} of {n} completions", out.len());
    }
    out
}

fn all_ok(cs: &[Completion]) {
    for c in cs {
        assert!(!c.status.is_error(), "ctx {}: {}", c.ctx, c.status);
    }
}

#[test]
fn identify_and_every_size_in_capsule_and_r2t_with_each_digest_combination() {
    let t = start();
    for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
        let c = Controller::connect(&trid(t.port, NQN), &opts(hd, dd)).unwrap();
        let d = c.data();
        assert_eq!(d.serial(), "TCPHOST01");
        assert_eq!(d.model(), "rspdk tcp host test");
        assert_eq!(d.subnqn(), NQN);
        assert!(c.is_fabrics() && !c.is_discovery());
        assert_eq!(c.driver(), "tcp");
        assert_eq!(c.version().0, 1);
        assert!(c.cap().mqes() >= 31);
        assert_eq!(c.max_transfer_size(), MAX_IO);
        let ns = c.namespaces();
        assert_eq!(ns.len(), 1);
        assert_eq!(
            (ns[0].id, ns[0].num_blocks, ns[0].block_size),
            (1, BLOCKS, 512)
        );
        assert!(c.health_log().is_ok());
        let mut qp = c.alloc_io_qpair(None).unwrap();
        // Every size from one block to the maximum: the first eight are in
        // the capsule (ICD 4096), the rest go by R2T/H2CData. 32 at a time.
        let sizes: Vec<usize> = (1..=MAX_IO / BS).map(|n| n * BS).collect();
        let lba = |i: usize| (i as u64 * 256) % (BLOCKS - 256);
        for chunk in sizes.chunks(32) {
            let base = chunk[0] / BS - 1;
            let mut bufs: Vec<Vec<u8>> = chunk
                .iter()
                .enumerate()
                .map(|(k, &len)| pattern((base + k) as u64 + hd as u64 * 7 + dd as u64 * 13, len))
                .collect();
            for (k, b) in bufs.iter().enumerate() {
                // SAFETY: `bufs` outlives the wait below.
                unsafe {
                    qp.write(
                        1,
                        b.as_ptr(),
                        lba(base + k),
                        (b.len() / BS) as u32,
                        k as u64,
                    )
                }
                .unwrap();
            }
            all_ok(&wait(&mut qp, chunk.len()));
            let mut back: Vec<Vec<u8>> = chunk.iter().map(|&l| vec![0u8; l]).collect();
            for (k, b) in back.iter_mut().enumerate() {
                // SAFETY: as above.
                unsafe {
                    qp.read(
                        1,
                        b.as_mut_ptr(),
                        lba(base + k),
                        (b.len() / BS) as u32,
                        k as u64,
                    )
                }
                .unwrap();
            }
            all_ok(&wait(&mut qp, chunk.len()));
            for k in 0..chunk.len() {
                assert!(back[k] == bufs[k], "size {} read back differs", chunk[k]);
            }
            bufs.clear();
        }
        // Compare: equal succeeds, different fails with Compare Failure.
        let same = pattern(7 + hd as u64 * 7 + dd as u64 * 13, BS * 8);
        // SAFETY: `same` outlives the waits.
        unsafe { qp.write(1, same.as_ptr(), lba(7), 8, 1) }.unwrap();
        all_ok(&wait(&mut qp, 1));
        // SAFETY: as above.
        unsafe { qp.compare(1, same.as_ptr(), lba(7), 8, 1) }.unwrap();
        all_ok(&wait(&mut qp, 1));
        let other = vec![0x5au8; BS * 8];
        // SAFETY: as above.
        unsafe { qp.compare(1, other.as_ptr(), lba(7), 8, 2) }.unwrap();
        let c2 = wait(&mut qp, 1);
        assert_eq!(
            (c2[0].status.sct(), c2[0].status.sc()),
            (2, 0x85),
            "{}",
            c2[0].status
        );
        // Write Zeroes, then the blocks read as zeroes; flush; deallocate.
        qp.write_zeroes(1, lba(3), 4, false, 3).unwrap();
        qp.flush(1, 4).unwrap();
        qp.deallocate(1, lba(9), 16, 5).unwrap();
        all_ok(&wait(&mut qp, 3));
        let mut z = vec![0xffu8; BS * 4];
        // SAFETY: as above.
        unsafe { qp.read(1, z.as_mut_ptr(), lba(3), 4, 6) }.unwrap();
        all_ok(&wait(&mut qp, 1));
        assert!(z.iter().all(|&b| b == 0), "write zeroes");
        drop(qp);
        c.detach().unwrap();
    }
    // The target's data buffers came from iobuf (DMA memory), counted
    // under SPDK's module name for the TCP transport; 128 KiB transfers
    // (MAX_IO) came from the large pool.
    let stats = ok(&t.sock, "iobuf_get_stats", None);
    let tcp = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["module"] == "nvmf_TCP")
        .unwrap_or_else(|| panic!("no nvmf_TCP module in iobuf_get_stats: {stats}"));
    for pool in ["small_pool", "large_pool"] {
        let p = &tcp[pool];
        let gets = p["cache"].as_u64().unwrap() + p["main"].as_u64().unwrap();
        assert!(gets > 0, "no {pool} buffer used: {stats}");
    }
}

/// Three pieces of one 3-block payload (a small SGL for readv/writev).
struct Pieces {
    bufs: [Vec<u8>; 3],
    idx: usize,
    off: usize,
}

fn sge_reset(arg: usize, offset: u32) {
    // SAFETY: `arg` is the address of a live `Pieces` for the command.
    let p = unsafe { &mut *(arg as *mut Pieces) };
    let mut o = offset as usize;
    p.idx = 0;
    while p.idx < 3 && o >= p.bufs[p.idx].len() {
        o -= p.bufs[p.idx].len();
        p.idx += 1;
    }
    p.off = o;
}

fn sge_next(arg: usize) -> (usize, u32) {
    // SAFETY: as in `sge_reset`.
    let p = unsafe { &mut *(arg as *mut Pieces) };
    if p.idx >= 3 {
        return (0, 0);
    }
    let b = &mut p.bufs[p.idx];
    let r = (b.as_mut_ptr() as usize + p.off, (b.len() - p.off) as u32);
    p.idx += 1;
    p.off = 0;
    r
}

#[test]
fn vectored_io_many_qpairs_and_threads() {
    let t = start();
    let c = Controller::connect(&trid(t.port, NQN), &opts(false, true)).unwrap();
    // writev of 100 + 924 + 8192 bytes (in R2T), readv back in other pieces.
    let data = pattern(99, 9216);
    let mut w = Pieces {
        bufs: [
            data[..100].to_vec(),
            data[100..1024].to_vec(),
            data[1024..].to_vec(),
        ],
        idx: 0,
        off: 0,
    };
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let fns = |p: &mut Pieces| SgeFns {
        reset: sge_reset,
        next: sge_next,
        arg: p as *mut Pieces as usize,
    };
    // SAFETY: `w` lives until the wait.
    unsafe { qp.writev(1, 1000, 18, fns(&mut w), 1) }.unwrap();
    all_ok(&wait(&mut qp, 1));
    let mut r = Pieces {
        bufs: [vec![0; 4096], vec![0; 5000], vec![0; 120]],
        idx: 0,
        off: 0,
    };
    // SAFETY: `r` lives until the wait.
    unsafe { qp.readv(1, 1000, 18, fns(&mut r), 2) }.unwrap();
    all_ok(&wait(&mut qp, 1));
    assert!(r.bufs.concat() == data, "readv");
    drop(qp);
    // Eight queue pairs on eight threads, each writing and reading back its
    // own blocks with 16 commands in flight.
    std::thread::scope(|s| {
        for th in 0..8u64 {
            let c = c.clone();
            s.spawn(move || {
                let mut qp = c.alloc_io_qpair(None).unwrap();
                let base = 2048 + th * 2048;
                for round in 0..4u64 {
                    let bufs: Vec<Vec<u8>> = (0..16)
                        .map(|k| pattern(th * 100 + round * 16 + k, 8192))
                        .collect();
                    for (k, b) in bufs.iter().enumerate() {
                        // SAFETY: `bufs` outlives the wait.
                        unsafe { qp.write(1, b.as_ptr(), base + k as u64 * 16, 16, k as u64) }
                            .unwrap();
                    }
                    all_ok(&wait(&mut qp, 16));
                    let mut back = vec![vec![0u8; 8192]; 16];
                    for (k, b) in back.iter_mut().enumerate() {
                        // SAFETY: as above.
                        unsafe { qp.read(1, b.as_mut_ptr(), base + k as u64 * 16, 16, k as u64) }
                            .unwrap();
                    }
                    all_ok(&wait(&mut qp, 16));
                    assert!(back == bufs, "thread {th} round {round}");
                }
            });
        }
    });
    let got = ok(
        &t.sock,
        "nvmf_subsystem_get_controllers",
        Some(json!({"nqn": NQN})),
    );
    assert_eq!(got.as_array().unwrap().len(), 1, "{got}");
    c.detach().unwrap();
}

#[test]
fn discovery_log_and_probe() {
    let t = start();
    let d = Controller::connect(
        &format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{}", t.port)
            .parse()
            .unwrap(),
        &ControllerOpts::default(),
    )
    .unwrap();
    assert!(d.is_discovery());
    assert!(d.namespaces().is_empty());
    assert!(d.alloc_io_qpair(None).is_err());
    let log = d.discovery_log().unwrap();
    let e = log.iter().find(|e| e.subnqn == NQN).expect("our subsystem");
    assert_eq!((e.trtype, e.adrfam, e.subtype), (3, 1, 2));
    assert_eq!(e.traddr, "127.0.0.1");
    assert_eq!(e.trsvcid, t.port.to_string());
    d.detach().unwrap();
    // probe() on a discovery trid attaches what the log lists.
    let disc: TransportId = format!(
        "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:nqn.2014-08.org.nvmexpress.discovery",
        t.port
    )
    .parse()
    .unwrap();
    let mut seen = Vec::new();
    let mut attached = Vec::new();
    let n = rspdk_nvme::probe(
        Some(&disc),
        |t, _| {
            seen.push(t.clone());
            true
        },
        |_, c, _| attached.push(c),
    )
    .unwrap();
    assert_eq!(n, 1);
    assert_eq!(seen[0].subnqn.as_deref(), Some(NQN));
    assert_eq!(attached[0].data().serial(), "TCPHOST01");
    for c in attached {
        c.detach().unwrap();
    }
}

#[test]
fn bad_transport_ids_and_connects_give_clear_errors() {
    for (s, want) in [
        (
            "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:70000",
            "trsvcid '70000'",
        ),
        (
            "trtype:TCP adrfam:IPv5 traddr:127.0.0.1",
            "unknown adrfam 'IPv5'",
        ),
        (
            "trtype:TCP adrfam:IPv6 traddr:127.0.0.1",
            "does not match adrfam IPv6",
        ),
        ("trtype:TCP adrfam:IPv4 trsvcid:4420", "no traddr"),
        ("trtype:TPC traddr:127.0.0.1", "unknown trtype 'TPC'"),
        ("trtype:TCP traddr:127.0.0.1 subnqn", "is not key:value"),
    ] {
        let e = s.parse::<TransportId>().unwrap_err().to_string();
        assert!(e.contains(want), "{s}: {e}");
    }
    let t = start();
    // No such subsystem: Connect is refused, and the message says why.
    let e = Controller::connect(
        &trid(t.port, "nqn.2016-06.io.spdk:none"),
        &ControllerOpts::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("Connect of queue 0 to nqn.2016-06.io.spdk:none"),
        "{e}"
    );
    assert!(e.contains("subsystem NQN"), "{e}");
    // Nothing listening: the connect error names the address and the fix.
    let e = Controller::connect(&trid(free_port(), NQN), &ControllerOpts::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("127.0.0.1") && e.contains("is the target listening"),
        "{e}"
    );
    // A host name that does not resolve.
    let e = Controller::connect(
        &"trtype:TCP traddr:no.such.host.invalid trsvcid:4420 subnqn:x"
            .parse()
            .unwrap(),
        &ControllerOpts::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("does not resolve"), "{e}");
    // Over the controller's limits: named before anything is sent.
    let c = Controller::connect(&trid(t.port, NQN), &ControllerOpts::default()).unwrap();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let b = vec![0u8; MAX_IO * 2];
    // SAFETY: refused before use.
    let e = unsafe { qp.read(1, b.as_ptr() as *mut u8, 0, (MAX_IO * 2 / BS) as u32, 0) }
        .unwrap_err()
        .to_string();
    assert!(e.contains("maximum data transfer size"), "{e}");
    // SAFETY: as above.
    let e = unsafe { qp.read(1, b.as_ptr() as *mut u8, 0, 1, 0) };
    drop(e);
    let _ = wait(&mut qp, 1);
    // SAFETY: as above.
    let e = unsafe { qp.read(2, b.as_ptr() as *mut u8, 0, 1, 0) }
        .unwrap_err()
        .to_string();
    assert!(e.contains("namespace 2 is not active"), "{e}");
}

#[test]
fn host_gone_mid_io_leaves_the_target_healthy() {
    let t = start();
    for round in 0..3 {
        let c = Controller::connect(&trid(t.port, NQN), &ControllerOpts::default()).unwrap();
        let mut qp = c.alloc_io_qpair(None).unwrap();
        let bufs: Vec<Vec<u8>> = (0..32).map(|k| pattern(k, 65536)).collect();
        for (k, b) in bufs.iter().enumerate() {
            // SAFETY: the connection is dropped before `bufs`; the target
            // never touches host memory.
            unsafe { qp.write(1, b.as_ptr(), k as u64 * 128, 128, k as u64) }.unwrap();
        }
        // Send some of it, then vanish without a detach.
        let _ = qp.process_completions(0, |_| {});
        drop(qp);
        drop(c);
        let _ = round;
    }
    // The target still serves a new host, and its RPCs answer.
    let c = Controller::connect(&trid(t.port, NQN), &ControllerOpts::default()).unwrap();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let b = pattern(5, 4096);
    // SAFETY: `b` outlives the wait.
    unsafe { qp.write(1, b.as_ptr(), 100, 8, 1) }.unwrap();
    all_ok(&wait(&mut qp, 1));
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let got = ok(
            &t.sock,
            "nvmf_subsystem_get_controllers",
            Some(json!({"nqn": NQN})),
        );
        if got.as_array().unwrap().len() == 1 {
            break;
        }
        assert!(Instant::now() < end, "old controllers linger: {got}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn target_restart_then_reset_reconnects_and_io_resumes() {
    let t = start();
    let port = t.port;
    let c = Controller::connect(&trid(port, NQN), &opts(true, true)).unwrap();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let b = pattern(1, 8192);
    // SAFETY: `b` outlives the wait.
    unsafe { qp.write(1, b.as_ptr(), 0, 16, 1) }.unwrap();
    all_ok(&wait(&mut qp, 1));
    // Kill the target with I/O in flight.
    let mut t = t;
    let dir = t.crash();
    let mut r = vec![0u8; 8192];
    // SAFETY: `r` outlives every poll below.
    let _ = unsafe { qp.read(1, r.as_mut_ptr(), 0, 16, 2) };
    let end = Instant::now() + Duration::from_secs(10);
    let mut aborted = 0;
    loop {
        match qp.process_completions(0, |c| {
            assert!(c.status.is_aborted_by_driver(), "{}", c.status);
            aborted += 1;
        }) {
            Err(NvmeError::ControllerFailed { .. }) => break,
            Err(e) => panic!("{e}"),
            Ok(_) => {}
        }
        let _ = c.process_admin_completions();
        assert!(Instant::now() < end, "the lost connection was not noticed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(c.is_failed());
    assert!(aborted <= 1);
    // While the target is down a reset (reconnect) fails and says so.
    let e = c.reset().unwrap_err().to_string();
    assert!(e.contains("is the target listening"), "{e}");
    assert!(c.is_failed());
    // Same port again: the reset reconnects, the qpair follows, I/O resumes.
    let t = start_on(port, dir);
    c.reset().unwrap();
    assert!(!c.is_failed());
    let b2 = pattern(2, 8192);
    // SAFETY: `b2` and `r` outlive the waits.
    unsafe { qp.write(1, b2.as_ptr(), 64, 16, 3) }.unwrap();
    all_ok(&wait(&mut qp, 1));
    // SAFETY: as above.
    unsafe { qp.read(1, r.as_mut_ptr(), 64, 16, 4) }.unwrap();
    all_ok(&wait(&mut qp, 1));
    assert!(r == b2);
    drop(qp);
    c.detach().unwrap();
    drop(t);
}

/// Command timeouts over TCP: a read on a namespace whose bdev delays
/// every I/O by 600 ms is reported once to the timeout callback (100 ms)
/// with its context, and still completes with its data.
#[test]
fn command_timeouts_are_reported_once() {
    let port = free_port();
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": BLOCKS, "block_size": BS}},
            {"method": "bdev_delay_create", "params": {"base_bdev_name": "Malloc0", "name": "Slow0",
                "avg_read_latency": 600000, "p99_read_latency": 600000,
                "avg_write_latency": 0, "p99_write_latency": 0}}
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Slow0"}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address":
                {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}
        ]}
    ]});
    let _t = Tgt::spawn(tempfile::tempdir().unwrap(), port, &cfg, &["-m", "0x1"]);
    let c = Controller::connect(&trid(port, NQN), &opts(false, false)).unwrap();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    qp.set_timeout(Duration::from_millis(100), move |ev| {
        seen.lock().unwrap().push(*ev);
        rspdk_nvme::TimeoutAction::None
    });
    let p = pattern(21, 4096);
    // SAFETY: the buffer outlives the wait.
    unsafe { qp.write(1, p.as_ptr(), 8, 8, 1) }.unwrap();
    all_ok(&wait(&mut qp, 1));
    assert!(events.lock().unwrap().is_empty(), "a fast write timed out");
    let mut back = vec![0u8; 4096];
    // SAFETY: as above.
    unsafe { qp.read(1, back.as_mut_ptr(), 8, 8, 2) }.unwrap();
    all_ok(&wait(&mut qp, 1));
    assert!(back == p);
    let ev = events.lock().unwrap().clone();
    assert_eq!(ev.len(), 1, "reported once: {ev:?}");
    assert_eq!((ev[0].ctx, ev[0].opcode), (2, 0x02), "{ev:?}");
}

#[test]
fn keep_alive_from_the_admin_poll_keeps_the_controller() {
    let t = start();
    let o = ControllerOpts {
        keep_alive_timeout_ms: 600,
        ..Default::default()
    };
    let c = Controller::connect(&trid(t.port, NQN), &o).unwrap();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let b = pattern(3, 4096);
    // Polling the admin queue sends Keep Alives: alive well past the KATO.
    let end = Instant::now() + Duration::from_millis(2000);
    while Instant::now() < end {
        c.process_admin_completions().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: `b` outlives the wait.
    unsafe { qp.write(1, b.as_ptr(), 0, 8, 1) }.unwrap();
    all_ok(&wait(&mut qp, 1));
    // Without the admin poll the target ends the controller after the KATO.
    std::thread::sleep(Duration::from_millis(2500));
    // SAFETY: as above.
    let _ = unsafe { qp.write(1, b.as_ptr(), 0, 8, 2) };
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let mut aborted = false;
        match qp.process_completions(0, |c| aborted |= c.status.is_aborted_by_driver()) {
            Err(_) => break,
            Ok(_) if aborted => break,
            Ok(_) => {}
        }
        assert!(Instant::now() < end, "the target kept a silent host");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(c.is_failed());
}

/// `rspdk_tgt` with `cfg` (a JSON config) and an RPC socket in `dir`.
fn start_cfg(dir: &std::path::Path, tag: &str, cfg: serde_json::Value) -> Child {
    let sock = dir.join(format!("{tag}.sock"));
    let _ = std::fs::remove_file(&sock);
    let cfg_path = dir.join(format!("{tag}.json"));
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let child = Command::new(TGT)
        .arg("-r")
        .arg(&sock)
        .arg("--no-huge")
        .arg("-c")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{tag}.log"))).unwrap())
        .spawn()
        .unwrap();
    wait_started(&sock);
    child
}

/// A target exporting an aio bdev on `file` (so data outlives a restart).
fn file_target(dir: &std::path::Path, file: &std::path::Path, port: u16) -> Child {
    start_cfg(
        dir,
        "a",
        json!({"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "bdev_aio_create", "params": {"name": "Aio0", "filename": file, "block_size": 512}}
            ]},
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
                {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true, "serial_number": "FILE01"}},
                {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Aio0"}}},
                {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address":
                    {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}
            ]}
        ]}),
    )
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `bdev_nvme_attach_controller -t tcp` in a second rspdk_tgt (B), which
/// re-exports the NVMe bdev over NVMe/TCP; our host writes and reads
/// through B to the first target (A). A is killed: B's controller goes to
/// resetting, a write waits in B, A comes back on the same port, B
/// reconnects and the write completes; data written before is still read
/// back. Then a second controller with a 2 s ctrlr_loss_timeout_sec and a
/// 1 s fast_io_fail_timeout_sec: I/O fails fast and the controller and its
/// bdev are deleted.
#[test]
fn bdev_nvme_tcp_attach_reconnect_fast_io_fail_and_loss() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let pa = free_port();
    let mut a = Kill(file_target(dir.path(), &file, pa));
    let b = Kill(start_cfg(
        dir.path(),
        "b",
        json!({"subsystems": [{"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}
        ]}]}),
    ));
    let bsock = dir.path().join("b.sock");
    let names = ok(
        &bsock,
        "bdev_nvme_attach_controller",
        Some(
            json!({"name": "Nvme0", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
            "trsvcid": pa.to_string(), "subnqn": NQN, "hostnqn": "nqn.2014-08.org.nvmexpress:uuid:bhost",
            "hdgst": true, "ddgst": true, "ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 1}),
        ),
    );
    assert_eq!(names, json!(["Nvme0n1"]));
    let c = ok(&bsock, "bdev_nvme_get_controllers", None);
    assert_eq!(c[0]["ctrlrs"][0]["state"], "enabled", "{c}");
    assert_eq!(c[0]["ctrlrs"][0]["trid"]["trtype"], "TCP");
    assert_eq!(c[0]["ctrlrs"][0]["trid"]["trsvcid"], pa.to_string());
    assert_eq!(
        c[0]["ctrlrs"][0]["host"]["nqn"],
        "nqn.2014-08.org.nvmexpress:uuid:bhost"
    );
    let saved = ok(&bsock, "save_config", None).to_string();
    for want in [
        r#""method":"bdev_nvme_attach_controller""#,
        r#""trtype":"TCP""#,
        r#""adrfam":"IPv4""#,
        r#""hdgst":true"#,
        r#""ctrlr_loss_timeout_sec":-1"#,
        r#""reconnect_delay_sec":1"#,
    ] {
        assert!(saved.contains(want), "{want} not in {saved}");
    }
    // Bad policies are refused with the rule they break.
    let e = common::rpc(
        &bsock,
        "bdev_nvme_attach_controller",
        Some(
            json!({"name": "Bad", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": pa.to_string(),
            "subnqn": NQN, "ctrlr_loss_timeout_sec": 5}),
        ),
    )
    .unwrap_err();
    assert!(e.message.contains("reconnect_delay_sec"), "{}", e.message);
    // B re-exports Nvme0n1.
    let pb = free_port();
    let bnqn = "nqn.2016-06.io.spdk:reexport";
    ok(
        &bsock,
        "nvmf_create_subsystem",
        Some(json!({"nqn": bnqn, "allow_any_host": true})),
    );
    ok(
        &bsock,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": bnqn, "namespace": {"bdev_name": "Nvme0n1"}})),
    );
    ok(
        &bsock,
        "nvmf_subsystem_add_listener",
        Some(
            json!({"nqn": bnqn, "listen_address": {"trtype": "tcp", "adrfam": "ipv4",
            "traddr": "127.0.0.1", "trsvcid": pb.to_string()}}),
        ),
    );
    let host = Controller::connect(&trid(pb, bnqn), &opts(false, false)).unwrap();
    let mut qp = host.alloc_io_qpair(None).unwrap();
    let p1 = pattern(11, 65536);
    // SAFETY: every buffer outlives its wait.
    unsafe { qp.write(1, p1.as_ptr(), 0, 128, 1) }.unwrap();
    all_ok(&wait(&mut qp, 1));
    // A dies; a write through B waits for the reconnect.
    let _ = a.0.kill();
    let _ = a.0.wait();
    let p2 = pattern(12, 8192);
    // SAFETY: as above.
    unsafe { qp.write(1, p2.as_ptr(), 1000, 16, 2) }.unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let c = ok(&bsock, "bdev_nvme_get_controllers", None);
        if c[0]["ctrlrs"][0]["state"] == "resetting" {
            break;
        }
        assert!(Instant::now() < end, "{c}");
        qp.process_completions(0, |c| panic!("completed while A is down: {c:?}"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..50 {
        qp.process_completions(0, |c| panic!("completed while A is down: {c:?}"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    a = Kill(file_target(dir.path(), &file, pa));
    all_ok(&wait(&mut qp, 1));
    let c = ok(&bsock, "bdev_nvme_get_controllers", None);
    assert_eq!(c[0]["ctrlrs"][0]["state"], "enabled", "{c}");
    let mut back = vec![0u8; 65536];
    // SAFETY: as above.
    unsafe { qp.read(1, back.as_mut_ptr(), 0, 128, 3) }.unwrap();
    all_ok(&wait(&mut qp, 1));
    assert!(back == p1, "data written before the restart");
    let mut back2 = vec![0u8; 8192];
    // SAFETY: as above.
    unsafe { qp.read(1, back2.as_mut_ptr(), 1000, 16, 4) }.unwrap();
    all_ok(&wait(&mut qp, 1));
    assert!(back2 == p2, "the write that waited");
    drop(qp);
    host.detach().unwrap();
    ok(&bsock, "nvmf_delete_subsystem", Some(json!({"nqn": bnqn})));
    ok(
        &bsock,
        "bdev_nvme_detach_controller",
        Some(json!({"name": "Nvme0"})),
    );
    // Fast I/O fail and controller loss.
    ok(
        &bsock,
        "bdev_nvme_attach_controller",
        Some(
            json!({"name": "Nvme1", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
            "trsvcid": pa.to_string(), "subnqn": NQN,
            "ctrlr_loss_timeout_sec": 3, "reconnect_delay_sec": 1, "fast_io_fail_timeout_sec": 1}),
        ),
    );
    ok(
        &bsock,
        "nvmf_create_subsystem",
        Some(json!({"nqn": bnqn, "allow_any_host": true})),
    );
    ok(
        &bsock,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": bnqn, "namespace": {"bdev_name": "Nvme1n1"}})),
    );
    ok(
        &bsock,
        "nvmf_subsystem_add_listener",
        Some(
            json!({"nqn": bnqn, "listen_address": {"trtype": "tcp", "adrfam": "ipv4",
            "traddr": "127.0.0.1", "trsvcid": pb.to_string()}}),
        ),
    );
    let host = Controller::connect(&trid(pb, bnqn), &opts(false, false)).unwrap();
    let mut qp = host.alloc_io_qpair(None).unwrap();
    drop(a);
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    // SAFETY: as above.
    unsafe { qp.read(1, back2.as_mut_ptr(), 0, 16, 5) }.unwrap();
    let c = wait(&mut qp, 1);
    let waited = t0.elapsed();
    assert!(c[0].status.is_error(), "read with A gone must fail");
    assert!(
        waited < Duration::from_millis(2900),
        "failed after {waited:?}: fast_io_fail_timeout_sec is 1"
    );
    // After ctrlr_loss_timeout_sec the controller and its bdev are gone.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let c = ok(&bsock, "bdev_nvme_get_controllers", None);
        if c == json!([]) {
            break;
        }
        assert!(Instant::now() < end, "controller not deleted: {c}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(common::rpc(&bsock, "bdev_get_bdevs", Some(json!({"name": "Nvme1n1"}))).is_err());
    drop(qp);
    drop(host);

    // No reconnect policy (SPDK's default, ctrlr_loss_timeout_sec 0): a
    // failure gets one reset, which fails while A is down; the controller
    // then stays failed (not deleted, not retrying) and its I/O fails at
    // once, until bdev_nvme_reset_controller once A is back; then reads
    // work again with the data intact.
    let mut a = Kill(file_target(dir.path(), &file, pa));
    ok(
        &bsock,
        "bdev_nvme_attach_controller",
        Some(
            json!({"name": "Nvme2", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
            "trsvcid": pa.to_string(), "subnqn": NQN}),
        ),
    );
    let (pc, cnqn) = (free_port(), "nqn.2016-06.io.spdk:reexport2");
    ok(
        &bsock,
        "nvmf_create_subsystem",
        Some(json!({"nqn": cnqn, "allow_any_host": true})),
    );
    ok(
        &bsock,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": cnqn, "namespace": {"bdev_name": "Nvme2n1"}})),
    );
    ok(
        &bsock,
        "nvmf_subsystem_add_listener",
        Some(
            json!({"nqn": cnqn, "listen_address": {"trtype": "tcp", "adrfam": "ipv4",
            "traddr": "127.0.0.1", "trsvcid": pc.to_string()}}),
        ),
    );
    let host = Controller::connect(&trid(pc, cnqn), &opts(false, false)).unwrap();
    let mut qp = host.alloc_io_qpair(None).unwrap();
    let _ = a.0.kill();
    let _ = a.0.wait();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let c = ok(
            &bsock,
            "bdev_nvme_get_controllers",
            Some(json!({"name": "Nvme2"})),
        );
        if c[0]["ctrlrs"][0]["state"] == "failed" {
            break;
        }
        assert!(Instant::now() < end, "{c}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let c = ok(
        &bsock,
        "bdev_nvme_get_controllers",
        Some(json!({"name": "Nvme2"})),
    );
    assert_eq!(c[0]["ctrlrs"][0]["state"], "failed", "one reset only: {c}");
    let t0 = Instant::now();
    // SAFETY: as above.
    unsafe { qp.read(1, back.as_mut_ptr(), 0, 128, 101) }.unwrap();
    assert!(
        wait(&mut qp, 1)[0].status.is_error(),
        "I/O on a failed controller"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "failed at once");
    a = Kill(file_target(dir.path(), &file, pa));
    ok(
        &bsock,
        "bdev_nvme_reset_controller",
        Some(json!({"name": "Nvme2"})),
    );
    // SAFETY: as above.
    unsafe { qp.read(1, back.as_mut_ptr(), 0, 128, 102) }.unwrap();
    all_ok(&wait(&mut qp, 1));
    assert!(back == p1, "data read after the reset");
    let c = ok(
        &bsock,
        "bdev_nvme_get_controllers",
        Some(json!({"name": "Nvme2"})),
    );
    assert_eq!(c[0]["ctrlrs"][0]["state"], "enabled", "{c}");
    drop(qp);
    drop(host);
    drop(a);
    drop(b);
}

/// `bdev_nvme_attach_controller` to an address that accepts connections
/// and never answers does not freeze the target: while the attach waits
/// (here up to its 3 s fabrics connect timeout), other RPCs answer at
/// once; then the attach fails with an error naming the address.
#[test]
fn attach_to_a_silent_address_does_not_block_the_target() {
    let t = start();
    // Connections complete in the kernel's backlog; nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let sock = t.sock.clone();
    let attach = std::thread::spawn(move || {
        common::rpc(
            &sock,
            "bdev_nvme_attach_controller",
            Some(json!({"name": "Silent", "trtype": "tcp", "adrfam": "ipv4",
                "traddr": "127.0.0.1", "trsvcid": port.to_string(),
                "subnqn": "nqn.2016-06.io.spdk:none", "fabrics_connect_timeout_us": 3_000_000})),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let t0 = Instant::now();
        ok(&t.sock, "bdev_get_bdevs", None);
        assert!(
            // Blocked, it would wait out the 3 s connect timeout.
            t0.elapsed() < Duration::from_millis(1500),
            "an RPC waited {:?} behind the attach",
            t0.elapsed()
        );
        assert!(
            !attach.is_finished(),
            "the attach did not wait for the silent address"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = attach.join().unwrap();
    let e = r.expect_err("attaching to a silent address fails");
    assert!(e.message.contains(&port.to_string()), "{e:?}");
    drop(silent);
}
