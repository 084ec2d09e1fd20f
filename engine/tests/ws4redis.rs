//! ws4redis / Rodan drop-in (issue 12), the endpoint alone (no Redis):
//! Rodan's URL and payload byte for byte, only JSON or the heartbeat to
//! Rodan's client, echo by origin, the kept last message and its expiry,
//! heartbeat timing, and refusals of bad flags and facilities.

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
        assert_eq!(
            v["error"],
            "user, group and session channels need a logged-in identity, which ringcast does \
             not support yet; only subscribe-broadcast and publish-broadcast are served"
        );
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
