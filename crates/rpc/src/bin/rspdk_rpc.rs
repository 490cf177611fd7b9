//! `rspdk_rpc`: command-line JSON-RPC client mirroring SPDK's `scripts/rpc.py`
//! (same global flags, subcommand names, argument names, JSON params, output
//! and exit codes).
//!
//! Subcommands are declared in [`method_table`]: one [`MethodSpec`] per RPC,
//! built from a few chained calls. Most methods need only their arguments;
//! those that do more than one call (save_config, load_config) or need
//! special handling get a custom runner.

use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::{value_parser, Arg, ArgAction, ArgMatches, Command};
use serde::Serialize;
use serde_json::{json, Map, Value};

use rspdk_rpc::{Error, ListenAddr, RpcClient, DEFAULT_SOCKET_PATH};

use rspdk_util::outln;

/// How a result is printed; rpc.py's `print_dict`, `print_json`, or nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    /// `json.dumps(result, indent=2)`.
    Json,
    /// Like `Json` with surrounding quotes stripped (rpc.py's `print_json`).
    JsonUnquoted,
    /// Methods whose rpc.py function prints nothing (e.g. returning `true`).
    Nothing,
    /// rpc.py's `print_array`: the elements separated by spaces.
    Array,
}

/// Type of an argument's value.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    #[allow(
        dead_code,
        reason = "first used by later methods (e.g. timeouts in seconds)"
    )]
    Float,
    /// argparse `store_true`: `true` if given, else the default.
    Flag,
    /// argparse `BooleanOptionalAction`: `--x` / `--no-x`, else the default.
    BoolOptional,
}

struct ArgSpec {
    /// JSON param name (and clap id); rpc.py's `dest`.
    key: &'static str,
    long: Option<&'static str>,
    short: Option<char>,
    kind: Kind,
    required: bool,
    help: &'static str,
    choices: &'static [&'static str],
    /// Sent when the argument is absent (rpc.py drops `None` values).
    default: Option<Value>,
}

/// Custom behaviour for a subcommand: gets the collected params.
type Runner = fn(&mut Ctx, &ArgMatches, Map<String, Value>) -> Result<(), CliError>;

struct MethodSpec {
    name: &'static str,
    help: &'static str,
    args: Vec<ArgSpec>,
    output: Output,
    runner: Option<Runner>,
}

fn method(name: &'static str, help: &'static str) -> MethodSpec {
    MethodSpec {
        name,
        help,
        args: Vec::new(),
        output: Output::Json,
        runner: None,
    }
}

impl MethodSpec {
    fn arg(mut self, spec: ArgSpec) -> Self {
        self.args.push(spec);
        self
    }

    /// Required positional argument.
    fn pos(self, key: &'static str, kind: Kind, help: &'static str) -> Self {
        self.arg(ArgSpec {
            key,
            long: None,
            short: None,
            kind,
            required: true,
            help,
            choices: &[],
            default: None,
        })
    }

    /// Required positional argument restricted to `choices`.
    fn pos_choice(
        self,
        key: &'static str,
        choices: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        let mut this = self.pos(key, Kind::Str, help);
        if let Some(last) = this.args.last_mut() {
            last.choices = choices;
        }
        this
    }

    /// `-s/--long-name VALUE`; the JSON key is the long name with `_`.
    fn opt(self, short: Option<char>, long: &'static str, kind: Kind, help: &'static str) -> Self {
        let key: &'static str = Box::leak(long.replace('-', "_").into_boxed_str());
        self.arg(ArgSpec {
            key,
            long: Some(long),
            short,
            kind,
            required: false,
            help,
            choices: &[],
            default: match kind {
                Kind::Flag | Kind::BoolOptional => Some(Value::Bool(false)),
                _ => None,
            },
        })
    }

    /// Optional positional argument.
    fn pos_opt(self, key: &'static str, kind: Kind, help: &'static str) -> Self {
        let mut this = self.pos(key, kind, help);
        if let Some(last) = this.args.last_mut() {
            last.required = false;
        }
        this
    }

    /// A required `-s/--long VALUE` option.
    fn req(self, short: Option<char>, long: &'static str, kind: Kind, help: &'static str) -> Self {
        let mut this = self.opt(short, long, kind, help);
        if let Some(last) = this.args.last_mut() {
            last.required = true;
        }
        this
    }

    /// Override the JSON key of the last argument (rpc.py's `dest` differs
    /// from the flag, e.g. `--nine-nine-read-latency` → `p99_read_latency`).
    fn key(mut self, key: &'static str) -> Self {
        if let Some(last) = self.args.last_mut() {
            last.key = key;
        }
        self
    }

    /// Override the default of the last argument.
    fn default(mut self, value: Value) -> Self {
        if let Some(last) = self.args.last_mut() {
            last.default = Some(value);
        }
        self
    }

    fn output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    fn runner(mut self, runner: Runner) -> Self {
        self.runner = Some(runner);
        self
    }
}

const LOG_LEVELS: &[&str] = &["ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"];
const SIGNALS: &[&str] = &[
    "SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1",
];
const INDENT_HELP: &str =
    "Indent level. Value less than 0 mean compact mode. Default indent level is 2.";
const WITH_BATCHES_HELP: &str =
    "Keep batch arrays in output; --no-with-batches flattens them (default)";

/// Every subcommand. Names, flags and JSON keys follow SPDK's
/// python/spdk/cli/*.py.
fn method_table() -> Vec<MethodSpec> {
    use Kind::*;
    use Output::*;
    vec![
        method("spdk_get_version", "Get SPDK version").output(JsonUnquoted),
        method("rpc_get_methods", "Get list of supported RPC methods")
            .opt(Some('c'), "current", Flag, "Return only RPC methods callable in the current state. Default: false")
            .opt(Some('i'), "include-aliases", Flag, "Include deprecated method aliases in the result. Default: false"),
        method("spdk_kill_instance", "Send signal to instance")
            .pos_choice("sig_name", SIGNALS, "Signal to send")
            .output(Nothing)
            .runner(run_kill_instance),
        method("framework_start_init", "Start initialization of subsystems").output(Nothing),
        method("framework_wait_init", "Block until subsystems have been initialized").output(Nothing),
        method("framework_get_reactors", "Display list of all reactors"),
        method("framework_get_subsystems", "Print subsystems array in initialization order. Each subsystem entry contain (unsorted) array of subsystems it depends on."),
        method("framework_get_config", "Print subsystem configuration")
            .pos("name", Str, "Name of the SPDK subsystem to query")
            .opt(None, "with-batches", BoolOptional, "Keep batch arrays in output. Default: false (flatten into individual entries)"),
        method("save_config", "Write current (live) configuration of SPDK subsystems and targets to stdout.")
            .opt(Some('i'), "indent", Int, INDENT_HELP)
            .default(json!(2))
            .opt(Some('s'), "subsystems", Str, "Comma-separated list of subsystems (and their dependencies) to save")
            .opt(None, "with-batches", BoolOptional, WITH_BATCHES_HELP)
            .runner(run_save_config),
        method("load_config", "Configure SPDK subsystems and targets using JSON RPC.")
            .opt(Some('i'), "include-aliases", Flag, "include RPC aliases")
            .opt(Some('j'), "json-conf", Str, "Valid JSON configuration (file path or JSON text). Default: stdin")
            .runner(run_load_config),
        method("thread_get_stats", "Display current statistics of all the threads"),
        method("thread_get_pollers", "Display current pollers of all the threads"),
        method("thread_get_io_channels", "Display current IO channels of all the threads"),
        method("env_dpdk_get_mem_stats", "Write the DPDK memory stats to a file."),
        method("log_set_flag", "set log flag")
            .pos("flag", Str, "Log flag name (e.g. \"nvme\") or \"all\" to set all flags")
            .output(Nothing),
        method("log_clear_flag", "clear log flag")
            .pos("flag", Str, "Log flag name (e.g. \"nvme\") or \"all\" to clear all flags")
            .output(Nothing),
        method("log_get_flags", "get log flags"),
        method("log_set_level", "set log level")
            .pos_choice("level", LOG_LEVELS, "Log level")
            .output(Nothing),
        method("log_get_level", "get log level"),
        method("nvmf_create_transport", "Create NVMf transport")
            .opt(Some('t'), "trtype", Str, "Transport type (ex. RDMA)")
            .opt(Some('g'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)")
            .opt(Some('q'), "max-queue-depth", Int, "Max number of outstanding I/O per queue")
            .opt(Some('m'), "max-io-qpairs-per-ctrlr", Int, "Max number of IO qpairs per controller")
            .opt(Some('c'), "in-capsule-data-size", Int, "Max number of in-capsule data size")
            .opt(Some('i'), "max-io-size", Int, "Max I/O size (bytes)")
            .opt(Some('u'), "io-unit-size", Int, "I/O unit size (bytes)")
            .opt(Some('a'), "max-aq-depth", Int, "Max number of admin cmds per AQ")
            .opt(Some('n'), "num-shared-buffers", Int, "The number of pooled data buffers available to the transport")
            .opt(Some('b'), "buf-cache-size", Int, "The number of shared buffers to reserve for each poll group")
            .opt(Some('y'), "sock-priority", Int, "The sock priority of the tcp connection")
            .opt(Some('x'), "abort-timeout-sec", Int, "Abort execution timeout value, in seconds")
            .output(Nothing)
            .runner(run_nvmf_create_transport),
        method("nvmf_get_transports", "Display nvmf transports or required transport")
            .opt(Some('t'), "trtype", Str, "Transport type (optional)")
            .opt(Some('g'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)"),
        method("nvmf_create_subsystem", "Create an NVMe-oF subsystem")
            .pos("nqn", Str, "Subsystem NQN (ASCII)")
            .opt(Some('t'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)")
            .opt(Some('s'), "serial-number", Str, "Format:  'sn' etc Example: 'SPDK00000000000001'")
            .opt(Some('d'), "model-number", Str, "Format:  'mn' etc Example: 'SPDK Controller'")
            .opt(Some('a'), "allow-any-host", Flag, "Allow any host to connect (don't enforce allowed host NQN list)")
            .opt(Some('m'), "max-namespaces", Int, "Maximum number of namespaces allowed")
            .opt(Some('i'), "min_cntlid", Int, "Minimum controller ID")
            .opt(Some('I'), "max_cntlid", Int, "Maximum controller ID")
            .output(Nothing),
        method("nvmf_delete_subsystem", "Delete a nvmf subsystem")
            .pos("nqn", Str, "subsystem nqn to be deleted. Example: nqn.2016-06.io.spdk:cnode1.")
            .opt(Some('t'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)")
            .output(Nothing),
        method("nvmf_subsystem_add_listener", "Add a listener to an NVMe-oF subsystem")
            .pos("nqn", Str, "NVMe-oF subsystem NQN (\'discovery\' can be used as shortcut for discovery NQN)")
            .opt(Some('t'), "trtype", Str, "NVMe-oF transport type: e.g., rdma")
            .opt(Some('a'), "traddr", Str, "NVMe-oF transport address: e.g., an ip address")
            .opt(Some('p'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)")
            .opt(Some('f'), "adrfam", Str, "NVMe-oF transport adrfam: e.g., ipv4, ipv6, ib, fc, intra_host")
            .opt(Some('s'), "trsvcid", Str, "NVMe-oF transport service id: e.g., a port number")
            .output(Nothing)
            .runner(run_nvmf_add_listener),
        method("nvmf_subsystem_remove_listener", "Remove a listener from an NVMe-oF subsystem")
            .pos("nqn", Str, "NVMe-oF subsystem NQN (\'discovery\' can be used as shortcut for discovery NQN)")
            .opt(Some('t'), "trtype", Str, "NVMe-oF transport type: e.g., rdma")
            .opt(Some('a'), "traddr", Str, "NVMe-oF transport address: e.g., an ip address")
            .opt(Some('p'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)")
            .opt(Some('f'), "adrfam", Str, "NVMe-oF transport adrfam: e.g., ipv4, ipv6, ib, fc, intra_host")
            .opt(Some('s'), "trsvcid", Str, "NVMe-oF transport service id: e.g., a port number")
            .output(Nothing)
            .runner(run_nvmf_remove_listener),
        method("nvmf_subsystem_add_ns", "Add a namespace to an NVMe-oF subsystem")
            .pos("nqn", Str, "NVMe-oF subsystem NQN")
            .pos("bdev_name", Str, "The name of the bdev that will back this namespace")
            .opt(Some('t'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)")
            .opt(Some('n'), "nsid", Int, "The requested NSID (optional)")
            .opt(Some('g'), "nguid", Str, "Namespace globally unique identifier (optional)")
            .opt(Some('e'), "eui64", Str, "Namespace EUI-64 identifier (optional)")
            .opt(Some('u'), "uuid", Str, "Namespace UUID (optional)")
            .runner(run_nvmf_add_ns),
        method("nvmf_subsystem_remove_ns", "Remove a namespace to an NVMe-oF subsystem")
            .pos("nqn", Str, "NVMe-oF subsystem NQN")
            .pos("nsid", Int, "The requested NSID")
            .opt(Some('t'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)")
            .output(Nothing),
        method("nvmf_subsystem_add_host", "Add a host to an NVMe-oF subsystem")
            .pos("nqn", Str, "NVMe-oF subsystem NQN")
            .pos("host", Str, "Host NQN to allow")
            .opt(Some('t'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)")
            .output(Nothing),
        method("nvmf_subsystem_remove_host", "Remove a host from an NVMe-oF subsystem")
            .pos("nqn", Str, "NVMe-oF subsystem NQN")
            .pos("host", Str, "Host NQN to remove")
            .opt(Some('t'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)")
            .output(Nothing),
        method("nvmf_subsystem_allow_any_host", "Allow any host to connect to the subsystem")
            .pos("nqn", Str, "NVMe-oF subsystem NQN")
            .opt(Some('e'), "enable", Flag, "Enable allowing any host")
            .opt(Some('d'), "disable", Flag, "Disable allowing any host")
            .opt(Some('t'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)")
            .output(Nothing)
            .runner(run_nvmf_allow_any_host),
        method("nvmf_get_subsystems", "Display nvmf subsystems or required subsystem")
            .arg(ArgSpec {
                key: "nqn",
                long: None,
                short: None,
                kind: Str,
                required: false,
                help: "Subsystem NQN (optional)",
                choices: &[],
                default: None,
            })
            .opt(Some('t'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)"),
        method("nvmf_subsystem_get_controllers", "Display controllers of an NVMe-oF subsystem.")
            .pos("nqn", Str, "NVMe-oF subsystem NQN")
            .opt(Some('t'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)"),
        method("nvmf_subsystem_get_qpairs", "Display queue pairs of an NVMe-oF subsystem.")
            .pos("nqn", Str, "NVMe-oF subsystem NQN")
            .opt(Some('t'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)"),
        method("nvmf_get_stats", "Display current statistics for NVMf subsystem")
            .opt(Some('t'), "tgt-name", Str, "The name of the parent NVMe-oF target (optional)"),
        // bdev layer and modules (python/spdk/cli/bdev.py).
        method("bdev_malloc_create", "Create a bdev with malloc backend")
            .pos("total_size", Float, "Size of malloc bdev in MB (float > 0)")
            .pos("block_size", Int, "Data block size for this bdev")
            .opt(Some('b'), "name", Str, "Name of the bdev")
            .opt(Some('u'), "uuid", Str, "UUID of the bdev (optional)")
            .opt(Some('p'), "physical-block-size", Int, "Physical block size of this bdev")
            .opt(Some('o'), "optimal-io-boundary", Int, "Split on optimal IO boundary, in number of blocks")
            .output(JsonUnquoted)
            .runner(run_size_to_blocks),
        method("bdev_malloc_delete", "Delete a malloc disk")
            .pos("name", Str, "malloc bdev name")
            .output(Nothing),
        method("bdev_null_create", "Add a bdev with null backend")
            .pos("name", Str, "Name of the bdev")
            .pos("total_size", Float, "Size of null bdev in MB (int > 0)")
            .pos("block_size", Int, "Block size for this bdev")
            .opt(Some('u'), "uuid", Str, "UUID of the bdev (optional)")
            .output(JsonUnquoted)
            .runner(run_size_to_blocks),
        method("bdev_null_delete", "Delete a null bdev")
            .pos("name", Str, "null bdev name")
            .output(Nothing),
        method("bdev_null_resize", "Resize a null bdev")
            .pos("name", Str, "null bdev name")
            .pos("new_size", Int, "new bdev size for resize operation. The unit is MiB")
            .output(Nothing),
        method("bdev_get_bdevs", "Display current blockdev list or required blockdev")
            .opt(Some('b'), "name", Str, "Name of the Blockdev. Example: Nvme0n1")
            .opt(Some('t'), "timeout", Int, "Time (ms) to wait for the bdev with specified name to appear"),
        method("bdev_get_iostat", "Display current I/O statistics of all the blockdevs or specified blockdev.")
            .opt(Some('b'), "name", Str, "Name of the Blockdev. Example: Nvme0n1"),
        method("bdev_set_qos_limit", "Set QoS rate limit on a blockdev")
            .pos("name", Str, "Blockdev name to set QoS. Example: Malloc0")
            .opt(None, "rw_ios_per_sec", Int, "R/W IOs per second limit (>=1000, example: 20000). 0 means unlimited.")
            .opt(None, "rw_mbytes_per_sec", Int, "R/W megabytes per second limit (>=10, example: 100). 0 means unlimited.")
            .opt(None, "r_mbytes_per_sec", Int, "Read megabytes per second limit (>=10, example: 100). 0 means unlimited.")
            .opt(None, "w_mbytes_per_sec", Int, "Write megabytes per second limit (>=10, example: 100). 0 means unlimited.")
            .output(Nothing),
        method("bdev_wait_for_examine", "Report when all bdevs have been examined").output(Nothing),
        method("bdev_examine", "examine a bdev if it exists, or queue it for examine when it is added")
            .pos("name", Str, "Name of the block device")
            .output(Nothing),
        method("bdev_nvme_attach_controller", "Add bdevs with nvme backend")
            .req(Some('b'), "name", Str, "Name of the NVMe controller, prefix for each bdev name")
            .req(Some('t'), "trtype", Str, "NVMe-oF target trtype: e.g., rdma, pcie")
            .req(Some('a'), "traddr", Str, "NVMe-oF target address: e.g., an ip address or BDF")
            .opt(Some('f'), "adrfam", Str, "NVMe-oF target adrfam: e.g., ipv4, ipv6, ib, fc, intra_host")
            .opt(Some('s'), "trsvcid", Str, "NVMe-oF target trsvcid: e.g., a port number")
            .opt(Some('n'), "subnqn", Str, "NVMe-oF target subnqn")
            .opt(Some('q'), "hostnqn", Str, "NVMe-oF host subnqn")
            .opt(Some('i'), "hostaddr", Str, "NVMe-oF host address: e.g., an ip address")
            .opt(Some('c'), "hostsvcid", Str, "NVMe-oF host svcid: e.g., a port number")
            .opt(Some('x'), "multipath", Str, "Set multipath behavior (disable, failover, multipath)")
            .opt(None, "num-io-queues", Int, "Set the number of IO queues to request during initialization.")
            .opt(Some('g'), "hdgst", Flag, "Enable TCP header digest.")
            .opt(Some('G'), "ddgst", Flag, "Enable TCP data digest.")
            .opt(Some('l'), "ctrlr-loss-timeout-sec", Int, "Time to wait until ctrlr is reconnected before deleting ctrlr. -1 means infinite reconnect retries. 0 means no reconnect retry.")
            .opt(Some('o'), "reconnect-delay-sec", Int, "Time to delay a reconnect retry. 0 means no reconnect retry.")
            .opt(Some('u'), "fast-io-fail-timeout-sec", Int, "Time to wait until ctrlr is reconnected before failing I/O to ctrlr. 0 means no such timeout.")
            .output(Array),
        method("bdev_nvme_detach_controller", "Detach an NVMe controller and delete any associated bdevs")
            .pos("name", Str, "Controller name")
            .opt(Some('t'), "trtype", Str, "NVMe-oF target trtype: e.g., rdma, pcie")
            .opt(Some('a'), "traddr", Str, "NVMe-oF target address: e.g., an ip address or BDF")
            .opt(Some('f'), "adrfam", Str, "NVMe-oF target adrfam: e.g., ipv4, ipv6, ib, fc, intra_host")
            .opt(Some('s'), "trsvcid", Str, "NVMe-oF target trsvcid: e.g., a port number")
            .opt(Some('n'), "subnqn", Str, "NVMe-oF target subnqn")
            .opt(Some('i'), "hostaddr", Str, "NVMe-oF host address: e.g., an ip address")
            .opt(Some('c'), "hostsvcid", Str, "NVMe-oF host svcid: e.g., a port number")
            .output(Nothing),
        method("bdev_nvme_get_controllers", "Display current NVMe controllers list or required NVMe controller")
            .opt(Some('n'), "name", Str, "Name of the NVMe controller. Example: HotInNvme0"),
        method("bdev_nvme_reset_controller", "Reset an NVMe controller")
            .pos("name", Str, "NVMe controller name")
            .opt(Some('c'), "cntlid", Int, "NVMe controller ID")
            .output(Nothing),
        method("bdev_nvme_get_controller_health_info", "Display health log of the required NVMe bdev controller.")
            .req(Some('c'), "name", Str, "Name of the NVMe bdev controller. Example: Nvme0"),
        method("bdev_nvme_send_cmd", "NVMe passthrough cmd.")
            .req(Some('n'), "nvme-name", Str, "Name of the operating NVMe controller")
            .key("name")
            .req(Some('t'), "cmd-type", Str, "Type of nvme cmd. Valid values are: admin, io")
            .req(Some('r'), "data-direction", Str, "Direction of data transfer. Valid values are: c2h, h2c")
            .req(Some('c'), "cmdbuf", Str, "NVMe command encoded by base64 urlsafe")
            .opt(Some('d'), "data", Str, "Data transferring to controller from host, encoded by base64 urlsafe")
            .opt(Some('m'), "metadata", Str, "Metadata transferring to controller from host, encoded by base64 urlsafe")
            .opt(Some('D'), "data-length", Int, "Data length required to transfer from controller to host")
            .key("data_len")
            .opt(Some('M'), "metadata-length", Int, "Metadata length required to transfer from controller to host")
            .key("metadata_len")
            .opt(Some('T'), "timeout-ms", Int, "Command execution timeout value, in milliseconds, if 0, don't track timeout"),
        method("bdev_nvme_set_hotplug", "Set hotplug options for bdev nvme type.")
            .opt(None, "hotplug", BoolOptional, "Enable or disable hotplug")
            .key("enable")
            .opt(Some('r'), "period-us", Int, "How often the hotplug is processed for insert and remove events")
            .output(Nothing),
        method("bdev_nvme_get_io_paths", "Display active I/O paths")
            .opt(Some('n'), "name", Str, "Name of the NVMe bdev"),
        method("bdev_nvme_get_transport_statistics", "Get bdev_nvme poll group transport statistics"),
        method("bdev_nvme_get_discovery_info", "Display current discovery subsystem info"),
        method("bdev_aio_create", "Add a bdev with aio backend")
            .pos("filename", Str, "Path to device or file (ex: /dev/sda)")
            .pos("name", Str, "Block device name")
            .pos_opt("block_size", Int, "Block size for this bdev")
            .opt(Some('r'), "readonly", Flag, "Set this bdev as read-only")
            .opt(None, "fallocate", Flag, "Support unmap/writezeros by fallocate")
            .opt(Some('u'), "uuid", Str, "UUID of the bdev")
            .output(JsonUnquoted),
        method("bdev_aio_delete", "Delete an aio disk")
            .pos("name", Str, "aio bdev name")
            .output(Nothing),
        method("bdev_aio_rescan", "Re-scan an aio disk")
            .pos("name", Str, "aio bdev name")
            .output(Nothing),
        method("bdev_uring_create", "Create a bdev with io_uring backend")
            .pos("filename", Str, "Path to device or file (ex: /dev/nvme0n1)")
            .pos("name", Str, "bdev name")
            .pos_opt("block_size", Int, "Block size for this bdev")
            .opt(Some('u'), "uuid", Str, "UUID of the bdev")
            .output(JsonUnquoted),
        method("bdev_uring_delete", "Delete a uring bdev")
            .pos("name", Str, "uring bdev name")
            .output(Nothing),
        method("bdev_passthru_create", "Add a pass through bdev on existing bdev")
            .req(Some('b'), "base-bdev-name", Str, "Name of the existing bdev")
            .req(Some('p'), "name", Str, "Name of the pass through bdev")
            .opt(Some('u'), "uuid", Str, "UUID of the bdev")
            .output(JsonUnquoted),
        method("bdev_passthru_delete", "Delete a pass through bdev")
            .pos("name", Str, "pass through bdev name")
            .output(Nothing),
        method("bdev_delay_create", "Add a delay bdev on existing bdev")
            .req(Some('b'), "base-bdev-name", Str, "Name of the existing bdev")
            .req(Some('d'), "name", Str, "Name of the delay bdev")
            .req(Some('r'), "avg-read-latency", Int, "Average latency to apply before completing read ops (in microseconds)")
            .req(Some('t'), "nine-nine-read-latency", Int, "latency to apply to 1 in 100 read ops (in microseconds)")
            .key("p99_read_latency")
            .req(Some('w'), "avg-write-latency", Int, "Average latency to apply before completing write ops (in microseconds)")
            .req(Some('n'), "nine-nine-write-latency", Int, "latency to apply to 1 in 100 write ops (in microseconds)")
            .key("p99_write_latency")
            .output(JsonUnquoted),
        method("bdev_delay_delete", "Delete a delay bdev")
            .pos("name", Str, "delay bdev name")
            .output(Nothing),
        method("bdev_delay_update_latency", "Update one of the latency values for a given delay bdev")
            .pos("delay_bdev_name", Str, "The name of the given delay bdev")
            .pos_choice("latency_type", &["avg_read", "avg_write", "p99_read", "p99_write"], "one of: avg_read, avg_write, p99_read, p99_write")
            .pos("latency_us", Int, "new latency value in microseconds")
            .output(Nothing),
        method("bdev_error_create", "Add bdev with error injection backend")
            .pos("base_name", Str, "base bdev name")
            .opt(Some('u'), "uuid", Str, "UUID for this bdev")
            .output(Nothing),
        method("bdev_error_delete", "Delete an error bdev")
            .pos("name", Str, "error bdev name")
            .output(Nothing),
        method("bdev_error_inject_error", "bdev inject error")
            .pos("name", Str, "the name of the error injection bdev")
            .pos_choice("io_type", &["read", "write", "unmap", "flush", "all"], "io_type: 'clear' 'read' 'write' 'unmap' 'flush' 'all'")
            .pos_choice("error_type", &["failure", "pending", "corrupt_data", "clear"], "error_type: 'failure' 'pending' 'corrupt_data' 'clear'")
            .opt(Some('n'), "num", Int, "the number of commands you want to fail")
            .default(json!(1))
            .opt(Some('q'), "queue-depth", Int, "the queue depth at which to trigger the error")
            .opt(Some('o'), "corrupt-offset", Int, "the offset in bytes to xor with corrupt_value")
            .opt(Some('v'), "corrupt-value", Int, "the value for xor (1-255, 0 is invalid)")
            .output(Nothing),
        method("bdev_split_create", "Add given disk name to split config. If bdev with base_name name exist the split bdevs will be created right away, if not split bdevs will be created when base bdev became available (during examination process).")
            .pos("base_bdev", Str, "base bdev name")
            .pos("split_count", Int, "number of splits")
            .opt(Some('s'), "split-size-mb", Int, "size in MiB to restrict size of split bdevs"),
        method("bdev_split_delete", "Delete split config with all created splits.")
            .pos("base_bdev", Str, "base bdev name")
            .output(Nothing),
        method("iscsi_set_options", "Set options of iSCSI subsystem")
            .opt(Some('f'), "auth-file", Str, "Path to CHAP shared secret file")
            .opt(Some('b'), "node-base", Str, "Prefix of the name of iSCSI target node")
            .opt(Some('o'), "nop-timeout", Int, "Timeout in seconds to nop-in request to the initiator")
            .opt(Some('n'), "nop-in-interval", Int, "Time interval in secs between nop-in requests by the target")
            .opt(Some('d'), "disable-chap", Flag, "CHAP for discovery session should be disabled.")
            .opt(Some('r'), "require-chap", Flag, "CHAP for discovery session should be required.")
            .opt(Some('m'), "mutual-chap", Flag, "CHAP for discovery session should be mutual.")
            .opt(Some('g'), "chap-group", Int, "Authentication group ID for discovery session.")
            .opt(Some('a'), "max-sessions", Int, "Maximum number of sessions in the host.")
            .opt(Some('q'), "max-queue-depth", Int, "Max number of outstanding I/Os per queue.")
            .opt(Some('c'), "max-connections-per-session", Int, "Negotiated parameter, MaxConnections.")
            .opt(Some('w'), "default-time2wait", Int, "Negotiated parameter, DefaultTime2Wait.")
            .opt(Some('v'), "default-time2retain", Int, "Negotiated parameter, DefaultTime2Retain.")
            .opt(Some('s'), "first-burst-length", Int, "Negotiated parameter, FirstBurstLength.")
            .opt(Some('i'), "immediate-data", Flag, "Negotiated parameter, ImmediateData.")
            .opt(Some('l'), "error-recovery-level", Int, "Negotiated parameter, ErrorRecoveryLevel")
            .opt(Some('p'), "allow-duplicated-isid", Flag, "Allow duplicated initiator session ID.")
            .opt(Some('x'), "max-large-datain-per-connection", Int, "Max number of outstanding split read I/Os per connection")
            .opt(Some('k'), "max-r2t-per-connection", Int, "Max number of outstanding R2Ts per connection")
            .opt(Some('u'), "pdu-pool-size", Int, "Number of PDUs in the pool")
            .opt(Some('j'), "immediate-data-pool-size", Int, "Number of immediate data buffers in the pool")
            .opt(Some('z'), "data-out-pool-size", Int, "Number of data out buffers in the pool")
            .output(Nothing),
        method("iscsi_get_options", "Display iSCSI global parameters"),
        method("iscsi_set_discovery_auth", "Set CHAP authentication for discovery session.")
            .opt(Some('d'), "disable-chap", Flag, "CHAP for discovery session should be disabled.")
            .opt(Some('r'), "require-chap", Flag, "CHAP for discovery session should be required.")
            .opt(Some('m'), "mutual-chap", Flag, "CHAP for discovery session should be mutual.")
            .opt(Some('g'), "chap-group", Int, "Authentication group ID for discovery session.")
            .output(Nothing),
        method("iscsi_create_portal_group", "Add a portal group")
            .pos("tag", Int, "Portal group tag (unique, integer > 0)")
            .pos("portal_list", Str, "List of portals in host:port format, separated by whitespace")
            .opt(Some('p'), "private", Flag, "Public (false) or private (true) portal group.")
            .opt(Some('w'), "wait", Flag, "Do not listening on portals until it is started explicitly.")
            .output(Nothing)
            .runner(run_iscsi_create_portal_group),
        method("iscsi_delete_portal_group", "Delete a portal group")
            .pos("tag", Int, "Portal group tag (unique, integer > 0)")
            .output(Nothing),
        method("iscsi_get_portal_groups", "Display current portal group configuration"),
        method("iscsi_create_initiator_group", "Add an initiator group")
            .pos("tag", Int, "Initiator group tag (unique, integer > 0)")
            .pos("initiator_list", Str, "Whitespace-separated list of initiator hostnames or IP addresses, enclosed in quotes.  Example: 'ANY' or 'iqn.2016-06.io.spdk:host1 iqn.2016-06.io.spdk:host2'")
            .pos("netmask_list", Str, "Whitespace-separated list of initiator netmasks enclosed in quotes.  Example: '255.255.0.0 255.248.0.0' etc")
            .output(Nothing)
            .runner(run_iscsi_create_initiator_group),
        method("iscsi_delete_initiator_group", "Delete an initiator group")
            .pos("tag", Int, "Initiator group tag (unique, integer > 0)")
            .output(Nothing),
        method("iscsi_get_initiator_groups", "Display current initiator group configuration"),
        method("iscsi_create_target_node", "Add a target node")
            .pos("name", Str, "Target node name (ASCII)")
            .pos("alias_name", Str, "Target node alias name (ASCII)")
            .pos("bdev_name_id_pairs", Str, "Whitespace-separated list of <bdev name:LUN ID> pairs enclosed in quotes.")
            .pos("pg_ig_mappings", Str, "List of (Portal_Group_Tag:Initiator_Group_Tag) mappings Whitespace separated, quoted, mapping defined with colon separated list of tags")
            .pos("queue_depth", Int, "Desired target queue depth")
            .opt(Some('g'), "chap-group", Int, "Authentication group ID for this target node.")
            .opt(Some('d'), "disable-chap", Flag, "CHAP authentication should be disabled for this target node.")
            .opt(Some('r'), "require-chap", Flag, "CHAP authentication should be required for this target node.")
            .opt(Some('m'), "mutual-chap", Flag, "CHAP authentication should be mutual/bidirectional.")
            .opt(Some('H'), "header-digest", Flag, "Header Digest should be required for this target node.")
            .opt(Some('D'), "data-digest", Flag, "Data Digest should be required for this target node.")
            .output(Nothing)
            .runner(run_iscsi_create_target_node),
        method("iscsi_target_node_add_lun", "Add LUN to the target node")
            .pos("name", Str, "Target node name (ASCII)")
            .pos("bdev_name", Str, "bdev name enclosed in quotes.")
            .opt(Some('i'), "lun-id", Int, "LUN ID (integer >= 0)")
            .output(Nothing),
        method("iscsi_delete_target_node", "Delete a target node")
            .pos("target_node_name", Str, "Target node name to be deleted. Example: iqn.2016-06.io.spdk:disk1.")
            .output(Nothing)
            .runner(run_iscsi_delete_target_node),
        method("iscsi_get_target_nodes", "Display target nodes"),
        method("iscsi_get_connections", "Display iSCSI connections"),
        method("call", "Call any RPC method with raw JSON params (rspdk extension)")
            .pos("method", Str, "RPC method name")
            .arg(ArgSpec {
                key: "params",
                long: None,
                short: None,
                kind: Str,
                required: false,
                help: "Params as a JSON object or array",
                choices: &[],
                default: None,
            })
            .runner(run_raw_call),
    ]
}

fn build_arg(spec: &ArgSpec) -> Vec<Arg> {
    let mut arg = Arg::new(spec.key).help(spec.help);
    if let Some(long) = spec.long {
        arg = arg.long(long);
    }
    if let Some(short) = spec.short {
        arg = arg.short(short);
    }
    match spec.kind {
        Kind::Flag => return vec![arg.action(ArgAction::SetTrue)],
        Kind::BoolOptional => {
            let long = spec.long.unwrap_or(spec.key);
            let negated: &'static str = Box::leak(format!("no-{long}").into_boxed_str());
            return vec![
                arg.action(ArgAction::SetTrue).overrides_with(negated),
                Arg::new(negated)
                    .long(negated)
                    .action(ArgAction::SetTrue)
                    .overrides_with(spec.key)
                    .hide(true),
            ];
        }
        Kind::Str if !spec.choices.is_empty() => {
            arg = arg.value_parser(PossibleValuesParser::new(spec.choices.iter().copied()));
        }
        Kind::Str => arg = arg.value_parser(value_parser!(String)),
        Kind::Int => {
            arg = arg
                .value_parser(value_parser!(i64))
                .allow_negative_numbers(true)
        }
        Kind::Float => arg = arg.value_parser(value_parser!(f64)),
    }
    vec![arg.required(spec.required).action(ArgAction::Set)]
}

/// Turn parsed arguments into JSON params (rpc.py: `remove_null(kwargs)`).
fn collect_params(spec: &MethodSpec, matches: &ArgMatches) -> Map<String, Value> {
    let mut params = Map::new();
    for arg in &spec.args {
        let value = match arg.kind {
            Kind::Flag => matches.get_flag(arg.key).then_some(Value::Bool(true)),
            Kind::BoolOptional => {
                let negated = format!("no-{}", arg.long.unwrap_or(arg.key));
                if matches.get_flag(arg.key) {
                    Some(Value::Bool(true))
                } else if matches.get_flag(&negated) {
                    Some(Value::Bool(false))
                } else {
                    None
                }
            }
            Kind::Str => matches.get_one::<String>(arg.key).map(|s| json!(s)),
            Kind::Int => matches.get_one::<i64>(arg.key).map(|n| json!(n)),
            Kind::Float => matches.get_one::<f64>(arg.key).map(|n| json!(n)),
        };
        if let Some(value) = value.or_else(|| arg.default.clone()) {
            params.insert(arg.key.to_string(), value);
        }
    }
    params
}

fn build_cli(table: &[MethodSpec]) -> Command {
    let mut cli = Command::new("rspdk_rpc")
        .about("rspdk RPC command line interface (compatible with SPDK's rpc.py)")
        .subcommand_required(true)
        .arg(Arg::new("server_addr").short('s').long("server-addr").default_value(DEFAULT_SOCKET_PATH).help("RPC domain socket path or IP address"))
        .arg(Arg::new("port").short('p').default_value("5260").value_parser(value_parser!(u16)).help("RPC port number (if server_addr is IP address)"))
        .arg(Arg::new("timeout").short('t').long("timeout").value_parser(value_parser!(f64)).help("Timeout as a floating point number expressed in seconds waiting for response. Default: 60.0"))
        .arg(Arg::new("conn_retries").short('r').default_value("0").value_parser(value_parser!(u32)).help("Retry connecting to the RPC server N times with 0.2s interval. Default: 0"))
        .arg(Arg::new("v").short('v').action(ArgAction::SetTrue).help("Set verbose mode to INFO"))
        .arg(Arg::new("verbose").long("verbose").value_parser(["DEBUG", "INFO", "ERROR"]).help("Set verbose level."))
        .arg(Arg::new("dry_run").long("dry-run").action(ArgAction::SetTrue).help("Display request and exit"));
    for spec in table {
        let mut sub = Command::new(spec.name).about(spec.help);
        for arg in &spec.args {
            sub = sub.args(build_arg(arg));
        }
        cli = cli.subcommand(sub);
    }
    cli
}

/// Failure of a command: printed to stdout (as rpc.py does) and exit 1.
enum CliError {
    Message(String),
}

impl From<Error> for CliError {
    fn from(err: Error) -> Self {
        CliError::Message(err.to_string())
    }
}

/// Connection and options shared by runners.
struct Ctx {
    client: Option<RpcClient>,
    dry_run: bool,
    verbose: bool,
    /// The subcommand's RPC method, for runners shared by several methods.
    method_name: &'static str,
}

impl Ctx {
    /// Call `method`; an error response is formatted like rpc.py's
    /// JSONRPCException message.
    fn call(&mut self, method: &str, params: Map<String, Value>) -> Result<Value, CliError> {
        if self.dry_run {
            outln!(
                "Request:\n{}",
                to_python_json(&json!({"method": method, "params": params}), Some(2))
            );
            return Ok(Value::Null);
        }
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| CliError::Message("not connected".into()))?;
        if self.verbose {
            eprintln!(
                "INFO: Requests:\n{}\n",
                to_python_json(
                    &json!({"jsonrpc": "2.0", "method": method, "params": params}),
                    Some(2)
                )
            );
        }
        match client.call(method, Some(Value::Object(params.clone()))) {
            Ok(result) => {
                if self.verbose {
                    eprintln!("INFO: response:\n{}\n", to_python_json(&result, Some(2)));
                }
                Ok(result)
            }
            Err(Error::Response {
                request_id, error, ..
            }) => {
                let mut shown = params;
                shown.insert("method".into(), json!(method));
                shown.insert("req_id".into(), json!(request_id));
                Err(CliError::Message(format!(
                    "request:\n{}\nGot JSON-RPC error response\nresponse:\n{}",
                    to_python_json(&Value::Object(shown), Some(2)),
                    to_python_json(
                        &json!({"code": error.code, "message": error.message}),
                        Some(2)
                    ),
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    fn print(&self, output: Output, result: &Value) {
        if self.dry_run {
            return;
        }
        match output {
            Output::Json => outln!("{}", to_python_json(result, Some(2))),
            Output::JsonUnquoted => {
                let text = to_python_json(result, Some(2));
                outln!("{}", text.trim_matches('"'));
            }
            Output::Nothing => {}
            Output::Array => match result.as_array() {
                Some(a) => outln!(
                    "{}",
                    a.iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                None => outln!("{}", to_python_json(result, Some(2))),
            },
        }
    }
}

/// serde_json formatter producing Python's `json.dumps(indent=None)`
/// separators (`", "` and `": "`).
struct PythonCompact;

impl serde_json::ser::Formatter for PythonCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Serialize like Python's `json.dumps(value, indent=indent)` (ASCII only,
/// `\uXXXX` escapes), which is what rpc.py prints.
fn to_python_json(value: &Value, indent: Option<usize>) -> String {
    let mut out = Vec::new();
    let result = match indent {
        Some(width) => {
            let indent = vec![b' '; width];
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(&indent),
            );
            value.serialize(&mut ser)
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            PythonCompact,
        )),
    };
    if result.is_err() {
        return value.to_string();
    }
    let text = String::from_utf8(out).unwrap_or_default();
    // Non-ASCII characters only occur inside strings, where \u escapes are
    // equivalent; Python escapes them by default (ensure_ascii=True).
    let mut ascii = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch.is_ascii() {
            ascii.push(ch);
        } else {
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    ascii
}

fn run_kill_instance(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    match ctx.call("spdk_kill_instance", params) {
        // The instance may exit before answering; rpc.py ignores that.
        Err(CliError::Message(msg)) if msg.starts_with("Connection closed") => Ok(()),
        other => other.map(|_| ()),
    }
}

/// `-t/--trtype` is required (rpc.py's `required=True`).
fn run_nvmf_create_transport(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    if !params.contains_key("trtype") {
        return Err(CliError::Message(
            "nvmf_create_transport: -t/--trtype is required".into(),
        ));
    }
    ctx.call("nvmf_create_transport", params).map(|_| ())
}

/// `-t -a -f -s` become the `listen_address` object.
fn nvmf_listener(ctx: &mut Ctx, method: &str, params: Map<String, Value>) -> Result<(), CliError> {
    ctx.call(
        method,
        nest(
            params,
            "listen_address",
            &["trtype", "traddr", "adrfam", "trsvcid"],
        ),
    )
    .map(|_| ())
}

/// Moves `keys` of `params` into an object under `into` (rpc.py builds
/// `listen_address` and `namespace` this way).
fn nest(mut params: Map<String, Value>, into: &str, keys: &[&str]) -> Map<String, Value> {
    let mut inner = Map::new();
    for k in keys {
        if let Some(v) = params.remove(*k) {
            inner.insert(k.to_string(), v);
        }
    }
    params.insert(into.to_string(), Value::Object(inner));
    params
}

fn run_nvmf_add_listener(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    nvmf_listener(ctx, "nvmf_subsystem_add_listener", params)
}

fn run_nvmf_remove_listener(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    nvmf_listener(ctx, "nvmf_subsystem_remove_listener", params)
}

/// `bdev_name -n -u -g -e` become the `namespace` object.
fn run_nvmf_add_ns(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    let params = nest(
        params,
        "namespace",
        &["bdev_name", "nsid", "nguid", "eui64", "uuid"],
    );
    let result = ctx.call("nvmf_subsystem_add_ns", params)?;
    ctx.print(Output::Json, &result);
    Ok(())
}

/// `-e` / `-d` become `allow_any_host`.
fn run_nvmf_allow_any_host(
    ctx: &mut Ctx,
    _: &ArgMatches,
    mut params: Map<String, Value>,
) -> Result<(), CliError> {
    let enable = params.remove("enable") == Some(Value::Bool(true));
    let disable = params.remove("disable") == Some(Value::Bool(true));
    if enable == disable {
        return Err(CliError::Message(
            "nvmf_subsystem_allow_any_host: give exactly one of -e/--enable or -d/--disable".into(),
        ));
    }
    params.insert("allow_any_host".into(), Value::Bool(enable));
    ctx.call("nvmf_subsystem_allow_any_host", params)
        .map(|_| ())
}

/// rpc.py's bdev_malloc_create / bdev_null_create: `total_size` in MB and
/// `block_size` become `num_blocks`.
fn run_size_to_blocks(
    ctx: &mut Ctx,
    _: &ArgMatches,
    mut params: Map<String, Value>,
) -> Result<(), CliError> {
    let method = ctx.method_name;
    let total_mb = params
        .remove("total_size")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| CliError::Message("total_size must be a number of MB".into()))?;
    let block_size = params
        .get("block_size")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if block_size == 0 {
        return Err(CliError::Message(
            "block_size must be greater than 0".into(),
        ));
    }
    let num_blocks = (total_mb * 1024.0 * 1024.0) as u64 / block_size;
    params.insert("num_blocks".into(), json!(num_blocks));
    let result = ctx.call(method, params)?;
    ctx.print(Output::JsonUnquoted, &result);
    Ok(())
}

fn words(params: &Map<String, Value>, key: &str) -> Vec<String> {
    params
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn run_iscsi_create_portal_group(
    ctx: &mut Ctx,
    _: &ArgMatches,
    mut params: Map<String, Value>,
) -> Result<(), CliError> {
    let mut portals = Vec::new();
    for p in words(&params, "portal_list") {
        let (host, port) = match p.rsplit_once(':') {
            Some((h, port)) => (h.to_string(), port.to_string()),
            None => (p.clone(), "3260".to_string()),
        };
        portals.push(json!({"host": host, "port": port}));
    }
    params.remove("portal_list");
    params.insert("portals".into(), Value::Array(portals));
    ctx.call("iscsi_create_portal_group", params).map(|_| ())
}

fn run_iscsi_create_initiator_group(
    ctx: &mut Ctx,
    _: &ArgMatches,
    mut params: Map<String, Value>,
) -> Result<(), CliError> {
    let initiators = words(&params, "initiator_list");
    let netmasks = words(&params, "netmask_list");
    params.remove("initiator_list");
    params.remove("netmask_list");
    params.insert("initiators".into(), json!(initiators));
    params.insert("netmasks".into(), json!(netmasks));
    ctx.call("iscsi_create_initiator_group", params).map(|_| ())
}

fn run_iscsi_create_target_node(
    ctx: &mut Ctx,
    _: &ArgMatches,
    mut params: Map<String, Value>,
) -> Result<(), CliError> {
    let mut luns = Vec::new();
    for pair in words(&params, "bdev_name_id_pairs") {
        let (bdev, id) = pair
            .rsplit_once(':')
            .ok_or_else(|| CliError::Message(format!("'{pair}' is not <bdev name:LUN ID>")))?;
        let id: i64 = id
            .parse()
            .map_err(|_| CliError::Message(format!("bad LUN ID in '{pair}'")))?;
        luns.push(json!({"bdev_name": bdev, "lun_id": id}));
    }
    let mut maps = Vec::new();
    for m in words(&params, "pg_ig_mappings") {
        let (pg, ig) = m
            .split_once(':')
            .ok_or_else(|| CliError::Message(format!("'{m}' is not <pg tag:ig tag>")))?;
        let pg: i64 = pg
            .parse()
            .map_err(|_| CliError::Message(format!("bad portal group tag in '{m}'")))?;
        let ig: i64 = ig
            .parse()
            .map_err(|_| CliError::Message(format!("bad initiator group tag in '{m}'")))?;
        maps.push(json!({"pg_tag": pg, "ig_tag": ig}));
    }
    params.remove("bdev_name_id_pairs");
    params.remove("pg_ig_mappings");
    params.insert("luns".into(), Value::Array(luns));
    params.insert("pg_ig_maps".into(), Value::Array(maps));
    ctx.call("iscsi_create_target_node", params).map(|_| ())
}

fn run_iscsi_delete_target_node(
    ctx: &mut Ctx,
    _: &ArgMatches,
    mut params: Map<String, Value>,
) -> Result<(), CliError> {
    if let Some(n) = params.remove("target_node_name") {
        params.insert("name".into(), n);
    }
    ctx.call("iscsi_delete_target_node", params).map(|_| ())
}

fn run_raw_call(
    ctx: &mut Ctx,
    matches: &ArgMatches,
    _: Map<String, Value>,
) -> Result<(), CliError> {
    let method = matches
        .get_one::<String>("method")
        .cloned()
        .unwrap_or_default();
    let params = match matches.get_one::<String>("params") {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(CliError::Message("params must be a JSON object".into())),
            Err(e) => return Err(CliError::Message(format!("invalid JSON params: {e}"))),
        },
    };
    let result = ctx.call(&method, params)?;
    ctx.print(Output::Json, &result);
    Ok(())
}

fn run_save_config(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    let indent = params.get("indent").and_then(Value::as_i64).unwrap_or(2);
    let with_batches = params
        .get("with_batches")
        .cloned()
        .unwrap_or(Value::Bool(false));
    let subsystems = ctx.call("framework_get_subsystems", Map::new())?;
    let subsystems = subsystems.as_array().cloned().unwrap_or_default();
    // Expand each subsystem to itself plus its transitive dependencies
    // (subsystems are listed in init order, so dependencies come first).
    let mut dependencies: Vec<(String, Vec<String>)> = Vec::new();
    for elem in &subsystems {
        let name = elem["subsystem"].as_str().unwrap_or_default().to_string();
        let mut deps = vec![name.clone()];
        for dep in elem["depends_on"].as_array().into_iter().flatten() {
            if let Some((_, expanded)) = dependencies
                .iter()
                .find(|(n, _)| Some(n.as_str()) == dep.as_str())
            {
                deps.extend(expanded.iter().cloned());
            }
        }
        dependencies.push((name, deps));
    }
    let wanted: Option<Vec<String>> =
        params
            .get("subsystems")
            .and_then(Value::as_str)
            .map(|list| {
                list.split(',')
                    .flat_map(|s| {
                        dependencies
                            .iter()
                            .find(|(n, _)| n == s)
                            .map(|(_, d)| d.clone())
                            .unwrap_or_default()
                    })
                    .collect()
            });
    let mut config = Vec::new();
    for (name, _) in &dependencies {
        if wanted.as_ref().is_some_and(|w| !w.contains(name)) {
            continue;
        }
        let mut get = Map::new();
        get.insert("name".into(), json!(name));
        get.insert("with_batches".into(), with_batches.clone());
        let cfg = ctx.call("framework_get_config", get)?;
        config.push(json!({"subsystem": name, "config": cfg}));
    }
    let indent = usize::try_from(indent).ok();
    if !ctx.dry_run {
        outln!("{}", to_python_json(&json!({"subsystems": config}), indent));
    }
    Ok(())
}

fn method_allowed(elem: &Value, allowed: &[String]) -> bool {
    elem.get("method")
        .and_then(Value::as_str)
        .is_some_and(|m| allowed.iter().any(|a| a == m))
}

fn call_config_elem(ctx: &mut Ctx, elem: &Value) -> Result<(), CliError> {
    let method = elem["method"].as_str().unwrap_or_default().to_string();
    let params = elem
        .get("params")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    ctx.call(&method, params).map(|_| ())
}

fn get_methods(
    ctx: &mut Ctx,
    current: bool,
    include_aliases: bool,
) -> Result<Vec<String>, CliError> {
    let mut params = Map::new();
    if current {
        params.insert("current".into(), json!(true));
    }
    params.insert("include_aliases".into(), json!(include_aliases));
    let names = ctx.call("rpc_get_methods", params)?;
    Ok(serde_json::from_value(names).unwrap_or_default())
}

/// rpc.py's `load_config`: apply entries whose methods are callable in the
/// current state, call framework_start_init when allowed, repeat until
/// nothing is left or no progress is possible.
fn run_load_config(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    let include_aliases = params
        .get("include_aliases")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let text = match params.get("json_conf").and_then(Value::as_str) {
        Some(source) if PathBuf::from(source).exists() => std::fs::read_to_string(source)
            .map_err(|e| CliError::Message(format!("cannot read {source}: {e}")))?,
        Some(inline) => inline.to_string(),
        None => {
            let mut buf = String::new();
            std::io::stdin()
                .read_to_string(&mut buf)
                .map_err(|e| CliError::Message(format!("cannot read stdin: {e}")))?;
            buf
        }
    };
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Message(format!("invalid JSON configuration: {e}")))?;
    let mut subsystems: Vec<(String, Vec<Value>)> = config["subsystems"]
        .as_array()
        .ok_or_else(|| CliError::Message("configuration has no \"subsystems\" array".into()))?
        .iter()
        .map(|s| {
            (
                s["subsystem"].as_str().unwrap_or_default().to_string(),
                s["config"].as_array().cloned().unwrap_or_default(),
            )
        })
        .filter(|(_, cfg)| !cfg.is_empty())
        .collect();

    let allowed = get_methods(ctx, false, include_aliases)?;
    if subsystems.is_empty() {
        if allowed.iter().any(|m| m == "framework_start_init") {
            ctx.call("framework_start_init", Map::new())?;
        }
        return Ok(());
    }
    for (_, cfg) in &subsystems {
        for elem in cfg {
            let items: Vec<&Value> = match elem.as_array() {
                Some(batch) => batch.iter().collect(),
                None => vec![elem],
            };
            if !items.iter().all(|item| method_allowed(item, &allowed)) {
                return Err(CliError::Message(
                    "Unknown method was included in the config file".into(),
                ));
            }
        }
    }
    while !subsystems.is_empty() {
        let allowed = get_methods(ctx, true, include_aliases)?;
        let mut progressed = false;
        for (_, cfg) in subsystems.iter_mut() {
            let mut remaining = Vec::new();
            for elem in cfg.drain(..) {
                let items: Vec<Value> = match elem.as_array() {
                    Some(batch) => batch.clone(),
                    None => vec![elem.clone()],
                };
                if items.iter().all(|item| method_allowed(item, &allowed)) {
                    for item in &items {
                        call_config_elem(ctx, item)?;
                    }
                    progressed = true;
                } else {
                    remaining.push(elem);
                }
            }
            *cfg = remaining;
        }
        subsystems.retain(|(_, cfg)| !cfg.is_empty());
        if allowed.iter().any(|m| m == "framework_start_init") {
            ctx.call("framework_start_init", Map::new())?;
            progressed = true;
        }
        if !progressed || ctx.dry_run {
            break;
        }
    }
    if !subsystems.is_empty() {
        outln!("Some configs were skipped because the RPC state that can call them passed over.");
    }
    Ok(())
}

fn server_address(matches: &ArgMatches) -> ListenAddr {
    let addr = matches
        .get_one::<String>("server_addr")
        .cloned()
        .unwrap_or_else(|| DEFAULT_SOCKET_PATH.into());
    let port = matches.get_one::<u16>("port").copied().unwrap_or(5260);
    match addr.parse::<IpAddr>() {
        Ok(ip) => ListenAddr::Tcp((ip, port).into()),
        Err(_) => ListenAddr::Unix(PathBuf::from(addr)),
    }
}

fn connect(matches: &ArgMatches, timeout: Duration) -> Result<RpcClient, Error> {
    let addr = server_address(matches);
    let retries = matches.get_one::<u32>("conn_retries").copied().unwrap_or(0);
    for _ in 0..retries {
        if let Ok(client) = RpcClient::connect(&addr, timeout) {
            return Ok(client);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    RpcClient::connect(&addr, timeout)
}

fn main() -> ExitCode {
    let table = method_table();
    let matches = build_cli(&table).get_matches();
    let timeout = matches.get_one::<f64>("timeout").copied().unwrap_or(60.0);
    if !(timeout > 0.0 && timeout.is_finite()) {
        outln!("Timeout value is invalid: {timeout}");
        return ExitCode::FAILURE;
    }
    let verbose = matches.get_flag("v")
        || matches
            .get_one::<String>("verbose")
            .is_some_and(|level| level != "ERROR");
    let dry_run = matches.get_flag("dry_run");

    let Some((name, sub_matches)) = matches.subcommand() else {
        return ExitCode::FAILURE;
    };
    let Some(spec) = table.iter().find(|spec| spec.name == name) else {
        return ExitCode::FAILURE;
    };

    let client = if dry_run {
        None
    } else {
        match connect(&matches, Duration::from_secs_f64(timeout)) {
            Ok(client) => Some(client),
            Err(err) => {
                outln!("{err}");
                return ExitCode::FAILURE;
            }
        }
    };
    let mut ctx = Ctx {
        client,
        dry_run,
        verbose,
        method_name: spec.name,
    };
    let params = collect_params(spec, sub_matches);
    let outcome = match spec.runner {
        Some(runner) => runner(&mut ctx, sub_matches, params),
        None => ctx
            .call(spec.name, params)
            .map(|result| ctx.print(spec.output, &result)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Message(message)) => {
            outln!("{message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_matches_json_dumps() {
        let value = json!({"a": [1, {"b": "é"}], "c": {}});
        assert_eq!(
            to_python_json(&value, None),
            r#"{"a": [1, {"b": "\u00e9"}], "c": {}}"#
        );
        assert_eq!(
            to_python_json(&json!({"a": [1]}), Some(2)),
            "{\n  \"a\": [\n    1\n  ]\n}"
        );
    }

    #[test]
    fn table_builds_a_valid_cli() {
        build_cli(&method_table()).debug_assert();
    }

    #[test]
    fn nvmf_params_follow_rpc_py() {
        let table = method_table();
        let cli = build_cli(&table);
        let params = |args: &[&str]| {
            let m = cli.clone().try_get_matches_from(args).unwrap();
            let (name, sub) = m.subcommand().unwrap();
            let spec = table.iter().find(|s| s.name == name).unwrap();
            collect_params(spec, sub)
        };
        let p = params(&[
            "rspdk_rpc",
            "nvmf_subsystem_add_listener",
            "nqn.2016-06.io.spdk:cnode1",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            "4420",
            "-f",
            "ipv4",
        ]);
        assert_eq!(
            Value::Object(nest(
                p,
                "listen_address",
                &["trtype", "traddr", "adrfam", "trsvcid"]
            )),
            json!({"nqn": "nqn.2016-06.io.spdk:cnode1", "listen_address":
                {"trtype": "tcp", "traddr": "127.0.0.1", "adrfam": "ipv4", "trsvcid": "4420"}})
        );
        let p = params(&[
            "rspdk_rpc",
            "nvmf_subsystem_add_ns",
            "nqn.2016-06.io.spdk:cnode1",
            "Malloc0",
            "-n",
            "3",
        ]);
        assert_eq!(
            Value::Object(nest(
                p,
                "namespace",
                &["bdev_name", "nsid", "nguid", "eui64", "uuid"]
            )),
            json!({"nqn": "nqn.2016-06.io.spdk:cnode1", "namespace": {"bdev_name": "Malloc0", "nsid": 3}})
        );
        let p = params(&[
            "rspdk_rpc",
            "nvmf_create_subsystem",
            "nqn.2016-06.io.spdk:cnode1",
            "-a",
            "-s",
            "SPDK1",
            "-m",
            "8",
        ]);
        assert_eq!(
            Value::Object(p),
            json!({"nqn": "nqn.2016-06.io.spdk:cnode1", "serial_number": "SPDK1",
                   "allow_any_host": true, "max_namespaces": 8})
        );
        let p = params(&[
            "rspdk_rpc",
            "nvmf_create_transport",
            "-t",
            "TCP",
            "-u",
            "16384",
            "-c",
            "8192",
        ]);
        assert_eq!(
            Value::Object(p),
            json!({"trtype": "TCP", "in_capsule_data_size": 8192, "io_unit_size": 16384})
        );
    }

    #[test]
    fn params_follow_rpc_py() {
        let table = method_table();
        let cli = build_cli(&table);
        let matches = cli
            .try_get_matches_from(["rspdk_rpc", "rpc_get_methods", "--current"])
            .unwrap();
        let (name, sub) = matches.subcommand().unwrap();
        let spec = table.iter().find(|s| s.name == name).unwrap();
        assert_eq!(
            Value::Object(collect_params(spec, sub)),
            json!({"current": true, "include_aliases": false})
        );
    }
}
