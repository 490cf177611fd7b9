//! rspdk's polled user-space NVMe driver, PCIe and NVMe/TCP (SPDK:
//! `include/spdk/nvme.h`, `lib/nvme`).
//!
//! - [`TransportId`] parses SPDK's transport ID strings
//!   (`trtype:PCIe traddr:0000:00:04.0`, `trtype:TCP ...`); [`probe`] and
//!   [`Controller::connect`] attach PCIe controllers bound to vfio-pci or
//!   uio_pci_generic (see `rspdk_setup config`) and NVMe/TCP subsystems,
//!   with [`ControllerOpts`].
//! - [`Controller`] (`ctrlr`): the init sequence (CC/CSTS with CAP.TO
//!   honoured), the admin commands (Identify, the namespace scan, Get/Set
//!   Features, Get Log Page, Abort, Asynchronous Events, raw passthrough),
//!   reset, disable and detach, written once over the transport interface
//!   (`transport`, SPDK's `spdk_nvme_transport_ops`) that `pcie` (registers
//!   in BAR0) and `tcp::host` (registers as fabrics properties, one
//!   connection per queue) implement.
//! - [`IoQpair`]: per-thread I/O queue pairs with lock-free submission,
//!   batched doorbells and [`IoQpair::process_completions`]; read, write,
//!   compare, flush, write zeroes, deallocate, vectored I/O through
//!   [`SgeFns`] (SGLs when the controller has them, PRP lists otherwise),
//!   raw passthrough, per-command timeouts. An enum over the transports:
//!   no dynamic dispatch per I/O.
//! - [`spec`] holds the NVMe structures as typed views, [`status`] every
//!   status code's name, [`tcp::pdu`] the NVMe/TCP PDUs (shared with the
//!   target).
//!
//! Layering: depends on `rspdk_env`, `rspdk_util` and `rspdk_sock` (the
//! socket options of NVMe/TCP connections). The tools built on it are
//! apps: `apps/rspdk_nvme_identify`, `apps/rspdk_nvme_perf`.

pub mod ctrlr;
pub mod error;
pub mod pcie;
pub mod prp;
pub mod qpair;
mod queue;
pub mod spec;
pub mod status;
pub mod tcp;
mod transport;
pub mod trid;

pub use ctrlr::{
    probe, AsyncEvent, Controller, ControllerOpts, DiscoveryEntry, Namespace, DEFAULT_HOSTNQN,
};
pub use error::{NvmeError, Result};
pub use pcie::probe_pcie;
pub use qpair::{CmdErrorInjection, IoQpair, QpairOpts, TimeoutAction, TimeoutEvent};
pub use queue::{Completion, SgeFns};
pub use status::Status;
pub use trid::{TransportId, TransportType, DISCOVERY_NQN};
