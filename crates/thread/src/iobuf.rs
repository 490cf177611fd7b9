//! iobuf: the data buffers that targets and bdev modules draw from (SPDK:
//! `spdk_iobuf_*`, RPCs `iobuf_set_options` and `iobuf_get_stats`).
//!
//! Two shared pools of DMA memory, small and large buffers (SPDK's
//! defaults: 8,192 buffers of 8 KiB and 1,024 of 132 KiB), with a cache
//! per thread in front so that the steady state touches no shared cache
//! line and takes no lock. Every buffer is DMA memory from the env: pinned,
//! with a known device address, so any bdev module (a PCIe NVMe bdev too)
//! can hand it to a device. The pools are made on first use and grow in
//! steps up to their configured counts; when one is exhausted a caller can
//! wait ([`get_or_wait`]) instead of failing: it is handed the next buffer
//! of that size freed on its thread, or retried by a poller of its thread.
//!
//! Each user registers a module name ([`register_module`]); its gets are
//! counted by where they were served from (thread cache, shared pool, or
//! after waiting), as `iobuf_get_stats` reports them.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rspdk_env::mempool::Mempool;
use serde::{Deserialize, Serialize};

/// Pool sizes (SPDK's `spdk_iobuf_opts`, `iobuf_set_options` params).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IobufOpts {
    /// Small buffers in the shared pool.
    #[serde(default = "d_small_count")]
    pub small_pool_count: u64,
    /// Large buffers in the shared pool.
    #[serde(default = "d_large_count")]
    pub large_pool_count: u64,
    /// Bytes per small buffer.
    #[serde(default = "d_small_size")]
    pub small_bufsize: u64,
    /// Bytes per large buffer (the largest buffer iobuf hands out).
    #[serde(default = "d_large_size")]
    pub large_bufsize: u64,
}

fn d_small_count() -> u64 {
    8192
}
fn d_large_count() -> u64 {
    1024
}
fn d_small_size() -> u64 {
    8192
}
fn d_large_size() -> u64 {
    135_168
}

impl Default for IobufOpts {
    fn default() -> Self {
        IobufOpts {
            small_pool_count: d_small_count(),
            large_pool_count: d_large_count(),
            small_bufsize: d_small_size(),
            large_bufsize: d_large_size(),
        }
    }
}

/// What went wrong with iobuf.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IobufError {
    /// Options that cannot work, naming the bad one.
    #[error("iobuf: {0}")]
    InvalidOptions(String),
    /// The pools exist already; their sizes are fixed from then on.
    #[error("iobuf: the buffer pools are in use; set iobuf options before they are (start with --wait-for-rpc and call iobuf_set_options before framework_start_init)")]
    InUse,
    /// A buffer larger than the large buffer size.
    #[error("iobuf: {len} bytes is over the large buffer size {max}; raise large_bufsize with iobuf_set_options")]
    TooLarge {
        /// Bytes asked for.
        len: usize,
        /// The large buffer size.
        max: usize,
    },
    /// The env could not give the pools' memory.
    #[error("iobuf: cannot create the {which} pool: {reason}")]
    Pool {
        /// `small` or `large`.
        which: &'static str,
        /// The env's error.
        reason: String,
    },
}

impl IobufOpts {
    /// Checks the options (SPDK's limits: small buffers at least 4 KiB,
    /// large at least as big as small, some buffers of each).
    pub fn validate(&self) -> Result<(), IobufError> {
        let bad = |m: String| Err(IobufError::InvalidOptions(m));
        if self.small_pool_count < 64 {
            return bad(format!(
                "small_pool_count {} must be at least 64",
                self.small_pool_count
            ));
        }
        if self.large_pool_count < 8 {
            return bad(format!(
                "large_pool_count {} must be at least 8",
                self.large_pool_count
            ));
        }
        if self.small_bufsize < 4096 || self.small_bufsize > (1 << 20) {
            return bad(format!(
                "small_bufsize {} must be in 4096..=1048576",
                self.small_bufsize
            ));
        }
        if self.large_bufsize < self.small_bufsize || self.large_bufsize > (16 << 20) {
            return bad(format!(
                "large_bufsize {} must be at least small_bufsize ({}) and at most 16 MiB",
                self.large_bufsize, self.small_bufsize
            ));
        }
        Ok(())
    }
}

/// Which pool a buffer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Small = 0,
    Large = 1,
}

struct Pools {
    opts: IobufOpts,
    pools: [Arc<Mempool>; 2],
}

static OPTS: Mutex<Option<IobufOpts>> = Mutex::new(None);
static POOLS: OnceLock<Result<Pools, IobufError>> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets the pool sizes (SPDK: `spdk_iobuf_set_opts`); only before the
/// pools are first used.
pub fn set_options(opts: IobufOpts) -> Result<(), IobufError> {
    opts.validate()?;
    if POOLS.get().is_some() {
        return Err(IobufError::InUse);
    }
    *lock(&OPTS) = Some(opts);
    Ok(())
}

/// The pool sizes in effect (or to be used at first use).
pub fn options() -> IobufOpts {
    match POOLS.get() {
        Some(Ok(p)) => p.opts,
        _ => lock(&OPTS).unwrap_or_default(),
    }
}

fn pools() -> Result<&'static Pools, IobufError> {
    POOLS
        .get_or_init(|| {
            let opts = lock(&OPTS).unwrap_or_default();
            let make = |which: &'static str, count: u64, size: u64| {
                // Start with a slice of the pool and grow to the full count
                // as it is used: a target that moves little data does not
                // pin hundreds of MiB.
                let count = count as usize;
                let first = (count / 16).max(8).min(count);
                Mempool::with_growth(
                    &format!("iobuf_{which}"),
                    first,
                    count,
                    size as usize,
                    0,
                    -1,
                )
                .map_err(|e| IobufError::Pool {
                    which,
                    reason: e.to_string(),
                })
            };
            Ok(Pools {
                opts,
                pools: [
                    make("small", opts.small_pool_count, opts.small_bufsize)?,
                    make("large", opts.large_pool_count, opts.large_bufsize)?,
                ],
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Counters of one class for one module.
#[derive(Debug, Default)]
struct ClassStats {
    cache: AtomicU64,
    main: AtomicU64,
    retry: AtomicU64,
}

struct ModuleStats {
    name: String,
    classes: [ClassStats; 2],
}

static MODULES: Mutex<Vec<Arc<ModuleStats>>> = Mutex::new(Vec::new());

/// A registered iobuf user (SPDK: `spdk_iobuf_register_module`).
#[derive(Clone)]
pub struct IobufModule(Arc<ModuleStats>);

impl std::fmt::Debug for IobufModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("IobufModule").field(&self.0.name).finish()
    }
}

/// Registers (or finds) the module `name`, for its statistics.
pub fn register_module(name: &str) -> IobufModule {
    let mut m = lock(&MODULES);
    if let Some(x) = m.iter().find(|x| x.name == name) {
        return IobufModule(x.clone());
    }
    let x = Arc::new(ModuleStats {
        name: name.to_string(),
        classes: Default::default(),
    });
    m.push(x.clone());
    IobufModule(x)
}

/// One pool's counters of one module (`iobuf_get_stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    /// Gets served from the thread's cache.
    pub cache: u64,
    /// Gets served from the shared pool.
    pub main: u64,
    /// Gets that had to wait for a buffer.
    pub retry: u64,
}

/// A module's counters (SPDK's `iobuf_get_stats` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IobufStats {
    /// The module's name.
    pub module: String,
    /// Small buffer counters.
    pub small_pool: PoolStats,
    /// Large buffer counters.
    pub large_pool: PoolStats,
}

/// Every module's counters.
pub fn stats() -> Vec<IobufStats> {
    let get = |c: &ClassStats| PoolStats {
        cache: c.cache.load(Ordering::Relaxed),
        main: c.main.load(Ordering::Relaxed),
        retry: c.retry.load(Ordering::Relaxed),
    };
    lock(&MODULES)
        .iter()
        .map(|m| IobufStats {
            module: m.name.clone(),
            small_pool: get(&m.classes[0]),
            large_pool: get(&m.classes[1]),
        })
        .collect()
}

/// Buffers each thread keeps of each class: SPDK's defaults for
/// `iobuf_small_cache_size` and `iobuf_large_cache_size`, changed by
/// `bdev_set_options` ([`set_cache_sizes`]).
static CACHE: [AtomicUsize; 2] = [AtomicUsize::new(128), AtomicUsize::new(16)];

/// Sets how many small and large buffers each thread keeps in its cache
/// (SPDK: `bdev_set_options` `iobuf_small_cache_size`,
/// `iobuf_large_cache_size`). A thread's cache above the new size drains
/// into the shared pool as its buffers are freed.
pub fn set_cache_sizes(small: Option<usize>, large: Option<usize>) {
    if let Some(n) = small {
        CACHE[0].store(n, Ordering::Relaxed);
    }
    if let Some(n) = large {
        CACHE[1].store(n, Ordering::Relaxed);
    }
}

/// The per-thread cache sizes in effect: (small, large).
pub fn cache_sizes() -> (usize, usize) {
    (
        CACHE[0].load(Ordering::Relaxed),
        CACHE[1].load(Ordering::Relaxed),
    )
}

type Waiter = Box<dyn FnOnce(IoBuf)>;

struct Local {
    cache: [Vec<NonNull<u8>>; 2],
    /// Callers waiting for a buffer of each class, oldest first, with the
    /// length they asked for.
    waiting: [VecDeque<(usize, Waiter)>; 2],
    retry_poller: Option<crate::Poller>,
}

thread_local! {
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local {
            cache: [Vec::new(), Vec::new()],
            waiting: [VecDeque::new(), VecDeque::new()],
            retry_poller: None,
        })
    };
}

/// A data buffer from iobuf: DMA memory of at least `len` bytes, given
/// back when dropped (to a waiter of its thread first).
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
    class: Class,
}

// SAFETY: an IoBuf owns its memory exclusively (it came out of the pool and
// goes back only in Drop), so moving it to another thread is moving the
// ownership; the pools are thread-safe.
unsafe impl Send for IoBuf {}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("class", &self.class)
            .finish()
    }
}

impl IoBuf {
    /// The buffer's address (DMA memory: translatable by the env).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The buffer's address, for reading.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no byte is in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the buffer can hold (its pool's buffer size).
    pub fn capacity(&self) -> usize {
        pools().map_or(self.len, |p| match self.class {
            Class::Small => p.opts.small_bufsize as usize,
            Class::Large => p.opts.large_bufsize as usize,
        })
    }

    /// Changes the bytes in use, up to the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity(), "IoBuf::set_len past the capacity");
        self.len = len;
    }
}

impl std::ops::Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` is within the pool's buffer size (checked at get
        // and set_len); the bytes are initialised (the mempool zeroes its
        // chunks when it makes them); this IoBuf owns the buffer, and no
        // device holds it while the host can borrow it (an IoBuf is moved
        // into an I/O for as long as a device uses it).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        let c = self.class as usize;
        let ptr = self.ptr;
        // A waiter of this thread gets the buffer at once.
        let waiter = LOCAL
            .try_with(|l| l.borrow_mut().waiting[c].pop_front())
            .ok()
            .flatten();
        if let Some((len, f)) = waiter {
            f(IoBuf {
                ptr,
                len,
                class: self.class,
            });
            return;
        }
        let cached = LOCAL
            .try_with(|l| {
                let mut l = l.borrow_mut();
                if l.cache[c].len() < CACHE[c].load(Ordering::Relaxed) {
                    l.cache[c].push(ptr);
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false);
        if !cached {
            if let Ok(p) = pools() {
                // SAFETY: `ptr` came from this pool's `get` (every IoBuf
                // does) and this IoBuf, its only owner, is going away.
                unsafe { p.pools[c].put(ptr) };
            }
        }
    }
}

fn class_for(len: usize) -> Result<(Class, &'static Pools), IobufError> {
    let p = pools()?;
    if len <= p.opts.small_bufsize as usize {
        Ok((Class::Small, p))
    } else if len <= p.opts.large_bufsize as usize {
        Ok((Class::Large, p))
    } else {
        Err(IobufError::TooLarge {
            len,
            max: p.opts.large_bufsize as usize,
        })
    }
}

/// A buffer of at least `len` bytes for `module` (SPDK: `spdk_iobuf_get`
/// without a callback): `Ok(None)` when its pool is exhausted.
pub fn get(module: &IobufModule, len: usize) -> Result<Option<IoBuf>, IobufError> {
    let (class, p) = class_for(len)?;
    let c = class as usize;
    let stats = &module.0.classes[c];
    if let Some(ptr) = LOCAL
        .try_with(|l| l.borrow_mut().cache[c].pop())
        .ok()
        .flatten()
    {
        stats.cache.fetch_add(1, Ordering::Relaxed);
        return Ok(Some(IoBuf { ptr, len, class }));
    }
    match p.pools[c].get() {
        Some(ptr) => {
            stats.main.fetch_add(1, Ordering::Relaxed);
            Ok(Some(IoBuf { ptr, len, class }))
        }
        None => Ok(None),
    }
}

/// A buffer of at least `len` bytes for `module`, now or later (SPDK:
/// `spdk_iobuf_get` with a callback): `Ok(Some)` when one is free;
/// otherwise `Ok(None)` and `then` runs on this thread with the next
/// buffer of that size freed here, or found by a retry poller of this
/// thread (every 100 us) once the pool has one again.
pub fn get_or_wait(
    module: &IobufModule,
    len: usize,
    then: impl FnOnce(IoBuf) + 'static,
) -> Result<Option<IoBuf>, IobufError> {
    if let Some(b) = get(module, len)? {
        return Ok(Some(b));
    }
    let (class, _) = class_for(len)?;
    wait(module, class, len, Box::new(then));
    Ok(None)
}

/// Queues `then` for the next buffer of `class` freed on this thread (or
/// found by the retry poller).
fn wait(module: &IobufModule, class: Class, len: usize, then: Waiter) {
    let c = class as usize;
    module.0.classes[c].retry.fetch_add(1, Ordering::Relaxed);
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.waiting[c].push_back((len, then));
        if l.retry_poller.is_none() {
            l.retry_poller = crate::get_thread()
                .map(|t| t.poller_register("iobuf_retry", 100, |_| retry_waiters()));
        }
    });
}

/// Runs `then` exactly once with a buffer of at least `len` bytes for
/// `module`: now when one is free, else later on this thread as
/// [`get_or_wait`] does; or now with the error when none can ever be had (a
/// size over the large buffer size, pools that cannot be made). Unlike
/// `get_or_wait` the caller's continuation is one code path, and nothing is
/// allocated unless it has to wait.
pub fn get_then<F: FnOnce(Result<IoBuf, IobufError>) + 'static>(
    module: &IobufModule,
    len: usize,
    then: F,
) {
    let class = match class_for(len) {
        Ok((class, _)) => class,
        Err(e) => return then(Err(e)),
    };
    match get(module, len) {
        Ok(Some(b)) => then(Ok(b)),
        Ok(None) => wait(module, class, len, Box::new(move |b| then(Ok(b)))),
        Err(e) => then(Err(e)),
    }
}

/// DMA memory for one data transfer: an iobuf buffer when the size fits
/// iobuf's large buffer, else DMA memory from the env's heap (iobuf's
/// largest buffer is smaller than some transfers: SCSI allows 32 MiB, NVMe
/// a controller's MDTS).
pub enum DmaData {
    /// From iobuf.
    Pooled(IoBuf),
    /// From the env's DMA heap.
    Env(rspdk_env::DmaBuf),
}

impl DmaData {
    /// `len` bytes if they can be had without waiting: `None` when iobuf's
    /// pool for the size is exhausted. Contents: whatever the memory last
    /// held (the caller fills all of it).
    pub fn get_now(module: &IobufModule, len: usize) -> Option<Result<DmaData, String>> {
        if len <= options().large_bufsize as usize {
            match get(module, len) {
                Ok(Some(b)) => return Some(Ok(DmaData::Pooled(b))),
                Ok(None) => return None,
                // The pools cannot be made: the env's heap below.
                Err(_) => {}
            }
        }
        Some(Self::from_env(len))
    }

    /// Runs `then` exactly once with `len` bytes: now, or (iobuf exhausted)
    /// when a buffer is freed on this thread, as [`get_then`].
    pub fn get_then(
        module: &IobufModule,
        len: usize,
        then: impl FnOnce(Result<DmaData, String>) + 'static,
    ) {
        if len <= options().large_bufsize as usize {
            return get_then(module, len, move |b| match b {
                Ok(b) => then(Ok(DmaData::Pooled(b))),
                Err(_) => then(Self::from_env(len)),
            });
        }
        then(Self::from_env(len))
    }

    /// `len` bytes of DMA memory from the env's heap (4 KiB aligned).
    pub fn from_env(len: usize) -> Result<DmaData, String> {
        rspdk_env::DmaBuf::uninit_aligned(len.max(1), 4096, rspdk_env::SOCKET_ID_ANY)
            .map(|mut b| {
                b.truncate(len);
                DmaData::Env(b)
            })
            .map_err(|e| format!("no DMA memory for a {len}-byte transfer: {e}"))
    }

    /// Exposes only the first `len` bytes (no effect when not shorter).
    pub fn truncate(&mut self, len: usize) {
        match self {
            DmaData::Pooled(b) => {
                if len < b.len() {
                    b.set_len(len)
                }
            }
            DmaData::Env(b) => b.truncate(len),
        }
    }
}

impl std::ops::Deref for DmaData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            DmaData::Pooled(b) => b,
            DmaData::Env(b) => b,
        }
    }
}

impl std::ops::DerefMut for DmaData {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            DmaData::Pooled(b) => b,
            DmaData::Env(b) => b,
        }
    }
}

impl std::fmt::Debug for DmaData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from = match self {
            DmaData::Pooled(_) => "iobuf",
            DmaData::Env(_) => "env",
        };
        write!(f, "DmaData({from}, {} bytes)", self.len())
    }
}

/// The retry poller: hands buffers the shared pools have again to this
/// thread's waiters, oldest first; unregisters itself when none is left.
fn retry_waiters() -> crate::PollerStatus {
    let Ok(p) = pools() else {
        return crate::PollerStatus::Idle;
    };
    let mut busy = false;
    for c in 0..2 {
        loop {
            let has_waiter = LOCAL.with(|l| !l.borrow().waiting[c].is_empty());
            if !has_waiter {
                break;
            }
            let Some(ptr) = p.pools[c].get() else { break };
            let w = LOCAL.with(|l| l.borrow_mut().waiting[c].pop_front());
            let class = if c == 0 { Class::Small } else { Class::Large };
            match w {
                Some((len, f)) => {
                    busy = true;
                    f(IoBuf { ptr, len, class });
                }
                None => {
                    // SAFETY: just taken from this pool, never handed out.
                    unsafe { p.pools[c].put(ptr) };
                }
            }
        }
    }
    let done = LOCAL.with(|l| l.borrow().waiting.iter().all(VecDeque::is_empty));
    if done {
        if let Some(poller) = LOCAL.with(|l| l.borrow_mut().retry_poller.take()) {
            poller.unregister();
        }
    }
    if busy {
        crate::PollerStatus::Busy
    } else {
        crate::PollerStatus::Idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let o = IobufOpts {
            small_bufsize: 100,
            ..Default::default()
        };
        assert!(
            matches!(o.validate(), Err(IobufError::InvalidOptions(m)) if m.contains("small_bufsize"))
        );
        let o = IobufOpts {
            large_bufsize: 4096,
            ..Default::default()
        };
        assert!(o.validate().is_err());
        assert!(IobufOpts::default().validate().is_ok());
    }
}
