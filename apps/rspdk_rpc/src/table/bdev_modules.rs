//! Subcommands of the file, passthru, delay, error and split bdev modules.

use crate::spec::*;
use serde_json::json;

/// This area's subcommands, in rpc.py's order.
pub(super) fn methods() -> Vec<MethodSpec> {
    use Kind::*;
    use Output::*;
    vec![
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
    ]
}
