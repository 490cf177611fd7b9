//! The `sock` subsystem (SPDK's `sock`): the `sock_*` RPCs and their
//! save_config section. The options live in `rspdk_sock`, which the
//! NVMe-oF and iSCSI targets and the NVMe/TCP host apply to their sockets.

use rspdk_rpc::RpcRegistry;
use serde_json::Value;

use crate::Subsystem;

/// SPDK's `sock` subsystem (register it first: SPDK's save_config lists
/// it first, and the sockets of later subsystems use its options).
#[derive(Debug, Default)]
pub struct SockSubsystem;

impl Subsystem for SockSubsystem {
    fn name(&self) -> &str {
        "sock"
    }

    fn register_rpcs(&self, registry: &RpcRegistry) -> Result<(), rspdk_rpc::Error> {
        rspdk_sock::register_rpcs(registry)
    }

    fn write_config_json(&self) -> Option<Vec<Value>> {
        Some(rspdk_sock::config_json())
    }
}
