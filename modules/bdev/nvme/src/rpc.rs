//! The module's RPC methods (`bdev_nvme_*`), registered in one place.

use rspdk_bdev::rpc::{answer_parked, method, method_async, respond_later, rpc_error};
use rspdk_bdev::BdevError;
use serde::Deserialize;
use serde_json::json;

use crate::ctrlr::{
    attach_finish, attach_plan, ctrlrs, detach, get_controllers, no_ctrlr, nvme_err, off_thread,
};
use crate::params::AttachParams;
use crate::{admin, discovery, hotplug, opts};

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
pub(crate) fn register_rpcs(reg: &rspdk_rpc::RpcRegistry) {
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
