//! Framework methods about scheduling, the CPU governor, PCI devices and
//! log timestamps, with SPDK's names and result shapes:
//!
//! | Method | States | Result |
//! |---|---|---|
//! | `framework_get_scheduler` | both | `{scheduler_name, scheduler_period, isolated_core_mask, scheduling_core}` |
//! | `framework_set_scheduler {name, period?, ...}` | both | `true`; `static` only |
//! | `framework_get_governor` | both | `{}`: no governor (no DVFS control) |
//! | `framework_get_pci_devices` | both | `[{address, config_space}]` for devices bound to vfio-pci or uio |
//! | `log_enable_timestamps {enabled}` | both | `true` |
//!
//! rspdk places each new thread on a reactor (round robin, SPDK's
//! `static` scheduler) and does not move threads afterwards, so the
//! `dynamic` and `gscheduler` schedulers, which move threads by load, are
//! refused by name rather than accepted and ignored.

use std::cell::Cell;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::{json, Value};

use rspdk_rpc::{expect_no_params, parse_params, RpcError, RpcRegistry, StateMask};

thread_local! {
    /// The scheduling period `framework_set_scheduler` set (us; SPDK's
    /// default is 1 s). With the static scheduler it only paces nothing,
    /// but it is kept and reported as SPDK does.
    static PERIOD_US: Cell<u64> = const { Cell::new(1_000_000) };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetScheduler {
    name: String,
    #[serde(default)]
    period: Option<u64>,
    #[serde(default)]
    load_limit: Option<u32>,
    #[serde(default)]
    core_limit: Option<u32>,
    #[serde(default)]
    core_busy: Option<u32>,
    #[serde(default)]
    mappings: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Timestamps {
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PciDevices {
    /// rpc.py formats the answer itself (`--format-lspci`); the request
    /// carries nothing for it, but accept it if a client sends it.
    #[serde(default)]
    #[allow(dead_code, reason = "client-side formatting option")]
    format_lspci: Option<bool>,
}

/// Registers the methods of this module.
pub(crate) fn register(reg: &RpcRegistry) -> Result<(), rspdk_rpc::Error> {
    let both = StateMask::ALL;
    reg.register("framework_get_scheduler", both, |p, r| {
        if let Err(e) = expect_no_params("framework_get_scheduler", &p) {
            return r.error(e);
        }
        r.success(&json!({
            "scheduler_name": "static",
            "scheduler_period": PERIOD_US.with(Cell::get),
            "isolated_core_mask": "",
            "scheduling_core": 0,
        }));
    })?;
    reg.register("framework_set_scheduler", both, |p, r| {
        let p: SetScheduler = match parse_params(p) {
            Ok(p) => p,
            Err(e) => return r.error(e),
        };
        if p.name != "static" {
            return r.error(RpcError::invalid_params(format!(
                "scheduler '{}' is not supported: rspdk places threads round robin when they are created and does not move them yet (the 'static' scheduler); use static",
                p.name
            )));
        }
        let dynamic_only = [
            ("load_limit", p.load_limit.is_some()),
            ("core_limit", p.core_limit.is_some()),
            ("core_busy", p.core_busy.is_some()),
            ("mappings", p.mappings.is_some()),
        ];
        if let Some((name, _)) = dynamic_only.iter().find(|(_, set)| *set) {
            return r.error(RpcError::invalid_params(format!(
                "{name} is an option of the dynamic scheduler, not of static; omit it"
            )));
        }
        if let Some(period) = p.period {
            if period == 0 {
                return r.error(RpcError::invalid_params(
                    "period must be at least 1 us".to_string(),
                ));
            }
            PERIOD_US.with(|c| c.set(period));
        }
        r.success(&true);
    })?;
    reg.register("framework_get_governor", both, |p, r| {
        if let Err(e) = expect_no_params("framework_get_governor", &p) {
            return r.error(e);
        }
        // As SPDK without a governor: an empty object.
        r.success(&json!({}));
    })?;
    reg.register("framework_get_pci_devices", both, |p, r| {
        if let Err(e) = parse_params::<Option<PciDevices>>(p) {
            return r.error(e);
        }
        r.success(&Value::Array(pci_devices()));
    })?;
    reg.register("log_enable_timestamps", both, |p, r| {
        let p: Timestamps = match parse_params(p) {
            Ok(p) => p,
            Err(e) => return r.error(e),
        };
        crate::log::set_timestamps(p.enabled);
        r.success(&true);
    })?;
    Ok(())
}

/// The PCI functions a user-space driver can use here (bound to vfio-pci,
/// uio_pci_generic or igb_uio), with their config space in hex, as SPDK
/// lists the devices its env attached.
fn pci_devices() -> Vec<Value> {
    rspdk_env::pci::devices()
        .into_iter()
        .filter(|d| {
            matches!(
                d.driver.as_deref(),
                Some("vfio-pci" | "uio_pci_generic" | "igb_uio")
            )
        })
        .map(|d| {
            let path = format!("/sys/bus/pci/devices/{}/config", d.bdf);
            let bytes = std::fs::read(&path).unwrap_or_default();
            let mut hex = String::with_capacity(bytes.len() * 2);
            for b in &bytes {
                let _ = write!(hex, "{b:02x}");
            }
            json!({"address": d.bdf, "config_space": hex})
        })
        .collect()
}
