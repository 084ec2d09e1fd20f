//! A minimal single-threaded fan-out server speaking the subset of ringcast's
//! protocol the loadgen uses (upgrade, `subscribe`, backend `emit`). It
//! exists only to measure the loadgen on its own while no engine is at hand:
//!
//! `cargo run --release -p ringcast-loadgen --example reference_server -- 127.0.0.1:58000 127.0.0.1:59999`
//!
//! It is not ringcast and makes no promise beyond "lossless, in order".

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use ringcast_loadgen::{frame, scan};
use slab::Slab;
use std::collections::HashMap;
use std::io::{self, Read, Write};

const WS: Token = Token(usize::MAX - 1);
const BACKEND: Token = Token(usize::MAX - 2);

struct Conn {
    sock: TcpStream,
    http: bool,
    upgraded: bool,
    inbuf: Vec<u8>,
    out: Vec<u8>,
}

#[derive(Default)]
struct Channel {
    offset: u64,
    subs: Vec<usize>,
}

fn field<'a>(hay: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let i = memchr::memmem::find(hay, key)?;
    Some(&hay[i + key.len()..])
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let ws_addr = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("127.0.0.1:58000")
        .parse()
        .expect("ws addr");
    let be_addr = args
        .get(2)
        .map(String::as_str)
        .unwrap_or("127.0.0.1:59999")
        .parse()
        .expect("backend addr");
    let mut poll = Poll::new()?;
    let mut ws = TcpListener::bind(ws_addr)?;
    let mut be = TcpListener::bind(be_addr)?;
    poll.registry().register(&mut ws, WS, Interest::READABLE)?;
    poll.registry()
        .register(&mut be, BACKEND, Interest::READABLE)?;
    let mut conns: Slab<Conn> = Slab::new();
    let mut channels: HashMap<Vec<u8>, Channel> = HashMap::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 * 1024];
    let mut dirty: Vec<usize> = Vec::new();
    let mut next_id: u64 = 1_700_000_000_000;
    eprintln!("reference server: ws {ws_addr}, backend {be_addr}");
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            match ev.token() {
                t @ (WS | BACKEND) => loop {
                    let l = if t == WS { &mut ws } else { &mut be };
                    match l.accept() {
                        Ok((mut sock, _)) => {
                            sock.set_nodelay(true)?;
                            let e = conns.vacant_entry();
                            poll.registry().register(
                                &mut sock,
                                Token(e.key()),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            e.insert(Conn {
                                sock,
                                http: t == BACKEND,
                                upgraded: false,
                                inbuf: Vec::new(),
                                out: Vec::new(),
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                },
                Token(k) => {
                    let mut closed = false;
                    if ev.is_readable() {
                        while let Some(c) = conns.get_mut(k) {
                            match c.sock.read(&mut buf) {
                                Ok(0) => {
                                    closed = true;
                                    break;
                                }
                                Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(_) => {
                                    closed = true;
                                    break;
                                }
                            }
                        }
                        if let Some(c) = conns.get(k) {
                            if c.http {
                                handle_http(k, &mut conns, &mut channels, &mut dirty, &mut next_id);
                            } else {
                                handle_ws(k, &mut conns, &mut channels);
                            }
                        }
                    }
                    if let Some(c) = conns.get_mut(k) {
                        if !c.out.is_empty() {
                            dirty.push(k);
                        }
                    }
                    if closed {
                        conns.try_remove(k);
                        for ch in channels.values_mut() {
                            ch.subs.retain(|&s| s != k);
                        }
                    }
                }
            }
        }
        dirty.sort_unstable();
        dirty.dedup();
        for k in dirty.drain(..) {
            let Some(c) = conns.get_mut(k) else { continue };
            while !c.out.is_empty() {
                match c.sock.write(&c.out) {
                    Ok(n) => {
                        c.out.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
    }
}

fn handle_ws(k: usize, conns: &mut Slab<Conn>, channels: &mut HashMap<Vec<u8>, Channel>) {
    let c = &mut conns[k];
    if !c.upgraded {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = req.parse(&c.inbuf) else {
            return;
        };
        let key = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
            .map(|h| h.value)
            .unwrap_or(b"");
        let accept = tungstenite::handshake::derive_accept_key(key);
        c.out.extend_from_slice(
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").as_bytes(),
        );
        c.inbuf.drain(..n);
        c.upgraded = true;
    }
    loop {
        let b = &c.inbuf;
        if b.len() < 6 {
            return;
        }
        let (len, hdr) = match b[1] & 0x7F {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => return,
            n => (n as usize, 2),
        };
        if b.len() < hdr + 4 + len {
            return;
        }
        let op = b[0] & 0x0F;
        let mask = [b[hdr], b[hdr + 1], b[hdr + 2], b[hdr + 3]];
        let mut payload = b[hdr + 4..hdr + 4 + len].to_vec();
        frame::apply_mask(&mut payload, mask, 0);
        c.inbuf.drain(..hdr + 4 + len);
        if op == frame::opcode::CLOSE {
            frame::encode_unmasked(&mut c.out, frame::opcode::CLOSE, &payload);
            continue;
        }
        if op != frame::opcode::TEXT {
            continue;
        }
        let id = field(&payload, b"\"id\":")
            .and_then(scan::parse_u64)
            .unwrap_or(0);
        let Some(rest) = field(&payload, b"\"channel\":\"") else {
            continue;
        };
        let name = rest[..memchr::memchr(b'"', rest).unwrap_or(0)].to_vec();
        let ch = channels.entry(name.clone()).or_default();
        ch.subs.push(k);
        let reply = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"channel\":\"{}\",\"offset\":{},\"epoch\":\"ref\"}}}}",
            String::from_utf8_lossy(&name),
            ch.offset
        );
        frame::encode_unmasked(&mut c.out, frame::opcode::TEXT, reply.as_bytes());
    }
}

fn handle_http(
    k: usize,
    conns: &mut Slab<Conn>,
    channels: &mut HashMap<Vec<u8>, Channel>,
    dirty: &mut Vec<usize>,
    next_id: &mut u64,
) {
    loop {
        let c = &mut conns[k];
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = req.parse(&c.inbuf) else {
            return;
        };
        let len = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        if c.inbuf.len() < n + len {
            return;
        }
        let body: Vec<u8> = c.inbuf[n..n + len].to_vec();
        c.inbuf.drain(..n + len);
        let id = field(&body, b"\"id\":")
            .and_then(scan::parse_u64)
            .unwrap_or(0);
        let name = field(&body, b"\"channel\":\"")
            .map(|r| r[..memchr::memchr(b'"', r).unwrap_or(0)].to_vec())
            .unwrap_or_default();
        let data = field(&body, b"\"data\":")
            .map(|d| &d[..d.len().saturating_sub(2)])
            .unwrap_or(b"null");
        let ch = channels.entry(name.clone()).or_default();
        ch.offset += 1;
        *next_id += 1;
        let msg = format!(
            "{{\"jsonrpc\":\"2.0\",\"method\":\"message\",\"params\":{{\"channel\":\"{}\",\"offset\":{},\"id\":{},\"data\":{}}}}}",
            String::from_utf8_lossy(&name),
            ch.offset,
            next_id,
            String::from_utf8_lossy(data)
        );
        let mut wire = Vec::with_capacity(msg.len() + 4);
        frame::encode_unmasked(&mut wire, frame::opcode::TEXT, msg.as_bytes());
        for &s in &ch.subs {
            if let Some(sc) = conns.get_mut(s) {
                sc.out.extend_from_slice(&wire);
                dirty.push(s);
            }
        }
        let resp_body = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"offset\":{},\"id\":{},\"subscribers\":{}}}}}",
            ch.offset,
            next_id,
            ch.subs.len()
        );
        let c = &mut conns[k];
        c.out.extend_from_slice(
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{resp_body}", resp_body.len()).as_bytes(),
        );
        dirty.push(k);
    }
}
