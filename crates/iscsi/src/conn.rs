//! iSCSI connections: login, full feature phase, SCSI command flow with
//! R2T/Data-Out and Data-In sequencing, task management, logout. Each
//! connection lives on one poll group thread and is polled there (never
//! blocking: non-blocking sockets).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rspdk_scsi::{decode_lun, ScsiCommand, ScsiResult};
use serde::Serialize;

use crate::pdu::{
    login_response_flags, op, reject, stage, Bhs, LoginRequest, LogoutRequest, Parsed, Pdu,
    ScsiCmd, TaskMgmtRequest,
};
use crate::target::{with_registry, TargetNode};
use crate::text::{emit_text, negotiate, parse_text, Params, TargetLimits};
use crate::IscsiError;

/// Largest data segment accepted during login (RFC 7143 6.1).
const LOGIN_MAX_DATA: usize = 8192;
/// Seconds a connection has to complete its login before it is closed
/// (SPDK's `ISCSI_LOGIN_TIMEOUT`).
pub const LOGIN_TIMEOUT_SECS: u64 = 30;
/// Seconds an initiator asked to log out (`iscsi_target_node_request_logout`)
/// has before the connection is closed (SPDK's `ISCSI_LOGOUT_REQUEST_TIMEOUT`).
pub const LOGOUT_REQUEST_TIMEOUT_SECS: u16 = 30;
/// Bytes of responses a connection queues for an initiator that does not
/// read them; above this it takes no new PDUs until the queue drains.
pub const OUT_QUEUE_MAX: usize = 4 << 20;
/// Output queue capacity a connection keeps once drained.
const OUT_KEEP_MAX: usize = 64 << 20;
/// Bytes of received, unprocessed input above which the socket is not read.
const IN_QUEUE_MAX: usize = 512 << 10;
/// Tasks a connection has executing (bdev I/O issued, response not yet
/// queued) at once, per unit of queue depth: above this it takes no new
/// SCSI commands until some complete. Tasks waiting for Data-Out do not
/// count: their data may sit behind the next command in the stream.
const TASKS_PER_QUEUE_DEPTH: usize = 2;
const NO_TAG: u32 = 0xffff_ffff;
/// WRITE data bytes a connection solicits with R2Ts and holds before the
/// commands execute. RFC 7143 lets a target pace its R2Ts: an initiator
/// that leaves bursts unfinished on many commands cannot make the target
/// hold more than this (or one command's data, when larger), where without
/// a cap 64 commands of 64 MiB would pin 4 GiB.
const SOLICIT_BUDGET: usize = 32 << 20;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Connections by state, for `iscsi_get_stats`: in login (SPDK's
/// "invalid"), in full feature phase ("running"), closing ("exiting"),
/// closed but not yet dropped ("exited").
static STATE_COUNTS: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];

/// Connections by state: `[invalid, running, exiting, exited]`.
pub fn stats() -> [u32; 4] {
    std::array::from_fn(|i| STATE_COUNTS[i].load(Ordering::Relaxed))
}

fn state_index(s: State) -> usize {
    match s {
        State::Login => 0,
        State::FullFeature => 1,
        State::Closing => 2,
        State::Closed => 3,
    }
}

/// A connection still logging in.
struct LoginEntry {
    info: ConnInfo,
    pg_tag: u32,
    kill: Arc<AtomicBool>,
}

/// Connections still logging in, for `iscsi_get_connections` and
/// `iscsi_target_node_request_logout`.
static LOGGING_IN: Mutex<Vec<LoginEntry>> = Mutex::new(Vec::new());

fn logging_in() -> std::sync::MutexGuard<'static, Vec<LoginEntry>> {
    LOGGING_IN.lock().unwrap_or_else(|e| e.into_inner())
}
static NEXT_TSIH: AtomicU16 = AtomicU16::new(1);

/// `iscsi_get_connections` entry (SPDK's field names).
#[derive(Debug, Clone, Serialize)]
pub struct ConnInfo {
    /// Connection id.
    pub id: u64,
    /// CID.
    pub cid: u16,
    /// TSIH.
    pub tsih: u16,
    /// Thread id.
    pub lcore_id: u32,
    /// Initiator address.
    pub initiator_addr: String,
    /// Target address.
    pub target_addr: String,
    /// Target node name.
    pub target_node_name: String,
    /// Thread name.
    pub thread_name: String,
    /// Initiator name.
    pub initiator_name: String,
    /// ISID, hex.
    pub isid: String,
    /// SPDK's connection state: `invalid` (logging in) or `running`.
    pub state: &'static str,
    /// SPDK's login phase: `security_negotiation` or `full_feature_phase`.
    pub login_phase: &'static str,
}

struct SessionEntry {
    /// Asks the connection to request a logout (Async Message).
    logout: Arc<AtomicBool>,
    pg_tag: u32,
    initiator: String,
    isid: [u8; 6],
    target: String,
    cid: u16,
    kill: Arc<AtomicBool>,
    mailbox: Arc<Mailbox>,
    info: Option<ConnInfo>,
    shared: Arc<SessionShared>,
}

/// What the connections of one session share (MC/S). They may live on
/// different poll group threads, so the CmdSN window is one atomic word;
/// the rest is fixed when the leading connection logs in.
struct SessionShared {
    tsih: u16,
    discovery: bool,
    target: Option<Arc<TargetNode>>,
    nexus: Arc<str>,
    queue_depth: u32,
    /// Session-wide keys negotiated by the leading connection.
    params: Params,
    /// ExpCmdSN in the high 32 bits; bit i of the low 32 says CmdSN
    /// ExpCmdSN + 1 + i has arrived already (commands of several
    /// connections can arrive out of order).
    cmd_sn: AtomicU64,
    /// Connections in full feature phase.
    conns: AtomicU32,
}

impl SessionShared {
    fn exp_cmd_sn(&self) -> u32 {
        (self.cmd_sn.load(Ordering::Acquire) >> 32) as u32
    }

    /// Takes CmdSN `sn` of a non-immediate command: true if it is new and
    /// inside the window (ExpCmdSN..=MaxCmdSN), false for a duplicate or
    /// one outside it (the command is then dropped, RFC 7143 3.2.2.1).
    fn accept(&self, sn: u32) -> bool {
        let mut cur = self.cmd_sn.load(Ordering::Acquire);
        loop {
            let (exp, bits) = ((cur >> 32) as u32, cur as u32);
            let d = sn.wrapping_sub(exp);
            let (exp, bits) = if d == 0 {
                // Move past every CmdSN that arrived early.
                let (mut e, mut b) = (exp.wrapping_add(1), bits);
                while b & 1 != 0 {
                    b >>= 1;
                    e = e.wrapping_add(1);
                }
                (e, b >> 1)
            } else if d <= 32 && d < self.queue_depth {
                let bit = 1u32 << (d - 1);
                if bits & bit != 0 {
                    return false;
                }
                (exp, bits | bit)
            } else if d < self.queue_depth {
                // Far ahead of a gap: take it and move the window on.
                (sn.wrapping_add(1), 0)
            } else {
                return false;
            };
            let new = (u64::from(exp) << 32) | u64::from(bits);
            match self
                .cmd_sn
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(c) => cur = c,
            }
        }
    }
}

static SESSIONS: Mutex<Vec<(u64, SessionEntry)>> = Mutex::new(Vec::new());

fn sessions() -> std::sync::MutexGuard<'static, Vec<(u64, SessionEntry)>> {
    SESSIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connections, for `iscsi_get_connections`: those logging in, then those
/// in full feature phase.
pub fn connections() -> Vec<ConnInfo> {
    let mut v: Vec<ConnInfo> = logging_in().iter().map(|e| e.info.clone()).collect();
    v.extend(sessions().iter().filter_map(|(_, s)| s.info.clone()));
    v
}

/// Asks the initiators of `target`'s connections (through portal group
/// `pg`, or all) to log out: an Async Message (AsyncEvent 1), and the
/// connection closes if no logout comes within
/// [`LOGOUT_REQUEST_TIMEOUT_SECS`]. Connections still logging in to it
/// are closed (as SPDK does).
pub fn request_logout(target: &str, pg: Option<u32>) {
    for e in logging_in().iter() {
        if e.info.target_node_name == target && pg.is_none_or(|p| p == e.pg_tag) {
            e.kill.store(true, Ordering::Release);
        }
    }
    for (_, s) in sessions().iter() {
        if s.target == target && pg.is_none_or(|p| p == s.pg_tag) {
            s.logout.store(true, Ordering::Release);
        }
    }
}

/// Asks every connection of `target` to close (target deletion).
pub fn kill_target_sessions(target: &str) {
    for (_, s) in sessions().iter() {
        if s.target == target {
            s.kill.store(true, Ordering::Release);
        }
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum State {
    Login,
    FullFeature,
    /// Flush the output, then close.
    Closing,
    Closed,
}

/// Free CDB buffers a connection keeps at most.
const CDB_POOL_MAX: usize = 256;

struct Task {
    lun: u64,
    cdb: Vec<u8>,
    edtl: u32,
    read: bool,
    write: bool,
    data: Vec<u8>,
    received: u32,
    next_r2t_offset: u32,
    /// Outstanding R2Ts: (ttt, offset, len, next expected DataSN).
    r2ts: Vec<(u32, u32, u32, u32)>,
    r2t_sn: u32,
    unsol_data_sn: u32,
    unsolicited_left: u32,
    executing: bool,
    aborted: bool,
    /// When the command arrived (ns), while the target's histogram is on.
    start_ns: u64,
    /// WRITE data bytes reserved in the connection's [`SOLICIT_BUDGET`] by
    /// the command's first R2T (all it still needs), until it executes.
    solicited: u32,
}

/// A task management function waiting for the tasks it aborted, on this
/// connection and on the session's others, whose bdev I/O was running
/// (RFC 7143 11.5.1: the response means the tasks are gone, so the
/// initiator may reuse their ITTs).
struct TmfWait {
    /// Connections that have not finished aborting yet.
    left: AtomicUsize,
    /// ABORT TASK: some connection had the referenced task.
    found: AtomicBool,
}

impl TmfWait {
    fn one_done(&self) {
        self.left.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a task management function aborts on each connection.
#[derive(Debug, Clone, Copy)]
enum AbortScope {
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
struct Mailbox {
    pending: AtomicBool,
    inner: Mutex<MailboxInner>,
}

#[derive(Default)]
struct MailboxInner {
    closed: bool,
    msgs: Vec<(AbortScope, Arc<TmfWait>)>,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, MailboxInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the connection to abort `scope`; a closed connection has
    /// nothing left to abort and counts as done at once.
    fn post(&self, scope: AbortScope, w: Arc<TmfWait>) {
        let mut g = self.lock();
        if g.closed {
            w.one_done();
            return;
        }
        g.msgs.push((scope, w));
        self.pending.store(true, Ordering::Release);
    }

    fn take(&self) -> Vec<(AbortScope, Arc<TmfWait>)> {
        // A plain load first: this runs on every poll.
        if !self.pending.load(Ordering::Acquire) || !self.pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut self.lock().msgs)
    }

    fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        for (_, w) in g.msgs.drain(..) {
            w.one_done();
        }
    }
}

/// A task management response to send once its [`TmfWait`] is done.
struct PendingTmf {
    /// The TMF request's ITT.
    itt: u32,
    /// The response code (ABORT TASK: if no connection had the task).
    response: u8,
    /// ABORT TASK: answer "function complete" if the task was found.
    abort_task: bool,
    wait: Arc<TmfWait>,
    /// TARGET COLD RESET: close the connection after the response.
    close_after: bool,
}

struct Session {
    discovery: bool,
    target: Option<Arc<TargetNode>>,
    tsih: u16,
    nexus: Arc<str>,
}

/// One connection.
pub struct Conn {
    id: u64,
    sock: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    pg_tag: u32,
    inbuf: Vec<u8>,
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
    completions: Rc<RefCell<VecDeque<(u32, ScsiResult)>>>,
    /// Free CDB buffers, reused across commands (at most [`CDB_POOL_MAX`]).
    cdb_pool: Vec<Vec<u8>>,
    kill: Arc<AtomicBool>,
    registered: bool,
    thread_name: String,
    /// Receive scratch buffer (allocated once, not zeroed per poll).
    scratch: Box<[u8]>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Chap {
    Off,
    WaitA,
    WaitR { id: u8, challenge: Vec<u8> },
}

fn be24(n: usize) -> [u8; 3] {
    let b = (n as u32).to_be_bytes();
    [b[1], b[2], b[3]]
}

impl Conn {
    /// A new connection accepted on portal group `pg_tag`.
    pub fn new(sock: TcpStream, pg_tag: u32) -> Result<Conn, IscsiError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| IscsiError::Io { what, source }
        };
        sock.set_nonblocking(true).map_err(io("set_nonblocking"))?;
        let _ = sock.set_nodelay(true);
        // sock_impl_set_options (posix): buffer sizes, quick ack.
        if let Err(e) = rspdk_sock::apply_server(std::os::fd::AsRawFd::as_raw_fd(&sock)) {
            tracing::warn!(error = %e, "iscsi: cannot apply the sock options to a connection");
        }
        let peer = sock.peer_addr().map_err(io("peer_addr"))?;
        let local = sock.local_addr().map_err(io("local_addr"))?;
        let (limits, nop) = with_registry(|r| {
            (
                r.options.limits(),
                (r.options.nop_in_interval, r.options.nop_timeout),
            )
        });
        let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        let thread_name = rspdk_thread::get_thread()
            .map(|t| t.name().to_string())
            .unwrap_or_default();
        let kill = Arc::new(AtomicBool::new(false));
        let info = ConnInfo {
            id,
            cid: 0,
            tsih: 0,
            lcore_id: rspdk_event::current_cpu().unwrap_or(0),
            initiator_addr: peer.ip().to_string(),
            target_addr: local.ip().to_string(),
            target_node_name: String::new(),
            thread_name: thread_name.clone(),
            initiator_name: String::new(),
            isid: String::new(),
            state: "invalid",
            login_phase: "security_negotiation",
        };
        logging_in().push(LoginEntry {
            info,
            pg_tag,
            kill: kill.clone(),
        });
        STATE_COUNTS[state_index(State::Login)].fetch_add(1, Ordering::Relaxed);
        Ok(Conn {
            id,
            sock,
            peer,
            local,
            pg_tag,
            inbuf: Vec::with_capacity(64 * 1024),
            outbuf: Vec::with_capacity(64 * 1024),
            out_pos: 0,
            state: State::Login,
            params: Params::rfc_defaults(),
            limits,
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
            completions: Rc::new(RefCell::new(VecDeque::new())),
            cdb_pool: Vec::with_capacity(CDB_POOL_MAX),
            kill,
            registered: false,
            scratch: vec![0u8; 65536].into_boxed_slice(),
            chap: Chap::Off,
            chap_keys: Vec::new(),
            auth_done: false,
            last_rx_ns: rspdk_thread::now_ns(),
            ping: None,
            nop_interval_ns: u64::from(nop.0) * 1_000_000_000,
            nop_timeout_ns: u64::from(nop.1) * 1_000_000_000,
            thread_name,
            created_ns: rspdk_thread::now_ns(),
            logout_req: Arc::new(AtomicBool::new(false)),
            logout_sent_ns: None,
            running: 0,
        })
    }

    /// Moves to state `s`, keeping the [`stats`] counts.
    fn set_state(&mut self, s: State) {
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
    fn timers(&mut self) {
        match self.state {
            State::Login => {
                let now = rspdk_thread::now_ns();
                if now.saturating_sub(self.created_ns) > LOGIN_TIMEOUT_SECS * 1_000_000_000 {
                    tracing::warn!(peer = %self.peer, secs = LOGIN_TIMEOUT_SECS,
                        "no login within the login timeout: closing the connection");
                    self.close();
                }
            }
            State::FullFeature => {
                if let Some(sent) = self.logout_sent_ns {
                    let limit = u64::from(LOGOUT_REQUEST_TIMEOUT_SECS) * 1_000_000_000;
                    if rspdk_thread::now_ns().saturating_sub(sent) > limit {
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
                    self.logout_sent_ns = Some(rspdk_thread::now_ns());
                }
            }
            _ => {}
        }
    }

    /// Bytes queued for the initiator and not yet written.
    fn out_queued(&self) -> usize {
        self.outbuf.len() - self.out_pos
    }

    /// True once the connection is finished and can be dropped.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Reads, handles PDUs and completions, writes. Returns true if it did work.
    pub fn poll(&mut self) -> bool {
        if self.state == State::Closed {
            return false;
        }
        if self.kill.load(Ordering::Acquire) && self.state != State::Closing {
            self.close();
            return true;
        }
        let mut busy = false;
        if self.state != State::Closing {
            // Backpressure: an initiator that does not read its responses
            // gets no new PDUs processed (and its socket is not read)
            // until they drain; the kernel's socket buffers then fill and
            // stop it sending.
            let got = self.out_queued() <= OUT_QUEUE_MAX
                && self.inbuf.len() < IN_QUEUE_MAX
                && self.read_socket();
            busy |= got;
            busy |= self.process_input();
            self.keepalive(got);
            self.timers();
        }
        busy |= self.drain_completions();
        for (scope, w) in self.mailbox.take() {
            busy = true;
            self.abort_local(scope, &w);
        }
        if !self.pending_tmfs.is_empty() {
            busy |= self.send_ready_tmfs();
        }
        busy |= self.flush();
        if self.state == State::Closing && self.out_pos >= self.outbuf.len() {
            self.close();
        }
        busy
    }

    /// NOP-In keep-alive: ping an idle initiator every `nop_in_interval`
    /// seconds; close the connection if nothing arrives within `nop_timeout`.
    fn keepalive(&mut self, got_input: bool) {
        if self.state != State::FullFeature || self.nop_interval_ns == 0 {
            return;
        }
        let now = rspdk_thread::now_ns();
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

    fn read_socket(&mut self) -> bool {
        let mut busy = false;
        for _ in 0..8 {
            let buf = &mut self.scratch;
            match self.sock.read(buf) {
                Ok(0) => {
                    self.close();
                    return true;
                }
                Ok(n) => {
                    busy = true;
                    self.inbuf.extend_from_slice(&buf[..n]);
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close();
                    return true;
                }
            }
        }
        busy
    }

    fn flush(&mut self) -> bool {
        let mut busy = false;
        while self.out_pos < self.outbuf.len() {
            match self.sock.write(&self.outbuf[self.out_pos..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.out_pos += n;
                    busy = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close();
                    return true;
                }
            }
        }
        if self.out_pos >= self.outbuf.len() {
            self.outbuf.clear();
            self.out_pos = 0;
            // Give back what a burst of very large responses grew the
            // queue to (not every large READ's: regrowing costs page faults).
            if self.outbuf.capacity() > OUT_KEEP_MAX {
                self.outbuf.shrink_to(OUT_KEEP_MAX);
            }
        }
        busy
    }

    fn close(&mut self) {
        if self.state == State::Closed {
            return;
        }
        self.set_state(State::Closed);
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
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

    fn send(&mut self, pdu: &Pdu) {
        pdu.emit(&mut self.outbuf, self.hd, self.dd);
    }

    /// ExpCmdSN: the session's once in full feature phase, else the login's.
    fn exp_cmd_sn(&self) -> u32 {
        match &self.shared {
            Some(sh) => sh.exp_cmd_sn(),
            None => self.exp_cmd_sn,
        }
    }

    fn max_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn()
            .wrapping_add(self.queue_depth)
            .wrapping_sub(1)
    }

    fn set_sns(&self, b: &mut Bhs, advance_stat: bool) -> u32 {
        b.set_stat_sn(self.stat_sn);
        b.set_exp_cmd_sn(self.exp_cmd_sn());
        b.set_max_cmd_sn(self.max_cmd_sn());
        let s = self.stat_sn;
        let _ = advance_stat;
        s
    }

    fn next_stat_sn(&mut self, b: &mut Bhs) {
        self.set_sns(b, true);
        self.stat_sn = self.stat_sn.wrapping_add(1);
    }

    fn send_reject(&mut self, reason: u8, bad: &Bhs) {
        let mut b = Bhs::new(op::REJECT, 0x80);
        b.set_reject_reason(reason);
        b.set_itt(NO_TAG);
        self.next_stat_sn(&mut b);
        self.send(&Pdu::new(b, bad.as_bytes().to_vec()));
    }

    fn process_input(&mut self) -> bool {
        let mut busy = false;
        let mut pos = 0;
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
        self.inbuf.drain(..pos.min(self.inbuf.len()));
        busy
    }

    fn handle(&mut self, p: Pdu) {
        let opc = p.bhs.opcode();
        if self.state == State::Login {
            if opc != op::LOGIN_REQ {
                tracing::warn!(peer = %self.peer, opcode = opc, "non-login PDU during login");
                self.set_state(State::Closing);
                return;
            }
            return self.handle_login(p);
        }
        let discovery = self.session.as_ref().is_some_and(|s| s.discovery);
        match opc {
            op::NOP_OUT => self.handle_nop(p),
            op::SCSI_CMD if !discovery => self.handle_scsi(p),
            op::DATA_OUT if !discovery => self.handle_data_out(p),
            op::TMF_REQ if !discovery => self.handle_tmf(p),
            op::TEXT_REQ => self.handle_text(p),
            op::LOGOUT_REQ => self.handle_logout(p),
            op::LOGIN_REQ => {
                self.send_reject(reject::PROTOCOL_ERROR, &p.bhs);
            }
            op::SNACK => self.send_reject(reject::PROTOCOL_ERROR, &p.bhs),
            _ => self.send_reject(reject::NOT_SUPPORTED, &p.bhs),
        }
    }

    /// CmdSN check for non-immediate commands: true to process.
    fn accept_cmd_sn(&mut self, b: &Bhs) -> bool {
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

    // ---- Login -----------------------------------------------------------

    fn login_response(&mut self, req: &Bhs, flags: u8, class: u8, detail: u8, data: Vec<u8>) {
        let mut b = Bhs::new(op::LOGIN_RESP, flags);
        b.set_versions(0, 0);
        b.set_isid(req.isid());
        let tsih = self.session.as_ref().map(|s| s.tsih).unwrap_or(0);
        if flags & 0x83 == 0x83 {
            b.set_tsih(tsih);
        } else {
            b.set_tsih(req.tsih());
        }
        b.set_itt(req.itt());
        self.next_stat_sn(&mut b);
        b.set_login_status(class, detail);
        self.send(&Pdu::new(b, data));
        if class != 0 {
            self.set_state(State::Closing);
        }
    }

    fn handle_login(&mut self, p: Pdu) {
        let b = p.bhs;
        let Ok(req) = LoginRequest::new_checked(b) else {
            return self.login_response(&b, 0, 0x02, 0x00, Vec::new());
        };
        let transit = req.transit();
        let cont = req.continues();
        let csg = req.csg();
        let nsg = req.nsg();
        if !self.login_started {
            self.login_started = true;
            self.stat_sn = b.exp_stat_sn();
            self.exp_cmd_sn = b.cmd_sn();
            self.cid = b.cid();
            self.isid = b.isid();
            if req.version_min() > 0 {
                // Version-min above ours.
                return self.login_response(&b, 0, 0x02, 0x05, Vec::new());
            }
            if b.tsih() != 0 {
                // Adds a connection to an existing session (MC/S), found
                // once the identity keys are in.
                self.join_tsih = Some(b.tsih());
            }
        }
        self.exp_cmd_sn = b.cmd_sn();
        if (transit && cont)
            || csg == 2
            || (transit && (nsg == 2 || nsg <= csg && nsg != 3))
            || csg == 3
        {
            return self.login_response(&b, 0, 0x02, 0x00, Vec::new());
        }
        let mut data = std::mem::take(&mut self.login_keys);
        let kv = match parse_text(&p.data) {
            Ok(kv) => kv,
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "bad login text");
                return self.login_response(&b, 0, 0x02, 0x00, Vec::new());
            }
        };
        if cont {
            data.extend(kv);
            self.login_keys = data;
            let f = (csg << 2) | nsg;
            return self.login_response(&b, f & 0x0c, 0, 0, Vec::new());
        }
        data.extend(kv);
        let mut resp: Vec<(String, String)> = Vec::new();
        // Identity keys.
        for (k, v) in &data {
            match k.as_str() {
                "InitiatorName" => self.initiator_name = v.clone(),
                "SessionType" => match v.as_str() {
                    "Discovery" => self.session_type_discovery = true,
                    "Normal" => self.session_type_discovery = false,
                    _ => return self.login_response(&b, 0, 0x02, 0x00, Vec::new()),
                },
                "TargetName" => {
                    let t = with_registry(|r| r.targets.get(v).cloned());
                    match t {
                        Some(t) => {
                            if let Some(e) = logging_in().iter_mut().find(|e| e.info.id == self.id)
                            {
                                e.info.target_node_name = t.name.clone();
                            }
                            self.target = Some(t);
                        }
                        None => return self.login_response(&b, 0, 0x02, 0x03, Vec::new()),
                    }
                }
                _ => {}
            }
        }
        if self.session.is_none() {
            if self.initiator_name.is_empty() {
                return self.login_response(&b, 0, 0x02, 0x07, Vec::new());
            }
            if !self.session_type_discovery {
                let Some(t) = self.target.clone() else {
                    return self.login_response(&b, 0, 0x02, 0x07, Vec::new());
                };
                let ok = with_registry(|r| {
                    r.allowed(&t, self.pg_tag, &self.initiator_name, self.peer.ip())
                });
                if !ok {
                    return self.login_response(&b, 0, 0x02, 0x02, Vec::new());
                }
                self.queue_depth = t.queue_depth.max(1);
            }
            if let Some(tsih) = self.join_tsih {
                if !self.join_session(&b, tsih) {
                    return;
                }
            } else {
                let nexus = format!(
                    "{},i,0x{}",
                    self.initiator_name,
                    self.isid
                        .iter()
                        .map(|x| format!("{x:02x}"))
                        .collect::<String>()
                );
                self.session = Some(Session {
                    discovery: self.session_type_discovery,
                    target: self.target.clone(),
                    tsih: 0,
                    nexus: nexus.into(),
                });
            }
            if !self.session_type_discovery {
                resp.push(("TargetPortalGroupTag".into(), self.pg_tag.to_string()));
            }
        }
        let discovery = self.session_type_discovery;
        for (k, v) in &data {
            match k.as_str() {
                "InitiatorName" | "SessionType" | "TargetName" | "InitiatorAlias" => {}
                "AuthMethod" => {
                    if csg != 0 {
                        resp.push((k.clone(), "Reject".into()));
                        continue;
                    }
                    let offers: Vec<&str> = v.split(',').collect();
                    let (require, _, group) = self.auth_policy();
                    if offers.contains(&"CHAP")
                        && (require || (!offers.contains(&"None") && group != 0))
                    {
                        resp.push((k.clone(), "CHAP".into()));
                        self.chap = Chap::WaitA;
                    } else if !require && offers.contains(&"None") {
                        resp.push((k.clone(), "None".into()));
                        self.auth_done = true;
                    } else {
                        return self.login_response(&b, 0, 0x02, 0x01, Vec::new());
                    }
                }
                "CHAP_A" if csg == 0 => {
                    if self.chap != Chap::WaitA || !v.split(',').any(|a| a == "5") {
                        return self.login_response(&b, 0, 0x02, 0x01, Vec::new());
                    }
                    // No randomness, no login: a guessable challenge
                    // would let a recorded response be replayed.
                    let (id, challenge) = match crate::chap::challenge() {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(peer = %self.peer, error = %e,
                                "no random bytes for the CHAP challenge: failing the login");
                            // Target error, out of resources.
                            return self.login_response(&b, 0, 0x03, 0x02, Vec::new());
                        }
                    };
                    resp.push(("CHAP_A".into(), "5".into()));
                    resp.push(("CHAP_I".into(), id.to_string()));
                    resp.push(("CHAP_C".into(), crate::chap::to_hex(&challenge)));
                    self.chap = Chap::WaitR { id, challenge };
                }
                "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" if csg == 0 => {
                    self.chap_keys.push((k.clone(), v.clone()));
                }
                "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => {
                    resp.push((k.clone(), "Irrelevant".into()))
                }
                // A non-leading connection keeps the session's values.
                _ if self.joining.is_some() && crate::text::leading_only(k) => {
                    resp.push((k.clone(), "Irrelevant".into()))
                }
                _ if csg == 0 => {
                    // Operational keys in the security stage are negotiated too.
                    if let Some(r) = negotiate(&mut self.params, &self.limits, discovery, k, v) {
                        resp.push(r);
                    }
                }
                _ => {
                    if let Some(r) = negotiate(&mut self.params, &self.limits, discovery, k, v) {
                        resp.push(r);
                    }
                }
            }
        }
        if let Chap::WaitR { .. } = self.chap {
            if self.chap_keys.iter().any(|(k, _)| k == "CHAP_R") {
                match self.chap_verify() {
                    Some(extra) => resp.extend(extra),
                    None => return self.login_response(&b, 0, 0x02, 0x01, Vec::new()),
                }
            }
        }
        let (require, _, _) = self.auth_policy();
        if require && !self.auth_done && csg == 1 {
            // Authentication is required and did not happen.
            return self.login_response(&b, 0, 0x02, 0x01, Vec::new());
        }
        let transit = transit && (csg != 0 || self.auth_done);
        let out_flags = login_response_flags(transit, csg, nsg);
        if transit && nsg == stage::FULL_FEATURE {
            let target_name = self
                .target
                .as_ref()
                .map(|t| t.name.clone())
                .unwrap_or_default();
            let mut all = sessions();
            let shared = match self.joining.take() {
                Some(sh) => {
                    // Connection reinstatement: an older connection with
                    // this CID leaves the session.
                    for (_, s) in all.iter() {
                        if Arc::ptr_eq(&s.shared, &sh) && s.cid == self.cid {
                            s.kill.store(true, Ordering::Release);
                        }
                    }
                    sh
                }
                None => {
                    // Session reinstatement: close older sessions of this
                    // initiator port.
                    for (_, s) in all.iter() {
                        if s.initiator == self.initiator_name
                            && s.isid == self.isid
                            && s.target == target_name
                        {
                            s.kill.store(true, Ordering::Release);
                        }
                    }
                    let tsih = NEXT_TSIH.fetch_add(1, Ordering::Relaxed).max(1);
                    let Some(sess) = self.session.as_mut() else {
                        drop(all);
                        return self.login_response(&b, 0, 0x03, 0x00, Vec::new());
                    };
                    sess.tsih = tsih;
                    Arc::new(SessionShared {
                        tsih,
                        discovery: sess.discovery,
                        target: sess.target.clone(),
                        nexus: sess.nexus.clone(),
                        queue_depth: self.queue_depth,
                        params: self.params.clone(),
                        cmd_sn: AtomicU64::new(u64::from(self.exp_cmd_sn) << 32),
                        conns: AtomicU32::new(0),
                    })
                }
            };
            shared.conns.fetch_add(1, Ordering::AcqRel);
            all.push((
                self.id,
                SessionEntry {
                    logout: self.logout_req.clone(),
                    pg_tag: self.pg_tag,
                    initiator: self.initiator_name.clone(),
                    isid: self.isid,
                    target: target_name.clone(),
                    cid: self.cid,
                    kill: self.kill.clone(),
                    mailbox: self.mailbox.clone(),
                    shared: shared.clone(),
                    info: Some(ConnInfo {
                        id: self.id,
                        cid: self.cid,
                        tsih: shared.tsih,
                        lcore_id: rspdk_event::current_cpu().unwrap_or(0),
                        initiator_addr: self.peer.ip().to_string(),
                        target_addr: self.local.ip().to_string(),
                        target_node_name: target_name,
                        thread_name: self.thread_name.clone(),
                        initiator_name: self.initiator_name.clone(),
                        isid: self.isid.iter().map(|x| format!("{x:02x}")).collect(),
                        state: "running",
                        login_phase: "full_feature_phase",
                    }),
                },
            ));
            drop(all);
            self.shared = Some(shared);
            self.registered = true;
        }
        let text = emit_text(&resp);
        self.login_response(&b, out_flags, 0, 0, text);
        if out_flags & 0x83 == 0x83 {
            self.set_state(State::FullFeature);
            self.hd = self.params.header_digest;
            self.dd = self.params.data_digest;
            tracing::info!(peer = %self.peer, initiator = %self.initiator_name,
                target = ?self.target.as_ref().map(|t| &t.name), "iSCSI login complete");
        }
    }

    /// The first login PDU of a connection that names an existing session
    /// (TSIH != 0): finds the session of this initiator port and target,
    /// checks MaxConnections, and takes over the session's values.
    /// Returns false once it has answered with a login failure.
    fn join_session(&mut self, b: &Bhs, tsih: u16) -> bool {
        let target_name = self.target.as_ref().map(|t| t.name.clone());
        let found = {
            let all = sessions();
            let sh = all
                .iter()
                .find(|(_, e)| {
                    e.shared.tsih == tsih
                        && e.isid == self.isid
                        && e.initiator == self.initiator_name
                        && Some(&e.target) == target_name.as_ref()
                        && !e.shared.discovery
                })
                .map(|(_, e)| e.shared.clone());
            sh.map(|sh| {
                let others = all
                    .iter()
                    .filter(|(_, e)| Arc::ptr_eq(&e.shared, &sh) && e.cid != self.cid)
                    .count();
                (sh, others)
            })
        };
        let Some((sh, others)) = found else {
            tracing::warn!(peer = %self.peer, tsih, "login names a session that does not exist");
            self.login_response(b, 0, 0x02, 0x0a, Vec::new());
            return false;
        };
        if others >= sh.params.max_connections as usize {
            tracing::warn!(peer = %self.peer, tsih, max = sh.params.max_connections,
                "session has MaxConnections connections already");
            self.login_response(b, 0, 0x02, 0x06, Vec::new());
            return false;
        }
        // Session-wide keys from the leading login; connection keys
        // (digests, MaxRecvDataSegmentLength) start over.
        let fresh = Params::rfc_defaults();
        self.params = Params {
            send_dsl: fresh.send_dsl,
            header_digest: false,
            data_digest: false,
            ..sh.params.clone()
        };
        self.queue_depth = sh.queue_depth;
        self.session = Some(Session {
            discovery: false,
            target: sh.target.clone(),
            tsih: sh.tsih,
            nexus: sh.nexus.clone(),
        });
        self.joining = Some(sh);
        true
    }

    /// (CHAP required, mutual CHAP required, auth group) for this login:
    /// discovery sessions follow their portal group's settings
    /// (`iscsi_portal_group_set_auth`, else the global discovery auth),
    /// normal sessions their target node's (group 0: the global group).
    fn auth_policy(&self) -> (bool, bool, i32) {
        if self.session_type_discovery {
            with_registry(|r| {
                let a = r
                    .portal_groups
                    .get(&self.pg_tag)
                    .and_then(|g| g.auth)
                    .unwrap_or(crate::target::Auth {
                        disable_chap: r.options.disable_chap,
                        require_chap: r.options.require_chap,
                        mutual_chap: r.options.mutual_chap,
                        chap_group: r.options.chap_group,
                    });
                (
                    a.require_chap && !a.disable_chap,
                    a.mutual_chap,
                    a.chap_group,
                )
            })
        } else {
            match &self.target {
                Some(t) => {
                    let a = *t.auth.lock().unwrap_or_else(|e| e.into_inner());
                    let g = if a.chap_group != 0 {
                        a.chap_group
                    } else {
                        with_registry(|r| r.options.chap_group)
                    };
                    (a.require_chap && !a.disable_chap, a.mutual_chap, g)
                }
                None => (false, false, 0),
            }
        }
    }

    /// Checks the initiator's CHAP_N/CHAP_R; returns the keys to answer
    /// (the target's own CHAP_N/CHAP_R for mutual CHAP), None on failure.
    fn chap_verify(&mut self) -> Option<Vec<(String, String)>> {
        let Chap::WaitR { id, challenge } = std::mem::replace(&mut self.chap, Chap::Off) else {
            return None;
        };
        let get = |k: &str| {
            self.chap_keys
                .iter()
                .rev()
                .find(|(kk, _)| kk == k)
                .map(|(_, v)| v.clone())
        };
        let name = get("CHAP_N")?;
        let r = crate::chap::from_hex(&get("CHAP_R")?)?;
        let (_, mutual, group) = self.auth_policy();
        let secret = with_registry(|reg| {
            reg.auth_groups
                .get(&group)
                .and_then(|g| g.secrets.iter().find(|s| s.user == name).cloned())
        })?;
        if crate::chap::response(id, secret.secret.as_bytes(), &challenge).as_slice()
            != r.as_slice()
        {
            tracing::warn!(peer = %self.peer, user = %name, "CHAP response does not match");
            return None;
        }
        let mut out = Vec::new();
        let ci = get("CHAP_I");
        let cc = get("CHAP_C");
        if mutual || (ci.is_some() && cc.is_some()) {
            let ci: u8 = ci?.parse().ok()?;
            let cc = crate::chap::from_hex(&cc?)?;
            if cc == challenge {
                return None; // reflected challenge
            }
            let (muser, msecret) = (secret.muser.clone()?, secret.msecret.clone()?);
            out.push(("CHAP_N".to_string(), muser));
            out.push((
                "CHAP_R".to_string(),
                crate::chap::to_hex(&crate::chap::response(ci, msecret.as_bytes(), &cc)),
            ));
        }
        self.auth_done = true;
        Some(out)
    }

    // ---- Full feature phase ----------------------------------------------

    fn handle_nop(&mut self, p: Pdu) {
        if !self.accept_cmd_sn(&p.bhs) {
            return;
        }
        if p.bhs.itt() == NO_TAG {
            return; // a ping answer or no reply wanted
        }
        let mut b = Bhs::new(op::NOP_IN, 0x80);
        b.set_lun(p.bhs.lun());
        b.set_itt(p.bhs.itt());
        b.set_ttt(NO_TAG);
        self.next_stat_sn(&mut b);
        let mut data = p.data;
        data.truncate(self.params.send_dsl as usize);
        self.send(&Pdu::new(b, data));
    }

    fn handle_text(&mut self, p: Pdu) {
        if !self.accept_cmd_sn(&p.bhs) {
            return;
        }
        let kv = parse_text(&p.data).unwrap_or_default();
        let mut resp = Vec::new();
        let ip = self.peer.ip();
        for (k, v) in &kv {
            if k == "SendTargets" {
                let only = match v.as_str() {
                    "All" => None,
                    "" => self.target.as_ref().map(|t| t.name.clone()),
                    name => Some(name.to_string()),
                };
                if v == "All" && !self.session_type_discovery {
                    // Normal sessions may only ask for their own target.
                }
                let init = self.initiator_name.clone();
                resp.extend(with_registry(|r| {
                    r.send_targets(self.pg_tag, &init, ip, self.local, only.as_deref())
                }));
            } else {
                let discovery = self.session_type_discovery;
                if let Some(r) = negotiate(&mut self.params, &self.limits, discovery, k, v) {
                    resp.push(r);
                }
            }
        }
        let mut b = Bhs::new(op::TEXT_RESP, 0x80);
        b.set_lun(p.bhs.lun());
        b.set_itt(p.bhs.itt());
        b.set_ttt(NO_TAG);
        self.next_stat_sn(&mut b);
        self.send(&Pdu::new(b, emit_text(&resp)));
    }

    /// Logout: reason 0 closes the session (every connection of it), 1 and
    /// 2 close the connection named by CID, which may be another connection
    /// of the session (then this one goes on).
    fn handle_logout(&mut self, p: Pdu) {
        if !self.accept_cmd_sn(&p.bhs) {
            return;
        }
        let reason = LogoutRequest::new_unchecked_view(p.bhs).reason();
        let cid = p.bhs.cid();
        let mut response = 0;
        let mut close_self = true;
        if let Some(sh) = &self.shared {
            let all = sessions();
            let same = |e: &SessionEntry| Arc::ptr_eq(&e.shared, sh);
            if reason == 0 {
                for (id, e) in all.iter() {
                    if same(e) && *id != self.id {
                        e.kill.store(true, Ordering::Release);
                    }
                }
            } else if cid != self.cid {
                close_self = false;
                let mut found = false;
                for (_, e) in all.iter() {
                    if same(e) && e.cid == cid {
                        e.kill.store(true, Ordering::Release);
                        found = true;
                    }
                }
                if !found {
                    response = 1; // CID not found
                }
            }
        }
        let mut b = Bhs::new(op::LOGOUT_RESP, 0x80);
        b.set_itt(p.bhs.itt());
        b.set_response(response);
        self.next_stat_sn(&mut b);
        self.send(&Pdu::new(b, Vec::new()));
        if close_self {
            self.set_state(State::Closing);
        }
    }

    fn handle_tmf(&mut self, p: Pdu) {
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
    fn abort_local(&mut self, scope: AbortScope, w: &Arc<TmfWait>) {
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
    fn drop_pre_aborted(&mut self, itt: u32, sn: u32) -> bool {
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
    fn send_ready_tmfs(&mut self) -> bool {
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
    fn aborted_task_done(&mut self, itt: u32) {
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
    fn abort_tasks(&mut self, lun: Option<u64>) -> Vec<u32> {
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

    fn handle_scsi(&mut self, p: Pdu) {
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
                Some(t) if t.histogram.enabled() => rspdk_thread::now_ns(),
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

    fn respond_check(&mut self, itt: u32, sense: rspdk_scsi::Sense, edtl: u32, _read: bool) {
        let r = ScsiResult::check(sense);
        self.send_response(itt, &r, edtl, 0, 0);
    }

    fn send_r2ts(&mut self, itt: u32) {
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

    fn handle_data_out(&mut self, p: Pdu) {
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
    fn maybe_execute(&mut self, itt: u32) -> bool {
        let ready = self
            .tasks
            .get(&itt)
            .is_some_and(|t| t.received >= t.edtl && t.r2ts.is_empty() && t.unsolicited_left == 0);
        if ready {
            self.execute(itt);
        }
        ready
    }

    fn execute(&mut self, itt: u32) {
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
        let q = self.completions.clone();
        // Stored inline (an `Rc` and the ITT): no allocation.
        let done = rspdk_scsi::Done::new(move |r| q.borrow_mut().push_back((itt, r)));
        match &self.target {
            Some(tg) => {
                let dev = tg.dev.clone();
                dev.execute(lun, &cmd, done);
            }
            None => done.call(ScsiResult::check(rspdk_scsi::Sense::LUN_NOT_SUPPORTED)),
        }
        // The SCSI layer copied what it keeps: the buffers go back.
        let ScsiCommand { cdb, data_out, .. } = cmd;
        rspdk_scsi::bufpool::put(data_out);
        if self.cdb_pool.len() < CDB_POOL_MAX {
            self.cdb_pool.push(cdb);
        }
        self.resume_r2ts();
    }

    /// Sends the R2Ts that waited for [`SOLICIT_BUDGET`], now that some of
    /// it is free.
    fn resume_r2ts(&mut self) {
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
    fn drop_task(&mut self, itt: u32) {
        if let Some(t) = self.tasks.remove(&itt) {
            self.solicited -= t.solicited as usize;
            self.ttt_to_itt.retain(|_, i| *i != itt);
            self.resume_r2ts();
        }
    }

    fn drain_completions(&mut self) -> bool {
        let mut busy = false;
        loop {
            let next = self.completions.borrow_mut().pop_front();
            let Some((itt, r)) = next else {
                break;
            };
            busy = true;
            let Some(t) = self.tasks.remove(&itt) else {
                continue;
            };
            self.running = self.running.saturating_sub(1);
            if t.start_ns != 0 {
                if let Some(tg) = self.target.as_ref().filter(|tg| tg.histogram.enabled()) {
                    tg.histogram
                        .tally(rspdk_thread::now_ns().saturating_sub(t.start_ns));
                }
            }
            if t.aborted {
                self.aborted_task_done(itt);
                continue;
            }
            if self.state != State::FullFeature {
                continue;
            }
            self.complete(itt, &t, &r);
            // Data-In written (copied into the output buffer): the read
            // buffer goes back to iobuf as `r` drops.
        }
        busy
    }

    fn complete(&mut self, itt: u32, t: &Task, r: &ScsiResult) {
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

    fn send_response(
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
        let _ = be24;
        self.send(&Pdu::new(b, data));
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.state == State::Login {
            logging_in().retain(|c| c.info.id != self.id);
        }
        STATE_COUNTS[state_index(self.state)].fetch_sub(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn session(exp: u32, queue_depth: u32) -> SessionShared {
        SessionShared {
            tsih: 1,
            discovery: false,
            target: None,
            nexus: "".into(),
            queue_depth,
            params: Params::rfc_defaults(),
            cmd_sn: AtomicU64::new(u64::from(exp) << 32),
            conns: AtomicU32::new(1),
        }
    }

    #[test]
    fn cmd_sn_window_in_order_out_of_order_and_duplicates() {
        let s = session(10, 64);
        assert!(s.accept(10));
        assert_eq!(s.exp_cmd_sn(), 11);
        // 12 and 13 before 11: taken, ExpCmdSN waits for 11.
        assert!(s.accept(12));
        assert!(s.accept(13));
        assert_eq!(s.exp_cmd_sn(), 11);
        assert!(!s.accept(12), "duplicate taken");
        assert!(s.accept(11));
        assert_eq!(s.exp_cmd_sn(), 14);
        // Behind the window, and past MaxCmdSN: dropped.
        assert!(!s.accept(13));
        assert!(!s.accept(14 + 64));
        // Far ahead (beyond the 32 tracked): the window jumps.
        assert!(s.accept(14 + 40));
        assert_eq!(s.exp_cmd_sn(), 14 + 41);
    }

    #[test]
    fn cmd_sn_window_wraps() {
        let s = session(u32::MAX - 1, 8);
        assert!(s.accept(u32::MAX));
        assert!(s.accept(0));
        assert_eq!(s.exp_cmd_sn(), u32::MAX - 1);
        assert!(s.accept(u32::MAX - 1));
        assert_eq!(s.exp_cmd_sn(), 1);
        assert!(!s.accept(u32::MAX));
    }
}
