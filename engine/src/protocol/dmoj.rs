//! DMOJ's event daemon (`websocket/daemon.js` of DMOJ/online-judge), as a
//! drop-in: three adapters behind [`Protocol`], sans-IO.
//!
//! - [`DmojReceiver`] (`dmoj`): browsers. `start-msg` remembers the page's
//!   last id, `set-filter` follows channels and replays what was missed
//!   (id order) ahead of the live messages, each delivered as
//!   `{"id":I,"channel":C,"message":M}`.
//! - [`DmojSender`] (`dmoj-sender`): Django and the judge bridge. `post`,
//!   `last-msg` and `auth`, one reply per request. Served only on its own
//!   listener ([`Protocol::public`] is false).
//! - [`DmojPoll`] (`dmoj-poll`): a parked long-poll request. Its
//!   publication form is the complete HTTP response, so a parked request
//!   is a connection subscribed to its channels that takes one delivery.
//!
//! Ids are ringcast's publication ids: node-wide, seeded from the Unix time
//! in milliseconds, +1 per publication, as DMOJ's `message_id`.
//! Commands are parsed with simd-json; every bad input is answered with
//! DMOJ's error object and never ends the connection.
#![forbid(unsafe_code)]

use std::time::Instant;

use bytes::Bytes;
use simd_json::prelude::*;
use simd_json::BorrowedValue as Value;

use super::adapter::{Answer, Exchange, Protocol, SessionState};
use super::rpc::{valid_channel, ReplyWriter, RpcParser};
use crate::ops::config::Config;
use crate::pubsub::ops::{Op, OpError, Outcome};
use crate::pubsub::publication::{text_frame, write_json_str, Publication};

/// Receivers (browsers): `start-msg`, `set-filter`.
pub struct DmojReceiver;
/// Senders (the site's backend): `post`, `last-msg`, `auth`.
pub struct DmojSender;
/// Parked long-poll requests.
pub struct DmojPoll;

/// What a receiver connection remembers.
#[derive(Debug, Default)]
pub struct ReceiverState {
    /// The id given by the last `start-msg` not yet used by a `set-filter`.
    start: Option<u64>,
}

/// What a sender connection remembers.
#[derive(Debug)]
pub struct SenderState {
    /// The key `auth` must give; `None`: no authentication.
    key: Option<Box<str>>,
    authenticated: bool,
}

/// `{"id":I,"channel":C,"message":M}`, keys in DMOJ's order; a broadcast
/// (`notify_all`) has channel `null`.
pub fn publication_json(p: &Publication) -> Vec<u8> {
    let channel = p.channel.as_deref();
    let mut out = Vec::with_capacity(48 + channel.map_or(4, str::len) + p.data.len());
    out.extend_from_slice(br#"{"id":"#);
    out.extend_from_slice(itoa::Buffer::new().format(p.id).as_bytes());
    out.extend_from_slice(br#","channel":"#);
    match channel {
        Some(c) => write_json_str(&mut out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","message":"#);
    out.extend_from_slice(&p.data);
    out.push(b'}');
    out
}

/// `{"status":"error","code":CODE,"message":MESSAGE}`
pub fn error_json(code: &str, message: Option<&str>) -> Vec<u8> {
    let mut out = br#"{"status":"error","code":"#.to_vec();
    write_json_str(&mut out, code);
    if let Some(m) = message {
        out.extend_from_slice(br#","message":"#);
        write_json_str(&mut out, m);
    }
    out.push(b'}');
    out
}

pub(crate) fn success_json(id: Option<u64>) -> Vec<u8> {
    match id {
        Some(id) => format!(r#"{{"status":"success","id":{id}}}"#).into_bytes(),
        None => br#"{"status":"success"}"#.to_vec(),
    }
}

/// A client command, as DMOJ's daemons understand them.
#[derive(Debug, PartialEq)]
pub enum Command {
    StartMsg(Option<u64>),
    SetFilter(Vec<Box<str>>),
    Post { channel: Box<str>, data: Bytes },
    LastMsg,
    Auth(Option<Box<str>>),
}

/// Why a command was refused: DMOJ's error object.
#[derive(Debug, PartialEq)]
pub struct CommandError {
    pub code: &'static str,
    pub message: Option<String>,
}

impl CommandError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        CommandError {
            code,
            message: Some(message.into()),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        error_json(self.code, self.message.as_deref())
    }
}

/// The commands each role knows (normalized: `-` replaced by `_`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Receiver,
    Sender,
}

/// Parses one frame into a command of `role`.
pub fn parse_command(msg: &[u8], role: Role) -> Result<Command, CommandError> {
    let mut buf = msg.to_vec();
    let v = simd_json::to_borrowed_value(&mut buf)
        .map_err(|e| CommandError::new("syntax-error", e.to_string()))?;
    let Some(command) = v.get("command").and_then(|c| c.as_str()) else {
        return Err(CommandError::new("syntax-error", "no command specified"));
    };
    let command = command.replace('-', "_");
    match (role, command.as_str()) {
        (Role::Receiver, "start_msg") => Ok(Command::StartMsg(v.get("start").and_then(as_id))),
        (Role::Receiver, "set_filter") => {
            let filter = v.get("filter");
            let bad = || {
                CommandError::new(
                    "invalid-filter",
                    format!("invalid filter: {}", js_string(filter)),
                )
            };
            let list = filter.and_then(|f| f.as_array()).ok_or_else(bad)?;
            if list.is_empty() {
                return Err(bad());
            }
            let mut channels: Vec<Box<str>> = Vec::with_capacity(list.len());
            for c in list {
                match c.as_str() {
                    Some(c) if valid_channel(c) => {
                        if !channels.iter().any(|x| &**x == c) {
                            channels.push(c.into());
                        }
                    }
                    _ => return Err(bad()),
                }
            }
            Ok(Command::SetFilter(channels))
        }
        (Role::Sender, "post") => {
            let channel = v
                .get("channel")
                .and_then(|c| c.as_str())
                .filter(|c| valid_channel(c))
                .ok_or(CommandError {
                    code: "invalid-channel",
                    message: None,
                })?;
            // DMOJ drops a missing message (JSON.stringify of undefined).
            let data = v
                .get("message")
                .map_or_else(|| "null".to_owned(), |m| m.encode());
            Ok(Command::Post {
                channel: channel.into(),
                data: Bytes::from(data.into_bytes()),
            })
        }
        (Role::Sender, "last_msg") => Ok(Command::LastMsg),
        (Role::Sender, "auth") => Ok(Command::Auth(
            v.get("key").and_then(|k| k.as_str()).map(Into::into),
        )),
        _ => Err(CommandError::new(
            "bad-command",
            format!("bad command: {command}"),
        )),
    }
}

/// A non-negative integer id (JSON numbers DMOJ pages render).
fn as_id(v: &Value<'_>) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// JavaScript's `String(value)` for what DMOJ puts in its messages.
fn js_string(v: Option<&Value<'_>>) -> String {
    let Some(v) = v else {
        return "undefined".into();
    };
    if let Some(s) = v.as_str() {
        return s.to_owned();
    }
    if let Some(a) = v.as_array() {
        return a
            .iter()
            .map(|e| {
                if e.is_null() {
                    String::new()
                } else {
                    js_string(Some(e))
                }
            })
            .collect::<Vec<_>>()
            .join(",");
    }
    if v.is_object() {
        return "[object Object]".into();
    }
    v.encode()
}

fn only_reply(json: &[u8]) -> Exchange {
    let mut reply = ReplyWriter::new(false);
    reply.raw(json);
    Exchange::reply(reply)
}

/// An engine error in DMOJ's words.
/// An engine error in DMOJ's (and LQDOJ's) error-object words.
pub(crate) fn op_error_json(e: &OpError) -> Vec<u8> {
    let code = match e {
        OpError::TooManySubscriptions(_) => "too-many-subscriptions",
        OpError::RateLimited => "rate-limited",
        OpError::Overloaded => "overloaded",
        OpError::BusUnavailable => "bus-unavailable",
        OpError::PublishDenied | OpError::Unauthorized(_) => "unauthorized",
        OpError::Denied(_) => "permission-denied",
        OpError::NotSubscribed(_) => "not-subscribed",
        OpError::Internal(_) => "internal-error",
    };
    error_json(code, Some(&e.to_string()))
}

impl Protocol for DmojReceiver {
    fn name(&self) -> &'static str {
        "dmoj"
    }

    fn path<'c>(&self, cfg: &'c Config) -> &'c str {
        if cfg.protocols.dmoj.enabled {
            &cfg.protocols.dmoj.path
        } else {
            ""
        }
    }

    fn encode_publication(&self, p: &Publication) -> Bytes {
        text_frame(&publication_json(p))
    }

    fn open(&self, _cfg: &Config) -> SessionState {
        SessionState::new(ReceiverState::default())
    }

    fn handle_message(
        &self,
        state: &mut SessionState,
        msg: &[u8],
        _parser: &mut RpcParser,
        _now: Instant,
    ) -> Exchange {
        let Some(state) = state.get_mut::<ReceiverState>() else {
            return only_reply(&error_json("internal-error", Some("no session")));
        };
        match parse_command(msg, Role::Receiver) {
            Err(e) => only_reply(&e.to_json()),
            Ok(Command::StartMsg(start)) => {
                state.start = start;
                Exchange::none()
            }
            // DMOJ's follower sees every later message (its `last_msg`
            // moves with each one), so a later set-filter without a new
            // start-msg replays nothing: the start is used once.
            Ok(Command::SetFilter(channels)) => Exchange::call(Op::Follow {
                channels,
                after_id: state.start.take(),
            }),
            Ok(_) => only_reply(&error_json("bad-command", Some("bad command"))),
        }
    }

    fn write_answer(
        &self,
        _state: &mut SessionState,
        reply: &mut ReplyWriter,
        _id: Option<&[u8]>,
        answer: Answer<'_>,
    ) {
        match answer {
            Answer::Rejected(e) => reply.raw(&error_json("bad-command", Some(&e.message))),
            // DMOJ sends no reply to set-filter: only the replayed messages.
            Answer::Done {
                result: Ok(Outcome::Followed { replay }),
                ..
            } => {
                let mut frames = Vec::new();
                for p in &replay {
                    frames.extend_from_slice(self.encode_publication(p).as_ref());
                }
                reply.frames(&frames);
            }
            Answer::Done { result: Ok(_), .. } => {}
            Answer::Done { result: Err(e), .. } => reply.raw(&op_error_json(&e)),
        }
    }
}

impl Protocol for DmojSender {
    fn name(&self) -> &'static str {
        "dmoj-sender"
    }

    fn path<'c>(&self, _cfg: &'c Config) -> &'c str {
        ""
    }

    fn public(&self) -> bool {
        false
    }

    fn encode_publication(&self, p: &Publication) -> Bytes {
        text_frame(&publication_json(p))
    }

    fn open(&self, cfg: &Config) -> SessionState {
        let key = &cfg.protocols.dmoj.key;
        SessionState::new(SenderState {
            key: (!key.is_empty()).then(|| key.as_str().into()),
            authenticated: false,
        })
    }

    fn handle_message(
        &self,
        state: &mut SessionState,
        msg: &[u8],
        _parser: &mut RpcParser,
        _now: Instant,
    ) -> Exchange {
        let Some(state) = state.get_mut::<SenderState>() else {
            return only_reply(&error_json("internal-error", Some("no session")));
        };
        match parse_command(msg, Role::Sender) {
            Err(e) => only_reply(&e.to_json()),
            Ok(Command::Auth(key)) => match &state.key {
                Some(want)
                    if !key
                        .as_deref()
                        .is_some_and(|k| crate::access::ct_eq(k.as_bytes(), want.as_bytes())) =>
                {
                    only_reply(&error_json("bad-key", None))
                }
                _ => {
                    state.authenticated = true;
                    only_reply(&success_json(None))
                }
            },
            Ok(Command::Post { .. }) if state.key.is_some() && !state.authenticated => {
                only_reply(&error_json(
                    "unauthorized",
                    Some("authenticate first: {\"command\":\"auth\",\"key\":KEY}"),
                ))
            }
            Ok(Command::Post { channel, data }) => Exchange::call(Op::Post { channel, data }),
            Ok(Command::LastMsg) => Exchange::call(Op::LastId),
            Ok(_) => only_reply(&error_json("bad-command", Some("bad command"))),
        }
    }

    fn write_answer(
        &self,
        _state: &mut SessionState,
        reply: &mut ReplyWriter,
        _id: Option<&[u8]>,
        answer: Answer<'_>,
    ) {
        let json = match answer {
            Answer::Rejected(e) => error_json("bad-command", Some(&e.message)),
            Answer::Done { result, .. } => match result {
                Ok(Outcome::Published(r)) => success_json(Some(r.id)),
                Ok(Outcome::LastId(id)) => success_json(Some(id)),
                Ok(_) => success_json(None),
                Err(e) => op_error_json(&e),
            },
        };
        reply.raw(&json);
    }
}

impl Protocol for DmojPoll {
    fn name(&self) -> &'static str {
        "dmoj-poll"
    }

    fn path<'c>(&self, _cfg: &'c Config) -> &'c str {
        ""
    }

    fn public(&self) -> bool {
        false
    }

    fn websocket(&self) -> bool {
        false
    }

    fn claims_plain_http(&self, cfg: &Config, head: &[u8]) -> bool {
        cfg.protocols
            .dmoj
            .public_poll_path()
            .is_some_and(|p| is_poll_request(head, p))
    }

    fn one_shot(&self) -> bool {
        true
    }

    fn expire_after(&self, cfg: &Config) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(
            cfg.protocols.dmoj.long_poll_timeout,
        ))
    }

    fn expired_answer(&self) -> Bytes {
        Bytes::from(poll_timeout_response(true))
    }

    /// The complete `200` answer to a parked long-poll.
    fn encode_publication(&self, p: &Publication) -> Bytes {
        Bytes::from(poll_message_response(p))
    }

    fn handle_message(
        &self,
        _: &mut SessionState,
        _: &[u8],
        _: &mut RpcParser,
        _: Instant,
    ) -> Exchange {
        // A long-poll sends no messages after its request.
        Exchange::none()
    }

    fn write_answer(&self, _: &mut SessionState, _: &mut ReplyWriter, _: Option<&[u8]>, _: Answer) {
    }
}

// ----- long-poll HTTP ------------------------------------------------------

/// Largest long-poll request head accepted.
pub const MAX_POLL_HEAD: usize = 8 * 1024;

/// A long-poll request: `GET <prefix><a>|<b>?last=<id>`.
#[derive(Debug, PartialEq)]
pub struct PollRequest {
    pub channels: Vec<Box<str>>,
    /// `last` (DMOJ's `parseInt`, 0 when absent or not a number).
    pub last: u64,
    pub keep_alive: bool,
}

/// What the bytes read so far on a long-poll connection are.
#[derive(Debug, PartialEq)]
pub enum Poll {
    /// Not a complete request head yet.
    Incomplete,
    /// A request to answer from history or park; `consumed` bytes.
    Wait(PollRequest, usize),
    /// A request answered at once with this response; after it the
    /// connection stays open when `keep_alive`.
    Answer {
        response: Vec<u8>,
        keep_alive: bool,
        consumed: usize,
    },
}

/// Parses a long-poll request head (DMOJ's `daemon.js` L155-206): a path
/// not under `prefix` is 404, no channel 400, a method other than GET 405.
pub fn parse_poll(buf: &[u8], prefix: &str) -> Poll {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_POLL_HEAD => return Poll::Incomplete,
        Ok(httparse::Status::Partial) => {
            return close_answer(431, b"431 Request Header Fields Too Large")
        }
        Err(_) => return close_answer(400, b"400 Bad Request"),
    };
    let version = req.version.unwrap_or(0);
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
    };
    let connection = header("connection").unwrap_or_default();
    let keep_alive = if version >= 1 {
        !connection.contains("close")
    } else {
        connection.contains("keep-alive")
    };
    let has_body = header("transfer-encoding").is_some()
        || header("content-length").is_some_and(|l| l.trim() != "0");
    if has_body {
        // A body we would have to skip: refuse, and close.
        return close_answer(400, b"400 Bad Request");
    }
    let answer = |status: u16, body: &[u8]| Poll::Answer {
        response: poll_response(status, "text/plain", body, keep_alive),
        keep_alive,
        consumed,
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return close_answer(400, b"400 Bad Request");
    };
    if method != "GET" {
        return answer(405, b"405 Method Not Allowed");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(list) = path.strip_prefix(prefix) else {
        return answer(404, b"404 Not Found");
    };
    // Browsers send event.js's `a|b` as `a%7Cb` (Chromium escapes `|` in
    // paths); DMOJ's daemon then sees one channel, ringcast the two.
    let list = if list.contains('%') {
        std::borrow::Cow::Owned(list.replace("%7C", "|").replace("%7c", "|"))
    } else {
        std::borrow::Cow::Borrowed(list)
    };
    let mut channels: Vec<Box<str>> = Vec::new();
    for c in list.split('|').filter(|c| !c.is_empty()) {
        if !valid_channel(c) {
            return answer(400, b"400 Bad Request");
        }
        if !channels.iter().any(|x| &**x == c) {
            channels.push(c.into());
        }
    }
    if channels.is_empty() {
        return answer(400, b"400 Bad Request");
    }
    let last = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("last="))
        .map_or(0, parse_int);
    Poll::Wait(
        PollRequest {
            channels,
            last,
            keep_alive,
        },
        consumed,
    )
}

fn close_answer(status: u16, body: &[u8]) -> Poll {
    Poll::Answer {
        response: poll_response(status, "text/plain", body, false),
        keep_alive: false,
        consumed: 0,
    }
}

/// JavaScript's `parseInt(s)` for ids: leading digits, 0 when none.
fn parse_int(s: &str) -> u64 {
    let s = s.trim_start();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    s[..digits].parse().unwrap_or(0)
}

/// A complete HTTP/1.1 response.
pub fn poll_response(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(super::http::reason(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\nCache-Control: no-cache\r\n");
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    if status == 405 {
        out.extend_from_slice(b"Allow: GET\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// `200` with the message: the same bytes for every poller (without a
/// `Connection` header, HTTP/1.1 keeps the connection and HTTP/1.0 closes
/// it, as each client expects; the server closes it after an HTTP/1.0 one).
pub fn poll_message_response(p: &Publication) -> Vec<u8> {
    let body = publication_json(p);
    let mut r = poll_response(200, "application/json", &body, true);
    debug_assert!(!r.is_empty());
    r.shrink_to_fit();
    r
}

/// `504` `{"error": "timeout"}`, as DMOJ answers a poll nothing came for.
pub fn poll_timeout_response(keep_alive: bool) -> Vec<u8> {
    poll_response(
        504,
        "application/json",
        br#"{"error": "timeout"}"#,
        keep_alive,
    )
}

/// Whether `buf` starts a plain (non-upgrade) HTTP request for a path under
/// `prefix`: the public port hands those to the long-poll handler.
pub fn is_poll_request(buf: &[u8], prefix: &str) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(buf), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    let upgrade = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
    !upgrade && req.path.is_some_and(|p| p.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pubsub::ops::PublishResult;

    fn publication(id: u64, channel: &str, data: &str) -> Publication {
        Publication::message(Arc::from(channel), 1, id, 0, Bytes::from(data.to_owned()))
    }

    fn payload(frame: &[u8]) -> &str {
        let start = if frame[1] & 0x7f == 126 { 4 } else { 2 };
        std::str::from_utf8(&frame[start..]).unwrap()
    }

    fn run(p: &dyn Protocol, state: &mut SessionState, msg: &str) -> Exchange {
        p.handle_message(state, msg.as_bytes(), &mut RpcParser::new(), Instant::now())
    }

    fn reply_of(ex: Exchange) -> String {
        String::from_utf8(ex.reply.finish().unwrap_or_default()).unwrap()
    }

    fn answer(
        p: &dyn Protocol,
        state: &mut SessionState,
        op: Op,
        r: Result<Outcome, OpError>,
    ) -> Option<Bytes> {
        let mut w = ReplyWriter::new(false);
        let peer = || "127.0.0.1:1".to_string();
        p.write_answer(
            state,
            &mut w,
            None,
            Answer::Done {
                op: &op,
                result: r,
                peer: &peer,
            },
        );
        w.finish_frames()
    }

    #[test]
    fn publication_form_is_dmojs() {
        let p = publication(1700000000124, "sub_abc", r#"{"type":"grading-begin"}"#);
        assert_eq!(
            payload(&DmojReceiver.encode_publication(&p)),
            r#"{"id":1700000000124,"channel":"sub_abc","message":{"type":"grading-begin"}}"#
        );
        let b = Publication::broadcast(5, 0, Bytes::from_static(b"1"));
        assert_eq!(
            publication_json(&b),
            br#"{"id":5,"channel":null,"message":1}"#
        );
    }

    #[test]
    fn receiver_commands_and_spellings() {
        let mut s = DmojReceiver.open(&Config::default());
        let ex = run(
            &DmojReceiver,
            &mut s,
            r#"{"command":"start-msg","start":1700000000123}"#,
        );
        assert!(ex.calls.is_empty());
        assert_eq!(reply_of(ex), "", "start-msg has no reply");
        let ex = run(
            &DmojReceiver,
            &mut s,
            r#"{"command":"set-filter","filter":["sub_abc","sub_abc","x"]}"#,
        );
        assert_eq!(
            ex.calls[0].op,
            Ok(Op::Follow {
                channels: vec!["sub_abc".into(), "x".into()],
                after_id: Some(1700000000123)
            })
        );
        // The start is used once; the underscore spellings work too.
        let ex = run(
            &DmojReceiver,
            &mut s,
            r#"{"command":"set_filter","filter":["a"]}"#,
        );
        assert_eq!(
            ex.calls[0].op,
            Ok(Op::Follow {
                channels: vec!["a".into()],
                after_id: None
            })
        );
        run(
            &DmojReceiver,
            &mut s,
            r#"{"command":"start_msg","start":7}"#,
        );
        let ex = run(
            &DmojReceiver,
            &mut s,
            r#"{"command":"set-filter","filter":["a"]}"#,
        );
        assert_eq!(
            ex.calls[0].op,
            Ok(Op::Follow {
                channels: vec!["a".into()],
                after_id: Some(7)
            })
        );
    }

    #[test]
    fn receiver_errors_are_dmojs() {
        let mut s = DmojReceiver.open(&Config::default());
        for (msg, want) in [
            (
                r#"{"command":"set-filter","filter":"a"}"#,
                r#"{"status":"error","code":"invalid-filter","message":"invalid filter: a"}"#,
            ),
            (
                r#"{"command":"set-filter","filter":[]}"#,
                r#"{"status":"error","code":"invalid-filter","message":"invalid filter: "}"#,
            ),
            (
                r#"{"command":"set-filter"}"#,
                r#"{"status":"error","code":"invalid-filter","message":"invalid filter: undefined"}"#,
            ),
            (
                r#"{"command":"set-filter","filter":{"a":1}}"#,
                r#"{"status":"error","code":"invalid-filter","message":"invalid filter: [object Object]"}"#,
            ),
            (
                r#"{"command":"set-filter","filter":["a",1]}"#,
                r#"{"status":"error","code":"invalid-filter","message":"invalid filter: a,1"}"#,
            ),
            (
                r#"{"command":"set-filter","filter":["has space"]}"#,
                r#"{"status":"error","code":"invalid-filter","message":"invalid filter: has space"}"#,
            ),
            (
                r#"{"command":"post","channel":"a","message":1}"#,
                r#"{"status":"error","code":"bad-command","message":"bad command: post"}"#,
            ),
            (
                r#"{"command":"last-msg"}"#,
                r#"{"status":"error","code":"bad-command","message":"bad command: last_msg"}"#,
            ),
            (
                r#"{"start":1}"#,
                r#"{"status":"error","code":"syntax-error","message":"no command specified"}"#,
            ),
            (
                r#"[1]"#,
                r#"{"status":"error","code":"syntax-error","message":"no command specified"}"#,
            ),
            (
                r#"{"command":5}"#,
                r#"{"status":"error","code":"syntax-error","message":"no command specified"}"#,
            ),
        ] {
            let ex = run(&DmojReceiver, &mut s, msg);
            assert!(ex.calls.is_empty(), "{msg}");
            assert_eq!(reply_of(ex), want, "{msg}");
        }
        let ex = run(&DmojReceiver, &mut s, "{nope");
        let r = reply_of(ex);
        assert!(
            r.starts_with(r#"{"status":"error","code":"syntax-error","message":""#),
            "{r}"
        );
    }

    #[test]
    fn proto_and_tostring_are_ordinary_channels() {
        let mut s = DmojReceiver.open(&Config::default());
        let ex = run(
            &DmojReceiver,
            &mut s,
            r#"{"command":"set-filter","filter":["__proto__","toString","constructor"]}"#,
        );
        assert_eq!(
            ex.calls[0].op,
            Ok(Op::Follow {
                channels: vec!["__proto__".into(), "toString".into(), "constructor".into()],
                after_id: None
            })
        );
    }

    #[test]
    fn set_filter_answer_is_the_replay_in_order() {
        let mut s = DmojReceiver.open(&Config::default());
        let replay = vec![
            Arc::new(publication(10, "a", "1")),
            Arc::new(publication(11, "b", "2")),
        ];
        let op = Op::Follow {
            channels: vec!["a".into(), "b".into()],
            after_id: Some(9),
        };
        let frames = answer(
            &DmojReceiver,
            &mut s,
            op.clone(),
            Ok(Outcome::Followed { replay }),
        )
        .unwrap();
        let first = text_frame(br#"{"id":10,"channel":"a","message":1}"#);
        let second = text_frame(br#"{"id":11,"channel":"b","message":2}"#);
        assert_eq!(&frames[..], [&first[..], &second[..]].concat());
        assert!(answer(
            &DmojReceiver,
            &mut s,
            op.clone(),
            Ok(Outcome::Followed { replay: vec![] })
        )
        .is_none());
        let err = answer(
            &DmojReceiver,
            &mut s,
            op,
            Err(OpError::TooManySubscriptions(2)),
        )
        .unwrap();
        assert_eq!(
            payload(&err),
            r#"{"status":"error","code":"too-many-subscriptions","message":"limit exceeded: at most 2 subscriptions per connection"}"#
        );
    }

    #[test]
    fn sender_posts_and_answers_with_the_id() {
        let mut s = DmojSender.open(&Config::default());
        let ex = run(
            &DmojSender,
            &mut s,
            r#"{"command": "post", "channel": "sub_abc", "message": {"type": "processing", "n": [1, 2]}}"#,
        );
        assert_eq!(
            ex.calls[0].op,
            Ok(Op::Post {
                channel: "sub_abc".into(),
                data: Bytes::from_static(br#"{"type":"processing","n":[1,2]}"#)
            })
        );
        let op = Op::Post {
            channel: "c".into(),
            data: Bytes::new(),
        };
        let r = PublishResult {
            offset: 1,
            id: 1700000000124,
            subscribers: 0,
        };
        let f = answer(&DmojSender, &mut s, op, Ok(Outcome::Published(r))).unwrap();
        assert_eq!(payload(&f), r#"{"status":"success","id":1700000000124}"#);
        let f = answer(&DmojSender, &mut s, Op::LastId, Ok(Outcome::LastId(42))).unwrap();
        assert_eq!(payload(&f), r#"{"status":"success","id":42}"#);
        let ex = run(&DmojSender, &mut s, r#"{"command": "last-msg"}"#);
        assert_eq!(ex.calls[0].op, Ok(Op::LastId));
        for (msg, want) in [
            (
                r#"{"command": "post", "channel": 5, "message": 1}"#,
                r#"{"status":"error","code":"invalid-channel"}"#,
            ),
            (
                r#"{"command": "post", "message": 1}"#,
                r#"{"status":"error","code":"invalid-channel"}"#,
            ),
            (
                r#"{"command": "set-filter", "filter": ["a"]}"#,
                r#"{"status":"error","code":"bad-command","message":"bad command: set_filter"}"#,
            ),
            (
                r#"{"command": "auth", "key": "anything"}"#,
                r#"{"status":"success"}"#,
            ),
        ] {
            assert_eq!(reply_of(run(&DmojSender, &mut s, msg)), want, "{msg}");
        }
    }

    #[test]
    fn sender_with_a_key_must_authenticate() {
        let mut cfg = Config::default();
        cfg.protocols.dmoj.key = "s3cret".into();
        let mut s = DmojSender.open(&cfg);
        let post = r#"{"command": "post", "channel": "c", "message": 1}"#;
        let r = reply_of(run(&DmojSender, &mut s, post));
        assert!(
            r.starts_with(r#"{"status":"error","code":"unauthorized""#),
            "{r}"
        );
        for bad in [
            r#"{"command": "auth", "key": "nope"}"#,
            r#"{"command": "auth"}"#,
            r#"{"command": "auth", "key": "s3cre"}"#,
        ] {
            assert_eq!(
                reply_of(run(&DmojSender, &mut s, bad)),
                r#"{"status":"error","code":"bad-key"}"#
            );
        }
        assert!(run(&DmojSender, &mut s, post).calls.is_empty());
        assert_eq!(
            reply_of(run(
                &DmojSender,
                &mut s,
                r#"{"command": "auth", "key": "s3cret"}"#
            )),
            r#"{"status":"success"}"#
        );
        assert_eq!(run(&DmojSender, &mut s, post).calls.len(), 1);
    }

    #[test]
    fn poll_requests() {
        let p = "/channels/";
        assert_eq!(
            parse_poll(b"GET /channels/a|b?last=12 HTTP/1.1\r\nHost: x\r\n", p),
            Poll::Incomplete
        );
        let req = b"GET /channels/a|b|a?last=12x HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_poll(req, p),
            Poll::Wait(
                PollRequest {
                    channels: vec!["a".into(), "b".into()],
                    last: 12,
                    keep_alive: true
                },
                req.len()
            )
        );
        // Browsers escape `|` in the path (Chromium sends `%7C`).
        for req in [
            &b"GET /channels/a%7Cb?last=3 HTTP/1.1\r\n\r\n"[..],
            &b"GET /channels/a%7cb?last=3 HTTP/1.1\r\n\r\n"[..],
        ] {
            match parse_poll(req, p) {
                Poll::Wait(r, _) => assert_eq!(r.channels, vec![Box::<str>::from("a"), "b".into()]),
                other => panic!("{other:?}"),
            }
        }
        let req = b"GET /channels/a?last=zz HTTP/1.0\r\n\r\n";
        assert_eq!(
            parse_poll(req, p),
            Poll::Wait(
                PollRequest {
                    channels: vec!["a".into()],
                    last: 0,
                    keep_alive: false
                },
                req.len()
            )
        );
        let status = |req: &[u8]| match parse_poll(req, p) {
            Poll::Answer { response, .. } => String::from_utf8(response).unwrap(),
            other => panic!("{other:?}"),
        };
        assert!(status(b"GET /other/a HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(status(b"GET /other/a HTTP/1.1\r\n\r\n").ends_with("\r\n\r\n404 Not Found"));
        assert!(
            status(b"GET /channels/ HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400 Bad Request\r\n")
        );
        assert!(status(b"GET /channels/|?last=1 HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400 "));
        let r = status(b"POST /channels/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && r.contains("Allow: GET\r\n"),
            "{r}"
        );
        assert!(
            status(b"GET /channels/a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
                .contains("Connection: close")
        );
        assert!(status(b"\x01\x02 nonsense\r\n\r\n").starts_with("HTTP/1.1 400 "));
        let big = [
            b"GET /channels/a HTTP/1.1\r\nX: ".as_slice(),
            &[b'a'; MAX_POLL_HEAD],
        ]
        .concat();
        assert!(status(&big).starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn poll_answers() {
        let p = publication(77, "a", r#"{"x":1}"#);
        let r = String::from_utf8(DmojPoll.encode_publication(&p).to_vec()).unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 41\r\nCache-Control: no-cache\r\n\r\n{\"id\":77,\"channel\":\"a\",\"message\":{\"x\":1}}"
        );
        let t = String::from_utf8(poll_timeout_response(true)).unwrap();
        assert!(
            t.starts_with("HTTP/1.1 504 Gateway Timeout\r\nContent-Type: application/json\r\n"),
            "{t}"
        );
        assert!(t.ends_with("\r\n\r\n{\"error\": \"timeout\"}"));
        assert!(is_poll_request(
            b"GET /channels/a HTTP/1.1\r\n\r\n",
            "/channels/"
        ));
        assert!(!is_poll_request(
            b"GET /channels/a HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "/channels/"
        ));
        assert!(!is_poll_request(
            b"GET /event/ HTTP/1.1\r\n\r\n",
            "/channels/"
        ));
    }
}
