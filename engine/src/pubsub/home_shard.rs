//! Per-channel state kept by the channel's home shard.
//!
//! Every channel has one home shard (`hash(channel) % shards`), the single
//! writer for it: it assigns offsets, owns the epoch and the history ring,
//! and knows how many subscribers each shard has, so a publication is
//! forwarded only to shards that want it. This module is the pure state
//! machine; the shard runtime moves its inputs and outputs between threads.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::pubsub::channel_table::{shrink_map, ConnKey};
use crate::pubsub::publication::Publication;

/// Which shard is home to `channel` among `shards`. Stable for the life of
/// the process (a fixed-key FxHash-style hash, not randomized per thread).
pub fn home_of(channel: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut h = FixedState.build_hasher();
    h.write(channel.as_bytes());
    (h.finish() % shards as u64) as usize
}

/// A deterministic hasher (FNV-1a, 64-bit): every shard must agree on homes.
#[derive(Clone, Copy, Default)]
struct FixedState;

struct Fnv(u64);

impl BuildHasher for FixedState {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A client's position in a channel, as sent in `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// The answer to a subscribe at the home shard.
#[derive(Debug, Clone)]
pub struct SubscribeOutcome {
    /// The channel's last offset at the moment of subscribing; the
    /// subscriber receives every later one live.
    pub offset: u64,
    pub epoch: Arc<str>,
    /// Present when `since` was given.
    pub recovered: Option<bool>,
    /// The range that was missed and cannot be replayed, inclusive.
    pub missed: Option<(u64, u64)>,
    /// Missed publications still in history, oldest first.
    pub replay: Vec<Arc<Publication>>,
    /// The channel's kept last message, if unexpired ([`HomeShard::keep`]).
    pub kept: Option<Bytes>,
    /// This is the channel's only subscriber (it had none before).
    pub first: bool,
}

/// The answer to `history`.
#[derive(Debug, Clone)]
pub struct HistoryOutcome {
    pub offset: u64,
    pub epoch: Arc<str>,
    pub publications: Vec<Arc<Publication>>,
}

struct HomeChannel {
    name: Arc<str>,
    last_offset: u64,
    epoch: Arc<str>,
    /// Subscribers per shard.
    counts: Vec<u32>,
    history: VecDeque<(Arc<Publication>, Instant)>,
    /// The last message kept for late joiners (ws4redis's SETEX), and
    /// when it expires.
    kept: Option<(Bytes, Instant)>,
    /// Who is subscribed, for channels whose namespace has presence or
    /// join/leave events (none, and no room, for the others).
    presence: Option<Box<Presence>>,
    /// Cluster mode: whether this node is subscribed on the bus.
    bus: BusLink,
}

/// Cluster mode: a channel's subscription on the bus (docs/CLUSTER.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BusLink {
    /// Not subscribed: the node's offset and ring are stale.
    #[default]
    Detached,
    /// Subscribing (attach number `gen`); subscribers wait for the
    /// position.
    Attaching(u64),
    /// Subscribed: publications arrive in offset order.
    Attached,
}

/// One subscriber as a channel's presence knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The subscriber's shard and connection key there.
    pub shard: usize,
    pub conn: ConnKey,
    /// The user id (`sub`), empty for an anonymous connection.
    pub user: Arc<str>,
    /// The token's `info` claim, compact JSON.
    pub info: Option<Arc<str>>,
}

/// A channel's subscribers, by (shard, connection), and its distinct users
/// with how many connections each (user ids interned per channel).
#[derive(Debug, Default)]
struct Presence {
    /// (shard, connection) → (user, info).
    members: HashMap<(usize, ConnKey), UserInfo>,
    users: HashMap<Arc<str>, u32>,
}

/// A member's user id and `info`.
type UserInfo = (Arc<str>, Option<Arc<str>>);

/// A channel's presence: the subscribers (when asked for and at most the
/// limit asked for), how many connections and distinct users.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceAnswer {
    /// Ordered by shard and connection key; `None` for counts only.
    pub list: Option<Vec<Member>>,
    pub clients: usize,
    pub users: usize,
}

impl HomeChannel {
    /// The kept message, dropped once expired.
    fn kept(&mut self, now: Instant) -> Option<Bytes> {
        if self.kept.as_ref().is_some_and(|(_, until)| now >= *until) {
            self.kept = None;
        }
        self.kept.as_ref().map(|(data, _)| data.clone())
    }

    fn total(&self) -> usize {
        self.counts.iter().map(|&c| c as usize).sum()
    }

    fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some((_, at)) = self.history.front() {
            if now.saturating_duration_since(*at) > ttl {
                self.history.pop_front();
            } else {
                break;
            }
        }
    }

    /// Publications with offset > `after`, at most `limit`, and the first
    /// offset after `after` that history could not supply (if any).
    fn after(&self, after: u64, limit: usize) -> (Vec<Arc<Publication>>, Option<u64>) {
        let oldest = self
            .history
            .front()
            .map_or(self.last_offset + 1, |(p, _)| p.offset);
        let gap_end = if after + 1 < oldest {
            Some(oldest - 1)
        } else {
            None
        };
        let pubs = self
            .history
            .iter()
            .filter(|(p, _)| p.offset > after)
            .take(limit)
            .map(|(p, _)| p.clone())
            .collect();
        (pubs, gap_end)
    }
}

/// What a publish did at the home shard.
#[derive(Debug)]
pub struct Published {
    pub publication: Arc<Publication>,
    /// Subscribers over all shards at the moment of publishing.
    pub subscribers: usize,
}

/// The state of every channel homed on one shard.
pub struct HomeShard {
    shards: usize,
    history_size: usize,
    history_ttl: Duration,
    /// Distinguishes this process's epochs from any earlier process's.
    epoch_prefix: String,
    epoch_seq: u64,
    channels: HashMap<Arc<str>, HomeChannel>,
}

impl HomeShard {
    /// `node_start_ms` makes epochs differ across restarts.
    pub fn new(
        shard: usize,
        shards: usize,
        history_size: usize,
        history_ttl: Duration,
        node_start_ms: u64,
    ) -> Self {
        HomeShard {
            shards,
            history_size,
            history_ttl,
            epoch_prefix: format!("{node_start_ms:x}{shard:02x}"),
            epoch_seq: 0,
            channels: HashMap::new(),
        }
    }

    fn channel(&mut self, name: &str) -> &mut HomeChannel {
        if !self.channels.contains_key(name) {
            self.epoch_seq += 1;
            let name: Arc<str> = Arc::from(name);
            let ch = HomeChannel {
                name: name.clone(),
                last_offset: 0,
                epoch: Arc::from(format!("{}{:x}", self.epoch_prefix, self.epoch_seq)),
                counts: vec![0; self.shards],
                history: VecDeque::new(),
                kept: None,
                presence: None,
                bus: BusLink::Detached,
            };
            self.channels.insert(name, ch);
        }
        match self.channels.get_mut(name) {
            Some(ch) => ch,
            None => unreachable!("inserted above"),
        }
    }

    /// Assigns the next offset of `channel` and builds the publication with
    /// `build(channel_name, offset)`; keeps it in history. Shards to forward
    /// to are those with `counts[shard] > 0`, see [`HomeShard::interested`].
    pub fn publish(
        &mut self,
        channel: &str,
        now: Instant,
        build: impl FnOnce(Arc<str>, u64) -> Publication,
    ) -> Published {
        let (size, ttl) = (self.history_size, self.history_ttl);
        let ch = self.channel(channel);
        ch.last_offset += 1;
        let publication = Arc::new(build(ch.name.clone(), ch.last_offset));
        if size > 0 {
            ch.expire(now, ttl);
            if ch.history.len() == size {
                ch.history.pop_front();
            }
            ch.history.push_back((publication.clone(), now));
        }
        Published {
            publication,
            subscribers: ch.total(),
        }
    }

    /// Keeps `data` as `channel`'s last message until `until` (replacing
    /// any earlier one): every subscriber joining before then receives it
    /// first (ws4redis's `SETEX` and `GET`).
    pub fn keep(&mut self, channel: &str, data: Bytes, until: Instant) {
        self.channel(channel).kept = Some((data, until));
    }

    /// A persisted message fetched from a message source for the channel's
    /// first subscriber, who joined at offset `joined`: kept until `until`
    /// unless a message was kept meanwhile. Whether to publish it to the
    /// current subscribers: only if it was kept and nothing was published
    /// to the channel since `joined` (they have the same or a newer
    /// message already; it stays kept for later joiners).
    pub fn keep_fetched(
        &mut self,
        channel: &str,
        data: Bytes,
        until: Instant,
        now: Instant,
        joined: u64,
    ) -> bool {
        let ch = self.channel(channel);
        if ch.kept(now).is_some() {
            return false;
        }
        ch.kept = Some((data, until));
        ch.last_offset == joined
    }

    /// Shards with subscribers of `channel`.
    pub fn interested(&self, channel: &str) -> impl Iterator<Item = usize> + '_ {
        self.channels.get(channel).into_iter().flat_map(|ch| {
            ch.counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(s, _)| s)
        })
    }

    /// Registers one more subscriber on `shard` and says where it starts.
    pub fn subscribe(
        &mut self,
        channel: &str,
        shard: usize,
        since: Option<&Since>,
        now: Instant,
    ) -> SubscribeOutcome {
        let ch = self.channel(channel);
        let first = ch.total() == 0;
        ch.counts[shard] += 1;
        let mut out = self.position(channel, since, now);
        out.first = first;
        out
    }

    /// Where a subscriber joining now starts, and what it missed since
    /// `since` that history holds (as [`subscribe`](Self::subscribe),
    /// without counting it).
    pub fn position(
        &mut self,
        channel: &str,
        since: Option<&Since>,
        now: Instant,
    ) -> SubscribeOutcome {
        let ttl = self.history_ttl;
        let ch = self.channel(channel);
        let first = false;
        ch.expire(now, ttl);
        let mut out = SubscribeOutcome {
            offset: ch.last_offset,
            epoch: ch.epoch.clone(),
            recovered: None,
            missed: None,
            replay: Vec::new(),
            kept: ch.kept(now),
            first,
        };
        let Some(since) = since else { return out };
        let same_epoch = *since.epoch == *ch.epoch;
        // In another epoch the client's offsets mean nothing here: everything
        // of this epoch is new to it, and what came before is unknowable.
        let after = if same_epoch {
            since.offset.min(ch.last_offset)
        } else {
            0
        };
        let (replay, gap_end) = ch.after(after, usize::MAX);
        out.replay = replay;
        out.missed = gap_end.map(|end| (after + 1, end));
        out.recovered = Some(same_epoch && gap_end.is_none());
        out
    }

    /// Cluster mode: the channel's subscription on the bus.
    pub fn bus_link(&self, channel: &str) -> BusLink {
        self.channels
            .get(channel)
            .map_or(BusLink::Detached, |c| c.bus)
    }

    /// Cluster mode: sets the channel's bus subscription state; detached,
    /// its ring no longer follows the channel and is dropped.
    pub fn set_bus_link(&mut self, channel: &str, link: BusLink) {
        let ch = self.channel(channel);
        ch.bus = link;
        if link == BusLink::Detached {
            ch.history.clear();
        }
    }

    /// Cluster mode: every attached channel's subscription is gone (the
    /// bus was lost); they are attaching again.
    pub fn bus_lost(&mut self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for ch in self.channels.values_mut() {
            if ch.bus == BusLink::Attached {
                ch.bus = BusLink::Attaching(0);
                out.push(ch.name.clone());
            }
        }
        out
    }

    /// Cluster mode: the bus says the channel is at `offset` in `epoch`
    /// (attached, or attached again). The ring is kept only if it still
    /// ends there.
    pub fn sync(&mut self, channel: &str, offset: u64, epoch: Arc<str>) {
        let ch = self.channel(channel);
        if ch.last_offset != offset || ch.epoch != epoch {
            ch.history.clear();
        }
        ch.last_offset = offset;
        ch.epoch = epoch;
    }

    /// Cluster mode: the next publication from the bus, with the offset
    /// and epoch Redis assigned; `None` for one already applied. A jump
    /// in offsets (what the stream no longer held) or a new epoch starts
    /// the ring over, so the ring is always gap-free.
    pub fn apply(
        &mut self,
        channel: &str,
        offset: u64,
        epoch: &Arc<str>,
        now: Instant,
        build: impl FnOnce(Arc<str>, u64) -> Publication,
    ) -> Option<Published> {
        let (size, ttl) = (self.history_size, self.history_ttl);
        let ch = self.channel(channel);
        if ch.epoch == *epoch && offset <= ch.last_offset {
            return None;
        }
        if ch.epoch != *epoch || offset != ch.last_offset + 1 {
            ch.history.clear();
            ch.epoch = epoch.clone();
        }
        ch.last_offset = offset;
        let publication = Arc::new(build(ch.name.clone(), offset));
        if size > 0 {
            ch.expire(now, ttl);
            if ch.history.len() == size {
                ch.history.pop_front();
            }
            ch.history.push_back((publication.clone(), now));
        }
        Some(Published {
            publication,
            subscribers: ch.total(),
        })
    }

    /// Cluster mode: a subscriber's position when the ring alone could not
    /// recover it and the stream was read: `stream` is the channel's epoch
    /// in Redis and the stream's publications after `since` (`None` when
    /// Redis could not be read). The replay is the stream's publications
    /// then the ring's later ones (those that arrived meanwhile), gap-free
    /// from `since`; what neither holds is the missed range.
    pub fn recovered(
        &mut self,
        channel: &str,
        since: &Since,
        stream: Option<(Arc<str>, Vec<Arc<Publication>>)>,
        now: Instant,
    ) -> SubscribeOutcome {
        let mut out = self.position(channel, Some(since), now);
        let Some((epoch, pubs)) = stream else {
            return out;
        };
        if epoch != out.epoch {
            return out;
        }
        let same_epoch = *since.epoch == *out.epoch;
        let after = if same_epoch {
            since.offset.min(out.offset)
        } else {
            0
        };
        let mut replay: Vec<Arc<Publication>> = Vec::new();
        let mut next = after + 1;
        let mut missed = None;
        let ring = std::mem::take(&mut out.replay);
        for p in pubs.into_iter().chain(ring) {
            if p.offset < next || p.offset > out.offset {
                continue;
            }
            if p.offset > next && missed.is_none() {
                missed = Some((next, p.offset - 1));
            }
            next = p.offset + 1;
            replay.push(p);
        }
        if next <= out.offset && missed.is_none() {
            missed = Some((next, out.offset));
        }
        out.replay = replay;
        out.recovered = Some(same_epoch && missed.is_none());
        out.missed = missed;
        out
    }

    /// One subscriber on `shard` left `channel`. A channel left with no
    /// subscribers and nothing ever published is forgotten at once (as
    /// [`HomeShard::prune`] would: it has no history to keep).
    pub fn unsubscribe(&mut self, channel: &str, shard: usize) {
        if let Some(ch) = self.channels.get_mut(channel) {
            ch.counts[shard] = ch.counts[shard].saturating_sub(1);
            if ch.last_offset == 0
                && ch.total() == 0
                && ch.kept.is_none()
                && ch.bus == BusLink::Detached
            {
                self.channels.remove(channel);
                shrink_map(&mut self.channels);
            }
        }
    }

    /// Records `m` in the channel's presence (call with its subscribe).
    pub fn join(&mut self, channel: &str, m: Member) {
        let p = self
            .channel(channel)
            .presence
            .get_or_insert_with(Box::default);
        let user = match p.users.get_key_value(&*m.user) {
            Some((k, _)) => k.clone(),
            None => m.user,
        };
        if p.members
            .insert((m.shard, m.conn), (user.clone(), m.info))
            .is_none()
        {
            *p.users.entry(user).or_insert(0) += 1;
        }
    }

    /// Takes connection `conn` of `shard` out of the channel's presence
    /// (call with its unsubscribe): who it was, if it was there.
    pub fn leave(&mut self, channel: &str, shard: usize, conn: ConnKey) -> Option<Member> {
        let ch = self.channels.get_mut(channel)?;
        let p = ch.presence.as_mut()?;
        let (user, info) = p.members.remove(&(shard, conn))?;
        if let Some(n) = p.users.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                p.users.remove(&user);
            }
        }
        if p.members.is_empty() {
            ch.presence = None;
        } else {
            shrink_map(&mut p.members);
            shrink_map(&mut p.users);
        }
        Some(Member {
            shard,
            conn,
            user,
            info,
        })
    }

    /// The channel's presence; the list (with `list`) only when it has at
    /// most `max` subscribers, counts alone for a bigger channel.
    pub fn presence(&self, channel: &str, list: bool, max: usize) -> PresenceAnswer {
        let Some(p) = self.channels.get(channel).and_then(|c| c.presence.as_ref()) else {
            return PresenceAnswer {
                list: list.then(Vec::new),
                ..PresenceAnswer::default()
            };
        };
        let clients = p.members.len();
        let list = (list && clients <= max).then(|| {
            let mut v: Vec<Member> = p
                .members
                .iter()
                .map(|(&(shard, conn), (user, info))| Member {
                    shard,
                    conn,
                    user: user.clone(),
                    info: info.clone(),
                })
                .collect();
            v.sort_unstable_by_key(|m| (m.shard, m.conn));
            v
        });
        PresenceAnswer {
            list,
            clients,
            users: p.users.len(),
        }
    }

    /// `history`: publications after `since` (or all kept), at most `limit`.
    pub fn history(
        &mut self,
        channel: &str,
        since: Option<&Since>,
        limit: usize,
        now: Instant,
    ) -> HistoryOutcome {
        let ttl = self.history_ttl;
        let ch = self.channel(channel);
        ch.expire(now, ttl);
        let after = match since {
            Some(s) if *s.epoch == *ch.epoch => s.offset,
            _ => 0,
        };
        HistoryOutcome {
            offset: ch.last_offset,
            epoch: ch.epoch.clone(),
            publications: ch.after(after, limit).0,
        }
    }

    /// The channel's last offset and epoch (`last`).
    pub fn last(&mut self, channel: &str) -> (u64, Arc<str>) {
        let ch = self.channel(channel);
        (ch.last_offset, ch.epoch.clone())
    }

    /// Subscribers of `channel` over all shards.
    pub fn total(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, HomeChannel::total)
    }

    /// Channels with subscribers, with their totals.
    pub fn channels_with_subscribers(&self) -> impl Iterator<Item = (&str, usize)> {
        self.channels
            .values()
            .map(|ch| (&*ch.name, ch.total()))
            .filter(|&(_, n)| n > 0)
    }

    /// A page of the channels with subscribers, in name order: the names
    /// after `after` (all when `None`), at most `limit`, and whether more
    /// follow. Walks every channel once but holds only `limit + 1` of
    /// them, however many there are.
    pub fn channel_page(&self, after: Option<&str>, limit: usize) -> (Vec<(&str, usize)>, bool) {
        let mut keep: BinaryHeap<(&str, usize)> = BinaryHeap::with_capacity(limit.min(4096) + 1);
        for (name, n) in self.channels_with_subscribers() {
            if after.is_some_and(|a| name <= a) {
                continue;
            }
            if keep.len() <= limit {
                keep.push((name, n));
            } else if keep.peek().is_some_and(|&(last, _)| name < last) {
                keep.pop();
                keep.push((name, n));
            }
        }
        let mut page = keep.into_sorted_vec();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    /// The `n` channels with the most subscribers, most first (ties by
    /// name), holding only `n` of them while walking every channel.
    pub fn top_channels(&self, n: usize) -> Vec<(&str, usize)> {
        // A min-heap on (subscribers, reversed name): its top is the one to drop.
        let mut keep: BinaryHeap<Reverse<(usize, Reverse<&str>)>> =
            BinaryHeap::with_capacity(n + 1);
        for (name, count) in self.channels_with_subscribers() {
            keep.push(Reverse((count, Reverse(name))));
            if keep.len() > n {
                keep.pop();
            }
        }
        keep.into_sorted_vec()
            .into_iter()
            .map(|Reverse((count, Reverse(name)))| (name, count))
            .collect()
    }

    /// Drops expired history and kept messages, and forgets channels with
    /// no subscribers, no history and no kept message left (their next publication starts a new epoch).
    pub fn prune(&mut self, now: Instant) {
        let ttl = self.history_ttl;
        self.channels.retain(|_, ch| {
            ch.expire(now, ttl);
            ch.total() > 0 || !ch.history.is_empty() || ch.kept(now).is_some()
        });
        shrink_map(&mut self.channels);
    }

    /// Bytes held by the channel map itself, at capacity.
    pub fn heap_size(&self) -> usize {
        self.channels.capacity() * (std::mem::size_of::<(Arc<str>, HomeChannel)>() + 1)
    }

    /// Channels homed here (with or without subscribers).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Channels the map has room for without growing.
    pub fn channel_capacity(&self) -> usize {
        self.channels.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn home(size: usize) -> HomeShard {
        HomeShard::new(0, 2, size, Duration::from_secs(300), 1)
    }

    fn publish(h: &mut HomeShard, ch: &str, now: Instant) -> Published {
        h.publish(ch, now, |name, off| {
            Publication::message(name, off, off, 0, Bytes::from_static(b"1"))
        })
    }

    #[test]
    fn homes_are_stable_and_spread() {
        assert_eq!(home_of("anything", 1), 0);
        let a = home_of("chat", 4);
        assert_eq!(a, home_of("chat", 4));
        let mut seen = [false; 4];
        for i in 0..64 {
            seen[home_of(&format!("c{i}"), 4)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn offsets_are_gap_free_and_counts_route() {
        let now = Instant::now();
        let mut h = home(8);
        assert_eq!(publish(&mut h, "a", now).publication.offset, 1);
        let s = h.subscribe("a", 1, None, now);
        assert_eq!(s.offset, 1);
        assert_eq!(s.recovered, None);
        let p = publish(&mut h, "a", now);
        assert_eq!((p.publication.offset, p.subscribers), (2, 1));
        assert_eq!(h.interested("a").collect::<Vec<_>>(), vec![1]);
        h.unsubscribe("a", 1);
        assert_eq!(h.interested("a").count(), 0);
        assert_eq!(h.total("a"), 0);
    }

    #[test]
    fn since_in_history_recovers_everything() {
        let now = Instant::now();
        let mut h = home(8);
        for _ in 0..5 {
            publish(&mut h, "a", now);
        }
        let (_, epoch) = h.last("a");
        let s = h.subscribe(
            "a",
            0,
            Some(&Since {
                offset: 2,
                epoch: epoch.to_string(),
            }),
            now,
        );
        assert_eq!(s.recovered, Some(true));
        assert_eq!(s.missed, None);
        assert_eq!(
            s.replay.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(s.offset, 5);
    }

    #[test]
    fn since_past_the_ring_names_the_missing_range() {
        let now = Instant::now();
        let mut h = home(3);
        for _ in 0..10 {
            publish(&mut h, "a", now);
        }
        let (_, epoch) = h.last("a");
        let s = h.subscribe(
            "a",
            0,
            Some(&Since {
                offset: 4,
                epoch: epoch.to_string(),
            }),
            now,
        );
        assert_eq!(s.recovered, Some(false));
        assert_eq!(s.missed, Some((5, 7)));
        assert_eq!(
            s.replay.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
    }

    #[test]
    fn other_epoch_is_not_recovered() {
        let now = Instant::now();
        let mut h = home(8);
        publish(&mut h, "a", now);
        let s = h.subscribe(
            "a",
            0,
            Some(&Since {
                offset: 1,
                epoch: "old".into(),
            }),
            now,
        );
        assert_eq!(s.recovered, Some(false));
        assert_eq!(s.replay.len(), 1);
    }

    #[test]
    fn channel_pages_walk_every_channel_once_in_name_order() {
        let mut h = home(0);
        let now = Instant::now();
        for i in 0..25 {
            for _ in 0..(i % 4) {
                h.subscribe(&format!("c{i:02}"), 0, None, now);
            }
        }
        // c00, c04, ... have no subscribers and are left out.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let (page, more) = h.channel_page(cursor.as_deref(), 7);
            assert!(page.len() <= 7);
            seen.extend(page.iter().map(|&(c, n)| (c.to_owned(), n)));
            if !more {
                break;
            }
            cursor = page.last().map(|(c, _)| c.to_string());
        }
        let want: Vec<_> = (0..25)
            .filter(|i| i % 4 != 0)
            .map(|i| (format!("c{i:02}"), i % 4))
            .collect();
        assert_eq!(seen, want);
        assert_eq!(h.channel_page(Some("c23"), 7), (vec![], false));
        assert!(!h.channel_page(None, 18).1);
        assert!(h.channel_page(None, 17).1);
        let top = h.top_channels(3);
        assert_eq!(top, vec![("c03", 3), ("c07", 3), ("c11", 3)]);
    }

    #[test]
    fn forgotten_channels_give_their_memory_back() {
        let mut h = home(4);
        let now = Instant::now();
        let empty = h.heap_size();
        for i in 0..10_000 {
            h.subscribe(&format!("c{i}"), 1, None, now);
        }
        publish(&mut h, "c0", now);
        assert!(h.heap_size() > 500_000);
        for i in 0..10_000 {
            h.unsubscribe(&format!("c{i}"), 1);
        }
        // Never published: forgotten at once; c0 keeps its history.
        assert_eq!(h.channel_count(), 1);
        assert!(h.heap_size() < empty + 16 * 1024, "{}", h.heap_size());
        h.prune(now + Duration::from_secs(301));
        assert_eq!(h.channel_count(), 0);
    }

    #[test]
    fn a_fetched_message_is_sent_only_if_nothing_went_out_since_joining() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(5);
        let mut h = HomeShard::new(0, 1, 0, Duration::from_secs(10), 1);
        let joined = h.subscribe("k", 0, None, t0).offset;
        assert!(h.keep_fetched("k", Bytes::from_static(b"p"), until, t0, joined));
        // Kept already: a second answer neither replaces nor goes out.
        assert!(!h.keep_fetched("k", Bytes::from_static(b"q"), until, t0, joined));
        assert_eq!(
            h.subscribe("k", 0, None, t0).kept.as_deref(),
            Some(&b"p"[..])
        );

        // A live message reached the subscriber of "j" before the fetched
        // one: the fetched one is kept for later joiners, not sent.
        let joined = h.subscribe("j", 0, None, t0).offset;
        h.publish("j", t0, |ch, off| {
            Publication::message(ch, off, off, 0, Bytes::from_static(b"p"))
        });
        assert!(!h.keep_fetched("j", Bytes::from_static(b"p"), until, t0, joined));
        assert_eq!(
            h.subscribe("j", 0, None, t0).kept.as_deref(),
            Some(&b"p"[..])
        );
    }

    #[test]
    fn kept_message_goes_to_joiners_until_it_expires() {
        let t0 = Instant::now();
        let mut h = HomeShard::new(0, 1, 0, Duration::from_secs(10), 1);
        h.keep("k", Bytes::from_static(b"old"), t0 + Duration::from_secs(5));
        h.keep("k", Bytes::from_static(b"new"), t0 + Duration::from_secs(5));
        let o = h.subscribe("k", 0, None, t0 + Duration::from_secs(1));
        assert_eq!(o.kept.as_deref(), Some(&b"new"[..]));
        h.unsubscribe("k", 0);
        // Kept with no subscriber and no history: the channel stays until
        // the message expires.
        h.prune(t0 + Duration::from_secs(4));
        assert_eq!(h.channel_count(), 1);
        let o = h.subscribe("k", 0, None, t0 + Duration::from_secs(5));
        assert_eq!(o.kept, None);
        h.unsubscribe("k", 0);
        h.prune(t0 + Duration::from_secs(6));
        assert_eq!(h.channel_count(), 0);
    }

    #[test]
    fn history_expires_and_channels_are_pruned() {
        let t0 = Instant::now();
        let mut h = HomeShard::new(0, 1, 8, Duration::from_secs(10), 1);
        publish(&mut h, "a", t0);
        let (_, e1) = h.last("a");
        let later = t0 + Duration::from_secs(11);
        assert!(h.history("a", None, 100, later).publications.is_empty());
        h.prune(later);
        assert_eq!(h.channel_count(), 0);
        let (off, e2) = h.last("a");
        assert_eq!(off, 0);
        assert_ne!(e1, e2);
    }

    #[test]
    fn history_limit_and_since() {
        let now = Instant::now();
        let mut h = home(64);
        for _ in 0..10 {
            publish(&mut h, "a", now);
        }
        let (_, epoch) = h.last("a");
        let r = h.history(
            "a",
            Some(&Since {
                offset: 6,
                epoch: epoch.to_string(),
            }),
            2,
            now,
        );
        assert_eq!(
            r.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![7, 8]
        );
        assert_eq!(r.offset, 10);
    }

    fn msg(ch: &str, off: u64) -> Arc<Publication> {
        Arc::new(Publication::message(
            Arc::from(ch),
            off,
            off,
            0,
            Bytes::from_static(b"1"),
        ))
    }

    fn apply(h: &mut HomeShard, off: u64, epoch: &Arc<str>, now: Instant) -> Option<u64> {
        h.apply("a", off, epoch, now, |name, o| {
            Publication::message(name, o, o, 0, Bytes::from_static(b"1"))
        })
        .map(|p| p.publication.offset)
    }

    #[test]
    fn bus_publications_apply_once_and_a_jump_restarts_the_ring() {
        let now = Instant::now();
        let mut h = home(8);
        let e: Arc<str> = Arc::from("e1");
        h.sync("a", 4, e.clone());
        assert_eq!(h.last("a"), (4, e.clone()));
        assert_eq!(apply(&mut h, 4, &e, now), None, "already counted");
        assert_eq!(apply(&mut h, 5, &e, now), Some(5));
        assert_eq!(apply(&mut h, 6, &e, now), Some(6));
        let since = |o: u64, e: &str| Since {
            offset: o,
            epoch: e.into(),
        };
        let p = h.position("a", Some(&since(4, "e1")), now);
        assert_eq!(p.recovered, Some(true));
        assert_eq!(p.replay.len(), 2);
        // The stream lost 7..=8: the ring starts over at 9.
        assert_eq!(apply(&mut h, 9, &e, now), Some(9));
        let p = h.position("a", Some(&since(6, "e1")), now);
        assert_eq!((p.recovered, p.missed), (Some(false), Some((7, 8))));
        // A new epoch starts over too.
        let f: Arc<str> = Arc::from("e2");
        assert_eq!(apply(&mut h, 1, &f, now), Some(1));
        assert_eq!(h.last("a"), (1, f));
    }

    #[test]
    fn recovery_joins_the_stream_and_the_ring_and_names_what_neither_has() {
        let now = Instant::now();
        let mut h = home(8);
        let e: Arc<str> = Arc::from("e1");
        h.sync("a", 10, e.clone());
        for off in 11..=12 {
            apply(&mut h, off, &e, now);
        }
        let since = Since {
            offset: 3,
            epoch: "e1".into(),
        };
        // The stream holds 4..=11 (read while 12 arrived).
        let stream: Vec<_> = (4..=11).map(|o| msg("a", o)).collect();
        let o = h.recovered("a", &since, Some((e.clone(), stream)), now);
        assert_eq!((o.recovered, o.missed, o.offset), (Some(true), None, 12));
        let offs: Vec<u64> = o.replay.iter().map(|p| p.offset).collect();
        assert_eq!(offs, (4..=12).collect::<Vec<_>>());
        // The stream only reaches back to 8: 4..=7 are missed.
        let stream: Vec<_> = (8..=10).map(|o| msg("a", o)).collect();
        let o = h.recovered("a", &since, Some((e.clone(), stream)), now);
        assert_eq!((o.recovered, o.missed), (Some(false), Some((4, 7))));
        assert_eq!(o.replay.first().map(|p| p.offset), Some(8));
        assert_eq!(o.replay.last().map(|p| p.offset), Some(12));
        // Redis unreadable, or in another epoch: the ring alone.
        let o = h.recovered("a", &since, None, now);
        assert_eq!((o.recovered, o.missed), (Some(false), Some((4, 10))));
        let o = h.recovered("a", &since, Some((Arc::from("x"), vec![msg("a", 4)])), now);
        assert_eq!(o.missed, Some((4, 10)));
    }

    #[test]
    fn an_attached_channel_is_kept_until_detached() {
        let now = Instant::now();
        let mut h = home(8);
        h.subscribe("a", 0, None, now);
        h.set_bus_link("a", BusLink::Attaching(1));
        h.unsubscribe("a", 0);
        assert_eq!(h.bus_link("a"), BusLink::Attaching(1));
        h.set_bus_link("a", BusLink::Attached);
        assert_eq!(h.bus_lost(), vec![Arc::<str>::from("a")]);
        assert_eq!(h.bus_link("a"), BusLink::Attaching(0));
        h.set_bus_link("a", BusLink::Detached);
        h.prune(now);
        assert_eq!(h.channel_count(), 0);
    }

    fn member(shard: usize, conn: ConnKey, user: &str) -> Member {
        Member {
            shard,
            conn,
            user: user.into(),
            info: (user == "bob").then(|| r#"{"name":"Bob"}"#.into()),
        }
    }

    #[test]
    fn presence_is_kept_per_channel_and_counts_distinct_users() {
        let mut h = HomeShard::new(0, 2, 10, Duration::from_secs(60), 1);
        let now = Instant::now();
        for (shard, conn, user) in [(1, 7, "ann"), (0, 3, "ann"), (0, 4, "bob"), (1, 2, "")] {
            h.subscribe("room", shard, None, now);
            h.join("room", member(shard, conn, user));
        }
        let p = h.presence("room", true, 10);
        assert_eq!((p.clients, p.users), (4, 3));
        let list = p.list.unwrap();
        let order: Vec<_> = list.iter().map(|m| (m.shard, m.conn)).collect();
        assert_eq!(order, [(0, 3), (0, 4), (1, 2), (1, 7)]);
        assert_eq!(list[1], member(0, 4, "bob"));
        // Over the limit: counts without the list.
        let p = h.presence("room", true, 3);
        assert_eq!((p.list, p.clients, p.users), (None, 4, 3));
        // Leaving gives back who left; the user stays while one is left.
        assert_eq!(h.leave("room", 1, 7), Some(member(1, 7, "ann")));
        assert_eq!(h.leave("room", 1, 7), None);
        h.unsubscribe("room", 1);
        assert_eq!(h.presence("room", false, 10).users, 3);
        h.leave("room", 0, 3);
        h.unsubscribe("room", 0);
        assert_eq!(h.presence("room", false, 10).users, 2);
        for (shard, conn) in [(0, 4), (1, 2)] {
            h.leave("room", shard, conn);
            h.unsubscribe("room", shard);
        }
        assert_eq!(
            h.presence("room", true, 10),
            PresenceAnswer {
                list: Some(Vec::new()),
                clients: 0,
                users: 0
            }
        );
        assert_eq!(h.channel_count(), 0, "nothing left to keep");
    }
}
