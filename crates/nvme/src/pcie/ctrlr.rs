//! A PCIe controller: BAR0 registers, the admin queue in DMA memory,
//! health (CSTS, hot removal), and the PCIe side of reset and detach.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rspdk_env::mmio::Bar;
use rspdk_env::pcidev::PciHandle;

use crate::ctrlr::common::{lock, CtrlrCommon};
use crate::ctrlr::{state, AsyncEvent, ControllerOpts};
use crate::error::{NvmeError, Result};
use crate::qpair::{IoQpair, QpairOpts};
use crate::queue::{Completion, DmaRegion, Payload, Queue, Request};
use crate::spec::{cc, csts, reg, AdminOpcode, Cap, Sqe};
use crate::transport::Transport;
use crate::trid::TransportId;

/// The admin queue and the completions waiting for their submitters.
pub(crate) struct Admin {
    pub q: Queue,
    next_tag: u64,
    done: HashMap<u64, Completion>,
    events: Vec<AsyncEvent>,
}

/// The tag of Asynchronous Event Requests (the low bits number them).
const AER_TAG: u64 = 1 << 63;

/// A PCIe controller (the transport behind [`crate::Controller`] for
/// `trtype:PCIe`).
pub(crate) struct PcieCtrlr {
    pub common: CtrlrCommon,
    pci: PciHandle,
    pub bar: Arc<Bar>,
    /// The memory page size (CC.MPS): 4 KiB.
    pub page: usize,
    pub admin: Mutex<Admin>,
    /// The device was given up (hot removal).
    released: AtomicBool,
}

fn sync_err(traddr: &str, what: &str, ms: u64) -> NvmeError {
    NvmeError::Timeout {
        traddr: traddr.to_string(),
        what: what.to_string(),
        ms,
    }
}

impl PcieCtrlr {
    /// Opens the PCIe function `trid` names and maps BAR0 (the controller
    /// is initialised by [`crate::Controller::connect`]).
    pub(crate) fn new(trid: &TransportId, opts: &ControllerOpts) -> Result<PcieCtrlr> {
        let pci = PciHandle::open(&trid.traddr)
            .map_err(|e| NvmeError::env(format!("opening {}", trid.traddr), e))?;
        pci.enable_bus_master()
            .map_err(|e| NvmeError::env("enabling bus mastering", e))?;
        let bar = Arc::new(
            pci.map_bar(0)
                .map_err(|e| NvmeError::env(format!("mapping BAR0 of {}", trid.traddr), e))?,
        );
        let csts = bar.read32(reg::CSTS);
        if csts == csts::ALL_ONES {
            return Err(NvmeError::ControllerFailed {
                traddr: trid.traddr.clone(),
                reason: "registers read all ones: the device is gone".into(),
            });
        }
        let cap = Cap(bar.read64(reg::CAP));
        if cap.mpsmin() > 0 {
            return Err(NvmeError::NotSupported(format!(
                "controller's minimum page size is {} bytes; only 4 KiB is supported",
                4096u64 << cap.mpsmin()
            )));
        }
        let admin_entries = opts
            .admin_queue_size
            .min(4096)
            .min(cap.mqes().saturating_add(1));
        let admin_q = Queue::new(0, admin_entries, 64, bar.clone(), cap.dstrd(), 4096, false)?;
        Ok(PcieCtrlr {
            common: CtrlrCommon::new(trid, opts, state::OK, cap.0),
            pci,
            bar,
            page: 4096,
            admin: Mutex::new(Admin {
                q: admin_q,
                next_tag: 1,
                done: HashMap::new(),
                events: Vec::new(),
            }),
            released: AtomicBool::new(false),
        })
    }

    pub(crate) fn fail(&self, reason: &str) -> NvmeError {
        self.common.fail(reason)
    }

    /// The error for the current non-OK state.
    pub(crate) fn state_error(&self) -> NvmeError {
        self.common.state_error()
    }

    /// Reads CSTS: a removed device or fatal status fails the controller.
    fn check_health(&self) -> Result<()> {
        if self.pci.removal_requested() && !self.released.swap(true, Ordering::AcqRel) {
            // Let go at once: revoke the BAR (all ones from now on, for
            // every queue pair still polling) and close the device so that
            // the kernel can finish removing it.
            let e = self.fail("the device is being removed (hot removal)");
            if let Err(r) = self.bar.revoke() {
                tracing::error!(error = %r, "revoking BAR0");
            }
            if let Err(r) = self.pci.release() {
                tracing::error!(error = %r, "releasing the device");
            }
            return Err(e);
        }
        match self.common.state.load(Ordering::Acquire) {
            state::FAILED | state::DETACHED => return Err(self.state_error()),
            _ => {}
        }
        match self.dead_reason() {
            Some(why) => Err(self.fail(why)),
            None => Ok(()),
        }
    }

    /// Reads CSTS and says why the controller is unusable, if it is: gone
    /// (all ones), fatal status, or no longer ready although we did not
    /// disable it (reset or disabled behind our back).
    pub(crate) fn dead_reason(&self) -> Option<&'static str> {
        let s = self.bar.read32(reg::CSTS);
        if s == csts::ALL_ONES {
            return Some("the device was removed (registers read all ones)");
        }
        if self.common.state.load(Ordering::Acquire) != state::OK {
            return None;
        }
        if s & csts::CFS != 0 {
            return Some("controller fatal status (CSTS.CFS)");
        }
        if s & csts::RDY == 0 {
            return Some("the controller is no longer ready (CSTS.RDY = 0): it was reset or disabled behind the driver's back; reset it");
        }
        None
    }

    fn poll_admin(&self, a: &mut Admin) {
        let mut aers = Vec::new();
        let Admin {
            q, done, events, ..
        } = a;
        q.poll(0, &mut |req, c| {
            if req.ctx & AER_TAG != 0 {
                if c.status.is_error() {
                    // Aborted by a reset or refused: not re-armed.
                    return;
                }
                events.push(AsyncEvent::from_cdw0(c.cdw0));
                aers.push(req);
            } else {
                done.insert(req.ctx, c);
            }
        });
        for r in aers {
            let _ = a.q.submit(r);
        }
        a.q.ring();
    }

    /// Takes the admin queue once the controller is usable: while a reset
    /// or detach is under way only the thread doing it may submit (the
    /// controller may be disabled and the admin queue being rebuilt).
    fn admin_lock(&self) -> Result<MutexGuard<'_, Admin>> {
        let c = &self.common;
        let end = Instant::now() + Duration::from_millis(c.opts.admin_timeout_ms);
        loop {
            match c.state.load(Ordering::Acquire) {
                state::FAILED | state::DETACHED => return Err(self.state_error()),
                state::OK => {
                    let a = lock(&self.admin);
                    // A reset may have started while we waited for the lock.
                    if c.state.load(Ordering::Acquire) == state::OK {
                        return Ok(a);
                    }
                }
                _ if c.is_resetter() => {
                    return Ok(lock(&self.admin));
                }
                _ => {}
            }
            if Instant::now() > end {
                return Err(sync_err(
                    &c.trid.traddr,
                    "the end of a controller reset",
                    c.opts.admin_timeout_ms,
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// An admin command, and the controller generation it ran in (stable
    /// while the admin queue is held: a reset moves it under that lock).
    fn admin_raw_gen(&self, cmd: Sqe, payload: Payload) -> Result<(Completion, u32)> {
        let mut a = self.admin_lock()?;
        let c = &self.common;
        let gen = c.generation.load(Ordering::Acquire);
        let tag = a.next_tag;
        a.next_tag += 1;
        a.q.submit(Request {
            cmd,
            payload,
            ctx: tag,
        })?;
        a.q.ring();
        let end = Instant::now() + Duration::from_millis(c.opts.admin_timeout_ms);
        let mut spins = 0u32;
        loop {
            self.poll_admin(&mut a);
            if let Some(cpl) = a.done.remove(&tag) {
                return Ok((cpl, gen));
            }
            spins += 1;
            if spins % 256 == 0 {
                if let Some(why) = self.dead_reason() {
                    a.q.reset_rings(&mut |_| {});
                    drop(a);
                    return Err(self.fail(why));
                }
                if Instant::now() > end {
                    return Err(sync_err(
                        &c.trid.traddr,
                        &format!("admin command {:?}", AdminOpcode::from(cmd.opcode())),
                        c.opts.admin_timeout_ms,
                    ));
                }
                std::thread::yield_now();
            }
        }
    }

    /// An admin command that must succeed (for the I/O queues' Create and
    /// Delete commands).
    pub(crate) fn admin_sync(&self, cmd: Sqe, payload: Payload, what: &str) -> Result<Completion> {
        self.admin_sync_gen(cmd, payload, what).map(|(c, _)| c)
    }

    /// [`PcieCtrlr::admin_sync`], with the generation it ran in.
    pub(crate) fn admin_sync_gen(
        &self,
        cmd: Sqe,
        payload: Payload,
        what: &str,
    ) -> Result<(Completion, u32)> {
        let (c, gen) = self.admin_raw_gen(cmd, payload)?;
        if c.status.is_error() {
            return Err(NvmeError::Command {
                command: what.to_string(),
                status: c.status,
            });
        }
        Ok((c, gen))
    }

    /// The largest transfer per command: MDTS (in 4 KiB pages, 0 = none),
    /// and what one 4 KiB PRP list page can describe (511 pages + the first).
    pub(crate) fn max_transfer(&self) -> usize {
        let mdts = self.common.mdts();
        let by_list = 512 * 4096;
        if mdts == 0 || mdts > 20 {
            by_list
        } else {
            (4096usize << mdts).min(by_list)
        }
    }

    /// True if vectored I/O may use SGLs (the options allow it and the
    /// controller supports them).
    pub(crate) fn sgl_supported(&self) -> bool {
        self.common.opts.use_sgl && lock(&self.common.cdata).sgl_supported()
    }

    /// Clears CC.EN and waits (as CAP.TO allows, at least `min_ms`) for
    /// CSTS.RDY = 0. Returns false if RDY stayed 1.
    fn disable_and_wait(&self, min_ms: u64) -> bool {
        let v = self.bar.read32(reg::CC);
        self.bar.write32(reg::CC, v & !cc::EN);
        let to = Duration::from_millis(self.common.cap().timeout_ms().max(min_ms));
        let end = Instant::now() + to;
        while self.bar.read32(reg::CSTS) & csts::RDY != 0 {
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        true
    }
}

impl Transport for PcieCtrlr {
    fn common(&self) -> &CtrlrCommon {
        &self.common
    }

    fn driver(&self) -> &'static str {
        self.pci.driver()
    }

    fn is_fabrics(&self) -> bool {
        false
    }

    fn is_discovery(&self) -> bool {
        false
    }

    fn connect_cntlid(&self) -> Option<u16> {
        None
    }

    fn connect_admin(&self) -> Result<()> {
        Ok(())
    }

    fn disconnect_admin(&self) {}

    fn enable_admin_queue(&self) -> Result<()> {
        let a = lock(&self.admin);
        let entries = a.q.entries() as u32 - 1;
        self.bar.write32(reg::AQA, (entries << 16) | entries);
        self.bar.write64(reg::ASQ, a.q.sq_iova());
        self.bar.write64(reg::ACQ, a.q.cq_iova());
        Ok(())
    }

    fn get_reg_4(&self, offset: usize) -> Result<u32> {
        Ok(self.bar.read32(offset))
    }

    fn get_reg_8(&self, offset: usize) -> Result<u64> {
        Ok(self.bar.read64(offset))
    }

    fn set_reg_4(&self, offset: usize, value: u32) -> Result<()> {
        self.bar.write32(offset, value);
        Ok(())
    }

    fn admin_raw_gen(&self, cmd: Sqe, payload: Payload) -> Result<(Completion, u32)> {
        PcieCtrlr::admin_raw_gen(self, cmd, payload)
    }

    fn admin_read(&self, cmd: Sqe, len: usize, what: &str) -> Result<Vec<u8>> {
        let buf = DmaRegion::new(len)?;
        let r = self.admin_sync(
            cmd,
            Payload::Contig {
                vaddr: buf.as_ptr() as usize,
                len,
            },
            what,
        );
        match r {
            Ok(_) => {
                let mut out = vec![0u8; len];
                buf.read_into(&mut out);
                Ok(out)
            }
            Err(e @ NvmeError::Timeout { .. }) => {
                // The device may still write into the buffer: never free it.
                std::mem::forget(buf);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn submit_aers(&self, n: u8) -> Result<()> {
        let mut a = lock(&self.admin);
        for i in 0..n {
            a.q.submit(Request {
                cmd: Sqe::new(AdminOpcode::AsyncEventRequest.into(), 0),
                payload: Payload::None,
                ctx: AER_TAG | i as u64,
            })?;
        }
        a.q.ring();
        Ok(())
    }

    fn process_admin_completions(&self) -> Result<Vec<AsyncEvent>> {
        self.check_health()?;
        // A synchronous admin command (on another thread) holds the queue
        // and reaps its completions itself: a reactor's poll does not wait.
        let mut a = match self.admin.try_lock() {
            Ok(a) => a,
            Err(std::sync::TryLockError::WouldBlock) => return Ok(Vec::new()),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        self.poll_admin(&mut a);
        Ok(std::mem::take(&mut a.events))
    }

    fn max_transfer_size(&self) -> usize {
        self.max_transfer()
    }

    fn disable_for_reset(&self) -> Result<()> {
        let c = &self.common;
        c.state.store(state::DISABLING, Ordering::Release);
        if let Err(e) = self.pci.enable_bus_master() {
            return Err(self.fail(&format!("re-enabling bus mastering: {e}")));
        }
        let mut a = lock(&self.admin);
        // Disable first: once CSTS.RDY is 0 the controller has deleted
        // every queue and touches none of their memory, so queue pairs
        // may hand back what was in flight.
        if !self.disable_and_wait(500) {
            drop(a);
            return Err(self.fail("CSTS.RDY stayed 1 after clearing CC.EN during reset"));
        }
        c.state.store(state::RESETTING, Ordering::Release);
        c.generation.fetch_add(1, Ordering::AcqRel);
        let mut lost = 0;
        a.q.reset_rings(&mut |_| lost += 1);
        a.q.drain_pending(&mut |_| lost += 1);
        a.done.clear();
        tracing::info!(trid = %c.trid, dropped_admin = lost, "controller reset: disabled");
        Ok(())
    }

    fn stop(&self) {
        let v = self.bar.read32(reg::CC);
        self.bar.write32(reg::CC, v & !cc::EN);
    }

    fn release(&self, was_live: bool) {
        // Disable after the shutdown: with RDY at 0 the device uses no
        // queue memory, and queue pairs can give back what was in flight.
        if was_live {
            self.disable_and_wait(500);
        }
    }

    fn alloc_io_qpair(self: Arc<Self>, opts: Option<QpairOpts>) -> Result<IoQpair> {
        super::PcieQpair::new(self, opts).map(IoQpair::pcie)
    }
}
