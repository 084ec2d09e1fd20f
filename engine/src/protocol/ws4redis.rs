//! django-websocket-redis (ws4redis 0.6.0) endpoints, as Rodan and the
//! ws4redis examples use them (COMPAT section 3):
//! `ws://host/ws/<facility>?subscribe-broadcast&publish-broadcast&echo`.
//!
//! - The facility is the request path after `[protocols.ws4redis] path`;
//!   the flags are the query's keys (trimmed, case-insensitive, values
//!   ignored, unknown keys ignored). The broadcast channel is
//!   `{prefix}:broadcast:{facility}` (`broadcast:{facility}` without a
//!   prefix), the very name ws4redis gives its Redis channel.
//! - `subscribe-broadcast` subscribes before any client message; the
//!   channel's kept last message (`expire`) comes first.
//! - Every client message but an empty one or the heartbeat string is
//!   published, as it is, on the broadcast channel when `publish-broadcast`
//!   is set ([`Op::Relay`]), kept as the channel's last message for
//!   `expire` seconds. Without `echo` the sender does not receive its own
//!   publication: by origin, where ws4redis compared bytes with the last
//!   message the socket sent (which also hid identical messages of other
//!   publishers).
//! - Publications go out as text frames holding exactly the published
//!   bytes, no envelope.
//! - With a `heartbeat` string, it is sent after every client message and
//!   after 4 s without one (ws4redis's `select` timeout).
//! - User, group and session channels are named after the identity of the
//!   connection token the upgrade carried (`?token=` or `Authorization:
//!   Bearer`, verified with the `[auth]` keys): user = `sub`, groups =
//!   `groups`, session = `sid`. `{prefix}:user:{sub}:{facility}`, one
//!   `{prefix}:group:{g}:{facility}` per group, and
//!   `{prefix}:session:{sid}:{facility}`, as ws4redis forms them for
//!   `SELF` (its `subscribe-user` etc. always mean the logged-in user's
//!   own channels; the flag's value, `SELF` or anything, is ignored).
//!   Without a token there is nobody to name them after: 403, as ws4redis
//!   has no user for an anonymous request (and ringcast never takes a
//!   user name from the URL).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::access::Claims;
use crate::ops::config::Config;

use super::adapter::{Answer, Call, Exchange, Opened, Protocol, SessionState};
use super::handshake::{Refused, Upgrade};
use super::rpc::{valid_channel, ReplyWriter, RpcError, RpcParser};
use crate::pubsub::ops::{Op, Outcome};
use crate::pubsub::publication::{text_frame, Publication};

/// Seconds without a client message after which the heartbeat is sent
/// (ws4redis's `select` timeout).
pub const IDLE_HEARTBEAT: Duration = Duration::from_secs(4);

/// The ws4redis protocol.
pub struct Ws4redis;

/// What one connection asked for in its URL, and its heartbeat clock.
#[derive(Debug)]
struct State {
    /// The channels client messages go to (`publish-*` flags).
    publish: Box<[Box<str>]>,
    echo: bool,
    keep_secs: u64,
    heartbeat: Option<Box<[u8]>>,
    /// When the next heartbeat is owed (with a heartbeat string).
    heartbeat_due: Instant,
}

/// Refusals of an upgrade, by the flag or facility at fault.
const NEEDS_IDENTITY: Refused = Refused {
    status: 403,
    reason: "user, group and session channels need a connection token (?token= or \
             Authorization: Bearer) naming the user; this request has none",
};
const NEEDS_SID: Refused = Refused {
    status: 403,
    reason: "session channels need a connection token with a sid claim",
};
const BAD_IDENTITY: Refused = Refused {
    status: 403,
    reason: "the token's user, group or session id makes an invalid channel name (1-255 \
             bytes of printable ASCII without spaces)",
};
const BAD_FACILITY: Refused = Refused {
    status: 400,
    reason: "invalid facility: the channel name it makes must be 1-255 bytes of printable \
             ASCII without spaces",
};

/// Which audiences a `subscribe-*` or the `publish-*` flags name.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Audience {
    pub broadcast: bool,
    pub user: bool,
    pub group: bool,
    pub session: bool,
}

impl Audience {
    fn needs_identity(&self) -> bool {
        self.user || self.group || self.session
    }
}

/// The URL's flags.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub subscribe: Audience,
    pub publish: Audience,
    pub echo: bool,
}

/// Reads the query's keys as ws4redis does (`strip().lower()`, values
/// ignored, unknown keys ignored).
pub fn parse_flags(query: Option<&str>) -> Flags {
    let mut flags = Flags::default();
    for pair in query.unwrap_or("").split('&') {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        match key.trim().to_ascii_lowercase().as_str() {
            "subscribe-broadcast" => flags.subscribe.broadcast = true,
            "subscribe-user" => flags.subscribe.user = true,
            "subscribe-group" => flags.subscribe.group = true,
            "subscribe-session" => flags.subscribe.session = true,
            "publish-broadcast" => flags.publish.broadcast = true,
            "publish-user" => flags.publish.user = true,
            "publish-group" => flags.publish.group = true,
            "publish-session" => flags.publish.session = true,
            "echo" => flags.echo = true,
            _ => {}
        }
    }
    flags
}

/// The channels of `audience` for `facility` and the identity `who`, in
/// ws4redis's order (broadcast, groups, users, sessions): its
/// `_get_message_channels` with `SELF` resolved to `who`.
pub fn channels(
    prefix: &str,
    facility: &str,
    audience: Audience,
    who: Option<&Claims>,
) -> Result<Vec<String>, Refused> {
    let mut out = Vec::new();
    if audience.broadcast {
        out.push(broadcast_channel(prefix, facility));
    }
    if !audience.needs_identity() {
        return Ok(out);
    }
    let Some(who) = who.filter(|c| !c.sub.is_empty()) else {
        return Err(NEEDS_IDENTITY);
    };
    if audience.group {
        for g in &who.groups {
            out.push(identity_channel(prefix, "group", g, facility));
        }
    }
    if audience.user {
        out.push(identity_channel(prefix, "user", &who.sub, facility));
    }
    if audience.session {
        let sid = who
            .sid
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(NEEDS_SID)?;
        out.push(identity_channel(prefix, "session", sid, facility));
    }
    // A set in ws4redis: a group listed twice is one channel.
    let mut seen = std::collections::HashSet::new();
    out.retain(|c| seen.insert(c.clone()));
    Ok(out)
}

/// `{prefix}:{kind}:{key}:{facility}` (`{kind}:{key}:{facility}` without a
/// prefix), ws4redis's user, group and session channel names.
pub fn identity_channel(prefix: &str, kind: &str, key: &str, facility: &str) -> String {
    if prefix.is_empty() {
        format!("{kind}:{key}:{facility}")
    } else {
        format!("{prefix}:{kind}:{key}:{facility}")
    }
}

/// The facility of a request `path` (no query) under the configured
/// `base`: the rest of the path (`/ws/` and `/ws` give `""`, `/ws/a/b`
/// gives `a/b`); on another path (chosen with `?dialect=`), the path
/// without its leading `/`.
pub fn facility<'p>(base: &str, path: &'p str) -> &'p str {
    let base = base.trim_end_matches('/');
    match path.strip_prefix(base) {
        Some("") => "",
        Some(rest) if rest.starts_with('/') => &rest[1..],
        _ => path.trim_start_matches('/'),
    }
}

/// The broadcast channel of `facility` under `prefix`, as ws4redis names
/// its Redis channel.
pub fn broadcast_channel(prefix: &str, facility: &str) -> String {
    if prefix.is_empty() {
        format!("broadcast:{facility}")
    } else {
        format!("{prefix}:broadcast:{facility}")
    }
}

/// A client-visible error: a JSON object (Rodan's client parses every
/// frame that is not the heartbeat as JSON).
fn error_frame(reply: &mut ReplyWriter, message: &str) {
    let json = serde_json::json!({ "error": message }).to_string();
    reply.text_frame(json.as_bytes());
}

impl Protocol for Ws4redis {
    fn name(&self) -> &'static str {
        "ws4redis"
    }

    fn path<'c>(&self, cfg: &'c Config) -> &'c str {
        &cfg.protocols.ws4redis.path
    }

    fn encode_publication(&self, p: &Publication) -> Bytes {
        text_frame(&p.data)
    }

    fn accept(&self, cfg: &Config, req: &Upgrade, now: Instant) -> Result<Opened, Refused> {
        self.accept_as(cfg, req, None, now)
    }

    fn accept_as(
        &self,
        cfg: &Config,
        req: &Upgrade,
        who: Option<&Claims>,
        now: Instant,
    ) -> Result<Opened, Refused> {
        let c = &cfg.protocols.ws4redis;
        let flags = parse_flags(req.query());
        let facility = facility(&c.path, req.path_without_query());
        if !valid_channel(&broadcast_channel(&c.prefix, facility)) {
            return Err(BAD_FACILITY);
        }
        let subscribe = channels(&c.prefix, facility, flags.subscribe, who)?;
        let publish = channels(&c.prefix, facility, flags.publish, who)?;
        if !subscribe.iter().chain(&publish).all(|ch| valid_channel(ch)) {
            return Err(BAD_IDENTITY);
        }
        let first = (!subscribe.is_empty()).then(|| {
            Box::new(Exchange {
                calls: subscribe
                    .into_iter()
                    .map(|channel| Call {
                        id: None,
                        op: Ok(Op::Subscribe {
                            channel: channel.into(),
                            since: None,
                        }),
                    })
                    .collect(),
                reply: ReplyWriter::new(false),
            })
        });
        let heartbeat = (!c.heartbeat.is_empty()).then(|| c.heartbeat.as_bytes().into());
        let state = State {
            publish: publish.into_iter().map(Into::into).collect(),
            echo: flags.echo,
            keep_secs: c.expire,
            heartbeat,
            heartbeat_due: now + IDLE_HEARTBEAT,
        };
        Ok(Opened {
            state: SessionState::new(state),
            first,
        })
    }

    fn handle_message(
        &self,
        state: &mut SessionState,
        msg: &[u8],
        _: &mut RpcParser,
        now: Instant,
    ) -> Exchange {
        let mut ex = Exchange {
            calls: Vec::new(),
            reply: ReplyWriter::new(false),
        };
        let Some(s) = state.get_mut::<State>() else {
            return ex;
        };
        let is_heartbeat = s.heartbeat.as_deref() == Some(msg);
        if let Some(hb) = &s.heartbeat {
            s.heartbeat_due = now + IDLE_HEARTBEAT;
            ex.reply.text_frame(hb);
        }
        if msg.is_empty() || is_heartbeat {
            return ex;
        }
        if s.publish.is_empty() {
            return ex;
        }
        if std::str::from_utf8(msg).is_err() {
            let op = Err(RpcError::invalid_params(
                "message not published: it is not UTF-8 text",
            ));
            ex.calls.push(Call { id: None, op });
            return ex;
        }
        // One publication per channel, as ws4redis PUBLISHes to each.
        let data = Bytes::copy_from_slice(msg);
        for channel in s.publish.iter() {
            let op = Ok(Op::Relay {
                channel: channel.clone(),
                data: data.clone(),
                echo: s.echo,
                keep_secs: s.keep_secs,
            });
            ex.calls.push(Call { id: None, op });
        }
        ex
    }

    fn next_deadline(&self, state: &SessionState) -> Option<Instant> {
        let s = state.get::<State>()?;
        s.heartbeat.as_ref().map(|_| s.heartbeat_due)
    }

    fn on_deadline(
        &self,
        state: &mut SessionState,
        now: Instant,
        reply: &mut ReplyWriter,
    ) -> Option<super::adapter::Close> {
        let s = state.get_mut::<State>()?;
        if let Some(hb) = &s.heartbeat {
            reply.text_frame(hb);
            s.heartbeat_due = now + IDLE_HEARTBEAT;
        }
        None
    }

    fn write_answer(
        &self,
        _: &mut SessionState,
        reply: &mut ReplyWriter,
        _: Option<&[u8]>,
        answer: Answer<'_>,
    ) {
        match answer {
            Answer::Rejected(e) => error_frame(reply, &e.message),
            Answer::Done { result, op, .. } => match result {
                Ok(Outcome::Subscribed(info)) => {
                    if let Some(kept) = info.kept {
                        reply.text_frame(&kept);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let what = match op {
                        Op::Subscribe { .. } => "not subscribed",
                        _ => "message not published",
                    };
                    error_frame(reply, &format!("{what}: {e}"));
                }
            },
        }
    }

    fn reject_message(&self, reply: &mut ReplyWriter, e: &RpcError) {
        *reply = ReplyWriter::new(false);
        error_frame(reply, &e.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::ops::OpError;

    fn frames(reply: ReplyWriter) -> Vec<String> {
        let Some(bytes) = reply.finish_frames() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let (len, start) = match rest[1] & 0x7f {
                126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
                n => (usize::from(n), 2),
            };
            out.push(String::from_utf8(rest[start..start + len].to_vec()).unwrap());
            rest = &rest[start + len..];
        }
        out
    }

    fn upgrade(path: &str) -> Upgrade {
        Upgrade {
            consumed: 0,
            path: path.into(),
            origin: None,
            accept: String::new(),
            deflate: None,
        }
    }

    fn rodan() -> Config {
        let mut cfg = Config::default();
        cfg.protocols.ws4redis.prefix = "rodan".into();
        cfg.protocols.ws4redis.heartbeat = "--heartbeat--".into();
        cfg
    }

    #[test]
    fn facility_is_the_rest_of_the_path() {
        assert_eq!(facility("/ws/", "/ws/rodan"), "rodan");
        assert_eq!(facility("/ws/", "/ws/"), "");
        assert_eq!(facility("/ws/", "/ws"), "");
        assert_eq!(facility("/ws/", "/ws/a/b"), "a/b");
        assert_eq!(facility("/ws/", "/other/x"), "other/x");
        assert_eq!(broadcast_channel("rodan", "rodan"), "rodan:broadcast:rodan");
        assert_eq!(broadcast_channel("", "foobar"), "broadcast:foobar");
    }

    #[test]
    fn flags_are_keys_case_insensitive_values_ignored() {
        let f = parse_flags(Some("subscribe-broadcast&Publish-Broadcast=no&%20echo=1&x"));
        let broadcast = Audience {
            broadcast: true,
            ..Audience::default()
        };
        assert_eq!(
            f,
            Flags {
                subscribe: broadcast,
                publish: broadcast,
                echo: false
            },
            "`%20echo` is not decoded, so not the echo flag"
        );
        let f = parse_flags(Some(" ECHO &subscribe-broadcast"));
        assert!(f.echo && f.subscribe.broadcast && f.publish == Audience::default());
        assert_eq!(parse_flags(None), Flags::default());
        let f = parse_flags(Some(
            "subscribe-USER&publish-user=SELF&subscribe-group&publish-session",
        ));
        assert_eq!(
            (f.subscribe, f.publish),
            (
                Audience {
                    user: true,
                    group: true,
                    ..Audience::default()
                },
                Audience {
                    user: true,
                    session: true,
                    ..Audience::default()
                }
            )
        );
    }

    fn alice() -> Claims {
        Claims {
            sub: "alice".into(),
            groups: vec!["staff".into(), "chess".into(), "staff".into()],
            sid: Some("s3ss10n".into()),
            ..Claims::default()
        }
    }

    #[test]
    fn identity_channels_are_named_as_ws4redis_names_them() {
        let all = Audience {
            broadcast: true,
            user: true,
            group: true,
            session: true,
        };
        assert_eq!(
            channels("rodan", "foo", all, Some(&alice())).unwrap(),
            [
                "rodan:broadcast:foo",
                "rodan:group:staff:foo",
                "rodan:group:chess:foo",
                "rodan:user:alice:foo",
                "rodan:session:s3ss10n:foo"
            ]
        );
        assert_eq!(
            channels("", "a/b", all, Some(&alice())).unwrap()[3],
            "user:alice:a/b"
        );
        // No token, or an anonymous one (empty sub): nobody to name them after.
        let user = Audience {
            user: true,
            ..Audience::default()
        };
        let anon = Claims::default();
        for who in [None, Some(&anon)] {
            let e = channels("rodan", "foo", user, who).unwrap_err();
            assert_eq!(e.status, 403);
            assert_eq!(e.reason, NEEDS_IDENTITY.reason);
        }
        // A session channel needs a sid.
        let session = Audience {
            session: true,
            ..Audience::default()
        };
        let no_sid = Claims {
            sub: "bob".into(),
            ..Claims::default()
        };
        assert_eq!(
            channels("rodan", "foo", session, Some(&no_sid))
                .unwrap_err()
                .reason,
            NEEDS_SID.reason
        );
        // No groups: no group channels, as in ws4redis.
        let group = Audience {
            group: true,
            ..Audience::default()
        };
        assert!(channels("rodan", "foo", group, Some(&no_sid))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn accept_as_subscribes_and_publishes_the_identity_channels() {
        let cfg = rodan();
        let t0 = Instant::now();
        let up = upgrade("/ws/foo?subscribe-user&publish-user=SELF&publish-group&echo");
        let e = Ws4redis.accept(&cfg, &up, t0).unwrap_err();
        assert_eq!((e.status, e.reason), (403, NEEDS_IDENTITY.reason));
        let mut o = Ws4redis.accept_as(&cfg, &up, Some(&alice()), t0).unwrap();
        let first = o.first.unwrap();
        assert_eq!(
            first.calls[0].op,
            Ok(Op::Subscribe {
                channel: "rodan:user:alice:foo".into(),
                since: None
            })
        );
        assert_eq!(first.calls.len(), 1);
        let ex = Ws4redis.handle_message(&mut o.state, b"hi", &mut RpcParser::new(), t0);
        let targets: Vec<_> = ex
            .calls
            .iter()
            .map(|c| match &c.op {
                Ok(Op::Relay { channel, echo, .. }) => (channel.to_string(), *echo),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            targets,
            [
                ("rodan:group:staff:foo".to_string(), true),
                ("rodan:group:chess:foo".to_string(), true),
                ("rodan:user:alice:foo".to_string(), true)
            ]
        );
        // A user id that cannot be a channel name is refused.
        let spaced = Claims {
            sub: "al ice".into(),
            ..Claims::default()
        };
        let e = Ws4redis
            .accept_as(&cfg, &up, Some(&spaced), t0)
            .unwrap_err();
        assert_eq!((e.status, e.reason), (403, BAD_IDENTITY.reason));
    }

    #[test]
    fn accept_subscribes_first_and_refuses_bad_facilities() {
        let cfg = rodan();
        let now = Instant::now();
        let o = Ws4redis
            .accept(
                &cfg,
                &upgrade("/ws/rodan?subscribe-broadcast&publish-broadcast&echo"),
                now,
            )
            .unwrap();
        let first = o.first.unwrap();
        assert_eq!(
            first.calls[0].op,
            Ok(Op::Subscribe {
                channel: "rodan:broadcast:rodan".into(),
                since: None
            })
        );
        assert!(Ws4redis
            .accept(&cfg, &upgrade("/ws/"), now)
            .unwrap()
            .first
            .is_none());
        let long = format!("/ws/{}", "a".repeat(300));
        let e = Ws4redis.accept(&cfg, &upgrade(&long), now).unwrap_err();
        assert_eq!(e.status, 400);
        let e = Ws4redis
            .accept(&cfg, &upgrade("/ws/a%00b\x01"), now)
            .unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn messages_publish_with_echo_and_keep_and_heartbeats_answer() {
        let cfg = rodan();
        let t0 = Instant::now();
        let mut s = Ws4redis
            .accept(&cfg, &upgrade("/ws/rodan?publish-broadcast"), t0)
            .unwrap()
            .state;
        assert_eq!(Ws4redis.next_deadline(&s), Some(t0 + IDLE_HEARTBEAT));
        let t1 = t0 + Duration::from_secs(1);
        let ex = Ws4redis.handle_message(&mut s, b"{\"a\": 1}", &mut RpcParser::new(), t1);
        assert_eq!(
            ex.calls[0].op,
            Ok(Op::Relay {
                channel: "rodan:broadcast:rodan".into(),
                data: Bytes::from_static(b"{\"a\": 1}"),
                echo: false,
                keep_secs: 3600,
            })
        );
        assert_eq!(frames(ex.reply), ["--heartbeat--"]);
        assert_eq!(Ws4redis.next_deadline(&s), Some(t1 + IDLE_HEARTBEAT));
        // The heartbeat and empty messages are answered, never published.
        for msg in [&b"--heartbeat--"[..], b""] {
            let ex = Ws4redis.handle_message(&mut s, msg, &mut RpcParser::new(), t1);
            assert!(ex.calls.is_empty());
            assert_eq!(frames(ex.reply), ["--heartbeat--"]);
        }
        // Not UTF-8: refused with a JSON error.
        let ex = Ws4redis.handle_message(&mut s, b"\xff", &mut RpcParser::new(), t1);
        assert!(ex.calls[0].op.is_err());
        // Idle: the deadline writes the heartbeat and moves on 4 s.
        let t5 = t1 + IDLE_HEARTBEAT;
        let mut w = ReplyWriter::new(false);
        assert_eq!(Ws4redis.on_deadline(&mut s, t5, &mut w), None);
        assert_eq!(frames(w), ["--heartbeat--"]);
        assert_eq!(Ws4redis.next_deadline(&s), Some(t5 + IDLE_HEARTBEAT));
    }

    #[test]
    fn without_heartbeat_or_publish_flag_nothing_happens() {
        let mut cfg = rodan();
        cfg.protocols.ws4redis.heartbeat.clear();
        let t0 = Instant::now();
        let mut s = Ws4redis
            .accept(&cfg, &upgrade("/ws/rodan?subscribe-broadcast&echo"), t0)
            .unwrap()
            .state;
        assert_eq!(Ws4redis.next_deadline(&s), None);
        let ex = Ws4redis.handle_message(&mut s, b"hello", &mut RpcParser::new(), t0);
        assert!(ex.calls.is_empty());
        assert!(ex.reply.finish_frames().is_none());
    }

    #[test]
    fn kept_message_comes_first_and_errors_are_json() {
        let mut s = SessionState::none();
        let op = Op::Subscribe {
            channel: "c".into(),
            since: None,
        };
        let info = crate::pubsub::ops::SubscribeInfo {
            offset: 1,
            epoch: "e".into(),
            recovered: None,
            missed: None,
            kept: Some(Bytes::from_static(b"last one")),
        };
        let peer = || String::new();
        let mut w = ReplyWriter::new(false);
        Ws4redis.write_answer(
            &mut s,
            &mut w,
            None,
            Answer::Done {
                op: &op,
                result: Ok(Outcome::Subscribed(info)),
                peer: &peer,
            },
        );
        assert_eq!(frames(w), ["last one"]);
        let mut w = ReplyWriter::new(false);
        Ws4redis.write_answer(
            &mut s,
            &mut w,
            None,
            Answer::Done {
                op: &op,
                result: Err(OpError::RateLimited),
                peer: &peer,
            },
        );
        assert_eq!(
            frames(w),
            [format!(
                r#"{{"error":"not subscribed: {}"}}"#,
                OpError::RateLimited
            )]
        );
    }

    #[test]
    fn publications_are_the_bare_bytes() {
        let p = Publication::message(
            "c".into(),
            1,
            1,
            0,
            Bytes::from_static(b"{\"status\": \"updated\"}"),
        );
        assert_eq!(
            &Ws4redis.encode_publication(&p)[..],
            &text_frame(b"{\"status\": \"updated\"}")[..]
        );
    }
}
