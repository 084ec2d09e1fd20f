//! Shared helpers for the engine's integration tests: start the real
//! `ringcast` binary on free loopback ports, talk to it with real clients
//! (tungstenite over TCP, raw HTTP/1.1 for the backend port).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::Message;
use tungstenite::WebSocket;

pub mod postgres_server;
pub mod rabbitmq;
pub mod redis_cluster;
pub mod redis_server;

pub type Ws = WebSocket<TcpStream>;

/// Whether this is a CI run (`CI` set, and not to `false` or `0`), where a
/// test must not skip for want of a tool: scripts/setup.sh installs them.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Whether the external program `name` runs (`name version_flag` exits 0).
pub fn has_tool(name: &str, version_flag: &str) -> bool {
    Command::new(name)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A test cannot go on because something it needs is missing (`reason`
/// says what, and how to install it). Under CI this fails the test;
/// elsewhere it prints `skipped: {reason}` and the caller returns.
pub fn skip_or_fail(reason: &str) {
    assert!(
        !in_ci(),
        "{reason}; CI=true, so this fails instead of skipping (scripts/setup.sh installs it)"
    );
    println!("skipped: {reason}");
}

/// Whether the external program `name` (from Debian package `package`)
/// runs; when it does not, [`skip_or_fail`]s and returns false.
pub fn require_tool(name: &str, version_flag: &str, package: &str) -> bool {
    if has_tool(name, version_flag) {
        return true;
    }
    skip_or_fail(&format!(
        "`{name}` is not installed (apt-get install {package})"
    ));
    false
}

/// A running engine, killed on drop.
pub struct Server {
    pub child: Child,
    pub ws: SocketAddr,
    pub backend: SocketAddr,
    /// The file the engine's stderr (its log) goes to, if any: a pipe
    /// nobody reads would stop a server that logs more than it holds.
    /// Printed when the test fails, removed on drop.
    pub log: Option<std::path::PathBuf>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The engine with DMOJ's three listeners (receivers, senders, long-poll)
/// on ports of their own, plus `env`; returns it and those addresses.
pub fn start_dmoj(env: &[(&str, &str)]) -> (Server, [SocketAddr; 3]) {
    let mut all = vec![("RINGCAST_PROTOCOLS_DMOJ_ENABLED", "true")];
    all.extend_from_slice(env);
    let (server, a) = Server::start_listening(None, &[], &all, 3, |a| {
        vec![
            ("RINGCAST_PROTOCOLS_DMOJ_RECEIVERS", a[0].to_string()),
            ("RINGCAST_PROTOCOLS_DMOJ_SENDERS", a[1].to_string()),
            ("RINGCAST_PROTOCOLS_DMOJ_LONG_POLL", a[2].to_string()),
        ]
    });
    (server, [a[0], a[1], a[2]])
}

impl Server {
    /// Starts `ringcast serve` with `--shards 2` and `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with(extra, &[])
    }

    pub fn start_with(extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_limited(None, extra, env)
    }

    /// Starts the server under `ulimit -n nofile` (soft and hard), through
    /// `sh -c 'ulimit -n N; exec ringcast ...'`.
    pub fn start_with_nofile(nofile: u32, extra: &[&str]) -> Server {
        Self::start_limited(Some(nofile), extra, &[])
    }

    fn start_limited(nofile: Option<u32>, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_listening(nofile, extra, env, 0, |_| Vec::new()).0
    }

    /// Starts the engine with `env` and `listeners` more listeners of its
    /// own (a protocol's port), whose variables `listener_env` gives from
    /// their addresses. Returns once they all accept connections, with
    /// their addresses. Every port, the WebSocket and backend ports
    /// included, is picked again on each attempt: a port found free can
    /// be taken (as some client's source port) before the engine binds it.
    pub fn start_listening(
        nofile: Option<u32>,
        extra: &[&str],
        env: &[(&str, &str)],
        listeners: usize,
        listener_env: impl Fn(&[SocketAddr]) -> Vec<(&'static str, String)>,
    ) -> (Server, Vec<SocketAddr>) {
        for attempt in 1..=5 {
            let ws: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let backend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let more: Vec<SocketAddr> = (0..listeners)
                .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
                .collect();
            let mut args = vec![
                "serve".to_string(),
                "--ws-listen".into(),
                ws.to_string(),
                "--backend-listen".into(),
                backend.to_string(),
            ];
            if !extra.contains(&"--shards") {
                args.push("--shards".into());
                args.push("2".into());
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            // TEST_RINGCAST_BIN: run another build of the engine (one kept
            // apart from a target directory other checkouts build into).
            let bin = std::env::var("TEST_RINGCAST_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_ringcast").to_string());
            let bin = bin.as_str();
            let mut cmd = match nofile {
                None => Command::new(bin),
                Some(n) => {
                    let mut c = Command::new("sh");
                    c.arg("-c")
                        .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                        .arg(bin);
                    c
                }
            };
            let log = std::env::temp_dir().join(format!(
                "ringcast-test-{}-{}.log",
                std::process::id(),
                ws.port()
            ));
            let log_file = std::fs::File::create(&log).expect("create the server's log file");
            cmd.args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log_file));
            for (k, v) in env {
                cmd.env(k, v);
            }
            for (k, v) in listener_env(&more) {
                cmd.env(k, v);
            }
            let child = cmd.spawn().expect("start ringcast");
            let mut server = Server {
                child,
                ws,
                backend,
                log: Some(log),
            };
            if server.wait_ready() && server.wait_listening(&more) {
                return (server, more);
            }
            // Say why before the next attempt (the log goes with `server`).
            eprintln!(
                "ringcast did not start (attempt {attempt} of 5): {}",
                server.log_tail(10)
            );
        }
        panic!("ringcast did not start");
    }

    /// Whether every address in `addrs` accepts a connection within 5 s.
    fn wait_listening(&mut self, addrs: &[SocketAddr]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        for a in addrs {
            while TcpStream::connect(a).is_err() {
                if Instant::now() >= deadline || !matches!(self.child.try_wait(), Ok(None)) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        true
    }

    /// The last `n` lines of the engine's log.
    fn log_tail(&self, n: usize) -> String {
        let text = self
            .log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect(self.backend).is_ok() && TcpStream::connect(self.ws).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
    }

    /// A WebSocket client on `path` (e.g. "/"), read timeout 5 s.
    pub fn ws(&self, path: &str) -> Ws {
        let stream = TcpStream::connect(self.ws).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let url = format!("ws://{}{}", self.ws, path);
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("websocket handshake");
        ws
    }

    /// One JSON-RPC call on the backend port; returns the whole reply.
    pub fn backend(&self, method: &str, params: Value) -> Value {
        let body = json!({"jsonrpc":"2.0","id":1,"method":method,"params":params}).to_string();
        let (status, body) = self.http("POST", "/", &body, &[]);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `result` of a backend call (panics on an error reply).
    pub fn call(&self, method: &str, params: Value) -> Value {
        let v = self.backend(method, params);
        assert!(v.get("error").is_none(), "{v}");
        v["result"].clone()
    }

    pub fn emit(&self, channel: &str, data: Value) -> Value {
        self.call("emit", json!({"channel": channel, "data": data}))
    }

    /// One HTTP request on a fresh connection: (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let mut s = TcpStream::connect(self.backend).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).unwrap();
        read_response(&mut BufReader::new(s))
    }

    /// `info` shard by shard: connections per shard.
    pub fn connections_per_shard(&self) -> Vec<u64> {
        let info = self.call("info", json!({}));
        info["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["connections"].as_u64().unwrap())
            .collect()
    }

    /// Waits up to `timeout` for the server to exit; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() && self.log.is_some() {
            // The test failed: what the engine said is part of the report.
            eprintln!(
                "--- ringcast on {} logged (its last 60 lines) ---\n{}\n---",
                self.ws,
                self.log_tail(60)
            );
        }
        if let Some(log) = self.log.take() {
            let _ = std::fs::remove_file(log);
        }
    }
}

/// One HTTP response as the tests see it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 response: the head and, when it has a
/// Content-Length, the body.
pub fn read_http_response(r: &mut impl BufRead) -> Response {
    let mut line = String::new();
    r.read_line(&mut line).expect("read status line");
    assert!(line.starts_with("HTTP/1.1 "), "status line: {line:?}");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("read header");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or_else(|| panic!("header {h:?}"));
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: String::new(),
    };
    if let Some(len) = resp.header("content-length") {
        let mut body = vec![0u8; len.parse().expect("content-length")];
        r.read_exact(&mut body).expect("read body");
        resp.body = String::from_utf8(body).expect("UTF-8 body");
    }
    resp
}

/// Reads one HTTP response: (status, body).
pub fn read_response(r: &mut impl BufRead) -> (u16, String) {
    let resp = read_http_response(r);
    (resp.status, resp.body)
}

/// Sends a JSON-RPC request on a WebSocket.
pub fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

pub fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_string())).unwrap();
}

/// `ws.read()`, retried when a signal interrupts the blocking read (a
/// socket with a read timeout is never restarted by the kernel, so a
/// stop/continue of the test process surfaces as EINTR).
pub fn read_message<S: std::io::Read + std::io::Write>(
    ws: &mut tungstenite::WebSocket<S>,
) -> tungstenite::Result<Message> {
    loop {
        match ws.read() {
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// The next text message as JSON (skips pings/pongs).
pub fn recv(ws: &mut Ws) -> Value {
    loop {
        match read_message(ws).expect("read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Binary(b) => return serde_json::from_slice(&b).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Sends a request with `id` and returns its reply (publications that
/// arrive first are skipped).
pub fn rpc(ws: &mut Ws, id: u64, method: &str, params: Value) -> Value {
    send(
        ws,
        json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}),
    );
    loop {
        let v = recv(ws);
        if v.get("id") == Some(&json!(id)) {
            return v;
        }
    }
}

pub fn subscribe(ws: &mut Ws, channel: &str) -> Value {
    let r = rpc(ws, 1, "subscribe", json!({"channel": channel}));
    assert!(r.get("result").is_some(), "{r}");
    r["result"].clone()
}

/// Asserts nothing arrives on `ws` within `wait`.
pub fn assert_silent(ws: &mut Ws, wait: Duration) {
    ws.get_mut().set_read_timeout(Some(wait)).unwrap();
    match read_message(ws) {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
}

/// Opens clients until both shards have at least `per_shard` of them.
pub fn clients_on_both_shards(server: &Server, per_shard: u64) -> Vec<Ws> {
    let mut clients = Vec::new();
    for _ in 0..400 {
        clients.push(server.ws("/"));
        if clients.len() as u64 >= 2 * per_shard {
            let counts = server.connections_per_shard();
            if counts.iter().all(|&c| c >= per_shard) {
                return clients;
            }
        }
    }
    panic!(
        "connections did not spread over both shards: {:?}",
        server.connections_per_shard()
    );
}

/// A WebSocket client on raw TCP: does the upgrade, then never reads again
/// unless the test does (so it answers neither pings nor close frames).
/// The 101 head is read byte by byte, so nothing after it is consumed.
pub fn deaf_client(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(server.ws).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.ws
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Checks a Prometheus text exposition as strictly as the reference
/// parser (`expfmt`, what `promtool check metrics` uses): each family's
/// `# HELP` and `# TYPE` at most once, `# TYPE` before the family's first
/// sample, the family's samples together (not split by another family),
/// every sample `name[{labels}] value` with a number. Returns the
/// families in order.
pub fn check_exposition(text: &str) -> Result<Vec<String>, String> {
    let mut helps = std::collections::HashSet::new();
    let mut typed: Vec<String> = Vec::new();
    let mut closed = std::collections::HashSet::new();
    let mut current: Option<String> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default().to_owned();
            if !helps.insert(name.clone()) {
                return Err(format!("second HELP line for {name}"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap_or_default().to_owned();
            let kind = it.next().unwrap_or_default();
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("bad TYPE line: {line}"));
            }
            if typed.contains(&name) {
                return Err(format!("second TYPE line for {name}"));
            }
            if let Some(prev) = current.replace(name.clone()) {
                closed.insert(prev);
            }
            typed.push(name);
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or(format!("bad sample: {line}"))?;
        let name = &line[..name_end];
        let value = line
            .rsplit(' ')
            .next()
            .ok_or(format!("bad sample: {line}"))?;
        if value.parse::<f64>().is_err() {
            return Err(format!("bad value in: {line}"));
        }
        let family = typed
            .iter()
            .rev()
            .find(|f| {
                name == f.as_str()
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(f.as_str()))
            })
            .cloned();
        match family {
            Some(f) if closed.contains(&f) => {
                return Err(format!("samples of {f} split by another family: {line}"))
            }
            Some(f) if current.as_deref() != Some(f.as_str()) => {
                return Err(format!("sample of {f} outside its family: {line}"))
            }
            Some(_) => {}
            None => {
                // An untyped sample: its own family, once.
                if typed.iter().any(|t| t == name) || closed.contains(name) {
                    return Err(format!("untyped sample of a declared family: {line}"));
                }
                if let Some(prev) = current.replace(name.to_owned()) {
                    closed.insert(prev);
                }
                typed.push(name.to_owned());
            }
        }
    }
    Ok(typed)
}
