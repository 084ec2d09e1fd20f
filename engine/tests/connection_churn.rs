//! Connections opened and closed by the thousand leave a shard's internal
//! structures as they found them: the shutdown latch keeps no waiter per
//! accept, the connection registry no slot per connection ever made.
//!
//! The engine runs in this process so the test can read each shard's
//! internal sizes (`Node::gather_blocking`), which are exact, unlike RSS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringcast::ops::config::Config;
use ringcast::runtime::shard::{Gather, Internals, Node};

const UPGRADE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Opens a WebSocket connection and waits for its `101`.
fn open(ws: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(ws).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(UPGRADE).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

fn internals(node: &Node) -> Vec<Internals> {
    let reports = node.gather_blocking(Gather::Stats, Duration::from_secs(10));
    assert_eq!(reports.len(), node.shards);
    reports.iter().map(|r| r.internals).collect()
}

/// The shards' internals once every session has ended.
fn settled(node: &Node) -> Vec<Internals> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = internals(node);
        if all.iter().all(|i| i.sessions == 0 && i.conns == 0) || Instant::now() > deadline {
            return all;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn churned_connections_leave_no_trace_in_the_shards() {
    let mut config = Config {
        shards: 2,
        ..Config::default()
    };
    config.ws.listen = "127.0.0.1:0".parse().unwrap();
    config.backend.listen = "127.0.0.1:0".parse().unwrap();
    let node = ringcast::runtime::run(config).expect("start the engine");
    let ws = node.ws_addr;

    const BATCH: usize = 50;
    const ROUNDS: usize = 80;
    let mut after_first = Vec::new();
    for round in 0..ROUNDS {
        let batch: Vec<TcpStream> = (0..BATCH).map(|_| open(ws)).collect();
        drop(batch);
        if round == 0 {
            after_first = settled(&node.node);
        }
    }
    let after_all = settled(&node.node);
    eprintln!(
        "{} connections; after one batch: {after_first:?}; after all: {after_all:?}",
        BATCH * ROUNDS
    );
    for (first, last) in after_first.iter().zip(&after_all) {
        assert_eq!((last.conns, last.sessions), (0, 0), "{last:?}");
        // The accept loops and the shard's main task wait on shutdown: a
        // handful of waiters, whatever the number of accepts.
        assert!(last.shutdown_waiters <= 4, "{last:?}");
        assert!(last.shutdown_waiter_slots <= 8, "{last:?}");
        // The registry holds as many slots as connections were open at once
        // (a batch at most, rounded up to the vector's doubling).
        assert!(
            last.conn_slots <= first.conn_slots.max(BATCH.next_power_of_two()),
            "{first:?} {last:?}"
        );
    }
    node.shutdown();
    assert!(node.join(Duration::from_secs(15)));
}
