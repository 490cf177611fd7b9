//! The SPC/SBC commands that describe the LUN: INQUIRY and its VPD pages,
//! READ CAPACITY, MODE SENSE/SELECT, REQUEST SENSE, GET LBA STATUS,
//! REPORT SUPPORTED OPERATION CODES, READ DEFECT DATA (SPDK:
//! lib/scsi/scsi_bdev.c's non-data commands).

use super::*;

impl ScsiLun {
    pub(super) fn request_sense(&self, cdb: &Cdb) -> ScsiResult {
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

    pub(super) fn inquiry(&self, cdb: &Cdb, desc: &BdevDesc) -> ScsiResult {
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

    pub(super) fn thin(&self, desc: &BdevDesc) -> bool {
        desc.bdev().io_type_supported(IoType::Unmap)
    }

    pub(super) fn lbprz(&self, desc: &BdevDesc) -> bool {
        matches!(desc.bdev().module_name(), "malloc" | "null")
    }

    pub(super) fn read_capacity10(&self, desc: &BdevDesc) -> ScsiResult {
        let last = desc.bdev().num_blocks().saturating_sub(1);
        let mut d = Vec::with_capacity(8);
        d.extend_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
        d.extend_from_slice(&desc.bdev().block_size().to_be_bytes());
        good(d)
    }

    pub(super) fn read_capacity16(&self, cdb: &Cdb, desc: &BdevDesc) -> ScsiResult {
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

    pub(super) fn get_lba_status(&self, cdb: &Cdb, desc: &BdevDesc) -> ScsiResult {
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

    pub(super) fn mode_sense(&self, cdb: &Cdb, desc: &BdevDesc) -> ScsiResult {
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

pub(super) fn mode_select(cdb: &Cdb, data: &[u8]) -> ScsiResult {
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

pub(super) fn report_opcodes(cdb: &Cdb) -> ScsiResult {
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

/// READ DEFECT DATA(10)/(12): no defects, in the format asked for.
pub(super) fn read_defect_data(cdb: &Cdb) -> ScsiResult {
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
