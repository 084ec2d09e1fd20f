//! The shard runtime: one pinned thread per core, each running its own
//! monoio runtime (io_uring, or epoll as a fallback), its own listeners on
//! the shared ports (SO_REUSEPORT), its own connections, channel table and
//! home-channel state.
//!
//! Shards talk only through [`mailbox::Mailbox`]es carrying [`ShardMsg`]s.
//! A publication is built once by its channel's home shard and handed by
//! reference to every other shard with subscribers; each writes the same
//! bytes to its local subscribers, and a flusher task puts each
//! connection's queued frames into one `send` per loop turn.

mod client_ops;
pub mod conn;
pub mod mailbox;
pub mod signal;
pub(crate) mod ws_session;

use std::cell::{Cell, RefCell};
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_channel::oneshot;
use slab::Slab;

use crate::ops::config::Config;
use crate::ops::metrics::{Gauges, MetricsSnapshot, ShardMetrics};
use crate::protocol::adapter::protocol;
use crate::protocol::rpc::RpcParser;
use crate::protocol::websocket::{close_frame, ping_frame};
use crate::pubsub::channel_table::{Change, ChannelTable, ConnKey};
use crate::pubsub::home_shard::{home_of, HistoryOutcome, HomeShard, Since, SubscribeOutcome};
use crate::pubsub::ops::{PublishResult, SubscribeInfo};
use crate::pubsub::publication::Publication;
use crate::runtime::sys;

pub use conn::{Conn, Enqueued};
use mailbox::Mailbox;
use signal::{Latch, LocalSignal};

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
    connections: AtomicUsize,
}

impl Node {
    pub fn new(config: Config, shards: usize) -> Arc<Node> {
        let start_ms = unix_ms();
        Arc::new(Node {
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
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
    History { since: Option<Since>, limit: usize },
}

#[derive(Debug)]
pub enum HomeAnswer {
    Total(usize),
    Last(u64, Arc<str>),
    History(HistoryOutcome),
}

/// A question every shard answers for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gather {
    Stats,
    /// Stats plus the home channels that have subscribers.
    Channels,
    /// Close connections whose pings went unanswered.
    FlushDead,
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
    pub flushed: usize,
}

/// Messages between shards.
pub enum ShardMsg {
    /// To the home shard: publish `data` on `channel`.
    Publish {
        channel: Box<str>,
        data: Bytes,
        exclude: Option<(usize, ConnKey)>,
        reply: oneshot::Sender<PublishResult>,
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
    /// To the home shard: one more subscriber on shard `from`.
    Subscribe {
        channel: Box<str>,
        from: usize,
        conn: ConnRef,
        since: Option<Since>,
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
    /// To the home shard: one subscriber on shard `from` left.
    Unsubscribe {
        channel: Box<str>,
        from: usize,
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
    Shutdown,
}

/// The error a cross-shard call returns when the other shard has stopped.
#[derive(Debug, thiserror::Error)]
#[error("shard is shutting down")]
pub struct ShardGone;

/// One shard's state. Lives on its thread behind an `Rc`.
pub struct Shard {
    pub id: usize,
    pub node: Arc<Node>,
    pub driver: &'static str,
    conns: RefCell<Slab<Rc<Conn>>>,
    serials: RefCell<Slab<u64>>,
    next_serial: Cell<u64>,
    table: RefCell<ChannelTable>,
    home: RefCell<HomeShard>,
    dirty: RefCell<Vec<ConnKey>>,
    spare_dirty: RefCell<Vec<ConnKey>>,
    flush_signal: LocalSignal,
    pub(crate) shutdown: Latch,
    /// Every session ended (and flushed) during shutdown.
    pub(crate) drained: LocalSignal,
    /// Sessions still running, draining ones included.
    sessions: Cell<usize>,
    pub parser: RefCell<RpcParser>,
    /// Receive buffer shared by all connections of the shard.
    pub scratch: RefCell<Vec<u8>>,
    /// Send buffer that joins a connection's queued frames into one write.
    gather: RefCell<Vec<u8>>,
    pub metrics: ShardMetrics,
    ping: Bytes,
}

impl Shard {
    pub fn new(id: usize, node: Arc<Node>, driver: &'static str) -> Rc<Shard> {
        let cfg = &node.config;
        let home = HomeShard::new(
            id,
            node.shards,
            cfg.history.size,
            std::time::Duration::from_secs(cfg.history.ttl),
            node.start_ms,
        );
        Rc::new(Shard {
            id,
            driver,
            conns: RefCell::new(Slab::new()),
            serials: RefCell::new(Slab::new()),
            next_serial: Cell::new(0),
            table: RefCell::new(ChannelTable::new()),
            home: RefCell::new(home),
            dirty: RefCell::new(Vec::new()),
            spare_dirty: RefCell::new(Vec::new()),
            flush_signal: LocalSignal::default(),
            shutdown: Latch::default(),
            drained: LocalSignal::default(),
            sessions: Cell::new(0),
            parser: RefCell::new(RpcParser::new()),
            scratch: RefCell::new(vec![0; 64 * 1024]),
            gather: RefCell::new(Vec::with_capacity(conn::GATHER_MAX)),
            metrics: ShardMetrics::default(),
            ping: Bytes::from(ping_frame(b"")),
            node,
        })
    }

    pub fn config(&self) -> &Config {
        &self.node.config
    }

    // ----- connections -------------------------------------------------

    /// Registers a new connection; returns it with its cross-shard identity.
    pub fn add_conn(&self, make: impl FnOnce(ConnKey) -> Conn) -> (Rc<Conn>, ConnRef) {
        let mut conns = self.conns.borrow_mut();
        let entry = conns.vacant_entry();
        let key = entry.key() as ConnKey;
        let conn = Rc::new(make(key));
        entry.insert(conn.clone());
        let serial = self.next_serial.get() + 1;
        self.next_serial.set(serial);
        let mut serials = self.serials.borrow_mut();
        let skey = serials.insert(serial);
        debug_assert_eq!(skey as ConnKey, key);
        ShardMetrics::inc(&self.metrics.connections_accepted);
        self.node.connections.fetch_add(1, Ordering::Relaxed);
        (conn, ConnRef { key, serial })
    }

    fn conn(&self, r: ConnRef) -> Option<Rc<Conn>> {
        let serials = self.serials.borrow();
        if serials.get(r.key as usize) != Some(&r.serial) {
            return None;
        }
        self.conns.borrow().get(r.key as usize).cloned()
    }

    /// Forgets a connection: leaves all its channels.
    pub fn remove_conn(&self, conn: &Conn) {
        let subs = std::mem::take(&mut *conn.subs.borrow_mut());
        for ch in subs {
            self.leave(&ch, conn.key);
        }
        if self
            .conns
            .borrow_mut()
            .try_remove(conn.key as usize)
            .is_some()
        {
            self.node.connections.fetch_sub(1, Ordering::Relaxed);
        }
        self.serials.borrow_mut().try_remove(conn.key as usize);
    }

    /// A session (accepted WebSocket connection) started.
    pub(crate) fn session_started(&self) {
        self.sessions.set(self.sessions.get() + 1);
    }

    /// A session ended after its last flush.
    pub(crate) fn session_ended(&self) {
        self.sessions.set(self.sessions.get() - 1);
        if self.sessions.get() == 0 && self.shutdown.is_raised() {
            self.drained.notify();
        }
    }

    pub(crate) fn session_count(&self) -> usize {
        self.sessions.get()
    }

    /// Queues a publication frame for `conn` under its outbound budget.
    fn offer(&self, conn: &Rc<Conn>, frame: &Bytes, now: Instant) -> bool {
        if !conn.is_open() {
            return false;
        }
        let cfg = &self.node.config.limits;
        match conn.enqueue(frame.clone(), cfg.max_outbound_bytes, cfg.slow_consumer) {
            Enqueued::Queued => {
                self.mark_dirty(conn);
                true
            }
            Enqueued::Dropped => {
                ShardMetrics::inc(&self.metrics.dropped_deliveries);
                false
            }
            Enqueued::OverBudget => {
                ShardMetrics::inc(&self.metrics.slow_consumer_disconnects);
                self.close_conn(conn, 1008, "slow consumer", true, now);
                false
            }
        }
    }

    /// Queues a reply or control frame (never dropped).
    pub fn send_control(&self, conn: &Rc<Conn>, frame: Bytes) {
        conn.enqueue_control(frame);
        self.mark_dirty(conn);
    }

    pub fn mark_dirty(&self, conn: &Conn) {
        if !conn.dirty.replace(true) {
            self.dirty.borrow_mut().push(conn.key);
            self.flush_signal.notify();
        }
    }

    /// Starts a server-side close: queue the close frame, stop the reader.
    pub fn close_conn(
        &self,
        conn: &Rc<Conn>,
        code: u16,
        reason: &str,
        discard: bool,
        now: Instant,
    ) {
        if conn.begin_close(Bytes::from(close_frame(code, reason)), discard, now) {
            self.mark_dirty(conn);
            // Wakes the reader with end-of-stream; it cleans up and drains.
            shutdown_read(conn);
        }
    }

    /// The form of `p` that `conn`'s protocol delivers (built once per
    /// publication, then shared).
    fn frame_for<'a>(conn: &Conn, p: &'a Publication) -> &'a Bytes {
        p.form(usize::from(conn.proto), |p| {
            protocol(conn.proto).encode_publication(p)
        })
    }

    /// Delivers a channel publication to this shard's subscribers.
    pub fn deliver(&self, p: &Publication, exclude: Option<ConnKey>) -> usize {
        let Some(channel) = p.channel.as_deref() else {
            return 0;
        };
        let table = self.table.borrow();
        let Some(subs) = table.subscribers(channel) else {
            return 0;
        };
        let conns = self.conns.borrow();
        let now = Instant::now();
        let mut n = 0;
        for &key in subs {
            if Some(key) == exclude {
                continue;
            }
            if let Some(conn) = conns.get(key as usize) {
                n += self.offer(conn, Self::frame_for(conn, p), now) as usize;
            }
        }
        ShardMetrics::add(&self.metrics.deliveries, n as u64);
        n
    }

    /// Delivers a broadcast to every local connection once.
    pub fn deliver_all(&self, p: &Publication) -> usize {
        let conns = self.conns.borrow();
        let now = Instant::now();
        let mut n = 0;
        for (_, conn) in conns.iter() {
            n += self.offer(conn, Self::frame_for(conn, p), now) as usize;
        }
        ShardMetrics::add(&self.metrics.deliveries, n as u64);
        n
    }

    // ----- channels ------------------------------------------------------

    /// Publishes on the channel's home shard (here or by message).
    pub async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        exclude: Option<(usize, ConnKey)>,
    ) -> Result<PublishResult, ShardGone> {
        let home = self.node.home_of(channel);
        if home == self.id {
            return Ok(self.publish_at_home(channel, data, exclude));
        }
        let (tx, rx) = oneshot::channel();
        self.node.mailboxes[home].push(ShardMsg::Publish {
            channel: channel.into(),
            data,
            exclude,
            reply: tx,
        });
        rx.await.map_err(|_| ShardGone)
    }

    /// The home shard's half of a publish: assign offset and id, build the
    /// frame once, deliver here and forward to interested shards.
    fn publish_at_home(
        &self,
        channel: &str,
        data: Bytes,
        exclude: Option<(usize, ConnKey)>,
    ) -> PublishResult {
        let node = &self.node;
        let ts = unix_ms() / 1000;
        let mut id = 0;
        let mut home = self.home.borrow_mut();
        let published = home.publish(channel, Instant::now(), |name, offset| {
            id = node.next_id();
            Publication::message(name, offset, id, ts, data)
        });
        ShardMetrics::inc(&self.metrics.publications);
        let p = &published.publication;
        for shard in home.interested(channel) {
            let ex = exclude.filter(|&(s, _)| s == shard).map(|(_, k)| k);
            if shard == self.id {
                self.deliver(p, ex);
            } else {
                node.mailboxes[shard].push(ShardMsg::Deliver {
                    publication: p.clone(),
                    exclude: ex,
                });
            }
        }
        PublishResult {
            offset: p.offset,
            id,
            subscribers: published.subscribers
                - usize::from(exclude.is_some()).min(published.subscribers),
        }
    }

    /// `notify_all`: one broadcast frame, delivered once per connection on
    /// every shard. Returns (id, connections reached).
    pub async fn broadcast(&self, data: Bytes) -> (u64, usize) {
        let id = self.node.next_id();
        let p = Arc::new(Publication::broadcast(id, unix_ms() / 1000, data));
        let mut waits = Vec::new();
        for shard in 0..self.node.shards {
            if shard != self.id {
                let (tx, rx) = oneshot::channel();
                self.node.mailboxes[shard].push(ShardMsg::Broadcast {
                    publication: p.clone(),
                    reply: tx,
                });
                waits.push(rx);
            }
        }
        let mut n = self.deliver_all(&p);
        for rx in waits {
            n += rx.await.unwrap_or(0);
        }
        (id, n)
    }

    pub fn is_subscribed(&self, conn: &Conn, channel: &str) -> bool {
        conn.subs.borrow().iter().any(|c| &**c == channel)
    }

    /// Subscribes `conn`; the subscription takes effect at the home shard's
    /// current offset, and missed publications (with `since`) are queued
    /// right behind the reply.
    pub async fn subscribe(
        &self,
        conn: &Rc<Conn>,
        cref: ConnRef,
        channel: &str,
        since: Option<Since>,
    ) -> Result<SubscribeInfo, ShardGone> {
        let home = self.node.home_of(channel);
        if home == self.id {
            let outcome =
                self.home
                    .borrow_mut()
                    .subscribe(channel, self.id, since.as_ref(), Instant::now());
            self.activate(conn, channel, &outcome);
            return Ok(SubscribeInfo::from(&outcome));
        }
        let (tx, rx) = oneshot::channel();
        self.node.mailboxes[home].push(ShardMsg::Subscribe {
            channel: channel.into(),
            from: self.id,
            conn: cref,
            since,
            reply: tx,
        });
        rx.await.map_err(|_| ShardGone)
    }

    fn activate(&self, conn: &Rc<Conn>, channel: &str, outcome: &SubscribeOutcome) {
        let (name, change) = self.table.borrow_mut().subscribe(channel, conn.key);
        if matches!(change, Change::Changed { .. }) {
            let mut subs = conn.subs.borrow_mut();
            // Most connections hold a few channels: grow one at a time.
            subs.reserve_exact(1);
            subs.push(name);
        }
        let now = Instant::now();
        for p in &outcome.replay {
            self.offer(conn, Self::frame_for(conn, p), now);
        }
    }

    /// Removes `conn` from `channel`; false if it was not subscribed.
    pub fn unsubscribe(&self, conn: &Conn, channel: &str) -> bool {
        let mut subs = conn.subs.borrow_mut();
        let Some(pos) = subs.iter().position(|c| &**c == channel) else {
            return false;
        };
        subs.swap_remove(pos);
        drop(subs);
        self.leave(channel, conn.key);
        true
    }

    fn leave(&self, channel: &str, key: ConnKey) {
        if let Change::Changed { .. } = self.table.borrow_mut().unsubscribe(channel, key) {
            let home = self.node.home_of(channel);
            if home == self.id {
                self.home.borrow_mut().unsubscribe(channel, self.id);
            } else {
                self.node.mailboxes[home].push(ShardMsg::Unsubscribe {
                    channel: channel.into(),
                    from: self.id,
                });
            }
        }
    }

    /// Asks the home shard of `channel`.
    pub async fn ask_home(&self, channel: &str, query: HomeQuery) -> Result<HomeAnswer, ShardGone> {
        let home = self.node.home_of(channel);
        if home == self.id {
            return Ok(self.answer_home(channel, query));
        }
        let (tx, rx) = oneshot::channel();
        self.node.mailboxes[home].push(ShardMsg::Home {
            channel: channel.into(),
            query,
            reply: tx,
        });
        rx.await.map_err(|_| ShardGone)
    }

    fn answer_home(&self, channel: &str, query: HomeQuery) -> HomeAnswer {
        let mut home = self.home.borrow_mut();
        match query {
            HomeQuery::Total => HomeAnswer::Total(home.total(channel)),
            HomeQuery::Last => {
                let (o, e) = home.last(channel);
                HomeAnswer::Last(o, e)
            }
            HomeQuery::History { since, limit } => {
                HomeAnswer::History(home.history(channel, since.as_ref(), limit, Instant::now()))
            }
        }
    }

    /// Asks every shard (this one included) and collects the answers in
    /// shard order.
    pub async fn gather(&self, query: Gather) -> Vec<ShardReport> {
        let mut waits = Vec::with_capacity(self.node.shards);
        for shard in 0..self.node.shards {
            if shard == self.id {
                waits.push(None);
            } else {
                let (tx, rx) = oneshot::channel();
                self.node.mailboxes[shard].push(ShardMsg::Gather { query, reply: tx });
                waits.push(Some(rx));
            }
        }
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            match w {
                None => out.push(self.report(query)),
                Some(rx) => {
                    if let Ok(r) = rx.await {
                        out.push(r);
                    }
                }
            }
        }
        out
    }

    fn report(&self, query: Gather) -> ShardReport {
        let flushed = if query == Gather::FlushDead {
            self.flush_dead()
        } else {
            0
        };
        let table = self.table.borrow();
        let home = self.home.borrow();
        ShardReport {
            shard: self.id,
            driver: self.driver,
            gauges: Gauges {
                connections: self.conns.borrow().len() as u64,
                subscriptions: table.subscription_count() as u64,
                channels: table.channel_count() as u64,
            },
            home_channels: home.channel_count(),
            metrics: self.metrics.snapshot(),
            channels: if query == Gather::Channels {
                home.channels_with_subscribers()
                    .map(|(c, n)| (c.to_owned(), n))
                    .collect()
            } else {
                Vec::new()
            },
            flushed,
        }
    }

    /// Closes connections with a ping outstanding for over a second.
    fn flush_dead(&self) -> usize {
        let now = Instant::now();
        let dead: Vec<Rc<Conn>> = self
            .conns
            .borrow()
            .iter()
            .filter(|(_, c)| {
                c.is_open()
                    && c.ping_sent
                        .get()
                        .is_some_and(|t| now.duration_since(t).as_secs_f32() >= 1.0)
            })
            .map(|(_, c)| c.clone())
            .collect();
        for c in &dead {
            self.close_conn(c, 1001, "dead client", true, now);
        }
        dead.len()
    }

    // ----- the shard's loops ---------------------------------------------

    /// Handles one message from another shard.
    pub fn handle_msg(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish {
                channel,
                data,
                exclude,
                reply,
            } => {
                let r = self.publish_at_home(&channel, data, exclude);
                let _ = reply.send(r);
            }
            ShardMsg::Deliver {
                publication,
                exclude,
            } => {
                self.deliver(&publication, exclude);
            }
            ShardMsg::Broadcast { publication, reply } => {
                let _ = reply.send(self.deliver_all(&publication));
            }
            ShardMsg::Subscribe {
                channel,
                from,
                conn,
                since,
                reply,
            } => {
                let outcome = self.home.borrow_mut().subscribe(
                    &channel,
                    from,
                    since.as_ref(),
                    Instant::now(),
                );
                self.node.mailboxes[from].push(ShardMsg::SubscribeAck {
                    channel,
                    conn,
                    outcome,
                    reply,
                });
            }
            ShardMsg::SubscribeAck {
                channel,
                conn,
                outcome,
                reply,
            } => match self.conn(conn).filter(|c| c.is_open()) {
                Some(c) => {
                    self.activate(&c, &channel, &outcome);
                    let _ = reply.send(SubscribeInfo::from(&outcome));
                }
                None => {
                    // The subscriber left while the ack was under way.
                    let home = self.node.home_of(&channel);
                    self.node.mailboxes[home].push(ShardMsg::Unsubscribe {
                        channel,
                        from: self.id,
                    });
                }
            },
            ShardMsg::Unsubscribe { channel, from } => {
                self.home.borrow_mut().unsubscribe(&channel, from);
            }
            ShardMsg::Home {
                channel,
                query,
                reply,
            } => {
                let _ = reply.send(self.answer_home(&channel, query));
            }
            ShardMsg::Gather { query, reply } => {
                let _ = reply.send(self.report(query));
            }
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    /// Stop accepting, close every client with 1001.
    pub fn begin_shutdown(&self) {
        if self.shutdown.is_raised() {
            return;
        }
        self.shutdown.raise();
        let now = Instant::now();
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
        for c in &conns {
            self.close_conn(c, 1001, "server shutdown", false, now);
        }
        if self.sessions.get() == 0 {
            self.drained.notify();
        }
    }

    /// Writes every dirty connection's queued frames, one gathered write each.
    pub async fn run_flusher(self: Rc<Self>) {
        loop {
            self.flush_signal.wait().await;
            let mut batch = std::mem::take(&mut *self.spare_dirty.borrow_mut());
            std::mem::swap(&mut batch, &mut *self.dirty.borrow_mut());
            for key in batch.drain(..) {
                let conn = self.conns.borrow().get(key as usize).cloned();
                if let Some(conn) = conn {
                    conn.dirty.set(false);
                    self.flush_conn(&conn);
                }
            }
            *self.spare_dirty.borrow_mut() = batch;
        }
    }

    /// Writes what `conn`'s socket takes now, through the shard's gather
    /// buffer.
    pub(crate) fn flush_now(&self, conn: &Conn) -> std::io::Result<(bool, usize)> {
        conn.flush(&mut self.gather.borrow_mut())
    }

    /// One flush attempt; starts a writer task if the socket is full.
    pub fn flush_conn(self: &Rc<Self>, conn: &Rc<Conn>) {
        if conn.write_blocked.get() {
            return;
        }
        match self.flush_now(conn) {
            Ok((drained, n)) => {
                ShardMetrics::add(&self.metrics.bytes_out, n as u64);
                if !drained {
                    conn.write_blocked.set(true);
                    monoio::spawn(wait_writable(self.clone(), conn.clone()));
                }
            }
            Err(_) => {
                // The peer is gone: stop the reader, which cleans up.
                conn.mark_closing(Instant::now());
                shutdown_read(conn);
            }
        }
    }

    /// Pings, pong deadlines, stuck closes and history expiry, once a second.
    pub async fn run_timer(self: Rc<Self>) {
        let cfg = &self.node.config;
        let (interval, pong_timeout) = (cfg.ping_interval(), cfg.pong_timeout());
        let mut ticks = 0u64;
        loop {
            monoio::time::sleep(std::time::Duration::from_secs(1)).await;
            ticks += 1;
            let now = Instant::now();
            let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
            for c in &conns {
                match c.closing_since.get() {
                    Some(t) => {
                        if now.duration_since(t) > pong_timeout {
                            sys::shutdown_socket(c.fd(), Shutdown::Both);
                        }
                    }
                    None => match c.ping_sent.get() {
                        Some(t) if now.duration_since(t) > pong_timeout => {
                            self.close_conn(c, 1011, "pong timeout", true, now);
                        }
                        Some(_) => {}
                        None if now.duration_since(c.last_seen.get()) >= interval => {
                            c.ping_sent.set(Some(now));
                            self.send_control(c, self.ping.clone());
                        }
                        None => {}
                    },
                }
            }
            if ticks.is_multiple_of(10) {
                self.home.borrow_mut().prune(now);
            }
        }
    }

    /// Drains the mailbox until shutdown has completed.
    pub async fn run_mailbox(self: Rc<Self>) {
        let mailbox = &self.node.mailboxes[self.id];
        loop {
            let msg = mailbox.recv().await;
            self.handle_msg(msg);
            // Take what else is there now, but let I/O run between bursts.
            for _ in 0..1024 {
                match mailbox.try_pop() {
                    Some(m) => self.handle_msg(m),
                    None => break,
                }
            }
        }
    }
}

/// Makes a waiting reader see end-of-stream (Linux wakes pollers on SHUT_RD).
fn shutdown_read(conn: &Conn) {
    sys::shutdown_socket(conn.fd(), Shutdown::Read);
}

async fn wait_writable(shard: Rc<Shard>, conn: Rc<Conn>) {
    loop {
        if conn.stream.writable(false).await.is_err() {
            break;
        }
        match shard.flush_now(&conn) {
            Ok((drained, n)) => {
                ShardMetrics::add(&shard.metrics.bytes_out, n as u64);
                if drained {
                    break;
                }
            }
            Err(_) => {
                conn.mark_closing(Instant::now());
                sys::shutdown_socket(conn.fd(), Shutdown::Both);
                break;
            }
        }
    }
    conn.write_blocked.set(false);
    if conn.has_writable() {
        shard.mark_dirty(&conn);
    }
}
