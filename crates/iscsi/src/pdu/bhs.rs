//! The 48-byte Basic Header Segment (RFC 7143 11.2) as a typed view over a
//! byte buffer, in smoltcp's `wire` style: [`Bhs<T>`] wraps anything that
//! is `AsRef<[u8]>` (a borrowed slice of a receive buffer, or the owned
//! `[u8; 48]` that [`Bhs`] defaults to), has one getter per field and, when
//! the buffer is `AsMut<[u8]>`, one setter per field. Fields whose meaning
//! depends on the opcode have one accessor per meaning, named as RFC 7143
//! names them (bytes 20..24 are the Target Transfer Tag, the Expected Data
//! Transfer Length, the CID or the Referenced Task Tag), and the requests
//! the target parses have opcode-checked views ([`LoginRequest`],
//! [`ScsiCmd`], [`DataOut`], [`TaskMgmtRequest`], [`LogoutRequest`])
//! with their flag bits decoded.

use std::ops::{Deref, DerefMut, Range};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// Byte offsets of the BHS fields (RFC 7143 11.2 and the per-PDU
/// sections). Several fields share bytes; the name says which PDUs use
/// which meaning.
pub mod field {
    use std::ops::Range;

    /// I bit (0x40) and opcode (low 6 bits).
    pub const OPCODE: usize = 0;
    /// F bit (0x80) and opcode-specific flags.
    pub const FLAGS: usize = 1;
    /// Response (SCSI, TMF, logout), reject reason, login Version-Max.
    pub const BYTE2: usize = 2;
    /// SCSI status (SCSI Response, Data-In), login Version-Min/Active.
    pub const BYTE3: usize = 3;
    /// TotalAHSLength, in 4-byte words.
    pub const TOTAL_AHS_LEN: usize = 4;
    /// DataSegmentLength (24 bits).
    pub const DATA_SEGMENT_LEN: Range<usize> = 5..8;
    /// LUN, or ISID and TSIH in login PDUs.
    pub const LUN: Range<usize> = 8..16;
    /// ISID of login PDUs.
    pub const ISID: Range<usize> = 8..14;
    /// TSIH of login PDUs.
    pub const TSIH: Range<usize> = 14..16;
    /// Initiator Task Tag.
    pub const ITT: Range<usize> = 16..20;
    /// Target Transfer Tag; Expected Data Transfer Length (SCSI Command);
    /// CID (login, logout: 2 bytes); Referenced Task Tag (TMF request).
    pub const WORD20: Range<usize> = 20..24;
    /// CID of login and logout requests.
    pub const CID: Range<usize> = 20..22;
    /// CmdSN (requests) / StatSN (responses).
    pub const WORD24: Range<usize> = 24..28;
    /// ExpStatSN (requests) / ExpCmdSN (responses).
    pub const WORD28: Range<usize> = 28..32;
    /// MaxCmdSN (responses); RefCmdSN (TMF request); the CDB starts here.
    pub const WORD32: Range<usize> = 32..36;
    /// The SCSI Command's CDB.
    pub const CDB: Range<usize> = 32..48;
    /// DataSN, R2TSN, ExpDataSN; login Status-Class and Status-Detail
    /// (bytes 36, 37); AsyncEvent (byte 36).
    pub const WORD36: Range<usize> = 36..40;
    /// Buffer Offset (Data-In, Data-Out, R2T).
    pub const BUFFER_OFFSET: Range<usize> = 40..44;
    /// Parameter3 of an Asynchronous Message (Time2Retain of a logout request).
    pub const PARAMETER3: Range<usize> = 42..44;
    /// Residual Count (SCSI Response, Data-In); Desired Data Transfer
    /// Length (R2T).
    pub const WORD44: Range<usize> = 44..48;
}

/// Why a BHS could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BhsError {
    /// Fewer than [`BHS_LEN`] bytes.
    #[error("BHS truncated: {len} of {BHS_LEN} bytes")]
    Truncated {
        /// How many bytes there were.
        len: usize,
    },
    /// An opcode-specific view over a header of another opcode.
    #[error("BHS opcode {found:#04x} where {want:#04x} was expected")]
    Opcode {
        /// The opcode the view wants.
        want: u8,
        /// The header's opcode.
        found: u8,
    },
}

/// A Basic Header Segment over `T` (owned `[u8; 48]` by default).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs<T: AsRef<[u8]> = [u8; BHS_LEN]> {
    buffer: T,
}

impl<T: AsRef<[u8]>> std::fmt::Debug for Bhs<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bhs(op {:#04x}, flags {:#04x}, itt {:#x}, dsl {})",
            self.opcode(),
            self.flags(),
            self.itt(),
            self.data_len()
        )
    }
}

impl Default for Bhs {
    fn default() -> Self {
        Bhs {
            buffer: [0; BHS_LEN],
        }
    }
}

impl Bhs {
    /// A header with `opcode` and `flags` set, everything else zero.
    pub fn new(opcode: u8, flags: u8) -> Bhs {
        let mut b = Bhs::default();
        b.buffer[field::OPCODE] = opcode & 0x3f;
        b.buffer[field::FLAGS] = flags;
        b
    }

    /// Copies the BHS at the front of `bytes` (which may hold more).
    pub fn parse(bytes: &[u8]) -> Result<Bhs, BhsError> {
        let head = bytes
            .get(..BHS_LEN)
            .ok_or(BhsError::Truncated { len: bytes.len() })?;
        let mut b = Bhs::default();
        b.buffer.copy_from_slice(head);
        Ok(b)
    }
}

fn be32(b: &[u8], r: Range<usize>) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&b[r]);
    u32::from_be_bytes(w)
}

fn be16(b: &[u8], r: Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

impl<T: AsRef<[u8]>> Bhs<T> {
    /// Wraps `buffer` without checking its length (accessors panic on a
    /// short one); use [`Bhs::new_checked`] on untrusted input.
    pub fn new_unchecked(buffer: T) -> Bhs<T> {
        Bhs { buffer }
    }

    /// Wraps `buffer` if it holds at least [`BHS_LEN`] bytes.
    pub fn new_checked(buffer: T) -> Result<Bhs<T>, BhsError> {
        let len = buffer.as_ref().len();
        if len < BHS_LEN {
            return Err(BhsError::Truncated { len });
        }
        Ok(Bhs { buffer })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The 48 header bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..BHS_LEN]
    }

    /// An owned copy of the header.
    pub fn to_owned(&self) -> Bhs {
        let mut b = Bhs::default();
        b.buffer.copy_from_slice(self.as_bytes());
        b
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Opcode (6 bits).
    pub fn opcode(&self) -> u8 {
        self.b()[field::OPCODE] & 0x3f
    }
    /// The Immediate bit.
    pub fn immediate(&self) -> bool {
        self.b()[field::OPCODE] & 0x40 != 0
    }
    /// Byte 1 (F bit and opcode-specific flags).
    pub fn flags(&self) -> u8 {
        self.b()[field::FLAGS]
    }
    /// The Final bit.
    pub fn final_bit(&self) -> bool {
        self.flags() & 0x80 != 0
    }
    /// Byte 1 without the F bit: the TMF function, the logout reason code.
    pub fn function(&self) -> u8 {
        self.flags() & 0x7f
    }
    /// Response of a SCSI Response, TMF Response or Logout Response (byte 2).
    pub fn response(&self) -> u8 {
        self.b()[field::BYTE2]
    }
    /// Reason of a Reject (byte 2).
    pub fn reject_reason(&self) -> u8 {
        self.b()[field::BYTE2]
    }
    /// SCSI status of a SCSI Response or a final Data-In (byte 3).
    pub fn status(&self) -> u8 {
        self.b()[field::BYTE3]
    }
    /// TotalAHSLength in bytes.
    pub fn ahs_len(&self) -> usize {
        usize::from(self.b()[field::TOTAL_AHS_LEN]) * 4
    }
    /// DataSegmentLength.
    pub fn data_len(&self) -> usize {
        let d = &self.b()[field::DATA_SEGMENT_LEN];
        u32::from_be_bytes([0, d[0], d[1], d[2]]) as usize
    }
    /// LUN field (bytes 8..16), as sent.
    pub fn lun(&self) -> u64 {
        let mut w = [0; 8];
        w.copy_from_slice(&self.b()[field::LUN]);
        u64::from_be_bytes(w)
    }
    /// ISID of a login PDU.
    pub fn isid(&self) -> [u8; 6] {
        let mut i = [0; 6];
        i.copy_from_slice(&self.b()[field::ISID]);
        i
    }
    /// TSIH of a login PDU.
    pub fn tsih(&self) -> u16 {
        be16(self.b(), field::TSIH)
    }
    /// Initiator Task Tag.
    pub fn itt(&self) -> u32 {
        be32(self.b(), field::ITT)
    }
    /// Target Transfer Tag (Data-Out, R2T, NOP-In/Out).
    pub fn ttt(&self) -> u32 {
        be32(self.b(), field::WORD20)
    }
    /// Expected Data Transfer Length of a SCSI Command.
    pub fn edtl(&self) -> u32 {
        be32(self.b(), field::WORD20)
    }
    /// Referenced Task Tag of a TMF request.
    pub fn ref_task_tag(&self) -> u32 {
        be32(self.b(), field::WORD20)
    }
    /// CID of a login or logout request.
    pub fn cid(&self) -> u16 {
        be16(self.b(), field::CID)
    }
    /// CmdSN of a request.
    pub fn cmd_sn(&self) -> u32 {
        be32(self.b(), field::WORD24)
    }
    /// StatSN of a response.
    pub fn stat_sn(&self) -> u32 {
        be32(self.b(), field::WORD24)
    }
    /// ExpStatSN of a request.
    pub fn exp_stat_sn(&self) -> u32 {
        be32(self.b(), field::WORD28)
    }
    /// ExpCmdSN of a response.
    pub fn exp_cmd_sn(&self) -> u32 {
        be32(self.b(), field::WORD28)
    }
    /// MaxCmdSN of a response.
    pub fn max_cmd_sn(&self) -> u32 {
        be32(self.b(), field::WORD32)
    }
    /// RefCmdSN of a TMF request.
    pub fn ref_cmd_sn(&self) -> u32 {
        be32(self.b(), field::WORD32)
    }
    /// The 16-byte CDB of a SCSI Command.
    pub fn cdb(&self) -> &[u8] {
        &self.b()[field::CDB]
    }
    /// DataSN (Data-In, Data-Out); R2TSN (R2T); ExpDataSN (SCSI Response).
    pub fn data_sn(&self) -> u32 {
        be32(self.b(), field::WORD36)
    }
    /// Status-Class and Status-Detail of a Login Response.
    pub fn login_status(&self) -> (u8, u8) {
        (self.b()[36], self.b()[37])
    }
    /// AsyncEvent of an Asynchronous Message.
    pub fn async_event(&self) -> u8 {
        self.b()[36]
    }
    /// Parameter3 of an Asynchronous Message.
    pub fn parameter3(&self) -> u16 {
        be16(self.b(), field::PARAMETER3)
    }
    /// Buffer Offset (Data-In, Data-Out, R2T).
    pub fn buffer_offset(&self) -> u32 {
        be32(self.b(), field::BUFFER_OFFSET)
    }
    /// Residual Count (SCSI Response, final Data-In).
    pub fn residual_count(&self) -> u32 {
        be32(self.b(), field::WORD44)
    }
    /// Desired Data Transfer Length of an R2T.
    pub fn desired_len(&self) -> u32 {
        be32(self.b(), field::WORD44)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Bhs<T> {
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    /// The 48 header bytes, writable.
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[..BHS_LEN]
    }
    fn put32(&mut self, r: Range<usize>, v: u32) {
        self.m()[r].copy_from_slice(&v.to_be_bytes());
    }
    fn put16(&mut self, r: Range<usize>, v: u16) {
        self.m()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the opcode, keeping the I bit.
    pub fn set_opcode(&mut self, v: u8) {
        let b = &mut self.m()[field::OPCODE];
        *b = (*b & 0x40) | (v & 0x3f);
    }
    /// Sets the Immediate bit.
    pub fn set_immediate(&mut self, v: bool) {
        let b = &mut self.m()[field::OPCODE];
        *b = (*b & !0x40) | if v { 0x40 } else { 0 };
    }
    /// Sets byte 1.
    pub fn set_flags(&mut self, v: u8) {
        self.m()[field::FLAGS] = v;
    }
    /// Sets the response byte (SCSI, TMF, logout responses).
    pub fn set_response(&mut self, v: u8) {
        self.m()[field::BYTE2] = v;
    }
    /// Sets a Reject's reason.
    pub fn set_reject_reason(&mut self, v: u8) {
        self.m()[field::BYTE2] = v;
    }
    /// Sets the SCSI status (SCSI Response, final Data-In).
    pub fn set_status(&mut self, v: u8) {
        self.m()[field::BYTE3] = v;
    }
    /// Sets a login PDU's Version-Max and Version-Min/Active.
    pub fn set_versions(&mut self, max: u8, min: u8) {
        self.m()[field::BYTE2] = max;
        self.m()[field::BYTE3] = min;
    }
    /// Sets TotalAHSLength from a length in bytes (rounded up to words).
    pub fn set_ahs_len(&mut self, n: usize) {
        self.m()[field::TOTAL_AHS_LEN] = n.div_ceil(4) as u8;
    }
    /// Sets DataSegmentLength (24 bits).
    pub fn set_data_len(&mut self, n: usize) {
        let b = (n as u32).to_be_bytes();
        self.m()[field::DATA_SEGMENT_LEN].copy_from_slice(&b[1..4]);
    }
    /// Sets the LUN field.
    pub fn set_lun(&mut self, v: u64) {
        self.m()[field::LUN].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets a login PDU's ISID.
    pub fn set_isid(&mut self, v: [u8; 6]) {
        self.m()[field::ISID].copy_from_slice(&v);
    }
    /// Sets a login PDU's TSIH.
    pub fn set_tsih(&mut self, v: u16) {
        self.put16(field::TSIH, v)
    }
    /// Sets the Initiator Task Tag.
    pub fn set_itt(&mut self, v: u32) {
        self.put32(field::ITT, v)
    }
    /// Sets the Target Transfer Tag.
    pub fn set_ttt(&mut self, v: u32) {
        self.put32(field::WORD20, v)
    }
    /// Sets a SCSI Command's Expected Data Transfer Length.
    pub fn set_edtl(&mut self, v: u32) {
        self.put32(field::WORD20, v)
    }
    /// Sets a TMF request's Referenced Task Tag.
    pub fn set_ref_task_tag(&mut self, v: u32) {
        self.put32(field::WORD20, v)
    }
    /// Sets the CID of a login or logout request.
    pub fn set_cid(&mut self, v: u16) {
        self.put16(field::CID, v)
    }
    /// Sets a request's CmdSN.
    pub fn set_cmd_sn(&mut self, v: u32) {
        self.put32(field::WORD24, v)
    }
    /// Sets a response's StatSN.
    pub fn set_stat_sn(&mut self, v: u32) {
        self.put32(field::WORD24, v)
    }
    /// Sets a request's ExpStatSN.
    pub fn set_exp_stat_sn(&mut self, v: u32) {
        self.put32(field::WORD28, v)
    }
    /// Sets a response's ExpCmdSN.
    pub fn set_exp_cmd_sn(&mut self, v: u32) {
        self.put32(field::WORD28, v)
    }
    /// Sets a response's MaxCmdSN.
    pub fn set_max_cmd_sn(&mut self, v: u32) {
        self.put32(field::WORD32, v)
    }
    /// Sets a TMF request's RefCmdSN.
    pub fn set_ref_cmd_sn(&mut self, v: u32) {
        self.put32(field::WORD32, v)
    }
    /// Sets a SCSI Command's CDB (at most 16 bytes; the rest zeroed).
    pub fn set_cdb(&mut self, cdb: &[u8]) {
        let n = cdb.len().min(16);
        let c = &mut self.m()[field::CDB];
        c.fill(0);
        c[..n].copy_from_slice(&cdb[..n]);
    }
    /// Sets DataSN / R2TSN / ExpDataSN.
    pub fn set_data_sn(&mut self, v: u32) {
        self.put32(field::WORD36, v)
    }
    /// Sets a Login Response's Status-Class and Status-Detail.
    pub fn set_login_status(&mut self, class: u8, detail: u8) {
        self.m()[36] = class;
        self.m()[37] = detail;
    }
    /// Sets an Asynchronous Message's AsyncEvent.
    pub fn set_async_event(&mut self, v: u8) {
        self.m()[36] = v;
    }
    /// Sets an Asynchronous Message's Parameter3.
    pub fn set_parameter3(&mut self, v: u16) {
        self.put16(field::PARAMETER3, v)
    }
    /// Sets the Buffer Offset.
    pub fn set_buffer_offset(&mut self, v: u32) {
        self.put32(field::BUFFER_OFFSET, v)
    }
    /// Sets the Residual Count.
    pub fn set_residual_count(&mut self, v: u32) {
        self.put32(field::WORD44, v)
    }
    /// Sets an R2T's Desired Data Transfer Length.
    pub fn set_desired_len(&mut self, v: u32) {
        self.put32(field::WORD44, v)
    }
}

/// Declares an opcode-checked view: a [`Bhs`] known to carry `$op`, with
/// the common accessors through `Deref`.
macro_rules! view {
    ($(#[$m:meta])* $name:ident, $op:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<T: AsRef<[u8]> = [u8; BHS_LEN]>(Bhs<T>);

        impl<T: AsRef<[u8]>> $name<T> {
            /// The opcode this view is for.
            pub const OPCODE: u8 = $op;

            /// The view of `bhs`, if it has this opcode.
            pub fn new_checked(bhs: Bhs<T>) -> Result<Self, BhsError> {
                if bhs.opcode() != $op {
                    return Err(BhsError::Opcode { want: $op, found: bhs.opcode() });
                }
                Ok($name(bhs))
            }

            /// The view of `bhs` whose opcode the caller has checked
            /// (a dispatcher matching on [`Bhs::opcode`]).
            pub fn new_unchecked_view(bhs: Bhs<T>) -> Self {
                debug_assert_eq!(bhs.opcode(), $op);
                $name(bhs)
            }

            /// The header under the view.
            pub fn into_bhs(self) -> Bhs<T> {
                self.0
            }
        }

        impl<T: AsRef<[u8]>> Deref for $name<T> {
            type Target = Bhs<T>;
            fn deref(&self) -> &Bhs<T> {
                &self.0
            }
        }

        impl<T: AsRef<[u8]>> DerefMut for $name<T> {
            fn deref_mut(&mut self) -> &mut Bhs<T> {
                &mut self.0
            }
        }
    };
}

view!(
    /// A Login Request (RFC 7143 11.12).
    LoginRequest,
    super::op::LOGIN_REQ
);
view!(
    /// A SCSI Command (RFC 7143 11.3).
    ScsiCmd,
    super::op::SCSI_CMD
);
view!(
    /// A SCSI Data-Out (RFC 7143 11.7).
    DataOut,
    super::op::DATA_OUT
);
view!(
    /// A Task Management Function Request (RFC 7143 11.5).
    TaskMgmtRequest,
    super::op::TMF_REQ
);
view!(
    /// A Logout Request (RFC 7143 11.14).
    LogoutRequest,
    super::op::LOGOUT_REQ
);

/// Login stages (CSG/NSG, RFC 7143 11.12.3).
pub mod stage {
    /// SecurityNegotiation.
    pub const SECURITY: u8 = 0;
    /// LoginOperationalNegotiation.
    pub const OPERATIONAL: u8 = 1;
    /// FullFeaturePhase.
    pub const FULL_FEATURE: u8 = 3;
}

/// Login PDU flag bits.
pub mod login_flags {
    /// Transit.
    pub const TRANSIT: u8 = 0x80;
    /// Continue.
    pub const CONTINUE: u8 = 0x40;
}

impl<T: AsRef<[u8]>> LoginRequest<T> {
    /// The T bit: the initiator is ready to go to NSG.
    pub fn transit(&self) -> bool {
        self.flags() & login_flags::TRANSIT != 0
    }
    /// The C bit: the text continues in the next PDU.
    pub fn continues(&self) -> bool {
        self.flags() & login_flags::CONTINUE != 0
    }
    /// Current stage.
    pub fn csg(&self) -> u8 {
        (self.flags() >> 2) & 3
    }
    /// Next stage (meaningful with the T bit).
    pub fn nsg(&self) -> u8 {
        self.flags() & 3
    }
    /// Version-Max.
    pub fn version_max(&self) -> u8 {
        self.as_bytes()[field::BYTE2]
    }
    /// Version-Min.
    pub fn version_min(&self) -> u8 {
        self.as_bytes()[field::BYTE3]
    }
}

/// Login Response flags: T bit, CSG and NSG.
pub fn login_response_flags(transit: bool, csg: u8, nsg: u8) -> u8 {
    (if transit {
        login_flags::TRANSIT | (nsg & 3)
    } else {
        0
    }) | ((csg & 3) << 2)
}

impl<T: AsRef<[u8]>> ScsiCmd<T> {
    /// The R bit: the command reads (Data-In expected).
    pub fn read(&self) -> bool {
        self.flags() & 0x40 != 0
    }
    /// The W bit: the command writes (Data-Out expected).
    pub fn write(&self) -> bool {
        self.flags() & 0x20 != 0
    }
    /// Task attributes (low 3 bits of the flags).
    pub fn attr(&self) -> u8 {
        self.flags() & 7
    }
}

impl<T: AsRef<[u8]>> TaskMgmtRequest<T> {
    /// The function code (RFC 7143 11.5.1: 1 ABORT TASK ... 8 TASK REASSIGN).
    pub fn tmf_function(&self) -> u8 {
        self.function()
    }
}

impl<T: AsRef<[u8]>> LogoutRequest<T> {
    /// The reason code (0 close the session, 1 the connection, 2 recovery).
    pub fn reason(&self) -> u8 {
        self.function()
    }
}

#[cfg(test)]
mod tests {
    use super::super::op;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_at_their_rfc_offsets() {
        let mut b = Bhs::new(op::SCSI_CMD, 0xc1);
        b.set_immediate(true);
        b.set_lun(0x0001_0000_0000_0000);
        b.set_itt(0x1122_3344);
        b.set_edtl(4096);
        b.set_cmd_sn(7);
        b.set_exp_stat_sn(9);
        b.set_cdb(&[0x28, 0, 0, 0, 0, 1, 0, 0, 8, 0]);
        b.set_data_len(0x01_0203);
        b.set_ahs_len(5);
        let x = b.as_bytes();
        assert_eq!(x[0], 0x41);
        assert_eq!(x[1], 0xc1);
        assert_eq!(x[4], 2, "5 bytes of AHS round up to 2 words");
        assert_eq!(&x[5..8], &[1, 2, 3]);
        assert_eq!(&x[8..10], &[0, 1]);
        assert_eq!(&x[16..20], &[0x11, 0x22, 0x33, 0x44]);
        assert_eq!(&x[20..24], &4096u32.to_be_bytes());
        assert_eq!(&x[24..28], &7u32.to_be_bytes());
        assert_eq!(&x[28..32], &9u32.to_be_bytes());
        assert_eq!(x[32], 0x28);
        assert_eq!(x[40], 8);
        let c = ScsiCmd::new_checked(b).unwrap();
        assert!(c.read());
        assert!(!c.write());
        assert_eq!(c.attr(), 1);
        assert!(c.immediate());
        assert_eq!(c.opcode(), op::SCSI_CMD);
        assert_eq!(c.ahs_len(), 8);
    }

    #[test]
    fn login_view_decodes_stages() {
        let mut b = Bhs::new(op::LOGIN_REQ, 0x87);
        b.set_isid([0x80, 1, 2, 3, 4, 5]);
        b.set_tsih(0x1234);
        b.set_cid(3);
        b.set_versions(0, 0);
        let l = LoginRequest::new_checked(b).unwrap();
        assert!(l.transit() && !l.continues());
        assert_eq!(
            (l.csg(), l.nsg()),
            (stage::OPERATIONAL, stage::FULL_FEATURE)
        );
        assert_eq!(l.isid(), [0x80, 1, 2, 3, 4, 5]);
        assert_eq!(l.tsih(), 0x1234);
        assert_eq!(l.cid(), 3);
        assert_eq!(
            login_response_flags(true, stage::OPERATIONAL, stage::FULL_FEATURE),
            0x87
        );
        assert_eq!(login_response_flags(false, stage::SECURITY, 1), 0);
        assert_eq!(
            LoginRequest::new_checked(Bhs::new(op::TEXT_REQ, 0)),
            Err(BhsError::Opcode {
                want: op::LOGIN_REQ,
                found: op::TEXT_REQ
            })
        );
    }

    #[test]
    fn parse_rejects_short_headers() {
        assert_eq!(Bhs::parse(&[0; 47]), Err(BhsError::Truncated { len: 47 }));
        assert!(Bhs::new_checked(&[0u8; 10][..]).is_err());
        let bytes = [0u8; 60];
        assert!(Bhs::new_checked(&bytes[..]).is_ok());
        assert!(Bhs::parse(&bytes).is_ok());
    }

    #[test]
    fn response_fields() {
        let mut b = Bhs::new(op::LOGIN_RESP, 0);
        b.set_login_status(2, 1);
        b.set_stat_sn(5);
        b.set_exp_cmd_sn(6);
        b.set_max_cmd_sn(70);
        assert_eq!(b.login_status(), (2, 1));
        assert_eq!((b.stat_sn(), b.exp_cmd_sn(), b.max_cmd_sn()), (5, 6, 70));
        let mut a = Bhs::new(op::ASYNC, 0x80);
        a.set_async_event(1);
        a.set_parameter3(30);
        assert_eq!((a.async_event(), a.parameter3()), (1, 30));
        let mut r = Bhs::new(op::R2T, 0x80);
        r.set_data_sn(2);
        r.set_buffer_offset(8192);
        r.set_desired_len(4096);
        assert_eq!(
            (r.data_sn(), r.buffer_offset(), r.desired_len()),
            (2, 8192, 4096)
        );
        let mut s = Bhs::new(op::SCSI_RESP, 0x82);
        s.set_response(0);
        s.set_status(2);
        s.set_residual_count(512);
        assert_eq!((s.response(), s.status(), s.residual_count()), (0, 2, 512));
    }

    proptest! {
        /// Every setter's value comes back from its getter, through an
        /// owned header and a borrowed view of its bytes.
        #[test]
        fn set_get_round_trip(opcode in 0u8..0x40, imm in any::<bool>(), flags in any::<u8>(),
                              lun in any::<u64>(), itt in any::<u32>(), w20 in any::<u32>(),
                              w24 in any::<u32>(), w28 in any::<u32>(), w32 in any::<u32>(),
                              w36 in any::<u32>(), off in any::<u32>(), w44 in any::<u32>(),
                              dlen in 0usize..(1 << 24)) {
            let mut b = Bhs::new(opcode, flags);
            b.set_immediate(imm);
            b.set_lun(lun);
            b.set_itt(itt);
            b.set_ttt(w20);
            b.set_cmd_sn(w24);
            b.set_exp_stat_sn(w28);
            b.set_max_cmd_sn(w32);
            b.set_data_sn(w36);
            b.set_buffer_offset(off);
            b.set_residual_count(w44);
            b.set_data_len(dlen);
            let bytes = b.as_bytes().to_vec();
            let v = Bhs::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(v.opcode(), opcode);
            prop_assert_eq!(v.immediate(), imm);
            prop_assert_eq!(v.flags(), flags);
            prop_assert_eq!(v.lun(), lun);
            prop_assert_eq!(v.itt(), itt);
            prop_assert_eq!(v.ttt(), w20);
            prop_assert_eq!(v.cmd_sn(), w24);
            prop_assert_eq!(v.exp_stat_sn(), w28);
            prop_assert_eq!(v.max_cmd_sn(), w32);
            prop_assert_eq!(v.data_sn(), w36);
            prop_assert_eq!(v.buffer_offset(), off);
            prop_assert_eq!(v.residual_count(), w44);
            prop_assert_eq!(v.data_len(), dlen);
            prop_assert_eq!(v.to_owned(), b);
        }

        /// Parsing any 48 bytes and writing the fields back gives the same bytes.
        #[test]
        fn parse_emit_round_trip(mut bytes in proptest::collection::vec(any::<u8>(), 48..64)) {
            bytes[0] &= 0x7f; // reserved bit
            let v = Bhs::parse(&bytes).unwrap();
            let mut b = Bhs::new(v.opcode(), v.flags());
            b.set_immediate(v.immediate());
            b.set_response(v.response());
            b.set_status(v.status());
            b.as_mut_bytes()[field::TOTAL_AHS_LEN] = bytes[field::TOTAL_AHS_LEN];
            b.set_data_len(v.data_len());
            b.set_lun(v.lun());
            b.set_itt(v.itt());
            b.set_ttt(v.ttt());
            b.set_cmd_sn(v.cmd_sn());
            b.set_exp_stat_sn(v.exp_stat_sn());
            b.set_cdb(v.cdb());
            prop_assert_eq!(b.as_bytes(), &bytes[..48]);
        }
    }
}
