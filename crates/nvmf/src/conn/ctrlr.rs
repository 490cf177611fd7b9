//! The controller (SPDK: `lib/nvmf/ctrlr.c`): fabrics commands (Connect,
//! Property Get and Set, Disconnect), the admin commands a host needs
//! (Identify, Get Log Page, Get and Set Features, Keep Alive, Asynchronous
//! Event Request, Abort) and the dispatch of NVM commands to the bdev
//! bridge, with fused compare-and-write pairing.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rspdk_nvme::spec::fabrics::{
    self, connect_cmd_field, connect_field, fctype, Connect, ConnectData, Property,
};
use rspdk_nvme::spec::status::{command_specific, generic, Status};
use rspdk_nvme::spec::{
    abort, aec, aer, cc, cns, csts, feature, fuse, log_page, oncs, reg, AdminOpcode, Cqe, IoOpcode,
    Sqe, NSID_ALL,
};

use super::{Conn, DataBufs, Qpair, ReqState, Request, FUSED_MISSING_AS_SENT, MAX_AERS};
use crate::admin;
use crate::pdu;
use crate::target::{lock, target, Controller, QpairInfo, Subsystem, DISCOVERY_GENCTR};

impl<B: DataBufs> Conn<B> {
    /// Runs the command in request slot `slot` (all its data is in).
    pub(super) fn exec(&mut self, slot: usize) {
        let sqe = self.reqs[slot].sqe;
        if sqe.opcode() == fabrics::OPCODE {
            return self.fabrics(slot, &sqe);
        }
        let Some(q) = &self.q else {
            return self.complete(slot, generic::SEQUENCE_ERROR, 0);
        };
        if q.qid == 0 {
            q.ctrlr.last_keep_alive.store(self.now, Ordering::Relaxed);
            self.admin(slot, &sqe);
        } else {
            if !q.ctrlr.ready() {
                return self.complete(slot, generic::NS_NOT_READY, 0);
            }
            let op = IoOpcode::from(sqe.opcode());
            match (sqe.fuse(), self.fused_first.take()) {
                (fuse::NORMAL, None) => self.submit_io(slot),
                (fuse::FIRST, None) if op == IoOpcode::Compare && !self.p.opts.fuses_masked() => {
                    self.fused_first = Some(slot)
                }
                (fuse::SECOND, Some(first)) if op == IoOpcode::Write => {
                    self.requests.push_back(Request::CompareAndWrite {
                        first,
                        second: slot,
                    })
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
                        reg::CAP => admin::cap(self.p.opts.max_queue_depth),
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
                // The driver sends the response before it drops the socket.
                self.complete(slot, generic::SUCCESS, 0);
                self.close("host sent Disconnect");
            }
            _ => self.complete(slot, generic::INVALID_OPCODE, 0),
        }
    }

    fn connect_fail(&mut self, slot: usize, status: Status, data_attr: bool, ipo: u16) {
        let dw0 = fabrics::connect_invalid_dw0(ipo, data_attr);
        tracing::warn!(peer = %self.p.peer, status = ?status, ipo, "nvmf: Connect rejected");
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
            self.p.opts.max_aq_depth
        } else {
            self.p.opts.max_queue_depth
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
            .tgt(Some(&self.p.tgt))
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
        if !subsys.listens_on(&self.p.local) {
            tracing::warn!(%subnqn, local = %self.p.local, "nvmf: subsystem does not listen here");
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
            let Some(t) = self.p.admin_thread.clone() else {
                return self.complete(slot, generic::INTERNAL, 0);
            };
            let nq = self.p.opts.max_io_qpairs_per_ctrlr.min(65534) as u16;
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
                    self.p.opts.effective_kato(kato)
                }),
                num_io_queues: AtomicU16::new(nq.saturating_sub(1)),
                qids: Mutex::new(vec![false; nq as usize + 1]),
                dead: AtomicBool::new(false),
                changed_ns: Mutex::new(Vec::new()),
                aen_pending: AtomicBool::new(false),
                aec: AtomicU32::new(aec::NS_ATTR_NOTICES),
                admin: (t, self.p.id),
                last_keep_alive: AtomicU64::new(self.now),
            });
            lock(&subsys.controllers).push(c.clone());
            self.p.stats.admin_qpairs.fetch_add(1, Ordering::Relaxed);
            self.p
                .stats
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
            self.p.stats.io_qpairs.fetch_add(1, Ordering::Relaxed);
            self.p
                .stats
                .current_io_qpairs
                .fetch_add(1, Ordering::Relaxed);
            c
        };
        let cid = ctrlr.cntlid;
        target().qpairs.insert(
            self.p.id,
            QpairInfo {
                tgt: self.p.tgt.clone(),
                nqn: subnqn.clone(),
                cntlid: cid,
                qid,
                thread: self.p.pg_name.clone(),
                local: self.p.local,
                peer: self.p.peer,
            },
        );
        tracing::info!(peer = %self.p.peer, %subnqn, %hostnqn, cntlid = cid, qid, sqsize, "nvmf: Connect");
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
                        admin::identify_controller(&c, &self.p.opts, crdt)
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
                        let max = self.p.opts.max_io_qpairs_per_ctrlr;
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

    /// Completes an outstanding AER if a namespace notice is pending.
    pub fn try_aen(&mut self) {
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

    /// Hands an NVM command to the bdev bridge, unless `masked_oncs` hides
    /// it from Identify: an optional command hidden there is not served
    /// either.
    fn submit_io(&mut self, slot: usize) {
        let op = IoOpcode::from(self.reqs[slot].sqe.opcode());
        let oncs_bit = match op {
            IoOpcode::Compare => oncs::COMPARE,
            IoOpcode::WriteUncorrectable => oncs::WRITE_UNCORRECTABLE,
            IoOpcode::DatasetManagement => oncs::DSM,
            IoOpcode::WriteZeroes => oncs::WRITE_ZEROES,
            IoOpcode::Copy => oncs::COPY,
            _ => 0,
        };
        if self.oncs_masked & oncs_bit != 0 {
            return self.complete(slot, generic::INVALID_OPCODE, 0);
        }
        rspdk_trace::record_tsc(
            crate::trace::REQ_READY_TO_EXECUTE,
            self.now,
            crate::trace::req_id(self.id(), slot),
            &[self.id()],
        );
        self.requests.push_back(Request::Io { slot });
    }
}
