//! Signals without signal handlers: SIGINT and SIGTERM are blocked in the
//! thread that runs the app (and so in every reactor it spawns afterwards)
//! and read from a `signalfd`, so no code ever runs in signal context. Also
//! the few other process syscalls the app framework needs. All `unsafe` of
//! the app framework is in this module.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A `signalfd` for a set of signals blocked in the creating thread; the
/// previous signal mask is restored on drop.
pub(crate) struct SignalFd {
    fd: OwnedFd,
    old_mask: libc::sigset_t,
}

fn sigset(signals: &[i32]) -> io::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given.
    if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by sigemptyset above.
    let mut set = unsafe { set.assume_init() };
    for &s in signals {
        // SAFETY: `set` is a valid, initialised sigset_t.
        if unsafe { libc::sigaddset(&mut set, s) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(set)
}

impl SignalFd {
    /// Blocks `signals` in the calling thread and opens a non-blocking
    /// signalfd for them.
    pub(crate) fn new(signals: &[i32]) -> io::Result<SignalFd> {
        let set = sigset(signals)?;
        let mut old = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: valid set pointers; pthread_sigmask fills `old`.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, old.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: filled by the successful pthread_sigmask above.
        let old_mask = unsafe { old.assume_init() };
        // SAFETY: -1 asks for a new fd; `set` is valid.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            // SAFETY: restoring the mask read above.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
            return Err(err);
        }
        Ok(SignalFd {
            // SAFETY: `fd` is a fresh descriptor we own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            old_mask,
        })
    }

    /// The next pending signal's number, if any.
    pub(crate) fn read(&self) -> Option<i32> {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into a buffer of that size.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if n as usize != size {
            return None;
        }
        // SAFETY: the kernel wrote a whole signalfd_siginfo.
        Some(unsafe { info.assume_init() }.ssi_signo as i32)
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for SignalFd {
    fn drop(&mut self) {
        // Consume what is pending so unblocking does not deliver it with
        // its default action (terminating the process).
        while self.read().is_some() {}
        // SAFETY: restoring a mask read by pthread_sigmask.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }
}

/// The calling OS thread's kernel thread id.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Sends `sig` to thread `tid` of this process (a thread-directed signal:
/// it stays pending for that thread, which reads it from its signalfd).
pub(crate) fn signal_thread(tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: tgkill with our own pid; no memory is involved.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, sig) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `sig` to this process.
pub(crate) fn signal_process(sig: i32) -> io::Result<()> {
    // SAFETY: kill with our own pid; no memory is involved.
    if unsafe { libc::kill(libc::getpid(), sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) use rspdk_env::sys::is_root;

/// The name of a signal number, for messages.
pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        _ => "signal",
    }
}
