//! `rspdk_mem`: exercises the env's DMA memory end to end and checks it
//! against the kernel.
//!
//! It initialises the env with SPDK's options, allocates a mix of buffers
//! (1 B up to `--max-size`, a memzone and a mempool), checks every 4 KiB
//! page's IOVA against an independent `/proc/self/pagemap` read (in PA mode;
//! in VA mode the IOVA must equal the address), checks that each contiguous
//! run vtophys reports is contiguous at its last byte, writes and verifies a
//! pattern in every buffer, and prints a summary and the memory statistics.
//! The exit code is non-zero if any check fails.

use std::process::ExitCode;

use clap::Parser;
use rspdk_env::sys::{self, human_size, PAGE_4K};
use rspdk_env::{
    mem_stats, memzone_free, memzone_reserve, vtophys, DmaBuf, EnvOpts, IovaMode, Mempool,
    SOCKET_ID_ANY, VTOPHYS_ERROR,
};

#[derive(Parser)]
#[command(
    name = "rspdk_mem",
    version,
    about = "Allocate DMA memory and verify its translations"
)]
struct Cli {
    /// Memory to pre-reserve, in MiB (SPDK's -s).
    #[arg(short = 's', long = "mem-size", default_value_t = 64)]
    mem_size: usize,
    /// Use ordinary 4 KiB pages instead of hugepages.
    #[arg(long = "no-huge")]
    no_huge: bool,
    /// Take hugepages from this hugetlbfs mount.
    #[arg(long = "huge-dir")]
    huge_dir: Option<std::path::PathBuf>,
    /// IOVA mode: pa, va or auto.
    #[arg(long = "iova-mode", default_value = "auto")]
    iova_mode: IovaMode,
    /// Hugepage size when no --huge-dir: 2M or 1G.
    #[arg(long = "page-size", default_value = "2M", value_parser = page_size)]
    page_size: usize,
    /// Largest buffer to allocate, e.g. 256M or 1G.
    #[arg(long = "max-size", default_value = "256M", value_parser = byte_size)]
    max_size: usize,
    /// Print the statistics as JSON.
    #[arg(long)]
    json: bool,
}

fn byte_size(s: &str) -> Result<usize, String> {
    rspdk_env::hugepages::parse_size(s)
        .ok_or_else(|| format!("'{s}' is not a size like 4096, 64K, 256M, 1G"))
}

fn page_size(s: &str) -> Result<usize, String> {
    match byte_size(s)? {
        p @ (sys::PAGE_2M | sys::PAGE_1G) => Ok(p),
        _ => Err(format!("hugepage size '{s}' is not 2M or 1G")),
    }
}

#[derive(Default)]
struct Tally {
    buffers: usize,
    bytes: usize,
    pages: usize,
    runs: usize,
    failures: Vec<String>,
}

/// Checks every page of `[addr, addr + len)`; returns the number of
/// contiguous runs.
fn check_buffer(addr: usize, len: usize, pa: bool, t: &mut Tally) {
    let mut off = 0;
    while off < len {
        let va = addr + off;
        let got = vtophys(va, None);
        let want = if pa {
            sys::pagemap_phys(va)
        } else {
            Some(va as u64)
        };
        match want {
            Some(w) if w == got => {}
            _ => t.failures.push(format!(
                "vtophys({va:#x}) = {got:#x}, kernel says {want:x?}"
            )),
        }
        t.pages += 1;
        off = (off / PAGE_4K + 1) * PAGE_4K;
    }
    let mut off = 0;
    while off < len {
        let mut run = (len - off) as u64;
        let start = vtophys(addr + off, Some(&mut run));
        let last = addr + off + run as usize - 1;
        if start == VTOPHYS_ERROR || start + run - 1 != vtophys(last, None) {
            t.failures.push(format!(
                "run at {:#x} of {run} bytes is not contiguous",
                addr + off
            ));
            break;
        }
        t.runs += 1;
        off += run as usize;
    }
}

fn pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let opts = EnvOpts {
        name: "rspdk_mem".into(),
        mem_size_mb: cli.mem_size,
        no_huge: cli.no_huge,
        huge_dir: cli.huge_dir.clone(),
        iova_mode: cli.iova_mode,
        huge_page_size: cli.page_size,
        ..EnvOpts::default()
    };
    let env = match rspdk_env::init(&opts) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("rspdk_mem: env init failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pa = env.iova_mode() == IovaMode::Pa;
    println!(
        "env: {} pages, IOVA mode {}, {} MiB reserved on socket {}",
        human_size(env.backing().page_size()),
        env.iova_mode(),
        cli.mem_size,
        env.main_socket()
    );
    let mut sizes: Vec<usize> = vec![
        1,
        100,
        4095,
        4096,
        4097,
        65536,
        1 << 20,
        (2 << 20) + 5,
        16 << 20,
    ];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sizes.push(1 + (x % (3 << 20)) as usize);
    }
    sizes.push(cli.max_size);
    sizes.retain(|&s| s <= cli.max_size);
    let mut t = Tally::default();
    let mut bufs = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let mut b =
            match DmaBuf::uninit_aligned(size, if i % 3 == 0 { 4096 } else { 64 }, SOCKET_ID_ANY) {
                Ok(b) => b,
                Err(e) => {
                    t.failures
                        .push(format!("allocating {}: {e}", human_size(size)));
                    continue;
                }
            };
        pattern(&mut b, i as u64 + 1);
        check_buffer(b.as_ptr() as usize, size, pa, &mut t);
        t.buffers += 1;
        t.bytes += size;
        bufs.push((i, b));
    }
    // Read every pattern back after all buffers exist: no two overlap.
    for (i, b) in &bufs {
        let mut want = vec![0u8; b.len()];
        pattern(&mut want, *i as u64 + 1);
        if want[..] != b[..] {
            let at = want
                .iter()
                .zip(b.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            t.failures.push(format!(
                "buffer {i} ({} B): pattern mismatch at byte {at}",
                b.len()
            ));
        }
    }
    match memzone_reserve("rspdk_mem_zone", 1 << 20, SOCKET_ID_ANY) {
        Ok(z) => {
            check_buffer(z.addr.as_ptr() as usize, z.len, pa, &mut t);
            t.buffers += 1;
            t.bytes += z.len;
        }
        Err(e) => t.failures.push(format!("memzone: {e}")),
    }
    match Mempool::new("rspdk_mem_pool", 1024, 4096, 64, SOCKET_ID_ANY) {
        Ok(pool) => {
            let objs: Vec<_> = (0..1024).filter_map(|_| pool.get()).collect();
            if objs.len() != 1024 {
                t.failures
                    .push(format!("mempool gave {} of 1024 objects", objs.len()));
            }
            for o in &objs {
                check_buffer(o.as_ptr() as usize, pool.elt_size(), pa, &mut t);
            }
            t.buffers += objs.len();
            t.bytes += objs.len() * pool.elt_size();
            for o in objs {
                // SAFETY: taken from this pool above and not used again.
                unsafe { pool.put(o) };
            }
        }
        Err(e) => t.failures.push(format!("mempool: {e}")),
    }
    let stats = mem_stats();
    drop(bufs);
    // SAFETY: nothing uses the zone any more.
    let _ = unsafe { memzone_free("rspdk_mem_zone") };

    println!(
        "checked {} buffers, {} in all: {} pages translated ({}), {} contiguous runs, {} failures",
        t.buffers,
        human_size(t.bytes),
        t.pages,
        if pa {
            "each against /proc/self/pagemap"
        } else {
            "IOVA = VA"
        },
        t.runs,
        t.failures.len()
    );
    for f in t.failures.iter().take(20) {
        println!("  FAIL: {f}");
    }
    match stats {
        Ok(s) if cli.json => println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default()),
        Ok(s) => {
            println!(
                "{:<7} {:>10} {:>12} {:>12} {:>14} {:>9} {:>9}",
                "socket", "page", "total", "free", "largest free", "live", "segments"
            );
            for h in s.heaps {
                println!(
                    "{:<7} {:>10} {:>12} {:>12} {:>14} {:>9} {:>9}",
                    h.socket,
                    human_size(h.page_size),
                    human_size(h.total_bytes),
                    human_size(h.free_bytes),
                    human_size(h.largest_free_block),
                    h.alloc_count,
                    h.segments
                );
            }
        }
        Err(e) => println!("stats: {e}"),
    }
    if t.failures.is_empty() {
        println!("PASS");
        ExitCode::SUCCESS
    } else {
        println!("FAIL");
        ExitCode::FAILURE
    }
}
