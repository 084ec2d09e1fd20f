//! RFC 6455 server duties at the frame level, against the real engine.
//!
//! A raw TCP client does the upgrade by hand, writes hand-built client
//! frames (masked unless the case is about an unmasked frame) and reads the
//! server's frames back with a small reader. Every case asserts the exact
//! close code the server sends, that the server then closes the TCP
//! connection, and that the engine still serves a fresh connection.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

const HEARTBEAT_5: &str = r#"{"jsonrpc":"2.0","id":5,"method":"heartbeat"}"#;
const HEARTBEAT_5_REPLY: &str = r#"{"jsonrpc":"2.0","id":5,"result":{"heartbeat":"ok"}}"#;

// ---------------------------------------------------------------- raw client

/// Opens a TCP connection and performs the upgrade by hand.
fn raw_connect(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(server.ws).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.ws
    );
    s.write_all(req.as_bytes()).unwrap();
    // Read byte by byte so no frame byte after the head is swallowed.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).expect("read upgrade response");
        assert_eq!(
            n,
            1,
            "EOF during handshake: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
        assert!(head.len() < 4096, "response head too long");
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    s
}

/// A client frame with an arbitrary first byte (FIN, RSV, opcode).
fn raw_frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![b0];
    let mask_bit = if masked { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(if fin { 0x80 } else { 0 } | opcode, payload, true)
}

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

/// One server frame.
#[derive(Debug)]
struct ServerFrame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: Vec<u8>,
}

/// Reads one server frame; `None` on EOF (or reset) before its first byte.
fn read_frame(s: &mut TcpStream) -> Option<ServerFrame> {
    let mut h = [0u8; 2];
    match s.read_exact(&mut h) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) =>
        {
            return None
        }
        Err(e) => panic!("reading a frame header: {e}"),
    }
    assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).expect("reading a frame payload");
    Some(ServerFrame {
        fin: h[0] & 0x80 != 0,
        rsv: (h[0] >> 4) & 0x7,
        opcode: h[0] & 0x0f,
        payload,
    })
}

/// The next server frame that is not a keep-alive ping.
fn next_frame(s: &mut TcpStream) -> ServerFrame {
    loop {
        let f = read_frame(s).expect("server closed the connection");
        assert_eq!(f.rsv, 0, "server frame with RSV bits: {f:?}");
        if f.opcode != OP_PING {
            return f;
        }
    }
}

/// Expects a close frame with `code`, then the server closing TCP.
fn expect_close(s: &mut TcpStream, code: u16) {
    let f = next_frame(s);
    assert_eq!(
        f.opcode,
        OP_CLOSE,
        "expected close {code}, got opcode {} payload {:?}",
        f.opcode,
        String::from_utf8_lossy(&f.payload)
    );
    assert!(f.fin);
    assert!(
        f.payload.len() >= 2,
        "close without a code (expected {code}): {:?}",
        f.payload
    );
    let got = u16::from_be_bytes([f.payload[0], f.payload[1]]);
    assert_eq!(got, code, "close code");
    assert!(
        std::str::from_utf8(&f.payload[2..]).is_ok(),
        "close reason must be UTF-8"
    );
    expect_eof(s);
}

/// Expects the server to close the TCP connection (nothing but pings
/// before EOF) within 5 s.
fn expect_eof(s: &mut TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            Instant::now() < deadline,
            "server did not close the TCP connection"
        );
        match read_frame(s) {
            None => return,
            Some(f) if f.opcode == OP_PING => {}
            Some(f) => panic!("unexpected frame after close: {f:?}"),
        }
    }
}

fn expect_text(s: &mut TcpStream) -> String {
    let f = next_frame(s);
    assert_eq!(
        f.opcode,
        OP_TEXT,
        "expected a text frame, got opcode {} payload {:?}",
        f.opcode,
        String::from_utf8_lossy(&f.payload)
    );
    assert!(f.fin);
    String::from_utf8(f.payload).unwrap()
}

fn expect_pong(s: &mut TcpStream, payload: &[u8]) {
    let f = next_frame(s);
    assert_eq!(f.opcode, OP_PONG, "expected a pong, got {f:?}");
    assert!(f.fin);
    assert_eq!(f.payload, payload, "pong payload");
}

/// The engine still serves a fresh connection: a new client subscribes and
/// receives an emit.
fn assert_serves(server: &Server) {
    let mut ws = server.ws("/");
    subscribe(&mut ws, "fresh");
    let r = server.emit("fresh", json!({"still": "alive"}));
    let m = recv(&mut ws);
    assert_eq!(m["method"], "message", "{m}");
    assert_eq!(m["params"]["channel"], "fresh", "{m}");
    assert_eq!(m["params"]["offset"], r["offset"], "{m}");
    assert_eq!(m["params"]["data"], json!({"still": "alive"}), "{m}");
}

/// Sends `bytes` on a fresh raw connection, expects close `code`, then
/// checks the engine still serves a fresh connection.
fn violation(server: &Server, bytes: &[u8], code: u16) {
    let mut s = raw_connect(server);
    s.write_all(bytes).unwrap();
    expect_close(&mut s, code);
    assert_serves(server);
}

fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

// ---------------------------------------------------------------- sanity

#[test]
fn raw_client_gets_heartbeat_reply() {
    let server = Server::start(&[]);
    let mut s = raw_connect(&server);
    s.write_all(&frame(true, OP_TEXT, HEARTBEAT_5.as_bytes()))
        .unwrap();
    assert_eq!(expect_text(&mut s), HEARTBEAT_5_REPLY);
}

// ---------------------------------------------------------------- 1002

#[test]
fn unmasked_client_frame_is_1002() {
    let server = Server::start(&[]);
    violation(
        &server,
        &raw_frame(0x81, HEARTBEAT_5.as_bytes(), false),
        1002,
    );
    // An unmasked control frame too.
    violation(&server, &raw_frame(0x89, b"p", false), 1002);
}

#[test]
fn rsv_bits_are_1002() {
    let server = Server::start(&[]);
    for rsv in [0x40u8, 0x20, 0x10] {
        violation(
            &server,
            &raw_frame(0x80 | rsv | OP_TEXT, HEARTBEAT_5.as_bytes(), true),
            1002,
        );
    }
}

#[test]
fn reserved_opcodes_are_1002() {
    let server = Server::start(&[]);
    for op in [3u8, 11] {
        violation(&server, &raw_frame(0x80 | op, b"x", true), 1002);
    }
}

#[test]
fn fragmented_ping_is_1002() {
    let server = Server::start(&[]);
    violation(&server, &frame(false, OP_PING, b"abc"), 1002);
}

#[test]
fn ping_with_126_byte_payload_is_1002() {
    let server = Server::start(&[]);
    violation(&server, &frame(true, OP_PING, &[b'p'; 126]), 1002);
}

#[test]
fn continuation_without_start_is_1002() {
    let server = Server::start(&[]);
    violation(&server, &frame(true, OP_CONT, HEARTBEAT_5.as_bytes()), 1002);
}

#[test]
fn new_text_frame_inside_fragmented_message_is_1002() {
    let server = Server::start(&[]);
    let bytes = cat(&[
        frame(false, OP_TEXT, br#"{"jsonrpc":"2.0","#),
        frame(true, OP_TEXT, HEARTBEAT_5.as_bytes()),
    ]);
    violation(&server, &bytes, 1002);
}

#[test]
fn close_with_invalid_codes_is_1002() {
    let server = Server::start(&[]);
    for code in [999u16, 1004, 1005, 1006, 1015, 2000, 5000] {
        let mut s = raw_connect(&server);
        s.write_all(&frame(true, OP_CLOSE, &close_payload(code)))
            .unwrap();
        let f = next_frame(&mut s);
        assert_eq!(f.opcode, OP_CLOSE, "close {code}: {f:?}");
        assert_eq!(
            f.payload.get(..2),
            Some(&1002u16.to_be_bytes()[..]),
            "close {code} must be answered with 1002"
        );
        expect_eof(&mut s);
        assert_serves(&server);
    }
}

#[test]
fn close_with_one_byte_payload_is_1002() {
    let server = Server::start(&[]);
    violation(&server, &frame(true, OP_CLOSE, &[0x03]), 1002);
}

// ---------------------------------------------------------------- 1007

#[test]
fn invalid_utf8_in_text_frame_is_1007() {
    let server = Server::start(&[]);
    violation(
        &server,
        &frame(true, OP_TEXT, b"{\"a\":\"\xff\xfe\"}"),
        1007,
    );
}

#[test]
fn invalid_utf8_split_across_fragments_is_1007() {
    let server = Server::start(&[]);
    // A 4-byte lead in the first fragment, a non-continuation byte in the
    // second.
    let bytes = cat(&[
        frame(false, OP_TEXT, b"{\"a\":\"\xf0\x90"),
        frame(true, OP_CONT, b"\x28\"}"),
    ]);
    violation(&server, &bytes, 1007);
    // A message ending inside a character.
    let bytes = cat(&[
        frame(false, OP_TEXT, b"{\"a\":"),
        frame(true, OP_CONT, b"\"\xe2\x82"),
    ]);
    violation(&server, &bytes, 1007);
}

#[test]
fn valid_utf8_split_mid_character_is_accepted() {
    let server = Server::start(&[]);
    let text = r#"{"jsonrpc":"2.0","id":"é€","method":"heartbeat"}"#;
    let bytes = text.as_bytes();
    let e_acute = text.find('é').unwrap();
    let euro = text.find('€').unwrap();
    // Split inside "é" (2 bytes) and inside "€" (3 bytes, both positions).
    for (a, b) in [(e_acute + 1, euro + 1), (e_acute + 1, euro + 2)] {
        let mut s = raw_connect(&server);
        s.write_all(&frame(false, OP_TEXT, &bytes[..a])).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(&frame(false, OP_CONT, &bytes[a..b])).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(&frame(true, OP_CONT, &bytes[b..])).unwrap();
        let reply: Value = serde_json::from_str(&expect_text(&mut s)).unwrap();
        assert_eq!(
            reply,
            json!({"jsonrpc":"2.0","id":"é€","result":{"heartbeat":"ok"}}),
            "split at {a}/{b}"
        );
        // The connection is still usable.
        s.write_all(&frame(true, OP_TEXT, HEARTBEAT_5.as_bytes()))
            .unwrap();
        assert_eq!(expect_text(&mut s), HEARTBEAT_5_REPLY);
    }
    assert_serves(&server);
}

// ---------------------------------------------------------------- control frames

#[test]
fn ping_interleaved_in_fragmented_message_gets_pong_and_message_completes() {
    let server = Server::start(&[]);
    let b = HEARTBEAT_5.as_bytes();
    let (p1, p2) = (b.len() / 3, 2 * b.len() / 3);
    let frames = [
        frame(false, OP_TEXT, &b[..p1]),
        frame(true, OP_PING, b"mid-message"),
        frame(false, OP_CONT, &b[p1..p2]),
        frame(true, OP_CONT, &b[p2..]),
    ];

    // Frame by frame, separate writes.
    let mut s = raw_connect(&server);
    for f in &frames {
        s.write_all(f).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    expect_pong(&mut s, b"mid-message");
    assert_eq!(expect_text(&mut s), HEARTBEAT_5_REPLY);

    // All at once.
    let mut s = raw_connect(&server);
    s.write_all(&cat(&frames)).unwrap();
    expect_pong(&mut s, b"mid-message");
    assert_eq!(expect_text(&mut s), HEARTBEAT_5_REPLY);

    // One byte at a time (frames cut across reads).
    let mut s = raw_connect(&server);
    for byte in cat(&frames) {
        s.write_all(&[byte]).unwrap();
    }
    expect_pong(&mut s, b"mid-message");
    assert_eq!(expect_text(&mut s), HEARTBEAT_5_REPLY);
    assert_serves(&server);
}

#[test]
fn ping_payload_is_echoed_in_pong() {
    let server = Server::start(&[]);
    let mut s = raw_connect(&server);
    s.write_all(&frame(true, OP_PING, b"abc")).unwrap();
    expect_pong(&mut s, b"abc");
    // Empty and maximal (125 bytes) control payloads.
    s.write_all(&frame(true, OP_PING, b"")).unwrap();
    expect_pong(&mut s, b"");
    let big: Vec<u8> = (0..125u8).collect();
    s.write_all(&frame(true, OP_PING, &big)).unwrap();
    expect_pong(&mut s, &big);
    // The connection still works.
    s.write_all(&frame(true, OP_TEXT, HEARTBEAT_5.as_bytes()))
        .unwrap();
    assert_eq!(expect_text(&mut s), HEARTBEAT_5_REPLY);
}

#[test]
fn close_1000_is_echoed_with_1000() {
    let server = Server::start(&[]);
    let mut s = raw_connect(&server);
    let mut payload = close_payload(1000);
    payload.extend_from_slice(b"bye");
    s.write_all(&frame(true, OP_CLOSE, &payload)).unwrap();
    expect_close(&mut s, 1000);
    assert_serves(&server);
}

// ---------------------------------------------------------------- 1009

#[test]
fn message_over_max_message_size_is_1009() {
    let server = Server::start(&["--max-message-size", "1024"]);
    violation(&server, &frame(true, OP_TEXT, &[b' '; 2000]), 1009);
    violation(&server, &frame(true, OP_BINARY, &[0u8; 2000]), 1009);
}

#[test]
fn fragmented_message_over_max_message_size_is_1009() {
    let server = Server::start(&["--max-message-size", "1024"]);
    let bytes = cat(&[
        frame(false, OP_TEXT, &[b' '; 500]),
        frame(false, OP_CONT, &[b' '; 500]),
        frame(true, OP_CONT, &[b' '; 500]),
    ]);
    violation(&server, &bytes, 1009);
}

#[test]
fn message_of_exactly_max_message_size_is_accepted() {
    let server = Server::start(&["--max-message-size", "1024"]);
    let mut text = HEARTBEAT_5.to_string();
    text.push_str(&" ".repeat(1024 - text.len()));
    assert_eq!(text.len(), 1024);
    let mut s = raw_connect(&server);
    s.write_all(&frame(true, OP_TEXT, text.as_bytes())).unwrap();
    assert_eq!(expect_text(&mut s), HEARTBEAT_5_REPLY);
    // Also fragmented (3 fragments adding up to exactly 1024).
    let b = text.as_bytes();
    s.write_all(&cat(&[
        frame(false, OP_TEXT, &b[..400]),
        frame(false, OP_CONT, &b[400..800]),
        frame(true, OP_CONT, &b[800..]),
    ]))
    .unwrap();
    assert_eq!(expect_text(&mut s), HEARTBEAT_5_REPLY);
}

// ---------------------------------------------------------------- isolation

#[test]
fn other_subscribers_keep_receiving_while_a_connection_fails() {
    let server = Server::start(&[]);
    let mut subs = clients_on_both_shards(&server, 1);
    for ws in subs.iter_mut() {
        subscribe(ws, "news");
    }
    let bad_cases: Vec<(Vec<u8>, u16)> = vec![
        (raw_frame(0x81, b"x", false), 1002),
        (raw_frame(0xC1, b"x", true), 1002),
        (frame(true, OP_CONT, b"x"), 1002),
        (frame(true, OP_TEXT, b"\xff"), 1007),
        (frame(true, OP_CLOSE, &close_payload(1005)), 1002),
    ];
    let total = 60u64;
    std::thread::scope(|scope| {
        let server = &server;
        let bad_cases = &bad_cases;
        let failing = scope.spawn(move || {
            for _ in 0..4 {
                for (bytes, code) in bad_cases {
                    let mut s = raw_connect(server);
                    s.write_all(bytes).unwrap();
                    expect_close(&mut s, *code);
                }
            }
        });
        for i in 0..total {
            let r = server.emit("news", json!({"n": i}));
            assert_eq!(r["offset"], i + 1);
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        failing.join().unwrap();
    });
    for ws in subs.iter_mut() {
        for i in 0..total {
            let m = recv(ws);
            assert_eq!(m["method"], "message", "{m}");
            assert_eq!(m["params"]["offset"], i + 1, "{m}");
            assert_eq!(m["params"]["data"]["n"], i, "{m}");
        }
        assert_silent(ws, Duration::from_millis(100));
    }
    assert_serves(&server);
}
