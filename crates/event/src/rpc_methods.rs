//! The app framework's RPC methods, with SPDK's names, params, states and
//! result shapes (SPDK: `lib/event/app_rpc.c`, `lib/init/subsystem_rpc.c`,
//! `lib/env_dpdk/env_rpc.c`, `lib/log_rpc/log_rpc.c`, `lib/rpc/rpc.c`).
//!
//! | method | states | result |
//! |---|---|---|
//! | `spdk_get_version` | both | `{"version": "rspdk v0.1.0", "fields": {"major", "minor", "patch", "suffix"}}` |
//! | `framework_start_init` | startup | `true` once subsystems are initialised |
//! | `framework_wait_init` | both | `true` once the app has started |
//! | `framework_get_reactors` | runtime | `{"tick_rate", "pid", "reactors": [...]}` |
//! | `framework_get_subsystems` | runtime | `[{"subsystem", "depends_on": [...]}]` in init order |
//! | `framework_get_config {name}` | runtime | the subsystem's `config` array (or `null`) |
//! | `save_config` | runtime | `{"subsystems": [{"subsystem", "config"}]}` (rspdk extension: rpc.py builds this client-side from the two methods above) |
//! | `thread_get_stats`, `thread_get_pollers`, `thread_get_io_channels` | runtime | `{"tick_rate", "threads": [...]}` |
//! | `thread_set_cpumask {id, cpumask}` | runtime | `true`; the mask must keep the thread's reactor (no migration), see `set_cpumask` |
//! | `env_dpdk_get_mem_stats` | runtime | `{"filename", "iova_mode", "heaps"}`, see below |
//! | `log_set_flag`, `log_clear_flag {flag}`, `log_set_level`, `log_set_print_level {level}` | both | `true` |
//! | `log_get_flags` | both | `{"flag": bool, ...}` |
//! | `log_get_level`, `log_get_print_level` | both | `"NOTICE"` etc. |
//! | `spdk_kill_instance {sig_name}` | both | `true`, then the signal |
//!
//! `env_dpdk_get_mem_stats`: SPDK dumps DPDK's memory statistics to
//! `/tmp/spdk_mem_dump.txt` and answers `{"filename": ...}`. rspdk writes
//! its own statistics (text) to the same file and answers with the
//! filename *and* the statistics inline (`iova_mode`, `heaps`), so scripts
//! reading either keep working.

use std::rc::{Rc, Weak};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use rspdk_rpc::{expect_no_params, parse_params, Responder, RpcError, RpcRegistry, StateMask};
use rspdk_thread::{
    gather_from_threads, CpuSet, ThreadGetIoChannels, ThreadGetPollers, ThreadGetStats, TICK_RATE,
};

use crate::app::{AppInner, Phase};
use crate::config::config_document;
use crate::local::park;
use crate::log::{self, LogLevel};
use crate::signals;

/// Where `env_dpdk_get_mem_stats` writes its dump (SPDK's file name).
pub const MEM_STATS_FILE: &str = "/tmp/spdk_mem_dump.txt";

const BOTH: StateMask = StateMask::ALL;
const RUNTIME: StateMask = StateMask::RUNTIME;
const STARTUP: StateMask = StateMask::STARTUP;

/// `thread_set_cpumask` params. SPDK's docs show the id both as a number
/// (rpc.py) and as a string, so both are taken.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetCpumask {
    id: ThreadIdParam,
    cpumask: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ThreadIdParam {
    Num(u64),
    Text(String),
}

/// `thread_set_cpumask`: the new mask must name a reactor of the app and
/// include the core of the reactor the thread runs on. rspdk does not move
/// threads between reactors (the poll groups of the NVMe-oF and iSCSI
/// targets keep state local to their reactor's OS thread), so a mask that
/// would need a move is refused, saying so; otherwise the thread's cpumask
/// becomes the new one (shown by `thread_get_stats` and
/// `framework_get_reactors`), as in SPDK, where a thread already on an
/// allowed core stays there.
fn set_cpumask(reactors: &crate::ReactorSetHandle, p: &SetCpumask) -> Result<Value, RpcError> {
    let id = match &p.id {
        ThreadIdParam::Num(n) => *n,
        ThreadIdParam::Text(s) => s.trim().parse().map_err(|_| {
            RpcError::invalid_params(format!(
                "id '{s}' is not a thread id (thread_get_stats lists them)"
            ))
        })?,
    };
    let mask = CpuSet::parse(&p.cpumask)
        .map_err(|e| RpcError::invalid_params(format!("cpumask '{}': {e}", p.cpumask)))?;
    let cores = reactors.cores();
    if !cores.iter().any(|c| mask.contains(*c)) {
        let mut app_mask = CpuSet::new();
        cores.iter().for_each(|c| app_mask.insert(*c));
        return Err(RpcError::invalid_params(format!(
            "cpumask {} names no core with a reactor (this app's reactors run on 0x{}): pass a mask within it",
            p.cpumask,
            app_mask.to_hex()
        )));
    }
    let handle = rspdk_thread::thread_by_id(id).ok_or_else(|| {
        RpcError::invalid_params(format!(
            "no thread with id {id} (thread_get_stats lists them)"
        ))
    })?;
    let Some(core) = reactors.thread_core(id) else {
        return Err(RpcError::invalid_params(format!(
            "thread {id} ({}) is not running on a reactor",
            handle.name()
        )));
    };
    if !mask.contains(core) {
        return Err(RpcError::invalid_params(format!(
            "cpumask {} excludes core {core}, where thread {id} ({}) runs: rspdk does not move threads between reactors (its NVMe-oF and iSCSI poll groups keep per-reactor state); pass a mask that includes core {core}",
            p.cpumask,
            handle.name()
        )));
    }
    handle.set_cpumask(mask);
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParam {
    name: String,
    /// Accepted as `rpc.py save_config --with-batches` sends it; rspdk's
    /// subsystems write no batches, so it changes nothing.
    #[serde(default)]
    #[allow(dead_code, reason = "accepted for rpc.py compatibility")]
    with_batches: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagParam {
    flag: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelParam {
    level: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillParam {
    sig_name: String,
}

/// Answers the error and returns None unless `params` is absent or empty.
pub(crate) fn no_params(method: &str, params: &Option<Value>, r: Responder) -> Option<Responder> {
    match expect_no_params(method, params) {
        Ok(()) => Some(r),
        Err(e) => {
            r.error(e);
            None
        }
    }
}

/// Registers every framework method on `reg`; handlers reach the app
/// through `app` (weak: the registry is owned by the app).
pub(crate) fn register(reg: &RpcRegistry, app: Weak<AppInner>) -> Result<(), rspdk_rpc::Error> {
    reg.register("spdk_get_version", BOTH, |p, r| {
        let Some(r) = no_params("spdk_get_version", &p, r) else {
            return;
        };
        r.success(&version());
    })?;

    let a = app.clone();
    reg.register("framework_start_init", STARTUP, move |p, r| {
        let Some(r) = no_params("framework_start_init", &p, r) else {
            return;
        };
        let Some(app) = a.upgrade() else {
            return r.error(RpcError::internal_error("the app is gone"));
        };
        if app.phase.get() != Phase::WaitingForRpc {
            return r.error(RpcError::invalid_state(
                "framework_start_init: subsystems are already being initialised",
            ));
        }
        app.set_start_init_responder(r);
        // Continue outside the RPC poll.
        let weak = Rc::downgrade(&app);
        rspdk_thread::get_thread()
            .expect("RPC handlers run on the app thread")
            .defer(move || {
                if let Some(app) = weak.upgrade() {
                    app.start_init();
                }
            });
    })?;

    let a = app.clone();
    reg.register("framework_wait_init", BOTH, move |p, r| {
        let Some(r) = no_params("framework_wait_init", &p, r) else {
            return;
        };
        match a.upgrade() {
            Some(app) => app.wait_init(r),
            None => r.error(RpcError::internal_error("the app is gone")),
        }
    })?;

    let a = app.clone();
    reg.register("thread_set_cpumask", RUNTIME, move |p, r| {
        let res = parse_params::<SetCpumask>(p).and_then(|p| match a.upgrade() {
            Some(app) => set_cpumask(&app.reactors, &p),
            None => Err(RpcError::internal_error("the app is gone")),
        });
        r.complete(res)
    })?;

    let a = app.clone();
    reg.register("framework_get_reactors", RUNTIME, move |p, r| {
        let Some(r) = no_params("framework_get_reactors", &p, r) else {
            return;
        };
        match a.upgrade() {
            Some(app) => r.success(&app.reactors.reactors_info()),
            None => r.error(RpcError::internal_error("the app is gone")),
        }
    })?;

    let a = app.clone();
    reg.register("framework_get_subsystems", RUNTIME, move |p, r| {
        let Some(r) = no_params("framework_get_subsystems", &p, r) else {
            return;
        };
        let Some(app) = a.upgrade() else {
            return r.error(RpcError::internal_error("the app is gone"));
        };
        let list: Vec<Value> = app
            .subsystems
            .iter()
            .map(|s| json!({"subsystem": s.name(), "depends_on": s.depends_on()}))
            .collect();
        r.success(&list);
    })?;

    let a = app.clone();
    reg.register("framework_get_config", RUNTIME, move |p, r| {
        let p: NameParam = match parse_params(p) {
            Ok(p) => p,
            Err(e) => return r.error(e),
        };
        let Some(app) = a.upgrade() else {
            return r.error(RpcError::internal_error("the app is gone"));
        };
        match app.subsystems.iter().find(|s| s.name() == p.name) {
            Some(s) => r.success(&s.write_config_json()),
            None => r.error(RpcError::invalid_params(format!(
                "Subsystem '{}' not found",
                p.name
            ))),
        }
    })?;

    let a = app.clone();
    reg.register("save_config", RUNTIME, move |p, r| {
        let Some(r) = no_params("save_config", &p, r) else {
            return;
        };
        let Some(app) = a.upgrade() else {
            return r.error(RpcError::internal_error("the app is gone"));
        };
        let parts = app
            .subsystems
            .iter()
            .map(|s| (s.name().to_string(), s.write_config_json()))
            .collect();
        r.success(&config_document(parts));
    })?;

    reg.register("thread_get_stats", RUNTIME, |p, r| {
        let Some(r) = no_params("thread_get_stats", &p, r) else {
            return;
        };
        gather(
            r,
            |t| t.stats_info(),
            |threads| {
                json!(ThreadGetStats {
                    tick_rate: TICK_RATE,
                    threads
                })
            },
        );
    })?;
    reg.register("thread_get_pollers", RUNTIME, |p, r| {
        let Some(r) = no_params("thread_get_pollers", &p, r) else {
            return;
        };
        gather(
            r,
            |t| t.pollers_info(),
            |threads| {
                json!(ThreadGetPollers {
                    tick_rate: TICK_RATE,
                    threads
                })
            },
        );
    })?;
    reg.register("thread_get_io_channels", RUNTIME, |p, r| {
        let Some(r) = no_params("thread_get_io_channels", &p, r) else {
            return;
        };
        gather(
            r,
            |t| t.io_channels_info(),
            |threads| {
                json!(ThreadGetIoChannels {
                    tick_rate: TICK_RATE,
                    threads
                })
            },
        );
    })?;

    reg.register("env_dpdk_get_mem_stats", RUNTIME, |p, r| {
        let Some(r) = no_params("env_dpdk_get_mem_stats", &p, r) else {
            return;
        };
        match mem_stats() {
            Ok(v) => r.success(&v),
            Err(e) => r.error(e),
        }
    })?;

    register_log_methods(reg)?;
    crate::trace_rpc::register(reg)?;
    crate::notify::register_rpcs(reg)?;
    crate::rpc_scheduler::register(reg)?;

    let a = app;
    reg.register("spdk_kill_instance", BOTH, move |p, r| {
        let p: KillParam = match parse_params(p) {
            Ok(p) => p,
            Err(e) => return r.error(e),
        };
        let sig = match p.sig_name.as_str() {
            "SIGINT" => libc::SIGINT,
            "SIGTERM" => libc::SIGTERM,
            "SIGQUIT" => libc::SIGQUIT,
            "SIGHUP" => libc::SIGHUP,
            "SIGKILL" => libc::SIGKILL,
            "SIGUSR1" => libc::SIGUSR1,
            other => {
                return r.error(RpcError::invalid_params(format!(
                    "invalid params: sig_name: unknown signal '{other}' \
                     (expected SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGKILL or SIGUSR1)"
                )))
            }
        };
        let Some(app) = a.upgrade() else {
            return r.error(RpcError::internal_error("the app is gone"));
        };
        r.success(&true);
        let sent = match (sig, app.signal_target()) {
            // The app's own signal path (a clean shutdown, SIGHUP too):
            // the thread in App::run reads it.
            (libc::SIGINT | libc::SIGTERM | libc::SIGHUP, Some(tid)) => {
                signals::signal_thread(tid, sig)
            }
            (libc::SIGINT | libc::SIGTERM | libc::SIGHUP, None) => {
                app.stopper().stop(0);
                Ok(())
            }
            // Signals that end the process at once: sent a moment after
            // the reply, so the client gets its `true` first.
            _ => {
                let name = p.sig_name.clone();
                std::thread::Builder::new()
                    .name("kill_instance".into())
                    .spawn(move || {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        if let Err(e) = signals::signal_process(sig) {
                            tracing::error!("spdk_kill_instance {name}: {e}");
                        }
                    })
                    .map(|_| ())
            }
        };
        if let Err(e) = sent {
            tracing::error!("spdk_kill_instance {}: {e}", p.sig_name);
        }
    })?;
    Ok(())
}

fn register_log_methods(reg: &RpcRegistry) -> Result<(), rspdk_rpc::Error> {
    fn flag_method(
        reg: &RpcRegistry,
        name: &'static str,
        set: bool,
    ) -> Result<(), rspdk_rpc::Error> {
        reg.register(name, BOTH, move |p, r| {
            let p: FlagParam = match parse_params(p) {
                Ok(p) => p,
                Err(e) => return r.error(e),
            };
            let res = if set {
                log::log_set_flag(&p.flag)
            } else {
                log::log_clear_flag(&p.flag)
            };
            match res {
                Ok(()) => r.success(&true),
                Err(e) => r.error(RpcError::invalid_params(format!(
                    "invalid params: flag: {e}"
                ))),
            }
        })
    }
    fn level_set(
        reg: &RpcRegistry,
        name: &'static str,
        set: fn(LogLevel) -> Result<(), log::LogError>,
    ) -> Result<(), rspdk_rpc::Error> {
        reg.register(name, BOTH, move |p, r| {
            let p: LevelParam = match parse_params(p) {
                Ok(p) => p,
                Err(e) => return r.error(e),
            };
            match p.level.parse::<LogLevel>().and_then(set) {
                Ok(()) => r.success(&true),
                Err(e) => r.error(RpcError::invalid_params(format!(
                    "invalid params: level: {e}"
                ))),
            }
        })
    }
    fn level_get(
        reg: &RpcRegistry,
        name: &'static str,
        get: fn() -> LogLevel,
    ) -> Result<(), rspdk_rpc::Error> {
        reg.register(name, BOTH, move |p, r| {
            let Some(r) = no_params(name, &p, r) else {
                return;
            };
            r.success(get().as_str());
        })
    }
    flag_method(reg, "log_set_flag", true)?;
    flag_method(reg, "log_clear_flag", false)?;
    reg.register("log_get_flags", BOTH, |p, r| {
        let Some(r) = no_params("log_get_flags", &p, r) else {
            return;
        };
        r.success(&log::log_get_flags());
    })?;
    level_set(reg, "log_set_level", log::log_set_level)?;
    level_get(reg, "log_get_level", log::log_get_level)?;
    level_set(reg, "log_set_print_level", log::log_set_print_level)?;
    level_get(reg, "log_get_print_level", log::log_get_print_level)?;
    Ok(())
}

/// `spdk_get_version`'s result for this build.
pub fn version() -> Value {
    let v = env!("CARGO_PKG_VERSION");
    let (core, suffix) = match v.split_once('-') {
        Some((c, s)) => (c, format!("-{s}")),
        None => (v, String::new()),
    };
    let mut nums = core.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (
        nums.next().unwrap_or(0),
        nums.next().unwrap_or(0),
        nums.next().unwrap_or(0),
    );
    json!({
        "version": format!("rspdk v{v}"),
        "fields": {"major": major, "minor": minor, "patch": patch, "suffix": suffix},
    })
}

/// Runs `per_thread` on every thread (one hop each) and answers `r` with
/// `finish(results)` back on this thread.
fn gather<R: Send + 'static>(
    r: Responder,
    per_thread: impl Fn(&rspdk_thread::Thread) -> R + Send + Sync + 'static,
    finish: impl FnOnce(Vec<R>) -> Value + Send + 'static,
) {
    // The responder is !Send: park it here and redeem it when `done` runs
    // back on this thread.
    let parked = park(r);
    if let Err(e) = gather_from_threads(per_thread, move |results| {
        if let Some(r) = parked.take() {
            r.success(&finish(results));
        }
    }) {
        tracing::error!("gathering thread stats: {e}");
    }
}

fn mem_stats() -> Result<Value, RpcError> {
    let stats = rspdk_env::mem_stats().map_err(|e| RpcError::internal_error(e.to_string()))?;
    let mut text = format!("rspdk memory statistics\niova_mode: {}\n", stats.iova_mode);
    for h in &stats.heaps {
        text.push_str(&format!("{h:#?}\n"));
    }
    if let Err(e) = std::fs::write(MEM_STATS_FILE, text) {
        tracing::warn!("writing {MEM_STATS_FILE}: {e}");
    }
    let mut out = Map::new();
    out.insert("filename".into(), json!(MEM_STATS_FILE));
    if let Value::Object(m) = json!(stats) {
        out.extend(m);
    }
    Ok(Value::Object(out))
}
