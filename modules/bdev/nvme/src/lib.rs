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
//!
//! Files: `params` (the attach parameters and the reconnect policy),
//! `ctrlr` (attach, detach, reset, the controller list and each
//! controller's admin poller), `io` (the bdev backend and its channels: the
//! I/O path), `rpc` (the `bdev_nvme_*` method table), and `admin`,
//! `discovery`, `hotplug`, `opts` as above.

mod admin;
mod ctrlr;
mod discovery;
mod hotplug;
mod io;
pub mod opts;
mod params;
mod rpc;

pub use ctrlr::{
    attach, attach_finish, attach_plan, bdev_name, controller_count, detach, get_controllers,
    reset, AttachPlan,
};
pub use io::io_status;
pub use params::{AttachParams, ReconnectPolicy};

use ctrlr::{
    ctrlrs, drop_admin_poller, no_ctrlr, nvme_err, off_thread, trid_json, Health, NvmeCtrlr,
};
use io::CHANNELS;
use serde_json::{json, Value};

/// The module name.
pub const MODULE: &str = "nvme";

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
        rpc::register_rpcs(reg)
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

#[cfg(test)]
mod tests {
    use super::*;
    use rspdk_bdev::IoStatus;

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
}
