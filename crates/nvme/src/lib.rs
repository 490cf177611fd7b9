//! rspdk's polled user-space NVMe driver for PCIe controllers (SPDK:
//! `include/spdk/nvme.h`, `lib/nvme`).
//!
//! - [`TransportId`] parses SPDK's transport ID strings
//!   (`trtype:PCIe traddr:0000:00:04.0`); [`probe`] and
//!   [`Controller::connect`] attach controllers bound to vfio-pci or
//!   uio_pci_generic (see `rspdk_setup config`), with [`ControllerOpts`].
//! - [`Controller`]: the init state machine (CC/CSTS with CAP.TO honoured),
//!   the admin queue (Identify, Get/Set Features, Get Log Page, Abort,
//!   Asynchronous Events, raw passthrough), reset and detach.
//! - [`IoQpair`]: per-thread I/O queue pairs with lock-free submission,
//!   batched doorbells and [`IoQpair::process_completions`]; read, write,
//!   compare, flush, write zeroes, deallocate, vectored I/O through
//!   [`SgeFns`] (SGLs when the controller has them, PRP lists otherwise),
//!   raw passthrough, per-command timeouts.
//! - [`spec`] holds the NVMe structures as typed views, [`status`] every
//!   status code's name.
//!
//! Layering: depends on `rspdk_env` only.

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
