//! Thin wrappers over the Linux syscalls used by interrupt mode (fenced
//! `unsafe` module): `eventfd`, `timerfd`, `epoll`.
//!
//! Every file descriptor is held in an [`OwnedFd`], so it is closed exactly
//! once on drop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: `fd` was just returned by a successful fd-creating syscall, so
    // it is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking eventfd used to wake a sleeping thread.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// Creates a non-blocking, close-on-exec eventfd with counter 0.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall with constant flags, no pointers involved.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        Ok(EventFd(owned(fd)?))
    }

    /// Adds 1 to the counter, making the fd readable.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid local `u64` to an fd we own.
        let rc = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                8,
            )
        };
        // EAGAIN (counter saturated) still leaves the fd readable: ignore.
        let _ = rc;
    }

    /// Resets the counter to 0; returns true if it was non-zero.
    pub fn drain(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid local `u64` from an fd we own.
        let rc = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut v as *mut u64).cast::<libc::c_void>(),
                8,
            )
        };
        rc == 8
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A non-blocking CLOCK_MONOTONIC timerfd (one-shot).
#[derive(Debug)]
pub struct TimerFd(OwnedFd);

impl TimerFd {
    /// Creates a disarmed timer.
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: plain syscall with constant arguments.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        Ok(TimerFd(owned(fd)?))
    }

    /// Arms the timer to fire once after `after` (a zero duration is rounded
    /// up to 1 ns, since zero would disarm), or disarms it with `None`.
    pub fn set(&self, after: Option<Duration>) -> io::Result<()> {
        let value = match after {
            Some(d) => {
                let d = d.max(Duration::from_nanos(1));
                libc::timespec {
                    tv_sec: d.as_secs() as libc::time_t,
                    tv_nsec: d.subsec_nanos() as libc::c_long,
                }
            }
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `spec` is a valid itimerspec on our stack; old value NULL is
        // allowed; the fd is a timerfd we own.
        cvt(unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) })?;
        Ok(())
    }

    /// Consumes the expiration count; returns true if the timer had fired.
    pub fn drain(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid local `u64` from an fd we own.
        let rc = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut v as *mut u64).cast::<libc::c_void>(),
                8,
            )
        };
        rc == 8
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An epoll instance (level-triggered, `EPOLLIN` only).
#[derive(Debug)]
pub struct Epoll(OwnedFd);

impl Epoll {
    /// Creates a close-on-exec epoll fd.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall with a constant flag.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        Ok(Epoll(owned(fd)?))
    }

    /// Watches `fd` for readability, reporting `token` when it is ready.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event on our stack; both fds are open
        // (the caller owns `fd` for as long as it stays registered).
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: `ev` is valid (ignored by DEL on modern kernels).
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits up to `timeout` (`None` = forever) and returns the number of
    /// ready fds written to `tokens` (EINTR counts as 0 ready).
    pub fn wait(&self, tokens: &mut [u64], timeout: Option<Duration>) -> io::Result<usize> {
        const MAX: usize = 32;
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        let n = tokens.len().clamp(1, MAX);
        let ms = match timeout {
            None => -1,
            Some(d) => d.as_millis().min(i32::MAX as u128) as libc::c_int,
        };
        // SAFETY: `evs` has room for `n <= MAX` events and lives across the
        // call; the epoll fd is owned by us.
        let rc =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), n as libc::c_int, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        let rc = rc as usize;
        for (t, e) in tokens.iter_mut().zip(evs.iter()).take(rc) {
            *t = e.u64;
        }
        Ok(rc.min(tokens.len()))
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
