//! RocketWS's dialect (SPEC "Coming from RocketWS"): the same JSON-RPC
//! methods as the native protocol with RocketWS's results (`"subscribed"`,
//! `"emitted: N"`, ...), `data` that must be a JSON object, and
//! publications delivered as the bare `data` object with `__type` and
//! `__ts` added. Selected per connection with `?dialect=rocketws`, or for a
//! whole port with `[ws] dialect = "rocketws"` (which also gives the
//! backend port RocketWS's results, see [`backend_result`]).
#![forbid(unsafe_code)]

use std::time::Instant;

use bytes::Bytes;

use crate::ops::config::Config;

use super::adapter::{json_rpc_exchange, Answer, Exchange, Protocol, SessionState};
use super::native::{history_result, result_json, rpc_error};
use super::rpc::{self, ReplyWriter, RpcError, RpcParser};
use crate::pubsub::ops::{Op, OpError, Outcome};
use crate::pubsub::publication::{text_frame, PubKind, Publication};

/// The RocketWS protocol.
pub struct RocketWs;

impl Protocol for RocketWs {
    fn name(&self) -> &'static str {
        "rocketws"
    }

    fn path<'c>(&self, cfg: &'c Config) -> &'c str {
        &cfg.protocols.rocketws.path
    }

    fn encode_publication(&self, p: &Publication) -> Bytes {
        let kind = match p.kind {
            PubKind::Message => "message",
            PubKind::Broadcast => "broadcast",
        };
        text_frame(&rocketws_json(&p.data, kind, p.ts_secs))
    }

    fn handle_message(
        &self,
        _: &mut SessionState,
        msg: &[u8],
        parser: &mut RpcParser,
        _: Instant,
    ) -> Exchange {
        json_rpc_exchange(msg, parser, |op| match op {
            Op::Publish { ref data, .. } if !is_object(data) => Err(RpcError::invalid_params(
                "invalid params: \"data\" must be a JSON object",
            )),
            op => Ok(op),
        })
    }

    fn write_answer(
        &self,
        _: &mut SessionState,
        reply: &mut ReplyWriter,
        id: Option<&[u8]>,
        answer: Answer<'_>,
    ) {
        let result = match answer {
            Answer::Rejected(e) => Err(e.clone()),
            Answer::Done { op, result, peer } => match result {
                Ok(Outcome::Heartbeat) => Ok(br#"{"heartbeat":"ok"}"#.to_vec()),
                Ok(Outcome::Subscribed(_)) => Ok(br#""subscribed""#.to_vec()),
                Ok(Outcome::Unsubscribed(_)) => Ok(br#""unsubscribed""#.to_vec()),
                Ok(Outcome::Published(r)) => Ok(emitted(r.subscribers)),
                Ok(Outcome::History(h)) => Ok(history_result(&h)),
                Ok(
                    o @ (Outcome::LastId(_)
                    | Outcome::Followed { .. }
                    | Outcome::Connected { .. }
                    | Outcome::Presence(_)),
                ) => result_json(op, Ok(o)),
                Err(OpError::NotSubscribed(channel)) if matches!(op, Op::Publish { .. }) => {
                    Err(RpcError::new(
                        rpc::SERVER_ERROR,
                        format!("client {} is not subscribed to channel {channel}", peer()),
                    ))
                }
                Err(e) => Err(rpc_error(&e)),
            },
        };
        reply.reply(id, result.as_deref());
    }
}

fn is_object(data: &[u8]) -> bool {
    data.first() == Some(&b'{')
}

/// `"emitted: N"`
fn emitted(subscribers: usize) -> Vec<u8> {
    format!("\"emitted: {subscribers}\"").into_bytes()
}

/// The backend port's results in RocketWS's words, where RocketWS had a
/// JSON-representable one; `None`: the method answers natively.
///
/// | method | result |
/// |---|---|
/// | `emit` | `"emitted: N"` (N subscribers reached) |
/// | `notify_all` | `"notified: N"` (N connections, each once) |
/// | `available_channels` | `["chat", ...]` (names, sorted) |
/// | others | native (`ping`, `flush_dead_clients` are RocketWS's already) |
pub enum BackendResult<'a> {
    Emitted(usize),
    Notified(usize),
    ChannelNames(&'a [(String, usize)]),
}

/// Renders a [`BackendResult`].
pub fn backend_result(r: BackendResult<'_>) -> Vec<u8> {
    match r {
        BackendResult::Emitted(n) => emitted(n),
        BackendResult::Notified(n) => format!("\"notified: {n}\"").into_bytes(),
        BackendResult::ChannelNames(channels) => {
            let names: Vec<&str> = channels.iter().map(|(c, _)| c.as_str()).collect();
            serde_json::to_vec(&names).unwrap_or_default()
        }
    }
}

/// RocketWS's `data` rule on the backend port: a JSON object.
pub fn backend_object(data: &[u8]) -> Result<(), RpcError> {
    if is_object(data) {
        Ok(())
    } else {
        Err(RpcError::invalid_params(
            "invalid params: \"data\" must be a JSON object (RocketWS dialect)",
        ))
    }
}

/// RocketWS's envelope of `data` (compact JSON). Like RocketWS's
/// `data.update(__type=..., __ts=...)`, the added keys replace any `__type`
/// or `__ts` the publisher put in `data`, so the frame never carries a
/// duplicate key.
fn rocketws_json(data: &[u8], kind: &str, ts_secs: u64) -> Vec<u8> {
    let is_object = data.first() == Some(&b'{') && data.last() == Some(&b'}');
    if is_object && has_reserved_key(data) {
        if let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice(data) {
            map.insert("__type".into(), kind.into());
            map.insert("__ts".into(), ts_secs.into());
            return serde_json::Value::Object(map).to_string().into_bytes();
        }
    }
    let mut out = Vec::with_capacity(data.len() + 40);
    if is_object {
        let inner = &data[1..data.len() - 1];
        out.push(b'{');
        if !inner.iter().all(u8::is_ascii_whitespace) {
            out.extend_from_slice(inner);
            out.push(b',');
        }
    } else {
        out.extend_from_slice(br#"{"data":"#);
        out.extend_from_slice(data);
        out.push(b',');
    }
    out.extend_from_slice(br#""__type":""#);
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(br#"","__ts":"#);
    out.extend_from_slice(itoa::Buffer::new().format(ts_secs).as_bytes());
    out.push(b'}');
    out
}

/// Whether compact JSON `data` may hold a `__type` or `__ts` key (a cheap
/// byte scan; a hit inside a string value only costs a re-encode).
fn has_reserved_key(data: &[u8]) -> bool {
    data.windows(6).any(|w| w == b"\"__ts\"") || data.windows(8).any(|w| w == b"\"__type\"")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn payload(frame: &[u8]) -> &str {
        let start = if frame[1] & 0x7f == 126 { 4 } else { 2 };
        std::str::from_utf8(&frame[start..]).unwrap()
    }

    fn message(ts: u64, data: &'static [u8]) -> Publication {
        Publication::message(Arc::from("c"), 1, 1, ts, Bytes::from_static(data))
    }

    #[test]
    fn envelope() {
        let p = message(1700000000, b"{\"message\":\"hola!\"}");
        assert_eq!(
            payload(&RocketWs.encode_publication(&p)),
            r#"{"message":"hola!","__type":"message","__ts":1700000000}"#
        );
        let b = Publication::broadcast(1, 5, Bytes::from_static(b"{}"));
        assert_eq!(
            payload(&RocketWs.encode_publication(&b)),
            r#"{"__type":"broadcast","__ts":5}"#
        );
    }

    #[test]
    fn envelope_is_built_once_per_publication() {
        let p = message(1, b"{}");
        let slot = usize::from(super::super::adapter::by_name("rocketws").unwrap());
        let a = p.form(slot, |p| RocketWs.encode_publication(p)).as_ptr();
        let b = p.form(slot, |_| unreachable!("built twice")).as_ptr();
        assert_eq!(a, b);
    }

    #[test]
    fn added_keys_replace_the_publishers() {
        let p = message(7, br#"{"__type":"x","a":1,"__ts":0}"#);
        let frame = RocketWs.encode_publication(&p);
        let v: serde_json::Value = serde_json::from_str(payload(&frame)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": 1, "__type": "message", "__ts": 7})
        );
        assert_eq!(payload(&frame).matches("__type").count(), 1);
        assert_eq!(payload(&frame).matches("__ts").count(), 1);
        // Non-object data is wrapped.
        let b = Publication::broadcast(1, 5, Bytes::from_static(b"3"));
        assert_eq!(
            payload(&RocketWs.encode_publication(&b)),
            r#"{"data":3,"__type":"broadcast","__ts":5}"#
        );
    }

    #[test]
    fn send_data_needs_an_object() {
        let msg =
            br#"{"jsonrpc":"2.0","id":1,"method":"send_data","params":{"channel":"c","data":[1]}}"#;
        let ex = RocketWs.handle_message(
            &mut SessionState::none(),
            msg,
            &mut RpcParser::new(),
            Instant::now(),
        );
        assert_eq!(
            ex.calls[0].op.as_ref().unwrap_err().code,
            rpc::INVALID_PARAMS
        );
    }

    #[test]
    fn not_subscribed_names_the_peer() {
        let op = Op::Publish {
            channel: "c".into(),
            data: Bytes::from_static(b"{}"),
        };
        let mut w = ReplyWriter::new(false);
        let peer = || "10.0.0.1:5".to_string();
        RocketWs.write_answer(
            &mut SessionState::none(),
            &mut w,
            Some(b"1"),
            Answer::Done {
                op: &op,
                result: Err(OpError::NotSubscribed("c".into())),
                peer: &peer,
            },
        );
        assert_eq!(
            String::from_utf8(w.finish().unwrap()).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"client 10.0.0.1:5 is not subscribed to channel c"}}"#
        );
    }
}
