//! Error types: [`RpcError`] is what goes on the wire in a JSON-RPC error
//! response; [`Error`] is everything else that can fail in this crate
//! (binding the socket, registering methods, the client side).

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// JSON-RPC 2.0 and SPDK error codes.
pub mod codes {
    /// Invalid JSON was received (JSON-RPC 2.0).
    pub const PARSE_ERROR: i32 = -32700;
    /// The JSON sent is not a valid request object (JSON-RPC 2.0).
    pub const INVALID_REQUEST: i32 = -32600;
    /// The method does not exist (JSON-RPC 2.0).
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Invalid method parameters (JSON-RPC 2.0).
    pub const INVALID_PARAMS: i32 = -32602;
    /// Internal JSON-RPC error (JSON-RPC 2.0).
    pub const INTERNAL_ERROR: i32 = -32603;
    /// SPDK's `SPDK_JSONRPC_ERROR_INVALID_STATE`: the method exists but is not
    /// allowed in the server's current state (startup vs runtime).
    pub const INVALID_STATE: i32 = -1;
}

/// The `error` member of a JSON-RPC response: a code and a human message.
///
/// Handlers return this to fail a request. Besides the JSON-RPC codes, SPDK
/// handlers commonly use a negative errno as the code (see [`RpcError::from_errno`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("JSON-RPC error {code}: {message}")]
pub struct RpcError {
    /// Error code (see [`codes`]).
    pub code: i32,
    /// Human-readable description.
    pub message: String,
}

impl RpcError {
    /// An error with an arbitrary code and message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// -32700 "Parse error" (SPDK's text).
    pub fn parse_error() -> Self {
        Self::new(codes::PARSE_ERROR, "Parse error")
    }

    /// -32600 "Invalid request" (SPDK's text).
    pub fn invalid_request() -> Self {
        Self::new(codes::INVALID_REQUEST, "Invalid request")
    }

    /// -32601 "Method not found" (SPDK's text).
    pub fn method_not_found() -> Self {
        Self::new(codes::METHOD_NOT_FOUND, "Method not found")
    }

    /// -32602 with a message that should name the offending parameter.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMS, message)
    }

    /// -32603 with a message describing what went wrong inside the server.
    pub fn internal_error(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL_ERROR, message)
    }

    /// SPDK's invalid-state error (-1) with the given message.
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_STATE, message)
    }

    /// -32600 for a request over the per-connection size cap.
    pub fn invalid_request_too_large(limit: usize) -> Self {
        Self::new(
            codes::INVALID_REQUEST,
            format!("Invalid request: request exceeds the maximum size of {limit} bytes"),
        )
    }

    /// SPDK style errno error: code `-errno`, message the OS description
    /// (like `spdk_strerror`), e.g. `from_errno(19)` -> `-19 "No such device"`.
    /// Accepts a positive or negative errno.
    pub fn from_errno(errno: i32) -> Self {
        let errno = errno.checked_abs().unwrap_or(i32::MAX);
        let text = io::Error::from_raw_os_error(errno).to_string();
        // std appends " (os error N)"; SPDK's message is strerror's text alone.
        let message = match text.rfind(" (os error ") {
            Some(cut) => text[..cut].to_string(),
            None => text,
        };
        Self::new(-errno, message)
    }
}

/// Everything that can fail in this crate outside of a JSON-RPC response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating or binding the listening socket failed.
    #[error("failed to listen on RPC address {addr}: {source}")]
    Listen {
        /// The socket path or IP:port.
        addr: String,
        /// Underlying OS error.
        source: io::Error,
    },
    /// Another live process already serves RPC on this Unix socket path.
    #[error("RPC Unix socket {path} is in use by another process (stop it, or give this one another socket with -r)")]
    AddressInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The RPC socket path names something that is not a socket (a regular
    /// file, a directory): it is never deleted to make room.
    #[error("RPC socket path {path} exists and is not a socket but a {kind}: choose another path with -r, or remove it")]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What it is ("regular file", "directory", ...).
        kind: &'static str,
    },
    /// A method with this name (or alias) is already registered.
    #[error("RPC method `{name}` is already registered")]
    DuplicateMethod {
        /// The method name.
        name: String,
    },
    /// An alias was registered for a method that does not exist.
    #[error("cannot register RPC alias `{alias}`: method `{target}` is not registered")]
    UnknownAliasTarget {
        /// The alias name.
        alias: String,
        /// The method it should point to.
        target: String,
    },
    /// The client could not connect to the server.
    #[error(
        "Error while connecting to {addr}\nIs SPDK application running?\nError details: {source}"
    )]
    Connect {
        /// The socket path or IP address the client tried.
        addr: String,
        /// Underlying OS error.
        source: io::Error,
    },
    /// The client timed out waiting for a response.
    #[error("Timeout while waiting for response:\n{partial}\n")]
    Timeout {
        /// Whatever part of a response had arrived.
        partial: String,
    },
    /// The server closed the connection before a full response arrived.
    #[error("Connection closed with partial response:\n{partial}\n")]
    ConnectionClosed {
        /// Whatever part of a response had arrived.
        partial: String,
    },
    /// The server sent something that is not a JSON-RPC response.
    #[error("invalid response from RPC server: {reason}")]
    InvalidResponse {
        /// What was wrong with it.
        reason: String,
    },
    /// The server answered a call with a JSON-RPC error response.
    #[error("RPC {method} (request id {request_id}) failed: {error}")]
    Response {
        /// The method called.
        method: String,
        /// The id the client gave the request.
        request_id: u64,
        /// The `error` member of the response.
        error: RpcError,
    },
    /// I/O on an established client connection failed.
    #[error("{context}: {source}")]
    Io {
        /// What the client was doing.
        context: String,
        /// Underlying OS error.
        source: io::Error,
    },
}
