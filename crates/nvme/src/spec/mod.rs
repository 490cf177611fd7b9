//! NVMe data structures as typed views over bytes (NVM Express Base
//! Specification 1.4c; section and figure numbers cite it). No bitfields:
//! each structure keeps its bytes and each field is a byte range or a bit
//! range in `mod field`, read and written by accessors, so parsing and
//! emitting are the same table.
//!
//! One submodule per kind of structure, all re-exported here so that
//! `rspdk_nvme::spec::X` names each of them: [`regs`] (registers and
//! fabrics properties), [`cmd`] (opcodes, SQE, CQE, SGL), [`identify`],
//! [`log`] (log pages), [`status`] (status codes by name) and [`fabrics`]
//! (NVMe over Fabrics commands, Connect data and the discovery log).

/// A view over a fixed-size structure's bytes.
macro_rules! byte_view {
    ($(#[$m:meta])* $name:ident, $size:expr) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name {
            /// The raw bytes, as the controller returned them.
            pub bytes: [u8; $size],
        }

        const _: () = assert!(std::mem::size_of::<$name>() == $size);

        impl Default for $name {
            fn default() -> Self {
                $name { bytes: [0; $size] }
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl $name {
            /// Size in bytes.
            pub const SIZE: usize = $size;

            /// Copies a structure out of `b` (which must hold SIZE bytes).
            pub fn from_bytes(b: &[u8]) -> Option<Self> {
                let bytes: [u8; $size] = b.get(..$size)?.try_into().ok()?;
                Some($name { bytes })
            }

            /// The little-endian integer in bytes `r` (at most 8).
            pub fn le(&self, r: Range<usize>) -> u64 {
                self.bytes[r].iter().rev().fold(0u64, |a, &b| (a << 8) | b as u64)
            }

            #[allow(dead_code)]
            fn le128(&self, r: Range<usize>) -> u128 {
                self.bytes[r].iter().rev().fold(0u128, |a, &b| (a << 8) | b as u128)
            }

            /// Writes `v` little-endian into bytes `r` (at most 8).
            pub fn set_le(&mut self, r: Range<usize>, v: u64) {
                for (i, b) in self.bytes[r].iter_mut().enumerate() {
                    *b = (v >> (8 * i)) as u8;
                }
            }

            /// The text in bytes `r`, without trailing spaces or NULs.
            pub fn text(&self, r: Range<usize>) -> String {
                String::from_utf8_lossy(&self.bytes[r])
                    .trim_end_matches([' ', '\0'])
                    .to_string()
            }

            /// Writes `s` space-padded into bytes `r` (ASCII fields: serial,
            /// model, firmware revision).
            pub fn set_text(&mut self, r: Range<usize>, s: &str) {
                let dst = &mut self.bytes[r];
                dst.fill(b' ');
                let n = s.len().min(dst.len());
                dst[..n].copy_from_slice(&s.as_bytes()[..n]);
            }

            /// Writes `s` NUL-padded into bytes `r` (NQNs, addresses).
            pub fn set_str0(&mut self, r: Range<usize>, s: &str) {
                let dst = &mut self.bytes[r];
                dst.fill(0);
                let n = s.len().min(dst.len());
                dst[..n].copy_from_slice(&s.as_bytes()[..n]);
            }
        }
    };
}

/// Extracts bits `lo..=hi` of `v`.
#[inline]
pub const fn bits(v: u64, lo: u32, hi: u32) -> u64 {
    (v >> lo) & (u64::MAX >> (63 - (hi - lo)))
}

pub mod cmd;
pub mod fabrics;
pub mod identify;
pub mod log;
pub mod regs;
pub mod status;

pub use cmd::*;
pub use identify::*;
pub use log::*;
pub use regs::*;
