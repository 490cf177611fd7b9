//! Subcommands of the NVMe-oF target.

use crate::runners::*;
use crate::spec::*;

/// This area's subcommands, in rpc.py's order.
pub(super) fn methods() -> Vec<MethodSpec> {
    use Kind::*;
    use Output::*;
    vec![
        method("nvmf_create_transport", "Create NVMf transport")
            .opt(Some('t'), "trtype", Str, "Transport type (ex. RDMA)")
            .opt(
                Some('g'),
                "tgt-name",
                Str,
                "The name of the parent NVMe-oF target (optional)",
            )
            .opt(
                Some('q'),
                "max-queue-depth",
                Int,
                "Max number of outstanding I/O per queue",
            )
            .opt(
                Some('m'),
                "max-io-qpairs-per-ctrlr",
                Int,
                "Max number of IO qpairs per controller",
            )
            .opt(
                Some('c'),
                "in-capsule-data-size",
                Int,
                "Max number of in-capsule data size",
            )
            .opt(Some('i'), "max-io-size", Int, "Max I/O size (bytes)")
            .opt(Some('u'), "io-unit-size", Int, "I/O unit size (bytes)")
            .opt(
                Some('a'),
                "max-aq-depth",
                Int,
                "Max number of admin cmds per AQ",
            )
            .opt(
                Some('n'),
                "num-shared-buffers",
                Int,
                "The number of pooled data buffers available to the transport",
            )
            .opt(
                Some('b'),
                "buf-cache-size",
                Int,
                "The number of shared buffers to reserve for each poll group",
            )
            .opt(
                Some('y'),
                "sock-priority",
                Int,
                "The sock priority of the tcp connection",
            )
            .opt(
                Some('x'),
                "abort-timeout-sec",
                Int,
                "Abort execution timeout value, in seconds",
            )
            .output(Nothing)
            .runner(run_nvmf_create_transport),
        method(
            "nvmf_get_transports",
            "Display nvmf transports or required transport",
        )
        .opt(Some('t'), "trtype", Str, "Transport type (optional)")
        .opt(
            Some('g'),
            "tgt-name",
            Str,
            "The name of the parent NVMe-oF target (optional)",
        ),
        method("nvmf_create_subsystem", "Create an NVMe-oF subsystem")
            .pos("nqn", Str, "Subsystem NQN (ASCII)")
            .opt(
                Some('t'),
                "tgt-name",
                Str,
                "The name of the parent NVMe-oF target (optional)",
            )
            .opt(
                Some('s'),
                "serial-number",
                Str,
                "Format:  'sn' etc Example: 'SPDK00000000000001'",
            )
            .opt(
                Some('d'),
                "model-number",
                Str,
                "Format:  'mn' etc Example: 'SPDK Controller'",
            )
            .opt(
                Some('a'),
                "allow-any-host",
                Flag,
                "Allow any host to connect (don't enforce allowed host NQN list)",
            )
            .opt(
                Some('m'),
                "max-namespaces",
                Int,
                "Maximum number of namespaces allowed",
            )
            .opt(Some('i'), "min_cntlid", Int, "Minimum controller ID")
            .opt(Some('I'), "max_cntlid", Int, "Maximum controller ID")
            .output(Nothing),
        method("nvmf_delete_subsystem", "Delete a nvmf subsystem")
            .pos(
                "nqn",
                Str,
                "subsystem nqn to be deleted. Example: nqn.2016-06.io.spdk:cnode1.",
            )
            .opt(
                Some('t'),
                "tgt-name",
                Str,
                "The name of the parent NVMe-oF target (optional)",
            )
            .output(Nothing),
        method(
            "nvmf_subsystem_add_listener",
            "Add a listener to an NVMe-oF subsystem",
        )
        .pos(
            "nqn",
            Str,
            "NVMe-oF subsystem NQN (\'discovery\' can be used as shortcut for discovery NQN)",
        )
        .opt(
            Some('t'),
            "trtype",
            Str,
            "NVMe-oF transport type: e.g., rdma",
        )
        .opt(
            Some('a'),
            "traddr",
            Str,
            "NVMe-oF transport address: e.g., an ip address",
        )
        .opt(
            Some('p'),
            "tgt-name",
            Str,
            "The name of the parent NVMe-oF target (optional)",
        )
        .opt(
            Some('f'),
            "adrfam",
            Str,
            "NVMe-oF transport adrfam: e.g., ipv4, ipv6, ib, fc, intra_host",
        )
        .opt(
            Some('s'),
            "trsvcid",
            Str,
            "NVMe-oF transport service id: e.g., a port number",
        )
        .output(Nothing)
        .runner(run_nvmf_add_listener),
        method(
            "nvmf_subsystem_remove_listener",
            "Remove a listener from an NVMe-oF subsystem",
        )
        .pos(
            "nqn",
            Str,
            "NVMe-oF subsystem NQN (\'discovery\' can be used as shortcut for discovery NQN)",
        )
        .opt(
            Some('t'),
            "trtype",
            Str,
            "NVMe-oF transport type: e.g., rdma",
        )
        .opt(
            Some('a'),
            "traddr",
            Str,
            "NVMe-oF transport address: e.g., an ip address",
        )
        .opt(
            Some('p'),
            "tgt-name",
            Str,
            "The name of the parent NVMe-oF target (optional)",
        )
        .opt(
            Some('f'),
            "adrfam",
            Str,
            "NVMe-oF transport adrfam: e.g., ipv4, ipv6, ib, fc, intra_host",
        )
        .opt(
            Some('s'),
            "trsvcid",
            Str,
            "NVMe-oF transport service id: e.g., a port number",
        )
        .output(Nothing)
        .runner(run_nvmf_remove_listener),
        method(
            "nvmf_subsystem_add_ns",
            "Add a namespace to an NVMe-oF subsystem",
        )
        .pos("nqn", Str, "NVMe-oF subsystem NQN")
        .pos(
            "bdev_name",
            Str,
            "The name of the bdev that will back this namespace",
        )
        .opt(
            Some('t'),
            "tgt-name",
            Str,
            "The name of the parent NVMe-oF target (optional)",
        )
        .opt(Some('n'), "nsid", Int, "The requested NSID (optional)")
        .opt(
            Some('g'),
            "nguid",
            Str,
            "Namespace globally unique identifier (optional)",
        )
        .opt(
            Some('e'),
            "eui64",
            Str,
            "Namespace EUI-64 identifier (optional)",
        )
        .opt(Some('u'), "uuid", Str, "Namespace UUID (optional)")
        .runner(run_nvmf_add_ns),
        method(
            "nvmf_subsystem_remove_ns",
            "Remove a namespace to an NVMe-oF subsystem",
        )
        .pos("nqn", Str, "NVMe-oF subsystem NQN")
        .pos("nsid", Int, "The requested NSID")
        .opt(
            Some('t'),
            "tgt-name",
            Str,
            "The name of the parent NVMe-oF target (optional)",
        )
        .output(Nothing),
        method(
            "nvmf_subsystem_add_host",
            "Add a host to an NVMe-oF subsystem",
        )
        .pos("nqn", Str, "NVMe-oF subsystem NQN")
        .pos("host", Str, "Host NQN to allow")
        .opt(
            Some('t'),
            "tgt-name",
            Str,
            "The name of the parent NVMe-oF target (optional)",
        )
        .output(Nothing),
        method(
            "nvmf_subsystem_remove_host",
            "Remove a host from an NVMe-oF subsystem",
        )
        .pos("nqn", Str, "NVMe-oF subsystem NQN")
        .pos("host", Str, "Host NQN to remove")
        .opt(
            Some('t'),
            "tgt-name",
            Str,
            "The name of the parent NVMe-oF target (optional)",
        )
        .output(Nothing),
        method(
            "nvmf_subsystem_allow_any_host",
            "Allow any host to connect to the subsystem",
        )
        .pos("nqn", Str, "NVMe-oF subsystem NQN")
        .opt(Some('e'), "enable", Flag, "Enable allowing any host")
        .opt(Some('d'), "disable", Flag, "Disable allowing any host")
        .opt(
            Some('t'),
            "tgt-name",
            Str,
            "The name of the parent NVMe-oF target (optional)",
        )
        .output(Nothing)
        .runner(run_nvmf_allow_any_host),
        method(
            "nvmf_get_subsystems",
            "Display nvmf subsystems or required subsystem",
        )
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
        .opt(
            Some('t'),
            "tgt-name",
            Str,
            "The name of the parent NVMe-oF target (optional)",
        ),
        method(
            "nvmf_subsystem_get_controllers",
            "Display controllers of an NVMe-oF subsystem.",
        )
        .pos("nqn", Str, "NVMe-oF subsystem NQN")
        .opt(
            Some('t'),
            "tgt-name",
            Str,
            "The name of the parent NVMe-oF target (optional)",
        ),
        method(
            "nvmf_subsystem_get_qpairs",
            "Display queue pairs of an NVMe-oF subsystem.",
        )
        .pos("nqn", Str, "NVMe-oF subsystem NQN")
        .opt(
            Some('t'),
            "tgt-name",
            Str,
            "The name of the parent NVMe-oF target (optional)",
        ),
        method(
            "nvmf_get_stats",
            "Display current statistics for NVMf subsystem",
        )
        .opt(
            Some('t'),
            "tgt-name",
            Str,
            "The name of the parent NVMe-oF target (optional)",
        ),
        // bdev layer and modules (python/spdk/cli/bdev.py).
    ]
}
