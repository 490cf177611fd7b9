//! The bdev layer's vocabulary: I/O types and statuses, buffer vectors,
//! block device properties, events, errors.

use serde::Serialize;

/// What an I/O does (SPDK: `enum spdk_bdev_io_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoType {
    /// Read blocks into the buffers.
    Read,
    /// Write blocks from the buffers.
    Write,
    /// Deallocate blocks (reads of them return zeroes afterwards where the
    /// module says so).
    Unmap,
    /// Make written data durable.
    Flush,
    /// Reset the device: outstanding I/O is aborted or completed first.
    Reset,
    /// Write zeroes to blocks without a data buffer.
    WriteZeroes,
    /// Compare blocks with the buffers: `IoStatus::Miscompare` if they differ.
    Compare,
    /// Compare, and write only if equal, as one operation.
    CompareAndWrite,
}

impl IoType {
    /// Every type, in the order SPDK's `supported_io_types` lists them.
    pub const ALL: [IoType; 8] = [
        IoType::Read,
        IoType::Write,
        IoType::Unmap,
        IoType::Flush,
        IoType::Reset,
        IoType::WriteZeroes,
        IoType::Compare,
        IoType::CompareAndWrite,
    ];

    /// SPDK's JSON name.
    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Unmap => "unmap",
            IoType::Flush => "flush",
            IoType::Reset => "reset",
            IoType::WriteZeroes => "write_zeroes",
            IoType::Compare => "compare",
            IoType::CompareAndWrite => "compare_and_write",
        }
    }

    /// True for types that change data.
    pub fn writes(self) -> bool {
        matches!(
            self,
            IoType::Write | IoType::Unmap | IoType::WriteZeroes | IoType::CompareAndWrite
        )
    }

    /// True for types that carry data buffers.
    pub fn has_data(self) -> bool {
        matches!(
            self,
            IoType::Read | IoType::Write | IoType::Compare | IoType::CompareAndWrite
        )
    }

    /// A dense index (0..COUNT) for per-type tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How an I/O ended (SPDK: `enum spdk_bdev_io_status`, with the detail a
/// target needs to answer in its own protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStatus {
    /// Done.
    Success,
    /// Failed for a reason the module does not detail.
    Failed,
    /// A medium or device error (SCSI: MEDIUM ERROR; NVMe: Unrecovered Read Error).
    MediumError,
    /// Compare found a difference at this byte offset into the I/O.
    Miscompare {
        /// First differing byte.
        offset: u64,
    },
    /// Aborted (by a reset or because the bdev went away).
    Aborted,
    /// The bdev was removed: the I/O was not done.
    Removed,
    /// An NVMe status from an NVMe-backed bdev.
    Nvme {
        /// Status code type.
        sct: u8,
        /// Status code.
        sc: u8,
    },
}

impl IoStatus {
    /// True for success.
    pub fn is_ok(self) -> bool {
        self == IoStatus::Success
    }
}

/// One buffer of an I/O: an address and a length (SPDK: `struct iovec`).
/// It is a raw description; whoever submits the I/O keeps the memory alive
/// and unshared until completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoVec {
    /// First byte.
    pub base: *mut u8,
    /// Length in bytes.
    pub len: usize,
}

impl IoVec {
    /// Describes `len` bytes at `base`.
    pub fn new(base: *mut u8, len: usize) -> IoVec {
        IoVec { base, len }
    }
}

/// Total bytes described by `iovs`.
pub fn iovs_len(iovs: &[IoVec]) -> usize {
    iovs.iter().map(|v| v.len).sum()
}

/// What a bdev is: fixed at registration except the block count (resize).
#[derive(Debug, Clone, Serialize)]
pub struct BdevProps {
    /// Unique name.
    pub name: String,
    /// Other names it answers to.
    pub aliases: Vec<String>,
    /// Stable identity.
    pub uuid: uuid::Uuid,
    /// Product name shown by `bdev_get_bdevs` (SPDK: "Malloc disk", ...).
    pub product_name: String,
    /// Bytes per block (a power of two, at least 512 unless metadata says otherwise).
    pub block_size: u32,
    /// Number of blocks.
    pub num_blocks: u64,
    /// Writes must be multiples of this many blocks.
    pub write_unit_size: u32,
    /// Buffers must be aligned to this many bytes (a power of two; 1 = any).
    /// Unaligned buffers are bounced by the layer.
    pub required_alignment: u32,
    /// I/O crossing a multiple of this many blocks is split (0 = none).
    pub optimal_io_boundary: u64,
    /// I/O longer than this many blocks is split (0 = no limit).
    pub max_transfer_blocks: u64,
    /// Metadata bytes per block (reserved; 0).
    pub md_size: u32,
    /// Metadata interleaved with data (reserved).
    pub md_interleave: bool,
    /// DIF type (reserved; 0 = none).
    pub dif_type: u8,
    /// The device has a volatile write cache (flush matters).
    pub write_cache: bool,
    /// Physical block size in bytes (SPDK: `phys_blocklen`); 0 = the
    /// block size.
    pub physical_block_size: u32,
    /// Preferred write alignment in blocks (0 = none given; NVMe NPWA).
    pub preferred_write_alignment: u32,
    /// Preferred write granularity in blocks (0 = none given; NVMe NPWG).
    pub preferred_write_granularity: u32,
    /// Optimal write size in blocks (0 = none given; NVMe NOWS).
    pub optimal_write_size: u32,
    /// Preferred unmap alignment in blocks (0 = none given; NVMe NPDA).
    pub preferred_unmap_alignment: u32,
    /// Preferred unmap granularity in blocks (0 = none given; NVMe NPDG).
    pub preferred_unmap_granularity: u32,
    /// The NUMA node whose memory backs the bdev, if the module knows
    /// (-1: any node).
    pub numa_id: Option<i32>,
    /// The backend hands buffers to a device (a PCIe NVMe controller), so
    /// every data buffer must be DMA memory the env can translate; the
    /// layer bounces any other buffer (heap memory from a target, say)
    /// through DMA memory.
    pub requires_dma: bool,
}

impl BdevProps {
    /// Properties with SPDK's defaults for everything but name, block size
    /// and count.
    pub fn new(name: &str, block_size: u32, num_blocks: u64, product_name: &str) -> BdevProps {
        BdevProps {
            name: name.to_string(),
            aliases: Vec::new(),
            uuid: uuid::Uuid::new_v4(),
            product_name: product_name.to_string(),
            block_size,
            num_blocks,
            write_unit_size: 1,
            required_alignment: 1,
            optimal_io_boundary: 0,
            max_transfer_blocks: 0,
            md_size: 0,
            md_interleave: false,
            dif_type: 0,
            write_cache: false,
            physical_block_size: 0,
            preferred_write_alignment: 0,
            preferred_write_granularity: 0,
            optimal_write_size: 0,
            preferred_unmap_alignment: 0,
            preferred_unmap_granularity: 0,
            numa_id: None,
            requires_dma: false,
        }
    }
}

/// What a descriptor's event callback is told (SPDK: `enum spdk_bdev_event_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BdevEvent {
    /// The bdev is going away: close the descriptor; new I/O fails.
    Remove,
    /// The block count changed.
    Resize {
        /// The new block count.
        num_blocks: u64,
    },
}

/// Errors of the bdev layer.
#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    /// No bdev with that name or alias.
    #[error("no bdev named '{0}'")]
    NotFound(String),
    /// The name or an alias is taken.
    #[error("bdev name '{0}' is already in use")]
    Exists(String),
    /// Another bdev has this UUID.
    #[error("uuid {uuid} is already used by bdev '{bdev}': give another uuid or omit it to generate one")]
    UuidExists {
        /// The UUID asked for.
        uuid: uuid::Uuid,
        /// The bdev that has it.
        bdev: String,
    },
    /// A bad parameter; the message names it.
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    /// The bdev is claimed by a module, so it cannot be opened for writing or claimed again.
    #[error("bdev '{bdev}' is claimed by module '{module}'")]
    Claimed {
        /// The bdev.
        bdev: String,
        /// The module holding it.
        module: String,
    },
    /// The bdev is being removed.
    #[error("bdev '{0}' is being removed")]
    Removing(String),
    /// The I/O pool is empty: queue with `BdevIoChannel::queue_io_wait` and retry.
    #[error("no bdev_io available: queue with queue_io_wait and retry")]
    NoMemory,
    /// The I/O type is not supported by this bdev.
    #[error("bdev '{bdev}' does not support {io_type:?}")]
    Unsupported {
        /// The bdev.
        bdev: String,
        /// The type.
        io_type: IoType,
    },
    /// Blocks beyond the end.
    #[error("blocks {offset}+{count} are beyond the end of '{bdev}' ({num_blocks} blocks)")]
    OutOfRange {
        /// The bdev.
        bdev: String,
        /// First block.
        offset: u64,
        /// Block count.
        count: u64,
        /// Blocks the bdev has.
        num_blocks: u64,
    },
    /// The descriptor was opened read-only.
    #[error("descriptor for '{0}' is read-only")]
    ReadOnly(String),
    /// A channel could not be created.
    #[error("no I/O channel for '{bdev}': {detail}")]
    Channel {
        /// The bdev.
        bdev: String,
        /// Why.
        detail: String,
    },
    /// An env (DMA memory) error.
    #[error(transparent)]
    Env(#[from] rspdk_env::EnvError),
    /// A module-specific failure with the errno SPDK answers with.
    #[error("{message}")]
    Module {
        /// errno (positive).
        errno: i32,
        /// What failed.
        message: String,
    },
}

impl BdevError {
    /// The errno SPDK returns for this condition.
    pub fn errno(&self) -> i32 {
        match self {
            BdevError::NotFound(_) => libc::ENODEV,
            BdevError::Exists(_) | BdevError::UuidExists { .. } => libc::EEXIST,
            BdevError::InvalidParam(_) | BdevError::OutOfRange { .. } => libc::EINVAL,
            BdevError::Claimed { .. } | BdevError::ReadOnly(_) => libc::EPERM,
            BdevError::Removing(_) => libc::ENODEV,
            BdevError::NoMemory => libc::ENOMEM,
            BdevError::Unsupported { .. } => libc::ENOTSUP,
            BdevError::Channel { .. } => libc::ENOMEM,
            BdevError::Env(e) => e.errno(),
            BdevError::Module { errno, .. } => *errno,
        }
    }
}
