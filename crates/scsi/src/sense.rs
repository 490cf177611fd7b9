//! SCSI status codes and sense data (SPC-4 fixed format).

/// SCSI status byte values (SAM-5).
pub mod status {
    /// GOOD.
    pub const GOOD: u8 = 0x00;
    /// CHECK CONDITION: sense data follows.
    pub const CHECK_CONDITION: u8 = 0x02;
    /// BUSY: retry later.
    pub const BUSY: u8 = 0x08;
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    /// TASK SET FULL.
    pub const TASK_SET_FULL: u8 = 0x28;
    /// TASK ABORTED.
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys (SPC-4 table 48).
pub mod key {
    /// NO SENSE.
    pub const NO_SENSE: u8 = 0x0;
    /// NOT READY.
    pub const NOT_READY: u8 = 0x2;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// HARDWARE ERROR.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x7;
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: u8 = 0xb;
    /// MISCOMPARE.
    pub const MISCOMPARE: u8 = 0xe;
}

/// A sense condition: key, additional sense code and qualifier, and the
/// optional INFORMATION field (e.g. the miscompare offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field, if valid.
    pub info: Option<u32>,
    /// Sense-key specific field pointer into the CDB (byte), if valid.
    pub field: Option<u16>,
}

impl Sense {
    /// A sense condition without INFORMATION.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00);
    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00);
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x24, 0x00);
    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAM: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x00);
    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR.
    pub const PARAM_LIST_LENGTH: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x1a, 0x00);
    /// ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION.
    pub const INVALID_RELEASE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x04);
    /// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED.
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00);
    /// ILLEGAL REQUEST, SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00);
    /// MEDIUM ERROR, UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ: Sense = Sense::new(key::MEDIUM_ERROR, 0x11, 0x00);
    /// MEDIUM ERROR, WRITE ERROR.
    pub const WRITE_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x0c, 0x00);
    /// MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE: Sense = Sense::new(key::MISCOMPARE, 0x1d, 0x00);
    /// ABORTED COMMAND, INTERNAL TARGET FAILURE.
    pub const INTERNAL_FAILURE: Sense = Sense::new(key::ABORTED_COMMAND, 0x44, 0x00);
    /// ABORTED COMMAND, no additional sense.
    pub const ABORTED: Sense = Sense::new(key::ABORTED_COMMAND, 0x00, 0x00);
    /// NOT READY, LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE.
    pub const NOT_READY: Sense = Sense::new(key::NOT_READY, 0x04, 0x00);
    /// UNIT ATTENTION, REPORTED LUNS DATA HAS CHANGED.
    pub const LUNS_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x3f, 0x0e);

    /// With the INFORMATION field set.
    pub const fn with_info(mut self, info: u32) -> Sense {
        self.info = Some(info);
        self
    }

    /// With the sense-key specific field pointer set to CDB byte `byte`.
    pub const fn with_field(mut self, byte: u16) -> Sense {
        self.field = Some(byte);
        self
    }

    /// Fixed-format sense data (response code 0x70, 18 bytes).
    pub fn fixed(&self) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        if let Some(i) = self.info {
            s[0] |= 0x80;
            s[3..7].copy_from_slice(&i.to_be_bytes());
        }
        s[2] = self.key & 0x0f;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        if let Some(f) = self.field {
            s[15] = 0x80 | 0x40; // SKSV, C/D = CDB
            s[16..18].copy_from_slice(&f.to_be_bytes());
        }
        s
    }

    /// Descriptor-format sense data (response code 0x72).
    pub fn descriptor(&self) -> Vec<u8> {
        let mut s = vec![0x72, self.key & 0x0f, self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(i) = self.info {
            s.extend_from_slice(&[0x00, 0x0a, 0x80, 0]);
            s.extend_from_slice(&u64::from(i).to_be_bytes());
            s[7] = 12;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_layout() {
        let s = Sense::MISCOMPARE.with_info(7).fixed();
        assert_eq!(s.len(), 18);
        assert_eq!(s[0], 0xf0);
        assert_eq!(s[2], key::MISCOMPARE);
        assert_eq!(&s[3..7], &[0, 0, 0, 7]);
        assert_eq!((s[12], s[13]), (0x1d, 0));
        let d = Sense::LBA_OUT_OF_RANGE.descriptor();
        assert_eq!(&d[..4], &[0x72, 5, 0x21, 0]);
    }
}
