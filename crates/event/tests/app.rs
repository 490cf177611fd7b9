//! The app framework in-process: subsystems (order, reverse fini, their RPC
//! methods and config), the JSON config passes, `--wait-for-rpc`, the
//! config round trip, start-up failures.

mod common;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{ok, rpc, wait_for_socket, wait_started};
use rspdk_event::{App, AppError, AppOpts, Subsystem, SubsystemDone};
use rspdk_rpc::{RpcRegistry, StateMask};
use serde_json::{json, Value};

type Events = Arc<Mutex<Vec<String>>>;

/// A toy subsystem: `<name>_set_opts` (startup) and `<name>_create`
/// (runtime) record their params, `<name>_fail` fails; write_config_json
/// writes the recorded calls back.
struct Toy {
    name: &'static str,
    deps: &'static [&'static str],
    events: Events,
    recorded: Rc<RefCell<Vec<Value>>>,
    fail_init: bool,
}

impl Toy {
    fn new(name: &'static str, deps: &'static [&'static str], events: &Events) -> Toy {
        Toy {
            name,
            deps,
            events: events.clone(),
            recorded: Rc::default(),
            fail_init: false,
        }
    }
}

impl Subsystem for Toy {
    fn name(&self) -> &str {
        self.name
    }
    fn depends_on(&self) -> Vec<String> {
        self.deps.iter().map(|s| s.to_string()).collect()
    }
    fn register_rpcs(&self, reg: &RpcRegistry) -> Result<(), rspdk_rpc::Error> {
        for (suffix, states) in [
            ("set_opts", StateMask::STARTUP),
            ("create", StateMask::RUNTIME),
        ] {
            let method = format!("{}_{suffix}", self.name);
            let rec = self.recorded.clone();
            let events = self.events.clone();
            let m = method.clone();
            reg.register(&method, states, move |p, r| {
                events.lock().unwrap().push(format!("rpc {m}"));
                let mut entry = json!({"method": m});
                if let Some(p) = p {
                    entry["params"] = p;
                }
                rec.borrow_mut().push(entry);
                r.success(&true);
            })?;
        }
        reg.register(
            &format!("{}_fail", self.name),
            StateMask::RUNTIME,
            |_p, r| r.error(rspdk_rpc::RpcError::from_errno(libc::EINVAL)),
        )
    }
    fn init(&self, done: SubsystemDone) {
        self.events
            .lock()
            .unwrap()
            .push(format!("init {}", self.name));
        if self.fail_init {
            return done.fail("toy refuses");
        }
        // Complete from another OS thread, as a subsystem waiting on
        // other reactors would.
        std::thread::spawn(move || done.ok());
    }
    fn fini(&self, done: SubsystemDone) {
        self.events
            .lock()
            .unwrap()
            .push(format!("fini {}", self.name));
        done.ok();
    }
    fn write_config_json(&self) -> Option<Vec<Value>> {
        Some(self.recorded.borrow().clone())
    }
}

struct Running {
    sock: PathBuf,
    join: JoinHandle<Result<i32, AppError>>,
    _dir: tempfile::TempDir,
}

fn opts(dir: &Path) -> AppOpts {
    AppOpts {
        rpc_socket: dir.join("spdk.sock"),
        no_huge: true,
        interrupt_mode: true,
        ..AppOpts::default()
    }
}

/// Starts an app with toy subsystems `a` and `b` (b depends on a).
fn start(events: &Events, tweak: impl FnOnce(&mut AppOpts), fail_b: bool) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    tweak(&mut o);
    let sock = o.rpc_socket.clone();
    let (e1, e2) = (events.clone(), events.clone());
    let join = std::thread::spawn(move || {
        App::new(o)
            .handle_signals(false)
            // Registered dependent-first: the framework must reorder.
            .subsystem_with(move || {
                let mut b = Toy::new("b", &["a"], &e2);
                b.fail_init = fail_b;
                Box::new(b)
            })
            .subsystem_with(move || Box::new(Toy::new("a", &[], &e1)))
            .try_run(|_ctx| {})
    });
    Running {
        sock,
        join,
        _dir: dir,
    }
}

fn stop(r: Running) -> Result<i32, AppError> {
    ok(
        &r.sock,
        "spdk_kill_instance",
        Some(json!({"sig_name": "SIGTERM"})),
    );
    let res = r.join.join().unwrap();
    assert!(!r.sock.exists(), "socket file left behind");
    res
}

fn write_config(dir: &Path, v: &Value) -> PathBuf {
    let p = dir.join(format!("cfg{}.json", rand_suffix()));
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn subsystems_init_in_dependency_order_and_fini_in_reverse() {
    let events = Events::default();
    let r = start(&events, |_| {}, false);
    wait_started(&r.sock);
    let subs = ok(&r.sock, "framework_get_subsystems", None);
    assert_eq!(
        subs,
        json!([{"subsystem": "a", "depends_on": []}, {"subsystem": "b", "depends_on": ["a"]}])
    );
    assert_eq!(
        ok(&r.sock, "framework_get_config", Some(json!({"name": "a"}))),
        json!([])
    );
    let err = rpc(&r.sock, "framework_get_config", Some(json!({"name": "zz"}))).unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32602, "Subsystem 'zz' not found")
    );
    let err = rpc(&r.sock, "framework_get_config", Some(json!({"nam": "a"}))).unwrap_err();
    assert!(
        err.message.contains("unknown field `nam`"),
        "{}",
        err.message
    );
    assert_eq!(stop(r).unwrap(), 0);
    assert_eq!(
        *events.lock().unwrap(),
        vec!["init a", "init b", "fini b", "fini a"]
    );
}

#[test]
fn config_round_trips_through_save_config() {
    let events = Events::default();
    let dir = tempfile::tempdir().unwrap();
    // File order: b's section first; startup methods run before init,
    // runtime ones after, each in file order.
    let cfg = json!({"subsystems": [
        {"subsystem": "b", "config": [
            {"method": "b_create", "params": {"name": "B0", "size": 1}},
            {"method": "b_set_opts", "params": {"x": true}}
        ]},
        {"subsystem": "a", "config": [
            {"method": "a_set_opts"},
            {"method": "a_create", "params": {"name": "A0"}},
            {"method": "log_set_print_level", "params": {"level": "NOTICE"}}
        ]}
    ]});
    let path = write_config(dir.path(), &cfg);
    let r = start(&events, |o| o.json_config = Some(path.clone()), false);
    wait_started(&r.sock);
    let saved = ok(&r.sock, "save_config", None);
    assert_eq!(
        saved,
        json!({"subsystems": [
            {"subsystem": "a", "config": [{"method": "a_set_opts"}, {"method": "a_create", "params": {"name": "A0"}}]},
            {"subsystem": "b", "config": [{"method": "b_set_opts", "params": {"x": true}},
                                          {"method": "b_create", "params": {"name": "B0", "size": 1}}]}
        ]})
    );
    assert_eq!(stop(r).unwrap(), 0);
    let ev = events.lock().unwrap().clone();
    assert_eq!(
        ev[..6],
        [
            "rpc b_set_opts",
            "rpc a_set_opts",
            "init a",
            "init b",
            "rpc b_create",
            "rpc a_create"
        ]
    );

    // Load what was saved: the same config comes back.
    let path2 = write_config(dir.path(), &saved);
    let r = start(&Events::default(), |o| o.json_config = Some(path2), false);
    wait_started(&r.sock);
    assert_eq!(ok(&r.sock, "save_config", None), saved);
    assert_eq!(stop(r).unwrap(), 0);
}

#[test]
fn config_error_aborts_start_unless_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({"subsystems": [{"subsystem": "a", "config": [
        {"method": "a_fail", "params": {"why": 1}},
        {"method": "a_create", "params": {"name": "after"}}
    ]}]});
    let path = write_config(dir.path(), &cfg);
    let events = Events::default();
    let r = start(&events, |o| o.json_config = Some(path.clone()), false);
    let err = r.join.join().unwrap().unwrap_err().to_string();
    assert_eq!(
        err,
        "JSON config: subsystem 'a': method 'a_fail' failed: Invalid argument (code -22)"
    );
    assert!(!r.sock.exists());
    // Initialised subsystems are finished on the way out.
    assert_eq!(
        *events.lock().unwrap(),
        vec!["init a", "init b", "fini b", "fini a"]
    );

    let events = Events::default();
    let r = start(
        &events,
        |o| {
            o.json_config = Some(path.clone());
            o.json_ignore_init_errors = true;
        },
        false,
    );
    wait_started(&r.sock);
    let saved = ok(&r.sock, "framework_get_config", Some(json!({"name": "a"})));
    assert_eq!(
        saved,
        json!([{"method": "a_create", "params": {"name": "after"}}])
    );
    assert_eq!(stop(r).unwrap(), 0);

    // An unknown method stops the load even with errors ignored (as SPDK).
    let cfg = json!({"subsystems": [{"subsystem": "a", "config": [{"method": "no_such_method"}]}]});
    let path = write_config(dir.path(), &cfg);
    let r = start(
        &Events::default(),
        |o| {
            o.json_config = Some(path);
            o.json_ignore_init_errors = true;
        },
        false,
    );
    let err = r.join.join().unwrap().unwrap_err().to_string();
    assert_eq!(
        err,
        "JSON config: subsystem 'a': method 'no_such_method' was not found"
    );
}

#[test]
fn broken_config_file_fails_before_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, "{\"subsystems\": [\n  {\"subsystem\": 1}\n]}").unwrap();
    let r = start(
        &Events::default(),
        |o| o.json_config = Some(path.clone()),
        false,
    );
    let err = r.join.join().unwrap().unwrap_err().to_string();
    assert!(
        err.contains("subsystems[0]: 'subsystem' must be a string"),
        "{err}"
    );
    let missing = dir.path().join("missing.json");
    let r = start(&Events::default(), |o| o.json_config = Some(missing), false);
    let err = r.join.join().unwrap().unwrap_err().to_string();
    assert!(err.starts_with("cannot read JSON config"), "{err}");
}

#[test]
fn subsystem_init_failure_stops_the_app() {
    let events = Events::default();
    let r = start(&events, |_| {}, true);
    let err = r.join.join().unwrap().unwrap_err().to_string();
    assert_eq!(err, "subsystem 'b' init failed: toy refuses");
    assert_eq!(*events.lock().unwrap(), vec!["init a", "init b", "fini a"]);
    assert!(!r.sock.exists());
}

#[test]
fn wait_for_rpc_gates_runtime_methods() {
    let events = Events::default();
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({"subsystems": [{"subsystem": "a", "config": [
        {"method": "a_set_opts", "params": {"early": 1}},
        {"method": "a_create", "params": {"late": 2}}
    ]}]});
    let path = write_config(dir.path(), &cfg);
    let r = start(
        &events,
        |o| {
            o.wait_for_rpc = true;
            o.json_config = Some(path);
        },
        false,
    );
    assert!(wait_for_socket(&r.sock, Duration::from_secs(20)));
    // Startup methods work; runtime ones get SPDK's invalid-state error.
    ok(&r.sock, "spdk_get_version", None);
    ok(&r.sock, "a_set_opts", Some(json!({"by_rpc": 3})));
    for m in [
        "framework_get_reactors",
        "thread_get_stats",
        "save_config",
        "a_create",
    ] {
        let err = rpc(&r.sock, m, None).unwrap_err();
        assert_eq!(err.code, -1, "{m}");
        assert_eq!(
            err.message,
            "Method may only be called after framework is initialized using framework_start_init RPC."
        );
    }
    let current = ok(&r.sock, "rpc_get_methods", Some(json!({"current": true})));
    assert!(current
        .as_array()
        .unwrap()
        .contains(&json!("framework_start_init")));
    assert!(!current
        .as_array()
        .unwrap()
        .contains(&json!("framework_get_reactors")));
    assert_eq!(
        *events.lock().unwrap(),
        vec!["rpc a_set_opts", "rpc a_set_opts"]
    );

    assert_eq!(ok(&r.sock, "framework_start_init", None), json!(true));
    ok(&r.sock, "framework_wait_init", None);
    ok(&r.sock, "framework_get_reactors", None);
    let err = rpc(&r.sock, "framework_start_init", None).unwrap_err();
    assert_eq!(err.code, -1);
    assert_eq!(
        ok(&r.sock, "framework_get_config", Some(json!({"name": "a"}))),
        json!([{"method": "a_set_opts", "params": {"early": 1}},
               {"method": "a_set_opts", "params": {"by_rpc": 3}},
               {"method": "a_create", "params": {"late": 2}}])
    );
    assert_eq!(stop(r).unwrap(), 0);
}

#[test]
fn shutdown_during_wait_for_rpc() {
    let events = Events::default();
    let r = start(&events, |o| o.wait_for_rpc = true, false);
    assert!(wait_for_socket(&r.sock, Duration::from_secs(20)));
    assert_eq!(stop(r).unwrap(), 0);
    assert!(events.lock().unwrap().is_empty(), "nothing was initialised");
}

#[test]
fn stopper_returns_its_code_and_start_callback_runs_on_app_thread() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path());
    let res = App::new(o)
        .handle_signals(false)
        .rpc_methods(|reg| reg.register("hello", StateMask::RUNTIME, |_p, r| r.success(&"hi")))
        .try_run(|ctx| {
            assert_eq!(
                rspdk_thread::get_thread().map(|t| t.name().to_string()),
                Some("app_thread".to_string())
            );
            // In-process call of a method registered by the app.
            let got = Rc::new(RefCell::new(None));
            let g = got.clone();
            ctx.registry()
                .call("hello", None, move |r| *g.borrow_mut() = Some(r));
            assert_eq!(*got.borrow(), Some(Ok(json!("hi"))));
            ctx.stopper().stop(7);
        });
    assert_eq!(res.unwrap(), 7);
}

#[test]
fn dependency_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let events = Events::default();
    let e = events.clone();
    let err = App::new(opts(dir.path()))
        .handle_signals(false)
        .subsystem_with(move || Box::new(Toy::new("c", &["nope"], &e)))
        .try_run(|_| {})
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "subsystem 'c' depends on 'nope', which is not registered"
    );
    assert!(!dir.path().join("spdk.sock").exists());

    let (e1, e2) = (events.clone(), events.clone());
    let err = App::new(opts(dir.path()))
        .handle_signals(false)
        .subsystem_with(move || Box::new(Toy::new("x", &["y"], &e1)))
        .subsystem_with(move || Box::new(Toy::new("y", &["x"], &e2)))
        .try_run(|_| {})
        .unwrap_err()
        .to_string();
    assert_eq!(err, "subsystem dependency cycle among: x, y");
}

#[test]
fn bad_log_flag_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.log_flags = vec!["nonsense".into()];
    let err = App::new(o)
        .handle_signals(false)
        .try_run(|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("unknown log flag 'nonsense' (known: app,"),
        "{err}"
    );
}
