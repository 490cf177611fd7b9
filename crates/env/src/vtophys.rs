//! Virtual-to-device address translation (SPDK: `spdk_vtophys`).
//!
//! `vtophys` is a [`MemMap`] like any other, created by [`crate::init`]:
//! every registered range gets its IOVA. In [`IovaMode::Pa`] that is the
//! physical address the kernel reports in `/proc/self/pagemap` (read once,
//! when the range is registered: hugepages do not move); in
//! [`IovaMode::Va`] it is the virtual address itself, for devices behind an
//! IOMMU that we program with the same addresses.

use std::sync::OnceLock;

use crate::error::{EnvError, Result};
use crate::memmap::{MemMap, MemMapAction, MemMapNotify, TranslationKind};
use crate::sys::{self, PagemapEntry, PAGE_4K};

/// What [`vtophys`] returns for an address it cannot translate (SPDK:
/// `SPDK_VTOPHYS_ERROR`).
pub const VTOPHYS_ERROR: u64 = u64::MAX;

/// How device-visible addresses are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IovaMode {
    /// Physical addresses if the kernel shows them to us, else virtual.
    #[default]
    Auto,
    /// Physical addresses from pagemap (needs CAP_SYS_ADMIN; devices without an IOMMU).
    Pa,
    /// IOVA = virtual address (devices behind an IOMMU that we map through VFIO).
    Va,
}

impl std::str::FromStr for IovaMode {
    type Err = EnvError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(IovaMode::Auto),
            "pa" => Ok(IovaMode::Pa),
            "va" => Ok(IovaMode::Va),
            other => Err(EnvError::InvalidArgument(format!(
                "IOVA mode '{other}' is not one of pa, va, auto"
            ))),
        }
    }
}

impl std::fmt::Display for IovaMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IovaMode::Auto => "auto",
            IovaMode::Pa => "pa",
            IovaMode::Va => "va",
        })
    }
}

static VTOPHYS: OnceLock<MemMap> = OnceLock::new();

struct VtophysNotify {
    mode: IovaMode,
}

/// Pagemap entries read per system call when translating a registration.
const PAGEMAP_BATCH: usize = 4096;

impl MemMapNotify for VtophysNotify {
    fn notify(&self, map: &MemMap, action: MemMapAction, vaddr: usize, len: usize) -> Result<()> {
        match (action, self.mode) {
            (MemMapAction::Unregister, _) => map.clear_translation(vaddr, len),
            (MemMapAction::Register, IovaMode::Va) => map.set_translation(vaddr, len, vaddr as u64),
            (MemMapAction::Register, _) => set_physical(map, vaddr, len),
        }
    }
}

/// Sets the translation of a registered range from pagemap, one call per
/// physically contiguous run.
fn set_physical(map: &MemMap, vaddr: usize, len: usize) -> Result<()> {
    let pages = len / PAGE_4K;
    let mut entries = vec![PagemapEntry(0); PAGEMAP_BATCH.min(pages)];
    // The run being built: (start va, start pa, length).
    let mut run: Option<(usize, u64, usize)> = None;
    let mut done = 0;
    while done < pages {
        let n = entries.len().min(pages - done);
        let batch_va = vaddr + done * PAGE_4K;
        sys::read_pagemap(batch_va, &mut entries[..n])?;
        for (i, e) in entries[..n].iter().enumerate() {
            let va = batch_va + i * PAGE_4K;
            if !e.present() || e.pfn() == 0 {
                return Err(EnvError::InvalidArgument(format!(
                    "page {va:#x} has no physical address: it is not resident (mlock the memory before registering it) or the kernel hides frame numbers (run as root, or use IOVA mode va)"
                )));
            }
            let pa = e.pfn() * PAGE_4K as u64;
            run = match run {
                Some((s, spa, l)) if spa + l as u64 == pa => Some((s, spa, l + PAGE_4K)),
                Some((s, spa, l)) => {
                    map.set_translation(s, l, spa)?;
                    Some((va, pa, PAGE_4K))
                }
                None => Some((va, pa, PAGE_4K)),
            };
        }
        done += n;
    }
    if let Some((s, spa, l)) = run {
        map.set_translation(s, l, spa)?;
    }
    Ok(())
}

/// Creates the vtophys map (called once by env init).
pub(crate) fn install(mode: IovaMode) -> Result<()> {
    debug_assert_ne!(mode, IovaMode::Auto, "resolved before install");
    let map = MemMap::new(
        VTOPHYS_ERROR,
        TranslationKind::Linear,
        Some(Box::new(VtophysNotify { mode })),
    )?;
    VTOPHYS
        .set(map)
        .map_err(|_| EnvError::State("vtophys is already installed".into()))
}

/// The IOVA of `vaddr`, or [`VTOPHYS_ERROR`] for memory that is not
/// registered (SPDK: `spdk_vtophys`). With `len`, shrinks it to the number of
/// bytes from `vaddr` that are contiguous in IOVA space.
#[inline]
pub fn vtophys(vaddr: usize, len: Option<&mut u64>) -> u64 {
    let Some(map) = VTOPHYS.get() else {
        return VTOPHYS_ERROR;
    };
    match len {
        Some(len) => map.translate(vaddr, len),
        None => map.translate_addr(vaddr),
    }
}

/// True if every byte of `[vaddr, vaddr + len)` is registered DMA memory
/// (each page translates): what a device may be handed.
#[inline]
pub fn is_dma_memory(vaddr: usize, len: usize) -> bool {
    let Some(map) = VTOPHYS.get() else {
        return false;
    };
    let end = vaddr.saturating_add(len);
    let mut at = vaddr;
    while at < end {
        let mut run = (end - at) as u64;
        if map.translate(at, &mut run) == VTOPHYS_ERROR || run == 0 {
            return false;
        }
        at = at.saturating_add(run as usize);
    }
    true
}

/// The vtophys map itself, for callers that translate many addresses.
pub fn vtophys_map() -> Option<&'static MemMap> {
    VTOPHYS.get()
}
