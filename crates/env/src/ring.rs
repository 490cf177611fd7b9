//! Lock-free bounded rings (SPDK: `spdk_ring_*`).
//!
//! SPDK offers single-producer, multi-producer/single-consumer and
//! multi-producer/multi-consumer rings. All three are served here by one
//! lock-free multi-producer/multi-consumer array queue (crossbeam's
//! `ArrayQueue`), which is correct for every pattern; the type records what
//! the creator promised, for documentation and debugging.

use crossbeam_queue::ArrayQueue;

use crate::error::{EnvError, Result};

/// The producer/consumer pattern a ring is created for (SPDK:
/// `enum spdk_ring_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingType {
    /// One producer, one consumer.
    SpSc,
    /// Many producers, one consumer.
    MpSc,
    /// Many producers, many consumers.
    MpMc,
}

/// A bounded lock-free ring of `T`.
#[derive(Debug)]
pub struct Ring<T> {
    queue: ArrayQueue<T>,
    kind: RingType,
}

impl<T> Ring<T> {
    /// A ring holding up to `count` items (SPDK: `spdk_ring_create`).
    pub fn new(kind: RingType, count: usize) -> Result<Ring<T>> {
        if count == 0 {
            return Err(EnvError::InvalidArgument("ring of 0 entries".into()));
        }
        Ok(Ring {
            queue: ArrayQueue::new(count),
            kind,
        })
    }

    /// The type it was created as.
    pub fn kind(&self) -> RingType {
        self.kind
    }

    /// Capacity in items.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Items in the ring now (SPDK: `spdk_ring_count`).
    pub fn count(&self) -> usize {
        self.queue.len()
    }

    /// Adds one item, or gives it back when the ring is full.
    pub fn enqueue(&self, item: T) -> std::result::Result<(), T> {
        self.queue.push(item)
    }

    /// Moves items from the front of `items` into the ring until it is full
    /// (SPDK: `spdk_ring_enqueue`); returns how many went in. Those left in
    /// `items` did not fit.
    pub fn enqueue_bulk(&self, items: &mut std::collections::VecDeque<T>) -> usize {
        let mut n = 0;
        while let Some(item) = items.pop_front() {
            if let Err(back) = self.queue.push(item) {
                items.push_front(back);
                break;
            }
            n += 1;
        }
        n
    }

    /// Takes one item.
    pub fn dequeue(&self) -> Option<T> {
        self.queue.pop()
    }

    /// Takes up to `max` items into `out` (SPDK: `spdk_ring_dequeue`);
    /// returns how many.
    pub fn dequeue_bulk(&self, out: &mut Vec<T>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.queue.pop() {
                Some(x) => out.push(x),
                None => break,
            }
            n += 1;
        }
        n
    }
}
