//! The engine's operations: what a protocol adapter asks of the engine on
//! behalf of a client ([`Op`]), and what the engine answers ([`Outcome`],
//! [`OpError`]). This is the whole vocabulary between the wire protocols
//! (`protocol::*`) and the shard runtime; neither side knows the other's
//! types beyond it.
#![forbid(unsafe_code)]

use std::sync::Arc;

use bytes::Bytes;

use super::home_shard::{HistoryOutcome, Since, SubscribeOutcome};
use super::publication::Publication;

/// One operation a client asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Join a channel, optionally recovering what was missed since a
    /// position in it.
    Subscribe {
        channel: Box<str>,
        since: Option<Since>,
    },
    /// Leave a channel.
    Unsubscribe { channel: Box<str> },
    /// Publish `data` (compact JSON) on a channel the client is subscribed
    /// to; every other subscriber receives it (the sender does not).
    Publish { channel: Box<str>, data: Bytes },
    /// The channel's retained publications.
    History {
        channel: Box<str>,
        since: Option<Since>,
        limit: usize,
    },
    /// A keep-alive from the client; touches nothing.
    Heartbeat,
    /// Publish `data` (compact JSON) on any channel, as the backend port
    /// does: no subscription needed and the sender is not excluded. Only
    /// adapters whose clients are trusted publishers (after their own
    /// authentication) ask for it; `ws.client_publish` does not apply.
    Post { channel: Box<str>, data: Bytes },
    /// Publish `data` (any bytes) as a ws4redis client does with its
    /// `publish-*` flags: no subscription needed (the flag is the
    /// permission; `ws.client_publish` does not apply), rate limited like
    /// any client call, the sender excluded unless `echo`; with a nonzero
    /// `keep_secs` it also becomes the channel's last message, sent to
    /// every subscriber that joins in the next `keep_secs` seconds.
    Relay {
        channel: Box<str>,
        data: Bytes,
        echo: bool,
        keep_secs: u64,
    },
    /// The node-wide id of the last publication.
    LastId,
    /// Follow exactly `channels` (leaving every other channel), and with
    /// `after_id` replay the retained publications of those channels with
    /// an id above it, merged over the channels in id order, ahead of the
    /// live ones.
    Follow {
        channels: Vec<Box<str>>,
        after_id: Option<u64>,
    },
    /// Authenticate the connection with a connection token (the native
    /// protocol's first call when the upgrade carried none).
    Connect { token: Box<str> },
    /// Replace the connection token before it expires (same `sub`).
    Refresh { token: Box<str> },
    /// [`Op::Subscribe`] with a subscription token the backend signed for
    /// the channel (namespaces with `subscribe = "token"`).
    SubscribeSigned {
        channel: Box<str>,
        since: Option<Since>,
        token: Box<str>,
    },
    /// Who is subscribed to a channel (where its namespace allows).
    Presence { channel: Box<str> },
    /// How many clients and users are subscribed to a channel.
    PresenceStats { channel: Box<str> },
}

/// What the engine did.
#[derive(Debug)]
pub enum Outcome {
    Subscribed(SubscribeInfo),
    /// `false`: the client was not subscribed (nothing changed).
    Unsubscribed(bool),
    Published(PublishResult),
    History(HistoryOutcome),
    Heartbeat,
    /// The node-wide last publication id.
    LastId(u64),
    /// The channels are followed; `replay` (id order) is what was missed.
    Followed {
        replay: Vec<Arc<Publication>>,
    },
    /// The connection is authenticated as `user` until `exp` (Unix s).
    Connected {
        user: Box<str>,
        exp: Option<u64>,
    },
    /// A channel's presence: compact JSON `{"clients":{...}}` or counts.
    Presence(Vec<u8>),
}

/// Why the engine refused or failed an operation. Adapters render these
/// in their protocol's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("not subscribed: {0}")]
    NotSubscribed(Box<str>),
    #[error("permission denied: clients may not publish on this server")]
    PublishDenied,
    #[error("rate limited")]
    RateLimited,
    #[error("limit exceeded: at most {0} subscriptions per connection")]
    TooManySubscriptions(usize),
    /// A cross-shard mailbox is full (`limits.mailbox_capacity`); nothing
    /// was done.
    #[error("overloaded: try again")]
    Overloaded,
    /// Cluster mode and the bus (Redis) is unreachable; nothing was
    /// published.
    #[error("bus unavailable")]
    BusUnavailable,
    /// No valid connection token (`auth.required`), or a bad token in
    /// `connect` / `refresh` / a subscription token.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// A namespace rule refuses the operation (the message says which).
    #[error("{0}")]
    Denied(&'static str),
    /// The channel's home shard is gone (shutdown) or answered wrongly.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// The answer to a publish at the home shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishResult {
    pub offset: u64,
    pub id: u64,
    /// Subscribers it was delivered to (the sender excluded).
    pub subscribers: usize,
}

/// What a subscriber learns when its subscription takes effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeInfo {
    pub offset: u64,
    pub epoch: Arc<str>,
    pub recovered: Option<bool>,
    pub missed: Option<(u64, u64)>,
    /// The channel's kept last message ([`Op::Relay`]'s `keep_secs`), if
    /// one is unexpired: published before the subscription took effect,
    /// so never also delivered live.
    pub kept: Option<Bytes>,
}

impl From<&SubscribeOutcome> for SubscribeInfo {
    fn from(o: &SubscribeOutcome) -> Self {
        SubscribeInfo {
            offset: o.offset,
            epoch: o.epoch.clone(),
            recovered: o.recovered,
            missed: o.missed,
            kept: o.kept.clone(),
        }
    }
}
