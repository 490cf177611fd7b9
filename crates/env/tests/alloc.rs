//! The DMA allocator against a model: no overlap, alignment, zeroing,
//! contents kept by realloc; concurrency; bad input; exhaustion.

mod common;

use std::ptr::NonNull;

use proptest::prelude::*;
use rspdk_env::{
    dma_free, dma_malloc, dma_realloc, dma_usable_size, dma_zmalloc, mem_stats, vtophys, DmaBuf,
    EnvError, SOCKET_ID_ANY, VTOPHYS_ERROR,
};

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        size: usize,
        align_shift: u32,
        zero: bool,
    },
    Free(usize),
    Realloc {
        which: usize,
        size: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        1usize..256,
        256usize..8192,
        8192usize..(300 << 10),
        (1usize << 20)..(3 << 20)
    ];
    prop_oneof![
        4 => (size.clone(), 0u32..17, any::<bool>()).prop_map(|(size, align_shift, zero)| Op::Alloc { size, align_shift, zero }),
        3 => any::<usize>().prop_map(Op::Free),
        2 => (any::<usize>(), size).prop_map(|(which, size)| Op::Realloc { which, size }),
    ]
}

struct Live {
    ptr: NonNull<u8>,
    size: usize,
    fill: u8,
}

fn fill(p: NonNull<u8>, size: usize, byte: u8) {
    // SAFETY: `p` is a live buffer of at least `size` bytes owned by the test.
    unsafe { p.as_ptr().write_bytes(byte, size) };
}

fn check(p: NonNull<u8>, size: usize, byte: u8) {
    // SAFETY: as above; read-only view while no one else writes it.
    let s = unsafe { std::slice::from_raw_parts(p.as_ptr(), size) };
    if let Some(i) = s.iter().position(|&b| b != byte) {
        panic!(
            "byte {i} of {size}-byte buffer is {:#x}, expected {byte:#x}",
            s[i]
        );
    }
}

fn overlaps(a: &Live, p: usize, size: usize) -> bool {
    let s = a.ptr.as_ptr() as usize;
    p < s + a.size && s < p + size
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn allocator_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        common::env();
        let mut live: Vec<Live> = Vec::new();
        let mut next_fill = 1u8;
        for op in ops {
            match op {
                Op::Alloc { size, align_shift, zero } => {
                    let align = 1usize << align_shift;
                    let p = if zero {
                        dma_zmalloc(size, align, SOCKET_ID_ANY, None).unwrap()
                    } else {
                        dma_malloc(size, align, SOCKET_ID_ANY, None).unwrap()
                    };
                    let a = p.as_ptr() as usize;
                    prop_assert_eq!(a % align, 0, "alignment {}", align);
                    prop_assert!(dma_usable_size(p).unwrap() >= size);
                    prop_assert_ne!(vtophys(a, None), VTOPHYS_ERROR);
                    for l in &live {
                        prop_assert!(!overlaps(l, a, size), "new {a:#x}+{size} overlaps a live buffer");
                    }
                    if zero {
                        check(p, size, 0);
                    }
                    next_fill = next_fill.wrapping_add(1).max(1);
                    fill(p, size, next_fill);
                    live.push(Live { ptr: p, size, fill: next_fill });
                }
                Op::Free(i) if !live.is_empty() => {
                    let l = live.swap_remove(i % live.len());
                    check(l.ptr, l.size, l.fill);
                    // SAFETY: live buffer from dma_malloc, forgotten after.
                    unsafe { dma_free(l.ptr).unwrap() };
                }
                Op::Realloc { which, size } if !live.is_empty() => {
                    let i = which % live.len();
                    let l = live.swap_remove(i);
                    // SAFETY: live buffer we own; the old pointer is dropped.
                    let p = unsafe { dma_realloc(Some(l.ptr), size, 64, None).unwrap() };
                    check(p, size.min(l.size), l.fill);
                    fill(p, size, l.fill);
                    let a = p.as_ptr() as usize;
                    for o in &live {
                        prop_assert!(!overlaps(o, a, size));
                    }
                    live.push(Live { ptr: p, size, fill: l.fill });
                }
                _ => {}
            }
        }
        for l in live {
            check(l.ptr, l.size, l.fill);
            // SAFETY: as above.
            unsafe { dma_free(l.ptr).unwrap() };
        }
    }
}

#[test]
fn concurrent_alloc_free_across_threads() {
    common::env();
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, usize, u8)>(1024);
    let consumer = std::thread::spawn(move || {
        let mut n = 0;
        for (addr, size, byte) in rx {
            let p = NonNull::new(addr as *mut u8).unwrap();
            check(p, size, byte);
            // SAFETY: the producer gave up the buffer when it sent it.
            unsafe { dma_free(p).unwrap() };
            n += 1;
        }
        n
    });
    let producers: Vec<_> = (0..3u8)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..20_000usize {
                    let size = 1 + (i * 7919 + t as usize * 31) % 20_000;
                    let p = dma_malloc(size, 0, SOCKET_ID_ANY, None).unwrap();
                    let byte = (i as u8) ^ (t << 5) | 1;
                    fill(p, size, byte);
                    if i % 3 == 0 {
                        tx.send((p.as_ptr() as usize, size, byte)).unwrap();
                    } else {
                        mine.push((p, size, byte));
                        if mine.len() > 64 {
                            let (p, size, byte) = mine.swap_remove(i % mine.len());
                            check(p, size, byte);
                            // SAFETY: our own live buffer.
                            unsafe { dma_free(p).unwrap() };
                        }
                    }
                }
                for (p, size, byte) in mine {
                    check(p, size, byte);
                    // SAFETY: our own live buffer.
                    unsafe { dma_free(p).unwrap() };
                }
            })
        })
        .collect();
    drop(tx);
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(consumer.join().unwrap(), 3 * 6667);
}

#[test]
fn bad_input_gets_clear_errors() {
    common::env();
    let e = dma_malloc(0, 0, SOCKET_ID_ANY, None).unwrap_err();
    assert!(
        matches!(e, EnvError::InvalidArgument(_)) && e.to_string().contains("size 0"),
        "{e}"
    );
    let e = dma_malloc(64, 3, SOCKET_ID_ANY, None).unwrap_err();
    assert!(e.to_string().contains("not a power of two"), "{e}");
    let mut on_stack = [0u8; 64];
    let foreign = NonNull::new(on_stack.as_mut_ptr()).unwrap();
    // SAFETY: the call must reject the pointer without touching it.
    let e = unsafe { dma_free(foreign) }.unwrap_err();
    assert!(e.to_string().contains("not allocated by dma_malloc"), "{e}");
    let p = dma_malloc(4096, 0, SOCKET_ID_ANY, None).unwrap();
    let inner = NonNull::new(p.as_ptr().wrapping_add(8)).unwrap();
    // SAFETY: rejected without being touched.
    let e = unsafe { dma_free(inner) }.unwrap_err();
    assert!(e.to_string().contains("not the start"), "{e}");
    let big = dma_malloc(3 << 20, 0, SOCKET_ID_ANY, None).unwrap();
    let inner = NonNull::new(big.as_ptr().wrapping_add(1 << 20)).unwrap();
    // SAFETY: rejected without being touched.
    assert!(unsafe { dma_free(inner) }.is_err());
    // SAFETY: live buffers we own.
    unsafe {
        dma_free(p).unwrap();
        dma_free(big).unwrap();
    }
    // A size the address space cannot hold.
    let e = dma_malloc(usize::MAX - 10, 0, SOCKET_ID_ANY, None).unwrap_err();
    assert!(
        matches!(e, EnvError::InvalidArgument(_) | EnvError::NoMemory(_)),
        "{e}"
    );
}

#[test]
fn exhaustion_is_an_error_not_a_crash() {
    common::env();
    // More than the reserved hugepages (CI reserves a few GiB; the limit
    // is 64 GiB): the kernel refuses and we say what to do.
    let e = dma_malloc(48 << 30, 0, SOCKET_ID_ANY, None).unwrap_err();
    assert!(matches!(e, EnvError::NoMemory(_)), "{e}");
    assert!(e.to_string().contains("hugepages"), "{e}");
    // Beyond the heap limit.
    let e = dma_malloc(100 << 30, 0, SOCKET_ID_ANY, None).unwrap_err();
    assert!(matches!(e, EnvError::NoMemory(_)), "{e}");
    assert!(
        e.to_string().contains("limit") || e.to_string().contains("window"),
        "{e}"
    );
    // The allocator still works.
    let b = DmaBuf::zeroed(4096).unwrap();
    assert!(b.iter().all(|&x| x == 0));
}

#[test]
fn dmabuf_owns_zeroed_memory_and_reports_iova_runs() {
    common::env();
    let mut b = DmaBuf::zeroed(10_000).unwrap();
    assert_eq!(b.len(), 10_000);
    assert!(b.iter().all(|&x| x == 0));
    b[9_999] = 7;
    assert_eq!(b.iova(), vtophys(b.as_ptr() as usize, None));
    let (iova, run) = b.iova_run(100).unwrap();
    assert_eq!(iova, b.iova() + 100);
    assert_eq!(run, 9_900);
    assert!(b.iova_run(10_000).is_none());
    assert_eq!(b[9_999], 7);
}

#[test]
fn stats_count_live_buffers() {
    common::env();
    // Stats are process-wide and other tests run concurrently: count on a
    // thread of our own, whose counters only we change, by difference.
    let before = mem_stats().unwrap();
    let bufs: Vec<_> = (0..100).map(|_| DmaBuf::zeroed(1000).unwrap()).collect();
    let mid = mem_stats().unwrap();
    let h0 = &before.heaps[0];
    let h1 = &mid.heaps[0];
    assert!(h1.total_allocs >= h0.total_allocs + 100);
    assert!(h1.total_bytes >= h1.free_bytes);
    assert!(h1.largest_free_block <= h1.total_bytes);
    drop(bufs);
    let after = mem_stats().unwrap();
    assert!(after.heaps[0].total_frees >= h0.total_frees + 100);
    let json = serde_json::to_value(&after).unwrap();
    assert!(json["heaps"][0]["alloc_count"].is_u64());
}

#[test]
fn a_socket_without_memory_falls_back_to_the_main_socket() {
    let env = common::env();
    let missing = (0..rspdk_env::MAX_SOCKETS as u32)
        .find(|s| !env.sockets().contains(s))
        .expect("a socket id with no memory");
    let p = dma_malloc(4096, 0, missing as i32, None).unwrap();
    assert_eq!(rspdk_env::dma_socket_of(p).unwrap(), env.main_socket());
    // The pages really are on the node the kernel reports for them.
    if let Some(node) = rspdk_env::sys::node_of(p.as_ptr() as usize) {
        assert_eq!(node, env.main_socket());
    }
    // SAFETY: our buffer, not used again.
    unsafe { dma_free(p).unwrap() };
}
