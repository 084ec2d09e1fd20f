//! LQDOJ's Socket.IO event daemon, dropped in (`[protocols.socketio]`,
//! COMPAT.md sections 1 and 7): Engine.IO v4 over WebSocket at
//! `/socket.io/` on the public port and on LQDOJ's own listener, driven by
//! the stock Node `socket.io-client` and by raw frames for the exact error
//! paths.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::protocol::Message;

const TOKEN: &str = "lqdoj-test-token";

struct Lqdoj {
    server: Server,
    /// LQDOJ's own listener.
    listen: SocketAddr,
}

/// A server serving Socket.IO on the public port and on a listener of its
/// own (a free port), DMOJ's receivers on `/event/`, plus `env`.
fn start(env: &[(&str, &str)]) -> Lqdoj {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let l = listen.to_string();
    let mut all = vec![
        ("RINGCAST_PROTOCOLS_SOCKETIO_ENABLED", "true"),
        ("RINGCAST_PROTOCOLS_SOCKETIO_LISTEN", l.as_str()),
        ("RINGCAST_PROTOCOLS_SOCKETIO_TOKEN", TOKEN),
        ("RINGCAST_PROTOCOLS_DMOJ_ENABLED", "true"),
        ("RINGCAST_PROTOCOLS_DMOJ_RECEIVERS", ""),
        ("RINGCAST_PROTOCOLS_DMOJ_SENDERS", ""),
        ("RINGCAST_PROTOCOLS_DMOJ_LONG_POLL", ""),
    ];
    all.extend_from_slice(env);
    let server = Server::start_with(&[], &all);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "the Socket.IO listener did not open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Lqdoj { server, listen }
}

/// A raw Engine.IO WebSocket connection; returns it and its open packet.
fn raw(addr: SocketAddr) -> (Ws, Value) {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).expect("websocket handshake");
    let open = text(&mut ws);
    assert!(open.starts_with('0'), "{open}");
    let v: Value = serde_json::from_str(&open[1..]).unwrap();
    (ws, v)
}

/// The next text message (skips WebSocket pings).
fn text(ws: &mut Ws) -> String {
    loop {
        match read_message(ws).expect("read") {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// The close frame that ends `ws` (texts before it are skipped).
fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        match read_message(ws) {
            Ok(Message::Close(Some(c))) => return (u16::from(c.code), c.reason.to_string()),
            Ok(Message::Close(None)) => return (0, String::new()),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

fn connect_as(ws: &mut Ws, auth: &str) -> String {
    send_text(ws, &format!("40{auth}"));
    text(ws)
}

fn sender(addr: SocketAddr) -> Ws {
    let (mut ws, _) = raw(addr);
    let ok = connect_as(
        &mut ws,
        &format!(r#"{{"role":"sender","token":"{TOKEN}"}}"#),
    );
    assert!(ok.starts_with(r#"40{"sid":""#), "{ok}");
    ws
}

fn receiver(addr: SocketAddr, channels: Value) -> Ws {
    let (mut ws, _) = raw(addr);
    assert!(connect_as(&mut ws, "").starts_with("40{"));
    send_text(
        &mut ws,
        &format!(r#"42["set-filter",{}]"#, json!({ "filter": channels })),
    );
    assert_eq!(text(&mut ws), r#"42["status",{"status":"success"}]"#);
    ws
}

fn post(ws: &mut Ws, ack: u64, channel: &str, message: Value) -> u64 {
    send_text(
        ws,
        &format!(
            "42{ack}{}",
            json!(["post", {"channel": channel, "message": message}])
        ),
    );
    let reply = text(ws);
    let prefix = format!("43{ack}");
    assert!(reply.starts_with(&prefix), "{reply}");
    let v: Value = serde_json::from_str(&reply[prefix.len()..]).unwrap();
    assert_eq!(v[0]["status"], "success", "{v}");
    v[0]["id"].as_u64().unwrap()
}

fn http_get(addr: SocketAddr, target: &str, upgrade: bool) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let extra = if upgrade {
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
    read_response(&mut BufReader::new(s))
}

#[test]
fn open_packet_and_refused_upgrades() {
    let l = start(&[]);
    let (_ws, open) = raw(l.server.ws);
    assert_eq!(open["sid"].as_str().unwrap().len(), 20);
    assert_eq!(open["upgrades"], json!([]));
    assert_eq!(open["pingInterval"], 25000);
    assert_eq!(open["pingTimeout"], 300000);
    assert!(open["maxPayload"].as_u64().unwrap() >= 10000);
    let (_ws2, open2) = raw(l.listen);
    assert_ne!(open["sid"], open2["sid"]);
    for (query, reason) in [
        (
            "EIO=3&transport=websocket",
            "unsupported Engine.IO version: EIO=4 required",
        ),
        ("transport=websocket", "missing EIO=4 (Engine.IO version)"),
        (
            "EIO=4&transport=polling",
            "transport=polling is not served: connect with transport=websocket",
        ),
        (
            "EIO=4&transport=flash",
            "bad transport: transport=websocket required",
        ),
        (
            "EIO=4&transport=websocket&sid=abc",
            "unknown sid: there is no polling session to upgrade",
        ),
    ] {
        for addr in [l.server.ws, l.listen] {
            let (status, body) = http_get(addr, &format!("/socket.io/?{query}"), true);
            assert_eq!(status, 400, "{query}");
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap(),
                json!({ "error": reason }),
                "{query}"
            );
        }
    }
    // A plain polling request (no upgrade) is refused too, not hung.
    let (status, _) = http_get(l.server.ws, "/socket.io/?EIO=4&transport=polling", false);
    assert_eq!(status, 400);
}

#[test]
fn malformed_packets_close_only_their_connection() {
    let l = start(&[]);
    let mut bystander = receiver(l.server.ws, json!(["lq_by"]));
    let mut poster = sender(l.listen);
    for (packet, code, reason) in [
        ("", 1002, "invalid Engine.IO packet: empty message"),
        ("9", 1002, "invalid Engine.IO packet type"),
        (
            "2",
            1002,
            "invalid heartbeat direction: the server pings in Engine.IO v4",
        ),
        ("4", 1002, "invalid Socket.IO packet: empty"),
        ("48", 1002, "invalid Socket.IO packet type"),
        (r#"42["hello"]"#, 1002, "Socket.IO event before CONNECT"),
        (
            "40[1,2]",
            1002,
            "invalid Socket.IO CONNECT: auth must be an object",
        ),
        (
            r#"451-["post",{"_placeholder":true,"num":0}]"#,
            1003,
            "binary Socket.IO packets are not supported (JSON only)",
        ),
        ("1", 1000, "client closed"),
    ] {
        let (mut ws, _) = raw(l.server.ws);
        send_text(&mut ws, packet);
        assert_eq!(close_of(&mut ws), (code, reason.to_owned()), "{packet:?}");
    }
    // After CONNECT: events that are not events.
    for (packet, reason) in [
        (
            "42{}",
            "invalid Socket.IO event: payload is not a JSON array",
        ),
        ("42[]", "invalid Socket.IO event: empty array"),
        (
            r#"42["connect"]"#,
            "invalid Socket.IO event: reserved event name",
        ),
        ("42[null]", "invalid Socket.IO event: bad name"),
    ] {
        let (mut ws, _) = raw(l.server.ws);
        connect_as(&mut ws, "");
        send_text(&mut ws, packet);
        assert_eq!(close_of(&mut ws), (1002, reason.to_owned()), "{packet:?}");
    }
    // A binary WebSocket message is not Engine.IO text either.
    let (mut ws, _) = raw(l.server.ws);
    connect_as(&mut ws, "");
    ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(close_of(&mut ws).0, 1002);
    // The others carry on.
    let id = post(&mut poster, 7, "lq_by", json!("still here"));
    assert_eq!(
        text(&mut bystander),
        format!(r#"42["message",{{"id":{id},"channel":"lq_by","message":"still here"}}]"#)
    );
}

#[test]
fn lqdojs_crashing_inputs_get_error_events() {
    let l = start(&[]);
    let (mut c, _) = raw(l.listen);
    connect_as(&mut c, r#"{"role":"client"}"#);
    for packet in [r#"42["set-filter"]"#, r#"42["set-filter",null]"#] {
        send_text(&mut c, packet);
        assert_eq!(
            text(&mut c),
            r#"42["error",{"status":"error","code":"invalid-filter","message":"Invalid filter"}]"#
        );
    }
    send_text(&mut c, r#"42["start-msg"]"#);
    assert_eq!(
        text(&mut c),
        r#"42["error",{"status":"error","code":"invalid-start","message":"start-msg needs an object {start: id}"}]"#
    );
    let eleven: Vec<String> = (0..11).map(|i| format!("c{i}")).collect();
    send_text(
        &mut c,
        &format!("42{}", json!(["set-filter", {"filter": eleven}])),
    );
    assert_eq!(
        text(&mut c),
        r#"42["error",{"status":"error","code":"too-many-subscriptions","message":"Maximum 10 subscriptions per connection"}]"#
    );
    send_text(&mut c, r#"42["set-filter",{"filter":["ok",""]}]"#);
    assert_eq!(
        text(&mut c),
        r#"42["error",{"status":"error","code":"invalid-channel","message":"Channel must be a non-empty string (max 100 chars)"}]"#
    );
    send_text(&mut c, r#"42["post",{"channel":"x","message":1}]"#);
    assert_eq!(
        text(&mut c),
        r#"42["error",{"status":"error","code":"unauthorized","message":"Unauthorized operation"}]"#
    );
    let mut s = sender(l.listen);
    send_text(&mut s, r#"42["post",null]"#);
    assert_eq!(
        text(&mut s),
        r#"42["error",{"status":"error","code":"invalid-channel","message":"Invalid channel"}]"#
    );
    send_text(&mut s, r#"425["post",{"channel":null}]"#);
    assert_eq!(
        text(&mut s),
        r#"435[{"status":"error","code":"invalid-channel","message":"Invalid channel"}]"#
    );
    // Unknown events are ignored (LQDOJ has no handler); the connections
    // still work.
    send_text(&mut s, r#"42["nope",1]"#);
    send_text(&mut s, r#"426["last-msg"]"#);
    let last = text(&mut s);
    assert!(
        last.starts_with(r#"436[{"status":"success","id":"#),
        "{last}"
    );
    send_text(&mut c, r#"42["set-filter",{"filter":["ok"]}]"#);
    assert_eq!(text(&mut c), r#"42["status",{"status":"success"}]"#);
    let id = post(&mut s, 8, "ok", json!({"a": [1, "b"]}));
    assert_eq!(
        text(&mut c),
        format!(r#"42["message",{{"id":{id},"channel":"ok","message":{{"a":[1,"b"]}}}}]"#)
    );
}

#[test]
fn unknown_namespace_and_bad_token() {
    let l = start(&[]);
    let (mut ws, _) = raw(l.server.ws);
    send_text(&mut ws, "40/admin,");
    assert_eq!(text(&mut ws), r#"44/admin,{"message":"Invalid namespace"}"#);
    assert_eq!(
        connect_as(&mut ws, r#"{"role":"sender","token":"wrong"}"#),
        r#"44{"message":"Authentication failed"}"#
    );
    // Still open: a client CONNECT succeeds on it.
    assert!(connect_as(&mut ws, "").starts_with(r#"40{"sid":""#));
}

#[test]
fn server_pings_and_closes_on_missing_pong_and_connect_timeout() {
    let l = start(&[
        ("RINGCAST_PROTOCOLS_SOCKETIO_PING_INTERVAL", "300"),
        ("RINGCAST_PROTOCOLS_SOCKETIO_PING_TIMEOUT", "300"),
        ("RINGCAST_PROTOCOLS_SOCKETIO_CONNECT_TIMEOUT", "1500"),
    ]);
    let (mut ws, open) = raw(l.server.ws);
    assert_eq!(
        (open["pingInterval"].as_u64(), open["pingTimeout"].as_u64()),
        (Some(300), Some(300))
    );
    connect_as(&mut ws, "");
    let t = Instant::now();
    assert_eq!(text(&mut ws), "2");
    assert!(t.elapsed() < Duration::from_millis(1000));
    send_text(&mut ws, "3");
    assert_eq!(text(&mut ws), "2");
    // No pong: closed after pingTimeout.
    let t = Instant::now();
    assert_eq!(close_of(&mut ws), (1000, "ping timeout".to_owned()));
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    // A connection that never joins a namespace (but answers pings).
    let (mut idle, _) = raw(l.server.ws);
    let t = Instant::now();
    let close = loop {
        match read_message(&mut idle).expect("read") {
            Message::Text(p) if p.as_str() == "2" => send_text(&mut idle, "3"),
            Message::Close(Some(c)) => break (u16::from(c.code), c.reason.to_string()),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        close,
        (1000, "connect timeout: no Socket.IO CONNECT".to_owned())
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1300),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn over_capacity_clients_get_lqdojs_error_then_disconnect() {
    let l = start(&[("RINGCAST_PROTOCOLS_SOCKETIO_MAX_CLIENTS", "1")]);
    let mut first = receiver(l.server.ws, json!(["lq_cap"]));
    let (mut second, _) = raw(l.listen);
    assert!(connect_as(&mut second, "").starts_with(r#"40{"sid":""#));
    assert_eq!(
        text(&mut second),
        r#"42["error",{"status":"error","code":"server-capacity","message":"Server at capacity"}]"#
    );
    assert_eq!(text(&mut second), "41");
    assert_eq!(
        close_of(&mut second),
        (1000, "server at capacity".to_owned())
    );
    // Senders are not counted; the first client still receives.
    let mut s = sender(l.server.ws);
    let id = post(&mut s, 1, "lq_cap", json!(1));
    assert_eq!(
        text(&mut first),
        format!(r#"42["message",{{"id":{id},"channel":"lq_cap","message":1}}]"#)
    );
    // Its place is given back when it leaves.
    first.close(None).unwrap();
    let _ = close_of(&mut first);
    // (The session ends, and gives its place back, once the socket is
    // closed: the server lingers on a closing connection.)
    drop(first);
    std::thread::sleep(Duration::from_millis(300));
    let (mut third, _) = raw(l.listen);
    assert!(connect_as(&mut third, "").starts_with("40{"));
    send_text(&mut third, r#"42["last-msg"]"#);
    let last = text(&mut third);
    assert!(
        last.starts_with(r#"42["last-response",{"status":"success","id":"#),
        "{last}"
    );
}

#[test]
fn posts_cross_socketio_dmoj_native_and_the_backend() {
    let l = start(&[]);
    let mut sio = receiver(l.listen, json!(["lq_x"]));
    let mut dmoj = l.server.ws("/event/");
    send_text(&mut dmoj, r#"{"command":"set-filter","filter":["lq_x"]}"#);
    let mut native = l.server.ws("/");
    subscribe(&mut native, "lq_x");
    std::thread::sleep(Duration::from_millis(100));
    // Socket.IO sender → every form.
    let mut s = sender(l.server.ws);
    let id = post(&mut s, 3, "lq_x", json!({"type": "processing"}));
    assert_eq!(
        text(&mut sio),
        format!(
            r#"42["message",{{"id":{id},"channel":"lq_x","message":{{"type":"processing"}}}}]"#
        )
    );
    assert_eq!(
        recv(&mut dmoj),
        json!({"id": id, "channel": "lq_x", "message": {"type": "processing"}})
    );
    let n = recv(&mut native);
    assert_eq!(n["params"]["data"], json!({"type": "processing"}), "{n}");
    // The backend (and so DMOJ's poster, native publishers) → Socket.IO.
    l.server.emit("lq_x", json!({"type": "grading-end"}));
    let got = text(&mut sio);
    let v: Value = serde_json::from_str(got.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(v[0], "message");
    assert_eq!(v[1]["channel"], "lq_x");
    assert_eq!(v[1]["message"], json!({"type": "grading-end"}));
    let id2 = v[1]["id"].as_u64().unwrap();
    assert!(id2 > id);
    assert_eq!(
        got,
        format!(
            r#"42["message",{{"id":{id2},"channel":"lq_x","message":{{"type":"grading-end"}}}}]"#
        )
    );
    // last-msg is the node-wide last id.
    send_text(&mut s, r#"429["last-msg"]"#);
    assert_eq!(
        text(&mut s),
        format!(r#"439[{{"status":"success","id":{id2}}}]"#)
    );
}

fn clients_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn node_client_ready() -> bool {
    if !require_tool("node", "--version", "nodejs") {
        return false;
    }
    if !clients_dir().join("node_modules/socket.io-client").exists() {
        skip_or_fail(
            "engine/tests/clients/node_modules/socket.io-client is missing (cd engine/tests/clients && npm ci)",
        );
        return false;
    }
    true
}

fn run_node(url: &str, transports: &str) -> Value {
    let out = Command::new("node")
        .arg(clients_dir().join("lqdoj_socketio.js"))
        .args([url, TOKEN, transports])
        .output()
        .expect("run node");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "node output ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "{v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

fn check_lqdoj_flow(v: &Value) {
    let ids = |key: &str| -> Vec<u64> {
        v[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: {v}"))
            .iter()
            .map(|r| {
                assert_eq!(r["status"], "success", "{r}");
                r["id"].as_u64().unwrap()
            })
            .collect()
    };
    let early = ids("early");
    let live = ids("live");
    let before = v["lastBefore"]["id"].as_u64().unwrap();
    assert_eq!(v["lastBefore"]["status"], "success");
    assert!(early[0] > before, "{v}");
    assert!(early.windows(2).all(|w| w[1] > w[0]), "{early:?}");
    assert_eq!(
        v["receiverStatuses"],
        json!([{"status": "success"}, {"status": "success"}])
    );
    // Catch-up in id order, then live.
    let mut want: Vec<Value> = early
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"id": id, "channel": "lq_catch", "message": {"type": "processing", "n": i}}))
        .collect();
    want.extend(live.iter().enumerate().map(
        |(i, id)| json!({"id": id, "channel": "lq_live", "message": {"type": "grading-end", "n": i}}),
    ));
    assert_eq!(v["received"], Value::Array(want), "{v}");
    assert_eq!(v["lastAfter"], json!({"status": "success", "id": live[1]}));
    assert_eq!(v["postResponse"]["status"], "success");
    assert_eq!(v["lastResponse"]["status"], "success");
    assert_eq!(
        v["badChannelAck"],
        json!({"status": "error", "code": "invalid-channel", "message": "Invalid channel"})
    );
    assert_eq!(
        v["clientErrors"],
        json!([
            {"status": "error", "code": "unauthorized", "message": "Unauthorized operation"},
            {"status": "error", "code": "invalid-filter", "message": "Invalid filter"},
            {"status": "error", "code": "invalid-filter", "message": "Invalid filter"},
        ])
    );
    assert_eq!(v["clientLast"]["status"], "success");
    let missed = ids("missed");
    assert_eq!(
        v["caughtUp"],
        json!([
            {"id": missed[0], "channel": "lq_live", "message": {"type": "missed", "n": 0}},
            {"id": missed[1], "channel": "lq_live", "message": {"type": "missed", "n": 1}},
        ])
    );
    assert_eq!(v["badToken"], "Authentication failed");
}

#[test]
fn node_socket_io_client_websocket_transport_lqdoj_flow() {
    if !node_client_ready() {
        return;
    }
    let l = start(&[]);
    // LQDOJ's own listener, as Django's EVENT_DAEMON_URL points at it.
    let v = run_node(&format!("http://{}", l.listen), "websocket");
    assert_eq!(v["senderTransport"], "websocket");
    check_lqdoj_flow(&v);
    // And through the public port's path, as the browsers reach it.
    let v = run_node(&format!("http://{}", l.server.ws), "websocket");
    check_lqdoj_flow(&v);
}

fn python_has_socketio() -> bool {
    if !require_tool("python3", "--version", "python3") {
        return false;
    }
    let ok = Command::new("python3")
        .args(["-c", "import socketio, websocket"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip_or_fail(
            "python3 module `socketio` (python-socketio[client]) is missing (pip install -r engine/tests/clients/requirements.txt)",
        );
    }
    ok
}

#[test]
fn lqdojs_python_poster_with_python_socketio_over_websocket() {
    if !python_has_socketio() {
        return;
    }
    let l = start(&[]);
    let mut rx = receiver(l.server.ws, json!(["sub_py"]));
    std::thread::sleep(Duration::from_millis(100));
    let url = format!("http://{}", l.listen);
    let run = |token: &str| -> Value {
        let out = Command::new("python3")
            .arg(clients_dir().join("lqdoj_poster.py"))
            .args([url.as_str(), token, "sub_py", "3"])
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("poster output")
    };
    let refused = run("wrong");
    assert_eq!(
        refused["connect_error"],
        json!([{"message": "Authentication failed"}]),
        "{refused}"
    );
    let out = run(TOKEN);
    let ids: Vec<u64> = out["posted"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    assert_eq!(out["last"], ids[2]);
    assert_eq!(out["no_ack"]["status"], "success", "{out}");
    assert_eq!(out["no_ack"]["id"], ids[2] + 1, "{out}");
    assert_eq!(
        out["bad_channel"],
        json!({"status": "error", "code": "invalid-channel", "message": "Invalid channel"})
    );
    for (i, id) in ids.iter().enumerate() {
        let got = text(&mut rx);
        assert_eq!(
            got,
            format!(
                r#"42["message",{{"id":{id},"channel":"sub_py","message":{{"type":"processing","n":{i},"text":"caf\u00e9 \"q\""}}}}]"#
            )
        );
    }
}
