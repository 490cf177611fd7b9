//! [`Session`]: the byte-level JSON-RPC protocol of one connection, without
//! any socket. The server wraps one per connection; tests, the proptest and
//! the fuzz target drive it directly.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::Value;

use crate::error::RpcError;
use crate::framing::{Frame, FrameScanner};
use crate::registry::RpcRegistry;
use crate::responder::{response_object, write_line, BatchHandle, Outbox, Responder};

/// SPDK's per-connection receive buffer size (`SPDK_JSONRPC_RECV_BUF_SIZE`),
/// used as the default cap on one request's size.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 256 * 1024;

/// A request object that passed validation.
struct ValidRequest {
    method: String,
    params: Option<Value>,
    /// `None` for a notification (no `id` member).
    id: Option<Value>,
}

/// Validate one request object the way SPDK does: only the members
/// `jsonrpc`, `method`, `params`, `id`; `jsonrpc` if present must be "2.0";
/// `method` a string; `id` a string, number or null; `params` an object,
/// array or null. On failure returns the id to answer with (null if the id
/// itself was unusable).
fn validate_request(value: Value) -> Result<ValidRequest, Value> {
    let Value::Object(mut object) = value else {
        return Err(Value::Null);
    };
    let id = match object.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(_) => return Err(Value::Null),
    };
    let error_id = id.clone().unwrap_or(Value::Null);
    let valid_version = match object.remove("jsonrpc") {
        None => true,
        Some(Value::String(version)) => version == "2.0",
        Some(_) => false,
    };
    let method = match object.remove("method") {
        Some(Value::String(method)) => method,
        _ => return Err(error_id),
    };
    let params = match object.remove("params") {
        None | Some(Value::Null) => None,
        Some(params @ (Value::Object(_) | Value::Array(_))) => Some(params),
        Some(_) => return Err(error_id),
    };
    if !valid_version || !object.is_empty() {
        return Err(error_id);
    }
    Ok(ValidRequest { method, params, id })
}

/// Why a session stopped accepting input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// The stream held bytes that are not JSON; there is no way to find the
    /// start of the next request, so the connection must close.
    Parse,
    /// A request grew past the configured maximum size.
    RequestTooLarge,
}

/// Protocol state of one connection: buffers received bytes, splits them
/// into JSON values, dispatches requests through an [`RpcRegistry`] and
/// collects serialized responses.
///
/// After a [`SessionError`] the session has queued an error response and
/// ignores further input; the owner should flush the output and close.
pub struct Session {
    registry: RpcRegistry,
    recv: Vec<u8>,
    /// Bytes of `recv` before this offset belong to requests already handled.
    consumed: usize,
    scanner: FrameScanner,
    outbox: Rc<RefCell<Outbox>>,
    max_request_size: usize,
    error: Option<SessionError>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("buffered", &(self.recv.len() - self.consumed))
            .field("output", &self.output_len())
            .field("outstanding", &self.outstanding())
            .field("error", &self.error)
            .finish()
    }
}

impl Session {
    /// A session dispatching to `registry`, rejecting requests larger than
    /// `max_request_size` bytes.
    pub fn new(registry: RpcRegistry, max_request_size: usize) -> Self {
        Self {
            registry,
            recv: Vec::new(),
            consumed: 0,
            scanner: FrameScanner::new(),
            outbox: Rc::new(RefCell::new(Outbox::default())),
            max_request_size,
            error: None,
        }
    }

    /// Append received bytes. Nothing is dispatched until [`Session::process`].
    pub fn receive(&mut self, bytes: &[u8]) {
        if self.error.is_none() {
            self.recv.extend_from_slice(bytes);
        }
    }

    /// Dispatch up to `max_requests` complete requests (a batch counts as
    /// one) from the buffered input; returns how many were handled.
    /// Responses of synchronous handlers are in the output when this
    /// returns; asynchronous ones arrive when their responders complete.
    pub fn process(&mut self, max_requests: usize) -> usize {
        let mut handled = 0;
        while handled < max_requests && self.error.is_none() {
            let pending = &self.recv[self.consumed..];
            match self.scanner.scan(pending) {
                Frame::Complete { start, end } => {
                    self.scanner.reset();
                    let frame = pending[start..end].to_vec();
                    self.consumed += end;
                    handled += 1;
                    if frame.len() > self.max_request_size {
                        self.fail(SessionError::RequestTooLarge);
                    } else {
                        self.handle_frame(&frame);
                    }
                }
                Frame::Incomplete { start } => {
                    if pending.len() - start > self.max_request_size {
                        self.fail(SessionError::RequestTooLarge);
                    }
                    break;
                }
                Frame::Invalid { .. } => {
                    handled += 1;
                    self.fail(SessionError::Parse);
                }
            }
        }
        // Compact: the scanner's position is relative to `consumed`, so
        // dropping exactly the consumed prefix keeps it valid.
        if self.error.is_some() {
            self.recv = Vec::new();
            self.consumed = 0;
        } else if self.consumed > 0 {
            self.recv.drain(..self.consumed);
            self.consumed = 0;
        }
        handled
    }

    /// The peer closed its sending side. A truncated request left in the
    /// buffer is answered with a parse error (useful to a half-closed
    /// client; harmless otherwise). Call after a final [`Session::process`].
    pub fn finish_input(&mut self) {
        if self.error.is_some() {
            return;
        }
        let rest = &self.recv[self.consumed..];
        if rest.iter().any(|b| !b.is_ascii_whitespace()) {
            self.fail(SessionError::Parse);
        }
    }

    /// Why the session stopped accepting input, if it did.
    pub fn error(&self) -> Option<SessionError> {
        self.error
    }

    /// True if bytes of an incomplete request are buffered.
    pub fn has_partial_request(&self) -> bool {
        self.recv[self.consumed..]
            .iter()
            .any(|b| !b.is_ascii_whitespace())
    }

    /// Requests dispatched whose responders have not completed yet.
    pub fn outstanding(&self) -> usize {
        self.outbox.borrow().outstanding
    }

    /// Number of response bytes waiting to be sent.
    pub fn output_len(&self) -> usize {
        self.outbox.borrow().bytes.len()
    }

    /// Take all pending response bytes.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outbox.borrow_mut().bytes)
    }

    /// Hand the pending output to `write`, which returns how many bytes it
    /// consumed; those are removed from the output.
    pub fn write_output<E>(
        &mut self,
        write: impl FnOnce(&[u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let mut outbox = self.outbox.borrow_mut();
        let written = write(&outbox.bytes)?;
        outbox.bytes.drain(..written);
        Ok(written)
    }

    fn fail(&mut self, error: SessionError) {
        let response = match error {
            SessionError::Parse => RpcError::parse_error(),
            SessionError::RequestTooLarge => {
                RpcError::invalid_request_too_large(self.max_request_size)
            }
        };
        tracing::debug!(?error, "closing RPC connection after protocol error");
        write_line(
            &mut self.outbox.borrow_mut().bytes,
            &response_object(Value::Null, Err(response)),
        );
        self.error = Some(error);
    }

    fn handle_frame(&mut self, frame: &[u8]) {
        let value: Value = match serde_json::from_slice(frame) {
            Ok(value) => value,
            Err(err) => {
                tracing::debug!(%err, "JSON parse error");
                return self.fail(SessionError::Parse);
            }
        };
        match value {
            Value::Array(items) if items.is_empty() => {
                self.respond_invalid(Responder::for_connection(&self.outbox, Some(Value::Null)));
            }
            Value::Array(items) => {
                let batch = BatchHandle::new(&self.outbox, items.len());
                for (index, item) in items.into_iter().enumerate() {
                    match validate_request(item) {
                        Ok(request) => {
                            let responder = batch.member(index, request.id);
                            self.registry
                                .dispatch(&request.method, request.params, responder);
                        }
                        Err(id) => self.respond_invalid(batch.member(index, Some(id))),
                    }
                }
                batch.finish_dispatch();
            }
            value => match validate_request(value) {
                Ok(request) => {
                    let responder = Responder::for_connection(&self.outbox, request.id);
                    self.registry
                        .dispatch(&request.method, request.params, responder);
                }
                Err(id) => self.respond_invalid(Responder::for_connection(&self.outbox, Some(id))),
            },
        }
    }

    fn respond_invalid(&self, responder: Responder) {
        responder.error(RpcError::invalid_request());
    }
}
