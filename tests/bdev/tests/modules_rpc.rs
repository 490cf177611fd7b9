//! The module RPCs (aio, uring, passthru, delay, error, split) through an
//! in-process registry: clear errors for bad params, and save_config ->
//! delete -> load -> save_config giving the same config.

mod common;
use common::*;

use rspdk_rpc::{RpcRegistry, RpcState};
use rspdk_thread::testing::UtThreads;
use serde_json::{json, Value};

#[test]
fn module_rpcs_errors_and_config_round_trip() {
    rspdk_env::init(&rspdk_env::EnvOpts {
        name: "bdev-modules-rpc-test".into(),
        no_huge: !rspdk_env::sys::pagemap_shows_pfns(),
        mem_size_mb: 32,
        ..Default::default()
    })
    .expect("env init");
    let ut = UtThreads::new(1);
    let reg = RpcRegistry::new();
    register_rpcs(&reg);
    reg.set_state(RpcState::Runtime);
    let dir = std::env::temp_dir().join(format!("rspdk-bdev-rpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let aio_file = dir.join("aio.img");
    let uring_file = dir.join("uring.img");
    let empty_file = dir.join("empty.img");
    std::fs::File::create(&aio_file)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    std::fs::File::create(&uring_file)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    std::fs::File::create(&empty_file).unwrap();
    let ok = |m: &str, p: Value| call(&ut, &reg, m, p).unwrap_or_else(|e| panic!("{m}: {e:?}"));
    let err = |m: &str, p: Value| call(&ut, &reg, m, p).expect_err(m);

    // Build: files, a malloc split in three, and a stack on its parts.
    assert_eq!(
        ok(
            "bdev_aio_create",
            json!({"filename": aio_file, "name": "RAio0", "fallocate": true})
        ),
        json!("RAio0")
    );
    assert_eq!(
        ok(
            "bdev_uring_create",
            json!({"filename": uring_file, "name": "RUring0", "block_size": 4096})
        ),
        json!("RUring0")
    );
    ok(
        "bdev_malloc_create",
        json!({"name": "RMal", "num_blocks": 6144, "block_size": 512}),
    );
    assert_eq!(
        ok(
            "bdev_split_create",
            json!({"base_bdev": "RMal", "split_count": 3})
        ),
        json!(["RMalp0", "RMalp1", "RMalp2"])
    );
    ok(
        "bdev_passthru_create",
        json!({"base_bdev_name": "RMalp0", "name": "RPt"}),
    );
    ok(
        "bdev_delay_create",
        json!({"base_bdev_name": "RMalp1", "name": "RDelay",
        "avg_read_latency": 10, "p99_read_latency": 50, "avg_write_latency": 20, "p99_write_latency": 60}),
    );
    assert_eq!(
        ok("bdev_error_create", json!({"base_name": "RMalp2"})),
        json!("EE_RMalp2")
    );
    ok(
        "bdev_delay_update_latency",
        json!({"delay_bdev_name": "RDelay", "latency_type": "avg_read", "latency_us": 30}),
    );
    ok(
        "bdev_error_inject_error",
        json!({"name": "EE_RMalp2", "io_type": "read", "error_type": "failure", "num": 2}),
    );
    ok("bdev_aio_rescan", json!({"name": "RAio0"}));

    let info = ok("bdev_get_bdevs", json!({"name": "RUring0"}));
    assert_eq!(info[0]["block_size"], 4096);
    assert_eq!(info[0]["num_blocks"], 512);
    let info = ok("bdev_get_bdevs", json!({"name": "RMalp0"}));
    assert_eq!(info[0]["claimed"], true);
    assert_eq!(info[0]["claimed_by"], "passthru");
    let info = ok("bdev_get_bdevs", json!({"name": "RDelay"}));
    assert_eq!(info[0]["driver_specific"]["delay"]["avg_read_latency"], 30);
    let info = ok("bdev_get_bdevs", json!({"name": "RAio0"}));
    assert_eq!(info[0]["supported_io_types"]["unmap"], true);
    assert_eq!(
        info[0]["driver_specific"]["aio"]["filename"],
        json!(aio_file)
    );

    // Bad params: each error names the problem.
    let e = err(
        "bdev_delay_create",
        json!({"base_bdev_name": "Nope", "name": "D2",
        "avg_read_latency": 1, "p99_read_latency": 1, "avg_write_latency": 1, "p99_write_latency": 1}),
    );
    assert_eq!(e.code, -libc::ENODEV);
    assert!(e.message.contains("Nope"), "{}", e.message);
    let e = err("bdev_error_create", json!({"base_name": "Nope"}));
    assert!(e.message.contains("Nope"), "{}", e.message);
    let e = err(
        "bdev_split_create",
        json!({"base_bdev": "Nope", "split_count": 2}),
    );
    assert!(e.message.contains("Nope"), "{}", e.message);
    let e = err(
        "bdev_passthru_create",
        json!({"base_bdev_name": "RMalp0", "name": "RDelay"}),
    );
    assert_eq!(e.code, -libc::EEXIST);
    assert!(e.message.contains("RDelay"), "{}", e.message);
    let e = err(
        "bdev_aio_create",
        json!({"filename": aio_file, "name": "RAio0"}),
    );
    assert_eq!(e.code, -libc::EEXIST);
    let e = err(
        "bdev_aio_create",
        json!({"filename": aio_file, "name": "A2", "block_size": 1000}),
    );
    assert!(e.message.contains("power of two"), "{}", e.message);
    let e = err(
        "bdev_uring_create",
        json!({"filename": empty_file, "name": "U2"}),
    );
    assert!(e.message.contains("less than one block"), "{}", e.message);
    let e = err(
        "bdev_aio_create",
        json!({"filename": "/no/such/file", "name": "A3"}),
    );
    assert!(e.message.contains("/no/such/file"), "{}", e.message);
    let e = err(
        "bdev_passthru_create",
        json!({"base_bdev_name": "RMal", "name": "P3", "bogus": 1}),
    );
    assert_eq!(e.code, -32602);
    assert!(e.message.contains("bogus"), "{}", e.message);
    let e = err(
        "bdev_split_create",
        json!({"base_bdev": "RMal", "split_count": 2, "extra": true}),
    );
    assert!(e.message.contains("extra"), "{}", e.message);
    let e = err(
        "bdev_delay_update_latency",
        json!({"delay_bdev_name": "RDelay", "latency_type": "avg_sideways", "latency_us": 1}),
    );
    assert_eq!(e.code, -32602);
    assert!(e.message.contains("avg_sideways"), "{}", e.message);
    let e = err(
        "bdev_error_inject_error",
        json!({"name": "EE_RMalp2", "io_type": "read", "error_type": "explode"}),
    );
    assert!(e.message.contains("explode"), "{}", e.message);
    let e = err(
        "bdev_error_inject_error",
        json!({"name": "EE_RMalp2", "io_type": "read", "error_type": "nomem"}),
    );
    assert!(e.message.contains("nomem"), "{}", e.message);
    let e = err("bdev_split_delete", json!({"base_bdev": "RAio0"}));
    assert_eq!(e.code, -libc::ENODEV);
    let e = err("bdev_aio_delete", json!({"name": "RUring0"}));
    assert!(e.message.contains("not an aio bdev"), "{}", e.message);
    let e = err("bdev_delay_delete", json!({"name": "Nope"}));
    assert_eq!(e.code, -libc::ENODEV);

    // save_config -> delete everything -> load -> save_config: equal.
    let mine = |v: &[Value]| -> Vec<Value> {
        v.iter()
            .filter(|e| {
                let s = e.to_string();
                ["RAio0", "RUring0", "RMal", "RPt", "RDelay"]
                    .iter()
                    .any(|n| s.contains(n))
            })
            .cloned()
            .collect()
    };
    let saved = mine(&rspdk_bdev::rpc::config_json());
    let methods: Vec<&str> = saved
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        vec![
            "bdev_aio_create",
            "bdev_uring_create",
            "bdev_malloc_create",
            "bdev_split_create",
            "bdev_passthru_create",
            "bdev_delay_create",
            "bdev_error_create"
        ],
        "each once, bases first: {saved:#?}"
    );
    assert_eq!(saved[5]["params"]["avg_read_latency"], 30);
    assert_eq!(saved[0]["params"]["fallocate"], true);
    ok("bdev_passthru_delete", json!({"name": "RPt"}));
    ok("bdev_delay_delete", json!({"name": "RDelay"}));
    ok("bdev_error_delete", json!({"name": "EE_RMalp2"}));
    ok("bdev_split_delete", json!({"base_bdev": "RMal"}));
    ok("bdev_malloc_delete", json!({"name": "RMal"}));
    ok("bdev_aio_delete", json!({"name": "RAio0"}));
    ok("bdev_uring_delete", json!({"name": "RUring0"}));
    assert!(mine(&rspdk_bdev::rpc::config_json()).is_empty());
    for entry in &saved {
        ok(entry["method"].as_str().unwrap(), entry["params"].clone());
    }
    let again = mine(&rspdk_bdev::rpc::config_json());
    assert_eq!(saved, again);
    let _ = std::fs::remove_dir_all(&dir);
}
