//! Pollers with the fake clock.

use std::cell::Cell;
use std::rc::Rc;

use rspdk_thread::testing::UtThreads;
use rspdk_thread::{poller_register, PollerState, PollerStatus, ThreadError};

#[test]
fn timed_poller_runs_exactly_as_the_clock_says() {
    let mut ut = UtThreads::new(1);
    let runs = Rc::new(Cell::new(0u32));
    let r = runs.clone();
    let p = ut.run_on(0, || {
        poller_register("tick100", 100, move |_| {
            r.set(r.get() + 1);
            PollerStatus::Busy
        })
        .unwrap()
    });
    ut.poll_threads();
    assert_eq!(runs.get(), 0, "ran before its period");
    ut.advance_time_us(99);
    ut.poll_threads();
    assert_eq!(runs.get(), 0, "ran early");
    ut.advance_time_us(1);
    ut.poll_threads();
    assert_eq!(runs.get(), 1);
    // 1 ms in 10 us steps: exactly 10 more runs.
    ut.run_for_us(1000, 10);
    assert_eq!(runs.get(), 11);
    // One big jump runs it once (no catch-up burst).
    ut.advance_time_us(1000);
    ut.poll_threads();
    assert_eq!(runs.get(), 12);
    assert_eq!(p.run_count(), 12);
    assert_eq!(p.busy_count(), 12);
}

#[test]
fn period_zero_runs_every_poll_and_counts_busy_idle() {
    let ut = UtThreads::new(1);
    let n = Rc::new(Cell::new(0u32));
    let c = n.clone();
    let p = ut.run_on(0, || {
        poller_register("every", 0, move |_| {
            c.set(c.get() + 1);
            if c.get() % 2 == 0 {
                PollerStatus::Busy
            } else {
                PollerStatus::Idle
            }
        })
        .unwrap()
    });
    for _ in 0..10 {
        ut.poll_thread(0);
    }
    assert_eq!(n.get(), 10);
    assert_eq!(p.run_count(), 10);
    assert_eq!(p.busy_count(), 5);
}

#[test]
fn pause_resume_unregister_from_inside() {
    let mut ut = UtThreads::new(1);
    let runs = Rc::new(Cell::new(0u32));
    let r = runs.clone();
    let p = ut.run_on(0, || {
        poller_register("self", 10, move |me| {
            r.set(r.get() + 1);
            match r.get() {
                2 => me.pause(),
                4 => me.unregister(),
                _ => {}
            }
            PollerStatus::Idle
        })
        .unwrap()
    });
    ut.run_for_us(100, 10);
    assert_eq!(runs.get(), 2, "pause from inside did not stop it");
    assert_eq!(p.state(), PollerState::Paused);
    ut.run_on(0, || p.resume());
    ut.run_for_us(100, 10);
    assert_eq!(runs.get(), 4);
    assert_eq!(p.state(), PollerState::Unregistered);
    ut.run_for_us(100, 10);
    assert_eq!(runs.get(), 4, "ran after unregister");
    assert!(ut.thread(0).pollers().is_empty());

    // Period-0: pause then resume from inside the same run.
    let n = Rc::new(Cell::new(0u32));
    let c = n.clone();
    let q = ut.run_on(0, || {
        poller_register("flip", 0, move |me| {
            c.set(c.get() + 1);
            me.pause();
            me.resume();
            if c.get() == 3 {
                me.unregister();
            }
            PollerStatus::Busy
        })
        .unwrap()
    });
    ut.poll_threads();
    assert_eq!(n.get(), 3);
    assert_eq!(q.state(), PollerState::Unregistered);
}

#[test]
fn unregister_drops_closure_and_captures() {
    let ut = UtThreads::new(1);
    let token = Rc::new(());
    let t = token.clone();
    let p = ut.run_on(0, || {
        poller_register("cap", 0, move |_| {
            let _ = &t;
            PollerStatus::Idle
        })
        .unwrap()
    });
    assert_eq!(Rc::strong_count(&token), 2);
    p.unregister();
    assert_eq!(Rc::strong_count(&token), 1);
    ut.poll_threads();
    assert_eq!(p.run_count(), 0);
}

#[test]
fn register_outside_thread_fails() {
    assert_eq!(
        poller_register("x", 0, |_| PollerStatus::Idle).unwrap_err(),
        ThreadError::NotOnThread
    );
}

#[test]
fn busy_idle_time_and_stats_json() {
    let mut ut = UtThreads::new(1);
    let busy = Rc::new(Cell::new(true));
    let b = busy.clone();
    ut.run_on(0, || {
        poller_register("active", 0, move |_| {
            if b.get() {
                PollerStatus::Busy
            } else {
                PollerStatus::Idle
            }
        })
        .unwrap();
        poller_register("timed", 1000, |_| PollerStatus::Idle).unwrap();
        let p = poller_register("paused", 5, |_| PollerStatus::Idle).unwrap();
        p.pause();
    });
    ut.poll_thread(0);
    ut.advance_time_us(10);
    ut.poll_thread(0); // previous poll was busy: 10 us busy
    busy.set(false);
    ut.advance_time_us(5);
    ut.poll_thread(0); // previous poll busy again (poller busy at t=10): +5 busy
    ut.advance_time_us(7);
    ut.poll_thread(0); // previous idle: +7 idle
    let st = ut.thread(0).stats();
    assert_eq!(st.busy_ns, 15_000);
    assert_eq!(st.idle_ns, 7_000);
    let info = ut.thread(0).stats_info();
    let v = serde_json::to_value(&info).unwrap();
    assert_eq!(v["name"], "ut_thread0");
    assert_eq!(v["busy"], 15_000);
    assert_eq!(v["active_pollers_count"], 1);
    assert_eq!(v["timed_pollers_count"], 1);
    assert_eq!(v["paused_pollers_count"], 1);
    assert_eq!(v["in_interrupt"], false);
    let pv = serde_json::to_value(ut.thread(0).pollers_info()).unwrap();
    assert_eq!(pv["active_pollers"][0]["name"], "active");
    assert_eq!(pv["active_pollers"][0]["run_count"], 4);
    assert!(pv["active_pollers"][0].get("period_ticks").is_none());
    assert_eq!(pv["timed_pollers"][0]["period_ticks"], 1_000_000);
    assert_eq!(pv["paused_pollers"][0]["state"], "paused");
}

#[test]
fn timed_pause_resume_inside_same_run_keeps_one_schedule() {
    let mut ut = UtThreads::new(1);
    let runs = Rc::new(Cell::new(0u32));
    let r = runs.clone();
    ut.run_on(0, || {
        poller_register("flip_timed", 50, move |me| {
            r.set(r.get() + 1);
            me.pause();
            me.resume();
            PollerStatus::Idle
        })
        .unwrap()
    });
    ut.run_for_us(1000, 10);
    // Exactly one run per 50 us period: not lost, not doubled.
    assert_eq!(runs.get(), 20);
    assert!(ut.thread(0).next_timer().is_some());
}

#[test]
fn many_timed_pollers_fire_in_deadline_order() {
    let mut ut = UtThreads::new(1);
    let log = Rc::new(std::cell::RefCell::new(Vec::new()));
    ut.run_on(0, || {
        for period in [30u64, 10, 20] {
            let l = log.clone();
            poller_register(&format!("p{period}"), period, move |_| {
                l.borrow_mut().push(period);
                PollerStatus::Idle
            })
            .unwrap();
        }
    });
    ut.run_for_us(30, 10);
    // Equal deadlines run in scheduling order (p20 was scheduled at
    // registration, before p10's reschedule at t=10).
    assert_eq!(*log.borrow(), vec![10, 20, 10, 30, 10]);
}
