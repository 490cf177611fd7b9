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
