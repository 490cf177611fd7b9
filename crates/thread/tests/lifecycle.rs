//! Thread exit: draining, blockers, timeout report. Also for_each_thread
//! (the thread registry is process-global, so this file is the only one that
//! iterates over all threads).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rspdk_thread::testing::UtThreads;
use rspdk_thread::{
    for_each_thread, gather_from_threads, io_device_register, poller_register, IoDeviceKey,
    PollerStatus, Thread, ThreadOpts,
};

static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn exit_runs_queued_messages_and_waits_for_pollers_and_channels() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut ut = UtThreads::new(1);
    let ran = Arc::new(AtomicUsize::new(0));
    let dev = io_device_register(IoDeviceKey(0x5000), "held_dev", || Ok(()), |_| {}).unwrap();
    let (poller, ch) = ut.run_on(0, || {
        (
            poller_register("held_poller", 100, |_| PollerStatus::Idle).unwrap(),
            dev.get_channel().unwrap(),
        )
    });
    for _ in 0..5 {
        let r = ran.clone();
        ut.handle(0)
            .send_msg(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
    }
    ut.thread(0).exit();
    assert!(ut.thread(0).is_exiting());
    ut.run_for_us(1000, 100);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        5,
        "queued messages not run during exit"
    );
    assert!(
        !ut.thread(0).is_exited(),
        "exited with a live poller and channel"
    );
    let b = ut.thread(0).exit_blockers();
    assert_eq!(b.pollers, vec!["held_poller"]);
    assert_eq!(b.io_channels, vec!["held_dev"]);
    poller.unregister();
    ut.poll_threads();
    assert!(!ut.thread(0).is_exited());
    drop(ch);
    ut.poll_threads();
    assert!(ut.thread(0).is_exited());
    assert!(ut.thread(0).exit_report().is_none());
    assert_eq!(ut.reap_exited(), 0);
    dev.unregister(|| {});
}

#[test]
fn thread_that_never_drains_is_reported() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut ut = UtThreads::with_opts(1, |_| ThreadOpts {
        exit_timeout: Duration::from_millis(10),
        ..ThreadOpts::named("stuck")
    });
    let dev = io_device_register(IoDeviceKey(0x5001), "stuck_dev", || Ok(()), |_| {}).unwrap();
    let ch = ut.run_on(0, || {
        poller_register("stuck_poller", 0, |_| PollerStatus::Idle).unwrap();
        dev.get_channel().unwrap()
    });
    ut.thread(0).exit();
    ut.run_for_us(9_000, 1000);
    assert!(!ut.thread(0).is_exited());
    assert!(ut.thread(0).exit_report().is_none());
    ut.run_for_us(2_000, 1000);
    assert!(ut.thread(0).is_exited(), "not forced after the timeout");
    let rep = ut.thread(0).exit_report().expect("no report");
    assert_eq!(rep.thread, "stuck");
    assert_eq!(rep.pollers, vec!["stuck_poller"]);
    assert_eq!(rep.io_channels, vec!["stuck_dev"]);
    // Dropping the forced thread releases its channel so the device can go.
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    dev.unregister(move || {
        d.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(done.load(Ordering::SeqCst), 0);
    drop(ch); // owner gone -> destroyed inline
    ut.reap_exited();
    assert_eq!(done.load(Ordering::SeqCst), 1);
}

#[test]
fn for_each_thread_and_gather_visit_every_thread_once() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ut = UtThreads::new(3);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(Mutex::new(None));
    let (s, d) = (seen.clone(), done.clone());
    ut.run_on(1, || {
        for_each_thread(
            move || s.lock().unwrap().push(Thread::current().unwrap().id()),
            move || *d.lock().unwrap() = Some(Thread::current().unwrap().id()),
        )
        .unwrap()
    });
    ut.poll_threads();
    let ids: Vec<u64> = (0..3).map(|i| ut.thread(i).id()).collect();
    assert_eq!(*seen.lock().unwrap(), ids);
    assert_eq!(*done.lock().unwrap(), Some(ids[1]));

    let names = Rc::new(Cell::new(None));
    let out = Arc::new(Mutex::new(None));
    let o = out.clone();
    ut.run_on(0, || {
        gather_from_threads(|t| t.stats_info(), move |v| *o.lock().unwrap() = Some(v)).unwrap()
    });
    ut.poll_threads();
    let v = out.lock().unwrap().take().unwrap();
    names.set(Some(v.iter().map(|s| s.name.clone()).collect::<Vec<_>>()));
    assert_eq!(
        names.take().unwrap(),
        vec!["ut_thread0", "ut_thread1", "ut_thread2"]
    );
}

#[test]
fn on_exit_hook_releases_pollers_and_channels() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ut = UtThreads::new(1);
    let dev = io_device_register(IoDeviceKey(0x5002), "hook_dev", || Ok(()), |_| {}).unwrap();
    let hook_ran = Rc::new(Cell::new(false));
    let hr = hook_ran.clone();
    ut.run_on(0, || {
        let p = poller_register("hook_poller", 0, |_| PollerStatus::Idle).unwrap();
        let ch = dev.get_channel().unwrap();
        Thread::current().unwrap().on_exit(move || {
            hr.set(true);
            p.unregister();
            drop(ch);
        });
    });
    ut.poll_threads();
    assert!(!hook_ran.get(), "hook ran before exit");
    ut.thread(0).exit();
    assert!(!hook_ran.get(), "hook ran inline in exit()");
    ut.poll_threads();
    assert!(hook_ran.get());
    assert!(ut.thread(0).is_exited());
    dev.unregister(|| {});
}

#[test]
fn pending_thread_dropped_unstarted_leaves_the_registry() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = rspdk_thread::PendingThread::new(ThreadOpts::named("never_started")).unwrap();
    let h = p.handle();
    assert!(rspdk_thread::thread_by_id(h.id()).is_some());
    drop(p);
    assert!(rspdk_thread::thread_by_id(h.id()).is_none());
    assert!(h.is_exited());
    assert!(h.send_msg(|| {}).is_err());
}
