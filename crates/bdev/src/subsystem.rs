//! The `bdev` subsystem for the app framework: its RPC methods, its
//! save_config section, and unregistering every bdev at shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rspdk_event::{Subsystem, SubsystemDone};
use rspdk_rpc::RpcRegistry;
use serde_json::Value;

/// SPDK's `bdev` subsystem.
#[derive(Debug, Default)]
pub struct BdevSubsystem;

impl Subsystem for BdevSubsystem {
    fn name(&self) -> &str {
        "bdev"
    }

    fn register_rpcs(&self, registry: &RpcRegistry) -> Result<(), rspdk_rpc::Error> {
        // SPDK's log flags (`-L FLAG`, `log_set_flag`) of the layer and of
        // each registered module, each enabling debug logs of its code.
        rspdk_event::log::register_log_flag("bdev", &["rspdk_bdev"]);
        // The notification types the layer sends (SPDK's bdev does too).
        rspdk_event::notify::register_type("bdev_register");
        rspdk_event::notify::register_type("bdev_unregister");
        for m in crate::modules() {
            for (flag, target) in m.log_flags() {
                rspdk_event::log::register_log_flag(flag, &[target]);
            }
            m.register_rpcs(registry);
        }
        crate::rpc::register_rpcs(registry);
        Ok(())
    }

    fn fini(&self, done: SubsystemDone) {
        // Unregister in reverse registration order: virtual bdevs go before
        // the bases they claim.
        let all: Vec<String> = crate::bdevs()
            .iter()
            .rev()
            .map(|b| b.name().to_string())
            .collect();
        if all.is_empty() {
            for m in crate::modules() {
                m.fini();
            }
            return done.ok();
        }
        let left = Arc::new(AtomicUsize::new(all.len()));
        let done = Arc::new(Mutex::new(Some(done)));
        for name in all {
            let left = left.clone();
            let done = done.clone();
            let finish = move || {
                if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    for m in crate::modules() {
                        m.fini();
                    }
                    if let Some(d) = done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        d.ok();
                    }
                }
            };
            if crate::bdev_unregister(&name, finish.clone()).is_err() {
                // Already gone (a virtual bdev removed with its base).
                finish();
            }
        }
    }

    fn write_config_json(&self) -> Option<Vec<Value>> {
        Some(crate::rpc::config_json())
    }
}
