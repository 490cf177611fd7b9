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
}

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
    pub const OK: u8 = 0;
    pub const RESETTING: u8 = 1;
    pub const FAILED: u8 = 2;
    pub const DETACHED: u8 = 3;
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
    failure: Mutex<String>,
}

/// An attached NVMe controller (SPDK: `struct spdk_nvme_ctrlr`). Cloning
/// gives another handle to the same controller; queue pairs keep it alive.
#[derive(Clone)]
pub struct Controller {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Controller {
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

impl Controller {
    /// Attaches the controller `trid` names (SPDK: `spdk_nvme_connect`).
    pub fn connect(trid: &TransportId, opts: &ControllerOpts) -> Result<Controller> {
        if trid.trtype != TransportType::Pcie {
            return Err(NvmeError::NotSupported(format!(
                "transport {} (this driver does PCIe)",
                trid.trtype.as_str()
            )));
        }
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
            failure: Mutex::new(String::new()),
        });
        let c = Controller { inner };
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
        self.inner.admin_raw(cmd, payload)
    }

    fn admin_read<T>(
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
        let ids = self.active_namespace_ids()?;
        let mut list = Vec::with_capacity(ids.len());
        for id in ids {
            let data = self.identify_namespace(id)?;
            list.push(Namespace {
                id,
                num_blocks: data.nsze(),
                block_size: data.block_size(),
                data,
            });
        }
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

    /// VS: (major, minor, tertiary).
    pub fn version(&self) -> (u16, u8, u8) {
        let v = self.inner.vs;
        ((v >> 16) as u16, (v >> 8) as u8, v as u8)
    }

    /// How the device is reached: "vfio-pci" or "uio_pci_generic".
    pub fn driver(&self) -> &'static str {
        self.inner.pci.driver()
    }

    /// Active namespaces.
    pub fn namespaces(&self) -> Vec<Namespace> {
        lock(&self.inner.namespaces).clone()
    }

    /// Namespace `nsid`, if active.
    pub fn namespace(&self, nsid: u32) -> Option<Namespace> {
        lock(&self.inner.namespaces)
            .iter()
            .find(|n| n.id == nsid)
            .cloned()
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
        self.admin_read(s, len, &format!("Get Log Page {lid:#04x}"), |b| b.to_vec())
    }

    /// The SMART / Health Information log (controller-wide).
    pub fn health_log(&self) -> Result<HealthLog> {
        let b = self.get_log_page(log_page::HEALTH_INFORMATION, u32::MAX, 512, 0)?;
        Ok(HealthLog::from_bytes(&b).expect("512 bytes"))
    }

    /// The Error Information log's first `entries` entries (at most ELPE + 1).
    pub fn error_log(&self, entries: usize) -> Result<Vec<ErrorLogEntry>> {
        let max = lock(&self.inner.cdata).elpe() as usize + 1;
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
    /// are re-armed) and checks the controller's health. Returns the events
    /// that arrived (SPDK: `spdk_nvme_ctrlr_process_admin_completions`).
    pub fn process_admin_completions(&self) -> Result<Vec<AsyncEvent>> {
        self.inner.check_health()?;
        let mut a = lock(&self.inner.admin);
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
        i.state.store(state::RESETTING, Ordering::Release);
        i.generation.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = i.pci.enable_bus_master() {
            return Err(self.fail(&format!("re-enabling bus mastering: {e}")));
        }
        {
            let mut a = lock(&i.admin);
            // Disable first so the device stops touching admin memory.
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
        let prev = i.state.swap(state::DETACHED, Ordering::AcqRel);
        if prev == state::DETACHED {
            return Ok(());
        }
        if prev == state::FAILED {
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
        tracing::info!(trid = %i.trid, "controller detached");
        Ok(())
    }

    /// Allocates an I/O queue pair with the controller's default options
    /// (SPDK: `spdk_nvme_ctrlr_alloc_io_qpair`).
    pub fn alloc_io_qpair(
        &self,
        opts: Option<crate::qpair::QpairOpts>,
    ) -> Result<crate::qpair::IoQpair> {
        crate::qpair::IoQpair::new(self.inner.clone(), opts)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    pub(crate) fn fail(&self, reason: &str) -> NvmeError {
        if self.state.load(Ordering::Acquire) != state::DETACHED {
            self.state.store(state::FAILED, Ordering::Release);
        }
        *lock(&self.failure) = reason.to_string();
        tracing::error!(trid = %self.trid, reason, "controller failed");
        NvmeError::ControllerFailed {
            traddr: self.trid.traddr.clone(),
            reason: reason.to_string(),
        }
    }

    /// The error for the current non-OK state.
    pub(crate) fn state_error(&self) -> NvmeError {
        match self.state.load(Ordering::Acquire) {
            state::DETACHED => NvmeError::Detached(self.trid.traddr.clone()),
            _ => NvmeError::ControllerFailed {
                traddr: self.trid.traddr.clone(),
                reason: lock(&self.failure).clone(),
            },
        }
    }

    /// Reads CSTS: a removed device or fatal status fails the controller.
    pub(crate) fn check_health(&self) -> Result<()> {
        match self.state.load(Ordering::Acquire) {
            state::FAILED | state::DETACHED => return Err(self.state_error()),
            _ => {}
        }
        if self.pci.is_removed() {
            return Err(self.fail("the device was removed"));
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
        match self.state.load(Ordering::Acquire) {
            state::FAILED | state::DETACHED => return Err(self.state_error()),
            _ => {}
        }
        let mut a = lock(&self.admin);
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
                return Ok(c);
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
        let c = self.admin_raw(cmd, payload)?;
        if c.status.is_error() {
            return Err(NvmeError::Command {
                command: what.to_string(),
                status: c.status,
            });
        }
        Ok(c)
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
