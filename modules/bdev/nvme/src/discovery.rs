//! Discovery services (SPDK: `bdev_nvme_start_discovery`,
//! `bdev_nvme_stop_discovery`, `bdev_nvme_get_discovery_info`): a service
//! connects to an NVMe/TCP discovery controller, reads its discovery log
//! page and attaches every NVM subsystem entry as a controller named
//! `<name><N>` (N counting up per service). Every
//! [`DISCOVERY_POLL_US`] the log page is read again (rspdk's NVMe-oF target
//! sends no discovery AERs, so a re-read is the change notice): new entries
//! are attached, controllers of entries that went away are detached.
//! Connects and log-page reads run on helper threads; attach and detach
//! finish on the thread that started the service.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rspdk_nvme::{Controller, ControllerOpts, DiscoveryEntry, TransportId, TransportType};
use rspdk_thread::{poller_register, Poller, PollerStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{attach_finish, attach_plan, detach, nvme_err, trid_json, AttachParams};
use crate::ctrlr::off_reactor;
use rspdk_bdev::rpc::{answer_parked, method, method_async, park, respond_later, rpc_error};
use rspdk_bdev::BdevError;

/// How often a discovery service re-reads the discovery log page.
pub const DISCOVERY_POLL_US: u64 = 500_000;

/// `bdev_nvme_start_discovery` parameters, as SPDK names them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartParams {
    name: String,
    trtype: String,
    traddr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adrfam: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trsvcid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hostnqn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wait_for_attach: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attach_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ctrlr_loss_timeout_sec: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reconnect_delay_sec: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fast_io_fail_timeout_sec: Option<u32>,
}

/// A running discovery service.
struct Service {
    params: StartParams,
    trid: TransportId,
    ctrlr: Controller,
    /// Attached entries: (subnqn, traddr, trsvcid) and controller name.
    attached: Vec<((String, String, String), String)>,
    /// Entries being connected (not attached yet).
    pending: Vec<(String, String, String)>,
    /// Referral entries of the last log page.
    referrals: Vec<TransportId>,
    next_index: u32,
    /// A log page read is running on a helper thread.
    busy: Arc<AtomicBool>,
    /// Stopped: results that come back are dropped.
    stopped: Arc<AtomicBool>,
}

static SERVICES: Mutex<Vec<Service>> = Mutex::new(Vec::new());

thread_local! {
    static POLLERS: RefCell<HashMap<String, Poller>> = RefCell::new(HashMap::new());
}

fn services() -> std::sync::MutexGuard<'static, Vec<Service>> {
    SERVICES.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(e: &DiscoveryEntry) -> (String, String, String) {
    (e.subnqn.clone(), e.traddr.clone(), e.trsvcid.clone())
}

/// True when controller `name` was attached by a discovery service.
pub fn is_discovered(name: &str) -> bool {
    services()
        .iter()
        .any(|s| s.attached.iter().any(|a| a.1 == name))
}

/// save_config: one `bdev_nvme_start_discovery` per service (waiting for
/// the attach, so that what follows finds the bdevs).
pub fn config_json() -> Vec<Value> {
    services()
        .iter()
        .map(|s| {
            let mut p = s.params.clone();
            p.wait_for_attach = Some(true);
            json!({"method": "bdev_nvme_start_discovery", "params": p})
        })
        .collect()
}

/// Runs `work` on a helper thread and `finish` with its result back on
/// this SPDK thread (both here, in turn, off an SPDK thread).
fn spawn_then<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
    finish: impl FnOnce(T) + Send + 'static,
) {
    let Some(home) = rspdk_thread::get_thread().map(|t| t.handle()) else {
        return finish(work());
    };
    let r = std::thread::Builder::new()
        .name("bdev_nvme_disc".into())
        .spawn(move || {
            let out = work();
            if home.send_msg(move || finish(out)).is_err() {
                tracing::warn!("bdev_nvme discovery: the starting thread is gone");
            }
        });
    if let Err(e) = r {
        tracing::error!(error = %e, "bdev_nvme discovery: cannot start a helper thread");
    }
}

impl StartParams {
    fn trid(&self) -> Result<TransportId, BdevError> {
        if self.name.is_empty() || self.name.contains(char::is_whitespace) {
            return Err(BdevError::InvalidParam(format!(
                "name '{}': give a prefix without whitespace",
                self.name
            )));
        }
        let mut s = format!(
            "trtype:{} traddr:{} subnqn:{}",
            self.trtype,
            self.traddr,
            rspdk_nvme::DISCOVERY_NQN
        );
        if let Some(a) = &self.adrfam {
            s.push_str(&format!(" adrfam:{a}"));
        }
        s.push_str(&format!(
            " trsvcid:{}",
            self.trsvcid.as_deref().unwrap_or("8009")
        ));
        let t: TransportId = s
            .parse()
            .map_err(|e| BdevError::InvalidParam(format!("trtype/traddr: {e}")))?;
        if t.trtype != TransportType::Tcp {
            return Err(BdevError::InvalidParam(format!(
                "trtype {}: discovery is supported over TCP only",
                t.trtype.as_str()
            )));
        }
        Ok(t)
    }

    /// The attach parameters of a discovered NVM subsystem entry.
    fn attach_params(&self, name: String, e: &DiscoveryEntry) -> AttachParams {
        AttachParams {
            name,
            trtype: "TCP".into(),
            traddr: e.traddr.clone(),
            adrfam: Some(if e.adrfam == 2 { "IPv6" } else { "IPv4" }.into()),
            trsvcid: Some(e.trsvcid.clone()),
            subnqn: Some(e.subnqn.clone()),
            hostnqn: self.hostnqn.clone(),
            ctrlr_loss_timeout_sec: self.ctrlr_loss_timeout_sec,
            reconnect_delay_sec: self.reconnect_delay_sec,
            fast_io_fail_timeout_sec: self.fast_io_fail_timeout_sec,
            ..Default::default()
        }
    }
}

/// Reads the log page (blocking; helper thread), reconnecting a discovery
/// controller whose connection dropped.
fn read_log(c: &Controller) -> Result<Vec<DiscoveryEntry>, BdevError> {
    if c.is_failed() {
        c.reset()
            .map_err(|e| nvme_err("reconnecting the discovery controller", e))?;
    }
    c.discovery_log()
        .map_err(|e| nvme_err("Get Log Page (Discovery)", e))
}

/// Compares the log page with what the service has: starts attaches for
/// new NVM subsystem entries and detaches controllers whose entry is gone.
/// `done` runs (on this thread) when the attaches it started finished.
fn reconcile(name: &str, entries: Vec<DiscoveryEntry>, done: impl FnOnce() + Send + 'static) {
    let mut to_attach = Vec::new();
    let mut to_detach = Vec::new();
    {
        let mut list = services();
        let Some(s) = list.iter_mut().find(|s| s.params.name == name) else {
            return done();
        };
        s.referrals = entries
            .iter()
            .filter(|e| e.subtype == 1)
            .filter_map(|e| {
                let mut t = e.trid()?;
                t.subnqn = Some(e.subnqn.clone());
                Some(t)
            })
            .collect();
        let nvm: Vec<&DiscoveryEntry> = entries
            .iter()
            .filter(|e| e.subtype == 2 && e.trtype == 3)
            .collect();
        let (keep, gone): (Vec<_>, Vec<_>) = s
            .attached
            .drain(..)
            .partition(|(k, _)| nvm.iter().any(|e| &key(e) == k));
        s.attached = keep;
        to_detach.extend(gone.into_iter().map(|g| g.1));
        for e in nvm {
            let k = key(e);
            if s.attached.iter().any(|a| a.0 == k) || s.pending.contains(&k) {
                continue;
            }
            let cname = format!("{}{}", s.params.name, s.next_index);
            s.next_index += 1;
            s.pending.push(k.clone());
            to_attach.push((k, s.params.attach_params(cname, e)));
        }
    }
    for n in to_detach {
        tracing::info!(controller = %n, "discovery: the subsystem left the log page; detaching");
        let n2 = n.clone();
        if let Err(e) = detach(
            &n,
            move || tracing::info!(controller = %n2, "discovery: detached"),
        ) {
            tracing::warn!(controller = %n, error = %e, "discovery detach");
        }
    }
    if to_attach.is_empty() {
        return done();
    }
    let left = Arc::new(AtomicUsize::new(to_attach.len()));
    let done = Arc::new(Mutex::new(Some(done)));
    for (k, p) in to_attach {
        let svc = name.to_string();
        let left = left.clone();
        let done = done.clone();
        let plan = attach_plan(p);
        spawn_then(
            move || plan.and_then(|plan| plan.connect().map(|c| (plan, c))),
            move |r| {
                let mut ok_name = None;
                match r.and_then(|(plan, c)| {
                    let n = plan.name().to_string();
                    attach_finish(plan, c).map(|_| n)
                }) {
                    Ok(n) => ok_name = Some(n),
                    Err(e) => {
                        tracing::warn!(service = %svc, subnqn = %k.0, error = %e, "discovery: attach failed (retried at the next log page read)")
                    }
                }
                let mut list = services();
                match list.iter_mut().find(|s| s.params.name == svc) {
                    Some(s) => {
                        s.pending.retain(|x| x != &k);
                        if let Some(n) = ok_name {
                            s.attached.push((k, n));
                        }
                    }
                    None => {
                        // The service stopped meanwhile: let this one go too.
                        drop(list);
                        if let Some(n) = ok_name {
                            let _ = detach(&n, || {});
                        }
                    }
                }
                if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    if let Some(d) = done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        d();
                    }
                }
            },
        );
    }
}

/// One poll: start a log page read unless one is running.
fn tick(name: &str) -> PollerStatus {
    let (c, busy, stopped) = {
        let list = services();
        let Some(s) = list.iter().find(|s| s.params.name == name) else {
            return PollerStatus::Idle;
        };
        (s.ctrlr.clone(), s.busy.clone(), s.stopped.clone())
    };
    if busy.swap(true, Ordering::AcqRel) {
        return PollerStatus::Idle;
    }
    let n = name.to_string();
    spawn_then(
        move || read_log(&c),
        move |r| {
            if stopped.load(Ordering::Acquire) {
                return;
            }
            match r {
                Ok(entries) => reconcile(&n, entries, move || busy.store(false, Ordering::Release)),
                Err(e) => {
                    tracing::warn!(service = %n, error = %e, "discovery log page");
                    busy.store(false, Ordering::Release);
                }
            }
        },
    );
    PollerStatus::Busy
}

fn start(p: StartParams, resp: rspdk_rpc::Responder) {
    let trid = match p.trid() {
        Ok(t) => t,
        Err(e) => return resp.error(rpc_error(e)),
    };
    if let Err(e) = super::ReconnectPolicy::from_params(&p.attach_params(
        String::new(),
        &DiscoveryEntry {
            trtype: 3,
            adrfam: 1,
            subtype: 2,
            treq: 0,
            portid: 0,
            cntlid: 0,
            asqsz: 0,
            trsvcid: String::new(),
            traddr: String::new(),
            subnqn: String::new(),
        },
    )) {
        return resp.error(rpc_error(e));
    }
    {
        let list = services();
        if let Some(s) = list
            .iter()
            .find(|s| s.params.name == p.name || s.trid == trid)
        {
            return resp.error(rpc_error(BdevError::Module {
                errno: libc::EEXIST,
                message: format!(
                    "discovery service '{}' already runs for {}",
                    s.params.name, s.trid
                ),
            }));
        }
    }
    let wait = p.wait_for_attach.unwrap_or(false) || p.attach_timeout_ms.is_some_and(|t| t > 0);
    let timeout = p
        .attach_timeout_ms
        .filter(|&t| t > 0)
        .map(Duration::from_millis);
    let started = Instant::now();
    let id = park(resp);
    if !wait {
        answer_parked(id, Ok(json!(true)));
    }
    let mut opts = ControllerOpts::default();
    if let Some(h) = &p.hostnqn {
        opts.hostnqn = h.clone();
    }
    let t2 = trid.clone();
    spawn_then(
        move || {
            let c = Controller::connect(&t2, &opts).map_err(|e| nvme_err(&t2.to_string(), e))?;
            let log = read_log(&c);
            Ok::<_, BdevError>((c, log))
        },
        move |r| {
            let (c, log) = match r {
                Ok(x) => x,
                Err(e) => return answer_parked(id, Err(rpc_error(e))),
            };
            let entries = match log {
                Ok(e) => e,
                Err(e) => {
                    let _ = c.detach();
                    return answer_parked(id, Err(rpc_error(e)));
                }
            };
            let name = p.name.clone();
            let busy = Arc::new(AtomicBool::new(true));
            {
                let mut list = services();
                if list.iter().any(|s| s.params.name == name) {
                    drop(list);
                    let _ = c.detach();
                    return answer_parked(
                        id,
                        Err(rpc_error(BdevError::Module {
                            errno: libc::EEXIST,
                            message: format!("discovery service '{name}' already runs"),
                        })),
                    );
                }
                list.push(Service {
                    params: p,
                    trid,
                    ctrlr: c,
                    attached: Vec::new(),
                    pending: Vec::new(),
                    referrals: Vec::new(),
                    next_index: 0,
                    busy: busy.clone(),
                    stopped: Arc::new(AtomicBool::new(false)),
                });
            }
            let n2 = name.clone();
            match poller_register("bdev_nvme_discovery", DISCOVERY_POLL_US, move |_| tick(&n2)) {
                Ok(pl) => {
                    let _ = POLLERS.try_with(|m| m.borrow_mut().insert(name.clone(), pl));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "discovery: no poller; the log page is read once")
                }
            }
            tracing::info!(service = %name, "discovery service started");
            reconcile(&name, entries, move || {
                busy.store(false, Ordering::Release);
                if wait {
                    let late = timeout.is_some_and(|t| started.elapsed() > t);
                    answer_parked(
                        id,
                        if late {
                            Err(rpc_error(BdevError::Module {
                                errno: libc::ETIMEDOUT,
                                message: "attach_timeout_ms passed before the discovered subsystems were attached".into(),
                            }))
                        } else {
                            Ok(json!(true))
                        },
                    );
                }
            });
        },
    );
}

/// Removes service `name`: its controllers are detached, then the
/// discovery controller; `done` runs once all are detached.
fn stop(name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    let s = {
        let mut list = services();
        let i = list
            .iter()
            .position(|s| s.params.name == name)
            .ok_or_else(|| BdevError::Module {
                errno: libc::ENOENT,
                message: format!("no discovery service named '{name}'"),
            })?;
        list.remove(i)
    };
    s.stopped.store(true, Ordering::Release);
    let _ = POLLERS.try_with(|m| {
        if let Some(p) = m.borrow_mut().remove(name) {
            p.unregister();
        }
    });
    let dc = s.ctrlr;
    // Detaching the discovery controller waits for its target: off the
    // reactor (`done` answers the RPC through a message to its thread).
    let finish = move || {
        let run = move || {
            let _ = dc.detach();
            done();
        };
        off_reactor("bdev_nvme_disc", run);
    };
    let names: Vec<String> = s.attached.into_iter().map(|a| a.1).collect();
    if names.is_empty() {
        finish();
        return Ok(());
    }
    let left = Arc::new(AtomicUsize::new(names.len()));
    let finish = Arc::new(Mutex::new(Some(finish)));
    for n in names {
        let left = left.clone();
        let finish = finish.clone();
        let tick = move || {
            if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                if let Some(f) = finish.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    f();
                }
            }
        };
        let t = Arc::new(Mutex::new(Some(tick)));
        let t2 = t.clone();
        if detach(&n, move || {
            if let Some(f) = t2.lock().unwrap_or_else(|e| e.into_inner()).take() {
                f()
            }
        })
        .is_err()
        {
            // Already gone (e.g. by bdev_nvme_detach_controller).
            if let Some(f) = t.lock().unwrap_or_else(|e| e.into_inner()).take() {
                f()
            }
        }
    }
    Ok(())
}

/// Stops every service (shutdown).
pub fn stop_all() {
    let names: Vec<String> = services().iter().map(|s| s.params.name.clone()).collect();
    for n in names {
        let _ = stop(&n, || {});
    }
}

/// `bdev_nvme_get_discovery_info` output.
fn info() -> Value {
    Value::Array(
        services()
            .iter()
            .map(|s| {
                json!({
                    "name": s.params.name,
                    "trid": trid_json(&s.trid),
                    "referrals": s.referrals.iter().map(|t| json!({"trid": trid_json(t)})).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopParams {
    name: String,
}

/// Registers the three discovery methods.
pub fn register_rpcs(reg: &rspdk_rpc::RpcRegistry) {
    let rt = rspdk_rpc::StateMask::RUNTIME;
    method_async(reg, "bdev_nvme_start_discovery", rt, start);
    method_async(
        reg,
        "bdev_nvme_stop_discovery",
        rt,
        |p: StopParams, resp| {
            let (id, done) = respond_later(resp, json!(true));
            if let Err(e) = stop(&p.name, done) {
                answer_parked(id, Err(rpc_error(e)));
            }
        },
    );
    method(
        reg,
        "bdev_nvme_get_discovery_info",
        rt,
        |_: Option<Value>| Ok(info()),
    );
}
