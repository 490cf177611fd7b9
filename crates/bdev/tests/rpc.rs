//! The bdev RPC methods through an in-process registry on an rspdk thread:
//! shapes, errors, and save_config -> load -> save_config round trip.

mod common;
use common::*;

use rspdk_rpc::{RpcRegistry, RpcState};
use rspdk_thread::testing::UtThreads;
use serde_json::{json, Value};

#[test]
fn methods_shapes_errors_and_config_round_trip() {
    env();
    let ut = UtThreads::new(1);
    let reg = RpcRegistry::new();
    rspdk_bdev::rpc::register_rpcs(&reg);
    reg.set_state(RpcState::Runtime);

    let name = call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "Malloc0", "num_blocks": 2048, "block_size": 512}),
    )
    .unwrap();
    assert_eq!(name, json!("Malloc0"));
    call(
        &ut,
        &reg,
        "bdev_null_create",
        json!({"name": "Null0", "num_blocks": 1000, "block_size": 4096}),
    )
    .unwrap();
    call(
        &ut,
        &reg,
        "bdev_set_qos_limit",
        json!({"name": "Null0", "rw_ios_per_sec": 20000}),
    )
    .unwrap();

    let list = call(&ut, &reg, "bdev_get_bdevs", Value::Null).unwrap();
    let m = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "Malloc0")
        .unwrap();
    assert_eq!(m["block_size"], 512);
    assert_eq!(m["num_blocks"], 2048);
    assert_eq!(m["product_name"], "Malloc disk");
    assert_eq!(m["supported_io_types"]["read"], true);
    assert_eq!(m["claimed"], false);
    assert!(m["uuid"].as_str().unwrap().len() == 36);
    let one = call(&ut, &reg, "bdev_get_bdevs", json!({"name": "Null0"})).unwrap();
    assert_eq!(one[0]["assigned_rate_limits"]["rw_ios_per_sec"], 20000);
    assert_eq!(one[0]["supported_io_types"]["compare"], false);

    let stat = call(&ut, &reg, "bdev_get_iostat", json!({"name": "Malloc0"})).unwrap();
    assert_eq!(stat["tick_rate"], 1_000_000_000u64);
    assert_eq!(stat["bdevs"][0]["name"], "Malloc0");
    assert_eq!(stat["bdevs"][0]["num_read_ops"], 0);

    // Errors name the problem.
    let e = call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "Malloc0", "num_blocks": 8, "block_size": 512}),
    )
    .unwrap_err();
    assert_eq!(e.code, -libc::EEXIST);
    assert!(e.message.contains("Malloc0"), "{}", e.message);
    let e = call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "B", "num_blocks": 8, "block_size": 1000}),
    )
    .unwrap_err();
    assert!(e.message.contains("power of two"), "{}", e.message);
    let e = call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "B", "num_blocks": 8, "block_size": 512, "bogus": 1}),
    )
    .unwrap_err();
    assert_eq!(e.code, -32602);
    assert!(e.message.contains("bogus"), "{}", e.message);
    let e = call(&ut, &reg, "bdev_malloc_delete", json!({"name": "nope"})).unwrap_err();
    assert_eq!(e.code, -libc::ENODEV);
    let e = call(
        &ut,
        &reg,
        "bdev_null_resize",
        json!({"name": "Null0", "new_size": 1}),
    )
    .unwrap_err();
    assert!(e.message.contains("only grow"), "{}", e.message);
    call(
        &ut,
        &reg,
        "bdev_null_resize",
        json!({"name": "Null0", "new_size": 8}),
    )
    .unwrap();

    // save_config -> delete everything -> load -> save_config: equal.
    let saved = rspdk_bdev::rpc::config_json();
    assert_eq!(saved.last().unwrap()["method"], "bdev_wait_for_examine");
    call(&ut, &reg, "bdev_malloc_delete", json!({"name": "Malloc0"})).unwrap();
    call(&ut, &reg, "bdev_null_delete", json!({"name": "Null0"})).unwrap();
    assert!(call(&ut, &reg, "bdev_get_bdevs", Value::Null)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["name"] != "Malloc0"));
    for entry in &saved {
        let method = entry["method"].as_str().unwrap();
        reg.set_state(if method == "bdev_set_options" {
            RpcState::Startup
        } else {
            RpcState::Runtime
        });
        call(
            &ut,
            &reg,
            method,
            entry.get("params").cloned().unwrap_or(Value::Null),
        )
        .unwrap();
    }
    let again = rspdk_bdev::rpc::config_json();
    let mine = |v: &Vec<Value>| -> Vec<Value> {
        v.iter()
            .filter(|e| e.to_string().contains("Malloc0") || e.to_string().contains("Null0"))
            .cloned()
            .collect()
    };
    assert_eq!(mine(&saved), mine(&again));
    assert_eq!(mine(&saved).len(), 3, "malloc, null, qos: {saved:#?}");
}
