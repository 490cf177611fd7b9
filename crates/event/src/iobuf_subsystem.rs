//! The `iobuf` subsystem (SPDK's `iobuf`): `iobuf_set_options` before
//! start-up, `iobuf_get_stats`, and its save_config section. The pools
//! themselves are `rspdk_thread::iobuf`.

use serde::Deserialize;
use serde_json::{json, Value};

use rspdk_rpc::{expect_no_params, parse_params, RpcError, RpcRegistry, StateMask};
use rspdk_thread::iobuf::{self, IobufOpts};

use crate::Subsystem;

/// SPDK's `iobuf` subsystem.
#[derive(Debug, Default)]
pub struct IobufSubsystem;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOptions {
    #[serde(default)]
    small_pool_count: Option<u64>,
    #[serde(default)]
    large_pool_count: Option<u64>,
    #[serde(default)]
    small_bufsize: Option<u64>,
    #[serde(default)]
    large_bufsize: Option<u64>,
    #[serde(default)]
    enable_numa: bool,
}

impl Subsystem for IobufSubsystem {
    fn name(&self) -> &str {
        "iobuf"
    }

    fn register_rpcs(&self, registry: &RpcRegistry) -> Result<(), rspdk_rpc::Error> {
        registry.register("iobuf_set_options", StateMask::STARTUP, |p, r| {
            let p: SetOptions = match parse_params(p) {
                Ok(p) => p,
                Err(e) => return r.error(e),
            };
            if p.enable_numa {
                return r.error(RpcError::invalid_params(
                    "enable_numa: per-NUMA-node iobuf pools are not supported by rspdk yet (its pools serve every node); omit --enable-numa"
                        .to_string(),
                ));
            }
            let cur = iobuf::options();
            let opts = IobufOpts {
                small_pool_count: p.small_pool_count.unwrap_or(cur.small_pool_count),
                large_pool_count: p.large_pool_count.unwrap_or(cur.large_pool_count),
                small_bufsize: p.small_bufsize.unwrap_or(cur.small_bufsize),
                large_bufsize: p.large_bufsize.unwrap_or(cur.large_bufsize),
            };
            match iobuf::set_options(opts) {
                Ok(()) => r.success(&true),
                Err(e) => r.error(RpcError::invalid_params(e.to_string())),
            }
        })?;
        registry.register("iobuf_get_stats", StateMask::ALL, |p, r| {
            if let Err(e) = expect_no_params("iobuf_get_stats", &p) {
                return r.error(e);
            }
            r.success(&iobuf::stats());
        })?;
        Ok(())
    }

    fn write_config_json(&self) -> Option<Vec<Value>> {
        Some(vec![
            json!({"method": "iobuf_set_options", "params": iobuf::options()}),
        ])
    }
}
