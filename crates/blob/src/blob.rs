//! An open blob: metadata changes, their sync, and the data path.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use rspdk_bdev::{IoStatus, IoType, IoVec};
use rspdk_env::DmaBuf;

use crate::meta::BlobMeta;
use crate::store::{check_xattr, defer, Done, Store};
use crate::wire::invalid_flags;
use crate::BlobError;

/// An I/O waiting for a cluster's allocation: resumed with its outcome.
type Waiter = Box<dyn FnOnce(Result<(), BlobError>)>;

/// The state an open blob's handles share.
pub(crate) struct BlobShared {
    store: Rc<Store>,
    meta: RefCell<BlobMeta>,
    /// Handles open.
    refs: Cell<usize>,
    /// Bumped by every metadata change; a sync that wrote generation `g`
    /// leaves the blob clean only if nothing changed since.
    generation: Cell<u64>,
    synced_generation: Cell<u64>,
    /// A sync is being written.
    syncing: Cell<bool>,
    /// Callers waiting for the next sync.
    sync_queue: RefCell<Vec<Done<()>>>,
    /// Clusters released by a shrink, freed once the metadata that no
    /// longer names them is on disk.
    pending_free: RefCell<Vec<u32>>,
    /// Blob clusters being allocated (thin), with the I/O waiting on them.
    allocating: RefCell<HashMap<u64, Vec<Waiter>>>,
    /// The metadata was read-only when opened (unknown md_ro/data_ro flags,
    /// or set read-only before).
    md_ro_at_open: bool,
}

impl BlobShared {
    pub(crate) fn new(store: Rc<Store>, meta: BlobMeta) -> Rc<BlobShared> {
        let md_ro_at_open = meta.md_ro();
        Rc::new(BlobShared {
            store,
            meta: RefCell::new(meta),
            refs: Cell::new(0),
            generation: Cell::new(0),
            synced_generation: Cell::new(0),
            syncing: Cell::new(false),
            sync_queue: RefCell::new(Vec::new()),
            pending_free: RefCell::new(Vec::new()),
            allocating: RefCell::new(HashMap::new()),
            md_ro_at_open,
        })
    }

    fn touch(&self) {
        self.generation.set(self.generation.get() + 1);
    }

    fn sync(self: &Rc<Self>, done: Done<()>) {
        if self.md_ro_at_open {
            let id = self.meta.borrow().id;
            return defer(move || done(Err(BlobError::ReadOnly(id))));
        }
        self.sync_queue.borrow_mut().push(done);
        if !self.syncing.get() {
            self.start_sync();
        }
    }

    fn start_sync(self: &Rc<Self>) {
        let waiters: Vec<Done<()>> = std::mem::take(&mut *self.sync_queue.borrow_mut());
        if waiters.is_empty() {
            return;
        }
        self.syncing.set(true);
        let gen = self.generation.get();
        let freeing: Vec<u32> = std::mem::take(&mut *self.pending_free.borrow_mut());
        let meta = self.meta.borrow().clone();
        let store = self.store.clone();
        let mut claimed = Vec::new();
        let pages = meta.to_pages(|| {
            let p = store.claim_md_page();
            claimed.extend(p);
            p
        });
        let finish: Done<()> = {
            let me = self.clone();
            Box::new(move |r: Result<(), BlobError>| {
                me.syncing.set(false);
                for w in waiters {
                    w(r.clone());
                }
                if !me.sync_queue.borrow().is_empty() {
                    me.start_sync();
                }
            })
        };
        let mut pages = match pages {
            Ok(p) => p,
            Err(e) => {
                let mut st = self.store.st.borrow_mut();
                for p in claimed {
                    st.used_md_pages.clear(p as u64);
                }
                self.pending_free.borrow_mut().extend(freeing);
                return defer(move || finish(Err(e)));
            }
        };
        let new_chain: Vec<u32> = pages.iter().map(|p| p.0).collect();
        let first = pages.remove(0);
        let me = self.clone();
        // The tail first, then the first page: a crash leaves the old chain
        // or the new one, never a mix.
        self.store.write_md_pages(
            pages,
            Box::new(move |r| {
                let me2 = me.clone();
                if let Err(e) = r {
                    return sync_failed(&me, e, claimed, freeing, finish);
                }
                me.store.clone().write_md_pages(
                    vec![first],
                    Box::new(move |r| {
                        let me = me2;
                        if let Err(e) = r {
                            return sync_failed(&me, e, claimed, freeing, finish);
                        }
                        {
                            let mut m = me.meta.borrow_mut();
                            let mut st = me.store.st.borrow_mut();
                            for &p in m.chain.iter().skip(1).chain(&m.extent_pages) {
                                if !new_chain.contains(&p) {
                                    st.used_md_pages.clear(p as u64);
                                }
                            }
                            for c in &freeing {
                                st.used_clusters.clear(*c as u64);
                            }
                            m.chain = new_chain;
                            m.extent_pages.clear();
                            m.invalid_flags = m.written_invalid_flags();
                        }
                        if me.generation.get() == gen {
                            me.synced_generation.set(gen);
                        }
                        finish(Ok(()))
                    }),
                );
            }),
        );
    }
}

/// Undoes a failed sync's page claims and keeps its clusters to free.
fn sync_failed(
    me: &Rc<BlobShared>,
    e: BlobError,
    claimed: Vec<u32>,
    freeing: Vec<u32>,
    finish: Done<()>,
) {
    let mut st = me.store.st.borrow_mut();
    for p in claimed {
        st.used_md_pages.clear(p as u64);
    }
    drop(st);
    me.pending_free.borrow_mut().extend(freeing);
    finish(Err(e))
}

/// Grows or shrinks a blob's cluster map to `n` clusters: a thick blob
/// claims clusters as it grows. Shrinking returns the released clusters.
pub(crate) fn grow_map(store: &Store, meta: &mut BlobMeta, n: u64) -> Result<Vec<u32>, BlobError> {
    if n > crate::meta::MAX_BLOB_CLUSTERS {
        return Err(BlobError::InvalidParam(format!(
            "{n} clusters; a blob has at most {}",
            crate::meta::MAX_BLOB_CLUSTERS
        )));
    }
    let cur = meta.clusters.len() as u64;
    if n <= cur {
        let freed: Vec<u32> = meta
            .clusters
            .drain(n as usize..)
            .filter(|&c| c != 0)
            .collect();
        return Ok(freed);
    }
    if meta.thin() {
        meta.clusters.resize(n as usize, 0);
        return Ok(Vec::new());
    }
    let free = {
        let st = store.st.borrow();
        st.used_clusters.len() - st.used_clusters.count_ones()
    };
    if n - cur > free {
        return Err(BlobError::NoSpace {
            needed: n - cur,
            free,
        });
    }
    for _ in cur..n {
        let c = store
            .claim_cluster()
            .ok_or(BlobError::NoSpace { needed: 1, free: 0 })?;
        meta.clusters.push(c);
    }
    Ok(Vec::new())
}

/// A handle to an open blob (SPDK: `struct spdk_blob`). Metadata changes
/// are made in memory and written by [`Blob::sync_md`] (and by `close`).
pub struct Blob {
    sh: Rc<BlobShared>,
    closed: bool,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blob({:#x})", self.id())
    }
}

/// Completion of a data I/O: the status and the caller's buffer back.
pub type DataDone = Box<dyn FnOnce(Result<(), BlobError>, DmaBuf)>;

impl Blob {
    pub(crate) fn from_shared(sh: Rc<BlobShared>) -> Blob {
        sh.refs.set(sh.refs.get() + 1);
        Blob { sh, closed: false }
    }

    /// The blob's id.
    pub fn id(&self) -> u64 {
        self.sh.meta.borrow().id
    }

    /// Size in clusters.
    pub fn num_clusters(&self) -> u64 {
        self.sh.meta.borrow().clusters.len() as u64
    }

    /// Clusters allocated (a thin blob's written ones).
    pub fn num_allocated_clusters(&self) -> u64 {
        self.sh.meta.borrow().allocated_clusters() as u64
    }

    /// Size in io units.
    pub fn num_io_units(&self) -> u64 {
        self.num_clusters() * self.sh.store.blocks_per_cluster()
    }

    /// Thin provisioned.
    pub fn is_thin_provisioned(&self) -> bool {
        self.sh.meta.borrow().thin()
    }

    /// Read-only (data).
    pub fn is_read_only(&self) -> bool {
        self.sh.meta.borrow().data_ro()
    }

    /// A copy of its metadata (flags, xattrs, cluster map).
    pub fn meta(&self) -> BlobMeta {
        self.sh.meta.borrow().clone()
    }

    fn writable_md(&self) -> Result<(), BlobError> {
        if self.sh.md_ro_at_open || self.sh.meta.borrow().data_ro() {
            return Err(BlobError::ReadOnly(self.id()));
        }
        Ok(())
    }

    /// Resizes to `num_clusters` (SPDK: `spdk_blob_resize`); a thick blob
    /// claims its new clusters now. Persisted by the next sync.
    pub fn resize(&self, num_clusters: u64) -> Result<(), BlobError> {
        self.writable_md()?;
        if !self.sh.allocating.borrow().is_empty() {
            return Err(BlobError::Busy("clusters are being allocated".into()));
        }
        let freed = {
            let mut m = self.sh.meta.borrow_mut();
            grow_map(&self.sh.store, &mut m, num_clusters)?
        };
        self.sh.pending_free.borrow_mut().extend(freed);
        self.sh.touch();
        Ok(())
    }

    /// Writes the metadata (SPDK: `spdk_blob_sync_md`).
    pub fn sync_md(&self, done: impl FnOnce(Result<(), BlobError>) + 'static) {
        self.sh.sync(Box::new(done));
    }

    /// Marks the blob read-only (SPDK: `spdk_blob_set_read_only`); the flag
    /// is written by the next sync, after which the metadata is read-only too.
    pub fn set_read_only(&self) -> Result<(), BlobError> {
        if self.sh.md_ro_at_open {
            return Err(BlobError::ReadOnly(self.id()));
        }
        self.sh.meta.borrow_mut().data_ro_flags |= crate::wire::data_ro_flags::READ_ONLY;
        self.sh.touch();
        Ok(())
    }

    fn set_in(&self, internal: bool, name: &str, value: &[u8]) -> Result<(), BlobError> {
        if !internal {
            self.writable_md()?;
        } else if self.sh.md_ro_at_open {
            return Err(BlobError::ReadOnly(self.id()));
        }
        check_xattr(name, value)?;
        let mut m = self.sh.meta.borrow_mut();
        let list = if internal {
            &mut m.internal_xattrs
        } else {
            &mut m.xattrs
        };
        match list.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_vec(),
            None => list.push((name.to_string(), value.to_vec())),
        }
        if internal {
            m.invalid_flags |= invalid_flags::INTERNAL_XATTR;
        }
        drop(m);
        self.sh.touch();
        Ok(())
    }

    fn remove_in(&self, internal: bool, name: &str) -> Result<(), BlobError> {
        if !internal {
            self.writable_md()?;
        }
        let mut m = self.sh.meta.borrow_mut();
        let list = if internal {
            &mut m.internal_xattrs
        } else {
            &mut m.xattrs
        };
        let before = list.len();
        list.retain(|(n, _)| n != name);
        if list.len() == before {
            return Err(BlobError::NoXattr(name.to_string()));
        }
        drop(m);
        self.sh.touch();
        Ok(())
    }

    fn get_in(&self, internal: bool, name: &str) -> Option<Vec<u8>> {
        let m = self.sh.meta.borrow();
        let list = if internal {
            &m.internal_xattrs
        } else {
            &m.xattrs
        };
        list.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    /// Sets a user xattr (SPDK: `spdk_blob_set_xattr`).
    pub fn set_xattr(&self, name: &str, value: &[u8]) -> Result<(), BlobError> {
        self.set_in(false, name, value)
    }

    /// A user xattr's value.
    pub fn get_xattr(&self, name: &str) -> Option<Vec<u8>> {
        self.get_in(false, name)
    }

    /// Removes a user xattr.
    pub fn remove_xattr(&self, name: &str) -> Result<(), BlobError> {
        self.remove_in(false, name)
    }

    /// The user xattrs' names.
    pub fn xattr_names(&self) -> Vec<String> {
        self.sh
            .meta
            .borrow()
            .xattrs
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Sets an internal xattr (for the layers above: lvol, snapshots).
    pub fn set_internal_xattr(&self, name: &str, value: &[u8]) -> Result<(), BlobError> {
        self.set_in(true, name, value)
    }

    /// An internal xattr's value.
    pub fn get_internal_xattr(&self, name: &str) -> Option<Vec<u8>> {
        self.get_in(true, name)
    }

    /// Removes an internal xattr.
    pub fn remove_internal_xattr(&self, name: &str) -> Result<(), BlobError> {
        self.remove_in(true, name)
    }

    /// Closes this handle (SPDK: `spdk_blob_close`), syncing unsynced
    /// metadata first; the last handle's close forgets the blob.
    pub fn close(mut self, done: impl FnOnce(Result<(), BlobError>) + 'static) {
        self.closed = true;
        let sh = self.sh.clone();
        let release = move |sh: &Rc<BlobShared>| {
            sh.refs.set(sh.refs.get() - 1);
            if sh.refs.get() == 0 {
                let id = sh.meta.borrow().id;
                sh.store.st.borrow_mut().open.remove(&id);
            }
        };
        if sh.generation.get() != sh.synced_generation.get() && !sh.md_ro_at_open {
            let sh2 = sh.clone();
            sh.sync(Box::new(move |r| {
                release(&sh2);
                done(r)
            }));
        } else {
            release(&sh);
            defer(move || done(Ok(())));
        }
    }

    fn check_range(&self, offset: u64, units: u64) -> Result<(), BlobError> {
        let size = self.num_io_units();
        if units == 0 || offset.checked_add(units).is_none_or(|end| end > size) {
            return Err(BlobError::OutOfRange {
                offset,
                units,
                size,
            });
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes (whole io units) at io unit `offset` (SPDK:
    /// `spdk_blob_io_read`). Unallocated clusters of a thin blob read as
    /// zeroes without I/O. An I/O within one allocated cluster goes
    /// straight to the bdev.
    pub fn read(
        &self,
        buf: DmaBuf,
        offset: u64,
        done: impl FnOnce(Result<(), BlobError>, DmaBuf) + 'static,
    ) {
        self.data_io(IoType::Read, buf, offset, Box::new(done))
    }

    /// Writes `buf` (whole io units) at io unit `offset` (SPDK:
    /// `spdk_blob_io_write`). The first write to a thin cluster allocates
    /// it: claims it, zeroes it, persists the metadata, then writes; other
    /// I/O goes on meanwhile (I/O to that cluster waits for it).
    pub fn write(
        &self,
        buf: DmaBuf,
        offset: u64,
        done: impl FnOnce(Result<(), BlobError>, DmaBuf) + 'static,
    ) {
        self.data_io(IoType::Write, buf, offset, Box::new(done))
    }

    fn data_io(&self, t: IoType, buf: DmaBuf, offset: u64, done: DataDone) {
        let iou = self.sh.store.st.borrow().sb.io_unit_size as usize;
        if buf.len() % iou != 0 {
            let e = BlobError::InvalidParam(format!(
                "buffer of {} bytes is not whole {iou}-byte io units",
                buf.len()
            ));
            return defer(move || done(Err(e), buf));
        }
        let units = (buf.len() / iou) as u64;
        if let Err(e) = self.check_range(offset, units) {
            return defer(move || done(Err(e), buf));
        }
        if t == IoType::Write && self.is_read_only() {
            let e = BlobError::ReadOnly(self.id());
            return defer(move || done(Err(e), buf));
        }
        submit_data(self.sh.clone(), t, buf, offset, units, done);
    }

    /// Unmaps io units (SPDK: `spdk_blob_io_unmap`): passed to the bdev for
    /// allocated clusters; unallocated ones are skipped.
    pub fn unmap(
        &self,
        offset: u64,
        units: u64,
        done: impl FnOnce(Result<(), BlobError>) + 'static,
    ) {
        self.nodata(IoType::Unmap, offset, units, Box::new(done))
    }

    /// Writes zeroes (SPDK: `spdk_blob_io_write_zeroes`): on allocated
    /// clusters; unallocated ones of a thin blob already read zero.
    pub fn write_zeroes(
        &self,
        offset: u64,
        units: u64,
        done: impl FnOnce(Result<(), BlobError>) + 'static,
    ) {
        self.nodata(IoType::WriteZeroes, offset, units, Box::new(done))
    }

    fn nodata(&self, t: IoType, offset: u64, units: u64, done: Done<()>) {
        if let Err(e) = self.check_range(offset, units) {
            return defer(move || done(Err(e)));
        }
        if self.is_read_only() {
            let e = BlobError::ReadOnly(self.id());
            return defer(move || done(Err(e)));
        }
        let sh = &self.sh;
        let bpc = sh.store.blocks_per_cluster();
        let mut segs = Vec::new();
        let mut at = offset;
        while at < offset + units {
            let c = at / bpc;
            let n = (bpc - at % bpc).min(offset + units - at);
            let dev = sh.meta.borrow().clusters[c as usize];
            if dev != 0 {
                segs.push((sh.store.cluster_lba(dev) + at % bpc, n));
            }
            at += n;
        }
        join(segs.len(), done, |i, d| {
            let (lba, n) = segs[i];
            sh.store.nodata_io(t, lba, n, d)
        });
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        if !self.closed {
            // Dropped without close: forget the handle; unsynced changes
            // are lost, as when SPDK's app exits without closing.
            self.sh.refs.set(self.sh.refs.get() - 1);
            if self.sh.refs.get() == 0 {
                let id = self.sh.meta.borrow().id;
                self.sh.store.st.borrow_mut().open.remove(&id);
            }
        }
    }
}

/// Runs `n` parts, then `done` with the first error.
fn join(n: usize, done: Done<()>, mut part: impl FnMut(usize, Done<()>)) {
    if n == 0 {
        return defer(move || done(Ok(())));
    }
    let left = Rc::new(Cell::new(n));
    let err: Rc<RefCell<Option<BlobError>>> = Rc::default();
    let done = Rc::new(Cell::new(Some(done)));
    for i in 0..n {
        let (left, err, done) = (left.clone(), err.clone(), done.clone());
        part(
            i,
            Box::new(move |r| {
                if let Err(e) = r {
                    err.borrow_mut().get_or_insert(e);
                }
                left.set(left.get() - 1);
                if left.get() == 0 {
                    if let Some(d) = done.take() {
                        d(err.borrow_mut().take().map_or(Ok(()), Err))
                    }
                }
            }),
        );
    }
}

fn submit_data(
    sh: Rc<BlobShared>,
    t: IoType,
    mut buf: DmaBuf,
    offset: u64,
    units: u64,
    done: DataDone,
) {
    let store = sh.store.clone();
    let bpc = store.blocks_per_cluster();
    let first = offset / bpc;
    let last = (offset + units - 1) / bpc;
    // Wait for clusters being allocated; start allocating unallocated ones
    // this write touches.
    for c in first..=last {
        if sh.allocating.borrow().contains_key(&c) {
            let sh2 = sh.clone();
            if let Some(w) = sh.allocating.borrow_mut().get_mut(&c) {
                w.push(resume(sh2, t, buf, offset, units, done));
            }
            return;
        }
        if t == IoType::Write && sh.meta.borrow().clusters[c as usize] == 0 {
            let sh2 = sh.clone();
            allocate(&sh, c, resume(sh2, t, buf, offset, units, done));
            return;
        }
    }
    let iou = store.st.borrow().sb.io_unit_size as u64;
    if first == last {
        let dev = sh.meta.borrow().clusters[first as usize];
        if dev == 0 {
            // A thin blob's unallocated cluster reads as zeroes.
            buf.fill(0);
            return defer(move || done(Ok(()), buf));
        }
        let lba = store.cluster_lba(dev) + offset % bpc;
        // The caller's callback waits in a slot so that a refused
        // submission can hand it back with the buffer.
        let slot = Rc::new(Cell::new(Some(done)));
        let s2 = slot.clone();
        let keep = sh.clone();
        let cb = move |status: IoStatus, buf: DmaBuf| {
            let _keep = &keep;
            if let Some(done) = s2.take() {
                done(
                    if status.is_ok() {
                        Ok(())
                    } else {
                        Err(BlobError::Io {
                            what: "blob data I/O",
                            status,
                        })
                    },
                    buf,
                )
            }
        };
        let r = if t == IoType::Read {
            store.channel().read(store.desc(), buf, lba, cb)
        } else {
            store.channel().write(store.desc(), buf, lba, cb)
        };
        match r {
            Ok(()) => {}
            Err((rspdk_bdev::BdevError::NoMemory, buf)) => {
                let sh2 = sh.clone();
                store.channel().queue_io_wait(move || {
                    if let Some(done) = slot.take() {
                        submit_data(sh2, t, buf, offset, units, done)
                    }
                });
            }
            Err((e, buf)) => {
                if let Some(done) = slot.take() {
                    defer(move || done(Err(BlobError::Bdev(e.to_string())), buf));
                }
            }
        }
        return;
    }
    // Across clusters: one bdev I/O per cluster, into the one buffer.
    let mut segs: Vec<(Option<u64>, usize, usize)> = Vec::new();
    let mut at = offset;
    while at < offset + units {
        let c = at / bpc;
        let n = (bpc - at % bpc).min(offset + units - at);
        let dev = sh.meta.borrow().clusters[c as usize];
        let boff = ((at - offset) * iou) as usize;
        let len = (n * iou) as usize;
        if dev == 0 {
            buf[boff..boff + len].fill(0);
            segs.push((None, boff, len));
        } else {
            segs.push((Some(store.cluster_lba(dev) + at % bpc), boff, len));
        }
        at += n;
    }
    let base = buf.as_mut_ptr();
    let holder = Rc::new(RefCell::new(Some((buf, done))));
    let h2 = holder.clone();
    let io: Vec<(u64, usize, usize)> = segs
        .into_iter()
        .filter_map(|(lba, o, l)| lba.map(|lba| (lba, o, l)))
        .collect();
    join(
        io.len(),
        Box::new(move |r| {
            if let Some((buf, done)) = h2.borrow_mut().take() {
                done(r, buf)
            }
        }),
        |i, d| {
            let (lba, o, len) = io[i];
            let bs = iou as usize;
            // SAFETY: `base + o .. + len` lies inside the caller's buffer,
            // which `holder` keeps alive (and unmoved: a DmaBuf's memory
            // never moves) until every part completes; the parts cover
            // disjoint ranges and nothing reads the buffer meanwhile.
            let iov = [IoVec::new(unsafe { base.add(o) }, len)];
            let slot = Rc::new(Cell::new(Some(d)));
            let s2 = slot.clone();
            let keep = sh.clone();
            let cb = move |status: IoStatus| {
                let _keep = &keep;
                if let Some(d) = s2.take() {
                    d(if status.is_ok() {
                        Ok(())
                    } else {
                        Err(BlobError::Io {
                            what: "blob data I/O",
                            status,
                        })
                    })
                }
            };
            // SAFETY: as above: the buffer outlives the I/O.
            let r = unsafe {
                if t == IoType::Read {
                    store
                        .channel()
                        .readv(store.desc(), &iov, lba, (len / bs) as u64, cb)
                } else {
                    store
                        .channel()
                        .writev(store.desc(), &iov, lba, (len / bs) as u64, cb)
                }
            };
            if let Err(e) = r {
                if let Some(d) = slot.take() {
                    defer(move || d(Err(BlobError::Bdev(e.to_string()))));
                }
            }
        },
    );
    drop(holder);
}

/// A waiter that re-runs a data I/O once its cluster is allocated, or
/// fails it with the allocation's error.
fn resume(
    sh: Rc<BlobShared>,
    t: IoType,
    buf: DmaBuf,
    offset: u64,
    units: u64,
    done: DataDone,
) -> Waiter {
    Box::new(move |r| match r {
        Ok(()) => submit_data(sh, t, buf, offset, units, done),
        Err(e) => done(Err(e), buf),
    })
}

/// Allocates blob cluster `c` of a thin blob: claims a device cluster,
/// zeroes it, records it in the map and persists the metadata; then
/// resumes the I/O that waited on the cluster (`first` among them).
fn allocate(sh: &Rc<BlobShared>, c: u64, first: Waiter) {
    sh.allocating.borrow_mut().insert(c, vec![first]);
    let wake = {
        let sh = sh.clone();
        move |r: Result<(), BlobError>| {
            let waiters = sh.allocating.borrow_mut().remove(&c).unwrap_or_default();
            for w in waiters {
                w(r.clone());
            }
        }
    };
    let Some(dev) = sh.store.claim_cluster() else {
        return defer(move || wake(Err(BlobError::NoSpace { needed: 1, free: 0 })));
    };
    let store = sh.store.clone();
    let bpc = store.blocks_per_cluster();
    let lba = store.cluster_lba(dev);
    let sh2 = sh.clone();
    let zero_done: Done<()> = Box::new(move |r| {
        if let Err(e) = r {
            sh2.store.st.borrow_mut().used_clusters.clear(dev as u64);
            return wake(Err(e));
        }
        sh2.meta.borrow_mut().clusters[c as usize] = dev;
        sh2.touch();
        let sh3 = sh2.clone();
        sh2.sync(Box::new(move |r| {
            if r.is_err() {
                sh3.meta.borrow_mut().clusters[c as usize] = 0;
                sh3.store.st.borrow_mut().used_clusters.clear(dev as u64);
            }
            wake(r)
        }));
    });
    if store.desc().bdev().io_type_supported(IoType::WriteZeroes) {
        store.nodata_io(IoType::WriteZeroes, lba, bpc, zero_done);
    } else {
        let bytes = (bpc * store.st.borrow().sb.io_unit_size as u64) as usize;
        match DmaBuf::zeroed(bytes) {
            Ok(b) => store.buf_io(
                IoType::Write,
                lba,
                b,
                Box::new(|r| zero_done(r.map(|_| ()))),
            ),
            Err(e) => zero_done(Err(BlobError::NoMemory(e.to_string()))),
        }
    }
}
