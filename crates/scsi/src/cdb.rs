//! CDBs as typed views: length checked once, field accessors that never
//! panic (bytes past the end read as zero).

use crate::sense::Sense;

/// The CDB length a given operation code's group implies (SPC-4 4.2.5.1),
/// or `None` for the reserved/vendor groups.
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// A validated view of a CDB.
#[derive(Debug, Clone, Copy)]
pub struct Cdb<'a>(&'a [u8]);

impl<'a> Cdb<'a> {
    /// Checks that `bytes` holds at least the CDB its opcode implies.
    /// An empty buffer or an opcode of an unsupported group is an invalid
    /// operation code; a short CDB an invalid field.
    pub fn new(bytes: &'a [u8]) -> Result<Cdb<'a>, Sense> {
        let op = *bytes.first().ok_or(Sense::INVALID_OPCODE)?;
        let need = cdb_len(op).ok_or(Sense::INVALID_OPCODE)?;
        if bytes.len() < need {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        Ok(Cdb(&bytes[..need]))
    }

    /// The raw bytes (exactly the implied length).
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The operation code.
    pub fn opcode(&self) -> u8 {
        self.u8(0)
    }

    /// The service action (low 5 bits of byte 1), for opcodes that have one.
    pub fn service_action(&self) -> u8 {
        self.u8(1) & 0x1f
    }

    /// Byte `i` (0 past the end).
    pub fn u8(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }

    /// Big-endian u16 at `i`.
    pub fn u16(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.u8(i), self.u8(i + 1)])
    }

    /// Big-endian 24-bit value at `i`.
    pub fn u24(&self, i: usize) -> u32 {
        u32::from_be_bytes([0, self.u8(i), self.u8(i + 1), self.u8(i + 2)])
    }

    /// Big-endian u32 at `i`.
    pub fn u32(&self, i: usize) -> u32 {
        u32::from_be_bytes([self.u8(i), self.u8(i + 1), self.u8(i + 2), self.u8(i + 3)])
    }

    /// Big-endian u64 at `i`.
    pub fn u64(&self, i: usize) -> u64 {
        (u64::from(self.u32(i)) << 32) | u64::from(self.u32(i + 4))
    }

    /// LBA and transfer length of a READ/WRITE-family CDB (6/10/12/16),
    /// `None` for other layouts. READ(6)/WRITE(6) length 0 means 256.
    pub fn lba_len(&self) -> Option<(u64, u32)> {
        match self.0.len() {
            6 => {
                let lba = u64::from(self.u24(1) & 0x1f_ffff);
                let n = match self.u8(4) {
                    0 => 256,
                    n => u32::from(n),
                };
                Some((lba, n))
            }
            10 => Some((u64::from(self.u32(2)), u32::from(self.u16(7)))),
            12 => Some((u64::from(self.u32(2)), self.u32(6))),
            16 => Some((self.u64(2), self.u32(10))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn read10_fields() {
        let c = [0x28, 0, 0, 0, 1, 2, 0, 0, 8, 0];
        let cdb = Cdb::new(&c).unwrap();
        assert_eq!(cdb.lba_len(), Some((0x102, 8)));
        assert!(Cdb::new(&c[..9]).is_err());
        assert!(Cdb::new(&[]).is_err());
        let r6 = Cdb::new(&[0x08, 0xff, 1, 2, 0, 0]).unwrap();
        assert_eq!(r6.lba_len(), Some((0x1f0102, 256)));
    }

    #[test]
    fn lengths_by_group() {
        for (op, len) in [
            (0x00, 6),
            (0x12, 6),
            (0x28, 10),
            (0x5a, 10),
            (0xa0, 12),
            (0x88, 16),
            (0x9e, 16),
        ] {
            assert_eq!(cdb_len(op), Some(len), "{op:#04x}");
        }
        assert_eq!(cdb_len(0x60), None, "reserved group 3");
        assert_eq!(cdb_len(0xc0), None, "vendor specific");
        assert_eq!(Cdb::new(&[0xc0; 16]).unwrap_err(), Sense::INVALID_OPCODE);
        assert_eq!(Cdb::new(&[]).unwrap_err(), Sense::INVALID_OPCODE);
        assert_eq!(
            Cdb::new(&[0x88; 15]).unwrap_err(),
            Sense::INVALID_FIELD_IN_CDB
        );
        // Extra bytes (a 16-byte iSCSI CDB field) are cut to the implied length.
        assert_eq!(Cdb::new(&[0x28; 16]).unwrap().bytes().len(), 10);
    }

    #[test]
    fn lba_and_length_of_each_size() {
        let r12 = [0xa8, 0, 0, 0, 0x10, 0, 0, 0, 0, 0x20, 0, 0];
        assert_eq!(Cdb::new(&r12).unwrap().lba_len(), Some((0x1000, 0x20)));
        let mut r16 = [0u8; 16];
        r16[0] = 0x88;
        r16[2..10].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        r16[10..14].copy_from_slice(&9u32.to_be_bytes());
        let c = Cdb::new(&r16).unwrap();
        assert_eq!(c.lba_len(), Some((0x0102_0304_0506_0708, 9)));
        assert_eq!(
            (c.u8(40), c.u32(14), c.u64(12)),
            (0, 0, 9 << 48),
            "zero past the end"
        );
        let w6 = Cdb::new(&[0x0a, 0, 0, 5, 0, 0]).unwrap();
        assert_eq!(
            w6.lba_len(),
            Some((5, 256)),
            "length 0 of a 6-byte CDB is 256"
        );
        let sa = Cdb::new(&[0x9e, 0xf0 | 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(sa.service_action(), 0x10);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(c) = Cdb::new(&bytes) {
                let _ = (c.lba_len(), c.u64(30), c.u32(15), c.service_action());
            }
        }
    }
}
