//! Property tests: arbitrary or mutated input to the protocol session never
//! panics, and always yields well-formed responses or an error.

mod common;

use proptest::prelude::*;
use rspdk_rpc::{RpcRegistry, Session};
use serde_json::Value;

const VALID_REQUESTS: &[&str] = &[
    r#"{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":2},"id":1}"#,
    r#"{"jsonrpc":"2.0","method":"echo","params":["x",{"y":[1,2]}],"id":"s"}"#,
    r#"[{"method":"echo","id":1},{"method":"nope"},{"method":"add","params":{"a":1},"id":2}]"#,
    r#"{"method":"rpc_get_methods","params":{"current":true},"id":null}"#,
    r#"{"method":"park","id":9}"#,
];

/// Feed `chunks` to a fresh session, then end the input; return the output.
fn run_session(chunks: &[Vec<u8>]) -> (Vec<u8>, Session) {
    let registry = RpcRegistry::new();
    common::register_test_methods(&registry);
    let mut session = Session::new(registry, 4096);
    for chunk in chunks {
        session.receive(chunk);
        session.process(usize::MAX);
    }
    session.finish_input();
    (session.take_output(), session)
}

fn is_response(value: &Value) -> bool {
    let Some(object) = value.as_object() else {
        return false;
    };
    object.get("jsonrpc") == Some(&Value::String("2.0".into()))
        && object.contains_key("id")
        && (object.contains_key("result") ^ object.contains_key("error"))
}

/// Every output value is a response or a non-empty array of responses.
fn assert_well_formed(output: &[u8]) -> usize {
    let mut count = 0;
    for value in serde_json::Deserializer::from_slice(output).into_iter::<Value>() {
        let value = value.expect("output is valid JSON");
        match &value {
            Value::Array(items) => assert!(
                !items.is_empty() && items.iter().all(is_response),
                "{value}"
            ),
            other => assert!(is_response(other), "{other}"),
        }
        count += 1;
    }
    count
}

/// True if `input` is nothing but valid notifications (which get no answer).
fn only_notifications(input: &[u8]) -> bool {
    serde_json::Deserializer::from_slice(input)
        .into_iter::<Value>()
        .all(|value| match value {
            Ok(Value::Object(o)) => !o.contains_key("id"),
            Ok(Value::Array(items)) => {
                !items.is_empty()
                    && items
                        .iter()
                        .all(|i| i.as_object().is_some_and(|o| !o.contains_key("id")))
            }
            _ => false,
        })
}

fn mutate(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for &(pos, kind, byte) in edits {
        let at = if bytes.is_empty() {
            0
        } else {
            pos % (bytes.len() + 1)
        };
        match kind % 3 {
            0 if at < bytes.len() => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            _ if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => {}
        }
    }
    bytes
}

fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for point in points.into_iter().chain([bytes.len()]) {
        chunks.push(bytes[last..point].to_vec());
        last = point;
    }
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_get_a_response_or_error(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                            cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let (output, _) = run_session(&split(&bytes, &cuts));
        let responses = assert_well_formed(&output);
        if bytes.iter().any(|b| !b.is_ascii_whitespace()) && !only_notifications(&bytes) {
            prop_assert!(responses > 0, "no response for {:?}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn mutated_requests_get_a_response_or_error(
        which in 0..VALID_REQUESTS.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        repeat in 1usize..4,
    ) {
        let mut input = Vec::new();
        for _ in 0..repeat {
            input.extend_from_slice(&mutate(VALID_REQUESTS[which].as_bytes(), &edits));
        }
        let (output, session) = run_session(&split(&input, &cuts));
        let responses = assert_well_formed(&output);
        let parked = session.outstanding() > 0;
        if input.iter().any(|b| !b.is_ascii_whitespace()) && !only_notifications(&input) && !parked {
            prop_assert!(responses > 0, "no response for {:?}", String::from_utf8_lossy(&input));
        }
    }
}

#[test]
fn unmutated_requests_are_all_answered_when_split_anywhere() {
    let input: Vec<u8> = VALID_REQUESTS[..4].concat().into_bytes();
    for cut in 0..input.len() {
        let (output, session) = run_session(&[input[..cut].to_vec(), input[cut..].to_vec()]);
        assert_eq!(assert_well_formed(&output), 4, "cut at {cut}");
        assert!(session.error().is_none());
    }
}
