//! `rspdk_tgt`: the rspdk target application (SPDK's `spdk_tgt`).
//!
//! Starts reactors on `-m`, applies the JSON config (`-c`), serves JSON-RPC
//! on `-r` (default `/var/tmp/spdk.sock`) until SIGINT/SIGTERM or
//! `spdk_kill_instance`. Without `-c` it starts empty, as `spdk_tgt` does,
//! so that SPDK's scripts can create `Malloc0`, `cnode1` and the TCP
//! transport themselves; `--demo` applies a small embedded configuration
//! instead. Hugepages are reserved when root and too few are free,
//! otherwise it runs on ordinary pages with a warning.

use std::process::ExitCode;

use clap::Parser;
use rspdk_bdev::BdevSubsystem;
use rspdk_event::{App, AppOpts, IobufSubsystem, SockSubsystem};
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

/// The embedded demo config, applied with `--demo` (and no `-c`): a 64 MiB
/// malloc bdev exported over NVMe/TCP on 127.0.0.1:4420 as
/// `nqn.2016-06.io.spdk:cnode1` (any host may connect). If the port is
/// taken (another target runs), the target still starts, without that
/// listener.
const DEMO_CONFIG: &str = r#"{"subsystems": [
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
    /// Apply an embedded demo configuration (a 64 MiB malloc bdev Malloc0
    /// exported over NVMe/TCP on 127.0.0.1:4420 as
    /// nqn.2016-06.io.spdk:cnode1). Without it and without -c the target
    /// starts empty, as spdk_tgt does.
    #[arg(long, conflicts_with = "json_config")]
    demo: bool,
}

fn main() -> ExitCode {
    start_alloc_report();
    rspdk_bdev_modules::register_all();
    let mut cli = Cli::parse();
    let demo = cli.demo.then(|| {
        // The demo's listener may find port 4420 taken; that must not stop
        // `rspdk_tgt --demo`.
        cli.app.json_ignore_init_errors = true;
        serde_json::from_str::<serde_json::Value>(DEMO_CONFIG)
            .expect("the embedded demo config is valid JSON")
    });
    let mut app = App::new(cli.app);
    if let Some(demo) = demo {
        app = app.default_config(demo);
    }
    let code = app
        .name("rspdk_tgt")
        .subsystem(SockSubsystem)
        .subsystem(IobufSubsystem)
        .subsystem(BdevSubsystem)
        .subsystem(NvmfSubsystem)
        .subsystem(ScsiSubsystem)
        .subsystem(IscsiSubsystem::default())
        .run(|ctx| {
            tracing::info!(
                "rspdk_tgt started: RPC on {}, try `rspdk_rpc -s {} spdk_get_version`",
                ctx.rpc_socket().display(),
                ctx.rpc_socket().display()
            );
        });
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
