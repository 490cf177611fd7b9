//! Reactors on real cores.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rspdk_event::{current_cpu, parse_core_mask, ReactorError, ReactorOpts, ReactorSet};
use rspdk_thread::{poller_register, PollerStatus, Thread};

fn clk_tck() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

#[test]
fn mask_0x3_pins_two_reactors_and_places_round_robin() {
    let set = ReactorSet::start(ReactorOpts::new(parse_core_mask("0x3").unwrap())).unwrap();
    assert_eq!(set.handle().cores(), vec![0, 1]);
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for i in 0..4 {
        let tx = tx.clone();
        let h = set
            .spawn_thread(&format!("t{i}"), None, move || {
                let t = Thread::current().expect("init not on a thread");
                tx.send((i, t.name().to_string(), current_cpu())).unwrap();
            })
            .unwrap();
        handles.push(h);
    }
    let mut got: Vec<_> = (0..4)
        .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    got.sort();
    for (i, name, cpu) in &got {
        assert_eq!(name, &format!("t{i}"));
        // Round-robin: t0,t2 on core 0; t1,t3 on core 1 (pinned).
        assert_eq!(*cpu, Some((*i % 2) as u32), "thread t{i} ran on {cpu:?}");
    }
    // Messages run on the pinned core too.
    let (tx2, rx2) = mpsc::channel();
    handles[1]
        .send_msg(move || tx2.send(current_cpu()).unwrap())
        .unwrap();
    assert_eq!(rx2.recv_timeout(Duration::from_secs(5)).unwrap(), Some(1));

    let info = set.reactors_info();
    let v = serde_json::to_value(&info).unwrap();
    assert_eq!(v["tick_rate"], 1_000_000_000u64);
    assert_eq!(v["reactors"][0]["lcore"], 0);
    assert_eq!(v["reactors"][1]["lcore"], 1);
    let names = |r: usize| -> Vec<String> {
        info.reactors[r]
            .lw_threads
            .iter()
            .map(|t| t.name.clone())
            .collect()
    };
    assert_eq!(names(0), vec!["t0", "t2"]);
    assert_eq!(names(1), vec!["t1", "t3"]);
    assert!(info.reactors.iter().all(|r| r.tid > 0));
    for k in [
        "busy",
        "idle",
        "in_interrupt",
        "irq",
        "sys",
        "usr",
        "lw_threads",
        "tid",
    ] {
        assert!(v["reactors"][0].get(k).is_some(), "missing {k}");
    }
    assert!(v["reactors"][0]["lw_threads"][0].get("elapsed").is_some());
    // No cpumask given: the thread may run on every reactor core.
    assert_eq!(v["reactors"][0]["lw_threads"][0]["cpumask"], "3");

    let t0 = Instant::now();
    set.stop();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(handles.iter().all(|h| h.is_exited()));
}

#[test]
fn cpumask_restricts_placement() {
    let set = ReactorSet::start(ReactorOpts::new(parse_core_mask("[0-1]").unwrap())).unwrap();
    let (tx, rx) = mpsc::channel();
    for _ in 0..3 {
        let tx = tx.clone();
        set.spawn_thread("only1", Some(parse_core_mask("0x2").unwrap()), move || {
            tx.send(current_cpu()).unwrap()
        })
        .unwrap();
    }
    for _ in 0..3 {
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), Some(1));
    }
    let e = set
        .spawn_thread("nowhere", Some(parse_core_mask("0x4").unwrap()), || {})
        .unwrap_err();
    assert!(matches!(e, ReactorError::NoReactorForMask(_)), "{e}");
    set.stop();
}

#[test]
fn unavailable_core_is_rejected() {
    let e = ReactorSet::start(ReactorOpts::new(parse_core_mask("[1000]").unwrap())).unwrap_err();
    assert!(
        matches!(e, ReactorError::CoreNotAvailable { core: 1000, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("1000"));
}

#[test]
fn stop_forces_out_a_thread_that_keeps_a_poller() {
    let mut opts = ReactorOpts::new(parse_core_mask("0x1").unwrap());
    opts.thread_exit_timeout = Duration::from_millis(100);
    let set = ReactorSet::start(opts).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = set
        .spawn_thread("sticky", None, move || {
            poller_register("never_unregistered", 1000, |_| PollerStatus::Idle).unwrap();
            tx.send(()).unwrap();
        })
        .unwrap();
    // Wait for the poller itself, not for a guess of how long it takes (a
    // busy machine may run the thread late).
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the thread registered its poller");
    let t0 = Instant::now();
    set.stop();
    assert!(h.is_exited());
    assert!(t0.elapsed() >= Duration::from_millis(90));
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn stop_is_quick_when_threads_clean_up_in_on_exit() {
    let set = ReactorSet::start(ReactorOpts::new(parse_core_mask("0x3").unwrap())).unwrap();
    let hs: Vec<_> = (0..4)
        .map(|i| {
            set.spawn_thread(&format!("clean{i}"), None, || {
                let p = poller_register("work", 0, |_| PollerStatus::Idle).unwrap();
                Thread::current().unwrap().on_exit(move || p.unregister());
            })
            .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    set.stop();
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "stop took {:?}",
        t0.elapsed()
    );
    assert!(hs.iter().all(|h| h.is_exited()));
}

#[test]
fn interrupt_mode_reactors_sleep_and_wake() {
    let mut opts = ReactorOpts::new(parse_core_mask("0x3").unwrap());
    opts.interrupt_mode = true;
    let set = ReactorSet::start(opts).unwrap();
    let (ttx, trx) = mpsc::channel();
    let hs: Vec<_> = (0..2)
        .map(|i| {
            let ttx = ttx.clone();
            set.spawn_thread(&format!("i{i}"), None, move || {
                let ttx = ttx.clone();
                poller_register("t50ms", 50_000, move |me| {
                    let _ = ttx.send(Instant::now());
                    if me.run_count() >= 3 {
                        me.unregister();
                    }
                    PollerStatus::Busy
                })
                .unwrap();
            })
            .unwrap()
        })
        .collect();
    // Timer wakes: each thread's poller runs 4 times, ~50 ms apart.
    for _ in 0..8 {
        trx.recv_timeout(Duration::from_secs(2))
            .expect("timer did not wake the reactor");
    }
    // The pollers are gone: both reactors go to sleep.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !set.reactors_info().reactors.iter().all(|r| r.in_interrupt) {
        assert!(Instant::now() < deadline, "reactors not sleeping");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Idle CPU over 1 s, of the reactor OS threads only (other tests in this
    // binary may be spinning polling-mode reactors at the same time).
    let ticks = |i: &rspdk_event::FrameworkGetReactors| -> u64 {
        i.reactors.iter().map(|r| r.usr + r.sys).sum()
    };
    let cpu0 = ticks(&set.reactors_info());
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let cpu_ticks = ticks(&set.reactors_info()) - cpu0;
    let cpu_us = cpu_ticks * 1_000_000 / clk_tck();
    let pct = cpu_us as f64 * 100.0 / w0.elapsed().as_micros() as f64;
    eprintln!("idle interrupt-mode reactors: {pct:.3}% CPU");
    assert!(pct < 5.0, "idle CPU {pct:.2}%");
    // Message wakes a sleeping reactor.
    for h in &hs {
        let (tx, rx) = mpsc::channel();
        let sent = Instant::now();
        h.send_msg(move || tx.send(Instant::now()).unwrap())
            .unwrap();
        let ran = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("message did not wake");
        assert!(ran.duration_since(sent) < Duration::from_millis(500));
    }
    set.stop();
    assert!(hs.iter().all(|h| h.is_exited()));
}
