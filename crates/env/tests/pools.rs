//! Memzones, mempools and rings.

mod common;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use rspdk_env::{
    memzone_free, memzone_lookup, memzone_reserve, memzones, vtophys, EnvError, Mempool, Ring,
    RingType, SOCKET_ID_ANY,
};

#[test]
fn memzones_reserve_lookup_free() {
    common::env();
    let z = memzone_reserve("test_zone_a", 100_000, SOCKET_ID_ANY).unwrap();
    assert!(z.iova_contiguous);
    assert_eq!(z.iova, vtophys(z.addr.as_ptr() as usize, None));
    let found = memzone_lookup("test_zone_a").unwrap();
    assert_eq!(found.addr, z.addr);
    assert!(memzones().iter().any(|m| m.name == "test_zone_a"));
    assert!(matches!(
        memzone_reserve("test_zone_a", 10, SOCKET_ID_ANY),
        Err(EnvError::Busy(_))
    ));
    assert!(matches!(
        memzone_reserve(&"x".repeat(40), 10, SOCKET_ID_ANY),
        Err(EnvError::InvalidArgument(_))
    ));
    assert!(matches!(
        memzone_reserve("zero", 0, SOCKET_ID_ANY),
        Err(EnvError::InvalidArgument(_))
    ));
    // SAFETY: nothing uses the zone.
    unsafe { memzone_free("test_zone_a").unwrap() };
    assert!(memzone_lookup("test_zone_a").is_none());
    // SAFETY: the zone is gone; the call must only report that.
    let gone = unsafe { memzone_free("test_zone_a") };
    assert!(matches!(gone, Err(EnvError::NotFound(_))));
}

#[test]
fn mempool_objects_are_distinct_dma_able_and_never_cross_pages() {
    common::env();
    let pool = Mempool::new("test_pool_a", 3000, 4096 + 100, 64, SOCKET_ID_ANY).unwrap();
    assert_eq!(pool.elt_size(), 4096 + 128);
    assert!(Mempool::lookup("test_pool_a").is_some());
    assert!(matches!(
        Mempool::new("test_pool_a", 1, 1, 1, SOCKET_ID_ANY),
        Err(EnvError::Busy(_))
    ));
    let mut got = Vec::new();
    while let Some(p) = pool.get() {
        got.push(p);
    }
    assert_eq!(got.len(), 3000, "exactly count objects");
    let addrs: HashSet<usize> = got.iter().map(|p| p.as_ptr() as usize).collect();
    assert_eq!(addrs.len(), 3000);
    for &a in &addrs {
        assert_eq!(
            a / (2 << 20),
            (a + pool.elt_size() - 1) / (2 << 20),
            "object crosses a hugepage"
        );
        let mut len = pool.elt_size() as u64;
        vtophys(a, Some(&mut len));
        assert_eq!(len, pool.elt_size() as u64);
    }
    for p in got {
        // SAFETY: from this pool, not used again.
        unsafe { pool.put(p) };
    }
    assert!(pool.get().is_some());
}

#[test]
fn mempool_grows_to_its_maximum_and_is_shared_across_threads() {
    common::env();
    let pool = Mempool::with_growth("test_pool_grow", 100, 1000, 256, 32, SOCKET_ID_ANY).unwrap();
    assert_eq!(pool.total(), 100);
    let objs: Vec<_> = (0..1000).map(|_| pool.get().unwrap()).collect();
    assert_eq!(pool.total(), 1000);
    assert!(pool.get().is_none(), "bounded by max_count");
    let mut bulk = [None; 4];
    assert!(!pool.get_bulk(&mut bulk));
    let addrs: Vec<usize> = objs.iter().map(|p| p.as_ptr() as usize).collect();
    for p in objs {
        // SAFETY: from this pool.
        unsafe { pool.put(p) };
    }
    let pool2 = Arc::clone(&pool);
    let t = std::thread::spawn(move || {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let p = pool2.get().unwrap();
            seen.insert(p.as_ptr() as usize);
            // SAFETY: from this pool.
            unsafe { pool2.put(p) };
        }
        seen
    });
    for _ in 0..10_000 {
        let p = pool.get().unwrap();
        assert!(addrs.contains(&(p.as_ptr() as usize)));
        // SAFETY: from this pool.
        unsafe { pool.put(p) };
    }
    let seen = t.join().unwrap();
    assert!(seen.iter().all(|a| addrs.contains(a)));
}

#[test]
fn rings_deliver_everything_once_under_contention() {
    let ring = Arc::new(Ring::<u64>::new(RingType::MpMc, 1024).unwrap());
    assert!(Ring::<u8>::new(RingType::SpSc, 0).is_err());
    let producers: Vec<_> = (0..2u64)
        .map(|t| {
            let ring = ring.clone();
            std::thread::spawn(move || {
                let mut pending: VecDeque<u64> = (0..50_000).map(|i| t << 32 | i).collect();
                while !pending.is_empty() {
                    if ring.enqueue_bulk(&mut pending) == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let mut got = Vec::new();
    let mut last = [None::<u64>; 2];
    while got.len() < 100_000 {
        let before = got.len();
        ring.dequeue_bulk(&mut got, 64);
        for &v in &got[before..] {
            let t = (v >> 32) as usize;
            let i = v & 0xffff_ffff;
            assert!(last[t].is_none_or(|l| l < i), "per-producer order");
            last[t] = Some(i);
        }
    }
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 100_000);
    assert_eq!(ring.count(), 0);
    assert!(ring.dequeue().is_none());
}
