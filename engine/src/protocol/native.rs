//! ringcast's own protocol: JSON-RPC 2.0 over WebSocket (SPEC section 3).
//! Publications arrive as `{"jsonrpc":"2.0","method":"message","params":
//! {"channel","offset","id","data"}}`, built by the home shard once.
#![forbid(unsafe_code)]

use std::time::Instant;

use bytes::Bytes;

use crate::ops::config::Config;

use super::adapter::{json_rpc_exchange, Answer, Exchange, Protocol, SessionState};
use super::rpc::{self, ReplyWriter, RpcError, RpcParser};
use crate::pubsub::home_shard::HistoryOutcome;
use crate::pubsub::ops::{Op, OpError, Outcome, PublishResult, SubscribeInfo};
use crate::pubsub::publication::{write_json_str, Publication};

/// The native protocol.
pub struct Native;

impl Protocol for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn path<'c>(&self, cfg: &'c Config) -> &'c str {
        &cfg.protocols.native.path
    }

    fn encode_publication(&self, p: &Publication) -> Bytes {
        p.native.clone()
    }

    fn handle_message(
        &self,
        _: &mut SessionState,
        msg: &[u8],
        parser: &mut RpcParser,
        _: Instant,
    ) -> Exchange {
        json_rpc_exchange(msg, parser, Ok)
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
            Answer::Done { op, result, .. } => result_json(op, result),
        };
        reply.reply(id, result.as_deref());
    }
}

/// The native result of a completed operation.
pub fn result_json(op: &Op, result: Result<Outcome, OpError>) -> Result<Vec<u8>, RpcError> {
    let channel = match op {
        Op::Subscribe { channel, .. }
        | Op::SubscribeSigned { channel, .. }
        | Op::Unsubscribe { channel } => channel,
        _ => "",
    };
    match result.map_err(|e| rpc_error(&e))? {
        Outcome::Heartbeat => Ok(br#"{"heartbeat":"ok"}"#.to_vec()),
        Outcome::Subscribed(info) => Ok(subscribe_result(channel, &info)),
        Outcome::Unsubscribed(true) => Ok(channel_result(channel)),
        Outcome::Unsubscribed(false) => Err(rpc_error(&OpError::NotSubscribed(channel.into()))),
        Outcome::Published(r) => Ok(send_result(&r)),
        Outcome::History(h) => Ok(history_result(&h)),
        Outcome::LastId(id) => Ok(format!(r#"{{"id":{id}}}"#).into_bytes()),
        Outcome::Followed { replay } => {
            Ok(format!(r#"{{"replayed":{}}}"#, replay.len()).into_bytes())
        }
        Outcome::Connected { user, exp } => {
            let mut out = br#"{"user":"#.to_vec();
            write_json_str(&mut out, &user);
            match exp {
                Some(exp) => out.extend_from_slice(format!(r#","exp":{exp}}}"#).as_bytes()),
                None => out.push(b'}'),
            }
            Ok(out)
        }
        Outcome::Presence(json) => Ok(json),
    }
}

/// An engine error as a JSON-RPC error (SPEC's error codes).
pub fn rpc_error(e: &OpError) -> RpcError {
    let code = match e {
        OpError::NotSubscribed(_) => rpc::NOT_SUBSCRIBED,
        OpError::PublishDenied | OpError::Denied(_) => rpc::PERMISSION_DENIED,
        OpError::Unauthorized(_) => rpc::UNAUTHORIZED,
        OpError::RateLimited => rpc::RATE_LIMITED,
        OpError::Overloaded | OpError::BusUnavailable => rpc::OVERLOADED,
        OpError::TooManySubscriptions(_) => {
            return RpcError::limit("max_subscriptions_per_connection", e.to_string())
        }
        OpError::Internal(_) => rpc::INTERNAL_ERROR,
    };
    RpcError::new(code, e.to_string())
}

/// `{"channel":C}`
pub fn channel_result(channel: &str) -> Vec<u8> {
    let mut out = br#"{"channel":"#.to_vec();
    write_json_str(&mut out, channel);
    out.push(b'}');
    out
}

/// `{"offset":N,"subscribers":n}`: a client's `send_data`.
fn send_result(r: &PublishResult) -> Vec<u8> {
    format!(
        r#"{{"offset":{},"subscribers":{}}}"#,
        r.offset, r.subscribers
    )
    .into_bytes()
}

/// `{"channel":C,"offset":N,"epoch":E,"recovered"?:b,"missed"?:{...}}`
pub fn subscribe_result(channel: &str, info: &SubscribeInfo) -> Vec<u8> {
    let mut out = br#"{"channel":"#.to_vec();
    write_json_str(&mut out, channel);
    out.extend_from_slice(format!(r#","offset":{},"epoch":"#, info.offset).as_bytes());
    write_json_str(&mut out, &info.epoch);
    if let Some(r) = info.recovered {
        out.extend_from_slice(format!(r#","recovered":{r}"#).as_bytes());
    }
    if let Some((from, to)) = info.missed {
        out.extend_from_slice(format!(r#","missed":{{"from":{from},"to":{to}}}"#).as_bytes());
    }
    out.push(b'}');
    out
}

/// `{"publications":[...],"offset":N,"epoch":E}`: `history` on both ports.
pub fn history_result(h: &HistoryOutcome) -> Vec<u8> {
    let mut out = br#"{"publications":["#.to_vec();
    for (i, p) in h.publications.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        p.write_history_entry(&mut out);
    }
    out.extend_from_slice(format!(r#"],"offset":{},"epoch":"#, h.offset).as_bytes());
    write_json_str(&mut out, &h.epoch);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn answer(op: Op, result: Result<Outcome, OpError>) -> String {
        let mut w = ReplyWriter::new(false);
        let peer = || "127.0.0.1:1".to_string();
        Native.write_answer(
            &mut SessionState::none(),
            &mut w,
            Some(b"7"),
            Answer::Done {
                op: &op,
                result,
                peer: &peer,
            },
        );
        String::from_utf8(w.finish().unwrap()).unwrap()
    }

    fn sub(ch: &str) -> Op {
        Op::Subscribe {
            channel: ch.into(),
            since: None,
        }
    }

    #[test]
    fn subscribe_and_unsubscribe_results() {
        let info = SubscribeInfo {
            offset: 3,
            epoch: Arc::from("e"),
            recovered: Some(true),
            missed: None,
            kept: None,
        };
        assert_eq!(
            answer(sub("a"), Ok(Outcome::Subscribed(info))),
            r#"{"jsonrpc":"2.0","id":7,"result":{"channel":"a","offset":3,"epoch":"e","recovered":true}}"#
        );
        let un = Op::Unsubscribe {
            channel: "a".into(),
        };
        assert_eq!(
            answer(un.clone(), Ok(Outcome::Unsubscribed(true))),
            r#"{"jsonrpc":"2.0","id":7,"result":{"channel":"a"}}"#
        );
        assert_eq!(
            answer(un, Ok(Outcome::Unsubscribed(false))),
            r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32001,"message":"not subscribed: a"}}"#
        );
    }

    #[test]
    fn every_engine_error_has_its_code() {
        let cases = [
            (OpError::NotSubscribed("c".into()), -32001),
            (OpError::TooManySubscriptions(2), -32002),
            (OpError::RateLimited, -32003),
            (OpError::PublishDenied, -32004),
            (OpError::Overloaded, -32005),
            (OpError::Internal("shard is shutting down"), -32603),
        ];
        for (e, code) in cases {
            let r = rpc_error(&e);
            assert_eq!(r.code, code, "{e}");
            assert_eq!(r.message, e.to_string());
        }
        assert_eq!(
            rpc_error(&OpError::TooManySubscriptions(2)).data.as_deref(),
            Some(r#"{"limit":"max_subscriptions_per_connection"}"#)
        );
    }

    #[test]
    fn publish_and_heartbeat_results() {
        let op = Op::Publish {
            channel: "c".into(),
            data: Bytes::from_static(b"1"),
        };
        let r = PublishResult {
            offset: 4,
            id: 9,
            subscribers: 2,
        };
        assert_eq!(
            answer(op, Ok(Outcome::Published(r))),
            r#"{"jsonrpc":"2.0","id":7,"result":{"offset":4,"subscribers":2}}"#
        );
        assert_eq!(
            answer(Op::Heartbeat, Ok(Outcome::Heartbeat)),
            r#"{"jsonrpc":"2.0","id":7,"result":{"heartbeat":"ok"}}"#
        );
    }
}
