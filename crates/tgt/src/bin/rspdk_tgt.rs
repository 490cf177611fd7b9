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

/// The embedded default config, applied when no `-c` is given: a 64 MiB
/// malloc bdev to try things on. It grows as subsystems arrive (the bdev
/// exported over NVMe-oF on loopback, once NVMe-oF exists).
const DEFAULT_CONFIG: &str = r#"{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}}
]}]}"#;

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
    let cli = Cli::parse();
    let default: serde_json::Value =
        serde_json::from_str(DEFAULT_CONFIG).expect("the embedded default config is valid JSON");
    let code = App::new(cli.app)
        .name("rspdk_tgt")
        .subsystem(BdevSubsystem)
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
