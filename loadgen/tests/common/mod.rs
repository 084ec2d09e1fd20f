//! Starts the real engine for the loadgen's integration tests.
//!
//! The engine binary is the one Cargo built beside this test binary (same
//! target directory and profile: `cargo test --workspace` builds it, as
//! does `scripts/setup.sh`); it is started as `ringcast serve --shards 2
//! --ws-listen … --backend-listen …` on free loopback ports. A missing
//! binary fails the test with the command that builds it.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The engine binary of this build: `<target dir>/<profile>/ringcast`,
/// found from this test binary's own path (`<target
/// dir>/<profile>/deps/<test>`), so `CARGO_TARGET_DIR` and the profile are
/// honoured without naming either.
pub fn engine_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary under <target>/<profile>/deps");
    let bin = profile_dir.join(format!("ringcast{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: build the engine first (`cargo build -p ringcast`, or run \
         `cargo test --workspace`, which builds it)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind :0")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running engine, killed on drop.
pub struct Engine {
    child: Child,
    pub ws: String,
    pub backend: String,
}

impl Engine {
    pub fn start(extra: &[&str]) -> Engine {
        let ws = format!("127.0.0.1:{}", free_port());
        let backend = format!("127.0.0.1:{}", free_port());
        let child = Command::new(engine_binary())
            .args([
                "serve",
                "--shards",
                "2",
                "--ws-listen",
                &ws,
                "--backend-listen",
                &backend,
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting ringcast serve");
        let mut e = Engine { child, ws, backend };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(&e.ws).is_ok() && TcpStream::connect(&e.backend).is_ok() {
                return e;
            }
            if let Ok(Some(status)) = e.child.try_wait() {
                panic!("ringcast serve exited with {status} before listening");
            }
            assert!(
                Instant::now() < deadline,
                "ringcast serve did not listen on {} and {} within 20 s",
                e.ws,
                e.backend
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the loadgen with `args` and returns its output.
pub fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringcast-loadgen"))
        .args(args)
        .output()
        .expect("running ringcast-loadgen")
}

/// Runs the loadgen against `engine`, writing the JSON report, and returns
/// (exit code, report).
pub fn loadgen_report(engine: &Engine, args: &[&str]) -> (i32, serde_json::Value, String) {
    let dir = std::env::temp_dir().join(format!("lg-test-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("report.json");
    let mut all: Vec<&str> = args.to_vec();
    let json_s = json.to_string_lossy().to_string();
    let pid = engine.pid().to_string();
    all.extend_from_slice(&[
        "--server",
        &engine.ws,
        "--backend",
        &engine.backend,
        "--json",
        &json_s,
        "--server-pid",
        &pid,
    ]);
    let out = loadgen(&all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| panic!("no JSON report; output:\n{text}"));
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.code().unwrap_or(-1), report, text)
}
