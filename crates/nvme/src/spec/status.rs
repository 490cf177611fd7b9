//! Completion status codes by name, as [`Status`] values (status code
//! type and code; section 4.6.1, figures 127-130; NVMe over Fabrics 1.1,
//! figure 21). [`crate::status`] holds the type and every code's name.

pub use crate::status::{sct, Status};

/// Generic Command Status (SCT 0, figure 127).
pub mod generic {
    use super::{sct, Status};
    const fn g(sc: u8) -> Status {
        Status::new(sct::GENERIC, sc)
    }
    /// Successful Completion.
    pub const SUCCESS: Status = g(0x00);
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = g(0x01);
    /// Invalid Field in Command.
    pub const INVALID_FIELD: Status = g(0x02);
    /// Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: Status = g(0x04);
    /// Commands Aborted due to Power Loss Notification.
    pub const ABORTED_POWER_LOSS: Status = g(0x05);
    /// Internal Error.
    pub const INTERNAL: Status = g(0x06);
    /// Command Abort Requested.
    pub const ABORTED_BY_REQUEST: Status = g(0x07);
    /// Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: Status = g(0x08);
    /// Command Aborted due to Failed Fused Command.
    pub const ABORTED_FAILED_FUSED: Status = g(0x09);
    /// Command Aborted due to Missing Fused Command.
    pub const ABORTED_MISSING_FUSED: Status = g(0x0a);
    /// Invalid Namespace or Format.
    pub const INVALID_NS: Status = g(0x0b);
    /// Command Sequence Error.
    pub const SEQUENCE_ERROR: Status = g(0x0c);
    /// Data SGL Length Invalid.
    pub const SGL_LENGTH_INVALID: Status = g(0x0f);
    /// SGL Descriptor Type Invalid.
    pub const SGL_TYPE_INVALID: Status = g(0x11);
    /// Transient Transport Error: what a command whose data digest did not
    /// match ends with (NVMe/TCP, TP 8000 section 7.4.6).
    pub const TRANSIENT_TRANSPORT: Status = g(0x22);
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: Status = g(0x80);
    /// Namespace Not Ready (retryable: DNR clear).
    pub const NS_NOT_READY: Status = g(0x82);
}

/// Command Specific Status (SCT 1, figure 128; Connect's codes from NVMe
/// over Fabrics 1.1, figure 21).
pub mod command_specific {
    use super::{sct, Status};
    const fn c(sc: u8) -> Status {
        Status::new(sct::COMMAND_SPECIFIC, sc)
    }
    /// Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT_EXCEEDED: Status = c(0x05);
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: Status = c(0x09);
    /// Connect: Incompatible Format.
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = c(0x80);
    /// Connect: Controller Busy.
    pub const CONNECT_CONTROLLER_BUSY: Status = c(0x81);
    /// Connect: Invalid Parameters (DW0 names the parameter, see
    /// [`crate::spec::fabrics::connect_invalid_dw0`]).
    pub const CONNECT_INVALID_PARAMETERS: Status = c(0x82);
    /// Connect: Restart Discovery.
    pub const CONNECT_RESTART_DISCOVERY: Status = c(0x83);
    /// Connect: Invalid Host.
    pub const CONNECT_INVALID_HOST: Status = c(0x84);
}

/// Media and Data Integrity Errors (SCT 2, figure 130).
pub mod media {
    use super::{sct, Status};
    const fn m(sc: u8) -> Status {
        Status::new(sct::MEDIA_ERROR, sc)
    }
    /// Unrecovered Read Error.
    pub const UNRECOVERED_READ_ERROR: Status = m(0x81);
    /// Compare Failure.
    pub const COMPARE_FAILURE: Status = m(0x85);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_codes_carry_their_names() {
        assert_eq!(generic::SUCCESS, Status::SUCCESS);
        assert_eq!(generic::INVALID_FIELD.name(), "Invalid Field in Command");
        assert_eq!(
            generic::ABORTED_FAILED_FUSED.name(),
            "Command Aborted due to Failed Fused Command"
        );
        assert_eq!(
            generic::TRANSIENT_TRANSPORT.name(),
            "Transient Transport Error"
        );
        assert_eq!(generic::NS_NOT_READY.name(), "Namespace Not Ready");
        assert_eq!(
            command_specific::AER_LIMIT_EXCEEDED.name(),
            "Asynchronous Event Request Limit Exceeded"
        );
        assert_eq!(
            command_specific::INVALID_LOG_PAGE.name(),
            "Invalid Log Page"
        );
        assert_eq!(media::COMPARE_FAILURE.name(), "Compare Failure");
        assert_eq!(
            (
                command_specific::CONNECT_INVALID_HOST.sct(),
                command_specific::CONNECT_INVALID_HOST.sc()
            ),
            (1, 0x84)
        );
        assert!(!generic::SUCCESS.is_error() && generic::INTERNAL.is_error());
    }
}
