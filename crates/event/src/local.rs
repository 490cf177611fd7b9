//! Parking non-`Send` values on the app thread behind a `Send` token.
//!
//! The app thread's state (RPC registry, responders, subsystems) is `!Send`,
//! but completions may arrive from any thread (a subsystem finishing its
//! init on another reactor, `gather_from_threads` finishing). The value is
//! parked in a table local to the OS thread that runs the app thread; the
//! `Send` [`Parked`] token is carried in messages and redeemed back on that
//! thread. The app thread is pinned to the main core's reactor (its cpumask
//! is that one core), so it never runs on another OS thread.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::thread::ThreadId;

thread_local! {
    static PARKED: RefCell<HashMap<u64, Box<dyn Any>>> = RefCell::new(HashMap::new());
    static NEXT: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
}

/// A `Send` ticket for a value parked on one OS thread.
pub(crate) struct Parked<T: 'static> {
    id: u64,
    owner: ThreadId,
    _t: PhantomData<fn() -> T>,
}

impl<T: 'static> std::fmt::Debug for Parked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Parked({})", self.id)
    }
}

/// Parks `value` on the current OS thread.
pub(crate) fn park<T: 'static>(value: T) -> Parked<T> {
    let id = NEXT.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    });
    PARKED.with(|p| p.borrow_mut().insert(id, Box::new(value)));
    Parked {
        id,
        owner: std::thread::current().id(),
        _t: PhantomData,
    }
}

impl<T: 'static> Parked<T> {
    /// Takes the value back; `None` on another OS thread (a bug, logged) or
    /// if already taken.
    pub(crate) fn take(mut self) -> Option<T> {
        self.remove()
            .and_then(|b| b.downcast::<T>().ok())
            .map(|b| *b)
    }

    fn remove(&mut self) -> Option<Box<dyn Any>> {
        if self.id == 0 {
            return None;
        }
        if std::thread::current().id() != self.owner {
            tracing::error!("parked value redeemed on the wrong OS thread; dropped");
            return None;
        }
        let id = std::mem::take(&mut self.id);
        // try_with: at OS-thread exit the table may already be gone.
        PARKED
            .try_with(|p| p.borrow_mut().remove(&id))
            .ok()
            .flatten()
    }
}

impl<T: 'static> Drop for Parked<T> {
    /// An unredeemed ticket dropped on its own thread drops the value (a
    /// parked responder then answers with an internal error).
    fn drop(&mut self) {
        if self.id != 0 && std::thread::current().id() == self.owner {
            drop(self.remove());
        }
    }
}
