//! A publication allocates the same whatever the number of its subscribers
//! and however they split over protocols: every wire form is built once per
//! publication and shared, nothing is built per subscriber.
//!
//! The engine runs in this process under a counting global allocator; the
//! clients are raw sockets that read into fixed buffers, so they allocate
//! nothing while a publication is measured. Both ends of every connection
//! live in this process (two descriptors each), which keeps the largest
//! room at 4,000 subscribers under the 20,000 open-file limit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use ringcast::ops::alloc_count::ALLOCATIONS;
use ringcast::ops::config::Config;
use ringcast::runtime::sys::CountingAlloc;

#[global_allocator]
static GLOBAL: CountingAlloc<std::alloc::System> = CountingAlloc(std::alloc::System);

/// A subscribed client that reads into a fixed buffer.
struct Client(TcpStream);

impl Client {
    fn subscribe(ws: SocketAddr, path: &str, channel: &str) -> Client {
        let mut s = TcpStream::connect(ws).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let head = read_until(&mut s, b"\r\n\r\n");
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{{"channel":"{channel}"}}}}"#
        );
        s.write_all(&masked_text(call.as_bytes())).unwrap();
        let mut c = Client(s);
        let reply = c.frame();
        assert!(
            reply.contains("subscribed") || reply.contains("\"result\""),
            "{reply}"
        );
        c
    }

    /// One server frame's payload (< 126 bytes of header room assumed).
    fn frame(&mut self) -> String {
        let mut head = [0u8; 2];
        self.0.read_exact(&mut head).unwrap();
        let len = match head[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                self.0.read_exact(&mut l).unwrap();
                u16::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut buf = [0u8; 512];
        self.0.read_exact(&mut buf[..len]).unwrap();
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }

    /// Reads and discards one frame without allocating.
    fn skip_frame(&mut self) {
        let mut head = [0u8; 2];
        self.0.read_exact(&mut head).unwrap();
        let mut buf = [0u8; 125];
        let len = (head[1] & 0x7f) as usize;
        assert!(len < 126);
        self.0.read_exact(&mut buf[..len]).unwrap();
    }
}

fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(end) {
        s.read_exact(&mut b).unwrap();
        out.push(b[0]);
    }
    out
}

/// Emits on `channel` through the backend port, allocating nothing here.
fn emit(backend: SocketAddr, request: &[u8]) {
    let mut s = TcpStream::connect(backend).unwrap();
    s.write_all(request).unwrap();
    let mut buf = [0u8; 1024];
    let mut got = 0;
    // Connection: close, so the answer ends at end of stream.
    loop {
        let n = s.read(&mut buf[got..]).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..got])
    );
}

fn emit_request(channel: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"emit","params":{{"channel":"{channel}","data":{{"n":1}}}}}}"#
    );
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Allocations made by the whole process for one publication to
/// `clients` (the fewest over three publications, so that a once-a-second
/// timer allocation elsewhere cannot inflate it).
fn allocations_per_publication(backend: SocketAddr, channel: &str, clients: &mut [Client]) -> u64 {
    let request = emit_request(channel);
    // Warm up: the first publication may grow queues and history.
    emit(backend, &request);
    clients.iter_mut().for_each(Client::skip_frame);
    let mut fewest = u64::MAX;
    for _ in 0..3 {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        emit(backend, &request);
        clients.iter_mut().for_each(Client::skip_frame);
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        fewest = fewest.min(after - before);
    }
    fewest
}

fn room(ws: SocketAddr, channel: &str, native: usize, rocketws: usize) -> Vec<Client> {
    let mut v: Vec<Client> = (0..native)
        .map(|_| Client::subscribe(ws, "/", channel))
        .collect();
    v.extend((0..rocketws).map(|_| Client::subscribe(ws, "/?dialect=rocketws", channel)));
    v
}

#[test]
fn a_publication_allocates_the_same_for_any_number_and_mix_of_subscribers() {
    let mut config = Config {
        shards: 1,
        ..Config::default()
    };
    config.ws.listen = "127.0.0.1:0".parse().unwrap();
    config.backend.listen = "127.0.0.1:0".parse().unwrap();
    let node = ringcast::runtime::run(config).expect("start the engine");
    let (ws, backend) = (node.ws_addr, node.backend_addr);

    let mut counts = Vec::new();
    for (channel, native, rocketws) in [
        // Names of one length: the request's size must not differ.
        ("native-1000-0", 1000, 0),
        ("native-4000-0", 4000, 0),
        ("split-1000-1k", 1000, 1000),
        ("rocket-0-2000", 0, 2000),
        ("split-2000-2k", 2000, 2000),
    ] {
        let mut clients = room(ws, channel, native, rocketws);
        let n = allocations_per_publication(backend, channel, &mut clients);
        eprintln!("{channel}: {n} allocations per publication");
        counts.push((channel, n));
        drop(clients);
    }
    let get = |name| counts.iter().find(|(c, _)| *c == name).unwrap().1;
    // Nothing per subscriber: the count does not grow with the room.
    assert_eq!(get("native-1000-0"), get("native-4000-0"), "{counts:?}");
    assert_eq!(get("split-1000-1k"), get("split-2000-2k"), "{counts:?}");
    // Two protocols cost what one non-native protocol costs: each form once.
    assert_eq!(get("rocket-0-2000"), get("split-2000-2k"), "{counts:?}");
    // And a handful in all (the backend request, the publication, its forms).
    assert!(get("split-2000-2k") < 64, "{counts:?}");
    node.shutdown();
    assert!(node.join(Duration::from_secs(15)));
}
