//! SPDK's blobstore on-disk format, sans I/O: typed views over byte
//! buffers that parse (with an error naming what is wrong) and emit.
//!
//! All integers are little-endian and the structures are packed (SPDK's
//! `#pragma pack(1)` in `lib/blob/blobstore.h`). Nothing here panics on a
//! corrupted image, and nothing allocates more than the input's size
//! warrants. The byte layouts are in `docs/blob.md`.

use thiserror::Error;

/// Size of a metadata page and of the super block (SPDK: `SPDK_BS_PAGE_SIZE`).
pub const PAGE_SIZE: usize = 4096;
/// The super block's signature.
pub const SIGNATURE: &[u8; 8] = b"SPDKBLOB";
/// The format version this crate reads and writes (SPDK: `SPDK_BS_VERSION`).
pub const VERSION: u32 = 3;
/// A `next` that ends a metadata chain (SPDK: `SPDK_INVALID_MD_PAGE`).
pub const INVALID_MD_PAGE: u32 = u32::MAX;
/// "No blob" (SPDK: `SPDK_BLOBID_INVALID`), e.g. no super blob.
pub const BLOBID_INVALID: u64 = u64::MAX;
/// Bit 32 set in every blob id; the low 32 bits are its first page's index.
pub const BLOBID_HIGH_BIT: u64 = 1 << 32;
/// Bytes of descriptors in a metadata page.
pub const DESCRIPTORS_LEN: usize = 4072;
/// Offset of the descriptor area in a metadata page.
const DESCRIPTORS_OFFSET: usize = 16;
/// A descriptor's header: type (u8) and length (u32) of what follows.
pub const DESC_HEADER_LEN: usize = 5;
/// Clusters one extent page describes (SPDK: `SPDK_EXTENTS_PER_EP`, 512
/// for 4 KiB pages: the largest power of two that fits).
pub const EXTENTS_PER_EP: u64 = 512;
/// A mask region's header: type (u8) and length in bits (u32).
pub const MASK_HEADER_LEN: usize = 5;

/// Descriptor types (SPDK: `SPDK_MD_DESCRIPTOR_TYPE_*`).
pub mod desc_type {
    /// Padding; type 0 with length 0 ends a page's descriptors.
    pub const PADDING: u8 = 0;
    /// Run-length encoded cluster list.
    pub const EXTENT_RLE: u8 = 1;
    /// A user xattr.
    pub const XATTR: u8 = 2;
    /// Flags (invalid, data read-only, metadata read-only).
    pub const FLAGS: u8 = 3;
    /// An internal xattr (snapshot/clone links, lvol names).
    pub const XATTR_INTERNAL: u8 = 4;
    /// The extent table: the md pages holding extent pages.
    pub const EXTENT_TABLE: u8 = 5;
    /// An extent page's clusters (outside the blob's chain).
    pub const EXTENT_PAGE: u8 = 6;
}

/// Mask region types (SPDK: `SPDK_MD_MASK_TYPE_*`).
pub mod mask_type {
    /// Used metadata pages.
    pub const USED_PAGES: u8 = 0;
    /// Used clusters.
    pub const USED_CLUSTERS: u8 = 1;
    /// Used blob ids.
    pub const USED_BLOBIDS: u8 = 2;
}

/// Flags a reader must understand to open a blob at all
/// (SPDK: `SPDK_BLOB_*` in the invalid_flags word).
pub mod invalid_flags {
    /// Thin provisioned: clusters allocated on first write.
    pub const THIN_PROV: u64 = 1 << 0;
    /// The blob has internal xattrs.
    pub const INTERNAL_XATTR: u64 = 1 << 1;
    /// Clusters are in extent pages (extent table), not RLE.
    pub const EXTENT_TABLE: u64 = 1 << 2;
    /// A clone of an external snapshot.
    pub const EXTERNAL_SNAPSHOT: u64 = 1 << 3;
    /// Every flag this version knows.
    pub const KNOWN: u64 = THIN_PROV | INTERNAL_XATTR | EXTENT_TABLE | EXTERNAL_SNAPSHOT;
}

/// Flags in the data_ro word (SPDK: `SPDK_BLOB_READ_ONLY`).
pub mod data_ro_flags {
    /// The blob is read-only (a snapshot, or set read-only).
    pub const READ_ONLY: u64 = 1 << 0;
    /// Every flag this version knows.
    pub const KNOWN: u64 = READ_ONLY;
}

/// Flags in the md_ro word: the blob's clear method (bits 0-1).
pub mod md_ro_flags {
    /// The clear method's bits (SPDK: `SPDK_BLOB_CLEAR_METHOD`).
    pub const CLEAR_METHOD: u64 = 3;
    /// Every flag this version knows.
    pub const KNOWN: u64 = CLEAR_METHOD;
}

/// Internal xattr naming a clone's snapshot (SPDK: `BLOB_SNAPSHOT`).
pub const XATTR_SNAPSHOT: &str = "SNAP";
/// Internal xattr of a snapshot being created (SPDK: `SNAPSHOT_IN_PROGRESS`).
pub const XATTR_SNAPSHOT_IN_PROGRESS: &str = "SNAPTMP";
/// Internal xattr of a snapshot being removed (SPDK: `SNAPSHOT_PENDING_REMOVAL`).
pub const XATTR_SNAPSHOT_PENDING_REMOVAL: &str = "SNAPRM";
/// Internal xattr holding an esnap clone's external id (SPDK: `BLOB_EXTERNAL_SNAPSHOT_ID`).
pub const XATTR_EXTERNAL_SNAPSHOT_ID: &str = "EXTSNAP";

/// What is wrong with an on-disk structure.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The buffer is shorter than the structure.
    #[error("{what}: need {need} bytes, have {have}")]
    Truncated {
        /// The structure.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The super block does not start with "SPDKBLOB".
    #[error("super block: signature is {found:?}, not \"SPDKBLOB\" (not a blobstore)")]
    BadSignature {
        /// The 8 bytes found.
        found: [u8; 8],
    },
    /// A super block version this crate does not read.
    #[error("super block: version {0} is not supported (this reads version 3)")]
    UnsupportedVersion(u32),
    /// A stored CRC does not match the contents.
    #[error("{what}: CRC32C is {stored:#010x} on disk but {computed:#010x} over the contents")]
    BadCrc {
        /// The structure.
        what: &'static str,
        /// The CRC stored.
        stored: u32,
        /// The CRC computed.
        computed: u32,
    },
    /// A field has a value outside what the format allows.
    #[error("{what}: field {field} = {value} is invalid: {reason}")]
    BadField {
        /// The structure.
        what: &'static str,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Why it is wrong.
        reason: &'static str,
    },
    /// A descriptor runs past the end of its page.
    #[error("md page: descriptor type {kind} at offset {offset} claims {length} bytes, past the page's descriptor area")]
    DescriptorOverrun {
        /// Descriptor type.
        kind: u8,
        /// Offset in the descriptor area.
        offset: usize,
        /// Its length field.
        length: u32,
    },
    /// A descriptor's body does not match its type.
    #[error("md page: {kind} descriptor is malformed: {reason}")]
    BadDescriptor {
        /// Descriptor kind.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Descriptors do not fit in one page (emit).
    #[error("md page: descriptors need {need} bytes; a page holds {DESCRIPTORS_LEN}")]
    PageFull {
        /// Bytes needed.
        need: usize,
    },
}

type Result<T> = std::result::Result<T, WireError>;

/// SPDK's page CRC: CRC32C (Castagnoli, reflected, initial and final XOR
/// 0xffffffff) over all but the last 4 bytes of a 4 KiB page, where it is
/// stored. The super block and metadata pages use it alike.
pub fn page_crc(page: &[u8]) -> u32 {
    crc32c::crc32c(&page[..PAGE_SIZE - 4])
}

fn need(what: &'static str, buf: &[u8], n: usize) -> Result<()> {
    if buf.len() < n {
        return Err(WireError::Truncated {
            what,
            need: n,
            have: buf.len(),
        });
    }
    Ok(())
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
fn put_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// A region of the device in metadata pages from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Region {
    /// First page.
    pub start: u32,
    /// Length in pages.
    pub len: u32,
}

impl Region {
    fn end(self) -> u64 {
        self.start as u64 + self.len as u64
    }
}

/// The super block (page 0 of the device; SPDK: `struct spdk_bs_super_block`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuperBlock {
    /// Format version (3).
    pub version: u32,
    /// True after a clean unload; a load of a store not clean rebuilds the
    /// allocation masks from the metadata.
    pub clean: bool,
    /// The super blob's id, or [`BLOBID_INVALID`].
    pub super_blob: u64,
    /// Cluster size in bytes.
    pub cluster_size: u32,
    /// The used metadata pages mask.
    pub used_page_mask: Region,
    /// The used clusters mask.
    pub used_cluster_mask: Region,
    /// The metadata page region.
    pub md: Region,
    /// The blobstore type (16 bytes, NUL padded; lvol stores say "LVOLSTORE").
    pub bstype: [u8; 16],
    /// The used blob ids mask.
    pub used_blobid_mask: Region,
    /// Size of the blobstore in bytes.
    pub size: u64,
    /// The unit of blob I/O in bytes (the bdev's block size).
    pub io_unit_size: u32,
    /// Metadata page size in bytes (0 on disk from older writers means 4096).
    pub md_page_size: u32,
}

// Field offsets in the packed super block.
const SB_VERSION: usize = 8;
const SB_LENGTH: usize = 12;
const SB_CLEAN: usize = 16;
const SB_SUPER_BLOB: usize = 20;
const SB_CLUSTER_SIZE: usize = 28;
const SB_PAGE_MASK: usize = 32;
const SB_CLUSTER_MASK: usize = 40;
const SB_MD: usize = 48;
const SB_BSTYPE: usize = 56;
const SB_BLOBID_MASK: usize = 72;
const SB_SIZE: usize = 80;
const SB_IO_UNIT: usize = 88;
const SB_MD_PAGE_SIZE: usize = 92;

impl SuperBlock {
    /// Parses and checks a super block: signature, version, length, CRC, and
    /// that the sizes and regions are consistent with each other and with
    /// `size`.
    pub fn parse(buf: &[u8]) -> Result<SuperBlock> {
        const W: &str = "super block";
        need(W, buf, PAGE_SIZE)?;
        let mut sig = [0u8; 8];
        sig.copy_from_slice(&buf[..8]);
        if &sig != SIGNATURE {
            return Err(WireError::BadSignature { found: sig });
        }
        let version = u32_at(buf, SB_VERSION);
        if version != VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let length = u32_at(buf, SB_LENGTH);
        if length as usize != PAGE_SIZE {
            return Err(bad(W, "length", length as u64, "must be 4096"));
        }
        let stored = u32_at(buf, PAGE_SIZE - 4);
        let computed = page_crc(buf);
        if stored != computed {
            return Err(WireError::BadCrc {
                what: W,
                stored,
                computed,
            });
        }
        let region = |o| Region {
            start: u32_at(buf, o),
            len: u32_at(buf, o + 4),
        };
        let mut bstype = [0u8; 16];
        bstype.copy_from_slice(&buf[SB_BSTYPE..SB_BSTYPE + 16]);
        let clean = u32_at(buf, SB_CLEAN);
        if clean > 1 {
            return Err(bad(W, "clean", clean as u64, "must be 0 or 1"));
        }
        let sb = SuperBlock {
            version,
            clean: clean == 1,
            super_blob: u64_at(buf, SB_SUPER_BLOB),
            cluster_size: u32_at(buf, SB_CLUSTER_SIZE),
            used_page_mask: region(SB_PAGE_MASK),
            used_cluster_mask: region(SB_CLUSTER_MASK),
            md: region(SB_MD),
            bstype,
            used_blobid_mask: region(SB_BLOBID_MASK),
            size: u64_at(buf, SB_SIZE),
            io_unit_size: u32_at(buf, SB_IO_UNIT),
            md_page_size: match u32_at(buf, SB_MD_PAGE_SIZE) {
                0 => PAGE_SIZE as u32,
                n => n,
            },
        };
        sb.check()?;
        Ok(sb)
    }

    /// Checks the fields against each other (what `parse` checks after the CRC).
    pub fn check(&self) -> Result<()> {
        const W: &str = "super block";
        let mps = self.md_page_size as u64;
        if mps != PAGE_SIZE as u64 {
            return Err(bad(
                W,
                "md_page_size",
                mps,
                "only 4096-byte metadata pages are supported",
            ));
        }
        let cs = self.cluster_size as u64;
        if cs < mps || cs % mps != 0 {
            return Err(bad(
                W,
                "cluster_size",
                cs,
                "must be a nonzero multiple of the metadata page size",
            ));
        }
        let iou = self.io_unit_size as u64;
        if iou == 0 || !iou.is_power_of_two() || iou > mps {
            return Err(bad(
                W,
                "io_unit_size",
                iou,
                "must be a power of two no larger than the metadata page size",
            ));
        }
        if self.size < cs || self.size % iou != 0 {
            return Err(bad(
                W,
                "size",
                self.size,
                "must hold a cluster and be a whole number of io units",
            ));
        }
        let pages = self.size / mps;
        for (field, r) in [
            ("used_page_mask", self.used_page_mask),
            ("used_cluster_mask", self.used_cluster_mask),
            ("used_blobid_mask", self.used_blobid_mask),
            ("md", self.md),
        ] {
            if r.start == 0 || r.end() > pages {
                return Err(bad(
                    W,
                    field,
                    r.end(),
                    "region overlaps the super block or ends past the device",
                ));
            }
        }
        for (field, r, bits) in [
            (
                "used_page_mask_len",
                self.used_page_mask,
                self.md.len as u64,
            ),
            (
                "used_blobid_mask_len",
                self.used_blobid_mask,
                self.md.len as u64,
            ),
            (
                "used_cluster_mask_len",
                self.used_cluster_mask,
                self.total_clusters(),
            ),
        ] {
            if (r.len as u64) * mps < mask_bytes(bits) as u64 {
                return Err(bad(W, field, r.len as u64, "too short for its mask"));
            }
        }
        Ok(())
    }

    /// Clusters on the device (the store's size over the cluster size).
    pub fn total_clusters(&self) -> u64 {
        self.size / self.cluster_size.max(1) as u64
    }

    /// Writes the super block, with its CRC, into the first 4 KiB of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        let buf = &mut buf[..PAGE_SIZE];
        buf.fill(0);
        buf[..8].copy_from_slice(SIGNATURE);
        put_u32(buf, SB_VERSION, self.version);
        put_u32(buf, SB_LENGTH, PAGE_SIZE as u32);
        put_u32(buf, SB_CLEAN, self.clean as u32);
        put_u64(buf, SB_SUPER_BLOB, self.super_blob);
        put_u32(buf, SB_CLUSTER_SIZE, self.cluster_size);
        for (o, r) in [
            (SB_PAGE_MASK, self.used_page_mask),
            (SB_CLUSTER_MASK, self.used_cluster_mask),
            (SB_MD, self.md),
            (SB_BLOBID_MASK, self.used_blobid_mask),
        ] {
            put_u32(buf, o, r.start);
            put_u32(buf, o + 4, r.len);
        }
        buf[SB_BSTYPE..SB_BSTYPE + 16].copy_from_slice(&self.bstype);
        put_u64(buf, SB_SIZE, self.size);
        put_u32(buf, SB_IO_UNIT, self.io_unit_size);
        put_u32(buf, SB_MD_PAGE_SIZE, self.md_page_size);
        let crc = page_crc(buf);
        put_u32(buf, PAGE_SIZE - 4, crc);
    }
}

fn bad(what: &'static str, field: &'static str, value: u64, reason: &'static str) -> WireError {
    WireError::BadField {
        what,
        field,
        value,
        reason,
    }
}

/// Bytes a mask region of `bits` bits takes: header plus the bits.
pub fn mask_bytes(bits: u64) -> usize {
    MASK_HEADER_LEN + bits.div_ceil(8) as usize
}

/// Pages a mask region of `bits` bits takes.
pub fn mask_pages(bits: u64) -> u32 {
    mask_bytes(bits).div_ceil(PAGE_SIZE) as u32
}

/// A bit array: the in-memory form of an allocation mask (bit `i` is bit
/// `i % 8` of byte `i / 8`, as SPDK stores it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BitMask {
    bytes: Vec<u8>,
    len: u64,
    ones: u64,
}

impl BitMask {
    /// `len` clear bits.
    pub fn new(len: u64) -> BitMask {
        BitMask {
            bytes: vec![0; len.div_ceil(8) as usize],
            len,
            ones: 0,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if it has no bits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> u64 {
        self.ones
    }

    /// Bit `i` (false past the end).
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Sets bit `i`; false if it is past the end.
    pub fn set(&mut self, i: u64) -> bool {
        if i >= self.len {
            return false;
        }
        if !self.get(i) {
            self.ones += 1;
        }
        self.bytes[(i / 8) as usize] |= 1 << (i % 8);
        true
    }

    /// Clears bit `i`.
    pub fn clear(&mut self, i: u64) {
        if self.get(i) {
            self.ones -= 1;
            self.bytes[(i / 8) as usize] &= !(1 << (i % 8));
        }
    }

    /// The first clear bit at or after `from`.
    pub fn first_clear(&self, from: u64) -> Option<u64> {
        let mut i = from;
        while i < self.len {
            let b = self.bytes[(i / 8) as usize];
            if b == 0xff && i % 8 == 0 {
                i += 8;
                continue;
            }
            if b & (1 << (i % 8)) == 0 {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// Indices of the set bits.
    pub fn iter_ones(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }

    /// Parses a mask region (header and bits) of type `kind` holding
    /// `expected_bits` bits.
    pub fn parse(buf: &[u8], kind: u8, expected_bits: u64) -> Result<BitMask> {
        const W: &str = "mask";
        need(W, buf, MASK_HEADER_LEN)?;
        if buf[0] != kind {
            return Err(bad(
                W,
                "type",
                buf[0] as u64,
                "not the mask this region holds",
            ));
        }
        let len = u32_at(buf, 1) as u64;
        if len != expected_bits {
            return Err(bad(
                W,
                "length",
                len,
                "does not match the count the super block implies",
            ));
        }
        need(W, buf, mask_bytes(len))?;
        let mut m = BitMask::new(len);
        m.bytes
            .copy_from_slice(&buf[MASK_HEADER_LEN..MASK_HEADER_LEN + len.div_ceil(8) as usize]);
        // Bits past `len` in the last byte are not part of the mask.
        if len % 8 != 0 {
            if let Some(last) = m.bytes.last_mut() {
                *last &= (1u8 << (len % 8)) - 1;
            }
        }
        m.ones = m.bytes.iter().map(|b| b.count_ones() as u64).sum();
        Ok(m)
    }

    /// Writes the region (header and bits; the rest of `buf` zeroed).
    /// `buf` must hold [`mask_bytes`]`(self.len())`.
    pub fn emit(&self, buf: &mut [u8], kind: u8) {
        buf.fill(0);
        buf[0] = kind;
        put_u32(buf, 1, self.len as u32);
        buf[MASK_HEADER_LEN..MASK_HEADER_LEN + self.bytes.len()].copy_from_slice(&self.bytes);
    }
}

/// One metadata descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Descriptor {
    /// Runs of clusters: (first cluster index, count); index 0 is a run of
    /// unallocated clusters (cluster 0 always holds metadata).
    ExtentRle(Vec<(u32, u32)>),
    /// The extent table: the blob's size in clusters and runs of extent
    /// pages as (md page index, count); index 0 is a run of unallocated
    /// extent pages, any other index has count 1.
    ExtentTable {
        /// The blob's size in clusters.
        num_clusters: u64,
        /// (md page, count) runs.
        pages: Vec<(u32, u32)>,
    },
    /// An extent page: clusters from `start_cluster`, 0 = unallocated.
    ExtentPage {
        /// The blob cluster the first entry describes.
        start_cluster: u32,
        /// Device cluster per blob cluster.
        clusters: Vec<u32>,
    },
    /// An xattr; internal ones are the blobstore's and its users' (lvol).
    Xattr {
        /// Internal (type 4) rather than user (type 2).
        internal: bool,
        /// Name (SPDK stores no terminator).
        name: String,
        /// Value bytes.
        value: Vec<u8>,
    },
    /// The blob's flag words.
    Flags {
        /// Flags a reader must know to open the blob.
        invalid: u64,
        /// Flags that make it read-only to a reader that does not know them.
        data_ro: u64,
        /// Flags that make its metadata read-only likewise.
        md_ro: u64,
    },
    /// A descriptor type this version does not know: skipped, as SPDK does
    /// (a feature that matters sets an invalid flag).
    Unknown {
        /// Its type.
        kind: u8,
        /// Its body length.
        len: u32,
    },
}

impl Descriptor {
    /// Bytes it takes in a page, header included.
    pub fn encoded_len(&self) -> usize {
        DESC_HEADER_LEN
            + match self {
                Descriptor::ExtentRle(runs) => runs.len() * 8,
                Descriptor::ExtentTable { pages, .. } => 8 + pages.len() * 8,
                Descriptor::ExtentPage { clusters, .. } => 4 + clusters.len() * 4,
                Descriptor::Xattr { name, value, .. } => 4 + name.len() + value.len(),
                Descriptor::Flags { .. } => 24,
                Descriptor::Unknown { len, .. } => *len as usize,
            }
    }

    fn parse(kind: u8, body: &[u8]) -> Result<Descriptor> {
        let malformed =
            |kind: &'static str, reason: String| WireError::BadDescriptor { kind, reason };
        Ok(match kind {
            desc_type::EXTENT_RLE => {
                if body.is_empty() || body.len() % 8 != 0 {
                    return Err(malformed(
                        "extent RLE",
                        format!("length {} is not a nonzero multiple of 8", body.len()),
                    ));
                }
                Descriptor::ExtentRle(
                    body.chunks_exact(8)
                        .map(|c| (u32_at(c, 0), u32_at(c, 4)))
                        .collect(),
                )
            }
            desc_type::EXTENT_TABLE => {
                if body.len() < 8 || (body.len() - 8) % 8 != 0 {
                    return Err(malformed(
                        "extent table",
                        format!("length {} is not 8 plus a multiple of 8", body.len()),
                    ));
                }
                let pages: Vec<(u32, u32)> = body[8..]
                    .chunks_exact(8)
                    .map(|c| (u32_at(c, 0), u32_at(c, 4)))
                    .collect();
                if let Some(p) = pages.iter().find(|p| p.0 != 0 && p.1 != 1) {
                    return Err(malformed(
                        "extent table",
                        format!(
                            "allocated extent page {} has run length {} (must be 1)",
                            p.0, p.1
                        ),
                    ));
                }
                Descriptor::ExtentTable {
                    num_clusters: u64_at(body, 0),
                    pages,
                }
            }
            desc_type::EXTENT_PAGE => {
                if body.len() <= 4 || (body.len() - 4) % 4 != 0 {
                    return Err(malformed(
                        "extent page",
                        format!(
                            "length {} is not 4 plus a nonzero multiple of 4",
                            body.len()
                        ),
                    ));
                }
                let clusters: Vec<u32> = body[4..].chunks_exact(4).map(|c| u32_at(c, 0)).collect();
                if clusters.len() as u64 > EXTENTS_PER_EP {
                    return Err(malformed(
                        "extent page",
                        format!("{} entries; at most {EXTENTS_PER_EP}", clusters.len()),
                    ));
                }
                Descriptor::ExtentPage {
                    start_cluster: u32_at(body, 0),
                    clusters,
                }
            }
            desc_type::XATTR | desc_type::XATTR_INTERNAL => {
                let k = "xattr";
                if body.len() < 4 {
                    return Err(malformed(k, format!("length {} is under 4", body.len())));
                }
                let nl = u16_at(body, 0) as usize;
                let vl = u16_at(body, 2) as usize;
                if 4 + nl + vl != body.len() {
                    return Err(malformed(
                        k,
                        format!(
                            "name {nl} + value {vl} bytes do not match descriptor length {}",
                            body.len()
                        ),
                    ));
                }
                let name = std::str::from_utf8(&body[4..4 + nl])
                    .map_err(|_| malformed(k, "name is not UTF-8".into()))?
                    .to_string();
                Descriptor::Xattr {
                    internal: kind == desc_type::XATTR_INTERNAL,
                    name,
                    value: body[4 + nl..].to_vec(),
                }
            }
            desc_type::FLAGS => {
                if body.len() != 24 {
                    return Err(malformed(
                        "flags",
                        format!("length {} is not 24", body.len()),
                    ));
                }
                Descriptor::Flags {
                    invalid: u64_at(body, 0),
                    data_ro: u64_at(body, 8),
                    md_ro: u64_at(body, 16),
                }
            }
            _ => Descriptor::Unknown {
                kind,
                len: body.len() as u32,
            },
        })
    }

    fn emit(&self, out: &mut [u8]) {
        let len = (self.encoded_len() - DESC_HEADER_LEN) as u32;
        put_u32(out, 1, len);
        let b = &mut out[DESC_HEADER_LEN..];
        out[0] = match self {
            Descriptor::ExtentRle(runs) => {
                for (i, &(c, n)) in runs.iter().enumerate() {
                    put_u32(b, i * 8, c);
                    put_u32(b, i * 8 + 4, n);
                }
                desc_type::EXTENT_RLE
            }
            Descriptor::ExtentTable {
                num_clusters,
                pages,
            } => {
                put_u64(b, 0, *num_clusters);
                for (i, &(p, n)) in pages.iter().enumerate() {
                    put_u32(b, 8 + i * 8, p);
                    put_u32(b, 12 + i * 8, n);
                }
                desc_type::EXTENT_TABLE
            }
            Descriptor::ExtentPage {
                start_cluster,
                clusters,
            } => {
                put_u32(b, 0, *start_cluster);
                for (i, &c) in clusters.iter().enumerate() {
                    put_u32(b, 4 + i * 4, c);
                }
                desc_type::EXTENT_PAGE
            }
            Descriptor::Xattr {
                internal,
                name,
                value,
            } => {
                put_u16(b, 0, name.len() as u16);
                put_u16(b, 2, value.len() as u16);
                b[4..4 + name.len()].copy_from_slice(name.as_bytes());
                b[4 + name.len()..4 + name.len() + value.len()].copy_from_slice(value);
                if *internal {
                    desc_type::XATTR_INTERNAL
                } else {
                    desc_type::XATTR
                }
            }
            Descriptor::Flags {
                invalid,
                data_ro,
                md_ro,
            } => {
                put_u64(b, 0, *invalid);
                put_u64(b, 8, *data_ro);
                put_u64(b, 16, *md_ro);
                desc_type::FLAGS
            }
            Descriptor::Unknown { kind, len } => {
                b[..*len as usize].fill(0);
                *kind
            }
        };
    }
}

/// A metadata page (SPDK: `struct spdk_blob_md_page`): one link of a blob's
/// chain, or an extent page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdPage {
    /// The blob it belongs to.
    pub id: u64,
    /// Its position in the chain (0 for the first page and for extent pages).
    pub sequence_num: u32,
    /// Its descriptors, in order.
    pub descriptors: Vec<Descriptor>,
    /// The next page of the chain (md page index), or [`INVALID_MD_PAGE`].
    pub next: u32,
}

impl MdPage {
    /// Parses a page and checks its CRC and every descriptor's bounds.
    pub fn parse(buf: &[u8]) -> Result<MdPage> {
        const W: &str = "md page";
        need(W, buf, PAGE_SIZE)?;
        let stored = u32_at(buf, PAGE_SIZE - 4);
        let computed = page_crc(buf);
        if stored != computed {
            return Err(WireError::BadCrc {
                what: W,
                stored,
                computed,
            });
        }
        let area = &buf[DESCRIPTORS_OFFSET..DESCRIPTORS_OFFSET + DESCRIPTORS_LEN];
        let mut descriptors = Vec::new();
        let mut at = 0usize;
        while at + DESC_HEADER_LEN <= DESCRIPTORS_LEN {
            let kind = area[at];
            let length = u32_at(area, at + 1);
            if kind == desc_type::PADDING && length == 0 {
                break;
            }
            let end = (at + DESC_HEADER_LEN) as u64 + length as u64;
            if end > DESCRIPTORS_LEN as u64 {
                return Err(WireError::DescriptorOverrun {
                    kind,
                    offset: at,
                    length,
                });
            }
            let body = &area[at + DESC_HEADER_LEN..end as usize];
            if kind != desc_type::PADDING {
                descriptors.push(Descriptor::parse(kind, body)?);
            }
            at = end as usize;
        }
        Ok(MdPage {
            id: u64_at(buf, 0),
            sequence_num: u32_at(buf, 8),
            descriptors,
            next: u32_at(buf, PAGE_SIZE - 8),
        })
    }

    /// Bytes of descriptors.
    pub fn descriptors_len(&self) -> usize {
        self.descriptors.iter().map(Descriptor::encoded_len).sum()
    }

    /// Writes the page, with its CRC, into the first 4 KiB of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        let need = self.descriptors_len();
        if need > DESCRIPTORS_LEN {
            return Err(WireError::PageFull { need });
        }
        let buf = &mut buf[..PAGE_SIZE];
        buf.fill(0);
        put_u64(buf, 0, self.id);
        put_u32(buf, 8, self.sequence_num);
        let mut at = DESCRIPTORS_OFFSET;
        for d in &self.descriptors {
            let n = d.encoded_len();
            d.emit(&mut buf[at..at + n]);
            at += n;
        }
        put_u32(buf, PAGE_SIZE - 8, self.next);
        let crc = page_crc(buf);
        put_u32(buf, PAGE_SIZE - 4, crc);
        Ok(())
    }
}

/// The blob id of the blob whose first metadata page is `page`.
pub fn page_to_blobid(page: u32) -> u64 {
    BLOBID_HIGH_BIT | page as u64
}

/// The first metadata page of blob `id`.
pub fn blobid_to_page(id: u64) -> u32 {
    id as u32
}

#[cfg(test)]
mod tests;
