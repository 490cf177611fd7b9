//! Per-thread bdev channels and the I/O path: submit, split, bounce, QoS,
//! complete.
//!
//! Every thread that uses a bdev gets one channel (an rspdk io_device
//! channel), holding the backend's channel, the thread's statistics for the
//! bdev, and three queues served by one poller: completions deferred out of
//! `submit`, I/O waiting for QoS budget, and callers waiting for an I/O
//! object (`queue_io_wait`). Nothing here locks or allocates per I/O in
//! steady state; completions run on the submitting thread, never inside the
//! submit call.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::{Arc, Weak};

use rspdk_env::DmaBuf;
use rspdk_thread::{
    io_device_register, now_ns, poller_register, IoChannel, IoDevice, IoDeviceKey, Poller,
    PollerStatus,
};
use rspdk_util::Callback;

use crate::bdev::{BackendChannel, BdevDesc, BdevShared};
use crate::io::{BdevIo, Bounce, Completion, FreeList, IoInner};
use crate::stats::IoStats;
use crate::types::{iovs_len, BdevError, IoStatus, IoType, IoVec};

mod stats;
pub(crate) use stats::*;

/// The io_device context of a bdev channel (shared by handles on its thread).
pub(crate) struct ChannelCtx {
    pub inner: Rc<ChannelInner>,
}

/// One thread's channel state for one bdev.
pub(crate) struct ChannelInner {
    pub bdev: Arc<BdevShared>,
    backend: RefCell<Box<dyn BackendChannel>>,
    /// Nesting depth of backend `submit` calls on this channel.
    in_submit: Cell<u32>,
    deferred: RefCell<VecDeque<Box<IoInner>>>,
    qos_queue: RefCell<VecDeque<Box<IoInner>>>,
    io_wait: RefCell<VecDeque<Callback<()>>>,
    pub stats: RefCell<IoStats>,
    poller: RefCell<Option<Poller>>,
    /// The poller runs only while one of the queues holds something, so an
    /// idle channel lets its thread sleep in interrupt mode.
    poller_active: Cell<bool>,
    /// This channel's I/O objects.
    free: FreeList,
    /// The time of the completion being delivered, while its callback runs.
    completion_now: Cell<Option<u64>>,
    /// I/Os submitted on this channel and not yet completed to their
    /// submitter (queue depth sampling).
    pub outstanding: Cell<u64>,
    /// This channel's latency histogram, when enabled.
    pub hist: RefCell<Option<crate::histogram::Histogram>>,
    /// The bdev's `hist_gen` that `hist` was made for.
    hist_gen: Cell<u64>,
    /// The I/O types `hist` counts (bit `IoType as usize`).
    hist_types: Cell<u32>,
}

/// The lightweight thread's id, for the channel tracepoints (SPDK's `tid`).
fn current_thread_id() -> u64 {
    rspdk_thread::get_thread().map_or(0, |t| t.id())
}

pub(crate) fn register_io_device(
    key: IoDeviceKey,
    shared: &Arc<BdevShared>,
) -> Result<IoDevice<ChannelCtx>, BdevError> {
    let weak: Weak<BdevShared> = Arc::downgrade(shared);
    let name = shared.props.name.clone();
    io_device_register(
        key,
        &format!("bdev_{name}"),
        move || {
            let bdev = weak.upgrade().ok_or(libc::ENODEV)?;
            crate::trace::register();
            if rspdk_trace::enabled(crate::trace::IOCH_CREATE) {
                rspdk_trace::record(crate::trace::IOCH_CREATE, 0, &[current_thread_id()]);
            }
            let backend = bdev.backend.create_channel().map_err(|e| {
                tracing::error!(bdev = %bdev.props.name, error = %e, "backend channel creation failed");
                e.errno()
            })?;
            let inner = Rc::new(ChannelInner {
                bdev,
                backend: RefCell::new(backend),
                in_submit: Cell::new(0),
                deferred: RefCell::new(VecDeque::with_capacity(256)),
                qos_queue: RefCell::new(VecDeque::new()),
                io_wait: RefCell::new(VecDeque::new()),
                stats: RefCell::new(IoStats::default()),
                poller: RefCell::new(None),
                poller_active: Cell::new(false),
                free: FreeList::default(),
                completion_now: Cell::new(None),
                outstanding: Cell::new(0),
                hist: RefCell::new(None),
                hist_gen: Cell::new(0),
                hist_types: Cell::new(0),
            });
            inner.refresh_histogram();
            let weak_ch = Rc::downgrade(&inner);
            let poller = poller_register("bdev_channel", 0, move |_| match weak_ch.upgrade() {
                Some(ch) => ch.poll(),
                None => PollerStatus::Idle,
            })
            .map_err(|_| libc::EINVAL)?;
            poller.pause();
            *inner.poller.borrow_mut() = Some(poller);
            Ok(ChannelCtx { inner })
        },
        |ctx: &ChannelCtx| {
            if rspdk_trace::enabled(crate::trace::IOCH_DESTROY) {
                rspdk_trace::record(crate::trace::IOCH_DESTROY, 0, &[current_thread_id()]);
            }
            if let Some(p) = ctx.inner.poller.borrow_mut().take() {
                p.unregister();
            }
            let stats = ctx.inner.stats.borrow().clone();
            ctx.inner
                .bdev
                .retired_stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(&stats);
            ctx.inner.retire_histogram();
        },
    )
    .map_err(|e| BdevError::Channel {
        bdev: shared.props.name.clone(),
        detail: e.to_string(),
    })
}

/// A thread's handle to submit I/O to one bdev through one descriptor
/// (SPDK: the `spdk_io_channel` from `spdk_bdev_get_io_channel`). Not Send:
/// it belongs to the thread that got it.
pub struct BdevIoChannel {
    ch: IoChannel<ChannelCtx>,
}

impl std::fmt::Debug for BdevIoChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BdevIoChannel({})", self.ch.inner.bdev.props.name)
    }
}

pub(crate) fn get_channel(desc: &BdevDesc) -> Result<BdevIoChannel, BdevError> {
    let dev = desc
        .bdev
        .0
        .io_device
        .get()
        .ok_or_else(|| BdevError::Removing(desc.bdev.name().to_string()))?;
    let ch = dev.get_channel().map_err(|e| BdevError::Channel {
        bdev: desc.bdev.name().to_string(),
        detail: e.to_string(),
    })?;
    Ok(BdevIoChannel { ch })
}

impl ChannelInner {
    /// Takes up the bdev's current histogram settings: a new, empty
    /// histogram (or none). Runs at channel creation and when settings
    /// change, never per I/O.
    pub(crate) fn refresh_histogram(&self) {
        let cfg = crate::bdev::lock(&self.bdev.hist);
        // Read under the lock: settings and generation change together.
        let gen = self
            .bdev
            .hist_gen
            .load(std::sync::atomic::Ordering::Acquire);
        *self.hist.borrow_mut() = cfg.make();
        self.hist_types.set(cfg.type_mask());
        self.hist_gen.set(gen);
    }

    /// Counts a latency in the histogram, if one is enabled for `t`: one
    /// atomic load and a branch when none is.
    #[inline]
    fn tally(&self, t: IoType, latency_ns: u64) {
        let gen = self
            .bdev
            .hist_gen
            .load(std::sync::atomic::Ordering::Relaxed);
        if gen != self.hist_gen.get() {
            self.refresh_histogram();
        }
        if self.hist_types.get() & (1 << t.index()) != 0 {
            if let Some(h) = self.hist.borrow_mut().as_mut() {
                h.tally(latency_ns);
            }
        }
    }

    /// Keeps a closing channel's histogram counts in the bdev's.
    fn retire_histogram(&self) {
        let Some(h) = self.hist.borrow_mut().take() else {
            return;
        };
        let mut cfg = crate::bdev::lock(&self.bdev.hist);
        if self.hist_gen.get()
            != self
                .bdev
                .hist_gen
                .load(std::sync::atomic::Ordering::Acquire)
        {
            return; // Settings changed since: these counts are void.
        }
        match cfg.retired.as_mut() {
            Some(r) => {
                r.merge(&h);
            }
            None => cfg.retired = Some(h),
        }
    }

    /// The channel poller: deferred completions, QoS-queued I/O, io_wait.
    fn poll(self: &Rc<Self>) -> PollerStatus {
        let mut did = 0;
        // Only what was queued before this poll: callbacks that submit again
        // (and complete inline) wait for the next poll, so one busy channel
        // cannot starve the rest of the thread.
        let queued = self.deferred.borrow().len();
        for _ in 0..queued {
            let next = self.deferred.borrow_mut().pop_front();
            let Some(io) = next else { break };
            let status = io.deferred_status;
            finish(io, status);
            did += 1;
        }
        if !self.qos_queue.borrow().is_empty() {
            loop {
                let ready = {
                    let q = self.qos_queue.borrow();
                    match q.front() {
                        Some(io) => self.bdev.qos.try_take(io.io_type, io_bytes(io)),
                        None => false,
                    }
                };
                if !ready {
                    break;
                }
                let io = self
                    .qos_queue
                    .borrow_mut()
                    .pop_front()
                    .expect("front checked");
                self.dispatch(io);
                did += 1;
            }
        }
        did += self.resume_waiters();
        if self.deferred.borrow().is_empty()
            && self.qos_queue.borrow().is_empty()
            && self.io_wait.borrow().is_empty()
        {
            if let Some(p) = self.poller.borrow().as_ref() {
                p.pause();
            }
            self.poller_active.set(false);
        }
        if did > 0 {
            PollerStatus::Busy
        } else {
            PollerStatus::Idle
        }
    }

    /// Makes sure the poller runs: something was queued for it.
    #[inline]
    fn wake(&self) {
        if !self.poller_active.get() {
            if let Some(p) = self.poller.borrow().as_ref() {
                p.resume();
            }
            self.poller_active.set(true);
        }
    }

    /// Runs io_wait callbacks while I/O objects are available.
    fn resume_waiters(&self) -> usize {
        let mut n = 0;
        loop {
            if self.io_wait.borrow().is_empty() || !self.free.available() {
                return n;
            }
            let Some(cb) = self.io_wait.borrow_mut().pop_front() else {
                return n;
            };
            cb.call(());
            n += 1;
        }
    }

    /// Hands `io` to the backend, deferring any completion it makes inline.
    #[inline]
    fn dispatch(self: &Rc<Self>, io: Box<IoInner>) {
        self.in_submit.set(self.in_submit.get() + 1);
        self.backend.borrow_mut().submit(BdevIo { inner: io });
        self.in_submit.set(self.in_submit.get() - 1);
    }
}

fn io_bytes(io: &IoInner) -> u64 {
    let bs = io.ch.as_ref().map_or(512, |c| c.bdev.props.block_size) as u64;
    if io.io_type.has_data() {
        io.num_blocks * bs
    } else {
        0
    }
}

impl ChannelInner {
    /// The time for I/O accounting: inside one of this channel's completion
    /// callbacks, the completion's own timestamp (so a callback that
    /// submits the next I/O reads the clock once for both), otherwise
    /// [`now_ns`]. Reading the TSC costs tens of cycles on a virtual
    /// machine, a visible share of an I/O.
    #[inline]
    fn io_now(&self) -> u64 {
        self.completion_now.get().unwrap_or_else(now_ns)
    }

    /// Runs a completion callback with its timestamp published.
    #[inline]
    fn run_completion(&self, cb: Callback<IoStatus>, status: IoStatus, now: u64) {
        let prev = self.completion_now.replace(Some(now));
        cb.call(status);
        self.completion_now.set(prev);
    }
}

/// Called by [`BdevIo::complete`].
#[inline]
pub(crate) fn complete_io(mut io: Box<IoInner>, status: IoStatus) {
    if let Some(ch) = io.ch.as_ref() {
        if ch.in_submit.get() > 0 {
            // Borrow the channel through a raw pointer: `io` (which holds the
            // Rc) moves into the queue in the same statement.
            let ch: *const ChannelInner = &**ch;
            // SAFETY: `io.ch` keeps the channel alive, and the queue it moves
            // into belongs to that same channel, so the channel outlives
            // this access; all of it happens on the channel's thread.
            unsafe {
                io.deferred_status = status;
                (*ch).deferred.borrow_mut().push_back(io);
                (*ch).wake();
            }
            return;
        }
    }
    finish(io, status);
}

/// Accounts a finished I/O and runs its completion.
fn finish(mut io: Box<IoInner>, status: IoStatus) {
    // The I/O's reference to its channel moves to us.
    let Some(ch) = io.ch.take() else {
        debug_assert!(false, "an I/O without a channel finished");
        return;
    };
    let now = now_ns();
    let bytes = if io.io_type.has_data() {
        io.num_blocks * ch.bdev.props.block_size as u64
    } else {
        0
    };
    let latency = now.saturating_sub(io.submit_ns);
    if matches!(io.completion, Completion::User(_)) {
        rspdk_trace::record_tsc(
            crate::trace::IO_DONE,
            now,
            &*io as *const IoInner as u64,
            &[u64::from(!status.is_ok()), ch.outstanding.get()],
        );
    }
    ch.stats
        .borrow_mut()
        .record(io.io_type, bytes, latency, status.is_ok());
    ch.tally(io.io_type, latency);
    if let Some(b) = io.bounce.take() {
        if status.is_ok() && io.io_type == IoType::Read {
            scatter(&b.buf, &b.user_iovs);
        }
    }
    match std::mem::replace(&mut io.completion, Completion::None) {
        Completion::User(cb) => {
            ch.free.put(io);
            ch.outstanding.set(ch.outstanding.get() - 1);
            ch.run_completion(cb, status, now);
        }
        Completion::Child(parent_ptr) => {
            ch.free.put(io);
            // SAFETY: the parent was leaked by `submit_split` and is freed
            // only below, by its last child; completions of one channel run
            // on one thread, so this is the only access now.
            let parent = unsafe { &mut *parent_ptr.as_ptr() };
            if !status.is_ok() && parent.child_status.is_ok() {
                parent.child_status = status;
            }
            parent.children_left -= 1;
            if parent.children_left == 0 {
                // SAFETY: the last child: reclaim the Box leaked in `submit_split`.
                let mut parent = unsafe { Box::from_raw(parent_ptr.as_ptr()) };
                let st = parent.child_status;
                // A split I/O's bounce buffer belongs to the parent: copy
                // read data back once every child is done.
                if let Some(b) = parent.bounce.take() {
                    if st.is_ok() && parent.io_type == IoType::Read {
                        scatter(&b.buf, &b.user_iovs);
                    }
                }
                let completion = std::mem::replace(&mut parent.completion, Completion::None);
                ch.free.put(parent);
                if let Completion::User(cb) = completion {
                    ch.outstanding.set(ch.outstanding.get() - 1);
                    ch.run_completion(cb, st, now);
                }
            }
        }
        Completion::None => ch.free.put(io),
    }
    ch.resume_waiters();
}

/// Copies a bounce buffer back into the user's buffers.
fn scatter(buf: &DmaBuf, iovs: &[IoVec]) {
    let mut off = 0;
    for v in iovs {
        let n = v.len.min(buf.len() - off);
        // SAFETY: the submitter guaranteed `v` stays valid and unshared until
        // completion, which is now; `buf` is ours and at least off+n long.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr().add(off), v.base, n) };
        off += n;
    }
}

/// Copies the user's buffers into a bounce buffer.
fn gather(iovs: &[IoVec], buf: &mut DmaBuf) {
    let mut off = 0;
    for v in iovs {
        // SAFETY: the submitter guarantees `v` is valid for reading until
        // completion; the bounce buffer is ours and sized to the total.
        unsafe { std::ptr::copy_nonoverlapping(v.base, buf.as_mut_ptr().add(off), v.len) };
        off += v.len;
    }
}

impl BdevIoChannel {
    fn inner(&self) -> &Rc<ChannelInner> {
        &self.ch.inner
    }

    /// Parks `cb` until an I/O object is free on this thread (SPDK:
    /// `spdk_bdev_queue_io_wait`); it runs from a completion or the
    /// channel's poller, and should retry its submission.
    pub fn queue_io_wait(&self, cb: impl FnOnce() + 'static) {
        self.inner()
            .io_wait
            .borrow_mut()
            .push_back(Callback::new(move |()| cb()));
        self.inner().wake();
    }

    /// The time in ns for measuring this channel's I/O: inside one of its
    /// completion callbacks, the completion's timestamp (no second clock
    /// read when the callback submits again), else the clock.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.inner().io_now()
    }

    /// This channel's statistics.
    pub fn stats(&self) -> IoStats {
        self.inner().stats.borrow().clone()
    }

    /// Submits an I/O: the common path of every public submit call.
    ///
    /// # Safety
    /// The buffers in `iovs` and `cmp_iovs` must stay valid, and not be
    /// accessed by anyone else, until `cb` runs.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn submit(
        &self,
        desc: &BdevDesc,
        io_type: IoType,
        iovs: &[IoVec],
        cmp_iovs: &[IoVec],
        offset_blocks: u64,
        num_blocks: u64,
        cb: impl FnOnce(IoStatus) + 'static,
    ) -> Result<(), BdevError> {
        let ch = self.inner();
        let bdev = &ch.bdev;
        debug_assert!(Arc::ptr_eq(bdev, &desc.bdev.0), "channel of another bdev");
        if bdev.removing.load(std::sync::atomic::Ordering::Acquire) {
            return Err(BdevError::Removing(bdev.props.name.clone()));
        }
        if io_type.writes() && !desc.writable() {
            return Err(BdevError::ReadOnly(bdev.props.name.clone()));
        }
        if bdev.supported & (1 << io_type.index()) == 0 {
            return Err(BdevError::Unsupported {
                bdev: bdev.props.name.clone(),
                io_type,
            });
        }
        let total = bdev.num_blocks.load(std::sync::atomic::Ordering::Relaxed);
        let in_range = offset_blocks
            .checked_add(num_blocks)
            .is_some_and(|end| end <= total);
        if !in_range || (num_blocks == 0 && io_type != IoType::Flush && io_type != IoType::Reset) {
            return Err(BdevError::OutOfRange {
                bdev: bdev.props.name.clone(),
                offset: offset_blocks,
                count: num_blocks,
                num_blocks: total,
            });
        }
        let bs = bdev.props.block_size as u64;
        if io_type.has_data() {
            let want = num_blocks * bs;
            if iovs_len(iovs) as u64 != want
                || (io_type == IoType::CompareAndWrite && iovs_len(cmp_iovs) as u64 != want)
            {
                return Err(BdevError::InvalidParam(format!(
                    "buffers hold {} bytes, {num_blocks} blocks of {bs} need {want}",
                    iovs_len(iovs)
                )));
            }
        }
        let Some(mut io) = ch.free.get() else {
            return Err(BdevError::NoMemory);
        };
        ch.outstanding.set(ch.outstanding.get() + 1);
        io.ch = Some(ch.clone());
        io.io_type = io_type;
        io.offset_blocks = offset_blocks;
        io.num_blocks = num_blocks;
        io.iovs.extend_from_slice(iovs);
        io.cmp_iovs.extend_from_slice(cmp_iovs);
        io.completion = Completion::User(Callback::new(cb));
        io.submit_ns = ch.io_now();
        io.children_left = 0;
        io.child_status = IoStatus::Success;
        let align = bdev.props.required_alignment as usize;
        // Bounce buffers the backend cannot take: unaligned ones, and, for
        // a backend that hands them to a device, any that is not DMA
        // memory (SPDK's rule: every buffer a device touches is DMA
        // memory).
        let misaligned = |v: &IoVec| align > 1 && v.base as usize % align != 0;
        let not_dma = |v: &IoVec| {
            bdev.props.requires_dma && !rspdk_env::is_dma_memory(v.base as usize, v.len)
        };
        if io_type.has_data() && iovs.iter().any(|v| misaligned(v) || not_dma(v)) {
            let mut buf = match DmaBuf::uninit_aligned(iovs_len(iovs), align.max(4096), -1) {
                Ok(b) => b,
                Err(e) => {
                    ch.free.put(io);
                    ch.outstanding.set(ch.outstanding.get() - 1);
                    return Err(e.into());
                }
            };
            if io_type != IoType::Read {
                gather(iovs, &mut buf);
            }
            let user_iovs = std::mem::take(&mut io.iovs);
            io.iovs.push(IoVec::new(buf.as_mut_ptr(), buf.len()));
            io.bounce = Some(Bounce { buf, user_iovs });
        }
        rspdk_trace::record_tsc(
            crate::trace::IO_START,
            io.submit_ns,
            &*io as *const IoInner as u64,
            &[
                io_type.index() as u64,
                offset_blocks,
                num_blocks,
                ch.outstanding.get(),
            ],
        );
        if needs_split(&bdev.props, offset_blocks, num_blocks) && io_type.has_data() {
            return self.submit_split(io);
        }
        self.start(io);
        Ok(())
    }

    /// QoS admission, then the backend.
    #[inline]
    fn start(&self, io: Box<IoInner>) {
        let ch = self.inner();
        if ch.bdev.qos.enabled()
            && (!ch.qos_queue.borrow().is_empty()
                || !ch.bdev.qos.try_take(io.io_type, io_bytes(&io)))
        {
            ch.qos_queue.borrow_mut().push_back(io);
            ch.wake();
            return;
        }
        ch.dispatch(io);
    }

    /// Splits `parent` at the optimal I/O boundary and max transfer size and
    /// submits the children; the parent completes when all have.
    fn submit_split(&self, mut parent: Box<IoInner>) -> Result<(), BdevError> {
        let ch = self.inner().clone();
        let props = &ch.bdev.props;
        let bs = props.block_size as usize;
        // Plan the pieces first so a shortage of I/O objects fails cleanly.
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        let mut off = parent.offset_blocks;
        let end = parent.offset_blocks + parent.num_blocks;
        while off < end {
            let mut len = end - off;
            if props.optimal_io_boundary > 0 {
                len = len.min(props.optimal_io_boundary - off % props.optimal_io_boundary);
            }
            if props.max_transfer_blocks > 0 {
                len = len.min(props.max_transfer_blocks);
            }
            pieces.push((off, len));
            off += len;
        }
        let mut children = Vec::with_capacity(pieces.len());
        for _ in &pieces {
            match ch.free.get() {
                Some(c) => children.push(c),
                None => {
                    children.into_iter().for_each(|c| ch.free.put(c));
                    ch.free.put(parent);
                    ch.outstanding.set(ch.outstanding.get() - 1);
                    return Err(BdevError::NoMemory);
                }
            }
        }
        parent.children_left = pieces.len() as u32;
        let parent_iovs = std::mem::take(&mut parent.iovs);
        let io_type = parent.io_type;
        // Leaked until the last child finishes (see `finish`).
        let parent_ptr = std::ptr::NonNull::from(Box::leak(parent));
        let mut byte = (0usize, 0usize); // (iov index, offset in it)
        for (child, (off, len)) in children.iter_mut().zip(pieces.iter()) {
            child.ch = Some(ch.clone());
            child.io_type = io_type;
            child.offset_blocks = *off;
            child.num_blocks = *len;
            child.submit_ns = ch.io_now();
            let mut want = *len as usize * bs;
            while want > 0 {
                let v = parent_iovs[byte.0];
                let take = (v.len - byte.1).min(want);
                // SAFETY: stays inside the parent's iov `v`.
                child
                    .iovs
                    .push(IoVec::new(unsafe { v.base.add(byte.1) }, take));
                want -= take;
                byte.1 += take;
                if byte.1 == v.len {
                    byte = (byte.0 + 1, 0);
                }
            }
            child.completion = Completion::Child(parent_ptr);
        }
        for child in children {
            self.start(child);
        }
        Ok(())
    }

    /// Passes `io`, an I/O a virtual bdev received, on to this channel's
    /// bdev at `offset_blocks` (same type, buffers and block count; the two
    /// bdevs must have the same block size). `done` gets the I/O back with
    /// the status the base completed it with, to finish it (or retry). On a
    /// submission error `done` is dropped unrun and the I/O is handed back
    /// untouched, e.g. with [`BdevError::NoMemory`]: park with
    /// [`BdevIoChannel::queue_io_wait`] and forward it again.
    ///
    /// The closure stored per I/O is `done` plus one pointer: keep `done`
    /// within 40 bytes to stay allocation-free.
    pub fn forward(
        &self,
        desc: &BdevDesc,
        io: BdevIo,
        offset_blocks: u64,
        done: impl FnOnce(BdevIo, IoStatus) + 'static,
    ) -> Result<(), (BdevError, BdevIo)> {
        let raw = NonNull::from(Box::leak(io.inner));
        let cb = move |status: IoStatus| {
            // SAFETY: `raw` was leaked above and is rebuilt exactly once:
            // here, when the base completes, or below if submission fails
            // (then this closure is dropped unrun).
            let inner = unsafe { Box::from_raw(raw.as_ptr()) };
            done(BdevIo { inner }, status)
        };
        // SAFETY: `raw` is live (leaked above) and nothing mutates it while
        // `submit` copies its buffer list; the buffers themselves stay valid
        // until the upper I/O completes, which is after `cb` runs.
        let r = unsafe {
            let inner = raw.as_ref();
            self.submit(
                desc,
                inner.io_type,
                &inner.iovs,
                &inner.cmp_iovs,
                offset_blocks,
                inner.num_blocks,
                cb,
            )
        };
        r.map_err(|e| {
            // SAFETY: submission failed, so `cb` was dropped without running
            // and the leaked box is ours again.
            let inner = unsafe { Box::from_raw(raw.as_ptr()) };
            (e, BdevIo { inner })
        })
    }

    /// Reads `num_blocks` blocks at `offset_blocks` into `iovs` (SPDK:
    /// `spdk_bdev_readv_blocks`).
    ///
    /// # Safety
    /// As [`BdevIoChannel::submit`].
    pub unsafe fn readv(
        &self,
        desc: &BdevDesc,
        iovs: &[IoVec],
        offset_blocks: u64,
        num_blocks: u64,
        cb: impl FnOnce(IoStatus) + 'static,
    ) -> Result<(), BdevError> {
        // SAFETY: forwarded contract.
        unsafe { self.submit(desc, IoType::Read, iovs, &[], offset_blocks, num_blocks, cb) }
    }

    /// Writes `iovs` to `num_blocks` blocks at `offset_blocks` (SPDK:
    /// `spdk_bdev_writev_blocks`).
    ///
    /// # Safety
    /// As [`BdevIoChannel::submit`].
    pub unsafe fn writev(
        &self,
        desc: &BdevDesc,
        iovs: &[IoVec],
        offset_blocks: u64,
        num_blocks: u64,
        cb: impl FnOnce(IoStatus) + 'static,
    ) -> Result<(), BdevError> {
        // SAFETY: forwarded contract.
        unsafe {
            self.submit(
                desc,
                IoType::Write,
                iovs,
                &[],
                offset_blocks,
                num_blocks,
                cb,
            )
        }
    }

    /// Reads into an owned buffer, handed back with the status.
    pub fn read(
        &self,
        desc: &BdevDesc,
        buf: DmaBuf,
        offset_blocks: u64,
        cb: impl FnOnce(IoStatus, DmaBuf) + 'static,
    ) -> Result<(), (BdevError, DmaBuf)> {
        self.owned(desc, IoType::Read, buf, offset_blocks, cb)
    }

    /// Writes an owned buffer, handed back with the status.
    pub fn write(
        &self,
        desc: &BdevDesc,
        buf: DmaBuf,
        offset_blocks: u64,
        cb: impl FnOnce(IoStatus, DmaBuf) + 'static,
    ) -> Result<(), (BdevError, DmaBuf)> {
        self.owned(desc, IoType::Write, buf, offset_blocks, cb)
    }

    /// Compares an owned buffer with the blocks.
    pub fn compare(
        &self,
        desc: &BdevDesc,
        buf: DmaBuf,
        offset_blocks: u64,
        cb: impl FnOnce(IoStatus, DmaBuf) + 'static,
    ) -> Result<(), (BdevError, DmaBuf)> {
        self.owned(desc, IoType::Compare, buf, offset_blocks, cb)
    }

    fn owned(
        &self,
        desc: &BdevDesc,
        io_type: IoType,
        buf: DmaBuf,
        offset_blocks: u64,
        cb: impl FnOnce(IoStatus, DmaBuf) + 'static,
    ) -> Result<(), (BdevError, DmaBuf)> {
        let bs = desc.bdev().block_size() as usize;
        let len = buf.len();
        if len % bs != 0 {
            let e = BdevError::InvalidParam(format!(
                "buffer of {len} bytes is not a whole number of {bs}-byte blocks"
            ));
            return Err((e, buf));
        }
        let (ptr, blen) = buf.into_raw();
        let iov = IoVec::new(ptr.as_ptr(), blen);
        let done = move |status: IoStatus| {
            // SAFETY: the buffer was taken apart just above and nothing else
            // holds it; the I/O has finished with it.
            cb(status, unsafe { DmaBuf::from_raw(ptr, blen) })
        };
        // SAFETY: the buffer is owned by this call until `done` rebuilds it.
        match unsafe {
            self.submit(
                desc,
                io_type,
                &[iov],
                &[],
                offset_blocks,
                (len / bs) as u64,
                done,
            )
        } {
            Ok(()) => Ok(()),
            // SAFETY: on error the closure was dropped unrun, and with it
            // nothing that frees the buffer (raw parts only): it is ours again.
            Err(e) => Err((e, unsafe { DmaBuf::from_raw(ptr, blen) })),
        }
    }

    /// Submits an I/O without data buffers: unmap, write zeroes, flush, reset.
    pub fn submit_nodata(
        &self,
        desc: &BdevDesc,
        io_type: IoType,
        offset_blocks: u64,
        num_blocks: u64,
        cb: impl FnOnce(IoStatus) + 'static,
    ) -> Result<(), BdevError> {
        if io_type.has_data() {
            return Err(BdevError::InvalidParam(format!(
                "{io_type:?} needs data buffers"
            )));
        }
        // SAFETY: no buffers are involved.
        unsafe { self.submit(desc, io_type, &[], &[], offset_blocks, num_blocks, cb) }
    }
}

fn needs_split(p: &crate::types::BdevProps, off: u64, n: u64) -> bool {
    (p.optimal_io_boundary > 0
        && off / p.optimal_io_boundary != (off + n - 1) / p.optimal_io_boundary)
        || (p.max_transfer_blocks > 0 && n > p.max_transfer_blocks)
}
