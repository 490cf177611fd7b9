//! Shared test support: a server polled on its own thread, and raw clients.
#![allow(dead_code)] // each test binary uses a different subset

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rspdk_rpc::framing::{Frame, FrameScanner};
use rspdk_rpc::{
    parse_params, PollStatus, Responder, RpcError, RpcRegistry, RpcServer, RpcState, ServerConfig,
    StateMask,
};
use serde::Deserialize;
use serde_json::{json, Value};

static NEXT_SOCKET: AtomicUsize = AtomicUsize::new(0);

/// A fresh socket path in the temp dir, unique per process and call.
pub fn temp_socket_path() -> PathBuf {
    let n = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("rspdk_rpc_test_{}_{n}.sock", std::process::id()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddParams {
    a: i64,
    b: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // decoded for validation only
struct LevelParams {
    level: String,
}

/// Register the methods the tests call.
pub fn register_test_methods(registry: &RpcRegistry) {
    let parked: Rc<RefCell<Vec<Responder>>> = Rc::default();
    registry
        .register("echo", StateMask::ALL, |params, r| r.success(&params))
        .unwrap();
    registry
        .register("add", StateMask::ALL, |params, r| {
            match parse_params::<AddParams>(params) {
                Ok(p) => r.success(&(p.a + p.b)),
                Err(e) => r.error(e),
            }
        })
        .unwrap();
    registry.register_alias("sum", "add").unwrap();
    registry
        .register("fail_internal", StateMask::ALL, |_, r| {
            r.error(RpcError::internal_error("boom"))
        })
        .unwrap();
    registry
        .register("drop_responder", StateMask::ALL, |_, r| drop(r))
        .unwrap();
    registry
        .register("runtime_only", StateMask::RUNTIME, |_, r| {
            r.success(&"runtime")
        })
        .unwrap();
    registry
        .register("startup_only", StateMask::STARTUP, |_, r| {
            r.success(&"startup")
        })
        .unwrap();
    registry
        .register(
            "spdk_get_version",
            StateMask::ALL,
            |params, r| match rspdk_rpc::expect_no_params("spdk_get_version", &params) {
                Ok(()) => r.success(&json!({"version": "rspdk test", "fields": {"major": 0}})),
                Err(e) => r.error(e),
            },
        )
        .unwrap();
    registry
        .register(
            "log_set_level",
            StateMask::ALL,
            |params, r| match parse_params::<LevelParams>(params) {
                Ok(_) => r.success(&true),
                Err(e) => r.error(e),
            },
        )
        .unwrap();
    registry
        .register("framework_get_subsystems", StateMask::ALL, |_, r| {
            r.success(&json!([
                {"subsystem": "alpha", "depends_on": []},
                {"subsystem": "beta", "depends_on": ["alpha"]},
            ]))
        })
        .unwrap();
    registry
        .register("framework_get_config", StateMask::ALL, |params, r| {
            let name = params
                .as_ref()
                .and_then(|p| p["name"].as_str())
                .unwrap_or("?");
            r.success(&json!([{"method": "echo", "params": {"from": name}}]))
        })
        .unwrap();
    let state = registry.state_handle();
    registry
        .register("framework_start_init", StateMask::STARTUP, move |_, r| {
            state.set(RpcState::Runtime);
            r.success(&true)
        })
        .unwrap();
    let park = Rc::clone(&parked);
    registry
        .register("park", StateMask::ALL, move |_, r| {
            park.borrow_mut().push(r)
        })
        .unwrap();
    registry
        .register("release", StateMask::ALL, move |params, r| {
            let waiting: Vec<Responder> = parked.borrow_mut().drain(..).collect();
            let count = waiting.len();
            let connected = waiting.iter().filter(|w| w.is_connected()).count();
            for waiter in waiting {
                waiter.success(&json!({"released": params}));
            }
            r.success(&json!({"count": count, "connected": connected}))
        })
        .unwrap();
}

/// A server with the test methods, polled on its own thread until dropped.
pub struct TestServer {
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(ServerConfig::default())
    }

    pub fn start_with(config: ServerConfig) -> Self {
        let path = temp_socket_path();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let path = path.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let registry = RpcRegistry::new();
                register_test_methods(&registry);
                let mut server = RpcServer::listen_unix(&path, registry, config).unwrap();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    if server.poll() == PollStatus::Idle {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        };
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            path,
            stop,
            thread: Some(thread),
        }
    }

    pub fn connect(&self) -> RawClient {
        RawClient::connect(&self.path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            if !std::thread::panicking() {
                result.expect("server thread panicked");
            }
        }
    }
}

/// Test client speaking raw bytes.
pub struct RawClient {
    pub stream: UnixStream,
    recv: Vec<u8>,
    scanner: FrameScanner,
}

impl RawClient {
    pub fn connect(path: &std::path::Path) -> Self {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            stream,
            recv: Vec::new(),
            scanner: FrameScanner::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Next JSON value from the server; panics on timeout or EOF.
    pub fn recv(&mut self) -> Value {
        self.try_recv(Duration::from_secs(10))
            .expect("expected a response")
    }

    /// Next JSON value, or None on EOF or if nothing arrives within `wait`.
    pub fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            if let Frame::Complete { start, end } = self.scanner.scan(&self.recv) {
                self.scanner.reset();
                let value = serde_json::from_slice(&self.recv[start..end]).unwrap();
                self.recv.drain(..end);
                return Some(value);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.recv.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Send a request object and return the response.
    pub fn call(&mut self, request: Value) -> Value {
        self.send(request.to_string().as_bytes());
        self.recv()
    }

    /// True once the server has closed the connection (reads EOF).
    pub fn is_closed_by_server(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// The error code of a response.
pub fn error_code(response: &Value) -> i64 {
    response["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error response: {response}"))
}
