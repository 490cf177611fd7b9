//! The connection and options a subcommand runs with, and rpc.py's ways
//! of printing a result or an error.

use serde_json::{json, Map, Value};

use rspdk_rpc::{Error, RpcClient};
use rspdk_util::outln;

use crate::pyjson::to_python_json;
use crate::spec::Output;

/// Failure of a command: printed to stdout (as rpc.py does) and exit 1.
pub(crate) enum CliError {
    Message(String),
}

impl From<Error> for CliError {
    fn from(err: Error) -> Self {
        CliError::Message(err.to_string())
    }
}

/// Connection and options shared by runners.
pub(crate) struct Ctx {
    pub(crate) client: Option<RpcClient>,
    pub(crate) dry_run: bool,
    pub(crate) verbose: bool,
    /// The subcommand's RPC method, for runners shared by several methods.
    pub(crate) method_name: &'static str,
}

impl Ctx {
    /// Call `method`; an error response is formatted like rpc.py's
    /// JSONRPCException message.
    pub(crate) fn call(
        &mut self,
        method: &str,
        params: Map<String, Value>,
    ) -> Result<Value, CliError> {
        if self.dry_run {
            outln!(
                "Request:\n{}",
                to_python_json(&json!({"method": method, "params": params}), Some(2))
            );
            return Ok(Value::Null);
        }
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| CliError::Message("not connected".into()))?;
        if self.verbose {
            eprintln!(
                "INFO: Requests:\n{}\n",
                to_python_json(
                    &json!({"jsonrpc": "2.0", "method": method, "params": params}),
                    Some(2)
                )
            );
        }
        match client.call(method, Some(Value::Object(params.clone()))) {
            Ok(result) => {
                if self.verbose {
                    eprintln!("INFO: response:\n{}\n", to_python_json(&result, Some(2)));
                }
                Ok(result)
            }
            Err(Error::Response {
                request_id, error, ..
            }) => {
                let mut shown = params;
                shown.insert("method".into(), json!(method));
                shown.insert("req_id".into(), json!(request_id));
                Err(CliError::Message(format!(
                    "request:\n{}\nGot JSON-RPC error response\nresponse:\n{}",
                    to_python_json(&Value::Object(shown), Some(2)),
                    to_python_json(
                        &json!({"code": error.code, "message": error.message}),
                        Some(2)
                    ),
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    pub(crate) fn print(&self, output: Output, result: &Value) {
        if self.dry_run {
            return;
        }
        match output {
            Output::Json => outln!("{}", to_python_json(result, Some(2))),
            Output::JsonUnquoted => {
                let text = to_python_json(result, Some(2));
                outln!("{}", text.trim_matches('"'));
            }
            Output::Nothing => {}
            Output::Array => match result.as_array() {
                Some(a) => outln!(
                    "{}",
                    a.iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                None => outln!("{}", to_python_json(result, Some(2))),
            },
        }
    }
}
