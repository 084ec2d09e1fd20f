//! Runs a client's operations ([`Op`]) against the engine: the policy that
//! is the same whatever protocol the client speaks (rate limit,
//! subscription limit, who may publish).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Conn;
use super::{ConnRef, HomeAnswer, HomeQuery, Shard, ShardGone};
use crate::access::rules;
use crate::pubsub::home_shard::Since;
use crate::pubsub::ops::{Op, OpError, Outcome, SubscribeInfo};
use crate::pubsub::publication::Publication;

impl From<ShardGone> for OpError {
    fn from(_: ShardGone) -> Self {
        OpError::Internal("shard is shutting down")
    }
}

const UNEXPECTED: OpError = OpError::Internal("unexpected answer");

impl Shard {
    /// Runs one operation for `conn`, after its rate limit.
    pub(crate) async fn run_client_op(
        &self,
        conn: &Rc<Conn>,
        cref: ConnRef,
        op: &Op,
    ) -> Result<Outcome, OpError> {
        if let Op::Post { channel, data } = op {
            // A trusted publisher, like the backend port: no rate limit.
            let r = self.publish(channel, data.clone(), None).await?;
            return Ok(Outcome::Published(r));
        }
        if let Op::LastId = op {
            return Ok(Outcome::LastId(self.node.last_id()));
        }
        if !self.take_token(conn) {
            return Err(OpError::RateLimited);
        }
        if self.needs_connect(conn) && !matches!(op, Op::Connect { .. }) {
            return Err(OpError::Unauthorized("connect first"));
        }
        let ns = &self.node.access.namespaces;
        match op {
            Op::Heartbeat => Ok(Outcome::Heartbeat),
            Op::Subscribe { channel, since } => self
                .subscribe_client(conn, cref, channel, since.clone(), false)
                .await
                .map(Outcome::Subscribed),
            Op::SubscribeSigned {
                channel,
                since,
                token,
            } => {
                self.check_subscribe_token(conn, channel, token)?;
                self.subscribe_client(conn, cref, channel, since.clone(), true)
                    .await
                    .map(Outcome::Subscribed)
            }
            Op::Connect { token } => self.connect(conn, token),
            Op::Refresh { token } => self.refresh(conn, token),
            Op::Presence { channel } | Op::PresenceStats { channel } => {
                if !ns.rule(channel).presence {
                    return Err(OpError::Denied(rules::DENY_PRESENCE));
                }
                let stats = matches!(op, Op::PresenceStats { .. });
                Ok(Outcome::Presence(self.presence_json(channel, stats).await))
            }
            Op::Unsubscribe { channel } => {
                Ok(Outcome::Unsubscribed(self.unsubscribe(conn, channel)))
            }
            Op::Publish { channel, data } => {
                if !self.config().ws.client_publish {
                    return Err(OpError::PublishDenied);
                }
                if !ns.rule(channel).publish {
                    return Err(OpError::Denied(rules::DENY_PUBLISH));
                }
                if !self.is_subscribed(conn, channel) {
                    return Err(OpError::NotSubscribed(channel.clone()));
                }
                let exclude = Some((self.id, conn.key));
                let r = self.publish(channel, data.clone(), exclude).await?;
                Ok(Outcome::Published(r))
            }
            Op::Relay {
                channel,
                data,
                echo,
                keep_secs,
            } => {
                let exclude = (!echo).then_some((self.id, conn.key));
                let keep = (*keep_secs > 0).then(|| Duration::from_secs(*keep_secs));
                let r = self
                    .publish_kept(channel, data.clone(), exclude, keep)
                    .await?;
                if let Some(redis) = &self.node.sources.redis {
                    // Django's side (RedisPublisher, SETEX'd keys) sees it too.
                    redis.write_back(crate::sources::redis::WriteBack {
                        channel: channel.clone(),
                        data: data.clone(),
                        keep_secs: *keep_secs,
                    });
                }
                Ok(Outcome::Published(r))
            }
            Op::History {
                channel,
                since,
                limit,
            } => {
                if !ns.rule(channel).history {
                    return Err(OpError::Denied(rules::DENY_HISTORY));
                }
                let query = HomeQuery::History {
                    since: since.clone(),
                    limit: *limit,
                };
                match self.ask_home(channel, query).await? {
                    HomeAnswer::History(h) => Ok(Outcome::History(h)),
                    _ => Err(UNEXPECTED),
                }
            }
            Op::Follow { channels, after_id } => {
                let replay = self.follow(conn, cref, channels, *after_id).await?;
                Ok(Outcome::Followed { replay })
            }
            Op::Post { .. } | Op::LastId => Err(UNEXPECTED),
        }
    }

    /// Makes `conn` follow exactly `channels`, and with `after_id` returns
    /// their retained publications with a higher id, in id order. Each
    /// channel's replay stops at the offset its subscription took effect
    /// at, so nothing is both replayed and delivered live.
    async fn follow(
        &self,
        conn: &Rc<Conn>,
        cref: ConnRef,
        channels: &[Box<str>],
        after_id: Option<u64>,
    ) -> Result<Vec<Arc<Publication>>, OpError> {
        let max = self.config().limits.max_subscriptions_per_connection;
        if channels.len() > max {
            return Err(OpError::TooManySubscriptions(max));
        }
        let old: Vec<Rc<str>> = conn.subs.borrow().clone();
        for ch in old.iter().filter(|c| !channels.iter().any(|n| **n == ***c)) {
            self.unsubscribe(conn, ch);
        }
        let mut replay = Vec::new();
        for ch in channels {
            let info = self.subscribe_client(conn, cref, ch, None, false).await?;
            let Some(after) = after_id else { continue };
            let query = HomeQuery::History {
                since: None,
                limit: usize::MAX,
            };
            match self.ask_home(ch, query).await? {
                HomeAnswer::History(h) => replay.extend(
                    h.publications
                        .into_iter()
                        .filter(|p| p.id > after && p.offset <= info.offset),
                ),
                _ => return Err(UNEXPECTED),
            }
        }
        replay.sort_by_key(|p| p.id);
        Ok(replay)
    }

    /// Takes one token from `conn`'s request rate limit; false when there is
    /// none (the call is answered with -32003).
    pub(crate) fn take_token(&self, conn: &Conn) -> bool {
        let limits = &self.config().limits;
        let mut bucket = conn.bucket.get();
        let allowed = bucket.take(limits.rate_per_sec, limits.rate_burst, Instant::now());
        conn.bucket.set(bucket);
        allowed
    }

    /// Subscribes a client, or reports where the channel is when it is
    /// already subscribed (changing nothing), if the channel's namespace
    /// lets it (`signed`: a valid subscription token came with the call).
    async fn subscribe_client(
        &self,
        conn: &Rc<Conn>,
        cref: ConnRef,
        channel: &str,
        mut since: Option<Since>,
        signed: bool,
    ) -> Result<SubscribeInfo, OpError> {
        let rule = self.node.access.namespaces.rule(channel);
        rule.may_subscribe(conn.identity().as_deref(), channel, signed)
            .map_err(OpError::Denied)?;
        if !rule.history {
            since = None;
        }
        if self.is_subscribed(conn, channel) {
            return match self.ask_home(channel, HomeQuery::Last).await? {
                HomeAnswer::Last(offset, epoch) => Ok(SubscribeInfo {
                    offset,
                    epoch,
                    recovered: None,
                    missed: None,
                    kept: None,
                }),
                _ => Err(UNEXPECTED),
            };
        }
        let max = self.config().limits.max_subscriptions_per_connection;
        if conn.subs.borrow().len() >= max {
            return Err(OpError::TooManySubscriptions(max));
        }
        Ok(self.subscribe(conn, cref, channel, since).await?)
    }
}
