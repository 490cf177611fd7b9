//! Guest tests: run by `tests/vm/run` inside a QEMU guest with an emulated
//! NVMe controller (serial RSPDKVM0001, namespace 1: 64 MiB of 512-byte
//! blocks, namespace 2: 32 MiB of 4 KiB blocks) bound to vfio-pci (with a
//! 48- or 39-bit IOMMU) or uio_pci_generic (no IOMMU).
//!
//! Built only with `--features vm-tests`. Outside the guest every test
//! fails with a message saying so: these tests are never skipped green.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rspdk_env::DmaBuf;
use rspdk_nvme::status::{sc, sct};
use rspdk_nvme::{
    Completion, Controller, ControllerOpts, IoQpair, QpairOpts, SgeFns, Status, TransportId,
};

// ---- a counting allocator: allocations made by this thread -------------

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const
// thread-local Cell, which needs no allocation.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

// ---- the guest's setup ---------------------------------------------------

const SERIAL: &str = "RSPDKVM0001";
const MODEL: &str = "QEMU NVMe Ctrl";

fn mode() -> String {
    std::env::var("RSPDK_VM_MODE").unwrap_or_else(|_| {
        panic!("not in the test VM (RSPDK_VM_MODE unset): these tests run inside QEMU through tests/vm/run")
    })
}

fn boot() -> String {
    std::env::var("RSPDK_VM_BOOT").unwrap_or_default()
}

fn bdf() -> String {
    mode();
    std::env::var("RSPDK_VM_BDF").expect("RSPDK_VM_BDF is set by the guest script")
}

fn env() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        mode();
        let _ = tracing_subscriber_init();
        rspdk_env::init(&rspdk_env::EnvOpts {
            name: "vm-tests".into(),
            ..Default::default()
        })
        .expect("env init");
    });
}

fn tracing_subscriber_init() -> Option<()> {
    None
}

fn trid() -> TransportId {
    format!("trtype:PCIe traddr:{}", bdf())
        .parse()
        .expect("trid")
}

fn attach() -> Controller {
    env();
    Controller::connect(&trid(), &ControllerOpts::default()).expect("attach")
}

/// Polls until `n` completions arrived (or 30 s pass), collecting them.
fn wait(qp: &mut IoQpair, n: usize) -> Vec<Completion> {
    let mut out = Vec::with_capacity(n);
    let end = Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        qp.process_completions(0, |c| out.push(*c)).expect("poll");
        assert!(
            Instant::now() < end,
            "only {} of {n} completions in 30 s",
            out.len()
        );
    }
    out
}

fn ok(c: &Completion) {
    assert!(
        !c.status.is_error(),
        "command {} failed: {}",
        c.ctx,
        c.status
    );
}

fn fill(buf: &mut [u8], seed: u64) {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    r.fill(buf);
}

// ---- tests ---------------------------------------------------------------

#[test]
fn identify_reports_what_qemu_was_given() {
    let c = attach();
    let d = c.data();
    assert_eq!(d.serial(), SERIAL);
    assert_eq!(d.model(), MODEL);
    assert_eq!(d.vid(), 0x1b36);
    assert!(d.nn() >= 2, "nn = {}", d.nn());
    let ns = c.namespaces();
    let ids: Vec<u32> = ns.iter().map(|n| n.id).collect();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!((ns[0].block_size, ns[0].num_blocks), (512, 64 << 20 >> 9));
    assert_eq!((ns[1].block_size, ns[1].num_blocks), (4096, 32 << 20 >> 12));
    assert_eq!(
        c.trid().to_string(),
        format!("trtype:PCIe traddr:{}", bdf())
    );
    c.detach().unwrap();
}

#[test]
fn smart_logs_and_features() {
    let c = attach();
    let h = c.health_log().expect("SMART log");
    assert!(
        h.temperature() > 200 && h.temperature() < 400,
        "temperature {} K",
        h.temperature()
    );
    let _ = c.firmware_log().expect("firmware log");
    let errs = c.error_log(1).expect("error log");
    assert_eq!(errs.len(), 1);
    if c.data().vwc_present() {
        c.set_write_cache(false).unwrap();
        assert!(!c.write_cache().unwrap());
        c.set_write_cache(true).unwrap();
        assert!(c.write_cache().unwrap());
    }
    let nq = c
        .get_feature(rspdk_nvme::spec::feature::NUMBER_OF_QUEUES, 0)
        .unwrap();
    assert!((nq & 0xffff) + 1 >= c.max_io_qpairs());
    // an unknown log page: the status comes back with its name.
    let e = c.get_log_page(0x6f, 0, 512, 0).unwrap_err();
    assert!(e.to_string().contains("Get Log Page 0x6f failed"), "{e}");
    c.detach().unwrap();
}

#[test]
fn iova_mode_and_iommu_match_the_boot() {
    env();
    let e = rspdk_env::env().unwrap();
    let buf = DmaBuf::zeroed(4096).unwrap();
    match boot().as_str() {
        "vfio48" | "vfio39" => {
            assert_eq!(e.iova_mode(), rspdk_env::IovaMode::Va);
            let c = attach();
            assert_eq!(c.driver(), "vfio-pci");
            let info = rspdk_env::vfio::iommu_info().expect("container set up");
            let bits = if boot() == "vfio39" { 39 } else { 48 };
            assert_eq!(info.max_iova(), (1u64 << bits) - 1, "{info:?}");
            assert!((buf.as_ptr() as u64) < (1u64 << bits));
            assert_eq!(
                rspdk_env::vfio::dma_iova(buf.as_ptr() as usize),
                buf.as_ptr() as u64
            );
            if bits == 39 {
                assert_eq!(
                    e.opts().base_virtaddr,
                    1 << 37,
                    "heap placed below the 39-bit aperture"
                );
            }
            c.detach().unwrap();
        }
        "uio" => {
            assert_eq!(e.iova_mode(), rspdk_env::IovaMode::Pa);
            let c = attach();
            assert_eq!(c.driver(), "uio_pci_generic");
            assert_ne!(
                buf.iova(),
                buf.as_ptr() as u64,
                "physical, not virtual, addresses"
            );
            c.detach().unwrap();
        }
        other => panic!("unknown boot {other}"),
    }
}

#[test]
fn vfio_errors_are_clear() {
    env();
    match mode().as_str() {
        "uio" => {
            let e = rspdk_env::vfio::VfioDevice::open(&bdf())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("no IOMMU group") && e.contains("uio_pci_generic"),
                "{e}"
            );
        }
        _ => {
            // The second controller shares its IOMMU group with a virtio
            // device the kernel drives (tests/vm/run sets this up).
            let bdf2 =
                std::env::var("RSPDK_VM_BDF2").expect("a second controller in the vfio boots");
            let e = rspdk_env::vfio::VfioDevice::open(&bdf2)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("is not viable") && e.contains("(bound to virtio-pci)"),
                "{e}"
            );
            let e = Controller::connect(
                &TransportId::pcie(&bdf2).unwrap(),
                &ControllerOpts::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("is not viable"), "{e}");
            // The host bridge is not bound to vfio-pci.
            let e = rspdk_env::vfio::VfioDevice::open("0000:00:00.0")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("not vfio-pci") && e.contains("rspdk_setup config"),
                "{e}"
            );
        }
    }
    let e = Controller::connect(
        &TransportId::pcie("0000:00:1f.7").unwrap(),
        &ControllerOpts::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no PCI device 0000:00:1f.7"), "{e}");
}

/// Writes random data in random sizes at random LBAs and buffer offsets,
/// several in flight, then reads everything back and compares.
fn random_verify(c: &Controller, nsid: u32, rounds: usize, seed: u64) {
    let ns = c.namespace(nsid).unwrap();
    let bs = ns.block_size as usize;
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let max_blocks = (128 * 1024 / bs).max(1);
    for round in 0..rounds {
        let mut ios = Vec::new();
        for k in 0..4u64 {
            let nlb = rng.gen_range(1..=max_blocks) as u32;
            let lba = rng.gen_range(0..ns.num_blocks - nlb as u64);
            let off = rng.gen_range(0..1024usize) * 4; // dword aligned, any page offset
            let len = nlb as usize * bs;
            let mut w = DmaBuf::zeroed(off + len).unwrap();
            fill(&mut w[off..], seed ^ (round as u64) << 8 ^ k);
            ios.push((lba, nlb, off, w));
        }
        // Writes may not overlap within a batch.
        ios.sort_by_key(|x| x.0);
        ios.dedup_by(|b, a| b.0 < a.0 + a.1 as u64);
        for (i, (lba, nlb, off, w)) in ios.iter().enumerate() {
            // SAFETY: `w` lives until its completion below.
            unsafe { qp.write(nsid, w.as_ptr().add(*off), *lba, *nlb, i as u64) }.unwrap();
        }
        for c in wait(&mut qp, ios.len()) {
            ok(&c);
        }
        let mut reads: Vec<DmaBuf> = ios
            .iter()
            .map(|(_, nlb, off, _)| DmaBuf::zeroed(off + *nlb as usize * bs + 3).unwrap())
            .collect();
        for (i, ((lba, nlb, off, _), r)) in ios.iter().zip(reads.iter_mut()).enumerate() {
            // Read into a different offset to exercise other alignments.
            let roff = (off + 4) % 4096;
            let _ = roff;
            // SAFETY: `r` lives until its completion below.
            unsafe { qp.read(nsid, r.as_mut_ptr().add(*off), *lba, *nlb, i as u64) }.unwrap();
        }
        for c in wait(&mut qp, ios.len()) {
            ok(&c);
        }
        for ((lba, nlb, off, w), r) in ios.iter().zip(reads.iter()) {
            let len = *nlb as usize * bs;
            assert!(
                w[*off..off + len] == r[*off..off + len],
                "ns {nsid}: data read back at LBA {lba} (+{nlb}) differs from what was written"
            );
        }
    }
}

#[test]
fn write_read_verify_random_namespace1() {
    let c = attach();
    random_verify(&c, 1, 24, 1);
    c.detach().unwrap();
}

#[test]
fn write_read_verify_random_namespace2() {
    let c = attach();
    random_verify(&c, 2, 12, 2);
    c.detach().unwrap();
}

#[test]
fn buffers_spanning_hugepage_boundaries() {
    let c = attach();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let huge = 2 << 20;
    let mut w = DmaBuf::zeroed(2 * huge).unwrap();
    let mut r = DmaBuf::zeroed(2 * huge).unwrap();
    // 64 KiB straddling the 2 MiB boundary, starting 3000 bytes before it.
    let base = w.as_ptr() as usize;
    let start = (base + huge) / huge * huge - 3000 - base;
    let len = 64 * 1024;
    fill(&mut w[start..start + len], 77);
    let nlb = (len / 512) as u32;
    // SAFETY: buffers outlive the completions.
    unsafe { qp.write(1, w.as_ptr().add(start), 1000, nlb, 1) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    let rbase = r.as_ptr() as usize;
    let rstart = (rbase + huge) / huge * huge - 2048 - rbase;
    // SAFETY: as above.
    unsafe { qp.read(1, r.as_mut_ptr().add(rstart), 1000, nlb, 2) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    assert!(w[start..start + len] == r[rstart..rstart + len]);
    drop(qp);
    c.detach().unwrap();
}

struct Sges {
    segs: Vec<(usize, u32)>,
    i: usize,
}

fn sge_reset(arg: usize, offset: u32) {
    // SAFETY: `arg` is a live &mut Sges for the command's duration.
    let s = unsafe { &mut *(arg as *mut Sges) };
    assert_eq!(offset, 0);
    s.i = 0;
}

fn sge_next(arg: usize) -> (usize, u32) {
    // SAFETY: as above.
    let s = unsafe { &mut *(arg as *mut Sges) };
    let r = s.segs.get(s.i).copied().unwrap_or((0, 0));
    s.i += 1;
    r
}

#[test]
fn vectored_io() {
    let c = attach();
    let sgl = c.data().sgl_supported();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let mut data = DmaBuf::zeroed(16384).unwrap();
    fill(&mut data, 5);
    // Three pieces: with SGLs any dword-aligned layout; with PRPs the middle
    // piece must be whole pages.
    let mut pieces = [
        DmaBuf::zeroed(8192).unwrap(),
        DmaBuf::zeroed(8192).unwrap(),
        DmaBuf::zeroed(8192).unwrap(),
    ];
    let layout: [(usize, usize); 3] = if sgl {
        [(100, 1000), (12, 4096 + 300), (0, 8192 - 1000 - 4096 - 300)]
    } else {
        [(4096 - 1024, 1024), (0, 4096), (0, 8192 - 1024 - 4096)]
    };
    let mut off = 0;
    for (p, (o, l)) in pieces.iter_mut().zip(layout) {
        p[o..o + l].copy_from_slice(&data[off..off + l]);
        off += l;
    }
    let mut sg = Sges {
        segs: pieces
            .iter()
            .zip(layout)
            .map(|(p, (o, l))| (p.as_ptr() as usize + o, l as u32))
            .collect(),
        i: 0,
    };
    let fns = SgeFns {
        reset: sge_reset,
        next: sge_next,
        arg: &mut sg as *mut Sges as usize,
    };
    // SAFETY: pieces and `sg` outlive the completion.
    unsafe { qp.writev(1, 4000, 16, fns, 1) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    let mut r = DmaBuf::zeroed(8192).unwrap();
    // SAFETY: as above.
    unsafe { qp.read(1, r.as_mut_ptr(), 4000, 16, 2) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    assert!(
        r[..8192] == data[..8192],
        "vectored write (sgl: {sgl}) read back differs"
    );
    // And a vectored read into the same pieces, cleared first.
    for p in pieces.iter_mut() {
        p.fill(0);
    }
    // SAFETY: as above.
    unsafe { qp.readv(1, 4000, 16, fns, 3) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    let mut off = 0;
    for (p, (o, l)) in pieces.iter().zip(layout) {
        assert!(
            p[o..o + l] == data[off..off + l],
            "vectored read piece at {off} differs"
        );
        off += l;
    }
    drop(qp);
    c.detach().unwrap();
}

#[test]
fn compare_and_write_zeroes() {
    let c = attach();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let mut w = DmaBuf::zeroed(4096).unwrap();
    fill(&mut w, 9);
    // SAFETY: buffers outlive completions (we wait on each).
    unsafe { qp.write(1, w.as_ptr(), 2000, 8, 1) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    if c.data().oncs() & rspdk_nvme::spec::oncs::COMPARE != 0 {
        // SAFETY: as above.
        unsafe { qp.compare(1, w.as_ptr(), 2000, 8, 2) }.unwrap();
        ok(&wait(&mut qp, 1)[0]);
        let mut other = DmaBuf::zeroed(4096).unwrap();
        other.copy_from_slice(&w);
        other[4000] ^= 0xff;
        // SAFETY: as above.
        unsafe { qp.compare(1, other.as_ptr(), 2000, 8, 3) }.unwrap();
        let c3 = wait(&mut qp, 1)[0];
        assert_eq!(
            (c3.status.sct(), c3.status.sc()),
            (sct::MEDIA_ERROR, sc::COMPARE_FAILURE),
            "{}",
            c3.status
        );
        assert_eq!(c3.status.name(), "Compare Failure");
    }
    qp.write_zeroes(1, 2002, 3, false, 4).unwrap();
    ok(&wait(&mut qp, 1)[0]);
    let mut r = DmaBuf::zeroed(4096).unwrap();
    r.fill(0xee);
    // SAFETY: as above.
    unsafe { qp.read(1, r.as_mut_ptr(), 2000, 8, 5) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    assert!(
        r[..1024] == w[..1024],
        "blocks before the zeroed range keep their data"
    );
    assert!(
        r[1024..2560].iter().all(|&b| b == 0),
        "write zeroes left data"
    );
    assert!(
        r[2560..] == w[2560..],
        "blocks after the zeroed range keep their data"
    );
    qp.flush(1, 6).unwrap();
    ok(&wait(&mut qp, 1)[0]);
    drop(qp);
    c.detach().unwrap();
}

#[test]
fn deallocate() {
    let c = attach();
    let dlfeat = c.namespace(2).unwrap().data.dlfeat();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let mut w = DmaBuf::zeroed(4 * 4096).unwrap();
    fill(&mut w, 11);
    // SAFETY: buffers outlive completions.
    unsafe { qp.write(2, w.as_ptr(), 100, 4, 1) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    qp.deallocate(2, 101, 2, 2).unwrap();
    ok(&wait(&mut qp, 1)[0]);
    let mut r = DmaBuf::zeroed(4 * 4096).unwrap();
    r.fill(0xaa);
    // SAFETY: as above.
    unsafe { qp.read(2, r.as_mut_ptr(), 100, 4, 3) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    assert!(r[..4096] == w[..4096] && r[3 * 4096..] == w[3 * 4096..]);
    // Deallocation is advisory: each block reads either as written or, once
    // deallocated, as DLFEAT says (001: zeroes).
    let mut zeroed = 0;
    for blk in 1..3 {
        let got = &r[blk * 4096..(blk + 1) * 4096];
        if got.iter().all(|&b| b == 0) && dlfeat & 0b111 == 0b001 {
            zeroed += 1;
        } else {
            assert!(
                got == &w[blk * 4096..(blk + 1) * 4096],
                "block {blk} is neither its data nor deallocated (DLFEAT {dlfeat:#x})"
            );
        }
    }
    println!("deallocate: {zeroed} of 2 blocks read back deallocated (DLFEAT {dlfeat:#x})");
    drop(qp);
    c.detach().unwrap();
}

#[test]
fn lba_out_of_range_and_invalid_opcode_are_named_errors() {
    let c = attach();
    let ns = c.namespace(1).unwrap();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let mut b = DmaBuf::zeroed(8192).unwrap();
    // SAFETY: buffer outlives the completion.
    unsafe { qp.read(1, b.as_mut_ptr(), ns.num_blocks - 2, 4, 1) }.unwrap();
    let st = wait(&mut qp, 1)[0].status;
    assert_eq!(
        (st.sct(), st.sc()),
        (sct::GENERIC, sc::LBA_OUT_OF_RANGE),
        "{st}"
    );
    assert_eq!(st.name(), "LBA Out of Range");
    // SAFETY: no buffer.
    unsafe {
        qp.io_raw(
            rspdk_nvme::spec::Sqe::new(0x7e, 1),
            std::ptr::null_mut(),
            0,
            2,
        )
    }
    .unwrap();
    let st = wait(&mut qp, 1)[0].status;
    assert_eq!(
        (st.sct(), st.sc()),
        (sct::GENERIC, sc::INVALID_OPCODE),
        "{st}"
    );
    assert_eq!(st.name(), "Invalid Command Opcode");
    let a = c
        .admin_raw(rspdk_nvme::spec::Sqe::new(0xbf, 0), None)
        .unwrap();
    assert_eq!(a.status.name(), "Invalid Command Opcode", "{}", a.status);
    // A namespace that does not exist is refused before submission.
    // SAFETY: refused, never submitted.
    assert!(unsafe { qp.read(9, b.as_mut_ptr(), 0, 1, 3) }.is_err());
    // A buffer that is not DMA memory is refused.
    let mut plain = vec![0u8; 4096];
    // SAFETY: refused before the device sees it (not translatable).
    let e = unsafe { qp.read(1, plain.as_mut_ptr(), 0, 1, 4) }.unwrap_err();
    assert!(e.to_string().contains("not DMA memory"), "{e}");
    // the qpair still works.
    // SAFETY: buffer outlives the completion.
    unsafe { qp.read(1, b.as_mut_ptr(), 0, 1, 5) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    drop(qp);
    c.detach().unwrap();
}

#[test]
fn full_queue_requests_wait_and_are_never_lost() {
    let c = attach();
    let mut qp = c
        .alloc_io_qpair(Some(QpairOpts {
            io_queue_size: 4,
            io_queue_requests: 128,
            delay_doorbell: true,
        }))
        .unwrap();
    let b = DmaBuf::zeroed(512 * 100).unwrap();
    for i in 0..100u64 {
        // SAFETY: buffer outlives the completions.
        unsafe { qp.write(1, b.as_ptr().add(i as usize * 512), 5000 + i, 1, i) }.unwrap();
    }
    assert!(qp.queued() > 0, "a 4-entry queue holds 3 commands");
    let mut got: Vec<u64> = wait(&mut qp, 100)
        .iter()
        .inspect(|c| ok(c))
        .map(|c| c.ctx)
        .collect();
    got.sort();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    drop(qp);
    c.detach().unwrap();
}

#[test]
fn reset_during_io_loses_nothing() {
    let c = attach();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let w = DmaBuf::zeroed(4096 * 64).unwrap();
    for i in 0..64u64 {
        // SAFETY: buffer outlives the completions.
        unsafe { qp.write(1, w.as_ptr().add(i as usize * 4096), 8000 + i * 8, 8, i) }.unwrap();
    }
    c.reset().expect("reset");
    // More I/O submitted after the reset, before the qpair noticed.
    for i in 64..80u64 {
        // SAFETY: as above.
        unsafe {
            qp.write(
                1,
                w.as_ptr().add((i - 64) as usize * 4096),
                9000 + i * 8,
                8,
                i,
            )
        }
        .unwrap();
    }
    let all = wait(&mut qp, 80);
    let mut ids: Vec<u64> = all.iter().map(|c| c.ctx).collect();
    ids.sort();
    assert_eq!(
        ids,
        (0..80).collect::<Vec<_>>(),
        "every command completes exactly once"
    );
    for c in &all {
        assert!(
            !c.status.is_error() || c.status == Status::ABORTED_SQ_DELETION,
            "command {}: {}",
            c.ctx,
            c.status
        );
        if c.ctx >= 64 {
            ok(c);
        }
    }
    // The queue pair works after the reset.
    let mut r = DmaBuf::zeroed(4096).unwrap();
    // SAFETY: as above.
    unsafe { qp.read(1, r.as_mut_ptr(), 9000 + 64 * 8, 8, 99) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    assert!(r[..] == w[..4096]);
    assert_eq!(c.identify_controller().unwrap().serial(), SERIAL);
    drop(qp);
    c.detach().unwrap();
}

#[test]
fn detach_with_io_queued() {
    let c = attach();
    let mut qp = c
        .alloc_io_qpair(Some(QpairOpts {
            io_queue_size: 8,
            io_queue_requests: 64,
            delay_doorbell: true,
        }))
        .unwrap();
    let b = DmaBuf::zeroed(4096).unwrap();
    for i in 0..40u64 {
        // SAFETY: `b` is leaked below if the device could still read it.
        unsafe { qp.write(1, b.as_ptr(), 100 + i, 1, i) }.unwrap();
    }
    let c2 = c.clone();
    c.detach().unwrap();
    let mut got = Vec::new();
    loop {
        match qp.process_completions(0, |c| got.push(*c)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(
        got.len(),
        40,
        "every queued and in-flight command completes"
    );
    assert!(got
        .iter()
        .all(|c| c.status == Status::ABORTED_SQ_DELETION || !c.status.is_error()));
    // SAFETY: refused: the controller is detached.
    let e = unsafe { qp.write(1, b.as_ptr(), 0, 1, 99) }.unwrap_err();
    assert!(e.to_string().contains("detached"), "{e}");
    assert!(c2.identify_controller().is_err());
    drop(qp);
    std::mem::forget(b);
}

#[test]
fn command_timeouts_call_back() {
    let c = attach();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let h = hits.clone();
    qp.set_timeout(Duration::from_nanos(1), move |ev| {
        assert_eq!(ev.opcode, 0x02);
        h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rspdk_nvme::TimeoutAction::Abort
    });
    let mut b = DmaBuf::zeroed(128 * 1024).unwrap();
    let mut seen = 0;
    for i in 0..16u64 {
        // SAFETY: buffer outlives the completions.
        unsafe { qp.read(1, b.as_mut_ptr(), 0, 256, i) }.unwrap();
        seen += wait(&mut qp, 1).len();
    }
    assert_eq!(seen, 16);
    assert!(
        hits.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the timeout callback never ran"
    );
    drop(qp);
    c.detach().unwrap();
}

#[test]
fn no_allocation_per_io_in_steady_state() {
    let c = attach();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let mut b = DmaBuf::zeroed(64 * 4096).unwrap();
    let p = b.as_mut_ptr();
    let run = |qp: &mut IoQpair, n: u64| {
        let mut done = 0u64;
        for i in 0..n {
            // SAFETY: buffer outlives the completions.
            unsafe { qp.read(1, p.add((i % 64) as usize * 4096), i * 8, 8, i) }.unwrap();
            if i % 16 == 15 {
                while done < i + 1 - 8 {
                    done += qp
                        .process_completions(0, |c| assert!(!c.status.is_error()))
                        .unwrap() as u64;
                }
            }
        }
        while done < n {
            done += qp
                .process_completions(0, |c| assert!(!c.status.is_error()))
                .unwrap() as u64;
        }
    };
    run(&mut qp, 256); // warm up
    let mut windows = Vec::new();
    for _ in 0..4 {
        let before = allocs();
        run(&mut qp, 1024);
        windows.push(allocs() - before);
    }
    println!("allocations per 1024 I/Os, four windows after warm-up: {windows:?}");
    assert_eq!(windows, vec![0; 4], "allocations on the I/O path");
    drop(qp);
    c.detach().unwrap();
}

#[test]
fn async_event_on_temperature_threshold() {
    use rspdk_nvme::spec::feature;
    let c = attach();
    // Enable SMART critical-warning events, then put the over-temperature
    // threshold below the current temperature: the controller reports a
    // SMART / health event through an outstanding AER.
    c.set_feature(feature::ASYNC_EVENT_CONFIGURATION, 0xff)
        .unwrap();
    let temp = c.health_log().unwrap().temperature();
    c.set_feature(feature::TEMPERATURE_THRESHOLD, (temp - 10) as u32)
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let mut events = Vec::new();
    while events.is_empty() {
        events = c.process_admin_completions().unwrap();
        assert!(Instant::now() < end, "no asynchronous event in 10 s");
    }
    assert_eq!(events[0].event_type, 1, "SMART / health event: {events:?}");
    assert_eq!(
        events[0].log_page,
        rspdk_nvme::spec::log_page::HEALTH_INFORMATION
    );
    let h = c.health_log().unwrap();
    assert_ne!(h.critical_warning() & 0x2, 0, "temperature warning set");
    c.set_feature(feature::TEMPERATURE_THRESHOLD, 343).unwrap();
    c.detach().unwrap();
}

#[test]
fn probe_attaches_what_it_can_and_honours_options() {
    env();
    let mut attached = Vec::new();
    let mut offered = 0;
    let n = rspdk_nvme::probe(
        None,
        |_, opts| {
            offered += 1;
            opts.num_io_queues = 2;
            opts.io_queue_size = 16;
            true
        },
        |t, c, _| attached.push((t.clone(), c)),
    )
    .unwrap();
    let expected = if mode() == "uio" { 1 } else { 2 };
    assert_eq!(
        offered, expected,
        "every NVMe controller bound to us is offered"
    );
    // In the vfio boots the second controller's group is not viable: it is
    // reported and skipped, the first is attached.
    assert_eq!(n, 1);
    assert_eq!(attached[0].0.traddr, bdf());
    let c = attached.pop().unwrap().1;
    assert_eq!(c.max_io_qpairs(), 2);
    let q1 = c.alloc_io_qpair(None).unwrap();
    let q2 = c.alloc_io_qpair(None).unwrap();
    let e = c.alloc_io_qpair(None).unwrap_err();
    assert!(e.to_string().contains("no I/O queue left"), "{e}");
    drop((q1, q2));
    let _q = c
        .alloc_io_qpair(None)
        .expect("ids come back when queue pairs are dropped");
    drop(_q);
    c.detach().unwrap();
}

#[test]
fn prp_lists_for_vectored_io_without_sgl() {
    env();
    let c = Controller::connect(
        &trid(),
        &ControllerOpts {
            use_sgl: false,
            ..Default::default()
        },
    )
    .unwrap();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    // 64 KiB in five pieces, PRP-compatible: the first ends on a page, the
    // middle ones are whole pages, the last starts on one.
    let mut src = DmaBuf::zeroed(65536).unwrap();
    fill(&mut src, 21);
    let mut pieces: Vec<DmaBuf> = (0..5).map(|_| DmaBuf::zeroed(65536).unwrap()).collect();
    let layout = [
        (4096 - 512, 512),
        (0, 16384),
        (0, 8192),
        (0, 32768),
        (0, 65536 - 512 - 16384 - 8192 - 32768),
    ];
    let mut off = 0;
    for (p, (o, l)) in pieces.iter_mut().zip(layout) {
        p[o..o + l].copy_from_slice(&src[off..off + l]);
        off += l;
    }
    let mut sg = Sges {
        segs: pieces
            .iter()
            .zip(layout)
            .map(|(p, (o, l))| (p.as_ptr() as usize + o, l as u32))
            .collect(),
        i: 0,
    };
    let fns = SgeFns {
        reset: sge_reset,
        next: sge_next,
        arg: &mut sg as *mut Sges as usize,
    };
    // SAFETY: pieces and `sg` outlive the completion.
    unsafe { qp.writev(1, 20000, 128, fns, 1) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    let mut r = DmaBuf::zeroed(65536).unwrap();
    // SAFETY: as above.
    unsafe { qp.read(1, r.as_mut_ptr(), 20000, 128, 2) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    assert!(
        r[..] == src[..],
        "PRP-list vectored write read back differs"
    );
    // A layout PRPs cannot describe is refused with the reason.
    let mut bad = Sges {
        segs: vec![
            (pieces[0].as_ptr() as usize, 1024),
            (pieces[1].as_ptr() as usize + 100, 3072),
        ],
        i: 0,
    };
    let fns = SgeFns {
        reset: sge_reset,
        next: sge_next,
        arg: &mut bad as *mut Sges as usize,
    };
    // SAFETY: refused before submission.
    let e = unsafe { qp.writev(1, 0, 8, fns, 3) }.unwrap_err();
    assert!(e.to_string().contains("not PRP-compatible"), "{e}");
    // Over the maximum transfer size: refused, not sent.
    let max = c.max_transfer_size();
    let big = DmaBuf::zeroed(max + 4096).unwrap();
    // SAFETY: refused before submission.
    let e = unsafe { qp.write(1, big.as_ptr(), 0, (max / 512 + 8) as u32, 4) }.unwrap_err();
    assert!(e.to_string().contains("maximum data transfer size"), "{e}");
    drop(qp);
    c.detach().unwrap();
}

#[test]
fn function_reset_behind_our_back_fails_io_then_reset_recovers() {
    let c = attach();
    let mut qp = c.alloc_io_qpair(None).unwrap();
    let mut b = DmaBuf::zeroed(64 * 1024).unwrap();
    // SAFETY: buffer outlives the completion.
    unsafe { qp.read(1, b.as_mut_ptr(), 0, 8, 0) }.unwrap();
    ok(&wait(&mut qp, 1)[0]);
    // Another handle on the same function resets it (FLR): the controller
    // loses every queue and its configuration without the driver knowing.
    let other = rspdk_env::pcidev::PciHandle::open(&bdf()).expect("second handle");
    other.reset().expect("function reset");
    drop(other);
    let end = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    let mut submitted = 0u64;
    let mut refused = None;
    while refused.is_none() {
        // SAFETY: buffer outlives the completions (we wait for all below).
        match unsafe { qp.read(1, b.as_mut_ptr(), submitted % 64 * 8, 8, submitted) } {
            Ok(()) => submitted += 1,
            // All request objects waiting on the dead device: keep polling.
            Err(rspdk_nvme::NvmeError::NoRequests { .. }) => {}
            Err(e) => refused = Some(e),
        }
        let _ = qp.process_completions(0, |c| got.push(*c));
        assert!(
            Instant::now() < end,
            "the dead controller was not noticed in 30 s"
        );
    }
    let e = refused.unwrap().to_string();
    assert!(
        e.contains("has failed") && e.contains("CSTS.RDY = 0"),
        "{e}"
    );
    assert!(c.is_failed());
    while qp
        .process_completions(0, |c| got.push(*c))
        .is_ok_and(|n| n > 0)
    {}
    assert_eq!(got.len() as u64, submitted, "every command came back");
    assert!(got.iter().any(|c| c.status == Status::ABORTED_SQ_DELETION));
    assert!(c.identify_controller().is_err(), "admin commands fail too");
    // A reset brings it back, queue pair included.
    c.reset().expect("reset after failure");
    assert!(!c.is_failed());
    // SAFETY: buffer outlives the completion.
    unsafe { qp.read(1, b.as_mut_ptr(), 0, 8, 99) }.unwrap();
    let c1 = wait(&mut qp, 1);
    ok(&c1[0]);
    assert_eq!(c.identify_controller().unwrap().serial(), SERIAL);
    drop(qp);
    c.detach().unwrap();
}
