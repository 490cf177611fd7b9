//! Bdev modules that need no special hardware.

pub mod malloc;
pub mod null;

/// A module's RPC registration function.
pub type RpcRegistrar = fn(&rspdk_rpc::RpcRegistry);

/// The RPC registrars of the modules beyond malloc and null (whose methods
/// `crate::rpc::register_rpcs` registers itself). A new module adds its
/// `register_rpcs` here.
pub fn rpc_registrars() -> Vec<RpcRegistrar> {
    vec![]
}

/// Registers the modules that examine new bdevs (virtual-bdev modules).
/// Called once when the bdev subsystem starts.
pub fn register_modules() {}
