//! The trace file's layout and its reader (sans-I/O: the reader takes the
//! file's bytes and returns the events; the writer side lives in `shm`).
//!
//! One file per process in `/dev/shm`, written by the process and read by
//! `rspdk_trace` while it runs or after it exits. All integers are
//! little-endian; names are NUL-padded ASCII.
//!
//! | offset | size | what |
//! |---|---|---|
//! | 0 | 8 | magic `RSPDKTRC` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | number of per-core rings |
//! | 16 | 8 | entries per ring (a power of two) |
//! | 24 | 8 | tick rate (ticks per second; 1e9: ticks are ns) |
//! | 32 | 8 | pid |
//! | 40 | 32 | app name |
//! | 512 | 32 × 8 | tracepoint mask of each group (a mirror for tools) |
//! | 768 | 32 × 16 | group names |
//! | 1280 | 32 × 16 | object types: name (15 bytes) and id prefix (1 byte) |
//! | 4096 | 2048 × 128 | tracepoint descriptions (`group << 6 \| n`) |
//! | [`RINGS_OFFSET`] | rings | per core: 64-byte header (`next`: events ever written), then the entries |
//!
//! A tracepoint description: name (32), object type (1), new-object flag
//! (1), argument count (1), owner type (1), 4 reserved, 5 argument names
//! of 16 bytes, 8 reserved. An entry (64 bytes): tick (8), tracepoint id
//! (2), 6 reserved, object id (8), 5 arguments (8 each).

use thiserror::Error;

/// File magic.
pub const MAGIC: &[u8; 8] = b"RSPDKTRC";
/// Format version.
pub const VERSION: u32 = 1;
/// Trace groups (SPDK numbers them 0 to 31 too).
pub const MAX_GROUPS: usize = 32;
/// Tracepoints per group (a 64-bit mask each).
pub const TPOINTS_PER_GROUP: usize = 64;
/// Object types.
pub const MAX_OBJECT_TYPES: usize = 32;
/// Arguments an event carries.
pub const MAX_ARGS: usize = 5;
/// Bytes of the header section.
pub const HEADER_SIZE: usize = 4096;
/// Offset of the group masks.
pub const MASKS_OFFSET: usize = 512;
/// Offset of the group names.
pub const GROUP_NAMES_OFFSET: usize = 768;
/// Offset of the object types.
pub const OBJECTS_OFFSET: usize = 1280;
/// Bytes of a group name or object type slot.
pub const NAME_SLOT: usize = 16;
/// Offset of the tracepoint descriptions.
pub const DEFS_OFFSET: usize = HEADER_SIZE;
/// Bytes of one tracepoint description.
pub const DEF_SIZE: usize = 128;
/// Bytes of a tracepoint name.
pub const TPOINT_NAME_LEN: usize = 32;
/// Offset of the first ring.
pub const RINGS_OFFSET: usize = DEFS_OFFSET + MAX_GROUPS * TPOINTS_PER_GROUP * DEF_SIZE;
/// Bytes of a ring's header.
pub const RING_HEADER: usize = 64;
/// Bytes of one entry.
pub const ENTRY_SIZE: usize = 64;
/// Most rings a file may declare (a corrupt count must not make the
/// reader loop or allocate without bound).
pub const MAX_RINGS: u32 = 1024;

/// Bytes between two rings' starts: header and entries, page-aligned.
pub fn ring_stride(entries: u64) -> usize {
    let bytes = RING_HEADER + entries as usize * ENTRY_SIZE;
    bytes.div_ceil(4096) * 4096
}

/// Total file size for `rings` rings of `entries` each.
pub fn file_size(rings: u32, entries: u64) -> usize {
    RINGS_OFFSET + rings as usize * ring_stride(entries)
}

/// The tracepoint id of tracepoint `n` of `group` (SPDK's `SPDK_TPOINT_ID`).
pub const fn tpoint_id(group: u8, n: u8) -> u16 {
    ((group as u16) << 6) | (n as u16 & 63)
}

/// What is wrong with a trace file.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    /// Shorter than its header says.
    #[error("trace file is {have} bytes, its header needs {need}: truncated or not a trace file")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not our magic.
    #[error("not an rspdk trace file (magic {0:02x?}; expected \"RSPDKTRC\")")]
    BadMagic([u8; 8]),
    /// A version this reader does not know.
    #[error("trace file version {0}; this rspdk_trace reads version {VERSION}")]
    BadVersion(u32),
    /// Nonsense geometry.
    #[error("trace file declares {rings} rings of {entries} entries: corrupt (rings 1..={MAX_RINGS}, entries a power of two)")]
    BadGeometry {
        /// Declared rings.
        rings: u32,
        /// Declared entries per ring.
        entries: u64,
    },
}

/// One tracepoint's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpointDesc {
    /// Tracepoint id (`group << 6 | n`).
    pub id: u16,
    /// Name, e.g. `BDEV_IO_START`.
    pub name: String,
    /// Type of the object its events are about (0: none).
    pub object_type: u8,
    /// Whether an event of it starts a new object (e.g. an I/O's start).
    pub new_object: bool,
    /// Owner type (0: none).
    pub owner_type: u8,
    /// Argument names.
    pub args: Vec<String>,
}

/// One recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Ring (core) it was recorded on.
    pub core: u32,
    /// Tick.
    pub tsc: u64,
    /// Tracepoint id.
    pub tpoint: u16,
    /// The object it is about.
    pub object_id: u64,
    /// Arguments.
    pub args: [u64; MAX_ARGS],
}

/// A parsed trace file.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Pid of the process that wrote it.
    pub pid: u64,
    /// Its app name.
    pub app_name: String,
    /// Ticks per second.
    pub tick_rate: u64,
    /// Entries per ring.
    pub entries_per_core: u64,
    /// Group names by id (empty where none).
    pub group_names: Vec<String>,
    /// Tracepoint masks by group.
    pub group_masks: Vec<u64>,
    /// Object types by id: (name, id prefix).
    pub objects: Vec<(String, char)>,
    /// Tracepoints that have a description, by id.
    pub tpoints: Vec<Option<TpointDesc>>,
    /// Events of every ring, oldest first (merged by tick).
    pub events: Vec<Event>,
    /// Per ring: events written in total, and those no longer in the ring
    /// (overwritten before this read: lost to a reader that came late).
    pub ring_counts: Vec<(u64, u64)>,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
fn name_at(b: &[u8], off: usize, len: usize) -> String {
    let raw = &b[off..off + len];
    let end = raw.iter().position(|&c| c == 0).unwrap_or(len);
    raw[..end]
        .iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '?'
            }
        })
        .collect()
}

/// Reads the ring count and entries per ring from a header, checked.
pub fn parse_geometry(b: &[u8]) -> Result<(u32, u64), FormatError> {
    if b.len() < HEADER_SIZE {
        return Err(FormatError::Truncated {
            have: b.len(),
            need: HEADER_SIZE,
        });
    }
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&b[..8]);
    if &magic != MAGIC {
        return Err(FormatError::BadMagic(magic));
    }
    let version = u32_at(b, 8);
    if version != VERSION {
        return Err(FormatError::BadVersion(version));
    }
    let rings = u32_at(b, 12);
    let entries = u64_at(b, 16);
    if rings == 0 || rings > MAX_RINGS || !entries.is_power_of_two() || entries > 1 << 24 {
        return Err(FormatError::BadGeometry { rings, entries });
    }
    Ok((rings, entries))
}

impl Trace {
    /// Parses a trace file image. Every offset is checked against the
    /// length: a corrupt file is an error, never a panic.
    pub fn parse(b: &[u8]) -> Result<Trace, FormatError> {
        let (rings, entries) = parse_geometry(b)?;
        let need = file_size(rings, entries);
        if b.len() < need {
            return Err(FormatError::Truncated {
                have: b.len(),
                need,
            });
        }
        let group_names = (0..MAX_GROUPS)
            .map(|g| name_at(b, GROUP_NAMES_OFFSET + g * NAME_SLOT, NAME_SLOT))
            .collect();
        let group_masks = (0..MAX_GROUPS)
            .map(|g| u64_at(b, MASKS_OFFSET + g * 8))
            .collect();
        let objects = (0..MAX_OBJECT_TYPES)
            .map(|o| {
                let off = OBJECTS_OFFSET + o * NAME_SLOT;
                let prefix = b[off + NAME_SLOT - 1];
                let prefix = if prefix.is_ascii_alphabetic() {
                    prefix as char
                } else {
                    '?'
                };
                (name_at(b, off, NAME_SLOT - 1), prefix)
            })
            .collect();
        let tpoints = (0..MAX_GROUPS * TPOINTS_PER_GROUP)
            .map(|i| {
                let off = DEFS_OFFSET + i * DEF_SIZE;
                let name = name_at(b, off, TPOINT_NAME_LEN);
                if name.is_empty() {
                    return None;
                }
                let nargs = (b[off + 34] as usize).min(MAX_ARGS);
                Some(TpointDesc {
                    id: i as u16,
                    name,
                    object_type: b[off + 32],
                    new_object: b[off + 33] != 0,
                    owner_type: b[off + 35],
                    args: (0..nargs)
                        .map(|a| name_at(b, off + 40 + a * NAME_SLOT, NAME_SLOT))
                        .collect(),
                })
            })
            .collect();
        let mut events = Vec::new();
        let mut ring_counts = Vec::with_capacity(rings as usize);
        for core in 0..rings {
            let base = RINGS_OFFSET + core as usize * ring_stride(entries);
            let next = u64_at(b, base);
            let present = next.min(entries);
            ring_counts.push((next, next - present));
            for seq in next - present..next {
                let off = base + RING_HEADER + (seq % entries) as usize * ENTRY_SIZE;
                let mut args = [0u64; MAX_ARGS];
                for (a, slot) in args.iter_mut().enumerate() {
                    *slot = u64_at(b, off + 24 + a * 8);
                }
                events.push(Event {
                    core,
                    tsc: u64_at(b, off),
                    tpoint: u16_at(b, off + 8),
                    object_id: u64_at(b, off + 16),
                    args,
                });
            }
        }
        // Stable: events of one core with the same tick keep ring order.
        events.sort_by_key(|e| e.tsc);
        Ok(Trace {
            pid: u64_at(b, 32),
            app_name: name_at(b, 40, 32),
            tick_rate: u64_at(b, 24).max(1),
            entries_per_core: entries,
            group_names,
            group_masks,
            objects,
            tpoints,
            events,
            ring_counts,
        })
    }

    /// The description of tracepoint `id`, if the process registered one.
    pub fn tpoint(&self, id: u16) -> Option<&TpointDesc> {
        self.tpoints.get(id as usize).and_then(|t| t.as_ref())
    }
}

/// Encodes a header (the writer's half, shared with tests).
pub fn encode_header(rings: u32, entries: u64, tick_rate: u64, pid: u64, app: &str) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_SIZE];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&rings.to_le_bytes());
    h[16..24].copy_from_slice(&entries.to_le_bytes());
    h[24..32].copy_from_slice(&tick_rate.to_le_bytes());
    h[32..40].copy_from_slice(&pid.to_le_bytes());
    put_name(&mut h[40..72], app);
    h
}

/// Writes `name` NUL-padded into `slot` (truncated to leave one NUL).
pub fn put_name(slot: &mut [u8], name: &str) {
    slot.fill(0);
    let n = name.len().min(slot.len().saturating_sub(1));
    slot[..n].copy_from_slice(&name.as_bytes()[..n]);
}

/// Encodes a tracepoint description.
pub fn encode_def(d: &TpointDesc) -> [u8; DEF_SIZE] {
    let mut b = [0u8; DEF_SIZE];
    put_name(&mut b[..TPOINT_NAME_LEN], &d.name);
    b[32] = d.object_type;
    b[33] = d.new_object as u8;
    b[34] = d.args.len().min(MAX_ARGS) as u8;
    b[35] = d.owner_type;
    for (i, a) in d.args.iter().take(MAX_ARGS).enumerate() {
        put_name(&mut b[40 + i * NAME_SLOT..40 + (i + 1) * NAME_SLOT], a);
    }
    b
}

/// Encodes an entry.
pub fn encode_entry(tsc: u64, tpoint: u16, object_id: u64, args: &[u64]) -> [u8; ENTRY_SIZE] {
    let mut b = [0u8; ENTRY_SIZE];
    b[..8].copy_from_slice(&tsc.to_le_bytes());
    b[8..10].copy_from_slice(&tpoint.to_le_bytes());
    b[16..24].copy_from_slice(&object_id.to_le_bytes());
    for (i, a) in args.iter().take(MAX_ARGS).enumerate() {
        b[24 + i * 8..32 + i * 8].copy_from_slice(&a.to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(rings: u32, entries: u64) -> Vec<u8> {
        let mut f = vec![0u8; file_size(rings, entries)];
        f[..HEADER_SIZE].copy_from_slice(&encode_header(rings, entries, 1_000_000_000, 42, "app"));
        f
    }

    #[test]
    fn events_round_trip_and_merge_by_tick() {
        let mut f = image(2, 4);
        let def = TpointDesc {
            id: tpoint_id(3, 0),
            name: "BDEV_IO_START".into(),
            object_type: 2,
            new_object: true,
            owner_type: 2,
            args: vec!["type".into(), "offset".into()],
        };
        let off = DEFS_OFFSET + def.id as usize * DEF_SIZE;
        f[off..off + DEF_SIZE].copy_from_slice(&encode_def(&def));
        // Core 0: ticks 10, 30; core 1: six events in a ring of four
        // (two overwritten): ticks 1..=6 at 20 + i.
        let write = |f: &mut Vec<u8>, core: usize, seq: u64, tsc: u64| {
            let base = RINGS_OFFSET + core * ring_stride(4);
            let e = encode_entry(tsc, def.id, 100 + seq, &[1, seq]);
            let off = base + RING_HEADER + (seq % 4) as usize * ENTRY_SIZE;
            f[off..off + ENTRY_SIZE].copy_from_slice(&e);
            f[base..base + 8].copy_from_slice(&(seq + 1).to_le_bytes());
        };
        write(&mut f, 0, 0, 10);
        write(&mut f, 0, 1, 30);
        for s in 0..6 {
            write(&mut f, 1, s, 20 + s);
        }
        let t = Trace::parse(&f).unwrap();
        assert_eq!(t.pid, 42);
        assert_eq!(t.app_name, "app");
        assert_eq!(t.tpoint(def.id), Some(&def));
        let ticks: Vec<u64> = t.events.iter().map(|e| e.tsc).collect();
        assert_eq!(ticks, vec![10, 22, 23, 24, 25, 30]);
        assert_eq!(t.ring_counts, vec![(2, 0), (6, 2)]);
        assert_eq!(t.events[1].args[..2], [1, 2]);
    }

    #[test]
    fn corrupt_files_are_refused_by_name() {
        assert!(matches!(
            Trace::parse(&[0; 10]),
            Err(FormatError::Truncated { .. })
        ));
        let mut f = image(1, 4);
        f[0] = b'X';
        assert!(matches!(Trace::parse(&f), Err(FormatError::BadMagic(_))));
        let mut f = image(1, 4);
        f[16..24].copy_from_slice(&3u64.to_le_bytes());
        assert_eq!(
            Trace::parse(&f).unwrap_err(),
            FormatError::BadGeometry {
                rings: 1,
                entries: 3
            }
        );
        let f = image(2, 4);
        assert!(matches!(
            Trace::parse(&f[..f.len() - 1]),
            Err(FormatError::Truncated { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8192),
            rings in 0u32..3, entries in 0u64..9,
        ) {
            let mut f = image(rings.max(1), entries.max(1).next_power_of_two());
            f[12..16].copy_from_slice(&rings.to_le_bytes());
            f[16..24].copy_from_slice(&entries.to_le_bytes());
            let n = body.len().min(f.len() - HEADER_SIZE);
            f[HEADER_SIZE..HEADER_SIZE + n].copy_from_slice(&body[..n]);
            let _ = Trace::parse(&f);
        }
    }
}
