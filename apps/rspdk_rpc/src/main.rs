//! `rspdk_rpc`: command-line JSON-RPC client mirroring SPDK's `scripts/rpc.py`
//! (same global flags, subcommand names, argument names, JSON params, output
//! and exit codes).
//!
//! Subcommands are declared in [`table`], one file per area: one
//! [`spec::MethodSpec`] per RPC, built from a few chained calls. Most methods
//! need only their arguments; those that do more than one call (save_config,
//! load_config) or need special handling get a custom runner
//! ([`runners`]).

mod ctx;
mod pyjson;
mod runners;
mod spec;
mod table;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::ArgMatches;

use rspdk_rpc::{Error, ListenAddr, RpcClient, DEFAULT_SOCKET_PATH};
use rspdk_util::outln;

pub(crate) use ctx::{CliError, Ctx};
use spec::{build_cli, collect_params};
use table::method_table;

fn server_address(matches: &ArgMatches) -> ListenAddr {
    let addr = matches
        .get_one::<String>("server_addr")
        .cloned()
        .unwrap_or_else(|| DEFAULT_SOCKET_PATH.into());
    let port = matches.get_one::<u16>("port").copied().unwrap_or(5260);
    match addr.parse::<IpAddr>() {
        Ok(ip) => ListenAddr::Tcp((ip, port).into()),
        Err(_) => ListenAddr::Unix(PathBuf::from(addr)),
    }
}

fn connect(matches: &ArgMatches, timeout: Duration) -> Result<RpcClient, Error> {
    let addr = server_address(matches);
    let retries = matches.get_one::<u32>("conn_retries").copied().unwrap_or(0);
    for _ in 0..retries {
        if let Ok(client) = RpcClient::connect(&addr, timeout) {
            return Ok(client);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    RpcClient::connect(&addr, timeout)
}

fn main() -> ExitCode {
    let table = method_table();
    let matches = build_cli(&table).get_matches();
    let timeout = matches.get_one::<f64>("timeout").copied().unwrap_or(60.0);
    if !(timeout > 0.0 && timeout.is_finite()) {
        outln!("Timeout value is invalid: {timeout}");
        return ExitCode::FAILURE;
    }
    let verbose = matches.get_flag("v")
        || matches
            .get_one::<String>("verbose")
            .is_some_and(|level| level != "ERROR");
    let dry_run = matches.get_flag("dry_run");

    let Some((name, sub_matches)) = matches.subcommand() else {
        return ExitCode::FAILURE;
    };
    let Some(spec) = table.iter().find(|spec| spec.name == name) else {
        return ExitCode::FAILURE;
    };

    let client = if dry_run {
        None
    } else {
        match connect(&matches, Duration::from_secs_f64(timeout)) {
            Ok(client) => Some(client),
            Err(err) => {
                outln!("{err}");
                return ExitCode::FAILURE;
            }
        }
    };
    let mut ctx = Ctx {
        client,
        dry_run,
        verbose,
        method_name: spec.name,
    };
    let params = collect_params(spec, sub_matches);
    let outcome = match spec.runner {
        Some(runner) => runner(&mut ctx, sub_matches, params),
        None => ctx
            .call(spec.name, params)
            .map(|result| ctx.print(spec.output, &result)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Message(message)) => {
            outln!("{message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pyjson::to_python_json;
    use crate::runners::nest;
    use serde_json::{json, Value};

    #[test]
    fn python_json_matches_json_dumps() {
        let value = json!({"a": [1, {"b": "é"}], "c": {}});
        assert_eq!(
            to_python_json(&value, None),
            r#"{"a": [1, {"b": "\u00e9"}], "c": {}}"#
        );
        assert_eq!(
            to_python_json(&json!({"a": [1]}), Some(2)),
            "{\n  \"a\": [\n    1\n  ]\n}"
        );
    }

    #[test]
    fn table_builds_a_valid_cli() {
        build_cli(&method_table()).debug_assert();
    }

    #[test]
    fn nvmf_params_follow_rpc_py() {
        let table = method_table();
        let cli = build_cli(&table);
        let params = |args: &[&str]| {
            let m = cli.clone().try_get_matches_from(args).unwrap();
            let (name, sub) = m.subcommand().unwrap();
            let spec = table.iter().find(|s| s.name == name).unwrap();
            collect_params(spec, sub)
        };
        let p = params(&[
            "rspdk_rpc",
            "nvmf_subsystem_add_listener",
            "nqn.2016-06.io.spdk:cnode1",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            "4420",
            "-f",
            "ipv4",
        ]);
        assert_eq!(
            Value::Object(nest(
                p,
                "listen_address",
                &["trtype", "traddr", "adrfam", "trsvcid"]
            )),
            json!({"nqn": "nqn.2016-06.io.spdk:cnode1", "listen_address":
                {"trtype": "tcp", "traddr": "127.0.0.1", "adrfam": "ipv4", "trsvcid": "4420"}})
        );
        let p = params(&[
            "rspdk_rpc",
            "nvmf_subsystem_add_ns",
            "nqn.2016-06.io.spdk:cnode1",
            "Malloc0",
            "-n",
            "3",
        ]);
        assert_eq!(
            Value::Object(nest(
                p,
                "namespace",
                &["bdev_name", "nsid", "nguid", "eui64", "uuid"]
            )),
            json!({"nqn": "nqn.2016-06.io.spdk:cnode1", "namespace": {"bdev_name": "Malloc0", "nsid": 3}})
        );
        let p = params(&[
            "rspdk_rpc",
            "nvmf_create_subsystem",
            "nqn.2016-06.io.spdk:cnode1",
            "-a",
            "-s",
            "SPDK1",
            "-m",
            "8",
        ]);
        assert_eq!(
            Value::Object(p),
            json!({"nqn": "nqn.2016-06.io.spdk:cnode1", "serial_number": "SPDK1",
                   "allow_any_host": true, "max_namespaces": 8})
        );
        let p = params(&[
            "rspdk_rpc",
            "nvmf_create_transport",
            "-t",
            "TCP",
            "-u",
            "16384",
            "-c",
            "8192",
        ]);
        assert_eq!(
            Value::Object(p),
            json!({"trtype": "TCP", "in_capsule_data_size": 8192, "io_unit_size": 16384})
        );
    }

    #[test]
    fn params_follow_rpc_py() {
        let table = method_table();
        let cli = build_cli(&table);
        let matches = cli
            .try_get_matches_from(["rspdk_rpc", "rpc_get_methods", "--current"])
            .unwrap();
        let (name, sub) = matches.subcommand().unwrap();
        let spec = table.iter().find(|s| s.name == name).unwrap();
        assert_eq!(
            Value::Object(collect_params(spec, sub)),
            json!({"current": true, "include_aliases": false})
        );
    }
}
