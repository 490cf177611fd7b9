//! Controller registers and, over fabrics, the properties at the same
//! offsets (section 3.1): CAP, CC, CSTS and the arbitration setting.

use super::bits;

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
}
