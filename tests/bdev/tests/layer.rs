//! The bdev layer on real DMA memory and rspdk threads (the deterministic
//! harness): data integrity, deferred completion, splitting, bouncing,
//! hot remove, claims, errors.

mod common;
use common::*;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use rspdk_bdev::*;
use rspdk_bdev_malloc as malloc;
use rspdk_bdev_null as null;
use rspdk_env::DmaBuf;
use rspdk_thread::testing::UtThreads;

fn pattern(len: usize, seed: u8) -> DmaBuf {
    let mut b = DmaBuf::zeroed(len).unwrap();
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    b
}

/// Runs `f` on thread 0 and polls until `done` says so.
fn run_until(ut: &UtThreads, f: impl FnOnce(), done: impl Fn() -> bool) {
    ut.run_on(0, f);
    for _ in 0..10_000 {
        if done() {
            return;
        }
        ut.poll_threads();
    }
    panic!("did not finish");
}

#[test]
fn malloc_write_read_compare_zero_unmap() {
    env();
    let ut = UtThreads::new(1);
    ut.run_on(0, || malloc_disk("m_basic", 256, 512));
    let desc = ut.run_on(0, || bdev_open("m_basic", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    let got: Rc<RefCell<Option<(IoStatus, DmaBuf)>>> = Rc::default();

    let g = got.clone();
    run_until(
        &ut,
        || {
            ch.write(&desc, pattern(4096, 7), 10, move |s, b| {
                *g.borrow_mut() = Some((s, b))
            })
            .unwrap()
        },
        || got.borrow().is_some(),
    );
    assert_eq!(got.borrow_mut().take().unwrap().0, IoStatus::Success);

    let g = got.clone();
    run_until(
        &ut,
        || {
            ch.read(&desc, DmaBuf::zeroed(4096).unwrap(), 10, move |s, b| {
                *g.borrow_mut() = Some((s, b))
            })
            .unwrap()
        },
        || got.borrow().is_some(),
    );
    let (s, b) = got.borrow_mut().take().unwrap();
    assert_eq!(s, IoStatus::Success);
    assert_eq!(&b[..], &pattern(4096, 7)[..]);

    // Compare: equal, then a difference at byte 1000.
    let g = got.clone();
    run_until(
        &ut,
        || {
            ch.compare(&desc, pattern(4096, 7), 10, move |s, b| {
                *g.borrow_mut() = Some((s, b))
            })
            .unwrap()
        },
        || got.borrow().is_some(),
    );
    assert_eq!(got.borrow_mut().take().unwrap().0, IoStatus::Success);
    let mut other = pattern(4096, 7);
    other[1000] ^= 1;
    let g = got.clone();
    run_until(
        &ut,
        || {
            ch.compare(&desc, other, 10, move |s, b| *g.borrow_mut() = Some((s, b)))
                .unwrap()
        },
        || got.borrow().is_some(),
    );
    assert_eq!(
        got.borrow_mut().take().unwrap().0,
        IoStatus::Miscompare { offset: 1000 }
    );

    // Write zeroes over part of it, then read back.
    let st = Rc::new(Cell::new(None));
    let s2 = st.clone();
    run_until(
        &ut,
        || {
            ch.submit_nodata(&desc, IoType::WriteZeroes, 12, 2, move |s| s2.set(Some(s)))
                .unwrap()
        },
        || st.get().is_some(),
    );
    assert_eq!(st.get(), Some(IoStatus::Success));
    let g = got.clone();
    run_until(
        &ut,
        || {
            ch.read(&desc, DmaBuf::zeroed(4096).unwrap(), 10, move |s, b| {
                *g.borrow_mut() = Some((s, b))
            })
            .unwrap()
        },
        || got.borrow().is_some(),
    );
    let (_, b) = got.borrow_mut().take().unwrap();
    let want = pattern(4096, 7);
    assert_eq!(&b[..1024], &want[..1024]);
    assert!(b[1024..2048].iter().all(|&x| x == 0));
    assert_eq!(&b[2048..], &want[2048..]);
    let stats = ch.stats();
    assert_eq!(stats.get(IoType::Write).ops, 1);
    assert_eq!(stats.get(IoType::Read).ops, 2);
    assert_eq!(stats.get(IoType::Read).bytes, 8192);
    drop(ch);
    drop(desc);
    let gone = Arc::new(Mutex::new(false));
    let g2 = gone.clone();
    ut.run_on(0, || {
        malloc::delete("m_basic", move || *g2.lock().unwrap() = true).unwrap()
    });
    for _ in 0..100 {
        ut.poll_threads();
    }
    assert!(*gone.lock().unwrap());
    assert!(bdev_get("m_basic").is_none());
}

#[test]
fn completion_never_runs_inside_submit() {
    env();
    let ut = UtThreads::new(1);
    ut.run_on(0, || {
        null::create(null::NullOpts {
            name: "n_defer".into(),
            num_blocks: 64,
            block_size: 512,
            ..Default::default()
        })
        .unwrap()
    });
    let desc = ut.run_on(0, || bdev_open("n_defer", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    ut.run_on(0, || {
        ch.submit_nodata(&desc, IoType::Flush, 0, 0, move |_| r.set(true))
            .unwrap();
        assert!(!ran.get(), "callback ran inside submit");
    });
    ut.poll_threads();
    assert!(ran.get());
}

#[test]
fn io_crossing_the_optimal_boundary_is_split_and_data_is_intact() {
    env();
    let ut = UtThreads::new(1);
    ut.run_on(0, || {
        malloc::create(malloc::MallocOpts {
            name: Some("m_split".into()),
            num_blocks: 128,
            block_size: 512,
            optimal_io_boundary: 8,
            ..Default::default()
        })
        .unwrap()
    });
    let desc = ut.run_on(0, || bdev_open("m_split", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    let got: Rc<RefCell<Option<(IoStatus, DmaBuf)>>> = Rc::default();
    let g = got.clone();
    // Blocks 5..25 cross boundaries at 8, 16, 24: four pieces.
    run_until(
        &ut,
        || {
            ch.write(&desc, pattern(20 * 512, 3), 5, move |s, b| {
                *g.borrow_mut() = Some((s, b))
            })
            .unwrap()
        },
        || got.borrow().is_some(),
    );
    assert_eq!(got.borrow_mut().take().unwrap().0, IoStatus::Success);
    assert_eq!(
        ch.stats().get(IoType::Write).ops,
        4,
        "split into 4 children"
    );
    let g = got.clone();
    run_until(
        &ut,
        || {
            ch.read(&desc, DmaBuf::zeroed(20 * 512).unwrap(), 5, move |s, b| {
                *g.borrow_mut() = Some((s, b))
            })
            .unwrap()
        },
        || got.borrow().is_some(),
    );
    let (s, b) = got.borrow_mut().take().unwrap();
    assert_eq!(s, IoStatus::Success);
    assert_eq!(&b[..], &pattern(20 * 512, 3)[..]);
}

/// A backend that insists on 4 KiB-aligned buffers, to show bouncing.
struct AlignedOnly {
    mem: Arc<Mutex<Vec<u8>>>,
}
struct AlignedChannel(Arc<Mutex<Vec<u8>>>);

impl BdevBackend for AlignedOnly {
    fn create_channel(&self) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(AlignedChannel(self.mem.clone())))
    }
    fn io_type_supported(&self, t: IoType) -> bool {
        matches!(t, IoType::Read | IoType::Write)
    }
    fn write_config_json(&self, _: &BdevProps) -> Option<serde_json::Value> {
        None
    }
}

impl BackendChannel for AlignedChannel {
    fn submit(&mut self, io: BdevIo) {
        let mut mem = self.0.lock().unwrap();
        let off = io.offset_blocks() as usize * 512;
        let mut at = off;
        for v in io.iovs() {
            assert_eq!(
                v.base as usize % 4096,
                0,
                "the layer must bounce unaligned buffers"
            );
            // SAFETY: the layer hands us valid buffers for the I/O's duration.
            let s = unsafe { std::slice::from_raw_parts_mut(v.base, v.len) };
            match io.io_type() {
                IoType::Write => mem[at..at + v.len].copy_from_slice(s),
                _ => s.copy_from_slice(&mem[at..at + v.len]),
            }
            at += v.len;
        }
        drop(mem);
        io.complete(IoStatus::Success);
    }
}

#[test]
fn unaligned_buffers_are_bounced() {
    env();
    let ut = UtThreads::new(1);
    let mem = Arc::new(Mutex::new(vec![0u8; 64 * 512]));
    let mut props = BdevProps::new("aligned_only", 512, 64, "test");
    props.required_alignment = 4096;
    let m = mem.clone();
    ut.run_on(0, || {
        bdev_register(props, "test", Box::new(AlignedOnly { mem: m })).unwrap()
    });
    let desc = ut.run_on(0, || bdev_open("aligned_only", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    let mut src = vec![0u8; 1024 + 3];
    for (i, x) in src.iter_mut().enumerate() {
        *x = i as u8;
    }
    let done = Rc::new(Cell::new(0));
    let d = done.clone();
    let iov = IoVec::new(src.as_mut_ptr().wrapping_add(3), 1024);
    ut.run_on(0, || {
        // SAFETY: `src` outlives the I/O (we poll to completion below).
        unsafe {
            ch.writev(&desc, &[iov], 4, 2, move |s| {
                assert!(s.is_ok());
                d.set(d.get() + 1)
            })
        }
        .unwrap()
    });
    while done.get() < 1 {
        ut.poll_threads();
    }
    assert_eq!(&mem.lock().unwrap()[4 * 512..6 * 512], &src[3..]);
    let mut dst = vec![0u8; 1024 + 5];
    let iov = IoVec::new(dst.as_mut_ptr().wrapping_add(5), 1024);
    let d = done.clone();
    ut.run_on(0, || {
        // SAFETY: `dst` outlives the I/O (we poll to completion below).
        unsafe {
            ch.readv(&desc, &[iov], 4, 2, move |s| {
                assert!(s.is_ok());
                d.set(d.get() + 1)
            })
        }
        .unwrap()
    });
    while done.get() < 2 {
        ut.poll_threads();
    }
    assert_eq!(&dst[5..], &src[3..]);
}

/// A backend standing for a PCIe device: every buffer it is handed must
/// be DMA memory the env translates.
struct DmaOnly {
    mem: Arc<Mutex<Vec<u8>>>,
}
struct DmaOnlyChannel(Arc<Mutex<Vec<u8>>>);

impl BdevBackend for DmaOnly {
    fn create_channel(&self) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(DmaOnlyChannel(self.mem.clone())))
    }
    fn io_type_supported(&self, t: IoType) -> bool {
        matches!(t, IoType::Read | IoType::Write)
    }
    fn write_config_json(&self, _: &BdevProps) -> Option<serde_json::Value> {
        None
    }
}

impl BackendChannel for DmaOnlyChannel {
    fn submit(&mut self, io: BdevIo) {
        let mut mem = self.0.lock().unwrap();
        let mut at = io.offset_blocks() as usize * 512;
        for v in io.iovs() {
            assert!(
                rspdk_env::is_dma_memory(v.base as usize, v.len),
                "the layer handed a device backend a buffer that is not DMA memory"
            );
            // SAFETY: the layer hands us valid buffers for the I/O's duration.
            let s = unsafe { std::slice::from_raw_parts_mut(v.base, v.len) };
            match io.io_type() {
                IoType::Write => mem[at..at + v.len].copy_from_slice(s),
                _ => s.copy_from_slice(&mem[at..at + v.len]),
            }
            at += v.len;
        }
        drop(mem);
        io.complete(IoStatus::Success);
    }
}

/// Heap buffers (what a target may hold) given to a bdev whose backend
/// needs DMA memory are bounced through DMA memory, both ways, also when
/// the I/O is split; DMA buffers go straight through. (Found by the guest
/// test: a split READ's bounce buffer was dropped without being copied
/// back.)
#[test]
fn heap_buffers_are_bounced_for_dma_backends() {
    env();
    let ut = UtThreads::new(1);
    let mem = Arc::new(Mutex::new(vec![0u8; 64 * 512]));
    let mut props = BdevProps::new("dma_only", 512, 64, "test");
    props.requires_dma = true;
    // Split too (as an NVMe bdev splits at the controller's MDTS): the
    // bounce buffer is the parent's, copied back when the last child is
    // done.
    props.max_transfer_blocks = 1;
    let m = mem.clone();
    ut.run_on(0, || {
        bdev_register(props, "test", Box::new(DmaOnly { mem: m })).unwrap()
    });
    let desc = ut.run_on(0, || bdev_open("dma_only", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    let mut heap: Vec<u8> = (0..2048).map(|i| (i * 7) as u8).collect();
    assert!(!rspdk_env::is_dma_memory(
        heap.as_ptr() as usize,
        heap.len()
    ));
    let done = Rc::new(Cell::new(0));
    let d = done.clone();
    let iov = IoVec::new(heap.as_mut_ptr(), heap.len());
    ut.run_on(0, || {
        // SAFETY: `heap` outlives the I/O (we poll to completion below).
        unsafe {
            ch.writev(&desc, &[iov], 8, 4, move |s| {
                assert!(s.is_ok());
                d.set(d.get() + 1)
            })
        }
        .unwrap()
    });
    while done.get() < 1 {
        ut.poll_threads();
    }
    assert_eq!(&mem.lock().unwrap()[8 * 512..12 * 512], &heap[..]);
    let mut back = vec![0u8; 2048];
    let iov = IoVec::new(back.as_mut_ptr(), back.len());
    let d = done.clone();
    ut.run_on(0, || {
        // SAFETY: `back` outlives the I/O.
        unsafe {
            ch.readv(&desc, &[iov], 8, 4, move |s| {
                assert!(s.is_ok());
                d.set(d.get() + 1)
            })
        }
        .unwrap()
    });
    while done.get() < 2 {
        ut.poll_threads();
    }
    assert_eq!(back, heap);
    // A DMA buffer is taken as it is.
    let mut dma = rspdk_env::DmaBuf::zeroed(512).unwrap();
    let iov = IoVec::new(dma.as_mut_ptr(), 512);
    let d = done.clone();
    ut.run_on(0, || {
        // SAFETY: `dma` outlives the I/O.
        unsafe {
            ch.readv(&desc, &[iov], 8, 1, move |s| {
                assert!(s.is_ok());
                d.set(d.get() + 1)
            })
        }
        .unwrap()
    });
    while done.get() < 3 {
        ut.poll_threads();
    }
    assert_eq!(&dma[..], &heap[..512]);
}

#[test]
fn hot_remove_tells_openers_fails_new_io_and_waits_for_close() {
    env();
    let ut = UtThreads::new(2);
    ut.run_on(0, || malloc_disk("m_remove", 64, 512));
    let removed = Arc::new(Mutex::new(Vec::new()));
    let r = removed.clone();
    let desc = ut.run_on(1, || {
        bdev_open("m_remove", false, move |e| r.lock().unwrap().push(e)).unwrap()
    });
    let ch = ut.run_on(1, || desc.get_io_channel().unwrap());
    let gone = Arc::new(Mutex::new(false));
    let g = gone.clone();
    ut.run_on(0, || {
        bdev_unregister("m_remove", move || *g.lock().unwrap() = true).unwrap()
    });
    ut.poll_threads();
    assert_eq!(
        *removed.lock().unwrap(),
        vec![BdevEvent::Remove],
        "event on the opener's thread"
    );
    assert!(!*gone.lock().unwrap(), "waits for the descriptor");
    let e = ut.run_on(1, || {
        ch.read(&desc, DmaBuf::zeroed(512).unwrap(), 0, |_, _| {})
            .unwrap_err()
            .0
    });
    assert!(matches!(e, BdevError::Removing(_)), "{e}");
    assert!(bdev_open("m_remove", false, |_| {}).is_err());
    ut.run_on(1, || {
        drop(ch);
        drop(desc);
    });
    for _ in 0..100 {
        ut.poll_threads();
    }
    assert!(*gone.lock().unwrap());
}

#[test]
fn claims_exclude_other_writers_and_errors_are_clear() {
    env();
    let ut = UtThreads::new(1);
    ut.run_on(0, || malloc_disk("m_claim", 64, 4096));
    let mut d1 = ut.run_on(0, || bdev_open("m_claim", false, |_| {}).unwrap());
    d1.claim("passthru").unwrap();
    assert_eq!(
        bdev_get("m_claim").unwrap().claimed_by().as_deref(),
        Some("passthru")
    );
    let e = bdev_open("m_claim", true, |_| {}).unwrap_err();
    assert!(matches!(e, BdevError::Claimed { .. }), "{e}");
    let mut d2 = bdev_open("m_claim", false, |_| {}).unwrap();
    assert!(d2.claim("other").is_err());
    drop(d1);
    assert!(bdev_get("m_claim").unwrap().claimed_by().is_none());
    let ro = ut.run_on(0, || bdev_open("m_claim", false, |_| {}).unwrap());
    let ch = ut.run_on(0, || ro.get_io_channel().unwrap());
    let e = ut.run_on(0, || {
        ch.write(&ro, DmaBuf::zeroed(4096).unwrap(), 0, |_, _| {})
            .unwrap_err()
            .0
    });
    assert!(matches!(e, BdevError::ReadOnly(_)), "{e}");
    let e = ut.run_on(0, || {
        ch.read(&ro, DmaBuf::zeroed(4096).unwrap(), 64, |_, _| {})
            .unwrap_err()
            .0
    });
    assert!(matches!(e, BdevError::OutOfRange { .. }), "{e}");
    let e = ut.run_on(0, || {
        ch.read(&ro, DmaBuf::zeroed(1000).unwrap(), 0, |_, _| {})
            .unwrap_err()
            .0
    });
    assert!(matches!(e, BdevError::InvalidParam(_)), "{e}");
    assert!(matches!(malloc_err("m_claim"), BdevError::Exists(_)));
    let e = malloc::create(malloc::MallocOpts {
        name: Some("bad_bs".into()),
        num_blocks: 8,
        block_size: 1000,
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("power of two"), "{e}");
    let e = malloc::create(malloc::MallocOpts {
        name: Some("zero".into()),
        num_blocks: 0,
        block_size: 512,
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("num_blocks"), "{e}");
    drop(d2);
}

fn malloc_err(name: &str) -> BdevError {
    malloc::create(malloc::MallocOpts {
        name: Some(name.into()),
        num_blocks: 8,
        block_size: 512,
        ..Default::default()
    })
    .unwrap_err()
}

#[test]
fn hot_remove_while_io_runs_loses_no_completion() {
    env();
    let ut = UtThreads::new(1);
    ut.run_on(0, || malloc_disk("m_hot", 256, 512));
    let desc: Rc<RefCell<Option<BdevDesc>>> = Rc::new(RefCell::new(None));
    let d2 = desc.clone();
    let removed = Arc::new(Mutex::new(false));
    let r2 = removed.clone();
    *desc.borrow_mut() = Some(ut.run_on(0, || {
        bdev_open("m_hot", true, move |e| {
            if e == BdevEvent::Remove {
                *r2.lock().unwrap() = true;
            }
        })
        .unwrap()
    }));
    let ch = Rc::new(ut.run_on(0, || {
        desc.borrow().as_ref().unwrap().get_io_channel().unwrap()
    }));
    let submitted = Rc::new(Cell::new(0u64));
    let completed = Rc::new(Cell::new(0u64));
    let refused = Rc::new(Cell::new(0u64));

    #[allow(clippy::type_complexity)]
    fn go(
        ch: Rc<BdevIoChannel>,
        desc: Rc<RefCell<Option<BdevDesc>>>,
        s: Rc<Cell<u64>>,
        c: Rc<Cell<u64>>,
        r: Rc<Cell<u64>>,
    ) {
        let d = desc.borrow();
        let Some(dd) = d.as_ref() else {
            r.set(r.get() + 1);
            return;
        };
        let (ch2, desc2, s2, c2, r2) = (ch.clone(), desc.clone(), s.clone(), c.clone(), r.clone());
        let res = ch.read(
            dd,
            DmaBuf::zeroed(4096).unwrap(),
            s.get() % 200,
            move |_st, _b| {
                c2.set(c2.get() + 1);
                go(ch2, desc2, s2, c2, r2);
            },
        );
        match res {
            Ok(()) => s.set(s.get() + 1),
            Err(_) => r.set(r.get() + 1),
        }
    }
    ut.run_on(0, || {
        for _ in 0..8 {
            go(
                ch.clone(),
                desc.clone(),
                submitted.clone(),
                completed.clone(),
                refused.clone(),
            );
        }
    });
    for _ in 0..50 {
        ut.poll_thread(0);
    }
    let gone = Arc::new(Mutex::new(false));
    let g = gone.clone();
    ut.run_on(0, || {
        bdev_unregister("m_hot", move || *g.lock().unwrap() = true).unwrap()
    });
    for _ in 0..50 {
        ut.poll_thread(0);
    }
    assert!(*removed.lock().unwrap());
    // The holder closes on Remove: drop the descriptor and channel.
    ut.run_on(0, || {
        d2.borrow_mut().take();
    });
    drop(ch);
    for _ in 0..100 {
        ut.poll_thread(0);
    }
    assert!(submitted.get() > 8, "I/O ran before the removal");
    assert_eq!(
        submitted.get(),
        completed.get(),
        "every submitted I/O completed"
    );
    assert_eq!(refused.get(), 8, "each of the 8 loops stopped once");
    assert!(*gone.lock().unwrap());
}

#[test]
fn malloc_compare_over_several_buffers_finds_the_first_difference() {
    env();
    let ut = UtThreads::new(1);
    ut.run_on(0, || malloc_disk("m_cmp", 64, 512));
    let desc = ut.run_on(0, || bdev_open("m_cmp", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    let st: Rc<Cell<Option<IoStatus>>> = Rc::default();
    let data = pattern(8192, 3);
    let s = st.clone();
    run_until(
        &ut,
        || {
            ch.write(&desc, data, 4, move |x, _| s.set(Some(x)))
                .unwrap()
        },
        || st.get().is_some(),
    );
    assert_eq!(st.take(), Some(IoStatus::Success));

    // Compares 16 blocks at block 4 through three buffers of 1000, 5000
    // and 2192 bytes (not block- or chunk-aligned), returning the status.
    let compare = |bufs: &mut [DmaBuf; 3], cmp_and_write: Option<&mut DmaBuf>| {
        let iovs: Vec<IoVec> = bufs
            .iter_mut()
            .map(|b| IoVec::new(b.as_mut_ptr(), b.len()))
            .collect();
        let (t, write_iovs, cmp_iovs) = match cmp_and_write {
            Some(w) => (
                IoType::CompareAndWrite,
                vec![IoVec::new(w.as_mut_ptr(), w.len())],
                iovs,
            ),
            None => (IoType::Compare, iovs, Vec::new()),
        };
        let s = st.clone();
        // SAFETY: the buffers outlive the I/O: we poll until it completes
        // before returning, and nothing else touches them meanwhile.
        run_until(
            &ut,
            || unsafe {
                ch.submit(&desc, t, &write_iovs, &cmp_iovs, 4, 16, move |x| {
                    s.set(Some(x))
                })
                .unwrap()
            },
            || st.get().is_some(),
        );
        st.take().unwrap()
    };
    let split = |mutate: Option<usize>| -> [DmaBuf; 3] {
        let mut whole = pattern(8192, 3).to_vec();
        if let Some(at) = mutate {
            whole[at] ^= 0x5a;
        }
        let mut out = [
            DmaBuf::zeroed(1000).unwrap(),
            DmaBuf::zeroed(5000).unwrap(),
            DmaBuf::zeroed(2192).unwrap(),
        ];
        out[0].copy_from_slice(&whole[..1000]);
        out[1].copy_from_slice(&whole[1000..6000]);
        out[2].copy_from_slice(&whole[6000..]);
        out
    };
    assert_eq!(compare(&mut split(None), None), IoStatus::Success);
    // The first byte, one inside the second buffer past its first 512-byte
    // chunk, and the very last byte.
    for at in [0usize, 1000 + 513, 8191] {
        assert_eq!(
            compare(&mut split(Some(at)), None),
            IoStatus::Miscompare { offset: at as u64 },
            "difference at {at}"
        );
    }
    // Compare-and-write: a miscompare writes nothing; a match writes.
    let mut new = pattern(8192, 99);
    assert_eq!(
        compare(&mut split(Some(4000)), Some(&mut new)),
        IoStatus::Miscompare { offset: 4000 }
    );
    assert_eq!(compare(&mut split(None), None), IoStatus::Success);
    assert_eq!(compare(&mut split(None), Some(&mut new)), IoStatus::Success);
    let got: Rc<RefCell<Option<DmaBuf>>> = Rc::default();
    let g = got.clone();
    run_until(
        &ut,
        || {
            ch.read(&desc, DmaBuf::zeroed(8192).unwrap(), 4, move |_, b| {
                *g.borrow_mut() = Some(b)
            })
            .unwrap()
        },
        || got.borrow().is_some(),
    );
    assert_eq!(&got.borrow().as_ref().unwrap()[..], &pattern(8192, 99)[..]);
    drop(ch);
    drop(desc);
    let gone = Arc::new(Mutex::new(false));
    let g2 = gone.clone();
    ut.run_on(0, || {
        malloc::delete("m_cmp", move || *g2.lock().unwrap() = true).unwrap()
    });
    run_until(&ut, || {}, || *gone.lock().unwrap());
}
