//! # rspdk_thread — SPDK's thread model (`include/spdk/thread.h`) in Rust
//!
//! ## Model
//!
//! A [`Thread`] is a *lightweight thread*: not an OS thread but a
//! schedulable context holding a message queue, pollers, I/O channels, a
//! name, an id, a cpumask and statistics. Nothing runs by itself: **someone
//! calls [`Thread::poll`]`(max_msgs, now)`** repeatedly. In an application
//! that is a reactor (crate `rspdk_event`), which runs many lightweight
//! threads on one pinned OS thread by polling them in turn; in unit tests it
//! is the deterministic harness [`testing::UtThreads`]. A `Thread` is not
//! `Send`: it stays on the OS thread that started it ([`PendingThread`] is
//! the `Send` "created but not yet started" form a scheduler moves to the
//! reactor that will own it).
//!
//! ## Creating threads
//!
//! Whoever polls a thread creates it ([`Thread::new`], or
//! [`PendingThread::new`] + [`PendingThread::start`] on the polling OS
//! thread). Library code that only needs "a new thread somewhere" calls
//! [`thread_create`] (SPDK's `spdk_thread_create`), which goes through the
//! process-wide hook the reactors install ([`set_thread_create_hook`]) and
//! returns a [`ThreadHandle`] to send it messages.
//!
//! ## Time
//!
//! Time is an argument: `poll(now)` takes the current time in ticks (ns;
//! [`TICK_RATE`] = 1e9). Reactors pass [`now_ns`]; tests pass a fake clock.
//! Timed pollers, busy/idle accounting and exit timeouts all use that value,
//! never a clock of their own.
//!
//! ## The current thread
//!
//! During `poll` (and inside [`Thread::enter`]) the polled thread is the
//! *current thread* of the OS thread ([`Thread::current`], [`get_thread`],
//! like `spdk_get_thread`), so code running in a message or poller can call
//! [`poller_register`], [`IoDevice::get_channel`], [`for_each_thread`], ...
//! without being handed the thread.
//!
//! ## Messages
//!
//! [`ThreadHandle`] (`Send + Sync + Clone`) addresses a thread from anywhere.
//! [`ThreadHandle::send_msg`] is:
//! * **always asynchronous** — the closure runs during a later poll of the
//!   target, never inline, even when sent to the current thread;
//! * **ordered per sender** — messages from one sender run in send order;
//! * **lock-free and allocation-free in steady state** — closures of up to
//!   48 bytes are stored inline in a bounded multi-producer single-consumer
//!   ring whose slots are one 64-byte cache line each (sequence word +
//!   message; larger closures are boxed); producers claim a slot with one
//!   CAS, the consumer drains a batch without any atomic read-modify-write.
//! * **never lost when the ring is full** — the message goes to an overflow
//!   list (mutex + `VecDeque`, so this path allocates) that is drained, in
//!   order, once the ring is empty; while it is non-empty every sender
//!   appends there, so per-sender order is kept. `send_msg` fails only when
//!   the target has exited ([`SendError::Exited`]). A message that races with
//!   the target's final drop is dropped unrun (its captures are released).
//!
//! ## Pollers
//!
//! [`Thread::poller_register`]`(name, period_us, f)`: period 0 runs on every
//! poll; otherwise it runs when `now` passes its deadline, kept in a binary
//! heap keyed by next-run tick (only expired entries are touched per poll).
//! `f` returns [`PollerStatus::Busy`]/[`Idle`](PollerStatus::Idle), counted in
//! statistics, and receives its own [`Poller`] so it can
//! [`pause`](Poller::pause), [`resume`](Poller::resume) or
//! [`unregister`](Poller::unregister) itself.
//!
//! ## I/O devices and channels
//!
//! [`io_device_register`] returns an [`IoDevice<T>`]: a typed per-thread
//! context `T` is built by the device's create callback on a thread's first
//! [`IoDevice::get_channel`] (or [`get_io_channel`] by key); the
//! [`IoChannel<T>`] is refcounted (clone = get, drop = put) and destroyed
//! asynchronously on its own thread after the last drop;
//! [`IoDevice::for_each_channel`] visits the holders serially (one message
//! hop each) with explicit continuation ([`ChannelIter::continue_with`]);
//! [`IoDevice::unregister`] is deferred until all channels are gone.
//!
//! ## Example (with the deterministic test harness)
//!
//! ```
//! use std::cell::Cell;
//! use rspdk_thread::testing::UtThreads;
//! use rspdk_thread::*;
//!
//! let mut ut = UtThreads::new(2);                 // two threads, fake clock at 0
//! let dev = io_device_register(IoDeviceKey(0xd0c), "doc_dev",
//!     || Ok(Cell::new(0u64)),                     // per-thread channel context
//!     |_ctx| {})                                  // destroy callback
//!     .unwrap();
//! let dev1 = dev.clone();
//! // From thread 0, ask thread 1 to register a 100 us poller that uses its channel.
//! ut.run_on(0, || {
//!     ut.handle(1).send_msg(move || {
//!         let ch = dev1.get_channel().unwrap();   // thread 1's channel
//!         poller_register("count", 100, move |_me| {
//!             ch.set(ch.get() + 1);
//!             PollerStatus::Busy
//!         }).unwrap();
//!     }).unwrap();
//! });
//! ut.poll_threads();                               // runs the message
//! ut.run_for_us(1_000, 50);                        // 1 ms of fake time
//! assert_eq!(ut.thread(1).pollers()[0].run_count(), 10);
//! assert_eq!(ut.thread(1).io_channels(), vec![("doc_dev".to_string(), 1)]);
//! ```
//!
//! The thread and io_device registries are process-global (as in SPDK):
//! [`for_each_thread`] visits every live thread of the process, so every
//! thread must be polled by someone for it to complete.
//!
//! ## Lifecycle
//!
//! [`Thread::exit`] requests exit (a reactor set's stop does it for every
//! thread); [`Thread::on_exit`] hooks then run on the thread so owners can
//! release what they hold. The thread keeps being polled until its pollers
//! are unregistered, channels released, fd interrupts unregistered and
//! queue empty, then [`Thread::is_exited`] and it can be dropped. After the
//! exit timeout it is reported ([`Thread::exit_report`], `tracing::error!`
//! with the names of the pollers, channels and interrupts holding it) and
//! forced to exited.
//!
//! ## Interrupt mode
//!
//! With [`ThreadOpts::interrupt_mode`] a thread owns an eventfd, a timerfd
//! and an epoll fd ([`Thread::interrupt_fd`]). When it has no waiting
//! period-0 poller and nothing queued, [`Thread::prepare_sleep`] marks it
//! sleeping and arms the timerfd for its next timed poller; the owner waits
//! on the fd (a reactor puts it in its own epoll) and calls
//! [`Thread::finish_sleep`]. A sender writes the eventfd only when the
//! target is marked sleeping, so polling mode (the default) costs no syscall
//! per message. All syscalls live in the small `sys` module.
//! [`Thread::interrupt_register`]`(fd, name, f)` (SPDK's
//! `spdk_interrupt_register`) adds an fd to the thread's epoll set: `f`
//! runs when it is readable, and it wakes a sleeping thread — e.g. for a
//! listening socket. In polling mode use a poller instead (as SPDK does).
//!
//! ## Statistics
//!
//! [`Thread::stats`], and serde structs with SPDK's JSON field names for
//! `thread_get_stats`, `thread_get_pollers`, `thread_get_io_channels`
//! ([`Thread::stats_info`], [`Thread::pollers_info`],
//! [`Thread::io_channels_info`], collected with [`gather_from_threads`]).

// `unsafe` lives only in these small fenced modules, each block with a
// `// SAFETY:` comment: `msg` (inline closure cells), `ring` (the MPSC
// ring), `current` (current-thread pointer), `clock` (RDTSC), `sys`
// (eventfd/timerfd/epoll syscalls).

mod cpuset;
mod current;
mod io_channel;
pub mod iobuf;
mod msg;
mod ring;
mod stats;
mod sys;
pub mod testing;
mod thread;

pub use cpuset::{CpuSet, CpuSetParseError, MAX_CPUS};
pub use io_channel::{
    get_io_channel, io_device_lookup, io_device_register, ChannelIter, IoChannel, IoDevice,
    IoDeviceError, IoDeviceKey,
};
pub use msg::INLINE_BYTES as MSG_INLINE_BYTES;
pub use stats::{
    IoChannelInfo, PollerInfo, ThreadGetIoChannels, ThreadGetPollers, ThreadGetStats,
    ThreadIoChannelsInfo, ThreadPollersInfo, ThreadStatsInfo,
};
pub use sys::{Epoll, EventFd, TimerFd};
pub use thread::{
    all_threads, clear_thread_create_hook, for_each_thread, gather_from_threads, get_thread,
    now_ns, poller_register, send_msg, set_thread_create_hook, thread_by_id, thread_create,
    ExitReport, Interrupt, PendingThread, PollOutcome, Poller, PollerState, PollerStatus,
    SendError, Thread, ThreadCreateHook, ThreadError, ThreadHandle, ThreadOpts, ThreadStats,
    DEFAULT_MSG_BATCH, TICK_RATE,
};
