//! SPDK's JSON config (`-c FILE`, `save_config`):
//!
//! ```json
//! {"subsystems": [
//!   {"subsystem": "bdev", "config": [
//!     {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 2048, "block_size": 512}}
//!   ]}
//! ]}
//! ```
//!
//! Applied as SPDK's `spdk_subsystem_init_from_json_config` does, by calling
//! the listed RPC methods in-process in file order: a first pass before
//! subsystem init runs the entries whose method is allowed in the startup
//! state; after init (state runtime) a second pass runs the entries allowed
//! at runtime that did not already run. Entries not allowed in a pass are
//! skipped in it. A method that is not registered at all stops the load
//! (as SPDK); a method that answers with an error stops it unless errors are
//! ignored (`--json-ignore-init-errors`), in which case it is logged.
//! `/* */` and `//` comments are allowed, as SPDK's parser allows them.
//! An entry may also be an array of entries (a batch, as `save_config
//! --with-batches` writes).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde_json::{Map, Value};

use rspdk_rpc::{RpcError, RpcRegistry};
use rspdk_thread::Thread;

/// Errors reading or applying a JSON config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read JSON config {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The text is not JSON.
    #[error("JSON config {origin}: invalid JSON at line {line}, column {column}: {reason}")]
    Syntax {
        /// Where it came from (file path or a description).
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        reason: String,
    },
    /// The JSON does not have the config's shape.
    #[error("JSON config {origin}: {reason}")]
    Shape {
        /// Where it came from.
        origin: String,
        /// What is wrong, naming the element.
        reason: String,
    },
    /// A section names a subsystem that neither this app nor SPDK has
    /// (a misspelling, most likely).
    #[error("JSON config: unknown subsystem '{subsystem}' (this app's subsystems: {known}){hint}")]
    UnknownSubsystem {
        /// The section's name.
        subsystem: String,
        /// The app's subsystems, comma separated.
        known: String,
        /// ", did you mean 'x'?" when one is close.
        hint: String,
    },
    /// An entry names a method that is not registered.
    #[error("JSON config: subsystem '{subsystem}': method '{method}' was not found")]
    MethodNotFound {
        /// The subsystem section.
        subsystem: String,
        /// The method.
        method: String,
    },
    /// A method answered with an error.
    #[error(
        "JSON config: subsystem '{subsystem}': method '{method}' failed: {message} (code {code})"
    )]
    MethodFailed {
        /// The subsystem section.
        subsystem: String,
        /// The method.
        method: String,
        /// The JSON-RPC error code.
        code: i32,
        /// The JSON-RPC error message.
        message: String,
    },
}

/// One `{"method", "params"}` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigEntry {
    /// The subsystem section it is in.
    pub subsystem: String,
    /// RPC method name.
    pub method: String,
    /// Its params (`None` if absent).
    pub params: Option<Value>,
}

/// A parsed config: every entry in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonConfig {
    /// Subsystem names in file order.
    pub subsystems: Vec<String>,
    /// Entries in file order, batches flattened.
    pub entries: Vec<ConfigEntry>,
}

/// Subsystems of SPDK's `spdk_tgt` that an rspdk app may lack: a config
/// written by SPDK lists them, often with an empty or null config, and
/// such a section is skipped with a warning rather than refused.
pub const SPDK_SUBSYSTEMS: &[&str] = &[
    "accel",
    "bdev",
    "fsdev",
    "iobuf",
    "iscsi",
    "keyring",
    "nbd",
    "nvmf",
    "scheduler",
    "scsi",
    "sock",
    "ublk",
    "vfio_user_target",
    "vhost_blk",
    "vhost_scsi",
    "vmd",
];

impl JsonConfig {
    /// Checks the sections' subsystem names against the app's `known`
    /// ones: a name that is neither the app's nor SPDK's is an error
    /// (with a suggestion when one is a letter or two away); an SPDK
    /// subsystem the app lacks is logged and its entries are left to fail
    /// as unknown methods if there are any.
    pub fn check_subsystems(&self, known: &[&str]) -> Result<(), ConfigError> {
        for name in &self.subsystems {
            if known.contains(&name.as_str()) {
                continue;
            }
            if SPDK_SUBSYSTEMS.contains(&name.as_str()) {
                tracing::warn!(
                    subsystem = %name,
                    "JSON config: SPDK subsystem '{name}' is not part of this app; its section is skipped if it is empty"
                );
                continue;
            }
            let close = known
                .iter()
                .chain(SPDK_SUBSYSTEMS)
                .find(|k| edit_distance(k, name) <= 2);
            return Err(ConfigError::UnknownSubsystem {
                subsystem: name.clone(),
                known: known.join(", "),
                hint: close.map_or(String::new(), |k| format!(", did you mean '{k}'?")),
            });
        }
        Ok(())
    }

    /// Reads and parses a config file.
    pub fn from_file(path: &Path) -> Result<JsonConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<JsonConfig, ConfigError> {
        let clean = strip_comments(text);
        let value: Value = serde_json::from_str(&clean).map_err(|e| ConfigError::Syntax {
            origin: origin.to_string(),
            line: e.line(),
            column: e.column(),
            reason: e.to_string(),
        })?;
        Self::from_value(&value, origin)
    }

    /// Interprets a parsed JSON value as a config.
    pub fn from_value(value: &Value, origin: &str) -> Result<JsonConfig, ConfigError> {
        let shape = |reason: String| ConfigError::Shape {
            origin: origin.to_string(),
            reason,
        };
        let root = value
            .as_object()
            .ok_or_else(|| shape("not enclosed in {}".into()))?;
        let mut out = JsonConfig::default();
        let subsystems = match root.get("subsystems") {
            None => {
                tracing::warn!("JSON config {origin} has no 'subsystems' key: nothing to apply");
                return Ok(out);
            }
            Some(Value::Array(a)) => a,
            Some(_) => return Err(shape("'subsystems' is not an array".into())),
        };
        for (i, sub) in subsystems.iter().enumerate() {
            let obj = sub
                .as_object()
                .ok_or_else(|| shape(format!("subsystems[{i}] is not an object")))?;
            if let Some(k) = obj.keys().find(|k| *k != "subsystem" && *k != "config") {
                return Err(shape(format!("subsystems[{i}]: unknown key '{k}'")));
            }
            let name = obj
                .get("subsystem")
                .and_then(Value::as_str)
                .ok_or_else(|| shape(format!("subsystems[{i}]: 'subsystem' must be a string")))?;
            out.subsystems.push(name.to_string());
            let config = match obj.get("config") {
                None | Some(Value::Null) => continue,
                Some(Value::Array(a)) => a,
                Some(_) => {
                    return Err(shape(format!(
                        "subsystem '{name}': 'config' must be an array or null"
                    )))
                }
            };
            for (j, elem) in config.iter().enumerate() {
                let items: Vec<&Value> = match elem {
                    Value::Array(batch) => batch.iter().collect(),
                    other => vec![other],
                };
                for item in items {
                    out.entries.push(
                        parse_entry(item, name)
                            .map_err(|r| shape(format!("subsystem '{name}' config[{j}]: {r}")))?,
                    );
                }
            }
        }
        Ok(out)
    }
}

fn parse_entry(v: &Value, subsystem: &str) -> Result<ConfigEntry, String> {
    let obj = v.as_object().ok_or("not an object")?;
    if let Some(k) = obj.keys().find(|k| *k != "method" && *k != "params") {
        return Err(format!("unknown key '{k}'"));
    }
    let method = obj
        .get("method")
        .and_then(Value::as_str)
        .ok_or("'method' must be a string")?;
    let params = match obj.get("params") {
        None | Some(Value::Null) => None,
        Some(p @ Value::Object(_)) => Some(p.clone()),
        Some(_) => return Err(format!("method '{method}': 'params' must be an object")),
    };
    Ok(ConfigEntry {
        subsystem: subsystem.to_string(),
        method: method.to_string(),
        params,
    })
}

/// Blanks `//` and `/* */` comments outside strings (keeping newlines, so
/// error positions stay right).
fn strip_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            out.push(c);
            if c == b'\\' && i + 1 < b.len() {
                out.push(b[i + 1]);
                i += 1;
            } else if c == b'"' {
                in_str = false;
            }
        } else if c == b'"' {
            in_str = true;
            out.push(c);
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
            continue;
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            out.extend_from_slice(b"  ");
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                out.push(if b[i] == b'\n' { b'\n' } else { b' ' });
                i += 1;
            }
            if i < b.len() {
                out.extend_from_slice(b"  ");
                i += 2;
            }
            continue;
        } else {
            out.push(c);
        }
        i += 1;
    }
    // Only ASCII bytes were replaced, by ASCII: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Applies config entries in passes (see the module docs). Lives on the app
/// thread; `ran` remembers which entries ran in an earlier pass.
pub(crate) struct ConfigLoader {
    entries: Vec<ConfigEntry>,
    ran: RefCell<Vec<bool>>,
    stop_on_error: bool,
}

impl ConfigLoader {
    pub(crate) fn new(config: JsonConfig, stop_on_error: bool) -> Rc<ConfigLoader> {
        let n = config.entries.len();
        Rc::new(ConfigLoader {
            entries: config.entries,
            ran: RefCell::new(vec![false; n]),
            stop_on_error,
        })
    }

    /// One pass: runs, in order, every entry allowed in the registry's
    /// current state that has not run yet; then `done`. Each step continues
    /// from the thread's deferred queue, so a long config does not recurse.
    pub(crate) fn run_pass(
        self: &Rc<Self>,
        registry: &RpcRegistry,
        done: impl FnOnce(Result<(), ConfigError>) + 'static,
    ) {
        let allowed = registry.method_names(true, true);
        self.clone()
            .step(0, registry.downgrade(), Rc::new(allowed), Box::new(done));
    }

    fn step(
        self: Rc<Self>,
        mut idx: usize,
        registry: rspdk_rpc::WeakRegistry,
        allowed: Rc<Vec<String>>,
        done: Box<dyn FnOnce(Result<(), ConfigError>)>,
    ) {
        let Some(reg) = registry.upgrade() else {
            return done(Ok(()));
        };
        // Skip what does not run in this pass.
        while let Some(e) = self.entries.get(idx) {
            if !reg.is_registered(&e.method) {
                return done(Err(ConfigError::MethodNotFound {
                    subsystem: e.subsystem.clone(),
                    method: e.method.clone(),
                }));
            }
            if !self.ran.borrow()[idx] && allowed.contains(&e.method) {
                break;
            }
            tracing::debug!(method = %e.method, "not run in this pass");
            idx += 1;
        }
        let Some(entry) = self.entries.get(idx) else {
            return done(Ok(()));
        };
        tracing::debug!(subsystem = %entry.subsystem, method = %entry.method, "applying");
        self.ran.borrow_mut()[idx] = true;
        let me = self.clone();
        let (subsystem, method) = (entry.subsystem.clone(), entry.method.clone());
        reg.call(
            &entry.method,
            entry.params.clone(),
            move |result: Result<Value, RpcError>| {
                if let Err(e) = result {
                    let err = ConfigError::MethodFailed {
                        subsystem,
                        method,
                        code: e.code,
                        message: e.message,
                    };
                    if me.stop_on_error {
                        return done(Err(err));
                    }
                    tracing::error!("{err} (ignored: --json-ignore-init-errors)");
                }
                let next = move || me.step(idx + 1, registry, allowed, done);
                match Thread::current() {
                    Some(t) => t.defer(next),
                    None => next(),
                }
            },
        );
    }
}

/// Levenshtein distance of two short names (for "did you mean").
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Builds the `{"subsystems": [...]}` document from (name, config) pairs.
pub(crate) fn config_document(parts: Vec<(String, Option<Vec<Value>>)>) -> Value {
    let subsystems = parts
        .into_iter()
        .map(|(name, config)| {
            let mut m = Map::new();
            m.insert("subsystem".into(), Value::String(name));
            m.insert("config".into(), config.map_or(Value::Null, Value::Array));
            Value::Object(m)
        })
        .collect();
    let mut root = Map::new();
    root.insert("subsystems".into(), Value::Array(subsystems));
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_spdk_shape_with_comments_and_batches() {
        let text = r#"
        // saved by rpc.py
        {"subsystems": [
          {"subsystem": "a", "config": null},
          {"subsystem": "b", "config": [
            {"method": "m1", "params": {"x": "/* not a comment */"}},
            /* a batch */
            [{"method": "m2"}, {"method": "m3", "params": {}}]
          ]}
        ]}"#;
        let c = JsonConfig::parse(text, "t").unwrap();
        assert_eq!(c.subsystems, vec!["a", "b"]);
        let methods: Vec<&str> = c.entries.iter().map(|e| e.method.as_str()).collect();
        assert_eq!(methods, vec!["m1", "m2", "m3"]);
        assert_eq!(
            c.entries[0].params,
            Some(json!({"x": "/* not a comment */"}))
        );
    }

    #[test]
    fn errors_name_the_place() {
        let e = JsonConfig::parse("{\n \"subsystems\": [}", "f.json").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e}");
        let e = JsonConfig::parse(
            r#"{"subsystems": [{"subsystem": "b", "config": [{"methd": "x"}]}]}"#,
            "f",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "JSON config f: subsystem 'b' config[0]: unknown key 'methd'"
        );
        let e = JsonConfig::parse("[]", "f").unwrap_err().to_string();
        assert!(e.contains("not enclosed in {}"), "{e}");
        let e = JsonConfig::parse(
            r#"{"subsystems": [{"subsystem": "b", "config": [{"method": "x", "params": 3}]}]}"#,
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("'params' must be an object"), "{e}");
        assert_eq!(JsonConfig::parse("{}", "f").unwrap(), JsonConfig::default());
    }

    #[test]
    fn document_shape() {
        let d = config_document(vec![
            ("a".into(), None),
            ("b".into(), Some(vec![json!({"method": "m"})])),
        ]);
        assert_eq!(
            d,
            json!({"subsystems": [{"subsystem": "a", "config": null},
                                  {"subsystem": "b", "config": [{"method": "m"}]}]})
        );
    }
}
