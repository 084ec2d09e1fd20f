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
    /// Sockets accepted on the WebSocket port and not yet closed,
    /// handshaking ones included (see [`Node::open_ws_socket`]).
    ws_sockets: AtomicUsize,
    /// Most WebSocket-port sockets open at once: `limits.max_connections`,
    /// bounded by the open-file limit less the descriptors kept for the
    /// backend port ([`ws_capacity`]).
    pub ws_capacity: usize,
    /// Token keys and channel namespaces (`[auth]`).
    pub access: crate::access::Access,
    /// Message sources (`[sources]`) and their state.
    pub sources: crate::sources::Sources,
    /// Cluster mode's bus (`[cluster]`), `None` on a single node.
    pub bus: Option<Arc<crate::cluster::Bus>>,
}

/// Descriptors WebSocket clients can never take: the backend port's
/// connections, listeners, io_uring rings, eventfds, logs and the 503s in
/// flight.
pub const RESERVED_FDS: u64 = 128;

/// The most WebSocket-port sockets to hold with `nofile` descriptors and
/// `max_connections` (0 = no limit but the descriptors).
pub fn ws_capacity(max_connections: usize, nofile: u64) -> usize {
    let by_fds = usize::try_from(nofile.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    match max_connections {
        0 => by_fds,
        max => max.min(by_fds),
    }
}

/// One open WebSocket-port socket, counted until dropped.
pub struct WsSocket(Arc<Node>);

impl Drop for WsSocket {
    fn drop(&mut self) {
        self.0.ws_sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Node {
    pub fn new(config: Config, shards: usize) -> Arc<Node> {
        let capacity = ws_capacity(config.limits.max_connections, u64::MAX);
        Self::with_capacity(config, shards, capacity)
    }

    /// A node that holds at most `ws_capacity` WebSocket-port sockets.
    pub fn with_capacity(config: Config, shards: usize, ws_capacity: usize) -> Arc<Node> {
        let start_ms = unix_ms();
        let sources = crate::sources::Sources {
            redis: config
                .sources
                .redis
                .enabled
                .then(|| Arc::new(crate::sources::redis::RedisSource::new())),
            amqp: config
                .sources
                .amqp
                .enabled
                .then(|| Arc::new(crate::sources::amqp::AmqpSource::default())),
            postgres: config
                .sources
                .postgres
                .enabled
                .then(|| Arc::new(crate::sources::SourceState::default())),
        };
        Arc::new(Node {
            sources,
            bus: config
                .cluster
                .enabled()
                .then(|| Arc::new(crate::cluster::Bus::new())),
            router: Router::new(&config),
            access: crate::access::Access::new(&config.auth),
            mailboxes: (0..shards)
                .map(|_| Mailbox::new(config.limits.mailbox_capacity))
                .collect(),
            config,
            shards,
            next_id: AtomicU64::new(start_ms),
            start_ms,
            connections: AtomicUsize::new(0),
            ws_sockets: AtomicUsize::new(0),
            ws_capacity,
        })
    }

    /// Counts one more WebSocket-port socket, or `None` at capacity.
    pub fn open_ws_socket(self: &Arc<Self>) -> Option<WsSocket> {
        let before = self.ws_sockets.fetch_add(1, Ordering::Relaxed);
        let socket = WsSocket(self.clone());
        (before < self.ws_capacity).then_some(socket)
    }

    /// WebSocket-port sockets open now.
    pub fn ws_socket_count(&self) -> usize {
        self.ws_sockets.load(Ordering::Relaxed)
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// `want` as the next id when it is greater than every id given so
    /// far (a source's poster-assigned id, DMOJ's microseconds), else
    /// [`next_id`](Self::next_id): ids stay strictly increasing node-wide,
    /// so per channel too, whatever the poster sends.
    pub fn take_id(&self, want: Option<u64>) -> u64 {
        let Some(want) = want else {
            return self.next_id();
        };
        let mut cur = self.next_id.load(Ordering::Relaxed);
        while want > cur {
            match self.next_id.compare_exchange_weak(
                cur,
                want,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return want,
                Err(now) => cur = now,
            }
        }
        self.next_id()
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
                mb.push(ShardMsg::Gather {
                    query: query.clone(),
                    reply,
                });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sources_id_is_kept_only_when_ahead() {
        let node = Node::new(Config::default(), 1);
        let start = node.last_id();
        assert_eq!(node.take_id(None), start + 1);
        // A poster's microseconds are far ahead of the ms seed: kept.
        let us = start * 1000;
        assert_eq!(node.take_id(Some(us)), us);
        assert_eq!(node.last_id(), us);
        // Equal or behind: the next id instead, still increasing.
        assert_eq!(node.take_id(Some(us)), us + 1);
        assert_eq!(node.take_id(Some(5)), us + 2);
        assert_eq!(node.take_id(Some(us + 10)), us + 10);
        assert_eq!(node.next_id(), us + 11);
    }

    #[test]
    fn capacity_keeps_descriptors_for_the_backend() {
        assert_eq!(ws_capacity(0, 256), 128);
        assert_eq!(ws_capacity(100, 256), 100);
        assert_eq!(ws_capacity(1000, 256), 128);
        assert_eq!(ws_capacity(0, 100), 0);
        assert_eq!(ws_capacity(5, u64::MAX), 5);
    }

    #[test]
    fn sockets_past_capacity_are_refused_and_uncounted() {
        let mut config = Config::default();
        config.limits.max_connections = 2;
        let node = Node::new(config, 1);
        let a = node.open_ws_socket().expect("first");
        let b = node.open_ws_socket().expect("second");
        assert!(node.open_ws_socket().is_none());
        assert_eq!(node.ws_socket_count(), 2);
        drop(a);
        assert_eq!(node.ws_socket_count(), 1);
        let _c = node.open_ws_socket().expect("room again");
        drop(b);
        assert_eq!(node.ws_socket_count(), 1);
    }
}
