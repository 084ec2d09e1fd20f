//! LQDOJ's Socket.IO event daemon, as a drop-in: Socket.IO v5 packets
//! ([`packet`]) over Engine.IO v4 ([`engineio`]) on WebSocket, with
//! LQDOJ's events ([`lqdoj`]) mapped onto the operations DMOJ's adapters
//! use (`Op::Post`, `Op::LastId`, `Op::Follow`): DMOJ and LQDOJ share their
//! semantics, so a post through either reaches both, and native and
//! RocketWS subscribers of the channel too.
//!
//! Timers (the server's pings, the pong timeout, `connectTimeout`) run on
//! the adapter's deadlines. A packet that is not Socket.IO closes that one
//! connection with a close frame naming the fault; it is closed through a
//! deadline that is already due, so the replies owed before it still go
//! out first.
#![forbid(unsafe_code)]

pub mod engineio;
pub mod lqdoj;
pub mod packet;
pub mod polling;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use self::lqdoj::{Command, Role};
use self::packet::Kind;
use super::adapter::{Answer, Close, Exchange, Opened, Protocol, SessionState};
use super::dmoj::{error_json, op_error_json, publication_json, success_json};
use super::handshake::{Refused, Upgrade};
use super::rpc::{ReplyWriter, RpcParser};
use crate::ops::config::Config;
use crate::pubsub::ops::{Op, Outcome};
use crate::pubsub::publication::{text_frame, Publication};

/// The Socket.IO protocol (`socketio`).
pub struct SocketIo;

/// Client-role connections open now, node-wide (LQDOJ's
/// `connection_count`; senders are not counted).
static CLIENTS: AtomicUsize = AtomicUsize::new(0);

/// One counted client connection; gives its place back when dropped
/// (with the session's state, however the connection ends).
#[derive(Debug)]
struct ClientSlot(&'static AtomicUsize);

impl ClientSlot {
    fn take(count: &'static AtomicUsize, max: usize) -> Option<ClientSlot> {
        let before = count.fetch_add(1, Ordering::Relaxed);
        if before >= max {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ClientSlot(count))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Close codes: a normal end, and a client that broke the protocol.
const NORMAL: u16 = 1000;
const PROTOCOL_ERROR: u16 = 1002;
const UNSUPPORTED: u16 = 1003;

/// What one Socket.IO connection remembers.
#[derive(Debug)]
pub struct SioState {
    ping_interval: Duration,
    ping_timeout: Duration,
    /// The sender token; `None`: no sender is accepted.
    token: Option<Box<str>>,
    max_clients: usize,
    max_subs: usize,
    /// The role it joined `/` as; `None` before CONNECT.
    role: Option<Role>,
    /// When the connection closes if it has not joined `/` by then.
    connect_due: Option<Instant>,
    /// When the next ping is owed (while no pong is awaited).
    next_ping: Instant,
    /// When the awaited pong is late.
    pong_due: Option<Instant>,
    /// The connection closes at this (already due) deadline.
    closing: Option<(Instant, Close)>,
    /// The id given by the last `start-msg` not yet used by a `set-filter`.
    start: Option<u64>,
    slot: Option<ClientSlot>,
}

impl SioState {
    fn new(cfg: &Config, now: Instant) -> SioState {
        let c = &cfg.protocols.socketio;
        SioState {
            ping_interval: Duration::from_millis(c.ping_interval),
            ping_timeout: Duration::from_millis(c.ping_timeout),
            token: (!c.token.is_empty()).then(|| c.token.as_str().into()),
            max_clients: c.max_clients,
            max_subs: c.max_subscriptions,
            role: None,
            connect_due: Some(now + Duration::from_millis(c.connect_timeout)),
            next_ping: now + Duration::from_millis(c.ping_interval),
            pong_due: None,
            closing: None,
            start: None,
            slot: None,
        }
    }

    fn close(&mut self, now: Instant, code: u16, reason: &'static str) {
        if self.closing.is_none() {
            self.closing = Some((now, Close { code, reason }));
        }
    }
}

/// An exchange of server packets only, each its own text message.
fn packets(list: &[&[u8]]) -> Exchange {
    let mut reply = ReplyWriter::new(false);
    for p in list {
        reply.text_frame(p);
    }
    Exchange::reply(reply)
}

/// One operation, answered through the ack `ack` if the client asked.
fn one_call(op: Op, ack: Option<u64>) -> Exchange {
    let mut ex = Exchange::call(op);
    ex.calls[0].id = ack.map(|a| itoa::Buffer::new().format(a).as_bytes().into());
    ex
}

/// The answer `json` through the ack `ack`, or as the event `event`.
fn answer(reply: &mut ReplyWriter, ack: Option<u64>, event: &str, json: &[u8]) {
    match ack {
        Some(id) => reply.text_frame(&packet::ack(id, json)),
        None => reply.text_frame(&packet::event(event, json)),
    }
}

impl SocketIo {
    fn on_packet(&self, s: &mut SioState, msg: &[u8], now: Instant) -> Exchange {
        let p = match packet::decode(msg) {
            Ok(p) => p,
            Err(e) => {
                let code = if e.0.starts_with("binary") {
                    UNSUPPORTED
                } else {
                    PROTOCOL_ERROR
                };
                s.close(now, code, e.0);
                return Exchange::none();
            }
        };
        match p.kind {
            Kind::Connect if p.nsp != "/" => packets(&[&packet::encode(
                Kind::ConnectError,
                p.nsp,
                None,
                br#"{"message":"Invalid namespace"}"#,
            )]),
            Kind::Connect => self.on_connect(s, p.data, now),
            Kind::Disconnect if p.nsp == "/" => {
                s.close(now, NORMAL, "client disconnected");
                Exchange::none()
            }
            Kind::Disconnect | Kind::Ack => Exchange::none(),
            Kind::Event if p.nsp != "/" || s.role.is_none() => {
                s.close(now, PROTOCOL_ERROR, "Socket.IO event before CONNECT");
                Exchange::none()
            }
            Kind::Event => {
                let role = s.role.unwrap_or(Role::Client);
                match lqdoj::parse_event(p.data, role, s.max_subs) {
                    Ok(cmd) => self.on_command(s, role, cmd, p.ack),
                    Err(e) => {
                        s.close(now, PROTOCOL_ERROR, e.0);
                        Exchange::none()
                    }
                }
            }
            Kind::ConnectError | Kind::BinaryEvent | Kind::BinaryAck => {
                s.close(
                    now,
                    PROTOCOL_ERROR,
                    "invalid Socket.IO packet from a client",
                );
                Exchange::none()
            }
        }
    }

    fn on_connect(&self, s: &mut SioState, auth: &[u8], now: Instant) -> Exchange {
        let auth: serde_json::Value = if auth.is_empty() {
            serde_json::Value::Null
        } else {
            match serde_json::from_slice(auth) {
                Ok(v @ serde_json::Value::Object(_)) => v,
                _ => {
                    s.close(
                        now,
                        PROTOCOL_ERROR,
                        "invalid Socket.IO CONNECT: auth must be an object",
                    );
                    return Exchange::none();
                }
            }
        };
        let Some(sid) = engineio::new_sid() else {
            s.close(now, 1011, "no randomness for a session id");
            return Exchange::none();
        };
        let connected = packet::encode(
            Kind::Connect,
            "/",
            None,
            format!(r#"{{"sid":"{sid}"}}"#).as_bytes(),
        );
        if auth.get("role").and_then(|r| r.as_str()) == Some("sender") {
            let given = auth.get("token").and_then(|t| t.as_str());
            let ok = match (&s.token, given) {
                (Some(want), Some(given)) => {
                    crate::access::ct_eq(given.as_bytes(), want.as_bytes())
                }
                _ => false,
            };
            if !ok {
                // The connection stays until it leaves or connectTimeout.
                return packets(&[br#"44{"message":"Authentication failed"}"#]);
            }
            s.role = Some(Role::Sender);
            s.connect_due = None;
            return packets(&[&connected]);
        }
        if s.slot.is_none() {
            match ClientSlot::take(&CLIENTS, s.max_clients) {
                Some(slot) => s.slot = Some(slot),
                None => {
                    s.close(now, NORMAL, "server at capacity");
                    return packets(&[
                        &connected,
                        &packet::event(
                            "error",
                            &error_json("server-capacity", Some("Server at capacity")),
                        ),
                        b"41",
                    ]);
                }
            }
        }
        s.role = Some(Role::Client);
        s.connect_due = None;
        packets(&[&connected])
    }

    fn on_command(&self, s: &mut SioState, role: Role, cmd: Command, ack: Option<u64>) -> Exchange {
        // LQDOJ's client handlers answer with events only.
        let ack = if role == Role::Sender { ack } else { None };
        match cmd {
            Command::Post { channel, data } => one_call(Op::Post { channel, data }, ack),
            Command::LastMsg => one_call(Op::LastId, ack),
            Command::StartMsg(start) => {
                s.start = Some(start);
                packets(&[&packet::event("status", &success_json(None))])
            }
            // The start is used once: a live message moves the client's
            // position on, so a later set-filter replays nothing it has.
            Command::SetFilter(channels) => one_call(
                Op::Follow {
                    channels,
                    after_id: s.start.take(),
                },
                None,
            ),
            Command::Error(json) => {
                let mut ex = Exchange::none();
                answer(&mut ex.reply, ack, "error", &json);
                ex
            }
            Command::Ignore => Exchange::none(),
        }
    }
}

impl Protocol for SocketIo {
    fn name(&self) -> &'static str {
        "socketio"
    }

    fn path<'c>(&self, cfg: &'c Config) -> &'c str {
        if cfg.protocols.socketio.enabled {
            &cfg.protocols.socketio.path
        } else {
            ""
        }
    }

    /// Engine.IO's polling requests on the Socket.IO path (served by
    /// `runtime::engineio_poll`).
    fn claims_plain_http(&self, cfg: &Config, head: &[u8]) -> bool {
        let path = self.path(cfg);
        !path.is_empty() && crate::protocol::dmoj::is_poll_request(head, path)
    }

    /// `42["message",{"id":I,"channel":C,"message":M}]`, built once per
    /// publication.
    fn encode_publication(&self, p: &Publication) -> Bytes {
        text_frame(&packet::event("message", &publication_json(p)))
    }

    fn accept(&self, cfg: &Config, req: &Upgrade, now: Instant) -> Result<Opened, Refused> {
        let bad = |reason| {
            Err(Refused {
                status: 400,
                reason,
            })
        };
        match req.query_param("EIO") {
            Some("4") => {}
            Some(_) => return bad("unsupported Engine.IO version: EIO=4 required"),
            None => return bad("missing EIO=4 (Engine.IO version)"),
        }
        match req.query_param("transport") {
            Some("websocket") => {}
            Some("polling") => {
                return bad("transport=polling is plain HTTP, not a WebSocket upgrade")
            }
            _ => return bad("bad transport: transport=websocket required"),
        }
        if req.query_param("sid").is_some() {
            return bad("unknown sid: there is no polling session to upgrade");
        }
        let Some(sid) = engineio::new_sid() else {
            return Err(Refused {
                status: 503,
                reason: "no randomness for a session id",
            });
        };
        let open = engineio::open_packet(
            &sid,
            &[],
            engineio::OpenParams {
                ping_interval_ms: cfg.protocols.socketio.ping_interval,
                ping_timeout_ms: cfg.protocols.socketio.ping_timeout,
                max_payload: cfg.limits.max_message_size,
            },
        );
        Ok(Opened {
            state: SessionState::new(SioState::new(cfg, now)),
            first: Some(Box::new(packets(&[&open]))),
        })
    }

    fn open(&self, cfg: &Config) -> SessionState {
        SessionState::new(SioState::new(cfg, Instant::now()))
    }

    fn handle_message(
        &self,
        state: &mut SessionState,
        msg: &[u8],
        _parser: &mut RpcParser,
        now: Instant,
    ) -> Exchange {
        let Some(s) = state.get_mut::<SioState>() else {
            return Exchange::none();
        };
        if s.closing.is_some() {
            return Exchange::none();
        }
        match engineio::decode(msg) {
            Err(e) => {
                s.close(now, PROTOCOL_ERROR, e.0);
                Exchange::none()
            }
            Ok(engineio::Packet::Close) => {
                s.close(now, NORMAL, "client closed");
                Exchange::none()
            }
            Ok(engineio::Packet::Ping(_)) => {
                s.close(
                    now,
                    PROTOCOL_ERROR,
                    "invalid heartbeat direction: the server pings in Engine.IO v4",
                );
                Exchange::none()
            }
            Ok(engineio::Packet::Pong(_)) => {
                s.pong_due = None;
                s.next_ping = now + s.ping_interval;
                Exchange::none()
            }
            Ok(engineio::Packet::Upgrade | engineio::Packet::Noop) => Exchange::none(),
            Ok(engineio::Packet::Message(m)) => self.on_packet(s, m, now),
        }
    }

    fn next_deadline(&self, state: &SessionState) -> Option<Instant> {
        let s = state.get::<SioState>()?;
        if let Some((at, _)) = s.closing {
            return Some(at);
        }
        let heartbeat = s.pong_due.unwrap_or(s.next_ping);
        Some(s.connect_due.map_or(heartbeat, |c| c.min(heartbeat)))
    }

    fn on_deadline(
        &self,
        state: &mut SessionState,
        now: Instant,
        reply: &mut ReplyWriter,
    ) -> Option<Close> {
        let s = state.get_mut::<SioState>()?;
        if let Some((_, close)) = s.closing {
            return Some(close);
        }
        if s.connect_due.is_some_and(|due| now >= due) {
            return Some(Close {
                code: NORMAL,
                reason: "connect timeout: no Socket.IO CONNECT",
            });
        }
        match s.pong_due {
            Some(due) if now >= due => Some(Close {
                code: NORMAL,
                reason: "ping timeout",
            }),
            Some(_) => None,
            None if now >= s.next_ping => {
                reply.text_frame(b"2");
                s.pong_due = Some(now + s.ping_timeout);
                None
            }
            None => None,
        }
    }

    fn write_answer(
        &self,
        state: &mut SessionState,
        reply: &mut ReplyWriter,
        id: Option<&[u8]>,
        answer_of: Answer<'_>,
    ) {
        let ack = id
            .and_then(|i| std::str::from_utf8(i).ok())
            .and_then(|i| i.parse::<u64>().ok());
        let Answer::Done { op, result, .. } = answer_of else {
            if let Answer::Rejected(e) = answer_of {
                answer(
                    reply,
                    ack,
                    "error",
                    &error_json("bad-request", Some(&e.message)),
                );
            }
            return;
        };
        match (op, result) {
            (_, Err(e)) => answer(reply, ack, "error", &op_error_json(&e)),
            (Op::Post { .. }, Ok(Outcome::Published(r))) => {
                answer(reply, ack, "post-response", &success_json(Some(r.id)))
            }
            (_, Ok(Outcome::LastId(id))) => {
                answer(reply, ack, "last-response", &success_json(Some(id)))
            }
            (_, Ok(Outcome::Followed { replay })) => {
                reply.text_frame(&packet::event("status", &success_json(None)));
                let mut frames = Vec::new();
                for p in &replay {
                    frames.extend_from_slice(self.encode_publication(p).as_ref());
                }
                reply.frames(&frames);
            }
            (_, Ok(_)) => {}
        }
        let _ = state;
    }

    fn reject_message(&self, reply: &mut ReplyWriter, e: &crate::protocol::rpc::RpcError) {
        *reply = ReplyWriter::new(false);
        let code = if e.code == -32029 || e.message.contains("rate") {
            "rate-limited"
        } else {
            "bad-request"
        };
        reply.text_frame(&packet::event("error", &error_json(code, Some(&e.message))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let mut c = Config::default();
        c.protocols.socketio.enabled = true;
        c.protocols.socketio.token = "lqdoj".into();
        c.protocols.socketio.ping_interval = 1000;
        c.protocols.socketio.ping_timeout = 500;
        c.protocols.socketio.connect_timeout = 3000;
        c
    }

    fn upgrade(query: &str) -> Upgrade {
        Upgrade {
            consumed: 0,
            path: format!("/socket.io/?{query}"),
            origin: None,
            accept: String::new(),
            deflate: None,
        }
    }

    /// The text messages of an exchange's reply (server packets).
    fn texts(ex: Exchange) -> Vec<String> {
        let Some(bytes) = ex.reply.finish_frames() else {
            return Vec::new();
        };
        frames_of(&bytes)
    }

    fn frames_of(mut b: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let (len, h) = match b[1] & 127 {
                126 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 => panic!("huge frame in a test"),
                n => (usize::from(n), 2),
            };
            out.push(String::from_utf8(b[h..h + len].to_vec()).unwrap());
            b = &b[h + len..];
        }
        out
    }

    fn open(now: Instant) -> (SessionState, String) {
        let o = SocketIo
            .accept(&cfg(), &upgrade("EIO=4&transport=websocket"), now)
            .unwrap();
        let greeting = texts(*o.first.unwrap());
        (o.state, greeting[0].clone())
    }

    fn send(s: &mut SessionState, msg: &str, now: Instant) -> Exchange {
        SocketIo.handle_message(s, msg.as_bytes(), &mut RpcParser::new(), now)
    }

    fn closing(s: &SessionState) -> Option<Close> {
        s.get::<SioState>().unwrap().closing.map(|c| c.1)
    }

    #[test]
    fn accept_checks_the_query_and_greets() {
        let now = Instant::now();
        for (q, reason) in [
            (
                "EIO=3&transport=websocket",
                "unsupported Engine.IO version: EIO=4 required",
            ),
            ("transport=websocket", "missing EIO=4 (Engine.IO version)"),
            (
                "EIO=4&transport=polling",
                "transport=polling is plain HTTP, not a WebSocket upgrade",
            ),
            (
                "EIO=4&transport=x",
                "bad transport: transport=websocket required",
            ),
            ("EIO=4", "bad transport: transport=websocket required"),
        ] {
            let r = SocketIo.accept(&cfg(), &upgrade(q), now).unwrap_err();
            assert_eq!((r.status, r.reason), (400, reason), "{q}");
        }
        let (_, greeting) = open(now);
        let v: serde_json::Value = serde_json::from_str(&greeting[1..]).unwrap();
        assert!(greeting.starts_with(r#"0{"sid":""#));
        assert_eq!(v["sid"].as_str().unwrap().len(), 20);
        assert!(greeting.ends_with(&format!(
            r#","upgrades":[],"pingInterval":1000,"pingTimeout":500,"maxPayload":{}}}"#,
            Config::default().limits.max_message_size
        )));
    }

    #[test]
    fn server_pings_and_closes_on_a_missing_pong() {
        let t0 = Instant::now();
        let (mut s, _) = open(t0);
        send(&mut s, "40", t0);
        let due = SocketIo.next_deadline(&s).unwrap();
        assert_eq!(due, t0 + Duration::from_millis(1000));
        let mut reply = ReplyWriter::new(false);
        assert_eq!(SocketIo.on_deadline(&mut s, due, &mut reply), None);
        assert_eq!(frames_of(&reply.finish_frames().unwrap()), ["2"]);
        // The pong arrives: the next ping is an interval after it.
        let t1 = due + Duration::from_millis(100);
        assert!(texts(send(&mut s, "3", t1)).is_empty());
        let due = SocketIo.next_deadline(&s).unwrap();
        assert_eq!(due, t1 + Duration::from_millis(1000));
        let mut reply = ReplyWriter::new(false);
        assert_eq!(SocketIo.on_deadline(&mut s, due, &mut reply), None);
        // No pong this time.
        let late = SocketIo.next_deadline(&s).unwrap();
        assert_eq!(late, due + Duration::from_millis(500));
        let mut reply = ReplyWriter::new(false);
        assert_eq!(
            SocketIo.on_deadline(&mut s, late, &mut reply),
            Some(Close {
                code: 1000,
                reason: "ping timeout"
            })
        );
    }

    #[test]
    fn connect_timeout_closes_a_connection_without_a_namespace() {
        let t0 = Instant::now();
        let (mut s, _) = open(t0);
        let mut reply = ReplyWriter::new(false);
        // The first ping falls due before the connect timeout.
        let d = SocketIo.next_deadline(&s).unwrap();
        assert_eq!(SocketIo.on_deadline(&mut s, d, &mut reply), None);
        send(&mut s, "3", d);
        send(&mut s, "3", d + Duration::from_millis(1000));
        let d = t0 + Duration::from_millis(3000);
        assert_eq!(SocketIo.next_deadline(&s), Some(d));
        assert_eq!(
            SocketIo.on_deadline(&mut s, d, &mut ReplyWriter::new(false)),
            Some(Close {
                code: 1000,
                reason: "connect timeout: no Socket.IO CONNECT"
            })
        );
    }

    #[test]
    fn connect_auth_and_namespaces() {
        let now = Instant::now();
        let (mut s, _) = open(now);
        assert_eq!(
            texts(send(&mut s, "40/admin,", now)),
            [r#"44/admin,{"message":"Invalid namespace"}"#]
        );
        assert_eq!(
            texts(send(&mut s, r#"40{"role":"sender","token":"nope"}"#, now)),
            [r#"44{"message":"Authentication failed"}"#]
        );
        assert_eq!(
            texts(send(&mut s, r#"40{"role":"sender"}"#, now)),
            [r#"44{"message":"Authentication failed"}"#]
        );
        assert_eq!(
            closing(&s),
            None,
            "a failed auth leaves the connection open"
        );
        let ok = texts(send(&mut s, r#"40{"role":"sender","token":"lqdoj"}"#, now));
        assert!(
            ok[0].starts_with(r#"40{"sid":""#) && ok[0].len() == 32,
            "{ok:?}"
        );
        assert_eq!(s.get::<SioState>().unwrap().role, Some(Role::Sender));
        assert_eq!(s.get::<SioState>().unwrap().connect_due, None);
    }

    #[test]
    fn sender_events_become_operations_with_acks() {
        let now = Instant::now();
        let (mut s, _) = open(now);
        send(&mut s, r#"40{"role":"sender","token":"lqdoj"}"#, now);
        let ex = send(
            &mut s,
            r#"421["post",{"channel":"sub_abc","message":{"type":"processing"}}]"#,
            now,
        );
        assert_eq!(ex.calls.len(), 1);
        assert_eq!(ex.calls[0].id.as_deref(), Some(&b"1"[..]));
        assert_eq!(
            ex.calls[0].op,
            Ok(Op::Post {
                channel: "sub_abc".into(),
                data: Bytes::from_static(br#"{"type":"processing"}"#)
            })
        );
        let ex = send(&mut s, r#"42["last-msg"]"#, now);
        assert_eq!(ex.calls[0].op, Ok(Op::LastId));
        assert_eq!(ex.calls[0].id, None);
        assert_eq!(
            texts(send(&mut s, r#"423["post",null]"#, now)),
            [r#"433[{"status":"error","code":"invalid-channel","message":"Invalid channel"}]"#]
        );
        assert_eq!(
            texts(send(&mut s, r#"42["post",null]"#, now)),
            [
                r#"42["error",{"status":"error","code":"invalid-channel","message":"Invalid channel"}]"#
            ]
        );
        // The answers, rendered.
        let mut st = s;
        let mut reply = ReplyWriter::new(false);
        let op = Op::Post {
            channel: "c".into(),
            data: Bytes::new(),
        };
        let peer = || String::new();
        SocketIo.write_answer(
            &mut st,
            &mut reply,
            Some(b"1"),
            Answer::Done {
                op: &op,
                result: Ok(Outcome::Published(crate::pubsub::ops::PublishResult {
                    offset: 1,
                    id: 1753064000124,
                    subscribers: 0,
                })),
                peer: &peer,
            },
        );
        SocketIo.write_answer(
            &mut st,
            &mut reply,
            None,
            Answer::Done {
                op: &Op::LastId,
                result: Ok(Outcome::LastId(1753064000124)),
                peer: &peer,
            },
        );
        assert_eq!(
            frames_of(&reply.finish_frames().unwrap()),
            [
                r#"431[{"status":"success","id":1753064000124}]"#,
                r#"42["last-response",{"status":"success","id":1753064000124}]"#
            ]
        );
    }

    #[test]
    fn client_events_follow_and_refuse() {
        let now = Instant::now();
        let (mut s, _) = open(now);
        assert!(texts(send(&mut s, r#"40{"role":"client"}"#, now))[0].starts_with("40{"));
        assert_eq!(
            texts(send(&mut s, r#"42["start-msg",{"start":5}]"#, now)),
            [r#"42["status",{"status":"success"}]"#]
        );
        let ex = send(&mut s, r#"42["set-filter",{"filter":["a"]}]"#, now);
        assert_eq!(
            ex.calls[0].op,
            Ok(Op::Follow {
                channels: vec!["a".into()],
                after_id: Some(5)
            })
        );
        let ex = send(&mut s, r#"42["set-filter",{"filter":["a"]}]"#, now);
        assert_eq!(
            ex.calls[0].op,
            Ok(Op::Follow {
                channels: vec!["a".into()],
                after_id: None
            }),
            "the start is used once"
        );
        assert_eq!(
            texts(send(&mut s, r#"421["post",{"channel":"a"}]"#, now)),
            [
                r#"42["error",{"status":"error","code":"unauthorized","message":"Unauthorized operation"}]"#
            ]
        );
        assert_eq!(
            texts(send(&mut s, r#"42["set-filter"]"#, now)),
            [
                r#"42["error",{"status":"error","code":"invalid-filter","message":"Invalid filter"}]"#
            ]
        );
        let p = Publication::message("a".into(), 1, 9, 0, Bytes::from_static(b"\"hi\""));
        assert_eq!(
            frames_of(&SocketIo.encode_publication(&p)),
            [r#"42["message",{"id":9,"channel":"a","message":"hi"}]"#]
        );
    }

    #[test]
    fn malformed_packets_close_with_a_reason() {
        let now = Instant::now();
        for (msg, code, reason) in [
            ("", 1002, "invalid Engine.IO packet: empty message"),
            ("x", 1002, "invalid Engine.IO packet type"),
            (
                "2",
                1002,
                "invalid heartbeat direction: the server pings in Engine.IO v4",
            ),
            ("4", 1002, "invalid Socket.IO packet: empty"),
            ("49", 1002, "invalid Socket.IO packet type"),
            (r#"42["a"]"#, 1002, "Socket.IO event before CONNECT"),
            (
                r#"451-["a",{"_placeholder":true,"num":0}]"#,
                1003,
                "binary Socket.IO packets are not supported (JSON only)",
            ),
            (
                "40[1]",
                1002,
                "invalid Socket.IO CONNECT: auth must be an object",
            ),
            ("1", 1000, "client closed"),
        ] {
            let (mut s, _) = open(now);
            assert!(texts(send(&mut s, msg, now)).is_empty(), "{msg}");
            assert_eq!(closing(&s), Some(Close { code, reason }), "{msg}");
            assert_eq!(SocketIo.next_deadline(&s), Some(now), "{msg}");
            assert_eq!(
                SocketIo.on_deadline(&mut s, now, &mut ReplyWriter::new(false)),
                Some(Close { code, reason })
            );
        }
        let (mut s, _) = open(now);
        send(&mut s, "40", now);
        send(&mut s, "42{}", now);
        assert_eq!(
            closing(&s).unwrap().reason,
            "invalid Socket.IO event: payload is not a JSON array"
        );
    }

    #[test]
    fn over_capacity_a_client_gets_lqdojs_error_then_disconnect() {
        let now = Instant::now();
        let mut c = cfg();
        c.protocols.socketio.max_clients = 0;
        let mut s = SocketIo
            .accept(&c, &upgrade("EIO=4&transport=websocket"), now)
            .unwrap()
            .state;
        let out = texts(send(&mut s, "40", now));
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out[0].starts_with(r#"40{"sid":""#));
        assert_eq!(
            out[1],
            r#"42["error",{"status":"error","code":"server-capacity","message":"Server at capacity"}]"#
        );
        assert_eq!(out[2], "41");
        assert_eq!(closing(&s).unwrap().reason, "server at capacity");
        // Senders are not counted.
        let mut s = SocketIo
            .accept(&c, &upgrade("EIO=4&transport=websocket"), now)
            .unwrap()
            .state;
        let out = texts(send(&mut s, r#"40{"role":"sender","token":"lqdoj"}"#, now));
        assert_eq!(out.len(), 1);
        assert_eq!(closing(&s), None);
    }

    #[test]
    fn client_places_are_given_back() {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let a = ClientSlot::take(&COUNT, 2).unwrap();
        let b = ClientSlot::take(&COUNT, 2).unwrap();
        assert!(ClientSlot::take(&COUNT, 2).is_none());
        assert_eq!(COUNT.load(Ordering::Relaxed), 2);
        drop(a);
        let c = ClientSlot::take(&COUNT, 2).unwrap();
        drop((b, c));
        assert_eq!(COUNT.load(Ordering::Relaxed), 0);
    }
}
