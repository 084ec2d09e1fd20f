//! Engine.IO v4 long-polling (the transport the stock socket.io clients
//! open with) and its upgrade to WebSocket. Requests and answers are
//! `protocol::socketio::polling`; this module moves bytes.
//!
//! A polling session is a connection without a socket ([`Conn::socketless`])
//! on the shard that served its handshake, with the Socket.IO adapter's
//! state and its own task, as a WebSocket client's connection has:
//! everything the adapter does (CONNECT and auth, LQDOJ's events,
//! subscriptions and catch-up, Engine.IO pings and the pong timeout, the
//! close after a malformed packet) is unchanged, and publications reach it
//! as the same cached frames. Flushing such a connection moves its frames
//! into the session's queue (their payloads, sliced, not copied). The
//! session is found by sid in one process-wide table, so a GET, a POST or
//! the upgrade may land on any shard: a GET takes the queue, a POST's
//! packets go to the connection's inbox and wake its task. On the upgrade
//! the client's WebSocket (a duplicate of its descriptor) is handed to the
//! connection, which from then on is an ordinary WebSocket connection:
//! what the queue still held goes out first, in order, then the rest.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{select, Either};
use monoio::net::TcpStream;

use crate::ops::metrics::ShardMetrics;
use crate::protocol::adapter::{protocol, Exchange, ProtocolId, SessionState};
use crate::protocol::codec::{decode_header, write_frame, OpCode};
use crate::protocol::socketio::engineio;
use crate::protocol::socketio::polling::{
    self, action, error_response, join_payload, parse, response, split_payload, Action, EioError,
    Payload, PollRequest,
};
use crate::protocol::websocket::{close_frame, WsProtocol};
use crate::runtime::io::write_all;
use crate::runtime::shard::tick::Tick;
use crate::runtime::shard::ws_session::{self, Live, Step};
use crate::runtime::shard::{Conn, Shard};
use crate::runtime::sys;

const TEXT_PLAIN: &str = "text/plain; charset=UTF-8";

/// One polling session, shared by the requests that serve it and by its
/// connection (on its shard).
pub(crate) struct Session {
    sid: Box<str>,
    /// Bytes the queue may hold (`limits.max_outbound_bytes`); past them
    /// the client stopped polling and the session ends.
    budget: usize,
    inner: Mutex<Inner>,
}

/// The client's WebSocket after `5`, for the connection to take: the
/// socket and the bytes read after the `5`.
type Handover = (std::net::TcpStream, Vec<u8>);

#[derive(Default)]
struct Inner {
    /// Packets for the client, oldest first; a GET takes them all.
    queue: VecDeque<Payload>,
    queued_bytes: usize,
    /// The connection is gone: a close packet is queued last.
    ended: bool,
    /// The parked GET.
    reader: Option<Waker>,
    get_busy: bool,
    /// Packets from POSTs for the connection, and its task's waker.
    inbox: Vec<Payload>,
    owner: Option<Waker>,
    /// The client ended the session, broke engine.io's rules, or stopped
    /// polling: the connection stops.
    stop: bool,
    /// `5` came on the client's WebSocket: GET and POST are over.
    upgraded: bool,
    handover: Option<Handover>,
}

impl Inner {
    fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    fn wake_owner(&mut self) {
        if let Some(w) = self.owner.take() {
            w.wake();
        }
    }

    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.queue
                .push_back(Payload::Text(Bytes::from_static(b"1")));
        }
        self.wake_reader();
    }
}

fn table() -> &'static Mutex<HashMap<Box<str>, Arc<Session>>> {
    static TABLE: OnceLock<Mutex<HashMap<Box<str>, Arc<Session>>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The live polling session `sid`, if any.
pub(crate) fn lookup(sid: &str) -> Option<Arc<Session>> {
    locked(table()).get(sid).cloned()
}

/// Polling sessions open now (upgraded ones included, until they end).
pub fn session_count() -> usize {
    locked(table()).len()
}

fn forget(sid: &str) {
    locked(table()).remove(sid);
}

impl Session {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        locked(&self.inner)
    }

    /// The flush of the session's connection: `take` hands over its
    /// queued frames (whole WebSocket frames the engine built, several
    /// in one buffer at times); their payloads join the queue. Returns
    /// what `take` returns (the bytes taken).
    pub(crate) fn push_frames(&self, take: impl FnOnce(&mut dyn FnMut(Bytes)) -> usize) -> usize {
        let mut i = self.inner();
        let n = take(&mut |frames| unframe(&frames, &mut i));
        if i.queued_bytes > self.budget {
            // A client that stopped polling: the session ends.
            i.stop = true;
            i.wake_owner();
        }
        i.wake_reader();
        n
    }

    /// Ends the session from the client's side (or for its fault).
    fn close(&self) {
        let mut i = self.inner();
        i.stop = true;
        i.wake_owner();
        i.end();
        drop(i);
        forget(&self.sid);
    }

    /// The client's close packet `1`: engine.io discards what was queued,
    /// answers a parked GET with the noop `6` and forgets the sid at once.
    fn client_closed(&self) {
        let mut i = self.inner();
        i.stop = true;
        i.wake_owner();
        if !i.ended {
            i.ended = true;
            i.queue.clear();
            i.queued_bytes = 0;
            i.queue.push_back(Payload::Text(Bytes::from_static(b"6")));
        }
        i.wake_reader();
        drop(i);
        forget(&self.sid);
    }

    /// Waits until something is queued (or the session ended), then takes
    /// it all.
    async fn take(&self) -> (Vec<Payload>, bool) {
        poll_fn(|cx| {
            let mut i = self.inner();
            if i.queue.is_empty() && !i.ended {
                i.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            i.queued_bytes = 0;
            let ended = i.ended;
            Poll::Ready((i.queue.drain(..).collect(), ended))
        })
        .await
    }
}

/// Queues the payloads of the server frames in `frames`: text and binary
/// messages as packets, a close frame as the close packet; pings and
/// pongs have no meaning here.
fn unframe(frames: &Bytes, i: &mut Inner) {
    let mut at = 0;
    while at < frames.len() {
        let Ok(Some((h, head))) = decode_header(&frames[at..]) else {
            return;
        };
        let start = at + head;
        let Some(end) = usize::try_from(h.payload_len)
            .ok()
            .and_then(|n| start.checked_add(n))
            .filter(|end| *end <= frames.len())
        else {
            return;
        };
        let payload = frames.slice(start..end);
        match h.opcode {
            OpCode::Text => {
                i.queued_bytes += payload.len();
                i.queue.push_back(Payload::Text(payload));
            }
            OpCode::Binary => {
                i.queued_bytes += payload.len();
                i.queue.push_back(Payload::Binary(payload));
            }
            OpCode::Close => i.end(),
            _ => {}
        }
        at = end;
    }
}

/// Serves a connection whose first request (`buf`, read so far) is an
/// Engine.IO polling request of protocol `proto`, and the requests after
/// it (keep-alive).
pub(crate) async fn serve_request(
    shard: &Rc<Shard>,
    stream: TcpStream,
    mut buf: Vec<u8>,
    proto: ProtocolId,
) {
    let _ = stream.set_nodelay(true);
    let cfg = shard.config();
    let idle = Duration::from_millis(
        cfg.protocols.socketio.ping_interval + cfg.protocols.socketio.ping_timeout,
    );
    let max_body = cfg.limits.max_message_size;
    loop {
        let req = match parse(&buf, max_body) {
            Ok(Some(req)) => req,
            Ok(None) => match monoio::time::timeout(idle, read_more(&stream, &mut buf)).await {
                Ok(true) => continue,
                _ => return,
            },
            Err(polling::HeadError(status, msg)) => {
                let _ = write_all(
                    &stream,
                    &response(status, TEXT_PLAIN, msg.as_bytes(), false, None),
                )
                .await;
                sys::shutdown_socket(stream.as_raw_fd(), Shutdown::Write);
                return;
            }
        };
        buf.drain(..req.consumed);
        if buf.is_empty() {
            // A parked GET keeps no read buffer.
            buf = Vec::new();
        }
        ShardMetrics::inc(&shard.metrics.polling_requests);
        let Some(out) = Box::pin(answer(shard, &stream, &mut buf, &req, proto)).await else {
            // The client closed its parked GET.
            return;
        };
        if write_all(&stream, &out).await.is_err() || !req.keep_alive {
            sys::shutdown_socket(stream.as_raw_fd(), Shutdown::Write);
            return;
        }
    }
}

/// The answer to `req`; `None` when the client closed the connection of
/// its parked GET (which, as in engine.io, ends the session).
async fn answer(
    shard: &Rc<Shard>,
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    req: &PollRequest,
    proto: ProtocolId,
) -> Option<Vec<u8>> {
    let origin = req.origin.as_deref();
    let ka = req.keep_alive;
    let act = match action(req) {
        Ok(a) => a,
        Err(e) => return Some(error_response(e, ka, origin)),
    };
    Some(match act {
        Action::Preflight => response(204, TEXT_PLAIN, b"", ka, origin),
        Action::Handshake => match open(shard, proto) {
            Some(packet) => response(200, TEXT_PLAIN, &packet, ka, origin),
            None => response(
                503,
                TEXT_PLAIN,
                b"no randomness for a session id",
                ka,
                origin,
            ),
        },
        Action::Poll(sid) => {
            let Some(s) = lookup(&sid) else {
                return Some(error_response(EioError::SessionUnknown, ka, origin));
            };
            {
                let mut i = s.inner();
                if i.upgraded {
                    drop(i);
                    return Some(error_response(EioError::BadRequest, ka, origin));
                }
                if i.get_busy {
                    // engine.io: overlapping polls close the session.
                    drop(i);
                    s.close();
                    return Some(response(400, TEXT_PLAIN, b"", ka, origin));
                }
                i.get_busy = true;
            }
            let cfg = shard.config();
            let wait = Duration::from_millis(
                cfg.protocols.socketio.ping_interval + cfg.protocols.socketio.ping_timeout,
            );
            let taken = pin!(monoio::time::timeout(wait, s.take()));
            let limit = shard
                .config()
                .limits
                .max_message_size
                .saturating_add(16 * 1024);
            let gone = pin!(peer_gone(stream, buf, limit));
            let (packets, ended) = match select(taken, gone).await {
                Either::Left((Ok(got), _)) => got,
                Either::Left((Err(_), _)) => (vec![Payload::Text(Bytes::from_static(b"6"))], false),
                Either::Right(((), _)) => {
                    // engine.io: a poll closed before its answer ends the
                    // session (a closed tab, an aborted request).
                    s.inner().get_busy = false;
                    s.close();
                    return None;
                }
            };
            s.inner().get_busy = false;
            if ended {
                forget(&sid);
            }
            response(200, TEXT_PLAIN, &join_payload(&packets), ka, origin)
        }
        Action::Send(sid) => {
            let Some(s) = lookup(&sid) else {
                return Some(error_response(EioError::SessionUnknown, ka, origin));
            };
            let packets = match split_payload(&req.body) {
                Ok(p) => p,
                Err(_) => {
                    s.close();
                    return Some(error_response(EioError::BadRequest, ka, origin));
                }
            };
            let mut i = s.inner();
            if i.upgraded || i.stop {
                drop(i);
                s.close();
                return Some(error_response(EioError::BadRequest, ka, origin));
            }
            // The body is whole: the packets go to the connection at once,
            // up to the client's close packet, if any.
            let close_at = packets
                .iter()
                .position(|p| matches!(p, Payload::Text(t) if &t[..] == b"1"));
            let mut packets = packets;
            if let Some(at) = close_at {
                packets.truncate(at);
            }
            i.inbox.extend(packets);
            i.wake_owner();
            drop(i);
            if close_at.is_some() {
                s.client_closed();
            }
            response(200, "text/html", b"ok", ka, origin)
        }
    })
}

/// Opens a polling session: its socket-less connection on this shard and
/// the task that runs it; returns the open packet (upgrades: websocket).
fn open(shard: &Rc<Shard>, proto: ProtocolId) -> Option<Vec<u8>> {
    let cfg = shard.config();
    let sid = engineio::new_sid()?;
    let packet = engineio::open_packet(
        &sid,
        &["websocket"],
        engineio::OpenParams {
            ping_interval_ms: cfg.protocols.socketio.ping_interval,
            ping_timeout_ms: cfg.protocols.socketio.ping_timeout,
            max_payload: cfg.limits.max_message_size,
        },
    );
    let session = Arc::new(Session {
        sid: sid.into(),
        budget: cfg
            .limits
            .max_outbound_bytes
            .max(cfg.limits.max_message_size),
        inner: Mutex::new(Inner::default()),
    });
    locked(table()).insert(session.sid.clone(), session.clone());
    let state = protocol(proto).open(cfg);
    monoio::spawn(run(shard.clone(), session, state, proto));
    Some(packet)
}

/// The session's connection, from the handshake to its end.
async fn run(shard: Rc<Shard>, s: Arc<Session>, mut state: SessionState, proto: ProtocolId) {
    shard.session_started();
    let burst = shard.config().limits.rate_burst;
    let (conn, cref) =
        shard.add_conn(|key| Conn::socketless(key, s.clone(), proto, burst, Instant::now()));
    ws_session::expect_connect(&shard, &conn);
    ws_session::attach(&shard, proto, &mut state, cref);
    let handed = Box::pin(polled(&shard, &conn, cref, &s, &mut state)).await;
    match handed {
        Some((socket, pending)) => {
            let mut live = Live {
                conn: conn.clone(),
                cref,
                pending,
                state,
            };
            if take_socket(&shard, &conn, &s, socket) {
                Box::pin(ws_session::read_loop(&shard, &mut live, false, false)).await;
            }
        }
        None => drop(state),
    }
    conn.unpark_reader();
    shard.remove_conn(&conn);
    if conn.socket().is_some() {
        Box::pin(ws_session::drain(&shard, &conn)).await;
        forget(&s.sid);
        shard.session_ended();
        return;
    }
    // What the adapter still had to say goes to the queue, then the close
    // packet: a parked GET takes it. As engine.io does, a session with
    // something to deliver (an event before a server-side disconnect)
    // waits up to pingTimeout for a last GET to drain it; one with
    // nothing but pings (a ping timeout, a malformed packet) is forgotten
    // at once, so the next request gets 400 "Session ID unknown".
    let _ = shard.flush_now(&conn);
    let deliver = {
        let mut i = s.inner();
        i.end();
        i.get_busy || i.queue.iter().any(|p| !is_ping_or_close(p))
    };
    shard.session_ended();
    if deliver {
        let linger = Duration::from_millis(shard.config().protocols.socketio.ping_timeout);
        monoio::time::sleep(linger).await;
    }
    forget(&s.sid);
}

/// Engine.IO's ping `2`, noop `6` and close `1`: nothing a client needs
/// once its session is over.
fn is_ping_or_close(p: &Payload) -> bool {
    matches!(p, Payload::Text(t) if matches!(&t[..], b"1" | b"2" | b"6"))
}

/// What woke a socket-less connection.
enum Polled {
    Input(Vec<Payload>),
    Deadline,
    Handover(Handover),
    Stop,
}

/// Runs the connection while it is polled: the POSTs' packets through the
/// adapter, its deadlines. Returns the client's WebSocket once it upgraded.
async fn polled(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    cref: crate::runtime::shard::ConnRef,
    s: &Session,
    state: &mut SessionState,
) -> Option<Handover> {
    let proto = protocol(conn.proto);
    let mut msgs: Vec<Exchange> = Vec::new();
    loop {
        let timer = proto
            .next_deadline(state)
            .map(|at| monoio::time::sleep_until(at.into()));
        match wait(conn, s, timer).await {
            Polled::Stop => return None,
            Polled::Handover(h) => return Some(h),
            Polled::Deadline => {
                if let Step::Stop = ws_session::on_deadline(shard, conn, state) {
                    return None;
                }
            }
            Polled::Input(packets) => {
                let now = Instant::now();
                conn.last_seen.set(Tick::of(now));
                {
                    let mut parser = shard.parser.borrow_mut();
                    for p in &packets {
                        let (Payload::Text(m) | Payload::Binary(m)) = p;
                        ShardMetrics::inc(&shard.metrics.messages_in);
                        msgs.push(proto.handle_message(state, m, &mut parser, now));
                    }
                }
                ws_session::run_calls(shard, conn, cref, state, &mut msgs).await;
                if !conn.is_open() {
                    return None;
                }
            }
        }
    }
}

/// Waits for the next thing the connection must do.
async fn wait(conn: &Conn, s: &Session, timer: Option<impl Future<Output = ()>>) -> Polled {
    let mut timer = pin!(timer);
    poll_fn(|cx| {
        if !conn.is_open() {
            return Poll::Ready(Polled::Stop);
        }
        if conn.take_woken() {
            return Poll::Ready(Polled::Deadline);
        }
        if let Some(t) = timer.as_mut().as_pin_mut() {
            if t.poll(cx).is_ready() {
                return Poll::Ready(Polled::Deadline);
            }
        }
        let mut i = s.inner();
        if let Some(h) = i.handover.take() {
            return Poll::Ready(Polled::Handover(h));
        }
        // Packets a POST delivered before the client's close run first.
        if !i.inbox.is_empty() {
            return Poll::Ready(Polled::Input(std::mem::take(&mut i.inbox)));
        }
        if i.stop {
            return Poll::Ready(Polled::Stop);
        }
        i.owner = Some(cx.waker().clone());
        drop(i);
        // A server-side close (shutdown, slow consumer) wakes it too.
        conn.park_reader(cx.waker());
        Poll::Pending
    })
    .await
}

/// The connection takes the client's WebSocket: the packets still queued
/// (no GET took them) are framed and go out first, then what the
/// connection has queued since, then the rest as for any WebSocket client.
fn take_socket(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    s: &Session,
    socket: std::net::TcpStream,
) -> bool {
    let Ok(stream) = TcpStream::from_std(socket) else {
        return false;
    };
    let older: Vec<Bytes> = {
        let mut i = s.inner();
        i.queued_bytes = 0;
        i.queue
            .drain(..)
            .filter(|p| !matches!(p, Payload::Text(t) if &t[..] == b"6"))
            .map(|p| {
                let mut f = Vec::new();
                match p {
                    Payload::Text(t) => write_frame(&mut f, OpCode::Text, &t),
                    Payload::Binary(b) => write_frame(&mut f, OpCode::Binary, &b),
                }
                Bytes::from(f)
            })
            .collect()
    };
    if !conn.attach_socket(stream, older) {
        return false;
    }
    shard.mark_dirty(conn);
    true
}

/// The client's WebSocket for polling session `s` (`?sid=` on the upgrade,
/// already answered 101): `2probe` → `3probe` (and the noop `6` to a
/// parked GET), then on `5` the socket goes to the session's connection.
/// Anything else before `5` closes this WebSocket only.
pub(crate) async fn upgrade(
    shard: &Rc<Shard>,
    stream: TcpStream,
    mut buf: Vec<u8>,
    s: Arc<Session>,
) {
    let _ = stream.set_nodelay(true);
    let cfg = shard.config();
    let max = cfg.limits.max_message_size;
    let idle = Duration::from_millis(
        cfg.protocols.socketio.ping_interval + cfg.protocols.socketio.ping_timeout,
    );
    let mut ws = WsProtocol::new();
    let mut fault = "probe expected";
    let over = {
        let i = s.inner();
        i.upgraded || i.stop
    };
    if over {
        // engine.io closes a second WebSocket for an upgraded (or ended)
        // session at once.
        let _ = write_all(&stream, &close_frame(1000, "session already upgraded")).await;
        sys::shutdown_socket(stream.as_raw_fd(), Shutdown::Write);
        return;
    }
    'run: loop {
        // One frame at a time, so that nothing after `5` is taken here.
        while let Ok(Some((h, head))) = decode_header(&buf) {
            let Some(len) = usize::try_from(h.payload_len)
                .ok()
                .and_then(|n| n.checked_add(head))
                .filter(|len| *len <= max.saturating_add(14))
            else {
                fault = "message too large";
                break 'run;
            };
            if buf.len() < len {
                break;
            }
            let mut msgs: Vec<Vec<u8>> = Vec::new();
            let mut ctrl = Vec::new();
            let got = ws.handle_input(
                &mut buf[..len],
                max,
                &mut ctrl,
                |_, m: &[u8]| msgs.push(m.to_vec()),
                |_: &[u8]| {},
            );
            buf.drain(..len);
            if !ctrl.is_empty() && write_all(&stream, &ctrl).await.is_err() {
                return;
            }
            match got {
                Ok(p) if p.closed => return,
                Ok(_) => {}
                Err(_) => {
                    fault = "bad frame";
                    break 'run;
                }
            }
            for m in msgs {
                match &m[..] {
                    b"2probe" => {
                        let probe = crate::pubsub::publication::text_frame(b"3probe");
                        if write_all(&stream, &probe).await.is_err() {
                            return;
                        }
                        // The parked GET, or else the next one, returns
                        // the noop at once so the client can pause
                        // (engine.io sends it while the upgrade runs).
                        let mut i = s.inner();
                        if !i
                            .queue
                            .iter()
                            .any(|p| matches!(p, Payload::Text(t) if &t[..] == b"6"))
                        {
                            i.queue.push_back(Payload::Text(Bytes::from_static(b"6")));
                        }
                        i.wake_reader();
                    }
                    b"5" => {
                        let Ok(socket) = sys::dup_stream(stream.as_raw_fd()) else {
                            fault = "cannot hand the socket over";
                            break 'run;
                        };
                        let mut i = s.inner();
                        if i.get_busy || i.upgraded || i.stop {
                            // A GET still open: not the protocol's order.
                            fault = "upgrade while a GET is open";
                            break 'run;
                        }
                        i.upgraded = true;
                        i.handover = Some((socket, std::mem::take(&mut buf)));
                        i.wake_owner();
                        // This descriptor closes; the connection has its
                        // duplicate.
                        return;
                    }
                    _ => break 'run,
                }
            }
        }
        match monoio::time::timeout(idle, read_more(&stream, &mut buf)).await {
            Ok(true) => {}
            _ => return,
        }
    }
    let _ = write_all(&stream, &close_frame(1000, fault)).await;
    sys::shutdown_socket(stream.as_raw_fd(), Shutdown::Write);
}

/// Returns when the client closed the connection of a parked GET (or sent
/// more than `limit` bytes while it waits); a pipelined request is kept
/// in `buf`.
async fn peer_gone(stream: &TcpStream, buf: &mut Vec<u8>, limit: usize) {
    loop {
        if stream.readable(false).await.is_err() {
            return;
        }
        if recv(stream.as_raw_fd(), buf) == Some(false) || buf.len() > limit {
            return;
        }
    }
}

/// Reads what is there into `buf`; false when the peer is gone.
async fn read_more(stream: &TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        if stream.readable(false).await.is_err() {
            return false;
        }
        if let Some(r) = recv(stream.as_raw_fd(), buf) {
            return r;
        }
    }
}

/// One non-blocking read appended to `buf`; `None` when nothing was there.
fn recv(fd: RawFd, buf: &mut Vec<u8>) -> Option<bool> {
    let mut chunk = [0u8; 8192];
    match sys::recv_nonblocking(fd, &mut chunk) {
        Ok(0) => Some(false),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(true)
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) =>
        {
            None
        }
        Err(_) => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::write_close;

    #[test]
    fn server_frames_become_packets_sliced_from_the_shared_buffer() {
        let mut buf = Vec::new();
        write_frame(&mut buf, OpCode::Text, b"2");
        write_frame(&mut buf, OpCode::Ping, b"");
        let long = vec![b'x'; 300];
        write_frame(&mut buf, OpCode::Text, &long);
        write_frame(&mut buf, OpCode::Binary, &[1, 2]);
        write_close(&mut buf, 1000, "bye");
        let frames = Bytes::from(buf);
        let mut i = Inner::default();
        unframe(&frames, &mut i);
        let got: Vec<Payload> = i.queue.iter().cloned().collect();
        assert_eq!(
            got,
            vec![
                Payload::Text(Bytes::from_static(b"2")),
                Payload::Text(Bytes::from(long)),
                Payload::Binary(Bytes::from_static(&[1, 2])),
                Payload::Text(Bytes::from_static(b"1")),
            ]
        );
        assert!(i.ended);
        assert_eq!(i.queued_bytes, 1 + 300 + 2);
        // The long text is a slice of the frames' buffer, not a copy.
        let Payload::Text(t) = &i.queue[1] else {
            panic!()
        };
        let inside = frames.as_ptr_range();
        assert!(inside.contains(&t.as_ptr()));
        // A truncated frame is not queued.
        let mut j = Inner::default();
        unframe(&frames.slice(..frames.len() - 1 - 300), &mut j);
        assert_eq!(j.queue.len(), 1);
    }
}
