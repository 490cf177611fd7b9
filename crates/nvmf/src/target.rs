//! The target's state (SPDK: `struct spdk_nvmf_tgt`, `lib/nvmf/nvmf.c`):
//! named targets with their transport options ([`crate::transport`]),
//! subsystems ([`crate::subsystem`]), referrals, queue pairs and poll
//! groups.
//!
//! Configuration changes (RPCs) run on the app thread and take the target
//! lock; the I/O path never does: connections cache what they need and
//! notice changes through a generation counter per subsystem.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use rspdk_bdev::{bdev_open, BdevEvent};
use rspdk_thread::{ThreadHandle, ThreadOpts};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{NvmfError, Result};
pub use crate::subsystem::{
    lock, parse_hex, parse_uuid, uuid_string, Controller, ListenAddress, Namespace, Subsystem,
};
pub use crate::transport::{TransportOpts, ONCS_NAMES};

/// The well-known discovery subsystem NQN.
pub use rspdk_nvme::DISCOVERY_NQN;

/// Discovery log generation counter, bumped on every change.
pub static DISCOVERY_GENCTR: AtomicU64 = AtomicU64::new(1);

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
