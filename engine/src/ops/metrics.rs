//! Per-shard counters: plain `Cell`s owned by the shard, summed only when
//! scraped (`info`, `/metrics`). No shared atomics on the data path.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::fmt::Write;

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        /// Live counters of one shard.
        #[derive(Default)]
        pub struct ShardMetrics { $(pub $name: Cell<u64>,)* }

        /// A snapshot of one shard's counters, sendable across threads.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct MetricsSnapshot { $(pub $name: u64,)* }

        impl ShardMetrics {
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot { $($name: self.$name.get(),)* }
            }
        }

        impl MetricsSnapshot {
            /// (name, help, value) for every counter.
            pub fn fields(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $help, self.$name),)*]
            }

            pub fn add(&mut self, o: &MetricsSnapshot) {
                $(self.$name += o.$name;)*
            }
        }
    };
}

counters! {
    connections_accepted: "WebSocket connections accepted",
    handshakes_rejected: "WebSocket upgrade requests rejected",
    connections_refused: "WebSocket clients refused at capacity (503, or closed unanswered past the refusals in flight)",
    messages_in: "Client WebSocket messages received",
    publications: "Publications whose home is this shard",
    deliveries: "Frames queued to subscribers",
    dropped_deliveries: "Publications dropped for slow consumers (policy drop)",
    bytes_out: "Bytes written to WebSocket clients",
    slow_consumer_disconnects: "Connections closed as slow consumers",
    protocol_errors: "Connections closed for a WebSocket protocol error",
    backend_requests: "Backend HTTP requests served",
    backend_idle_closed: "Backend connections closed after backend.idle_timeout without input",
    polling_requests: "Engine.IO polling requests served on this shard",
    publishes_overloaded: "Publishes refused because a cross-shard mailbox was full (limits.mailbox_capacity)",
}

impl ShardMetrics {
    pub fn inc(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }
    pub fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get() + n);
    }
}

/// Gauges reported next to the counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub connections: u64,
    pub subscriptions: u64,
    pub channels: u64,
}

/// Renders Prometheus text format: every counter and gauge per shard and
/// in total.
pub fn render_prometheus(shards: &[(usize, Gauges, MetricsSnapshot)]) -> String {
    let mut out = String::new();
    type Gauge = (&'static str, &'static str, fn(&Gauges) -> u64);
    let gauges: [Gauge; 3] = [
        ("connections", "Open WebSocket connections", |g| {
            g.connections
        }),
        ("subscriptions", "Channel subscriptions", |g| {
            g.subscriptions
        }),
        ("channels", "Channels with local subscribers", |g| {
            g.channels
        }),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(
            out,
            "# HELP ringcast_{name} {help}\n# TYPE ringcast_{name} gauge"
        );
        let mut total = 0;
        for (s, g, _) in shards {
            let v = get(g);
            total += v;
            let _ = writeln!(out, "ringcast_{name}{{shard=\"{s}\"}} {v}");
        }
        let _ = writeln!(out, "ringcast_{name}_total {total}");
    }
    let mut sum = MetricsSnapshot::default();
    for (_, _, m) in shards {
        sum.add(m);
    }
    for (i, (name, help, total)) in sum.fields().into_iter().enumerate() {
        let _ = writeln!(
            out,
            "# HELP ringcast_{name}_total {help}\n# TYPE ringcast_{name}_total counter"
        );
        for (s, _, m) in shards {
            let _ = writeln!(
                out,
                "ringcast_{name}_total{{shard=\"{s}\"}} {}",
                m.fields()[i].2
            );
        }
        let _ = writeln!(out, "ringcast_{name}_total {total}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_sums_shards() {
        let m = ShardMetrics::default();
        ShardMetrics::add(&m.deliveries, 5);
        let g = Gauges {
            connections: 2,
            subscriptions: 3,
            channels: 1,
        };
        let text = render_prometheus(&[(0, g, m.snapshot()), (1, g, m.snapshot())]);
        assert!(text.contains("ringcast_deliveries_total{shard=\"1\"} 5"));
        assert!(text.contains("ringcast_deliveries_total 10"));
        assert!(text.contains("ringcast_connections_total 4"));
        assert!(text.contains("# TYPE ringcast_connections gauge"));
    }
}
