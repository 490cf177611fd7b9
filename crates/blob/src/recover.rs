//! Loading the allocation masks: read them from a clean store, or rebuild
//! them from the metadata chains of one that was not unloaded cleanly.

use std::collections::HashMap;
use std::rc::Rc;

use crate::meta::BlobMeta;
use crate::store::{defer, Done, Store};
use crate::wire::{self, mask_type, BitMask, MdPage, PAGE_SIZE};
use crate::BlobError;

/// Pages read per request while scanning the metadata region.
const SCAN_CHUNK_PAGES: u64 = 256;

/// Reads the three masks of a clean store and checks them against the
/// super block.
pub(crate) fn read_masks(store: Rc<Store>, done: Done<()>) {
    let (pm, cm, bm, md_len, total, md_clusters) = {
        let st = store.st.borrow();
        (
            st.sb.used_page_mask,
            st.sb.used_cluster_mask,
            st.sb.used_blobid_mask,
            st.sb.md.len as u64,
            st.sb.total_clusters(),
            st.md_clusters,
        )
    };
    let s = store.clone();
    store.read_pages(
        pm.start as u64,
        pm.len as u64,
        Box::new(move |r| {
            let pages = match r.and_then(|b| Ok(BitMask::parse(&b, mask_type::USED_PAGES, md_len)?))
            {
                Ok(m) => m,
                Err(e) => return done(Err(e)),
            };
            let s2 = s.clone();
            s.read_pages(
                cm.start as u64,
                cm.len as u64,
                Box::new(move |r| {
                    let clusters = match r
                        .and_then(|b| Ok(BitMask::parse(&b, mask_type::USED_CLUSTERS, total)?))
                    {
                        Ok(m) => m,
                        Err(e) => return done(Err(e)),
                    };
                    let s3 = s2.clone();
                    s2.read_pages(
                        bm.start as u64,
                        bm.len as u64,
                        Box::new(move |r| {
                            let ids = match r.and_then(|b| {
                                Ok(BitMask::parse(&b, mask_type::USED_BLOBIDS, md_len)?)
                            }) {
                                Ok(m) => m,
                                Err(e) => return done(Err(e)),
                            };
                            if let Some(c) = (0..md_clusters).find(|&c| !clusters.get(c)) {
                                return done(Err(BlobError::Corrupt {
                                    id: wire::BLOBID_INVALID,
                                    why: format!(
                                        "used cluster mask: metadata cluster {c} is marked free"
                                    ),
                                }));
                            }
                            if let Some(p) = ids.iter_ones().find(|&p| !pages.get(p)) {
                                return done(Err(BlobError::Corrupt {
                                    id: wire::BLOBID_INVALID,
                                    why: format!("blob id mask: id page {p} is not a used md page"),
                                }));
                            }
                            let mut st = s3.st.borrow_mut();
                            st.used_md_pages = pages;
                            st.used_clusters = clusters;
                            st.used_blobids = ids;
                            drop(st);
                            done(Ok(()))
                        }),
                    );
                }),
            );
        }),
    );
}

/// Rebuilds the masks by reading the whole metadata region: every page
/// that starts a chain (sequence 0, at its id's page) is a blob; its chain
/// and extent pages mark md pages, its cluster map marks clusters. Chains
/// that do not parse are logged and left out (their space is freed).
pub(crate) fn rebuild_masks(store: Rc<Store>, done: Done<()>) {
    scan(store, 0, HashMap::new(), done);
}

fn scan(store: Rc<Store>, from: u64, mut found: HashMap<u32, MdPage>, done: Done<()>) {
    let (md_start, md_len) = {
        let st = store.st.borrow();
        (st.sb.md.start as u64, st.sb.md.len as u64)
    };
    if from >= md_len {
        return defer(move || {
            let r = rebuild_from(&store, &found);
            done(r)
        });
    }
    let n = SCAN_CHUNK_PAGES.min(md_len - from);
    let s = store.clone();
    store.read_pages(
        md_start + from,
        n,
        Box::new(move |r| {
            let buf = match r {
                Ok(b) => b,
                Err(e) => return done(Err(e)),
            };
            for i in 0..n as usize {
                let bytes = &buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                // Zeroed and torn pages fail their CRC: not metadata.
                if let Ok(p) = MdPage::parse(bytes) {
                    if p.id & !0xffff_ffff == wire::BLOBID_HIGH_BIT {
                        found.insert((from + i as u64) as u32, p);
                    }
                }
            }
            scan(s, from + n, found, done)
        }),
    );
}

fn rebuild_from(store: &Rc<Store>, found: &HashMap<u32, MdPage>) -> Result<(), BlobError> {
    let mut st = store.st.borrow_mut();
    let total = st.sb.total_clusters();
    let md_len = st.sb.md.len;
    let mut pages = BitMask::new(md_len as u64);
    let mut clusters = BitMask::new(total);
    let mut ids = BitMask::new(md_len as u64);
    for c in 0..st.md_clusters {
        clusters.set(c);
    }
    let mut roots: Vec<u32> = found
        .iter()
        .filter(|(idx, p)| p.sequence_num == 0 && wire::blobid_to_page(p.id) == **idx)
        .map(|(idx, _)| *idx)
        .collect();
    roots.sort_unstable();
    for root in roots {
        let id = found[&root].id;
        let mut chain = Vec::new();
        let mut idx = root;
        let mut broken = false;
        loop {
            match found.get(&idx) {
                Some(p) if chain.len() < md_len as usize => {
                    chain.push((idx, p.clone()));
                    if p.next == wire::INVALID_MD_PAGE {
                        break;
                    }
                    idx = p.next;
                }
                _ => {
                    broken = true;
                    break;
                }
            }
        }
        let meta = if broken {
            Err(BlobError::Corrupt {
                id,
                why: format!("chain broken at md page {idx}"),
            })
        } else {
            BlobMeta::from_pages(id, &chain, &|p| found.get(&p).cloned(), total)
        };
        match meta {
            Ok(m) => {
                ids.set(root as u64);
                for &p in m.chain.iter().chain(&m.extent_pages) {
                    pages.set(p as u64);
                }
                for &c in &m.clusters {
                    if c != 0 {
                        if clusters.get(c as u64) {
                            tracing::error!(blob = id, cluster = c, "cluster owned twice");
                        }
                        clusters.set(c as u64);
                    }
                }
            }
            Err(e) => tracing::warn!(blob = id, error = %e, "blob left out of recovery"),
        }
    }
    st.used_md_pages = pages;
    st.used_clusters = clusters;
    st.used_blobids = ids;
    Ok(())
}
