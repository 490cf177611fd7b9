//! JSON-RPC 2.0 server for rspdk, compatible with SPDK's `lib/jsonrpc` +
//! `lib/rpc` wire protocol (so SPDK's `scripts/rpc.py` drives it unchanged),
//! plus a small blocking client used by the `rspdk_rpc` CLI.
//!
//! This crate depends on neither the thread layer nor bdev.
//!
//! # Server model
//!
//! * **Poll-driven, single-threaded.** [`RpcServer`] owns a non-blocking
//!   listening socket (Unix, default [`DEFAULT_SOCKET_PATH`], or TCP) and its
//!   connections. It never blocks, never spawns threads, and does nothing on
//!   its own: the owner calls [`RpcServer::poll`] repeatedly (from a poller on
//!   one SPDK-style thread). Each poll accepts new connections, reads what is
//!   available, dispatches complete requests, writes pending responses, drops
//!   closed connections, and returns [`PollStatus::Busy`] or
//!   [`PollStatus::Idle`]. The work per poll is bounded
//!   ([`ServerConfig::max_requests_per_poll`], 64 KiB read per connection).
//! * **Wire format.** JSON values back to back on the stream, with or without
//!   whitespace between them, as rpc.py sends them; requests may be split
//!   across reads or several may arrive in one. Batches (arrays) and
//!   notifications (no `id`: no response) follow JSON-RPC 2.0. Every
//!   response ends with `\n` like SPDK's. Malformed JSON gets -32700 and a
//!   request over [`ServerConfig::max_request_size`] (SPDK's 256 KiB by
//!   default) gets -32600; either closes that connection only.
//! * **Methods and states.** An [`RpcRegistry`] (cheap to clone, shared)
//!   maps method names to handlers and the [`StateMask`] in which each may be
//!   called, and holds the current [`RpcState`] (startup until the owner,
//!   typically the `framework_start_init` handler, calls
//!   [`RpcRegistry::set_state`] or a captured [`StateHandle`]). Calling a method outside its states gets
//!   SPDK's error: code -1 (`SPDK_JSONRPC_ERROR_INVALID_STATE`) with SPDK's
//!   exact message. Deprecated aliases: [`RpcRegistry::register_alias`].
//!   `rpc_get_methods` (`current`, `include_aliases`) is built in.
//! * **Asynchronous responses.** A handler is
//!   `Fn(Option<serde_json::Value>, Responder)`. It may complete the
//!   [`Responder`] before returning, or keep it and complete it later from
//!   the same thread (e.g. in an I/O completion callback); the connection
//!   stays open until it is answered. If the client has gone away, completing
//!   is a silent no-op; dropping a responder unanswered sends -32603.
//! * **In-process calls.** [`RpcRegistry::call`] runs a method exactly as if
//!   it came from a socket (state check included) and reports the result to
//!   a callback — this is how JSON config files are applied.
//! * **Params.** [`parse_params`] decodes into a `#[serde(deny_unknown_fields)]`
//!   struct and turns failures into -32602 messages that name the field.
//!
//! # Wiring it into a reactor
//!
//! ```no_run
//! use rspdk_rpc::{parse_params, RpcError, RpcRegistry, RpcServer, RpcState,
//!                 ServerConfig, StateMask, DEFAULT_SOCKET_PATH};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct LogSetLevel { level: String }
//!
//! let registry = RpcRegistry::new();
//! // Capture a state handle, not a registry clone (that would be an Rc cycle).
//! let state = registry.state_handle();
//! registry.register("framework_start_init", StateMask::STARTUP, move |_params, responder| {
//!     // ... start subsystems; when done (possibly later):
//!     state.set(RpcState::Runtime);
//!     responder.success(&true);
//! }).unwrap();
//! registry.register("log_set_level", StateMask::ALL, |params, responder| {
//!     match parse_params::<LogSetLevel>(params) {
//!         Ok(p) if p.level == "DEBUG" => responder.success(&true),
//!         Ok(p) => responder.error(RpcError::invalid_params(format!("bad level {}", p.level))),
//!         Err(e) => responder.error(e),
//!     }
//! }).unwrap();
//!
//! let mut server = RpcServer::listen_unix(DEFAULT_SOCKET_PATH, registry, ServerConfig::default())?;
//! // In the app this is a poller body: `move || server.poll() == PollStatus::Busy`.
//! loop {
//!     server.poll();
//! #   break;
//! }
//! # Ok::<(), rspdk_rpc::Error>(())
//! ```
//!
//! `Responder`, `RpcRegistry` and `RpcServer` are `!Send` on purpose: they
//! live on the one thread that polls the server. The server relies on
//! SIGPIPE being ignored (Rust programs do so by default) so that writing to
//! a vanished client yields `EPIPE` instead of killing the process.

pub mod client;
pub mod error;
pub mod framing;
pub mod params;
pub mod registry;
pub mod responder;
pub mod server;
pub mod session;
pub mod typed;

pub use client::RpcClient;
pub use error::{codes, Error, RpcError};
pub use params::{expect_no_params, parse_params};
pub use registry::{RpcRegistry, RpcState, StateHandle, StateMask, WeakRegistry};
pub use responder::Responder;
pub use server::{ListenAddr, PollStatus, RpcServer, ServerConfig, DEFAULT_SOCKET_PATH};
pub use session::{Session, SessionError, DEFAULT_MAX_REQUEST_SIZE};
