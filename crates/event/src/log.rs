//! Logging in SPDK's terms on top of `tracing`.
//!
//! * **Log flags** (SPDK's log components, `-L FLAG`, `log_set_flag`): a flag
//!   names one or more `tracing` targets (module-path prefixes). An enabled
//!   flag shows every event of its targets, down to `trace`. Crates add their
//!   own flags with [`register_log_flag`] (e.g. `bdev` → `rspdk_bdev`).
//! * **Levels** (`log_set_level`, `log_set_print_level`): SPDK has a syslog
//!   level and a stderr print level; rspdk writes to stderr only, so an event
//!   outside the flagged targets is shown when it passes *either* level.
//!   `ERROR`/`WARNING` map to `error`/`warn`, `NOTICE` and `INFO` to `info`,
//!   `DEBUG` to `debug`. Default: `NOTICE` for both, as SPDK.
//! * `RUST_LOG`, if set, is appended to the filter (developer override).
//!
//! The filter is a `tracing_subscriber` reload layer installed by
//! [`init_logging`] (the app framework calls it); changes made before or
//! without it are recorded and reported by the getters all the same.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Errors of the log controls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// No flag of that name is registered.
    #[error("unknown log flag '{flag}' (known: {known})")]
    UnknownFlag {
        /// The flag asked for.
        flag: String,
        /// The registered flags, comma separated.
        known: String,
    },
    /// Not one of SPDK's level names.
    #[error("unknown log level '{0}' (expected ERROR, WARNING, NOTICE, INFO or DEBUG)")]
    UnknownLevel(String),
    /// The filter could not be built (a bad `RUST_LOG`, for instance).
    #[error("log filter '{filter}': {reason}")]
    Filter {
        /// The filter text.
        filter: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// SPDK's log levels (`spdk_log_level`), in order of verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// `ERROR`.
    Error,
    /// `WARNING`.
    Warning,
    /// `NOTICE` (the default).
    Notice,
    /// `INFO`.
    Info,
    /// `DEBUG`.
    Debug,
}

impl LogLevel {
    /// SPDK's name of the level.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "ERROR",
            LogLevel::Warning => "WARNING",
            LogLevel::Notice => "NOTICE",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBUG",
        }
    }

    fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warning => "warn",
            LogLevel::Notice | LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = LogError;
    /// SPDK's names, case-insensitive (`WARN` is accepted for `WARNING`).
    fn from_str(s: &str) -> Result<Self, LogError> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "ERROR" => LogLevel::Error,
            "WARNING" | "WARN" => LogLevel::Warning,
            "NOTICE" => LogLevel::Notice,
            "INFO" => LogLevel::Info,
            "DEBUG" => LogLevel::Debug,
            _ => return Err(LogError::UnknownLevel(s.to_string())),
        })
    }
}

struct Flag {
    targets: Vec<String>,
    enabled: bool,
}

struct LogState {
    flags: BTreeMap<String, Flag>,
    level: LogLevel,
    print_level: LogLevel,
}

fn builtin_flags() -> BTreeMap<String, Flag> {
    let flags: &[(&str, &[&str])] = &[
        ("app", &["rspdk_event::app", "rspdk_tgt"]),
        ("app_config", &["rspdk_event::config"]),
        ("app_rpc", &["rspdk_event::rpc_methods"]),
        ("subsystem", &["rspdk_event::subsystem"]),
        (
            "reactor",
            &["rspdk_event::reactor", "rspdk_event::scheduler"],
        ),
        ("thread", &["rspdk_thread"]),
        ("rpc", &["rspdk_rpc"]),
        ("env", &["rspdk_env"]),
    ];
    flags
        .iter()
        .map(|(name, targets)| {
            (
                name.to_string(),
                Flag {
                    targets: targets.iter().map(|t| t.to_string()).collect(),
                    enabled: false,
                },
            )
        })
        .collect()
}

fn state() -> MutexGuard<'static, LogState> {
    static STATE: OnceLock<Mutex<LogState>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            Mutex::new(LogState {
                flags: builtin_flags(),
                level: LogLevel::Notice,
                print_level: LogLevel::Notice,
            })
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Whether log lines start with a timestamp (`log_enable_timestamps`;
/// on by default).
static TIMESTAMPS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the timestamp at the start of each log line on or off (SPDK's
/// `log_enable_timestamps`).
pub fn set_timestamps(enabled: bool) {
    TIMESTAMPS.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// The log line timer: the system time while timestamps are enabled,
/// nothing otherwise.
struct SwitchableTime;

impl tracing_subscriber::fmt::time::FormatTime for SwitchableTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        if TIMESTAMPS.load(std::sync::atomic::Ordering::Relaxed) {
            tracing_subscriber::fmt::time::SystemTime.format_time(w)
        } else {
            Ok(())
        }
    }
}

/// Adds a log flag that enables the `tracing` targets (module-path
/// prefixes) `targets`; registering an existing flag adds its targets.
pub fn register_log_flag(name: &str, targets: &[&str]) {
    let mut s = state();
    let flag = s.flags.entry(name.to_string()).or_insert(Flag {
        targets: Vec::new(),
        enabled: false,
    });
    for t in targets {
        if !flag.targets.iter().any(|have| have == t) {
            flag.targets.push(t.to_string());
        }
    }
}

fn set_flag(name: &str, enabled: bool) -> Result<(), LogError> {
    {
        let mut s = state();
        if name == "all" {
            for f in s.flags.values_mut() {
                f.enabled = enabled;
            }
        } else {
            let known = s.flags.keys().cloned().collect::<Vec<_>>().join(", ");
            let flag = s.flags.get_mut(name).ok_or_else(|| LogError::UnknownFlag {
                flag: name.to_string(),
                known,
            })?;
            flag.enabled = enabled;
        }
    }
    apply()
}

/// Enables flag `name` (`all`: every flag) — SPDK's `spdk_log_set_flag`.
pub fn log_set_flag(name: &str) -> Result<(), LogError> {
    set_flag(name, true)
}

/// Disables flag `name` (`all`: every flag).
pub fn log_clear_flag(name: &str) -> Result<(), LogError> {
    set_flag(name, false)
}

/// Every flag and whether it is enabled (the `log_get_flags` result).
pub fn log_get_flags() -> BTreeMap<String, bool> {
    state()
        .flags
        .iter()
        .map(|(k, f)| (k.clone(), f.enabled))
        .collect()
}

/// Sets the log (syslog in SPDK) level.
pub fn log_set_level(level: LogLevel) -> Result<(), LogError> {
    state().level = level;
    apply()
}

/// The log level.
pub fn log_get_level() -> LogLevel {
    state().level
}

/// Sets the stderr print level.
pub fn log_set_print_level(level: LogLevel) -> Result<(), LogError> {
    state().print_level = level;
    apply()
}

/// The stderr print level.
pub fn log_get_print_level() -> LogLevel {
    state().print_level
}

/// The `EnvFilter` text for the current settings.
pub fn filter_directives() -> String {
    let s = state();
    let base = s.level.max(s.print_level);
    let mut out = vec![base.directive().to_string()];
    for f in s.flags.values().filter(|f| f.enabled) {
        out.extend(f.targets.iter().map(|t| format!("{t}=trace")));
    }
    drop(s);
    if let Ok(extra) = std::env::var("RUST_LOG") {
        if !extra.trim().is_empty() {
            out.push(extra);
        }
    }
    out.join(",")
}

fn build_filter() -> Result<EnvFilter, LogError> {
    let text = filter_directives();
    EnvFilter::try_new(&text).map_err(|e| LogError::Filter {
        filter: text.clone(),
        reason: e.to_string(),
    })
}

fn apply() -> Result<(), LogError> {
    if let Some(handle) = RELOAD.get() {
        let filter = build_filter()?;
        // Fails only if the subscriber is gone (process exit): nothing to do.
        let _ = handle.reload(filter);
    }
    Ok(())
}

/// Installs the process's `tracing` subscriber (stderr, reloadable filter)
/// with `flags` enabled (`-L`). Unknown flags are an error. If another
/// subscriber is already installed (a test harness, a second app in one
/// process) the flags are still recorded and the existing subscriber is
/// kept.
pub fn init_logging(flags: &[String]) -> Result<(), LogError> {
    for f in flags {
        log_set_flag(f)?;
    }
    if !flags.is_empty() {
        // As SPDK's -L: asking for a flag's debug output raises the print
        // level so it is shown.
        state().print_level = LogLevel::Debug;
    }
    let filter = build_filter()?;
    if RELOAD.get().is_some() {
        return apply();
    }
    let (layer, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_timer(SwitchableTime)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_thread_names(true);
    if tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = RELOAD.set(handle);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_print() {
        for l in [
            LogLevel::Error,
            LogLevel::Warning,
            LogLevel::Notice,
            LogLevel::Info,
            LogLevel::Debug,
        ] {
            assert_eq!(l.as_str().parse::<LogLevel>(), Ok(l));
        }
        assert_eq!("debug".parse::<LogLevel>(), Ok(LogLevel::Debug));
        assert!("LOUD".parse::<LogLevel>().is_err());
    }

    #[test]
    fn flags_map_to_targets() {
        register_log_flag("unit_test_flag", &["rspdk_unit_test"]);
        assert_eq!(log_get_flags().get("unit_test_flag"), Some(&false));
        log_set_flag("unit_test_flag").unwrap();
        assert!(filter_directives().contains("rspdk_unit_test=trace"));
        log_clear_flag("unit_test_flag").unwrap();
        assert!(!filter_directives().contains("rspdk_unit_test=trace"));
        let err = log_set_flag("no_such_flag").unwrap_err().to_string();
        assert!(err.contains("unknown log flag 'no_such_flag'"), "{err}");
    }
}
