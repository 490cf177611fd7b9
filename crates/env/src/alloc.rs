//! DMA buffer allocation (SPDK: `spdk_dma_malloc`, `spdk_dma_zmalloc`,
//! `spdk_dma_realloc`, `spdk_dma_free`, `spdk_malloc` and siblings).
//!
//! # Contract
//! - Every buffer is pinned memory from a socket's heap, registered in every
//!   translation map: [`crate::vtophys`] gives its IOVA.
//! - Requests up to 1 MiB are served from power-of-two size classes
//!   (64 B .. 1 MiB). A block of class `c` is aligned to `c`, so any
//!   power-of-two alignment up to the block size is free, and a block never
//!   crosses a boundary of its own size: with 2 MiB or 1 GiB hugepages every
//!   such buffer lies inside one hugepage and is physically contiguous.
//! - Larger requests (or alignments above 1 MiB) take whole 64 KiB units and
//!   may span hugepages; `vtophys(addr, Some(&mut len))` reports exactly how
//!   far each physically contiguous run goes, and an allocation never crosses
//!   a discontiguity that it does not report. With `--no-huge` only 4 KiB
//!   runs are guaranteed.
//! - [`dma_malloc`] returns memory with unspecified (but initialised)
//!   contents; [`dma_zmalloc`] zeroes it. [`dma_realloc`] keeps the contents
//!   up to the smaller of the two sizes.
//! - Size 0, alignments that are not powers of two, sizes the heap cannot
//!   hold, and pointers this allocator did not hand out are errors.
//!
//! # Speed
//! Each thread keeps a cache of free blocks per heap and class; the common
//! allocation and free touch only that cache. A thread refills or drains its
//! cache in batches from a per-class depot (one lock per batch), and depots
//! carve new slabs from the heap's page allocator. Nothing is zeroed on
//! free.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::env::{env_or_err, Env, MAX_SOCKETS};
use crate::error::{EnvError, Result};
use crate::heap::{Heap, TAG_SLAB, UNIT};
use crate::sys::human_size;

/// Any socket: the main socket's heap (SPDK: `SPDK_ENV_SOCKET_ID_ANY`).
pub const SOCKET_ID_ANY: i32 = -1;

/// Smallest class: 64 B, a cache line.
const MIN_CLASS_SHIFT: u32 = 6;
/// Largest class: 1 MiB.
const MAX_CLASS_SHIFT: u32 = 20;
/// Number of size classes.
pub(crate) const NUM_CLASSES: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;

#[inline]
fn class_size(class: usize) -> usize {
    1 << (MIN_CLASS_SHIFT as usize + class)
}

/// The class for `size` bytes at `align`, or `None` for a large request.
#[inline]
fn class_of(size: usize, align: usize) -> Option<usize> {
    let need = size.max(align).max(1 << MIN_CLASS_SHIFT);
    if need > 1 << MAX_CLASS_SHIFT {
        return None;
    }
    let shift = usize::BITS - (need - 1).leading_zeros();
    Some((shift - MIN_CLASS_SHIFT) as usize)
}

/// Blocks a thread caches per class: about 512 KiB worth, 4 to 256 blocks.
#[inline]
fn cache_cap(class: usize) -> usize {
    ((512 << 10) / class_size(class)).clamp(4, 256)
}

/// A slab: at least 64 KiB and four blocks.
#[inline]
fn slab_len(class: usize) -> usize {
    (4 * class_size(class)).max(UNIT)
}

/// Per-thread allocation counters, readable by other threads for stats.
/// Only the owning thread writes them, so updates are plain load + store
/// (a plain `mov` on x86), and they live inline in the thread's cache.
struct ThreadCounters {
    allocs: [AtomicU64; MAX_SOCKETS],
    frees: [AtomicU64; MAX_SOCKETS],
    alloc_bytes: [AtomicU64; MAX_SOCKETS],
    free_bytes: [AtomicU64; MAX_SOCKETS],
}

impl ThreadCounters {
    const fn new() -> Self {
        ThreadCounters {
            allocs: [const { AtomicU64::new(0) }; MAX_SOCKETS],
            frees: [const { AtomicU64::new(0) }; MAX_SOCKETS],
            alloc_bytes: [const { AtomicU64::new(0) }; MAX_SOCKETS],
            free_bytes: [const { AtomicU64::new(0) }; MAX_SOCKETS],
        }
    }
}

#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed) + by, Ordering::Relaxed);
}

/// The counters of every live thread, by address.
struct CountersPtr(*const ThreadCounters);

// SAFETY: the pointee is a thread's cache, which removes its pointer from
// LIVE_THREADS (under the lock) before it is destroyed; readers only load
// its atomics while holding that lock.
unsafe impl Send for CountersPtr {}

static LIVE_THREADS: Mutex<Vec<CountersPtr>> = Mutex::new(Vec::new());

struct ThreadCache {
    bins: [[Vec<usize>; NUM_CLASSES]; MAX_SOCKETS],
    counters: ThreadCounters,
    registered: bool,
}

impl ThreadCache {
    const fn new() -> Self {
        ThreadCache {
            bins: [const { [const { Vec::new() }; NUM_CLASSES] }; MAX_SOCKETS],
            counters: ThreadCounters::new(),
            registered: false,
        }
    }

    /// The counters, published for stats on first use. The cache lives in
    /// thread-local storage, so its address is stable until `drop`.
    #[inline]
    fn counters(&mut self) -> &ThreadCounters {
        if !self.registered {
            self.register();
        }
        &self.counters
    }

    #[cold]
    fn register(&mut self) {
        LIVE_THREADS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(CountersPtr(&self.counters));
        self.registered = true;
    }
}

impl Drop for ThreadCache {
    fn drop(&mut self) {
        if self.registered {
            let me: *const ThreadCounters = &self.counters;
            LIVE_THREADS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|x| !std::ptr::eq(x.0, me));
        }
        let Some(env) = crate::env::env() else { return };
        for (heap_id, bins) in self.bins.iter_mut().enumerate() {
            let Some(heap) = env.heap(heap_id) else {
                continue;
            };
            for (class, bin) in bins.iter_mut().enumerate() {
                if !bin.is_empty() {
                    lock_depot(heap, class).append(bin);
                }
            }
        }
        let c = &self.counters;
        for (heap_id, heap) in env.heaps() {
            let r = &heap.retired;
            let fold = |from: &AtomicU64, to: &AtomicU64| {
                to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
            };
            fold(&c.allocs[heap_id], &r.allocs);
            fold(&c.frees[heap_id], &r.frees);
            fold(&c.alloc_bytes[heap_id], &r.alloc_bytes);
            fold(&c.free_bytes[heap_id], &r.free_bytes);
        }
    }
}

thread_local! {
    static CACHE: RefCell<ThreadCache> = const { RefCell::new(ThreadCache::new()) };
}

fn lock_depot(heap: &Heap, class: usize) -> std::sync::MutexGuard<'_, Vec<usize>> {
    heap.depots[class].lock().unwrap_or_else(|e| e.into_inner())
}

/// Fills `bin` from the depot, carving a new slab if the depot is empty,
/// and returns one block.
#[cold]
fn refill(heap: &Heap, class: usize, bin: &mut Vec<usize>) -> Result<usize> {
    let cap = cache_cap(class);
    if bin.capacity() < cap {
        bin.reserve_exact(cap - bin.len());
    }
    let want = cap / 2;
    {
        let mut depot = lock_depot(heap, class);
        let n = want.min(depot.len());
        let at = depot.len() - n;
        bin.extend(depot.drain(at..));
    }
    if bin.is_empty() {
        let size = class_size(class);
        let len = slab_len(class);
        let slab = heap.alloc_slab(class, len, size)?;
        let blocks = (0..len / size).map(|i| slab + i * size);
        let mut depot = lock_depot(heap, class);
        for (i, b) in blocks.enumerate() {
            if i < want {
                bin.push(b);
            } else {
                depot.push(b);
            }
        }
    }
    Ok(bin.pop().expect("refilled"))
}

fn validate(size: usize, align: usize) -> Result<usize> {
    if size == 0 {
        return Err(EnvError::InvalidArgument(
            "size 0: a DMA buffer must hold at least one byte".into(),
        ));
    }
    let align = align.max(1);
    if !align.is_power_of_two() {
        return Err(EnvError::InvalidArgument(format!(
            "alignment {align} is not a power of two"
        )));
    }
    Ok(align)
}

/// Allocates from `heap_id`: a block from this thread's cache when it has
/// one (inlined, nothing returned through memory), else the slow path.
#[inline(always)]
fn alloc_on(env: &Env, heap_id: usize, size: usize, align: usize) -> Result<usize> {
    if let (Some(class), Some(_)) = (class_of(size, align), env.heap(heap_id)) {
        let hit = CACHE.try_with(|cache| {
            let mut cache = cache.borrow_mut();
            let addr = cache.bins[heap_id][class].pop()?;
            let c = cache.counters();
            bump(&c.allocs[heap_id], 1);
            bump(&c.alloc_bytes[heap_id], class_size(class) as u64);
            Some(addr)
        });
        if let Ok(Some(addr)) = hit {
            return Ok(addr);
        }
    }
    alloc_slow(env, heap_id, size, align)
}

/// Refill, large buffers, first use of a heap, exiting threads.
#[cold]
#[inline(never)]
fn alloc_slow(env: &Env, heap_id: usize, size: usize, align: usize) -> Result<usize> {
    let heap = match env.heap(heap_id) {
        Some(h) => h,
        None => env.heap_or_create(heap_id, 0)?,
    };
    let Some(class) = class_of(size, align) else {
        let (addr, len) = heap.alloc_large(size, align).map_err(|e| match e {
            EnvError::NoMemory(m) => {
                EnvError::NoMemory(format!("allocating {}: {m}", human_size(size)))
            }
            other => other,
        })?;
        count(heap, heap_id, len, true);
        return Ok(addr);
    };
    let fast = CACHE.try_with(|cache| {
        let mut cache = cache.borrow_mut();
        let bin = &mut cache.bins[heap_id][class];
        let addr = match bin.pop() {
            Some(a) => a,
            None => refill(heap, class, bin)?,
        };
        let c = cache.counters();
        bump(&c.allocs[heap_id], 1);
        bump(&c.alloc_bytes[heap_id], class_size(class) as u64);
        Ok(addr)
    });
    match fast {
        Ok(r) => r,
        // The thread is exiting and its cache is gone: go to the depot.
        Err(_) => {
            let mut scratch = Vec::new();
            let addr = refill(heap, class, &mut scratch)?;
            lock_depot(heap, class).append(&mut scratch);
            count(heap, heap_id, class_size(class), true);
            Ok(addr)
        }
    }
}

/// Counts an allocation or free outside the thread cache's counters.
fn count(heap: &Heap, heap_id: usize, bytes: usize, alloc: bool) {
    let done = CACHE.try_with(|cache| {
        let mut cache = cache.borrow_mut();
        let c = cache.counters();
        if alloc {
            bump(&c.allocs[heap_id], 1);
            bump(&c.alloc_bytes[heap_id], bytes as u64);
        } else {
            bump(&c.frees[heap_id], 1);
            bump(&c.free_bytes[heap_id], bytes as u64);
        }
    });
    if done.is_err() {
        let r = &heap.retired;
        if alloc {
            r.allocs.fetch_add(1, Ordering::Relaxed);
            r.alloc_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        } else {
            r.frees.fetch_add(1, Ordering::Relaxed);
            r.free_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }
}

/// What a pointer handed out by this allocator is.
#[derive(Debug, Clone, Copy)]
enum Block {
    Small { heap_id: usize, class: usize },
    Large { heap_id: usize, len: usize },
}

impl Block {
    fn usable(self) -> usize {
        match self {
            Block::Small { class, .. } => class_size(class),
            Block::Large { len, .. } => len,
        }
    }
    fn heap_id(self) -> usize {
        match self {
            Block::Small { heap_id, .. } | Block::Large { heap_id, .. } => heap_id,
        }
    }
}

/// Finds what `addr` is; `None` for pointers we did not hand out. Kept
/// small and inlined: it is on every free.
#[inline(always)]
fn lookup_block(env: &Env, addr: usize) -> Option<Block> {
    let (heap_id, heap) = env.heap_of(addr)?;
    let tag = heap.unit_tag(addr);
    if tag & TAG_SLAB != 0 {
        let class = (tag & 0xff) as usize;
        if addr % class_size(class) == 0 {
            return Some(Block::Small { heap_id, class });
        }
    } else if let Some(len) = Heap::large_len(tag) {
        if addr % UNIT == 0 {
            return Some(Block::Large { heap_id, len });
        }
    }
    None
}

/// Like [`lookup_block`], with an error that says what is wrong.
#[inline(always)]
fn block_of(env: &Env, addr: usize) -> Result<Block> {
    match lookup_block(env, addr) {
        Some(b) => Ok(b),
        None => Err(not_ours(env, addr)),
    }
}

#[cold]
#[inline(never)]
fn not_ours(env: &Env, addr: usize) -> EnvError {
    if env.heap_of(addr).is_none() {
        EnvError::InvalidArgument(format!(
            "{addr:#x} was not allocated by dma_malloc: it is outside every DMA heap"
        ))
    } else {
        EnvError::InvalidArgument(format!(
            "{addr:#x} is not the start of a DMA buffer (free, or inside one)"
        ))
    }
}

#[inline]
fn free_block(env: &Env, addr: usize, block: Block) {
    let heap = env.heap(block.heap_id()).expect("block_of found it");
    match block {
        Block::Large { heap_id, len } => {
            heap.free_large(addr, len);
            count(heap, heap_id, len, false);
        }
        Block::Small { heap_id, class } => {
            let cached = CACHE.try_with(|cache| {
                let mut cache = cache.borrow_mut();
                let bin = &mut cache.bins[heap_id][class];
                let cap = cache_cap(class);
                if bin.len() >= cap {
                    let at = bin.len() - cap / 2;
                    lock_depot(heap, class).extend(bin.drain(at..));
                }
                bin.push(addr);
                let c = cache.counters();
                bump(&c.frees[heap_id], 1);
                bump(&c.free_bytes[heap_id], class_size(class) as u64);
            });
            if cached.is_err() {
                lock_depot(heap, class).push(addr);
                count(heap, heap_id, class_size(class), false);
            }
        }
    }
}

fn fill_iova(addr: usize, iova: Option<&mut u64>) {
    if let Some(out) = iova {
        *out = crate::vtophys::vtophys(addr, None);
    }
}

/// Allocates `size` bytes of DMA memory aligned to `align` (a power of two;
/// 0 means 64) on `socket` ([`SOCKET_ID_ANY`] for the main socket), storing
/// its IOVA in `iova` when given (SPDK: `spdk_dma_malloc_socket`). Contents
/// are unspecified.
#[inline]
pub fn dma_malloc(
    size: usize,
    align: usize,
    socket: i32,
    iova: Option<&mut u64>,
) -> Result<NonNull<u8>> {
    let align = validate(size, align)?;
    let env = env_or_err()?;
    let addr = alloc_on(env, env.socket_to_heap(socket), size, align)?;
    fill_iova(addr, iova);
    Ok(NonNull::new(addr as *mut u8).expect("heap addresses are non-null"))
}

/// Like [`dma_malloc`], with the first `size` bytes zeroed (SPDK:
/// `spdk_dma_zmalloc_socket`).
pub fn dma_zmalloc(
    size: usize,
    align: usize,
    socket: i32,
    iova: Option<&mut u64>,
) -> Result<NonNull<u8>> {
    let p = dma_malloc(size, align, socket, iova)?;
    // SAFETY: `p` points to at least `size` writable bytes that this call
    // owns; nothing else can reference a block that was just handed out.
    unsafe { p.as_ptr().write_bytes(0, size) };
    Ok(p)
}

/// Resizes a buffer from [`dma_malloc`], keeping its contents up to the
/// smaller size (SPDK: `spdk_dma_realloc`). `ptr` = `None` allocates. The
/// buffer stays in place when it already has room and alignment; otherwise
/// it moves to the same socket and the old pointer is freed.
///
/// # Safety
/// `ptr` must be a live buffer from this allocator that no one else uses
/// during the call; after a move, the old pointer must not be used.
pub unsafe fn dma_realloc(
    ptr: Option<NonNull<u8>>,
    size: usize,
    align: usize,
    iova: Option<&mut u64>,
) -> Result<NonNull<u8>> {
    let Some(ptr) = ptr else {
        return dma_malloc(size, align, SOCKET_ID_ANY, iova);
    };
    let align = validate(size, align)?;
    let env = env_or_err()?;
    let addr = ptr.as_ptr() as usize;
    let block = block_of(env, addr)?;
    if size <= block.usable() && addr % align == 0 {
        fill_iova(addr, iova);
        return Ok(ptr);
    }
    let new = alloc_on(env, block.heap_id(), size, align)?;
    // SAFETY: both blocks are live, distinct, and at least `min(...)` long;
    // the caller owns `ptr` exclusively.
    unsafe {
        std::ptr::copy_nonoverlapping(ptr.as_ptr(), new as *mut u8, size.min(block.usable()))
    };
    free_block(env, addr, block);
    fill_iova(new, iova);
    Ok(NonNull::new(new as *mut u8).expect("heap addresses are non-null"))
}

/// Frees a buffer from [`dma_malloc`] (SPDK: `spdk_dma_free`). A pointer
/// this allocator did not hand out is an error and is left alone.
///
/// # Safety
/// `ptr` must not be used after this call, by the program or by a device.
/// Freeing the same buffer twice is undefined.
pub unsafe fn dma_free(ptr: NonNull<u8>) -> Result<()> {
    let env = env_or_err()?;
    let addr = ptr.as_ptr() as usize;
    let block = block_of(env, addr)?;
    free_block(env, addr, block);
    Ok(())
}

/// The bytes usable at `ptr`, a buffer from [`dma_malloc`] (at least the
/// size asked for).
pub fn dma_usable_size(ptr: NonNull<u8>) -> Result<usize> {
    let env = env_or_err()?;
    Ok(block_of(env, ptr.as_ptr() as usize)?.usable())
}

/// The NUMA socket whose heap holds `ptr`.
pub fn dma_socket_of(ptr: NonNull<u8>) -> Result<u32> {
    let env = env_or_err()?;
    let heap_id = block_of(env, ptr.as_ptr() as usize)?.heap_id();
    Ok(heap_id as u32)
}

/// One socket heap's memory statistics.
#[derive(Debug, Clone, Serialize)]
pub struct HeapStats {
    /// The socket (NUMA node).
    pub socket: u32,
    /// Page size of the backing memory.
    pub page_size: usize,
    /// Bytes of pinned memory the heap holds.
    pub total_bytes: usize,
    /// Bytes not in any live buffer (in free pages, depots or thread caches).
    pub free_bytes: usize,
    /// The largest contiguous free range of pages.
    pub largest_free_block: usize,
    /// Live buffers.
    pub alloc_count: u64,
    /// Buffers handed out since start.
    pub total_allocs: u64,
    /// Buffers freed since start.
    pub total_frees: u64,
    /// The most this heap may hold.
    pub limit_bytes: usize,
    /// Mapped segments.
    pub segments: usize,
}

/// Memory statistics of every socket heap.
#[derive(Debug, Clone, Serialize)]
pub struct MemStats {
    /// IOVA mode in use.
    pub iova_mode: crate::IovaMode,
    /// One entry per heap, by socket.
    pub heaps: Vec<HeapStats>,
}

/// The env's memory statistics (SPDK: `env_dpdk_get_mem_stats`).
pub fn mem_stats() -> Result<MemStats> {
    let env = env_or_err()?;
    let threads = LIVE_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let heaps = env
        .heaps()
        .map(|(id, heap)| {
            let sum = |pick: &dyn Fn(&ThreadCounters) -> &AtomicU64, retired: &AtomicU64| {
                threads
                    .iter()
                    // SAFETY: pointers in LIVE_THREADS are live while the
                    // lock is held (see `CountersPtr`).
                    .map(|t| pick(unsafe { &*t.0 }).load(Ordering::Relaxed))
                    .sum::<u64>()
                    + retired.load(Ordering::Relaxed)
            };
            let r = &heap.retired;
            let allocs = sum(&|t| &t.allocs[id], &r.allocs);
            let frees = sum(&|t| &t.frees[id], &r.frees);
            let live_bytes = sum(&|t| &t.alloc_bytes[id], &r.alloc_bytes)
                .saturating_sub(sum(&|t| &t.free_bytes[id], &r.free_bytes));
            let (total, _free_pages, largest) = heap.page_stats();
            HeapStats {
                socket: id as u32,
                page_size: heap.config.backing.page_size(),
                total_bytes: total,
                free_bytes: total.saturating_sub(live_bytes as usize),
                largest_free_block: largest,
                alloc_count: allocs.saturating_sub(frees),
                total_allocs: allocs,
                total_frees: frees,
                limit_bytes: heap.config.limit,
                segments: heap.segments().len(),
            }
        })
        .collect();
    Ok(MemStats {
        iova_mode: env.iova_mode(),
        heaps,
    })
}

/// The committed segments of every heap: (socket, address, length).
pub fn heap_segments() -> Result<Vec<(u32, usize, usize)>> {
    let env = env_or_err()?;
    Ok(env
        .heaps()
        .flat_map(|(id, h)| {
            h.segments()
                .into_iter()
                .map(move |(a, l)| (id as u32, a, l))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_sizes_and_alignments() {
        assert_eq!(class_of(1, 1), Some(0));
        assert_eq!(class_of(64, 1), Some(0));
        assert_eq!(class_of(65, 1), Some(1));
        assert_eq!(class_of(4096, 1), Some(6));
        assert_eq!(class_size(6), 4096);
        assert_eq!(class_of(100, 4096), Some(6));
        assert_eq!(class_of(1 << 20, 1), Some(NUM_CLASSES - 1));
        assert_eq!(class_of((1 << 20) + 1, 1), None);
        assert_eq!(class_of(64, 2 << 20), None);
        for c in 0..NUM_CLASSES {
            assert!(slab_len(c) % class_size(c) == 0);
            assert!(slab_len(c) % UNIT == 0);
            assert!(cache_cap(c) >= 4);
        }
    }
}
