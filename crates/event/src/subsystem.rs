//! Subsystems (SPDK's `struct spdk_subsystem`): named units with
//! dependencies, initialised in dependency order on the app thread and
//! finished in reverse, each able to write its part of `save_config`.
//!
//! Registration is explicit: an application passes each subsystem to
//! [`crate::App::subsystem`] (no constructor magic). A crate that provides a
//! subsystem (e.g. `bdev`) exports a type implementing [`Subsystem`]; its
//! RPC methods are registered by [`Subsystem::register_rpcs`], so a binary
//! gets both with one line.

use serde_json::Value;

use rspdk_rpc::RpcRegistry;
use rspdk_thread::ThreadHandle;

use crate::local::{park, Parked};

/// Errors ordering or running subsystems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubsystemError {
    /// Two subsystems share a name.
    #[error("subsystem '{0}' is registered twice")]
    Duplicate(String),
    /// A dependency names no registered subsystem.
    #[error("subsystem '{subsystem}' depends on '{dependency}', which is not registered")]
    UnknownDependency {
        /// The dependent subsystem.
        subsystem: String,
        /// The missing one.
        dependency: String,
    },
    /// The dependencies form a cycle.
    #[error("subsystem dependency cycle among: {}", .0.join(", "))]
    Cycle(Vec<String>),
    /// A subsystem's init or fini reported failure.
    #[error("subsystem '{subsystem}' {phase} failed: {reason}")]
    Failed {
        /// The subsystem.
        subsystem: String,
        /// `init` or `fini`.
        phase: &'static str,
        /// What it reported.
        reason: String,
    },
    /// Registering a subsystem's RPC methods failed.
    #[error("subsystem '{subsystem}': registering RPC methods: {reason}")]
    Rpc {
        /// The subsystem.
        subsystem: String,
        /// The registry's error.
        reason: String,
    },
}

/// A subsystem, as SPDK's `spdk_subsystem`. All methods are called on the
/// app thread. `init` and `fini` are asynchronous: they finish by completing
/// the [`SubsystemDone`] they are given, at once or later, from any thread.
///
/// ```
/// use rspdk_event::{Subsystem, SubsystemDone};
/// use serde_json::{json, Value};
///
/// struct Sock;
/// impl Subsystem for Sock {
///     fn name(&self) -> &str { "sock" }
///     fn init(&self, done: SubsystemDone) { done.ok() }
///     fn write_config_json(&self) -> Option<Vec<Value>> {
///         Some(vec![json!({"method": "sock_impl_set_options",
///                          "params": {"impl_name": "posix"}})])
///     }
/// }
/// ```
pub trait Subsystem: 'static {
    /// The subsystem's name, as in `framework_get_subsystems` and the
    /// `"subsystem"` key of the JSON config.
    fn name(&self) -> &str;

    /// Names of subsystems that must be initialised before this one.
    fn depends_on(&self) -> Vec<String> {
        Vec::new()
    }

    /// Registers this subsystem's RPC methods (called once, on the app
    /// thread, before any config is applied). Handlers that need the
    /// subsystem's state capture an `Rc` of it, not of the registry.
    fn register_rpcs(&self, registry: &RpcRegistry) -> Result<(), rspdk_rpc::Error> {
        let _ = registry;
        Ok(())
    }

    /// Initialises the subsystem; complete `done` when finished.
    fn init(&self, done: SubsystemDone) {
        done.ok();
    }

    /// Releases the subsystem's resources at shutdown; complete `done` when
    /// finished. Called only if `init` succeeded.
    fn fini(&self, done: SubsystemDone) {
        done.ok();
    }

    /// The subsystem's config, as the `{"method", "params"}` entries that
    /// recreate its current state (SPDK's `write_config_json`). `None`
    /// writes `"config": null`, as SPDK does for subsystems without one.
    fn write_config_json(&self) -> Option<Vec<Value>> {
        None
    }
}

type Continuation = Box<dyn FnOnce(Result<(), String>)>;

/// Completion of a subsystem's `init` or `fini`. `Send`: complete it from
/// any thread; the framework continues on the app thread (always in a
/// later message, never inline). Dropping it uncompleted counts as a
/// failure, so a forgotten completion cannot hang start-up silently.
pub struct SubsystemDone {
    app_thread: ThreadHandle,
    cont: Option<Parked<Continuation>>,
    what: String,
}

impl std::fmt::Debug for SubsystemDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubsystemDone({})", self.what)
    }
}

impl SubsystemDone {
    /// Made on the app thread; `cont` runs there with the result.
    pub(crate) fn new(
        app_thread: ThreadHandle,
        what: String,
        cont: impl FnOnce(Result<(), String>) + 'static,
    ) -> SubsystemDone {
        SubsystemDone {
            app_thread,
            cont: Some(park(Box::new(cont) as Continuation)),
            what,
        }
    }

    /// Success.
    pub fn ok(self) {
        self.complete(Ok(()));
    }

    /// Failure, with a reason for the log and the exit message.
    pub fn fail(self, reason: impl Into<String>) {
        self.complete(Err(reason.into()));
    }

    /// Completes with `result`.
    pub fn complete(mut self, result: Result<(), String>) {
        self.send(result);
    }

    fn send(&mut self, result: Result<(), String>) {
        let Some(cont) = self.cont.take() else {
            return;
        };
        let what = self.what.clone();
        if self
            .app_thread
            .send_msg(move || {
                if let Some(cont) = cont.take() {
                    cont(result);
                }
            })
            .is_err()
        {
            tracing::warn!("{what}: completed after the app thread exited");
        }
    }
}

impl Drop for SubsystemDone {
    fn drop(&mut self) {
        if self.cont.is_some() {
            let what = self.what.clone();
            self.send(Err(format!(
                "{what} dropped its completion without completing it"
            )));
        }
    }
}

/// Orders subsystems so each comes after its dependencies, keeping
/// registration order where dependencies allow (as SPDK's sort). Returns
/// indexes into `subsystems`.
pub(crate) fn init_order(subsystems: &[Box<dyn Subsystem>]) -> Result<Vec<usize>, SubsystemError> {
    let names: Vec<&str> = subsystems.iter().map(|s| s.name()).collect();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(SubsystemError::Duplicate(n.to_string()));
        }
    }
    let deps: Vec<Vec<usize>> = subsystems
        .iter()
        .map(|s| {
            s.depends_on()
                .iter()
                .map(|d| {
                    names.iter().position(|n| n == d).ok_or_else(|| {
                        SubsystemError::UnknownDependency {
                            subsystem: s.name().to_string(),
                            dependency: d.clone(),
                        }
                    })
                })
                .collect()
        })
        .collect::<Result<_, _>>()?;
    let mut placed = vec![false; subsystems.len()];
    let mut order = Vec::with_capacity(subsystems.len());
    while order.len() < subsystems.len() {
        let next =
            (0..subsystems.len()).find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]));
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => {
                let left = (0..subsystems.len())
                    .filter(|&i| !placed[i])
                    .map(|i| names[i].to_string())
                    .collect();
                return Err(SubsystemError::Cycle(left));
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S(&'static str, &'static [&'static str]);
    impl Subsystem for S {
        fn name(&self) -> &str {
            self.0
        }
        fn depends_on(&self) -> Vec<String> {
            self.1.iter().map(|s| s.to_string()).collect()
        }
    }

    fn order(list: Vec<S>) -> Result<Vec<&'static str>, SubsystemError> {
        let names: Vec<&'static str> = list.iter().map(|s| s.0).collect();
        let boxed: Vec<Box<dyn Subsystem>> = list
            .into_iter()
            .map(|s| Box::new(s) as Box<dyn Subsystem>)
            .collect();
        Ok(init_order(&boxed)?.into_iter().map(|i| names[i]).collect())
    }

    #[test]
    fn dependencies_first_registration_order_kept() {
        let o = order(vec![
            S("nvmf", &["bdev", "sock"]),
            S("bdev", &["accel"]),
            S("sock", &[]),
            S("accel", &[]),
        ])
        .unwrap();
        assert_eq!(o, vec!["sock", "accel", "bdev", "nvmf"]);
    }

    #[test]
    fn unknown_dependency_and_cycle_are_errors() {
        let e = order(vec![S("bdev", &["accel"])]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "subsystem 'bdev' depends on 'accel', which is not registered"
        );
        let e = order(vec![S("a", &["b"]), S("b", &["a"]), S("c", &[])]).unwrap_err();
        assert_eq!(e.to_string(), "subsystem dependency cycle among: a, b");
        let e = order(vec![S("a", &[]), S("a", &[])]).unwrap_err();
        assert_eq!(e, SubsystemError::Duplicate("a".into()));
    }
}
