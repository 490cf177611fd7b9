//! RFC 7143 PDUs: the 48-byte Basic Header Segment as a typed view
//! ([`Bhs`], in `bhs.rs`), and framing (AHS, data segment, padding, CRC32C
//! digests from the `crc32c` crate).

use crate::IscsiError;

mod bhs;

pub use bhs::{
    field, login_flags, login_response_flags, stage, Bhs, BhsError, DataOut, LoginRequest,
    LogoutRequest, ScsiCmd, TaskMgmtRequest, BHS_LEN,
};

/// Opcodes (RFC 7143 10.2.1.2).
pub mod op {
    /// NOP-Out.
    pub const NOP_OUT: u8 = 0x00;
    /// SCSI Command.
    pub const SCSI_CMD: u8 = 0x01;
    /// Task Management Function Request.
    pub const TMF_REQ: u8 = 0x02;
    /// Login Request.
    pub const LOGIN_REQ: u8 = 0x03;
    /// Text Request.
    pub const TEXT_REQ: u8 = 0x04;
    /// SCSI Data-Out.
    pub const DATA_OUT: u8 = 0x05;
    /// Logout Request.
    pub const LOGOUT_REQ: u8 = 0x06;
    /// SNACK Request.
    pub const SNACK: u8 = 0x10;
    /// NOP-In.
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_RESP: u8 = 0x21;
    /// Task Management Function Response.
    pub const TMF_RESP: u8 = 0x22;
    /// Login Response.
    pub const LOGIN_RESP: u8 = 0x23;
    /// Text Response.
    pub const TEXT_RESP: u8 = 0x24;
    /// SCSI Data-In.
    pub const DATA_IN: u8 = 0x25;
    /// Logout Response.
    pub const LOGOUT_RESP: u8 = 0x26;
    /// Ready To Transfer.
    pub const R2T: u8 = 0x31;
    /// Asynchronous Message.
    pub const ASYNC: u8 = 0x32;
    /// Reject.
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 11.17.1).
pub mod reject {
    /// Data (payload) digest error.
    pub const DATA_DIGEST: u8 = 0x02;
    /// SNACK reject.
    pub const SNACK: u8 = 0x03;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u8 = 0x04;
    /// Command not supported.
    pub const NOT_SUPPORTED: u8 = 0x05;
    /// Immediate command reject: too many immediate commands.
    pub const IMMEDIATE: u8 = 0x06;
    /// Task in progress.
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    /// Invalid data ACK.
    pub const INVALID_DATA_ACK: u8 = 0x08;
    /// Invalid PDU field.
    pub const INVALID_FIELD: u8 = 0x09;
    /// Long operation reject: out of resources.
    pub const OUT_OF_RESOURCES: u8 = 0x0a;
    /// Waiting for logout.
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// A whole PDU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pdu {
    /// The Basic Header Segment.
    pub bhs: Bhs,
    /// Additional Header Segments (raw).
    pub ahs: Vec<u8>,
    /// The data segment, unpadded.
    pub data: Vec<u8>,
}

/// CRC32C (Castagnoli), as iSCSI digests use it (the `crc32c` crate:
/// SSE4.2 / ARMv8 CRC instructions where the CPU has them, as the NVMe/TCP
/// digests).
pub fn crc32c(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
}

/// Continues a CRC32C over more data.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    ::crc32c::crc32c_append(crc, data)
}

/// Pads `n` to a multiple of 4.
pub fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Bytes the PDU headed by `bhs` takes on the wire: BHS, AHS, header
/// digest, padded data segment and data digest (none for no data).
pub fn wire_len<T: AsRef<[u8]>>(bhs: &Bhs<T>, header_digest: bool, data_digest: bool) -> usize {
    let dlen = bhs.data_len();
    BHS_LEN
        + bhs.ahs_len()
        + if header_digest { 4 } else { 0 }
        + pad4(dlen)
        + if data_digest && dlen > 0 { 4 } else { 0 }
}

/// What [`Pdu::parse`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet; at least this many are needed in total.
    Incomplete(usize),
    /// A PDU, and how many bytes it took.
    Pdu(Pdu, usize),
}

impl Pdu {
    /// A PDU with this header and data.
    pub fn new(bhs: Bhs, data: Vec<u8>) -> Pdu {
        Pdu {
            bhs,
            ahs: Vec::new(),
            data,
        }
    }

    /// Parses one PDU from the front of `buf`. `max_data` bounds the data
    /// segment (our MaxRecvDataSegmentLength, or the login limit); digests
    /// are checked when enabled.
    pub fn parse(
        buf: &[u8],
        header_digest: bool,
        data_digest: bool,
        max_data: usize,
    ) -> Result<Parsed, IscsiError> {
        if buf.len() < BHS_LEN {
            return Ok(Parsed::Incomplete(BHS_LEN));
        }
        let Ok(bhs) = Bhs::parse(buf) else {
            return Ok(Parsed::Incomplete(BHS_LEN));
        };
        let ahs = bhs.ahs_len();
        let dlen = bhs.data_len();
        if dlen > max_data {
            return Err(IscsiError::DataTooLong {
                len: dlen,
                max: max_data,
            });
        }
        let hd = if header_digest { 4 } else { 0 };
        let dd = if data_digest && dlen > 0 { 4 } else { 0 };
        let total = wire_len(&bhs, header_digest, data_digest);
        if buf.len() < total {
            return Ok(Parsed::Incomplete(total));
        }
        let hend = BHS_LEN + ahs;
        if header_digest {
            let want = u32::from_le_bytes([buf[hend], buf[hend + 1], buf[hend + 2], buf[hend + 3]]);
            if crc32c(&buf[..hend]) != want {
                return Err(IscsiError::HeaderDigest);
            }
        }
        let dstart = hend + hd;
        // From the per-thread buffer pool: the SCSI path gives it back
        // (no allocation per Data-Out in steady state).
        let data = rspdk_scsi::bufpool::copy_of(&buf[dstart..dstart + dlen]);
        if dd > 0 {
            let p = dstart + pad4(dlen);
            let want = u32::from_le_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]);
            if crc32c(&buf[dstart..p]) != want {
                return Err(IscsiError::DataDigest { itt: bhs.itt() });
            }
        }
        Ok(Parsed::Pdu(
            Pdu {
                bhs,
                ahs: buf[BHS_LEN..hend].to_vec(),
                data,
            },
            total,
        ))
    }

    /// Appends the PDU's wire form to `out` (lengths set from the segments).
    pub fn emit(&self, out: &mut Vec<u8>, header_digest: bool, data_digest: bool) {
        emit_parts(
            &self.bhs,
            &self.ahs,
            &self.data,
            out,
            header_digest,
            data_digest,
        );
    }
}

/// Appends a PDU made of `bhs`, `ahs` and `data` to `out`, as
/// [`Pdu::emit`] does, without owning the segments (Data-In PDUs are
/// written straight from the command's read buffer).
pub fn emit_parts(
    bhs: &Bhs,
    ahs: &[u8],
    data: &[u8],
    out: &mut Vec<u8>,
    header_digest: bool,
    data_digest: bool,
) {
    let mut bhs = *bhs;
    bhs.set_ahs_len(ahs.len());
    bhs.set_data_len(data.len());
    let start = out.len();
    out.extend_from_slice(bhs.as_bytes());
    out.extend_from_slice(ahs);
    out.resize(start + BHS_LEN + pad4(ahs.len()), 0);
    if header_digest {
        let c = crc32c(&out[start..]);
        out.extend_from_slice(&c.to_le_bytes());
    }
    if !data.is_empty() {
        let d0 = out.len();
        out.extend_from_slice(data);
        out.resize(d0 + pad4(data.len()), 0);
        if data_digest {
            let c = crc32c(&out[d0..]);
            out.extend_from_slice(&c.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc32c_known_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let zeros = [0u8; 32];
        assert_eq!(crc32c(&zeros), 0x8a91_36aa);
    }

    #[test]
    fn emit_parse_round_trip() {
        let mut b = Bhs::new(op::SCSI_CMD, 0x80);
        b.set_itt(7);
        b.set_lun(1 << 48);
        let p = Pdu {
            bhs: b,
            ahs: vec![],
            data: vec![1, 2, 3, 4, 5],
        };
        for (h, d) in [(false, false), (true, true), (true, false)] {
            let mut out = Vec::new();
            p.emit(&mut out, h, d);
            match Pdu::parse(&out, h, d, 1 << 20).unwrap() {
                Parsed::Pdu(q, n) => {
                    assert_eq!(n, out.len());
                    assert_eq!(q.data, p.data);
                    assert_eq!(q.bhs.itt(), 7);
                    assert_eq!(q.bhs.data_len(), 5);
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                Pdu::parse(&out[..out.len() - 1], h, d, 1 << 20).unwrap(),
                Parsed::Incomplete(_)
            ));
        }
        let mut out = Vec::new();
        p.emit(&mut out, true, true);
        out[3] ^= 1;
        assert!(matches!(
            Pdu::parse(&out, true, true, 1 << 20),
            Err(IscsiError::HeaderDigest)
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                              h in any::<bool>(), d in any::<bool>()) {
            let _ = Pdu::parse(&bytes, h, d, 64);
        }

        #[test]
        fn round_trip(op in 0u8..0x40, flags in any::<u8>(), itt in any::<u32>(),
                      data in proptest::collection::vec(any::<u8>(), 0..100),
                      h in any::<bool>(), d in any::<bool>()) {
            let mut b = Bhs::new(op, flags);
            b.set_itt(itt);
            let p = Pdu::new(b, data.clone());
            let mut out = Vec::new();
            p.emit(&mut out, h, d);
            match Pdu::parse(&out, h, d, 1000).unwrap() {
                Parsed::Pdu(q, n) => {
                    prop_assert_eq!(n, out.len());
                    prop_assert_eq!(q.data, data);
                    prop_assert_eq!(q.bhs.itt(), itt);
                    prop_assert_eq!(q.bhs.opcode(), op);
                }
                Parsed::Incomplete(_) => prop_assert!(false),
            }
        }
    }
}
