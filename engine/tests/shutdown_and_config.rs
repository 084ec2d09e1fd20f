//! Graceful shutdown (SIGTERM/SIGINT: close 1001 to every client, exit 0
//! within `shutdown_timeout`) and start-up config errors (exit 2, one line
//! naming the key); `config --print-default` is a config `--config` takes.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::Message;

/// Reads until the close frame; returns its code.
fn read_close(ws: &mut Ws) -> CloseCode {
    loop {
        match read_message(ws) {
            Ok(Message::Close(Some(f))) => return f.code,
            Ok(Message::Close(None)) => panic!("close frame without a code"),
            Ok(_) => {}
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

fn exit_within(server: &mut Server, timeout: Duration) -> std::process::ExitStatus {
    server
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("ringcast still running {timeout:?} after the signal"))
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let mut server = Server::start(&["--shutdown-timeout", "5"]);
    // Clients on both shards, subscribed and idle.
    let mut clients = clients_on_both_shards(&server, 1);
    for ws in clients.iter_mut() {
        subscribe(ws, "bye");
    }
    assert!(clients.len() >= 2);
    server.terminate();
    let signalled = Instant::now();
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.get_mut()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(read_close(ws), CloseCode::Away, "client {i}: close 1001");
        // tungstenite answers the close; let the answer leave.
        let _ = ws.flush();
    }
    let status = exit_within(&mut server, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5 + 3),
        "exit within shutdown_timeout: {:?}",
        signalled.elapsed()
    );
    // Nothing listens any more.
    assert!(TcpStream::connect(server.ws).is_err());
    assert!(TcpStream::connect(server.backend).is_err());
}

/// A WebSocket client with a small fixed receive buffer (no autotuning),
/// so what it does not read stays queued in the engine.
fn small_window_ws(server: &Server) -> Ws {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.connect(&server.ws.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let url = format!("ws://{}/", server.ws);
    let (ws, _) = tungstenite::client(url.as_str(), stream).expect("websocket handshake");
    ws
}

#[test]
fn sigterm_flushes_what_is_queued_before_the_close() {
    // A client that is behind when the signal comes still gets everything
    // queued for it, then the close: "send close 1001, flush, exit".
    let mut server = Server::start(&[
        "--shutdown-timeout",
        "10",
        "--max-outbound-bytes",
        "67108864",
    ]);
    let mut ws = small_window_ws(&server);
    subscribe(&mut ws, "backlog");
    // Far more than the kernel's socket buffers hold, so most of it waits
    // in the engine's queue for this connection.
    let chunk = "y".repeat(100_000);
    let count = 120u64;
    for n in 1..=count {
        let e = server.emit("backlog", json!({"n": n, "pad": chunk}));
        assert_eq!(e["subscribers"], 1, "{e}");
    }
    server.terminate();
    // A slow reader: it starts reading a moment after the signal, well
    // within the 10 s shutdown_timeout.
    std::thread::sleep(Duration::from_millis(300));
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut next = 1u64;
    let code = loop {
        match read_message(&mut ws) {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["params"]["offset"], next, "in order, none lost");
                next += 1;
            }
            Ok(Message::Close(f)) => break f.map(|f| f.code),
            Ok(_) => {}
            Err(e) => panic!(
                "connection ended without a close frame after {} of {count} publications: {e}",
                next - 1
            ),
        }
    };
    assert_eq!(next - 1, count, "every queued publication before the close");
    assert_eq!(code, Some(CloseCode::Away));
    let _ = ws.flush();
    let status = exit_within(&mut server, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn sigint_also_closes_with_1001_and_exits_0() {
    let mut server = Server::start(&[]);
    let mut ws = server.ws("/");
    subscribe(&mut ws, "bye");
    let st = Command::new("kill")
        .arg("-INT")
        .arg(server.pid().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(read_close(&mut ws), CloseCode::Away);
    let _ = ws.flush();
    let status = exit_within(&mut server, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{status}");
}

/// A masked client text frame (mask key 0, so the payload goes as is).
fn client_text_frame(payload: &str) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload.as_bytes());
    f
}

#[test]
fn shutdown_timeout_bounds_the_wait_for_clients_that_never_answer() {
    // Pongs and stuck closes would only be given up on after 60 s: only
    // shutdown_timeout can end this shutdown in time.
    let mut server = Server::start(&[
        "--shutdown-timeout",
        "2",
        "--pong-timeout",
        "60",
        "--max-outbound-bytes",
        "67108864",
    ]);
    // The deaf client subscribes, then megabytes pile up for it, so its
    // close frame cannot leave.
    let mut deaf = deaf_client(&server);
    deaf.write_all(&client_text_frame(
        r#"{"jsonrpc":"2.0","method":"subscribe","params":{"channel":"flood"}}"#,
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.call("total_subscribers", json!({"channel": "flood"}))["total"] != 1 {
        assert!(Instant::now() < deadline, "deaf client not subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let chunk = "x".repeat(100_000);
    for _ in 0..80 {
        let e = server.emit("flood", json!(chunk));
        assert_eq!(e["subscribers"], 1, "the deaf client stays subscribed");
    }
    let mut ws = server.ws("/");
    subscribe(&mut ws, "stuck");
    // Wait until the engine has both connections registered.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.call("info", json!(null))["connections"] != 2 {
        assert!(Instant::now() < deadline, "connections not registered");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.terminate();
    // This client reads the close but never answers it either.
    assert_eq!(read_close(&mut ws), CloseCode::Away);
    let status = exit_within(&mut server, Duration::from_secs(2 + 8));
    assert_eq!(status.code(), Some(0), "{status}");
}

// ----- config ------------------------------------------------------------

/// Runs `ringcast ARGS` with only the given `RINGCAST_*` variables; fails
/// the test if it has not ended after 15 s.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("RINGCAST_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start ringcast");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("ringcast {args:?} did not exit (it should refuse to start)");
        }
    }
}

/// A scratch file for this test process.
fn scratch_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ringcast-test-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

/// Loopback ports on 0 so a config that is wrongly accepted binds nothing
/// in anyone's way.
const PORTS: [&str; 4] = [
    "--ws-listen",
    "127.0.0.1:0",
    "--backend-listen",
    "127.0.0.1:0",
];

fn assert_config_error(what: &str, out: &Output, names: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit code 2; stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: exactly one line on stderr, got:\n{stderr}"
    );
    assert!(
        names.iter().any(|n| lines[0].contains(n)),
        "{what}: the line must name the key ({names:?}): {:?}",
        lines[0]
    );
}

fn serve_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["serve"];
    args.extend(PORTS);
    args.extend(extra);
    args
}

#[test]
fn invalid_flag_value_exits_2_naming_the_key() {
    let out = run(&serve_args(&["--max-message-size", "10"]), &[]);
    assert_config_error(
        "--max-message-size 10",
        &out,
        &["max_message_size", "max-message-size"],
    );
    let out = run(&serve_args(&["--ping-interval", "0"]), &[]);
    assert_config_error(
        "--ping-interval 0",
        &out,
        &["ping_interval", "ping-interval"],
    );
}

#[test]
fn invalid_environment_value_exits_2_naming_the_key() {
    let out = run(&serve_args(&[]), &[("RINGCAST_WS_BACKLOG", "0")]);
    assert_config_error(
        "RINGCAST_WS_BACKLOG=0",
        &out,
        &["RINGCAST_WS_BACKLOG", "ws.backlog"],
    );
    let out = run(&serve_args(&[]), &[("RINGCAST_SHARDS", "many")]);
    assert_config_error("RINGCAST_SHARDS=many", &out, &["RINGCAST_SHARDS", "shards"]);
}

#[test]
fn unknown_key_in_config_file_exits_2_naming_it() {
    let path = scratch_file("unknown.toml", "[ws]\nbacklg = 5\n");
    let out = run(&serve_args(&["--config", path.to_str().unwrap()]), &[]);
    assert_config_error("unknown key ws.backlg", &out, &["backlg"]);
    let path = scratch_file("wrong-type.toml", "shutdown_timeout = \"ten\"\n");
    let out = run(&serve_args(&["--config", path.to_str().unwrap()]), &[]);
    assert_config_error("shutdown_timeout = \"ten\"", &out, &["shutdown_timeout"]);
}

#[test]
fn unknown_enum_value_exits_2_naming_the_key() {
    let out = run(&serve_args(&["--slow-consumer", "maybe"]), &[]);
    assert_config_error(
        "--slow-consumer maybe",
        &out,
        &["slow-consumer", "slow_consumer"],
    );
}

#[test]
fn print_default_is_a_config_that_serves() {
    let out = run(&["config", "--print-default"], &[]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with('#')),
        "commented:\n{text}"
    );
    assert!(
        text.contains("[ws]") && text.contains("[backend]"),
        "{text}"
    );
    let path = scratch_file("default.toml", &text);
    let path = path.to_str().unwrap();

    // `config --check` accepts it as it is.
    let out = run(&["config", "--check", "--config", path], &[]);
    assert!(
        out.status.success(),
        "config --check: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And the engine serves with it (ports moved by flags).
    let server = Server::start(&["--config", path]);
    assert_eq!(server.call("ping", json!(null)), json!({"ping": "ok"}));
    let mut ws = server.ws("/");
    subscribe(&mut ws, "defaults");
    let e = server.emit("defaults", json!({"ok": true}));
    assert_eq!(e["subscribers"], 1, "{e}");
    let m = recv(&mut ws);
    assert_eq!(m["params"]["data"], json!({"ok": true}), "{m}");
    let r = rpc(&mut ws, 2, "heartbeat", json!(null));
    assert_eq!(r["result"], json!({"heartbeat":"ok"}));
}
