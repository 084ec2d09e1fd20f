//! DMOJ's long-poll (`GET /channels/<a>|<b>?last=<id>`) over plain HTTP,
//! on its own listener and under `[protocols.dmoj] poll_path` of the
//! public port. Parsing and answers are `protocol::dmoj`; this module only
//! moves bytes.
//!
//! A request that history can answer gets the first message after `last`
//! at once. Otherwise it is parked as a connection of the `dmoj-poll`
//! protocol subscribed to its channels: its publication form is the
//! complete `200` response, shared by every parked poller, and the shard
//! stops delivering to it after the first one ([`Protocol::one_shot`]).
//! Nothing is allocated for a parked request beyond what an idle WebSocket
//! connection holds. After `long_poll_timeout` it is answered `504`.
//! Connections are kept alive between requests (HTTP/1.1, or HTTP/1.0 with
//! `Connection: keep-alive`).
//!
//! [`Protocol::one_shot`]: crate::protocol::adapter::Protocol::one_shot

use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::net::TcpStream;

use crate::protocol::adapter::{by_name, Protocol, ProtocolId};
use crate::protocol::dmoj::{self, DmojPoll, Poll, PollRequest};
use crate::pubsub::ops::{Op, OpError, Outcome};
use crate::runtime::io::write_all;
use crate::runtime::shard::{Conn, Shard, WsSocket};
use crate::runtime::sys;

/// DMOJ's long-poll path on its own listener.
const LISTENER_PREFIX: &str = "/channels/";

/// Serves one connection accepted on the long-poll listener. A plain
/// function around [`run`], so that the stream is not kept twice in the
/// task (an async function keeps its arguments for as long as it runs).
/// `counted`: the descriptor's place in the node's count, given back when
/// the task ends. Spawn the returned future as it is (an `async` block
/// around it would hold it twice).
pub fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    counted: WsSocket,
) -> impl std::future::Future<Output = ()> {
    shard.session_started();
    run(shard, stream, Vec::new(), LISTENER_PREFIX, Some(counted))
}

/// Serves a connection of the public port whose first request (`buf`, read
/// so far) is a long-poll.
pub(crate) async fn serve_request(shard: &Rc<Shard>, stream: TcpStream, buf: Vec<u8>) {
    let prefix = shard.config().protocols.dmoj.poll_path.clone();
    run(shard.clone(), stream, buf, &prefix, None).await;
}

/// Ends a session's count when its task ends, however it ends.
struct SessionEnd<'a>(&'a Shard);

impl Drop for SessionEnd<'_> {
    fn drop(&mut self) {
        self.0.session_ended();
    }
}

/// Serves requests on `stream` until it closes; `counted`: this task owns
/// a session count ([`Shard::session_started`]) and the descriptor's
/// place in the node's count, both given back when it ends.
async fn run(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    prefix: &str,
    counted: Option<WsSocket>,
) {
    let _end = counted.map(|c| (SessionEnd(&shard), c));
    let shard = &shard;
    let timeout = Duration::from_secs(shard.config().protocols.dmoj.long_poll_timeout);
    // The short phases (reading a request, answering one, following the
    // channels, flushing) run boxed; the wait of a parked request runs in
    // this task's own state, as an idle WebSocket session's read loop
    // does, so a parked request holds no box of its own.
    loop {
        let Some(poll) = Box::pin(next_request(shard, &stream, &mut buf, prefix, timeout)).await
        else {
            return;
        };
        match poll {
            Poll::Incomplete => return,
            Poll::Answer {
                response,
                keep_alive,
                consumed,
            } => {
                if Box::pin(write_all(&stream, &response)).await.is_err() || !keep_alive {
                    sys::shutdown_socket(stream.as_raw_fd(), Shutdown::Write);
                    return;
                }
                take(&mut buf, consumed);
            }
            Poll::Wait(req, consumed) => {
                take(&mut buf, consumed);
                let keep_alive = req.keep_alive;
                let (conn, now_answer) = Box::pin(follow(shard, stream, req)).await;
                let gone = match now_answer {
                    Some(response) => {
                        answer(shard, &conn, response);
                        false
                    }
                    None => wait(shard, &conn, &mut buf).await,
                };
                shard.remove_conn(&conn);
                if gone || !Box::pin(flushed(shard, &conn)).await {
                    return;
                }
                let Some(s) = Rc::try_unwrap(conn).ok().and_then(Conn::into_stream) else {
                    return;
                };
                if !keep_alive {
                    sys::shutdown_socket(s.as_raw_fd(), Shutdown::Write);
                    return;
                }
                stream = s;
            }
        }
    }
}

/// Reads until `buf` holds a request head (or an answer to one); `None`
/// when the peer left or stayed idle for `timeout`.
async fn next_request(
    shard: &Shard,
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    prefix: &str,
    timeout: Duration,
) -> Option<Poll> {
    loop {
        match dmoj::parse_poll(buf, prefix) {
            Poll::Incomplete => {}
            p => return Some(p),
        }
        // An idle keep-alive connection is closed after the poll timeout.
        match monoio::time::timeout(timeout, read_more(shard, stream, buf)).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return None,
        }
    }
}

/// Drops the first `n` bytes; an emptied buffer gives its memory back.
fn take(buf: &mut Vec<u8>, n: usize) {
    buf.drain(..n.min(buf.len()));
    if buf.is_empty() {
        *buf = Vec::new();
    }
}

/// Reads what is there into `buf`; false when the peer is gone.
async fn read_more(shard: &Shard, stream: &TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        if stream.readable(false).await.is_err() {
            return false;
        }
        match recv_into(shard, stream.as_raw_fd(), buf) {
            Some(true) => return true,
            Some(false) => return false,
            None => {}
        }
    }
}

/// One non-blocking read through the shard's scratch buffer (an idle or
/// parked request holds no read buffer of its own) appended to `buf`:
/// `Some(false)` when the peer is gone, `None` when there was nothing.
fn recv_into(shard: &Shard, fd: std::os::fd::RawFd, buf: &mut Vec<u8>) -> Option<bool> {
    let mut scratch = shard.scratch.borrow_mut();
    match sys::recv_nonblocking(fd, &mut scratch) {
        Ok(0) => Some(false),
        Ok(n) => {
            buf.extend_from_slice(&scratch[..n]);
            Some(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
        Err(_) => Some(false),
    }
}

fn poll_protocol() -> ProtocolId {
    by_name(DmojPoll.name()).unwrap_or(0)
}

/// Registers the request as a connection following its channels; with
/// the answer history already has, if any (else it is parked).
async fn follow(
    shard: &Rc<Shard>,
    stream: TcpStream,
    req: PollRequest,
) -> (Rc<Conn>, Option<Bytes>) {
    let burst = shard.config().limits.rate_burst;
    let proto = poll_protocol();
    let (conn, cref) = shard.add_conn(|key| Conn::new(key, stream, proto, burst, Instant::now()));
    let op = Op::Follow {
        channels: req.channels,
        after_id: Some(req.last),
    };
    let now_answer = match shard.run_client_op(&conn, cref, &op).await {
        Ok(Outcome::Followed { replay }) => replay
            .first()
            .map(|p| Bytes::from(dmoj::poll_message_response(p))),
        Ok(_) => Some(error_response(503, "unexpected answer")),
        Err(e @ OpError::TooManySubscriptions(_)) => Some(error_response(400, &e.to_string())),
        Err(e @ OpError::RateLimited) => Some(error_response(429, &e.to_string())),
        Err(e) => Some(error_response(503, &e.to_string())),
    };
    (conn, now_answer)
}

/// Waits until the request is answered (a delivery, or the shard timer's
/// 504 after `long_poll_timeout`) and the client sends its next request or
/// leaves; true when it left. No timer of its own: a parked request costs
/// what an idle WebSocket connection does.
async fn wait(shard: &Shard, conn: &Conn, buf: &mut Vec<u8>) -> bool {
    while conn.is_open() || buf.is_empty() {
        let Some(stream) = conn.socket() else {
            return true;
        };
        if stream.readable(false).await.is_err() {
            return true;
        }
        // The next request (after the answer) or a pipelined one is kept.
        if recv_into(shard, conn.fd(), buf) == Some(false) {
            return true;
        }
    }
    false
}

/// Queues `response` unless a delivery already answered the request.
fn answer(shard: &Shard, conn: &Rc<Conn>, response: Bytes) {
    if conn.is_open() {
        conn.mark_closing(Instant::now());
        shard.send_control(conn, response);
    }
}

fn error_response(status: u16, message: &str) -> Bytes {
    let mut body = br#"{"error": "#.to_vec();
    crate::pubsub::publication::write_json_str(&mut body, message);
    body.push(b'}');
    Bytes::from(dmoj::poll_response(status, "application/json", &body, true))
}

/// Writes what is queued for `conn`; false when it could not all go out.
async fn flushed(shard: &Shard, conn: &Conn) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while conn.has_writable() {
        match shard.flush_now(conn) {
            Ok((true, _)) => break,
            Ok((false, _)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let Some(stream) = conn.socket() else {
                    return false;
                };
                if left.is_zero()
                    || monoio::time::timeout(left, stream.writable(false))
                        .await
                        .is_err()
                {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::config::Config;
    use crate::runtime::shard::Node;

    fn socket() -> TcpStream {
        let (peer, stream) = crate::runtime::shard::loopback_pair();
        std::mem::forget(peer);
        stream
    }

    /// A parked request's state is its task's (no box beside it), and that
    /// task stays small: 560 B when this bound was set, beside an idle
    /// WebSocket session's 512 B (it was no larger than the WebSocket
    /// session's 896 B until those lost the stream they kept twice and
    /// their handshake's state; a parked request still keeps the slot of
    /// the stream it hands to its connection while parked).
    #[test]
    fn a_parked_poll_task_stays_small() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let shard = Shard::new(0, Node::new(Config::default(), 1), "epoll");
            let mut buf = Vec::new();
            let (conn, _) = shard.add_conn(|key| Conn::new(key, socket(), 0, 1, Instant::now()));
            let wait_size = std::mem::size_of_val(&wait(&shard, &conn, &mut buf));
            let counted = shard.node.open_ws_socket().expect("a descriptor place");
            let poll = std::mem::size_of_val(&serve(shard.clone(), socket(), counted));
            let ws = std::mem::size_of_val(&crate::runtime::shard::ws_session::serve_as(
                shard.clone(),
                socket(),
                None,
                None,
            ));
            eprintln!(
                "wait future: {wait_size} B; long-poll task: {poll} B; WebSocket task: {ws} B"
            );
            assert!(poll <= 576, "long-poll task grew to {poll} B");
        });
    }
}
