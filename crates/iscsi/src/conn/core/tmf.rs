//! Task management (SPDK: iscsi.c's `iscsi_pdu_hdr_op_task`): aborts on
//! this connection and, through mailboxes, on the session's others; the
//! response waits for the aborted tasks that were running.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rspdk_scsi::decode_lun;

use super::ConnCore;
use super::State;
use crate::conn::session::*;
use crate::pdu::{op, Bhs, Pdu, TaskMgmtRequest};

/// A task management function waiting for the tasks it aborted, on this
/// connection and on the session's others, whose bdev I/O was running
/// (RFC 7143 11.5.1: the response means the tasks are gone, so the
/// initiator may reuse their ITTs).
pub(crate) struct TmfWait {
    /// Connections that have not finished aborting yet.
    pub(crate) left: AtomicUsize,
    /// ABORT TASK: some connection had the referenced task.
    pub(crate) found: AtomicBool,
}

impl TmfWait {
    pub(crate) fn one_done(&self) {
        self.left.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a task management function aborts on each connection.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AbortScope {
    /// ABORT TASK: the task with this ITT, if it is for this LUN; if no
    /// connection has it and CmdSN `ref_sn` has not arrived yet, that
    /// command is dropped when it does (RFC 7143 11.5.1 b).
    Task { itt: u32, lun: u64, ref_sn: u32 },
    /// ABORT/CLEAR TASK SET, LUN RESET: every task of the LUN.
    Lun(u64),
    /// Target resets: every task.
    All,
}

/// Abort requests from the session's other connections (possibly on other
/// threads). Task management only: the lock is off the I/O path, which
/// reads just the `pending` flag.
#[derive(Default)]
pub(crate) struct Mailbox {
    pub(crate) pending: AtomicBool,
    pub(crate) inner: Mutex<MailboxInner>,
}

#[derive(Default)]
pub(crate) struct MailboxInner {
    pub(crate) closed: bool,
    pub(crate) msgs: Vec<(AbortScope, Arc<TmfWait>)>,
}

impl Mailbox {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, MailboxInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the connection to abort `scope`; a closed connection has
    /// nothing left to abort and counts as done at once.
    pub(crate) fn post(&self, scope: AbortScope, w: Arc<TmfWait>) {
        let mut g = self.lock();
        if g.closed {
            w.one_done();
            return;
        }
        g.msgs.push((scope, w));
        self.pending.store(true, Ordering::Release);
    }

    pub(crate) fn take(&self) -> Vec<(AbortScope, Arc<TmfWait>)> {
        // A plain load first: this runs on every poll.
        if !self.pending.load(Ordering::Acquire) || !self.pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut self.lock().msgs)
    }

    pub(crate) fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        for (_, w) in g.msgs.drain(..) {
            w.one_done();
        }
    }
}

/// A task management response to send once its [`TmfWait`] is done.
pub(crate) struct PendingTmf {
    /// The TMF request's ITT.
    pub(crate) itt: u32,
    /// The response code (ABORT TASK: if no connection had the task).
    pub(crate) response: u8,
    /// ABORT TASK: answer "function complete" if the task was found.
    pub(crate) abort_task: bool,
    pub(crate) wait: Arc<TmfWait>,
    /// TARGET COLD RESET: close the connection after the response.
    pub(crate) close_after: bool,
}

impl ConnCore {
    pub(super) fn handle_tmf(&mut self, p: Pdu) {
        if !self.accept_cmd_sn(&p.bhs) {
            return;
        }
        let req = TaskMgmtRequest::new_unchecked_view(p.bhs);
        let func = req.tmf_function();
        let lun = decode_lun(req.lun());
        let rtt = req.ref_task_tag();
        let target = self.target.clone();
        let lun_exists = target.as_ref().and_then(|t| t.dev.lun(lun)).is_some();
        let (response, scope) = match func {
            1 => {
                // ABORT TASK. If no connection has the task: "function
                // complete" if its CmdSN was never received, else "task
                // does not exist".
                let ref_sn = req.ref_cmd_sn();
                let r = if ref_sn.wrapping_sub(self.exp_cmd_sn()) < 0x8000_0000 {
                    0
                } else {
                    1
                };
                (
                    r,
                    Some(AbortScope::Task {
                        itt: rtt,
                        lun,
                        ref_sn,
                    }),
                )
            }
            // ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET
            2 | 4 | 5 if !lun_exists => (2, None),
            2 | 4 | 5 => {
                if func == 5 {
                    if let Some(l) = target.as_ref().and_then(|t| t.dev.lun(lun)) {
                        l.reset();
                    }
                }
                (0, Some(AbortScope::Lun(lun)))
            }
            6 | 7 => {
                if let Some(t) = &target {
                    for (id, _) in t.dev.luns() {
                        if let Some(l) = t.dev.lun(id) {
                            l.reset();
                        }
                    }
                }
                (0, Some(AbortScope::All))
            }
            3 | 8 => (5, None),
            _ => (255, None),
        };
        // The session's other connections abort their tasks in scope too.
        let others: Vec<Arc<Mailbox>> = match (&scope, &self.shared) {
            (Some(_), Some(sh)) => sessions()
                .iter()
                .filter(|(id, e)| *id != self.id && Arc::ptr_eq(&e.shared, sh))
                .map(|(_, e)| e.mailbox.clone())
                .collect(),
            _ => Vec::new(),
        };
        let wait = Arc::new(TmfWait {
            left: AtomicUsize::new(1 + others.len()),
            found: AtomicBool::new(false),
        });
        match scope {
            Some(scope) => {
                self.abort_local(scope, &wait);
                for m in &others {
                    m.post(scope, wait.clone());
                }
            }
            None => wait.one_done(),
        }
        self.pending_tmfs.push(PendingTmf {
            itt: p.bhs.itt(),
            response,
            abort_task: func == 1,
            wait,
            close_after: func == 7 && response == 0,
        });
        self.send_ready_tmfs();
    }

    /// Aborts this connection's tasks in `scope` for a task management
    /// function (this connection's or another's): tasks not yet executing
    /// go now; `w` is told once the executing ones have completed.
    pub(super) fn abort_local(&mut self, scope: AbortScope, w: &Arc<TmfWait>) {
        let running = match scope {
            AbortScope::Task { itt, lun, ref_sn } => match self.tasks.get_mut(&itt) {
                Some(t) if t.lun == lun => {
                    w.found.store(true, Ordering::Release);
                    if t.executing {
                        t.aborted = true;
                        vec![itt]
                    } else {
                        self.drop_task(itt);
                        Vec::new()
                    }
                }
                _ => {
                    // Not here: if its CmdSN has not arrived, it may still
                    // come (on this connection or another), to be dropped.
                    let ahead = ref_sn.wrapping_sub(self.exp_cmd_sn());
                    if ahead < self.queue_depth && self.pre_aborted.len() < 64 {
                        self.pre_aborted.push((itt, ref_sn));
                    }
                    Vec::new()
                }
            },
            AbortScope::Lun(lun) => self.abort_tasks(Some(lun)),
            AbortScope::All => self.abort_tasks(None),
        };
        if running.is_empty() {
            w.one_done();
        } else {
            tracing::debug!(tasks = ?running, "task management waits for running tasks");
            self.abort_waits.push((running, w.clone()));
        }
    }

    /// True if the command (ITT, CmdSN) was aborted before it arrived: it
    /// is dropped without a response. Forgets entries whose CmdSN can no
    /// longer arrive.
    pub(super) fn drop_pre_aborted(&mut self, itt: u32, sn: u32) -> bool {
        let hit = self.pre_aborted.iter().position(|e| *e == (itt, sn));
        if let Some(i) = hit {
            self.pre_aborted.swap_remove(i);
        }
        let exp = self.exp_cmd_sn();
        let qd = self.queue_depth;
        // Only CmdSNs from ExpCmdSN on can still arrive (one received on
        // another connection was dropped there: each connection has the entry).
        self.pre_aborted.retain(|(_, s)| s.wrapping_sub(exp) < qd);
        if hit.is_some() {
            tracing::debug!(
                itt,
                cmd_sn = sn,
                "command aborted before it arrived: dropped"
            );
        }
        hit.is_some()
    }

    /// Sends the task management responses whose aborted tasks are all
    /// gone. Returns true if it sent any.
    pub(super) fn send_ready_tmfs(&mut self) -> bool {
        let mut sent = false;
        let mut i = 0;
        while i < self.pending_tmfs.len() {
            if self.pending_tmfs[i].wait.left.load(Ordering::Acquire) > 0 {
                i += 1;
                continue;
            }
            let tmf = self.pending_tmfs.remove(i);
            if self.state != State::FullFeature {
                continue;
            }
            let response = if tmf.abort_task && tmf.wait.found.load(Ordering::Acquire) {
                0
            } else {
                tmf.response
            };
            let mut b = Bhs::new(op::TMF_RESP, 0x80);
            b.set_response(response);
            b.set_itt(tmf.itt);
            self.next_stat_sn(&mut b);
            self.send(&Pdu::new(b, Vec::new()));
            sent = true;
            if tmf.close_after {
                self.set_state(State::Closing);
            }
        }
        sent
    }

    /// An aborted task's I/O finished: the task management functions that
    /// waited only for it here are told.
    pub(super) fn aborted_task_done(&mut self, itt: u32) {
        self.abort_waits.retain_mut(|(itts, w)| {
            itts.retain(|i| *i != itt);
            if itts.is_empty() {
                w.one_done();
                false
            } else {
                true
            }
        });
    }

    /// Aborts the tasks of `lun` (all with None): those not yet executing
    /// go now, executing ones are marked and returned (their ITTs).
    pub(super) fn abort_tasks(&mut self, lun: Option<u64>) -> Vec<u32> {
        let mut gone = Vec::new();
        let mut running = Vec::new();
        for (itt, t) in self.tasks.iter_mut() {
            if lun.is_none_or(|l| l == t.lun) {
                if t.executing {
                    t.aborted = true;
                    running.push(*itt);
                } else {
                    gone.push(*itt);
                }
            }
        }
        for itt in gone {
            self.drop_task(itt);
        }
        running
    }
}
