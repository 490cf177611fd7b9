//! Completion status (section 4.6.1, figures 126-131): the status code type
//! (SCT) and status code (SC) with their names from the spec.

/// A completion's status field (CQE DW3 bits 31:17, without the phase bit).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(u16);

/// Status code types (figure 126).
pub mod sct {
    /// Generic Command Status.
    pub const GENERIC: u8 = 0x0;
    /// Command Specific Status.
    pub const COMMAND_SPECIFIC: u8 = 0x1;
    /// Media and Data Integrity Errors.
    pub const MEDIA_ERROR: u8 = 0x2;
    /// Path Related Status.
    pub const PATH: u8 = 0x3;
    /// Vendor Specific.
    pub const VENDOR_SPECIFIC: u8 = 0x7;
}

/// Generic status codes used by the driver itself (figure 127).
pub mod sc {
    /// Successful Completion.
    pub const SUCCESS: u8 = 0x00;
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: u8 = 0x01;
    /// Invalid Field in Command.
    pub const INVALID_FIELD: u8 = 0x02;
    /// Internal Error.
    pub const INTERNAL_DEVICE_ERROR: u8 = 0x06;
    /// Command Abort Requested.
    pub const ABORTED_BY_REQUEST: u8 = 0x07;
    /// Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    /// Compare Failure (media error type).
    pub const COMPARE_FAILURE: u8 = 0x85;
}

const GENERIC: &[(u8, &str)] = &[
    (0x00, "Successful Completion"),
    (0x01, "Invalid Command Opcode"),
    (0x02, "Invalid Field in Command"),
    (0x03, "Command ID Conflict"),
    (0x04, "Data Transfer Error"),
    (0x05, "Commands Aborted due to Power Loss Notification"),
    (0x06, "Internal Error"),
    (0x07, "Command Abort Requested"),
    (0x08, "Command Aborted due to SQ Deletion"),
    (0x09, "Command Aborted due to Failed Fused Command"),
    (0x0a, "Command Aborted due to Missing Fused Command"),
    (0x0b, "Invalid Namespace or Format"),
    (0x0c, "Command Sequence Error"),
    (0x0d, "Invalid SGL Segment Descriptor"),
    (0x0e, "Invalid Number of SGL Descriptors"),
    (0x0f, "Data SGL Length Invalid"),
    (0x10, "Metadata SGL Length Invalid"),
    (0x11, "SGL Descriptor Type Invalid"),
    (0x12, "Invalid Use of Controller Memory Buffer"),
    (0x13, "PRP Offset Invalid"),
    (0x14, "Atomic Write Unit Exceeded"),
    (0x15, "Operation Denied"),
    (0x16, "SGL Offset Invalid"),
    (0x18, "Host Identifier Inconsistent Format"),
    (0x19, "Keep Alive Timer Expired"),
    (0x1a, "Keep Alive Timeout Invalid"),
    (0x1b, "Command Aborted due to Preempt and Abort"),
    (0x1c, "Sanitize Failed"),
    (0x1d, "Sanitize In Progress"),
    (0x1e, "SGL Data Block Granularity Invalid"),
    (0x1f, "Command Not Supported for Queue in CMB"),
    (0x20, "Namespace is Write Protected"),
    (0x21, "Command Interrupted"),
    (0x22, "Transient Transport Error"),
    (0x80, "LBA Out of Range"),
    (0x81, "Capacity Exceeded"),
    (0x82, "Namespace Not Ready"),
    (0x83, "Reservation Conflict"),
    (0x84, "Format In Progress"),
];

const COMMAND_SPECIFIC: &[(u8, &str)] = &[
    (0x00, "Completion Queue Invalid"),
    (0x01, "Invalid Queue Identifier"),
    (0x02, "Invalid Queue Size"),
    (0x03, "Abort Command Limit Exceeded"),
    (0x05, "Asynchronous Event Request Limit Exceeded"),
    (0x06, "Invalid Firmware Slot"),
    (0x07, "Invalid Firmware Image"),
    (0x08, "Invalid Interrupt Vector"),
    (0x09, "Invalid Log Page"),
    (0x0a, "Invalid Format"),
    (0x0b, "Firmware Activation Requires Conventional Reset"),
    (0x0c, "Invalid Queue Deletion"),
    (0x0d, "Feature Identifier Not Saveable"),
    (0x0e, "Feature Not Changeable"),
    (0x0f, "Feature Not Namespace Specific"),
    (0x10, "Firmware Activation Requires NVM Subsystem Reset"),
    (0x11, "Firmware Activation Requires Controller Level Reset"),
    (0x12, "Firmware Activation Requires Maximum Time Violation"),
    (0x13, "Firmware Activation Prohibited"),
    (0x14, "Overlapping Range"),
    (0x15, "Namespace Insufficient Capacity"),
    (0x16, "Namespace Identifier Unavailable"),
    (0x18, "Namespace Already Attached"),
    (0x19, "Namespace Is Private"),
    (0x1a, "Namespace Not Attached"),
    (0x1b, "Thin Provisioning Not Supported"),
    (0x1c, "Controller List Invalid"),
    (0x1d, "Device Self-test In Progress"),
    (0x1e, "Boot Partition Write Prohibited"),
    (0x1f, "Invalid Controller Identifier"),
    (0x20, "Invalid Secondary Controller State"),
    (0x21, "Invalid Number of Controller Resources"),
    (0x22, "Invalid Resource Identifier"),
    (
        0x23,
        "Sanitize Prohibited While Persistent Memory Region is Enabled",
    ),
    (0x24, "ANA Group Identifier Invalid"),
    (0x25, "ANA Attach Failed"),
    (0x80, "Conflicting Attributes"),
    (0x81, "Invalid Protection Information"),
    (0x82, "Attempted Write to Read Only Range"),
];

const MEDIA: &[(u8, &str)] = &[
    (0x80, "Write Fault"),
    (0x81, "Unrecovered Read Error"),
    (0x82, "End-to-end Guard Check Error"),
    (0x83, "End-to-end Application Tag Check Error"),
    (0x84, "End-to-end Reference Tag Check Error"),
    (0x85, "Compare Failure"),
    (0x86, "Access Denied"),
    (0x87, "Deallocated or Unwritten Logical Block"),
];

const PATH: &[(u8, &str)] = &[
    (0x00, "Internal Path Error"),
    (0x01, "Asymmetric Access Persistent Loss"),
    (0x02, "Asymmetric Access Inaccessible"),
    (0x03, "Asymmetric Access Transition"),
    (0x60, "Controller Pathing Error"),
    (0x70, "Host Pathing Error"),
    (0x71, "Command Aborted By Host"),
];

impl Status {
    /// From the 15-bit status field (CQE DW3 bits 31:17).
    pub const fn from_raw(raw: u16) -> Status {
        Status(raw & 0x7fff)
    }

    /// From a type and code (no DNR/More/CRD bits).
    pub const fn new(sct: u8, sc: u8) -> Status {
        Status(((sct as u16 & 0x7) << 8) | sc as u16)
    }

    /// Success.
    pub const SUCCESS: Status = Status::new(sct::GENERIC, sc::SUCCESS);

    /// What the driver reports for commands aborted by a reset, a failed
    /// controller or a detach: Command Aborted due to SQ Deletion, DNR set.
    pub const ABORTED_SQ_DELETION: Status =
        Status(Status::new(sct::GENERIC, sc::ABORTED_SQ_DELETION).0 | (1 << 14));

    /// The raw 15-bit field.
    pub const fn raw(self) -> u16 {
        self.0
    }
    /// Status Code (bits 7:0 of the field).
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }
    /// Status Code Type (bits 10:8).
    pub const fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }
    /// Command Retry Delay (bits 12:11).
    pub const fn crd(self) -> u8 {
        ((self.0 >> 11) & 0x3) as u8
    }
    /// More (bit 13): the Error log page has more.
    pub const fn more(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    /// Do Not Retry (bit 14).
    pub const fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// True unless SCT and SC are both 0.
    pub const fn is_error(self) -> bool {
        self.0 & 0x7ff != 0
    }

    /// The status code type's name.
    pub fn type_name(self) -> &'static str {
        match self.sct() {
            sct::GENERIC => "Generic Command Status",
            sct::COMMAND_SPECIFIC => "Command Specific Status",
            sct::MEDIA_ERROR => "Media and Data Integrity Errors",
            sct::PATH => "Path Related Status",
            sct::VENDOR_SPECIFIC => "Vendor Specific",
            _ => "Reserved",
        }
    }

    /// The status code's name from the spec, "Reserved" or "Vendor Specific".
    pub fn name(self) -> &'static str {
        let table = match self.sct() {
            sct::GENERIC => GENERIC,
            sct::COMMAND_SPECIFIC => COMMAND_SPECIFIC,
            sct::MEDIA_ERROR => MEDIA,
            sct::PATH => PATH,
            sct::VENDOR_SPECIFIC => return "Vendor Specific",
            _ => return "Reserved",
        };
        if self.sc() >= 0xc0 {
            return "Vendor Specific";
        }
        table
            .iter()
            .find(|(c, _)| *c == self.sc())
            .map_or("Reserved", |(_, n)| n)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (sct {:#x} sc {:#04x}{})",
            self.name(),
            self.sct(),
            self.sc(),
            if self.dnr() { ", dnr" } else { "" }
        )
    }
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Status::SUCCESS.name(), "Successful Completion");
        assert!(!Status::SUCCESS.is_error());
        assert_eq!(Status::new(0, 0x01).name(), "Invalid Command Opcode");
        assert_eq!(Status::new(0, 0x80).name(), "LBA Out of Range");
        assert_eq!(Status::new(1, 0x01).name(), "Invalid Queue Identifier");
        assert_eq!(Status::new(2, 0x85).name(), "Compare Failure");
        assert_eq!(Status::new(3, 0x71).name(), "Command Aborted By Host");
        assert_eq!(Status::new(0, 0x17).name(), "Reserved");
        assert_eq!(Status::new(0, 0xc3).name(), "Vendor Specific");
        assert_eq!(Status::new(7, 0x01).name(), "Vendor Specific");
        assert_eq!(Status::new(5, 0x01).name(), "Reserved");
        let s = Status::ABORTED_SQ_DELETION;
        assert!(s.dnr() && s.is_error());
        assert_eq!(
            s.to_string(),
            "Command Aborted due to SQ Deletion (sct 0x0 sc 0x08, dnr)"
        );
    }

    #[test]
    fn every_named_code_is_an_error_but_success() {
        for t in 0..8u8 {
            for c in 0..=255u8 {
                let s = Status::new(t, c);
                assert_eq!(s.is_error(), t != 0 || c != 0);
                assert!(!s.name().is_empty());
                assert_eq!((s.sct(), s.sc()), (t, c));
            }
        }
    }

    #[test]
    fn flag_bits() {
        let s = Status::from_raw((1 << 14) | (1 << 13) | (2 << 11) | (1 << 8) | 0x02);
        assert!(s.dnr());
        assert!(s.more());
        assert_eq!(s.crd(), 2);
        assert_eq!(s.sct(), 1);
        assert_eq!(s.name(), "Invalid Queue Size");
    }
}
