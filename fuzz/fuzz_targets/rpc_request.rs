//! Feeds arbitrary bytes, split at a fuzzer-chosen point, to the JSON-RPC
//! session (framing, parsing, validation, dispatch) and checks that every
//! output value is a well-formed response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rspdk_rpc::{RpcError, RpcRegistry, Session, StateMask};
use serde_json::Value;

fn registry() -> RpcRegistry {
    let registry = RpcRegistry::new();
    registry
        .register("echo", StateMask::ALL, |params, r| r.success(&params))
        .expect("fresh registry");
    registry
        .register("fail", StateMask::RUNTIME, |_, r| {
            r.error(RpcError::internal_error("fail"))
        })
        .expect("fresh registry");
    registry
}

fuzz_target!(|data: &[u8]| {
    let (split, bytes) = match data.split_first() {
        Some((split, rest)) => (*split as usize, rest),
        None => (0, data),
    };
    let cut = split.min(bytes.len());
    let mut session = Session::new(registry(), 64 * 1024);
    session.receive(&bytes[..cut]);
    session.process(usize::MAX);
    session.receive(&bytes[cut..]);
    session.process(usize::MAX);
    session.finish_input();
    let output = session.take_output();
    for value in serde_json::Deserializer::from_slice(&output).into_iter::<Value>() {
        let value = value.expect("server output is valid JSON");
        let responses = match value {
            Value::Array(items) => items,
            other => vec![other],
        };
        assert!(!responses.is_empty());
        for response in responses {
            assert_eq!(response["jsonrpc"], "2.0");
            assert!(response.get("result").is_some() != response.get("error").is_some());
        }
    }
});
