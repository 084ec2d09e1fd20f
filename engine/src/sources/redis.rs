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
#![forbid(unsafe_code)]

use std::collections::HashMap;
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
    /// `GET` the channel's persisted message for its home shard.
    Fetch(Box<str>),
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

    /// Asks for `channel`'s persisted message (never blocks a shard); an
    /// unexpired one goes to its home shard as [`ShardMsg::Kept`].
    pub fn fetch(&self, channel: &str) {
        let _ = self.tx.send(Request::Fetch(channel.into()));
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

/// Starts the bridge thread. Returns once the thread is running.
pub fn start(node: Arc<Node>, source: Arc<RedisSource>) -> std::io::Result<()> {
    let rx = source.rx.lock().ok().and_then(|mut r| r.take());
    let Some(rx) = rx else { return Ok(()) };
    std::thread::Builder::new()
        .name("source-redis".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .enable_io()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("redis source: no runtime: {e}");
                    return;
                }
            };
            rt.block_on(run(node, source, rx));
        })?;
    Ok(())
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
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let conn = async {
            let mut pubsub = client.get_async_pubsub().await?;
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
                tracing::warn!("redis source: cannot connect to {url}: {e}; retry in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if !first {
            state.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        backoff = Duration::from_millis(100);
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
                        Some(Request::Fetch(channel)) => {
                            match fetch(&mut writer, &channel).await {
                                Ok(Some((data, ttl))) => {
                                    let home = node.home_of(&channel);
                                    node.mailboxes[home].push(ShardMsg::Kept { channel, data, ttl });
                                }
                                Ok(None) => {}
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
        tracing::warn!("redis source: connection to {url} lost; reconnecting");
    }
}

/// `GET` and `PTTL` of a persisted message: its bytes and time to live,
/// if it is there with one.
async fn fetch(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
) -> redis::RedisResult<Option<(Bytes, Duration)>> {
    let (data, pttl): (Option<Vec<u8>>, i64) = redis::pipe()
        .cmd("GET")
        .arg(channel)
        .cmd("PTTL")
        .arg(channel)
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
