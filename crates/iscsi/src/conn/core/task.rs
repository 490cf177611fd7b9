//! SCSI tasks (SPDK: iscsi.c's SCSI command, Data-Out and R2T handling,
//! and Data-In / SCSI Response building): immediate and unsolicited data,
//! R2T pacing within the solicit budget, DataSN/R2TSN checks, Data-In
//! with phase collapse and residuals.

use rspdk_scsi::{decode_lun, ScsiCommand, ScsiResult};

use super::{ConnCore, State};
use crate::conn::{NO_TAG, SOLICIT_BUDGET};
use crate::pdu::{op, reject, Bhs, Pdu, ScsiCmd};

/// Free CDB buffers a connection keeps at most.
pub(super) const CDB_POOL_MAX: usize = 256;

/// A SCSI command ready to execute, handed to the driver by
/// [`ConnCore::next_task`].
#[derive(Debug)]
pub struct ScsiTask {
    /// The command's Initiator Task Tag: its result goes back under it.
    pub itt: u32,
    /// The LUN (decoded).
    pub lun: u64,
    /// The CDB, the data received and the I_T nexus.
    pub cmd: ScsiCommand,
}

pub(super) struct Task {
    pub(super) lun: u64,
    pub(super) cdb: Vec<u8>,
    pub(super) edtl: u32,
    pub(super) read: bool,
    pub(super) write: bool,
    pub(super) data: Vec<u8>,
    pub(super) received: u32,
    pub(super) next_r2t_offset: u32,
    /// Outstanding R2Ts: (ttt, offset, len, next expected DataSN).
    pub(super) r2ts: Vec<(u32, u32, u32, u32)>,
    pub(super) r2t_sn: u32,
    pub(super) unsol_data_sn: u32,
    pub(super) unsolicited_left: u32,
    pub(super) executing: bool,
    pub(super) aborted: bool,
    /// When the command arrived (ns), while the target's histogram is on.
    pub(super) start_ns: u64,
    /// WRITE data bytes reserved in the connection's [`SOLICIT_BUDGET`] by
    /// the command's first R2T (all it still needs), until it executes.
    pub(super) solicited: u32,
}

impl ConnCore {
    pub(super) fn handle_scsi(&mut self, p: Pdu) {
        let b = p.bhs;
        if !self.accept_cmd_sn(&b) {
            return;
        }
        let itt = b.itt();
        if !self.pre_aborted.is_empty() && self.drop_pre_aborted(itt, b.cmd_sn()) {
            return;
        }
        let cmd = ScsiCmd::new_unchecked_view(b);
        let read = cmd.read();
        let write = cmd.write();
        let edtl = cmd.edtl();
        // A CDB buffer from the connection's free list: no allocation per
        // command in steady state.
        let mut cdb = self.cdb_pool.pop().unwrap_or_default();
        cdb.clear();
        cdb.extend_from_slice(b.cdb());
        if p.ahs.len() >= 4 && p.ahs[2] == 0x01 {
            // Extended CDB AHS.
            let alen = usize::from(u16::from_be_bytes([p.ahs[0], p.ahs[1]]));
            let ext = p.ahs.get(4..(3 + alen).min(p.ahs.len())).unwrap_or(&[]);
            cdb.extend_from_slice(ext);
        }
        if self.tasks.contains_key(&itt) {
            return self.send_reject(reject::TASK_IN_PROGRESS, &b);
        }
        if !p.data.is_empty()
            && (!write || !self.params.immediate_data || p.data.len() > edtl as usize)
        {
            return self.send_reject(reject::PROTOCOL_ERROR, &b);
        }
        if p.data.len() > self.params.first_burst_length as usize {
            return self.send_reject(reject::PROTOCOL_ERROR, &b);
        }
        let lun = decode_lun(b.lun());
        let mut task = Task {
            lun,
            cdb,
            edtl,
            read,
            write,
            data: Vec::new(),
            received: 0,
            next_r2t_offset: 0,
            r2ts: Vec::new(),
            r2t_sn: 0,
            unsol_data_sn: 0,
            unsolicited_left: 0,
            executing: false,
            aborted: false,
            start_ns: match &self.target {
                Some(t) if t.histogram.enabled() => self.now_ns,
                _ => 0,
            },
            solicited: 0,
        };
        if write && edtl > 0 {
            if edtl > 64 << 20 {
                return self.respond_check(
                    itt,
                    rspdk_scsi::Sense::INVALID_FIELD_IN_CDB,
                    edtl,
                    read,
                );
            }
            let imm = p.data.len();
            if imm == edtl as usize {
                // All of it immediate: take the PDU's (pooled) buffer.
                task.data = p.data;
            } else {
                task.data = rspdk_scsi::bufpool::get(edtl as usize);
                task.data[..imm].copy_from_slice(&p.data);
                rspdk_scsi::bufpool::put(p.data);
            }
            task.received = imm as u32;
            task.next_r2t_offset = imm as u32;
            if !self.params.initial_r2t && task.received < edtl {
                let unsol = self.params.first_burst_length.min(edtl);
                if unsol > task.received {
                    task.unsolicited_left = unsol - task.received;
                    task.next_r2t_offset = unsol;
                }
            }
            self.tasks.insert(itt, task);
            if !self.maybe_execute(itt) {
                self.send_r2ts(itt);
            }
        } else {
            self.tasks.insert(itt, task);
            self.execute(itt);
        }
    }

    pub(super) fn respond_check(
        &mut self,
        itt: u32,
        sense: rspdk_scsi::Sense,
        edtl: u32,
        _read: bool,
    ) {
        let r = ScsiResult::check(sense);
        self.send_response(itt, &r, edtl, 0, 0);
    }

    pub(super) fn send_r2ts(&mut self, itt: u32) {
        let burst = self.params.max_burst_length;
        let max_out = self.params.max_outstanding_r2t as usize;
        let Some(t) = self.tasks.get_mut(&itt) else {
            return;
        };
        if t.unsolicited_left > 0 {
            return;
        }
        let lun = t.lun;
        let mut new = Vec::new();
        while t.r2ts.len() < max_out && t.next_r2t_offset < t.edtl {
            let off = t.next_r2t_offset;
            let len = burst.min(t.edtl - off);
            if t.solicited == 0 {
                // A command's first R2T reserves all the data still to be
                // solicited, so that a command admitted can always finish
                // (reserving burst by burst, unfinished commands could take
                // the whole budget and none complete).
                let need = (t.edtl - off) as usize;
                if self.solicited > 0 && self.solicited + need > SOLICIT_BUDGET {
                    // Solicit when an executing command frees its share.
                    self.r2t_starved = true;
                    break;
                }
                self.solicited += need;
                t.solicited = need as u32;
            }
            let ttt = self.next_ttt;
            self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
            if self.next_ttt == NO_TAG {
                self.next_ttt = 1;
            }
            t.r2ts.push((ttt, off, len, 0));
            t.next_r2t_offset += len;
            new.push((ttt, off, len, t.r2t_sn));
            t.r2t_sn += 1;
        }
        for (ttt, off, len, sn) in new {
            self.ttt_to_itt.insert(ttt, itt);
            let mut b = Bhs::new(op::R2T, 0x80);
            b.set_lun(rspdk_scsi::encode_lun(lun));
            b.set_itt(itt);
            b.set_ttt(ttt);
            self.set_sns(&mut b, false);
            b.set_data_sn(sn); // R2TSN
            b.set_buffer_offset(off);
            b.set_desired_len(len);
            self.send(&Pdu::new(b, Vec::new()));
        }
    }

    pub(super) fn handle_data_out(&mut self, p: Pdu) {
        let b = p.bhs;
        let itt = b.itt();
        let ttt = b.ttt();
        let Some(t) = self.tasks.get_mut(&itt) else {
            return self.send_reject(reject::INVALID_FIELD, &b);
        };
        let off = b.buffer_offset();
        let len = p.data.len() as u32;
        let end = off.checked_add(len);
        if !t.write || t.executing || end.is_none_or(|e| e > t.edtl) {
            return self.send_reject(reject::PROTOCOL_ERROR, &b);
        }
        let data_sn = b.data_sn();
        if ttt == NO_TAG {
            // Unsolicited.
            if t.unsolicited_left < len || data_sn != t.unsol_data_sn {
                return self.send_reject(reject::PROTOCOL_ERROR, &b);
            }
            t.unsol_data_sn += 1;
            t.unsolicited_left -= len;
            if b.final_bit() {
                t.unsolicited_left = 0;
            }
        } else {
            let Some(r) = t.r2ts.iter_mut().find(|r| r.0 == ttt) else {
                return self.send_reject(reject::INVALID_FIELD, &b);
            };
            if data_sn != r.3 || off < r.1 || off + len > r.1 + r.2 {
                return self.send_reject(reject::PROTOCOL_ERROR, &b);
            }
            r.3 += 1;
            if b.final_bit() {
                t.r2ts.retain(|r| r.0 != ttt);
                self.ttt_to_itt.remove(&ttt);
            }
        }
        let (o, e) = (off as usize, (off + len) as usize);
        t.data[o..e].copy_from_slice(&p.data);
        rspdk_scsi::bufpool::put(p.data);
        t.received += len;
        if !self.maybe_execute(itt) {
            self.send_r2ts(itt);
        }
    }

    /// Executes a write task once all its data arrived.
    pub(super) fn maybe_execute(&mut self, itt: u32) -> bool {
        let ready = self
            .tasks
            .get(&itt)
            .is_some_and(|t| t.received >= t.edtl && t.r2ts.is_empty() && t.unsolicited_left == 0);
        if ready {
            self.execute(itt);
        }
        ready
    }

    /// Hands the task to the driver: it is executing from now on (for
    /// aborts, the task limit and the solicit budget).
    pub(super) fn execute(&mut self, itt: u32) {
        let Some(t) = self.tasks.get_mut(&itt) else {
            return;
        };
        t.executing = true;
        self.running += 1;
        self.solicited -= t.solicited as usize;
        t.solicited = 0;
        let cmd = ScsiCommand {
            // Moved, and the nexus shared: no allocation here.
            cdb: std::mem::take(&mut t.cdb),
            data_out: std::mem::take(&mut t.data),
            nexus: self
                .session
                .as_ref()
                .map(|s| s.nexus.clone())
                .unwrap_or_else(|| "".into()),
        };
        let lun = t.lun;
        // The queue keeps its capacity: no allocation per command.
        self.ready.push_back(ScsiTask { itt, lun, cmd });
        self.resume_r2ts();
    }

    /// Sends the R2Ts that waited for [`SOLICIT_BUDGET`], now that some of
    /// it is free.
    pub(super) fn resume_r2ts(&mut self) {
        if !self.r2t_starved || self.solicited >= SOLICIT_BUDGET {
            return;
        }
        self.r2t_starved = false;
        let waiting: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, t)| {
                t.write && !t.executing && t.unsolicited_left == 0 && t.next_r2t_offset < t.edtl
            })
            .map(|(itt, _)| *itt)
            .collect();
        for itt in waiting {
            self.send_r2ts(itt);
        }
    }

    /// Forgets a task that never executed (aborted), with its R2Ts and its
    /// share of the solicited bytes.
    pub(super) fn drop_task(&mut self, itt: u32) {
        if let Some(t) = self.tasks.remove(&itt) {
            self.solicited -= t.solicited as usize;
            self.ttt_to_itt.retain(|_, i| *i != itt);
            self.resume_r2ts();
        }
    }

    /// The next SCSI task to execute, in command order. The driver runs
    /// it (on the target's SCSI device), gives its buffers back with
    /// [`ConnCore::recycle`] and feeds its result to
    /// [`ConnCore::task_done`], at once or later.
    pub fn next_task(&mut self) -> Option<ScsiTask> {
        self.ready.pop_front()
    }

    /// True if a SCSI task waits for [`ConnCore::next_task`].
    pub fn has_task(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Takes back the buffers of an executed task's command (the SCSI
    /// layer copied what it keeps): no allocation per command in steady
    /// state.
    pub fn recycle(&mut self, cmd: ScsiCommand) {
        let ScsiCommand { cdb, data_out, .. } = cmd;
        rspdk_scsi::bufpool::put(data_out);
        if self.cdb_pool.len() < CDB_POOL_MAX {
            self.cdb_pool.push(cdb);
        }
    }

    /// Task `itt` ended with `r` at time `now_ns`: its Data-In and
    /// response are queued (or, if it was aborted, the task management
    /// functions waiting for it are told).
    pub fn task_done(&mut self, itt: u32, r: ScsiResult, now_ns: u64) {
        self.now_ns = now_ns;
        let Some(t) = self.tasks.remove(&itt) else {
            return;
        };
        self.running = self.running.saturating_sub(1);
        if t.start_ns != 0 {
            if let Some(tg) = self.target.as_ref().filter(|tg| tg.histogram.enabled()) {
                tg.histogram.tally(now_ns.saturating_sub(t.start_ns));
            }
        }
        if t.aborted {
            self.aborted_task_done(itt);
            return;
        }
        if self.state != State::FullFeature {
            return;
        }
        self.complete(itt, &t, &r);
        // Data-In written (copied into the output buffer): the read
        // buffer goes back to iobuf as `r` drops.
    }

    pub(super) fn complete(&mut self, itt: u32, t: &Task, r: &ScsiResult) {
        let lun = rspdk_scsi::encode_lun(t.lun);
        if r.status == rspdk_scsi::status::GOOD && t.read && !r.data.is_empty() {
            // Data-In, with status in the last PDU.
            let total = r.data.len();
            let send = total.min(t.edtl as usize);
            let (flags_res, resid) = residual(t.edtl as usize, total);
            let seg = self.params.send_dsl.max(512) as usize;
            let mut off = 0;
            let mut data_sn = 0u32;
            if send == 0 {
                self.send_response(itt, r, t.edtl, total as u32, 0);
                return;
            }
            while off < send {
                let n = seg.min(send - off);
                let last = off + n == send;
                let mut b = Bhs::new(op::DATA_IN, if last { 0x80 | 0x01 | flags_res } else { 0 });
                b.set_lun(lun);
                b.set_itt(itt);
                b.set_ttt(NO_TAG);
                if last {
                    b.set_status(r.status);
                    self.next_stat_sn(&mut b);
                    b.set_residual_count(resid);
                } else {
                    b.set_exp_cmd_sn(self.exp_cmd_sn());
                    b.set_max_cmd_sn(self.max_cmd_sn());
                }
                b.set_data_sn(data_sn);
                b.set_buffer_offset(off as u32);
                // Straight from the read buffer: no copy per PDU.
                crate::pdu::emit_parts(
                    &b,
                    &[],
                    &r.data[off..off + n],
                    &mut self.outbuf,
                    self.hd,
                    self.dd,
                );
                data_sn += 1;
                off += n;
            }
            return;
        }
        let xfer = if t.write {
            r.data_out_len
                .map(|l| u32::try_from(l).unwrap_or(u32::MAX))
                .unwrap_or(t.edtl)
        } else {
            r.data.len() as u32
        };
        let xfer = if r.status == rspdk_scsi::status::GOOD {
            xfer
        } else {
            0
        };
        self.send_response(itt, r, t.edtl, if t.read || t.write { xfer } else { 0 }, 0);
    }

    pub(super) fn send_response(
        &mut self,
        itt: u32,
        r: &ScsiResult,
        edtl: u32,
        transferred: u32,
        exp_data_sn: u32,
    ) {
        let (flags_res, resid) = if edtl == 0 && transferred == 0 {
            (0, 0)
        } else {
            residual(edtl as usize, transferred as usize)
        };
        let mut b = Bhs::new(op::SCSI_RESP, 0x80 | flags_res);
        b.set_response(0);
        b.set_status(r.status);
        b.set_itt(itt);
        self.next_stat_sn(&mut b);
        b.set_data_sn(exp_data_sn); // ExpDataSN
        b.set_residual_count(resid);
        let data = match &r.sense {
            Some(s) => {
                let sd = s.fixed();
                let mut d = Vec::with_capacity(sd.len() + 2);
                d.extend_from_slice(&(sd.len() as u16).to_be_bytes());
                d.extend_from_slice(&sd);
                d
            }
            None => Vec::new(),
        };
        self.send(&Pdu::new(b, data));
    }
}

/// Residual flags (O 0x04 / U 0x02) and count for `expected` vs `actual` bytes.
fn residual(expected: usize, actual: usize) -> (u8, u32) {
    match actual.cmp(&expected) {
        std::cmp::Ordering::Less => (0x02, (expected - actual) as u32),
        std::cmp::Ordering::Greater => (0x04, (actual - expected) as u32),
        std::cmp::Ordering::Equal => (0, 0),
    }
}
