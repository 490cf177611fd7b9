//! The bdev modules rspdk's apps ship, in one list (SPDK's apps link
//! `BLOCKDEV_MODULES_LIST` from `mk/spdk.modules.mk` the same way). A new
//! module is its crate (`modules/bdev/<name>`) plus one line in [`all`]
//! and the dependency here; an app that wants fewer registers its own list
//! with `rspdk_bdev::module_register`.

use std::sync::Arc;

use rspdk_bdev::BdevModule;

/// Every bdev module, in the order save_config lists their module-wide
/// settings.
pub fn all() -> Vec<Arc<dyn BdevModule>> {
    vec![
        Arc::new(rspdk_bdev_malloc::MallocModule),
        Arc::new(rspdk_bdev_null::NullModule),
        Arc::new(rspdk_bdev_nvme::NvmeModule),
        Arc::new(rspdk_bdev_aio::AioModule),
        Arc::new(rspdk_bdev_uring::UringModule),
        Arc::new(rspdk_bdev_passthru::PassthruModule),
        Arc::new(rspdk_bdev_delay::DelayModule),
        Arc::new(rspdk_bdev_error::ErrorModule),
        Arc::new(rspdk_bdev_split::SplitModule),
    ]
}

/// Registers [`all`] with the bdev layer, before the app framework starts
/// (the `bdev` subsystem then registers their RPC methods and log flags).
pub fn register_all() {
    all().into_iter().for_each(rspdk_bdev::module_register);
}
