//! Poll groups and the socket driver of each connection (SPDK: the I/O half
//! of `lib/nvmf/tcp.c`, `nvmf_tcp_poll_group_poll`).
//!
//! Each poll group is a lightweight thread on one reactor; it owns its
//! connections and polls them from one poller: a non-blocking `readv` into
//! the slices the connection core names (its receive buffer, or straight
//! the command's DMA buffer while a payload arrives), every PDU handled by
//! the core, the bdev requests it made submitted through the bdev bridge,
//! then the queued output written with non-blocking `writev`s (C2H data
//! from the bdev's buffer, an iovec of its own). Bdev callbacks (on the
//! same thread) complete commands in the core. Request slots, data buffers
//! (DMA memory from iobuf, reused by size class), the receive and send
//! buffers and the output queue are kept per connection: after warm-up a
//! command allocates nothing.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rspdk_nvme::spec::status::Status;
use rspdk_thread::iobuf::{self, DmaData, IobufModule};
use rspdk_thread::{Interrupt, Poller, PollerStatus, Thread};

use crate::bdev_bridge::BdevBridge;
use crate::conn::{Conn, ConnParams, DataBufs};
use crate::target::{target, PollGroupStats};

/// Set when any poll group runs a connection (tests and stats).
pub static CONNECTIONS_EVER: AtomicU64 = AtomicU64::new(0);
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// The NVMe/TCP target's iobuf user (SPDK names its module `nvmf_TCP`).
fn iobuf_module() -> &'static IobufModule {
    static M: std::sync::OnceLock<IobufModule> = std::sync::OnceLock::new();
    M.get_or_init(|| iobuf::register_module("nvmf_TCP"))
}

/// Data buffers from iobuf (module `nvmf_TCP`), or, when iobuf's pool is
/// exhausted, DMA memory from the env's heap (the connection's queue depth
/// bounds how many it holds at once).
pub(crate) struct IobufBufs {
    conn: u64,
}

impl DataBufs for IobufBufs {
    type Buf = DmaData;
    fn get(&mut self, len: usize) -> Option<DmaData> {
        match DmaData::get_now(iobuf_module(), len) {
            Some(Ok(b)) => Some(b),
            None => DmaData::from_env(len).ok(),
            Some(Err(e)) => {
                tracing::warn!(conn = self.conn, error = %e, "NVMe/TCP data buffer");
                None
            }
        }
    }
}

struct PollGroup {
    conns: RefCell<Vec<Rc<TcpConn>>>,
    poller: RefCell<Option<Poller>>,
}

thread_local! {
    static PG: RefCell<Option<Rc<PollGroup>>> = const { RefCell::new(None) };
}

/// Sets up the poll group state on its thread.
pub(crate) fn poll_group_init(stats: Arc<PollGroupStats>) {
    let pg = Rc::new(PollGroup {
        conns: RefCell::new(Vec::new()),
        poller: RefCell::new(None),
    });
    drop(stats);
    PG.with(|p| *p.borrow_mut() = Some(pg));
    if let Some(t) = Thread::current() {
        t.on_exit(|| {
            if let Some(pg) = PG.with(|p| p.borrow_mut().take()) {
                if let Some(p) = pg.poller.borrow_mut().take() {
                    p.unregister();
                }
                for c in pg.conns.borrow_mut().drain(..) {
                    c.inner.borrow_mut().close("target shutting down");
                }
            }
        });
    }
}

/// Takes a new connection on this poll group.
pub(crate) fn accept(
    stream: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    stats: Arc<PollGroupStats>,
    pg_name: String,
    tgt: String,
) {
    let Some(pg) = PG.with(|p| p.borrow().clone()) else {
        return;
    };
    if let Err(e) = stream.set_nonblocking(true) {
        tracing::warn!(%peer, error = %e, "nvmf: cannot make the socket non-blocking");
        return;
    }
    let _ = stream.set_nodelay(true);
    let opts = target()
        .tgt(Some(&tgt))
        .ok()
        .and_then(|t| t.transport.clone());
    let Some(opts) = opts else { return };
    let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    CONNECTIONS_EVER.fetch_add(1, Ordering::Relaxed);
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let thread = Thread::current();
    let params = ConnParams {
        id,
        tgt,
        local,
        peer,
        opts,
        stats,
        pg_name,
        admin_thread: thread.as_ref().map(|t| t.handle()),
    };
    let conn = Rc::new(TcpConn {
        id,
        inner: RefCell::new(ConnState {
            core: Conn::new(params, IobufBufs { conn: id }, rspdk_thread::now_ns()),
            stream,
            intr: None,
            interrupt: false,
            bridge: BdevBridge::new(),
            shut: false,
        }),
    });
    tracing::info!(%peer, %local, conn = id, "nvmf: TCP connection accepted");
    let interrupt = thread.as_ref().is_some_and(|t| t.is_interrupt_mode());
    if let (true, Some(t)) = (interrupt, thread.as_ref()) {
        // Interrupt mode: the socket wakes the thread when data arrives;
        // completions send at once; a 1 ms poller does the rest.
        let weak = Rc::downgrade(&conn);
        let fd = conn.inner.borrow().stream.as_raw_fd();
        match t.interrupt_register(fd, "nvmf_tcp_conn", move || match weak.upgrade() {
            Some(c) if TcpConn::poll(&c) => PollerStatus::Busy,
            _ => PollerStatus::Idle,
        }) {
            Ok(i) => {
                let mut ci = conn.inner.borrow_mut();
                ci.intr = Some(i);
                ci.interrupt = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "nvmf: no socket interrupt; polling this connection")
            }
        }
    }
    pg.conns.borrow_mut().push(conn);
    if pg.poller.borrow().is_none() {
        if let Some(t) = thread {
            let period = if interrupt { 1000 } else { 0 };
            let p = t.poller_register("nvmf_tcp_poll_group", period, |_| poll_group());
            *pg.poller.borrow_mut() = Some(p);
        }
    }
}

fn poll_group() -> PollerStatus {
    let Some(pg) = PG.with(|p| p.borrow().clone()) else {
        return PollerStatus::Idle;
    };
    let mut busy = false;
    let n = pg.conns.borrow().len();
    let mut any_closed = false;
    for i in 0..n {
        let c = match pg.conns.borrow().get(i) {
            Some(c) => c.clone(),
            None => break,
        };
        busy |= TcpConn::poll(&c);
        any_closed |= c.inner.borrow().core.is_closed();
    }
    if any_closed {
        pg.conns
            .borrow_mut()
            .retain(|c| !c.inner.borrow().core.is_closed());
        if pg.conns.borrow().is_empty() {
            if let Some(p) = pg.poller.borrow_mut().take() {
                p.unregister();
            }
        }
    }
    if busy {
        PollerStatus::Busy
    } else {
        PollerStatus::Idle
    }
}

/// Completes an outstanding AER on connection `conn_id` if a namespace
/// notice is pending (runs on the admin queue's thread).
pub(crate) fn deliver_aen(conn_id: u64) {
    let Some(pg) = PG.with(|p| p.borrow().clone()) else {
        return;
    };
    let c = pg.conns.borrow().iter().find(|c| c.id == conn_id).cloned();
    if let Some(c) = c {
        let mut s = c.inner.borrow_mut();
        s.core.try_aen();
        s.flush();
    }
}

/// A connection: one NVMe queue pair on a non-blocking socket.
pub(crate) struct TcpConn {
    id: u64,
    pub(crate) inner: RefCell<ConnState>,
}

/// A connection's protocol core, socket and bdev channels.
pub(crate) struct ConnState {
    pub(crate) core: Conn<IobufBufs>,
    stream: TcpStream,
    /// The socket's interrupt (interrupt mode).
    intr: Option<Interrupt>,
    /// Interrupt mode: send completions at once.
    pub(crate) interrupt: bool,
    pub(crate) bridge: BdevBridge,
    /// The socket has been shut down after the core closed.
    shut: bool,
}

impl ConnState {
    /// Writes what the core queued with non-blocking `writev`s. True if
    /// anything was sent.
    pub(crate) fn flush(&mut self) -> bool {
        let ConnState { core, stream, .. } = self;
        let did = core.flush_with(|iov| stream.write_vectored(iov));
        self.shut_if_closed();
        did
    }

    /// Closes the core and the socket.
    fn close(&mut self, why: &str) {
        self.core.close(why);
        self.shut_if_closed();
    }

    /// Once the core is closed: sends what it queued last (a response, a
    /// C2HTermReq), then drops the socket's interrupt, shuts the socket
    /// down and lets the bdev channels go.
    fn shut_if_closed(&mut self) {
        if self.shut || !self.core.is_closed() {
            return;
        }
        self.shut = true;
        let ConnState { core, stream, .. } = self;
        core.flush_with(|iov| stream.write_vectored(iov));
        if let Some(i) = self.intr.take() {
            i.unregister();
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        self.bridge.clear();
    }

    /// Runs the bdev requests the core made.
    fn run_requests(&mut self, this: &Rc<TcpConn>) {
        let ConnState { core, bridge, .. } = self;
        while let Some(r) = core.next_request() {
            bridge.run(core, this, r);
        }
    }
}

impl TcpConn {
    /// One poll: flush, timers, read, handle whole PDUs, run their bdev
    /// requests, flush. True if busy.
    fn poll(this: &Rc<TcpConn>) -> bool {
        let mut s = this.inner.borrow_mut();
        if s.core.is_closed() {
            return false;
        }
        let mut busy = s.flush();
        let now = rspdk_thread::now_ns();
        if s.core.is_closed() || s.core.on_tick(now) {
            s.shut_if_closed();
            return true;
        }
        if !s.core.wants_input() {
            return busy;
        }
        let st = &mut *s;
        let ConnState { core, stream, .. } = st;
        let r = core.read_with(now, |iov| stream.read_vectored(iov));
        match r {
            Ok(0) => {
                s.close("peer closed the connection");
                return true;
            }
            Ok(_) => busy = true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                s.close(&format!("read failed: {e}"));
                return true;
            }
        }
        if busy {
            s.core.process();
            s.run_requests(this);
            s.flush();
        }
        busy
    }

    /// A bdev I/O of request `slot` ended with `st`. The poll group's next
    /// poll sends the response (one write for many completions); in
    /// interrupt mode there may be no next poll soon: send now.
    pub(crate) fn io_done(this: &Rc<TcpConn>, slot: usize, st: Status) {
        let mut s = this.inner.borrow_mut();
        s.core.io_done(slot, st);
        if s.interrupt {
            s.flush();
        }
    }
}
