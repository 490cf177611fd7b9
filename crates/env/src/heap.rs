//! One NUMA socket's DMA heap: a reserved window of address space, filled
//! with pinned segments on demand, and a page allocator over it.
//!
//! The window is reserved once (no memory behind it). Segments of hugepages
//! (or locked 4 KiB pages) are mapped into it as allocations need them, each
//! registered so that every translation map learns its IOVA, and given back
//! when they fall entirely free (beyond a retained slack). Allocation inside
//! the committed part works in 64 KiB units: slabs for the small size
//! classes of [`crate::alloc`], and whole ranges for large buffers.
//!
//! A unit table (one word per 64 KiB of window) says what each unit holds, so
//! that `dma_free` can find the size class or length of any pointer in O(1)
//! and reject pointers it never handed out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{EnvError, Result};
use crate::memmap::{self, Owner};
use crate::sys::{self, human_size, Backing};

/// The page allocator's unit: 64 KiB.
pub(crate) const UNIT_SHIFT: u32 = 16;
/// 64 KiB.
pub(crate) const UNIT: usize = 1 << UNIT_SHIFT;

/// Unit-table tag: the unit is part of a slab; the low byte is the class.
pub(crate) const TAG_SLAB: u32 = 0x8000_0000;
/// Unit-table tag: first unit of a large allocation; low 30 bits: units.
pub(crate) const TAG_LARGE: u32 = 0x4000_0000;
/// Unit-table tag: a later unit of a large allocation.
pub(crate) const TAG_CONT: u32 = 0x2000_0000;
const LEN_MASK: u32 = 0x1fff_ffff;

/// A set of disjoint address ranges with coalescing and aligned first-fit.
#[derive(Debug, Default)]
pub(crate) struct RangeSet {
    ranges: BTreeMap<usize, usize>,
    total: usize,
}

impl RangeSet {
    /// Adds `[start, start + len)`, merging with neighbours; returns the
    /// merged range.
    pub(crate) fn insert(&mut self, mut start: usize, mut len: usize) -> (usize, usize) {
        self.total += len;
        if let Some((&s, &l)) = self.ranges.range(..start).next_back() {
            debug_assert!(s + l <= start, "double insert of {start:#x}");
            if s + l == start {
                self.ranges.remove(&s);
                start = s;
                len += l;
            }
        }
        if let Some(&l) = self.ranges.get(&(start + len)) {
            self.ranges.remove(&(start + len));
            len += l;
        }
        self.ranges.insert(start, len);
        (start, len)
    }

    /// Takes `len` bytes aligned to `align` (a power of two), first fit.
    pub(crate) fn alloc(&mut self, len: usize, align: usize) -> Option<usize> {
        let (s, l, at) = self.ranges.iter().find_map(|(&s, &l)| {
            let at = s.checked_add(align - 1)? & !(align - 1);
            (at.checked_add(len)? <= s + l).then_some((s, l, at))
        })?;
        self.ranges.remove(&s);
        if at > s {
            self.ranges.insert(s, at - s);
        }
        if at + len < s + l {
            self.ranges.insert(at + len, s + l - at - len);
        }
        self.total -= len;
        Some(at)
    }

    /// Removes `[start, start + len)`, which must lie inside one range.
    pub(crate) fn remove(&mut self, start: usize, len: usize) {
        let (&s, &l) = self
            .ranges
            .range(..=start)
            .next_back()
            .expect("range to remove is free");
        debug_assert!(start + len <= s + l);
        self.ranges.remove(&s);
        if start > s {
            self.ranges.insert(s, start - s);
        }
        if start + len < s + l {
            self.ranges.insert(start + len, s + l - start - len);
        }
        self.total -= len;
    }

    /// Bytes in the set.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// The largest range.
    pub(crate) fn largest(&self) -> usize {
        self.ranges.values().copied().max().unwrap_or(0)
    }
}

#[derive(Debug)]
struct Segment {
    len: usize,
    /// The pre-reserved memory (`-s`): never given back.
    permanent: bool,
}

#[derive(Debug, Default)]
struct HeapState {
    /// Committed memory no one has.
    free: RangeSet,
    /// Window space with nothing mapped.
    uncommitted: RangeSet,
    segments: BTreeMap<usize, Segment>,
    committed: usize,
}

/// Settings a heap is built with.
#[derive(Debug, Clone)]
pub(crate) struct HeapConfig {
    pub socket: u32,
    /// Bind memory to `socket` (false when the system has one node or the
    /// node has no memory of its own).
    pub bind_node: bool,
    pub backing: Backing,
    /// Preferred window address.
    pub base_hint: usize,
    /// Window size: the most this heap can ever hold.
    pub window: usize,
    /// Growth beyond this fails.
    pub limit: usize,
    /// Smallest growth step.
    pub grow_min: usize,
    /// Free memory kept rather than given back to the kernel.
    pub retain_free: usize,
}

/// Per-heap counters of buffers handed out and returned, folded in from
/// exited threads (live threads keep their own, see [`crate::alloc`]).
#[derive(Debug, Default)]
pub(crate) struct RetiredCounters {
    pub allocs: AtomicU64,
    pub frees: AtomicU64,
    pub alloc_bytes: AtomicU64,
    pub free_bytes: AtomicU64,
}

/// One socket's DMA heap.
pub(crate) struct Heap {
    pub config: HeapConfig,
    pub base: usize,
    state: Mutex<HeapState>,
    units: Box<[AtomicU32]>,
    /// Free blocks of each size class that no thread caches.
    pub depots: Vec<Mutex<Vec<usize>>>,
    pub retired: RetiredCounters,
}

impl std::fmt::Debug for Heap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heap")
            .field("socket", &self.config.socket)
            .field("base", &format_args!("{:#x}", self.base))
            .finish()
    }
}

impl Heap {
    /// Reserves the window and commits `initial` bytes.
    pub(crate) fn new(config: HeapConfig, classes: usize, initial: usize) -> Result<Heap> {
        let page = config.backing.page_size().max(UNIT);
        if config.window % page != 0 || config.window == 0 {
            return Err(EnvError::InvalidArgument(format!(
                "heap window {} is not a multiple of the page size {}",
                human_size(config.window),
                human_size(page)
            )));
        }
        // Reserve one extra page so the window can be aligned to it.
        let raw = sys::reserve_va(config.base_hint, config.window + page)?;
        let base = (raw + page - 1) & !(page - 1);
        // SAFETY: trimming the unaligned head and tail of our own fresh
        // reservation; nothing uses them.
        unsafe {
            if base > raw {
                sys::unmap(raw, base - raw);
            }
            let tail = raw + config.window + page - (base + config.window);
            if tail > 0 {
                sys::unmap(base + config.window, tail);
            }
        }
        let mut state = HeapState::default();
        state.uncommitted.insert(base, config.window);
        let heap = Heap {
            units: (0..config.window >> UNIT_SHIFT)
                .map(|_| AtomicU32::new(0))
                .collect(),
            depots: (0..classes).map(|_| Mutex::new(Vec::new())).collect(),
            retired: RetiredCounters::default(),
            config,
            base,
            state: Mutex::new(state),
        };
        if initial > 0 {
            let mut st = heap.lock();
            heap.grow(&mut st, initial, true)?;
        }
        Ok(heap)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HeapState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if `addr` is inside this heap's window.
    #[inline]
    pub(crate) fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.base) < self.config.window
    }

    /// The unit-table word for `addr` (which must be inside the window).
    #[inline]
    pub(crate) fn unit_tag(&self, addr: usize) -> u32 {
        self.units[(addr - self.base) >> UNIT_SHIFT].load(Ordering::Acquire)
    }

    fn set_tags(&self, addr: usize, len: usize, first: u32, rest: u32) {
        let i = (addr - self.base) >> UNIT_SHIFT;
        let n = len >> UNIT_SHIFT;
        self.units[i].store(first, Ordering::Release);
        for u in &self.units[i + 1..i + n] {
            u.store(rest, Ordering::Release);
        }
    }

    /// Maps a new segment of at least `need` bytes (caller holds the lock).
    fn grow(&self, st: &mut HeapState, need: usize, permanent: bool) -> Result<usize> {
        let page = self.config.backing.page_size().max(UNIT);
        let len = need.max(if permanent { 0 } else { self.config.grow_min });
        let len = len.checked_add(page - 1).ok_or_else(too_big)? & !(page - 1);
        if st.committed + len > self.config.limit {
            return Err(EnvError::NoMemory(format!(
                "socket {} heap limit reached: {} committed, {} more needed, limit {} (raise the memory limit)",
                self.config.socket,
                human_size(st.committed),
                human_size(len),
                human_size(self.config.limit)
            )));
        }
        let addr = st.uncommitted.alloc(len, page).ok_or_else(|| {
            EnvError::NoMemory(format!(
                "socket {} heap window ({}) has no room for {} more",
                self.config.socket,
                human_size(self.config.window),
                human_size(len)
            ))
        })?;
        let node = self.config.bind_node.then_some(self.config.socket);
        // SAFETY: `addr..addr+len` was just taken from this heap's
        // uncommitted window space, which no one else maps or uses.
        if let Err(e) = unsafe { sys::map_segment(addr, len, &self.config.backing, node) } {
            st.uncommitted.insert(addr, len);
            return Err(e);
        }
        if let Err(e) = memmap::register(addr, len, Owner::Heap) {
            // SAFETY: the segment was mapped above and never handed out.
            unsafe { sys::release_segment(addr, len) };
            st.uncommitted.insert(addr, len);
            return Err(e);
        }
        tracing::debug!(
            socket = self.config.socket,
            addr = format_args!("{addr:#x}"),
            len = %human_size(len),
            "DMA heap grew"
        );
        st.segments.insert(addr, Segment { len, permanent });
        st.committed += len;
        st.free.insert(addr, len);
        Ok(addr)
    }

    /// Takes `len` bytes (a multiple of [`UNIT`]) aligned to `align`,
    /// growing the heap if needed. The unit table is not touched.
    fn take(&self, len: usize, align: usize) -> Result<usize> {
        let mut st = self.lock();
        if let Some(a) = st.free.alloc(len, align) {
            return Ok(a);
        }
        // Enough for the request at any alignment within the new segment.
        let page = self.config.backing.page_size().max(UNIT);
        let slack = if align > page { align } else { 0 };
        let segment = self.grow(&mut st, len.checked_add(slack).ok_or_else(too_big)?, false)?;
        // Carve the request from the new segment itself rather than let
        // first-fit straddle older memory: a buffer that owns its segment
        // lets the segment go back to the kernel when it is freed.
        let at = (segment + align - 1) & !(align - 1);
        st.free.remove(at, len);
        Ok(at)
    }

    /// A slab of `len` bytes for size class `class`, tagged as such.
    pub(crate) fn alloc_slab(&self, class: usize, len: usize, align: usize) -> Result<usize> {
        let addr = self.take(len, align.max(UNIT))?;
        let tag = TAG_SLAB | class as u32;
        self.set_tags(addr, len, tag, tag);
        Ok(addr)
    }

    /// A large buffer of at least `len` bytes; returns its address and the
    /// length actually reserved.
    pub(crate) fn alloc_large(&self, len: usize, align: usize) -> Result<(usize, usize)> {
        let len = len.checked_add(UNIT - 1).ok_or_else(too_big)? & !(UNIT - 1);
        let units = len >> UNIT_SHIFT;
        if units > LEN_MASK as usize {
            return Err(too_big());
        }
        let addr = self.take(len, align.max(UNIT))?;
        self.set_tags(addr, len, TAG_LARGE | units as u32, TAG_CONT);
        Ok((addr, len))
    }

    /// The length of the large allocation starting at `addr`, if it is one.
    #[inline]
    pub(crate) fn large_len(tag: u32) -> Option<usize> {
        (tag & TAG_LARGE != 0).then_some(((tag & LEN_MASK) as usize) << UNIT_SHIFT)
    }

    /// Returns a large allocation, giving whole free segments back to the
    /// kernel beyond the retained slack.
    pub(crate) fn free_large(&self, addr: usize, len: usize) {
        self.set_tags(addr, len, 0, 0);
        let mut st = self.lock();
        let (start, merged) = st.free.insert(addr, len);
        self.give_back(&mut st, start, merged);
    }

    fn give_back(&self, st: &mut HeapState, start: usize, len: usize) {
        let inside: Vec<(usize, usize)> = st
            .segments
            .range(start..start + len)
            .filter(|(&s, seg)| !seg.permanent && s + seg.len <= start + len)
            .map(|(&s, seg)| (s, seg.len))
            .collect();
        for (s, l) in inside {
            if st.free.total() < l + self.config.retain_free {
                break;
            }
            if let Err(e) = memmap::unregister(s, l, Owner::Heap) {
                tracing::error!(error = %e, "could not unregister a free heap segment; keeping it");
                continue;
            }
            st.free.remove(s, l);
            // SAFETY: every byte of the segment is in the free set, so no
            // allocation points into it, and it is no longer registered.
            unsafe { sys::release_segment(s, l) };
            st.segments.remove(&s);
            st.committed -= l;
            st.uncommitted.insert(s, l);
            tracing::debug!(addr = format_args!("{s:#x}"), len = %human_size(l), "DMA heap segment returned to the kernel");
        }
    }

    /// (committed bytes, bytes in the free page set, largest free range).
    pub(crate) fn page_stats(&self) -> (usize, usize, usize) {
        let st = self.lock();
        (st.committed, st.free.total(), st.free.largest())
    }

    /// The committed segments, (address, length), in address order.
    pub(crate) fn segments(&self) -> Vec<(usize, usize)> {
        self.lock()
            .segments
            .iter()
            .map(|(&a, s)| (a, s.len))
            .collect()
    }
}

fn too_big() -> EnvError {
    EnvError::InvalidArgument("requested size overflows the address space".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rangeset_coalesces_and_aligns() {
        let mut r = RangeSet::default();
        r.insert(0x10000, 0x10000);
        r.insert(0x30000, 0x10000);
        assert_eq!(r.insert(0x20000, 0x10000), (0x10000, 0x30000));
        assert_eq!(r.total(), 0x30000);
        assert_eq!(r.alloc(0x10000, 0x20000), Some(0x20000));
        assert_eq!(r.total(), 0x20000);
        assert_eq!(r.largest(), 0x10000);
        assert_eq!(r.alloc(0x20000, 0x10000), None);
        r.remove(0x10000, 0x10000);
        assert_eq!(r.total(), 0x10000);
        assert_eq!(r.alloc(0x10000, 0x10000), Some(0x30000));
        assert_eq!(r.total(), 0);
    }
}
