//! # rspdk_nvmf — the NVMe over Fabrics target, TCP transport (SPDK: `lib/nvmf`)
//!
//! - [`pdu`]: NVMe/TCP PDUs as typed views with parse/emit round trips and
//!   CRC32C digests; the parser never panics and names the field at fault.
//! - [`target`]: named targets (`nvmf_tgt` and those of
//!   `nvmf_create_target`), each with its transport ([`transport`]: the
//!   options), [`subsystem`]s (NQN, serial, model, hosts, max namespaces;
//!   namespaces on bdevs with NSID, UUID, NGUID, EUI64, per-host
//!   visibility; listeners; controllers made per host Connect), the
//!   discovery subsystem, poll groups (one lightweight thread per reactor
//!   core; connections are spread round robin).
//! - [`conn`]: the sans-I/O core of a queue pair (SPDK's `tcp.c` protocol
//!   half and `ctrlr.c`): bytes and time in, bytes and bdev requests out.
//!   ICReq/ICResp, command capsules with in-capsule data, R2T and H2CData
//!   for writes, C2HData for reads (with the SUCCESS flag when the host
//!   disabled SQ flow control), header and data digests, fabrics commands
//!   (Connect, Property Get/Set, Disconnect), the admin commands a host
//!   needs (Identify CNS 0/1/2/3, Get Log Page error / SMART / firmware /
//!   changed namespaces / discovery, Get/Set Features, Keep Alive with the
//!   keep-alive timeout enforced, AER with namespace-change notices). Unit
//!   tested in process and fuzzed (`fuzz/fuzz_targets/nvmf_conn.rs`).
//! - `bdev_bridge` (SPDK's `ctrlr_bdev.c`): NVM commands as bdev I/O
//!   (read, write, compare, fused compare-and-write, flush, write zeroes,
//!   DSM deallocate).
//! - `tcp` (the socket half of SPDK's `tcp.c`): listeners, and the poll
//!   groups that drive each connection's core on a non-blocking socket
//!   (`readv` into the buffers the core names, `writev` of its output).
//! - [`rpc`]: SPDK's `nvmf_*` methods; [`NvmfSubsystem`] is the `nvmf`
//!   subsystem for `rspdk_event::App` (depends on `bdev`, saved by
//!   `save_config`).
//!
//! The NVMe/TCP host (initiator) is `rspdk_nvme`'s TCP transport
//! (`rspdk_nvme::Controller::connect` with `trtype:TCP`).
//!
//! A PDU that breaks the rules gets that connection a C2HTermReq naming the
//! Fatal Error Status and the byte at fault, then it is closed; others go
//! on.

pub mod admin;
mod bdev_bridge;
pub mod conn;
pub mod error;
mod trace;
pub use rspdk_nvme::tcp::pdu;
pub mod rpc;
pub mod subsystem;
pub mod target;
mod tcp;
pub mod transport;

pub use error::{NvmfError, Result};

/// The discovery NQN, re-exported for users.
pub const DISCOVERY: &str = target::DISCOVERY_NQN;

use rspdk_event::{Subsystem, SubsystemDone};
use rspdk_rpc::RpcRegistry;
use serde_json::Value;

/// SPDK's `nvmf` subsystem: the target's RPCs and its save_config section.
#[derive(Debug, Default)]
pub struct NvmfSubsystem;

impl Subsystem for NvmfSubsystem {
    fn name(&self) -> &str {
        "nvmf"
    }

    fn depends_on(&self) -> Vec<String> {
        vec!["bdev".into()]
    }

    fn register_rpcs(&self, registry: &RpcRegistry) -> Result<(), rspdk_rpc::Error> {
        // SPDK's log flags of the NVMe-oF target (`-L`, `log_set_flag`).
        rspdk_event::log::register_log_flag("nvmf", &["rspdk_nvmf"]);
        rspdk_event::log::register_log_flag(
            "nvmf_tcp",
            &[
                "rspdk_nvmf::tcp",
                "rspdk_nvmf::conn",
                "rspdk_nvmf::bdev_bridge",
            ],
        );
        rpc::register_rpcs(registry);
        Ok(())
    }

    fn fini(&self, done: SubsystemDone) {
        tcp::close_all();
        let mut t = target::target();
        for g in &mut t.tgts {
            g.shut_down();
        }
        t.tgts.clear();
        t.default_tgt();
        done.ok();
    }

    fn write_config_json(&self) -> Option<Vec<Value>> {
        Some(rpc::config_json())
    }
}
