//! I/O queue pairs (SPDK: `struct spdk_nvme_qpair`): owned by one thread,
//! so submission and completion need no lock (`&mut self`). Commands are
//! given a caller context (`u64`) and completions are delivered to the
//! handler passed to [`IoQpair::process_completions`], so nothing is boxed
//! or allocated per I/O. Doorbells are batched: commands placed since the
//! last poll are announced with one SQ doorbell write at the next poll (or
//! at once with `QpairOpts::delay_doorbell = false`).
//!
//! Data buffers are raw pointers to DMA memory (as in SPDK), hence the
//! submission functions taking them are `unsafe`: the memory must stay
//! valid, and untouched by the caller, until the command completes.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ctrlr::{state, Inner, Namespace};
use crate::error::{NvmeError, Result};
use crate::queue::{Completion, Payload, Queue, Request, SgeFns};
use crate::spec::{AdminOpcode, DsmRange, IoOpcode, Sqe};
use crate::status::Status;
use crate::tcp::host::TcpIoQpair;

/// Queue pair options (SPDK: `spdk_nvme_io_qpair_opts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpairOpts {
    /// Queue size in entries (capped by CAP.MQES + 1).
    pub io_queue_size: u16,
    /// Request objects: in flight plus waiting for a free slot.
    pub io_queue_requests: u32,
    /// Ring the SQ doorbell once per poll instead of once per command.
    pub delay_doorbell: bool,
}

/// What a command-timeout callback wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutAction {
    /// Keep waiting.
    None,
    /// Send an Abort for the command.
    Abort,
    /// Reset the controller.
    Reset,
}

/// A command that exceeded its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutEvent {
    /// Queue id.
    pub qid: u16,
    /// Command id.
    pub cid: u16,
    /// Opcode.
    pub opcode: u8,
    /// The caller's context.
    pub ctx: u64,
}

pub(crate) type TimeoutCb = Box<dyn FnMut(&TimeoutEvent) -> TimeoutAction + Send>;

/// Asks `cb` about each command `scan` reports as timed out and returns
/// the actions wanted (at most 8 per scan; further ones wait for the next
/// scan), for either transport.
pub(crate) fn collect_timeout_actions(
    qid: u16,
    cb: &mut TimeoutCb,
    scan: impl FnOnce(&mut dyn FnMut(u16, &crate::queue::Request)),
) -> ([(u16, TimeoutAction); 8], usize) {
    let mut actions = [(0, TimeoutAction::None); 8];
    let mut k = 0;
    scan(&mut |cid, r| {
        let a = cb(&TimeoutEvent {
            qid,
            cid,
            opcode: r.cmd.opcode(),
            ctx: r.ctx,
        });
        if a != TimeoutAction::None && k < actions.len() {
            actions[k] = (cid, a);
            k += 1;
        }
    });
    (actions, k)
}

/// An I/O queue pair: PCIe queues or an NVMe/TCP connection (SPDK:
/// `struct spdk_nvme_qpair`). Owned by one thread.
pub struct IoQpair {
    t: Qp,
    /// Error injection (None unless one is set: one branch per command).
    inject: Option<Box<Injector>>,
}

/// An error to inject into commands of one opcode (SPDK:
/// `spdk_nvme_qpair_add_cmd_error_injection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdErrorInjection {
    /// The opcode whose commands get the error.
    pub opc: u8,
    /// True: the command never reaches the controller; it completes with
    /// `status` after `timeout_us`. False: it is submitted and its
    /// completion's status is replaced by `status`.
    pub do_not_submit: bool,
    /// Microseconds a held command waits (with `do_not_submit`).
    pub timeout_us: u64,
    /// How many more matching commands get the error.
    pub err_count: u32,
    /// The status they complete with.
    pub status: Status,
}

/// The injections of one queue pair and the commands they hold or mark.
#[derive(Debug, Default)]
struct Injector {
    rules: Vec<CmdErrorInjection>,
    /// Commands not submitted: (due, ctx, status).
    held: VecDeque<(Instant, u64, Status)>,
    /// Submitted commands whose status is replaced: (ctx, status).
    marked: Vec<(u64, Status)>,
}

impl Injector {
    fn idle(&self) -> bool {
        self.rules.is_empty() && self.held.is_empty() && self.marked.is_empty()
    }
}

enum Qp {
    Pcie(Box<PcieQpair>),
    Tcp(Box<TcpIoQpair>),
}

/// A PCIe I/O queue pair.
pub(crate) struct PcieQpair {
    q: Queue,
    ctrlr: Arc<Inner>,
    generation: u32,
    namespaces: Vec<Namespace>,
    delay_doorbell: bool,
    timeout: Option<(Duration, TimeoutCb)>,
    next_timeout_scan: Instant,
    idle_polls: u32,
    /// Largest transfer one command may move (MDTS, and one PRP list page).
    max_transfer: usize,
    /// False after a failure/detach was reported to the caller.
    connected: bool,
}

impl std::fmt::Debug for IoQpair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoQpair")
            .field("qid", &self.qid())
            .field("outstanding", &self.outstanding())
            .finish_non_exhaustive()
    }
}

const ABORTED: Status = Status::ABORTED_SQ_DELETION;

impl PcieQpair {
    pub(crate) fn new(ctrlr: Arc<Inner>, opts: Option<QpairOpts>) -> Result<PcieQpair> {
        match ctrlr.state.load(Ordering::Acquire) {
            state::OK => {}
            _ => return Err(ctrlr.state_error()),
        }
        let opts = opts.unwrap_or(QpairOpts {
            io_queue_size: ctrlr.opts.io_queue_size,
            io_queue_requests: ctrlr.opts.io_queue_requests,
            delay_doorbell: true,
        });
        let entries = opts
            .io_queue_size
            .clamp(2, 4096)
            .min(ctrlr.cap.mqes().saturating_add(1));
        let qid = ctrlr.alloc_qid()?;
        let pending = (opts.io_queue_requests as usize)
            .saturating_sub(entries as usize - 1)
            .max(1);
        let q = match Queue::new(
            qid,
            entries,
            pending,
            ctrlr.bar.clone(),
            ctrlr.cap.dstrd(),
            ctrlr.page,
            ctrlr.sgl_supported(),
        ) {
            Ok(q) => q,
            Err(e) => {
                ctrlr.free_qid(qid);
                return Err(e);
            }
        };
        let max_transfer = ctrlr.max_transfer();
        let mut qp = PcieQpair {
            q,
            generation: ctrlr.generation.load(Ordering::Acquire),
            namespaces: ctrlr.namespaces(),
            ctrlr,
            delay_doorbell: opts.delay_doorbell,
            timeout: None,
            next_timeout_scan: Instant::now(),
            idle_polls: 0,
            max_transfer,
            connected: true,
        };
        if let Err(e) = qp.create_queues() {
            // Drop frees the id and must not delete queues never created.
            qp.connected = false;
            return Err(e);
        }
        Ok(qp)
    }

    /// Creates the device's CQ and SQ for this queue pair and records the
    /// controller generation they live in. A reset between the two commands
    /// (it deletes every queue) starts the pair over.
    fn create_queues(&mut self) -> Result<()> {
        let qid = self.q.qid as u32;
        let size = self.q.entries() as u32 - 1;
        for _ in 0..8 {
            let mut c = Sqe::new(AdminOpcode::CreateIoCq.into(), 0);
            c.set_prp1(self.q.cq_iova());
            c.dw[10] = (size << 16) | qid;
            c.dw[11] = 1; // physically contiguous, no interrupts
            let (_, g1) =
                self.ctrlr
                    .admin_sync_gen(c, Payload::None, "Create I/O Completion Queue")?;
            let mut s = Sqe::new(AdminOpcode::CreateIoSq.into(), 0);
            s.set_prp1(self.q.sq_iova());
            s.dw[10] = (size << 16) | qid;
            s.dw[11] = (qid << 16) | 1;
            match self
                .ctrlr
                .admin_sync_gen(s, Payload::None, "Create I/O Submission Queue")
            {
                Ok((_, g2)) if g2 == g1 => {
                    self.generation = g1;
                    return Ok(());
                }
                // Reset in between: the CQ is gone; start over.
                Ok(_) => continue,
                Err(e) => {
                    if self.ctrlr.generation.load(Ordering::Acquire) == g1 {
                        let mut d = Sqe::new(AdminOpcode::DeleteIoCq.into(), 0);
                        d.dw[10] = qid;
                        let _ =
                            self.ctrlr
                                .admin_sync(d, Payload::None, "Delete I/O Completion Queue");
                    }
                    return Err(e);
                }
            }
        }
        Err(NvmeError::ControllerFailed {
            traddr: self.ctrlr.trid.traddr.clone(),
            reason: "resets keep interrupting the creation of I/O queues".into(),
        })
    }

    /// The queue id.
    pub fn qid(&self) -> u16 {
        self.q.qid
    }

    /// Commands the device holds.
    pub fn outstanding(&self) -> usize {
        self.q.outstanding
    }

    /// Commands waiting for a free slot.
    pub fn queued(&self) -> usize {
        self.q.pending_len()
    }

    /// Calls `cb` for commands in flight longer than `timeout` (SPDK:
    /// `spdk_nvme_ctrlr_register_timeout_callback`, per queue pair here);
    /// its answer may abort the command or reset the controller.
    pub fn set_timeout(
        &mut self,
        timeout: Duration,
        cb: impl FnMut(&TimeoutEvent) -> TimeoutAction + Send + 'static,
    ) {
        self.timeout = Some((timeout, Box::new(cb)));
        self.q.stamp_on_submit = true;
        self.next_timeout_scan = Instant::now();
    }

    /// Submits a request, honouring the controller's state.
    pub(crate) fn submit(&mut self, req: Request) -> Result<()> {
        let st = self.ctrlr.state.load(Ordering::Acquire);
        match st {
            state::OK if self.generation == self.ctrlr.generation.load(Ordering::Acquire) => {
                self.q.submit(req)?;
                if !self.delay_doorbell {
                    self.q.ring();
                }
                Ok(())
            }
            state::OK | state::RESETTING | state::DISABLING => {
                // Reset or detach in progress, or not yet reconnected: wait
                // in the queue.
                self.q.submit_queued(req)
            }
            _ => Err(self.ctrlr.state_error()),
        }
    }

    /// Aborts everything in flight and waiting, telling `done`.
    fn abort_all(&mut self, done: &mut dyn FnMut(&Completion)) -> u32 {
        let mut n = 0;
        let mut f = |r: Request| {
            n += 1;
            done(&Completion {
                ctx: r.ctx,
                status: ABORTED,
                cdw0: 0,
            });
        };
        self.q.abort_in_flight(&mut f);
        self.q.drain_pending(&mut f);
        n
    }

    /// Re-creates the device queues after a controller reset.
    fn reconnect(&mut self, done: &mut dyn FnMut(&Completion)) -> Result<u32> {
        let mut n = 0;
        self.q.reset_rings(&mut |r| {
            n += 1;
            done(&Completion {
                ctx: r.ctx,
                status: ABORTED,
                cdw0: 0,
            })
        });
        self.namespaces = self.ctrlr.namespaces();
        if let Err(e) = self.create_queues() {
            self.abort_all(done);
            return Err(e);
        }
        tracing::debug!(qid = self.q.qid, "I/O queue pair re-created after reset");
        Ok(n)
    }

    /// Reaps up to `max` completions (0: all available), calling `done` for
    /// each (SPDK: `spdk_nvme_qpair_process_completions`). Returns how many
    /// completed. If the controller failed or was detached, everything in
    /// flight and waiting completes with "Command Aborted due to SQ
    /// Deletion" and the error is returned.
    pub fn process_completions(
        &mut self,
        max: u32,
        mut done: impl FnMut(&Completion),
    ) -> Result<u32> {
        let st = self.ctrlr.state.load(Ordering::Acquire);
        let gen = self.ctrlr.generation.load(Ordering::Acquire);
        match st {
            state::FAILED | state::DETACHED => {
                // What the controller completed before it stopped is real;
                // the rest is handed back.
                let mut n = self.q.reap(0, &mut |_, c| done(&c));
                n += self.abort_all(&mut done);
                if n > 0 {
                    return Ok(n);
                }
                return Err(self.ctrlr.state_error());
            }
            state::RESETTING => {
                // The device's queues are going away: give back what was in flight.
                let mut n = 0;
                self.q.abort_in_flight(&mut |r| {
                    n += 1;
                    done(&Completion {
                        ctx: r.ctx,
                        status: ABORTED,
                        cdw0: 0,
                    })
                });
                return Ok(n);
            }
            _ => {}
        }
        let mut n = 0;
        if gen != self.generation {
            n += self.reconnect(&mut done)?;
        }
        if self.timeout.is_some() && self.q.outstanding > 0 {
            // Before reaping, so a command that is late is seen as late.
            self.run_timeouts();
        }
        n += self.q.poll(max, &mut |_, c| done(&c));
        if n == 0 && self.q.outstanding > 0 {
            self.idle_polls += 1;
            if self.idle_polls % 4096 == 0 {
                if let Some(why) = self.ctrlr.dead_reason() {
                    self.ctrlr.fail(why);
                    return Ok(self.abort_all(&mut done));
                }
            }
        } else {
            self.idle_polls = 0;
        }
        Ok(n)
    }

    fn run_timeouts(&mut self) {
        let now = Instant::now();
        if now < self.next_timeout_scan {
            return;
        }
        let Some((t, cb)) = self.timeout.as_mut() else {
            return;
        };
        // Scan at most every quarter timeout (and at least every 10 ms).
        self.next_timeout_scan = now + (*t / 4).min(Duration::from_millis(10));
        let qid = self.q.qid;
        let (actions, k) = collect_timeout_actions(qid, cb, |f| self.q.check_timeouts(now, *t, f));
        for &(cid, a) in &actions[..k] {
            let ctrlr = crate::ctrlr::PcieController {
                inner: self.ctrlr.clone(),
            };
            let r = match a {
                TimeoutAction::Abort if self.q.in_flight(cid) => ctrlr.abort(qid, cid).map(|_| ()),
                TimeoutAction::Reset => ctrlr.reset(),
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(qid, cid, error = %e, "timeout action failed");
            }
        }
    }

    /// The command id in flight for `ctx` (to abort it).
    pub fn cid_of(&self, ctx: u64) -> Option<u16> {
        self.q.cid_of(ctx)
    }

    /// DMA memory this queue pair holds, in bytes.
    pub fn dma_bytes(&self) -> usize {
        self.q.dma_bytes()
    }
}

impl Drop for PcieQpair {
    fn drop(&mut self) {
        let st = self.ctrlr.state.load(Ordering::Acquire);
        let same = self.generation == self.ctrlr.generation.load(Ordering::Acquire);
        if st == state::OK && same && self.connected {
            let qid = self.q.qid as u32;
            let mut d = Sqe::new(AdminOpcode::DeleteIoSq.into(), 0);
            d.dw[10] = qid;
            let r1 = self
                .ctrlr
                .admin_sync(d, Payload::None, "Delete I/O Submission Queue");
            let mut d = Sqe::new(AdminOpcode::DeleteIoCq.into(), 0);
            d.dw[10] = qid;
            let r2 = self
                .ctrlr
                .admin_sync(d, Payload::None, "Delete I/O Completion Queue");
            if r1.is_err() || r2.is_err() {
                // The device may still use the rings: keep the memory.
                tracing::warn!(qid, "could not delete I/O queues; leaking their memory");
                self.q.leak_memory();
            }
        }
        self.ctrlr.free_qid(self.q.qid);
    }
}

impl IoQpair {
    pub(crate) fn pcie(q: PcieQpair) -> IoQpair {
        IoQpair {
            t: Qp::Pcie(Box::new(q)),
            inject: None,
        }
    }

    pub(crate) fn tcp(q: TcpIoQpair) -> IoQpair {
        IoQpair {
            t: Qp::Tcp(Box::new(q)),
            inject: None,
        }
    }

    fn namespaces(&self) -> &[Namespace] {
        match &self.t {
            Qp::Pcie(q) => &q.namespaces,
            Qp::Tcp(q) => &q.namespaces,
        }
    }

    fn max_transfer(&self) -> usize {
        match &self.t {
            Qp::Pcie(q) => q.max_transfer,
            Qp::Tcp(q) => q.max_transfer,
        }
    }

    fn submit(&mut self, req: Request) -> Result<()> {
        if let Some(inj) = self.inject.as_deref_mut() {
            let opc = req.cmd.opcode();
            if let Some(r) = inj
                .rules
                .iter_mut()
                .find(|r| r.opc == opc && r.err_count > 0)
            {
                r.err_count -= 1;
                if r.do_not_submit {
                    let due = Instant::now() + Duration::from_micros(r.timeout_us);
                    inj.held.push_back((due, req.ctx, r.status));
                    return Ok(());
                }
                inj.marked.push((req.ctx, r.status));
            }
        }
        match &mut self.t {
            Qp::Pcie(q) => q.submit(req),
            Qp::Tcp(q) => q.submit(req),
        }
    }

    /// The queue id.
    pub fn qid(&self) -> u16 {
        match &self.t {
            Qp::Pcie(q) => q.qid(),
            Qp::Tcp(q) => q.q.qid,
        }
    }

    /// Commands the controller holds.
    pub fn outstanding(&self) -> usize {
        match &self.t {
            Qp::Pcie(q) => q.outstanding(),
            Qp::Tcp(q) => q.q.outstanding(),
        }
    }

    /// Commands waiting for a free slot.
    pub fn queued(&self) -> usize {
        match &self.t {
            Qp::Pcie(q) => q.queued(),
            Qp::Tcp(q) => q.q.queued(),
        }
    }

    /// Calls `cb` for commands in flight longer than `timeout` (SPDK:
    /// `spdk_nvme_ctrlr_register_timeout_callback`, per queue pair here);
    /// its answer may abort the command or reset the controller. Each
    /// command is reported once; the callback runs from
    /// [`IoQpair::process_completions`].
    pub fn set_timeout(
        &mut self,
        timeout: Duration,
        cb: impl FnMut(&TimeoutEvent) -> TimeoutAction + Send + 'static,
    ) {
        match &mut self.t {
            Qp::Pcie(q) => q.set_timeout(timeout, cb),
            Qp::Tcp(q) => q.set_timeout(timeout, Box::new(cb)),
        }
    }

    /// Reaps up to `max` completions (0: all available), calling `done` for
    /// each (SPDK: `spdk_nvme_qpair_process_completions`). Returns how many
    /// completed. If the controller failed or was detached, everything in
    /// flight and waiting completes with "Command Aborted due to SQ
    /// Deletion" and the error is returned. Over TCP this also sends the
    /// PDUs queued since the last call, in one write.
    pub fn process_completions(
        &mut self,
        max: u32,
        mut done: impl FnMut(&Completion),
    ) -> Result<u32> {
        let Some(inj) = self.inject.as_deref_mut() else {
            return match &mut self.t {
                Qp::Pcie(q) => q.process_completions(max, done),
                Qp::Tcp(q) => q.process_completions(max, &mut done),
            };
        };
        let mut mark = |c: &Completion| {
            match inj.marked.iter().position(|m| m.0 == c.ctx) {
                Some(i) => {
                    let (_, status) = inj.marked.swap_remove(i);
                    done(&Completion { status, ..*c })
                }
                None => done(c),
            };
        };
        let r = match &mut self.t {
            Qp::Pcie(q) => q.process_completions(max, &mut mark),
            Qp::Tcp(q) => q.process_completions(max, &mut mark),
        };
        let now = Instant::now();
        let mut n = 0;
        while inj.held.front().is_some_and(|h| h.0 <= now) {
            let (_, ctx, status) = inj.held.pop_front().expect("front checked");
            done(&Completion {
                ctx,
                status,
                cdw0: 0,
            });
            n += 1;
        }
        if inj.idle() {
            self.inject = None;
        }
        r.map(|k| k + n)
    }

    /// Injects `e` into this queue pair's commands of opcode `e.opc`
    /// (replacing an injection for the same opcode).
    pub fn add_cmd_error_injection(&mut self, e: CmdErrorInjection) {
        let inj = self.inject.get_or_insert_with(Default::default);
        match inj.rules.iter_mut().find(|r| r.opc == e.opc) {
            Some(r) => *r = e,
            None => inj.rules.push(e),
        }
    }

    /// Removes the injection for opcode `opc` (commands it already holds
    /// still complete with its status when due).
    pub fn remove_cmd_error_injection(&mut self, opc: u8) {
        if let Some(inj) = self.inject.as_deref_mut() {
            inj.rules.retain(|r| r.opc != opc);
            if inj.idle() {
                self.inject = None;
            }
        }
    }

    /// Commands held by a `do_not_submit` injection.
    pub fn injected_held(&self) -> usize {
        self.inject.as_ref().map_or(0, |i| i.held.len())
    }

    /// The command id in flight for `ctx` (to abort it).
    pub fn cid_of(&self, ctx: u64) -> Option<u16> {
        match &self.t {
            Qp::Pcie(q) => q.cid_of(ctx),
            Qp::Tcp(q) => q.q.cid_of(ctx),
        }
    }

    /// DMA memory this queue pair holds, in bytes (0 over TCP).
    pub fn dma_bytes(&self) -> usize {
        match &self.t {
            Qp::Pcie(q) => q.dma_bytes(),
            Qp::Tcp(_) => 0,
        }
    }

    fn ns(&self, nsid: u32) -> Result<&Namespace> {
        self.namespaces()
            .iter()
            .find(|n| n.id == nsid)
            .ok_or_else(|| NvmeError::InvalidArgument(format!("namespace {nsid} is not active")))
    }

    fn check_blocks(&self, nsid: u32, nlb: u32, len: Option<usize>) -> Result<()> {
        let ns = self.ns(nsid)?;
        if nlb == 0 || nlb > 65536 {
            return Err(NvmeError::InvalidArgument(format!(
                "{nlb} blocks: a command moves 1..=65536 blocks"
            )));
        }
        let bytes = nlb as u64 * ns.block_size as u64;
        if bytes > self.max_transfer() as u64 {
            return Err(NvmeError::InvalidArgument(format!(
                "{bytes} bytes is over the controller's maximum data transfer size of {} bytes: split the I/O",
                self.max_transfer()
            )));
        }
        if let Some(len) = len {
            let want = nlb as usize * ns.block_size as usize;
            if len < want {
                return Err(NvmeError::InvalidArgument(format!(
                    "buffer of {len} bytes is smaller than {nlb} blocks of {} bytes",
                    ns.block_size
                )));
            }
        }
        Ok(())
    }

    fn rw(&mut self, op: IoOpcode, nsid: u32, lba: u64, nlb: u32, flags: u32) -> Sqe {
        let mut s = Sqe::new(op.into(), nsid);
        s.set_slba(lba);
        s.dw[12] = (nlb - 1) | flags;
        s
    }

    /// Reads `nlb` blocks at `lba` into `buf` (SPDK: `spdk_nvme_ns_cmd_read`).
    ///
    /// # Safety
    /// `buf` must point to DMA memory (DmaBuf, dma_malloc or registered) of
    /// at least `nlb` blocks that stays valid and is neither read nor
    /// written by the caller until the command completes.
    pub unsafe fn read(
        &mut self,
        nsid: u32,
        buf: *mut u8,
        lba: u64,
        nlb: u32,
        ctx: u64,
    ) -> Result<()> {
        self.data_cmd(IoOpcode::Read, nsid, buf, lba, nlb, 0, ctx)
    }

    /// Writes `nlb` blocks at `lba` from `buf` (SPDK: `spdk_nvme_ns_cmd_write`).
    ///
    /// # Safety
    /// As for [`IoQpair::read`]; the caller must not write `buf` until completion.
    pub unsafe fn write(
        &mut self,
        nsid: u32,
        buf: *const u8,
        lba: u64,
        nlb: u32,
        ctx: u64,
    ) -> Result<()> {
        self.data_cmd(IoOpcode::Write, nsid, buf as *mut u8, lba, nlb, 0, ctx)
    }

    /// Compares `nlb` blocks at `lba` with `buf`; a mismatch completes with
    /// "Compare Failure" (SPDK: `spdk_nvme_ns_cmd_compare`).
    ///
    /// # Safety
    /// As for [`IoQpair::write`].
    pub unsafe fn compare(
        &mut self,
        nsid: u32,
        buf: *const u8,
        lba: u64,
        nlb: u32,
        ctx: u64,
    ) -> Result<()> {
        self.data_cmd(IoOpcode::Compare, nsid, buf as *mut u8, lba, nlb, 0, ctx)
    }

    #[allow(clippy::too_many_arguments)]
    fn data_cmd(
        &mut self,
        op: IoOpcode,
        nsid: u32,
        buf: *mut u8,
        lba: u64,
        nlb: u32,
        flags: u32,
        ctx: u64,
    ) -> Result<()> {
        self.check_blocks(nsid, nlb, None)?;
        let bs = self.ns(nsid)?.block_size as usize;
        let cmd = self.rw(op, nsid, lba, nlb, flags);
        self.submit(Request {
            cmd,
            payload: Payload::Contig {
                vaddr: buf as usize,
                len: nlb as usize * bs,
            },
            ctx,
        })
    }

    /// Vectored read: the payload is described by `sge` callbacks (SPDK:
    /// `spdk_nvme_ns_cmd_readv`). Uses an SGL when the controller supports
    /// them, else PRPs (then every element but the first must start, and
    /// all but the last end, on a 4 KiB boundary).
    ///
    /// # Safety
    /// Every element `sge` yields must be DMA memory valid until completion;
    /// `sge.arg` must stay valid for the callbacks until then too.
    pub unsafe fn readv(
        &mut self,
        nsid: u32,
        lba: u64,
        nlb: u32,
        sge: SgeFns,
        ctx: u64,
    ) -> Result<()> {
        self.vec_cmd(IoOpcode::Read, nsid, lba, nlb, sge, ctx)
    }

    /// Vectored write (SPDK: `spdk_nvme_ns_cmd_writev`).
    ///
    /// # Safety
    /// As for [`IoQpair::readv`].
    pub unsafe fn writev(
        &mut self,
        nsid: u32,
        lba: u64,
        nlb: u32,
        sge: SgeFns,
        ctx: u64,
    ) -> Result<()> {
        self.vec_cmd(IoOpcode::Write, nsid, lba, nlb, sge, ctx)
    }

    fn vec_cmd(
        &mut self,
        op: IoOpcode,
        nsid: u32,
        lba: u64,
        nlb: u32,
        sge: SgeFns,
        ctx: u64,
    ) -> Result<()> {
        self.check_blocks(nsid, nlb, None)?;
        let bs = self.ns(nsid)?.block_size as usize;
        let cmd = self.rw(op, nsid, lba, nlb, 0);
        self.submit(Request {
            cmd,
            payload: Payload::Sgl {
                fns: sge,
                len: nlb as usize * bs,
            },
            ctx,
        })
    }

    /// Flush (SPDK: `spdk_nvme_ns_cmd_flush`).
    pub fn flush(&mut self, nsid: u32, ctx: u64) -> Result<()> {
        self.ns(nsid)?;
        self.submit(Request {
            cmd: Sqe::new(IoOpcode::Flush.into(), nsid),
            payload: Payload::None,
            ctx,
        })
    }

    /// Write Zeroes; with `deallocate` the controller may deallocate the
    /// blocks instead (SPDK: `spdk_nvme_ns_cmd_write_zeroes`).
    pub fn write_zeroes(
        &mut self,
        nsid: u32,
        lba: u64,
        nlb: u32,
        deallocate: bool,
        ctx: u64,
    ) -> Result<()> {
        self.check_blocks(nsid, nlb, None)?;
        let cmd = self.rw(
            IoOpcode::WriteZeroes,
            nsid,
            lba,
            nlb,
            if deallocate { 1 << 25 } else { 0 },
        );
        self.submit(Request {
            cmd,
            payload: Payload::None,
            ctx,
        })
    }

    /// Dataset Management, deallocate one range (SPDK:
    /// `spdk_nvme_ns_cmd_dataset_management` with one range).
    pub fn deallocate(&mut self, nsid: u32, lba: u64, nlb: u32, ctx: u64) -> Result<()> {
        self.ns(nsid)?;
        if nlb == 0 {
            return Err(NvmeError::InvalidArgument("deallocating 0 blocks".into()));
        }
        let mut cmd = Sqe::new(IoOpcode::DatasetManagement.into(), nsid);
        cmd.dw[10] = 0; // one range (0-based)
        cmd.dw[11] = 1 << 2; // AD: deallocate
        self.submit(Request {
            cmd,
            payload: Payload::DsmRange(DsmRange {
                attributes: 0,
                nlb,
                slba: lba,
            }),
            ctx,
        })
    }

    /// Raw I/O passthrough (SPDK: `spdk_nvme_ctrlr_cmd_io_raw`): `cmd` as
    /// given (its CID and data pointer are set by the driver), with an
    /// optional contiguous buffer of `len` bytes.
    ///
    /// # Safety
    /// If `buf` is not null, as for [`IoQpair::read`] for `len` bytes.
    pub unsafe fn io_raw(&mut self, cmd: Sqe, buf: *mut u8, len: usize, ctx: u64) -> Result<()> {
        let payload = if buf.is_null() || len == 0 {
            Payload::None
        } else {
            Payload::Contig {
                vaddr: buf as usize,
                len,
            }
        };
        self.submit(Request { cmd, payload, ctx })
    }
}
