//! [`DataBuf`]: the bytes of a SCSI command's data phase.
//!
//! READ and WRITE data goes to and from the bdev in DMA memory drawn from
//! iobuf (SPDK's rule: every buffer a device touches comes from DMA
//! memory), so that a LUN on a PCIe NVMe bdev needs no bounce buffer. A
//! transfer over iobuf's large buffer size (132 KiB by default; SCSI allows
//! up to [`crate::lun::MAX_TRANSFER_BYTES`]) takes its DMA memory from the
//! env's heap instead. Small replies that no device touches (INQUIRY, MODE
//! SENSE, sense-less status) stay on the Rust heap.

use std::sync::OnceLock;

use rspdk_env::DmaBuf;
use rspdk_thread::iobuf::{self, IoBuf, IobufModule};

/// Data for or from the initiator.
pub enum DataBuf {
    /// Heap bytes: replies built by the SCSI layer, never given to a device.
    Heap(Vec<u8>),
    /// An iobuf buffer (DMA memory).
    Io(IoBuf),
    /// DMA memory from the env's heap, for transfers over iobuf's largest
    /// buffer.
    Dma(DmaBuf),
}

fn module() -> &'static IobufModule {
    static M: OnceLock<IobufModule> = OnceLock::new();
    M.get_or_init(|| iobuf::register_module("scsi"))
}

/// Why no DMA buffer could be had (the env's DMA memory is exhausted or
/// iobuf's pools could not be made); the command ends with a CHECK
/// CONDITION.
#[derive(Debug)]
pub struct NoDmaMemory(pub String);

impl DataBuf {
    /// An empty buffer (owns no memory).
    pub const fn empty() -> DataBuf {
        DataBuf::Heap(Vec::new())
    }

    /// A DMA buffer of `len` bytes for a data transfer, now or later: an
    /// iobuf buffer when `len` fits iobuf's large size (waiting on this
    /// thread for one to be freed when the pools are exhausted, as SPDK's
    /// `spdk_iobuf_get` with a callback), else one from the env's DMA heap.
    /// `then` runs exactly once, possibly before this returns. The contents
    /// are whatever the memory last held: the caller fills all of it (a
    /// read by the bdev, a copy of the initiator's data).
    pub fn dma_then(len: usize, then: impl FnOnce(Result<DataBuf, NoDmaMemory>) + 'static) {
        if len <= iobuf::options().large_bufsize as usize {
            return iobuf::get_then(module(), len, move |b| match b {
                Ok(b) => then(Ok(DataBuf::Io(b))),
                // The pools cannot be made (or the size changed): fall
                // back to the env's heap.
                Err(_) => then(dma_heap(len)),
            });
        }
        then(dma_heap(len))
    }

    /// A DMA buffer of `len` bytes if one can be had without waiting:
    /// `None` when iobuf's pool for the size is exhausted (then
    /// [`DataBuf::dma_then`] waits for one).
    pub fn dma_now(len: usize) -> Option<Result<DataBuf, NoDmaMemory>> {
        if len <= iobuf::options().large_bufsize as usize {
            match iobuf::get(module(), len) {
                Ok(Some(b)) => return Some(Ok(DataBuf::Io(b))),
                Ok(None) => return None,
                Err(_) => {}
            }
        }
        Some(dma_heap(len))
    }

    /// The bytes, for reading.
    pub fn as_slice(&self) -> &[u8] {
        self
    }

    /// True when this is DMA memory a device may be handed.
    pub fn is_dma(&self) -> bool {
        !matches!(self, DataBuf::Heap(_))
    }

    /// Shortens the data to `len` bytes (no effect when already shorter).
    pub fn truncate(&mut self, len: usize) {
        match self {
            DataBuf::Heap(v) => v.truncate(len),
            DataBuf::Io(b) => {
                if len < b.len() {
                    b.set_len(len)
                }
            }
            DataBuf::Dma(b) => b.truncate(len),
        }
    }

    /// Drops the data (the buffer goes back where it came from).
    pub fn clear(&mut self) {
        *self = DataBuf::empty();
    }
}

/// A DMA buffer from the env's heap (iobuf's pools do not serve the
/// size, or cannot be made).
fn dma_heap(len: usize) -> Result<DataBuf, NoDmaMemory> {
    DmaBuf::uninit_aligned(len.max(1), 4096, rspdk_env::SOCKET_ID_ANY)
        .map(|mut b| {
            b.truncate(len);
            DataBuf::Dma(b)
        })
        .map_err(|e| NoDmaMemory(e.to_string()))
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
            DataBuf::Io(b) => b,
            DataBuf::Dma(b) => b,
        }
    }
}

impl std::ops::DerefMut for DataBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            DataBuf::Heap(v) => v,
            DataBuf::Io(b) => b,
            DataBuf::Dma(b) => b,
        }
    }
}

impl std::fmt::Debug for DataBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            DataBuf::Heap(_) => "heap",
            DataBuf::Io(_) => "iobuf",
            DataBuf::Dma(_) => "dma",
        };
        write!(f, "DataBuf({kind}, {} bytes)", self.len())
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
