//! LUNs backed by bdevs: the SPC/SBC command set. This file has the LUN
//! (bdev descriptor and per-thread channels, unit attentions,
//! reservations) and the command dispatch; `info.rs` the commands that
//! describe the LUN (INQUIRY, VPD pages, READ CAPACITY, MODE SENSE, ...),
//! `io.rs` the data commands (READ, WRITE, UNMAP, COMPARE AND WRITE, ...).

mod info;
mod io;

pub use info::standard_inquiry;
use info::{mode_select, read_defect_data, report_opcodes};
use io::range_ok;

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

#[cfg(test)]
mod tests;
