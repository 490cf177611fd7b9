//! Subcommands that do more than one call with their arguments
//! (save_config, load_config, rpc.py's argument reshaping).

use std::io::Read;
use std::path::PathBuf;

use clap::ArgMatches;
use serde_json::{json, Map, Value};

use rspdk_util::outln;

use crate::ctx::{CliError, Ctx};
use crate::pyjson::to_python_json;
use crate::spec::Output;

pub(crate) fn run_kill_instance(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    match ctx.call("spdk_kill_instance", params) {
        // The instance may exit before answering; rpc.py ignores that.
        Err(CliError::Message(msg)) if msg.starts_with("Connection closed") => Ok(()),
        other => other.map(|_| ()),
    }
}

/// `-t/--trtype` is required (rpc.py's `required=True`).
pub(crate) fn run_nvmf_create_transport(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    if !params.contains_key("trtype") {
        return Err(CliError::Message(
            "nvmf_create_transport: -t/--trtype is required".into(),
        ));
    }
    ctx.call("nvmf_create_transport", params).map(|_| ())
}

/// `-t -a -f -s` become the `listen_address` object.
pub(crate) fn nvmf_listener(
    ctx: &mut Ctx,
    method: &str,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    ctx.call(
        method,
        nest(
            params,
            "listen_address",
            &["trtype", "traddr", "adrfam", "trsvcid"],
        ),
    )
    .map(|_| ())
}

/// Moves `keys` of `params` into an object under `into` (rpc.py builds
/// `listen_address` and `namespace` this way).
pub(crate) fn nest(
    mut params: Map<String, Value>,
    into: &str,
    keys: &[&str],
) -> Map<String, Value> {
    let mut inner = Map::new();
    for k in keys {
        if let Some(v) = params.remove(*k) {
            inner.insert(k.to_string(), v);
        }
    }
    params.insert(into.to_string(), Value::Object(inner));
    params
}

pub(crate) fn run_nvmf_add_listener(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    nvmf_listener(ctx, "nvmf_subsystem_add_listener", params)
}

pub(crate) fn run_nvmf_remove_listener(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    nvmf_listener(ctx, "nvmf_subsystem_remove_listener", params)
}

/// `bdev_name -n -u -g -e` become the `namespace` object.
pub(crate) fn run_nvmf_add_ns(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    let params = nest(
        params,
        "namespace",
        &["bdev_name", "nsid", "nguid", "eui64", "uuid"],
    );
    let result = ctx.call("nvmf_subsystem_add_ns", params)?;
    ctx.print(Output::Json, &result);
    Ok(())
}

/// `-e` / `-d` become `allow_any_host`.
pub(crate) fn run_nvmf_allow_any_host(
    ctx: &mut Ctx,
    _: &ArgMatches,
    mut params: Map<String, Value>,
) -> Result<(), CliError> {
    let enable = params.remove("enable") == Some(Value::Bool(true));
    let disable = params.remove("disable") == Some(Value::Bool(true));
    if enable == disable {
        return Err(CliError::Message(
            "nvmf_subsystem_allow_any_host: give exactly one of -e/--enable or -d/--disable".into(),
        ));
    }
    params.insert("allow_any_host".into(), Value::Bool(enable));
    ctx.call("nvmf_subsystem_allow_any_host", params)
        .map(|_| ())
}

/// rpc.py's bdev_malloc_create / bdev_null_create: `total_size` in MB and
/// `block_size` become `num_blocks`.
pub(crate) fn run_size_to_blocks(
    ctx: &mut Ctx,
    _: &ArgMatches,
    mut params: Map<String, Value>,
) -> Result<(), CliError> {
    let method = ctx.method_name;
    let total_mb = params
        .remove("total_size")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| CliError::Message("total_size must be a number of MB".into()))?;
    let block_size = params
        .get("block_size")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if block_size == 0 {
        return Err(CliError::Message(
            "block_size must be greater than 0".into(),
        ));
    }
    let num_blocks = (total_mb * 1024.0 * 1024.0) as u64 / block_size;
    params.insert("num_blocks".into(), json!(num_blocks));
    let result = ctx.call(method, params)?;
    ctx.print(Output::JsonUnquoted, &result);
    Ok(())
}

pub(crate) fn words(params: &Map<String, Value>, key: &str) -> Vec<String> {
    params
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

pub(crate) fn run_iscsi_create_portal_group(
    ctx: &mut Ctx,
    _: &ArgMatches,
    mut params: Map<String, Value>,
) -> Result<(), CliError> {
    let mut portals = Vec::new();
    for p in words(&params, "portal_list") {
        let (host, port) = match p.rsplit_once(':') {
            Some((h, port)) => (h.to_string(), port.to_string()),
            None => (p.clone(), "3260".to_string()),
        };
        portals.push(json!({"host": host, "port": port}));
    }
    params.remove("portal_list");
    params.insert("portals".into(), Value::Array(portals));
    ctx.call("iscsi_create_portal_group", params).map(|_| ())
}

pub(crate) fn run_iscsi_create_initiator_group(
    ctx: &mut Ctx,
    _: &ArgMatches,
    mut params: Map<String, Value>,
) -> Result<(), CliError> {
    let initiators = words(&params, "initiator_list");
    let netmasks = words(&params, "netmask_list");
    params.remove("initiator_list");
    params.remove("netmask_list");
    params.insert("initiators".into(), json!(initiators));
    params.insert("netmasks".into(), json!(netmasks));
    ctx.call("iscsi_create_initiator_group", params).map(|_| ())
}

pub(crate) fn run_iscsi_create_target_node(
    ctx: &mut Ctx,
    _: &ArgMatches,
    mut params: Map<String, Value>,
) -> Result<(), CliError> {
    let mut luns = Vec::new();
    for pair in words(&params, "bdev_name_id_pairs") {
        let (bdev, id) = pair
            .rsplit_once(':')
            .ok_or_else(|| CliError::Message(format!("'{pair}' is not <bdev name:LUN ID>")))?;
        let id: i64 = id
            .parse()
            .map_err(|_| CliError::Message(format!("bad LUN ID in '{pair}'")))?;
        luns.push(json!({"bdev_name": bdev, "lun_id": id}));
    }
    let mut maps = Vec::new();
    for m in words(&params, "pg_ig_mappings") {
        let (pg, ig) = m
            .split_once(':')
            .ok_or_else(|| CliError::Message(format!("'{m}' is not <pg tag:ig tag>")))?;
        let pg: i64 = pg
            .parse()
            .map_err(|_| CliError::Message(format!("bad portal group tag in '{m}'")))?;
        let ig: i64 = ig
            .parse()
            .map_err(|_| CliError::Message(format!("bad initiator group tag in '{m}'")))?;
        maps.push(json!({"pg_tag": pg, "ig_tag": ig}));
    }
    params.remove("bdev_name_id_pairs");
    params.remove("pg_ig_mappings");
    params.insert("luns".into(), Value::Array(luns));
    params.insert("pg_ig_maps".into(), Value::Array(maps));
    ctx.call("iscsi_create_target_node", params).map(|_| ())
}

pub(crate) fn run_iscsi_delete_target_node(
    ctx: &mut Ctx,
    _: &ArgMatches,
    mut params: Map<String, Value>,
) -> Result<(), CliError> {
    if let Some(n) = params.remove("target_node_name") {
        params.insert("name".into(), n);
    }
    ctx.call("iscsi_delete_target_node", params).map(|_| ())
}

pub(crate) fn run_raw_call(
    ctx: &mut Ctx,
    matches: &ArgMatches,
    _: Map<String, Value>,
) -> Result<(), CliError> {
    let method = matches
        .get_one::<String>("method")
        .cloned()
        .unwrap_or_default();
    let params = match matches.get_one::<String>("params") {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(CliError::Message("params must be a JSON object".into())),
            Err(e) => return Err(CliError::Message(format!("invalid JSON params: {e}"))),
        },
    };
    let result = ctx.call(&method, params)?;
    ctx.print(Output::Json, &result);
    Ok(())
}

pub(crate) fn run_save_config(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    let indent = params.get("indent").and_then(Value::as_i64).unwrap_or(2);
    let with_batches = params
        .get("with_batches")
        .cloned()
        .unwrap_or(Value::Bool(false));
    let subsystems = ctx.call("framework_get_subsystems", Map::new())?;
    let subsystems = subsystems.as_array().cloned().unwrap_or_default();
    // Expand each subsystem to itself plus its transitive dependencies
    // (subsystems are listed in init order, so dependencies come first).
    let mut dependencies: Vec<(String, Vec<String>)> = Vec::new();
    for elem in &subsystems {
        let name = elem["subsystem"].as_str().unwrap_or_default().to_string();
        let mut deps = vec![name.clone()];
        for dep in elem["depends_on"].as_array().into_iter().flatten() {
            if let Some((_, expanded)) = dependencies
                .iter()
                .find(|(n, _)| Some(n.as_str()) == dep.as_str())
            {
                deps.extend(expanded.iter().cloned());
            }
        }
        dependencies.push((name, deps));
    }
    let wanted: Option<Vec<String>> =
        params
            .get("subsystems")
            .and_then(Value::as_str)
            .map(|list| {
                list.split(',')
                    .flat_map(|s| {
                        dependencies
                            .iter()
                            .find(|(n, _)| n == s)
                            .map(|(_, d)| d.clone())
                            .unwrap_or_default()
                    })
                    .collect()
            });
    let mut config = Vec::new();
    for (name, _) in &dependencies {
        if wanted.as_ref().is_some_and(|w| !w.contains(name)) {
            continue;
        }
        let mut get = Map::new();
        get.insert("name".into(), json!(name));
        get.insert("with_batches".into(), with_batches.clone());
        let cfg = ctx.call("framework_get_config", get)?;
        config.push(json!({"subsystem": name, "config": cfg}));
    }
    let indent = usize::try_from(indent).ok();
    if !ctx.dry_run {
        outln!("{}", to_python_json(&json!({"subsystems": config}), indent));
    }
    Ok(())
}

pub(crate) fn method_allowed(elem: &Value, allowed: &[String]) -> bool {
    elem.get("method")
        .and_then(Value::as_str)
        .is_some_and(|m| allowed.iter().any(|a| a == m))
}

pub(crate) fn call_config_elem(ctx: &mut Ctx, elem: &Value) -> Result<(), CliError> {
    let method = elem["method"].as_str().unwrap_or_default().to_string();
    let params = elem
        .get("params")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    ctx.call(&method, params).map(|_| ())
}

pub(crate) fn get_methods(
    ctx: &mut Ctx,
    current: bool,
    include_aliases: bool,
) -> Result<Vec<String>, CliError> {
    let mut params = Map::new();
    if current {
        params.insert("current".into(), json!(true));
    }
    params.insert("include_aliases".into(), json!(include_aliases));
    let names = ctx.call("rpc_get_methods", params)?;
    Ok(serde_json::from_value(names).unwrap_or_default())
}

/// rpc.py's `load_config`: apply entries whose methods are callable in the
/// current state, call framework_start_init when allowed, repeat until
/// nothing is left or no progress is possible.
pub(crate) fn run_load_config(
    ctx: &mut Ctx,
    _: &ArgMatches,
    params: Map<String, Value>,
) -> Result<(), CliError> {
    let include_aliases = params
        .get("include_aliases")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let text = match params.get("json_conf").and_then(Value::as_str) {
        Some(source) if PathBuf::from(source).exists() => std::fs::read_to_string(source)
            .map_err(|e| CliError::Message(format!("cannot read {source}: {e}")))?,
        Some(inline) => inline.to_string(),
        None => {
            let mut buf = String::new();
            std::io::stdin()
                .read_to_string(&mut buf)
                .map_err(|e| CliError::Message(format!("cannot read stdin: {e}")))?;
            buf
        }
    };
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Message(format!("invalid JSON configuration: {e}")))?;
    let mut subsystems: Vec<(String, Vec<Value>)> = config["subsystems"]
        .as_array()
        .ok_or_else(|| CliError::Message("configuration has no \"subsystems\" array".into()))?
        .iter()
        .map(|s| {
            (
                s["subsystem"].as_str().unwrap_or_default().to_string(),
                s["config"].as_array().cloned().unwrap_or_default(),
            )
        })
        .filter(|(_, cfg)| !cfg.is_empty())
        .collect();

    let allowed = get_methods(ctx, false, include_aliases)?;
    if subsystems.is_empty() {
        if allowed.iter().any(|m| m == "framework_start_init") {
            ctx.call("framework_start_init", Map::new())?;
        }
        return Ok(());
    }
    for (_, cfg) in &subsystems {
        for elem in cfg {
            let items: Vec<&Value> = match elem.as_array() {
                Some(batch) => batch.iter().collect(),
                None => vec![elem],
            };
            if !items.iter().all(|item| method_allowed(item, &allowed)) {
                return Err(CliError::Message(
                    "Unknown method was included in the config file".into(),
                ));
            }
        }
    }
    while !subsystems.is_empty() {
        let allowed = get_methods(ctx, true, include_aliases)?;
        let mut progressed = false;
        for (_, cfg) in subsystems.iter_mut() {
            let mut remaining = Vec::new();
            for elem in cfg.drain(..) {
                let items: Vec<Value> = match elem.as_array() {
                    Some(batch) => batch.clone(),
                    None => vec![elem.clone()],
                };
                if items.iter().all(|item| method_allowed(item, &allowed)) {
                    for item in &items {
                        call_config_elem(ctx, item)?;
                    }
                    progressed = true;
                } else {
                    remaining.push(elem);
                }
            }
            *cfg = remaining;
        }
        subsystems.retain(|(_, cfg)| !cfg.is_empty());
        if allowed.iter().any(|m| m == "framework_start_init") {
            ctx.call("framework_start_init", Map::new())?;
            progressed = true;
        }
        if !progressed || ctx.dry_run {
            break;
        }
    }
    if !subsystems.is_empty() {
        outln!("Some configs were skipped because the RPC state that can call them passed over.");
    }
    Ok(())
}
