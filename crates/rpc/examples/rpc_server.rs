//! Minimal RPC server: `cargo run -p rspdk_rpc --example rpc_server [SOCKET]`.
//! Serves `rpc_get_methods`, `spdk_get_version`, `framework_start_init`,
//! `framework_wait_init` and `log_set_level`; handy to try the CLI or SPDK's
//! rpc.py against the server.

use std::time::Duration;

use rspdk_rpc::{
    expect_no_params, parse_params, PollStatus, RpcRegistry, RpcServer, RpcState, ServerConfig,
    StateMask, DEFAULT_SOCKET_PATH,
};
use serde_json::json;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSetLevel {
    level: String,
}

fn main() -> Result<(), rspdk_rpc::Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_SOCKET_PATH.into());
    let registry = RpcRegistry::new();
    registry.register("spdk_get_version", StateMask::ALL, |params, r| {
        match expect_no_params("spdk_get_version", &params) {
            Ok(()) => r.success(&json!({"version": "rspdk v0.1.0", "fields": {"major": 0, "minor": 1, "patch": 0, "suffix": ""}})),
            Err(e) => r.error(e),
        }
    })?;
    let state = registry.state_handle();
    registry.register("framework_start_init", StateMask::STARTUP, move |_, r| {
        state.set(RpcState::Runtime);
        r.success(&true)
    })?;
    registry.register("framework_wait_init", StateMask::ALL, |_, r| {
        r.success(&true)
    })?;
    registry.register(
        "log_set_level",
        StateMask::ALL,
        |params, r| match parse_params::<LogSetLevel>(params) {
            Ok(p) => {
                println!("log level set to {}", p.level);
                r.success(&true)
            }
            Err(e) => r.error(e),
        },
    )?;
    let mut server = RpcServer::listen_unix(&path, registry, ServerConfig::default())?;
    println!("listening on {path}");
    loop {
        if server.poll() == PollStatus::Idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
