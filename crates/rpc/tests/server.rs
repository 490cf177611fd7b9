//! Server behaviour over real Unix sockets.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::{error_code, register_test_methods, TestServer};
use rspdk_rpc::{ListenAddr, PollStatus, RpcClient, RpcRegistry, RpcServer, ServerConfig};
use serde_json::{json, Value};

#[test]
fn success_response_echoes_id_and_result() {
    let server = TestServer::start();
    let mut client = server.connect();
    let response = client
        .call(json!({"jsonrpc": "2.0", "method": "add", "params": {"a": 2, "b": 3}, "id": "x"}));
    assert_eq!(response, json!({"jsonrpc": "2.0", "id": "x", "result": 5}));
    // Deprecated alias reaches the same handler.
    let response = client
        .call(json!({"jsonrpc": "2.0", "method": "sum", "params": {"a": 1, "b": 1}, "id": 2}));
    assert_eq!(response["result"], 2);
}

/// Ids beyond 64 bits (and beyond f64's precision) come back exactly as
/// sent, as SPDK echoes the id's JSON text.
#[test]
fn large_numeric_ids_are_echoed_exactly() {
    let server = TestServer::start();
    let mut client = server.connect();
    for id in [
        "123456789012345678901234567890",
        "18446744073709551617",
        "-9007199254740993",
    ] {
        client.send(
            format!(
                r#"{{"jsonrpc": "2.0", "method": "add", "params": {{"a": 1, "b": 2}}, "id": {id}}}"#
            )
            .as_bytes(),
        );
        let response = client.recv();
        assert_eq!(response["id"].to_string(), id, "{response}");
        assert_eq!(response["result"], 3);
    }
}

#[test]
fn parse_error_is_answered_and_closes_only_that_connection() {
    let server = TestServer::start();
    let mut bad = server.connect();
    bad.send(b"{\"method\": oops}");
    let response = bad.recv();
    assert_eq!(error_code(&response), -32700);
    assert_eq!(response["id"], Value::Null);
    assert!(bad.is_closed_by_server());

    let mut stray = server.connect();
    stray.send(b"}");
    assert_eq!(error_code(&stray.recv()), -32700);

    let mut good = server.connect();
    assert_eq!(
        good.call(json!({"method": "echo", "params": [1], "id": 1}))["result"],
        json!([1])
    );
}

#[test]
fn invalid_requests_get_32600_and_connection_stays_usable() {
    let server = TestServer::start();
    let mut client = server.connect();
    for bad in [
        json!({"jsonrpc": "2.0", "id": 1}),                   // no method
        json!({"jsonrpc": "2.0", "method": 5, "id": 1}),      // method not a string
        json!({"jsonrpc": "1.0", "method": "echo", "id": 1}), // wrong version
        json!({"jsonrpc": "2.0", "method": "echo", "params": 3, "id": 1}), // scalar params
        json!({"jsonrpc": "2.0", "method": "echo", "id": [1]}), // bad id type
        json!({"jsonrpc": "2.0", "method": "echo", "id": 1, "extra": 1}), // unknown member
        json!(5),
        json!("text"),
    ] {
        // A bare top-level number only ends at a delimiter, hence the newline.
        client.send(format!("{bad}\n").as_bytes());
        let response = client.recv();
        assert_eq!(error_code(&response), -32600, "for {bad}");
        assert_eq!(response["error"]["message"], "Invalid request");
    }
    // The id is echoed when it was usable.
    let response = client.call(json!({"jsonrpc": "1.0", "method": "echo", "id": 7}));
    assert_eq!(response["id"], 7);
    assert_eq!(client.call(json!({"method": "echo", "id": 8}))["id"], 8);
}

#[test]
fn method_not_found_invalid_params_internal_error() {
    let server = TestServer::start();
    let mut client = server.connect();

    let response = client.call(json!({"jsonrpc": "2.0", "method": "nope", "id": 1}));
    assert_eq!(error_code(&response), -32601);
    assert_eq!(response["error"]["message"], "Method not found");

    let response =
        client.call(json!({"method": "add", "params": {"a": 1, "b": 2, "foo": 3}, "id": 2}));
    assert_eq!(error_code(&response), -32602);
    let message = response["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("invalid params: unknown field `foo`"),
        "{message}"
    );

    let response = client.call(json!({"method": "add", "params": {"a": 1, "b": "two"}, "id": 3}));
    assert_eq!(error_code(&response), -32602);
    assert!(response["error"]["message"]
        .as_str()
        .unwrap()
        .contains("b:"));

    let response = client.call(json!({"method": "fail_internal", "id": 4}));
    assert_eq!(error_code(&response), -32603);
    assert_eq!(response["error"]["message"], "boom");

    let response = client.call(json!({"method": "drop_responder", "id": 5}));
    assert_eq!(error_code(&response), -32603);
}

#[test]
fn state_gating_follows_spdk() {
    let server = TestServer::start();
    let mut client = server.connect();
    let response = client.call(json!({"method": "runtime_only", "id": 1}));
    assert_eq!(error_code(&response), -1);
    assert_eq!(
        response["error"]["message"],
        "Method may only be called after framework is initialized using framework_start_init RPC."
    );
    let current =
        client.call(json!({"method": "rpc_get_methods", "params": {"current": true}, "id": 2}));
    let names: Vec<String> = serde_json::from_value(current["result"].clone()).unwrap();
    assert!(names.contains(&"startup_only".to_string()));
    assert!(!names.contains(&"runtime_only".to_string()));
    assert!(
        !names.contains(&"sum".to_string()),
        "aliases only on request"
    );

    assert_eq!(
        client.call(json!({"method": "framework_start_init", "id": 3}))["result"],
        true
    );
    assert_eq!(
        client.call(json!({"method": "runtime_only", "id": 4}))["result"],
        "runtime"
    );
    let response = client.call(json!({"method": "startup_only", "id": 5}));
    assert_eq!(error_code(&response), -1);
    assert!(response["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Method may only be called before framework is initialized."));

    let all = client
        .call(json!({"method": "rpc_get_methods", "params": {"include_aliases": true}, "id": 6}));
    let names: Vec<String> = serde_json::from_value(all["result"].clone()).unwrap();
    assert!(names.contains(&"sum".to_string()) && names.contains(&"startup_only".to_string()));
    let bad =
        client.call(json!({"method": "rpc_get_methods", "params": {"curent": true}, "id": 7}));
    assert_eq!(error_code(&bad), -32602);
}

#[test]
fn batches_notifications_and_empty_batch() {
    let server = TestServer::start();
    let mut client = server.connect();
    let response = client.call(json!([
        {"jsonrpc": "2.0", "method": "add", "params": {"a": 1, "b": 1}, "id": 1},
        {"jsonrpc": "2.0", "method": "echo", "params": [9]},
        {"jsonrpc": "2.0", "method": "nope", "id": 2},
        5,
        {"jsonrpc": "2.0", "method": "echo", "params": ["x"], "id": 3},
    ]));
    assert_eq!(
        response,
        json!([
            {"jsonrpc": "2.0", "id": 1, "result": 2},
            {"jsonrpc": "2.0", "id": 2, "error": {"code": -32601, "message": "Method not found"}},
            {"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "Invalid request"}},
            {"jsonrpc": "2.0", "id": 3, "result": ["x"]},
        ])
    );

    let response = client.call(json!([]));
    assert_eq!(error_code(&response), -32600);
    assert!(response.is_object());

    // Notifications (alone or as a whole batch) produce nothing: the next
    // thing received is the answer to the request sent after them.
    client.send(br#"{"jsonrpc":"2.0","method":"echo","params":[1]}"#);
    client.send(br#"[{"method":"echo"},{"method":"nope"}]"#);
    client.send(br#"{"method":"nope"}"#);
    let response = client.call(json!({"method": "echo", "params": ["after"], "id": 10}));
    assert_eq!(response["id"], 10);
}

#[test]
fn pipelined_requests_in_one_write_without_separators() {
    let server = TestServer::start();
    let mut client = server.connect();
    let mut bytes = Vec::new();
    for id in 0..20 {
        bytes.extend_from_slice(
            json!({"method": "echo", "params": [id], "id": id})
                .to_string()
                .as_bytes(),
        );
        if id % 3 == 0 {
            bytes.extend_from_slice(b" \n\t ");
        }
    }
    client.send(&bytes);
    for id in 0..20 {
        let response = client.recv();
        assert_eq!(response["id"], id);
        assert_eq!(response["result"], json!([id]));
    }
}

#[test]
fn request_split_into_one_byte_writes() {
    let server = TestServer::start();
    let mut client = server.connect();
    let request = json!({"jsonrpc": "2.0", "method": "echo", "params": {"s": "a \"}] b"}, "id": 1})
        .to_string();
    for byte in request.as_bytes() {
        client.send(&[*byte]);
        std::thread::sleep(Duration::from_micros(50));
    }
    assert_eq!(client.recv()["result"], json!({"s": "a \"}] b"}));
}

#[test]
fn oversized_request_is_rejected_and_others_keep_working() {
    let server = TestServer::start_with(ServerConfig {
        max_request_size: 4096,
        ..ServerConfig::default()
    });
    let mut other = server.connect();
    let mut big = server.connect();
    let payload = format!(
        r#"{{"method":"echo","id":1,"params":["{}"]}}"#,
        "x".repeat(100_000)
    );
    let mut writer_stream = big.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        // The server may close before reading everything; that is fine.
        let _ = writer_stream.write_all(payload.as_bytes());
    });
    let response = big.recv();
    assert_eq!(error_code(&response), -32600);
    assert!(response["error"]["message"]
        .as_str()
        .unwrap()
        .contains("4096"));
    writer.join().unwrap();
    assert!(big.is_closed_by_server());
    assert_eq!(
        other.call(json!({"method": "echo", "params": [1], "id": 2}))["result"],
        json!([1])
    );
}

#[test]
fn client_disconnecting_mid_request_does_not_disturb_server() {
    let server = TestServer::start();
    {
        let mut quitter = server.connect();
        quitter.send(br#"{"method": "echo", "params": ["#);
    }
    {
        // Half-close: the truncated request is answered with a parse error.
        let mut half = server.connect();
        half.send(br#"{"method": "echo""#);
        half.stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(error_code(&half.recv()), -32700);
    }
    let mut client = server.connect();
    assert_eq!(
        client.call(json!({"method": "echo", "params": [3], "id": 1}))["result"],
        json!([3])
    );
}

#[test]
fn async_responder_completed_later_and_dropped_for_gone_client() {
    let server = TestServer::start();
    let mut waiting = server.connect();
    let mut releaser = server.connect();

    waiting.send(json!({"method": "park", "id": 1}).to_string().as_bytes());
    assert!(
        waiting.try_recv(Duration::from_millis(100)).is_none(),
        "not answered yet"
    );
    // Pipelined work on the same connection is still served meanwhile.
    assert_eq!(
        waiting.call(json!({"method": "echo", "params": [0], "id": 2}))["id"],
        2
    );

    let released = releaser.call(json!({"method": "release", "params": ["done"], "id": 1}));
    assert_eq!(released["result"], json!({"count": 1, "connected": 1}));
    assert_eq!(
        waiting.recv(),
        json!({"jsonrpc": "2.0", "id": 1, "result": {"released": ["done"]}})
    );

    // A half-closed client still gets its parked answer before the close.
    // (A pipelined echo answered on the same connection shows that the
    // server has read and parked the request before it: requests of one
    // connection are handled in order.)
    let mut half = server.connect();
    half.send(json!({"method": "park", "id": 5}).to_string().as_bytes());
    assert_eq!(half.call(json!({"method": "echo", "id": 50}))["id"], 50);
    half.stream.shutdown(std::net::Shutdown::Write).unwrap();
    // A client that disconnects while parked: its response is dropped.
    let mut gone = server.connect();
    gone.send(json!({"method": "park", "id": 6}).to_string().as_bytes());
    assert_eq!(gone.call(json!({"method": "echo", "id": 60}))["id"], 60);
    drop(gone);
    let released = releaser.call(json!({"method": "release", "id": 2}));
    assert_eq!(released["result"]["count"], 2);
    assert_eq!(half.recv()["id"], 5);
    assert!(half.is_closed_by_server());
    assert_eq!(releaser.call(json!({"method": "echo", "id": 3}))["id"], 3);
}

#[test]
fn concurrent_clients() {
    let server = TestServer::start();
    let path = server.path.clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut client =
                    RpcClient::connect(&ListenAddr::Unix(path), Duration::from_secs(10)).unwrap();
                for i in 0..50 {
                    let result = client.call("add", Some(json!({"a": t, "b": i}))).unwrap();
                    assert_eq!(result, json!(t + i));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn stale_socket_is_replaced_and_live_one_refused() {
    let path = common::temp_socket_path();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves a stale file
    let mut server =
        RpcServer::listen_unix(&path, RpcRegistry::new(), ServerConfig::default()).unwrap();
    assert_eq!(server.poll(), PollStatus::Idle);
    let err =
        RpcServer::listen_unix(&path, RpcRegistry::new(), ServerConfig::default()).unwrap_err();
    assert!(
        matches!(err, rspdk_rpc::Error::AddressInUse { .. }),
        "{err}"
    );
    drop(server);
    assert!(!path.exists(), "socket file removed on drop");
    // A regular file at the path is named as such, and left alone.
    std::fs::write(&path, b"not a socket").unwrap();
    let err =
        RpcServer::listen_unix(&path, RpcRegistry::new(), ServerConfig::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("is not a socket but a regular file") && !msg.contains("another process"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn tcp_listener_on_loopback() {
    let registry = RpcRegistry::new();
    register_test_methods(&registry);
    let mut server = RpcServer::listen(
        ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
        registry,
        ServerConfig::default(),
    )
    .unwrap();
    let addr = server.local_addr().clone();
    let client = std::thread::spawn(move || {
        let mut client = RpcClient::connect(&addr, Duration::from_secs(10)).unwrap();
        client.call("echo", Some(json!(["tcp"]))).unwrap()
    });
    while !client.is_finished() {
        server.poll();
    }
    assert_eq!(client.join().unwrap(), json!(["tcp"]));
}

#[test]
fn in_process_call_uses_same_handlers_and_state_check() {
    let registry = RpcRegistry::new();
    register_test_methods(&registry);
    let results: Rc<RefCell<Vec<Result<Value, rspdk_rpc::RpcError>>>> = Rc::default();
    for method in [
        "runtime_only",
        "framework_start_init",
        "runtime_only",
        "park",
    ] {
        let sink = Rc::clone(&results);
        registry.call(method, None, move |r| sink.borrow_mut().push(r));
    }
    assert_eq!(results.borrow().len(), 3, "park completes later");
    registry.call("release", None, |_| {});
    let results = results.borrow();
    assert_eq!(results[0].as_ref().unwrap_err().code, -1);
    assert_eq!(results[1], Ok(json!(true)));
    assert_eq!(results[2], Ok(json!("runtime")));
    assert_eq!(results[3], Ok(json!({"released": null})));
}

#[test]
fn rpc_py_style_python_client_is_compatible() {
    let status = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .expect("python3 is not installed: apt-get install python3 (.ci/run installs it)");
    assert!(status.status.success());
    let server = TestServer::start();
    // Mimics python/spdk/rpc/client.py: json.dumps(req, indent=2) per request,
    // requests joined by "\n", responses found by raw_decode on a growing buffer.
    let script = r#"
import json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
reqs = [{"jsonrpc": "2.0", "method": "add", "id": i, "params": {"a": i, "b": 1}} for i in range(1, 4)]
sock.sendall("\n".join(json.dumps(r, indent=2) for r in reqs).encode())
buf, out = "", []
while len(out) < 3:
    buf = buf.lstrip()
    try:
        obj, idx = json.JSONDecoder().raw_decode(buf)
        buf = buf[idx:]
        out.append(obj)
        continue
    except ValueError:
        pass
    data = sock.recv(4096)
    if not data:
        sys.exit("closed")
    buf += data.decode()
print(json.dumps([o["result"] for o in out]))
"#;
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&server.path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[2, 3, 4]");
}

/// Idle clients holding every connection do not lock others out: a new
/// client first gets an error naming the limit, and once the holders have
/// been idle `evict_idle_after`, the one idle longest makes room.
#[test]
fn idle_clients_cannot_lock_out_others() {
    let server = TestServer::start_with(ServerConfig {
        max_connections: 4,
        evict_idle_after: Duration::from_millis(1500),
        ..ServerConfig::default()
    });
    let mut holders: Vec<_> = (0..4).map(|_| server.connect()).collect();
    // Each holder made one call, so all four are registered and idle.
    for (i, h) in holders.iter_mut().enumerate() {
        let r = h.call(json!({"method": "add", "params": {"a": i, "b": 0}, "id": i}));
        assert_eq!(r["result"], json!(i));
    }
    let mut refused = server.connect();
    let answer = refused
        .try_recv(Duration::from_secs(5))
        .expect("an error reply, not a silent reset");
    let msg = answer["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("too many RPC connections") && msg.contains('4'),
        "{answer}"
    );

    std::thread::sleep(Duration::from_millis(1600));
    let mut newcomer = server.connect();
    let r = newcomer.call(json!({"method": "add", "params": {"a": 2, "b": 3}, "id": 9}));
    assert_eq!(
        r["result"],
        json!(5),
        "served after evicting an idle client"
    );
    // Exactly one holder (the one idle longest, the first) was closed.
    assert!(holders[0].try_recv(Duration::from_secs(2)).is_none());
    let r = holders[3].call(json!({"method": "add", "params": {"a": 1, "b": 1}, "id": 10}));
    assert_eq!(r["result"], json!(2));
}
