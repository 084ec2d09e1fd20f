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

use super::native::{self, Native};
use super::rocketws::{self, RocketWs};
use super::rpc::{Incoming, ReplyWriter, RpcError, RpcParser};
use crate::ops::config::{Config, Dialect};
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

/// Which protocol serves a WebSocket upgrade, by URL path: built once from
/// the configuration (`[protocols.*] path`, `ws.dialect`).
#[derive(Debug, Clone)]
pub struct Router {
    /// Configured paths (without a trailing `/`), longest first.
    routes: Vec<(Box<str>, ProtocolId)>,
    /// For requests on no configured path.
    default: ProtocolId,
}

impl Router {
    pub fn new(cfg: &Config) -> Router {
        let mut routes: Vec<(Box<str>, ProtocolId)> = PROTOCOLS
            .iter()
            .enumerate()
            .map(|(i, p)| (p.path(cfg).trim_end_matches('/'), i as ProtocolId))
            .filter(|(path, _)| !path.is_empty())
            .map(|(path, id)| (path.into(), id))
            .collect();
        routes.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let default = match cfg.ws.dialect {
            Dialect::Native => Native.name(),
            Dialect::Rocketws => RocketWs.name(),
        };
        Router {
            routes,
            default: by_name(default).unwrap_or(0),
        }
    }

    /// The protocol for an upgrade on `path` (without the query):
    /// `?dialect=NAME` when it names a protocol, else the longest configured
    /// path that is `path` or a parent of it, else the port's default.
    pub fn route(&self, path: &str, dialect_param: Option<&str>) -> ProtocolId {
        if let Some(id) = dialect_param.and_then(by_name) {
            return id;
        }
        for (prefix, id) in &self.routes {
            if let Some(rest) = path.strip_prefix(&**prefix) {
                if rest.is_empty() || rest.starts_with('/') {
                    return *id;
                }
            }
        }
        self.default
    }
}

/// The protocol at `id`.
pub fn protocol(id: ProtocolId) -> &'static dyn Protocol {
    PROTOCOLS[usize::from(id)]
}

/// One wire protocol.
pub trait Protocol: Sync {
    /// Its name in configuration, `?dialect=` and logs.
    fn name(&self) -> &'static str;

    /// The URL path it is configured to serve (`[protocols.NAME] path`);
    /// empty: none.
    fn path<'c>(&self, cfg: &'c Config) -> &'c str;

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
    match parser.parse_client::<Op>(msg) {
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
        let mut cfg = Config::default();
        let r = Router::new(&cfg);
        assert_eq!(r.route("/", None), 0);
        assert_eq!(r.route("/any/path", Some("rocketws")), rocket);
        assert_eq!(r.route("/", Some("bogus")), 0);
        cfg.ws.dialect = Dialect::Rocketws;
        let r = Router::new(&cfg);
        assert_eq!(r.route("/", None), rocket);
        assert_eq!(r.route("/", Some("native")), 0);
        assert_eq!(r.route("/", Some("bogus")), rocket);
    }

    #[test]
    fn paths_route_with_their_subtrees_longest_first() {
        let rocket = by_name("rocketws").unwrap();
        let mut cfg = Config::default();
        cfg.protocols.rocketws.path = "/ws/".into();
        cfg.protocols.native.path = "/ws/native".into();
        let r = Router::new(&cfg);
        assert_eq!(r.route("/ws", None), rocket);
        assert_eq!(r.route("/ws/", None), rocket);
        assert_eq!(r.route("/ws/room/1", None), rocket);
        assert_eq!(
            r.route("/wsx", None),
            0,
            "a prefix of a name is not a parent"
        );
        assert_eq!(r.route("/ws/native/x", None), 0);
        assert_eq!(r.route("/ws/room", Some("native")), 0);
        assert_eq!(r.route("/elsewhere", None), 0);
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
