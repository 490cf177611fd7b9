//! Python's `json.dumps` output from serde_json values: rpc.py prints
//! results that way, and scripts compare the text.

use serde::Serialize;
use serde_json::Value;

/// serde_json formatter producing Python's `json.dumps(indent=None)`
/// separators (`", "` and `": "`).
pub(crate) struct PythonCompact;

impl serde_json::ser::Formatter for PythonCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Serialize like Python's `json.dumps(value, indent=indent)` (ASCII only,
/// `\uXXXX` escapes), which is what rpc.py prints.
pub(crate) fn to_python_json(value: &Value, indent: Option<usize>) -> String {
    let mut out = Vec::new();
    let result = match indent {
        Some(width) => {
            let indent = vec![b' '; width];
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(&indent),
            );
            value.serialize(&mut ser)
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            PythonCompact,
        )),
    };
    if result.is_err() {
        return value.to_string();
    }
    let text = String::from_utf8(out).unwrap_or_default();
    // Non-ASCII characters only occur inside strings, where \u escapes are
    // equivalent; Python escapes them by default (ensure_ascii=True).
    let mut ascii = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch.is_ascii() {
            ascii.push(ch);
        } else {
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    ascii
}
