//! The blobstore over a bdev: init, load (with recovery), unload, and the
//! blob operations. Everything runs on the thread that made the store;
//! completions come back on it, never inside the call that started them.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use rspdk_bdev::{bdev_open, BdevDesc, BdevError, BdevIoChannel, IoStatus, IoType};
use rspdk_env::DmaBuf;
use rspdk_thread::Thread;

use crate::meta::{BlobMeta, MAX_XATTR_LEN};
use crate::wire::{
    self, mask_pages, mask_type, BitMask, MdPage, Region, SuperBlock, BLOBID_INVALID,
    INVALID_MD_PAGE, PAGE_SIZE,
};
use crate::BlobError;

pub(crate) type Done<T> = Box<dyn FnOnce(Result<T, BlobError>)>;

/// How `init` clears the data clusters (SPDK: `bs_clear_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClearMethod {
    /// Unmap them (SPDK's default).
    #[default]
    Unmap,
    /// Write zeroes.
    WriteZeroes,
    /// Leave them.
    None,
}

/// Options of [`Blobstore::init`] (SPDK: `struct spdk_bs_opts`).
#[derive(Debug, Clone)]
pub struct BlobstoreOpts {
    /// Cluster size in bytes (1 MiB; lvol stores use 4 MiB).
    pub cluster_size: u32,
    /// Metadata pages to reserve; `None` = one per cluster (SPDK's default).
    pub num_md_pages: Option<u32>,
    /// How to clear the data clusters.
    pub clear_method: ClearMethod,
    /// The store's type, up to 16 bytes ("LVOLSTORE" for lvol stores).
    pub bstype: String,
}

impl Default for BlobstoreOpts {
    fn default() -> Self {
        BlobstoreOpts {
            cluster_size: 1 << 20,
            num_md_pages: None,
            clear_method: ClearMethod::Unmap,
            bstype: String::new(),
        }
    }
}

/// Options of [`Blobstore::create_blob`] (SPDK: `struct spdk_blob_opts`).
#[derive(Debug, Clone, Default)]
pub struct BlobOpts {
    /// Initial size in clusters.
    pub num_clusters: u64,
    /// Allocate clusters on first write.
    pub thin_provision: bool,
    /// User xattrs.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Internal xattrs (for the layers above: lvol names, snapshot links).
    pub internal_xattrs: Vec<(String, Vec<u8>)>,
}

pub(crate) struct Store {
    desc: BdevDesc,
    ch: BdevIoChannel,
    /// Bdev blocks per 4 KiB metadata page.
    blocks_per_page: u64,
    /// Bdev blocks (io units) per cluster.
    blocks_per_cluster: Cell<u64>,
    pub(crate) st: RefCell<StoreState>,
}

pub(crate) struct StoreState {
    pub sb: SuperBlock,
    pub used_md_pages: BitMask,
    pub used_clusters: BitMask,
    pub used_blobids: BitMask,
    /// Open blobs by id.
    pub open: HashMap<u64, Rc<crate::blob::BlobShared>>,
    /// Clusters reserved for metadata at the front of the device.
    pub md_clusters: u64,
}

/// A blobstore (SPDK: `struct spdk_blob_store`). Cloning gives another
/// handle to the same store; it belongs to the thread that made it.
#[derive(Clone)]
pub struct Blobstore(pub(crate) Rc<Store>);

impl std::fmt::Debug for Blobstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blobstore({})", self.0.desc.bdev().name())
    }
}

fn io_err(what: &'static str, status: IoStatus) -> BlobError {
    BlobError::Io { what, status }
}

/// Runs `f` on this thread's next poll: callbacks never run inside the
/// call that started the operation.
pub(crate) fn defer(f: impl FnOnce() + 'static) {
    match Thread::current() {
        Some(t) => t.defer(f),
        None => f(),
    }
}

impl Store {
    fn page_lba(&self, abs_page: u64) -> u64 {
        abs_page * self.blocks_per_page
    }

    pub(crate) fn cluster_lba(&self, cluster: u32) -> u64 {
        cluster as u64 * self.blocks_per_cluster.get()
    }

    pub(crate) fn blocks_per_cluster(&self) -> u64 {
        self.blocks_per_cluster.get()
    }

    pub(crate) fn desc(&self) -> &BdevDesc {
        &self.desc
    }

    pub(crate) fn channel(&self) -> &BdevIoChannel {
        &self.ch
    }

    /// Reads `pages` 4 KiB pages from absolute page `abs_page`.
    pub(crate) fn read_pages(self: &Rc<Self>, abs_page: u64, pages: u64, done: Done<DmaBuf>) {
        let buf = match DmaBuf::zeroed(pages as usize * PAGE_SIZE) {
            Ok(b) => b,
            Err(e) => return defer(move || done(Err(BlobError::NoMemory(e.to_string())))),
        };
        self.buf_io(IoType::Read, self.page_lba(abs_page), buf, done);
    }

    /// Writes `buf` (whole pages) at absolute page `abs_page`.
    pub(crate) fn write_pages(self: &Rc<Self>, abs_page: u64, buf: DmaBuf, done: Done<()>) {
        self.buf_io(
            IoType::Write,
            self.page_lba(abs_page),
            buf,
            Box::new(|r| done(r.map(|_| ()))),
        );
    }

    /// Reads or writes an owned buffer at `lba`, waiting for an I/O object
    /// when the channel has none free.
    pub(crate) fn buf_io(self: &Rc<Self>, t: IoType, lba: u64, buf: DmaBuf, done: Done<DmaBuf>) {
        let slot: Rc<Cell<Option<Done<DmaBuf>>>> = Rc::new(Cell::new(Some(done)));
        let s2 = slot.clone();
        // In-flight I/O keeps the store (its descriptor and channel) alive.
        let keep = self.clone();
        let cb = move |status: IoStatus, buf: DmaBuf| {
            let _keep = &keep;
            if let Some(d) = s2.take() {
                d(if status.is_ok() {
                    Ok(buf)
                } else {
                    Err(io_err("metadata I/O", status))
                })
            }
        };
        let r = match t {
            IoType::Read => self.ch.read(&self.desc, buf, lba, cb),
            _ => self.ch.write(&self.desc, buf, lba, cb),
        };
        match r {
            Ok(()) => {}
            Err((BdevError::NoMemory, buf)) => {
                let me = self.clone();
                self.ch.queue_io_wait(move || {
                    if let Some(d) = slot.take() {
                        me.buf_io(t, lba, buf, d)
                    }
                });
            }
            Err((e, _)) => {
                if let Some(d) = slot.take() {
                    defer(move || d(Err(BlobError::Bdev(e.to_string()))))
                }
            }
        }
    }

    /// Unmap or write zeroes at `lba` (waits for an I/O object like `buf_io`).
    pub(crate) fn nodata_io(self: &Rc<Self>, t: IoType, lba: u64, blocks: u64, done: Done<()>) {
        if blocks == 0 || !self.desc.bdev().io_type_supported(t) {
            return defer(move || done(Ok(())));
        }
        let slot: Rc<Cell<Option<Done<()>>>> = Rc::new(Cell::new(Some(done)));
        let s2 = slot.clone();
        let keep = self.clone();
        let r = self
            .ch
            .submit_nodata(&self.desc, t, lba, blocks, move |status| {
                let _keep = &keep;
                if let Some(d) = s2.take() {
                    d(if status.is_ok() {
                        Ok(())
                    } else {
                        Err(io_err("unmap/write zeroes", status))
                    })
                }
            });
        match r {
            Ok(()) => {}
            Err(BdevError::NoMemory) => {
                let me = self.clone();
                self.ch.queue_io_wait(move || {
                    if let Some(d) = slot.take() {
                        me.nodata_io(t, lba, blocks, d)
                    }
                });
            }
            Err(e) => {
                if let Some(d) = slot.take() {
                    defer(move || d(Err(BlobError::Bdev(e.to_string()))))
                }
            }
        }
    }

    /// Writes md pages (each at its md page index), then calls `done`.
    pub(crate) fn write_md_pages(self: &Rc<Self>, pages: Vec<(u32, MdPage)>, done: Done<()>) {
        if pages.is_empty() {
            return defer(move || done(Ok(())));
        }
        let left = Rc::new(Cell::new(pages.len()));
        let result: Rc<RefCell<Option<Done<()>>>> = Rc::new(RefCell::new(Some(done)));
        let first_err: Rc<RefCell<Option<BlobError>>> = Rc::default();
        for (idx, page) in pages {
            let mut buf = match DmaBuf::zeroed(PAGE_SIZE) {
                Ok(b) => b,
                Err(e) => {
                    *first_err.borrow_mut() = Some(BlobError::NoMemory(e.to_string()));
                    left.set(left.get() - 1);
                    continue;
                }
            };
            if let Err(e) = page.emit(&mut buf) {
                *first_err.borrow_mut() = Some(e.into());
                left.set(left.get() - 1);
                continue;
            }
            let (left, result, first_err) = (left.clone(), result.clone(), first_err.clone());
            let abs = self.st.borrow().sb.md.start as u64 + idx as u64;
            self.write_pages(
                abs,
                buf,
                Box::new(move |r| {
                    if let Err(e) = r {
                        first_err.borrow_mut().get_or_insert(e);
                    }
                    left.set(left.get() - 1);
                    if left.get() == 0 {
                        if let Some(d) = result.borrow_mut().take() {
                            d(match first_err.borrow_mut().take() {
                                Some(e) => Err(e),
                                None => Ok(()),
                            })
                        }
                    }
                }),
            );
        }
        if left.get() == 0 {
            if let Some(d) = result.borrow_mut().take() {
                let e = first_err.borrow_mut().take();
                defer(move || d(e.map_or(Ok(()), Err)));
            }
        }
    }

    /// Reads a blob's metadata chain and extent pages.
    pub(crate) fn load_meta(self: &Rc<Self>, id: u64, done: Done<BlobMeta>) {
        let first = wire::blobid_to_page(id);
        {
            let st = self.st.borrow();
            if id & !0xffff_ffff != wire::BLOBID_HIGH_BIT
                || first as u64 >= st.used_blobids.len()
                || !st.used_blobids.get(first as u64)
            {
                return defer(move || done(Err(BlobError::NotFound(id))));
            }
        }
        self.read_chain(id, first, Vec::new(), done);
    }

    fn read_chain(
        self: &Rc<Self>,
        id: u64,
        idx: u32,
        mut chain: Vec<(u32, MdPage)>,
        done: Done<BlobMeta>,
    ) {
        let md_len = self.st.borrow().sb.md.len;
        if idx >= md_len || chain.len() as u32 >= md_len || chain.iter().any(|(i, _)| *i == idx) {
            return defer(move || {
                done(Err(BlobError::Corrupt {
                    id,
                    why: format!("chain reaches md page {idx}: out of range or a loop"),
                }))
            });
        }
        let me = self.clone();
        let abs = self.st.borrow().sb.md.start as u64 + idx as u64;
        self.read_pages(
            abs,
            1,
            Box::new(move |r| {
                let page = match r.and_then(|b| Ok(MdPage::parse(&b)?)) {
                    Ok(p) => p,
                    Err(e) => return done(Err(e)),
                };
                let next = page.next;
                chain.push((idx, page));
                if next != INVALID_MD_PAGE {
                    return me.read_chain(id, next, chain, done);
                }
                me.read_extent_pages(id, chain, done);
            }),
        );
    }

    fn read_extent_pages(
        self: &Rc<Self>,
        id: u64,
        chain: Vec<(u32, MdPage)>,
        done: Done<BlobMeta>,
    ) {
        let mut wanted: Vec<u32> = Vec::new();
        for (_, p) in &chain {
            for d in &p.descriptors {
                if let wire::Descriptor::ExtentTable { pages, .. } = d {
                    wanted.extend(pages.iter().filter(|p| p.0 != 0).map(|p| p.0));
                }
            }
        }
        let (md_start, md_len, total) = {
            let st = self.st.borrow();
            (st.sb.md.start as u64, st.sb.md.len, st.sb.total_clusters())
        };
        if let Some(bad) = wanted.iter().find(|&&p| p >= md_len) {
            let bad = *bad;
            return defer(move || {
                done(Err(BlobError::Corrupt {
                    id,
                    why: format!("extent page at md page {bad}, past the md region"),
                }))
            });
        }
        let found: Rc<RefCell<HashMap<u32, MdPage>>> = Rc::default();
        let left = Rc::new(Cell::new(wanted.len()));
        let finish: Rc<RefCell<Option<Done<BlobMeta>>>> = Rc::new(RefCell::new(Some(done)));
        let chain = Rc::new(chain);
        let complete = {
            let (found, finish, chain) = (found.clone(), finish.clone(), chain.clone());
            move || {
                if let Some(d) = finish.borrow_mut().take() {
                    let f = found.borrow();
                    d(BlobMeta::from_pages(
                        id,
                        &chain,
                        &|p| f.get(&p).cloned(),
                        total,
                    ))
                }
            }
        };
        if wanted.is_empty() {
            return defer(complete);
        }
        let complete = Rc::new(RefCell::new(Some(complete)));
        for p in wanted {
            let (found, left, complete) = (found.clone(), left.clone(), complete.clone());
            let finish = finish.clone();
            self.read_pages(
                md_start + p as u64,
                1,
                Box::new(move |r| {
                    match r.and_then(|b| Ok(MdPage::parse(&b)?)) {
                        Ok(page) => {
                            found.borrow_mut().insert(p, page);
                        }
                        Err(e) => {
                            if let Some(d) = finish.borrow_mut().take() {
                                d(Err(e))
                            }
                        }
                    }
                    left.set(left.get() - 1);
                    if left.get() == 0 {
                        if let Some(c) = complete.borrow_mut().take() {
                            c()
                        }
                    }
                }),
            );
        }
    }

    /// Claims a free md page.
    pub(crate) fn claim_md_page(&self) -> Option<u32> {
        let mut st = self.st.borrow_mut();
        let p = st.used_md_pages.first_clear(0)?;
        st.used_md_pages.set(p);
        Some(p as u32)
    }

    /// Claims a free cluster.
    pub(crate) fn claim_cluster(&self) -> Option<u32> {
        let mut st = self.st.borrow_mut();
        let c = st.used_clusters.first_clear(0)?;
        st.used_clusters.set(c);
        Some(c as u32)
    }

    pub(crate) fn write_super(self: &Rc<Self>, clean: bool, done: Done<()>) {
        let mut buf = match DmaBuf::zeroed(PAGE_SIZE) {
            Ok(b) => b,
            Err(e) => return defer(move || done(Err(BlobError::NoMemory(e.to_string())))),
        };
        {
            let mut st = self.st.borrow_mut();
            st.sb.clean = clean;
            st.sb.emit(&mut buf);
        }
        self.write_pages(0, buf, done);
    }

    /// Writes the three masks, then `done`.
    pub(crate) fn write_masks(self: &Rc<Self>, done: Done<()>) {
        let st = self.st.borrow();
        let regions = [
            (
                st.sb.used_page_mask,
                &st.used_md_pages,
                mask_type::USED_PAGES,
            ),
            (
                st.sb.used_cluster_mask,
                &st.used_clusters,
                mask_type::USED_CLUSTERS,
            ),
            (
                st.sb.used_blobid_mask,
                &st.used_blobids,
                mask_type::USED_BLOBIDS,
            ),
        ];
        let mut bufs = Vec::new();
        for (r, m, kind) in regions {
            let mut buf = match DmaBuf::zeroed(r.len as usize * PAGE_SIZE) {
                Ok(b) => b,
                Err(e) => return defer(move || done(Err(BlobError::NoMemory(e.to_string())))),
            };
            m.emit(&mut buf, kind);
            bufs.push((r.start as u64, buf));
        }
        drop(st);
        let left = Rc::new(Cell::new(bufs.len()));
        let res: Rc<RefCell<Option<Done<()>>>> = Rc::new(RefCell::new(Some(done)));
        let err: Rc<RefCell<Option<BlobError>>> = Rc::default();
        for (start, buf) in bufs {
            let (left, res, err) = (left.clone(), res.clone(), err.clone());
            self.write_pages(
                start,
                buf,
                Box::new(move |r| {
                    if let Err(e) = r {
                        err.borrow_mut().get_or_insert(e);
                    }
                    left.set(left.get() - 1);
                    if left.get() == 0 {
                        if let Some(d) = res.borrow_mut().take() {
                            d(err.borrow_mut().take().map_or(Ok(()), Err))
                        }
                    }
                }),
            );
        }
    }
}

fn open_bdev(bdev_name: &str) -> Result<(BdevDesc, BdevIoChannel), BlobError> {
    let mut desc = bdev_open(bdev_name, true, |_| {})?;
    desc.claim("blobstore")?;
    let bs = desc.bdev().block_size() as usize;
    if bs == 0 || PAGE_SIZE % bs != 0 {
        return Err(BlobError::InvalidParam(format!(
            "bdev '{bdev_name}' has {bs}-byte blocks; a blobstore needs a block size dividing 4096"
        )));
    }
    let ch = desc.get_io_channel()?;
    Ok((desc, ch))
}

impl Blobstore {
    /// Makes a new, empty blobstore on bdev `bdev_name` (SPDK:
    /// `spdk_bs_init`): writes the super block (not clean: the store is in
    /// use), zeroes the metadata region, clears the data clusters as
    /// `opts.clear_method` says, and writes the masks.
    pub fn init(
        bdev_name: &str,
        opts: BlobstoreOpts,
        done: impl FnOnce(Result<Blobstore, BlobError>) + 'static,
    ) {
        let r = Self::init_layout(bdev_name, &opts);
        let (store, md_blocks) = match r {
            Ok(x) => x,
            Err(e) => return defer(move || done(Err(e))),
        };
        let total_blocks = store.desc.bdev().num_blocks();
        let clear = match opts.clear_method {
            ClearMethod::Unmap => Some(IoType::Unmap),
            ClearMethod::WriteZeroes => Some(IoType::WriteZeroes),
            ClearMethod::None => None,
        };
        let s = store.clone();
        // Zero the metadata region (super block and masks are written after).
        let zero_md = move |next: Done<()>| {
            if s.desc.bdev().io_type_supported(IoType::WriteZeroes) {
                s.nodata_io(IoType::WriteZeroes, 0, md_blocks, next);
            } else {
                match DmaBuf::zeroed((md_blocks * s.desc.bdev().block_size() as u64) as usize) {
                    Ok(b) => s.buf_io(IoType::Write, 0, b, Box::new(|r| next(r.map(|_| ())))),
                    Err(e) => next(Err(BlobError::NoMemory(e.to_string()))),
                }
            }
        };
        let s = store.clone();
        zero_md(Box::new(move |r| {
            if let Err(e) = r {
                return done(Err(e));
            }
            let s2 = s.clone();
            let after_clear: Done<()> = Box::new(move |r| {
                if let Err(e) = r {
                    return done(Err(e));
                }
                let s3 = s2.clone();
                s2.write_masks(Box::new(move |r| {
                    if let Err(e) = r {
                        return done(Err(e));
                    }
                    let s4 = s3.clone();
                    s3.write_super(false, Box::new(move |r| done(r.map(|()| Blobstore(s4)))));
                }));
            });
            match clear {
                Some(t) => s.nodata_io(t, md_blocks, total_blocks - md_blocks, after_clear),
                None => after_clear(Ok(())),
            }
        }));
    }

    fn init_layout(bdev_name: &str, opts: &BlobstoreOpts) -> Result<(Rc<Store>, u64), BlobError> {
        let (desc, ch) = open_bdev(bdev_name)?;
        let block = desc.bdev().block_size() as u64;
        let size = desc.bdev().num_blocks() * block;
        let cs = opts.cluster_size as u64;
        if cs < PAGE_SIZE as u64 || cs % PAGE_SIZE as u64 != 0 {
            return Err(BlobError::InvalidParam(format!(
                "cluster_size {cs} must be a nonzero multiple of 4096"
            )));
        }
        if opts.bstype.len() > 16 {
            return Err(BlobError::InvalidParam(format!(
                "bstype {:?} is longer than 16 bytes",
                opts.bstype
            )));
        }
        let total_clusters = size / cs;
        if total_clusters == 0 || total_clusters > u32::MAX as u64 {
            return Err(BlobError::InvalidParam(format!(
                "bdev '{bdev_name}' of {size} bytes holds {total_clusters} clusters of {cs} bytes"
            )));
        }
        let md_len = opts.num_md_pages.map_or(total_clusters, |n| n as u64);
        if md_len == 0 || md_len > u32::MAX as u64 {
            return Err(BlobError::InvalidParam(format!(
                "num_md_pages {md_len} is out of range"
            )));
        }
        let page_mask = Region {
            start: 1,
            len: mask_pages(md_len),
        };
        let cluster_mask = Region {
            start: page_mask.start + page_mask.len,
            len: mask_pages(total_clusters),
        };
        // Room for the cluster mask to grow with the device, as SPDK keeps.
        let cluster_mask_room = cluster_mask.len.max(mask_pages(md_len));
        let blobid_mask = Region {
            start: cluster_mask.start + cluster_mask_room,
            len: mask_pages(md_len),
        };
        let md = Region {
            start: blobid_mask.start + blobid_mask.len,
            len: md_len as u32,
        };
        let md_pages_total = md.start as u64 + md_len;
        let pages_per_cluster = cs / PAGE_SIZE as u64;
        let md_clusters = md_pages_total.div_ceil(pages_per_cluster);
        if md_clusters >= total_clusters {
            return Err(BlobError::InvalidParam(format!(
                "metadata takes {md_clusters} of the {total_clusters} clusters: give fewer md pages or larger clusters"
            )));
        }
        let mut bstype = [0u8; 16];
        bstype[..opts.bstype.len()].copy_from_slice(opts.bstype.as_bytes());
        let sb = SuperBlock {
            version: wire::VERSION,
            clean: false,
            super_blob: BLOBID_INVALID,
            cluster_size: opts.cluster_size,
            used_page_mask: page_mask,
            used_cluster_mask: cluster_mask,
            md,
            bstype,
            used_blobid_mask: blobid_mask,
            size,
            io_unit_size: block as u32,
            md_page_size: PAGE_SIZE as u32,
        };
        sb.check()?;
        let mut used_clusters = BitMask::new(total_clusters);
        for c in 0..md_clusters {
            used_clusters.set(c);
        }
        let store = Rc::new(Store {
            desc,
            ch,
            blocks_per_page: PAGE_SIZE as u64 / block,
            blocks_per_cluster: Cell::new(cs / block),
            st: RefCell::new(StoreState {
                sb,
                used_md_pages: BitMask::new(md_len),
                used_clusters,
                used_blobids: BitMask::new(md_len),
                open: HashMap::new(),
                md_clusters,
            }),
        });
        Ok((store, md_pages_total * PAGE_SIZE as u64 / block))
    }

    /// Loads the blobstore on bdev `bdev_name` (SPDK: `spdk_bs_load`):
    /// checks the super block; a clean store's masks are read, a store
    /// that was not unloaded cleanly gets them rebuilt from the metadata
    /// chains. The super block is then marked not clean until `unload`.
    pub fn load(bdev_name: &str, done: impl FnOnce(Result<Blobstore, BlobError>) + 'static) {
        let (desc, ch) = match open_bdev(bdev_name) {
            Ok(x) => x,
            Err(e) => return defer(move || done(Err(e))),
        };
        let block = desc.bdev().block_size() as u64;
        let dev_size = desc.bdev().num_blocks() * block;
        // The store starts as a shell that can read pages; the super block
        // fills it in.
        let placeholder = SuperBlock {
            version: wire::VERSION,
            clean: false,
            super_blob: BLOBID_INVALID,
            cluster_size: PAGE_SIZE as u32,
            used_page_mask: Region::default(),
            used_cluster_mask: Region::default(),
            md: Region::default(),
            bstype: [0; 16],
            used_blobid_mask: Region::default(),
            size: 0,
            io_unit_size: block as u32,
            md_page_size: PAGE_SIZE as u32,
        };
        let store = Rc::new(Store {
            desc,
            ch,
            blocks_per_page: PAGE_SIZE as u64 / block,
            blocks_per_cluster: Cell::new(1),
            st: RefCell::new(StoreState {
                sb: placeholder,
                used_md_pages: BitMask::new(0),
                used_clusters: BitMask::new(0),
                used_blobids: BitMask::new(0),
                open: HashMap::new(),
                md_clusters: 0,
            }),
        });
        let s = store.clone();
        store.read_pages(
            0,
            1,
            Box::new(move |r| {
                let sb = match r.and_then(|buf| Ok(SuperBlock::parse(&buf)?)) {
                    Ok(sb) => sb,
                    Err(e) => return done(Err(e)),
                };
                let corrupt = |why: String| BlobError::Corrupt {
                    id: BLOBID_INVALID,
                    why,
                };
                if sb.io_unit_size as u64 != block {
                    return done(Err(corrupt(format!(
                        "super block: io_unit_size {} differs from the bdev's {block}-byte blocks",
                        sb.io_unit_size
                    ))));
                }
                if sb.size > dev_size {
                    return done(Err(corrupt(format!(
                        "super block: size {} is more than the bdev's {dev_size} bytes",
                        sb.size
                    ))));
                }
                let total = sb.total_clusters();
                let md_len = sb.md.len as u64;
                let md_clusters = (sb.md.start as u64 + md_len)
                    .div_ceil(sb.cluster_size as u64 / PAGE_SIZE as u64);
                s.blocks_per_cluster.set(sb.cluster_size as u64 / block);
                let clean = sb.clean;
                *s.st.borrow_mut() = StoreState {
                    used_md_pages: BitMask::new(md_len),
                    used_clusters: BitMask::new(total),
                    used_blobids: BitMask::new(md_len),
                    open: HashMap::new(),
                    md_clusters,
                    sb,
                };
                let s2 = s.clone();
                let finish: Done<()> = Box::new(move |r| {
                    if let Err(e) = r {
                        return done(Err(e));
                    }
                    let s3 = s2.clone();
                    s2.write_super(false, Box::new(move |r| done(r.map(|()| Blobstore(s3)))));
                });
                if clean {
                    crate::recover::read_masks(s, finish);
                } else {
                    crate::recover::rebuild_masks(s, finish);
                }
            }),
        );
    }

    /// Unloads: writes the masks and marks the super block clean (SPDK:
    /// `spdk_bs_unload`). Refused while blobs are open.
    pub fn unload(self, done: impl FnOnce(Result<(), BlobError>) + 'static) {
        let open = self.0.st.borrow().open.len();
        if open > 0 {
            return defer(move || {
                done(Err(BlobError::Busy(format!("{open} blobs are still open"))))
            });
        }
        let s = self.0.clone();
        self.0.write_masks(Box::new(move |r| {
            if let Err(e) = r {
                return done(Err(e));
            }
            s.clone().write_super(true, Box::new(done));
        }));
    }

    /// The bdev's name.
    pub fn bdev_name(&self) -> String {
        self.0.desc.bdev().name().to_string()
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u32 {
        self.0.st.borrow().sb.cluster_size
    }

    /// The io unit (the bdev's block size) in bytes.
    pub fn io_unit_size(&self) -> u32 {
        self.0.st.borrow().sb.io_unit_size
    }

    /// The super block as it is in memory.
    pub fn super_block(&self) -> SuperBlock {
        self.0.st.borrow().sb.clone()
    }

    /// Clusters on the device.
    pub fn total_clusters(&self) -> u64 {
        self.0.st.borrow().used_clusters.len()
    }

    /// Clusters blobs can use (the total less the metadata's).
    pub fn total_data_clusters(&self) -> u64 {
        let st = self.0.st.borrow();
        st.used_clusters.len() - st.md_clusters
    }

    /// Free clusters.
    pub fn free_clusters(&self) -> u64 {
        let st = self.0.st.borrow();
        st.used_clusters.len() - st.used_clusters.count_ones()
    }

    /// Used metadata pages.
    pub fn used_md_pages(&self) -> u64 {
        self.0.st.borrow().used_md_pages.count_ones()
    }

    /// The blob ids in the store, in id order (SPDK: `spdk_bs_iter_first`/`_next`).
    pub fn blob_ids(&self) -> Vec<u64> {
        let st = self.0.st.borrow();
        st.used_blobids
            .iter_ones()
            .map(|p| wire::page_to_blobid(p as u32))
            .collect()
    }

    /// Creates a blob (SPDK: `spdk_bs_create_blob_ext`) and writes its
    /// metadata; `done` gets its id.
    pub fn create_blob(&self, opts: BlobOpts, done: impl FnOnce(Result<u64, BlobError>) + 'static) {
        let s = &self.0;
        for (n, v) in opts.xattrs.iter().chain(&opts.internal_xattrs) {
            if let Err(e) = check_xattr(n, v) {
                return defer(move || done(Err(e)));
            }
        }
        let page = match s.claim_md_page() {
            Some(p) => p,
            None => return defer(move || done(Err(BlobError::NoMdPages))),
        };
        s.st.borrow_mut().used_blobids.set(page as u64);
        let id = wire::page_to_blobid(page);
        let mut meta = BlobMeta::new(id, opts.thin_provision);
        meta.xattrs = opts.xattrs;
        meta.internal_xattrs = opts.internal_xattrs;
        let undo = |s: &Rc<Store>, meta: &BlobMeta| {
            let mut st = s.st.borrow_mut();
            st.used_blobids.clear(page as u64);
            st.used_md_pages.clear(page as u64);
            for &c in &meta.clusters {
                if c != 0 {
                    st.used_clusters.clear(c as u64);
                }
            }
        };
        if let Err(e) = crate::blob::grow_map(s, &mut meta, opts.num_clusters) {
            undo(s, &meta);
            return defer(move || done(Err(e)));
        }
        let pages = match meta.to_pages(|| s.claim_md_page()) {
            Ok(p) => p,
            Err(e) => {
                undo(s, &meta);
                return defer(move || done(Err(e)));
            }
        };
        let s2 = s.clone();
        // Tail pages first, then the first page: the blob exists once its
        // first page is on disk, complete.
        let mut pages = pages;
        let first = pages.remove(0);
        let tail_idx: Vec<u32> = pages.iter().map(|p| p.0).collect();
        s.write_md_pages(
            pages,
            Box::new(move |r| {
                if let Err(e) = r {
                    return done(Err(e));
                }
                let s3 = s2.clone();
                s2.write_md_pages(
                    vec![first],
                    Box::new(move |r| {
                        if r.is_err() {
                            let mut st = s3.st.borrow_mut();
                            for p in tail_idx {
                                st.used_md_pages.clear(p as u64);
                            }
                        }
                        done(r.map(|()| id))
                    }),
                );
            }),
        );
    }

    /// Opens a blob (SPDK: `spdk_bs_open_blob`); an open blob's handles
    /// share one state.
    pub fn open_blob(&self, id: u64, done: impl FnOnce(Result<crate::Blob, BlobError>) + 'static) {
        if let Some(b) = self.0.st.borrow().open.get(&id) {
            let blob = crate::blob::Blob::from_shared(b.clone());
            return defer(move || done(Ok(blob)));
        }
        let s = self.0.clone();
        self.0.load_meta(
            id,
            Box::new(move |r| match r {
                Ok(meta) => {
                    // Every cluster the blob names must be marked used: one
                    // that is not means the masks and the metadata disagree.
                    let unowned = {
                        let st = s.st.borrow();
                        meta.clusters
                            .iter()
                            .find(|&&c| c != 0 && !st.used_clusters.get(c as u64))
                            .copied()
                    };
                    if let Some(c) = unowned {
                        return done(Err(BlobError::Corrupt {
                            id,
                            why: format!("cluster {c} is not marked used in the cluster mask"),
                        }));
                    }
                    // A second open may have finished first.
                    let existing = s.st.borrow().open.get(&id).cloned();
                    let shared = existing.unwrap_or_else(|| {
                        let sh = crate::blob::BlobShared::new(s.clone(), meta);
                        s.st.borrow_mut().open.insert(id, sh.clone());
                        sh
                    });
                    done(Ok(crate::blob::Blob::from_shared(shared)))
                }
                Err(e) => done(Err(e)),
            }),
        );
    }

    /// Deletes a closed blob (SPDK: `spdk_bs_delete_blob`): zeroes its
    /// first md page, then frees its pages, clusters and id.
    pub fn delete_blob(&self, id: u64, done: impl FnOnce(Result<(), BlobError>) + 'static) {
        if self.0.st.borrow().open.contains_key(&id) {
            return defer(move || done(Err(BlobError::Busy(format!("blob {id:#x} is open")))));
        }
        let s = self.0.clone();
        self.0.load_meta(
            id,
            Box::new(move |r| {
                let meta = match r {
                    Ok(m) => m,
                    Err(e) => return done(Err(e)),
                };
                if meta.md_ro() {
                    return done(Err(BlobError::ReadOnly(id)));
                }
                let buf = match DmaBuf::zeroed(PAGE_SIZE) {
                    Ok(b) => b,
                    Err(e) => return done(Err(BlobError::NoMemory(e.to_string()))),
                };
                let s2 = s.clone();
                let abs = s.st.borrow().sb.md.start as u64 + wire::blobid_to_page(id) as u64;
                s.write_pages(
                    abs,
                    buf,
                    Box::new(move |r| {
                        if let Err(e) = r {
                            return done(Err(e));
                        }
                        let mut st = s2.st.borrow_mut();
                        for &p in meta.chain.iter().chain(&meta.extent_pages) {
                            st.used_md_pages.clear(p as u64);
                        }
                        for &c in &meta.clusters {
                            if c != 0 {
                                st.used_clusters.clear(c as u64);
                            }
                        }
                        st.used_blobids.clear(wire::blobid_to_page(id) as u64);
                        drop(st);
                        done(Ok(()))
                    }),
                );
            }),
        );
    }
}

/// Checks an xattr fits SPDK's descriptor.
pub(crate) fn check_xattr(name: &str, value: &[u8]) -> Result<(), BlobError> {
    if name.is_empty() || name.len() + value.len() > MAX_XATTR_LEN {
        return Err(BlobError::InvalidParam(format!(
            "xattr {name:?}: name ({} bytes, not empty) and value ({} bytes) must fit {MAX_XATTR_LEN} bytes",
            name.len(),
            value.len()
        )));
    }
    Ok(())
}
