//! The malloc bdev: a RAM disk in DMA memory (SPDK: module/bdev/malloc).

/// The module name bdevs of this module carry (`bdev_get_bdevs` `product_name` aside).
pub const MODULE: &str = "malloc";

use std::ptr::NonNull;

use rspdk_env::DmaBuf;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use rspdk_bdev::Bdev;
use rspdk_bdev::BdevIo;
use rspdk_bdev::{bdev_register, bdev_unregister, BackendChannel, BdevBackend};
use rspdk_bdev::{BdevError, BdevProps, IoStatus, IoType, IoVec};

/// Parameters of `bdev_malloc_create`, as SPDK names them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MallocOpts {
    /// Bdev name; default `MallocN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Number of blocks.
    pub num_blocks: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Physical block size (reported only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_block_size: Option<u32>,
    /// UUID; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<uuid::Uuid>,
    /// Optimal I/O boundary in blocks (the layer splits I/O across it).
    #[serde(default)]
    pub optimal_io_boundary: u64,
    /// Metadata size (only 0 is supported).
    #[serde(default)]
    pub md_size: u32,
    /// Metadata interleaved (only false is supported).
    #[serde(default)]
    pub md_interleave: bool,
    /// DIF type (only 0 is supported).
    #[serde(default)]
    pub dif_type: u8,
    /// DIF at the head of metadata (only false is supported).
    #[serde(default)]
    pub dif_is_head_of_md: bool,
    /// Protection information format (only 0 is supported: no DIF).
    #[serde(default)]
    pub dif_pi_format: u32,
    /// NUMA node to allocate the disk's memory on; -1 (the default): any.
    #[serde(default = "any_numa")]
    pub numa_id: i32,
}

fn any_numa() -> i32 {
    -1
}

impl Default for MallocOpts {
    fn default() -> MallocOpts {
        MallocOpts {
            name: None,
            num_blocks: 0,
            block_size: 0,
            physical_block_size: None,
            uuid: None,
            optimal_io_boundary: 0,
            md_size: 0,
            md_interleave: false,
            dif_type: 0,
            dif_is_head_of_md: false,
            dif_pi_format: 0,
            numa_id: any_numa(),
        }
    }
}

struct MallocDisk {
    mem: NonNull<u8>,
    len: usize,
    /// Keeps the memory; never accessed through references (see below).
    _buf: DmaBuf,
    opts: MallocOpts,
}

// SAFETY: the disk's bytes are device memory: every access is a raw copy
// through `mem` by the I/O path (never a Rust reference), like a device
// that several queues may address at once. Concurrent writes to the same
// blocks race exactly as they would on a real disk.
unsafe impl Send for MallocDisk {}
// SAFETY: as above.
unsafe impl Sync for MallocDisk {}

struct MallocBackend(std::sync::Arc<MallocDisk>);

struct MallocChannel(std::sync::Arc<MallocDisk>);

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Creates a malloc bdev (SPDK: `create_malloc_disk`).
pub fn create(opts: MallocOpts) -> Result<Bdev, BdevError> {
    if opts.md_size != 0
        || opts.dif_type != 0
        || opts.md_interleave
        || opts.dif_is_head_of_md
        || opts.dif_pi_format != 0
    {
        return Err(BdevError::InvalidParam(
            "metadata and DIF (md_size, md_interleave, dif_type, dif_is_head_of_md, dif_pi_format) are not supported: omit them or give 0/false".into(),
        ));
    }
    if opts.numa_id < -1 {
        return Err(BdevError::InvalidParam(format!(
            "numa_id {} is invalid: give a NUMA node id or -1 for any",
            opts.numa_id
        )));
    }
    if opts.numa_id >= 0 {
        let nodes = rspdk_env::env()
            .map(|e| e.sockets().to_vec())
            .unwrap_or_default();
        if !nodes.contains(&(opts.numa_id as u32)) {
            return Err(BdevError::InvalidParam(format!(
                "NUMA node {} has no DMA memory here (nodes with memory: {nodes:?}): give one of those or -1 for any",
                opts.numa_id
            )));
        }
    }
    if opts.block_size < 512 || !opts.block_size.is_power_of_two() {
        return Err(BdevError::InvalidParam(format!(
            "block_size {} must be a power of two and at least 512",
            opts.block_size
        )));
    }
    if opts.num_blocks == 0 {
        return Err(BdevError::InvalidParam(
            "num_blocks must be greater than 0".into(),
        ));
    }
    let len = opts
        .num_blocks
        .checked_mul(opts.block_size as u64)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(|| BdevError::InvalidParam("num_blocks * block_size overflows".into()))?;
    let mut opts = opts;
    let name = opts.name.clone().unwrap_or_else(|| {
        format!(
            "Malloc{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    });
    opts.name = Some(name.clone());
    let mut buf = DmaBuf::zeroed_aligned(len, 4096, opts.numa_id)?;
    let mem = NonNull::new(buf.as_mut_ptr()).expect("DMA buffers are non-null");
    let mut props = BdevProps::new(&name, opts.block_size, opts.num_blocks, "Malloc disk");
    if let Some(u) = opts.uuid {
        props.uuid = u;
    }
    opts.uuid = Some(props.uuid);
    props.optimal_io_boundary = opts.optimal_io_boundary;
    props.physical_block_size = opts.physical_block_size.unwrap_or(0);
    props.numa_id = Some(opts.numa_id);
    let disk = std::sync::Arc::new(MallocDisk {
        mem,
        len,
        _buf: buf,
        opts,
    });
    bdev_register(props, MODULE, Box::new(MallocBackend(disk)))
}

/// Deletes a malloc bdev (SPDK: `delete_malloc_disk`); `done` runs when it
/// is gone.
pub fn delete(name: &str, done: impl FnOnce() + Send + 'static) -> Result<(), BdevError> {
    match rspdk_bdev::bdev_get(name) {
        Some(b) if b.module_name() == MODULE => bdev_unregister(name, done),
        Some(_) => Err(BdevError::InvalidParam(format!(
            "bdev '{name}' is not a malloc bdev"
        ))),
        None => Err(BdevError::NotFound(name.to_string())),
    }
}

impl BdevBackend for MallocBackend {
    fn create_channel(&self) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(MallocChannel(self.0.clone())))
    }

    fn io_type_supported(&self, _io_type: IoType) -> bool {
        true
    }

    fn write_config_json(&self, props: &BdevProps) -> Option<Value> {
        let mut o = self.0.opts.clone();
        o.name = Some(props.name.clone());
        o.uuid = Some(props.uuid);
        Some(json!({"method": "bdev_malloc_create", "params": o}))
    }
}

/// Copies between the disk at `off` and `iovs`.
fn copy(disk: &MallocDisk, off: usize, iovs: &[IoVec], to_disk: bool) {
    let mut at = off;
    for v in iovs {
        debug_assert!(at + v.len <= disk.len);
        // SAFETY: the layer checked the range against the disk size and the
        // buffer lengths against the block count; `v` is valid for the I/O.
        unsafe {
            let d = disk.mem.as_ptr().add(at);
            if to_disk {
                copy_streaming(v.base, d, v.len);
            } else {
                std::ptr::copy_nonoverlapping(d, v.base, v.len);
            }
        }
        at += v.len;
    }
    if to_disk {
        store_fence();
    }
}

/// Copies into the disk with non-temporal stores where the destination is
/// 16-byte aligned: a write to a RAM disk is rarely read back soon, and
/// streaming stores skip the read-for-ownership of every destination line
/// (random writes into a disk larger than the cache otherwise cost a
/// memory read per line written). The rest goes through memcpy.
///
/// # Safety
/// `src` and `dst` must be valid for `len` bytes and not overlap.
#[inline]
unsafe fn copy_streaming(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        const MIN_STREAM: usize = 1024;
        if len >= MIN_STREAM && (dst as usize) % 16 == 0 {
            let chunks = len / 64;
            for i in 0..chunks {
                // SAFETY: SSE2 is part of the x86_64 baseline; each 16-byte
                // load and store is inside the caller's `len` bytes, and
                // `dst + 64 * i + 16 * k` keeps the 16-byte alignment
                // checked above that the streaming store needs.
                unsafe {
                    let s = src.add(i * 64) as *const __m128i;
                    let d = dst.add(i * 64) as *mut __m128i;
                    let a = _mm_loadu_si128(s);
                    let b = _mm_loadu_si128(s.add(1));
                    let c = _mm_loadu_si128(s.add(2));
                    let e = _mm_loadu_si128(s.add(3));
                    _mm_stream_si128(d, a);
                    _mm_stream_si128(d.add(1), b);
                    _mm_stream_si128(d.add(2), c);
                    _mm_stream_si128(d.add(3), e);
                }
            }
            let done = chunks * 64;
            // SAFETY: the remaining tail is inside both buffers.
            unsafe { std::ptr::copy_nonoverlapping(src.add(done), dst.add(done), len - done) };
            return;
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

/// Orders the streaming stores before the completion that publishes them.
#[inline]
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no preconditions (SSE, part of the x86_64 baseline).
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Bytes of the disk [`compare`] copies out at a time.
const COMPARE_CHUNK: usize = 512;

/// The first differing byte between the disk at `off` and `iovs`.
///
/// Other channels (threads) may write the same blocks while this runs, so
/// no Rust reference ever covers the disk: each chunk is copied out with a
/// raw copy (as a read I/O does) into a local buffer and compared there.
fn compare(disk: &MallocDisk, off: usize, iovs: &[IoVec]) -> Option<u64> {
    let mut local = [0u8; COMPARE_CHUNK];
    let mut at = off;
    let mut done = 0u64;
    for v in iovs {
        let mut pos = 0;
        while pos < v.len {
            let n = (v.len - pos).min(COMPARE_CHUNK);
            debug_assert!(at + n <= disk.len);
            // SAFETY: the layer checked the range against the disk size and
            // the buffer lengths against the block count, so `at..at + n`
            // is inside the disk and `pos..pos + n` inside `v`. The disk is
            // only read by a raw copy into our local buffer (never through
            // a reference), so concurrent writers elsewhere cannot alias a
            // Rust reference. `v` belongs to this I/O, which the submitter
            // keeps valid and unshared until completion, so a shared slice
            // over it is sound.
            let theirs = unsafe {
                std::ptr::copy_nonoverlapping(disk.mem.as_ptr().add(at), local.as_mut_ptr(), n);
                std::slice::from_raw_parts(v.base.add(pos), n)
            };
            if let Some(i) = local[..n].iter().zip(theirs).position(|(x, y)| x != y) {
                return Some(done + i as u64);
            }
            pos += n;
            at += n;
            done += n as u64;
        }
    }
    None
}

impl BackendChannel for MallocChannel {
    fn submit(&mut self, io: BdevIo) {
        let disk = &*self.0;
        let bs = io.block_size() as usize;
        let off = io.offset_blocks() as usize * bs;
        let len = io.num_blocks() as usize * bs;
        let status = match io.io_type() {
            IoType::Read => {
                copy(disk, off, io.iovs(), false);
                IoStatus::Success
            }
            IoType::Write => {
                copy(disk, off, io.iovs(), true);
                IoStatus::Success
            }
            IoType::Unmap | IoType::WriteZeroes => {
                // SAFETY: range checked by the layer.
                unsafe { disk.mem.as_ptr().add(off).write_bytes(0, len) };
                IoStatus::Success
            }
            IoType::Flush | IoType::Reset => IoStatus::Success,
            IoType::Compare => match compare(disk, off, io.iovs()) {
                None => IoStatus::Success,
                Some(offset) => IoStatus::Miscompare { offset },
            },
            IoType::CompareAndWrite => match compare(disk, off, io.compare_iovs()) {
                None => {
                    copy(disk, off, io.iovs(), true);
                    IoStatus::Success
                }
                Some(offset) => IoStatus::Miscompare { offset },
            },
        };
        // Completing here is fine: the layer defers it past this call.
        io.complete(status);
    }
}

/// The malloc bdev module, for the app's module list
/// (`rspdk_bdev::module_register`).
#[derive(Debug, Default)]
pub struct MallocModule;

impl rspdk_bdev::BdevModule for MallocModule {
    fn name(&self) -> &'static str {
        MODULE
    }

    fn register_rpcs(&self, reg: &rspdk_rpc::RpcRegistry) {
        register_rpcs(reg)
    }

    fn log_flags(&self) -> &'static [(&'static str, &'static str)] {
        &[("bdev_malloc", "rspdk_bdev_malloc")]
    }
}

/// Registers `bdev_malloc_create` and `bdev_malloc_delete`.
fn register_rpcs(reg: &rspdk_rpc::RpcRegistry) {
    use rspdk_bdev::rpc::{delete_method, method, NameParam};
    method(
        reg,
        "bdev_malloc_create",
        rspdk_rpc::StateMask::RUNTIME,
        |o: MallocOpts| create(o).map(|b| serde_json::json!(b.name())),
    );
    delete_method(reg, "bdev_malloc_delete", |p: &NameParam| &p.name, delete);
}
