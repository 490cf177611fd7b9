//! An NVMe/TCP controller: its admin queue (a connection of its own),
//! registers as fabrics properties (Property Get/Set), Keep Alive and
//! Asynchronous Events.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::connect::QueueParams;
use super::queue::TcpQpair;
use super::{fctype, TcpIoQpair, FABRICS_OPCODE};
use crate::ctrlr::common::{lock, CtrlrCommon};
use crate::ctrlr::{state, AsyncEvent, ControllerOpts};
use crate::error::{NvmeError, Result};
use crate::qpair::{IoQpair, QpairOpts};
use crate::queue::{Completion, Payload, Request};
use crate::spec::{AdminOpcode, Sqe};
use crate::transport::Transport;
use crate::trid::TransportId;

/// Tags of the admin queue's own commands.
const AER_TAG: u64 = 1 << 63;
const KA_TAG: u64 = 1 << 62;

struct Admin {
    q: Option<TcpQpair>,
    next_tag: u64,
    events: Vec<AsyncEvent>,
    last_ka: Instant,
    ka_outstanding: bool,
}

/// A controller reached over NVMe/TCP: its admin queue and what it said.
pub(crate) struct TcpCtrlr {
    pub common: CtrlrCommon,
    pub addr: SocketAddr,
    pub subnqn: String,
    pub hostnqn: String,
    admin: Mutex<Admin>,
    /// The controller id Connect returned.
    pub cntlid: AtomicU32,
    /// Keep Alive Timeout granted (ms).
    pub kato_ms: AtomicU32,
}

impl TcpCtrlr {
    /// A controller object for `trid`, not yet connected.
    pub(crate) fn new(trid: &TransportId, opts: &ControllerOpts) -> Result<TcpCtrlr> {
        let addr = trid.socket_addr()?;
        Ok(TcpCtrlr {
            common: CtrlrCommon::new(trid, opts, state::RESETTING, 0),
            addr,
            subnqn: trid.subnqn_or_discovery().to_string(),
            hostnqn: trid.hostnqn.clone().unwrap_or_else(|| opts.hostnqn.clone()),
            admin: Mutex::new(Admin {
                q: None,
                next_tag: 1,
                events: Vec::new(),
                last_ka: Instant::now(),
                ka_outstanding: false,
            }),
            cntlid: AtomicU32::new(0xffff),
            kato_ms: AtomicU32::new(0),
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.common.opts.admin_timeout_ms.max(100))
    }

    pub(crate) fn discovery(&self) -> bool {
        self.subnqn == crate::trid::DISCOVERY_NQN
    }

    /// Queue parameters for queue `qid` of `size` entries.
    pub(crate) fn queue_params(&self, qid: u16, size: u16, requests: usize) -> QueueParams<'_> {
        let opts = &self.common.opts;
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
            header_digest: opts.header_digest,
            data_digest: opts.data_digest,
            kato_ms: if self.discovery() {
                0
            } else {
                opts.keep_alive_timeout_ms
            },
            timeout: self.timeout(),
        }
    }

    /// Property Get (offset `ofst`, 8 bytes when `wide`).
    fn prop_get(&self, ofst: u32, wide: bool) -> Result<u64> {
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
    fn prop_set(&self, ofst: u32, v: u32) -> Result<()> {
        let mut s = Sqe::new(FABRICS_OPCODE, fctype::PROPERTY_SET as u32);
        s.dw[10] = 0;
        s.dw[11] = ofst;
        s.dw[12] = v;
        let c = self.admin_raw(s, Payload::None)?;
        if c.status.is_error() {
            return Err(NvmeError::Command {
                command: format!("Property Set {ofst:#x}"),
                status: c.status,
            });
        }
        Ok(())
    }

    /// Fails the controller (connection lost, protocol error).
    pub(crate) fn fail(&self, reason: &str) -> NvmeError {
        self.common.fail(reason)
    }

    /// The error for the current non-OK state.
    pub(crate) fn state_error(&self) -> NvmeError {
        self.common.state_error()
    }

    /// An admin command and its completion (an error status is returned
    /// as is).
    fn admin_raw(&self, cmd: Sqe, payload: Payload) -> Result<Completion> {
        self.admin_raw_dw1(cmd, payload).map(|(c, _)| c)
    }

    /// [`TcpCtrlr::admin_raw`], with CQE DW1.
    fn admin_raw_dw1(&self, cmd: Sqe, payload: Payload) -> Result<(Completion, u32)> {
        match self.common.state.load(Ordering::Acquire) {
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
                    events.push(AsyncEvent::from_cdw0(c.cdw0));
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

    /// The largest transfer per command (MDTS; 1 MiB when unlimited).
    pub(crate) fn max_transfer(&self) -> usize {
        let mdts = self.common.mdts();
        if mdts == 0 || mdts > 12 {
            1 << 20
        } else {
            (4096usize << mdts).min(16 << 20)
        }
    }

    /// In-capsule data an I/O queue may send (IOCCSZ * 16 - 64).
    pub(crate) fn io_icd(&self) -> usize {
        (lock(&self.common.cdata).ioccsz() as usize * 16).saturating_sub(64)
    }

    /// Drops the admin connection and bumps the generation: I/O queue
    /// pairs reconnect on their next poll once the controller is back.
    fn drop_connections(&self) {
        self.common.generation.fetch_add(1, Ordering::AcqRel);
        self.disconnect_admin();
    }
}

impl Transport for TcpCtrlr {
    fn common(&self) -> &CtrlrCommon {
        &self.common
    }

    fn driver(&self) -> &'static str {
        "tcp"
    }

    fn is_fabrics(&self) -> bool {
        true
    }

    fn is_discovery(&self) -> bool {
        self.discovery()
    }

    fn connect_cntlid(&self) -> Option<u16> {
        Some(self.cntlid.load(Ordering::Acquire) as u16)
    }

    /// TCP connect, ICReq and the fabrics Connect of the admin queue.
    fn connect_admin(&self) -> Result<()> {
        let size = self.common.opts.admin_queue_size.clamp(2, 4096);
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
            if self.discovery() {
                0
            } else {
                self.common.opts.keep_alive_timeout_ms
            },
            Ordering::Relaxed,
        );
        Ok(())
    }

    fn disconnect_admin(&self) {
        if let Some(q) = lock(&self.admin).q.take() {
            q.shutdown();
        }
    }

    fn enable_admin_queue(&self) -> Result<()> {
        // Connect created it.
        Ok(())
    }

    fn get_reg_4(&self, offset: usize) -> Result<u32> {
        self.prop_get(offset as u32, false).map(|v| v as u32)
    }

    fn get_reg_8(&self, offset: usize) -> Result<u64> {
        self.prop_get(offset as u32, true)
    }

    fn set_reg_4(&self, offset: usize, value: u32) -> Result<()> {
        self.prop_set(offset as u32, value)
    }

    fn admin_raw_gen(&self, cmd: Sqe, payload: Payload) -> Result<(Completion, u32)> {
        let gen = self.common.generation.load(Ordering::Acquire);
        self.admin_raw(cmd, payload).map(|c| (c, gen))
    }

    fn admin_read(&self, cmd: Sqe, len: usize, what: &str) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let c = self.admin_raw(
            cmd,
            Payload::Contig {
                vaddr: buf.as_mut_ptr() as usize,
                len,
            },
        )?;
        if c.status.is_error() {
            return Err(NvmeError::Command {
                command: what.to_string(),
                status: c.status,
            });
        }
        Ok(buf)
    }

    fn submit_aers(&self, n: u8) -> Result<()> {
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

    /// Keep Alive when due, AER completions.
    fn process_admin_completions(&self) -> Result<Vec<AsyncEvent>> {
        match self.common.state.load(Ordering::Acquire) {
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
                events.push(AsyncEvent::from_cdw0(c.cdw0));
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

    fn max_transfer_size(&self) -> usize {
        self.max_transfer()
    }

    fn disable_for_reset(&self) -> Result<()> {
        self.common.state.store(state::RESETTING, Ordering::Release);
        self.drop_connections();
        Ok(())
    }

    fn stop(&self) {
        self.drop_connections();
    }

    fn release(&self, _was_live: bool) {
        self.disconnect_admin();
    }

    fn alloc_io_qpair(self: Arc<Self>, opts: Option<QpairOpts>) -> Result<IoQpair> {
        let o = opts.unwrap_or(QpairOpts {
            io_queue_size: self.common.opts.io_queue_size,
            io_queue_requests: self.common.opts.io_queue_requests,
            delay_doorbell: true,
        });
        TcpIoQpair::new(
            self,
            o.io_queue_size,
            o.io_queue_requests as usize,
            o.delay_doorbell,
        )
        .map(IoQpair::tcp)
    }
}
