//! The bdev I/O path: one I/O queue pair per bdev channel, polled by the
//! channel's poller; I/O in a fixed slot table indexed by the completion
//! context (nothing allocated per I/O), vectored buffers walked in place.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rspdk_bdev::{
    BackendChannel, BdevBackend, BdevError, BdevIo, BdevProps, IoStatus, IoType, IoVec,
};
use rspdk_nvme::{Controller, IoQpair, NvmeError, QpairOpts, SgeFns, TimeoutAction};
use rspdk_thread::{poller_register, Poller, PollerStatus};
use serde_json::{json, Value};

use crate::ctrlr::{bdev_name, trid_json, Health};

/// ONCS bits (Identify Controller, Optional NVM Command Support).
const ONCS_COMPARE: u16 = 1 << 0;
const ONCS_DSM: u16 = 1 << 2;
const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// Write Zeroes moves at most 65536 blocks per command (16-bit NLB).
const MAX_WRITE_ZEROES_BLOCKS: u64 = 1 << 16;

/// Counters of one channel (relaxed atomics: written by its thread, read
/// by the statistics RPC).
#[derive(Debug, Default)]
pub(crate) struct ChanStats {
    pub(crate) polls: AtomicU64,
    pub(crate) idle_polls: AtomicU64,
    pub(crate) completions: AtomicU64,
    pub(crate) submitted: AtomicU64,
    pub(crate) queued: AtomicU64,
}

/// A live channel, for `bdev_nvme_get_io_paths` and the statistics.
pub(crate) struct ChanInfo {
    pub(crate) id: u64,
    pub(crate) thread: String,
    pub(crate) bdev: String,
    pub(crate) ctrlr: String,
    pub(crate) trtype: String,
    pub(crate) stats: Arc<ChanStats>,
}

/// Every live NVMe channel (changed at channel create/destroy only).
pub(crate) static CHANNELS: Mutex<Vec<ChanInfo>> = Mutex::new(Vec::new());
static CHAN_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct NvmeNs {
    pub(crate) ctrlr: Controller,
    pub(crate) ctrlr_name: String,
    pub(crate) nsid: u32,
    pub(crate) oncs: u16,
    pub(crate) vwc: bool,
    pub(crate) health: Arc<Health>,
    pub(crate) qp_opts: QpairOpts,
    pub(crate) ioq_poll_us: u64,
    /// (`timeout_us`, `action_on_timeout`) of bdev_nvme_set_options.
    pub(crate) timeout: (u64, String),
    pub(crate) enable_flush: bool,
}

pub(crate) struct NvmeBackend(pub(crate) Arc<NvmeNs>);

impl BdevBackend for NvmeBackend {
    fn create_channel(&self) -> Result<Box<dyn BackendChannel>, BdevError> {
        NvmeChannel::open(self.0.clone())
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        let o = self.0.oncs;
        match io_type {
            IoType::Read | IoType::Write | IoType::Reset => true,
            IoType::Flush => self.0.vwc,
            IoType::Unmap => o & ONCS_DSM != 0,
            IoType::WriteZeroes => o & ONCS_WRITE_ZEROES != 0,
            IoType::Compare => o & ONCS_COMPARE != 0,
            IoType::CompareAndWrite => false,
        }
    }

    fn dump_info_json(&self) -> Value {
        let c = &self.0.ctrlr;
        let d = c.data();
        let (maj, min, ter) = c.version();
        let t = c.trid();
        let mut v = json!({
            "trid": trid_json(t),
            "ctrlr_data": {
                "cntlid": d.cntlid(),
                "vendor_id": format!("0x{:04x}", d.vid()),
                "model_number": d.model(),
                "serial_number": d.serial(),
                "firmware_revision": d.firmware(),
                "oacs": {},
            },
            "vs": {"nvme_version": format!("{maj}.{min}{}", if ter > 0 { format!(".{ter}") } else { String::new() })},
            "ns_data": {"id": self.0.nsid},
        });
        if t.trtype == rspdk_nvme::TransportType::Pcie {
            v["pci_address"] = json!(t.traddr);
        }
        json!({"nvme": [v]})
    }

    fn write_config_json(&self, _props: &BdevProps) -> Option<Value> {
        // The controller's attach call is written once by the module
        // (`NvmeModule::config_json`), as SPDK's bdev_nvme does.
        None
    }
}

/// Walks an I/O's iovec array for the driver's SGL/PRP builder.
struct SgeCursor {
    iov: *const IoVec,
    cnt: usize,
    idx: usize,
    off: usize,
}

fn sge_reset(arg: usize, offset: u32) {
    // SAFETY: `arg` is the address of a slot's cursor, which lives in the
    // channel's boxed slot table and is set before the command is submitted
    // and untouched until it completes; `iov`/`cnt` describe the iovecs of
    // the BdevIo the slot holds.
    let c = unsafe { &mut *(arg as *mut SgeCursor) };
    let mut off = offset as usize;
    c.idx = 0;
    c.off = 0;
    while c.idx < c.cnt {
        // SAFETY: idx < cnt (see above).
        let len = unsafe { (*c.iov.add(c.idx)).len };
        if off < len {
            c.off = off;
            return;
        }
        off -= len;
        c.idx += 1;
    }
}

fn sge_next(arg: usize) -> (usize, u32) {
    // SAFETY: as in `sge_reset`.
    let c = unsafe { &mut *(arg as *mut SgeCursor) };
    if c.idx >= c.cnt {
        return (0, 0);
    }
    // SAFETY: idx < cnt.
    let v = unsafe { *c.iov.add(c.idx) };
    let r = (v.base as usize + c.off, (v.len - c.off) as u32);
    c.idx += 1;
    c.off = 0;
    r
}

struct Slot {
    io: Option<BdevIo>,
    sge: SgeCursor,
}

struct NsState {
    stats: Arc<ChanStats>,
    health: Arc<Health>,
    qp: IoQpair,
    nsid: u32,
    ctrlr: Controller,
    bdev: String,
    slots: Box<[Slot]>,
    free: Vec<u32>,
    waiting: VecDeque<BdevIo>,
    done: Vec<(BdevIo, IoStatus)>,
    enable_flush: bool,
    /// The controller's `inject_gen` this queue pair's injections match.
    inject_seen: u64,
    /// Serial numbers and opcodes of the injections applied here.
    injected: Vec<(u64, u8)>,
}

impl NsState {
    /// Brings the queue pair's error injections in line with the
    /// controller's list (runs only when the list changed).
    fn sync_injections(&mut self) {
        let gen = self.health.inject_gen.load(Ordering::Acquire);
        let want = self
            .health
            .inject
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for &(serial, opc) in &self.injected {
            if !want.iter().any(|w| w.0 == serial) && !want.iter().any(|w| w.1.opc == opc) {
                self.qp.remove_cmd_error_injection(opc);
            }
        }
        for (serial, e) in &want {
            if !self.injected.iter().any(|i| i.0 == *serial) {
                self.qp.add_cmd_error_injection(*e);
            }
        }
        self.injected = want.iter().map(|(s, e)| (*s, e.opc)).collect();
        self.inject_seen = gen;
    }
}

struct NvmeChannel {
    st: Rc<RefCell<NsState>>,
    poller: Option<Poller>,
    id: u64,
}

/// Maps a completion status to the bdev layer's.
pub fn io_status(sct: u8, sc: u8) -> IoStatus {
    if sct == 0 && sc == 0 {
        IoStatus::Success
    } else {
        IoStatus::Nvme { sct, sc }
    }
}

impl NvmeChannel {
    fn open(ns: Arc<NvmeNs>) -> Result<Box<dyn BackendChannel>, BdevError> {
        let bdev = bdev_name(&ns.ctrlr_name, ns.nsid);
        let mut qp = ns
            .ctrlr
            .alloc_io_qpair(Some(ns.qp_opts))
            .map_err(|e| BdevError::Channel {
                bdev: bdev.clone(),
                detail: format!("I/O queue pair: {e}"),
            })?;
        if ns.timeout.0 > 0 {
            let action = match ns.timeout.1.as_str() {
                "abort" => TimeoutAction::Abort,
                "reset" => TimeoutAction::Reset,
                _ => TimeoutAction::None,
            };
            let b = bdev.clone();
            qp.set_timeout(Duration::from_micros(ns.timeout.0), move |ev| {
                tracing::warn!(bdev = %b, cid = ev.cid, opcode = ev.opcode, ?action, "NVMe command timed out");
                action
            });
        }
        let n = ns.qp_opts.io_queue_requests as usize;
        let stats = Arc::new(ChanStats::default());
        let id = CHAN_ID.fetch_add(1, Ordering::Relaxed);
        CHANNELS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ChanInfo {
                id,
                thread: rspdk_thread::get_thread()
                    .map(|t| t.name().to_string())
                    .unwrap_or_default(),
                bdev: bdev.clone(),
                ctrlr: ns.ctrlr_name.clone(),
                trtype: ns.ctrlr.trid().trtype.as_str().to_string(),
                stats: stats.clone(),
            });
        let st = Rc::new(RefCell::new(NsState {
            stats,
            health: ns.health.clone(),
            qp,
            nsid: ns.nsid,
            ctrlr: ns.ctrlr.clone(),
            bdev,
            slots: (0..n)
                .map(|_| Slot {
                    io: None,
                    sge: SgeCursor {
                        iov: std::ptr::null(),
                        cnt: 0,
                        idx: 0,
                        off: 0,
                    },
                })
                .collect(),
            free: (0..n as u32).rev().collect(),
            waiting: VecDeque::new(),
            done: Vec::with_capacity(n),
            enable_flush: ns.enable_flush,
            inject_seen: 0,
            injected: Vec::new(),
        }));
        let weak: Weak<RefCell<NsState>> = Rc::downgrade(&st);
        let poller = poller_register("bdev_nvme", ns.ioq_poll_us, move |_| match weak.upgrade() {
            Some(st) => poll(&st),
            None => PollerStatus::Idle,
        })
        .map_err(|e| BdevError::Channel {
            bdev: st.borrow().bdev.clone(),
            detail: e.to_string(),
        })?;
        Ok(Box::new(NvmeChannel {
            st,
            poller: Some(poller),
            id,
        }))
    }
}

impl NsState {
    /// Issues `io` in slot `i`; on a refusal the slot is freed and the I/O
    /// handed back with its status.
    fn issue(&mut self, i: u32, io: BdevIo) -> Result<(), (BdevIo, IoStatus)> {
        let nsid = self.nsid;
        let ctx = i as u64;
        let lba = io.offset_blocks();
        let nlb = io.num_blocks();
        let slot = &mut self.slots[i as usize];
        slot.io = Some(io);
        let io = slot.io.as_ref().expect("just set");
        let t = io.io_type();
        let r = match t {
            IoType::Read | IoType::Write | IoType::Compare => {
                let iovs = io.iovs();
                if nlb > u32::MAX as u64 {
                    Err(NvmeError::InvalidArgument("too many blocks".into()))
                } else if iovs.len() == 1 {
                    let b = iovs[0].base;
                    // SAFETY: the buffers are the BdevIo's (DMA memory from
                    // the bdev layer), held in the slot until completion.
                    unsafe {
                        match t {
                            IoType::Read => self.qp.read(nsid, b, lba, nlb as u32, ctx),
                            IoType::Write => self.qp.write(nsid, b, lba, nlb as u32, ctx),
                            _ => self.qp.compare(nsid, b, lba, nlb as u32, ctx),
                        }
                    }
                } else if t == IoType::Compare {
                    Err(NvmeError::NotSupported("vectored compare".into()))
                } else {
                    slot.sge = SgeCursor {
                        iov: iovs.as_ptr(),
                        cnt: iovs.len(),
                        idx: 0,
                        off: 0,
                    };
                    let fns = SgeFns {
                        reset: sge_reset,
                        next: sge_next,
                        arg: &mut slot.sge as *mut SgeCursor as usize,
                    };
                    // SAFETY: the cursor lives in the boxed slot table and
                    // the iovecs and buffers in the BdevIo the slot holds,
                    // all untouched until the completion.
                    unsafe {
                        if t == IoType::Read {
                            self.qp.readv(nsid, lba, nlb as u32, fns, ctx)
                        } else {
                            self.qp.writev(nsid, lba, nlb as u32, fns, ctx)
                        }
                    }
                }
            }
            IoType::Flush if !self.enable_flush => {
                // As SPDK with enable_flush false: done without the device.
                let io = self.release(i).expect("slot just filled");
                self.done.push((io, IoStatus::Success));
                return Ok(());
            }
            IoType::Flush => self.qp.flush(nsid, ctx),
            IoType::WriteZeroes if nlb <= MAX_WRITE_ZEROES_BLOCKS => {
                self.qp.write_zeroes(nsid, lba, nlb as u32, false, ctx)
            }
            IoType::Unmap if nlb <= u32::MAX as u64 => {
                self.qp.deallocate(nsid, lba, nlb as u32, ctx)
            }
            _ => Err(NvmeError::NotSupported(format!("{t:?} of {nlb} blocks"))),
        };
        match r {
            Ok(()) => {
                self.stats.submitted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(bdev = %self.bdev, error = %e, "NVMe submission refused");
                let io = self.release(i).expect("slot just filled");
                if matches!(e, NvmeError::ControllerFailed { .. }) && self.health.waits() {
                    // Waits for the reconnect.
                    self.waiting.push_back(io);
                    return Ok(());
                }
                Err((io, IoStatus::Failed))
            }
        }
    }

    fn release(&mut self, i: u32) -> Option<BdevIo> {
        let s = &mut self.slots[i as usize];
        s.sge.iov = std::ptr::null();
        s.sge.cnt = 0;
        self.free.push(i);
        s.io.take()
    }

    /// Starts `io`, or queues it when every slot is busy.
    fn start(&mut self, io: BdevIo) -> Result<(), (BdevIo, IoStatus)> {
        // One relaxed load: an injection added by RPC applies from the
        // next I/O on (the RPC answers before this channel polls).
        if self.health.inject_gen.load(Ordering::Relaxed) != self.inject_seen {
            self.sync_injections();
        }
        if self.health.reconnecting.load(Ordering::Acquire) {
            if self.health.waits() {
                self.waiting.push_back(io);
                return Ok(());
            }
            return Err((io, IoStatus::Failed));
        }
        match self.free.pop() {
            Some(i) => self.issue(i, io),
            None => {
                self.waiting.push_back(io);
                Ok(())
            }
        }
    }
}

/// The channel poller: reap completions, admit waiting I/O, then complete
/// (outside the state borrow, so callbacks may submit).
fn poll(cell: &RefCell<NsState>) -> PollerStatus {
    let done = {
        let mut guard = cell.borrow_mut();
        let st = &mut *guard;
        if st.health.inject_gen.load(Ordering::Relaxed) != st.inject_seen {
            st.sync_injections();
        }
        let NsState {
            qp,
            slots,
            free,
            done,
            waiting,
            health,
            ..
        } = st;
        let r = qp.process_completions(0, |c| {
            let i = c.ctx as usize;
            if let Some(io) = slots.get_mut(i).and_then(|s| s.io.take()) {
                free.push(i as u32);
                if c.status.is_aborted_by_driver() && health.waits() {
                    // The path is down: retried after the reconnect.
                    waiting.push_back(io);
                } else {
                    done.push((io, io_status(c.status.sct(), c.status.sc())));
                }
            }
        });
        let n = r.unwrap_or(0);
        st.stats.polls.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            st.stats.idle_polls.fetch_add(1, Ordering::Relaxed);
        } else {
            st.stats.completions.fetch_add(n as u64, Ordering::Relaxed);
        }
        st.stats
            .queued
            .store(st.waiting.len() as u64, Ordering::Relaxed);
        if st.health.reconnecting.load(Ordering::Acquire) {
            if !st.health.waits() {
                while let Some(io) = st.waiting.pop_front() {
                    st.done.push((io, IoStatus::Failed));
                }
            }
        } else {
            // Each waiting I/O is tried once per poll (a refused one may
            // come back to the queue).
            let mut tries = st.waiting.len();
            while tries > 0 && !st.free.is_empty() {
                tries -= 1;
                let Some(io) = st.waiting.pop_front() else {
                    break;
                };
                if let Err(x) = st.start(io) {
                    st.done.push(x);
                }
            }
        }
        if st.done.is_empty() {
            return if n > 0 {
                PollerStatus::Busy
            } else {
                PollerStatus::Idle
            };
        }
        std::mem::take(&mut st.done)
    };
    rspdk_bdev::complete_batch(cell, done, |st| &mut st.done)
}

impl BackendChannel for NvmeChannel {
    fn submit(&mut self, io: BdevIo) {
        let mut st = self.st.borrow_mut();
        if io.io_type() == IoType::Reset {
            let c = st.ctrlr.clone();
            drop(st);
            // In-flight commands of every queue pair complete with
            // "Command Aborted due to SQ Deletion" at their next poll.
            let s = match c.reset() {
                Ok(()) => IoStatus::Success,
                Err(e) => {
                    tracing::error!(error = %e, "NVMe controller reset failed");
                    IoStatus::Failed
                }
            };
            io.complete(s);
            return;
        }
        let r = st.start(io);
        drop(st);
        if let Err((io, s)) = r {
            io.complete(s);
        }
    }
}

impl Drop for NvmeChannel {
    fn drop(&mut self) {
        CHANNELS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| c.id != self.id);
        if let Some(p) = self.poller.take() {
            p.unregister();
        }
        // Complete what is still held (the queue pair's drop gives the
        // device queues back).
        let mut st = self.st.borrow_mut();
        let mut left: Vec<BdevIo> = st.slots.iter_mut().filter_map(|s| s.io.take()).collect();
        left.extend(st.waiting.drain(..));
        drop(st);
        for io in left {
            io.complete(IoStatus::Aborted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sge_cursor_walks_iovecs() {
        let mut a = [0u8; 100];
        let mut b = [0u8; 50];
        let iovs = [
            IoVec::new(a.as_mut_ptr(), 100),
            IoVec::new(b.as_mut_ptr(), 50),
        ];
        let mut c = SgeCursor {
            iov: iovs.as_ptr(),
            cnt: 2,
            idx: 0,
            off: 0,
        };
        let arg = &mut c as *mut SgeCursor as usize;
        sge_reset(arg, 0);
        assert_eq!(sge_next(arg), (a.as_ptr() as usize, 100));
        assert_eq!(sge_next(arg), (b.as_ptr() as usize, 50));
        sge_reset(arg, 120);
        assert_eq!(sge_next(arg), (b.as_ptr() as usize + 20, 30));
        assert_eq!(sge_next(arg), (0, 0));
    }
}
