//! A second signal during a shutdown that hangs forces the exit.
//!
//! No libtest harness (`harness = false`): the child half runs an app in the
//! process's only thread, so SIGTERM is blocked in every thread and read
//! from the app's signalfd — which a multi-threaded test harness could not
//! guarantee. The parent half re-executes this binary as the child.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rspdk_event::{App, AppOpts, Subsystem, SubsystemDone};

const CHILD_ENV: &str = "RSPDK_SIGNALS_TEST_SOCKET";

/// A subsystem whose fini never completes.
struct Stuck;

impl Subsystem for Stuck {
    fn name(&self) -> &str {
        "stuck"
    }
    fn fini(&self, done: SubsystemDone) {
        // Never completed, never dropped: shutdown hangs here.
        std::mem::forget(done);
    }
}

fn child(sock: String) -> ! {
    let opts = AppOpts {
        rpc_socket: sock.into(),
        no_huge: true,
        interrupt_mode: true,
        ..AppOpts::default()
    };
    let code = App::new(opts).subsystem(Stuck).run(|_| {});
    std::process::exit(code);
}

fn main() {
    if let Ok(sock) = std::env::var(CHILD_ENV) {
        child(sock);
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("spdk.sock");
    let mut c = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, &sock)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "child did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = c.id() as i32;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        c.try_wait().unwrap().is_none(),
        "shutdown should hang on the stuck subsystem"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(5),
            "second signal did not force exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");
    assert!(
        err.contains("second signal during shutdown: exiting now"),
        "{err}"
    );
    assert!(!sock.exists(), "socket file removed on forced exit");
    println!("test second_signal_forces_exit ... ok\n\ntest result: ok. 1 passed; 0 failed");
}
