//! NVMe over Fabrics (revision 1.1) commands and structures: the fabrics
//! opcode and command types, Connect (command, data, response), Property
//! Get and Set (at the controller register offsets of [`super::reg`]), and
//! the discovery log page.

use std::ops::Range;

use super::cmd::Sqe;

/// The opcode of every fabrics command (figure 11).
pub const OPCODE: u8 = 0x7f;

/// Fabrics command types (FCTYPE, CDW0 byte 4; figure 13).
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
    /// Authentication Send.
    pub const AUTHENTICATION_SEND: u8 = 0x05;
    /// Authentication Receive.
    pub const AUTHENTICATION_RECV: u8 = 0x06;
    /// Disconnect.
    pub const DISCONNECT: u8 = 0x08;
}

/// The fabrics command type of `sqe` (meaningful when its opcode is
/// [`OPCODE`]).
pub fn fctype_of(sqe: &Sqe) -> u8 {
    sqe.dw[1] as u8
}

/// Connect attributes (CATTR, figure 19).
pub mod cattr {
    /// The host disables SQ flow control: the controller need not report
    /// SQ head pointers (NVMe/TCP may then skip the response of a read,
    /// C2HData carrying the SUCCESS flag).
    pub const DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;
}

/// A Connect command's fields (figure 19): the record format, queue id,
/// submission queue size (0's based), attributes and keep-alive timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Connect {
    /// Record Format (0).
    pub recfmt: u16,
    /// Queue ID (0: admin).
    pub qid: u16,
    /// Submission Queue Size, 0's based.
    pub sqsize: u16,
    /// Connect Attributes ([`cattr`]).
    pub cattr: u8,
    /// Keep Alive Timeout, milliseconds.
    pub kato: u32,
}

impl Connect {
    /// The fields of the Connect command `sqe`.
    pub fn parse(sqe: &Sqe) -> Connect {
        Connect {
            recfmt: sqe.dw[10] as u16,
            qid: (sqe.dw[10] >> 16) as u16,
            sqsize: sqe.dw[11] as u16,
            cattr: (sqe.dw[11] >> 16) as u8,
            kato: sqe.dw[12],
        }
    }

    /// Writes the fields (and the fabrics opcode and FCTYPE) into `sqe`.
    pub fn emit(&self, sqe: &mut Sqe) {
        sqe.dw[0] = (sqe.dw[0] & !0xff) | OPCODE as u32;
        sqe.dw[1] = (sqe.dw[1] & !0xff) | fctype::CONNECT as u32;
        sqe.dw[10] = self.recfmt as u32 | ((self.qid as u32) << 16);
        sqe.dw[11] = self.sqsize as u32 | ((self.cattr as u32) << 16);
        sqe.dw[12] = self.kato;
    }
}

/// Byte offsets of a Connect command's fields in its SQE (figure 19), as
/// named by a Connect response's Invalid Parameter Offset.
pub mod connect_cmd_field {
    /// The SGL descriptor of the Connect data (DPTR).
    pub const DPTR: u16 = 24;
    /// Record Format.
    pub const RECFMT: u16 = 40;
    /// Queue ID.
    pub const QID: u16 = 42;
    /// Submission Queue Size.
    pub const SQSIZE: u16 = 44;
    /// Connect Attributes.
    pub const CATTR: u16 = 46;
    /// Keep Alive Timeout.
    pub const KATO: u16 = 48;
}

/// DW0 of a Connect that failed with Invalid Parameters (figure 21): the
/// Invalid Parameter Offset and whether it is in the Connect data
/// (IATTR bit 0) or in the command.
pub fn connect_invalid_dw0(ipo: u16, in_data: bool) -> u32 {
    ipo as u32 | ((in_data as u32) << 16)
}

/// Byte ranges of [`ConnectData`] fields (figure 20).
pub mod connect_field {
    use std::ops::Range;
    /// Host Identifier.
    pub const HOSTID: Range<usize> = 0..16;
    /// Controller ID (0xffff: dynamic).
    pub const CNTLID: Range<usize> = 16..18;
    /// NVM Subsystem NQN.
    pub const SUBNQN: Range<usize> = 256..512;
    /// Host NQN.
    pub const HOSTNQN: Range<usize> = 512..768;
}

byte_view!(
    /// The data of a Connect command (figure 20), 1024 bytes.
    ConnectData,
    1024
);

impl ConnectData {
    /// The Host Identifier.
    pub fn hostid(&self) -> [u8; 16] {
        let mut h = [0u8; 16];
        h.copy_from_slice(&self.bytes[connect_field::HOSTID]);
        h
    }
    /// The controller id asked for (0xffff: any, for an admin queue).
    pub fn cntlid(&self) -> u16 {
        self.le(connect_field::CNTLID) as u16
    }
    /// The subsystem NQN.
    pub fn subnqn(&self) -> String {
        self.nqn(connect_field::SUBNQN)
    }
    /// The host NQN.
    pub fn hostnqn(&self) -> String {
        self.nqn(connect_field::HOSTNQN)
    }
    /// Sets the Host Identifier.
    pub fn set_hostid(&mut self, id: &[u8; 16]) {
        self.bytes[connect_field::HOSTID].copy_from_slice(id);
    }
    /// Sets the controller id.
    pub fn set_cntlid(&mut self, id: u16) {
        self.set_le(connect_field::CNTLID, id as u64);
    }
    /// Sets the subsystem NQN (NUL-padded).
    pub fn set_subnqn(&mut self, nqn: &str) {
        self.set_str0(connect_field::SUBNQN, nqn);
    }
    /// Sets the host NQN (NUL-padded).
    pub fn set_hostnqn(&mut self, nqn: &str) {
        self.set_str0(connect_field::HOSTNQN, nqn);
    }
    /// An NQN field: the text before its first NUL, trailing spaces
    /// dropped.
    fn nqn(&self, r: Range<usize>) -> String {
        let s = &self.bytes[r];
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        String::from_utf8_lossy(&s[..end]).trim_end().to_string()
    }
}

/// A Property Get or Set command's fields (figures 14, 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Property {
    /// ATTRIB bits 2:0 = 1: an 8-byte property (else 4 bytes).
    pub eight_bytes: bool,
    /// Property offset (the register offsets of [`super::reg`]).
    pub offset: u32,
    /// The value to set (Property Set; CDW12-13).
    pub value: u64,
}

impl Property {
    /// The fields of the Property Get or Set command `sqe`.
    pub fn parse(sqe: &Sqe) -> Property {
        Property {
            eight_bytes: sqe.dw[10] & 7 == 1,
            offset: sqe.dw[11],
            value: sqe.dw[12] as u64 | ((sqe.dw[13] as u64) << 32),
        }
    }

    /// Writes a Property Get (`set` false) or Set into `sqe`.
    pub fn emit(&self, sqe: &mut Sqe, set: bool) {
        let t = if set {
            fctype::PROPERTY_SET
        } else {
            fctype::PROPERTY_GET
        };
        sqe.dw[0] = (sqe.dw[0] & !0xff) | OPCODE as u32;
        sqe.dw[1] = (sqe.dw[1] & !0xff) | t as u32;
        sqe.dw[10] = self.eight_bytes as u32;
        sqe.dw[11] = self.offset;
        if set {
            sqe.dw[12] = self.value as u32;
            sqe.dw[13] = (self.value >> 32) as u32;
        }
    }
}

/// Byte ranges of the discovery log page header (figure 38).
pub mod discovery_field {
    use std::ops::Range;
    /// Generation Counter.
    pub const GENCTR: Range<usize> = 0..8;
    /// Number of Records.
    pub const NUMREC: Range<usize> = 8..16;
    /// Record Format.
    pub const RECFMT: Range<usize> = 16..18;
    /// Where the first entry starts (and each entry's size).
    pub const ENTRY_SIZE: usize = 1024;
}

/// Byte ranges of a [`DiscoveryLogEntry`]'s fields (figure 39).
pub mod discovery_entry_field {
    use std::ops::Range;
    /// Transport Type.
    pub const TRTYPE: Range<usize> = 0..1;
    /// Address Family.
    pub const ADRFAM: Range<usize> = 1..2;
    /// Subsystem Type.
    pub const SUBTYPE: Range<usize> = 2..3;
    /// Transport Requirements.
    pub const TREQ: Range<usize> = 3..4;
    /// Port ID.
    pub const PORTID: Range<usize> = 4..6;
    /// Controller ID (0xffff: dynamic).
    pub const CNTLID: Range<usize> = 6..8;
    /// Admin Max SQ Size.
    pub const ASQSZ: Range<usize> = 8..10;
    /// Transport Service Identifier (the TCP port, as text).
    pub const TRSVCID: Range<usize> = 32..64;
    /// NVM Subsystem Qualified Name.
    pub const SUBNQN: Range<usize> = 256..512;
    /// Transport Address.
    pub const TRADDR: Range<usize> = 512..768;
}

/// Transport types (TRTYPE, figure 39).
pub mod trtype {
    /// RDMA.
    pub const RDMA: u8 = 1;
    /// Fibre Channel.
    pub const FC: u8 = 2;
    /// TCP.
    pub const TCP: u8 = 3;
}

/// Address families (ADRFAM, figure 39).
pub mod adrfam {
    /// IPv4.
    pub const IPV4: u8 = 1;
    /// IPv6.
    pub const IPV6: u8 = 2;
}

/// Subsystem types (SUBTYPE, figure 39).
pub mod subtype {
    /// A referral to another discovery service.
    pub const DISCOVERY: u8 = 1;
    /// An NVM subsystem.
    pub const NVME: u8 = 2;
}

/// Transport requirements (TREQ bits 1:0, figure 39).
pub mod treq {
    /// Secure channel not required.
    pub const SECURE_CHANNEL_NOT_REQUIRED: u8 = 0x02;
}

byte_view!(
    /// One discovery log page entry (figure 39), 1024 bytes.
    DiscoveryLogEntry,
    1024
);

impl DiscoveryLogEntry {
    /// Transport type ([`trtype`]).
    pub fn trtype(&self) -> u8 {
        self.bytes[discovery_entry_field::TRTYPE.start]
    }
    /// Address family ([`adrfam`]).
    pub fn adrfam(&self) -> u8 {
        self.bytes[discovery_entry_field::ADRFAM.start]
    }
    /// Subsystem type ([`subtype`]).
    pub fn subtype(&self) -> u8 {
        self.bytes[discovery_entry_field::SUBTYPE.start]
    }
    /// Port id.
    pub fn portid(&self) -> u16 {
        self.le(discovery_entry_field::PORTID) as u16
    }
    /// Admin max SQ size.
    pub fn asqsz(&self) -> u16 {
        self.le(discovery_entry_field::ASQSZ) as u16
    }
    /// Transport service id (the port).
    pub fn trsvcid(&self) -> String {
        self.text(discovery_entry_field::TRSVCID)
    }
    /// Subsystem NQN.
    pub fn subnqn(&self) -> String {
        self.text(discovery_entry_field::SUBNQN)
    }
    /// Transport address.
    pub fn traddr(&self) -> String {
        self.text(discovery_entry_field::TRADDR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_command_round_trip() {
        let c = Connect {
            recfmt: 0,
            qid: 3,
            sqsize: 127,
            cattr: cattr::DISABLE_SQ_FLOW_CONTROL,
            kato: 30_000,
        };
        let mut sqe = Sqe::default();
        sqe.set_cid(9);
        c.emit(&mut sqe);
        assert_eq!(sqe.opcode(), OPCODE);
        assert_eq!(fctype_of(&sqe), fctype::CONNECT);
        assert_eq!(sqe.cid(), 9);
        assert_eq!(Connect::parse(&sqe), c);
        assert_eq!(sqe.dw[10], 3 << 16);
        assert_eq!(connect_invalid_dw0(256, true), 0x1_0100);
    }

    #[test]
    fn connect_data_round_trip() {
        let mut d = ConnectData::default();
        d.set_hostid(&[7; 16]);
        d.set_cntlid(0xffff);
        d.set_subnqn("nqn.2016-06.io.spdk:cnode1");
        d.set_hostnqn("nqn.2014-08.org.nvmexpress:uuid:1");
        let p = ConnectData::from_bytes(&d.bytes).unwrap();
        assert_eq!(p, d);
        assert_eq!(p.hostid(), [7; 16]);
        assert_eq!(p.cntlid(), 0xffff);
        assert_eq!(p.subnqn(), "nqn.2016-06.io.spdk:cnode1");
        assert_eq!(p.hostnqn(), "nqn.2014-08.org.nvmexpress:uuid:1");
        assert_eq!(&p.bytes[256..260], b"nqn.");
        // Text after the first NUL is not part of the NQN.
        let mut q = p.clone();
        q.bytes[256 + 4] = 0;
        assert_eq!(q.subnqn(), "nqn.");
        assert!(ConnectData::from_bytes(&[0; 1023]).is_none());
    }

    #[test]
    fn property_round_trip() {
        for (set, p) in [
            (
                false,
                Property {
                    eight_bytes: true,
                    offset: super::super::reg::CAP as u32,
                    value: 0,
                },
            ),
            (
                true,
                Property {
                    eight_bytes: false,
                    offset: super::super::reg::CC as u32,
                    value: 0x46_0001,
                },
            ),
        ] {
            let mut sqe = Sqe::default();
            p.emit(&mut sqe, set);
            assert_eq!(sqe.opcode(), OPCODE);
            let t = if set {
                fctype::PROPERTY_SET
            } else {
                fctype::PROPERTY_GET
            };
            assert_eq!(fctype_of(&sqe), t);
            assert_eq!(Property::parse(&sqe), p);
        }
    }

    #[test]
    fn discovery_entry_round_trip() {
        use discovery_entry_field as f;
        let mut e = DiscoveryLogEntry::default();
        e.set_le(f::TRTYPE, trtype::TCP as u64);
        e.set_le(f::ADRFAM, adrfam::IPV4 as u64);
        e.set_le(f::SUBTYPE, subtype::NVME as u64);
        e.set_le(f::TREQ, treq::SECURE_CHANNEL_NOT_REQUIRED as u64);
        e.set_le(f::PORTID, 1);
        e.set_le(f::CNTLID, 0xffff);
        e.set_le(f::ASQSZ, 128);
        e.set_str0(f::TRSVCID, "4420");
        e.set_str0(f::SUBNQN, "nqn.2016-06.io.spdk:cnode1");
        e.set_str0(f::TRADDR, "127.0.0.1");
        let p = DiscoveryLogEntry::from_bytes(&e.bytes).unwrap();
        assert_eq!(p, e);
        assert_eq!((p.trtype(), p.adrfam(), p.subtype()), (3, 1, 2));
        assert_eq!((p.portid(), p.asqsz()), (1, 128));
        assert_eq!(p.trsvcid(), "4420");
        assert_eq!(p.subnqn(), "nqn.2016-06.io.spdk:cnode1");
        assert_eq!(p.traddr(), "127.0.0.1");
        assert_eq!(e.bytes[3], 0x02);
    }
}
