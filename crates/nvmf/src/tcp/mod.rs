//! The TCP transport's sockets (SPDK: `lib/nvmf/tcp.c`): non-blocking
//! listeners on the app thread, polled (or, in interrupt mode, woken by the
//! kernel), handing each accepted connection to a poll group
//! ([`poll_group`], which drives the connection's protocol core).

pub(crate) mod poll_group;

use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use rspdk_thread::{Interrupt, Poller, PollerStatus, Thread};

use crate::error::{NvmfError, Result};
use crate::target::target;

thread_local! {
    static LISTENERS: RefCell<Listeners> = const { RefCell::new(Listeners { socks: Vec::new() }) };
    static ACCEPTOR: RefCell<Option<PollerGuard>> = const { RefCell::new(None) };
    static INTRS: RefCell<Vec<(SocketAddr, Interrupt)>> = const { RefCell::new(Vec::new()) };
}

/// Sets SO_PRIORITY (the transport's `sock_priority`) on an accepted
/// connection; 0 leaves the kernel's default.
pub(crate) fn set_priority(stream: &std::net::TcpStream, priority: u32) -> std::io::Result<()> {
    if priority == 0 {
        return Ok(());
    }
    let value = priority as libc::c_int;
    // SAFETY: `stream` owns a valid socket fd for the duration of the call;
    // the option value is a c_int on our stack whose size is passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PRIORITY,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Opens (or shares) a listening socket on `addr`; called on the app
/// thread. Returns the address bound: port 0 asks the kernel for a free
/// port, and the listener is recorded (and reported) under that port.
/// `period_us` is how often the acceptor polls in poll mode (the
/// transport's `acceptor_poll_rate`; the first listener sets it).
/// Connections accepted there belong to target `tgt`; another target
/// cannot listen on the same address.
pub(crate) fn listen(addr: SocketAddr, period_us: u64, tgt: &str) -> Result<SocketAddr> {
    let shared = if addr.port() == 0 {
        Ok(false)
    } else {
        LISTENERS.with(|l| {
            let mut l = l.borrow_mut();
            match l.socks.iter_mut().find(|e| e.0 == addr) {
                Some(e) if e.3 != tgt => Err(NvmfError::param(format!(
                    "{addr} is a listener of NVMe-oF target '{}'; a listen address belongs to one target (pick another port)",
                    e.3
                ))),
                Some(e) => {
                    e.2 += 1;
                    Ok(true)
                }
                None => Ok(false),
            }
        })
    };
    if shared? {
        return Ok(addr);
    }
    let sock = TcpListener::bind(addr).map_err(|e| NvmfError::Io {
        what: format!("listen on {addr}"),
        source: e,
    })?;
    if let Err(e) = rspdk_sock::apply_listener(sock.as_raw_fd()) {
        tracing::warn!(%addr, error = %e, "nvmf: cannot apply the sock options to a listener");
    }
    let addr = sock.local_addr().map_err(|e| NvmfError::Io {
        what: format!("read the address of the listener on {addr}"),
        source: e,
    })?;
    sock.set_nonblocking(true).map_err(|e| NvmfError::Io {
        what: format!("make the listener on {addr} non-blocking"),
        source: e,
    })?;
    let thread = Thread::current();
    let interrupt = thread.as_ref().is_some_and(|t| t.is_interrupt_mode());
    if interrupt {
        let t = thread.as_ref().expect("checked above");
        let i = t
            .interrupt_register(sock.as_raw_fd(), "nvmf_tcp_accept", || {
                LISTENERS.with(|l| accept_all(&l.borrow()))
            })
            .map_err(|e| NvmfError::Io {
                what: format!("register the listener on {addr} for interrupts"),
                source: std::io::Error::other(e.to_string()),
            })?;
        INTRS.with(|v| v.borrow_mut().push((addr, i)));
    } else if let Some(t) = thread.as_ref() {
        ACCEPTOR.with(|a| {
            let mut a = a.borrow_mut();
            if a.is_none() {
                let p = t.poller_register("nvmf_tcp_accept", period_us, |_| {
                    LISTENERS.with(|l| match l.try_borrow() {
                        Ok(l) => accept_all(&l),
                        Err(_) => PollerStatus::Idle,
                    })
                });
                *a = Some(PollerGuard(Some(p)));
            }
        });
    }
    tracing::info!(%addr, "NVMe/TCP target listening");
    LISTENERS.with(|l| l.borrow_mut().socks.push((addr, sock, 1, tgt.to_string())));
    Ok(addr)
}

/// Drops one user of the listener on `addr`; the last closes it.
pub(crate) fn unlisten(addr: SocketAddr) {
    let closed = LISTENERS.with(|l| {
        let mut l = l.borrow_mut();
        if let Some(i) = l.socks.iter().position(|e| e.0 == addr) {
            l.socks[i].2 -= 1;
            if l.socks[i].2 == 0 {
                l.socks.remove(i);
                return true;
            }
        }
        false
    });
    if closed {
        INTRS.with(|v| {
            v.borrow_mut().retain(|(a, i)| {
                if *a == addr {
                    i.unregister();
                    false
                } else {
                    true
                }
            })
        });
        tracing::info!(%addr, "NVMe/TCP listener closed");
    }
}

/// Closes every listener (subsystem fini).
pub(crate) fn close_all() {
    LISTENERS.with(|l| l.borrow_mut().socks.clear());
    INTRS.with(|v| v.borrow_mut().drain(..).for_each(|(_, i)| i.unregister()));
    ACCEPTOR.with(|a| a.borrow_mut().take());
}

/// Accepts a connection on a listener and hands it to a poll group.
pub(crate) fn dispatch_connection(
    stream: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    tgt: String,
) {
    let (pg, priority) = {
        let mut t = target();
        let priority = t
            .tgt(Some(&tgt))
            .ok()
            .and_then(|g| g.transport.as_ref())
            .map_or(0, |o| o.sock_priority);
        (t.next_poll_group(), priority)
    };
    // sock_impl_set_options (posix): buffer sizes, quick ack.
    if let Err(e) = rspdk_sock::apply_server(stream.as_raw_fd()) {
        tracing::warn!(%peer, error = %e, "nvmf: cannot apply the sock options to a connection");
    }
    if let Err(e) = set_priority(&stream, priority) {
        tracing::warn!(%peer, priority, error = %e, "nvmf: cannot set SO_PRIORITY (sock_priority) on a connection");
    }
    let Some((thread, stats, name)) = pg else {
        tracing::error!(%peer, "nvmf: no poll group for a new connection; closing it");
        return;
    };
    tracing::debug!(%peer, fd = stream.as_raw_fd(), poll_group = %name, "nvmf: new connection");
    if thread
        .send_msg(move || poll_group::accept(stream, local, peer, stats, name, tgt))
        .is_err()
    {
        tracing::error!(%peer, "nvmf: poll group has exited; connection dropped");
    }
}

/// Keeps a poller alive in a thread-local list.
pub(crate) struct PollerGuard(pub Option<Poller>);

impl Drop for PollerGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.unregister();
        }
    }
}

/// The acceptor's view of the listening sockets (kept on the app thread).
pub(crate) struct Listeners {
    /// Address, socket, users (subsystems listening there), target name.
    pub(crate) socks: Vec<(SocketAddr, TcpListener, usize, String)>,
}

/// Busy if anything was accepted.
pub(crate) fn accept_all(l: &Listeners) -> PollerStatus {
    let mut busy = PollerStatus::Idle;
    for (local, sock, _, tgt) in &l.socks {
        loop {
            match sock.accept() {
                Ok((s, peer)) => {
                    busy = PollerStatus::Busy;
                    let local = s.local_addr().unwrap_or(*local);
                    dispatch_connection(s, local, peer, tgt.clone());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(%local, error = %e, "nvmf: accept failed");
                    break;
                }
            }
        }
    }
    busy
}
