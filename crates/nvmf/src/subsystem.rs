//! Subsystems, their namespaces and controllers (SPDK:
//! `lib/nvmf/subsystem.c`, `struct spdk_nvmf_subsystem`, `spdk_nvmf_ns`,
//! `spdk_nvmf_ctrlr`), listen addresses, and the UUID / NGUID / EUI64
//! helpers of namespace identifiers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rspdk_bdev::BdevDesc;
use rspdk_thread::ThreadHandle;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{NvmfError, Result};

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
    pub(crate) next_cntlid: AtomicU16,
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
