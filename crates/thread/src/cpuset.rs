//! CPU sets and SPDK `-m` core-mask parsing.

use std::collections::BTreeSet;
use std::fmt;

/// Highest CPU index + 1 accepted in a mask (as SPDK's `SPDK_CPUSET_SIZE`).
pub const MAX_CPUS: u32 = 1024;

/// A set of CPU (core) indices, e.g. a thread's cpumask or the reactor mask.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuSet {
    cpus: BTreeSet<u32>,
}

/// Why a core mask string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuSetParseError {
    /// The string was empty (or only a prefix such as `0x`, or `[]`).
    #[error("empty core mask")]
    Empty,
    /// A hex mask contained a non-hex character.
    #[error("invalid character {ch:?} in hex core mask {mask:?}")]
    BadHexDigit {
        /// The offending character.
        ch: char,
        /// The whole mask.
        mask: String,
    },
    /// A hex mask selects a core >= [`MAX_CPUS`].
    #[error("core mask {mask:?} is wider than {MAX_CPUS} cores")]
    TooWide {
        /// The whole mask.
        mask: String,
    },
    /// A core list item was not a number.
    #[error("invalid core number {item:?} in core list {list:?}")]
    BadCoreNumber {
        /// The item that failed to parse.
        item: String,
        /// The whole list.
        list: String,
    },
    /// A core number was >= [`MAX_CPUS`].
    #[error("core {core} out of range (max {}) in {list:?}", MAX_CPUS - 1)]
    CoreOutOfRange {
        /// The core number.
        core: u64,
        /// The whole list.
        list: String,
    },
    /// A range `a-b` had `a > b`.
    #[error("reversed range {start}-{end} in core list {list:?}")]
    ReversedRange {
        /// Range start.
        start: u32,
        /// Range end.
        end: u32,
        /// The whole list.
        list: String,
    },
    /// A `[` without a matching `]` (or trailing garbage after `]`).
    #[error("unterminated or malformed core list {list:?} (expected e.g. [0,2-3])")]
    Unterminated {
        /// The whole list.
        list: String,
    },
}

impl CpuSet {
    /// The empty set.
    pub fn new() -> CpuSet {
        CpuSet::default()
    }

    /// A set holding the given CPUs.
    pub fn from_cpus<I: IntoIterator<Item = u32>>(cpus: I) -> CpuSet {
        CpuSet {
            cpus: cpus.into_iter().collect(),
        }
    }

    /// Parses SPDK's `-m` syntax: hex mask (`0x3` or `3`) or core list
    /// (`[0,1]`, `[0-3,5]`).
    pub fn parse(s: &str) -> Result<CpuSet, CpuSetParseError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(CpuSetParseError::Empty);
        }
        if t.starts_with('[') {
            return Self::parse_list(t);
        }
        let hex = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        if hex.is_empty() {
            return Err(CpuSetParseError::Empty);
        }
        let mut set = CpuSet::new();
        for (i, ch) in hex.chars().rev().enumerate() {
            let v = ch
                .to_digit(16)
                .ok_or_else(|| CpuSetParseError::BadHexDigit {
                    ch,
                    mask: s.to_string(),
                })?;
            for bit in 0..4u32 {
                if v & (1 << bit) != 0 {
                    let cpu = i as u64 * 4 + bit as u64;
                    if cpu >= MAX_CPUS as u64 {
                        return Err(CpuSetParseError::TooWide {
                            mask: s.to_string(),
                        });
                    }
                    set.cpus.insert(cpu as u32);
                }
            }
        }
        if set.cpus.is_empty() {
            return Err(CpuSetParseError::Empty);
        }
        Ok(set)
    }

    fn parse_list(t: &str) -> Result<CpuSet, CpuSetParseError> {
        let list = t.to_string();
        let inner = t
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .ok_or_else(|| CpuSetParseError::Unterminated { list: list.clone() })?;
        if inner.contains('[') || inner.contains(']') {
            return Err(CpuSetParseError::Unterminated { list });
        }
        let num = |x: &str| -> Result<u32, CpuSetParseError> {
            let x = x.trim();
            let v: u64 = x.parse().map_err(|_| CpuSetParseError::BadCoreNumber {
                item: x.to_string(),
                list: list.clone(),
            })?;
            if v >= MAX_CPUS as u64 {
                return Err(CpuSetParseError::CoreOutOfRange {
                    core: v,
                    list: list.clone(),
                });
            }
            Ok(v as u32)
        };
        let mut set = CpuSet::new();
        if inner.trim().is_empty() {
            return Err(CpuSetParseError::Empty);
        }
        for item in inner.split(',') {
            if let Some((a, b)) = item.split_once('-') {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(CpuSetParseError::ReversedRange {
                        start: a,
                        end: b,
                        list: list.clone(),
                    });
                }
                set.cpus.extend(a..=b);
            } else {
                set.cpus.insert(num(item)?);
            }
        }
        Ok(set)
    }

    /// Adds a CPU.
    pub fn insert(&mut self, cpu: u32) {
        self.cpus.insert(cpu);
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.cpus.contains(&cpu)
    }

    /// Number of CPUs in the set.
    pub fn len(&self) -> usize {
        self.cpus.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.cpus.is_empty()
    }

    /// The CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.cpus.iter().copied()
    }

    /// Lowest CPU in the set.
    pub fn first(&self) -> Option<u32> {
        self.cpus.iter().next().copied()
    }

    /// Hex string without `0x`, as SPDK's `spdk_cpuset_fmt` (e.g. `"3"`).
    pub fn to_hex(&self) -> String {
        let Some(&max) = self.cpus.iter().next_back() else {
            return "0".to_string();
        };
        let nibbles = max / 4 + 1;
        let mut out = String::with_capacity(nibbles as usize);
        for n in (0..nibbles).rev() {
            let mut v = 0u32;
            for bit in 0..4 {
                if self.cpus.contains(&(n * 4 + bit)) {
                    v |= 1 << bit;
                }
            }
            out.push(char::from_digit(v, 16).unwrap_or('0'));
        }
        out
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", self.to_hex())
    }
}

impl std::str::FromStr for CpuSet {
    type Err = CpuSetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CpuSet::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(s: &str) -> Vec<u32> {
        CpuSet::parse(s).unwrap().iter().collect()
    }

    #[test]
    fn parses_spdk_forms() {
        assert_eq!(cpus("0x3"), vec![0, 1]);
        assert_eq!(cpus("3"), vec![0, 1]);
        assert_eq!(cpus("0xF0"), vec![4, 5, 6, 7]);
        assert_eq!(cpus("[0,1]"), vec![0, 1]);
        assert_eq!(cpus("[0-3,5]"), vec![0, 1, 2, 3, 5]);
        assert_eq!(cpus(" [ 2 - 3 ] "), vec![2, 3]);
        assert_eq!(CpuSet::parse("0x13").unwrap().to_hex(), "13");
        assert_eq!(CpuSet::parse("[0-3,5]").unwrap().to_string(), "0x2f");
    }

    #[test]
    fn rejects_bad_masks_with_reason() {
        let e = CpuSet::parse("0xZ1").unwrap_err();
        assert!(
            matches!(e, CpuSetParseError::BadHexDigit { ch: 'Z', .. }),
            "{e}"
        );
        assert!(e.to_string().contains("'Z'"));
        assert_eq!(CpuSet::parse("").unwrap_err(), CpuSetParseError::Empty);
        assert_eq!(CpuSet::parse("0x").unwrap_err(), CpuSetParseError::Empty);
        assert_eq!(CpuSet::parse("0x0").unwrap_err(), CpuSetParseError::Empty);
        assert!(matches!(
            CpuSet::parse("[3-1]").unwrap_err(),
            CpuSetParseError::ReversedRange {
                start: 3,
                end: 1,
                ..
            }
        ));
        assert!(matches!(
            CpuSet::parse("[0,1").unwrap_err(),
            CpuSetParseError::Unterminated { .. }
        ));
        assert!(matches!(
            CpuSet::parse("[0,x]").unwrap_err(),
            CpuSetParseError::BadCoreNumber { .. }
        ));
        assert!(matches!(
            CpuSet::parse("[5000]").unwrap_err(),
            CpuSetParseError::CoreOutOfRange { core: 5000, .. }
        ));
        assert!(matches!(
            CpuSet::parse(&format!("0x1{}", "0".repeat(300))).unwrap_err(),
            CpuSetParseError::TooWide { .. }
        ));
    }
}
