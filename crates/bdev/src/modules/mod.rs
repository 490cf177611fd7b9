//! Bdev modules (nvme drives a PCIe controller; the rest need no special hardware).

pub mod aio;
pub mod delay;
pub mod error;
mod file;
pub mod malloc;
pub mod null;
pub mod nvme;
pub mod passthru;
pub mod split;
pub mod uring;
mod vbdev;

/// A module's RPC registration function.
pub type RpcRegistrar = fn(&rspdk_rpc::RpcRegistry);

/// The RPC registrars of the modules beyond malloc and null (whose methods
/// `crate::rpc::register_rpcs` registers itself). A new module adds its
/// `register_rpcs` here.
pub fn rpc_registrars() -> Vec<RpcRegistrar> {
    vec![
        aio::register_rpcs,
        uring::register_rpcs,
        passthru::register_rpcs,
        delay::register_rpcs,
        error::register_rpcs,
        split::register_rpcs,
        nvme::register_rpcs,
    ]
}

/// Registers the modules that examine new bdevs (virtual-bdev modules).
/// Called once when the bdev subsystem starts.
pub fn register_modules() {
    crate::bdev::module_register(std::sync::Arc::new(nvme::NvmeModule));
}

/// Completes a poller's batch of finished I/Os outside the channel state's
/// borrow (a completion may submit again, which borrows it), then gives the
/// emptied vector back through `slot` so its capacity is reused: no
/// allocation per batch. Shared by the modules that reap real completions.
pub(crate) fn complete_batch<S>(
    cell: &std::cell::RefCell<S>,
    mut done: Vec<(crate::BdevIo, crate::IoStatus)>,
    slot: fn(&mut S) -> &mut Vec<(crate::BdevIo, crate::IoStatus)>,
) -> rspdk_thread::PollerStatus {
    for (io, status) in done.drain(..) {
        io.complete(status);
    }
    let mut st = cell.borrow_mut();
    let spare = slot(&mut st);
    if spare.is_empty() {
        *spare = done;
    }
    rspdk_thread::PollerStatus::Busy
}
