//! iobuf against the env's real DMA memory: buffers are translatable, the
//! pool sizes hold, an exhausted pool makes callers wait (not fail), a
//! freed buffer goes to the waiter first, and the counters say where each
//! get was served from.

use std::cell::RefCell;
use std::rc::Rc;

use rspdk_thread::iobuf::{self, IobufError, IobufOpts};

#[test]
fn pools_cache_wait_and_stats() {
    rspdk_env::init(&rspdk_env::EnvOpts {
        name: "iobuf-test".into(),
        no_huge: !rspdk_env::sys::pagemap_shows_pfns(),
        mem_size_mb: 64,
        ..Default::default()
    })
    .expect("env init");
    iobuf::set_options(IobufOpts {
        small_pool_count: 64,
        large_pool_count: 8,
        small_bufsize: 8192,
        large_bufsize: 65536,
    })
    .unwrap();
    let m = iobuf::register_module("test");

    // Too large for either pool: an error naming the fix.
    let e = iobuf::get(&m, 65537).unwrap_err();
    assert!(matches!(e, IobufError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("large_bufsize"));

    // Buffers are DMA memory: the env translates them.
    let mut small = iobuf::get(&m, 4096).unwrap().expect("a small buffer");
    assert_eq!(small.len(), 4096);
    assert!(small.capacity() >= 8192);
    small.fill(0x5a);
    let mut len = 4096u64;
    let iova = rspdk_env::vtophys(small.as_mut_ptr() as usize, Some(&mut len));
    assert_ne!(
        iova,
        rspdk_env::VTOPHYS_ERROR,
        "iobuf memory is not DMA memory"
    );
    drop(small);
    // The next get of that class comes from this thread's cache.
    let again = iobuf::get(&m, 100).unwrap().unwrap();
    drop(again);

    // Exhaust the large pool; options are fixed once the pools exist.
    let mut held: Vec<_> = (0..8)
        .map(|_| iobuf::get(&m, 65536).unwrap().expect("8 large buffers"))
        .collect();
    assert!(
        iobuf::get(&m, 65536).unwrap().is_none(),
        "a 9th large buffer"
    );
    assert_eq!(
        iobuf::set_options(IobufOpts::default()),
        Err(IobufError::InUse)
    );
    // A waiter gets the next large buffer freed on this thread.
    let got = Rc::new(RefCell::new(None));
    let g = got.clone();
    let now = iobuf::get_or_wait(&m, 32768, move |b| *g.borrow_mut() = Some(b.len())).unwrap();
    assert!(now.is_none(), "the pool is exhausted: the caller waits");
    assert!(got.borrow().is_none());
    held.pop();
    assert_eq!(
        *got.borrow(),
        Some(32768),
        "the freed buffer went to the waiter"
    );

    let st = iobuf::stats();
    let s = st.iter().find(|s| s.module == "test").unwrap();
    assert_eq!(s.small_pool.main, 1);
    assert_eq!(s.small_pool.cache, 1);
    assert_eq!(s.large_pool.main, 8);
    assert_eq!(s.large_pool.retry, 1);
}
