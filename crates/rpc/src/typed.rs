//! Registering a method with typed params, in one place for every layer:
//! the params decode into a `serde` type (absent or `null` params as `{}`),
//! errors name the bad field, and the handler's own error type converts
//! into the JSON-RPC error it answers with.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{parse_params, Responder, RpcError, RpcRegistry, StateMask};

/// Absent or `null` params read as `{}` (SPDK's methods whose params are
/// all optional take either).
fn params_or_empty(params: Option<Value>) -> Option<Value> {
    match params {
        None | Some(Value::Null) => None,
        p => p,
    }
}

/// Registers `name`, whose params decode into `P` and whose handler `f`
/// answers at once: its value as the result, its error (converted to an
/// [`RpcError`], typically `-errno` and a message naming the problem) as the
/// error. A registration failure (a duplicate name) is logged.
pub fn method<P, E, F>(reg: &RpcRegistry, name: &str, states: StateMask, f: F)
where
    P: DeserializeOwned + 'static,
    E: Into<RpcError>,
    F: Fn(P) -> Result<Value, E> + 'static,
{
    let r = reg.register(
        name,
        states,
        move |params: Option<Value>, resp: Responder| match parse_params::<P>(params_or_empty(
            params,
        )) {
            Ok(p) => resp.complete(f(p).map_err(Into::into)),
            Err(e) => resp.error(e),
        },
    );
    if let Err(e) = r {
        tracing::error!(method = name, error = %e, "RPC method registration failed");
    }
}

/// Registers `name`, whose params decode into `P` and whose handler
/// answers later through the [`Responder`] it is given.
pub fn method_async<P, F>(reg: &RpcRegistry, name: &str, states: StateMask, f: F)
where
    P: DeserializeOwned + 'static,
    F: Fn(P, Responder) + 'static,
{
    let r = reg.register(
        name,
        states,
        move |params: Option<Value>, resp: Responder| match parse_params::<P>(params_or_empty(
            params,
        )) {
            Ok(p) => f(p, resp),
            Err(e) => resp.error(e),
        },
    );
    if let Err(e) = r {
        tracing::error!(method = name, error = %e, "RPC method registration failed");
    }
}
