//! The NVMe driver's error type.

use crate::status::Status;

/// Everything that can go wrong in the NVMe driver.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// A malformed argument: transport ID, LBA range, buffer, options.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The env layer failed (DMA memory, VFIO, PCI access).
    #[error("{context}: {source}")]
    Env {
        /// What the driver was doing.
        context: String,
        /// The env error.
        #[source]
        source: rspdk_env::EnvError,
    },

    /// The controller completed a command with an error status.
    #[error("{command} failed: {status}")]
    Command {
        /// The command, e.g. "Identify Controller".
        command: String,
        /// Its status, with the spec's name.
        status: Status,
    },

    /// The controller did not reach a state in time (CSTS.RDY, shutdown,
    /// an admin command).
    #[error("controller {traddr}: timed out after {ms} ms waiting for {what}")]
    Timeout {
        /// The controller.
        traddr: String,
        /// What did not happen.
        what: String,
        /// How long we waited.
        ms: u64,
    },

    /// The controller is failed (CSTS.CFS, removed, or a reset failed):
    /// nothing more is submitted until a reset succeeds.
    #[error("controller {traddr} has failed: {reason}")]
    ControllerFailed {
        /// The controller.
        traddr: String,
        /// Why.
        reason: String,
    },

    /// The controller was detached.
    #[error("controller {0} is detached")]
    Detached(String),

    /// No request objects left (the queue pair's `io_queue_requests`):
    /// poll completions and try again. SPDK: -ENOMEM.
    #[error(
        "no free requests on queue pair {qid} ({limit} in use): process completions and retry"
    )]
    NoRequests {
        /// The queue pair.
        qid: u16,
        /// Its request limit.
        limit: usize,
    },

    /// The controller or transport cannot do what was asked.
    #[error("not supported: {0}")]
    NotSupported(String),

    /// An NVMe/TCP connection failed or broke the protocol (connect refused,
    /// closed by the target, a bad PDU, a digest mismatch).
    #[error("NVMe/TCP {addr}: {reason}")]
    Transport {
        /// The target's address.
        addr: String,
        /// What went wrong, and the fix when there is one.
        reason: String,
    },

    /// Nothing matched the probe.
    #[error("not found: {0}")]
    NotFound(String),
}

impl NvmeError {
    pub(crate) fn env(context: impl Into<String>, source: rspdk_env::EnvError) -> Self {
        NvmeError::Env {
            context: context.into(),
            source,
        }
    }

    /// The (positive) errno SPDK would return.
    pub fn errno(&self) -> i32 {
        match self {
            NvmeError::InvalidArgument(_) => libc::EINVAL,
            NvmeError::Env { source, .. } => source.errno(),
            NvmeError::Command { .. } => libc::EIO,
            NvmeError::Timeout { .. } => libc::ETIMEDOUT,
            NvmeError::ControllerFailed { .. } => libc::ENXIO,
            NvmeError::Detached(_) => libc::ENODEV,
            NvmeError::NoRequests { .. } => libc::ENOMEM,
            NvmeError::NotSupported(_) => libc::ENOTSUP,
            NvmeError::NotFound(_) => libc::ENOENT,
            NvmeError::Transport { .. } => libc::ECONNABORTED,
        }
    }
}

/// The driver's result type.
pub type Result<T, E = NvmeError> = std::result::Result<T, E>;
