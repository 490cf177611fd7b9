//! [`RpcServer`]: non-blocking listener plus connections, driven by
//! [`RpcServer::poll`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::registry::RpcRegistry;
use crate::session::{Session, DEFAULT_MAX_REQUEST_SIZE};

/// SPDK's default RPC socket path.
pub const DEFAULT_SOCKET_PATH: &str = "/var/tmp/spdk.sock";

/// Bytes read from one connection per poll; bounds the work of one poll so
/// one busy client cannot starve the others or the reactor.
const READ_CHUNK: usize = 64 * 1024;
/// Connections accepted per poll.
const ACCEPTS_PER_POLL: usize = 32;
/// After a protocol error the server answers, shuts down its sending side and
/// discards further input until the peer closes (so the peer reads the error
/// instead of a connection reset); this bounds how much it discards.
const MAX_DISCARD_AFTER_ERROR: usize = 16 * 1024 * 1024;

/// Tunables of an [`RpcServer`]; `Default` gives SPDK's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest accepted request (or batch) in bytes; a larger one is answered
    /// with -32600 and its connection is closed. SPDK: 256 KiB.
    pub max_request_size: usize,
    /// Connections served at once; more are accepted and closed at once.
    /// SPDK: 64.
    pub max_connections: usize,
    /// Stop reading from a connection while this many response bytes are
    /// waiting to be sent to it (backpressure against a client that writes
    /// but does not read). SPDK's send buffer maximum: 32 MiB.
    pub max_pending_output: usize,
    /// Requests dispatched per connection per poll.
    pub max_requests_per_poll: usize,
    /// When all `max_connections` are taken, a new client takes the place
    /// of the connection idle longest (no request in flight, nothing to
    /// send, nothing half-read) if that one has been idle this long; with
    /// none so idle, the new client gets an error naming the limit.
    pub evict_idle_after: std::time::Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            max_connections: 64,
            max_pending_output: 32 * 1024 * 1024,
            max_requests_per_poll: 64,
            evict_idle_after: std::time::Duration::from_secs(10),
        }
    }
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A Unix domain stream socket at this path.
    Unix(PathBuf),
    /// A TCP socket (use a loopback address).
    Tcp(SocketAddr),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(path) => write!(f, "{}", path.display()),
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// Whether a poll did any work, for the reactor's busy/idle accounting
/// (SPDK_POLLER_BUSY / SPDK_POLLER_IDLE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// Accepted, read, dispatched or wrote something.
    Busy,
    /// Nothing to do.
    Idle,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(listener) => listener.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(listener) => listener.accept().map(|(s, _)| {
                // Responses are small and latency matters more than packing.
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        }
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(true),
            Stream::Tcp(s) => s.set_nonblocking(true),
        }
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
        };
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Serving requests.
    Open,
    /// Protocol error answered and write side shut down; discarding input
    /// until the peer closes.
    Draining { discarded: usize },
    /// To be removed.
    Closed,
}

struct Connection {
    stream: Stream,
    session: Session,
    /// The peer shut down its sending side (read returned 0).
    read_closed: bool,
    phase: Phase,
    /// When the peer last sent bytes or was last sent some.
    last_active: std::time::Instant,
}

fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl Connection {
    fn poll(&mut self, config: &ServerConfig, scratch: &mut [u8]) -> bool {
        match self.phase {
            Phase::Open => self.poll_open(config, scratch),
            Phase::Draining { discarded } => self.poll_draining(discarded, scratch),
            Phase::Closed => false,
        }
    }

    fn poll_open(&mut self, config: &ServerConfig, scratch: &mut [u8]) -> bool {
        let mut busy = false;
        let accepting_input = !self.read_closed
            && self.session.error().is_none()
            && self.session.output_len() < config.max_pending_output;
        if accepting_input {
            match self.stream.read(scratch) {
                Ok(0) => {
                    self.read_closed = true;
                    busy = true;
                }
                Ok(n) => {
                    self.session.receive(&scratch[..n]);
                    self.last_active = std::time::Instant::now();
                    busy = true;
                }
                Err(err) if is_transient(&err) => {}
                Err(err) => {
                    tracing::debug!(%err, "RPC connection read failed");
                    self.phase = Phase::Closed;
                    return true;
                }
            }
        }

        let budget = config.max_requests_per_poll;
        let handled = self.session.process(budget);
        busy |= handled > 0;
        if self.read_closed && handled < budget {
            self.session.finish_input();
        }

        match self.flush() {
            Ok(wrote) => {
                if wrote {
                    self.last_active = std::time::Instant::now();
                }
                busy |= wrote
            }
            Err(err) => {
                tracing::debug!(%err, "RPC connection write failed");
                self.phase = Phase::Closed;
                return true;
            }
        }

        if self.session.output_len() == 0 {
            if self.session.error().is_some() {
                self.stream.shutdown_write();
                self.phase = if self.read_closed {
                    Phase::Closed
                } else {
                    Phase::Draining { discarded: 0 }
                };
            } else if self.read_closed && self.session.outstanding() == 0 {
                self.phase = Phase::Closed;
            }
        }
        busy
    }

    /// How long the connection has been idle: nothing in flight, nothing
    /// to send, no partial request; `None` while it is busy.
    fn idle_for(&self, now: std::time::Instant) -> Option<std::time::Duration> {
        let quiet = self.phase == Phase::Open
            && self.session.outstanding() == 0
            && self.session.output_len() == 0
            && !self.session.has_partial_request();
        quiet.then(|| now.saturating_duration_since(self.last_active))
    }

    /// Write as much pending output as the socket takes; true if any.
    fn flush(&mut self) -> io::Result<bool> {
        let mut wrote = false;
        while self.session.output_len() > 0 {
            let stream = &mut self.stream;
            match self.session.write_output(|bytes| stream.write(bytes)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => wrote = true,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err),
            }
        }
        Ok(wrote)
    }

    fn poll_draining(&mut self, discarded: usize, scratch: &mut [u8]) -> bool {
        match self.stream.read(scratch) {
            Ok(n) if n > 0 && discarded + n <= MAX_DISCARD_AFTER_ERROR => {
                self.phase = Phase::Draining {
                    discarded: discarded + n,
                };
                true
            }
            Err(err) if is_transient(&err) => false,
            _ => {
                self.phase = Phase::Closed;
                true
            }
        }
    }
}

/// JSON-RPC 2.0 server on a non-blocking socket, driven by [`RpcServer::poll`].
/// See the crate docs for the model.
pub struct RpcServer {
    registry: RpcRegistry,
    config: ServerConfig,
    listener: Listener,
    addr: ListenAddr,
    connections: Vec<Connection>,
    scratch: Vec<u8>,
    /// Socket file to remove on drop (Unix listeners only).
    socket_path: Option<PathBuf>,
}

impl fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServer")
            .field("addr", &self.addr)
            .field("connections", &self.connections.len())
            .field("config", &self.config)
            .finish()
    }
}

/// Make `path` free for binding: error if a live server answers there,
/// remove it if it is a stale socket file left by a dead process.
fn clear_stale_socket(path: &Path) -> Result<(), Error> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let in_use = || Error::AddressInUse {
        path: path.to_path_buf(),
    };
    if !meta.file_type().is_socket() {
        // Never delete something that is not a socket.
        let ft = meta.file_type();
        let kind = if ft.is_file() {
            "regular file"
        } else if ft.is_dir() {
            "directory"
        } else if ft.is_symlink() {
            "symbolic link"
        } else {
            "special file"
        };
        return Err(Error::NotASocket {
            path: path.to_path_buf(),
            kind,
        });
    }
    if UnixStream::connect(path).is_ok() {
        return Err(in_use());
    }
    std::fs::remove_file(path).map_err(|source| Error::Listen {
        addr: path.display().to_string(),
        source,
    })
}

impl RpcServer {
    /// Listen on `addr` and dispatch to `registry`. A stale Unix socket file
    /// (no process accepting on it) is replaced; a live one is an error.
    pub fn listen(
        addr: ListenAddr,
        registry: RpcRegistry,
        config: ServerConfig,
    ) -> Result<Self, Error> {
        let listen_error = |source| Error::Listen {
            addr: addr.to_string(),
            source,
        };
        let (listener, addr, socket_path) = match &addr {
            ListenAddr::Unix(path) => {
                clear_stale_socket(path)?;
                let listener = UnixListener::bind(path).map_err(listen_error)?;
                listener.set_nonblocking(true).map_err(listen_error)?;
                (Listener::Unix(listener), addr.clone(), Some(path.clone()))
            }
            ListenAddr::Tcp(socket_addr) => {
                let listener = TcpListener::bind(socket_addr).map_err(listen_error)?;
                listener.set_nonblocking(true).map_err(listen_error)?;
                let bound = listener.local_addr().map_err(listen_error)?;
                (Listener::Tcp(listener), ListenAddr::Tcp(bound), None)
            }
        };
        Ok(Self {
            registry,
            config,
            listener,
            addr,
            connections: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            socket_path,
        })
    }

    /// Shorthand for [`RpcServer::listen`] on a Unix socket path.
    pub fn listen_unix(
        path: impl Into<PathBuf>,
        registry: RpcRegistry,
        config: ServerConfig,
    ) -> Result<Self, Error> {
        Self::listen(ListenAddr::Unix(path.into()), registry, config)
    }

    /// The address actually listened on (a TCP port 0 is resolved).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The registry requests are dispatched to.
    pub fn registry(&self) -> &RpcRegistry {
        &self.registry
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Do all currently possible work without blocking: accept pending
    /// connections, read available bytes, dispatch complete requests (calling
    /// handlers on this thread), write pending responses, and drop closed
    /// connections. Call it from a poller.
    pub fn poll(&mut self) -> PollStatus {
        let mut busy = self.accept();
        for connection in &mut self.connections {
            busy |= connection.poll(&self.config, &mut self.scratch);
        }
        self.connections.retain(|c| c.phase != Phase::Closed);
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn accept(&mut self) -> bool {
        let mut busy = false;
        for _ in 0..ACCEPTS_PER_POLL {
            let stream = match self.listener.accept() {
                Ok(stream) => stream,
                Err(err) if is_transient(&err) => break,
                Err(err) => {
                    // E.g. EMFILE: keep serving the existing connections.
                    tracing::warn!(%err, "RPC accept failed");
                    break;
                }
            };
            busy = true;
            if self.connections.len() >= self.config.max_connections && !self.evict_idle() {
                let max = self.config.max_connections;
                tracing::warn!(
                    max,
                    "too many RPC connections, none idle; refusing the new one"
                );
                // A best-effort answer so the client sees why (not just
                // "connection reset"); the socket is new, so this small
                // write fits its buffer.
                let mut stream = stream;
                let _ = stream.set_nonblocking();
                let msg = serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {
                    "code": -32603,
                    "message": format!(
                        "too many RPC connections: all {max} are in use and none has been idle for {} s; close idle clients and retry",
                        self.config.evict_idle_after.as_secs()
                    )
                }});
                let _ = stream.write(msg.to_string().as_bytes());
                continue;
            }
            if let Err(err) = stream.set_nonblocking() {
                tracing::warn!(%err, "cannot make RPC connection non-blocking");
                continue;
            }
            self.connections.push(Connection {
                stream,
                session: Session::new(self.registry.clone(), self.config.max_request_size),
                read_closed: false,
                phase: Phase::Open,
                last_active: std::time::Instant::now(),
            });
        }
        busy
    }
}

impl RpcServer {
    /// Closes the connection idle longest if it has been idle at least
    /// `evict_idle_after`; true if one was closed.
    fn evict_idle(&mut self) -> bool {
        let now = std::time::Instant::now();
        let oldest = self
            .connections
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.idle_for(now).map(|d| (i, d)))
            .filter(|(_, d)| *d >= self.config.evict_idle_after)
            .max_by_key(|(_, d)| *d);
        match oldest {
            Some((i, idle)) => {
                tracing::info!(
                    idle_s = idle.as_secs(),
                    "RPC connections full: closing the one idle longest for a new client"
                );
                self.connections.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}
