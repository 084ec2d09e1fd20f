//! The shard runtime: one pinned thread per core, each running its own
//! monoio runtime (io_uring, or epoll as a fallback), its own listeners on
//! the shared ports (SO_REUSEPORT), its own connections, channel table and
//! home-channel state.
//!
//! Shards talk only through [`mailbox::Mailbox`]es carrying [`ShardMsg`]s.
//! A publication is built once by its channel's home shard and handed by
//! reference to every other shard with subscribers; each writes the same
//! bytes to its local subscribers, and a flusher task puts each
//! connection's queued frames into one `send` per loop turn.

mod channels;
mod client_ops;
mod cluster;
pub mod conn;
mod delivery;
pub mod identity;
mod idle_readers;
mod loops;
pub mod mailbox;
mod messages;
mod node;
mod registry;
pub mod signal;
pub(crate) mod tick;
pub(crate) mod ws_session;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use crate::ops::config::Config;
use crate::ops::metrics::ShardMetrics;
use crate::protocol::deflate::{Deflater, Inflater};
use crate::protocol::rpc::RpcParser;
use crate::protocol::websocket::ping_frame;
use crate::pubsub::channel_table::{ChannelTable, ConnKey};
use crate::pubsub::home_shard::HomeShard;

pub use conn::{Conn, Enqueued};
pub(crate) use idle_readers::run as run_idle_readers;
use mailbox::Mailbox;
use signal::{Latch, LocalSignal};

pub use messages::{
    ConnRef, Gather, HomeAnswer, HomeQuery, Internals, PublishError, ShardGone, ShardMsg,
    ShardReport,
};
pub use node::{unix_ms, ws_capacity, Node, WsSocket, RESERVED_FDS};

/// One shard's state. Lives on its thread behind an `Rc`.
pub struct Shard {
    pub id: usize,
    pub node: Arc<Node>,
    pub driver: &'static str,
    pub(super) conns: RefCell<registry::ConnRegistry<Rc<Conn>>>,
    pub(super) table: RefCell<ChannelTable>,
    pub(super) home: RefCell<HomeShard>,
    pub(super) dirty: RefCell<Vec<ConnKey>>,
    pub(super) spare_dirty: RefCell<Vec<ConnKey>>,
    pub(super) flush_signal: LocalSignal,
    pub(crate) shutdown: Latch,
    /// Every session ended (and flushed) during shutdown.
    pub(crate) drained: LocalSignal,
    /// Sessions still running, draining ones included.
    pub(super) sessions: Cell<usize>,
    /// Backend connections being served; on shutdown they answer every
    /// request already received before the shard says it is quiet.
    pub(crate) backend_conns: Cell<usize>,
    /// The last backend connection ended during shutdown.
    pub(crate) backend_idle: LocalSignal,
    /// Shards whose `PublishersDone` this shard has handled.
    pub(super) quiet_shards: Cell<usize>,
    /// Raised once every client was sent its close 1001.
    pub(crate) clients_closed: Latch,
    /// The connections closed with 1001, to count what they never sent.
    pub(super) closed_at_shutdown: RefCell<Vec<Rc<Conn>>>,
    pub parser: RefCell<RpcParser>,
    /// Receive buffer shared by all connections of the shard.
    pub scratch: RefCell<Vec<u8>>,
    /// Send buffer that joins a connection's queued frames into one write.
    pub(super) gather: RefCell<Vec<u8>>,
    /// Compresses publications' shared permessage-deflate twins.
    pub(super) deflater: RefCell<Deflater>,
    /// Inflates clients' compressed messages, reset per message.
    pub(super) inflater: RefCell<Inflater>,
    pub metrics: ShardMetrics,
    pub(super) ping: Bytes,
    /// Users with connections here (ids interned once per shard).
    pub(super) users: RefCell<identity::UserIndex>,
    /// Connections that must `connect` by the deadline (`auth.required`).
    pub(super) pending_auth: RefCell<Vec<(Rc<Conn>, std::time::Instant)>>,
    /// Cluster mode: subscribers of home channels waiting for the bus.
    pub(super) parked: RefCell<cluster::Parked>,
    /// The io_uring driver's flusher: a loop turn's sends in one kernel
    /// entry (`None` on epoll, or if the kernel refused the ring).
    pub(super) send_batch: Option<RefCell<delivery::SendBatch>>,
    /// The io_uring driver's idle connections' read sides, waiting in a
    /// poll ring without a task each (`None` on epoll, or if the kernel
    /// refused the ring).
    pub(crate) idle_readers: Option<idle_readers::IdleReaders>,
}

impl Shard {
    pub fn new(id: usize, node: Arc<Node>, driver: &'static str) -> Rc<Shard> {
        let cfg = &node.config;
        let home = HomeShard::new(
            id,
            node.shards,
            cfg.history_size(),
            std::time::Duration::from_secs(cfg.history.ttl),
            node.start_ms,
        );
        Rc::new(Shard {
            id,
            driver,
            conns: RefCell::default(),
            table: RefCell::new(ChannelTable::new()),
            home: RefCell::new(home),
            dirty: RefCell::new(Vec::new()),
            spare_dirty: RefCell::new(Vec::new()),
            flush_signal: LocalSignal::default(),
            shutdown: Latch::default(),
            drained: LocalSignal::default(),
            sessions: Cell::new(0),
            backend_conns: Cell::new(0),
            backend_idle: LocalSignal::default(),
            quiet_shards: Cell::new(0),
            clients_closed: Latch::default(),
            closed_at_shutdown: RefCell::new(Vec::new()),
            parser: RefCell::new(RpcParser::new().with_client_batch(cfg.limits.max_batch_length)),
            scratch: RefCell::new(vec![0; 64 * 1024]),
            gather: RefCell::new(Vec::with_capacity(conn::GATHER_MAX)),
            deflater: RefCell::default(),
            inflater: RefCell::default(),
            metrics: ShardMetrics::default(),
            ping: Bytes::from(ping_frame(b"")),
            users: RefCell::default(),
            pending_auth: RefCell::default(),
            parked: RefCell::default(),
            send_batch: (driver == "io_uring")
                .then(delivery::SendBatch::new)
                .flatten()
                .map(RefCell::new),
            idle_readers: (driver == "io_uring")
                .then(idle_readers::IdleReaders::new)
                .flatten(),
            node,
        })
    }

    pub fn config(&self) -> &Config {
        &self.node.config
    }
}

/// For unit tests: a connected loopback pair, the peer's plain socket and
/// the server side as the shard's stream (call inside a monoio runtime).
#[cfg(test)]
pub(crate) fn loopback_pair() -> (std::net::TcpStream, monoio::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    (peer, monoio::net::TcpStream::from_std(s).unwrap())
}
