//! SPDK's `nvmf_*` JSON-RPC methods (names and parameters of SPDK's
//! `lib/nvmf/nvmf_rpc.c`) and the `nvmf` save_config section.

use std::sync::atomic::Ordering;

use rspdk_rpc::{parse_params, Responder, RpcError, RpcRegistry, StateMask};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::conn::DISCOVERY_GENCTR;
use crate::error::NvmfError;
use crate::target::{lock, parse_hex, parse_uuid, target, ListenAddress, TransportOpts};

fn rpc_error(e: NvmfError) -> RpcError {
    RpcError::new(-e.errno(), e.to_string())
}

fn method<P, F>(reg: &RpcRegistry, name: &str, states: StateMask, f: F)
where
    P: DeserializeOwned + 'static,
    F: Fn(P) -> Result<Value, NvmfError> + 'static,
{
    let r = reg.register(
        name,
        states,
        move |params: Option<Value>, resp: Responder| {
            let params = match params {
                None | Some(Value::Null) => Some(json!({})),
                p => p,
            };
            match parse_params::<P>(params) {
                Ok(p) => resp.complete(f(p).map_err(rpc_error)),
                Err(e) => resp.error(e),
            }
        },
    );
    if let Err(e) = r {
        tracing::error!(method = name, error = %e, "RPC method registration failed");
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubsystem {
    nqn: String,
    #[serde(default = "d_serial")]
    serial_number: String,
    #[serde(default = "d_model")]
    model_number: String,
    #[serde(default)]
    allow_any_host: bool,
    #[serde(default)]
    max_namespaces: u32,
    #[serde(default = "d_min")]
    min_cntlid: u16,
    #[serde(default = "d_max")]
    max_cntlid: u16,
    #[serde(default)]
    #[allow(dead_code)]
    tgt_name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    ana_reporting: bool,
    #[serde(default)]
    #[allow(dead_code)]
    max_discard_size_kib: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    max_write_zeroes_size_kib: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    passthrough: bool,
    #[serde(default)]
    #[allow(dead_code)]
    enable_nssr: bool,
}

fn d_serial() -> String {
    "00000000000000000000".into()
}
fn d_model() -> String {
    "SPDK bdev Controller".into()
}
fn d_min() -> u16 {
    1
}
fn d_max() -> u16 {
    0xffef
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NqnParam {
    nqn: String,
    #[serde(default)]
    #[allow(dead_code)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerParams {
    nqn: String,
    listen_address: ListenAddress,
    #[serde(default)]
    #[allow(dead_code)]
    tgt_name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    secure_channel: bool,
    #[serde(default)]
    #[allow(dead_code)]
    sock_impl: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    anagrpid: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NsSpec {
    bdev_name: String,
    #[serde(default)]
    nsid: Option<u32>,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    nguid: Option<String>,
    #[serde(default)]
    eui64: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    ptpl_file: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    anagrpid: Option<u32>,
    #[serde(default)]
    #[allow(dead_code)]
    no_auto_visible: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNs {
    nqn: String,
    namespace: NsSpec,
    #[serde(default)]
    #[allow(dead_code)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNs {
    nqn: String,
    nsid: u32,
    #[serde(default)]
    #[allow(dead_code)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostParams {
    nqn: String,
    host: String,
    #[serde(default)]
    #[allow(dead_code)]
    tgt_name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    psk: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowAny {
    nqn: String,
    allow_any_host: bool,
    #[serde(default)]
    #[allow(dead_code)]
    tgt_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetSubsystems {
    #[serde(default)]
    nqn: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    tgt_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TgtOnly {
    #[serde(default)]
    #[allow(dead_code)]
    tgt_name: Option<String>,
    #[serde(default)]
    trtype: Option<String>,
}

#[derive(Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields)]
struct SetConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acceptor_poll_rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conn_sched: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_cmd_passthru: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    poll_groups_mask: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    discovery_filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dhchap_digests: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dhchap_dhgroups: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MaxSubsystems {
    max_subsystems: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Crdt {
    #[serde(default)]
    crdt1: u16,
    #[serde(default)]
    crdt2: u16,
    #[serde(default)]
    crdt3: u16,
}

fn bump() {
    DISCOVERY_GENCTR.fetch_add(1, Ordering::AcqRel);
}

fn transport_json(o: &TransportOpts) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert("trtype".into(), json!("TCP"));
    }
    v
}

/// Registers the `nvmf_*` methods.
pub fn register_rpcs(reg: &RpcRegistry) {
    let rt = StateMask::RUNTIME;
    let any = StateMask::STARTUP | StateMask::RUNTIME;
    method(reg, "nvmf_set_config", any, |p: SetConfig| {
        if let Some(f) = &p.discovery_filter {
            let ok = f
                .split(',')
                .all(|x| matches!(x, "match_any" | "transport" | "address" | "svcid"));
            if !ok {
                return Err(NvmfError::param(format!(
                    "discovery_filter '{f}': match_any, or a comma list of transport, address, svcid"
                )));
            }
        }
        target().config = serde_json::to_value(&p).unwrap_or(Value::Null);
        Ok(json!(true))
    });
    method(reg, "nvmf_set_max_subsystems", any, |p: MaxSubsystems| {
        if p.max_subsystems == 0 {
            return Err(NvmfError::param("max_subsystems must be at least 1"));
        }
        target().max_subsystems = p.max_subsystems;
        Ok(json!(true))
    });
    method(reg, "nvmf_set_crdt", any, |p: Crdt| {
        target().crdt = [p.crdt1, p.crdt2, p.crdt3];
        Ok(json!(true))
    });
    method(reg, "nvmf_create_transport", any, |o: TransportOpts| {
        o.validate()?;
        let mut t = target();
        if t.transport.is_some() {
            return Err(NvmfError::Exists {
                kind: "transport",
                name: "TCP".into(),
            });
        }
        t.transport = Some(TransportOpts {
            trtype: "TCP".into(),
            ..o
        });
        Ok(json!(true))
    });
    method(reg, "nvmf_get_transports", any, |p: TgtOnly| {
        let t = target();
        if let Some(tt) = &p.trtype {
            if !tt.eq_ignore_ascii_case("tcp") || t.transport.is_none() {
                return Err(NvmfError::NotFound {
                    kind: "transport",
                    name: tt.clone(),
                });
            }
        }
        Ok(Value::Array(
            t.transport.iter().map(transport_json).collect(),
        ))
    });
    method(reg, "nvmf_create_subsystem", rt, |p: CreateSubsystem| {
        target().create_subsystem(
            &p.nqn,
            &p.serial_number,
            &p.model_number,
            p.max_namespaces,
            p.allow_any_host,
            p.min_cntlid,
            p.max_cntlid,
        )?;
        bump();
        Ok(json!(true))
    });
    method(reg, "nvmf_delete_subsystem", rt, |p: NqnParam| {
        target().delete_subsystem(&p.nqn)?;
        bump();
        Ok(json!(true))
    });
    method(
        reg,
        "nvmf_subsystem_add_listener",
        rt,
        |p: ListenerParams| {
            target().add_listener(&p.nqn, &p.listen_address)?;
            bump();
            Ok(json!(true))
        },
    );
    method(
        reg,
        "nvmf_subsystem_remove_listener",
        rt,
        |p: ListenerParams| {
            target().remove_listener(&p.nqn, &p.listen_address)?;
            bump();
            Ok(json!(true))
        },
    );
    method(reg, "nvmf_subsystem_add_ns", rt, |p: AddNs| {
        let n = &p.namespace;
        let uuid = n.uuid.as_deref().map(parse_uuid).transpose()?;
        let nguid = n
            .nguid
            .as_deref()
            .map(|s| parse_hex::<16>(s, "nguid", s))
            .transpose()?;
        let eui64 = n
            .eui64
            .as_deref()
            .map(|s| parse_hex::<8>(s, "eui64", s))
            .transpose()?;
        let nsid = target().add_ns(&p.nqn, &n.bdev_name, n.nsid, uuid, nguid, eui64)?;
        Ok(json!(nsid))
    });
    method(reg, "nvmf_subsystem_remove_ns", rt, |p: RemoveNs| {
        target().remove_ns(&p.nqn, p.nsid)?;
        Ok(json!(true))
    });
    method(reg, "nvmf_subsystem_add_host", rt, |p: HostParams| {
        let s = target().get(&p.nqn)?;
        crate::target::validate_nqn(&p.host)?;
        let mut h = lock(&s.hosts);
        if h.contains(&p.host) {
            return Err(NvmfError::Exists {
                kind: "host",
                name: p.host,
            });
        }
        h.push(p.host);
        bump();
        Ok(json!(true))
    });
    method(reg, "nvmf_subsystem_remove_host", rt, |p: HostParams| {
        let s = target().get(&p.nqn)?;
        let mut h = lock(&s.hosts);
        let n = h.len();
        h.retain(|x| *x != p.host);
        if h.len() == n {
            return Err(NvmfError::NotFound {
                kind: "host",
                name: p.host,
            });
        }
        bump();
        Ok(json!(true))
    });
    method(reg, "nvmf_subsystem_allow_any_host", rt, |p: AllowAny| {
        let s = target().get(&p.nqn)?;
        s.allow_any_host.store(p.allow_any_host, Ordering::Release);
        bump();
        Ok(json!(true))
    });
    method(reg, "nvmf_get_subsystems", rt, |p: GetSubsystems| {
        let t = target();
        let list: Vec<Value> = match &p.nqn {
            Some(n) => vec![t.get(n)?.info_json()],
            None => t.subsystems.iter().map(|s| s.info_json()).collect(),
        };
        Ok(Value::Array(list))
    });
    method(reg, "nvmf_subsystem_get_controllers", rt, |p: NqnParam| {
        let s = target().get(&p.nqn)?;
        let t = target();
        let list: Vec<Value> = lock(&s.controllers)
            .iter()
            .map(|c| {
                let io = t
                    .qpairs
                    .values()
                    .filter(|q| q.nqn == s.nqn && q.cntlid == c.cntlid && q.qid > 0)
                    .count();
                json!({
                    "cntlid": c.cntlid,
                    "hostnqn": c.hostnqn,
                    "hostid": crate::target::uuid_string(&c.hostid),
                    "num_io_qpairs": io,
                })
            })
            .collect();
        Ok(Value::Array(list))
    });
    method(reg, "nvmf_subsystem_get_qpairs", rt, |p: NqnParam| {
        let t = target();
        let s = t.get(&p.nqn)?;
        let list: Vec<Value> = t
            .qpairs
            .values()
            .filter(|q| q.nqn == s.nqn)
            .map(|q| {
                json!({
                    "cntlid": q.cntlid,
                    "qid": q.qid,
                    "state": "active",
                    "thread": q.thread,
                    "listen_address": {
                        "trtype": "TCP",
                        "adrfam": if q.local.is_ipv4() { "IPv4" } else { "IPv6" },
                        "traddr": q.local.ip().to_string(),
                        "trsvcid": q.local.port().to_string(),
                    },
                    "peer_address": {
                        "trtype": "TCP",
                        "adrfam": if q.peer.is_ipv4() { "IPv4" } else { "IPv6" },
                        "traddr": q.peer.ip().to_string(),
                        "trsvcid": q.peer.port().to_string(),
                    },
                })
            })
            .collect();
        Ok(Value::Array(list))
    });
    method(reg, "nvmf_get_stats", rt, |_p: TgtOnly| {
        let t = target();
        let groups: Vec<Value> = t
            .poll_groups
            .iter()
            .map(|g| {
                let s = &g.stats;
                let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                json!({
                    "name": g.name,
                    "admin_qpairs": l(&s.admin_qpairs),
                    "io_qpairs": l(&s.io_qpairs),
                    "current_admin_qpairs": l(&s.current_admin_qpairs),
                    "current_io_qpairs": l(&s.current_io_qpairs),
                    "pending_bdev_io": l(&s.pending_bdev_io),
                    "completed_nvme_io": l(&s.completed_nvme_io),
                    "transports": [{"trtype": "TCP"}],
                })
            })
            .collect();
        Ok(json!({"tick_rate": 1_000_000_000u64, "poll_groups": groups}))
    });
}

/// The `nvmf` subsystem's save_config entries.
pub fn config_json() -> Vec<Value> {
    let t = target();
    let mut out = Vec::new();
    let mut cfg = match &t.config {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    cfg.entry("discovery_filter").or_insert(json!("match_any"));
    cfg.entry("admin_cmd_passthru")
        .or_insert(json!({"identify_ctrlr": false}));
    out.push(json!({"method": "nvmf_set_config", "params": cfg}));
    let max = if t.max_subsystems == 0 {
        1024
    } else {
        t.max_subsystems
    };
    out.push(json!({"method": "nvmf_set_max_subsystems", "params": {"max_subsystems": max}}));
    out.push(json!({"method": "nvmf_set_crdt", "params": {
        "crdt1": t.crdt[0], "crdt2": t.crdt[1], "crdt3": t.crdt[2]}}));
    if let Some(o) = &t.transport {
        out.push(json!({"method": "nvmf_create_transport", "params": transport_json(o)}));
    }
    for s in &t.subsystems {
        if !s.discovery {
            out.push(json!({"method": "nvmf_create_subsystem", "params": {
                "nqn": s.nqn,
                "allow_any_host": s.allow_any_host.load(Ordering::Acquire),
                "serial_number": s.serial,
                "model_number": s.model,
                "max_namespaces": s.max_namespaces,
                "min_cntlid": s.min_cntlid,
                "max_cntlid": s.max_cntlid,
            }}));
        }
        for l in lock(&s.listeners).iter() {
            out.push(json!({"method": "nvmf_subsystem_add_listener", "params": {
                "nqn": s.nqn, "listen_address": l,
            }}));
        }
        for h in lock(&s.hosts).iter() {
            out.push(
                json!({"method": "nvmf_subsystem_add_host", "params": {"nqn": s.nqn, "host": h}}),
            );
        }
        for ns in lock(&s.namespaces).values() {
            out.push(json!({"method": "nvmf_subsystem_add_ns", "params": {
                "nqn": s.nqn,
                "namespace": {
                    "nsid": ns.nsid,
                    "bdev_name": ns.bdev_name,
                    "uuid": crate::target::uuid_string(&ns.uuid),
                    "nguid": ns.nguid.iter().map(|x| format!("{x:02X}")).collect::<String>(),
                }
            }}));
        }
    }
    out
}
