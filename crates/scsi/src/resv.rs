//! Reservations: SPC-2 RESERVE/RELEASE and SPC-4 persistent reservations
//! (registrations and the reservation are kept in memory, per LUN).

use crate::cdb::Cdb;
use crate::sense::{status, Sense};
use crate::ScsiResult;

/// How a command accesses the medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads the medium.
    Read,
    /// Changes the medium.
    Write,
    /// Always allowed (INQUIRY, REPORT LUNS, PR IN/OUT, ...).
    Always,
    /// RESERVE/RELEASE(6/10): checked by the command itself.
    Scsi2,
    /// Anything else: conflicts under exclusive access.
    Other,
}

/// Persistent reservation types.
mod pr_type {
    pub const WE: u8 = 1;
    pub const EA: u8 = 3;
    pub const WE_RO: u8 = 5;
    pub const EA_RO: u8 = 6;
    pub const WE_AR: u8 = 7;
    pub const EA_AR: u8 = 8;
}

#[derive(Debug, Clone)]
struct Registration {
    nexus: String,
    key: u64,
}

/// A LUN's reservation state.
#[derive(Debug, Default)]
pub struct Reservations {
    scsi2: Option<String>,
    generation: u32,
    regs: Vec<Registration>,
    /// (holder nexus, type); for all-registrants types the holder is any registrant.
    pr: Option<(String, u8)>,
}

fn ok() -> ScsiResult {
    ScsiResult {
        data_out_len: None,
        status: status::GOOD,
        sense: None,
        data: crate::DataBuf::empty(),
    }
}

fn conflict() -> ScsiResult {
    ScsiResult {
        data_out_len: None,
        status: status::RESERVATION_CONFLICT,
        sense: None,
        data: crate::DataBuf::empty(),
    }
}

fn all_registrants(t: u8) -> bool {
    t == pr_type::WE_AR || t == pr_type::EA_AR
}

impl Reservations {
    fn key_of(&self, nexus: &str) -> Option<u64> {
        self.regs.iter().find(|r| r.nexus == nexus).map(|r| r.key)
    }

    fn is_holder(&self, nexus: &str) -> bool {
        match &self.pr {
            Some((h, t)) => {
                if all_registrants(*t) {
                    self.key_of(nexus).is_some()
                } else {
                    h == nexus
                }
            }
            None => false,
        }
    }

    /// True if `nexus` may run a command of kind `access`.
    pub fn allows(&self, nexus: &str, access: Access, cdb: &Cdb) -> bool {
        if let Some(h) = &self.scsi2 {
            if h != nexus {
                return matches!(access, Access::Always | Access::Scsi2)
                    && !matches!(cdb.opcode(), 0x5e | 0x5f);
            }
            return true;
        }
        let Some((_, t)) = &self.pr else {
            return true;
        };
        if self.is_holder(nexus) || matches!(access, Access::Always | Access::Scsi2) {
            return true;
        }
        let registered = self.key_of(nexus).is_some();
        match *t {
            pr_type::WE => access == Access::Read || access == Access::Other,
            pr_type::EA => false,
            pr_type::WE_RO | pr_type::WE_AR => {
                registered || access == Access::Read || access == Access::Other
            }
            pr_type::EA_RO | pr_type::EA_AR => registered,
            _ => true,
        }
    }

    /// RESERVE(6)/(10).
    pub fn reserve6(&mut self, nexus: &str) -> ScsiResult {
        if !self.regs.is_empty() || self.pr.is_some() {
            return conflict();
        }
        match &self.scsi2 {
            Some(h) if h != nexus => conflict(),
            _ => {
                self.scsi2 = Some(nexus.to_string());
                ok()
            }
        }
    }

    /// RELEASE(6)/(10): releasing a reservation one does not hold is a no-op.
    pub fn release6(&mut self, nexus: &str) -> ScsiResult {
        if self.scsi2.as_deref() == Some(nexus) {
            self.scsi2 = None;
        }
        ok()
    }

    /// Nexus loss (logout, connection drop): SCSI-2 reservations go.
    pub fn nexus_lost(&mut self, nexus: &str) {
        if self.scsi2.as_deref() == Some(nexus) {
            self.scsi2 = None;
        }
    }

    /// LOGICAL UNIT RESET / TARGET RESET.
    pub fn reset(&mut self) {
        self.scsi2 = None;
    }

    /// PERSISTENT RESERVE IN.
    pub fn pr_in(&self, cdb: &Cdb) -> ScsiResult {
        let alloc = usize::from(cdb.u16(7));
        let mut d = Vec::new();
        d.extend_from_slice(&self.generation.to_be_bytes());
        match cdb.service_action() {
            0 => {
                d.extend_from_slice(&((self.regs.len() * 8) as u32).to_be_bytes());
                for r in &self.regs {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            1 => match &self.pr {
                Some((h, t)) => {
                    d.extend_from_slice(&16u32.to_be_bytes());
                    let key = if all_registrants(*t) {
                        0
                    } else {
                        self.key_of(h).unwrap_or(0)
                    };
                    d.extend_from_slice(&key.to_be_bytes());
                    d.extend_from_slice(&[0, 0, 0, 0, 0, *t & 0x0f, 0, 0]);
                }
                None => d.extend_from_slice(&0u32.to_be_bytes()),
            },
            2 => {
                d = vec![
                    0,
                    8,
                    0x10 | 0x04,
                    0x80 | 0x10,
                    0x80 | 0x40 | 0x20 | 0x08 | 0x02,
                    0x01,
                    0,
                    0,
                ];
            }
            3 => {
                let mut body = Vec::new();
                for r in &self.regs {
                    let holder = self.is_holder(&r.nexus);
                    body.extend_from_slice(&r.key.to_be_bytes());
                    body.extend_from_slice(&[0, 0, 0, 0]);
                    body.push(if holder { 0x01 } else { 0 });
                    body.push(if holder {
                        self.pr.as_ref().map(|p| p.1 & 0x0f).unwrap_or(0)
                    } else {
                        0
                    });
                    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                    let name = r.nexus.split(",i,").next().unwrap_or(&r.nexus);
                    let mut tid = vec![0x05, 0, 0, 0];
                    tid.extend_from_slice(name.as_bytes());
                    tid.push(0);
                    while tid.len() % 4 != 0 {
                        tid.push(0);
                    }
                    let al = (tid.len() - 4) as u16;
                    tid[2..4].copy_from_slice(&al.to_be_bytes());
                    body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    body.extend_from_slice(&tid);
                }
                d.extend_from_slice(&(body.len() as u32).to_be_bytes());
                d.extend_from_slice(&body);
            }
            _ => return ScsiResult::check(Sense::INVALID_FIELD_IN_CDB),
        }
        d.truncate(alloc);
        ScsiResult {
            data_out_len: None,
            status: status::GOOD,
            sense: None,
            data: d.into(),
        }
    }

    /// PERSISTENT RESERVE OUT.
    pub fn pr_out(&mut self, nexus: &str, cdb: &Cdb, data: &[u8]) -> ScsiResult {
        let sa = cdb.service_action();
        let ty = cdb.u8(2) & 0x0f;
        let scope = cdb.u8(2) >> 4;
        let plen = cdb.u32(5) as usize;
        if sa > 7 {
            return ScsiResult::check(Sense::INVALID_FIELD_IN_CDB);
        }
        if plen != 24 || data.len() < 24 {
            return ScsiResult::check(Sense::PARAM_LIST_LENGTH);
        }
        let rk = u64::from_be_bytes(data[0..8].try_into().unwrap_or([0; 8]));
        let sak = u64::from_be_bytes(data[8..16].try_into().unwrap_or([0; 8]));
        let flags = data[20];
        if flags & (0x08 | 0x04) != 0 {
            return ScsiResult::check(Sense::INVALID_FIELD_IN_PARAM); // SPEC_I_PT, ALL_TG_PT
        }
        if self.scsi2.is_some() && self.scsi2.as_deref() != Some(nexus) {
            return conflict();
        }
        let mine = self.key_of(nexus);
        let type_ok = matches!(
            ty,
            pr_type::WE
                | pr_type::EA
                | pr_type::WE_RO
                | pr_type::EA_RO
                | pr_type::WE_AR
                | pr_type::EA_AR
        );
        match sa {
            0 | 6 => {
                // REGISTER / REGISTER AND IGNORE EXISTING KEY
                match mine {
                    None => {
                        if sa == 0 && rk != 0 {
                            return conflict();
                        }
                        if sak != 0 {
                            self.regs.push(Registration {
                                nexus: nexus.to_string(),
                                key: sak,
                            });
                        }
                    }
                    Some(k) => {
                        if sa == 0 && rk != k {
                            return conflict();
                        }
                        if sak == 0 {
                            self.unregister(nexus);
                        } else if let Some(r) = self.regs.iter_mut().find(|r| r.nexus == nexus) {
                            r.key = sak;
                        }
                    }
                }
                self.generation = self.generation.wrapping_add(1);
                ok()
            }
            1 => {
                if mine != Some(rk) {
                    return conflict();
                }
                if scope != 0 || !type_ok {
                    return ScsiResult::check(Sense::INVALID_FIELD_IN_CDB);
                }
                match &self.pr {
                    Some((_, t)) if self.is_holder(nexus) => {
                        if *t != ty {
                            return conflict();
                        }
                        ok()
                    }
                    Some(_) => conflict(),
                    None => {
                        self.pr = Some((nexus.to_string(), ty));
                        ok()
                    }
                }
            }
            2 => {
                if mine != Some(rk) {
                    return conflict();
                }
                match &self.pr {
                    Some((_, t)) if self.is_holder(nexus) => {
                        if *t != ty {
                            return ScsiResult::check(Sense::INVALID_RELEASE);
                        }
                        self.pr = None;
                        ok()
                    }
                    _ => ok(),
                }
            }
            3 => {
                if mine != Some(rk) {
                    return conflict();
                }
                self.regs.clear();
                self.pr = None;
                self.generation = self.generation.wrapping_add(1);
                ok()
            }
            4 | 5 => {
                if mine != Some(rk) {
                    return conflict();
                }
                if !type_ok || scope != 0 {
                    return ScsiResult::check(Sense::INVALID_FIELD_IN_CDB);
                }
                match self.pr.clone() {
                    Some((_, t)) if all_registrants(t) => {
                        if sak == 0 {
                            self.regs.retain(|r| r.nexus == nexus);
                            self.pr = Some((nexus.to_string(), ty));
                        } else {
                            self.regs.retain(|r| r.key != sak || r.nexus == nexus);
                        }
                    }
                    Some((h, _)) => {
                        let holder_key = self.key_of(&h);
                        if holder_key == Some(sak) {
                            self.regs.retain(|r| r.key != sak || r.nexus == nexus);
                            self.pr = Some((nexus.to_string(), ty));
                        } else {
                            if sak == 0 {
                                return ScsiResult::check(Sense::INVALID_FIELD_IN_PARAM);
                            }
                            if !self.regs.iter().any(|r| r.key == sak) {
                                return conflict();
                            }
                            self.regs.retain(|r| r.key != sak || r.nexus == nexus);
                        }
                    }
                    None => {
                        if sak == 0 {
                            return ScsiResult::check(Sense::INVALID_FIELD_IN_PARAM);
                        }
                        if !self.regs.iter().any(|r| r.key == sak) {
                            return conflict();
                        }
                        self.regs.retain(|r| r.key != sak || r.nexus == nexus);
                    }
                }
                self.generation = self.generation.wrapping_add(1);
                ok()
            }
            _ => ScsiResult::check(Sense::INVALID_FIELD_IN_CDB),
        }
    }

    fn unregister(&mut self, nexus: &str) {
        let was_holder = self.is_holder(nexus);
        self.regs.retain(|r| r.nexus != nexus);
        if let Some((_, t)) = &self.pr {
            if all_registrants(*t) {
                if self.regs.is_empty() {
                    self.pr = None;
                }
            } else if was_holder {
                self.pr = None;
            }
        }
    }
}
