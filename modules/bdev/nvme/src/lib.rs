//! The NVMe bdev (SPDK: module/bdev/nvme): `bdev_nvme_attach_controller`
//! attaches a controller through `rspdk_nvme` and registers one bdev per
//! active namespace, named `<name>n<nsid>` (`Nvme0n1`, ...).
//!
//! Each bdev channel owns an I/O queue pair of the controller, created on
//! the channel's thread and polled by the channel's poller. I/O is put in a
//! fixed slot table whose index is the command's completion context, so
//! nothing is allocated per I/O; vectored buffers are handed to the driver
//! through [`SgeFns`] callbacks that walk the I/O's own iovec array. NVMe
//! errors complete the I/O with [`IoStatus::Nvme`]. A bdev reset resets the
//! controller (what was in flight completes with "Command Aborted due to SQ
//! Deletion" and the queue pairs re-create their queues).
//!
//! save_config writes one `bdev_nvme_attach_controller` per controller
//! (the module's config, like SPDK's); at shutdown the controllers are
//! detached after their bdevs are gone.
//!
//! RPCs: `bdev_nvme_attach_controller`, `bdev_nvme_detach_controller`,
//! `bdev_nvme_get_controllers`, `bdev_nvme_reset_controller`, with SPDK's
//! names and parameters; `bdev_nvme_set_options` ([`opts`]); the health
//! log, passthrough, error injection, enable/disable, I/O paths and
//! statistics (`admin`); discovery services (`discovery`); PCIe hotplug
//! (`hotplug`). Transports: PCIe and TCP (`-t tcp -a ADDR -s PORT
//! -f ipv4 -n SUBNQN [-q HOSTNQN] [--hdgst] [--ddgst]`).
//!
//! Each controller has an admin poller on the thread that attached it: it
//! polls the admin queue (Asynchronous Events; over TCP the Keep Alives)
//! and runs SPDK's reconnect policy when the controller fails (over TCP:
//! the connection dropped). With `ctrlr_loss_timeout_sec` non-zero, a
//! failed controller is reset (reconnected) at once and then every
//! `reconnect_delay_sec`; meanwhile I/O waits in the channels (aborted
//! commands included) until the reconnect, or fails once
//! `fast_io_fail_timeout_sec` (non-zero) has passed; after
//! `ctrlr_loss_timeout_sec` (-1: never) the controller and its bdevs are
//! deleted. With 0 (the default) a failed fabrics controller gets one
//! reset, as in SPDK; if that fails it stays failed (I/O fails at once)
//! until `bdev_nvme_reset_controller`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rspdk_nvme::{
    CmdErrorInjection, Controller, ControllerOpts, IoQpair, NvmeError, QpairOpts, SgeFns,
    TimeoutAction, TransportId,
};
use rspdk_thread::{poller_register, Poller, PollerStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use rspdk_bdev::rpc::{answer_parked, method, method_async, park, respond_later, rpc_error};
use rspdk_bdev::BdevIo;
use rspdk_bdev::{bdev_register, bdev_unregister, BackendChannel, BdevBackend};
use rspdk_bdev::{BdevError, BdevProps, IoStatus, IoType, IoVec};

mod admin;
mod discovery;
mod hotplug;
pub mod opts;

/// The module name.
pub const MODULE: &str = "nvme";

/// ONCS bits (Identify Controller, Optional NVM Command Support).
const ONCS_COMPARE: u16 = 1 << 0;
const ONCS_DSM: u16 = 1 << 2;
const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// Write Zeroes moves at most 65536 blocks per command (16-bit NLB).
const MAX_WRITE_ZEROES_BLOCKS: u64 = 1 << 16;

/// Parameters of `bdev_nvme_attach_controller`, as SPDK names them.
/// Every parameter SPDK's client sends is accepted; the ones this driver
/// cannot honour yet are refused by [`AttachParams::check_supported`]
/// unless they have their default value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttachParams {
    /// Controller name; bdevs are named `<name>n<nsid>`.
    pub name: String,
    /// Transport type: `PCIe` or `TCP` (case-insensitive); `RDMA` is not
    /// implemented.
    pub trtype: String,
    /// Transport address (for PCIe a BDF such as `0000:00:04.0`).
    pub traddr: String,
    /// Address family (fabrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adrfam: Option<String>,
    /// Service id (fabrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trsvcid: Option<String>,
    /// Transport priority (fabrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Subsystem NQN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnqn: Option<String>,
    /// Host NQN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostnqn: Option<String>,
    /// Host address (fabrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostaddr: Option<String>,
    /// Host service id (fabrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostsvcid: Option<String>,
    /// Protection information reference tag checks: only false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prchk_reftag: Option<bool>,
    /// Protection information guard checks: only false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prchk_guard: Option<bool>,
    /// TCP header digest (fabrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hdgst: Option<bool>,
    /// TCP data digest (fabrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ddgst: Option<bool>,
    /// Fabrics connect timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabrics_connect_timeout_us: Option<u64>,
    /// Multipath mode (`disable`, `failover`, `multipath`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipath: Option<String>,
    /// I/O queues to ask the controller for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_io_queues: Option<u32>,
    /// Seconds to keep trying to reconnect a failed controller before it is
    /// deleted; -1: forever; 0 (default): no reconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctrlr_loss_timeout_sec: Option<i64>,
    /// Seconds between reconnect attempts (non-zero when
    /// `ctrlr_loss_timeout_sec` is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_delay_sec: Option<u32>,
    /// Seconds after the failure at which waiting I/O fails (0: never; at
    /// least `reconnect_delay_sec`, at most `ctrlr_loss_timeout_sec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_io_fail_timeout_sec: Option<u32>,
    /// Bdevs to create at most (SPDK's default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bdevs: Option<u32>,
    /// NVMe/TCP TLS pre-shared key: not supported (refused when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<String>,
    /// DH-HMAC-CHAP key: not supported (refused when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_key: Option<String>,
    /// DH-HMAC-CHAP controller key: not supported (refused when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_ctrlr_key: Option<String>,
    /// Expose namespaces of command sets the driver does not know as
    /// bdevs: not supported (true is refused; only NVM namespaces become
    /// bdevs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_unrecognized_csi: Option<bool>,
    /// Multipath I/O policy: not supported (refused when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Multipath path selector: not supported (refused when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Multipath round-robin I/O count: not supported (refused when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_io: Option<u32>,
}

impl AttachParams {
    /// Refuses, by name, the parameters this driver cannot honour yet
    /// (SPDK's client sends some of them with their defaults, which pass).
    pub fn check_supported(&self) -> Result<(), BdevError> {
        let unsupported = [
            ("psk", self.psk.is_some(), "NVMe/TCP TLS"),
            ("dhchap_key", self.dhchap_key.is_some(), "DH-HMAC-CHAP"),
            (
                "dhchap_ctrlr_key",
                self.dhchap_ctrlr_key.is_some(),
                "DH-HMAC-CHAP",
            ),
            (
                "allow_unrecognized_csi",
                self.allow_unrecognized_csi == Some(true),
                "bdevs for namespaces of unknown command sets",
            ),
            ("policy", self.policy.is_some(), "multipath I/O policies"),
            (
                "selector",
                self.selector.is_some(),
                "multipath path selectors",
            ),
            ("min_io", self.min_io.is_some(), "multipath round robin"),
            (
                "prchk_reftag",
                self.prchk_reftag == Some(true),
                "protection information checks",
            ),
            (
                "prchk_guard",
                self.prchk_guard == Some(true),
                "protection information checks",
            ),
            (
                "hostaddr",
                self.hostaddr.is_some(),
                "choosing the host's source address",
            ),
            (
                "hostsvcid",
                self.hostsvcid.is_some(),
                "choosing the host's source port",
            ),
            (
                "priority",
                self.priority.as_deref().is_some_and(|p| p != "0"),
                "a socket priority on the host side",
            ),
        ];
        match unsupported.iter().find(|(_, set, _)| *set) {
            Some((name, _, what)) => Err(BdevError::InvalidParam(format!(
                "{name}: {what} is not supported by rspdk's NVMe driver yet; omit {name}"
            ))),
            None => Ok(()),
        }
    }
}

impl AttachParams {
    /// The transport ID these parameters name (SPDK's
    /// `spdk_nvme_transport_id_parse` rules: trtype case-insensitive, a PCIe
    /// traddr normalised).
    pub fn trid(&self) -> Result<TransportId, BdevError> {
        if self.name.is_empty() {
            return Err(BdevError::InvalidParam("name is empty".into()));
        }
        if self.name.contains(char::is_whitespace) {
            return Err(BdevError::InvalidParam(format!(
                "name '{}' contains whitespace",
                self.name
            )));
        }
        let mut s = format!("trtype:{} traddr:{}", self.trtype, self.traddr);
        for (k, v) in [
            ("adrfam", &self.adrfam),
            ("trsvcid", &self.trsvcid),
            ("subnqn", &self.subnqn),
            ("hostnqn", &self.hostnqn),
        ] {
            if let Some(v) = v {
                s.push_str(&format!(" {k}:{v}"));
            }
        }
        s.parse::<TransportId>().map_err(|e| {
            BdevError::InvalidParam(format!(
                "trtype '{}' traddr '{}': {e}",
                self.trtype, self.traddr
            ))
        })
    }
}

/// The reconnect policy, checked as SPDK checks it
/// (`ctrlr_loss_timeout_sec`, `reconnect_delay_sec`,
/// `fast_io_fail_timeout_sec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// -1 forever, 0 no reconnect, else seconds.
    pub ctrlr_loss_timeout_sec: i64,
    /// Seconds between attempts.
    pub reconnect_delay_sec: u32,
    /// Seconds until waiting I/O fails (0: never).
    pub fast_io_fail_timeout_sec: u32,
}

impl ReconnectPolicy {
    /// The policy the parameters give, or an error naming the rule broken.
    pub fn from_params(p: &AttachParams) -> Result<ReconnectPolicy, BdevError> {
        let loss = p.ctrlr_loss_timeout_sec.unwrap_or(0);
        let delay = p.reconnect_delay_sec.unwrap_or(0);
        let fast = p.fast_io_fail_timeout_sec.unwrap_or(0);
        let bad = |m: String| Err(BdevError::InvalidParam(m));
        if loss < -1 {
            return bad(format!(
                "ctrlr_loss_timeout_sec {loss}: use -1 (forever), 0 (no reconnect) or seconds"
            ));
        }
        if loss == 0 {
            if delay != 0 || fast != 0 {
                return bad(format!(
                    "reconnect_delay_sec {delay} and fast_io_fail_timeout_sec {fast} need a non-zero ctrlr_loss_timeout_sec"
                ));
            }
        } else {
            if delay == 0 {
                return bad(format!(
                    "ctrlr_loss_timeout_sec {loss} needs a non-zero reconnect_delay_sec"
                ));
            }
            if loss > 0 && delay as i64 > loss {
                return bad(format!(
                    "reconnect_delay_sec {delay} is over ctrlr_loss_timeout_sec {loss}"
                ));
            }
            if fast != 0 && fast < delay {
                return bad(format!(
                    "fast_io_fail_timeout_sec {fast} is under reconnect_delay_sec {delay}"
                ));
            }
            if fast != 0 && loss > 0 && fast as i64 > loss {
                return bad(format!(
                    "fast_io_fail_timeout_sec {fast} is over ctrlr_loss_timeout_sec {loss}"
                ));
            }
        }
        Ok(ReconnectPolicy {
            ctrlr_loss_timeout_sec: loss,
            reconnect_delay_sec: delay,
            fast_io_fail_timeout_sec: fast,
        })
    }
}

/// What the channels of a controller need to know about its health.
#[derive(Debug, Default)]
struct Health {
    /// The controller failed and a reconnect is pending: I/O waits.
    reconnecting: AtomicBool,
    /// `fast_io_fail_timeout_sec` passed while reconnecting: I/O fails.
    io_fail: AtomicBool,
    /// Reconnects are attempted (ctrlr_loss_timeout_sec != 0).
    enabled: bool,
    /// Without a policy: the one reset of this failure was tried.
    reset_tried: AtomicBool,
    /// Disabled by `bdev_nvme_disable_controller`: I/O fails, no reconnect.
    disabled: AtomicBool,
    /// Bumped when `inject` changes; channels compare it once per poll.
    inject_gen: AtomicU64,
    /// The I/O error injections every channel's queue pair should carry,
    /// each with a serial number.
    inject: Mutex<Vec<(u64, CmdErrorInjection)>>,
}

impl Health {
    /// True when I/O should wait for the reconnect rather than fail.
    fn waits(&self) -> bool {
        self.enabled && !self.io_fail.load(Ordering::Acquire)
    }
}

/// The bdev name of namespace `nsid` of controller `ctrlr_name`.
pub fn bdev_name(ctrlr_name: &str, nsid: u32) -> String {
    format!("{ctrlr_name}n{nsid}")
}

/// An attached controller and the bdevs made from it.
struct NvmeCtrlr {
    name: String,
    ctrlr: Controller,
    params: AttachParams,
    bdevs: Vec<String>,
    policy: ReconnectPolicy,
    health: Arc<Health>,
    /// When the current failure was first seen.
    failed_at: Option<Instant>,
    /// When the next reconnect attempt may run.
    next_try: Option<Instant>,
}

thread_local! {
    /// Admin pollers of the controllers this thread attached.
    static ADMIN_POLLERS: RefCell<HashMap<String, Poller>> = RefCell::new(HashMap::new());
}

fn drop_admin_poller(name: &str) {
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

/// Counters of one channel (relaxed atomics: written by its thread, read
/// by the statistics RPC).
#[derive(Debug, Default)]
struct ChanStats {
    polls: AtomicU64,
    idle_polls: AtomicU64,
    completions: AtomicU64,
    submitted: AtomicU64,
    queued: AtomicU64,
}

/// A live channel, for `bdev_nvme_get_io_paths` and the statistics.
struct ChanInfo {
    id: u64,
    thread: String,
    bdev: String,
    ctrlr: String,
    trtype: String,
    stats: Arc<ChanStats>,
}

/// Every live NVMe channel (changed at channel create/destroy only).
static CHANNELS: Mutex<Vec<ChanInfo>> = Mutex::new(Vec::new());
static CHAN_ID: AtomicU64 = AtomicU64::new(1);

fn ctrlrs() -> std::sync::MutexGuard<'static, Vec<NvmeCtrlr>> {
    CTRLRS.lock().unwrap_or_else(|e| e.into_inner())
}

fn nvme_err(what: &str, e: NvmeError) -> BdevError {
    BdevError::Module {
        errno: e.errno(),
        message: format!("{what}: {e}"),
    }
}

fn no_ctrlr(name: &str) -> BdevError {
    BdevError::Module {
        errno: libc::ENODEV,
        message: format!("no NVMe controller named '{name}'"),
    }
}

/// What [`attach`] checked before connecting: the parameters as saved,
/// the transport ID, the controller options and the reconnect policy.
pub struct AttachPlan {
    params: AttachParams,
    trid: TransportId,
    opts: ControllerOpts,
    policy: ReconnectPolicy,
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

/// Runs `work` on a helper OS thread (blocking network work: connect,
/// reset), then `finish` with its result back on this SPDK thread, whose
/// answer completes `resp`. Off an SPDK thread both run here, in turn.
fn off_thread<T: Send + 'static>(
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
        if rspdk_thread::get_thread().is_none() {
            return run();
        }
        let slot = Arc::new(Mutex::new(Some(run)));
        let s2 = slot.clone();
        if std::thread::Builder::new()
            .name("bdev_nvme_detach".into())
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

fn trid_json(t: &TransportId) -> Value {
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

struct NvmeNs {
    ctrlr: Controller,
    ctrlr_name: String,
    nsid: u32,
    oncs: u16,
    vwc: bool,
    health: Arc<Health>,
    qp_opts: QpairOpts,
    ioq_poll_us: u64,
    /// (`timeout_us`, `action_on_timeout`) of bdev_nvme_set_options.
    timeout: (u64, String),
    enable_flush: bool,
}

struct NvmeBackend(Arc<NvmeNs>);

impl BdevBackend for NvmeBackend {
    fn create_channel(&self) -> Result<Box<dyn BackendChannel>, BdevError> {
        NvmeChannel::open(self.0.clone())
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        let o = self.0.oncs;
        match io_type {
            IoType::Read | IoType::Write | IoType::Reset => true,
            IoType::Flush => self.0.vwc,
            IoType::Unmap => o & ONCS_DSM != 0,
            IoType::WriteZeroes => o & ONCS_WRITE_ZEROES != 0,
            IoType::Compare => o & ONCS_COMPARE != 0,
            IoType::CompareAndWrite => false,
        }
    }

    fn dump_info_json(&self) -> Value {
        let c = &self.0.ctrlr;
        let d = c.data();
        let (maj, min, ter) = c.version();
        let t = c.trid();
        let mut v = json!({
            "trid": trid_json(t),
            "ctrlr_data": {
                "cntlid": d.cntlid(),
                "vendor_id": format!("0x{:04x}", d.vid()),
                "model_number": d.model(),
                "serial_number": d.serial(),
                "firmware_revision": d.firmware(),
                "oacs": {},
            },
            "vs": {"nvme_version": format!("{maj}.{min}{}", if ter > 0 { format!(".{ter}") } else { String::new() })},
            "ns_data": {"id": self.0.nsid},
        });
        if t.trtype == rspdk_nvme::TransportType::Pcie {
            v["pci_address"] = json!(t.traddr);
        }
        json!({"nvme": [v]})
    }

    fn write_config_json(&self, _props: &BdevProps) -> Option<Value> {
        // The controller's attach call is written once by the module
        // (`NvmeModule::config_json`), as SPDK's bdev_nvme does.
        None
    }
}

/// The module's lifecycle: save_config writes one
/// `bdev_nvme_attach_controller` per controller (also one without active
/// namespaces); at shutdown, after the bdevs are gone, every controller is
/// detached.
pub struct NvmeModule;

impl rspdk_bdev::BdevModule for NvmeModule {
    fn name(&self) -> &'static str {
        MODULE
    }

    fn register_rpcs(&self, reg: &rspdk_rpc::RpcRegistry) {
        register_rpcs(reg)
    }

    fn log_flags(&self) -> &'static [(&'static str, &'static str)] {
        &[("bdev_nvme", "rspdk_bdev_nvme"), ("nvme", "rspdk_nvme")]
    }

    fn config_json(&self) -> Vec<Value> {
        let mut out = vec![opts::config_json(), hotplug::config_json()];
        out.extend(discovery::config_json());
        out.extend(
            ctrlrs()
                .iter()
                .filter(|c| !discovery::is_discovered(&c.name))
                .map(|c| json!({"method": "bdev_nvme_attach_controller", "params": c.params})),
        );
        out
    }

    fn fini(&self) {
        hotplug::stop();
        discovery::stop_all();
        let all: Vec<NvmeCtrlr> = std::mem::take(&mut *ctrlrs());
        for c in all {
            drop_admin_poller(&c.name);
            if let Err(e) = c.ctrlr.detach() {
                tracing::warn!(name = %c.name, error = %e, "NVMe detach at shutdown");
            }
        }
    }
}

/// Walks an I/O's iovec array for the driver's SGL/PRP builder.
struct SgeCursor {
    iov: *const IoVec,
    cnt: usize,
    idx: usize,
    off: usize,
}

fn sge_reset(arg: usize, offset: u32) {
    // SAFETY: `arg` is the address of a slot's cursor, which lives in the
    // channel's boxed slot table and is set before the command is submitted
    // and untouched until it completes; `iov`/`cnt` describe the iovecs of
    // the BdevIo the slot holds.
    let c = unsafe { &mut *(arg as *mut SgeCursor) };
    let mut off = offset as usize;
    c.idx = 0;
    c.off = 0;
    while c.idx < c.cnt {
        // SAFETY: idx < cnt (see above).
        let len = unsafe { (*c.iov.add(c.idx)).len };
        if off < len {
            c.off = off;
            return;
        }
        off -= len;
        c.idx += 1;
    }
}

fn sge_next(arg: usize) -> (usize, u32) {
    // SAFETY: as in `sge_reset`.
    let c = unsafe { &mut *(arg as *mut SgeCursor) };
    if c.idx >= c.cnt {
        return (0, 0);
    }
    // SAFETY: idx < cnt.
    let v = unsafe { *c.iov.add(c.idx) };
    let r = (v.base as usize + c.off, (v.len - c.off) as u32);
    c.idx += 1;
    c.off = 0;
    r
}

struct Slot {
    io: Option<BdevIo>,
    sge: SgeCursor,
}

struct NsState {
    stats: Arc<ChanStats>,
    health: Arc<Health>,
    qp: IoQpair,
    nsid: u32,
    ctrlr: Controller,
    bdev: String,
    slots: Box<[Slot]>,
    free: Vec<u32>,
    waiting: VecDeque<BdevIo>,
    done: Vec<(BdevIo, IoStatus)>,
    enable_flush: bool,
    /// The controller's `inject_gen` this queue pair's injections match.
    inject_seen: u64,
    /// Serial numbers and opcodes of the injections applied here.
    injected: Vec<(u64, u8)>,
}

impl NsState {
    /// Brings the queue pair's error injections in line with the
    /// controller's list (runs only when the list changed).
    fn sync_injections(&mut self) {
        let gen = self.health.inject_gen.load(Ordering::Acquire);
        let want = self
            .health
            .inject
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for &(serial, opc) in &self.injected {
            if !want.iter().any(|w| w.0 == serial) && !want.iter().any(|w| w.1.opc == opc) {
                self.qp.remove_cmd_error_injection(opc);
            }
        }
        for (serial, e) in &want {
            if !self.injected.iter().any(|i| i.0 == *serial) {
                self.qp.add_cmd_error_injection(*e);
            }
        }
        self.injected = want.iter().map(|(s, e)| (*s, e.opc)).collect();
        self.inject_seen = gen;
    }
}

struct NvmeChannel {
    st: Rc<RefCell<NsState>>,
    poller: Option<Poller>,
    id: u64,
}

/// Maps a completion status to the bdev layer's.
pub fn io_status(sct: u8, sc: u8) -> IoStatus {
    if sct == 0 && sc == 0 {
        IoStatus::Success
    } else {
        IoStatus::Nvme { sct, sc }
    }
}

impl NvmeChannel {
    fn open(ns: Arc<NvmeNs>) -> Result<Box<dyn BackendChannel>, BdevError> {
        let bdev = bdev_name(&ns.ctrlr_name, ns.nsid);
        let mut qp = ns
            .ctrlr
            .alloc_io_qpair(Some(ns.qp_opts))
            .map_err(|e| BdevError::Channel {
                bdev: bdev.clone(),
                detail: format!("I/O queue pair: {e}"),
            })?;
        if ns.timeout.0 > 0 {
            let action = match ns.timeout.1.as_str() {
                "abort" => TimeoutAction::Abort,
                "reset" => TimeoutAction::Reset,
                _ => TimeoutAction::None,
            };
            let b = bdev.clone();
            qp.set_timeout(Duration::from_micros(ns.timeout.0), move |ev| {
                tracing::warn!(bdev = %b, cid = ev.cid, opcode = ev.opcode, ?action, "NVMe command timed out");
                action
            });
        }
        let n = ns.qp_opts.io_queue_requests as usize;
        let stats = Arc::new(ChanStats::default());
        let id = CHAN_ID.fetch_add(1, Ordering::Relaxed);
        CHANNELS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ChanInfo {
                id,
                thread: rspdk_thread::get_thread()
                    .map(|t| t.name().to_string())
                    .unwrap_or_default(),
                bdev: bdev.clone(),
                ctrlr: ns.ctrlr_name.clone(),
                trtype: ns.ctrlr.trid().trtype.as_str().to_string(),
                stats: stats.clone(),
            });
        let st = Rc::new(RefCell::new(NsState {
            stats,
            health: ns.health.clone(),
            qp,
            nsid: ns.nsid,
            ctrlr: ns.ctrlr.clone(),
            bdev,
            slots: (0..n)
                .map(|_| Slot {
                    io: None,
                    sge: SgeCursor {
                        iov: std::ptr::null(),
                        cnt: 0,
                        idx: 0,
                        off: 0,
                    },
                })
                .collect(),
            free: (0..n as u32).rev().collect(),
            waiting: VecDeque::new(),
            done: Vec::with_capacity(n),
            enable_flush: ns.enable_flush,
            inject_seen: 0,
            injected: Vec::new(),
        }));
        let weak: Weak<RefCell<NsState>> = Rc::downgrade(&st);
        let poller = poller_register("bdev_nvme", ns.ioq_poll_us, move |_| match weak.upgrade() {
            Some(st) => poll(&st),
            None => PollerStatus::Idle,
        })
        .map_err(|e| BdevError::Channel {
            bdev: st.borrow().bdev.clone(),
            detail: e.to_string(),
        })?;
        Ok(Box::new(NvmeChannel {
            st,
            poller: Some(poller),
            id,
        }))
    }
}

impl NsState {
    /// Issues `io` in slot `i`; on a refusal the slot is freed and the I/O
    /// handed back with its status.
    fn issue(&mut self, i: u32, io: BdevIo) -> Result<(), (BdevIo, IoStatus)> {
        let nsid = self.nsid;
        let ctx = i as u64;
        let lba = io.offset_blocks();
        let nlb = io.num_blocks();
        let slot = &mut self.slots[i as usize];
        slot.io = Some(io);
        let io = slot.io.as_ref().expect("just set");
        let t = io.io_type();
        let r = match t {
            IoType::Read | IoType::Write | IoType::Compare => {
                let iovs = io.iovs();
                if nlb > u32::MAX as u64 {
                    Err(NvmeError::InvalidArgument("too many blocks".into()))
                } else if iovs.len() == 1 {
                    let b = iovs[0].base;
                    // SAFETY: the buffers are the BdevIo's (DMA memory from
                    // the bdev layer), held in the slot until completion.
                    unsafe {
                        match t {
                            IoType::Read => self.qp.read(nsid, b, lba, nlb as u32, ctx),
                            IoType::Write => self.qp.write(nsid, b, lba, nlb as u32, ctx),
                            _ => self.qp.compare(nsid, b, lba, nlb as u32, ctx),
                        }
                    }
                } else if t == IoType::Compare {
                    Err(NvmeError::NotSupported("vectored compare".into()))
                } else {
                    slot.sge = SgeCursor {
                        iov: iovs.as_ptr(),
                        cnt: iovs.len(),
                        idx: 0,
                        off: 0,
                    };
                    let fns = SgeFns {
                        reset: sge_reset,
                        next: sge_next,
                        arg: &mut slot.sge as *mut SgeCursor as usize,
                    };
                    // SAFETY: the cursor lives in the boxed slot table and
                    // the iovecs and buffers in the BdevIo the slot holds,
                    // all untouched until the completion.
                    unsafe {
                        if t == IoType::Read {
                            self.qp.readv(nsid, lba, nlb as u32, fns, ctx)
                        } else {
                            self.qp.writev(nsid, lba, nlb as u32, fns, ctx)
                        }
                    }
                }
            }
            IoType::Flush if !self.enable_flush => {
                // As SPDK with enable_flush false: done without the device.
                let io = self.release(i).expect("slot just filled");
                self.done.push((io, IoStatus::Success));
                return Ok(());
            }
            IoType::Flush => self.qp.flush(nsid, ctx),
            IoType::WriteZeroes if nlb <= MAX_WRITE_ZEROES_BLOCKS => {
                self.qp.write_zeroes(nsid, lba, nlb as u32, false, ctx)
            }
            IoType::Unmap if nlb <= u32::MAX as u64 => {
                self.qp.deallocate(nsid, lba, nlb as u32, ctx)
            }
            _ => Err(NvmeError::NotSupported(format!("{t:?} of {nlb} blocks"))),
        };
        match r {
            Ok(()) => {
                self.stats.submitted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(bdev = %self.bdev, error = %e, "NVMe submission refused");
                let io = self.release(i).expect("slot just filled");
                if matches!(e, NvmeError::ControllerFailed { .. }) && self.health.waits() {
                    // Waits for the reconnect.
                    self.waiting.push_back(io);
                    return Ok(());
                }
                Err((io, IoStatus::Failed))
            }
        }
    }

    fn release(&mut self, i: u32) -> Option<BdevIo> {
        let s = &mut self.slots[i as usize];
        s.sge.iov = std::ptr::null();
        s.sge.cnt = 0;
        self.free.push(i);
        s.io.take()
    }

    /// Starts `io`, or queues it when every slot is busy.
    fn start(&mut self, io: BdevIo) -> Result<(), (BdevIo, IoStatus)> {
        // One relaxed load: an injection added by RPC applies from the
        // next I/O on (the RPC answers before this channel polls).
        if self.health.inject_gen.load(Ordering::Relaxed) != self.inject_seen {
            self.sync_injections();
        }
        if self.health.reconnecting.load(Ordering::Acquire) {
            if self.health.waits() {
                self.waiting.push_back(io);
                return Ok(());
            }
            return Err((io, IoStatus::Failed));
        }
        match self.free.pop() {
            Some(i) => self.issue(i, io),
            None => {
                self.waiting.push_back(io);
                Ok(())
            }
        }
    }
}

/// The channel poller: reap completions, admit waiting I/O, then complete
/// (outside the state borrow, so callbacks may submit).
fn poll(cell: &RefCell<NsState>) -> PollerStatus {
    let done = {
        let mut guard = cell.borrow_mut();
        let st = &mut *guard;
        if st.health.inject_gen.load(Ordering::Relaxed) != st.inject_seen {
            st.sync_injections();
        }
        let NsState {
            qp,
            slots,
            free,
            done,
            waiting,
            health,
            ..
        } = st;
        let r = qp.process_completions(0, |c| {
            let i = c.ctx as usize;
            if let Some(io) = slots.get_mut(i).and_then(|s| s.io.take()) {
                free.push(i as u32);
                if c.status.is_aborted_by_driver() && health.waits() {
                    // The path is down: retried after the reconnect.
                    waiting.push_back(io);
                } else {
                    done.push((io, io_status(c.status.sct(), c.status.sc())));
                }
            }
        });
        let n = r.unwrap_or(0);
        st.stats.polls.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            st.stats.idle_polls.fetch_add(1, Ordering::Relaxed);
        } else {
            st.stats.completions.fetch_add(n as u64, Ordering::Relaxed);
        }
        st.stats
            .queued
            .store(st.waiting.len() as u64, Ordering::Relaxed);
        if st.health.reconnecting.load(Ordering::Acquire) {
            if !st.health.waits() {
                while let Some(io) = st.waiting.pop_front() {
                    st.done.push((io, IoStatus::Failed));
                }
            }
        } else {
            // Each waiting I/O is tried once per poll (a refused one may
            // come back to the queue).
            let mut tries = st.waiting.len();
            while tries > 0 && !st.free.is_empty() {
                tries -= 1;
                let Some(io) = st.waiting.pop_front() else {
                    break;
                };
                if let Err(x) = st.start(io) {
                    st.done.push(x);
                }
            }
        }
        if st.done.is_empty() {
            return if n > 0 {
                PollerStatus::Busy
            } else {
                PollerStatus::Idle
            };
        }
        std::mem::take(&mut st.done)
    };
    rspdk_bdev::complete_batch(cell, done, |st| &mut st.done)
}

impl BackendChannel for NvmeChannel {
    fn submit(&mut self, io: BdevIo) {
        let mut st = self.st.borrow_mut();
        if io.io_type() == IoType::Reset {
            let c = st.ctrlr.clone();
            drop(st);
            // In-flight commands of every queue pair complete with
            // "Command Aborted due to SQ Deletion" at their next poll.
            let s = match c.reset() {
                Ok(()) => IoStatus::Success,
                Err(e) => {
                    tracing::error!(error = %e, "NVMe controller reset failed");
                    IoStatus::Failed
                }
            };
            io.complete(s);
            return;
        }
        let r = st.start(io);
        drop(st);
        if let Err((io, s)) = r {
            io.complete(s);
        }
    }
}

impl Drop for NvmeChannel {
    fn drop(&mut self) {
        CHANNELS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| c.id != self.id);
        if let Some(p) = self.poller.take() {
            p.unregister();
        }
        // Complete what is still held (the queue pair's drop gives the
        // device queues back).
        let mut st = self.st.borrow_mut();
        let mut left: Vec<BdevIo> = st.slots.iter_mut().filter_map(|s| s.io.take()).collect();
        left.extend(st.waiting.drain(..));
        drop(st);
        for io in left {
            io.complete(IoStatus::Aborted);
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetachParams {
    name: String,
    #[serde(default)]
    trtype: Option<String>,
    #[serde(default)]
    traddr: Option<String>,
    #[serde(default)]
    adrfam: Option<String>,
    #[serde(default)]
    trsvcid: Option<String>,
    #[serde(default)]
    subnqn: Option<String>,
    #[serde(default)]
    hostaddr: Option<String>,
    #[serde(default)]
    hostsvcid: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetParams {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetParams {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    cntlid: Option<u16>,
}

/// Checks that the optional path fields of a detach match the controller.
fn detach_matches(p: &DetachParams) -> Result<(), BdevError> {
    let list = ctrlrs();
    let c = list
        .iter()
        .find(|c| c.name == p.name)
        .ok_or_else(|| no_ctrlr(&p.name))?;
    let t = c.ctrlr.trid();
    let ok = p
        .trtype
        .as_ref()
        .is_none_or(|x| x.eq_ignore_ascii_case(t.trtype.as_str()))
        && p.traddr.as_ref().is_none_or(|x| {
            rspdk_env::pci::normalize_bdf(x).map_or(x == &t.traddr, |n| n == t.traddr)
        })
        && p.adrfam
            .as_ref()
            .is_none_or(|x| Some(x) == t.adrfam.as_ref())
        && p.trsvcid
            .as_ref()
            .is_none_or(|x| Some(x) == t.trsvcid.as_ref())
        && p.subnqn
            .as_ref()
            .is_none_or(|x| Some(x) == t.subnqn.as_ref())
        && p.hostaddr
            .as_ref()
            .is_none_or(|x| Some(x) == c.params.hostaddr.as_ref())
        && p.hostsvcid
            .as_ref()
            .is_none_or(|x| Some(x) == c.params.hostsvcid.as_ref());
    if ok {
        Ok(())
    } else {
        Err(BdevError::Module {
            errno: libc::ENODEV,
            message: format!("NVMe controller '{}' has no such path", p.name),
        })
    }
}

/// Registers the `bdev_nvme_*` methods.
fn register_rpcs(reg: &rspdk_rpc::RpcRegistry) {
    let rt = rspdk_rpc::StateMask::RUNTIME;
    admin::register_rpcs(reg);
    discovery::register_rpcs(reg);
    hotplug::register_rpcs(reg);
    method(
        reg,
        "bdev_nvme_set_options",
        rspdk_rpc::StateMask::ALL,
        |p: opts::SetOptionsParams| opts::set_options(&p).map(|()| json!(true)),
    );
    // The connect runs on a helper thread so that an address that accepts
    // and never answers (or answers slowly) does not stop this reactor:
    // RPCs and I/O go on meanwhile; the answer comes when it is done.
    method_async(
        reg,
        "bdev_nvme_attach_controller",
        rt,
        |p: AttachParams, resp| {
            let plan = match attach_plan(p) {
                Ok(plan) => plan,
                Err(e) => return resp.error(rpc_error(e)),
            };
            off_thread(
                resp,
                move || {
                    let connected = plan.connect();
                    (plan, connected)
                },
                |(plan, connected)| {
                    connected
                        .and_then(|c| attach_finish(plan, c))
                        .map(|names| json!(names))
                },
            );
        },
    );
    method_async(
        reg,
        "bdev_nvme_detach_controller",
        rt,
        |p: DetachParams, resp| {
            if let Err(e) = detach_matches(&p) {
                resp.error(rpc_error(e));
                return;
            }
            let (id, done) = respond_later(resp, json!(true));
            if let Err(e) = detach(&p.name, done) {
                answer_parked(id, Err(rpc_error(e)));
            }
        },
    );
    method(reg, "bdev_nvme_get_controllers", rt, |p: GetParams| {
        get_controllers(p.name.as_deref())
    });
    // A reset reconnects (over TCP: connect, ICReq, Connect): off this
    // reactor, for the same reason as the attach.
    method_async(
        reg,
        "bdev_nvme_reset_controller",
        rt,
        |p: ResetParams, resp| {
            let c = ctrlrs()
                .iter()
                .find(|c| c.name == p.name)
                .map(|c| c.ctrlr.clone());
            let Some(c) = c else {
                return resp.error(rpc_error(no_ctrlr(&p.name)));
            };
            off_thread(
                resp,
                move || c.reset().map_err(|e| nvme_err("reset", e)),
                |r| r.map(|()| json!(true)),
            );
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<AttachParams, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn attach_params_decode_spdk_names() {
        let p =
            parse(json!({"name": "Nvme0", "trtype": "pcie", "traddr": "0000:00:04.0"})).unwrap();
        let t = p.trid().unwrap();
        assert_eq!(t.trtype, rspdk_nvme::TransportType::Pcie);
        assert_eq!(t.traddr, "0000:00:04.0");
        // Short BDF is normalised; trtype is case-insensitive.
        let p = parse(json!({"name": "N", "trtype": "PCIe", "traddr": "00:04.0"})).unwrap();
        assert_eq!(p.trid().unwrap().traddr, "0000:00:04.0");
        // Fabrics fields decode.
        let p = parse(
            json!({"name": "Nvme1", "trtype": "tcp", "traddr": "127.0.0.1",
            "adrfam": "ipv4", "trsvcid": "4420", "subnqn": "nqn.2016-06.io.spdk:cnode1",
            "hostnqn": "nqn.host", "hdgst": false, "ddgst": false, "multipath": "failover",
            "num_io_queues": 4, "ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 0,
            "fast_io_fail_timeout_sec": 0, "prchk_reftag": false, "prchk_guard": false}),
        )
        .unwrap();
        let t = p.trid().unwrap();
        assert_eq!(t.trtype, rspdk_nvme::TransportType::Tcp);
        assert_eq!(t.trsvcid.as_deref(), Some("4420"));
        assert_eq!(t.subnqn.as_deref(), Some("nqn.2016-06.io.spdk:cnode1"));
    }

    #[test]
    fn attach_params_reject_bad_input() {
        assert!(parse(json!({"name": "N", "trtype": "pcie"})).is_err());
        assert!(parse(
            json!({"name": "N", "trtype": "pcie", "traddr": "0000:00:04.0", "bogus": 1})
        )
        .is_err());
        let p = parse(json!({"name": "", "trtype": "pcie", "traddr": "0000:00:04.0"})).unwrap();
        assert!(p.trid().is_err());
        let p = parse(json!({"name": "N", "trtype": "carrier-pigeon", "traddr": "x"})).unwrap();
        assert!(p.trid().is_err());
        let p = parse(json!({"name": "N", "trtype": "pcie", "traddr": "not-a-bdf"})).unwrap();
        assert!(p.trid().is_err());
    }

    #[test]
    fn attach_params_round_trip_for_save_config() {
        let p =
            parse(json!({"name": "Nvme0", "trtype": "PCIe", "traddr": "0000:00:04.0"})).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            json!({"name": "Nvme0", "trtype": "PCIe", "traddr": "0000:00:04.0"})
        );
        assert_eq!(parse(v).unwrap(), p);
    }

    #[test]
    fn reconnect_policy_follows_spdk_rules() {
        let p = |l: Option<i64>, o: Option<u32>, u: Option<u32>| {
            let mut a = parse(json!({"name": "N", "trtype": "tcp", "traddr": "127.0.0.1",
                "subnqn": "nqn.x"}))
            .unwrap();
            a.ctrlr_loss_timeout_sec = l;
            a.reconnect_delay_sec = o;
            a.fast_io_fail_timeout_sec = u;
            ReconnectPolicy::from_params(&a)
        };
        assert!(p(None, None, None).is_ok());
        assert!(p(Some(-1), Some(1), None).is_ok());
        assert!(p(Some(10), Some(2), Some(5)).is_ok());
        for (l, o, u, want) in [
            (Some(-2), Some(1), None, "ctrlr_loss_timeout_sec -2"),
            (
                Some(0),
                Some(1),
                None,
                "need a non-zero ctrlr_loss_timeout_sec",
            ),
            (Some(5), None, None, "needs a non-zero reconnect_delay_sec"),
            (Some(5), Some(6), None, "is over ctrlr_loss_timeout_sec"),
            (Some(10), Some(5), Some(2), "is under reconnect_delay_sec"),
            (
                Some(10),
                Some(2),
                Some(11),
                "is over ctrlr_loss_timeout_sec",
            ),
        ] {
            let e = p(l, o, u).unwrap_err().to_string();
            assert!(e.contains(want), "{l:?} {o:?} {u:?}: {e}");
        }
    }

    #[test]
    fn naming_and_status() {
        assert_eq!(bdev_name("Nvme0", 1), "Nvme0n1");
        assert_eq!(bdev_name("Nvme12", 300), "Nvme12n300");
        assert_eq!(io_status(0, 0), IoStatus::Success);
        assert_eq!(io_status(2, 0x85), IoStatus::Nvme { sct: 2, sc: 0x85 });
        assert_eq!(io_status(0, 0x80), IoStatus::Nvme { sct: 0, sc: 0x80 });
    }

    #[test]
    fn unknown_controller_errors() {
        assert_eq!(reset("NoSuchCtrlr").unwrap_err().errno(), libc::ENODEV);
        assert_eq!(
            get_controllers(Some("NoSuchCtrlr")).unwrap_err().errno(),
            libc::ENODEV
        );
        assert_eq!(get_controllers(None).unwrap(), json!([]));
        assert!(detach("NoSuchCtrlr", || {}).is_err());
    }

    #[test]
    fn sge_cursor_walks_iovecs() {
        let mut a = [0u8; 100];
        let mut b = [0u8; 50];
        let iovs = [
            IoVec::new(a.as_mut_ptr(), 100),
            IoVec::new(b.as_mut_ptr(), 50),
        ];
        let mut c = SgeCursor {
            iov: iovs.as_ptr(),
            cnt: 2,
            idx: 0,
            off: 0,
        };
        let arg = &mut c as *mut SgeCursor as usize;
        sge_reset(arg, 0);
        assert_eq!(sge_next(arg), (a.as_ptr() as usize, 100));
        assert_eq!(sge_next(arg), (b.as_ptr() as usize, 50));
        sge_reset(arg, 120);
        assert_eq!(sge_next(arg), (b.as_ptr() as usize + 20, 30));
        assert_eq!(sge_next(arg), (0, 0));
    }
}
