//! Memzones: named DMA reservations that any thread can look up
//! (SPDK: `spdk_memzone_reserve`, `spdk_memzone_lookup`, `spdk_memzone_free`).

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Mutex;

use serde::Serialize;

use crate::alloc::{dma_free, dma_zmalloc};
use crate::error::{EnvError, Result};
use crate::vtophys::vtophys;

/// Longest memzone name, as SPDK (`SPDK_MAX_MEMZONE_NAME_LEN` is 32 with the NUL).
pub const MEMZONE_NAME_MAX: usize = 31;

/// A reserved zone. The handle is plain data: the memory is shared by
/// every thread that looks it up, so it is reached through the raw pointer.
#[derive(Debug, Clone, Serialize)]
pub struct Memzone {
    /// The name it was reserved under.
    pub name: String,
    /// Address of the first byte.
    #[serde(serialize_with = "ser_addr")]
    pub addr: NonNull<u8>,
    /// Length in bytes.
    pub len: usize,
    /// Socket of the memory.
    pub socket: u32,
    /// IOVA of the first byte.
    pub iova: u64,
    /// True when the whole zone is contiguous in IOVA space.
    pub iova_contiguous: bool,
}

fn ser_addr<S: serde::Serializer>(p: &NonNull<u8>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{:#x}", p.as_ptr() as usize))
}

// SAFETY: the handle is an address and metadata; the zone itself is shared
// memory that users reach through raw pointers by design.
unsafe impl Send for Memzone {}
// SAFETY: as above.
unsafe impl Sync for Memzone {}

static ZONES: Mutex<Option<HashMap<String, Memzone>>> = Mutex::new(None);

/// Reserves `len` zeroed bytes under `name` on `socket` (SPDK:
/// `spdk_memzone_reserve`). Zones up to the hugepage size are aligned to
/// their size rounded up to a power of two, so they are IOVA-contiguous.
pub fn memzone_reserve(name: &str, len: usize, socket: i32) -> Result<Memzone> {
    if name.is_empty() || name.len() > MEMZONE_NAME_MAX {
        return Err(EnvError::InvalidArgument(format!(
            "memzone name '{name}' must be 1 to {MEMZONE_NAME_MAX} bytes"
        )));
    }
    if len == 0 {
        return Err(EnvError::InvalidArgument(format!(
            "memzone '{name}' has length 0"
        )));
    }
    let mut zones = ZONES.lock().unwrap_or_else(|e| e.into_inner());
    let zones = zones.get_or_insert_with(HashMap::new);
    if zones.contains_key(name) {
        return Err(EnvError::Busy(format!("memzone '{name}' already exists")));
    }
    let align = len
        .checked_next_power_of_two()
        .unwrap_or(1 << 20)
        .min(1 << 20);
    let addr = dma_zmalloc(len, align, socket, None)?;
    let mut run = len as u64;
    let iova = vtophys(addr.as_ptr() as usize, Some(&mut run));
    let zone = Memzone {
        name: name.to_string(),
        addr,
        len,
        socket: crate::alloc::dma_socket_of(addr)?,
        iova,
        iova_contiguous: run == len as u64,
    };
    zones.insert(name.to_string(), zone.clone());
    Ok(zone)
}

/// Finds a zone by name (SPDK: `spdk_memzone_lookup`).
pub fn memzone_lookup(name: &str) -> Option<Memzone> {
    ZONES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()?
        .get(name)
        .cloned()
}

/// Frees a zone (SPDK: `spdk_memzone_free`).
///
/// # Safety
/// No one may use the zone's memory afterwards.
pub unsafe fn memzone_free(name: &str) -> Result<()> {
    let zone = ZONES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|z| z.remove(name))
        .ok_or_else(|| EnvError::NotFound(format!("no memzone named '{name}'")))?;
    // SAFETY: the zone came from dma_zmalloc and the caller guarantees no
    // further use.
    unsafe { dma_free(zone.addr) }
}

/// Every zone, sorted by name (SPDK: `spdk_memzone_dump`).
pub fn memzones() -> Vec<Memzone> {
    let mut v: Vec<Memzone> = ZONES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|z| z.values().cloned().collect())
        .unwrap_or_default();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}
