//! The sans-I/O core of an NVMe/TCP queue pair (SPDK: the protocol half of
//! `lib/nvmf/tcp.c` and `ctrlr.c`): a state machine that owns no socket and
//! reads no clock.
//!
//! - Bytes in: [`Conn::read_with`] hands the caller the slices the next
//!   received bytes go to (the receive buffer, or straight the command's
//!   data buffer and digest while a PDU's payload is arriving), the caller
//!   fills them (a `readv` on the socket, or a copy: [`Conn::feed`]) and
//!   [`Conn::process`] handles every whole PDU.
//! - Bytes out: [`Conn::flush_with`] hands the queued output (PDU headers,
//!   responses, digests and C2H data buffers) as `IoSlice`s to a writer
//!   (a `writev`, or [`Conn::take_output`]).
//! - Requests out: I/O commands become [`Request`]s for the bdev bridge
//!   ([`Conn::next_request`]); their completions come back through
//!   [`Conn::io_done`] / [`Conn::compare_and_write_done`].
//! - Time in: every call that needs the clock takes `now` (ns);
//!   [`Conn::on_tick`] enforces the handshake and keep-alive timeouts.
//!
//! Fabrics and admin commands (`ctrlr`) run inside the core against the
//! target's in-memory state (subsystems, controllers). The receive side is
//! `rx`, the send side `tx`. The socket and reactor driver is
//! `crate::tcp::poll_group`; the bdev bridge `crate::bdev_bridge`.

mod ctrlr;
pub mod harness;
mod rx;
#[cfg(test)]
mod tests;
mod tx;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::DerefMut;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rspdk_nvme::spec::status::{generic, media, Status};
use rspdk_nvme::spec::Sqe;
use rspdk_thread::ThreadHandle;

use crate::pdu::{self, Digests};
use crate::target::{lock, target, Controller, PollGroupStats, TransportOpts};

use rx::Rx;
use tx::OutSeg;

/// What the Write of a fused compare-and-write ends with when its Compare
/// failed, and what both halves of a broken pair end with. These are not
/// the codes the spec names for the cases (Command Aborted due to Failed /
/// Missing Fused Command, 0x09 and 0x0a) but the ones the target has
/// always sent, (0, 0x05) and (0, 0x06), which the end-to-end test
/// `fused_compare_and_write` asserts; changing them is a behaviour change
/// for its own issue.
pub(crate) const FUSED_FAILED_AS_SENT: Status = generic::ABORTED_POWER_LOSS;
/// See [`FUSED_FAILED_AS_SENT`].
pub(crate) const FUSED_MISSING_AS_SENT: Status = generic::INTERNAL;

/// In-capsule data the admin queue accepts (NVMe/TCP 1.0, section 3.4.2: 8 KiB).
const ADMIN_ICD: usize = 8192;
/// Largest admin transfer.
const ADMIN_MAX_XFER: usize = 1 << 20;
/// Most AERs held per controller (AERL + 1).
const MAX_AERS: usize = 4;
/// C2H data up to this size is copied next to its header; larger data is
/// sent straight from the command's DMA buffer (one iovec of a `writev`).
const INLINE_DATA_MAX: usize = 512;
/// Most iovecs handed to one `writev`.
pub const MAX_IOV: usize = 64;
/// Stop reading when this much output waits (back-pressure).
const WBUF_HIGH: usize = 4 << 20;
/// Receive (and send) buffer of a connection before its ICReq: enough for
/// the ICReq and a TermReq.
const RBUF_FIRST: usize = 4096;
/// Receive buffer once the connection is initialised.
const RBUF_STEADY: usize = 64 * 1024;
/// A connection that has not completed ICReq and Connect within this long
/// is closed: idle sockets must not hold the target's memory.
const HANDSHAKE_TIMEOUT_NS: u64 = 10_000_000_000;

/// Where a connection's data buffers come from: the target uses iobuf's
/// DMA pools, in-process tests and fuzzing plain heap memory.
pub trait DataBufs {
    /// A buffer of at least the asked length, given back by dropping it.
    type Buf: DerefMut<Target = [u8]>;
    /// A buffer of `len` bytes now, or `None` (the command then fails with
    /// Internal Error).
    fn get(&mut self, len: usize) -> Option<Self::Buf>;
}

/// Heap buffers (`Vec<u8>`), for in-process tests and fuzzing.
#[derive(Debug, Default)]
pub struct HeapBufs;

impl DataBufs for HeapBufs {
    type Buf = Vec<u8>;
    fn get(&mut self, len: usize) -> Option<Vec<u8>> {
        Some(vec![0; len])
    }
}

/// Work the core hands to the bdev bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Run the NVM command in request slot `slot` (read, write, compare,
    /// flush, write zeroes, dataset management) on its namespace; its
    /// command is [`Conn::sqe`], its data buffer [`Conn::buf_mut`].
    Io {
        /// The request slot.
        slot: usize,
    },
    /// Run the fused Compare in `first` and Write in `second` as one
    /// compare-and-write.
    CompareAndWrite {
        /// The Compare's slot.
        first: usize,
        /// The Write's slot.
        second: usize,
    },
}

/// Who a connection is: what the driver knows when it accepts one.
#[derive(Debug, Clone)]
pub struct ConnParams {
    /// Connection id (unique in the process).
    pub id: u64,
    /// The NVMe-oF target whose listener accepted the connection.
    pub tgt: String,
    /// Local address (the listener's).
    pub local: SocketAddr,
    /// The host's address.
    pub peer: SocketAddr,
    /// The transport's options.
    pub opts: TransportOpts,
    /// The poll group's counters.
    pub stats: Arc<PollGroupStats>,
    /// The poll group's name (for `nvmf_subsystem_get_qpairs`).
    pub pg_name: String,
    /// The thread an admin queue's AERs are delivered on (the poll
    /// group's); without one an admin Connect fails with Internal Error.
    pub admin_thread: Option<ThreadHandle>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ReqState {
    Free,
    /// Waiting for H2CData after an R2T.
    AwaitData,
    /// Executing (bdev I/O or admin).
    Exec,
    /// An AER waiting for an event.
    Aer,
}

/// A request slot: one command from capsule to response.
pub(crate) struct Req<Buf> {
    pub(crate) state: ReqState,
    pub(crate) cid: u16,
    pub(crate) sqe: Sqe,
    pub(crate) buf: Option<Buf>,
    /// Transfer length (bytes) from the SGL.
    pub(crate) len: usize,
    /// H2C bytes received so far.
    pub(crate) recvd: usize,
    /// C2H: the command returns data.
    pub(crate) c2h: bool,
    /// Bdev I/Os still running (DSM ranges).
    pub(crate) pending: u32,
    pub(crate) status: Status,
}

impl<Buf> Req<Buf> {
    fn new() -> Self {
        Req {
            state: ReqState::Free,
            cid: 0,
            sqe: Sqe::default(),
            buf: None,
            len: 0,
            recvd: 0,
            c2h: false,
            pending: 0,
            status: generic::SUCCESS,
        }
    }
}

/// The queue pair a Connect made of the connection.
pub(crate) struct Qpair {
    pub(crate) ctrlr: Arc<Controller>,
    pub(crate) qid: u16,
    pub(crate) sqsize: u16,
    pub(crate) sqhd: u16,
    pub(crate) sqflow_off: bool,
}

/// One NVMe/TCP queue pair's protocol state (see the module docs).
pub struct Conn<B: DataBufs> {
    p: ConnParams,
    bufs: B,
    /// The time of the call being handled (ns).
    now: u64,
    rbuf: Vec<u8>,
    rlen: usize,
    /// Where the bytes being received go.
    rx: Rx,
    /// The host's MAXR2T (0's based) from its ICReq. We send one R2T per
    /// command for the whole transfer, which every MAXR2T allows.
    maxr2t: u32,
    /// Headers, responses and digests waiting to be sent, from `wpos`.
    wbuf: Vec<u8>,
    wpos: usize,
    /// `wbuf` bytes up to here are described by `out`.
    wmark: usize,
    /// Queued output in order: `wbuf` runs and data buffers.
    out: VecDeque<OutSeg<B::Buf>>,
    /// Bytes of data buffers queued in `out`.
    out_data: usize,
    ic_done: bool,
    digests: Digests,
    max_plen: u32,
    closed: bool,
    pub(crate) q: Option<Qpair>,
    pub(crate) reqs: Vec<Req<B::Buf>>,
    free: Vec<u16>,
    /// Work for the bdev bridge, in arrival order.
    requests: VecDeque<Request>,
    /// The first (Compare) half of a fused compare-and-write, waiting for
    /// its Write.
    fused_first: Option<usize>,
    /// When the connection was accepted (for the handshake timeout).
    accepted_ns: u64,
    /// The ONCS bits `masked_oncs` hides, worked out once from the
    /// transport options (not per command).
    oncs_masked: u16,
}

impl<B: DataBufs> Conn<B> {
    /// A connection accepted at `now` (ns), before its ICReq.
    pub fn new(p: ConnParams, bufs: B, now: u64) -> Self {
        crate::trace::register();
        let oncs_masked = p.opts.oncs_mask();
        Conn {
            p,
            bufs,
            now,
            oncs_masked,
            rbuf: vec![0; RBUF_FIRST],
            rlen: 0,
            rx: Rx::Hdr,
            maxr2t: 0,
            wbuf: Vec::with_capacity(RBUF_FIRST),
            accepted_ns: now,
            wpos: 0,
            wmark: 0,
            out: VecDeque::with_capacity(2 * MAX_IOV),
            out_data: 0,
            ic_done: false,
            digests: Digests::default(),
            max_plen: pdu::IC_LEN as u32,
            closed: false,
            q: None,
            reqs: Vec::new(),
            free: Vec::new(),
            requests: VecDeque::with_capacity(64),
            fused_first: None,
        }
    }

    /// The connection id.
    pub fn id(&self) -> u64 {
        self.p.id
    }

    /// The host's address.
    pub fn peer(&self) -> SocketAddr {
        self.p.peer
    }

    /// The poll group's counters.
    pub fn stats(&self) -> &PollGroupStats {
        &self.p.stats
    }

    /// Bytes the connection holds: its receive and send buffers and the
    /// data buffers of its requests and output queue.
    pub fn footprint(&self) -> usize {
        let bufs: usize = self
            .reqs
            .iter()
            .filter_map(|r| r.buf.as_ref())
            .map(|b| b.len())
            .sum();
        self.rbuf.len() + self.wbuf.capacity() + self.out_data + bufs
    }

    /// True once the connection is closed (by the host, a protocol error,
    /// a timeout or [`Conn::close`]); the driver then drops its socket.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The controller of the queue pair, once connected.
    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.q.as_ref().map(|q| &q.ctrlr)
    }

    fn maxh2cdata(&self) -> u32 {
        self.p.opts.max_io_size.min(131072)
    }

    fn get_buf(&mut self, len: usize) -> Option<B::Buf> {
        self.bufs.get(len)
    }

    /// Closes the connection (idempotent): its queue pair leaves the
    /// target's lists, an admin queue's controller dies with it. Queued
    /// output stays for the driver's last flush.
    pub fn close(&mut self, why: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        let stats = &self.p.stats;
        stats.connections.fetch_sub(1, Ordering::Relaxed);
        target().qpairs.remove(&self.p.id);
        if let Some(q) = self.q.take() {
            if q.qid == 0 {
                stats.current_admin_qpairs.fetch_sub(1, Ordering::Relaxed);
                q.ctrlr.dead.store(true, Ordering::Release);
                lock(&q.ctrlr.subsys.controllers).retain(|c| !Arc::ptr_eq(c, &q.ctrlr));
            } else {
                stats.current_io_qpairs.fetch_sub(1, Ordering::Relaxed);
                if let Some(b) = lock(&q.ctrlr.qids).get_mut(q.qid as usize) {
                    *b = false;
                }
            }
        }
        tracing::info!(peer = %self.p.peer, conn = self.p.id, reason = why, "nvmf: connection closed");
    }

    /// The timers at `now`: a connection without ICReq and Connect after
    /// 10 s, a queue whose controller is gone, an admin queue whose host
    /// sent nothing for twice the keep-alive timeout are closed. True if
    /// this call closed it.
    pub fn on_tick(&mut self, now: u64) -> bool {
        self.now = now;
        if self.closed {
            return false;
        }
        if self.q.is_none() && now.saturating_sub(self.accepted_ns) > HANDSHAKE_TIMEOUT_NS {
            self.close("no ICReq and Connect within 10 s");
            return true;
        }
        if let Some(q) = &self.q {
            if q.ctrlr.dead.load(Ordering::Acquire) {
                self.close("controller gone");
                return true;
            }
            let kato = q.ctrlr.kato_ms.load(Ordering::Relaxed) as u64;
            if q.qid == 0 && kato > 0 {
                let last = q.ctrlr.last_keep_alive.load(Ordering::Relaxed);
                if now > last + kato * 1_000_000 * 2 {
                    self.close("keep alive timeout");
                    return true;
                }
            }
        }
        false
    }

    /// False while more output waits than the back-pressure mark: the
    /// driver stops reading until the host takes it.
    pub fn wants_input(&self) -> bool {
        !self.closed && self.queued() <= WBUF_HIGH
    }

    /// The next piece of work for the bdev bridge.
    pub fn next_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    /// The command in request slot `slot`.
    pub fn sqe(&self, slot: usize) -> Sqe {
        self.reqs[slot].sqe
    }

    /// The transfer length of request `slot` (bytes, from its SGL).
    pub fn xfer_len(&self, slot: usize) -> usize {
        self.reqs[slot].len
    }

    /// The data buffer of request `slot`, if it has one.
    pub fn buf_mut(&mut self, slot: usize) -> Option<&mut [u8]> {
        self.reqs[slot].buf.as_deref_mut()
    }

    /// Gives request `slot` a data buffer of `len` bytes if it has none
    /// (a read's); false if none could be had.
    pub fn ensure_buf(&mut self, slot: usize, len: usize) -> bool {
        if self.reqs[slot].buf.is_some() {
            return true;
        }
        match self.get_buf(len) {
            Some(b) => {
                self.reqs[slot].buf = Some(b);
                true
            }
            None => false,
        }
    }

    /// The bdev bridge submitted request `slot`'s I/O (one completion to
    /// come through [`Conn::io_done`]).
    pub fn io_submitted(&mut self, slot: usize) {
        rspdk_trace::record(
            crate::trace::REQ_EXECUTING,
            crate::trace::req_id(self.id(), slot),
            &[self.id()],
        );
        self.reqs[slot].pending = 1;
        self.p.stats.pending_bdev_io.fetch_add(1, Ordering::Relaxed);
    }

    /// One bdev I/O of request `slot` ended with `st`; the last one
    /// completes the command (the first failure is its status). On a
    /// closed connection the slot is only freed.
    pub fn io_done(&mut self, slot: usize, st: Status) {
        rspdk_trace::record(
            crate::trace::REQ_EXECUTED,
            crate::trace::req_id(self.id(), slot),
            &[self.id(), u64::from(st != generic::SUCCESS)],
        );
        let Some(r) = self.reqs.get_mut(slot) else {
            return;
        };
        if r.status == generic::SUCCESS && st != generic::SUCCESS {
            r.status = st;
        }
        r.pending = r.pending.saturating_sub(1);
        if r.pending > 0 {
            return;
        }
        let status = r.status;
        self.p.stats.pending_bdev_io.fetch_sub(1, Ordering::Relaxed);
        if self.closed {
            let r = &mut self.reqs[slot];
            r.state = ReqState::Free;
            r.buf = None; // back to its pool
            return;
        }
        self.complete(slot, status, 0);
    }

    /// The compare-and-write of `first` (Compare) and `second` (Write)
    /// ended with `st`: a miscompare fails the Compare with Compare Failure
    /// and aborts the Write.
    pub fn compare_and_write_done(&mut self, first: usize, second: usize, st: Status) {
        self.p.stats.pending_bdev_io.fetch_sub(1, Ordering::Relaxed);
        if self.closed {
            for s in [first, second] {
                let r = &mut self.reqs[s];
                r.state = ReqState::Free;
                r.buf = None; // back to its pool
            }
            return;
        }
        let (a, b) = match st {
            generic::SUCCESS => (generic::SUCCESS, generic::SUCCESS),
            media::COMPARE_FAILURE => (media::COMPARE_FAILURE, FUSED_FAILED_AS_SENT),
            other => (other, FUSED_FAILED_AS_SENT),
        };
        self.complete(first, a, 0);
        self.complete(second, b, 0);
    }

    /// Completes with data produced by an admin handler.
    fn complete_with(&mut self, slot: usize, status: Status, dw0: u32, data: &[u8]) {
        if status == generic::SUCCESS && self.reqs[slot].c2h {
            let len = self.reqs[slot].len;
            let mut b = match self.reqs[slot].buf.take() {
                Some(b) => b,
                None => match self.get_buf(len) {
                    Some(b) => b,
                    None => return self.complete(slot, generic::INTERNAL, 0),
                },
            };
            let n = len.min(data.len());
            b[..n].copy_from_slice(&data[..n]);
            b[n..len].fill(0);
            self.reqs[slot].buf = Some(b);
        }
        self.complete(slot, status, dw0);
    }

    fn alloc_slot(&mut self) -> Option<usize> {
        if let Some(s) = self.free.pop() {
            return Some(s as usize);
        }
        let limit = self
            .q
            .as_ref()
            .map_or(self.p.opts.max_aq_depth as usize, |q| {
                (q.sqsize as usize + 1).max(2)
            })
            + MAX_AERS;
        if self.reqs.len() < limit.min(u16::MAX as usize) {
            self.reqs.push(Req::new());
            return Some(self.reqs.len() - 1);
        }
        None
    }
}
