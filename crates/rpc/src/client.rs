//! [`RpcClient`]: a small blocking JSON-RPC client with rpc.py's framing,
//! used by the `rspdk_rpc` CLI and by tests.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, RpcError};
use crate::framing::{Frame, FrameScanner};
use crate::server::ListenAddr;

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(Some(timeout)),
            Stream::Tcp(s) => s.set_read_timeout(Some(timeout)),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.write_all(buf),
            Stream::Tcp(s) => s.write_all(buf),
        }
    }
}

/// Blocking client: one connection, sequential calls, request ids counting
/// up from 1 like rpc.py.
pub struct RpcClient {
    stream: Stream,
    recv: Vec<u8>,
    scanner: FrameScanner,
    last_id: u64,
    timeout: Duration,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("last_id", &self.last_id)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RpcClient {
    /// Connect to a server; `timeout` bounds each wait for a response.
    pub fn connect(addr: &ListenAddr, timeout: Duration) -> Result<Self, Error> {
        let connect_error = |source| Error::Connect {
            addr: addr.to_string(),
            source,
        };
        let stream = match addr {
            ListenAddr::Unix(path) => {
                Stream::Unix(UnixStream::connect(path).map_err(connect_error)?)
            }
            ListenAddr::Tcp(socket_addr) => {
                Stream::Tcp(TcpStream::connect(socket_addr).map_err(connect_error)?)
            }
        };
        Ok(Self {
            stream,
            recv: Vec::new(),
            scanner: FrameScanner::new(),
            last_id: 0,
            timeout,
        })
    }

    /// Send a request without waiting for the response; returns its id.
    /// Empty params are omitted like rpc.py does.
    pub fn send_request(&mut self, method: &str, params: Option<&Value>) -> Result<u64, Error> {
        self.last_id += 1;
        let mut request = json!({"jsonrpc": "2.0", "method": method, "id": self.last_id});
        let non_empty = |p: &&Value| match p {
            Value::Object(map) => !map.is_empty(),
            Value::Array(items) => !items.is_empty(),
            Value::Null => false,
            _ => true,
        };
        if let Some(params) = params.filter(non_empty) {
            request["params"] = params.clone();
        }
        let bytes = serde_json::to_vec(&request).map_err(|e| Error::InvalidResponse {
            reason: format!("cannot serialize request: {e}"),
        })?;
        self.send_raw(&bytes)?;
        Ok(self.last_id)
    }

    /// Write raw bytes to the connection.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes).map_err(|source| Error::Io {
            context: "sending RPC request".into(),
            source,
        })
    }

    /// Wait for the next complete JSON value from the server.
    pub fn read_response(&mut self) -> Result<Value, Error> {
        let deadline = Instant::now() + self.timeout;
        let mut chunk = [0u8; 4096];
        loop {
            match self.scanner.scan(&self.recv) {
                Frame::Complete { start, end } => {
                    self.scanner.reset();
                    let parsed = serde_json::from_slice(&self.recv[start..end]);
                    self.recv.drain(..end);
                    return parsed.map_err(|e| Error::InvalidResponse {
                        reason: e.to_string(),
                    });
                }
                Frame::Invalid { .. } => {
                    return Err(Error::InvalidResponse {
                        reason: String::from_utf8_lossy(&self.recv).into_owned(),
                    })
                }
                Frame::Incomplete { .. } => {}
            }
            let partial = || String::from_utf8_lossy(&self.recv).into_owned();
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout { partial: partial() });
            }
            self.stream
                .set_read_timeout(remaining)
                .map_err(|source| Error::Io {
                    context: "setting socket timeout".into(),
                    source,
                })?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(Error::ConnectionClosed { partial: partial() }),
                Ok(n) => self.recv.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Error::Timeout { partial: partial() })
                }
                Err(source) => {
                    return Err(Error::Io {
                        context: "receiving RPC response".into(),
                        source,
                    })
                }
            }
        }
    }

    /// Call `method` and wait for its result. An error response becomes
    /// [`Error::Response`].
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, Error> {
        let request_id = self.send_request(method, params.as_ref())?;
        let response = self.read_response()?;
        let Value::Object(mut response) = response else {
            return Err(Error::InvalidResponse {
                reason: format!("expected a response object, got {response}"),
            });
        };
        if let Some(error) = response.remove("error") {
            let error: RpcError =
                serde_json::from_value(error).map_err(|e| Error::InvalidResponse {
                    reason: format!("malformed error member: {e}"),
                })?;
            return Err(Error::Response {
                method: method.to_string(),
                request_id,
                error,
            });
        }
        response
            .remove("result")
            .ok_or_else(|| Error::InvalidResponse {
                reason: "response has neither result nor error".into(),
            })
    }
}
