//! Subcommands of the block device layer and modules.

use crate::runners::*;
use crate::spec::*;

/// This area's subcommands, in rpc.py's order.
pub(super) fn methods() -> Vec<MethodSpec> {
    use Kind::*;
    use Output::*;
    vec![
        method("bdev_malloc_create", "Create a bdev with malloc backend")
            .pos("total_size", Float, "Size of malloc bdev in MB (float > 0)")
            .pos("block_size", Int, "Data block size for this bdev")
            .opt(Some('b'), "name", Str, "Name of the bdev")
            .opt(Some('u'), "uuid", Str, "UUID of the bdev (optional)")
            .opt(
                Some('p'),
                "physical-block-size",
                Int,
                "Physical block size of this bdev",
            )
            .opt(
                Some('o'),
                "optimal-io-boundary",
                Int,
                "Split on optimal IO boundary, in number of blocks",
            )
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
            .pos(
                "new_size",
                Int,
                "new bdev size for resize operation. The unit is MiB",
            )
            .output(Nothing),
        method(
            "bdev_get_bdevs",
            "Display current blockdev list or required blockdev",
        )
        .opt(
            Some('b'),
            "name",
            Str,
            "Name of the Blockdev. Example: Nvme0n1",
        )
        .opt(
            Some('t'),
            "timeout",
            Int,
            "Time (ms) to wait for the bdev with specified name to appear",
        ),
        method(
            "bdev_get_iostat",
            "Display current I/O statistics of all the blockdevs or specified blockdev.",
        )
        .opt(
            Some('b'),
            "name",
            Str,
            "Name of the Blockdev. Example: Nvme0n1",
        ),
        method("bdev_set_qos_limit", "Set QoS rate limit on a blockdev")
            .pos("name", Str, "Blockdev name to set QoS. Example: Malloc0")
            .opt(
                None,
                "rw_ios_per_sec",
                Int,
                "R/W IOs per second limit (>=1000, example: 20000). 0 means unlimited.",
            )
            .opt(
                None,
                "rw_mbytes_per_sec",
                Int,
                "R/W megabytes per second limit (>=10, example: 100). 0 means unlimited.",
            )
            .opt(
                None,
                "r_mbytes_per_sec",
                Int,
                "Read megabytes per second limit (>=10, example: 100). 0 means unlimited.",
            )
            .opt(
                None,
                "w_mbytes_per_sec",
                Int,
                "Write megabytes per second limit (>=10, example: 100). 0 means unlimited.",
            )
            .output(Nothing),
        method(
            "bdev_wait_for_examine",
            "Report when all bdevs have been examined",
        )
        .output(Nothing),
        method(
            "bdev_examine",
            "examine a bdev if it exists, or queue it for examine when it is added",
        )
        .pos("name", Str, "Name of the block device")
        .output(Nothing),
    ]
}
