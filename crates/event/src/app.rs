//! The application framework (SPDK's `spdk_app_start` / `spdk_app_stop`).
//!
//! [`App::run`] does, in order:
//!
//! 1. logging (`-L` flags, see [`crate::log`]);
//! 2. the JSON config (`-c`) is read and checked, so a broken file fails
//!    before anything starts;
//! 3. memory: hugepages are reserved when too few are free and the process
//!    is root, otherwise it falls back to `--no-huge` with a warning
//!    ([`prepare_memory`]); then the env is initialised;
//! 4. SIGINT/SIGTERM are blocked and read from a signalfd by the calling
//!    thread, which then starts one reactor per core of `-m` and waits;
//! 5. on the main core an `app_thread` is created: it registers the
//!    framework's RPC methods, the app's, and each subsystem's, listens on
//!    `-r` and polls the server every 4 ms (SPDK's RPC poll period);
//! 6. the startup pass of the config runs; with `--wait-for-rpc` the app
//!    then waits for `framework_start_init`;
//! 7. subsystems are initialised in dependency order, the RPC state becomes
//!    runtime, the runtime pass of the config runs;
//! 8. `framework_wait_init` callers are answered and the start callback
//!    runs on the app thread.
//!
//! Shutdown (SIGINT/SIGTERM, `spdk_kill_instance`, [`AppStopper::stop`], or
//! a failed start): subsystems that finished init are finished in reverse,
//! the RPC server is closed (its socket file removed), every thread is asked
//! to exit and drained, reactors are joined. A second signal during shutdown
//! exits at once with status 128 + signal number.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rspdk_env::sys::human_size;
use rspdk_env::EnvOpts;
use rspdk_rpc::{PollStatus, Responder, RpcError, RpcRegistry, RpcServer, RpcState, ServerConfig};
use rspdk_thread::{Epoll, EventFd, Poller, PollerStatus, ThreadHandle};
use serde_json::Value;

use crate::config::{ConfigError, ConfigLoader, JsonConfig};
use crate::log::{init_logging, LogError};
use crate::opts::AppOpts;
use crate::reactor::{ReactorError, ReactorOpts, ReactorSet, ReactorSetHandle};
use crate::signals::{self, SignalFd};
use crate::subsystem::{init_order, Subsystem, SubsystemDone, SubsystemError};

/// How often the app thread polls the RPC server (SPDK: 4 ms).
pub const RPC_POLL_PERIOD_US: u64 = 4000;

/// Hugepages `rspdk_tgt` wants free when `-s` is 0 (grow on demand).
const AUTO_MIN_FREE: usize = 64 << 20;
/// What it reserves when it must reserve with `-s 0`.
const AUTO_RESERVE: usize = 1 << 30;

/// Errors that stop an app from starting.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A `-L` flag or the log filter is wrong.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The JSON config could not be read or applied.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Subsystem registration, order, init or fini failed.
    #[error(transparent)]
    Subsystem(#[from] SubsystemError),
    /// The env could not be initialised.
    #[error("env: {0}")]
    Env(String),
    /// Reactors could not be started.
    #[error(transparent)]
    Reactor(#[from] ReactorError),
    /// The RPC server could not listen, or a method could not be registered.
    #[error("RPC: {0}")]
    Rpc(String),
    /// Signal handling could not be set up.
    #[error("signals: {0}")]
    Signals(std::io::Error),
    /// The trace file or `-e`.
    #[error("trace: {0}")]
    Trace(String),
}

type StartFn = Box<dyn FnOnce(&AppContext) + Send>;
type SubsystemFactory = Box<dyn FnOnce() -> Box<dyn Subsystem> + Send>;
type RpcFn = Box<dyn FnOnce(&RpcRegistry) -> Result<(), rspdk_rpc::Error> + Send>;

/// Builder and runner of an rspdk application.
///
/// ```no_run
/// use rspdk_event::{App, AppOpts};
/// use rspdk_rpc::StateMask;
///
/// let code = App::new(AppOpts::default())
///     .name("my_tgt")
///     .rpc_methods(|reg| reg.register("hello", StateMask::RUNTIME, |_p, r| r.success(&"hi")))
///     .run(|ctx| tracing::info!("started, RPC on {}", ctx.rpc_socket().display()));
/// std::process::exit(code);
/// ```
pub struct App {
    opts: AppOpts,
    name: String,
    subsystems: Vec<SubsystemFactory>,
    rpc_fns: Vec<RpcFn>,
    default_config: Option<Value>,
    handle_signals: bool,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("name", &self.name)
            .field("opts", &self.opts)
            .field("subsystems", &self.subsystems.len())
            .finish()
    }
}

impl App {
    /// An app with these options, no subsystems, named `rspdk`.
    pub fn new(opts: AppOpts) -> App {
        App {
            opts,
            name: "rspdk".into(),
            subsystems: Vec::new(),
            rpc_fns: Vec::new(),
            default_config: None,
            handle_signals: true,
        }
    }

    /// The app's name (logs, env).
    pub fn name(mut self, name: &str) -> App {
        self.name = name.to_string();
        self
    }

    /// Adds a subsystem. It is moved to the app thread, so it must be
    /// `Send`; for one that is not, use [`subsystem_with`](Self::subsystem_with).
    pub fn subsystem<S: Subsystem + Send>(self, subsystem: S) -> App {
        self.subsystem_with(move || Box::new(subsystem))
    }

    /// Adds a subsystem built on the app thread by `make` (for subsystems
    /// holding `Rc` state shared with their RPC handlers).
    pub fn subsystem_with(
        mut self,
        make: impl FnOnce() -> Box<dyn Subsystem> + Send + 'static,
    ) -> App {
        self.subsystems.push(Box::new(make));
        self
    }

    /// Registers RPC methods that belong to no subsystem; `register` runs
    /// on the app thread before any config is applied.
    pub fn rpc_methods(
        mut self,
        register: impl FnOnce(&RpcRegistry) -> Result<(), rspdk_rpc::Error> + Send + 'static,
    ) -> App {
        self.rpc_fns.push(Box::new(register));
        self
    }

    /// A config applied when no `-c` is given (the binary's embedded
    /// default).
    pub fn default_config(mut self, config: Value) -> App {
        self.default_config = Some(config);
        self
    }

    /// Whether [`run`](Self::run) takes over SIGINT/SIGTERM (default true).
    pub fn handle_signals(mut self, yes: bool) -> App {
        self.handle_signals = yes;
        self
    }

    /// Runs the app until it is shut down; returns the process exit code
    /// (0 after a signal or `spdk_kill_instance`, the code given to
    /// [`AppStopper::stop`], 1 if start-up failed — the reason is logged).
    pub fn run(self, on_started: impl FnOnce(&AppContext) + Send + 'static) -> i32 {
        match self.try_run(on_started) {
            Ok(code) => code,
            Err(e) => {
                tracing::error!("{e}");
                // Also on stderr directly: logging may be what failed.
                if matches!(e, AppError::Log(_)) {
                    eprintln!("error: {e}");
                }
                1
            }
        }
    }

    /// Like [`run`](Self::run), returning why start-up failed.
    pub fn try_run(
        self,
        on_started: impl FnOnce(&AppContext) + Send + 'static,
    ) -> Result<i32, AppError> {
        let opts = self.opts.clone();
        init_logging(&opts.log_flags)?;
        init_trace(&opts, &self.name)?;
        let config = match (&opts.json_config, &self.default_config) {
            (Some(path), _) => Some(JsonConfig::from_file(path)?),
            (None, Some(v)) => Some(JsonConfig::from_value(v, "(embedded default)")?),
            (None, None) => None,
        };

        if rspdk_env::env().is_none() {
            let env_opts = prepare_memory(&opts, &self.name)?;
            rspdk_env::init(&env_opts).map_err(|e| AppError::Env(e.to_string()))?;
        } else {
            tracing::debug!("env already initialised in this process; reusing it");
        }

        let signal_fd = if self.handle_signals {
            Some(
                SignalFd::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
                    .map_err(AppError::Signals)?,
            )
        } else {
            None
        };
        let shared = Arc::new(AppShared {
            wake: EventFd::new().map_err(AppError::Signals)?,
            finished: Mutex::new(None),
            main_tid: signals::gettid(),
            handle_signals: self.handle_signals,
            socket_path: opts.rpc_socket.clone(),
        });

        let mut ropts = ReactorOpts::new(opts.cpumask.clone());
        ropts.interrupt_mode = opts.interrupt_mode;
        let reactors = ReactorSet::start(ropts)?;
        let rh = reactors.handle();
        tracing::info!(
            app = %self.name,
            cores = ?rh.cores(),
            interrupt_mode = opts.interrupt_mode,
            "reactors started"
        );

        let id = next_app_id();
        let boot = Boot {
            id,
            opts,
            shared: shared.clone(),
            reactors: rh.clone(),
            subsystems: self.subsystems,
            rpc_fns: self.rpc_fns,
            config,
            on_started: Box::new(on_started),
        };
        let app_thread = rh.spawn_thread_on(rh.main_core(), "app_thread", move || {
            let Some(me) = rspdk_thread::get_thread() else {
                return;
            };
            AppInner::boot(boot, me.handle());
        });
        let app_thread = match app_thread {
            Ok(t) => t,
            Err(e) => {
                reactors.stop();
                return Err(e.into());
            }
        };

        let result = wait_until_finished(&shared, signal_fd.as_ref(), &app_thread, id);
        reactors.stop();
        drop(signal_fd);
        // A trace file with events stays for rspdk_trace; an empty one goes.
        rspdk_trace::cleanup();
        result
    }
}

/// Creates the trace file (one ring per core id up to the highest reactor
/// core) and applies `-e`.
fn init_trace(opts: &AppOpts, app_name: &str) -> Result<(), AppError> {
    let rings = opts.cpumask.iter().max().map_or(1, |c| c + 1);
    let trace_opts = rspdk_trace::TraceOpts {
        app_name: app_name.to_string(),
        shm_id: opts.shm_id,
        rings,
        entries: opts.num_trace_entries,
    };
    // The file is made when a tracepoint is first enabled (here by -e, or
    // later by an RPC): an app that never traces leaves no file behind.
    rspdk_trace::configure(trace_opts);
    if let Some(spec) = &opts.tpoint_group {
        rspdk_trace::apply_spec(spec).map_err(|e| AppError::Trace(format!("-e: {e}")))?;
        let path = rspdk_trace::ensure_file().map_err(|e| AppError::Trace(e.to_string()))?;
        tracing::info!(path = %path.display(), "tracepoints enabled: -e {spec}");
    }
    Ok(())
}

/// What the main thread shares with the app thread.
struct AppShared {
    /// Written by the app thread when it has finished.
    wake: EventFd,
    finished: Mutex<Option<Result<i32, AppError>>>,
    /// The thread in `App::try_run`, which reads the signalfd.
    main_tid: i32,
    handle_signals: bool,
    socket_path: PathBuf,
}

fn wait_until_finished(
    shared: &AppShared,
    signal_fd: Option<&SignalFd>,
    app_thread: &ThreadHandle,
    app_id: u64,
) -> Result<i32, AppError> {
    const WAKE: u64 = 1;
    const SIGNAL: u64 = 2;
    let epoll = Epoll::new().map_err(AppError::Signals)?;
    epoll
        .add(shared.wake.as_raw_fd(), WAKE)
        .map_err(AppError::Signals)?;
    if let Some(s) = signal_fd {
        epoll
            .add(s.as_raw_fd(), SIGNAL)
            .map_err(AppError::Signals)?;
    }
    let mut signalled = false;
    let mut tokens = [0u64; 4];
    loop {
        if let Some(result) = lock(&shared.finished).take() {
            return result;
        }
        // The timeout only guards against a lost wake-up; it costs nothing
        // measurable when idle.
        let _ = epoll.wait(&mut tokens, Some(Duration::from_millis(500)));
        shared.wake.drain();
        while let Some(sig) = signal_fd.and_then(SignalFd::read) {
            if signalled {
                let _ = std::fs::remove_file(&shared.socket_path);
                eprintln!(
                    "{}: second signal during shutdown: exiting now",
                    signals::signal_name(sig)
                );
                std::process::exit(128 + sig);
            }
            signalled = true;
            tracing::info!(
                "{} received: shutting down (send it again to exit at once)",
                signals::signal_name(sig)
            );
            let _ = post(app_thread, app_id, |app| app.shutdown(0));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`prepare_memory`] decided about hugepages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryPlan {
    /// Enough are free (or the user chose the backing): use them.
    UseAsIs,
    /// Reserve this many more pages (root only), then use hugepages.
    Reserve(u64),
    /// Fall back to ordinary pages (`--no-huge`).
    NoHuge,
}

/// The hugepage decision for `-s` (`mem_size_mb`, 0 = grow on demand)
/// given the free pages of `page_size` and whether the process is root:
/// the app wants `-s` MiB free (64 MiB with `-s 0`); if fewer are free, root
/// reserves what is missing (topping up to 1 GiB free with `-s 0`), anyone
/// else falls back to ordinary pages.
pub fn plan_memory(
    mem_size_mb: usize,
    page_size: usize,
    free_pages: u64,
    root: bool,
) -> MemoryPlan {
    let wanted = if mem_size_mb > 0 {
        mem_size_mb << 20
    } else {
        AUTO_MIN_FREE
    };
    let free = free_pages as usize * page_size;
    if free >= wanted {
        return MemoryPlan::UseAsIs;
    }
    if !root {
        return MemoryPlan::NoHuge;
    }
    let target = if mem_size_mb > 0 {
        wanted
    } else {
        AUTO_RESERVE
    };
    MemoryPlan::Reserve((target - free).div_ceil(page_size) as u64)
}

/// Fills the env options from the app options, making sure hugepage memory
/// is there (see [`plan_memory`]): a root process reserves missing 2 MiB
/// hugepages, others fall back to `--no-huge` with a one-line warning.
/// `--no-huge` and `--huge-dir` are taken as given.
pub fn prepare_memory(opts: &AppOpts, name: &str) -> Result<EnvOpts, AppError> {
    // An impossible size is refused before any hugepage is reserved.
    rspdk_env::hugepages::check_mem_size(opts.mem_size_mb)
        .map_err(|e| AppError::Env(e.to_string()))?;
    let mut env = EnvOpts {
        name: name.to_string(),
        mem_size_mb: opts.mem_size_mb,
        huge_dir: opts.huge_dir.clone(),
        no_huge: opts.no_huge,
        iova_mode: opts.iova_mode,
        ..EnvOpts::default()
    };
    if env.no_huge || env.huge_dir.is_some() {
        return Ok(env);
    }
    let page = env.huge_page_size;
    let pool = rspdk_env::hugepages::pool(None, page);
    let free_pages = pool.as_ref().map_or(0, |p| p.free);
    let root = signals::is_root();
    let plan = plan_memory(opts.mem_size_mb, page, free_pages, root);
    let mut why = if root {
        String::new()
    } else {
        " and not root, so none can be reserved".to_string()
    };
    match (plan, &pool) {
        (MemoryPlan::UseAsIs, _) => return Ok(env),
        (MemoryPlan::Reserve(add), Some(p)) => {
            match rspdk_env::hugepages::set_reserved(None, page, p.total + add) {
                Ok(total) => {
                    let now_free = rspdk_env::hugepages::free_pages(page).unwrap_or(0);
                    tracing::info!(
                        "reserved {} more {} hugepages ({} in all, {} free)",
                        total.saturating_sub(p.total),
                        human_size(page),
                        total,
                        human_size(now_free as usize * page)
                    );
                    if plan_memory(opts.mem_size_mb, page, now_free, false) == MemoryPlan::UseAsIs {
                        return Ok(env);
                    }
                    // Not enough even so: give back what was reserved for
                    // nothing, rather than keep it from the rest of the
                    // machine.
                    match rspdk_env::hugepages::set_reserved(None, page, p.total) {
                        Ok(back) => tracing::info!(
                            "released the {} hugepages reserved for nothing ({back} in all again)",
                            total.saturating_sub(back)
                        ),
                        Err(e) => {
                            tracing::warn!("could not release the hugepages just reserved: {e}")
                        }
                    }
                    why = " even after reserving (memory is fragmented or short)".into();
                }
                Err(e) => why = format!(" and reserving failed: {e}"),
            }
        }
        (MemoryPlan::Reserve(_), None) => why = " (this kernel has no such pool)".into(),
        (MemoryPlan::NoHuge, _) => {}
    }
    tracing::warn!(
        "too few free {} hugepages ({} free){why}: running on ordinary 4 KiB pages (--no-huge): \
         RPC, malloc bdevs and TCP targets work, but DMA buffers are not physically \
         contiguous, so user-space PCI drivers (NVMe) cannot use them",
        human_size(page),
        human_size(free_pages as usize * page),
    );
    env.no_huge = true;
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = 2 << 20;

    #[test]
    fn memory_plan() {
        // -s 0: 64 MiB free is enough; otherwise root tops up to 1 GiB.
        assert_eq!(plan_memory(0, P, 32, false), MemoryPlan::UseAsIs);
        assert_eq!(plan_memory(0, P, 31, false), MemoryPlan::NoHuge);
        assert_eq!(plan_memory(0, P, 0, true), MemoryPlan::Reserve(512));
        assert_eq!(plan_memory(0, P, 12, true), MemoryPlan::Reserve(500));
        // -s N: N MiB free, reserving exactly what is missing.
        assert_eq!(plan_memory(1024, P, 512, false), MemoryPlan::UseAsIs);
        assert_eq!(plan_memory(1024, P, 500, true), MemoryPlan::Reserve(12));
        assert_eq!(plan_memory(1025, P, 0, true), MemoryPlan::Reserve(513));
        assert_eq!(plan_memory(4096, P, 0, false), MemoryPlan::NoHuge);
    }
}

// ---------------------------------------------------------------------------
// The app thread.

static NEXT_APP_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_app_id() -> u64 {
    NEXT_APP_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

thread_local! {
    /// Apps whose app thread runs on this OS thread, by app id: the owner
    /// of each app's state until it has closed. (The app thread's cpumask
    /// is the main core alone, so it never moves.)
    static APPS: RefCell<HashMap<u64, Rc<AppInner>>> = RefCell::new(HashMap::new());
}

/// Runs `f` with app `id` on its app thread, in a later message.
fn post(
    thread: &ThreadHandle,
    id: u64,
    f: impl FnOnce(&Rc<AppInner>) + Send + 'static,
) -> Result<(), rspdk_thread::SendError> {
    thread.send_msg(move || {
        let app = APPS.with(|a| a.borrow().get(&id).cloned());
        if let Some(app) = app {
            f(&app);
        }
    })
}

struct Boot {
    id: u64,
    opts: AppOpts,
    shared: Arc<AppShared>,
    reactors: ReactorSetHandle,
    subsystems: Vec<SubsystemFactory>,
    rpc_fns: Vec<RpcFn>,
    config: Option<JsonConfig>,
    on_started: StartFn,
}

/// Where the app is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Registering methods, listening, startup config pass.
    Booting,
    /// `--wait-for-rpc`: waiting for `framework_start_init`.
    WaitingForRpc,
    /// Subsystems initialising, runtime config pass.
    Initializing,
    /// Started.
    Running,
    /// Finishing subsystems, closing.
    ShuttingDown,
}

/// The app thread's state. Only touched on the app thread.
pub(crate) struct AppInner {
    pub(crate) id: u64,
    shared: Arc<AppShared>,
    pub(crate) thread: ThreadHandle,
    pub(crate) reactors: ReactorSetHandle,
    pub(crate) registry: RpcRegistry,
    server: RefCell<Option<RpcServer>>,
    poller: RefCell<Option<Poller>>,
    /// In init order.
    pub(crate) subsystems: Vec<Box<dyn Subsystem>>,
    /// How many of `subsystems` (a prefix) finished init.
    initialized: Cell<usize>,
    pub(crate) phase: Cell<Phase>,
    config: Option<Rc<ConfigLoader>>,
    opts: AppOpts,
    wait_init: RefCell<Vec<Responder>>,
    start_init: RefCell<Option<Responder>>,
    on_started: RefCell<Option<StartFn>>,
    /// A shutdown requested while an asynchronous step was in flight.
    pending_stop: Cell<Option<i32>>,
}

impl AppInner {
    fn boot(boot: Boot, thread: ThreadHandle) {
        let Boot {
            id,
            opts,
            shared,
            reactors,
            subsystems,
            rpc_fns,
            config,
            on_started,
        } = boot;
        let registry = RpcRegistry::new();
        let built: Vec<Box<dyn Subsystem>> = subsystems.into_iter().map(|f| f()).collect();
        let names: Vec<&str> = built.iter().map(|s| s.name()).collect();
        let unknown_subsystem = config
            .as_ref()
            .and_then(|c| c.check_subsystems(&names).err());
        let (ordered, order_err) = match init_order(&built) {
            Ok(order) => {
                let mut slots: Vec<Option<Box<dyn Subsystem>>> =
                    built.into_iter().map(Some).collect();
                let ordered = order.iter().filter_map(|&i| slots[i].take()).collect();
                (ordered, None)
            }
            Err(e) => (Vec::new(), Some(e)),
        };
        let app = Rc::new(AppInner {
            id,
            shared,
            thread,
            reactors,
            registry: registry.clone(),
            server: RefCell::new(None),
            poller: RefCell::new(None),
            subsystems: ordered,
            initialized: Cell::new(0),
            phase: Cell::new(Phase::Booting),
            config: config.map(|c| ConfigLoader::new(c, !opts.json_ignore_init_errors)),
            opts,
            wait_init: RefCell::new(Vec::new()),
            start_init: RefCell::new(None),
            on_started: RefCell::new(Some(on_started)),
            pending_stop: Cell::new(None),
        });
        APPS.with(|a| a.borrow_mut().insert(id, app.clone()));
        if let Some(e) = order_err {
            return app.fail(e.into());
        }
        if let Some(e) = unknown_subsystem {
            if !app.opts.json_ignore_init_errors {
                return app.fail(e.into());
            }
            tracing::warn!("{e} (ignored: --json-ignore-init-errors)");
        }
        if let Err(e) = app.register_methods(rpc_fns) {
            return app.fail(e);
        }
        let server = match RpcServer::listen_unix(
            app.opts.rpc_socket.clone(),
            registry,
            ServerConfig::default(),
        ) {
            Ok(s) => s,
            Err(e) => return app.fail(AppError::Rpc(e.to_string())),
        };
        tracing::info!("RPC server listening on {}", app.opts.rpc_socket.display());
        *app.server.borrow_mut() = Some(server);
        let weak = Rc::downgrade(&app);
        let poller =
            rspdk_thread::poller_register("rpc_subsystem_poll", RPC_POLL_PERIOD_US, move |_| {
                let Some(app) = weak.upgrade() else {
                    return PollerStatus::Idle;
                };
                let mut server = app.server.borrow_mut();
                match server.as_mut().map(RpcServer::poll) {
                    Some(PollStatus::Busy) => PollerStatus::Busy,
                    _ => PollerStatus::Idle,
                }
            });
        match poller {
            Ok(p) => *app.poller.borrow_mut() = Some(p),
            Err(e) => return app.fail(AppError::Rpc(format!("RPC poller: {e}"))),
        }

        // Startup pass of the config, then init (or wait for the RPC).
        let app2 = app.clone();
        app.config_pass(move |res| {
            if let Err(e) = res {
                return app2.fail(e.into());
            }
            if app2.take_pending_stop() {
                return;
            }
            if app2.opts.wait_for_rpc {
                tracing::info!("--wait-for-rpc: waiting for framework_start_init");
                app2.phase.set(Phase::WaitingForRpc);
            } else {
                app2.start_init();
            }
        });
    }

    fn register_methods(self: &Rc<Self>, rpc_fns: Vec<RpcFn>) -> Result<(), AppError> {
        crate::rpc_methods::register(&self.registry, Rc::downgrade(self))
            .map_err(|e| AppError::Rpc(e.to_string()))?;
        for f in rpc_fns {
            f(&self.registry).map_err(|e| AppError::Rpc(e.to_string()))?;
        }
        for s in &self.subsystems {
            s.register_rpcs(&self.registry)
                .map_err(|e| SubsystemError::Rpc {
                    subsystem: s.name().to_string(),
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }

    fn config_pass(self: &Rc<Self>, done: impl FnOnce(Result<(), ConfigError>) + 'static) {
        match &self.config {
            Some(loader) => loader.run_pass(&self.registry, done),
            None => done(Ok(())),
        }
    }

    /// If a stop was requested during an asynchronous step, shut down now.
    fn take_pending_stop(self: &Rc<Self>) -> bool {
        match self.pending_stop.take() {
            Some(code) => {
                self.teardown(Ok(code));
                true
            }
            None => false,
        }
    }

    /// `framework_start_init` (or start without `--wait-for-rpc`).
    pub(crate) fn start_init(self: &Rc<Self>) {
        self.phase.set(Phase::Initializing);
        self.init_next();
    }

    fn init_next(self: &Rc<Self>) {
        if self.take_pending_stop() {
            return;
        }
        let i = self.initialized.get();
        let Some(s) = self.subsystems.get(i) else {
            return self.subsystems_ready();
        };
        tracing::debug!(target: "rspdk_event::subsystem", "init {}", s.name());
        let weak = Rc::downgrade(self);
        let name = s.name().to_string();
        let done = SubsystemDone::new(
            self.thread.clone(),
            format!("subsystem '{name}' init"),
            move |res| {
                let Some(app) = weak.upgrade() else { return };
                match res {
                    Ok(()) => {
                        app.initialized.set(i + 1);
                        app.init_next();
                    }
                    Err(reason) => app.fail(
                        SubsystemError::Failed {
                            subsystem: name,
                            phase: "init",
                            reason,
                        }
                        .into(),
                    ),
                }
            },
        );
        s.init(done);
    }

    fn subsystems_ready(self: &Rc<Self>) {
        self.registry.set_state(RpcState::Runtime);
        let app = self.clone();
        self.config_pass(move |res| {
            if let Err(e) = res {
                return app.fail(e.into());
            }
            if app.take_pending_stop() {
                return;
            }
            app.phase.set(Phase::Running);
            tracing::info!("app started");
            if let Some(r) = app.start_init.borrow_mut().take() {
                r.success(&true);
            }
            for r in app.wait_init.borrow_mut().drain(..) {
                r.success(&true);
            }
            if let Some(f) = app.on_started.borrow_mut().take() {
                f(&app.context());
            }
        });
    }

    /// `framework_wait_init`: answered now if started, else when started.
    pub(crate) fn wait_init(&self, r: Responder) {
        match self.phase.get() {
            Phase::Running => r.success(&true),
            Phase::ShuttingDown => r.error(RpcError::internal_error("the app is shutting down")),
            _ => self.wait_init.borrow_mut().push(r),
        }
    }

    /// Keeps the `framework_start_init` responder for when init is done.
    pub(crate) fn set_start_init_responder(&self, r: Responder) {
        *self.start_init.borrow_mut() = Some(r);
    }

    fn context(self: &Rc<Self>) -> AppContext {
        AppContext {
            registry: self.registry.clone(),
            reactors: self.reactors.clone(),
            thread: self.thread.clone(),
            rpc_socket: self.opts.rpc_socket.clone(),
            stopper: self.stopper(),
        }
    }

    pub(crate) fn stopper(&self) -> AppStopper {
        AppStopper {
            thread: self.thread.clone(),
            id: self.id,
        }
    }

    /// The main thread's tid, for thread-directed signals.
    pub(crate) fn signal_target(&self) -> Option<i32> {
        self.shared.handle_signals.then_some(self.shared.main_tid)
    }

    fn fail(self: &Rc<Self>, err: AppError) {
        tracing::error!("start-up failed: {err}");
        if let Some(r) = self.start_init.borrow_mut().take() {
            r.error(RpcError::internal_error(err.to_string()));
        }
        self.teardown(Err(err));
    }

    /// A stop request: now if nothing asynchronous is in flight, else when
    /// the current step completes.
    pub(crate) fn shutdown(self: &Rc<Self>, code: i32) {
        match self.phase.get() {
            Phase::Running | Phase::WaitingForRpc => self.teardown(Ok(code)),
            Phase::Booting | Phase::Initializing => {
                if self.pending_stop.get().is_none() {
                    self.pending_stop.set(Some(code));
                }
            }
            Phase::ShuttingDown => {}
        }
    }

    fn teardown(self: &Rc<Self>, result: Result<i32, AppError>) {
        if self.phase.replace(Phase::ShuttingDown) == Phase::ShuttingDown {
            return;
        }
        self.fini_next(result);
    }

    fn fini_next(self: &Rc<Self>, result: Result<i32, AppError>) {
        let n = self.initialized.get();
        if n == 0 {
            return self.close(result);
        }
        let s = &self.subsystems[n - 1];
        tracing::debug!(target: "rspdk_event::subsystem", "fini {}", s.name());
        let weak = Rc::downgrade(self);
        let name = s.name().to_string();
        let done = SubsystemDone::new(
            self.thread.clone(),
            format!("subsystem '{name}' fini"),
            move |res| {
                let Some(app) = weak.upgrade() else { return };
                if let Err(reason) = res {
                    tracing::error!("subsystem '{name}' fini failed: {reason}");
                }
                app.initialized.set(n - 1);
                app.fini_next(result);
            },
        );
        s.fini(done);
    }

    fn close(self: &Rc<Self>, result: Result<i32, AppError>) {
        if let Some(p) = self.poller.borrow_mut().take() {
            p.unregister();
        }
        let server = self.server.borrow_mut().take();
        if let Some(mut server) = server {
            // Flush answers already given (spdk_kill_instance's `true`).
            for _ in 0..3 {
                if server.poll() == PollStatus::Idle {
                    break;
                }
            }
            drop(server);
        }
        for r in self.wait_init.borrow_mut().drain(..) {
            r.error(RpcError::internal_error("the app is shutting down"));
        }
        APPS.with(|a| a.borrow_mut().remove(&self.id));
        *lock(&self.shared.finished) = Some(result);
        self.shared.wake.notify();
    }
}

/// What the start callback gets, on the app thread.
pub struct AppContext {
    registry: RpcRegistry,
    reactors: ReactorSetHandle,
    thread: ThreadHandle,
    rpc_socket: PathBuf,
    stopper: AppStopper,
}

impl std::fmt::Debug for AppContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppContext")
            .field("rpc_socket", &self.rpc_socket)
            .finish()
    }
}

impl AppContext {
    /// The RPC registry (register more methods, call methods in-process).
    pub fn registry(&self) -> &RpcRegistry {
        &self.registry
    }

    /// The reactors (spawn threads, read stats).
    pub fn reactors(&self) -> &ReactorSetHandle {
        &self.reactors
    }

    /// The app thread.
    pub fn app_thread(&self) -> &ThreadHandle {
        &self.thread
    }

    /// The RPC socket path.
    pub fn rpc_socket(&self) -> &std::path::Path {
        &self.rpc_socket
    }

    /// A `Send` handle that stops the app.
    pub fn stopper(&self) -> AppStopper {
        self.stopper.clone()
    }
}

/// Stops an app from anywhere (SPDK's `spdk_app_stop`).
#[derive(Clone, Debug)]
pub struct AppStopper {
    thread: ThreadHandle,
    id: u64,
}

impl AppStopper {
    /// Shuts the app down; [`App::run`] then returns `code`.
    pub fn stop(&self, code: i32) {
        let _ = post(&self.thread, self.id, move |app| app.shutdown(code));
    }
}
