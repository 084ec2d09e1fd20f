//! The bus bridge: one thread (`source-cluster`) with a current-thread
//! tokio runtime that runs every Redis command of the node's cluster mode
//! (docs/CLUSTER.md). It holds one pub/sub connection (the channels this
//! node has subscribers for, plus the broadcast channel) and one
//! multiplexed command connection (publish scripts pipelined in order,
//! position reads, stream ranges).
//!
//! Publications arriving on the subscription go through each channel's
//! [`ChannelSync`] (duplicates dropped, gaps filled from the stream) to
//! the channel's home shard's mailbox. When Redis goes away the bridge
//! marks the bus down, tells every shard (`ShardMsg::BusLost`), refuses
//! publications, reconnects with the sources' backoff, subscribes again
//! and re-reads every attached channel's position.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::Value;
use tokio::sync::mpsc;

use super::wire::{self, BusEntry, ChannelSync, Keys};
use super::{Bus, BusRequest};
use crate::pubsub::ops::PublishResult;
use crate::pubsub::publication::Publication;
use crate::runtime::shard::{Node, PublishError, ShardMsg};

const PUBLISH_LUA: &str = include_str!("lua/publish.lua");
const POSITION_LUA: &str = include_str!("lua/position.lua");
const RANGE_LUA: &str = include_str!("lua/range.lua");
const BROADCAST_LUA: &str = include_str!("lua/broadcast.lua");

/// Starts the bridge thread of `node`'s bus.
pub fn start(node: Arc<Node>, bus: Arc<Bus>) -> std::io::Result<()> {
    let Some(rx) = bus.take_requests() else {
        return Ok(());
    };
    crate::sources::spawn_bridge("cluster", move || run(node, bus, rx))
}

/// A channel this node is subscribed to on the bus.
struct Attached {
    home: usize,
    gen: u64,
    /// `None` until the position was read on the current connection.
    sync: Option<ChannelSync>,
}

/// The bridge's state across connections.
struct Bridge {
    node: Arc<Node>,
    bus: Arc<Bus>,
    channels: HashMap<Box<str>, Attached>,
    scripts: Scripts,
}

/// The scripts, loaded (`SCRIPT LOAD`) on every connection and then
/// run by their SHA1 (`EVALSHA`).
struct Scripts {
    publish: Lua,
    position: Lua,
    range: Lua,
    broadcast: Lua,
}

/// A script's source and, once loaded, the SHA1 Redis gave it.
#[derive(Clone)]
struct Lua {
    src: &'static str,
    sha: Arc<str>,
}

impl Lua {
    fn new(src: &'static str) -> Self {
        Lua {
            src,
            sha: Arc::from(""),
        }
    }

    async fn load(&mut self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(self.src)
            .query_async(conn)
            .await?;
        self.sha = Arc::from(sha);
        Ok(())
    }

    /// `EVALSHA` with `keys`; arguments follow.
    fn call(&self, keys: &[&str]) -> redis::Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&*self.sha).arg(keys.len());
        for k in keys {
            c.arg(*k);
        }
        c
    }
}

/// What broke a connection.
type Lost = redis::RedisError;

async fn run(node: Arc<Node>, bus: Arc<Bus>, mut rx: mpsc::UnboundedReceiver<BusRequest>) {
    let url = node.config.cluster.redis.clone();
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cluster bus: bad url: {e}");
            return;
        }
    };
    let mut bridge = Bridge {
        node,
        bus,
        channels: HashMap::new(),
        scripts: Scripts {
            publish: Lua::new(PUBLISH_LUA),
            position: Lua::new(POSITION_LUA),
            range: Lua::new(RANGE_LUA),
            broadcast: Lua::new(BROADCAST_LUA),
        },
    };
    let mut backoff = crate::sources::Backoff::default();
    let mut first = true;
    loop {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = async {
            let pubsub = client.get_async_pubsub().await?;
            let cmd = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            Ok::<_, redis::RedisError>((pubsub, cmd))
        }
        .await;
        let (pubsub, cmd) = match conn {
            Ok(c) => c,
            Err(e) => {
                let delay = backoff.delay();
                tracing::warn!("cluster bus: cannot connect to {url}: {e}; retry in {delay:?}");
                if !bridge.wait_down(&mut rx, backoff.step()).await {
                    return;
                }
                continue;
            }
        };
        if !first {
            bridge.bus.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        backoff.reset();
        let (sink, stream) = pubsub.split();
        match bridge.serve(sink, stream, cmd, &mut rx).await {
            Ok(()) => return,
            Err(e) => tracing::warn!("cluster bus: connection to {url} lost: {e}; reconnecting"),
        }
        bridge.lost();
    }
}

impl Bridge {
    /// The bus went down: publications are refused from now on, and every
    /// shard releases the subscribers it parked waiting for Redis.
    fn lost(&mut self) {
        self.bus.set_up(false);
        for a in self.channels.values_mut() {
            a.sync = None;
        }
        for mb in &self.node.mailboxes {
            mb.push(ShardMsg::BusLost);
        }
    }

    /// Waits `delay` while the bus is down, answering requests meanwhile:
    /// publications refused, (un)subscriptions noted for the reconnection.
    /// False when the node is gone.
    async fn wait_down(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<BusRequest>,
        delay: Duration,
    ) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                req = rx.recv() => match req {
                    None => return false,
                    Some(req) => self.refuse(req),
                },
            }
        }
    }

    /// A request while the bus is down.
    fn refuse(&mut self, req: BusRequest) {
        match req {
            BusRequest::Publish { reply, .. } => {
                self.bus.refused.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Err(PublishError::BusUnavailable));
            }
            BusRequest::Broadcast { reply, .. } => {
                let _ = reply.send(Err(PublishError::BusUnavailable));
            }
            BusRequest::Attach { channel, home, gen } => {
                self.channels.insert(
                    channel,
                    Attached {
                        home,
                        gen,
                        sync: None,
                    },
                );
            }
            BusRequest::Detach { channel } => {
                self.channels.remove(&channel);
            }
            BusRequest::Recover {
                channel,
                home,
                token,
                ..
            } => self.node.mailboxes[home].push(ShardMsg::BusRecovered {
                channel,
                token,
                entries: None,
            }),
        }
    }

    /// Serves one connection until it breaks (`Err`) or the node is gone.
    async fn serve(
        &mut self,
        mut sink: PubSubSink,
        mut stream: redis::aio::PubSubStream,
        mut cmd: MultiplexedConnection,
        rx: &mut mpsc::UnboundedReceiver<BusRequest>,
    ) -> Result<(), Lost> {
        for s in [
            &mut self.scripts.publish,
            &mut self.scripts.position,
            &mut self.scripts.range,
            &mut self.scripts.broadcast,
        ] {
            s.load(&mut cmd).await?;
        }
        sink.subscribe(wire::BROADCAST_CHANNEL).await?;
        let channels: Vec<Box<str>> = self.channels.keys().cloned().collect();
        for channel in channels {
            self.attach(&mut sink, &mut cmd, &channel).await?;
        }
        self.bus.set_up(true);
        tracing::info!(
            "cluster bus: connected as node {} ({} channels attached)",
            self.bus.node_id,
            self.channels.len()
        );
        loop {
            tokio::select! {
                biased;
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "subscription closed")));
                    };
                    self.on_message(&mut cmd, msg.get_channel_name(), msg.get_payload_bytes()).await?;
                }
                req = rx.recv() => {
                    let Some(req) = req else { return Ok(()) };
                    self.on_request(&mut sink, &mut cmd, req).await?;
                }
            }
        }
    }

    async fn on_request(
        &mut self,
        sink: &mut PubSubSink,
        cmd: &mut MultiplexedConnection,
        req: BusRequest,
    ) -> Result<(), Lost> {
        match req {
            BusRequest::Publish {
                channel,
                data,
                exclude,
                reply,
            } => {
                // Spawned in order: each sends its script on the
                // multiplexed connection when first polled, so Redis runs
                // them in the order they were asked for, pipelined.
                let conn = cmd.clone();
                let script = self.scripts.publish.clone();
                let cfg = &self.node.config;
                let args = PublishArgs {
                    size: cfg.history.size,
                    ttl_ms: cfg.history.ttl.saturating_mul(1000),
                    channel_ttl: cfg.cluster.channel_ttl,
                    origin: self.bus.node_id.clone(),
                };
                let bus = self.bus.clone();
                tokio::spawn(async move {
                    let r = publish(conn, &script, &channel, &data, exclude, &args).await;
                    let r = match r {
                        Ok(r) => {
                            bus.published.fetch_add(1, Ordering::Relaxed);
                            Ok(r)
                        }
                        Err(e) => {
                            tracing::warn!("cluster bus: publish on {channel} failed: {e}");
                            bus.refused.fetch_add(1, Ordering::Relaxed);
                            Err(PublishError::BusUnavailable)
                        }
                    };
                    let _ = reply.send(r);
                });
            }
            BusRequest::Broadcast { data, reply } => {
                let mut conn = cmd.clone();
                let script = self.scripts.broadcast.clone();
                tokio::spawn(async move {
                    let r: redis::RedisResult<u64> = script
                        .call(&[wire::ID_KEY])
                        .arg(&data[..])
                        .arg(wire::BROADCAST_CHANNEL)
                        .query_async(&mut conn)
                        .await;
                    let _ = reply.send(r.map_err(|e| {
                        tracing::warn!("cluster bus: broadcast failed: {e}");
                        PublishError::BusUnavailable
                    }));
                });
            }
            BusRequest::Attach { channel, home, gen } => {
                self.channels.insert(
                    channel.clone(),
                    Attached {
                        home,
                        gen,
                        sync: None,
                    },
                );
                self.attach(sink, cmd, &channel).await?;
            }
            BusRequest::Detach { channel } => {
                if self.channels.remove(&channel).is_some() {
                    sink.unsubscribe(wire::pubsub_channel(&channel)).await?;
                }
            }
            BusRequest::Recover {
                channel,
                home,
                token,
                after,
                limit,
            } => {
                let entries = self.range(cmd, &channel, after + 1, u64::MAX, limit).await;
                let entries = match entries {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.node.mailboxes[home].push(ShardMsg::BusRecovered {
                            channel,
                            token,
                            entries: None,
                        });
                        return Err(e);
                    }
                };
                self.node.mailboxes[home].push(ShardMsg::BusRecovered {
                    channel,
                    token,
                    entries,
                });
            }
        }
        Ok(())
    }

    /// Subscribes to `channel` and, once Redis confirmed, reads its
    /// position: everything later arrives on the subscription.
    async fn attach(
        &mut self,
        sink: &mut PubSubSink,
        cmd: &mut MultiplexedConnection,
        channel: &str,
    ) -> Result<(), Lost> {
        let keys = Keys::of(channel);
        sink.subscribe(&keys.pubsub).await?;
        let (offset, epoch): (u64, String) = self
            .scripts
            .position
            .call(&[&keys.meta, &keys.stream])
            .arg(self.node.config.cluster.channel_ttl)
            .query_async(cmd)
            .await?;
        let epoch: Arc<str> = Arc::from(epoch);
        if let Some(a) = self.channels.get_mut(channel) {
            a.sync = Some(ChannelSync::new(offset, epoch.clone()));
            self.node.mailboxes[a.home].push(ShardMsg::BusAttached {
                channel: channel.into(),
                gen: a.gen,
                offset,
                epoch,
            });
        }
        Ok(())
    }

    /// A message on the subscription.
    async fn on_message(
        &mut self,
        cmd: &mut MultiplexedConnection,
        pubsub: &str,
        payload: &[u8],
    ) -> Result<(), Lost> {
        if pubsub == wire::BROADCAST_CHANNEL {
            match wire::parse_broadcast(payload) {
                Ok((id, ts, data)) => self.broadcast_here(id, ts, data),
                Err(e) => tracing::warn!("cluster bus: {e}"),
            }
            return Ok(());
        }
        let Some(channel) = wire::channel_of(pubsub) else {
            return Ok(());
        };
        let entry = match wire::parse_message(payload, &self.bus.node_id) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("cluster bus: {channel}: {e}");
                return Ok(());
            }
        };
        let Some(a) = self.channels.get_mut(channel) else {
            return Ok(());
        };
        let home = a.home;
        let Some(sync) = a.sync.as_mut() else {
            return Ok(());
        };
        let step = sync.handle(entry.offset, &entry.epoch);
        if let Some((from, to)) = step.fill {
            let epoch = entry.epoch.clone();
            let missing = self
                .range(cmd, channel, from, to, usize::MAX)
                .await?
                .filter(|(e, _)| *e == epoch)
                .map(|(_, v)| v)
                .unwrap_or_default();
            for e in missing {
                self.node.mailboxes[home].push(ShardMsg::BusDeliver {
                    channel: channel.into(),
                    entry: e,
                });
            }
        }
        if step.deliver {
            self.node.mailboxes[home].push(ShardMsg::BusDeliver {
                channel: channel.into(),
                entry,
            });
        }
        Ok(())
    }

    /// A broadcast from the bus, to every local connection once.
    fn broadcast_here(&self, id: u64, ts: u64, data: Bytes) {
        self.node.take_id(Some(id));
        let p = Arc::new(Publication::broadcast(id, ts, data));
        for mb in &self.node.mailboxes {
            let (reply, _) = futures_channel::oneshot::channel();
            mb.push(ShardMsg::Broadcast {
                publication: p.clone(),
                reply,
            });
        }
    }

    /// The stream's newest entries in `from..=to` (at most `limit`,
    /// oldest first), with the
    /// channel's epoch: `Ok(None)` when the channel has none. Entries
    /// older than `history.ttl` are left out.
    async fn range(
        &self,
        cmd: &mut MultiplexedConnection,
        channel: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Option<(Arc<str>, Vec<BusEntry>)>, Lost> {
        let keys = Keys::of(channel);
        let limit = limit.min(self.node.config.history.size.max(1));
        let (epoch, raw): (String, Vec<RawEntry>) = self
            .scripts
            .range
            .call(&[&keys.meta, &keys.stream])
            .arg(from)
            .arg(to)
            .arg(limit)
            .query_async(cmd)
            .await?;
        if epoch.is_empty() {
            return Ok(None);
        }
        let epoch: Arc<str> = Arc::from(epoch);
        let oldest_ms = crate::runtime::shard::unix_ms()
            .saturating_sub(self.node.config.history.ttl.saturating_mul(1000));
        // Newest first from Redis (so a bounded read keeps the newest);
        // handed on oldest first.
        let entries = raw
            .into_iter()
            .rev()
            .filter_map(|(sid, fields)| stream_entry(&sid, &fields, &epoch))
            .filter(|(_, ms)| *ms >= oldest_ms)
            .map(|(e, _)| e)
            .collect();
        Ok(Some((epoch, entries)))
    }
}

/// A stream entry as Redis returns it: its id and fields.
type RawEntry = (String, HashMap<String, Value>);

/// One stream entry (`OFFSET-0` with `d`, `i`, `t`) as a bus entry and
/// its Unix ms; `None` if it is not one of ours.
fn stream_entry(
    sid: &str,
    fields: &HashMap<String, Value>,
    epoch: &Arc<str>,
) -> Option<(BusEntry, u64)> {
    let offset = sid.strip_suffix("-0")?.parse().ok()?;
    let bytes = |k: &str| match fields.get(k)? {
        Value::BulkString(b) => Some(b.as_slice()),
        _ => None,
    };
    let num = |k: &str| -> Option<u64> { std::str::from_utf8(bytes(k)?).ok()?.parse().ok() };
    let ms = num("t")?;
    Some((
        BusEntry {
            offset,
            id: num("i")?,
            ts_secs: ms / 1000,
            epoch: epoch.clone(),
            data: Bytes::copy_from_slice(bytes("d")?),
            exclude: None,
        },
        ms,
    ))
}

/// What every publish script call shares.
struct PublishArgs {
    size: usize,
    ttl_ms: u64,
    channel_ttl: u64,
    origin: String,
}

async fn publish(
    mut conn: MultiplexedConnection,
    script: &Lua,
    channel: &str,
    data: &Bytes,
    exclude: Option<(usize, crate::pubsub::channel_table::ConnKey)>,
    a: &PublishArgs,
) -> redis::RedisResult<PublishResult> {
    let keys = Keys::of(channel);
    let (offset, id, _epoch, _ts): (u64, u64, String, u64) = script
        .call(&[&keys.meta, &keys.stream, wire::ID_KEY])
        .arg(&data[..])
        .arg(a.size)
        .arg(a.ttl_ms)
        .arg(a.channel_ttl)
        .arg(&keys.pubsub)
        .arg(&a.origin)
        .arg(wire::encode_exclude(exclude))
        .arg("PUBLISH")
        .query_async(&mut conn)
        .await?;
    Ok(PublishResult {
        offset,
        id,
        subscribers: 0,
    })
}
