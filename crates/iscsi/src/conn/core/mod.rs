//! The sans-I/O connection core: [`ConnCore`] takes received bytes and
//! the time, and returns bytes to send and SCSI tasks to execute, whose
//! completions are fed back in. Nothing here touches a socket or a clock,
//! so the whole protocol runs in process in the unit tests
//! (`core/tests.rs`) and the `iscsi_conn` fuzz target. The seams follow
//! SPDK's lib/iscsi: PDU I/O ([`pdu_io`]), login and negotiation
//! ([`login`]), the full feature phase dispatcher ([`ffp`]), SCSI tasks and
//! Data-Out/R2T sequencing ([`task`]), task management ([`tmf`]).

mod ffp;
mod login;
mod pdu_io;
mod task;
mod tmf;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::session::*;
use super::{LOGIN_TIMEOUT_SECS, LOGOUT_REQUEST_TIMEOUT_SECS, NO_TAG};
use crate::pdu::{op, Bhs, Pdu};
use crate::target::TargetNode;
use crate::text::{Params, TargetLimits};
use login::Chap;
pub use task::ScsiTask;
use task::{Task, CDB_POOL_MAX};
pub(crate) use tmf::Mailbox;
use tmf::{PendingTmf, TmfWait};

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Connection states.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum State {
    /// Logging in (SPDK's "invalid").
    Login,
    /// Full feature phase ("running").
    FullFeature,
    /// Flush the output, then close ("exiting").
    Closing,
    /// Closed, not yet dropped ("exited").
    Closed,
}

pub(super) struct Session {
    pub(super) discovery: bool,
    pub(super) target: Option<Arc<TargetNode>>,
    pub(super) tsih: u16,
    pub(super) nexus: Arc<str>,
}

/// What a connection core is told about its connection when it starts.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// The initiator's address.
    pub peer: SocketAddr,
    /// Our address.
    pub local: SocketAddr,
    /// The portal group the connection came in on.
    pub pg_tag: u32,
    /// Our negotiation limits (the global options').
    pub limits: TargetLimits,
    /// NOP-In interval, seconds (0: no pings).
    pub nop_in_interval: u32,
    /// Seconds without an answer to a NOP-In before the connection closes.
    pub nop_timeout: u32,
    /// The reactor core, for `iscsi_get_connections`.
    pub lcore_id: u32,
    /// The thread's name, for `iscsi_get_connections`.
    pub thread_name: String,
}

impl ConnConfig {
    /// The configuration of a connection from `peer` to `local` on portal
    /// group `pg_tag`, with the global options' limits and NOP-In timers.
    pub fn from_options(peer: SocketAddr, local: SocketAddr, pg_tag: u32) -> ConnConfig {
        let (limits, nop_in_interval, nop_timeout) = crate::target::with_registry(|r| {
            (
                r.options.limits(),
                r.options.nop_in_interval,
                r.options.nop_timeout,
            )
        });
        ConnConfig {
            peer,
            local,
            pg_tag,
            limits,
            nop_in_interval,
            nop_timeout,
            lcore_id: 0,
            thread_name: String::new(),
        }
    }
}

/// One connection's protocol state machine, without I/O: the driver
/// ([`super::Conn`], or a test) feeds it received bytes with
/// [`ConnCore::receive`] and the time with [`ConnCore::process_input`] and
/// [`ConnCore::tick`], takes the bytes to send from [`ConnCore::output`],
/// executes the SCSI tasks it hands out with [`ConnCore::next_task`] and
/// feeds their results back with [`ConnCore::task_done`].
pub struct ConnCore {
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    pg_tag: u32,
    inbuf: Vec<u8>,
    /// Bytes of `inbuf` handled already (while a task waits for the driver).
    in_pos: usize,
    outbuf: Vec<u8>,
    out_pos: usize,
    state: State,
    params: Params,
    limits: TargetLimits,
    hd: bool,
    dd: bool,
    // Login.
    login_keys: Vec<(String, String)>,
    login_started: bool,
    initiator_name: String,
    session_type_discovery: bool,
    target: Option<Arc<TargetNode>>,
    cid: u16,
    isid: [u8; 6],
    session: Option<Session>,
    stat_sn: u32,
    exp_cmd_sn: u32,
    queue_depth: u32,
    tasks: HashMap<u32, Task>,
    ttt_to_itt: HashMap<u32, u32>,
    next_ttt: u32,
    /// WRITE bytes solicited by R2Ts of commands not yet executing.
    solicited: usize,
    /// A task is waiting for [`SOLICIT_BUDGET`] to send its R2Ts.
    r2t_starved: bool,
    pending_tmfs: Vec<PendingTmf>,
    /// Aborted tasks still running, and the task management function
    /// (maybe another connection's) waiting for them.
    abort_waits: Vec<(Vec<u32>, Arc<TmfWait>)>,
    /// (ITT, CmdSN) of commands aborted before they arrived.
    pre_aborted: Vec<(u32, u32)>,
    mailbox: Arc<Mailbox>,
    /// The session's shared state, once in full feature phase.
    shared: Option<Arc<SessionShared>>,
    /// The TSIH of the session this login adds a connection to (MC/S).
    join_tsih: Option<u16>,
    /// That session, once found.
    joining: Option<Arc<SessionShared>>,
    /// Tasks ready to execute, in order, for the driver.
    ready: VecDeque<ScsiTask>,
    /// Free CDB buffers, reused across commands (at most [`CDB_POOL_MAX`]).
    cdb_pool: Vec<Vec<u8>>,
    kill: Arc<AtomicBool>,
    registered: bool,
    thread_name: String,
    lcore_id: u32,
    /// The time of the last call that passed one (ns).
    now_ns: u64,
    chap: Chap,
    chap_keys: Vec<(String, String)>,
    auth_done: bool,
    /// When the initiator last sent anything (ns).
    last_rx_ns: u64,
    /// Outstanding target NOP-In ping: (TTT, sent at ns).
    ping: Option<(u32, u64)>,
    /// NOP-In interval and timeout (ns), from the options.
    nop_interval_ns: u64,
    nop_timeout_ns: u64,
    /// When the connection was accepted (ns): login must end within
    /// [`LOGIN_TIMEOUT_SECS`].
    created_ns: u64,
    /// Set by [`request_logout`].
    logout_req: Arc<AtomicBool>,
    /// Tasks executing (see [`TASKS_PER_QUEUE_DEPTH`]).
    running: usize,
    /// When the Async Message asking for a logout went out (ns).
    logout_sent_ns: Option<u64>,
}

impl ConnCore {
    /// A new connection, logging in, at time `now_ns`.
    pub fn new(cfg: ConnConfig, now_ns: u64) -> ConnCore {
        let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(AtomicBool::new(false));
        let info = ConnInfo {
            id,
            cid: 0,
            tsih: 0,
            lcore_id: cfg.lcore_id,
            initiator_addr: cfg.peer.ip().to_string(),
            target_addr: cfg.local.ip().to_string(),
            target_node_name: String::new(),
            thread_name: cfg.thread_name.clone(),
            initiator_name: String::new(),
            isid: String::new(),
            state: "invalid",
            login_phase: "security_negotiation",
        };
        logging_in().push(LoginEntry {
            info,
            pg_tag: cfg.pg_tag,
            kill: kill.clone(),
        });
        STATE_COUNTS[state_index(State::Login)].fetch_add(1, Ordering::Relaxed);
        ConnCore {
            id,
            peer: cfg.peer,
            local: cfg.local,
            pg_tag: cfg.pg_tag,
            inbuf: Vec::with_capacity(64 * 1024),
            in_pos: 0,
            outbuf: Vec::with_capacity(64 * 1024),
            out_pos: 0,
            state: State::Login,
            params: Params::rfc_defaults(),
            limits: cfg.limits,
            hd: false,
            dd: false,
            login_keys: Vec::new(),
            login_started: false,
            initiator_name: String::new(),
            session_type_discovery: false,
            target: None,
            cid: 0,
            isid: [0; 6],
            session: None,
            stat_sn: 0,
            exp_cmd_sn: 0,
            queue_depth: 64,
            tasks: HashMap::new(),
            ttt_to_itt: HashMap::new(),
            next_ttt: 1,
            solicited: 0,
            r2t_starved: false,
            pending_tmfs: Vec::new(),
            abort_waits: Vec::new(),
            pre_aborted: Vec::new(),
            mailbox: Arc::new(Mailbox::default()),
            shared: None,
            join_tsih: None,
            joining: None,
            ready: VecDeque::with_capacity(64),
            cdb_pool: Vec::with_capacity(CDB_POOL_MAX),
            kill,
            registered: false,
            chap: Chap::Off,
            chap_keys: Vec::new(),
            auth_done: false,
            last_rx_ns: now_ns,
            ping: None,
            nop_interval_ns: u64::from(cfg.nop_in_interval) * 1_000_000_000,
            nop_timeout_ns: u64::from(cfg.nop_timeout) * 1_000_000_000,
            thread_name: cfg.thread_name,
            lcore_id: cfg.lcore_id,
            now_ns,
            created_ns: now_ns,
            logout_req: Arc::new(AtomicBool::new(false)),
            logout_sent_ns: None,
            running: 0,
        }
    }

    /// The connection's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// True while the connection flushes its last responses before closing.
    pub fn is_closing(&self) -> bool {
        self.state == State::Closing
    }

    /// True if the target asked the connection to close (target deletion,
    /// reinstatement, another connection's logout) and it is not closing
    /// already; [`ConnCore::close`] then ends it.
    pub fn kill_requested(&self) -> bool {
        self.kill.load(Ordering::Acquire) && self.state != State::Closing
    }

    /// The target node the connection logged in to.
    pub fn target(&self) -> Option<&Arc<TargetNode>> {
        self.target.as_ref()
    }

    /// Timers at time `now_ns`: NOP-In keep-alive (`got_input`: bytes
    /// arrived since the last tick), the login timeout, logout requests.
    pub fn tick(&mut self, now_ns: u64, got_input: bool) {
        self.now_ns = now_ns;
        self.keepalive(got_input);
        self.timers();
    }

    /// Work that does not wait for input: aborts other connections of the
    /// session asked for, and task management responses now ready.
    /// Returns true if it did any.
    pub fn service(&mut self) -> bool {
        let mut busy = false;
        for (scope, w) in self.mailbox.take() {
            busy = true;
            self.abort_local(scope, &w);
        }
        if !self.pending_tmfs.is_empty() {
            busy |= self.send_ready_tmfs();
        }
        busy
    }

    /// Closes a connection in [`State::Closing`] once its output is sent.
    pub fn close_if_flushed(&mut self) {
        if self.state == State::Closing && self.out_pos >= self.outbuf.len() {
            self.close();
        }
    }

    /// Moves to state `s`, keeping the [`stats`] counts.
    pub(super) fn set_state(&mut self, s: State) {
        if s == self.state {
            return;
        }
        if self.state == State::Login {
            logging_in().retain(|c| c.info.id != self.id);
        }
        STATE_COUNTS[state_index(self.state)].fetch_sub(1, Ordering::Relaxed);
        STATE_COUNTS[state_index(s)].fetch_add(1, Ordering::Relaxed);
        self.state = s;
    }

    /// Login timeout and logout requests: closes a connection that has
    /// not logged in within [`LOGIN_TIMEOUT_SECS`], sends the Async
    /// Message of a requested logout and closes the connection if the
    /// initiator has not logged out [`LOGOUT_REQUEST_TIMEOUT_SECS`] later.
    pub(super) fn timers(&mut self) {
        match self.state {
            State::Login => {
                let now = self.now_ns;
                if now.saturating_sub(self.created_ns) > LOGIN_TIMEOUT_SECS * 1_000_000_000 {
                    tracing::warn!(peer = %self.peer, secs = LOGIN_TIMEOUT_SECS,
                        "no login within the login timeout: closing the connection");
                    self.close();
                }
            }
            State::FullFeature => {
                if let Some(sent) = self.logout_sent_ns {
                    let limit = u64::from(LOGOUT_REQUEST_TIMEOUT_SECS) * 1_000_000_000;
                    if self.now_ns.saturating_sub(sent) > limit {
                        tracing::warn!(peer = %self.peer, "no logout after the logout request: closing");
                        self.close();
                    }
                } else if self.logout_req.load(Ordering::Acquire) {
                    let mut b = Bhs::new(op::ASYNC, 0x80);
                    b.set_lun(0);
                    b.set_itt(NO_TAG);
                    b.set_async_event(1); // the target requests a logout
                    b.set_parameter3(LOGOUT_REQUEST_TIMEOUT_SECS);
                    self.next_stat_sn(&mut b);
                    self.send(&Pdu::new(b, Vec::new()));
                    self.logout_sent_ns = Some(self.now_ns);
                }
            }
            _ => {}
        }
    }

    /// True once the connection is finished and can be dropped.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// NOP-In keep-alive: ping an idle initiator every `nop_in_interval`
    /// seconds; close the connection if nothing arrives within `nop_timeout`.
    pub(super) fn keepalive(&mut self, got_input: bool) {
        if self.state != State::FullFeature || self.nop_interval_ns == 0 {
            return;
        }
        let now = self.now_ns;
        if got_input {
            self.last_rx_ns = now;
            self.ping = None;
            return;
        }
        match self.ping {
            Some((_, sent))
                if self.nop_timeout_ns > 0 && now.saturating_sub(sent) > self.nop_timeout_ns =>
            {
                tracing::warn!(peer = %self.peer, "no answer to NOP-In: closing the connection");
                self.close();
            }
            Some(_) => {}
            None if now.saturating_sub(self.last_rx_ns) > self.nop_interval_ns => {
                let ttt = self.next_ttt;
                self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
                let mut b = Bhs::new(op::NOP_IN, 0x80);
                b.set_itt(NO_TAG);
                b.set_ttt(ttt);
                self.set_sns(&mut b, false);
                self.send(&Pdu::new(b, Vec::new()));
                self.ping = Some((ttt, now));
            }
            None => {}
        }
    }

    /// Closes the connection now: its session loses it (and ends with its
    /// last connection), its tasks are forgotten, task management
    /// functions waiting on it are told. The driver closes the socket.
    pub fn close(&mut self) {
        if self.state == State::Closed {
            return;
        }
        self.set_state(State::Closed);
        // The session ends with its last connection.
        if let Some(sh) = self.shared.take() {
            if sh.conns.fetch_sub(1, Ordering::AcqRel) == 1 {
                if let Some(t) = &sh.target {
                    t.dev.release_nexus(&sh.nexus);
                }
            }
        }
        self.tasks.clear();
        self.solicited = 0;
        self.r2t_starved = false;
        self.running = 0;
        // Task management functions waiting here (ours or another
        // connection's) need not wait for tasks that are gone.
        self.mailbox.close();
        for (_, w) in self.abort_waits.drain(..) {
            w.one_done();
        }
        self.pending_tmfs.clear();
        if self.registered {
            sessions().retain(|(id, _)| *id != self.id);
        }
    }

    /// ExpCmdSN: the session's once in full feature phase, else the login's.
    pub(super) fn exp_cmd_sn(&self) -> u32 {
        match &self.shared {
            Some(sh) => sh.exp_cmd_sn(),
            None => self.exp_cmd_sn,
        }
    }

    pub(super) fn max_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn()
            .wrapping_add(self.queue_depth)
            .wrapping_sub(1)
    }

    pub(super) fn set_sns(&self, b: &mut Bhs, advance_stat: bool) -> u32 {
        b.set_stat_sn(self.stat_sn);
        b.set_exp_cmd_sn(self.exp_cmd_sn());
        b.set_max_cmd_sn(self.max_cmd_sn());
        let s = self.stat_sn;
        let _ = advance_stat;
        s
    }

    pub(super) fn next_stat_sn(&mut self, b: &mut Bhs) {
        self.set_sns(b, true);
        self.stat_sn = self.stat_sn.wrapping_add(1);
    }

    /// CmdSN check for non-immediate commands: true to process.
    pub(super) fn accept_cmd_sn(&mut self, b: &Bhs) -> bool {
        if b.immediate() {
            return true;
        }
        let sn = b.cmd_sn();
        if let Some(sh) = &self.shared {
            let ok = sh.accept(sn);
            if !ok {
                tracing::debug!(
                    cmd_sn = sn,
                    exp = sh.exp_cmd_sn(),
                    "CmdSN outside the window or seen: dropped"
                );
            }
            return ok;
        }
        let d = sn.wrapping_sub(self.exp_cmd_sn);
        if d == 0 {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            true
        } else if d < self.queue_depth {
            // Ahead of a gap: take it and move the window on.
            self.exp_cmd_sn = sn.wrapping_add(1);
            true
        } else {
            tracing::debug!(
                cmd_sn = sn,
                exp = self.exp_cmd_sn,
                "CmdSN outside the window: dropped"
            );
            false
        }
    }
}

impl Drop for ConnCore {
    fn drop(&mut self) {
        if self.state == State::Login {
            logging_in().retain(|c| c.info.id != self.id);
        }
        STATE_COUNTS[state_index(self.state)].fetch_sub(1, Ordering::Relaxed);
    }
}
