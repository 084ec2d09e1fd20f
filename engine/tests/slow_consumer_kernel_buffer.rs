//! Subscribers that never read are disconnected once they are
//! `limits.max_outbound_bytes` plus the kernel's socket buffers behind:
//! the kernel send buffer of each WebSocket connection is bounded
//! (`limits.socket_send_buffer`, SO_SNDBUF) instead of auto-tuned to
//! megabytes that hide the backlog from the slow-consumer policy.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SUBSCRIBERS: usize = 50;
/// Each publication's payload, about 1 KB.
const PAD: usize = 1000;

/// A client that subscribes to `channel` and then never reads.
fn deaf_subscriber(server: &Server, channel: &str) -> TcpStream {
    let mut s = deaf_client(server);
    let call =
        json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": channel}});
    let payload = call.to_string().into_bytes();
    let mask = [9u8, 8, 7, 6];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&f).unwrap();
    s
}

/// Publishes `n` publications of ~1 KB on `channel`, 100 per request.
fn publish(server: &Server, channel: &str, n: usize) {
    let data = json!({"pad": "x".repeat(PAD)});
    for first in (0..n).step_by(100) {
        let batch: Vec<Value> = (first..(first + 100).min(n))
            .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "emit", "params": {"channel": channel, "data": data}}))
            .collect();
        let (status, body) = server.http("POST", "/", &Value::Array(batch).to_string(), &[]);
        assert_eq!(status, 200, "{body}");
    }
}

fn disconnects(server: &Server) -> u64 {
    server.call("info", json!({}))["counters"]["slow_consumer_disconnects"]
        .as_u64()
        .unwrap()
}

#[test]
fn non_reading_subscribers_are_disconnected_within_budget_plus_socket_buffer() {
    // Budget 1 MiB (default), send buffer 64 KiB (default): a subscriber
    // 2 MB behind is past both, whatever its own receive buffer holds
    // (tcp_rmem's initial 128 KiB: it never reads, so it never grows).
    let server = Server::start(&[]);
    let _clients: Vec<TcpStream> = (0..SUBSCRIBERS)
        .map(|_| deaf_subscriber(&server, "feed"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.call("total_subscribers", json!({"channel": "feed"}))["total"] != SUBSCRIBERS {
        assert!(Instant::now() < deadline, "subscriptions never completed");
        std::thread::sleep(Duration::from_millis(20));
    }

    publish(&server, "feed", 2000);

    // The policy acts as the frames are queued; the wait is only for the
    // last flushes to run.
    let deadline = Instant::now() + Duration::from_secs(10);
    while disconnects(&server) < SUBSCRIBERS as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(disconnects(&server), SUBSCRIBERS as u64);
    assert_eq!(
        server.call("total_subscribers", json!({"channel": "feed"}))["total"],
        0
    );
}
