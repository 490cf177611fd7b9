//! For file-backed bdev modules (aio, uring): opening a file or block
//! device: O_DIRECT
//! where the filesystem allows it, the logical block size and the size.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use crate::types::BdevError;

/// `BLKSSZGET`: logical block size of a block device (an `int`).
const BLKSSZGET: libc::c_ulong = 0x1268;
/// `BLKGETSIZE64`: size of a block device in bytes (a `u64`).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// An open backing file.
pub struct Target {
    /// The open file or block device.
    pub file: File,
    /// Opened with O_DIRECT.
    pub direct: bool,
    /// Logical block size in bytes (the device's, or the one asked for).
    pub block_size: u32,
    /// Size in blocks.
    pub num_blocks: u64,
    /// A block device rather than a regular file.
    pub is_block_device: bool,
}

fn io_err(filename: &str, what: &str, e: std::io::Error) -> BdevError {
    BdevError::InvalidParam(format!("filename '{filename}': {what}: {e}"))
}

/// Opens `filename` (O_DIRECT, or buffered with a warning where refused)
/// and works out its block size (`block_size` if given, else the device's
/// logical block size, 512 for files) and block count.
pub fn open(filename: &str, readonly: bool, block_size: Option<u32>) -> Result<Target, BdevError> {
    if filename.is_empty() {
        return Err(BdevError::InvalidParam("filename is empty".into()));
    }
    if let Some(bs) = block_size {
        if bs < 512 || !bs.is_power_of_two() {
            return Err(BdevError::InvalidParam(format!(
                "block_size {bs} must be a power of two and at least 512"
            )));
        }
    }
    let open_with = |direct: bool| {
        let mut o = OpenOptions::new();
        o.read(true).write(!readonly);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(filename)
    };
    let (file, direct) = match open_with(true) {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                filename = ?filename,
                "the filesystem refuses O_DIRECT: using buffered I/O"
            );
            (
                open_with(false).map_err(|e| io_err(filename, "cannot open", e))?,
                false,
            )
        }
        Err(e) => return Err(io_err(filename, "cannot open", e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| io_err(filename, "cannot stat", e))?;
    let is_block_device = meta.file_type().is_block_device();
    let (detected, size) = if is_block_device {
        let mut lbs: libc::c_int = 0;
        let mut bytes: u64 = 0;
        // SAFETY: both ioctls write one value of the type given to the
        // pointers, which point at live locals; the fd is open.
        let (r1, r2) = unsafe {
            (
                libc::ioctl(
                    file.as_raw_fd(),
                    BLKSSZGET as _,
                    &mut lbs as *mut libc::c_int,
                ),
                libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut bytes as *mut u64),
            )
        };
        if r1 != 0 || r2 != 0 {
            return Err(io_err(
                filename,
                "block device ioctl failed",
                std::io::Error::last_os_error(),
            ));
        }
        (Some(lbs as u32), bytes)
    } else if meta.is_file() {
        (None, meta.len())
    } else {
        return Err(BdevError::InvalidParam(format!(
            "filename '{filename}' is neither a regular file nor a block device"
        )));
    };
    let bs = match (block_size, detected) {
        (Some(bs), Some(d)) if bs < d => {
            return Err(BdevError::InvalidParam(format!(
                "block_size {bs} is smaller than the logical block size {d} of '{filename}'"
            )))
        }
        (Some(bs), _) => bs,
        (None, Some(d)) if d >= 512 && d.is_power_of_two() => d,
        (None, _) => 512,
    };
    let num_blocks = size / bs as u64;
    if num_blocks == 0 {
        return Err(BdevError::InvalidParam(format!(
            "filename '{filename}' has size {size} bytes, less than one block of {bs}: give it a size first (e.g. truncate -s)"
        )));
    }
    Ok(Target {
        file,
        direct,
        block_size: bs,
        num_blocks,
        is_block_device,
    })
}

/// The current size of an open target in bytes.
pub fn size_bytes(file: &File, is_block_device: bool) -> std::io::Result<u64> {
    if is_block_device {
        let mut bytes: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 to the live local.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut bytes as *mut u64) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(bytes)
    } else {
        Ok(file.metadata()?.len())
    }
}

/// Runs fallocate on the target: punch a hole (unmap) or zero a range.
pub fn fallocate(file: &File, punch: bool, offset: u64, len: u64) -> bool {
    let mode = if punch {
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
    } else {
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
    };
    // SAFETY: a plain syscall on an open fd; no memory is passed.
    unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) == 0 }
}

/// Resizes `b` to its file's current size (`bdev_aio_rescan`,
/// `bdev_uring_rescan`); `size` is the file's size as just read. Returns
/// the block count.
pub fn rescan_to(
    b: &crate::Bdev,
    module: &str,
    filename: &str,
    size: std::io::Result<u64>,
) -> Result<u64, BdevError> {
    let size = size.map_err(|e| {
        BdevError::InvalidParam(format!("filename {filename:?}: cannot read its size: {e}"))
    })?;
    let blocks = size / b.block_size() as u64;
    if blocks == 0 {
        return Err(BdevError::InvalidParam(format!(
            "filename {filename:?} is now smaller than one block"
        )));
    }
    if blocks != b.num_blocks() {
        tracing::info!(
            bdev = b.name(),
            old = b.num_blocks(),
            new = blocks,
            "{module} bdev resized"
        );
        b.resize(blocks)?;
    }
    Ok(blocks)
}
