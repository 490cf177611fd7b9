//! Subcommands of the iSCSI target.

use crate::runners::*;
use crate::spec::*;

/// This area's subcommands, in rpc.py's order.
pub(super) fn methods() -> Vec<MethodSpec> {
    use Kind::*;
    use Output::*;
    vec![
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
    ]
}
