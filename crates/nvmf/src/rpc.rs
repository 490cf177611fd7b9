//! SPDK's `nvmf_*` JSON-RPC methods (names and parameters of SPDK's
//! `lib/nvmf/nvmf_rpc.c`) and the `nvmf` save_config section.

use std::sync::atomic::Ordering;

use rspdk_rpc::{Responder, RpcError, RpcRegistry, StateMask};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::NvmfError;
use crate::target::DISCOVERY_GENCTR;
use crate::target::{lock, parse_hex, parse_uuid, target, ListenAddress, TransportOpts};

fn rpc_error(e: NvmfError) -> RpcError {
    RpcError::new(-e.errno(), e.to_string())
}

/// [`rspdk_rpc::typed::method`] for handlers that fail with an
/// [`NvmfError`].
fn method<P, F>(reg: &RpcRegistry, name: &str, states: StateMask, f: F)
where
    P: DeserializeOwned + 'static,
    F: Fn(P) -> Result<Value, NvmfError> + 'static,
{
    rspdk_rpc::typed::method(reg, name, states, f)
}

impl From<NvmfError> for RpcError {
    fn from(e: NvmfError) -> RpcError {
        rpc_error(e)
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
    tgt_name: Option<String>,
    #[serde(default)]
    ana_reporting: bool,
    #[serde(default)]
    max_discard_size_kib: Option<u64>,
    #[serde(default)]
    dmrsl: Option<u64>,
    #[serde(default)]
    max_write_zeroes_size_kib: Option<u64>,
    #[serde(default)]
    wzsl: Option<u64>,
    #[serde(default)]
    passthrough: bool,
    #[serde(default)]
    enable_nssr: bool,
}

impl CreateSubsystem {
    /// Refuses the options rspdk cannot honour yet, by name.
    fn check_supported(&self) -> Result<(), NvmfError> {
        let unsupported = [
            ("ana_reporting", self.ana_reporting, "ANA reporting"),
            (
                "passthrough",
                self.passthrough,
                "NVMe passthrough subsystems",
            ),
            ("enable_nssr", self.enable_nssr, "NVM subsystem reset"),
            (
                "max_discard_size_kib",
                self.max_discard_size_kib.is_some(),
                "a discard size limit (DMRSL)",
            ),
            (
                "dmrsl",
                self.dmrsl.is_some(),
                "a discard size limit (DMRSL)",
            ),
            (
                "max_write_zeroes_size_kib",
                self.max_write_zeroes_size_kib.is_some(),
                "a write zeroes size limit (WZSL)",
            ),
            (
                "wzsl",
                self.wzsl.is_some(),
                "a write zeroes size limit (WZSL)",
            ),
        ];
        refuse_set(&unsupported)
    }
}

/// Errors on the first option of `opts` that is set: `(name, set, what)`.
fn refuse_set(opts: &[(&str, bool, &str)]) -> Result<(), NvmfError> {
    match opts.iter().find(|(_, set, _)| *set) {
        Some((name, _, what)) => Err(NvmfError::param(format!(
            "{name}: {what} is not supported by rspdk yet; omit {name}"
        ))),
        None => Ok(()),
    }
}

pub use crate::target::DEFAULT_TGT_NAME;

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
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerParams {
    nqn: String,
    listen_address: ListenAddress,
    #[serde(default)]
    tgt_name: Option<String>,
    #[serde(default)]
    secure_channel: bool,
    #[serde(default)]
    sock_impl: Option<String>,
    #[serde(default)]
    anagrpid: Option<u32>,
    #[serde(default)]
    ana_state: Option<String>,
    #[serde(default)]
    numa_id: Option<i32>,
}

impl ListenerParams {
    /// Refuses the options rspdk cannot honour yet, by name.
    fn check_supported(&self) -> Result<(), NvmfError> {
        if let Some(imp) = self.sock_impl.as_deref() {
            if imp != "posix" {
                return Err(NvmfError::param(format!(
                    "sock_impl '{imp}': rspdk's listeners use the kernel's TCP sockets ('posix'); omit sock_impl or pass posix"
                )));
            }
        }
        if let Some(st) = self.ana_state.as_deref() {
            if st != "optimized" {
                return Err(NvmfError::param(format!(
                    "ana_state '{st}': ANA reporting is not supported by rspdk yet, every path is optimized; omit ana_state"
                )));
            }
        }
        if let Some(n) = self.numa_id {
            if n != -1 && n != 0 {
                return Err(NvmfError::param(format!(
                    "numa_id {n}: rspdk places listeners on NUMA node 0 only; omit numa_id or pass 0 or -1"
                )));
            }
        }
        refuse_set(&[
            (
                "secure_channel",
                self.secure_channel,
                "TLS (a secure channel)",
            ),
            ("anagrpid", self.anagrpid.is_some(), "ANA groups"),
        ])
    }
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
    ptpl_file: Option<String>,
    #[serde(default)]
    anagrpid: Option<u32>,
    #[serde(default)]
    no_auto_visible: bool,
    #[serde(default)]
    hide_metadata: bool,
}

impl NsSpec {
    /// Refuses the options rspdk cannot honour yet, by name.
    fn check_supported(&self) -> Result<(), NvmfError> {
        refuse_set(&[
            (
                "ptpl_file",
                self.ptpl_file.is_some(),
                "persisting reservations to a file (PTPL)",
            ),
            ("anagrpid", self.anagrpid.is_some(), "ANA groups"),
            (
                "hide_metadata",
                self.hide_metadata,
                "hiding a bdev's metadata from hosts",
            ),
        ])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNs {
    nqn: String,
    namespace: NsSpec,
    #[serde(default)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNs {
    nqn: String,
    nsid: u32,
    #[serde(default)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTarget {
    name: String,
    #[serde(default)]
    max_subsystems: Option<u32>,
    #[serde(default)]
    discovery_filter: Option<String>,
    #[serde(default)]
    dup_host_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteTarget {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NsHostParams {
    nqn: String,
    nsid: u32,
    host: String,
    #[serde(default)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostParams {
    nqn: String,
    host: String,
    #[serde(default)]
    tgt_name: Option<String>,
    #[serde(default)]
    psk: Option<String>,
    #[serde(default)]
    dhchap_key: Option<String>,
    #[serde(default)]
    dhchap_ctrlr_key: Option<String>,
    /// remove_host: how long SPDK waits for the host's connections to
    /// go; rspdk ends them at once, within any timeout.
    #[serde(default)]
    #[allow(dead_code)]
    timeout_ms: Option<u64>,
}

impl HostParams {
    /// Refuses the options rspdk cannot honour yet, by name.
    fn check_supported(&self) -> Result<(), NvmfError> {
        refuse_set(&[
            ("psk", self.psk.is_some(), "NVMe/TCP TLS (a pre-shared key)"),
            (
                "dhchap_key",
                self.dhchap_key.is_some(),
                "DH-HMAC-CHAP authentication",
            ),
            (
                "dhchap_ctrlr_key",
                self.dhchap_ctrlr_key.is_some(),
                "DH-HMAC-CHAP authentication",
            ),
        ])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowAny {
    nqn: String,
    allow_any_host: bool,
    #[serde(default)]
    tgt_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetSubsystems {
    #[serde(default)]
    nqn: Option<String>,
    #[serde(default)]
    tgt_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TgtOnly {
    #[serde(default)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dup_host_policy: Option<String>,
}

impl SetConfig {
    /// Refuses the options rspdk cannot honour yet, by name.
    fn check_supported(&self) -> Result<(), NvmfError> {
        if let Some(p) = &self.admin_cmd_passthru {
            let on = p.get("identify_ctrlr").and_then(Value::as_bool);
            let known = p
                .as_object()
                .is_some_and(|m| m.keys().all(|k| k == "identify_ctrlr"));
            if !known || on.is_none() {
                return Err(NvmfError::param(format!(
                    "admin_cmd_passthru {p}: expected {{\"identify_ctrlr\": false}}"
                )));
            }
            if on == Some(true) {
                return Err(NvmfError::param(
                    "admin_cmd_passthru.identify_ctrlr: passing Identify through to an NVMe bdev is not supported by rspdk yet; omit -p",
                ));
            }
        }
        if let Some(m) = &self.poll_groups_mask {
            let set = rspdk_thread::CpuSet::parse(m)
                .map_err(|e| NvmfError::param(format!("poll_groups_mask '{m}': {e}")))?;
            if set.is_empty() {
                return Err(NvmfError::param(format!(
                    "poll_groups_mask '{m}' names no core"
                )));
            }
        }
        if let Some(p) = self.dup_host_policy.as_deref() {
            if p != "allow" {
                return Err(NvmfError::param(format!(
                    "dup_host_policy '{p}': only 'allow' is supported by rspdk yet; omit it"
                )));
            }
        }
        if let Some(r) = self.acceptor_poll_rate {
            return Err(NvmfError::param(format!(
                "acceptor_poll_rate {r}: set it on the transport (nvmf_create_transport --acceptor-poll-rate), as SPDK does since v23.01"
            )));
        }
        if let Some(c) = &self.conn_sched {
            return Err(NvmfError::param(format!(
                "conn_sched {c}: deprecated in SPDK and not supported; connections go round robin to the poll groups; omit it"
            )));
        }
        refuse_set(&[
            (
                "dhchap_digests",
                self.dhchap_digests.is_some(),
                "DH-HMAC-CHAP authentication",
            ),
            (
                "dhchap_dhgroups",
                self.dhchap_dhgroups.is_some(),
                "DH-HMAC-CHAP authentication",
            ),
        ])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferralParams {
    address: ListenAddress,
    #[serde(default)]
    subnqn: Option<String>,
    #[serde(default)]
    secure_channel: bool,
    #[serde(default)]
    tgt_name: Option<String>,
}

impl ReferralParams {
    /// The referral these params name, checked.
    fn referral(&self) -> Result<crate::target::Referral, NvmfError> {
        refuse_set(&[(
            "secure_channel",
            self.secure_channel,
            "TLS (a secure channel)",
        )])?;
        self.address.socket_addr()?;
        let subnqn = self
            .subnqn
            .clone()
            .unwrap_or_else(|| crate::DISCOVERY.to_string());
        crate::target::validate_nqn(&subnqn)?;
        Ok(crate::target::Referral {
            address: self.address.normalized(),
            subnqn,
            secure_channel: false,
        })
    }
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
        p.check_supported()?;
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
        target().default_tgt().config = serde_json::to_value(&p).unwrap_or(Value::Null);
        Ok(json!(true))
    });
    method(reg, "nvmf_set_max_subsystems", any, |p: MaxSubsystems| {
        if p.max_subsystems == 0 {
            return Err(NvmfError::param("max_subsystems must be at least 1"));
        }
        target().default_tgt().max_subsystems = p.max_subsystems;
        Ok(json!(true))
    });
    method(reg, "nvmf_set_crdt", any, |p: Crdt| {
        target().default_tgt().crdt = [p.crdt1, p.crdt2, p.crdt3];
        Ok(json!(true))
    });
    method(reg, "nvmf_create_transport", any, |o: TransportOpts| {
        o.validate()?;
        for what in o.no_effect() {
            tracing::warn!(
                "nvmf_create_transport: {what} has no effect: rspdk's TCP queue pairs own their data buffers, sized by max_queue_depth and max_io_size (iobuf_set_options sizes the shared pools)"
            );
        }
        let mut all = target();
        let t = all.tgt(o.tgt_name.as_deref())?;
        if t.transport.is_some() {
            return Err(NvmfError::Exists {
                kind: "transport",
                name: format!("TCP on target {}", t.name),
            });
        }
        t.transport = Some(TransportOpts {
            trtype: "TCP".into(),
            tgt_name: None,
            ..o
        });
        Ok(json!(true))
    });
    method(reg, "nvmf_get_transports", any, |p: TgtOnly| {
        let mut all = target();
        let t = all.tgt(p.tgt_name.as_deref())?;
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
        p.check_supported()?;
        target().tgt(p.tgt_name.as_deref())?.create_subsystem(
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
        target()
            .tgt(p.tgt_name.as_deref())?
            .delete_subsystem(&p.nqn)?;
        bump();
        Ok(json!(true))
    });
    method(
        reg,
        "nvmf_subsystem_add_listener",
        rt,
        |p: ListenerParams| {
            p.check_supported()?;
            target()
                .tgt(p.tgt_name.as_deref())?
                .add_listener(&p.nqn, &p.listen_address)?;
            bump();
            Ok(json!(true))
        },
    );
    method(
        reg,
        "nvmf_subsystem_remove_listener",
        rt,
        |p: ListenerParams| {
            target()
                .tgt(p.tgt_name.as_deref())?
                .remove_listener(&p.nqn, &p.listen_address)?;
            bump();
            Ok(json!(true))
        },
    );
    method(reg, "nvmf_subsystem_add_ns", rt, |p: AddNs| {
        let n = &p.namespace;
        n.check_supported()?;
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
        let nsid = target().tgt(p.tgt_name.as_deref())?.add_ns(
            &p.nqn,
            &n.bdev_name,
            n.nsid,
            uuid,
            nguid,
            eui64,
            n.no_auto_visible,
        )?;
        Ok(json!(nsid))
    });
    method(reg, "nvmf_subsystem_remove_ns", rt, |p: RemoveNs| {
        target()
            .tgt(p.tgt_name.as_deref())?
            .remove_ns(&p.nqn, p.nsid)?;
        Ok(json!(true))
    });
    method(reg, "nvmf_create_target", rt, |p: CreateTarget| {
        if let Some(f) = p.discovery_filter.as_deref().filter(|f| *f != "match_any") {
            return Err(NvmfError::param(format!(
                "discovery_filter '{f}': a target's discovery log page lists every listener of the subsystems a host may use (match_any); other filters are not supported by rspdk yet; omit it"
            )));
        }
        if let Some(d) = p.dup_host_policy.as_deref().filter(|d| *d != "allow") {
            return Err(NvmfError::param(format!(
                "dup_host_policy '{d}': only 'allow' is supported by rspdk yet; omit it"
            )));
        }
        if p.max_subsystems == Some(0) {
            return Err(NvmfError::param("max_subsystems must be at least 1"));
        }
        target().create_tgt(&p.name, p.max_subsystems.unwrap_or(0))?;
        Ok(json!(p.name))
    });
    method(reg, "nvmf_delete_target", rt, |p: DeleteTarget| {
        target().delete_tgt(&p.name)?;
        bump();
        Ok(json!(true))
    });
    reg_get_targets(reg);
    method(reg, "nvmf_ns_add_host", rt, |p: NsHostParams| {
        target()
            .tgt(p.tgt_name.as_deref())?
            .ns_set_visible(&p.nqn, p.nsid, &p.host, true)?;
        Ok(json!(true))
    });
    method(reg, "nvmf_ns_remove_host", rt, |p: NsHostParams| {
        target()
            .tgt(p.tgt_name.as_deref())?
            .ns_set_visible(&p.nqn, p.nsid, &p.host, false)?;
        Ok(json!(true))
    });
    method(reg, "nvmf_subsystem_add_host", rt, |p: HostParams| {
        p.check_supported()?;
        let s = target().tgt(p.tgt_name.as_deref())?.get(&p.nqn)?;
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
        p.check_supported()?;
        let s = target().tgt(p.tgt_name.as_deref())?.get(&p.nqn)?;
        let mut h = lock(&s.hosts);
        let n = h.len();
        h.retain(|x| *x != p.host);
        if h.len() == n {
            return Err(NvmfError::NotFound {
                kind: "host",
                name: p.host,
            });
        }
        drop(h);
        // As SPDK: the host's controllers on this subsystem end now (their
        // connections close at their next poll), unless any host may
        // connect anyway.
        if !s.allow_any_host.load(Ordering::Acquire) {
            for c in lock(&s.controllers).iter().filter(|c| c.hostnqn == p.host) {
                c.dead.store(true, Ordering::Release);
            }
        }
        bump();
        Ok(json!(true))
    });
    method(reg, "nvmf_subsystem_allow_any_host", rt, |p: AllowAny| {
        let s = target().tgt(p.tgt_name.as_deref())?.get(&p.nqn)?;
        s.allow_any_host.store(p.allow_any_host, Ordering::Release);
        bump();
        Ok(json!(true))
    });
    method(reg, "nvmf_get_subsystems", rt, |p: GetSubsystems| {
        let mut all = target();
        let t = all.tgt(p.tgt_name.as_deref())?;
        let list: Vec<Value> = match &p.nqn {
            Some(n) => vec![t.get(n)?.info_json()],
            None => t.subsystems.iter().map(|s| s.info_json()).collect(),
        };
        Ok(Value::Array(list))
    });
    method(reg, "nvmf_subsystem_get_controllers", rt, |p: NqnParam| {
        let s = target().tgt(p.tgt_name.as_deref())?.get(&p.nqn)?;
        let t = target();
        let list: Vec<Value> = lock(&s.controllers)
            .iter()
            .map(|c| {
                let io = t
                    .qpairs
                    .values()
                    .filter(|q| {
                        q.tgt == s.tgt && q.nqn == s.nqn && q.cntlid == c.cntlid && q.qid > 0
                    })
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
    method(reg, "nvmf_subsystem_get_listeners", rt, |p: NqnParam| {
        let s = target().tgt(p.tgt_name.as_deref())?.get(&p.nqn)?;
        // Every path is optimized (no ANA reporting): one state per ANA
        // group, and each namespace is its own group, as SPDK numbers them.
        let groups: Vec<Value> = lock(&s.namespaces)
            .keys()
            .map(|nsid| json!({"ana_group": nsid, "ana_state": "optimized"}))
            .collect();
        let list: Vec<Value> = lock(&s.listeners)
            .iter()
            .map(|l| json!({"address": l, "secure_channel": false, "ana_states": groups}))
            .collect();
        Ok(Value::Array(list))
    });
    method(
        reg,
        "nvmf_discovery_add_referral",
        rt,
        |p: ReferralParams| {
            let r = p.referral()?;
            let mut all = target();
            let t = all.tgt(p.tgt_name.as_deref())?;
            if t.referrals.contains(&r) {
                return Err(NvmfError::Exists {
                    kind: "referral",
                    name: format!("{}:{} ({})", r.address.traddr, r.address.trsvcid, r.subnqn),
                });
            }
            t.referrals.push(r);
            drop(all);
            bump();
            Ok(json!(true))
        },
    );
    method(
        reg,
        "nvmf_discovery_remove_referral",
        rt,
        |p: ReferralParams| {
            let r = p.referral()?;
            let mut all = target();
            let t = all.tgt(p.tgt_name.as_deref())?;
            let n = t.referrals.len();
            t.referrals.retain(|x| *x != r);
            if t.referrals.len() == n {
                return Err(NvmfError::NotFound {
                    kind: "referral",
                    name: format!("{}:{} ({})", r.address.traddr, r.address.trsvcid, r.subnqn),
                });
            }
            drop(all);
            bump();
            Ok(json!(true))
        },
    );
    method(reg, "nvmf_discovery_get_referrals", rt, |p: TgtOnly| {
        if p.trtype.is_some() {
            return Err(NvmfError::param(
                "trtype: not a parameter of nvmf_discovery_get_referrals; omit it",
            ));
        }
        Ok(json!(target().tgt(p.tgt_name.as_deref())?.referrals))
    });
    method(reg, "nvmf_subsystem_get_qpairs", rt, |p: NqnParam| {
        let mut t = target();
        let s = t.tgt(p.tgt_name.as_deref())?.get(&p.nqn)?;
        let list: Vec<Value> = t
            .qpairs
            .values()
            .filter(|q| q.tgt == s.tgt && q.nqn == s.nqn)
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
    method(reg, "nvmf_get_stats", rt, |p: TgtOnly| {
        let mut t = target();
        // The poll groups serve every target's connections (one per
        // reactor, as SPDK's per-target groups would be); the name is
        // checked.
        t.tgt(p.tgt_name.as_deref())?;
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

/// `nvmf_get_targets`: the targets' names (SPDK refuses any params).
fn reg_get_targets(reg: &RpcRegistry) {
    let r = reg.register(
        "nvmf_get_targets",
        StateMask::RUNTIME,
        |p: Option<Value>, resp: Responder| {
            if let Err(e) = rspdk_rpc::expect_no_params("nvmf_get_targets", &p) {
                return resp.error(e);
            }
            let names: Vec<String> = target().tgts.iter().map(|t| t.name.clone()).collect();
            resp.success(&names)
        },
    );
    if let Err(e) = r {
        tracing::error!(method = "nvmf_get_targets", error = %e, "RPC method registration failed");
    }
}

/// The `nvmf` subsystem's save_config entries.
pub fn config_json() -> Vec<Value> {
    // As SPDK's nvmf subsystem: the default target only (targets made by
    // nvmf_create_target are not saved).
    let mut all = target();
    let t = all.default_tgt();
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
    for r in &t.referrals {
        out.push(json!({"method": "nvmf_discovery_add_referral", "params": r}));
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
            let mut spec = json!({
                "nsid": ns.nsid,
                "bdev_name": ns.bdev_name,
                "uuid": crate::target::uuid_string(&ns.uuid),
                "nguid": ns.nguid.iter().map(|x| format!("{x:02X}")).collect::<String>(),
            });
            // An EUI64 of zero means none was given (Identify reports none).
            if ns.eui64 != [0; 8] {
                spec["eui64"] = json!(ns
                    .eui64
                    .iter()
                    .map(|x| format!("{x:02X}"))
                    .collect::<String>());
            }
            spec["no_auto_visible"] = json!(!ns.auto_visible);
            out.push(json!({"method": "nvmf_subsystem_add_ns", "params": {
                "nqn": s.nqn,
                "namespace": spec,
            }}));
        }
    }
    // As SPDK: the namespaces' hosts once every namespace is there.
    for s in &t.subsystems {
        for ns in lock(&s.namespaces).values() {
            for h in lock(&ns.hosts).iter() {
                out.push(json!({"method": "nvmf_ns_add_host", "params": {
                    "nqn": s.nqn, "nsid": ns.nsid, "host": h,
                }}));
            }
        }
    }
    out
}
