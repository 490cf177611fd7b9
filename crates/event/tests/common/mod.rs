//! Helpers shared by the app framework's integration tests.
#![allow(dead_code, reason = "each test binary uses a subset")]

use std::path::Path;
use std::time::{Duration, Instant};

use rspdk_rpc::{Error, ListenAddr, RpcClient, RpcError};
use serde_json::Value;

/// Calls `method` on the server at `sock`; an error response is `Err`.
pub fn rpc(sock: &Path, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    let mut c = RpcClient::connect(&ListenAddr::Unix(sock.into()), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    match c.call(method, params) {
        Ok(v) => Ok(v),
        Err(Error::Response { error, .. }) => Err(error),
        Err(e) => panic!("{method}: {e}"),
    }
}

/// Like [`rpc`], panicking on an error response.
pub fn ok(sock: &Path, method: &str, params: Option<Value>) -> Value {
    rpc(sock, method, params).unwrap_or_else(|e| panic!("{method}: {e}"))
}

/// Waits until a server accepts connections at `sock`.
pub fn wait_for_socket(sock: &Path, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if std::os::unix::net::UnixStream::connect(sock).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits until `framework_wait_init` answers.
pub fn wait_started(sock: &Path) {
    assert!(
        wait_for_socket(sock, Duration::from_secs(20)),
        "no RPC socket at {}",
        sock.display()
    );
    ok(sock, "framework_wait_init", None);
}
