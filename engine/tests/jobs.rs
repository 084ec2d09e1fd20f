//! django-websockets drop-in (issue 13): the demo page's three actions
//! (`request`, `kill`, `status`) against the real engine over loopback, in
//! both scopes and both reply styles; kill racing completion; duplicate
//! connids and bad input answered with exact errors while other
//! connections carry on; a closed connection's jobs cancelled; a kill in
//! the global scope reaching the owner on the other shard at once.
//! Jobs last fractions of a second (`time` may be fractional) so the suite
//! stays fast.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::Message;

const OK: &str = r#"{"status":"Ok"}"#;
const KILLED: &str = r#"{"status":"Killed"}"#;
const INVALID: &str = r#"{"status":"Invalid connection Id"}"#;

/// The next text message, raw (skips pings/pongs).
fn recv_text(ws: &mut Ws) -> String {
    loop {
        match read_message(ws).expect("read") {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

fn request(ws: &mut Ws, connid: &str, time: &str) {
    send_text(
        ws,
        &format!(r#"{{"connid":"{connid}","time":"{time}","route":"request"}}"#),
    );
}

fn kill(ws: &mut Ws, connid: &str) {
    send_text(ws, &format!(r#"{{"connid":"{connid}","route":"kill"}}"#));
}

fn status(ws: &mut Ws) -> String {
    send_text(ws, r#"{"connid":"","route":"status"}"#);
    recv_text(ws)
}

fn error(message: &str) -> String {
    format!(
        r#"{{"status":"error","message":{}}}"#,
        serde_json::Value::from(message)
    )
}

/// A jobs connection and the shard it landed on (told by which shard's
/// connection count grew; the test opens connections one at a time).
fn ws_on_shard(server: &Server, path: &str) -> (Ws, usize) {
    let before = server.connections_per_shard();
    let ws = server.ws(path);
    for _ in 0..100 {
        let after = server.connections_per_shard();
        if let Some(i) = (0..after.len()).find(|&i| after[i] > before[i]) {
            return (ws, i);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("connection not counted on any shard");
}

#[test]
fn request_kill_and_status() {
    let server = Server::start(&[]);
    let mut ws = server.ws("/jobs");
    assert_eq!(status(&mut ws), "{}");
    let t0 = Instant::now();
    request(&mut ws, "a1", "0.4");
    request(&mut ws, "b2", "30");
    assert_eq!(status(&mut ws), r#"{"a1":1,"b2":30}"#);
    kill(&mut ws, "nope");
    assert_eq!(recv_text(&mut ws), INVALID);
    kill(&mut ws, "b2");
    assert_eq!(recv_text(&mut ws), OK);
    assert_eq!(recv_text(&mut ws), KILLED);
    // a1 completes on time, to the socket that requested it.
    assert_eq!(recv_text(&mut ws), OK);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(status(&mut ws), "{}");
    // An unknown or missing route answers the status, as the demo does.
    request(&mut ws, "c3", "5");
    send_text(&mut ws, r#"{"connid":"c3","route":"whatever"}"#);
    assert_eq!(recv_text(&mut ws), r#"{"c3":5}"#);
    send_text(&mut ws, r#"{"connid":"c3"}"#);
    assert_eq!(recv_text(&mut ws), r#"{"c3":5}"#);
    // Numbers are accepted for time and connid; 0 answers at once.
    send_text(&mut ws, r#"{"connid":5,"time":0,"route":"request"}"#);
    assert_eq!(recv_text(&mut ws), OK);
}

#[test]
fn kill_racing_completion_answers_each_job_exactly_once() {
    let server = Server::start(&[]);
    let mut ws = server.ws("/jobs");
    const N: usize = 30;
    let t0 = Instant::now();
    for i in 0..N {
        request(&mut ws, &format!("j{i}"), "0.3");
    }
    // Kill them one by one across the moment they fall due (from 30 ms
    // before to 60 ms after), so some kills land first and some after.
    for i in 0..N {
        let at = t0 + Duration::from_millis(270 + 3 * i as u64);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        kill(&mut ws, &format!("j{i}"));
    }
    let (mut ok, mut killed, mut invalid) = (0, 0, 0);
    while ok + killed + invalid < 2 * N {
        match recv_text(&mut ws).as_str() {
            OK => ok += 1,
            KILLED => killed += 1,
            INVALID => invalid += 1,
            other => panic!("unexpected {other}"),
        }
        assert!(ok <= N && killed + invalid <= N, "{ok} {killed} {invalid}");
    }
    // Every kill got one answer (Ok + Killed, or Invalid after the job
    // completed) and every job one outcome (completed Ok or kill's Ok).
    assert_eq!(killed + invalid, N);
    assert_eq!(ok, N);
    assert_silent(&mut ws, Duration::from_millis(500));
    eprintln!("killed {killed}, completed first {invalid}");
}

#[test]
fn duplicates_and_bad_input_get_exact_errors_and_disturb_no_one() {
    let server = Server::start(&[]);
    let mut other = server.ws("/jobs");
    request(&mut other, "mine", "0.8");
    let mut ws = server.ws("/jobs");
    request(&mut ws, "a1", "30");
    let cases = [
        (
            r#"{"connid":"a1","time":"1","route":"request"}"#,
            error(r#"connid "a1" is already running"#),
        ),
        (
            r#"{"connid":"x","time":"five","route":"request"}"#,
            error(r#"time must be a number of seconds from 0 to 3600 (got "five")"#),
        ),
        (
            r#"{"connid":"x","time":"-2","route":"request"}"#,
            error(r#"time must be a number of seconds from 0 to 3600 (got "-2")"#),
        ),
        (
            r#"{"connid":"x","time":99999,"route":"request"}"#,
            error("time must be a number of seconds from 0 to 3600 (got 99999)"),
        ),
        (
            r#"{"connid":"x","route":"request"}"#,
            error("request needs a time (seconds)"),
        ),
        (
            r#"{"time":"1","route":"request"}"#,
            error("request needs a connid"),
        ),
        (r#"{"route":"kill"}"#, error("kill needs a connid")),
        (
            r#"{"connid":{"a":1},"route":"kill"}"#,
            error("connid must be a string or a number"),
        ),
        ("{not json", error("message is not a JSON object")),
        ("\"status\"", error("message is not a JSON object")),
    ];
    for (msg, want) in &cases {
        send_text(&mut ws, msg);
        assert_eq!(&recv_text(&mut ws), want, "{msg}");
    }
    // Nothing was started by them, and the same socket still works.
    assert_eq!(status(&mut ws), r#"{"a1":30}"#);
    // The other connection saw none of it: its job completes, to it only.
    assert_eq!(status(&mut other), r#"{"mine":1}"#);
    assert_eq!(recv_text(&mut other), OK);
    assert_silent(&mut ws, Duration::from_millis(200));
}

#[test]
fn jobs_past_the_cap_are_refused() {
    let server = Server::start_with(
        &[],
        &[("RINGCAST_PROTOCOLS_JOBS_MAX_JOBS_PER_CONNECTION", "2")],
    );
    let mut ws = server.ws("/jobs");
    let mut other = server.ws("/jobs");
    request(&mut ws, "a", "30");
    request(&mut ws, "b", "30");
    request(&mut ws, "c", "30");
    assert_eq!(
        recv_text(&mut ws),
        error("too many jobs: at most 2 per connection")
    );
    assert_eq!(status(&mut ws), r#"{"a":30,"b":30}"#);
    // The cap is per connection.
    request(&mut other, "c", "0.1");
    assert_eq!(recv_text(&mut other), OK);
}

/// Waits until `watcher`'s status reads `want`.
fn await_status(watcher: &mut Ws, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = status(watcher);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "status {got}, want {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn closing_a_connection_cancels_its_jobs() {
    // Global scope, so that another connection can see the jobs go.
    let server = Server::start_with(&[], &[("RINGCAST_PROTOCOLS_JOBS_SCOPE", "global")]);
    let mut watcher = server.ws("/jobs");
    // Closed with a close frame.
    let mut ws = server.ws("/jobs");
    request(&mut ws, "a", "30");
    request(&mut ws, "b", "0.3");
    assert_eq!(status(&mut ws), r#"{"b":1,"a":30}"#);
    ws.close(None).unwrap();
    await_status(&mut watcher, "{}");
    // Dropped without one (the TCP connection just goes).
    let mut ws = server.ws("/jobs");
    request(&mut ws, "a", "30");
    assert_eq!(status(&mut ws), r#"{"a":30}"#);
    drop(ws);
    await_status(&mut watcher, "{}");
    // The names are free again and the server keeps serving.
    request(&mut watcher, "a", "0.2");
    assert_eq!(recv_text(&mut watcher), OK);
    assert_silent(&mut watcher, Duration::from_millis(400));
}

#[test]
fn connection_scope_keeps_jobs_private() {
    let server = Server::start(&[]);
    let mut a = server.ws("/jobs");
    let mut b = server.ws("/jobs");
    request(&mut a, "same", "30");
    assert_eq!(status(&mut b), "{}");
    kill(&mut b, "same");
    assert_eq!(recv_text(&mut b), INVALID);
    // The same name is a different job on another connection.
    request(&mut b, "same", "0.1");
    assert_eq!(recv_text(&mut b), OK);
    assert_eq!(status(&mut a), r#"{"same":30}"#);
}

#[test]
fn global_scope_kill_reaches_the_owner_on_the_other_shard() {
    let server = Server::start_with(
        &["--shards", "2"],
        &[("RINGCAST_PROTOCOLS_JOBS_SCOPE", "global")],
    );
    let (mut owner, owner_shard) = ws_on_shard(&server, "/jobs");
    let mut keep = Vec::new();
    let mut killer = loop {
        let (ws, shard) = ws_on_shard(&server, "/jobs");
        if shard != owner_shard {
            break ws;
        }
        keep.push(ws);
        assert!(keep.len() < 50, "every connection on shard {owner_shard}");
    };
    request(&mut owner, "a1", "30");
    request(&mut owner, "b2", "0.5");
    // The owner's status answers after its requests ran.
    assert_eq!(status(&mut owner), r#"{"b2":1,"a1":30}"#);
    assert_eq!(status(&mut killer), r#"{"b2":1,"a1":30}"#);
    // The shared table refuses a name anyone is running.
    request(&mut killer, "a1", "1");
    assert_eq!(
        recv_text(&mut killer),
        error(r#"connid "a1" is already running"#)
    );
    let t0 = Instant::now();
    kill(&mut killer, "a1");
    assert_eq!(recv_text(&mut killer), OK);
    assert_eq!(recv_text(&mut owner), KILLED);
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(400), "Killed after {took:?}");
    assert_silent(&mut killer, Duration::from_millis(50));
    // b2 still completes, to its owner only.
    assert_eq!(recv_text(&mut owner), OK);
    assert_silent(&mut killer, Duration::from_millis(100));
    // Closing the owner takes its jobs out of the table.
    request(&mut owner, "c3", "30");
    assert_eq!(status(&mut owner), r#"{"c3":30}"#);
    assert_eq!(status(&mut killer), r#"{"c3":30}"#);
    drop(owner);
    let deadline = Instant::now() + Duration::from_secs(3);
    while status(&mut killer) != "{}" {
        assert!(Instant::now() < deadline, "c3 still listed");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(&mut killer, "c3");
    assert_eq!(recv_text(&mut killer), INVALID);
}

#[test]
fn python_replies_are_the_demos_strings() {
    let server = Server::start_with(&[], &[("RINGCAST_PROTOCOLS_JOBS_REPLIES", "python")]);
    let mut ws = server.ws("/jobs");
    assert_eq!(status(&mut ws), "{}");
    request(&mut ws, "a1", "0.3");
    send_text(&mut ws, r#"{"connid":7,"time":30,"route":"request"}"#);
    assert_eq!(status(&mut ws), "{u'a1': 1, 7: 30}");
    kill(&mut ws, "zz");
    assert_eq!(recv_text(&mut ws), "{'status':'Invalid connection Id'}");
    kill(&mut ws, "7");
    assert_eq!(recv_text(&mut ws), "{'status':'Ok'}");
    assert_eq!(recv_text(&mut ws), "{'status':'Killed'}");
    assert_eq!(recv_text(&mut ws), "{'status':'Ok'}");
    request(&mut ws, "x", "abc");
    assert_eq!(
        recv_text(&mut ws),
        r#"{'status':'error','message':'time must be a number of seconds from 0 to 3600 (got "abc")'}"#
    );
}

#[test]
fn the_demo_page_connects_to_the_root_when_configured() {
    let server = Server::start_with(&[], &[("RINGCAST_PROTOCOLS_JOBS_PATH", "/")]);
    // The demo's page: 'ws://' + window.location.host, path "/".
    let mut ws = server.ws("/");
    request(&mut ws, "a1", "0.1");
    assert_eq!(recv_text(&mut ws), OK);
    // Another protocol can still be chosen per connection.
    let mut native = server.ws("/?dialect=native");
    let r = rpc(&mut native, 1, "heartbeat", serde_json::json!({}));
    assert!(r.get("result").is_some(), "{r}");
}
