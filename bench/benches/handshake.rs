//! The HTTP upgrade: parse a browser's request and build the 101 answer.
//!
//! Paid once per connection, so it bounds the connect rate (reconnect
//! storms after a deploy are where push servers fall over). Includes the
//! SHA-1 + base64 of `Sec-WebSocket-Accept` and the `Origin` check.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ringcast::protocol::handshake::parse_upgrade;

/// What a current desktop Chrome sends.
const BROWSER_REQUEST: &[u8] = b"GET /?dialect=native HTTP/1.1\r\n\
Host: push.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://app.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=8f2a6c1e9b7d4f03a5c2e1d0b9a8f7e6; theme=dark\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

/// What a minimal client (the load generator, a device) sends.
const MINIMAL_REQUEST: &[u8] = b"GET / HTTP/1.1\r\n\
Host: 127.0.0.1:58000\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\
\r\n";

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    let any: Vec<String> = Vec::new();
    let allowed = vec![
        "https://other.example.com".to_owned(),
        "https://app.example.com".to_owned(),
    ];
    g.bench_function("parse/browser", |b| {
        b.iter(|| {
            parse_upgrade(black_box(BROWSER_REQUEST), &any)
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("parse/browser_origin_check", |b| {
        b.iter(|| {
            parse_upgrade(black_box(BROWSER_REQUEST), &allowed)
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("parse/minimal", |b| {
        b.iter(|| {
            parse_upgrade(black_box(MINIMAL_REQUEST), &any)
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("parse/incomplete", |b| {
        let cut = &BROWSER_REQUEST[..BROWSER_REQUEST.len() - 3];
        b.iter(|| parse_upgrade(black_box(cut), &any).unwrap())
    });
    let upgrade = parse_upgrade(BROWSER_REQUEST, &any).unwrap().unwrap();
    g.bench_function("response_101", |b| {
        b.iter(|| black_box(&upgrade).response_101())
    });
    g.bench_function("parse_and_respond/browser", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            let up = parse_upgrade(black_box(BROWSER_REQUEST), &any)
                .unwrap()
                .unwrap();
            up.write_response_101(&mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, handshake);
criterion_main!(benches);
