//! Channels across shards: publishing at the home shard, subscribing and
//! leaving, questions to a channel's home shard, and node-wide gathers.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

use super::tick::Tick;
use super::*;
use crate::ops::metrics::{Gauges, ShardMetrics};
use crate::protocol::codec::close_code;
use crate::pubsub::channel_table::{Change, ConnKey};
use crate::pubsub::home_shard::{Since, SubscribeOutcome};
use crate::pubsub::ops::{PublishResult, SubscribeInfo};
use crate::pubsub::publication::Publication;

impl Shard {
    // ----- channels ------------------------------------------------------

    /// Publishes on the channel's home shard (here or by message), or
    /// answers [`PublishError::Overloaded`] when the home shard's mailbox
    /// (or that of a shard it would deliver to) is full.
    pub async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        exclude: Option<(usize, ConnKey)>,
    ) -> Result<PublishResult, PublishError> {
        self.publish_kept(channel, data, exclude, None).await
    }

    /// [`publish`](Self::publish), and with `keep` the data also becomes
    /// the channel's kept last message for that long (see
    /// [`HomeShard::keep`](crate::pubsub::home_shard::HomeShard::keep)),
    /// in the same step at the home shard.
    pub async fn publish_kept(
        &self,
        channel: &str,
        data: Bytes,
        exclude: Option<(usize, ConnKey)>,
        keep: Option<Duration>,
    ) -> Result<PublishResult, PublishError> {
        if let Some(bus) = self.via_bus() {
            return self.publish_on_bus(bus, channel, data, exclude).await;
        }
        let home = self.node.home_of(channel);
        if home == self.id {
            return self.publish_at_home(channel, data, exclude, keep);
        }
        let (tx, rx) = oneshot::channel();
        let msg = ShardMsg::Publish {
            channel: channel.into(),
            data,
            exclude,
            keep,
            reply: tx,
        };
        if self.node.mailboxes[home].try_push(msg).is_err() {
            ShardMetrics::inc(&self.metrics.publishes_overloaded);
            return Err(PublishError::Overloaded);
        }
        rx.await.map_err(|_| PublishError::Gone)?
    }

    /// The home shard's half of a publish: assign offset and id, build the
    /// frame once, deliver here and forward to interested shards. Refused,
    /// before anything is assigned, when a shard it would forward to has a
    /// full mailbox (the deliveries then bypass the bound; see
    /// [`mailbox`](super::mailbox)).
    pub(super) fn publish_at_home(
        &self,
        channel: &str,
        data: Bytes,
        exclude: Option<(usize, ConnKey)>,
        keep: Option<Duration>,
    ) -> Result<PublishResult, PublishError> {
        self.publish_at_home_with_id(channel, data, exclude, keep, None)
    }

    /// [`publish_at_home`](Self::publish_at_home) with the id a source
    /// supplies (`want`), kept when it is ahead of the node's ids, else
    /// replaced by the next one ([`Node::take_id`]).
    pub(super) fn publish_at_home_with_id(
        &self,
        channel: &str,
        data: Bytes,
        exclude: Option<(usize, ConnKey)>,
        keep: Option<Duration>,
        want: Option<u64>,
    ) -> Result<PublishResult, PublishError> {
        let node = &self.node;
        let ts = unix_ms() / 1000;
        let mut id = 0;
        let mut home = self.home.borrow_mut();
        // A user's personal channel goes to every shard: the user's
        // connections there receive it subscribed or not.
        let targets: Vec<usize> = match self.personal_user(channel) {
            Some(_) => (0..node.shards).collect(),
            None => home.interested(channel).collect(),
        };
        if targets
            .iter()
            .any(|&s| s != self.id && !node.mailboxes[s].has_room())
        {
            ShardMetrics::inc(&self.metrics.publishes_overloaded);
            return Err(PublishError::Overloaded);
        }
        let now = Instant::now();
        if let Some(keep) = keep {
            home.keep(channel, data.clone(), now + keep);
        }
        let published = home.publish(channel, now, |name, offset| {
            id = node.take_id(want);
            Publication::message(name, offset, id, ts, data)
        });
        ShardMetrics::inc(&self.metrics.publications);
        let p = &published.publication;
        self.fan_out_to(targets, p, exclude);
        Ok(PublishResult {
            offset: p.offset,
            id,
            subscribers: published.subscribers
                - usize::from(exclude.is_some()).min(published.subscribers),
        })
    }

    /// At the home shard: hands publication `p` of `channel` to every
    /// shard with subscribers of it (every shard for a user's personal
    /// channel), this one included, skipping `exclude`.
    pub(super) fn fan_out(
        &self,
        channel: &str,
        p: &Arc<Publication>,
        exclude: Option<(usize, ConnKey)>,
    ) {
        let targets: Vec<usize> = match self.personal_user(channel) {
            Some(_) => (0..self.node.shards).collect(),
            None => self.home.borrow().interested(channel).collect(),
        };
        self.fan_out_to(targets, p, exclude);
    }

    fn fan_out_to(
        &self,
        targets: Vec<usize>,
        p: &Arc<Publication>,
        exclude: Option<(usize, ConnKey)>,
    ) {
        for shard in targets {
            let ex = exclude.filter(|&(s, _)| s == shard).map(|(_, k)| k);
            if shard == self.id {
                self.deliver(p, ex);
            } else {
                self.node.mailboxes[shard].push(ShardMsg::Deliver {
                    publication: p.clone(),
                    exclude: ex,
                });
            }
        }
    }

    /// `notify_all`: one broadcast frame, delivered once per connection on
    /// every shard. Returns (id, connections reached), or
    /// [`PublishError::Overloaded`] (nothing sent) when a shard's mailbox
    /// is full.
    pub async fn broadcast(&self, data: Bytes) -> Result<(u64, usize), PublishError> {
        if let Some(bus) = self.via_bus() {
            return self.broadcast_on_bus(bus, data).await;
        }
        let others = (0..self.node.shards).filter(|&s| s != self.id);
        if others.clone().any(|s| !self.node.mailboxes[s].has_room()) {
            ShardMetrics::inc(&self.metrics.publishes_overloaded);
            return Err(PublishError::Overloaded);
        }
        let id = self.node.next_id();
        let p = Arc::new(Publication::broadcast(id, unix_ms() / 1000, data));
        let mut waits = Vec::new();
        for shard in others {
            let (tx, rx) = oneshot::channel();
            self.node.mailboxes[shard].push(ShardMsg::Broadcast {
                publication: p.clone(),
                reply: tx,
            });
            waits.push(rx);
        }
        let mut n = self.deliver_all(&p);
        for rx in waits {
            n += rx.await.unwrap_or(0);
        }
        Ok((id, n))
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
        let member = self.member_of(conn, channel);
        if let (Some(bus), true) = (&self.node.bus, home == self.id) {
            let (tx, rx) = oneshot::channel();
            self.home_subscribe_cluster(bus, channel.into(), self.id, cref, since, member, tx);
            return rx.await.map_err(|_| ShardGone);
        }
        if home == self.id {
            let outcome =
                self.home
                    .borrow_mut()
                    .subscribe(channel, self.id, since.as_ref(), Instant::now());
            if let Some(m) = member {
                self.home_join(channel, m);
            }
            self.fetch_kept(channel, &outcome);
            self.activate(conn, channel, &outcome);
            return Ok(SubscribeInfo::from(&outcome));
        }
        let (tx, rx) = oneshot::channel();
        self.node.mailboxes[home].push(ShardMsg::Subscribe {
            channel: channel.into(),
            from: self.id,
            conn: cref,
            since,
            member: member.map(Box::new),
            reply: tx,
        });
        rx.await.map_err(|_| ShardGone)
    }

    /// A channel's first subscriber, with nothing kept: asks the Redis
    /// source (if any) for ws4redis's persisted message of it (`GET`),
    /// which comes back as [`ShardMsg::Kept`].
    pub(super) fn fetch_kept(&self, channel: &str, outcome: &SubscribeOutcome) {
        let Some(redis) = &self.node.sources.redis else {
            return;
        };
        // Cluster mode: offsets are Redis's; a fetched message published
        // here alone would take one (docs/CLUSTER.md, limits).
        if self.node.bus.is_some() {
            return;
        }
        let w = &self.config().protocols.ws4redis;
        if outcome.first && outcome.kept.is_none() && w.expire > 0 {
            let prefix = crate::protocol::ws4redis::broadcast_channel(&w.prefix, "");
            if channel.starts_with(&prefix) {
                redis.fetch(channel, outcome.offset);
            }
        }
    }

    /// The Redis source's answer to [`fetch_kept`](Self::fetch_kept): the
    /// channel's persisted message and its time to live, for a first
    /// subscriber who joined at offset `joined`. Kept, and published to the
    /// channel's subscribers (who joined without it) unless a message was
    /// kept or published meanwhile
    /// ([`HomeShard::keep_fetched`](crate::pubsub::home_shard::HomeShard::keep_fetched)).
    pub(super) fn kept_from_source(&self, channel: &str, data: Bytes, ttl: Duration, joined: u64) {
        let now = Instant::now();
        if !self
            .home
            .borrow_mut()
            .keep_fetched(channel, data.clone(), now + ttl, now, joined)
        {
            return;
        }
        let _ = self.publish_at_home(channel, data, None, None);
    }

    pub(super) fn activate(&self, conn: &Rc<Conn>, channel: &str, outcome: &SubscribeOutcome) {
        let (name, change) = self.table.borrow_mut().subscribe(channel, conn.key);
        if matches!(change, Change::Changed { .. }) {
            let mut subs = conn.subs.borrow_mut();
            // Most connections hold a few channels: grow one at a time.
            subs.reserve_exact(1);
            subs.push(name);
        }
        let now = Instant::now();
        for p in &outcome.replay {
            self.offer(conn, self.frame_for(conn, p), now);
        }
    }

    /// Removes `conn` from `channel`; false if it was not subscribed.
    pub fn unsubscribe(&self, conn: &Conn, channel: &str) -> bool {
        let mut subs = conn.subs.borrow_mut();
        let Some(pos) = subs.iter().position(|c| &**c == channel) else {
            return false;
        };
        subs.swap_remove(pos);
        let len = subs.len();
        if subs.capacity() > 16 && len < subs.capacity() / 4 {
            subs.shrink_to(len * 2);
        }
        drop(subs);
        self.leave(channel, conn.key);
        true
    }

    pub(super) fn leave(&self, channel: &str, key: ConnKey) {
        let change = self.table.borrow_mut().unsubscribe(channel, key);
        if let Change::Changed { .. } = change {
            let home = self.node.home_of(channel);
            if home == self.id {
                self.home_leave(channel, self.id, key);
            } else {
                self.node.mailboxes[home].push(ShardMsg::Unsubscribe {
                    channel: channel.into(),
                    from: self.id,
                    conn: key,
                });
            }
        }
    }

    /// Asks the home shard of `channel`.
    pub async fn ask_home(&self, channel: &str, query: HomeQuery) -> Result<HomeAnswer, ShardGone> {
        if let Some(answer) = self.ask_bus(channel, &query).await {
            return Ok(answer);
        }
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

    pub(super) fn answer_home(&self, channel: &str, query: HomeQuery) -> HomeAnswer {
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
            HomeQuery::Presence { list } => HomeAnswer::Presence(home.presence(
                channel,
                list,
                super::identity::PRESENCE_LIST_MAX,
            )),
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
                self.node.mailboxes[shard].push(ShardMsg::Gather {
                    query: query.clone(),
                    reply: tx,
                });
                waits.push(Some(rx));
            }
        }
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            match w {
                None => out.push(self.report(&query)),
                Some(rx) => {
                    if let Ok(r) = rx.await {
                        out.push(r);
                    }
                }
            }
        }
        out
    }

    pub(super) fn report(&self, query: &Gather) -> ShardReport {
        let flushed = if *query == Gather::FlushDead {
            self.flush_dead()
        } else {
            0
        };
        let mut affected = 0;
        match query {
            Gather::DisconnectUser(user) => affected = self.disconnect_user(user),
            Gather::UnsubscribeUser { user, channel } => {
                affected = self.unsubscribe_user(user, channel)
            }
            Gather::Event { .. } => self.deliver_event(query),
            _ => {}
        }
        let table = self.table.borrow();
        let home = self.home.borrow();
        let owned = |v: Vec<(&str, usize)>| -> Vec<(String, usize)> {
            v.into_iter().map(|(c, n)| (c.to_owned(), n)).collect()
        };
        let (channels, more_channels) = match query {
            Gather::ChannelPage { after, limit } => {
                let (page, more) = home.channel_page(after.as_deref(), *limit);
                (owned(page), more)
            }
            Gather::TopChannels(n) => (owned(home.top_channels(*n)), false),
            _ => (Vec::new(), false),
        };
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
            channels,
            more_channels,
            flushed,
            internals: self.internals(),
            affected,
        }
    }

    /// The sizes of this shard's internal structures now.
    pub(super) fn internals(&self) -> Internals {
        let (shutdown_waiters, shutdown_waiter_slots) = self.shutdown.waiter_slots();
        let conns = self.conns.borrow();
        Internals {
            shutdown_waiters,
            shutdown_waiter_slots,
            conns: conns.len(),
            conn_slots: conns.capacity(),
            sessions: self.sessions.get(),
            idle_readers: self.idle_readers.as_ref().map_or(0, |i| i.parked()),
            channel_slots: self.table.borrow().channel_capacity(),
            home_channel_slots: self.home.borrow().channel_capacity(),
        }
    }

    /// Closes connections with a ping outstanding for over a second.
    pub(super) fn flush_dead(&self) -> usize {
        let now = Instant::now();
        let tick = Tick::of(now);
        let dead: Vec<Rc<Conn>> = self
            .conns
            .borrow()
            .iter()
            .filter(|c| {
                c.is_open()
                    && c.ping_sent
                        .get()
                        .is_some_and(|t| tick.since(t) >= Duration::from_secs(1))
            })
            .cloned()
            .collect();
        for c in &dead {
            self.close_conn(c, close_code::GOING_AWAY, "dead client", true, now);
        }
        dead.len()
    }
}
