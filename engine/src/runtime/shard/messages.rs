//! The messages shards exchange, and the questions and answers they carry.

use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;

use crate::ops::metrics::{Gauges, MetricsSnapshot};
use crate::pubsub::channel_table::ConnKey;
use crate::pubsub::home_shard::{HistoryOutcome, Member, PresenceAnswer, Since, SubscribeOutcome};
use crate::pubsub::ops::{OpError, PublishResult, SubscribeInfo};
use crate::pubsub::publication::Publication;

/// A connection's identity across shards: slab key plus a per-shard serial
/// (so a reused slab key is never mistaken for the old connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub key: ConnKey,
    pub serial: u64,
}

/// A question for a channel's home shard.
#[derive(Debug)]
pub enum HomeQuery {
    Total,
    Last,
    History {
        since: Option<Since>,
        limit: usize,
    },
    /// Who is subscribed (`list`) or only how many.
    Presence {
        list: bool,
    },
}

#[derive(Debug)]
pub enum HomeAnswer {
    Total(usize),
    Last(u64, Arc<str>),
    History(HistoryOutcome),
    Presence(PresenceAnswer),
}

/// A question every shard answers for itself. No answer grows with the
/// number of channels: channel lists are bounded pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gather {
    Stats,
    /// Stats plus a page of the home channels that have subscribers: in
    /// name order, the names after `after`, at most `limit`.
    ChannelPage {
        after: Option<Arc<str>>,
        limit: usize,
    },
    /// Stats plus the `n` home channels with the most subscribers.
    TopChannels(usize),
    /// Close connections whose pings went unanswered.
    FlushDead,
    /// Close a user's connections (4004); `affected` counts them.
    DisconnectUser(Arc<str>),
    /// Unsubscribe a user's connections from a channel.
    UnsubscribeUser {
        user: Arc<str>,
        channel: Arc<str>,
    },
    /// From a channel's home shard: a `join`/`leave` frame for the channel's native subscribers but
    /// `except` (shard, connection); nobody waits for the answer.
    Event {
        channel: Arc<str>,
        frame: Bytes,
        except: (usize, ConnKey),
    },
}

/// One shard's answer to a [`Gather`].
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    pub shard: usize,
    pub driver: &'static str,
    pub gauges: Gauges,
    pub home_channels: usize,
    pub metrics: MetricsSnapshot,
    pub channels: Vec<(String, usize)>,
    /// More channels follow the page in `channels`.
    pub more_channels: bool,
    pub flushed: usize,
    pub internals: Internals,
    /// Connections a per-user query touched.
    pub affected: usize,
}

/// Sizes of a shard's internal structures, to show they stay bounded
/// (they follow what is live now, not what ever was).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Internals {
    /// Tasks waiting on the shutdown latch, and the slots kept for them.
    pub shutdown_waiters: usize,
    pub shutdown_waiter_slots: usize,
    /// Registered connections, and the registry's slab capacity.
    pub conns: usize,
    pub conn_slots: usize,
    /// Sessions running (handshaking and draining ones included).
    pub sessions: usize,
    /// Of those, the idle ones whose read side waits in the shard's poll
    /// ring with no task (io_uring driver).
    pub idle_readers: usize,
    /// Room in the channel table's and the home shard's channel maps.
    pub channel_slots: usize,
    pub home_channel_slots: usize,
}

/// Messages between shards.
pub enum ShardMsg {
    /// To the home shard: publish `data` on `channel`.
    Publish {
        channel: Box<str>,
        data: Bytes,
        exclude: Option<(usize, ConnKey)>,
        /// Also keep it as the channel's last message for this long.
        keep: Option<std::time::Duration>,
        reply: oneshot::Sender<Result<PublishResult, PublishError>>,
    },
    /// To the home shard, from a message source: publish `data` on
    /// `channel`, with the id the source's poster gave it when that id is
    /// still ahead of the node's ids ([`Node::take_id`]).
    SourcePublish {
        channel: Box<str>,
        data: Bytes,
        id: Option<u64>,
        reply: oneshot::Sender<Result<PublishResult, PublishError>>,
    },
    /// To the home shard, from a message source: the channel's persisted
    /// last message (ws4redis's SETEX'd key) and its time to live, for a
    /// first subscriber who joined at offset `joined`.
    Kept {
        channel: Box<str>,
        data: Bytes,
        ttl: std::time::Duration,
        joined: u64,
    },
    /// From the home shard: deliver to local subscribers of the channel.
    Deliver {
        publication: Arc<Publication>,
        exclude: Option<ConnKey>,
    },
    /// Deliver to every local connection once.
    Broadcast {
        publication: Arc<Publication>,
        reply: oneshot::Sender<usize>,
    },
    /// To the home shard: one more subscriber on shard `from`, with who it
    /// is when the channel keeps presence.
    Subscribe {
        channel: Box<str>,
        from: usize,
        conn: ConnRef,
        since: Option<Since>,
        member: Option<Box<Member>>,
        reply: oneshot::Sender<SubscribeInfo>,
    },
    /// From the home shard, in order with its `Deliver`s: the subscription
    /// takes effect now.
    SubscribeAck {
        channel: Box<str>,
        conn: ConnRef,
        outcome: SubscribeOutcome,
        reply: oneshot::Sender<SubscribeInfo>,
    },
    /// To the home shard: subscriber `conn` on shard `from` left.
    Unsubscribe {
        channel: Box<str>,
        from: usize,
        conn: ConnKey,
    },
    Home {
        channel: Box<str>,
        query: HomeQuery,
        reply: oneshot::Sender<HomeAnswer>,
    },
    Gather {
        query: Gather,
        reply: oneshot::Sender<ShardReport>,
    },
    /// Wake this connection's session for its protocol (a timed job of
    /// its killed from another connection, see `protocol::jobs`). Pushed
    /// as a consequence (never refused): one per kill, and kills are
    /// rate-limited client requests.
    WakeSession(ConnRef),
    /// From the cluster bus, to the channel's home shard: the next
    /// publication of a channel this node is attached to, in offset order.
    BusDeliver {
        channel: Box<str>,
        entry: crate::cluster::wire::BusEntry,
    },
    /// From the cluster bus: this node is subscribed to the channel and
    /// every publication after `offset` will follow (attach number `gen`).
    BusAttached {
        channel: Box<str>,
        gen: u64,
        offset: u64,
        epoch: Arc<str>,
    },
    /// From the cluster bus: the stream's answer to a recovery (`token`):
    /// the channel's epoch and its publications, `None` when Redis could
    /// not be read.
    BusRecovered {
        channel: Box<str>,
        token: u64,
        entries: Option<Option<(Arc<str>, Vec<crate::cluster::wire::BusEntry>)>>,
    },
    /// From the cluster bus: Redis is unreachable; answer every parked
    /// subscriber from what this node knows.
    BusLost,
    /// Stop accepting; backend connections answer what they received.
    Shutdown,
    /// To every shard (the sender too), once during shutdown, after the
    /// sender's backend connections answered everything: every delivery of
    /// a publication acknowledged there is ahead of it in the mailbox. A
    /// shard closes its clients with 1001 once it has one from every shard.
    PublishersDone,
}

/// The error a cross-shard call returns when the other shard has stopped.
#[derive(Debug, thiserror::Error)]
#[error("shard is shutting down")]
pub struct ShardGone;

/// Why a publish (or `notify_all`) was not done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The home shard has stopped.
    #[error("shard is shutting down")]
    Gone,
    /// A mailbox it needed was full (`limits.mailbox_capacity`); nothing
    /// was published.
    #[error("overloaded: try again")]
    Overloaded,
    /// Cluster mode and Redis is unreachable (`cluster.on_bus_loss =
    /// "refuse"`); nothing was published.
    #[error("bus unavailable")]
    BusUnavailable,
}

impl From<ShardGone> for PublishError {
    fn from(_: ShardGone) -> Self {
        PublishError::Gone
    }
}

impl From<PublishError> for OpError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Gone => OpError::Internal("shard is shutting down"),
            PublishError::Overloaded => OpError::Overloaded,
            PublishError::BusUnavailable => OpError::BusUnavailable,
        }
    }
}
