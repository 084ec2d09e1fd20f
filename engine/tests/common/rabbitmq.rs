//! A throwaway RabbitMQ broker for tests, as any user (no root, no system
//! service): `/usr/lib/rabbitmq/bin/rabbitmq-server` (the Debian
//! package's real script; `/usr/sbin/rabbitmq-server` would `su` to the
//! `rabbitmq` user) with everything it writes or listens on moved to a
//! temporary directory and free ports:
//!
//! - `RABBITMQ_NODE_PORT` (AMQP), `RABBITMQ_DIST_PORT` (Erlang
//!   distribution), `ERL_EPMD_PORT` (its own epmd, so the system's epmd
//!   and any other broker are left alone), `RABBITMQ_NODE_IP_ADDRESS`
//!   127.0.0.1;
//! - `RABBITMQ_NODENAME` `rc<port>@localhost`, `RABBITMQ_MNESIA_BASE`
//!   (data, kept across [`RabbitMq::restart`] so durable queues survive),
//!   `RABBITMQ_LOG_BASE`, `RABBITMQ_PID_FILE`, the config, advanced config,
//!   env and enabled-plugins files (empty: no plugins), the plugins
//!   expand dir;
//! - `HOME` with its own `.erlang.cookie` (mode 0400).
//!
//! It runs in a process group of its own; stopping it kills that group
//! (the shell script, beam.smp and its port programs) and then the epmd
//! it started (`epmd -kill` on its port, retried until the dead node is
//! unregistered), and removes the directory on
//! drop. Startup takes a few seconds: [`RabbitMq::start`] waits until
//! the port accepts AMQP connections (an AMQP protocol header is
//! answered).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, skip_or_fail};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

pub struct RabbitMq {
    pub port: u16,
    dist_port: u16,
    epmd_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RabbitMq {
    /// Starts one, or `None` when RabbitMQ is not installed outside CI
    /// (under `CI=true` a missing tool fails the test).
    pub fn start() -> Option<RabbitMq> {
        if !std::path::Path::new(SERVER).exists() {
            skip_or_fail("RabbitMQ is not installed (apt-get install rabbitmq-server)");
            return None;
        }
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("ringcast-rabbitmq-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("home")).unwrap();
        let cookie = dir.join("home/.erlang.cookie");
        std::fs::write(&cookie, format!("RINGCASTTEST{port}")).unwrap();
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let mut r = RabbitMq {
            port,
            dist_port: free_port(),
            epmd_port: free_port(),
            dir,
            child: None,
        };
        r.spawn();
        Some(r)
    }

    fn spawn(&mut self) {
        let d = |name: &str| self.dir.join(name);
        let child = Command::new(SERVER)
            .current_dir(&self.dir)
            .env("HOME", d("home"))
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODENAME", format!("rc{}@localhost", self.port))
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_PID_FILE", d("pid"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", d("plugins-expand"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start rabbitmq-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.speaks_amqp() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "rabbitmq-server exited ({status}); logs in {}",
                        d("log").display()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "rabbitmq-server did not start; logs in {}",
                d("log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the port answers an AMQP 0-9-1 protocol header with a
    /// `connection.start` method frame (type 1).
    fn speaks_amqp(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(1) if b[0] == 1)
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (guest may log in from
    /// loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Kills the broker's whole process group (SIGKILL: no clean
    /// shutdown) and its epmd, and waits until the port is closed.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stderr(Stdio::null())
                .status();
            let _ = c.wait();
        }
        // epmd refuses `-kill` while the dead node is still registered
        // (until it notices the closed connection): retry a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("epmd")
                .arg("-kill")
                .env("ERL_EPMD_PORT", self.epmd_port.to_string())
                .output();
            let gone = out.is_ok_and(|o| {
                let said = String::from_utf8_lossy(&o.stdout) + String::from_utf8_lossy(&o.stderr);
                said.contains("Killed") || said.contains("Cannot connect")
            });
            if gone || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it cleanly, SIGKILL after 30 s, then starts it again on the
    /// same ports with the same data (durable exchanges, queues and
    /// persistent messages survive). The SIGTERM goes to the start script
    /// only, which traps it and passes it to the Erlang VM, which shuts
    /// the broker down; the VM's helper processes (`erl_child_setup`,
    /// port programs) are left to the VM instead of being signalled too.
    pub fn restart(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
        self.spawn();
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
