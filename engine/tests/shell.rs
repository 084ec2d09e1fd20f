//! `ringcast shell` against a real engine: driven through a pipe and through
//! a pseudo-terminal, it emits publications a WebSocket subscriber receives,
//! and it reports a stopped server and a missing token clearly.
//!
//! Each test starts the `ringcast` binary on free ports
//! (`serve --shards 2 --ws-listen … --backend-listen …`).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const BIN: &str = env!("CARGO_BIN_EXE_ringcast");
const TMP: &str = env!("CARGO_TARGET_TMPDIR");
const DEADLINE: Duration = Duration::from_secs(15);

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory of this test under the target's tmp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(TMP).join(format!("shell-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running engine, killed on drop.
struct Engine {
    child: Child,
    ws_port: u16,
    backend_port: u16,
    log: PathBuf,
}

impl Engine {
    fn start(name: &str, extra: &[&str]) -> Engine {
        let ws_port = free_port();
        let backend_port = free_port();
        let log = scratch(name).join("engine.log");
        let child = Command::new(BIN)
            .args(["serve", "--shards", "2"])
            .args(["--ws-listen", &format!("127.0.0.1:{ws_port}")])
            .args(["--backend-listen", &format!("127.0.0.1:{backend_port}")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("start ringcast serve");
        let mut engine = Engine {
            child,
            ws_port,
            backend_port,
            log,
        };
        engine.wait_ready();
        engine
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            let up = |port| TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up(self.ws_port) && up(self.backend_port) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ringcast serve exited with {status}:\n{}", self.log_text());
            }
            if start.elapsed() > DEADLINE {
                panic!(
                    "ringcast serve not listening after {DEADLINE:?}:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.backend_port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A WebSocket client subscribed to `channel`.
    fn subscribe(&self, channel: &str) -> Ws {
        let (mut ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{}/", self.ws_port))
            .expect("WebSocket connect");
        if let MaybeTlsStream::Plain(stream) = ws.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
        }
        let request = json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": channel}});
        ws.send(Message::text(request.to_string())).unwrap();
        let reply = next_json(&mut ws, |v| v["id"] == 1);
        assert_eq!(
            reply["result"]["channel"], channel,
            "subscribe reply: {reply}"
        );
        ws
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads frames until a JSON text frame matches `want`; panics after the
/// deadline.
fn next_json(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < DEADLINE {
        match common::read_message(ws) {
            Ok(Message::Text(text)) => {
                let value: Value = serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text.as_str()));
                if want(&value) {
                    return value;
                }
                seen.push(value);
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("WebSocket read: {e} (seen so far: {seen:?})"),
        }
    }
    panic!("no matching frame within {DEADLINE:?}; seen: {seen:?}");
}

/// Waits for the publication of `data` on `channel` and checks its envelope.
fn expect_message(ws: &mut Ws, channel: &str, data: &Value) -> Value {
    let frame = next_json(ws, |v| {
        v["method"] == "message" && v["params"]["data"] == *data
    });
    assert_eq!(frame["jsonrpc"], "2.0", "{frame}");
    assert_eq!(frame["params"]["channel"], channel, "{frame}");
    assert!(frame["params"]["offset"].is_u64(), "{frame}");
    assert!(frame["params"]["id"].is_u64(), "{frame}");
    assert!(
        frame.get("id").is_none(),
        "a notification has no id: {frame}"
    );
    frame
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `ringcast shell ARGS` with `input` on a pipe as stdin.
/// `ringcast shell ARGS` on pipes: the child, its stdin, and its stdout and
/// stderr as they arrive.
type Output = Arc<Mutex<Vec<u8>>>;
fn spawn_shell(args: &[&str]) -> (Child, ChildStdin, Output, Output) {
    let mut child = Command::new(BIN)
        .arg("shell")
        .args(args)
        .env("HOME", scratch("home"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringcast shell");
    let stdin = child.stdin.take().unwrap();
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    (child, stdin, stdout, stderr)
}

fn shell_piped(args: &[&str], input: &str) -> Finished {
    let (mut child, mut stdin, stdout, stderr) = spawn_shell(args);
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let status = wait_deadline(&mut child);
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    Finished {
        status,
        stdout: text(&stdout),
        stderr: text(&stderr),
    }
}

/// Reads `from` to the end on a thread, into the returned buffer.
fn drain(mut from: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn wait_deadline(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            // Let the drain threads see EOF.
            thread::sleep(Duration::from_millis(50));
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("ringcast shell still running after {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_text(buf: &Arc<Mutex<Vec<u8>>>, needle: &str) {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if String::from_utf8_lossy(&buf.lock().unwrap()).contains(needle) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{needle:?} not seen within {DEADLINE:?}; output: {:?}",
        String::from_utf8_lossy(&buf.lock().unwrap())
    );
}

/// Quotes `s` for `sh -c`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]

fn piped_commands_reach_a_subscriber() {
    let engine = Engine::start("pipe", &[]);
    let mut ws = engine.subscribe("news");
    let run = shell_piped(
        &["--url", &engine.url()],
        "ping\n\
         emit news {\"hello\": \"pipe\", \"n\": [1, 2]}\n\
         total_subscribers news\n\
         available_channels\n\
         notify_all {\"all\": true}\n\
         info\n",
    );
    assert!(
        run.status.success(),
        "{:?}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    assert!(run.stderr.is_empty(), "stderr: {}", run.stderr);
    assert!(
        !run.stdout.contains("ringcast> "),
        "no prompt on a pipe: {}",
        run.stdout
    );
    assert!(run.stdout.contains("\"ping\": \"ok\""), "{}", run.stdout);
    assert!(run.stdout.contains("\"offset\": 1"), "{}", run.stdout);
    assert!(run.stdout.contains("\"total\": 1"), "{}", run.stdout);
    assert!(
        run.stdout.contains("\"channel\": \"news\""),
        "{}",
        run.stdout
    );

    let frame = expect_message(&mut ws, "news", &json!({"hello": "pipe", "n": [1, 2]}));
    assert_eq!(frame["params"]["offset"], 1);
    let broadcast = next_json(&mut ws, |v| v["method"] == "broadcast");
    assert_eq!(
        broadcast["params"]["data"],
        json!({"all": true}),
        "{broadcast}"
    );
}

#[test]

fn invalid_json_sends_nothing_and_fails_the_script() {
    let engine = Engine::start("badjson", &[]);
    let mut ws = engine.subscribe("news");
    let run = shell_piped(
        &["--url", &engine.url()],
        "emit news {\"unterminated\": \n\
         frobnicate\n\
         emit news {\"after\": \"bad\"}\n",
    );
    assert_eq!(run.status.code(), Some(1), "stderr: {}", run.stderr);
    let errors: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("error: invalid JSON for data: "),
        "{errors:?}"
    );
    assert_eq!(
        errors[1],
        "error: unknown command \"frobnicate\" (try help)"
    );
    // The bad line published nothing: the good one is the channel's first.
    let frame = expect_message(&mut ws, "news", &json!({"after": "bad"}));
    assert_eq!(frame["params"]["offset"], 1, "{frame}");
}

/// The shell at a real terminal: `pty` runs `command` in a pseudo-terminal,
/// types `line` at the prompt and calls the check; then the line must be in
/// the history file.
fn terminal_session_reaches_a_subscriber(name: &str, pty: fn(&str, &str, &mut dyn FnMut())) {
    let engine = Engine::start(name, &[]);
    let mut ws = engine.subscribe("news");
    let home = scratch(&format!("{name}-home"));
    let command = format!(
        "env HOME={} TERM=xterm {} shell --url {}",
        sh_quote(home.to_str().unwrap()),
        sh_quote(BIN),
        engine.url()
    );
    let data = json!({"via": name});
    let line = format!("emit news {data}");
    pty(&command, &line, &mut || {
        expect_message(&mut ws, "news", &data);
    });
    let history = std::fs::read_to_string(home.join(".ringcast_history")).unwrap_or_default();
    assert!(history.contains(&line), "history file: {history:?}");
}

/// Through util-linux `script` (scripts/setup.sh installs it; missing, the
/// test skips, and fails under CI=true).
#[test]
fn terminal_session_under_script_reaches_a_subscriber() {
    if !common::require_tool("script", "--version", "util-linux") {
        return;
    }
    terminal_session_reaches_a_subscriber("pty-script", |c, l, check| pty_with_script(c, l, check));
}

/// Through a detached tmux session (scripts/setup.sh installs tmux;
/// missing, the test skips, and fails under CI=true).
#[test]
fn terminal_session_under_tmux_reaches_a_subscriber() {
    if !common::require_tool("tmux", "-V", "tmux") {
        return;
    }
    terminal_session_reaches_a_subscriber("pty-tmux", |c, l, check| pty_with_tmux(c, l, check));
}

/// Runs `command` under `script` (a pty), types `line` at the prompt, calls
/// `check`, then exits the shell.
fn pty_with_script(command: &str, line: &str, check: &mut dyn FnMut()) {
    let mut child = Command::new("script")
        .args(["-qfec", command, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start script");
    let mut stdin: ChildStdin = child.stdin.take().unwrap();
    let output = drain(child.stdout.take().unwrap());
    let _stderr = drain(child.stderr.take().unwrap());

    wait_for_text(&output, "ringcast> ");
    stdin.write_all(format!("{line}\r").as_bytes()).unwrap();
    stdin.flush().unwrap();
    check();
    wait_for_text(&output, "\"offset\"");
    stdin.write_all(b"exit\r").unwrap();
    stdin.flush().unwrap();
    let status = wait_deadline(&mut child);
    drop(stdin);
    let text = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    assert!(status.success(), "{status:?}; terminal output: {text:?}");
    assert!(
        text.contains("ringcast shell"),
        "banner on a terminal: {text:?}"
    );
    assert!(!text.contains("error:"), "{text:?}");
}

/// Same through a detached tmux session on a private server socket.
fn pty_with_tmux(command: &str, line: &str, check: &mut dyn FnMut()) {
    let socket = format!("ringcast-shell-test-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .expect("run tmux")
    };
    let pane = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "shell"]).stdout).into_owned()
    };
    let wait_pane = |needle: &str| {
        let start = Instant::now();
        while !pane().contains(needle) {
            assert!(
                start.elapsed() < DEADLINE,
                "{needle:?} not on the pane: {}",
                pane()
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    // Not `output()`: the tmux server it forks would keep the pipes open.
    let started = Command::new("tmux")
        .args(["-L", &socket, "new-session", "-d", "-s", "shell"])
        .args(["-x", "200", "-y", "50", command])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run tmux");
    assert!(started.success(), "tmux new-session: {started:?}");
    let _server = TmuxServer(socket.clone());
    // capture-pane drops the prompt's trailing space.
    wait_pane("ringcast>");
    tmux(&["send-keys", "-t", "shell", "-l", line]);
    tmux(&["send-keys", "-t", "shell", "Enter"]);
    check();
    wait_pane("\"offset\"");
    let text = pane();
    tmux(&["send-keys", "-t", "shell", "-l", "exit"]);
    tmux(&["send-keys", "-t", "shell", "Enter"]);
    let start = Instant::now();
    while tmux(&["has-session", "-t", "shell"]).status.success() {
        assert!(start.elapsed() < DEADLINE, "shell did not exit: {}", pane());
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!text.contains("error:"), "{text}");
}

/// Kills the private tmux server when the test ends, even on a panic.
struct TmuxServer(String);

impl Drop for TmuxServer {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]

fn stopped_server_is_reported() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let run = shell_piped(&["--url", &url], "ping\n");
    assert!(!run.status.success(), "{:?}", run.status);
    assert_eq!(
        run.stderr.trim_end(),
        format!(
            "error: cannot reach ringcast at {url} (connection refused) — is it running? (ringcast serve)"
        )
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[test]

fn token_is_required_when_the_server_has_one() {
    let config = scratch("token").join("ringcast.toml");
    std::fs::write(&config, "[backend]\napi_token = \"s3cret\"\n").unwrap();
    let engine = Engine::start("token", &["--config", config.to_str().unwrap()]);
    let mut ws = engine.subscribe("news");

    let run = shell_piped(&["--url", &engine.url()], "emit news {\"no\": \"token\"}\n");
    assert!(!run.status.success());
    assert_eq!(
        run.stderr.trim_end(),
        "error: unauthorized: the server needs --token (or the token is wrong)"
    );
    let run = shell_piped(&["--url", &engine.url(), "--token", "wrong"], "ping\n");
    assert!(run.stderr.contains("error: unauthorized"), "{}", run.stderr);

    let run = shell_piped(
        &["--url", &engine.url(), "--token", "s3cret"],
        "emit news {\"with\": \"token\"}\n",
    );
    assert!(run.status.success(), "stderr: {}", run.stderr);
    let frame = expect_message(&mut ws, "news", &json!({"with": "token"}));
    assert_eq!(
        frame["params"]["offset"], 1,
        "the unauthorized emit published nothing"
    );
}

impl Engine {
    /// `ringcast_backend_idle_closed_total`: backend connections the engine
    /// closed after `backend.idle_timeout` without input (read on a
    /// connection of its own, closed by the engine after the answer).
    fn idle_closed(&self) -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.backend_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("ringcast_backend_idle_closed_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no idle-closed counter in /metrics:\n{text}"))
    }
}

/// One scripted session against the real engine: its commands share one
/// keep-alive connection (the engine closes it once, after its idle
/// timeout), the next command after that close reconnects, `exit` ends the
/// script before the lines after it, and the bad JSON line made the script
/// fail without sending anything.
#[test]
fn a_session_keeps_one_connection_and_reconnects_after_the_server_closed_it() {
    let config = scratch("keepalive").join("ringcast.toml");
    std::fs::write(&config, "[backend]\nidle_timeout = 1\n").unwrap();
    let engine = Engine::start("keepalive", &["--config", config.to_str().unwrap()]);
    let mut ws = engine.subscribe("news");
    let (mut child, mut stdin, stdout, stderr) = spawn_shell(&["--url", &engine.url()]);

    stdin
        .write_all(b"ping\ninfo\nemit news {\"n\": 1}\n")
        .unwrap();
    expect_message(&mut ws, "news", &json!({"n": 1}));
    wait_for_text(&stdout, "\"ping\": \"ok\"");
    // Three commands, one connection: the engine idle-closes exactly one,
    // and no other after another idle timeout.
    let start = Instant::now();
    while engine.idle_closed() == 0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the shell's connection never went idle"
        );
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        engine.idle_closed(),
        1,
        "the three commands used one connection"
    );

    // The pooled connection is closed: the next command reconnects.
    stdin.write_all(b"emit news {\"n\": 2}\n").unwrap();
    let frame = expect_message(&mut ws, "news", &json!({"n": 2}));
    assert_eq!(frame["params"]["offset"], 2, "{frame}");

    stdin
        .write_all(b"emit news {bad\nexit\nemit news {\"n\": 3}\n")
        .unwrap();
    drop(stdin);
    let status = wait_deadline(&mut child);
    let err = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
    assert_eq!(
        status.code(),
        Some(1),
        "a failed line fails the script: {err}"
    );
    let errors: Vec<&str> = err.lines().collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("error: invalid JSON for data: "),
        "{errors:?}"
    );
    // Nothing after `exit` was sent: the next publication is offset 3.
    let probe = shell_piped(&["--url", &engine.url()], "emit news {\"n\": 4}\n");
    assert!(probe.status.success(), "{}", probe.stderr);
    let frame = next_json(&mut ws, |v| v["method"] == "message");
    assert_eq!(frame["params"]["data"], json!({"n": 4}), "{frame}");
    assert_eq!(frame["params"]["offset"], 3, "{frame}");
}
