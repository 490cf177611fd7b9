//! Mempools: fixed-size DMA-able objects with per-thread caches (SPDK:
//! `spdk_mempool_*`).
//!
//! A pool's free objects live in a lock-free ring shared by all threads;
//! each OS thread also keeps a private cache of up to `cache_size` objects
//! so that get and put usually touch no shared cache line. Caches are
//! indexed by a small per-thread slot number (the first [`MAX_CACHED_THREADS`]
//! threads to use any pool get one; later threads go to the ring directly).
//! A pool created with room to grow allocates another chunk of objects when
//! it runs dry, up to its maximum.
//!
//! Objects are laid out so that none crosses a page boundary of the backing
//! memory when it fits in a page: each object is physically contiguous.

use std::cell::{Cell, UnsafeCell};
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;

use crate::alloc::{dma_free, dma_zmalloc};
use crate::error::{EnvError, Result};

/// Threads that get a private cache in each pool.
pub const MAX_CACHED_THREADS: usize = 128;

/// Default per-thread cache size (SPDK: `SPDK_MEMPOOL_DEFAULT_CACHE_SIZE`).
pub const DEFAULT_CACHE_SIZE: usize = 512;

static FREE_SLOTS: Mutex<(usize, Vec<usize>)> = Mutex::new((0, Vec::new()));

struct SlotGuard(Cell<Option<usize>>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(s) = self.0.get() {
            FREE_SLOTS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .1
                .push(s);
        }
    }
}

thread_local! {
    static SLOT: SlotGuard = const { SlotGuard(Cell::new(None)) };
}

/// This thread's cache slot, assigned on first use and recycled when the
/// thread exits. The registry's mutex orders a slot's old owner before its
/// new one.
#[inline]
fn thread_slot() -> Option<usize> {
    SLOT.try_with(|s| {
        if let Some(i) = s.0.get() {
            return Some(i);
        }
        let mut reg = FREE_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        let i = match reg.1.pop() {
            Some(i) => i,
            None if reg.0 < MAX_CACHED_THREADS => {
                reg.0 += 1;
                reg.0 - 1
            }
            None => return None,
        };
        s.0.set(Some(i));
        Some(i)
    })
    .ok()
    .flatten()
}

/// A pool of fixed-size DMA-able objects.
pub struct Mempool {
    name: String,
    elt_size: usize,
    cache_size: usize,
    socket: i32,
    max_count: usize,
    grow_by: usize,
    store: ArrayQueue<usize>,
    caches: Box<[CachePadded<UnsafeCell<Vec<usize>>>]>,
    chunks: Mutex<Vec<NonNull<u8>>>,
    total: AtomicUsize,
}

// SAFETY: `caches[i]` is only touched by the thread that holds slot `i`
// (see `thread_slot`), so no two threads access one cache at once; the
// rest is atomics, a lock-free queue and a mutex.
unsafe impl Sync for Mempool {}
// SAFETY: the pool owns its chunks; nothing in it is tied to a thread.
unsafe impl Send for Mempool {}

impl std::fmt::Debug for Mempool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mempool")
            .field("name", &self.name)
            .field("elt_size", &self.elt_size)
            .field("total", &self.total.load(Ordering::Relaxed))
            .finish()
    }
}

static POOLS: Mutex<Option<HashMap<String, Weak<Mempool>>>> = Mutex::new(None);

impl Mempool {
    /// A pool of `count` objects of `elt_size` bytes (SPDK:
    /// `spdk_mempool_create`). `cache_size` is the per-thread cache.
    pub fn new(
        name: &str,
        count: usize,
        elt_size: usize,
        cache_size: usize,
        socket: i32,
    ) -> Result<Arc<Mempool>> {
        Self::with_growth(name, count, count, elt_size, cache_size, socket)
    }

    /// A pool that starts with `count` objects and grows by `count` at a
    /// time up to `max_count` when empty.
    pub fn with_growth(
        name: &str,
        count: usize,
        max_count: usize,
        elt_size: usize,
        cache_size: usize,
        socket: i32,
    ) -> Result<Arc<Mempool>> {
        if count == 0 || elt_size == 0 || max_count < count {
            return Err(EnvError::InvalidArgument(format!(
                "mempool '{name}': count ({count}) and element size ({elt_size}) must be non-zero and max_count ({max_count}) at least count"
            )));
        }
        let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        let pools = pools.get_or_insert_with(HashMap::new);
        pools.retain(|_, w| w.strong_count() > 0);
        if pools.contains_key(name) {
            return Err(EnvError::Busy(format!("mempool '{name}' already exists")));
        }
        let pool = Arc::new(Mempool {
            name: name.to_string(),
            elt_size: (elt_size + 63) & !63,
            cache_size: cache_size.min(max_count),
            socket,
            max_count,
            grow_by: count,
            store: ArrayQueue::new(max_count),
            caches: (0..MAX_CACHED_THREADS)
                .map(|_| CachePadded::new(UnsafeCell::new(Vec::new())))
                .collect(),
            chunks: Mutex::new(Vec::new()),
            total: AtomicUsize::new(0),
        });
        pool.grow()?;
        pools.insert(name.to_string(), Arc::downgrade(&pool));
        Ok(pool)
    }

    /// Finds a pool by name (SPDK: `spdk_mempool_lookup`).
    pub fn lookup(name: &str) -> Option<Arc<Mempool>> {
        POOLS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()?
            .get(name)?
            .upgrade()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes per object (the requested size rounded up to 64).
    pub fn elt_size(&self) -> usize {
        self.elt_size
    }

    /// Objects the pool holds in all (handed out or not).
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Adds `grow_by` objects. Returns false at the maximum.
    #[cold]
    fn grow(&self) -> Result<bool> {
        let mut chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        let total = self.total.load(Ordering::Relaxed);
        if total >= self.max_count {
            return Ok(false);
        }
        let n = self.grow_by.min(self.max_count - total);
        let page = crate::env::env()
            .map(|e| e.backing().page_size())
            .unwrap_or(crate::sys::PAGE_4K);
        let per_page = if self.elt_size <= page {
            page / self.elt_size
        } else {
            usize::MAX
        };
        let pages = if per_page == usize::MAX {
            0
        } else {
            n.div_ceil(per_page)
        };
        let len = if per_page == usize::MAX {
            n * self.elt_size
        } else {
            pages * page
        };
        let align = if per_page == usize::MAX {
            64
        } else {
            page.min(1 << 20)
        };
        // With align < page, a chunk may start mid-page: lay out by the
        // absolute page boundaries, taking one page more to be sure.
        let len = if per_page != usize::MAX && align < page {
            len + page
        } else {
            len
        };
        // Zeroed: every object's bytes are initialised before first use,
        // so users may read them through references (iobuf does).
        let chunk = dma_zmalloc(len, align, self.socket, None)?;
        let base = chunk.as_ptr() as usize;
        let mut made = 0;
        let mut at = base;
        while made < n && at + self.elt_size <= base + len {
            if per_page != usize::MAX && at / page != (at + self.elt_size - 1) / page {
                at = (at / page + 1) * page;
                continue;
            }
            if self.store.push(at).is_err() {
                break;
            }
            made += 1;
            at += self.elt_size;
        }
        chunks.push(chunk);
        self.total.fetch_add(made, Ordering::Relaxed);
        Ok(true)
    }

    /// Takes an object (SPDK: `spdk_mempool_get`); `None` when the pool is
    /// empty and at its maximum (or cannot grow).
    #[inline]
    pub fn get(&self) -> Option<NonNull<u8>> {
        if let Some(slot) = thread_slot() {
            // SAFETY: this thread holds `slot`; see the Sync impl.
            let cache = unsafe { &mut *self.caches[slot].get() };
            if let Some(p) = cache.pop() {
                return NonNull::new(p as *mut u8);
            }
            let want = self.cache_size / 2;
            while cache.len() < want {
                match self.store.pop() {
                    Some(p) => cache.push(p),
                    None => break,
                }
            }
            if let Some(p) = cache.pop() {
                return NonNull::new(p as *mut u8);
            }
        }
        loop {
            if let Some(p) = self.store.pop() {
                return NonNull::new(p as *mut u8);
            }
            match self.grow() {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => {
                    tracing::warn!(pool = %self.name, error = %e, "mempool could not grow");
                    return None;
                }
            }
        }
    }

    /// Takes `out.len()` objects, all or none (SPDK: `spdk_mempool_get_bulk`).
    pub fn get_bulk(&self, out: &mut [Option<NonNull<u8>>]) -> bool {
        for i in 0..out.len() {
            match self.get() {
                Some(p) => out[i] = Some(p),
                None => {
                    for slot in out[..i].iter_mut() {
                        if let Some(p) = slot.take() {
                            // SAFETY: taken from this pool just above.
                            unsafe { self.put(p) };
                        }
                    }
                    return false;
                }
            }
        }
        true
    }

    /// Returns an object (SPDK: `spdk_mempool_put`).
    ///
    /// # Safety
    /// `obj` must come from this pool's `get` and not be used afterwards.
    #[inline]
    pub unsafe fn put(&self, obj: NonNull<u8>) {
        let p = obj.as_ptr() as usize;
        if let Some(slot) = thread_slot() {
            // SAFETY: this thread holds `slot`; see the Sync impl.
            let cache = unsafe { &mut *self.caches[slot].get() };
            if cache.len() < self.cache_size {
                cache.push(p);
                return;
            }
            let keep = self.cache_size / 2;
            while cache.len() > keep {
                let q = cache.pop().expect("len > keep");
                // The store has room for every object the pool ever made.
                let _ = self.store.push(q);
            }
            cache.push(p);
            return;
        }
        let _ = self.store.push(p);
    }

    /// Objects available to `get` from the shared ring (SPDK:
    /// `spdk_mempool_count`; thread caches are not counted).
    pub fn count(&self) -> usize {
        self.store.len()
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        for chunk in self
            .chunks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            // SAFETY: the pool is gone, so none of its objects may be used.
            if let Err(e) = unsafe { dma_free(chunk) } {
                tracing::error!(error = %e, "mempool chunk could not be freed");
            }
        }
    }
}
