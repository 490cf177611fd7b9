//! The io_uring bdev (SPDK: module/bdev/uring): a file or block device
//! driven through one io_uring per channel.
//!
//! O_DIRECT where the filesystem allows it (see `rspdk_bdev_aio`). `submit`
//! only writes a submission queue entry; the channel's poller makes one
//! `io_uring_enter` per poll, and only when entries are waiting, then
//! reaps the completion queue from shared memory (no syscall). Each ring
//! has a fixed set of request slots, so the I/O path does not allocate.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};
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
pub const MODULE: &str = "uring";

/// Entries of each channel's ring, and requests in flight per channel.
const QUEUE_DEPTH: usize = 128;

/// Parameters of `bdev_uring_create`, as SPDK names them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UringOpts {
    /// Path of the file or block device.
    pub filename: String,
    /// Bdev name.
    pub name: String,
    /// Block size; detected when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// UUID; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<uuid::Uuid>,
}

struct UringDisk {
    file: File,
    direct: bool,
    is_block_device: bool,
    opts: UringOpts,
}

/// Live uring disks, for `rescan` (the registry gives the `Bdev`, not the backend).
static DISKS: std::sync::Mutex<Vec<Arc<UringDisk>>> = std::sync::Mutex::new(Vec::new());

/// Creates a uring bdev (SPDK: `create_uring_bdev`).
pub fn create(opts: UringOpts) -> Result<Bdev, BdevError> {
    rspdk_bdev::vbdev::check_free(&opts.name)?;
    let t = file::open(&opts.filename, false, opts.block_size)?;
    let mut props = BdevProps::new(&opts.name, t.block_size, t.num_blocks, "URING bdev");
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
    let disk = Arc::new(UringDisk {
        file: t.file,
        direct: t.direct,
        is_block_device: t.is_block_device,
        opts,
    });
    let b = bdev_register(props, MODULE, Box::new(UringBackend(disk.clone())))?;
    DISKS.lock().unwrap_or_else(|e| e.into_inner()).push(disk);
    Ok(b)
}

/// Re-reads the size of a uring bdev's file or device and resizes the
/// bdev to it (SPDK: `bdev_uring_rescan`). Returns the block count.
pub fn rescan(name: &str) -> Result<u64, BdevError> {
    let b = rspdk_bdev::bdev_get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    if b.module_name() != MODULE {
        return Err(BdevError::InvalidParam(format!(
            "bdev '{name}' is not a uring bdev"
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

/// Deletes a uring bdev; `done` runs when it is gone.
pub fn delete(name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    match rspdk_bdev::bdev_get(name) {
        Some(b) if b.module_name() == MODULE => bdev_unregister(name, done),
        Some(_) => Err(BdevError::InvalidParam(format!(
            "bdev '{name}' is not a uring bdev"
        ))),
        None => Err(BdevError::NotFound(name.to_string())),
    }
}

struct UringBackend(Arc<UringDisk>);

impl BdevBackend for UringBackend {
    fn create_channel(&self) -> Result<Box<dyn BackendChannel>, BdevError> {
        UringChannel::open(self.0.clone())
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        matches!(
            io_type,
            IoType::Read | IoType::Write | IoType::Flush | IoType::Reset
        )
    }

    fn dump_info_json(&self) -> Value {
        json!({"uring": {"filename": self.0.opts.filename, "direct": self.0.direct}})
    }

    fn write_config_json(&self, props: &BdevProps) -> Option<Value> {
        let mut o = self.0.opts.clone();
        o.uuid = Some(props.uuid);
        Some(json!({"method": "bdev_uring_create", "params": o}))
    }

    fn destruct(&self) {
        DISKS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| !Arc::ptr_eq(x, &self.0));
    }
}

struct Slot {
    iov: Vec<libc::iovec>,
    io: Option<BdevIo>,
    expect: u64,
}

struct UringState {
    ring: IoUring,
    fd: i32,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Entries written to the submission queue since the last enter.
    unsubmitted: usize,
    waiting: VecDeque<BdevIo>,
    resets: Vec<BdevIo>,
    done: Vec<(BdevIo, IoStatus)>,
    busy: usize,
    /// Keeps the file (and so `fd`) open while the channel lives.
    _disk: Arc<UringDisk>,
}

struct UringChannel {
    st: Rc<RefCell<UringState>>,
    poller: Option<Poller>,
}

impl UringChannel {
    fn open(disk: Arc<UringDisk>) -> Result<Box<dyn BackendChannel>, BdevError> {
        let err = |detail: String| BdevError::Channel {
            bdev: disk.opts.name.clone(),
            detail,
        };
        let ring =
            IoUring::new(QUEUE_DEPTH as u32).map_err(|e| err(format!("io_uring_setup: {e}")))?;
        let st = Rc::new(RefCell::new(UringState {
            ring,
            fd: disk.file.as_raw_fd(),
            slots: (0..QUEUE_DEPTH)
                .map(|_| Slot {
                    iov: Vec::with_capacity(8),
                    io: None,
                    expect: 0,
                })
                .collect(),
            free: (0..QUEUE_DEPTH as u32).rev().collect(),
            unsubmitted: 0,
            waiting: VecDeque::new(),
            resets: Vec::new(),
            done: Vec::with_capacity(QUEUE_DEPTH),
            busy: 0,
            _disk: disk.clone(),
        }));
        let weak: Weak<RefCell<UringState>> = Rc::downgrade(&st);
        let poller = poller_register("bdev_uring", 0, move |_| match weak.upgrade() {
            Some(st) => poll(&st),
            None => PollerStatus::Idle,
        })
        .map_err(|e| err(e.to_string()))?;
        Ok(Box::new(UringChannel {
            st,
            poller: Some(poller),
        }))
    }
}

impl UringState {
    /// Writes the submission entry for `io` into slot `i`.
    fn fill(&mut self, i: u32, io: BdevIo) {
        let bs = io.block_size() as u64;
        let offset = io.offset_blocks() * bs;
        let fd = types::Fd(self.fd);
        let slot = &mut self.slots[i as usize];
        let entry: squeue::Entry = match io.io_type() {
            IoType::Flush => {
                slot.expect = 0;
                opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
            }
            t => {
                let write = t == IoType::Write;
                let iovs = io.iovs();
                slot.expect = io.num_blocks() * bs;
                if iovs.len() == 1 {
                    let (p, n) = (iovs[0].base, iovs[0].len as u32);
                    if write {
                        opcode::Write::new(fd, p, n).offset(offset).build()
                    } else {
                        opcode::Read::new(fd, p, n).offset(offset).build()
                    }
                } else {
                    slot.iov.clear();
                    slot.iov.extend(iovs.iter().map(|v| libc::iovec {
                        iov_base: v.base.cast(),
                        iov_len: v.len,
                    }));
                    let (p, n) = (slot.iov.as_ptr(), slot.iov.len() as u32);
                    if write {
                        opcode::Writev::new(fd, p, n).offset(offset).build()
                    } else {
                        opcode::Readv::new(fd, p, n).offset(offset).build()
                    }
                }
            }
        };
        slot.io = Some(io);
        let entry = entry.user_data(i as u64);
        // SAFETY: the buffers and iovec array the entry names stay valid
        // until its completion is reaped (the I/O is held in the slot).
        // There are as many slots as ring entries, so the queue has room.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        debug_assert!(pushed.is_ok(), "one slot per ring entry");
        self.unsubmitted += 1;
        self.busy += 1;
    }

    fn start(&mut self, io: BdevIo) {
        match self.free.pop() {
            Some(i) => self.fill(i, io),
            None => self.waiting.push_back(io),
        }
    }
}

/// The channel poller: one enter if entries wait, reap the completion
/// queue, admit waiting I/O, finish resets, then complete outside the
/// borrow (callbacks may submit again).
fn poll(cell: &RefCell<UringState>) -> PollerStatus {
    let done = {
        let mut guard = cell.borrow_mut();
        let st = &mut *guard;
        let mut busy = false;
        if st.unsubmitted > 0 {
            match st.ring.submit() {
                Ok(_) => {
                    st.unsubmitted = 0;
                    busy = true;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY)) => {}
                Err(e) => {
                    tracing::error!(error = %e, "io_uring_enter failed");
                }
            }
        }
        if st.busy > 0 {
            let mut cq = st.ring.completion();
            cq.sync();
            for cqe in &mut cq {
                let i = cqe.user_data() as u32;
                let slot = &mut st.slots[i as usize];
                let res = cqe.result();
                let status = if res >= 0 && res as u64 == slot.expect {
                    IoStatus::Success
                } else if res == -libc::EIO {
                    IoStatus::MediumError
                } else {
                    IoStatus::Failed
                };
                if let Some(io) = slot.io.take() {
                    st.done.push((io, status));
                }
                st.free.push(i);
                st.busy -= 1;
                busy = true;
            }
        }
        while !st.free.is_empty() && !st.waiting.is_empty() {
            let io = st.waiting.pop_front().expect("checked non-empty");
            st.start(io);
        }
        if st.busy == 0 && st.waiting.is_empty() {
            while let Some(io) = st.resets.pop() {
                st.done.push((io, IoStatus::Success));
            }
        }
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

impl BackendChannel for UringChannel {
    fn submit(&mut self, io: BdevIo) {
        let mut st = self.st.borrow_mut();
        match io.io_type() {
            IoType::Read | IoType::Write | IoType::Flush => st.start(io),
            IoType::Reset if st.busy > 0 || !st.waiting.is_empty() => st.resets.push(io),
            IoType::Reset => {
                drop(st);
                io.complete(IoStatus::Success);
            }
            _ => {
                drop(st);
                io.complete(IoStatus::Failed);
            }
        }
    }
}

impl Drop for UringChannel {
    fn drop(&mut self) {
        if let Some(p) = self.poller.take() {
            p.unregister();
        }
    }
}

/// Registers `bdev_uring_create`, `bdev_uring_delete` and `bdev_uring_rescan`.
fn register_rpcs(reg: &rspdk_rpc::RpcRegistry) {
    let rt = rspdk_rpc::StateMask::RUNTIME;
    method(reg, "bdev_uring_create", rt, |o: UringOpts| {
        create(o).map(|b| json!(b.name()))
    });
    delete_method(reg, "bdev_uring_delete", |p: &NameParam| &p.name, delete);
    method(reg, "bdev_uring_rescan", rt, |p: NameParam| {
        rescan(&p.name).map(|_| json!(true))
    });
}

/// The uring bdev module, for the app's module list
/// (`rspdk_bdev::module_register`).
#[derive(Debug, Default)]
pub struct UringModule;

impl rspdk_bdev::BdevModule for UringModule {
    fn name(&self) -> &'static str {
        MODULE
    }

    fn register_rpcs(&self, reg: &rspdk_rpc::RpcRegistry) {
        register_rpcs(reg)
    }

    fn log_flags(&self) -> &'static [(&'static str, &'static str)] {
        &[("uring", "rspdk_bdev_uring")]
    }
}
