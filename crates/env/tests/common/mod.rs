//! Shared set-up for the env integration tests: one hugepage env per test
//! binary. The tests need root and free 2 MiB hugepages; `.ci/run` reserves
//! them (`rspdk_setup config`).

#![allow(dead_code)]

use std::sync::OnceLock;

use rspdk_env::{Env, EnvOpts, IovaMode};

/// The process's env: 2 MiB hugepages, 64 MiB pre-reserved, physical
/// addresses (so translations can be checked against pagemap).
pub fn env() -> &'static Env {
    static ENV: OnceLock<&'static Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let opts = EnvOpts {
            name: "env-test".into(),
            mem_size_mb: 64,
            iova_mode: IovaMode::Pa,
            ..EnvOpts::default()
        };
        rspdk_env::init(&opts).unwrap_or_else(|e| {
            panic!("env init failed (tests need root and free 2 MiB hugepages: run `rspdk_setup config`): {e}")
        })
    })
}

/// Checks every 4 KiB page of `[addr, addr + len)` (and the last byte)
/// against an independent pagemap read, and that each contiguous run that
/// vtophys reports really is contiguous at its last byte.
pub fn check_translation(addr: usize, len: usize) {
    let mut off = 0;
    while off < len {
        let va = addr + off;
        let want = rspdk_env::sys::pagemap_phys(va)
            .unwrap_or_else(|| panic!("pagemap has no frame for {va:#x}"));
        assert_eq!(rspdk_env::vtophys(va, None), want, "vtophys({va:#x})");
        off = (off / 4096 + 1) * 4096;
    }
    let last = addr + len - 1;
    assert_eq!(
        rspdk_env::vtophys(last, None),
        rspdk_env::sys::pagemap_phys(last).unwrap()
    );
    // Walk the runs vtophys reports.
    let mut off = 0;
    while off < len {
        let mut run = (len - off) as u64;
        let pa = rspdk_env::vtophys(addr + off, Some(&mut run));
        assert!(run > 0);
        let end = addr + off + run as usize - 1;
        assert_eq!(
            pa + run - 1,
            rspdk_env::vtophys(end, None),
            "run from {:#x} of {run} bytes is not contiguous",
            addr + off
        );
        off += run as usize;
    }
}
