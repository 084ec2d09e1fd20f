//! The backend port over real TCP (SPEC section 4): each JSON-RPC method's
//! result, HTTP errors with JSON bodies, auth, keep-alive, pipelining,
//! /health and /metrics, and `flush_dead_clients` against a client that
//! never answers pings.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::protocol::Message;

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts an HTTP error: `status`, a JSON body `{"error": non-empty}`.
    fn assert_json_error(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
        let ct = self.header("content-type").unwrap_or("");
        assert!(ct.starts_with("application/json"), "{self:?}");
        let v = self.json();
        let err = &v["error"];
        let non_empty = match err {
            Value::String(s) => !s.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => false,
        };
        assert!(non_empty, "JSON body must carry an error: {self:?}");
    }
}

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(server.backend).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Writes raw bytes on a fresh connection and reads one response.
fn raw(server: &Server, bytes: &[u8]) -> Response {
    let mut s = connect(server);
    s.write_all(bytes).unwrap();
    read_http_response(&mut BufReader::new(s))
}

/// A request (keep-alive unless `close`).
fn request(method: &str, path: &str, body: &str, headers: &[(&str, &str)], close: bool) -> String {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        body.len()
    );
    if close {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req
}

fn rpc_body(id: u64, method: &str, params: Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}).to_string()
}

fn send_req(server: &Server, req: &str) -> Response {
    raw(server, req.as_bytes())
}

#[test]
fn every_backend_method_has_its_result_shape() {
    let server = Server::start(&[]);
    let mut clients = clients_on_both_shards(&server, 1);
    for ws in clients.iter_mut() {
        subscribe(ws, "b1");
    }
    let epoch = subscribe(&mut clients[0], "b2")["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    let n = clients.len() as u64;

    let ping = server.backend("ping", json!(null));
    assert_eq!(ping, json!({"jsonrpc":"2.0","id":1,"result":{"ping":"ok"}}));

    // emit
    let e = server.call("emit", json!({"channel": "b1", "data": {"k": "v"}}));
    assert_eq!(e["offset"], 1, "{e}");
    assert_eq!(e["subscribers"], n, "{e}");
    let id1 = e["id"].as_u64().expect("id");
    assert_eq!(e.as_object().unwrap().len(), 3, "{e}");
    for ws in clients.iter_mut() {
        let m = recv(ws);
        assert_eq!(m["params"]["id"], id1, "{m}");
        assert_eq!(m["params"]["data"], json!({"k": "v"}), "{m}");
    }

    // publish_many: one result per channel, in order.
    let r = server.call(
        "publish_many",
        json!({"channels": ["b1", "b2", "b3"], "data": [1, 2]}),
    );
    let arr = r.as_array().unwrap_or_else(|| panic!("array: {r}"));
    assert_eq!(arr.len(), 3, "{r}");
    let want = [("b1", 2, n), ("b2", 1, 1), ("b3", 1, 0)];
    let mut last_id = id1;
    for (v, (c, off, subs)) in arr.iter().zip(want) {
        assert_eq!(v["channel"], c, "{r}");
        assert_eq!(v["offset"], off, "{r}");
        assert_eq!(v["subscribers"], subs, "{r}");
        let id = v["id"].as_u64().unwrap();
        assert!(id > last_id, "ids increase: {r}");
        last_id = id;
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        let mut got = vec![recv(ws)];
        if i == 0 {
            got.push(recv(ws));
        }
        for m in got {
            assert_eq!(m["params"]["data"], json!([1, 2]), "{m}");
        }
    }

    // notify_all
    let b = server.call("notify_all", json!({"data": {"all": true}}));
    assert_eq!(b["connections"], n, "{b}");
    let bid = b["id"].as_u64().unwrap();
    assert!(bid > last_id, "{b}");
    for ws in clients.iter_mut() {
        let m = recv(ws);
        assert_eq!(m["method"], "broadcast", "{m}");
    }

    // total_subscribers
    let t = server.call("total_subscribers", json!({"channel": "b1"}));
    assert_eq!(t, json!({"total": n}));
    let t = server.call("total_subscribers", json!({"channel": "b3"}));
    assert_eq!(t, json!({"total": 0}));
    let t = server.call("total_subscribers", json!({}));
    assert_eq!(t, json!({"total": n + 1}), "all subscriptions");
    let t = server.call("total_subscribers", json!(null));
    assert_eq!(t, json!({"total": n + 1}), "all subscriptions");

    // available_channels: each channel once with its node-wide count.
    let a = server.call("available_channels", json!(null));
    let list = a["channels"].as_array().unwrap_or_else(|| panic!("{a}"));
    let mut pairs: Vec<(String, u64)> = list
        .iter()
        .map(|c| {
            (
                c["channel"].as_str().unwrap().to_string(),
                c["subscribers"].as_u64().unwrap(),
            )
        })
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        vec![("b1".to_string(), n), ("b2".to_string(), 1)],
        "{a}"
    );

    // flush_dead_clients: nobody is dead.
    let f = server.call("flush_dead_clients", json!(null));
    assert_eq!(f, json!({"flushed": 0}));

    // last: node-wide id, or a channel's offset and epoch.
    let l = server.call("last", json!(null));
    assert_eq!(l, json!({"id": bid}));
    let l = server.call("last", json!({"channel": "b2"}));
    assert_eq!(l, json!({"offset": 1, "epoch": epoch}));
    let l = server.call("last", json!({"channel": "b1"}));
    assert_eq!(l["offset"], 2, "{l}");

    // history
    let h = server.call("history", json!({"channel": "b1"}));
    assert_eq!(h["offset"], 2, "{h}");
    assert!(h["epoch"].is_string(), "{h}");
    let pubs = h["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 2, "{h}");
    assert_eq!(pubs[0]["offset"], 1);
    assert_eq!(pubs[0]["id"], id1);
    assert_eq!(pubs[0]["data"], json!({"k": "v"}));
    assert_eq!(pubs[1]["offset"], 2);
    assert_eq!(pubs[1]["data"], json!([1, 2]));
    let h = server.call("history", json!({"channel": "b1", "limit": 1}));
    assert_eq!(h["publications"].as_array().unwrap().len(), 1, "{h}");

    // info: per shard and in total.
    let i = server.call("info", json!(null));
    let shards = i["shards"].as_array().unwrap_or_else(|| panic!("{i}"));
    assert_eq!(shards.len(), 2, "{i}");
    let mut conns = 0;
    for s in shards {
        for key in ["connections", "subscriptions", "channels"] {
            assert!(s[key].is_u64(), "shard {key}: {i}");
        }
        conns += s["connections"].as_u64().unwrap();
    }
    assert_eq!(conns, n, "{i}");
    assert_eq!(i["connections"], n, "{i}");
    assert_eq!(i["subscriptions"], n + 1, "{i}");
    assert!(i["counters"].is_object(), "{i}");

    // Errors travel as JSON-RPC errors with HTTP 200.
    let v = server.backend("no_such_method", json!({}));
    assert_eq!(v["error"]["code"], -32601, "{v}");
    let v = server.backend("emit", json!({"channel": "bad channel", "data": 1}));
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let v = server.backend("emit", json!({"channel": "b1"}));
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let (status, body) = server.http("POST", "/", "{nope", &[]);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], -32700, "{v}");
    assert_eq!(v["id"], Value::Null, "{v}");

    // A batch answers in order.
    let batch = json!([
        {"jsonrpc":"2.0","id":1,"method":"ping"},
        {"jsonrpc":"2.0","id":2,"method":"emit","params":{"channel":"b3","data":0}},
        {"jsonrpc":"2.0","method":"ping"},
        {"jsonrpc":"2.0","id":3,"method":"nope"}
    ]);
    let (status, body) = server.http("POST", "/", &batch.to_string(), &[]);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let arr = v.as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(arr.len(), 3, "{v}");
    assert_eq!(arr[0]["result"], json!({"ping": "ok"}));
    assert_eq!(arr[1]["result"]["offset"], 2, "{v}");
    assert_eq!(arr[2]["error"]["code"], -32601, "{v}");
    // Notifications only: still a valid JSON body.
    let (status, body) = server.http("POST", "/", r#"{"jsonrpc":"2.0","method":"ping"}"#, &[]);
    assert_eq!(status, 200);
    serde_json::from_str::<Value>(&body).expect("valid JSON");
}

#[test]
fn auth_with_api_token() {
    let server = Server::start(&["--api-token", "s3cret"]);
    let body = rpc_body(1, "ping", json!(null));
    // Missing or wrong token: 401 with a JSON body.
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("X-Api-Key", "wrong")],
        vec![("Authorization", "s3cret")],
        vec![("Authorization", "Basic s3cret")],
    ] {
        let r = send_req(&server, &request("POST", "/", &body, &headers, true));
        r.assert_json_error(401);
    }
    let r = send_req(&server, &request("GET", "/metrics", "", &[], true));
    r.assert_json_error(401);
    // Either header form is accepted.
    for headers in [
        vec![("Authorization", "Bearer s3cret")],
        vec![("X-Api-Key", "s3cret")],
    ] {
        let r = send_req(&server, &request("POST", "/", &body, &headers, true));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["result"], json!({"ping": "ok"}), "{r:?}");
        let r = send_req(&server, &request("GET", "/metrics", "", &headers, true));
        assert_eq!(r.status, 200, "{r:?}");
    }
    // /health needs no token.
    let r = send_req(&server, &request("GET", "/health", "", &[], true));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "ok");
}

#[test]
fn http_errors_answer_with_status_and_json_body() {
    let server = Server::start_with(&[], &[("RINGCAST_BACKEND_MAX_BODY", "2048")]);

    // 400: not HTTP, or a broken head.
    raw(&server, b"THIS IS NOT HTTP\r\n\r\n").assert_json_error(400);
    raw(
        &server,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    )
    .assert_json_error(400);
    raw(
        &server,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    )
    .assert_json_error(400);

    // 404: other paths.
    let body = rpc_body(1, "ping", json!(null));
    for path in ["/nope", "/api", "/health/x"] {
        send_req(&server, &request("POST", path, &body, &[], true)).assert_json_error(404);
    }
    send_req(&server, &request("GET", "/nope", "", &[], true)).assert_json_error(404);

    // 405: other methods on known paths.
    for (method, path) in [
        ("GET", "/"),
        ("PUT", "/"),
        ("DELETE", "/"),
        ("POST", "/health"),
        ("POST", "/metrics"),
    ] {
        let r = send_req(&server, &request(method, path, &body, &[], true));
        r.assert_json_error(405);
    }

    // 413: a body over max_body; one under it is served.
    let big = rpc_body(1, "emit", json!({"channel": "c", "data": "x".repeat(3000)}));
    assert!(big.len() > 2048);
    send_req(&server, &request("POST", "/", &big, &[], true)).assert_json_error(413);
    let small = rpc_body(1, "emit", json!({"channel": "c", "data": "x".repeat(1800)}));
    assert!(small.len() < 2048);
    let r = send_req(&server, &request("POST", "/", &small, &[], true));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"]["offset"], 1, "{r:?}");
    // Declared too large before the body arrives: 413 at once.
    let r = raw(
        &server,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n",
    );
    r.assert_json_error(413);

    // The port still serves afterwards.
    assert_eq!(server.call("ping", json!(null)), json!({"ping": "ok"}));
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = Server::start(&[]);
    let s = connect(&server);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for i in 1..=3u64 {
        let body = rpc_body(i, "emit", json!({"channel": "ka", "data": i}));
        w.write_all(request("POST", "/", &body, &[], false).as_bytes())
            .unwrap();
        let resp = read_http_response(&mut r);
        assert_eq!(resp.status, 200, "{resp:?}");
        let v = resp.json();
        assert_eq!(v["id"], i, "{v}");
        assert_eq!(v["result"]["offset"], i, "{v}");
        assert!(
            !resp
                .header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close")),
            "{resp:?}"
        );
    }
    // GETs on the same connection too.
    w.write_all(request("GET", "/health", "", &[], false).as_bytes())
        .unwrap();
    let resp = read_http_response(&mut r);
    assert_eq!((resp.status, resp.body.as_str()), (200, "ok"));
    // `Connection: close` ends it after the answer.
    w.write_all(request("POST", "/", &rpc_body(9, "ping", json!(null)), &[], true).as_bytes())
        .unwrap();
    let resp = read_http_response(&mut r);
    assert_eq!(resp.json()["result"], json!({"ping":"ok"}));
    let mut rest = Vec::new();
    let n = r
        .read_to_end(&mut rest)
        .expect("server closes the connection");
    assert_eq!(n, 0, "nothing after the last answer");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let s = connect(&server);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut all = String::new();
    for i in 1..=3u64 {
        let body = rpc_body(i, "emit", json!({"channel": "pipe", "data": i}));
        all.push_str(&request("POST", "/", &body, &[], false));
    }
    all.push_str(&request("GET", "/health", "", &[], false));
    all.push_str(&request(
        "POST",
        "/",
        &rpc_body(4, "ping", json!(null)),
        &[],
        true,
    ));
    w.write_all(all.as_bytes()).unwrap();
    for i in 1..=3u64 {
        let resp = read_http_response(&mut r);
        assert_eq!(resp.status, 200, "{resp:?}");
        let v = resp.json();
        assert_eq!(v["id"], i, "answers in order: {v}");
        assert_eq!(v["result"]["offset"], i, "executed in order: {v}");
    }
    let resp = read_http_response(&mut r);
    assert_eq!((resp.status, resp.body.as_str()), (200, "ok"));
    let resp = read_http_response(&mut r);
    assert_eq!(resp.json()["id"], 4);
    let mut rest = Vec::new();
    assert_eq!(r.read_to_end(&mut rest).unwrap(), 0);

    // Pipelined requests split at odd places across writes.
    let s = connect(&server);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut all = String::new();
    for i in 5..=7u64 {
        all.push_str(&request(
            "POST",
            "/",
            &rpc_body(i, "ping", json!(null)),
            &[],
            false,
        ));
    }
    let bytes = all.as_bytes();
    for chunk in bytes.chunks(37) {
        w.write_all(chunk).unwrap();
        w.flush().unwrap();
    }
    for i in 5..=7u64 {
        let resp = read_http_response(&mut r);
        assert_eq!(resp.json()["id"], i, "{resp:?}");
    }
}

/// Pipelined publications run at once (none waits for the one before it
/// to come back from its channel's home shard) yet take their offsets and
/// reach subscribers in the order they were sent, on every shard.
#[test]
fn pipelined_publications_to_many_channels_keep_their_order() {
    let server = Server::start(&["--shards", "2"]);
    let channels: Vec<String> = (0..8).map(|c| format!("pipe{c}")).collect();
    let mut subscribers: Vec<_> = channels
        .iter()
        .map(|c| {
            let mut ws = server.ws("/");
            common::subscribe(&mut ws, c);
            ws
        })
        .collect();
    let s = connect(&server);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut all = String::new();
    for i in 0..200u64 {
        let channel = &channels[(i % 8) as usize];
        let body = rpc_body(i, "emit", json!({"channel": channel, "data": i}));
        all.push_str(&request("POST", "/", &body, &[], false));
    }
    w.write_all(all.as_bytes()).unwrap();
    for i in 0..200u64 {
        let v = read_http_response(&mut r).json();
        assert_eq!(v["id"], i, "answers in order: {v}");
        assert_eq!(v["result"]["offset"], i / 8 + 1, "offsets in order: {v}");
    }
    for (c, ws) in subscribers.iter_mut().enumerate() {
        for k in 0..25u64 {
            let m = common::recv(ws);
            assert_eq!(m["params"]["data"], k * 8 + c as u64, "{m}");
            assert_eq!(m["params"]["offset"], k + 1, "{m}");
        }
    }
}

#[test]
fn health_and_metrics() {
    let server = Server::start(&[]);
    let (status, body) = server.http("GET", "/health", "", &[]);
    assert_eq!((status, body.as_str()), (200, "ok"));

    let mut ws = server.ws("/");
    subscribe(&mut ws, "m");
    server.emit("m", json!(1));
    recv(&mut ws);
    let r = send_req(&server, &request("GET", "/metrics", "", &[], true));
    assert_eq!(r.status, 200, "{r:?}");
    let ct = r.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/plain"), "Prometheus text format: {ct}");
    let text = r.body;
    assert!(text.contains("ringcast_connections"), "{text}");
    assert!(text.contains("ringcast_deliveries_total"), "{text}");
    // Every sample line is `name{labels} number`.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(name.starts_with("ringcast_"), "{line}");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("sample value: {line}"));
    }
    // One delivery so far, counted in total.
    let deliveries: f64 = text
        .lines()
        .find(|l| l.starts_with("ringcast_deliveries_total "))
        .unwrap_or_else(|| panic!("total deliveries line: {text}"))
        .rsplit_once(' ')
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert!(deliveries >= 1.0, "{text}");
}

/// Reads the server's frames on a raw client socket until a ping (opcode
/// 0x9) arrives; the client answers nothing.
fn wait_for_ping(deaf: &mut std::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Server frames are unmasked; a ping's payload is under 126 bytes.
        while buf.len() >= 2 {
            let (opcode, len) = (buf[0] & 0x0f, usize::from(buf[1] & 0x7f));
            assert!(len < 126, "unexpected long frame before a ping: {buf:?}");
            if opcode == 0x9 {
                return;
            }
            if buf.len() < 2 + len {
                break;
            }
            buf.drain(..2 + len);
        }
        assert!(Instant::now() < deadline, "no ping within 10 s");
        match deaf.read(&mut chunk) {
            Ok(0) => panic!("the deaf client was closed before any ping"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the deaf client: {e}"),
        }
    }
}

#[test]
fn flush_dead_clients_closes_a_client_that_never_answers_pings() {
    let server = Server::start(&["--ping-interval", "1", "--pong-timeout", "30"]);
    let mut deaf = deaf_client(&server);
    let mut alive = server.ws("/");
    subscribe(&mut alive, "live");
    let stop = AtomicBool::new(false);
    let (flushed, mut alive) = std::thread::scope(|s| {
        // The live client keeps reading, so tungstenite answers each ping.
        let stop = &stop;
        let reader = s.spawn(move || {
            alive
                .get_mut()
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let mut pings = 0;
            while !stop.load(Ordering::SeqCst) {
                match read_message(&mut alive) {
                    Ok(Message::Ping(_)) => pings += 1,
                    Ok(m) => panic!("unexpected: {m:?}"),
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("live client: {e}"),
                }
            }
            // Let a pending pong leave.
            let _ = alive.flush();
            (pings, alive)
        });
        // No fixed sleep to outguess the ping timer: wait until the deaf
        // client has been sent a ping (read raw, so nothing answers it),
        // then ask for a flush until it finds that ping over a second old.
        wait_for_ping(&mut deaf);
        let deadline = Instant::now() + Duration::from_secs(10);
        let f = loop {
            let f = server.call("flush_dead_clients", json!(null));
            if f["flushed"].as_u64().unwrap_or(0) >= 1 {
                break f;
            }
            assert!(
                Instant::now() < deadline,
                "the deaf client, pinged, was never flushed: {f}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        stop.store(true, Ordering::SeqCst);
        let (pings, alive) = reader.join().unwrap();
        assert!(pings >= 1, "the server pings every second");
        (f, alive)
    });
    assert!(
        flushed["flushed"].as_u64().unwrap_or(0) >= 1,
        "the deaf client is flushed: {flushed}"
    );
    alive
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The deaf client's socket ends: reading what the server sent reaches
    // end-of-stream (its close frame comes after the pings).
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    loop {
        match deaf.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("deaf client not closed: {e}"),
        }
        assert!(Instant::now() < deadline, "deaf client not closed");
    }
    // The live client was not flushed: it still works and still receives.
    let r = rpc(&mut alive, 7, "heartbeat", json!(null));
    assert_eq!(r["result"], json!({"heartbeat":"ok"}), "{r}");
    let e = server.emit("live", json!("still here"));
    assert_eq!(e["subscribers"], 1, "{e}");
    let m = recv(&mut alive);
    assert_eq!(m["params"]["data"], "still here", "{m}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.call("info", json!(null))["connections"] != 1 {
        assert!(Instant::now() < deadline, "the flushed connection is gone");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Credentials that say two things are refused with 401 and a JSON error
/// naming what was wrong (not resolved by "the last header wins"); the
/// other connections, a subscriber and a correct backend client, are not
/// disturbed.
#[test]
fn credentials_that_say_two_things_are_refused() {
    let server = Server::start(&["--api-token", "s3cret"]);
    let mut ws = server.ws("/");
    subscribe(&mut ws, "auth");
    let body = rpc_body(1, "ping", json!(null));
    for (headers, why) in [
        (
            vec![
                ("Authorization", "Bearer s3cret"),
                ("Authorization", "Bearer s3cret"),
            ],
            "more than one Authorization header",
        ),
        (
            vec![
                ("Authorization", "Bearer wrong"),
                ("Authorization", "Bearer s3cret"),
            ],
            "more than one Authorization header",
        ),
        (
            vec![("X-Api-Key", "wrong"), ("X-Api-Key", "s3cret")],
            "more than one X-Api-Key header",
        ),
        (
            vec![("X-Api-Key", "s3cret"), ("Authorization", "Bearer wrong")],
            "Authorization: Bearer and X-Api-Key disagree",
        ),
        (
            vec![("Authorization", "Bearer s3cret"), ("X-Api-Key", "wrong")],
            "Authorization: Bearer and X-Api-Key disagree",
        ),
    ] {
        let r = send_req(&server, &request("POST", "/", &body, &headers, false));
        r.assert_json_error(401);
        assert_eq!(
            r.json(),
            json!({"error": format!("unauthorized: {why}")}),
            "{headers:?}"
        );
        assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    }
    // Both forms carrying the same token are one credential.
    let agreeing = [("Authorization", "Bearer s3cret"), ("X-Api-Key", "s3cret")];
    let r = send_req(&server, &request("POST", "/", &body, &agreeing, true));
    assert_eq!(r.status, 200, "{r:?}");
    // The subscriber and a correct publisher never noticed.
    let emit = rpc_body(2, "emit", json!({"channel": "auth", "data": "ok"}));
    let r = send_req(&server, &request("POST", "/", &emit, &agreeing[..1], true));
    assert_eq!(r.json()["result"]["subscribers"], 1, "{r:?}");
    assert_eq!(recv(&mut ws)["params"]["data"], "ok");
}

/// `ringcast serve` with the given backend address and extra arguments:
/// `Err(output)` if it exited within 10 s, `Ok(())` once the backend port
/// answers `/health` (the server is then stopped).
fn serve_backend_on(
    backend: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<(), std::process::Output> {
    let port: u16 = backend.rsplit(':').next().unwrap().parse().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args([
            "serve",
            "--shards",
            "1",
            "--ws-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--backend-listen", backend])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            return Err(child.wait_with_output().unwrap());
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap();
            let r = read_http_response(&mut BufReader::new(s));
            assert_eq!(r.status, 200, "{r:?}");
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "ringcast neither started nor exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A backend port on a non-loopback address with no token would let anyone
/// who reaches it publish to every client: refused at start (exit 2, one
/// line naming the key and the ways out) unless a token is set or the
/// operator says `--insecure-backend` / `backend.insecure = true`.
#[test]
fn non_loopback_backend_without_token_refuses_to_start() {
    let addr = format!("0.0.0.0:{}", free_port());
    let out = serve_backend_on(&addr, &[], &[]).expect_err("started without a token");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "invalid config: backend.api_token: required when backend.listen ({addr}) is not a \
             loopback address: set a token (--api-token), listen on 127.0.0.1, or accept an \
             unauthenticated backend with backend.insecure = true (--insecure-backend)"
        )
    );
    // Each way out starts it.
    let fresh = || format!("0.0.0.0:{}", free_port());
    serve_backend_on(&fresh(), &["--api-token", "s3cret"], &[]).unwrap();
    serve_backend_on(&fresh(), &["--insecure-backend"], &[]).unwrap();
    serve_backend_on(&fresh(), &[], &[("RINGCAST_BACKEND_INSECURE", "true")]).unwrap();
    // Loopback needs neither.
    serve_backend_on(&format!("127.0.0.1:{}", free_port()), &[], &[]).unwrap();
}
