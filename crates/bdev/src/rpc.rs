//! The bdev layer's JSON-RPC methods, with SPDK's names and parameters,
//! and the `bdev` subsystem's save_config output.
//!
//! Handlers run on the app thread (where the RPC server is polled). Each
//! module adds its methods in its own `register_rpcs`, called from
//! [`register_rpcs`] here.

use rspdk_rpc::{parse_params, Responder, RpcError, RpcRegistry, StateMask};
use rspdk_thread::now_ns;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::types::BdevError;
use crate::{bdev_get, bdevs, QosLimits, ResetMode};

/// Converts a layer error into SPDK's response: code `-errno`, and our
/// message (which names the problem).
pub fn rpc_error(e: BdevError) -> RpcError {
    RpcError::new(-e.errno(), e.to_string())
}

pub use rspdk_rpc::typed::method_async;

/// [`rspdk_rpc::typed::method`] for handlers that fail with a
/// [`BdevError`] (which fixes the error type for `?` in closures).
pub fn method<P, F>(reg: &RpcRegistry, name: &str, states: StateMask, f: F)
where
    P: DeserializeOwned + 'static,
    F: Fn(P) -> Result<Value, BdevError> + 'static,
{
    rspdk_rpc::typed::method(reg, name, states, f)
}

impl From<BdevError> for RpcError {
    fn from(e: BdevError) -> RpcError {
        rpc_error(e)
    }
}

thread_local! {
    /// Responders waiting for work that finishes on another thread.
    static PARKED: std::cell::RefCell<std::collections::HashMap<u64, Responder>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

static NEXT_PARKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Parks `resp` on this (the app) thread. Returns its id, for
/// [`answer_parked`] if the operation fails to start, and a `Send` callback
/// that, from any thread, has it answered with `result` back here.
pub fn respond_later(resp: Responder, result: Value) -> (u64, impl FnOnce() + Send + 'static) {
    let id = NEXT_PARKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PARKED.with(|p| p.borrow_mut().insert(id, resp));
    let home = rspdk_thread::get_thread().map(|t| t.handle());
    let done = move || {
        let answer = move || {
            if let Some(r) = PARKED.with(|p| p.borrow_mut().remove(&id)) {
                r.success(&result);
            }
        };
        match home {
            Some(t) => {
                let _ = t.send_msg(answer);
            }
            None => answer(),
        }
    };
    (id, done)
}

/// The `{"name": ...}` params many bdev methods take.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameParam {
    /// The bdev's name.
    pub name: String,
}

/// What a module's delete function looks like to [`delete_method`].
pub type DeleteFn = fn(&str, Box<dyn FnOnce() + Send>) -> Result<(), BdevError>;

/// Registers a `*_delete` method: decodes `P`, calls `delete` with the name
/// `name_of` picks, and answers `true` once the bdev is gone (SPDK answers
/// after the unregister completes), or the error if it could not start.
pub fn delete_method<P: DeserializeOwned + 'static>(
    reg: &RpcRegistry,
    method_name: &str,
    name_of: fn(&P) -> &str,
    delete: DeleteFn,
) {
    method_async(reg, method_name, StateMask::RUNTIME, move |p: P, resp| {
        let (id, done) = respond_later(resp, json!(true));
        if let Err(e) = delete(name_of(&p), Box::new(done)) {
            // `done` was dropped unrun: answer the parked responder here.
            answer_parked(id, Err(rpc_error(e)));
        }
    });
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetBdevsParams {
    #[serde(default)]
    name: Option<String>,
    /// Milliseconds to wait for the bdev to appear (accepted; bdevs here
    /// appear synchronously).
    #[serde(default)]
    #[allow(dead_code)]
    timeout: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QosParams {
    name: String,
    #[serde(default)]
    rw_ios_per_sec: Option<u64>,
    #[serde(default)]
    rw_mbytes_per_sec: Option<u64>,
    #[serde(default)]
    r_mbytes_per_sec: Option<u64>,
    #[serde(default)]
    w_mbytes_per_sec: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IostatParams {
    /// One bdev (rspdk's older form; SPDK's client sends `names`).
    #[serde(default)]
    name: Option<String>,
    /// The bdevs to report (SPDK); all when absent.
    #[serde(default)]
    names: Option<Vec<String>>,
    /// Each channel separately (one bdev only).
    #[serde(default)]
    per_channel: bool,
    /// What to reset once read.
    #[serde(default)]
    reset_mode: ResetMode,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResetIostatParams {
    #[serde(default)]
    name: Option<String>,
    #[serde(default = "reset_all")]
    mode: ResetMode,
}

fn reset_all() -> ResetMode {
    ResetMode::All
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableHistogramParams {
    name: String,
    enable: bool,
    /// Count only this I/O type (SPDK's I/O type name).
    #[serde(default)]
    opc: Option<String>,
    #[serde(default = "default_granularity")]
    granularity: u32,
    #[serde(default = "default_min_nsec")]
    min_nsec: u64,
    #[serde(default = "default_max_nsec")]
    max_nsec: u64,
}

fn default_granularity() -> u32 {
    crate::histogram::DEFAULT_GRANULARITY
}

/// SPDK's `SPDK_BDEV_HISTOGRAM_DEFAULT_MIN_VALUE_NS`.
fn default_min_nsec() -> u64 {
    1000
}

/// SPDK's `SPDK_BDEV_HISTOGRAM_DEFAULT_MAX_VALUE_NS`.
fn default_max_nsec() -> u64 {
    120_000_000_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QdPeriodParams {
    name: String,
    /// Microseconds; 0 turns sampling off.
    period: u64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BdevOptions {
    #[serde(default)]
    bdev_io_pool_size: Option<usize>,
    #[serde(default)]
    bdev_io_cache_size: Option<usize>,
    #[serde(default)]
    bdev_auto_examine: Option<bool>,
    #[serde(default)]
    iobuf_small_cache_size: Option<u32>,
    #[serde(default)]
    iobuf_large_cache_size: Option<u32>,
}

fn opt_params<P: DeserializeOwned + Default>(v: Option<Value>) -> Result<P, RpcError> {
    match v {
        None | Some(Value::Null) => Ok(P::default()),
        some => parse_params(some),
    }
}

/// Registers the bdev layer's methods (each module registers its own:
/// [`crate::BdevModule::register_rpcs`]).
pub fn register_rpcs(reg: &RpcRegistry) {
    let rt = StateMask::RUNTIME;
    let r = reg.register(
        "bdev_get_bdevs",
        rt,
        |params: Option<Value>, resp: Responder| {
            let p: GetBdevsParams = match opt_params(params) {
                Ok(p) => p,
                Err(e) => return resp.error(e),
            };
            match p.name {
                Some(n) => match bdev_get(&n) {
                    Some(b) => resp.success(&json!([b.info_json()])),
                    None => resp.error(rpc_error(BdevError::NotFound(n))),
                },
                None => resp.success(&Value::Array(
                    bdevs().iter().map(|b| b.info_json()).collect(),
                )),
            }
        },
    );
    log_reg(r, "bdev_get_bdevs");
    let r = reg.register(
        "bdev_get_iostat",
        rt,
        |params: Option<Value>, resp: Responder| {
            let p: IostatParams = match opt_params(params) {
                Ok(p) => p,
                Err(e) => return resp.error(e),
            };
            match iostat_bdevs(&p) {
                Ok(list) => get_iostat(list, p.per_channel, p.reset_mode, resp),
                Err(e) => resp.error(rpc_error(e)),
            }
        },
    );
    log_reg(r, "bdev_get_iostat");
    let r = reg.register(
        "bdev_reset_iostat",
        rt,
        |params: Option<Value>, resp: Responder| {
            let p: ResetIostatParams = match opt_params(params) {
                Ok(p) => p,
                Err(e) => return resp.error(e),
            };
            if p.mode == ResetMode::None {
                return resp.success(&true);
            }
            let list = match p.name {
                Some(n) => match bdev_get(&n) {
                    Some(b) => vec![b],
                    None => return resp.error(rpc_error(BdevError::NotFound(n))),
                },
                None => bdevs(),
            };
            crate::channel::gather_stats(list, p.mode, move |_| resp.success(&true));
        },
    );
    log_reg(r, "bdev_reset_iostat");
    method(
        reg,
        "bdev_enable_histogram",
        rt,
        |p: EnableHistogramParams| enable_histogram(&p).map(|()| json!(true)),
    );
    method_async(reg, "bdev_get_histogram", rt, |p: NameParam, resp| {
        let Some(b) = bdev_get(&p.name) else {
            return resp.error(rpc_error(BdevError::NotFound(p.name)));
        };
        crate::channel::get_histogram(&b, move |r| match r {
            Ok(h) => resp.success(&json!({
                "histogram": h.to_base64(),
                "granularity": h.granularity(),
                "min_range": h.min_range(),
                "max_range": h.max_range(),
                "tsc_rate": 1_000_000_000u64,
            })),
            Err(e) => resp.error(rpc_error(e)),
        });
    });
    method(
        reg,
        "bdev_set_qd_sampling_period",
        rt,
        |p: QdPeriodParams| {
            let b = bdev_get(&p.name).ok_or_else(|| BdevError::NotFound(p.name.clone()))?;
            set_qd_sampling_period(&b, p.period)?;
            Ok(json!(true))
        },
    );
    method(reg, "bdev_set_qos_limit", rt, |p: QosParams| {
        let b = bdev_get(&p.name).ok_or_else(|| BdevError::NotFound(p.name.clone()))?;
        let mut l = b.0.qos.limits();
        if p.rw_ios_per_sec.is_none()
            && p.rw_mbytes_per_sec.is_none()
            && p.r_mbytes_per_sec.is_none()
            && p.w_mbytes_per_sec.is_none()
        {
            return Err(BdevError::InvalidParam(
                "give at least one of rw_ios_per_sec, rw_mbytes_per_sec, r_mbytes_per_sec, w_mbytes_per_sec".into(),
            ));
        }
        if let Some(v) = p.rw_ios_per_sec {
            if v % 1000 != 0 {
                return Err(BdevError::InvalidParam(format!(
                    "rw_ios_per_sec {v} must be a multiple of 1000 (as SPDK requires)"
                )));
            }
            l.rw_ios_per_sec = v;
        }
        if let Some(v) = p.rw_mbytes_per_sec {
            l.rw_mbytes_per_sec = v;
        }
        if let Some(v) = p.r_mbytes_per_sec {
            l.r_mbytes_per_sec = v;
        }
        if let Some(v) = p.w_mbytes_per_sec {
            l.w_mbytes_per_sec = v;
        }
        b.set_qos_limits(l);
        Ok(json!(true))
    });
    let r = reg.register(
        "bdev_wait_for_examine",
        StateMask::ALL,
        |params, resp: Responder| {
            match rspdk_rpc::expect_no_params("bdev_wait_for_examine", &params) {
                // Examine runs synchronously at registration: nothing is pending.
                Ok(()) => resp.success(&true),
                Err(e) => resp.error(e),
            }
        },
    );
    log_reg(r, "bdev_wait_for_examine");
    method(reg, "bdev_examine", rt, |p: NameParam| {
        crate::examine_by_name(&p.name).map(|()| json!(true))
    });
    method(
        reg,
        "bdev_set_options",
        StateMask::STARTUP,
        |p: BdevOptions| {
            let (pool, cache) = crate::io_pool_options();
            if let Some(on) = p.bdev_auto_examine {
                crate::set_auto_examine(on);
            }
            rspdk_thread::iobuf::set_cache_sizes(
                p.iobuf_small_cache_size.map(|n| n as usize),
                p.iobuf_large_cache_size.map(|n| n as usize),
            );
            crate::set_io_pool_options(
                p.bdev_io_pool_size.unwrap_or(pool),
                p.bdev_io_cache_size.unwrap_or(cache),
            );
            Ok(json!(true))
        },
    );
}

fn log_reg(r: Result<(), rspdk_rpc::Error>, name: &str) {
    if let Err(e) = r {
        tracing::error!(method = name, error = %e, "RPC method registration failed");
    }
}

/// The bdevs a `bdev_get_iostat` asks for, in the order asked.
fn iostat_bdevs(p: &IostatParams) -> Result<Vec<crate::Bdev>, BdevError> {
    let names: Option<Vec<&String>> = match (&p.name, &p.names) {
        (Some(_), Some(_)) => {
            return Err(BdevError::InvalidParam(
                "give name or names, not both".into(),
            ))
        }
        (Some(n), None) => Some(vec![n]),
        (None, Some(v)) => Some(v.iter().collect()),
        (None, None) => None,
    };
    if p.per_channel && names.as_ref().is_none_or(|n| n.len() != 1) {
        return Err(BdevError::InvalidParam(
            "per_channel needs exactly one bdev: give names with one name".into(),
        ));
    }
    match names {
        Some(names) => names
            .into_iter()
            .map(|n| bdev_get(n).ok_or_else(|| BdevError::NotFound(n.clone())))
            .collect(),
        None => Ok(bdevs()),
    }
}

/// Answers `bdev_get_iostat` for `list` in SPDK's shape.
fn get_iostat(list: Vec<crate::Bdev>, per_channel: bool, reset: ResetMode, resp: Responder) {
    if per_channel {
        let b = list[0].clone();
        let name = b.name().to_string();
        return crate::channel::channel_stats(&b, reset, move |chans| {
            let channels: Vec<Value> = chans
                .iter()
                .map(|(thread, s)| {
                    let mut v = s.fields_json();
                    v["thread_id"] = json!(thread);
                    v
                })
                .collect();
            resp.success(&json!({
                "tick_rate": 1_000_000_000u64,
                "ticks": now_ns(),
                "name": name,
                "channels": channels,
            }));
        });
    }
    let by_name = list.clone();
    crate::channel::gather_stats(list, reset, move |stats| {
        let bdevs: Vec<Value> = stats
            .iter()
            .zip(by_name.iter())
            .map(|((n, s), b)| {
                let mut v = s.to_json(n);
                let q = *crate::bdev::lock(&b.0.qd);
                if q.period_us > 0 {
                    v["queue_depth_polling_period"] = json!(q.period_us);
                    v["queue_depth"] = json!(q.queue_depth);
                    v["io_time"] = json!(q.io_time);
                    v["weighted_io_time"] = json!(q.weighted_io_time);
                }
                v
            })
            .collect();
        resp.success(&json!({
            "tick_rate": 1_000_000_000u64,
            "ticks": now_ns(),
            "bdevs": bdevs,
        }));
    });
}

/// `bdev_enable_histogram`: new settings, and every channel starts a new,
/// empty histogram (or drops its own when disabled).
fn enable_histogram(p: &EnableHistogramParams) -> Result<(), BdevError> {
    let b = bdev_get(&p.name).ok_or_else(|| BdevError::NotFound(p.name.clone()))?;
    let io_type = match p.opc.as_deref() {
        None => None,
        Some(o) => Some(
            crate::IoType::ALL
                .iter()
                .copied()
                .find(|t| t.name() == o)
                .ok_or_else(|| {
                    let names: Vec<&str> = crate::IoType::ALL.iter().map(|t| t.name()).collect();
                    BdevError::InvalidParam(format!(
                        "opc {o:?} is not an I/O type this bdev layer counts: give one of {names:?} or omit it for all"
                    ))
                })?,
        ),
    };
    if p.enable {
        if p.granularity > crate::histogram::MAX_GRANULARITY {
            return Err(BdevError::InvalidParam(format!(
                "granularity {} is too large: give at most {} (default {})",
                p.granularity,
                crate::histogram::MAX_GRANULARITY,
                crate::histogram::DEFAULT_GRANULARITY
            )));
        }
        if p.min_nsec >= p.max_nsec {
            return Err(BdevError::InvalidParam(format!(
                "min_nsec {} must be below max_nsec {}",
                p.min_nsec, p.max_nsec
            )));
        }
    }
    let mut cfg = crate::bdev::lock(&b.0.hist);
    *cfg = crate::histogram::HistConfig {
        enabled: p.enable,
        io_type,
        granularity: p.granularity,
        min_nsec: p.min_nsec,
        max_nsec: p.max_nsec,
        retired: None,
    };
    b.0.hist_gen
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    Ok(())
}

thread_local! {
    /// The queue depth samplers running on this (the app) thread, by bdev.
    static QD_POLLERS: std::cell::RefCell<std::collections::HashMap<String, rspdk_thread::Poller>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// `bdev_set_qd_sampling_period`: samples the bdev's queue depth every
/// `period_us` microseconds on this thread (0: stop).
pub fn set_qd_sampling_period(b: &crate::Bdev, period_us: u64) -> Result<(), BdevError> {
    crate::bdev::lock(&b.0.qd).period_us = period_us;
    QD_POLLERS.with(|m| {
        if let Some(p) = m.borrow_mut().remove(b.name()) {
            p.unregister();
        }
    });
    if period_us == 0 {
        return Ok(());
    }
    let weak = std::sync::Arc::downgrade(&b.0);
    let poller = rspdk_thread::poller_register("bdev_qd_sampling", period_us, move |me| match weak
        .upgrade()
    {
        Some(sh) => {
            crate::channel::sample_queue_depth(crate::Bdev(sh));
            rspdk_thread::PollerStatus::Busy
        }
        None => {
            me.unregister();
            rspdk_thread::PollerStatus::Idle
        }
    })
    .map_err(|e| BdevError::InvalidParam(format!("cannot start queue depth sampling: {e}")))?;
    QD_POLLERS.with(|m| m.borrow_mut().insert(b.name().to_string(), poller));
    Ok(())
}

/// Parks `resp` until [`answer_parked`] is called with the returned id on
/// this thread.
pub fn park(resp: Responder) -> u64 {
    let id = NEXT_PARKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PARKED.with(|p| p.borrow_mut().insert(id, resp));
    id
}

/// Answers a parked responder now, on this thread (when the operation that
/// would have answered it failed to start, or finished elsewhere).
pub fn answer_parked(id: u64, result: Result<Value, RpcError>) {
    if let Some(r) = PARKED.with(|p| p.borrow_mut().remove(&id)) {
        r.complete(result);
    }
}

/// The `bdev` subsystem's save_config array (SPDK's order: options,
/// module-wide settings, the bdevs in registration order, histogram and
/// queue depth sampling settings, QoS limits, then `bdev_wait_for_examine`).
pub fn config_json() -> Vec<Value> {
    let (pool, cache) = crate::io_pool_options();
    let (small, large) = rspdk_thread::iobuf::cache_sizes();
    let mut out = vec![json!({
        "method": "bdev_set_options",
        "params": {
            "bdev_io_pool_size": pool,
            "bdev_io_cache_size": cache,
            "bdev_auto_examine": crate::auto_examine(),
            "iobuf_small_cache_size": small,
            "iobuf_large_cache_size": large
        }
    })];
    out.extend(
        crate::examine_allowlist()
            .into_iter()
            .map(|n| json!({"method": "bdev_examine", "params": {"name": n}})),
    );
    for m in crate::modules() {
        out.extend(m.config_json());
    }
    let all = bdevs();
    for b in &all {
        if let Some(c) = b.config_json() {
            out.push(c);
        }
    }
    for b in &all {
        let cfg = crate::bdev::lock(&b.0.hist);
        if cfg.enabled {
            let mut params = json!({
                "name": b.name(),
                "enable": true,
                "granularity": cfg.granularity,
                "min_nsec": cfg.min_nsec,
                "max_nsec": cfg.max_nsec,
            });
            if let Some(t) = cfg.io_type {
                params["opc"] = json!(t.name());
            }
            out.push(json!({"method": "bdev_enable_histogram", "params": params}));
        }
        let period = crate::bdev::lock(&b.0.qd).period_us;
        if period > 0 {
            out.push(json!({"method": "bdev_set_qd_sampling_period", "params": {
                "name": b.name(),
                "period": period,
            }}));
        }
    }
    for b in &all {
        let l: QosLimits = b.0.qos.limits();
        if l != QosLimits::default() {
            out.push(json!({"method": "bdev_set_qos_limit", "params": {
                "name": b.name(),
                "rw_ios_per_sec": l.rw_ios_per_sec,
                "rw_mbytes_per_sec": l.rw_mbytes_per_sec,
                "r_mbytes_per_sec": l.r_mbytes_per_sec,
                "w_mbytes_per_sec": l.w_mbytes_per_sec,
            }}));
        }
    }
    out.push(json!({"method": "bdev_wait_for_examine"}));
    out
}
