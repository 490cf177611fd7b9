//! The bdev layer's tracepoints (group `bdev`, SPDK's ids): an I/O's start
//! and done, and I/O channel creation and destruction.

use rspdk_trace::{group, object, tpoint_id, TpointDef};

/// An I/O accepted by the layer (a new `BDEV_IO` object).
pub const IO_START: u16 = tpoint_id(group::BDEV, 0);
/// An I/O completed.
pub const IO_DONE: u16 = tpoint_id(group::BDEV, 1);
/// An I/O channel created.
pub const IOCH_CREATE: u16 = tpoint_id(group::BDEV, 2);
/// An I/O channel destroyed.
pub const IOCH_DESTROY: u16 = tpoint_id(group::BDEV, 3);

const DEFS: &[TpointDef] = &[
    TpointDef {
        id: IO_START,
        name: "BDEV_IO_START",
        object_type: object::BDEV_IO,
        new_object: true,
        args: &["type", "offset", "len", "qd"],
    },
    TpointDef {
        id: IO_DONE,
        name: "BDEV_IO_DONE",
        object_type: object::BDEV_IO,
        new_object: false,
        args: &["status", "qd"],
    },
    TpointDef {
        id: IOCH_CREATE,
        name: "BDEV_IOCH_CREATE",
        object_type: 0,
        new_object: false,
        args: &["tid"],
    },
    TpointDef {
        id: IOCH_DESTROY,
        name: "BDEV_IOCH_DESTROY",
        object_type: 0,
        new_object: false,
        args: &["tid"],
    },
];

/// Describes the layer's tracepoints to the trace file (once).
pub(crate) fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| rspdk_trace::register_tpoints(DEFS));
}
