//! A throwaway Redis Cluster for tests: `masters` masters with
//! `replicas` replicas each, every node a `redis-server
//! --cluster-enabled yes` on free loopback ports (client and cluster-bus
//! ports both chosen, so none falls past 65535), joined by `redis-cli
//! --cluster create`. No persistence; node files in a temporary
//! directory removed on drop, with every node killed.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, require_tool};

pub struct RedisCluster {
    pub ports: Vec<u16>,
    bus_ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts one, or `None` when the tools are missing outside CI.
    pub fn start(masters: usize, replicas: usize) -> Option<RedisCluster> {
        if !require_tool("redis-server", "--version", "redis-server")
            || !require_tool("redis-cli", "--version", "redis-tools")
        {
            return None;
        }
        let n = masters * (1 + replicas);
        let dir = std::env::temp_dir().join(format!(
            "ringcast-redis-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = RedisCluster {
            ports: Vec::new(),
            bus_ports: Vec::new(),
            children: Vec::new(),
            dir,
        };
        for _ in 0..n {
            let port = free_port();
            c.ports.push(port);
            c.bus_ports.push(free_port());
            c.children.push(None);
            c.spawn(c.ports.len() - 1);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for &p in &c.ports {
            while TcpStream::connect(("127.0.0.1", p)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for p in &c.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for &p in &c.ports.clone() {
            c.wait_info(p, "cluster_state:ok");
        }
        // Every master's replicas in sync, so `WAIT` can be met at once.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let synced = c
                .ports
                .iter()
                .map(|&p| c.cli(p, &["info", "replication"]))
                .filter(|i| i.contains("role:master"))
                .filter(|i| i.matches("state=online").count() == replicas)
                .count();
            if synced == masters {
                break;
            }
            assert!(Instant::now() < deadline, "replicas never came online");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(c)
    }

    /// Starts node `i` (again: its node file keeps its place in the
    /// cluster, so a killed master comes back as its successor's replica).
    fn spawn(&mut self, i: usize) {
        let port = self.ports[i];
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--cluster-port", &self.bus_ports[i].to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", "1000"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.children[i] = Some(child);
    }

    /// Starts the killed node on `port` again and waits until it serves.
    pub fn restart(&mut self, port: u16) {
        let i = self.ports.iter().position(|&p| p == port).unwrap();
        self.spawn(i);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis+cluster://` URL naming the first three nodes.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .take(3)
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// One `redis-cli` command against node `port`: its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `CLUSTER INFO` on `port` contains `want`.
    pub fn wait_info(&self, port: u16, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info = self.cli(port, &["cluster", "info"]);
            if info.contains(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster never had {want:?}: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port of the master serving `key`'s slot, asked of a live node.
    pub fn master_of(&self, key: &str) -> u16 {
        match self.serving_master(key) {
            Some(p) => p,
            None => panic!("no master serves {key:?}"),
        }
    }

    /// [`master_of`](Self::master_of), `None` while no master serves it
    /// (during a failover).
    pub fn serving_master(&self, key: &str) -> Option<u16> {
        let live = self.live_port();
        let slot: u16 = self
            .cli(live, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap();
        for line in self.cli(live, &["cluster", "nodes"]).lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                    if (a..=b).contains(&slot) {
                        let addr = f[1].split('@').next().unwrap();
                        return addr.rsplit(':').next()?.parse().ok();
                    }
                }
            }
        }
        None
    }

    fn live_port(&self) -> u16 {
        self.ports
            .iter()
            .zip(&self.children)
            .find(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .unwrap()
    }

    /// Kills the node on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|&p| p == port).unwrap();
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
