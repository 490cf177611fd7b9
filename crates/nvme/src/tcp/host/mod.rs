//! The NVMe/TCP host transport (NVMe/TCP 1.0 and the fabrics commands of
//! NVMe-oF 1.1): one non-blocking TCP connection per queue (admin and
//! each I/O queue pair), ICReq/ICResp, the fabrics Connect, Property
//! Get/Set, and commands as capsules.
//!
//! Data: writes up to the controller's in-capsule limit (IOCCSZ) travel in
//! the command capsule; larger ones wait for the controller's R2T and are
//! answered with H2CData PDUs of at most MAXH2CDATA bytes (the host asks
//! for one R2T per command, MAXR2T 0, and honours it). Read data arrives in
//! C2HData PDUs and is copied into the caller's buffer at its offset; a
//! C2HData with SUCCESS completes the command without a response capsule.
//!
//! Steady state: every buffer (receive, send, request slots, the queue of
//! waiting requests) is allocated when the queue pair connects; submission
//! appends PDUs to the send buffer and [`TcpQpair::poll`] sends them in one
//! `write`, reads what arrived in one `read` into a large buffer, and
//! parses every whole PDU in it.

mod connect;
mod ctrlr;
mod io_qpair;
mod payload;
mod queue;

pub(crate) use ctrlr::TcpCtrlr;
pub(crate) use io_qpair::TcpIoQpair;

/// The fabrics command opcode.
pub const FABRICS_OPCODE: u8 = 0x7f;
/// Fabrics command types (NVMe-oF 1.1, figure 13).
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
}
