//! A blob's metadata in memory, and its conversion from and to a chain of
//! metadata pages (pure: no I/O).

use crate::wire::{
    self, invalid_flags, md_ro_flags, Descriptor, MdPage, DESCRIPTORS_LEN, DESC_HEADER_LEN,
    EXTENTS_PER_EP, INVALID_MD_PAGE,
};
use crate::BlobError;

/// Most clusters a blob may have (bounds the cluster map a corrupted image
/// can make this allocate: 256 MiB of map; 64 TiB with 1 MiB clusters).
pub const MAX_BLOB_CLUSTERS: u64 = 1 << 26;

/// Longest xattr name plus value: one descriptor must fit in a page.
pub const MAX_XATTR_LEN: usize = DESCRIPTORS_LEN - DESC_HEADER_LEN - 4;

/// How a blob's clusters are cleared when it releases them (SPDK:
/// `blob_clear_method`, kept in the md_ro flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlobClearMethod {
    /// The store's default.
    #[default]
    Default,
    /// Leave the data.
    None,
    /// Unmap.
    Unmap,
    /// Write zeroes.
    WriteZeroes,
}

impl BlobClearMethod {
    fn bits(self) -> u64 {
        self as u64
    }
    fn from_bits(b: u64) -> BlobClearMethod {
        match b & md_ro_flags::CLEAR_METHOD {
            1 => BlobClearMethod::None,
            2 => BlobClearMethod::Unmap,
            3 => BlobClearMethod::WriteZeroes,
            _ => BlobClearMethod::Default,
        }
    }
}

/// A blob's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Blob id.
    pub id: u64,
    /// The invalid_flags word (thin, internal xattrs, extent table, esnap).
    pub invalid_flags: u64,
    /// The data_ro word (read-only).
    pub data_ro_flags: u64,
    /// The md_ro word (clear method).
    pub md_ro_flags: u64,
    /// User xattrs, in order.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Internal xattrs, in order.
    pub internal_xattrs: Vec<(String, Vec<u8>)>,
    /// Device cluster of each blob cluster; 0 = not allocated (thin).
    pub clusters: Vec<u32>,
    /// The md pages of the chain, first (the id's page) first.
    pub chain: Vec<u32>,
    /// The md pages holding extent pages (extent table blobs).
    pub extent_pages: Vec<u32>,
}

impl BlobMeta {
    /// A new blob's metadata.
    pub fn new(id: u64, thin: bool) -> BlobMeta {
        BlobMeta {
            id,
            invalid_flags: if thin { invalid_flags::THIN_PROV } else { 0 },
            data_ro_flags: 0,
            md_ro_flags: 0,
            xattrs: Vec::new(),
            internal_xattrs: Vec::new(),
            clusters: Vec::new(),
            chain: vec![wire::blobid_to_page(id)],
            extent_pages: Vec::new(),
        }
    }

    /// Thin provisioned.
    pub fn thin(&self) -> bool {
        self.invalid_flags & invalid_flags::THIN_PROV != 0
    }

    /// Data read-only (set read-only, or a data_ro flag this version does
    /// not know).
    pub fn data_ro(&self) -> bool {
        self.data_ro_flags != 0
    }

    /// Metadata read-only: data read-only, or an md_ro flag not known.
    pub fn md_ro(&self) -> bool {
        self.data_ro() || self.md_ro_flags & !md_ro_flags::KNOWN != 0
    }

    /// The clear method.
    pub fn clear_method(&self) -> BlobClearMethod {
        BlobClearMethod::from_bits(self.md_ro_flags)
    }

    /// Sets the clear method.
    pub fn set_clear_method(&mut self, m: BlobClearMethod) {
        self.md_ro_flags = (self.md_ro_flags & !md_ro_flags::CLEAR_METHOD) | m.bits();
    }

    /// Clusters allocated.
    pub fn allocated_clusters(&self) -> usize {
        self.clusters.iter().filter(|&&c| c != 0).count()
    }

    /// Rebuilds a blob from its chain's pages (in chain order) and the
    /// extent pages the chain's extent table names, looked up by md page
    /// index. `total_clusters` bounds every cluster index.
    pub fn from_pages(
        id: u64,
        chain: &[(u32, MdPage)],
        extent_page: &dyn Fn(u32) -> Option<MdPage>,
        total_clusters: u64,
    ) -> Result<BlobMeta, BlobError> {
        let corrupt = |why: String| BlobError::Corrupt { id, why };
        let mut m = BlobMeta::new(id, false);
        m.chain.clear();
        let mut saw_flags = false;
        let mut rle: Option<Vec<u32>> = None;
        let mut table: Option<(u64, Vec<u32>)> = None;
        for (seq, (idx, page)) in chain.iter().enumerate() {
            if page.id != id {
                return Err(corrupt(format!(
                    "md page {idx} belongs to blob {:#x}, not this one",
                    page.id
                )));
            }
            if page.sequence_num as usize != seq {
                return Err(corrupt(format!(
                    "md page {idx} has sequence {} at position {seq} of the chain",
                    page.sequence_num
                )));
            }
            m.chain.push(*idx);
            for d in &page.descriptors {
                match d {
                    Descriptor::Flags {
                        invalid,
                        data_ro,
                        md_ro,
                    } => {
                        if invalid & !invalid_flags::KNOWN != 0 {
                            return Err(BlobError::UnknownFlags {
                                id,
                                flags: invalid & !invalid_flags::KNOWN,
                            });
                        }
                        m.invalid_flags = *invalid;
                        m.data_ro_flags = *data_ro;
                        m.md_ro_flags = *md_ro;
                        saw_flags = true;
                    }
                    Descriptor::Xattr {
                        internal,
                        name,
                        value,
                    } => {
                        let list = if *internal {
                            &mut m.internal_xattrs
                        } else {
                            &mut m.xattrs
                        };
                        list.push((name.clone(), value.clone()));
                    }
                    Descriptor::ExtentRle(runs) => {
                        if table.is_some() {
                            return Err(corrupt("both extent RLE and an extent table".into()));
                        }
                        let map = rle.get_or_insert_with(Vec::new);
                        for &(first, n) in runs {
                            if map.len() as u64 + n as u64 > MAX_BLOB_CLUSTERS {
                                return Err(corrupt(format!(
                                    "more than {MAX_BLOB_CLUSTERS} clusters"
                                )));
                            }
                            if first != 0 && first as u64 + n as u64 > total_clusters {
                                return Err(corrupt(format!(
                                    "clusters {first}+{n} past the device's {total_clusters}"
                                )));
                            }
                            for j in 0..n {
                                map.push(if first == 0 { 0 } else { first + j });
                            }
                        }
                    }
                    Descriptor::ExtentTable {
                        num_clusters,
                        pages,
                    } => {
                        if rle.is_some() {
                            return Err(corrupt("both extent RLE and an extent table".into()));
                        }
                        if *num_clusters > MAX_BLOB_CLUSTERS {
                            return Err(corrupt(format!(
                                "extent table of {num_clusters} clusters; at most {MAX_BLOB_CLUSTERS}"
                            )));
                        }
                        let (n, eps) = table.get_or_insert_with(|| (*num_clusters, Vec::new()));
                        if *n != *num_clusters {
                            return Err(corrupt(
                                "extent tables disagree on the cluster count".into(),
                            ));
                        }
                        for &(p, count) in pages {
                            if eps.len() as u64 + count as u64 > n.div_ceil(EXTENTS_PER_EP) {
                                return Err(corrupt(
                                    "extent table names more extent pages than its clusters need"
                                        .into(),
                                ));
                            }
                            for _ in 0..count {
                                eps.push(p);
                            }
                        }
                    }
                    Descriptor::ExtentPage { .. } => {
                        return Err(corrupt(format!(
                            "md page {idx} of the chain holds an extent page"
                        )))
                    }
                    Descriptor::Unknown { .. } => {}
                }
            }
        }
        if !saw_flags {
            // SPDK always writes flags; a chain without them is not a blob.
            return Err(corrupt("no flags descriptor".into()));
        }
        let thin = m.thin();
        if let Some(map) = rle {
            m.clusters = map;
        } else if let Some((n, eps)) = table {
            m.clusters = vec![0; n as usize];
            for (i, &p) in eps.iter().enumerate() {
                if p == 0 {
                    continue;
                }
                let page = extent_page(p)
                    .ok_or_else(|| corrupt(format!("extent page at md page {p} unreadable")))?;
                if page.id != id {
                    return Err(corrupt(format!(
                        "extent page at md page {p} belongs to {:#x}",
                        page.id
                    )));
                }
                let Some(Descriptor::ExtentPage {
                    start_cluster,
                    clusters,
                }) = page.descriptors.first()
                else {
                    return Err(corrupt(format!("md page {p} holds no extent page")));
                };
                let start = *start_cluster as u64;
                if start != i as u64 * EXTENTS_PER_EP || start + clusters.len() as u64 > n {
                    return Err(corrupt(format!(
                        "extent page at md page {p} starts at cluster {start}, not {}",
                        i as u64 * EXTENTS_PER_EP
                    )));
                }
                for (j, &c) in clusters.iter().enumerate() {
                    if c as u64 >= total_clusters {
                        return Err(corrupt(format!(
                            "cluster {c} past the device's {total_clusters}"
                        )));
                    }
                    m.clusters[start as usize + j] = c;
                }
                m.extent_pages.push(p);
            }
        }
        if !thin && m.clusters.contains(&0) {
            return Err(corrupt("a thick blob has an unallocated cluster".into()));
        }
        Ok(m)
    }

    /// The descriptors of this blob's chain, the cluster map as extent RLE
    /// (this crate writes RLE; SPDK reads both).
    fn descriptors(&self) -> Vec<Descriptor> {
        let mut invalid = self.invalid_flags & !invalid_flags::EXTENT_TABLE;
        if self.internal_xattrs.is_empty() {
            invalid &= !invalid_flags::INTERNAL_XATTR;
        } else {
            invalid |= invalid_flags::INTERNAL_XATTR;
        }
        let mut out = vec![Descriptor::Flags {
            invalid,
            data_ro: self.data_ro_flags,
            md_ro: self.md_ro_flags,
        }];
        for (internal, list) in [(false, &self.xattrs), (true, &self.internal_xattrs)] {
            for (name, value) in list {
                out.push(Descriptor::Xattr {
                    internal,
                    name: name.clone(),
                    value: value.clone(),
                });
            }
        }
        out
    }

    /// The cluster map as (first, count) runs; 0 starts a run of
    /// unallocated clusters.
    fn runs(&self) -> Vec<(u32, u32)> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for &c in &self.clusters {
            if let Some(last) = runs.last_mut() {
                let contiguous = if c == 0 {
                    last.0 == 0
                } else {
                    last.0 != 0 && last.0 as u64 + last.1 as u64 == c as u64
                };
                if contiguous && last.1 < u32::MAX {
                    last.1 += 1;
                    continue;
                }
            }
            runs.push((c, 1));
        }
        runs
    }

    /// The flags word written for this blob (as [`BlobMeta::descriptors`]).
    pub fn written_invalid_flags(&self) -> u64 {
        match &self.descriptors()[0] {
            Descriptor::Flags { invalid, .. } => *invalid,
            _ => 0,
        }
    }

    /// Lays the metadata out as a chain of pages. The first goes to the
    /// id's page; `more` gives the md page index for each further page.
    pub fn to_pages(
        &self,
        mut more: impl FnMut() -> Option<u32>,
    ) -> Result<Vec<(u32, MdPage)>, BlobError> {
        let mut pages: Vec<(u32, MdPage)> = Vec::new();
        let mut cur: Vec<Descriptor> = Vec::new();
        let mut used = 0usize;
        let mut flush =
            |cur: &mut Vec<Descriptor>, pages: &mut Vec<(u32, MdPage)>| -> Result<(), BlobError> {
                let idx = if pages.is_empty() {
                    wire::blobid_to_page(self.id)
                } else {
                    more().ok_or(BlobError::NoMdPages)?
                };
                if let Some(last) = pages.last_mut() {
                    last.1.next = idx;
                }
                let seq = pages.len() as u32;
                pages.push((
                    idx,
                    MdPage {
                        id: self.id,
                        sequence_num: seq,
                        descriptors: std::mem::take(cur),
                        next: INVALID_MD_PAGE,
                    },
                ));
                Ok(())
            };
        for d in self.descriptors() {
            let n = d.encoded_len();
            if used + n > DESCRIPTORS_LEN {
                flush(&mut cur, &mut pages)?;
                used = 0;
            }
            used += n;
            cur.push(d);
        }
        // The cluster map, split into RLE descriptors that fit.
        let runs = self.runs();
        let mut i = 0;
        while i < runs.len() {
            let room = DESCRIPTORS_LEN.saturating_sub(used + DESC_HEADER_LEN) / 8;
            if room == 0 {
                flush(&mut cur, &mut pages)?;
                used = 0;
                continue;
            }
            let take = room.min(runs.len() - i);
            let d = Descriptor::ExtentRle(runs[i..i + take].to_vec());
            used += d.encoded_len();
            cur.push(d);
            i += take;
        }
        flush(&mut cur, &mut pages)?;
        Ok(pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: &BlobMeta) -> BlobMeta {
        let mut next = 100u32;
        let pages = m
            .to_pages(|| {
                next += 1;
                Some(next)
            })
            .unwrap();
        // Through bytes, as on disk.
        let pages: Vec<(u32, MdPage)> = pages
            .into_iter()
            .map(|(i, p)| {
                let mut buf = vec![0u8; wire::PAGE_SIZE];
                p.emit(&mut buf).unwrap();
                (i, MdPage::parse(&buf).unwrap())
            })
            .collect();
        BlobMeta::from_pages(m.id, &pages, &|_| None, 1 << 20).unwrap()
    }

    #[test]
    fn long_chains_round_trip() {
        let mut m = BlobMeta::new(wire::page_to_blobid(3), true);
        // A fragmented thin map: thousands of runs, several pages of RLE.
        m.clusters = (0..5000u32)
            .map(|i| if i % 3 == 0 { 0 } else { 7 + i * 2 })
            .collect();
        m.xattrs = (0..5).map(|i| (format!("k{i}"), vec![i; 2000])).collect();
        m.internal_xattrs = vec![(wire::XATTR_SNAPSHOT.into(), 9u64.to_le_bytes().to_vec())];
        m.set_clear_method(BlobClearMethod::Unmap);
        let back = round_trip(&m);
        assert!(back.chain.len() > 5, "{} pages", back.chain.len());
        assert_eq!(back.clusters, m.clusters);
        assert_eq!(back.xattrs, m.xattrs);
        assert_eq!(back.internal_xattrs, m.internal_xattrs);
        assert_eq!(back.clear_method(), BlobClearMethod::Unmap);
        assert_eq!(
            back.invalid_flags,
            invalid_flags::THIN_PROV | invalid_flags::INTERNAL_XATTR
        );
    }

    #[test]
    fn unknown_invalid_flags_refuse_the_blob_and_unknown_ro_flags_make_it_read_only() {
        let id = wire::page_to_blobid(1);
        let page = |invalid, data_ro, md_ro| {
            vec![(
                1u32,
                MdPage {
                    id,
                    sequence_num: 0,
                    descriptors: vec![Descriptor::Flags {
                        invalid,
                        data_ro,
                        md_ro,
                    }],
                    next: INVALID_MD_PAGE,
                },
            )]
        };
        let e = BlobMeta::from_pages(id, &page(1 << 9, 0, 0), &|_| None, 10).unwrap_err();
        assert!(
            matches!(e, BlobError::UnknownFlags { flags: 512, .. }),
            "{e}"
        );
        let m = BlobMeta::from_pages(id, &page(0, 1 << 5, 0), &|_| None, 10).unwrap();
        assert!(m.data_ro() && m.md_ro());
        let m = BlobMeta::from_pages(id, &page(0, 0, 1 << 4), &|_| None, 10).unwrap();
        assert!(!m.data_ro() && m.md_ro());
    }

    #[test]
    fn corrupt_chains_are_named() {
        let id = wire::page_to_blobid(1);
        let mk = |descriptors| {
            vec![(
                1u32,
                MdPage {
                    id,
                    sequence_num: 0,
                    descriptors,
                    next: INVALID_MD_PAGE,
                },
            )]
        };
        let flags = Descriptor::Flags {
            invalid: 0,
            data_ro: 0,
            md_ro: 0,
        };
        // A thick blob with a hole.
        let e = BlobMeta::from_pages(
            id,
            &mk(vec![flags.clone(), Descriptor::ExtentRle(vec![(0, 2)])]),
            &|_| None,
            10,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unallocated"), "{e}");
        // Clusters past the device.
        let e = BlobMeta::from_pages(
            id,
            &mk(vec![flags.clone(), Descriptor::ExtentRle(vec![(8, 5)])]),
            &|_| None,
            10,
        )
        .unwrap_err();
        assert!(e.to_string().contains("past the device"), "{e}");
        // A huge run is refused before it is allocated.
        let e = BlobMeta::from_pages(
            id,
            &mk(vec![
                Descriptor::Flags {
                    invalid: invalid_flags::THIN_PROV,
                    data_ro: 0,
                    md_ro: 0,
                },
                Descriptor::ExtentRle(vec![(0, u32::MAX)]),
            ]),
            &|_| None,
            10,
        )
        .unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        // No flags at all.
        let e = BlobMeta::from_pages(id, &mk(vec![]), &|_| None, 10).unwrap_err();
        assert!(e.to_string().contains("no flags"), "{e}");
    }
}
