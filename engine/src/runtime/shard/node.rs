//! What every shard of a node shares: the configuration, the mailboxes,
//! the publication id clock and the node-wide connection count.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_channel::oneshot;

use super::*;
use crate::ops::config::Config;
use crate::protocol::adapter::Router;
use crate::pubsub::home_shard::home_of;

/// What every shard shares: configuration, the mailboxes and the id clock.
pub struct Node {
    pub config: Config,
    pub shards: usize,
    pub mailboxes: Vec<Mailbox<ShardMsg>>,
    /// Node-wide publication ids: strictly increasing, seeded from the Unix
    /// time in milliseconds so they never go back across restarts.
    next_id: AtomicU64,
    pub start_ms: u64,
    /// Open WebSocket connections over all shards (checked against
    /// `max_connections` at accept; touched once per connect/disconnect).
    pub(super) connections: AtomicUsize,
    /// Which protocol serves an upgrade, by path.
    pub router: Router,
}

impl Node {
    pub fn new(config: Config, shards: usize) -> Arc<Node> {
        let start_ms = unix_ms();
        Arc::new(Node {
            router: Router::new(&config),
            config,
            shards,
            mailboxes: (0..shards).map(|_| Mailbox::new()).collect(),
            next_id: AtomicU64::new(start_ms),
            start_ms,
            connections: AtomicUsize::new(0),
        })
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn last_id(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn home_of(&self, channel: &str) -> usize {
        home_of(channel, self.shards)
    }

    /// Asks every shard for its report from outside the shard threads
    /// (in-process tests), waiting at most `timeout` for each answer.
    #[doc(hidden)]
    pub fn gather_blocking(&self, query: Gather, timeout: Duration) -> Vec<ShardReport> {
        let deadline = Instant::now() + timeout;
        let mut waits: Vec<_> = self
            .mailboxes
            .iter()
            .map(|mb| {
                let (reply, rx) = oneshot::channel();
                mb.push(ShardMsg::Gather { query, reply });
                rx
            })
            .collect();
        let mut out = Vec::with_capacity(waits.len());
        for rx in &mut waits {
            while Instant::now() < deadline {
                match rx.try_recv() {
                    Ok(Some(r)) => {
                        out.push(r);
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                    Err(_) => break,
                }
            }
        }
        out
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
