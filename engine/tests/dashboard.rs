//! The dashboard on the backend port (issue 18): `GET /dashboard` serves
//! the embedded page, `GET /dashboard/events` streams one JSON sample a
//! second whose rates follow real traffic; the token rules of the other
//! backend paths (plus `?token=`), 401/405/404 on bad requests, and an open
//! event stream neither survives its client nor holds up shutdown.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Opens `GET path` on the backend and reads the response head.
fn open_events(server: &Server, path: &str) -> (BufReader<TcpStream>, Response) {
    let mut s = TcpStream::connect(server.backend).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let resp = read_http_response(&mut r);
    (r, resp)
}

/// The next `data:` event of a server-sent event stream, as JSON.
fn next_event(r: &mut BufReader<TcpStream>) -> Value {
    let mut data = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("read event stream");
        assert!(n > 0, "event stream ended");
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(d) = line.strip_prefix("data: ") {
            data.push_str(d);
        } else if line.is_empty() && !data.is_empty() {
            return serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}"));
        }
    }
}

#[test]
fn page_is_served_embedded_and_small() {
    let server = Server::start(&[]);
    let (status, body) = server.http("GET", "/dashboard", "", &[]);
    assert_eq!(status, 200);
    assert!(body.contains("<title>ringcast dashboard</title>"), "{body}");
    assert!(body.contains("new EventSource"));
    assert!(body.len() < 48 * 1024, "{} bytes", body.len());
}

#[test]
fn events_stream_samples_with_rates_from_real_traffic() {
    let server = Server::start(&[]);
    let mut ws = server.ws("/");
    subscribe(&mut ws, "dash");
    let (mut r, head) = open_events(&server, "/dashboard/events");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let first = next_event(&mut r);
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(first["shards"].as_array().unwrap().len(), 2);
    assert_eq!(first["total"]["connections"], 1);
    assert_eq!(first["total"]["subscriptions"], 1);
    assert!(first["total"]["deliveries_per_s"].is_null(), "{first}");
    assert_eq!(
        first["top_channels"],
        json!([{"channel": "dash", "subscribers": 1}])
    );
    for i in 0..20 {
        server.emit("dash", json!({"i": i}));
    }
    for _ in 0..20 {
        recv(&mut ws);
    }
    // The next sample covers the emits (they finished before it was taken
    // or fall in the one after).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = (0.0, 0.0);
    while Instant::now() < deadline {
        let e = next_event(&mut r);
        seen.0 += e["total"]["deliveries_per_s"].as_f64().unwrap();
        seen.1 += e["total"]["publications_per_s"].as_f64().unwrap();
        if seen.0 > 0.0 && seen.1 > 0.0 {
            break;
        }
    }
    assert!(seen.0 > 0.0 && seen.1 > 0.0, "rates never rose: {seen:?}");
    let idle = next_event(&mut r);
    assert_eq!(idle["total"]["deliveries_per_s"], 0.0, "{idle}");
    assert_eq!(idle["total"]["deliveries"], 20);
    let per_shard: u64 = idle["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["deliveries"].as_u64().unwrap())
        .sum();
    assert_eq!(per_shard, 20);
}

#[test]
fn bad_method_path_and_token_are_refused() {
    let open = Server::start(&[]);
    for path in ["/dashboard", "/dashboard/events"] {
        let (status, body) = open.http("POST", path, "{}", &[]);
        assert_eq!(status, 405, "{path}: {body}");
        assert!(body.contains("\"error\""), "{body}");
    }
    let (status, _) = open.http("GET", "/dashboard/nothing", "", &[]);
    assert_eq!(status, 404);

    let server = Server::start(&["--api-token", "s3cret+/="]);
    for path in [
        "/dashboard",
        "/dashboard?token=wrong",
        "/dashboard?token=s3cret",
        "/dashboard/events",
        "/dashboard/events?token=wrong",
    ] {
        let (status, body) = server.http("GET", path, "", &[]);
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("unauthorized"), "{body}");
    }
    // Wrong token and wrong method: 401 first, as on the other paths.
    let (status, _) = server.http("POST", "/dashboard", "", &[]);
    assert_eq!(status, 401);
    let (status, _) = server.http("GET", "/dashboard?token=s3cret%2B%2F%3D", "", &[]);
    assert_eq!(status, 200);
    let (status, _) = server.http(
        "GET",
        "/dashboard",
        "",
        &[("Authorization", "Bearer s3cret+/=")],
    );
    assert_eq!(status, 200);
    let (_, head) = open_events(&server, "/dashboard/events?token=s3cret%2B%2F%3D");
    assert_eq!(head.status, 200);
    let (status, _) = server.http("POST", "/dashboard?token=s3cret%2B%2F%3D", "", &[]);
    assert_eq!(status, 405);
}

#[test]
fn shutdown_does_not_wait_for_an_open_event_stream() {
    let mut server = Server::start(&[]);
    let (mut r, head) = open_events(&server, "/dashboard/events");
    assert_eq!(head.status, 200);
    next_event(&mut r);
    let t0 = Instant::now();
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("ringcast did not exit with an event stream open");
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // The stream ends rather than hanging.
    let mut rest = String::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => rest.push_str(&line),
            Err(e) => panic!("stream did not end: {e} after {rest:?}"),
        }
    }
}

/// Server-side sockets on `port` in CLOSE_WAIT: the peer has gone but the
/// server has not closed its end.
fn close_wait_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "08"
        })
        .count()
}

#[test]
fn a_departed_client_ends_its_event_stream() {
    let server = Server::start(&[]);
    for _ in 0..5 {
        let (mut r, _) = open_events(&server, "/dashboard/events");
        next_event(&mut r);
    }
    // Each server loop sees its client's end-of-stream at once (not only at
    // its next write) and closes its socket.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(close_wait_on(server.backend.port()), 0);
}
