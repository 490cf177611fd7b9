//! Controllers: probe/attach, the initialisation state machine (section
//! 3.5.1), the admin queue and its commands, reset and detach.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rspdk_env::mmio::Bar;
use rspdk_env::pcidev::PciHandle;

use crate::error::{NvmeError, Result};
use crate::queue::{Completion, DmaRegion, Payload, Queue, Request};
use crate::spec::{
    cc, cns, csts, feature, log_page, reg, AdminOpcode, Arbitration, Cap, ErrorLogEntry,
    FirmwareSlotLog, HealthLog, IdentifyController, IdentifyNamespace, Sqe,
};
use crate::status::Status;
use crate::tcp::host::{TcpCtrlr, TcpIoQpair};
use crate::trid::{TransportId, TransportType};

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

/// The initialisation steps (section 3.5.1), each with a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitState {
    /// CC.EN is 1 and CSTS.RDY is 0: wait for RDY before disabling.
    WaitReadyBeforeDisable,
    /// Clear CC.EN.
    Disable,
    /// Wait for CSTS.RDY = 0.
    WaitDisabled,
    /// Program the admin queue and set CC.EN.
    Enable,
    /// Wait for CSTS.RDY = 1.
    WaitEnabled,
    /// Done.
    Ready,
}

pub(crate) struct Admin {
    pub q: Queue,
    next_tag: u64,
    done: HashMap<u64, Completion>,
    events: Vec<AsyncEvent>,
}

const AER_TAG: u64 = 1 << 63;

pub(crate) struct Inner {
    pub trid: TransportId,
    pub opts: ControllerOpts,
    pci: PciHandle,
    pub bar: Arc<Bar>,
    pub cap: Cap,
    pub vs: u32,
    pub page: usize,
    pub state: AtomicU8,
    pub generation: AtomicU32,
    pub admin: Mutex<Admin>,
    cdata: Mutex<IdentifyController>,
    namespaces: Mutex<Vec<Namespace>>,
    /// Free I/O queue ids.
    qids: Mutex<Vec<u16>>,
    /// I/O queues the controller granted.
    pub max_io_queues: AtomicU32,
    qids_init: std::sync::atomic::AtomicBool,
    /// One reset or detach at a time.
    reset_lock: Mutex<()>,
    /// The device was given up (hot removal).
    released: std::sync::atomic::AtomicBool,
    /// The thread running a reset or detach (it alone uses the admin queue
    /// meanwhile).
    resetter: Mutex<Option<std::thread::ThreadId>>,
    failure: Mutex<String>,
}

/// A PCIe controller (the transport behind [`Controller`] for `trtype:PCIe`).
#[derive(Clone)]
pub(crate) struct PcieController {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for PcieController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("trid", &self.inner.trid.to_string())
            .finish_non_exhaustive()
    }
}

/// Every NVMe controller (class 0x010802) bound to vfio-pci or
/// uio_pci_generic that `filter` allows, as transport IDs.
pub fn probe_pcie(filter: &rspdk_env::pci::PciFilter) -> Vec<TransportId> {
    rspdk_env::pci::devices()
        .into_iter()
        .filter(|d| d.class == rspdk_env::pci::CLASS_NVME && filter.allows(&d.bdf))
        .filter(|d| {
            matches!(
                d.driver.as_deref(),
                Some("vfio-pci") | Some("uio_pci_generic")
            )
        })
        .filter_map(|d| TransportId::pcie(&d.bdf).ok())
        .collect()
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

fn sync_err(traddr: &str, what: &str, ms: u64) -> NvmeError {
    NvmeError::Timeout {
        traddr: traddr.to_string(),
        what: what.to_string(),
        ms,
    }
}

impl PcieController {
    /// Attaches the PCIe controller `trid` names.
    pub fn connect(trid: &TransportId, opts: &ControllerOpts) -> Result<PcieController> {
        if opts.admin_queue_size < 2 || opts.io_queue_size < 2 {
            return Err(NvmeError::InvalidArgument(
                "queue sizes must be at least 2".into(),
            ));
        }
        let pci = PciHandle::open(&trid.traddr)
            .map_err(|e| NvmeError::env(format!("opening {}", trid.traddr), e))?;
        pci.enable_bus_master()
            .map_err(|e| NvmeError::env("enabling bus mastering", e))?;
        let bar = Arc::new(
            pci.map_bar(0)
                .map_err(|e| NvmeError::env(format!("mapping BAR0 of {}", trid.traddr), e))?,
        );
        let csts = bar.read32(reg::CSTS);
        if csts == csts::ALL_ONES {
            return Err(NvmeError::ControllerFailed {
                traddr: trid.traddr.clone(),
                reason: "registers read all ones: the device is gone".into(),
            });
        }
        let cap = Cap(bar.read64(reg::CAP));
        let vs = bar.read32(reg::VS);
        if cap.mpsmin() > 0 {
            return Err(NvmeError::NotSupported(format!(
                "controller's minimum page size is {} bytes; only 4 KiB is supported",
                4096u64 << cap.mpsmin()
            )));
        }
        let admin_entries = opts
            .admin_queue_size
            .min(4096)
            .min(cap.mqes().saturating_add(1));
        let admin_q = Queue::new(0, admin_entries, 64, bar.clone(), cap.dstrd(), 4096, false)?;
        let inner = Arc::new(Inner {
            trid: trid.clone(),
            opts: opts.clone(),
            pci,
            bar,
            cap,
            vs,
            page: 4096,
            state: AtomicU8::new(state::OK),
            generation: AtomicU32::new(0),
            admin: Mutex::new(Admin {
                q: admin_q,
                next_tag: 1,
                done: HashMap::new(),
                events: Vec::new(),
            }),
            cdata: Mutex::new(IdentifyController::default()),
            namespaces: Mutex::new(Vec::new()),
            qids: Mutex::new(Vec::new()),
            max_io_queues: AtomicU32::new(0),
            qids_init: std::sync::atomic::AtomicBool::new(false),
            reset_lock: Mutex::new(()),
            released: std::sync::atomic::AtomicBool::new(false),
            resetter: Mutex::new(None),
            failure: Mutex::new(String::new()),
        });
        let c = PcieController { inner };
        c.initialize()?;
        Ok(c)
    }

    /// Runs the init state machine, then identifies and configures.
    fn initialize(&self) -> Result<()> {
        self.enable_with_state_machine()?;
        let cdata = self.identify_controller()?;
        *lock(&self.inner.cdata) = cdata.clone();
        // Number of queues (0-based in both halves).
        let want = self.inner.opts.num_io_queues.clamp(1, 65535) - 1;
        let c = self.admin_sync(
            {
                let mut s = Sqe::new(AdminOpcode::SetFeatures.into(), 0);
                s.dw[10] = feature::NUMBER_OF_QUEUES as u32;
                s.dw[11] = (want << 16) | want;
                s
            },
            Payload::None,
            "Set Features (Number of Queues)",
        )?;
        let nsq = (c.cdw0 & 0xffff) + 1;
        let ncq = (c.cdw0 >> 16) + 1;
        let granted = nsq.min(ncq).min(self.inner.opts.num_io_queues);
        self.inner.max_io_queues.store(granted, Ordering::Relaxed);
        if !self.inner.qids_init.swap(true, Ordering::AcqRel) {
            // First init only: after a reset, queue pairs keep their ids.
            *lock(&self.inner.qids) = (1..=granted as u16).rev().collect();
        }
        self.refresh_namespaces()?;
        self.submit_aers(&cdata)?;
        tracing::info!(
            trid = %self.inner.trid,
            serial = %cdata.serial(),
            model = %cdata.model(),
            io_queues = granted,
            "NVMe controller attached"
        );
        Ok(())
    }

    fn submit_aers(&self, cdata: &IdentifyController) -> Result<()> {
        let n = self.inner.opts.num_aers.min(cdata.aerl().saturating_add(1));
        let mut a = lock(&self.inner.admin);
        for i in 0..n {
            a.q.submit(Request {
                cmd: Sqe::new(AdminOpcode::AsyncEventRequest.into(), 0),
                payload: Payload::None,
                ctx: AER_TAG | i as u64,
            })?;
        }
        a.q.ring();
        Ok(())
    }

    /// The init state machine: disable (waiting for RDY as CAP.TO allows),
    /// program the admin queue, enable, wait for RDY.
    fn enable_with_state_machine(&self) -> Result<()> {
        let i = &self.inner;
        let bar = &i.bar;
        let to = Duration::from_millis(i.cap.timeout_ms().max(500));
        let ccv = bar.read32(reg::CC);
        let stv = bar.read32(reg::CSTS);
        let mut st = if ccv & cc::EN != 0 && stv & csts::RDY == 0 {
            InitState::WaitReadyBeforeDisable
        } else {
            InitState::Disable
        };
        let mut deadline = Instant::now() + to;
        loop {
            let csts_v = bar.read32(reg::CSTS);
            if csts_v == csts::ALL_ONES {
                return Err(self.fail("registers read all ones during init: the device is gone"));
            }
            match st {
                InitState::WaitReadyBeforeDisable => {
                    if csts_v & csts::RDY != 0 {
                        st = InitState::Disable;
                    }
                }
                InitState::Disable => {
                    let v = bar.read32(reg::CC);
                    bar.write32(reg::CC, v & !cc::EN);
                    st = InitState::WaitDisabled;
                    deadline = Instant::now() + to;
                }
                InitState::WaitDisabled => {
                    if csts_v & csts::RDY == 0 {
                        st = InitState::Enable;
                    }
                }
                InitState::Enable => {
                    let a = lock(&i.admin);
                    let entries = a.q.entries() as u32 - 1;
                    bar.write32(reg::AQA, (entries << 16) | entries);
                    bar.write64(reg::ASQ, a.q.sq_iova());
                    bar.write64(reg::ACQ, a.q.cq_iova());
                    drop(a);
                    let ams = i.opts.arb_mechanism;
                    let cap_ams = ((i.cap.0 >> 17) & 0b11) as u32;
                    let ams_ok = match ams {
                        Arbitration::RoundRobin => true,
                        Arbitration::WeightedRoundRobin => cap_ams & 1 != 0,
                        Arbitration::VendorSpecific => cap_ams & 2 != 0,
                    };
                    if !ams_ok {
                        return Err(NvmeError::NotSupported(format!(
                            "arbitration mechanism {ams:?} (CAP.AMS = {cap_ams:#b})"
                        )));
                    }
                    let v = cc::EN
                        | (6 << cc::IOSQES_SHIFT)
                        | (4 << cc::IOCQES_SHIFT)
                        | (ams.cc_value() << cc::AMS_SHIFT);
                    bar.write32(reg::CC, v);
                    st = InitState::WaitEnabled;
                    deadline = Instant::now() + to;
                }
                InitState::WaitEnabled => {
                    if csts_v & csts::CFS != 0 {
                        return Err(self.fail("controller fatal status (CSTS.CFS) while enabling"));
                    }
                    if csts_v & csts::RDY != 0 {
                        st = InitState::Ready;
                    }
                }
                InitState::Ready => return Ok(()),
            }
            if st != InitState::Ready && Instant::now() > deadline {
                let e = sync_err(
                    &i.trid.traddr,
                    &format!(
                        "{st:?} (CSTS {csts_v:#x}, CAP.TO {} ms)",
                        i.cap.timeout_ms()
                    ),
                    to.as_millis() as u64,
                );
                self.fail(&e.to_string());
                return Err(e);
            }
            if matches!(
                st,
                InitState::WaitDisabled
                    | InitState::WaitEnabled
                    | InitState::WaitReadyBeforeDisable
            ) {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    fn fail(&self, reason: &str) -> NvmeError {
        self.inner.fail(reason)
    }

    /// Submits an admin command and waits for it (polling the admin queue).
    pub(crate) fn admin_sync(&self, cmd: Sqe, payload: Payload, what: &str) -> Result<Completion> {
        self.inner.admin_sync(cmd, payload, what)
    }

    pub(crate) fn admin_read<T>(
        &self,
        cmd: Sqe,
        len: usize,
        what: &str,
        parse: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let buf = DmaRegion::new(len)?;
        let r = self.admin_sync(
            cmd,
            Payload::Contig {
                vaddr: buf.as_ptr() as usize,
                len,
            },
            what,
        );
        match r {
            Ok(_) => {
                let mut out = vec![0u8; len];
                buf.read_into(&mut out);
                Ok(parse(&out))
            }
            Err(e @ NvmeError::Timeout { .. }) => {
                // The device may still write into the buffer: never free it.
                std::mem::forget(buf);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn identify(cns: u8, nsid: u32) -> Sqe {
        let mut s = Sqe::new(AdminOpcode::Identify.into(), nsid);
        s.dw[10] = cns as u32;
        s
    }

    /// Identify Controller.
    pub fn identify_controller(&self) -> Result<IdentifyController> {
        self.admin_read(
            Self::identify(cns::CONTROLLER, 0),
            4096,
            "Identify Controller",
            |b| IdentifyController::from_bytes(b).expect("4096 bytes"),
        )
    }

    /// Identify Namespace `nsid`.
    pub fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace> {
        self.admin_read(
            Self::identify(cns::NAMESPACE, nsid),
            4096,
            "Identify Namespace",
            |b| IdentifyNamespace::from_bytes(b).expect("4096 bytes"),
        )
    }

    /// The active namespace ids (Identify CNS 02h).
    pub fn active_namespace_ids(&self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut after = 0u32;
        loop {
            let ids = self.admin_read(
                Self::identify(cns::ACTIVE_NS_LIST, after),
                4096,
                "Identify Active Namespace ID list",
                |b| {
                    b.chunks_exact(4)
                        .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
                        .take_while(|&id| id != 0)
                        .collect::<Vec<u32>>()
                },
            )?;
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
        let list = read_namespaces(self.active_namespace_ids()?, |id| {
            self.identify_namespace(id)
        })?;
        *lock(&self.inner.namespaces) = list;
        Ok(())
    }

    /// The Identify Controller data read at attach (SPDK:
    /// `spdk_nvme_ctrlr_get_data`).
    pub fn data(&self) -> IdentifyController {
        lock(&self.inner.cdata).clone()
    }

    /// The controller's transport ID.
    pub fn trid(&self) -> &TransportId {
        &self.inner.trid
    }

    /// CAP.
    pub fn cap(&self) -> Cap {
        self.inner.cap
    }

    /// How the device is reached: "vfio-pci" or "uio_pci_generic".
    pub fn driver(&self) -> &'static str {
        self.inner.pci.driver()
    }

    /// Active namespaces.
    pub fn namespaces(&self) -> Vec<Namespace> {
        lock(&self.inner.namespaces).clone()
    }

    /// The largest transfer one command may move, in bytes (SPDK:
    /// `spdk_nvme_ns_get_max_io_xfer_size`).
    pub fn max_transfer_size(&self) -> usize {
        self.inner.max_transfer()
    }

    /// I/O queue pairs the controller granted.
    pub fn max_io_qpairs(&self) -> u32 {
        self.inner.max_io_queues.load(Ordering::Relaxed)
    }

    /// Aborts command `cid` on queue `sqid`.
    pub fn abort(&self, sqid: u16, cid: u16) -> Result<bool> {
        let mut s = Sqe::new(AdminOpcode::Abort.into(), 0);
        s.dw[10] = ((cid as u32) << 16) | sqid as u32;
        Ok(self.admin_sync(s, Payload::None, "Abort")?.cdw0 & 1 == 0)
    }

    /// Polls the admin queue: reaps Asynchronous Event completions (which
    /// are re-armed) and checks the controller's health, including hot
    /// removal (the device is released at once; everything fails with an
    /// error from then on). Returns the events
    /// that arrived (SPDK: `spdk_nvme_ctrlr_process_admin_completions`).
    pub fn process_admin_completions(&self) -> Result<Vec<AsyncEvent>> {
        self.inner.check_health()?;
        // A synchronous admin command (on another thread) holds the queue
        // and reaps its completions itself: a reactor's poll does not wait.
        let mut a = match self.inner.admin.try_lock() {
            Ok(a) => a,
            Err(std::sync::TryLockError::WouldBlock) => return Ok(Vec::new()),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        self.inner.poll_admin(&mut a);
        Ok(std::mem::take(&mut a.events))
    }

    /// True if the controller has failed (fatal status, removal, failed reset).
    pub fn is_failed(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) == state::FAILED
    }

    /// Resets the controller (SPDK: `spdk_nvme_ctrlr_reset`): disables it,
    /// which deletes every queue on the device, re-initialises the admin
    /// queue and the configuration, and lets each I/O queue pair re-create
    /// its queues on its next poll. Commands that were in flight complete
    /// with "Command Aborted due to SQ Deletion"; commands submitted while
    /// resetting wait and are submitted after. On failure the controller is
    /// marked failed.
    pub fn reset(&self) -> Result<()> {
        let i = &self.inner;
        match i.state.load(Ordering::Acquire) {
            state::DETACHED => return Err(NvmeError::Detached(i.trid.traddr.clone())),
            state::RESETTING => {
                return Err(NvmeError::InvalidArgument(
                    "a reset is already in progress".into(),
                ))
            }
            _ => {}
        }
        let _one = lock(&i.reset_lock);
        if i.state.load(Ordering::Acquire) == state::DETACHED {
            return Err(NvmeError::Detached(i.trid.traddr.clone()));
        }
        let _me = Resetter::new(i);
        i.state.store(state::DISABLING, Ordering::Release);
        if let Err(e) = i.pci.enable_bus_master() {
            return Err(self.fail(&format!("re-enabling bus mastering: {e}")));
        }
        {
            let mut a = lock(&i.admin);
            // Disable first: once CSTS.RDY is 0 the controller has deleted
            // every queue and touches none of their memory, so queue pairs
            // may hand back what was in flight.
            let v = i.bar.read32(reg::CC);
            i.bar.write32(reg::CC, v & !cc::EN);
            let to = Duration::from_millis(i.cap.timeout_ms().max(500));
            let end = Instant::now() + to;
            while i.bar.read32(reg::CSTS) & csts::RDY != 0 {
                if Instant::now() > end {
                    drop(a);
                    return Err(self.fail("CSTS.RDY stayed 1 after clearing CC.EN during reset"));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            i.state.store(state::RESETTING, Ordering::Release);
            i.generation.fetch_add(1, Ordering::AcqRel);
            let mut lost = 0;
            a.q.reset_rings(&mut |_| lost += 1);
            a.q.drain_pending(&mut |_| lost += 1);
            a.done.clear();
            tracing::info!(trid = %i.trid, dropped_admin = lost, "controller reset: disabled");
        }
        if let Err(e) = self.initialize() {
            self.fail(&format!("re-initialisation after reset failed: {e}"));
            return Err(e);
        }
        i.state.store(state::OK, Ordering::Release);
        Ok(())
    }

    /// Detaches the controller (SPDK: `spdk_nvme_detach`): a normal shutdown
    /// notification (waiting for CSTS.SHST as CAP.TO allows), then the
    /// device is closed once every queue pair is gone. Queue pairs still held
    /// complete their commands with "Command Aborted due to SQ Deletion"
    /// and refuse new ones.
    pub fn detach(self) -> Result<()> {
        let i = &self.inner;
        let _one = lock(&i.reset_lock);
        let _me = Resetter::new(i);
        let prev = i.state.swap(state::DISABLING, Ordering::AcqRel);
        if prev == state::DETACHED || prev == state::FAILED {
            i.state.store(state::DETACHED, Ordering::Release);
            return Ok(());
        }
        let _a = lock(&i.admin);
        let v = i.bar.read32(reg::CC);
        i.bar.write32(reg::CC, (v & !cc::SHN_MASK) | cc::SHN_NORMAL);
        let to = Duration::from_millis(i.cap.timeout_ms().max(2000));
        let end = Instant::now() + to;
        loop {
            let s = i.bar.read32(reg::CSTS);
            if s == csts::ALL_ONES || s & csts::SHST_MASK == csts::SHST_COMPLETE {
                break;
            }
            if Instant::now() > end {
                tracing::warn!(trid = %i.trid, "shutdown did not complete in {} ms", to.as_millis());
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // Then disable: with RDY at 0 the device uses no queue memory, and
        // queue pairs can give back what was in flight.
        let v = i.bar.read32(reg::CC);
        i.bar.write32(reg::CC, v & !cc::EN);
        let end = Instant::now() + Duration::from_millis(i.cap.timeout_ms().max(500));
        while i.bar.read32(reg::CSTS) & csts::RDY != 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_micros(100));
        }
        i.state.store(state::DETACHED, Ordering::Release);
        tracing::info!(trid = %i.trid, "controller detached");
        Ok(())
    }

    /// Allocates a PCIe I/O queue pair.
    pub fn alloc_io_qpair(
        &self,
        opts: Option<crate::qpair::QpairOpts>,
    ) -> Result<crate::qpair::IoQpair> {
        crate::qpair::PcieQpair::new(self.inner.clone(), opts).map(crate::qpair::IoQpair::pcie)
    }
}

/// Marks the current thread as the one resetting, for its lifetime.
struct Resetter<'a>(&'a Inner);

impl<'a> Resetter<'a> {
    fn new(i: &'a Inner) -> Self {
        *lock(&i.resetter) = Some(std::thread::current().id());
        Resetter(i)
    }
}

impl Drop for Resetter<'_> {
    fn drop(&mut self) {
        *lock(&self.0.resetter) = None;
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks a controller of either transport failed (unless it was detached)
/// with `reason`, and returns the error to report.
pub(crate) fn fail_controller(
    trid: &TransportId,
    st: &AtomicU8,
    failure: &Mutex<String>,
    reason: &str,
) -> NvmeError {
    if st.load(Ordering::Acquire) != state::DETACHED {
        st.store(state::FAILED, Ordering::Release);
    }
    *lock(failure) = reason.to_string();
    tracing::error!(trid = %trid, reason, "controller failed");
    NvmeError::ControllerFailed {
        traddr: trid.traddr.clone(),
        reason: reason.to_string(),
    }
}

/// The error for a controller's current non-OK state.
pub(crate) fn state_error(trid: &TransportId, st: &AtomicU8, failure: &Mutex<String>) -> NvmeError {
    match st.load(Ordering::Acquire) {
        state::DETACHED => NvmeError::Detached(trid.traddr.clone()),
        state::RESETTING => NvmeError::ControllerFailed {
            traddr: trid.traddr.clone(),
            reason: "resetting (reconnecting); retry after the reset".into(),
        },
        _ => NvmeError::ControllerFailed {
            traddr: trid.traddr.clone(),
            reason: lock(failure).clone(),
        },
    }
}

/// Reads every active namespace's Identify data through `identify`.
fn read_namespaces(
    ids: Vec<u32>,
    identify: impl Fn(u32) -> Result<IdentifyNamespace>,
) -> Result<Vec<Namespace>> {
    ids.into_iter()
        .map(|id| {
            let data = identify(id)?;
            Ok(Namespace {
                id,
                num_blocks: data.nsze(),
                block_size: data.block_size(),
                data,
            })
        })
        .collect()
}

impl Inner {
    pub(crate) fn fail(&self, reason: &str) -> NvmeError {
        fail_controller(&self.trid, &self.state, &self.failure, reason)
    }

    /// The error for the current non-OK state.
    pub(crate) fn state_error(&self) -> NvmeError {
        state_error(&self.trid, &self.state, &self.failure)
    }

    /// Reads CSTS: a removed device or fatal status fails the controller.
    pub(crate) fn check_health(&self) -> Result<()> {
        if self.pci.removal_requested() && !self.released.swap(true, Ordering::AcqRel) {
            // Let go at once: revoke the BAR (all ones from now on, for
            // every queue pair still polling) and close the device so that
            // the kernel can finish removing it.
            let e = self.fail("the device is being removed (hot removal)");
            if let Err(r) = self.bar.revoke() {
                tracing::error!(error = %r, "revoking BAR0");
            }
            if let Err(r) = self.pci.release() {
                tracing::error!(error = %r, "releasing the device");
            }
            return Err(e);
        }
        match self.state.load(Ordering::Acquire) {
            state::FAILED | state::DETACHED => return Err(self.state_error()),
            _ => {}
        }
        match self.dead_reason() {
            Some(why) => Err(self.fail(why)),
            None => Ok(()),
        }
    }

    /// Reads CSTS and says why the controller is unusable, if it is: gone
    /// (all ones), fatal status, or no longer ready although we did not
    /// disable it (reset or disabled behind our back).
    pub(crate) fn dead_reason(&self) -> Option<&'static str> {
        let s = self.bar.read32(reg::CSTS);
        if s == csts::ALL_ONES {
            return Some("the device was removed (registers read all ones)");
        }
        if self.state.load(Ordering::Acquire) != state::OK {
            return None;
        }
        if s & csts::CFS != 0 {
            return Some("controller fatal status (CSTS.CFS)");
        }
        if s & csts::RDY == 0 {
            return Some("the controller is no longer ready (CSTS.RDY = 0): it was reset or disabled behind the driver's back; reset it");
        }
        None
    }

    fn poll_admin(&self, a: &mut Admin) {
        let mut aers = Vec::new();
        let Admin {
            q, done, events, ..
        } = a;
        q.poll(0, &mut |req, c| {
            if req.ctx & AER_TAG != 0 {
                if c.status.is_error() {
                    // Aborted by a reset or refused: not re-armed.
                    return;
                }
                events.push(AsyncEvent {
                    event_type: (c.cdw0 & 0x7) as u8,
                    info: (c.cdw0 >> 8) as u8,
                    log_page: (c.cdw0 >> 16) as u8,
                });
                aers.push(req);
            } else {
                done.insert(req.ctx, c);
            }
        });
        for r in aers {
            let _ = a.q.submit(r);
        }
        a.q.ring();
    }

    pub(crate) fn admin_raw(&self, cmd: Sqe, payload: Payload) -> Result<Completion> {
        self.admin_raw_gen(cmd, payload).map(|(c, _)| c)
    }

    /// Takes the admin queue once the controller is usable: while a reset
    /// or detach is under way only the thread doing it may submit (the
    /// controller may be disabled and the admin queue being rebuilt).
    fn admin_lock(&self) -> Result<MutexGuard<'_, Admin>> {
        let end = Instant::now() + Duration::from_millis(self.opts.admin_timeout_ms);
        loop {
            match self.state.load(Ordering::Acquire) {
                state::FAILED | state::DETACHED => return Err(self.state_error()),
                state::OK => {
                    let a = lock(&self.admin);
                    // A reset may have started while we waited for the lock.
                    if self.state.load(Ordering::Acquire) == state::OK {
                        return Ok(a);
                    }
                }
                _ if *lock(&self.resetter) == Some(std::thread::current().id()) => {
                    return Ok(lock(&self.admin));
                }
                _ => {}
            }
            if Instant::now() > end {
                return Err(sync_err(
                    &self.trid.traddr,
                    "the end of a controller reset",
                    self.opts.admin_timeout_ms,
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// An admin command, and the controller generation it ran in (stable
    /// while the admin queue is held: a reset moves it under that lock).
    pub(crate) fn admin_raw_gen(&self, cmd: Sqe, payload: Payload) -> Result<(Completion, u32)> {
        let mut a = self.admin_lock()?;
        let gen = self.generation.load(Ordering::Acquire);
        let tag = a.next_tag;
        a.next_tag += 1;
        a.q.submit(Request {
            cmd,
            payload,
            ctx: tag,
        })?;
        a.q.ring();
        let end = Instant::now() + Duration::from_millis(self.opts.admin_timeout_ms);
        let mut spins = 0u32;
        loop {
            self.poll_admin(&mut a);
            if let Some(c) = a.done.remove(&tag) {
                return Ok((c, gen));
            }
            spins += 1;
            if spins % 256 == 0 {
                if let Some(why) = self.dead_reason() {
                    a.q.reset_rings(&mut |_| {});
                    drop(a);
                    return Err(self.fail(why));
                }
                if Instant::now() > end {
                    return Err(sync_err(
                        &self.trid.traddr,
                        &format!("admin command {:?}", AdminOpcode::from(cmd.opcode())),
                        self.opts.admin_timeout_ms,
                    ));
                }
                std::thread::yield_now();
            }
        }
    }

    pub(crate) fn admin_sync(&self, cmd: Sqe, payload: Payload, what: &str) -> Result<Completion> {
        self.admin_sync_gen(cmd, payload, what).map(|(c, _)| c)
    }

    pub(crate) fn admin_sync_gen(
        &self,
        cmd: Sqe,
        payload: Payload,
        what: &str,
    ) -> Result<(Completion, u32)> {
        let (c, gen) = self.admin_raw_gen(cmd, payload)?;
        if c.status.is_error() {
            return Err(NvmeError::Command {
                command: what.to_string(),
                status: c.status,
            });
        }
        Ok((c, gen))
    }

    pub(crate) fn alloc_qid(&self) -> Result<u16> {
        lock(&self.qids).pop().ok_or_else(|| {
            NvmeError::NotSupported(format!(
                "no I/O queue left: the controller granted {}",
                self.max_io_queues.load(Ordering::Relaxed)
            ))
        })
    }

    pub(crate) fn free_qid(&self, qid: u16) {
        lock(&self.qids).push(qid);
    }

    /// The largest transfer per command: MDTS (in 4 KiB pages, 0 = none),
    /// and what one 4 KiB PRP list page can describe (511 pages + the first).
    pub(crate) fn max_transfer(&self) -> usize {
        let mdts = lock(&self.cdata).mdts();
        let by_list = 512 * 4096;
        if mdts == 0 || mdts > 20 {
            by_list
        } else {
            (4096usize << mdts).min(by_list)
        }
    }

    pub(crate) fn sgl_supported(&self) -> bool {
        self.opts.use_sgl && lock(&self.cdata).sgl_supported()
    }

    pub(crate) fn namespaces(&self) -> Vec<Namespace> {
        lock(&self.namespaces).clone()
    }
}

impl Status {
    /// True for the status the driver gives commands it aborted itself
    /// (reset, failure, detach).
    pub fn is_aborted_by_driver(self) -> bool {
        self == Status::ABORTED_SQ_DELETION
    }
}

/// One entry of the discovery log page (LID 70h, NVMe-oF 1.1 figure 33).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEntry {
    /// Transport type (1 RDMA, 2 FC, 3 TCP, 254 intra-host).
    pub trtype: u8,
    /// Address family (1 IPv4, 2 IPv6, 3 IB, 4 FC).
    pub adrfam: u8,
    /// Subsystem type (1 referral to a discovery service, 2 NVM subsystem,
    /// 3 current discovery subsystem).
    pub subtype: u8,
    /// Transport requirements.
    pub treq: u8,
    /// Port id.
    pub portid: u16,
    /// Controller id (0xffff: dynamic).
    pub cntlid: u16,
    /// Admin queue size the subsystem takes.
    pub asqsz: u16,
    /// Service id (the TCP port).
    pub trsvcid: String,
    /// Address.
    pub traddr: String,
    /// Subsystem NQN.
    pub subnqn: String,
}

impl DiscoveryEntry {
    /// Parses a 1024-byte entry.
    pub fn parse(b: &[u8]) -> Option<DiscoveryEntry> {
        if b.len() < 1024 {
            return None;
        }
        let text = |r: std::ops::Range<usize>| {
            String::from_utf8_lossy(&b[r])
                .trim_end_matches([' ', '\0'])
                .to_string()
        };
        Some(DiscoveryEntry {
            trtype: b[0],
            adrfam: b[1],
            subtype: b[2],
            treq: b[3],
            portid: u16::from_le_bytes([b[4], b[5]]),
            cntlid: u16::from_le_bytes([b[6], b[7]]),
            asqsz: u16::from_le_bytes([b[8], b[9]]),
            trsvcid: text(32..64),
            subnqn: text(256..512),
            traddr: text(512..768),
        })
    }

    /// The transport ID of an NVMe/TCP entry (None for other transports).
    pub fn trid(&self) -> Option<TransportId> {
        if self.trtype != 3 {
            return None;
        }
        Some(TransportId {
            trtype: TransportType::Tcp,
            traddr: self.traddr.clone(),
            adrfam: Some(if self.adrfam == 2 { "IPv6" } else { "IPv4" }.into()),
            trsvcid: Some(self.trsvcid.clone()),
            subnqn: Some(self.subnqn.clone()),
            hostnqn: None,
        })
    }
}

/// An attached NVMe controller (SPDK: `struct spdk_nvme_ctrlr`), reached
/// over PCIe or NVMe/TCP behind one API. Cloning gives another handle to
/// the same controller; queue pairs keep it alive.
#[derive(Clone)]
pub struct Controller {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Pcie(PcieController),
    Tcp(Arc<TcpCtrlr>),
}

impl Controller {
    /// A handle on a TCP controller (for its queue pairs' timeout actions).
    pub(crate) fn from_tcp(t: Arc<TcpCtrlr>) -> Controller {
        Controller { kind: Kind::Tcp(t) }
    }
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
        match trid.trtype {
            TransportType::Pcie => Ok(Controller {
                kind: Kind::Pcie(PcieController::connect(trid, opts)?),
            }),
            TransportType::Tcp => {
                let c = Controller {
                    kind: Kind::Tcp(Arc::new(TcpCtrlr::new(trid, opts)?)),
                };
                c.tcp_init()?;
                Ok(c)
            }
            t => Err(NvmeError::NotSupported(format!(
                "transport {} (this driver does PCIe and TCP)",
                t.as_str()
            ))),
        }
    }

    /// Connects and initialises a TCP controller (attach and reset).
    fn tcp_init(&self) -> Result<()> {
        let Kind::Tcp(t) = &self.kind else {
            return Ok(());
        };
        t.connect_admin()?;
        let cdata = self.identify_controller()?;
        *lock(&t.cdata) = cdata.clone();
        if !t.is_discovery() {
            if cdata.ioccsz() < 4 {
                return Err(NvmeError::NotSupported(format!(
                    "IOCCSZ {} is below the 64-byte command: not an I/O controller",
                    cdata.ioccsz()
                )));
            }
            let want = t.opts.num_io_queues.clamp(1, 65535) - 1;
            let mut s = Sqe::new(AdminOpcode::SetFeatures.into(), 0);
            s.dw[10] = feature::NUMBER_OF_QUEUES as u32;
            s.dw[11] = (want << 16) | want;
            let granted = match t.admin_sync(s, Payload::None, "Set Features (Number of Queues)") {
                Ok(c) => ((c.cdw0 & 0xffff) + 1)
                    .min((c.cdw0 >> 16) + 1)
                    .min(t.opts.num_io_queues),
                Err(NvmeError::Command { status, .. }) => {
                    tracing::debug!(%status, "Number of Queues refused; asking for none");
                    t.opts.num_io_queues
                }
                Err(e) => return Err(e),
            };
            t.set_io_queues(granted);
            self.refresh_namespaces()?;
            t.submit_aers(t.opts.num_aers.min(cdata.aerl().saturating_add(1)))?;
        }
        t.state.store(state::OK, Ordering::Release);
        tracing::info!(
            trid = %t.trid,
            serial = %cdata.serial(),
            model = %cdata.model(),
            cntlid = t.cntlid.load(Ordering::Relaxed),
            io_queues = t.max_io_queues.load(Ordering::Relaxed),
            "NVMe/TCP controller attached"
        );
        Ok(())
    }

    /// Reads `len` bytes with an admin command.
    fn admin_read_vec(&self, cmd: Sqe, len: usize, what: &str) -> Result<Vec<u8>> {
        match &self.kind {
            Kind::Pcie(p) => p.admin_read(cmd, len, what, |b| b.to_vec()),
            Kind::Tcp(t) => t.admin_read(cmd, len, what),
        }
    }

    /// An admin command without data that must succeed.
    fn admin_cmd(&self, cmd: Sqe, what: &str) -> Result<Completion> {
        match &self.kind {
            Kind::Pcie(p) => p.admin_sync(cmd, Payload::None, what),
            Kind::Tcp(t) => t.admin_sync(cmd, Payload::None, what),
        }
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
        match &self.kind {
            Kind::Pcie(p) => p.inner.admin_raw(cmd, payload),
            Kind::Tcp(t) => t.admin_raw(cmd, payload),
        }
    }

    /// Identify Controller.
    pub fn identify_controller(&self) -> Result<IdentifyController> {
        if let Kind::Pcie(p) = &self.kind {
            return p.identify_controller();
        }
        let b = self.admin_read_vec(
            identify_sqe(cns::CONTROLLER, 0),
            4096,
            "Identify Controller",
        )?;
        Ok(IdentifyController::from_bytes(&b).expect("4096 bytes"))
    }

    /// Identify Namespace `nsid`.
    pub fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace> {
        if let Kind::Pcie(p) = &self.kind {
            return p.identify_namespace(nsid);
        }
        let b = self.admin_read_vec(
            identify_sqe(cns::NAMESPACE, nsid),
            4096,
            "Identify Namespace",
        )?;
        Ok(IdentifyNamespace::from_bytes(&b).expect("4096 bytes"))
    }

    /// The active namespace ids (Identify CNS 02h).
    pub fn active_namespace_ids(&self) -> Result<Vec<u32>> {
        if let Kind::Pcie(p) = &self.kind {
            return p.active_namespace_ids();
        }
        let mut out = Vec::new();
        let mut after = 0u32;
        loop {
            let b = self.admin_read_vec(
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
        match &self.kind {
            Kind::Pcie(p) => p.refresh_namespaces(),
            Kind::Tcp(t) => {
                let list = read_namespaces(self.active_namespace_ids()?, |id| {
                    self.identify_namespace(id)
                })?;
                *lock(&t.namespaces) = list;
                Ok(())
            }
        }
    }

    /// The Identify Controller data read at attach (SPDK:
    /// `spdk_nvme_ctrlr_get_data`).
    pub fn data(&self) -> IdentifyController {
        match &self.kind {
            Kind::Pcie(p) => p.data(),
            Kind::Tcp(t) => lock(&t.cdata).clone(),
        }
    }

    /// The controller's transport ID.
    pub fn trid(&self) -> &TransportId {
        match &self.kind {
            Kind::Pcie(p) => p.trid(),
            Kind::Tcp(t) => &t.trid,
        }
    }

    /// CAP (over TCP, read with Property Get at connect).
    pub fn cap(&self) -> Cap {
        match &self.kind {
            Kind::Pcie(p) => p.cap(),
            Kind::Tcp(t) => Cap(t.cap.load(Ordering::Acquire)),
        }
    }

    /// VS: (major, minor, tertiary).
    pub fn version(&self) -> (u16, u8, u8) {
        let v = match &self.kind {
            Kind::Pcie(p) => p.inner.vs,
            Kind::Tcp(t) => t.vs.load(Ordering::Acquire),
        };
        ((v >> 16) as u16, (v >> 8) as u8, v as u8)
    }

    /// How the device is reached: "vfio-pci", "uio_pci_generic" or "tcp".
    pub fn driver(&self) -> &'static str {
        match &self.kind {
            Kind::Pcie(p) => p.driver(),
            Kind::Tcp(_) => "tcp",
        }
    }

    /// True for a fabrics (TCP) controller.
    pub fn is_fabrics(&self) -> bool {
        matches!(self.kind, Kind::Tcp(_))
    }

    /// True for a discovery controller (connected to the discovery NQN).
    pub fn is_discovery(&self) -> bool {
        match &self.kind {
            Kind::Pcie(_) => false,
            Kind::Tcp(t) => t.is_discovery(),
        }
    }

    /// The fabrics controller id (CNTLID from Connect; Identify's for PCIe).
    pub fn cntlid(&self) -> u16 {
        match &self.kind {
            Kind::Pcie(p) => p.data().cntlid(),
            Kind::Tcp(t) => t.cntlid.load(Ordering::Acquire) as u16,
        }
    }

    /// Active namespaces.
    pub fn namespaces(&self) -> Vec<Namespace> {
        match &self.kind {
            Kind::Pcie(p) => p.namespaces(),
            Kind::Tcp(t) => lock(&t.namespaces).clone(),
        }
    }

    /// Namespace `nsid`, if active.
    pub fn namespace(&self, nsid: u32) -> Option<Namespace> {
        self.namespaces().into_iter().find(|n| n.id == nsid)
    }

    /// The largest transfer one command may move, in bytes (SPDK:
    /// `spdk_nvme_ns_get_max_io_xfer_size`).
    pub fn max_transfer_size(&self) -> usize {
        match &self.kind {
            Kind::Pcie(p) => p.max_transfer_size(),
            Kind::Tcp(t) => t.max_transfer(),
        }
    }

    /// I/O queue pairs the controller granted.
    pub fn max_io_qpairs(&self) -> u32 {
        match &self.kind {
            Kind::Pcie(p) => p.max_io_qpairs(),
            Kind::Tcp(t) => t.max_io_queues.load(Ordering::Relaxed),
        }
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
        self.admin_read_vec(s, len, &format!("Get Log Page {lid:#04x}"))
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
        Ok(self.admin_cmd(s, &format!("Get Features {fid:#04x}"))?.cdw0)
    }

    /// Set Features: returns CQE DW0.
    pub fn set_feature(&self, fid: u8, cdw11: u32) -> Result<u32> {
        let mut s = Sqe::new(AdminOpcode::SetFeatures.into(), 0);
        s.dw[10] = fid as u32;
        s.dw[11] = cdw11;
        Ok(self.admin_cmd(s, &format!("Set Features {fid:#04x}"))?.cdw0)
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
        match &self.kind {
            Kind::Pcie(p) => p.abort(sqid, cid),
            Kind::Tcp(_) => {
                let mut s = Sqe::new(AdminOpcode::Abort.into(), 0);
                s.dw[10] = ((cid as u32) << 16) | sqid as u32;
                Ok(self.admin_cmd(s, "Abort")?.cdw0 & 1 == 0)
            }
        }
    }

    /// Polls the admin queue: reaps Asynchronous Event completions (which
    /// are re-armed) and checks the controller's health (PCIe: CSTS and hot
    /// removal; TCP: the connection), and over TCP sends a Keep Alive when
    /// half the Keep Alive Timeout has passed. Returns the events that
    /// arrived (SPDK: `spdk_nvme_ctrlr_process_admin_completions`).
    pub fn process_admin_completions(&self) -> Result<Vec<AsyncEvent>> {
        match &self.kind {
            Kind::Pcie(p) => p.process_admin_completions(),
            Kind::Tcp(t) => t.poll_admin(),
        }
    }

    /// True if the controller has failed (fatal status, removal, failed
    /// reset, or over TCP a lost connection).
    pub fn is_failed(&self) -> bool {
        match &self.kind {
            Kind::Pcie(p) => p.is_failed(),
            Kind::Tcp(t) => t.state.load(Ordering::Acquire) == state::FAILED,
        }
    }

    /// Resets the controller (SPDK: `spdk_nvme_ctrlr_reset`). PCIe:
    /// disables it, which deletes every queue on the device, re-initialises
    /// the admin queue and the configuration, and lets each I/O queue pair
    /// re-create its queues on its next poll. TCP: drops the connections
    /// and connects the admin queue again (a failed controller can be
    /// reset: that is the reconnect); each I/O queue pair reconnects on
    /// its next poll. Commands that were in flight complete with "Command
    /// Aborted due to SQ Deletion". On failure the controller is marked
    /// failed.
    pub fn reset(&self) -> Result<()> {
        let t = match &self.kind {
            Kind::Pcie(p) => return p.reset(),
            Kind::Tcp(t) => t,
        };
        let _one = lock(&t.reset_lock);
        if t.state.load(Ordering::Acquire) == state::DETACHED {
            return Err(NvmeError::Detached(t.trid.traddr.clone()));
        }
        t.state.store(state::RESETTING, Ordering::Release);
        t.generation.fetch_add(1, Ordering::AcqRel);
        t.disconnect_admin();
        if let Err(e) = self.tcp_init() {
            t.disconnect_admin();
            t.fail(&format!("reconnect failed: {e}"));
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
        match &self.kind {
            Kind::Pcie(p) => {
                let i = &p.inner;
                let _one = lock(&i.reset_lock);
                if i.state.load(Ordering::Acquire) == state::DETACHED {
                    return;
                }
                i.fail(reason);
                let v = i.bar.read32(reg::CC);
                i.bar.write32(reg::CC, v & !cc::EN);
            }
            Kind::Tcp(t) => {
                let _one = lock(&t.reset_lock);
                if t.state.load(Ordering::Acquire) == state::DETACHED {
                    return;
                }
                t.fail(reason);
                t.generation.fetch_add(1, Ordering::AcqRel);
                t.disconnect_admin();
            }
        }
    }

    /// Detaches the controller (SPDK: `spdk_nvme_detach`): a normal shutdown
    /// notification (waiting for CSTS.SHST as CAP.TO allows), then the
    /// device is closed (TCP: the connections) once every queue pair is
    /// gone. Queue pairs still held complete their commands with "Command
    /// Aborted due to SQ Deletion" and refuse new ones.
    pub fn detach(self) -> Result<()> {
        let t = match self.kind {
            Kind::Pcie(p) => return p.detach(),
            Kind::Tcp(t) => t,
        };
        let _one = lock(&t.reset_lock);
        let prev = t.state.swap(state::DISABLING, Ordering::AcqRel);
        if prev == state::OK {
            // CC.SHN = normal shutdown; wait briefly for CSTS.SHST complete.
            let cc = (1u32) | (6 << 16) | (4 << 20) | cc::SHN_NORMAL;
            if t.prop_set(0x14, cc).is_ok() {
                let end = Instant::now() + Duration::from_millis(1000);
                while Instant::now() < end {
                    match t.prop_get(0x1c, false) {
                        Ok(v) if v as u32 & csts::SHST_MASK == csts::SHST_COMPLETE => break,
                        Ok(_) => std::thread::sleep(Duration::from_millis(1)),
                        Err(_) => break,
                    }
                }
            }
        }
        t.disconnect_admin();
        t.state.store(state::DETACHED, Ordering::Release);
        tracing::info!(trid = %t.trid, "controller detached");
        Ok(())
    }

    /// Allocates an I/O queue pair (SPDK: `spdk_nvme_ctrlr_alloc_io_qpair`)
    /// with `opts`, or the controller's defaults. Over TCP this is a new
    /// connection and a fabrics Connect of the next free queue id.
    pub fn alloc_io_qpair(
        &self,
        opts: Option<crate::qpair::QpairOpts>,
    ) -> Result<crate::qpair::IoQpair> {
        match &self.kind {
            Kind::Pcie(p) => p.alloc_io_qpair(opts),
            Kind::Tcp(t) => {
                let o = opts.unwrap_or(crate::qpair::QpairOpts {
                    io_queue_size: t.opts.io_queue_size,
                    io_queue_requests: t.opts.io_queue_requests,
                    delay_doorbell: true,
                });
                TcpIoQpair::new(
                    t.clone(),
                    o.io_queue_size,
                    o.io_queue_requests as usize,
                    o.delay_doorbell,
                )
                .map(crate::qpair::IoQpair::tcp)
            }
        }
    }
}
