//! [`DmaBuf`]: an owned DMA buffer with safe access while the program owns
//! it.
//!
//! Rust references must never point at memory a device may write behind
//! the compiler's back. A `DmaBuf` (like an iobuf `IoBuf`) gives out
//! `&[u8]`/`&mut [u8]` only through `&self`/`&mut self`; to start an I/O
//! the owner moves the buffer into the request (the bdev I/O, the NVMe/TCP
//! command, the SCSI task), which hands the device only its address and
//! keeps the buffer until the completion: while the device may touch it no
//! code holds the buffer, so no reference to it can exist.

use std::ptr::NonNull;

use crate::alloc::{dma_free, dma_malloc, dma_socket_of, SOCKET_ID_ANY};
use crate::error::Result;
use crate::vtophys::vtophys;

/// An owned DMA buffer. Dropping it frees the memory.
#[derive(Debug)]
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a DmaBuf owns its memory exclusively, like a Box<[u8]>; the heap's
// free path is thread-safe.
unsafe impl Send for DmaBuf {}
// SAFETY: shared access only yields `&[u8]`, as for Box<[u8]>.
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// A buffer of `len` bytes, zeroed, aligned to 64 bytes, on any socket.
    pub fn zeroed(len: usize) -> Result<DmaBuf> {
        Self::zeroed_aligned(len, 64, SOCKET_ID_ANY)
    }

    /// A zeroed buffer with the given power-of-two alignment on `socket`.
    pub fn zeroed_aligned(len: usize, align: usize, socket: i32) -> Result<DmaBuf> {
        let mut b = Self::uninit_aligned(len, align, socket)?;
        b.fill(0);
        Ok(b)
    }

    /// A buffer whose contents are whatever the memory last held (no
    /// zeroing cost). The bytes are always initialised: heap memory starts as
    /// zeroed pages and is only ever written as bytes.
    pub fn uninit_aligned(len: usize, align: usize, socket: i32) -> Result<DmaBuf> {
        let ptr = dma_malloc(len, align, socket, None)?;
        Ok(DmaBuf { ptr, len })
    }

    /// Takes ownership of a buffer from [`dma_malloc`].
    ///
    /// # Safety
    /// `ptr` must be a live buffer from `dma_malloc` of at least `len`
    /// bytes that nothing else uses or frees.
    pub unsafe fn from_raw(ptr: NonNull<u8>, len: usize) -> DmaBuf {
        DmaBuf { ptr, len }
    }

    /// Gives up ownership; free the pointer with `dma_free`.
    pub fn into_raw(self) -> (NonNull<u8>, usize) {
        let parts = (self.ptr, self.len);
        std::mem::forget(self);
        parts
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Exposes only the first `len` bytes (no effect when `len` is not
    /// shorter); the memory is freed whole when the buffer is dropped.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// True when no byte is exposed (after [`DmaBuf::truncate`] to 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer's address.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The buffer's address, for writing.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The IOVA of the first byte.
    pub fn iova(&self) -> u64 {
        vtophys(self.ptr.as_ptr() as usize, None)
    }

    /// The IOVA of byte `offset` and how many bytes from there are
    /// contiguous in IOVA space (capped at the buffer's end).
    pub fn iova_run(&self, offset: usize) -> Option<(u64, usize)> {
        if offset >= self.len {
            return None;
        }
        let mut len = (self.len - offset) as u64;
        let iova = vtophys(self.ptr.as_ptr() as usize + offset, Some(&mut len));
        Some((iova, len as usize))
    }

    /// The socket the memory is on.
    pub fn socket(&self) -> u32 {
        dma_socket_of(self.ptr).unwrap_or(0)
    }
}

impl std::ops::Deref for DmaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the buffer owns `len` initialised bytes (see
        // `uninit_aligned`), and no device has it while it is a DmaBuf.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for DmaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // SAFETY: we own the buffer and no device has it.
        if let Err(e) = unsafe { dma_free(self.ptr) } {
            tracing::error!(error = %e, "DmaBuf could not be freed");
        }
    }
}
