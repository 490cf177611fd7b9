//! Memory registration and translation maps (SPDK: `spdk_mem_register`,
//! `spdk_mem_map_*`).
//!
//! # Registrations
//! A process registers the memory it will hand to devices: the DMA heap
//! registers its own segments, and [`mem_register`] registers memory
//! allocated elsewhere. Registrations are 4 KiB-aligned (SPDK requires
//! 2 MiB; we accept the finer grain because `--no-huge` heaps and foreign
//! buffers are made of 4 KiB pages), never overlap, and are removed whole:
//!
//! | call | condition | error (errno) |
//! |---|---|---|
//! | register | address or length not 4 KiB-aligned, zero length, beyond 2^48 | `InvalidArgument` (EINVAL) |
//! | register | overlaps an existing registration | `Busy` (EBUSY) |
//! | unregister | range not registered, or has a gap | `InvalidArgument` (EINVAL) |
//! | unregister | covers only part of a registration | `OutOfRange` (ERANGE) |
//!
//! A range that exactly covers several adjacent registrations may be
//! unregistered in one call.
//!
//! # Maps
//! A [`MemMap`] translates virtual addresses to a 64-bit value per page:
//! an IOVA or physical address ([`TranslationKind::Linear`]: the value of an
//! address inside a page is the page's value plus the offset) or a key
//! ([`TranslationKind::Constant`]). Addresses with no translation give the
//! map's default. Each map may carry a [`MemMapNotify`] that is told of every
//! registration and unregistration, so that it can keep its translations
//! (or an IOMMU) in step; a new map is told of every existing registration
//! first, and if that fails, of their removal again (rollback), and the map
//! is not created.
//!
//! Lookups are lock-free and O(1): a table over the 48-bit address space with
//! a first level per 1 GiB, a second per 2 MiB page and, only where a 2 MiB
//! page holds 4 KiB pages with unrelated translations, a third per 4 KiB
//! page. Writers (registration, `set_translation`) serialise on locks; they
//! are control-path operations.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::error::{EnvError, Result};
use crate::sys::{PAGE_2M, PAGE_4K};

/// Highest translatable address plus one: x86_64 user space is 48 bits.
pub const VA_LIMIT: usize = 1 << 48;

const L1_SHIFT: u32 = 30;
const L1_ENTRIES: usize = VA_LIMIT >> L1_SHIFT;
const L2_SHIFT: u32 = 21;
const L3_SHIFT: u32 = 12;
const TABLE_ENTRIES: usize = 512;

/// How a map's value for an address inside a page is derived from the
/// page's value, and which neighbouring pages count as contiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranslationKind {
    /// Address-like: value(addr) = value(page) + offset; pages are
    /// contiguous when the next page's value continues where this one ends.
    Linear,
    /// Key-like: every address in a range has the same value; pages are
    /// contiguous when their values are equal.
    Constant,
}

/// What a notification reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemMapAction {
    /// The range was registered: set up translations for it.
    Register,
    /// The range is being unregistered: tear them down.
    Unregister,
}

/// Callbacks a map gets for registrations (SPDK: `spdk_mem_map_ops`).
///
/// Notifications run with the registration lock held: they must not call
/// [`mem_register`] or [`mem_unregister`].
pub trait MemMapNotify: Send + Sync {
    /// Told of each registration and unregistration. An error on
    /// [`MemMapAction::Register`] fails the registration (or the map's
    /// creation) and is rolled back.
    fn notify(&self, map: &MemMap, action: MemMapAction, vaddr: usize, len: usize) -> Result<()>;
}

struct L3Table {
    values: [AtomicU64; TABLE_ENTRIES],
}

struct L2Table {
    values: [AtomicU64; TABLE_ENTRIES],
    /// Non-null where the 2 MiB page is translated per 4 KiB page.
    fine: [AtomicPtr<L3Table>; TABLE_ENTRIES],
}

struct MapInner {
    l1: Box<[AtomicPtr<L2Table>]>,
    default: u64,
    kind: TranslationKind,
    notify: Option<Box<dyn MemMapNotify>>,
    /// Serialises table writers; readers never take it.
    writer: Mutex<()>,
}

impl Drop for MapInner {
    fn drop(&mut self) {
        for slot in self.l1.iter() {
            let l2 = slot.load(Ordering::Acquire);
            if l2.is_null() {
                continue;
            }
            // SAFETY: `l2` came from Box::into_raw in `l2_for` and is freed
            // only here; dropping the map means no reader can hold it.
            let l2 = unsafe { Box::from_raw(l2) };
            for fine in l2.fine.iter() {
                let l3 = fine.load(Ordering::Acquire);
                if !l3.is_null() {
                    // SAFETY: as above, from Box::into_raw in `l3_for`.
                    drop(unsafe { Box::from_raw(l3) });
                }
            }
        }
    }
}

/// A translation map. Cloning gives another handle to the same map.
#[derive(Clone)]
pub struct MemMap {
    inner: Arc<MapInner>,
}

impl std::fmt::Debug for MemMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemMap")
            .field("default", &format_args!("{:#x}", self.inner.default))
            .field("kind", &self.inner.kind)
            .finish()
    }
}

/// Which value a range being written gets at each page.
#[derive(Clone, Copy)]
enum Fill {
    Default,
    Linear { start: usize, value: u64 },
    Constant(u64),
}

impl MemMap {
    /// Creates a map and replays every existing registration into `notify`
    /// (SPDK: `spdk_mem_map_alloc`). If a replayed notification fails, the
    /// ones before it are undone and the error is returned.
    pub fn new(
        default: u64,
        kind: TranslationKind,
        notify: Option<Box<dyn MemMapNotify>>,
    ) -> Result<MemMap> {
        let map = MemMap {
            inner: Arc::new(MapInner {
                l1: (0..L1_ENTRIES)
                    .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                    .collect(),
                default,
                kind,
                notify,
                writer: Mutex::new(()),
            }),
        };
        let mut reg = registry();
        if map.inner.notify.is_some() {
            let regions: Vec<(usize, usize)> =
                reg.regions.iter().map(|(&a, r)| (a, r.len)).collect();
            for (i, &(addr, len)) in regions.iter().enumerate() {
                if let Err(e) = map.notify(MemMapAction::Register, addr, len) {
                    for &(addr, len) in regions[..i].iter().rev() {
                        let _ = map.notify(MemMapAction::Unregister, addr, len);
                    }
                    return Err(e);
                }
            }
        }
        reg.maps.retain(|m| m.strong_count() > 0);
        reg.maps.push(Arc::downgrade(&map.inner));
        Ok(map)
    }

    /// Detaches the map from registrations, telling its notifier that every
    /// registered range goes away (SPDK: `spdk_mem_map_free`). Dropping the
    /// last handle without calling this only stops notifications.
    pub fn release(self) {
        let mut reg = registry();
        reg.maps
            .retain(|m| !std::ptr::eq(m.as_ptr(), Arc::as_ptr(&self.inner)));
        let regions: Vec<(usize, usize)> = reg.regions.iter().map(|(&a, r)| (a, r.len)).collect();
        for (addr, len) in regions.into_iter().rev() {
            let _ = self.notify(MemMapAction::Unregister, addr, len);
        }
    }

    fn notify(&self, action: MemMapAction, addr: usize, len: usize) -> Result<()> {
        match &self.inner.notify {
            Some(n) => n.notify(self, action, addr, len),
            None => Ok(()),
        }
    }

    /// The value returned for addresses with no translation.
    pub fn default_translation(&self) -> u64 {
        self.inner.default
    }

    /// Sets the translation of `[vaddr, vaddr + len)`: for a linear map,
    /// `vaddr` translates to `value` and the rest of the range follows it;
    /// for a constant map, the whole range translates to `value`.
    pub fn set_translation(&self, vaddr: usize, len: usize, value: u64) -> Result<()> {
        let fill = match self.inner.kind {
            TranslationKind::Linear => Fill::Linear {
                start: vaddr,
                value,
            },
            TranslationKind::Constant => Fill::Constant(value),
        };
        self.write_range(vaddr, len, fill)
    }

    /// Returns `[vaddr, vaddr + len)` to the default translation.
    pub fn clear_translation(&self, vaddr: usize, len: usize) -> Result<()> {
        self.write_range(vaddr, len, Fill::Default)
    }

    fn write_range(&self, vaddr: usize, len: usize, fill: Fill) -> Result<()> {
        check_range(vaddr, len)?;
        let _guard = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
        let value_at = |page: usize| -> u64 {
            match fill {
                Fill::Default => self.inner.default,
                Fill::Linear { start, value } => value.wrapping_add((page - start) as u64),
                Fill::Constant(v) => v,
            }
        };
        let end = vaddr + len;
        let mut va = vaddr;
        while va < end {
            let block = va & !(PAGE_2M - 1);
            let block_end = block + PAGE_2M;
            let stop = end.min(block_end);
            let l2 = self.l2_for(va);
            let i2 = (va >> L2_SHIFT) & (TABLE_ENTRIES - 1);
            let fine = l2.fine[i2].load(Ordering::Acquire);
            if fine.is_null() && va == block && stop == block_end {
                l2.values[i2].store(value_at(block), Ordering::Relaxed);
            } else {
                let l3 = self.l3_for(l2, i2);
                let mut page = va;
                while page < stop {
                    l3.values[(page >> L3_SHIFT) & (TABLE_ENTRIES - 1)]
                        .store(value_at(page), Ordering::Relaxed);
                    page += PAGE_4K;
                }
            }
            va = stop;
        }
        Ok(())
    }

    /// The level-2 table for `va`, created on first use (writer lock held).
    fn l2_for(&self, va: usize) -> &L2Table {
        let slot = &self.inner.l1[va >> L1_SHIFT];
        let mut p = slot.load(Ordering::Acquire);
        if p.is_null() {
            let d = self.inner.default;
            let table = Box::new(L2Table {
                values: std::array::from_fn(|_| AtomicU64::new(d)),
                fine: std::array::from_fn(|_| AtomicPtr::new(std::ptr::null_mut())),
            });
            p = Box::into_raw(table);
            slot.store(p, Ordering::Release);
        }
        // SAFETY: tables are published once and freed only when the map is
        // dropped, which cannot happen while `self` is borrowed.
        unsafe { &*p }
    }

    /// The level-3 table of 2 MiB page `i2`, created from its current
    /// 2 MiB translation on first use (writer lock held).
    fn l3_for<'a>(&self, l2: &'a L2Table, i2: usize) -> &'a L3Table {
        let mut p = l2.fine[i2].load(Ordering::Acquire);
        if p.is_null() {
            let coarse = l2.values[i2].load(Ordering::Relaxed);
            let d = self.inner.default;
            let kind = self.inner.kind;
            let table = Box::new(L3Table {
                values: std::array::from_fn(|i| {
                    AtomicU64::new(if coarse == d || kind == TranslationKind::Constant {
                        coarse
                    } else {
                        coarse.wrapping_add((i * PAGE_4K) as u64)
                    })
                }),
            });
            p = Box::into_raw(table);
            l2.fine[i2].store(p, Ordering::Release);
        }
        // SAFETY: as in `l2_for`: published once, freed with the map.
        unsafe { &*p }
    }

    /// The value stored for the page holding `va` and that page's size.
    #[inline]
    fn page_entry(&self, va: usize) -> (u64, usize) {
        if va >= VA_LIMIT {
            return (self.inner.default, PAGE_2M);
        }
        let l2 = self.inner.l1[va >> L1_SHIFT].load(Ordering::Acquire);
        if l2.is_null() {
            return (self.inner.default, PAGE_2M);
        }
        // SAFETY: a non-null level-1 entry points to a live table (see `l2_for`).
        let l2 = unsafe { &*l2 };
        let i2 = (va >> L2_SHIFT) & (TABLE_ENTRIES - 1);
        let l3 = l2.fine[i2].load(Ordering::Acquire);
        if l3.is_null() {
            (l2.values[i2].load(Ordering::Relaxed), PAGE_2M)
        } else {
            // SAFETY: a non-null level-2 `fine` entry points to a live table.
            let l3 = unsafe { &*l3 };
            (
                l3.values[(va >> L3_SHIFT) & (TABLE_ENTRIES - 1)].load(Ordering::Relaxed),
                PAGE_4K,
            )
        }
    }

    /// Translates one address (SPDK: `spdk_mem_map_translate` without the
    /// size argument).
    #[inline]
    pub fn translate_addr(&self, vaddr: usize) -> u64 {
        let (value, page) = self.page_entry(vaddr);
        if value == self.inner.default || self.inner.kind == TranslationKind::Constant {
            value
        } else {
            value.wrapping_add((vaddr & (page - 1)) as u64)
        }
    }

    /// Translates `vaddr` and shrinks `*len` to the number of bytes from
    /// `vaddr` (up to the `*len` asked for) that are contiguous in the
    /// translation: a linear map's values continue without a gap, a constant
    /// map's are equal. For an address with no translation, the default is
    /// returned and `*len` is cut to the end of its page.
    #[inline]
    pub fn translate(&self, vaddr: usize, len: &mut u64) -> u64 {
        let (value, page) = self.page_entry(vaddr);
        let offset = vaddr & (page - 1);
        let mut contiguous = (page - offset) as u64;
        let linear = self.inner.kind == TranslationKind::Linear;
        if value == self.inner.default {
            *len = (*len).min(contiguous);
            return value;
        }
        let mut next_va = vaddr - offset + page;
        let mut expect = if linear {
            value.wrapping_add(page as u64)
        } else {
            value
        };
        while contiguous < *len && next_va < VA_LIMIT {
            let (next, next_page) = self.page_entry(next_va);
            if next != expect || next == self.inner.default {
                break;
            }
            contiguous += next_page as u64;
            next_va += next_page;
            if linear {
                expect = next.wrapping_add(next_page as u64);
            }
        }
        *len = (*len).min(contiguous);
        if linear {
            value.wrapping_add(offset as u64)
        } else {
            value
        }
    }
}

fn check_range(vaddr: usize, len: usize) -> Result<()> {
    if len == 0 {
        return Err(EnvError::InvalidArgument("length is 0".into()));
    }
    if vaddr % PAGE_4K != 0 || len % PAGE_4K != 0 {
        return Err(EnvError::InvalidArgument(format!(
            "range {vaddr:#x}+{len:#x} is not 4 KiB-aligned in address and length"
        )));
    }
    match vaddr.checked_add(len) {
        Some(end) if end <= VA_LIMIT => Ok(()),
        _ => Err(EnvError::InvalidArgument(format!(
            "range {vaddr:#x}+{len:#x} goes beyond the 48-bit address space"
        ))),
    }
}

/// Who made a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// [`mem_register`]: the caller owns the memory.
    User,
    /// The DMA heap's own segments: released by the heap only.
    Heap,
}

struct Region {
    len: usize,
    owner: Owner,
}

struct Registry {
    regions: BTreeMap<usize, Region>,
    maps: Vec<Weak<MapInner>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    regions: BTreeMap::new(),
    maps: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    fn live_maps(&mut self) -> Vec<MemMap> {
        self.maps.retain(|m| m.strong_count() > 0);
        self.maps
            .iter()
            .filter_map(Weak::upgrade)
            .map(|inner| MemMap { inner })
            .collect()
    }
}

/// Registers memory allocated outside the DMA heap so that translation maps
/// cover it (SPDK: `spdk_mem_register`). The memory must stay mapped, and
/// for physical-address translation resident (mlocked), until
/// [`mem_unregister`].
pub fn mem_register(vaddr: usize, len: usize) -> Result<()> {
    register(vaddr, len, Owner::User)
}

/// Removes a registration made by [`mem_register`] (SPDK:
/// `spdk_mem_unregister`). See the module docs for the rules.
pub fn mem_unregister(vaddr: usize, len: usize) -> Result<()> {
    unregister(vaddr, len, Owner::User)
}

pub(crate) fn register(vaddr: usize, len: usize, owner: Owner) -> Result<()> {
    check_range(vaddr, len)?;
    let end = vaddr + len;
    let mut reg = registry();
    if let Some((&start, r)) = reg.regions.range(..end).next_back() {
        if start + r.len > vaddr {
            return Err(EnvError::Busy(format!(
                "{vaddr:#x}+{len:#x} overlaps the registration {start:#x}+{:#x}",
                r.len
            )));
        }
    }
    let maps = reg.live_maps();
    for (i, map) in maps.iter().enumerate() {
        if let Err(e) = map.notify(MemMapAction::Register, vaddr, len) {
            for done in maps[..i].iter().rev() {
                let _ = done.notify(MemMapAction::Unregister, vaddr, len);
            }
            return Err(e);
        }
    }
    reg.regions.insert(vaddr, Region { len, owner });
    Ok(())
}

pub(crate) fn unregister(vaddr: usize, len: usize, owner: Owner) -> Result<()> {
    check_range(vaddr, len)?;
    let end = vaddr + len;
    let mut reg = registry();
    // The registrations the range touches, in address order.
    let first_before = reg
        .regions
        .range(..vaddr)
        .next_back()
        .filter(|(&s, r)| s + r.len > vaddr)
        .map(|(&s, r)| (s, r.len));
    if let Some((s, l)) = first_before {
        return Err(EnvError::OutOfRange(format!(
            "{vaddr:#x}+{len:#x} starts inside the registration {s:#x}+{l:#x}: unregister it whole"
        )));
    }
    let touched: Vec<(usize, usize, Owner)> = reg
        .regions
        .range(vaddr..end)
        .map(|(&s, r)| (s, r.len, r.owner))
        .collect();
    let Some(&(first, _, _)) = touched.first() else {
        return Err(EnvError::InvalidArgument(format!(
            "{vaddr:#x}+{len:#x} is not registered"
        )));
    };
    if first != vaddr {
        return Err(EnvError::InvalidArgument(format!(
            "{vaddr:#x}..{first:#x} is not registered"
        )));
    }
    let mut cursor = vaddr;
    for &(s, l, o) in &touched {
        if s != cursor {
            return Err(EnvError::InvalidArgument(format!(
                "{cursor:#x}..{s:#x} inside the range is not registered"
            )));
        }
        if o != owner {
            return Err(EnvError::InvalidArgument(format!(
                "{s:#x}+{l:#x} belongs to the DMA heap; free its buffers with dma_free instead"
            )));
        }
        cursor = s + l;
    }
    if cursor > end {
        let &(s, l, _) = touched.last().expect("non-empty");
        return Err(EnvError::OutOfRange(format!(
            "{vaddr:#x}+{len:#x} ends inside the registration {s:#x}+{l:#x}: unregister it whole"
        )));
    }
    if cursor < end {
        return Err(EnvError::InvalidArgument(format!(
            "{cursor:#x}..{end:#x} is not registered"
        )));
    }
    let maps = reg.live_maps();
    for &(s, l, _) in &touched {
        for map in maps.iter().rev() {
            if let Err(e) = map.notify(MemMapAction::Unregister, s, l) {
                tracing::warn!(error = %e, "a memory map failed to drop {s:#x}+{l:#x}");
            }
        }
        reg.regions.remove(&s);
    }
    Ok(())
}

/// The registered ranges, in address order (for diagnostics and tests).
pub fn registrations() -> Vec<(usize, usize)> {
    registry()
        .regions
        .iter()
        .map(|(&a, r)| (a, r.len))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_map_translates_with_offsets_and_contiguity() {
        let map = MemMap::new(u64::MAX, TranslationKind::Linear, None).unwrap();
        let base = 0x1000_0000_0000;
        map.set_translation(base, 4 * PAGE_2M, 0x40_0000_0000)
            .unwrap();
        assert_eq!(map.translate_addr(base + 0x1234), 0x40_0000_1234);
        let mut len = 8 * PAGE_2M as u64;
        assert_eq!(map.translate(base + 100, &mut len), 0x40_0000_0064);
        assert_eq!(len, 4 * PAGE_2M as u64 - 100);
        // A 4 KiB page in the middle that goes elsewhere splits the run.
        map.set_translation(base + PAGE_2M + PAGE_4K, PAGE_4K, 0x99_0000_0000)
            .unwrap();
        let mut len = 8 * PAGE_2M as u64;
        map.translate(base, &mut len);
        assert_eq!(len, (PAGE_2M + PAGE_4K) as u64);
        assert_eq!(
            map.translate_addr(base + PAGE_2M + PAGE_4K + 7),
            0x99_0000_0007
        );
        // The rest of that 2 MiB page still follows the original translation.
        assert_eq!(
            map.translate_addr(base + PAGE_2M + 2 * PAGE_4K),
            0x40_0000_0000 + (PAGE_2M + 2 * PAGE_4K) as u64
        );
        let mut len = 8 * PAGE_2M as u64;
        map.translate(base + PAGE_2M + 2 * PAGE_4K, &mut len);
        assert_eq!(len, (3 * PAGE_2M - 2 * PAGE_4K) as u64);
    }

    #[test]
    fn unset_addresses_give_the_default() {
        let map = MemMap::new(7, TranslationKind::Linear, None).unwrap();
        assert_eq!(map.translate_addr(0x1234), 7);
        let mut len = 1 << 30;
        assert_eq!(map.translate(0x1234, &mut len), 7);
        assert!(len <= PAGE_2M as u64);
        assert_eq!(map.translate_addr(usize::MAX), 7);
    }

    #[test]
    fn constant_map_keeps_values_and_clears() {
        let map = MemMap::new(0, TranslationKind::Constant, None).unwrap();
        let base = 0x2000_0000_0000 - PAGE_2M;
        map.set_translation(base, 2 * PAGE_2M, 42).unwrap();
        let mut len = 3 * PAGE_2M as u64;
        assert_eq!(map.translate(base + 5, &mut len), 42);
        assert_eq!(len, 2 * PAGE_2M as u64 - 5);
        map.clear_translation(base + PAGE_2M, PAGE_4K).unwrap();
        assert_eq!(map.translate_addr(base + PAGE_2M), 0);
        assert_eq!(map.translate_addr(base + PAGE_2M + PAGE_4K), 42);
    }

    #[test]
    fn last_2mib_below_2_pow_48() {
        let map = MemMap::new(u64::MAX, TranslationKind::Linear, None).unwrap();
        let top = VA_LIMIT - PAGE_2M;
        map.set_translation(top, PAGE_2M, 0x1000).unwrap();
        let mut len = 4 * PAGE_2M as u64;
        assert_eq!(
            map.translate(VA_LIMIT - 1, &mut len),
            0x1000 + PAGE_2M as u64 - 1
        );
        assert_eq!(len, 1);
        assert!(map.set_translation(top, 2 * PAGE_2M, 0).is_err());
    }

    #[test]
    fn bad_ranges_are_rejected() {
        let map = MemMap::new(0, TranslationKind::Linear, None).unwrap();
        assert!(matches!(
            map.set_translation(0x1001, PAGE_4K, 0),
            Err(EnvError::InvalidArgument(_))
        ));
        assert!(matches!(
            map.set_translation(0x1000, 0, 0),
            Err(EnvError::InvalidArgument(_))
        ));
    }
}
