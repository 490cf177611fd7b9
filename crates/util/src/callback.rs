//! A one-shot callback stored inline (fenced `unsafe` module).
//!
//! Data paths complete every I/O through a caller-supplied closure; boxing
//! each one would allocate per I/O. A [`Callback<A>`] keeps a closure of up
//! to [`CALLBACK_INLINE_BYTES`] bytes (alignment up to 8) inside itself and
//! boxes only larger ones, so typical callbacks (a few pointers and
//! integers, a `DmaBuf`) cost no allocation.
//!
//! Invariants this module keeps:
//! * `data` holds exactly one initialised value of the type `op` was
//!   instantiated for (`F` inline, or `Box<F>`) from construction until it
//!   is consumed by [`Callback::call`] or dropped by `Drop`.
//! * It is consumed exactly once: `call` takes `self` by value and disables
//!   `Drop` with `ManuallyDrop` before the consuming call.
//!
//! A `Callback` is not `Send`: completions run on the thread that submitted.

use std::marker::PhantomData;
use std::mem::{align_of, size_of, ManuallyDrop, MaybeUninit};
use std::ptr;

const WORDS: usize = 6;
/// Closures up to this many bytes are stored without allocating.
pub const CALLBACK_INLINE_BYTES: usize = WORDS * size_of::<usize>();

type Buf = MaybeUninit<[usize; WORDS]>;

/// A type-erased `FnOnce(A)` stored inline when it fits.
pub struct Callback<A> {
    /// `op(data, Some(arg))` moves the closure out and calls it;
    /// `op(data, None)` drops it in place.
    op: unsafe fn(*mut u8, Option<A>),
    data: Buf,
    /// Not Send or Sync: the closure need not be.
    _not_send: PhantomData<*const ()>,
}

const fn fits<F>() -> bool {
    size_of::<F>() <= CALLBACK_INLINE_BYTES && align_of::<F>() <= align_of::<usize>()
}

/// # Safety
/// `data` must hold an initialised `F` that is not used again.
unsafe fn op_inline<A, F: FnOnce(A)>(data: *mut u8, arg: Option<A>) {
    // SAFETY: per the function contract, `data` holds an `F` we now own.
    let f = unsafe { ptr::read(data.cast::<F>()) };
    match arg {
        Some(a) => f(a),
        None => drop(f),
    }
}

/// # Safety
/// `data` must hold an initialised `Box<F>` that is not used again.
unsafe fn op_boxed<A, F: FnOnce(A)>(data: *mut u8, arg: Option<A>) {
    // SAFETY: per the function contract, `data` holds a `Box<F>` we now own.
    let f = unsafe { ptr::read(data.cast::<Box<F>>()) };
    match arg {
        Some(a) => f(a),
        None => drop(f),
    }
}

impl<A> Callback<A> {
    /// Wraps `f`; allocates only if it is larger than
    /// [`CALLBACK_INLINE_BYTES`] or over-aligned.
    #[inline]
    pub fn new<F: FnOnce(A) + 'static>(f: F) -> Self {
        let mut data: Buf = MaybeUninit::uninit();
        if fits::<F>() {
            // SAFETY: `F` fits the buffer in size and alignment (`fits`),
            // which is fresh and ours; `op_inline::<A, F>` reads it back as `F`.
            unsafe { ptr::write(data.as_mut_ptr().cast::<F>(), f) };
            Callback {
                op: op_inline::<A, F>,
                data,
                _not_send: PhantomData,
            }
        } else {
            // SAFETY: a `Box<F>` is one aligned pointer, which fits; the
            // matching op reads it back as `Box<F>`.
            unsafe { ptr::write(data.as_mut_ptr().cast::<Box<F>>(), Box::new(f)) };
            Callback {
                op: op_boxed::<A, F>,
                data,
                _not_send: PhantomData,
            }
        }
    }

    /// True if a closure of type `F` is stored without allocating.
    pub const fn is_inline<F>() -> bool {
        fits::<F>()
    }

    /// Calls the closure, consuming it.
    #[inline]
    pub fn call(self, arg: A) {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `data` holds the value `op` was built for and has not been
        // consumed (module invariant); ManuallyDrop keeps Drop from touching
        // it again.
        unsafe { (this.op)(this.data.as_mut_ptr().cast(), Some(arg)) };
    }
}

impl<A> Drop for Callback<A> {
    fn drop(&mut self) {
        // SAFETY: not consumed by `call` (which suppresses Drop), so `data`
        // still holds the value; this is its only drop.
        unsafe { (self.op)(self.data.as_mut_ptr().cast(), None) };
    }
}

impl<A> std::fmt::Debug for Callback<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Callback")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn small_closures_run_once_with_their_argument() {
        let hits = Rc::new(Cell::new(0u64));
        let h = hits.clone();
        let cb = Callback::new(move |x: u64| h.set(h.get() + x));
        cb.call(5);
        assert_eq!(hits.get(), 5);
        assert_eq!(
            Rc::strong_count(&hits),
            1,
            "captures dropped after the call"
        );
    }

    #[test]
    fn large_closures_are_boxed_and_dropped_unrun() {
        let hits = Rc::new(Cell::new(0u64));
        let h = hits.clone();
        let big = [7u64; 16];
        assert!(!Callback::<u8>::is_inline::<([u64; 16], Rc<Cell<u64>>)>());
        let cb = Callback::new(move |_: u8| h.set(big.iter().sum()));
        drop(cb);
        assert_eq!(hits.get(), 0);
        assert_eq!(Rc::strong_count(&hits), 1, "dropping releases captures");
        let h = hits.clone();
        Callback::new(move |_: u8| h.set(big.iter().sum())).call(0);
        assert_eq!(hits.get(), 112);
    }

    #[test]
    fn inline_capacity_covers_typical_completions() {
        type Typical = (Rc<()>, usize, u64, u64, *mut u8);
        assert!(Callback::<i32>::is_inline::<Typical>());
    }
}
