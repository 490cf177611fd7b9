//! The OS thread's "current lightweight thread" (fenced `unsafe` module).
//!
//! A thread-local raw pointer (a plain `Cell`, so accessing it costs one
//! load — no lazy initialisation or destructor registration, unlike a
//! thread-local holding an `Rc`). It is non-null only while a
//! [`CurrentGuard`] exists, and the guard borrows the `Rc<ThreadInner>` it
//! points to, so the allocation is alive whenever the pointer can be read.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr;
use std::rc::Rc;

use crate::thread::ThreadInner;

thread_local! {
    static CURRENT: Cell<*const ThreadInner> = const { Cell::new(ptr::null()) };
}

/// Makes a thread current until dropped, then restores the previous one.
pub(crate) struct CurrentGuard<'a> {
    prev: *const ThreadInner,
    _borrow: PhantomData<&'a Rc<ThreadInner>>,
}

impl<'a> CurrentGuard<'a> {
    /// `t` stays borrowed (hence alive) for the guard's lifetime.
    #[inline]
    pub(crate) fn enter(t: &'a Rc<ThreadInner>) -> CurrentGuard<'a> {
        let prev = CURRENT.with(|c| c.replace(Rc::as_ptr(t)));
        CurrentGuard {
            prev,
            _borrow: PhantomData,
        }
    }
}

impl Drop for CurrentGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.prev));
    }
}

/// A new strong reference to the current thread, if any.
#[inline]
pub(crate) fn current() -> Option<Rc<ThreadInner>> {
    let p = CURRENT.with(|c| c.get());
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` is non-null only while a `CurrentGuard` is alive on this OS
    // thread (guards nest and restore their predecessor, which was itself
    // set by a still-alive outer guard). Each guard borrows an
    // `Rc<ThreadInner>`, so the strong count is >= 1 and the allocation is
    // alive; `p` came from `Rc::as_ptr`, the same pointer `Rc::into_raw`
    // returns. Incrementing the count first makes the `Rc` built by
    // `from_raw` an additional owner, leaving the borrowed one untouched.
    unsafe {
        Rc::increment_strong_count(p);
        Some(Rc::from_raw(p))
    }
}
