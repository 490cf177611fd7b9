//! # rspdk_iscsi — the iSCSI target (SPDK: lib/iscsi, RFC 7143)
//!
//! - [`pdu`]: PDUs as typed views ([`pdu::Bhs`]) with parse/emit and CRC32C
//!   digests; [`text`]: `key=value` text and login key negotiation.
//! - [`target`]: options, portal groups (listening sockets), initiator
//!   groups (names and netmasks), target nodes (a [`rspdk_scsi::ScsiDev`]
//!   with LUNs backed by bdevs).
//! - [`conn`]: connections. [`conn::ConnCore`] is the protocol without
//!   I/O (bytes and time in; bytes, SCSI tasks out; task results back in),
//!   split along SPDK's seams: PDU I/O, login and negotiation (security and
//!   operational stages, CHAP, discovery and normal sessions, session
//!   reinstatement, MC/S), the full feature phase dispatcher (NOP, text
//!   with SendTargets, logout), SCSI tasks (immediate/unsolicited data,
//!   R2T/Data-Out with R2TSN/DataSN checks, Data-In with phase collapse and
//!   residuals) and task management. [`Conn`] drives it on a socket.
//! - [`testing`]: a target registered without sockets, an in-memory LUN and
//!   a loopback driver, for the core's unit tests and the `iscsi_conn`
//!   fuzz target.
//! - [`rpc`]: SPDK's `iscsi_*` methods and the save_config section.
//!
//! ## Threads
//! Listening sockets are polled (non-blocking `accept`) by a poller on the
//! app thread; each accepted connection goes, round robin, to one of the
//! `iscsi_poll_group_N` lightweight threads (one per reactor core, pinned
//! there), whose poller reads, handles and writes all of its
//! connections without blocking. SCSI commands run on that thread, on its
//! bdev channels.

pub mod chap;
pub mod conn;
pub mod pdu;
pub mod rpc;
pub mod target;
pub mod testing;
pub mod text;

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rspdk_event::{Subsystem, SubsystemDone};
use rspdk_rpc::RpcRegistry;
use rspdk_thread::{poller_register, thread_create, PollerStatus, ThreadHandle, ThreadOpts};
use serde_json::Value;

pub use conn::{connections, Conn, ConnInfo};

/// Errors of the iSCSI target.
#[derive(Debug, thiserror::Error)]
pub enum IscsiError {
    /// A data segment longer than allowed.
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    DataTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Header digest mismatch (the connection must close).
    #[error("header digest mismatch")]
    HeaderDigest,
    /// Data digest mismatch.
    #[error("data digest mismatch (ITT {itt:#x})")]
    DataDigest {
        /// The PDU's ITT.
        itt: u32,
    },
    /// Malformed text keys.
    #[error("bad text: {0}")]
    Text(String),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No thread to run on.
    #[error("creating poll group thread: {0}")]
    Thread(String),
}

static POLL_GROUPS: Mutex<Vec<ThreadHandle>> = Mutex::new(Vec::new());
static NEXT_GROUP: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static CONNS: RefCell<Vec<Conn>> = const { RefCell::new(Vec::new()) };
}

fn poll_conns() -> PollerStatus {
    let busy = CONNS.with(|c| {
        let mut conns = c.borrow_mut();
        let mut busy = false;
        for conn in conns.iter_mut() {
            busy |= conn.poll();
        }
        conns.retain(|c| !c.is_closed());
        busy
    });
    if busy {
        PollerStatus::Busy
    } else {
        PollerStatus::Idle
    }
}

/// Starts one poll group thread per reactor core (pinned there, as SPDK's
/// iSCSI poll groups are), at most `limit` (0: no limit), so connections,
/// including the connections of one session, spread over the reactors.
fn start_poll_groups(limit: usize) -> Result<(), IscsiError> {
    let mut groups = POLL_GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    let mut last_err = None;
    for core in 0..256u32 {
        if limit > 0 && groups.len() >= limit {
            break;
        }
        let mut mask = rspdk_thread::CpuSet::new();
        mask.insert(core);
        let opts = ThreadOpts {
            cpumask: mask,
            ..ThreadOpts::named(&format!("iscsi_poll_group_{}", groups.len()))
        };
        // Cores without a reactor refuse the thread.
        let h = match thread_create(opts) {
            Ok(h) => h,
            Err(e) => {
                last_err = Some(e.to_string());
                continue;
            }
        };
        h.send_msg(|| {
            if let Ok(p) = poller_register("iscsi_conn_poll", 0, |_| poll_conns()) {
                if let Some(t) = rspdk_thread::get_thread() {
                    t.on_exit(move || {
                        p.unregister();
                        CONNS.with(|c| c.borrow_mut().clear());
                        rspdk_scsi::release_thread_channels();
                    });
                }
            }
        })
        .map_err(|e| IscsiError::Thread(e.to_string()))?;
        groups.push(h);
    }
    if groups.is_empty() {
        return Err(IscsiError::Thread(format!(
            "no reactor took an iSCSI poll group: {}",
            last_err.unwrap_or_default()
        )));
    }
    Ok(())
}

static POLL_GROUP_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Starts the poll group threads and the acceptor poller (on the calling,
/// app, thread) when the first portal group appears, so a target without
/// iSCSI configuration costs nothing.
pub(crate) fn ensure_started() -> Result<(), IscsiError> {
    if ACCEPTOR.with(|a| a.borrow().is_some()) {
        return Ok(());
    }
    let n = POLL_GROUP_COUNT.load(Ordering::Relaxed);
    if POLL_GROUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty()
    {
        start_poll_groups(n)?;
    }
    let p = poller_register("iscsi_accept", 1000, |_| accept_all())
        .map_err(|e| IscsiError::Thread(e.to_string()))?;
    ACCEPTOR.with(|a| *a.borrow_mut() = Some(p));
    Ok(())
}

fn dispatch(sock: std::net::TcpStream, pg_tag: u32) {
    let groups = POLL_GROUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if groups.is_empty() {
        return;
    }
    let g = &groups[NEXT_GROUP.fetch_add(1, Ordering::Relaxed) % groups.len()];
    let _ = g.send_msg(move || match Conn::new(sock, pg_tag) {
        Ok(c) => CONNS.with(|cs| cs.borrow_mut().push(c)),
        Err(e) => tracing::warn!(error = %e, "dropping new iSCSI connection"),
    });
}

type ListenerList = Vec<(u32, std::sync::Arc<std::net::TcpListener>)>;

thread_local! {
    /// The acceptor's list of listeners, reused on every poll (every
    /// millisecond): no allocation while idle.
    static LISTENERS: std::cell::RefCell<ListenerList> = const { std::cell::RefCell::new(Vec::new()) };
}

fn accept_all() -> PollerStatus {
    let mut listeners = LISTENERS.with(|l| std::mem::take(&mut *l.borrow_mut()));
    target::with_registry(|r| {
        listeners.extend(
            r.portal_groups
                .values()
                .filter(|g| g.started)
                .flat_map(|g| g.listeners.iter().map(move |l| (g.tag, l.clone()))),
        )
    });
    let mut busy = false;
    for (tag, l) in listeners.drain(..) {
        while let Ok((s, peer)) = l.accept() {
            tracing::debug!(%peer, pg = tag, "iSCSI connection accepted");
            busy = true;
            dispatch(s, tag);
        }
    }
    LISTENERS.with(|l| *l.borrow_mut() = listeners);
    if busy {
        PollerStatus::Busy
    } else {
        PollerStatus::Idle
    }
}

/// SPDK's `iscsi` subsystem: depends on `scsi` and `bdev`.
#[derive(Debug, Default)]
pub struct IscsiSubsystem {
    /// Poll group threads to create (0: one per reactor core).
    pub poll_groups: usize,
}

impl Subsystem for IscsiSubsystem {
    fn name(&self) -> &str {
        "iscsi"
    }

    fn depends_on(&self) -> Vec<String> {
        vec!["bdev".into(), "scsi".into()]
    }

    fn register_rpcs(&self, registry: &RpcRegistry) -> Result<(), rspdk_rpc::Error> {
        // SPDK's log flags of the iSCSI target (`-L`, `log_set_flag`).
        rspdk_event::log::register_log_flag("iscsi", &["rspdk_iscsi"]);
        rspdk_event::log::register_log_flag("scsi", &["rspdk_scsi"]);
        rpc::register_rpcs(registry);
        Ok(())
    }

    fn init(&self, done: SubsystemDone) {
        POLL_GROUP_COUNT.store(self.poll_groups, Ordering::Relaxed);
        done.ok()
    }

    fn fini(&self, done: SubsystemDone) {
        ACCEPTOR.with(|a| {
            if let Some(p) = a.borrow_mut().take() {
                p.unregister();
            }
        });
        let targets = target::with_registry(|r| {
            r.portal_groups.clear();
            std::mem::take(&mut r.targets)
        });
        for t in targets.values() {
            conn::kill_target_sessions(&t.name);
            t.dev.close();
        }
        // Each poll group drops its connections and bdev channels, so the
        // bdev subsystem (finished next) can unregister its bdevs.
        let groups = std::mem::take(&mut *POLL_GROUPS.lock().unwrap_or_else(|e| e.into_inner()));
        if groups.is_empty() {
            return done.ok();
        }
        let left = std::sync::Arc::new(AtomicUsize::new(groups.len()));
        let done = std::sync::Arc::new(Mutex::new(Some(done)));
        for g in groups {
            let left = left.clone();
            let done = done.clone();
            let finish = move || {
                if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    if let Some(d) = done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        d.ok();
                    }
                }
            };
            let f2 = finish.clone();
            if g.send_msg(move || {
                CONNS.with(|c| c.borrow_mut().clear());
                rspdk_scsi::release_thread_channels();
                f2();
            })
            .is_err()
            {
                finish();
            }
        }
    }

    fn write_config_json(&self) -> Option<Vec<Value>> {
        Some(rpc::config_json())
    }
}

thread_local! {
    static ACCEPTOR: RefCell<Option<rspdk_thread::Poller>> = const { RefCell::new(None) };
}

/// SPDK's `scsi` subsystem (no config of its own).
#[derive(Debug, Default)]
pub struct ScsiSubsystem;

impl Subsystem for ScsiSubsystem {
    fn name(&self) -> &str {
        "scsi"
    }
}
