//! An AMQP broker as a message source (issue 21), against a real
//! throwaway RabbitMQ: the exact bodies DMOJ's and LQDOJ's
//! `event_poster_amqp.py` publish (routing key `''` and `"#"`) reach DMOJ
//! receivers, long-poll and native subscribers with the poster's ids; a
//! poster id behind the node's is delivered with the next id and
//! counted; bad bodies are rejected, counted and dead-lettered while
//! other connections carry on; the broker restarted mid-stream with a
//! named durable queue: every message the broker acknowledged (confirmed
//! and queued: mandatory publishes, a returned one is not acknowledged)
//! arrives once, in order; with DMOJ's exclusive auto-delete queue, what
//! that restart loses (the original's behaviour) is measured; `/metrics`
//! with two sources declares each family once.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::rabbitmq::RabbitMq;
use common::*;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Value};
use tungstenite::protocol::Message;

const EXCHANGE: &str = "dmoj-events";

/// DMOJ's poster: a publisher with confirms, on its own runtime.
struct Poster {
    rt: tokio::runtime::Runtime,
    ch: lapin::Channel,
    _conn: Connection,
}

impl Poster {
    fn connect(url: &str) -> lapin::Result<Poster> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (conn, ch) = rt.block_on(async {
            let conn = Connection::connect(url, ConnectionProperties::default()).await?;
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            let opts = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            ch.exchange_declare(
                EXCHANGE.into(),
                ExchangeKind::Topic,
                opts,
                FieldTable::default(),
            )
            .await?;
            Ok::<_, lapin::Error>((conn, ch))
        })?;
        Ok(Poster {
            rt,
            ch,
            _conn: conn,
        })
    }

    /// Publishes `body` (persistent) and waits for the broker's confirm:
    /// true when the broker acknowledged it.
    fn publish(&self, routing_key: &str, body: &str) -> bool {
        self.rt.block_on(async {
            let props = BasicProperties::default().with_delivery_mode(2);
            let confirm = self
                .ch
                .basic_publish(
                    EXCHANGE.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    props,
                )
                .await;
            match confirm {
                Ok(c) => c.await.is_ok_and(|c| c.is_ack()),
                Err(_) => false,
            }
        })
    }

    /// Publishes every body (persistent, `mandatory`) back to back, then
    /// waits for the confirms: which ones the broker acknowledged as
    /// queued. A mandatory message no queue took comes back
    /// (`basic.return`, then the confirm): not acknowledged.
    fn publish_burst(&self, bodies: &[String]) -> Vec<Sent> {
        self.rt.block_on(async {
            let mut pending = Vec::new();
            for b in bodies {
                let props = BasicProperties::default().with_delivery_mode(2);
                let opts = BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                };
                pending.push(
                    self.ch
                        .basic_publish(EXCHANGE.into(), "".into(), opts, b.as_bytes(), props)
                        .await,
                );
            }
            let mut sent = Vec::new();
            for p in pending {
                sent.push(match p {
                    Ok(c) => match c.await {
                        Ok(Confirmation::Ack(None)) => Sent::Queued,
                        Ok(Confirmation::Ack(Some(_))) => Sent::Returned,
                        _ => Sent::Failed,
                    },
                    Err(_) => Sent::Failed,
                });
            }
            sent
        })
    }
}

/// What became of one mandatory publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Confirmed, and a queue took it: acknowledged.
    Queued,
    /// Confirmed but returned: no queue was bound (unroutable).
    Returned,
    /// Nacked, or the channel failed before the confirm.
    Failed,
}

/// The ids of `ids` whose publish came out as `want`.
fn those(ids: &[u64], sent: &[Sent], want: Sent) -> Vec<u64> {
    ids.iter()
        .zip(sent)
        .filter(|(_, s)| **s == want)
        .map(|(i, _)| *i)
        .collect()
}

/// Publishes a probe on `channel` and reads it on `rx`: the receiver's
/// `set-filter` has taken effect (a publication before that would not
/// reach it: the channel keeps no history without subscribers).
fn probe(broker: &RabbitMq, rx: &mut Ws, channel: &str) -> u64 {
    let id = now_us();
    let poster = Poster::connect(&broker.url()).unwrap();
    assert!(poster.publish("", &dmoj_body(id, channel, r#""probe""#)));
    assert_eq!(
        text(rx),
        format!(r#"{{"id":{id},"channel":"{channel}","message":"probe"}}"#)
    );
    id
}

/// Reads the receiver's ids until `last` has arrived (60 s at most).
fn ids_until(rx: &mut Ws, last: u64) -> Vec<u64> {
    let mut got: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.last() != Some(&last) {
        assert!(
            Instant::now() < deadline,
            "{} received, {last} never came",
            got.len()
        );
        let v: Value = serde_json::from_str(&text(rx)).unwrap();
        got.push(v["id"].as_u64().unwrap());
    }
    got
}

/// `json.dumps({"id": id, "channel": channel, "message": message})` as
/// Python writes it (`", "` and `": "` separators).
fn dmoj_body(id: u64, channel: &str, message: &str) -> String {
    format!(r#"{{"id": {id}, "channel": "{channel}", "message": {message}}}"#)
}

/// `int(time() * 1000000)`.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

struct Node {
    server: Server,
    receivers: SocketAddr,
    senders: SocketAddr,
    poll: SocketAddr,
}

/// ringcast with DMOJ's listeners and the AMQP source on `broker`.
fn start(broker: &RabbitMq, env: &[(&str, &str)]) -> Node {
    let url = broker.url();
    let mut all = vec![
        ("RINGCAST_SOURCES_AMQP_ENABLED", "true"),
        ("RINGCAST_SOURCES_AMQP_URL", url.as_str()),
        ("RINGCAST_SOURCES_AMQP_EXCHANGE", EXCHANGE),
    ];
    all.extend_from_slice(env);
    let (server, [receivers, senders, poll]) = start_dmoj(&all);
    Node {
        server,
        receivers,
        senders,
        poll,
    }
}

fn health(server: &Server) -> String {
    let (status, body) = server.http("GET", "/health", "", &[]);
    assert_eq!(status, 200);
    body
}

fn metrics(server: &Server) -> String {
    let (status, body) = server.http("GET", "/metrics", "", &[]);
    assert_eq!(status, 200);
    body
}

/// Waits until `/health` says the AMQP source is connected with
/// `reconnects` reconnections.
fn wait_connected(server: &Server, reconnects: u64) {
    let want = format!("amqp: connected (reconnects {reconnects},");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = health(server);
        if h.contains(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "health never said {want:?}: {h}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ws_at(addr: SocketAddr) -> Ws {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (ws, _) = tungstenite::client(format!("ws://{addr}/").as_str(), stream).expect("handshake");
    ws
}

/// A DMOJ receiver following `channels` from `start` (as `event.js`).
fn receiver(n: &Node, start: u64, channels: Value) -> Ws {
    let mut ws = ws_at(n.receivers);
    send_text(
        &mut ws,
        &json!({"command": "start-msg", "start": start}).to_string(),
    );
    send_text(
        &mut ws,
        &json!({"command": "set-filter", "filter": channels}).to_string(),
    );
    ws
}

fn text(ws: &mut Ws) -> String {
    loop {
        match read_message(ws).expect("read") {
            Message::Text(t) => return t.to_string(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

fn long_poll(at: SocketAddr, path: &str) -> Response {
    let mut s = TcpStream::connect(at).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    read_http_response(&mut BufReader::new(s))
}

/// The metrics once counter `name` reads `want` (or after 5 s): the
/// source counts a publication after its home shard accepted it, which
/// can be after a client already received it.
fn metrics_when(server: &Server, name: &str, want: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(server);
        if counter(&m, name) == want || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

#[test]
fn dmoj_and_lqdoj_poster_bodies_reach_every_client_with_the_posters_ids() {
    let Some(broker) = RabbitMq::start() else {
        return;
    };
    let poster = Poster::connect(&broker.url()).unwrap();
    let n = start(&broker, &[]);
    wait_connected(&n.server, 0);

    let mut rx = receiver(&n, 0, json!(["sub_abc"]));
    let mut native = n.server.ws("/");
    subscribe(&mut native, "sub_abc");
    // The receiver's set-filter has taken effect once a probe arrives.
    let probe = now_us();
    assert!(poster.publish("", &dmoj_body(probe, "sub_abc", "0")));
    assert_eq!(
        text(&mut rx),
        format!(r#"{{"id":{probe},"channel":"sub_abc","message":0}}"#)
    );
    assert_eq!(recv(&mut native)["params"]["id"], json!(probe));

    // DMOJ: routing key ''. LQDOJ: routing key "#". Same body form.
    let dmoj = now_us();
    assert!(poster.publish("", &dmoj_body(dmoj, "sub_abc", r#"{"type": "processing"}"#)));
    let lqdoj = now_us();
    assert!(poster.publish(
        "#",
        &dmoj_body(lqdoj, "sub_abc", r#"{"type": "grading-begin"}"#)
    ));
    assert_eq!(
        text(&mut rx),
        format!(r#"{{"id":{dmoj},"channel":"sub_abc","message":{{"type":"processing"}}}}"#)
    );
    assert_eq!(
        text(&mut rx),
        format!(r#"{{"id":{lqdoj},"channel":"sub_abc","message":{{"type":"grading-begin"}}}}"#)
    );
    for (id, ty) in [(dmoj, "processing"), (lqdoj, "grading-begin")] {
        let m = recv(&mut native);
        assert_eq!(m["method"], "message", "{m}");
        assert_eq!(m["params"]["channel"], "sub_abc");
        assert_eq!(m["params"]["id"], json!(id));
        assert_eq!(m["params"]["data"], json!({"type": ty}));
    }

    // Long-poll and catch-up compare with the poster's ids, as pages
    // rendered with `last()` do.
    let r = long_poll(n.poll, &format!("/channels/sub_abc?last={dmoj}"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        format!(r#"{{"id":{lqdoj},"channel":"sub_abc","message":{{"type":"grading-begin"}}}}"#)
    );
    let mut late = receiver(&n, probe, json!(["sub_abc"]));
    assert!(text(&mut late).starts_with(&format!(r#"{{"id":{dmoj},"#)));
    assert!(text(&mut late).starts_with(&format!(r#"{{"id":{lqdoj},"#)));
    // `last-msg` on the sender port: the last poster id.
    let mut sender = ws_at(n.senders);
    send_text(&mut sender, r#"{"command": "last-msg"}"#);
    assert_eq!(
        text(&mut sender),
        format!(r#"{{"status":"success","id":{lqdoj}}}"#)
    );

    // A poster id behind the node's (a second poster's clock): still
    // delivered, in order, with the node's next id, and counted.
    assert!(poster.publish("", &dmoj_body(5, "sub_abc", r#""old clock""#)));
    let v: Value = serde_json::from_str(&text(&mut rx)).unwrap();
    assert_eq!(v["message"], "old clock");
    assert_eq!(v["id"], json!(lqdoj + 1));
    let m = metrics_when(
        &n.server,
        "ringcast_source_messages_total{source=\"amqp\"}",
        4,
    );
    assert_eq!(counter(&m, "ringcast_amqp_ids_replaced_total"), 1, "{m}");
    assert_eq!(
        counter(&m, "ringcast_source_messages_total{source=\"amqp\"}"),
        4
    );
    assert_eq!(counter(&m, "ringcast_source_connected{source=\"amqp\"}"), 1);
    assert!(health(&n.server).contains("amqp: connected (reconnects 0, messages 4)"));
}

#[test]
fn bad_bodies_are_rejected_counted_dead_lettered_and_disturb_no_one() {
    let Some(broker) = RabbitMq::start() else {
        return;
    };
    let poster = Poster::connect(&broker.url()).unwrap();
    // The dead-letter exchange and a queue on it, to read what arrives.
    let dead: Vec<String> = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (conn, mut consumer) = rt.block_on(async {
            let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            ch.exchange_declare(
                "dead".into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.queue_declare(
                "dead-letters".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.queue_bind(
                "dead-letters".into(),
                "dead".into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
            let consumer = ch
                .basic_consume(
                    "dead-letters".into(),
                    "test".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            (conn, consumer)
        });

        let n = start(
            &broker,
            &[("RINGCAST_SOURCES_AMQP_DEAD_LETTER_EXCHANGE", "dead")],
        );
        wait_connected(&n.server, 0);
        let mut rx = receiver(&n, 0, json!(["c"]));
        let mut other = n.server.ws("/");
        subscribe(&mut other, "c");
        let first = now_us();
        assert!(poster.publish("", &dmoj_body(first, "c", "1")));
        assert!(text(&mut rx).contains(&format!(r#""id":{first}"#)));
        recv(&mut other);

        let bad = [
            "not json",
            "[1, 2]",
            r#"{"id": 1, "message": 2}"#,
            r#"{"id": 2, "channel": 5, "message": 2}"#,
            r#"{"id": -1, "channel": "c", "message": 2}"#,
            "\u{0}\u{1}",
        ];
        for b in bad {
            assert!(poster.publish("", b));
        }
        let next = now_us();
        assert!(poster.publish("", &dmoj_body(next, "c", r#""after""#)));
        // Only the good body arrives, on both connections, and both are
        // still open.
        assert_eq!(
            text(&mut rx),
            format!(r#"{{"id":{next},"channel":"c","message":"after"}}"#)
        );
        assert_eq!(recv(&mut other)["params"]["data"], "after");
        assert_eq!(rpc(&mut other, 9, "ping", json!({}))["id"], 9);

        let m = metrics_when(
            &n.server,
            "ringcast_source_messages_total{source=\"amqp\"}",
            2,
        );
        assert_eq!(
            counter(&m, "ringcast_amqp_rejected_total"),
            bad.len() as u64,
            "{m}"
        );
        assert_eq!(
            counter(&m, "ringcast_source_skipped_total{source=\"amqp\"}"),
            bad.len() as u64
        );
        assert_eq!(
            counter(&m, "ringcast_source_messages_total{source=\"amqp\"}"),
            2
        );
        assert!(health(&n.server).contains("rejected 6"));

        // Every rejected body was dead-lettered, unchanged, in order.
        let got = rt.block_on(async {
            let mut got = Vec::new();
            while got.len() < bad.len() {
                let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                    .await
                    .expect("dead letters arrive")
                    .unwrap()
                    .unwrap();
                got.push(String::from_utf8(d.data).unwrap());
            }
            got
        });
        drop(conn);
        got
    };
    assert_eq!(
        dead,
        [
            "not json",
            "[1, 2]",
            r#"{"id": 1, "message": 2}"#,
            r#"{"id": 2, "channel": 5, "message": 2}"#,
            r#"{"id": -1, "channel": "c", "message": 2}"#,
            "\u{0}\u{1}",
        ]
    );
}

#[test]
fn a_mapped_binding_publishes_raw_bodies_as_they_are() {
    let Some(broker) = RabbitMq::start() else {
        return;
    };
    let poster = Poster::connect(&broker.url()).unwrap();
    let n = start(
        &broker,
        &[
            ("RINGCAST_SOURCES_AMQP_CHANNEL", "events"),
            ("RINGCAST_SOURCES_AMQP_BINDING_KEY", "rocket.*"),
        ],
    );
    wait_connected(&n.server, 0);
    let mut ws = n.server.ws("/");
    subscribe(&mut ws, "events");
    assert!(poster.publish("rocket.x", r#"{"anything": [1, 2]}"#));
    // Not matching the binding key: not delivered.
    assert!(poster.publish("other", r#""skipped""#));
    assert!(poster.publish("rocket.y", r#""second""#));
    let m = recv(&mut ws);
    assert_eq!(m["params"]["channel"], "events");
    assert_eq!(m["params"]["data"], json!({"anything": [1, 2]}));
    assert_eq!(recv(&mut ws)["params"]["data"], "second");
}

#[test]
fn broker_restarted_mid_stream_loses_and_duplicates_nothing_it_acknowledged() {
    let Some(mut broker) = RabbitMq::start() else {
        return;
    };
    // A named durable queue: it and its persistent messages outlive the
    // broker's restart.
    let n = start(
        &broker,
        &[
            ("RINGCAST_SOURCES_AMQP_QUEUE", "ringcast-events"),
            ("RINGCAST_SOURCES_AMQP_PREFETCH", "50"),
        ],
    );
    wait_connected(&n.server, 0);
    let mut rx = receiver(&n, 0, json!(["s"]));
    let mut bystander = n.server.ws("/");
    subscribe(&mut bystander, "s");
    let p = probe(&broker, &mut rx, "s");
    assert_eq!(recv(&mut bystander)["params"]["id"], json!(p));
    let start_id = now_us();
    let ids: Vec<u64> = (1..=600).map(|i| start_id + i).collect();
    let bodies: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| dmoj_body(*id, "s", &i.to_string()))
        .collect();
    // A burst the source is still consuming when the broker stops.
    let sent = Poster::connect(&broker.url())
        .unwrap()
        .publish_burst(&bodies[..400]);
    let mut acknowledged = those(&ids[..400], &sent, Sent::Queued);
    let before = counter(
        &metrics(&n.server),
        "ringcast_source_messages_total{source=\"amqp\"}",
    );
    broker.restart();
    // Published while the source is still reconnecting: the durable
    // queue is there, so the broker queues them.
    let poster = Poster::connect(&broker.url()).unwrap();
    let sent = poster.publish_burst(&bodies[400..]);
    acknowledged.extend(those(&ids[400..], &sent, Sent::Queued));
    wait_connected(&n.server, 1);
    println!("published by the source before the broker stopped: {before} of 400");
    assert_eq!(acknowledged.len(), 600, "the broker queued every publish");

    // Every acknowledged id exactly once, ids increasing (queue order).
    let got = ids_until(&mut rx, ids[599]);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order or twice");
    let missing: Vec<_> = acknowledged.iter().filter(|c| !got.contains(c)).collect();
    if !missing.is_empty() {
        // Late rather than lost? (Redelivered after newer ones: the
        // source's count goes on, with replaced ids.)
        std::thread::sleep(Duration::from_secs(2));
    }
    let m = metrics(&n.server);
    assert!(
        missing.is_empty(),
        "lost {} (burst positions {:?}..{:?}); the source published {} (rejected {}, \
         ids replaced {}, duplicates {}), {before} of them before the broker stopped",
        missing.len(),
        missing.first().map(|m| **m - start_id),
        missing.last().map(|m| **m - start_id),
        counter(&m, "ringcast_source_messages_total{source=\"amqp\"}"),
        counter(&m, "ringcast_amqp_rejected_total"),
        counter(&m, "ringcast_amqp_ids_replaced_total"),
        counter(&m, "ringcast_amqp_duplicates_total"),
    );
    assert_eq!(got, acknowledged, "exactly the acknowledged ids");
    // The other connection was not disturbed either.
    for id in &got {
        assert_eq!(recv(&mut bystander)["params"]["id"], json!(id));
    }
    let h = health(&n.server);
    assert!(h.contains("amqp: connected (reconnects 1,"), "{h}");
}

/// DMOJ's own default, an exclusive auto-delete queue per node, across
/// the same restart: the queue is not durable, so what it held when the
/// broker stopped is gone, and until the source has declared it again
/// nothing is bound, so the broker confirms DMOJ's poster's publishes
/// (no `mandatory`) and drops them; a mandatory publish comes back
/// instead (not acknowledged). What was queued after the source came back
/// arrives, once, in order. The counts are printed (the README cites
/// them as the original's behaviour).
#[test]
fn exclusive_queue_loses_what_it_held_and_what_came_while_unbound() {
    let Some(mut broker) = RabbitMq::start() else {
        return;
    };
    let n = start(&broker, &[("RINGCAST_SOURCES_AMQP_PREFETCH", "50")]);
    wait_connected(&n.server, 0);
    let mut rx = receiver(&n, 0, json!(["s"]));
    probe(&broker, &mut rx, "s");
    let start_id = now_us();
    let ids: Vec<u64> = (1..=600).map(|i| start_id + i).collect();
    let bodies: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| dmoj_body(*id, "s", &i.to_string()))
        .collect();
    let sent = Poster::connect(&broker.url())
        .unwrap()
        .publish_burst(&bodies[..400]);
    let first = those(&ids[..400], &sent, Sent::Queued);
    assert_eq!(first.len(), 400, "the source's queue took the first burst");
    broker.restart();
    // Before the source has declared its queue again: returned.
    let poster = Poster::connect(&broker.url()).unwrap();
    let sent = poster.publish_burst(&bodies[400..500]);
    let outage_queued = those(&ids[400..500], &sent, Sent::Queued);
    let returned = those(&ids[400..500], &sent, Sent::Returned).len();
    wait_connected(&n.server, 1);
    let sent = poster.publish_burst(&bodies[500..]);
    let after = those(&ids[500..], &sent, Sent::Queued);
    assert_eq!(after.len(), 100, "queued once the source is back");

    let got = ids_until(&mut rx, ids[599]);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order or twice");
    // Nothing arrives that was not acknowledged; everything acknowledged
    // after the restart arrives; of the first burst, what arrived is a
    // prefix (the source's progress), the rest was in the dead queue.
    let acked: Vec<u64> = first
        .iter()
        .chain(&outage_queued)
        .chain(&after)
        .copied()
        .collect();
    assert!(got.iter().all(|g| acked.contains(g)), "{got:?}");
    for id in outage_queued.iter().chain(&after) {
        assert!(got.contains(id), "{id} was queued after the restart");
    }
    let from_first = got.iter().filter(|g| **g <= ids[399]).count();
    assert_eq!(&got[..from_first], &first[..from_first]);
    println!(
        "exclusive queue across a broker restart: {} of 400 queued before it lost, \
         {returned} of 100 published before the source re-declared returned unroutable",
        400 - from_first
    );
}

#[test]
fn metrics_with_two_sources_declare_each_family_once() {
    let Some(broker) = RabbitMq::start() else {
        return;
    };
    let Some(redis) = common::redis_server::RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let n = start(
        &broker,
        &[
            ("RINGCAST_SOURCES_REDIS_ENABLED", "true"),
            ("RINGCAST_SOURCES_REDIS_URL", url.as_str()),
        ],
    );
    wait_connected(&n.server, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !health(&n.server).contains("redis: connected") {
        assert!(Instant::now() < deadline, "redis source never connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = metrics(&n.server);
    let families = check_exposition(&m).unwrap_or_else(|e| panic!("{e}\n{m}"));
    for family in [
        "ringcast_source_connected",
        "ringcast_source_reconnects_total",
        "ringcast_source_messages_total",
        "ringcast_source_skipped_total",
    ] {
        assert_eq!(families.iter().filter(|f| *f == family).count(), 1);
        for source in ["redis", "amqp"] {
            assert!(
                m.contains(&format!("{family}{{source=\"{source}\"}} ")),
                "{family} {source}: {m}"
            );
        }
    }
    assert!(families.iter().any(|f| f == "ringcast_amqp_rejected_total"));
    assert_eq!(
        counter(&m, "ringcast_source_connected{source=\"redis\"}"),
        1
    );
    assert_eq!(counter(&m, "ringcast_source_connected{source=\"amqp\"}"), 1);
}

fn clients_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

#[test]
fn dmojs_python_poster_with_pika() {
    let has_pika = std::process::Command::new("python3")
        .args(["-c", "import pika"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_pika {
        skip_or_fail("python3 with pika is not installed (pip install -r engine/tests/clients/requirements.txt)");
        return;
    }
    let Some(broker) = RabbitMq::start() else {
        return;
    };
    let n = start(&broker, &[]);
    wait_connected(&n.server, 0);
    let mut rx = receiver(&n, 0, json!(["sub_py"]));
    // set-filter has taken effect once the catch-up of an emit arrives.
    n.server.emit("sub_py", json!("ready"));
    assert!(text(&mut rx).contains(r#""message":"ready""#));
    for key in ["", "#"] {
        let out = std::process::Command::new("python3")
            .arg(clients_dir().join("dmoj_amqp_poster.py"))
            .args([
                &broker.url(),
                EXCHANGE,
                key,
                "sub_py",
                r#"{"type": "processing"}"#,
                "2",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ids: Vec<u64> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(ids.len(), 2);
        for id in ids {
            assert_eq!(
                text(&mut rx),
                format!(r#"{{"id":{id},"channel":"sub_py","message":{{"type":"processing"}}}}"#)
            );
        }
    }
}
