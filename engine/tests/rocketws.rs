//! RocketWS drop-in (issue 5): RocketWS's README request examples sent
//! verbatim give RocketWS's results, its envelope reaches rocketws-dialect
//! subscribers, send_data and notify_all keep RocketWS's semantics without
//! its bugs, native and rocketws subscribers share a channel, and
//! RocketWS's `--ws-conn`/`--ms-conn` flags work.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use tungstenite::protocol::Message;

// RocketWS README, "Request examples" and "Usage", byte for byte.
const SUBSCRIBE: &str =
    r#"{"id": 0, "jsonrpc": "2.0", "method": "subscribe", "params": {"channel": "chat"}}"#;
const UNSUBSCRIBE: &str =
    r#"{"id": 0, "jsonrpc": "2.0", "method": "unsubscribe", "params": {"channel": "chat"}}"#;
const SEND_DATA: &str = r#"{"id": 0, "jsonrpc": "2.0", "method": "send_data", "params": {"channel": "chat", "data": {"message": "hola!"}}}"#;
const EMIT: &str = r#"{"id": 0, "jsonrpc": "2.0", "method": "emit", "params": {"channel": "chat", "data": {"message": "hola!"}}}"#;
const NOTIFY_ALL: &str = r#"{"id": 0, "jsonrpc": "2.0", "method": "notify_all", "params": {"data": {"message": "Broadcase system message"}}}"#;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The next text frame, raw (skips pings/pongs).
fn recv_raw(ws: &mut Ws) -> String {
    loop {
        match read_message(ws).expect("read") {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Sends `text` and returns the reply with id 0 (publications first are
/// returned too, in order).
fn request(ws: &mut Ws, text: &str) -> (Vec<Value>, Value) {
    send_text(ws, text);
    let mut before = Vec::new();
    loop {
        let v = recv(ws);
        if v.get("jsonrpc").is_some() && v.get("id").is_some() {
            return (before, v);
        }
        before.push(v);
    }
}

/// A backend POST with `body` verbatim: the parsed JSON reply.
fn post(server: &Server, body: &str) -> Value {
    let (status, reply) = server.http("POST", "/", body, &[]);
    assert_eq!(status, 200, "{reply}");
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("not JSON ({e}): {reply}"))
}

/// Asserts `text` is exactly `{<data fields>,"__type":kind,"__ts":<now>}`.
fn assert_envelope(text: &str, data_fields: &str, kind: &str, t0: u64) {
    let prefix = format!(r#"{{{data_fields},"__type":"{kind}","__ts":"#);
    let ts = text
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("envelope {text:?} is not {prefix}<ts>}}"));
    let ts: u64 = ts.parse().unwrap_or_else(|_| panic!("__ts in {text}"));
    assert!(
        ts + 2 >= t0 && ts <= now_secs() + 1,
        "__ts {ts} not close to now ({t0}): {text}"
    );
}

fn ws_at(addr: SocketAddr, path: &str) -> Ws {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let url = format!("ws://{addr}{path}");
    tungstenite::client(url.as_str(), stream)
        .expect("websocket handshake")
        .0
}

#[test]
fn readme_examples_give_rocketws_results_on_a_rocketws_port() {
    // Port-wide dialect: no query parameter on the clients.
    let server = Server::start(&["--dialect", "rocketws"]);
    let mut a = server.ws("/");
    let mut b = server.ws("/");

    let (_, r) = request(&mut a, SUBSCRIBE);
    assert_eq!(
        r,
        json!({"jsonrpc": "2.0", "id": 0, "result": "subscribed"})
    );

    // Backend emit, verbatim: RocketWS's result string, as valid JSON.
    let t0 = now_secs();
    let r = post(&server, EMIT);
    assert_eq!(
        r,
        json!({"jsonrpc": "2.0", "id": 0, "result": "emitted: 1"})
    );
    assert_envelope(&recv_raw(&mut a), r#""message":"hola!""#, "message", t0);

    // send_data from a non-subscriber: -32000 naming the client and channel.
    let (_, r) = request(&mut b, SEND_DATA);
    assert_eq!(r["error"]["code"], -32000, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    let b_addr = b.get_ref().local_addr().unwrap().to_string();
    assert!(msg.contains(&b_addr) && msg.contains("chat"), "{msg}");
    assert_silent(&mut a, Duration::from_millis(200));

    // Subscribed: others get it, the sender does not; N counts the others.
    let (_, r) = request(&mut b, SUBSCRIBE);
    assert_eq!(r["result"], "subscribed");
    let mut c = server.ws("/");
    request(&mut c, SUBSCRIBE);
    let t0 = now_secs();
    let (before, r) = request(&mut b, SEND_DATA);
    assert!(before.is_empty(), "echoed to the sender: {before:?}");
    assert_eq!(
        r,
        json!({"jsonrpc": "2.0", "id": 0, "result": "emitted: 2"})
    );
    assert_envelope(&recv_raw(&mut a), r#""message":"hola!""#, "message", t0);
    assert_envelope(&recv_raw(&mut c), r#""message":"hola!""#, "message", t0);
    assert_silent(&mut b, Duration::from_millis(200));

    // heartbeat, as RocketWS answers it.
    let (_, r) = request(
        &mut a,
        r#"{"id": 0, "jsonrpc": "2.0", "method": "heartbeat"}"#,
    );
    assert_eq!(r["result"], json!({"heartbeat": "ok"}));

    // notify_all, verbatim: once per connection, as a broadcast.
    let mut idle = server.ws("/");
    let t0 = now_secs();
    let r = post(&server, NOTIFY_ALL);
    assert_eq!(
        r,
        json!({"jsonrpc": "2.0", "id": 0, "result": "notified: 4"})
    );
    for ws in [&mut a, &mut b, &mut c, &mut idle] {
        assert_envelope(
            &recv_raw(ws),
            r#""message":"Broadcase system message""#,
            "broadcast",
            t0,
        );
    }

    // The other RocketWS backend methods, without params (RocketWS crashed).
    let r = post(&server, r#"{"id": 0, "jsonrpc": "2.0", "method": "ping"}"#);
    assert_eq!(r["result"], json!({"ping": "ok"}));
    let r = post(
        &server,
        r#"{"id": 0, "jsonrpc": "2.0", "method": "available_channels"}"#,
    );
    assert_eq!(r["result"], json!(["chat"]));
    let r = post(
        &server,
        r#"{"id": 0, "jsonrpc": "2.0", "method": "total_subscribers", "params": {"channel": "chat"}}"#,
    );
    assert_eq!(r["result"], json!({"total": 3}));
    let r = post(
        &server,
        r#"{"id": 0, "jsonrpc": "2.0", "method": "flush_dead_clients"}"#,
    );
    assert_eq!(r["result"], json!({"flushed": 0}));

    // unsubscribe, verbatim.
    let (_, r) = request(&mut a, UNSUBSCRIBE);
    assert_eq!(
        r,
        json!({"jsonrpc": "2.0", "id": 0, "result": "unsubscribed"})
    );
    let r = post(&server, EMIT);
    assert_eq!(r["result"], "emitted: 2");
    for ws in [&mut b, &mut c] {
        assert_envelope(&recv_raw(ws), r#""message":"hola!""#, "message", t0);
    }
    assert_silent(&mut a, Duration::from_millis(200));

    // `data` must be an object, on both ports: -32602 with a clear message.
    for body in [
        r#"{"id": 0, "jsonrpc": "2.0", "method": "emit", "params": {"channel": "chat", "data": "hola!"}}"#,
        r#"{"id": 0, "jsonrpc": "2.0", "method": "notify_all", "params": {"data": [1, 2]}}"#,
        r#"{"id": 0, "jsonrpc": "2.0", "method": "publish_many", "params": {"channels": ["chat"], "data": 1}}"#,
    ] {
        let r = post(&server, body);
        assert_eq!(r["error"]["code"], -32602, "{body}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains("data") && msg.contains("object"), "{msg}");
    }
    let (_, r) = request(
        &mut b,
        r#"{"id": 0, "jsonrpc": "2.0", "method": "send_data", "params": {"channel": "chat", "data": 5}}"#,
    );
    assert_eq!(r["error"]["code"], -32602, "{r}");
    for ws in [&mut b, &mut c] {
        assert_silent(ws, Duration::from_millis(200));
    }

    // `?dialect=native` still gets the native protocol on a rocketws port.
    let mut native = server.ws("/?dialect=native");
    let r = subscribe(&mut native, "chat");
    assert_eq!(r["channel"], "chat", "{r}");
    let r = post(&server, EMIT);
    assert_eq!(r["result"], "emitted: 3");
    let v = recv(&mut native);
    assert_eq!(v["method"], "message", "{v}");
    assert_eq!(v["params"]["data"], json!({"message": "hola!"}), "{v}");
}

#[test]
fn notify_all_reaches_a_client_in_two_channels_once() {
    let server = Server::start(&[]);
    let mut ws = server.ws("/?dialect=rocketws");
    for ch in ["chat", "news"] {
        let r = rpc(&mut ws, 1, "subscribe", json!({"channel": ch}));
        assert_eq!(r["result"], "subscribed", "{r}");
    }
    let t0 = now_secs();
    let r = server.call("notify_all", json!({"data": {"n": 1}}));
    assert_eq!(r["connections"], 1, "{r}");
    assert_envelope(&recv_raw(&mut ws), r#""n":1"#, "broadcast", t0);
    assert_silent(&mut ws, Duration::from_millis(300));
}

/// Opens a client on `path`; returns it and the shard it landed on.
fn client_and_shard(server: &Server, path: &str) -> (Ws, usize) {
    let before = server.connections_per_shard();
    let ws = server.ws(path);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = server.connections_per_shard();
        if let Some(s) = (0..after.len()).find(|&i| after[i] > before[i]) {
            return (ws, s);
        }
        assert!(Instant::now() < deadline, "connection not registered");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn mixed_room_each_dialect_gets_its_own_envelope_on_both_shards() {
    let server = Server::start(&[]);
    // (native?, shard) -> clients; want every combination.
    let mut native: Vec<(Ws, usize)> = Vec::new();
    let mut rocket: Vec<(Ws, usize)> = Vec::new();
    let covered = |v: &Vec<(Ws, usize)>| (0..2).all(|s| v.iter().any(|(_, x)| *x == s));
    for _ in 0..200 {
        if covered(&native) && covered(&rocket) {
            break;
        }
        if !covered(&native) {
            native.push(client_and_shard(&server, "/"));
        }
        if !covered(&rocket) {
            rocket.push(client_and_shard(&server, "/?dialect=rocketws"));
        }
    }
    assert!(
        covered(&native) && covered(&rocket),
        "clients did not spread"
    );
    for (ws, _) in native.iter_mut() {
        subscribe(ws, "room");
    }
    for (ws, _) in rocket.iter_mut() {
        let r = rpc(ws, 1, "subscribe", json!({"channel": "room"}));
        assert_eq!(r["result"], "subscribed", "{r}");
    }
    let total = native.len() + rocket.len();

    // A backend emit (native port: native result).
    let t0 = now_secs();
    let r = server.emit("room", json!({"message": "hola!"}));
    assert_eq!(r["subscribers"], total, "{r}");
    let offset = r["offset"].clone();
    for (ws, _) in native.iter_mut() {
        let v = recv(ws);
        assert_eq!(v["method"], "message", "{v}");
        assert_eq!(v["params"]["channel"], "room", "{v}");
        assert_eq!(v["params"]["offset"], offset, "{v}");
        assert_eq!(v["params"]["id"], r["id"], "{v}");
        assert_eq!(v["params"]["data"], json!({"message": "hola!"}), "{v}");
    }
    for (ws, _) in rocket.iter_mut() {
        assert_envelope(&recv_raw(ws), r#""message":"hola!""#, "message", t0);
    }

    // A rocketws client's send_data reaches both kinds, not itself.
    let t0 = now_secs();
    let r = rpc(
        &mut rocket[0].0,
        2,
        "send_data",
        json!({"channel": "room", "data": {"x": 1}}),
    );
    assert_eq!(r["result"], format!("emitted: {}", total - 1), "{r}");
    for (ws, _) in native.iter_mut() {
        let v = recv(ws);
        assert_eq!(v["params"]["data"], json!({"x": 1}), "{v}");
    }
    for (ws, _) in rocket.iter_mut().skip(1) {
        assert_envelope(&recv_raw(ws), r#""x":1"#, "message", t0);
    }
    assert_silent(&mut rocket[0].0, Duration::from_millis(200));

    // And a native client's send_data: native result, both envelopes.
    let t0 = now_secs();
    let r = rpc(
        &mut native[0].0,
        3,
        "send_data",
        json!({"channel": "room", "data": {"y": 2}}),
    );
    assert_eq!(r["result"]["subscribers"], total - 1, "{r}");
    for (ws, _) in native.iter_mut().skip(1) {
        let v = recv(ws);
        assert_eq!(v["params"]["data"], json!({"y": 2}), "{v}");
    }
    for (ws, _) in rocket.iter_mut() {
        assert_envelope(&recv_raw(ws), r#""y":2"#, "message", t0);
    }
}

#[test]
fn params_notifications_and_batches_per_json_rpc_in_both_dialects() {
    let server = Server::start(&[]);

    // Backend port, native dialect: no params, notifications, batches.
    let r = post(&server, r#"{"jsonrpc": "2.0", "id": 1, "method": "ping"}"#);
    assert_eq!(r["result"], json!({"ping": "ok"}));
    let r = post(
        &server,
        r#"{"jsonrpc": "2.0", "id": 2, "method": "total_subscribers"}"#,
    );
    assert_eq!(r["result"], json!({"total": 0}));
    let r = post(&server, r#"{"jsonrpc": "2.0", "id": 3, "method": "emit"}"#);
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert_eq!(r["id"], 3, "{r}");
    let r = post(&server, r#"{"jsonrpc": "2.0", "method": "ping"}"#);
    assert_eq!(r, Value::Null);
    let r = post(
        &server,
        r#"[{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "method": "ping"}, {"jsonrpc": "2.0", "id": 2, "method": "available_channels"}]"#,
    );
    assert_eq!(
        r,
        json!([
            {"jsonrpc": "2.0", "id": 1, "result": {"ping": "ok"}},
            {"jsonrpc": "2.0", "id": 2, "result": {"channels": [], "next_cursor": null}}
        ])
    );

    // WebSocket port, rocketws dialect.
    let mut ws = server.ws("/?dialect=rocketws");
    send_text(
        &mut ws,
        r#"{"jsonrpc": "2.0", "id": 1, "method": "heartbeat"}"#,
    );
    assert_eq!(
        recv(&mut ws),
        json!({"jsonrpc": "2.0", "id": 1, "result": {"heartbeat": "ok"}})
    );
    send_text(
        &mut ws,
        r#"{"jsonrpc": "2.0", "id": 2, "method": "subscribe"}"#,
    );
    let r = recv(&mut ws);
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (json!(2), json!(-32602))
    );
    // A notification: no reply, but it takes effect.
    send_text(
        &mut ws,
        r#"{"jsonrpc": "2.0", "method": "subscribe", "params": {"channel": "n1"}}"#,
    );
    assert_silent(&mut ws, Duration::from_millis(200));
    assert_eq!(
        server.call("total_subscribers", json!({"channel": "n1"})),
        json!({"total": 1})
    );
    // A batch: replies in order, notifications left out.
    send_text(
        &mut ws,
        r#"[{"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": "n2"}},
            {"jsonrpc": "2.0", "method": "unsubscribe", "params": {"channel": "n1"}},
            {"jsonrpc": "2.0", "id": 2, "method": "nope"},
            {"jsonrpc": "2.0", "id": 3, "method": "unsubscribe", "params": {"channel": "n2"}}]"#,
    );
    let r = recv(&mut ws);
    let arr = r.as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(arr.len(), 3, "{r}");
    assert_eq!(arr[0]["result"], "subscribed", "{r}");
    assert_eq!(arr[1]["error"]["code"], -32601, "{r}");
    assert_eq!(arr[2]["result"], "unsubscribed", "{r}");
    // A batch of notifications only: no reply at all.
    send_text(
        &mut ws,
        r#"[{"jsonrpc": "2.0", "method": "heartbeat"}, {"jsonrpc": "2.0", "method": "subscribe", "params": {"channel": "n3"}}]"#,
    );
    assert_silent(&mut ws, Duration::from_millis(200));
    assert_eq!(
        server.call("available_channels", json!(null)),
        json!({"channels": [{"channel": "n3", "subscribers": 1}], "next_cursor": null})
    );
    drop(ws);

    // Backend port, rocketws dialect: the same rules.
    let server = Server::start(&["--dialect", "rocketws"]);
    let r = post(
        &server,
        r#"{"jsonrpc": "2.0", "id": 1, "method": "available_channels"}"#,
    );
    assert_eq!(r["result"], json!([]));
    let r = post(
        &server,
        r#"{"jsonrpc": "2.0", "id": 2, "method": "notify_all"}"#,
    );
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let r = post(
        &server,
        r#"{"jsonrpc": "2.0", "method": "emit", "params": {"channel": "c", "data": {}}}"#,
    );
    assert_eq!(r, Value::Null);
    let r = post(
        &server,
        r#"[{"jsonrpc": "2.0", "id": "a", "method": "emit", "params": {"channel": "c", "data": {}}},
            {"jsonrpc": "2.0", "method": "ping"},
            {"jsonrpc": "2.0", "id": "b", "method": "ping"}]"#,
    );
    assert_eq!(
        r,
        json!([
            {"jsonrpc": "2.0", "id": "a", "result": "emitted: 0"},
            {"jsonrpc": "2.0", "id": "b", "result": {"ping": "ok"}}
        ])
    );
}

#[test]
fn rocketws_ws_conn_and_ms_conn_flags() {
    // RocketWS's spellings, given to the binary directly.
    for _ in 0..5 {
        let ws: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let backend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["serve", "--shards", "2", "--dialect", "rocketws"])
            .args([
                "--ws-conn",
                &ws.to_string(),
                "--ms-conn",
                &backend.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ringcast");
        let mut server = Server {
            child,
            ws,
            backend,
            log: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut ready = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = server.child.try_wait() {
                break; // a port was taken meanwhile: try others
            }
            if TcpStream::connect(backend).is_ok() && TcpStream::connect(ws).is_ok() {
                ready = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !ready {
            continue;
        }
        let mut client = ws_at(ws, "/");
        let (_, r) = request(&mut client, SUBSCRIBE);
        assert_eq!(r["result"], "subscribed", "{r}");
        let t0 = now_secs();
        assert_eq!(post(&server, EMIT)["result"], "emitted: 1");
        assert_envelope(
            &recv_raw(&mut client),
            r#""message":"hola!""#,
            "message",
            t0,
        );
        let _ = server.child.kill();
        let _ = server.child.wait();
        return;
    }
    panic!("ringcast did not start with --ws-conn/--ms-conn");
}
