//! Notifications (SPDK: lib/notify): named event types that layers register
//! and send (the bdev layer's `bdev_register` and `bdev_unregister`, with
//! the bdev's name as context), kept in a ring of the last 1,024 that
//! `notify_get_notifications` reads by id, so a client polls for what is
//! new since the last id it saw.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{json, Value};

use rspdk_rpc::{expect_no_params, parse_params, RpcRegistry, StateMask};

/// Events kept (SPDK's `SPDK_NOTIFY_MAX_EVENTS`).
pub const MAX_EVENTS: usize = 1024;

struct Notify {
    types: Vec<String>,
    /// (id, type, ctx), oldest first.
    events: VecDeque<(u64, String, String)>,
    next_id: u64,
}

static NOTIFY: Mutex<Notify> = Mutex::new(Notify {
    types: Vec::new(),
    events: VecDeque::new(),
    next_id: 0,
});

fn state() -> std::sync::MutexGuard<'static, Notify> {
    NOTIFY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers an event type (idempotent); `notify_get_types` lists them in
/// registration order.
pub fn register_type(name: &str) {
    state().add_type(name);
}

impl Notify {
    fn add_type(&mut self, name: &str) {
        if !self.types.iter().any(|t| t == name) {
            self.types.push(name.to_string());
        }
    }
}

/// Sends an event of `type_name` about `ctx` (registering the type if it
/// is new); returns its id.
pub fn send(type_name: &str, ctx: &str) -> u64 {
    let mut s = state();
    s.add_type(type_name);
    let id = s.next_id;
    s.next_id += 1;
    if s.events.len() == MAX_EVENTS {
        s.events.pop_front();
    }
    s.events
        .push_back((id, type_name.to_string(), ctx.to_string()));
    id
}

/// Up to `max` events with ids from `from` (older ones are gone once the
/// ring wrapped: the first kept event is returned instead).
pub fn events(from: u64, max: u64) -> Vec<(u64, String, String)> {
    state()
        .events
        .iter()
        .filter(|e| e.0 >= from)
        .take(max.min(MAX_EVENTS as u64) as usize)
        .cloned()
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    #[serde(default)]
    id: u64,
    #[serde(default = "all")]
    max: u64,
}

fn all() -> u64 {
    u64::MAX
}

/// Registers `notify_get_types` and `notify_get_notifications`.
pub(crate) fn register_rpcs(reg: &RpcRegistry) -> Result<(), rspdk_rpc::Error> {
    reg.register("notify_get_types", StateMask::RUNTIME, |p, r| {
        if let Err(e) = expect_no_params("notify_get_types", &p) {
            return r.error(e);
        }
        r.success(&state().types.clone());
    })?;
    reg.register("notify_get_notifications", StateMask::RUNTIME, |p, r| {
        let p: GetParams = match parse_params(p) {
            Ok(p) => p,
            Err(e) => return r.error(e),
        };
        let list: Vec<Value> = events(p.id, p.max)
            .into_iter()
            .map(|(id, ty, ctx)| json!({"type": ty, "ctx": ctx, "id": id}))
            .collect();
        r.success(&list);
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_count_up_and_the_ring_keeps_the_newest() {
        let first = send("test_type", "a");
        let second = send("test_type", "b");
        assert_eq!(second, first + 1);
        let got = events(first, 2);
        assert_eq!(got[0], (first, "test_type".into(), "a".into()));
        assert_eq!(got[1].0, second);
        assert_eq!(events(second, 1).len(), 1);
        for i in 0..MAX_EVENTS as u64 + 5 {
            send("test_type", &i.to_string());
        }
        let kept = events(0, u64::MAX);
        assert_eq!(kept.len(), MAX_EVENTS);
        assert!(kept.first().unwrap().0 > second, "the oldest are gone");
        assert!(state().types.iter().filter(|t| *t == "test_type").count() == 1);
    }
}
