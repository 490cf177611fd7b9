//! The target's state (SPDK: `struct spdk_nvmf_tgt`): the TCP transport's
//! options, subsystems with their namespaces, hosts and listeners,
//! controllers, the listening sockets and the poll groups.
//!
//! Configuration changes (RPCs) run on the app thread and take the target
//! lock; the I/O path never does: connections cache what they need and
//! notice changes through a generation counter per subsystem.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use rspdk_bdev::{bdev_open, BdevDesc, BdevEvent};
use rspdk_nvme::spec::oncs;
use rspdk_thread::{ThreadHandle, ThreadOpts};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{NvmfError, Result};

/// The well-known discovery subsystem NQN.
pub use rspdk_nvme::DISCOVERY_NQN;

/// Discovery log generation counter, bumped on every change.
pub static DISCOVERY_GENCTR: AtomicU64 = AtomicU64::new(1);

/// Options of the TCP transport (SPDK: `struct spdk_nvmf_transport_opts`,
/// `nvmf_create_transport` params).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportOpts {
    /// Transport type: `TCP`.
    pub trtype: String,
    /// Most outstanding commands per queue pair.
    #[serde(default = "d_qd")]
    pub max_queue_depth: u32,
    /// Most I/O queue pairs per controller.
    #[serde(default = "d_qpairs")]
    pub max_io_qpairs_per_ctrlr: u32,
    /// Most in-capsule data bytes of an I/O command.
    #[serde(default = "d_icd")]
    pub in_capsule_data_size: u32,
    /// Largest transfer of one command.
    #[serde(default = "d_io")]
    pub max_io_size: u32,
    /// Transfer unit of SPDK's shared buffer pool (deprecated in SPDK in
    /// favour of `iobuf_set_options`). rspdk gives each command one
    /// contiguous buffer of up to `max_io_size`, so it only has to be a
    /// sane size; a value other than the default is logged as having no
    /// effect.
    #[serde(default = "d_io")]
    pub io_unit_size: u32,
    /// Most outstanding admin commands.
    #[serde(default = "d_qd")]
    pub max_aq_depth: u32,
    /// SPDK's shared data buffer count (deprecated: `iobuf_set_options`).
    /// rspdk's queue pairs own their buffers, sized by the queue depth; a
    /// value other than the default is logged as having no effect.
    #[serde(default = "d_bufs")]
    pub num_shared_buffers: u32,
    /// Per-poll-group buffer cache (deprecated: `iobuf_small_cache_size`);
    /// as `num_shared_buffers`.
    #[serde(default = "d_cache")]
    pub buf_cache_size: u32,
    /// Per-poll-group small iobuf cache; as `num_shared_buffers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iobuf_small_cache_size: Option<u32>,
    /// Per-poll-group large iobuf cache; as `num_shared_buffers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iobuf_large_cache_size: Option<u32>,
    /// DIF insert/strip: not supported, must be false.
    #[serde(default)]
    pub dif_insert_or_strip: bool,
    /// Send C2HData with the SUCCESS flag (no response capsule) when the
    /// host disabled SQ flow control.
    #[serde(default = "d_true")]
    pub c2h_success: bool,
    /// SO_PRIORITY of every accepted connection's socket (0..=6 without
    /// CAP_NET_ADMIN, as SPDK's TCP transport allows 0..=6).
    #[serde(default)]
    pub sock_priority: u32,
    /// Abort timeout, seconds (SPDK: how long an Abort waits for the
    /// command it aborts). Must be at least 1.
    #[serde(default = "d_abort")]
    pub abort_timeout_sec: u32,
    /// Zero-copy bdev I/O: not supported, must be false.
    #[serde(default)]
    pub zcopy: bool,
    /// RDMA only: must be 0 on TCP.
    #[serde(default)]
    pub ack_timeout: u32,
    /// RDMA only: must be 0 on TCP.
    #[serde(default)]
    pub data_wr_pool_size: u32,
    /// Control messages per poll group (TCP). rspdk's control PDUs are
    /// built in each connection's own buffers, so only SPDK's default (32)
    /// is accepted.
    #[serde(default = "d_control_msg_num")]
    pub control_msg_num: u32,
    /// Keep Alive Support granularity in 100 ms units (Identify Controller
    /// KAS); a host's KATO is rounded up to a multiple of it.
    #[serde(default = "d_kas")]
    pub kas: u16,
    /// The smallest keep-alive timeout (ms) a host may ask for; smaller
    /// non-zero KATOs are raised to it.
    #[serde(default = "d_min_kato")]
    pub min_kato: u32,
    /// Optional NVM commands to hide from hosts (SPDK's names: compare,
    /// write_unc, dsm, write_zeroes, set_features_save, reservations,
    /// timestamp, copy): cleared in Identify Controller ONCS, and the
    /// commands answer Invalid Opcode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_oncs: Option<Vec<String>>,
    /// Fused operations to hide (SPDK's name: compare_and_write). rspdk
    /// reports no fused operation (FUSES 0), so any valid list is what it
    /// already does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_fuses: Option<Vec<String>>,
    /// rspdk never forwards unrecognized I/O opcodes or Identify Namespace
    /// to a bdev, so both values describe its behaviour: true is recorded.
    #[serde(default)]
    pub disable_command_passthru: bool,
    /// How often (us) the acceptor polls the listeners in poll mode.
    #[serde(default = "d_acceptor_poll_rate")]
    pub acceptor_poll_rate: u32,
    /// RDMA only (SRQ): must be false on TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_srq: bool,
    /// RDMA only: refused on TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_cqe: Option<u32>,
    /// RDMA only: refused on TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_srq_depth: Option<u32>,
    /// RDMA only: refused on TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptor_backlog: Option<u32>,
    /// RDMA only: must be false on TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_wr_batching: bool,
    /// vfio-user only: must be false on TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_mappable_bar0: bool,
    /// vfio-user only: must be false on TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_adaptive_irq: bool,
    /// vfio-user only: must be false on TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_shadow_doorbells: bool,
    /// The target to create the transport on (the default one if
    /// omitted).
    #[serde(default, skip_serializing)]
    pub tgt_name: Option<String>,
}

fn d_control_msg_num() -> u32 {
    32
}
fn d_kas() -> u16 {
    100
}
fn d_min_kato() -> u32 {
    10_000
}
fn d_acceptor_poll_rate() -> u32 {
    10_000
}

/// ONCS bits of SPDK's `masked_oncs` names (NVMe base spec, Identify
/// Controller ONCS).
pub const ONCS_NAMES: [(&str, u16); 8] = [
    ("compare", oncs::COMPARE),
    ("write_unc", oncs::WRITE_UNCORRECTABLE),
    ("dsm", oncs::DSM),
    ("write_zeroes", oncs::WRITE_ZEROES),
    ("set_features_save", oncs::SAVE_SELECT),
    ("reservations", oncs::RESERVATIONS),
    ("timestamp", oncs::TIMESTAMP),
    ("copy", oncs::COPY),
];

fn d_qd() -> u32 {
    128
}
fn d_qpairs() -> u32 {
    127
}
fn d_icd() -> u32 {
    4096
}
fn d_io() -> u32 {
    131072
}
fn d_bufs() -> u32 {
    511
}
fn d_cache() -> u32 {
    32
}
fn d_true() -> bool {
    true
}
fn d_abort() -> u32 {
    1
}

impl TransportOpts {
    /// Checks the options, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(NvmfError::param(format!(
                "trtype '{}': only TCP is supported",
                self.trtype
            )));
        }
        if self.max_queue_depth < 2 || self.max_queue_depth > 65535 {
            return Err(NvmfError::param(format!(
                "max_queue_depth {} must be in 2..=65535",
                self.max_queue_depth
            )));
        }
        if self.max_aq_depth < 2 || self.max_aq_depth > 4096 {
            return Err(NvmfError::param(format!(
                "max_aq_depth {} must be in 2..=4096",
                self.max_aq_depth
            )));
        }
        if self.max_io_size < 4096
            || self.max_io_size > (8 << 20)
            || !self.max_io_size.is_power_of_two()
        {
            return Err(NvmfError::param(format!(
                "max_io_size {} must be a power of two in 4096..=8 MiB",
                self.max_io_size
            )));
        }
        if self.in_capsule_data_size % 16 != 0 || self.in_capsule_data_size > 131072 {
            return Err(NvmfError::param(format!(
                "in_capsule_data_size {} must be a multiple of 16, at most 131072",
                self.in_capsule_data_size
            )));
        }
        if self.max_io_qpairs_per_ctrlr == 0 || self.max_io_qpairs_per_ctrlr > 65534 {
            return Err(NvmfError::param(format!(
                "max_io_qpairs_per_ctrlr {} must be in 1..=65534",
                self.max_io_qpairs_per_ctrlr
            )));
        }
        if self.dif_insert_or_strip {
            return Err(NvmfError::param(
                "dif_insert_or_strip: DIF insert/strip is not supported by rspdk's TCP transport; omit it or pass false",
            ));
        }
        if self.zcopy {
            return Err(NvmfError::param(
                "zcopy: zero-copy bdev I/O is not supported by rspdk's TCP transport (its data already moves straight between the socket and the bdev's buffer); omit -z",
            ));
        }
        if self.io_unit_size < 512 || !self.io_unit_size.is_power_of_two() {
            return Err(NvmfError::param(format!(
                "io_unit_size {} must be a power of two of at least 512",
                self.io_unit_size
            )));
        }
        if self.sock_priority > 6 {
            return Err(NvmfError::param(format!(
                "sock_priority {} must be in 0..=6",
                self.sock_priority
            )));
        }
        if self.abort_timeout_sec == 0 {
            return Err(NvmfError::param("abort_timeout_sec must be at least 1"));
        }
        if self.kas == 0 {
            return Err(NvmfError::param(
                "kas must be at least 1 (units of 100 ms; SPDK's default is 100)",
            ));
        }
        if self.acceptor_poll_rate == 0 || self.acceptor_poll_rate > 10_000_000 {
            return Err(NvmfError::param(format!(
                "acceptor_poll_rate {} us must be in 1..=10000000",
                self.acceptor_poll_rate
            )));
        }
        if self.control_msg_num != d_control_msg_num() {
            return Err(NvmfError::param(format!(
                "control_msg_num {}: rspdk's TCP transport has no control message pool (each connection builds its control PDUs in its own buffers); omit it or pass 32",
                self.control_msg_num
            )));
        }
        let rdma_only = [
            ("no_srq", self.no_srq),
            ("num_cqe", self.num_cqe.is_some()),
            ("max_srq_depth", self.max_srq_depth.is_some()),
            ("acceptor_backlog", self.acceptor_backlog.is_some()),
            ("no_wr_batching", self.no_wr_batching),
            ("ack_timeout", self.ack_timeout != 0),
            ("data_wr_pool_size", self.data_wr_pool_size != 0),
        ];
        if let Some((name, _)) = rdma_only.iter().find(|(_, set)| *set) {
            return Err(NvmfError::param(format!(
                "{name} applies to the RDMA transport only and is not supported on TCP; omit it"
            )));
        }
        let vfio_user_only = [
            ("disable_mappable_bar0", self.disable_mappable_bar0),
            ("disable_adaptive_irq", self.disable_adaptive_irq),
            ("disable_shadow_doorbells", self.disable_shadow_doorbells),
        ];
        if let Some((name, _)) = vfio_user_only.iter().find(|(_, set)| *set) {
            return Err(NvmfError::param(format!(
                "{name} applies to the VFIO-USER transport only and is not supported on TCP; omit it"
            )));
        }
        if let Some(m) = &self.masked_oncs {
            for n in m {
                if !ONCS_NAMES.iter().any(|(k, _)| k == n) {
                    return Err(NvmfError::param(format!(
                        "masked_oncs: unknown feature '{n}' (known: compare, write_unc, dsm, write_zeroes, set_features_save, reservations, timestamp, copy)"
                    )));
                }
            }
        }
        if let Some(m) = &self.masked_fuses {
            if let Some(n) = m.iter().find(|n| *n != "compare_and_write") {
                return Err(NvmfError::param(format!(
                    "masked_fuses: unknown fused operation '{n}' (known: compare_and_write)"
                )));
            }
        }
        Ok(())
    }

    /// Whether `masked_fuses` hides Compare and Write.
    pub fn fuses_masked(&self) -> bool {
        self.masked_fuses.as_ref().is_some_and(|m| !m.is_empty())
    }

    /// The keep-alive timeout (ms) a controller gets for the KATO `asked`
    /// in its Connect: 0 stays 0 (no keep alive), anything else is raised
    /// to `min_kato` and rounded up to a multiple of the KAS granularity.
    pub fn effective_kato(&self, asked: u32) -> u32 {
        if asked == 0 {
            return 0;
        }
        let gran = u32::from(self.kas.max(1)) * 100;
        asked.max(self.min_kato).div_ceil(gran).saturating_mul(gran)
    }

    /// The ONCS bits `masked_oncs` hides.
    pub fn oncs_mask(&self) -> u16 {
        self.masked_oncs.iter().flatten().fold(0, |m, n| {
            m | ONCS_NAMES
                .iter()
                .find(|(k, _)| k == n)
                .map_or(0, |(_, b)| *b)
        })
    }

    /// Options that rspdk accepts for SPDK compatibility but whose buffer
    /// pools it does not have: each non-default value, named for a log
    /// warning (accepted, never silently).
    pub fn no_effect(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.io_unit_size != d_io() {
            v.push(format!("io_unit_size {}", self.io_unit_size));
        }
        if self.num_shared_buffers != d_bufs() {
            v.push(format!("num_shared_buffers {}", self.num_shared_buffers));
        }
        if self.buf_cache_size != d_cache() {
            v.push(format!("buf_cache_size {}", self.buf_cache_size));
        }
        if let Some(n) = self.iobuf_small_cache_size {
            v.push(format!("iobuf_small_cache_size {n}"));
        }
        if let Some(n) = self.iobuf_large_cache_size {
            v.push(format!("iobuf_large_cache_size {n}"));
        }
        v
    }
}

/// A listen address (SPDK: `struct spdk_nvme_transport_id` as the RPCs
/// spell it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenAddress {
    /// `TCP`.
    pub trtype: String,
    /// `IPv4` or `IPv6`.
    #[serde(default = "d_ipv4")]
    pub adrfam: String,
    /// Address.
    pub traddr: String,
    /// Port.
    pub trsvcid: String,
}

fn d_ipv4() -> String {
    "IPv4".to_string()
}

impl ListenAddress {
    /// The socket address, checked.
    pub fn socket_addr(&self) -> Result<SocketAddr> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(NvmfError::param(format!(
                "listen_address.trtype '{}': only TCP is supported",
                self.trtype
            )));
        }
        let ip: std::net::IpAddr = self.traddr.parse().map_err(|_| {
            NvmfError::param(format!(
                "listen_address.traddr '{}' is not an IP address",
                self.traddr
            ))
        })?;
        let port: u16 = self.trsvcid.parse().map_err(|_| {
            NvmfError::param(format!(
                "listen_address.trsvcid '{}' is not a port",
                self.trsvcid
            ))
        })?;
        let fam_ok = match self.adrfam.to_ascii_lowercase().as_str() {
            "ipv4" => ip.is_ipv4(),
            "ipv6" => ip.is_ipv6(),
            _ => false,
        };
        if !fam_ok {
            return Err(NvmfError::param(format!(
                "listen_address.adrfam '{}' does not match traddr '{}'",
                self.adrfam, self.traddr
            )));
        }
        Ok(SocketAddr::new(ip, port))
    }

    /// SPDK's normalised form (upper-case trtype, `IPv4`/`IPv6`).
    pub fn normalized(&self) -> ListenAddress {
        ListenAddress {
            trtype: "TCP".into(),
            adrfam: if self.adrfam.eq_ignore_ascii_case("ipv6") {
                "IPv6".into()
            } else {
                "IPv4".into()
            },
            traddr: self.traddr.clone(),
            trsvcid: self.trsvcid.clone(),
        }
    }
}

/// A namespace: a bdev exported under an NSID.
pub struct Namespace {
    /// Namespace ID.
    pub nsid: u32,
    /// The bdev's name.
    pub bdev_name: String,
    /// UUID (16 bytes).
    pub uuid: [u8; 16],
    /// NGUID (16 bytes).
    pub nguid: [u8; 16],
    /// EUI64.
    pub eui64: [u8; 8],
    /// The open bdev, shared with the connections.
    pub desc: Arc<BdevDesc>,
    /// Visible to every host allowed on the subsystem (SPDK: the
    /// namespace was added without `no_auto_visible`).
    pub auto_visible: bool,
    /// With `auto_visible` off, the hosts that see the namespace
    /// (`nvmf_ns_add_host`), in the order added.
    pub hosts: Mutex<Vec<String>>,
}

impl Namespace {
    /// True if a controller of `hostnqn` sees this namespace (active in
    /// its Identify lists, open to its I/O).
    pub fn visible_to(&self, hostnqn: &str) -> bool {
        self.auto_visible || lock(&self.hosts).iter().any(|h| h == hostnqn)
    }
}

/// A controller (SPDK: `struct spdk_nvmf_ctrlr`): made by an admin queue
/// Connect, joined by I/O queue Connects with its ID.
pub struct Controller {
    /// Controller ID.
    pub cntlid: u16,
    /// Its subsystem.
    pub subsys: Arc<Subsystem>,
    /// The host's NQN.
    pub hostnqn: String,
    /// The host identifier.
    pub hostid: [u8; 16],
    /// Controller Configuration.
    pub cc: AtomicU32,
    /// Controller Status.
    pub csts: AtomicU32,
    /// Keep Alive Timeout, ms (0: off).
    pub kato_ms: AtomicU32,
    /// I/O queues granted by Set Features (Number of Queues), 0's based.
    pub num_io_queues: AtomicU16,
    /// I/O queue IDs in use (bit per qid, up to 65535 via a lock).
    pub qids: Mutex<Vec<bool>>,
    /// Set when the controller is gone: its queues close.
    pub dead: AtomicBool,
    /// Changed namespaces not yet read through log page 0x04.
    pub changed_ns: Mutex<Vec<u32>>,
    /// A namespace attribute notice is pending (no AER was outstanding).
    pub aen_pending: AtomicBool,
    /// The admin queue's thread and connection id, for AERs.
    pub admin: (ThreadHandle, u64),
    /// Last keep alive (or any admin command), ns.
    pub last_keep_alive: AtomicU64,
    /// Asynchronous Event Configuration (Set Features 0Bh); bit 8:
    /// namespace attribute notices (on at creation, as SPDK).
    pub aec: AtomicU32,
}

impl Controller {
    /// True once CC.EN and CSTS.RDY are set.
    pub fn ready(&self) -> bool {
        self.csts.load(Ordering::Acquire) & 1 != 0
    }
}

/// A subsystem (SPDK: `struct spdk_nvmf_subsystem`).
pub struct Subsystem {
    /// The name of its target.
    pub tgt: String,
    /// NQN.
    pub nqn: String,
    /// True for the discovery subsystem.
    pub discovery: bool,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Most namespaces (0: no limit, NN 1024... here 1024).
    pub max_namespaces: u32,
    /// Lowest controller ID.
    pub min_cntlid: u16,
    /// Highest controller ID.
    pub max_cntlid: u16,
    /// Any host may connect.
    pub allow_any_host: AtomicBool,
    /// The allowed hosts.
    pub hosts: Mutex<Vec<String>>,
    /// Listeners.
    pub listeners: Mutex<Vec<ListenAddress>>,
    /// Namespaces, by NSID.
    pub namespaces: Mutex<BTreeMap<u32, Arc<Namespace>>>,
    /// Bumped on every namespace change.
    pub ns_generation: AtomicU64,
    /// Live controllers.
    pub controllers: Mutex<Vec<Arc<Controller>>>,
    next_cntlid: AtomicU16,
}

/// Locks, shrugging off poisoning (a panicked holder leaves data usable).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Subsystem {
    /// True if `hostnqn` may connect.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host.load(Ordering::Acquire)
            || lock(&self.hosts).iter().any(|h| h == hostnqn)
    }

    /// True if the subsystem listens on `local` (the discovery subsystem
    /// answers on every port).
    pub fn listens_on(&self, local: &SocketAddr) -> bool {
        self.discovery
            || lock(&self.listeners).iter().any(|l| {
                l.socket_addr().is_ok_and(|a| {
                    a.port() == local.port() && (a.ip() == local.ip() || a.ip().is_unspecified())
                })
            })
    }

    /// A new controller ID, cycling in min..=max and skipping live ones.
    pub fn alloc_cntlid(&self) -> Option<u16> {
        let ctrlrs = lock(&self.controllers);
        let span = (self.max_cntlid - self.min_cntlid) as u32 + 1;
        for _ in 0..span {
            let mut id = self.next_cntlid.fetch_add(1, Ordering::Relaxed);
            if id < self.min_cntlid || id > self.max_cntlid {
                self.next_cntlid
                    .store(self.min_cntlid + 1, Ordering::Relaxed);
                id = self.min_cntlid;
            }
            if !ctrlrs.iter().any(|c| c.cntlid == id) {
                return Some(id);
            }
        }
        None
    }

    /// Tells every controller that namespace `nsid` changed (AER).
    pub fn notify_ns_change(&self, nsid: u32) {
        self.notify_ns_change_for(nsid, |_| true);
    }

    /// Tells the controllers for whose host NQN `affected` holds that
    /// namespace `nsid` changed: it goes into their changed namespace
    /// list (log page 04h) and, if they enabled namespace attribute
    /// notices (Set Features 0Bh bit 8), an AER completes.
    pub fn notify_ns_change_for(&self, nsid: u32, affected: impl Fn(&str) -> bool) {
        self.ns_generation.fetch_add(1, Ordering::AcqRel);
        for c in lock(&self.controllers)
            .iter()
            .filter(|c| affected(&c.hostnqn))
        {
            {
                let mut l = lock(&c.changed_ns);
                if !l.contains(&nsid) && l.len() < 1024 {
                    l.push(nsid);
                }
            }
            if c.aec.load(Ordering::Acquire) & (1 << 8) == 0 {
                continue;
            }
            c.aen_pending.store(true, Ordering::Release);
            let id = c.admin.1;
            let _ = c
                .admin
                .0
                .send_msg(move || crate::tcp::poll_group::deliver_aen(id));
        }
    }

    /// The `nvmf_get_subsystems` entry.
    pub fn info_json(&self) -> Value {
        let listen: Vec<Value> = lock(&self.listeners)
            .iter()
            .map(|l| serde_json::to_value(l).unwrap_or(Value::Null))
            .collect();
        let hosts: Vec<Value> = lock(&self.hosts)
            .iter()
            .map(|h| json!({"nqn": h}))
            .collect();
        let mut v = json!({
            "nqn": self.nqn,
            "subtype": if self.discovery { "Discovery" } else { "NVMe" },
            "listen_addresses": listen,
            "allow_any_host": self.allow_any_host.load(Ordering::Acquire),
            "hosts": hosts,
        });
        if !self.discovery {
            let ns: Vec<Value> = lock(&self.namespaces)
                .values()
                .map(|n| {
                    json!({
                        "nsid": n.nsid,
                        "bdev_name": n.bdev_name,
                        "name": n.bdev_name,
                        "nguid": hex_upper(&n.nguid),
                        "eui64": hex_upper(&n.eui64),
                        "uuid": uuid_string(&n.uuid),
                    })
                })
                .collect();
            let m = v.as_object_mut().expect("an object");
            m.insert("serial_number".into(), json!(self.serial));
            m.insert("model_number".into(), json!(self.model));
            m.insert("max_namespaces".into(), json!(self.max_namespaces));
            m.insert("min_cntlid".into(), json!(self.min_cntlid));
            m.insert("max_cntlid".into(), json!(self.max_cntlid));
            m.insert("namespaces".into(), Value::Array(ns));
        }
        v
    }
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// Formats 16 bytes as a UUID string.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parses a UUID string (with or without dashes).
pub fn parse_uuid(s: &str) -> Result<[u8; 16]> {
    parse_hex::<16>(&s.replace('-', ""), "uuid", s)
}

/// Parses `N` bytes of hex (an NGUID or EUI64, dashes allowed).
pub fn parse_hex<const N: usize>(hex: &str, what: &str, orig: &str) -> Result<[u8; N]> {
    let hex = hex.replace('-', "");
    let bad = || NvmfError::param(format!("{what} '{orig}' is not {N} bytes of hex"));
    if hex.len() != 2 * N || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A poll group: one lightweight thread on one reactor, polling its
/// connections (SPDK: `struct spdk_nvmf_poll_group`).
pub struct PollGroupInfo {
    /// Its thread.
    pub thread: ThreadHandle,
    /// Its name.
    pub name: String,
    /// Counters for `nvmf_get_stats`.
    pub stats: Arc<PollGroupStats>,
}

/// Counters of a poll group.
#[derive(Default, Debug)]
pub struct PollGroupStats {
    /// Admin queue pairs ever connected.
    pub admin_qpairs: AtomicU64,
    /// I/O queue pairs ever connected.
    pub io_qpairs: AtomicU64,
    /// Admin queue pairs now.
    pub current_admin_qpairs: AtomicU64,
    /// I/O queue pairs now.
    pub current_io_qpairs: AtomicU64,
    /// Bdev I/O in flight.
    pub pending_bdev_io: AtomicU64,
    /// NVMe commands completed.
    pub completed_nvme_io: AtomicU64,
    /// Connections now (before Connect too).
    pub connections: AtomicUsize,
}

/// Queue pair descriptions for `nvmf_subsystem_get_qpairs`.
#[derive(Debug, Clone)]
pub struct QpairInfo {
    /// Its target's name.
    pub tgt: String,
    /// Subsystem NQN.
    pub nqn: String,
    /// Controller ID.
    pub cntlid: u16,
    /// Queue ID.
    pub qid: u16,
    /// Poll group thread name.
    pub thread: String,
    /// Local address.
    pub local: SocketAddr,
    /// Peer address.
    pub peer: SocketAddr,
}

/// The name of the default NVMe-oF target (SPDK's `nvmf_tgt`), which
/// `tgt_name` names when omitted.
pub const DEFAULT_TGT_NAME: &str = "nvmf_tgt";

/// One NVMe-oF target (SPDK: `struct spdk_nvmf_tgt`): its transport,
/// subsystems (with their listeners) and discovery service. Connections
/// belong to the target whose listener accepted them.
pub struct Tgt {
    /// Its name (`nvmf_create_target`; the default one is `nvmf_tgt`).
    pub name: String,
    /// The TCP transport, once created.
    pub transport: Option<TransportOpts>,
    /// Subsystems in creation order (the discovery subsystem first).
    pub subsystems: Vec<Arc<Subsystem>>,
    /// `nvmf_set_config` (kept as given, written back by save_config).
    pub config: Value,
    /// `nvmf_set_max_subsystems` (0: the default, 1024).
    pub max_subsystems: u32,
    /// `nvmf_set_crdt`: command retry delay times (100 ms units).
    pub crdt: [u16; 3],
    /// `nvmf_discovery_add_referral`: other discovery services (or
    /// subsystems) the discovery log page points hosts to.
    pub referrals: Vec<Referral>,
}

impl Tgt {
    /// An empty target named `name`, with its discovery subsystem.
    pub fn new(name: &str) -> Tgt {
        Tgt {
            name: name.to_string(),
            transport: None,
            subsystems: vec![Arc::new(new_subsystem(
                DISCOVERY_NQN,
                true,
                "",
                "",
                0,
                1,
                0xffef,
                true,
                name,
            ))],
            config: Value::Null,
            max_subsystems: 0,
            crdt: [0; 3],
            referrals: Vec::new(),
        }
    }

    /// Ends the target: its controllers' queues close, its listeners and
    /// namespaces go.
    pub fn shut_down(&mut self) {
        for s in std::mem::take(&mut self.subsystems) {
            for c in lock(&s.controllers).drain(..) {
                c.dead.store(true, Ordering::Release);
            }
            let addrs: Vec<ListenAddress> = lock(&s.listeners).drain(..).collect();
            for a in addrs {
                self.release_listener(&a);
            }
            lock(&s.namespaces).clear();
        }
    }
}

/// Every NVMe-oF target, and what their connections share.
pub struct TargetState {
    /// The targets, the default (`nvmf_tgt`) first.
    pub tgts: Vec<Tgt>,
    /// Poll groups (one per reactor, shared by the targets' connections).
    pub poll_groups: Vec<PollGroupInfo>,
    /// Live queue pairs, by connection id.
    pub qpairs: BTreeMap<u64, QpairInfo>,
    next_pg: usize,
}

impl TargetState {
    /// The target `tgt_name` names (the default one if `None`), or an
    /// error naming it.
    pub fn tgt(&mut self, tgt_name: Option<&str>) -> Result<&mut Tgt> {
        let name = tgt_name.unwrap_or(DEFAULT_TGT_NAME);
        self.tgts
            .iter_mut()
            .find(|t| t.name == name)
            .ok_or_else(|| NvmfError::NotFound {
                kind: "NVMe-oF target",
                name: format!("{name} (nvmf_get_targets lists them)"),
            })
    }

    /// The default target.
    pub fn default_tgt(&mut self) -> &mut Tgt {
        if self.tgts.is_empty() {
            self.tgts.push(Tgt::new(DEFAULT_TGT_NAME));
        }
        &mut self.tgts[0]
    }

    /// `nvmf_create_target`.
    pub fn create_tgt(&mut self, name: &str, max_subsystems: u32) -> Result<()> {
        if name.is_empty() || name.len() > 255 {
            return Err(NvmfError::param(format!(
                "name '{name}' must be 1 to 255 bytes long"
            )));
        }
        if self.tgts.iter().any(|t| t.name == name) {
            return Err(NvmfError::Exists {
                kind: "NVMe-oF target",
                name: name.to_string(),
            });
        }
        let mut t = Tgt::new(name);
        t.max_subsystems = max_subsystems;
        self.tgts.push(t);
        Ok(())
    }

    /// `nvmf_delete_target`: its subsystems, listeners and connections end.
    pub fn delete_tgt(&mut self, name: &str) -> Result<()> {
        if name == DEFAULT_TGT_NAME {
            return Err(NvmfError::param(format!(
                "the default target '{DEFAULT_TGT_NAME}' cannot be deleted (it is the nvmf subsystem's own); delete the targets made by nvmf_create_target"
            )));
        }
        let i = self
            .tgts
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| NvmfError::NotFound {
                kind: "NVMe-oF target",
                name: name.to_string(),
            })?;
        let mut t = self.tgts.remove(i);
        t.shut_down();
        Ok(())
    }
}

/// A discovery referral (SPDK: `struct spdk_nvmf_referral`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    /// Where the referred-to service listens.
    pub address: ListenAddress,
    /// Its NQN (the discovery NQN: another discovery service).
    pub subnqn: String,
    /// Whether a secure channel is required (always false: no TLS yet).
    pub secure_channel: bool,
}

static TARGET: OnceLock<Mutex<TargetState>> = OnceLock::new();

/// The process-wide targets, locked.
pub fn target() -> MutexGuard<'static, TargetState> {
    lock(TARGET.get_or_init(|| {
        Mutex::new(TargetState {
            tgts: vec![Tgt::new(DEFAULT_TGT_NAME)],
            poll_groups: Vec::new(),
            qpairs: BTreeMap::new(),
            next_pg: 0,
        })
    }))
}

#[allow(clippy::too_many_arguments)]
fn new_subsystem(
    nqn: &str,
    discovery: bool,
    serial: &str,
    model: &str,
    max_ns: u32,
    min_cntlid: u16,
    max_cntlid: u16,
    any: bool,
    tgt: &str,
) -> Subsystem {
    Subsystem {
        tgt: tgt.to_string(),
        nqn: nqn.to_string(),
        discovery,
        serial: serial.to_string(),
        model: model.to_string(),
        max_namespaces: max_ns,
        min_cntlid,
        max_cntlid,
        allow_any_host: AtomicBool::new(any),
        hosts: Mutex::new(Vec::new()),
        listeners: Mutex::new(Vec::new()),
        namespaces: Mutex::new(BTreeMap::new()),
        ns_generation: AtomicU64::new(0),
        controllers: Mutex::new(Vec::new()),
        next_cntlid: AtomicU16::new(min_cntlid),
    }
}

/// Checks an NQN (NVMe base spec 4.5: at most 223 bytes, `nqn.yyyy-mm.`
/// reverse domain, or the UUID form).
pub fn validate_nqn(nqn: &str) -> Result<()> {
    if nqn.is_empty() || nqn.len() > 223 {
        return Err(NvmfError::param(format!(
            "nqn '{nqn}' must be 1 to 223 bytes long"
        )));
    }
    let b = nqn.as_bytes();
    let dated = b.len() > 12
        && nqn.starts_with("nqn.")
        && b[4..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..11].iter().all(u8::is_ascii_digit)
        && b[11] == b'.';
    if !dated && !nqn.starts_with("nqn.2014-08.org.nvmexpress:uuid:") {
        return Err(NvmfError::param(format!(
            "nqn '{nqn}' is not of the form nqn.yyyy-mm.reverse.domain:name"
        )));
    }
    Ok(())
}

impl Tgt {
    /// The subsystem named `nqn` (`discovery` names the discovery
    /// subsystem, as in rpc.py).
    pub fn find(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        let nqn = if nqn == "discovery" {
            DISCOVERY_NQN
        } else {
            nqn
        };
        self.subsystems.iter().find(|s| s.nqn == nqn).cloned()
    }

    /// The subsystem named `nqn`, or an error naming it.
    pub fn get(&self, nqn: &str) -> Result<Arc<Subsystem>> {
        self.find(nqn).ok_or_else(|| NvmfError::NotFound {
            kind: "subsystem",
            name: nqn.to_string(),
        })
    }

    /// `nvmf_create_subsystem`.
    #[allow(clippy::too_many_arguments)]
    pub fn create_subsystem(
        &mut self,
        nqn: &str,
        serial: &str,
        model: &str,
        max_ns: u32,
        allow_any_host: bool,
        min_cntlid: u16,
        max_cntlid: u16,
    ) -> Result<()> {
        validate_nqn(nqn)?;
        if self.find(nqn).is_some() {
            return Err(NvmfError::Exists {
                kind: "subsystem",
                name: nqn.to_string(),
            });
        }
        let max = if self.max_subsystems == 0 {
            1024
        } else {
            self.max_subsystems
        };
        if self.subsystems.len() >= max as usize {
            return Err(NvmfError::param(format!(
                "max_subsystems {max} reached (nvmf_set_max_subsystems)"
            )));
        }
        if serial.len() > 20 || !serial.bytes().all(|c| (0x20..0x7f).contains(&c)) {
            return Err(NvmfError::param(format!(
                "serial_number '{serial}' must be at most 20 printable ASCII characters"
            )));
        }
        if model.len() > 40 || !model.bytes().all(|c| (0x20..0x7f).contains(&c)) {
            return Err(NvmfError::param(format!(
                "model_number '{model}' must be at most 40 printable ASCII characters"
            )));
        }
        if min_cntlid == 0 || min_cntlid > max_cntlid || max_cntlid > 0xffef {
            return Err(NvmfError::param(format!(
                "min_cntlid {min_cntlid} / max_cntlid {max_cntlid}: need 1 <= min <= max <= 65519"
            )));
        }
        self.subsystems.push(Arc::new(new_subsystem(
            nqn,
            false,
            serial,
            model,
            max_ns,
            min_cntlid,
            max_cntlid,
            allow_any_host,
            &self.name,
        )));
        Ok(())
    }

    /// `nvmf_delete_subsystem`: its controllers' queues close.
    pub fn delete_subsystem(&mut self, nqn: &str) -> Result<()> {
        let s = self.get(nqn)?;
        if s.discovery {
            return Err(NvmfError::param(
                "the discovery subsystem cannot be deleted",
            ));
        }
        self.subsystems.retain(|x| !Arc::ptr_eq(x, &s));
        for c in lock(&s.controllers).drain(..) {
            c.dead.store(true, Ordering::Release);
        }
        let addrs: Vec<ListenAddress> = lock(&s.listeners).drain(..).collect();
        for a in addrs {
            self.release_listener(&a);
        }
        lock(&s.namespaces).clear();
        Ok(())
    }

    /// `nvmf_subsystem_add_ns`: returns the NSID.
    #[allow(clippy::too_many_arguments)]
    pub fn add_ns(
        &mut self,
        nqn: &str,
        bdev: &str,
        nsid: Option<u32>,
        uuid: Option<[u8; 16]>,
        nguid: Option<[u8; 16]>,
        eui64: Option<[u8; 8]>,
        no_auto_visible: bool,
    ) -> Result<u32> {
        let s = self.get(nqn)?;
        if s.discovery {
            return Err(NvmfError::param(
                "the discovery subsystem has no namespaces",
            ));
        }
        let limit = if s.max_namespaces == 0 {
            1024
        } else {
            s.max_namespaces
        };
        let nsid = {
            let ns = lock(&s.namespaces);
            let id = match nsid {
                Some(0) | None => (1..=limit).find(|i| !ns.contains_key(i)).ok_or_else(|| {
                    NvmfError::param(format!(
                        "subsystem {nqn} has no free NSID (max_namespaces {limit})"
                    ))
                })?,
                Some(i) => i,
            };
            if id > limit {
                return Err(NvmfError::param(format!(
                    "nsid {id} is above max_namespaces {limit} of {nqn}"
                )));
            }
            if ns.contains_key(&id) {
                return Err(NvmfError::Exists {
                    kind: "namespace",
                    name: format!("{nqn} nsid {id}"),
                });
            }
            id
        };
        let (weak_nqn, weak_nsid, tgt) = (nqn.to_string(), nsid, self.name.clone());
        let desc = bdev_open(bdev, true, move |ev| {
            if let BdevEvent::Remove = ev {
                tracing::info!(nqn = %weak_nqn, nsid = weak_nsid, "bdev removed: removing the namespace");
                if let Ok(t) = target().tgt(Some(&tgt)) {
                    let _ = t.remove_ns(&weak_nqn, weak_nsid);
                }
            }
        })?;
        let b = desc.bdev();
        let uuid = uuid
            .or_else(|| {
                let u = *b.props().uuid.as_bytes();
                (u != [0; 16]).then_some(u)
            })
            .unwrap_or_else(|| derive_id(nqn, bdev, nsid));
        let ns = Namespace {
            nsid,
            bdev_name: bdev.to_string(),
            uuid,
            nguid: nguid.unwrap_or(uuid),
            eui64: eui64.unwrap_or([0; 8]),
            desc: Arc::new(desc),
            auto_visible: !no_auto_visible,
            hosts: Mutex::new(Vec::new()),
        };
        lock(&s.namespaces).insert(nsid, Arc::new(ns));
        // A namespace no host sees yet changes nothing for the hosts.
        s.notify_ns_change_for(nsid, |_| !no_auto_visible);
        Ok(nsid)
    }

    /// `nvmf_ns_add_host` (`visible`) and `nvmf_ns_remove_host`: makes
    /// namespace `nsid` of `nqn` visible, or no longer, to `host`'s
    /// controllers, now and future ones. Connected controllers of that host
    /// get the change in their changed namespace list and an AER.
    pub fn ns_set_visible(
        &mut self,
        nqn: &str,
        nsid: u32,
        host: &str,
        visible: bool,
    ) -> Result<()> {
        let s = self.get(nqn)?;
        validate_nqn(host)?;
        let ns = lock(&s.namespaces)
            .get(&nsid)
            .cloned()
            .ok_or_else(|| NvmfError::NotFound {
                kind: "namespace",
                name: format!("{nqn} nsid {nsid}"),
            })?;
        if ns.auto_visible {
            return Err(NvmfError::param(format!(
                "namespace {nsid} of {nqn} is visible to every host: per-host visibility needs a namespace added with no_auto_visible (nvmf_subsystem_add_ns --no-auto-visible)"
            )));
        }
        let changed = {
            let mut h = lock(&ns.hosts);
            let had = h.iter().any(|x| x == host);
            if visible && !had {
                h.push(host.to_string());
            } else if !visible && had {
                h.retain(|x| x != host);
            }
            had != visible
        };
        if changed {
            s.notify_ns_change_for(nsid, |h| h == host);
        }
        Ok(())
    }

    /// `nvmf_subsystem_remove_ns`.
    pub fn remove_ns(&mut self, nqn: &str, nsid: u32) -> Result<()> {
        let s = self.get(nqn)?;
        let Some(ns) = lock(&s.namespaces).remove(&nsid) else {
            return Err(NvmfError::NotFound {
                kind: "namespace",
                name: format!("{nqn} nsid {nsid}"),
            });
        };
        // Only the hosts that saw it notice it going.
        s.notify_ns_change_for(nsid, |h| ns.visible_to(h));
        Ok(())
    }

    /// `nvmf_subsystem_add_listener`: opens the socket unless another
    /// subsystem of this target listens there already (another target's
    /// listener on the same address is refused).
    /// Returns the listener as recorded (port 0 replaced by the bound port).
    pub fn add_listener(&mut self, nqn: &str, addr: &ListenAddress) -> Result<ListenAddress> {
        if self.transport.is_none() {
            return Err(NvmfError::NotFound {
                kind: "transport",
                name: addr.trtype.clone(),
            });
        }
        let s = self.get(nqn)?;
        let sa = addr.socket_addr()?;
        let mut addr = addr.normalized();
        if lock(&s.listeners).contains(&addr) {
            return Err(NvmfError::Exists {
                kind: "listener",
                name: format!("{}:{} on {nqn}", addr.traddr, addr.trsvcid),
            });
        }
        let period_us = self
            .transport
            .as_ref()
            .map_or(10_000, |o| u64::from(o.acceptor_poll_rate));
        let bound = crate::tcp::listen(sa, period_us, &self.name)?;
        // Port 0: record the port the kernel chose, so that the listener
        // is reported, saved and removed under its real address.
        addr.trsvcid = bound.port().to_string();
        lock(&s.listeners).push(addr.clone());
        Ok(addr)
    }

    /// `nvmf_subsystem_remove_listener`.
    pub fn remove_listener(&mut self, nqn: &str, addr: &ListenAddress) -> Result<()> {
        let s = self.get(nqn)?;
        // The same checks as adding: a garbage trtype, adrfam or address
        // is an error that says so, not "listener not found".
        addr.socket_addr()?;
        let addr = addr.normalized();
        let mut l = lock(&s.listeners);
        let n = l.len();
        l.retain(|x| *x != addr);
        if l.len() == n {
            return Err(NvmfError::NotFound {
                kind: "listener",
                name: format!("{}:{} on {nqn}", addr.traddr, addr.trsvcid),
            });
        }
        drop(l);
        self.release_listener(&addr);
        Ok(())
    }

    fn release_listener(&mut self, addr: &ListenAddress) {
        if let Ok(sa) = addr.socket_addr() {
            crate::tcp::unlisten(sa);
        }
    }
}

impl TargetState {
    /// The next poll group, round robin (creating them on first use).
    pub fn next_poll_group(&mut self) -> Option<(ThreadHandle, Arc<PollGroupStats>, String)> {
        if self.poll_groups.is_empty() {
            self.create_poll_groups();
        }
        if self.poll_groups.is_empty() {
            return None;
        }
        let i = self.next_pg % self.poll_groups.len();
        self.next_pg += 1;
        let pg = &self.poll_groups[i];
        Some((pg.thread.clone(), pg.stats.clone(), pg.name.clone()))
    }

    /// One poll group per reactor core.
    fn create_poll_groups(&mut self) {
        // nvmf_set_config's poll_groups_mask (checked when set) limits the
        // cores that get a poll group.
        let allowed = self
            .default_tgt()
            .config
            .get("poll_groups_mask")
            .and_then(Value::as_str)
            .and_then(|m| rspdk_thread::CpuSet::parse(m).ok());
        for core in 0..256u32 {
            if allowed.as_ref().is_some_and(|a| !a.contains(core)) {
                continue;
            }
            let mut mask = rspdk_thread::CpuSet::new();
            mask.insert(core);
            let name = format!("nvmf_tgt_poll_group_{:03}", self.poll_groups.len());
            let opts = ThreadOpts {
                cpumask: mask,
                ..ThreadOpts::named(&name)
            };
            if let Ok(t) = rspdk_thread::thread_create(opts) {
                let stats = Arc::new(PollGroupStats::default());
                let st = stats.clone();
                let _ = t.send_msg(move || crate::tcp::poll_group::poll_group_init(st));
                self.poll_groups.push(PollGroupInfo {
                    thread: t,
                    name,
                    stats,
                });
            }
        }
        if self.poll_groups.is_empty() {
            tracing::error!("nvmf: no reactor accepted a poll group thread");
        }
    }
}

/// A stable ID from the subsystem, bdev and NSID (FNV-1a), for namespaces
/// whose bdev has no UUID.
fn derive_id(nqn: &str, bdev: &str, nsid: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (half, seed) in [(0usize, 0xcbf29ce484222325u64), (8, 0x84222325cbf29ce4)] {
        let mut h = seed;
        for b in nqn.bytes().chain(bdev.bytes()).chain(nsid.to_le_bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        out[half..half + 8].copy_from_slice(&h.to_be_bytes());
    }
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}
