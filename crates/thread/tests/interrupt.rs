//! Interrupt mode with real eventfd/timerfd and real time (generous bounds).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rspdk_thread::{now_ns, poller_register, PollerStatus, Thread, ThreadHandle, ThreadOpts};

/// CPU time (user + sys) consumed by the calling OS thread, in microseconds.
fn thread_cpu_us() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a valid, writable rusage; RUSAGE_THREAD only reads the
    // calling thread's counters.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: getrusage succeeded, so it initialised the struct.
    let ru = unsafe { ru.assume_init() };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

struct Runner {
    handle: ThreadHandle,
    stop: Arc<AtomicBool>,
    join: std::thread::JoinHandle<(u64, u64, u64)>,
}

/// Runs an interrupt-mode thread on its own OS thread: poll, then sleep when
/// idle. `setup` runs on it first. Returns (cpu us, wall us, sleeps).
fn spawn_runner(setup: impl FnOnce() + Send + 'static) -> Runner {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let (tx, rx) = mpsc::channel();
    let join = std::thread::spawn(move || {
        let t = Thread::new(
            ThreadOpts {
                interrupt_mode: true,
                ..ThreadOpts::named("intr")
            },
            now_ns(),
        )
        .unwrap();
        t.enter(setup);
        tx.send(t.handle()).unwrap();
        let cpu0 = thread_cpu_us();
        let wall0 = Instant::now();
        while !s.load(Ordering::Acquire) {
            let out = t.poll(0, now_ns());
            if !out.busy {
                t.sleep(now_ns(), None);
            }
        }
        (
            thread_cpu_us() - cpu0,
            wall0.elapsed().as_micros() as u64,
            t.stats().sleeps,
        )
    });
    let handle = rx.recv().unwrap();
    Runner { handle, stop, join }
}

impl Runner {
    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Release);
        // Wake it so it sees the flag.
        self.handle.send_msg(|| {}).unwrap();
        self.join.join().unwrap()
    }
}

#[test]
fn sleeping_thread_wakes_on_message() {
    let r = spawn_runner(|| {});
    std::thread::sleep(Duration::from_millis(50)); // let it fall asleep
    for _ in 0..5 {
        let (tx, rx) = mpsc::channel();
        let sent = Instant::now();
        r.handle
            .send_msg(move || tx.send(Instant::now()).unwrap())
            .unwrap();
        let ran = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("message never ran");
        assert!(ran.duration_since(sent) < Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, _, sleeps) = r.finish();
    assert!(sleeps >= 5, "thread never slept (sleeps = {sleeps})");
}

#[test]
fn sleeping_thread_wakes_on_timer() {
    let runs = Arc::new(AtomicU64::new(0));
    let first = Arc::new(AtomicU64::new(0));
    let (r2, f2) = (runs.clone(), first.clone());
    let start = now_ns();
    let r = spawn_runner(move || {
        poller_register("t20ms", 20_000, move |_| {
            if r2.fetch_add(1, Ordering::SeqCst) == 0 {
                f2.store(now_ns(), Ordering::SeqCst);
            }
            PollerStatus::Busy
        })
        .unwrap();
    });
    // Wait for 10 runs (about 200 ms; however long a busy machine takes),
    // then check the poller never ran faster than its 20 ms period.
    let deadline = Instant::now() + Duration::from_secs(20);
    while runs.load(Ordering::SeqCst) < 10 {
        assert!(Instant::now() < deadline, "timed poller stopped running");
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed_ns = now_ns() - start;
    let (_, _, sleeps) = r.finish();
    let n = runs.load(Ordering::SeqCst);
    let most = elapsed_ns / 20_000_000 + 1;
    assert!(
        n <= most,
        "timed poller ran {n} times in {elapsed_ns} ns (at most {most} for a 20 ms period)"
    );
    let first_after = first.load(Ordering::SeqCst) - start;
    assert!(
        first_after >= 19_000_000,
        "ran before its period: {first_after} ns"
    );
    assert!(sleeps >= n / 2, "did not sleep between timer runs");
}

#[test]
fn idle_interrupt_thread_uses_almost_no_cpu() {
    let r = spawn_runner(|| {
        poller_register("t100ms", 100_000, |_| PollerStatus::Idle).unwrap();
    });
    std::thread::sleep(Duration::from_secs(1));
    let (cpu_us, wall_us, _) = r.finish();
    let pct = cpu_us as f64 * 100.0 / wall_us as f64;
    eprintln!("idle interrupt-mode thread: {cpu_us} us CPU over {wall_us} us = {pct:.3}%");
    assert!(pct < 5.0, "idle CPU {pct:.2}%");
}

#[test]
fn fd_interrupt_wakes_sleeping_thread_and_can_unregister_itself() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    let (mut tx_sock, rx_sock) = UnixStream::pair().unwrap();
    rx_sock.set_nonblocking(true).unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let r = spawn_runner(move || {
        let me = Thread::current().unwrap();
        let fd = rx_sock.as_raw_fd();
        let mut sock = rx_sock;
        let mut events = 0;
        let handle: std::rc::Rc<std::cell::RefCell<Option<rspdk_thread::Interrupt>>> =
            Default::default();
        let h2 = handle.clone();
        let i = me
            .interrupt_register(fd, "sock", move || {
                let mut buf = [0u8; 64];
                match sock.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        events += 1;
                        tx.send(buf[..n].to_vec()).unwrap();
                        if events == 2 {
                            if let Some(i) = h2.borrow().as_ref() {
                                i.unregister();
                            }
                        }
                        PollerStatus::Busy
                    }
                    _ => PollerStatus::Idle,
                }
            })
            .unwrap();
        *handle.borrow_mut() = Some(i);
    });
    std::thread::sleep(Duration::from_millis(50)); // asleep by now
    for round in 0..2u8 {
        tx_sock.write_all(&[round; 3]).unwrap();
        let got = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("fd did not wake the thread");
        assert_eq!(got, vec![round; 3]);
        std::thread::sleep(Duration::from_millis(50)); // asleep again
    }
    // Unregistered from inside: the callback (and the sender it owned) was
    // dropped, so nothing more can arrive.
    let _ = tx_sock.write_all(b"late"); // EPIPE: the socket was dropped too
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(200)),
        Err(mpsc::RecvTimeoutError::Disconnected)
    );
    let (_, _, sleeps) = r.finish();
    assert!(sleeps >= 2, "sleeps = {sleeps}");
}

#[test]
fn fd_interrupt_needs_interrupt_mode() {
    let t = Thread::new(ThreadOpts::named("polling"), 0).unwrap();
    let e = t
        .interrupt_register(0, "stdin", || PollerStatus::Idle)
        .unwrap_err();
    assert_eq!(e, rspdk_thread::ThreadError::NotInterruptMode);
}

#[test]
fn no_lost_wakeups_under_bursty_multi_producer_load() {
    // The runner sleeps without timeout, so a lost wakeup would stall the
    // count below until the 20 s guard fails the test.
    let r = spawn_runner(|| {});
    let delivered = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    const PRODUCERS: u64 = 3;
    const PER: u64 = 20_000;
    let joins: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (h, d, done_tx) = (r.handle.clone(), delivered.clone(), done_tx.clone());
            std::thread::spawn(move || {
                for i in 0..PER {
                    let (d, done_tx) = (d.clone(), done_tx.clone());
                    h.send_msg(move || {
                        if d.fetch_add(1, Ordering::SeqCst) + 1 == PRODUCERS * PER {
                            done_tx.send(()).unwrap();
                        }
                    })
                    .unwrap();
                    // Bursts with pauses so the consumer keeps falling asleep.
                    if (i + p) % 500 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        })
        .collect();
    for j in joins {
        j.join().unwrap();
    }
    done_rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "lost wakeup: {} of {} delivered",
                delivered.load(Ordering::SeqCst),
                PRODUCERS * PER
            )
        });
    let (_, _, sleeps) = r.finish();
    // The sleep path must have been exercised (how often depends on load).
    eprintln!("consumer slept {sleeps} times");
    assert!(sleeps >= 1, "consumer never slept");
}
