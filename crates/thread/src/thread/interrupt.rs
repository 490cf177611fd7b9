//! Fd interrupts: in interrupt mode a thread sleeps in epoll and runs a
//! registered function when its fd is readable.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};

use crate::sys::{Epoll, TimerFd};

use super::*;

pub(crate) struct LocalIntr {
    pub(crate) epoll: Epoll,
    pub(crate) timer: TimerFd,
}

/// Epoll tokens: 0 = message eventfd, 1 = timerfd, `INTR_TOKEN_BASE + id` =
/// registered fd interrupt `id`.
pub(crate) const INTR_TOKEN_BASE: u64 = 2;

pub(crate) type IntrFn = Box<dyn FnMut() -> PollerStatus>;

pub(crate) struct IntrInner {
    pub(crate) id: u64,
    pub(crate) fd: RawFd,
    pub(crate) name: String,
    pub(crate) f: RefCell<Option<IntrFn>>,
    pub(crate) live: Cell<bool>,
    pub(crate) thread: Weak<ThreadInner>,
}

/// Handle to an fd interrupt registered with [`Thread::interrupt_register`].
#[derive(Clone)]
pub struct Interrupt(pub(crate) Rc<IntrInner>);

impl fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Interrupt({}: fd {})", self.0.name, self.0.fd)
    }
}

impl Interrupt {
    /// Name given at registration.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The watched fd.
    pub fn fd(&self) -> RawFd {
        self.0.fd
    }

    /// Stops watching the fd and drops the callback (after its current run
    /// when called from inside it). Callable from inside the callback.
    pub fn unregister(&self) {
        let i = &self.0;
        if !i.live.replace(false) {
            return;
        }
        if let Some(t) = i.thread.upgrade() {
            if let Some(li) = &t.intr {
                let _ = li.epoll.remove(i.fd);
            }
            t.intrs.borrow_mut().retain(|x| !Rc::ptr_eq(&x.0, i));
        }
        if let Ok(mut g) = i.f.try_borrow_mut() {
            let f = g.take();
            drop(g);
            drop(f);
        }
    }
}

pub(crate) type LocalFn = Box<dyn FnOnce()>;
