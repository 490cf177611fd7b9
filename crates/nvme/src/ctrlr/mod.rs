//! Controllers (SPDK: `struct spdk_nvme_ctrlr`, `lib/nvme/nvme_ctrlr.c`):
//! attach, the initialisation sequence (section 3.5.1), the admin commands
//! (Identify, the namespace scan, features, log pages, abort, passthrough),
//! reset, disable and detach, written once over the [`Transport`] that
//! reaches the controller (PCIe or NVMe/TCP).

pub(crate) mod common;
mod discovery;
mod init;

use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use discovery::DiscoveryEntry;

use crate::error::{NvmeError, Result};
use crate::pcie::{probe_pcie, PcieCtrlr};
use crate::queue::{Completion, Payload};
use crate::spec::{
    cns, feature, log_page, AdminOpcode, Arbitration, Cap, ErrorLogEntry, FirmwareSlotLog,
    HealthLog, IdentifyController, IdentifyNamespace, Sqe,
};
use crate::status::Status;
use crate::tcp::host::TcpCtrlr;
use crate::transport::Transport;
use crate::trid::{TransportId, TransportType};
use common::{lock, Resetter};

/// Controller options (SPDK: `spdk_nvme_ctrlr_opts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerOpts {
    /// I/O queue pairs to ask the controller for.
    pub num_io_queues: u32,
    /// Default I/O queue size in entries (capped by CAP.MQES + 1).
    pub io_queue_size: u16,
    /// Default number of request objects per I/O queue pair (in flight plus
    /// waiting for a slot).
    pub io_queue_requests: u32,
    /// Admin queue size in entries.
    pub admin_queue_size: u16,
    /// Arbitration mechanism.
    pub arb_mechanism: Arbitration,
    /// Timeout for one admin command, in milliseconds.
    pub admin_timeout_ms: u64,
    /// Asynchronous Event Requests kept outstanding (capped by AERL + 1).
    pub num_aers: u8,
    /// Use SGLs for vectored I/O when the controller supports them.
    pub use_sgl: bool,
    /// Host NQN sent in the fabrics Connect (fabrics only; a `hostnqn:` in
    /// the transport ID wins).
    pub hostnqn: String,
    /// NVMe/TCP header digests (CRC32C on every PDU header).
    pub header_digest: bool,
    /// NVMe/TCP data digests (CRC32C on every PDU's data).
    pub data_digest: bool,
    /// Keep Alive Timeout asked for in Connect, in milliseconds (fabrics;
    /// 0 disables). Keep Alives are sent from
    /// [`Controller::process_admin_completions`] at half this period.
    pub keep_alive_timeout_ms: u32,
}

/// The host NQN used when none is given (SPDK derives one from a UUID).
pub const DEFAULT_HOSTNQN: &str =
    "nqn.2014-08.org.nvmexpress:uuid:7273706b-0000-4000-8000-686f73740001";

impl Default for ControllerOpts {
    fn default() -> Self {
        ControllerOpts {
            num_io_queues: 16,
            io_queue_size: 256,
            io_queue_requests: 512,
            admin_queue_size: 32,
            arb_mechanism: Arbitration::RoundRobin,
            admin_timeout_ms: 10_000,
            num_aers: 4,
            use_sgl: true,
            hostnqn: DEFAULT_HOSTNQN.to_string(),
            header_digest: false,
            data_digest: false,
            keep_alive_timeout_ms: 10_000,
        }
    }
}

/// What a namespace is.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// Namespace id.
    pub id: u32,
    /// Size in blocks.
    pub num_blocks: u64,
    /// Block (sector) size in bytes.
    pub block_size: u32,
    /// The Identify Namespace data.
    pub data: IdentifyNamespace,
}

impl Namespace {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.num_blocks * self.block_size as u64
    }
}

/// An Asynchronous Event (CQE DW0 of an AER, figure 146).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Event type (bits 2:0): 0 error, 1 SMART/health, 2 notice, 6 I/O command set, 7 vendor.
    pub event_type: u8,
    /// Event information (bits 15:8).
    pub info: u8,
    /// Log page to read to clear it (bits 23:16).
    pub log_page: u8,
}

/// Controller state shared with queue pairs.
pub(crate) mod state {
    /// Running.
    pub const OK: u8 = 0;
    /// Queues are being re-created after a disable (new generation).
    pub const RESETTING: u8 = 1;
    /// Failed: fatal status, gone, or a reset failed.
    pub const FAILED: u8 = 2;
    /// Detached.
    pub const DETACHED: u8 = 3;
    /// Being disabled or shut down: the device may still complete commands
    /// in flight, so queue pairs keep polling; new commands wait.
    pub const DISABLING: u8 = 4;
}

impl AsyncEvent {
    /// The event an Asynchronous Event Request's completion reports.
    pub(crate) fn from_cdw0(cdw0: u32) -> AsyncEvent {
        AsyncEvent {
            event_type: (cdw0 & 0x7) as u8,
            info: (cdw0 >> 8) as u8,
            log_page: (cdw0 >> 16) as u8,
        }
    }
}

impl Status {
    /// True for the status the driver gives commands it aborted itself
    /// (reset, failure, detach).
    pub fn is_aborted_by_driver(self) -> bool {
        self == Status::ABORTED_SQ_DELETION
    }
}

/// Probes like `spdk_nvme_probe`: every controller `trid` names (one
/// traddr, or every PCIe NVMe device when traddr is empty) is offered to
/// `probe_cb`, which may adjust the options and returns whether to attach;
/// each attached controller is passed to `attach_cb`. Returns how many
/// were attached; an attach failure is reported and probing goes on.
pub fn probe(
    trid: Option<&TransportId>,
    mut probe_cb: impl FnMut(&TransportId, &mut ControllerOpts) -> bool,
    mut attach_cb: impl FnMut(&TransportId, Controller, &ControllerOpts),
) -> Result<usize> {
    let trids = match trid {
        Some(t) if t.trtype == TransportType::Tcp && t.is_discovery() => {
            // Like SPDK: a discovery trid enumerates its log page.
            let d = Controller::connect(t, &ControllerOpts::default())?;
            let log = d.discovery_log();
            let _ = d.detach();
            log?.into_iter()
                .filter(|e| e.subtype == 2)
                .filter_map(|e| e.trid())
                .map(|mut x| {
                    x.hostnqn = t.hostnqn.clone();
                    x
                })
                .collect()
        }
        Some(t) => vec![t.clone()],
        None => probe_pcie(&Default::default()),
    };
    let mut n = 0;
    for t in trids {
        let mut opts = ControllerOpts::default();
        if !probe_cb(&t, &mut opts) {
            continue;
        }
        match Controller::connect(&t, &opts) {
            Ok(c) => {
                attach_cb(&t, c, &opts);
                n += 1;
            }
            Err(e) => tracing::error!(trid = %t, error = %e, "attach failed"),
        }
    }
    Ok(n)
}

/// An attached NVMe controller (SPDK: `struct spdk_nvme_ctrlr`), reached
/// over PCIe or NVMe/TCP behind one API. Cloning gives another handle to
/// the same controller; queue pairs keep it alive.
#[derive(Clone)]
pub struct Controller {
    t: Arc<dyn Transport>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("trid", &self.trid().to_string())
            .finish_non_exhaustive()
    }
}

fn identify_sqe(cns: u8, nsid: u32) -> Sqe {
    let mut s = Sqe::new(AdminOpcode::Identify.into(), nsid);
    s.dw[10] = cns as u32;
    s
}

impl Controller {
    /// Attaches the controller `trid` names (SPDK: `spdk_nvme_connect`):
    /// a PCIe function bound to vfio-pci/uio_pci_generic, or an NVMe/TCP
    /// subsystem (ICReq, Connect of the admin queue, CC.EN through
    /// Property Set, Identify; the discovery NQN gives a discovery
    /// controller, see [`Controller::discovery_log`]).
    pub fn connect(trid: &TransportId, opts: &ControllerOpts) -> Result<Controller> {
        if opts.admin_queue_size < 2 || opts.io_queue_size < 2 {
            return Err(NvmeError::InvalidArgument(
                "queue sizes must be at least 2".into(),
            ));
        }
        let t: Arc<dyn Transport> = match trid.trtype {
            TransportType::Pcie => Arc::new(PcieCtrlr::new(trid, opts)?),
            TransportType::Tcp => Arc::new(TcpCtrlr::new(trid, opts)?),
            t => {
                return Err(NvmeError::NotSupported(format!(
                    "transport {} (this driver does PCIe and TCP)",
                    t.as_str()
                )))
            }
        };
        let c = Controller { t };
        c.init()?;
        Ok(c)
    }

    /// A handle on the controller behind `t` (for a queue pair's timeout
    /// actions).
    pub(crate) fn from_transport(t: Arc<dyn Transport>) -> Controller {
        Controller { t }
    }

    /// Brings the controller up (attach and reset): connects the admin
    /// queue, enables the controller (CC/CSTS), reads Identify Controller,
    /// asks for the I/O queues, scans the namespaces and posts the
    /// Asynchronous Event Requests.
    fn init(&self) -> Result<()> {
        let t = &*self.t;
        let c = t.common();
        t.connect_admin()?;
        init::enable(t)?;
        let cdata = self.identify_controller()?;
        *lock(&c.cdata) = cdata.clone();
        if !t.is_discovery() {
            if t.is_fabrics() && cdata.ioccsz() < 4 {
                return Err(NvmeError::NotSupported(format!(
                    "IOCCSZ {} is below the 64-byte command: not an I/O controller",
                    cdata.ioccsz()
                )));
            }
            c.set_io_queues(self.set_number_of_queues()?);
            self.refresh_namespaces()?;
            t.submit_aers(c.opts.num_aers.min(cdata.aerl().saturating_add(1)))?;
        }
        c.state.store(state::OK, Ordering::Release);
        tracing::info!(
            trid = %c.trid,
            transport = t.driver(),
            serial = %cdata.serial(),
            model = %cdata.model(),
            cntlid = self.cntlid(),
            io_queues = c.max_io_queues.load(Ordering::Relaxed),
            "NVMe controller attached"
        );
        Ok(())
    }

    /// Set Features Number of Queues (both halves 0-based): returns the
    /// I/O queue pairs granted, at most what the options ask for. A fabrics
    /// controller that refuses the feature is taken to grant what was
    /// asked (its Connect of each queue is the real check).
    fn set_number_of_queues(&self) -> Result<u32> {
        let want_n = self.t.common().opts.num_io_queues;
        let want = want_n.clamp(1, 65535) - 1;
        let mut s = Sqe::new(AdminOpcode::SetFeatures.into(), 0);
        s.dw[10] = feature::NUMBER_OF_QUEUES as u32;
        s.dw[11] = (want << 16) | want;
        match self.admin_sync(s, Payload::None, "Set Features (Number of Queues)") {
            Ok(c) => Ok(((c.cdw0 & 0xffff) + 1).min((c.cdw0 >> 16) + 1).min(want_n)),
            Err(NvmeError::Command { status, .. }) if self.t.is_fabrics() => {
                tracing::debug!(%status, "Number of Queues refused; asking for none");
                Ok(want_n)
            }
            Err(e) => Err(e),
        }
    }

    /// An admin command that must succeed (an error status is an `Err`).
    fn admin_sync(&self, cmd: Sqe, payload: Payload, what: &str) -> Result<Completion> {
        let (c, _) = self.t.admin_raw_gen(cmd, payload)?;
        if c.status.is_error() {
            return Err(NvmeError::Command {
                command: what.to_string(),
                status: c.status,
            });
        }
        Ok(c)
    }

    /// Issues a raw admin command (passthrough) with an optional data buffer
    /// and waits for its completion. The returned completion may carry an
    /// error status; it is not turned into an `Err`.
    pub fn admin_raw(&self, cmd: Sqe, buf: Option<&mut rspdk_env::DmaBuf>) -> Result<Completion> {
        let payload = match buf {
            Some(b) => Payload::Contig {
                vaddr: b.as_mut_ptr() as usize,
                len: b.len(),
            },
            None => Payload::None,
        };
        self.t.admin_raw_gen(cmd, payload).map(|(c, _)| c)
    }

    /// Identify Controller.
    pub fn identify_controller(&self) -> Result<IdentifyController> {
        let b = self.t.admin_read(
            identify_sqe(cns::CONTROLLER, 0),
            4096,
            "Identify Controller",
        )?;
        Ok(IdentifyController::from_bytes(&b).expect("4096 bytes"))
    }

    /// Identify Namespace `nsid`.
    pub fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace> {
        let b = self.t.admin_read(
            identify_sqe(cns::NAMESPACE, nsid),
            4096,
            "Identify Namespace",
        )?;
        Ok(IdentifyNamespace::from_bytes(&b).expect("4096 bytes"))
    }

    /// The active namespace ids (Identify CNS 02h).
    pub fn active_namespace_ids(&self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut after = 0u32;
        loop {
            let b = self.t.admin_read(
                identify_sqe(cns::ACTIVE_NS_LIST, after),
                4096,
                "Identify Active Namespace ID list",
            )?;
            let ids: Vec<u32> = b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
                .take_while(|&id| id != 0)
                .collect();
            let full = ids.len() == 1024;
            after = ids.last().copied().unwrap_or(0);
            out.extend(ids);
            if !full {
                return Ok(out);
            }
        }
    }

    /// Re-reads the namespace list and each namespace's data.
    pub fn refresh_namespaces(&self) -> Result<()> {
        let list = self
            .active_namespace_ids()?
            .into_iter()
            .map(|id| {
                let data = self.identify_namespace(id)?;
                Ok(Namespace {
                    id,
                    num_blocks: data.nsze(),
                    block_size: data.block_size(),
                    data,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        *lock(&self.t.common().namespaces) = list;
        Ok(())
    }

    /// The Identify Controller data read at attach (SPDK:
    /// `spdk_nvme_ctrlr_get_data`).
    pub fn data(&self) -> IdentifyController {
        lock(&self.t.common().cdata).clone()
    }

    /// The controller's transport ID.
    pub fn trid(&self) -> &TransportId {
        &self.t.common().trid
    }

    /// CAP (over TCP, read with Property Get at connect).
    pub fn cap(&self) -> Cap {
        self.t.common().cap()
    }

    /// VS: (major, minor, tertiary).
    pub fn version(&self) -> (u16, u8, u8) {
        let v = self.t.common().vs();
        ((v >> 16) as u16, (v >> 8) as u8, v as u8)
    }

    /// How the device is reached: "vfio-pci", "uio_pci_generic" or "tcp".
    pub fn driver(&self) -> &'static str {
        self.t.driver()
    }

    /// True for a fabrics (TCP) controller.
    pub fn is_fabrics(&self) -> bool {
        self.t.is_fabrics()
    }

    /// True if data buffers must be DMA memory (PCIe: the device reads and
    /// writes them; NVMe/TCP copies from and to any memory).
    pub fn requires_dma(&self) -> bool {
        !self.t.is_fabrics()
    }

    /// True for a discovery controller (connected to the discovery NQN).
    pub fn is_discovery(&self) -> bool {
        self.t.is_discovery()
    }

    /// The fabrics controller id (CNTLID from Connect; Identify's for PCIe).
    pub fn cntlid(&self) -> u16 {
        self.t
            .connect_cntlid()
            .unwrap_or_else(|| self.data().cntlid())
    }

    /// Active namespaces.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.t.common().namespaces()
    }

    /// Namespace `nsid`, if active.
    pub fn namespace(&self, nsid: u32) -> Option<Namespace> {
        self.namespaces().into_iter().find(|n| n.id == nsid)
    }

    /// The largest transfer one command may move, in bytes (SPDK:
    /// `spdk_nvme_ns_get_max_io_xfer_size`).
    pub fn max_transfer_size(&self) -> usize {
        self.t.max_transfer_size()
    }

    /// I/O queue pairs the controller granted.
    pub fn max_io_qpairs(&self) -> u32 {
        self.t.common().max_io_queues.load(Ordering::Relaxed)
    }

    /// Get Log Page into `len` bytes.
    pub fn get_log_page(&self, lid: u8, nsid: u32, len: usize, offset: u64) -> Result<Vec<u8>> {
        if len == 0 || len % 4 != 0 {
            return Err(NvmeError::InvalidArgument(format!(
                "log page length {len} is not a positive multiple of 4"
            )));
        }
        let numd = (len / 4 - 1) as u32;
        let mut s = Sqe::new(AdminOpcode::GetLogPage.into(), nsid);
        s.dw[10] = ((numd & 0xffff) << 16) | lid as u32;
        s.dw[11] = numd >> 16;
        s.dw[12] = offset as u32;
        s.dw[13] = (offset >> 32) as u32;
        self.t
            .admin_read(s, len, &format!("Get Log Page {lid:#04x}"))
    }

    /// The discovery log page (LID 70h) of a discovery controller: every
    /// subsystem port this host may connect to.
    pub fn discovery_log(&self) -> Result<Vec<DiscoveryEntry>> {
        let h = self.get_log_page(0x70, 0, 1024, 0)?;
        let numrec = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")).min(1024) as usize;
        if numrec == 0 {
            return Ok(Vec::new());
        }
        let b = self.get_log_page(0x70, 0, 1024 * (numrec + 1), 0)?;
        Ok(b[1024..]
            .chunks_exact(1024)
            .filter_map(DiscoveryEntry::parse)
            .collect())
    }

    /// The SMART / Health Information log (controller-wide).
    pub fn health_log(&self) -> Result<HealthLog> {
        let b = self.get_log_page(log_page::HEALTH_INFORMATION, u32::MAX, 512, 0)?;
        Ok(HealthLog::from_bytes(&b).expect("512 bytes"))
    }

    /// The Error Information log's first `entries` entries (at most ELPE + 1).
    pub fn error_log(&self, entries: usize) -> Result<Vec<ErrorLogEntry>> {
        let max = self.data().elpe() as usize + 1;
        let n = entries.clamp(1, max);
        let b = self.get_log_page(log_page::ERROR, 0, n * 64, 0)?;
        Ok(b.chunks_exact(64)
            .map(|c| ErrorLogEntry::from_bytes(c).expect("64"))
            .collect())
    }

    /// The Firmware Slot Information log.
    pub fn firmware_log(&self) -> Result<FirmwareSlotLog> {
        let b = self.get_log_page(log_page::FIRMWARE_SLOT, 0, 512, 0)?;
        Ok(FirmwareSlotLog::from_bytes(&b).expect("512 bytes"))
    }

    /// Get Features: returns CQE DW0.
    pub fn get_feature(&self, fid: u8, cdw11: u32) -> Result<u32> {
        let mut s = Sqe::new(AdminOpcode::GetFeatures.into(), 0);
        s.dw[10] = fid as u32;
        s.dw[11] = cdw11;
        Ok(self
            .admin_sync(s, Payload::None, &format!("Get Features {fid:#04x}"))?
            .cdw0)
    }

    /// Set Features: returns CQE DW0.
    pub fn set_feature(&self, fid: u8, cdw11: u32) -> Result<u32> {
        let mut s = Sqe::new(AdminOpcode::SetFeatures.into(), 0);
        s.dw[10] = fid as u32;
        s.dw[11] = cdw11;
        Ok(self
            .admin_sync(s, Payload::None, &format!("Set Features {fid:#04x}"))?
            .cdw0)
    }

    /// Whether the volatile write cache is enabled.
    pub fn write_cache(&self) -> Result<bool> {
        Ok(self.get_feature(feature::VOLATILE_WRITE_CACHE, 0)? & 1 != 0)
    }

    /// Enables or disables the volatile write cache.
    pub fn set_write_cache(&self, on: bool) -> Result<()> {
        self.set_feature(feature::VOLATILE_WRITE_CACHE, on as u32)
            .map(|_| ())
    }

    /// Aborts command `cid` on queue `sqid`. Returns true if the controller
    /// says it aborted it (the command then completes with "Command Abort
    /// Requested" on its queue).
    pub fn abort(&self, sqid: u16, cid: u16) -> Result<bool> {
        let mut s = Sqe::new(AdminOpcode::Abort.into(), 0);
        s.dw[10] = ((cid as u32) << 16) | sqid as u32;
        Ok(self.admin_sync(s, Payload::None, "Abort")?.cdw0 & 1 == 0)
    }

    /// Polls the admin queue: reaps Asynchronous Event completions (which
    /// are re-armed) and checks the controller's health (PCIe: CSTS and hot
    /// removal, the device being released at once on removal; TCP: the
    /// connection), and over TCP sends a Keep Alive when half the Keep
    /// Alive Timeout has passed. Returns the events that arrived (SPDK:
    /// `spdk_nvme_ctrlr_process_admin_completions`).
    pub fn process_admin_completions(&self) -> Result<Vec<AsyncEvent>> {
        self.t.process_admin_completions()
    }

    /// True if the controller has failed (fatal status, removal, failed
    /// reset, or over TCP a lost connection).
    pub fn is_failed(&self) -> bool {
        self.t.common().state.load(Ordering::Acquire) == state::FAILED
    }

    /// Resets the controller (SPDK: `spdk_nvme_ctrlr_reset`): stops it
    /// (PCIe: clears CC.EN, which deletes every queue on the device; TCP:
    /// drops the connections, so a failed controller can be reset: that is
    /// the reconnect), then runs the initialisation again; each I/O queue
    /// pair re-creates its queues (PCIe) or reconnects (TCP) on its next
    /// poll. Commands that were in flight complete with "Command Aborted
    /// due to SQ Deletion"; commands submitted while resetting wait and are
    /// submitted after. On failure the controller is marked failed.
    pub fn reset(&self) -> Result<()> {
        let t = &*self.t;
        let c = t.common();
        match c.state.load(Ordering::Acquire) {
            state::DETACHED => return Err(NvmeError::Detached(c.trid.traddr.clone())),
            state::RESETTING => {
                return Err(NvmeError::InvalidArgument(
                    "a reset is already in progress".into(),
                ))
            }
            _ => {}
        }
        let _one = lock(&c.reset_lock);
        if c.state.load(Ordering::Acquire) == state::DETACHED {
            return Err(NvmeError::Detached(c.trid.traddr.clone()));
        }
        let _me = Resetter::new(c);
        t.disable_for_reset()?;
        if let Err(e) = self.init() {
            t.disconnect_admin();
            c.fail(&format!("re-initialisation after reset failed: {e}"));
            return Err(e);
        }
        Ok(())
    }

    /// Disconnects the controller and marks it failed with `reason`
    /// (SPDK: `spdk_nvme_ctrlr_disconnect`): over TCP the admin connection
    /// is closed, over PCIe CC.EN is cleared (the controller deletes its
    /// queues). Queue pairs complete what they hold with "Command Aborted
    /// due to SQ Deletion" and refuse new commands; [`Controller::reset`]
    /// connects it again.
    pub fn disable(&self, reason: &str) {
        let c = self.t.common();
        let _one = lock(&c.reset_lock);
        if c.state.load(Ordering::Acquire) == state::DETACHED {
            return;
        }
        c.fail(reason);
        self.t.stop();
    }

    /// Detaches the controller (SPDK: `spdk_nvme_detach`): a normal shutdown
    /// notification (waiting for CSTS.SHST as CAP.TO allows), then the
    /// device is closed (TCP: the connections) once every queue pair is
    /// gone. Queue pairs still held complete their commands with "Command
    /// Aborted due to SQ Deletion" and refuse new ones.
    pub fn detach(self) -> Result<()> {
        let t = &*self.t;
        let c = t.common();
        let _one = lock(&c.reset_lock);
        let _me = Resetter::new(c);
        let prev = c.state.swap(state::DISABLING, Ordering::AcqRel);
        let live = prev != state::DETACHED && prev != state::FAILED;
        if live {
            init::shutdown(t);
        }
        t.release(live);
        c.state.store(state::DETACHED, Ordering::Release);
        tracing::info!(trid = %c.trid, "controller detached");
        Ok(())
    }

    /// Allocates an I/O queue pair (SPDK: `spdk_nvme_ctrlr_alloc_io_qpair`)
    /// with `opts`, or the controller's defaults. Over TCP this is a new
    /// connection and a fabrics Connect of the next free queue id.
    pub fn alloc_io_qpair(
        &self,
        opts: Option<crate::qpair::QpairOpts>,
    ) -> Result<crate::qpair::IoQpair> {
        self.t.clone().alloc_io_qpair(opts)
    }
}
