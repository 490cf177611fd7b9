//! Set-up shared by the bdev integration tests.
#![allow(dead_code, reason = "each test binary uses a subset")]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;

use rspdk_bdev::Bdev;
use rspdk_bdev_malloc as malloc;
use rspdk_rpc::{RpcError, RpcRegistry};
use rspdk_thread::testing::UtThreads;
use serde_json::Value;

/// Registers the bdev modules these tests use (as an app does, in one
/// list; idempotent).
pub fn register_modules() {
    let modules: [std::sync::Arc<dyn rspdk_bdev::BdevModule>; 8] = [
        std::sync::Arc::new(malloc::MallocModule),
        std::sync::Arc::new(rspdk_bdev_null::NullModule),
        std::sync::Arc::new(rspdk_bdev_aio::AioModule),
        std::sync::Arc::new(rspdk_bdev_uring::UringModule),
        std::sync::Arc::new(rspdk_bdev_passthru::PassthruModule),
        std::sync::Arc::new(rspdk_bdev_delay::DelayModule),
        std::sync::Arc::new(rspdk_bdev_error::ErrorModule),
        std::sync::Arc::new(rspdk_bdev_split::SplitModule),
    ];
    modules.into_iter().for_each(rspdk_bdev::module_register);
}

/// Registers the layer's RPC methods and the modules' (as the `bdev`
/// subsystem does).
pub fn register_rpcs(reg: &RpcRegistry) {
    register_modules();
    for m in rspdk_bdev::modules() {
        m.register_rpcs(reg);
    }
    rspdk_bdev::rpc::register_rpcs(reg);
}

/// The process's env: hugepages as root (CI), ordinary pages otherwise.
pub fn env() {
    register_modules();
    static ENV: OnceLock<()> = OnceLock::new();
    ENV.get_or_init(|| {
        rspdk_env::init(&rspdk_env::EnvOpts {
            name: "bdev-test".into(),
            no_huge: !rspdk_env::sys::pagemap_shows_pfns(),
            mem_size_mb: 64,
            ..Default::default()
        })
        .expect("env init");
    });
}

/// A malloc bdev.
pub fn malloc_disk(name: &str, blocks: u64, bs: u32) -> Bdev {
    malloc::create(malloc::MallocOpts {
        name: Some(name.into()),
        num_blocks: blocks,
        block_size: bs,
        ..Default::default()
    })
    .unwrap()
}

/// Calls an RPC method in-process on thread 0 and polls until it answers.
pub fn call(
    ut: &UtThreads,
    reg: &RpcRegistry,
    method: &str,
    params: Value,
) -> Result<Value, RpcError> {
    let out: Rc<RefCell<Option<Result<Value, RpcError>>>> = Rc::default();
    let o = out.clone();
    let params = if params.is_null() { None } else { Some(params) };
    ut.run_on(0, || {
        reg.call(method, params, move |r| *o.borrow_mut() = Some(r))
    });
    for _ in 0..10_000 {
        if out.borrow().is_some() {
            break;
        }
        ut.poll_threads();
    }
    let r = out.borrow_mut().take();
    r.unwrap_or_else(|| panic!("{method} never answered"))
}
