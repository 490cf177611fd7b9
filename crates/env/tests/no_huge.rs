//! `--no-huge`: ordinary locked 4 KiB pages. Its own test binary, since the
//! env is initialised once per process.

use rspdk_env::{dma_free, dma_malloc, sys, vtophys, DmaBuf, EnvOpts, IovaMode, SOCKET_ID_ANY};

#[test]
fn no_huge_env_allocates_translates_and_frees() {
    let env = rspdk_env::init(&EnvOpts {
        name: "no-huge-test".into(),
        no_huge: true,
        mem_size_mb: 8,
        ..EnvOpts::default()
    })
    .unwrap();
    assert!(!env.backing().is_huge());
    // As root the kernel shows frames, so auto picks PA; each 4 KiB page
    // translates to its own frame.
    let pa = env.iova_mode() == IovaMode::Pa;
    assert_eq!(pa, sys::pagemap_shows_pfns());
    for size in [1usize, 4096, 10_000, 1 << 20, 5 << 20] {
        let p = dma_malloc(size, 0, SOCKET_ID_ANY, None).unwrap();
        // SAFETY: our buffer.
        unsafe { p.as_ptr().write_bytes(0x11, size) };
        let a = p.as_ptr() as usize;
        let mut off = 0;
        while off < size {
            let want = if pa {
                sys::pagemap_phys(a + off).unwrap()
            } else {
                (a + off) as u64
            };
            assert_eq!(vtophys(a + off, None), want);
            let mut run = (size - off) as u64;
            let start = vtophys(a + off, Some(&mut run));
            assert_eq!(start + run - 1, vtophys(a + off + run as usize - 1, None));
            off += run as usize;
        }
        // SAFETY: our buffer.
        unsafe { dma_free(p).unwrap() };
    }
    let b = DmaBuf::zeroed(123_456).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    // A second init is refused with a message.
    let e = rspdk_env::init(&EnvOpts::default()).unwrap_err();
    assert!(e.to_string().contains("already initialised"), "{e}");
}
