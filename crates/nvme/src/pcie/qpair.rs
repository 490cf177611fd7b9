//! A PCIe I/O queue pair: a submission and a completion queue in DMA
//! memory, created with admin commands and re-created after a reset.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::PcieCtrlr;
use crate::ctrlr::{state, Controller, Namespace};
use crate::error::{NvmeError, Result};
use crate::qpair::{CmdTimeouts, QpairOpts, TimedQueue, TimeoutAction, TimeoutEvent};
use crate::queue::{Completion, Payload, Queue, Request};
use crate::spec::{AdminOpcode, Sqe};
use crate::status::Status;

const ABORTED: Status = Status::ABORTED_SQ_DELETION;

/// A PCIe I/O queue pair.
pub(crate) struct PcieQpair {
    q: Queue,
    ctrlr: Arc<PcieCtrlr>,
    generation: u32,
    pub(crate) namespaces: Vec<Namespace>,
    delay_doorbell: bool,
    timeouts: Option<CmdTimeouts>,
    idle_polls: u32,
    /// Largest transfer one command may move (MDTS, and one PRP list page).
    pub(crate) max_transfer: usize,
    /// False after a failure/detach was reported to the caller.
    connected: bool,
}

impl PcieQpair {
    pub(crate) fn new(ctrlr: Arc<PcieCtrlr>, opts: Option<QpairOpts>) -> Result<PcieQpair> {
        match ctrlr.common.state.load(Ordering::Acquire) {
            state::OK => {}
            _ => return Err(ctrlr.state_error()),
        }
        let opts = opts.unwrap_or(QpairOpts {
            io_queue_size: ctrlr.common.opts.io_queue_size,
            io_queue_requests: ctrlr.common.opts.io_queue_requests,
            delay_doorbell: true,
        });
        let entries = opts
            .io_queue_size
            .clamp(2, 4096)
            .min(ctrlr.common.cap().mqes().saturating_add(1));
        let qid = ctrlr.common.alloc_qid()?;
        let pending = (opts.io_queue_requests as usize)
            .saturating_sub(entries as usize - 1)
            .max(1);
        let q = match Queue::new(
            qid,
            entries,
            pending,
            ctrlr.bar.clone(),
            ctrlr.common.cap().dstrd(),
            ctrlr.page,
            ctrlr.sgl_supported(),
        ) {
            Ok(q) => q,
            Err(e) => {
                ctrlr.common.free_qid(qid);
                return Err(e);
            }
        };
        let max_transfer = ctrlr.max_transfer();
        let mut qp = PcieQpair {
            q,
            generation: ctrlr.common.generation.load(Ordering::Acquire),
            namespaces: ctrlr.common.namespaces(),
            ctrlr,
            delay_doorbell: opts.delay_doorbell,
            timeouts: None,
            idle_polls: 0,
            max_transfer,
            connected: true,
        };
        if let Err(e) = qp.create_queues() {
            // Drop frees the id and must not delete queues never created.
            qp.connected = false;
            return Err(e);
        }
        Ok(qp)
    }

    /// Creates the device's CQ and SQ for this queue pair and records the
    /// controller generation they live in. A reset between the two commands
    /// (it deletes every queue) starts the pair over.
    fn create_queues(&mut self) -> Result<()> {
        let qid = self.q.qid as u32;
        let size = self.q.entries() as u32 - 1;
        for _ in 0..8 {
            let mut c = Sqe::new(AdminOpcode::CreateIoCq.into(), 0);
            c.set_prp1(self.q.cq_iova());
            c.dw[10] = (size << 16) | qid;
            c.dw[11] = 1; // physically contiguous, no interrupts
            let (_, g1) =
                self.ctrlr
                    .admin_sync_gen(c, Payload::None, "Create I/O Completion Queue")?;
            let mut s = Sqe::new(AdminOpcode::CreateIoSq.into(), 0);
            s.set_prp1(self.q.sq_iova());
            s.dw[10] = (size << 16) | qid;
            s.dw[11] = (qid << 16) | 1;
            match self
                .ctrlr
                .admin_sync_gen(s, Payload::None, "Create I/O Submission Queue")
            {
                Ok((_, g2)) if g2 == g1 => {
                    self.generation = g1;
                    return Ok(());
                }
                // Reset in between: the CQ is gone; start over.
                Ok(_) => continue,
                Err(e) => {
                    if self.ctrlr.common.generation.load(Ordering::Acquire) == g1 {
                        let mut d = Sqe::new(AdminOpcode::DeleteIoCq.into(), 0);
                        d.dw[10] = qid;
                        let _ =
                            self.ctrlr
                                .admin_sync(d, Payload::None, "Delete I/O Completion Queue");
                    }
                    return Err(e);
                }
            }
        }
        Err(NvmeError::ControllerFailed {
            traddr: self.ctrlr.common.trid.traddr.clone(),
            reason: "resets keep interrupting the creation of I/O queues".into(),
        })
    }

    /// The queue id.
    pub fn qid(&self) -> u16 {
        self.q.qid
    }

    /// Commands the device holds.
    pub fn outstanding(&self) -> usize {
        self.q.outstanding
    }

    /// Commands waiting for a free slot.
    pub fn queued(&self) -> usize {
        self.q.pending_len()
    }

    /// Calls `cb` for commands in flight longer than `timeout` (SPDK:
    /// `spdk_nvme_ctrlr_register_timeout_callback`, per queue pair here);
    /// its answer may abort the command or reset the controller.
    pub fn set_timeout(
        &mut self,
        timeout: Duration,
        cb: impl FnMut(&TimeoutEvent) -> TimeoutAction + Send + 'static,
    ) {
        self.timeouts = Some(CmdTimeouts::new(timeout, Box::new(cb)));
        self.q.stamp_on_submit = true;
    }

    /// Submits a request, honouring the controller's state.
    pub(crate) fn submit(&mut self, req: Request) -> Result<()> {
        let st = self.ctrlr.common.state.load(Ordering::Acquire);
        match st {
            state::OK
                if self.generation == self.ctrlr.common.generation.load(Ordering::Acquire) =>
            {
                self.q.submit(req)?;
                if !self.delay_doorbell {
                    self.q.ring();
                }
                Ok(())
            }
            state::OK | state::RESETTING | state::DISABLING => {
                // Reset or detach in progress, or not yet reconnected: wait
                // in the queue.
                self.q.submit_queued(req)
            }
            _ => Err(self.ctrlr.common.state_error()),
        }
    }

    /// Aborts everything in flight and waiting, telling `done`.
    fn abort_all(&mut self, done: &mut dyn FnMut(&Completion)) -> u32 {
        let mut n = 0;
        let mut f = |r: Request| {
            n += 1;
            done(&Completion {
                ctx: r.ctx,
                status: ABORTED,
                cdw0: 0,
            });
        };
        self.q.abort_in_flight(&mut f);
        self.q.drain_pending(&mut f);
        n
    }

    /// Re-creates the device queues after a controller reset.
    fn reconnect(&mut self, done: &mut dyn FnMut(&Completion)) -> Result<u32> {
        let mut n = 0;
        self.q.reset_rings(&mut |r| {
            n += 1;
            done(&Completion {
                ctx: r.ctx,
                status: ABORTED,
                cdw0: 0,
            })
        });
        self.namespaces = self.ctrlr.common.namespaces();
        if let Err(e) = self.create_queues() {
            self.abort_all(done);
            return Err(e);
        }
        tracing::debug!(qid = self.q.qid, "I/O queue pair re-created after reset");
        Ok(n)
    }

    /// Reaps up to `max` completions (0: all available), calling `done` for
    /// each (SPDK: `spdk_nvme_qpair_process_completions`). Returns how many
    /// completed. If the controller failed or was detached, everything in
    /// flight and waiting completes with "Command Aborted due to SQ
    /// Deletion" and the error is returned.
    pub fn process_completions(
        &mut self,
        max: u32,
        mut done: impl FnMut(&Completion),
    ) -> Result<u32> {
        let st = self.ctrlr.common.state.load(Ordering::Acquire);
        let gen = self.ctrlr.common.generation.load(Ordering::Acquire);
        match st {
            state::FAILED | state::DETACHED => {
                // What the controller completed before it stopped is real;
                // the rest is handed back.
                let mut n = self.q.reap(0, &mut |_, c| done(&c));
                n += self.abort_all(&mut done);
                if n > 0 {
                    return Ok(n);
                }
                return Err(self.ctrlr.common.state_error());
            }
            state::RESETTING => {
                // The device's queues are going away: give back what was in flight.
                let mut n = 0;
                self.q.abort_in_flight(&mut |r| {
                    n += 1;
                    done(&Completion {
                        ctx: r.ctx,
                        status: ABORTED,
                        cdw0: 0,
                    })
                });
                return Ok(n);
            }
            _ => {}
        }
        let mut n = 0;
        if gen != self.generation {
            n += self.reconnect(&mut done)?;
        }
        if self.timeouts.is_some() && self.q.outstanding > 0 {
            // Before reaping, so a command that is late is seen as late.
            self.run_timeouts();
        }
        n += self.q.poll(max, &mut |_, c| done(&c));
        if n == 0 && self.q.outstanding > 0 {
            self.idle_polls += 1;
            if self.idle_polls % 4096 == 0 {
                if let Some(why) = self.ctrlr.dead_reason() {
                    self.ctrlr.fail(why);
                    return Ok(self.abort_all(&mut done));
                }
            }
        } else {
            self.idle_polls = 0;
        }
        Ok(n)
    }

    fn run_timeouts(&mut self) {
        if let Some(t) = self.timeouts.as_mut() {
            let ctrlr = &self.ctrlr;
            t.run(&mut self.q, || Controller::from_transport(ctrlr.clone()));
        }
    }

    /// The command id in flight for `ctx` (to abort it).
    pub fn cid_of(&self, ctx: u64) -> Option<u16> {
        self.q.cid_of(ctx)
    }

    /// DMA memory this queue pair holds, in bytes.
    pub fn dma_bytes(&self) -> usize {
        self.q.dma_bytes()
    }
}

impl Drop for PcieQpair {
    fn drop(&mut self) {
        let st = self.ctrlr.common.state.load(Ordering::Acquire);
        let same = self.generation == self.ctrlr.common.generation.load(Ordering::Acquire);
        if st == state::OK && same && self.connected {
            let qid = self.q.qid as u32;
            let mut d = Sqe::new(AdminOpcode::DeleteIoSq.into(), 0);
            d.dw[10] = qid;
            let r1 = self
                .ctrlr
                .admin_sync(d, Payload::None, "Delete I/O Submission Queue");
            let mut d = Sqe::new(AdminOpcode::DeleteIoCq.into(), 0);
            d.dw[10] = qid;
            let r2 = self
                .ctrlr
                .admin_sync(d, Payload::None, "Delete I/O Completion Queue");
            if r1.is_err() || r2.is_err() {
                // The device may still use the rings: keep the memory.
                tracing::warn!(qid, "could not delete I/O queues; leaking their memory");
                self.q.leak_memory();
            }
        }
        self.ctrlr.common.free_qid(self.q.qid);
    }
}

impl TimedQueue for Queue {
    fn qid(&self) -> u16 {
        self.qid
    }

    fn check_timeouts(
        &mut self,
        now: Instant,
        timeout: Duration,
        f: &mut dyn FnMut(u16, &Request),
    ) {
        Queue::check_timeouts(self, now, timeout, f)
    }

    fn in_flight(&self, cid: u16) -> bool {
        Queue::in_flight(self, cid)
    }
}
