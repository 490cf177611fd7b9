//! One NVMe/TCP queue (admin or I/O queue pair): its connection,
//! ICReq/ICResp and the fabrics Connect, command capsules, R2T and H2CData,
//! C2HData and responses, and the commands in flight.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::connect::QueueParams;
use super::payload::{gather, is_write, payload_len, scatter, set_sgl};
use crate::error::{NvmeError, Result};
use crate::queue::{Completion, Payload, Request};
use crate::status::Status;
use crate::tcp::pdu::{self, DataHeader, Digests, Pdu};

/// Receive buffer: large enough for many PDUs per `read`.
const RBUF: usize = 512 * 1024;
/// The largest PDU accepted (a C2HData of 16 MiB plus headers).
pub(super) const MAX_PLEN: u32 = (16 << 20) + 4096;

const ABORTED: Status = Status::ABORTED_SQ_DELETION;

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
    pub(super) dg: Digests,
    pub(super) maxh2cdata: usize,
    pub(super) rbuf: Vec<u8>,
    pub(super) rstart: usize,
    pub(super) rend: usize,
    pub(super) wbuf: Vec<u8>,
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

pub(super) fn terr(addr: &SocketAddr, reason: impl Into<String>) -> NvmeError {
    NvmeError::Transport {
        addr: addr.to_string(),
        reason: reason.into(),
    }
}

impl TcpQpair {
    /// A queue on the connected, non-blocking socket `sock`, with every
    /// buffer allocated, before ICReq.
    pub(super) fn new(sock: TcpStream, p: &QueueParams<'_>) -> TcpQpair {
        let addr = p.addr;
        let entries = p.size.max(2) as usize;
        TcpQpair {
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
        }
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
    pub(super) fn fill(&mut self) -> Result<usize> {
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

    /// True while command `cid` is in flight.
    pub(crate) fn in_flight(&self, cid: u16) -> bool {
        self.slots
            .get(cid as usize)
            .is_some_and(|s| s.req.is_some())
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

impl TcpQpair {
    /// Calls `f` once for each command in flight for `timeout` or longer.
    pub(super) fn check_timeouts(
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
