//! The WebSocket opening handshake against the real engine: accepted and
//! rejected upgrade requests over raw TCP, the handshake timeout, and a
//! normal client still served after every rejection.

mod common;

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::handshake::derive_accept_key;

const KEY: &str = "x3JJHMbDL1EzLkh9GBhXDw==";

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(server.ws).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// The request head `GET / HTTP/1.1` with the usual upgrade headers, minus
/// `without`, plus `extra` (which replace same-named ones).
fn upgrade_request(method: &str, without: &[&str], extra: &[(&str, &str)]) -> String {
    let base = [
        ("Host", "localhost"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ];
    let mut req = format!("{method} / HTTP/1.1\r\n");
    for (k, v) in base {
        let replaced = extra.iter().any(|(n, _)| n.eq_ignore_ascii_case(k));
        if !replaced && !without.iter().any(|n| n.eq_ignore_ascii_case(k)) {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// Expects EOF (or a reset) on the socket within its read timeout.
fn expect_closed(r: &mut impl Read) {
    let mut b = [0u8; 64];
    match r.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!("expected EOF, got {:?}", String::from_utf8_lossy(&b[..n])),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected EOF, got {e}"),
    }
}

/// Sends `request` raw, expects the rejection `status` with a JSON error
/// body and `Connection: close`, then the server closing the socket; then
/// a normal client still works.
fn rejected(server: &Server, request: &[u8], status: u16) -> Response {
    let mut s = connect(server);
    s.write_all(request).unwrap();
    let mut r = BufReader::new(s);
    let resp = read_http_response(&mut r);
    assert_eq!(
        resp.status,
        status,
        "request {:?}: {resp:?}",
        String::from_utf8_lossy(request)
    );
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    let body: Value = serde_json::from_str(&resp.body).expect("JSON error body");
    assert!(body["error"].is_string(), "{body}");
    expect_closed(&mut r);
    assert_serves(server);
    resp
}

/// A normal client subscribes and receives an emit.
fn assert_serves(server: &Server) {
    let mut ws = server.ws("/");
    subscribe(&mut ws, "after");
    let r = server.emit("after", json!("ok"));
    let m = recv(&mut ws);
    assert_eq!(m["method"], "message", "{m}");
    assert_eq!(m["params"]["offset"], r["offset"], "{m}");
    assert_eq!(m["params"]["data"], "ok", "{m}");
}

/// Sends a valid upgrade (plus `extra` headers), expects 101 with the right
/// accept key; returns the stream, positioned after the response head.
fn upgrade(server: &Server, extra: &[(&str, &str)]) -> BufReader<TcpStream> {
    let mut s = connect(server);
    s.write_all(upgrade_request("GET", &[], extra).as_bytes())
        .unwrap();
    let mut r = BufReader::new(s);
    let resp = read_http_response(&mut r);
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some(derive_accept_key(KEY.as_bytes()).as_str()),
        "{resp:?}"
    );
    assert!(
        resp.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{resp:?}"
    );
    assert!(
        resp.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "{resp:?}"
    );
    r
}

/// A masked client text frame (payload < 126 bytes).
fn text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut out = vec![0x81, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one unmasked server text frame (payload < 126 bytes), skipping
/// pings.
fn read_text(r: &mut impl Read) -> String {
    loop {
        let mut h = [0u8; 2];
        r.read_exact(&mut h).unwrap();
        assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
        let len = (h[1] & 0x7f) as usize;
        assert!(len < 126, "short frame expected");
        let mut p = vec![0u8; len];
        r.read_exact(&mut p).unwrap();
        match h[0] {
            0x81 => return String::from_utf8(p).unwrap(),
            0x89 => continue,
            b0 => panic!("unexpected frame {b0:#x} {:?}", String::from_utf8_lossy(&p)),
        }
    }
}

const HEARTBEAT: &str = r#"{"jsonrpc":"2.0","id":7,"method":"heartbeat"}"#;
const HEARTBEAT_REPLY: &str = r#"{"jsonrpc":"2.0","id":7,"result":{"heartbeat":"ok"}}"#;

#[test]
fn valid_upgrade_is_101_with_accept_key() {
    let server = Server::start(&[]);
    let mut r = upgrade(&server, &[]);
    // The connection is a working WebSocket.
    r.get_mut()
        .write_all(&text_frame(HEARTBEAT.as_bytes()))
        .unwrap();
    assert_eq!(read_text(&mut r), HEARTBEAT_REPLY);
    // The RFC's sample key, through the server.
    let mut s = connect(&server);
    let req = upgrade_request(
        "GET",
        &[],
        &[("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")],
    );
    s.write_all(req.as_bytes()).unwrap();
    let resp = read_http_response(&mut BufReader::new(s));
    assert_eq!(resp.status, 101);
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
}

#[test]
fn frames_pipelined_with_the_upgrade_request_are_served() {
    let server = Server::start(&[]);
    let mut s = connect(&server);
    let mut bytes = upgrade_request("GET", &[], &[]).into_bytes();
    bytes.extend_from_slice(&text_frame(HEARTBEAT.as_bytes()));
    s.write_all(&bytes).unwrap();
    let mut r = BufReader::new(s);
    let resp = read_http_response(&mut r);
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(read_text(&mut r), HEARTBEAT_REPLY);
}

#[test]
fn missing_key_is_400() {
    let server = Server::start(&[]);
    let req = upgrade_request("GET", &["Sec-WebSocket-Key"], &[]);
    rejected(&server, req.as_bytes(), 400);
    // A key that is not base64 of 16 bytes.
    let req = upgrade_request("GET", &[], &[("Sec-WebSocket-Key", "not-a-key")]);
    rejected(&server, req.as_bytes(), 400);
}

#[test]
fn version_8_is_426_naming_version_13() {
    let server = Server::start(&[]);
    let req = upgrade_request("GET", &[], &[("Sec-WebSocket-Version", "8")]);
    let resp = rejected(&server, req.as_bytes(), 426);
    assert_eq!(resp.header("sec-websocket-version"), Some("13"), "{resp:?}");
}

#[test]
fn post_is_400() {
    let server = Server::start(&[]);
    let req = upgrade_request("POST", &[], &[("Content-Length", "0")]);
    rejected(&server, req.as_bytes(), 400);
}

#[test]
fn plain_get_without_upgrade_is_400() {
    let server = Server::start(&[]);
    // handshake.rs: no `Upgrade: websocket` is HandshakeError::NotWebSocket,
    // status 400.
    let req = "GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n";
    rejected(&server, req.as_bytes(), 400);
    // Upgrade headers but no `Connection: upgrade`.
    let req = upgrade_request("GET", &["Connection"], &[]);
    rejected(&server, req.as_bytes(), 400);
}

#[test]
fn origin_allow_list() {
    let server = Server::start(&["--allowed-origin", "https://good.example"]);
    let req = upgrade_request("GET", &[], &[("Origin", "https://evil.example")]);
    rejected(&server, req.as_bytes(), 403);
    let mut r = upgrade(&server, &[("Origin", "https://good.example")]);
    r.get_mut()
        .write_all(&text_frame(HEARTBEAT.as_bytes()))
        .unwrap();
    assert_eq!(read_text(&mut r), HEARTBEAT_REPLY);
    assert_serves(&server);
}

#[test]
fn silent_client_is_closed_after_handshake_timeout() {
    let server = Server::start(&["--handshake-timeout", "1"]);
    // Sends nothing at all.
    let mut idle = connect(&server);
    // Sends half a request head, then stalls.
    let mut partial = connect(&server);
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n")
        .unwrap();
    let start = Instant::now();
    for s in [&mut idle, &mut partial] {
        let mut b = [0u8; 256];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Ok(n) => panic!(
                "expected the socket closed, got {:?}",
                String::from_utf8_lossy(&b[..n])
            ),
            Err(e) => panic!("expected the socket closed within 10 s: {e}"),
        }
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(6),
        "closed too late: {elapsed:?}"
    );
    assert_serves(&server);
}

#[test]
fn garbage_instead_of_http_is_400_and_closes() {
    let server = Server::start(&[]);
    rejected(
        &server,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        400,
    );
    rejected(&server, b"HELLO THERE\r\n\r\n", 400);
}

#[test]
fn request_head_over_8_kib_is_400() {
    let server = Server::start(&[]);
    // Exactly 8 KiB of headers with no end: the server reads all of it (so
    // it closes without a reset) and rejects it.
    let mut req = upgrade_request("GET", &[], &[]);
    req.truncate(req.len() - 2); // no empty line
    let pad = 8 * 1024 - req.len() - "X-Pad: \r\n".len();
    req.push_str(&format!("X-Pad: {}\r\n", "a".repeat(pad)));
    assert_eq!(req.len(), 8 * 1024);
    rejected(&server, req.as_bytes(), 400);
}

#[test]
fn origin_match_is_case_insensitive_and_missing_origin_is_accepted() {
    let server = Server::start(&["--allowed-origin", "https://good.example"]);
    upgrade(&server, &[("Origin", "HTTPS://GOOD.EXAMPLE")]);
    // handshake.rs: no Origin means a non-browser client; accepted.
    upgrade(&server, &[]);
    let req = upgrade_request("GET", &[], &[("Origin", "https://good.example.evil")]);
    rejected(&server, req.as_bytes(), 403);
}
