//! `rspdk_tgt`: the rspdk target application (SPDK's `spdk_tgt`).
//!
//! Starts reactors on `-m`, applies the JSON config (`-c`, or the embedded
//! default), serves JSON-RPC on `-r` (default `/var/tmp/spdk.sock`) until
//! SIGINT/SIGTERM or `spdk_kill_instance`. With no arguments it just works:
//! hugepages are reserved when root and too few are free, otherwise it runs
//! on ordinary pages with a warning.

use std::process::ExitCode;

use clap::Parser;
use rspdk_bdev::BdevSubsystem;
use rspdk_event::{App, AppOpts};
use rspdk_iscsi::{IscsiSubsystem, ScsiSubsystem};
use rspdk_nvmf::NvmfSubsystem;

/// The system allocator, counting allocations (and reallocations) so that
/// `RSPDK_COUNT_ALLOCS=1` can report them once a second on stderr: the
/// measure for "no heap allocation per I/O in steady state".
#[global_allocator]
static GLOBAL: rspdk_util::CountingAlloc = rspdk_util::CountingAlloc;

/// With `RSPDK_COUNT_ALLOCS` set, prints the process's heap allocations
/// of each second (and the running total) on stderr, from a thread of its
/// own that allocates nothing per line.
fn start_alloc_report() {
    if std::env::var_os("RSPDK_COUNT_ALLOCS").is_none() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("alloc_report".into())
        .spawn(|| {
            use std::io::Write;
            let mut last = rspdk_util::allocations();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let now = rspdk_util::allocations();
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "allocs/s {} total {}", now - last, now);
                last = now;
            }
        });
    if let Err(e) = spawned {
        eprintln!("RSPDK_COUNT_ALLOCS: cannot start the report thread: {e}");
    }
}

/// The embedded default config, applied when no `-c` is given: a 64 MiB
/// malloc bdev exported over NVMe/TCP on 127.0.0.1:4420 as
/// `nqn.2016-06.io.spdk:cnode1` (any host may connect). If the port is
/// taken (another target runs), the target still starts, without that
/// listener.
const DEFAULT_CONFIG: &str = r#"{"subsystems": [
 {"subsystem": "bdev", "config": [
  {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}}
 ]},
 {"subsystem": "nvmf", "config": [
  {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
  {"method": "nvmf_create_subsystem", "params": {"nqn": "nqn.2016-06.io.spdk:cnode1", "allow_any_host": true,
     "serial_number": "RSPDK00000000000001", "model_number": "rspdk Controller"}},
  {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "nqn.2016-06.io.spdk:cnode1", "namespace": {"bdev_name": "Malloc0"}}},
  {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "nqn.2016-06.io.spdk:cnode1",
     "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"}}}
 ]}
]}"#;

/// rspdk target: reactors, subsystems, JSON-RPC (SPDK's spdk_tgt flags).
#[derive(Parser, Debug)]
#[command(
    name = "rspdk_tgt",
    version,
    about = "rspdk target application (SPDK's spdk_tgt): reactors, subsystems, JSON config, JSON-RPC"
)]
struct Cli {
    #[command(flatten)]
    app: AppOpts,
}

fn main() -> ExitCode {
    start_alloc_report();
    let mut cli = Cli::parse();
    if cli.app.json_config.is_none() {
        // The embedded config's listener may find port 4420 taken; that
        // must not stop a bare `rspdk_tgt`.
        cli.app.json_ignore_init_errors = true;
    }
    let default: serde_json::Value =
        serde_json::from_str(DEFAULT_CONFIG).expect("the embedded default config is valid JSON");
    let code = App::new(cli.app)
        .name("rspdk_tgt")
        .subsystem(BdevSubsystem)
        .subsystem(NvmfSubsystem)
        .subsystem(ScsiSubsystem)
        .subsystem(IscsiSubsystem::default())
        .default_config(default)
        .run(|ctx| {
            tracing::info!(
                "rspdk_tgt started: RPC on {}, try `rspdk_rpc -s {} spdk_get_version`",
                ctx.rpc_socket().display(),
                ctx.rpc_socket().display()
            );
        });
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
