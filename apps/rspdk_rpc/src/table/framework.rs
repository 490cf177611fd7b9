//! Subcommands of the app framework, threads, logs, config.

use crate::runners::*;
use crate::spec::*;
use serde_json::json;

/// This area's subcommands, in rpc.py's order.
pub(super) fn methods() -> Vec<MethodSpec> {
    use Kind::*;
    use Output::*;
    vec![
        method("spdk_get_version", "Get SPDK version").output(JsonUnquoted),
        method("rpc_get_methods", "Get list of supported RPC methods")
            .opt(Some('c'), "current", Flag, "Return only RPC methods callable in the current state. Default: false")
            .opt(Some('i'), "include-aliases", Flag, "Include deprecated method aliases in the result. Default: false"),
        method("trace_enable_tpoint_group", "enable trace on a specific tpoint group")
            .pos("name", Str, "trace group name we want to enable in tpoint_group_mask.").output(Nothing),
        method("trace_disable_tpoint_group", "disable trace on a specific tpoint group")
            .pos("name", Str, "trace group name we want to disable in tpoint_group_mask.").output(Nothing),
        method("trace_set_tpoint_mask", "enable tracepoint mask on a specific tpoint group")
            .pos("name", Str, "trace group name we want to enable in tpoint_group_mask.")
            .pos("tpoint_mask", Hex, "tracepoints to be enabled inside a given trace group.").output(Nothing),
        method("trace_clear_tpoint_mask", "disable tracepoint mask on a specific tpoint group")
            .pos("name", Str, "trace group name we want to disable in tpoint_group_mask.")
            .pos("tpoint_mask", Hex, "tracepoints to be disabled inside a given trace group.").output(Nothing),
        method("trace_get_tpoint_group_mask", "get trace point group mask"),
        method("trace_get_info", "get name of shared memory file and list of the available trace point groups"),
        method("trace_clear", "clear the trace (every core's events)").output(Nothing),
        method("notify_get_types", "List available notifications that user can subscribe to."),
        method("notify_get_notifications", "Get notifications")
            .opt(Some('i'), "id", Int, "First ID to start fetching from")
            .opt(Some('n'), "max", Int, "Maximum number of notifications to return in response"),
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
    ]
}
