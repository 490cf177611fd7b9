//! The parameters of `bdev_nvme_attach_controller` (SPDK's names) and the
//! reconnect policy they carry.

use rspdk_bdev::BdevError;
use rspdk_nvme::TransportId;
use serde::{Deserialize, Serialize};

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
