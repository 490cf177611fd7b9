//! The env layer's error type.
//!
//! One enum for the crate, with the context a caller needs to fix the
//! problem. [`EnvError::errno`] maps each variant to the errno SPDK returns
//! for the same condition, for callers that must answer in SPDK's terms
//! (RPC error codes, C-style return values).

use std::io;

/// Everything that can go wrong in the env layer.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// An argument is malformed: unaligned address, zero length, alignment
    /// that is not a power of two, a pointer we did not allocate. SPDK: `-EINVAL`.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The region overlaps one that is already registered, or a name is
    /// already taken. SPDK: `-EBUSY` / `-EEXIST`.
    #[error("busy: {0}")]
    Busy(String),

    /// The range covers part of a registration; registrations are removed
    /// whole. SPDK: `-ERANGE`.
    #[error("out of range: {0}")]
    OutOfRange(String),

    /// No memory left: the heap limit is reached or the kernel has no free
    /// hugepages. The message says which and what to do. SPDK: `-ENOMEM`.
    #[error("out of DMA memory: {0}")]
    NoMemory(String),

    /// Nothing is registered under that name or address. SPDK: `-ENOENT`.
    #[error("not found: {0}")]
    NotFound(String),

    /// The environment was already initialised, or is needed and was not.
    #[error("environment state: {0}")]
    State(String),

    /// VFIO or the IOMMU cannot give access to a device or to DMA memory:
    /// no IOMMU, a group that is not viable, memory beyond the aperture.
    /// The message names the fix. SPDK: `-ENODEV` / `-EFAULT`.
    #[error("IOMMU/VFIO: {0}")]
    Iommu(String),

    /// A PCI device cannot be used as asked (wrong driver, removed, in use
    /// by a mounted filesystem).
    #[error("PCI device {bdf}: {reason}")]
    Device {
        /// The device's address.
        bdf: String,
        /// What is wrong and what to do.
        reason: String,
    },

    /// A system call failed. `op` says which, `detail` what it was doing.
    #[error("{op} failed ({detail}): {source}")]
    Sys {
        /// The system call or file operation.
        op: &'static str,
        /// What it was applied to.
        detail: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl EnvError {
    /// The (positive) errno SPDK uses for this condition.
    pub fn errno(&self) -> i32 {
        match self {
            EnvError::InvalidArgument(_) => libc::EINVAL,
            EnvError::Busy(_) => libc::EBUSY,
            EnvError::OutOfRange(_) => libc::ERANGE,
            EnvError::NoMemory(_) => libc::ENOMEM,
            EnvError::NotFound(_) => libc::ENOENT,
            EnvError::State(_) => libc::EALREADY,
            EnvError::Iommu(_) => libc::ENODEV,
            EnvError::Device { .. } => libc::ENODEV,
            EnvError::Sys { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// Builds a [`EnvError::Sys`] from the current `errno`.
    pub(crate) fn last_os(op: &'static str, detail: impl Into<String>) -> Self {
        EnvError::Sys {
            op,
            detail: detail.into(),
            source: io::Error::last_os_error(),
        }
    }
}

/// The env layer's result type.
pub type Result<T, E = EnvError> = std::result::Result<T, E>;
