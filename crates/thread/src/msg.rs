//! Fixed-size, allocation-free message cells (fenced `unsafe` module).
//!
//! A [`Msg`] stores a `FnOnce() + Send + 'static` closure *inline* in a
//! 48-byte buffer when it fits (size <= 48 bytes, alignment <= 8), so sending
//! such a message allocates nothing: the whole cell (one function pointer +
//! the buffer = 56 bytes; with the ring's sequence word a slot is exactly one
//! 64-byte cache line) is copied into a ring slot. Larger or
//! over-aligned closures are boxed first and the (thin) box pointer is stored
//! inline instead, so every closure is accepted.
//!
//! Invariants upheld by this module:
//! * `data` holds exactly one initialised value of the type the function
//!   pointer was instantiated with (`F` inline, or `Box<F>`), from
//!   construction until it is consumed by [`Msg::run`] or dropped by `Drop`.
//! * It is consumed exactly once: `run` takes `self` by value and suppresses
//!   `Drop` with `ManuallyDrop` before calling the consuming function pointer.

use std::mem::{align_of, size_of, ManuallyDrop, MaybeUninit};
use std::ptr;

/// Number of machine words stored inline.
const INLINE_WORDS: usize = 6;
/// Inline capacity in bytes (48 on 64-bit targets).
pub const INLINE_BYTES: usize = INLINE_WORDS * size_of::<usize>();

type Buf = MaybeUninit<[usize; INLINE_WORDS]>;

/// A type-erased one-shot closure stored inline (see module docs).
pub struct Msg {
    /// `op(data, true)` moves the closure out of the buffer and calls it;
    /// `op(data, false)` drops it in place without calling it.
    op: unsafe fn(*mut u8, bool),
    data: Buf,
}

// SAFETY: a `Msg` can only be built by `Msg::new` from an `F: Send`, and it
// owns that value (or a `Box<F>`) exclusively, so moving it to another OS
// thread is exactly as safe as moving the `F`.
unsafe impl Send for Msg {}

/// Whether `F` is stored inline (true) or boxed (false).
pub const fn fits_inline<F>() -> bool {
    size_of::<F>() <= INLINE_BYTES && align_of::<F>() <= align_of::<usize>()
}

impl Msg {
    /// Wraps a closure; allocates only if the closure does not fit inline.
    #[inline]
    pub fn new<F: FnOnce() + Send + 'static>(f: F) -> Msg {
        let mut data: Buf = MaybeUninit::uninit();
        if fits_inline::<F>() {
            // SAFETY: `F` fits in the buffer (size and alignment checked by
            // `fits_inline`), the buffer is freshly uninitialised and owned by
            // us, so writing one `F` there is valid; the matching function
            // pointers below read it back as `F`.
            unsafe { ptr::write(data.as_mut_ptr().cast::<F>(), f) };
            Msg {
                op: op_inline::<F>,
                data,
            }
        } else {
            let b: Box<F> = Box::new(f);
            // SAFETY: `Box<F>` (F: Sized) is one pointer: 8 bytes, 8-aligned,
            // which fits the buffer; the matching function pointers read it
            // back as `Box<F>`.
            unsafe { ptr::write(data.as_mut_ptr().cast::<Box<F>>(), b) };
            Msg {
                op: op_boxed::<F>,
                data,
            }
        }
    }

    /// Runs the closure, consuming the message.
    #[inline]
    pub fn run(self) {
        let mut this = ManuallyDrop::new(self);
        let op = this.op;
        // SAFETY: `data` holds the value `op` was instantiated for (module
        // invariant) and has not been consumed; `ManuallyDrop` prevents the
        // `Drop` impl from touching it again after `op` moves it out.
        unsafe { op(this.data.as_mut_ptr().cast::<u8>(), true) }
    }
}

impl Drop for Msg {
    fn drop(&mut self) {
        // SAFETY: an un-run message still owns its value (module invariant);
        // `op` matches its type and drops it exactly once.
        unsafe { (self.op)(self.data.as_mut_ptr().cast::<u8>(), false) }
    }
}

/// # Safety
/// `p` must point to an initialised `F` that the caller gives up ownership of
/// (it is called when `run`, dropped otherwise).
unsafe fn op_inline<F: FnOnce()>(p: *mut u8, run: bool) {
    if run {
        // SAFETY: guaranteed by the caller contract above.
        let f = unsafe { ptr::read(p.cast::<F>()) };
        f()
    } else {
        // SAFETY: guaranteed by the caller contract above.
        unsafe { ptr::drop_in_place(p.cast::<F>()) }
    }
}

/// # Safety
/// `p` must point to an initialised `Box<F>` that the caller gives up
/// (it is called when `run`, dropped otherwise).
unsafe fn op_boxed<F: FnOnce()>(p: *mut u8, run: bool) {
    if run {
        // SAFETY: guaranteed by the caller contract above.
        let b = unsafe { ptr::read(p.cast::<Box<F>>()) };
        (*b)()
    } else {
        // SAFETY: guaranteed by the caller contract above.
        unsafe { ptr::drop_in_place(p.cast::<Box<F>>()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn msg_plus_sequence_word_is_one_cache_line() {
        assert_eq!(size_of::<Msg>(), 56);
    }

    #[test]
    fn inline_and_boxed_run_and_drop() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let small = move || {
            h.fetch_add(1, Ordering::SeqCst);
        };
        Msg::new(small).run();
        let h = hits.clone();
        let big = [7u64; 16];
        let large = move || {
            h.fetch_add(big[3] as usize, Ordering::SeqCst);
        };
        Msg::new(large).run();
        assert_eq!(hits.load(Ordering::SeqCst), 8);
        // Dropped without running: captured Arc released, not called.
        let h = hits.clone();
        drop(Msg::new(move || {
            h.fetch_add(100, Ordering::SeqCst);
        }));
        let h2 = hits.clone();
        let big2 = [1u8; 200];
        drop(Msg::new(move || {
            h2.fetch_add(big2[0] as usize, Ordering::SeqCst);
        }));
        assert_eq!(hits.load(Ordering::SeqCst), 8);
        assert_eq!(Arc::strong_count(&hits), 1);
    }
}
