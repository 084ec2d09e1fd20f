//! Bounded cross-shard mailboxes (`limits.mailbox_capacity`): a flood of
//! pipelined backend publishes whose deliveries go to the other shard is
//! answered -32005 "overloaded: try again" once that shard's mailbox is
//! full; every publication that was acknowledged is still delivered, and
//! other connections keep working.

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use ringcast::pubsub::home_shard::home_of;
use serde_json::{json, Value};

/// A channel name whose home is `shard` of 2.
fn channel_homed_on(shard: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|c| home_of(c, 2) == shard)
        .unwrap_or_default()
}

/// Opens clients until `want` of them are on `shard`; returns (those,
/// the others).
fn clients_on_shard(server: &Server, shard: usize, want: usize) -> (Vec<Ws>, Vec<Ws>) {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let mut before = server.connections_per_shard();
    while on.len() < want {
        assert!(
            on.len() + off.len() < 4 * want,
            "clients never reached shard {shard}"
        );
        let ws = server.ws("/");
        let after = server.connections_per_shard();
        if after[shard] > before[shard] {
            on.push(ws);
        } else {
            off.push(ws);
        }
        before = after;
    }
    (on, off)
}

/// Pipelines `n` emits on one backend connection; returns each reply.
fn pipelined_emits(server: &Server, channel: &str, n: usize) -> Vec<Value> {
    let s = TcpStream::connect(server.backend).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut all = String::new();
    for i in 0..n {
        let body = json!({"jsonrpc":"2.0","id":i,"method":"emit",
                          "params":{"channel":channel,"data":{"n":i}}})
        .to_string();
        all.push_str(&format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    let writer = std::thread::spawn(move || w.write_all(all.as_bytes()));
    let mut r = BufReader::new(s);
    let replies = (0..n)
        .map(|_| {
            let resp = read_http_response(&mut r);
            assert_eq!(resp.status, 200, "{resp:?}");
            serde_json::from_str(&resp.body).unwrap()
        })
        .collect();
    writer.join().unwrap().unwrap();
    replies
}

#[test]
fn flood_is_answered_overloaded_and_acknowledged_publications_arrive() {
    let server = Server::start_with(&[], &[("RINGCAST_LIMITS_MAILBOX_CAPACITY", "1024")]);
    // Every subscriber is on shard 1, the channel's home is shard 0: each
    // publication is one `Deliver` into shard 1's mailbox that costs shard
    // 1 a frame per subscriber, while shard 0 only assigns an offset.
    let hot = channel_homed_on(0, "hot");
    let (mut subs, mut others) = clients_on_shard(&server, 1, 300);
    for ws in &mut subs {
        subscribe(ws, &hot);
    }

    let (conns, per_conn) = (16, 500);
    let replies: Vec<Value> = std::thread::scope(|s| {
        let hot = &hot;
        let server = &server;
        let floods: Vec<_> = (0..conns)
            .map(|_| s.spawn(move || pipelined_emits(server, hot, per_conn)))
            .collect();
        floods.into_iter().flat_map(|f| f.join().unwrap()).collect()
    });

    assert_eq!(replies.len(), conns * per_conn, "a reply for every request");
    let mut acked = 0u64;
    let mut overloaded = 0u64;
    for v in &replies {
        if v.get("result").is_some() {
            acked += 1;
        } else {
            assert_eq!(v["error"]["code"], -32005, "{v}");
            assert_eq!(v["error"]["message"], "overloaded: try again", "{v}");
            overloaded += 1;
        }
    }
    println!("{acked} acknowledged, {overloaded} answered -32005");
    assert!(
        overloaded > 0,
        "the flood never filled a mailbox ({acked} acked)"
    );
    assert!(acked > 0, "nothing was accepted");
    let info = server.call("info", json!({}));
    assert_eq!(
        info["counters"]["publishes_overloaded"].as_u64(),
        Some(overloaded),
        "{info}"
    );
    assert_eq!(info["counters"]["slow_consumer_disconnects"], 0, "{info}");

    // Every acknowledged publication reaches the subscribers, offsets
    // 1..=acked with no gap (refused ones took no offset).
    for ws in subs.iter_mut().take(3) {
        for offset in 1..=acked {
            let m = recv(ws);
            assert_eq!(m["params"]["offset"], offset, "{m}");
        }
    }

    // Other connections keep working: a client on shard 0 subscribes and
    // receives a fresh publication.
    if let Some(ws) = others.first_mut() {
        subscribe(ws, "after");
        server.emit("after", json!({"ok": true}));
        let m = recv(ws);
        assert_eq!(m["params"]["data"], json!({"ok": true}), "{m}");
    }
    let r = server.emit(&hot, json!({"after": true}));
    assert_eq!(r["subscribers"], 300, "{r}");
}
