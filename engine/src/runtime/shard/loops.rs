//! The shard's long-running tasks besides the flusher: the mailbox loop,
//! the once-a-second timer (pings, pong deadlines, stuck closes, history
//! expiry) and shutdown.

use std::net::Shutdown;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::tick::Tick;
use super::*;
use crate::protocol::adapter::protocol;
use crate::protocol::codec::close_code;
use crate::pubsub::ops::SubscribeInfo;
use crate::runtime::sys;

/// Seconds between asking the allocator to return this shard's free
/// memory to the system (see [`sys::allocator_collect`]).
const COLLECT_EVERY: u64 = 5;

impl Shard {
    // ----- the shard's loops ---------------------------------------------

    /// Handles one message from another shard.
    pub fn handle_msg(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish {
                channel,
                data,
                exclude,
                keep,
                reply,
            } => {
                if let Some(bus) = self.via_bus() {
                    return self.forward_to_bus(bus, channel, data, exclude, reply);
                }
                let r = self.publish_at_home(&channel, data, exclude, keep);
                let _ = reply.send(r);
            }
            ShardMsg::SourcePublish {
                channel,
                data,
                id,
                reply,
            } => {
                if let Some(bus) = self.via_bus() {
                    return self.forward_to_bus(bus, channel, data, None, reply);
                }
                let r = self.publish_at_home_with_id(&channel, data, None, None, id);
                let _ = reply.send(r);
            }
            ShardMsg::Kept {
                channel,
                data,
                ttl,
                joined,
            } => {
                self.kept_from_source(&channel, data, ttl, joined);
            }
            ShardMsg::Deliver {
                publication,
                exclude,
            } => {
                self.deliver(&publication, exclude);
            }
            ShardMsg::Broadcast { publication, reply } => {
                let _ = reply.send(self.deliver_all(&publication));
            }
            ShardMsg::Subscribe {
                channel,
                from,
                conn,
                since,
                member,
                reply,
            } => {
                if let Some(bus) = self.node.bus.clone() {
                    return self.home_subscribe_cluster(
                        &bus,
                        channel,
                        from,
                        conn,
                        since,
                        member.map(|m| *m),
                        reply,
                    );
                }
                let outcome = self.home.borrow_mut().subscribe(
                    &channel,
                    from,
                    since.as_ref(),
                    Instant::now(),
                );
                if let Some(m) = member {
                    self.home_join(&channel, *m);
                }
                self.fetch_kept(&channel, &outcome);
                self.node.mailboxes[from].push(ShardMsg::SubscribeAck {
                    channel,
                    conn,
                    outcome,
                    reply,
                });
            }
            ShardMsg::SubscribeAck {
                channel,
                conn,
                outcome,
                reply,
            } => match self.conn(conn).filter(|c| c.is_open()) {
                Some(c) => {
                    self.activate(&c, &channel, &outcome);
                    let _ = reply.send(SubscribeInfo::from(&outcome));
                }
                None => {
                    // The subscriber left while the ack was under way.
                    let home = self.node.home_of(&channel);
                    self.node.mailboxes[home].push(ShardMsg::Unsubscribe {
                        channel,
                        from: self.id,
                        conn: conn.key,
                    });
                }
            },
            ShardMsg::Unsubscribe {
                channel,
                from,
                conn,
            } => self.home_leave(&channel, from, conn),
            ShardMsg::Home {
                channel,
                query,
                reply,
            } => {
                let _ = reply.send(self.answer_home(&channel, query));
            }
            ShardMsg::Gather { query, reply } => {
                let _ = reply.send(self.report(&query));
            }
            ShardMsg::WakeSession(conn) => {
                if let Some(conn) = self.conn(conn) {
                    self.wake_session(&conn);
                }
            }
            ShardMsg::BusDeliver { channel, entry } => self.on_bus_deliver(&channel, entry),
            ShardMsg::BusAttached {
                channel,
                gen,
                offset,
                epoch,
            } => self.on_bus_attached(channel, gen, offset, epoch),
            ShardMsg::BusRecovered {
                channel,
                token,
                entries,
            } => self.on_bus_recovered(channel, token, entries),
            ShardMsg::BusLost => self.on_bus_lost(),
            ShardMsg::Shutdown => self.begin_shutdown(),
            ShardMsg::PublishersDone => {
                self.quiet_shards.set(self.quiet_shards.get() + 1);
                if self.quiet_shards.get() == self.node.shards {
                    self.close_clients();
                }
            }
        }
    }

    /// Stop accepting; backend connections answer the requests they have
    /// received and close (see `runtime::start::shard_main` for the rest of
    /// the shutdown).
    pub fn begin_shutdown(&self) {
        if self.shutdown.is_raised() {
            return;
        }
        self.shutdown.raise();
        if self.backend_conns.get() == 0 {
            self.backend_idle.notify();
        }
    }

    /// Closes every client with 1001, queued behind the frames it already
    /// has: once every shard is quiet, that includes every publication
    /// acknowledged to a backend.
    pub fn close_clients(&self) {
        if self.clients_closed.is_raised() {
            return;
        }
        self.clients_closed.raise();
        let now = Instant::now();
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().cloned().collect();
        for c in &conns {
            self.close_conn(c, close_code::GOING_AWAY, "server shutdown", false, now);
        }
        *self.closed_at_shutdown.borrow_mut() = conns;
        if self.sessions.get() == 0 {
            self.drained.notify();
        }
    }

    /// Frames still queued, never written, on the connections closed at
    /// shutdown.
    pub fn unsent_frames(&self) -> usize {
        self.closed_at_shutdown
            .borrow()
            .iter()
            .map(|c| c.unsent_frames())
            .sum()
    }

    /// A backend connection is being served (until the guard drops).
    pub(crate) fn backend_conn(self: &Rc<Self>) -> BackendConnGuard {
        self.backend_conns.set(self.backend_conns.get() + 1);
        BackendConnGuard(self.clone())
    }

    /// Pings, pong deadlines, stuck closes, history expiry and the queue
    /// room of drained backlogs, once a second.
    pub async fn run_timer(self: Rc<Self>) {
        let cfg = &self.node.config;
        let (interval, pong_timeout) = (cfg.ping_interval(), cfg.pong_timeout());
        let mut ticks = 0u64;
        loop {
            monoio::time::sleep(std::time::Duration::from_secs(1)).await;
            ticks += 1;
            let now = Instant::now();
            let tick = Tick::of(now);
            let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().cloned().collect();
            for c in &conns {
                c.release_room();
                let proto = protocol(c.proto);
                if !proto.websocket() {
                    // A parked HTTP request: answered when it waited too long.
                    let expired = proto
                        .expire_after(cfg)
                        .is_some_and(|after| tick.since(c.last_seen.get()) >= after);
                    if expired && c.is_open() {
                        c.mark_closing(now);
                        self.send_control(c, proto.expired_answer());
                    }
                    continue;
                }
                if c.socket().is_none() {
                    // An Engine.IO polling session: its protocol's own
                    // pings and pong deadline keep it (no WebSocket ping).
                    continue;
                }
                let clock = Liveness {
                    closing_since: c.closing_since.get(),
                    ping_sent: c.ping_sent.get(),
                    last_seen: c.last_seen.get(),
                };
                match clock.poll(tick, interval, pong_timeout) {
                    Due::Idle => {}
                    Due::ForceClose => sys::shutdown_socket(c.fd(), Shutdown::Both),
                    Due::PongTimeout => {
                        self.close_conn(c, close_code::INTERNAL_ERROR, "pong timeout", true, now)
                    }
                    Due::Ping => {
                        c.ping_sent.set(Some(tick));
                        self.send_control(c, self.ping.clone());
                    }
                }
            }
            self.check_identities(now);
            if ticks.is_multiple_of(10) {
                self.home.borrow_mut().prune(now);
            }
            if ticks.is_multiple_of(COLLECT_EVERY) {
                sys::allocator_collect(false);
            }
        }
    }

    /// Drains the mailbox until shutdown has completed.
    pub async fn run_mailbox(self: Rc<Self>) {
        let mailbox = &self.node.mailboxes[self.id];
        loop {
            let msg = mailbox.recv().await;
            self.handle_msg(msg);
            // Take what else is there now, but let I/O run between bursts.
            for _ in 0..1024 {
                match mailbox.try_pop() {
                    Some(m) => self.handle_msg(m),
                    None => break,
                }
            }
        }
    }
}

/// Counts one backend connection while it lives.
pub(crate) struct BackendConnGuard(Rc<Shard>);

impl Drop for BackendConnGuard {
    fn drop(&mut self) {
        let shard = &self.0;
        shard.backend_conns.set(shard.backend_conns.get() - 1);
        if shard.backend_conns.get() == 0 && shard.shutdown.is_raised() {
            shard.backend_idle.notify();
        }
    }
}

/// A connection's liveness clock, as the once-a-second timer sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Liveness {
    /// When the server started closing it.
    pub closing_since: Option<Tick>,
    /// When the unanswered ping went out.
    pub ping_sent: Option<Tick>,
    /// When the client last sent anything.
    pub last_seen: Tick,
}

/// What the timer does to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    Idle,
    /// The client has not finished the close handshake in time: cut the
    /// socket.
    ForceClose,
    /// No pong within the deadline: close with 1011.
    PongTimeout,
    /// Quiet for `ping_interval`: send a ping.
    Ping,
}

impl Liveness {
    pub fn poll(&self, now: Tick, interval: Duration, pong_timeout: Duration) -> Due {
        match (self.closing_since, self.ping_sent) {
            (Some(t), _) if now.since(t) > pong_timeout => Due::ForceClose,
            (Some(_), _) => Due::Idle,
            (None, Some(t)) if now.since(t) > pong_timeout => Due::PongTimeout,
            (None, Some(_)) => Due::Idle,
            (None, None) if now.since(self.last_seen) >= interval => Due::Ping,
            (None, None) => Due::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn at(t0: Instant, s: u64) -> Tick {
        Tick::of(t0 + S * s as u32)
    }

    #[test]
    fn quiet_connection_is_pinged_after_the_interval() {
        let t0 = Instant::now();
        let l = Liveness {
            closing_since: None,
            ping_sent: None,
            last_seen: Tick::of(t0),
        };
        assert_eq!(l.poll(at(t0, 24), 25 * S, 10 * S), Due::Idle);
        assert_eq!(l.poll(at(t0, 25), 25 * S, 10 * S), Due::Ping);
    }

    #[test]
    fn unanswered_ping_times_out() {
        let t0 = Instant::now();
        let l = Liveness {
            closing_since: None,
            ping_sent: Some(Tick::of(t0)),
            last_seen: Tick::of(t0),
        };
        assert_eq!(l.poll(at(t0, 10), 25 * S, 10 * S), Due::Idle);
        assert_eq!(l.poll(at(t0, 11), 25 * S, 10 * S), Due::PongTimeout);
    }

    #[test]
    fn stuck_close_is_cut_and_never_pinged() {
        let t0 = Instant::now();
        let l = Liveness {
            closing_since: Some(Tick::of(t0)),
            ping_sent: None,
            last_seen: Tick::of(t0 - 100 * S),
        };
        assert_eq!(l.poll(at(t0, 5), 25 * S, 10 * S), Due::Idle);
        assert_eq!(l.poll(at(t0, 11), 25 * S, 10 * S), Due::ForceClose);
    }
}
