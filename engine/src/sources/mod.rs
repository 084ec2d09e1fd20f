//! Message sources: systems ringcast takes publications from besides its
//! backend port, each in a module named after it (`redis`, ...). A source
//! runs on a bridge thread of its own with a tokio runtime, never on a
//! shard thread; it hands each publication to the channel's home shard
//! through the same mailbox a shard uses ([`publish`]).
#![forbid(unsafe_code)]

pub mod amqp;
pub mod postgres;
pub mod redis;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;

use crate::runtime::shard::{Node, ShardMsg};

/// A source's state, shown by `/health` and `/metrics`.
#[derive(Debug, Default)]
pub struct SourceState {
    pub connected: AtomicBool,
    /// Connections made after the first.
    pub reconnects: AtomicU64,
    /// Messages published from the source.
    pub messages: AtomicU64,
    /// Messages not published (not UTF-8, the heartbeat string, our own
    /// write-backs coming back).
    pub skipped: AtomicU64,
}

impl SourceState {
    pub fn set_connected(&self, on: bool) {
        self.connected.store(on, Ordering::Relaxed);
    }

    /// One line for `/health`.
    pub fn health_line(&self, name: &str) -> String {
        format!(
            "{name}: {} (reconnects {}, messages {})",
            if self.connected.load(Ordering::Relaxed) {
                "connected"
            } else {
                "disconnected"
            },
            self.reconnects.load(Ordering::Relaxed),
            self.messages.load(Ordering::Relaxed),
        )
    }
}

/// The `ringcast_source_*` families every source has: name, kind, help,
/// and the value of one source's sample.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SourceState) -> u64,
);

const FAMILIES: [Family; 4] = [
    (
        "ringcast_source_connected",
        "gauge",
        "Whether the message source is connected.",
        |s| u64::from(s.connected.load(Ordering::Relaxed)),
    ),
    (
        "ringcast_source_reconnects_total",
        "counter",
        "Reconnections of the message source.",
        |s| s.reconnects.load(Ordering::Relaxed),
    ),
    (
        "ringcast_source_messages_total",
        "counter",
        "Messages published from the source.",
        |s| s.messages.load(Ordering::Relaxed),
    ),
    (
        "ringcast_source_skipped_total",
        "counter",
        "Source messages not published.",
        |s| s.skipped.load(Ordering::Relaxed),
    ),
];

/// The shared families for `sources` (name, state): each family's
/// `# HELP` and `# TYPE` once, then one sample per source, labelled
/// `source="name"` (the exposition format allows a family once).
pub fn prometheus_families(sources: &[(&str, &SourceState)]) -> String {
    let mut out = String::new();
    if sources.is_empty() {
        return out;
    }
    for (name, kind, help, value) in FAMILIES {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (source, state) in sources {
            out.push_str(&format!("{name}{{source=\"{source}\"}} {}\n", value(state)));
        }
    }
    out
}

/// Starts a source's bridge thread, `source-{name}`: a current-thread
/// tokio runtime of its own running the future `make` builds there (so
/// the future need not be `Send`). Returns once the thread is running.
pub fn spawn_bridge<F, Fut>(name: &str, make: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let label = name.to_owned();
    std::thread::Builder::new()
        .name(format!("source-{name}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("{label} source: no runtime: {e}");
                    return;
                }
            };
            rt.block_on(make());
        })?;
    Ok(())
}

/// A source's reconnection delay: 100 ms, doubling after each failed
/// attempt up to 5 s, back to 100 ms once connected.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(5);

    /// The delay the next [`wait`](Self::wait) sleeps (for the log line).
    pub fn delay(&self) -> Duration {
        self.next
    }

    /// The delay to sleep now; the next one is doubled (at most `MAX`).
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(Self::MAX);
        d
    }

    /// Sleeps the current delay and doubles the next.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.step()).await;
    }

    /// Connected: the next failure waits `FIRST` again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Publishes `data` on `channel` from outside the shards: the message goes
/// to the channel's home shard's mailbox, as a publish from another shard
/// would. A full mailbox is waited out (1 ms steps), so a source slows
/// down instead of losing messages; order per channel is kept (one
/// mailbox, first in first out). Returns false when the node is gone.
pub async fn publish(node: &Node, channel: &str, data: Bytes) -> bool {
    let home = node.home_of(channel);
    let mut msg = make(channel, data);
    loop {
        match node.mailboxes[home].try_push(msg) {
            Ok(()) => return true,
            Err(back) => {
                msg = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

fn make(channel: &str, data: Bytes) -> ShardMsg {
    // Nobody waits for the answer: the home shard's send fails silently.
    let (reply, _) = oneshot::channel();
    ShardMsg::Publish {
        channel: channel.into(),
        data,
        exclude: None,
        keep: None,
        reply,
    }
}

/// What sources a node has, and their state.
#[derive(Debug, Default)]
pub struct Sources {
    pub redis: Option<Arc<redis::RedisSource>>,
    pub amqp: Option<Arc<amqp::AmqpSource>>,
    pub postgres: Option<Arc<SourceState>>,
}

impl Sources {
    /// Lines appended to `/health` (none without sources).
    pub fn health(&self) -> String {
        let mut out = String::new();
        if let Some(r) = &self.redis {
            out.push('\n');
            out.push_str(&r.state.health_line("redis"));
        }
        if let Some(a) = &self.amqp {
            out.push('\n');
            out.push_str(&a.health_line());
        }
        if let Some(p) = &self.postgres {
            out.push('\n');
            out.push_str(&p.health_line("postgres"));
        }
        out
    }

    /// Lines appended to `/metrics`: the shared `ringcast_source_*`
    /// families, one sample per running source, then each source's own.
    pub fn prometheus(&self) -> String {
        let mut all: Vec<(&str, &SourceState)> = Vec::new();
        if let Some(r) = &self.redis {
            all.push(("redis", &r.state));
        }
        if let Some(a) = &self.amqp {
            all.push(("amqp", &a.state));
        }
        if let Some(p) = &self.postgres {
            all.push(("postgres", p));
        }
        let mut out = prometheus_families(&all);
        if let Some(a) = &self.amqp {
            out.push_str(&a.prometheus());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_seconds_and_resets() {
        let mut b = Backoff::default();
        let steps: Vec<u64> = (0..9).map(|_| b.step().as_millis() as u64).collect();
        assert_eq!(steps, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.delay(), Duration::from_millis(100));
        assert_eq!(b.step(), Backoff::FIRST);
        assert_eq!(b.delay(), Duration::from_millis(200));
    }

    #[test]
    fn shared_families_are_declared_once_with_a_sample_per_source() {
        let redis = SourceState::default();
        let amqp = SourceState::default();
        amqp.set_connected(true);
        amqp.messages.store(7, Ordering::Relaxed);
        let text = prometheus_families(&[("redis", &redis), ("amqp", &amqp)]);
        for (name, _, _, _) in FAMILIES {
            assert_eq!(text.matches(&format!("# HELP {name} ")).count(), 1);
            assert_eq!(text.matches(&format!("# TYPE {name} ")).count(), 1);
        }
        assert!(text.starts_with(
            "# HELP ringcast_source_connected Whether the message source is connected.\n\
             # TYPE ringcast_source_connected gauge\n\
             ringcast_source_connected{source=\"redis\"} 0\n\
             ringcast_source_connected{source=\"amqp\"} 1\n"
        ));
        assert!(text.contains(
            "ringcast_source_messages_total{source=\"redis\"} 0\n\
             ringcast_source_messages_total{source=\"amqp\"} 7\n"
        ));
        assert_eq!(prometheus_families(&[]), "");
    }
}
