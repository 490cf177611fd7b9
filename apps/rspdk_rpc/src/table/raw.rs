//! Subcommands of the the raw `call` extension.

use crate::runners::*;
use crate::spec::*;

/// This area's subcommands, in rpc.py's order.
pub(super) fn methods() -> Vec<MethodSpec> {
    use Kind::*;
    vec![method(
        "call",
        "Call any RPC method with raw JSON params (rspdk extension)",
    )
    .pos("method", Str, "RPC method name")
    .arg(ArgSpec {
        key: "params",
        long: None,
        short: None,
        kind: Str,
        required: false,
        help: "Params as a JSON object or array",
        choices: &[],
        default: None,
    })
    .runner(run_raw_call)]
}
