//! NVMe data structures as typed views over bytes (NVM Express Base
//! Specification 1.4c; section and figure numbers cite it). No bitfields:
//! each structure keeps its bytes and each field is a byte range or a bit
//! range in `mod field`, read and written by accessors, so parsing and
//! emitting are the same table.

use std::ops::Range;

/// Controller registers (section 3.1, figure 78): byte offsets in BAR0.
pub mod reg {
    /// Controller Capabilities (64-bit).
    pub const CAP: usize = 0x00;
    /// Version.
    pub const VS: usize = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: usize = 0x0c;
    /// Interrupt Mask Clear.
    pub const INTMC: usize = 0x10;
    /// Controller Configuration.
    pub const CC: usize = 0x14;
    /// Controller Status.
    pub const CSTS: usize = 0x1c;
    /// NVM Subsystem Reset.
    pub const NSSR: usize = 0x20;
    /// Admin Queue Attributes.
    pub const AQA: usize = 0x24;
    /// Admin Submission Queue Base Address (64-bit).
    pub const ASQ: usize = 0x28;
    /// Admin Completion Queue Base Address (64-bit).
    pub const ACQ: usize = 0x30;
    /// First doorbell (section 3.1.24).
    pub const DOORBELL_BASE: usize = 0x1000;
}

/// Extracts bits `lo..=hi` of `v`.
#[inline]
pub const fn bits(v: u64, lo: u32, hi: u32) -> u64 {
    (v >> lo) & (u64::MAX >> (63 - (hi - lo)))
}

/// CAP, Controller Capabilities (figure 79).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, 0-based (bits 15:0).
    pub fn mqes(self) -> u16 {
        bits(self.0, 0, 15) as u16
    }
    /// Contiguous Queues Required (bit 16).
    pub fn cqr(self) -> bool {
        bits(self.0, 16, 16) == 1
    }
    /// Timeout, in 500 ms units (bits 31:24): worst-case time for CSTS.RDY
    /// to follow CC.EN.
    pub fn to(self) -> u8 {
        bits(self.0, 24, 31) as u8
    }
    /// Doorbell Stride: doorbells are `4 << dstrd` bytes apart (bits 35:32).
    pub fn dstrd(self) -> u8 {
        bits(self.0, 32, 35) as u8
    }
    /// NVM Subsystem Reset Supported (bit 36).
    pub fn nssrs(self) -> bool {
        bits(self.0, 36, 36) == 1
    }
    /// Command Sets Supported (bits 44:37); bit 0: NVM command set.
    pub fn css(self) -> u8 {
        bits(self.0, 37, 44) as u8
    }
    /// Memory Page Size Minimum: 2^(12 + mpsmin) (bits 51:48).
    pub fn mpsmin(self) -> u8 {
        bits(self.0, 48, 51) as u8
    }
    /// Memory Page Size Maximum (bits 55:52).
    pub fn mpsmax(self) -> u8 {
        bits(self.0, 52, 55) as u8
    }
    /// The timeout as milliseconds.
    pub fn timeout_ms(self) -> u64 {
        self.to() as u64 * 500
    }
}

/// CC, Controller Configuration (figure 81).
pub mod cc {
    /// Enable (bit 0).
    pub const EN: u32 = 1 << 0;
    /// I/O Command Set Selected shift (bits 6:4); 0 = NVM.
    pub const CSS_SHIFT: u32 = 4;
    /// Memory Page Size shift (bits 10:7): 2^(12 + MPS).
    pub const MPS_SHIFT: u32 = 7;
    /// Arbitration Mechanism Selected shift (bits 13:11).
    pub const AMS_SHIFT: u32 = 11;
    /// Shutdown Notification shift (bits 15:14): 01 normal, 10 abrupt.
    pub const SHN_SHIFT: u32 = 14;
    /// SHN mask.
    pub const SHN_MASK: u32 = 0b11 << SHN_SHIFT;
    /// Normal shutdown notification.
    pub const SHN_NORMAL: u32 = 0b01 << SHN_SHIFT;
    /// I/O Submission Queue Entry Size shift (bits 19:16), log2.
    pub const IOSQES_SHIFT: u32 = 16;
    /// I/O Completion Queue Entry Size shift (bits 23:20), log2.
    pub const IOCQES_SHIFT: u32 = 20;
}

/// CSTS, Controller Status (figure 82).
pub mod csts {
    /// Ready (bit 0).
    pub const RDY: u32 = 1 << 0;
    /// Controller Fatal Status (bit 1).
    pub const CFS: u32 = 1 << 1;
    /// Shutdown Status shift (bits 3:2): 10 = shutdown complete.
    pub const SHST_SHIFT: u32 = 2;
    /// SHST mask.
    pub const SHST_MASK: u32 = 0b11 << SHST_SHIFT;
    /// Shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 0b10 << SHST_SHIFT;
    /// What a read of a removed device returns.
    pub const ALL_ONES: u32 = u32::MAX;
}

/// Arbitration mechanism (CC.AMS, section 4.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arbitration {
    /// Round robin (always supported).
    #[default]
    RoundRobin,
    /// Weighted round robin with urgent priority class (CAP.AMS bit 0).
    WeightedRoundRobin,
    /// Vendor specific (CAP.AMS bit 1).
    VendorSpecific,
}

impl Arbitration {
    /// The CC.AMS value.
    pub fn cc_value(self) -> u32 {
        match self {
            Arbitration::RoundRobin => 0,
            Arbitration::WeightedRoundRobin => 1,
            Arbitration::VendorSpecific => 7,
        }
    }
}

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
}

/// Identify CNS values (figure 244).
pub mod cns {
    /// Identify Namespace.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active Namespace ID list.
    pub const ACTIVE_NS_LIST: u8 = 0x02;
}

/// A submission queue entry: 64 bytes, 16 dwords (section 4.2, figure 105).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C, align(64))]
pub struct Sqe {
    /// The dwords, CDW0..CDW15.
    pub dw: [u32; 16],
}

const _: () = assert!(std::mem::size_of::<Sqe>() == 64);

impl Sqe {
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

/// A view over a fixed-size structure's bytes.
macro_rules! byte_view {
    ($(#[$m:meta])* $name:ident, $size:expr) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name {
            /// The raw bytes, as the controller returned them.
            pub bytes: [u8; $size],
        }

        const _: () = assert!(std::mem::size_of::<$name>() == $size);

        impl Default for $name {
            fn default() -> Self {
                $name { bytes: [0; $size] }
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl $name {
            /// Size in bytes.
            pub const SIZE: usize = $size;

            /// Copies a structure out of `b` (which must hold SIZE bytes).
            pub fn from_bytes(b: &[u8]) -> Option<Self> {
                let bytes: [u8; $size] = b.get(..$size)?.try_into().ok()?;
                Some($name { bytes })
            }

            #[allow(dead_code)]
            fn le(&self, r: Range<usize>) -> u64 {
                self.bytes[r].iter().rev().fold(0u64, |a, &b| (a << 8) | b as u64)
            }

            #[allow(dead_code)]
            fn le128(&self, r: Range<usize>) -> u128 {
                self.bytes[r].iter().rev().fold(0u128, |a, &b| (a << 8) | b as u128)
            }

            #[allow(dead_code)]
            fn set_le(&mut self, r: Range<usize>, v: u64) {
                for (i, b) in self.bytes[r].iter_mut().enumerate() {
                    *b = (v >> (8 * i)) as u8;
                }
            }

            #[allow(dead_code)]
            fn text(&self, r: Range<usize>) -> String {
                String::from_utf8_lossy(&self.bytes[r])
                    .trim_end_matches([' ', '\0'])
                    .to_string()
            }

            #[allow(dead_code)]
            fn set_text(&mut self, r: Range<usize>, s: &str) {
                let dst = &mut self.bytes[r];
                dst.fill(b' ');
                let n = s.len().min(dst.len());
                dst[..n].copy_from_slice(&s.as_bytes()[..n]);
            }
        }
    };
}

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
}

impl IdentifyController {
    /// Controller type (byte 111): 1 I/O, 2 discovery, 3 administrative,
    /// 0 not reported.
    pub fn cntrltype(&self) -> u8 {
        self.bytes[111]
    }
    /// Keep Alive Support granularity (KAS, bytes 321:320), in 100 ms units.
    pub fn kas(&self) -> u16 {
        self.le(320..322) as u16
    }
    /// I/O Queue Command Capsule Supported Size (IOCCSZ, bytes 1795:1792),
    /// in 16-byte units (fabrics): the SQE plus in-capsule data.
    pub fn ioccsz(&self) -> u32 {
        self.le(1792..1796) as u32
    }
    /// In Capsule Data Offset (ICDOFF, bytes 1801:1800), in 16-byte units.
    pub fn icdoff(&self) -> u16 {
        self.le(1800..1802) as u16
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

byte_view!(
    /// SMART / Health Information log page (figure 207), 512 bytes.
    HealthLog,
    512
);

/// Byte ranges of [`HealthLog`] fields (figure 207).
pub mod health_field {
    use std::ops::Range;
    /// Critical Warning.
    pub const CRITICAL_WARNING: Range<usize> = 0..1;
    /// Composite Temperature (kelvin).
    pub const TEMPERATURE: Range<usize> = 1..3;
    /// Available Spare (%).
    pub const AVAILABLE_SPARE: Range<usize> = 3..4;
    /// Available Spare Threshold (%).
    pub const AVAILABLE_SPARE_THRESHOLD: Range<usize> = 4..5;
    /// Percentage Used.
    pub const PERCENTAGE_USED: Range<usize> = 5..6;
    /// Data Units Read (1000 x 512 bytes).
    pub const DATA_UNITS_READ: Range<usize> = 32..48;
    /// Data Units Written.
    pub const DATA_UNITS_WRITTEN: Range<usize> = 48..64;
    /// Host Read Commands.
    pub const HOST_READ_COMMANDS: Range<usize> = 64..80;
    /// Host Write Commands.
    pub const HOST_WRITE_COMMANDS: Range<usize> = 80..96;
    /// Controller Busy Time (minutes).
    pub const CONTROLLER_BUSY_TIME: Range<usize> = 96..112;
    /// Power Cycles.
    pub const POWER_CYCLES: Range<usize> = 112..128;
    /// Power On Hours.
    pub const POWER_ON_HOURS: Range<usize> = 128..144;
    /// Unsafe Shutdowns.
    pub const UNSAFE_SHUTDOWNS: Range<usize> = 144..160;
    /// Media and Data Integrity Errors.
    pub const MEDIA_ERRORS: Range<usize> = 160..176;
    /// Number of Error Information Log Entries.
    pub const NUM_ERROR_LOG_ENTRIES: Range<usize> = 176..192;
    /// Warning Composite Temperature Time (minutes).
    pub const WARNING_TEMP_TIME: Range<usize> = 192..196;
    /// Critical Composite Temperature Time (minutes).
    pub const CRITICAL_TEMP_TIME: Range<usize> = 196..200;
    /// Temperature Sensors 1..8 (kelvin, 0: not implemented), 2 bytes each.
    pub const TEMP_SENSORS: Range<usize> = 200..216;
}

impl HealthLog {
    /// Critical warning bits.
    pub fn critical_warning(&self) -> u8 {
        self.bytes[0]
    }
    /// Composite temperature in kelvin.
    pub fn temperature(&self) -> u16 {
        self.le(health_field::TEMPERATURE) as u16
    }
    /// Available spare, percent.
    pub fn available_spare(&self) -> u8 {
        self.bytes[health_field::AVAILABLE_SPARE.start]
    }
    /// Available spare threshold, percent.
    pub fn available_spare_threshold(&self) -> u8 {
        self.bytes[health_field::AVAILABLE_SPARE_THRESHOLD.start]
    }
    /// Percentage used.
    pub fn percentage_used(&self) -> u8 {
        self.bytes[health_field::PERCENTAGE_USED.start]
    }
    /// A 128-bit counter field.
    pub fn counter(&self, r: Range<usize>) -> u128 {
        self.le128(r)
    }
    /// Data units read.
    pub fn data_units_read(&self) -> u128 {
        self.le128(health_field::DATA_UNITS_READ)
    }
    /// Data units written.
    pub fn data_units_written(&self) -> u128 {
        self.le128(health_field::DATA_UNITS_WRITTEN)
    }
    /// Host read commands.
    pub fn host_read_commands(&self) -> u128 {
        self.le128(health_field::HOST_READ_COMMANDS)
    }
    /// Host write commands.
    pub fn host_write_commands(&self) -> u128 {
        self.le128(health_field::HOST_WRITE_COMMANDS)
    }
    /// Power cycles.
    pub fn power_cycles(&self) -> u128 {
        self.le128(health_field::POWER_CYCLES)
    }
    /// Power-on hours.
    pub fn power_on_hours(&self) -> u128 {
        self.le128(health_field::POWER_ON_HOURS)
    }
    /// Unsafe shutdowns.
    pub fn unsafe_shutdowns(&self) -> u128 {
        self.le128(health_field::UNSAFE_SHUTDOWNS)
    }
    /// Media errors.
    pub fn media_errors(&self) -> u128 {
        self.le128(health_field::MEDIA_ERRORS)
    }
    /// Error log entries.
    pub fn num_error_log_entries(&self) -> u128 {
        self.le128(health_field::NUM_ERROR_LOG_ENTRIES)
    }
    /// Minutes above the warning composite temperature threshold.
    pub fn warning_temp_time(&self) -> u32 {
        self.le(health_field::WARNING_TEMP_TIME) as u32
    }
    /// Minutes above the critical composite temperature threshold.
    pub fn critical_temp_time(&self) -> u32 {
        self.le(health_field::CRITICAL_TEMP_TIME) as u32
    }
    /// Temperature sensor `i` (0..8) in kelvin; 0 when not implemented.
    pub fn temp_sensor(&self, i: usize) -> u16 {
        let at = health_field::TEMP_SENSORS.start + 2 * i.min(7);
        self.le(at..at + 2) as u16
    }
    /// Sets the composite temperature.
    pub fn set_temperature(&mut self, k: u16) {
        self.set_le(health_field::TEMPERATURE, k as u64)
    }
}

byte_view!(
    /// Error Information log entry (figure 205), 64 bytes.
    ErrorLogEntry,
    64
);

/// Byte ranges of [`ErrorLogEntry`] fields (figure 205).
pub mod error_field {
    use std::ops::Range;
    /// Error Count.
    pub const ERROR_COUNT: Range<usize> = 0..8;
    /// Submission Queue ID.
    pub const SQID: Range<usize> = 8..10;
    /// Command ID.
    pub const CID: Range<usize> = 10..12;
    /// Status Field (bit 0 phase, 15:1 status).
    pub const STATUS: Range<usize> = 12..14;
    /// LBA.
    pub const LBA: Range<usize> = 16..24;
    /// Namespace.
    pub const NSID: Range<usize> = 24..28;
}

impl ErrorLogEntry {
    /// Error count (0: empty entry).
    pub fn error_count(&self) -> u64 {
        self.le(error_field::ERROR_COUNT)
    }
    /// Submission queue id.
    pub fn sqid(&self) -> u16 {
        self.le(error_field::SQID) as u16
    }
    /// Command id.
    pub fn cid(&self) -> u16 {
        self.le(error_field::CID) as u16
    }
    /// The status.
    pub fn status(&self) -> crate::status::Status {
        crate::status::Status::from_raw((self.le(error_field::STATUS) >> 1) as u16)
    }
    /// LBA.
    pub fn lba(&self) -> u64 {
        self.le(error_field::LBA)
    }
    /// Namespace.
    pub fn nsid(&self) -> u32 {
        self.le(error_field::NSID) as u32
    }
}

byte_view!(
    /// Firmware Slot Information log page (figure 208), 512 bytes.
    FirmwareSlotLog,
    512
);

impl FirmwareSlotLog {
    /// Active Firmware Info: the active slot (bits 2:0).
    pub fn active_slot(&self) -> u8 {
        self.bytes[0] & 0b111
    }
    /// The revision in slot `n` (1..=7), empty if none.
    pub fn revision(&self, n: usize) -> String {
        let o = 8 * n.clamp(1, 7);
        self.text(o..o + 8)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields() {
        // MQES 2047, CQR, TO 15 (7.5 s), DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4.
        let cap = Cap(0x0040_0020_0f01_07ff);
        assert_eq!(cap.mqes(), 0x7ff);
        assert!(cap.cqr());
        assert_eq!(cap.to(), 0x0f);
        assert_eq!(cap.timeout_ms(), 7500);
        assert_eq!(cap.dstrd(), 0);
        assert_eq!(cap.css(), 1);
        assert_eq!(cap.mpsmin(), 0);
        assert_eq!(cap.mpsmax(), 4);
    }

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
    fn health_log_fields() {
        let mut h = HealthLog::default();
        h.set_temperature(323);
        h.bytes[health_field::HOST_READ_COMMANDS.start] = 0x10;
        h.bytes[health_field::HOST_READ_COMMANDS.start + 15] = 0x01;
        assert_eq!(h.temperature(), 323);
        assert_eq!(h.host_read_commands(), (1u128 << 120) | 0x10);
    }

    #[test]
    fn sgl_descriptor_layout() {
        let d = SglDescriptor::new(SglDescriptor::TYPE_LAST_SEGMENT, 0xabcd_0000, 48);
        assert_eq!(d.to_dwords(), [0xabcd_0000, 0, 48, 0x30 << 24]);
    }
}
