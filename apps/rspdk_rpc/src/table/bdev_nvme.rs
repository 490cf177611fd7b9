//! Subcommands of the NVMe bdev module.

use crate::spec::*;

/// This area's subcommands, in rpc.py's order.
pub(super) fn methods() -> Vec<MethodSpec> {
    use Kind::*;
    use Output::*;
    vec![
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
    ]
}
