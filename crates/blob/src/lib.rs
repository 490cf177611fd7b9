//! # rspdk_blob — the blobstore (SPDK: lib/blob, include/spdk/blob.h)
//!
//! A blobstore lays SPDK's on-disk format over a bdev: a super block, three
//! allocation masks (metadata pages, clusters, blob ids), and a region of
//! 4 KiB metadata pages in which each blob is a chain of pages holding
//! descriptors (flags, xattrs, its cluster map). Blobs are sized in
//! clusters and read and written in io units (the bdev's block size).
//! A store written by SPDK v26.05 opens here and one written here opens in
//! SPDK; `docs/blob.md` has the byte layout.
//!
//! - [`wire`]: the on-disk structures, sans I/O (parse with an error naming
//!   what is wrong, emit).
//! - [`Blobstore`]: init, load (rebuilding the masks of a store that was
//!   not unloaded cleanly), unload; blob create, open, delete, iterate.
//! - [`Blob`]: resize, xattrs, read-only, sync of its metadata, and the data
//!   path (read, write, unmap, write zeroes) with thin provisioning.
//!
//! Everything runs on the thread that made the store (run to completion,
//! callbacks on that thread), as SPDK's metadata thread does.

pub mod wire;

mod blob;
pub mod meta;
mod recover;
mod store;

pub use blob::{Blob, DataDone};
pub use meta::{BlobClearMethod, BlobMeta};
pub use store::{BlobOpts, Blobstore, BlobstoreOpts, ClearMethod};

use rspdk_bdev::{BdevError, IoStatus};

/// What went wrong in a blobstore operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BlobError {
    /// An on-disk structure is corrupt or unsupported.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// A blob's metadata (or the store's, id `BLOBID_INVALID`) is inconsistent.
    #[error("blob {id:#x}: corrupt metadata: {why}")]
    Corrupt {
        /// The blob.
        id: u64,
        /// What is wrong.
        why: String,
    },
    /// The blob sets invalid flags this version does not know.
    #[error("blob {id:#x} sets unknown invalid flags {flags:#x}: written by a newer blobstore, it cannot be opened")]
    UnknownFlags {
        /// The blob.
        id: u64,
        /// The unknown flags.
        flags: u64,
    },
    /// The bdev layer refused (its message).
    #[error("bdev: {0}")]
    Bdev(String),
    /// An I/O failed.
    #[error("{what} failed: {status:?}")]
    Io {
        /// Which I/O.
        what: &'static str,
        /// The bdev status.
        status: IoStatus,
    },
    /// No such blob.
    #[error("no blob {0:#x}")]
    NotFound(u64),
    /// No such xattr.
    #[error("no xattr {0:?}")]
    NoXattr(String),
    /// Not enough free clusters.
    #[error("not enough free clusters: {needed} needed, {free} free")]
    NoSpace {
        /// Clusters needed.
        needed: u64,
        /// Clusters free.
        free: u64,
    },
    /// The metadata region is full.
    #[error("no free metadata page: the store holds no more blobs or metadata (init with more md pages)")]
    NoMdPages,
    /// The blob is read-only.
    #[error("blob {0:#x} is read-only")]
    ReadOnly(u64),
    /// The object is in use.
    #[error("busy: {0}")]
    Busy(String),
    /// An I/O outside the blob.
    #[error("I/O of {units} io units at {offset} is outside the blob's {size}")]
    OutOfRange {
        /// Offset in io units.
        offset: u64,
        /// Length in io units.
        units: u64,
        /// Blob size in io units.
        size: u64,
    },
    /// A bad argument.
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    /// Out of memory.
    #[error("out of memory: {0}")]
    NoMemory(String),
}

impl From<BdevError> for BlobError {
    fn from(e: BdevError) -> Self {
        BlobError::Bdev(e.to_string())
    }
}
