//! DMA allocation benchmark: `dma_malloc` + `dma_free` pairs against glibc
//! `malloc` + `free` measured in the same run, on 1 and 2 threads, with
//! SPDK v26.05's figures on this kind of machine (from issue 2) beside them.
//!
//! Run: `cargo bench -p rspdk_env --bench alloc` (root, hugepages reserved).

use std::hint::black_box;
use std::time::Instant;

use rspdk_env::{dma_free, dma_malloc, dma_zmalloc, EnvOpts, IovaMode, SOCKET_ID_ANY};

const SIZES: [(usize, &str, f64); 4] = [
    (64, "64 B", 78.0),
    (4096, "4 KiB", 148.0),
    (65536, "64 KiB", 859.0),
    (1 << 20, "1 MiB", 17_800.0),
];

#[derive(Clone, Copy)]
enum Which {
    Dma,
    DmaZeroed,
    Glibc,
}

/// Mean ns per alloc+free pair over `iters`, on this thread.
fn run(which: Which, size: usize, iters: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        match which {
            Which::Dma => {
                let p = dma_malloc(size, 0, SOCKET_ID_ANY, None).unwrap();
                black_box(p);
                // SAFETY: just allocated, not used after.
                unsafe { dma_free(p).unwrap() };
            }
            Which::DmaZeroed => {
                let p = dma_zmalloc(size, 0, SOCKET_ID_ANY, None).unwrap();
                black_box(p);
                // SAFETY: as above.
                unsafe { dma_free(p).unwrap() };
            }
            Which::Glibc => {
                // SAFETY: plain malloc/free pair.
                unsafe {
                    let p = libc::malloc(size);
                    black_box(p);
                    libc::free(p);
                }
            }
        }
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

/// Median over 5 rounds of the per-thread mean, with `threads` threads
/// running at once.
fn measure(which: Which, size: usize, threads: usize) -> f64 {
    let iters = match size {
        s if s >= 1 << 20 && matches!(which, Which::DmaZeroed) => 2_000,
        s if s >= 1 << 20 => 200_000,
        _ => 1_000_000,
    };
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let per_thread: Vec<f64> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|_| s.spawn(move || run(which, size, iters)))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            per_thread.iter().sum::<f64>() / threads as f64
        })
        .collect();
    rounds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rounds[2]
}

fn main() {
    rspdk_env::init(&EnvOpts {
        name: "bench-alloc".into(),
        mem_size_mb: 256,
        iova_mode: IovaMode::Auto,
        ..EnvOpts::default()
    })
    .expect("env init (needs root and free 2 MiB hugepages: rspdk_setup config)");
    println!("alloc+free pair, ns (median of 5 rounds; per thread)");
    println!(
        "{:<8} {:>3} {:>10} {:>10} {:>12} {:>10} {:>10} {:>12}",
        "size", "thr", "rspdk", "glibc", "rspdk/glibc", "SPDK*", "SPDK/rspdk", "rspdk zmalloc"
    );
    for threads in [1, 2] {
        for (size, label, spdk) in SIZES {
            let ours = measure(Which::Dma, size, threads);
            let glibc = measure(Which::Glibc, size, threads);
            let zeroed = measure(Which::DmaZeroed, size, threads);
            println!(
                "{label:<8} {threads:>3} {ours:>10.1} {glibc:>10.1} {:>12.2} {:>10.0} {:>10.1} {zeroed:>12.1}",
                ours / glibc,
                spdk,
                spdk / ours
            );
        }
    }
    println!("* SPDK v26.05 spdk_dma_malloc+spdk_dma_free, 1 thread, this kind of machine (issue 2); it zeroes every freed element.");
}
