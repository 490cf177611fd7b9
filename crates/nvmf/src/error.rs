//! The crate's error type.

use std::io;

/// Why an NVMe-oF operation (an RPC, a PDU, a connection) failed. Each
/// variant names the field or object at fault.
#[derive(Debug, thiserror::Error)]
pub enum NvmfError {
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
    /// An RPC or config parameter is invalid.
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    /// A named object does not exist.
    #[error("{kind} '{name}' not found")]
    NotFound {
        /// Subsystem, namespace, transport, listener, host, bdev.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A named object exists already.
    #[error("{kind} '{name}' already exists")]
    Exists {
        /// Subsystem, namespace, transport, listener, host.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A bdev could not be opened or used.
    #[error("bdev: {0}")]
    Bdev(#[from] rspdk_bdev::BdevError),
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done (`listen on 127.0.0.1:4420`).
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
}

impl From<rspdk_nvme::tcp::PduError> for NvmfError {
    fn from(e: rspdk_nvme::tcp::PduError) -> Self {
        use rspdk_nvme::tcp::PduError;
        match e {
            PduError::BadPdu { what, fes, offset } => NvmfError::BadPdu { what, fes, offset },
            PduError::Digest { kind, got, want } => NvmfError::Digest { kind, got, want },
        }
    }
}

impl NvmfError {
    /// A protocol error with the Fatal Error Status `fes`.
    pub fn pdu(fes: u8, offset: u32, what: impl Into<String>) -> NvmfError {
        NvmfError::BadPdu {
            what: what.into(),
            fes,
            offset,
        }
    }

    /// An invalid parameter.
    pub fn param(what: impl Into<String>) -> NvmfError {
        NvmfError::InvalidParam(what.into())
    }

    /// The negative errno SPDK's RPCs answer with for this error.
    pub fn errno(&self) -> i32 {
        match self {
            NvmfError::NotFound { .. } => libc_enoent(),
            NvmfError::Exists { .. } => 17,
            NvmfError::Io { source, .. } => source.raw_os_error().unwrap_or(5),
            NvmfError::Bdev(e) => e.errno(),
            _ => 22,
        }
    }
}

const fn libc_enoent() -> i32 {
    2
}

/// Results of this crate.
pub type Result<T, E = NvmfError> = std::result::Result<T, E>;
