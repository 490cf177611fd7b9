//! Every system call the env layer makes, in one place.
//!
//! The rest of the crate works with addresses and lengths; this module turns
//! them into `mmap`, `mlock`, `mbind`, `madvise`, `move_pages`, pagemap reads
//! and `statfs`, and turns failures into [`EnvError`]s that name the call and
//! its argument.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{EnvError, Result};

/// 4 KiB: the base page size on x86_64 and the finest translation granularity.
pub const PAGE_4K: usize = 4096;
/// 2 MiB hugepage.
pub const PAGE_2M: usize = 2 << 20;
/// 1 GiB hugepage.
pub const PAGE_1G: usize = 1 << 30;

/// `MAP_HUGE_SHIFT` from linux/mman.h: the log2 page size goes in bits 26..31.
const MAP_HUGE_SHIFT: i32 = 26;
/// `MADV_POPULATE_WRITE` (Linux 5.14): fault pages in writable, reporting
/// failure as an error rather than SIGBUS.
const MADV_POPULATE_WRITE: i32 = 23;
/// `MPOL_BIND` from linux/mempolicy.h.
const MPOL_BIND: i32 = 2;

/// Reserves `len` bytes of address space (no memory behind it), at `hint` if
/// that range is free. Returns the address obtained.
pub fn reserve_va(hint: usize, len: usize) -> Result<usize> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: an anonymous PROT_NONE mapping; with MAP_FIXED_NOREPLACE the
    // kernel refuses rather than replaces an existing mapping, so no memory
    // anyone uses is touched.
    let p = unsafe {
        libc::mmap(
            hint as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            flags | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p != libc::MAP_FAILED {
        return Ok(p as usize);
    }
    // The hint is taken: let the kernel choose.
    // SAFETY: as above, without a fixed address.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(EnvError::last_os(
            "mmap",
            format!("reserving {len} bytes of address space"),
        ));
    }
    tracing::warn!(
        hint = format_args!("{hint:#x}"),
        got = format_args!("{:#x}", p as usize),
        "DMA heap address space could not be placed at its preferred base"
    );
    Ok(p as usize)
}

/// Returns `[addr, addr + len)` to the kernel.
///
/// # Safety
/// No live reference or pointer use may remain into the range.
pub unsafe fn unmap(addr: usize, len: usize) {
    // SAFETY: the caller guarantees the range is no longer used.
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

/// How a segment of the heap is backed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// Files in a hugetlbfs mount (unlinked as soon as mapped).
    Hugetlbfs {
        /// The mount point.
        dir: std::path::PathBuf,
        /// Its page size.
        page_size: usize,
    },
    /// Anonymous `MAP_HUGETLB` memory of this page size.
    AnonHuge {
        /// 2 MiB or 1 GiB.
        page_size: usize,
    },
    /// Ordinary 4 KiB pages, locked in memory (`--no-huge`).
    Anon4k,
}

impl Backing {
    /// The page size of this backing.
    pub fn page_size(&self) -> usize {
        match self {
            Backing::Hugetlbfs { page_size, .. } | Backing::AnonHuge { page_size } => *page_size,
            Backing::Anon4k => PAGE_4K,
        }
    }

    /// True for hugepage backings.
    pub fn is_huge(&self) -> bool {
        !matches!(self, Backing::Anon4k)
    }
}

/// Maps memory at exactly `[addr, addr + len)` (which must lie inside a
/// reservation made by [`reserve_va`]), binds it to `node` if given, faults
/// every page in and locks it.
///
/// On failure the range is returned to a plain reservation.
///
/// # Safety
/// `[addr, addr + len)` must be part of a reservation this process owns and
/// that nothing else maps or uses.
pub unsafe fn map_segment(
    addr: usize,
    len: usize,
    backing: &Backing,
    node: Option<u32>,
) -> Result<()> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let fixed = libc::MAP_FIXED;
    let p = match backing {
        Backing::Anon4k | Backing::AnonHuge { .. } => {
            let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | fixed;
            if let Backing::AnonHuge { page_size } = backing {
                flags |=
                    libc::MAP_HUGETLB | ((page_size.trailing_zeros() as i32) << MAP_HUGE_SHIFT);
            }
            // SAFETY: the caller owns the reservation at addr; MAP_FIXED
            // replaces only that reservation.
            unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, -1, 0) }
        }
        Backing::Hugetlbfs { dir, .. } => {
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!("rspdk_{}_{seq}", std::process::id()));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| EnvError::Sys {
                    op: "open",
                    detail: format!("{}", path.display()),
                    source: e,
                })?;
            // The mapping keeps the pages; the name is not needed after mmap,
            // and removing it now means nothing is left behind on a crash.
            let _ = std::fs::remove_file(&path);
            if let Err(e) = file.set_len(len as u64) {
                return Err(EnvError::Sys {
                    op: "ftruncate",
                    detail: format!("{} to {len} bytes", path.display()),
                    source: e,
                });
            }
            use std::os::fd::AsRawFd;
            // SAFETY: as above; the file is ours and sized to len.
            unsafe {
                libc::mmap(
                    addr as *mut libc::c_void,
                    len,
                    prot,
                    libc::MAP_SHARED | fixed,
                    file.as_raw_fd(),
                    0,
                )
            }
        }
    };
    if p == libc::MAP_FAILED {
        let err = std::io::Error::last_os_error();
        return Err(map_error(err, len, backing));
    }
    let undo = |e: EnvError| {
        // SAFETY: we own [addr, addr+len) and just mapped it; putting the
        // reservation back keeps the heap window intact.
        unsafe { release_segment(addr, len) };
        e
    };
    if let Some(node) = node {
        mbind(addr, len, node).map_err(undo)?;
    }
    populate(addr, len, backing).map_err(undo)?;
    // SAFETY: the range is mapped and owned by us.
    if unsafe { libc::mlock(addr as *const libc::c_void, len) } != 0 {
        let err = std::io::Error::last_os_error();
        if backing.is_huge() {
            // Hugepages cannot be swapped or migrated by reclaim anyway; a
            // failed mlock is worth a note, not a failure.
            tracing::debug!(%err, "mlock of hugepage segment failed; hugepages stay resident regardless");
        } else {
            tracing::warn!(
                %err,
                "could not mlock {len} bytes of --no-huge memory (RLIMIT_MEMLOCK too low?): pages may be swapped, so their physical addresses are not stable"
            );
        }
    }
    Ok(())
}

fn map_error(err: std::io::Error, len: usize, backing: &Backing) -> EnvError {
    if backing.is_huge() && matches!(err.raw_os_error(), Some(libc::ENOMEM) | Some(libc::EINVAL)) {
        let ps = backing.page_size();
        EnvError::NoMemory(format!(
            "the kernel could not provide {} free {} hugepages ({err}); free now: {}. \
             Reserve more with `rspdk_setup config` (e.g. HUGEMEM=2048), or run with --no-huge",
            len / ps,
            human_size(ps),
            crate::hugepages::free_pages(ps).map_or_else(|| "unknown".into(), |n| n.to_string()),
        ))
    } else {
        EnvError::Sys {
            op: "mmap",
            detail: format!("{len} bytes of {backing:?}"),
            source: err,
        }
    }
}

/// Turns a mapped segment back into an inaccessible reservation.
///
/// # Safety
/// No pointer into the range may be used afterwards.
pub unsafe fn release_segment(addr: usize, len: usize) {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED;
    // SAFETY: the caller guarantees the range is ours and unused; MAP_FIXED
    // atomically replaces the old mapping with a fresh reservation.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        tracing::error!(
            addr = format_args!("{addr:#x}"),
            len,
            "could not return DMA segment to a reservation"
        );
    }
}

fn mbind(addr: usize, len: usize, node: u32) -> Result<()> {
    let mut mask = [0u64; 16];
    let Some(word) = mask.get_mut(node as usize / 64) else {
        return Err(EnvError::InvalidArgument(format!(
            "NUMA node {node} is beyond the supported 1024"
        )));
    };
    *word |= 1 << (node % 64);
    // SAFETY: mbind reads `mask` (maxnode bits) and changes the policy of a
    // range we own; no memory is written.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            len,
            MPOL_BIND,
            mask.as_ptr(),
            (mask.len() * 64) as u64,
            0u32,
        )
    };
    if rc != 0 {
        return Err(EnvError::last_os(
            "mbind",
            format!("{len} bytes to node {node}"),
        ));
    }
    Ok(())
}

fn populate(addr: usize, len: usize, backing: &Backing) -> Result<()> {
    // SAFETY: the range is mapped read-write and owned by us; populating it
    // only faults pages in.
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, MADV_POPULATE_WRITE) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        // Kernel before 5.14: touch each page. A hugetlb shortage then shows
        // as SIGBUS, which is why MADV_POPULATE_WRITE is preferred.
        let step = backing.page_size();
        let mut off = 0;
        while off < len {
            // SAFETY: addr+off is inside the mapped, writable range; the
            // volatile read-write keeps the contents and forces the fault.
            unsafe {
                let p = (addr + off) as *mut u8;
                p.write_volatile(p.read_volatile());
            }
            off += step;
        }
        return Ok(());
    }
    Err(if backing.is_huge() {
        EnvError::NoMemory(format!(
            "faulting in {} of {} hugepages failed ({err}): the NUMA node has too few free hugepages. \
             Reserve more with `rspdk_setup config`",
            human_size(len),
            human_size(backing.page_size())
        ))
    } else {
        EnvError::Sys {
            op: "madvise(MADV_POPULATE_WRITE)",
            detail: format!("{len} bytes at {addr:#x}"),
            source: err,
        }
    })
}

/// The NUMA node of the page holding `addr`, if the kernel says.
pub fn node_of(addr: usize) -> Option<u32> {
    let pages = [addr as *mut libc::c_void];
    let mut status = [-1i32];
    // SAFETY: with a null `nodes` argument move_pages only queries: it reads
    // `pages` and writes `status`, both of length 1.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            1u64,
            pages.as_ptr(),
            std::ptr::null::<i32>(),
            status.as_mut_ptr(),
            0,
        )
    };
    (rc == 0 && status[0] >= 0).then_some(status[0] as u32)
}

/// The NUMA nodes that have memory, from sysfs (`0` when unknown).
pub fn nodes_with_memory() -> Vec<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/node/has_memory")
        .or_else(|_| std::fs::read_to_string("/sys/devices/system/node/online"))
        .unwrap_or_default();
    let mut nodes = parse_cpulist(text.trim()).unwrap_or_default();
    if nodes.is_empty() {
        nodes.push(0);
    }
    nodes
}

/// The NUMA node the calling thread runs on.
pub fn current_node() -> u32 {
    let mut cpu = 0u32;
    let mut node = 0u32;
    // SAFETY: getcpu writes two u32s through valid pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu as *mut u32,
            &mut node as *mut u32,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if rc == 0 {
        node
    } else {
        0
    }
}

/// Parses a Linux list such as `0-3,5` into its members.
pub fn parse_cpulist(text: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?);
                if b < a {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// One `/proc/self/pagemap` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry(pub u64);

impl PagemapEntry {
    /// The page is resident.
    pub fn present(self) -> bool {
        self.0 >> 63 & 1 == 1
    }
    /// The page frame number (0 when the kernel hides it from us).
    pub fn pfn(self) -> u64 {
        self.0 & ((1 << 55) - 1)
    }
}

/// Reads the pagemap entries of the 4 KiB pages `[vaddr, vaddr + 4K * out.len())`.
pub fn read_pagemap(vaddr: usize, out: &mut [PagemapEntry]) -> Result<()> {
    thread_local! {
        static PAGEMAP: std::cell::OnceCell<std::io::Result<File>> = const { std::cell::OnceCell::new() };
    }
    let mut bytes = vec![0u8; out.len() * 8];
    PAGEMAP.with(|cell| {
        let file = cell
            .get_or_init(|| File::open("/proc/self/pagemap"))
            .as_ref()
            .map_err(|e| EnvError::Sys {
                op: "open",
                detail: "/proc/self/pagemap".into(),
                source: std::io::Error::from(e.kind()),
            })?;
        file.read_exact_at(&mut bytes, (vaddr / PAGE_4K * 8) as u64)
            .map_err(|e| EnvError::Sys {
                op: "pread",
                detail: format!("/proc/self/pagemap for {vaddr:#x}"),
                source: e,
            })
    })?;
    for (slot, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        *slot = PagemapEntry(u64::from_le_bytes(word));
    }
    Ok(())
}

/// The physical address of `vaddr` according to a fresh pagemap read, or
/// `None` if the page is not resident or the kernel hides frame numbers.
///
/// This is deliberately independent of the translation maps so that tools
/// and tests can check them against it.
pub fn pagemap_phys(vaddr: usize) -> Option<u64> {
    let mut e = [PagemapEntry(0)];
    read_pagemap(vaddr & !(PAGE_4K - 1), &mut e).ok()?;
    let e = e[0];
    (e.present() && e.pfn() != 0).then(|| e.pfn() * PAGE_4K as u64 + (vaddr % PAGE_4K) as u64)
}

/// True if this process can see physical frame numbers in pagemap
/// (the kernel shows them only with CAP_SYS_ADMIN).
pub fn pagemap_shows_pfns() -> bool {
    let probe = Box::new(0xa5u8);
    let addr = &*probe as *const u8 as usize;
    // Make sure the page is resident before asking.
    std::hint::black_box(&probe);
    pagemap_phys(addr).is_some()
}

/// `statfs` f_type of hugetlbfs.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// If `dir` is a hugetlbfs mount, its page size.
pub fn hugetlbfs_page_size(dir: &Path) -> Result<Option<usize>> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| {
        EnvError::InvalidArgument(format!("path {} contains a NUL byte", dir.display()))
    })?;
    // SAFETY: statfs writes one struct through a valid pointer and reads the
    // NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(EnvError::last_os("statfs", dir.display().to_string()));
    }
    Ok((st.f_type as i64 == HUGETLBFS_MAGIC).then_some(st.f_bsize as usize))
}

/// Formats a byte count as `2 MiB`, `1 GiB`, `4 KiB`, `123 B`.
pub fn human_size(n: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if n >= unit && n % unit == 0 {
            return format!("{} {name}", n / unit);
        }
        if n >= unit {
            return format!("{:.1} {name}", n as f64 / unit as f64);
        }
    }
    format!("{n} B")
}

/// Whether the process runs with root's effective uid (hugepage
/// reservation, device binding and pagemap's physical frames need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulist_parses_ranges_and_rejects_garbage() {
        assert_eq!(parse_cpulist("0-3,5"), Some(vec![0, 1, 2, 3, 5]));
        assert_eq!(parse_cpulist("0"), Some(vec![0]));
        assert_eq!(parse_cpulist(""), Some(vec![]));
        assert_eq!(parse_cpulist("3-1"), None);
        assert_eq!(parse_cpulist("x"), None);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(PAGE_2M), "2 MiB");
        assert_eq!(human_size(PAGE_1G), "1 GiB");
        assert_eq!(human_size(100), "100 B");
        assert_eq!(human_size(1536), "1.5 KiB");
    }
}
