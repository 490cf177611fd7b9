//! Serializable statistics matching the JSON of SPDK's `thread_get_stats`,
//! `thread_get_pollers` and `thread_get_io_channels` RPCs.
//!
//! Each `Thread::*_info()` method must run on the thread itself (as SPDK's
//! RPCs do through `spdk_for_each_thread`); [`gather_from_threads`] does the
//! hop for you:
//!
//! ```no_run
//! # use rspdk_thread::*;
//! // On some thread, e.g. the RPC server's:
//! gather_from_threads(|t| t.stats_info(), |threads| {
//!     let reply = ThreadGetStats { tick_rate: TICK_RATE, threads };
//!     let _json = serde_json::to_value(&reply);
//! }).unwrap();
//! ```
//!
//! [`gather_from_threads`]: crate::gather_from_threads

use serde::Serialize;

use crate::thread::{PollerState, Thread, TICK_RATE};

/// One thread in `thread_get_stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThreadStatsInfo {
    /// Thread name.
    pub name: String,
    /// Thread id.
    pub id: u64,
    /// Cpumask, hex without `0x` (as `spdk_cpuset_fmt`).
    pub cpumask: String,
    /// Busy ticks.
    pub busy: u64,
    /// Idle ticks.
    pub idle: u64,
    /// Whether the thread runs in interrupt mode (as SPDK: the mode, not
    /// whether it is asleep right now).
    pub in_interrupt: bool,
    /// Period-0 pollers not paused.
    pub active_pollers_count: u64,
    /// Timed pollers not paused.
    pub timed_pollers_count: u64,
    /// Paused pollers.
    pub paused_pollers_count: u64,
}

/// Result of `thread_get_stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThreadGetStats {
    /// Ticks per second ([`TICK_RATE`]).
    pub tick_rate: u64,
    /// One entry per thread.
    pub threads: Vec<ThreadStatsInfo>,
}

/// One poller in `thread_get_pollers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PollerInfo {
    /// Poller name.
    pub name: String,
    /// Poller id.
    pub id: u64,
    /// `"waiting"`, `"paused"` or `"unregistered"`.
    pub state: String,
    /// Runs.
    pub run_count: u64,
    /// Busy runs.
    pub busy_count: u64,
    /// Period in ticks, only for timed pollers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_ticks: Option<u64>,
}

/// One thread in `thread_get_pollers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThreadPollersInfo {
    /// Thread name.
    pub name: String,
    /// Thread id.
    pub id: u64,
    /// Period-0 pollers not paused.
    pub active_pollers: Vec<PollerInfo>,
    /// Timed pollers not paused.
    pub timed_pollers: Vec<PollerInfo>,
    /// Paused pollers.
    pub paused_pollers: Vec<PollerInfo>,
}

/// Result of `thread_get_pollers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThreadGetPollers {
    /// Ticks per second.
    pub tick_rate: u64,
    /// One entry per thread.
    pub threads: Vec<ThreadPollersInfo>,
}

/// One channel in `thread_get_io_channels`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IoChannelInfo {
    /// Device name.
    pub name: String,
    /// Reference count.
    #[serde(rename = "ref")]
    pub ref_count: u64,
}

/// One thread in `thread_get_io_channels`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThreadIoChannelsInfo {
    /// Thread name.
    pub name: String,
    /// Thread id.
    pub id: u64,
    /// Channels held.
    pub io_channels: Vec<IoChannelInfo>,
}

/// Result of `thread_get_io_channels`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThreadGetIoChannels {
    /// Ticks per second.
    pub tick_rate: u64,
    /// One entry per thread.
    pub threads: Vec<ThreadIoChannelsInfo>,
}

impl Thread {
    /// This thread's `thread_get_stats` entry.
    pub fn stats_info(&self) -> ThreadStatsInfo {
        let st = self.stats();
        let (mut active, mut timed, mut paused) = (0, 0, 0);
        for p in self.pollers() {
            match (p.state(), p.period_us()) {
                (PollerState::Paused, _) => paused += 1,
                (_, 0) => active += 1,
                _ => timed += 1,
            }
        }
        ThreadStatsInfo {
            name: self.name().to_string(),
            id: self.id(),
            cpumask: self.cpumask().to_hex(),
            busy: st.busy_ns,
            idle: st.idle_ns,
            in_interrupt: self.is_interrupt_mode(),
            active_pollers_count: active,
            timed_pollers_count: timed,
            paused_pollers_count: paused,
        }
    }

    /// This thread's `thread_get_pollers` entry.
    pub fn pollers_info(&self) -> ThreadPollersInfo {
        let mut out = ThreadPollersInfo {
            name: self.name().to_string(),
            id: self.id(),
            active_pollers: Vec::new(),
            timed_pollers: Vec::new(),
            paused_pollers: Vec::new(),
        };
        for p in self.pollers() {
            let period = p.period_us() * 1000 * (TICK_RATE / 1_000_000_000);
            let info = PollerInfo {
                name: p.name().to_string(),
                id: p.id(),
                state: match p.state() {
                    PollerState::Waiting => "waiting",
                    PollerState::Paused => "paused",
                    PollerState::Unregistered => "unregistered",
                }
                .to_string(),
                run_count: p.run_count(),
                busy_count: p.busy_count(),
                period_ticks: (period > 0).then_some(period),
            };
            match (p.state(), period) {
                (PollerState::Paused, _) => out.paused_pollers.push(info),
                (_, 0) => out.active_pollers.push(info),
                _ => out.timed_pollers.push(info),
            }
        }
        out
    }

    /// This thread's `thread_get_io_channels` entry.
    pub fn io_channels_info(&self) -> ThreadIoChannelsInfo {
        ThreadIoChannelsInfo {
            name: self.name().to_string(),
            id: self.id(),
            io_channels: self
                .io_channels()
                .into_iter()
                .map(|(name, r)| IoChannelInfo {
                    name,
                    ref_count: r as u64,
                })
                .collect(),
        }
    }
}
