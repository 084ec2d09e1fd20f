//! A client that stops reading is disconnected (policy `disconnect`) or
//! sees gaps in offsets (policy `drop`), while other subscribers receive
//! everything and the server's memory stays bounded.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tungstenite::Message;

/// 16 KiB of payload per publication.
fn big() -> serde_json::Value {
    json!({"pad": "x".repeat(16 * 1024)})
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Publishes `n` big messages on `channel` while `good` keeps reading;
/// returns the offsets `good` saw.
fn publish_and_read(server: &Server, good: &mut Ws, channel: &str, n: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..n {
                server.emit(channel, big());
            }
        });
        while (seen.len() as u64) < n {
            let m = recv(good);
            seen.push(m["params"]["offset"].as_u64().unwrap());
        }
    });
    seen
}

#[test]
fn stalled_reader_is_disconnected_and_others_get_everything() {
    let server = Server::start(&[
        "--max-outbound-bytes",
        "262144",
        "--slow-consumer",
        "disconnect",
    ]);
    let mut stalled = server.ws("/");
    subscribe(&mut stalled, "feed");
    let mut good = server.ws("/");
    subscribe(&mut good, "feed");
    let rss_before = rss_kib(server.pid());

    let n = 1500; // ~24 MiB: far more than the socket buffers hold
    let seen = publish_and_read(&server, &mut good, "feed", n);
    assert_eq!(
        seen,
        (1..=n).collect::<Vec<_>>(),
        "the reading subscriber gets everything in order"
    );

    let info = server.call("info", json!({}));
    assert!(
        info["counters"]["slow_consumer_disconnects"]
            .as_u64()
            .unwrap()
            >= 1,
        "{info}"
    );
    assert_eq!(
        server.call("total_subscribers", json!({"channel": "feed"}))["total"],
        1
    );
    // Bounded: the stalled client cost at most its budget, not the 24 MiB.
    let grown = rss_kib(server.pid()).saturating_sub(rss_before);
    assert!(grown < 16 * 1024, "server RSS grew by {grown} KiB");

    // The stalled client, once it reads, finds a close 1008 "slow consumer"
    // after what the kernel buffered, or a reset.
    stalled
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match read_message(&mut stalled) {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1008);
                assert_eq!(frame.reason.as_str(), "slow consumer");
                break;
            }
            Ok(_) => {}
            // A reset (the server closed with unread data) also ends it.
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                break
            }
            Err(tungstenite::Error::ConnectionClosed) => break,
            // A read timeout means the server kept the stalled client open:
            // that is the failure this test exists to catch.
            Err(e) => panic!("stalled client was not closed (1008 or reset): {e}"),
        }
        assert!(Instant::now() < deadline, "stalled client was never closed");
    }
}

#[test]
fn stalled_reader_sees_gaps_under_drop_policy() {
    let server = Server::start(&["--max-outbound-bytes", "262144", "--slow-consumer", "drop"]);
    let mut stalled = server.ws("/");
    subscribe(&mut stalled, "feed");
    let mut good = server.ws("/");
    subscribe(&mut good, "feed");

    let n = 1500;
    let seen = publish_and_read(&server, &mut good, "feed", n);
    assert_eq!(seen, (1..=n).collect::<Vec<_>>());

    let info = server.call("info", json!({}));
    assert!(
        info["counters"]["dropped_deliveries"].as_u64().unwrap() > 0,
        "{info}"
    );
    assert_eq!(
        server.call("total_subscribers", json!({"channel": "feed"}))["total"],
        2,
        "drop keeps the client"
    );

    // Now read: offsets only go up, with at least one gap, and the client
    // gets the live publication after the backlog.
    server.emit("feed", json!({"last": true}));
    let mut prev = 0;
    let mut gaps = 0;
    loop {
        let m = recv(&mut stalled);
        let off = m["params"]["offset"].as_u64().unwrap();
        assert!(off > prev, "offsets must increase: {off} after {prev}");
        if off != prev + 1 {
            gaps += 1;
        }
        prev = off;
        if off == n + 1 {
            break;
        }
    }
    assert!(gaps > 0, "a dropped publication shows as a gap");
}
