//! An AMQP 0-9-1 broker (RabbitMQ) as a message source
//! (`[sources.amqp]`), as DMOJ's AMQP event server (`event.js`, LQDOJ's
//! `daemon_amqp.js`) consumes it: a queue bound to `exchange` with
//! `binding_key` (`#`), each body `{"id":N,"channel":C,"message":M}` as
//! `event_poster_amqp.py` publishes it (DMOJ with routing key `''`, LQDOJ
//! with `"#"`; older DMOJ posters wrote the id as `"time"`, also read).
//! `M` is published on `C`, and `N` (the poster's microseconds) is kept as
//! the publication's id, so DMOJ receivers, long-poll, catch-up and
//! `last-msg` carry the poster's ids, which pages compare with the
//! poster's `last()`.
//!
//! Ids: a poster id greater than every id the node gave so far is kept;
//! one that is not (a poster clock behind, a second poster, a body without
//! id) is still published, with the node's next id, and counted
//! (`ids_replaced`): ids stay strictly increasing per channel, which
//! catch-up needs, and nothing is dropped.
//!
//! With `channel` set, every body is published as is on that one channel
//! (RocketWS's old RabbitMQ source); it must be UTF-8.
//!
//! A body that cannot be published (not JSON, no valid channel, an id
//! that is not a non-negative integer) is rejected: counted, logged, and
//! nacked without requeue, so the broker dead-letters it to
//! `dead_letter_exchange` when one is configured (else drops it). The
//! consumer goes on.
//!
//! Delivery: each delivery is acknowledged only after its channel's home
//! shard accepted the publication, one at a time in queue order (so per
//! channel the queue's order is kept; `prefetch` deliveries wait in the
//! client). On a lost connection the source reconnects with a doubling
//! backoff (100 ms to 5 s) and declares its queue and binding again.
//! Unacknowledged deliveries come back redelivered; one whose poster id
//! was already published (the ack was lost with the connection) is
//! acknowledged without publishing again ([`Seen`]).
//!
//! Runs on one bridge thread with a current-thread tokio runtime, like the
//! Redis source; the shards are reached through their mailboxes only.
#![forbid(unsafe_code)]

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use super::SourceState;
use crate::ops::config::AmqpSourceConfig;
use crate::protocol::rpc::valid_channel;
use crate::pubsub::ops::PublishResult;
use crate::runtime::shard::{Node, PublishError, ShardMsg};

/// The AMQP source of a node: its state.
#[derive(Debug, Default)]
pub struct AmqpSource {
    pub state: SourceState,
    /// Bodies rejected (also counted in `state.skipped`).
    pub rejected: AtomicU64,
    /// Publications whose poster id was not ahead of the node's ids and
    /// got the node's next id instead.
    pub ids_replaced: AtomicU64,
    /// Redeliveries already published, acknowledged without publishing.
    pub duplicates: AtomicU64,
}

impl AmqpSource {
    /// The `/health` line.
    pub fn health_line(&self) -> String {
        format!(
            "{}, rejected {}, ids replaced {}, duplicates {}",
            self.state.health_line("amqp"),
            self.rejected.load(Ordering::Relaxed),
            self.ids_replaced.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
        )
    }

    /// The source's own Prometheus families (the shared
    /// `ringcast_source_*` ones come from [`super::prometheus_families`]).
    pub fn prometheus(&self) -> String {
        format!(
            "# HELP ringcast_amqp_rejected_total AMQP bodies rejected (nacked without requeue).\n\
             # TYPE ringcast_amqp_rejected_total counter\n\
             ringcast_amqp_rejected_total {}\n\
             # HELP ringcast_amqp_ids_replaced_total AMQP publications whose poster id was not ahead and got the next node id.\n\
             # TYPE ringcast_amqp_ids_replaced_total counter\n\
             ringcast_amqp_ids_replaced_total {}\n\
             # HELP ringcast_amqp_duplicates_total AMQP redeliveries already published, acknowledged without publishing.\n\
             # TYPE ringcast_amqp_duplicates_total counter\n\
             ringcast_amqp_duplicates_total {}\n",
            self.rejected.load(Ordering::Relaxed),
            self.ids_replaced.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
        )
    }
}

/// One body to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub channel: Box<str>,
    /// The poster's id, if the body has one.
    pub id: Option<u64>,
    /// The message, compact JSON (or the raw body on a mapped binding).
    pub data: Bytes,
}

/// Reads a delivery's body: DMOJ's `{"id":N,"channel":C,"message":M}`, or,
/// with `channel` set, the body as is on that channel. `Err` says why it
/// is rejected.
pub fn parse_body(body: &[u8], channel: &str) -> Result<Event, String> {
    if !channel.is_empty() {
        return match std::str::from_utf8(body) {
            Ok(_) => Ok(Event {
                channel: channel.into(),
                id: None,
                data: Bytes::copy_from_slice(body),
            }),
            Err(e) => Err(format!("body is not UTF-8: {e}")),
        };
    }
    let mut buf = body.to_vec();
    let v = simd_json::to_borrowed_value(&mut buf).map_err(|e| format!("body is not JSON: {e}"))?;
    use simd_json::prelude::*;
    if v.as_object().is_none() {
        return Err("body is not a JSON object".into());
    }
    let channel = match v.get("channel") {
        Some(c) => match c.as_str() {
            Some(c) if valid_channel(c) => c,
            _ => return Err(format!("invalid channel: {}", c.encode())),
        },
        None => return Err("no \"channel\"".into()),
    };
    let id = match v.get("id").or_else(|| v.get("time")) {
        None => None,
        Some(n) => match n.as_u64() {
            Some(n) => Some(n),
            None => return Err(format!("id is not a non-negative integer: {}", n.encode())),
        },
    };
    // DMOJ's event server forwards a missing message as nothing; as the
    // sender port does, it becomes null.
    let data = v
        .get("message")
        .map_or_else(|| "null".to_owned(), |m| m.encode());
    Ok(Event {
        channel: channel.into(),
        id,
        data: Bytes::from(data.into_bytes()),
    })
}

/// Poster ids published lately, to recognize a redelivery whose ack was
/// lost. Bounded: the oldest are forgotten past `SEEN` entries.
#[derive(Debug, Default)]
pub struct Seen {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

const SEEN: usize = 65_536;

impl Seen {
    pub fn insert(&mut self, id: u64) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > SEEN {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.set.contains(&id)
    }
}

/// Starts the bridge thread. Returns once the thread is running.
pub fn start(node: Arc<Node>, source: Arc<AmqpSource>) -> std::io::Result<()> {
    super::spawn_bridge("amqp", move || run(node, source))
}

/// Why a session ended.
enum End {
    /// The node is gone: stop.
    NodeGone,
    /// The broker connection failed or was lost: reconnect.
    Lost(String),
}

async fn run(node: Arc<Node>, source: Arc<AmqpSource>) {
    let cfg = node.config.sources.amqp.clone();
    let shown = node.config.redacted().sources.amqp.url;
    let mut backoff = super::Backoff::default();
    let mut first = true;
    let mut seen = Seen::default();
    loop {
        match session(&node, &source, &cfg, &mut seen, &mut first, &mut backoff).await {
            End::NodeGone => return,
            End::Lost(e) => {
                source.state.set_connected(false);
                let delay = backoff.delay();
                tracing::warn!("amqp source: {shown}: {e}; reconnecting in {delay:?}");
                backoff.wait().await;
            }
        }
    }
}

fn exchange_kind(name: &str) -> ExchangeKind {
    match name {
        "fanout" => ExchangeKind::Fanout,
        "direct" => ExchangeKind::Direct,
        "headers" => ExchangeKind::Headers,
        _ => ExchangeKind::Topic,
    }
}

/// One connection: declare, bind, consume until the connection is lost.
async fn session(
    node: &Node,
    source: &AmqpSource,
    cfg: &AmqpSourceConfig,
    seen: &mut Seen,
    first: &mut bool,
    backoff: &mut super::Backoff,
) -> End {
    let lost = |what: &str, e: lapin::Error| End::Lost(format!("{what}: {e}"));
    let conn = match Connection::connect(&cfg.url, ConnectionProperties::default()).await {
        Ok(c) => c,
        Err(e) => return lost("cannot connect", e),
    };
    let ch = match conn.create_channel().await {
        Ok(c) => c,
        Err(e) => return lost("cannot open a channel", e),
    };
    if let Err(e) = ch
        .basic_qos(
            u16::try_from(cfg.prefetch).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await
    {
        return lost("basic.qos", e);
    }
    if !cfg.exchange_type.is_empty() {
        let opts = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let kind = exchange_kind(&cfg.exchange_type);
        let declared = ch
            .exchange_declare(
                cfg.exchange.as_str().into(),
                kind,
                opts,
                FieldTable::default(),
            )
            .await;
        if let Err(e) = declared {
            return lost(&format!("cannot declare exchange {:?}", cfg.exchange), e);
        }
    }
    let mut args = FieldTable::default();
    if !cfg.dead_letter_exchange.is_empty() {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(cfg.dead_letter_exchange.as_str().into()),
        );
    }
    let opts = if cfg.queue.is_empty() {
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        }
    } else {
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        }
    };
    let queue = match ch
        .queue_declare(cfg.queue.as_str().into(), opts, args)
        .await
    {
        Ok(q) => q,
        Err(e) => return lost("cannot declare the queue", e),
    };
    let name = queue.name().clone();
    let bound = ch
        .queue_bind(
            name.clone(),
            cfg.exchange.as_str().into(),
            cfg.binding_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    if let Err(e) = bound {
        return lost(&format!("cannot bind to exchange {:?}", cfg.exchange), e);
    }
    let consumer = ch
        .basic_consume(
            name.clone(),
            "ringcast".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    let mut consumer = match consumer {
        Ok(c) => c,
        Err(e) => return lost("basic.consume", e),
    };
    let state = &source.state;
    if !*first {
        state.reconnects.fetch_add(1, Ordering::Relaxed);
    }
    *first = false;
    backoff.reset();
    state.set_connected(true);
    tracing::info!(
        "amqp source: consuming {name} bound to {:?} with {:?}",
        cfg.exchange,
        cfg.binding_key
    );
    let status = conn.status();
    loop {
        let delivery = match until_lost(status, consumer.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => return lost("consumer", e),
            Ok(None) => return End::Lost("the consumer ended (connection closed)".into()),
            Err(gone) => return gone,
        };
        let event = match parse_body(&delivery.data, &cfg.channel) {
            Ok(ev) => ev,
            Err(why) => {
                source.rejected.fetch_add(1, Ordering::Relaxed);
                state.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "amqp source: rejected a body ({why}){}",
                    if cfg.dead_letter_exchange.is_empty() {
                        ""
                    } else {
                        "; dead-lettered"
                    }
                );
                let nack = BasicNackOptions {
                    requeue: false,
                    multiple: false,
                };
                match until_lost(status, delivery.acker.nack(nack)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return lost("basic.nack", e),
                    Err(gone) => return gone,
                }
                continue;
            }
        };
        let duplicate = delivery.redelivered && event.id.is_some_and(|id| seen.contains(id));
        if duplicate {
            source.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            let Some(r) = publish(node, &event).await else {
                return End::NodeGone;
            };
            if let Some(id) = event.id {
                seen.insert(id);
                if r.id != id {
                    source.ids_replaced.fetch_add(1, Ordering::Relaxed);
                }
            }
            state.messages.fetch_add(1, Ordering::Relaxed);
        }
        match until_lost(status, delivery.acker.ack(BasicAckOptions::default())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return lost("basic.ack", e),
            Err(gone) => return gone,
        }
    }
}

/// How often a wait on the broker checks that the connection is still up.
const LIVENESS_CHECK: Duration = Duration::from_millis(250);

/// Waits for `step` (the next delivery, an ack), or ends the session when
/// the connection is no longer up. lapin marks the connection failed when
/// its socket is reset, but an acknowledgement queued in that moment can
/// wait forever, and the session with it: seen under load, a source that
/// never reconnected after the broker restarted. Giving up on an ack is
/// safe: the delivery comes back redelivered and [`Seen`] recognises it.
async fn until_lost<T>(
    status: &lapin::ConnectionStatus,
    step: impl std::future::Future<Output = T>,
) -> Result<T, End> {
    let watch = async {
        loop {
            tokio::time::sleep(LIVENESS_CHECK).await;
            if !status.connected() {
                return;
            }
        }
    };
    tokio::select! {
        biased;
        out = step => Ok(out),
        () = watch => Err(End::Lost("the connection is down".into())),
    }
}

/// Publishes at the channel's home shard and waits until it accepted.
/// A full mailbox, or a refusal because a mailbox it delivers to is full,
/// is waited out (1 ms steps). `None` when the node is gone.
async fn publish(node: &Node, ev: &Event) -> Option<PublishResult> {
    let home = node.home_of(&ev.channel);
    loop {
        let (reply, answer) = oneshot::channel();
        let mut msg = ShardMsg::SourcePublish {
            channel: ev.channel.clone(),
            data: ev.data.clone(),
            id: ev.id,
            reply,
        };
        loop {
            match node.mailboxes[home].try_push(msg) {
                Ok(()) => break,
                Err(back) => {
                    msg = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        match answer.await {
            Ok(Ok(r)) => return Some(r),
            Ok(Err(PublishError::Overloaded | PublishError::BusUnavailable)) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(Err(PublishError::Gone)) | Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(channel: &str, id: Option<u64>, data: &str) -> Event {
        Event {
            channel: channel.into(),
            id,
            data: Bytes::from(data.to_owned()),
        }
    }

    #[test]
    fn dmoj_poster_bodies() {
        // json.dumps as event_poster_amqp.py writes it (spaces included).
        let body =
            br#"{"id": 1764640000123456, "channel": "sub_abc", "message": {"type": "processing"}}"#;
        assert_eq!(
            parse_body(body, ""),
            Ok(ev(
                "sub_abc",
                Some(1_764_640_000_123_456),
                r#"{"type":"processing"}"#
            ))
        );
        // Older DMOJ posters: the id under "time".
        let body = br#"{"time": 17, "channel": "submissions", "message": 3}"#;
        assert_eq!(parse_body(body, ""), Ok(ev("submissions", Some(17), "3")));
        // No id: the node assigns one. No message: null.
        let body = br#"{"channel": "c"}"#;
        assert_eq!(parse_body(body, ""), Ok(ev("c", None, "null")));
    }

    #[test]
    fn bad_bodies_say_why() {
        let err = |b: &[u8]| parse_body(b, "").unwrap_err();
        assert!(err(b"not json").starts_with("body is not JSON: "));
        assert_eq!(err(b"[1,2]"), "body is not a JSON object");
        assert_eq!(err(br#"{"id": 1, "message": 2}"#), "no \"channel\"");
        assert_eq!(err(br#"{"channel": 5}"#), "invalid channel: 5");
        assert_eq!(err(br#"{"channel": ""}"#), "invalid channel: \"\"");
        assert_eq!(
            err(br#"{"id": -3, "channel": "c"}"#),
            "id is not a non-negative integer: -3"
        );
        assert_eq!(
            err(br#"{"id": "7", "channel": "c"}"#),
            "id is not a non-negative integer: \"7\""
        );
    }

    #[test]
    fn a_mapped_binding_takes_bodies_as_they_are() {
        assert_eq!(
            parse_body(b"hello {not json", "events"),
            Ok(ev("events", None, "hello {not json"))
        );
        assert!(parse_body(&[0xff, 0xfe], "events")
            .unwrap_err()
            .starts_with("body is not UTF-8"));
    }

    #[test]
    fn seen_ids_are_bounded() {
        let mut s = Seen::default();
        s.insert(1);
        s.insert(1);
        assert!(s.contains(1));
        for i in 2..=(SEEN as u64 + 1) {
            s.insert(i);
        }
        assert!(!s.contains(1));
        assert!(s.contains(2));
        assert_eq!(s.order.len(), SEEN);
    }
}
