//! QoS rate limits per bdev, enforced across every thread (SPDK:
//! `bdev_set_qos_limit`).
//!
//! Each limit is a token bucket shared by all threads through atomics:
//! tokens are refilled from the elapsed time by whichever thread notices
//! (one compare-and-swap on the refill timestamp), and taken with
//! `fetch_sub`. A bucket may go briefly negative by one I/O; the next
//! refill pays it back, so the long-run rate holds. An I/O that finds a
//! bucket empty waits in its channel's queue and is retried by the channel
//! poller. With no limits set, the only cost is one relaxed load.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use rspdk_thread::now_ns;
use serde_json::{json, Value};

use crate::types::IoType;

/// The limits, 0 meaning none (SPDK's `bdev_set_qos_limit` params).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QosLimits {
    /// Read+write I/O per second.
    pub rw_ios_per_sec: u64,
    /// Read+write MiB per second.
    pub rw_mbytes_per_sec: u64,
    /// Read MiB per second.
    pub r_mbytes_per_sec: u64,
    /// Write MiB per second.
    pub w_mbytes_per_sec: u64,
}

/// Burst allowance: a bucket holds at most this many milliseconds of rate.
const BURST_MS: u64 = 10;

#[derive(Debug, Default)]
struct Bucket {
    /// Units per second; 0 = unlimited.
    rate: AtomicU64,
    tokens: AtomicI64,
    last_ns: AtomicU64,
}

impl Bucket {
    fn set(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
        self.tokens
            .store((rate * BURST_MS / 1000).max(1) as i64, Ordering::Relaxed);
        self.last_ns.store(now_ns(), Ordering::Relaxed);
    }

    fn refill(&self, rate: u64) {
        let now = now_ns();
        let last = self.last_ns.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(last);
        let add = (rate as u128 * elapsed as u128 / 1_000_000_000) as i64;
        if add == 0 {
            return;
        }
        if self
            .last_ns
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let cap = (rate * BURST_MS / 1000).max(1) as i64;
            let t = self.tokens.fetch_add(add, Ordering::AcqRel) + add;
            if t > cap {
                self.tokens.fetch_sub(t - cap, Ordering::AcqRel);
            }
        }
    }

    /// True if there is budget; takes `units` from it.
    fn ready(&self) -> bool {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return true;
        }
        if self.tokens.load(Ordering::Acquire) <= 0 {
            self.refill(rate);
            if self.tokens.load(Ordering::Acquire) <= 0 {
                return false;
            }
        }
        true
    }

    fn take(&self, units: u64) {
        if self.rate.load(Ordering::Relaxed) != 0 {
            self.tokens.fetch_sub(units as i64, Ordering::AcqRel);
        }
    }
}

/// A bdev's QoS state.
#[derive(Debug, Default)]
pub(crate) struct Qos {
    enabled: AtomicBool,
    limits: std::sync::Mutex<QosLimits>,
    ios: Bucket,
    rw_bytes: Bucket,
    r_bytes: Bucket,
    w_bytes: Bucket,
}

impl Qos {
    pub(crate) fn set(&self, l: QosLimits) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = l;
        self.ios.set(l.rw_ios_per_sec);
        self.rw_bytes.set(l.rw_mbytes_per_sec << 20);
        self.r_bytes.set(l.r_mbytes_per_sec << 20);
        self.w_bytes.set(l.w_mbytes_per_sec << 20);
        self.enabled
            .store(l != QosLimits::default(), Ordering::Release);
    }

    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Admits an I/O of `bytes` if every applicable bucket has budget.
    pub(crate) fn try_take(&self, t: IoType, bytes: u64) -> bool {
        if !self.enabled() {
            return true;
        }
        let dir = match t {
            IoType::Read => Some(&self.r_bytes),
            IoType::Write | IoType::WriteZeroes | IoType::CompareAndWrite => Some(&self.w_bytes),
            _ => None,
        };
        let ok = self.ios.ready() && self.rw_bytes.ready() && dir.is_none_or(|b| b.ready());
        if ok {
            self.ios.take(1);
            self.rw_bytes.take(bytes);
            if let Some(b) = dir {
                b.take(bytes);
            }
        }
        ok
    }

    pub(crate) fn limits(&self) -> QosLimits {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn limits_json(&self) -> Value {
        let l = self.limits();
        json!({
            "rw_ios_per_sec": l.rw_ios_per_sec,
            "rw_mbytes_per_sec": l.rw_mbytes_per_sec,
            "r_mbytes_per_sec": l.r_mbytes_per_sec,
            "w_mbytes_per_sec": l.w_mbytes_per_sec,
        })
    }
}
