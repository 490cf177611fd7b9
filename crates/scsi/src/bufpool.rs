//! A per-thread pool of data buffers, by power-of-two size class.
//!
//! The SCSI data path (READ/WRITE buffers, the transport's Data-Out
//! buffers) takes its buffers here and gives them back when the data has
//! been written to the bdev or sent to the initiator, so that steady-state
//! I/O allocates nothing. Each thread (a poll group's) has its own free
//! lists; a buffer given back on another thread just joins that thread's
//! lists. The pool grows on demand and keeps at most [`CLASS_BYTES`] per
//! size class; buffers above [`MAX_POOLED`] bytes are not pooled.

use std::cell::RefCell;

/// Smallest size class, in bytes.
const MIN_CLASS: usize = 512;
/// Largest pooled buffer, in bytes; larger ones are allocated and freed.
pub const MAX_POOLED: usize = 1 << 20;
/// Bytes each size class keeps at most (but at least 8 buffers).
pub const CLASS_BYTES: usize = 4 << 20;
const CLASSES: usize = (MAX_POOLED / MIN_CLASS).trailing_zeros() as usize + 1;

thread_local! {
    static FREE: RefCell<[Vec<Vec<u8>>; CLASSES]> = const { RefCell::new([const { Vec::new() }; CLASSES]) };
}

fn class_of(cap: usize) -> Option<usize> {
    if !(MIN_CLASS..=MAX_POOLED).contains(&cap) || !cap.is_power_of_two() {
        return None;
    }
    Some((cap / MIN_CLASS).trailing_zeros() as usize)
}

fn class_limit(class: usize) -> usize {
    (CLASS_BYTES / (MIN_CLASS << class)).max(8)
}

/// An empty buffer with room for `len` bytes of a pooled size class (from
/// this thread's free list, or new), or None when `len` is not pooled.
fn empty(len: usize) -> Option<Vec<u8>> {
    let cap = len.max(MIN_CLASS).next_power_of_two();
    let c = class_of(cap)?;
    let mut v = FREE
        .try_with(|f| f.borrow_mut()[c].pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(cap));
    v.clear();
    Some(v)
}

/// A zero-filled buffer of `len` bytes, from this thread's pool when one
/// of its size class is free.
pub fn get(len: usize) -> Vec<u8> {
    let Some(mut v) = empty(len) else {
        return vec![0u8; len];
    };
    v.resize(len, 0);
    v
}

/// A buffer holding a copy of `data`, from this thread's pool when one of
/// its size class is free (an empty `Vec`, which owns no memory, when
/// `data` is empty).
pub fn copy_of(data: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return Vec::new();
    }
    let Some(mut v) = empty(data.len()) else {
        return data.to_vec();
    };
    v.extend_from_slice(data);
    v
}

/// Gives `buf` back to this thread's pool (or frees it if it is of no
/// size class or its class is full).
pub fn put(buf: Vec<u8>) {
    let Some(c) = class_of(buf.capacity()) else {
        return;
    };
    let _ = FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        let list = &mut f[c];
        if list.len() < class_limit(c) {
            if list.capacity() == 0 {
                list.reserve_exact(class_limit(c));
            }
            list.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_by_class_and_zeroes() {
        let mut a = get(4096);
        assert_eq!(a.len(), 4096);
        a.fill(7);
        let p = a.as_ptr();
        put(a);
        let b = get(3000);
        assert_eq!(b.as_ptr(), p, "same class reused");
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(b.len(), 3000);
        let c = copy_of(&[1, 2, 3]);
        assert_eq!(c, [1, 2, 3]);
        put(b);
        put(c);
        let big = get(MAX_POOLED + 1);
        assert_eq!(big.len(), MAX_POOLED + 1);
        put(big);
        put(Vec::with_capacity(1000)); // not a class: freed
    }
}
