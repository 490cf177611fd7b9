//! The NVMe/TCP host transport (NVMe/TCP 1.0 and the fabrics commands of
//! NVMe-oF 1.1): one non-blocking TCP connection per queue (admin and
//! each I/O queue pair), ICReq/ICResp, the fabrics Connect, Property
//! Get/Set, and commands as capsules.
//!
//! Data: writes up to the controller's in-capsule limit (IOCCSZ) travel in
//! the command capsule; larger ones wait for the controller's R2T and are
//! answered with H2CData PDUs of at most MAXH2CDATA bytes (the host asks
//! for one R2T per command, MAXR2T 0, and honours it). Read data arrives in
//! C2HData PDUs and is copied into the caller's buffer at its offset; a
//! C2HData with SUCCESS completes the command without a response capsule.
//!
//! Steady state: every buffer (receive, send, request slots, the queue of
//! waiting requests) is allocated when the queue pair connects; submission
//! appends PDUs to the send buffer and [`TcpQpair::poll`] sends them in one
//! `write`, reads what arrived in one `read` into a large buffer, and
//! parses every whole PDU in it.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ctrlr::{lock, state, AsyncEvent, ControllerOpts, Namespace};
use crate::error::{NvmeError, Result};
use crate::qpair::TimeoutAction;
use crate::queue::{Completion, Payload, Request};
use crate::spec::{AdminOpcode, Cap, IdentifyController, Sqe};
use crate::status::Status;
use crate::tcp::pdu::{self, DataHeader, Digests, IcReq, Pdu};
use crate::trid::TransportId;

/// The fabrics command opcode.
pub const FABRICS_OPCODE: u8 = 0x7f;
/// Fabrics command types (NVMe-oF 1.1, figure 13).
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
}

/// Receive buffer: large enough for many PDUs per `read`.
const RBUF: usize = 512 * 1024;
/// The largest PDU accepted (a C2HData of 16 MiB plus headers).
const MAX_PLEN: u32 = (16 << 20) + 4096;
/// Tags of the admin queue's own commands.
const AER_TAG: u64 = 1 << 63;
const KA_TAG: u64 = 1 << 62;

const ABORTED: Status = Status::ABORTED_SQ_DELETION;

/// Fills SGL1 of a fabrics command: PSDT 01b always (even without data:
/// Linux's nvmet refuses anything else), one data block descriptor
/// (NVMe-oF 1.1, section 2.3.1): in-capsule with offset 0 (type 0, subtype
/// 1), or a transport data block (type 5, subtype Ah; with length 0 the
/// null descriptor).
fn set_sgl(cmd: &mut Sqe, len: usize, in_capsule: bool) {
    cmd.set_psdt(1);
    cmd.dw[6] = 0;
    cmd.dw[7] = 0;
    cmd.dw[8] = len as u32;
    cmd.dw[9] = if in_capsule { 0x01 } else { 0x5a } << 24;
}

/// Whether a command moves data from host to controller.
fn is_write(cmd: &Sqe) -> bool {
    if cmd.opcode() == FABRICS_OPCODE {
        return cmd.dw[1] as u8 == fctype::CONNECT;
    }
    cmd.opcode() & 0b11 != 0b10
}

fn payload_len(p: &Payload) -> usize {
    match p {
        Payload::None => 0,
        Payload::Contig { len, .. } | Payload::Sgl { len, .. } => *len,
        Payload::DsmRange(_) => 16,
    }
}

/// Copies `data` into `p` at byte `off`. False if it does not fit.
fn scatter(p: &Payload, off: usize, data: &[u8]) -> bool {
    if off + data.len() > payload_len(p) {
        return false;
    }
    match *p {
        Payload::Contig { vaddr, .. } => {
            // SAFETY: the submitter promised (unsafe submission functions)
            // that `vaddr..vaddr+len` is valid writable memory it leaves
            // alone until completion; `off + data.len() <= len` above.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), (vaddr + off) as *mut u8, data.len())
            };
            true
        }
        Payload::Sgl { fns, .. } => {
            (fns.reset)(fns.arg, off as u32);
            let mut done = 0;
            while done < data.len() {
                let (a, l) = (fns.next)(fns.arg);
                if l == 0 {
                    return false;
                }
                let n = (l as usize).min(data.len() - done);
                // SAFETY: each element the caller's SGE callbacks yield is
                // memory valid until completion (readv's contract).
                unsafe { std::ptr::copy_nonoverlapping(data[done..].as_ptr(), a as *mut u8, n) };
                done += n;
            }
            true
        }
        Payload::None | Payload::DsmRange(_) => false,
    }
}

/// Appends `len` bytes of `p` from byte `off` to `out`. False if `p` is
/// shorter.
fn gather(p: &Payload, off: usize, len: usize, out: &mut Vec<u8>) -> bool {
    if off + len > payload_len(p) {
        return false;
    }
    match *p {
        Payload::Contig { vaddr, .. } => {
            // SAFETY: as in `scatter`: valid for `len` bytes until completion.
            let s = unsafe { std::slice::from_raw_parts((vaddr + off) as *const u8, len) };
            out.extend_from_slice(s);
            true
        }
        Payload::Sgl { fns, .. } => {
            (fns.reset)(fns.arg, off as u32);
            let mut done = 0;
            while done < len {
                let (a, l) = (fns.next)(fns.arg);
                if l == 0 {
                    return false;
                }
                let n = (l as usize).min(len - done);
                // SAFETY: as in `scatter`, for one element.
                out.extend_from_slice(unsafe { std::slice::from_raw_parts(a as *const u8, n) });
                done += n;
            }
            true
        }
        Payload::DsmRange(r) => {
            let mut b = [0u8; 16];
            b[0..4].copy_from_slice(&r.attributes.to_le_bytes());
            b[4..8].copy_from_slice(&r.nlb.to_le_bytes());
            b[8..16].copy_from_slice(&r.slba.to_le_bytes());
            out.extend_from_slice(&b[off..off + len]);
            true
        }
        Payload::None => false,
    }
}

/// H2CData payloads at least this large are sent straight from the
/// command's buffer (`writev`), not copied into the send buffer.
const SEND_DIRECT_MIN: usize = 16 * 1024;
/// At most this many pieces per `writev`.
const MAX_IOV: usize = 64;

/// C2HData payloads at least this large whose data has not all arrived are
/// received straight into the command's buffer (no copy through the
/// receive buffer for the rest).
const DIRECT_MIN: usize = 16 * 1024;

/// A C2HData PDU whose data is being received into the command's buffer.
#[derive(Clone, Copy, Debug)]
struct DirectRx {
    cid: u16,
    /// Address of the next data byte in the command's buffer.
    dst: usize,
    /// Data bytes still to come.
    left: usize,
    /// This PDU's data in the buffer (address, length), for the digest.
    start: usize,
    len: usize,
    /// A data digest follows the data.
    ddgst: bool,
    /// LAST_PDU and SUCCESS: the command completes with the data.
    complete: bool,
}

#[derive(Clone, Copy)]
struct Slot {
    req: Option<Request>,
    write: bool,
    len: usize,
    /// When it was sent (only while command timeouts are tracked).
    sent_at: Option<Instant>,
    /// Its timeout was reported.
    timed_out: bool,
}

/// One NVMe/TCP queue (admin or I/O): its connection and its commands.
pub(crate) struct TcpQpair {
    sock: TcpStream,
    addr: SocketAddr,
    dg: Digests,
    maxh2cdata: usize,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Data sent from callers' buffers: (offset in `wbuf` it goes before,
    /// address, length), in order; `ext_idx`/`ext_off` say how far sending
    /// got.
    ext: Vec<(usize, usize, usize)>,
    ext_idx: usize,
    ext_off: usize,
    scratch: Vec<u8>,
    slots: Vec<Slot>,
    free: Vec<u16>,
    pending: VecDeque<Request>,
    pending_limit: usize,
    /// Queue id.
    pub qid: u16,
    /// In-capsule data this queue may send.
    pub icd: usize,
    /// The controller id Connect returned.
    pub cntlid: u16,
    /// The command whose CQE DW1 [`TcpQpair::sync`] wants, and that DW1.
    want_dw1: u64,
    got_dw1: u32,
    /// A C2HData being received straight into its command's buffer.
    direct: Option<DirectRx>,
    /// Large reads are flowing: read each PDU header alone (so that large
    /// C2HData never lands in the receive buffer) until `small_run` PDUs
    /// in a row were not large C2HData.
    header_first: bool,
    small_run: u8,
    /// Stamp commands with their send time (command timeouts are set).
    pub track_time: bool,
}

/// What a queue connects with.
pub(crate) struct QueueParams<'a> {
    pub addr: SocketAddr,
    pub subnqn: &'a str,
    pub hostnqn: &'a str,
    pub qid: u16,
    pub cntlid: u16,
    /// Entries (SQSIZE + 1).
    pub size: u16,
    /// Request objects (in flight plus waiting).
    pub requests: usize,
    pub header_digest: bool,
    pub data_digest: bool,
    pub kato_ms: u32,
    pub timeout: Duration,
}

fn terr(addr: &SocketAddr, reason: impl Into<String>) -> NvmeError {
    NvmeError::Transport {
        addr: addr.to_string(),
        reason: reason.into(),
    }
}

/// A host identifier derived from the host NQN (FNV-1a), stable per NQN.
fn hostid(nqn: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (i, b) in nqn.bytes().chain(*b"rspdk-host-id-xx").enumerate() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
        out[i % 16] ^= (h >> 24) as u8;
    }
    out
}

impl TcpQpair {
    /// TCP connect, ICReq/ICResp and the fabrics Connect of queue `p.qid`.
    pub(crate) fn connect(p: &QueueParams<'_>) -> Result<TcpQpair> {
        let addr = p.addr;
        let sock = TcpStream::connect_timeout(&addr, p.timeout).map_err(|e| {
            terr(
                &addr,
                format!("connect: {e} (is the target listening there? check traddr and trsvcid)"),
            )
        })?;
        let _ = sock.set_nodelay(true);
        // sock_impl_set_options (posix): buffer sizes, quick ack.
        if let Err(e) = rspdk_sock::apply_client(std::os::fd::AsRawFd::as_raw_fd(&sock)) {
            tracing::warn!(%addr, error = %e, "nvme/tcp: cannot apply the sock options to a connection");
        }
        sock.set_nonblocking(true)
            .map_err(|e| terr(&addr, format!("making the socket non-blocking: {e}")))?;
        let entries = p.size.max(2) as usize;
        let mut q = TcpQpair {
            sock,
            addr,
            dg: Digests::default(),
            maxh2cdata: 4096,
            rbuf: vec![0; RBUF],
            rstart: 0,
            rend: 0,
            wbuf: Vec::with_capacity(256 * 1024),
            wpos: 0,
            ext: Vec::with_capacity(entries * 2),
            ext_idx: 0,
            ext_off: 0,
            scratch: Vec::with_capacity(64 * 1024),
            // The queue holds SQSIZE commands (one entry stays empty).
            slots: vec![
                Slot {
                    req: None,
                    write: false,
                    len: 0,
                    sent_at: None,
                    timed_out: false,
                };
                entries - 1
            ],
            free: (0..(entries - 1) as u16).rev().collect(),
            pending: VecDeque::with_capacity(p.requests.saturating_sub(entries - 1).max(1)),
            pending_limit: p.requests.saturating_sub(entries - 1).max(1),
            qid: p.qid,
            icd: 8192,
            cntlid: p.cntlid,
            want_dw1: u64::MAX - 1,
            got_dw1: 0,
            direct: None,
            header_first: false,
            small_run: 0,
            track_time: false,
        };
        Pdu::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: p.header_digest,
            ddgst: p.data_digest,
            maxr2t: 0,
        })
        .emit(&mut q.wbuf, Digests::default());
        let end = Instant::now() + p.timeout;
        loop {
            q.flush()?;
            q.fill()?;
            match pdu::parse(&q.rbuf[q.rstart..q.rend], Digests::default(), MAX_PLEN)
                .map_err(|e| terr(&addr, format!("ICResp: {e}")))?
            {
                Some((Pdu::IcResp(r), n)) => {
                    if r.pfv != 0 {
                        return Err(terr(&addr, format!("ICResp PFV {} (only 0)", r.pfv)));
                    }
                    if r.cpda != 0 {
                        return Err(NvmeError::NotSupported(format!(
                            "controller PDU data alignment CPDA {} (only 0)",
                            r.cpda
                        )));
                    }
                    if (r.hdgst && !p.header_digest) || (r.ddgst && !p.data_digest) {
                        return Err(terr(
                            &addr,
                            "the controller enabled a digest the host did not ask for",
                        ));
                    }
                    if r.hdgst != p.header_digest || r.ddgst != p.data_digest {
                        tracing::warn!(%addr, hdgst = r.hdgst, ddgst = r.ddgst,
                            "the controller did not enable every digest asked for");
                    }
                    q.dg = Digests {
                        header: r.hdgst,
                        data: r.ddgst,
                    };
                    q.maxh2cdata = (r.maxh2cdata as usize).max(4096);
                    q.rstart += n;
                    break;
                }
                Some((Pdu::C2hTermReq { fes, fei, .. }, _)) => {
                    return Err(terr(
                        &addr,
                        format!(
                            "the controller refused the connection (FES {fes:#x}, FEI {fei:#x})"
                        ),
                    ))
                }
                Some((other, _)) => {
                    return Err(terr(&addr, format!("expected ICResp, got {other:?}")))
                }
                None if Instant::now() > end => {
                    return Err(terr(
                        &addr,
                        format!("no ICResp within {} ms", p.timeout.as_millis()),
                    ))
                }
                None => std::thread::sleep(Duration::from_micros(50)),
            }
        }
        // Fabrics Connect (NVMe-oF 1.1, figures 19-20): data in the capsule.
        let mut sqe = Sqe::new(FABRICS_OPCODE, fctype::CONNECT as u32);
        sqe.dw[10] = (p.qid as u32) << 16;
        sqe.dw[11] = (p.size as u32).saturating_sub(1) & 0xffff;
        sqe.dw[12] = if p.qid == 0 { p.kato_ms } else { 0 };
        let mut d = [0u8; 1024];
        d[0..16].copy_from_slice(&hostid(p.hostnqn));
        d[16..18].copy_from_slice(&p.cntlid.to_le_bytes());
        let put = |d: &mut [u8], at: usize, s: &str| {
            let n = s.len().min(255);
            d[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
        };
        put(&mut d, 256, p.subnqn);
        put(&mut d, 512, p.hostnqn);
        let (c, _) = q.sync(
            Request {
                cmd: sqe,
                payload: Payload::Contig {
                    vaddr: d.as_ptr() as usize,
                    len: d.len(),
                },
                ctx: u64::MAX,
            },
            p.timeout,
            &mut |_, _| {},
        )?;
        if c.status.is_error() {
            let hint = match (c.status.sct(), c.status.sc()) {
                (1, 0x82) => format!(
                    " (Connect Invalid Parameters, attribute {:#x} at byte {}: is the subsystem NQN '{}' right, and is this host ({}) allowed?)",
                    (c.cdw0 >> 16) as u8,
                    c.cdw0 & 0xffff,
                    p.subnqn,
                    p.hostnqn
                ),
                (1, 0x84) => format!(" (the host {} is not allowed: nvmf_subsystem_add_host)", p.hostnqn),
                _ => String::new(),
            };
            return Err(NvmeError::Command {
                command: format!("Connect of queue {} to {}{hint}", p.qid, p.subnqn),
                status: c.status,
            });
        }
        q.cntlid = c.cdw0 as u16;
        Ok(q)
    }

    /// Submits and waits for one command, polling; other completions go to
    /// `other`. Returns the completion and CQE DW1.
    pub(crate) fn sync(
        &mut self,
        req: Request,
        timeout: Duration,
        other: &mut dyn FnMut(Request, Completion),
    ) -> Result<(Completion, u32)> {
        let tag = req.ctx;
        self.want_dw1 = tag;
        self.submit(req)?;
        let end = Instant::now() + timeout;
        let mut out = None;
        loop {
            self.poll(0, &mut |r, c| {
                if r.ctx == tag && out.is_none() {
                    out = Some(c)
                } else {
                    other(r, c)
                }
            })?;
            if let Some(c) = out {
                return Ok((c, self.got_dw1));
            }
            if Instant::now() > end {
                return Err(NvmeError::Timeout {
                    traddr: self.addr.to_string(),
                    what: format!("command {:#04x} on queue {}", req.cmd.opcode(), self.qid),
                    ms: timeout.as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_micros(10));
        }
    }

    /// Commands the controller holds.
    pub(crate) fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Commands waiting for a free slot.
    pub(crate) fn queued(&self) -> usize {
        self.pending.len()
    }

    /// Queues `req`: sent at the next [`TcpQpair::flush`] or poll.
    pub(crate) fn submit(&mut self, req: Request) -> Result<()> {
        if let Some(cid) = self.free.pop() {
            self.start(cid, req);
            Ok(())
        } else if self.pending.len() < self.pending_limit {
            self.pending.push_back(req);
            Ok(())
        } else {
            Err(NvmeError::NoRequests {
                qid: self.qid,
                limit: self.slots.len() + self.pending_limit,
            })
        }
    }

    /// Queues `req` behind the commands in flight without sending it.
    pub(crate) fn queue(&mut self, req: Request) -> Result<()> {
        if self.pending.len() < self.pending_limit {
            self.pending.push_back(req);
            Ok(())
        } else {
            Err(NvmeError::NoRequests {
                qid: self.qid,
                limit: self.slots.len() + self.pending_limit,
            })
        }
    }

    fn start(&mut self, cid: u16, mut req: Request) {
        let len = payload_len(&req.payload);
        let write = len > 0 && is_write(&req.cmd);
        req.cmd.set_cid(cid);
        let in_capsule = write && len <= self.icd;
        set_sgl(&mut req.cmd, len, in_capsule);
        if in_capsule {
            if let Payload::Contig { vaddr, .. } = req.payload {
                // SAFETY: the submitter guarantees `len` readable bytes at
                // `vaddr` until completion.
                let data = unsafe { std::slice::from_raw_parts(vaddr as *const u8, len) };
                Pdu::CapsuleCmd { sqe: req.cmd, data }.emit(&mut self.wbuf, self.dg);
            } else {
                self.scratch.clear();
                gather(&req.payload, 0, len, &mut self.scratch);
                Pdu::CapsuleCmd {
                    sqe: req.cmd,
                    data: &self.scratch,
                }
                .emit(&mut self.wbuf, self.dg);
            }
        } else {
            Pdu::CapsuleCmd {
                sqe: req.cmd,
                data: &[],
            }
            .emit(&mut self.wbuf, self.dg);
        }
        self.slots[cid as usize] = Slot {
            req: Some(req),
            write,
            len,
            // A vDSO clock read, only when timeouts are asked for.
            sent_at: self.track_time.then(Instant::now),
            timed_out: false,
        };
    }

    fn closed(&self, what: &str, e: Option<std::io::Error>) -> NvmeError {
        terr(
            &self.addr,
            match e {
                Some(e) => format!("{what} on queue {}: {e}", self.qid),
                None => format!("queue {}: the controller closed the connection", self.qid),
            },
        )
    }

    /// Sends what is queued, without blocking.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.ext_idx < self.ext.len() {
            return self.flush_vectored();
        }
        while self.wpos < self.wbuf.len() {
            match self.sock.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(self.closed("write", None)),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.closed("write", Some(e))),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
            self.ext.clear();
            self.ext_idx = 0;
        }
        Ok(())
    }

    /// Sends the send buffer interleaved with callers' data (`writev`).
    fn flush_vectored(&mut self) -> Result<()> {
        use std::os::fd::AsRawFd;
        loop {
            let mut iov = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOV];
            let mut k = 0;
            let mut pos = self.wpos;
            let (mut i, mut off) = (self.ext_idx, self.ext_off);
            while k < MAX_IOV {
                let until = self.ext.get(i).map_or(self.wbuf.len(), |e| e.0);
                if pos < until {
                    iov[k] = libc::iovec {
                        iov_base: self.wbuf[pos..].as_ptr() as *mut libc::c_void,
                        iov_len: until - pos,
                    };
                    k += 1;
                    pos = until;
                    continue;
                }
                let Some(&(_, addr, len)) = self.ext.get(i) else {
                    break;
                };
                iov[k] = libc::iovec {
                    iov_base: (addr + off) as *mut libc::c_void,
                    iov_len: len - off,
                };
                k += 1;
                i += 1;
                off = 0;
            }
            if k == 0 {
                break;
            }
            // SAFETY: `iov[..k]` points into `wbuf` (alive, not resized
            // during the call) and into callers' write buffers, which stay
            // valid until their commands complete, which cannot happen
            // before this data is sent.
            let r = unsafe { libc::writev(self.sock.as_raw_fd(), iov.as_ptr(), k as libc::c_int) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock => return Ok(()),
                    std::io::ErrorKind::Interrupted => continue,
                    _ => return Err(self.closed("write", Some(e))),
                }
            }
            if r == 0 {
                return Err(self.closed("write", None));
            }
            // Advance over `r` bytes of the same sequence.
            let mut n = r as usize;
            while n > 0 {
                let until = self.ext.get(self.ext_idx).map_or(self.wbuf.len(), |e| e.0);
                if self.wpos < until {
                    let m = (until - self.wpos).min(n);
                    self.wpos += m;
                    n -= m;
                    continue;
                }
                let Some(&(_, _, len)) = self.ext.get(self.ext_idx) else {
                    break;
                };
                let m = (len - self.ext_off).min(n);
                self.ext_off += m;
                n -= m;
                if self.ext_off == len {
                    self.ext_idx += 1;
                    self.ext_off = 0;
                }
            }
            if self.ext_idx >= self.ext.len() && self.wpos == self.wbuf.len() {
                self.wbuf.clear();
                self.wpos = 0;
                self.ext.clear();
                self.ext_idx = 0;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Reads what arrived (one `read`), making room first.
    fn fill(&mut self) -> Result<usize> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rstart > 0 && self.rbuf.len() - self.rend < 64 * 1024 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        // A PDU bigger than the buffer: grow once to its size.
        if let Some(ch) = pdu::CommonHeader::parse(&self.rbuf[self.rstart..self.rend]) {
            let need = self.rstart + ch.plen.min(MAX_PLEN) as usize;
            if need > self.rbuf.len() {
                self.rbuf.resize(need, 0);
            }
        }
        if self.rend == self.rbuf.len() {
            return Ok(0);
        }
        // Between PDUs while large reads flow: only the next header (every
        // PDU a host receives has a 24-byte header, then its digest).
        let mut end = self.rbuf.len();
        if self.header_first {
            let hdr = pdu::DATA_HLEN + if self.dg.header { pdu::DIGEST_LEN } else { 0 };
            let have = self.rend - self.rstart;
            if have < hdr {
                end = self.rend + (hdr - have);
            }
        }
        match self.sock.read(&mut self.rbuf[self.rend..end]) {
            Ok(0) => Err(self.closed("read", None)),
            Ok(n) => {
                self.rend += n;
                Ok(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(self.closed("read", Some(e))),
        }
    }

    /// Sends, receives, and completes up to `max` commands (0: all that
    /// arrived), calling `done` for each. An error means the connection is
    /// unusable (the caller aborts what is left).
    pub(crate) fn poll(
        &mut self,
        max: u32,
        done: &mut dyn FnMut(Request, Completion),
    ) -> Result<u32> {
        self.flush()?;
        if self.direct.is_none() {
            self.fill()?;
        }
        let mut n = 0u32;
        loop {
            if max > 0 && n >= max {
                break;
            }
            if self.direct.is_some() {
                if !self.run_direct(&mut n, done)? {
                    break;
                }
                if self.rstart == self.rend {
                    self.fill()?;
                }
                continue;
            }
            let parsed = pdu::parse(&self.rbuf[self.rstart..self.rend], self.dg, MAX_PLEN)
                .map_err(|e| terr(&self.addr, format!("queue {}: {e}", self.qid)))?;
            let Some((p, len)) = parsed else {
                if self.try_direct()? {
                    continue;
                }
                break;
            };
            if self.header_first {
                self.small_run += 1;
                if self.small_run >= 4 {
                    self.header_first = false;
                }
            }
            match p {
                Pdu::CapsuleResp(cqe) => {
                    self.rstart += len;
                    let cid = cqe.cid();
                    let Some(req) = self.slots.get_mut(cid as usize).and_then(|s| s.req.take())
                    else {
                        return Err(terr(
                            &self.addr,
                            format!("queue {}: response for CID {cid}, which is not in flight", self.qid),
                        ));
                    };
                    self.free.push(cid);
                    n += 1;
                    if req.ctx == self.want_dw1 {
                        self.got_dw1 = cqe.dw[1];
                    }
                    done(
                        req,
                        Completion {
                            ctx: req.ctx,
                            status: cqe.status(),
                            cdw0: cqe.dw[0],
                        },
                    );
                }
                Pdu::C2hData {
                    hdr,
                    last,
                    success,
                    data,
                } => {
                    let cid = hdr.cccid as usize;
                    let slot = match self.slots.get(cid) {
                        Some(s) if s.req.is_some() && !s.write => s,
                        _ => {
                            return Err(terr(
                                &self.addr,
                                format!("queue {}: C2HData for CID {cid}, which is not a read in flight", self.qid),
                            ))
                        }
                    };
                    let req = slot.req.as_ref().expect("checked");
                    if !scatter(&req.payload, hdr.datao as usize, data) {
                        return Err(terr(
                            &self.addr,
                            format!(
                                "queue {}: C2HData offset {} length {} beyond the {}-byte buffer of CID {cid}",
                                self.qid, hdr.datao, hdr.datal, slot.len
                            ),
                        ));
                    }
                    self.rstart += len;
                    if last && success {
                        let req = self.slots[cid].req.take().expect("checked");
                        self.free.push(cid as u16);
                        n += 1;
                        done(
                            req,
                            Completion {
                                ctx: req.ctx,
                                status: Status::SUCCESS,
                                cdw0: 0,
                            },
                        );
                    }
                }
                Pdu::R2t(h) => {
                    self.rstart += len;
                    self.answer_r2t(&h)?;
                }
                Pdu::C2hTermReq { fes, fei, .. } => {
                    return Err(terr(
                        &self.addr,
                        format!(
                            "queue {}: the controller terminated the connection (FES {fes:#x}, FEI {fei:#x})",
                            self.qid
                        ),
                    ))
                }
                other => {
                    return Err(terr(
                        &self.addr,
                        format!("queue {}: unexpected PDU from the controller: {other:?}", self.qid),
                    ))
                }
            }
        }
        while !self.pending.is_empty() {
            let Some(cid) = self.free.pop() else { break };
            let req = self.pending.pop_front().expect("not empty");
            self.start(cid, req);
        }
        self.flush()?;
        Ok(n)
    }

    /// At a C2HData whose header is here but not all of its (large) data:
    /// checks the header and switches to receiving the data straight into
    /// the command's buffer. False: leave it to the parser.
    fn try_direct(&mut self) -> Result<bool> {
        use pdu::{field, flags, pdu_type, DATA_HLEN, DIGEST_LEN};
        let buf = &self.rbuf[self.rstart..self.rend];
        let Some(ch) = pdu::CommonHeader::parse(buf) else {
            return Ok(false);
        };
        let hd = if self.dg.header { DIGEST_LEN } else { 0 };
        let hdr_end = DATA_HLEN + hd;
        let has_h = ch.flags & flags::HDGSTF != 0;
        let has_d = ch.flags & flags::DDGSTF != 0;
        if ch.pdu_type != pdu_type::C2H_DATA
            || ch.hlen as usize != DATA_HLEN
            || buf.len() < hdr_end
            || ch.pdo as usize != hdr_end
            || has_h != self.dg.header
            || has_d != self.dg.data
        {
            return Ok(false);
        }
        let dd = if has_d { DIGEST_LEN } else { 0 };
        let plen = ch.plen as usize;
        if plen < hdr_end + dd + DIRECT_MIN || plen > MAX_PLEN as usize {
            return Ok(false);
        }
        let datal_total = plen - hdr_end - dd;
        if hd > 0 {
            let got = u32::from_le_bytes(buf[DATA_HLEN..DATA_HLEN + 4].try_into().expect("4"));
            let want = pdu::crc32c(&buf[..DATA_HLEN]);
            if got != want {
                return Err(terr(
                    &self.addr,
                    format!(
                        "queue {}: header digest mismatch: received {got:#010x}, computed {want:#010x}",
                        self.qid
                    ),
                ));
            }
        }
        let le =
            |r: std::ops::Range<usize>| buf[r].iter().rev().fold(0u32, |a, &b| (a << 8) | b as u32);
        let cid = le(field::CCCID) as usize;
        let datao = le(field::DATAO) as usize;
        let datal = le(field::DATAL) as usize;
        if datal != datal_total {
            return Err(terr(
                &self.addr,
                format!(
                    "queue {}: C2HData DATAL {datal} but PLEN {plen} holds {datal_total} data bytes",
                    self.qid
                ),
            ));
        }
        let vaddr = match self.slots.get(cid) {
            Some(Slot {
                req:
                    Some(Request {
                        payload: Payload::Contig { vaddr, len },
                        ..
                    }),
                write: false,
                ..
            }) if datao + datal <= *len => *vaddr,
            // Vectored, unknown or out of range: the parser reports it.
            _ => return Ok(false),
        };
        let last = ch.flags & flags::LAST_PDU != 0;
        let success = ch.flags & flags::SUCCESS != 0;
        self.direct = Some(DirectRx {
            cid: cid as u16,
            dst: vaddr + datao,
            left: datal,
            start: vaddr + datao,
            len: datal,
            ddgst: has_d,
            complete: last && success,
        });
        self.rstart += hdr_end;
        self.header_first = true;
        self.small_run = 0;
        Ok(true)
    }

    /// Moves the data of the current direct C2HData: what the receive
    /// buffer holds, then straight from the socket. True when the PDU is
    /// done (and its command completed if it carried SUCCESS).
    fn run_direct(
        &mut self,
        n: &mut u32,
        done: &mut dyn FnMut(Request, Completion),
    ) -> Result<bool> {
        let Some(mut d) = self.direct else {
            return Ok(true);
        };
        let k = (self.rend - self.rstart).min(d.left);
        if k > 0 {
            // SAFETY: `dst..dst+left` lies in the read command's buffer
            // (checked against its length in `try_direct`), which the
            // submitter keeps valid and untouched until completion.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.rbuf[self.rstart..].as_ptr(),
                    d.dst as *mut u8,
                    k,
                )
            };
            self.rstart += k;
            d.dst += k;
            d.left -= k;
        }
        while d.left > 0 {
            // SAFETY: as above: the rest of this PDU's span of the buffer.
            let dst = unsafe { std::slice::from_raw_parts_mut(d.dst as *mut u8, d.left) };
            match self.sock.read(dst) {
                Ok(0) => return Err(self.closed("read", None)),
                Ok(k) => {
                    d.dst += k;
                    d.left -= k;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.direct = Some(d);
                    return Ok(false);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.closed("read", Some(e))),
            }
        }
        if d.ddgst {
            if self.rend - self.rstart < pdu::DIGEST_LEN {
                self.fill()?;
            }
            if self.rend - self.rstart < pdu::DIGEST_LEN {
                self.direct = Some(d);
                return Ok(false);
            }
            let b = &self.rbuf[self.rstart..self.rstart + 4];
            let got = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            // SAFETY: the data just received into the command's buffer.
            let data = unsafe { std::slice::from_raw_parts(d.start as *const u8, d.len) };
            let want = pdu::crc32c(data);
            if got != want {
                return Err(terr(
                    &self.addr,
                    format!(
                        "queue {}: data digest mismatch: received {got:#010x}, computed {want:#010x}",
                        self.qid
                    ),
                ));
            }
            self.rstart += 4;
        }
        self.direct = None;
        if d.complete {
            if let Some(req) = self.slots[d.cid as usize].req.take() {
                self.free.push(d.cid);
                *n += 1;
                done(
                    req,
                    Completion {
                        ctx: req.ctx,
                        status: Status::SUCCESS,
                        cdw0: 0,
                    },
                );
            }
        }
        Ok(true)
    }

    fn answer_r2t(&mut self, h: &DataHeader) -> Result<()> {
        let cid = h.cccid as usize;
        let slot = match self.slots.get(cid) {
            Some(s) if s.req.is_some() && s.write => *s,
            _ => {
                return Err(terr(
                    &self.addr,
                    format!(
                        "queue {}: R2T for CID {cid}, which is not a write in flight",
                        self.qid
                    ),
                ))
            }
        };
        let (o, l) = (h.datao as usize, h.datal as usize);
        if l == 0 || o + l > slot.len {
            return Err(terr(
                &self.addr,
                format!(
                    "queue {}: R2T offset {o} length {l} outside the {}-byte write of CID {cid}",
                    self.qid, slot.len
                ),
            ));
        }
        let req = slot.req.expect("checked");
        let mut off = o;
        while off < o + l {
            let n = (o + l - off).min(self.maxh2cdata);
            let hdr = DataHeader {
                cccid: h.cccid,
                ttag: h.ttag,
                datao: off as u32,
                datal: n as u32,
            };
            let last = off + n == o + l;
            if let Payload::Contig { vaddr, .. } = req.payload {
                // SAFETY: the write's buffer holds `slot.len` readable bytes
                // until completion; `off + n <= o + l <= slot.len`.
                let data = unsafe { std::slice::from_raw_parts((vaddr + off) as *const u8, n) };
                if n >= SEND_DIRECT_MIN {
                    // Header here, data from the caller's buffer.
                    pdu::emit_h2c_data_header(&mut self.wbuf, &hdr, last, self.dg);
                    self.ext.push((self.wbuf.len(), vaddr + off, n));
                    if self.dg.data {
                        self.wbuf
                            .extend_from_slice(&pdu::crc32c(data).to_le_bytes());
                    }
                } else {
                    Pdu::H2cData { hdr, last, data }.emit(&mut self.wbuf, self.dg);
                }
            } else {
                self.scratch.clear();
                gather(&req.payload, off, n, &mut self.scratch);
                Pdu::H2cData {
                    hdr,
                    last,
                    data: &self.scratch,
                }
                .emit(&mut self.wbuf, self.dg);
            }
            off += n;
        }
        Ok(())
    }

    /// Hands back every command in flight and waiting.
    pub(crate) fn abort_all(&mut self, done: &mut dyn FnMut(Request, Completion)) -> u32 {
        let mut n = 0;
        for cid in 0..self.slots.len() {
            if let Some(req) = self.slots[cid].req.take() {
                self.free.push(cid as u16);
                n += 1;
                done(
                    req,
                    Completion {
                        ctx: req.ctx,
                        status: ABORTED,
                        cdw0: 0,
                    },
                );
            }
        }
        while let Some(req) = self.pending.pop_front() {
            n += 1;
            done(
                req,
                Completion {
                    ctx: req.ctx,
                    status: ABORTED,
                    cdw0: 0,
                },
            );
        }
        self.wbuf.clear();
        self.wpos = 0;
        self.ext.clear();
        self.ext_idx = 0;
        self.ext_off = 0;
        self.rstart = 0;
        self.rend = 0;
        self.direct = None;
        self.header_first = false;
        n
    }

    /// Takes the waiting requests (to replay on a new connection).
    pub(crate) fn take_pending(&mut self) -> VecDeque<Request> {
        std::mem::take(&mut self.pending)
    }

    /// The command id of the command with context `ctx`, if in flight.
    pub(crate) fn cid_of(&self, ctx: u64) -> Option<u16> {
        self.slots
            .iter()
            .position(|s| s.req.is_some_and(|r| r.ctx == ctx))
            .map(|i| i as u16)
    }

    /// Closes the connection.
    pub(crate) fn shutdown(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

struct Admin {
    q: Option<TcpQpair>,
    next_tag: u64,
    events: Vec<AsyncEvent>,
    last_ka: Instant,
    ka_outstanding: bool,
}

/// A controller reached over NVMe/TCP: its admin queue and what it said.
pub(crate) struct TcpCtrlr {
    pub trid: TransportId,
    pub opts: ControllerOpts,
    pub addr: SocketAddr,
    pub subnqn: String,
    pub hostnqn: String,
    pub state: AtomicU8,
    pub generation: AtomicU32,
    admin: Mutex<Admin>,
    pub cap: AtomicU64,
    pub vs: AtomicU32,
    pub cntlid: AtomicU32,
    /// Keep Alive Timeout granted (ms).
    pub kato_ms: AtomicU32,
    pub cdata: Mutex<IdentifyController>,
    pub namespaces: Mutex<Vec<Namespace>>,
    qids: Mutex<Vec<u16>>,
    pub max_io_queues: AtomicU32,
    qids_init: AtomicBool,
    pub reset_lock: Mutex<()>,
    failure: Mutex<String>,
}

impl TcpCtrlr {
    /// A controller object for `trid`, not yet connected.
    pub(crate) fn new(trid: &TransportId, opts: &ControllerOpts) -> Result<TcpCtrlr> {
        let addr = trid.socket_addr()?;
        Ok(TcpCtrlr {
            trid: trid.clone(),
            opts: opts.clone(),
            addr,
            subnqn: trid.subnqn_or_discovery().to_string(),
            hostnqn: trid.hostnqn.clone().unwrap_or_else(|| opts.hostnqn.clone()),
            state: AtomicU8::new(state::RESETTING),
            generation: AtomicU32::new(0),
            admin: Mutex::new(Admin {
                q: None,
                next_tag: 1,
                events: Vec::new(),
                last_ka: Instant::now(),
                ka_outstanding: false,
            }),
            cap: AtomicU64::new(0),
            vs: AtomicU32::new(0),
            cntlid: AtomicU32::new(0xffff),
            kato_ms: AtomicU32::new(0),
            cdata: Mutex::new(IdentifyController::default()),
            namespaces: Mutex::new(Vec::new()),
            qids: Mutex::new(Vec::new()),
            max_io_queues: AtomicU32::new(0),
            qids_init: AtomicBool::new(false),
            reset_lock: Mutex::new(()),
            failure: Mutex::new(String::new()),
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.opts.admin_timeout_ms.max(100))
    }

    pub(crate) fn is_discovery(&self) -> bool {
        self.subnqn == crate::trid::DISCOVERY_NQN
    }

    /// Queue parameters for queue `qid` of `size` entries.
    pub(crate) fn queue_params(&self, qid: u16, size: u16, requests: usize) -> QueueParams<'_> {
        QueueParams {
            addr: self.addr,
            subnqn: &self.subnqn,
            hostnqn: &self.hostnqn,
            qid,
            cntlid: if qid == 0 {
                0xffff
            } else {
                self.cntlid.load(Ordering::Acquire) as u16
            },
            size,
            requests,
            header_digest: self.opts.header_digest,
            data_digest: self.opts.data_digest,
            kato_ms: if self.is_discovery() {
                0
            } else {
                self.opts.keep_alive_timeout_ms
            },
            timeout: self.timeout(),
        }
    }

    /// Connects the admin queue and enables the controller: Property Get
    /// CAP and VS, Property Set CC.EN, waits for CSTS.RDY (CAP.TO).
    pub(crate) fn connect_admin(&self) -> Result<()> {
        let size = self.opts.admin_queue_size.clamp(2, 4096);
        let q = TcpQpair::connect(&self.queue_params(0, size, size as usize + 8))?;
        self.cntlid.store(q.cntlid as u32, Ordering::Release);
        {
            let mut a = lock(&self.admin);
            a.q = Some(q);
            a.next_tag = 1;
            a.events.clear();
            a.last_ka = Instant::now();
            a.ka_outstanding = false;
        }
        self.kato_ms.store(
            if self.is_discovery() {
                0
            } else {
                self.opts.keep_alive_timeout_ms
            },
            Ordering::Relaxed,
        );
        let cap = Cap(self.prop_get(0x00, true)?);
        self.cap.store(cap.0, Ordering::Release);
        self.vs
            .store(self.prop_get(0x08, false)? as u32, Ordering::Release);
        let cc = (1u64) | (6 << 16) | (4 << 20);
        self.prop_set(0x14, cc as u32)?;
        let to = Duration::from_millis(cap.timeout_ms().max(500));
        let end = Instant::now() + to;
        loop {
            let csts = self.prop_get(0x1c, false)? as u32;
            if csts & 0b10 != 0 {
                return Err(self.fail("controller fatal status (CSTS.CFS) while enabling"));
            }
            if csts & 1 != 0 {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(NvmeError::Timeout {
                    traddr: self.addr.to_string(),
                    what: format!("CSTS.RDY after setting CC.EN (CSTS {csts:#x})"),
                    ms: to.as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Property Get (offset `ofst`, 8 bytes when `wide`).
    pub(crate) fn prop_get(&self, ofst: u32, wide: bool) -> Result<u64> {
        let mut s = Sqe::new(FABRICS_OPCODE, fctype::PROPERTY_GET as u32);
        s.dw[10] = wide as u32;
        s.dw[11] = ofst;
        let (c, dw1) = self.admin_raw_dw1(s, Payload::None)?;
        if c.status.is_error() {
            return Err(NvmeError::Command {
                command: format!("Property Get {ofst:#x}"),
                status: c.status,
            });
        }
        // An 8-byte value is in CQE DW0 (low) and DW1 (high).
        Ok(c.cdw0 as u64 | if wide { (dw1 as u64) << 32 } else { 0 })
    }

    /// Property Set (4 bytes).
    pub(crate) fn prop_set(&self, ofst: u32, v: u32) -> Result<()> {
        let mut s = Sqe::new(FABRICS_OPCODE, fctype::PROPERTY_SET as u32);
        s.dw[10] = 0;
        s.dw[11] = ofst;
        s.dw[12] = v;
        self.admin_sync(s, Payload::None, &format!("Property Set {ofst:#x}"))
            .map(|_| ())
    }

    /// Fails the controller (connection lost, protocol error).
    pub(crate) fn fail(&self, reason: &str) -> NvmeError {
        crate::ctrlr::fail_controller(&self.trid, &self.state, &self.failure, reason)
    }

    /// The error for the current non-OK state.
    pub(crate) fn state_error(&self) -> NvmeError {
        crate::ctrlr::state_error(&self.trid, &self.state, &self.failure)
    }

    /// An admin command and its completion (an error status is returned
    /// as is).
    pub(crate) fn admin_raw(&self, cmd: Sqe, payload: Payload) -> Result<Completion> {
        self.admin_raw_dw1(cmd, payload).map(|(c, _)| c)
    }

    /// [`TcpCtrlr::admin_raw`], with CQE DW1.
    fn admin_raw_dw1(&self, cmd: Sqe, payload: Payload) -> Result<(Completion, u32)> {
        match self.state.load(Ordering::Acquire) {
            state::FAILED | state::DETACHED => return Err(self.state_error()),
            _ => {}
        }
        let mut a = lock(&self.admin);
        let tag = a.next_tag;
        a.next_tag += 1;
        let Admin { q, events, .. } = &mut *a;
        let Some(q) = q.as_mut() else {
            return Err(self.state_error());
        };
        let mut rearm = Vec::new();
        let r = q.sync(
            Request {
                cmd,
                payload,
                ctx: tag,
            },
            self.timeout(),
            &mut |r, c| {
                if r.ctx & AER_TAG != 0 && !c.status.is_error() {
                    events.push(AsyncEvent {
                        event_type: (c.cdw0 & 0x7) as u8,
                        info: (c.cdw0 >> 8) as u8,
                        log_page: (c.cdw0 >> 16) as u8,
                    });
                    rearm.push(r);
                }
            },
        );
        for r in rearm {
            let _ = q.submit(r);
        }
        match r {
            Ok(c) => Ok(c),
            Err(e @ NvmeError::Transport { .. }) => {
                drop(a);
                self.fail(&e.to_string());
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// An admin command that must succeed.
    pub(crate) fn admin_sync(&self, cmd: Sqe, payload: Payload, what: &str) -> Result<Completion> {
        let c = self.admin_raw(cmd, payload)?;
        if c.status.is_error() {
            return Err(NvmeError::Command {
                command: what.to_string(),
                status: c.status,
            });
        }
        Ok(c)
    }

    /// An admin command reading `len` bytes.
    pub(crate) fn admin_read(&self, cmd: Sqe, len: usize, what: &str) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.admin_sync(
            cmd,
            Payload::Contig {
                vaddr: buf.as_mut_ptr() as usize,
                len,
            },
            what,
        )?;
        Ok(buf)
    }

    /// Polls the admin queue: Keep Alive when due, AER completions.
    pub(crate) fn poll_admin(&self) -> Result<Vec<AsyncEvent>> {
        match self.state.load(Ordering::Acquire) {
            state::FAILED | state::DETACHED => return Err(self.state_error()),
            state::OK => {}
            _ => return Ok(Vec::new()),
        }
        let kato = self.kato_ms.load(Ordering::Relaxed);
        // A synchronous admin command (on a helper thread) holds the queue
        // and reaps its completions itself: this poll, which runs on a
        // reactor, must not wait for it. Waiting deadlocked a target whose
        // NVMe bdev is attached to its own NVMe-oF subsystem: the reactor
        // that had to answer the command was blocked here.
        let mut a = match self.admin.try_lock() {
            Ok(a) => a,
            Err(std::sync::TryLockError::WouldBlock) => return Ok(Vec::new()),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        let due = kato > 0
            && !a.ka_outstanding
            && a.last_ka.elapsed().as_millis() as u64 >= kato as u64 / 2;
        let Admin {
            q,
            events,
            last_ka,
            ka_outstanding,
            ..
        } = &mut *a;
        let Some(q) = q.as_mut() else {
            return Ok(Vec::new());
        };
        if due {
            *last_ka = Instant::now();
            *ka_outstanding = true;
            let _ = q.submit(Request {
                cmd: Sqe::new(AdminOpcode::KeepAlive.into(), 0),
                payload: Payload::None,
                ctx: KA_TAG,
            });
        }
        let mut rearm = Vec::new();
        let r = q.poll(0, &mut |r, c| {
            if r.ctx == KA_TAG {
                *ka_outstanding = false;
            } else if r.ctx & AER_TAG != 0 && !c.status.is_error() {
                events.push(AsyncEvent {
                    event_type: (c.cdw0 & 0x7) as u8,
                    info: (c.cdw0 >> 8) as u8,
                    log_page: (c.cdw0 >> 16) as u8,
                });
                rearm.push(r);
            }
        });
        if let Err(e) = r {
            drop(a);
            return Err(self.fail(&e.to_string()));
        }
        for r in rearm {
            let _ = q.submit(r);
        }
        Ok(std::mem::take(events))
    }

    /// Posts `n` Asynchronous Event Requests.
    pub(crate) fn submit_aers(&self, n: u8) -> Result<()> {
        let mut a = lock(&self.admin);
        if let Some(q) = a.q.as_mut() {
            for i in 0..n {
                q.submit(Request {
                    cmd: Sqe::new(AdminOpcode::AsyncEventRequest.into(), 0),
                    payload: Payload::None,
                    ctx: AER_TAG | i as u64,
                })?;
            }
            q.flush()?;
        }
        Ok(())
    }

    /// Drops the admin connection.
    pub(crate) fn disconnect_admin(&self) {
        if let Some(q) = lock(&self.admin).q.take() {
            q.shutdown();
        }
    }

    /// Sets the granted number of I/O queues (first time: the free ids).
    pub(crate) fn set_io_queues(&self, granted: u32) {
        self.max_io_queues.store(granted, Ordering::Relaxed);
        if !self.qids_init.swap(true, Ordering::AcqRel) {
            *lock(&self.qids) = (1..=granted as u16).rev().collect();
        }
    }

    pub(crate) fn alloc_qid(&self) -> Result<u16> {
        lock(&self.qids).pop().ok_or_else(|| {
            NvmeError::NotSupported(format!(
                "no I/O queue left: the controller granted {} (ControllerOpts::num_io_queues)",
                self.max_io_queues.load(Ordering::Relaxed)
            ))
        })
    }

    pub(crate) fn free_qid(&self, qid: u16) {
        lock(&self.qids).push(qid);
    }

    /// The largest transfer per command (MDTS; 1 MiB when unlimited).
    pub(crate) fn max_transfer(&self) -> usize {
        let mdts = lock(&self.cdata).mdts();
        if mdts == 0 || mdts > 12 {
            1 << 20
        } else {
            (4096usize << mdts).min(16 << 20)
        }
    }

    /// In-capsule data an I/O queue may send (IOCCSZ * 16 - 64).
    pub(crate) fn io_icd(&self) -> usize {
        (lock(&self.cdata).ioccsz() as usize * 16).saturating_sub(64)
    }
}

/// An NVMe/TCP I/O queue pair with its controller.
pub(crate) struct TcpIoQpair {
    pub q: TcpQpair,
    pub ctrlr: Arc<TcpCtrlr>,
    pub generation: u32,
    pub namespaces: Vec<Namespace>,
    pub max_transfer: usize,
    delay_doorbell: bool,
    size: u16,
    requests: usize,
    /// False once the connection broke (until reconnected after a reset).
    connected: bool,
    /// Command timeout and its callback.
    timeout: Option<(Duration, crate::qpair::TimeoutCb)>,
    next_timeout_scan: Instant,
}

impl TcpIoQpair {
    /// Reports commands in flight longer than `timeout` to `cb` (once
    /// each), from `process_completions`.
    pub(crate) fn set_timeout(&mut self, timeout: Duration, cb: crate::qpair::TimeoutCb) {
        self.timeout = Some((timeout, cb));
        self.q.track_time = true;
        self.next_timeout_scan = Instant::now();
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
        let (actions, k) =
            crate::qpair::collect_timeout_actions(qid, cb, |f| self.q.check_timeouts(now, *t, f));
        for &(cid, a) in &actions[..k] {
            let ctrlr = crate::ctrlr::Controller::from_tcp(self.ctrlr.clone());
            let r = match a {
                TimeoutAction::Abort => ctrlr.abort(qid, cid).map(|_| ()),
                TimeoutAction::Reset => ctrlr.reset(),
                TimeoutAction::None => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(qid, cid, error = %e, "timeout action failed");
            }
        }
    }

    pub(crate) fn new(
        ctrlr: Arc<TcpCtrlr>,
        size: u16,
        requests: usize,
        delay_doorbell: bool,
    ) -> Result<TcpIoQpair> {
        if ctrlr.state.load(Ordering::Acquire) != state::OK {
            return Err(ctrlr.state_error());
        }
        if ctrlr.is_discovery() {
            return Err(NvmeError::NotSupported(
                "I/O queues on a discovery controller: connect to a subsystem NQN".into(),
            ));
        }
        let mqes = Cap(ctrlr.cap.load(Ordering::Acquire)).mqes();
        let size = size.clamp(2, 4096).min(mqes.saturating_add(1));
        let qid = ctrlr.alloc_qid()?;
        let generation = ctrlr.generation.load(Ordering::Acquire);
        let q = match TcpQpair::connect(&ctrlr.queue_params(qid, size, requests)) {
            Ok(mut q) => {
                q.icd = ctrlr.io_icd();
                q
            }
            Err(e) => {
                ctrlr.free_qid(qid);
                return Err(e);
            }
        };
        let namespaces = lock(&ctrlr.namespaces).clone();
        Ok(TcpIoQpair {
            q,
            generation,
            namespaces,
            max_transfer: ctrlr.max_transfer(),
            ctrlr,
            delay_doorbell,
            size,
            requests,
            connected: true,
            timeout: None,
            next_timeout_scan: Instant::now(),
        })
    }

    pub(crate) fn submit(&mut self, req: Request) -> Result<()> {
        match self.ctrlr.state.load(Ordering::Acquire) {
            state::OK | state::RESETTING => {}
            _ => return Err(self.ctrlr.state_error()),
        }
        if !self.connected || self.generation != self.ctrlr.generation.load(Ordering::Acquire) {
            // Reconnecting: wait, to be sent on the new connection.
            return self.q.queue(req);
        }
        self.q.submit(req)?;
        if !self.delay_doorbell {
            if let Err(e) = self.q.flush() {
                self.broken(&e);
            }
        }
        Ok(())
    }

    fn broken(&mut self, e: &NvmeError) {
        if self.connected {
            self.connected = false;
            self.q.shutdown();
            if self.ctrlr.state.load(Ordering::Acquire) == state::OK {
                self.ctrlr.fail(&e.to_string());
            }
        }
    }

    /// Re-creates the connection after a controller reset (reconnect).
    fn reconnect(&mut self, done: &mut dyn FnMut(&Completion)) -> Result<u32> {
        let n = self.q.abort_all_in_flight(done);
        let pending = self.q.take_pending();
        let gen = self.ctrlr.generation.load(Ordering::Acquire);
        let mut q = TcpQpair::connect(&self.ctrlr.queue_params(
            self.q.qid,
            self.size,
            self.requests,
        ))?;
        q.icd = self.ctrlr.io_icd();
        q.track_time = self.timeout.is_some();
        for r in pending {
            q.submit(r)?;
        }
        self.q.shutdown();
        self.q = q;
        self.connected = true;
        self.generation = gen;
        self.namespaces = lock(&self.ctrlr.namespaces).clone();
        tracing::info!(qid = self.q.qid, "NVMe/TCP I/O queue pair reconnected");
        Ok(n)
    }

    pub(crate) fn process_completions(
        &mut self,
        max: u32,
        done: &mut dyn FnMut(&Completion),
    ) -> Result<u32> {
        let st = self.ctrlr.state.load(Ordering::Acquire);
        match st {
            state::FAILED | state::DETACHED => {
                let mut n = 0;
                if self.connected {
                    // What already arrived is real.
                    n += self.q.poll(0, &mut |_, c| done(&c)).unwrap_or(0);
                    self.connected = false;
                    self.q.shutdown();
                }
                n += self.q.abort_all(&mut |_, c| done(&c));
                if n > 0 {
                    return Ok(n);
                }
                return Err(self.ctrlr.state_error());
            }
            state::RESETTING | state::DISABLING => {
                return Ok(self.q.abort_all_in_flight(done));
            }
            _ => {}
        }
        let mut n = 0;
        if self.generation != self.ctrlr.generation.load(Ordering::Acquire) || !self.connected {
            match self.reconnect(done) {
                Ok(k) => n += k,
                Err(e) => {
                    n += self.q.abort_all(&mut |_, c| done(&c));
                    self.ctrlr
                        .fail(&format!("reconnecting I/O queue {}: {e}", self.q.qid));
                    return if n > 0 { Ok(n) } else { Err(e) };
                }
            }
        }
        match self.q.poll(max, &mut |_, c| done(&c)) {
            Ok(k) => {
                if self.timeout.is_some() {
                    self.run_timeouts();
                }
                Ok(n + k)
            }
            Err(e) => {
                self.broken(&e);
                n += self.q.abort_all(&mut |_, c| done(&c));
                if n > 0 {
                    Ok(n)
                } else {
                    Err(e)
                }
            }
        }
    }
}

impl TcpQpair {
    /// Calls `f` once for each command in flight for `timeout` or longer.
    fn check_timeouts(
        &mut self,
        now: Instant,
        timeout: Duration,
        f: &mut dyn FnMut(u16, &Request),
    ) {
        for (cid, s) in self.slots.iter_mut().enumerate() {
            let (Some(req), Some(at)) = (s.req.as_ref(), s.sent_at) else {
                continue;
            };
            if !s.timed_out && now.duration_since(at) >= timeout {
                s.timed_out = true;
                f(cid as u16, req);
            }
        }
    }

    /// Hands back the commands in flight (not the waiting ones).
    pub(crate) fn abort_all_in_flight(&mut self, done: &mut dyn FnMut(&Completion)) -> u32 {
        let pending = std::mem::take(&mut self.pending);
        let n = self.abort_all(&mut |_, c| done(&c));
        self.pending = pending;
        n
    }
}

impl Drop for TcpIoQpair {
    fn drop(&mut self) {
        self.q.shutdown();
        self.ctrlr.free_qid(self.q.qid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_carries_an_sgl_even_without_data() {
        // Keep Alive, Property Get, AER: no data, still PSDT 01b and a null
        // transport data block (the kernel target checks PSDT).
        let mut s = Sqe::new(AdminOpcode::KeepAlive.into(), 0);
        set_sgl(&mut s, 0, false);
        assert_eq!(s.psdt(), 1);
        assert_eq!((s.dw[8], s.dw[9] >> 24), (0, 0x5a));
        let mut s = Sqe::new(0x01, 1);
        set_sgl(&mut s, 4096, true);
        assert_eq!((s.psdt(), s.dw[8], s.dw[9] >> 24), (1, 4096, 0x01));
        let mut s = Sqe::new(0x02, 1);
        set_sgl(&mut s, 131072, false);
        assert_eq!((s.psdt(), s.dw[8], s.dw[9] >> 24), (1, 131072, 0x5a));
    }

    #[test]
    fn direction_of_data() {
        assert!(is_write(&Sqe::new(0x01, 1)));
        assert!(!is_write(&Sqe::new(0x02, 1)));
        assert!(is_write(&Sqe::new(0x05, 1)), "compare sends data");
        assert!(is_write(&Sqe::new(FABRICS_OPCODE, fctype::CONNECT as u32)));
        assert!(!is_write(&Sqe::new(
            FABRICS_OPCODE,
            fctype::PROPERTY_GET as u32
        )));
        assert!(!is_write(&Sqe::new(AdminOpcode::Identify.into(), 0)));
    }

    #[test]
    fn dsm_range_is_gathered_as_16_bytes() {
        let mut out = Vec::new();
        let p = Payload::DsmRange(crate::spec::DsmRange {
            attributes: 0,
            nlb: 8,
            slba: 0x1_0000_0002,
        });
        assert!(gather(&p, 0, 16, &mut out));
        assert_eq!(out, [0, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
        assert!(!gather(&p, 8, 16, &mut out), "past its end");
        let mut b = [0u8; 8];
        let p = Payload::Contig {
            vaddr: b.as_mut_ptr() as usize,
            len: 8,
        };
        assert!(scatter(&p, 4, &[1, 2, 3, 4]));
        assert!(!scatter(&p, 6, &[1, 2, 3]), "past its end");
        assert_eq!(b, [0, 0, 0, 0, 1, 2, 3, 4]);
    }
}
