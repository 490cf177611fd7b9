//! vtophys against pagemap, for DMA buffers from 1 B to 1 GiB.

mod common;

use rspdk_env::{dma_free, dma_malloc, vtophys, IovaMode, SOCKET_ID_ANY, VTOPHYS_ERROR};

#[test]
fn env_runs_in_pa_mode_with_hugepages() {
    let env = common::env();
    assert_eq!(env.iova_mode(), IovaMode::Pa);
    assert!(env.backing().is_huge());
}

#[test]
fn heap_memory_from_malloc_is_not_translated() {
    common::env();
    let v = vec![1u8; 1 << 16];
    assert_eq!(vtophys(v.as_ptr() as usize, None), VTOPHYS_ERROR);
    let mut len = 100u64;
    assert_eq!(
        vtophys(v.as_ptr() as usize + 10, Some(&mut len)),
        VTOPHYS_ERROR
    );
}

#[test]
fn dma_buffers_translate_across_their_whole_length() {
    common::env();
    let sizes = [
        1usize,
        63,
        64,
        100,
        4095,
        4096,
        4097,
        65536,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 1,
        2 << 20,
        (3 << 20) + 5,
        64 << 20,
        1 << 30,
    ];
    for size in sizes {
        let mut iova = 0;
        let p = dma_malloc(size, 0, SOCKET_ID_ANY, Some(&mut iova)).unwrap();
        let addr = p.as_ptr() as usize;
        assert_eq!(iova, vtophys(addr, None), "size {size}");
        assert_ne!(iova, VTOPHYS_ERROR);
        // SAFETY: the buffer is ours; writing it makes sure it is mapped.
        unsafe { p.as_ptr().write_bytes(0x5a, size) };
        common::check_translation(addr, size);
        // Buffers up to 1 MiB sit inside one 2 MiB page: contiguous.
        if size <= 1 << 20 {
            let mut len = size as u64;
            vtophys(addr, Some(&mut len));
            assert_eq!(len, size as u64, "size {size} buffer is not contiguous");
        }
        // SAFETY: allocated above, no other user.
        unsafe { dma_free(p).unwrap() };
    }
}
