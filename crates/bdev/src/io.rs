//! `BdevIo`: one I/O, pooled, and the per-thread pool it comes from.
//!
//! Every I/O is an `IoInner` in a `Box` taken from the calling thread's free
//! list and returned there when it completes, so steady state allocates
//! nothing: the buffers vector keeps its capacity and the completion
//! callback is stored inline ([`rspdk_util::Callback`]). The pool has a
//! process-wide limit on the number of I/O objects that may exist
//! (`bdev_io_pool_size`); when a thread's free list is empty and the limit is
//! reached, submission fails with [`crate::BdevError::NoMemory`] and the
//! caller parks itself with `BdevIoChannel::queue_io_wait`, to be resumed
//! when an I/O completes on that thread.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rspdk_env::DmaBuf;
use rspdk_util::Callback;

use crate::channel::ChannelInner;
use crate::types::{IoStatus, IoType, IoVec};

/// SPDK's default `bdev_io_pool_size`.
pub const DEFAULT_IO_POOL_SIZE: usize = 65535;
/// SPDK's default `bdev_io_cache_size` (accepted and reported; threads
/// keep every object they have used, see `FreeList`).
pub const DEFAULT_IO_CACHE_SIZE: usize = 256;

static POOL_LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_IO_POOL_SIZE);
static POOL_CREATED: AtomicUsize = AtomicUsize::new(0);
static CACHE_SIZE: AtomicUsize = AtomicUsize::new(DEFAULT_IO_CACHE_SIZE);

/// Sets the I/O pool limits (SPDK: `bdev_set_options`); applies to objects
/// created from now on.
pub fn set_io_pool_options(pool_size: usize, cache_size: usize) {
    POOL_LIMIT.store(pool_size.max(1), Ordering::Relaxed);
    CACHE_SIZE.store(cache_size, Ordering::Relaxed);
}

/// The current (pool size, cache size).
pub fn io_pool_options() -> (usize, usize) {
    (
        POOL_LIMIT.load(Ordering::Relaxed),
        CACHE_SIZE.load(Ordering::Relaxed),
    )
}

/// What to do when an I/O finishes.
pub(crate) enum Completion {
    None,
    /// The submitter's callback.
    User(Callback<IoStatus>),
    /// A child of a split I/O: tell the parent.
    Child(std::ptr::NonNull<IoInner>),
}

/// A bounce buffer standing in for unaligned user buffers.
pub(crate) struct Bounce {
    pub buf: DmaBuf,
    /// The user's buffers, to copy read data back to.
    pub user_iovs: Vec<IoVec>,
}

/// The state of one I/O.
pub(crate) struct IoInner {
    pub ch: Option<Rc<ChannelInner>>,
    pub io_type: IoType,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    pub iovs: Vec<IoVec>,
    /// Second buffer set: the compare data of compare-and-write.
    pub cmp_iovs: Vec<IoVec>,
    pub completion: Completion,
    pub submit_ns: u64,
    pub bounce: Option<Bounce>,
    /// For a split parent: children still outstanding, and the first error.
    pub children_left: u32,
    pub child_status: IoStatus,
    /// Scratch for the module that executes the I/O (e.g. a deadline).
    pub module_ctx: [u64; 4],
    /// The status of a completion deferred to the channel's poller. It
    /// travels in the I/O so that the deferred queue holds one pointer per
    /// entry (a pointer-and-status pair cost a store-forwarding stall per
    /// I/O).
    pub deferred_status: IoStatus,
}

impl IoInner {
    fn new() -> IoInner {
        IoInner {
            ch: None,
            io_type: IoType::Read,
            offset_blocks: 0,
            num_blocks: 0,
            iovs: Vec::with_capacity(4),
            cmp_iovs: Vec::new(),
            completion: Completion::None,
            submit_ns: 0,
            bounce: None,
            children_left: 0,
            child_status: IoStatus::Success,
            module_ctx: [0; 4],
            deferred_status: IoStatus::Success,
        }
    }
}

/// A channel's free I/O objects. Boxed so that an I/O moves as one pointer
/// and a split parent keeps its address while its children run. Objects
/// stay with the channel that used them: in steady state it holds as many
/// as it keeps in flight, and none is allocated or freed again; they leave
/// the pool count when the channel is destroyed.
#[allow(clippy::vec_box)]
#[derive(Default)]
pub(crate) struct FreeList(RefCell<Vec<Box<IoInner>>>);

impl FreeList {
    /// Takes an object, or `None` when the pool is spent.
    #[inline]
    pub(crate) fn get(&self) -> Option<Box<IoInner>> {
        if let Some(io) = self.0.borrow_mut().pop() {
            return Some(io);
        }
        let limit = POOL_LIMIT.load(Ordering::Relaxed);
        let made = POOL_CREATED.fetch_add(1, Ordering::Relaxed);
        if made >= limit {
            POOL_CREATED.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Box::new(IoInner::new()))
    }

    /// True if `get` would succeed now.
    #[inline]
    pub(crate) fn available(&self) -> bool {
        !self.0.borrow().is_empty()
            || POOL_CREATED.load(Ordering::Relaxed) < POOL_LIMIT.load(Ordering::Relaxed)
    }

    /// Returns an object, cleared.
    #[inline]
    pub(crate) fn put(&self, mut io: Box<IoInner>) {
        io.ch = None;
        io.iovs.clear();
        io.cmp_iovs.clear();
        io.completion = Completion::None;
        io.bounce = None;
        self.0.borrow_mut().push(io);
    }
}

impl Drop for FreeList {
    fn drop(&mut self) {
        POOL_CREATED.fetch_sub(self.0.get_mut().len(), Ordering::Relaxed);
    }
}

/// I/O objects in existence now (for tests and stats).
pub fn io_objects_created() -> usize {
    POOL_CREATED.load(Ordering::Relaxed)
}

/// An I/O as a module sees it: what to do, and [`BdevIo::complete`] to
/// finish it. It must be completed exactly once, on the thread it was
/// submitted on (the module's channel thread).
pub struct BdevIo {
    pub(crate) inner: Box<IoInner>,
}

impl std::fmt::Debug for BdevIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BdevIo")
            .field("type", &self.inner.io_type)
            .field("offset_blocks", &self.inner.offset_blocks)
            .field("num_blocks", &self.inner.num_blocks)
            .finish()
    }
}

impl BdevIo {
    /// The I/O type.
    #[inline]
    pub fn io_type(&self) -> IoType {
        self.inner.io_type
    }

    /// First block.
    #[inline]
    pub fn offset_blocks(&self) -> u64 {
        self.inner.offset_blocks
    }

    /// Block count.
    #[inline]
    pub fn num_blocks(&self) -> u64 {
        self.inner.num_blocks
    }

    /// The data buffers (for compare-and-write: the write data).
    #[inline]
    pub fn iovs(&self) -> &[IoVec] {
        &self.inner.iovs
    }

    /// The compare buffers of a compare-and-write.
    #[inline]
    pub fn compare_iovs(&self) -> &[IoVec] {
        &self.inner.cmp_iovs
    }

    /// Block size of the bdev the I/O is for.
    #[inline]
    pub fn block_size(&self) -> u32 {
        self.inner
            .ch
            .as_ref()
            .map_or(512, |c| c.bdev.props.block_size)
    }

    /// Scratch words a module may use while it holds the I/O.
    #[inline]
    pub fn module_ctx(&mut self) -> &mut [u64; 4] {
        &mut self.inner.module_ctx
    }

    /// Finishes the I/O. If called while the module's `submit` is still
    /// running, the completion is deferred to the channel's poller so that
    /// the submitter's callback never runs inside its own submit call.
    #[inline]
    pub fn complete(self, status: IoStatus) {
        crate::channel::complete_io(self.inner, status);
    }
}
