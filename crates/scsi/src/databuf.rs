//! [`DataBuf`]: the bytes of a SCSI command's data phase.
//!
//! READ and WRITE data goes to and from the bdev in DMA memory drawn from
//! iobuf (SPDK's rule: every buffer a device touches comes from DMA
//! memory), so that a LUN on a PCIe NVMe bdev needs no bounce buffer
//! (`rspdk_thread::iobuf::DmaData`: a transfer over iobuf's large buffer
//! size, SCSI allowing up to [`crate::lun::MAX_TRANSFER_BYTES`], takes DMA
//! memory from the env's heap instead). Small replies that no device
//! touches (INQUIRY, MODE SENSE, ...) stay on the Rust heap.

use std::sync::OnceLock;

use rspdk_thread::iobuf::{self, DmaData, IobufModule};

/// Data for or from the initiator.
pub enum DataBuf {
    /// Heap bytes: replies built by the SCSI layer, never given to a device.
    Heap(Vec<u8>),
    /// DMA memory (iobuf, or the env's heap for large transfers).
    Dma(DmaData),
}

fn module() -> &'static IobufModule {
    static M: OnceLock<IobufModule> = OnceLock::new();
    M.get_or_init(|| iobuf::register_module("scsi"))
}

/// Why no DMA buffer could be had (the env's DMA memory is exhausted); the
/// command ends with BUSY.
#[derive(Debug)]
pub struct NoDmaMemory(pub String);

impl DataBuf {
    /// An empty buffer (owns no memory).
    pub const fn empty() -> DataBuf {
        DataBuf::Heap(Vec::new())
    }

    /// A DMA buffer of `len` bytes for a data transfer, now or later (when
    /// iobuf's pool is exhausted, the next buffer freed on this thread, as
    /// SPDK's `spdk_iobuf_get` with a callback). `then` runs exactly once,
    /// possibly before this returns. The contents are whatever the memory
    /// last held: the caller fills all of it (a read by the bdev, a copy of
    /// the initiator's data).
    pub fn dma_then(len: usize, then: impl FnOnce(Result<DataBuf, NoDmaMemory>) + 'static) {
        DmaData::get_then(module(), len, move |d| {
            then(d.map(DataBuf::Dma).map_err(NoDmaMemory))
        })
    }

    /// A DMA buffer of `len` bytes if one can be had without waiting:
    /// `None` when iobuf's pool for the size is exhausted (then
    /// [`DataBuf::dma_then`] waits for one).
    pub fn dma_now(len: usize) -> Option<Result<DataBuf, NoDmaMemory>> {
        DmaData::get_now(module(), len).map(|d| d.map(DataBuf::Dma).map_err(NoDmaMemory))
    }

    /// Shortens the data to `len` bytes (no effect when already shorter).
    pub fn truncate(&mut self, len: usize) {
        match self {
            DataBuf::Heap(v) => v.truncate(len),
            DataBuf::Dma(b) => b.truncate(len),
        }
    }

    /// Drops the data (the buffer goes back where it came from).
    pub fn clear(&mut self) {
        *self = DataBuf::empty();
    }
}

impl Default for DataBuf {
    fn default() -> Self {
        DataBuf::empty()
    }
}

impl From<Vec<u8>> for DataBuf {
    fn from(v: Vec<u8>) -> Self {
        DataBuf::Heap(v)
    }
}

impl std::ops::Deref for DataBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            DataBuf::Heap(v) => v,
            DataBuf::Dma(b) => b,
        }
    }
}

impl std::ops::DerefMut for DataBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            DataBuf::Heap(v) => v,
            DataBuf::Dma(b) => b,
        }
    }
}

impl std::fmt::Debug for DataBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataBuf::Heap(v) => write!(f, "DataBuf(heap, {} bytes)", v.len()),
            DataBuf::Dma(d) => write!(f, "DataBuf({d:?})"),
        }
    }
}

/// A copy on the heap (results are cloned only by tests and logs).
impl Clone for DataBuf {
    fn clone(&self) -> Self {
        DataBuf::Heap(self.to_vec())
    }
}

impl PartialEq for DataBuf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for DataBuf {}

impl PartialEq<Vec<u8>> for DataBuf {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == **other
    }
}

impl PartialEq<[u8]> for DataBuf {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}
