//! Frame header encode/decode and the whole client-input path.
//!
//! Every byte a client sends and every frame a shard writes goes through
//! these functions, so their cost is paid per message per connection. The
//! header benches cover the three length encodings (7-bit, 16-bit, 64-bit);
//! `handle_input` covers what a shard does per read: decode, unmask,
//! validate UTF-8 and hand each complete message on.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcast::protocol::codec::{apply_mask, decode_header, encode_header, OpCode};
use ringcast::protocol::websocket::WsProtocol;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked client text frame carrying `payload`.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 10];
    let n = encode_header(true, OpCode::Text, payload.len(), &mut header);
    let mut out = header[..n].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&MASK);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], MASK, 0);
    out
}

fn headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("header");
    for (name, len) in [("7bit", 100usize), ("16bit", 4_000), ("64bit", 100_000)] {
        g.bench_function(format!("encode/{name}"), |b| {
            let mut out = [0u8; 10];
            b.iter(|| encode_header(true, OpCode::Text, black_box(len), &mut out))
        });
        let frame = client_frame(&vec![b'a'; len]);
        g.bench_function(format!("decode_masked/{name}"), |b| {
            b.iter(|| decode_header(black_box(&frame[..14.min(frame.len())])).unwrap())
        });
    }
    // A header cut short: the parser must say "incomplete" without work.
    g.bench_function("decode_incomplete", |b| {
        b.iter(|| decode_header(black_box(&[0x81, 0xfe, 0x01][..])).unwrap())
    });
    g.finish();
}

fn client_input(c: &mut Criterion) {
    let mut g = c.benchmark_group("handle_input");
    // 16 requests of each size in one read, as a busy client would send.
    for size in [64usize, 512, 4096] {
        let msg = "x".repeat(size);
        let mut input = Vec::new();
        for _ in 0..16 {
            input.extend_from_slice(&client_frame(msg.as_bytes()));
        }
        g.throughput(Throughput::Elements(16));
        g.bench_function(format!("16_text_frames/{size}B"), |b| {
            let mut ws = WsProtocol::new();
            let mut out = Vec::with_capacity(256);
            b.iter_batched_ref(
                || input.clone(),
                |buf| {
                    let mut seen = 0usize;
                    let progress = ws
                        .handle_input(buf, 1 << 20, &mut out, |_, m| seen += m.len(), |_| {})
                        .unwrap();
                    black_box((progress, seen))
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, headers, client_input);
criterion_main!(benches);
