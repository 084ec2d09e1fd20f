//! Cluster mode: several nodes sharing channels through Redis 7
//! (`[cluster]`, docs/CLUSTER.md).
//!
//! - [`wire`]: key names, the bus message format and the per-channel
//!   sequencer, without I/O.
//! - [`bus`]: the bridge thread that talks to Redis (the `redis` crate on
//!   a tokio runtime of its own, like the message sources). Shards never
//!   wait on Redis: they queue a [`BusRequest`] and the answer comes back
//!   through a oneshot or their mailbox.
//!
//! The channel's home shard keeps its per-node state (subscriber counts,
//! presence, a local history ring); Redis assigns offsets, ids and epochs
//! and keeps the cluster-wide history (a stream per channel).
#![forbid(unsafe_code)]

pub mod bus;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use futures_channel::oneshot;
use tokio::sync::mpsc;

use crate::pubsub::channel_table::ConnKey;
use crate::pubsub::ops::PublishResult;
use crate::runtime::shard::PublishError;

/// What shards ask of the bus bridge.
#[derive(Debug)]
pub enum BusRequest {
    /// Publish through Redis (one script); the reply carries the offset
    /// and id Redis assigned (`subscribers` 0: the caller counts them).
    Publish {
        channel: Box<str>,
        data: Bytes,
        exclude: Option<(usize, ConnKey)>,
        reply: oneshot::Sender<Result<PublishResult, PublishError>>,
    },
    /// `notify_all` to every node; the reply is its id.
    Broadcast {
        data: Bytes,
        reply: oneshot::Sender<Result<u64, PublishError>>,
    },
    /// Subscribe this node to the channel (its first local subscriber);
    /// the position goes to shard `home` as `ShardMsg::BusAttached`.
    Attach {
        channel: Box<str>,
        home: usize,
        gen: u64,
    },
    /// Unsubscribe this node (its last local subscriber left).
    Detach { channel: Box<str> },
    /// A channel's history from its stream (`history`, `last`): at most
    /// `limit` publications after `since` (from the start in another
    /// epoch); `None` when Redis could not be read or does not know the
    /// channel.
    Read {
        channel: Box<str>,
        since: Option<crate::pubsub::home_shard::Since>,
        limit: usize,
        reply: oneshot::Sender<Option<crate::pubsub::home_shard::HistoryOutcome>>,
    },
    /// Cluster-wide counts from every live node's heartbeat; `None` when
    /// Redis could not be read.
    Counts {
        reply: oneshot::Sender<Option<wire::ClusterCounts>>,
    },
    /// A subscriber joined a channel whose namespace keeps presence:
    /// `HSET` its member field (one round trip, not waited for).
    Join {
        channel: Box<str>,
        field: String,
        value: String,
    },
    /// A `join`/`leave` event (its JSON-RPC notification) for the
    /// channel's subscribers on the other nodes: published on the
    /// channel's bus channel, marked as an event ([`wire::encode_event`]).
    Event { channel: Box<str>, json: Bytes },
    /// A subscriber left it: `HDEL` its member field.
    Leave { channel: Box<str>, field: String },
    /// The channel's presence over every live node (at most `max` in the
    /// list, with `list`); `None` when Redis could not be read.
    Presence {
        channel: Box<str>,
        list: bool,
        max: usize,
        reply: oneshot::Sender<Option<wire::ClusterPresence>>,
    },
    /// The stream's publications after offset `after` (at most `limit`),
    /// to shard `home` as `ShardMsg::BusRecovered` with `token`.
    Recover {
        channel: Box<str>,
        home: usize,
        token: u64,
        after: u64,
        limit: usize,
    },
}

/// A node's end of the bus: its state and the request queue.
#[derive(Debug)]
pub struct Bus {
    /// This node's id on the bus (random hex), so a publication's sender
    /// is skipped on its own node only.
    pub node_id: String,
    up: AtomicBool,
    /// Connections made after the first.
    pub reconnects: AtomicU64,
    /// Publications this node sent through the bus.
    pub published: AtomicU64,
    /// Publications refused because the bus was down.
    pub refused: AtomicU64,
    tx: mpsc::UnboundedSender<BusRequest>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<BusRequest>>>,
}

impl Bus {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut id = [0u8; 8];
        if getrandom::getrandom(&mut id).is_err() {
            id = (std::process::id() as u64 ^ crate::runtime::shard::unix_ms()).to_le_bytes();
        }
        Bus {
            node_id: id.iter().map(|b| format!("{b:02x}")).collect(),
            up: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            published: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Whether the bridge is connected to Redis now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    /// Queues a request for the bridge (never blocks a shard). A request
    /// after the bridge stopped is dropped, and its reply with it.
    pub fn send(&self, req: BusRequest) {
        let _ = self.tx.send(req);
    }

    pub(crate) fn take_requests(&self) -> Option<mpsc::UnboundedReceiver<BusRequest>> {
        self.rx.lock().ok()?.take()
    }

    /// The `/health` line.
    pub fn health_line(&self) -> String {
        format!(
            "cluster: {} (node {}, reconnects {})",
            if self.is_up() {
                "ok"
            } else {
                "degraded (bus down)"
            },
            self.node_id,
            self.reconnects.load(Ordering::Relaxed),
        )
    }

    /// `ringcast_cluster_*` samples for `/metrics`.
    pub fn prometheus(&self) -> String {
        format!(
            "# HELP ringcast_cluster_bus_up Whether the cluster bus (Redis) is connected.\n\
             # TYPE ringcast_cluster_bus_up gauge\n\
             ringcast_cluster_bus_up {}\n\
             # HELP ringcast_cluster_bus_reconnects_total Reconnections to the cluster bus.\n\
             # TYPE ringcast_cluster_bus_reconnects_total counter\n\
             ringcast_cluster_bus_reconnects_total {}\n\
             # HELP ringcast_cluster_published_total Publications sent through the bus.\n\
             # TYPE ringcast_cluster_published_total counter\n\
             ringcast_cluster_published_total {}\n\
             # HELP ringcast_cluster_refused_total Publications refused while the bus was down.\n\
             # TYPE ringcast_cluster_refused_total counter\n\
             ringcast_cluster_refused_total {}\n",
            u8::from(self.is_up()),
            self.reconnects.load(Ordering::Relaxed),
            self.published.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}
