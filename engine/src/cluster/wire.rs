//! The cluster bus's wire facts, without I/O: Redis key names, the bus
//! message format, and [`ChannelSync`], the per-channel sequencer that
//! passes each publication on once, in offset order, and names gaps.
#![forbid(unsafe_code)]

use std::sync::Arc;

use bytes::Bytes;

use crate::pubsub::channel_table::ConnKey;

/// The pub/sub channel carrying `notify_all` broadcasts to every node.
pub const BROADCAST_CHANNEL: &str = "rc:bcast";
/// The key of the broadcast id clock.
pub const BROADCAST_ID_KEY: &str = "rc:{bcast}:i";
/// Standalone Redis: the one id clock of every channel.
pub const ID_KEY: &str = "rc:id";

/// A channel's Redis names. Every one is hash-tagged with the channel
/// (`{CH}`), so they share a slot in Redis Cluster and one script may
/// touch them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Hash: `o` last offset, `e` epoch, `i` last id.
    pub meta: String,
    /// Stream: entry `OFFSET-0` with `d` data, `i` id, `t` Unix ms.
    pub stream: String,
    /// Pub/sub channel of the live publications.
    pub pubsub: String,
    /// Hash: the channel's presence, [`member_field`] → [`member_value`].
    pub presence: String,
}

impl Keys {
    pub fn of(channel: &str) -> Keys {
        Keys {
            meta: format!("rc:{{{channel}}}:m"),
            stream: format!("rc:{{{channel}}}:s"),
            pubsub: pubsub_channel(channel),
            presence: format!("rc:{{{channel}}}:p"),
        }
    }
}

/// The pub/sub channel of `channel`'s publications.
pub fn pubsub_channel(channel: &str) -> String {
    format!("rc:{{{channel}}}")
}

/// The ringcast channel a bus pub/sub channel carries, if it is one.
pub fn channel_of(pubsub: &str) -> Option<&str> {
    pubsub.strip_prefix("rc:{")?.strip_suffix('}')
}

/// Where the bus is: one Redis (standalone, or a Sentinel-managed
/// master's address), or a Redis Cluster given by some of its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Single(String),
    /// `redis+cluster://h1:p1,h2:p2` as `redis://h1:p1`, `redis://h2:p2`.
    Cluster(Vec<String>),
}

impl Target {
    /// Reads `cluster.redis`.
    pub fn parse(url: &str) -> Result<Target, String> {
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((a, h)) => (format!("{a}@"), h),
                None => (String::new(), rest),
            };
            let hosts = hosts.trim_end_matches('/');
            let nodes: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{auth}{h}"))
                .collect();
            if nodes.is_empty() || hosts.contains('/') {
                return Err(format!(
                    "redis+cluster:// needs host:port[,host:port...] (got {url:?})"
                ));
            }
            return Ok(Target::Cluster(nodes));
        }
        if ["redis://", "rediss://"].iter().any(|s| url.starts_with(s)) {
            return Ok(Target::Single(url.to_owned()));
        }
        Err(format!(
            "must be a redis://, rediss:// or redis+cluster:// URL (got {url:?})"
        ))
    }
}

/// One publication as the bus carries it (and the stream keeps it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusEntry {
    pub offset: u64,
    pub id: u64,
    /// Unix seconds.
    pub ts_secs: u64,
    pub epoch: Arc<str>,
    pub data: Bytes,
    /// The sender to skip (`send_data`), on the origin node only.
    pub exclude: Option<(usize, ConnKey)>,
}

/// Why a bus message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed bus message: {0}")]
pub struct WireError(&'static str);

/// The header the publish script writes before the data:
/// `OFFSET ID TS EPOCH ORIGIN EXCLUDE\n` (EXCLUDE is `shard:conn` or `-`).
pub fn encode_exclude(exclude: Option<(usize, ConnKey)>) -> String {
    match exclude {
        Some((shard, conn)) => format!("{shard}:{conn}"),
        None => "-".into(),
    }
}

/// Reads a bus message; `node` is this node's id: the exclusion applies
/// only to messages this node published.
pub fn parse_message(msg: &[u8], node: &str) -> Result<BusEntry, WireError> {
    let nl = msg
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(WireError("no header"))?;
    let header = std::str::from_utf8(&msg[..nl]).map_err(|_| WireError("header not UTF-8"))?;
    let mut f = header.split(' ');
    let mut num = |what| -> Result<u64, WireError> {
        f.next().and_then(|v| v.parse().ok()).ok_or(WireError(what))
    };
    let offset = num("offset")?;
    let id = num("id")?;
    let ts_secs = num("ts")?;
    let epoch = f
        .next()
        .filter(|e| !e.is_empty())
        .ok_or(WireError("epoch"))?;
    let origin = f.next().ok_or(WireError("origin"))?;
    let exclude = match f.next().ok_or(WireError("exclude"))? {
        "-" => None,
        ex => {
            let (s, c) = ex.split_once(':').ok_or(WireError("exclude"))?;
            let pair = (
                s.parse().map_err(|_| WireError("exclude"))?,
                c.parse().map_err(|_| WireError("exclude"))?,
            );
            Some(pair)
        }
    };
    if f.next().is_some() {
        return Err(WireError("extra header fields"));
    }
    Ok(BusEntry {
        offset,
        id,
        ts_secs,
        epoch: Arc::from(epoch),
        data: Bytes::copy_from_slice(&msg[nl + 1..]),
        exclude: exclude.filter(|_| origin == node),
    })
}

/// A broadcast as the bus carries it: `ID TS\nDATA`.
pub fn parse_broadcast(msg: &[u8]) -> Result<(u64, u64, Bytes), WireError> {
    let nl = msg
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(WireError("no header"))?;
    let header = std::str::from_utf8(&msg[..nl]).map_err(|_| WireError("header not UTF-8"))?;
    let (id, ts) = header.split_once(' ').ok_or(WireError("header"))?;
    let id = id.parse().map_err(|_| WireError("id"))?;
    let ts = ts.parse().map_err(|_| WireError("ts"))?;
    Ok((id, ts, Bytes::copy_from_slice(&msg[nl + 1..])))
}

/// What to do with a publication arriving on a channel's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Pass it on (after the `fill`).
    pub deliver: bool,
    /// Offsets missing before it, inclusive: read them from the stream
    /// first.
    pub fill: Option<(u64, u64)>,
}

/// A channel's position as this node's bus bridge passed it on: every
/// publication goes to the home shard once, in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSync {
    pub last: u64,
    pub epoch: Arc<str>,
}

impl ChannelSync {
    /// Attached at `last` (read after the subscription was confirmed).
    pub fn new(last: u64, epoch: Arc<str>) -> Self {
        ChannelSync { last, epoch }
    }

    /// Handles the next publication seen on the subscription.
    pub fn handle(&mut self, offset: u64, epoch: &str) -> Step {
        if *self.epoch != *epoch {
            // The channel's history was lost and it started over: the
            // new epoch's earlier offsets may be in the stream.
            self.epoch = Arc::from(epoch);
            self.last = offset;
            return Step {
                deliver: true,
                fill: (offset > 1).then(|| (1, offset - 1)),
            };
        }
        if offset <= self.last {
            return Step {
                deliver: false,
                fill: None,
            };
        }
        let fill = (offset > self.last + 1).then(|| (self.last + 1, offset - 1));
        self.last = offset;
        Step {
            deliver: true,
            fill,
        }
    }
}

/// The sorted set of live nodes: member node id, score the Unix ms its
/// heartbeat expires at.
pub const NODES_KEY: &str = "rc:nodes";

/// A node's heartbeat hash (its own slot: hash-tagged by the node id).
pub fn node_key(node: &str) -> String {
    format!("rc:n:{{{node}}}")
}

/// A node's counts as its heartbeat hash holds them: `_conns`, `_subs`,
/// and `c:CHANNEL` → subscribers on the node.
pub fn heartbeat_fields<'a>(
    connections: u64,
    subscriptions: u64,
    channels: impl Iterator<Item = (&'a str, usize)>,
) -> Vec<(String, String)> {
    let mut f = vec![
        ("_conns".to_owned(), connections.to_string()),
        ("_subs".to_owned(), subscriptions.to_string()),
    ];
    f.extend(channels.map(|(c, n)| (format!("c:{c}"), n.to_string())));
    f
}

/// Cluster-wide counts: the sum of every live node's heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterCounts {
    pub nodes: usize,
    pub connections: u64,
    pub subscriptions: u64,
    /// Channel → subscribers over all nodes, in name order.
    pub channels: std::collections::BTreeMap<String, u64>,
}

impl ClusterCounts {
    /// Adds one node's heartbeat hash (an empty one, expired, is skipped).
    pub fn add_node<'a>(&mut self, fields: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut any = false;
        for (k, v) in fields {
            let Ok(n) = v.parse::<u64>() else { continue };
            any = true;
            match k {
                "_conns" => self.connections += n,
                "_subs" => self.subscriptions += n,
                _ => {
                    if let Some(c) = k.strip_prefix("c:") {
                        *self.channels.entry(c.to_owned()).or_default() += n;
                    }
                }
            }
        }
        self.nodes += usize::from(any);
    }

    /// A page of channels after `after` (name order), at most `limit`,
    /// and whether more follow.
    pub fn page(&self, after: Option<&str>, limit: usize) -> (Vec<(String, usize)>, bool) {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a.to_owned()),
            None => Bound::Unbounded,
        };
        let mut it = self.channels.range((start, Bound::Unbounded));
        let page: Vec<(String, usize)> = it
            .by_ref()
            .take(limit)
            .map(|(c, &n)| (c.clone(), n as usize))
            .collect();
        (page, it.next().is_some())
    }
}

/// A `join`/`leave` event as the channel's bus message: `E ORIGIN\n`
/// then the event's JSON (a publication starts with its offset, a digit).
pub fn encode_event(origin: &str, json: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(json.len() + origin.len() + 3);
    m.extend_from_slice(b"E ");
    m.extend_from_slice(origin.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(json);
    m
}

/// An event's JSON, when `msg` is an event from another node than `node`:
/// `Some(None)` for an event of this node's own (already delivered here),
/// `None` when `msg` is no event.
pub fn parse_event<'a>(msg: &'a [u8], node: &str) -> Option<Option<&'a [u8]>> {
    let rest = msg.strip_prefix(b"E ")?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let (origin, json) = (&rest[..nl], &rest[nl + 1..]);
    Some((origin != node.as_bytes()).then_some(json))
}

/// A subscriber's field in its channel's presence hash, also its client
/// id in cluster mode: `NODE.SHARD.CONN` (node ids are hex, no dot).
pub fn member_field(node: &str, shard: usize, conn: ConnKey) -> String {
    format!("{node}.{shard}.{conn}")
}

/// A subscriber's value in the presence hash: the user id's length in
/// bytes, a space, the user id, then the `info` JSON (empty for none).
pub fn member_value(user: &str, info: Option<&str>) -> String {
    format!("{} {user}{}", user.len(), info.unwrap_or(""))
}

/// One member of a channel's cluster-wide presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    /// `NODE.SHARD.CONN`.
    pub client: String,
    pub user: String,
    pub info: Option<String>,
}

/// A channel's presence over every live node, from its presence hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterPresence {
    /// By client id; `None` for counts only (or more than the limit).
    pub list: Option<Vec<PresenceEntry>>,
    pub clients: usize,
    pub users: usize,
    /// Fields of nodes that are not live (to delete from the hash).
    pub dead: Vec<String>,
}

impl ClusterPresence {
    /// Reads the hash's `fields`, keeping the members of `live` nodes;
    /// the list only with `list` and at most `max` members. Malformed
    /// fields count as dead.
    pub fn from_fields<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
        live: &std::collections::HashSet<&str>,
        list: bool,
        max: usize,
    ) -> ClusterPresence {
        let mut out = ClusterPresence::default();
        let mut members = Vec::new();
        let mut users = std::collections::HashSet::new();
        for (field, value) in fields {
            let node = field_node(field);
            let parsed = parse_member_value(value);
            let Some((user, info)) = parsed.filter(|_| live.contains(node)) else {
                out.dead.push(field.to_owned());
                continue;
            };
            users.insert(user);
            members.push(PresenceEntry {
                client: field.to_owned(),
                user: user.to_owned(),
                info: info.map(str::to_owned),
            });
        }
        out.clients = members.len();
        out.users = users.len();
        if list && members.len() <= max {
            members.sort_unstable_by(|a, b| a.client.cmp(&b.client));
            out.list = Some(members);
        }
        out
    }
}

/// The node a presence field ([`member_field`]) belongs to.
pub fn field_node(field: &str) -> &str {
    field.split('.').next().unwrap_or("")
}

/// The user id and `info` of a [`member_value`].
fn parse_member_value(v: &str) -> Option<(&str, Option<&str>)> {
    let (len, rest) = v.split_once(' ')?;
    let len: usize = len.parse().ok()?;
    let user = rest.get(..len)?;
    let info = &rest[len..];
    Some((user, (!info.is_empty()).then_some(info)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_are_skipped_on_their_origin() {
        let m = encode_event("aa", br#"{"method":"join"}"#);
        assert_eq!(
            parse_event(&m, "bb"),
            Some(Some(&br#"{"method":"join"}"#[..]))
        );
        assert_eq!(parse_event(&m, "aa"), Some(None));
        let publication = b"1 2 3 e aa -\ndata";
        assert_eq!(parse_event(publication, "bb"), None);
        assert!(parse_message(publication, "bb").is_ok());
        assert!(parse_message(&m, "bb").is_err());
    }

    #[test]
    fn presence_keeps_live_nodes_members_and_counts_distinct_users() {
        let a = member_field("aa", 0, 3);
        let b = member_field("aa", 1, 4);
        let c = member_field("bb", 0, 3);
        let dead = member_field("cc", 0, 1);
        let fields = [
            (a.clone(), member_value("ann", None)),
            (b.clone(), member_value("ann 2", Some(r#"{"x":1}"#))),
            (c.clone(), member_value("ann", None)),
            (dead.clone(), member_value("bob", None)),
            ("aa.9.9".to_owned(), "garbage".to_owned()),
        ];
        let live: std::collections::HashSet<&str> = ["aa", "bb"].into_iter().collect();
        let it = || fields.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let p = ClusterPresence::from_fields(it(), &live, true, 10);
        assert_eq!((p.clients, p.users), (3, 2));
        assert_eq!(p.dead, vec![dead.clone(), "aa.9.9".to_owned()]);
        let list = p.list.unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(
            list[1],
            PresenceEntry {
                client: "aa.1.4".into(),
                user: "ann 2".into(),
                info: Some(r#"{"x":1}"#.into()),
            }
        );
        assert_eq!(list[2].client, "bb.0.3");
        // Over the limit, or counts only: no list.
        assert_eq!(
            ClusterPresence::from_fields(it(), &live, true, 2).list,
            None
        );
        assert_eq!(
            ClusterPresence::from_fields(it(), &live, false, 10).list,
            None
        );
        // Nobody live.
        let none = ClusterPresence::from_fields(it(), &Default::default(), false, 10);
        assert_eq!((none.clients, none.users, none.dead.len()), (0, 0, 5));
    }

    #[test]
    fn keys_share_the_channel_hash_tag() {
        let k = Keys::of("chat:1");
        assert_eq!(k.meta, "rc:{chat:1}:m");
        assert_eq!(k.stream, "rc:{chat:1}:s");
        assert_eq!(k.pubsub, "rc:{chat:1}");
        assert_eq!(channel_of(&k.pubsub), Some("chat:1"));
        assert_eq!(channel_of("rc:bcast"), None);
        assert_eq!(channel_of("other"), None);
    }

    #[test]
    fn heartbeats_sum_over_nodes_and_page_by_name() {
        let a = heartbeat_fields(3, 4, [("news", 2), ("chat", 2)].into_iter());
        let b = heartbeat_fields(1, 1, [("news", 1)].into_iter());
        let mut c = ClusterCounts::default();
        for f in [&a, &b] {
            c.add_node(f.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        c.add_node(std::iter::empty());
        assert_eq!((c.nodes, c.connections, c.subscriptions), (2, 4, 5));
        assert_eq!(c.channels.get("news"), Some(&3));
        assert_eq!(c.page(None, 1), (vec![("chat".into(), 2)], true));
        assert_eq!(c.page(Some("chat"), 5), (vec![("news".into(), 3)], false));
        assert_eq!(node_key("ab"), "rc:n:{ab}");
    }

    #[test]
    fn targets_are_read_from_the_url() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/0"),
            Ok(Target::Single("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(
            Target::parse("redis+cluster://:pw@a:7000,b:7001/"),
            Ok(Target::Cluster(vec![
                "redis://:pw@a:7000".into(),
                "redis://:pw@b:7001".into()
            ]))
        );
        assert!(Target::parse("redis+cluster://").is_err());
        assert!(Target::parse("http://x").is_err());
    }

    #[test]
    fn messages_round_trip_and_exclude_only_on_their_origin() {
        let msg = b"7 1700000000123456 1700000000 18b.2f n1 2:41\n{\"a\":1}";
        let e = parse_message(msg, "n1").unwrap();
        assert_eq!(
            (e.offset, e.id, e.ts_secs, &*e.epoch),
            (7, 1_700_000_000_123_456, 1_700_000_000, "18b.2f")
        );
        assert_eq!(&e.data[..], b"{\"a\":1}");
        assert_eq!(e.exclude, Some((2, 41)));
        assert_eq!(parse_message(msg, "n2").unwrap().exclude, None);
        let e = parse_message(b"1 2 3 e n -\n\n x", "n").unwrap();
        assert_eq!((e.exclude, &e.data[..]), (None, &b"\n x"[..]));
        assert_eq!(encode_exclude(Some((1, 2))), "1:2");
        assert_eq!(encode_exclude(None), "-");
    }

    #[test]
    fn malformed_messages_are_errors() {
        for bad in [
            &b"no newline"[..],
            b"x 2 3 e n -\nd",
            b"1 2 3  n -\nd",
            b"1 2 3 e n\nd",
            b"1 2 3 e n 1-2\nd",
            b"1 2 3 e n - extra\nd",
            b"\xff\nd",
        ] {
            assert!(parse_message(bad, "n").is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_broadcast(b"9 1\n[1]").unwrap(),
            (9, 1, Bytes::from_static(b"[1]"))
        );
        assert!(parse_broadcast(b"9\n[1]").is_err());
    }

    #[test]
    fn sync_passes_each_offset_once_in_order_and_names_gaps() {
        let mut s = ChannelSync::new(5, Arc::from("e"));
        let pass = Step {
            deliver: true,
            fill: None,
        };
        let drop = Step {
            deliver: false,
            fill: None,
        };
        // Published between SUBSCRIBE and the position read: already
        // counted in the position, dropped.
        assert_eq!(s.handle(4, "e"), drop);
        assert_eq!(s.handle(5, "e"), drop);
        assert_eq!(s.handle(6, "e"), pass);
        assert_eq!(s.handle(6, "e"), drop);
        assert_eq!(
            s.handle(9, "e"),
            Step {
                deliver: true,
                fill: Some((7, 8))
            }
        );
        assert_eq!(s.last, 9);
        // A new epoch: its earlier offsets come from the stream.
        assert_eq!(
            s.handle(3, "f"),
            Step {
                deliver: true,
                fill: Some((1, 2))
            }
        );
        assert_eq!(s.handle(4, "f"), pass);
        assert_eq!(
            s.handle(1, "g"),
            Step {
                deliver: true,
                fill: None
            }
        );
    }
}
