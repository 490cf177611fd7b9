//! An NVMe/TCP I/O queue pair: a connection of its own, reconnected on
//! its next poll after a controller reset.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::queue::TcpQpair;
use super::TcpCtrlr;
use crate::ctrlr::{state, Controller, Namespace};
use crate::error::{NvmeError, Result};
use crate::qpair::{CmdTimeouts, TimedQueue, TimeoutCb};
use crate::queue::{Completion, Request};

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
    timeouts: Option<CmdTimeouts>,
}

impl TcpIoQpair {
    /// Reports commands in flight longer than `timeout` to `cb` (once
    /// each), from `process_completions`.
    pub(crate) fn set_timeout(&mut self, timeout: Duration, cb: TimeoutCb) {
        self.timeouts = Some(CmdTimeouts::new(timeout, cb));
        self.q.track_time = true;
    }

    fn run_timeouts(&mut self) {
        if let Some(t) = self.timeouts.as_mut() {
            let ctrlr = &self.ctrlr;
            t.run(&mut self.q, || Controller::from_transport(ctrlr.clone()));
        }
    }

    pub(crate) fn new(
        ctrlr: Arc<TcpCtrlr>,
        size: u16,
        requests: usize,
        delay_doorbell: bool,
    ) -> Result<TcpIoQpair> {
        if ctrlr.common.state.load(Ordering::Acquire) != state::OK {
            return Err(ctrlr.state_error());
        }
        if ctrlr.discovery() {
            return Err(NvmeError::NotSupported(
                "I/O queues on a discovery controller: connect to a subsystem NQN".into(),
            ));
        }
        let mqes = ctrlr.common.cap().mqes();
        let size = size.clamp(2, 4096).min(mqes.saturating_add(1));
        let qid = ctrlr.common.alloc_qid()?;
        let generation = ctrlr.common.generation.load(Ordering::Acquire);
        let q = match TcpQpair::connect(&ctrlr.queue_params(qid, size, requests)) {
            Ok(mut q) => {
                q.icd = ctrlr.io_icd();
                q
            }
            Err(e) => {
                ctrlr.common.free_qid(qid);
                return Err(e);
            }
        };
        let namespaces = ctrlr.common.namespaces();
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
            timeouts: None,
        })
    }

    pub(crate) fn submit(&mut self, req: Request) -> Result<()> {
        match self.ctrlr.common.state.load(Ordering::Acquire) {
            state::OK | state::RESETTING => {}
            _ => return Err(self.ctrlr.state_error()),
        }
        if !self.connected
            || self.generation != self.ctrlr.common.generation.load(Ordering::Acquire)
        {
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
            if self.ctrlr.common.state.load(Ordering::Acquire) == state::OK {
                self.ctrlr.fail(&e.to_string());
            }
        }
    }

    /// Re-creates the connection after a controller reset (reconnect).
    fn reconnect(&mut self, done: &mut dyn FnMut(&Completion)) -> Result<u32> {
        let n = self.q.abort_all_in_flight(done);
        let pending = self.q.take_pending();
        let gen = self.ctrlr.common.generation.load(Ordering::Acquire);
        let mut q = TcpQpair::connect(&self.ctrlr.queue_params(
            self.q.qid,
            self.size,
            self.requests,
        ))?;
        q.icd = self.ctrlr.io_icd();
        q.track_time = self.timeouts.is_some();
        for r in pending {
            q.submit(r)?;
        }
        self.q.shutdown();
        self.q = q;
        self.connected = true;
        self.generation = gen;
        self.namespaces = self.ctrlr.common.namespaces();
        tracing::info!(qid = self.q.qid, "NVMe/TCP I/O queue pair reconnected");
        Ok(n)
    }

    pub(crate) fn process_completions(
        &mut self,
        max: u32,
        done: &mut dyn FnMut(&Completion),
    ) -> Result<u32> {
        let st = self.ctrlr.common.state.load(Ordering::Acquire);
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
        if self.generation != self.ctrlr.common.generation.load(Ordering::Acquire)
            || !self.connected
        {
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
                if self.timeouts.is_some() {
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

impl Drop for TcpIoQpair {
    fn drop(&mut self) {
        self.q.shutdown();
        self.ctrlr.common.free_qid(self.q.qid);
    }
}

impl TimedQueue for TcpQpair {
    fn qid(&self) -> u16 {
        self.qid
    }

    fn check_timeouts(
        &mut self,
        now: Instant,
        timeout: Duration,
        f: &mut dyn FnMut(u16, &Request),
    ) {
        TcpQpair::check_timeouts(self, now, timeout, f)
    }

    fn in_flight(&self, cid: u16) -> bool {
        TcpQpair::in_flight(self, cid)
    }
}
