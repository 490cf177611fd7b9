//! Command data as NVMe/TCP moves it: the SGL every fabrics command
//! carries, the direction of its data, and copies between PDUs and the
//! caller's buffers (contiguous, scatter-gather or a DSM range).

use super::{fctype, FABRICS_OPCODE};
use crate::queue::Payload;
use crate::spec::Sqe;

/// Fills SGL1 of a fabrics command: PSDT 01b always (even without data:
/// Linux's nvmet refuses anything else), one data block descriptor
/// (NVMe-oF 1.1, section 2.3.1): in-capsule with offset 0 (type 0, subtype
/// 1), or a transport data block (type 5, subtype Ah; with length 0 the
/// null descriptor).
pub(super) fn set_sgl(cmd: &mut Sqe, len: usize, in_capsule: bool) {
    cmd.set_psdt(1);
    cmd.dw[6] = 0;
    cmd.dw[7] = 0;
    cmd.dw[8] = len as u32;
    cmd.dw[9] = if in_capsule { 0x01 } else { 0x5a } << 24;
}

/// Whether a command moves data from host to controller.
pub(super) fn is_write(cmd: &Sqe) -> bool {
    if cmd.opcode() == FABRICS_OPCODE {
        return cmd.dw[1] as u8 == fctype::CONNECT;
    }
    cmd.opcode() & 0b11 != 0b10
}

pub(super) fn payload_len(p: &Payload) -> usize {
    match p {
        Payload::None => 0,
        Payload::Contig { len, .. } | Payload::Sgl { len, .. } => *len,
        Payload::DsmRange(_) => 16,
    }
}

/// Copies `data` into `p` at byte `off`. False if it does not fit.
pub(super) fn scatter(p: &Payload, off: usize, data: &[u8]) -> bool {
    if off + data.len() > payload_len(p) {
        return false;
    }
    match *p {
        Payload::Contig { vaddr, .. } => {
            // SAFETY: the submitter promised (unsafe submission functions)
            // that `vaddr..vaddr+len` is valid writable memory it leaves
            // alone until completion; `off + data.len() <= len` above.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), (vaddr + off) as *mut u8, data.len())
            };
            true
        }
        Payload::Sgl { fns, .. } => {
            (fns.reset)(fns.arg, off as u32);
            let mut done = 0;
            while done < data.len() {
                let (a, l) = (fns.next)(fns.arg);
                if l == 0 {
                    return false;
                }
                let n = (l as usize).min(data.len() - done);
                // SAFETY: each element the caller's SGE callbacks yield is
                // memory valid until completion (readv's contract).
                unsafe { std::ptr::copy_nonoverlapping(data[done..].as_ptr(), a as *mut u8, n) };
                done += n;
            }
            true
        }
        Payload::None | Payload::DsmRange(_) => false,
    }
}

/// Appends `len` bytes of `p` from byte `off` to `out`. False if `p` is
/// shorter.
pub(super) fn gather(p: &Payload, off: usize, len: usize, out: &mut Vec<u8>) -> bool {
    if off + len > payload_len(p) {
        return false;
    }
    match *p {
        Payload::Contig { vaddr, .. } => {
            // SAFETY: as in `scatter`: valid for `len` bytes until completion.
            let s = unsafe { std::slice::from_raw_parts((vaddr + off) as *const u8, len) };
            out.extend_from_slice(s);
            true
        }
        Payload::Sgl { fns, .. } => {
            (fns.reset)(fns.arg, off as u32);
            let mut done = 0;
            while done < len {
                let (a, l) = (fns.next)(fns.arg);
                if l == 0 {
                    return false;
                }
                let n = (l as usize).min(len - done);
                // SAFETY: as in `scatter`, for one element.
                out.extend_from_slice(unsafe { std::slice::from_raw_parts(a as *const u8, n) });
                done += n;
            }
            true
        }
        Payload::DsmRange(r) => {
            let mut b = [0u8; 16];
            b[0..4].copy_from_slice(&r.attributes.to_le_bytes());
            b[4..8].copy_from_slice(&r.nlb.to_le_bytes());
            b[8..16].copy_from_slice(&r.slba.to_le_bytes());
            out.extend_from_slice(&b[off..off + len]);
            true
        }
        Payload::None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::AdminOpcode;

    #[test]
    fn every_command_carries_an_sgl_even_without_data() {
        // Keep Alive, Property Get, AER: no data, still PSDT 01b and a null
        // transport data block (the kernel target checks PSDT).
        let mut s = Sqe::new(AdminOpcode::KeepAlive.into(), 0);
        set_sgl(&mut s, 0, false);
        assert_eq!(s.psdt(), 1);
        assert_eq!((s.dw[8], s.dw[9] >> 24), (0, 0x5a));
        let mut s = Sqe::new(0x01, 1);
        set_sgl(&mut s, 4096, true);
        assert_eq!((s.psdt(), s.dw[8], s.dw[9] >> 24), (1, 4096, 0x01));
        let mut s = Sqe::new(0x02, 1);
        set_sgl(&mut s, 131072, false);
        assert_eq!((s.psdt(), s.dw[8], s.dw[9] >> 24), (1, 131072, 0x5a));
    }

    #[test]
    fn direction_of_data() {
        assert!(is_write(&Sqe::new(0x01, 1)));
        assert!(!is_write(&Sqe::new(0x02, 1)));
        assert!(is_write(&Sqe::new(0x05, 1)), "compare sends data");
        assert!(is_write(&Sqe::new(FABRICS_OPCODE, fctype::CONNECT as u32)));
        assert!(!is_write(&Sqe::new(
            FABRICS_OPCODE,
            fctype::PROPERTY_GET as u32
        )));
        assert!(!is_write(&Sqe::new(AdminOpcode::Identify.into(), 0)));
    }

    #[test]
    fn dsm_range_is_gathered_as_16_bytes() {
        let mut out = Vec::new();
        let p = Payload::DsmRange(crate::spec::DsmRange {
            attributes: 0,
            nlb: 8,
            slba: 0x1_0000_0002,
        });
        assert!(gather(&p, 0, 16, &mut out));
        assert_eq!(out, [0, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
        assert!(!gather(&p, 8, 16, &mut out), "past its end");
        let mut b = [0u8; 8];
        let p = Payload::Contig {
            vaddr: b.as_mut_ptr() as usize,
            len: 8,
        };
        assert!(scatter(&p, 4, &[1, 2, 3, 4]));
        assert!(!scatter(&p, 6, &[1, 2, 3]), "past its end");
        assert_eq!(b, [0, 0, 0, 0, 1, 2, 3, 4]);
    }
}
