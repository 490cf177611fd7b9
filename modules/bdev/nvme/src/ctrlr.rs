//! Controller management: attach (checked, connected off the SPDK thread,
//! then its bdevs registered), detach, reset, `bdev_nvme_get_controllers`,
//! and each controller's admin poller with the reconnect policy.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rspdk_bdev::rpc::{answer_parked, park, rpc_error};
use rspdk_bdev::{bdev_register, bdev_unregister, BdevError, BdevProps};
use rspdk_nvme::{
    CmdErrorInjection, Controller, ControllerOpts, NvmeError, QpairOpts, TransportId,
};
use rspdk_thread::{poller_register, Poller, PollerStatus};
use serde_json::{json, Value};

use crate::io::{NvmeBackend, NvmeNs};
use crate::opts;
use crate::params::{AttachParams, ReconnectPolicy};
use crate::MODULE;

/// What the channels of a controller need to know about its health.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// The controller failed and a reconnect is pending: I/O waits.
    pub(crate) reconnecting: AtomicBool,
    /// `fast_io_fail_timeout_sec` passed while reconnecting: I/O fails.
    pub(crate) io_fail: AtomicBool,
    /// Reconnects are attempted (ctrlr_loss_timeout_sec != 0).
    pub(crate) enabled: bool,
    /// Without a policy: the one reset of this failure was tried.
    pub(crate) reset_tried: AtomicBool,
    /// Disabled by `bdev_nvme_disable_controller`: I/O fails, no reconnect.
    pub(crate) disabled: AtomicBool,
    /// Bumped when `inject` changes; channels compare it once per poll.
    pub(crate) inject_gen: AtomicU64,
    /// The I/O error injections every channel's queue pair should carry,
    /// each with a serial number.
    pub(crate) inject: Mutex<Vec<(u64, CmdErrorInjection)>>,
}

impl Health {
    /// True when I/O should wait for the reconnect rather than fail.
    pub(crate) fn waits(&self) -> bool {
        self.enabled && !self.io_fail.load(Ordering::Acquire)
    }
}

/// The bdev name of namespace `nsid` of controller `ctrlr_name`.
pub fn bdev_name(ctrlr_name: &str, nsid: u32) -> String {
    format!("{ctrlr_name}n{nsid}")
}

/// An attached controller and the bdevs made from it.
pub(crate) struct NvmeCtrlr {
    pub(crate) name: String,
    pub(crate) ctrlr: Controller,
    pub(crate) params: AttachParams,
    pub(crate) bdevs: Vec<String>,
    pub(crate) policy: ReconnectPolicy,
    pub(crate) health: Arc<Health>,
    /// When the current failure was first seen.
    pub(crate) failed_at: Option<Instant>,
    /// When the next reconnect attempt may run.
    pub(crate) next_try: Option<Instant>,
}

thread_local! {
    /// Admin pollers of the controllers this thread attached.
    static ADMIN_POLLERS: RefCell<HashMap<String, Poller>> = RefCell::new(HashMap::new());
}

pub(crate) fn drop_admin_poller(name: &str) {
    let _ = ADMIN_POLLERS.try_with(|m| {
        if let Some(p) = m.borrow_mut().remove(name) {
            p.unregister();
        }
    });
}

/// Without a reconnect policy (`ctrlr_loss_timeout_sec` 0, SPDK's default)
/// a fabrics controller that failed gets one reset (reconnect), as SPDK's
/// bdev_nvme does: if the target is back by then the controller carries on,
/// otherwise it stays failed and its I/O fails. A PCIe controller is left
/// failed (a removed or dead device would only time out again).
fn reset_once(name: &str, ctrlr: &Controller, health: &Health) -> PollerStatus {
    if !ctrlr.is_fabrics() || health.reset_tried.swap(true, Ordering::AcqRel) {
        return PollerStatus::Idle;
    }
    match ctrlr.reset() {
        Ok(()) => {
            health.reset_tried.store(false, Ordering::Release);
            tracing::info!(name, "NVMe controller failed and was reset (reconnected)");
        }
        Err(e) => tracing::error!(
            name,
            error = %e,
            "NVMe controller failed and its reset failed: it stays failed (attach with ctrlr_loss_timeout_sec and reconnect_delay_sec to keep reconnecting)"
        ),
    }
    PollerStatus::Busy
}

/// One admin poller tick: admin completions and keep alive while the
/// controller is healthy; the reconnect policy once it has failed.
fn admin_tick(name: &str) -> PollerStatus {
    let Some((ctrlr, health, policy)) = ctrlrs()
        .iter()
        .find(|c| c.name == name)
        .map(|c| (c.ctrlr.clone(), c.health.clone(), c.policy))
    else {
        return PollerStatus::Idle;
    };
    if health.disabled.load(Ordering::Acquire) {
        return PollerStatus::Idle;
    }
    if !ctrlr.is_failed() {
        if let Err(e) = ctrlr.process_admin_completions() {
            tracing::warn!(name, error = %e, "NVMe admin queue");
        }
        if !ctrlr.is_failed() {
            // Healthy again (e.g. bdev_nvme_reset_controller): the next
            // failure gets its own reset.
            if health.reset_tried.load(Ordering::Relaxed) {
                health.reset_tried.store(false, Ordering::Release);
            }
            return PollerStatus::Idle;
        }
    }
    if !health.enabled {
        return reset_once(name, &ctrlr, &health);
    }
    let now = Instant::now();
    let (failed_at, next_try) = {
        let mut list = ctrlrs();
        let Some(c) = list.iter_mut().find(|c| c.name == name) else {
            return PollerStatus::Idle;
        };
        let f = *c.failed_at.get_or_insert(now);
        (f, *c.next_try.get_or_insert(now))
    };
    if !health.reconnecting.swap(true, Ordering::AcqRel) {
        tracing::warn!(name, "NVMe controller failed; reconnecting");
    }
    let down = now.duration_since(failed_at);
    if policy.fast_io_fail_timeout_sec > 0
        && down >= Duration::from_secs(policy.fast_io_fail_timeout_sec as u64)
        && !health.io_fail.swap(true, Ordering::AcqRel)
    {
        tracing::warn!(name, "fast_io_fail_timeout_sec passed: failing I/O");
    }
    if policy.ctrlr_loss_timeout_sec > 0
        && down >= Duration::from_secs(policy.ctrlr_loss_timeout_sec as u64)
    {
        tracing::error!(
            name,
            "ctrlr_loss_timeout_sec passed: deleting the controller"
        );
        health.io_fail.store(true, Ordering::Release);
        let n = name.to_string();
        if let Err(e) = detach(
            name,
            move || tracing::info!(name = %n, "NVMe controller deleted"),
        ) {
            tracing::warn!(name, error = %e, "deleting the lost controller");
        }
        return PollerStatus::Busy;
    }
    if now < next_try {
        return PollerStatus::Idle;
    }
    if let Some(c) = ctrlrs().iter_mut().find(|c| c.name == name) {
        c.next_try = Some(now + Duration::from_secs(policy.reconnect_delay_sec.max(1) as u64));
    }
    match ctrlr.reset() {
        Ok(()) => {
            if let Some(c) = ctrlrs().iter_mut().find(|c| c.name == name) {
                c.failed_at = None;
                c.next_try = None;
            }
            health.io_fail.store(false, Ordering::Release);
            health.reconnecting.store(false, Ordering::Release);
            tracing::info!(
                name,
                after_ms = down.as_millis() as u64,
                "NVMe controller reconnected"
            );
        }
        Err(e) => tracing::warn!(name, error = %e, "NVMe reconnect attempt failed"),
    }
    PollerStatus::Busy
}

static CTRLRS: Mutex<Vec<NvmeCtrlr>> = Mutex::new(Vec::new());

/// How many controllers are attached.
pub fn controller_count() -> usize {
    ctrlrs().len()
}

pub(crate) fn ctrlrs() -> std::sync::MutexGuard<'static, Vec<NvmeCtrlr>> {
    CTRLRS.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn nvme_err(what: &str, e: NvmeError) -> BdevError {
    BdevError::Module {
        errno: e.errno(),
        message: format!("{what}: {e}"),
    }
}

pub(crate) fn no_ctrlr(name: &str) -> BdevError {
    BdevError::Module {
        errno: libc::ENODEV,
        message: format!("no NVMe controller named '{name}'"),
    }
}

/// What [`attach`] checked before connecting: the parameters as saved,
/// the transport ID, the controller options and the reconnect policy.
pub struct AttachPlan {
    pub(crate) params: AttachParams,
    pub(crate) trid: TransportId,
    pub(crate) opts: ControllerOpts,
    pub(crate) policy: ReconnectPolicy,
}

impl AttachPlan {
    /// The transport ID to connect to.
    pub fn trid(&self) -> &TransportId {
        &self.trid
    }

    /// The controller name.
    pub fn name(&self) -> &str {
        &self.params.name
    }

    /// Connects (blocking: the TCP connect, the Connect command, Identify,
    /// controller enable); safe to run on any OS thread.
    pub fn connect(&self) -> Result<Controller, BdevError> {
        let c = Controller::connect(&self.trid, &self.opts)
            .map_err(|e| nvme_err(&self.trid.to_string(), e))?;
        let o = opts::get();
        let arb = o.arbitration_burst
            | (o.low_priority_weight << 8)
            | (o.medium_priority_weight << 16)
            | (o.high_priority_weight << 24);
        if arb != 0 {
            // Set Features, Arbitration (01h), as SPDK does at attach.
            if let Err(e) = c.set_feature(0x01, arb) {
                let _ = c.detach();
                return Err(nvme_err("Set Features (Arbitration)", e));
            }
        }
        Ok(c)
    }
}

/// Attaches a controller and registers a bdev per active namespace (SPDK:
/// `bdev_nvme_create`), blocking the calling thread while it connects.
/// Returns the bdev names. The RPC connects on a helper thread instead
/// ([`attach_plan`], [`AttachPlan::connect`], [`attach_finish`]).
pub fn attach(params: AttachParams) -> Result<Vec<String>, BdevError> {
    let plan = attach_plan(params)?;
    let ctrlr = plan.connect()?;
    attach_finish(plan, ctrlr)
}

/// Checks `params` (names free, transport ID, policy, supported options)
/// without touching the network.
pub fn attach_plan(mut params: AttachParams) -> Result<AttachPlan, BdevError> {
    let trid = params.trid()?;
    if trid.trtype == rspdk_nvme::TransportType::Tcp && trid.is_discovery() {
        return Err(BdevError::InvalidParam(format!(
            "{trid}: give the subsystem NQN (-n/subnqn); a discovery controller has no namespaces"
        )));
    }
    let o = opts::get();
    let policy = {
        let mut p = params.clone();
        if p.ctrlr_loss_timeout_sec.is_none() && p.reconnect_delay_sec.is_none() {
            p.ctrlr_loss_timeout_sec = Some(o.ctrlr_loss_timeout_sec);
            p.reconnect_delay_sec = Some(o.reconnect_delay_sec);
            p.fast_io_fail_timeout_sec = p
                .fast_io_fail_timeout_sec
                .or(Some(o.fast_io_fail_timeout_sec));
        }
        ReconnectPolicy::from_params(&p)?
    };
    // Saved as SPDK writes them: `PCIe`/`TCP`, a full BDF, `IPv4`.
    params.trtype = trid.trtype.as_str().to_string();
    params.traddr = trid.traddr.clone();
    params.adrfam = trid.adrfam.clone();
    check_free(&params, &trid)?;
    params.check_supported()?;
    let mut opts = ControllerOpts::default();
    if let Some(n) = params.num_io_queues {
        if n == 0 {
            return Err(BdevError::InvalidParam("num_io_queues must be > 0".into()));
        }
        opts.num_io_queues = n;
    }
    opts.header_digest = params.hdgst.unwrap_or(false);
    opts.data_digest = params.ddgst.unwrap_or(false);
    if let Some(h) = &params.hostnqn {
        opts.hostnqn = h.clone();
    }
    opts.keep_alive_timeout_ms = o.keep_alive_timeout_ms;
    if o.io_queue_requests > 0 {
        opts.io_queue_requests = o.io_queue_requests.max(opts.io_queue_requests);
    }
    let admin_us = if o.timeout_admin_us != 0 {
        o.timeout_admin_us
    } else {
        o.timeout_us
    };
    if admin_us > 0 {
        opts.admin_timeout_ms = admin_us.div_ceil(1000);
    }
    if o.tcp_connect_timeout_ms > 0 && trid.trtype == rspdk_nvme::TransportType::Tcp {
        opts.admin_timeout_ms = o.tcp_connect_timeout_ms as u64;
    }
    if let Some(us) = params.fabrics_connect_timeout_us.filter(|&u| u > 0) {
        opts.admin_timeout_ms = us.div_ceil(1000);
    }
    Ok(AttachPlan {
        params,
        trid,
        opts,
        policy,
    })
}

/// Checks that the name and transport ID are still free (another attach
/// may have finished while this one connected).
fn check_free(params: &AttachParams, trid: &TransportId) -> Result<(), BdevError> {
    let list = ctrlrs();
    if list.iter().any(|c| c.name == params.name) {
        return Err(BdevError::Module {
            errno: libc::EEXIST,
            message: format!("an NVMe controller named '{}' exists", params.name),
        });
    }
    let same = |t: &TransportId| {
        t.traddr == trid.traddr && t.trsvcid == trid.trsvcid && t.subnqn == trid.subnqn
    };
    if let Some(c) = list.iter().find(|c| same(c.ctrlr.trid())) {
        return Err(BdevError::Module {
            errno: libc::EEXIST,
            message: format!("{trid} is already attached as '{}'", c.name),
        });
    }
    Ok(())
}

/// Registers the bdevs of a connected controller and starts its admin
/// poller on the calling (SPDK) thread. Returns the bdev names.
pub fn attach_finish(plan: AttachPlan, ctrlr: Controller) -> Result<Vec<String>, BdevError> {
    let AttachPlan {
        params,
        trid,
        policy,
        opts: copts,
    } = plan;
    let plan_requests = copts.io_queue_requests;
    if let Err(e) = check_free(&params, &trid) {
        let _ = ctrlr.detach();
        return Err(e);
    }
    let max_bdevs = params.max_bdevs.unwrap_or(128) as usize;
    let mut namespaces = ctrlr.namespaces();
    namespaces.sort_by_key(|n| n.id);
    namespaces.truncate(max_bdevs);
    let cdata = ctrlr.data();
    let oncs = cdata.oncs();
    let vwc = cdata.vwc_present();
    let max_xfer = ctrlr.max_transfer_size();
    let health = Arc::new(Health {
        enabled: policy.ctrlr_loss_timeout_sec != 0,
        ..Default::default()
    });
    let o = opts::get();
    let mut names = Vec::new();
    let mut fail = None;
    for ns in &namespaces {
        let name = bdev_name(&params.name, ns.id);
        let mut props = BdevProps::new(&name, ns.block_size, ns.num_blocks, "NVMe disk");
        props.write_cache = vwc;
        // Over PCIe the controller reads and writes the buffers itself.
        props.requires_dma = ctrlr.requires_dma();
        props.max_transfer_blocks = (max_xfer / ns.block_size as usize) as u64;
        let backend = NvmeBackend(Arc::new(NvmeNs {
            ctrlr: ctrlr.clone(),
            ctrlr_name: params.name.clone(),
            nsid: ns.id,
            oncs,
            vwc,
            health: health.clone(),
            qp_opts: QpairOpts {
                io_queue_size: ControllerOpts::default().io_queue_size,
                io_queue_requests: plan_requests,
                delay_doorbell: o.delay_cmd_submit,
            },
            ioq_poll_us: o.nvme_ioq_poll_period_us,
            timeout: (o.timeout_us, o.action_on_timeout.clone()),
            enable_flush: o.enable_flush,
        }));
        match bdev_register(props, MODULE, Box::new(backend)) {
            Ok(_) => names.push(name),
            Err(e) => {
                fail = Some(e);
                break;
            }
        }
    }
    if let Some(e) = fail {
        for n in &names {
            let _ = bdev_unregister(n, || {});
        }
        let _ = ctrlr.detach();
        return Err(e);
    }
    tracing::info!(name = %params.name, trid = %trid, bdevs = ?names, "NVMe controller attached");
    let name = params.name.clone();
    ctrlrs().push(NvmeCtrlr {
        name: params.name.clone(),
        ctrlr,
        params,
        bdevs: names.clone(),
        policy,
        health,
        failed_at: None,
        next_try: None,
    });
    let n2 = name.clone();
    match poller_register("bdev_nvme_admin", o.nvme_adminq_poll_period_us, move |_| {
        admin_tick(&n2)
    }) {
        Ok(p) => {
            let _ = ADMIN_POLLERS.try_with(|m| m.borrow_mut().insert(name, p));
        }
        Err(e) => {
            tracing::warn!(error = %e, "no admin poller (not on an SPDK thread): no keep alive or reconnect")
        }
    }
    Ok(names)
}

/// Runs `run` on a helper OS thread named `name` when called on an SPDK
/// thread (it blocks: a detach waits for the controller, over TCP maybe
/// for a target served by this very reactor); off an SPDK thread, or if
/// no thread can be spawned, runs it here.
pub(crate) fn off_reactor(name: &str, run: impl FnOnce() + Send + 'static) {
    if rspdk_thread::get_thread().is_none() {
        return run();
    }
    let slot = Arc::new(Mutex::new(Some(run)));
    let s2 = slot.clone();
    if std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(r) = s2.lock().unwrap_or_else(|e| e.into_inner()).take() {
                r()
            }
        })
        .is_err()
    {
        if let Some(r) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r()
        }
    }
}

/// Runs `work` on a helper OS thread (blocking network work: connect,
/// reset), then `finish` with its result back on this SPDK thread, whose
/// answer completes `resp`. Off an SPDK thread both run here, in turn.
pub(crate) fn off_thread<T: Send + 'static>(
    resp: rspdk_rpc::Responder,
    work: impl FnOnce() -> T + Send + 'static,
    finish: impl FnOnce(T) -> Result<Value, BdevError> + Send + 'static,
) {
    let Some(home) = rspdk_thread::get_thread().map(|t| t.handle()) else {
        return resp.complete(finish(work()).map_err(rpc_error));
    };
    let id = park(resp);
    let spawned = std::thread::Builder::new()
        .name("bdev_nvme_rpc".into())
        .spawn(move || {
            let out = work();
            let answer = move || answer_parked(id, finish(out).map_err(rpc_error));
            if home.send_msg(answer).is_err() {
                tracing::warn!("bdev_nvme: the RPC thread is gone; the answer is lost");
            }
        });
    if let Err(e) = spawned {
        answer_parked(
            id,
            Err(rspdk_rpc::RpcError::internal_error(format!(
                "cannot start a helper thread: {e}"
            ))),
        );
    }
}

/// Unregisters a controller's bdevs, then detaches it (SPDK:
/// `bdev_nvme_delete`); `done` runs when it is detached.
pub fn detach(name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    let c = {
        let mut list = ctrlrs();
        let i = list
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| no_ctrlr(name))?;
        list.remove(i)
    };
    drop_admin_poller(name);
    c.health.io_fail.store(true, Ordering::Release);
    let bdevs: Vec<String> = c
        .bdevs
        .iter()
        .filter(|b| rspdk_bdev::bdev_get(b).is_some())
        .cloned()
        .collect();
    let ctrlr = c.ctrlr;
    // The shutdown notification waits for the controller (over TCP, for
    // a target that may be served by this very reactor): off the reactor.
    let finish = move || {
        let run = move || {
            if let Err(e) = ctrlr.detach() {
                tracing::warn!(error = %e, "NVMe detach");
            }
            done();
        };
        off_reactor("bdev_nvme_detach", run);
    };
    if bdevs.is_empty() {
        finish();
        return Ok(());
    }
    let left = Arc::new(AtomicUsize::new(bdevs.len()));
    let finish = Mutex::new(Some(finish));
    let tick = Arc::new(move || {
        if left.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(f) = finish.lock().unwrap_or_else(|e| e.into_inner()).take() {
                f();
            }
        }
    });
    for b in bdevs {
        let t = tick.clone();
        if let Err(e) = bdev_unregister(&b, move || t()) {
            tracing::warn!(bdev = %b, error = %e, "unregistering an NVMe bdev");
            tick();
        }
    }
    Ok(())
}

/// Resets a controller (SPDK: `bdev_nvme_reset_controller`).
pub fn reset(name: &str) -> Result<(), BdevError> {
    let c = ctrlrs()
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.ctrlr.clone())
        .ok_or_else(|| no_ctrlr(name))?;
    c.reset().map_err(|e| nvme_err("reset", e))
}

pub(crate) fn trid_json(t: &TransportId) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("trtype".into(), json!(t.trtype.as_str()));
    m.insert("traddr".into(), json!(t.traddr));
    if let Some(a) = &t.adrfam {
        m.insert("adrfam".into(), json!(a));
    }
    if let Some(s) = &t.trsvcid {
        m.insert("trsvcid".into(), json!(s));
    }
    if let Some(n) = &t.subnqn {
        m.insert("subnqn".into(), json!(n));
    }
    Value::Object(m)
}

/// `bdev_nvme_get_controllers` output (SPDK's shape), for one name or all.
pub fn get_controllers(name: Option<&str>) -> Result<Value, BdevError> {
    let list = ctrlrs();
    let mut out = Vec::new();
    for c in list.iter().filter(|c| name.is_none_or(|n| n == c.name)) {
        out.push(json!({
            "name": c.name,
            "ctrlrs": [{
                "state": if c.health.disabled.load(Ordering::Acquire) {
                    "disabled"
                } else if !c.ctrlr.is_failed() {
                    "enabled"
                } else if c.health.enabled {
                    "resetting"
                } else {
                    "failed"
                },
                "trid": trid_json(c.ctrlr.trid()),
                "cntlid": c.ctrlr.cntlid(),
                "host": {
                    "nqn": c.params.hostnqn.clone().unwrap_or_default(),
                    "addr": c.params.hostaddr.clone().unwrap_or_default(),
                    "svcid": c.params.hostsvcid.clone().unwrap_or_default(),
                },
            }],
        }));
    }
    if let Some(n) = name {
        if out.is_empty() {
            return Err(no_ctrlr(n));
        }
    }
    Ok(Value::Array(out))
}
