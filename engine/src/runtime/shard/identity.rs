//! Who a shard's connections are: the user index (user ids interned once
//! per shard, each with its connections), connections waiting for
//! `connect`, token expiry, the per-user questions every shard answers
//! for the backend (`disconnect`, `unsubscribe`), and presence, which a
//! channel's home shard keeps (who is subscribed, its join/leave events).

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use super::*;
use crate::access::{self, Claims, Identity};
use crate::protocol::adapter::protocol;
use crate::pubsub::ops::OpError;

/// Presence lists longer than this are answered with counts only.
pub const PRESENCE_LIST_MAX: usize = 1000;

/// Users by id, each with its connections on this shard: interns the ids
/// (one allocation per user per shard, however many connections).
#[derive(Default)]
pub struct UserIndex {
    users: HashMap<Rc<str>, Vec<ConnKey>>,
}

impl UserIndex {
    /// The interned id for `user`, with `conn` added to its connections.
    pub fn add(&mut self, user: &str, conn: ConnKey) -> Rc<str> {
        if let Some(k) = self.users.get_key_value(user).map(|(k, _)| k.clone()) {
            if let Some(conns) = self.users.get_mut(user) {
                conns.push(conn);
            }
            return k;
        }
        let k: Rc<str> = user.into();
        self.users.insert(k.clone(), vec![conn]);
        k
    }

    pub fn remove(&mut self, user: &str, conn: ConnKey) {
        if let Some(conns) = self.users.get_mut(user) {
            conns.retain(|&c| c != conn);
            if conns.is_empty() {
                self.users.remove(user);
            }
        }
    }

    pub fn conns(&self, user: &str) -> &[ConnKey] {
        self.users.get(user).map_or(&[], |v| v)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

impl Shard {
    /// Gives `conn` the identity of verified `claims`.
    pub(crate) fn set_identity(&self, conn: &Conn, claims: Claims) -> Rc<Identity> {
        if let Some(old) = conn.identity() {
            self.users.borrow_mut().remove(&old.user, conn.key);
        }
        let user = self.users.borrow_mut().add(&claims.sub, conn.key);
        let id = Rc::new(Identity::new(user, claims));
        conn.set_identity(Some(id.clone()));
        id
    }

    /// Forgets `conn`'s identity (it is going away).
    pub(crate) fn drop_identity(&self, conn: &Conn) {
        if let Some(id) = conn.take_identity() {
            self.users.borrow_mut().remove(&id.user, conn.key);
        }
    }

    /// `conn` must `connect` within `ws.handshake_timeout`.
    pub(crate) fn await_connect(&self, conn: &Rc<Conn>, now: Instant) {
        let deadline = now + self.config().handshake_timeout();
        self.pending_auth
            .borrow_mut()
            .push((conn.clone(), deadline));
    }

    /// Once a second: closes connections whose token expired (4003) and
    /// those that did not `connect` in time (4001).
    pub(super) fn check_identities(&self, now: Instant) {
        if !self.node.access.enabled() {
            return;
        }
        let late: Vec<Rc<Conn>> = {
            let mut pending = self.pending_auth.borrow_mut();
            let mut late = Vec::new();
            pending.retain(|(c, deadline)| {
                if !c.is_open() || c.identity().is_some() {
                    return false;
                }
                if now >= *deadline {
                    late.push(c.clone());
                    return false;
                }
                true
            });
            late
        };
        for c in &late {
            self.close_conn(c, access::CLOSE_UNAUTHORIZED, "unauthorized", false, now);
        }
        if self.users.borrow().is_empty() {
            return;
        }
        let unix = access::token::unix_now();
        let expired: Vec<Rc<Conn>> = self
            .conns
            .borrow()
            .iter()
            .filter(|c| {
                c.is_open()
                    && c.identity()
                        .is_some_and(|id| id.exp.is_some_and(|exp| exp <= unix))
            })
            .cloned()
            .collect();
        for c in &expired {
            self.close_conn(c, access::CLOSE_TOKEN_EXPIRED, "token expired", false, now);
        }
    }

    /// The user whose personal channel `channel` is (`user:{sub}`), when
    /// tokens are on: a publication there reaches every connection of that
    /// user on every shard, whether it subscribed or not.
    pub(crate) fn personal_user<'c>(&self, channel: &'c str) -> Option<&'c str> {
        if !self.node.access.enabled() {
            return None;
        }
        channel
            .strip_prefix(access::PERSONAL_PREFIX)
            .filter(|u| !u.is_empty())
    }

    /// Open connections of `user` on this shard.
    fn user_conns(&self, user: &str) -> Vec<Rc<Conn>> {
        let conns = self.conns.borrow();
        self.users
            .borrow()
            .conns(user)
            .iter()
            .filter_map(|&k| conns.get(k).cloned())
            .filter(|c| c.is_open())
            .collect()
    }

    /// Closes every connection of `user` here with 4004; how many.
    pub(super) fn disconnect_user(&self, user: &str) -> usize {
        let conns = self.user_conns(user);
        let now = Instant::now();
        for c in &conns {
            self.close_conn(c, access::CLOSE_DISCONNECTED, "disconnected", false, now);
        }
        conns.len()
    }

    /// Unsubscribes every connection of `user` here from `channel`; how
    /// many were subscribed.
    pub(super) fn unsubscribe_user(&self, user: &str, channel: &str) -> usize {
        self.user_conns(user)
            .iter()
            .filter(|c| self.unsubscribe(c, channel))
            .count()
    }

    /// Who `conn` is for the presence of `channel`, when the channel's
    /// namespace keeps presence or sends join/leave events (nothing, and no
    /// allocation, for the others).
    pub(super) fn member_of(&self, conn: &Conn, channel: &str) -> Option<Member> {
        let rule = self.node.access.namespaces.rule(channel);
        if !rule.presence && !rule.join_leave {
            return None;
        }
        let id = conn.identity();
        Some(Member {
            shard: self.id,
            conn: conn.key,
            user: id.as_ref().map_or("", |id| &*id.user).into(),
            info: id.as_ref().and_then(|id| id.info()).map(Into::into),
        })
    }

    /// At the channel's home shard: `m` subscribed; its `join` goes out.
    pub(super) fn home_join(&self, channel: &str, m: Member) {
        let event = self.presence_event("join", channel, &m);
        if let Some(bus) = self.presence_bus(channel) {
            bus.send(BusRequest::Join {
                channel: channel.into(),
                field: wire::member_field(&bus.node_id, m.shard, m.conn),
                value: wire::member_value(&m.user, m.info.as_deref()),
            });
        }
        self.home.borrow_mut().join(channel, m);
        if let Some(event) = event {
            self.send_event(event);
        }
    }

    /// At the channel's home shard: connection `conn` of shard `from` left
    /// the channel; its `leave` goes out if the channel keeps presence.
    pub(super) fn home_leave(&self, channel: &str, from: usize, conn: ConnKey) {
        let left = {
            let mut home = self.home.borrow_mut();
            let left = home.leave(channel, from, conn);
            home.unsubscribe(channel, from);
            left
        };
        if let (Some(bus), Some(m)) = (self.presence_bus(channel), &left) {
            bus.send(BusRequest::Leave {
                channel: channel.into(),
                field: wire::member_field(&bus.node_id, m.shard, m.conn),
            });
        }
        if let Some(event) = left.and_then(|m| self.presence_event("leave", channel, &m)) {
            self.send_event(event);
        }
        self.detach_if_unwatched(channel);
    }

    /// Cluster mode, for a channel whose namespace keeps presence: the
    /// bus that holds its cluster-wide presence hash.
    fn presence_bus(&self, channel: &str) -> Option<&std::sync::Arc<crate::cluster::Bus>> {
        let bus = self.node.bus.as_ref()?;
        self.node
            .access
            .namespaces
            .rule(channel)
            .presence
            .then_some(bus)
    }

    /// A member's client id: `SHARD.CONN`, `NODE.SHARD.CONN` in cluster
    /// mode (as the cluster-wide presence lists it).
    fn client_id(&self, m: &Member) -> String {
        match &self.node.bus {
            Some(bus) => wire::member_field(&bus.node_id, m.shard, m.conn),
            None => format!("{}.{}", m.shard, m.conn),
        }
    }

    /// Presence of `channel` as the JSON result of `presence` (`stats`:
    /// `presence_stats`): `{"presence":{CLIENT:{"client","user","info"?}}}`,
    /// or counts `{"num_clients":n,"num_users":m}` for stats and for
    /// channels with more than [`PRESENCE_LIST_MAX`] subscribers
    /// (`"truncated":true`). Answered over every live node from the
    /// channel's presence hash in cluster mode with the bus up, by the
    /// channel's home shard otherwise.
    pub(crate) async fn presence_json(&self, channel: &str, stats: bool) -> Vec<u8> {
        if let Some(p) = self.cluster_presence(channel, !stats).await {
            let list = p.list.as_ref().map(|l| {
                l.iter()
                    .map(|e| (e.client.clone(), e.user.as_str(), e.info.as_deref()))
                    .collect::<Vec<_>>()
            });
            return presence_answer_json(list.as_deref(), p.clients, p.users, stats);
        }
        let answer = match self
            .ask_home(channel, HomeQuery::Presence { list: !stats })
            .await
        {
            Ok(HomeAnswer::Presence(p)) => p,
            _ => PresenceAnswer::default(),
        };
        let list = answer.list.as_ref().map(|l| {
            l.iter()
                .map(|m| (self.client_id(m), &*m.user, m.info.as_deref()))
                .collect::<Vec<_>>()
        });
        presence_answer_json(list.as_deref(), answer.clients, answer.users, stats)
    }

    /// Cluster mode with the bus up: the channel's presence over every
    /// live node; `None` otherwise or when Redis could not be read.
    async fn cluster_presence(&self, channel: &str, list: bool) -> Option<wire::ClusterPresence> {
        let bus = self.presence_bus(channel).filter(|b| b.is_up())?;
        let (reply, rx) = futures_channel::oneshot::channel();
        bus.send(BusRequest::Presence {
            channel: channel.into(),
            list,
            max: PRESENCE_LIST_MAX,
            reply,
        });
        rx.await.ok().flatten()
    }

    /// A `join` or `leave` event of `m` on `channel`, when the channel's
    /// namespace has `join_leave`, for every native subscriber but `m`.
    fn presence_event(&self, kind: &str, channel: &str, m: &Member) -> Option<Gather> {
        if !self.node.access.namespaces.rule(channel).join_leave {
            return None;
        }
        let mut json =
            format!(r#"{{"jsonrpc":"2.0","method":"{kind}","params":{{"channel":"#).into_bytes();
        write_json_str(&mut json, channel);
        json.extend_from_slice(br#","client":"#);
        write_json_str(&mut json, &self.client_id(m));
        json.extend_from_slice(br#","user":"#);
        write_json_str(&mut json, &m.user);
        if let Some(info) = &m.info {
            json.extend_from_slice(br#","info":"#);
            json.extend_from_slice(info.as_bytes());
        }
        json.extend_from_slice(b"}}");
        let frame = event_frame(&json);
        if let Some(bus) = self.node.bus.as_ref().filter(|b| b.is_up()) {
            // Subscribers on the other nodes get it through the channel's
            // bus subscription.
            bus.send(BusRequest::Event {
                channel: channel.into(),
                json: bytes::Bytes::from(json),
            });
        }
        Some(Gather::Event {
            channel: channel.into(),
            frame,
            except: (m.shard, m.conn),
        })
    }

    /// From the home shard: a [`Gather::Event`] to the shards that have
    /// subscribers of its channel (this one directly).
    fn send_event(&self, event: Gather) {
        let Gather::Event { channel, .. } = &event else {
            return;
        };
        let shards: Vec<usize> = self.home.borrow().interested(channel).collect();
        for shard in shards {
            if shard == self.id {
                self.deliver_event(&event);
                continue;
            }
            // Nobody waits for the answer.
            let (reply, _) = futures_channel::oneshot::channel();
            self.node.mailboxes[shard].push(ShardMsg::Gather {
                query: event.clone(),
                reply,
            });
        }
    }

    /// Sends a [`Gather::Event`] to this shard's native subscribers.
    pub(super) fn deliver_event(&self, query: &Gather) {
        let Gather::Event {
            channel,
            frame,
            except,
        } = query
        else {
            return;
        };
        let targets: Vec<Rc<Conn>> = {
            let table = self.table.borrow();
            let conns = self.conns.borrow();
            let Some(subs) = table.subscribers(channel) else {
                return;
            };
            subs.iter()
                .filter(|&&k| (self.id, k) != *except)
                .filter_map(|&k| conns.get(k).cloned())
                .filter(|c| c.is_open() && protocol(c.proto).name() == "native")
                .collect()
        };
        for c in &targets {
            self.send_control(c, frame.clone());
        }
    }

    /// `connect`: authenticates a connection that has no identity yet.
    pub(super) fn connect(&self, conn: &Conn, token: &str) -> Result<Outcome, OpError> {
        if conn.identity().is_some() {
            return Err(OpError::Denied("permission denied: already connected"));
        }
        let claims = self.verify(token)?;
        let id = self.set_identity(conn, claims);
        Ok(Outcome::Connected {
            user: (*id.user).into(),
            exp: id.exp,
        })
    }

    /// `refresh`: a new token for the same user.
    pub(super) fn refresh(&self, conn: &Conn, token: &str) -> Result<Outcome, OpError> {
        let Some(old) = conn.identity() else {
            return Err(OpError::Unauthorized("connect first"));
        };
        let claims = self.verify(token)?;
        if claims.sub != *old.user {
            return Err(OpError::Unauthorized(
                access::TokenError::WrongSubject.reason(),
            ));
        }
        let id = Rc::new(Identity::new(old.user.clone(), claims));
        conn.set_identity(Some(id.clone()));
        Ok(Outcome::Connected {
            user: (*id.user).into(),
            exp: id.exp,
        })
    }

    /// Whether a subscription token is valid for `channel` and `conn`.
    pub(super) fn check_subscribe_token(
        &self,
        conn: &Conn,
        channel: &str,
        token: &str,
    ) -> Result<(), OpError> {
        let claims = self.verify(token)?;
        let user = conn.identity();
        let user = user.as_ref().map_or("", |id| &*id.user);
        let for_channel = claims.channel.as_deref() == Some(channel);
        if !for_channel || (!claims.sub.is_empty() && claims.sub != user) {
            return Err(OpError::Unauthorized(
                access::TokenError::WrongSubject.reason(),
            ));
        }
        Ok(())
    }

    fn verify(&self, token: &str) -> Result<Claims, OpError> {
        self.node
            .access
            .verifier
            .verify(token, access::token::unix_now())
            .map_err(|e| OpError::Unauthorized(e.reason()))
    }

    /// Whether `conn` must `connect` before anything else.
    pub(super) fn needs_connect(&self, conn: &Conn) -> bool {
        self.node.access.required
            && self.node.access.enabled()
            && protocol(conn.proto).public()
            && conn.identity().is_none()
    }
}

use crate::cluster::{wire, BusRequest};
use crate::pubsub::channel_table::ConnKey;
use crate::pubsub::home_shard::{Member, PresenceAnswer};
use crate::pubsub::ops::Outcome;
use crate::pubsub::publication::write_json_str;

/// The JSON of a presence answer: the list (client id, user, info) when
/// there is one, else the counts (`"truncated":true` unless `stats`).
fn presence_answer_json(
    list: Option<&[(String, &str, Option<&str>)]>,
    clients: usize,
    users: usize,
    stats: bool,
) -> Vec<u8> {
    let Some(list) = list else {
        let too_many = if stats { "" } else { r#","truncated":true"# };
        return format!(r#"{{"num_clients":{clients},"num_users":{users}{too_many}}}"#)
            .into_bytes();
    };
    let mut out = br#"{"presence":{"#.to_vec();
    for (i, (client, user, info)) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(&mut out, client);
        out.extend_from_slice(br#":{"client":"#);
        write_json_str(&mut out, client);
        out.extend_from_slice(br#","user":"#);
        write_json_str(&mut out, user);
        if let Some(info) = info {
            out.extend_from_slice(br#","info":"#);
            out.extend_from_slice(info.as_bytes());
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"}}");
    out
}

/// A `join`/`leave` event's WebSocket text frame.
pub(crate) fn event_frame(json: &[u8]) -> bytes::Bytes {
    let mut frame = Vec::with_capacity(json.len() + 4);
    crate::protocol::codec::write_frame(&mut frame, crate::protocol::codec::OpCode::Text, json);
    bytes::Bytes::from(frame)
}
