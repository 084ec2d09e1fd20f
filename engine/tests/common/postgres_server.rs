//! A throwaway PostgreSQL server for tests: `initdb` in a temporary
//! directory and `postgres` on a free loopback port, trust authentication,
//! superuser `postgres`; stopped (fast shutdown) and removed on drop.
//!
//! PostgreSQL refuses to run as root, and CI runs the tests as root: then
//! the data directory is given to the `postgres` system user (created by
//! Debian's `postgresql` package) and `initdb`/`postgres` run under
//! `setpriv --reuid=postgres --regid=postgres --init-groups`, which execs
//! the program directly (no PAM, no password, no terminal), so the child's
//! pid is postgres's own and can be signalled. As another user they run
//! directly. Binaries: `/usr/lib/postgresql/*/bin/` (not on PATH).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, skip_or_fail};

pub struct PostgresServer {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `/usr/lib/postgresql/<newest>/bin`, if installed.
fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

impl PostgresServer {
    /// Starts one, or `None` when PostgreSQL is missing outside CI.
    pub fn start() -> Option<PostgresServer> {
        let Some(bin) = bin_dir() else {
            skip_or_fail("PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "ringcast-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success(), "chown postgres {dir:?}");
        }
        let mut pg = PostgresServer {
            port: free_port(),
            dir,
            bin,
            child: None,
        };
        let out = pg
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(pg.dir.join("data"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.spawn();
        Some(pg)
    }

    /// `program` from the PostgreSQL bin directory, as the `postgres`
    /// user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn spawn(&mut self) {
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ready() {
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ready(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Command::new("psql")
                .args(self.psql_args("postgres"))
                .args(["-c", "SELECT 1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    fn psql_args(&self, user: &str) -> Vec<String> {
        [
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            user,
            "-d",
            "postgres",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The connection string ringcast uses.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Runs `sql` with `psql` as `user`; panics with psql's error.
    pub fn psql(&self, user: &str, sql: &str) {
        let out = Command::new("psql")
            .args(self.psql_args(user))
            .args(["-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs the SQL file at `path` with `psql -f` as `user`.
    pub fn psql_file(&self, user: &str, path: &std::path::Path) {
        let out = Command::new("psql")
            .args(self.psql_args(user))
            .arg("-f")
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql -f {path:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Fast shutdown (SIGINT), waiting for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Stops and starts it again (same data, same port).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
