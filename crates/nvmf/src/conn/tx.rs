//! The send side of the NVMe/TCP transport (SPDK: `nvmf_tcp_qpair_write_pdu`
//! and `_tcp_write_pdu` in `lib/nvmf/tcp.c`): the output queue of PDU
//! bytes and C2H data buffers sent without a copy, and command completion
//! (C2HData, with the SUCCESS flag when the host disabled SQ flow
//! control, and CapsuleResp).

use std::io::IoSlice;
use std::sync::atomic::Ordering;

use rspdk_nvme::spec::status::{generic, Status};
use rspdk_nvme::spec::Cqe;

use super::{Conn, DataBufs, ReqState, INLINE_DATA_MAX, MAX_IOV};
use crate::pdu::{self, DataHeader};

/// A piece of queued output, sent in order by [`Conn::flush_with`].
pub(crate) enum OutSeg<Buf> {
    /// The next `.0` bytes of `wbuf` (headers, responses, digests).
    Inline(usize),
    /// C2H data sent straight from a command's buffer, which the queue owns
    /// until the socket took the bytes (then it goes back to the pool).
    Data { buf: Buf, off: usize, len: usize },
}

impl<B: DataBufs> Conn<B> {
    /// Output bytes waiting for the socket.
    pub(crate) fn queued(&self) -> usize {
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
    fn push_data(&mut self, buf: B::Buf, len: usize) {
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

    /// Hands queued output to `write` (up to [`MAX_IOV`] pieces at a time;
    /// a non-blocking `writev`) until it takes less than offered, would
    /// block, or nothing is left. True if anything was sent. Any other
    /// error closes the connection.
    pub fn flush_with(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> std::io::Result<usize>,
    ) -> bool {
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
                (write(&iov[..n]), total)
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

    /// Queues the response of request `slot` (and its C2H data) and frees
    /// the slot.
    pub fn complete(&mut self, slot: usize, status: Status, dw0: u32) {
        rspdk_trace::record(
            crate::trace::REQ_COMPLETED,
            crate::trace::req_id(self.id(), slot),
            &[self.id(), u64::from(status != generic::SUCCESS)],
        );
        let (cid, c2h, len) = {
            let r = &self.reqs[slot];
            (r.cid, r.c2h, r.len)
        };
        let mut buf = self.reqs[slot].buf.take();
        let ok = status == generic::SUCCESS;
        let mut skip_resp = false;
        if ok && c2h && len > 0 {
            if let Some(b) = buf.take() {
                let success = self.p.opts.c2h_success
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
        self.p
            .stats
            .completed_nvme_io
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Everything queued for the host, as the socket would get it
    /// (in-process tests and fuzzing).
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        self.flush_with(|iov| {
            let mut n = 0;
            for s in iov {
                out.extend_from_slice(s);
                n += s.len();
            }
            Ok(n)
        });
    }
}
