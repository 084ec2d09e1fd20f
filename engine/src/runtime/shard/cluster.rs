//! Cluster mode on the shards (docs/CLUSTER.md): publishing through the
//! bus, a home channel's subscription on the bus (attach on the node's
//! first subscriber, detach on its last), applying the bus's publications
//! in offset order, and subscribers who wait for the bus (the channel's
//! position, or the stream for a recovery).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_channel::oneshot;

use super::*;
use crate::cluster::wire::BusEntry;
use crate::cluster::{Bus, BusRequest};
use crate::ops::config::BusLoss;
use crate::pubsub::home_shard::{BusLink, Member, Since, SubscribeOutcome};
use crate::pubsub::ops::{PublishResult, SubscribeInfo};
use crate::pubsub::publication::Publication;

/// A subscriber waiting at the home shard for the bus.
pub(super) struct Waiter {
    from: usize,
    conn: ConnRef,
    since: Option<Since>,
    reply: oneshot::Sender<SubscribeInfo>,
}

/// A home shard's waiting subscribers.
#[derive(Default)]
pub(crate) struct Parked {
    /// By channel, until its position comes (`BusAttached`).
    attaching: HashMap<Box<str>, Vec<Waiter>>,
    /// By recovery token, until the stream's answer (`BusRecovered`).
    recovering: HashMap<u64, (Box<str>, Waiter)>,
    /// Attach numbers and recovery tokens.
    seq: u64,
}

impl Shard {
    /// The bus publications go through now: cluster mode, unless the bus
    /// is down and `cluster.on_bus_loss = "local"`.
    pub(super) fn via_bus(&self) -> Option<&Arc<Bus>> {
        let bus = self.node.bus.as_ref()?;
        (bus.is_up() || self.config().cluster.on_bus_loss == BusLoss::Refuse).then_some(bus)
    }

    /// Publishes through the bus: Redis assigns the offset and id, keeps
    /// the history and sends the publication to every node attached to
    /// the channel, this one included. `subscribers` counts this node's.
    pub(super) async fn publish_on_bus(
        &self,
        bus: &Bus,
        channel: &str,
        data: Bytes,
        exclude: Option<(usize, ConnKey)>,
    ) -> Result<PublishResult, PublishError> {
        if !bus.is_up() {
            bus.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(PublishError::BusUnavailable);
        }
        let (reply, rx) = oneshot::channel();
        bus.send(BusRequest::Publish {
            channel: channel.into(),
            data,
            exclude,
            reply,
        });
        let mut r = rx.await.map_err(|_| PublishError::BusUnavailable)??;
        if let Ok(HomeAnswer::Total(n)) = self.ask_home(channel, HomeQuery::Total).await {
            r.subscribers = n.saturating_sub(usize::from(exclude.is_some()));
        }
        Ok(r)
    }

    /// A publish that reached the home shard's mailbox (from a message
    /// source) in cluster mode: sent on to the bus, which answers.
    pub(super) fn forward_to_bus(
        &self,
        bus: &Bus,
        channel: Box<str>,
        data: Bytes,
        exclude: Option<(usize, ConnKey)>,
        reply: oneshot::Sender<Result<PublishResult, PublishError>>,
    ) {
        if !bus.is_up() {
            let _ = reply.send(Err(PublishError::BusUnavailable));
            return;
        }
        bus.send(BusRequest::Publish {
            channel,
            data,
            exclude,
            reply,
        });
    }

    /// `notify_all` through the bus: every node delivers it to each of its
    /// connections once. Returns its id and this node's connections.
    pub(super) async fn broadcast_on_bus(
        &self,
        bus: &Bus,
        data: Bytes,
    ) -> Result<(u64, usize), PublishError> {
        if !bus.is_up() {
            return Err(PublishError::BusUnavailable);
        }
        let (reply, rx) = oneshot::channel();
        bus.send(BusRequest::Broadcast { data, reply });
        let id = rx.await.map_err(|_| PublishError::BusUnavailable)??;
        Ok((id, self.node.connection_count()))
    }

    /// Cluster mode with the bus up: the counts of every live node
    /// (heartbeats, `cluster.node_ttl`); `None` on a single node, while
    /// the bus is down or when Redis could not be read.
    pub(crate) async fn cluster_counts(&self) -> Option<crate::cluster::wire::ClusterCounts> {
        let bus = self.node.bus.as_ref().filter(|b| b.is_up())?;
        let (reply, rx) = oneshot::channel();
        bus.send(BusRequest::Counts { reply });
        rx.await.ok().flatten()
    }

    /// Cluster mode with the bus up: `history` and `last` answered from
    /// the channel's Redis stream and offset (cluster-wide), `None` for
    /// other questions, while the bus is down, or for a channel Redis does
    /// not know (the home shard answers then).
    pub(super) async fn ask_bus(&self, channel: &str, query: &HomeQuery) -> Option<HomeAnswer> {
        let bus = self.node.bus.as_ref().filter(|b| b.is_up())?;
        let (since, limit) = match query {
            HomeQuery::History { since, limit } => (since.clone(), *limit),
            HomeQuery::Last => (None, 0),
            _ => return None,
        };
        let (reply, rx) = oneshot::channel();
        bus.send(BusRequest::Read {
            channel: channel.into(),
            since,
            limit,
            reply,
        });
        let h = rx.await.ok().flatten()?;
        Some(match query {
            HomeQuery::Last => HomeAnswer::Last(h.offset, h.epoch),
            _ => HomeAnswer::History(h),
        })
    }

    fn next_seq(&self) -> u64 {
        let mut p = self.parked.borrow_mut();
        p.seq += 1;
        p.seq
    }

    /// At the channel's home shard, in cluster mode: one more subscriber
    /// on shard `from`. Its ack goes to `from`'s mailbox (this shard's
    /// too), in order with the deliveries, once the position is known:
    /// at once when the node is attached and the ring covers `since`;
    /// after the bus's position (first subscriber) or the stream's answer
    /// (a recovery) otherwise. While the bus is down, at once from what
    /// this node knows.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn home_subscribe_cluster(
        &self,
        bus: &Bus,
        channel: Box<str>,
        from: usize,
        conn: ConnRef,
        since: Option<Since>,
        member: Option<Member>,
        reply: oneshot::Sender<SubscribeInfo>,
    ) {
        let now = Instant::now();
        let outcome = self
            .home
            .borrow_mut()
            .subscribe(&channel, from, since.as_ref(), now);
        if let Some(m) = member {
            self.home_join(&channel, m);
        }
        let w = Waiter {
            from,
            conn,
            since,
            reply,
        };
        let link = self.home.borrow().bus_link(&channel);
        match link {
            BusLink::Attached => self.answer_or_recover(bus, channel, w, outcome),
            BusLink::Detached | BusLink::Attaching(_) => {
                if link == BusLink::Detached {
                    let gen = self.next_seq();
                    self.home
                        .borrow_mut()
                        .set_bus_link(&channel, BusLink::Attaching(gen));
                    bus.send(BusRequest::Attach {
                        channel: channel.clone(),
                        home: self.id,
                        gen,
                    });
                }
                if bus.is_up() {
                    let mut p = self.parked.borrow_mut();
                    p.attaching.entry(channel).or_default().push(w);
                } else {
                    self.ack(channel, w, outcome);
                }
            }
        }
    }

    /// Acks now when the ring recovers the subscriber (or nothing is to be
    /// recovered); else asks the stream.
    fn answer_or_recover(&self, bus: &Bus, channel: Box<str>, w: Waiter, o: SubscribeOutcome) {
        let after = match (&w.since, o.missed) {
            (Some(since), Some(_)) if bus.is_up() => match *since.epoch == *o.epoch {
                true => since.offset,
                false => 0,
            },
            _ => return self.ack(channel, w, o),
        };
        let token = self.next_seq();
        bus.send(BusRequest::Recover {
            channel: channel.clone(),
            home: self.id,
            token,
            after,
            limit: self.config().history_size(),
        });
        self.parked
            .borrow_mut()
            .recovering
            .insert(token, (channel, w));
    }

    fn ack(&self, channel: Box<str>, w: Waiter, outcome: SubscribeOutcome) {
        self.node.mailboxes[w.from].push(ShardMsg::SubscribeAck {
            channel,
            conn: w.conn,
            outcome,
            reply: w.reply,
        });
    }

    /// At the home shard, after a subscriber left: the node's last one
    /// of the channel detaches it from the bus.
    pub(super) fn detach_if_unwatched(&self, channel: &str) {
        let Some(bus) = &self.node.bus else { return };
        let mut home = self.home.borrow_mut();
        if home.total(channel) == 0 && home.bus_link(channel) != BusLink::Detached {
            home.set_bus_link(channel, BusLink::Detached);
            bus.send(BusRequest::Detach {
                channel: channel.into(),
            });
        }
    }

    /// `BusAttached`: the node is subscribed at `offset`; the waiting
    /// subscribers start there (or recover from the stream).
    pub(super) fn on_bus_attached(
        &self,
        channel: Box<str>,
        gen: u64,
        offset: u64,
        epoch: Arc<str>,
    ) {
        let Some(bus) = self.node.bus.clone() else {
            return;
        };
        {
            let mut home = self.home.borrow_mut();
            match home.bus_link(&channel) {
                BusLink::Attaching(g) if g == gen || g == 0 => {}
                _ => return,
            }
            home.sync(&channel, offset, epoch);
            home.set_bus_link(&channel, BusLink::Attached);
        }
        let waiters = self.parked.borrow_mut().attaching.remove(&channel);
        let now = Instant::now();
        for w in waiters.into_iter().flatten() {
            let o = self
                .home
                .borrow_mut()
                .position(&channel, w.since.as_ref(), now);
            self.answer_or_recover(&bus, channel.clone(), w, o);
        }
    }

    /// `BusDeliver`: the next publication of an attached channel.
    pub(super) fn on_bus_deliver(&self, channel: &str, e: BusEntry) {
        let published = {
            let mut home = self.home.borrow_mut();
            if home.bus_link(channel) != BusLink::Attached {
                return;
            }
            let (id, ts, data) = (e.id, e.ts_secs, e.data);
            home.apply(
                channel,
                e.offset,
                &e.epoch,
                Instant::now(),
                |name, offset| Publication::message(name, offset, id, ts, data),
            )
        };
        let Some(published) = published else { return };
        self.node.take_id(Some(e.id));
        ShardMetrics::inc(&self.metrics.publications);
        self.fan_out(channel, &published.publication, e.exclude);
    }

    /// `BusRecovered`: the stream's answer for a waiting subscriber.
    pub(super) fn on_bus_recovered(
        &self,
        channel: Box<str>,
        token: u64,
        entries: Option<Option<(Arc<str>, Vec<BusEntry>)>>,
    ) {
        let Some((_, w)) = self.parked.borrow_mut().recovering.remove(&token) else {
            return;
        };
        let Some(since) = w.since.clone() else {
            return;
        };
        let stream = entries.flatten().map(|(epoch, v)| {
            let pubs = v
                .into_iter()
                .map(|e| {
                    Arc::new(Publication::message(
                        Arc::from(&*channel),
                        e.offset,
                        e.id,
                        e.ts_secs,
                        e.data,
                    ))
                })
                .collect();
            (epoch, pubs)
        });
        let o = self
            .home
            .borrow_mut()
            .recovered(&channel, &since, stream, Instant::now());
        self.ack(channel, w, o);
    }

    /// `BusLost`: attached channels attach again when the bus is back;
    /// waiting subscribers are answered from what this node knows.
    pub(super) fn on_bus_lost(&self) {
        self.home.borrow_mut().bus_lost();
        let (attaching, recovering) = {
            let mut p = self.parked.borrow_mut();
            (
                std::mem::take(&mut p.attaching),
                std::mem::take(&mut p.recovering),
            )
        };
        let now = Instant::now();
        let waiters = attaching
            .into_iter()
            .flat_map(|(c, ws)| ws.into_iter().map(move |w| (c.clone(), w)))
            .chain(recovering.into_values());
        for (channel, w) in waiters {
            let o = self
                .home
                .borrow_mut()
                .position(&channel, w.since.as_ref(), now);
            self.ack(channel, w, o);
        }
    }
}
