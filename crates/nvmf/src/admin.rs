//! Admin data structures the target serves: Identify (CNS 0, 1, 2, 3), log
//! pages (error, SMART / health, firmware, changed namespace list,
//! discovery), and the fabrics property registers. Every layout is a typed
//! view of `rspdk_nvme::spec` (the host's driver reads the same ones).

use std::sync::atomic::Ordering;

use rspdk_nvme::spec::fabrics::{
    adrfam, discovery_entry_field as de, discovery_field, subtype, treq, trtype, DiscoveryLogEntry,
};
use rspdk_nvme::spec::{
    aec, cntrltype, ctrlr_field as cf, health_field, nidt, ns_field, oncs, push_ns_id_descriptor,
    FirmwareSlotLog, HealthLog, IdentifyController, IdentifyNamespace, LbaFormat,
};

use crate::target::{lock, Controller, Subsystem, Tgt, TransportOpts};

/// Writes `v` little-endian into `b[r]` (lists of 4-byte NSIDs).
fn put(b: &mut [u8], r: std::ops::Range<usize>, v: u64) {
    for (i, x) in b[r].iter_mut().enumerate() {
        *x = (v >> (8 * i)) as u8;
    }
}

/// The NVMe version the target reports (1.3).
pub const VERSION: u32 = 0x0001_0300;

/// Identify Controller for `ctrlr`; `crdt` are the command retry delay
/// times (CRDT1-3, bytes 134..140).
pub fn identify_controller(ctrlr: &Controller, opts: &TransportOpts, crdt: [u16; 3]) -> Vec<u8> {
    let s = &ctrlr.subsys;
    let mut id = IdentifyController::default();
    id.set_text(cf::SN, &s.serial);
    id.set_text(cf::MN, &s.model);
    id.set_text(cf::FR, env!("CARGO_PKG_VERSION"));
    id.set_le(cf::RAB, 6);
    // Multiple controllers may attach to the subsystem (bit 1).
    id.set_le(cf::CMIC, 0x02);
    let mdts = (opts.max_io_size / 4096).max(1).trailing_zeros();
    id.set_le(cf::MDTS, mdts as u64);
    id.set_le(cf::CNTLID, ctrlr.cntlid as u64);
    id.set_le(cf::VER, VERSION as u64);
    let oaes = if s.discovery { 0 } else { aec::NS_ATTR_NOTICES };
    id.set_le(cf::OAES, oaes as u64);
    // Host Identifier (128-bit) supported.
    id.set_le(cf::CTRATT, 1);
    for (i, c) in crdt.iter().enumerate() {
        let at = cf::CRDT.start + 2 * i;
        id.set_le(at..at + 2, *c as u64);
    }
    let kind = if s.discovery {
        cntrltype::DISCOVERY
    } else {
        cntrltype::IO
    };
    id.set_le(cf::CNTRLTYPE, kind as u64);
    id.set_le(cf::ACL, 3);
    id.set_le(cf::AERL, 3);
    id.set_le(cf::FRMW, 0x03);
    id.set_le(cf::LPA, 0x04);
    id.set_le(cf::ELPE, 127);
    id.set_le(cf::KAS, opts.kas as u64);
    id.set_le(cf::SQES, 0x66);
    id.set_le(cf::CQES, 0x44);
    id.set_le(cf::MAXCMD, opts.max_queue_depth as u64);
    if !s.discovery {
        let nn = if s.max_namespaces == 0 {
            1024
        } else {
            s.max_namespaces
        };
        id.set_nn(nn);
        // Compare, Dataset Management, Write Zeroes, less `masked_oncs`.
        let oncs = oncs::COMPARE | oncs::DSM | oncs::WRITE_ZEROES;
        id.set_oncs(oncs & !opts.oncs_mask());
        // FUSES: Compare and Write, unless `masked_fuses` hides it.
        id.set_le(cf::FUSES, u64::from(!opts.fuses_masked()));
        id.set_le(cf::VWC, 1);
    }
    // SGLs supported (bit 0), SGL offsets (bit 20).
    id.set_sgls(1 | (1 << 20));
    id.set_str0(cf::SUBNQN, &s.nqn);
    id.set_le(cf::IOCCSZ, ((64 + opts.in_capsule_data_size) / 16) as u64);
    id.set_le(cf::IORCSZ, 1);
    id.set_le(cf::ICDOFF, 0);
    id.set_le(cf::MSDBD, 1);
    id.bytes.to_vec()
}

/// Identify Namespace for `nsid` as host `hostnqn` sees it (all zeroes
/// for an NSID that is inactive, or not visible to that host).
pub fn identify_namespace(s: &Subsystem, nsid: u32, hostnqn: &str) -> Vec<u8> {
    let mut id = IdentifyNamespace::default();
    if let Some(ns) = lock(&s.namespaces)
        .get(&nsid)
        .filter(|ns| ns.visible_to(hostnqn))
    {
        let bdev = ns.desc.bdev();
        let n = bdev.num_blocks();
        id.set_nsze(n);
        id.set_ncap(n);
        id.set_le(ns_field::NUSE, n);
        // May be attached to two or more controllers.
        id.set_le(ns_field::NMIC, 1);
        id.bytes[ns_field::NGUID].copy_from_slice(&ns.nguid);
        id.bytes[ns_field::EUI64].copy_from_slice(&ns.eui64);
        let lbads = bdev.block_size().trailing_zeros() as u8;
        id.set_lbaf(
            0,
            LbaFormat {
                ms: 0,
                lbads,
                rp: 0,
            },
        );
    }
    id.bytes.to_vec()
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
    // Three descriptors fit in 4 KiB whatever their order.
    if ns.eui64 != [0; 8] {
        push_ns_id_descriptor(&mut b, &mut off, nidt::EUI64, &ns.eui64);
    }
    push_ns_id_descriptor(&mut b, &mut off, nidt::NGUID, &ns.nguid);
    push_ns_id_descriptor(&mut b, &mut off, nidt::UUID, &ns.uuid);
    Some(b)
}

/// SMART / Health Information (log page 0x02): a healthy device at 38 C.
pub fn smart_log() -> Vec<u8> {
    let mut h = HealthLog::default();
    h.set_temperature(311);
    h.set_le(health_field::AVAILABLE_SPARE, 100);
    h.set_le(health_field::AVAILABLE_SPARE_THRESHOLD, 10);
    h.bytes.to_vec()
}

/// Firmware Slot Information (log page 0x03).
pub fn firmware_log() -> Vec<u8> {
    let mut f = FirmwareSlotLog::default();
    // Active Firmware Info: slot 1.
    f.bytes[0] = 1;
    f.set_text(
        FirmwareSlotLog::revision_range(1),
        env!("CARGO_PKG_VERSION"),
    );
    f.bytes.to_vec()
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
    let entry = |fam: &str, sub: u8, portid: u16, svc: &str, nqn: &str, addr: &str| {
        let mut e = DiscoveryLogEntry::default();
        e.set_le(de::TRTYPE, trtype::TCP as u64);
        let fam = if fam == "IPv6" {
            adrfam::IPV6
        } else {
            adrfam::IPV4
        };
        e.set_le(de::ADRFAM, fam as u64);
        e.set_le(de::SUBTYPE, sub as u64);
        e.set_le(de::TREQ, treq::SECURE_CHANNEL_NOT_REQUIRED as u64);
        e.set_le(de::PORTID, portid as u64);
        e.set_le(de::CNTLID, 0xffff);
        e.set_le(de::ASQSZ, aq as u64);
        e.set_str0(de::TRSVCID, svc);
        e.set_str0(de::SUBNQN, nqn);
        e.set_str0(de::TRADDR, addr);
        e
    };
    let mut entries: Vec<DiscoveryLogEntry> = Vec::new();
    for s in t
        .subsystems
        .iter()
        .filter(|s| !s.discovery && s.host_allowed(hostnqn))
    {
        for (i, l) in lock(&s.listeners).iter().enumerate() {
            let port = i as u16 + 1;
            entries.push(entry(
                &l.adrfam,
                subtype::NVME,
                port,
                &l.trsvcid,
                &s.nqn,
                &l.traddr,
            ));
        }
    }
    // Referrals (`nvmf_discovery_add_referral`): another discovery service
    // or an NVM subsystem; port id 0.
    for r in &t.referrals {
        let sub = if r.subnqn == crate::DISCOVERY {
            subtype::DISCOVERY
        } else {
            subtype::NVME
        };
        let a = &r.address;
        entries.push(entry(&a.adrfam, sub, 0, &a.trsvcid, &r.subnqn, &a.traddr));
    }
    let size = discovery_field::ENTRY_SIZE;
    let mut b = vec![0u8; size + entries.len() * size];
    put(&mut b, discovery_field::GENCTR, genctr);
    put(&mut b, discovery_field::NUMREC, entries.len() as u64);
    for (e, dst) in entries.iter().zip(b[size..].chunks_exact_mut(size)) {
        dst.copy_from_slice(&e.bytes);
    }
    b
}

/// The CAP property for a queue depth of `mqes + 1`.
pub fn cap(max_queue_depth: u32) -> u64 {
    let mqes = (max_queue_depth - 1) as u64 & 0xffff;
    // CQR (bit 16), TO 15 s (bits 31:24, 500 ms units), CSS NVM (bit 37).
    mqes | (1 << 16) | (30 << 24) | (1 << 37)
}
