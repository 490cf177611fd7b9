//! Small allocation-free building blocks shared by every rspdk layer (SPDK:
//! `lib/util`). Depends on nothing.
//!
//! - [`Callback`]: a one-shot `FnOnce(A)` stored inline (no heap allocation
//!   for closures up to [`CALLBACK_INLINE_BYTES`]), for per-I/O completion
//!   callbacks on data paths.
//! - [`CountingAlloc`]: a global allocator counting heap allocations
//!   ([`allocations`]), to check data paths allocate nothing.
//! - [`outln!`]: `println!` for command-line tools that exits cleanly on
//!   a closed pipe or a full disk instead of panicking.

mod alloc_count;
mod callback;
pub mod clock;
pub mod stdout;

pub use alloc_count::{allocations, CountingAlloc};
pub use callback::{Callback, CALLBACK_INLINE_BYTES};
