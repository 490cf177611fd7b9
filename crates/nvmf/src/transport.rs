//! The TCP transport's options (SPDK: `struct spdk_nvmf_transport_opts`,
//! the `nvmf_create_transport` parameters), their defaults and checks.

use rspdk_nvme::spec::oncs;
use serde::{Deserialize, Serialize};

use crate::error::{NvmfError, Result};

/// Options of the TCP transport (SPDK: `struct spdk_nvmf_transport_opts`,
/// `nvmf_create_transport` params).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportOpts {
    /// Transport type: `TCP`.
    pub trtype: String,
    /// Most outstanding commands per queue pair.
    #[serde(default = "d_qd")]
    pub max_queue_depth: u32,
    /// Most I/O queue pairs per controller.
    #[serde(default = "d_qpairs")]
    pub max_io_qpairs_per_ctrlr: u32,
    /// Most in-capsule data bytes of an I/O command.
    #[serde(default = "d_icd")]
    pub in_capsule_data_size: u32,
    /// Largest transfer of one command.
    #[serde(default = "d_io")]
    pub max_io_size: u32,
    /// Transfer unit of SPDK's shared buffer pool (deprecated in SPDK in
    /// favour of `iobuf_set_options`). rspdk gives each command one
    /// contiguous buffer of up to `max_io_size`, so it only has to be a
    /// sane size; a value other than the default is logged as having no
    /// effect.
    #[serde(default = "d_io")]
    pub io_unit_size: u32,
    /// Most outstanding admin commands.
    #[serde(default = "d_qd")]
    pub max_aq_depth: u32,
    /// SPDK's shared data buffer count (deprecated: `iobuf_set_options`).
    /// rspdk's queue pairs own their buffers, sized by the queue depth; a
    /// value other than the default is logged as having no effect.
    #[serde(default = "d_bufs")]
    pub num_shared_buffers: u32,
    /// Per-poll-group buffer cache (deprecated: `iobuf_small_cache_size`);
    /// as `num_shared_buffers`.
    #[serde(default = "d_cache")]
    pub buf_cache_size: u32,
    /// Per-poll-group small iobuf cache; as `num_shared_buffers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iobuf_small_cache_size: Option<u32>,
    /// Per-poll-group large iobuf cache; as `num_shared_buffers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iobuf_large_cache_size: Option<u32>,
    /// DIF insert/strip: not supported, must be false.
    #[serde(default)]
    pub dif_insert_or_strip: bool,
    /// Send C2HData with the SUCCESS flag (no response capsule) when the
    /// host disabled SQ flow control.
    #[serde(default = "d_true")]
    pub c2h_success: bool,
    /// SO_PRIORITY of every accepted connection's socket (0..=6 without
    /// CAP_NET_ADMIN, as SPDK's TCP transport allows 0..=6).
    #[serde(default)]
    pub sock_priority: u32,
    /// Abort timeout, seconds (SPDK: how long an Abort waits for the
    /// command it aborts). Must be at least 1.
    #[serde(default = "d_abort")]
    pub abort_timeout_sec: u32,
    /// Zero-copy bdev I/O: not supported, must be false.
    #[serde(default)]
    pub zcopy: bool,
    /// RDMA only: must be 0 on TCP.
    #[serde(default)]
    pub ack_timeout: u32,
    /// RDMA only: must be 0 on TCP.
    #[serde(default)]
    pub data_wr_pool_size: u32,
    /// Control messages per poll group (TCP). rspdk's control PDUs are
    /// built in each connection's own buffers, so only SPDK's default (32)
    /// is accepted.
    #[serde(default = "d_control_msg_num")]
    pub control_msg_num: u32,
    /// Keep Alive Support granularity in 100 ms units (Identify Controller
    /// KAS); a host's KATO is rounded up to a multiple of it.
    #[serde(default = "d_kas")]
    pub kas: u16,
    /// The smallest keep-alive timeout (ms) a host may ask for; smaller
    /// non-zero KATOs are raised to it.
    #[serde(default = "d_min_kato")]
    pub min_kato: u32,
    /// Optional NVM commands to hide from hosts (SPDK's names: compare,
    /// write_unc, dsm, write_zeroes, set_features_save, reservations,
    /// timestamp, copy): cleared in Identify Controller ONCS, and the
    /// commands answer Invalid Opcode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_oncs: Option<Vec<String>>,
    /// Fused operations to hide (SPDK's name: compare_and_write). rspdk
    /// reports no fused operation (FUSES 0), so any valid list is what it
    /// already does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_fuses: Option<Vec<String>>,
    /// rspdk never forwards unrecognized I/O opcodes or Identify Namespace
    /// to a bdev, so both values describe its behaviour: true is recorded.
    #[serde(default)]
    pub disable_command_passthru: bool,
    /// How often (us) the acceptor polls the listeners in poll mode.
    #[serde(default = "d_acceptor_poll_rate")]
    pub acceptor_poll_rate: u32,
    /// RDMA only (SRQ): must be false on TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_srq: bool,
    /// RDMA only: refused on TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_cqe: Option<u32>,
    /// RDMA only: refused on TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_srq_depth: Option<u32>,
    /// RDMA only: refused on TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptor_backlog: Option<u32>,
    /// RDMA only: must be false on TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_wr_batching: bool,
    /// vfio-user only: must be false on TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_mappable_bar0: bool,
    /// vfio-user only: must be false on TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_adaptive_irq: bool,
    /// vfio-user only: must be false on TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_shadow_doorbells: bool,
    /// The target to create the transport on (the default one if
    /// omitted).
    #[serde(default, skip_serializing)]
    pub tgt_name: Option<String>,
}

fn d_control_msg_num() -> u32 {
    32
}
fn d_kas() -> u16 {
    100
}
fn d_min_kato() -> u32 {
    10_000
}
fn d_acceptor_poll_rate() -> u32 {
    10_000
}

/// ONCS bits of SPDK's `masked_oncs` names (NVMe base spec, Identify
/// Controller ONCS).
pub const ONCS_NAMES: [(&str, u16); 8] = [
    ("compare", oncs::COMPARE),
    ("write_unc", oncs::WRITE_UNCORRECTABLE),
    ("dsm", oncs::DSM),
    ("write_zeroes", oncs::WRITE_ZEROES),
    ("set_features_save", oncs::SAVE_SELECT),
    ("reservations", oncs::RESERVATIONS),
    ("timestamp", oncs::TIMESTAMP),
    ("copy", oncs::COPY),
];

fn d_qd() -> u32 {
    128
}
fn d_qpairs() -> u32 {
    127
}
fn d_icd() -> u32 {
    4096
}
fn d_io() -> u32 {
    131072
}
fn d_bufs() -> u32 {
    511
}
fn d_cache() -> u32 {
    32
}
fn d_true() -> bool {
    true
}
fn d_abort() -> u32 {
    1
}

impl TransportOpts {
    /// Checks the options, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(NvmfError::param(format!(
                "trtype '{}': only TCP is supported",
                self.trtype
            )));
        }
        if self.max_queue_depth < 2 || self.max_queue_depth > 65535 {
            return Err(NvmfError::param(format!(
                "max_queue_depth {} must be in 2..=65535",
                self.max_queue_depth
            )));
        }
        if self.max_aq_depth < 2 || self.max_aq_depth > 4096 {
            return Err(NvmfError::param(format!(
                "max_aq_depth {} must be in 2..=4096",
                self.max_aq_depth
            )));
        }
        if self.max_io_size < 4096
            || self.max_io_size > (8 << 20)
            || !self.max_io_size.is_power_of_two()
        {
            return Err(NvmfError::param(format!(
                "max_io_size {} must be a power of two in 4096..=8 MiB",
                self.max_io_size
            )));
        }
        if self.in_capsule_data_size % 16 != 0 || self.in_capsule_data_size > 131072 {
            return Err(NvmfError::param(format!(
                "in_capsule_data_size {} must be a multiple of 16, at most 131072",
                self.in_capsule_data_size
            )));
        }
        if self.max_io_qpairs_per_ctrlr == 0 || self.max_io_qpairs_per_ctrlr > 65534 {
            return Err(NvmfError::param(format!(
                "max_io_qpairs_per_ctrlr {} must be in 1..=65534",
                self.max_io_qpairs_per_ctrlr
            )));
        }
        if self.dif_insert_or_strip {
            return Err(NvmfError::param(
                "dif_insert_or_strip: DIF insert/strip is not supported by rspdk's TCP transport; omit it or pass false",
            ));
        }
        if self.zcopy {
            return Err(NvmfError::param(
                "zcopy: zero-copy bdev I/O is not supported by rspdk's TCP transport (its data already moves straight between the socket and the bdev's buffer); omit -z",
            ));
        }
        if self.io_unit_size < 512 || !self.io_unit_size.is_power_of_two() {
            return Err(NvmfError::param(format!(
                "io_unit_size {} must be a power of two of at least 512",
                self.io_unit_size
            )));
        }
        if self.sock_priority > 6 {
            return Err(NvmfError::param(format!(
                "sock_priority {} must be in 0..=6",
                self.sock_priority
            )));
        }
        if self.abort_timeout_sec == 0 {
            return Err(NvmfError::param("abort_timeout_sec must be at least 1"));
        }
        if self.kas == 0 {
            return Err(NvmfError::param(
                "kas must be at least 1 (units of 100 ms; SPDK's default is 100)",
            ));
        }
        if self.acceptor_poll_rate == 0 || self.acceptor_poll_rate > 10_000_000 {
            return Err(NvmfError::param(format!(
                "acceptor_poll_rate {} us must be in 1..=10000000",
                self.acceptor_poll_rate
            )));
        }
        if self.control_msg_num != d_control_msg_num() {
            return Err(NvmfError::param(format!(
                "control_msg_num {}: rspdk's TCP transport has no control message pool (each connection builds its control PDUs in its own buffers); omit it or pass 32",
                self.control_msg_num
            )));
        }
        let rdma_only = [
            ("no_srq", self.no_srq),
            ("num_cqe", self.num_cqe.is_some()),
            ("max_srq_depth", self.max_srq_depth.is_some()),
            ("acceptor_backlog", self.acceptor_backlog.is_some()),
            ("no_wr_batching", self.no_wr_batching),
            ("ack_timeout", self.ack_timeout != 0),
            ("data_wr_pool_size", self.data_wr_pool_size != 0),
        ];
        if let Some((name, _)) = rdma_only.iter().find(|(_, set)| *set) {
            return Err(NvmfError::param(format!(
                "{name} applies to the RDMA transport only and is not supported on TCP; omit it"
            )));
        }
        let vfio_user_only = [
            ("disable_mappable_bar0", self.disable_mappable_bar0),
            ("disable_adaptive_irq", self.disable_adaptive_irq),
            ("disable_shadow_doorbells", self.disable_shadow_doorbells),
        ];
        if let Some((name, _)) = vfio_user_only.iter().find(|(_, set)| *set) {
            return Err(NvmfError::param(format!(
                "{name} applies to the VFIO-USER transport only and is not supported on TCP; omit it"
            )));
        }
        if let Some(m) = &self.masked_oncs {
            for n in m {
                if !ONCS_NAMES.iter().any(|(k, _)| k == n) {
                    return Err(NvmfError::param(format!(
                        "masked_oncs: unknown feature '{n}' (known: compare, write_unc, dsm, write_zeroes, set_features_save, reservations, timestamp, copy)"
                    )));
                }
            }
        }
        if let Some(m) = &self.masked_fuses {
            if let Some(n) = m.iter().find(|n| *n != "compare_and_write") {
                return Err(NvmfError::param(format!(
                    "masked_fuses: unknown fused operation '{n}' (known: compare_and_write)"
                )));
            }
        }
        Ok(())
    }

    /// Whether `masked_fuses` hides Compare and Write.
    pub fn fuses_masked(&self) -> bool {
        self.masked_fuses.as_ref().is_some_and(|m| !m.is_empty())
    }

    /// The keep-alive timeout (ms) a controller gets for the KATO `asked`
    /// in its Connect: 0 stays 0 (no keep alive), anything else is raised
    /// to `min_kato` and rounded up to a multiple of the KAS granularity.
    pub fn effective_kato(&self, asked: u32) -> u32 {
        if asked == 0 {
            return 0;
        }
        let gran = u32::from(self.kas.max(1)) * 100;
        asked.max(self.min_kato).div_ceil(gran).saturating_mul(gran)
    }

    /// The ONCS bits `masked_oncs` hides.
    pub fn oncs_mask(&self) -> u16 {
        self.masked_oncs.iter().flatten().fold(0, |m, n| {
            m | ONCS_NAMES
                .iter()
                .find(|(k, _)| k == n)
                .map_or(0, |(_, b)| *b)
        })
    }

    /// Options that rspdk accepts for SPDK compatibility but whose buffer
    /// pools it does not have: each non-default value, named for a log
    /// warning (accepted, never silently).
    pub fn no_effect(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.io_unit_size != d_io() {
            v.push(format!("io_unit_size {}", self.io_unit_size));
        }
        if self.num_shared_buffers != d_bufs() {
            v.push(format!("num_shared_buffers {}", self.num_shared_buffers));
        }
        if self.buf_cache_size != d_cache() {
            v.push(format!("buf_cache_size {}", self.buf_cache_size));
        }
        if let Some(n) = self.iobuf_small_cache_size {
            v.push(format!("iobuf_small_cache_size {n}"));
        }
        if let Some(n) = self.iobuf_large_cache_size {
            v.push(format!("iobuf_large_cache_size {n}"));
        }
        v
    }
}
