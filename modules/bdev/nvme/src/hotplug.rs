//! `bdev_nvme_set_hotplug` (PCIe only, as in SPDK): while enabled, a
//! poller on the thread that enabled it rescans the PCI bus every
//! `period_us` (on a helper thread: sysfs reads) for NVMe functions bound
//! to vfio-pci or uio_pci_generic. A new one is attached as
//! `HotInNvme<N>` (SPDK's name for hot-inserted controllers); a PCIe
//! controller whose device left the bus is detached with its bdevs.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use rspdk_thread::{poller_register, Poller, PollerStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{attach_finish, attach_plan, ctrlrs, detach, AttachParams};
use rspdk_bdev::rpc::method;
use rspdk_bdev::BdevError;

/// SPDK's default and largest period.
const DEFAULT_PERIOD_US: u64 = 100_000;
const MAX_PERIOD_US: u64 = 10_000_000;

/// (enabled, period_us) as save_config writes them.
static STATE: Mutex<(bool, u64)> = Mutex::new((false, DEFAULT_PERIOD_US));
static NEXT_INDEX: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static POLLER: RefCell<Option<Poller>> = const { RefCell::new(None) };
}

/// save_config's `bdev_nvme_set_hotplug`.
pub fn config_json() -> Value {
    let (enable, period) = *STATE.lock().unwrap_or_else(|e| e.into_inner());
    json!({"method": "bdev_nvme_set_hotplug", "params": {"period_us": period, "enable": enable}})
}

/// Stops the poller (shutdown).
pub fn stop() {
    let _ = POLLER.try_with(|p| {
        if let Some(p) = p.borrow_mut().take() {
            p.unregister();
        }
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    enable: bool,
    #[serde(default)]
    period_us: Option<u64>,
}

/// One rescan: which bound NVMe functions exist, and which attached PCIe
/// controllers lost their device (helper thread: sysfs).
fn scan() -> (Vec<rspdk_nvme::TransportId>, Vec<String>) {
    let found = rspdk_nvme::probe_pcie(&rspdk_env::pci::PciFilter::default());
    let attached: Vec<(String, String)> = ctrlrs()
        .iter()
        .filter(|c| c.ctrlr.trid().trtype == rspdk_nvme::TransportType::Pcie)
        .map(|c| (c.name.clone(), c.ctrlr.trid().traddr.clone()))
        .collect();
    let gone = attached
        .iter()
        .filter(|(_, bdf)| !std::path::Path::new(&format!("/sys/bus/pci/devices/{bdf}")).exists())
        .map(|(n, _)| n.clone())
        .collect();
    let new = found
        .into_iter()
        .filter(|t| !attached.iter().any(|a| a.1 == t.traddr))
        .collect();
    (new, gone)
}

fn tick(busy: &Arc<AtomicBool>) -> PollerStatus {
    if busy.swap(true, Ordering::AcqRel) {
        return PollerStatus::Idle;
    }
    let Some(home) = rspdk_thread::get_thread().map(|t| t.handle()) else {
        busy.store(false, Ordering::Release);
        return PollerStatus::Idle;
    };
    let busy = busy.clone();
    let spawned = std::thread::Builder::new()
        .name("bdev_nvme_hotplug".into())
        .spawn(move || {
            let (new, gone) = scan();
            // Connect the new ones here (blocking), register on `home`.
            let mut plans = Vec::new();
            for t in new {
                let name = format!("HotInNvme{}", NEXT_INDEX.fetch_add(1, Ordering::Relaxed));
                let p = AttachParams {
                    name,
                    trtype: "PCIe".into(),
                    traddr: t.traddr.clone(),
                    ..Default::default()
                };
                match attach_plan(p).and_then(|plan| plan.connect().map(|c| (plan, c))) {
                    Ok(x) => plans.push(x),
                    Err(e) => {
                        tracing::warn!(traddr = %t.traddr, error = %e, "hotplug: attach failed")
                    }
                }
            }
            let _ = home.send_msg(move || {
                for n in gone {
                    tracing::info!(controller = %n, "hotplug: device removed; detaching");
                    let _ = detach(&n, || {});
                }
                for (plan, c) in plans {
                    match attach_finish(plan, c) {
                        Ok(b) => tracing::info!(bdevs = ?b, "hotplug: controller inserted"),
                        Err(e) => tracing::warn!(error = %e, "hotplug: attach failed"),
                    }
                }
                busy.store(false, Ordering::Release);
            });
        });
    if spawned.is_err() {
        return PollerStatus::Idle;
    }
    PollerStatus::Busy
}

fn set_hotplug(p: Params) -> Result<(), BdevError> {
    let period = match p.period_us {
        None | Some(0) => DEFAULT_PERIOD_US,
        Some(x) if x > MAX_PERIOD_US => {
            return Err(BdevError::InvalidParam(format!(
                "period_us {x}: at most {MAX_PERIOD_US}"
            )))
        }
        Some(x) => x,
    };
    stop();
    *STATE.lock().unwrap_or_else(|e| e.into_inner()) = (p.enable, period);
    if p.enable {
        let busy = Arc::new(AtomicBool::new(false));
        let poller =
            poller_register("bdev_nvme_hotplug", period, move |_| tick(&busy)).map_err(|e| {
                BdevError::Module {
                    errno: libc::EINVAL,
                    message: format!("hotplug poller: {e}"),
                }
            })?;
        POLLER.with(|s| *s.borrow_mut() = Some(poller));
    }
    Ok(())
}

/// Registers `bdev_nvme_set_hotplug`.
pub fn register_rpcs(reg: &rspdk_rpc::RpcRegistry) {
    method(
        reg,
        "bdev_nvme_set_hotplug",
        rspdk_rpc::StateMask::ALL,
        |p: Params| set_hotplug(p).map(|()| json!(true)),
    );
}
