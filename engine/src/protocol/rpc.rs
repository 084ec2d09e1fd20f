//! JSON-RPC 2.0 for both ports: envelope parsing, method parameters and
//! reply encoding (SPEC sections 3 and 4).
//!
//! Parsing uses simd-json with buffers reused per shard ([`RpcParser`]). A
//! frame or body is one request or a batch; each call comes out as a
//! [`Call`] holding its raw `id` and either a typed method or the error to
//! answer with. Execution lives in the shard; encoding of replies is here.
#![forbid(unsafe_code)]

use std::borrow::Cow;

use bytes::Bytes;
use simd_json::prelude::*;
use simd_json::BorrowedValue as Value;

use crate::pubsub::home_shard::Since;
use crate::pubsub::ops::Op;
use crate::pubsub::publication::write_json_str;

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const INVALID_PARAMS: i32 = -32602;
pub const NOT_SUBSCRIBED: i32 = -32001;
pub const LIMIT_EXCEEDED: i32 = -32002;
pub const RATE_LIMITED: i32 = -32003;
pub const PERMISSION_DENIED: i32 = -32004;
/// A cross-shard mailbox is full: nothing was published, try again.
pub const OVERLOADED: i32 = -32005;
/// No valid connection token, or a bad token in `connect`/`refresh`.
pub const UNAUTHORIZED: i32 = -32006;
/// RocketWS's generic server error (send_data without subscription).
pub const SERVER_ERROR: i32 = -32000;
pub const INTERNAL_ERROR: i32 = -32603;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    pub code: i32,
    pub message: Cow<'static, str>,
    /// Raw JSON for the `data` member.
    pub data: Option<String>,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<Cow<'static, str>>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }
    pub fn invalid_params(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }
    /// -32002 with `data.limit` naming the limit.
    pub fn limit(limit: &str, message: impl Into<Cow<'static, str>>) -> Self {
        let mut data = br#"{"limit":"#.to_vec();
        write_json_str(&mut data, limit);
        data.push(b'}');
        RpcError {
            code: LIMIT_EXCEEDED,
            message: message.into(),
            data: String::from_utf8(data).ok(),
        }
    }
}

/// One call of a request or batch. `id: None` is a notification.
#[derive(Debug)]
pub struct Call<M> {
    /// The raw JSON of the `id` member.
    pub id: Option<Box<[u8]>>,
    pub method: Result<M, RpcError>,
}

/// A parsed frame or body.
#[derive(Debug)]
pub enum Incoming<M> {
    Single(Call<M>),
    Batch(Vec<Call<M>>),
}

/// The raw `data` member of params as compact JSON.
pub type Data = Bytes;

/// Backend (HTTP) methods.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendMethod {
    Emit {
        channel: Box<str>,
        data: Data,
    },
    PublishMany {
        channels: Vec<Box<str>>,
        data: Data,
    },
    NotifyAll {
        data: Data,
    },
    TotalSubscribers {
        channel: Option<Box<str>>,
    },
    /// One page of channels with subscribers, in name order: the names
    /// after `cursor`, at most `limit`.
    AvailableChannels {
        cursor: Option<Box<str>>,
        limit: usize,
    },
    FlushDeadClients,
    Last {
        channel: Option<Box<str>>,
    },
    History {
        channel: Box<str>,
        since: Option<Since>,
        limit: usize,
    },
    Ping,
    Info,
    /// Close every connection of a user (close code 4004).
    Disconnect {
        user: Box<str>,
    },
    /// Unsubscribe every connection of a user from a channel.
    UnsubscribeUser {
        user: Box<str>,
        channel: Box<str>,
    },
    /// Who is subscribed to a channel (`stats`: counts only).
    Presence {
        channel: Box<str>,
        stats: bool,
    },
}

/// A method set: how a method name and params become a typed method.
pub trait Methods: Sized {
    fn from_call(method: &str, params: Option<&Value<'_>>) -> Result<Self, RpcError>;
}

/// Parses requests with simd-json, reusing its buffers across calls.
pub struct RpcParser {
    buffers: simd_json::Buffers,
    input: Vec<u8>,
    /// Most calls a client's batch may hold (`limits.max_batch_length`),
    /// checked by [`RpcParser::parse_client`]; the backend port's
    /// [`RpcParser::parse`] has no such bound.
    pub max_client_batch: usize,
}

impl Default for RpcParser {
    fn default() -> Self {
        Self::new()
    }
}

impl RpcParser {
    pub fn new() -> Self {
        RpcParser {
            buffers: simd_json::Buffers::new(4096),
            input: Vec::with_capacity(4096),
            max_client_batch: usize::MAX,
        }
    }

    /// The same parser with `max_client_batch` set.
    pub fn with_client_batch(mut self, max: usize) -> Self {
        self.max_client_batch = max;
        self
    }

    /// Parses one client message: like [`RpcParser::parse`], and a batch
    /// of more than `max_client_batch` calls is an invalid request (so the
    /// reply to one message stays bounded).
    pub fn parse_client<M: Methods>(&mut self, text: &[u8]) -> Result<Incoming<M>, RpcError> {
        self.parse_bounded(text, self.max_client_batch)
    }

    /// Parses one frame/body. `Err` is a parse error or an invalid
    /// top-level value (an empty batch): answer it with id `null`.
    pub fn parse<M: Methods>(&mut self, text: &[u8]) -> Result<Incoming<M>, RpcError> {
        self.parse_bounded(text, usize::MAX)
    }

    fn parse_bounded<M: Methods>(
        &mut self,
        text: &[u8],
        max_batch: usize,
    ) -> Result<Incoming<M>, RpcError> {
        self.input.clear();
        self.input.extend_from_slice(text);
        let value = simd_json::borrowed::to_value_with_buffers(&mut self.input, &mut self.buffers)
            .map_err(|e| RpcError::new(PARSE_ERROR, format!("parse error: {e}")))?;
        match value {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(RpcError::new(
                        INVALID_REQUEST,
                        "invalid request: empty batch",
                    ));
                }
                if items.len() > max_batch {
                    return Err(RpcError::new(
                        INVALID_REQUEST,
                        format!(
                            "invalid request: batch of {} calls, at most {max_batch} allowed (limits.max_batch_length)",
                            items.len()
                        ),
                    ));
                }
                Ok(Incoming::Batch(items.iter().map(parse_call).collect()))
            }
            v => Ok(Incoming::Single(parse_call(&v))),
        }
    }
}

fn parse_call<M: Methods>(v: &Value<'_>) -> Call<M> {
    let Some(obj) = v.as_object() else {
        return Call {
            id: Some(Box::from(&b"null"[..])),
            method: Err(RpcError::new(
                INVALID_REQUEST,
                "invalid request: not an object",
            )),
        };
    };
    let id = obj.get("id").map(|id| match id {
        Value::Static(_) | Value::String(_) => id.encode().into_bytes().into_boxed_slice(),
        _ => Box::from(&b"null"[..]),
    });
    let invalid = |msg: &'static str| Call {
        id: Some(id.clone().unwrap_or_else(|| Box::from(&b"null"[..]))),
        method: Err(RpcError::new(INVALID_REQUEST, msg)),
    };
    if obj.get("jsonrpc").and_then(|v| v.as_str()) != Some("2.0") {
        return invalid("invalid request: \"jsonrpc\" must be \"2.0\"");
    }
    if let Some(idv) = obj.get("id") {
        if !(idv.is_str() || idv.is_number() || idv.is_null()) {
            return invalid("invalid request: \"id\" must be a string, number or null");
        }
    }
    let Some(method) = obj.get("method").and_then(|m| m.as_str()) else {
        return invalid("invalid request: \"method\" must be a string");
    };
    let params = obj.get("params");
    if let Some(p) = params {
        if !(p.is_object() || p.is_array() || p.is_null()) {
            return invalid("invalid request: \"params\" must be an object or array");
        }
    }
    Call {
        id,
        method: M::from_call(method, params.filter(|p| !p.is_null())),
    }
}

/// Checks a channel name: 1–255 bytes of printable ASCII, no spaces.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn param<'a, 'v>(params: Option<&'a Value<'v>>, key: &str) -> Option<&'a Value<'v>> {
    params.and_then(|p| p.as_object()).and_then(|o| o.get(key))
}

fn need_object(params: Option<&Value<'_>>) -> Result<(), RpcError> {
    match params {
        Some(p) if p.is_object() => Ok(()),
        _ => Err(RpcError::invalid_params(
            "invalid params: expected an object",
        )),
    }
}

fn channel_param(params: Option<&Value<'_>>, key: &str) -> Result<Box<str>, RpcError> {
    need_object(params)?;
    let c = param(params, key).and_then(|v| v.as_str()).ok_or_else(|| {
        RpcError::invalid_params(format!("invalid params: \"{key}\" must be a string"))
    })?;
    checked_channel(c)
}

fn checked_channel(c: &str) -> Result<Box<str>, RpcError> {
    if valid_channel(c) {
        Ok(c.into())
    } else {
        Err(RpcError::invalid_params(
            "invalid params: channel must be 1-255 printable ASCII characters without spaces",
        ))
    }
}

fn optional_channel(params: Option<&Value<'_>>) -> Result<Option<Box<str>>, RpcError> {
    match param(params, "channel") {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => match v.as_str() {
            Some(c) => checked_channel(c).map(Some),
            None => Err(RpcError::invalid_params(
                "invalid params: \"channel\" must be a string",
            )),
        },
    }
}

/// `"user"`: a non-empty string (a token's `sub`).
fn user_param(params: Option<&Value<'_>>) -> Result<Box<str>, RpcError> {
    need_object(params)?;
    match param(params, "user").and_then(|v| v.as_str()) {
        Some(u) if !u.is_empty() => Ok(u.into()),
        _ => Err(RpcError::invalid_params(
            "invalid params: \"user\" must be a non-empty string",
        )),
    }
}

/// `"token"`: a string; `required` makes its absence an error.
fn token_param(params: Option<&Value<'_>>, required: bool) -> Result<Option<Box<str>>, RpcError> {
    match param(params, "token") {
        None if !required => Ok(None),
        Some(v) if v.as_str().is_some() => Ok(v.as_str().map(Into::into)),
        _ => Err(RpcError::invalid_params(
            "invalid params: \"token\" must be a string",
        )),
    }
}

fn data_param(params: Option<&Value<'_>>) -> Result<Data, RpcError> {
    need_object(params)?;
    let v = param(params, "data")
        .ok_or_else(|| RpcError::invalid_params("invalid params: \"data\" is required"))?;
    Ok(Bytes::from(v.encode().into_bytes()))
}

fn since_param(params: Option<&Value<'_>>) -> Result<Option<Since>, RpcError> {
    let Some(s) = param(params, "since") else {
        return Ok(None);
    };
    if s.is_null() {
        return Ok(None);
    }
    let bad = || {
        RpcError::invalid_params(
            "invalid params: \"since\" must be {\"offset\": integer >= 0, \"epoch\": string}",
        )
    };
    let offset = s.get("offset").and_then(|v| v.as_u64()).ok_or_else(bad)?;
    let epoch = s.get("epoch").and_then(|v| v.as_str()).ok_or_else(bad)?;
    Ok(Some(Since {
        offset,
        epoch: epoch.to_owned(),
    }))
}

fn limit_param(params: Option<&Value<'_>>) -> Result<usize, RpcError> {
    match param(params, "limit") {
        None => Ok(usize::MAX),
        Some(v) if v.is_null() => Ok(usize::MAX),
        Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
            RpcError::invalid_params("invalid params: \"limit\" must be an integer >= 0")
        }),
    }
}

/// `available_channels` pages: `limit` when not given, and its largest value.
pub const CHANNEL_PAGE_DEFAULT: usize = 1000;
pub const CHANNEL_PAGE_MAX: usize = 10_000;

fn page_limit_param(params: Option<&Value<'_>>) -> Result<usize, RpcError> {
    match param(params, "limit") {
        None => Ok(CHANNEL_PAGE_DEFAULT),
        Some(v) if v.is_null() => Ok(CHANNEL_PAGE_DEFAULT),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=CHANNEL_PAGE_MAX as u64).contains(n))
            .map(|n| n as usize)
            .ok_or_else(|| {
                RpcError::invalid_params(
                    "invalid params: \"limit\" must be an integer from 1 to 10000",
                )
            }),
    }
}

/// `cursor`: the last channel name of the previous page (any string).
fn cursor_param(params: Option<&Value<'_>>) -> Result<Option<Box<str>>, RpcError> {
    match param(params, "cursor") {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => v
            .as_str()
            .map(|c| Some(c.into()))
            .ok_or_else(|| RpcError::invalid_params("invalid params: \"cursor\" must be a string")),
    }
}

fn method_not_found(method: &str) -> RpcError {
    let mut m = String::from("method not found: ");
    m.extend(method.chars().take(64));
    RpcError::new(METHOD_NOT_FOUND, m)
}

/// The client (WebSocket) method set parses straight into engine
/// operations: `send_data` is [`Op::Publish`].
impl Methods for Op {
    fn from_call(method: &str, params: Option<&Value<'_>>) -> Result<Self, RpcError> {
        Ok(match method {
            "subscribe" => match token_param(params, false)? {
                None => Op::Subscribe {
                    channel: channel_param(params, "channel")?,
                    since: since_param(params)?,
                },
                Some(token) => Op::SubscribeSigned {
                    channel: channel_param(params, "channel")?,
                    since: since_param(params)?,
                    token,
                },
            },
            "connect" => Op::Connect {
                token: token_param(params, true)?.unwrap_or_default(),
            },
            "refresh" => Op::Refresh {
                token: token_param(params, true)?.unwrap_or_default(),
            },
            "presence" => Op::Presence {
                channel: channel_param(params, "channel")?,
            },
            "presence_stats" => Op::PresenceStats {
                channel: channel_param(params, "channel")?,
            },
            "unsubscribe" => Op::Unsubscribe {
                channel: channel_param(params, "channel")?,
            },
            "send_data" => Op::Publish {
                channel: channel_param(params, "channel")?,
                data: data_param(params)?,
            },
            "heartbeat" => Op::Heartbeat,
            "history" => Op::History {
                channel: channel_param(params, "channel")?,
                since: since_param(params)?,
                limit: limit_param(params)?,
            },
            other => return Err(method_not_found(other)),
        })
    }
}

impl Methods for BackendMethod {
    fn from_call(method: &str, params: Option<&Value<'_>>) -> Result<Self, RpcError> {
        Ok(match method {
            "emit" => BackendMethod::Emit {
                channel: channel_param(params, "channel")?,
                data: data_param(params)?,
            },
            "publish_many" => {
                need_object(params)?;
                let list = param(params, "channels")
                    .and_then(|v| v.as_array())
                    .ok_or_else(|| {
                        RpcError::invalid_params(
                            "invalid params: \"channels\" must be an array of strings",
                        )
                    })?;
                let mut channels = Vec::with_capacity(list.len());
                for c in list {
                    let c = c.as_str().ok_or_else(|| {
                        RpcError::invalid_params(
                            "invalid params: \"channels\" must be an array of strings",
                        )
                    })?;
                    channels.push(checked_channel(c)?);
                }
                BackendMethod::PublishMany {
                    channels,
                    data: data_param(params)?,
                }
            }
            "notify_all" => BackendMethod::NotifyAll {
                data: data_param(params)?,
            },
            "total_subscribers" => BackendMethod::TotalSubscribers {
                channel: optional_channel(params)?,
            },
            "available_channels" => BackendMethod::AvailableChannels {
                cursor: cursor_param(params)?,
                limit: page_limit_param(params)?,
            },
            "flush_dead_clients" => BackendMethod::FlushDeadClients,
            "disconnect" => BackendMethod::Disconnect {
                user: user_param(params)?,
            },
            "unsubscribe" => BackendMethod::UnsubscribeUser {
                user: user_param(params)?,
                channel: channel_param(params, "channel")?,
            },
            "presence" => BackendMethod::Presence {
                channel: channel_param(params, "channel")?,
                stats: false,
            },
            "presence_stats" => BackendMethod::Presence {
                channel: channel_param(params, "channel")?,
                stats: true,
            },
            "last" => BackendMethod::Last {
                channel: optional_channel(params)?,
            },
            "history" => BackendMethod::History {
                channel: channel_param(params, "channel")?,
                since: since_param(params)?,
                limit: limit_param(params)?,
            },
            "ping" => BackendMethod::Ping,
            "info" => BackendMethod::Info,
            other => return Err(method_not_found(other)),
        })
    }
}

/// Appends `{"jsonrpc":"2.0","id":ID,"result":RESULT}`.
pub fn write_result(out: &mut Vec<u8>, id: &[u8], result: &[u8]) {
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    out.extend_from_slice(id);
    out.extend_from_slice(br#","result":"#);
    out.extend_from_slice(result);
    out.push(b'}');
}

/// Appends `{"jsonrpc":"2.0","id":ID,"error":{...}}` (`id` null when absent).
pub fn write_error(out: &mut Vec<u8>, id: Option<&[u8]>, err: &RpcError) {
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    out.extend_from_slice(id.unwrap_or(b"null"));
    out.extend_from_slice(br#","error":{"code":"#);
    out.extend_from_slice(itoa::Buffer::new().format(err.code).as_bytes());
    out.extend_from_slice(br#","message":"#);
    write_json_str(out, &err.message);
    if let Some(data) = &err.data {
        out.extend_from_slice(br#","data":"#);
        out.extend_from_slice(data.as_bytes());
    }
    out.extend_from_slice(b"}}");
}

/// Collects the replies to one frame/body: nothing for notifications, one
/// object for a single request, an array for a batch.
///
/// A protocol that is not JSON-RPC writes its own reply with
/// [`raw`](ReplyWriter::raw), and may add whole frames that follow it
/// ([`frames`](ReplyWriter::frames)): replayed publications, say, which then
/// leave ahead of anything queued for the connection after the request.
#[derive(Debug)]
pub struct ReplyWriter {
    out: Vec<u8>,
    batch: bool,
    count: usize,
    /// Complete WebSocket frames to send after the reply.
    frames: Vec<u8>,
}

impl ReplyWriter {
    pub fn new(batch: bool) -> Self {
        ReplyWriter {
            out: Vec::new(),
            batch,
            count: 0,
            frames: Vec::new(),
        }
    }

    /// A reply written by the protocol itself: `json` as it is.
    pub fn raw(&mut self, json: &[u8]) {
        self.sep();
        self.out.extend_from_slice(json);
    }

    /// Complete frames to send right after the reply, in order.
    pub fn frames(&mut self, frames: &[u8]) {
        self.frames.extend_from_slice(frames);
    }

    /// One whole text message to send after the reply, as its own frame
    /// (a protocol that answers one request with several messages).
    pub fn text_frame(&mut self, payload: &[u8]) {
        use crate::protocol::codec::{encode_header, OpCode};
        let mut header = [0u8; 10];
        let h = encode_header(true, OpCode::Text, payload.len(), &mut header);
        self.frames.extend_from_slice(&header[..h]);
        self.frames.extend_from_slice(payload);
    }

    /// The reply as one buffer of frames: the reply's text frame (if there
    /// is a reply) followed by any added frames; `None` when both are
    /// empty.
    pub fn finish_frames(mut self) -> Option<Bytes> {
        use crate::protocol::codec::{encode_header, OpCode};
        let frames = std::mem::take(&mut self.frames);
        let json = self.finish();
        if frames.is_empty() {
            return json.map(|j| crate::pubsub::publication::text_frame(&j));
        }
        let mut out = Vec::with_capacity(frames.len() + json.as_ref().map_or(0, |j| j.len() + 10));
        if let Some(json) = json {
            let mut header = [0u8; 10];
            let h = encode_header(true, OpCode::Text, json.len(), &mut header);
            out.extend_from_slice(&header[..h]);
            out.extend_from_slice(&json);
        }
        out.extend_from_slice(&frames);
        Some(Bytes::from(out))
    }

    fn sep(&mut self) {
        if self.batch {
            self.out.push(if self.count == 0 { b'[' } else { b',' });
        }
        self.count += 1;
    }

    /// Records a call's outcome; notifications (`id: None`) produce nothing.
    pub fn reply(&mut self, id: Option<&[u8]>, outcome: Result<&[u8], &RpcError>) {
        let Some(id) = id else { return };
        self.sep();
        match outcome {
            Ok(result) => write_result(&mut self.out, id, result),
            Err(e) => write_error(&mut self.out, Some(id), e),
        }
    }

    /// An error answered with id `null` (parse errors, invalid batches).
    pub fn error_null(&mut self, err: &RpcError) {
        self.sep();
        write_error(&mut self.out, None, err);
    }

    /// The reply JSON, or `None` when every call was a notification.
    pub fn finish(mut self) -> Option<Vec<u8>> {
        if self.count == 0 {
            return None;
        }
        if self.batch {
            self.out.push(b']');
        }
        Some(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Call<Op> {
        match RpcParser::new().parse::<Op>(text.as_bytes()).unwrap() {
            Incoming::Single(c) => c,
            Incoming::Batch(_) => panic!("batch"),
        }
    }

    fn err_code(text: &str) -> i32 {
        one(text).method.unwrap_err().code
    }

    #[test]
    fn subscribe_with_since() {
        let c = one(
            r#"{"jsonrpc":"2.0","id":7,"method":"subscribe","params":{"channel":"chat","since":{"offset":3,"epoch":"e"}}}"#,
        );
        assert_eq!(&*c.id.unwrap(), b"7");
        assert_eq!(
            c.method.unwrap(),
            Op::Subscribe {
                channel: "chat".into(),
                since: Some(Since {
                    offset: 3,
                    epoch: "e".into()
                })
            }
        );
    }

    fn backend(params: &str) -> Result<BackendMethod, RpcError> {
        let text = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"available_channels","params":{params}}}"#
        );
        match RpcParser::new()
            .parse::<BackendMethod>(text.as_bytes())
            .unwrap()
        {
            Incoming::Single(c) => c.method,
            Incoming::Batch(_) => panic!("batch"),
        }
    }

    #[test]
    fn available_channels_pages() {
        let page = |cursor: Option<&str>, limit| BackendMethod::AvailableChannels {
            cursor: cursor.map(Into::into),
            limit,
        };
        assert_eq!(backend("{}").unwrap(), page(None, CHANNEL_PAGE_DEFAULT));
        assert_eq!(backend("null").unwrap(), page(None, CHANNEL_PAGE_DEFAULT));
        assert_eq!(
            backend(r#"{"limit":10000,"cursor":"b c"}"#).unwrap(),
            page(Some("b c"), 10_000)
        );
        assert_eq!(
            backend(r#"{"limit":null,"cursor":null}"#).unwrap(),
            page(None, CHANNEL_PAGE_DEFAULT)
        );
        for bad in [
            r#"{"limit":0}"#,
            r#"{"limit":10001}"#,
            r#"{"limit":-1}"#,
            r#"{"limit":"5"}"#,
        ] {
            let e = backend(bad).unwrap_err();
            assert_eq!(e.code, INVALID_PARAMS, "{bad}");
            assert_eq!(
                e.message,
                "invalid params: \"limit\" must be an integer from 1 to 10000"
            );
        }
        let e = backend(r#"{"cursor":5}"#).unwrap_err();
        assert_eq!(e.message, "invalid params: \"cursor\" must be a string");
    }

    #[test]
    fn string_ids_are_kept_raw() {
        let c = one(r#"{"jsonrpc":"2.0","id":"a\"b","method":"heartbeat"}"#);
        assert_eq!(&*c.id.unwrap(), br#""a\"b""#);
    }

    #[test]
    fn notification_has_no_id() {
        let c = one(r#"{"jsonrpc":"2.0","method":"heartbeat"}"#);
        assert!(c.id.is_none());
        assert_eq!(c.method.unwrap(), Op::Heartbeat);
    }

    #[test]
    fn send_data_keeps_data_as_json() {
        let c = one(
            r#"{"jsonrpc":"2.0","id":1,"method":"send_data","params":{"channel":"c","data":{"x": [1, "two"]}}}"#,
        );
        match c.method.unwrap() {
            Op::Publish { data, .. } => assert_eq!(&data[..], br#"{"x":[1,"two"]}"#),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn every_error_code() {
        assert_eq!(
            RpcParser::new().parse::<Op>(b"{nope").unwrap_err().code,
            PARSE_ERROR
        );
        assert_eq!(
            RpcParser::new().parse::<Op>(b"[]").unwrap_err().code,
            INVALID_REQUEST
        );
        assert_eq!(
            err_code(r#"{"id":1,"method":"heartbeat"}"#),
            INVALID_REQUEST
        );
        assert_eq!(err_code(r#"{"jsonrpc":"2.0","id":1}"#), INVALID_REQUEST);
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":{},"method":"heartbeat"}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":1,"method":"heartbeat","params":5}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#),
            METHOD_NOT_FOUND
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":1,"method":"subscribe"}"#),
            INVALID_PARAMS
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"channel":"a b"}}"#),
            INVALID_PARAMS
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"channel":""}}"#),
            INVALID_PARAMS
        );
        assert_eq!(
            err_code(
                r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"channel":"a","since":{"offset":-1,"epoch":"x"}}}"#
            ),
            INVALID_PARAMS
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":1,"method":"send_data","params":{"channel":"a"}}"#),
            INVALID_PARAMS
        );
        assert_eq!(one("5").method.unwrap_err().code, INVALID_REQUEST);
    }

    #[test]
    fn client_batches_are_bounded() {
        let mut p = RpcParser::new();
        p.max_client_batch = 2;
        let two = br#"[{"jsonrpc":"2.0","id":1,"method":"heartbeat"},1]"#;
        assert!(matches!(p.parse_client::<Op>(two), Ok(Incoming::Batch(c)) if c.len() == 2));
        let e = p.parse_client::<Op>(b"[1,1,1]").unwrap_err();
        assert_eq!(e.code, INVALID_REQUEST);
        assert_eq!(
            e.message,
            "invalid request: batch of 3 calls, at most 2 allowed (limits.max_batch_length)"
        );
        // The backend port's parser takes any batch.
        assert!(matches!(p.parse::<Op>(b"[1,1,1]"), Ok(Incoming::Batch(c)) if c.len() == 3));
    }

    #[test]
    fn batches_keep_order() {
        let text = r#"[{"jsonrpc":"2.0","id":1,"method":"heartbeat"},{"jsonrpc":"2.0","method":"heartbeat"},{"jsonrpc":"2.0","id":3,"method":"x"}]"#;
        let Incoming::Batch(calls) = RpcParser::new().parse::<Op>(text.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(calls.len(), 3);
        let mut w = ReplyWriter::new(true);
        for c in &calls {
            let r = c.method.as_ref().map(|_| &br#"{"heartbeat":"ok"}"#[..]);
            w.reply(c.id.as_deref(), r);
        }
        let out = String::from_utf8(w.finish().unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[1]["error"]["code"], METHOD_NOT_FOUND);
    }

    #[test]
    fn all_notifications_means_no_reply() {
        let mut w = ReplyWriter::new(true);
        w.reply(None, Ok(b"1"));
        assert!(w.finish().is_none());
    }

    #[test]
    fn limit_error_names_the_limit() {
        let mut out = Vec::new();
        write_error(
            &mut out,
            Some(b"1"),
            &RpcError::limit("max_subscriptions_per_connection", "too many"),
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["code"], LIMIT_EXCEEDED);
        assert_eq!(
            v["error"]["data"]["limit"],
            "max_subscriptions_per_connection"
        );
    }

    #[test]
    fn backend_methods() {
        let mut p = RpcParser::new();
        let Incoming::Single(c) = p
            .parse::<BackendMethod>(br#"{"jsonrpc":"2.0","id":1,"method":"publish_many","params":{"channels":["a","b"],"data":1}}"#)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            c.method.unwrap(),
            BackendMethod::PublishMany {
                channels: vec!["a".into(), "b".into()],
                data: Bytes::from_static(b"1")
            }
        );
        let Incoming::Single(c) = p
            .parse::<BackendMethod>(br#"{"jsonrpc":"2.0","id":1,"method":"total_subscribers"}"#)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            c.method.unwrap(),
            BackendMethod::TotalSubscribers { channel: None }
        );
    }
}
