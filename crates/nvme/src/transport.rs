//! The NVMe transport interface (SPDK: `spdk_nvme_transport_ops`,
//! `lib/nvme/nvme_transport.c`): what a controller needs from the way it
//! is reached. PCIe (registers in BAR0, queues in host memory) and
//! NVMe/TCP (registers as fabrics properties, each queue a connection)
//! implement it; RDMA would be a third implementation.
//!
//! Everything else is written once over it, in [`crate::ctrlr`]: the
//! CC/CSTS enable sequence and the shutdown notification (through
//! [`Transport::get_reg_4`] and friends), Identify, the namespace scan,
//! Set Features Number of Queues, Asynchronous Events, reset, abort and
//! command timeouts, and the admin passthrough.
//!
//! The trait is called per admin command, never per I/O: queue pairs are
//! an enum over the transports ([`crate::IoQpair`]), statically
//! dispatched on the data path.

use std::sync::Arc;

use crate::ctrlr::common::CtrlrCommon;
use crate::ctrlr::AsyncEvent;
use crate::error::Result;
use crate::qpair::{IoQpair, QpairOpts};
use crate::queue::{Completion, Payload};
use crate::spec::Sqe;

/// One controller's transport (SPDK: the `ctrlr_*` and `qpair_*`
/// operations of `spdk_nvme_transport_ops`).
pub(crate) trait Transport: Send + Sync {
    /// The transport-independent state.
    fn common(&self) -> &CtrlrCommon;

    /// How the controller is reached: "vfio-pci", "uio_pci_generic" or "tcp".
    fn driver(&self) -> &'static str;

    /// True for a fabrics transport (registers are properties, Connect
    /// assigns the controller id).
    fn is_fabrics(&self) -> bool;

    /// True for a discovery controller (fabrics, connected to the
    /// discovery NQN): it has no I/O queues and no namespaces.
    fn is_discovery(&self) -> bool;

    /// The controller id assigned by the fabrics Connect (None for PCIe,
    /// whose id is Identify's).
    fn connect_cntlid(&self) -> Option<u16>;

    /// Connects the admin queue (SPDK: `ctrlr_connect_qpair` of the admin
    /// queue): TCP opens its connection and sends Connect; PCIe has
    /// nothing to connect.
    fn connect_admin(&self) -> Result<()>;

    /// Closes the admin queue's connection (TCP); nothing for PCIe.
    fn disconnect_admin(&self);

    /// Hands the admin queue to a disabled controller (SPDK:
    /// `ctrlr_enable`): PCIe programs AQA, ASQ and ACQ; nothing for TCP.
    fn enable_admin_queue(&self) -> Result<()>;

    /// Reads a 4-byte controller register (SPDK: `ctrlr_get_reg_4`): MMIO
    /// for PCIe, Property Get for fabrics.
    fn get_reg_4(&self, offset: usize) -> Result<u32>;

    /// Reads an 8-byte controller register (SPDK: `ctrlr_get_reg_8`).
    fn get_reg_8(&self, offset: usize) -> Result<u64>;

    /// Writes a 4-byte controller register (SPDK: `ctrlr_set_reg_4`):
    /// MMIO for PCIe, Property Set for fabrics.
    fn set_reg_4(&self, offset: usize, value: u32) -> Result<()>;

    /// Submits an admin command and waits for its completion, returning it
    /// (an error status is not an `Err`) with the controller generation it
    /// ran in.
    fn admin_raw_gen(&self, cmd: Sqe, payload: Payload) -> Result<(Completion, u32)>;

    /// An admin command reading `len` bytes, which must succeed (`what`
    /// names it in errors). PCIe reads into DMA memory.
    fn admin_read(&self, cmd: Sqe, len: usize, what: &str) -> Result<Vec<u8>>;

    /// Posts `n` Asynchronous Event Requests, re-armed as they complete.
    fn submit_aers(&self, n: u8) -> Result<()>;

    /// Polls the admin queue (SPDK: `spdk_nvme_ctrlr_process_admin_completions`):
    /// the Asynchronous Events that arrived; the transport's health checks
    /// (PCIe: CSTS and hot removal; TCP: the connection) and Keep Alive.
    fn process_admin_completions(&self) -> Result<Vec<AsyncEvent>>;

    /// The largest transfer one command may move, in bytes (SPDK:
    /// `ctrlr_get_max_xfer_size`): MDTS within what the transport can
    /// describe.
    fn max_transfer_size(&self) -> usize;

    /// Stops the controller for a reset (after this, it touches no queue
    /// memory and the admin queue is empty): PCIe clears CC.EN and waits
    /// for CSTS.RDY = 0; TCP drops its connections. Moves the state to
    /// RESETTING and bumps the generation.
    fn disable_for_reset(&self) -> Result<()>;

    /// Stops the controller for [`crate::Controller::disable`], which has
    /// marked it failed: PCIe clears CC.EN; TCP drops the admin connection
    /// (and bumps the generation, so that I/O queue pairs reconnect after
    /// the next reset).
    fn stop(&self);

    /// Lets go of the controller at detach, after the shutdown
    /// notification when `was_live`: PCIe clears CC.EN and waits for
    /// CSTS.RDY = 0; TCP closes the admin connection.
    fn release(&self, was_live: bool);

    /// Allocates an I/O queue pair (SPDK: `ctrlr_create_io_qpair`).
    fn alloc_io_qpair(self: Arc<Self>, opts: Option<QpairOpts>) -> Result<IoQpair>;
}
