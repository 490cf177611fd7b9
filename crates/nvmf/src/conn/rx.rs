//! The receive side of the NVMe/TCP transport (SPDK: `nvmf_tcp_sock_process`
//! in `lib/nvmf/tcp.c`): PDU framing, ICReq, command capsules with
//! in-capsule data, R2T and H2CData, digests, and termination of a
//! connection whose PDU breaks the rules.

use std::io::IoSliceMut;

use rspdk_nvme::spec::fabrics;
use rspdk_nvme::spec::status::generic;
use rspdk_nvme::spec::{xfer, SglDescriptor, Sqe};
use rspdk_nvme::tcp::PduError;

use super::{Conn, DataBufs, ReqState, ADMIN_ICD, ADMIN_MAX_XFER, RBUF_STEADY};
use crate::error::NvmfError;
use crate::pdu::{self, fes, DataHeader, Digests, IcResp, Pdu};

/// Where the payload of a data-carrying PDU goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RxKind {
    /// In-capsule data of a command.
    Capsule,
    /// H2CData answering an R2T.
    H2c,
}

/// The receive side between and inside PDUs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Rx {
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

impl<B: DataBufs> Conn<B> {
    /// Reads received bytes: `read` fills the slices it is given (the
    /// receive buffer, or the rest of the current PDU's payload in its
    /// command's buffer, its data digest and then the receive buffer) and
    /// returns how many bytes it put there, 0 at end of stream. Call
    /// [`Conn::process`] after it. `now` is the time in ns.
    pub fn read_with(
        &mut self,
        now: u64,
        read: impl FnOnce(&mut [IoSliceMut<'_>]) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        self.now = now;
        if self.rlen == 0 && matches!(self.rx, Rx::Data { .. }) {
            return self.read_direct(read);
        }
        if self.rlen == self.rbuf.len() {
            let want = self.rbuf.len() * 2;
            self.rbuf.resize(want, 0);
        }
        let n = read(&mut [IoSliceMut::new(&mut self.rbuf[self.rlen..])])?;
        self.rlen += n;
        Ok(n)
    }

    /// Takes `bytes` as received at `now` and handles them, as a socket
    /// read of them would (in-process tests and fuzzing).
    pub fn feed(&mut self, mut bytes: &[u8], now: u64) {
        while !bytes.is_empty() && !self.closed {
            let r = self.read_with(now, |iov| {
                let mut n = 0;
                for s in iov.iter_mut() {
                    let k = s.len().min(bytes.len() - n);
                    s[..k].copy_from_slice(&bytes[n..n + k]);
                    n += k;
                }
                Ok(n)
            });
            match r {
                Ok(n) if n > 0 => bytes = &bytes[n..],
                _ => break,
            }
            self.process();
        }
    }

    /// Reads the rest of the PDU being received straight into its command's
    /// buffer, the data digest after it and whatever follows into `rbuf`,
    /// with one `readv` (`rbuf` is empty). Returns the bytes read.
    fn read_direct(
        &mut self,
        read: impl FnOnce(&mut [IoSliceMut<'_>]) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        let Conn {
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
                IoSliceMut::new(&mut b[*off..*end]),
                IoSliceMut::new(&mut dgst[*dgot..*dneed]),
                IoSliceMut::new(&mut rbuf[..]),
            ];
            read(&mut iov)?
        };
        let k = n.min(*end - *off);
        *off += k;
        let d = (n - k).min(*dneed - *dgot);
        *dgot += d;
        *rlen = n - k - d;
        Ok(n)
    }

    /// Handles every whole PDU in the receive buffer; payloads of capsules
    /// and H2CData go to their command's buffer as they come. NVM commands
    /// become [`Conn::next_request`]s.
    pub fn process(&mut self) {
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
                    self.rx_done();
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
            match self.data_pdu_header(avail) {
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
                    if let Err(e) = self.handle(p) {
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
    fn data_pdu_header(&mut self, avail: &[u8]) -> Result<HdrStep, NvmfError> {
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
            (RxKind::Capsule, self.capsule_start(sqe, datal)?)
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
    fn rx_done(&mut self) {
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
                tracing::warn!(peer = %self.p.peer, conn = self.p.id, cid = self.reqs[slot].cid, error = %e,
                    "nvmf: the command fails with Transient Transport Error");
            }
        }
        match kind {
            RxKind::Capsule => {
                if bad {
                    self.complete(slot, generic::TRANSIENT_TRANSPORT, 0);
                } else {
                    self.exec(slot);
                }
            }
            RxKind::H2c => self.h2c_done(slot, end, bad),
        }
    }
    fn handle(&mut self, p: Pdu<'_>) -> Result<(), NvmfError> {
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
                let icd = ADMIN_ICD.max(self.p.opts.in_capsule_data_size as usize);
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
                if let Some((slot, _)) = self.capsule_start(sqe, data.len())? {
                    if let Some(b) = self.reqs[slot].buf.as_mut() {
                        b[..data.len()].copy_from_slice(data);
                    }
                    self.exec(slot);
                }
                Ok(())
            }
            Pdu::H2cData { hdr, data, .. } => {
                let (slot, start) = self.h2c_start(hdr)?;
                let end = start + data.len();
                if let Some(b) = self.reqs[slot].buf.as_mut() {
                    b[start..end].copy_from_slice(data);
                }
                self.h2c_done(slot, end, false);
                Ok(())
            }
            Pdu::H2cTermReq { fes, fei, .. } => {
                tracing::warn!(peer = %self.p.peer, fes, fei, "nvmf: host terminated the connection");
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
        rspdk_trace::record_tsc(
            crate::trace::REQ_NEW,
            self.now,
            crate::trace::req_id(self.id(), slot),
            &[self.id(), cid as u64, sqe.opcode() as u64],
        );
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
            self.p.opts.max_io_size as usize
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
                        self.p.opts.in_capsule_data_size as usize
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
        self.exec(slot);
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
    fn h2c_done(&mut self, slot: usize, end: usize, bad: bool) {
        let r = &mut self.reqs[slot];
        r.recvd = end;
        if bad && r.status == generic::SUCCESS {
            r.status = generic::TRANSIENT_TRANSPORT;
        }
        if r.recvd == r.len {
            r.state = ReqState::Exec;
            if r.status == generic::SUCCESS {
                self.exec(slot);
            } else {
                let st = r.status;
                self.complete(slot, st, 0);
            }
        }
    }

    /// Sends a C2HTermReq for `e` and closes.
    fn terminate(&mut self, e: &NvmfError, header: &[u8]) {
        let (fes_v, fei) = match e {
            NvmfError::Pdu(PduError::BadPdu { fes, offset, .. }) => (*fes, *offset),
            NvmfError::Pdu(PduError::Digest { .. }) => (fes::HDGST_ERROR, 0),
            _ => (fes::INVALID_HEADER_FIELD, 0),
        };
        tracing::warn!(peer = %self.p.peer, conn = self.p.id, error = %e, "nvmf: terminating the connection");
        let n = header.len().min(pdu::TERM_REQ_MAX_DATA);
        Pdu::C2hTermReq {
            fes: fes_v as u16,
            fei,
            data: &header[..n],
        }
        .emit(&mut self.wbuf, Digests::default());
        self.close(&e.to_string());
    }
}
