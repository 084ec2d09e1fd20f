//! The seam between wire protocols and the engine.
//!
//! A [`Protocol`] is one wire protocol ringcast speaks to clients (native
//! JSON-RPC, RocketWS, DMOJ, ...). It is sans-IO: it turns a client's
//! complete message into engine operations ([`Exchange`]), renders the
//! engine's answers in its own words, and gives the wire form in which its
//! subscribers receive a publication. The protocol itself is a shared
//! `&'static` value; what it remembers about one connection lives in that
//! connection's [`SessionState`] (nothing, and no allocation, for the
//! stateless protocols). The shard runtime moves bytes and
//! runs operations; it never looks at which protocol a connection speaks.
//!
//! Every protocol is listed once in [`PROTOCOLS`]; its index there is the
//! slot of its publication form in [`Publication`]'s cache, so each form is
//! built at most once per publication and shared by every subscriber of
//! every shard. See `docs/ADAPTERS.md` for how to add one.
#![forbid(unsafe_code)]

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::dmoj;
use super::handshake::{Refused, Upgrade};
use super::jobs;
use super::native::{self, Native};
use super::rocketws::{self, RocketWs};
use super::rpc::{Incoming, ReplyWriter, RpcError, RpcParser};
use crate::access::Claims;
use crate::ops::config::{Config, Dialect};
use crate::pubsub::ops::{Op, OpError, Outcome};
use crate::pubsub::publication::{Publication, MAX_FORMS};

/// Every protocol, by form slot. Slot 0 is the native protocol, whose form
/// the home shard builds eagerly; the others are built on first use.
pub static PROTOCOLS: [&dyn Protocol; 8] = [
    &native::Native,
    &rocketws::RocketWs,
    &dmoj::DmojReceiver,
    &dmoj::DmojSender,
    &dmoj::DmojPoll,
    &jobs::Jobs,
    &super::ws4redis::Ws4redis,
    &super::socketio::SocketIo,
];

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

/// The protocol `?dialect=NAME` may choose on the public port: only those
/// that are [`Protocol::public`].
fn public_by_name(name: &str) -> Option<ProtocolId> {
    by_name(name).filter(|&id| protocol(id).public())
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
        // A protocol configured at `/` is the parent of every path: it
        // serves whatever no longer path claims.
        let root = PROTOCOLS
            .iter()
            .position(|p| !p.path(cfg).is_empty() && p.path(cfg).trim_end_matches('/').is_empty())
            .map(|i| i as ProtocolId);
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
            default: root.or(by_name(default)).unwrap_or(0),
        }
    }

    /// The protocol that serves a plain HTTP request on the public port, if
    /// any claims it.
    pub fn route_plain_http(&self, cfg: &Config, head: &[u8]) -> Option<ProtocolId> {
        PROTOCOLS
            .iter()
            .position(|p| p.claims_plain_http(cfg, head))
            .map(|i| i as ProtocolId)
    }

    /// The protocol for an upgrade on `path` (without the query):
    /// `?dialect=NAME` when it names a public protocol, else the longest
    /// configured path that is `path` or a parent of it, else the port's
    /// default.
    pub fn route(&self, path: &str, dialect_param: Option<&str>) -> ProtocolId {
        if let Some(id) = dialect_param.and_then(public_by_name) {
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

    /// A new connection's state, kept by its session for as long as it
    /// lives and handed to [`handle_message`](Self::handle_message) and
    /// [`write_answer`](Self::write_answer). Default: none (no allocation).
    fn open(&self, _cfg: &Config) -> SessionState {
        SessionState::none()
    }

    /// An upgrade routed to this protocol, before the `101` is sent: refuse
    /// it (a bad path or query, say), or open the connection, with a first
    /// exchange to run before any client message (subscriptions its URL
    /// asks for, a greeting to send). Default: [`open`](Self::open), no
    /// first exchange.
    fn accept(&self, cfg: &Config, _req: &Upgrade, _now: Instant) -> Result<Opened, Refused> {
        Ok(Opened {
            state: self.open(cfg),
            first: None,
        })
    }

    /// [`accept`](Self::accept) for an upgrade whose connection token
    /// (`?token=`, `Authorization: Bearer`) the runtime has verified: `who`
    /// is its claims, none for a connection without a token. For a
    /// protocol whose channels depend on who the client is (ws4redis's
    /// user, group and session channels). Default:
    /// [`accept`](Self::accept), the token unseen.
    fn accept_as(
        &self,
        cfg: &Config,
        req: &Upgrade,
        _who: Option<&Claims>,
        now: Instant,
    ) -> Result<Opened, Refused> {
        self.accept(cfg, req, now)
    }

    /// The connection is registered with the shard: `waker` makes a
    /// [`SessionWake`] for it, for a protocol whose sessions other
    /// connections (on any shard) must be able to wake (a job killed from
    /// elsewhere). Called once, before the first exchange. Default:
    /// nothing (no allocation).
    fn attach(&self, _state: &mut SessionState, _waker: &dyn Fn() -> Arc<dyn SessionWake>) {}

    /// Whether `?dialect=NAME` may choose it on the public port. A protocol
    /// served only on a listener of its own (a trusted sender port, say)
    /// says false. Default true.
    fn public(&self) -> bool {
        true
    }

    /// Whether its connections are WebSocket connections (pinged, closed
    /// with a close frame). False for a protocol whose "connection" is a
    /// parked plain HTTP request (a long-poll). Default true.
    fn websocket(&self) -> bool {
        true
    }

    /// Whether this protocol serves `head`, a complete plain (non-upgrade)
    /// HTTP request head that arrived on the public port. Default false:
    /// such requests are answered as failed upgrades.
    fn claims_plain_http(&self, _cfg: &Config, _head: &[u8]) -> bool {
        false
    }

    /// Whether a connection takes one publication and is then done (its
    /// form is a complete answer, e.g. an HTTP response): the shard stops
    /// delivering to it after the first. Default false.
    fn one_shot(&self) -> bool {
        false
    }

    /// For a [`one_shot`](Self::one_shot) protocol: how long a connection
    /// may wait for its publication before the shard's timer answers it
    /// with [`expired_answer`](Self::expired_answer) (no timer of its own
    /// per connection). Default: never.
    fn expire_after(&self, _cfg: &Config) -> Option<std::time::Duration> {
        None
    }

    /// The answer to a connection that waited too long.
    fn expired_answer(&self) -> Bytes {
        Bytes::new()
    }

    /// A client's complete text or binary message, received at `now`: what
    /// to run, in order, and the reply being built.
    fn handle_message(
        &self,
        state: &mut SessionState,
        msg: &[u8],
        parser: &mut RpcParser,
        now: Instant,
    ) -> Exchange;

    /// When this connection next wants [`on_deadline`](Self::on_deadline):
    /// a timed job falling due, a heartbeat owed. Asked again after every
    /// message and every deadline; the session waits on the shard's timer
    /// wheel for the earliest one only, however many the state keeps.
    /// Default: never (no timer).
    fn next_deadline(&self, _state: &SessionState) -> Option<Instant> {
        None
    }

    /// The deadline passed, or the session was woken through its
    /// [`SessionWake`] (then `now` may be before the deadline): write what
    /// falls due into `reply` (whole messages with
    /// [`ReplyWriter::text_frame`]), and say whether to close the
    /// connection after them.
    fn on_deadline(
        &self,
        _state: &mut SessionState,
        _now: Instant,
        _reply: &mut ReplyWriter,
    ) -> Option<Close> {
        None
    }

    /// Renders one call's answer into the exchange's reply.
    fn write_answer(
        &self,
        state: &mut SessionState,
        reply: &mut ReplyWriter,
        id: Option<&[u8]>,
        answer: Answer<'_>,
    );

    /// The reply to a whole message refused before any call ran (the
    /// connection's rate limit): by default the JSON-RPC error with id
    /// `null` in place of whatever the message would have answered.
    fn reject_message(&self, reply: &mut ReplyWriter, e: &RpcError) {
        *reply = ReplyWriter::new(false);
        reply.error_null(e);
    }
}

/// Wakes one session from any thread or shard ([`Protocol::attach`]): the
/// runtime posts a message to the session's shard, which wakes the session;
/// the session then calls [`Protocol::on_deadline`] at once. A wake for a
/// session that has ended does nothing; a wake that finds nothing due does
/// nothing either.
pub trait SessionWake: Send + Sync {
    fn wake(&self);
}

/// A connection its protocol accepted ([`Protocol::accept`]).
#[derive(Debug)]
pub struct Opened {
    pub state: SessionState,
    /// Run as if the client had sent it first (boxed: most protocols have
    /// none, and an idle session task should not carry room for one).
    pub first: Option<Box<Exchange>>,
}

/// A connection the protocol closes: the WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
}

/// A protocol's state for one connection ([`Protocol::open`]). The
/// stateless protocols keep `()` here: a box of a zero-sized value does not
/// allocate, so they pay nothing for it.
pub struct SessionState(Box<dyn Any>);

impl SessionState {
    /// No state.
    pub fn none() -> Self {
        SessionState(Box::new(()))
    }

    pub fn new<T: Any>(state: T) -> Self {
        SessionState(Box::new(state))
    }

    /// The state, if it is a `T` (each protocol only ever sees its own).
    pub fn get_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.0.downcast_mut()
    }

    /// The state, if it is a `T`, read-only.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionState")
    }
}

/// What one client message asks for.
#[derive(Debug)]
pub struct Exchange {
    pub calls: Vec<Call>,
    pub reply: ReplyWriter,
}

impl Exchange {
    /// Nothing to run and nothing to say.
    pub fn none() -> Self {
        Self::reply(ReplyWriter::new(false))
    }

    /// Only a reply the protocol already wrote; nothing to run.
    pub fn reply(reply: ReplyWriter) -> Self {
        Exchange {
            calls: Vec::new(),
            reply,
        }
    }

    /// One operation whose answer needs no id (`write_answer` gets `None`).
    pub fn call(op: Op) -> Self {
        Exchange {
            calls: vec![Call {
                id: None,
                op: Ok(op),
            }],
            reply: ReplyWriter::new(false),
        }
    }
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
    fn dialect_cannot_choose_a_private_protocol() {
        let r = Router::new(&Config::default());
        assert_eq!(r.route("/", Some("dmoj-sender")), 0);
        assert_eq!(r.route("/", Some("dmoj-poll")), 0);
        assert_eq!(r.route("/", Some("dmoj")), by_name("dmoj").unwrap());
    }

    #[test]
    fn stateless_sessions_do_not_allocate() {
        // A Box of a zero-sized value is never allocated.
        for p in [&Native as &dyn Protocol, &RocketWs] {
            let mut s = p.open(&Config::default());
            assert_eq!(std::mem::size_of_val(&*s.0), 0);
            assert!(s.get_mut::<()>().is_some());
        }
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
    fn jobs_at_its_path_or_at_the_root() {
        let jobs = by_name("jobs").unwrap();
        let mut cfg = Config::default();
        let r = Router::new(&cfg);
        assert_eq!(r.route("/jobs", None), jobs);
        assert_eq!(r.route("/", None), 0);
        cfg.protocols.jobs.path = "/".into();
        cfg.protocols.rocketws.path = "/rocketws".into();
        let r = Router::new(&cfg);
        assert_eq!(r.route("/", None), jobs);
        assert_eq!(r.route("/any/page", None), jobs);
        assert_eq!(r.route("/rocketws", None), by_name("rocketws").unwrap());
        assert_eq!(r.route("/", Some("native")), 0);
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
