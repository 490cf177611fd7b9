//! Latency histograms in SPDK's layout (include/spdk/histogram_data.h), so
//! that `bdev_get_histogram`'s answer decodes with SPDK's tools
//! (`scripts/histogram.py`): `1 << granularity` buckets for each power-of-two
//! range from `min_range` to `max_range`, counts as little-endian u64s.
//!
//! Data points are ticks of the clock `bdev_get_histogram` reports as
//! `tsc_rate` (here nanoseconds: 1e9).

/// SPDK's default granularity (`SPDK_HISTOGRAM_GRANULARITY_DEFAULT`).
pub const DEFAULT_GRANULARITY: u32 = 7;
/// The largest granularity accepted: 2^12 buckets a range keeps one
/// channel's histogram within 2 MiB.
pub const MAX_GRANULARITY: u32 = 12;

/// One latency histogram (SPDK: `struct spdk_histogram_data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    granularity: u32,
    min_range: u32,
    max_range: u32,
    buckets: Box<[u64]>,
}

impl Histogram {
    /// A histogram of values in `min_val..max_val` (SPDK:
    /// `spdk_histogram_data_alloc_sized_ext`); `None` if the bounds are
    /// empty or the granularity is beyond [`MAX_GRANULARITY`].
    pub fn new(granularity: u32, min_val: u64, max_val: u64) -> Option<Histogram> {
        if min_val >= max_val || granularity > MAX_GRANULARITY {
            return None;
        }
        let min_range = range_of(granularity, min_val);
        let max_range = range_of(granularity, max_val - 1);
        let n = ((max_range - min_range + 1) as usize) << granularity;
        Some(Histogram {
            granularity,
            min_range,
            max_range,
            buckets: vec![0; n].into_boxed_slice(),
        })
    }

    /// Bucket granularity (log2 of buckets per range).
    pub fn granularity(&self) -> u32 {
        self.granularity
    }

    /// First range.
    pub fn min_range(&self) -> u32 {
        self.min_range
    }

    /// Last range.
    pub fn max_range(&self) -> u32 {
        self.max_range
    }

    /// The bucket counts, SPDK's order.
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// Counts one value (SPDK: `spdk_histogram_data_tally`). No allocation.
    #[inline]
    pub fn tally(&mut self, v: u64) {
        let g = self.granularity;
        let per_range = 1u64 << g;
        let r = range_of(g, v);
        let (range, index) = if r < self.min_range {
            (self.min_range, 0)
        } else if r > self.max_range {
            (self.max_range, per_range - 1)
        } else {
            let shift = r.saturating_sub(1);
            (r, (v >> shift) & (per_range - 1))
        };
        let i = (((range - self.min_range) as usize) << g) + index as usize;
        self.buckets[i] += 1;
    }

    /// The largest value of bucket `i` (its values are `lo..=hi`): a range
    /// above 0 holds `1 << (range - 1)` values per bucket.
    fn bucket_max(&self, i: usize) -> u64 {
        let g = self.granularity;
        let range = self.min_range + (i >> g) as u32;
        let index = (i as u64) & ((1u64 << g) - 1);
        if range == 0 {
            return index;
        }
        let lo = ((1u64 << g) | index) << (range - 1);
        lo + ((1u64 << (range - 1)) - 1)
    }

    /// The value below or at which a fraction `q` (0.0 to 1.0) of the counts
    /// lie, to the bucket's precision (the bucket's largest value, as
    /// SPDK's bdevperf reports percentiles); 0 when empty.
    pub fn value_at_quantile(&self, q: f64) -> u64 {
        let total = self.total();
        if total == 0 {
            return 0;
        }
        let want = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= want {
                return self.bucket_max(i);
            }
        }
        self.bucket_max(self.buckets.len() - 1)
    }

    /// Adds `o`'s counts (same shape) into this one; false if the shapes differ.
    pub fn merge(&mut self, o: &Histogram) -> bool {
        if (o.granularity, o.min_range, o.max_range)
            != (self.granularity, self.min_range, self.max_range)
        {
            return false;
        }
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        true
    }

    /// Zeroes every count.
    pub fn clear(&mut self) {
        self.buckets.fill(0);
    }

    /// Total count.
    pub fn total(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The counts as SPDK encodes them for `bdev_get_histogram`: the
    /// buckets as little-endian u64s, in standard base64.
    pub fn to_base64(&self) -> String {
        let bytes: Vec<u8> = self.buckets.iter().flat_map(|c| c.to_le_bytes()).collect();
        base64(&bytes)
    }
}

/// A bdev's histogram settings (`bdev_enable_histogram`) and the counts of
/// its closed channels.
#[derive(Debug, Default)]
pub(crate) struct HistConfig {
    pub enabled: bool,
    /// Only this type is counted (`opc`); `None`: every type.
    pub io_type: Option<crate::IoType>,
    pub granularity: u32,
    pub min_nsec: u64,
    pub max_nsec: u64,
    /// Counts of channels closed since it was enabled.
    pub retired: Option<Histogram>,
}

impl HistConfig {
    /// An empty histogram of the configured shape, if enabled.
    pub fn make(&self) -> Option<Histogram> {
        if !self.enabled {
            return None;
        }
        Histogram::new(self.granularity, self.min_nsec, self.max_nsec)
    }

    /// The bit mask of I/O types counted (bit `IoType as usize`).
    pub fn type_mask(&self) -> u32 {
        match self.io_type {
            Some(t) => 1 << t.index(),
            None => u32::MAX,
        }
    }
}

/// SPDK's `__spdk_histogram_data_get_bucket_range`.
fn range_of(granularity: u32, v: u64) -> u32 {
    let clz = v.leading_zeros();
    let lsb = 64 - granularity;
    lsb.saturating_sub(clz)
}
/// Standard base64 with padding (RFC 4648; what SPDK's
/// `spdk_base64_encode` writes), from the `base64` crate.
fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn layout_matches_spdk() {
        // SPDK's defaults for bdevs: granularity 7, 1 us .. 120 s in ns.
        let mut h = Histogram::new(7, 1000, 120_000_000_000).unwrap();
        assert_eq!(h.min_range(), 3);
        assert_eq!(h.max_range(), 30);
        assert_eq!(h.buckets().len(), 28 * 128);
        // 5000: clz 51, range 57 - 51 = 6, index (5000 >> 5) & 127 = 28.
        h.tally(5000);
        assert_eq!(h.buckets()[(6 - 3) * 128 + 28], 1);
        // Below the minimum: the first bucket; above: the last.
        h.tally(1);
        assert_eq!(h.buckets()[0], 1);
        h.tally(u64::MAX);
        assert_eq!(*h.buckets().last().unwrap(), 1);
        assert_eq!(h.total(), 3);
        let mut m = h.clone();
        assert!(m.merge(&h));
        assert_eq!(m.total(), 6);
        assert!(!m.merge(&Histogram::new(6, 1000, 2000).unwrap()));
        assert!(Histogram::new(7, 10, 10).is_none());
        assert!(Histogram::new(13, 0, u64::MAX).is_none());
    }

    #[test]
    fn quantiles_land_in_the_bucket_of_the_value() {
        let mut h = Histogram::new(DEFAULT_GRANULARITY, 1, 1 << 40).unwrap();
        assert_eq!(h.value_at_quantile(0.5), 0, "empty");
        // 1..=1000 once each, then 1,000,000 once.
        for v in 1..=1000u64 {
            h.tally(v);
        }
        h.tally(1_000_000);
        // Values below 2^granularity have exact buckets.
        assert_eq!(h.value_at_quantile(0.0), 1);
        assert_eq!(h.value_at_quantile(0.1), 101);
        // Above, a bucket spans 1/128 of its power of two: the answer is
        // the bucket's top, never below the true value and within 1%.
        for (q, exact) in [(0.5, 501u64), (0.9, 901), (0.99, 991)] {
            let got = h.value_at_quantile(q);
            assert!(
                got >= exact && got <= exact + exact / 100,
                "q {q}: {got} vs {exact}"
            );
        }
        let top = h.value_at_quantile(1.0);
        assert!((1_000_000..=1_010_000).contains(&top), "max {top}");
    }
}
