//! Sessions and the connection tables the RPCs read
//! (`iscsi_get_connections`, `iscsi_get_stats`,
//! `iscsi_target_node_request_logout`).

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::core::Mailbox;
use super::core::State;
use crate::target::TargetNode;
use crate::text::Params;

/// Connections by state, for `iscsi_get_stats`: in login (SPDK's
/// "invalid"), in full feature phase ("running"), closing ("exiting"),
/// closed but not yet dropped ("exited").
pub(super) static STATE_COUNTS: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];

/// Connections by state: `[invalid, running, exiting, exited]`.
pub fn stats() -> [u32; 4] {
    std::array::from_fn(|i| STATE_COUNTS[i].load(Ordering::Relaxed))
}

pub(super) fn state_index(s: State) -> usize {
    match s {
        State::Login => 0,
        State::FullFeature => 1,
        State::Closing => 2,
        State::Closed => 3,
    }
}

/// A connection still logging in.
pub(super) struct LoginEntry {
    pub(super) info: ConnInfo,
    pub(super) pg_tag: u32,
    pub(super) kill: Arc<AtomicBool>,
}

/// Connections still logging in, for `iscsi_get_connections` and
/// `iscsi_target_node_request_logout`.
pub(super) static LOGGING_IN: Mutex<Vec<LoginEntry>> = Mutex::new(Vec::new());

pub(super) fn logging_in() -> std::sync::MutexGuard<'static, Vec<LoginEntry>> {
    LOGGING_IN.lock().unwrap_or_else(|e| e.into_inner())
}
pub(super) static NEXT_TSIH: AtomicU16 = AtomicU16::new(1);

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

pub(super) struct SessionEntry {
    /// Asks the connection to request a logout (Async Message).
    pub(super) logout: Arc<AtomicBool>,
    pub(super) pg_tag: u32,
    pub(super) initiator: String,
    pub(super) isid: [u8; 6],
    pub(super) target: String,
    pub(super) cid: u16,
    pub(super) kill: Arc<AtomicBool>,
    pub(super) mailbox: Arc<Mailbox>,
    pub(super) info: Option<ConnInfo>,
    pub(super) shared: Arc<SessionShared>,
}

/// What the connections of one session share (MC/S). They may live on
/// different poll group threads, so the CmdSN window is one atomic word;
/// the rest is fixed when the leading connection logs in.
pub(super) struct SessionShared {
    pub(super) tsih: u16,
    pub(super) discovery: bool,
    pub(super) target: Option<Arc<TargetNode>>,
    pub(super) nexus: Arc<str>,
    pub(super) queue_depth: u32,
    /// Session-wide keys negotiated by the leading connection.
    pub(super) params: Params,
    /// ExpCmdSN in the high 32 bits; bit i of the low 32 says CmdSN
    /// ExpCmdSN + 1 + i has arrived already (commands of several
    /// connections can arrive out of order).
    pub(super) cmd_sn: AtomicU64,
    /// Connections in full feature phase.
    pub(super) conns: AtomicU32,
}

impl SessionShared {
    pub(super) fn exp_cmd_sn(&self) -> u32 {
        (self.cmd_sn.load(Ordering::Acquire) >> 32) as u32
    }

    /// Takes CmdSN `sn` of a non-immediate command: true if it is new and
    /// inside the window (ExpCmdSN..=MaxCmdSN), false for a duplicate or
    /// one outside it (the command is then dropped, RFC 7143 3.2.2.1).
    pub(super) fn accept(&self, sn: u32) -> bool {
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

pub(super) static SESSIONS: Mutex<Vec<(u64, SessionEntry)>> = Mutex::new(Vec::new());

pub(super) fn sessions() -> std::sync::MutexGuard<'static, Vec<(u64, SessionEntry)>> {
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
