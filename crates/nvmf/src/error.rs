//! The crate's error type.

use std::io;

use rspdk_nvme::tcp::PduError;

/// Why an NVMe-oF operation (an RPC, a PDU, a connection) failed. Each
/// variant names the field or object at fault.
#[derive(Debug, thiserror::Error)]
pub enum NvmfError {
    /// A PDU broke the NVMe/TCP rules or a digest did not match.
    #[error(transparent)]
    Pdu(#[from] PduError),
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

impl NvmfError {
    /// A protocol error with the Fatal Error Status `fes`.
    pub fn pdu(fes: u8, offset: u32, what: impl Into<String>) -> NvmfError {
        NvmfError::Pdu(PduError::pdu(fes, offset, what))
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
