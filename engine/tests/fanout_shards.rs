//! With two shards, subscribers spread over both receive every publication
//! exactly once and in offset order, under concurrent publishers.

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::json;

#[test]
fn every_subscriber_gets_every_publication_once_in_order() {
    let server = Server::start(&[]);
    let channels = ["alpha", "beta", "gamma"];
    let mut clients = clients_on_both_shards(&server, 3);
    for ws in clients.iter_mut() {
        for (i, c) in channels.iter().enumerate() {
            let r = rpc(ws, 100 + i as u64, "subscribe", json!({"channel": c}));
            assert_eq!(r["result"]["channel"], *c, "{r}");
            assert_eq!(r["result"]["offset"], 0);
        }
    }
    let per_channel = 50;
    std::thread::scope(|s| {
        for c in channels {
            let server = &server;
            s.spawn(move || {
                for i in 0..per_channel {
                    let r = server.emit(c, json!({"n": i}));
                    assert_eq!(r["offset"], i + 1);
                }
            });
        }
    });
    for ws in clients.iter_mut() {
        let mut next: HashMap<String, u64> = HashMap::new();
        for _ in 0..(per_channel as usize * channels.len()) {
            let m = recv(ws);
            assert_eq!(m["method"], "message", "{m}");
            let ch = m["params"]["channel"].as_str().unwrap().to_string();
            let off = m["params"]["offset"].as_u64().unwrap();
            let want = next.entry(ch.clone()).or_insert(1);
            assert_eq!(off, *want, "channel {ch}: out of order or duplicate");
            assert_eq!(m["params"]["data"]["n"], off - 1);
            *want += 1;
        }
        assert_silent(ws, std::time::Duration::from_millis(100));
    }
    let total = server.call("total_subscribers", json!({"channel": "alpha"}));
    assert_eq!(total["total"], clients.len());
}

#[test]
fn ids_increase_across_channels_and_shards() {
    let server = Server::start(&[]);
    let mut last = 0;
    for i in 0..40 {
        let r = server.emit(&format!("ch{i}"), json!(i));
        let id = r["id"].as_u64().unwrap();
        assert!(id > last, "ids must increase: {id} after {last}");
        last = id;
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        last > now_ms - 60_000,
        "ids are seeded from the Unix time in ms"
    );
}
