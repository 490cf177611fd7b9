//! Commands: admin and I/O opcodes, the submission and completion queue
//! entries, SGL descriptors, the command field values (features, log
//! page identifiers, CNS) and Dataset Management ranges.

use super::bits;

/// Admin command opcodes (figure 139). Unknown opcodes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOpcode {
    /// Delete I/O Submission Queue.
    DeleteIoSq,
    /// Create I/O Submission Queue.
    CreateIoSq,
    /// Get Log Page.
    GetLogPage,
    /// Delete I/O Completion Queue.
    DeleteIoCq,
    /// Create I/O Completion Queue.
    CreateIoCq,
    /// Identify.
    Identify,
    /// Abort.
    Abort,
    /// Set Features.
    SetFeatures,
    /// Get Features.
    GetFeatures,
    /// Asynchronous Event Request.
    AsyncEventRequest,
    /// Namespace Management.
    NsManagement,
    /// Firmware Commit.
    FirmwareCommit,
    /// Firmware Image Download.
    FirmwareImageDownload,
    /// Device Self-test.
    DeviceSelfTest,
    /// Namespace Attachment.
    NsAttachment,
    /// Keep Alive.
    KeepAlive,
    /// Format NVM.
    FormatNvm,
    /// Sanitize.
    Sanitize,
    /// Any other opcode.
    Unsupported(u8),
}

const ADMIN_OPCODES: &[(u8, AdminOpcode)] = &[
    (0x00, AdminOpcode::DeleteIoSq),
    (0x01, AdminOpcode::CreateIoSq),
    (0x02, AdminOpcode::GetLogPage),
    (0x04, AdminOpcode::DeleteIoCq),
    (0x05, AdminOpcode::CreateIoCq),
    (0x06, AdminOpcode::Identify),
    (0x08, AdminOpcode::Abort),
    (0x09, AdminOpcode::SetFeatures),
    (0x0a, AdminOpcode::GetFeatures),
    (0x0c, AdminOpcode::AsyncEventRequest),
    (0x0d, AdminOpcode::NsManagement),
    (0x10, AdminOpcode::FirmwareCommit),
    (0x11, AdminOpcode::FirmwareImageDownload),
    (0x14, AdminOpcode::DeviceSelfTest),
    (0x15, AdminOpcode::NsAttachment),
    (0x18, AdminOpcode::KeepAlive),
    (0x80, AdminOpcode::FormatNvm),
    (0x84, AdminOpcode::Sanitize),
];

impl From<u8> for AdminOpcode {
    fn from(v: u8) -> Self {
        ADMIN_OPCODES
            .iter()
            .find(|(c, _)| *c == v)
            .map_or(AdminOpcode::Unsupported(v), |(_, o)| *o)
    }
}

impl From<AdminOpcode> for u8 {
    fn from(o: AdminOpcode) -> u8 {
        match o {
            AdminOpcode::Unsupported(v) => v,
            o => ADMIN_OPCODES
                .iter()
                .find(|(_, x)| *x == o)
                .map(|(c, _)| *c)
                .expect("every named opcode is in the table"),
        }
    }
}

/// NVM command set I/O opcodes (NVM Command Set spec, figure 17). Unknown
/// opcodes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOpcode {
    /// Flush.
    Flush,
    /// Write.
    Write,
    /// Read.
    Read,
    /// Write Uncorrectable.
    WriteUncorrectable,
    /// Compare.
    Compare,
    /// Write Zeroes.
    WriteZeroes,
    /// Dataset Management.
    DatasetManagement,
    /// Verify.
    Verify,
    /// Reservation Register.
    ReservationRegister,
    /// Reservation Report.
    ReservationReport,
    /// Reservation Acquire.
    ReservationAcquire,
    /// Reservation Release.
    ReservationRelease,
    /// Copy.
    Copy,
    /// Any other opcode.
    Unsupported(u8),
}

const IO_OPCODES: &[(u8, IoOpcode)] = &[
    (0x00, IoOpcode::Flush),
    (0x01, IoOpcode::Write),
    (0x02, IoOpcode::Read),
    (0x04, IoOpcode::WriteUncorrectable),
    (0x05, IoOpcode::Compare),
    (0x08, IoOpcode::WriteZeroes),
    (0x09, IoOpcode::DatasetManagement),
    (0x0c, IoOpcode::Verify),
    (0x0d, IoOpcode::ReservationRegister),
    (0x0e, IoOpcode::ReservationReport),
    (0x11, IoOpcode::ReservationAcquire),
    (0x15, IoOpcode::ReservationRelease),
    (0x19, IoOpcode::Copy),
];

impl From<u8> for IoOpcode {
    fn from(v: u8) -> Self {
        IO_OPCODES
            .iter()
            .find(|(c, _)| *c == v)
            .map_or(IoOpcode::Unsupported(v), |(_, o)| *o)
    }
}

impl From<IoOpcode> for u8 {
    fn from(o: IoOpcode) -> u8 {
        match o {
            IoOpcode::Unsupported(v) => v,
            o => IO_OPCODES
                .iter()
                .find(|(_, x)| *x == o)
                .map(|(c, _)| *c)
                .expect("every named opcode is in the table"),
        }
    }
}

/// Feature identifiers (figure 271).
pub mod feature {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power Management.
    pub const POWER_MANAGEMENT: u8 = 0x02;
    /// Temperature Threshold.
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    /// Error Recovery.
    pub const ERROR_RECOVERY: u8 = 0x05;
    /// Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIGURATION: u8 = 0x0b;
    /// Interrupt Coalescing.
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    /// Interrupt Vector Configuration.
    pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
    /// Write Atomicity Normal.
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    /// Keep Alive Timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
}

/// Log page identifiers (figure 191).
pub mod log_page {
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const HEALTH_INFORMATION: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FIRMWARE_SLOT: u8 = 0x03;
    /// Changed Namespace List.
    pub const CHANGED_NS_LIST: u8 = 0x04;
    /// Discovery (NVMe over Fabrics 1.1, figure 38).
    pub const DISCOVERY: u8 = 0x70;
}

/// Identify CNS values (figure 244).
pub mod cns {
    /// Identify Namespace.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active Namespace ID list.
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    /// Namespace Identification Descriptor list.
    pub const NS_ID_DESCRIPTORS: u8 = 0x03;
}

/// A submission queue entry: 64 bytes, 16 dwords (section 4.2, figure 105).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C, align(64))]
pub struct Sqe {
    /// The dwords, CDW0..CDW15.
    pub dw: [u32; 16],
}

const _: () = assert!(std::mem::size_of::<Sqe>() == 64);

/// Asynchronous Event Request completions (figure 146).
pub mod aer {
    /// Event type: Notice.
    pub const TYPE_NOTICE: u8 = 0x02;
    /// Notice: Namespace Attribute Changed.
    pub const NOTICE_NS_ATTR_CHANGED: u8 = 0x00;

    /// DW0 of an AER completion: event type, event information and the
    /// log page to read.
    pub const fn dw0(event_type: u8, info: u8, log_page: u8) -> u32 {
        (event_type as u32 & 7) | ((info as u32) << 8) | ((log_page as u32) << 16)
    }
}

/// The NSID that names every namespace (broadcast).
pub const NSID_ALL: u32 = 0xffff_ffff;

/// Fused operation (CDW0 bits 9:8, figure 105).
pub mod fuse {
    /// A normal command.
    pub const NORMAL: u8 = 0;
    /// The first command of a fused operation (Compare of a
    /// compare-and-write).
    pub const FIRST: u8 = 1;
    /// The second command of a fused operation (its Write).
    pub const SECOND: u8 = 2;
}

/// Asynchronous Event Configuration (Set Features 0Bh, figure 291), and
/// the matching Optional Asynchronous Events Supported bit of Identify
/// Controller.
pub mod aec {
    /// Namespace Attribute Notices.
    pub const NS_ATTR_NOTICES: u32 = 1 << 8;
}

/// Dataset Management (NVM command set, figures 164-166).
pub mod dsm {
    /// CDW11 Attribute - Deallocate (AD).
    pub const ATTR_DEALLOCATE: u32 = 1 << 2;
    /// CDW10 bits 7:0: Number of Ranges, 0's based.
    pub fn num_ranges(cdw10: u32) -> usize {
        (cdw10 & 0xff) as usize + 1
    }
}

/// Abort completions (figure 150).
pub mod abort {
    /// DW0 bit 0: the command was not aborted.
    pub const NOT_ABORTED: u32 = 1;
}

/// Data transfer direction of a command: bits 1:0 of its opcode (of the
/// fabrics command type for fabrics commands), figure 103.
pub mod xfer {
    /// No data.
    pub const NONE: u8 = 0;
    /// Host to controller.
    pub const HOST_TO_CTRLR: u8 = 1;
    /// Controller to host.
    pub const CTRLR_TO_HOST: u8 = 2;
    /// Both directions.
    pub const BIDIRECTIONAL: u8 = 3;
}

impl Sqe {
    /// The 64 bytes as sent (little-endian dwords).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        for (i, d) in self.dw.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&d.to_le_bytes());
        }
        b
    }
    /// A command from its 64 bytes (`None` if `b` is shorter).
    pub fn from_bytes(b: &[u8]) -> Option<Sqe> {
        let b = b.get(..64)?;
        let mut s = Sqe::default();
        for (i, d) in s.dw.iter_mut().enumerate() {
            *d = u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        }
        Some(s)
    }
    /// The SGL descriptor identifier in DPTR (byte 15 of the descriptor,
    /// CDW9 bits 31:24).
    pub fn sgl_id(&self) -> u8 {
        (self.dw[9] >> 24) as u8
    }
    /// The length of the SGL descriptor in DPTR (CDW8), in bytes.
    pub fn sgl_len(&self) -> u32 {
        self.dw[8]
    }
    /// Identify: the Controller or Namespace Structure (CNS, CDW10 bits
    /// 7:0).
    pub fn cns(&self) -> u8 {
        self.dw[10] as u8
    }
    /// Get and Set Features: the Feature Identifier (CDW10 bits 7:0).
    pub fn fid(&self) -> u8 {
        self.dw[10] as u8
    }
    /// Get Log Page: the Log Page Identifier (CDW10 bits 7:0).
    pub fn log_lid(&self) -> u8 {
        self.dw[10] as u8
    }
    /// Get Log Page: the number of dwords to return (NUMDU in CDW11 bits
    /// 15:0, NUMDL in CDW10 bits 31:16; 0's based on the wire).
    pub fn log_numd(&self) -> usize {
        (((self.dw[11] & 0xffff) << 16) | (self.dw[10] >> 16)) as usize + 1
    }
    /// Get Log Page: the byte offset into the page (LPOL CDW12, LPOU CDW13).
    pub fn log_offset(&self) -> u64 {
        self.dw[12] as u64 | ((self.dw[13] as u64) << 32)
    }
    /// Number of logical blocks of an I/O command (CDW12 bits 15:0, plus 1).
    pub fn nlb(&self) -> u32 {
        (self.dw[12] & 0xffff) + 1
    }
    /// A command with `opcode` and `nsid`.
    pub fn new(opcode: u8, nsid: u32) -> Sqe {
        let mut s = Sqe::default();
        s.dw[0] = opcode as u32;
        s.dw[1] = nsid;
        s
    }
    /// Opcode (CDW0 bits 7:0).
    pub fn opcode(&self) -> u8 {
        self.dw[0] as u8
    }
    /// Fused operation (CDW0 bits 9:8).
    pub fn fuse(&self) -> u8 {
        bits(self.dw[0] as u64, 8, 9) as u8
    }
    /// PRP or SGL for Data Transfer (CDW0 bits 15:14): 0 PRP, 1 SGL.
    pub fn psdt(&self) -> u8 {
        bits(self.dw[0] as u64, 14, 15) as u8
    }
    /// Sets PSDT.
    pub fn set_psdt(&mut self, v: u8) {
        self.dw[0] = (self.dw[0] & !(0b11 << 14)) | ((v as u32 & 0b11) << 14);
    }
    /// Command identifier (CDW0 bits 31:16).
    pub fn cid(&self) -> u16 {
        (self.dw[0] >> 16) as u16
    }
    /// Sets the command identifier.
    pub fn set_cid(&mut self, cid: u16) {
        self.dw[0] = (self.dw[0] & 0xffff) | ((cid as u32) << 16);
    }
    /// Namespace identifier (CDW1).
    pub fn nsid(&self) -> u32 {
        self.dw[1]
    }
    /// PRP entry 1 / first half of SGL entry 1 (CDW6-7).
    pub fn prp1(&self) -> u64 {
        self.dw[6] as u64 | ((self.dw[7] as u64) << 32)
    }
    /// Sets PRP1.
    pub fn set_prp1(&mut self, v: u64) {
        self.dw[6] = v as u32;
        self.dw[7] = (v >> 32) as u32;
    }
    /// PRP entry 2 (CDW8-9).
    pub fn prp2(&self) -> u64 {
        self.dw[8] as u64 | ((self.dw[9] as u64) << 32)
    }
    /// Sets PRP2.
    pub fn set_prp2(&mut self, v: u64) {
        self.dw[8] = v as u32;
        self.dw[9] = (v >> 32) as u32;
    }
    /// Sets a 64-bit starting LBA in CDW10-11.
    pub fn set_slba(&mut self, lba: u64) {
        self.dw[10] = lba as u32;
        self.dw[11] = (lba >> 32) as u32;
    }
    /// The starting LBA in CDW10-11.
    pub fn slba(&self) -> u64 {
        self.dw[10] as u64 | ((self.dw[11] as u64) << 32)
    }
}

/// A completion queue entry: 16 bytes (section 4.6, figure 123).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Cqe {
    /// The dwords, DW0..DW3.
    pub dw: [u32; 4],
}

const _: () = assert!(std::mem::size_of::<Cqe>() == 16);

impl Cqe {
    /// A completion of command `cid` with `status` and result `dw0`,
    /// reporting SQ head `sqhd` of queue `sqid` (phase bit clear: fabrics
    /// capsules carry none).
    pub fn new(cid: u16, status: crate::status::Status, dw0: u32, sqhd: u16, sqid: u16) -> Cqe {
        Cqe {
            dw: [
                dw0,
                0,
                sqhd as u32 | ((sqid as u32) << 16),
                cid as u32 | ((status.raw() as u32) << 17),
            ],
        }
    }
    /// The 16 bytes as sent (little-endian dwords).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (i, d) in self.dw.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&d.to_le_bytes());
        }
        b
    }
    /// A completion from its 16 bytes (`None` if `b` is shorter).
    pub fn from_bytes(b: &[u8]) -> Option<Cqe> {
        let b = b.get(..16)?;
        let mut c = Cqe::default();
        for (i, d) in c.dw.iter_mut().enumerate() {
            *d = u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        }
        Some(c)
    }
    /// Command specific result (DW0).
    pub fn cdw0(&self) -> u32 {
        self.dw[0]
    }
    /// Submission queue head pointer (DW2 bits 15:0).
    pub fn sqhd(&self) -> u16 {
        self.dw[2] as u16
    }
    /// Submission queue identifier (DW2 bits 31:16).
    pub fn sqid(&self) -> u16 {
        (self.dw[2] >> 16) as u16
    }
    /// Command identifier (DW3 bits 15:0).
    pub fn cid(&self) -> u16 {
        self.dw[3] as u16
    }
    /// Phase tag (DW3 bit 16).
    pub fn phase(&self) -> bool {
        self.dw[3] & (1 << 16) != 0
    }
    /// The status field (DW3 bits 31:17).
    pub fn status(&self) -> crate::status::Status {
        crate::status::Status::from_raw((self.dw[3] >> 17) as u16)
    }
}

/// An SGL descriptor (section 4.4, figure 117): 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct SglDescriptor {
    /// Address.
    pub address: u64,
    /// Length in bytes.
    pub length: u32,
    /// Reserved bytes 12..15.
    pub reserved: [u8; 3],
    /// SGL identifier: type (bits 7:4) and subtype (bits 3:0).
    pub id: u8,
}

const _: () = assert!(std::mem::size_of::<SglDescriptor>() == 16);

impl SglDescriptor {
    /// SGL Data Block descriptor type.
    pub const TYPE_DATA_BLOCK: u8 = 0x0;
    /// SGL Segment descriptor type.
    pub const TYPE_SEGMENT: u8 = 0x2;
    /// SGL Last Segment descriptor type.
    pub const TYPE_LAST_SEGMENT: u8 = 0x3;
    /// Identifier (type and subtype) of a Data Block descriptor whose
    /// address is an offset into the capsule's in-capsule data (figure
    /// 116; NVMe over Fabrics).
    pub const ID_DATA_BLOCK_OFFSET: u8 = 0x01;
    /// Identifier of a Transport SGL Data Block descriptor (type 5,
    /// subtype 0xA, transport specific): the data moves by the
    /// transport's own means (NVMe/TCP: R2T and H2CData, C2HData).
    pub const ID_TRANSPORT_DATA_BLOCK: u8 = 0x5a;

    /// A descriptor of `kind` (type, subtype address).
    pub fn new(kind: u8, address: u64, length: u32) -> Self {
        SglDescriptor {
            address,
            length,
            reserved: [0; 3],
            id: kind << 4,
        }
    }
    /// The two dwords pairs as placed in CDW6..CDW9.
    pub fn to_dwords(self) -> [u32; 4] {
        [
            self.address as u32,
            (self.address >> 32) as u32,
            self.length,
            (self.id as u32) << 24,
        ]
    }
}
/// A Dataset Management range (figure 166 of the NVM command set): 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct DsmRange {
    /// Context attributes.
    pub attributes: u32,
    /// Length in logical blocks (1-based).
    pub nlb: u32,
    /// Starting LBA.
    pub slba: u64,
}

const _: () = assert!(std::mem::size_of::<DsmRange>() == 16);

impl DsmRange {
    /// Size of a range on the wire.
    pub const SIZE: usize = 16;

    /// A range from its 16 bytes (`None` if `b` is shorter).
    pub fn from_bytes(b: &[u8]) -> Option<DsmRange> {
        let b = b.get(..Self::SIZE)?;
        Some(DsmRange {
            attributes: u32::from_le_bytes(b[0..4].try_into().ok()?),
            nlb: u32::from_le_bytes(b[4..8].try_into().ok()?),
            slba: u64::from_le_bytes(b[8..16].try_into().ok()?),
        })
    }

    /// The 16 bytes as sent.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.attributes.to_le_bytes());
        b[4..8].copy_from_slice(&self.nlb.to_le_bytes());
        b[8..16].copy_from_slice(&self.slba.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_round_trip_and_keep_unknown() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(AdminOpcode::from(v)), v);
            assert_eq!(u8::from(IoOpcode::from(v)), v);
        }
        assert_eq!(AdminOpcode::from(0x06), AdminOpcode::Identify);
        assert_eq!(AdminOpcode::from(0x7f), AdminOpcode::Unsupported(0x7f));
        assert_eq!(IoOpcode::from(0x02), IoOpcode::Read);
        assert_eq!(IoOpcode::from(0x09), IoOpcode::DatasetManagement);
        assert_eq!(IoOpcode::from(0x03), IoOpcode::Unsupported(3));
    }

    #[test]
    fn sqe_fields() {
        let mut s = Sqe::new(0x02, 1);
        s.set_cid(0xbeef);
        s.set_prp1(0x1234_5678_9abc_d000);
        s.set_prp2(0x1000);
        s.set_slba(0x1_0000_0001);
        s.set_psdt(1);
        assert_eq!(s.opcode(), 2);
        assert_eq!(s.cid(), 0xbeef);
        assert_eq!(s.nsid(), 1);
        assert_eq!(s.prp1(), 0x1234_5678_9abc_d000);
        assert_eq!(s.prp2(), 0x1000);
        assert_eq!(s.slba(), 0x1_0000_0001);
        assert_eq!(s.psdt(), 1);
        assert_eq!(s.fuse(), 0);
        assert_eq!(s.dw[10], 1);
        assert_eq!(s.dw[11], 1);
    }

    #[test]
    fn cqe_fields() {
        // status SCT 0 SC 0x80 (LBA out of range), DNR, phase 1, CID 7.
        let c = Cqe {
            dw: [
                5,
                0,
                (3 << 16) | 9,
                (1 << 31) | (0x80 << 17) | (1 << 16) | 7,
            ],
        };
        assert_eq!(c.cdw0(), 5);
        assert_eq!(c.sqhd(), 9);
        assert_eq!(c.sqid(), 3);
        assert_eq!(c.cid(), 7);
        assert!(c.phase());
        let st = c.status();
        assert_eq!((st.sct(), st.sc()), (0, 0x80));
        assert!(st.dnr());
        assert_eq!(st.name(), "LBA Out of Range");
    }

    #[test]
    fn sqe_and_cqe_bytes_round_trip() {
        let mut s = Sqe::new(0x01, 7);
        s.set_cid(0x1234);
        s.dw[8] = 4096;
        s.dw[9] = (SglDescriptor::ID_TRANSPORT_DATA_BLOCK as u32) << 24;
        s.dw[12] = 7;
        let b = s.to_bytes();
        assert_eq!(&b[..4], &[0x01, 0, 0x34, 0x12]);
        let p = Sqe::from_bytes(&b).unwrap();
        assert_eq!(p, s);
        assert_eq!(p.sgl_id(), SglDescriptor::ID_TRANSPORT_DATA_BLOCK);
        assert_eq!((p.sgl_len(), p.nlb()), (4096, 8));
        assert!(Sqe::from_bytes(&b[..63]).is_none());
        let mut g = Sqe::new(0x02, NSID_ALL);
        g.dw[10] = 0x70 | (0x00ff << 16);
        g.dw[11] = 0x0001;
        g.dw[12] = 4096;
        g.dw[13] = 1;
        assert_eq!((g.log_lid(), g.cns(), g.fid()), (0x70, 0x70, 0x70));
        assert_eq!(g.log_numd(), 0x1_00ff + 1);
        assert_eq!(g.log_offset(), (1 << 32) | 4096);
        let st = crate::status::Status::new(1, 0x82);
        let c = Cqe::new(0x1234, st, 0xdead_beef, 9, 3);
        let p = Cqe::from_bytes(&c.to_bytes()).unwrap();
        assert_eq!(p, c);
        assert_eq!(
            (p.cid(), p.sqhd(), p.sqid(), p.cdw0()),
            (0x1234, 9, 3, 0xdead_beef)
        );
        assert_eq!(p.status(), st);
        assert!(!p.phase());
    }

    #[test]
    fn dsm_range_round_trip() {
        let r = DsmRange {
            attributes: 0,
            nlb: 8,
            slba: 0x1_0000_0010,
        };
        let b = r.to_bytes();
        assert_eq!(&b[4..8], &[8, 0, 0, 0]);
        assert_eq!(DsmRange::from_bytes(&b), Some(r));
        assert_eq!(DsmRange::from_bytes(&b[..15]), None);
        assert_eq!(dsm::num_ranges(0), 1);
    }

    #[test]
    fn sgl_descriptor_layout() {
        let d = SglDescriptor::new(SglDescriptor::TYPE_LAST_SEGMENT, 0xabcd_0000, 48);
        assert_eq!(d.to_dwords(), [0xabcd_0000, 0, 48, 0x30 << 24]);
    }
}
