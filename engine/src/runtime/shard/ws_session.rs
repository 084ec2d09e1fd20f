//! One WebSocket client connection: the upgrade, the read loop and the
//! execution of its JSON-RPC calls. Bytes are read with a readiness wait
//! plus a non-blocking `recv` into the shard's shared scratch buffer, so an
//! idle connection holds no read buffer; only a partial frame is kept.

use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::net::TcpStream;

use super::conn::Conn;
use super::{ConnRef, HomeAnswer, HomeQuery, Shard, SubscribeInfo};
use crate::ops::config::Dialect;
use crate::ops::metrics::ShardMetrics;
use crate::protocol::handshake::{parse_upgrade, HandshakeError, Upgrade, MAX_REQUEST_HEAD};
use crate::protocol::rpc::{self, Call, ClientMethod, Incoming, ReplyWriter, RpcError};
use crate::protocol::websocket::WsProtocol;
use crate::pubsub::publication::{text_frame, write_json_str};
use crate::runtime::sys;

type Parsed = Result<Incoming<ClientMethod>, RpcError>;

/// Serves one accepted connection to the end.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    shard.session_started();
    session(&shard, stream).await;
    shard.session_ended();
}

async fn session(shard: &Rc<Shard>, stream: TcpStream) {
    // The handshake, the RPC execution and the final drain run as boxed
    // futures: they are short-lived, and keeping them out of the session's
    // own state machine keeps an idle connection's task small.
    let Some((stream, dialect, mut pending)) = Box::pin(handshake(shard, stream)).await else {
        return;
    };
    let burst = shard.config().limits.rate_burst;
    let (conn, cref) = shard.add_conn(|key| Conn::new(key, stream, dialect, burst, Instant::now()));
    read_loop(shard, &conn, cref, &mut pending).await;
    shard.remove_conn(&conn);
    Box::pin(drain(shard, &conn)).await;
}

/// Upgrades the connection: the stream, its dialect and any bytes that
/// came after the request, or `None` when the upgrade failed.
async fn handshake(shard: &Shard, stream: TcpStream) -> Option<(TcpStream, Dialect, Vec<u8>)> {
    let _ = stream.set_nodelay(true);
    let cfg = shard.config();
    let mut buf = Vec::new();
    let read = monoio::time::timeout(
        cfg.handshake_timeout(),
        read_upgrade(&stream, &mut buf, &cfg.ws.allowed_origins),
    );
    let upgrade = match read.await {
        Ok(Ok(u)) => u,
        Ok(Err(Some(e))) => {
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
    let dialect = match upgrade.query_param("dialect") {
        Some("rocketws") => Dialect::Rocketws,
        Some("native") => Dialect::Native,
        _ => cfg.ws.dialect,
    };
    write_all(&stream, &upgrade.response_101()).await.ok()?;
    let pending = buf.split_off(upgrade.consumed);
    Some((stream, dialect, pending))
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
        stream.readable(false).await.map_err(|_| None)?;
        match sys::recv_nonblocking(fd, &mut chunk) {
            Ok(0) => return Err(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(None),
        }
    }
}

/// Writes `data` fully (used only before the connection is registered).
pub(crate) async fn write_all(stream: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    let fd = stream.as_raw_fd();
    while !data.is_empty() {
        match sys::send_nonblocking(fd, data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stream.writable(false).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

enum Step {
    Continue,
    Stop,
}

async fn read_loop(shard: &Rc<Shard>, conn: &Rc<Conn>, cref: ConnRef, pending: &mut Vec<u8>) {
    let mut ws = WsProtocol::new();
    let mut msgs: Vec<Parsed> = Vec::new();
    if !pending.is_empty() {
        // Frames that arrived with the upgrade request.
        let step = ingest(shard, conn, &mut ws, pending, 0, &mut msgs);
        run_calls(shard, conn, cref, &mut msgs).await;
        if let Step::Stop = step {
            return;
        }
    }
    let fd = conn.fd();
    loop {
        if !conn.is_open() || conn.stream.readable(false).await.is_err() {
            return;
        }
        loop {
            let got = {
                let mut scratch = shard.scratch.borrow_mut();
                sys::recv_nonblocking(fd, &mut scratch)
            };
            let n = match got {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            conn.last_seen.set(Instant::now());
            let step = ingest(shard, conn, &mut ws, pending, n, &mut msgs);
            run_calls(shard, conn, cref, &mut msgs).await;
            if let Step::Stop = step {
                return;
            }
            if !conn.is_open() {
                return;
            }
            if n < shard.scratch.borrow().len() {
                break;
            }
        }
    }
}

/// Feeds `n` new bytes (in the shard scratch buffer) through the WebSocket
/// state machine; complete messages are parsed into `msgs`.
fn ingest(
    shard: &Shard,
    conn: &Rc<Conn>,
    ws: &mut WsProtocol,
    pending: &mut Vec<u8>,
    n: usize,
    msgs: &mut Vec<Parsed>,
) -> Step {
    let max = shard.config().limits.max_message_size;
    let mut scratch = shard.scratch.borrow_mut();
    let mut parser = shard.parser.borrow_mut();
    let mut ctrl = Vec::new();
    let mut on_message = |_kind, payload: &[u8]| {
        ShardMetrics::inc(&shard.metrics.messages_in);
        msgs.push(parser.parse::<ClientMethod>(payload));
    };
    let on_pong = |_: &[u8]| conn.ping_sent.set(None);
    let result = if pending.is_empty() {
        let input = &mut scratch[..n];
        let r = ws.handle_input(input, max, &mut ctrl, &mut on_message, on_pong);
        if let Ok(p) = &r {
            pending.extend_from_slice(&input[p.consumed..]);
        }
        r
    } else {
        pending.extend_from_slice(&scratch[..n]);
        let r = ws.handle_input(pending, max, &mut ctrl, &mut on_message, on_pong);
        if let Ok(p) = &r {
            pending.drain(..p.consumed);
            if pending.is_empty() {
                // Give the memory back: idle connections hold no buffer.
                *pending = Vec::new();
            }
        }
        r
    };
    drop(scratch);
    drop(parser);
    let step = match result {
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
    };
    if !ctrl.is_empty() {
        shard.send_control(conn, Bytes::from(ctrl));
    }
    step
}

/// Runs [`execute`] boxed, and only when there is something to run.
async fn run_calls(shard: &Rc<Shard>, conn: &Rc<Conn>, cref: ConnRef, msgs: &mut Vec<Parsed>) {
    if !msgs.is_empty() {
        Box::pin(execute(shard, conn, cref, msgs)).await;
        // Idle connections keep no request buffer.
        *msgs = Vec::new();
    }
}

/// Executes parsed messages in order; each one's reply goes where the
/// message's hold was placed, ahead of anything queued after it.
async fn execute(shard: &Rc<Shard>, conn: &Rc<Conn>, cref: ConnRef, msgs: &mut Vec<Parsed>) {
    for parsed in msgs.drain(..) {
        let hold = conn.push_hold();
        let reply = match parsed {
            Err(e) => {
                let mut w = ReplyWriter::new(false);
                w.error_null(&e);
                w.finish()
            }
            Ok(Incoming::Single(call)) => {
                let mut w = ReplyWriter::new(false);
                exec_call(shard, conn, cref, call, &mut w).await;
                w.finish()
            }
            Ok(Incoming::Batch(calls)) => {
                let mut w = ReplyWriter::new(true);
                for call in calls {
                    exec_call(shard, conn, cref, call, &mut w).await;
                }
                w.finish()
            }
        };
        conn.fill_hold(hold, reply.map(|json| text_frame(&json)));
        shard.mark_dirty(conn);
    }
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(-32603, format!("internal error: {e}"))
}

async fn exec_call(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    cref: ConnRef,
    call: Call<ClientMethod>,
    w: &mut ReplyWriter,
) {
    let id = call.id.as_deref();
    let method = match call.method {
        Ok(m) => m,
        Err(e) => return w.reply(id, Err(&e)),
    };
    let limits = &shard.config().limits;
    let mut bucket = conn.bucket.get();
    let allowed = bucket.take(limits.rate_per_sec, limits.rate_burst, Instant::now());
    conn.bucket.set(bucket);
    if !allowed {
        return w.reply(id, Err(&RpcError::new(rpc::RATE_LIMITED, "rate limited")));
    }
    let rocket = conn.dialect == Dialect::Rocketws;
    let result: Result<Vec<u8>, RpcError> = match method {
        ClientMethod::Heartbeat => Ok(br#"{"heartbeat":"ok"}"#.to_vec()),
        ClientMethod::Subscribe { channel, since } => subscribe(shard, conn, cref, &channel, since)
            .await
            .map(|info| {
                if rocket {
                    br#""subscribed""#.to_vec()
                } else {
                    subscribe_result(&channel, &info)
                }
            }),
        ClientMethod::Unsubscribe { channel } => {
            if shard.unsubscribe(conn, &channel) || rocket {
                Ok(if rocket {
                    br#""unsubscribed""#.to_vec()
                } else {
                    channel_result(&channel)
                })
            } else {
                Err(not_subscribed(&channel))
            }
        }
        ClientMethod::SendData { channel, data } => {
            send_data(shard, conn, &channel, data, rocket).await
        }
        ClientMethod::History {
            channel,
            since,
            limit,
        } => match shard
            .ask_home(&channel, HomeQuery::History { since, limit })
            .await
        {
            Ok(HomeAnswer::History(h)) => Ok(history_result(&h)),
            Ok(_) => Err(internal("unexpected answer")),
            Err(e) => Err(internal(e)),
        },
    };
    w.reply(id, result.as_deref());
}

async fn subscribe(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    cref: ConnRef,
    channel: &str,
    since: Option<crate::pubsub::home_shard::Since>,
) -> Result<SubscribeInfo, RpcError> {
    if shard.is_subscribed(conn, channel) {
        // Already in: report where the channel is, change nothing.
        return match shard.ask_home(channel, HomeQuery::Last).await {
            Ok(HomeAnswer::Last(offset, epoch)) => Ok(SubscribeInfo {
                offset,
                epoch,
                recovered: None,
                missed: None,
            }),
            Ok(_) => Err(internal("unexpected answer")),
            Err(e) => Err(internal(e)),
        };
    }
    let max = shard.config().limits.max_subscriptions_per_connection;
    if conn.subs.borrow().len() >= max {
        return Err(RpcError::limit(
            "max_subscriptions_per_connection",
            format!("limit exceeded: at most {max} subscriptions per connection"),
        ));
    }
    shard
        .subscribe(conn, cref, channel, since)
        .await
        .map_err(internal)
}

async fn send_data(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    channel: &str,
    data: Bytes,
    rocket: bool,
) -> Result<Vec<u8>, RpcError> {
    if !shard.config().ws.client_publish {
        return Err(RpcError::new(
            rpc::PERMISSION_DENIED,
            "permission denied: clients may not publish on this server",
        ));
    }
    if !shard.is_subscribed(conn, channel) {
        if rocket {
            let peer = conn
                .stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "unknown".into());
            return Err(RpcError::new(
                rpc::SERVER_ERROR,
                format!("client {peer} is not subscribed to channel {channel}"),
            ));
        }
        return Err(not_subscribed(channel));
    }
    if rocket && data.first() != Some(&b'{') {
        return Err(RpcError::invalid_params(
            "invalid params: \"data\" must be a JSON object",
        ));
    }
    let exclude = Some((shard.id, conn.key));
    let r = shard
        .publish(channel, data, exclude)
        .await
        .map_err(internal)?;
    Ok(if rocket {
        format!("\"emitted: {}\"", r.subscribers).into_bytes()
    } else {
        format!(
            r#"{{"offset":{},"subscribers":{}}}"#,
            r.offset, r.subscribers
        )
        .into_bytes()
    })
}

fn not_subscribed(channel: &str) -> RpcError {
    RpcError::new(rpc::NOT_SUBSCRIBED, format!("not subscribed: {channel}"))
}

fn channel_result(channel: &str) -> Vec<u8> {
    let mut out = br#"{"channel":"#.to_vec();
    write_json_str(&mut out, channel);
    out.push(b'}');
    out
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

/// `{"publications":[...],"offset":N,"epoch":E}`
pub fn history_result(h: &crate::pubsub::home_shard::HistoryOutcome) -> Vec<u8> {
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

/// After the reader stopped: give queued frames (a close frame above all)
/// a bounded time to leave, then let the socket close.
async fn drain(shard: &Rc<Shard>, conn: &Rc<Conn>) {
    // On shutdown queued frames get the whole shutdown_timeout to leave.
    let budget = if shard.shutdown.is_raised() {
        shard.config().shutdown_timeout()
    } else {
        Duration::from_secs(2)
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
                if monoio::time::timeout(left, conn.stream.writable(false))
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
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            s.set_nonblocking(true).unwrap();
            let stream = TcpStream::from_std(s).unwrap();
            let shard = Shard::new(0, Node::new(Config::default(), 1), "epoll");
            let fut = serve(shard, stream);
            eprintln!("serve future: {} bytes", std::mem::size_of_val(&fut));
            eprintln!("conn: {} bytes", std::mem::size_of::<Conn>());
        });
    }
}
