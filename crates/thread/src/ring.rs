//! Bounded lock-free multi-producer single-consumer ring of [`Msg`] (fenced
//! `unsafe` module).
//!
//! Slot-sequence design (Vyukov's bounded queue, specialised to one
//! consumer): each slot is exactly one 64-byte cache line holding a sequence
//! word and a 56-byte [`Msg`], so a message and its "ready" flag travel in a
//! single cache-line transfer and neighbouring slots never false-share.
//! Producers claim a position with one CAS on `tail`; the consumer owns
//! `head` (no atomic read-modify-write on the consumer side) and never reads
//! `tail`; producers never read `head`.
//!
//! Slot `i` cycles through sequence values: `pos` (free for the producer
//! that claims position `pos`), `pos + 1` (holds a message for the consumer
//! at position `pos`), then `pos + capacity` (free for the next lap).

use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::msg::Msg;

#[repr(C, align(64))]
struct Slot {
    seq: AtomicUsize,
    msg: UnsafeCell<MaybeUninit<Msg>>,
}

/// The ring. `push` from any thread through the shared `Arc`; popping only
/// through the unique [`Consumer`] returned with it.
pub struct MsgRing {
    head: CachePadded<AtomicUsize>,
    tail: CachePadded<AtomicUsize>,
    mask: usize,
    slots: Box<[Slot]>,
}

// SAFETY: slots are handed between threads only through the sequence-word
// protocol (Release store after writing, Acquire load before reading), and a
// `Msg` is `Send`; the consumer-only methods are `unsafe` with a
// single-consumer contract.
unsafe impl Sync for MsgRing {}
// SAFETY: the ring owns `Msg` values, which are `Send`.
unsafe impl Send for MsgRing {}

impl MsgRing {
    /// A ring of at least `cap` slots (rounded up to a power of two, >= 2)
    /// and its one consumer handle.
    pub fn new(cap: usize) -> (Arc<MsgRing>, Consumer) {
        let ring = Arc::new(Self::with_capacity(cap));
        let consumer = Consumer {
            ring: ring.clone(),
            _not_sync: PhantomData,
        };
        (ring, consumer)
    }

    fn with_capacity(cap: usize) -> MsgRing {
        let cap = cap.max(2).next_power_of_two();
        let slots = (0..cap)
            .map(|i| Slot {
                seq: AtomicUsize::new(i),
                msg: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        MsgRing {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            mask: cap - 1,
            slots,
        }
    }

    /// Capacity in messages.
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Appends `m`, or gives it back if the ring is full.
    #[inline]
    pub fn push(&self, m: Msg) -> Result<(), Msg> {
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos & self.mask];
            let seq = slot.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos) as isize;
            if diff == 0 {
                match self.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: winning the CAS for `pos` while the slot's
                        // sequence equals `pos` gives this producer exclusive
                        // access to the (empty) slot until it publishes it
                        // with the Release store below.
                        unsafe { (*slot.msg.get()).write(m) };
                        slot.seq.store(pos.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(cur) => pos = cur,
                }
            } else if diff < 0 {
                // The slot still holds the message of the previous lap.
                return Err(m);
            } else {
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Removes the oldest message.
    ///
    /// # Safety
    /// Must only be called by the single consumer (never concurrently with
    /// another `pop`, or with `is_empty` on another thread).
    #[inline]
    unsafe fn pop(&self) -> Option<Msg> {
        let pos = self.head.load(Ordering::Relaxed);
        let slot = &self.slots[pos & self.mask];
        if slot.seq.load(Ordering::Acquire) != pos.wrapping_add(1) {
            return None;
        }
        // SAFETY: sequence `pos + 1` (Acquire) means a producer wrote a
        // message here and published it; the single consumer (caller
        // contract) is the only reader, and reads it exactly once before
        // freeing the slot below.
        let m = unsafe { (*slot.msg.get()).assume_init_read() };
        slot.seq
            .store(pos.wrapping_add(self.mask + 1), Ordering::Release);
        self.head.store(pos.wrapping_add(1), Ordering::Relaxed);
        Some(m)
    }

    /// Whether every claimed position has been consumed (a message still
    /// being written by a producer counts as queued). Used to decide that
    /// older ring messages cannot exist, e.g. before draining the overflow
    /// list, and before sleeping.
    ///
    /// # Safety
    /// Same single-consumer contract as [`pop`](Self::pop).
    #[inline]
    unsafe fn is_empty(&self) -> bool {
        let pos = self.head.load(Ordering::Relaxed);
        self.tail.load(Ordering::SeqCst) == pos
    }

    /// Approximate number of queued messages (claimed positions not yet
    /// consumed), readable from any thread.
    pub fn len(&self) -> usize {
        let t = self.tail.load(Ordering::Relaxed);
        let h = self.head.load(Ordering::Relaxed);
        t.wrapping_sub(h).min(self.capacity())
    }
}

/// The unique consuming end of a [`MsgRing`]: not `Clone`, and not `Sync`
/// (so a `&Consumer` cannot be shared between OS threads), which makes it
/// the single consumer the ring's protocol requires. It is `Send`, so a
/// thread created on one OS thread can be started on another.
pub struct Consumer {
    ring: Arc<MsgRing>,
    _not_sync: PhantomData<Cell<()>>,
}

impl Consumer {
    /// Removes the oldest published message.
    #[inline]
    pub fn pop(&self) -> Option<Msg> {
        // SAFETY: only one `Consumer` exists per ring and it is `!Sync`, so
        // all pops happen on one OS thread, one at a time (a pop completes
        // before the popped message runs, so nested pops from a message are
        // sequential too).
        unsafe { self.ring.pop() }
    }

    /// Whether every claimed position has been consumed (see
    /// `MsgRing::is_empty`).
    #[inline]
    pub fn is_empty(&self) -> bool {
        // SAFETY: single consumer, as in `pop`.
        unsafe { self.ring.is_empty() }
    }
}

impl Drop for MsgRing {
    fn drop(&mut self) {
        // `&mut self`: no producer or consumer is active any more.
        // SAFETY: exclusive access satisfies the single-consumer contract.
        while let Some(m) = unsafe { self.pop() } {
            drop(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    #[test]
    fn slot_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
    }

    #[test]
    fn fifo_full_and_wraparound() {
        let (r, c) = MsgRing::new(4);
        let hits = Arc::new(AtomicU64::new(0));
        for lap in 0..3u64 {
            for i in 0..4u64 {
                let h = hits.clone();
                assert!(r
                    .push(Msg::new(move || {
                        assert_eq!(h.load(Ordering::SeqCst), lap * 4 + i);
                        h.fetch_add(1, Ordering::SeqCst);
                    }))
                    .is_ok());
            }
            assert!(r.push(Msg::new(|| {})).is_err(), "full ring accepted");
            assert_eq!(r.len(), 4);
            while let Some(m) = c.pop() {
                m.run();
            }
            assert!(c.is_empty());
        }
        assert_eq!(hits.load(Ordering::SeqCst), 12);
        // Unconsumed messages are dropped with the ring.
        let h = hits.clone();
        assert!(r.push(Msg::new(move || drop(h))).is_ok());
        drop(r);
        drop(c);
        assert_eq!(Arc::strong_count(&hits), 1);
    }
}
