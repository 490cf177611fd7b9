//! # rspdk_scsi — the SCSI layer (SPDK: lib/scsi)
//!
//! A [`ScsiDev`] is a named SCSI target device with LUNs ([`ScsiLun`]),
//! each backed by a bdev opened for writing. Transports (iSCSI) hand a
//! [`ScsiCommand`] — CDB, the data the initiator sent, the I_T nexus name —
//! to [`ScsiDev::execute`] and get a [`ScsiResult`]: status, sense, data
//! to return (the transport truncates it to the initiator's expected length
//! and reports the residual).
//!
//! Commands: TEST UNIT READY, REQUEST SENSE, INQUIRY (standard, VPD 0x00,
//! 0x80, 0x83, 0xB0, 0xB1, 0xB2), REPORT LUNS, READ CAPACITY 10/16, GET LBA
//! STATUS, REPORT SUPPORTED OPERATION CODES, MODE SENSE/SELECT 6/10 (caching,
//! control, informational exceptions), READ/WRITE 6/10/12/16, WRITE AND
//! VERIFY, VERIFY, SYNCHRONIZE CACHE 10/16, PRE-FETCH, UNMAP, WRITE SAME
//! 10/16, COMPARE AND WRITE, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL,
//! RESERVE/RELEASE 6/10, PERSISTENT RESERVE IN/OUT. Errors end with CHECK
//! CONDITION and fixed-format sense ([`Sense`]).
//!
//! Completions run on the calling thread, sometimes before `execute`
//! returns (commands that need no I/O): callers must not hold borrows the
//! callback needs.

pub mod bufpool;
mod cdb;
mod databuf;
mod lun;
mod resv;
mod sense;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub use cdb::{cdb_len, Cdb};
pub use databuf::{DataBuf, NoDmaMemory};
pub use lun::{release_thread_channels, standard_inquiry, Done, ScsiLun, VENDOR_ID};
pub use sense::{key, status, Sense};

/// Errors of the SCSI layer's management operations.
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    /// The bdev could not be opened.
    #[error("opening bdev '{bdev}': {source}")]
    Bdev {
        /// The bdev.
        bdev: String,
        /// Why.
        source: rspdk_bdev::BdevError,
    },
    /// The LUN id is in use.
    #[error("device '{dev}' already has LUN {lun}")]
    LunExists {
        /// The device.
        dev: String,
        /// The LUN.
        lun: u64,
    },
    /// No such LUN.
    #[error("device '{dev}' has no LUN {lun}")]
    NoLun {
        /// The device.
        dev: String,
        /// The LUN.
        lun: u64,
    },
    /// LUN id beyond what the device supports.
    #[error("LUN id {0} is out of range (0..{max})", max = MAX_LUNS)]
    LunRange(u64),
}

/// LUN ids a device supports (SPDK: SPDK_SCSI_DEV_MAX_LUN).
pub const MAX_LUNS: u64 = 1024;

/// A command to execute.
#[derive(Debug, Clone, Default)]
pub struct ScsiCommand {
    /// The CDB (at least as long as its opcode implies; more is ignored).
    pub cdb: Vec<u8>,
    /// Data the initiator sent (WRITE, UNMAP parameters, ...).
    pub data_out: Vec<u8>,
    /// The I_T nexus: the initiator port name (reservations key on it);
    /// shared, so a transport hands it over per command without allocating.
    pub nexus: std::sync::Arc<str>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResult {
    /// SCSI status ([`status`]).
    pub status: u8,
    /// Sense, with CHECK CONDITION.
    pub sense: Option<Sense>,
    /// Data for the initiator (before truncation to its expected length):
    /// DMA memory from iobuf for a READ, heap bytes for replies the SCSI
    /// layer builds.
    pub data: DataBuf,
    /// For commands that take data: the length the CDB asked for, when it
    /// may differ from what was sent (the transport reports the residual).
    pub data_out_len: Option<u64>,
}

impl ScsiResult {
    /// CHECK CONDITION with `sense`.
    pub fn check(sense: Sense) -> ScsiResult {
        ScsiResult {
            data_out_len: None,
            status: status::CHECK_CONDITION,
            sense: Some(sense),
            data: DataBuf::empty(),
        }
    }
}

/// A SCSI target device (SPDK: `spdk_scsi_dev`).
#[derive(Debug)]
pub struct ScsiDev {
    name: String,
    luns: RwLock<BTreeMap<u64, Arc<ScsiLun>>>,
    /// Bumped when the LUN inventory changes (add, remove, hot remove).
    generation: Arc<AtomicU64>,
    /// The inventory generation each I_T nexus last saw.
    seen: Mutex<HashMap<String, u64>>,
}

impl ScsiDev {
    /// A device without LUNs.
    pub fn new(name: &str) -> Arc<ScsiDev> {
        Arc::new(ScsiDev {
            name: name.to_string(),
            luns: RwLock::new(BTreeMap::new()),
            generation: Arc::new(AtomicU64::new(0)),
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds LUN `id` backed by `bdev`.
    pub fn add_lun(&self, id: u64, bdev: &str) -> Result<(), ScsiError> {
        if id >= MAX_LUNS {
            return Err(ScsiError::LunRange(id));
        }
        if self.lun(id).is_some() {
            return Err(ScsiError::LunExists {
                dev: self.name.clone(),
                lun: id,
            });
        }
        let lun = ScsiLun::new(id, bdev, self.generation.clone())?;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.luns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, lun);
        Ok(())
    }

    /// Removes LUN `id` (its descriptor closes).
    pub fn remove_lun(&self, id: u64) -> Result<(), ScsiError> {
        let l = self
            .luns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        match l {
            Some(l) => {
                l.hot_remove();
                self.generation.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            None => Err(ScsiError::NoLun {
                dev: self.name.clone(),
                lun: id,
            }),
        }
    }

    /// The LUN with this id.
    pub fn lun(&self, id: u64) -> Option<Arc<ScsiLun>> {
        self.luns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// `(lun id, bdev name)` of every LUN (not hot-removed), by id.
    pub fn luns(&self) -> Vec<(u64, String)> {
        self.luns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|l| !l.is_removed())
            .map(|l| (l.id(), l.bdev_name().to_string()))
            .collect()
    }

    /// Nexus loss on every LUN.
    pub fn release_nexus(&self, nexus: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(nexus);
        for l in self.luns.read().unwrap_or_else(|e| e.into_inner()).values() {
            l.release_nexus(nexus);
        }
    }

    /// Removes every LUN (device deletion).
    pub fn close(&self) {
        let all = std::mem::take(&mut *self.luns.write().unwrap_or_else(|e| e.into_inner()));
        for l in all.values() {
            l.hot_remove();
        }
    }

    /// Executes `cmd` on LUN `lun_id`. REPORT LUNS, and INQUIRY / REQUEST
    /// SENSE to a LUN that does not exist, are answered by the device.
    pub fn execute(&self, lun_id: u64, cmd: &ScsiCommand, done: Done) {
        let op = cmd.cdb.first().copied();
        // REPORTED LUNS DATA HAS CHANGED, once per nexus after the LUN
        // inventory changed; REPORT LUNS clears it, INQUIRY passes.
        let now = self.generation.load(Ordering::Acquire);
        let changed = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            // No allocation per command: the key is copied only for a new nexus.
            match seen.get_mut(&*cmd.nexus) {
                Some(s) if *s != now && op != Some(0x12) => {
                    *s = now;
                    op != Some(0xa0)
                }
                Some(_) => false,
                None => {
                    seen.insert(cmd.nexus.to_string(), now);
                    false
                }
            }
        };
        if changed {
            return done.call(ScsiResult::check(Sense::LUNS_CHANGED));
        }
        if op == Some(0xa0) {
            return done.call(self.report_luns(cmd));
        }
        let lun = self.lun(lun_id).filter(|l| !l.is_removed());
        match lun {
            Some(l) => l.execute(cmd, done),
            None => {
                let r = match op {
                    Some(0x12) => match Cdb::new(&cmd.cdb) {
                        Ok(c) if c.u8(1) & 1 == 0 && c.u8(2) == 0 => {
                            let mut d = standard_inquiry(0x7f, b"");
                            d.truncate(usize::from(c.u16(3)));
                            ScsiResult {
                                data_out_len: None,
                                status: status::GOOD,
                                sense: None,
                                data: d.into(),
                            }
                        }
                        _ => ScsiResult::check(Sense::LUN_NOT_SUPPORTED),
                    },
                    Some(0x03) => {
                        let mut d = Sense::LUN_NOT_SUPPORTED.fixed();
                        d.truncate(usize::from(cmd.cdb.get(4).copied().unwrap_or(0)));
                        ScsiResult {
                            data_out_len: None,
                            status: status::GOOD,
                            sense: None,
                            data: d.into(),
                        }
                    }
                    _ => ScsiResult::check(Sense::LUN_NOT_SUPPORTED),
                };
                done.call(r)
            }
        }
    }

    fn report_luns(&self, cmd: &ScsiCommand) -> ScsiResult {
        let cdb = match Cdb::new(&cmd.cdb) {
            Ok(c) => c,
            Err(s) => return ScsiResult::check(s),
        };
        let select = cdb.u8(2);
        let alloc = cdb.u32(6) as usize;
        if select > 2 && !(0x10..=0x12).contains(&select) {
            return ScsiResult::check(Sense::INVALID_FIELD_IN_CDB);
        }
        if alloc < 16 {
            return ScsiResult::check(Sense::INVALID_FIELD_IN_CDB);
        }
        let ids: Vec<u64> = if select == 1 || select >= 0x10 {
            Vec::new()
        } else {
            self.luns
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|l| !l.is_removed())
                .map(|l| l.id())
                .collect()
        };
        let mut d = vec![0u8; 8];
        d[0..4].copy_from_slice(&((ids.len() * 8) as u32).to_be_bytes());
        for id in ids {
            d.extend_from_slice(&encode_lun(id).to_be_bytes());
        }
        d.truncate(alloc);
        ScsiResult {
            data_out_len: None,
            status: status::GOOD,
            sense: None,
            data: d.into(),
        }
    }
}

/// SAM LUN encoding (peripheral addressing below 256, flat space above).
pub fn encode_lun(id: u64) -> u64 {
    if id < 256 {
        id << 48
    } else {
        (0x4000 | (id & 0x3fff)) << 48
    }
}

/// Decodes an 8-byte LUN field (peripheral or flat space addressing).
pub fn decode_lun(raw: u64) -> u64 {
    let top = (raw >> 48) as u16;
    match top >> 14 {
        0 => u64::from(top & 0xff),
        1 => u64::from(top & 0x3fff),
        _ => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding_round_trips() {
        for id in [0u64, 1, 255, 256, 1023] {
            assert_eq!(decode_lun(encode_lun(id)), id);
        }
    }
}
