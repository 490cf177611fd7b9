//! Application options in SPDK's spelling (`spdk_app_opts` and the
//! `spdk_app_parse_args` flags), as a clap [`Args`](clap::Args) struct that
//! every rspdk binary flattens into its own command line:
//!
//! ```
//! use clap::Parser;
//! use rspdk_event::AppOpts;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     app: AppOpts,
//!     /// A flag of this tool only.
//!     #[arg(long)]
//!     queue_depth: Option<u32>,
//! }
//! let cli = Cli::parse_from(["tool", "-m", "[0]", "-s", "512", "--no-huge"]);
//! assert_eq!(cli.app.mem_size_mb, 512);
//! ```

use std::path::PathBuf;

use rspdk_env::IovaMode;
use rspdk_rpc::DEFAULT_SOCKET_PATH;
use rspdk_thread::CpuSet;

/// The options every rspdk application accepts (SPDK's common app flags).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct AppOpts {
    /// Core mask for reactors: hex (`0x3`) or a core list (`[0,1]`, `[0-3,5]`).
    #[arg(short = 'm', long = "cpumask", value_name = "MASK", default_value = "0x1",
          value_parser = parse_cpumask)]
    pub cpumask: CpuSet,

    /// Memory to reserve up front, in MiB (a plain number) or with a unit
    /// (`512M`, `2G`); 0 grows on demand.
    #[arg(short = 's', long = "mem-size", value_name = "SIZE", default_value = "0",
          value_parser = parse_mem_size)]
    pub mem_size_mb: usize,

    /// RPC listen address: a Unix socket path.
    #[arg(short = 'r', long = "rpc-socket", value_name = "PATH",
          default_value = DEFAULT_SOCKET_PATH)]
    pub rpc_socket: PathBuf,

    /// JSON config file to apply at start (SPDK's `{"subsystems": [...]}`).
    #[arg(short = 'c', long = "json", value_name = "FILE")]
    pub json_config: Option<PathBuf>,

    /// Keep starting when a method in the JSON config fails (it is logged).
    #[arg(long = "json-ignore-init-errors")]
    pub json_ignore_init_errors: bool,

    /// Wait for the `framework_start_init` RPC before initialising subsystems;
    /// until then only startup-state methods are allowed.
    #[arg(long = "wait-for-rpc")]
    pub wait_for_rpc: bool,

    /// Use ordinary 4 KiB pages instead of hugepages (no physically
    /// contiguous DMA memory).
    #[arg(long = "no-huge")]
    pub no_huge: bool,

    /// A hugetlbfs mount to take hugepages from.
    #[arg(long = "huge-dir", value_name = "DIR")]
    pub huge_dir: Option<PathBuf>,

    /// How device-visible addresses are chosen: pa, va or auto.
    #[arg(long = "iova-mode", value_name = "MODE", default_value = "auto",
          value_parser = parse_iova_mode)]
    pub iova_mode: IovaMode,

    /// Enable debug logs of a log flag (repeatable); `log_get_flags` lists
    /// them, `all` enables every flag.
    #[arg(short = 'L', long = "logflag", value_name = "FLAG")]
    pub log_flags: Vec<String>,

    /// Tracepoints to enable: group names (`bdev,nvmf_tcp`), a group mask
    /// (`0x8`), `group:tpoint_mask` (`bdev:0x3`) or `all`; read the trace
    /// with `rspdk_trace -s APP -p PID`.
    #[arg(short = 'e', long = "tpoint-group", value_name = "GROUP")]
    pub tpoint_group: Option<String>,

    /// Shared memory id: the trace file is `/dev/shm/<app>_trace.<ID>`
    /// instead of `.pid<PID>`.
    #[arg(short = 'i', long = "shm-id", value_name = "ID")]
    pub shm_id: Option<i32>,

    /// Trace entries per core (rounded up to a power of two).
    #[arg(long = "num-trace-entries", value_name = "N", default_value_t = rspdk_trace::DEFAULT_ENTRIES)]
    pub num_trace_entries: u64,

    /// Run reactors in interrupt mode: idle reactors sleep (about 0% CPU)
    /// instead of polling.
    #[arg(long = "interrupt-mode")]
    pub interrupt_mode: bool,
}

impl Default for AppOpts {
    /// The defaults of the flags: core 0, grow memory on demand,
    /// `/var/tmp/spdk.sock`, polling mode.
    fn default() -> Self {
        let mut cpumask = CpuSet::new();
        cpumask.insert(0);
        AppOpts {
            cpumask,
            mem_size_mb: 0,
            rpc_socket: PathBuf::from(DEFAULT_SOCKET_PATH),
            json_config: None,
            json_ignore_init_errors: false,
            wait_for_rpc: false,
            no_huge: false,
            huge_dir: None,
            iova_mode: IovaMode::Auto,
            log_flags: Vec::new(),
            tpoint_group: None,
            shm_id: None,
            num_trace_entries: rspdk_trace::DEFAULT_ENTRIES,
            interrupt_mode: false,
        }
    }
}

fn parse_cpumask(s: &str) -> Result<CpuSet, String> {
    let set = CpuSet::parse(s).map_err(|e| {
        format!("{e} (expected a hex mask like 0x3 or a core list like [0,1] or [0-3])")
    })?;
    if set.is_empty() {
        return Err("the core mask selects no core".into());
    }
    Ok(set)
}

fn parse_iova_mode(s: &str) -> Result<IovaMode, String> {
    s.parse::<IovaMode>().map_err(|e| e.to_string())
}

/// Parses SPDK's `-s`: a plain number is MiB; with a unit (`K`, `M`, `G`,
/// `T`, optionally followed by `B` or `iB`) it is bytes in that unit,
/// rounded up to whole MiB.
pub fn parse_mem_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let bad = || {
        format!("invalid memory size '{s}': expected MiB as a number (1024) or a size with a unit (512M, 2G)")
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" if unit.is_empty() => return usize::try_from(n).map_err(|_| bad()),
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    let bytes = n
        .checked_shl(shift)
        .filter(|b| b >> shift == n)
        .ok_or_else(bad)?;
    usize::try_from(bytes.div_ceil(1 << 20)).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        app: AppOpts,
    }

    #[test]
    fn defaults_match_spdk() {
        let cli = Cli::try_parse_from(["t"]).unwrap();
        assert_eq!(cli.app, AppOpts::default());
        assert_eq!(cli.app.rpc_socket, PathBuf::from("/var/tmp/spdk.sock"));
    }

    #[test]
    fn all_flags_parse() {
        let cli = Cli::try_parse_from([
            "t",
            "-m",
            "[0,1]",
            "-s",
            "2G",
            "-r",
            "/tmp/x.sock",
            "-c",
            "c.json",
            "--json-ignore-init-errors",
            "--wait-for-rpc",
            "--no-huge",
            "--iova-mode",
            "va",
            "-L",
            "app",
            "-L",
            "rpc",
            "-e",
            "0xffff",
            "--interrupt-mode",
        ])
        .unwrap();
        let a = cli.app;
        assert_eq!(a.cpumask.iter().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(a.mem_size_mb, 2048);
        assert_eq!(a.log_flags, vec!["app", "rpc"]);
        assert_eq!(a.iova_mode, IovaMode::Va);
        assert!(a.wait_for_rpc && a.no_huge && a.interrupt_mode && a.json_ignore_init_errors);
    }

    #[test]
    fn bad_values_are_named() {
        let err = Cli::try_parse_from(["t", "-m", "0xZ"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--cpumask"), "{err}");
        let err = Cli::try_parse_from(["t", "-s", "lots"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid memory size 'lots'"), "{err}");
        let err = Cli::try_parse_from(["t", "--iova-mode", "xx"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("pa, va, auto"), "{err}");
        let err = Cli::try_parse_from(["t", "-m", "0x0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty core mask"), "{err}");
    }

    #[test]
    fn mem_sizes() {
        assert_eq!(parse_mem_size("1024"), Ok(1024));
        assert_eq!(parse_mem_size("512M"), Ok(512));
        assert_eq!(parse_mem_size("512MiB"), Ok(512));
        assert_eq!(parse_mem_size("1g"), Ok(1024));
        assert_eq!(parse_mem_size("1536K"), Ok(2));
        assert!(parse_mem_size("").is_err());
        assert!(parse_mem_size("-1").is_err());
        assert!(parse_mem_size("99999999999T").is_err());
        assert!(parse_mem_size("5X").is_err());
    }
}
