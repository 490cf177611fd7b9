//! Identify data structures: Identify Controller (figure 247) and
//! Identify Namespace (figure 249).

use std::ops::Range;

byte_view!(
    /// Identify Controller data structure (figure 247), 4096 bytes.
    IdentifyController,
    4096
);

/// Byte ranges of [`IdentifyController`] fields (figure 247).
pub mod ctrlr_field {
    use std::ops::Range;
    /// PCI Vendor ID.
    pub const VID: Range<usize> = 0..2;
    /// PCI Subsystem Vendor ID.
    pub const SSVID: Range<usize> = 2..4;
    /// Serial Number (ASCII).
    pub const SN: Range<usize> = 4..24;
    /// Model Number (ASCII).
    pub const MN: Range<usize> = 24..64;
    /// Firmware Revision (ASCII).
    pub const FR: Range<usize> = 64..72;
    /// Recommended Arbitration Burst.
    pub const RAB: Range<usize> = 72..73;
    /// IEEE OUI Identifier.
    pub const IEEE: Range<usize> = 73..76;
    /// Maximum Data Transfer Size (2^n minimum pages; 0 = no limit).
    pub const MDTS: Range<usize> = 77..78;
    /// Controller ID.
    pub const CNTLID: Range<usize> = 78..80;
    /// Version.
    pub const VER: Range<usize> = 80..84;
    /// Optional Asynchronous Events Supported.
    pub const OAES: Range<usize> = 92..96;
    /// Optional Admin Command Support.
    pub const OACS: Range<usize> = 256..258;
    /// Abort Command Limit (0-based).
    pub const ACL: Range<usize> = 258..259;
    /// Asynchronous Event Request Limit (0-based).
    pub const AERL: Range<usize> = 259..260;
    /// Firmware Updates.
    pub const FRMW: Range<usize> = 260..261;
    /// Log Page Attributes.
    pub const LPA: Range<usize> = 261..262;
    /// Error Log Page Entries (0-based).
    pub const ELPE: Range<usize> = 262..263;
    /// Warning Composite Temperature Threshold (K).
    pub const WCTEMP: Range<usize> = 266..268;
    /// Critical Composite Temperature Threshold (K).
    pub const CCTEMP: Range<usize> = 268..270;
    /// Submission Queue Entry Size (min in bits 3:0, max in 7:4, log2).
    pub const SQES: Range<usize> = 512..513;
    /// Completion Queue Entry Size.
    pub const CQES: Range<usize> = 513..514;
    /// Maximum Outstanding Commands.
    pub const MAXCMD: Range<usize> = 514..516;
    /// Number of Namespaces.
    pub const NN: Range<usize> = 516..520;
    /// Optional NVM Command Support.
    pub const ONCS: Range<usize> = 520..522;
    /// Volatile Write Cache (bit 0: present).
    pub const VWC: Range<usize> = 525..526;
    /// Atomic Write Unit Normal.
    pub const AWUN: Range<usize> = 526..528;
    /// Atomic Write Unit Power Fail.
    pub const AWUPF: Range<usize> = 528..530;
    /// SGL Support (bits 1:0: 01 or 10 = SGLs supported).
    pub const SGLS: Range<usize> = 536..540;
    /// NVM Subsystem NVMe Qualified Name.
    pub const SUBNQN: Range<usize> = 768..1024;
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities.
    pub const CMIC: Range<usize> = 76..77;
    /// Controller Attributes.
    pub const CTRATT: Range<usize> = 96..100;
    /// Command Retry Delay Time 1, 2 and 3 (100 ms units), two bytes each.
    pub const CRDT: Range<usize> = 134..140;
    /// Controller Type (1 I/O, 2 discovery, 3 administrative).
    pub const CNTRLTYPE: Range<usize> = 111..112;
    /// Keep Alive Support (100 ms units).
    pub const KAS: Range<usize> = 320..322;
    /// Fused Operation Support (bit 0: Compare and Write).
    pub const FUSES: Range<usize> = 522..524;
    /// I/O Queue Command Capsule Supported Size (16-byte units; NVMe over
    /// Fabrics 1.1, figure 28).
    pub const IOCCSZ: Range<usize> = 1792..1796;
    /// I/O Queue Response Capsule Supported Size (16-byte units).
    pub const IORCSZ: Range<usize> = 1796..1800;
    /// In Capsule Data Offset (16-byte units).
    pub const ICDOFF: Range<usize> = 1800..1802;
    /// Maximum SGL Data Block Descriptors.
    pub const MSDBD: Range<usize> = 1803..1804;
}

/// CNTRLTYPE values (byte 111).
pub mod cntrltype {
    /// I/O controller.
    pub const IO: u8 = 1;
    /// Discovery controller.
    pub const DISCOVERY: u8 = 2;
}

/// Namespace Identification Descriptor types (NIDT, figure 251).
pub mod nidt {
    /// IEEE Extended Unique Identifier (8 bytes).
    pub const EUI64: u8 = 1;
    /// Namespace Globally Unique Identifier (16 bytes).
    pub const NGUID: u8 = 2;
    /// Namespace UUID (16 bytes).
    pub const UUID: u8 = 3;
}

/// Appends one Namespace Identification Descriptor (NIDT, NIDL, two
/// reserved bytes, the identifier) to a CNS 3 list at `*off`; false, and
/// nothing written, if it does not fit in `list`.
pub fn push_ns_id_descriptor(list: &mut [u8], off: &mut usize, nidt: u8, id: &[u8]) -> bool {
    let end = *off + 4 + id.len();
    if end > list.len() || id.len() > u8::MAX as usize {
        return false;
    }
    list[*off] = nidt;
    list[*off + 1] = id.len() as u8;
    list[*off + 2..*off + 4].fill(0);
    list[*off + 4..end].copy_from_slice(id);
    *off = end;
    true
}

/// The Namespace Identification Descriptors of a CNS 3 list, as
/// (NIDT, identifier), up to the first zero NIDT or the end.
pub fn ns_id_descriptors(list: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let h = list.get(off..off + 4)?;
        let (t, n) = (h[0], h[1] as usize);
        if t == 0 {
            return None;
        }
        let id = list.get(off + 4..off + 4 + n)?;
        off += 4 + n;
        Some((t, id))
    })
}

/// ONCS bits (figure 247, bytes 521:520).
pub mod oncs {
    /// Compare supported.
    pub const COMPARE: u16 = 1 << 0;
    /// Write Uncorrectable supported.
    pub const WRITE_UNCORRECTABLE: u16 = 1 << 1;
    /// Dataset Management supported.
    pub const DSM: u16 = 1 << 2;
    /// Write Zeroes supported.
    pub const WRITE_ZEROES: u16 = 1 << 3;
    /// Save/Select in Set/Get Features supported.
    pub const SAVE_SELECT: u16 = 1 << 4;
    /// Reservations supported.
    pub const RESERVATIONS: u16 = 1 << 5;
    /// Timestamp feature supported.
    pub const TIMESTAMP: u16 = 1 << 6;
    /// Verify supported.
    pub const VERIFY: u16 = 1 << 7;
    /// Copy supported.
    pub const COPY: u16 = 1 << 8;
}

impl IdentifyController {
    /// Controller type (byte 111): 1 I/O, 2 discovery, 3 administrative,
    /// 0 not reported.
    pub fn cntrltype(&self) -> u8 {
        self.bytes[ctrlr_field::CNTRLTYPE.start]
    }
    /// Keep Alive Support granularity (KAS, bytes 321:320), in 100 ms units.
    pub fn kas(&self) -> u16 {
        self.le(ctrlr_field::KAS) as u16
    }
    /// I/O Queue Command Capsule Supported Size (IOCCSZ, bytes 1795:1792),
    /// in 16-byte units (fabrics): the SQE plus in-capsule data.
    pub fn ioccsz(&self) -> u32 {
        self.le(ctrlr_field::IOCCSZ) as u32
    }
    /// In Capsule Data Offset (ICDOFF, bytes 1801:1800), in 16-byte units.
    pub fn icdoff(&self) -> u16 {
        self.le(ctrlr_field::ICDOFF) as u16
    }
    /// PCI vendor id.
    pub fn vid(&self) -> u16 {
        self.le(ctrlr_field::VID) as u16
    }
    /// PCI subsystem vendor id.
    pub fn ssvid(&self) -> u16 {
        self.le(ctrlr_field::SSVID) as u16
    }
    /// Serial number, trailing spaces removed.
    pub fn serial(&self) -> String {
        self.text(ctrlr_field::SN)
    }
    /// Sets the serial number (space padded).
    pub fn set_serial(&mut self, s: &str) {
        self.set_text(ctrlr_field::SN, s)
    }
    /// Model number.
    pub fn model(&self) -> String {
        self.text(ctrlr_field::MN)
    }
    /// Sets the model number.
    pub fn set_model(&mut self, s: &str) {
        self.set_text(ctrlr_field::MN, s)
    }
    /// Firmware revision.
    pub fn firmware(&self) -> String {
        self.text(ctrlr_field::FR)
    }
    /// Sets the firmware revision.
    pub fn set_firmware(&mut self, s: &str) {
        self.set_text(ctrlr_field::FR, s)
    }
    /// IEEE OUI.
    pub fn ieee(&self) -> u32 {
        self.le(ctrlr_field::IEEE) as u32
    }
    /// MDTS (log2 of the limit in minimum pages; 0 = none).
    pub fn mdts(&self) -> u8 {
        self.bytes[ctrlr_field::MDTS.start]
    }
    /// Sets MDTS.
    pub fn set_mdts(&mut self, v: u8) {
        self.bytes[ctrlr_field::MDTS.start] = v
    }
    /// Controller id.
    pub fn cntlid(&self) -> u16 {
        self.le(ctrlr_field::CNTLID) as u16
    }
    /// Version (as VS).
    pub fn ver(&self) -> u32 {
        self.le(ctrlr_field::VER) as u32
    }
    /// Optional admin command support.
    pub fn oacs(&self) -> u16 {
        self.le(ctrlr_field::OACS) as u16
    }
    /// Abort command limit (0-based).
    pub fn acl(&self) -> u8 {
        self.bytes[ctrlr_field::ACL.start]
    }
    /// Asynchronous event request limit (0-based).
    pub fn aerl(&self) -> u8 {
        self.bytes[ctrlr_field::AERL.start]
    }
    /// Firmware updates.
    pub fn frmw(&self) -> u8 {
        self.bytes[ctrlr_field::FRMW.start]
    }
    /// Log page attributes.
    pub fn lpa(&self) -> u8 {
        self.bytes[ctrlr_field::LPA.start]
    }
    /// Error log page entries (0-based).
    pub fn elpe(&self) -> u8 {
        self.bytes[ctrlr_field::ELPE.start]
    }
    /// Warning composite temperature threshold, kelvin.
    pub fn wctemp(&self) -> u16 {
        self.le(ctrlr_field::WCTEMP) as u16
    }
    /// Critical composite temperature threshold, kelvin.
    pub fn cctemp(&self) -> u16 {
        self.le(ctrlr_field::CCTEMP) as u16
    }
    /// SQ entry size byte.
    pub fn sqes(&self) -> u8 {
        self.bytes[ctrlr_field::SQES.start]
    }
    /// CQ entry size byte.
    pub fn cqes(&self) -> u8 {
        self.bytes[ctrlr_field::CQES.start]
    }
    /// Maximum outstanding commands.
    pub fn maxcmd(&self) -> u16 {
        self.le(ctrlr_field::MAXCMD) as u16
    }
    /// Number of namespaces (highest valid NSID).
    pub fn nn(&self) -> u32 {
        self.le(ctrlr_field::NN) as u32
    }
    /// Sets NN.
    pub fn set_nn(&mut self, v: u32) {
        self.set_le(ctrlr_field::NN, v as u64)
    }
    /// Optional NVM command support.
    pub fn oncs(&self) -> u16 {
        self.le(ctrlr_field::ONCS) as u16
    }
    /// Sets ONCS.
    pub fn set_oncs(&mut self, v: u16) {
        self.set_le(ctrlr_field::ONCS, v as u64)
    }
    /// Volatile write cache present.
    pub fn vwc_present(&self) -> bool {
        self.bytes[ctrlr_field::VWC.start] & 1 != 0
    }
    /// Atomic write unit normal (0-based blocks).
    pub fn awun(&self) -> u16 {
        self.le(ctrlr_field::AWUN) as u16
    }
    /// Atomic write unit power fail.
    pub fn awupf(&self) -> u16 {
        self.le(ctrlr_field::AWUPF) as u16
    }
    /// SGL support dword.
    pub fn sgls(&self) -> u32 {
        self.le(ctrlr_field::SGLS) as u32
    }
    /// Sets SGLS.
    pub fn set_sgls(&mut self, v: u32) {
        self.set_le(ctrlr_field::SGLS, v as u64)
    }
    /// True if the controller takes SGLs for NVM commands.
    pub fn sgl_supported(&self) -> bool {
        matches!(self.sgls() & 0b11, 0b01 | 0b10)
    }
    /// NVM subsystem NQN.
    pub fn subnqn(&self) -> String {
        self.text(ctrlr_field::SUBNQN)
    }
}

byte_view!(
    /// Identify Namespace data structure (figure 249), 4096 bytes.
    IdentifyNamespace,
    4096
);

/// Byte ranges of [`IdentifyNamespace`] fields (figure 249).
pub mod ns_field {
    use std::ops::Range;
    /// Namespace Size (blocks).
    pub const NSZE: Range<usize> = 0..8;
    /// Namespace Capacity (blocks).
    pub const NCAP: Range<usize> = 8..16;
    /// Namespace Utilization (blocks).
    pub const NUSE: Range<usize> = 16..24;
    /// Multi-path I/O and Namespace Sharing Capabilities.
    pub const NMIC: Range<usize> = 30..31;
    /// Namespace Features.
    pub const NSFEAT: Range<usize> = 24..25;
    /// Number of LBA Formats (0-based).
    pub const NLBAF: Range<usize> = 25..26;
    /// Formatted LBA Size (bits 3:0: format index).
    pub const FLBAS: Range<usize> = 26..27;
    /// Deallocate Logical Block Features.
    pub const DLFEAT: Range<usize> = 33..34;
    /// Namespace Globally Unique Identifier.
    pub const NGUID: Range<usize> = 104..120;
    /// IEEE Extended Unique Identifier.
    pub const EUI64: Range<usize> = 120..128;
    /// LBA Format 0 Support; format n is at 128 + 4n.
    pub const LBAF0: Range<usize> = 128..132;
}

/// One LBA format (figure 250).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaFormat {
    /// Metadata size in bytes.
    pub ms: u16,
    /// LBA data size, log2.
    pub lbads: u8,
    /// Relative performance (0 best).
    pub rp: u8,
}

impl IdentifyNamespace {
    /// Namespace size in blocks.
    pub fn nsze(&self) -> u64 {
        self.le(ns_field::NSZE)
    }
    /// Sets NSZE.
    pub fn set_nsze(&mut self, v: u64) {
        self.set_le(ns_field::NSZE, v)
    }
    /// Namespace capacity in blocks.
    pub fn ncap(&self) -> u64 {
        self.le(ns_field::NCAP)
    }
    /// Sets NCAP.
    pub fn set_ncap(&mut self, v: u64) {
        self.set_le(ns_field::NCAP, v)
    }
    /// Namespace utilisation in blocks.
    pub fn nuse(&self) -> u64 {
        self.le(ns_field::NUSE)
    }
    /// Namespace features.
    pub fn nsfeat(&self) -> u8 {
        self.bytes[ns_field::NSFEAT.start]
    }
    /// Number of LBA formats (0-based).
    pub fn nlbaf(&self) -> u8 {
        self.bytes[ns_field::NLBAF.start]
    }
    /// Index of the format in use.
    pub fn flbas_index(&self) -> usize {
        (self.bytes[ns_field::FLBAS.start] & 0xf) as usize
    }
    /// Sets FLBAS.
    pub fn set_flbas(&mut self, v: u8) {
        self.bytes[ns_field::FLBAS.start] = v
    }
    /// Deallocate logical block features (bits 2:0: what reads of
    /// deallocated blocks return: 001 zeroes, 010 ones).
    pub fn dlfeat(&self) -> u8 {
        self.bytes[ns_field::DLFEAT.start]
    }
    /// NGUID.
    pub fn nguid(&self) -> u128 {
        self.le128(ns_field::NGUID)
    }
    /// EUI-64.
    pub fn eui64(&self) -> u64 {
        self.le(ns_field::EUI64)
    }
    /// LBA format `i` (0..16).
    pub fn lbaf(&self, i: usize) -> LbaFormat {
        let o = ns_field::LBAF0.start + 4 * i.min(15);
        LbaFormat {
            ms: self.le(o..o + 2) as u16,
            lbads: self.bytes[o + 2],
            rp: self.bytes[o + 3] & 0b11,
        }
    }
    /// Sets LBA format `i`.
    pub fn set_lbaf(&mut self, i: usize, f: LbaFormat) {
        let o = ns_field::LBAF0.start + 4 * i.min(15);
        self.set_le(o..o + 2, f.ms as u64);
        self.bytes[o + 2] = f.lbads;
        self.bytes[o + 3] = f.rp & 0b11;
    }
    /// Block size of the format in use, in bytes.
    pub fn block_size(&self) -> u32 {
        let l = self.lbaf(self.flbas_index()).lbads;
        if (9..=31).contains(&l) {
            1 << l
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_controller_round_trip() {
        let mut c = IdentifyController::default();
        c.set_serial("RSPDKVM0001");
        c.set_model("QEMU NVMe Ctrl");
        c.set_firmware("7.2");
        c.set_nn(2);
        c.set_mdts(7);
        c.set_oncs(oncs::COMPARE | oncs::DSM | oncs::WRITE_ZEROES);
        c.set_sgls(1);
        let parsed = IdentifyController::from_bytes(&c.bytes).unwrap();
        assert_eq!(parsed, c);
        assert_eq!(parsed.serial(), "RSPDKVM0001");
        assert_eq!(&parsed.bytes[ctrlr_field::SN][..12], b"RSPDKVM0001 ");
        assert_eq!(parsed.model(), "QEMU NVMe Ctrl");
        assert_eq!(parsed.firmware(), "7.2");
        assert_eq!(parsed.nn(), 2);
        assert_eq!(parsed.mdts(), 7);
        assert_eq!(parsed.oncs() & oncs::DSM, oncs::DSM);
        assert!(parsed.sgl_supported());
        assert!(IdentifyController::from_bytes(&[0u8; 100]).is_none());
        let mut f = IdentifyController::default();
        f.set_le(ctrlr_field::KAS, 100);
        f.set_le(ctrlr_field::IOCCSZ, 260);
        f.set_le(ctrlr_field::ICDOFF, 0);
        f.set_le(ctrlr_field::CNTRLTYPE, cntrltype::DISCOVERY as u64);
        f.set_str0(ctrlr_field::SUBNQN, "nqn.2014-08.org.nvmexpress.discovery");
        let p = IdentifyController::from_bytes(&f.bytes).unwrap();
        assert_eq!((p.kas(), p.ioccsz(), p.icdoff()), (100, 260, 0));
        assert_eq!(p.cntrltype(), cntrltype::DISCOVERY);
        assert_eq!(p.subnqn(), "nqn.2014-08.org.nvmexpress.discovery");
        assert_eq!(p.bytes[ctrlr_field::SUBNQN.start + 36], 0);
    }

    #[test]
    fn identify_namespace_round_trip() {
        let mut n = IdentifyNamespace::default();
        n.set_nsze(131072);
        n.set_ncap(131072);
        n.set_lbaf(
            0,
            LbaFormat {
                ms: 0,
                lbads: 9,
                rp: 0,
            },
        );
        n.set_lbaf(
            1,
            LbaFormat {
                ms: 8,
                lbads: 12,
                rp: 2,
            },
        );
        n.set_flbas(1);
        let p = IdentifyNamespace::from_bytes(&n.bytes).unwrap();
        assert_eq!(p.nsze(), 131072);
        assert_eq!(p.ncap(), 131072);
        assert_eq!(p.flbas_index(), 1);
        assert_eq!(
            p.lbaf(1),
            LbaFormat {
                ms: 8,
                lbads: 12,
                rp: 2
            }
        );
        assert_eq!(p.block_size(), 4096);
        assert_eq!(p.bytes[128 + 4 + 2], 12);
    }

    #[test]
    fn ns_id_descriptor_list_round_trip() {
        let mut list = [0u8; 64];
        let mut off = 0;
        assert!(push_ns_id_descriptor(
            &mut list,
            &mut off,
            nidt::EUI64,
            &[1; 8]
        ));
        assert!(push_ns_id_descriptor(
            &mut list,
            &mut off,
            nidt::NGUID,
            &[2; 16]
        ));
        assert!(push_ns_id_descriptor(
            &mut list,
            &mut off,
            nidt::UUID,
            &[3; 16]
        ));
        assert_eq!(off, 12 + 20 + 20);
        assert!(!push_ns_id_descriptor(
            &mut list,
            &mut off,
            nidt::UUID,
            &[3; 16]
        ));
        let got: Vec<(u8, &[u8])> = ns_id_descriptors(&list).collect();
        assert_eq!(
            got,
            vec![
                (nidt::EUI64, &[1u8; 8][..]),
                (nidt::NGUID, &[2u8; 16][..]),
                (nidt::UUID, &[3u8; 16][..])
            ]
        );
        assert_eq!(ns_id_descriptors(&list[..12]).count(), 1);
    }
}
