//! I/O device and channel lifecycle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rspdk_thread::testing::UtThreads;
use rspdk_thread::{get_io_channel, io_device_register, IoDeviceError, IoDeviceKey, Thread};

#[derive(Debug)]
struct Ctx {
    thread_id: u64,
    serial: usize,
}

#[derive(Default)]
struct Log {
    created: Mutex<Vec<u64>>,
    destroyed: Mutex<Vec<(u64, u64)>>, // (ctx thread, thread destroy ran on)
}

fn register(key: usize, name: &str, log: &Arc<Log>) -> rspdk_thread::IoDevice<Ctx> {
    let (l1, l2) = (log.clone(), log.clone());
    let serial = Arc::new(AtomicUsize::new(0));
    io_device_register(
        IoDeviceKey(key),
        name,
        move || {
            let tid = Thread::current().unwrap().id();
            l1.created.lock().unwrap().push(tid);
            Ok(Ctx {
                thread_id: tid,
                serial: serial.fetch_add(1, Ordering::SeqCst),
            })
        },
        move |c: &Ctx| {
            let on = Thread::current().map(|t| t.id()).unwrap_or(0);
            l2.destroyed.lock().unwrap().push((c.thread_id, on));
        },
    )
    .unwrap()
}

#[test]
fn create_on_first_get_destroy_after_last_put_on_owner() {
    let ut = UtThreads::new(2);
    let log = Arc::new(Log::default());
    let dev = register(0x1000, "dev_a", &log);
    let t0 = ut.thread(0).id();
    let (a, b) = ut.run_on(0, || {
        (dev.get_channel().unwrap(), dev.get_channel().unwrap())
    });
    assert_eq!(
        log.created.lock().unwrap().len(),
        1,
        "second get created again"
    );
    assert_eq!(a.serial, b.serial);
    assert_eq!(a.refs(), 2);
    assert_eq!(a.thread_id, t0);
    // Lookup by key gives the same channel.
    let c = ut.run_on(0, || get_io_channel::<Ctx>(IoDeviceKey(0x1000)).unwrap());
    assert_eq!(c.refs(), 3);
    drop(c);
    drop(a);
    ut.poll_threads();
    assert!(
        log.destroyed.lock().unwrap().is_empty(),
        "destroyed with a live reference"
    );
    let info = serde_json::to_value(ut.thread(0).io_channels_info()).unwrap();
    assert_eq!(info["io_channels"][0]["name"], "dev_a");
    assert_eq!(info["io_channels"][0]["ref"], 1);
    drop(b);
    // Asynchronous: not destroyed until the owner thread polls.
    assert!(log.destroyed.lock().unwrap().is_empty());
    ut.poll_threads();
    assert_eq!(*log.destroyed.lock().unwrap(), vec![(t0, t0)]);
    assert_eq!(ut.thread(0).io_channel_count(), 0);
    assert_eq!(dev.channel_count(), 0);
    // Get after put but before the destroy ran cancels the destroy.
    let x = ut.run_on(1, || dev.get_channel().unwrap());
    drop(x);
    let y = ut.run_on(1, || dev.get_channel().unwrap());
    ut.poll_threads();
    assert_eq!(log.destroyed.lock().unwrap().len(), 1);
    assert_eq!(y.refs(), 1);
    drop(y);
    ut.poll_threads();
    assert_eq!(log.destroyed.lock().unwrap().len(), 2);
    dev.unregister(|| {});
    ut.poll_threads();
}

#[test]
fn wrong_type_and_not_on_thread() {
    let log = Arc::new(Log::default());
    let dev = register(0x2000, "dev_b", &log);
    assert_eq!(dev.get_channel().unwrap_err(), IoDeviceError::NotOnThread);
    let ut = UtThreads::new(1);
    let e = ut.run_on(0, || {
        get_io_channel::<u32>(IoDeviceKey(0x2000)).unwrap_err()
    });
    assert_eq!(e, IoDeviceError::WrongType(IoDeviceKey(0x2000)));
    let log2 = Arc::new(Log::default());
    let (l1, _) = (log2.clone(), ());
    let dup = io_device_register(
        IoDeviceKey(0x2000),
        "dup",
        move || {
            let _ = &l1;
            Ok(0u8)
        },
        |_| {},
    );
    assert_eq!(
        dup.unwrap_err(),
        IoDeviceError::AlreadyRegistered(IoDeviceKey(0x2000))
    );
    let fail =
        io_device_register(IoDeviceKey(0x2001), "fail", || Err::<u8, i32>(-12), |_| {}).unwrap();
    assert_eq!(
        ut.run_on(0, || fail.get_channel().unwrap_err()),
        IoDeviceError::CreateFailed(-12)
    );
    dev.unregister(|| {});
    fail.unregister(|| {});
    ut.poll_threads();
}

#[test]
fn for_each_channel_visits_each_holder_once_and_stops_on_error() {
    let ut = UtThreads::new(4);
    let log = Arc::new(Log::default());
    let dev = register(0x3000, "dev_c", &log);
    // Threads 0, 1, 3 hold a channel; 2 does not.
    let chans: Vec<_> = [0, 1, 3]
        .iter()
        .map(|&i| ut.run_on(i, || dev.get_channel().unwrap()))
        .collect();
    let visits = Arc::new(Mutex::new(Vec::new()));
    let done_on = Arc::new(Mutex::new(None));
    let (v, d) = (visits.clone(), done_on.clone());
    ut.run_on(2, || {
        dev.for_each_channel(
            move |ch, it| {
                let here = Thread::current().unwrap().id();
                assert_eq!(ch.thread_id, here, "channel of another thread");
                v.lock().unwrap().push(here);
                it.continue_with(0);
            },
            move |status| {
                *d.lock().unwrap() = Some((status, Thread::current().unwrap().id()));
            },
        )
        .unwrap()
    });
    assert!(
        visits.lock().unwrap().is_empty(),
        "iteration ran synchronously"
    );
    ut.poll_threads();
    let ids: Vec<u64> = [0, 1, 3].iter().map(|&i| ut.thread(i).id()).collect();
    assert_eq!(*visits.lock().unwrap(), ids);
    assert_eq!(*done_on.lock().unwrap(), Some((0, ut.thread(2).id())));

    // Stop on error at the second holder; continue later (async) is fine.
    let visits = Arc::new(Mutex::new(Vec::new()));
    let done_on = Arc::new(Mutex::new(None));
    let (v, d) = (visits.clone(), done_on.clone());
    ut.run_on(0, || {
        dev.for_each_channel(
            move |_ch, it| {
                let mut g = v.lock().unwrap();
                g.push(Thread::current().unwrap().id());
                let status = if g.len() == 2 { -5 } else { 0 };
                drop(g);
                // Continue from a later message on this thread.
                Thread::current()
                    .unwrap()
                    .send_msg(move || it.continue_with(status))
                    .unwrap();
            },
            move |status| *d.lock().unwrap() = Some((status, Thread::current().unwrap().id())),
        )
        .unwrap()
    });
    ut.poll_threads();
    assert_eq!(visits.lock().unwrap().len(), 2, "did not stop on error");
    assert_eq!(*done_on.lock().unwrap(), Some((-5, ut.thread(0).id())));
    drop(chans);
    ut.poll_threads();
    assert_eq!(log.destroyed.lock().unwrap().len(), 3);
    dev.unregister(|| {});
    ut.poll_threads();
}

#[test]
fn unregister_is_deferred_until_channels_are_gone() {
    let ut = UtThreads::new(2);
    let log = Arc::new(Log::default());
    let dev = register(0x4000, "dev_d", &log);
    let a = ut.run_on(0, || dev.get_channel().unwrap());
    let b = ut.run_on(1, || dev.get_channel().unwrap());
    let done = Arc::new(Mutex::new(None));
    let d = done.clone();
    let dev2 = dev.clone();
    ut.run_on(1, || {
        dev.unregister(move || *d.lock().unwrap() = Some(Thread::current().unwrap().id()))
    });
    ut.poll_threads();
    assert!(
        done.lock().unwrap().is_none(),
        "unregister completed with open channels"
    );
    // No new channels on an unregistered device.
    assert_eq!(
        ut.run_on(0, || get_io_channel::<Ctx>(IoDeviceKey(0x4000))
            .unwrap_err()),
        IoDeviceError::NotFound(IoDeviceKey(0x4000))
    );
    assert_eq!(
        ut.run_on(0, || dev2.get_channel().unwrap_err()),
        IoDeviceError::Unregistered(IoDeviceKey(0x4000))
    );
    drop(a);
    ut.poll_threads();
    assert!(done.lock().unwrap().is_none());
    drop(b);
    ut.poll_threads();
    // Completed on the thread that called unregister.
    assert_eq!(*done.lock().unwrap(), Some(ut.thread(1).id()));
    assert_eq!(log.destroyed.lock().unwrap().len(), 2);
}

#[test]
fn reused_key_is_a_new_device_even_with_old_channels_open() {
    let ut = UtThreads::new(1);
    let log_old = Arc::new(Log::default());
    let old = register(0x6000, "old_dev", &log_old);
    let old_ch = ut.run_on(0, || old.get_channel().unwrap());
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    ut.run_on(0, || {
        old.unregister(move || {
            d.fetch_add(1, Ordering::SeqCst);
        })
    });
    let log_new = Arc::new(Log::default());
    let new = register(0x6000, "new_dev", &log_new);
    let new_ch = ut.run_on(0, || new.get_channel().unwrap());
    assert_eq!(
        log_new.created.lock().unwrap().len(),
        1,
        "old channel reused"
    );
    assert_eq!(new_ch.device_name(), "new_dev");
    assert_eq!(new_ch.refs(), 1);
    assert_eq!(old_ch.device_name(), "old_dev");
    drop(old_ch);
    ut.poll_threads();
    assert_eq!(done.load(Ordering::SeqCst), 1);
    assert_eq!(log_new.destroyed.lock().unwrap().len(), 0);
    assert_eq!(ut.thread(0).io_channels(), vec![("new_dev".to_string(), 1)]);
    drop(new_ch);
    ut.poll_threads();
    new.unregister(|| {});
    ut.poll_threads();
}
