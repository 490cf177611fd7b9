//! [`Responder`]: the handle a method handler uses to answer its request,
//! now or later.

use std::cell::RefCell;
use std::fmt;
use std::rc::{Rc, Weak};

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::RpcError;

/// Responses waiting to be written to one connection, shared between the
/// connection and the responders of its in-flight requests.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Serialized responses not yet written to the socket.
    pub(crate) bytes: Vec<u8>,
    /// Requests (or batches) dispatched on this connection whose responder
    /// has not completed yet.
    pub(crate) outstanding: usize,
}

/// Collects the responses of one batch request; the array is written when
/// the last member completes.
struct BatchCollector {
    outbox: Weak<RefCell<Outbox>>,
    /// One slot per batch member; `None` for notifications and members not
    /// yet completed.
    slots: Vec<Option<Value>>,
    /// Members not completed yet, plus one held by the dispatcher until all
    /// members have been dispatched (so a batch of synchronous handlers is
    /// not finalized after its first member).
    remaining: usize,
}

/// Handle to a batch under dispatch; see [`BatchCollector`].
pub(crate) struct BatchHandle(Rc<RefCell<BatchCollector>>);

impl BatchHandle {
    /// Start a batch of `len` members on a connection.
    pub(crate) fn new(outbox: &Rc<RefCell<Outbox>>, len: usize) -> Self {
        outbox.borrow_mut().outstanding += 1;
        Self(Rc::new(RefCell::new(BatchCollector {
            outbox: Rc::downgrade(outbox),
            slots: vec![None; len],
            remaining: len + 1,
        })))
    }

    /// Responder for member `index`; `id` is `None` for a notification.
    pub(crate) fn member(&self, index: usize, id: Option<Value>) -> Responder {
        Responder {
            target: Some(Target::BatchMember {
                batch: Rc::clone(&self.0),
                index,
                id,
            }),
        }
    }

    /// All members dispatched: release the dispatcher's hold.
    pub(crate) fn finish_dispatch(self) {
        complete_batch_member(&self.0, None);
    }
}

fn complete_batch_member(batch: &Rc<RefCell<BatchCollector>>, slot: Option<(usize, Value)>) {
    let mut collector = batch.borrow_mut();
    if let Some((index, response)) = slot {
        collector.slots[index] = Some(response);
    }
    collector.remaining -= 1;
    if collector.remaining > 0 {
        return;
    }
    let Some(outbox) = collector.outbox.upgrade() else {
        tracing::debug!("dropping batch response: connection closed");
        return;
    };
    let responses: Vec<Value> = collector
        .slots
        .iter_mut()
        .filter_map(Option::take)
        .collect();
    let mut outbox = outbox.borrow_mut();
    outbox.outstanding -= 1;
    // A batch of notifications only gets no response at all (JSON-RPC 2.0).
    if !responses.is_empty() {
        write_line(&mut outbox.bytes, &Value::Array(responses));
    }
}

/// Append `value` and a newline (SPDK ends each response with '\n').
pub(crate) fn write_line(buf: &mut Vec<u8>, value: &Value) {
    // Writing a `Value` into a Vec cannot fail: all map keys are strings.
    if serde_json::to_writer(&mut *buf, value).is_ok() {
        buf.push(b'\n');
    }
}

/// Build a JSON-RPC 2.0 response object.
pub(crate) fn response_object(id: Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(error) => json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": error.code, "message": error.message},
        }),
    }
}

/// Completion callback of an in-process call (see [`crate::RpcRegistry::call`]).
pub type CompletionCallback = Box<dyn FnOnce(Result<Value, RpcError>)>;

enum Target {
    Connection {
        outbox: Weak<RefCell<Outbox>>,
        /// `None` for a notification: the result is discarded.
        id: Option<Value>,
    },
    BatchMember {
        batch: Rc<RefCell<BatchCollector>>,
        index: usize,
        id: Option<Value>,
    },
    InProcess(CompletionCallback),
}

/// Answers one request. A handler receives it with the params and must
/// eventually call exactly one of [`Responder::success`],
/// [`Responder::error`] or [`Responder::complete`] — either before returning
/// or later, from the same thread (it is deliberately `!Send`), e.g. when an
/// asynchronous operation finishes.
///
/// * If the client disconnected meanwhile, completing is a cheap no-op.
/// * If the request was a notification, the response is discarded.
/// * Dropping a responder without completing it sends an internal error
///   (-32603) so the client is never left waiting forever.
pub struct Responder {
    target: Option<Target>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.target {
            Some(Target::Connection { .. }) => "connection",
            Some(Target::BatchMember { .. }) => "batch member",
            Some(Target::InProcess(_)) => "in-process",
            None => "completed",
        };
        f.debug_struct("Responder").field("target", &kind).finish()
    }
}

impl Responder {
    /// Responder for a request received on a connection; registers the
    /// request as outstanding on the connection's outbox.
    pub(crate) fn for_connection(outbox: &Rc<RefCell<Outbox>>, id: Option<Value>) -> Self {
        outbox.borrow_mut().outstanding += 1;
        Self {
            target: Some(Target::Connection {
                outbox: Rc::downgrade(outbox),
                id,
            }),
        }
    }

    /// Responder whose completion calls `on_complete` (in-process calls).
    pub fn in_process(on_complete: impl FnOnce(Result<Value, RpcError>) + 'static) -> Self {
        Self {
            target: Some(Target::InProcess(Box::new(on_complete))),
        }
    }

    /// True if the request was a notification (its response is discarded).
    pub fn is_notification(&self) -> bool {
        matches!(
            &self.target,
            Some(Target::Connection { id: None, .. }) | Some(Target::BatchMember { id: None, .. })
        )
    }

    /// False if the client that sent the request has gone away (a handler
    /// may then skip expensive work; completing is still allowed).
    pub fn is_connected(&self) -> bool {
        match &self.target {
            Some(Target::Connection { outbox, .. }) => outbox.strong_count() > 0,
            Some(Target::BatchMember { batch, .. }) => batch.borrow().outbox.strong_count() > 0,
            Some(Target::InProcess(_)) => true,
            None => false,
        }
    }

    /// Complete with a successful result. If `result` cannot be serialized
    /// to JSON the client gets an internal error instead.
    pub fn success<T: Serialize + ?Sized>(self, result: &T) {
        let result = serde_json::to_value(result)
            .map_err(|e| RpcError::internal_error(format!("failed to serialize result: {e}")));
        self.complete(result);
    }

    /// Complete with an error response.
    pub fn error(self, error: RpcError) {
        self.complete(Err(error));
    }

    /// Complete with either a result or an error.
    pub fn complete(mut self, result: Result<Value, RpcError>) {
        if let Some(target) = self.target.take() {
            deliver(target, result);
        }
    }
}

fn deliver(target: Target, result: Result<Value, RpcError>) {
    match target {
        Target::Connection { outbox, id } => {
            let Some(outbox) = outbox.upgrade() else {
                tracing::debug!("dropping RPC response: connection closed");
                return;
            };
            let mut outbox = outbox.borrow_mut();
            outbox.outstanding -= 1;
            if let Some(id) = id {
                write_line(&mut outbox.bytes, &response_object(id, result));
            }
        }
        Target::BatchMember { batch, index, id } => {
            let slot = id.map(|id| (index, response_object(id, result)));
            complete_batch_member(&batch, slot);
        }
        Target::InProcess(on_complete) => on_complete(result),
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(target) = self.target.take() {
            tracing::warn!("RPC handler dropped its responder without responding");
            deliver(
                target,
                Err(RpcError::internal_error(
                    "Internal error: method handler did not produce a response",
                )),
            );
        }
    }
}
