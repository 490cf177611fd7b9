//! Small allocation-free building blocks shared by every rspdk layer (SPDK:
//! `lib/util`). Depends on nothing.
//!
//! - [`Callback`]: a one-shot `FnOnce(A)` stored inline (no heap allocation
//!   for closures up to [`CALLBACK_INLINE_BYTES`]), for per-I/O completion
//!   callbacks on data paths.
//! - [`CountingAlloc`]: a global allocator counting heap allocations
//!   ([`allocations`]), to check data paths allocate nothing.

mod alloc_count;
mod callback;

pub use alloc_count::{allocations, CountingAlloc};
pub use callback::{Callback, CALLBACK_INLINE_BYTES};
