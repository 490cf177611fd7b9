//! # rspdk_event — reactors (SPDK's `lib/event` reactor core)
//!
//! A **reactor** is one OS thread pinned to one core that runs many
//! lightweight [`rspdk_thread::Thread`]s by calling their `poll` in turn,
//! forever, passing [`rspdk_thread::now_ns`] as the time.
//!
//! ```no_run
//! use rspdk_event::{parse_core_mask, ReactorOpts, ReactorSet};
//!
//! let mask = parse_core_mask("0x3").unwrap();          // SPDK -m syntax
//! let set = ReactorSet::start(ReactorOpts::new(mask)).unwrap();
//! let app = set.handle().spawn_thread_on(set.handle().main_core(), "app_thread", || {
//!     // runs on the app thread: register pollers, io devices, ...
//! }).unwrap();
//! app.send_msg(|| println!("hello from the app thread")).unwrap();
//! set.stop(); // every thread exits and drains, reactors are joined
//! ```
//!
//! * **Core mask**: [`parse_core_mask`] accepts `0x3`, `3`, `[0,1]`,
//!   `[0-3,5]` with errors naming the problem.
//! * **OS threads**: [`ReactorSet::start`] spawns one OS thread per core of
//!   the mask — *including the main (first) core*; the calling thread is not
//!   used as a reactor, so it is free to wait for signals and then call
//!   [`ReactorSet::stop`] (or [`ReactorSet::wait`] for a stop requested from
//!   inside, e.g. by an RPC through [`ReactorSetHandle::request_stop`]).
//! * **Placement**: [`ReactorSetHandle::spawn_thread`] creates a thread and
//!   lets the [`Scheduler`] (default [`RoundRobin`]) choose among reactors
//!   whose core is in the thread's cpumask; `spawn_thread_on` forces a core.
//!   A running set also serves [`rspdk_thread::thread_create`] (the first
//!   set started in the process installs the hook; stop removes it).
//! * **Interrupt mode** ([`ReactorOpts::interrupt_mode`]): when every thread
//!   on a reactor is idle and agrees to sleep, the reactor blocks in epoll on
//!   its threads' interrupt fds (message eventfd, timer timerfd) and its own
//!   wake fd; an idle app uses ~0% CPU.
//! * **Stop**: [`ReactorSet::stop`] asks every thread to exit, keeps polling
//!   until they have drained (threads that hold pollers or channels are
//!   forced out after their exit timeout, with a report), joins the reactors.
//! * **Stats**: [`ReactorSetHandle::reactors_info`] returns
//!   `framework_get_reactors` JSON structs.
//!
//! # The app framework
//!
//! [`App`] is SPDK's `spdk_app_start`: options in SPDK's spelling
//! ([`AppOpts`], a clap struct binaries flatten), logging ([`log`]),
//! env init, reactors, an `app_thread` serving JSON-RPC, [`Subsystem`]s
//! initialised in dependency order, the JSON config ([`config`]), signals,
//! and the framework's RPC methods ([`rpc_methods`]). The `rspdk_tgt` binary
//! is `App` with no subsystems yet.
//!
//! ```no_run
//! use rspdk_event::{App, AppOpts, Subsystem, SubsystemDone};
//! use rspdk_rpc::{RpcRegistry, StateMask};
//!
//! struct Bdev;
//! impl Subsystem for Bdev {
//!     fn name(&self) -> &str { "bdev" }
//!     fn register_rpcs(&self, reg: &RpcRegistry) -> Result<(), rspdk_rpc::Error> {
//!         reg.register("bdev_get_bdevs", StateMask::RUNTIME, |_p, r| r.success(&Vec::<u32>::new()))
//!     }
//!     fn init(&self, done: SubsystemDone) { done.ok() }
//!     fn write_config_json(&self) -> Option<Vec<serde_json::Value>> { Some(vec![]) }
//! }
//!
//! let code = App::new(AppOpts::default()).subsystem(Bdev).run(|_ctx| {});
//! std::process::exit(code);
//! ```

pub mod app;
pub mod config;
mod iobuf_subsystem;
mod local;
pub mod log;
pub mod notify;
pub mod opts;
mod reactor;
pub mod rpc_methods;
mod rpc_scheduler;
mod scheduler;
mod signals;
mod sock_subsystem;
mod stats;
pub mod subsystem;
mod sys;
mod trace_rpc;

pub use app::{App, AppContext, AppError, AppStopper};
pub use config::{ConfigError, JsonConfig};
pub use iobuf_subsystem::IobufSubsystem;
pub use opts::AppOpts;
pub use reactor::{ReactorError, ReactorOpts, ReactorSet, ReactorSetHandle};
pub use rspdk_thread::{CpuSet, CpuSetParseError};
pub use scheduler::{RoundRobin, Scheduler, ThreadPlacement};
pub use sock_subsystem::SockSubsystem;
pub use stats::{FrameworkGetReactors, LwThreadInfo, ReactorInfo};
pub use subsystem::{Subsystem, SubsystemDone, SubsystemError};
pub use sys::current_cpu;

/// Parses an SPDK `-m` core mask: hex (`0x3`, `3`) or list (`[0,1]`,
/// `[0-3,5]`).
pub fn parse_core_mask(s: &str) -> Result<CpuSet, CpuSetParseError> {
    CpuSet::parse(s)
}
