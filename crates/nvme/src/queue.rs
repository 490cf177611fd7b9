//! The queue engine behind the admin queue and every I/O queue pair: a
//! submission and a completion ring in DMA memory, command trackers (one per
//! command identifier, each with a page for its PRP list or SGL), a bounded
//! queue of requests waiting for a free slot, batched doorbells and
//! completion polling.
//!
//! Everything is preallocated when the queue is created: submitting and
//! completing takes no lock, makes no system call and allocates nothing.
//! DMA memory (rings, lists) is touched only through volatile accesses on
//! raw pointers.

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rspdk_env::mmio::Bar;

use crate::error::{NvmeError, Result};
use crate::prp::{self, PrpError};
use crate::spec::{Cqe, SglDescriptor, Sqe};
use crate::status::Status;

/// A block of DMA memory the driver owns, reached through raw pointers.
#[derive(Debug)]
pub(crate) struct DmaRegion {
    ptr: NonNull<u8>,
    len: usize,
    iova: u64,
    /// Never freed: the device may still use it.
    leaked: bool,
}

// SAFETY: the region is plain DMA memory owned by this value; it is only
// accessed through volatile raw-pointer operations by its owner.
unsafe impl Send for DmaRegion {}

impl DmaRegion {
    /// Zeroed DMA memory aligned to 4 KiB, IOVA-contiguous.
    pub(crate) fn new(len: usize) -> Result<DmaRegion> {
        let len = len.max(4096).next_multiple_of(4096);
        let mut iova = 0u64;
        let ptr = rspdk_env::dma_zmalloc(len, 4096, rspdk_env::SOCKET_ID_ANY, Some(&mut iova))
            .map_err(|e| NvmeError::env(format!("allocating {len} bytes of queue memory"), e))?;
        let mut run = len as u64;
        let check = rspdk_env::vtophys(ptr.as_ptr() as usize, Some(&mut run));
        if check == rspdk_env::VTOPHYS_ERROR || (run as usize) < len {
            // SAFETY: just allocated by dma_zmalloc and not shared.
            let _ = unsafe { rspdk_env::dma_free(ptr) };
            return Err(NvmeError::InvalidArgument(format!(
                "queue memory of {len} bytes is not IOVA-contiguous (hugepages needed)"
            )));
        }
        Ok(DmaRegion {
            ptr,
            len,
            iova,
            leaked: false,
        })
    }
    pub(crate) fn iova(&self) -> u64 {
        self.iova
    }
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    /// Zeroes the region (volatile: the device may read it).
    pub(crate) fn zero(&self) {
        for i in 0..self.len / 8 {
            // SAFETY: in bounds, 8-byte aligned (4 KiB-aligned base).
            unsafe { std::ptr::write_volatile((self.ptr.as_ptr() as *mut u64).add(i), 0) };
        }
    }
    /// Copies `out.len()` bytes from offset 0 (volatile reads).
    pub(crate) fn read_into(&self, out: &mut [u8]) {
        let n = out.len().min(self.len);
        for (i, b) in out[..n].iter_mut().enumerate() {
            // SAFETY: i < len; a byte read needs no alignment.
            *b = unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(i)) };
        }
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: allocated by dma_zmalloc in `new`; the owner guarantees the
        // device no longer uses it (its queue is deleted or the controller
        // disabled) before dropping.
        if let Err(e) = unsafe { rspdk_env::dma_free(self.ptr) } {
            tracing::error!(error = %e, "freeing queue memory");
        }
    }
}

/// Callbacks describing a scattered payload, like SPDK's
/// `spdk_nvme_req_reset_sgl_cb` / `spdk_nvme_req_next_sge_cb`: `reset(arg,
/// offset)` rewinds to byte `offset`, `next(arg)` returns the next element's
/// address and length.
#[derive(Clone, Copy, Debug)]
pub struct SgeFns {
    /// Rewind to a byte offset.
    pub reset: fn(arg: usize, offset: u32),
    /// Next element: (virtual address, length).
    pub next: fn(arg: usize) -> (usize, u32),
    /// The caller's state.
    pub arg: usize,
}

/// A command's data.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Payload {
    None,
    Contig {
        vaddr: usize,
        len: usize,
    },
    Sgl {
        fns: SgeFns,
        len: usize,
    },
    /// A Dataset Management range written into the tracker's list page.
    DsmRange(crate::spec::DsmRange),
}

/// A command waiting to be submitted or in flight.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    pub cmd: Sqe,
    pub payload: Payload,
    pub ctx: u64,
}

/// What the completion handler is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The caller's context given at submission.
    pub ctx: u64,
    /// The status, with the spec's name through [`Status::name`].
    pub status: Status,
    /// Command-specific result (CQE DW0).
    pub cdw0: u32,
}

struct Tracker {
    req: Option<Request>,
    submitted: Option<Instant>,
    timed_out: bool,
}

/// Bytes per tracker for its PRP list / SGL: one 4 KiB page.
const LIST_BYTES: usize = 4096;

/// One submission/completion queue pair.
pub(crate) struct Queue {
    pub qid: u16,
    entries: u16,
    sq: DmaRegion,
    cq: DmaRegion,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
    sq_db: usize,
    cq_db: usize,
    bar: Arc<Bar>,
    trackers: Vec<Tracker>,
    free: Vec<u16>,
    lists: DmaRegion,
    pending: VecDeque<Request>,
    pending_cap: usize,
    doorbell_due: bool,
    page: usize,
    sgl: bool,
    /// Stamp each command with its submission time (timeouts are on).
    pub stamp_on_submit: bool,
    /// Outstanding commands the device holds (head moves with completions).
    pub outstanding: usize,
}

impl Queue {
    /// Allocates a queue of `entries` slots with room for `max_pending`
    /// waiting requests.
    pub(crate) fn new(
        qid: u16,
        entries: u16,
        max_pending: usize,
        bar: Arc<Bar>,
        dstrd: u8,
        page: usize,
        sgl: bool,
    ) -> Result<Queue> {
        let sq = DmaRegion::new(entries as usize * 64)?;
        let cq = DmaRegion::new(entries as usize * 16)?;
        // One fewer tracker than slots: a full SQ has tail one behind head.
        let ntrk = entries as usize - 1;
        let lists = DmaRegion::new(ntrk * LIST_BYTES)?;
        let stride = 4usize << dstrd;
        Ok(Queue {
            qid,
            entries,
            sq,
            cq,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            sq_db: crate::spec::reg::DOORBELL_BASE + (2 * qid as usize) * stride,
            cq_db: crate::spec::reg::DOORBELL_BASE + (2 * qid as usize + 1) * stride,
            bar,
            trackers: (0..ntrk)
                .map(|_| Tracker {
                    req: None,
                    submitted: None,
                    timed_out: false,
                })
                .collect(),
            free: (0..ntrk as u16).rev().collect(),
            lists,
            pending: VecDeque::with_capacity(max_pending),
            pending_cap: max_pending,
            doorbell_due: false,
            page,
            sgl,
            stamp_on_submit: false,
            outstanding: 0,
        })
    }

    pub(crate) fn sq_iova(&self) -> u64 {
        self.sq.iova()
    }
    pub(crate) fn cq_iova(&self) -> u64 {
        self.cq.iova()
    }
    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }
    /// Requests waiting for a slot.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Forgets all device state: empties the rings (the device's queues are
    /// gone: controller disabled or queue deleted) and returns the requests
    /// that were in flight, in CID order, through `aborted`.
    pub(crate) fn reset_rings(&mut self, aborted: &mut dyn FnMut(Request)) {
        for (cid, t) in self.trackers.iter_mut().enumerate() {
            if let Some(r) = t.req.take() {
                t.submitted = None;
                t.timed_out = false;
                self.free.push(cid as u16);
                aborted(r);
            }
        }
        self.sq.zero();
        self.cq.zero();
        self.sq_tail = 0;
        self.cq_head = 0;
        self.phase = true;
        self.outstanding = 0;
        self.doorbell_due = false;
    }

    /// Gives back the requests in flight without touching the rings (the
    /// device may still be writing them until it is disabled).
    pub(crate) fn abort_in_flight(&mut self, aborted: &mut dyn FnMut(Request)) {
        for (cid, t) in self.trackers.iter_mut().enumerate() {
            if let Some(r) = t.req.take() {
                t.submitted = None;
                t.timed_out = false;
                self.free.push(cid as u16);
                self.outstanding -= 1;
                aborted(r);
            }
        }
    }

    /// Queues a request without submitting it (while the controller resets).
    pub(crate) fn submit_queued(&mut self, req: Request) -> Result<()> {
        if self.pending.len() >= self.pending_cap {
            return Err(NvmeError::NoRequests {
                qid: self.qid,
                limit: self.pending_cap + self.trackers.len(),
            });
        }
        self.pending.push_back(req);
        Ok(())
    }

    /// Keeps the queue's DMA memory forever (its device queues could not be
    /// deleted).
    pub(crate) fn leak_memory(&mut self) {
        self.sq.leaked = true;
        self.cq.leaked = true;
        self.lists.leaked = true;
    }

    /// Takes every waiting request.
    pub(crate) fn drain_pending(&mut self, out: &mut dyn FnMut(Request)) {
        while let Some(r) = self.pending.pop_front() {
            out(r);
        }
    }

    /// Submits `req` now if a slot is free, else queues it (never lost);
    /// fails only when the waiting queue is full too.
    pub(crate) fn submit(&mut self, req: Request) -> Result<()> {
        if self.free.is_empty() || !self.pending.is_empty() {
            if self.pending.len() >= self.pending_cap {
                return Err(NvmeError::NoRequests {
                    qid: self.qid,
                    limit: self.pending_cap + self.trackers.len(),
                });
            }
            self.pending.push_back(req);
            return Ok(());
        }
        self.place(req)
    }

    /// Writes a request into the SQ. A slot must be free.
    fn place(&mut self, req: Request) -> Result<()> {
        let cid = *self.free.last().expect("caller checked");
        let mut cmd = req.cmd;
        cmd.set_cid(cid);
        self.describe(cid, &req.payload, &mut cmd)?;
        self.free.pop();
        let t = &mut self.trackers[cid as usize];
        t.req = Some(req);
        t.submitted = self.stamp_on_submit.then(Instant::now);
        t.timed_out = false;
        let slot = self.sq.as_ptr() as *mut Sqe;
        // SAFETY: sq_tail < entries, the ring holds `entries` SQEs, and the
        // slot is free (the device consumed it: trackers < entries).
        unsafe { std::ptr::write_volatile(slot.add(self.sq_tail as usize), cmd) };
        self.sq_tail = (self.sq_tail + 1) % self.entries;
        self.outstanding += 1;
        self.doorbell_due = true;
        Ok(())
    }

    fn describe(&mut self, cid: u16, payload: &Payload, cmd: &mut Sqe) -> Result<()> {
        let list_off = cid as usize * LIST_BYTES;
        // SAFETY: the tracker's list page lies inside `lists`.
        let list_ptr = unsafe { self.lists.as_ptr().add(list_off) };
        let list_iova = self.lists.iova() + list_off as u64;
        let (mut segs_contig, mut segs_sgl);
        let (segs, want): (&mut dyn Iterator<Item = (usize, usize)>, usize) = match *payload {
            Payload::None => return Ok(()),
            Payload::DsmRange(r) => {
                let p = list_ptr as *mut crate::spec::DsmRange;
                // SAFETY: 16 bytes at the start of this tracker's 4 KiB page.
                unsafe { std::ptr::write_volatile(p, r) };
                cmd.set_psdt(0);
                cmd.set_prp1(list_iova);
                cmd.set_prp2(0);
                return Ok(());
            }
            Payload::Contig { vaddr, len } => {
                segs_contig = std::iter::once((vaddr, len));
                (&mut segs_contig, len)
            }
            Payload::Sgl { fns, len } => {
                (fns.reset)(fns.arg, 0);
                segs_sgl = std::iter::from_fn(move || {
                    let (a, l) = (fns.next)(fns.arg);
                    (l > 0).then_some((a, l as usize))
                });
                (&mut segs_sgl, len)
            }
        };
        let mut translate = |va: usize, len: &mut u64| rspdk_env::vtophys(va, Some(len));
        let use_sgl = self.sgl && matches!(payload, Payload::Sgl { .. }) && self.qid != 0;
        let dp = if use_sgl {
            prp::build_sgl(
                segs,
                &mut translate,
                want,
                list_iova,
                LIST_BYTES / 16,
                &mut |i, d: SglDescriptor| {
                    // SAFETY: i < LIST_BYTES / 16: inside this tracker's page.
                    unsafe { std::ptr::write_volatile((list_ptr as *mut SglDescriptor).add(i), d) }
                },
            )
        } else {
            prp::build_prps(
                segs,
                &mut translate,
                want,
                self.page,
                list_iova,
                LIST_BYTES / 8,
                &mut |i, e| {
                    // SAFETY: i < LIST_BYTES / 8: inside this tracker's page.
                    unsafe { std::ptr::write_volatile((list_ptr as *mut u64).add(i), e) }
                },
            )
        }
        .map_err(|e: PrpError| NvmeError::InvalidArgument(e.to_string()))?;
        cmd.set_psdt(if use_sgl { 1 } else { 0 });
        cmd.set_prp1(dp.dptr1);
        cmd.set_prp2(dp.dptr2);
        Ok(())
    }

    /// Rings the SQ doorbell if commands were placed since the last ring.
    #[inline]
    pub(crate) fn ring(&mut self) {
        if self.doorbell_due {
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            self.bar.write32(self.sq_db, self.sq_tail as u32);
            self.doorbell_due = false;
        }
    }

    /// Reaps up to `max` completions (0 = all available), calling
    /// `done(request, completion)` for each, then moves waiting requests
    /// into freed slots and rings both doorbells once.
    pub(crate) fn poll(&mut self, max: u32, done: &mut dyn FnMut(Request, Completion)) -> u32 {
        self.ring();
        let mut n = 0u32;
        let cq = self.cq.as_ptr() as *const Cqe;
        loop {
            if max != 0 && n >= max {
                break;
            }
            // SAFETY: cq_head < entries; the ring holds `entries` CQEs.
            let cqe = unsafe { std::ptr::read_volatile(cq.add(self.cq_head as usize)) };
            if cqe.phase() != self.phase {
                break;
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            self.cq_head += 1;
            if self.cq_head == self.entries {
                self.cq_head = 0;
                self.phase = !self.phase;
            }
            n += 1;
            let cid = cqe.cid() as usize;
            let Some(req) = self.trackers.get_mut(cid).and_then(|t| t.req.take()) else {
                tracing::warn!(
                    qid = self.qid,
                    cid,
                    "completion for a command not in flight; ignored"
                );
                continue;
            };
            self.trackers[cid].submitted = None;
            self.free.push(cid as u16);
            self.outstanding -= 1;
            let c = Completion {
                ctx: req.ctx,
                status: cqe.status(),
                cdw0: cqe.cdw0(),
            };
            done(req, c);
        }
        if n > 0 {
            self.bar.write32(self.cq_db, self.cq_head as u32);
        }
        while !self.free.is_empty() {
            let Some(req) = self.pending.pop_front() else {
                break;
            };
            if let Err(e) = self.place(req) {
                // A request that cannot be described fails now.
                tracing::debug!(error = %e, "queued request rejected");
                done(
                    req,
                    Completion {
                        ctx: req.ctx,
                        status: Status::new(0, crate::status::sc::INVALID_FIELD),
                        cdw0: 0,
                    },
                );
            }
        }
        self.ring();
        n
    }

    /// Commands in flight longer than `timeout` that were not reported
    /// before: calls `f(cid, request)` once per command.
    pub(crate) fn check_timeouts(
        &mut self,
        now: Instant,
        timeout: Duration,
        f: &mut dyn FnMut(u16, &Request),
    ) {
        for (cid, t) in self.trackers.iter_mut().enumerate() {
            if let (Some(r), Some(s)) = (&t.req, t.submitted) {
                if !t.timed_out && now.duration_since(s) >= timeout {
                    t.timed_out = true;
                    f(cid as u16, r);
                }
            }
        }
    }

    /// True if `cid` is in flight.
    pub(crate) fn in_flight(&self, cid: u16) -> bool {
        self.trackers
            .get(cid as usize)
            .is_some_and(|t| t.req.is_some())
    }

    /// The command identifiers in flight whose context is `ctx`.
    pub(crate) fn cid_of(&self, ctx: u64) -> Option<u16> {
        self.trackers
            .iter()
            .position(|t| t.req.is_some_and(|r| r.ctx == ctx))
            .map(|c| c as u16)
    }

    /// The DMA bytes the queue holds (for reports).
    pub(crate) fn dma_bytes(&self) -> usize {
        self.sq.len() + self.cq.len() + self.lists.len()
    }
}
