//! Connections (queue pairs) of the TCP transport, run by poll groups.
//!
//! Each poll group is a lightweight thread on one reactor; it owns its
//! connections and polls them from one poller: a non-blocking `read` into
//! the connection's receive buffer, every PDU parsed and handled, then the
//! queued output written with non-blocking `writev`s. The payload of a
//! command capsule or H2CData PDU goes to the command's DMA buffer as soon
//! as its header is in (the rest of it read straight there with `readv`);
//! C2HData is sent from the bdev's buffer (an iovec of the `writev`).
//! Commands become bdev I/O on the poll group's channels; their callbacks
//! (on the same thread) queue the C2HData and response PDUs. Request
//! slots, data buffers (DMA memory, reused by size class), the receive and
//! send buffers and the output queue are kept per connection: after
//! warm-up a command allocates nothing.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rspdk_bdev::{BdevDesc, BdevError, BdevIoChannel, IoStatus, IoType, IoVec};
use rspdk_nvme::spec::fabrics::{
    self, connect_cmd_field, connect_field, fctype, Connect, ConnectData, Property,
};
use rspdk_nvme::spec::status::{command_specific, generic, media, Status};
use rspdk_nvme::spec::{
    abort, aec, aer, cc, cns, csts, dsm, feature, fuse, log_page, oncs, reg, xfer, AdminOpcode,
    Cqe, DsmRange, IoOpcode, SglDescriptor, Sqe, NSID_ALL,
};
use rspdk_nvme::tcp::PduError;
use rspdk_thread::iobuf::{self, DmaData, IobufModule};
use rspdk_thread::{Interrupt, Poller, PollerStatus, Thread};

use crate::admin;
use crate::error::NvmfError;
use crate::pdu::{self, fes, DataHeader, Digests, IcResp, Pdu};
use crate::target::{
    lock, target, Controller, PollGroupStats, QpairInfo, Subsystem, TransportOpts, DISCOVERY_NQN,
};

/// What the Write of a fused compare-and-write ends with when its Compare
/// failed, and what both halves of a broken pair end with. These are not
/// the codes the spec names for the cases (Command Aborted due to Failed /
/// Missing Fused Command, 0x09 and 0x0a) but the ones the target has
/// always sent, (0, 0x05) and (0, 0x06), which the end-to-end test
/// `fused_compare_and_write` asserts; changing them is a behaviour change
/// for its own issue.
const FUSED_FAILED_AS_SENT: Status = generic::ABORTED_POWER_LOSS;
/// See [`FUSED_FAILED_AS_SENT`].
const FUSED_MISSING_AS_SENT: Status = generic::INTERNAL;

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
const MAX_IOV: usize = 64;
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

/// Set when any poll group runs a connection (tests and stats).
pub static CONNECTIONS_EVER: AtomicU64 = AtomicU64::new(0);
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);
/// Discovery log generation counter, bumped on every change.
pub static DISCOVERY_GENCTR: AtomicU64 = AtomicU64::new(1);

struct PollGroup {
    conns: RefCell<Vec<Rc<Conn>>>,
    poller: RefCell<Option<Poller>>,
}

thread_local! {
    static PG: RefCell<Option<Rc<PollGroup>>> = const { RefCell::new(None) };
}

/// Sets up the poll group state on its thread.
pub(crate) fn poll_group_init(stats: Arc<PollGroupStats>) {
    let pg = Rc::new(PollGroup {
        conns: RefCell::new(Vec::new()),
        poller: RefCell::new(None),
    });
    drop(stats);
    PG.with(|p| *p.borrow_mut() = Some(pg));
    if let Some(t) = Thread::current() {
        t.on_exit(|| {
            if let Some(pg) = PG.with(|p| p.borrow_mut().take()) {
                if let Some(p) = pg.poller.borrow_mut().take() {
                    p.unregister();
                }
                for c in pg.conns.borrow_mut().drain(..) {
                    c.inner.borrow_mut().close("target shutting down");
                }
            }
        });
    }
}

/// Takes a new connection on this poll group.
pub(crate) fn accept(
    stream: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    stats: Arc<PollGroupStats>,
    pg_name: String,
    tgt: String,
) {
    let Some(pg) = PG.with(|p| p.borrow().clone()) else {
        return;
    };
    if let Err(e) = stream.set_nonblocking(true) {
        tracing::warn!(%peer, error = %e, "nvmf: cannot make the socket non-blocking");
        return;
    }
    let _ = stream.set_nodelay(true);
    let opts = target()
        .tgt(Some(&tgt))
        .ok()
        .and_then(|t| t.transport.clone());
    let Some(opts) = opts else { return };
    let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    CONNECTIONS_EVER.fetch_add(1, Ordering::Relaxed);
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let conn = Rc::new(Conn {
        id,
        inner: RefCell::new(ConnInner::new(
            id, stream, local, peer, opts, stats, pg_name, tgt,
        )),
    });
    tracing::info!(%peer, %local, conn = id, "nvmf: TCP connection accepted");
    let thread = Thread::current();
    let interrupt = thread.as_ref().is_some_and(|t| t.is_interrupt_mode());
    if let (true, Some(t)) = (interrupt, thread.as_ref()) {
        // Interrupt mode: the socket wakes the thread when data arrives;
        // completions send at once; a 1 ms poller does the rest.
        let weak = Rc::downgrade(&conn);
        let fd = conn.inner.borrow().stream.as_raw_fd();
        match t.interrupt_register(fd, "nvmf_tcp_conn", move || match weak.upgrade() {
            Some(c) if Conn::poll(&c) => PollerStatus::Busy,
            _ => PollerStatus::Idle,
        }) {
            Ok(i) => {
                let mut ci = conn.inner.borrow_mut();
                ci.intr = Some(i);
                ci.interrupt = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "nvmf: no socket interrupt; polling this connection")
            }
        }
    }
    pg.conns.borrow_mut().push(conn);
    if pg.poller.borrow().is_none() {
        if let Some(t) = thread {
            let period = if interrupt { 1000 } else { 0 };
            let p = t.poller_register("nvmf_tcp_poll_group", period, |_| poll_group());
            *pg.poller.borrow_mut() = Some(p);
        }
    }
}

fn poll_group() -> PollerStatus {
    let Some(pg) = PG.with(|p| p.borrow().clone()) else {
        return PollerStatus::Idle;
    };
    let mut busy = false;
    let n = pg.conns.borrow().len();
    let mut any_closed = false;
    for i in 0..n {
        let c = match pg.conns.borrow().get(i) {
            Some(c) => c.clone(),
            None => break,
        };
        busy |= Conn::poll(&c);
        any_closed |= c.inner.borrow().closed;
    }
    if any_closed {
        pg.conns.borrow_mut().retain(|c| !c.inner.borrow().closed);
        if pg.conns.borrow().is_empty() {
            if let Some(p) = pg.poller.borrow_mut().take() {
                p.unregister();
            }
        }
    }
    if busy {
        PollerStatus::Busy
    } else {
        PollerStatus::Idle
    }
}

/// Completes an outstanding AER on connection `conn_id` if a namespace
/// notice is pending (runs on the admin queue's thread).
pub(crate) fn deliver_aen(conn_id: u64) {
    let Some(pg) = PG.with(|p| p.borrow().clone()) else {
        return;
    };
    let c = pg.conns.borrow().iter().find(|c| c.id == conn_id).cloned();
    if let Some(c) = c {
        let mut i = c.inner.borrow_mut();
        i.try_aen();
        i.flush();
    }
}

/// A connection: one NVMe queue pair.
pub(crate) struct Conn {
    id: u64,
    inner: RefCell<ConnInner>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ReqState {
    Free,
    /// Waiting for H2CData after an R2T.
    AwaitData,
    /// Executing (bdev I/O or admin).
    Exec,
    /// An AER waiting for an event.
    Aer,
}

struct Req {
    state: ReqState,
    cid: u16,
    sqe: Sqe,
    buf: Option<DmaData>,
    /// Transfer length (bytes) from the SGL.
    len: usize,
    /// H2C bytes received so far.
    recvd: usize,
    /// C2H: the command returns data.
    c2h: bool,
    /// Bdev I/Os still running (DSM ranges).
    pending: u32,
    status: Status,
}

impl Req {
    fn new() -> Req {
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

struct Qpair {
    ctrlr: Arc<Controller>,
    qid: u16,
    sqsize: u16,
    sqhd: u16,
    sqflow_off: bool,
}

struct NsChan {
    nsid: u32,
    desc: Arc<BdevDesc>,
    ch: BdevIoChannel,
    block_size: u64,
}

/// A piece of queued output, sent in order by [`ConnInner::flush`].
enum OutSeg {
    /// The next `.0` bytes of `wbuf` (headers, responses, digests).
    Inline(usize),
    /// C2H data sent straight from a command's buffer, which the queue owns
    /// until the socket took the bytes (then it goes back to the pool).
    Data {
        buf: DmaData,
        off: usize,
        len: usize,
    },
}

/// Where the payload of a data-carrying PDU goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RxKind {
    /// In-capsule data of a command.
    Capsule,
    /// H2CData answering an R2T.
    H2c,
}

/// The receive side between and inside PDUs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rx {
    /// At a PDU boundary: headers are parsed from `rbuf`.
    Hdr,
    /// A command capsule's or an H2CData PDU's data goes straight to
    /// `reqs[slot].buf[off..end]` (from `rbuf` what a read already brought,
    /// the rest read from the socket into the buffer), then `dneed` digest
    /// bytes (CRC32C of `buf[start..end]`).
    Data {
        kind: RxKind,
        slot: usize,
        start: usize,
        off: usize,
        end: usize,
        dgst: [u8; 4],
        dgot: usize,
        dneed: usize,
    },
    /// Data (and digest) of a PDU whose command has already failed.
    Discard { left: usize },
}

/// What [`ConnInner::data_pdu_header`] made of the bytes at a PDU boundary.
enum HdrStep {
    /// Not a data-carrying capsule or H2CData PDU: parse it whole.
    Whole,
    /// Its header is not all here yet.
    NeedMore,
    /// Its header (this many bytes) was taken; its data follows.
    Taken(usize),
}

struct ConnInner {
    /// The NVMe-oF target whose listener accepted the connection.
    tgt: String,
    id: u64,
    stream: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    opts: TransportOpts,
    stats: Arc<PollGroupStats>,
    pg_name: String,
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
    /// Queued output in order: `wbuf` runs and DMA data buffers.
    out: VecDeque<OutSeg>,
    /// Bytes of DMA data queued in `out`.
    out_data: usize,
    /// The socket's interrupt (interrupt mode).
    intr: Option<Interrupt>,
    /// Interrupt mode: send completions at once.
    interrupt: bool,
    ic_done: bool,
    digests: Digests,
    max_plen: u32,
    closed: bool,
    q: Option<Qpair>,
    reqs: Vec<Req>,
    free: Vec<u16>,
    ns: Vec<NsChan>,
    ns_gen: u64,
    /// A namespace had no bdev channel at the last refresh: retry.
    ns_missing: bool,
    /// The first (Compare) half of a fused compare-and-write, waiting for
    /// its Write.
    fused_first: Option<usize>,
    /// When the connection was accepted (for the handshake timeout).
    accepted_ns: u64,
    /// The ONCS bits `masked_oncs` hides, worked out once from the
    /// transport options (not per command).
    oncs_masked: u16,
}

/// The NVMe/TCP target's iobuf user (SPDK names its module `nvmf_TCP`).
fn iobuf_module() -> &'static IobufModule {
    static M: std::sync::OnceLock<IobufModule> = std::sync::OnceLock::new();
    M.get_or_init(|| iobuf::register_module("nvmf_TCP"))
}

impl ConnInner {
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: u64,
        stream: TcpStream,
        local: SocketAddr,
        peer: SocketAddr,
        opts: TransportOpts,
        stats: Arc<PollGroupStats>,
        pg_name: String,
        tgt: String,
    ) -> ConnInner {
        let oncs_masked = opts.oncs_mask();
        ConnInner {
            tgt,
            oncs_masked,
            id,
            stream,
            local,
            peer,
            opts,
            stats,
            pg_name,
            rbuf: vec![0; RBUF_FIRST],
            rlen: 0,
            rx: Rx::Hdr,
            maxr2t: 0,
            wbuf: Vec::with_capacity(RBUF_FIRST),
            accepted_ns: rspdk_thread::now_ns(),
            wpos: 0,
            wmark: 0,
            out: VecDeque::with_capacity(2 * MAX_IOV),
            out_data: 0,
            intr: None,
            interrupt: false,
            ic_done: false,
            digests: Digests::default(),
            max_plen: pdu::IC_LEN as u32,
            closed: false,
            q: None,
            reqs: Vec::new(),
            free: Vec::new(),
            ns: Vec::new(),
            ns_gen: u64::MAX,
            ns_missing: false,
            fused_first: None,
        }
    }

    fn maxh2cdata(&self) -> u32 {
        self.opts.max_io_size.min(131072)
    }

    /// A data buffer of `len` bytes: from iobuf (module `nvmf_TCP`), or,
    /// when iobuf's pool is exhausted, DMA memory from the env's heap (the
    /// connection's queue depth bounds how many it holds at once).
    fn get_buf(&mut self, len: usize) -> Option<DmaData> {
        match DmaData::get_now(iobuf_module(), len) {
            Some(Ok(b)) => Some(b),
            None => DmaData::from_env(len).ok(),
            Some(Err(e)) => {
                tracing::warn!(conn = self.id, error = %e, "NVMe/TCP data buffer");
                None
            }
        }
    }

    fn close(&mut self, why: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.flush();
        if let Some(i) = self.intr.take() {
            i.unregister();
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
        target().qpairs.remove(&self.id);
        if let Some(q) = self.q.take() {
            if q.qid == 0 {
                self.stats
                    .current_admin_qpairs
                    .fetch_sub(1, Ordering::Relaxed);
                q.ctrlr.dead.store(true, Ordering::Release);
                lock(&q.ctrlr.subsys.controllers).retain(|c| !Arc::ptr_eq(c, &q.ctrlr));
            } else {
                self.stats.current_io_qpairs.fetch_sub(1, Ordering::Relaxed);
                if let Some(b) = lock(&q.ctrlr.qids).get_mut(q.qid as usize) {
                    *b = false;
                }
            }
        }
        self.ns.clear();
        tracing::info!(peer = %self.peer, conn = self.id, reason = why, "nvmf: connection closed");
    }

    /// Sends a C2HTermReq for `e` and closes.
    fn terminate(&mut self, e: &NvmfError, header: &[u8]) {
        let (fes_v, fei) = match e {
            NvmfError::Pdu(PduError::BadPdu { fes, offset, .. }) => (*fes, *offset),
            NvmfError::Pdu(PduError::Digest { .. }) => (fes::HDGST_ERROR, 0),
            _ => (fes::INVALID_HEADER_FIELD, 0),
        };
        tracing::warn!(peer = %self.peer, conn = self.id, error = %e, "nvmf: terminating the connection");
        let n = header.len().min(pdu::TERM_REQ_MAX_DATA);
        Pdu::C2hTermReq {
            fes: fes_v as u16,
            fei,
            data: &header[..n],
        }
        .emit(&mut self.wbuf, Digests::default());
        self.close(&e.to_string());
    }

    /// Output bytes waiting for the socket.
    fn queued(&self) -> usize {
        self.wbuf.len() - self.wpos + self.out_data
    }

    /// Describes the `wbuf` bytes appended since the last call in `out`.
    fn seal(&mut self) {
        if self.wbuf.len() > self.wmark {
            let n = self.wbuf.len() - self.wmark;
            match self.out.back_mut() {
                Some(OutSeg::Inline(m)) => *m += n,
                _ => self.out.push_back(OutSeg::Inline(n)),
            }
            self.wmark = self.wbuf.len();
        }
    }

    /// Queues `len` bytes of `buf` to be sent from the buffer itself.
    fn push_data(&mut self, buf: DmaData, len: usize) {
        self.seal();
        self.out_data += len;
        self.out.push_back(OutSeg::Data { buf, off: 0, len });
    }

    /// Drops `sent` bytes from the front of the queue; buffers fully sent go
    /// back to the pool.
    fn advance(&mut self, mut sent: usize) {
        while sent > 0 {
            let Some(front) = self.out.front_mut() else {
                break;
            };
            let done = match front {
                OutSeg::Inline(len) => {
                    let k = sent.min(*len);
                    self.wpos += k;
                    *len -= k;
                    sent -= k;
                    *len == 0
                }
                OutSeg::Data { off, len, .. } => {
                    let k = sent.min(*len);
                    *off += k;
                    *len -= k;
                    sent -= k;
                    self.out_data -= k;
                    *len == 0
                }
            };
            if done {
                if let Some(OutSeg::Data { buf, .. }) = self.out.pop_front() {
                    drop(buf); // back to iobuf (or the env heap)
                }
            }
        }
        if self.out.is_empty() {
            self.wbuf.clear();
            self.wpos = 0;
            self.wmark = 0;
        }
    }

    /// Writes queued output with non-blocking `writev`s (up to [`MAX_IOV`]
    /// pieces each) until the socket is full or nothing is left. True if
    /// anything was sent.
    fn flush(&mut self) -> bool {
        self.seal();
        let mut did = false;
        while !self.out.is_empty() {
            let (r, total) = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let (mut n, mut total, mut w) = (0, 0, self.wpos);
                for seg in self.out.iter().take(MAX_IOV) {
                    let s: &[u8] = match seg {
                        OutSeg::Inline(len) => {
                            w += len;
                            &self.wbuf[w - len..w]
                        }
                        OutSeg::Data { buf, off, len } => &buf[*off..*off + *len],
                    };
                    iov[n] = IoSlice::new(s);
                    n += 1;
                    total += s.len();
                }
                (self.stream.write_vectored(&iov[..n]), total)
            };
            match r {
                Ok(0) => break,
                Ok(n) => {
                    self.advance(n);
                    did = true;
                    if n < total {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.out.clear();
                    self.out_data = 0;
                    self.wbuf.clear();
                    self.wpos = 0;
                    self.wmark = 0;
                    if !self.closed {
                        self.close("write failed");
                    }
                    return did;
                }
            }
        }
        did
    }

    fn try_aen(&mut self) {
        let Some(q) = &self.q else { return };
        if q.qid != 0 || !q.ctrlr.aen_pending.load(Ordering::Acquire) {
            return;
        }
        let Some(slot) = self.reqs.iter().position(|r| r.state == ReqState::Aer) else {
            return;
        };
        q.ctrlr.aen_pending.store(false, Ordering::Release);
        let dw0 = aer::dw0(
            aer::TYPE_NOTICE,
            aer::NOTICE_NS_ATTR_CHANGED,
            log_page::CHANGED_NS_LIST,
        );
        self.complete(slot, generic::SUCCESS, dw0);
    }

    /// Queues the response of request `slot` (and its C2H data) and frees it.
    fn complete(&mut self, slot: usize, status: Status, dw0: u32) {
        let (cid, c2h, len) = {
            let r = &self.reqs[slot];
            (r.cid, r.c2h, r.len)
        };
        let mut buf = self.reqs[slot].buf.take();
        let ok = status == generic::SUCCESS;
        let mut skip_resp = false;
        if ok && c2h && len > 0 {
            if let Some(b) = buf.take() {
                let success = self.opts.c2h_success
                    && self.q.as_ref().is_some_and(|q| q.sqflow_off)
                    && dw0 == 0;
                let dlen = len.min(b.len());
                let hdr = DataHeader {
                    cccid: cid,
                    ttag: 0,
                    datao: 0,
                    datal: dlen as u32,
                };
                let mut f = pdu::flags::LAST_PDU;
                if success {
                    f |= pdu::flags::SUCCESS;
                }
                pdu::emit_c2h_data_header(&mut self.wbuf, &hdr, f, self.digests);
                if dlen <= INLINE_DATA_MAX {
                    self.wbuf.extend_from_slice(&b[..dlen]);
                    pdu::finish_c2h_data(&mut self.wbuf, &b[..dlen], self.digests);
                    drop(b); // back to iobuf (or the env heap)
                } else {
                    // Header, data and digest go out in one `writev` with
                    // the rest of this poll's output; no copy of the data.
                    let dg = self.digests.data.then(|| pdu::crc32c(&b[..dlen]));
                    self.push_data(b, dlen);
                    if let Some(d) = dg {
                        self.wbuf.extend_from_slice(&d.to_le_bytes());
                    }
                }
                skip_resp = success;
            }
        }
        if let Some(b) = buf {
            drop(b); // back to iobuf (or the env heap)
        }
        if !skip_resp {
            let (sqhd, sqid) = self.q.as_ref().map_or((0, 0), |q| (q.sqhd, q.qid));
            let cqe = Cqe::new(cid, status, dw0, sqhd, sqid);
            pdu::emit_capsule_resp(&mut self.wbuf, &cqe, self.digests);
        }
        let r = &mut self.reqs[slot];
        r.state = ReqState::Free;
        r.pending = 0;
        self.free.push(slot as u16);
        self.stats.completed_nvme_io.fetch_add(1, Ordering::Relaxed);
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
            .map_or(self.opts.max_aq_depth as usize, |q| {
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

impl Conn {
    /// One poll: flush, read, handle whole PDUs, flush. True if busy.
    fn poll(this: &Rc<Conn>) -> bool {
        let mut i = this.inner.borrow_mut();
        if i.closed {
            return false;
        }
        let mut busy = i.flush();
        if i.q.is_none()
            && rspdk_thread::now_ns().saturating_sub(i.accepted_ns) > HANDSHAKE_TIMEOUT_NS
        {
            i.close("no ICReq and Connect within 10 s");
            return true;
        }
        if let Some(q) = &i.q {
            if q.ctrlr.dead.load(Ordering::Acquire) {
                i.close("controller gone");
                return true;
            }
            let kato = q.ctrlr.kato_ms.load(Ordering::Relaxed) as u64;
            if q.qid == 0 && kato > 0 {
                let last = q.ctrlr.last_keep_alive.load(Ordering::Relaxed);
                let now = rspdk_thread::now_ns();
                if now > last + kato * 1_000_000 * 2 {
                    i.close("keep alive timeout");
                    return true;
                }
            }
        }
        if i.queued() > WBUF_HIGH {
            return busy;
        }
        let r = if i.rlen == 0 && matches!(i.rx, Rx::Data { .. }) {
            i.read_direct()
        } else {
            let ConnInner {
                stream, rbuf, rlen, ..
            } = &mut *i;
            if *rlen == rbuf.len() {
                let want = rbuf.len() * 2;
                rbuf.resize(want, 0);
            }
            stream.read(&mut rbuf[*rlen..]).inspect(|&n| *rlen += n)
        };
        match r {
            Ok(0) => {
                i.close("peer closed the connection");
                return true;
            }
            Ok(_) => busy = true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                i.close(&format!("read failed: {e}"));
                return true;
            }
        }
        if busy {
            i.process(this);
            i.flush();
        }
        busy
    }
}

impl ConnInner {
    /// Reads the rest of the PDU being received straight into its command's
    /// buffer, the data digest after it and whatever follows into `rbuf`,
    /// with one `readv` (`rbuf` is empty). Returns the bytes read.
    fn read_direct(&mut self) -> std::io::Result<usize> {
        let ConnInner {
            stream,
            rbuf,
            rlen,
            rx,
            reqs,
            ..
        } = self;
        let Rx::Data {
            slot,
            off,
            end,
            dgst,
            dgot,
            dneed,
            ..
        } = rx
        else {
            return Ok(0);
        };
        let Some(b) = reqs.get_mut(*slot).and_then(|r| r.buf.as_mut()) else {
            return Err(std::io::Error::other(
                "receive buffer of the command is gone",
            ));
        };
        let n = {
            let mut iov = [
                std::io::IoSliceMut::new(&mut b[*off..*end]),
                std::io::IoSliceMut::new(&mut dgst[*dgot..*dneed]),
                std::io::IoSliceMut::new(&mut rbuf[..]),
            ];
            stream.read_vectored(&mut iov)?
        };
        let k = n.min(*end - *off);
        *off += k;
        let d = (n - k).min(*dneed - *dgot);
        *dgot += d;
        *rlen = n - k - d;
        Ok(n)
    }

    /// Handles every whole PDU in the receive buffer; payloads of capsules
    /// and H2CData go to their command's buffer as they come.
    fn process(&mut self, this: &Rc<Conn>) {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let mut off = 0;
        loop {
            if self.closed {
                break;
            }
            if let Rx::Data {
                off: o,
                end,
                dgot,
                dneed,
                ..
            } = self.rx
            {
                if o == end && dgot == dneed {
                    self.rx_done(this);
                    continue;
                }
            }
            if off >= self.rlen {
                break;
            }
            if self.rx != Rx::Hdr {
                off += self.rx_feed(&rbuf[off..self.rlen]);
                continue;
            }
            let avail = &rbuf[off..self.rlen];
            match self.data_pdu_header(this, avail) {
                Ok(HdrStep::Taken(n)) => {
                    off += n;
                    continue;
                }
                Ok(HdrStep::NeedMore) => break,
                Ok(HdrStep::Whole) => {}
                Err(e) => {
                    let hl = avail.get(pdu::field::HLEN).copied().unwrap_or(8) as usize;
                    let h = avail[..hl.clamp(8, avail.len().max(8)).min(avail.len())].to_vec();
                    self.terminate(&e, &h);
                    break;
                }
            }
            match pdu::parse(avail, self.digests, self.max_plen) {
                Ok(None) => {
                    // Make room for a PDU larger than the buffer.
                    if let Some(ch) = pdu::CommonHeader::parse(avail) {
                        if ch.plen as usize > rbuf.len() - off {
                            rbuf.copy_within(off..self.rlen, 0);
                            self.rlen -= off;
                            off = 0;
                            if ch.plen as usize > rbuf.len() {
                                rbuf.resize(ch.plen as usize, 0);
                            }
                        }
                    }
                    break;
                }
                Ok(Some((p, used))) => {
                    if let Err(e) = self.handle(this, p) {
                        let hl = avail.get(pdu::field::HLEN).copied().unwrap_or(8) as usize;
                        let h = avail[..hl.min(avail.len())].to_vec();
                        self.terminate(&e, &h);
                    }
                    off += used;
                }
                Err(e) => {
                    let hl = avail.get(pdu::field::HLEN).copied().unwrap_or(8) as usize;
                    let h = avail[..hl.clamp(8, avail.len().max(8)).min(avail.len())].to_vec();
                    self.terminate(&NvmfError::from(e), &h);
                }
            }
        }
        if off > 0 {
            rbuf.copy_within(off..self.rlen, 0);
            self.rlen -= off;
        }
        self.rbuf = rbuf;
        // A connection gets its full-size buffers once its ICReq is in:
        // until then (and for connections that never send one) it holds
        // only a few KiB.
        if self.ic_done && self.rbuf.len() < RBUF_STEADY {
            self.rbuf.resize(RBUF_STEADY, 0);
            self.wbuf.reserve(RBUF_STEADY);
        }
    }

    /// At a PDU boundary: takes the header of a command capsule with
    /// in-capsule data or of an H2CData PDU as soon as the header is here,
    /// so that the data can go straight to the command's buffer. Other PDUs
    /// (and these without data) are parsed whole by [`pdu::parse`].
    fn data_pdu_header(&mut self, this: &Rc<Conn>, avail: &[u8]) -> Result<HdrStep, NvmfError> {
        let Some(ch) = pdu::CommonHeader::parse(avail) else {
            return Ok(HdrStep::NeedMore);
        };
        if !self.ic_done
            || !matches!(
                ch.pdu_type,
                pdu::pdu_type::CAPSULE_CMD | pdu::pdu_type::H2C_DATA
            )
        {
            return Ok(HdrStep::Whole);
        }
        // Every length rule depends on the common header alone: checked
        // here before any data is awaited.
        pdu::parse(&avail[..pdu::CH_LEN], self.digests, self.max_plen)?;
        let hlen = ch.hlen as usize;
        let hd = if self.digests.header {
            pdu::DIGEST_LEN
        } else {
            0
        };
        let plen = ch.plen as usize;
        if plen <= hlen + hd {
            return Ok(HdrStep::Whole);
        }
        let pdo = ch.pdo as usize;
        if avail.len() < pdo {
            return Ok(HdrStep::NeedMore);
        }
        if hd > 0 {
            pdu::check_header_digest(avail, hlen)?;
        }
        let dneed = if self.digests.data {
            pdu::DIGEST_LEN
        } else {
            0
        };
        let datal = plen - pdo - dneed;
        let h = &avail[..hlen];
        let (kind, dest) = if ch.pdu_type == pdu::pdu_type::CAPSULE_CMD {
            let sqe = pdu::capsule_sqe(h).ok_or_else(|| {
                NvmfError::pdu(
                    fes::INVALID_HEADER_FIELD,
                    pdu::field::HLEN as u32,
                    "short capsule header",
                )
            })?;
            (RxKind::Capsule, self.capsule_start(this, sqe, datal)?)
        } else {
            let hdr = DataHeader::parse(h).ok_or_else(|| {
                NvmfError::pdu(
                    fes::INVALID_HEADER_FIELD,
                    pdu::field::HLEN as u32,
                    "short H2CData header",
                )
            })?;
            if hdr.datal as usize != datal {
                return Err(NvmfError::pdu(
                    fes::INVALID_HEADER_FIELD,
                    pdu::field::DATAL.start as u32,
                    format!("DATAL {} but the PDU holds {datal} data bytes", hdr.datal),
                ));
            }
            (RxKind::H2c, Some(self.h2c_start(hdr)?))
        };
        self.rx = match dest {
            Some((slot, start)) => Rx::Data {
                kind,
                slot,
                start,
                off: start,
                end: start + datal,
                dgst: [0; 4],
                dgot: 0,
                dneed,
            },
            None => Rx::Discard {
                left: datal + dneed,
            },
        };
        Ok(HdrStep::Taken(pdo))
    }

    /// Moves payload bytes from `src` (the receive buffer) to where the
    /// current PDU's data goes; returns how many it took.
    fn rx_feed(&mut self, src: &[u8]) -> usize {
        match &mut self.rx {
            Rx::Hdr => 0,
            Rx::Discard { left } => {
                let k = (*left).min(src.len());
                *left -= k;
                if *left == 0 {
                    self.rx = Rx::Hdr;
                }
                k
            }
            Rx::Data {
                slot,
                off,
                end,
                dgst,
                dgot,
                dneed,
                ..
            } => {
                let k = (*end - *off).min(src.len());
                if let Some(b) = self.reqs.get_mut(*slot).and_then(|r| r.buf.as_mut()) {
                    b[*off..*off + k].copy_from_slice(&src[..k]);
                }
                *off += k;
                let d = (*dneed - *dgot).min(src.len() - k);
                dgst[*dgot..*dgot + d].copy_from_slice(&src[k..k + d]);
                *dgot += d;
                k + d
            }
        }
    }

    /// The current PDU's data and digest are all in: check the digest, then
    /// run the command (capsule, or the last H2CData of its transfer). A
    /// digest mismatch fails the command with Transient Transport Error and
    /// keeps the connection (NVMe/TCP, TP 8000 section 7.4.6, "PDU Header
    /// and Data Digests").
    fn rx_done(&mut self, this: &Rc<Conn>) {
        let Rx::Data {
            kind,
            slot,
            start,
            end,
            dgst,
            dneed,
            ..
        } = std::mem::replace(&mut self.rx, Rx::Hdr)
        else {
            return;
        };
        let mut bad = false;
        if dneed > 0 {
            let got = u32::from_le_bytes(dgst);
            let want = self.reqs[slot]
                .buf
                .as_ref()
                .map_or(got, |b| pdu::crc32c(&b[start..end]));
            if got != want {
                bad = true;
                let e = PduError::Digest {
                    kind: "data",
                    got,
                    want,
                };
                tracing::warn!(peer = %self.peer, conn = self.id, cid = self.reqs[slot].cid, error = %e,
                    "nvmf: the command fails with Transient Transport Error");
            }
        }
        match kind {
            RxKind::Capsule => {
                if bad {
                    self.complete(slot, generic::TRANSIENT_TRANSPORT, 0);
                } else {
                    self.exec(this, slot);
                }
            }
            RxKind::H2c => self.h2c_done(this, slot, end, bad),
        }
    }
    fn handle(&mut self, this: &Rc<Conn>, p: Pdu<'_>) -> Result<(), NvmfError> {
        match p {
            Pdu::IcReq(r) => {
                if self.ic_done {
                    return Err(NvmfError::pdu(fes::PDU_SEQUENCE_ERROR, 0, "a second ICReq"));
                }
                if r.pfv != 0 {
                    return Err(NvmfError::pdu(
                        fes::UNSUPPORTED_PARAMETER,
                        pdu::field::PFV.start as u32,
                        format!("ICReq PFV {} (only 0 is defined)", r.pfv),
                    ));
                }
                if r.hpda > 31 {
                    return Err(NvmfError::pdu(
                        fes::INVALID_HEADER_FIELD,
                        pdu::field::PDA as u32,
                        format!("ICReq HPDA {} (at most 31)", r.hpda),
                    ));
                }
                let resp = IcResp {
                    pfv: 0,
                    cpda: 0,
                    hdgst: r.hdgst,
                    ddgst: r.ddgst,
                    maxh2cdata: self.maxh2cdata(),
                };
                Pdu::IcResp(resp).emit(&mut self.wbuf, Digests::default());
                self.digests = Digests {
                    header: r.hdgst,
                    data: r.ddgst,
                };
                self.maxr2t = r.maxr2t;
                let icd = ADMIN_ICD.max(self.opts.in_capsule_data_size as usize);
                let cmd = pdu::CAPSULE_CMD_HLEN + 8 + icd;
                let data = pdu::DATA_HLEN + 8 + self.maxh2cdata() as usize;
                self.max_plen = cmd.max(data).max(pdu::IC_LEN + pdu::TERM_REQ_MAX_DATA) as u32;
                self.ic_done = true;
                Ok(())
            }
            _ if !self.ic_done => Err(NvmfError::pdu(
                fes::PDU_SEQUENCE_ERROR,
                0,
                "a PDU before the ICReq",
            )),
            Pdu::CapsuleCmd { sqe, data } => {
                if let Some((slot, _)) = self.capsule_start(this, sqe, data.len())? {
                    if let Some(b) = self.reqs[slot].buf.as_mut() {
                        b[..data.len()].copy_from_slice(data);
                    }
                    self.exec(this, slot);
                }
                Ok(())
            }
            Pdu::H2cData { hdr, data, .. } => {
                let (slot, start) = self.h2c_start(hdr)?;
                let end = start + data.len();
                if let Some(b) = self.reqs[slot].buf.as_mut() {
                    b[start..end].copy_from_slice(data);
                }
                self.h2c_done(this, slot, end, false);
                Ok(())
            }
            Pdu::H2cTermReq { fes, fei, .. } => {
                tracing::warn!(peer = %self.peer, fes, fei, "nvmf: host terminated the connection");
                self.close("host sent H2CTermReq");
                Ok(())
            }
            Pdu::Unknown { ch, .. } => Err(NvmfError::pdu(
                fes::INVALID_HEADER_FIELD,
                0,
                format!("unknown PDU type {:#x}", ch.pdu_type),
            )),
            other => Err(NvmfError::pdu(
                fes::INVALID_HEADER_FIELD,
                0,
                format!("a controller-to-host PDU from the host: {other:?}"),
            )),
        }
    }

    /// Starts a command: takes a request slot and checks the transfer. With
    /// in-capsule data (`dlen` bytes following the header) it returns where
    /// the data goes (the slot, offset 0 of its buffer) and the command runs
    /// once the data is in; `None` when it has been completed, sent an
    /// R2T or run already (any in-capsule data is then dropped).
    fn capsule_start(
        &mut self,
        this: &Rc<Conn>,
        sqe: Sqe,
        dlen: usize,
    ) -> Result<Option<(usize, usize)>, NvmfError> {
        let Some(slot) = self.alloc_slot() else {
            return Err(NvmfError::pdu(
                fes::INVALID_HEADER_FIELD,
                0,
                "more commands outstanding than the queue size",
            ));
        };
        if let Some(q) = &mut self.q {
            q.sqhd = if q.sqhd >= q.sqsize { 0 } else { q.sqhd + 1 };
        }
        let cid = sqe.cid();
        {
            let r = &mut self.reqs[slot];
            r.state = ReqState::Exec;
            r.cid = cid;
            r.sqe = sqe;
            r.len = 0;
            r.recvd = 0;
            r.c2h = false;
            r.pending = 0;
            r.status = generic::SUCCESS;
        }
        let opcode = sqe.opcode();
        let dir = if opcode == fabrics::OPCODE {
            fabrics::fctype_of(&sqe) & 3
        } else {
            opcode & 3
        };
        let len = sqe.sgl_len() as usize;
        let sgl_id = sqe.sgl_id();
        let admin = self.q.as_ref().is_none_or(|q| q.qid == 0);
        let max = if admin {
            ADMIN_MAX_XFER
        } else {
            self.opts.max_io_size as usize
        };
        if len > max {
            self.complete(slot, generic::SGL_LENGTH_INVALID, 0);
            return Ok(None);
        }
        if dir == xfer::HOST_TO_CTRLR && len > 0 {
            match sgl_id {
                SglDescriptor::ID_DATA_BLOCK_OFFSET => {
                    let icd = if admin {
                        ADMIN_ICD
                    } else {
                        self.opts.in_capsule_data_size as usize
                    };
                    let off = sqe.prp1() as usize;
                    if off != 0 || len > icd || dlen < len {
                        self.complete(slot, generic::SGL_LENGTH_INVALID, 0);
                        return Ok(None);
                    }
                    let Some(b) = self.get_buf(len.max(dlen)) else {
                        self.complete(slot, generic::INTERNAL, 0);
                        return Ok(None);
                    };
                    let r = &mut self.reqs[slot];
                    r.buf = Some(b);
                    r.len = len;
                    return Ok(Some((slot, 0)));
                }
                SglDescriptor::ID_TRANSPORT_DATA_BLOCK => {
                    if dlen > 0 {
                        self.complete(slot, generic::SGL_TYPE_INVALID, 0);
                        return Ok(None);
                    }
                    let Some(b) = self.get_buf(len) else {
                        self.complete(slot, generic::INTERNAL, 0);
                        return Ok(None);
                    };
                    let r = &mut self.reqs[slot];
                    r.buf = Some(b);
                    r.len = len;
                    r.state = ReqState::AwaitData;
                    let hdr = DataHeader {
                        cccid: cid,
                        ttag: slot as u16,
                        datao: 0,
                        datal: len as u32,
                    };
                    pdu::emit_r2t(&mut self.wbuf, &hdr, self.digests);
                    return Ok(None);
                }
                _ => {
                    self.complete(slot, generic::SGL_TYPE_INVALID, 0);
                    return Ok(None);
                }
            }
        } else if dir == xfer::CTRLR_TO_HOST && len > 0 {
            if sgl_id != SglDescriptor::ID_TRANSPORT_DATA_BLOCK
                && sgl_id != SglDescriptor::ID_DATA_BLOCK_OFFSET
            {
                self.complete(slot, generic::SGL_TYPE_INVALID, 0);
                return Ok(None);
            }
            let r = &mut self.reqs[slot];
            r.len = len;
            r.c2h = true;
        }
        self.exec(this, slot);
        Ok(None)
    }

    /// Checks an H2CData header against its R2T; returns the request slot
    /// and the offset in its buffer where the data goes.
    fn h2c_start(&mut self, hdr: DataHeader) -> Result<(usize, usize), NvmfError> {
        let slot = hdr.ttag as usize;
        let ok = self
            .reqs
            .get(slot)
            .is_some_and(|r| r.state == ReqState::AwaitData && r.cid == hdr.cccid);
        if !ok {
            return Err(NvmfError::pdu(
                fes::INVALID_HEADER_FIELD,
                pdu::field::TTAG.start as u32,
                format!(
                    "H2CData TTAG {} / CCCID {} names no R2T",
                    hdr.ttag, hdr.cccid
                ),
            ));
        }
        let r = &mut self.reqs[slot];
        let end = hdr.datao as usize + hdr.datal as usize;
        if hdr.datao as usize != r.recvd || end > r.len {
            return Err(NvmfError::pdu(
                fes::DATA_OUT_OF_RANGE,
                pdu::field::DATAO.start as u32,
                format!(
                    "H2CData DATAO {} DATAL {} (expected offset {}, transfer {})",
                    hdr.datao, hdr.datal, r.recvd, r.len
                ),
            ));
        }
        Ok((slot, hdr.datao as usize))
    }

    /// H2CData up to offset `end` of request `slot` is in (`bad`: its
    /// digest did not match). After the last one the command runs, or fails
    /// with Transient Transport Error if any digest was bad.
    fn h2c_done(&mut self, this: &Rc<Conn>, slot: usize, end: usize, bad: bool) {
        let r = &mut self.reqs[slot];
        r.recvd = end;
        if bad && r.status == generic::SUCCESS {
            r.status = generic::TRANSIENT_TRANSPORT;
        }
        if r.recvd == r.len {
            r.state = ReqState::Exec;
            if r.status == generic::SUCCESS {
                self.exec(this, slot);
            } else {
                let st = r.status;
                self.complete(slot, st, 0);
            }
        }
    }

    fn exec(&mut self, this: &Rc<Conn>, slot: usize) {
        let sqe = self.reqs[slot].sqe;
        if sqe.opcode() == fabrics::OPCODE {
            return self.fabrics(slot, &sqe);
        }
        let Some(q) = &self.q else {
            return self.complete(slot, generic::SEQUENCE_ERROR, 0);
        };
        if q.qid == 0 {
            q.ctrlr
                .last_keep_alive
                .store(rspdk_thread::now_ns(), Ordering::Relaxed);
            self.admin(slot, &sqe);
        } else {
            if !q.ctrlr.ready() {
                return self.complete(slot, generic::NS_NOT_READY, 0);
            }
            let op = IoOpcode::from(sqe.opcode());
            match (sqe.fuse(), self.fused_first.take()) {
                (fuse::NORMAL, None) => self.io(this, slot),
                (fuse::FIRST, None) if op == IoOpcode::Compare && !self.opts.fuses_masked() => {
                    self.fused_first = Some(slot)
                }
                (fuse::SECOND, Some(first)) if op == IoOpcode::Write => {
                    self.compare_and_write(this, first, slot)
                }
                (_, Some(first)) => {
                    // The pair is broken: both halves fail.
                    self.complete(first, FUSED_MISSING_AS_SENT, 0);
                    self.complete(slot, FUSED_MISSING_AS_SENT, 0);
                }
                _ => self.complete(slot, FUSED_MISSING_AS_SENT, 0),
            }
        }
    }

    fn fabrics(&mut self, slot: usize, sqe: &Sqe) {
        let fct = fabrics::fctype_of(sqe);
        match fct {
            fctype::CONNECT => self.connect(slot, sqe),
            fctype::PROPERTY_GET | fctype::PROPERTY_SET => {
                let Some(q) = &self.q else {
                    return self.complete(slot, generic::SEQUENCE_ERROR, 0);
                };
                if q.qid != 0 {
                    return self.complete(slot, generic::INVALID_FIELD, 0);
                }
                let c = q.ctrlr.clone();
                let prop = Property::parse(sqe);
                if fct == fctype::PROPERTY_GET {
                    let v: u64 = match prop.offset as usize {
                        reg::CAP => admin::cap(self.opts.max_queue_depth),
                        reg::VS => admin::VERSION as u64,
                        reg::CC => c.cc.load(Ordering::Acquire) as u64,
                        reg::CSTS => c.csts.load(Ordering::Acquire) as u64,
                        reg::INTMS | reg::INTMC | reg::NSSR | reg::AQA | reg::ASQ | reg::ACQ => 0,
                        _ => return self.complete(slot, generic::INVALID_FIELD, 0),
                    };
                    let v = if prop.eight_bytes { v } else { v & 0xffff_ffff };
                    let sqhd = self.q.as_ref().map_or(0, |q| q.sqhd);
                    // Property Get returns 8 bytes in DW0-DW1.
                    let cid = self.reqs[slot].cid;
                    let mut cqe = Cqe::new(cid, generic::SUCCESS, v as u32, sqhd, 0);
                    cqe.dw[1] = (v >> 32) as u32;
                    pdu::emit_capsule_resp(&mut self.wbuf, &cqe, self.digests);
                    let r = &mut self.reqs[slot];
                    r.state = ReqState::Free;
                    if let Some(b) = r.buf.take() {
                        drop(b); // back to iobuf (or the env heap)
                    }
                    self.free.push(slot as u16);
                } else {
                    // CC is a 4-byte property: the low dword of the value.
                    let v = prop.value as u32;
                    match prop.offset as usize {
                        reg::CC => {
                            let old = c.cc.swap(v, Ordering::AcqRel);
                            let mut csts = c.csts.load(Ordering::Acquire);
                            if v & cc::EN != 0 && old & cc::EN == 0 {
                                csts |= csts::RDY;
                            } else if v & cc::EN == 0 && old & cc::EN != 0 {
                                csts &= !csts::RDY;
                            }
                            if v & cc::SHN_MASK != 0 {
                                csts = (csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
                            } else {
                                csts &= !csts::SHST_MASK;
                            }
                            c.csts.store(csts, Ordering::Release);
                            self.complete(slot, generic::SUCCESS, 0)
                        }
                        _ => self.complete(slot, generic::INVALID_FIELD, 0),
                    }
                }
            }
            fctype::DISCONNECT => {
                self.complete(slot, generic::SUCCESS, 0);
                self.flush();
                self.close("host sent Disconnect");
            }
            _ => self.complete(slot, generic::INVALID_OPCODE, 0),
        }
    }

    fn connect_fail(&mut self, slot: usize, status: Status, data_attr: bool, ipo: u16) {
        let dw0 = fabrics::connect_invalid_dw0(ipo, data_attr);
        tracing::warn!(peer = %self.peer, status = ?status, ipo, "nvmf: Connect rejected");
        self.complete(slot, status, dw0);
    }

    fn connect(&mut self, slot: usize, sqe: &Sqe) {
        if self.q.is_some() {
            return self.complete(slot, generic::SEQUENCE_ERROR, 0);
        }
        let Connect {
            recfmt,
            qid,
            sqsize,
            cattr,
            kato,
        } = Connect::parse(sqe);
        if recfmt != 0 {
            return self.complete(slot, command_specific::CONNECT_INCOMPATIBLE_FORMAT, 0);
        }
        let data = match &self.reqs[slot].buf {
            Some(b) if self.reqs[slot].len >= ConnectData::SIZE => ConnectData::from_bytes(b),
            _ => None,
        };
        let Some(data) = data else {
            return self.connect_fail(
                slot,
                command_specific::CONNECT_INVALID_PARAMETERS,
                false,
                connect_cmd_field::DPTR,
            );
        };
        let hostid = data.hostid();
        let cntlid = data.cntlid();
        let subnqn = data.subnqn();
        let hostnqn = data.hostnqn();
        let max_sq = if qid == 0 {
            self.opts.max_aq_depth
        } else {
            self.opts.max_queue_depth
        };
        if sqsize == 0 || sqsize as u32 >= max_sq {
            return self.connect_fail(
                slot,
                command_specific::CONNECT_INVALID_PARAMETERS,
                false,
                connect_cmd_field::SQSIZE,
            );
        }
        let Some(subsys) = target()
            .tgt(Some(&self.tgt))
            .ok()
            .and_then(|t| t.find(&subnqn))
        else {
            tracing::warn!(%subnqn, "nvmf: Connect to an unknown subsystem");
            return self.connect_fail(
                slot,
                command_specific::CONNECT_INVALID_PARAMETERS,
                true,
                connect_field::SUBNQN.start as u16,
            );
        };
        if !subsys.listens_on(&self.local) {
            tracing::warn!(%subnqn, local = %self.local, "nvmf: subsystem does not listen here");
            return self.connect_fail(
                slot,
                command_specific::CONNECT_INVALID_PARAMETERS,
                true,
                connect_field::SUBNQN.start as u16,
            );
        }
        if !subsys.host_allowed(&hostnqn) {
            tracing::warn!(%subnqn, %hostnqn, "nvmf: host not allowed");
            return self.connect_fail(
                slot,
                command_specific::CONNECT_INVALID_HOST,
                true,
                connect_field::HOSTNQN.start as u16,
            );
        }
        let ctrlr = if qid == 0 {
            let Some(id) = subsys.alloc_cntlid() else {
                return self.complete(slot, command_specific::CONNECT_CONTROLLER_BUSY, 0);
            };
            let Some(t) = Thread::current() else {
                return self.complete(slot, generic::INTERNAL, 0);
            };
            let nq = self.opts.max_io_qpairs_per_ctrlr.min(65534) as u16;
            let c = Arc::new(Controller {
                cntlid: id,
                subsys: subsys.clone(),
                hostnqn: hostnqn.clone(),
                hostid,
                cc: AtomicU32::new(0),
                csts: AtomicU32::new(0),
                kato_ms: AtomicU32::new(if subsys.discovery {
                    0
                } else {
                    self.opts.effective_kato(kato)
                }),
                num_io_queues: AtomicU16::new(nq.saturating_sub(1)),
                qids: Mutex::new(vec![false; nq as usize + 1]),
                dead: AtomicBool::new(false),
                changed_ns: Mutex::new(Vec::new()),
                aen_pending: AtomicBool::new(false),
                aec: AtomicU32::new(aec::NS_ATTR_NOTICES),
                admin: (t.handle(), self.id),
                last_keep_alive: AtomicU64::new(rspdk_thread::now_ns()),
            });
            lock(&subsys.controllers).push(c.clone());
            self.stats.admin_qpairs.fetch_add(1, Ordering::Relaxed);
            self.stats
                .current_admin_qpairs
                .fetch_add(1, Ordering::Relaxed);
            c
        } else {
            if subsys.discovery {
                return self.connect_fail(
                    slot,
                    command_specific::CONNECT_INVALID_PARAMETERS,
                    false,
                    connect_cmd_field::QID,
                );
            }
            let c = lock(&subsys.controllers)
                .iter()
                .find(|c| c.cntlid == cntlid)
                .cloned();
            let Some(c) = c else {
                return self.connect_fail(
                    slot,
                    command_specific::CONNECT_INVALID_PARAMETERS,
                    true,
                    connect_field::CNTLID.start as u16,
                );
            };
            if c.hostnqn != hostnqn {
                return self.connect_fail(
                    slot,
                    command_specific::CONNECT_INVALID_PARAMETERS,
                    true,
                    connect_field::HOSTNQN.start as u16,
                );
            }
            if !c.ready() {
                return self.complete(slot, generic::SEQUENCE_ERROR, 0);
            }
            {
                let mut q = lock(&c.qids);
                let granted = c.num_io_queues.load(Ordering::Relaxed) as usize + 1;
                match q.get_mut(qid as usize) {
                    Some(used) if !*used && (qid as usize) <= granted => *used = true,
                    _ => {
                        drop(q);
                        return self.connect_fail(
                            slot,
                            command_specific::CONNECT_INVALID_PARAMETERS,
                            false,
                            connect_cmd_field::QID,
                        );
                    }
                }
            }
            self.stats.io_qpairs.fetch_add(1, Ordering::Relaxed);
            self.stats.current_io_qpairs.fetch_add(1, Ordering::Relaxed);
            c
        };
        let cid = ctrlr.cntlid;
        target().qpairs.insert(
            self.id,
            QpairInfo {
                tgt: self.tgt.clone(),
                nqn: subnqn.clone(),
                cntlid: cid,
                qid,
                thread: self.pg_name.clone(),
                local: self.local,
                peer: self.peer,
            },
        );
        tracing::info!(peer = %self.peer, %subnqn, %hostnqn, cntlid = cid, qid, sqsize, "nvmf: Connect");
        self.q = Some(Qpair {
            ctrlr,
            qid,
            sqsize,
            sqhd: 1,
            sqflow_off: cattr & fabrics::cattr::DISABLE_SQ_FLOW_CONTROL != 0,
        });
        self.reqs[slot].c2h = false;
        self.complete(slot, generic::SUCCESS, cid as u32);
    }

    fn admin(&mut self, slot: usize, sqe: &Sqe) {
        let Some(q) = &self.q else { return };
        let c = q.ctrlr.clone();
        let s: Arc<Subsystem> = c.subsys.clone();
        match AdminOpcode::from(sqe.opcode()) {
            AdminOpcode::Identify => {
                let cns = sqe.cns();
                let nsid = sqe.nsid();
                let data = match cns {
                    cns::CONTROLLER => {
                        let crdt = target().tgt(Some(&s.tgt)).map_or([0; 3], |t| t.crdt);
                        admin::identify_controller(&c, &self.opts, crdt)
                    }
                    cns::NAMESPACE if !s.discovery => {
                        let nn = if s.max_namespaces == 0 {
                            1024
                        } else {
                            s.max_namespaces
                        };
                        if nsid == 0 || (nsid > nn && nsid != NSID_ALL) {
                            return self.complete(slot, generic::INVALID_NS, 0);
                        }
                        admin::identify_namespace(&s, nsid, &c.hostnqn)
                    }
                    cns::ACTIVE_NS_LIST if !s.discovery => {
                        if nsid >= 0xffff_fffe {
                            return self.complete(slot, generic::INVALID_NS, 0);
                        }
                        admin::active_ns_list(&s, nsid, &c.hostnqn)
                    }
                    cns::NS_ID_DESCRIPTORS if !s.discovery => {
                        match admin::ns_id_descriptors(&s, nsid, &c.hostnqn) {
                            Some(d) => d,
                            None => return self.complete(slot, generic::INVALID_NS, 0),
                        }
                    }
                    _ => return self.complete(slot, generic::INVALID_FIELD, 0),
                };
                self.complete_with(slot, generic::SUCCESS, 0, &data)
            }
            AdminOpcode::GetLogPage => {
                let lid = sqe.log_lid();
                let numd = sqe.log_numd();
                let offset = sqe.log_offset();
                let page = match lid {
                    log_page::ERROR => vec![0u8; 64],
                    log_page::HEALTH_INFORMATION => admin::smart_log(),
                    log_page::FIRMWARE_SLOT => admin::firmware_log(),
                    log_page::CHANGED_NS_LIST if !s.discovery => admin::changed_ns_log(&c),
                    log_page::DISCOVERY if s.discovery => {
                        let g = DISCOVERY_GENCTR.load(Ordering::Acquire);
                        match target().tgt(Some(&s.tgt)) {
                            Ok(t) => admin::discovery_log(t, &c.hostnqn, g),
                            Err(_) => {
                                return self.complete(slot, command_specific::INVALID_LOG_PAGE, 0)
                            }
                        }
                    }
                    _ => return self.complete(slot, command_specific::INVALID_LOG_PAGE, 0),
                };
                if offset % 4 != 0 || offset as usize > page.len() {
                    return self.complete(slot, generic::INVALID_FIELD, 0);
                }
                let from = offset as usize;
                let to = (from + numd * 4).min(page.len());
                self.complete_with(slot, generic::SUCCESS, 0, &page[from..to])
            }
            AdminOpcode::GetFeatures => {
                let dw0 = match sqe.fid() {
                    feature::NUMBER_OF_QUEUES => {
                        let n = c.num_io_queues.load(Ordering::Relaxed) as u32;
                        n | (n << 16)
                    }
                    feature::KEEP_ALIVE_TIMER => c.kato_ms.load(Ordering::Relaxed),
                    feature::ASYNC_EVENT_CONFIGURATION => c.aec.load(Ordering::Relaxed),
                    feature::VOLATILE_WRITE_CACHE => 1,
                    // 343 K: the default over-temperature threshold.
                    feature::TEMPERATURE_THRESHOLD => 0x0157,
                    feature::ARBITRATION
                    | feature::POWER_MANAGEMENT
                    | feature::ERROR_RECOVERY
                    | feature::INTERRUPT_COALESCING
                    | feature::WRITE_ATOMICITY => 0,
                    _ => return self.complete(slot, generic::INVALID_FIELD, 0),
                };
                self.complete(slot, generic::SUCCESS, dw0)
            }
            AdminOpcode::SetFeatures => {
                let dw11 = sqe.dw[11];
                match sqe.fid() {
                    feature::NUMBER_OF_QUEUES => {
                        let want = (dw11 & 0xffff).max(dw11 >> 16) + 1;
                        let max = self.opts.max_io_qpairs_per_ctrlr;
                        let n = (want.min(max) - 1) as u16;
                        c.num_io_queues.store(n, Ordering::Relaxed);
                        self.complete(slot, generic::SUCCESS, n as u32 | ((n as u32) << 16))
                    }
                    feature::KEEP_ALIVE_TIMER => {
                        c.kato_ms.store(dw11, Ordering::Relaxed);
                        self.complete(slot, generic::SUCCESS, 0)
                    }
                    feature::ASYNC_EVENT_CONFIGURATION => {
                        // Only the bits of notices this target sends.
                        c.aec.store(dw11 & aec::NS_ATTR_NOTICES, Ordering::Relaxed);
                        self.complete(slot, generic::SUCCESS, 0)
                    }
                    feature::VOLATILE_WRITE_CACHE
                    | feature::TEMPERATURE_THRESHOLD
                    | feature::ARBITRATION
                    | feature::POWER_MANAGEMENT
                    | feature::ERROR_RECOVERY
                    | feature::INTERRUPT_COALESCING => self.complete(slot, generic::SUCCESS, 0),
                    _ => self.complete(slot, generic::INVALID_FIELD, 0),
                }
            }
            AdminOpcode::KeepAlive => self.complete(slot, generic::SUCCESS, 0),
            AdminOpcode::AsyncEventRequest => {
                let held = self
                    .reqs
                    .iter()
                    .filter(|r| r.state == ReqState::Aer)
                    .count();
                if held >= MAX_AERS {
                    return self.complete(slot, command_specific::AER_LIMIT_EXCEEDED, 0);
                }
                self.reqs[slot].state = ReqState::Aer;
                self.try_aen();
            }
            // Abort: the command was not aborted.
            AdminOpcode::Abort => self.complete(slot, generic::SUCCESS, abort::NOT_ABORTED),
            _ => self.complete(slot, generic::INVALID_OPCODE, 0),
        }
    }

    /// Refreshes the namespace channels when the subsystem changed, or
    /// while a namespace's bdev could not give a channel (e.g. an NVMe bdev
    /// whose controller is reconnecting): `Err(())` for a namespace that
    /// exists without a channel yet, `Ok(None)` for no such namespace.
    fn ns_chan(&mut self, nsid: u32) -> Result<Option<usize>, ()> {
        let Some(q) = self.q.as_ref() else {
            return Ok(None);
        };
        let g = q.ctrlr.subsys.ns_generation.load(Ordering::Acquire);
        if g != self.ns_gen || self.ns_missing {
            self.ns.clear();
            self.ns_missing = false;
            let host = q.ctrlr.hostnqn.as_str();
            for (id, ns) in lock(&q.ctrlr.subsys.namespaces)
                .iter()
                .filter(|(_, ns)| ns.visible_to(host))
            {
                match ns.desc.get_io_channel() {
                    Ok(ch) => self.ns.push(NsChan {
                        nsid: *id,
                        desc: ns.desc.clone(),
                        ch,
                        block_size: ns.desc.bdev().block_size() as u64,
                    }),
                    Err(e) => {
                        self.ns_missing = true;
                        if *id == nsid {
                            tracing::warn!(nsid = id, error = %e, "nvmf: no bdev channel (Namespace Not Ready)");
                        }
                    }
                }
            }
            self.ns_gen = g;
        }
        match self.ns.iter().position(|n| n.nsid == nsid) {
            Some(i) => Ok(Some(i)),
            None if self.ns_missing
                && lock(&q.ctrlr.subsys.namespaces)
                    .get(&nsid)
                    .is_some_and(|ns| ns.visible_to(&q.ctrlr.hostnqn)) =>
            {
                Err(())
            }
            None => Ok(None),
        }
    }

    fn io(&mut self, this: &Rc<Conn>, slot: usize) {
        let sqe = self.reqs[slot].sqe;
        // `masked_oncs`: an optional command hidden from Identify is not
        // served either.
        let masked = self.oncs_masked;
        let op = IoOpcode::from(sqe.opcode());
        let oncs_bit = match op {
            IoOpcode::Compare => oncs::COMPARE,
            IoOpcode::WriteUncorrectable => oncs::WRITE_UNCORRECTABLE,
            IoOpcode::DatasetManagement => oncs::DSM,
            IoOpcode::WriteZeroes => oncs::WRITE_ZEROES,
            IoOpcode::Copy => oncs::COPY,
            _ => 0,
        };
        if masked & oncs_bit != 0 {
            return self.complete(slot, generic::INVALID_OPCODE, 0);
        }
        let ni = match self.ns_chan(sqe.nsid()) {
            Ok(Some(ni)) => ni,
            Ok(None) => return self.complete(slot, generic::INVALID_NS, 0),
            // Retryable (DNR clear): the host tries again.
            Err(()) => return self.complete(slot, generic::NS_NOT_READY, 0),
        };
        let ns = &self.ns[ni];
        let slba = sqe.slba();
        let nlb = sqe.nlb() as u64;
        let conn = this.clone();
        let done = move |st: IoStatus| io_done(&conn, slot, st);
        let r = match op {
            IoOpcode::Write | IoOpcode::Read | IoOpcode::Compare => {
                let bytes = nlb * ns.block_size;
                let req = &mut self.reqs[slot];
                if req.len as u64 != bytes {
                    return self.complete(slot, generic::SGL_LENGTH_INVALID, 0);
                }
                if req.buf.is_none() {
                    match self.get_buf(bytes as usize) {
                        Some(b) => self.reqs[slot].buf = Some(b),
                        None => return self.complete(slot, generic::INTERNAL, 0),
                    }
                }
                let ns = &self.ns[ni];
                let req = &mut self.reqs[slot];
                let b = req.buf.as_mut().expect("just set");
                let iov = [IoVec::new(b.as_mut_ptr(), bytes as usize)];
                let t = match op {
                    IoOpcode::Write => IoType::Write,
                    IoOpcode::Read => IoType::Read,
                    _ => IoType::Compare,
                };
                // SAFETY: the buffer belongs to request `slot`, which stays
                // allocated (state Exec) until `io_done` runs, and nothing
                // else touches it meanwhile.
                unsafe { ns.ch.submit(&ns.desc, t, &iov, &[], slba, nlb, done) }
            }
            IoOpcode::Flush => {
                if !ns.desc.bdev().io_type_supported(IoType::Flush) {
                    return self.complete(slot, generic::SUCCESS, 0);
                }
                let n = ns.desc.bdev().num_blocks();
                ns.ch.submit_nodata(&ns.desc, IoType::Flush, 0, n, done)
            }
            IoOpcode::WriteZeroes => {
                ns.ch
                    .submit_nodata(&ns.desc, IoType::WriteZeroes, slba, nlb, done)
            }
            IoOpcode::DatasetManagement => return self.dsm(this, slot, ni),
            _ => return self.complete(slot, generic::INVALID_OPCODE, 0),
        };
        match r {
            Ok(()) => {
                self.reqs[slot].pending = 1;
                self.stats.pending_bdev_io.fetch_add(1, Ordering::Relaxed);
            }
            Err(BdevError::NoMemory) => {
                let conn = this.clone();
                self.ns[ni].ch.queue_io_wait(move || {
                    let mut i = conn.inner.borrow_mut();
                    if !i.closed {
                        i.io(&conn, slot);
                        i.flush();
                    }
                });
            }
            Err(e) => self.complete(slot, bdev_error_status(&e), 0),
        }
    }

    /// A fused Compare (`first`) + Write (`second`) as one bdev
    /// compare-and-write.
    fn compare_and_write(&mut self, this: &Rc<Conn>, first: usize, second: usize) {
        let (c, w) = (self.reqs[first].sqe, self.reqs[second].sqe);
        let same = c.nsid() == w.nsid() && c.slba() == w.slba() && c.nlb() == w.nlb();
        let chan = self.ns_chan(c.nsid());
        let Some(ni) = chan.ok().flatten().filter(|_| same) else {
            let st = match chan {
                _ if !same => generic::INVALID_FIELD,
                Err(()) => generic::NS_NOT_READY,
                Ok(_) => generic::INVALID_NS,
            };
            self.complete(first, st, 0);
            return self.complete(second, st, 0);
        };
        let nlb = c.nlb() as u64;
        let bytes = (nlb * self.ns[ni].block_size) as usize;
        let lens_ok = self.reqs[first].len == bytes && self.reqs[second].len == bytes;
        let cp = self.reqs[first].buf.as_mut().map(|b| b.as_mut_ptr());
        let wp = self.reqs[second].buf.as_mut().map(|b| b.as_mut_ptr());
        let (Some(cp), Some(wp), true) = (cp, wp, lens_ok) else {
            self.complete(first, generic::SGL_LENGTH_INVALID, 0);
            return self.complete(second, generic::SGL_LENGTH_INVALID, 0);
        };
        let cmp = [IoVec::new(cp, bytes)];
        let data = [IoVec::new(wp, bytes)];
        let conn = this.clone();
        let done = move |st: IoStatus| {
            let mut i = conn.inner.borrow_mut();
            i.stats.pending_bdev_io.fetch_sub(1, Ordering::Relaxed);
            if i.closed {
                for s in [first, second] {
                    let r = &mut i.reqs[s];
                    r.state = ReqState::Free;
                    if let Some(b) = r.buf.take() {
                        drop(b); // back to iobuf (or the env heap)
                    }
                }
                return;
            }
            let (a, b) = match io_status(st) {
                generic::SUCCESS => (generic::SUCCESS, generic::SUCCESS),
                media::COMPARE_FAILURE => (media::COMPARE_FAILURE, FUSED_FAILED_AS_SENT),
                other => (other, FUSED_FAILED_AS_SENT),
            };
            i.complete(first, a, 0);
            i.complete(second, b, 0);
            if i.interrupt {
                i.flush();
            }
        };
        let ns = &self.ns[ni];
        // SAFETY: both buffers belong to requests `first` and `second`,
        // which stay allocated until `done` runs; nothing else touches them.
        let r = unsafe {
            ns.ch.submit(
                &ns.desc,
                IoType::CompareAndWrite,
                &data,
                &cmp,
                c.slba(),
                nlb,
                done,
            )
        };
        match r {
            Ok(()) => {
                self.stats.pending_bdev_io.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let st = bdev_error_status(&e);
                self.complete(first, st, 0);
                self.complete(second, FUSED_FAILED_AS_SENT, 0);
            }
        }
    }

    fn dsm(&mut self, this: &Rc<Conn>, slot: usize, ni: usize) {
        let sqe = self.reqs[slot].sqe;
        let nr = dsm::num_ranges(sqe.dw[10]);
        if sqe.dw[11] & dsm::ATTR_DEALLOCATE == 0 {
            return self.complete(slot, generic::SUCCESS, 0);
        }
        let ranges: Vec<(u64, u64)> = {
            let r = &self.reqs[slot];
            let Some(b) = r.buf.as_ref().filter(|_| r.len >= nr * DsmRange::SIZE) else {
                return self.complete(slot, generic::SGL_LENGTH_INVALID, 0);
            };
            b[..nr * DsmRange::SIZE]
                .chunks_exact(DsmRange::SIZE)
                .filter_map(DsmRange::from_bytes)
                .map(|r| (r.slba, r.nlb as u64))
                .filter(|&(_, len)| len > 0)
                .collect()
        };
        if ranges.is_empty() || !self.ns[ni].desc.bdev().io_type_supported(IoType::Unmap) {
            return self.complete(slot, generic::SUCCESS, 0);
        }
        self.reqs[slot].pending = 1; // held until all are submitted
        for (lba, len) in ranges {
            let conn = this.clone();
            let ns = &self.ns[ni];
            match ns
                .ch
                .submit_nodata(&ns.desc, IoType::Unmap, lba, len, move |st| {
                    io_done(&conn, slot, st)
                }) {
                Ok(()) => self.reqs[slot].pending += 1,
                Err(e) => {
                    let st = bdev_error_status(&e);
                    self.reqs[slot].status = st;
                    break;
                }
            }
        }
        self.reqs[slot].pending -= 1;
        if self.reqs[slot].pending == 0 {
            let st = self.reqs[slot].status;
            self.complete(slot, st, 0);
        } else {
            self.stats.pending_bdev_io.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn bdev_error_status(e: &BdevError) -> Status {
    match e {
        BdevError::OutOfRange { .. } => generic::LBA_OUT_OF_RANGE,
        BdevError::Unsupported { .. } => generic::INVALID_OPCODE,
        BdevError::InvalidParam(_) => generic::INVALID_FIELD,
        BdevError::ReadOnly(_) => generic::INVALID_FIELD,
        BdevError::Removing(_) | BdevError::NotFound(_) => generic::INVALID_NS,
        _ => generic::INTERNAL,
    }
}

fn io_status(st: IoStatus) -> Status {
    match st {
        IoStatus::Success => generic::SUCCESS,
        IoStatus::Miscompare { .. } => media::COMPARE_FAILURE,
        IoStatus::MediumError => media::UNRECOVERED_READ_ERROR,
        IoStatus::Nvme { sct, sc } => Status::new(sct, sc),
        IoStatus::Aborted => generic::ABORTED_BY_REQUEST,
        IoStatus::Removed => generic::INVALID_NS,
        IoStatus::Failed => generic::INTERNAL,
    }
}

fn io_done(conn: &Rc<Conn>, slot: usize, st: IoStatus) {
    let mut i = conn.inner.borrow_mut();
    let Some(r) = i.reqs.get_mut(slot) else {
        return;
    };
    if r.status == generic::SUCCESS && st != IoStatus::Success {
        r.status = io_status(st);
    }
    r.pending = r.pending.saturating_sub(1);
    if r.pending > 0 {
        return;
    }
    let status = r.status;
    i.stats.pending_bdev_io.fetch_sub(1, Ordering::Relaxed);
    if i.closed {
        let r = &mut i.reqs[slot];
        r.state = ReqState::Free;
        if let Some(b) = r.buf.take() {
            drop(b); // back to iobuf (or the env heap)
        }
        return;
    }
    // The poll group's next poll sends it (one write for many completions);
    // in interrupt mode there may be no next poll soon: send now.
    i.complete(slot, status, 0);
    if i.interrupt {
        i.flush();
    }
}

/// The discovery NQN, re-exported for users.
pub const DISCOVERY: &str = DISCOVERY_NQN;
