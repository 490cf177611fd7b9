//! # rspdk_bdev — the block device layer (SPDK: lib/bdev, include/spdk/bdev.h, bdev_module.h)
//!
//! The common block interface every target and tool sits on.
//!
//! ## For modules
//! A module implements [`BdevBackend`] for each bdev it makes (SPDK's
//! function table: `create_channel`, `io_type_supported`,
//! `dump_info_json`, `write_config_json`, `destruct`) and a
//! [`BackendChannel`] per thread whose `submit` executes [`BdevIo`]s and
//! completes each exactly once with [`BdevIo::complete`], now or later, on
//! that thread. [`bdev_register`] publishes a bdev; [`BdevModule::examine`]
//! (modules registered with [`module_register`]) sees each new bdev so
//! virtual bdevs can stack on it.
//!
//! Virtual bdevs open their base with [`bdev_open`], claim it, take the
//! base's channel inside their own `create_channel`, and pass I/O down with
//! [`BdevIoChannel::forward`] (which hands the I/O back on error, so an
//! empty pool means "park with `queue_io_wait` and retry", never failure).
//!
//! ## The modules
//! Each lives in its own crate under `modules/bdev/` (`rspdk_bdev_malloc`,
//! `_null`, `_aio`, `_uring`, `_nvme`, `_passthru`, `_delay`, `_error`,
//! `_split`) with one [`BdevModule`] that registers its RPC methods, log
//! flags and save_config entries; the app registers the modules it ships
//! with [`module_register`]. This crate names none of them. What modules
//! share: [`mod@rpc`]'s typed method helpers, [`mod@vbdev`] for virtual bdevs,
//! [`mod@file`] for file-backed ones, [`complete_batch`].
//!
//! ## For consumers
//! [`bdev_open`] gives a [`BdevDesc`] (with an event callback for hot
//! remove and resize, run on the opening thread); [`BdevDesc::claim`] takes
//! exclusive write; [`BdevDesc::get_io_channel`] gives this thread's
//! [`BdevIoChannel`], whose `readv`/`writev`/`submit`/`read`/`write`/...
//! start I/O. The callback runs on the submitting thread, never inside the
//! submit call.
//!
//! ## The I/O path
//! Each I/O is a pooled object (no heap allocation per I/O in steady
//! state); an empty pool makes submission fail with
//! [`BdevError::NoMemory`], and [`BdevIoChannel::queue_io_wait`] resumes
//! the caller when an object frees. The layer splits I/O at the optimal
//! I/O boundary and the maximum transfer size, bounces buffers that are not
//! aligned as the bdev requires, applies QoS limits across threads, and
//! keeps per-channel statistics.

mod bdev;
mod channel;
pub mod file;
mod histogram;
mod io;
mod module_api;
mod qos;
pub mod rpc;
mod stats;
mod subsystem;
pub mod trace;
mod types;
pub mod vbdev;

pub use bdev::{
    auto_examine, bdev_get, bdev_open, bdev_register, bdev_unregister, bdevs, check_name,
    examine_allowlist, examine_by_name, module_register, modules, set_auto_examine, BackendChannel,
    Bdev, BdevBackend, BdevDesc, BdevModule,
};
pub use channel::BdevIoChannel;
pub use histogram::{Histogram, DEFAULT_GRANULARITY as HISTOGRAM_DEFAULT_GRANULARITY};
pub use io::{io_objects_created, io_pool_options, set_io_pool_options, BdevIo};
pub use module_api::complete_batch;
pub use qos::QosLimits;
pub use stats::{IoStats, ResetMode, TypeStats};
pub use subsystem::BdevSubsystem;
pub use types::{iovs_len, BdevError, BdevEvent, BdevProps, IoStatus, IoType, IoVec};
