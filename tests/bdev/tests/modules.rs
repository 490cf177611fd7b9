//! The aio, uring, passthru, delay, error and split modules on real files,
//! DMA memory and rspdk threads (the deterministic harness): data
//! integrity, remapping, latency, injected errors, deferred creation, hot
//! remove.

mod common;
use common::*;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rspdk_bdev::*;
use rspdk_bdev_aio as aio;
use rspdk_bdev_delay as delay;
use rspdk_bdev_error as error;
use rspdk_bdev_passthru as passthru;
use rspdk_bdev_split as split;
use rspdk_bdev_uring as uring;
use rspdk_env::DmaBuf;
use rspdk_thread::testing::UtThreads;

fn pattern_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn pattern(len: usize, seed: u8) -> DmaBuf {
    let mut b = DmaBuf::zeroed(len).unwrap();
    b.copy_from_slice(&pattern_bytes(len, seed));
    b
}

fn poll_until(ut: &UtThreads, what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        ut.poll_threads();
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
    }
}

/// Writes `buf` at `offset` and waits; returns the status.
fn write(
    ut: &UtThreads,
    desc: &BdevDesc,
    ch: &BdevIoChannel,
    buf: DmaBuf,
    offset: u64,
) -> IoStatus {
    let got: Rc<Cell<Option<IoStatus>>> = Rc::default();
    let g = got.clone();
    ut.run_on(0, || {
        ch.write(desc, buf, offset, move |s, _| g.set(Some(s)))
            .map_err(|(e, _)| e)
            .unwrap()
    });
    poll_until(ut, "a write", || got.get().is_some());
    got.get().unwrap()
}

type ReadResult = (IoStatus, Vec<u8>);

/// Reads `len` bytes at `offset` and waits; returns the status and data.
fn read(
    ut: &UtThreads,
    desc: &BdevDesc,
    ch: &BdevIoChannel,
    len: usize,
    offset: u64,
) -> (IoStatus, Vec<u8>) {
    let got: Rc<RefCell<Option<ReadResult>>> = Rc::default();
    let g = got.clone();
    ut.run_on(0, || {
        ch.read(desc, DmaBuf::zeroed(len).unwrap(), offset, move |s, b| {
            *g.borrow_mut() = Some((s, b.to_vec()))
        })
        .map_err(|(e, _)| e)
        .unwrap()
    });
    poll_until(ut, "a read", || got.borrow().is_some());
    let r = got.borrow_mut().take().unwrap();
    r
}

fn nodata(
    ut: &UtThreads,
    desc: &BdevDesc,
    ch: &BdevIoChannel,
    t: IoType,
    off: u64,
    n: u64,
) -> IoStatus {
    let got: Rc<Cell<Option<IoStatus>>> = Rc::default();
    let g = got.clone();
    ut.run_on(0, || {
        ch.submit_nodata(desc, t, off, n, move |s| g.set(Some(s)))
            .unwrap()
    });
    poll_until(ut, "a no-data I/O", || got.get().is_some());
    got.get().unwrap()
}

fn unregister_and_wait(ut: &UtThreads, name: &str) {
    let gone = Arc::new(Mutex::new(false));
    let g = gone.clone();
    ut.run_on(0, || {
        bdev_unregister(name, move || *g.lock().unwrap() = true).unwrap()
    });
    poll_until(ut, "unregistration", || *gone.lock().unwrap());
}

fn temp_file(tag: &str, len: u64) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rspdk-bdev-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(len).unwrap();
    path
}

/// Writes through `name` (aligned, vectored and unaligned buffers), reads
/// back through it, then checks the file itself with plain std::fs.
fn file_backed_integrity(ut: &UtThreads, name: &str, path: &std::path::Path) {
    let desc = ut.run_on(0, || bdev_open(name, true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    let bdev = desc.bdev().clone();
    assert_eq!(bdev.block_size(), 512);
    assert_eq!(bdev.num_blocks(), 2048);

    // One aligned buffer at block 8.
    assert_eq!(
        write(ut, &desc, &ch, pattern(8192, 1), 8),
        IoStatus::Success
    );
    // Two iovecs at block 100, one of them unaligned (the layer bounces).
    let mut a = pattern(4096, 2);
    let mut b_src = vec![0u8; 4096 + 3];
    b_src[3..].copy_from_slice(&pattern_bytes(4096, 3));
    let iovs = [
        IoVec::new(a.as_mut_ptr(), 4096),
        IoVec::new(b_src.as_mut_ptr().wrapping_add(3), 4096),
    ];
    let st: Rc<Cell<Option<IoStatus>>> = Rc::default();
    let s2 = st.clone();
    ut.run_on(0, || {
        // SAFETY: `a` and `b_src` outlive the I/O: we poll to completion.
        unsafe { ch.writev(&desc, &iovs, 100, 16, move |s| s2.set(Some(s))) }.unwrap()
    });
    poll_until(ut, "writev", || st.get().is_some());
    assert_eq!(st.get(), Some(IoStatus::Success));
    // Many at once: they go to the kernel in batches.
    let left = Rc::new(Cell::new(64));
    ut.run_on(0, || {
        for i in 0..64u64 {
            let l = left.clone();
            ch.write(&desc, pattern(512, i as u8), 1000 + i, move |s, _| {
                assert!(s.is_ok());
                l.set(l.get() - 1)
            })
            .map_err(|(e, _)| e)
            .unwrap();
        }
    });
    poll_until(ut, "64 writes", || left.get() == 0);
    assert_eq!(
        nodata(ut, &desc, &ch, IoType::Flush, 0, 0),
        IoStatus::Success
    );
    assert_eq!(
        nodata(ut, &desc, &ch, IoType::Reset, 0, 0),
        IoStatus::Success
    );

    let (s, data) = read(ut, &desc, &ch, 8192, 8);
    assert_eq!(s, IoStatus::Success);
    assert_eq!(data, pattern_bytes(8192, 1));
    let (s, data) = read(ut, &desc, &ch, 8192, 100);
    assert_eq!(s, IoStatus::Success);
    assert_eq!(&data[..4096], &pattern_bytes(4096, 2)[..]);
    assert_eq!(&data[4096..], &pattern_bytes(4096, 3)[..]);
    // A vectored, unaligned read.
    let mut dst = vec![0u8; 1024 + 5];
    let mut dst2 = DmaBuf::zeroed(512).unwrap();
    let iovs = [
        IoVec::new(dst.as_mut_ptr().wrapping_add(5), 1024),
        IoVec::new(dst2.as_mut_ptr(), 512),
    ];
    let s2 = st.clone();
    st.set(None);
    ut.run_on(0, || {
        // SAFETY: `dst` and `dst2` outlive the I/O: we poll to completion.
        unsafe { ch.readv(&desc, &iovs, 1000, 3, move |s| s2.set(Some(s))) }.unwrap()
    });
    poll_until(ut, "readv", || st.get().is_some());
    assert_eq!(st.get(), Some(IoStatus::Success));
    assert_eq!(&dst[5..517], &pattern_bytes(512, 0)[..]);
    assert_eq!(&dst[517..], &pattern_bytes(512, 1)[..]);
    assert_eq!(&dst2[..], &pattern_bytes(512, 2)[..]);
    drop(ch);
    drop(desc);
    ut.poll_threads();

    // The file holds what was written, where it was written.
    let file = std::fs::read(path).unwrap();
    assert_eq!(&file[8 * 512..8 * 512 + 8192], &pattern_bytes(8192, 1)[..]);
    assert_eq!(
        &file[100 * 512..100 * 512 + 4096],
        &pattern_bytes(4096, 2)[..]
    );
    assert_eq!(
        &file[100 * 512 + 4096..100 * 512 + 8192],
        &pattern_bytes(4096, 3)[..]
    );
    for i in 0..64usize {
        let at = (1000 + i) * 512;
        assert_eq!(
            &file[at..at + 512],
            &pattern_bytes(512, i as u8)[..],
            "block {}",
            1000 + i
        );
    }
    assert!(file[..8 * 512].iter().all(|&x| x == 0));
}

#[test]
fn aio_writes_land_in_the_file_and_rescan_resizes() {
    env();
    let ut = UtThreads::new(1);
    let path = temp_file("aio", 1 << 20);
    let b = ut.run_on(0, || {
        aio::create(aio::AioOpts {
            filename: path.to_str().unwrap().into(),
            name: "aio0".into(),
            block_size: None,
            readonly: false,
            fallocate: true,
            uuid: None,
            nowait: false,
        })
        .unwrap()
    });
    assert_eq!(
        b.props().required_alignment,
        512,
        "O_DIRECT on this filesystem"
    );
    file_backed_integrity(&ut, "aio0", &path);

    // Write zeroes through fallocate.
    let desc = ut.run_on(0, || bdev_open("aio0", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    assert_eq!(
        nodata(&ut, &desc, &ch, IoType::WriteZeroes, 9, 2),
        IoStatus::Success
    );
    let (_, data) = read(&ut, &desc, &ch, 2048, 8);
    assert_eq!(&data[..512], &pattern_bytes(8192, 1)[..512]);
    assert!(data[512..1536].iter().all(|&x| x == 0));

    // Grow the file: rescan sees it and tells the opener.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    assert_eq!(aio::rescan("aio0").unwrap(), 4096);
    assert_eq!(bdev_get("aio0").unwrap().num_blocks(), 4096);
    assert_eq!(
        write(&ut, &desc, &ch, pattern(512, 9), 4000),
        IoStatus::Success
    );
    drop(ch);
    drop(desc);
    unregister_and_wait(&ut, "aio0");
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[4000 * 512..4001 * 512], &pattern_bytes(512, 9)[..]);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn uring_writes_land_in_the_file() {
    env();
    let ut = UtThreads::new(1);
    let path = temp_file("uring", 1 << 20);
    ut.run_on(0, || {
        uring::create(uring::UringOpts {
            filename: path.to_str().unwrap().into(),
            name: "uring0".into(),
            block_size: None,
            uuid: None,
        })
        .unwrap()
    });
    file_backed_integrity(&ut, "uring0", &path);
    unregister_and_wait(&ut, "uring0");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn file_bdevs_reject_bad_params_clearly() {
    env();
    let ut = UtThreads::new(1);
    let empty = temp_file("empty", 0);
    let e = ut
        .run_on(0, || {
            aio::create(aio::AioOpts {
                filename: empty.to_str().unwrap().into(),
                name: "aio_empty".into(),
                block_size: None,
                readonly: false,
                fallocate: false,
                uuid: None,
                nowait: false,
            })
        })
        .unwrap_err();
    assert!(e.to_string().contains("less than one block"), "{e}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&empty)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let e = ut
        .run_on(0, || {
            uring::create(uring::UringOpts {
                filename: empty.to_str().unwrap().into(),
                name: "uring_bs".into(),
                block_size: Some(1000),
                uuid: None,
            })
        })
        .unwrap_err();
    assert!(e.to_string().contains("power of two"), "{e}");
    let e = ut
        .run_on(0, || {
            uring::create(uring::UringOpts {
                filename: "/nonexistent/rspdk/disk".into(),
                name: "uring_missing".into(),
                block_size: None,
                uuid: None,
            })
        })
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/rspdk/disk"), "{e}");
    // Read-only: writes are refused by the layer.
    ut.run_on(0, || {
        aio::create(aio::AioOpts {
            filename: empty.to_str().unwrap().into(),
            name: "aio_ro".into(),
            block_size: Some(4096),
            readonly: true,
            fallocate: false,
            uuid: None,
            nowait: false,
        })
        .unwrap()
    });
    let b = bdev_get("aio_ro").unwrap();
    assert_eq!((b.block_size(), b.num_blocks()), (4096, 1));
    assert!(!b.io_type_supported(IoType::Write));
    unregister_and_wait(&ut, "aio_ro");
    let _ = std::fs::remove_dir_all(empty.parent().unwrap());
}

#[test]
fn stack_passthru_on_delay_on_split_on_malloc_keeps_data_and_remaps() {
    env();
    let ut = UtThreads::new(1);
    ut.run_on(0, || malloc_disk("stk_m", 8192, 512));
    let parts = ut.run_on(0, || {
        split::create(split::SplitOpts {
            base_bdev: "stk_m".into(),
            split_count: 4,
            split_size_mb: 0,
        })
        .unwrap()
    });
    assert_eq!(parts, vec!["stk_mp0", "stk_mp1", "stk_mp2", "stk_mp3"]);
    assert_eq!(bdev_get("stk_mp1").unwrap().num_blocks(), 2048);
    assert_eq!(
        bdev_get("stk_m").unwrap().claimed_by().as_deref(),
        Some("split")
    );
    ut.run_on(0, || {
        delay::create(delay::DelayOpts {
            base_bdev_name: "stk_mp1".into(),
            name: "stk_d".into(),
            avg_read_latency: 100,
            p99_read_latency: 200,
            avg_write_latency: 100,
            p99_write_latency: 200,
            uuid: None,
        })
        .unwrap()
    });
    ut.run_on(0, || {
        passthru::create(passthru::PassthruOpts {
            base_bdev_name: "stk_d".into(),
            name: "stk_pt".into(),
            uuid: None,
        })
        .unwrap()
    });
    let desc = ut.run_on(0, || bdev_open("stk_pt", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    assert_eq!(
        write(&ut, &desc, &ch, pattern(16 * 512, 5), 10),
        IoStatus::Success
    );
    // Many in flight through the stack at once.
    let left = Rc::new(Cell::new(32));
    ut.run_on(0, || {
        for i in 0..32u64 {
            let l = left.clone();
            ch.write(
                &desc,
                pattern(1024, 100 + i as u8),
                100 + 2 * i,
                move |s, _| {
                    assert!(s.is_ok());
                    l.set(l.get() - 1)
                },
            )
            .map_err(|(e, _)| e)
            .unwrap();
        }
    });
    poll_until(&ut, "32 writes through the stack", || left.get() == 0);
    let (s, data) = read(&ut, &desc, &ch, 16 * 512, 10);
    assert_eq!(s, IoStatus::Success);
    assert_eq!(data, pattern_bytes(16 * 512, 5));
    for i in 0..32u64 {
        let (s, data) = read(&ut, &desc, &ch, 1024, 100 + 2 * i);
        assert_eq!(s, IoStatus::Success);
        assert_eq!(data, pattern_bytes(1024, 100 + i as u8));
    }
    // The write to p1 landed 2048 blocks into the base, and nowhere else.
    let base = ut.run_on(0, || bdev_open("stk_m", false, |_| {}).unwrap());
    let bch = ut.run_on(0, || base.get_io_channel().unwrap());
    let (_, data) = read(&ut, &base, &bch, 16 * 512, 2048 + 10);
    assert_eq!(data, pattern_bytes(16 * 512, 5));
    let (_, data) = read(&ut, &base, &bch, 16 * 512, 10);
    assert!(
        data.iter().all(|&x| x == 0),
        "p1's write must not land at p0"
    );
    // A write to p2 directly lands at 4096.
    drop(bch);
    drop(base);
    let p2 = ut.run_on(0, || bdev_open("stk_mp2", true, |_| {}).unwrap());
    let p2ch = ut.run_on(0, || p2.get_io_channel().unwrap());
    assert_eq!(
        write(&ut, &p2, &p2ch, pattern(512, 77), 7),
        IoStatus::Success
    );
    // Out of the part's range is refused even though the base is larger.
    let e = ut.run_on(0, || {
        p2ch.read(&p2, DmaBuf::zeroed(512).unwrap(), 2048, |_, _| {})
            .unwrap_err()
            .0
    });
    assert!(matches!(e, BdevError::OutOfRange { .. }), "{e}");
    let base = ut.run_on(0, || bdev_open("stk_m", false, |_| {}).unwrap());
    let bch = ut.run_on(0, || base.get_io_channel().unwrap());
    let (_, data) = read(&ut, &base, &bch, 512, 4096 + 7);
    assert_eq!(data, pattern_bytes(512, 77));
    drop((bch, base, p2ch, p2, ch, desc));
    ut.poll_threads();

    // Tear down from the top; split_delete takes all parts.
    unregister_and_wait(&ut, "stk_pt");
    unregister_and_wait(&ut, "stk_d");
    let gone = Arc::new(Mutex::new(false));
    let g = gone.clone();
    ut.run_on(0, || {
        split::delete("stk_m", move || *g.lock().unwrap() = true).unwrap()
    });
    poll_until(&ut, "split delete", || *gone.lock().unwrap());
    assert!(bdev_get("stk_mp0").is_none() && bdev_get("stk_mp3").is_none());
    assert!(bdev_get("stk_m").unwrap().claimed_by().is_none());
    unregister_and_wait(&ut, "stk_m");
}

#[test]
fn delay_holds_io_for_at_least_the_average_latency() {
    env();
    let ut = UtThreads::new(1);
    ut.run_on(0, || malloc_disk("dly_m", 256, 512));
    ut.run_on(0, || {
        delay::create(delay::DelayOpts {
            base_bdev_name: "dly_m".into(),
            name: "dly".into(),
            avg_read_latency: 3000,
            p99_read_latency: 3000,
            avg_write_latency: 6000,
            p99_write_latency: 9000,
            uuid: None,
        })
        .unwrap()
    });
    let desc = ut.run_on(0, || bdev_open("dly", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    let t = Instant::now();
    assert_eq!(
        write(&ut, &desc, &ch, pattern(512, 1), 0),
        IoStatus::Success
    );
    let w = t.elapsed();
    assert!(w >= Duration::from_micros(6000), "write took {w:?}");
    let t = Instant::now();
    let (s, data) = read(&ut, &desc, &ch, 512, 0);
    let r = t.elapsed();
    assert_eq!(s, IoStatus::Success);
    assert_eq!(data, pattern_bytes(512, 1));
    assert!(r >= Duration::from_micros(3000), "read took {r:?}");
    // Other types are not delayed: a flush is done within a few polls.
    let got: Rc<Cell<Option<IoStatus>>> = Rc::default();
    let g = got.clone();
    ut.run_on(0, || {
        ch.submit_nodata(&desc, IoType::Flush, 0, 0, move |s| g.set(Some(s)))
            .unwrap()
    });
    for _ in 0..3 {
        ut.poll_threads();
    }
    assert_eq!(got.get(), Some(IoStatus::Success), "flush is not delayed");

    // Update: an average above its p99 is refused; within it, applied.
    let e = delay::update_latency("dly", delay::LatencyType::AvgRead, 5000).unwrap_err();
    assert!(e.to_string().contains("p99"), "{e}");
    delay::update_latency("dly", delay::LatencyType::P99Read, 20000).unwrap();
    delay::update_latency("dly", delay::LatencyType::AvgRead, 12000).unwrap();
    let t = Instant::now();
    let _ = read(&ut, &desc, &ch, 512, 0);
    let r = t.elapsed();
    assert!(
        r >= Duration::from_micros(12000),
        "read after update took {r:?}"
    );
    let e = delay::update_latency("dly_m", delay::LatencyType::AvgRead, 1).unwrap_err();
    assert!(e.to_string().contains("not a delay bdev"), "{e}");
    let e = delay::create(delay::DelayOpts {
        base_bdev_name: "dly_m".into(),
        name: "dly2".into(),
        avg_read_latency: 10,
        p99_read_latency: 5,
        avg_write_latency: 0,
        p99_write_latency: 0,
        uuid: None,
    })
    .unwrap_err();
    assert!(e.to_string().contains("p99_read_latency"), "{e}");
    drop((ch, desc));
    unregister_and_wait(&ut, "dly");
    unregister_and_wait(&ut, "dly_m");
}

#[test]
fn injected_errors_hit_exactly_num_ios_then_pass() {
    env();
    let ut = UtThreads::new(1);
    ut.run_on(0, || malloc_disk("err_m", 256, 512));
    let b = ut.run_on(0, || {
        error::create(error::ErrorCreateOpts {
            base_name: "err_m".into(),
            uuid: None,
        })
        .unwrap()
    });
    assert_eq!(b.name(), "EE_err_m");
    let desc = ut.run_on(0, || bdev_open("EE_err_m", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    assert_eq!(
        write(&ut, &desc, &ch, pattern(1024, 4), 0),
        IoStatus::Success
    );
    let inject = |io_type, error_type, num| error::InjectOpts {
        name: "EE_err_m".into(),
        io_type,
        error_type,
        num,
        queue_depth: 0,
        nvme_sct: 0,
        nvme_sc: 0,
        corrupt_offset: 0,
        corrupt_value: 0,
    };
    error::inject_error(&inject(
        error::InjectIoType::Read,
        error::ErrorType::Failure,
        3,
    ))
    .unwrap();
    let statuses: Vec<IoStatus> = (0..5).map(|_| read(&ut, &desc, &ch, 1024, 0).0).collect();
    assert_eq!(
        statuses,
        vec![
            IoStatus::Failed,
            IoStatus::Failed,
            IoStatus::Failed,
            IoStatus::Success,
            IoStatus::Success
        ]
    );
    // Writes were not armed.
    assert_eq!(
        write(&ut, &desc, &ch, pattern(1024, 4), 0),
        IoStatus::Success
    );

    // corrupt_data: byte 700 of the read is XORed with 0x5a; data on disk is intact.
    let mut o = inject(error::InjectIoType::Read, error::ErrorType::CorruptData, 1);
    o.corrupt_offset = 700;
    o.corrupt_value = 0x5a;
    error::inject_error(&o).unwrap();
    let (s, data) = read(&ut, &desc, &ch, 1024, 0);
    assert_eq!(s, IoStatus::Success);
    let mut want = pattern_bytes(1024, 4);
    want[700] ^= 0x5a;
    assert_eq!(data, want);
    assert_eq!(read(&ut, &desc, &ch, 1024, 0).1, pattern_bytes(1024, 4));

    // pending: the write never completes until a reset, which aborts it.
    error::inject_error(&inject(
        error::InjectIoType::Write,
        error::ErrorType::Pending,
        1,
    ))
    .unwrap();
    let got: Rc<Cell<Option<IoStatus>>> = Rc::default();
    let g = got.clone();
    ut.run_on(0, || {
        ch.write(&desc, pattern(512, 8), 3, move |s, _| g.set(Some(s)))
            .map_err(|(e, _)| e)
            .unwrap()
    });
    for _ in 0..1000 {
        ut.poll_threads();
    }
    assert_eq!(got.get(), None, "a pending I/O must not complete");
    assert_eq!(
        nodata(&ut, &desc, &ch, IoType::Reset, 0, 0),
        IoStatus::Success
    );
    poll_until(&ut, "the pending write", || got.get().is_some());
    assert_eq!(got.get(), Some(IoStatus::Aborted));

    // "all" with clear disarms; clear errors for bad params.
    error::inject_error(&inject(
        error::InjectIoType::All,
        error::ErrorType::Failure,
        10,
    ))
    .unwrap();
    assert_eq!(
        nodata(&ut, &desc, &ch, IoType::Flush, 0, 0),
        IoStatus::Failed
    );
    error::inject_error(&inject(
        error::InjectIoType::All,
        error::ErrorType::Clear,
        0,
    ))
    .unwrap();
    assert_eq!(read(&ut, &desc, &ch, 512, 0).0, IoStatus::Success);
    let e = error::inject_error(&inject(
        error::InjectIoType::Read,
        error::ErrorType::CorruptData,
        1,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("corrupt_value"), "{e}");
    let e = error::inject_error(&error::InjectOpts {
        name: "err_m".into(),
        ..inject(error::InjectIoType::Read, error::ErrorType::Failure, 1)
    })
    .unwrap_err();
    assert!(e.to_string().contains("not an error bdev"), "{e}");
    drop((ch, desc));
    let gone = Arc::new(Mutex::new(false));
    let g = gone.clone();
    ut.run_on(0, || {
        error::delete("EE_err_m", move || *g.lock().unwrap() = true).unwrap()
    });
    poll_until(&ut, "error delete", || *gone.lock().unwrap());
    unregister_and_wait(&ut, "err_m");
}

#[test]
fn passthru_waits_for_its_base_and_appears_with_it() {
    env();
    let ut = UtThreads::new(1);
    let name = ut.run_on(0, || {
        passthru::create(passthru::PassthruOpts {
            base_bdev_name: "late_base".into(),
            name: "late_pt".into(),
            uuid: None,
        })
        .unwrap()
    });
    assert_eq!(name, "late_pt");
    assert!(bdev_get("late_pt").is_none(), "no base yet: deferred");
    ut.run_on(0, || malloc_disk("late_base", 128, 4096));
    let pt = bdev_get("late_pt").expect("created by examine when the base appeared");
    assert_eq!((pt.block_size(), pt.num_blocks()), (4096, 128));
    assert_eq!(
        bdev_get("late_base").unwrap().claimed_by().as_deref(),
        Some("passthru")
    );
    let desc = ut.run_on(0, || bdev_open("late_pt", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    assert_eq!(
        write(&ut, &desc, &ch, pattern(8192, 6), 3),
        IoStatus::Success
    );
    assert_eq!(read(&ut, &desc, &ch, 8192, 3).1, pattern_bytes(8192, 6));
    assert_eq!(
        nodata(&ut, &desc, &ch, IoType::Unmap, 3, 1),
        IoStatus::Success
    );
    assert!(read(&ut, &desc, &ch, 4096, 3).1.iter().all(|&x| x == 0));
    drop((ch, desc));
    // Duplicate names are refused.
    let e = passthru::create(passthru::PassthruOpts {
        base_bdev_name: "whatever".into(),
        name: "late_pt".into(),
        uuid: None,
    })
    .unwrap_err();
    assert!(matches!(e, BdevError::Exists(_)), "{e}");
    let gone = Arc::new(Mutex::new(false));
    let g = gone.clone();
    ut.run_on(0, || {
        passthru::delete("late_pt", move || *g.lock().unwrap() = true).unwrap()
    });
    poll_until(&ut, "passthru delete", || *gone.lock().unwrap());
    // Deleted with its configuration: the base's next examine does not bring it back.
    ut.run_on(0, || {
        for m in modules() {
            m.examine(&bdev_get("late_base").unwrap());
        }
    });
    assert!(bdev_get("late_pt").is_none());
    unregister_and_wait(&ut, "late_base");
}

#[test]
fn hot_remove_of_the_base_tears_down_the_stack_without_losing_completions() {
    env();
    let ut = UtThreads::new(1);
    ut.run_on(0, || malloc_disk("hr_m", 1024, 512));
    ut.run_on(0, || {
        error::create(error::ErrorCreateOpts {
            base_name: "hr_m".into(),
            uuid: None,
        })
        .unwrap();
        delay::create(delay::DelayOpts {
            base_bdev_name: "EE_hr_m".into(),
            name: "hr_d".into(),
            avg_read_latency: 2000,
            p99_read_latency: 2000,
            avg_write_latency: 2000,
            p99_write_latency: 2000,
            uuid: None,
        })
        .unwrap();
        passthru::create(passthru::PassthruOpts {
            base_bdev_name: "hr_d".into(),
            name: "hr_pt".into(),
            uuid: None,
        })
        .unwrap();
    });
    // One write will be held forever by the error bdev.
    error::inject_error(&error::InjectOpts {
        name: "EE_hr_m".into(),
        io_type: error::InjectIoType::Write,
        error_type: error::ErrorType::Pending,
        num: 1,
        queue_depth: 0,
        nvme_sct: 0,
        nvme_sc: 0,
        corrupt_offset: 0,
        corrupt_value: 0,
    })
    .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let desc = ut.run_on(0, || {
        bdev_open("hr_pt", true, move |e| ev.lock().unwrap().push(e)).unwrap()
    });
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    let statuses: Rc<RefCell<Vec<IoStatus>>> = Rc::default();
    ut.run_on(0, || {
        for i in 0..16u64 {
            let s = statuses.clone();
            ch.write(&desc, pattern(512, i as u8), i, move |st, _| {
                s.borrow_mut().push(st)
            })
            .map_err(|(e, _)| e)
            .unwrap();
        }
    });
    ut.poll_threads();
    assert!(statuses.borrow().len() < 16, "the delay holds them");
    let base_gone = Arc::new(Mutex::new(false));
    let g = base_gone.clone();
    ut.run_on(0, || {
        bdev_unregister("hr_m", move || *g.lock().unwrap() = true).unwrap()
    });
    poll_until(&ut, "every write to complete", || {
        statuses.borrow().len() == 16
    });
    let st = statuses.borrow().clone();
    assert_eq!(
        st.iter().filter(|s| **s == IoStatus::Aborted).count(),
        1,
        "the held write is aborted: {st:?}"
    );
    assert_eq!(st.iter().filter(|s| s.is_ok()).count(), 15, "{st:?}");
    poll_until(&ut, "the remove event", || {
        !events.lock().unwrap().is_empty()
    });
    assert_eq!(events.lock().unwrap()[0], BdevEvent::Remove);
    assert!(bdev_get("hr_pt").is_none() && bdev_get("hr_d").is_none());
    assert!(!*base_gone.lock().unwrap(), "waits for the top descriptor");
    drop((ch, desc));
    poll_until(&ut, "the base to go", || *base_gone.lock().unwrap());
    assert!(bdev_get("EE_hr_m").is_none() && bdev_get("hr_m").is_none());
}

#[test]
fn virtual_bdevs_reject_bad_params_clearly() {
    env();
    let ut = UtThreads::new(1);
    let e = delay::create(delay::DelayOpts {
        base_bdev_name: "no_such_base".into(),
        name: "d_x".into(),
        avg_read_latency: 1,
        p99_read_latency: 1,
        avg_write_latency: 1,
        p99_write_latency: 1,
        uuid: None,
    })
    .unwrap_err();
    assert!(
        matches!(&e, BdevError::NotFound(n) if n == "no_such_base"),
        "{e}"
    );
    let e = error::create(error::ErrorCreateOpts {
        base_name: "no_such_base".into(),
        uuid: None,
    })
    .unwrap_err();
    assert!(e.to_string().contains("no_such_base"), "{e}");
    let e = split::create(split::SplitOpts {
        base_bdev: "no_such_base".into(),
        split_count: 2,
        split_size_mb: 0,
    })
    .unwrap_err();
    assert!(e.to_string().contains("no_such_base"), "{e}");
    ut.run_on(0, || malloc_disk("bad_m", 2048, 512));
    let e = split::create(split::SplitOpts {
        base_bdev: "bad_m".into(),
        split_count: 0,
        split_size_mb: 0,
    })
    .unwrap_err();
    assert!(e.to_string().contains("split_count"), "{e}");
    let e = split::create(split::SplitOpts {
        base_bdev: "bad_m".into(),
        split_count: 2,
        split_size_mb: 1,
    })
    .unwrap_err();
    assert!(e.to_string().contains("exceeds"), "{e}");
    // The base is claimed by the first virtual bdev: a second is refused.
    ut.run_on(0, || {
        passthru::create(passthru::PassthruOpts {
            base_bdev_name: "bad_m".into(),
            name: "bad_pt".into(),
            uuid: None,
        })
        .unwrap()
    });
    let e = ut
        .run_on(0, || {
            delay::create(delay::DelayOpts {
                base_bdev_name: "bad_m".into(),
                name: "bad_d".into(),
                avg_read_latency: 1,
                p99_read_latency: 1,
                avg_write_latency: 1,
                p99_write_latency: 1,
                uuid: None,
            })
        })
        .unwrap_err();
    assert!(matches!(e, BdevError::Claimed { .. }), "{e}");
    assert!(bdev_get("bad_d").is_none());
    let e = ut
        .run_on(0, || {
            passthru::create(passthru::PassthruOpts {
                base_bdev_name: "bad_pt".into(),
                name: "bad_m".into(),
                uuid: None,
            })
        })
        .unwrap_err();
    assert!(matches!(e, BdevError::Exists(_)), "{e}");
    let gone = Arc::new(Mutex::new(false));
    let g = gone.clone();
    ut.run_on(0, || {
        passthru::delete("bad_pt", move || *g.lock().unwrap() = true).unwrap()
    });
    poll_until(&ut, "passthru delete", || *gone.lock().unwrap());
    unregister_and_wait(&ut, "bad_m");
}

#[test]
fn hot_remove_of_a_split_base_removes_every_part() {
    env();
    let ut = UtThreads::new(1);
    ut.run_on(0, || malloc_disk("hs_m", 1024, 512));
    ut.run_on(0, || {
        split::create(split::SplitOpts {
            base_bdev: "hs_m".into(),
            split_count: 2,
            split_size_mb: 0,
        })
        .unwrap()
    });
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let desc = ut.run_on(0, || {
        bdev_open("hs_mp1", true, move |e| ev.lock().unwrap().push(e)).unwrap()
    });
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    let done = Rc::new(Cell::new(0));
    ut.run_on(0, || {
        for i in 0..8u64 {
            let d = done.clone();
            ch.write(&desc, pattern(512, i as u8), i, move |s, _| {
                assert!(s.is_ok());
                d.set(d.get() + 1)
            })
            .map_err(|(e, _)| e)
            .unwrap();
        }
    });
    let gone = Arc::new(Mutex::new(false));
    let g = gone.clone();
    // Removed while the writes are in flight.
    ut.run_on(0, || {
        bdev_unregister("hs_m", move || *g.lock().unwrap() = true).unwrap()
    });
    poll_until(&ut, "the writes", || done.get() == 8);
    poll_until(&ut, "the remove event", || {
        !events.lock().unwrap().is_empty()
    });
    assert!(bdev_get("hs_mp0").is_none() && bdev_get("hs_mp1").is_none());
    let e = ut.run_on(0, || {
        ch.read(&desc, DmaBuf::zeroed(512).unwrap(), 0, |_, _| {})
            .unwrap_err()
            .0
    });
    assert!(matches!(e, BdevError::Removing(_)), "{e}");
    drop((ch, desc));
    poll_until(&ut, "the base to go", || *gone.lock().unwrap());
    // Splitting the name again later works: the split is forgotten.
    ut.run_on(0, || malloc_disk("hs_m", 1024, 512));
    let parts = ut.run_on(0, || {
        split::create(split::SplitOpts {
            base_bdev: "hs_m".into(),
            split_count: 2,
            split_size_mb: 0,
        })
        .unwrap()
    });
    assert_eq!(parts.len(), 2);
    let g = gone.clone();
    *g.lock().unwrap() = false;
    ut.run_on(0, || {
        split::delete("hs_m", move || *g.lock().unwrap() = true).unwrap()
    });
    poll_until(&ut, "split delete", || *gone.lock().unwrap());
    unregister_and_wait(&ut, "hs_m");
}
