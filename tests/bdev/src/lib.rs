//! Integration tests of the bdev layer with its modules: the layer
//! (`crates/bdev`) names no module, so the tests that need real bdevs
//! (malloc, null, aio, uring, the virtual ones) live in this crate's
//! `tests/`. It has no library code.
