//! Admin data structures the target serves: Identify (CNS 0, 1, 2, 3), log
//! pages (error, SMART / health, firmware, changed namespace list,
//! discovery), and the fabrics property registers (NVMe base spec 2.0 and
//! NVMe over Fabrics 1.1; offsets in `rspdk_nvme::spec::ctrlr_field` where
//! that module has them, else cited here).

use std::ops::Range;
use std::sync::atomic::Ordering;

use rspdk_nvme::spec::ctrlr_field as cf;

use crate::target::{lock, Controller, Subsystem, Tgt, TransportOpts};

/// Fields of Identify Controller that `rspdk_nvme::spec` has no name for
/// (base spec 2.0, figure 275; fabrics 1.1, figure 28).
pub mod ctrlr_extra {
    use std::ops::Range;
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities.
    pub const CMIC: Range<usize> = 76..77;
    /// Controller Attributes.
    pub const CTRATT: Range<usize> = 96..100;
    /// Controller Type (1 I/O, 2 discovery).
    pub const CNTRLTYPE: Range<usize> = 111..112;
    /// Keep Alive Support (100 ms units).
    pub const KAS: Range<usize> = 320..322;
    /// I/O Queue Command Capsule Supported Size (16-byte units).
    pub const IOCCSZ: Range<usize> = 1792..1796;
    /// I/O Queue Response Capsule Supported Size (16-byte units).
    pub const IORCSZ: Range<usize> = 1796..1800;
    /// In Capsule Data Offset.
    pub const ICDOFF: Range<usize> = 1800..1802;
    /// Maximum SGL Data Block Descriptors.
    pub const MSDBD: Range<usize> = 1803..1804;
}

/// Fields of Identify Namespace (NVM command set spec 1.0, figure 97).
pub mod ns_field {
    use std::ops::Range;
    /// Namespace Size.
    pub const NSZE: Range<usize> = 0..8;
    /// Namespace Capacity.
    pub const NCAP: Range<usize> = 8..16;
    /// Namespace Utilization.
    pub const NUSE: Range<usize> = 16..24;
    /// Multi-path I/O and Namespace Sharing Capabilities.
    pub const NMIC: Range<usize> = 30..31;
    /// Namespace Globally Unique Identifier.
    pub const NGUID: Range<usize> = 104..120;
    /// IEEE Extended Unique Identifier.
    pub const EUI64: Range<usize> = 120..128;
    /// LBA Format 0 (MS 2 bytes, LBADS 1 byte, RP 1 byte).
    pub const LBAF0: Range<usize> = 128..132;
}

/// Writes `v` little-endian into `b[r]`.
pub fn put(b: &mut [u8], r: Range<usize>, v: u64) {
    for (i, x) in b[r].iter_mut().enumerate() {
        *x = (v >> (8 * i)) as u8;
    }
}

/// Writes `s` space-padded into `b[r]`.
pub fn put_text(b: &mut [u8], r: Range<usize>, s: &str) {
    let d = &mut b[r];
    d.fill(b' ');
    let n = s.len().min(d.len());
    d[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Writes `s` NUL-padded into `b[r]` (NQNs, addresses).
pub fn put_str0(b: &mut [u8], r: Range<usize>, s: &str) {
    let d = &mut b[r];
    d.fill(0);
    let n = s.len().min(d.len());
    d[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// The NVMe version the target reports (1.3).
pub const VERSION: u32 = 0x0001_0300;

/// Identify Controller for `ctrlr`; `crdt` are the command retry delay
/// times (CRDT1-3, bytes 134..140).
pub fn identify_controller(ctrlr: &Controller, opts: &TransportOpts, crdt: [u16; 3]) -> Vec<u8> {
    let s = &ctrlr.subsys;
    let mut b = vec![0u8; 4096];
    put_text(&mut b, cf::SN, &s.serial);
    put_text(&mut b, cf::MN, &s.model);
    put_text(&mut b, cf::FR, env!("CARGO_PKG_VERSION"));
    put(&mut b, cf::RAB, 6);
    put(&mut b, ctrlr_extra::CMIC, 0x02);
    let mdts = (opts.max_io_size / 4096).max(1).trailing_zeros();
    put(&mut b, cf::MDTS, mdts as u64);
    put(&mut b, cf::CNTLID, ctrlr.cntlid as u64);
    put(&mut b, cf::VER, VERSION as u64);
    put(&mut b, cf::OAES, if s.discovery { 0 } else { 1 << 8 });
    put(&mut b, ctrlr_extra::CTRATT, 1);
    for (i, c) in crdt.iter().enumerate() {
        put(&mut b, 134 + 2 * i..136 + 2 * i, *c as u64);
    }
    put(
        &mut b,
        ctrlr_extra::CNTRLTYPE,
        if s.discovery { 2 } else { 1 },
    );
    put(&mut b, cf::ACL, 3);
    put(&mut b, cf::AERL, 3);
    put(&mut b, cf::FRMW, 0x03);
    put(&mut b, cf::LPA, 0x04);
    put(&mut b, cf::ELPE, 127);
    put(&mut b, ctrlr_extra::KAS, opts.kas as u64);
    put(&mut b, cf::SQES, 0x66);
    put(&mut b, cf::CQES, 0x44);
    put(&mut b, cf::MAXCMD, opts.max_queue_depth as u64);
    if !s.discovery {
        let nn = if s.max_namespaces == 0 {
            1024
        } else {
            s.max_namespaces
        };
        put(&mut b, cf::NN, nn as u64);
        // Compare, Dataset Management, Write Zeroes, less `masked_oncs`.
        put(&mut b, cf::ONCS, (0x0d & !opts.oncs_mask()) as u64);
        // FUSES: Compare and Write, unless `masked_fuses` hides it.
        put(&mut b, 522..524, u64::from(!opts.fuses_masked()));
        put(&mut b, cf::VWC, 1);
    }
    // SGLs supported (bit 0), SGL offsets (bit 20).
    put(&mut b, cf::SGLS, 1 | (1 << 20));
    put_str0(&mut b, cf::SUBNQN, &s.nqn);
    put(
        &mut b,
        ctrlr_extra::IOCCSZ,
        ((64 + opts.in_capsule_data_size) / 16) as u64,
    );
    put(&mut b, ctrlr_extra::IORCSZ, 1);
    put(&mut b, ctrlr_extra::ICDOFF, 0);
    put(&mut b, ctrlr_extra::MSDBD, 1);
    b
}

/// Identify Namespace for `nsid` as host `hostnqn` sees it (all zeroes
/// for an NSID that is inactive, or not visible to that host).
pub fn identify_namespace(s: &Subsystem, nsid: u32, hostnqn: &str) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    if let Some(ns) = lock(&s.namespaces)
        .get(&nsid)
        .filter(|ns| ns.visible_to(hostnqn))
    {
        let bdev = ns.desc.bdev();
        let n = bdev.num_blocks();
        put(&mut b, ns_field::NSZE, n);
        put(&mut b, ns_field::NCAP, n);
        put(&mut b, ns_field::NUSE, n);
        put(&mut b, ns_field::NMIC, 1);
        b[ns_field::NGUID].copy_from_slice(&ns.nguid);
        b[ns_field::EUI64].copy_from_slice(&ns.eui64);
        let lbads = bdev.block_size().trailing_zeros();
        put(&mut b, ns_field::LBAF0, (lbads as u64) << 16);
    }
    b
}

/// Active Namespace ID list: NSIDs above `after` that host `hostnqn`
/// sees, ascending.
pub fn active_ns_list(s: &Subsystem, after: u32, hostnqn: &str) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    for (i, id) in lock(&s.namespaces)
        .iter()
        .filter(|(&k, ns)| k > after && ns.visible_to(hostnqn))
        .map(|(k, _)| k)
        .take(1024)
        .enumerate()
    {
        put(&mut b, i * 4..i * 4 + 4, *id as u64);
    }
    b
}

/// Namespace Identification Descriptor list (CNS 3), `None` if inactive
/// (or not visible to host `hostnqn`).
pub fn ns_id_descriptors(s: &Subsystem, nsid: u32, hostnqn: &str) -> Option<Vec<u8>> {
    let ns = lock(&s.namespaces)
        .get(&nsid)
        .filter(|ns| ns.visible_to(hostnqn))
        .cloned()?;
    let mut b = vec![0u8; 4096];
    let mut off = 0;
    let mut add = |t: u8, v: &[u8]| {
        b[off] = t;
        b[off + 1] = v.len() as u8;
        b[off + 4..off + 4 + v.len()].copy_from_slice(v);
        off += 4 + v.len();
    };
    if ns.eui64 != [0; 8] {
        add(1, &ns.eui64);
    }
    add(2, &ns.nguid);
    add(3, &ns.uuid);
    Some(b)
}

/// SMART / Health Information (log page 0x02): a healthy device at 38 C.
pub fn smart_log() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    put(&mut b, 1..3, 311);
    b[3] = 100;
    b[4] = 10;
    b
}

/// Firmware Slot Information (log page 0x03).
pub fn firmware_log() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0] = 1;
    put_text(&mut b, 8..16, env!("CARGO_PKG_VERSION"));
    b
}

/// Changed Namespace List (log page 0x04), emptying the controller's list.
pub fn changed_ns_log(c: &Controller) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let list: Vec<u32> = lock(&c.changed_ns).drain(..).collect();
    if list.len() >= 1024 {
        put(&mut b, 0..4, 0xffff_ffff);
    } else {
        for (i, id) in list.iter().enumerate() {
            put(&mut b, i * 4..i * 4 + 4, *id as u64);
        }
    }
    c.aen_pending.store(false, Ordering::Release);
    b
}

/// The discovery log page (0x70): one entry per listener of each
/// subsystem `hostnqn` may connect to (NVMe-oF 1.1, figures 38, 39).
pub fn discovery_log(t: &Tgt, hostnqn: &str, genctr: u64) -> Vec<u8> {
    let aq = t.transport.as_ref().map_or(128, |o| o.max_aq_depth);
    let mut entries: Vec<[u8; 1024]> = Vec::new();
    for s in t
        .subsystems
        .iter()
        .filter(|s| !s.discovery && s.host_allowed(hostnqn))
    {
        for (i, l) in lock(&s.listeners).iter().enumerate() {
            let mut e = [0u8; 1024];
            e[0] = 3; // TRTYPE: TCP
            e[1] = if l.adrfam == "IPv6" { 2 } else { 1 };
            e[2] = 2; // SUBTYPE: NVM subsystem
            e[3] = 0x02; // TREQ: secure channel not required
            put(&mut e, 4..6, i as u64 + 1);
            put(&mut e, 6..8, 0xffff);
            put(&mut e, 8..10, aq as u64);
            put_str0(&mut e, 32..64, &l.trsvcid);
            put_str0(&mut e, 256..512, &s.nqn);
            put_str0(&mut e, 512..768, &l.traddr);
            entries.push(e);
        }
    }
    // Referrals (`nvmf_discovery_add_referral`): SUBTYPE 1 for another
    // discovery service, 2 for an NVM subsystem.
    for r in &t.referrals {
        let mut e = [0u8; 1024];
        e[0] = 3; // TRTYPE: TCP
        e[1] = if r.address.adrfam == "IPv6" { 2 } else { 1 };
        e[2] = if r.subnqn == crate::DISCOVERY { 1 } else { 2 };
        e[3] = 0x02; // TREQ: secure channel not required
        put(&mut e, 6..8, 0xffff);
        put(&mut e, 8..10, aq as u64);
        put_str0(&mut e, 32..64, &r.address.trsvcid);
        put_str0(&mut e, 256..512, &r.subnqn);
        put_str0(&mut e, 512..768, &r.address.traddr);
        entries.push(e);
    }
    let mut b = vec![0u8; 1024 + entries.len() * 1024];
    put(&mut b, 0..8, genctr);
    put(&mut b, 8..16, entries.len() as u64);
    for (i, e) in entries.iter().enumerate() {
        b[1024 + i * 1024..2048 + i * 1024].copy_from_slice(e);
    }
    b
}

/// The CAP property for a queue depth of `mqes + 1`.
pub fn cap(max_queue_depth: u32) -> u64 {
    let mqes = (max_queue_depth - 1) as u64 & 0xffff;
    // CQR (bit 16), TO 15 s (bits 31:24, 500 ms units), CSS NVM (bit 37).
    mqes | (1 << 16) | (30 << 24) | (1 << 37)
}
