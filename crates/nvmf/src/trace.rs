//! The TCP transport's request tracepoints (group `nvmf_tcp`, SPDK's ids
//! for the same request states): a request's life from its capsule to its
//! response, one object per request (`r0`, `r1`, ... in rspdk_trace).

use rspdk_trace::{group, object, tpoint_id, TpointDef};

/// A capsule took a request slot (a new request object).
pub const REQ_NEW: u16 = tpoint_id(group::NVMF_TCP, 0x00);
/// An NVM command is ready for the bdev bridge.
pub const REQ_READY_TO_EXECUTE: u16 = tpoint_id(group::NVMF_TCP, 0x06);
/// Its bdev I/O was submitted.
pub const REQ_EXECUTING: u16 = tpoint_id(group::NVMF_TCP, 0x07);
/// Its bdev I/O completed.
pub const REQ_EXECUTED: u16 = tpoint_id(group::NVMF_TCP, 0x09);
/// Its response was queued for the host.
pub const REQ_COMPLETED: u16 = tpoint_id(group::NVMF_TCP, 0x0d);

const DEFS: &[TpointDef] = &[
    TpointDef {
        id: REQ_NEW,
        name: "TCP_REQ_NEW",
        object_type: object::NVMF_TCP_IO,
        new_object: true,
        args: &["qpair", "cid", "opc"],
    },
    TpointDef {
        id: REQ_READY_TO_EXECUTE,
        name: "TCP_REQ_RDY_TO_EXECUTE",
        object_type: object::NVMF_TCP_IO,
        new_object: false,
        args: &["qpair"],
    },
    TpointDef {
        id: REQ_EXECUTING,
        name: "TCP_REQ_EXECUTING",
        object_type: object::NVMF_TCP_IO,
        new_object: false,
        args: &["qpair"],
    },
    TpointDef {
        id: REQ_EXECUTED,
        name: "TCP_REQ_EXECUTED",
        object_type: object::NVMF_TCP_IO,
        new_object: false,
        args: &["qpair", "status"],
    },
    TpointDef {
        id: REQ_COMPLETED,
        name: "TCP_REQ_COMPLETED",
        object_type: object::NVMF_TCP_IO,
        new_object: false,
        args: &["qpair", "status"],
    },
];

/// Describes the tracepoints to the trace file (once).
pub(crate) fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| rspdk_trace::register_tpoints(DEFS));
}

/// The object id of request `slot` of connection `conn`: unique among
/// the requests in flight.
#[inline(always)]
pub(crate) fn req_id(conn: u64, slot: usize) -> u64 {
    (conn << 16) | slot as u64
}
