//! NVMe/TCP PDUs (NVM Express TCP Transport Specification 1.0, section 3.6)
//! as typed views with parse/emit round trips.
//!
//! Every PDU starts with the 8-byte common header ([`CommonHeader`]):
//! type, flags, HLEN (header length), PDO (data offset) and PLEN (total
//! length). [`parse`] takes the bytes received so far and returns
//! `Ok(None)` until a whole PDU is there, then a [`Pdu`] borrowing its data
//! and the number of bytes it used. It checks every length against the
//! type's fixed header size, the negotiated digests and the caller's size
//! limit, verifies digests, and never panics on any input (see the fuzz
//! proptest in `tests/pdu.rs`). Unknown PDU types are kept
//! ([`Pdu::Unknown`]) so the caller can terminate with the right status.
//!
//! [`Pdu::emit`] appends the wire form (with digests if asked) to a `Vec`.

use crate::spec::{Cqe, Sqe};

use super::PduError;

/// PDU types (section 3.6.1, figure 16).
pub mod pdu_type {
    /// Initialize Connection Request (host to controller).
    pub const IC_REQ: u8 = 0x00;
    /// Initialize Connection Response.
    pub const IC_RESP: u8 = 0x01;
    /// Host to Controller Terminate Connection Request.
    pub const H2C_TERM_REQ: u8 = 0x02;
    /// Controller to Host Terminate Connection Request.
    pub const C2H_TERM_REQ: u8 = 0x03;
    /// Command capsule.
    pub const CAPSULE_CMD: u8 = 0x04;
    /// Response capsule.
    pub const CAPSULE_RESP: u8 = 0x05;
    /// Host to Controller Data.
    pub const H2C_DATA: u8 = 0x06;
    /// Controller to Host Data.
    pub const C2H_DATA: u8 = 0x07;
    /// Ready to Transfer.
    pub const R2T: u8 = 0x09;
}

/// Common header flags (figure 17).
pub mod flags {
    /// A header digest follows the header.
    pub const HDGSTF: u8 = 1 << 0;
    /// A data digest follows the data.
    pub const DDGSTF: u8 = 1 << 1;
    /// Last data PDU of a transfer (H2CData, C2HData).
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData: the command succeeded, no response capsule follows.
    pub const SUCCESS: u8 = 1 << 3;
}

/// Fatal Error Status values of a termination request (figure 26).
pub mod fes {
    /// Invalid PDU header field.
    pub const INVALID_HEADER_FIELD: u8 = 0x01;
    /// PDU sequence error.
    pub const PDU_SEQUENCE_ERROR: u8 = 0x02;
    /// Header digest error.
    pub const HDGST_ERROR: u8 = 0x03;
    /// Data transfer out of range.
    pub const DATA_OUT_OF_RANGE: u8 = 0x04;
    /// R2T limit exceeded.
    pub const R2T_LIMIT_EXCEEDED: u8 = 0x05;
    /// Unsupported parameter.
    pub const UNSUPPORTED_PARAMETER: u8 = 0x06;
}

/// Byte ranges of each header, from the start of the PDU.
pub mod field {
    use std::ops::Range;
    /// Common header: PDU type (figure 15).
    pub const TYPE: usize = 0;
    /// Common header: flags.
    pub const FLAGS: usize = 1;
    /// Common header: header length.
    pub const HLEN: usize = 2;
    /// Common header: PDU data offset.
    pub const PDO: usize = 3;
    /// Common header: PDU length.
    pub const PLEN: Range<usize> = 4..8;
    /// ICReq/ICResp: PDU format version (figures 20, 21).
    pub const PFV: Range<usize> = 8..10;
    /// ICReq: host PDU data alignment; ICResp: controller PDU data alignment.
    pub const PDA: usize = 10;
    /// ICReq/ICResp: digest enables (bit 0 header, bit 1 data).
    pub const DGST: usize = 11;
    /// ICReq: MAXR2T (0's based); ICResp: MAXH2CDATA (bytes).
    pub const MAXR2T_MAXH2CDATA: Range<usize> = 12..16;
    /// CapsuleCmd: the submission queue entry (figure 22).
    pub const SQE: Range<usize> = 8..72;
    /// CapsuleResp: the completion queue entry (figure 23).
    pub const CQE: Range<usize> = 8..24;
    /// H2CData/C2HData/R2T: command capsule CID (figures 24, 25, 27).
    pub const CCCID: Range<usize> = 8..10;
    /// H2CData/R2T: transfer tag.
    pub const TTAG: Range<usize> = 10..12;
    /// H2CData/C2HData: data offset; R2T: R2T offset.
    pub const DATAO: Range<usize> = 12..16;
    /// H2CData/C2HData: data length; R2T: R2T length.
    pub const DATAL: Range<usize> = 16..20;
    /// TermReq: fatal error status (figure 26).
    pub const FES: Range<usize> = 8..10;
    /// TermReq: fatal error information.
    pub const FEI: Range<usize> = 10..14;
}

/// Common header length.
pub const CH_LEN: usize = 8;
/// ICReq and ICResp length (header only).
pub const IC_LEN: usize = 128;
/// CapsuleCmd header length (CH + SQE).
pub const CAPSULE_CMD_HLEN: usize = 72;
/// CapsuleResp header length (CH + CQE).
pub const CAPSULE_RESP_HLEN: usize = 24;
/// H2CData, C2HData, R2T and TermReq header length.
pub const DATA_HLEN: usize = 24;
/// Digest length (CRC32C).
pub const DIGEST_LEN: usize = 4;
/// Most header bytes a TermReq carries back (section 3.6.2.9).
pub const TERM_REQ_MAX_DATA: usize = 128;

const _: () = assert!(CAPSULE_CMD_HLEN == CH_LEN + std::mem::size_of::<Sqe>());
const _: () = assert!(CAPSULE_RESP_HLEN == CH_LEN + std::mem::size_of::<Cqe>());

/// CRC32C as NVMe/TCP digests use it (section 3.6.2.3: CRC-32C, stored
/// little-endian).
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// The 8-byte common header (section 3.6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommonHeader {
    /// PDU type ([`pdu_type`]).
    pub pdu_type: u8,
    /// Flags ([`flags`]).
    pub flags: u8,
    /// Header length.
    pub hlen: u8,
    /// PDU data offset (0 when no data).
    pub pdo: u8,
    /// Total PDU length.
    pub plen: u32,
}

impl CommonHeader {
    /// Reads the common header from the first 8 bytes, if there are 8.
    pub fn parse(b: &[u8]) -> Option<CommonHeader> {
        let b = b.get(..CH_LEN)?;
        Some(CommonHeader {
            pdu_type: b[field::TYPE],
            flags: b[field::FLAGS],
            hlen: b[field::HLEN],
            pdo: b[field::PDO],
            plen: le32(&b[field::PLEN]),
        })
    }

    /// Writes the common header into the first 8 bytes of `out`.
    pub fn emit(&self, out: &mut [u8]) {
        out[field::TYPE] = self.pdu_type;
        out[field::FLAGS] = self.flags;
        out[field::HLEN] = self.hlen;
        out[field::PDO] = self.pdo;
        out[field::PLEN].copy_from_slice(&self.plen.to_le_bytes());
    }
}

/// ICReq (section 3.6.2.2, figure 20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IcReq {
    /// PDU format version (0).
    pub pfv: u16,
    /// Host PDU data alignment (0's based, dwords).
    pub hpda: u8,
    /// Header digest wanted.
    pub hdgst: bool,
    /// Data digest wanted.
    pub ddgst: bool,
    /// Most outstanding R2Ts per command (0's based).
    pub maxr2t: u32,
}

/// ICResp (section 3.6.2.3, figure 21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IcResp {
    /// PDU format version (0).
    pub pfv: u16,
    /// Controller PDU data alignment (0's based, dwords).
    pub cpda: u8,
    /// Header digest enabled.
    pub hdgst: bool,
    /// Data digest enabled.
    pub ddgst: bool,
    /// Most data bytes in one H2CData PDU.
    pub maxh2cdata: u32,
}

/// H2CData / C2HData / R2T header fields (figures 24, 25, 27).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataHeader {
    /// The command's CID.
    pub cccid: u16,
    /// Transfer tag (H2CData, R2T; 0 in C2HData).
    pub ttag: u16,
    /// Offset of the data in the command's buffer.
    pub datao: u32,
    /// Length of the data.
    pub datal: u32,
}

/// A whole PDU, borrowing its data from the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu<'a> {
    /// Initialize Connection Request.
    IcReq(IcReq),
    /// Initialize Connection Response.
    IcResp(IcResp),
    /// Terminate Connection Request, host to controller.
    H2cTermReq {
        /// Fatal Error Status.
        fes: u16,
        /// Fatal Error Information.
        fei: u32,
        /// The offending PDU header (up to 128 bytes).
        data: &'a [u8],
    },
    /// Terminate Connection Request, controller to host.
    C2hTermReq {
        /// Fatal Error Status.
        fes: u16,
        /// Fatal Error Information.
        fei: u32,
        /// The offending PDU header (up to 128 bytes).
        data: &'a [u8],
    },
    /// A command capsule with its in-capsule data.
    CapsuleCmd {
        /// The command.
        sqe: Sqe,
        /// In-capsule data (empty if none).
        data: &'a [u8],
    },
    /// A response capsule.
    CapsuleResp(Cqe),
    /// Host to controller data.
    H2cData {
        /// Header fields.
        hdr: DataHeader,
        /// `LAST_PDU` was set.
        last: bool,
        /// The data.
        data: &'a [u8],
    },
    /// Controller to host data.
    C2hData {
        /// Header fields.
        hdr: DataHeader,
        /// `LAST_PDU` was set.
        last: bool,
        /// `SUCCESS` was set.
        success: bool,
        /// The data.
        data: &'a [u8],
    },
    /// Ready to Transfer.
    R2t(DataHeader),
    /// A PDU type this crate does not know, kept whole.
    Unknown {
        /// Its common header.
        ch: CommonHeader,
        /// Its bytes past the common header.
        rest: &'a [u8],
    },
}

/// What the receiver negotiated, for parsing and emitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    /// Header digests on every PDU but ICReq/ICResp.
    pub header: bool,
    /// Data digests on every PDU carrying data.
    pub data: bool,
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn sqe_from(b: &[u8]) -> Sqe {
    Sqe::from_bytes(b).expect("the caller passes field::SQE, 64 bytes")
}

fn cqe_from(b: &[u8]) -> Cqe {
    Cqe::from_bytes(b).expect("the caller passes field::CQE, 16 bytes")
}

fn data_header(b: &[u8]) -> DataHeader {
    DataHeader {
        cccid: le16(&b[field::CCCID]),
        ttag: le16(&b[field::TTAG]),
        datao: le32(&b[field::DATAO]),
        datal: le32(&b[field::DATAL]),
    }
}

impl DataHeader {
    /// The data header fields of an H2CData, C2HData or R2T PDU header
    /// (`None` if `hdr` is shorter than [`DATA_HLEN`]). For a receiver
    /// that takes the header before the PDU's data has arrived; [`parse`]
    /// does the same for a whole PDU.
    pub fn parse(hdr: &[u8]) -> Option<DataHeader> {
        (hdr.len() >= DATA_HLEN).then(|| data_header(hdr))
    }
}

/// The command of a CapsuleCmd PDU header (`None` if `hdr` is shorter than
/// [`CAPSULE_CMD_HLEN`]), for a receiver that takes the header before the
/// in-capsule data has arrived.
pub fn capsule_sqe(hdr: &[u8]) -> Option<Sqe> {
    Sqe::from_bytes(hdr.get(field::SQE)?)
}

/// Checks the header digest that follows the `hlen`-byte header at the
/// start of `pdu` (which must hold both).
pub fn check_header_digest(pdu: &[u8], hlen: usize) -> Result<(), PduError> {
    let Some(d) = pdu.get(hlen..hlen + DIGEST_LEN) else {
        return Err(PduError::pdu(
            fes::INVALID_HEADER_FIELD,
            field::HLEN as u32,
            "header digest past the received bytes",
        ));
    };
    let got = le32(d);
    let want = crc32c(&pdu[..hlen]);
    if got != want {
        return Err(PduError::Digest {
            kind: "header",
            got,
            want,
        });
    }
    Ok(())
}

/// The fixed header length of each known type, and whether it may carry
/// data.
fn layout(t: u8) -> Option<(usize, bool)> {
    Some(match t {
        pdu_type::IC_REQ | pdu_type::IC_RESP => (IC_LEN, false),
        pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => (DATA_HLEN, true),
        pdu_type::CAPSULE_CMD => (CAPSULE_CMD_HLEN, true),
        pdu_type::CAPSULE_RESP => (CAPSULE_RESP_HLEN, false),
        pdu_type::H2C_DATA | pdu_type::C2H_DATA => (DATA_HLEN, true),
        pdu_type::R2T => (DATA_HLEN, false),
        _ => return None,
    })
}

/// Parses one PDU from the front of `buf`.
///
/// `Ok(None)`: not all of it has arrived yet (only the common header is
/// needed to know how much is missing, see [`CommonHeader::plen`]).
/// `Err`: the PDU breaks the rules; the error carries the Fatal Error
/// Status to terminate the connection with. `max_plen` bounds PLEN (the
/// receiver's buffer); a longer PDU is an error before any of its data is
/// awaited.
pub fn parse(
    buf: &[u8],
    digests: Digests,
    max_plen: u32,
) -> Result<Option<(Pdu<'_>, usize)>, PduError> {
    let Some(ch) = CommonHeader::parse(buf) else {
        return Ok(None);
    };
    let plen_off = field::PLEN.start as u32;
    let Some((hlen, may_data)) = layout(ch.pdu_type) else {
        // Unknown: keep it if it is whole and sane, the caller terminates.
        if (ch.plen as usize) < CH_LEN || ch.plen > max_plen {
            return Err(PduError::pdu(
                fes::INVALID_HEADER_FIELD,
                plen_off,
                format!("PLEN {} of unknown PDU type {:#x}", ch.plen, ch.pdu_type),
            ));
        }
        let plen = ch.plen as usize;
        if buf.len() < plen {
            return Ok(None);
        }
        return Ok(Some((
            Pdu::Unknown {
                ch,
                rest: &buf[CH_LEN..plen],
            },
            plen,
        )));
    };
    if ch.hlen as usize != hlen {
        return Err(PduError::pdu(
            fes::INVALID_HEADER_FIELD,
            field::HLEN as u32,
            format!(
                "HLEN {} for PDU type {:#x}, which must be {hlen}",
                ch.hlen, ch.pdu_type
            ),
        ));
    }
    let is_ic = matches!(ch.pdu_type, pdu_type::IC_REQ | pdu_type::IC_RESP);
    let is_term = matches!(ch.pdu_type, pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ);
    // Header digest: on every PDU but IC and TermReq once negotiated.
    let has_hdgst = ch.flags & flags::HDGSTF != 0;
    if !is_ic && !is_term && has_hdgst != digests.header {
        return Err(PduError::pdu(
            fes::INVALID_HEADER_FIELD,
            field::FLAGS as u32,
            format!(
                "HDGSTF is {} but header digests were {}negotiated",
                u8::from(has_hdgst),
                if digests.header { "" } else { "not " }
            ),
        ));
    }
    let hdgst_len = if has_hdgst && !is_ic && !is_term {
        DIGEST_LEN
    } else {
        0
    };
    let plen = ch.plen as usize;
    if plen < hlen + hdgst_len || ch.plen > max_plen {
        return Err(PduError::pdu(
            fes::INVALID_HEADER_FIELD,
            plen_off,
            format!(
                "PLEN {} for PDU type {:#x} (header {}, limit {max_plen})",
                ch.plen,
                ch.pdu_type,
                hlen + hdgst_len
            ),
        ));
    }
    if is_term && plen > hlen + TERM_REQ_MAX_DATA {
        return Err(PduError::pdu(
            fes::INVALID_HEADER_FIELD,
            plen_off,
            format!(
                "PLEN {plen} of a TermReq (at most {})",
                hlen + TERM_REQ_MAX_DATA
            ),
        ));
    }
    let has_ddgst = ch.flags & flags::DDGSTF != 0;
    let data_present = plen > hlen + hdgst_len;
    if !may_data && data_present {
        return Err(PduError::pdu(
            fes::INVALID_HEADER_FIELD,
            plen_off,
            format!(
                "PLEN {} for PDU type {:#x}, which carries no data (header {})",
                ch.plen,
                ch.pdu_type,
                hlen + hdgst_len
            ),
        ));
    }
    let (data_start, ddgst_len) = if data_present && !is_term {
        let pdo = ch.pdo as usize;
        if pdo < hlen + hdgst_len || pdo > plen {
            return Err(PduError::pdu(
                fes::INVALID_HEADER_FIELD,
                field::PDO as u32,
                format!(
                    "PDO {pdo} outside header end {} .. PLEN {plen}",
                    hlen + hdgst_len
                ),
            ));
        }
        if has_ddgst != digests.data {
            return Err(PduError::pdu(
                fes::INVALID_HEADER_FIELD,
                field::FLAGS as u32,
                format!(
                    "DDGSTF is {} but data digests were {}negotiated",
                    u8::from(has_ddgst),
                    if digests.data { "" } else { "not " }
                ),
            ));
        }
        let dl = if has_ddgst { DIGEST_LEN } else { 0 };
        if plen < pdo + dl {
            return Err(PduError::pdu(
                fes::INVALID_HEADER_FIELD,
                plen_off,
                format!("PLEN {plen} leaves no room for the data digest after PDO {pdo}"),
            ));
        }
        (pdo, dl)
    } else {
        (hlen + hdgst_len, 0)
    };
    if buf.len() < plen {
        return Ok(None);
    }
    let pdu = &buf[..plen];
    if hdgst_len > 0 {
        let got = le32(&pdu[hlen..hlen + 4]);
        let want = crc32c(&pdu[..hlen]);
        if got != want {
            return Err(PduError::Digest {
                kind: "header",
                got,
                want,
            });
        }
    }
    let data = &pdu[data_start..plen - ddgst_len];
    if ddgst_len > 0 {
        let got = le32(&pdu[plen - 4..]);
        let want = crc32c(data);
        if got != want {
            return Err(PduError::Digest {
                kind: "data",
                got,
                want,
            });
        }
    }
    let h = &pdu[..hlen];
    let parsed = match ch.pdu_type {
        pdu_type::IC_REQ => Pdu::IcReq(IcReq {
            pfv: le16(&h[field::PFV]),
            hpda: h[field::PDA],
            hdgst: h[field::DGST] & 1 != 0,
            ddgst: h[field::DGST] & 2 != 0,
            maxr2t: le32(&h[field::MAXR2T_MAXH2CDATA]),
        }),
        pdu_type::IC_RESP => Pdu::IcResp(IcResp {
            pfv: le16(&h[field::PFV]),
            cpda: h[field::PDA],
            hdgst: h[field::DGST] & 1 != 0,
            ddgst: h[field::DGST] & 2 != 0,
            maxh2cdata: le32(&h[field::MAXR2T_MAXH2CDATA]),
        }),
        pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => {
            let fes = le16(&h[field::FES]);
            let fei = le32(&h[field::FEI]);
            let data = &pdu[hlen..];
            if ch.pdu_type == pdu_type::H2C_TERM_REQ {
                Pdu::H2cTermReq { fes, fei, data }
            } else {
                Pdu::C2hTermReq { fes, fei, data }
            }
        }
        pdu_type::CAPSULE_CMD => Pdu::CapsuleCmd {
            sqe: sqe_from(&h[field::SQE]),
            data,
        },
        pdu_type::CAPSULE_RESP => Pdu::CapsuleResp(cqe_from(&h[field::CQE])),
        pdu_type::H2C_DATA | pdu_type::C2H_DATA => {
            let hdr = data_header(h);
            if hdr.datal as usize != data.len() {
                return Err(PduError::pdu(
                    fes::INVALID_HEADER_FIELD,
                    field::DATAL.start as u32,
                    format!(
                        "DATAL {} but the PDU holds {} data bytes",
                        hdr.datal,
                        data.len()
                    ),
                ));
            }
            let last = ch.flags & flags::LAST_PDU != 0;
            if ch.pdu_type == pdu_type::H2C_DATA {
                Pdu::H2cData { hdr, last, data }
            } else {
                Pdu::C2hData {
                    hdr,
                    last,
                    success: ch.flags & flags::SUCCESS != 0,
                    data,
                }
            }
        }
        pdu_type::R2T => Pdu::R2t(data_header(h)),
        _ => unreachable!("layout() knows exactly these types"),
    };
    Ok(Some((parsed, plen)))
}

/// Appends a header of `hlen` bytes (built by `fill`), its digest if asked,
/// the data at PDO (no padding: CPDA/HPDA 0) and its digest.
#[allow(clippy::too_many_arguments)]
fn emit_with(
    out: &mut Vec<u8>,
    pdu_type: u8,
    extra_flags: u8,
    hlen: usize,
    data: &[u8],
    hdgst: bool,
    ddgst: bool,
    fill: impl FnOnce(&mut [u8]),
) {
    let start = out.len();
    let hd = if hdgst { DIGEST_LEN } else { 0 };
    let dd = if ddgst && !data.is_empty() {
        DIGEST_LEN
    } else {
        0
    };
    let plen = hlen + hd + data.len() + dd;
    let mut flags = extra_flags;
    if hd > 0 {
        flags |= flags::HDGSTF;
    }
    if dd > 0 {
        flags |= flags::DDGSTF;
    }
    out.resize(start + hlen, 0);
    let ch = CommonHeader {
        pdu_type,
        flags,
        hlen: hlen as u8,
        pdo: if data.is_empty() {
            0
        } else {
            (hlen + hd) as u8
        },
        plen: plen as u32,
    };
    ch.emit(&mut out[start..]);
    fill(&mut out[start..start + hlen]);
    if hd > 0 {
        let d = crc32c(&out[start..start + hlen]);
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(data);
    if dd > 0 {
        out.extend_from_slice(&crc32c(data).to_le_bytes());
    }
}

fn put_data_header(h: &mut [u8], d: &DataHeader) {
    h[field::CCCID].copy_from_slice(&d.cccid.to_le_bytes());
    h[field::TTAG].copy_from_slice(&d.ttag.to_le_bytes());
    h[field::DATAO].copy_from_slice(&d.datao.to_le_bytes());
    h[field::DATAL].copy_from_slice(&d.datal.to_le_bytes());
}

/// Appends the header of a C2HData PDU whose `hdr.datal` data bytes the
/// caller appends next (then [`finish_c2h_data`] adds the data digest).
/// Lets the read path copy straight from its buffer.
pub fn emit_c2h_data_header(out: &mut Vec<u8>, hdr: &DataHeader, fl: u8, digests: Digests) {
    emit_data_header(out, pdu_type::C2H_DATA, hdr, fl, digests)
}

/// Appends the header of an H2CData PDU whose `hdr.datal` data bytes the
/// caller sends next (then the data digest, [`crc32c`] of the data, if data
/// digests are on). Lets the write path send straight from its buffer.
pub fn emit_h2c_data_header(out: &mut Vec<u8>, hdr: &DataHeader, last: bool, digests: Digests) {
    let fl = if last { flags::LAST_PDU } else { 0 };
    emit_data_header(out, pdu_type::H2C_DATA, hdr, fl, digests)
}

fn emit_data_header(out: &mut Vec<u8>, t: u8, hdr: &DataHeader, fl: u8, digests: Digests) {
    let start = out.len();
    let hd = if digests.header { DIGEST_LEN } else { 0 };
    let dd = if digests.data && hdr.datal > 0 {
        DIGEST_LEN
    } else {
        0
    };
    let mut f = fl;
    if hd > 0 {
        f |= flags::HDGSTF;
    }
    if dd > 0 {
        f |= flags::DDGSTF;
    }
    out.resize(start + DATA_HLEN, 0);
    CommonHeader {
        pdu_type: t,
        flags: f,
        hlen: DATA_HLEN as u8,
        pdo: (DATA_HLEN + hd) as u8,
        plen: (DATA_HLEN + hd + hdr.datal as usize + dd) as u32,
    }
    .emit(&mut out[start..]);
    put_data_header(&mut out[start..start + DATA_HLEN], hdr);
    if hd > 0 {
        let d = crc32c(&out[start..start + DATA_HLEN]);
        out.extend_from_slice(&d.to_le_bytes());
    }
}

/// Appends the data digest of `data` if data digests are on (after the data
/// of a PDU begun with [`emit_c2h_data_header`]).
pub fn finish_c2h_data(out: &mut Vec<u8>, data: &[u8], digests: Digests) {
    if digests.data && !data.is_empty() {
        out.extend_from_slice(&crc32c(data).to_le_bytes());
    }
}

impl Pdu<'_> {
    /// Appends the wire form of this PDU to `out`, with the digests in
    /// `digests` (never on ICReq/ICResp/TermReq, as the spec says).
    pub fn emit(&self, out: &mut Vec<u8>, digests: Digests) {
        let (h, d) = (digests.header, digests.data);
        match self {
            Pdu::IcReq(r) => emit_with(out, pdu_type::IC_REQ, 0, IC_LEN, &[], false, false, |b| {
                b[field::PFV].copy_from_slice(&r.pfv.to_le_bytes());
                b[field::PDA] = r.hpda;
                b[field::DGST] = u8::from(r.hdgst) | (u8::from(r.ddgst) << 1);
                b[field::MAXR2T_MAXH2CDATA].copy_from_slice(&r.maxr2t.to_le_bytes());
            }),
            Pdu::IcResp(r) => {
                emit_with(out, pdu_type::IC_RESP, 0, IC_LEN, &[], false, false, |b| {
                    b[field::PFV].copy_from_slice(&r.pfv.to_le_bytes());
                    b[field::PDA] = r.cpda;
                    b[field::DGST] = u8::from(r.hdgst) | (u8::from(r.ddgst) << 1);
                    b[field::MAXR2T_MAXH2CDATA].copy_from_slice(&r.maxh2cdata.to_le_bytes());
                })
            }
            Pdu::H2cTermReq { fes, fei, data } | Pdu::C2hTermReq { fes, fei, data } => {
                let t = if matches!(self, Pdu::H2cTermReq { .. }) {
                    pdu_type::H2C_TERM_REQ
                } else {
                    pdu_type::C2H_TERM_REQ
                };
                let data = &data[..data.len().min(TERM_REQ_MAX_DATA)];
                let start = out.len();
                emit_with(out, t, 0, DATA_HLEN, data, false, false, |b| {
                    b[field::FES].copy_from_slice(&fes.to_le_bytes());
                    b[field::FEI].copy_from_slice(&fei.to_le_bytes());
                });
                // TermReq data follows the header directly; PDO is 0.
                out[start + field::PDO] = 0;
            }
            Pdu::CapsuleCmd { sqe, data } => emit_with(
                out,
                pdu_type::CAPSULE_CMD,
                0,
                CAPSULE_CMD_HLEN,
                data,
                h,
                d,
                |b| {
                    b[field::SQE].copy_from_slice(&sqe.to_bytes());
                },
            ),
            Pdu::CapsuleResp(cqe) => emit_capsule_resp(out, cqe, digests),
            Pdu::H2cData { hdr, last, data } => {
                let f = if *last { flags::LAST_PDU } else { 0 };
                emit_with(out, pdu_type::H2C_DATA, f, DATA_HLEN, data, h, d, |b| {
                    put_data_header(b, hdr)
                })
            }
            Pdu::C2hData {
                hdr,
                last,
                success,
                data,
            } => {
                let mut f = if *last { flags::LAST_PDU } else { 0 };
                if *success {
                    f |= flags::SUCCESS;
                }
                emit_with(out, pdu_type::C2H_DATA, f, DATA_HLEN, data, h, d, |b| {
                    put_data_header(b, hdr)
                })
            }
            Pdu::R2t(hdr) => emit_with(out, pdu_type::R2T, 0, DATA_HLEN, &[], h, false, |b| {
                put_data_header(b, hdr)
            }),
            Pdu::Unknown { ch, rest } => {
                let start = out.len();
                out.resize(start + CH_LEN, 0);
                ch.emit(&mut out[start..]);
                out.extend_from_slice(rest);
            }
        }
    }
}

/// Appends a CapsuleResp carrying `cqe`.
pub fn emit_capsule_resp(out: &mut Vec<u8>, cqe: &Cqe, digests: Digests) {
    emit_with(
        out,
        pdu_type::CAPSULE_RESP,
        0,
        CAPSULE_RESP_HLEN,
        &[],
        digests.header,
        false,
        |b| {
            b[field::CQE].copy_from_slice(&cqe.to_bytes());
        },
    )
}

/// Appends an R2T.
pub fn emit_r2t(out: &mut Vec<u8>, hdr: &DataHeader, digests: Digests) {
    Pdu::R2t(*hdr).emit(out, digests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capsule_round_trip_with_digests() {
        let mut sqe = Sqe::new(0x01, 1);
        sqe.set_cid(7);
        let data = [0xabu8; 100];
        let dg = Digests {
            header: true,
            data: true,
        };
        let mut out = Vec::new();
        Pdu::CapsuleCmd { sqe, data: &data }.emit(&mut out, dg);
        assert_eq!(out.len(), 72 + 4 + 100 + 4);
        let (p, n) = parse(&out, dg, 1 << 20).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(p, Pdu::CapsuleCmd { sqe, data: &data });
        // One byte short: incomplete, not an error.
        assert!(parse(&out[..out.len() - 1], dg, 1 << 20).unwrap().is_none());
        // A flipped data byte: data digest error.
        let mut bad = out.clone();
        bad[80] ^= 1;
        assert!(matches!(
            parse(&bad, dg, 1 << 20),
            Err(PduError::Digest { kind: "data", .. })
        ));
    }

    #[test]
    fn hlen_checked() {
        let mut out = Vec::new();
        Pdu::R2t(DataHeader::default()).emit(&mut out, Digests::default());
        out[2] = 23;
        let e = parse(&out, Digests::default(), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("HLEN 23"), "{e}");
    }

    #[test]
    fn headers_taken_before_their_data() {
        let dg = Digests {
            header: true,
            data: false,
        };
        let mut sqe = Sqe::new(0x01, 1);
        sqe.set_cid(11);
        let mut out = Vec::new();
        Pdu::CapsuleCmd { sqe, data: &[5; 8] }.emit(&mut out, dg);
        assert_eq!(capsule_sqe(&out[..CAPSULE_CMD_HLEN]), Some(sqe));
        assert_eq!(capsule_sqe(&out[..CAPSULE_CMD_HLEN - 1]), None);
        assert_eq!(check_header_digest(&out, CAPSULE_CMD_HLEN), Ok(()));
        out[9] ^= 1;
        assert!(matches!(
            check_header_digest(&out, CAPSULE_CMD_HLEN),
            Err(PduError::Digest { kind: "header", .. })
        ));
        assert!(check_header_digest(&out[..CAPSULE_CMD_HLEN + 2], CAPSULE_CMD_HLEN).is_err());
        let hdr = DataHeader {
            cccid: 3,
            ttag: 4,
            datao: 4096,
            datal: 512,
        };
        let mut out = Vec::new();
        emit_h2c_data_header(&mut out, &hdr, true, dg);
        assert_eq!(DataHeader::parse(&out), Some(hdr));
        assert_eq!(DataHeader::parse(&out[..DATA_HLEN - 1]), None);
        assert_eq!(check_header_digest(&out, DATA_HLEN), Ok(()));
    }
}
