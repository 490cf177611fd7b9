//! Method registry: names, allowed states, handlers, aliases, and the
//! server's current state.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::BitOr;
use std::rc::{Rc, Weak};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, RpcError};
use crate::params::parse_params;
use crate::responder::Responder;

/// The RPC server's life-cycle state (SPDK's `SPDK_RPC_STARTUP` /
/// `SPDK_RPC_RUNTIME`). It starts in [`RpcState::Startup`]; the owner (the
/// app framework, e.g. the `framework_start_init` handler) moves it to
/// [`RpcState::Runtime`] with [`RpcRegistry::set_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcState {
    /// Before subsystems are initialized (`--wait-for-rpc` phase).
    Startup,
    /// Subsystems are initialized.
    Runtime,
}

impl RpcState {
    /// SPDK's bit value for this state (STARTUP = 0x1, RUNTIME = 0x2).
    pub const fn bits(self) -> u32 {
        match self {
            RpcState::Startup => 0x1,
            RpcState::Runtime => 0x2,
        }
    }
}

/// Set of states in which a method may be called; combine with `|`, e.g.
/// `StateMask::STARTUP | StateMask::RUNTIME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateMask(u32);

impl StateMask {
    /// Callable before framework initialization (SPDK_RPC_STARTUP).
    pub const STARTUP: StateMask = StateMask(0x1);
    /// Callable after framework initialization (SPDK_RPC_RUNTIME).
    pub const RUNTIME: StateMask = StateMask(0x2);
    /// Callable in every state.
    pub const ALL: StateMask = StateMask(0x3);

    /// The raw SPDK bit mask.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether a method with this mask may be called in `state`.
    pub const fn allows(self, state: RpcState) -> bool {
        self.0 & state.bits() == state.bits()
    }
}

impl BitOr for StateMask {
    type Output = StateMask;
    fn bitor(self, rhs: StateMask) -> StateMask {
        StateMask(self.0 | rhs.0)
    }
}

/// Shared, reference-counted method handler.
type Handler = Rc<dyn Fn(Option<Value>, Responder)>;

enum Entry {
    Method {
        states: StateMask,
        handler: Handler,
    },
    /// Deprecated alternative name of another method (SPDK's
    /// `SPDK_RPC_REGISTER_ALIAS_DEPRECATED`).
    Alias {
        target: String,
        warned: Cell<bool>,
    },
}

struct Inner {
    methods: RefCell<BTreeMap<String, Entry>>,
    state: StateHandle,
}

/// Shared handle to the registry's current [`RpcState`], separate from the
/// method table so a handler can capture it (e.g. `framework_start_init`
/// switching to runtime) without an `Rc` cycle through the table.
#[derive(Debug, Clone)]
pub struct StateHandle(Rc<Cell<RpcState>>);

impl StateHandle {
    /// The current state.
    pub fn get(&self) -> RpcState {
        self.0.get()
    }

    /// Change the current state.
    pub fn set(&self, state: RpcState) {
        self.0.set(state);
    }
}

/// Non-owning reference to an [`RpcRegistry`], for handlers that need the
/// registry itself (an owning clone captured by a handler would be an `Rc`
/// cycle and keep the table alive forever).
#[derive(Clone)]
pub struct WeakRegistry(Weak<Inner>);

impl fmt::Debug for WeakRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeakRegistry")
    }
}

impl WeakRegistry {
    /// The registry, if it still exists.
    pub fn upgrade(&self) -> Option<RpcRegistry> {
        self.0.upgrade().map(|inner| RpcRegistry { inner })
    }
}

/// The table of RPC methods plus the current [`RpcState`].
///
/// Cheap to clone (all clones share one table) and single-threaded (`!Send`):
/// the server, the JSON-config loader and handlers that need to change the
/// state or register more methods each hold a clone. `rpc_get_methods` is
/// registered by [`RpcRegistry::new`].
#[derive(Clone)]
pub struct RpcRegistry {
    inner: Rc<Inner>,
}

impl fmt::Debug for RpcRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcRegistry")
            .field("state", &self.state())
            .field("methods", &self.method_names(false, true))
            .finish()
    }
}

impl Default for RpcRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// Params of `rpc_get_methods` (SPDK: both optional, default false).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethodsParams {
    #[serde(default)]
    current: bool,
    #[serde(default)]
    include_aliases: bool,
}

/// SPDK's exact messages for a method called in the wrong state.
const ONLY_AFTER_INIT: &str =
    "Method may only be called after framework is initialized using framework_start_init RPC.";
const ONLY_BEFORE_INIT: &str = "Method may only be called before framework is initialized. \
     Use --wait-for-rpc command line parameter and then issue this RPC before the \
     framework_start_init RPC.";

impl RpcRegistry {
    /// An empty registry in [`RpcState::Startup`] holding only
    /// `rpc_get_methods`.
    pub fn new() -> Self {
        let registry = Self {
            inner: Rc::new(Inner {
                methods: RefCell::new(BTreeMap::new()),
                state: StateHandle(Rc::new(Cell::new(RpcState::Startup))),
            }),
        };
        // Weak: the handler lives inside the table it lists.
        let table = registry.downgrade();
        registry
            .register(
                "rpc_get_methods",
                StateMask::ALL,
                move |params, responder| {
                    let params: GetMethodsParams = match parse_params(params) {
                        Ok(p) => p,
                        Err(e) => return responder.error(e),
                    };
                    let Some(registry) = table.upgrade() else {
                        return responder.error(RpcError::internal_error("registry is gone"));
                    };
                    let names = registry.method_names(params.current, params.include_aliases);
                    responder.success(&names);
                },
            )
            .expect("fresh registry has no methods");
        registry
    }

    /// Register `name`, callable in the states of `states`. The handler gets
    /// the request's params (`None` if absent or null) and a [`Responder`].
    pub fn register<F>(&self, name: &str, states: StateMask, handler: F) -> Result<(), Error>
    where
        F: Fn(Option<Value>, Responder) + 'static,
    {
        let mut methods = self.inner.methods.borrow_mut();
        if methods.contains_key(name) {
            return Err(Error::DuplicateMethod {
                name: name.to_string(),
            });
        }
        methods.insert(
            name.to_string(),
            Entry::Method {
                states,
                handler: Rc::new(handler),
            },
        );
        Ok(())
    }

    /// Register `alias` as a deprecated alternative name of the registered
    /// method `target`; calling it logs a deprecation warning once.
    pub fn register_alias(&self, alias: &str, target: &str) -> Result<(), Error> {
        let mut methods = self.inner.methods.borrow_mut();
        if methods.contains_key(alias) {
            return Err(Error::DuplicateMethod {
                name: alias.to_string(),
            });
        }
        if !matches!(methods.get(target), Some(Entry::Method { .. })) {
            return Err(Error::UnknownAliasTarget {
                alias: alias.to_string(),
                target: target.to_string(),
            });
        }
        methods.insert(
            alias.to_string(),
            Entry::Alias {
                target: target.to_string(),
                warned: Cell::new(false),
            },
        );
        Ok(())
    }

    /// True if `name` is a registered method or alias.
    pub fn is_registered(&self, name: &str) -> bool {
        self.inner.methods.borrow().contains_key(name)
    }

    /// The current state.
    pub fn state(&self) -> RpcState {
        self.inner.state.get()
    }

    /// A handle to read/change the state that does not keep the method
    /// table alive; capture this in handlers instead of a registry clone.
    pub fn state_handle(&self) -> StateHandle {
        self.inner.state.clone()
    }

    /// A non-owning reference, for handlers that need the registry.
    pub fn downgrade(&self) -> WeakRegistry {
        WeakRegistry(Rc::downgrade(&self.inner))
    }

    /// Change the current state (SPDK's `spdk_rpc_set_state`).
    pub fn set_state(&self, state: RpcState) {
        self.inner.state.set(state);
    }

    /// Method names in sorted order, as `rpc_get_methods` reports them:
    /// only those callable now if `current`, aliases only if
    /// `include_aliases`.
    pub fn method_names(&self, current: bool, include_aliases: bool) -> Vec<String> {
        let state = self.state();
        let methods = self.inner.methods.borrow();
        methods
            .iter()
            .filter(|(_, entry)| match entry {
                Entry::Method { states, .. } => !current || states.allows(state),
                Entry::Alias { target, .. } => {
                    include_aliases
                        && (!current
                            || matches!(methods.get(target),
                                Some(Entry::Method { states, .. }) if states.allows(state)))
                }
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Call `method` in-process, exactly as if it had arrived on the socket
    /// (same state check, same handler); `on_complete` runs when the handler
    /// responds, which may be before this returns or later. This is how the
    /// JSON config loader applies `{"method": ..., "params": ...}` entries.
    pub fn call(
        &self,
        method: &str,
        params: Option<Value>,
        on_complete: impl FnOnce(Result<Value, RpcError>) + 'static,
    ) {
        self.dispatch(method, params, Responder::in_process(on_complete));
    }

    /// Look up `method`, check the state, and run its handler (or answer
    /// with the appropriate error).
    pub fn dispatch(&self, method: &str, params: Option<Value>, responder: Responder) {
        let resolved = {
            let methods = self.inner.methods.borrow();
            let entry = match methods.get(method) {
                Some(Entry::Alias { target, warned }) => {
                    if !warned.replace(true) {
                        tracing::warn!("RPC method {method} is deprecated.  Use {target} instead.");
                    }
                    methods.get(target.as_str())
                }
                other => other,
            };
            match entry {
                Some(Entry::Method { states, handler }) => Some((*states, Rc::clone(handler))),
                _ => None,
            }
        };
        // The table borrow is released: handlers may register methods or
        // make nested in-process calls.
        let Some((states, handler)) = resolved else {
            return responder.error(RpcError::method_not_found());
        };
        let state = self.state();
        if !states.allows(state) {
            let message = match state {
                RpcState::Startup => ONLY_AFTER_INIT,
                RpcState::Runtime => ONLY_BEFORE_INIT,
            };
            return responder.error(RpcError::invalid_state(message));
        }
        handler(params, responder);
    }
}
