//! The NVMe/TCP target in `rspdk_tgt`, driven by SPDK's RPCs and a small
//! NVMe/TCP host (`common_nvmf`): discovery, admin and I/O queues, identify,
//! in-capsule and R2T writes read back and compared, digests on and off,
//! the SUCCESS flag, bad input closing only the offending connection, data
//! digest errors failing only their command, and the RPC views and
//! save_config.

#[path = "../../../../crates/event/tests/common/mod.rs"]
mod common;
#[path = "../common_nvmf/mod.rs"]
mod common_nvmf;
#[path = "../common_tgt/mod.rs"]
mod common_tgt;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::{ok, rpc, wait_started};
use common_nvmf::{admin_queue, io_queue, status, Host, Rx, HOSTNQN};
use common_tgt::{free_port, Tgt};
use serde_json::{json, Value};

const TGT: &str = env!("CARGO_BIN_EXE_rspdk_tgt");
const NQN: &str = "nqn.2016-06.io.spdk:test1";
const BS: usize = 512;

/// `rspdk_tgt` with a 16 MiB malloc bdev exported as `NQN` on a free port.
fn start(extra: &[&str]) -> Tgt {
    start_transport(
        json!({"trtype": "TCP", "in_capsule_data_size": 4096, "max_io_size": 131072,
            // Sub-second keep-alive timeouts for the keep-alive tests.
            "kas": 1, "min_kato": 100}),
        extra,
    )
}

/// [`start`] with `transport` as nvmf_create_transport's params.
fn start_transport(transport: Value, extra: &[&str]) -> Tgt {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 32768, "block_size": BS}}
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": transport},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true,
                "serial_number": "SPDK001", "model_number": "rspdk test"}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address":
                {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}
        ]}
    ]});
    Tgt::spawn(dir, port, &cfg, extra)
}

fn addr(t: &Tgt) -> SocketAddr {
    format!("127.0.0.1:{}", t.port).parse().unwrap()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

mod hosts;
mod io;
mod pdus;
mod robustness;
mod rpc;
mod trace;

// Helpers defined beside the tests that first needed them, shared by all.
#[allow(unused_imports)]
use {hosts::*, io::*, pdus::*, robustness::*, rpc::*, trace::*};
