//! WebSocket clients past capacity get `503` with a JSON body before the
//! upgrade, and can never take the descriptors the backend port needs:
//! under a low `ulimit -n`, with the WebSocket side full, the backend
//! still answers.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Sends an upgrade request on raw TCP and reads the answer's head (and
/// body, when it has one). The stream stays open.
fn upgrade(server: &Server) -> (Response, TcpStream) {
    let mut s = TcpStream::connect(server.ws).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::with_capacity(1, s.try_clone().unwrap());
    (read_http_response(&mut r), s)
}

/// Asserts the answer at capacity: 503, JSON `{"error": ...}`, then FIN.
fn assert_refused(resp: &Response, mut s: TcpStream) {
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v: Value = serde_json::from_str(&resp.body).unwrap();
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("capacity")),
        "{v}"
    );
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .expect("closed with FIN after the 503");
}

fn refused_count(server: &Server) -> u64 {
    server.call("info", json!({}))["counters"]["connections_refused"]
        .as_u64()
        .unwrap()
}

#[test]
fn at_max_connections_the_next_client_reads_503_with_json() {
    let server = Server::start(&["--max-connections", "5"]);
    let mut clients: Vec<_> = (0..5).map(|_| server.ws("/")).collect();
    for _ in 0..3 {
        let (resp, s) = upgrade(&server);
        assert_refused(&resp, s);
    }
    assert_eq!(refused_count(&server), 3);
    // A client that leaves makes room (its socket is uncounted once its
    // session has ended, which the server sees a moment after the close).
    clients.pop().unwrap().close(None).unwrap();
    let mut upgraded = false;
    for _ in 0..100 {
        let (resp, s) = upgrade(&server);
        if resp.status == 101 {
            upgraded = true;
            break;
        }
        assert_refused(&resp, s);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(upgraded, "no room after a client left");
}

#[test]
fn a_full_websocket_side_leaves_descriptors_for_the_backend() {
    // 256 descriptors: 128 are kept from WebSocket clients.
    let server = Server::start_with_nofile(256, &[]);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let (resp, s) = upgrade(&server);
        if resp.status == 101 {
            assert_eq!(refused, 0, "an upgrade after a refusal");
            held.push(s);
        } else {
            assert_refused(&resp, s);
            refused += 1;
            if refused == 20 {
                break;
            }
        }
    }
    assert_eq!(held.len(), 128, "WebSocket capacity under ulimit -n 256");
    assert_eq!(refused, 20);
    // The WebSocket side is full; 40 backend connections at once are
    // all served.
    let mut backends: Vec<_> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(server.backend).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            BufReader::new(s)
        })
        .collect();
    for b in &mut backends {
        let resp = read_http_response(b);
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    let info = server.call("info", json!({}));
    assert_eq!(info["connections"], 128, "{info}");
    assert_eq!(info["counters"]["connections_refused"], 20, "{info}");
}
