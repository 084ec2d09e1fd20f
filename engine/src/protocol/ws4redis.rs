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
//! - User, group and session channels need a logged-in identity, which
//!   ringcast does not have yet: their flags are refused with 403.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;

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
    /// The broadcast channel, when `publish-broadcast` is set.
    publish: Option<Box<str>>,
    echo: bool,
    keep_secs: u64,
    heartbeat: Option<Box<[u8]>>,
    /// When the next heartbeat is owed (with a heartbeat string).
    heartbeat_due: Instant,
}

/// Refusals of an upgrade, by the flag or facility at fault.
const NEEDS_IDENTITY: Refused = Refused {
    status: 403,
    reason: "user, group and session channels need a logged-in identity, which ringcast does \
             not support yet; only subscribe-broadcast and publish-broadcast are served",
};
const BAD_FACILITY: Refused = Refused {
    status: 400,
    reason: "invalid facility: the channel name it makes must be 1-255 bytes of printable \
             ASCII without spaces",
};

/// The URL's flags.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub subscribe: bool,
    pub publish: bool,
    pub echo: bool,
}

/// Reads the query's keys as ws4redis does (`strip().lower()`, values
/// ignored); refuses the identity-bound ones.
pub fn parse_flags(query: Option<&str>) -> Result<Flags, Refused> {
    let mut flags = Flags::default();
    for pair in query.unwrap_or("").split('&') {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        match key.trim().to_ascii_lowercase().as_str() {
            "subscribe-broadcast" => flags.subscribe = true,
            "publish-broadcast" => flags.publish = true,
            "echo" => flags.echo = true,
            "subscribe-user" | "publish-user" | "subscribe-group" | "publish-group"
            | "subscribe-session" | "publish-session" => return Err(NEEDS_IDENTITY),
            _ => {}
        }
    }
    Ok(flags)
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
        let c = &cfg.protocols.ws4redis;
        let flags = parse_flags(req.query())?;
        let channel = broadcast_channel(&c.prefix, facility(&c.path, req.path_without_query()));
        if !valid_channel(&channel) {
            return Err(BAD_FACILITY);
        }
        let first = flags.subscribe.then(|| {
            Box::new(Exchange {
                calls: vec![Call {
                    id: None,
                    op: Ok(Op::Subscribe {
                        channel: channel.clone().into(),
                        since: None,
                    }),
                }],
                reply: ReplyWriter::new(false),
            })
        });
        let heartbeat = (!c.heartbeat.is_empty()).then(|| c.heartbeat.as_bytes().into());
        let state = State {
            publish: flags.publish.then(|| channel.into()),
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
        let Some(channel) = &s.publish else {
            return ex;
        };
        let op = if std::str::from_utf8(msg).is_err() {
            Err(RpcError::invalid_params(
                "message not published: it is not UTF-8 text",
            ))
        } else {
            Ok(Op::Relay {
                channel: channel.clone(),
                data: Bytes::copy_from_slice(msg),
                echo: s.echo,
                keep_secs: s.keep_secs,
            })
        };
        ex.calls.push(Call { id: None, op });
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
        let f = parse_flags(Some("subscribe-broadcast&Publish-Broadcast=no&%20echo=1&x")).unwrap();
        assert_eq!(
            f,
            Flags {
                subscribe: true,
                publish: true,
                echo: false
            },
            "`%20echo` is not decoded, so not the echo flag"
        );
        let f = parse_flags(Some(" ECHO &subscribe-broadcast")).unwrap();
        assert!(f.echo && f.subscribe && !f.publish);
        assert_eq!(parse_flags(None).unwrap(), Flags::default());
        for flag in ["subscribe-user", "publish-GROUP", "subscribe-session=1"] {
            let e = parse_flags(Some(&format!("subscribe-broadcast&{flag}"))).unwrap_err();
            assert_eq!(e.status, 403);
            assert!(e
                .reason
                .starts_with("user, group and session channels need"));
        }
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
