//! The iSCSI JSON-RPC methods (SPDK's names and params: lib/iscsi/iscsi_rpc.c)
//! and the `iscsi` subsystem's save_config output.

use std::sync::{Arc, Mutex};

use rspdk_rpc::{RpcError, RpcRegistry, StateMask};
use rspdk_scsi::ScsiDev;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::target::{
    bind_portal, check_initiator, check_netmask, check_target_name, with_registry, Auth, AuthGroup,
    ChapSecret, InitiatorGroup, Options, PgIgMap, Portal, PortalGroup, Registry, TargetNode,
    MAX_NAME,
};

fn inval(msg: impl Into<String>) -> RpcError {
    RpcError::new(-libc::EINVAL, msg)
}

/// [`rspdk_rpc::typed::method`] for handlers that fail with an
/// [`RpcError`] already.
fn method<P, F>(reg: &RpcRegistry, name: &str, states: StateMask, f: F)
where
    P: DeserializeOwned + 'static,
    F: Fn(P) -> Result<Value, RpcError> + 'static,
{
    rspdk_rpc::typed::method(reg, name, states, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalGroupParams {
    tag: u32,
    portals: Vec<Portal>,
    #[serde(default)]
    private: bool,
    #[serde(default)]
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

/// Creates a portal group and binds its portals; it accepts connections
/// at once, or with `wait` once `iscsi_start_portal_group` starts it
/// (until then connections wait in the listen backlog).
pub fn create_portal_group(
    tag: u32,
    portals: Vec<Portal>,
    private: bool,
    wait: bool,
) -> Result<(), RpcError> {
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
                started: !wait,
                auth: None,
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
    let a = *t.auth.lock().unwrap_or_else(|e| e.into_inner());
    json!({
        "name": t.name,
        "alias_name": t.alias.clone().unwrap_or_default(),
        "pg_ig_maps": maps,
        "luns": luns,
        "queue_depth": t.queue_depth,
        "disable_chap": a.disable_chap,
        "require_chap": a.require_chap,
        "mutual_chap": a.mutual_chap,
        "chap_group": a.chap_group,
        "header_digest": t.header_digest,
        "data_digest": t.data_digest,
    })
}

fn portal_group_json(g: &PortalGroup) -> Value {
    json!({"portals": g.portals, "tag": g.tag, "private": g.private})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthTagParam {
    tag: i32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddSecretParams {
    tag: i32,
    user: String,
    secret: String,
    muser: Option<String>,
    msecret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveSecretParams {
    tag: i32,
    user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetAuthParams {
    name: String,
    #[serde(default)]
    chap_group: i32,
    #[serde(default)]
    disable_chap: bool,
    #[serde(default)]
    require_chap: bool,
    #[serde(default)]
    mutual_chap: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalAuthParams {
    tag: u32,
    #[serde(default)]
    chap_group: i32,
    #[serde(default)]
    disable_chap: bool,
    #[serde(default)]
    require_chap: bool,
    #[serde(default)]
    mutual_chap: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapsParams {
    name: String,
    pg_ig_maps: Vec<PgIgMap>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InitiatorsParams {
    tag: u32,
    #[serde(default)]
    initiators: Vec<String>,
    #[serde(default)]
    netmasks: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistogramParams {
    name: String,
    enable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogoutParams {
    name: String,
    #[serde(default = "any_pg")]
    pg_tag: i64,
}

fn any_pg() -> i64 {
    -1
}

/// Longest CHAP user name or secret (SPDK's limit).
const CHAP_MAX: usize = 255;

fn check_secret(s: &ChapSecret) -> Result<(), RpcError> {
    if s.user.is_empty() || s.secret.is_empty() {
        return Err(inval("CHAP user and secret must not be empty"));
    }
    if s.muser.is_some() != s.msecret.is_some() {
        return Err(inval(
            "muser and msecret go together: give both for mutual CHAP, or neither",
        ));
    }
    for v in [
        Some(&s.user),
        Some(&s.secret),
        s.muser.as_ref(),
        s.msecret.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if v.len() > CHAP_MAX {
            return Err(inval(format!(
                "CHAP user or secret of {} bytes is longer than {CHAP_MAX}: shorten it",
                v.len()
            )));
        }
    }
    Ok(())
}

fn find_target(r: &Registry, name: &str) -> Result<Arc<TargetNode>, RpcError> {
    let n = r.full_name(name);
    r.targets
        .get(&n)
        .cloned()
        .ok_or_else(|| inval(format!("no target node {n}: see iscsi_get_target_nodes")))
}

/// Checks a list of initiator group entries and netmasks.
fn check_ig_lists(initiators: &[String], netmasks: &[String]) -> Result<(), RpcError> {
    for i in initiators {
        check_initiator(i).map_err(inval)?;
    }
    for m in netmasks {
        check_netmask(m).map_err(inval)?;
    }
    for (what, list) in [("initiator", initiators), ("netmask", netmasks)] {
        for (k, a) in list.iter().enumerate() {
            if list[..k].contains(a) {
                return Err(inval(format!("{what} {a:?} is listed twice: give it once")));
            }
        }
    }
    Ok(())
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
            Auth {
                disable_chap: o.disable_chap,
                require_chap: o.require_chap,
                mutual_chap: o.mutual_chap,
                chap_group: o.chap_group,
            }
            .check()
            .map_err(|e| inval(format!("discovery CHAP: {e}")))?;
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
            create_portal_group(p.tag, p.portals, p.private, p.wait)?;
            Ok(json!(true))
        },
    );
    method(reg, "iscsi_start_portal_group", rt, |p: TagParam| {
        with_registry(|r| match r.portal_groups.get_mut(&p.tag) {
            Some(g) => {
                g.started = true;
                Ok(json!(true))
            }
            None => Err(inval(format!(
                "no portal group {}: see iscsi_get_portal_groups",
                p.tag
            ))),
        })
    });
    method(
        reg,
        "iscsi_portal_group_set_auth",
        rt,
        |p: PortalAuthParams| {
            let a = Auth {
                disable_chap: p.disable_chap,
                require_chap: p.require_chap,
                mutual_chap: p.mutual_chap,
                chap_group: p.chap_group,
            };
            a.check().map_err(inval)?;
            with_registry(|r| match r.portal_groups.get_mut(&p.tag) {
                Some(g) => {
                    g.auth = Some(a);
                    Ok(json!(true))
                }
                None => Err(inval(format!(
                    "no portal group {}: see iscsi_get_portal_groups",
                    p.tag
                ))),
            })
        },
    );
    method(reg, "iscsi_delete_portal_group", rt, |p: TagParam| {
        with_registry(|r| match r.portal_groups.remove(&p.tag) {
            Some(_) => {
                // As SPDK: the target nodes' maps through it go too.
                for t in r.targets.values() {
                    t.pg_ig_maps
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|m| m.pg_tag != p.tag);
                }
                Ok(json!(true))
            }
            None => Err(inval(format!("no portal group {}", p.tag))),
        })
    });
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
            check_ig_lists(&p.initiators, &p.netmasks)?;
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
        "iscsi_initiator_group_add_initiators",
        rt,
        |p: InitiatorsParams| {
            check_ig_lists(&p.initiators, &p.netmasks)?;
            with_registry(|r| {
                let g = r.initiator_groups.get_mut(&p.tag).ok_or_else(|| {
                    inval(format!(
                        "no initiator group {}: create it with iscsi_create_initiator_group",
                        p.tag
                    ))
                })?;
                for (what, have, add) in [
                    ("initiator", &g.initiators, &p.initiators),
                    ("netmask", &g.netmasks, &p.netmasks),
                ] {
                    if let Some(a) = add.iter().find(|a| have.contains(a)) {
                        return Err(inval(format!(
                            "initiator group {} has {what} {a:?} already",
                            p.tag
                        )));
                    }
                }
                g.initiators.extend(p.initiators);
                g.netmasks.extend(p.netmasks);
                Ok(json!(true))
            })
        },
    );
    method(
        reg,
        "iscsi_initiator_group_remove_initiators",
        rt,
        |p: InitiatorsParams| {
            with_registry(|r| {
                let g = r.initiator_groups.get_mut(&p.tag).ok_or_else(|| {
                    inval(format!(
                        "no initiator group {}: see iscsi_get_initiator_groups",
                        p.tag
                    ))
                })?;
                for (what, have, del) in [
                    ("initiator", &g.initiators, &p.initiators),
                    ("netmask", &g.netmasks, &p.netmasks),
                ] {
                    if let Some(a) = del.iter().find(|a| !have.contains(a)) {
                        return Err(inval(format!(
                            "initiator group {} has no {what} {a:?}",
                            p.tag
                        )));
                    }
                    let left = have.iter().filter(|h| !del.contains(h)).count();
                    if left == 0 && !del.is_empty() {
                        return Err(inval(format!(
                            "removing every {what} of initiator group {} would leave it \
                             unusable (and its saved config would not load): delete the \
                             group with iscsi_delete_initiator_group instead",
                            p.tag
                        )));
                    }
                }
                g.initiators.retain(|i| !p.initiators.contains(i));
                g.netmasks.retain(|m| !p.netmasks.contains(m));
                Ok(json!(true))
            })
        },
    );
    method(reg, "iscsi_delete_initiator_group", rt, |p: TagParam| {
        with_registry(|r| match r.initiator_groups.remove(&p.tag) {
            Some(_) => {
                // As SPDK: the target nodes' maps to it go too.
                for t in r.targets.values() {
                    t.pg_ig_maps
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|m| m.ig_tag != p.tag);
                }
                Ok(json!(true))
            }
            None => Err(inval(format!("no initiator group {}", p.tag))),
        })
    });
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
            // An empty name would become the bare node base plus ':'.
            check_target_name(&p.name).map_err(inval)?;
            let name = with_registry(|r| r.full_name(&p.name));
            check_target_name(&name).map_err(inval)?;
            if let Some(a) = &p.alias_name {
                if a.len() > MAX_NAME || a.chars().any(char::is_control) {
                    return Err(inval(format!(
                        "alias_name must be at most {MAX_NAME} bytes without control characters"
                    )));
                }
            }
            if p.luns.is_empty() {
                return Err(inval("a target node needs at least one LUN"));
            }
            let auth = Auth {
                disable_chap: p.disable_chap,
                require_chap: p.require_chap,
                mutual_chap: p.mutual_chap,
                chap_group: p.chap_group,
            };
            auth.check().map_err(inval)?;
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
            with_registry(|r| {
                let t = Arc::new(TargetNode {
                    name: name.clone(),
                    alias: p.alias_name,
                    pg_ig_maps: Mutex::new(p.pg_ig_maps),
                    dev,
                    queue_depth: p.queue_depth,
                    auth: Mutex::new(auth),
                    dev_id: r.free_dev_id(),
                    histogram: Default::default(),
                    header_digest: p.header_digest,
                    data_digest: p.data_digest,
                });
                r.targets.insert(name, t)
            });
            Ok(json!(true))
        },
    );
    method(reg, "iscsi_target_node_add_lun", rt, |p: AddLunParams| {
        let t = with_registry(|r| find_target(r, &p.name))?;
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
    method(
        reg,
        "iscsi_target_node_set_auth",
        rt,
        |p: TargetAuthParams| {
            let a = Auth {
                disable_chap: p.disable_chap,
                require_chap: p.require_chap,
                mutual_chap: p.mutual_chap,
                chap_group: p.chap_group,
            };
            a.check().map_err(inval)?;
            let t = with_registry(|r| find_target(r, &p.name))?;
            *t.auth.lock().unwrap_or_else(|e| e.into_inner()) = a;
            Ok(json!(true))
        },
    );
    method(
        reg,
        "iscsi_target_node_add_pg_ig_maps",
        rt,
        |p: MapsParams| {
            with_registry(|r| {
                let t = find_target(r, &p.name)?;
                let mut maps = t.pg_ig_maps.lock().unwrap_or_else(|e| e.into_inner());
                for (k, m) in p.pg_ig_maps.iter().enumerate() {
                    if !r.portal_groups.contains_key(&m.pg_tag) {
                        return Err(inval(format!(
                            "no portal group {}: create it first",
                            m.pg_tag
                        )));
                    }
                    if !r.initiator_groups.contains_key(&m.ig_tag) {
                        return Err(inval(format!(
                            "no initiator group {}: create it first",
                            m.ig_tag
                        )));
                    }
                    if maps.contains(m) || p.pg_ig_maps[..k].contains(m) {
                        return Err(inval(format!(
                            "{} maps portal group {} to initiator group {} already",
                            t.name, m.pg_tag, m.ig_tag
                        )));
                    }
                }
                maps.extend(p.pg_ig_maps.iter().copied());
                Ok(json!(true))
            })
        },
    );
    method(
        reg,
        "iscsi_target_node_remove_pg_ig_maps",
        rt,
        |p: MapsParams| {
            with_registry(|r| {
                let t = find_target(r, &p.name)?;
                let mut maps = t.pg_ig_maps.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(m) = p.pg_ig_maps.iter().find(|m| !maps.contains(m)) {
                    return Err(inval(format!(
                        "{} has no map of portal group {} to initiator group {}: see \
                         iscsi_get_target_nodes",
                        t.name, m.pg_tag, m.ig_tag
                    )));
                }
                maps.retain(|m| !p.pg_ig_maps.contains(m));
                Ok(json!(true))
            })
        },
    );
    method(
        reg,
        "iscsi_target_node_request_logout",
        rt,
        |p: LogoutParams| {
            let t = with_registry(|r| find_target(r, &p.name))?;
            let pg = match p.pg_tag {
                -1 => None,
                n => Some(u32::try_from(n).map_err(|_| {
                    inval(format!(
                        "pg_tag {n} is not a portal group tag: give one (>= 1) or omit it"
                    ))
                })?),
            };
            crate::conn::request_logout(&t.name, pg);
            Ok(json!(true))
        },
    );
    method(reg, "iscsi_enable_histogram", rt, |p: HistogramParams| {
        let t = with_registry(|r| find_target(r, &p.name))?;
        t.histogram.enable(p.enable);
        Ok(json!(true))
    });
    method(reg, "iscsi_get_histogram", rt, |p: NameParam| {
        let t = with_registry(|r| find_target(r, &p.name))?;
        if !t.histogram.enabled() {
            return Err(inval(format!(
                "the histogram of {} is not enabled: iscsi_enable_histogram --histogram {0}",
                t.name
            )));
        }
        // Ticks are nanoseconds.
        Ok(json!({
            "histogram": crate::target::base64(&t.histogram.bytes()),
            "granularity": crate::target::Histogram::GRANULARITY,
            "min_range": crate::target::Histogram::MIN_RANGE,
            "max_range": crate::target::Histogram::MAX_RANGE,
            "tsc_rate": 1_000_000_000u64,
        }))
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
    method(reg, "scsi_get_devices", any, |_: NoParams| {
        Ok(with_registry(|r| {
            let mut devs: Vec<(u32, &str)> = r
                .targets
                .values()
                .map(|t| (t.dev_id, t.name.as_str()))
                .collect();
            devs.sort_unstable();
            Value::Array(
                devs.into_iter()
                    .map(|(id, n)| json!({"id": id, "device_name": n}))
                    .collect(),
            )
        }))
    });
    method(reg, "iscsi_get_connections", any, |_: NoParams| {
        Ok(serde_json::to_value(crate::conn::connections()).unwrap_or(Value::Null))
    });
    method(reg, "iscsi_get_stats", any, |_: NoParams| {
        let s = crate::conn::stats();
        Ok(json!({"invalid": s[0], "running": s[1], "exiting": s[2], "exited": s[3]}))
    });
    method(
        reg,
        "iscsi_set_discovery_auth",
        rt,
        |p: DiscoveryAuthParams| {
            let a = Auth {
                disable_chap: p.disable_chap,
                require_chap: p.require_chap,
                mutual_chap: p.mutual_chap,
                chap_group: p.chap_group,
            };
            a.check().map_err(inval)?;
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
        if g.tag <= 0 {
            return Err(inval(format!(
                "auth group tag {} is not allowed: give one of 1 or more",
                g.tag
            )));
        }
        for s in &g.secrets {
            check_secret(s)?;
        }
        for (k, s) in g.secrets.iter().enumerate() {
            if g.secrets[..k].iter().any(|o| o.user == s.user) {
                return Err(inval(format!("CHAP user {:?} is listed twice", s.user)));
            }
        }
        with_registry(|r| {
            if r.auth_groups.contains_key(&g.tag) {
                return Err(inval(format!("auth group {} already exists", g.tag)));
            }
            r.auth_groups.insert(g.tag, g);
            Ok(json!(true))
        })
    });
    method(reg, "iscsi_delete_auth_group", rt, |p: AuthTagParam| {
        with_registry(|r| match r.auth_groups.remove(&p.tag) {
            Some(_) => Ok(json!(true)),
            None => Err(inval(format!(
                "no auth group {}: see iscsi_get_auth_groups",
                p.tag
            ))),
        })
    });
    method(reg, "iscsi_get_auth_groups", any, |_: NoParams| {
        Ok(with_registry(|r| {
            serde_json::to_value(r.auth_groups.values().collect::<Vec<_>>()).unwrap_or(Value::Null)
        }))
    });
    method(
        reg,
        "iscsi_auth_group_add_secret",
        rt,
        |p: AddSecretParams| {
            let s = ChapSecret {
                user: p.user,
                secret: p.secret,
                muser: p.muser,
                msecret: p.msecret,
            };
            check_secret(&s)?;
            with_registry(|r| {
                let g = r.auth_groups.get_mut(&p.tag).ok_or_else(|| {
                    inval(format!(
                        "no auth group {}: create it with iscsi_create_auth_group",
                        p.tag
                    ))
                })?;
                if g.secrets.iter().any(|o| o.user == s.user) {
                    return Err(inval(format!(
                        "auth group {} has a secret for user {:?} already: remove it first",
                        p.tag, s.user
                    )));
                }
                g.secrets.push(s);
                Ok(json!(true))
            })
        },
    );
    method(
        reg,
        "iscsi_auth_group_remove_secret",
        rt,
        |p: RemoveSecretParams| {
            with_registry(|r| {
                let g = r.auth_groups.get_mut(&p.tag).ok_or_else(|| {
                    inval(format!(
                        "no auth group {}: see iscsi_get_auth_groups",
                        p.tag
                    ))
                })?;
                let n = g.secrets.len();
                g.secrets.retain(|s| s.user != p.user);
                if g.secrets.len() == n {
                    return Err(inval(format!(
                        "auth group {} has no secret for user {:?}",
                        p.tag, p.user
                    )));
                }
                Ok(json!(true))
            })
        },
    );
}

/// The `iscsi` subsystem's save_config entries (SPDK's, with the auth
/// groups first so target nodes and portal groups find theirs). A portal
/// group not started yet is saved with `wait`, one whose discovery auth was
/// set gets its `iscsi_portal_group_set_auth`. A target node without LUNs
/// (its bdevs were deleted) is left out: `iscsi_create_target_node` needs
/// one, so saving it would give a config that does not load.
/// A target node whose histogram is on gets `iscsi_enable_histogram`
/// after it, as SPDK saves it.
pub fn config_json() -> Vec<Value> {
    with_registry(|r| {
        let mut out = vec![json!({"method": "iscsi_set_options",
            "params": serde_json::to_value(&r.options).unwrap_or(Value::Null)})];
        for g in r.auth_groups.values() {
            out.push(json!({"method": "iscsi_create_auth_group", "params": g}));
        }
        for g in r.portal_groups.values() {
            let mut p = portal_group_json(g);
            if !g.started {
                p["wait"] = json!(true);
            }
            out.push(json!({"method": "iscsi_create_portal_group", "params": p}));
            if let Some(a) = g.auth {
                out.push(json!({"method": "iscsi_portal_group_set_auth", "params": {
                    "tag": g.tag, "disable_chap": a.disable_chap, "require_chap": a.require_chap,
                    "mutual_chap": a.mutual_chap, "chap_group": a.chap_group}}));
            }
        }
        for g in r.initiator_groups.values() {
            out.push(json!({"method": "iscsi_create_initiator_group", "params": g}));
        }
        for t in r.targets.values() {
            if t.dev.luns().is_empty() {
                tracing::warn!(target = %t.name,
                    "save_config leaves out target node without LUNs (its bdevs were deleted)");
                continue;
            }
            out.push(json!({"method": "iscsi_create_target_node", "params": target_json(t)}));
            if t.histogram.enabled() {
                out.push(json!({"method": "iscsi_enable_histogram",
                    "params": {"name": t.name, "enable": true}}));
            }
        }
        out
    })
}
