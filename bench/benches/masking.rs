//! Masking/unmasking at 16 B … 64 KiB and at every buffer alignment.
//!
//! Every client frame is masked (RFC 6455 §5.3) and the server unmasks it
//! in place before it can parse a byte of JSON. `apply_mask` works a word at
//! a time on the 8-byte-aligned middle and bytewise on the edges, so its
//! speed depends on where the payload starts: the alignment sweep shows
//! no alignment falls off a cliff. `bytewise` is the naive loop, for scale.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::protocol::codec::apply_mask;

const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
const SIZES: [usize; 7] = [16, 64, 256, 1024, 4096, 16 * 1024, 64 * 1024];

fn bytewise(buf: &mut [u8], mask: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// `apply_mask` for each size at each of the 8 alignments.
fn masking(c: &mut Criterion) {
    for size in SIZES {
        let mut g = c.benchmark_group(format!("apply_mask/{size}B"));
        g.throughput(Throughput::Bytes(size as u64));
        // Allocated with slack so that `&buf[align..]` moves the start
        // through every address modulo 8.
        let mut buf = vec![0xa5u8; size + 16];
        let base = buf.as_ptr() as usize % 8;
        for align in 0..8 {
            let start = (8 + align - base) % 8;
            g.bench_with_input(BenchmarkId::new("align", align), &start, |b, &start| {
                let slice = &mut buf[start..start + size];
                b.iter(|| apply_mask(black_box(&mut *slice), MASK, 0))
            });
        }
        let start = (8 - base) % 8;
        g.bench_function("bytewise/align0", |b| {
            let slice = &mut buf[start..start + size];
            b.iter(|| bytewise(black_box(&mut *slice), MASK))
        });
        g.finish();
    }
}

criterion_group!(benches, masking);
criterion_main!(benches);
