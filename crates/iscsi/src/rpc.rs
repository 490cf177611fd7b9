//! The iSCSI JSON-RPC methods (SPDK's names and params: lib/iscsi/iscsi_rpc.c)
//! and the `iscsi` subsystem's save_config output.

use std::sync::{Arc, Mutex};

use rspdk_rpc::{parse_params, Responder, RpcError, RpcRegistry, StateMask};
use rspdk_scsi::ScsiDev;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::target::{
    bind_portal, with_registry, AuthGroup, InitiatorGroup, Options, PgIgMap, Portal, PortalGroup,
    TargetNode,
};

fn inval(msg: impl Into<String>) -> RpcError {
    RpcError::new(-libc::EINVAL, msg)
}

fn method<P, F>(reg: &RpcRegistry, name: &str, states: StateMask, f: F)
where
    P: DeserializeOwned + 'static,
    F: Fn(P) -> Result<Value, RpcError> + 'static,
{
    let r = reg.register(
        name,
        states,
        move |params: Option<Value>, resp: Responder| match parse_params::<P>(params) {
            Ok(p) => resp.complete(f(p)),
            Err(e) => resp.error(e),
        },
    );
    if let Err(e) = r {
        tracing::error!(method = name, error = %e, "RPC method registration failed");
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalGroupParams {
    tag: u32,
    portals: Vec<Portal>,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    #[allow(dead_code)]
    wait: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InitiatorGroupParams {
    tag: u32,
    initiators: Vec<String>,
    netmasks: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LunParam {
    bdev_name: String,
    lun_id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetNodeParams {
    name: String,
    alias_name: Option<String>,
    pg_ig_maps: Vec<PgIgMap>,
    luns: Vec<LunParam>,
    queue_depth: u32,
    #[serde(default)]
    disable_chap: bool,
    #[serde(default)]
    require_chap: bool,
    #[serde(default)]
    mutual_chap: bool,
    #[serde(default)]
    chap_group: i32,
    #[serde(default)]
    header_digest: bool,
    #[serde(default)]
    data_digest: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddLunParams {
    name: String,
    bdev_name: String,
    lun_id: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParam {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagParam {
    tag: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DiscoveryAuthParams {
    #[serde(default)]
    disable_chap: bool,
    #[serde(default)]
    require_chap: bool,
    #[serde(default)]
    mutual_chap: bool,
    #[serde(default)]
    chap_group: i32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// Creates a portal group and starts listening on its portals.
pub fn create_portal_group(tag: u32, portals: Vec<Portal>, private: bool) -> Result<(), RpcError> {
    if tag == 0 {
        return Err(inval("portal group tag 0 is reserved"));
    }
    if portals.is_empty() {
        return Err(inval("a portal group needs at least one portal"));
    }
    if with_registry(|r| r.portal_groups.contains_key(&tag)) {
        return Err(inval(format!("portal group {tag} already exists")));
    }
    crate::ensure_started().map_err(|e| RpcError::new(-libc::ENOMEM, e.to_string()))?;
    let mut listeners = Vec::new();
    for p in &portals {
        listeners.push(Arc::new(bind_portal(p).map_err(|e| inval(e.to_string()))?));
    }
    with_registry(|r| {
        r.portal_groups.insert(
            tag,
            PortalGroup {
                tag,
                portals,
                private,
                listeners,
            },
        )
    });
    Ok(())
}

fn target_json(t: &TargetNode) -> Value {
    let maps = t
        .pg_ig_maps
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let luns: Vec<Value> = t
        .dev
        .luns()
        .into_iter()
        .map(|(id, b)| json!({"bdev_name": b, "lun_id": id}))
        .collect();
    json!({
        "name": t.name,
        "alias_name": t.alias.clone().unwrap_or_default(),
        "pg_ig_maps": maps,
        "luns": luns,
        "queue_depth": t.queue_depth,
        "disable_chap": t.disable_chap,
        "require_chap": t.require_chap,
        "mutual_chap": t.mutual_chap,
        "chap_group": t.chap_group,
        "header_digest": t.header_digest,
        "data_digest": t.data_digest,
    })
}

fn portal_group_json(g: &PortalGroup) -> Value {
    json!({"portals": g.portals, "tag": g.tag, "private": g.private})
}

/// Registers the iSCSI methods.
pub fn register_rpcs(reg: &RpcRegistry) {
    let any = StateMask::STARTUP | StateMask::RUNTIME;
    let rt = StateMask::RUNTIME;
    method(
        reg,
        "iscsi_set_options",
        StateMask::STARTUP,
        |o: Options| {
            if o.error_recovery_level > 0 {
                return Err(inval("only ErrorRecoveryLevel 0 is supported"));
            }
            if o.first_burst_length < 512 {
                return Err(inval("first_burst_length must be at least 512"));
            }
            if !(1..=65535).contains(&o.max_connections_per_session) {
                return Err(inval(
                    "max_connections_per_session must be 1 to 65535 (MaxConnections)",
                ));
            }
            with_registry(|r| r.options = o);
            Ok(json!(true))
        },
    );
    method(reg, "iscsi_get_options", any, |_: NoParams| {
        Ok(with_registry(|r| {
            serde_json::to_value(&r.options).unwrap_or(Value::Null)
        }))
    });
    method(
        reg,
        "iscsi_create_portal_group",
        rt,
        |p: PortalGroupParams| {
            create_portal_group(p.tag, p.portals, p.private)?;
            Ok(json!(true))
        },
    );
    method(
        reg,
        "iscsi_delete_portal_group",
        rt,
        |p: TagParam| match with_registry(|r| r.portal_groups.remove(&p.tag)) {
            Some(_) => Ok(json!(true)),
            None => Err(inval(format!("no portal group {}", p.tag))),
        },
    );
    method(reg, "iscsi_get_portal_groups", any, |_: NoParams| {
        Ok(with_registry(|r| {
            Value::Array(r.portal_groups.values().map(portal_group_json).collect())
        }))
    });
    method(
        reg,
        "iscsi_create_initiator_group",
        rt,
        |p: InitiatorGroupParams| {
            if p.tag == 0 {
                return Err(inval("initiator group tag 0 is reserved"));
            }
            if p.initiators.is_empty() || p.netmasks.is_empty() {
                return Err(inval("initiators and netmasks must not be empty"));
            }
            with_registry(|r| {
                if r.initiator_groups.contains_key(&p.tag) {
                    return Err(inval(format!("initiator group {} already exists", p.tag)));
                }
                r.initiator_groups.insert(
                    p.tag,
                    InitiatorGroup {
                        tag: p.tag,
                        initiators: p.initiators,
                        netmasks: p.netmasks,
                    },
                );
                Ok(json!(true))
            })
        },
    );
    method(
        reg,
        "iscsi_delete_initiator_group",
        rt,
        |p: TagParam| match with_registry(|r| r.initiator_groups.remove(&p.tag)) {
            Some(_) => Ok(json!(true)),
            None => Err(inval(format!("no initiator group {}", p.tag))),
        },
    );
    method(reg, "iscsi_get_initiator_groups", any, |_: NoParams| {
        Ok(with_registry(|r| {
            serde_json::to_value(r.initiator_groups.values().collect::<Vec<_>>())
                .unwrap_or(Value::Null)
        }))
    });
    method(
        reg,
        "iscsi_create_target_node",
        rt,
        |p: TargetNodeParams| {
            let name = with_registry(|r| r.full_name(&p.name));
            if p.luns.is_empty() {
                return Err(inval("a target node needs at least one LUN"));
            }
            if p.queue_depth == 0
                || p.queue_depth > with_registry(|r| r.options.max_queue_depth).max(1)
            {
                return Err(inval(format!(
                    "queue_depth {} is out of range",
                    p.queue_depth
                )));
            }
            with_registry(|r| {
                if r.targets.contains_key(&name) {
                    return Err(inval(format!("target node {name} already exists")));
                }
                for m in &p.pg_ig_maps {
                    if !r.portal_groups.contains_key(&m.pg_tag) {
                        return Err(inval(format!("no portal group {}", m.pg_tag)));
                    }
                    if !r.initiator_groups.contains_key(&m.ig_tag) {
                        return Err(inval(format!("no initiator group {}", m.ig_tag)));
                    }
                }
                Ok(())
            })?;
            let dev = ScsiDev::new(&name);
            for l in &p.luns {
                if let Err(e) = dev.add_lun(l.lun_id, &l.bdev_name) {
                    dev.close();
                    return Err(inval(e.to_string()));
                }
            }
            let t = Arc::new(TargetNode {
                name: name.clone(),
                alias: p.alias_name,
                pg_ig_maps: Mutex::new(p.pg_ig_maps),
                dev,
                queue_depth: p.queue_depth,
                disable_chap: p.disable_chap,
                require_chap: p.require_chap,
                mutual_chap: p.mutual_chap,
                chap_group: p.chap_group,
                header_digest: p.header_digest,
                data_digest: p.data_digest,
            });
            with_registry(|r| r.targets.insert(name, t));
            Ok(json!(true))
        },
    );
    method(reg, "iscsi_target_node_add_lun", rt, |p: AddLunParams| {
        let t = with_registry(|r| {
            let n = r.full_name(&p.name);
            r.targets.get(&n).cloned()
        })
        .ok_or_else(|| inval(format!("no target node {}", p.name)))?;
        let id = match p.lun_id {
            Some(id) if id >= 0 => id as u64,
            _ => {
                let used: Vec<u64> = t.dev.luns().into_iter().map(|(i, _)| i).collect();
                (0..).find(|i| !used.contains(i)).unwrap_or(0)
            }
        };
        t.dev
            .add_lun(id, &p.bdev_name)
            .map_err(|e| inval(e.to_string()))?;
        Ok(json!(true))
    });
    method(reg, "iscsi_delete_target_node", rt, |p: NameParam| {
        let t = with_registry(|r| {
            let n = r.full_name(&p.name);
            r.targets.remove(&n)
        })
        .ok_or_else(|| inval(format!("no target node {}", p.name)))?;
        crate::conn::kill_target_sessions(&t.name);
        t.dev.close();
        Ok(json!(true))
    });
    method(reg, "iscsi_get_target_nodes", any, |_: NoParams| {
        Ok(with_registry(|r| {
            Value::Array(r.targets.values().map(|t| target_json(t)).collect())
        }))
    });
    method(reg, "iscsi_get_connections", any, |_: NoParams| {
        Ok(serde_json::to_value(crate::conn::connections()).unwrap_or(Value::Null))
    });
    method(
        reg,
        "iscsi_set_discovery_auth",
        rt,
        |p: DiscoveryAuthParams| {
            if p.disable_chap && p.require_chap {
                return Err(inval("disable_chap and require_chap are exclusive"));
            }
            if p.require_chap || p.mutual_chap {
                return Err(RpcError::new(-libc::ENOTSUP, "CHAP is not implemented yet"));
            }
            with_registry(|r| {
                r.options.disable_chap = p.disable_chap;
                r.options.require_chap = p.require_chap;
                r.options.mutual_chap = p.mutual_chap;
                r.options.chap_group = p.chap_group;
                r.discovery_auth_set = true;
            });
            Ok(json!(true))
        },
    );
    method(reg, "iscsi_create_auth_group", rt, |g: AuthGroup| {
        with_registry(|r| {
            if r.auth_groups.contains_key(&g.tag) {
                return Err(inval(format!("auth group {} already exists", g.tag)));
            }
            if g.secrets
                .iter()
                .any(|s| s.muser.is_some() != s.msecret.is_some())
            {
                return Err(inval("muser and msecret go together"));
            }
            r.auth_groups.insert(g.tag, g);
            Ok(json!(true))
        })
    });
}

/// The `iscsi` subsystem's save_config entries.
pub fn config_json() -> Vec<Value> {
    with_registry(|r| {
        let mut out = vec![json!({"method": "iscsi_set_options",
            "params": serde_json::to_value(&r.options).unwrap_or(Value::Null)})];
        for g in r.auth_groups.values() {
            out.push(json!({"method": "iscsi_create_auth_group", "params": g}));
        }
        for g in r.portal_groups.values() {
            out.push(
                json!({"method": "iscsi_create_portal_group", "params": portal_group_json(g)}),
            );
        }
        for g in r.initiator_groups.values() {
            out.push(json!({"method": "iscsi_create_initiator_group", "params": g}));
        }
        for t in r.targets.values() {
            out.push(json!({"method": "iscsi_create_target_node", "params": target_json(t)}));
        }
        out
    })
}
