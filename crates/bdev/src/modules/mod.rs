//! Bdev modules that need no special hardware.

pub mod malloc;
pub mod null;
