//! Every subcommand, one table per area like SPDK's python/spdk/cli/*.py.
//! Names, flags and JSON keys follow rpc.py.

use crate::spec::MethodSpec;

mod bdev;
mod bdev_modules;
mod bdev_nvme;
mod framework;
mod iscsi;
mod nvmf;
mod raw;

/// Every subcommand, in the order `--help` lists them.
pub(crate) fn method_table() -> Vec<MethodSpec> {
    [
        framework::methods(),
        nvmf::methods(),
        bdev::methods(),
        bdev_nvme::methods(),
        bdev_modules::methods(),
        iscsi::methods(),
        raw::methods(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
