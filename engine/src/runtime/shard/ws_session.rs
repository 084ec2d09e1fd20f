//! One WebSocket client connection: the upgrade, the read loop and the
//! execution of its JSON-RPC calls. Bytes are read with a readiness wait
//! plus a non-blocking `recv` into the shard's shared scratch buffer, so an
//! idle connection holds no read buffer; only a partial frame is kept. On
//! io_uring an idle connection between messages holds no task either: its
//! read side parks in the shard's idle readers (`idle_readers`) and
//! [`resume`] spawns its session again when input comes or the engine
//! wakes it.

use std::future::{poll_fn, Future};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::net::TcpStream;

use super::conn::Conn;
use super::idle_readers::Parked;
use super::tick::Tick;
use super::{ConnRef, Node, Shard, ShardMsg, WsSocket};
use crate::access::Claims;
use crate::ops::config::Compression;
use crate::ops::metrics::ShardMetrics;
use crate::protocol::adapter::Protocol as _;
use crate::protocol::adapter::{
    protocol, Answer, Exchange, Opened, ProtocolId, SessionState, SessionWake,
};
use crate::protocol::deflate::Agreement;
use crate::protocol::handshake::{
    parse_upgrade, HandshakeError, Refused, Upgrade, MAX_REQUEST_HEAD,
};
use crate::protocol::native;
use crate::protocol::websocket::WsProtocol;
use crate::pubsub::ops::OpError;
use crate::runtime::engineio_poll;
use crate::runtime::io::write_all;
use crate::runtime::long_poll;
use crate::runtime::sys;

/// Serves one accepted connection to the end; `fixed`: every upgrade
/// speaks that protocol (a protocol's own listener), else the router
/// chooses by path.
///
/// A plain function, not an `async fn`: an async function keeps its
/// arguments in its state for as long as it runs, and the stream (80
/// bytes) would stay in every idle connection's task beside the copy the
/// connection owns. It goes into the boxed [`open`] future instead, which
/// is freed once the connection is upgraded. `counted`: the descriptor's
/// place in the node's count, given back when the session ends. Spawn the
/// returned future as it is: an `async` block around it would hold it
/// twice (once captured, once awaited).
pub fn serve_as(
    shard: Rc<Shard>,
    stream: TcpStream,
    fixed: Option<ProtocolId>,
    counted: Option<WsSocket>,
) -> impl Future<Output = ()> {
    shard.session_started();
    let opening = Box::pin(open(shard.clone(), stream, fixed));
    session(shard, opening, counted)
}

/// The handshake, the first calls, the RPC execution and the final drain
/// run as boxed futures: they are short-lived, and keeping them out of the
/// session's own state machine keeps an idle connection's task small (it
/// holds only what the read loop needs).
async fn session(
    shard: Rc<Shard>,
    opening: Pin<Box<impl Future<Output = Option<Live>>>>,
    counted: Option<WsSocket>,
) {
    // Its own statement: the boxed handshake future (about 1 KiB) is freed
    // here, not kept to the end of an `if let` around the read loop (whose
    // `Option<Live>` would also keep a second slot of its size in every
    // idle connection's task).
    let Some(live) = opening.await else {
        shard.session_ended();
        drop(counted);
        return;
    };
    live_session(shard, live, counted, false).await
}

/// An upgraded connection's session from its read loop on: to its end, or
/// until its read side parks in the shard's idle readers (its task then
/// ends; [`resume`] spawns this again when the socket has input or the
/// engine wakes it). `ready`: the socket is known to have input.
///
/// A plain function over an `async move` block: an `async fn` would keep
/// a second copy of its arguments (the `Live` above all) in its state
/// (328 bytes this way, 408 as an `async fn`).
#[allow(clippy::manual_async_fn)]
fn live_session(
    shard: Rc<Shard>,
    mut live: Live,
    mut counted: Option<WsSocket>,
    mut ready: bool,
) -> impl Future<Output = ()> {
    async move {
        let mut may_park = true;
        loop {
            match read_loop(&shard, &mut live, ready, may_park).await {
                ReadEnd::Stopped => break,
                ReadEnd::Park => {
                    let Some(idle) = &shard.idle_readers else {
                        break;
                    };
                    let Live {
                        conn,
                        cref,
                        pending,
                        state,
                    } = live;
                    debug_assert!(pending.is_empty());
                    match idle.park(Parked::new(conn, cref, state, counted)) {
                        Ok(()) => return,
                        Err(p) => {
                            // The ring refused: wait with this task.
                            (live, counted) = p.into_live();
                            (ready, may_park) = (false, false);
                        }
                    }
                }
            }
        }
        // The protocol's state goes now, not after the drain: timed jobs of a
        // closed connection are cancelled at once.
        let Live {
            conn,
            state,
            pending,
            ..
        } = live;
        drop(state);
        drop(pending);
        conn.unpark_reader();
        shard.remove_conn(&conn);
        Box::pin(drain(&shard, &conn)).await;
        shard.session_ended();
        drop(counted);
    }
}

/// Spawns the session of a read side that was parked in the shard's idle
/// readers; `ready`: its socket's wait completed (input, end of stream or
/// an error), else it was woken by the engine.
pub(crate) fn resume(shard: &Rc<Shard>, p: Parked, ready: bool) {
    let (live, counted) = p.into_live();
    monoio::spawn(live_session(shard.clone(), live, counted, ready));
}

impl Parked {
    /// The session state a parked read side goes on with (nothing was
    /// pending when it parked), and its descriptor count.
    fn into_live(self) -> (Live, Option<WsSocket>) {
        let live = Live {
            conn: self.conn,
            cref: self.cref,
            pending: Vec::new(),
            state: self.state,
        };
        (live, self.counted)
    }
}

/// An upgraded connection, registered on its shard: what its read loop
/// works on (one reference to it in the loop's state, not one per field).
pub(crate) struct Live {
    pub(crate) conn: Rc<Conn>,
    pub(crate) cref: ConnRef,
    /// Bytes that came after the upgrade request (then: the start of a
    /// frame not yet complete).
    pub(crate) pending: Vec<u8>,
    /// The protocol's state for this connection (no allocation for the
    /// stateless ones).
    pub(crate) state: SessionState,
}

/// The handshake, the connection's registration and what its protocol
/// runs before any client message. `None` when there is nothing more to
/// read: the upgrade failed (and was answered), or the request was a
/// long-poll or Engine.IO polling request, served here.
async fn open(shard: Rc<Shard>, stream: TcpStream, fixed: Option<ProtocolId>) -> Option<Live> {
    let shard = &shard;
    let (stream, proto, deflate, pending, mut state, first, claims) =
        match handshake(shard, stream, fixed).await? {
            Handshake::Upgraded(stream, proto, deflate, pending, opened, claims) => (
                stream,
                proto,
                deflate,
                pending,
                opened.state,
                opened.first,
                claims,
            ),
            Handshake::Poll(stream, request, p) => {
                if protocol(p).name() == "socketio" {
                    engineio_poll::serve_request(shard, stream, request, p).await;
                } else {
                    long_poll::serve_request(shard, stream, request).await;
                }
                return None;
            }
            Handshake::PollUpgrade(stream, pending, session) => {
                engineio_poll::upgrade(shard, stream, pending, session).await;
                return None;
            }
        };
    let burst = shard.config().limits.rate_burst;
    let (conn, cref) = shard
        .add_conn(|key| Conn::new(key, stream, proto, burst, Instant::now()).with_deflate(deflate));
    match claims {
        Some(claims) => {
            shard.set_identity(&conn, *claims);
        }
        None if shard.needs_connect(&conn) => shard.await_connect(&conn, Instant::now()),
        None => {}
    }
    attach(shard, proto, &mut state, cref);
    if let Some(first) = first {
        run_calls(shard, &conn, cref, &mut state, &mut vec![*first]).await;
    }
    Some(Live {
        conn,
        cref,
        pending,
        state,
    })
}

/// A connection without a token waits for `connect` when the node asks
/// for one (as an upgrade without a token does).
pub(crate) fn expect_connect(shard: &Shard, conn: &Rc<Conn>) {
    if shard.needs_connect(conn) {
        shard.await_connect(conn, Instant::now());
    }
}

/// Gives the protocol's state of connection `cref` its waker.
pub(crate) fn attach(
    shard: &Rc<Shard>,
    proto: ProtocolId,
    state: &mut SessionState,
    cref: ConnRef,
) {
    protocol(proto).attach(state, &|| {
        Arc::new(ShardWaker {
            node: Arc::downgrade(&shard.node),
            shard: shard.id,
            conn: cref,
        })
    });
}

/// Wakes one session from any thread: a message to its shard's mailbox,
/// which wakes that shard if it sleeps; the shard wakes the session if the
/// connection is still there ([`ConnRef`]'s serial tells a reused slot).
struct ShardWaker {
    node: Weak<Node>,
    shard: usize,
    conn: ConnRef,
}

impl SessionWake for ShardWaker {
    fn wake(&self) {
        if let Some(node) = self.node.upgrade() {
            node.mailboxes[self.shard].push(ShardMsg::WakeSession(self.conn));
        }
    }
}

/// How a connection's first request went.
enum Handshake {
    /// Upgraded: the stream, its protocol, its permessage-deflate
    /// agreement (packed, 0 = none), the bytes after the request and the
    /// protocol's state for it, and the claims of the token it gave.
    Upgraded(
        TcpStream,
        ProtocolId,
        u8,
        Vec<u8>,
        Opened,
        Option<Box<Claims>>,
    ),
    /// A plain HTTP request a protocol serves (bytes read so far, and the
    /// protocol: DMOJ's long-poll or Engine.IO polling).
    Poll(TcpStream, Vec<u8>, ProtocolId),
    /// The WebSocket upgrade of an Engine.IO polling session (answered
    /// 101; the bytes after the request).
    PollUpgrade(TcpStream, Vec<u8>, std::sync::Arc<engineio_poll::Session>),
}

/// Upgrades the connection, or hands a long-poll request on; `None` when
/// the upgrade failed (and was answered).
async fn handshake(
    shard: &Shard,
    stream: TcpStream,
    fixed: Option<ProtocolId>,
) -> Option<Handshake> {
    // TCP_NODELAY and the send buffer came with the accept: they are set on
    // the listener (`sys::set_accepted_options`).
    let cfg = shard.config();
    let mut buf = Vec::new();
    let read = monoio::time::timeout(
        cfg.handshake_timeout(),
        read_upgrade(&stream, &mut buf, &cfg.ws.allowed_origins),
    );
    let mut upgrade = match read.await {
        Ok(Ok(u)) => u,
        Ok(Err(Some(e))) => {
            // A plain HTTP request a protocol serves (DMOJ's long-poll,
            // Engine.IO polling; on LQDOJ's own listener every path).
            let plain = match fixed {
                None => shard.node.router.route_plain_http(cfg, &buf),
                Some(p) if protocol(p).name() == "socketio" && !is_upgrade(&buf) => Some(p),
                Some(_) => None,
            };
            if let Some(p) = plain {
                return Some(Handshake::Poll(stream, buf, p));
            }
            ShardMetrics::inc(&shard.metrics.handshakes_rejected);
            let _ = write_all(&stream, &e.response()).await;
            return None;
        }
        Ok(Err(None)) => return None,
        Err(_) => {
            ShardMetrics::inc(&shard.metrics.handshakes_rejected);
            return None;
        }
    };
    let proto = fixed.unwrap_or_else(|| {
        shard
            .node
            .router
            .route(upgrade.path_without_query(), upgrade.query_param("dialect"))
    });
    if cfg.ws.compression == Compression::Off || !protocol(proto).websocket() {
        upgrade.deflate = None;
    }
    // The upgrade of a live Engine.IO polling session.
    if protocol(proto).name() == "socketio" && upgrade.query_param("transport") == Some("websocket")
    {
        if let Some(session) = upgrade.query_param("sid").and_then(engineio_poll::lookup) {
            upgrade.deflate = None;
            write_all(&stream, &upgrade.response_101()).await.ok()?;
            let pending = buf.split_off(upgrade.consumed);
            return Some(Handshake::PollUpgrade(stream, pending, session));
        }
    }
    let claims = match upgrade_identity(shard, proto, &upgrade, &buf) {
        Ok(claims) => claims,
        Err(refused) => {
            ShardMetrics::inc(&shard.metrics.handshakes_rejected);
            let _ = write_all(&stream, &HandshakeError::Refused(refused).response()).await;
            return None;
        }
    };
    let opened = match protocol(proto).accept_as(cfg, &upgrade, claims.as_deref(), Instant::now()) {
        Ok(opened) => opened,
        Err(refused) => {
            ShardMetrics::inc(&shard.metrics.handshakes_rejected);
            let _ = write_all(&stream, &HandshakeError::Refused(refused).response()).await;
            return None;
        }
    };
    write_all(&stream, &upgrade.response_101()).await.ok()?;
    let pending = buf.split_off(upgrade.consumed);
    Some(Handshake::Upgraded(
        stream,
        proto,
        Agreement::to_byte(upgrade.deflate),
        pending,
        opened,
        claims,
    ))
}

/// The token an upgrade carries (`?token=`, `Authorization: Bearer`),
/// verified: its claims, none for an anonymous connection, or a 401.
/// Only the native protocol may come without a token when `auth.required`
/// (it sends `connect` first); protocols that are not public (trusted
/// senders with their own key) are not asked.
fn upgrade_identity(
    shard: &Shard,
    proto: ProtocolId,
    upgrade: &Upgrade,
    head: &[u8],
) -> Result<Option<Box<Claims>>, Refused> {
    let access = &shard.node.access;
    if !access.enabled() || !protocol(proto).public() {
        return Ok(None);
    }
    let head = &head[..upgrade.consumed.min(head.len())];
    match crate::access::upgrade_token(&upgrade.path, head) {
        Some(token) => access
            .verifier
            .verify(&token, crate::access::token::unix_now())
            .map(|c| Some(Box::new(c)))
            .map_err(|e| Refused {
                status: 401,
                reason: e.reason(),
            }),
        None if access.required && protocol(proto).name() != native::Native.name() => {
            Err(Refused {
                status: 401,
                reason: crate::access::TokenError::Missing.reason(),
            })
        }
        None => Ok(None),
    }
}

/// Whether a complete request head asks for an upgrade.
fn is_upgrade(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    matches!(req.parse(head), Ok(httparse::Status::Complete(_)))
        && req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
}

/// Reads the upgrade request. `Err(None)`: the peer went away.
async fn read_upgrade(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    origins: &[String],
) -> Result<Upgrade, Option<HandshakeError>> {
    let fd = stream.as_raw_fd();
    let mut chunk = [0u8; 1024];
    loop {
        match parse_upgrade(buf, origins) {
            Ok(Some(u)) => return Ok(u),
            Ok(None) if buf.len() >= MAX_REQUEST_HEAD => {
                return Err(Some(HandshakeError::TooLarge))
            }
            Ok(None) => {}
            Err(e) => return Err(Some(e)),
        }
        // Read first: the request has usually arrived with the accept, and
        // a readiness wait that finds it already there still costs a poll
        // request in the kernel (io_uring) or a poll(2) (epoll).
        match sys::recv_nonblocking(fd, &mut chunk) {
            Ok(0) => return Err(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stream.readable(false).await.map_err(|_| None)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(None),
        }
    }
}

pub(crate) enum Step {
    Continue,
    Stop,
}

/// How a read loop ended.
pub(crate) enum ReadEnd {
    /// The connection is done reading: clean up and drain.
    Stopped,
    /// Idle between messages with nothing to wait for but input: its read
    /// side can park in the shard's idle readers (see [`live_session`]).
    Park,
}

/// Reads and runs the client's messages until the connection stops (or,
/// with `may_park`, until it idles in a state that can park). `ready`:
/// read before waiting (the socket is known to have input).
pub(crate) async fn read_loop(
    shard: &Rc<Shard>,
    live: &mut Live,
    mut ready: bool,
    may_park: bool,
) -> ReadEnd {
    let mut ws = WsProtocol::with_deflate(live.conn.deflate != 0);
    if !live.pending.is_empty() {
        // Frames that arrived with the upgrade request.
        let (step, mut msgs) = take_input(shard, live, &mut ws, 0);
        run_calls(shard, &live.conn, live.cref, &mut live.state, &mut msgs).await;
        if let Step::Stop = step {
            return ReadEnd::Stopped;
        }
    }
    // What the wait below holds is all an idle connection's task holds:
    // the stream, the descriptor and the budget are taken afresh after
    // each wake, and the request list lives only while its calls run.
    loop {
        let Some(stream) = live.conn.socket() else {
            return ReadEnd::Stopped;
        };
        let budget = shard.config().limits.max_outbound_bytes;
        if may_park && !ready && can_park(shard, live, &ws, budget) {
            return ReadEnd::Park;
        }
        // Resumed by its socket's wait: read at once.
        let resumed_readable = std::mem::take(&mut ready) && live.conn.is_open();
        if !resumed_readable {
            // A connection with a deadline waits in a boxed future of its own,
            // so that the others' (idle) session tasks do not carry a timer.
            let wake = match protocol(live.conn.proto).next_deadline(&live.state) {
                Some(deadline) => {
                    let timer = monoio::time::sleep_until(deadline.into());
                    let conn = &live.conn;
                    Box::pin(async move {
                        let readable = pin!(stream.readable(false));
                        wait_input(conn, budget, readable, pin!(Some(timer))).await
                    })
                    .await
                }
                None => {
                    let readable = pin!(stream.readable(false));
                    let timer = pin!(None::<std::future::Pending<()>>);
                    wait_input(&live.conn, budget, readable, timer).await
                }
            };
            match wake {
                Wake::Stop => return ReadEnd::Stopped,
                Wake::Deadline => {
                    if let Step::Stop = on_deadline(shard, &live.conn, &mut live.state) {
                        return ReadEnd::Stopped;
                    }
                    continue;
                }
                Wake::Readable => {}
            }
        }
        let (fd, budget) = (stream.as_raw_fd(), shard.config().limits.max_outbound_bytes);
        loop {
            let got = {
                let mut scratch = shard.scratch.borrow_mut();
                sys::recv_nonblocking(fd, &mut scratch)
            };
            let n = match got {
                Ok(0) => return ReadEnd::Stopped,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return ReadEnd::Stopped,
            };
            live.conn.last_seen.set(Tick::now());
            let (step, mut msgs) = take_input(shard, live, &mut ws, n);
            run_calls(shard, &live.conn, live.cref, &mut live.state, &mut msgs).await;
            if let Step::Stop = step {
                return ReadEnd::Stopped;
            }
            if !live.conn.is_open() {
                return ReadEnd::Stopped;
            }
            if n < shard.scratch.borrow().len() || live.conn.queued() > budget {
                break;
            }
        }
    }
}

/// Whether a read loop idling now can park its read side: the shard has
/// idle readers, the connection is open, between messages with nothing
/// pending, under its outbound budget, not woken, and its protocol has no
/// deadline (those wait with a timer in their task).
fn can_park(shard: &Shard, live: &Live, ws: &WsProtocol, budget: usize) -> bool {
    shard.idle_readers.as_ref().is_some_and(|i| i.accepting())
        && live.pending.is_empty()
        && ws.between_messages()
        && live.conn.is_open()
        && !live.conn.is_woken()
        && live.conn.queued() <= budget
        && protocol(live.conn.proto)
            .next_deadline(&live.state)
            .is_none()
}

/// Parses what came in (the first `n` bytes of the shard's scratch
/// buffer after what is pending; 0: only what is pending): the calls it
/// carries, for [`run_calls`]. Not an `async fn` running them itself: its
/// copies of its arguments would outgrow the idle wait in the read loop's
/// state.
fn take_input(
    shard: &Rc<Shard>,
    live: &mut Live,
    ws: &mut WsProtocol,
    n: usize,
) -> (Step, Vec<Exchange>) {
    let mut msgs = Vec::new();
    let step = ingest(
        shard,
        &live.conn,
        ws,
        &mut live.state,
        &mut live.pending,
        n,
        &mut msgs,
    );
    (step, msgs)
}

/// What ended a wait for input.
enum Wake {
    /// The socket has input and the queue is under budget.
    Readable,
    /// The protocol's deadline passed.
    Deadline,
    /// The reader should stop: the socket failed, or a server-side close
    /// woke it (see [`Conn::wake_reader`]).
    Stop,
}

/// Waits until the socket has input (`readable`, the stream's readiness
/// future) and the connection's queue is under `budget`, or until `timer`
/// (a sleep on the shard's timer wheel) ends.
///
/// A plain function over futures the caller pinned, not an `async fn`:
/// an async function would keep its own copies of its arguments beside
/// the closure's references to them, in every idle connection's task.
fn wait_input<'a>(
    conn: &'a Conn,
    budget: usize,
    mut readable: Pin<&'a mut impl Future<Output = std::io::Result<()>>>,
    mut timer: Pin<&'a mut Option<impl Future<Output = ()>>>,
) -> impl Future<Output = Wake> + 'a {
    poll_fn(move |cx| {
        if !conn.is_open() {
            return Poll::Ready(Wake::Stop);
        }
        if conn.take_woken() {
            // Woken for its protocol (SessionWake): run on_deadline now.
            return Poll::Ready(Wake::Deadline);
        }
        if let Some(t) = timer.as_mut().as_pin_mut() {
            if t.poll(cx).is_ready() {
                return Poll::Ready(Wake::Deadline);
            }
        }
        if conn.throttle_reader(budget, cx.waker()) {
            // Replies owed to this client are over its budget (policy
            // `drop`): read nothing more until they drain.
            return Poll::Pending;
        }
        match readable.as_mut().poll(cx) {
            Poll::Ready(Ok(_)) => Poll::Ready(Wake::Readable),
            Poll::Ready(Err(_)) => Poll::Ready(Wake::Stop),
            Poll::Pending => {
                conn.park_reader(cx.waker());
                Poll::Pending
            }
        }
    })
}

/// The protocol's deadline passed: sends what fell due, and closes the
/// connection if the protocol says so.
pub(crate) fn on_deadline(shard: &Rc<Shard>, conn: &Rc<Conn>, state: &mut SessionState) -> Step {
    let now = Instant::now();
    let mut reply = crate::protocol::rpc::ReplyWriter::new(false);
    let close = protocol(conn.proto).on_deadline(state, now, &mut reply);
    if let Some(frames) = reply.finish_frames() {
        let hold = conn.push_hold();
        shard.send_reply(conn, hold, Some(frames));
    }
    match close {
        Some(c) => {
            shard.close_conn(conn, c.code, c.reason, false, now);
            Step::Stop
        }
        None => Step::Continue,
    }
}

/// Feeds `n` new bytes (in the shard scratch buffer) through the WebSocket
/// state machine; complete messages are parsed into `msgs`.
fn ingest(
    shard: &Shard,
    conn: &Rc<Conn>,
    ws: &mut WsProtocol,
    state: &mut SessionState,
    pending: &mut Vec<u8>,
    n: usize,
    msgs: &mut Vec<Exchange>,
) -> Step {
    let max = shard.config().limits.max_message_size;
    let mut scratch = shard.scratch.borrow_mut();
    let mut parser = shard.parser.borrow_mut();
    let mut ctrl = Vec::new();
    let proto = protocol(conn.proto);
    let mut on_message = |_kind, payload: &[u8]| {
        ShardMetrics::inc(&shard.metrics.messages_in);
        msgs.push(proto.handle_message(state, payload, &mut parser, Instant::now()));
    };
    let on_pong = |_: &[u8]| conn.ping_sent.set(None);
    // Borrowed only by connections that agreed permessage-deflate.
    let mut inflater = (conn.deflate != 0).then(|| shard.inflater.borrow_mut());
    let mut handle = |input: &mut [u8], ctrl: &mut Vec<u8>| match inflater.as_deref_mut() {
        Some(inflater) => {
            ws.handle_input_inflating(input, max, inflater, ctrl, &mut on_message, on_pong)
        }
        None => ws.handle_input(input, max, ctrl, &mut on_message, on_pong),
    };
    let result = if pending.is_empty() {
        let input = &mut scratch[..n];
        let r = handle(input, &mut ctrl);
        if let Ok(p) = &r {
            pending.extend_from_slice(&input[p.consumed..]);
        }
        r
    } else {
        pending.extend_from_slice(&scratch[..n]);
        let r = handle(pending, &mut ctrl);
        if let Ok(p) = &r {
            pending.drain(..p.consumed);
            if pending.is_empty() {
                // Give the memory back: idle connections hold no buffer.
                *pending = Vec::new();
            }
        }
        r
    };
    drop(inflater);
    drop(scratch);
    drop(parser);
    if !ctrl.is_empty() {
        // Pongs, or the close frame: queued before the state changes.
        shard.send_control(conn, Bytes::from(ctrl));
    }
    match result {
        Ok(p) if p.closed => {
            conn.mark_closing(Instant::now());
            Step::Stop
        }
        Ok(_) => Step::Continue,
        Err(_) => {
            ShardMetrics::inc(&shard.metrics.protocol_errors);
            conn.mark_closing(Instant::now());
            Step::Stop
        }
    }
}

/// Runs [`execute`] boxed, and only when there is something to run.
pub(crate) async fn run_calls(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    cref: ConnRef,
    state: &mut SessionState,
    msgs: &mut Vec<Exchange>,
) {
    if !msgs.is_empty() {
        Box::pin(execute(shard, conn, cref, state, msgs)).await;
        // Idle connections keep no request buffer.
        *msgs = Vec::new();
    }
}

/// Executes the client's messages in order: each call's operation runs in
/// the engine and its protocol renders the answer. A message's reply goes
/// where its hold was placed, ahead of anything queued after it.
async fn execute(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    cref: ConnRef,
    state: &mut SessionState,
    msgs: &mut Vec<Exchange>,
) {
    let proto = protocol(conn.proto);
    let peer = || {
        conn.socket()
            .and_then(|s| s.peer_addr().ok())
            .map_or_else(|| "unknown".into(), |a| a.to_string())
    };
    let rate_limited = native::rpc_error(&OpError::RateLimited);
    let budget = shard.config().limits.max_outbound_bytes;
    for ex in msgs.drain(..) {
        // Replies owed and unread past the budget (policy `drop`): answer
        // nothing more until they drain or the connection closes.
        poll_fn(
            |cx| match conn.is_open() && conn.throttle_reader(budget, cx.waker()) {
                true => Poll::Pending,
                false => Poll::Ready(()),
            },
        )
        .await;
        if !conn.is_open() {
            return;
        }
        let hold = conn.push_hold();
        let mut reply = ex.reply;
        if ex.calls.is_empty() && !shard.take_token(conn) {
            proto.reject_message(&mut reply, &rate_limited);
        }
        for call in ex.calls {
            let id = call.id.as_deref();
            match &call.op {
                Err(e) => {
                    let e = if shard.take_token(conn) {
                        e
                    } else {
                        &rate_limited
                    };
                    proto.write_answer(state, &mut reply, id, Answer::Rejected(e));
                }
                Ok(op) => {
                    let result = shard.run_client_op(conn, cref, op).await;
                    let answer = Answer::Done {
                        op,
                        result,
                        peer: &peer,
                    };
                    proto.write_answer(state, &mut reply, id, answer);
                }
            }
        }
        shard.send_reply(conn, hold, reply.finish_frames());
    }
}

/// How long a failed or closing connection keeps discarding the client's
/// input after the close frame and FIN went out.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// How many bytes of input a closing connection discards at most: 1 MiB,
/// or twice the largest message allowed if that is more.
pub fn linger_bytes(max_message_size: usize) -> usize {
    (1 << 20).max(max_message_size.saturating_mul(2))
}

/// After the reader stopped: give queued frames (a close frame above all)
/// a bounded time to leave, shut down writing, then linger.
pub(crate) async fn drain(shard: &Rc<Shard>, conn: &Rc<Conn>) {
    // On shutdown queued frames get the whole shutdown_timeout to leave.
    let budget = if shard.shutdown.is_raised() {
        shard.config().shutdown_timeout()
    } else {
        LINGER_TIME
    };
    let deadline = Instant::now() + budget;
    while conn.has_writable() && Instant::now() < deadline {
        match shard.flush_now(conn) {
            Ok((true, n)) => {
                ShardMetrics::add(&shard.metrics.bytes_out, n as u64);
                break;
            }
            Ok((false, n)) => {
                ShardMetrics::add(&shard.metrics.bytes_out, n as u64);
                let left = deadline.saturating_duration_since(Instant::now());
                let Some(stream) = conn.socket() else { break };
                if monoio::time::timeout(left, stream.writable(false))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    sys::shutdown_socket(conn.fd(), Shutdown::Write);
    linger(shard, conn, Instant::now() + LINGER_TIME.min(budget)).await;
}

/// Lingering close: reads and discards what the client still sends until
/// it closes its side, for at most `until` and [`linger_bytes`]. Closing
/// a socket with unread input makes the kernel send a reset, and a reset
/// makes the client's kernel drop the close frame it has not read yet.
async fn linger(shard: &Shard, conn: &Conn, until: Instant) {
    let limit = linger_bytes(shard.config().limits.max_message_size);
    let Some(stream) = conn.socket() else {
        return;
    };
    let fd = stream.as_raw_fd();
    let mut discarded = 0usize;
    loop {
        // Read first: a client that closed already (the read loop's end of
        // stream, sticky) needs no readiness wait at all.
        loop {
            let got = {
                let mut scratch = shard.scratch.borrow_mut();
                sys::recv_nonblocking(fd, &mut scratch)
            };
            match got {
                Ok(0) => return,
                Ok(n) => {
                    discarded += n;
                    if discarded > limit {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match monoio::time::timeout(left, stream.readable(false)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::config::Config;
    use crate::runtime::shard::Node;

    #[test]
    fn session_future_size() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let (_peer, stream) = crate::runtime::shard::loopback_pair();
            let shard = Shard::new(0, Node::new(Config::default(), 1), "epoll");
            let fut = serve_as(shard.clone(), stream, None, None);
            let (fut_bytes, conn_bytes) =
                (std::mem::size_of_val(&fut), std::mem::size_of::<Conn>());
            // A parked read side's session spawned again (`resume`).
            let (_peer2, stream2) = crate::runtime::shard::loopback_pair();
            let conn = Rc::new(Conn::new(1, stream2, 0, 1, Instant::now()));
            let live = Live {
                conn,
                cref: ConnRef { key: 1, serial: 1 },
                pending: Vec::new(),
                state: SessionState::none(),
            };
            let resumed = std::mem::size_of_val(&live_session(shard, live, None, true));
            eprintln!(
                "serve future: {fut_bytes} bytes, resumed: {resumed} bytes, conn: {conn_bytes} bytes"
            );
            assert!(resumed <= fut_bytes, "resumed session {resumed} bytes");
            // Both live for every open connection that keeps its task (the
            // future in its task, the Conn in the shard's table): on epoll,
            // and on io_uring while a protocol deadline or a partial message
            // keeps it from parking in the idle readers. 320 and 240 bytes
            // when these bounds were set, 328 once the read loop could park
            // (896 before the handshake's state and a second copy of the
            // stream left it, 512 before the read loop's wait and arguments
            // stopped being copied; 296 before its four timestamps became
            // ticks). With monoio's 48-byte task header the task is 376
            // bytes, in mimalloc's 384-byte size class: past 336 it moves
            // to the 448 one. A change that outgrows them should be a
            // deliberate one (box the rare, large state instead).
            assert!(fut_bytes <= 336, "serve future grew to {fut_bytes} bytes");
            assert!(conn_bytes <= 256, "Conn grew to {conn_bytes} bytes");
        });
    }
}
