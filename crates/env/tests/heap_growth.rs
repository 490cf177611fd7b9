//! The heap grows on demand and gives whole free segments back, keeping the
//! pre-reserved memory. One test in its own binary: it reads process-wide
//! heap state.

mod common;

use rspdk_env::{heap_segments, mem_stats, DmaBuf};

#[test]
fn heap_grows_and_gives_memory_back() {
    common::env();
    let committed = || mem_stats().unwrap().heaps[0].total_bytes;
    let base = committed();
    assert!(base >= 64 << 20, "the 64 MiB reservation is committed");
    let segs_before = heap_segments().unwrap().len();
    let big = DmaBuf::zeroed(512 << 20).unwrap();
    assert!(committed() >= base + (512 << 20));
    assert!(heap_segments().unwrap().len() > segs_before);
    let small: Vec<_> = (0..1000).map(|_| DmaBuf::zeroed(3000).unwrap()).collect();
    assert!(small.iter().all(|b| b.iter().all(|&x| x == 0)));
    drop(small);
    drop(big);
    assert!(
        committed() < base + (512 << 20),
        "the 512 MiB segment went back"
    );
    assert_eq!(heap_segments().unwrap().len(), segs_before);
    let s = mem_stats().unwrap();
    assert!(
        s.heaps[0].total_bytes >= 64 << 20,
        "the reservation is kept"
    );
}
