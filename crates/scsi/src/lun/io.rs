//! The SBC data commands (SPDK: lib/scsi/scsi_bdev.c's read/write path):
//! READ, WRITE, VERIFY, SYNCHRONIZE CACHE, UNMAP, WRITE SAME, COMPARE AND
//! WRITE, WRITE ATOMIC, ORWRITE, as bdev I/O (chained for multi-step ones),
//! with no heap allocation per I/O in steady state (slots from a per-thread
//! free list).

use super::*;

pub(super) fn io_result(st: IoStatus, io_type: IoType, data: DataBuf) -> ScsiResult {
    match st {
        IoStatus::Success => good(data),
        IoStatus::MediumError | IoStatus::Failed | IoStatus::Nvme { .. } => {
            if io_type == IoType::Read || io_type == IoType::Compare {
                check(Sense::UNRECOVERED_READ)
            } else {
                check(Sense::WRITE_ERROR)
            }
        }
        IoStatus::Miscompare { offset } => {
            check(Sense::MISCOMPARE.with_info(u32::try_from(offset).unwrap_or(u32::MAX)))
        }
        IoStatus::Aborted => check(Sense::ABORTED),
        IoStatus::Removed => check(Sense::LUN_NOT_SUPPORTED),
    }
}

/// State shared by a submission and its callback, taken back on failure.
type Slot<T> = Rc<RefCell<Option<T>>>;

/// What a data I/O keeps while it runs: its completion and its buffers.
type IoSlotInner = Slot<(Done, DataBuf, DataBuf)>;

thread_local! {
    /// Free data-I/O slots of this thread, reused across I/Os.
    static IO_SLOTS: RefCell<Vec<IoSlotInner>> = const { RefCell::new(Vec::new()) };
}

/// Free list of data-I/O slots (per thread; grows on demand, keeps at most
/// [`IoSlot::MAX_FREE`]).
pub(super) struct IoSlot;

impl IoSlot {
    const MAX_FREE: usize = 1024;

    /// An empty slot, from the free list when one is there.
    fn take() -> IoSlotInner {
        IO_SLOTS
            .try_with(|l| l.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| Rc::new(RefCell::new(None)))
    }

    /// Puts an emptied slot back on the free list.
    fn give(s: IoSlotInner) {
        let _ = IO_SLOTS.try_with(|l| {
            let mut l = l.borrow_mut();
            if l.len() < Self::MAX_FREE {
                l.push(s);
            }
        });
    }
}

/// One step of a multi-I/O command.
pub(super) enum Op {
    NoData(IoType, u64, u64),
    /// Write a shared (read-only) pattern buffer.
    Write(Rc<Vec<u8>>, u64, u64),
}

pub(super) fn range_ok(desc: &BdevDesc, lba: u64, n: u64) -> Result<(), ScsiResult> {
    let nb = desc.bdev().num_blocks();
    match lba.checked_add(n) {
        Some(end) if end <= nb && lba < nb.max(1) && (lba < nb || n == 0) => Ok(()),
        _ => Err(check(Sense::LBA_OUT_OF_RANGE)),
    }
}

impl ScsiLun {
    pub(super) fn read(self: &Arc<Self>, cdb: &Cdb, desc: &Arc<BdevDesc>, done: Done) {
        let Some((lba, n)) = cdb.lba_len() else {
            return done.call(check(Sense::INVALID_OPCODE));
        };
        if cdb.bytes().len() > 6 && cdb.u8(1) & 0xe0 != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB)); // RDPROTECT without protection
        }
        if let Err(r) = range_ok(desc, lba, u64::from(n)) {
            return done.call(r);
        }
        if n == 0 {
            return done.call(good(Vec::new()));
        }
        let bs = u64::from(desc.bdev().block_size());
        if u64::from(n) * bs > MAX_TRANSFER_BYTES {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let len = (u64::from(n) * bs) as usize;
        let read = move |me: &Arc<Self>, desc: &Arc<BdevDesc>, buf, done: Done| match buf {
            Ok(buf) => me.data_io(
                desc,
                IoType::Read,
                buf,
                DataBuf::empty(),
                lba,
                u64::from(n),
                done,
                None,
            ),
            Err(e) => done.call(no_dma(&e)),
        };
        match DataBuf::dma_now(len) {
            Some(buf) => read(self, desc, buf, done),
            None => {
                // iobuf is exhausted: wait for a buffer (only then are the
                // LUN and descriptor references cloned into the waiter).
                let (me, desc) = (self.clone(), desc.clone());
                DataBuf::dma_then(len, move |buf| read(&me, &desc, buf, done));
            }
        }
    }

    pub(super) fn write(
        self: &Arc<Self>,
        cdb: &Cdb,
        desc: &Arc<BdevDesc>,
        data: &[u8],
        done: Done,
    ) {
        let Some((lba, n)) = cdb.lba_len() else {
            return done.call(check(Sense::INVALID_OPCODE));
        };
        if cdb.bytes().len() > 6 && cdb.u8(1) & 0xe0 != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB)); // WRPROTECT without protection
        }
        if let Err(r) = range_ok(desc, lba, u64::from(n)) {
            return done.call(r);
        }
        if n == 0 {
            return done.call(good(Vec::new()));
        }
        let bs = u64::from(desc.bdev().block_size());
        let len = u64::from(n) * bs;
        if len > MAX_TRANSFER_BYTES {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        // Write what the initiator sent, in whole blocks, at most the CDB's
        // transfer length; the transport reports the residual.
        let blocks = (data.len() as u64 / bs).min(u64::from(n));
        if blocks == 0 {
            let mut r = good(Vec::new());
            r.data_out_len = Some(len);
            return done.call(r);
        }
        let src = &data[..(blocks * bs) as usize];
        let write = move |me: &Arc<Self>, desc: &Arc<BdevDesc>, buf: DataBuf, done: Done| {
            me.data_io(
                desc,
                IoType::Write,
                buf,
                DataBuf::empty(),
                lba,
                blocks,
                done,
                Some(len),
            )
        };
        // The initiator's data is borrowed for this call only: copy it into
        // DMA memory now, or (iobuf exhausted) keep a heap copy until a
        // buffer is free (only then are the LUN and descriptor references
        // cloned into the waiter).
        match DataBuf::dma_now(src.len()) {
            Some(Ok(mut buf)) => {
                buf.copy_from_slice(src);
                write(self, desc, buf, done)
            }
            Some(Err(e)) => done.call(no_dma(&e)),
            None => {
                let held = bufpool::copy_of(src);
                let (me, desc) = (self.clone(), desc.clone());
                DataBuf::dma_then(held.len(), move |buf| match buf {
                    Ok(mut buf) => {
                        buf.copy_from_slice(&held);
                        bufpool::put(held);
                        write(&me, &desc, buf, done)
                    }
                    Err(e) => {
                        bufpool::put(held);
                        done.call(no_dma(&e))
                    }
                });
            }
        }
    }

    pub(super) fn verify(
        self: &Arc<Self>,
        cdb: &Cdb,
        desc: &Arc<BdevDesc>,
        data: &[u8],
        done: Done,
    ) {
        let (lba, n) = match cdb.opcode() {
            0x2f => (u64::from(cdb.u32(2)), u64::from(cdb.u16(7))),
            0xaf => (u64::from(cdb.u32(2)), u64::from(cdb.u32(6))),
            _ => (cdb.u64(2), u64::from(cdb.u32(10))),
        };
        if cdb.u8(1) & 0xe0 != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let bytchk = (cdb.u8(1) >> 1) & 3;
        if let Err(r) = range_ok(desc, lba, n) {
            return done.call(r);
        }
        if n == 0 {
            return done.call(good(Vec::new()));
        }
        let bs = u64::from(desc.bdev().block_size());
        if n * bs > MAX_TRANSFER_BYTES {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        match bytchk {
            0 => {
                // Medium verification: read it.
                let buf = vec![0u8; (n * bs) as usize];
                self.data_io(
                    desc,
                    IoType::Read,
                    buf.into(),
                    DataBuf::empty(),
                    lba,
                    n,
                    Callback::new(|mut r: ScsiResult| {
                        r.data.clear();
                        done.call(r)
                    }),
                    None,
                )
            }
            1 => {
                let mut buf = data.to_vec();
                buf.resize((n * bs) as usize, 0);
                self.data_io(
                    desc,
                    IoType::Compare,
                    buf.into(),
                    DataBuf::empty(),
                    lba,
                    n,
                    done,
                    None,
                )
            }
            _ => done.call(check(Sense::INVALID_FIELD_IN_CDB)),
        }
    }

    pub(super) fn sync_cache(self: &Arc<Self>, cdb: &Cdb, desc: &Arc<BdevDesc>, done: Done) {
        let (lba, n) = if cdb.opcode() == 0x35 {
            (u64::from(cdb.u32(2)), u64::from(cdb.u16(7)))
        } else {
            (cdb.u64(2), u64::from(cdb.u32(10)))
        };
        if let Err(r) = range_ok(desc, lba, n) {
            return done.call(r);
        }
        let nb = desc.bdev().num_blocks();
        let n = if n == 0 { nb - lba } else { n };
        if !desc.bdev().io_type_supported(IoType::Flush) || n == 0 {
            return done.call(good(Vec::new()));
        }
        self.chain(desc.clone(), vec![Op::NoData(IoType::Flush, lba, n)], done);
    }

    pub(super) fn unmap(
        self: &Arc<Self>,
        cdb: &Cdb,
        desc: &Arc<BdevDesc>,
        data: &[u8],
        done: Done,
    ) {
        if cdb.u8(1) & 1 != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB)); // ANCHOR
        }
        let plen = usize::from(cdb.u16(7));
        if plen == 0 {
            return done.call(good(Vec::new()));
        }
        if plen < 8 || data.len() < plen.min(8) {
            return done.call(check(Sense::PARAM_LIST_LENGTH));
        }
        let data = &data[..plen.min(data.len())];
        let bdl = usize::from(u16::from_be_bytes([data[2], data[3]]));
        let descs = &data[8..(8 + bdl).min(data.len())];
        if descs.len() / 16 > MAX_UNMAP_DESCRIPTORS as usize {
            return done.call(check(Sense::INVALID_FIELD_IN_PARAM));
        }
        let mut ops = Vec::new();
        for d in descs.chunks_exact(16) {
            let lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or([0; 8]));
            let n = u64::from(u32::from_be_bytes(d[8..12].try_into().unwrap_or([0; 4])));
            if n > u64::from(MAX_UNMAP_BLOCKS) {
                return done.call(check(Sense::INVALID_FIELD_IN_PARAM));
            }
            if n == 0 {
                if lba > desc.bdev().num_blocks() {
                    return done.call(check(Sense::LBA_OUT_OF_RANGE));
                }
                continue;
            }
            if let Err(r) = range_ok(desc, lba, n) {
                return done.call(r);
            }
            ops.push(Op::NoData(IoType::Unmap, lba, n));
        }
        if !self.thin(desc) {
            return done.call(check(Sense::INVALID_OPCODE));
        }
        self.chain(desc.clone(), ops, done);
    }

    pub(super) fn write_same(
        self: &Arc<Self>,
        cdb: &Cdb,
        desc: &Arc<BdevDesc>,
        data: &[u8],
        done: Done,
    ) {
        let ten = cdb.opcode() == 0x41;
        let flags = cdb.u8(1);
        let (lba, n) = if ten {
            (u64::from(cdb.u32(2)), u64::from(cdb.u16(7)))
        } else {
            (cdb.u64(2), u64::from(cdb.u32(10)))
        };
        let unmap = flags & 0x08 != 0;
        let ndob = !ten && flags & 0x01 != 0;
        if flags & 0xe0 != 0 || flags & 0x10 != 0 || (ten && flags & 0x01 != 0) {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB)); // WRPROTECT, ANCHOR, obsolete bit
        }
        let nb = desc.bdev().num_blocks();
        if n == 0 {
            // To the end of the medium (WSNZ is 0).
            if lba > nb {
                return done.call(check(Sense::LBA_OUT_OF_RANGE));
            }
            if lba == nb {
                return done.call(good(Vec::new()));
            }
        }
        let n = if n == 0 { nb - lba } else { n };
        if let Err(r) = range_ok(desc, lba, n) {
            return done.call(r);
        }
        let bs = desc.bdev().block_size() as usize;
        if !ndob && data.len() != bs {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let block: Vec<u8> = if ndob {
            vec![0u8; bs]
        } else {
            let mut b = data.get(..bs).unwrap_or(data).to_vec();
            b.resize(bs, 0);
            b
        };
        let zero = block.iter().all(|&b| b == 0);
        let mut ops = Vec::new();
        if unmap && self.thin(desc) {
            // UNMAP set: deallocate (the data-out block is not written).
            ops.push(Op::NoData(IoType::Unmap, lba, n));
        } else if zero && desc.bdev().io_type_supported(IoType::WriteZeroes) {
            ops.push(Op::NoData(IoType::WriteZeroes, lba, n));
        } else {
            let chunk = (1u64 << 20) / bs as u64;
            let chunk = chunk.min(n).max(1);
            let mut pat = Vec::with_capacity(chunk as usize * bs);
            for _ in 0..chunk {
                pat.extend_from_slice(&block);
            }
            let pat = Rc::new(pat);
            let mut off = 0;
            while off < n {
                let m = chunk.min(n - off);
                ops.push(Op::Write(pat.clone(), lba + off, m));
                off += m;
            }
        }
        self.chain(desc.clone(), ops, done);
    }

    pub(super) fn compare_and_write(
        self: &Arc<Self>,
        cdb: &Cdb,
        desc: &Arc<BdevDesc>,
        data: &[u8],
        done: Done,
    ) {
        let lba = cdb.u64(2);
        let n = u64::from(cdb.u8(13));
        if cdb.u8(1) & 0xe0 != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        if n == 0 {
            // No blocks but data sent (a 256-block request wraps to 0).
            return done.call(if data.is_empty() {
                good(Vec::new())
            } else {
                check(Sense::INVALID_FIELD_IN_CDB)
            });
        }
        if n > u64::from(MAX_CAW_BLOCKS) {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        if let Err(r) = range_ok(desc, lba, n) {
            return done.call(r);
        }
        let len = (n * u64::from(desc.bdev().block_size())) as usize;
        if data.len() != 2 * len {
            // The Data-Out must hold exactly the verify and write data.
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let mut cmp = data.get(..len).unwrap_or(&[]).to_vec();
        cmp.resize(len, 0);
        let mut wr = data.get(len..).unwrap_or(&[]).to_vec();
        wr.truncate(len);
        wr.resize(len, 0);
        if desc.bdev().io_type_supported(IoType::CompareAndWrite) {
            self.data_io(
                desc,
                IoType::CompareAndWrite,
                wr.into(),
                cmp.into(),
                lba,
                n,
                done,
                None,
            );
        } else {
            let me = self.clone();
            let d2 = desc.clone();
            self.data_io(
                desc,
                IoType::Compare,
                cmp.into(),
                DataBuf::empty(),
                lba,
                n,
                Callback::new(move |r: ScsiResult| {
                    if r.status != status::GOOD {
                        return done.call(r);
                    }
                    me.data_io(
                        &d2,
                        IoType::Write,
                        wr.into(),
                        DataBuf::empty(),
                        lba,
                        n,
                        done,
                        None,
                    );
                }),
                None,
            );
        }
    }

    pub(super) fn write_atomic(
        self: &Arc<Self>,
        cdb: &Cdb,
        desc: &Arc<BdevDesc>,
        data: &[u8],
        done: Done,
    ) {
        let lba = cdb.u64(2);
        let boundary = cdb.u16(10);
        let n = u64::from(cdb.u16(12));
        if cdb.u8(1) & 0xe0 != 0 || boundary != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let bs = u64::from(desc.bdev().block_size());
        if n * bs > MAX_TRANSFER_BYTES {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        if let Err(r) = range_ok(desc, lba, n) {
            return done.call(r);
        }
        if n == 0 {
            return done.call(good(Vec::new()));
        }
        let len = n * bs;
        if (data.len() as u64) < len {
            // Atomic: all or nothing.
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let buf = data[..len as usize].to_vec();
        self.data_io(
            desc,
            IoType::Write,
            buf.into(),
            DataBuf::empty(),
            lba,
            n,
            done,
            None,
        );
    }

    pub(super) fn or_write(
        self: &Arc<Self>,
        cdb: &Cdb,
        desc: &Arc<BdevDesc>,
        data: &[u8],
        done: Done,
    ) {
        let lba = cdb.u64(2);
        let n = u64::from(cdb.u32(10));
        if cdb.u8(1) & 0xe0 != 0 {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB)); // ORPROTECT
        }
        if let Err(r) = range_ok(desc, lba, n) {
            return done.call(r);
        }
        if n == 0 {
            return done.call(good(Vec::new()));
        }
        let bs = u64::from(desc.bdev().block_size());
        let len = n * bs;
        if len > MAX_TRANSFER_BYTES {
            return done.call(check(Sense::INVALID_FIELD_IN_CDB));
        }
        let mut mask = data.get(..len as usize).unwrap_or(data).to_vec();
        mask.resize(len as usize, 0);
        let me = self.clone();
        let d2 = desc.clone();
        self.data_io(
            desc,
            IoType::Read,
            vec![0u8; len as usize].into(),
            DataBuf::empty(),
            lba,
            n,
            Callback::new(move |r: ScsiResult| {
                if r.status != status::GOOD {
                    return done.call(r);
                }
                let mut cur = r.data;
                for (c, m) in cur.iter_mut().zip(mask.iter()) {
                    *c |= *m;
                }
                me.data_io(
                    &d2,
                    IoType::Write,
                    cur,
                    DataBuf::empty(),
                    lba,
                    n,
                    done,
                    None,
                );
            }),
            None,
        );
    }

    /// Submits one data I/O with owned buffers; `done` gets the data of a
    /// read, nothing otherwise, and `data_out_len` in
    /// [`ScsiResult::data_out_len`]. The buffers of a write go back to
    /// [`bufpool`]; a read's travels on in the result (the transport gives
    /// it back once sent).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn data_io(
        self: &Arc<Self>,
        desc: &Arc<BdevDesc>,
        io_type: IoType,
        mut buf: DataBuf,
        mut cmp: DataBuf,
        lba: u64,
        n: u64,
        done: Done,
        data_out_len: Option<u64>,
    ) {
        let finish = move |done: Done, mut r: ScsiResult| {
            if data_out_len.is_some() {
                r.data_out_len = data_out_len;
            }
            done.call(r)
        };
        let ch = match self.channel(desc) {
            Ok(c) => c,
            Err(e) => return finish(done, bdev_err(&e)),
        };
        let iov = [IoVec::new(buf.as_mut_ptr(), buf.len())];
        let cmp_iov = [IoVec::new(cmp.as_mut_ptr(), cmp.len())];
        let cmp_iovs: &[IoVec] = if cmp.is_empty() { &[] } else { &cmp_iov };
        // The slot is reused from this thread's free list: no allocation
        // per I/O in steady state.
        let slot = IoSlot::take();
        *slot.borrow_mut() = Some((done, buf, cmp));
        let s2 = slot.clone();
        // SAFETY: the buffers are owned by `slot` and neither moved nor
        // touched (moving a Vec keeps its heap allocation) until the
        // callback runs, or the submission fails and drops it unrun.
        let r = unsafe {
            ch.submit(desc, io_type, &iov, cmp_iovs, lba, n, move |st| {
                let taken = s2.borrow_mut().take();
                IoSlot::give(s2);
                if let Some((done, buf, cmp)) = taken {
                    drop(cmp);
                    let data = if io_type == IoType::Read {
                        buf
                    } else {
                        DataBuf::empty()
                    };
                    finish(done, io_result(st, io_type, data));
                }
            })
        };
        if let Err(e) = r {
            let taken = slot.borrow_mut().take();
            if let Some((done, buf, cmp)) = taken {
                drop((buf, cmp));
                finish(done, bdev_err(&e));
            }
        }
    }

    /// Runs `ops` one after the other; stops at the first failure.
    pub(super) fn chain(self: &Arc<Self>, desc: Arc<BdevDesc>, mut ops: Vec<Op>, done: Done) {
        ops.reverse();
        self.chain_next(desc, ops, done);
    }

    pub(super) fn chain_next(self: &Arc<Self>, desc: Arc<BdevDesc>, mut ops: Vec<Op>, done: Done) {
        let Some(op) = ops.pop() else {
            return done.call(good(Vec::new()));
        };
        let ch = match self.channel(&desc) {
            Ok(c) => c,
            Err(e) => return done.call(bdev_err(&e)),
        };
        let me = self.clone();
        let d2 = desc.clone();
        let slot: Slot<(Done, Vec<Op>)> = Rc::new(RefCell::new(Some((done, ops))));
        let s2 = slot.clone();
        let (io_type, keep) = match &op {
            Op::NoData(t, ..) => (*t, None),
            Op::Write(p, ..) => (IoType::Write, Some(p.clone())),
        };
        let cb = move |st: IoStatus| {
            drop(keep);
            if let Some((done, ops)) = s2.borrow_mut().take() {
                if st.is_ok() {
                    me.chain_next(d2, ops, done);
                } else {
                    done.call(io_result(st, io_type, DataBuf::empty()));
                }
            }
        };
        let r = match op {
            Op::NoData(t, lba, n) => ch.submit_nodata(&desc, t, lba, n, cb),
            Op::Write(p, lba, n) => {
                let iov = [IoVec::new(p.as_ptr() as *mut u8, p.len())];
                // SAFETY: the pattern is kept alive by the callback's `keep`
                // clone and is only read by a write I/O.
                unsafe { ch.writev(&desc, &iov, lba, n, cb) }
            }
        };
        if let Err(e) = r {
            let taken = slot.borrow_mut().take();
            if let Some((done, _)) = taken {
                done.call(bdev_err(&e));
            }
        }
    }
}
