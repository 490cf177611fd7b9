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
use std::time::{Duration, Instant};

use crate::ctrlr::Namespace;
use crate::error::{NvmeError, Result};
use crate::pcie::PcieQpair;
use crate::queue::{Completion, Payload, Request, SgeFns};
use crate::spec::{DsmRange, IoOpcode, Sqe};
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

/// A queue pair's command timeout and its callback (SPDK:
/// `spdk_nvme_ctrlr_register_timeout_callback`, per queue pair here),
/// the same for every transport.
pub(crate) struct CmdTimeouts {
    timeout: Duration,
    cb: TimeoutCb,
    next_scan: Instant,
}

/// What a timeout callback asked for: (command id, action), at most 8 per
/// scan (further ones wait for the next scan).
pub(crate) struct TimeoutActions {
    list: [(u16, TimeoutAction); 8],
    len: usize,
}

impl CmdTimeouts {
    /// Commands in flight longer than `timeout` are reported to `cb`.
    pub(crate) fn new(timeout: Duration, cb: TimeoutCb) -> CmdTimeouts {
        CmdTimeouts {
            timeout,
            cb,
            next_scan: Instant::now(),
        }
    }

    /// Asks the callback about each command `scan` reports as in flight
    /// for the timeout or longer (`scan(now, timeout, report)`; each
    /// command once), at most every quarter timeout and at least every
    /// 10 ms; returns the actions wanted.
    pub(crate) fn due(
        &mut self,
        qid: u16,
        scan: impl FnOnce(Instant, Duration, &mut dyn FnMut(u16, &Request)),
    ) -> TimeoutActions {
        let mut out = TimeoutActions {
            list: [(0, TimeoutAction::None); 8],
            len: 0,
        };
        let now = Instant::now();
        if now < self.next_scan {
            return out;
        }
        self.next_scan = now + (self.timeout / 4).min(Duration::from_millis(10));
        let cb = &mut self.cb;
        scan(now, self.timeout, &mut |cid, r| {
            let a = cb(&TimeoutEvent {
                qid,
                cid,
                opcode: r.cmd.opcode(),
                ctx: r.ctx,
            });
            if a != TimeoutAction::None && out.len < out.list.len() {
                out.list[out.len] = (cid, a);
                out.len += 1;
            }
        });
        out
    }
}

/// A queue whose commands can time out (the PCIe rings, an NVMe/TCP
/// connection).
pub(crate) trait TimedQueue {
    /// The queue id.
    fn qid(&self) -> u16;
    /// Calls `f` once for each command in flight for `timeout` or longer
    /// at `now` (each command once).
    fn check_timeouts(&mut self, now: Instant, timeout: Duration, f: &mut dyn FnMut(u16, &Request));
    /// True while command `cid` is in flight.
    fn in_flight(&self, cid: u16) -> bool;
}

impl CmdTimeouts {
    /// Scans `q` when due, asks the callback about its late commands and
    /// carries out what it wants on the controller `ctrlr` gives.
    pub(crate) fn run(
        &mut self,
        q: &mut impl TimedQueue,
        ctrlr: impl FnOnce() -> crate::ctrlr::Controller,
    ) {
        let qid = q.qid();
        let actions = self.due(qid, |now, timeout, f| q.check_timeouts(now, timeout, f));
        actions.carry_out(qid, ctrlr, |cid| q.in_flight(cid));
    }
}

impl TimeoutActions {
    /// Carries the actions out on the controller `ctrlr` gives (asked for
    /// only if there is one): an Abort of each command `in_flight` still
    /// holds, a reset. A failed action is logged.
    pub(crate) fn carry_out(
        &self,
        qid: u16,
        ctrlr: impl FnOnce() -> crate::ctrlr::Controller,
        in_flight: impl Fn(u16) -> bool,
    ) {
        if self.len == 0 {
            return;
        }
        let ctrlr = ctrlr();
        for &(cid, a) in &self.list[..self.len] {
            let r = match a {
                TimeoutAction::Abort if in_flight(cid) => ctrlr.abort(qid, cid).map(|_| ()),
                TimeoutAction::Reset => ctrlr.reset(),
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(qid, cid, error = %e, "timeout action failed");
            }
        }
    }
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

impl std::fmt::Debug for IoQpair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoQpair")
            .field("qid", &self.qid())
            .field("outstanding", &self.outstanding())
            .finish_non_exhaustive()
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
