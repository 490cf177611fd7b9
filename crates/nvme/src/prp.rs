//! Building PRP lists and SGLs from a buffer's translations (sections
//! 4.3 and 4.4). Pure logic over a translation function and an entry sink,
//! so it is tested on the host against fake translations; the queue pair
//! feeds it `vtophys` and writes entries into DMA memory.

/// Why a payload cannot be described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrpError {
    /// Part of the buffer has no translation (not DMA memory, not registered).
    Untranslated {
        /// The address.
        vaddr: usize,
    },
    /// The layout breaks PRP rules (an element other than the first starts
    /// off a page boundary, or one other than the last ends off one): an
    /// SGL is needed, and the controller has none.
    NotPrpCompatible {
        /// Byte offset in the payload where the rule breaks.
        offset: usize,
    },
    /// More entries than a list holds.
    TooManyEntries {
        /// Entries needed.
        needed: usize,
        /// The list's capacity.
        capacity: usize,
    },
    /// The segments' total differs from the transfer length.
    LengthMismatch {
        /// Bytes the segments provided.
        got: usize,
        /// Bytes the command transfers.
        want: usize,
    },
}

impl std::fmt::Display for PrpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrpError::Untranslated { vaddr } => write!(
                f,
                "buffer address {vaddr:#x} is not DMA memory (allocate it with dma_malloc/DmaBuf or mem_register it)"
            ),
            PrpError::NotPrpCompatible { offset } => write!(
                f,
                "buffer layout is not PRP-compatible at byte {offset} (elements after the first must start, and all but the last must end, on a page boundary) and the controller has no SGL support"
            ),
            PrpError::TooManyEntries { needed, capacity } => write!(
                f,
                "transfer needs {needed} list entries, a request holds {capacity}: split the I/O"
            ),
            PrpError::LengthMismatch { got, want } => {
                write!(f, "segments give {got} bytes, the command transfers {want}")
            }
        }
    }
}

/// The result of a description: what goes into CDW6..9.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPointer {
    /// PRP1 (or the first SGL descriptor's first half).
    pub dptr1: u64,
    /// PRP2 (or the first SGL descriptor's second half).
    pub dptr2: u64,
    /// Entries written to the list.
    pub list_entries: usize,
}

/// Splits `segments` (virtual address, length) into IOVA-contiguous runs via
/// `translate` (vtophys's contract: returns the IOVA of `vaddr` and shrinks
/// `len` to the contiguous run; `u64::MAX` for no translation), calling
/// `run(offset, iova, len)` for each.
fn for_each_run(
    segments: &mut dyn Iterator<Item = (usize, usize)>,
    translate: &mut dyn FnMut(usize, &mut u64) -> u64,
    want: usize,
    run: &mut dyn FnMut(usize, u64, usize) -> Result<(), PrpError>,
) -> Result<(), PrpError> {
    let mut offset = 0usize;
    for (va, len) in segments {
        let len = len.min(want - offset);
        let mut done = 0;
        while done < len {
            let mut n = (len - done) as u64;
            let iova = translate(va + done, &mut n);
            if iova == u64::MAX || n == 0 {
                return Err(PrpError::Untranslated { vaddr: va + done });
            }
            let n = (n as usize).min(len - done);
            run(offset, iova, n)?;
            done += n;
            offset += n;
        }
        if offset >= want {
            break;
        }
    }
    if offset != want {
        return Err(PrpError::LengthMismatch { got: offset, want });
    }
    Ok(())
}

/// Describes a transfer of `want` bytes with PRPs. `list_iova` is the
/// device address of the PRP list, `write(i, entry)` stores list entry `i`
/// (at most `capacity`). `page` is the controller's memory page size.
pub fn build_prps(
    segments: &mut dyn Iterator<Item = (usize, usize)>,
    translate: &mut dyn FnMut(usize, &mut u64) -> u64,
    want: usize,
    page: usize,
    list_iova: u64,
    capacity: usize,
    write: &mut dyn FnMut(usize, u64),
) -> Result<DataPointer, PrpError> {
    let page = page as u64;
    let mut n = 0usize; // entries so far
    let mut first = 0u64;
    let mut second = 0u64;
    let mut ends_on_page = true;
    for_each_run(segments, translate, want, &mut |offset, iova, len| {
        if n > 0 && (iova % page != 0 || !ends_on_page) {
            return Err(PrpError::NotPrpCompatible { offset });
        }
        let end = iova + len as u64;
        let mut e = iova;
        while e < end {
            match n {
                0 => first = e,
                _ => {
                    if n == 1 {
                        second = e;
                    }
                    if n > capacity {
                        return Err(PrpError::TooManyEntries {
                            needed: n + 1,
                            capacity,
                        });
                    }
                    write(n - 1, e);
                }
            }
            n += 1;
            e = (e / page + 1) * page;
        }
        ends_on_page = end % page == 0;
        Ok(())
    })?;
    let (dptr2, list_entries) = match n {
        0 | 1 => (0, 0),
        2 => (second, 0),
        _ => (list_iova, n - 1),
    };
    Ok(DataPointer {
        dptr1: first,
        dptr2,
        list_entries,
    })
}

/// Describes a transfer with an SGL: one Data Block descriptor per
/// IOVA-contiguous run (adjacent runs merged). A single run goes in the
/// command itself; more go in the list (`write(i, descriptor)`), which the
/// command points to with a Last Segment descriptor.
pub fn build_sgl(
    segments: &mut dyn Iterator<Item = (usize, usize)>,
    translate: &mut dyn FnMut(usize, &mut u64) -> u64,
    want: usize,
    list_iova: u64,
    capacity: usize,
    write: &mut dyn FnMut(usize, crate::spec::SglDescriptor),
) -> Result<DataPointer, PrpError> {
    use crate::spec::SglDescriptor as D;
    let mut cur: Option<(u64, u64)> = None;
    let mut n = 0usize;
    let mut first = D::default();
    let mut flush = |d: (u64, u64), n: &mut usize| -> Result<(), PrpError> {
        let desc = D::new(D::TYPE_DATA_BLOCK, d.0, d.1 as u32);
        if *n == 0 {
            first = desc;
        }
        if *n >= capacity {
            return Err(PrpError::TooManyEntries {
                needed: *n + 1,
                capacity,
            });
        }
        write(*n, desc);
        *n += 1;
        Ok(())
    };
    for_each_run(segments, translate, want, &mut |_, iova, len| {
        match cur {
            Some((s, l)) if s + l == iova && l + (len as u64) <= u32::MAX as u64 => {
                cur = Some((s, l + len as u64))
            }
            Some(d) => {
                flush(d, &mut n)?;
                cur = Some((iova, len as u64));
            }
            None => cur = Some((iova, len as u64)),
        }
        Ok(())
    })?;
    if let Some(d) = cur {
        flush(d, &mut n)?;
    }
    let desc = if n <= 1 {
        first
    } else {
        D::new(D::TYPE_LAST_SEGMENT, list_iova, (n * 16) as u32)
    };
    let dw = desc.to_dwords();
    Ok(DataPointer {
        dptr1: dw[0] as u64 | ((dw[1] as u64) << 32),
        dptr2: dw[2] as u64 | ((dw[3] as u64) << 32),
        list_entries: if n <= 1 { 0 } else { n },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    /// A fake translation: virtual pages map to IOVAs page by page from a
    /// table (vpage -> iova page base), contiguous where the table is.
    fn fake(table: &[(usize, u64)]) -> impl FnMut(usize, &mut u64) -> u64 + '_ {
        move |va, len| {
            let vp = va / PAGE * PAGE;
            let Some(&(_, io)) = table.iter().find(|(v, _)| *v == vp) else {
                return u64::MAX;
            };
            let mut run = (PAGE - va % PAGE) as u64;
            let mut next = vp + PAGE;
            let mut next_io = io + PAGE as u64;
            while run < *len {
                match table.iter().find(|(v, _)| *v == next) {
                    Some(&(_, i)) if i == next_io => {
                        run += PAGE as u64;
                        next += PAGE;
                        next_io += PAGE as u64;
                    }
                    _ => break,
                }
            }
            *len = run.min(*len);
            io + (va % PAGE) as u64
        }
    }

    fn prps(
        segs: &[(usize, usize)],
        table: &[(usize, u64)],
    ) -> Result<(DataPointer, Vec<u64>), PrpError> {
        let want = segs.iter().map(|s| s.1).sum();
        let mut list = vec![0u64; 512];
        let mut t = fake(table);
        let d = build_prps(
            &mut segs.iter().copied(),
            &mut t,
            want,
            PAGE,
            0xf000_0000,
            512,
            &mut |i, e| list[i] = e,
        )?;
        list.truncate(d.list_entries);
        Ok((d, list))
    }

    fn identity(pages: usize) -> Vec<(usize, u64)> {
        (0..pages)
            .map(|i| (0x10_0000 + i * PAGE, 0x80_0000 + (i * PAGE) as u64))
            .collect()
    }

    #[test]
    fn one_page_and_two_pages() {
        let t = identity(8);
        let (d, l) = prps(&[(0x10_0000, 512)], &t).unwrap();
        assert_eq!((d.dptr1, d.dptr2, l.len()), (0x80_0000, 0, 0));
        // 4 KiB starting mid-page crosses into a second page: PRP2 is the entry.
        let (d, l) = prps(&[(0x10_0200, 4096)], &t).unwrap();
        assert_eq!((d.dptr1, d.dptr2, l.len()), (0x80_0200, 0x80_1000, 0));
    }

    #[test]
    fn list_for_longer_transfers() {
        let t = identity(8);
        let (d, l) = prps(&[(0x10_0000, 4 * PAGE)], &t).unwrap();
        assert_eq!(d.dptr1, 0x80_0000);
        assert_eq!(d.dptr2, 0xf000_0000);
        assert_eq!(l, vec![0x80_1000, 0x80_2000, 0x80_3000]);
        let (d, l) = prps(&[(0x10_0010, 2 * PAGE)], &t).unwrap();
        assert_eq!(d.dptr1, 0x80_0010);
        assert_eq!(l, vec![0x80_1000, 0x80_2000]);
    }

    #[test]
    fn splits_at_discontiguities() {
        // virtual pages 0,1,2 map to scattered IOVAs.
        let t = vec![
            (0x10_0000, 0x50_0000),
            (0x10_1000, 0x90_3000),
            (0x10_2000, 0x20_0000),
        ];
        let (d, l) = prps(&[(0x10_0800, 2 * PAGE)], &t).unwrap();
        assert_eq!(d.dptr1, 0x50_0800);
        assert_eq!(d.dptr2, 0xf000_0000);
        assert_eq!(l, vec![0x90_3000, 0x20_0000]);
    }

    #[test]
    fn vectored_segments() {
        let t = identity(8);
        // first ends on a page, the rest start on pages: fine.
        let (d, l) = prps(
            &[(0x10_0e00, 0x200), (0x10_2000, PAGE), (0x10_5000, 0x100)],
            &t,
        )
        .unwrap();
        assert_eq!(d.dptr1, 0x80_0e00);
        assert_eq!(l, vec![0x80_2000, 0x80_5000]);
        // a middle element that starts off a page: needs an SGL.
        let e = prps(&[(0x10_0000, PAGE), (0x10_2200, 0x200)], &t).unwrap_err();
        assert_eq!(e, PrpError::NotPrpCompatible { offset: PAGE });
        // an element that ends off a page and is not the last.
        let e = prps(&[(0x10_0000, 0x200), (0x10_2000, 0x200)], &t).unwrap_err();
        assert_eq!(e, PrpError::NotPrpCompatible { offset: 0x200 });
    }

    #[test]
    fn errors() {
        let t = identity(2);
        assert_eq!(
            prps(&[(0x20_0000, 512)], &t).unwrap_err(),
            PrpError::Untranslated { vaddr: 0x20_0000 }
        );
        let big = identity(600);
        let e = prps(&[(0x10_0000, 520 * PAGE)], &big).unwrap_err();
        assert!(matches!(e, PrpError::TooManyEntries { .. }));
        let mut t = fake(&big);
        let e = build_prps(
            &mut [(0x10_0000usize, 100usize)].into_iter(),
            &mut t,
            200,
            PAGE,
            0,
            8,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert_eq!(
            e,
            PrpError::LengthMismatch {
                got: 100,
                want: 200
            }
        );
    }

    #[test]
    fn sgl_merges_and_lists() {
        let t = vec![
            (0x10_0000, 0x50_0000),
            (0x10_1000, 0x50_1000),
            (0x10_2000, 0x20_0000),
        ];
        let mut list = Vec::new();
        let mut f = fake(&t);
        let d = build_sgl(
            &mut [(0x10_0100usize, 0x2000usize)].into_iter(),
            &mut f,
            0x2000,
            0xf000,
            16,
            &mut |i, e| {
                assert_eq!(i, list.len());
                list.push(e)
            },
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].address, list[0].length), (0x50_0100, 0x1f00));
        assert_eq!((list[1].address, list[1].length), (0x20_0000, 0x100));
        assert_eq!(d.list_entries, 2);
        assert_eq!(d.dptr1, 0xf000);
        assert_eq!(d.dptr2, 32 | (0x30u64 << 56));
        // one run: the data block goes in the command.
        let mut f = fake(&t);
        let d = build_sgl(
            &mut [(0x10_0100usize, 0x100usize)].into_iter(),
            &mut f,
            0x100,
            0xf000,
            16,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!((d.dptr1, d.dptr2, d.list_entries), (0x50_0100, 0x100, 0));
    }
}
