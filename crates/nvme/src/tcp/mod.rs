//! The NVMe/TCP transport's wire format (NVM Express TCP Transport
//! Specification), shared by the host (this driver) and the target
//! (`rspdk_nvmf`), which depends on this crate.

pub mod host;
pub mod pdu;

/// Why a received PDU was refused. Each variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// A PDU broke the NVMe/TCP rules; `fes` is the Fatal Error Status the
    /// connection is terminated with and `offset` the byte at fault
    /// (NVMe/TCP 1.0, section 3.6.2.9).
    #[error("bad PDU: {what} (FES {fes:#x}, byte {offset})")]
    BadPdu {
        /// What was wrong, naming the field.
        what: String,
        /// Fatal Error Status for the termination PDU.
        fes: u8,
        /// Offset of the offending field in the PDU header.
        offset: u32,
    },
    /// A header or data digest did not match.
    #[error("{kind} digest mismatch: received {got:#010x}, computed {want:#010x}")]
    Digest {
        /// `header` or `data`.
        kind: &'static str,
        /// The digest in the PDU.
        got: u32,
        /// The CRC32C of the bytes.
        want: u32,
    },
}

impl PduError {
    /// A protocol error with the Fatal Error Status `fes`.
    pub fn pdu(fes: u8, offset: u32, what: impl Into<String>) -> PduError {
        PduError::BadPdu {
            what: what.into(),
            fes,
            offset,
        }
    }
}
