//! The backend port under abuse: a request with a wrong or missing token is
//! refused as soon as its head is in (its body is never read nor asked for
//! with `100 Continue`), and a connection that sends nothing for
//! `backend.idle_timeout` is closed.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// The head of a 1 MB POST, then the first 1,000 bytes of its body.
fn partial_post(headers: &str) -> Vec<u8> {
    let mut req = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n{headers}\r\n")
        .into_bytes();
    req.extend_from_slice(&[b'x'; 1000]);
    req
}

/// Reads to end of stream; panics on a timeout or a reset (the server must
/// close with FIN after its answer).
fn read_to_eof(r: &mut impl Read) -> Vec<u8> {
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)
        .expect("the server closes the connection (FIN, no reset, no timeout)");
    rest
}

#[test]
fn unauthorized_partial_body_gets_401_at_once_and_the_connection_closes() {
    let server = Server::start(&["--api-token", "s3cret"]);
    for headers in [
        "",
        "Authorization: Bearer wrong\r\n",
        "X-Api-Key: nope\r\n",
        // Even asking for it: no `100 Continue` before the 401.
        "Expect: 100-continue\r\n",
        "Expect: 100-continue\r\nX-Api-Key: nope\r\n",
    ] {
        let mut s = TcpStream::connect(server.backend).unwrap();
        // The body is never completed: without an early answer this read
        // times out and the test fails.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&partial_post(headers)).unwrap();
        let mut r = BufReader::new(s);
        let resp = read_http_response(&mut r);
        assert_eq!(resp.status, 401, "{headers:?}: {resp:?}");
        assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
        let v: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        assert!(read_to_eof(&mut r).is_empty(), "{headers:?}");
    }
    // The right token still gets `100 Continue`, and its body is read.
    let mut s = TcpStream::connect(server.backend).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nX-Api-Key: s3cret\r\nExpect: 100-continue\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let interim = read_http_response(&mut r);
    assert_eq!(interim.status, 100, "{interim:?}");
    s.write_all(body.as_bytes()).unwrap();
    let resp = read_http_response(&mut r);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.body.contains(r#""ping":"ok""#), "{resp:?}");
    // /health needs no token, even with a body on the way.
    let mut s = TcpStream::connect(server.backend).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let resp = read_http_response(&mut BufReader::new(s));
    assert_eq!(resp.status, 200, "{resp:?}");
}

#[test]
fn idle_backend_connections_are_closed_after_the_idle_timeout() {
    let server = Server::start_with(&[], &[("RINGCAST_BACKEND_IDLE_TIMEOUT", "1")]);
    // A connection that never sends anything.
    let mut idle = TcpStream::connect(server.backend).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A connection that served a request, then went quiet (keep-alive).
    let mut quiet = TcpStream::connect(server.backend).unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    quiet
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut quiet = BufReader::new(quiet);
    assert_eq!(read_http_response(&mut quiet).status, 200);
    // A request stalled after its head: 408, then closed.
    let mut stalled = TcpStream::connect(server.backend).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stalled
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();

    assert!(read_to_eof(&mut idle).is_empty());
    assert!(read_to_eof(&mut quiet).is_empty());
    let mut stalled = BufReader::new(stalled);
    let resp = read_http_response(&mut stalled);
    assert_eq!(resp.status, 408, "{resp:?}");
    assert!(read_to_eof(&mut stalled).is_empty());

    let (status, metrics) = server.http("GET", "/metrics", "", &[]);
    assert_eq!(status, 200);
    let closed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ringcast_backend_idle_closed_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no idle counter in {metrics}"));
    assert!(closed >= 3, "{metrics}");
}
