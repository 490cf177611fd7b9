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
    register_rpcs(&reg);
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
    register_rpcs(&reg);
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

/// Writes (or reads) one block at `off` through `ch` and polls until done.
fn io_one(
    ut: &UtThreads,
    desc: &rspdk_bdev::BdevDesc,
    ch: &rspdk_bdev::BdevIoChannel,
    write: bool,
    off: u64,
) -> rspdk_bdev::IoStatus {
    use std::cell::Cell;
    use std::rc::Rc;
    let got: Rc<Cell<Option<rspdk_bdev::IoStatus>>> = Rc::default();
    let g = got.clone();
    let buf = rspdk_env::DmaBuf::zeroed(512).unwrap();
    ut.run_on(0, || {
        let cb = move |s, _| g.set(Some(s));
        if write {
            ch.write(desc, buf, off, cb).map_err(|(e, _)| e).unwrap()
        } else {
            ch.read(desc, buf, off, cb).map_err(|(e, _)| e).unwrap()
        }
    });
    for _ in 0..10_000 {
        if got.get().is_some() {
            break;
        }
        ut.poll_threads();
    }
    got.get().expect("I/O never completed")
}

/// Standard base64 (test-side decoder, independent of the encoder).
fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::new();
    for q in s.as_bytes().chunks(4) {
        let pad = q.iter().filter(|&&c| c == b'=').count();
        let n = q
            .iter()
            .map(|&c| if c == b'=' { 0 } else { val(c) })
            .fold(0u32, |n, v| n << 6 | v);
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

#[test]
fn iostat_reset_modes_per_channel_and_histogram() {
    let (ut, reg) = setup();
    call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "StatM", "num_blocks": 64, "block_size": 512}),
    )
    .unwrap();
    let desc = ut.run_on(0, || rspdk_bdev::bdev_open("StatM", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    for i in 0..3 {
        assert!(io_one(&ut, &desc, &ch, true, i).is_ok());
    }
    assert!(io_one(&ut, &desc, &ch, false, 0).is_ok());
    let stat = |p: Value| call(&ut, &reg, "bdev_get_iostat", p).unwrap();
    // What rpc.py sends: per_channel false, names, reset_mode.
    let s = stat(json!({"per_channel": false, "names": ["StatM"], "reset_mode": "maxmin"}));
    let b = &s["bdevs"][0];
    assert_eq!(b["name"], "StatM");
    assert_eq!(b["num_write_ops"], 3);
    assert!(b["max_write_latency_ticks"].as_u64().unwrap() > 0);
    assert!(b["min_write_latency_ticks"].as_u64().unwrap() > 0);
    assert!(b.get("queue_depth").is_none(), "no sampling yet: {b}");
    // maxmin reset those, and only those.
    let b = stat(json!({"names": ["StatM"]}))["bdevs"][0].clone();
    assert_eq!(b["num_write_ops"], 3);
    assert_eq!(b["max_write_latency_ticks"], 0);
    assert_eq!(b["min_write_latency_ticks"], 0);
    // Per channel: one channel, on thread 0.
    let s = stat(json!({"per_channel": true, "names": ["StatM"]}));
    assert_eq!(s["name"], "StatM");
    let chans = s["channels"].as_array().unwrap();
    assert_eq!(chans.len(), 1);
    assert_eq!(chans[0]["thread_id"], ut.thread(0).id());
    assert_eq!(chans[0]["num_read_ops"], 1);
    let e = call(
        &ut,
        &reg,
        "bdev_get_iostat",
        json!({"per_channel": true, "names": ["StatM", "StatM"]}),
    )
    .unwrap_err();
    assert!(e.message.contains("exactly one bdev"), "{}", e.message);
    let e = call(
        &ut,
        &reg,
        "bdev_get_iostat",
        json!({"names": ["StatM", "Nope"]}),
    )
    .unwrap_err();
    assert_eq!(e.code, -libc::ENODEV);
    let e = call(
        &ut,
        &reg,
        "bdev_get_iostat",
        json!({"reset_mode": "sometimes"}),
    )
    .unwrap_err();
    assert_eq!(e.code, -32602);
    // reset_mode all while reading: this answer has the counts, the next none.
    let b = stat(json!({"names": ["StatM"], "reset_mode": "all"}))["bdevs"][0].clone();
    assert_eq!(b["num_write_ops"], 3);
    let b = stat(json!({"names": ["StatM"]}))["bdevs"][0].clone();
    assert_eq!(b["num_write_ops"], 0);
    assert_eq!(b["num_read_ops"], 0);
    // bdev_reset_iostat: mode none leaves them, the default (all) clears.
    assert!(io_one(&ut, &desc, &ch, true, 5).is_ok());
    assert_eq!(
        call(
            &ut,
            &reg,
            "bdev_reset_iostat",
            json!({"name": "StatM", "mode": "none"})
        )
        .unwrap(),
        json!(true)
    );
    assert_eq!(
        stat(json!({"names": ["StatM"]}))["bdevs"][0]["num_write_ops"],
        1
    );
    call(&ut, &reg, "bdev_reset_iostat", json!({"name": "StatM"})).unwrap();
    assert_eq!(
        stat(json!({"names": ["StatM"]}))["bdevs"][0]["num_write_ops"],
        0
    );
    let e = call(&ut, &reg, "bdev_reset_iostat", json!({"name": "Nope"})).unwrap_err();
    assert_eq!(e.code, -libc::ENODEV);

    // Histogram: refused until enabled; counts only the opc asked for.
    let e = call(&ut, &reg, "bdev_get_histogram", json!({"name": "StatM"})).unwrap_err();
    assert!(e.message.contains("bdev_enable_histogram"), "{}", e.message);
    let e = call(
        &ut,
        &reg,
        "bdev_enable_histogram",
        json!({"name": "StatM", "enable": true, "opc": "nvme_admin"}),
    )
    .unwrap_err();
    assert!(e.message.contains("\"write\""), "{}", e.message);
    let e = call(
        &ut,
        &reg,
        "bdev_enable_histogram",
        json!({"name": "StatM", "enable": true, "min_nsec": 10, "max_nsec": 10}),
    )
    .unwrap_err();
    assert!(e.message.contains("min_nsec"), "{}", e.message);
    call(
        &ut,
        &reg,
        "bdev_enable_histogram",
        json!({"name": "StatM", "enable": true, "opc": "write"}),
    )
    .unwrap();
    for i in 0..4 {
        assert!(io_one(&ut, &desc, &ch, true, i).is_ok());
    }
    assert!(io_one(&ut, &desc, &ch, false, 0).is_ok());
    let h = call(&ut, &reg, "bdev_get_histogram", json!({"name": "StatM"})).unwrap();
    assert_eq!(h["granularity"], 7);
    assert_eq!(h["min_range"], 3);
    assert_eq!(h["max_range"], 30);
    assert_eq!(h["tsc_rate"], 1_000_000_000u64);
    let bytes = unbase64(h["histogram"].as_str().unwrap());
    assert_eq!(bytes.len(), 28 * 128 * 8);
    let counts: Vec<u64> = bytes
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 4, "the 4 writes, not the read");
    // save_config re-enables it with every setting.
    let saved = saved_params("bdev_enable_histogram", "StatM");
    assert_eq!(
        saved,
        json!({"name": "StatM", "enable": true, "opc": "write", "granularity": 7,
            "min_nsec": 1000, "max_nsec": 120_000_000_000u64})
    );
    // Closing the channel keeps its counts.
    drop(ch);
    ut.poll_threads();
    let h = call(&ut, &reg, "bdev_get_histogram", json!({"name": "StatM"})).unwrap();
    let total: u64 = unbase64(h["histogram"].as_str().unwrap())
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .sum();
    assert_eq!(total, 4);
    call(
        &ut,
        &reg,
        "bdev_enable_histogram",
        json!({"name": "StatM", "enable": false}),
    )
    .unwrap();
    assert!(call(&ut, &reg, "bdev_get_histogram", json!({"name": "StatM"})).is_err());
    assert!(!rspdk_bdev::rpc::config_json()
        .iter()
        .any(|e| e["method"] == "bdev_enable_histogram" && e["params"]["name"] == "StatM"));
    drop(desc);
    call(&ut, &reg, "bdev_malloc_delete", json!({"name": "StatM"})).unwrap();
}

#[test]
fn error_nvme_failure_resume_pending_and_queue_depth_sampling() {
    use std::cell::Cell;
    use std::rc::Rc;
    let (mut ut, reg) = setup();
    call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "QdM", "num_blocks": 64, "block_size": 512}),
    )
    .unwrap();
    call(&ut, &reg, "bdev_error_create", json!({"base_name": "QdM"})).unwrap();
    let desc = ut.run_on(0, || rspdk_bdev::bdev_open("EE_QdM", true, |_| {}).unwrap());
    let ch = ut.run_on(0, || desc.get_io_channel().unwrap());
    let inject = |p: Value| call(&ut, &reg, "bdev_error_inject_error", p);

    // nvme_failure: what rpc.py sends for `--nvme-sct 1 --nvme-sc 128 -n 1`.
    inject(
        json!({"name": "EE_QdM", "io_type": "write", "error_type": "nvme_failure",
        "nvme_sct": 1, "nvme_sc": 128, "num": 1}),
    )
    .unwrap();
    assert_eq!(
        io_one(&ut, &desc, &ch, true, 0),
        rspdk_bdev::IoStatus::Nvme { sct: 1, sc: 128 }
    );
    assert!(io_one(&ut, &desc, &ch, true, 0).is_ok(), "num 1: one hit");
    for (p, want) in [
        (
            json!({"name": "EE_QdM", "io_type": "write", "error_type": "nvme_failure"}),
            "needs nvme_sct or nvme_sc",
        ),
        (
            json!({"name": "EE_QdM", "io_type": "write", "error_type": "failure", "nvme_sc": 2}),
            "only to error_type nvme_failure",
        ),
        (
            json!({"name": "EE_QdM", "io_type": "write", "error_type": "nvme_failure", "nvme_sct": 8}),
            "0..=7",
        ),
        (
            json!({"name": "EE_QdM", "io_type": "write", "error_type": "nomem"}),
            "not supported",
        ),
    ] {
        let e = inject(p).unwrap_err();
        assert!(e.message.contains(want), "{want}: {}", e.message);
    }
    // io_type clear and num 0 disarm.
    inject(json!({"name": "EE_QdM", "io_type": "all", "error_type": "failure", "num": 5})).unwrap();
    inject(json!({"name": "EE_QdM", "io_type": "clear", "error_type": "failure"})).unwrap();
    assert!(io_one(&ut, &desc, &ch, true, 1).is_ok());
    inject(json!({"name": "EE_QdM", "io_type": "read", "error_type": "failure", "num": 5}))
        .unwrap();
    inject(json!({"name": "EE_QdM", "io_type": "read", "error_type": "failure", "num": 0}))
        .unwrap();
    assert!(io_one(&ut, &desc, &ch, false, 1).is_ok());

    // Hold two writes, sample the queue depth, then resume them.
    inject(json!({"name": "EE_QdM", "io_type": "write", "error_type": "pending", "num": 2}))
        .unwrap();
    call(
        &ut,
        &reg,
        "bdev_set_qd_sampling_period",
        json!({"name": "EE_QdM", "period": 1000}),
    )
    .unwrap();
    let done: Rc<Cell<u32>> = Rc::default();
    for off in [10u64, 11] {
        let d = done.clone();
        let mut buf = rspdk_env::DmaBuf::zeroed(512).unwrap();
        buf.fill(0xab);
        ut.run_on(0, || {
            ch.write(&desc, buf, off, move |s, _| {
                assert!(s.is_ok(), "{s:?}");
                d.set(d.get() + 1)
            })
            .map_err(|(e, _)| e)
            .unwrap()
        });
    }
    for _ in 0..3 {
        ut.advance_time_us(1000);
        ut.poll_threads();
    }
    assert_eq!(done.get(), 0, "held");
    let stat = |ut: &UtThreads| {
        call(ut, &reg, "bdev_get_iostat", json!({"names": ["EE_QdM"]})).unwrap()["bdevs"][0].clone()
    };
    let s = stat(&ut);
    assert_eq!(s["queue_depth_polling_period"], 1000);
    assert_eq!(s["queue_depth"], 2, "{s}");
    let io_time = s["io_time"].as_u64().unwrap();
    assert!(io_time >= 1000 && io_time % 1000 == 0, "{s}");
    assert_eq!(s["weighted_io_time"].as_u64().unwrap(), 2 * io_time);
    assert_eq!(
        saved_params("bdev_set_qd_sampling_period", "EE_QdM"),
        json!({"name": "EE_QdM", "period": 1000})
    );
    let e = call(
        &ut,
        &reg,
        "bdev_error_resume_pending",
        json!({"name": "QdM"}),
    )
    .unwrap_err();
    assert!(e.message.contains("not an error bdev"), "{}", e.message);
    call(
        &ut,
        &reg,
        "bdev_error_resume_pending",
        json!({"name": "EE_QdM"}),
    )
    .unwrap();
    for _ in 0..100 {
        if done.get() == 2 {
            break;
        }
        ut.poll_threads();
    }
    assert_eq!(done.get(), 2, "resumed writes complete");
    // They reached the base.
    let base = ut.run_on(0, || rspdk_bdev::bdev_open("QdM", false, |_| {}).unwrap());
    let bch = ut.run_on(0, || base.get_io_channel().unwrap());
    let got: Rc<std::cell::RefCell<Option<Vec<u8>>>> = Rc::default();
    let g = got.clone();
    ut.run_on(0, || {
        bch.read(
            &base,
            rspdk_env::DmaBuf::zeroed(1024).unwrap(),
            10,
            move |_, b| *g.borrow_mut() = Some(b.to_vec()),
        )
        .map_err(|(e, _)| e)
        .unwrap()
    });
    for _ in 0..100 {
        ut.poll_threads();
    }
    assert!(got.borrow().as_ref().unwrap().iter().all(|&b| b == 0xab));
    // Idle again: the next sample is 0 and io_time stops growing.
    ut.advance_time_us(1000);
    ut.poll_threads();
    ut.poll_threads();
    let s = stat(&ut);
    assert_eq!(s["queue_depth"], 0, "{s}");
    let idle = s["io_time"].as_u64().unwrap();
    ut.advance_time_us(1000);
    ut.poll_threads();
    ut.poll_threads();
    assert_eq!(stat(&ut)["io_time"].as_u64().unwrap(), idle);
    // Off: the fields go away.
    call(
        &ut,
        &reg,
        "bdev_set_qd_sampling_period",
        json!({"name": "EE_QdM", "period": 0}),
    )
    .unwrap();
    assert!(stat(&ut).get("queue_depth").is_none());
    drop((bch, base, ch, desc));
    call(&ut, &reg, "bdev_error_delete", json!({"name": "EE_QdM"})).unwrap();
    call(&ut, &reg, "bdev_malloc_delete", json!({"name": "QdM"})).unwrap();
}

#[test]
fn uring_rescan_follows_the_file_size() {
    let (ut, reg) = setup();
    let dir = std::env::temp_dir().join(format!("rspdk-uring-rescan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("u.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    call(
        &ut,
        &reg,
        "bdev_uring_create",
        json!({"filename": path, "name": "URescan", "block_size": 512}),
    )
    .unwrap();
    assert_eq!(bdev_info(&ut, &reg, "URescan")["num_blocks"], 2048);
    // Unchanged: still true, same size.
    assert_eq!(
        call(&ut, &reg, "bdev_uring_rescan", json!({"name": "URescan"})).unwrap(),
        json!(true)
    );
    assert_eq!(bdev_info(&ut, &reg, "URescan")["num_blocks"], 2048);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    call(&ut, &reg, "bdev_uring_rescan", json!({"name": "URescan"})).unwrap();
    assert_eq!(bdev_info(&ut, &reg, "URescan")["num_blocks"], 6144);
    let e = call(&ut, &reg, "bdev_uring_rescan", json!({"name": "Nope"})).unwrap_err();
    assert_eq!(e.code, -libc::ENODEV);
    call(
        &ut,
        &reg,
        "bdev_malloc_create",
        json!({"name": "NotUring", "num_blocks": 64, "block_size": 512}),
    )
    .unwrap();
    let e = call(&ut, &reg, "bdev_uring_rescan", json!({"name": "NotUring"})).unwrap_err();
    assert!(e.message.contains("not a uring bdev"), "{}", e.message);
    call(&ut, &reg, "bdev_malloc_delete", json!({"name": "NotUring"})).unwrap();
    call(&ut, &reg, "bdev_uring_delete", json!({"name": "URescan"})).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn aio_nowait_is_refused_on_files_and_saved() {
    let (ut, reg) = setup();
    let dir = std::env::temp_dir().join(format!("rspdk-aio-nowait-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // rpc.py always sends nowait (false unless --no-wait... is given).
    let e = call(
        &ut,
        &reg,
        "bdev_aio_create",
        json!({"filename": path, "name": "AioNw", "block_size": 512, "readonly": false,
            "fallocate": false, "nowait": true}),
    )
    .unwrap_err();
    assert_eq!(e.code, -libc::ENOTSUP);
    assert!(
        e.message.contains("block devices only") && e.message.contains("omit nowait"),
        "{}",
        e.message
    );
    assert!(bdev_get_absent(&ut, &reg, "AioNw"));
    call(
        &ut,
        &reg,
        "bdev_aio_create",
        json!({"filename": path, "name": "AioNw", "block_size": 512, "readonly": false,
            "fallocate": false, "nowait": false}),
    )
    .unwrap();
    assert_eq!(
        bdev_info(&ut, &reg, "AioNw")["driver_specific"]["aio"]["nowait"],
        false
    );
    assert_eq!(saved_params("bdev_aio_create", "AioNw")["nowait"], false);
    call(&ut, &reg, "bdev_aio_delete", json!({"name": "AioNw"})).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
