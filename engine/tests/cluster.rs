//! Cluster mode (issue 14, docs/CLUSTER.md) against a real throwaway
//! `redis-server` and three real ringcast processes: publications from
//! any node reach subscribers on every node in offset order with no loss
//! or duplicate; a client reconnecting to another node with `since`
//! recovers from the Redis stream (or is told the exact missed range);
//! Redis down: publishes refused (-32005) or local-only by configuration,
//! `/health` degraded, clients stay connected, and after Redis is back the
//! nodes re-subscribe; a node SIGKILLed: its clients recover elsewhere.
//! On a real Redis Cluster (3 masters, 3 replicas; sharded pub/sub): the
//! same cross-node delivery, and a master killed while publishing loses
//! no acknowledged publication (`cluster.replicas_ack = 1`: `WAIT 1`
//! after each publish script).
//!
//! All cluster tests live in this one binary and start their servers once
//! per test; waits are for conditions, not fixed sleeps.

mod common;

use std::time::{Duration, Instant};

use common::redis_cluster::RedisCluster;
use common::redis_server::RedisServer;
use common::*;
use serde_json::{json, Value};

/// A node of the cluster on `redis`, with `env` added.
fn node(redis: &RedisServer, env: &[(&str, &str)]) -> Server {
    node_on(&redis.url(), env)
}

/// A node whose bus is `url`.
fn node_on(url: &str, env: &[(&str, &str)]) -> Server {
    node_with(url, &[], env)
}

/// A node whose bus is `url`, started with `args` and `env` added.
fn node_with(url: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut all = vec![("RINGCAST_CLUSTER_REDIS", url)];
    all.extend_from_slice(env);
    let s = Server::start_with(args, &all);
    wait_health(&s, 200, "cluster: ok");
    s
}

fn nodes(redis: &RedisServer, n: usize, env: &[(&str, &str)]) -> Vec<Server> {
    (0..n).map(|_| node(redis, env)).collect()
}

/// Waits until `/health` answers `status` with `want` in its body.
fn wait_health(s: &Server, status: u16, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (st, body) = s.http("GET", "/health", "", &[]);
        if st == status && body.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health never was {status} {want:?}: {st} {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The next publication on `ws` (skipping anything else).
fn next_message(ws: &mut Ws) -> Value {
    loop {
        let v = recv(ws);
        if v["method"] == "message" {
            return v["params"].clone();
        }
    }
}

fn subscribe_since(ws: &mut Ws, channel: &str, offset: u64, epoch: &str) -> Value {
    let r = rpc(
        ws,
        7,
        "subscribe",
        json!({"channel": channel, "since": {"offset": offset, "epoch": epoch}}),
    );
    assert!(r.get("result").is_some(), "{r}");
    r["result"].clone()
}

/// Receives `n` publications and checks they are `from..from+n` in order,
/// each carrying its number, with increasing ids.
fn expect_run(ws: &mut Ws, from: u64, n: u64) {
    let mut last_id = 0;
    for want in from..from + n {
        let p = next_message(ws);
        assert_eq!(p["offset"], want, "{p}");
        assert_eq!(p["data"]["n"], want, "{p}");
        let id = p["id"].as_u64().unwrap();
        assert!(id > last_id, "ids increase: {p}");
        last_id = id;
    }
}

#[test]
fn publications_from_any_node_reach_every_node_in_order_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let cluster = nodes(&redis, 3, &[]);
    // Two subscribers per node (two shards each: cross-shard too).
    let mut clients: Vec<Ws> = Vec::new();
    let mut epoch = String::new();
    for s in &cluster {
        for _ in 0..2 {
            let mut ws = s.ws("/");
            let r = subscribe(&mut ws, "news");
            assert_eq!(r["offset"], 0, "{r}");
            if epoch.is_empty() {
                epoch = r["epoch"].as_str().unwrap().to_owned();
            }
            assert_eq!(r["epoch"], epoch.as_str(), "one epoch cluster-wide");
            clients.push(ws);
        }
    }
    let total = 150u64;
    let mut last_id = 0;
    for n in 1..=total {
        let r = cluster[(n % 3) as usize].emit("news", json!({"n": n}));
        assert_eq!(r["offset"], n, "{r}");
        let id = r["id"].as_u64().unwrap();
        assert!(id > last_id);
        last_id = id;
    }
    for ws in &mut clients {
        expect_run(ws, 1, total);
    }
    // A client's send_data reaches the other five, not its sender.
    let r = rpc(
        &mut clients[0],
        9,
        "send_data",
        json!({"channel": "news", "data": {"n": total + 1}}),
    );
    assert_eq!(r["result"]["offset"], total + 1, "{r}");
    for ws in &mut clients[1..] {
        expect_run(ws, total + 1, 1);
    }
    assert_silent(&mut clients[0], Duration::from_millis(300));
    for ws in &mut clients {
        assert_silent(ws, Duration::from_millis(50));
    }
    // notify_all: every connection on every node, once.
    let b = cluster[1].call("notify_all", json!({"data": {"hello": 1}}));
    assert!(b["id"].as_u64().unwrap() > last_id, "{b}");
    for ws in &mut clients {
        let v = recv(ws);
        assert_eq!(v["method"], "broadcast", "{v}");
        assert_eq!(v["params"]["id"], b["id"]);
        assert_silent(ws, Duration::from_millis(50));
    }
}

#[test]
fn a_client_reconnecting_to_another_node_recovers_from_the_stream() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let cluster = nodes(&redis, 3, &[("RINGCAST_HISTORY_SIZE", "20")]);
    let mut a = cluster[0].ws("/");
    let r = subscribe(&mut a, "room");
    let epoch = r["epoch"].as_str().unwrap().to_owned();
    for n in 1..=5 {
        cluster[1].emit("room", json!({"n": n}));
    }
    expect_run(&mut a, 1, 5);
    drop(a);
    // Missed 6..=12, published on node B while the client was away.
    for n in 6..=12 {
        cluster[1].emit("room", json!({"n": n}));
    }
    // `history` and `last` on a node with no subscriber of "room" come
    // from Redis: cluster-wide.
    let h = cluster[2].call(
        "history",
        json!({"channel": "room", "since": {"offset": 5, "epoch": &epoch}, "limit": 3}),
    );
    let offs: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        (offs, h["offset"].clone()),
        (vec![6, 7, 8], json!(12)),
        "{h}"
    );
    assert_eq!(h["publications"][0]["data"]["n"], 6, "{h}");
    let last = cluster[2].call("last", json!({"channel": "room"}));
    assert_eq!(last, json!({"offset": 12, "epoch": &epoch}));
    // Node C never had a subscriber of "room": it attaches, then reads
    // the stream.
    let mut c = cluster[2].ws("/");
    let r = subscribe_since(&mut c, "room", 5, &epoch);
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["offset"], 12, "{r}");
    expect_run(&mut c, 6, 7);
    cluster[0].emit("room", json!({"n": 13}));
    expect_run(&mut c, 13, 1);
    // Node C is attached now: a second reconnect is served from its
    // ring, then live.
    let mut c2 = cluster[2].ws("/");
    let r = subscribe_since(&mut c2, "room", 10, &epoch);
    assert_eq!(
        (r["recovered"].clone(), r["offset"].clone()),
        (json!(true), json!(13))
    );
    expect_run(&mut c2, 11, 3);
    // Too far back for the stream (20 kept, ~): the exact missing range.
    for n in 14..=60 {
        cluster[0].emit("room", json!({"n": n}));
    }
    let mut b = cluster[1].ws("/");
    let r = subscribe_since(&mut b, "room", 2, &epoch);
    assert_eq!(r["recovered"], false, "{r}");
    let missed = &r["missed"];
    assert_eq!(missed["from"], 3, "{r}");
    let to = missed["to"].as_u64().unwrap();
    assert!((30..60).contains(&to), "{r}");
    expect_run(&mut b, to + 1, 60 - to);
    // Another epoch: nothing is recovered, the range is named.
    let mut d = cluster[0].ws("/");
    let r = subscribe_since(&mut d, "room", 3, "not-this-epoch");
    assert_eq!(r["recovered"], false, "{r}");
}

#[test]
fn redis_down_refuses_publishes_keeps_clients_and_recovers() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let cluster = nodes(&redis, 2, &[]);
    let local = node(&redis, &[("RINGCAST_CLUSTER_ON_BUS_LOSS", "local")]);
    let mut subs: Vec<Ws> = cluster.iter().chain([&local]).map(|s| s.ws("/")).collect();
    for ws in &mut subs {
        subscribe(ws, "live");
    }
    cluster[0].emit("live", json!({"n": 1}));
    for ws in &mut subs {
        expect_run(ws, 1, 1);
    }
    redis.kill();
    for s in cluster.iter().chain([&local]) {
        wait_health(s, 503, "cluster: degraded (bus down)");
    }
    let v = cluster[1].backend("emit", json!({"channel": "live", "data": {"n": 2}}));
    assert_eq!(v["error"]["code"], -32005, "{v}");
    assert_eq!(v["error"]["message"], "bus unavailable", "{v}");
    // Clients stay connected and served.
    for ws in &mut subs {
        let r = rpc(ws, 3, "heartbeat", json!(null));
        assert_eq!(r["result"]["heartbeat"], "ok", "{r}");
    }
    // Local-only: delivered on its node, offsets continue locally.
    let r = local.emit("live", json!({"n": 2}));
    assert_eq!(r["offset"], 2, "{r}");
    expect_run(&mut subs[2], 2, 1);
    redis.restart();
    for s in cluster.iter().chain([&local]) {
        wait_health(s, 200, "cluster: ok (node");
    }
    // Re-subscribed: a publication from any node reaches every client.
    // (Redis restarted empty: a new epoch starts at offset 1.)
    let r = cluster[1].emit("live", json!({"n": 1}));
    assert_eq!(r["offset"], 1, "{r}");
    for ws in &mut subs {
        let p = next_message(ws);
        assert_eq!(
            (p["offset"].clone(), p["data"]["n"].clone()),
            (json!(1), json!(1))
        );
    }
}

#[test]
fn clients_of_a_killed_node_recover_on_another() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut cluster = nodes(&redis, 3, &[]);
    let mut victims: Vec<Ws> = (0..3).map(|_| cluster[2].ws("/")).collect();
    let mut epoch = String::new();
    for ws in &mut victims {
        epoch = subscribe(ws, "feed")["epoch"].as_str().unwrap().to_owned();
    }
    for n in 1..=4 {
        cluster[0].emit("feed", json!({"n": n}));
    }
    for ws in &mut victims {
        expect_run(ws, 1, 4);
    }
    cluster[2].child.kill().unwrap();
    cluster[2].child.wait().unwrap();
    for n in 5..=9 {
        cluster[(n % 2) as usize].emit("feed", json!({"n": n}));
    }
    // Each reconnects to a surviving node with its last position.
    for (i, _) in victims.iter().enumerate() {
        let mut ws = cluster[i % 2].ws("/");
        let r = subscribe_since(&mut ws, "feed", 4, &epoch);
        assert_eq!(
            (r["recovered"].clone(), r["offset"].clone()),
            (json!(true), json!(9)),
            "{r}"
        );
        expect_run(&mut ws, 5, 5);
    }
}

#[test]
fn redis_cluster_sharded_pubsub_and_a_master_failover_lose_no_acknowledged_publication() {
    let Some(mut rc) = RedisCluster::start(3, 1) else {
        return;
    };
    let url = rc.url();
    let env = [
        ("RINGCAST_CLUSTER_REPLICAS_ACK", "1"),
        ("RINGCAST_HISTORY_SIZE", "500"),
    ];
    let cluster: Vec<Server> = (0..3).map(|_| node_on(&url, &env)).collect();
    // Channels on different masters' slots, a subscriber of each on
    // every node.
    let channels = ["alpha", "bravo", "charlie", "delta"];
    let mut subs: Vec<(usize, Ws)> = Vec::new();
    let mut epochs = Vec::new();
    for (c, ch) in channels.iter().enumerate() {
        for s in &cluster {
            let mut ws = s.ws("/");
            let r = subscribe(&mut ws, ch);
            if subs.len().is_multiple_of(3) {
                epochs.push(r["epoch"].as_str().unwrap().to_owned());
            }
            subs.push((c, ws));
        }
    }
    for n in 1..=10u64 {
        for (i, ch) in channels.iter().enumerate() {
            let r = cluster[(n as usize + i) % 3].emit(ch, json!({"n": n}));
            assert_eq!(r["offset"], n, "{r}");
        }
    }
    for (_, ws) in &mut subs {
        expect_run(ws, 1, 10);
    }
    // Kill the master of "alpha" while publishing to it; count what was
    // acknowledged. Its replica is promoted; until the old master is back
    // (as the new one's replica) `WAIT 1` cannot be met and publications
    // are refused, not acknowledged.
    let victim = rc.master_of("rc:{alpha}:m");
    let mut acked: Vec<(u64, u64)> = Vec::new();
    let mut n = 11u64;
    let mut back = false;
    let deadline = Instant::now() + Duration::from_secs(40);
    while acked.len() < 30 {
        assert!(
            Instant::now() < deadline,
            "publishing never resumed: {acked:?}"
        );
        if n == 16 {
            rc.kill(victim);
        }
        let promoted = rc
            .serving_master("rc:{alpha}:m")
            .is_some_and(|m| m != victim);
        if n > 16 && !back && promoted {
            rc.restart(victim);
            back = true;
        }
        let v = cluster[(n % 3) as usize]
            .backend("emit", json!({"channel": "alpha", "data": {"n": n}}));
        if let Some(off) = v["result"]["offset"].as_u64() {
            acked.push((off, n));
        } else {
            assert_eq!(v["error"]["code"], -32005, "{v}");
        }
        n += 1;
    }
    // Every acknowledged publication is in the stream: a fresh client on
    // any node recovers them all since offset 10, same data, in order.
    let mut fresh = cluster[1].ws("/");
    let r = subscribe_since(&mut fresh, "alpha", 10, &epochs[0]);
    assert_eq!(r["epoch"], epochs[0].as_str(), "{r}");
    let last = r["offset"].as_u64().unwrap();
    let mut got = std::collections::HashMap::new();
    for _ in 10..last {
        let p = next_message(&mut fresh);
        got.insert(
            p["offset"].as_u64().unwrap(),
            p["data"]["n"].as_u64().unwrap(),
        );
    }
    for (off, n) in &acked {
        assert_eq!(
            got.get(off),
            Some(n),
            "acknowledged {off} (n={n}) lost: {r}"
        );
    }
    // Live subscribers of "alpha" got each acknowledged one, in offset
    // order.
    for (c, ws) in subs.iter_mut().filter(|(c, _)| *c == 0) {
        let mut seen = Vec::new();
        let mut last_off = 10;
        while seen.len() < acked.len() {
            let p = next_message(ws);
            let off = p["offset"].as_u64().unwrap();
            assert!(off > last_off, "channel {c}: offsets in order: {p}");
            last_off = off;
            if acked.iter().any(|&(o, n)| o == off && p["data"]["n"] == n) {
                seen.push(off);
            }
        }
    }
    // The other channels' masters were untouched: still served.
    let r = cluster[0].emit("bravo", json!({"n": 11}));
    assert_eq!(r["offset"], 11, "{r}");
    for (_, ws) in subs.iter_mut().filter(|(c, _)| *c == 1) {
        expect_run(ws, 11, 1);
    }
}

/// Polls `f` until it returns true (at most 15 s).
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn counts_cover_every_node_and_a_dead_nodes_share_expires() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let env = [("RINGCAST_CLUSTER_NODE_TTL", "3")];
    let mut cluster = nodes(&redis, 3, &env);
    let mut clients = Vec::new();
    for (i, s) in cluster.iter().enumerate() {
        for _ in 0..=i {
            let mut ws = s.ws("/");
            subscribe(&mut ws, "shared");
            subscribe(&mut ws, &format!("only-{i}"));
            clients.push(ws);
        }
    }
    // 1 + 2 + 3 subscribers of "shared"; each node answers for all.
    for s in &cluster {
        wait_until("cluster-wide total", || {
            s.call("total_subscribers", json!({"channel": "shared"}))["total"] == 6
        });
    }
    assert_eq!(cluster[0].call("total_subscribers", json!({}))["total"], 12);
    let list = cluster[1].call("available_channels", json!({}));
    assert_eq!(
        list["channels"],
        json!([
            {"channel": "only-0", "subscribers": 1},
            {"channel": "only-1", "subscribers": 2},
            {"channel": "only-2", "subscribers": 3},
            {"channel": "shared", "subscribers": 6},
        ]),
        "{list}"
    );
    let info = cluster[2].call("info", json!({}));
    assert_eq!(info["cluster"]["nodes"], 3, "{info}");
    assert_eq!(info["cluster"]["connections"], 6, "{info}");
    assert_eq!(info["connections"], 3, "this node's own: {info}");
    // A node killed: its share disappears within node_ttl.
    cluster[2].child.kill().unwrap();
    cluster[2].child.wait().unwrap();
    wait_until("dead node's share gone", || {
        cluster[0].call("total_subscribers", json!({"channel": "shared"}))["total"] == 3
    });
    let info = cluster[0].call("info", json!({}));
    assert_eq!(info["cluster"]["nodes"], 2, "{info}");
}

const SECRET: &str = "cluster-test-secret-32-bytes-long";

/// A token for user `sub` with the `info` claim `info`, signed with
/// [`SECRET`].
fn token(sub: &str, info: Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "info": info, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn presence_covers_every_node_and_a_dead_nodes_members_expire() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!(
        "ringcast-cluster-presence-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ringcast.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nhmac_secret = \"{SECRET}\"\n\n\
             [[auth.namespaces]]\nprefix = \"room:\"\npresence = true\njoin_leave = true\n"
        ),
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let env = [("RINGCAST_CLUSTER_NODE_TTL", "3")];
    let mut cluster: Vec<Server> = (0..3)
        .map(|_| node_with(&redis.url(), &args, &env))
        .collect();
    let join = |s: &Server, sub: &str, info: Value| {
        let mut ws = s.ws(&format!("/?token={}", token(sub, info)));
        subscribe(&mut ws, "room:lobby");
        ws
    };
    let mut ann_a = join(&cluster[0], "ann", json!({"n": 0}));
    let bob_b = join(&cluster[1], "bob", json!({"name": "Bob"}));
    let mut ann_b = join(&cluster[1], "ann", json!({"n": 1}));
    // The third node has no subscriber of the channel and counts all.
    let stats = |s: &Server| s.call("presence_stats", json!({"channel": "room:lobby"}));
    // Each join is written to Redis by its node's bus, not waited for.
    wait_until("members of two nodes counted on a third", || {
        stats(&cluster[2]) == json!({"num_clients": 3, "num_users": 2})
    });
    let p = cluster[2].call("presence", json!({"channel": "room:lobby"}));
    let entries = p["presence"].as_object().unwrap();
    assert_eq!(entries.len(), 3, "{p}");
    let nodes: std::collections::HashSet<&str> = entries
        .keys()
        .map(|k| k.split('.').next().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "members of two nodes: {p}");
    for (client, e) in entries {
        assert_eq!(e["client"], json!(client), "{p}");
    }
    let mut seen: Vec<(String, Value)> = entries
        .values()
        .map(|e| (e["user"].as_str().unwrap().to_owned(), e["info"].clone()))
        .collect();
    seen.sort_by_key(|(u, i)| (u.clone(), i.to_string()));
    assert_eq!(
        seen,
        vec![
            ("ann".to_owned(), json!({"n": 0})),
            ("ann".to_owned(), json!({"n": 1})),
            ("bob".to_owned(), json!({"name": "Bob"})),
        ]
    );
    // join/leave events cross nodes: the first node's member sees the
    // second node's joins, with their cluster-wide client ids.
    let client_of = |info: Value| {
        entries
            .iter()
            .find(|(_, e)| e["info"] == info)
            .map(|(c, _)| c.clone())
            .unwrap()
    };
    let (bob_client, ann_b_client) = (
        client_of(json!({"name": "Bob"})),
        client_of(json!({"n": 1})),
    );
    for (client, user, info) in [
        (&bob_client, "bob", json!({"name": "Bob"})),
        (&ann_b_client, "ann", json!({"n": 1})),
    ] {
        assert_eq!(
            recv(&mut ann_a),
            json!({"jsonrpc": "2.0", "method": "join", "params": {
                "channel": "room:lobby", "client": client, "user": user, "info": info}})
        );
    }
    // The hash expires unless the nodes with members refresh it.
    let mut redis_conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    wait_until("presence hash has a TTL", || {
        let ttl: i64 = redis::cmd("PTTL")
            .arg("rc:{room:lobby}:p")
            .query(&mut redis_conn)
            .unwrap();
        ttl > 0 && ttl <= 3000
    });
    // A client on a node asks too and gets the same.
    let r = rpc(
        &mut ann_b,
        9,
        "presence_stats",
        json!({"channel": "room:lobby"}),
    );
    assert_eq!(
        r["result"],
        json!({"num_clients": 3, "num_users": 2}),
        "{r}"
    );
    // A leave on one node is seen by the others.
    let r = rpc(
        &mut ann_b,
        10,
        "unsubscribe",
        json!({"channel": "room:lobby"}),
    );
    assert!(r.get("result").is_some(), "{r}");
    wait_until("a leave seen on another node", || {
        stats(&cluster[2]) == json!({"num_clients": 2, "num_users": 2})
    });
    assert_eq!(
        recv(&mut ann_a),
        json!({"jsonrpc": "2.0", "method": "leave", "params": {
            "channel": "room:lobby", "client": ann_b_client, "user": "ann", "info": {"n": 1}}})
    );
    // The first node SIGKILLed: its member is gone within node_ttl (3 s).
    cluster[0].child.kill().unwrap();
    cluster[0].child.wait().unwrap();
    let killed = Instant::now();
    wait_until("dead node's members gone", || {
        stats(&cluster[2]) == json!({"num_clients": 1, "num_users": 1})
    });
    assert!(
        killed.elapsed() < Duration::from_millis(4500),
        "gone after {:?}",
        killed.elapsed()
    );
    let p = cluster[1].call("presence", json!({"channel": "room:lobby"}));
    let entries = p["presence"].as_object().unwrap();
    assert_eq!(entries.len(), 1, "{p}");
    assert!(entries.values().all(|e| e["user"] == "bob"), "{p}");
    // A live node taken for dead (its heartbeat gone from the set, as after
    // a stall longer than node_ttl): the third node's read deletes its
    // member; its next heartbeat (every node_ttl / 3) writes it again.
    let bob_node = entries.keys().next().unwrap().split('.').next().unwrap();
    let mut swept = false;
    for _ in 0..20 {
        let _: () = redis::cmd("ZREM")
            .arg("rc:nodes")
            .arg(bob_node)
            .query(&mut redis_conn)
            .unwrap();
        if stats(&cluster[2]) == json!({"num_clients": 0, "num_users": 0}) {
            swept = true;
            break;
        }
    }
    assert!(swept, "the third node never read the second one as dead");
    wait_until("a node taken for dead writes its members again", || {
        stats(&cluster[2]) == json!({"num_clients": 1, "num_users": 1})
    });
    // Redis restarted empty: the nodes write their members again, without
    // the one that left while it was down.
    redis.kill();
    wait_health(&cluster[1], 503, "cluster: degraded (bus down)");
    let cy = join(&cluster[1], "cy", json!(null));
    drop(bob_b);
    redis.restart();
    wait_health(&cluster[1], 200, "cluster: ok (node");
    wait_health(&cluster[2], 200, "cluster: ok (node");
    wait_until("members written again after Redis restarted", || {
        let p = cluster[2].call("presence", json!({"channel": "room:lobby"}));
        p["presence"]
            .as_object()
            .is_some_and(|e| e.len() == 1 && e.values().all(|e| e["user"] == "cy"))
    });
    drop(cy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The next text frame on `ws` as JSON, whatever it is.
fn next_json(ws: &mut Ws) -> Value {
    recv(ws)
}

#[test]
fn compatibility_protocols_work_across_nodes() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // DMOJ receivers on the public port's /event/ path only.
    let env = [
        ("RINGCAST_CLUSTER_NODE_TTL", "3"),
        ("RINGCAST_PROTOCOLS_DMOJ_ENABLED", "true"),
        ("RINGCAST_PROTOCOLS_DMOJ_RECEIVERS", ""),
        ("RINGCAST_PROTOCOLS_DMOJ_SENDERS", ""),
        ("RINGCAST_PROTOCOLS_DMOJ_LONG_POLL", ""),
    ];
    let cluster = nodes(&redis, 3, &env);
    let mut rocket_a = cluster[0].ws("/?dialect=rocketws");
    let r = rpc(&mut rocket_a, 1, "subscribe", json!({"channel": "contest"}));
    assert_eq!(r["result"], "subscribed", "{r}");
    let mut dmoj_a = cluster[0].ws("/event/");
    send_text(
        &mut dmoj_a,
        &json!({"command": "set-filter", "filter": ["contest"]}).to_string(),
    );
    let mut rocket_b = cluster[1].ws("/?dialect=rocketws");
    let r = rpc(&mut rocket_b, 1, "subscribe", json!({"channel": "contest"}));
    assert_eq!(r["result"], "subscribed", "{r}");
    wait_until("three subscribers counted", || {
        cluster[2].call("total_subscribers", json!({"channel": "contest"}))["total"] == 3
    });
    let mut ids = Vec::new();
    for n in 1..=2 {
        ids.push(
            cluster[2].emit("contest", json!({"n": n}))["id"]
                .as_u64()
                .unwrap(),
        );
    }
    assert!(ids[1] > ids[0]);
    for (i, id) in ids.iter().enumerate() {
        let d = next_json(&mut dmoj_a);
        assert_eq!(
            d,
            json!({"id": id, "channel": "contest", "message": {"n": i + 1}})
        );
        for ws in [&mut rocket_a, &mut rocket_b] {
            let m = next_json(ws);
            assert_eq!(
                (m["n"].clone(), m["__type"].clone()),
                (json!(i + 1), json!("message")),
                "{m}"
            );
        }
    }
    // The DMOJ page goes away; three publications later it comes back
    // on the node without any subscriber of the channel (nothing in its
    // memory) with last=ID and gets exactly what it missed, from the
    // stream, then the live ones.
    drop(dmoj_a);
    let missed: Vec<u64> = (3..=5)
        .map(|n| {
            cluster[0].emit("contest", json!({"n": n}))["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let mut dmoj_c = cluster[2].ws("/event/");
    send_text(
        &mut dmoj_c,
        &json!({"command": "start-msg", "start": ids[1]}).to_string(),
    );
    send_text(
        &mut dmoj_c,
        &json!({"command": "set-filter", "filter": ["contest"]}).to_string(),
    );
    for (id, n) in missed.iter().zip(3..) {
        let d = next_json(&mut dmoj_c);
        assert_eq!(
            d,
            json!({"id": id, "channel": "contest", "message": {"n": n}})
        );
    }
    wait_until("the returning page counted", || {
        cluster[0].call("total_subscribers", json!({"channel": "contest"}))["total"] == 3
    });
    let live = cluster[1].emit("contest", json!({"n": 6}))["id"]
        .as_u64()
        .unwrap();
    assert_eq!(
        next_json(&mut dmoj_c),
        json!({"id": live, "channel": "contest", "message": {"n": 6}})
    );
    assert_silent(&mut dmoj_c, Duration::from_millis(300));
}
