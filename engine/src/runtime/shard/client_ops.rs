//! Runs a client's operations ([`Op`]) against the engine: the policy that
//! is the same whatever protocol the client speaks (rate limit,
//! subscription limit, who may publish).

use std::rc::Rc;
use std::time::Instant;

use super::conn::Conn;
use super::{ConnRef, HomeAnswer, HomeQuery, Shard, ShardGone};
use crate::pubsub::home_shard::Since;
use crate::pubsub::ops::{Op, OpError, Outcome, SubscribeInfo};

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
        if !self.take_token(conn) {
            return Err(OpError::RateLimited);
        }
        match op {
            Op::Heartbeat => Ok(Outcome::Heartbeat),
            Op::Subscribe { channel, since } => self
                .subscribe_client(conn, cref, channel, since.clone())
                .await
                .map(Outcome::Subscribed),
            Op::Unsubscribe { channel } => {
                Ok(Outcome::Unsubscribed(self.unsubscribe(conn, channel)))
            }
            Op::Publish { channel, data } => {
                if !self.config().ws.client_publish {
                    return Err(OpError::PublishDenied);
                }
                if !self.is_subscribed(conn, channel) {
                    return Err(OpError::NotSubscribed(channel.clone()));
                }
                let exclude = Some((self.id, conn.key));
                let r = self.publish(channel, data.clone(), exclude).await?;
                Ok(Outcome::Published(r))
            }
            Op::History {
                channel,
                since,
                limit,
            } => {
                let query = HomeQuery::History {
                    since: since.clone(),
                    limit: *limit,
                };
                match self.ask_home(channel, query).await? {
                    HomeAnswer::History(h) => Ok(Outcome::History(h)),
                    _ => Err(UNEXPECTED),
                }
            }
        }
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
    /// already subscribed (changing nothing).
    async fn subscribe_client(
        &self,
        conn: &Rc<Conn>,
        cref: ConnRef,
        channel: &str,
        since: Option<Since>,
    ) -> Result<SubscribeInfo, OpError> {
        if self.is_subscribed(conn, channel) {
            return match self.ask_home(channel, HomeQuery::Last).await? {
                HomeAnswer::Last(offset, epoch) => Ok(SubscribeInfo {
                    offset,
                    epoch,
                    recovered: None,
                    missed: None,
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
