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
//! ## Wiring an application (what `rspdk_tgt` is expected to do)
//!
//! 1. Parse `-m` with [`parse_core_mask`], build [`ReactorOpts`] (set
//!    `interrupt_mode` for `--interrupt-mode`), [`ReactorSet::start`].
//! 2. Create the app thread on the main core:
//!    `handle.spawn_thread_on(handle.main_core(), "app_thread", init)`;
//!    `init` runs on it: start the RPC server there (a timed poller in
//!    polling mode, or [`rspdk_thread::Thread::interrupt_register`] on the
//!    listening socket in interrupt mode), initialise subsystems (each may
//!    register io_devices and use `for_each_thread` / `send_msg`).
//! 3. Register [`rspdk_thread::Thread::on_exit`] hooks on every thread that
//!    owns pollers, channels or fd interrupts, releasing them, so stop does
//!    not have to wait for the exit timeout.
//! 4. On SIGINT/SIGTERM (the calling OS thread is free to wait for them) or
//!    an RPC such as `spdk_kill_instance`: finish subsystems on the app
//!    thread, then [`ReactorSetHandle::request_stop`]; the main OS thread's
//!    [`ReactorSet::wait`] returns once everything has drained and joined.
//! 5. RPCs: `framework_get_reactors` = [`ReactorSetHandle::reactors_info`];
//!    `thread_get_stats` / `thread_get_pollers` / `thread_get_io_channels`
//!    = [`rspdk_thread::gather_from_threads`] with
//!    `Thread::stats_info` / `pollers_info` / `io_channels_info`;
//!    `framework_get_scheduler` = [`ReactorSetHandle::scheduler_name`].

mod reactor;
mod scheduler;
mod stats;
mod sys;

pub use reactor::{ReactorError, ReactorOpts, ReactorSet, ReactorSetHandle};
pub use rspdk_thread::{CpuSet, CpuSetParseError};
pub use scheduler::{RoundRobin, Scheduler, ThreadPlacement};
pub use stats::{FrameworkGetReactors, LwThreadInfo, ReactorInfo};
pub use sys::current_cpu;

/// Parses an SPDK `-m` core mask: hex (`0x3`, `3`) or list (`[0,1]`,
/// `[0-3,5]`).
pub fn parse_core_mask(s: &str) -> Result<CpuSet, CpuSetParseError> {
    CpuSet::parse(s)
}
