//! The seam between wire protocols and the engine.
//!
//! A [`Protocol`] is one wire protocol ringcast speaks to clients (native
//! JSON-RPC, RocketWS, ...). It is sans-IO and stateless: it turns a
//! client's complete message into engine operations ([`Exchange`]), renders
//! the engine's answers in its own words, and gives the wire form in which
//! its subscribers receive a publication. The shard runtime moves bytes and
//! runs operations; it never looks at which protocol a connection speaks.
//!
//! Every protocol is listed once in [`PROTOCOLS`]; its index there is the
//! slot of its publication form in [`Publication`]'s cache, so each form is
//! built at most once per publication and shared by every subscriber of
//! every shard. See `docs/ADAPTERS.md` for how to add one.
#![forbid(unsafe_code)]

use bytes::Bytes;

use super::rpc::{Incoming, ReplyWriter, RpcError, RpcParser};
use super::{native, rocketws};
use crate::ops::config::Dialect;
use crate::pubsub::ops::{Op, OpError, Outcome};
use crate::pubsub::publication::{Publication, MAX_FORMS};

/// Every protocol, by form slot. Slot 0 is the native protocol, whose form
/// the home shard builds eagerly; the others are built on first use.
pub static PROTOCOLS: [&dyn Protocol; 2] = [&native::Native, &rocketws::RocketWs];

const _: () = assert!(PROTOCOLS.len() <= MAX_FORMS);

/// A protocol's index in [`PROTOCOLS`] (and its publication form slot).
pub type ProtocolId = u8;

/// The protocol named `name` (as in `?dialect=` and the config).
pub fn by_name(name: &str) -> Option<ProtocolId> {
    PROTOCOLS
        .iter()
        .position(|p| p.name() == name)
        .map(|i| i as ProtocolId)
}

/// The protocol an upgrade asks for: `?dialect=NAME` when it names one,
/// else the port's configured dialect.
pub fn route_upgrade(dialect_param: Option<&str>, port_default: Dialect) -> ProtocolId {
    if let Some(id) = dialect_param.and_then(by_name) {
        return id;
    }
    let name = match port_default {
        Dialect::Native => "native",
        Dialect::Rocketws => "rocketws",
    };
    by_name(name).unwrap_or(0)
}

/// The protocol at `id`.
pub fn protocol(id: ProtocolId) -> &'static dyn Protocol {
    PROTOCOLS[usize::from(id)]
}

/// One wire protocol.
pub trait Protocol: Sync {
    /// Its name in configuration, `?dialect=` and logs.
    fn name(&self) -> &'static str;

    /// The complete server-to-client WebSocket frame that carries `p` to a
    /// subscriber of this protocol. Called at most once per publication.
    fn encode_publication(&self, p: &Publication) -> Bytes;

    /// A client's complete text or binary message: what to run, in order,
    /// and the reply being built.
    fn handle_message(&self, msg: &[u8], parser: &mut RpcParser) -> Exchange;

    /// Renders one call's answer into the exchange's reply.
    fn write_answer(&self, reply: &mut ReplyWriter, id: Option<&[u8]>, answer: Answer<'_>);
}

/// What one client message asks for.
#[derive(Debug)]
pub struct Exchange {
    pub calls: Vec<Call>,
    pub reply: ReplyWriter,
}

/// One call of an [`Exchange`]: an operation to run, or a rejection the
/// protocol already decided (malformed params, unknown method). `id`
/// correlates the answer (JSON-RPC's raw `id`; `None`: no answer wanted).
#[derive(Debug)]
pub struct Call {
    pub id: Option<Box<[u8]>>,
    pub op: Result<Op, RpcError>,
}

/// The answer to one call.
pub enum Answer<'a> {
    /// The engine ran `op`.
    Done {
        op: &'a Op,
        result: Result<Outcome, OpError>,
        /// The client's address, for protocols that name it in errors.
        peer: &'a dyn Fn() -> String,
    },
    /// The protocol rejected the call before it reached the engine.
    Rejected(&'a RpcError),
}

/// The JSON-RPC framing both JSON-RPC dialects share: a request or batch
/// becomes calls (`map` may reject an operation), a parse error becomes a
/// `null`-id error reply.
pub fn json_rpc_exchange(
    msg: &[u8],
    parser: &mut RpcParser,
    map: impl Fn(Op) -> Result<Op, RpcError>,
) -> Exchange {
    let call = |c: super::rpc::Call<Op>| Call {
        id: c.id,
        op: c.method.and_then(&map),
    };
    match parser.parse::<Op>(msg) {
        Err(e) => {
            let mut reply = ReplyWriter::new(false);
            reply.error_null(&e);
            Exchange {
                calls: Vec::new(),
                reply,
            }
        }
        Ok(Incoming::Single(c)) => Exchange {
            calls: vec![call(c)],
            reply: ReplyWriter::new(false),
        },
        Ok(Incoming::Batch(cs)) => Exchange {
            calls: cs.into_iter().map(call).collect(),
            reply: ReplyWriter::new(true),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_found() {
        for (i, p) in PROTOCOLS.iter().enumerate() {
            assert_eq!(by_name(p.name()), Some(i as ProtocolId));
        }
        assert_eq!(by_name("native"), Some(0));
        assert_eq!(by_name("nope"), None);
    }

    #[test]
    fn upgrade_routing() {
        let rocket = by_name("rocketws").unwrap();
        assert_eq!(route_upgrade(None, Dialect::Native), 0);
        assert_eq!(route_upgrade(Some("rocketws"), Dialect::Native), rocket);
        assert_eq!(route_upgrade(Some("native"), Dialect::Rocketws), 0);
        assert_eq!(route_upgrade(Some("bogus"), Dialect::Rocketws), rocket);
        assert_eq!(route_upgrade(None, Dialect::Rocketws), rocket);
    }

    #[test]
    fn parse_error_is_answered_without_calls() {
        let ex = json_rpc_exchange(b"{", &mut RpcParser::new(), Ok);
        assert!(ex.calls.is_empty());
        let reply = String::from_utf8(ex.reply.finish().unwrap()).unwrap();
        assert!(reply.starts_with(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700"#));
    }

    #[test]
    fn batch_keeps_order_and_rejections() {
        let msg = br#"[{"jsonrpc":"2.0","id":1,"method":"heartbeat"},{"jsonrpc":"2.0","id":2,"method":"nope"}]"#;
        let ex = json_rpc_exchange(msg, &mut RpcParser::new(), Ok);
        assert_eq!(ex.calls.len(), 2);
        assert_eq!(ex.calls[0].op, Ok(Op::Heartbeat));
        assert_eq!(ex.calls[1].op.as_ref().unwrap_err().code, -32601);
        assert_eq!(ex.calls[1].id.as_deref(), Some(&b"2"[..]));
    }
}
