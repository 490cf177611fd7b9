//! Helpers for decoding request params into typed structs.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::RpcError;

/// Decode `params` into `T`, mapping failures to -32602 with a message that
/// names the offending field, e.g.
/// ``invalid params: unknown field `foo`, expected one of `name`, `size` `` or
/// ``invalid params: block_size: invalid type: string "x", expected u32``.
///
/// Absent params decode as an empty object, so a struct whose fields are all
/// optional accepts a request without params. Give `T`
/// `#[serde(deny_unknown_fields)]` to reject misspelled parameters like SPDK
/// does.
pub fn parse_params<T: DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    let value = params.unwrap_or_else(|| Value::Object(Map::new()));
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        // serde's own message already names a top-level unknown field.
        let named = inner.to_string().contains(&format!("`{path}`"));
        if path == "." || path.is_empty() || named {
            RpcError::invalid_params(format!("invalid params: {inner}"))
        } else {
            RpcError::invalid_params(format!("invalid params: {path}: {inner}"))
        }
    })
}

/// Check that a method that takes no parameters got none (absent, null, or
/// an empty object/array). The error text follows SPDK:
/// "`method` method requires no parameters".
pub fn expect_no_params(method: &str, params: &Option<Value>) -> Result<(), RpcError> {
    let empty = match params {
        None | Some(Value::Null) => true,
        Some(Value::Object(map)) => map.is_empty(),
        Some(Value::Array(items)) => items.is_empty(),
        Some(_) => false,
    };
    if empty {
        Ok(())
    } else {
        Err(RpcError::invalid_params(format!(
            "{method} method requires no parameters"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // fields exist to be decoded
    struct Create {
        name: String,
        block_size: u32,
        #[serde(default)]
        uuid: Option<String>,
    }

    #[test]
    fn messages_name_the_field() {
        let err = parse_params::<Create>(Some(json!({"name": "a", "block_size": 1, "foo": 1})))
            .unwrap_err();
        assert_eq!(err.code, -32602);
        assert!(
            err.message.contains("unknown field `foo`"),
            "{}",
            err.message
        );

        let err =
            parse_params::<Create>(Some(json!({"name": "a", "block_size": "x"}))).unwrap_err();
        assert!(err.message.contains("block_size"), "{}", err.message);

        let err = parse_params::<Create>(None).unwrap_err();
        assert!(
            err.message.contains("missing field `name`"),
            "{}",
            err.message
        );

        let ok = parse_params::<Create>(Some(json!({"name": "a", "block_size": 512}))).unwrap();
        assert_eq!(ok.block_size, 512);
    }

    #[test]
    fn no_params_check() {
        assert!(expect_no_params("m", &None).is_ok());
        assert!(expect_no_params("m", &Some(json!({}))).is_ok());
        let err = expect_no_params("spdk_get_version", &Some(json!({"a": 1}))).unwrap_err();
        assert_eq!(
            err.message,
            "spdk_get_version method requires no parameters"
        );
    }
}
