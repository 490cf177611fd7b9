//! The trace file mapped into the process (fenced `unsafe` module: the
//! only raw memory of the crate). Other processes read the same pages, so
//! nothing here hands out a Rust reference into them: writes go through
//! raw pointers, and each ring's `next` is published with a release store
//! after its entry is written.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::format::{self, ENTRY_SIZE, MAX_ARGS, RINGS_OFFSET, RING_HEADER};

/// A created and mapped trace file.
pub(crate) struct Shm {
    base: *mut u8,
    len: usize,
    rings: u32,
    entries: u64,
    path: PathBuf,
}

// SAFETY: the mapping is process-wide memory; every access goes through
// bounds-checked offsets, header writes are serialised by the registry's
// lock, and each ring is written only by the one thread bound to it.
unsafe impl Send for Shm {}
// SAFETY: as above.
unsafe impl Sync for Shm {}

/// A ring's writer: where its `next` count and entries are. Held by the
/// one OS thread bound to the ring.
#[derive(Clone, Copy)]
pub(crate) struct RingWriter {
    next: *const AtomicU64,
    entries: *mut u8,
    mask: u64,
}

impl RingWriter {
    /// Appends one entry (overwriting the oldest when full).
    #[inline]
    pub(crate) fn push(&self, tsc: u64, tpoint: u16, object_id: u64, args: &[u64]) {
        // SAFETY: `next` points at the ring's 8-byte-aligned counter inside
        // the mapping, which is never unmapped (the `Shm` lives in a static
        // for the whole process), and only this ring's thread stores it.
        let next = unsafe { &*self.next };
        let seq = next.load(Ordering::Relaxed);
        let slot = (seq & self.mask) as usize * ENTRY_SIZE;
        let mut words = [0u64; ENTRY_SIZE / 8];
        words[0] = tsc.to_le();
        words[1] = (tpoint as u64).to_le();
        words[2] = object_id.to_le();
        for (i, a) in args.iter().take(MAX_ARGS).enumerate() {
            words[3 + i] = a.to_le();
        }
        // SAFETY: `slot` is below mask + 1 entries of ENTRY_SIZE bytes,
        // inside the ring the mapping holds; the destination is 8-byte
        // aligned (RINGS_OFFSET, ring strides and ENTRY_SIZE are multiples
        // of 64); readers in other processes take the bytes as they are and
        // check `next` for overwritten entries.
        unsafe {
            std::ptr::copy_nonoverlapping(
                words.as_ptr() as *const u8,
                self.entries.add(slot),
                ENTRY_SIZE,
            )
        };
        next.store(seq + 1, Ordering::Release);
        // Fetch the next entry's cache line now: writing a line that is not
        // cached stalls on reading it first, most of an event's cost.
        #[cfg(target_arch = "x86_64")]
        {
            let after = ((seq + 1) & self.mask) as usize * ENTRY_SIZE;
            // SAFETY: a prefetch is a hint that never faults, and `after`
            // is inside the ring anyway.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    self.entries.add(after) as *const i8,
                )
            };
        }
    }

    /// Events written so far.
    pub(crate) fn count(&self) -> u64 {
        // SAFETY: as in `push`.
        unsafe { &*self.next }.load(Ordering::Acquire)
    }
}

impl Shm {
    /// Creates `path` (replacing a stale one), sized for `rings` rings of
    /// `entries` entries, and maps it shared.
    pub(crate) fn create(path: &Path, rings: u32, entries: u64) -> std::io::Result<Shm> {
        let len = format::file_size(rings, entries);
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("trace file path contains a NUL byte"))?;
        // SAFETY: a valid NUL-terminated path; flags and mode are constants.
        let fd = unsafe {
            libc::open(
                cpath.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is the file just opened; the length fits off_t.
        let sized = unsafe { libc::ftruncate(fd, len as libc::off_t) } == 0;
        let err = std::io::Error::last_os_error();
        let base = if sized {
            // SAFETY: map the whole (just sized) file shared read-write; a
            // failure is MAP_FAILED, checked below.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            }
        } else {
            libc::MAP_FAILED
        };
        let err = if sized {
            std::io::Error::last_os_error()
        } else {
            err
        };
        // SAFETY: closing our descriptor; the mapping stays valid.
        unsafe { libc::close(fd) };
        if base == libc::MAP_FAILED {
            let _ = std::fs::remove_file(path);
            return Err(err);
        }
        Ok(Shm {
            base: base as *mut u8,
            len,
            rings,
            entries,
            path: path.to_path_buf(),
        })
    }

    /// Copies `bytes` to `offset` (header, names, descriptions, masks).
    pub(crate) fn write(&self, offset: usize, bytes: &[u8]) {
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > self.len)
        {
            debug_assert!(false, "trace file write out of bounds");
            return;
        }
        // SAFETY: the range was checked against the mapping's length.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(offset), bytes.len())
        };
    }

    /// The writer of ring `core` (None past the last ring).
    pub(crate) fn ring(&self, core: u32) -> Option<RingWriter> {
        if core >= self.rings {
            return None;
        }
        let off = RINGS_OFFSET + core as usize * format::ring_stride(self.entries);
        // SAFETY: `off` and the ring's entries lie inside the mapping
        // (file_size covers every ring); the counter is 8-byte aligned.
        unsafe {
            Some(RingWriter {
                next: self.base.add(off) as *const AtomicU64,
                entries: self.base.add(off + RING_HEADER),
                mask: self.entries - 1,
            })
        }
    }

    /// Zeroes every ring's count (`trace_clear`).
    pub(crate) fn clear(&self) {
        for core in 0..self.rings {
            if let Some(r) = self.ring(core) {
                // SAFETY: as in `RingWriter::push`.
                unsafe { &*r.next }.store(0, Ordering::Release);
            }
        }
    }

    /// Rings in the file.
    pub(crate) fn rings(&self) -> u32 {
        self.rings
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}
