//! Message passing: ordering, delivery under load, full ring, no inline run.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use rspdk_thread::testing::UtThreads;
use rspdk_thread::{SendError, Thread, ThreadOpts};

#[test]
fn send_to_self_is_not_inline() {
    let ut = UtThreads::new(1);
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    ut.run_on(0, || {
        let me = Thread::current().unwrap();
        me.send_msg(move || r.store(true, Ordering::SeqCst))
            .unwrap();
        assert!(!ran.load(Ordering::SeqCst), "send_msg ran inline");
    });
    assert!(!ran.load(Ordering::SeqCst));
    // Also from inside a message during poll: the nested send must wait for
    // a later batch, not run in the middle of the current message.
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let o = order.clone();
    let h = ut.handle(0);
    ut.handle(0)
        .send_msg(move || {
            let o2 = o.clone();
            h.send_msg(move || o2.lock().unwrap().push("inner"))
                .unwrap();
            o.lock().unwrap().push("outer-end");
        })
        .unwrap();
    ut.poll_threads();
    assert!(ran.load(Ordering::SeqCst));
    assert_eq!(*order.lock().unwrap(), vec!["outer-end", "inner"]);
}

fn run_producers(ring: usize, producers: usize, per: u64) -> u64 {
    let consumer = Thread::new(
        ThreadOpts {
            msg_ring_size: ring,
            ..ThreadOpts::named("consumer")
        },
        0,
    )
    .unwrap();
    let h = consumer.handle();
    let next: Arc<Vec<AtomicU64>> = Arc::new((0..producers).map(|_| AtomicU64::new(0)).collect());
    let bad = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let joins: Vec<_> = (0..producers)
        .map(|p| {
            let (h, next, bad, total) = (h.clone(), next.clone(), bad.clone(), total.clone());
            std::thread::spawn(move || {
                for seq in 0..per {
                    let (next, bad, total) = (next.clone(), bad.clone(), total.clone());
                    h.send_msg(move || {
                        // Per-sender order: each message must be the next one.
                        if next[p].load(Ordering::Relaxed) != seq {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                        next[p].store(seq + 1, Ordering::Relaxed);
                        total.fetch_add(1, Ordering::Relaxed);
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    let want = producers as u64 * per;
    let mut now = 0;
    while total.load(Ordering::Relaxed) < want {
        now += 1;
        consumer.poll(32, now);
        if joins.iter().all(|j| j.is_finished()) && consumer.stats().polls > 100_000_000 {
            panic!("stuck");
        }
    }
    for j in joins {
        j.join().unwrap();
    }
    // Nothing more arrives: exactly once.
    for _ in 0..10 {
        now += 1;
        consumer.poll(0, now);
    }
    assert_eq!(total.load(Ordering::Relaxed), want, "duplicate delivery");
    assert_eq!(bad.load(Ordering::Relaxed), 0, "per-sender order violated");
    for p in 0..producers {
        assert_eq!(next[p].load(Ordering::Relaxed), per);
    }
    h.overflow_count()
}

#[test]
fn many_producers_exactly_once_in_order() {
    run_producers(4096, 4, 50_000);
}

#[test]
fn many_producers_with_tiny_ring_use_overflow_and_keep_order() {
    let overflowed = run_producers(16, 4, 20_000);
    assert!(overflowed > 0, "tiny ring never overflowed");
}

#[test]
fn full_ring_overflows_in_order() {
    let ut = UtThreads::with_opts(1, |_| ThreadOpts {
        msg_ring_size: 4,
        ..ThreadOpts::named("small")
    });
    let h = ut.handle(0);
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    for i in 0..10 {
        let l = log.clone();
        h.send_msg(move || l.lock().unwrap().push(i)).unwrap();
    }
    assert_eq!(h.overflow_count(), 6);
    // A batch of 2: ring drains first, overflow only once the ring is empty.
    ut.thread(0).poll(2, 0);
    assert_eq!(*log.lock().unwrap(), vec![0, 1]);
    ut.poll_threads();
    assert_eq!(*log.lock().unwrap(), (0..10).collect::<Vec<_>>());
    // The ring is usable again afterwards.
    let l = log.clone();
    h.send_msg(move || l.lock().unwrap().push(99)).unwrap();
    assert_eq!(h.overflow_count(), 6);
    ut.poll_threads();
    assert_eq!(log.lock().unwrap().last(), Some(&99));
}

#[test]
fn large_closures_are_boxed_and_delivered() {
    let ut = UtThreads::new(1);
    let sum = Arc::new(AtomicU64::new(0));
    let s = sum.clone();
    let big = [3u64; 64];
    ut.handle(0)
        .send_msg(move || {
            s.fetch_add(big.iter().sum::<u64>(), Ordering::SeqCst);
        })
        .unwrap();
    ut.poll_threads();
    assert_eq!(sum.load(Ordering::SeqCst), 192);
}

#[test]
fn batch_limit_is_respected() {
    let ut = UtThreads::new(1);
    let n = Rc::new(Cell::new(0));
    let count = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let c = count.clone();
        ut.handle(0)
            .send_msg(move || {
                c.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
    }
    let out = ut.thread(0).poll(3, 0);
    assert_eq!(out.msgs, 3);
    assert!(out.busy);
    assert_eq!(count.load(Ordering::SeqCst), 3);
    n.set(ut.poll_threads());
    assert_eq!(count.load(Ordering::SeqCst), 10);
    assert_eq!(ut.thread(0).stats().msgs, 10);
}

#[test]
fn send_to_exited_thread_fails() {
    let ut = UtThreads::new(1);
    let h = ut.handle(0);
    ut.thread(0).exit();
    ut.poll_threads();
    assert!(h.is_exited());
    assert_eq!(h.send_msg(|| {}), Err(SendError::Exited));
}

#[test]
fn current_thread_nests_and_restores() {
    let ut = UtThreads::new(2);
    assert!(Thread::current().is_none());
    let (a, b) = (ut.thread(0).id(), ut.thread(1).id());
    ut.run_on(0, || {
        assert_eq!(Thread::current().unwrap().id(), a);
        ut.run_on(1, || assert_eq!(Thread::current().unwrap().id(), b));
        assert_eq!(Thread::current().unwrap().id(), a);
        // Polling another thread from inside one restores the outer one.
        ut.thread(1).poll(0, 0);
        assert_eq!(Thread::current().unwrap().id(), a);
    });
    assert!(Thread::current().is_none());
    // A clone obtained through current() keeps the thread alive on its own.
    let t = ut.run_on(0, || Thread::current().unwrap());
    drop(ut);
    assert_eq!(t.id(), a);
    assert!(Thread::current().is_none());
}
