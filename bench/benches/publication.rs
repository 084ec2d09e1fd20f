//! Building one publication frame: notification JSON + WebSocket header,
//! once per publication however many subscribers it has.
//!
//! This is the only serialization on the fan-out path; everything after it
//! is a reference-count increment per subscriber. `home_shard_publish` adds
//! what the channel's home shard does around it (next offset, history ring).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::pubsub::home_shard::HomeShard;
use ringcast::pubsub::publication::Publication;
use ringcast_bench::payload::json_object;

fn publication(c: &mut Criterion) {
    let mut g = c.benchmark_group("publication");
    let channel: Arc<str> = Arc::from("chat");
    for size in [64usize, 512, 4096] {
        let data = Bytes::from(json_object(size));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("message_frame", size), &data, |b, data| {
            let mut offset = 0u64;
            b.iter(|| {
                offset += 1;
                let p = Publication::message(
                    channel.clone(),
                    offset,
                    1_732_240_000_000 + offset,
                    1_732_240_000,
                    data.clone(),
                );
                black_box(p.native.len())
            })
        });
        g.bench_with_input(
            BenchmarkId::new("home_shard_publish", size),
            &data,
            |b, data| {
                let mut home =
                    HomeShard::new(0, 1, 64, Duration::from_secs(300), 1_732_240_000_000);
                let now = Instant::now();
                let mut id = 1_732_240_000_000u64;
                b.iter(|| {
                    id += 1;
                    let published = home.publish("chat", now, |name, offset| {
                        Publication::message(name, offset, id, 1_732_240_000, data.clone())
                    });
                    black_box(published.publication.native.len())
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, publication);
criterion_main!(benches);
