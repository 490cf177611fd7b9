//! LUNs backed by bdevs: the SPC/SBC command set.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use rspdk_bdev::{
    bdev_open, BdevDesc, BdevError, BdevEvent, BdevIoChannel, IoStatus, IoType, IoVec,
};

use rspdk_util::Callback;

use crate::bufpool;
use crate::cdb::Cdb;
use crate::databuf::{DataBuf, NoDmaMemory};
use crate::resv::{Access, Reservations};
use crate::sense::{status, Sense};
use crate::{ScsiCommand, ScsiError, ScsiResult};

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// Vendor identification reported by INQUIRY (8 bytes).
pub const VENDOR_ID: &[u8; 8] = b"RSPDK   ";
/// Largest transfer in bytes a single READ/WRITE may ask for.
pub const MAX_TRANSFER_BYTES: u64 = 32 << 20;
/// Largest COMPARE AND WRITE, in blocks.
pub const MAX_CAW_BLOCKS: u8 = 255;
/// Largest UNMAP / WRITE SAME range, in blocks.
pub const MAX_UNMAP_BLOCKS: u32 = 0x10_0000;
/// Largest number of UNMAP block descriptors.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;

thread_local! {
    /// This thread's bdev channels, by LUN uid.
    static CHANNELS: RefCell<HashMap<u64, Rc<BdevIoChannel>>> = RefCell::new(HashMap::new());
}

/// Drops this thread's cached bdev channels (call before the thread exits
/// or when its users are gone, so bdevs can be unregistered).
pub fn release_thread_channels() {
    let all = CHANNELS.with(|c| std::mem::take(&mut *c.borrow_mut()));
    drop(all);
}

/// Completion of a command: a one-shot closure stored inline (no heap
/// allocation for closures of up to [`rspdk_util::CALLBACK_INLINE_BYTES`]).
pub type Done = Callback<ScsiResult>;

/// A logical unit backed by a bdev (SPDK: `spdk_scsi_lun`).
pub struct ScsiLun {
    id: u64,
    uid: u64,
    bdev_name: String,
    desc: Mutex<Option<Arc<BdevDesc>>>,
    removed: AtomicBool,
    resv: Mutex<Reservations>,
    ua: Mutex<UnitAttentions>,
    /// The device's LUN inventory generation (bumped on hot remove).
    dev_generation: Arc<AtomicU64>,
    /// The threads that cached a bdev channel of this LUN (added on a
    /// cache miss, not per I/O): hot remove tells each to drop it, so the
    /// bdev's unregister can finish.
    channel_threads: Mutex<Vec<rspdk_thread::ThreadHandle>>,
}

/// Unit attention conditions per I_T nexus.
#[derive(Debug, Default)]
struct UnitAttentions {
    known: HashMap<String, Option<Sense>>,
}

impl std::fmt::Debug for ScsiLun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScsiLun({} -> {})", self.id, self.bdev_name)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn good(data: impl Into<DataBuf>) -> ScsiResult {
    ScsiResult {
        data_out_len: None,
        status: status::GOOD,
        sense: None,
        data: data.into(),
    }
}

/// No DMA memory for a data transfer: BUSY, so that the initiator retries
/// (as for a bdev out of I/O descriptors).
fn no_dma(e: &NoDmaMemory) -> ScsiResult {
    tracing::warn!(reason = %e.0, "no DMA memory for a SCSI data transfer");
    ScsiResult {
        data_out_len: None,
        status: status::BUSY,
        sense: None,
        data: DataBuf::empty(),
    }
}

fn check(sense: Sense) -> ScsiResult {
    ScsiResult::check(sense)
}

fn conflict() -> ScsiResult {
    ScsiResult {
        data_out_len: None,
        status: status::RESERVATION_CONFLICT,
        sense: None,
        data: DataBuf::empty(),
    }
}

fn bdev_err(e: &BdevError) -> ScsiResult {
    match e {
        BdevError::Removing(_) | BdevError::NotFound(_) => check(Sense::LUN_NOT_SUPPORTED),
        BdevError::OutOfRange { .. } => check(Sense::LBA_OUT_OF_RANGE),
        BdevError::NoMemory => ScsiResult {
            data_out_len: None,
            status: status::BUSY,
            sense: None,
            data: DataBuf::empty(),
        },
        BdevError::ReadOnly(_) => check(Sense::new(crate::sense::key::DATA_PROTECT, 0x27, 0)),
        BdevError::Unsupported { .. } => check(Sense::INVALID_OPCODE),
        _ => check(Sense::INTERNAL_FAILURE),
    }
}

fn io_result(st: IoStatus, io_type: IoType, data: DataBuf) -> ScsiResult {
    match st {
        IoStatus::Success => good(data),
        IoStatus::MediumError | IoStatus::Failed | IoStatus::Nvme { .. } => {
            if io_type == IoType::Read || io_type == IoType::Compare {
                check(Sense::UNRECOVERED_READ)
            } else {
                check(Sense::WRITE_ERROR)
            }
        }
        IoStatus::Miscompare { offset } => {
            check(Sense::MISCOMPARE.with_info(u32::try_from(offset).unwrap_or(u32::MAX)))
        }
        IoStatus::Aborted => check(Sense::ABORTED),
        IoStatus::Removed => check(Sense::LUN_NOT_SUPPORTED),
    }
}

/// State shared by a submission and its callback, taken back on failure.
type Slot<T> = Rc<RefCell<Option<T>>>;

/// What a data I/O keeps while it runs: its completion and its buffers.
type IoSlotInner = Slot<(Done, DataBuf, DataBuf)>;

thread_local! {
    /// Free data-I/O slots of this thread, reused across I/Os.
    static IO_SLOTS: RefCell<Vec<IoSlotInner>> = const { RefCell::new(Vec::new()) };
}

/// Free list of data-I/O slots (per thread; grows on demand, keeps at most
/// [`IoSlot::MAX_FREE`]).
struct IoSlot;

impl IoSlot {
    const MAX_FREE: usize = 1024;

    /// An empty slot, from the free list when one is there.
    fn take() -> IoSlotInner {
        IO_SLOTS
            .try_with(|l| l.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| Rc::new(RefCell::new(None)))
    }

    /// Puts an emptied slot back on the free list.
    fn give(s: IoSlotInner) {
        let _ = IO_SLOTS.try_with(|l| {
            let mut l = l.borrow_mut();
            if l.len() < Self::MAX_FREE {
                l.push(s);
            }
        });
    }
}

/// One step of a multi-I/O command.
enum Op {
    NoData(IoType, u64, u64),
    /// Write a shared (read-only) pattern buffer.
    Write(Rc<Vec<u8>>, u64, u64),
}

impl ScsiLun {
    /// Opens `bdev_name` for writing and makes LUN `id` of it. Call on an
    /// rspdk thread: the hot-remove event runs there, and bumps
    /// `dev_generation` (the device's LUN inventory generation, so
    /// initiators get REPORTED LUNS DATA HAS CHANGED).
    pub fn new(
        id: u64,
        bdev_name: &str,
        dev_generation: Arc<AtomicU64>,
    ) -> Result<Arc<ScsiLun>, ScsiError> {
        let lun = Arc::new(ScsiLun {
            id,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            bdev_name: bdev_name.to_string(),
            desc: Mutex::new(None),
            removed: AtomicBool::new(false),
            channel_threads: Mutex::new(Vec::new()),
            resv: Mutex::new(Reservations::default()),
            ua: Mutex::new(UnitAttentions::default()),
            dev_generation,
        });
        let weak: Weak<ScsiLun> = Arc::downgrade(&lun);
        let desc = bdev_open(bdev_name, true, move |ev| {
            if ev == BdevEvent::Remove {
                if let Some(l) = weak.upgrade() {
                    tracing::info!(lun = l.id, bdev = %l.bdev_name, "bdev hot removed: LUN goes away");
                    l.hot_remove();
                }
            }
        })
        .map_err(|source| ScsiError::Bdev {
            bdev: bdev_name.to_string(),
            source,
        })?;
        *lock(&lun.desc) = Some(Arc::new(desc));
        Ok(lun)
    }

    /// The LUN number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The bdev's name.
    pub fn bdev_name(&self) -> &str {
        &self.bdev_name
    }

    /// True once the bdev was removed.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Marks the LUN removed and closes the descriptor; commands then end
    /// with LOGICAL UNIT NOT SUPPORTED.
    pub fn hot_remove(&self) {
        if !self.removed.swap(true, Ordering::AcqRel) {
            self.dev_generation.fetch_add(1, Ordering::AcqRel);
        }
        lock(&self.desc).take();
        // Every thread drops its cached channel now, not at its next
        // command (an idle poll group may never see one): the bdev waits
        // for its channels before it goes.
        let uid = self.uid;
        for t in lock(&self.channel_threads).drain(..) {
            let sent = t.send_msg(move || {
                let ch = CHANNELS.with(|c| c.borrow_mut().remove(&uid));
                drop(ch);
            });
            if sent.is_err() {
                tracing::debug!(uid, "a thread that cached a LUN channel has exited");
            }
        }
    }

    /// Drops SCSI-2 reservations held by `nexus` (nexus loss, logout).
    pub fn release_nexus(&self, nexus: &str) {
        lock(&self.resv).nexus_lost(nexus);
        lock(&self.ua).known.remove(nexus);
    }

    /// LOGICAL UNIT RESET: releases SCSI-2 reservations and establishes a
    /// unit attention (BUS DEVICE RESET FUNCTION OCCURRED) for every nexus.
    pub fn reset(&self) {
        lock(&self.resv).reset();
        for ua in lock(&self.ua).known.values_mut() {
            *ua = Some(Sense::new(crate::sense::key::UNIT_ATTENTION, 0x29, 0x03));
        }
    }

    /// Takes the pending unit attention of `nexus` (registering the nexus).
    fn take_ua(&self, nexus: &str, op: u8) -> Option<Sense> {
        let mut g = lock(&self.ua);
        match g.known.get_mut(nexus) {
            Some(ua) => {
                // INQUIRY and REPORT LUNS neither report nor clear it.
                if op == 0x12 || op == 0xa0 {
                    None
                } else {
                    ua.take()
                }
            }
            None => {
                g.known.insert(nexus.to_string(), None);
                None
            }
        }
    }

    fn desc(&self) -> Option<Arc<BdevDesc>> {
        if self.is_removed() {
            return None;
        }
        lock(&self.desc).clone()
    }

    fn channel(&self, desc: &BdevDesc) -> Result<Rc<BdevIoChannel>, BdevError> {
        if let Some(ch) = CHANNELS.with(|c| c.borrow().get(&self.uid).cloned()) {
            return Ok(ch);
        }
        let ch = Rc::new(desc.get_io_channel()?);
        CHANNELS.with(|c| c.borrow_mut().insert(self.uid, ch.clone()));
        if let Some(t) = rspdk_thread::get_thread() {
            lock(&self.channel_threads).push(t.handle());
        }
        Ok(ch)
    }

    /// Drops this thread's cached channel (after hot remove).
    fn drop_channel(&self) {
        let ch = CHANNELS.with(|c| c.borrow_mut().remove(&self.uid));
        drop(ch);
    }

    /// Executes `cmd`; `done` runs once, possibly before this returns.
    pub fn execute(self: &Arc<Self>, cmd: &ScsiCommand, done: Done) {
        let cdb = match Cdb::new(&cmd.cdb) {
            Ok(c) => c,
            Err(s) => return done.call(check(s)),
        };
        let Some(desc) = self.desc() else {
            self.drop_channel();
            return done.call(check(Sense::LUN_NOT_SUPPORTED));
        };
        if let Some(ua) = self.take_ua(&cmd.nexus, cdb.opcode()) {
            if cdb.opcode() == 0x03 {
                let mut d = if cdb.u8(1) & 1 != 0 {
                    ua.descriptor()
                } else {
                    ua.fixed()
                };
                d.truncate(usize::from(cdb.u8(4)));
                return done.call(good(d));
            }
            return done.call(check(ua));
        }
        let access = access_of(&cdb);
        if !lock(&self.resv).allows(&cmd.nexus, access, &cdb) {
            return done.call(conflict());
        }
        let op = cdb.opcode();
        match op {
            0x00 | 0x1b | 0x1e => done.call(good(Vec::new())), // TUR, START STOP, PREVENT ALLOW
            0x03 => done.call(self.request_sense(&cdb)),
            0x12 => done.call(self.inquiry(&cdb, &desc)),
            0x25 => done.call(self.read_capacity10(&desc)),
            0x9e => match cdb.service_action() {
                0x10 => done.call(self.read_capacity16(&cdb, &desc)),
                0x12 => done.call(self.get_lba_status(&cdb, &desc)),
                _ => done.call(check(Sense::INVALID_FIELD_IN_CDB)),
            },
            0xa3 if cdb.service_action() == 0x0c => done.call(report_opcodes(&cdb)),
            0x1a | 0x5a => done.call(self.mode_sense(&cdb, &desc)),
            0x15 | 0x55 => done.call(mode_select(&cdb, &cmd.data_out)),
            0x08 | 0x28 | 0xa8 | 0x88 => self.read(&cdb, &desc, done),
            0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e => {
                self.write(&cdb, &desc, &cmd.data_out, done)
            }
            0x2f | 0xaf | 0x8f => self.verify(&cdb, &desc, &cmd.data_out, done),
            0x35 | 0x91 => self.sync_cache(&cdb, &desc, done),
            0x42 => self.unmap(&cdb, &desc, &cmd.data_out, done),
            0x41 | 0x93 => self.write_same(&cdb, &desc, &cmd.data_out, done),
            0x89 => self.compare_and_write(&cdb, &desc, &cmd.data_out, done),
            0x9c => self.write_atomic(&cdb, &desc, &cmd.data_out, done),
            0x8b => self.or_write(&cdb, &desc, &cmd.data_out, done),
            0x37 | 0xb7 => done.call(read_defect_data(&cdb)),
            0x34 | 0x90 => {
                // PRE-FETCH: range check only.
                let (lba, n) = if op == 0x34 {
                    (u64::from(cdb.u32(2)), u64::from(cdb.u16(7)))
                } else {
                    (cdb.u64(2), u64::from(cdb.u32(10)))
                };
                done.call(match range_ok(&desc, lba, n) {
                    Ok(()) => good(Vec::new()),
                    Err(r) => r,
                })
            }
            0x5e => done.call(lock(&self.resv).pr_in(&cdb)),
            0x5f => done.call(lock(&self.resv).pr_out(&cmd.nexus, &cdb, &cmd.data_out)),
            0x16 | 0x56 => done.call(lock(&self.resv).reserve6(&cmd.nexus)),
            0x17 | 0x57 => done.call(lock(&self.resv).release6(&cmd.nexus)),
            _ => done.call(check(Sense::INVALID_OPCODE)),
        }
    }

    fn request_sense(&self, cdb: &Cdb) -> ScsiResult {
        let alloc = usize::from(cdb.u8(4));
        let s = Sense::new(0, 0, 0);
        let mut d = if cdb.u8(1) & 1 != 0 {
            s.descriptor()
        } else {
            s.fixed()
        };
        d.truncate(alloc);
        good(d)
    }

    fn inquiry(&self, cdb: &Cdb, desc: &BdevDesc) -> ScsiResult {
        let evpd = cdb.u8(1) & 1 != 0;
        if cdb.u8(1) & 0x02 != 0 {
            return check(Sense::INVALID_FIELD_IN_CDB);
        }
        let page = cdb.u8(2);
        let alloc = usize::from(cdb.u16(3));
        let bdev = desc.bdev();
        let mut d = if !evpd {
            if page != 0 {
                return check(Sense::INVALID_FIELD_IN_CDB);
            }
            standard_inquiry(0x00, bdev.props().product_name.as_bytes())
        } else {
            let uuid = *bdev.props().uuid.as_bytes();
            let mut d = vec![0x00, page, 0, 0];
            match page {
                0x00 => d.extend_from_slice(&[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]),
                0x80 => {
                    let serial: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
                    d.extend_from_slice(&serial.as_bytes()[..20]);
                }
                0x83 => {
                    // NAA IEEE Registered Extended (type 6) from the bdev's UUID.
                    d.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
                    let mut naa = [0u8; 16];
                    naa[0] = 0x60 | (uuid[0] & 0x0f);
                    naa[1..].copy_from_slice(&uuid[1..]);
                    d.extend_from_slice(&naa);
                    // T10 vendor ID based: vendor + bdev name.
                    let mut t10 = VENDOR_ID.to_vec();
                    t10.extend_from_slice(self.bdev_name.as_bytes());
                    t10.truncate(252);
                    d.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
                    d.extend_from_slice(&t10);
                }
                0xb0 => {
                    let bs = u64::from(bdev.block_size().max(1));
                    let mut p = [0u8; 0x3c];
                    // WSNZ = 0: WRITE SAME with 0 blocks runs to the end of the medium.
                    p[1] = MAX_CAW_BLOCKS;
                    p[2..4].copy_from_slice(&1u16.to_be_bytes());
                    let max = (MAX_TRANSFER_BYTES / bs) as u32;
                    p[4..8].copy_from_slice(&max.to_be_bytes());
                    p[8..12].copy_from_slice(&max.to_be_bytes());
                    if self.thin(desc) {
                        p[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
                        p[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                        p[24..28].copy_from_slice(&1u32.to_be_bytes());
                    }
                    // MAXIMUM WRITE SAME LENGTH 0: no limit (written in chunks).
                    // WRITE ATOMIC(16): up to the maximum transfer length,
                    // any alignment and granularity, no atomic boundary.
                    p[40..44].copy_from_slice(&max.min(0xffff).to_be_bytes());
                    d.extend_from_slice(&p);
                }
                0xb1 => {
                    let mut p = [0u8; 0x3c];
                    p[1] = 1; // non-rotating medium
                    d.extend_from_slice(&p);
                }
                0xb2 => {
                    let mut p = [0u8; 4];
                    if self.thin(desc) {
                        p[1] = 0x80 | 0x40 | 0x20 | if self.lbprz(desc) { 0x04 } else { 0 };
                        p[2] = 0x02; // thin provisioned
                    }
                    d.extend_from_slice(&p);
                }
                _ => return check(Sense::INVALID_FIELD_IN_CDB),
            }
            let len = (d.len() - 4) as u16;
            d[2..4].copy_from_slice(&len.to_be_bytes());
            d
        };
        d.truncate(alloc);
        good(d)
    }

    fn thin(&self, desc: &BdevDesc) -> bool {
        desc.bdev().io_type_supported(IoType::Unmap)
    }

    fn lbprz(&self, desc: &BdevDesc) -> bool {
        matches!(desc.bdev().module_name(), "malloc" | "null")
    }

    fn read_capacity10(&self, desc: &BdevDesc) -> ScsiResult {
        let last = desc.bdev().num_blocks().saturating_sub(1);
        let mut d = Vec::with_capacity(8);
        d.extend_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
        d.extend_from_slice(&desc.bdev().block_size().to_be_bytes());
        good(d)
    }

    fn read_capacity16(&self, cdb: &Cdb, desc: &BdevDesc) -> ScsiResult {
        let alloc = cdb.u32(10) as usize;
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&desc.bdev().num_blocks().saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&desc.bdev().block_size().to_be_bytes());
        // One logical block per physical block (LBPPBE 0): reporting 4 KiB
        // physical blocks for 512 B LUNs would unskip five libiscsi tests
        // but one of them (GetLBAStatus.UnmapSingle) then expects the first
        // descriptor to start at the next physical block, not at the
        // requested LBA as SBC-4 says.
        if self.thin(desc) {
            d[14] = 0x80 | if self.lbprz(desc) { 0x40 } else { 0 };
        }
        d.truncate(alloc);
        good(d)
    }

    fn get_lba_status(&self, cdb: &Cdb, desc: &BdevDesc) -> ScsiResult {
        let lba = cdb.u64(2);
        let alloc = cdb.u32(10) as usize;
        let nb = desc.bdev().num_blocks();
        if lba >= nb {
            return check(Sense::LBA_OUT_OF_RANGE);
        }
        let mut d = vec![0u8; 24];
        d[0..4].copy_from_slice(&20u32.to_be_bytes());
        d[8..16].copy_from_slice(&lba.to_be_bytes());
        let n = u32::try_from(nb - lba).unwrap_or(u32::MAX);
        d[16..20].copy_from_slice(&n.to_be_bytes());
        d.truncate(alloc);
        good(d)
    }

    fn mode_sense(&self, cdb: &Cdb, desc: &BdevDesc) -> ScsiResult {
        let ten = cdb.opcode() == 0x5a;
        let dbd = cdb.u8(1) & 0x08 != 0;
        let llbaa = ten && cdb.u8(1) & 0x10 != 0;
        let pc = cdb.u8(2) >> 6;
        let page = cdb.u8(2) & 0x3f;
        let subpage = cdb.u8(3);
        let alloc = if ten {
            usize::from(cdb.u16(7))
        } else {
            usize::from(cdb.u8(4))
        };
        if pc == 3 {
            return check(Sense::SAVING_NOT_SUPPORTED);
        }
        let changeable = pc == 1;
        let mut pages = Vec::new();
        let wce = desc.bdev().props().write_cache;
        let caching = |p: &mut Vec<u8>| {
            let mut c = [0u8; 20];
            c[0] = 0x08;
            c[1] = 0x12;
            if !changeable && wce {
                c[2] = 0x04;
            }
            p.extend_from_slice(&c);
        };
        let control = |p: &mut Vec<u8>| {
            let mut c = [0u8; 12];
            c[0] = 0x0a;
            c[1] = 0x0a;
            if !changeable {
                c[3] = 0x10; // QAM: unrestricted reordering
                c[8] = 0xff;
                c[9] = 0xff;
            }
            p.extend_from_slice(&c);
        };
        let iec = |p: &mut Vec<u8>| {
            let mut c = [0u8; 12];
            c[0] = 0x1c;
            c[1] = 0x0a;
            p.extend_from_slice(&c);
        };
        match (page, subpage) {
            (0x08, 0 | 0xff) => caching(&mut pages),
            (0x0a, 0 | 0xff) => control(&mut pages),
            (0x1c, 0 | 0xff) => iec(&mut pages),
            (0x3f, 0 | 0xff) => {
                caching(&mut pages);
                control(&mut pages);
                iec(&mut pages);
            }
            _ => return check(Sense::INVALID_FIELD_IN_CDB),
        }
        let nb = desc.bdev().num_blocks();
        let bs = desc.bdev().block_size();
        let mut bd = Vec::new();
        if !dbd {
            if llbaa {
                bd.extend_from_slice(&nb.to_be_bytes());
                bd.extend_from_slice(&[0, 0, 0, 0]);
                bd.extend_from_slice(&bs.to_be_bytes());
            } else {
                let n = if nb > 0xff_ffff { 0xff_ffff } else { nb as u32 };
                bd.extend_from_slice(&n.to_be_bytes());
                bd.extend_from_slice(&bs.to_be_bytes());
                bd[4] = 0;
            }
        }
        let dev_specific = 0x10; // DPOFUA
        let mut d = if ten {
            let mut h = vec![0u8; 8];
            h[3] = dev_specific;
            h[4] = u8::from(llbaa && !dbd);
            h[6..8].copy_from_slice(&(bd.len() as u16).to_be_bytes());
            h
        } else {
            vec![0, 0, dev_specific, bd.len() as u8]
        };
        d.extend_from_slice(&bd);
        d.extend_from_slice(&pages);
        if ten {
            let l = (d.len() - 2) as u16;
            d[0..2].copy_from_slice(&l.to_be_bytes());
        } else {
            d[0] = (d.len() - 1) as u8;
        }
        d.truncate(alloc);
        good(d)
    }

    fn read(self: &Arc<Self>, cdb: &Cdb, desc: &Arc<BdevDesc>, done: Done) {
        let Some((lba, n)) = cdb.lba_len() else {
            return done.call(check(Sense::INVALID_OPCODE));
        };
        if cdb.bytes().len() > 6 && cdb.u8(1) & 0xe0 != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB)); // RDPROTECT without protection
        }
        if let Err(r) = range_ok(desc, lba, u64::from(n)) {
            return done.call(r);
        }
        if n == 0 {
            return done.call(good(Vec::new()));
        }
        let bs = u64::from(desc.bdev().block_size());
        if u64::from(n) * bs > MAX_TRANSFER_BYTES {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let len = (u64::from(n) * bs) as usize;
        let read = move |me: &Arc<Self>, desc: &Arc<BdevDesc>, buf, done: Done| match buf {
            Ok(buf) => me.data_io(
                desc,
                IoType::Read,
                buf,
                DataBuf::empty(),
                lba,
                u64::from(n),
                done,
                None,
            ),
            Err(e) => done.call(no_dma(&e)),
        };
        match DataBuf::dma_now(len) {
            Some(buf) => read(self, desc, buf, done),
            None => {
                // iobuf is exhausted: wait for a buffer (only then are the
                // LUN and descriptor references cloned into the waiter).
                let (me, desc) = (self.clone(), desc.clone());
                DataBuf::dma_then(len, move |buf| read(&me, &desc, buf, done));
            }
        }
    }

    fn write(self: &Arc<Self>, cdb: &Cdb, desc: &Arc<BdevDesc>, data: &[u8], done: Done) {
        let Some((lba, n)) = cdb.lba_len() else {
            return done.call(check(Sense::INVALID_OPCODE));
        };
        if cdb.bytes().len() > 6 && cdb.u8(1) & 0xe0 != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB)); // WRPROTECT without protection
        }
        if let Err(r) = range_ok(desc, lba, u64::from(n)) {
            return done.call(r);
        }
        if n == 0 {
            return done.call(good(Vec::new()));
        }
        let bs = u64::from(desc.bdev().block_size());
        let len = u64::from(n) * bs;
        if len > MAX_TRANSFER_BYTES {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        // Write what the initiator sent, in whole blocks, at most the CDB's
        // transfer length; the transport reports the residual.
        let blocks = (data.len() as u64 / bs).min(u64::from(n));
        if blocks == 0 {
            let mut r = good(Vec::new());
            r.data_out_len = Some(len);
            return done.call(r);
        }
        let src = &data[..(blocks * bs) as usize];
        let write = move |me: &Arc<Self>, desc: &Arc<BdevDesc>, buf: DataBuf, done: Done| {
            me.data_io(
                desc,
                IoType::Write,
                buf,
                DataBuf::empty(),
                lba,
                blocks,
                done,
                Some(len),
            )
        };
        // The initiator's data is borrowed for this call only: copy it into
        // DMA memory now, or (iobuf exhausted) keep a heap copy until a
        // buffer is free (only then are the LUN and descriptor references
        // cloned into the waiter).
        match DataBuf::dma_now(src.len()) {
            Some(Ok(mut buf)) => {
                buf.copy_from_slice(src);
                write(self, desc, buf, done)
            }
            Some(Err(e)) => done.call(no_dma(&e)),
            None => {
                let held = bufpool::copy_of(src);
                let (me, desc) = (self.clone(), desc.clone());
                DataBuf::dma_then(held.len(), move |buf| match buf {
                    Ok(mut buf) => {
                        buf.copy_from_slice(&held);
                        bufpool::put(held);
                        write(&me, &desc, buf, done)
                    }
                    Err(e) => {
                        bufpool::put(held);
                        done.call(no_dma(&e))
                    }
                });
            }
        }
    }

    fn verify(self: &Arc<Self>, cdb: &Cdb, desc: &Arc<BdevDesc>, data: &[u8], done: Done) {
        let (lba, n) = match cdb.opcode() {
            0x2f => (u64::from(cdb.u32(2)), u64::from(cdb.u16(7))),
            0xaf => (u64::from(cdb.u32(2)), u64::from(cdb.u32(6))),
            _ => (cdb.u64(2), u64::from(cdb.u32(10))),
        };
        if cdb.u8(1) & 0xe0 != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let bytchk = (cdb.u8(1) >> 1) & 3;
        if let Err(r) = range_ok(desc, lba, n) {
            return done.call(r);
        }
        if n == 0 {
            return done.call(good(Vec::new()));
        }
        let bs = u64::from(desc.bdev().block_size());
        if n * bs > MAX_TRANSFER_BYTES {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        match bytchk {
            0 => {
                // Medium verification: read it.
                let buf = vec![0u8; (n * bs) as usize];
                self.data_io(
                    desc,
                    IoType::Read,
                    buf.into(),
                    DataBuf::empty(),
                    lba,
                    n,
                    Callback::new(|mut r: ScsiResult| {
                        r.data.clear();
                        done.call(r)
                    }),
                    None,
                )
            }
            1 => {
                let mut buf = data.to_vec();
                buf.resize((n * bs) as usize, 0);
                self.data_io(
                    desc,
                    IoType::Compare,
                    buf.into(),
                    DataBuf::empty(),
                    lba,
                    n,
                    done,
                    None,
                )
            }
            _ => done.call(check(Sense::INVALID_FIELD_IN_CDB)),
        }
    }

    fn sync_cache(self: &Arc<Self>, cdb: &Cdb, desc: &Arc<BdevDesc>, done: Done) {
        let (lba, n) = if cdb.opcode() == 0x35 {
            (u64::from(cdb.u32(2)), u64::from(cdb.u16(7)))
        } else {
            (cdb.u64(2), u64::from(cdb.u32(10)))
        };
        if let Err(r) = range_ok(desc, lba, n) {
            return done.call(r);
        }
        let nb = desc.bdev().num_blocks();
        let n = if n == 0 { nb - lba } else { n };
        if !desc.bdev().io_type_supported(IoType::Flush) || n == 0 {
            return done.call(good(Vec::new()));
        }
        self.chain(desc.clone(), vec![Op::NoData(IoType::Flush, lba, n)], done);
    }

    fn unmap(self: &Arc<Self>, cdb: &Cdb, desc: &Arc<BdevDesc>, data: &[u8], done: Done) {
        if cdb.u8(1) & 1 != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB)); // ANCHOR
        }
        let plen = usize::from(cdb.u16(7));
        if plen == 0 {
            return done.call(good(Vec::new()));
        }
        if plen < 8 || data.len() < plen.min(8) {
            return done.call(check(Sense::PARAM_LIST_LENGTH));
        }
        let data = &data[..plen.min(data.len())];
        let bdl = usize::from(u16::from_be_bytes([data[2], data[3]]));
        let descs = &data[8..(8 + bdl).min(data.len())];
        if descs.len() / 16 > MAX_UNMAP_DESCRIPTORS as usize {
            return done.call(check(Sense::INVALID_FIELD_IN_PARAM));
        }
        let mut ops = Vec::new();
        for d in descs.chunks_exact(16) {
            let lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or([0; 8]));
            let n = u64::from(u32::from_be_bytes(d[8..12].try_into().unwrap_or([0; 4])));
            if n > u64::from(MAX_UNMAP_BLOCKS) {
                return done.call(check(Sense::INVALID_FIELD_IN_PARAM));
            }
            if n == 0 {
                if lba > desc.bdev().num_blocks() {
                    return done.call(check(Sense::LBA_OUT_OF_RANGE));
                }
                continue;
            }
            if let Err(r) = range_ok(desc, lba, n) {
                return done.call(r);
            }
            ops.push(Op::NoData(IoType::Unmap, lba, n));
        }
        if !self.thin(desc) {
            return done.call(check(Sense::INVALID_OPCODE));
        }
        self.chain(desc.clone(), ops, done);
    }

    fn write_same(self: &Arc<Self>, cdb: &Cdb, desc: &Arc<BdevDesc>, data: &[u8], done: Done) {
        let ten = cdb.opcode() == 0x41;
        let flags = cdb.u8(1);
        let (lba, n) = if ten {
            (u64::from(cdb.u32(2)), u64::from(cdb.u16(7)))
        } else {
            (cdb.u64(2), u64::from(cdb.u32(10)))
        };
        let unmap = flags & 0x08 != 0;
        let ndob = !ten && flags & 0x01 != 0;
        if flags & 0xe0 != 0 || flags & 0x10 != 0 || (ten && flags & 0x01 != 0) {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB)); // WRPROTECT, ANCHOR, obsolete bit
        }
        let nb = desc.bdev().num_blocks();
        if n == 0 {
            // To the end of the medium (WSNZ is 0).
            if lba > nb {
                return done.call(check(Sense::LBA_OUT_OF_RANGE));
            }
            if lba == nb {
                return done.call(good(Vec::new()));
            }
        }
        let n = if n == 0 { nb - lba } else { n };
        if let Err(r) = range_ok(desc, lba, n) {
            return done.call(r);
        }
        let bs = desc.bdev().block_size() as usize;
        if !ndob && data.len() != bs {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let block: Vec<u8> = if ndob {
            vec![0u8; bs]
        } else {
            let mut b = data.get(..bs).unwrap_or(data).to_vec();
            b.resize(bs, 0);
            b
        };
        let zero = block.iter().all(|&b| b == 0);
        let mut ops = Vec::new();
        if unmap && self.thin(desc) {
            // UNMAP set: deallocate (the data-out block is not written).
            ops.push(Op::NoData(IoType::Unmap, lba, n));
        } else if zero && desc.bdev().io_type_supported(IoType::WriteZeroes) {
            ops.push(Op::NoData(IoType::WriteZeroes, lba, n));
        } else {
            let chunk = (1u64 << 20) / bs as u64;
            let chunk = chunk.min(n).max(1);
            let mut pat = Vec::with_capacity(chunk as usize * bs);
            for _ in 0..chunk {
                pat.extend_from_slice(&block);
            }
            let pat = Rc::new(pat);
            let mut off = 0;
            while off < n {
                let m = chunk.min(n - off);
                ops.push(Op::Write(pat.clone(), lba + off, m));
                off += m;
            }
        }
        self.chain(desc.clone(), ops, done);
    }

    fn compare_and_write(
        self: &Arc<Self>,
        cdb: &Cdb,
        desc: &Arc<BdevDesc>,
        data: &[u8],
        done: Done,
    ) {
        let lba = cdb.u64(2);
        let n = u64::from(cdb.u8(13));
        if cdb.u8(1) & 0xe0 != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        if n == 0 {
            // No blocks but data sent (a 256-block request wraps to 0).
            return done.call(if data.is_empty() {
                good(Vec::new())
            } else {
                check(Sense::INVALID_FIELD_IN_CDB)
            });
        }
        if n > u64::from(MAX_CAW_BLOCKS) {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        if let Err(r) = range_ok(desc, lba, n) {
            return done.call(r);
        }
        let len = (n * u64::from(desc.bdev().block_size())) as usize;
        if data.len() != 2 * len {
            // The Data-Out must hold exactly the verify and write data.
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let mut cmp = data.get(..len).unwrap_or(&[]).to_vec();
        cmp.resize(len, 0);
        let mut wr = data.get(len..).unwrap_or(&[]).to_vec();
        wr.truncate(len);
        wr.resize(len, 0);
        if desc.bdev().io_type_supported(IoType::CompareAndWrite) {
            self.data_io(
                desc,
                IoType::CompareAndWrite,
                wr.into(),
                cmp.into(),
                lba,
                n,
                done,
                None,
            );
        } else {
            let me = self.clone();
            let d2 = desc.clone();
            self.data_io(
                desc,
                IoType::Compare,
                cmp.into(),
                DataBuf::empty(),
                lba,
                n,
                Callback::new(move |r: ScsiResult| {
                    if r.status != status::GOOD {
                        return done.call(r);
                    }
                    me.data_io(
                        &d2,
                        IoType::Write,
                        wr.into(),
                        DataBuf::empty(),
                        lba,
                        n,
                        done,
                        None,
                    );
                }),
                None,
            );
        }
    }

    fn write_atomic(self: &Arc<Self>, cdb: &Cdb, desc: &Arc<BdevDesc>, data: &[u8], done: Done) {
        let lba = cdb.u64(2);
        let boundary = cdb.u16(10);
        let n = u64::from(cdb.u16(12));
        if cdb.u8(1) & 0xe0 != 0 || boundary != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let bs = u64::from(desc.bdev().block_size());
        if n * bs > MAX_TRANSFER_BYTES {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        if let Err(r) = range_ok(desc, lba, n) {
            return done.call(r);
        }
        if n == 0 {
            return done.call(good(Vec::new()));
        }
        let len = n * bs;
        if (data.len() as u64) < len {
            // Atomic: all or nothing.
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let buf = data[..len as usize].to_vec();
        self.data_io(
            desc,
            IoType::Write,
            buf.into(),
            DataBuf::empty(),
            lba,
            n,
            done,
            None,
        );
    }

    fn or_write(self: &Arc<Self>, cdb: &Cdb, desc: &Arc<BdevDesc>, data: &[u8], done: Done) {
        let lba = cdb.u64(2);
        let n = u64::from(cdb.u32(10));
        if cdb.u8(1) & 0xe0 != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB)); // ORPROTECT
        }
        if let Err(r) = range_ok(desc, lba, n) {
            return done.call(r);
        }
        if n == 0 {
            return done.call(good(Vec::new()));
        }
        let bs = u64::from(desc.bdev().block_size());
        let len = n * bs;
        if len > MAX_TRANSFER_BYTES {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let mut mask = data.get(..len as usize).unwrap_or(data).to_vec();
        mask.resize(len as usize, 0);
        let me = self.clone();
        let d2 = desc.clone();
        self.data_io(
            desc,
            IoType::Read,
            vec![0u8; len as usize].into(),
            DataBuf::empty(),
            lba,
            n,
            Callback::new(move |r: ScsiResult| {
                if r.status != status::GOOD {
                    return done.call(r);
                }
                let mut cur = r.data;
                for (c, m) in cur.iter_mut().zip(mask.iter()) {
                    *c |= *m;
                }
                me.data_io(
                    &d2,
                    IoType::Write,
                    cur,
                    DataBuf::empty(),
                    lba,
                    n,
                    done,
                    None,
                );
            }),
            None,
        );
    }

    /// Submits one data I/O with owned buffers; `done` gets the data of a
    /// read, nothing otherwise, and `data_out_len` in
    /// [`ScsiResult::data_out_len`]. The buffers of a write go back to
    /// [`bufpool`]; a read's travels on in the result (the transport gives
    /// it back once sent).
    #[allow(clippy::too_many_arguments)]
    fn data_io(
        self: &Arc<Self>,
        desc: &Arc<BdevDesc>,
        io_type: IoType,
        mut buf: DataBuf,
        mut cmp: DataBuf,
        lba: u64,
        n: u64,
        done: Done,
        data_out_len: Option<u64>,
    ) {
        let finish = move |done: Done, mut r: ScsiResult| {
            if data_out_len.is_some() {
                r.data_out_len = data_out_len;
            }
            done.call(r)
        };
        let ch = match self.channel(desc) {
            Ok(c) => c,
            Err(e) => return finish(done, bdev_err(&e)),
        };
        let iov = [IoVec::new(buf.as_mut_ptr(), buf.len())];
        let cmp_iov = [IoVec::new(cmp.as_mut_ptr(), cmp.len())];
        let cmp_iovs: &[IoVec] = if cmp.is_empty() { &[] } else { &cmp_iov };
        // The slot is reused from this thread's free list: no allocation
        // per I/O in steady state.
        let slot = IoSlot::take();
        *slot.borrow_mut() = Some((done, buf, cmp));
        let s2 = slot.clone();
        // SAFETY: the buffers are owned by `slot` and neither moved nor
        // touched (moving a Vec keeps its heap allocation) until the
        // callback runs, or the submission fails and drops it unrun.
        let r = unsafe {
            ch.submit(desc, io_type, &iov, cmp_iovs, lba, n, move |st| {
                let taken = s2.borrow_mut().take();
                IoSlot::give(s2);
                if let Some((done, buf, cmp)) = taken {
                    drop(cmp);
                    let data = if io_type == IoType::Read {
                        buf
                    } else {
                        DataBuf::empty()
                    };
                    finish(done, io_result(st, io_type, data));
                }
            })
        };
        if let Err(e) = r {
            let taken = slot.borrow_mut().take();
            if let Some((done, buf, cmp)) = taken {
                drop((buf, cmp));
                finish(done, bdev_err(&e));
            }
        }
    }

    /// Runs `ops` one after the other; stops at the first failure.
    fn chain(self: &Arc<Self>, desc: Arc<BdevDesc>, mut ops: Vec<Op>, done: Done) {
        ops.reverse();
        self.chain_next(desc, ops, done);
    }

    fn chain_next(self: &Arc<Self>, desc: Arc<BdevDesc>, mut ops: Vec<Op>, done: Done) {
        let Some(op) = ops.pop() else {
            return done.call(good(Vec::new()));
        };
        let ch = match self.channel(&desc) {
            Ok(c) => c,
            Err(e) => return done.call(bdev_err(&e)),
        };
        let me = self.clone();
        let d2 = desc.clone();
        let slot: Slot<(Done, Vec<Op>)> = Rc::new(RefCell::new(Some((done, ops))));
        let s2 = slot.clone();
        let (io_type, keep) = match &op {
            Op::NoData(t, ..) => (*t, None),
            Op::Write(p, ..) => (IoType::Write, Some(p.clone())),
        };
        let cb = move |st: IoStatus| {
            drop(keep);
            if let Some((done, ops)) = s2.borrow_mut().take() {
                if st.is_ok() {
                    me.chain_next(d2, ops, done);
                } else {
                    done.call(io_result(st, io_type, DataBuf::empty()));
                }
            }
        };
        let r = match op {
            Op::NoData(t, lba, n) => ch.submit_nodata(&desc, t, lba, n, cb),
            Op::Write(p, lba, n) => {
                let iov = [IoVec::new(p.as_ptr() as *mut u8, p.len())];
                // SAFETY: the pattern is kept alive by the callback's `keep`
                // clone and is only read by a write I/O.
                unsafe { ch.writev(&desc, &iov, lba, n, cb) }
            }
        };
        if let Err(e) = r {
            let taken = slot.borrow_mut().take();
            if let Some((done, _)) = taken {
                done.call(bdev_err(&e));
            }
        }
    }
}

fn range_ok(desc: &BdevDesc, lba: u64, n: u64) -> Result<(), ScsiResult> {
    let nb = desc.bdev().num_blocks();
    match lba.checked_add(n) {
        Some(end) if end <= nb && lba < nb.max(1) && (lba < nb || n == 0) => Ok(()),
        _ => Err(check(Sense::LBA_OUT_OF_RANGE)),
    }
}

/// Standard INQUIRY data for peripheral byte `periph`.
pub fn standard_inquiry(periph: u8, product: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 96];
    d[0] = periph;
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HiSup, response data format 2
    d[4] = 96 - 5;
    d[7] = 0x02; // CmdQue
    d[8..16].copy_from_slice(VENDOR_ID);
    let mut p = [b' '; 16];
    for (i, b) in product.iter().take(16).enumerate() {
        p[i] = if b.is_ascii_graphic() || *b == b' ' {
            *b
        } else {
            b' '
        };
    }
    d[16..32].copy_from_slice(&p);
    d[32..36].copy_from_slice(b"0001");
    // Version descriptors: SAM-5, SPC-4, SBC-3, iSCSI.
    for (i, v) in [0x00a0u16, 0x0460, 0x04c0, 0x0960].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

fn mode_select(cdb: &Cdb, data: &[u8]) -> ScsiResult {
    let ten = cdb.opcode() == 0x55;
    let plen = if ten {
        usize::from(cdb.u16(7))
    } else {
        usize::from(cdb.u8(4))
    };
    if cdb.u8(1) & 0x01 != 0 {
        return check(Sense::INVALID_FIELD_IN_CDB); // SP: saving not supported
    }
    if plen == 0 {
        return good(Vec::new());
    }
    let hdr = if ten { 8 } else { 4 };
    if data.len() < plen || plen < hdr {
        return check(Sense::PARAM_LIST_LENGTH);
    }
    good(Vec::new())
}

/// Commands listed by REPORT SUPPORTED OPERATION CODES: (opcode, service action, cdb length).
const SUPPORTED: &[(u8, Option<u16>, u16)] = &[
    (0x00, None, 6),
    (0x03, None, 6),
    (0x08, None, 6),
    (0x0a, None, 6),
    (0x12, None, 6),
    (0x15, None, 6),
    (0x16, None, 6),
    (0x17, None, 6),
    (0x1a, None, 6),
    (0x1b, None, 6),
    (0x1e, None, 6),
    (0x25, None, 10),
    (0x28, None, 10),
    (0x2a, None, 10),
    (0x2e, None, 10),
    (0x2f, None, 10),
    (0x34, None, 10),
    (0x35, None, 10),
    (0x41, None, 10),
    (0x42, None, 10),
    (0x55, None, 10),
    (0x56, None, 10),
    (0x57, None, 10),
    (0x5a, None, 10),
    (0x5e, Some(0), 10),
    (0x5e, Some(1), 10),
    (0x5e, Some(2), 10),
    (0x5e, Some(3), 10),
    (0x5f, Some(0), 10),
    (0x5f, Some(1), 10),
    (0x5f, Some(2), 10),
    (0x5f, Some(3), 10),
    (0x5f, Some(4), 10),
    (0x5f, Some(5), 10),
    (0x5f, Some(6), 10),
    (0x37, None, 10),
    (0x88, None, 16),
    (0x8b, None, 16),
    (0x9c, None, 16),
    (0xb7, None, 12),
    (0x89, None, 16),
    (0x8a, None, 16),
    (0x8e, None, 16),
    (0x8f, None, 16),
    (0x90, None, 16),
    (0x91, None, 16),
    (0x93, None, 16),
    (0x9e, Some(0x10), 16),
    (0x9e, Some(0x12), 16),
    (0xa0, None, 12),
    (0xa3, Some(0x0c), 12),
    (0xa8, None, 12),
    (0xaa, None, 12),
    (0xae, None, 12),
    (0xaf, None, 12),
];

fn usage_bitmap(op: u8, len: u16, sa: Option<u16>) -> Vec<u8> {
    let mut u = vec![0xffu8; usize::from(len)];
    u[0] = op;
    if let Some(sa) = sa {
        u[1] = 0xe0 | (sa as u8 & 0x1f);
    }
    if let Some(last) = u.last_mut() {
        *last = 0x07;
    }
    u
}

fn report_opcodes(cdb: &Cdb) -> ScsiResult {
    let rctd = cdb.u8(2) & 0x80 != 0;
    let opt = cdb.u8(2) & 0x07;
    let req_op = cdb.u8(3);
    let req_sa = cdb.u16(4);
    let alloc = cdb.u32(6) as usize;
    let timeouts = |d: &mut Vec<u8>| {
        if rctd {
            d.extend_from_slice(&[0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
    };
    let mut d;
    match opt {
        0 => {
            d = vec![0u8; 4];
            for &(op, sa, len) in SUPPORTED {
                d.push(op);
                d.push(0);
                d.extend_from_slice(&sa.unwrap_or(0).to_be_bytes());
                d.push(0);
                d.push(u8::from(sa.is_some()) | if rctd { 0x02 } else { 0 });
                d.extend_from_slice(&len.to_be_bytes());
                timeouts(&mut d);
            }
            let l = (d.len() - 4) as u32;
            d[0..4].copy_from_slice(&l.to_be_bytes());
        }
        1..=3 => {
            let has_sa = SUPPORTED
                .iter()
                .any(|&(o, s, _)| o == req_op && s.is_some());
            if (opt == 1 && has_sa)
                || (opt == 2 && !has_sa && SUPPORTED.iter().any(|&(o, _, _)| o == req_op))
            {
                return check(Sense::INVALID_FIELD_IN_CDB.with_field(2));
            }
            let found = SUPPORTED.iter().find(|&&(o, s, _)| {
                o == req_op
                    && (opt == 1 || s.is_none() || s == Some(req_sa))
                    && !(opt != 1 && s.is_some() && s != Some(req_sa))
            });
            d = vec![0u8; 4];
            match found {
                Some(&(op, sa, len)) => {
                    d[1] = 0x03 | if rctd { 0x80 } else { 0 };
                    d[2..4].copy_from_slice(&len.to_be_bytes());
                    d.extend_from_slice(&usage_bitmap(op, len, sa));
                    timeouts(&mut d);
                }
                None => d[1] = 0x01,
            }
        }
        _ => return check(Sense::INVALID_FIELD_IN_CDB),
    }
    d.truncate(alloc);
    good(d)
}

/// How a command touches the medium, for reservation checks.
fn access_of(cdb: &Cdb) -> Access {
    match cdb.opcode() {
        0x08 | 0x28 | 0xa8 | 0x88 | 0x2f | 0xaf | 0x8f | 0x34 | 0x90 => Access::Read,
        0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x35 | 0x91 | 0x42 | 0x41 | 0x93
        | 0x89 | 0x15 | 0x55 => Access::Write,
        0x12 | 0xa0 | 0x03 | 0x5e | 0x5f | 0x25 | 0xa3 => Access::Always,
        0x9e if cdb.service_action() == 0x10 => Access::Always,
        0x16 | 0x56 | 0x17 | 0x57 => Access::Scsi2,
        _ => Access::Other,
    }
}

/// READ DEFECT DATA(10)/(12): no defects, in the format asked for.
fn read_defect_data(cdb: &Cdb) -> ScsiResult {
    let ten = cdb.opcode() == 0x37;
    let (flags, alloc) = if ten {
        (cdb.u8(2), usize::from(cdb.u16(7)))
    } else {
        (cdb.u8(1), cdb.u32(6) as usize)
    };
    let mut d = if ten { vec![0u8; 4] } else { vec![0u8; 8] };
    d[1] = flags & 0x1f;
    d.truncate(alloc);
    good(d)
}
