//! The Linux AIO bdev (SPDK: module/bdev/aio): a file or block device
//! driven through the kernel's native AIO (`io_setup`, `io_submit`,
//! `io_getevents`).
//!
//! O_DIRECT where the filesystem allows it (buffered, with a warning,
//! where it refuses); the block size comes from the device (512 for
//! files) and, with O_DIRECT, buffers must be aligned to it, so the layer
//! bounces unaligned ones (`required_alignment`). Each channel has its own
//! AIO context with a fixed set of request slots (no allocation per I/O).
//! `submit` only fills a slot; the channel's poller hands every filled
//! slot to the kernel with one `io_submit` per poll and reaps completions
//! from the context's completion ring in user space, without a syscall
//! (falling back to a zero-timeout `io_getevents` if the ring's layout is
//! not the known one). Unmap and write zeroes are offered with
//! `fallocate: true` (hole punching / zero range, done synchronously as
//! SPDK does).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rspdk_thread::{poller_register, Poller, PollerStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use rspdk_bdev::file;
use rspdk_bdev::rpc::{delete_method, method, NameParam};
use rspdk_bdev::Bdev;
use rspdk_bdev::BdevIo;
use rspdk_bdev::{bdev_register, bdev_unregister, BackendChannel, BdevBackend};
use rspdk_bdev::{BdevError, BdevProps, IoStatus, IoType};

/// The module name.
pub const MODULE: &str = "aio";

/// Requests each channel's AIO context holds (SPDK's default depth).
const QUEUE_DEPTH: usize = 128;

/// Parameters of `bdev_aio_create`, as SPDK names them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AioOpts {
    /// Path of the file or block device.
    pub filename: String,
    /// Bdev name.
    pub name: String,
    /// Block size; detected when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// Open read-only (writes are not supported then).
    #[serde(default)]
    pub readonly: bool,
    /// Offer unmap and write zeroes through fallocate.
    #[serde(default)]
    pub fallocate: bool,
    /// UUID; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<uuid::Uuid>,
    /// Submit reads and writes with RWF_NOWAIT (block devices only, as in
    /// SPDK): a request the kernel would block on completes with EAGAIN
    /// and is submitted again.
    #[serde(default)]
    pub nowait: bool,
}

struct AioDisk {
    file: File,
    direct: bool,
    is_block_device: bool,
    opts: AioOpts,
}

/// Creates an AIO bdev (SPDK: `create_aio_bdev`).
pub fn create(opts: AioOpts) -> Result<Bdev, BdevError> {
    rspdk_bdev::vbdev::check_free(&opts.name)?;
    let t = file::open(&opts.filename, opts.readonly, opts.block_size)?;
    if opts.nowait && !t.is_block_device {
        return Err(BdevError::Module {
            errno: libc::ENOTSUP,
            message: format!(
                "nowait (RWF_NOWAIT) works on block devices only and filename {:?} is not one: omit nowait or give false",
                opts.filename
            ),
        });
    }
    let mut props = BdevProps::new(&opts.name, t.block_size, t.num_blocks, "AIO disk");
    if t.direct {
        props.required_alignment = t.block_size;
    }
    props.write_cache = true;
    if let Some(u) = opts.uuid {
        props.uuid = u;
    }
    let mut opts = opts;
    opts.uuid = Some(props.uuid);
    opts.block_size = Some(t.block_size);
    let disk = Arc::new(AioDisk {
        file: t.file,
        direct: t.direct,
        is_block_device: t.is_block_device,
        opts,
    });
    let b = bdev_register(props, MODULE, Box::new(AioBackend(disk.clone())))?;
    DISKS.lock().unwrap_or_else(|e| e.into_inner()).push(disk);
    Ok(b)
}

/// Deletes an AIO bdev; `done` runs when it is gone.
pub fn delete(name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    match rspdk_bdev::bdev_get(name) {
        Some(b) if b.module_name() == MODULE => bdev_unregister(name, done),
        Some(_) => Err(BdevError::InvalidParam(format!(
            "bdev '{name}' is not an aio bdev"
        ))),
        None => Err(BdevError::NotFound(name.to_string())),
    }
}

/// Re-reads the size of an AIO bdev's file or device and resizes the bdev
/// to it (SPDK: `bdev_aio_rescan`). Returns the block count.
pub fn rescan(name: &str) -> Result<u64, BdevError> {
    let b = rspdk_bdev::bdev_get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    if b.module_name() != MODULE {
        return Err(BdevError::InvalidParam(format!(
            "bdev '{name}' is not an aio bdev"
        )));
    }
    let (filename, size) = {
        let disks = DISKS.lock().unwrap_or_else(|e| e.into_inner());
        let d = disks
            .iter()
            .find(|d| d.opts.name == b.name())
            .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        (
            d.opts.filename.clone(),
            file::size_bytes(&d.file, d.is_block_device),
        )
    };
    file::rescan_to(&b, MODULE, &filename, size)
}

/// Live AIO disks, for `rescan` (the registry gives the `Bdev`, not the backend).
static DISKS: std::sync::Mutex<Vec<Arc<AioDisk>>> = std::sync::Mutex::new(Vec::new());

struct AioBackend(Arc<AioDisk>);

impl BdevBackend for AioBackend {
    fn create_channel(&self) -> Result<Box<dyn BackendChannel>, BdevError> {
        AioChannel::open(self.0.clone())
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        let o = &self.0.opts;
        match io_type {
            IoType::Read | IoType::Reset => true,
            IoType::Write | IoType::Flush => !o.readonly,
            IoType::Unmap | IoType::WriteZeroes => o.fallocate && !o.readonly,
            _ => false,
        }
    }

    fn dump_info_json(&self) -> Value {
        let o = &self.0.opts;
        json!({"aio": {
            "filename": o.filename,
            "block_size_override": o.block_size.is_some(),
            "readonly": o.readonly,
            "fallocate": o.fallocate,
            "nowait": o.nowait,
            "direct": self.0.direct,
        }})
    }

    fn write_config_json(&self, props: &BdevProps) -> Option<Value> {
        let mut o = self.0.opts.clone();
        o.uuid = Some(props.uuid);
        Some(json!({"method": "bdev_aio_create", "params": o}))
    }

    fn destruct(&self) {
        DISKS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| !Arc::ptr_eq(x, &self.0));
    }
}

// The kernel's AIO ABI (linux/aio_abi.h), little-endian x86_64/aarch64.
const IOCB_CMD_PREAD: u16 = 0;
const IOCB_CMD_PWRITE: u16 = 1;
const IOCB_CMD_FDSYNC: u16 = 3;
const IOCB_CMD_PREADV: u16 = 7;
const IOCB_CMD_PWRITEV: u16 = 8;
const AIO_RING_MAGIC: u32 = 0xa10a_10a1;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Iocb {
    aio_data: u64,
    aio_key: u32,
    aio_rw_flags: i32,
    aio_lio_opcode: u16,
    aio_reqprio: i16,
    aio_fildes: u32,
    aio_buf: u64,
    aio_nbytes: u64,
    aio_offset: i64,
    aio_reserved2: u64,
    aio_flags: u32,
    aio_resfd: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

/// The header of the completion ring the kernel maps at the context's
/// address; `IoEvent`s follow it.
#[repr(C)]
struct AioRing {
    id: u32,
    nr: u32,
    head: u32,
    tail: u32,
    magic: u32,
    compat_features: u32,
    incompat_features: u32,
    header_length: u32,
}

struct Slot {
    /// The iovec array of a vectored request (capacity kept).
    iov: Vec<libc::iovec>,
    io: Option<BdevIo>,
    /// Bytes the request must transfer to succeed.
    expect: u64,
}

struct AioState {
    ctx: libc::c_ulong,
    fd: i32,
    iocbs: Box<[Iocb]>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Filled slots not yet handed to the kernel, in order.
    pending: VecDeque<u32>,
    ptrs: Vec<*mut Iocb>,
    events: Vec<IoEvent>,
    /// I/O beyond the queue depth.
    waiting: VecDeque<BdevIo>,
    /// Resets waiting for the in-flight I/O to finish.
    resets: Vec<BdevIo>,
    done: Vec<(BdevIo, IoStatus)>,
    /// Slots in use.
    busy: usize,
    disk: Arc<AioDisk>,
}

struct AioChannel {
    st: Rc<RefCell<AioState>>,
    poller: Option<Poller>,
}

impl AioChannel {
    fn open(disk: Arc<AioDisk>) -> Result<Box<dyn BackendChannel>, BdevError> {
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes the new context id to the live local.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_setup,
                QUEUE_DEPTH as libc::c_long,
                &mut ctx as *mut libc::c_ulong,
            )
        };
        if r != 0 {
            return Err(BdevError::Channel {
                bdev: disk.opts.name.clone(),
                detail: format!("io_setup: {}", std::io::Error::last_os_error()),
            });
        }
        let st = Rc::new(RefCell::new(AioState {
            ctx,
            fd: disk.file.as_raw_fd(),
            iocbs: vec![Iocb::default(); QUEUE_DEPTH].into_boxed_slice(),
            slots: (0..QUEUE_DEPTH)
                .map(|_| Slot {
                    iov: Vec::with_capacity(8),
                    io: None,
                    expect: 0,
                })
                .collect(),
            free: (0..QUEUE_DEPTH as u32).rev().collect(),
            pending: VecDeque::with_capacity(QUEUE_DEPTH),
            ptrs: Vec::with_capacity(QUEUE_DEPTH),
            events: vec![IoEvent::default(); QUEUE_DEPTH],
            waiting: VecDeque::new(),
            resets: Vec::new(),
            done: Vec::with_capacity(QUEUE_DEPTH),
            busy: 0,
            disk,
        }));
        let weak: Weak<RefCell<AioState>> = Rc::downgrade(&st);
        let poller = poller_register("bdev_aio", 0, move |_| match weak.upgrade() {
            Some(st) => poll(&st),
            None => PollerStatus::Idle,
        });
        let poller = match poller {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: destroys the context created above, unused so far.
                unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
                return Err(BdevError::Channel {
                    bdev: st.borrow().disk.opts.name.clone(),
                    detail: e.to_string(),
                });
            }
        };
        Ok(Box::new(AioChannel {
            st,
            poller: Some(poller),
        }))
    }
}

impl AioState {
    /// Fills slot `i` for `io` and queues it for the next `io_submit`.
    fn fill(&mut self, i: u32, io: BdevIo) {
        let bs = io.block_size() as u64;
        let offset = io.offset_blocks() * bs;
        let len = io.num_blocks() * bs;
        let slot = &mut self.slots[i as usize];
        let mut cb = Iocb {
            aio_data: i as u64,
            aio_fildes: self.fd as u32,
            aio_offset: offset as i64,
            ..Default::default()
        };
        match io.io_type() {
            IoType::Flush => {
                cb.aio_lio_opcode = IOCB_CMD_FDSYNC;
                slot.expect = 0;
            }
            t => {
                let write = t == IoType::Write;
                if self.disk.opts.nowait {
                    cb.aio_rw_flags = libc::RWF_NOWAIT;
                }
                let iovs = io.iovs();
                if iovs.len() == 1 {
                    cb.aio_lio_opcode = if write {
                        IOCB_CMD_PWRITE
                    } else {
                        IOCB_CMD_PREAD
                    };
                    cb.aio_buf = iovs[0].base as u64;
                    cb.aio_nbytes = iovs[0].len as u64;
                } else {
                    slot.iov.clear();
                    slot.iov.extend(iovs.iter().map(|v| libc::iovec {
                        iov_base: v.base.cast(),
                        iov_len: v.len,
                    }));
                    cb.aio_lio_opcode = if write {
                        IOCB_CMD_PWRITEV
                    } else {
                        IOCB_CMD_PREADV
                    };
                    cb.aio_buf = slot.iov.as_ptr() as u64;
                    cb.aio_nbytes = slot.iov.len() as u64;
                }
                slot.expect = len;
            }
        }
        slot.io = Some(io);
        self.iocbs[i as usize] = cb;
        self.pending.push_back(i);
        self.busy += 1;
    }

    /// Takes `io` into a free slot, or queues it past the depth.
    fn start(&mut self, io: BdevIo) {
        match self.free.pop() {
            Some(i) => self.fill(i, io),
            None => self.waiting.push_back(io),
        }
    }

    /// Frees slot `i`, returning its I/O.
    fn release(&mut self, i: u32) -> Option<BdevIo> {
        self.free.push(i);
        self.busy -= 1;
        self.slots[i as usize].io.take()
    }

    /// One `io_submit` for every pending slot.
    fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        self.ptrs.clear();
        let base = self.iocbs.as_mut_ptr();
        for &i in &self.pending {
            // SAFETY: `i` < QUEUE_DEPTH, the length of `iocbs`.
            self.ptrs.push(unsafe { base.add(i as usize) });
        }
        // SAFETY: `ptrs` holds `len` pointers to initialised iocbs that
        // stay in place (a boxed slice) and the buffers and iovec arrays
        // they name stay valid until their completion is reaped.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_submit,
                self.ctx,
                self.ptrs.len() as libc::c_long,
                self.ptrs.as_mut_ptr(),
            )
        };
        if r >= 0 {
            self.pending.drain(..r as usize);
            return r > 0;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EAGAIN) {
            return false;
        }
        // The first request was refused: fail it; the rest go next poll.
        if let Some(i) = self.pending.pop_front() {
            tracing::error!(bdev = %self.disk.opts.name, error = %err, "io_submit refused a request");
            if let Some(io) = self.release(i) {
                self.done.push((io, IoStatus::Failed));
            }
        }
        true
    }

    /// Copies finished events into `events`; returns how many.
    fn reap(&mut self) -> usize {
        if self.busy == self.pending.len() {
            return 0;
        }
        let ring = self.ctx as *mut AioRing;
        // SAFETY: an AIO context id is the address of the completion ring
        // the kernel mapped into this process for it (the ABI libaio and
        // SPDK rely on); the header is read only after checking its magic.
        // The kernel advances `tail` after writing events (release), we
        // read `tail` with acquire and publish `head` with release.
        unsafe {
            if (*ring).magic == AIO_RING_MAGIC && (*ring).incompat_features == 0 {
                let nr = (*ring).nr;
                let head_a = &*(std::ptr::addr_of!((*ring).head) as *const AtomicU32);
                let tail_a = &*(std::ptr::addr_of!((*ring).tail) as *const AtomicU32);
                let mut head = head_a.load(Ordering::Relaxed);
                let tail = tail_a.load(Ordering::Acquire);
                let evs = (ring as *const u8).add((*ring).header_length as usize) as *const IoEvent;
                let mut n = 0;
                while head != tail && n < self.events.len() {
                    self.events[n] = std::ptr::read_volatile(evs.add(head as usize));
                    head = (head + 1) % nr;
                    n += 1;
                }
                head_a.store(head, Ordering::Release);
                return n;
            }
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `events` has room for the `len` events asked for; a zero
        // timeout makes the call return at once.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.ctx,
                0 as libc::c_long,
                self.events.len() as libc::c_long,
                self.events.as_mut_ptr(),
                &mut ts as *mut libc::timespec,
            )
        };
        r.max(0) as usize
    }
}

/// The channel poller: submit, reap, admit waiting I/O, finish resets,
/// then complete (outside the state borrow, so callbacks may submit).
fn poll(cell: &RefCell<AioState>) -> PollerStatus {
    let done = {
        let mut st = cell.borrow_mut();
        let mut busy = st.flush();
        let n = st.reap();
        for k in 0..n {
            let ev = st.events[k];
            let i = ev.data as u32;
            if ev.res == -(libc::EAGAIN as i64) && st.disk.opts.nowait {
                // RWF_NOWAIT: the kernel would have blocked. Submit it
                // again (SPDK completes it NOMEM for the layer to retry).
                if let Some(io) = st.release(i) {
                    st.waiting.push_back(io);
                }
                continue;
            }
            let expect = st.slots[i as usize].expect;
            let status = if ev.res >= 0 && ev.res as u64 == expect {
                IoStatus::Success
            } else if ev.res == -(libc::EIO as i64) {
                IoStatus::MediumError
            } else {
                IoStatus::Failed
            };
            if let Some(io) = st.release(i) {
                st.done.push((io, status));
            }
        }
        while !st.free.is_empty() && !st.waiting.is_empty() {
            let io = st.waiting.pop_front().expect("checked non-empty");
            st.start(io);
        }
        if st.busy == 0 && st.waiting.is_empty() && !st.resets.is_empty() {
            while let Some(io) = st.resets.pop() {
                st.done.push((io, IoStatus::Success));
            }
        }
        busy |= n > 0;
        if st.done.is_empty() {
            return if busy {
                PollerStatus::Busy
            } else {
                PollerStatus::Idle
            };
        }
        std::mem::take(&mut st.done)
    };
    rspdk_bdev::complete_batch(cell, done, |st| &mut st.done)
}

impl BackendChannel for AioChannel {
    fn submit(&mut self, io: BdevIo) {
        let mut st = self.st.borrow_mut();
        match io.io_type() {
            IoType::Read | IoType::Write | IoType::Flush => st.start(io),
            IoType::Reset => {
                if st.busy == 0 && st.waiting.is_empty() {
                    drop(st);
                    io.complete(IoStatus::Success);
                } else {
                    st.resets.push(io);
                }
            }
            t @ (IoType::Unmap | IoType::WriteZeroes) => {
                let bs = io.block_size() as u64;
                let ok = file::fallocate(
                    &st.disk.file,
                    t == IoType::Unmap,
                    io.offset_blocks() * bs,
                    io.num_blocks() * bs,
                );
                drop(st);
                io.complete(if ok {
                    IoStatus::Success
                } else {
                    IoStatus::Failed
                });
            }
            _ => {
                drop(st);
                io.complete(IoStatus::Failed);
            }
        }
    }
}

impl Drop for AioChannel {
    fn drop(&mut self) {
        if let Some(p) = self.poller.take() {
            p.unregister();
        }
        let ctx = self.st.borrow().ctx;
        // SAFETY: the context is ours and no longer polled; io_destroy
        // waits for any request still in the kernel.
        unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    }
}

/// Registers `bdev_aio_create`, `bdev_aio_delete` and `bdev_aio_rescan`.
fn register_rpcs(reg: &rspdk_rpc::RpcRegistry) {
    let rt = rspdk_rpc::StateMask::RUNTIME;
    method(reg, "bdev_aio_create", rt, |o: AioOpts| {
        create(o).map(|b| json!(b.name()))
    });
    delete_method(reg, "bdev_aio_delete", |p: &NameParam| &p.name, delete);
    method(reg, "bdev_aio_rescan", rt, |p: NameParam| {
        rescan(&p.name).map(|_| json!(true))
    });
}

/// The aio bdev module, for the app's module list
/// (`rspdk_bdev::module_register`).
#[derive(Debug, Default)]
pub struct AioModule;

impl rspdk_bdev::BdevModule for AioModule {
    fn name(&self) -> &'static str {
        MODULE
    }

    fn register_rpcs(&self, reg: &rspdk_rpc::RpcRegistry) {
        register_rpcs(reg)
    }

    fn log_flags(&self) -> &'static [(&'static str, &'static str)] {
        &[("aio", "rspdk_bdev_aio")]
    }
}
