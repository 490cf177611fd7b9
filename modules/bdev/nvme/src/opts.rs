//! `bdev_nvme_set_options`: the module-wide options (SPDK:
//! `struct spdk_bdev_nvme_opts`), allowed only while no controller is
//! attached. What maps to rspdk is acted on (timeouts and their action,
//! keep alive, arbitration, poll periods, queue requests, doorbell
//! batching, the reconnect defaults, the TCP connect timeout, flush);
//! options of features rspdk lacks (RDMA, multipath, DH-HMAC-CHAP, retries,
//! statistics) take only their default value and any other is refused by
//! name. save_config writes the whole set, as SPDK does.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use rspdk_bdev::BdevError;

/// SPDK's default DH-HMAC-CHAP digests and groups (every one it knows).
const DIGESTS: [&str; 3] = ["sha256", "sha384", "sha512"];
const DHGROUPS: [&str; 6] = [
    "null",
    "ffdhe2048",
    "ffdhe3072",
    "ffdhe4096",
    "ffdhe6144",
    "ffdhe8192",
];

/// The options in force (SPDK's defaults; `io_queue_requests` 0 means the
/// driver's 512).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmeOpts {
    /// `none`, `reset` or `abort`.
    pub action_on_timeout: String,
    /// I/O command timeout (0: none).
    pub timeout_us: u64,
    /// Admin command timeout (0: `timeout_us`).
    pub timeout_admin_us: u64,
    /// Keep Alive Timeout asked for at connect.
    pub keep_alive_timeout_ms: u32,
    /// Arbitration Burst (Set Features 01h at attach when any is non-zero).
    pub arbitration_burst: u32,
    /// Low priority weight.
    pub low_priority_weight: u32,
    /// Medium priority weight.
    pub medium_priority_weight: u32,
    /// High priority weight.
    pub high_priority_weight: u32,
    /// Admin poller period.
    pub nvme_adminq_poll_period_us: u64,
    /// I/O (channel) poller period (0: every reactor loop).
    pub nvme_ioq_poll_period_us: u64,
    /// Requests per I/O queue pair (0: the driver's default).
    pub io_queue_requests: u32,
    /// Ring the SQ doorbell once per poll.
    pub delay_cmd_submit: bool,
    /// Reconnect defaults for attach.
    pub ctrlr_loss_timeout_sec: i64,
    /// Reconnect delay default.
    pub reconnect_delay_sec: u32,
    /// Fast I/O fail default.
    pub fast_io_fail_timeout_sec: u32,
    /// TCP connect timeout (0: the admin timeout).
    pub tcp_connect_timeout_ms: u32,
    /// Pass Flush to controllers with a volatile write cache (false: a
    /// Flush completes at once, as in SPDK).
    pub enable_flush: bool,
}

impl Default for NvmeOpts {
    fn default() -> Self {
        NvmeOpts {
            action_on_timeout: "none".into(),
            timeout_us: 0,
            timeout_admin_us: 0,
            keep_alive_timeout_ms: 10_000,
            arbitration_burst: 0,
            low_priority_weight: 0,
            medium_priority_weight: 0,
            high_priority_weight: 0,
            nvme_adminq_poll_period_us: 10_000,
            nvme_ioq_poll_period_us: 0,
            io_queue_requests: 0,
            delay_cmd_submit: true,
            ctrlr_loss_timeout_sec: 0,
            reconnect_delay_sec: 0,
            fast_io_fail_timeout_sec: 0,
            tcp_connect_timeout_ms: 0,
            enable_flush: false,
        }
    }
}

static OPTS: Mutex<Option<NvmeOpts>> = Mutex::new(None);

/// The options in force.
pub fn get() -> NvmeOpts {
    OPTS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

/// Back to SPDK's defaults (tests; a fresh target starts with them).
pub fn reset_defaults() {
    *OPTS.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// SPDK's multipath options object.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MultipathOpts {
    /// `active_passive` (the only one without multipath support).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Path selector: refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Round-robin I/O count: refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_io: Option<u32>,
}

/// The parameters of `bdev_nvme_set_options`, as SPDK names them; every
/// one is optional and an omitted one keeps its current value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetOptionsParams {
    action_on_timeout: Option<String>,
    timeout_us: Option<u64>,
    timeout_admin_us: Option<u64>,
    keep_alive_timeout_ms: Option<u32>,
    arbitration_burst: Option<u32>,
    low_priority_weight: Option<u32>,
    medium_priority_weight: Option<u32>,
    high_priority_weight: Option<u32>,
    nvme_adminq_poll_period_us: Option<u64>,
    nvme_ioq_poll_period_us: Option<u64>,
    io_queue_requests: Option<u32>,
    delay_cmd_submit: Option<bool>,
    transport_retry_count: Option<u32>,
    /// SPDK's old name of `transport_retry_count`.
    retry_count: Option<u32>,
    bdev_retry_count: Option<i32>,
    transport_ack_timeout: Option<u8>,
    ctrlr_loss_timeout_sec: Option<i64>,
    reconnect_delay_sec: Option<u32>,
    fast_io_fail_timeout_sec: Option<u32>,
    disable_auto_failback: Option<bool>,
    generate_uuids: Option<bool>,
    transport_tos: Option<u8>,
    nvme_error_stat: Option<bool>,
    rdma_srq_size: Option<u32>,
    io_path_stat: Option<bool>,
    allow_accel_sequence: Option<bool>,
    rdma_max_cq_size: Option<u32>,
    rdma_cm_event_timeout_ms: Option<u16>,
    dhchap_digests: Option<Vec<String>>,
    dhchap_dhgroups: Option<Vec<String>>,
    rdma_umr_per_io: Option<bool>,
    tcp_connect_timeout_ms: Option<u32>,
    enable_flush: Option<bool>,
    multipath_opts: Option<MultipathOpts>,
}

fn refuse(name: &str, what: &str, default: &str) -> BdevError {
    BdevError::InvalidParam(format!(
        "{name}: {what} is not supported by rspdk; omit {name} or give its default {default}"
    ))
}

fn same_set(given: &[String], want: &[&str]) -> bool {
    given.len() == want.len() && want.iter().all(|w| given.iter().any(|g| g == w))
}

impl SetOptionsParams {
    /// The options these parameters give on top of `cur`, or an error
    /// naming the first parameter rspdk cannot honour or SPDK would refuse.
    pub fn apply(&self, cur: &NvmeOpts) -> Result<NvmeOpts, BdevError> {
        let zero_u32 = [
            (
                "transport_retry_count",
                self.transport_retry_count,
                "retrying commands in the driver",
            ),
            (
                "retry_count",
                self.retry_count,
                "retrying commands in the driver",
            ),
            ("rdma_srq_size", self.rdma_srq_size, "RDMA"),
            ("rdma_max_cq_size", self.rdma_max_cq_size, "RDMA"),
        ];
        for (name, v, what) in zero_u32 {
            if v.is_some_and(|v| v != 0) {
                return Err(refuse(name, what, "0"));
            }
        }
        if self.bdev_retry_count.is_some_and(|v| v != 0) {
            return Err(refuse(
                "bdev_retry_count",
                "retrying failed I/O in the bdev layer",
                "0",
            ));
        }
        if self.transport_ack_timeout.is_some_and(|v| v != 0) {
            return Err(refuse(
                "transport_ack_timeout",
                "an ack timeout on the socket",
                "0",
            ));
        }
        if self.transport_tos.is_some_and(|v| v != 0) {
            return Err(refuse("transport_tos", "RDMA type of service", "0"));
        }
        if self.rdma_cm_event_timeout_ms.is_some_and(|v| v != 0) {
            return Err(refuse("rdma_cm_event_timeout_ms", "RDMA", "0"));
        }
        let false_bools = [
            (
                "disable_auto_failback",
                self.disable_auto_failback,
                "multipath failback",
            ),
            (
                "generate_uuids",
                self.generate_uuids,
                "generated bdev UUIDs",
            ),
            (
                "nvme_error_stat",
                self.nvme_error_stat,
                "NVMe error statistics",
            ),
            ("io_path_stat", self.io_path_stat, "I/O path statistics"),
            (
                "allow_accel_sequence",
                self.allow_accel_sequence,
                "accel sequences",
            ),
            ("rdma_umr_per_io", self.rdma_umr_per_io, "RDMA"),
        ];
        for (name, v, what) in false_bools {
            if v == Some(true) {
                return Err(refuse(name, what, "false"));
            }
        }
        if let Some(d) = &self.dhchap_digests {
            if !same_set(d, &DIGESTS) {
                return Err(refuse(
                    "dhchap_digests",
                    "DH-HMAC-CHAP",
                    "[sha256, sha384, sha512]",
                ));
            }
        }
        if let Some(d) = &self.dhchap_dhgroups {
            if !same_set(d, &DHGROUPS) {
                return Err(refuse(
                    "dhchap_dhgroups",
                    "DH-HMAC-CHAP",
                    "[null, ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144, ffdhe8192]",
                ));
            }
        }
        if let Some(m) = &self.multipath_opts {
            if m.policy.as_deref().is_some_and(|p| p != "active_passive") {
                return Err(refuse(
                    "multipath_opts.policy",
                    "multipath",
                    "active_passive",
                ));
            }
            if m.selector.is_some() {
                return Err(refuse("multipath_opts.selector", "multipath", "(none)"));
            }
            if m.min_io.is_some() {
                return Err(refuse("multipath_opts.min_io", "multipath", "(none)"));
            }
        }
        let mut o = cur.clone();
        if let Some(a) = &self.action_on_timeout {
            if !["none", "reset", "abort"].contains(&a.as_str()) {
                return Err(BdevError::InvalidParam(format!(
                    "action_on_timeout '{a}': use none, reset or abort"
                )));
            }
            o.action_on_timeout = a.clone();
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { o.$f = v; } )* };
        }
        set!(
            timeout_us,
            timeout_admin_us,
            keep_alive_timeout_ms,
            arbitration_burst,
            low_priority_weight,
            medium_priority_weight,
            high_priority_weight,
            nvme_adminq_poll_period_us,
            nvme_ioq_poll_period_us,
            io_queue_requests,
            delay_cmd_submit,
            ctrlr_loss_timeout_sec,
            reconnect_delay_sec,
            fast_io_fail_timeout_sec,
            tcp_connect_timeout_ms,
            enable_flush
        );
        if o.timeout_admin_us != 0 && o.timeout_admin_us < 1000 {
            return Err(BdevError::InvalidParam(format!(
                "timeout_admin_us {}: give 0 or at least 1000 (1 ms)",
                o.timeout_admin_us
            )));
        }
        if o.arbitration_burst > 7 {
            return Err(BdevError::InvalidParam(format!(
                "arbitration_burst {}: a power-of-two exponent 0..=7",
                o.arbitration_burst
            )));
        }
        for (n, w) in [
            ("low_priority_weight", o.low_priority_weight),
            ("medium_priority_weight", o.medium_priority_weight),
            ("high_priority_weight", o.high_priority_weight),
        ] {
            if w > 255 {
                return Err(BdevError::InvalidParam(format!("{n} {w}: at most 255")));
            }
        }
        if o.nvme_adminq_poll_period_us == 0 {
            return Err(BdevError::InvalidParam(
                "nvme_adminq_poll_period_us must be non-zero".into(),
            ));
        }
        // The reconnect defaults follow attach's rules.
        let probe = super::AttachParams {
            ctrlr_loss_timeout_sec: Some(o.ctrlr_loss_timeout_sec),
            reconnect_delay_sec: Some(o.reconnect_delay_sec),
            fast_io_fail_timeout_sec: Some(o.fast_io_fail_timeout_sec),
            ..Default::default()
        };
        super::ReconnectPolicy::from_params(&probe)?;
        Ok(o)
    }
}

/// `bdev_nvme_set_options`: refused once a controller is attached (as in
/// SPDK), else the new options are in force for the next attach.
pub fn set_options(p: &SetOptionsParams) -> Result<(), BdevError> {
    if super::controller_count() > 0 {
        return Err(BdevError::Module {
            errno: libc::EPERM,
            message: "bdev_nvme_set_options is not permitted with NVMe controllers attached: set the options before the first bdev_nvme_attach_controller".into(),
        });
    }
    let mut g = OPTS.lock().unwrap_or_else(|e| e.into_inner());
    let next = p.apply(g.as_ref().unwrap_or(&NvmeOpts::default()))?;
    *g = Some(next);
    Ok(())
}

/// The save_config entry, every field as SPDK writes it.
pub fn config_json() -> Value {
    let o = get();
    json!({
        "method": "bdev_nvme_set_options",
        "params": {
            "action_on_timeout": o.action_on_timeout,
            "timeout_us": o.timeout_us,
            "timeout_admin_us": o.timeout_admin_us,
            "keep_alive_timeout_ms": o.keep_alive_timeout_ms,
            "arbitration_burst": o.arbitration_burst,
            "low_priority_weight": o.low_priority_weight,
            "medium_priority_weight": o.medium_priority_weight,
            "high_priority_weight": o.high_priority_weight,
            "nvme_adminq_poll_period_us": o.nvme_adminq_poll_period_us,
            "nvme_ioq_poll_period_us": o.nvme_ioq_poll_period_us,
            "io_queue_requests": o.io_queue_requests,
            "delay_cmd_submit": o.delay_cmd_submit,
            "transport_retry_count": 0,
            "bdev_retry_count": 0,
            "transport_ack_timeout": 0,
            "ctrlr_loss_timeout_sec": o.ctrlr_loss_timeout_sec,
            "reconnect_delay_sec": o.reconnect_delay_sec,
            "fast_io_fail_timeout_sec": o.fast_io_fail_timeout_sec,
            "disable_auto_failback": false,
            "generate_uuids": false,
            "transport_tos": 0,
            "nvme_error_stat": false,
            "rdma_srq_size": 0,
            "io_path_stat": false,
            "allow_accel_sequence": false,
            "rdma_max_cq_size": 0,
            "rdma_cm_event_timeout_ms": 0,
            "dhchap_digests": DIGESTS,
            "dhchap_dhgroups": DHGROUPS,
            "rdma_umr_per_io": false,
            "tcp_connect_timeout_ms": o.tcp_connect_timeout_ms,
            "enable_flush": o.enable_flush,
            "multipath_opts": {"policy": "active_passive"},
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> SetOptionsParams {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn spdk_client_defaults_pass_and_others_are_refused_by_name() {
        let d = NvmeOpts::default();
        let p = parse(
            json!({"delay_cmd_submit": true, "disable_auto_failback": false,
            "generate_uuids": false, "nvme_error_stat": false, "io_path_stat": false,
            "allow_accel_sequence": false, "enable_flush": false}),
        );
        assert_eq!(p.apply(&d).unwrap(), d);
        for (v, name) in [
            (json!({"generate_uuids": true}), "generate_uuids"),
            (json!({"bdev_retry_count": 3}), "bdev_retry_count"),
            (json!({"dhchap_digests": ["sha256"]}), "dhchap_digests"),
            (
                json!({"multipath_opts": {"policy": "active_active"}}),
                "multipath_opts.policy",
            ),
            (json!({"action_on_timeout": "explode"}), "action_on_timeout"),
            (json!({"ctrlr_loss_timeout_sec": 5}), "reconnect_delay_sec"),
        ] {
            let e = parse(v).apply(&d).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
        let o = parse(
            json!({"keep_alive_timeout_ms": 5000, "action_on_timeout": "abort",
            "timeout_us": 2000000, "io_queue_requests": 1024,
            "dhchap_digests": ["sha512", "sha384", "sha256"]}),
        )
        .apply(&d)
        .unwrap();
        assert_eq!(o.keep_alive_timeout_ms, 5000);
        assert_eq!(o.action_on_timeout, "abort");
        assert_eq!(o.io_queue_requests, 1024);
        assert!(serde_json::from_value::<SetOptionsParams>(json!({"bogus": 1})).is_err());
    }
}
