//! A shard's channel table at 10k and 100k subscriptions: subscribe +
//! unsubscribe, lookup, and the fan-out scan of one channel's subscribers.
//!
//! Subscribe/unsubscribe run on every (re)connect, so a reconnect storm is
//! a burst of them; lookup + scan run on every publication a shard
//! delivers, so the scan's per-subscriber cost is a floor under the cost of
//! a delivery.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use ringcast::pubsub::channel_table::ChannelTable;

/// `subs` subscriptions, ten per channel (`ch-0` … `ch-{subs/10 - 1}`).
fn spread(subs: u32) -> (ChannelTable, Vec<String>) {
    let names: Vec<String> = (0..subs / 10).map(|i| format!("ch-{i}")).collect();
    let mut t = ChannelTable::new();
    for conn in 0..subs {
        t.subscribe(&names[(conn % (subs / 10)) as usize], conn);
    }
    (t, names)
}

fn channel_table(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel_table");
    for subs in [10_000u32, 100_000] {
        let label = format!("{}k", subs / 1000);
        let (mut t, names) = spread(subs);

        // One more subscriber joins and leaves a channel that has others,
        // so the channel itself is not created and dropped.
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("subscribe_unsubscribe", &label), |b| {
            let mut i = 0usize;
            b.iter(|| {
                let name = &names[i % names.len()];
                i += 1;
                t.subscribe(black_box(name), subs + 1);
                t.unsubscribe(black_box(name), subs + 1)
            })
        });
        g.bench_function(BenchmarkId::new("lookup", &label), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 7919) % names.len();
                t.subscribers(black_box(&names[i])).map_or(0, |s| s.len())
            })
        });

        // Building the whole table, e.g. after a restart.
        g.throughput(Throughput::Elements(u64::from(subs)));
        g.sample_size(10);
        g.bench_function(BenchmarkId::new("build", &label), |b| {
            b.iter_batched(
                || (),
                |()| spread(subs).0.subscription_count(),
                BatchSize::PerIteration,
            )
        });
        g.sample_size(100);

        // One channel with every subscriber: a scan per publication.
        let mut hot = ChannelTable::new();
        for conn in 0..subs {
            hot.subscribe("hot", conn);
        }
        g.bench_function(BenchmarkId::new("fanout_scan", &label), |b| {
            b.iter(|| {
                let set = hot.subscribers(black_box("hot")).unwrap();
                set.iter()
                    .fold(0u64, |acc, &k| acc.wrapping_add(u64::from(k)))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, channel_table);
criterion_main!(benches);
