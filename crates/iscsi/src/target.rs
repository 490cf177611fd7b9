//! The target's configuration: global options, portal groups (listening
//! sockets), initiator groups, target nodes, and their access checks.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};

use rspdk_scsi::ScsiDev;
use serde::{Deserialize, Serialize};

use crate::text::TargetLimits;
use crate::IscsiError;

/// `iscsi_set_options` parameters (SPDK's names and defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Prefix of target names given without one.
    pub node_base: String,
    /// CHAP secrets file (accepted, unused).
    pub auth_file: Option<String>,
    /// NOP-In timeout in seconds.
    pub nop_timeout: u32,
    /// NOP-In interval in seconds.
    pub nop_in_interval: u32,
    /// Discovery sessions need no CHAP.
    pub disable_chap: bool,
    /// Discovery sessions need CHAP.
    pub require_chap: bool,
    /// Discovery sessions need mutual CHAP.
    pub mutual_chap: bool,
    /// Auth group for discovery sessions.
    pub chap_group: i32,
    /// Largest number of sessions.
    pub max_sessions: u32,
    /// Largest queue depth of a session.
    pub max_queue_depth: u32,
    /// MaxConnections we offer.
    pub max_connections_per_session: u32,
    /// DefaultTime2Wait we offer.
    pub default_time2wait: u32,
    /// DefaultTime2Retain we offer.
    pub default_time2retain: u32,
    /// FirstBurstLength we offer.
    pub first_burst_length: u32,
    /// ImmediateData we offer.
    pub immediate_data: bool,
    /// ErrorRecoveryLevel we offer (0 only).
    pub error_recovery_level: u32,
    /// Accept a second session with the same ISID.
    pub allow_duplicated_isid: bool,
    /// MaxOutstandingR2T we offer.
    pub max_r2t_per_connection: u32,
    /// Accepted for compatibility.
    pub pdu_pool_size: Option<u32>,
    /// Accepted for compatibility.
    pub immediate_data_pool_size: Option<u32>,
    /// Accepted for compatibility.
    pub data_out_pool_size: Option<u32>,
    /// Accepted for compatibility.
    pub max_large_datain_per_connection: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node_base: "iqn.2016-06.io.spdk".into(),
            auth_file: None,
            nop_timeout: 60,
            nop_in_interval: 30,
            disable_chap: false,
            require_chap: false,
            mutual_chap: false,
            chap_group: 0,
            max_sessions: 128,
            max_queue_depth: 64,
            max_connections_per_session: 2,
            default_time2wait: 2,
            default_time2retain: 20,
            first_burst_length: 8192,
            immediate_data: true,
            error_recovery_level: 0,
            allow_duplicated_isid: false,
            max_r2t_per_connection: 4,
            pdu_pool_size: None,
            immediate_data_pool_size: None,
            data_out_pool_size: None,
            max_large_datain_per_connection: 64,
        }
    }
}

impl Options {
    /// The limits login negotiation uses.
    pub fn limits(&self) -> TargetLimits {
        TargetLimits {
            max_recv_data_segment_length: 65536,
            max_burst_length: 1 << 20,
            first_burst_length: self.first_burst_length,
            immediate_data: self.immediate_data,
            initial_r2t: true,
            max_outstanding_r2t: self.max_r2t_per_connection.max(1),
            error_recovery_level: self.error_recovery_level,
            max_connections: self.max_connections_per_session.max(1),
            default_time2wait: self.default_time2wait,
            default_time2retain: self.default_time2retain,
        }
    }
}

/// One listening address of a portal group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Portal {
    /// Host (IP address).
    pub host: String,
    /// Port, as a string (SPDK's JSON).
    pub port: String,
}

/// A portal group.
#[derive(Debug)]
pub struct PortalGroup {
    /// Its tag.
    pub tag: u32,
    /// Its portals.
    pub portals: Vec<Portal>,
    /// Not announced by SendTargets.
    pub private: bool,
    /// Bound listeners (one per portal), polled by the acceptor once the
    /// group is started.
    pub listeners: Vec<Arc<TcpListener>>,
    /// Accepting connections (false after `iscsi_create_portal_group`
    /// with `wait` until `iscsi_start_portal_group`).
    pub started: bool,
    /// CHAP settings of discovery sessions through this group, once set
    /// by `iscsi_portal_group_set_auth` (None: the global discovery auth).
    pub auth: Option<Auth>,
}

/// CHAP settings: of a target node, a portal group's discovery sessions, or
/// discovery sessions in general (SPDK's disable/require/mutual/group).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// No CHAP.
    pub disable_chap: bool,
    /// CHAP required.
    pub require_chap: bool,
    /// Mutual CHAP required.
    pub mutual_chap: bool,
    /// Auth group with the secrets (0: none).
    pub chap_group: i32,
}

impl Auth {
    /// Checks the combination as SPDK does: auto (all false), none
    /// (disable), CHAP (require), mutual CHAP (require and mutual), and a
    /// group tag of 0 or more.
    pub fn check(&self) -> Result<(), String> {
        if self.chap_group < 0 {
            return Err(format!(
                "chap_group {} is negative: give an auth group tag (>= 1) or 0 for none",
                self.chap_group
            ));
        }
        match (self.disable_chap, self.require_chap, self.mutual_chap) {
            (false, false, false) | (true, false, false) | (false, true, _) => Ok(()),
            (true, true, _) => {
                Err("disable_chap and require_chap are exclusive: set one of them".into())
            }
            (_, false, true) => Err("mutual_chap needs require_chap: set require_chap too".into()),
        }
    }
}

/// Largest iSCSI name (RFC 7143 6.1: 223 bytes).
pub const MAX_NAME: usize = 223;

/// Checks a target name as SPDK does (RFC 3722's characters): at most 223
/// bytes, none of the punctuation iSCSI names exclude, no spaces or
/// control characters, and `iqn.YYYY-MM.` dates.
pub fn check_target_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("target name is empty: give a name (iqn.YYYY-MM.domain:id)".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "target name of {} bytes is longer than {MAX_NAME}: shorten it",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|&c| {
        matches!(c, '\u{0}'..='\u{2c}' | '/' | '\u{3b}'..='\u{40}' | '\u{5b}'..='\u{60}' | '\u{7b}'..='\u{7f}')
            || c.is_whitespace()
    }) {
        return Err(format!(
            "target name {name:?} has {c:?}, not allowed in iSCSI names: use letters, digits, '-', '.' and ':'"
        ));
    }
    let b = name.as_bytes();
    if name
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("iqn."))
    {
        let d = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
        if !(d(4)
            && d(5)
            && d(6)
            && d(7)
            && b.get(8) == Some(&b'-')
            && d(9)
            && d(10)
            && b.get(11) == Some(&b'.'))
        {
            return Err(format!(
                "target name {name:?} is not iqn.YYYY-MM.reversed.domain.name: fix the date part"
            ));
        }
    }
    Ok(())
}

/// Checks an initiator group entry: `ANY`, or an initiator name, either
/// maybe after `!` (deny): not empty, at most 223 bytes, no spaces or
/// control characters.
pub fn check_initiator(entry: &str) -> Result<(), String> {
    let name = entry.strip_prefix('!').unwrap_or(entry);
    if name.is_empty() {
        return Err(format!(
            "initiator {entry:?} is empty: give ANY or an initiator name (iqn.YYYY-MM.domain:id)"
        ));
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "initiator name of {} bytes is longer than {MAX_NAME}: shorten it",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "initiator {entry:?} has {c:?}: names have no spaces or control characters \
             (several initiators go in separate list entries)"
        ));
    }
    Ok(())
}

/// Checks a netmask: `ANY`, an IPv4 address with an optional `/1`..`/32`,
/// or an IPv6 one (in brackets or not) with an optional `/1`..`/128`.
pub fn check_netmask(mask: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "netmask {mask:?} {why}: give ANY, an IPv4 address or CIDR (10.0.0.0/8), \
             or an IPv6 one ([fd00::]/64)"
        ))
    };
    if mask.eq_ignore_ascii_case("ANY") {
        return Ok(());
    }
    let (addr, bits) = match mask.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (mask, None),
    };
    let addr = match addr.strip_prefix('[') {
        Some(a) => match a.strip_suffix(']') {
            Some(a) => a,
            None => return bad("has an unclosed '['"),
        },
        None => addr,
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return bad("is not an IP address");
    };
    if let Some(b) = bits {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match b.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => {}
            _ => return bad(&format!("has prefix length {b:?}, not 1 to {max}")),
        }
    }
    Ok(())
}

/// An initiator group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitiatorGroup {
    /// Its tag.
    pub tag: u32,
    /// Initiator names ("ANY", or names; "!name" denies).
    pub initiators: Vec<String>,
    /// Netmasks ("ANY" or CIDR).
    pub netmasks: Vec<String>,
}

impl InitiatorGroup {
    /// True if `name` at `ip` belongs to the group.
    pub fn allows(&self, name: &str, ip: IpAddr) -> bool {
        let mut name_ok = false;
        for i in &self.initiators {
            if let Some(n) = i.strip_prefix('!') {
                if n.eq_ignore_ascii_case(name) || n == "ANY" {
                    return false;
                }
            } else if i == "ANY" || i.eq_ignore_ascii_case(name) {
                name_ok = true;
            }
        }
        name_ok && self.netmasks.iter().any(|m| netmask_match(m, ip))
    }
}

fn netmask_match(mask: &str, ip: IpAddr) -> bool {
    if mask.eq_ignore_ascii_case("ANY") {
        return true;
    }
    let m = mask.trim_start_matches('[').replace(']', "");
    let (addr, bits) = match m.split_once('/') {
        Some((a, b)) => (a.to_string(), b.parse::<u32>().ok()),
        None => (m.clone(), None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    let ip = match (net, ip) {
        (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        _ => ip,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let b = bits.unwrap_or(32).min(32);
            let mask = if b == 0 { 0 } else { u32::MAX << (32 - b) };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let b = bits.unwrap_or(128).min(128);
            let mask = if b == 0 { 0 } else { u128::MAX << (128 - b) };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// One `pg_ig_maps` entry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PgIgMap {
    /// Portal group tag.
    pub pg_tag: u32,
    /// Initiator group tag.
    pub ig_tag: u32,
}

/// A target node: a name and a SCSI device.
#[derive(Debug)]
pub struct TargetNode {
    /// Full name (IQN).
    pub name: String,
    /// Alias.
    pub alias: Option<String>,
    /// Which initiator groups may log in through which portal groups.
    pub pg_ig_maps: Mutex<Vec<PgIgMap>>,
    /// The SCSI device with the LUNs.
    pub dev: Arc<ScsiDev>,
    /// CmdSN window per session.
    pub queue_depth: u32,
    /// CHAP settings (`iscsi_target_node_set_auth` changes them).
    pub auth: Mutex<Auth>,
    /// SCSI device id (`scsi_get_devices`): the lowest free one.
    pub dev_id: u32,
    /// Command latency histogram (`iscsi_enable_histogram`).
    pub histogram: Histogram,
    /// HeaderDigest required.
    pub header_digest: bool,
    /// DataDigest required.
    pub data_digest: bool,
}

/// Buckets per power of two of a [`Histogram`] (SPDK's default granularity).
const HISTOGRAM_GRANULARITY: u32 = 7;
/// Ranges (powers of two) of a [`Histogram`]: values 0 to `u64::MAX`, as
/// SPDK's `spdk_histogram_data_alloc()`.
const HISTOGRAM_RANGES: usize = (64 - HISTOGRAM_GRANULARITY as usize) + 1;

/// A target node's command latency histogram in SPDK's layout
/// (`spdk_histogram_data`: granularity 7, ranges 0 to 57, a count per
/// bucket), in nanoseconds. Off until enabled; when on, each command's
/// completion adds one to a bucket (a relaxed atomic add, no lock).
#[derive(Debug, Default)]
pub struct Histogram {
    enabled: std::sync::atomic::AtomicBool,
    buckets: std::sync::OnceLock<Box<[std::sync::atomic::AtomicU64]>>,
}

impl Histogram {
    /// Granularity (log2 of the buckets per range).
    pub const GRANULARITY: u32 = HISTOGRAM_GRANULARITY;
    /// Lowest range.
    pub const MIN_RANGE: u32 = 0;
    /// Highest range.
    pub const MAX_RANGE: u32 = HISTOGRAM_RANGES as u32 - 1;

    /// True while it counts.
    pub fn enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns counting on (from zero) or off.
    pub fn enable(&self, on: bool) {
        use std::sync::atomic::{AtomicU64, Ordering};
        if on {
            let b = self.buckets.get_or_init(|| {
                (0..HISTOGRAM_RANGES << HISTOGRAM_GRANULARITY)
                    .map(|_| AtomicU64::new(0))
                    .collect()
            });
            if !self.enabled() {
                for c in b.iter() {
                    c.store(0, Ordering::Relaxed);
                }
            }
        }
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Counts one value (as `spdk_histogram_data_tally`).
    pub fn tally(&self, v: u64) {
        let Some(b) = self.buckets.get() else {
            return;
        };
        let lsb = 64 - HISTOGRAM_GRANULARITY;
        let clz = v.leading_zeros();
        let range = lsb.saturating_sub(clz);
        let index = (v >> range.saturating_sub(1)) & ((1 << HISTOGRAM_GRANULARITY) - 1);
        let i = ((range as usize) << HISTOGRAM_GRANULARITY) + index as usize;
        if let Some(c) = b.get(i) {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The counts as little-endian u64s, as SPDK's histogram bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.buckets
            .get()
            .map(|b| {
                b.iter()
                    .flat_map(|c| c.load(std::sync::atomic::Ordering::Relaxed).to_le_bytes())
                    .collect()
            })
            .unwrap_or_default()
    }
}
/// Standard base64 with padding (RFC 4648; what SPDK's
/// `spdk_base64_encode` writes), from the `base64` crate.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// One CHAP secret of an auth group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapSecret {
    /// The initiator's CHAP name.
    pub user: String,
    /// Its secret.
    pub secret: String,
    /// The target's name for mutual CHAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muser: Option<String>,
    /// The target's secret for mutual CHAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msecret: Option<String>,
}

/// A CHAP auth group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthGroup {
    /// Tag.
    pub tag: i32,
    /// Secrets.
    #[serde(default)]
    pub secrets: Vec<ChapSecret>,
}

/// Everything configured.
#[derive(Debug, Default)]
pub struct Registry {
    /// Global options.
    pub options: Options,
    /// Portal groups by tag.
    pub portal_groups: BTreeMap<u32, PortalGroup>,
    /// Initiator groups by tag.
    pub initiator_groups: BTreeMap<u32, InitiatorGroup>,
    /// Target nodes by name.
    pub targets: BTreeMap<String, Arc<TargetNode>>,
    /// Auth groups by tag.
    pub auth_groups: BTreeMap<i32, AuthGroup>,
    /// Discovery auth (disable_chap, require_chap, mutual_chap, chap_group) as set.
    pub discovery_auth_set: bool,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

/// Runs `f` on the registry.
pub fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut g: MutexGuard<'_, Option<Registry>> =
        REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Registry::default))
}

impl Registry {
    /// Full target name: names not starting with `iqn.`, `eui.` or `naa.`
    /// get the node base prefixed (as SPDK does).
    pub fn full_name(&self, name: &str) -> String {
        let full = ["iqn.", "eui.", "naa."]
            .iter()
            .any(|p| name.get(..4).is_some_and(|n| n.eq_ignore_ascii_case(p)));
        if full {
            name.to_string()
        } else {
            format!("{}:{}", self.options.node_base, name)
        }
    }

    /// The lowest SCSI device id no target node has.
    pub fn free_dev_id(&self) -> u32 {
        (0..)
            .find(|i| !self.targets.values().any(|t| t.dev_id == *i))
            .unwrap_or(0)
    }

    /// True if `initiator` at `ip`, connected through portal group `pg`,
    /// may log in to `target`.
    pub fn allowed(&self, target: &TargetNode, pg: u32, initiator: &str, ip: IpAddr) -> bool {
        let maps = target
            .pg_ig_maps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        maps.iter().filter(|m| m.pg_tag == pg).any(|m| {
            self.initiator_groups
                .get(&m.ig_tag)
                .is_some_and(|ig| ig.allows(initiator, ip))
        })
    }

    /// SendTargets=All answer for `initiator` at `ip` on portal group `pg`.
    pub fn send_targets(
        &self,
        pg: u32,
        initiator: &str,
        ip: IpAddr,
        local: SocketAddr,
        only: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for t in self.targets.values() {
            if only.is_some_and(|o| o != t.name) {
                continue;
            }
            if !self.allowed(t, pg, initiator, ip) {
                continue;
            }
            out.push(("TargetName".to_string(), t.name.clone()));
            let maps = t
                .pg_ig_maps
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let mut seen = Vec::new();
            for m in maps {
                if seen.contains(&m.pg_tag) {
                    continue;
                }
                seen.push(m.pg_tag);
                let Some(g) = self.portal_groups.get(&m.pg_tag) else {
                    continue;
                };
                if g.private {
                    continue;
                }
                for p in &g.portals {
                    let host = if p.host == "0.0.0.0" || p.host == "[::]" || p.host == "::" {
                        local.ip().to_string()
                    } else {
                        p.host.clone()
                    };
                    let host = if host.contains(':') && !host.starts_with('[') {
                        format!("[{host}]")
                    } else {
                        host
                    };
                    out.push((
                        "TargetAddress".to_string(),
                        format!("{host}:{},{}", p.port, g.tag),
                    ));
                }
            }
        }
        out
    }
}

/// Binds a portal's listener (non-blocking).
pub fn bind_portal(p: &Portal) -> Result<TcpListener, IscsiError> {
    let host = p.host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().map_err(|_| {
        IscsiError::Config(format!("portal host '{}' is not an IP address", p.host))
    })?;
    let port: u16 = p.port.parse().map_err(|_| {
        IscsiError::Config(format!("portal port '{}' is not a port number", p.port))
    })?;
    let l = TcpListener::bind(SocketAddr::new(ip, port)).map_err(|e| IscsiError::Io {
        what: format!("binding {}:{}", p.host, p.port),
        source: e,
    })?;
    if let Err(e) = rspdk_sock::apply_listener(std::os::fd::AsRawFd::as_raw_fd(&l)) {
        tracing::warn!(portal = %format!("{}:{}", p.host, p.port), error = %e, "iscsi: cannot apply the sock options to a listener");
    }
    l.set_nonblocking(true).map_err(|e| IscsiError::Io {
        what: "set_nonblocking".into(),
        source: e,
    })?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_base64() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let h = Histogram::default();
        h.tally(5); // before enabling: not counted
        h.enable(true);
        for v in [0, 5, 5, 127, 128, 1000, u64::MAX] {
            h.tally(v);
        }
        let b = h.bytes();
        assert_eq!(b.len(), 58 * 128 * 8);
        let count = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        // Range 0 holds 0..=127 one per bucket; 128 starts range 1.
        assert_eq!((count(0), count(5), count(127)), (1, 2, 1));
        assert_eq!(count(128), 1, "128 -> range 1, index 0");
        // 1000 = 0b1111101000: range 3, index 1000 >> 2 & 127 = 122.
        assert_eq!(count(3 * 128 + 122), 1);
        assert_eq!(count(57 * 128 + 127), 1, "u64::MAX in the last bucket");
        assert_eq!((0..58 * 128).map(count).sum::<u64>(), 7);
        h.enable(false);
        h.enable(true);
        assert_eq!(
            h.bytes().iter().map(|&x| u64::from(x)).sum::<u64>(),
            0,
            "reset on enable"
        );
    }

    #[test]
    fn netmasks() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(netmask_match("ANY", ip));
        assert!(netmask_match("10.1.0.0/16", ip));
        assert!(!netmask_match("10.2.0.0/16", ip));
        assert!(netmask_match("10.1.2.3", ip));
        let g = InitiatorGroup {
            tag: 1,
            initiators: vec!["ANY".into(), "!iqn.bad".into()],
            netmasks: vec!["ANY".into()],
        };
        assert!(g.allows("iqn.good", ip));
        assert!(!g.allows("iqn.bad", ip));
    }
}
