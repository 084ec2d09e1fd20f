//! Memory returns to the system after abusive clients leave: the shards
//! ask the allocator (mimalloc) to give back free pages every few seconds,
//! since it purges only when called and an idle shard would keep it all.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const CLIENTS: usize = 50;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A masked text frame of 100 invalid calls (`[1,1,...]`).
fn error_batch() -> Vec<u8> {
    let payload = format!("[{}]", vec!["1"; 100].join(","));
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | 126];
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&mask);
    f.extend(payload.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[test]
fn rss_comes_back_after_flooding_clients_close() {
    // Policy drop keeps every flooding client connected with its budget
    // full of unread replies, so the server's heap grows by megabytes each.
    let server = Server::start(&["--slow-consumer", "drop"]);
    let before = rss_kib(server.pid());
    let chunk = error_batch().repeat(300);
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| deaf_client(&server)).collect();
    for c in &mut clients {
        c.set_nonblocking(true).unwrap();
    }
    // Send until the server stops reading every one of them.
    for _ in 0..400 {
        let mut progress = 0;
        for c in &mut clients {
            if let Ok(n) = c.write(&chunk) {
                progress += n;
            }
        }
        if progress == 0 {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let peak = rss_kib(server.pid());
    assert!(
        peak > before + 32 * 1024,
        "the flood should cost memory: {before} -> {peak} KiB"
    );
    drop(clients);

    // Wait (at most 30 s) for RSS to come back within 16 MiB of the start.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = rss_kib(server.pid());
    while now > before + 16 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        now = rss_kib(server.pid());
    }
    eprintln!("RSS {before} KiB -> {peak} KiB flooded -> {now} KiB after close");
    assert!(
        now <= before + 16 * 1024,
        "RSS {before} -> {peak} -> {now} KiB"
    );
}
