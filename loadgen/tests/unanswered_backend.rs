//! A backend that stops answering mid-run (the overloaded soak's case:
//! "4,580,000 of 2,020,000 expected"): publications sent but never
//! acknowledged still reach the subscribers, and must not be counted
//! against the acknowledged ones, nor keep being sent into a connection
//! nobody reads.
//!
//! Between the loadgen and the real engine's backend port sits a TCP relay
//! that passes every request through but, after the first second, stops
//! passing the answers back (it still reads them, so the engine is never
//! blocked): the engine publishes each request; the loadgen hears nothing.
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Relays one connection at a time from a free port to `backend`; answers
/// are passed back only for `answer_for` after each connection opens.
fn silencing_relay(backend: String, answer_for: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let addr = listener.local_addr().expect("relay addr").to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = TcpStream::connect(&backend) else {
                return;
            };
            let (Ok(mut client_r), Ok(mut server_w)) = (client.try_clone(), server.try_clone())
            else {
                return;
            };
            // Requests: always through.
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_r, &mut server_w);
                let _ = server_w.shutdown(std::net::Shutdown::Write);
            });
            // Answers: through until `answer_for` has passed, then read
            // and dropped.
            std::thread::spawn(move || {
                let opened = Instant::now();
                let mut buf = [0u8; 16 * 1024];
                let mut passing = true;
                loop {
                    let n = match server.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    passing = passing && opened.elapsed() < answer_for;
                    if passing && client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn unacknowledged_publications_are_counted_apart_and_publishing_stops() {
    let engine = common::Engine::start(&[]);
    let relay = silencing_relay(engine.backend.clone(), Duration::from_secs(1));
    let dir = std::env::temp_dir().join(format!("lg-unanswered-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("report.json");
    let started = Instant::now();
    let out = common::loadgen(&[
        "fanout",
        "-c",
        "20",
        "--channels",
        "1",
        "--rate",
        "50",
        "-d",
        "20",
        "--backend-timeout",
        "1",
        "--drain-timeout",
        "3",
        "--server",
        &engine.ws,
        "--backend",
        &relay,
        "--json",
        &json.to_string_lossy(),
    ]);
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("no report ({e}):\n{text}")),
    )
    .expect("JSON report");
    let _ = std::fs::remove_dir_all(&dir);
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing:\n{text}"))
    };

    // The run fails, saying why.
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("did not answer publication"), "{text}");
    // Publishing stopped once the answers stopped, not after 20 s.
    assert!(took < Duration::from_secs(15), "took {took:?}:\n{text}");
    let (acked, sent) = (n("publications"), n("publications_sent"));
    assert!(acked > 0 && sent > acked, "{text}");
    assert!(sent < 50 * 20 / 2, "kept publishing: {sent} sent:\n{text}");
    assert_eq!(n("publish_errors"), sent - acked, "{text}");
    // Deliveries never exceed what was expected of the acknowledged
    // publications; every one of those arrived; the others are apart.
    assert_eq!(n("expected_deliveries"), acked * 20, "{text}");
    assert_eq!(n("deliveries"), acked * 20, "{text}");
    assert_eq!(n("lost"), 0, "{text}");
    assert_eq!(n("duplicates"), 0, "{text}");
    let beyond = n("deliveries_unacknowledged");
    assert!(beyond > 0 && beyond <= (sent - acked) * 20, "{text}");
    assert!(text.contains("never acknowledged"), "{text}");
}
