//! Redis as a message source (issue 12), against a real throwaway
//! `redis-server`: Rodan's trigger payload PUBLISHed with the `redis`
//! crate reaches Rodan's client byte for byte; ws4redis client
//! publications are written back (PUBLISH + SETEX) and delivered once;
//! Redis killed and restarted mid-stream: clients stay connected,
//! publications resume, none is duplicated; `/health` and `/metrics` show
//! the source's state.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;
use tungstenite::protocol::Message;

const RODAN_URL: &str = "/ws/rodan?subscribe-broadcast&publish-broadcast&echo";
const RODAN_PAYLOAD: &str = r#"{"status": "updated", "project": "3f0c2a9e-7c1d-4f7e-9a55-0d2b1c9e8f10", "model": "workflowrun", "uuid": "6b1f0e2a9c3d4e5f8a7b6c5d4e3f2a1b"}"#;
const HEARTBEAT: &str = "--heartbeat--";

fn start(redis: &RedisServer) -> Server {
    let url = redis.url();
    Server::start_with(
        &[],
        &[
            ("RINGCAST_PROTOCOLS_WS4REDIS_PREFIX", "rodan"),
            ("RINGCAST_PROTOCOLS_WS4REDIS_HEARTBEAT", HEARTBEAT),
            ("RINGCAST_PROTOCOLS_WS4REDIS_EXPIRE", "60"),
            ("RINGCAST_SOURCES_REDIS_ENABLED", "true"),
            ("RINGCAST_SOURCES_REDIS_URL", url.as_str()),
        ],
    )
}

fn redis_conn(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

fn publish(conn: &mut redis::Connection, channel: &str, data: &str) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(data)
        .query(conn)
        .unwrap()
}

fn health(server: &Server) -> String {
    let (status, body) = server.http("GET", "/health", "", &[]);
    assert_eq!(status, 200);
    body
}

/// Waits until `/health` says the Redis source is connected with
/// `reconnects` reconnections.
fn wait_connected(server: &Server, reconnects: u64) {
    let want = format!("redis: connected (reconnects {reconnects},");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = health(server);
        if h.contains(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "health never said {want:?}: {h}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Text frames that are not the heartbeat, arriving within `wait`.
fn data_within(ws: &mut Ws, wait: Duration) -> Vec<String> {
    data_settled(ws, wait, wait)
}

/// Text frames that are not the heartbeat: waits up to `first` for the
/// first one, then gathers more until `quiet` passes without one (so a
/// loaded machine delays the answer without hiding a duplicate).
fn data_settled(ws: &mut Ws, first: Duration, quiet: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut out: Vec<String> = Vec::new();
    let mut last = start;
    loop {
        let end = match out.is_empty() {
            true => start + first,
            false => last + quiet,
        };
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        ws.get_mut().set_read_timeout(Some(left)).unwrap();
        match read_message(ws) {
            Ok(Message::Text(t)) if t.as_str() != HEARTBEAT => {
                out.push(t.as_str().to_owned());
                last = Instant::now();
            }
            Ok(Message::Close(c)) => panic!("closed: {c:?}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    out
}

#[test]
fn rodan_trigger_payload_from_redis_reaches_rodans_client_byte_for_byte() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let server = start(&redis);
    wait_connected(&server, 0);
    let mut rodan = server.ws(RODAN_URL);
    std::thread::sleep(Duration::from_millis(200));
    let mut r = redis_conn(&redis);
    assert_eq!(publish(&mut r, "rodan:broadcast:rodan", RODAN_PAYLOAD), 1);
    // Another prefix's channel is not ours.
    publish(&mut r, "other:broadcast:rodan", "{}");
    let got = data_within(&mut rodan, Duration::from_millis(1500));
    assert_eq!(got, [RODAN_PAYLOAD]);
    let (status, metrics) = server.http("GET", "/metrics", "", &[]);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("ringcast_source_connected{source=\"redis\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringcast_source_messages_total{source=\"redis\"} 1"),
        "{metrics}"
    );
}

#[test]
fn client_publications_are_written_back_and_delivered_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let server = start(&redis);
    wait_connected(&server, 0);
    let mut django_conn = redis_conn(&redis);
    let mut django = django_conn.as_pubsub();
    django.subscribe("rodan:broadcast:rodan").unwrap();
    django
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rodan = server.ws(RODAN_URL);
    let mut other = server.ws("/ws/rodan?subscribe-broadcast");
    std::thread::sleep(Duration::from_millis(200));
    send_text(&mut rodan, r#"{"from": "client"}"#);
    // Redis subscribers (Django's side) see it, and the key is SETEX'd.
    let m = django.get_message().unwrap();
    assert_eq!(m.get_payload::<String>().unwrap(), r#"{"from": "client"}"#);
    drop(django);
    drop(django_conn);
    let mut r = redis_conn(&redis);
    let kept: String = redis::cmd("GET")
        .arg("rodan:broadcast:rodan")
        .query(&mut r)
        .unwrap();
    assert_eq!(kept, r#"{"from": "client"}"#);
    let ttl: i64 = redis::cmd("TTL")
        .arg("rodan:broadcast:rodan")
        .query(&mut r)
        .unwrap();
    assert!((1..=60).contains(&ttl), "{ttl}");
    // Inside ringcast each subscriber gets it once, though it also came
    // back from Redis.
    assert_eq!(
        data_within(&mut rodan, Duration::from_millis(1500)),
        [r#"{"from": "client"}"#]
    );
    assert_eq!(
        data_within(&mut other, Duration::from_millis(300)),
        [r#"{"from": "client"}"#]
    );
    // The same bytes published by someone else through Redis are delivered.
    publish(&mut r, "rodan:broadcast:rodan", r#"{"from": "client"}"#);
    assert_eq!(
        data_within(&mut other, Duration::from_millis(1500)),
        [r#"{"from": "client"}"#]
    );
}

#[test]
fn redis_killed_and_restarted_mid_stream() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let server = start(&redis);
    wait_connected(&server, 0);
    let mut rodan = server.ws(RODAN_URL);
    std::thread::sleep(Duration::from_millis(200));
    let mut r = redis_conn(&redis);
    for i in 0..50 {
        publish(&mut r, "rodan:broadcast:rodan", &format!("{{\"n\": {i}}}"));
    }
    let first = data_within(&mut rodan, Duration::from_millis(1500));
    let want: Vec<String> = (0..50).map(|i| format!("{{\"n\": {i}}}")).collect();
    assert_eq!(first, want);
    redis.kill();
    // While Redis is down the client stays connected (heartbeats go on)
    // and health says so.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        health(&server).contains("redis: disconnected"),
        "{}",
        health(&server)
    );
    send_text(&mut rodan, HEARTBEAT);
    assert!(data_within(&mut rodan, Duration::from_millis(300)).is_empty());
    redis.restart();
    wait_connected(&server, 1);
    let mut r = redis_conn(&redis);
    for i in 50..100 {
        publish(&mut r, "rodan:broadcast:rodan", &format!("{{\"n\": {i}}}"));
    }
    let after = data_within(&mut rodan, Duration::from_millis(1500));
    let want: Vec<String> = (50..100).map(|i| format!("{{\"n\": {i}}}")).collect();
    assert_eq!(after, want, "resumed, in order, none twice");
}

#[test]
fn bad_redis_url_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--ws-listen", "127.0.0.1:0"])
        .env("RINGCAST_SOURCES_REDIS_ENABLED", "true")
        .env("RINGCAST_SOURCES_REDIS_URL", "http://localhost:6379")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "invalid config: sources.redis.url: must be a redis://, rediss://, redis+unix:// or unix:// URL (got \"http://localhost:6379\")"
        ),
        "{err}"
    );
}

#[test]
fn message_persisted_in_redis_is_sent_first_on_connect() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let server = start(&redis);
    wait_connected(&server, 0);
    // Django's RedisPublisher(facility='foobar', broadcast=True)
    // .publish_message(msg, expire=10): PUBLISH then SETEX.
    let mut r = redis_conn(&redis);
    publish(&mut r, "rodan:broadcast:foobar", "Hello World");
    let _: () = redis::cmd("SETEX")
        .arg("rodan:broadcast:foobar")
        .arg(10)
        .arg("Hello World")
        .query(&mut r)
        .unwrap();
    let mut late = server.ws("/ws/foobar?subscribe-broadcast");
    assert_eq!(
        data_settled(
            &mut late,
            Duration::from_secs(5),
            Duration::from_millis(500)
        ),
        ["Hello World"]
    );
    // Kept in ringcast from then on: the next client gets it at once.
    let mut later = server.ws("/ws/foobar?subscribe-broadcast");
    assert_eq!(
        data_settled(
            &mut later,
            Duration::from_secs(5),
            Duration::from_millis(500)
        ),
        ["Hello World"]
    );
    // A key that expired in Redis is not sent.
    let _: () = redis::cmd("SETEX")
        .arg("rodan:broadcast:gone")
        .arg(1)
        .arg("old")
        .query(&mut r)
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let mut none = server.ws("/ws/gone?subscribe-broadcast");
    assert!(data_within(&mut none, Duration::from_millis(800)).is_empty());
}

#[test]
fn a_persisted_message_racing_its_live_copy_arrives_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let server = start(&redis);
    wait_connected(&server, 0);
    let mut r = redis_conn(&redis);
    // Django's publish_message(expire=...) right before (and right after)
    // the first client of each channel connects: the live message and the
    // persisted copy race through the source; each client gets it once.
    for i in 0..20 {
        let channel = format!("rodan:broadcast:race{i}");
        let message = format!("m{i}");
        let set = |r: &mut redis::Connection| {
            publish(r, &channel, &message);
            let _: () = redis::cmd("SETEX")
                .arg(&channel)
                .arg(10)
                .arg(&message)
                .query(r)
                .unwrap();
        };
        let url = format!("/ws/race{i}?subscribe-broadcast");
        let ws = if i % 2 == 0 {
            set(&mut r);
            server.ws(&url)
        } else {
            let ws = server.ws(&url);
            set(&mut r);
            ws
        };
        let mut ws = ws;
        let got = data_settled(&mut ws, Duration::from_secs(5), Duration::from_millis(300));
        assert_eq!(got, [message.as_str()], "client {i} of {channel}");
    }
}
