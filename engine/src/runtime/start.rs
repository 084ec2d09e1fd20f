//! Starting and stopping the shards: listeners, pinned threads, the monoio
//! driver choice, accept loops.

use std::cell::Cell;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::ops::config::{Config, DriverKind};
use crate::ops::metrics::ShardMetrics;
use crate::protocol::adapter::{by_name, Protocol, ProtocolId};
use crate::protocol::dmoj::{DmojReceiver, DmojSender};
use crate::protocol::handshake::{HandshakeError, MAX_REQUEST_HEAD};
use crate::protocol::socketio::SocketIo;
use crate::runtime::io::write_all;
use crate::runtime::shard::{ws_capacity, ws_session, Node, Shard, ShardMsg, RESERVED_FDS};
use crate::runtime::sys;
use crate::runtime::{backend, long_poll};

/// A started engine.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub ws_addr: SocketAddr,
    pub backend_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// Asks every shard to stop accepting and close its clients with 1001.
    pub fn shutdown(&self) {
        for mb in &self.node.mailboxes {
            mb.push(ShardMsg::Shutdown);
        }
    }

    /// Waits for the shard threads, at most `timeout`. True if all ended.
    pub fn join(self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.threads.iter().all(JoinHandle::is_finished) {
                for t in self.threads {
                    let _ = t.join();
                }
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting that cannot work on this host (exit code 2, like a bad
    /// config file).
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("cannot listen on {addr} ({key}): is another ringcast running?: {source}")]
    PortInUse {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("io_uring is unavailable: {0}")]
    Uring(std::io::Error),
    #[error("cannot start the shards: {0}")]
    Io(#[from] std::io::Error),
}

impl StartError {
    /// The process exit code: 2 for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::InvalidConfig(_) => 2,
            _ => 1,
        }
    }
}

/// The number of shards to run: the configured count, or the CPUs this
/// process may run on.
pub fn shard_count(config: &Config) -> usize {
    if config.shards > 0 {
        return config.shards;
    }
    core_affinity::get_core_ids()
        .map_or(0, |ids| ids.len())
        .max(1)
}

/// Binds every shard's listeners, starts the shard threads.
pub fn run(config: Config) -> Result<RunningNode, StartError> {
    let shards = shard_count(&config);
    let nofile = sys::raise_open_file_limit().unwrap_or(1024);
    let max = config.limits.max_connections as u64;
    if max > 0 && max + RESERVED_FDS > nofile {
        return Err(StartError::InvalidConfig(format!(
            "limits.max_connections: {max} needs more open files than the limit allows ({nofile}); raise `ulimit -n` or LimitNOFILE"
        )));
    }
    let mut coop = false;
    let uring_ok = match config.driver {
        DriverKind::Epoll => false,
        DriverKind::Uring | DriverKind::Auto => match probe_uring() {
            Ok(c) => {
                coop = c;
                true
            }
            Err(e) if config.driver == DriverKind::Uring => return Err(StartError::Uring(e)),
            Err(e) => {
                tracing::warn!("io_uring is unavailable ({e}); falling back to the epoll driver");
                false
            }
        },
    };
    let driver = if uring_ok { "io_uring" } else { "epoll" };

    // Protocols' own listeners (`[protocols.dmoj]`), each with what it
    // serves.
    let extra: Vec<(&'static str, SocketAddr, Port)> = config
        .protocols
        .dmoj
        .listeners()
        .map_err(|e| StartError::InvalidConfig(e.to_string()))?
        .into_iter()
        .map(|(key, addr)| (key, addr, extra_port(key)))
        .chain(
            config
                .protocols
                .socketio
                .listener()
                .map_err(|e| StartError::InvalidConfig(e.to_string()))?
                .map(|addr| {
                    (
                        "protocols.socketio.listen",
                        addr,
                        extra_port("protocols.socketio.listen"),
                    )
                }),
        )
        .collect();

    // Bind everything up front so a busy port fails the start, not a shard.
    let fixed = [
        (config.ws.listen, "ws.listen"),
        (config.backend.listen, "backend.listen"),
    ];
    for (addr, key) in fixed
        .into_iter()
        .chain(extra.iter().map(|&(key, addr, _)| (addr, key)))
    {
        sys::ensure_not_listening(addr).map_err(|source| StartError::PortInUse {
            addr,
            key,
            source,
        })?;
    }
    let mut listeners = Vec::with_capacity(shards);
    let mut ws_addr = config.ws.listen;
    let mut backend_addr = config.backend.listen;
    let mut extra_addrs: Vec<SocketAddr> = extra.iter().map(|e| e.1).collect();
    for _ in 0..shards {
        let mut own = Vec::with_capacity(extra.len());
        for (i, &(key, _, port)) in extra.iter().enumerate() {
            let addr = extra_addrs[i];
            let l = client_listener(addr, &config).map_err(|source| StartError::Listen {
                addr,
                key,
                source,
            })?;
            extra_addrs[i] = l.local_addr()?;
            if uring_ok {
                l.set_nonblocking(false)?;
            }
            tracing::info!(key, addr = %extra_addrs[i], "listening");
            own.push((l, port));
        }
        let ws = client_listener(ws_addr, &config).map_err(|source| StartError::Listen {
            addr: ws_addr,
            key: "ws.listen",
            source,
        })?;
        ws_addr = ws.local_addr()?;
        let be = sys::reuseport_listener(backend_addr, config.ws.backlog).map_err(|source| {
            StartError::Listen {
                addr: backend_addr,
                key: "backend.listen",
                source,
            }
        })?;
        backend_addr = be.local_addr()?;
        if uring_ok {
            // io_uring waits for accept readiness itself.
            ws.set_nonblocking(false)?;
            be.set_nonblocking(false)?;
        }
        listeners.push((ws, be, own));
    }
    tracing::info!(shards, driver, %ws_addr, %backend_addr, "ringcast listening");

    let capacity = ws_capacity(config.limits.max_connections, nofile);
    tracing::info!(
        nofile,
        ws_capacity = capacity,
        reserved = RESERVED_FDS,
        "descriptors: WebSocket clients get at most ws_capacity; the rest stay for the backend port"
    );
    let node = Node::with_capacity(config, shards, capacity);
    if let Some(bus) = &node.bus {
        crate::cluster::bus::start(node.clone(), bus.clone())?;
    }
    if let Some(redis) = &node.sources.redis {
        crate::sources::redis::start(node.clone(), redis.clone())?;
    }
    if let Some(amqp) = &node.sources.amqp {
        crate::sources::amqp::start(node.clone(), amqp.clone())?;
    }
    if let Some(pg) = &node.sources.postgres {
        crate::sources::postgres::start(node.clone(), pg.clone())?;
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut threads = Vec::with_capacity(shards);
    for (id, (ws, be, own)) in listeners.into_iter().enumerate() {
        let node = node.clone();
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let t = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let span = tracing::info_span!("shard", id);
                let _enter = span.enter();
                let result = if uring_ok {
                    RuntimeBuilder::<IoUringDriver>::new()
                        .uring_builder(uring_builder(coop))
                        .with_entries(SHARD_RING_ENTRIES)
                        .enable_timer()
                        .build()
                        .map(|mut rt| {
                            rt.block_on(shard_main(id, node.clone(), "io_uring", ws, be, own))
                        })
                } else {
                    RuntimeBuilder::<LegacyDriver>::new()
                        .enable_timer()
                        .build()
                        .map(|mut rt| {
                            rt.block_on(shard_main(id, node.clone(), "epoll", ws, be, own))
                        })
                };
                if let Err(e) = result {
                    tracing::error!("shard {id} could not start its runtime: {e}");
                }
            })?;
        threads.push(t);
    }
    Ok(RunningNode {
        node,
        ws_addr,
        backend_addr,
        threads,
    })
}

/// io_uring submission queue entries of each shard's ring (the kernel
/// gives the completion queue twice as many). `ringcast doctor` estimates
/// the rings' locked memory from this.
pub const SHARD_RING_ENTRIES: u32 = 4096;

/// The shards' io_uring set-up: with `coop`, `IORING_SETUP_COOP_TASKRUN`
/// (Linux 5.19+): the work that turns a finished request into its
/// completion runs when the shard next enters the kernel (every loop turn
/// does, and a sleeping shard is still woken) instead of interrupting the
/// running shard for each one. Without it every accept, poll and send
/// completion landing while the shard runs cost a signal-like
/// notification and an inter-processor interrupt: about 40 us of server
/// CPU per connect+subscribe+close against epoll's ~25 (bench/RESULTS.md).
fn uring_builder(coop: bool) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if coop {
        b.setup_coop_taskrun();
    }
    b
}

/// Creates (and drops) an io_uring runtime to see whether the kernel lets
/// us: `Ok(true)` with cooperative task running, `Ok(false)` without it
/// (an older kernel).
fn probe_uring() -> std::io::Result<bool> {
    let probe = |coop| {
        RuntimeBuilder::<IoUringDriver>::new()
            .uring_builder(uring_builder(coop))
            .with_entries(8)
            .build()
            .map(drop)
    };
    match probe(true) {
        Ok(()) => Ok(true),
        Err(_) => probe(false).map(|()| false),
    }
}

async fn shard_main(
    id: usize,
    node: Arc<Node>,
    driver: &'static str,
    ws: TcpListener,
    be: TcpListener,
    own: Vec<(TcpListener, Port)>,
) {
    let shard = Shard::new(id, node, driver);
    let (ws, be) = match (
        monoio::net::TcpListener::from_std(ws),
        monoio::net::TcpListener::from_std(be),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("shard {id}: cannot register listeners: {e}");
            return;
        }
    };
    monoio::spawn(shard.clone().run_flusher());
    monoio::spawn(shard.clone().run_timer());
    monoio::spawn(shard.clone().run_mailbox());
    monoio::spawn(crate::runtime::shard::run_idle_readers(shard.clone()));
    monoio::spawn(accept_loop(shard.clone(), ws, Port::WebSocket));
    monoio::spawn(accept_loop(shard.clone(), be, Port::Backend));
    for (l, port) in own {
        match monoio::net::TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(accept_loop(shard.clone(), l, port));
            }
            Err(e) => tracing::error!("shard {id}: cannot register a listener: {e}"),
        }
    }
    shard.shutdown.wait().await;
    shut_down(&shard).await;
}

/// A shard's shutdown, all within `shutdown_timeout`: (1) backend
/// connections answer every request they had received and close, so every
/// publication acknowledged here has been handed to its subscribers'
/// shards; (2) this shard tells every shard so (`PublishersDone`, behind
/// those deliveries in each mailbox); (3) once a shard has heard it from
/// every shard it closes its clients with 1001, queued behind what they
/// already have; (4) their sessions flush and end. What was still unsent
/// at the deadline is logged as a count of frames.
async fn shut_down(shard: &Rc<Shard>) {
    let timeout = shard.config().shutdown_timeout();
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    while shard.backend_conns.get() > 0 && !left().is_zero() {
        let _ = monoio::time::timeout(left(), shard.backend_idle.wait()).await;
    }
    if shard.backend_conns.get() > 0 {
        tracing::warn!(
            connections = shard.backend_conns.get(),
            "shutdown: backend connections still busy at shutdown_timeout"
        );
    }
    for mb in &shard.node.mailboxes {
        mb.push(ShardMsg::PublishersDone);
    }
    if monoio::time::timeout(left(), shard.clients_closed.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "shutdown: not every shard finished its backend requests in time; closing clients now"
        );
        shard.close_clients();
    }
    if shard.session_count() > 0 {
        let _ = monoio::time::timeout(left(), shard.drained.wait()).await;
    }
    // Let the flusher and closing connections finish their last writes.
    monoio::time::sleep(Duration::from_millis(20)).await;
    match shard.unsent_frames() {
        0 => tracing::info!("shutdown: every queued frame was written"),
        unsent => tracing::warn!(
            unsent_frames = unsent,
            "shutdown: {unsent} frames were not delivered before shutdown_timeout"
        ),
    }
}

#[derive(Clone, Copy)]
enum Port {
    WebSocket,
    Backend,
    /// A protocol's own WebSocket listener: every connection speaks it.
    Fixed(ProtocolId),
    /// DMOJ's long-poll listener (plain HTTP).
    LongPoll,
}

/// What a `[protocols.dmoj]` (or `[protocols.socketio]`) listener key
/// serves.
fn extra_port(key: &str) -> Port {
    let name = match key {
        "protocols.dmoj.long_poll" => return Port::LongPoll,
        "protocols.dmoj.senders" => DmojSender.name(),
        "protocols.socketio.listen" => SocketIo.name(),
        _ => DmojReceiver.name(),
    };
    Port::Fixed(by_name(name).unwrap_or(0))
}

/// A listener for clients (the WebSocket port, a protocol's own port):
/// what its accepted sockets need is set on it once.
fn client_listener(addr: SocketAddr, config: &Config) -> std::io::Result<std::net::TcpListener> {
    let l = sys::reuseport_listener(addr, config.ws.backlog)?;
    sys::set_accepted_options(&l, config.limits.socket_send_buffer)?;
    Ok(l)
}

async fn accept_loop(shard: Rc<Shard>, listener: monoio::net::TcpListener, port: Port) {
    // Refusals being answered on this shard (each holds a descriptor).
    let refusing = Rc::new(Cell::new(0usize));
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = shard.shutdown.wait() => return,
        };
        match accepted {
            Ok((stream, _peer)) => match port {
                Port::WebSocket | Port::Fixed(_) | Port::LongPoll => {
                    match shard.node.open_ws_socket() {
                        Some(counted) => {
                            let shard = shard.clone();
                            // The session's future is the task: it owns the
                            // count, and holds the stream only until upgraded.
                            let fixed = match port {
                                Port::Fixed(p) => Some(p),
                                _ => None,
                            };
                            if let Port::LongPoll = port {
                                monoio::spawn(long_poll::serve(shard, stream, counted));
                            } else {
                                let counted = Some(counted);
                                monoio::spawn(ws_session::serve_as(shard, stream, fixed, counted));
                            }
                        }
                        None => {
                            ShardMetrics::inc(&shard.metrics.connections_refused);
                            if refusing.get() < MAX_REFUSING {
                                refusing.set(refusing.get() + 1);
                                let timeout = shard.config().handshake_timeout().min(REFUSE_WAIT);
                                let refusing = refusing.clone();
                                monoio::spawn(async move {
                                    refuse_at_capacity(stream, timeout).await;
                                    refusing.set(refusing.get() - 1);
                                });
                            }
                            // Past that many, the client is closed unanswered:
                            // refusals must not take the reserved descriptors.
                        }
                    }
                }
                Port::Backend => {
                    monoio::spawn(backend::serve(shard.clone(), stream));
                }
            },
            Err(e) => {
                // Out of fds or similar: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Most 503 refusals being answered at once per shard.
const MAX_REFUSING: usize = 16;
/// Longest a refused client is given to send its upgrade request.
const REFUSE_WAIT: Duration = Duration::from_secs(1);

/// Answers a WebSocket client past capacity with 503 and a JSON body.
/// Its upgrade request is read first (at most [`MAX_REQUEST_HEAD`] bytes,
/// for at most `wait`) so that the close leaves no unread input, which
/// would turn it into a reset that destroys the answer.
async fn refuse_at_capacity(stream: TcpStream, wait: Duration) {
    let fd = stream.as_raw_fd();
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let read_head = async {
        while head.len() < MAX_REQUEST_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if stream.readable(false).await.is_err() {
                return;
            }
            match sys::recv_nonblocking(fd, &mut chunk) {
                Ok(0) => return,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = monoio::time::timeout(wait, read_head).await;
    if monoio::time::timeout(
        wait,
        write_all(&stream, &HandshakeError::AtCapacity.response()),
    )
    .await
    .is_ok()
    {
        sys::shutdown_socket(fd, std::net::Shutdown::Write);
    }
}
