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
mod io;
pub mod modules;
mod qos;
pub mod rpc;
mod stats;
mod subsystem;
mod types;

pub use bdev::{
    bdev_get, bdev_open, bdev_register, bdev_unregister, bdevs, module_register, modules,
    BackendChannel, Bdev, BdevBackend, BdevDesc, BdevModule,
};
pub use channel::{io_now_ns, BdevIoChannel};
pub use io::{io_objects_created, io_pool_options, set_io_pool_options, BdevIo};
pub use qos::QosLimits;
pub use stats::{IoStats, TypeStats};
pub use subsystem::BdevSubsystem;
pub use types::{iovs_len, BdevError, BdevEvent, BdevProps, IoStatus, IoType, IoVec};
