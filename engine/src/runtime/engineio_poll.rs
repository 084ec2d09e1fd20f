//! Engine.IO v4 long-polling (the transport the stock socket.io clients
//! open with) and its upgrade to WebSocket. Requests and answers are
//! `protocol::socketio::polling`; this module moves bytes.
//!
//! A polling session is bridged onto an ordinary Socket.IO WebSocket
//! connection: the handshake opens a WebSocket connection to this engine's
//! own listener over loopback, and everything the Socket.IO adapter does
//! (CONNECT and auth, LQDOJ's events, subscriptions, Engine.IO pings and
//! the pong timeout, `max_connections`/`max_clients`) happens there
//! unchanged. The bridge task (on the shard that served the handshake)
//! queues what that connection sends in the session; a long GET takes the
//! queue, a POST's packets are written to it. Sessions are found by sid in
//! one process-wide table, so a request may land on any shard; its lock is
//! held only to move packets. When the client upgrades, its WebSocket
//! becomes the session's reader and writer in place of the GET and POST:
//! one queue, one Socket.IO connection, so nothing is lost or sent twice
//! across the switch.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_channel::mpsc;
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use monoio::net::TcpStream;

use crate::ops::metrics::ShardMetrics;
use crate::protocol::socketio::polling::{
    self, action, error_response, frame, join_payload, parse, parse_frame, response, split_payload,
    Action, EioError, Payload, PollRequest, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT,
};
use crate::runtime::io::write_all;
use crate::runtime::shard::Shard;
use crate::runtime::sys;

const TEXT_PLAIN: &str = "text/plain; charset=UTF-8";

/// What a session's client sends toward the engine.
enum Out {
    Packet(Payload),
    Close,
}

/// One polling session, shared by the requests that serve it.
pub(crate) struct Session {
    sid: String,
    inner: Mutex<Inner>,
    to_engine: mpsc::UnboundedSender<Out>,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Payload>,
    queued_bytes: usize,
    /// The engine side is gone; a close packet is queued last.
    ended: bool,
    /// The parked GET or, once upgraded, the WebSocket.
    reader: Option<Waker>,
    get_busy: bool,
    post_busy: bool,
    upgraded: bool,
}

fn table() -> &'static Mutex<HashMap<String, Arc<Session>>> {
    static TABLE: OnceLock<Mutex<HashMap<String, Arc<Session>>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The live polling session `sid`, if any.
pub(crate) fn lookup(sid: &str) -> Option<Arc<Session>> {
    locked(table()).get(sid).cloned()
}

/// Polling sessions open now.
pub fn session_count() -> usize {
    locked(table()).len()
}

impl Session {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        locked(&self.inner)
    }

    /// Queues a packet from the engine for the client; over `budget`
    /// bytes the session ends (a client that stopped polling).
    fn push(&self, p: Payload, budget: usize) -> bool {
        let mut i = self.inner();
        let len = match &p {
            Payload::Text(t) | Payload::Binary(t) => t.len(),
        };
        if i.queued_bytes + len > budget {
            return false;
        }
        i.queued_bytes += len;
        i.queue.push_back(p);
        if let Some(w) = i.reader.take() {
            w.wake();
        }
        true
    }

    /// The engine side is gone: a close packet goes last.
    fn end(&self) {
        let mut i = self.inner();
        if !i.ended {
            i.ended = true;
            i.queue.push_back(Payload::Text(b"1".to_vec()));
        }
        if let Some(w) = i.reader.take() {
            w.wake();
        }
    }

    /// Ends the session from the client's side (or for its fault).
    fn close(&self) {
        let _ = self.to_engine.unbounded_send(Out::Close);
        self.end();
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

fn forget(sid: &str) {
    locked(table()).remove(sid);
}

/// Serves a connection whose first request (`buf`, read so far) is an
/// Engine.IO polling request, and the requests after it (keep-alive).
pub(crate) async fn serve_request(shard: &Rc<Shard>, stream: TcpStream, mut buf: Vec<u8>) {
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
        ShardMetrics::inc(&shard.metrics.polling_requests);
        let out = Box::pin(answer(shard, &stream, &req)).await;
        if write_all(&stream, &out).await.is_err() || !req.keep_alive {
            sys::shutdown_socket(stream.as_raw_fd(), Shutdown::Write);
            return;
        }
    }
}

async fn answer(shard: &Rc<Shard>, stream: &TcpStream, req: &PollRequest) -> Vec<u8> {
    let origin = req.origin.as_deref();
    let ka = req.keep_alive;
    let act = match action(req) {
        Ok(a) => a,
        Err(e) => return error_response(e, ka, origin),
    };
    match act {
        Action::Preflight => response(204, TEXT_PLAIN, b"", ka, origin),
        Action::Handshake => match stream.local_addr() {
            Ok(local) => match open(shard, local, req).await {
                Ok(packet) => response(200, TEXT_PLAIN, &packet, ka, origin),
                Err((status, body)) => response(status, TEXT_PLAIN, &body, ka, origin),
            },
            Err(_) => response(503, TEXT_PLAIN, b"no local address", ka, origin),
        },
        Action::Poll(sid) => {
            let Some(s) = lookup(&sid) else {
                return error_response(EioError::SessionUnknown, ka, origin);
            };
            {
                let mut i = s.inner();
                if i.upgraded {
                    drop(i);
                    return error_response(EioError::BadRequest, ka, origin);
                }
                if i.get_busy {
                    // engine.io: overlapping polls close the session.
                    drop(i);
                    s.close();
                    return response(400, TEXT_PLAIN, b"", ka, origin);
                }
                i.get_busy = true;
            }
            let cfg = shard.config();
            let wait = Duration::from_millis(
                cfg.protocols.socketio.ping_interval + cfg.protocols.socketio.ping_timeout,
            );
            let (packets, ended) = match monoio::time::timeout(wait, s.take()).await {
                Ok(got) => got,
                Err(_) => (vec![Payload::Text(b"6".to_vec())], false),
            };
            s.inner().get_busy = false;
            if ended {
                forget(&sid);
            }
            response(200, TEXT_PLAIN, &join_payload(&packets), ka, origin)
        }
        Action::Send(sid) => {
            let Some(s) = lookup(&sid) else {
                return error_response(EioError::SessionUnknown, ka, origin);
            };
            let packets = match split_payload(&req.body) {
                Ok(p) => p,
                Err(_) => {
                    s.close();
                    return error_response(EioError::BadRequest, ka, origin);
                }
            };
            {
                let mut i = s.inner();
                if i.post_busy || i.upgraded {
                    drop(i);
                    s.close();
                    return error_response(EioError::BadRequest, ka, origin);
                }
                i.post_busy = true;
            }
            for p in packets {
                let _ = s.to_engine.unbounded_send(Out::Packet(p));
            }
            s.inner().post_busy = false;
            response(200, "text/html", b"ok", ka, origin)
        }
    }
}

/// Opens the session's Socket.IO connection over loopback and answers the
/// handshake with its open packet (upgrades: websocket).
async fn open(
    shard: &Rc<Shard>,
    local: SocketAddr,
    req: &PollRequest,
) -> Result<Vec<u8>, (u16, Vec<u8>)> {
    let cfg = shard.config();
    let unavailable = |m: &str| (503, m.as_bytes().to_vec());
    let stream = TcpStream::connect(local)
        .await
        .map_err(|_| unavailable("cannot open the session"))?;
    let _ = stream.set_nodelay(true);
    let mut head = format!(
        "GET {}?EIO=4&transport=websocket HTTP/1.1\r\nHost: {local}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: cmluZ2Nhc3QtcG9sbGluZw==\r\nSec-WebSocket-Version: 13\r\n",
        req.path
    );
    if let Some(o) = req.origin.as_deref().filter(|o| !o.contains(['\r', '\n'])) {
        head.push_str("Origin: ");
        head.push_str(o);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    write_all(&stream, head.as_bytes())
        .await
        .map_err(|_| unavailable("cannot open the session"))?;
    let max = cfg.limits.max_message_size.max(4096);
    let mut buf = Vec::new();
    let read = async {
        loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let status: u16 = std::str::from_utf8(&buf[..at])
                    .ok()
                    .and_then(|h| h.split(' ').nth(1))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(502);
                if status != 101 {
                    // The refusal's body (its reason) follows the head.
                    let _ = monoio::time::timeout(
                        Duration::from_millis(200),
                        read_more(&stream, &mut buf),
                    )
                    .await;
                    return Err((status, buf[at + 4..].to_vec()));
                }
                buf.drain(..at + 4);
                break;
            }
            if buf.len() > 16 * 1024 || !read_more(&stream, &mut buf).await {
                return Err(unavailable("the session was refused"));
            }
        }
        loop {
            match parse_frame(&buf, max) {
                Ok(Some(f)) if f.opcode == OP_TEXT => {
                    buf.drain(..f.consumed);
                    return Ok(f.payload);
                }
                Ok(Some(_)) | Err(_) => return Err(unavailable("the session was refused")),
                Ok(None) => {}
            }
            if !read_more(&stream, &mut buf).await {
                return Err(unavailable("the session was refused"));
            }
        }
    };
    let open = monoio::time::timeout(cfg.handshake_timeout(), read)
        .await
        .map_err(|_| unavailable("the session did not open in time"))??;
    let mut json: serde_json::Value = open
        .get(1..)
        .and_then(|j| serde_json::from_slice(j).ok())
        .ok_or_else(|| unavailable("bad open packet"))?;
    let sid = json
        .get("sid")
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .ok_or_else(|| unavailable("bad open packet"))?;
    json["upgrades"] = serde_json::json!(["websocket"]);
    let mut packet = b"0".to_vec();
    packet.extend_from_slice(json.to_string().as_bytes());
    let (tx, rx) = mpsc::unbounded();
    let session = Arc::new(Session {
        sid: sid.clone(),
        inner: Mutex::new(Inner::default()),
        to_engine: tx,
    });
    locked(table()).insert(sid, session.clone());
    let budget = cfg.limits.max_outbound_bytes.max(max);
    let linger = Duration::from_millis(cfg.protocols.socketio.ping_timeout);
    monoio::spawn(bridge(session, stream, buf, rx, max, budget, linger));
    Ok(packet)
}

/// Carries the session between its queue and its Socket.IO connection
/// until that connection ends; then leaves the close packet for a last
/// GET for up to `linger`.
async fn bridge(
    s: Arc<Session>,
    stream: TcpStream,
    mut buf: Vec<u8>,
    mut rx: mpsc::UnboundedReceiver<Out>,
    max: usize,
    budget: usize,
    linger: Duration,
) {
    let mut partial: Option<(u8, Vec<u8>)> = None;
    'run: loop {
        loop {
            let f = match parse_frame(&buf, max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'run,
            };
            buf.drain(..f.consumed);
            let whole = match (f.opcode, partial.take()) {
                (OP_CONT, Some((op, mut acc))) => {
                    acc.extend_from_slice(&f.payload);
                    Some((op, acc))
                }
                (OP_TEXT | OP_BINARY, None) => Some((f.opcode, f.payload)),
                (OP_PING, p) => {
                    partial = p;
                    if write_all(&stream, &frame(10, &f.payload, true))
                        .await
                        .is_err()
                    {
                        break 'run;
                    }
                    None
                }
                (OP_CLOSE, _) => break 'run,
                (_, p) => {
                    partial = p;
                    None
                }
            };
            if let Some((op, data)) = whole {
                if !f.fin {
                    partial = Some((op, data));
                    continue;
                }
                let p = if op == OP_TEXT {
                    Payload::Text(data)
                } else {
                    Payload::Binary(data)
                };
                if !s.push(p, budget) {
                    break 'run;
                }
            }
        }
        let readable = pin!(stream.readable(false));
        let next = pin!(rx.next());
        match select(readable, next).await {
            Either::Left((Ok(_), _)) => {
                if !read_some(stream.as_raw_fd(), &mut buf) {
                    break;
                }
            }
            Either::Left((Err(_), _)) => break,
            Either::Right((Some(Out::Packet(p)), _)) => {
                let f = match p {
                    Payload::Text(t) => frame(OP_TEXT, &t, true),
                    Payload::Binary(b) => frame(OP_BINARY, &b, true),
                };
                if write_all(&stream, &f).await.is_err() {
                    break;
                }
            }
            Either::Right((Some(Out::Close) | None, _)) => break,
        }
    }
    let _ = write_all(&stream, &frame(OP_CLOSE, &1000u16.to_be_bytes(), true)).await;
    sys::shutdown_socket(stream.as_raw_fd(), Shutdown::Both);
    s.end();
    drop(stream);
    if !s.inner().upgraded {
        monoio::time::sleep(linger).await;
    }
    forget(&s.sid);
}

/// The client's WebSocket for polling session `s` (`?sid=` on the
/// upgrade, already answered 101): the probe, then the session over it.
pub(crate) async fn upgraded(stream: TcpStream, mut buf: Vec<u8>, s: Arc<Session>, max: usize) {
    let mut partial: Option<(u8, Vec<u8>)> = None;
    let mut upgraded = false;
    'run: loop {
        loop {
            let f = match parse_frame(&buf, max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'run,
            };
            buf.drain(..f.consumed);
            let whole = match (f.opcode, partial.take()) {
                (OP_CONT, Some((op, mut acc))) => {
                    acc.extend_from_slice(&f.payload);
                    Some((op, acc))
                }
                (OP_TEXT | OP_BINARY, None) => Some((f.opcode, f.payload)),
                (OP_PING, p) => {
                    partial = p;
                    if write_all(&stream, &frame(10, &f.payload, false))
                        .await
                        .is_err()
                    {
                        break 'run;
                    }
                    None
                }
                (OP_CLOSE, _) => break 'run,
                (_, p) => {
                    partial = p;
                    None
                }
            };
            let Some((op, data)) = whole else { continue };
            if !f.fin {
                partial = Some((op, data));
                continue;
            }
            if !upgraded {
                match &data[..] {
                    b"2probe" => {
                        if write_all(&stream, &frame(OP_TEXT, b"3probe", false))
                            .await
                            .is_err()
                        {
                            break 'run;
                        }
                        // The parked GET returns so the client can pause.
                        let mut i = s.inner();
                        if i.get_busy {
                            i.queue.push_back(Payload::Text(b"6".to_vec()));
                            if let Some(w) = i.reader.take() {
                                w.wake();
                            }
                        }
                    }
                    b"5" => {
                        let mut i = s.inner();
                        if i.get_busy || i.upgraded {
                            // A GET still open: not the protocol's order.
                            drop(i);
                            break 'run;
                        }
                        i.upgraded = true;
                        upgraded = true;
                    }
                    _ => break 'run,
                }
                continue;
            }
            let p = if op == OP_TEXT {
                Payload::Text(data)
            } else {
                Payload::Binary(data)
            };
            let _ = s.to_engine.unbounded_send(Out::Packet(p));
        }
        let readable = pin!(stream.readable(false));
        if !upgraded {
            match readable.await {
                Ok(_) if read_some(stream.as_raw_fd(), &mut buf) => continue,
                _ => break,
            }
        }
        let queued = pin!(s.take());
        match select(readable, queued).await {
            Either::Left((Ok(_), _)) => {
                if !read_some(stream.as_raw_fd(), &mut buf) {
                    break;
                }
            }
            Either::Left((Err(_), _)) => break,
            Either::Right(((packets, ended), _)) => {
                let mut out = Vec::new();
                for p in &packets {
                    match p {
                        Payload::Text(t) if ended && t == b"1" => {}
                        Payload::Text(t) => out.extend_from_slice(&frame(OP_TEXT, t, false)),
                        Payload::Binary(b) => out.extend_from_slice(&frame(OP_BINARY, b, false)),
                    }
                }
                if write_all(&stream, &out).await.is_err() || ended {
                    break;
                }
            }
        }
    }
    let _ = write_all(&stream, &frame(OP_CLOSE, &1000u16.to_be_bytes(), false)).await;
    sys::shutdown_socket(stream.as_raw_fd(), Shutdown::Write);
    if upgraded {
        s.close();
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

/// One readable wake-up: false when the peer is gone.
fn read_some(fd: RawFd, buf: &mut Vec<u8>) -> bool {
    recv(fd, buf).unwrap_or(true)
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
