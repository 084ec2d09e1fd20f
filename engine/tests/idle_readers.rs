//! On the io_uring driver an idle subscriber's read side waits in its
//! shard's poll ring with no task (`info`'s per-shard `idle_readers`).
//! Parked that way it still gets every publication, its next request is
//! read and answered (the read side resumes, then parks again), a client
//! that goes away ends its session, a server-side close (shutdown's 1001)
//! reaches it, and thousands ending together leave the ring serving. On
//! the epoll driver nothing parks.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::Message;

/// (idle readers, connections) summed over the shards.
fn counts(server: &Server) -> (u64, u64) {
    let info = server.backend("info", json!({}));
    let shards = info["result"]["shards"].as_array().expect("shards").clone();
    let idle = shards
        .iter()
        .map(|s| s["idle_readers"].as_u64().unwrap())
        .sum();
    let conns = shards
        .iter()
        .map(|s| s["connections"].as_u64().unwrap())
        .sum();
    (idle, conns)
}

fn wait_for(server: &Server, want: (u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = counts(server);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "(idle readers, connections) = {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The next publication's data (replies and pings skipped).
fn next_publication(ws: &mut Ws) -> Value {
    loop {
        let v = recv(ws);
        if v["method"] == "message" {
            return v["params"]["data"].clone();
        }
    }
}

#[test]
fn idle_subscribers_wait_without_a_task_and_wake_for_everything() {
    const N: usize = 40;
    let mut server = Server::start(&["--driver", "uring"]);
    let mut clients: Vec<Ws> = (0..N).map(|_| server.ws("/")).collect();
    for ws in &mut clients {
        subscribe(ws, "news");
    }
    wait_for(&server, (N as u64, N as u64));

    // Writes need no reader: every parked subscriber gets the publication.
    let r = server.emit("news", json!({"n": 1}));
    assert_eq!(r["subscribers"], N, "{r}");
    for ws in &mut clients {
        assert_eq!(next_publication(ws), json!({"n": 1}));
    }

    // A parked subscriber's next request is read and answered; it parks
    // again afterwards.
    for (i, ws) in clients.iter_mut().enumerate() {
        let r = rpc(
            ws,
            100 + i as u64,
            "subscribe",
            json!({"channel": format!("own{i}")}),
        );
        assert!(r.get("result").is_some(), "{r}");
    }
    wait_for(&server, (N as u64, N as u64));
    for (i, ws) in clients.iter_mut().enumerate() {
        server.emit(&format!("own{i}"), json!(i));
        assert_eq!(next_publication(ws), json!(i));
    }

    // A request split over two writes: the read side resumes for the
    // first half and keeps its task until the message is complete.
    let ws = &mut clients[0];
    let raw = ws.get_mut();
    let frame = masked_text(r#"{"jsonrpc":"2.0","id":7,"method":"heartbeat"}"#);
    std::io::Write::write_all(raw, &frame[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(counts(&server), (N as u64 - 1, N as u64));
    std::io::Write::write_all(raw, &frame[5..]).unwrap();
    let v = recv(ws);
    assert_eq!(v["id"], 7, "{v}");
    wait_for(&server, (N as u64, N as u64));

    // Clients that go away (end of stream, no close frame) end their
    // sessions.
    let gone: Vec<Ws> = clients.drain(..10).collect();
    drop(gone);
    wait_for(&server, (N as u64 - 10, N as u64 - 10));
    let r = server.emit("news", json!({"n": 2}));
    assert_eq!(r["subscribers"], N - 10, "{r}");
    for ws in &mut clients {
        assert_eq!(next_publication(ws), json!({"n": 2}));
    }

    // A server-side close reaches parked readers: shutdown's 1001.
    server.terminate();
    for ws in &mut clients {
        loop {
            match read_message(ws) {
                Ok(Message::Close(f)) => {
                    assert_eq!(f.map(|f| f.code), Some(CloseCode::Away));
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("no close frame: {e}"),
            }
        }
    }
    let status = server.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn thousands_of_parked_readers_ending_together_leave_the_ring_serving() {
    // 5,000 waits complete within milliseconds of each other, then the
    // ring serves a newcomer. (Completions past the ring's completion
    // queue, which the kernel keeps aside until the shard enters the ring
    // again, are `sys`'s unit test: clients here close too slowly to
    // overflow its 4,096 entries.)
    const N: usize = 5000;
    let server = Server::start(&["--driver", "uring", "--shards", "1"]);
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        let mut ws = server.ws("/");
        subscribe(&mut ws, "crowd");
        clients.push(ws);
    }
    wait_for(&server, (N as u64, N as u64));
    drop(clients);
    wait_for(&server, (0, 0));
    let mut ws = server.ws("/");
    subscribe(&mut ws, "after");
    wait_for(&server, (1, 1));
    server.emit("after", json!(1));
    assert_eq!(next_publication(&mut ws), json!(1));
}

#[test]
fn the_epoll_driver_keeps_a_task_per_connection() {
    let server = Server::start(&["--driver", "epoll"]);
    let mut clients: Vec<Ws> = (0..5).map(|_| server.ws("/")).collect();
    for ws in &mut clients {
        subscribe(ws, "news");
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(counts(&server), (0, 5));
}

/// One masked text frame (the client side of RFC 6455).
fn masked_text(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}
