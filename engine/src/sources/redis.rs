//! Redis as a message source (`[sources.redis]`), as ws4redis uses it:
//! PSUBSCRIBE to the configured patterns (by default ws4redis's
//! `{prefix}:broadcast:*`, `:user:*`, `:group:*`, `:session:*`) and publish
//! each message, unchanged, on the ringcast channel of the same name, so
//! `r.publish('rodan:broadcast:rodan', ...)` (Rodan's trigger, Django's
//! `RedisPublisher`) reaches `/ws/rodan` clients.
//!
//! ws4redis clients' own publications are written back (PUBLISH, and
//! SETEX for `protocols.ws4redis.expire` seconds when it is > 0) so the
//! Django side sees one system. A written-back message comes back on the
//! subscription; it was already delivered inside ringcast, so it is
//! skipped once ([`Echoes`]), by origin, not published twice.
//!
//! Runs on one bridge thread with a current-thread tokio runtime; the
//! shards are reached through their mailboxes only. When Redis goes away
//! the source reconnects with a doubling backoff (100 ms to 5 s) and
//! PSUBSCRIBEs again. Redis pub/sub delivers at most once: messages
//! published while disconnected are lost (as for ws4redis), and none is
//! delivered twice.
//!
//! A channel's persisted message is fetched (`GET`/`PTTL`) on another
//! connection than the subscription, so its answer can overtake messages
//! Redis published before it. The fetch therefore also PUBLISHes a
//! sequence number to a channel of this source's own ([`Barriers`]), in
//! the same MULTI, and the fetched message goes to its home shard only
//! when that number comes back on the subscription: after every message
//! published before the GET, and before every later one. The home shard
//! then sends it to the channel's subscribers only if nothing was
//! published to them since they joined, so each gets it exactly once.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::SourceState;
use crate::ops::config::Config;
use crate::runtime::shard::{Node, ShardMsg};

/// A ws4redis client's publication to write back to Redis.
#[derive(Debug)]
pub struct WriteBack {
    pub channel: Box<str>,
    pub data: Bytes,
    pub keep_secs: u64,
}

/// What shards ask of the bridge.
#[derive(Debug)]
enum Request {
    WriteBack(WriteBack),
    /// `GET` the channel's persisted message for its home shard, whose
    /// first subscriber joined at this offset.
    Fetch(Box<str>, u64),
}

/// The Redis source of a node: its state and the write-back queue.
#[derive(Debug)]
pub struct RedisSource {
    pub state: SourceState,
    tx: mpsc::UnboundedSender<Request>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Request>>>,
}

impl RedisSource {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        RedisSource {
            state: SourceState::default(),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Queues a client publication for Redis (never blocks a shard).
    pub fn write_back(&self, w: WriteBack) {
        let _ = self.tx.send(Request::WriteBack(w));
    }

    /// Asks for `channel`'s persisted message (never blocks a shard) for a
    /// first subscriber who joined at offset `joined`; an unexpired one
    /// goes to its home shard as [`ShardMsg::Kept`].
    pub fn fetch(&self, channel: &str, joined: u64) {
        let _ = self.tx.send(Request::Fetch(channel.into(), joined));
    }
}

impl Default for RedisSource {
    fn default() -> Self {
        Self::new()
    }
}

/// The patterns to PSUBSCRIBE: the configured ones, or ws4redis's four
/// channel forms under `prefix`.
pub fn patterns(cfg: &Config) -> Vec<String> {
    let r = &cfg.sources.redis;
    if !r.patterns.is_empty() {
        return r.patterns.clone();
    }
    let prefix = &cfg.protocols.ws4redis.prefix;
    ["broadcast", "user", "group", "session"]
        .iter()
        .map(|form| match prefix.is_empty() {
            true => format!("{form}:*"),
            false => format!("{prefix}:{form}:*"),
        })
        .collect()
}

/// Written-back messages not yet seen coming back: (channel, data) with a
/// count. Bounded: past `MAX_ECHOES` entries it is cleared (at worst a
/// later echo is published once more).
#[derive(Debug, Default)]
pub struct Echoes(HashMap<(Box<str>, Bytes), u32>);

const MAX_ECHOES: usize = 65536;

impl Echoes {
    pub fn expect(&mut self, channel: &str, data: &Bytes) {
        if self.0.len() >= MAX_ECHOES {
            self.0.clear();
        }
        *self.0.entry((channel.into(), data.clone())).or_default() += 1;
    }

    /// Whether this message is one of ours coming back (consumes it).
    pub fn is_echo(&mut self, channel: &str, data: &[u8]) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let key = (Box::<str>::from(channel), Bytes::copy_from_slice(data));
        match self.0.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.0.remove(&key);
                true
            }
            None => false,
        }
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// A fetched persisted message waiting for its barrier.
#[derive(Debug, PartialEq)]
pub struct Fetched {
    pub channel: Box<str>,
    pub data: Bytes,
    pub ttl: Duration,
    pub joined: u64,
}

/// Fetches waiting for their barrier number to come back on the
/// subscription, in the order they were made.
#[derive(Debug, Default)]
pub struct Barriers {
    next: u64,
    waiting: VecDeque<(u64, Option<Fetched>)>,
}

impl Barriers {
    /// The number to publish with the next fetch.
    pub fn number(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Holds a fetch's result (`None` if nothing was persisted) until
    /// barrier `n` comes back.
    pub fn hold(&mut self, n: u64, fetched: Option<Fetched>) {
        self.waiting.push_back((n, fetched));
    }

    /// Barrier `payload` came back: the fetches it releases, oldest first.
    /// A payload that is not one of ours (or comes twice, when a pattern
    /// also matches the barrier channel) releases nothing.
    pub fn passed(&mut self, payload: &[u8]) -> Vec<Fetched> {
        let Some(n) = std::str::from_utf8(payload)
            .ok()
            .and_then(|p| p.parse::<u64>().ok())
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some((m, _)) = self.waiting.front() {
            if *m > n {
                break;
            }
            if let Some((_, Some(f))) = self.waiting.pop_front() {
                out.push(f);
            }
        }
        out
    }

    /// The connection was lost: every held fetch, to hand over without
    /// its barrier (a late persisted message rather than none).
    pub fn drain(&mut self) -> Vec<Fetched> {
        self.waiting.drain(..).filter_map(|(_, f)| f).collect()
    }
}

/// Hands a fetched persisted message to its channel's home shard.
fn hand_over(node: &Node, f: Fetched) {
    let home = node.home_of(&f.channel);
    node.mailboxes[home].push(ShardMsg::Kept {
        channel: f.channel,
        data: f.data,
        ttl: f.ttl,
        joined: f.joined,
    });
}

/// Starts the bridge thread. Returns once the thread is running.
pub fn start(node: Arc<Node>, source: Arc<RedisSource>) -> std::io::Result<()> {
    let rx = source.rx.lock().ok().and_then(|mut r| r.take());
    let Some(rx) = rx else { return Ok(()) };
    super::spawn_bridge("redis", move || run(node, source, rx))
}

async fn run(node: Arc<Node>, source: Arc<RedisSource>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let cfg = &node.config;
    let url = cfg.sources.redis.url.clone();
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("redis source: bad url: {e}");
            return;
        }
    };
    let patterns = patterns(cfg);
    let heartbeat = cfg.protocols.ws4redis.heartbeat.as_bytes().to_vec();
    let state = &source.state;
    let mut echoes = Echoes::default();
    let mut backoff = super::Backoff::default();
    let mut first = true;
    // This source's own barrier channel (see the module docs).
    let barrier = format!(
        "ringcast:barrier:{:x}:{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut barriers = Barriers::default();
    loop {
        let conn = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&barrier).await?;
            for p in &patterns {
                pubsub.psubscribe(p).await?;
            }
            let writer = client.get_multiplexed_async_connection().await?;
            Ok::<_, redis::RedisError>((pubsub, writer))
        }
        .await;
        let (mut pubsub, mut writer) = match conn {
            Ok(c) => c,
            Err(e) => {
                let delay = backoff.delay();
                tracing::warn!("redis source: cannot connect to {url}: {e}; retry in {delay:?}");
                backoff.wait().await;
                continue;
            }
        };
        if !first {
            state.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        backoff.reset();
        echoes.clear();
        state.set_connected(true);
        tracing::info!("redis source: connected to {url}, psubscribed to {patterns:?}");
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { break };
                    let channel = msg.get_channel_name();
                    let data = msg.get_payload_bytes();
                    if channel == barrier {
                        for f in barriers.passed(data) {
                            hand_over(&node, f);
                        }
                        continue;
                    }
                    if echoes.is_echo(channel, data)
                        || (!heartbeat.is_empty() && data == heartbeat.as_slice())
                        || std::str::from_utf8(data).is_err()
                        || !crate::protocol::rpc::valid_channel(channel)
                    {
                        state.skipped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if !super::publish(&node, channel, Bytes::copy_from_slice(data)).await {
                        return;
                    }
                    state.messages.fetch_add(1, Ordering::Relaxed);
                }
                req = rx.recv() => {
                    let w = match req {
                        None => return,
                        Some(Request::WriteBack(w)) => w,
                        Some(Request::Fetch(channel, joined)) => {
                            let n = barriers.number();
                            match fetch(&mut writer, &channel, &barrier, n).await {
                                Ok(found) => {
                                    let fetched = found.map(|(data, ttl)| Fetched {
                                        channel,
                                        data,
                                        ttl,
                                        joined,
                                    });
                                    barriers.hold(n, fetched);
                                }
                                Err(e) => {
                                    tracing::warn!("redis source: GET failed: {e}");
                                    break;
                                }
                            }
                            continue;
                        }
                    };
                    echoes.expect(&w.channel, &w.data);
                    let mut pipe = redis::pipe();
                    pipe.cmd("PUBLISH").arg(&*w.channel).arg(&w.data[..]).ignore();
                    if w.keep_secs > 0 {
                        pipe.cmd("SETEX").arg(&*w.channel).arg(w.keep_secs).arg(&w.data[..]).ignore();
                    }
                    if let Err(e) = pipe.query_async::<()>(&mut writer).await {
                        tracing::warn!("redis source: write-back failed: {e}");
                        break;
                    }
                }
            }
        }
        state.set_connected(false);
        for f in barriers.drain() {
            hand_over(&node, f);
        }
        tracing::warn!("redis source: connection to {url} lost; reconnecting");
    }
}

/// `GET` and `PTTL` of a persisted message: its bytes and time to live,
/// if it is there with one; and, in the same MULTI, barrier `n` published
/// on `barrier`.
async fn fetch(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    barrier: &str,
    n: u64,
) -> redis::RedisResult<Option<(Bytes, Duration)>> {
    let (data, pttl): (Option<Vec<u8>>, i64) = redis::pipe()
        .atomic()
        .cmd("GET")
        .arg(channel)
        .cmd("PTTL")
        .arg(channel)
        .cmd("PUBLISH")
        .arg(barrier)
        .arg(n)
        .ignore()
        .query_async(conn)
        .await?;
    Ok(match data {
        Some(d) if pttl > 0 && std::str::from_utf8(&d).is_ok() => {
            Some((Bytes::from(d), Duration::from_millis(pttl as u64)))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_patterns_are_ws4redis_forms() {
        let mut cfg = Config::default();
        cfg.protocols.ws4redis.prefix = "rodan".into();
        assert_eq!(
            patterns(&cfg),
            [
                "rodan:broadcast:*",
                "rodan:user:*",
                "rodan:group:*",
                "rodan:session:*"
            ]
        );
        cfg.protocols.ws4redis.prefix.clear();
        assert_eq!(patterns(&cfg)[0], "broadcast:*");
        cfg.sources.redis.patterns = vec!["x:*".into()];
        assert_eq!(patterns(&cfg), ["x:*"]);
    }

    fn fetched(channel: &str) -> Fetched {
        Fetched {
            channel: channel.into(),
            data: Bytes::from_static(b"m"),
            ttl: Duration::from_secs(1),
            joined: 0,
        }
    }

    #[test]
    fn fetches_wait_for_their_barrier_in_order() {
        let mut b = Barriers::default();
        let (n1, n2, n3) = (b.number(), b.number(), b.number());
        b.hold(n1, Some(fetched("a")));
        b.hold(n2, None);
        b.hold(n3, Some(fetched("c")));
        assert!(b.passed(b"0").is_empty());
        assert!(b.passed(b"not a number").is_empty());
        assert_eq!(b.passed(n1.to_string().as_bytes()), [fetched("a")]);
        // Seen twice (a pattern matching the barrier channel too): nothing.
        assert!(b.passed(n1.to_string().as_bytes()).is_empty());
        assert_eq!(b.passed(n3.to_string().as_bytes()), [fetched("c")]);
        let n4 = b.number();
        b.hold(n4, Some(fetched("d")));
        assert_eq!(b.drain(), [fetched("d")]);
        assert!(b.drain().is_empty());
    }

    #[test]
    fn each_write_back_is_skipped_once() {
        let mut e = Echoes::default();
        let d = Bytes::from_static(b"m");
        e.expect("c", &d);
        e.expect("c", &d);
        assert!(!e.is_echo("other", b"m"));
        assert!(e.is_echo("c", b"m"));
        assert!(e.is_echo("c", b"m"));
        assert!(!e.is_echo("c", b"m"));
    }
}
