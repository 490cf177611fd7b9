//! The trace RPCs (SPDK: lib/trace/trace_rpc.c): group and tracepoint masks,
//! the trace file's path, clearing the rings. Names, parameters and result
//! shapes are SPDK's.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use rspdk_rpc::{parse_params, RpcError, RpcRegistry, StateMask};

use crate::rpc_methods::no_params;
use rspdk_trace::group;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupParam {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaskParam {
    name: String,
    tpoint_mask: u64,
}

fn invalid(e: rspdk_trace::TraceError) -> RpcError {
    RpcError::invalid_params(format!("invalid params: {e}"))
}

/// `{group: {mask, tpoint_mask}}` for every group, as SPDK's
/// `trace_get_info` and `trace_get_tpoint_group_mask` write them.
fn groups_json(with_tpoints: bool) -> Map<String, Value> {
    let mut out = Map::new();
    for (id, name) in group::ALL {
        let mask = rspdk_trace::tpoint_mask(*id);
        let mut g = Map::new();
        if with_tpoints {
            g.insert("enabled".into(), json!(mask != 0));
        }
        g.insert("mask".into(), json!(format!("0x{:x}", 1u64 << id)));
        g.insert("tpoint_mask".into(), json!(format!("0x{mask:x}")));
        if with_tpoints {
            let tps: Vec<Value> = rspdk_trace::group_tpoints(*id)
                .into_iter()
                .map(|(n, tp)| json!({"name": tp, "tpoint_id": n, "enabled": mask & (1 << n) != 0}))
                .collect();
            g.insert("tpoints".into(), Value::Array(tps));
        }
        out.insert(name.to_string(), Value::Object(g));
    }
    out
}

/// Registers the trace methods.
pub(crate) fn register(reg: &RpcRegistry) -> Result<(), rspdk_rpc::Error> {
    let both = StateMask::ALL;
    for (name, enable) in [
        ("trace_enable_tpoint_group", true),
        ("trace_disable_tpoint_group", false),
    ] {
        reg.register(name, both, move |p, r| {
            let p: GroupParam = match parse_params(p) {
                Ok(p) => p,
                Err(e) => return r.error(e),
            };
            let res = if enable {
                rspdk_trace::enable_group(&p.name)
            } else {
                rspdk_trace::disable_group(&p.name)
            };
            match res {
                Ok(()) => r.success(&true),
                Err(e) => r.error(invalid(e)),
            }
        })?;
    }
    for (name, set) in [
        ("trace_set_tpoint_mask", true),
        ("trace_clear_tpoint_mask", false),
    ] {
        reg.register(name, both, move |p, r| {
            let p: MaskParam = match parse_params(p) {
                Ok(p) => p,
                Err(e) => return r.error(e),
            };
            let res = if set {
                rspdk_trace::set_tpoint_mask(&p.name, p.tpoint_mask)
            } else {
                rspdk_trace::clear_tpoint_mask(&p.name, p.tpoint_mask)
            };
            match res {
                Ok(()) => r.success(&true),
                Err(e) => r.error(invalid(e)),
            }
        })?;
    }
    reg.register("trace_get_tpoint_group_mask", both, |p, r| {
        let Some(r) = no_params("trace_get_tpoint_group_mask", &p, r) else {
            return;
        };
        let mut out = Map::new();
        out.insert(
            "tpoint_group_mask".into(),
            json!(format!("0x{:x}", rspdk_trace::group_mask())),
        );
        out.extend(groups_json(true));
        r.success(&Value::Object(out));
    })?;
    reg.register("trace_get_info", both, |p, r| {
        let Some(r) = no_params("trace_get_info", &p, r) else {
            return;
        };
        let path = match rspdk_trace::ensure_file() {
            Ok(p) => p,
            Err(e) => return r.error(RpcError::internal_error(e.to_string())),
        };
        let mut out = Map::new();
        out.insert("tpoint_shm_path".into(), json!(path.display().to_string()));
        out.insert(
            "tpoint_group_mask".into(),
            json!(format!("0x{:x}", rspdk_trace::group_mask())),
        );
        out.extend(groups_json(false));
        r.success(&Value::Object(out));
    })?;
    reg.register("trace_clear", StateMask::RUNTIME, |p, r| {
        let Some(r) = no_params("trace_clear", &p, r) else {
            return;
        };
        rspdk_trace::clear();
        r.success(&true);
    })?;
    Ok(())
}
