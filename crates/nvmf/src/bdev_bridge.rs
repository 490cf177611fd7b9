//! The bdev bridge (SPDK: `lib/nvmf/ctrlr_bdev.c`): NVM commands the
//! connection core hands out ([`Request`]) become bdev I/O on the poll
//! group's channels, and bdev completions go back to the core as NVMe
//! statuses. Each connection keeps a channel per namespace it sees,
//! refreshed when its subsystem's namespaces change.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rspdk_bdev::{BdevDesc, BdevError, BdevIoChannel, IoStatus, IoType, IoVec};
use rspdk_nvme::spec::status::{generic, media, Status};
use rspdk_nvme::spec::{dsm, DsmRange, IoOpcode};

use crate::conn::{Conn, Request};
use crate::target::lock;
use crate::tcp::poll_group::{IobufBufs, TcpConn};

/// A connection's core, as the target runs it.
type Core = Conn<IobufBufs>;

/// A namespace's bdev channel on this connection's poll group.
struct NsChan {
    nsid: u32,
    desc: Arc<BdevDesc>,
    ch: BdevIoChannel,
    block_size: u64,
}

/// One connection's namespace channels.
pub(crate) struct BdevBridge {
    ns: Vec<NsChan>,
    ns_gen: u64,
    /// A namespace had no bdev channel at the last refresh: retry.
    ns_missing: bool,
}

impl BdevBridge {
    pub(crate) fn new() -> BdevBridge {
        BdevBridge {
            ns: Vec::new(),
            ns_gen: u64::MAX,
            ns_missing: false,
        }
    }

    /// Drops the channels (the connection closed).
    pub(crate) fn clear(&mut self) {
        self.ns.clear();
    }

    /// Runs one request of the core.
    pub(crate) fn run(&mut self, core: &mut Core, this: &Rc<TcpConn>, r: Request) {
        match r {
            Request::Io { slot } => self.io(core, this, slot),
            Request::CompareAndWrite { first, second } => {
                self.compare_and_write(core, this, first, second)
            }
        }
    }

    /// Refreshes the namespace channels when the subsystem changed, or
    /// while a namespace's bdev could not give a channel (e.g. an NVMe bdev
    /// whose controller is reconnecting): `Err(())` for a namespace that
    /// exists without a channel yet, `Ok(None)` for no such namespace.
    fn ns_chan(&mut self, core: &Core, nsid: u32) -> Result<Option<usize>, ()> {
        let Some(ctrlr) = core.controller() else {
            // The connection closed in the batch that queued this command
            // (a Disconnect or a fatal PDU after it): the command runs on
            // the channels it would have had, as it did when commands were
            // submitted while their batch was being parsed.
            return Ok(self.ns.iter().position(|n| n.nsid == nsid));
        };
        let g = ctrlr.subsys.ns_generation.load(Ordering::Acquire);
        if g != self.ns_gen || self.ns_missing {
            self.ns.clear();
            self.ns_missing = false;
            let host = ctrlr.hostnqn.as_str();
            for (id, ns) in lock(&ctrlr.subsys.namespaces)
                .iter()
                .filter(|(_, ns)| ns.visible_to(host))
            {
                match ns.desc.get_io_channel() {
                    Ok(ch) => self.ns.push(NsChan {
                        nsid: *id,
                        desc: ns.desc.clone(),
                        ch,
                        block_size: ns.desc.bdev().block_size() as u64,
                    }),
                    Err(e) => {
                        self.ns_missing = true;
                        if *id == nsid {
                            tracing::warn!(nsid = id, error = %e, "nvmf: no bdev channel (Namespace Not Ready)");
                        }
                    }
                }
            }
            self.ns_gen = g;
        }
        match self.ns.iter().position(|n| n.nsid == nsid) {
            Some(i) => Ok(Some(i)),
            None if self.ns_missing
                && lock(&ctrlr.subsys.namespaces)
                    .get(&nsid)
                    .is_some_and(|ns| ns.visible_to(&ctrlr.hostnqn)) =>
            {
                Err(())
            }
            None => Ok(None),
        }
    }

    /// Submits request `slot`'s NVM command as bdev I/O.
    pub(crate) fn io(&mut self, core: &mut Core, this: &Rc<TcpConn>, slot: usize) {
        let sqe = core.sqe(slot);
        let op = IoOpcode::from(sqe.opcode());
        let ni = match self.ns_chan(core, sqe.nsid()) {
            Ok(Some(ni)) => ni,
            Ok(None) => return core.complete(slot, generic::INVALID_NS, 0),
            // Retryable (DNR clear): the host tries again.
            Err(()) => return core.complete(slot, generic::NS_NOT_READY, 0),
        };
        let ns = &self.ns[ni];
        let slba = sqe.slba();
        let nlb = sqe.nlb() as u64;
        let conn = this.clone();
        let done = move |st: IoStatus| TcpConn::io_done(&conn, slot, io_status(st));
        let r = match op {
            IoOpcode::Write | IoOpcode::Read | IoOpcode::Compare => {
                let bytes = nlb * ns.block_size;
                if core.xfer_len(slot) as u64 != bytes {
                    return core.complete(slot, generic::SGL_LENGTH_INVALID, 0);
                }
                if !core.ensure_buf(slot, bytes as usize) {
                    return core.complete(slot, generic::INTERNAL, 0);
                }
                let b = core.buf_mut(slot).expect("ensure_buf gave it one");
                let iov = [IoVec::new(b.as_mut_ptr(), bytes as usize)];
                let t = match op {
                    IoOpcode::Write => IoType::Write,
                    IoOpcode::Read => IoType::Read,
                    _ => IoType::Compare,
                };
                // SAFETY: the buffer belongs to request `slot`, which stays
                // allocated (state Exec) until `io_done` runs, and nothing
                // else touches it meanwhile.
                unsafe { ns.ch.submit(&ns.desc, t, &iov, &[], slba, nlb, done) }
            }
            IoOpcode::Flush => {
                if !ns.desc.bdev().io_type_supported(IoType::Flush) {
                    return core.complete(slot, generic::SUCCESS, 0);
                }
                let n = ns.desc.bdev().num_blocks();
                ns.ch.submit_nodata(&ns.desc, IoType::Flush, 0, n, done)
            }
            IoOpcode::WriteZeroes => {
                ns.ch
                    .submit_nodata(&ns.desc, IoType::WriteZeroes, slba, nlb, done)
            }
            IoOpcode::DatasetManagement => return self.dsm(core, this, slot, ni),
            _ => return core.complete(slot, generic::INVALID_OPCODE, 0),
        };
        match r {
            Ok(()) => core.io_submitted(slot),
            Err(BdevError::NoMemory) => {
                let conn = this.clone();
                self.ns[ni].ch.queue_io_wait(move || {
                    let mut s = conn.inner.borrow_mut();
                    if !s.core.is_closed() {
                        let st = &mut *s;
                        st.bridge.io(&mut st.core, &conn, slot);
                        st.flush();
                    }
                });
            }
            Err(e) => core.complete(slot, bdev_error_status(&e), 0),
        }
    }

    /// A fused Compare (`first`) + Write (`second`) as one bdev
    /// compare-and-write.
    fn compare_and_write(
        &mut self,
        core: &mut Core,
        this: &Rc<TcpConn>,
        first: usize,
        second: usize,
    ) {
        let (c, w) = (core.sqe(first), core.sqe(second));
        let same = c.nsid() == w.nsid() && c.slba() == w.slba() && c.nlb() == w.nlb();
        let chan = self.ns_chan(core, c.nsid());
        let Some(ni) = chan.ok().flatten().filter(|_| same) else {
            let st = match chan {
                _ if !same => generic::INVALID_FIELD,
                Err(()) => generic::NS_NOT_READY,
                Ok(_) => generic::INVALID_NS,
            };
            core.complete(first, st, 0);
            return core.complete(second, st, 0);
        };
        let nlb = c.nlb() as u64;
        let bytes = (nlb * self.ns[ni].block_size) as usize;
        let lens_ok = core.xfer_len(first) == bytes && core.xfer_len(second) == bytes;
        let cp = core.buf_mut(first).map(|b| b.as_mut_ptr());
        let wp = core.buf_mut(second).map(|b| b.as_mut_ptr());
        let (Some(cp), Some(wp), true) = (cp, wp, lens_ok) else {
            core.complete(first, generic::SGL_LENGTH_INVALID, 0);
            return core.complete(second, generic::SGL_LENGTH_INVALID, 0);
        };
        let cmp = [IoVec::new(cp, bytes)];
        let data = [IoVec::new(wp, bytes)];
        let conn = this.clone();
        let done = move |st: IoStatus| {
            let mut s = conn.inner.borrow_mut();
            s.core.compare_and_write_done(first, second, io_status(st));
            if s.interrupt {
                s.flush();
            }
        };
        let ns = &self.ns[ni];
        // SAFETY: both buffers belong to requests `first` and `second`,
        // which stay allocated until `done` runs; nothing else touches them.
        let r = unsafe {
            ns.ch.submit(
                &ns.desc,
                IoType::CompareAndWrite,
                &data,
                &cmp,
                c.slba(),
                nlb,
                done,
            )
        };
        match r {
            Ok(()) => {
                core.stats().pending_bdev_io.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let st = bdev_error_status(&e);
                core.complete(first, st, 0);
                core.complete(second, crate::conn::FUSED_FAILED_AS_SENT, 0);
            }
        }
    }

    /// Dataset Management: each deallocated range is one bdev unmap; the
    /// command completes with the last.
    fn dsm(&mut self, core: &mut Core, this: &Rc<TcpConn>, slot: usize, ni: usize) {
        let sqe = core.sqe(slot);
        let nr = dsm::num_ranges(sqe.dw[10]);
        if sqe.dw[11] & dsm::ATTR_DEALLOCATE == 0 {
            return core.complete(slot, generic::SUCCESS, 0);
        }
        let ranges: Vec<(u64, u64)> = {
            let r = &core.reqs[slot];
            let Some(b) = r.buf.as_ref().filter(|_| r.len >= nr * DsmRange::SIZE) else {
                return core.complete(slot, generic::SGL_LENGTH_INVALID, 0);
            };
            b[..nr * DsmRange::SIZE]
                .chunks_exact(DsmRange::SIZE)
                .filter_map(DsmRange::from_bytes)
                .map(|r| (r.slba, r.nlb as u64))
                .filter(|&(_, len)| len > 0)
                .collect()
        };
        if ranges.is_empty() || !self.ns[ni].desc.bdev().io_type_supported(IoType::Unmap) {
            return core.complete(slot, generic::SUCCESS, 0);
        }
        core.reqs[slot].pending = 1; // held until all are submitted
        for (lba, len) in ranges {
            let conn = this.clone();
            let ns = &self.ns[ni];
            match ns
                .ch
                .submit_nodata(&ns.desc, IoType::Unmap, lba, len, move |st| {
                    TcpConn::io_done(&conn, slot, io_status(st))
                }) {
                Ok(()) => core.reqs[slot].pending += 1,
                Err(e) => {
                    let st = bdev_error_status(&e);
                    core.reqs[slot].status = st;
                    break;
                }
            }
        }
        core.reqs[slot].pending -= 1;
        if core.reqs[slot].pending == 0 {
            let st = core.reqs[slot].status;
            core.complete(slot, st, 0);
        } else {
            core.stats().pending_bdev_io.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The status of a command whose bdev I/O could not be submitted.
fn bdev_error_status(e: &BdevError) -> Status {
    match e {
        BdevError::OutOfRange { .. } => generic::LBA_OUT_OF_RANGE,
        BdevError::Unsupported { .. } => generic::INVALID_OPCODE,
        BdevError::InvalidParam(_) => generic::INVALID_FIELD,
        BdevError::ReadOnly(_) => generic::INVALID_FIELD,
        BdevError::Removing(_) | BdevError::NotFound(_) => generic::INVALID_NS,
        _ => generic::INTERNAL,
    }
}

/// The NVMe status of a bdev I/O's completion.
fn io_status(st: IoStatus) -> Status {
    match st {
        IoStatus::Success => generic::SUCCESS,
        IoStatus::Miscompare { .. } => media::COMPARE_FAILURE,
        IoStatus::MediumError => media::UNRECOVERED_READ_ERROR,
        IoStatus::Nvme { sct, sc } => Status::new(sct, sc),
        IoStatus::Aborted => generic::ABORTED_BY_REQUEST,
        IoStatus::Removed => generic::INVALID_NS,
        IoStatus::Failed => generic::INTERNAL,
    }
}
