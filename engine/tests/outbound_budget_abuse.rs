//! Every byte queued for a connection counts against its outbound budget
//! (`limits.max_outbound_bytes`): pongs, replies and errors as well as
//! publications. A client that floods requests and never reads is closed
//! as a slow consumer (policy `disconnect`) or stops being read (policy
//! `drop`); either way the server's memory stays bounded. Batches are
//! bounded (`limits.max_batch_length`) and invalid calls are rate limited
//! like valid ones.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// How much a flooding client tries to send: far more than any budget.
const FLOOD: usize = 96 << 20;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A masked client frame (payload < 64 KiB).
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [7u8, 1, 2, 3];
    let mut f = vec![0x80 | opcode];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Sends `unit` over and over without reading, until `FLOOD` bytes went
/// out or the server stopped taking them (closed, or stopped reading for
/// a second). Returns the bytes sent.
fn flood(s: &mut TcpStream, unit: &[u8]) -> usize {
    s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let chunk: Vec<u8> = unit.repeat((256 << 10) / unit.len());
    let mut sent = 0;
    while sent < FLOOD {
        match s.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => sent += n,
        }
    }
    sent
}

fn counter(server: &Server, name: &str) -> u64 {
    let info = server.call("info", json!({}));
    info["counters"][name].as_u64().unwrap()
}

fn start(policy: &str) -> Server {
    Server::start(&["--max-outbound-bytes", "262144", "--slow-consumer", policy])
}

/// Floods `unit` from a client that never reads; returns (bytes sent,
/// server RSS growth in KiB).
fn flood_from_deaf_client(server: &Server, unit: &[u8]) -> (usize, u64) {
    let before = rss_kib(server.pid());
    let mut deaf = deaf_client(server);
    let sent = flood(&mut deaf, unit);
    let grown = rss_kib(server.pid()).saturating_sub(before);
    eprintln!("sent {sent} bytes; server RSS grew by {grown} KiB");
    (sent, grown)
}

#[test]
fn a_ping_flood_that_never_reads_is_a_slow_consumer() {
    let server = start("disconnect");
    let (_, grown) = flood_from_deaf_client(&server, &frame(0x9, &[b'p'; 125]));
    assert_eq!(counter(&server, "slow_consumer_disconnects"), 1);
    assert!(grown < 32 << 10, "server RSS grew by {grown} KiB");
}

#[test]
fn a_ping_flood_under_drop_policy_is_no_longer_read() {
    let server = start("drop");
    let (sent, grown) = flood_from_deaf_client(&server, &frame(0x9, &[b'p'; 125]));
    // The server stopped reading: the client could not send it all.
    assert!(sent < FLOOD, "sent {sent}");
    assert!(grown < 32 << 10, "server RSS grew by {grown} KiB");
    assert_eq!(counter(&server, "slow_consumer_disconnects"), 0);
}

/// 100 calls that are each an error (47x amplification before the bound).
fn error_batch() -> Vec<u8> {
    let calls = vec!["1"; 100].join(",");
    frame(0x1, format!("[{calls}]").as_bytes())
}

#[test]
fn error_batches_from_a_client_that_never_reads_are_bounded() {
    let server = start("disconnect");
    let (_, grown) = flood_from_deaf_client(&server, &error_batch());
    assert_eq!(counter(&server, "slow_consumer_disconnects"), 1);
    assert!(grown < 32 << 10, "server RSS grew by {grown} KiB");

    let server = start("drop");
    let (sent, grown) = flood_from_deaf_client(&server, &error_batch());
    assert!(sent < FLOOD, "sent {sent}");
    assert!(grown < 32 << 10, "server RSS grew by {grown} KiB");
}

#[test]
fn a_batch_longer_than_the_limit_is_one_error() {
    let server = Server::start(&["--rate-burst", "1000"]);
    let mut ws = server.ws("/");
    let batch = |n: usize| {
        let calls: Vec<Value> = (0..n)
            .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "heartbeat"}))
            .collect();
        Value::Array(calls).to_string()
    };
    send_text(&mut ws, &batch(100));
    assert_eq!(recv(&mut ws).as_array().map(Vec::len), Some(100));
    send_text(&mut ws, &batch(101));
    let v = recv(&mut ws);
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert_eq!(v["id"], Value::Null, "{v}");
    assert_eq!(
        v["error"]["message"],
        "invalid request: batch of 101 calls, at most 100 allowed (limits.max_batch_length)"
    );
}

#[test]
fn invalid_calls_are_rate_limited_too() {
    // One token a second after a burst of 200: whatever the pace of the
    // test, at most a few more than 200 calls are answered.
    let server = Server::start(&["--rate-per-sec", "1", "--rate-burst", "200"]);
    let mut ws = server.ws("/");
    for id in 0..1000 {
        send(
            &mut ws,
            json!({"jsonrpc": "2.0", "id": id, "method": "nope"}),
        );
    }
    // Messages that are invalid as a whole take a token as well.
    for _ in 0..10 {
        send_text(&mut ws, "{not json");
    }
    let mut codes = std::collections::BTreeMap::<i64, usize>::new();
    for _ in 0..1010 {
        let v = recv(&mut ws);
        *codes
            .entry(v["error"]["code"].as_i64().unwrap())
            .or_default() += 1;
    }
    let unknown = codes.get(&-32601).copied().unwrap_or(0);
    let limited = codes.get(&-32003).copied().unwrap_or(0);
    assert!((200..=210).contains(&unknown), "{codes:?}");
    assert_eq!(unknown + limited, 1010, "{codes:?}");
    assert!(!codes.contains_key(&-32700), "{codes:?}");
}
