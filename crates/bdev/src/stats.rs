//! I/O statistics per channel, summed per bdev for `bdev_get_iostat`.

use serde_json::{json, Value};

use crate::types::IoType;

/// Counters for one I/O type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeStats {
    /// Completed operations.
    pub ops: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Sum of latencies, ns.
    pub latency_ns: u64,
    /// Largest latency, ns.
    pub max_latency_ns: u64,
    /// Smallest latency, ns (`u64::MAX` when none was recorded since the
    /// start or the last reset; reported as 0).
    pub min_latency_ns: u64,
    /// Operations that failed.
    pub errors: u64,
}

impl Default for TypeStats {
    fn default() -> TypeStats {
        TypeStats {
            ops: 0,
            bytes: 0,
            latency_ns: 0,
            max_latency_ns: 0,
            min_latency_ns: u64::MAX,
            errors: 0,
        }
    }
}

/// What to reset in I/O statistics (SPDK: `enum spdk_bdev_reset_stat_mode`;
/// `bdev_get_iostat`'s `reset_mode`, `bdev_reset_iostat`'s `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetMode {
    /// Every counter.
    All,
    /// Only the largest and smallest latencies.
    Maxmin,
    /// Only the error counters.
    Error,
    /// Nothing.
    #[default]
    None,
}

/// Statistics of one channel or one bdev.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Per I/O type, indexed by `IoType as usize`.
    pub by_type: [TypeStats; 8],
}

impl IoStats {
    #[inline]
    pub(crate) fn record(&mut self, t: IoType, bytes: u64, latency_ns: u64, ok: bool) {
        let s = &mut self.by_type[t.index()];
        s.ops += 1;
        s.bytes += bytes;
        s.latency_ns += latency_ns;
        s.max_latency_ns = s.max_latency_ns.max(latency_ns);
        s.min_latency_ns = s.min_latency_ns.min(latency_ns);
        if !ok {
            s.errors += 1;
        }
    }

    /// Adds another set of counters into this one.
    pub fn add(&mut self, o: &IoStats) {
        for (a, b) in self.by_type.iter_mut().zip(o.by_type.iter()) {
            a.ops += b.ops;
            a.bytes += b.bytes;
            a.latency_ns += b.latency_ns;
            a.max_latency_ns = a.max_latency_ns.max(b.max_latency_ns);
            a.min_latency_ns = a.min_latency_ns.min(b.min_latency_ns);
            a.errors += b.errors;
        }
    }

    /// Resets what `mode` says (SPDK: `spdk_bdev_reset_io_stat`).
    pub fn reset(&mut self, mode: ResetMode) {
        for s in self.by_type.iter_mut() {
            match mode {
                ResetMode::All => *s = TypeStats::default(),
                ResetMode::Maxmin => {
                    s.max_latency_ns = 0;
                    s.min_latency_ns = u64::MAX;
                }
                ResetMode::Error => s.errors = 0,
                ResetMode::None => {}
            }
        }
    }

    /// Counters for one type.
    pub fn get(&self, t: IoType) -> TypeStats {
        self.by_type[t.index()]
    }

    /// SPDK's `bdev_get_iostat` fields for one bdev (latencies in ticks of
    /// 1 ns: the reported `tick_rate` is 1e9), with `"name": name`.
    pub fn to_json(&self, name: &str) -> Value {
        let mut v = self.fields_json();
        v["name"] = json!(name);
        v
    }

    /// The statistics fields alone (SPDK: `spdk_bdev_dump_io_stat_json`).
    pub fn fields_json(&self) -> Value {
        let min = |s: TypeStats| {
            if s.min_latency_ns == u64::MAX {
                0
            } else {
                s.min_latency_ns
            }
        };
        let r = self.get(IoType::Read);
        let w = self.get(IoType::Write);
        let u = self.get(IoType::Unmap);
        let errors: u64 = self.by_type.iter().map(|s| s.errors).sum();
        json!({
            "bytes_read": r.bytes,
            "num_read_ops": r.ops,
            "bytes_written": w.bytes,
            "num_write_ops": w.ops,
            "bytes_unmapped": u.bytes,
            "num_unmap_ops": u.ops,
            "bytes_copied": 0,
            "num_copy_ops": 0,
            "read_latency_ticks": r.latency_ns,
            "max_read_latency_ticks": r.max_latency_ns,
            "min_read_latency_ticks": min(r),
            "write_latency_ticks": w.latency_ns,
            "max_write_latency_ticks": w.max_latency_ns,
            "min_write_latency_ticks": min(w),
            "unmap_latency_ticks": u.latency_ns,
            "max_unmap_latency_ticks": u.max_latency_ns,
            "min_unmap_latency_ticks": min(u),
            "copy_latency_ticks": 0,
            "max_copy_latency_ticks": 0,
            "min_copy_latency_ticks": 0,
            "io_error": errors,
        })
    }
}
