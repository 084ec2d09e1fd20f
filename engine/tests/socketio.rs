//! LQDOJ's Socket.IO event daemon, dropped in (`[protocols.socketio]`,
//! COMPAT.md sections 1 and 7): Engine.IO v4 over WebSocket at
//! `/socket.io/` on the public port and on LQDOJ's own listener, and
//! Engine.IO HTTP long-polling with its upgrade to WebSocket, driven by the
//! stock Node `socket.io-client` and Python `python-socketio` (default
//! transports, polling only, WebSocket only) and by raw frames and raw HTTP
//! for the exact error paths. The server runs `--shards 2`.

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
    let mut all = vec![
        ("RINGCAST_PROTOCOLS_SOCKETIO_ENABLED", "true"),
        ("RINGCAST_PROTOCOLS_SOCKETIO_TOKEN", TOKEN),
        ("RINGCAST_PROTOCOLS_DMOJ_ENABLED", "true"),
        ("RINGCAST_PROTOCOLS_DMOJ_RECEIVERS", ""),
        ("RINGCAST_PROTOCOLS_DMOJ_SENDERS", ""),
        ("RINGCAST_PROTOCOLS_DMOJ_LONG_POLL", ""),
    ];
    all.extend_from_slice(env);
    let (server, listen) = Server::start_listening(None, &[], &all, 1, |a| {
        vec![("RINGCAST_PROTOCOLS_SOCKETIO_LISTEN", a[0].to_string())]
    });
    Lqdoj {
        server,
        listen: listen[0],
    }
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
            "transport=polling is plain HTTP, not a WebSocket upgrade",
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
    // A plain polling request (no upgrade) is the polling handshake.
    let (status, body) = http_get(l.server.ws, "/socket.io/?EIO=4&transport=polling", false);
    assert_eq!(status, 200);
    assert!(body.starts_with("0{"), "{body}");
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
        .args(["-c", "import socketio, websocket, requests"])
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

// ----- Engine.IO long-polling and the upgrade ------------------------------

/// One HTTP request on a connection of its own (`Connection: close`, so
/// the requests of one session spread over the shards): status, headers,
/// body.
fn http(addr: SocketAddr, method: &str, target: &str, body: &str) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: x\r\nOrigin: http://lqdoj.test\r\nConnection: close\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_http_response(&mut BufReader::new(s))
}

const POLL: &str = "/socket.io/?EIO=4&transport=polling";

/// A polling session's handshake: its sid.
fn poll_open(addr: SocketAddr) -> String {
    let r = http(addr, "GET", POLL, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with('0'), "{}", r.body);
    let open: Value = serde_json::from_str(&r.body[1..]).unwrap();
    assert_eq!(open["upgrades"], json!(["websocket"]));
    assert!(open["pingInterval"].as_u64().is_some(), "{open}");
    open["sid"].as_str().unwrap().to_string()
}

fn poll_post(addr: SocketAddr, sid: &str, body: &str) -> Response {
    http(addr, "POST", &format!("{POLL}&sid={sid}"), body)
}

fn poll_get(addr: SocketAddr, sid: &str) -> Response {
    http(addr, "GET", &format!("{POLL}&sid={sid}"), "")
}

/// GETs until `n` packets arrived (pings answered with pongs).
fn poll_packets(addr: SocketAddr, sid: &str, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let r = poll_get(addr, sid);
        assert_eq!(r.status, 200, "{}", r.body);
        for p in r.body.split('\x1e') {
            if p == "2" {
                assert_eq!(poll_post(addr, sid, "3").body, "ok");
            } else {
                got.push(p.to_string());
            }
        }
    }
    got
}

fn eio_error(code: u8, message: &str) -> Value {
    json!({ "code": code, "message": message })
}

#[test]
fn polling_session_over_raw_http_across_two_shards() {
    let l = start(&[]);
    for addr in [l.server.ws, l.listen] {
        let sid = poll_open(addr);
        // Sender's CONNECT, a post with its ack, batched in one POST.
        let r = poll_post(
            addr,
            &sid,
            &format!(
                "40{{\"role\":\"sender\",\"token\":\"{TOKEN}\"}}\x1e421[\"post\",{{\"channel\":\"pl\",\"message\":\"x\"}}]\x1e422[\"last-msg\"]"
            ),
        );
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let got = poll_packets(addr, &sid, 3);
        assert!(got[0].starts_with("40{\"sid\":\""), "{got:?}");
        assert!(
            got[1].starts_with("431[{\"status\":\"success\",\"id\":"),
            "{got:?}"
        );
        let id: Value = serde_json::from_str(&got[1][3..]).unwrap();
        assert_eq!(
            got[2],
            format!("432[{{\"status\":\"success\",\"id\":{}}}]", id[0]["id"])
        );
        // A receiver over polling gets a live publication.
        let rsid = poll_open(addr);
        assert_eq!(poll_post(addr, &rsid, "40").body, "ok");
        assert!(poll_packets(addr, &rsid, 1)[0].starts_with("40{"));
        assert_eq!(
            poll_post(addr, &rsid, "42[\"set-filter\",{\"filter\":[\"pl\"]}]").body,
            "ok"
        );
        assert_eq!(
            poll_packets(addr, &rsid, 1),
            vec![r#"42["status",{"status":"success"}]"#]
        );
        let mut s = sender(l.server.ws);
        let pid = post(&mut s, 7, "pl", json!({"n": 1}));
        assert_eq!(
            poll_packets(addr, &rsid, 1),
            vec![format!(
                r#"42["message",{{"id":{pid},"channel":"pl","message":{{"n":1}}}}]"#
            )]
        );
        // A client's close ends the session: its next GET is the close
        // packet, then the sid is unknown.
        assert_eq!(poll_post(addr, &rsid, "41").body, "ok");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = poll_get(addr, &rsid);
            if r.status == 400 {
                assert_eq!(
                    serde_json::from_str::<Value>(&r.body).unwrap(),
                    eio_error(1, "Session ID unknown")
                );
                break;
            }
            assert!(Instant::now() < deadline, "session did not end: {}", r.body);
        }
    }
    // Each request came on a connection of its own, so SO_REUSEPORT spread
    // the requests of these sessions over both shards.
    let mut m = TcpStream::connect(l.server.backend).unwrap();
    m.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        m,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let metrics = read_http_response(&mut BufReader::new(m)).body;
    for shard in 0..2 {
        let line = format!("ringcast_polling_requests_total{{shard=\"{shard}\"}} ");
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .unwrap_or_else(|| panic!("{line}: {metrics}"))
            .parse()
            .unwrap();
        assert!(n > 0, "no polling request on shard {shard}: {metrics}");
    }
}

#[test]
fn polling_error_paths_answer_as_engine_io_and_spare_other_sessions() {
    let l = start(&[("RINGCAST_LIMITS_MAX_MESSAGE_SIZE", "20000")]);
    let a = l.server.ws;
    // Bystanders: a polling session and a WebSocket receiver.
    let other = poll_open(a);
    assert_eq!(poll_post(a, &other, "40").body, "ok");
    assert!(poll_packets(a, &other, 1)[0].starts_with("40{"));
    let mut ws_rx = receiver(a, json!(["spare"]));
    let json_of = |r: &Response| serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null);
    for (method, target, body, want) in [
        (
            "GET",
            "/socket.io/?EIO=3&transport=polling",
            "",
            eio_error(5, "Unsupported protocol version"),
        ),
        (
            "GET",
            "/socket.io/?transport=polling",
            "",
            eio_error(5, "Unsupported protocol version"),
        ),
        (
            "GET",
            "/socket.io/?EIO=4&transport=flash",
            "",
            eio_error(0, "Transport unknown"),
        ),
        (
            "GET",
            "/socket.io/?EIO=4",
            "",
            eio_error(0, "Transport unknown"),
        ),
        ("POST", POLL, "40", eio_error(2, "Bad handshake method")),
        (
            "GET",
            "/socket.io/?EIO=4&transport=polling&sid=nope",
            "",
            eio_error(1, "Session ID unknown"),
        ),
        (
            "POST",
            "/socket.io/?EIO=4&transport=polling&sid=nope",
            "40",
            eio_error(1, "Session ID unknown"),
        ),
        (
            "PUT",
            &format!("{POLL}&sid={other}"),
            "",
            eio_error(3, "Bad request"),
        ),
    ] {
        for addr in [a, l.listen] {
            let r = http(addr, method, target, body);
            assert_eq!(
                (r.status, json_of(&r)),
                (400, want.clone()),
                "{method} {target}"
            );
            assert_eq!(
                r.header("access-control-allow-origin"),
                Some("http://lqdoj.test")
            );
        }
    }
    // A CORS preflight.
    let r = http(a, "OPTIONS", POLL, "");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    // Too large a POST: 413, the connection closed.
    let big = "4".repeat(20_001);
    let r = poll_post(a, &other, &big);
    assert_eq!((r.status, r.body.as_str()), (413, "payload too large"));
    // A bad base64 packet: 400 Bad request, and that session ends.
    let bad = poll_open(a);
    let r = poll_post(a, &bad, "b!!!");
    assert_eq!((r.status, json_of(&r)), (400, eio_error(3, "Bad request")));
    assert_eq!(
        json_of(&poll_get(a, &bad)),
        eio_error(1, "Session ID unknown")
    );
    // Two GETs at once: the second is a 400 and the session closes (the
    // parked one gets the close packet).
    let twice = poll_open(a);
    let parked = {
        let sid = twice.clone();
        std::thread::spawn(move || poll_get(a, &sid))
    };
    std::thread::sleep(Duration::from_millis(300));
    let r = poll_get(l.listen, &twice);
    assert_eq!((r.status, r.body.as_str()), (400, ""));
    let r = parked.join().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "1"));
    assert_eq!(
        json_of(&poll_get(a, &twice)),
        eio_error(1, "Session ID unknown")
    );
    // The bystanders carry on.
    assert_eq!(
        poll_post(a, &other, "42[\"set-filter\",{\"filter\":[\"spare\"]}]").body,
        "ok"
    );
    assert_eq!(
        poll_packets(a, &other, 1),
        vec![r#"42["status",{"status":"success"}]"#]
    );
    let mut s = sender(a);
    let id = post(&mut s, 1, "spare", json!(1));
    let want = format!(r#"42["message",{{"id":{id},"channel":"spare","message":1}}]"#);
    assert_eq!(text(&mut ws_rx), want);
    assert_eq!(poll_packets(a, &other, 1), vec![want]);
}

#[test]
fn polling_session_expires_without_gets_and_upgrades_by_probe() {
    let l = start(&[
        ("RINGCAST_PROTOCOLS_SOCKETIO_PING_INTERVAL", "200"),
        ("RINGCAST_PROTOCOLS_SOCKETIO_PING_TIMEOUT", "200"),
    ]);
    let a = l.server.ws;
    let idle = poll_open(a);
    assert_eq!(poll_post(a, &idle, "40").body, "ok");
    // No GET: no pong can come, so after pingInterval + pingTimeout the
    // session is gone (nothing to deliver: its sid is forgotten at once).
    std::thread::sleep(Duration::from_millis(1500));
    let r = poll_get(a, &idle);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap(),
        eio_error(1, "Session ID unknown")
    );

    // The upgrade, by hand: a parked GET, 2probe/3probe, the GET gets the
    // noop, 5, and the session goes on over the WebSocket.
    let sid = poll_open(a);
    assert_eq!(poll_post(a, &sid, "40").body, "ok");
    assert!(poll_packets(a, &sid, 1)[0].starts_with("40{"));
    let parked = {
        let sid = sid.clone();
        std::thread::spawn(move || poll_get(a, &sid))
    };
    std::thread::sleep(Duration::from_millis(50));
    let stream = TcpStream::connect(l.listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        l.listen
    );
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).expect("upgrade");
    send_text(&mut ws, "2probe");
    assert_eq!(text(&mut ws), "3probe");
    let r = parked.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.split('\x1e').any(|p| p == "6"), "{}", r.body);
    send_text(&mut ws, "5");
    send_text(&mut ws, r#"42["set-filter",{"filter":["up"]}]"#);
    let mut got = text(&mut ws);
    while got == "2" {
        send_text(&mut ws, "3");
        got = text(&mut ws);
    }
    assert_eq!(got, r#"42["status",{"status":"success"}]"#);
    // Polling is over for this session (asked once the server has surely
    // read the `5` sent before the answered set-filter: a GET racing the
    // `5` over another socket may still be served).
    let r = poll_get(a, &sid);
    assert_eq!(
        (r.status, serde_json::from_str::<Value>(&r.body).unwrap()),
        (400, eio_error(3, "Bad request"))
    );
    let mut s = sender(a);
    let id = post(&mut s, 1, "up", json!("ws"));
    let mut got = text(&mut ws);
    while got == "2" {
        send_text(&mut ws, "3");
        got = text(&mut ws);
    }
    assert_eq!(
        got,
        format!(r#"42["message",{{"id":{id},"channel":"up","message":"ws"}}]"#)
    );
    // A wrong probe on another session closes only that WebSocket.
    let sid2 = poll_open(a);
    let stream = TcpStream::connect(a).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let url = format!("ws://{a}/socket.io/?EIO=4&transport=websocket&sid={sid2}");
    let (mut ws2, _) = tungstenite::client(url.as_str(), stream).expect("upgrade");
    send_text(&mut ws2, "2hello");
    assert_eq!(close_of(&mut ws2).0, 1000);
    // ... and the polling session it tried to upgrade still works.
    assert_eq!(poll_post(a, &sid2, "40").body, "ok");
    assert!(poll_packets(a, &sid2, 1)[0].starts_with("40{"));
}

fn check_switch(v: &Value) {
    let posted = v["switchPosted"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(posted.len(), 40, "{v}");
    assert_eq!(v["switchReceived"], v["switchPosted"], "{v}");
    assert_eq!(v["switchExtra"], Value::Null, "{v}");
}

#[test]
fn node_socket_io_client_polling_then_upgrade_and_polling_only() {
    if !node_client_ready() {
        return;
    }
    let l = start(&[]);
    // Default transports: polling, then the upgrade.
    for url in [
        format!("http://{}", l.server.ws),
        format!("http://{}", l.listen),
    ] {
        let v = run_node(&url, "polling,websocket");
        check_lqdoj_flow(&v);
        check_switch(&v);
        assert_eq!(v["r3FirstTransport"], "polling", "{v}");
        assert_eq!(v["r3Upgrades"], json!(["websocket"]), "{v}");
        assert_eq!(v["r3LastTransport"], "websocket", "{v}");
        assert_eq!(v["senderTransportEnd"], "websocket", "{v}");
    }
    // Polling only.
    let v = run_node(&format!("http://{}", l.server.ws), "polling");
    check_lqdoj_flow(&v);
    check_switch(&v);
    assert_eq!(v["senderTransport"], "polling");
    assert_eq!(v["r3Upgrades"], json!([]), "{v}");
    assert_eq!(v["r3LastTransport"], "polling", "{v}");
}

#[test]
fn lqdojs_python_clients_with_default_transports() {
    if !python_has_socketio() {
        return;
    }
    let l = start(&[]);
    let mut rx = receiver(l.server.ws, json!(["py_poll"]));
    let run = |token: &str, transports: &str| -> Value {
        let out = Command::new("python3")
            .arg(clients_dir().join("lqdoj_poster.py"))
            .args([
                &format!("http://{}", l.listen),
                token,
                "py_poll",
                "3",
                transports,
            ])
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
    let refused = run("wrong", "default");
    assert_eq!(
        refused["connect_error"],
        json!([{"message": "Authentication failed"}]),
        "{refused}"
    );
    for (transports, last_transport) in [("default", "websocket"), ("polling", "polling")] {
        let out = run(TOKEN, transports);
        let ids: Vec<u64> = out["posted"]
            .as_array()
            .unwrap_or_else(|| panic!("{out}"))
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
        assert_eq!(out["last"], ids[2]);
        assert_eq!(out["no_ack"]["id"], ids[2] + 1, "{out}");
        assert_eq!(
            out["bad_channel"],
            json!({"status": "error", "code": "invalid-channel", "message": "Invalid channel"})
        );
        assert_eq!(out["transport"], last_transport, "{out}");
        assert_eq!(out["receiver_transport"], last_transport, "{out}");
        let want: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| json!({"id": id, "channel": "py_poll", "message": {"type": "processing", "n": i, "text": "caf\u{e9} \"q\""}}))
            .collect();
        assert_eq!(out["caught_up"], Value::Array(want), "{out}");
        for id in &ids {
            let got = text(&mut rx);
            assert!(got.contains(&format!("\"id\":{id},")), "{got}");
        }
    }
}

#[test]
fn a_polling_session_takes_one_place_of_max_connections() {
    let l = start(&[("RINGCAST_LIMITS_MAX_CONNECTIONS", "4")]);
    let a = l.server.ws;
    // Three connected sessions, each with a GET parked on its own socket.
    let mut parked = Vec::new();
    for _ in 0..3 {
        let sid = poll_open(a);
        assert_eq!(poll_post(a, &sid, "40").body, "ok");
        assert!(poll_packets(a, &sid, 1)[0].starts_with("40{"));
        let mut s = TcpStream::connect(a).unwrap();
        write!(s, "GET {POLL}&sid={sid} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        parked.push(s);
    }
    // The one-request connections above are gone; the session itself
    // holds no socket (the bridge took a second place per session).
    std::thread::sleep(Duration::from_millis(300));
    let (mut ws, _) = raw(a);
    assert!(connect_as(&mut ws, "{}").starts_with("40{"));
    // All four places are taken now: the next socket is refused.
    let r = http(a, "GET", POLL, "");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("server at capacity"), "{}", r.body);
    // A place given back opens a session again.
    let _ = ws.close(None);
    drop(ws);
    std::thread::sleep(Duration::from_millis(500));
    let sid = poll_open(a);
    assert_eq!(poll_post(a, &sid, "40").body, "ok");
    assert!(poll_packets(a, &sid, 1)[0].starts_with("40{"));
}

#[test]
fn closing_a_parked_get_ends_its_session_only() {
    let l = start(&[]);
    let a = l.server.ws;
    let (sid, other) = (poll_open(a), poll_open(a));
    for s in [&sid, &other] {
        assert_eq!(poll_post(a, s, "40").body, "ok");
        assert!(poll_packets(a, s, 1)[0].starts_with("40{"));
    }
    let mut parked = TcpStream::connect(a).unwrap();
    write!(parked, "GET {POLL}&sid={sid} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // A closed tab: as in engine.io, the session ends with its poll.
    drop(parked);
    std::thread::sleep(Duration::from_millis(300));
    let r = poll_get(a, &sid);
    assert_eq!(
        (r.status, serde_json::from_str::<Value>(&r.body).unwrap()),
        (400, eio_error(1, "Session ID unknown"))
    );
    // The other session goes on.
    assert_eq!(
        poll_post(a, &other, r#"42["set-filter",{"filter":["x"]}]"#).body,
        "ok"
    );
    assert_eq!(
        poll_packets(a, &other, 1),
        vec![r#"42["status",{"status":"success"}]"#]
    );
}

/// How a polling session ends, as engine.io's reference server does it (the
/// official Engine.IO protocol suite checks each): a sid is forgotten as
/// soon as its session ends with nothing to deliver, the client's close
/// packet answers a parked GET with the noop, a GET during the upgrade gets
/// the noop at once, an upgraded sid refuses polling and a second
/// WebSocket; a server-side disconnect still reaches a polling client.
#[test]
fn polling_sessions_end_and_upgrade_as_engine_io_does() {
    let l = start(&[
        ("RINGCAST_PROTOCOLS_SOCKETIO_PING_INTERVAL", "300"),
        ("RINGCAST_PROTOCOLS_SOCKETIO_PING_TIMEOUT", "1000"),
        ("RINGCAST_PROTOCOLS_SOCKETIO_MAX_CLIENTS", "1"),
    ]);
    let a = l.server.ws;
    let json_of = |r: &Response| serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null);
    let unknown = eio_error(1, "Session ID unknown");

    // An unknown packet type is engine.io's parse error: 400, and the sid
    // is unknown at once.
    let sid = poll_open(a);
    let r = poll_post(a, &sid, "abc");
    assert_eq!((r.status, json_of(&r)), (400, eio_error(3, "Bad request")));
    assert_eq!(json_of(&poll_get(a, &sid)), unknown);

    // A ping timeout: the ping comes at 300 ms, no pong, the session ends
    // at 1.3 s and its sid is unknown from then on (it used to linger
    // pingTimeout more for a last GET).
    let sid = poll_open(a);
    std::thread::sleep(Duration::from_millis(1800));
    let r = poll_get(a, &sid);
    assert_eq!(
        (r.status, json_of(&r)),
        (400, unknown.clone()),
        "{}",
        r.body
    );

    // The client's close packet while a GET is parked: the GET gets the
    // noop, the POST `ok`, then the sid is unknown.
    let sid = poll_open(a);
    let parked = {
        let sid = sid.clone();
        std::thread::spawn(move || poll_get(a, &sid))
    };
    std::thread::sleep(Duration::from_millis(100));
    let r = poll_post(l.listen, &sid, "1");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let r = parked.join().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "6"));
    assert_eq!(json_of(&poll_get(a, &sid)), unknown);

    // The upgrade with no GET parked at the probe: the next GET gets the
    // noop at once (not the next ping).
    let sid = poll_open(a);
    let upgrade_ws = |sid: &str| {
        let stream = TcpStream::connect(l.listen).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let url = format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
            l.listen
        );
        tungstenite::client(url.as_str(), stream)
            .expect("upgrade")
            .0
    };
    let mut ws = upgrade_ws(&sid);
    send_text(&mut ws, "2probe");
    assert_eq!(text(&mut ws), "3probe");
    let t0 = Instant::now();
    let r = poll_get(a, &sid);
    assert_eq!((r.status, r.body.as_str()), (200, "6"));
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    send_text(&mut ws, "5");
    send_text(&mut ws, "40");
    assert!(text(&mut ws).starts_with("40{\"sid\":"));
    // After `5`: polling is refused, a second WebSocket is closed ...
    let r = poll_get(a, &sid);
    assert_eq!((r.status, json_of(&r)), (400, eio_error(3, "Bad request")));
    let mut again = upgrade_ws(&sid);
    assert_eq!(
        close_of(&mut again),
        (1000, "session already upgraded".to_owned())
    );
    // ... and the upgraded session goes on (it holds the one place of
    // max_clients).
    send_text(&mut ws, r#"42["set-filter",{"filter":["eio_by"]}]"#);
    let mut got = text(&mut ws);
    while got == "2" {
        send_text(&mut ws, "3");
        got = text(&mut ws);
    }
    assert_eq!(got, r#"42["status",{"status":"success"}]"#);

    // A server-side disconnect of a polling client (over capacity, after
    // its CONNECT) still reaches it: the next GET gets the event, `41` and
    // the close packet, then the sid is unknown.
    let sid = poll_open(a);
    assert_eq!(poll_post(a, &sid, "40").body, "ok");
    std::thread::sleep(Duration::from_millis(200));
    let r = poll_get(a, &sid);
    let packets: Vec<&str> = r.body.split('\x1e').filter(|p| *p != "2").collect();
    assert!(packets[0].starts_with("40{\"sid\":"), "{}", r.body);
    assert_eq!(
        &packets[1..],
        [
            r#"42["error",{"status":"error","code":"server-capacity","message":"Server at capacity"}]"#,
            "41",
            "1"
        ],
        "{}",
        r.body
    );
    assert_eq!(json_of(&poll_get(a, &sid)), unknown);

    // The upgraded client was never disturbed.
    let mut s = sender(a);
    let id = post(&mut s, 1, "eio_by", json!(1));
    let mut got = text(&mut ws);
    while got == "2" {
        send_text(&mut ws, "3");
        got = text(&mut ws);
    }
    assert_eq!(
        got,
        format!(r#"42["message",{{"id":{id},"channel":"eio_by","message":1}}]"#)
    );
}
