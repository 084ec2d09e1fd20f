//! ws4redis / Rodan drop-in (issue 12), the endpoint alone (no Redis):
//! Rodan's URL and payload byte for byte, only JSON or the heartbeat to
//! Rodan's client, echo by origin, the kept last message and its expiry,
//! heartbeat timing, and refusals of bad flags and facilities; user,
//! group and session channels named after real RS256 tokens (issue 15),
//! also fed by a real Redis.

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tungstenite::protocol::Message;

const RODAN_URL: &str = "/ws/rodan?subscribe-broadcast&publish-broadcast&echo";
/// What Rodan's trigger publishes (Python `json.dumps`, COMPAT 4.1).
const RODAN_PAYLOAD: &str = r#"{"status": "updated", "project": "3f0c2a9e-7c1d-4f7e-9a55-0d2b1c9e8f10", "model": "workflowrun", "uuid": "6b1f0e2a9c3d4e5f8a7b6c5d4e3f2a1b"}"#;
const HEARTBEAT: &str = "--heartbeat--";
const NEEDS_IDENTITY: &str = "user, group and session channels need a connection token \
                              (?token= or Authorization: Bearer) naming the user; this \
                              request has none";

fn rodan_server(expire: &str, heartbeat: &str) -> Server {
    Server::start_with(
        &[],
        &[
            ("RINGCAST_PROTOCOLS_WS4REDIS_PREFIX", "rodan"),
            ("RINGCAST_PROTOCOLS_WS4REDIS_EXPIRE", expire),
            ("RINGCAST_PROTOCOLS_WS4REDIS_HEARTBEAT", heartbeat),
        ],
    )
}

/// Lets subscriptions made at connect (the first exchange, which runs
/// after the `101`) take effect before publishing.
fn settle() {
    std::thread::sleep(Duration::from_millis(200));
}

/// The next text frame (skips pings and pongs).
fn next_text(ws: &mut Ws) -> String {
    loop {
        match read_message(ws).expect("read") {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// The next frame that is not the heartbeat.
fn next_data(ws: &mut Ws) -> String {
    loop {
        let t = next_text(ws);
        if t != HEARTBEAT {
            return t;
        }
    }
}

/// Every text frame arriving within `wait`.
fn frames_within(ws: &mut Ws, wait: Duration) -> Vec<String> {
    let end = Instant::now() + wait;
    let mut out = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        ws.get_mut().set_read_timeout(Some(left)).unwrap();
        match read_message(ws) {
            Ok(Message::Text(t)) => out.push(t.as_str().to_owned()),
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

/// A raw upgrade on `path`: (status, body).
fn upgrade_status(server: &Server, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(server.ws).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let resp = read_http_response(&mut BufReader::new(s));
    (resp.status, resp.body)
}

#[test]
fn rodan_payload_reaches_rodans_client_byte_for_byte_and_only_json_or_heartbeat() {
    let server = rodan_server("3600", HEARTBEAT);
    let mut rodan = server.ws(RODAN_URL);
    // Thor-style and ws4redis-example publishers on the same channel.
    let mut publisher = server.ws("/ws/rodan?publish-broadcast");
    settle();
    send_text(&mut publisher, RODAN_PAYLOAD);
    assert_eq!(next_data(&mut rodan), RODAN_PAYLOAD);
    // The publisher (no subscribe flag) gets only its heartbeat.
    assert_eq!(next_text(&mut publisher), HEARTBEAT);
    // Rodan's client never sends; what it sees for a while is JSON or
    // exactly the heartbeat (Rodan's SocketUpdater JSON.parses the rest).
    let no_project =
        r#"{"status": "created", "model": "project", "uuid": "00000000000000000000000000000000"}"#;
    send_text(&mut publisher, no_project);
    let seen = frames_within(&mut rodan, Duration::from_millis(4500));
    assert!(seen.contains(&no_project.to_string()), "{seen:?}");
    assert!(seen.iter().any(|f| f == HEARTBEAT), "{seen:?}");
    for f in &seen {
        assert!(
            f == HEARTBEAT || serde_json::from_str::<Value>(f).is_ok(),
            "not JSON nor the heartbeat: {f:?}"
        );
    }
}

#[test]
fn echo_is_by_origin() {
    let server = rodan_server("0", "");
    let mut quiet = server.ws("/ws/chat?subscribe-broadcast&publish-broadcast");
    let mut loud = server.ws("/ws/chat?subscribe-broadcast&publish-broadcast&ECHO");
    let mut other = server.ws("/ws/chat?subscribe-broadcast");
    settle();
    send_text(&mut quiet, "same");
    assert_eq!(next_text(&mut loud), "same");
    assert_eq!(next_text(&mut other), "same");
    assert_silent(&mut quiet, Duration::from_millis(300));
    // The echoing client gets its own; and an identical message from
    // someone else still reaches the client that sent it before (ws4redis
    // compared bytes and hid it).
    send_text(&mut loud, "same");
    assert_eq!(next_text(&mut loud), "same");
    assert_eq!(next_text(&mut quiet), "same");
    assert_eq!(next_text(&mut other), "same");
    // Without publish-broadcast nothing is published.
    send_text(&mut other, "ignored");
    assert_silent(&mut quiet, Duration::from_millis(300));
}

#[test]
fn kept_message_is_replayed_on_connect_until_it_expires() {
    let server = rodan_server("2", "");
    let mut publisher = server.ws("/ws/foobar?publish-broadcast");
    send_text(&mut publisher, "first");
    send_text(&mut publisher, "Hello World");
    std::thread::sleep(Duration::from_millis(200));
    // Each (re)connect gets exactly the last one, then live ones.
    for _ in 0..2 {
        let mut late = server.ws("/ws/foobar?subscribe-broadcast");
        assert_eq!(next_text(&mut late), "Hello World");
        assert_silent(&mut late, Duration::from_millis(300));
    }
    // Another facility has nothing kept.
    let mut elsewhere = server.ws("/ws/other?subscribe-broadcast");
    assert_silent(&mut elsewhere, Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(2200));
    let mut too_late = server.ws("/ws/foobar?subscribe-broadcast");
    assert_silent(&mut too_late, Duration::from_millis(500));
    send_text(&mut publisher, "live");
    assert_eq!(next_text(&mut too_late), "live");
}

#[test]
fn nothing_is_kept_with_expire_zero() {
    let server = rodan_server("0", "");
    let mut publisher = server.ws("/ws/foobar?publish-broadcast");
    send_text(&mut publisher, "not kept");
    std::thread::sleep(Duration::from_millis(200));
    let mut late = server.ws("/ws/foobar?subscribe-broadcast");
    assert_silent(&mut late, Duration::from_millis(500));
}

#[test]
fn heartbeat_after_every_message_and_after_four_idle_seconds() {
    let server = rodan_server("0", HEARTBEAT);
    // Thor's URL: no facility, no flags.
    let mut thor = server.ws("/ws/");
    let t0 = Instant::now();
    assert_eq!(next_text(&mut thor), HEARTBEAT);
    let idle = t0.elapsed();
    assert!(
        idle >= Duration::from_millis(3800) && idle < Duration::from_millis(5500),
        "first idle heartbeat after {idle:?}"
    );
    // Each inbound frame (Thor's 1024 NULs, a heartbeat) is answered at once.
    for msg in ["\0".repeat(1024), HEARTBEAT.to_string()] {
        let t = Instant::now();
        send_text(&mut thor, &msg);
        assert_eq!(next_text(&mut thor), HEARTBEAT);
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
    }
    // An inbound heartbeat is never published.
    let mut sub = server.ws("/ws/x?subscribe-broadcast");
    let mut publ = server.ws("/ws/x?publish-broadcast");
    settle();
    send_text(&mut publ, HEARTBEAT);
    assert_eq!(next_text(&mut publ), HEARTBEAT);
    send_text(&mut publ, "after");
    let got = frames_within(&mut sub, Duration::from_millis(1500));
    assert_eq!(
        got.iter().filter(|f| *f != HEARTBEAT).collect::<Vec<_>>(),
        ["after"],
        "{got:?}"
    );
}

#[test]
fn bad_flags_and_facilities_are_refused_and_others_unaffected() {
    let server = rodan_server("0", "");
    let mut bystander = server.ws("/ws/rodan?subscribe-broadcast");
    for flag in [
        "subscribe-user",
        "publish-user",
        "Subscribe-Group",
        "publish-group",
        "subscribe-session",
        "publish-session=1",
    ] {
        let (status, body) =
            upgrade_status(&server, &format!("/ws/rodan?subscribe-broadcast&{flag}"));
        assert_eq!(status, 403, "{flag}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], NEEDS_IDENTITY);
    }
    let long = format!("/ws/{}?subscribe-broadcast", "f".repeat(300));
    let bad_facility = [long.as_str(), "/ws/caf\u{e9}?subscribe-broadcast"];
    for path in bad_facility {
        let (status, body) = upgrade_status(&server, path);
        assert_eq!(status, 400, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["error"],
            "invalid facility: the channel name it makes must be 1-255 bytes of printable \
             ASCII without spaces"
        );
    }
    // Not UTF-8: a JSON error to the sender, nothing published.
    let mut publ = server.ws("/ws/rodan?publish-broadcast");
    settle();
    publ.send(Message::binary(vec![0xff, 0xfe])).unwrap();
    let e: Value = serde_json::from_str(&next_text(&mut publ)).unwrap();
    assert_eq!(e["error"], "message not published: it is not UTF-8 text");
    send_text(&mut publ, "{}");
    assert_eq!(next_text(&mut bystander), "{}");
}

// ----- identities (issue 15) ---------------------------------------------

fn keys() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

/// An RS256 token signed with the test key pair's private half.
fn token(claims: Value) -> String {
    let pem = std::fs::read(keys().join("rsa_private.pem")).unwrap();
    let mut claims = claims;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    claims["exp"] = serde_json::json!(exp);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

fn alice() -> String {
    token(serde_json::json!({"sub": "alice", "groups": ["staff"], "sid": "sess-a"}))
}

fn bob() -> String {
    token(serde_json::json!({"sub": "bob", "groups": ["staff", "chess"], "sid": "sess-b"}))
}

/// Rodan's settings plus the RS256 public key, and `extra` variables.
fn identity_server(extra: &[(&str, &str)]) -> Server {
    let pem = keys().join("rsa_public.pem");
    let mut env = vec![
        ("RINGCAST_PROTOCOLS_WS4REDIS_PREFIX", "rodan"),
        ("RINGCAST_PROTOCOLS_WS4REDIS_EXPIRE", "0"),
        ("RINGCAST_AUTH_PUBLIC_KEY", pem.to_str().unwrap()),
    ];
    env.extend_from_slice(extra);
    Server::start_with(&["--shards", "2"], &env)
}

#[test]
fn user_group_and_session_channels_follow_the_token() {
    let server = identity_server(&[]);
    let (a, b) = (alice(), bob());
    let mut alice_user = server.ws(&format!("/ws/foo?subscribe-user&token={a}"));
    let mut bob_user = server.ws(&format!("/ws/foo?subscribe-user&token={b}"));
    let mut alice_group = server.ws(&format!("/ws/foo?subscribe-group&token={a}"));
    let mut bob_group = server.ws(&format!("/ws/foo?subscribe-group&token={b}"));
    let mut alice_session = server.ws(&format!("/ws/foo?subscribe-session&token={a}"));
    let mut bob_session = server.ws(&format!("/ws/foo?subscribe-session&token={b}"));
    let mut broadcast = server.ws("/ws/foo?subscribe-broadcast");
    settle();

    // publish-user=SELF: alice's own user channel; bob's is another one.
    let mut alice_pub = server.ws(&format!("/ws/foo?publish-user=SELF&token={a}"));
    send_text(&mut alice_pub, "note to self");
    assert_eq!(next_text(&mut alice_user), "note to self");
    // The backend names the channel as ws4redis names the Redis one.
    server.emit("rodan:user:bob:foo", serde_json::json!({"to": "bob"}));
    assert_eq!(next_text(&mut bob_user), r#"{"to":"bob"}"#);
    assert!(frames_within(&mut alice_user, Duration::from_millis(300)).is_empty());

    // publish-group: one publication per group of the publisher.
    let mut bob_pub = server.ws(&format!("/ws/foo?publish-group&token={b}"));
    send_text(&mut bob_pub, "to my groups");
    assert_eq!(next_text(&mut alice_group), "to my groups", "staff");
    let mut got = vec![next_text(&mut bob_group), next_text(&mut bob_group)];
    got.sort();
    assert_eq!(got, ["to my groups", "to my groups"], "staff and chess");

    // publish-session: the session channel of the token's sid.
    let mut alice_sess_pub = server.ws(&format!("/ws/foo?publish-session&token={a}"));
    send_text(&mut alice_sess_pub, "same session");
    assert_eq!(next_text(&mut alice_session), "same session");

    // Nobody saw what was not theirs; the broadcast channel is apart.
    for ws in [
        &mut alice_user,
        &mut bob_user,
        &mut alice_group,
        &mut bob_session,
        &mut broadcast,
    ] {
        let seen = frames_within(ws, Duration::from_millis(300));
        assert!(seen.is_empty(), "{seen:?}");
    }
    // Another facility is another channel.
    let mut other = server.ws(&format!("/ws/bar?subscribe-user&token={a}"));
    settle();
    send_text(&mut alice_pub, "foo only");
    assert_eq!(next_text(&mut alice_user), "foo only");
    assert!(frames_within(&mut other, Duration::from_millis(300)).is_empty());
}

#[test]
fn identity_refusals_have_exact_statuses_and_others_are_unaffected() {
    let server = identity_server(&[]);
    let mut bystander = server.ws(&format!(
        "/ws/foo?subscribe-user&publish-user&echo&token={}",
        alice()
    ));
    settle();
    // No token: 403, nobody to name the channels after.
    for flag in ["subscribe-user", "publish-group", "Subscribe-Session=SELF"] {
        let (status, body) = upgrade_status(&server, &format!("/ws/foo?{flag}"));
        assert_eq!(status, 403, "{flag}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], NEEDS_IDENTITY);
    }
    // A token without sid for a session channel: 403.
    let no_sid = token(serde_json::json!({"sub": "carol"}));
    let (status, body) = upgrade_status(
        &server,
        &format!("/ws/foo?subscribe-session&token={no_sid}"),
    );
    assert_eq!(
        (status, body.as_str()),
        (
            403,
            r#"{"error":"session channels need a connection token with a sid claim"}"#
        )
    );
    // A user id that cannot be part of a channel name: 403.
    let spaced = token(serde_json::json!({"sub": "car ol"}));
    let (status, body) = upgrade_status(&server, &format!("/ws/foo?subscribe-user&token={spaced}"));
    assert_eq!(status, 403, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["error"],
        "the token's user, group or session id makes an invalid channel name (1-255 bytes of \
         printable ASCII without spaces)"
    );
    // A forged token (signed with another key): 401 before the flags count.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "alice"}),
        &jsonwebtoken::EncodingKey::from_secret(b"not the key"),
    )
    .unwrap();
    let (status, body) = upgrade_status(&server, &format!("/ws/foo?subscribe-user&token={forged}"));
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"error":"token algorithm not accepted"}"#)
    );
    // A token with no identity flag is fine; broadcast needs none.
    let _plain = server.ws(&format!("/ws/foo?subscribe-broadcast&token={no_sid}"));
    // The bystander still works.
    send_text(&mut bystander, "still here");
    assert_eq!(next_text(&mut bystander), "still here");
}

#[test]
fn a_redis_message_on_a_user_channel_reaches_that_user_only() {
    let Some(redis) = common::redis_server::RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let server = identity_server(&[
        ("RINGCAST_SOURCES_REDIS_ENABLED", "true"),
        ("RINGCAST_SOURCES_REDIS_URL", url.as_str()),
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, h) = server.http("GET", "/health", "", &[]);
        if h.contains("redis: connected") {
            break;
        }
        assert!(Instant::now() < deadline, "redis source not connected: {h}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut alice_user = server.ws(&format!("/ws/foo?subscribe-user&token={}", alice()));
    let mut bob_user = server.ws(&format!("/ws/foo?subscribe-user&token={}", bob()));
    let mut alice_bar = server.ws(&format!("/ws/bar?subscribe-user&token={}", alice()));
    let mut alice_broadcast = server.ws(&format!("/ws/foo?subscribe-broadcast&token={}", alice()));
    settle();
    let mut r = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("rodan:user:alice:foo")
        .arg(RODAN_PAYLOAD)
        .query(&mut r)
        .unwrap();
    assert_eq!(receivers, 1, "ringcast's source is the one subscriber");
    assert_eq!(next_text(&mut alice_user), RODAN_PAYLOAD);
    for ws in [&mut bob_user, &mut alice_bar, &mut alice_broadcast] {
        let seen = frames_within(ws, Duration::from_millis(500));
        assert!(seen.is_empty(), "{seen:?}");
    }
}
