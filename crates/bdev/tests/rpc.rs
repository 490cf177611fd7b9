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
    // Other tests in this process create bdevs concurrently: replay only
    // this test's entries and the layer-wide ones.
    for entry in saved.iter().filter(|e| {
        let s = e.to_string();
        s.contains("Malloc0")
            || s.contains("Null0")
            || e["method"] == "bdev_set_options"
            || e["method"] == "bdev_wait_for_examine"
    }) {
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

fn setup() -> (UtThreads, RpcRegistry) {
    env();
    let ut = UtThreads::new(1);
    let reg = RpcRegistry::new();
    rspdk_bdev::rpc::register_rpcs(&reg);
    reg.set_state(RpcState::Runtime);
    (ut, reg)
}

fn bdev_info(ut: &UtThreads, reg: &RpcRegistry, name: &str) -> Value {
    call(ut, reg, "bdev_get_bdevs", json!({ "name": name })).unwrap()[0].clone()
}

fn saved_params(method: &str, name: &str) -> Value {
    rspdk_bdev::rpc::config_json()
        .into_iter()
        .find(|e| e["method"] == method && e["params"]["name"] == name)
        .unwrap_or_else(|| panic!("no {method} for {name} in save_config"))["params"]
        .clone()
}

#[test]
fn null_create_refuses_a_byte_size_that_overflows() {
    let (ut, reg) = setup();
    // 2^55 blocks of 512 bytes = 2^64 bytes: one past u64.
    let e = call(
        &ut,
        &reg,
        "bdev_null_create",
        json!({"name": "NullHuge", "num_blocks": 1u64 << 55, "block_size": 512}),
    )
    .unwrap_err();
    assert_eq!(e.code, -libc::EINVAL);
    assert!(e.message.contains("overflows"), "{}", e.message);
    assert!(
        e.message.contains(&format!("at most {}", u64::MAX / 512)),
        "{}",
        e.message
    );
    assert!(bdev_get_absent(&ut, &reg, "NullHuge"));
    // The largest size that fits is accepted and reported exactly.
    let max = u64::MAX / 4096;
    call(
        &ut,
        &reg,
        "bdev_null_create",
        json!({"name": "NullMax", "num_blocks": max, "block_size": 4096}),
    )
    .unwrap();
    assert_eq!(bdev_info(&ut, &reg, "NullMax")["num_blocks"], max);
    // Growing past 2^64 bytes through resize is refused too.
    let e = call(
        &ut,
        &reg,
        "bdev_null_resize",
        json!({"name": "NullMax", "new_size": u64::MAX}),
    )
    .unwrap_err();
    assert!(e.message.contains("overflows"), "{}", e.message);
    call(&ut, &reg, "bdev_null_delete", json!({"name": "NullMax"})).unwrap();
}

fn bdev_get_absent(ut: &UtThreads, reg: &RpcRegistry, name: &str) -> bool {
    call(ut, reg, "bdev_get_bdevs", json!({ "name": name })).is_err()
}

#[test]
fn duplicate_uuid_is_refused_naming_the_holder() {
    let (ut, reg) = setup();
    let uuid = "5e3c9a8e-0c56-4b9e-a0d4-6c2f3f4e5d01";
    call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "UuidA", "num_blocks": 64, "block_size": 512, "uuid": uuid}),
    )
    .unwrap();
    let e = call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "UuidB", "num_blocks": 64, "block_size": 512, "uuid": uuid}),
    )
    .unwrap_err();
    assert_eq!(e.code, -libc::EEXIST);
    assert!(e.message.contains("'UuidA'"), "{}", e.message);
    assert!(e.message.contains(uuid), "{}", e.message);
    assert!(bdev_get_absent(&ut, &reg, "UuidB"));
    // Across modules too.
    let e = call(
        &ut,
        &reg,
        "bdev_null_create",
        json!({"name": "UuidC", "num_blocks": 64, "block_size": 512, "uuid": uuid}),
    )
    .unwrap_err();
    assert!(e.message.contains("'UuidA'"), "{}", e.message);
    call(&ut, &reg, "bdev_malloc_delete", json!({"name": "UuidA"})).unwrap();
    // Free again once the holder is gone.
    call(
        &ut,
        &reg,
        "bdev_null_create",
        json!({"name": "UuidC", "num_blocks": 64, "block_size": 512, "uuid": uuid}),
    )
    .unwrap();
    call(&ut, &reg, "bdev_null_delete", json!({"name": "UuidC"})).unwrap();
}

#[test]
fn split_errors_name_the_problem_and_the_fix() {
    let (ut, reg) = setup();
    call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "SplitErr", "num_blocks": 4096, "block_size": 512}),
    )
    .unwrap();
    let err = |p: Value| call(&ut, &reg, "bdev_split_create", p).unwrap_err();
    let e = err(json!({"base_bdev": "NoSuchBase", "split_count": 2}));
    assert_eq!(e.code, -libc::ENODEV);
    assert_eq!(
        e.message,
        "base_bdev 'NoSuchBase' does not exist: create it first (bdev_get_bdevs lists the bdevs)"
    );
    let e = err(json!({"base_bdev": "SplitErr", "split_count": 0}));
    assert!(e.message.contains("split_count 0"), "{}", e.message);
    let e = err(json!({"base_bdev": "SplitErr", "split_count": 2, "split_size_mb": 2}));
    assert!(
        e.message.contains("exceeds base bdev 'SplitErr' (2 MiB)")
            && e.message.contains("at most 1 MiB per part"),
        "{}",
        e.message
    );
    let e = err(json!({"base_bdev": "SplitErr", "split_count": 2, "split_size_mb": u64::MAX}));
    assert!(
        e.message.contains("too large") && e.message.contains("at most 1 MiB"),
        "{}",
        e.message
    );
    let e = err(json!({"base_bdev": "SplitErr", "split_count": 5000}));
    assert!(
        e.message.contains("split_count at most 4096"),
        "{}",
        e.message
    );
    call(
        &ut,
        &reg,
        "bdev_split_create",
        json!({"base_bdev": "SplitErr", "split_count": 2}),
    )
    .unwrap();
    // Was: "bdev name 'SplitErr is already split (...)' is already in use".
    let e = err(json!({"base_bdev": "SplitErr", "split_count": 2}));
    assert_eq!(e.code, -libc::EEXIST);
    assert_eq!(
        e.message,
        "base_bdev 'SplitErr' is already split: bdev_split_delete it first"
    );
    // Was: "no bdev named 'split of SplitErrp0'".
    let e = call(
        &ut,
        &reg,
        "bdev_split_delete",
        json!({"base_bdev": "SplitErrp0"}),
    )
    .unwrap_err();
    assert_eq!(e.code, -libc::ENODEV);
    assert_eq!(
        e.message,
        "base_bdev 'SplitErrp0' is not split: give the base bdev that bdev_split_create split"
    );
    call(
        &ut,
        &reg,
        "bdev_split_delete",
        json!({"base_bdev": "SplitErr"}),
    )
    .unwrap();
    call(&ut, &reg, "bdev_malloc_delete", json!({"name": "SplitErr"})).unwrap();
}

#[test]
fn names_with_control_characters_are_refused() {
    let (ut, reg) = setup();
    for bad in [
        "a\nb",
        "evil\u{1b}[31mred",
        "tab\there",
        "nul\u{0}x",
        "del\u{7f}",
    ] {
        for (method, params) in [
            (
                "bdev_malloc_create",
                json!({"name": bad, "num_blocks": 64, "block_size": 512}),
            ),
            (
                "bdev_null_create",
                json!({"name": bad, "num_blocks": 64, "block_size": 512}),
            ),
            (
                "bdev_passthru_create",
                json!({"name": bad, "base_bdev_name": "Whatever"}),
            ),
            (
                "bdev_passthru_create",
                json!({"name": "PtCtl", "base_bdev_name": bad}),
            ),
        ] {
            let e = call(&ut, &reg, method, params).unwrap_err();
            assert_eq!(e.code, -libc::EINVAL, "{method} {bad:?}");
            assert!(
                e.message.contains("control character"),
                "{method} {bad:?}: {}",
                e.message
            );
            assert!(
                !e.message.contains('\n') && !e.message.contains('\u{1b}'),
                "the error itself must not carry the raw characters: {:?}",
                e.message
            );
        }
    }
    assert!(bdev_get_absent(&ut, &reg, "a\nb"));
    assert!(bdev_get_absent(&ut, &reg, "PtCtl"));
    // Printable non-ASCII is fine.
    call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "Dísk-ü", "num_blocks": 64, "block_size": 512}),
    )
    .unwrap();
    call(&ut, &reg, "bdev_malloc_delete", json!({"name": "Dísk-ü"})).unwrap();
}

#[test]
fn malloc_and_null_take_every_param_spdk_sends() {
    let (ut, reg) = setup();
    // What SPDK 26.05's rpc.py sends for
    // `bdev_malloc_create -b MallocP -p 4096 -f 0 -n -1 8 512` (total_size
    // 8 MiB becomes num_blocks).
    call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "MallocP", "num_blocks": 16384, "block_size": 512,
            "physical_block_size": 4096, "md_interleave": false,
            "dif_is_head_of_md": false, "dif_pi_format": 0, "numa_id": -1}),
    )
    .unwrap();
    let m = bdev_info(&ut, &reg, "MallocP");
    assert_eq!(m["numa_id"], -1);
    let saved = saved_params("bdev_malloc_create", "MallocP");
    assert_eq!(saved["physical_block_size"], 4096);
    assert_eq!(saved["numa_id"], -1);
    assert_eq!(saved["dif_pi_format"], 0);
    // A node with memory is used; one without is refused with the list.
    let node = rspdk_env::env().unwrap().sockets()[0];
    call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "MallocN", "num_blocks": 64, "block_size": 512, "numa_id": node}),
    )
    .unwrap();
    assert_eq!(bdev_info(&ut, &reg, "MallocN")["numa_id"], node);
    assert_eq!(
        saved_params("bdev_malloc_create", "MallocN")["numa_id"],
        node
    );
    let e = call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "MallocX", "num_blocks": 64, "block_size": 512, "numa_id": 63}),
    )
    .unwrap_err();
    assert!(
        e.message.contains("NUMA node 63") && e.message.contains("-1 for any"),
        "{}",
        e.message
    );
    for (k, v) in [
        ("dif_pi_format", json!(1)),
        ("dif_is_head_of_md", json!(true)),
    ] {
        let mut p = json!({"name": "MallocX", "num_blocks": 64, "block_size": 512});
        p[k] = v;
        let e = call(&ut, &reg, "bdev_malloc_create", p).unwrap_err();
        assert!(
            e.message.contains("not supported") && e.message.contains(k),
            "{k}: {}",
            e.message
        );
    }
    let e = call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "MallocX", "num_blocks": 64, "block_size": 512, "physical_block_size": 1000}),
    )
    .unwrap_err();
    assert!(
        e.message.contains("physical_block_size 1000"),
        "{}",
        e.message
    );

    // What rpc.py sends for `bdev_null_create -p 4096 -f 0 -a 8 -g 16 -s 32
    // -c 4 -r 64 NullP 8 512`.
    call(
        &ut,
        &reg,
        "bdev_null_create",
        json!({"name": "NullP", "num_blocks": 16384, "block_size": 512,
            "physical_block_size": 4096, "dif_is_head_of_md": false, "dif_pi_format": 0,
            "preferred_write_alignment": 8, "preferred_write_granularity": 16,
            "optimal_write_size": 32, "preferred_unmap_alignment": 4,
            "preferred_unmap_granularity": 64}),
    )
    .unwrap();
    let n = bdev_info(&ut, &reg, "NullP");
    let saved = saved_params("bdev_null_create", "NullP");
    for (k, v) in [
        ("preferred_write_alignment", 8),
        ("preferred_write_granularity", 16),
        ("optimal_write_size", 32),
        ("preferred_unmap_alignment", 4),
        ("preferred_unmap_granularity", 64),
    ] {
        assert_eq!(n[k], v, "bdev_get_bdevs {k}");
        assert_eq!(saved[k], v, "save_config {k}");
    }
    assert_eq!(saved["physical_block_size"], 4096);
    let e = call(
        &ut,
        &reg,
        "bdev_null_create",
        json!({"name": "NullX", "num_blocks": 64, "block_size": 512, "dif_pi_format": 2}),
    )
    .unwrap_err();
    assert!(
        e.message.contains("not supported") && e.message.contains("dif_pi_format"),
        "{}",
        e.message
    );
    // save_config -> delete -> replay -> save_config: the same.
    let before: Vec<Value> = ["MallocP", "MallocN"]
        .iter()
        .map(|n| saved_params("bdev_malloc_create", n))
        .chain(std::iter::once(saved_params("bdev_null_create", "NullP")))
        .collect();
    for n in ["MallocP", "MallocN"] {
        call(&ut, &reg, "bdev_malloc_delete", json!({ "name": n })).unwrap();
    }
    call(&ut, &reg, "bdev_null_delete", json!({"name": "NullP"})).unwrap();
    for (i, p) in before.iter().enumerate() {
        let m = if i < 2 {
            "bdev_malloc_create"
        } else {
            "bdev_null_create"
        };
        call(&ut, &reg, m, p.clone()).unwrap();
    }
    let after: Vec<Value> = ["MallocP", "MallocN"]
        .iter()
        .map(|n| saved_params("bdev_malloc_create", n))
        .chain(std::iter::once(saved_params("bdev_null_create", "NullP")))
        .collect();
    assert_eq!(before, after);
    assert_eq!(bdev_info(&ut, &reg, "NullP")["optimal_write_size"], 32);
    for n in ["MallocP", "MallocN"] {
        call(&ut, &reg, "bdev_malloc_delete", json!({ "name": n })).unwrap();
    }
    call(&ut, &reg, "bdev_null_delete", json!({"name": "NullP"})).unwrap();
}
