//! PDU I/O (SPDK: lib/iscsi/conn.c's PDU reading and writing): framing
//! of the received bytes into PDUs with their digests checked, and the
//! output queue the responses are emitted into.

use super::{ConnCore, State};
use crate::conn::{
    IN_QUEUE_MAX, LOGIN_MAX_DATA, NO_TAG, OUT_KEEP_MAX, OUT_QUEUE_MAX, TASKS_PER_QUEUE_DEPTH,
};
use crate::pdu::{op, reject, Bhs, Parsed, Pdu};
use crate::IscsiError;

impl ConnCore {
    /// True if the connection takes more input now: logging in or in full
    /// feature phase, with less than [`OUT_QUEUE_MAX`] of responses unsent
    /// (an initiator that does not read its responses gets no new PDUs
    /// processed until they drain) and less than [`IN_QUEUE_MAX`] of input
    /// unprocessed.
    pub fn wants_input(&self) -> bool {
        matches!(self.state, State::Login | State::FullFeature)
            && self.out_queued() <= OUT_QUEUE_MAX
            && self.inbuf.len() - self.in_pos < IN_QUEUE_MAX
    }

    /// Bytes received from the initiator.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.inbuf.extend_from_slice(bytes);
    }

    /// Bytes to send to the initiator; [`ConnCore::consume_output`] says
    /// how many were sent.
    pub fn output(&self) -> &[u8] {
        &self.outbuf[self.out_pos..]
    }

    /// `n` bytes of [`ConnCore::output`] were sent.
    pub fn consume_output(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.outbuf.len());
        if self.out_pos >= self.outbuf.len() {
            self.outbuf.clear();
            self.out_pos = 0;
            // Give back what a burst of very large responses grew the
            // queue to (not every large READ's: regrowing costs page faults).
            if self.outbuf.capacity() > OUT_KEEP_MAX {
                self.outbuf.shrink_to(OUT_KEEP_MAX);
            }
        }
    }

    /// Bytes queued for the initiator and not yet written.
    pub(super) fn out_queued(&self) -> usize {
        self.outbuf.len() - self.out_pos
    }

    pub(super) fn send(&mut self, pdu: &Pdu) {
        pdu.emit(&mut self.outbuf, self.hd, self.dd);
    }

    pub(super) fn send_reject(&mut self, reason: u8, bad: &Bhs) {
        let mut b = Bhs::new(op::REJECT, 0x80);
        b.set_reject_reason(reason);
        b.set_itt(NO_TAG);
        self.next_stat_sn(&mut b);
        self.send(&Pdu::new(b, bad.as_bytes().to_vec()));
    }

    /// Handles the PDUs received so far at time `now_ns`, as far as the
    /// output queue and the task limit let it (backpressure). It stops
    /// after a PDU that made a SCSI task ready: the driver executes it
    /// ([`ConnCore::next_task`]) and calls again, so that each task
    /// reaches the SCSI layer before the next PDU is handled (a LUN RESET
    /// behind a READ finds the READ running, as in SPDK). Returns true if
    /// it handled any PDU.
    pub fn process_input(&mut self, now_ns: u64) -> bool {
        self.now_ns = now_ns;
        let mut busy = false;
        let mut pos = self.in_pos;
        let max_tasks = (self.queue_depth.max(1) as usize) * TASKS_PER_QUEUE_DEPTH;
        while self.state == State::Login || self.state == State::FullFeature {
            // Backpressure: a full output queue stops all processing, the
            // task limit new SCSI commands (Data-Out for running tasks
            // still goes on, so writes can finish).
            if self.out_queued() > OUT_QUEUE_MAX {
                break;
            }
            if self.running >= max_tasks
                && self
                    .inbuf
                    .get(pos)
                    .is_some_and(|b| b & 0x3f == op::SCSI_CMD)
            {
                break;
            }
            let max = if self.state == State::Login {
                LOGIN_MAX_DATA
            } else {
                self.limits.max_recv_data_segment_length as usize
            };
            match Pdu::parse(&self.inbuf[pos..], self.hd, self.dd, max) {
                Ok(Parsed::Incomplete(_)) => break,
                Ok(Parsed::Pdu(p, n)) => {
                    pos += n;
                    busy = true;
                    self.handle(p);
                    if !self.ready.is_empty() {
                        break;
                    }
                }
                Err(IscsiError::DataDigest { .. }) => {
                    // Skip the PDU, reject it, go on (ERL 0 lets the task time out).
                    let bhs = Bhs::parse(&self.inbuf[pos..]).unwrap_or_default();
                    pos += crate::pdu::wire_len(&bhs, self.hd, true);
                    busy = true;
                    self.send_reject(reject::DATA_DIGEST, &bhs);
                }
                Err(e) => {
                    tracing::warn!(peer = %self.peer, error = %e, "closing iSCSI connection");
                    if let Ok(bhs) = Bhs::parse(&self.inbuf[pos..]) {
                        if self.state == State::FullFeature
                            && !matches!(e, IscsiError::HeaderDigest)
                        {
                            self.send_reject(reject::PROTOCOL_ERROR, &bhs);
                        }
                    }
                    self.set_state(State::Closing);
                    pos = self.inbuf.len();
                    break;
                }
            }
        }
        let pos = pos.min(self.inbuf.len());
        if self.ready.is_empty() {
            // One move of the unprocessed tail per call, not per PDU.
            self.inbuf.drain(..pos);
            self.in_pos = 0;
        } else {
            self.in_pos = pos;
        }
        busy
    }
}
