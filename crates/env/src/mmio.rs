//! A mapped PCI BAR: device registers reached through volatile loads and
//! stores, never through Rust references.

use std::os::fd::OwnedFd;

use crate::vfio_sys;

/// A memory-mapped BAR (from VFIO or from sysfs `resourceN`). Register
/// accesses are volatile and bounds-checked; an access outside the BAR
/// panics (a driver bug, not a device condition).
#[derive(Debug)]
pub struct Bar {
    ptr: *mut u8,
    len: usize,
    index: u32,
    /// Keeps the file the mapping came from open as long as the mapping.
    _file: Option<OwnedFd>,
}

// SAFETY: the BAR is device memory shared with the device; every access is
// a volatile load or store of a naturally aligned register, which is what the
// hardware expects from any thread.
unsafe impl Send for Bar {}
// SAFETY: as above: no access creates a Rust reference into the mapping.
unsafe impl Sync for Bar {}

impl Bar {
    /// Wraps a mapping.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must be a live shared mapping of BAR `index` that
    /// this `Bar` owns (it is unmapped on drop).
    pub(crate) unsafe fn from_raw(
        ptr: *mut u8,
        len: usize,
        index: u32,
        file: Option<OwnedFd>,
    ) -> Bar {
        Bar {
            ptr,
            len,
            index,
            _file: file,
        }
    }

    /// The BAR's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-sized BAR (never mapped in practice).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The BAR number.
    pub fn index(&self) -> u32 {
        self.index
    }

    #[inline]
    fn check(&self, off: usize, size: usize) {
        assert!(
            off % size == 0 && off + size <= self.len,
            "register access at {off:#x} (size {size}) outside BAR{} of {} bytes",
            self.index,
            self.len
        );
    }

    /// Reads the 32-bit register at `off`.
    #[inline]
    pub fn read32(&self, off: usize) -> u32 {
        self.check(off, 4);
        // SAFETY: in bounds and aligned (checked); the mapping lives as long
        // as `self`; device memory is only accessed volatilely.
        unsafe { std::ptr::read_volatile(self.ptr.add(off) as *const u32) }
    }

    /// Writes the 32-bit register at `off`.
    #[inline]
    pub fn write32(&self, off: usize, value: u32) {
        self.check(off, 4);
        // SAFETY: as in `read32`.
        unsafe { std::ptr::write_volatile(self.ptr.add(off) as *mut u32, value) }
    }

    /// Reads a 64-bit register at `off` as two 32-bit reads, low half first
    /// (what the NVMe spec allows hosts without 64-bit MMIO to do).
    #[inline]
    pub fn read64(&self, off: usize) -> u64 {
        let lo = self.read32(off) as u64;
        let hi = self.read32(off + 4) as u64;
        lo | (hi << 32)
    }

    /// Writes a 64-bit register at `off` as two 32-bit writes, low half first.
    #[inline]
    pub fn write64(&self, off: usize, value: u64) {
        self.write32(off, value as u32);
        self.write32(off + 4, (value >> 32) as u32);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours (from_raw's contract) and, with `self`
        // gone, nothing can access it any more.
        unsafe { vfio_sys::munmap(self.ptr, self.len) };
    }
}
