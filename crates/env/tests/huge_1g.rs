//! 1 GiB hugepages (CI reserves two).

mod common;

use rspdk_env::{dma_free, dma_malloc, sys, vtophys, EnvOpts, IovaMode, SOCKET_ID_ANY};

#[test]
fn one_gib_pages_back_the_heap_and_translate_contiguously() {
    let free = rspdk_env::hugepages::free_pages(sys::PAGE_1G).unwrap_or(0);
    assert!(free >= 1, "this test needs a free 1 GiB hugepage: rspdk_setup config --page-size 1G -n 2 (CI reserves them)");
    let env = rspdk_env::init(&EnvOpts {
        name: "huge-1g-test".into(),
        huge_page_size: sys::PAGE_1G,
        iova_mode: IovaMode::Pa,
        ..EnvOpts::default()
    })
    .unwrap();
    assert_eq!(env.backing().page_size(), sys::PAGE_1G);
    let size = 600 << 20;
    let p = dma_malloc(size, 0, SOCKET_ID_ANY, None).unwrap();
    let a = p.as_ptr() as usize;
    // SAFETY: our buffer.
    unsafe { p.as_ptr().write_bytes(1, size) };
    common::check_translation(a, size);
    // All of it is inside one 1 GiB page: one contiguous run.
    let mut run = size as u64;
    vtophys(a, Some(&mut run));
    assert_eq!(run, size as u64);
    // SAFETY: our buffer.
    unsafe { dma_free(p).unwrap() };
}
