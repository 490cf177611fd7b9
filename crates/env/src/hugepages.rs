//! The kernel's hugepage pools and hugetlbfs mounts, as sysfs and
//! /proc/mounts describe them. Used by the heap (to pick a backing and word
//! its errors) and by `rspdk_setup`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{EnvError, Result};

/// One hugepage pool: a page size on a NUMA node (or system-wide).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HugepagePool {
    /// NUMA node, or `None` for the system-wide counters.
    pub node: Option<u32>,
    /// Page size in bytes.
    pub page_size: usize,
    /// Pages reserved (`nr_hugepages`).
    pub total: u64,
    /// Pages free.
    pub free: u64,
}

/// A hugetlbfs mount.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HugetlbfsMount {
    /// Mount point.
    pub path: PathBuf,
    /// Page size of the mount, in bytes.
    pub page_size: usize,
}

const SYSTEM_DIR: &str = "/sys/kernel/mm/hugepages";

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Hugepage sizes the kernel supports, ascending.
pub fn sizes() -> Vec<usize> {
    let mut out: Vec<usize> = std::fs::read_dir(SYSTEM_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| size_of_dir_name(&e.file_name().to_string_lossy()))
        .collect();
    out.sort_unstable();
    out
}

fn size_of_dir_name(name: &str) -> Option<usize> {
    let kb = name.strip_prefix("hugepages-")?.strip_suffix("kB")?;
    Some(kb.parse::<usize>().ok()? * 1024)
}

fn pool_dir(node: Option<u32>, page_size: usize) -> PathBuf {
    let leaf = format!("hugepages-{}kB", page_size / 1024);
    match node {
        Some(n) => PathBuf::from(format!("/sys/devices/system/node/node{n}/hugepages")).join(leaf),
        None => PathBuf::from(SYSTEM_DIR).join(leaf),
    }
}

/// The pool of `page_size` pages on `node` (`None`: system-wide).
pub fn pool(node: Option<u32>, page_size: usize) -> Option<HugepagePool> {
    let dir = pool_dir(node, page_size);
    Some(HugepagePool {
        node,
        page_size,
        total: read_u64(&dir.join("nr_hugepages"))?,
        free: read_u64(&dir.join("free_hugepages"))?,
    })
}

/// Every per-node pool of every size (the system-wide ones when the kernel
/// has no per-node view).
pub fn pools() -> Vec<HugepagePool> {
    let mut out = Vec::new();
    for size in sizes() {
        let per_node: Vec<_> = crate::sys::nodes_with_memory()
            .into_iter()
            .filter_map(|n| pool(Some(n), size))
            .collect();
        if per_node.is_empty() {
            out.extend(pool(None, size));
        } else {
            out.extend(per_node);
        }
    }
    out
}

/// Free pages of this size, system-wide.
pub fn free_pages(page_size: usize) -> Option<u64> {
    pool(None, page_size).map(|p| p.free)
}

/// The machine's memory (MemTotal of /proc/meminfo), bytes.
pub fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses a memory size (`-s`, MiB) the machine cannot have: checked
/// before any hugepage is reserved, so that an impossible size costs
/// nothing.
pub fn check_mem_size(mem_size_mb: usize) -> Result<()> {
    let want = (mem_size_mb as u64).saturating_mul(1 << 20);
    match mem_total() {
        Some(total) if want > total => Err(EnvError::InvalidArgument(format!(
            "-s {mem_size_mb} MiB is more than this machine's memory ({} MiB): ask for less",
            total >> 20
        ))),
        _ => Ok(()),
    }
}

/// Sets the number of reserved pages of `page_size` on `node` (or
/// system-wide), returning how many the kernel actually reserved: it may
/// give fewer when memory is fragmented.
pub fn set_reserved(node: Option<u32>, page_size: usize, count: u64) -> Result<u64> {
    let path = pool_dir(node, page_size).join("nr_hugepages");
    std::fs::write(&path, count.to_string()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            EnvError::InvalidArgument(format!(
                "writing {} needs root: run `sudo rspdk_setup config`",
                path.display()
            ))
        } else {
            EnvError::Sys {
                op: "write",
                detail: path.display().to_string(),
                source: e,
            }
        }
    })?;
    read_u64(&path).ok_or_else(|| EnvError::NotFound(format!("{} vanished", path.display())))
}

/// hugetlbfs mounts listed in /proc/mounts, with their page sizes.
pub fn mounts() -> Vec<HugetlbfsMount> {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    parse_mounts(&text, default_size())
}

fn default_size() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Hugepagesize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(crate::sys::PAGE_2M, |kb| kb * 1024)
}

fn parse_mounts(text: &str, default_size: usize) -> Vec<HugetlbfsMount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_dev, path, fstype, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
            if fstype != "hugetlbfs" {
                return None;
            }
            let page_size = opts
                .split(',')
                .find_map(|o| o.strip_prefix("pagesize="))
                .and_then(parse_size)
                .unwrap_or(default_size);
            Some(HugetlbfsMount {
                path: PathBuf::from(path.replace("\\040", " ")),
                page_size,
            })
        })
        .collect()
}

/// Parses `2M`, `1G`, `2048K`, `2097152` into bytes.
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

/// Mounts hugetlbfs with `page_size` pages at `dir` (creating it).
pub fn mount(dir: &Path, page_size: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EnvError::Sys {
        op: "mkdir",
        detail: dir.display().to_string(),
        source: e,
    })?;
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| EnvError::InvalidArgument("mount path contains NUL".into()))?;
    let data = std::ffi::CString::new(format!("pagesize={}K", page_size / 1024))
        .map_err(|_| EnvError::InvalidArgument("bad page size".into()))?;
    // SAFETY: every argument is a valid NUL-terminated string that outlives
    // the call; mount does not keep them.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"hugetlbfs".as_ptr(),
            0,
            data.as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        return Err(EnvError::last_os(
            "mount",
            format!("hugetlbfs at {} (needs root)", dir.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse_page_sizes() {
        let text = "sysfs /sys sysfs rw 0 0\n\
                    hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n\
                    nodev /mnt/huge1g hugetlbfs rw,pagesize=1024M 0 0\n\
                    nodev /mnt/plain hugetlbfs rw 0 0\n";
        let m = parse_mounts(text, 2 << 20);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].page_size, 2 << 20);
        assert_eq!(m[1].page_size, 1 << 30);
        assert_eq!(m[2].page_size, 2 << 20);
        assert_eq!(m[1].path, PathBuf::from("/mnt/huge1g"));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("2048k"), Some(2 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(size_of_dir_name("hugepages-2048kB"), Some(2 << 20));
        assert_eq!(size_of_dir_name("other"), None);
    }

    #[test]
    fn sysfs_pools_are_readable() {
        // Every Linux kernel with hugetlb support lists at least one size.
        assert!(!sizes().is_empty(), "no hugepage sizes in {SYSTEM_DIR}");
        for p in pools() {
            assert!(p.free <= p.total, "{p:?}");
        }
    }
}
