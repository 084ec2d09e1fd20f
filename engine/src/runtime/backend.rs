//! The backend port: HTTP/1.1 (keep-alive, pipelining) carrying JSON-RPC
//! 2.0 from backend applications, plus `GET /health`, `GET /metrics` and
//! the dashboard (`/dashboard…`, answered by [`crate::runtime::dashboard`]).
//!
//! Every shard accepts on the port (SO_REUSEPORT); a request is served on
//! the shard that accepted it, which routes publishes to each channel's
//! home shard and gathers node-wide answers from every shard.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use monoio::net::TcpStream;
use serde_json::json;

use crate::ops::config::{Config, Dialect};
use crate::ops::metrics::{render_prometheus, MetricsSnapshot, ShardMetrics};
use crate::protocol::http::{self, Method, Request};
use crate::protocol::native;
use crate::protocol::rocketws::{self, BackendResult};
use crate::protocol::rpc;
use crate::protocol::rpc::{BackendMethod, Call, Incoming, ReplyWriter, RpcError};
use crate::pubsub::ops::PublishResult;
use crate::runtime::dashboard;
use crate::runtime::io::write_all;
use crate::runtime::shard::{Gather, HomeAnswer, HomeQuery, PublishError, Shard};
use crate::runtime::sys;

/// Serves one backend connection until it closes. On shutdown it reads
/// once more what the peer has sent, answers every complete request and
/// closes (the shard waits for that before closing its clients).
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let _counted = shard.backend_conn();
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let max_body = shard.config().backend.max_body;
    let limit = http::max_request_len(max_body);
    let mut buf: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut continued = false;
    let idle = shard.config().backend_idle_timeout();
    // Shutdown began and the input it found was read: answer and close.
    let mut last_read = false;
    // Complete requests read together (pipelining), answered at once.
    let mut batch: Vec<OwnedRequest> = Vec::new();
    loop {
        // Serve every complete request already buffered (pipelining).
        let mut close = false;
        let mut refused = false;
        loop {
            match http::parse_request(&buf, max_body) {
                Ok(Some((req, consumed))) => {
                    let keep_alive = req.keep_alive;
                    if dashboard::owns(req.path) {
                        // Earlier requests' answers go first.
                        answer_batch(&shard, &mut batch, &mut out).await;
                        // The operator's page and its live feed (runtime::dashboard).
                        ShardMetrics::inc(&shard.metrics.backend_requests);
                        let route =
                            dashboard::route(shard.config(), &req, &buf[..consumed], &mut out);
                        buf.drain(..consumed);
                        continued = false;
                        if route == dashboard::Route::EventStream {
                            if write_all(&stream, &out).await.is_ok() {
                                dashboard::stream_events(&shard, &stream).await;
                            }
                            sys::shutdown_socket(fd, std::net::Shutdown::Both);
                            return;
                        }
                        if !keep_alive {
                            close = true;
                            break;
                        }
                        continue;
                    }
                    batch.push(OwnedRequest::from(&req));
                    buf.drain(..consumed);
                    continued = false;
                    if !keep_alive {
                        close = true;
                        break;
                    }
                }
                Ok(None) => {
                    answer_batch(&shard, &mut batch, &mut out).await;
                    if let Some(head) = http::pending_head(&buf) {
                        if !head_authorized(shard.config(), &head, &buf) {
                            // Refused before its body is read or asked for:
                            // an unauthenticated peer pins no body buffer.
                            ShardMetrics::inc(&shard.metrics.backend_requests);
                            http::write_json_error(&mut out, 401, UNAUTHORIZED, false);
                            refused = true;
                            close = true;
                            break;
                        }
                        if !continued && head.expect_continue {
                            out.extend_from_slice(http::CONTINUE);
                            continued = true;
                        }
                    }
                    if buf.len() > limit {
                        http::write_error(&mut out, &http::HttpError::BodyTooLarge);
                        close = true;
                    }
                    break;
                }
                Err(e) => {
                    answer_batch(&shard, &mut batch, &mut out).await;
                    http::write_error(&mut out, &e);
                    close = true;
                    break;
                }
            }
        }
        answer_batch(&shard, &mut batch, &mut out).await;
        if !out.is_empty() {
            if write_all(&stream, &out).await.is_err() {
                return;
            }
            out.clear();
        }
        if refused {
            linger_close(&stream, fd, &mut chunk, limit).await;
            return;
        }
        if close || last_read {
            sys::shutdown_socket(fd, std::net::Shutdown::Write);
            return;
        }
        if !shard.shutdown.is_raised() {
            let readable = monoio::select! {
                r = monoio::time::timeout(idle, stream.readable(false)) => Some(r),
                _ = shard.shutdown.wait() => None,
            };
            match readable {
                None | Some(Ok(Ok(()))) => {}
                Some(Ok(Err(_))) => return,
                Some(Err(_)) => {
                    // Idle (or a request stalled part-way) for `idle_timeout`.
                    ShardMetrics::inc(&shard.metrics.backend_idle_closed);
                    if !buf.is_empty() {
                        http::write_json_error(&mut out, 408, "request timeout", false);
                        let _ = write_all(&stream, &out).await;
                    }
                    sys::shutdown_socket(fd, std::net::Shutdown::Both);
                    return;
                }
            }
        }
        // What is read after shutdown began is the last input served.
        last_read = shard.shutdown.is_raised();
        loop {
            match sys::recv_nonblocking(fd, &mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if n < chunk.len() || refused_head(shard.config(), &buf) {
                        // An unauthorized head stops reading: its body
                        // never fills the buffer.
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

const UNAUTHORIZED: &str = "unauthorized: missing or wrong api token";

/// Whether a request whose head is in (and body not yet) may go on:
/// no token configured, `/health`, or the right token.
fn head_authorized(config: &Config, head: &http::PendingHead<'_>, raw: &[u8]) -> bool {
    if head.path == "/health" {
        return true;
    }
    if dashboard::owns(head.path) {
        return dashboard::authorized(config, head.auth_token, raw);
    }
    token_ok(config, head.auth_token)
}

/// Whether `buf` starts with a complete head that [`head_authorized`]
/// refuses.
fn refused_head(config: &Config, buf: &[u8]) -> bool {
    !config.backend.api_token.is_empty()
        && http::pending_head(buf).is_some_and(|h| !head_authorized(config, &h, buf))
}

fn token_ok(config: &Config, given: Option<&str>) -> bool {
    let token = config.backend.api_token.as_bytes();
    token.is_empty() || given.is_some_and(|g| crate::access::ct_eq(g.as_bytes(), token))
}

/// Closes a connection whose request was refused with its body unread:
/// shut down writing (the answer then ends with FIN), discard what the
/// peer still sends, bounded in bytes and time, then close. Closing with
/// unread input would send a reset that can destroy the answer.
async fn linger_close(stream: &TcpStream, fd: i32, chunk: &mut [u8], max_bytes: usize) {
    sys::shutdown_socket(fd, std::net::Shutdown::Write);
    let mut discarded = 0usize;
    let deadline = std::time::Instant::now() + LINGER;
    while discarded <= max_bytes {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match monoio::time::timeout(left, stream.readable(false)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
        match sys::recv_nonblocking(fd, chunk) {
            Ok(0) => break,
            Ok(n) => discarded += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// How long a refused request's unread input is discarded before the
/// connection is closed.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// What the handler needs of a request once the read buffer moves on.
struct OwnedRequest {
    method: Method,
    path: String,
    keep_alive: bool,
    auth_token: Option<String>,
    body: Vec<u8>,
}

impl From<&Request<'_>> for OwnedRequest {
    fn from(r: &Request<'_>) -> Self {
        OwnedRequest {
            method: r.method,
            path: r.path.to_owned(),
            keep_alive: r.keep_alive,
            auth_token: r.auth_token.map(str::to_owned),
            body: r.body.to_vec(),
        }
    }
}

/// Answers the requests read together, in the order they came. They run
/// at once rather than one after another: each is started in turn and runs
/// until it first waits, which for a publication is after its offset was
/// taken at the home shard or its script handed to the cluster bus, so
/// publications keep the order they were sent in while a pipelining
/// client does not wait for each one's round trip to another shard or to
/// Redis before the next one starts.
async fn answer_batch(shard: &Rc<Shard>, batch: &mut Vec<OwnedRequest>, out: &mut Vec<u8>) {
    if batch.len() <= 1 {
        if let Some(req) = batch.pop() {
            handle(shard, req, out).await;
        }
        return;
    }
    let mut running: Vec<_> = batch
        .drain(..)
        .map(|req| {
            Box::pin(async move {
                let mut answer = Vec::new();
                handle(shard, req, &mut answer).await;
                answer
            })
        })
        .collect();
    let mut answers: Vec<Option<Vec<u8>>> = running.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        // In index order, so the first poll starts them in arrival order.
        for (fut, answer) in running.iter_mut().zip(answers.iter_mut()) {
            if answer.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(a) => *answer = Some(a),
                    std::task::Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    for answer in answers.into_iter().flatten() {
        out.extend_from_slice(&answer);
    }
}

async fn handle(shard: &Rc<Shard>, req: OwnedRequest, out: &mut Vec<u8>) {
    ShardMetrics::inc(&shard.metrics.backend_requests);
    let ka = req.keep_alive;
    let authorized = token_ok(shard.config(), req.auth_token.as_deref());
    match (req.method, req.path.as_str()) {
        (Method::Get, "/health") => {
            let (status, head, bus) = match &shard.node.bus {
                Some(bus) if !bus.is_up() => (503, "degraded", format!("\n{}", bus.health_line())),
                Some(bus) => (200, "ok", format!("\n{}", bus.health_line())),
                None => (200, "ok", String::new()),
            };
            let body = format!("{head}{bus}{}", shard.node.sources.health());
            http::write_response_with(out, status, http::CONTENT_TYPE_TEXT, body.as_bytes(), ka)
        }
        (_, "/health") => http::write_json_error(out, 405, "method not allowed: use GET", ka),
        _ if !authorized => http::write_json_error(out, 401, UNAUTHORIZED, ka),
        (Method::Get, "/metrics") => {
            let reports = shard.gather(Gather::Stats).await;
            let rows: Vec<_> = reports
                .iter()
                .map(|r| (r.shard, r.gauges, r.metrics))
                .collect();
            http::write_response_with(
                out,
                200,
                http::CONTENT_TYPE_PROMETHEUS,
                (render_prometheus(&rows)
                    + &shard.node.sources.prometheus()
                    + &shard
                        .node
                        .bus
                        .as_ref()
                        .map_or(String::new(), |b| b.prometheus()))
                    .as_bytes(),
                ka,
            );
        }
        (_, "/metrics") => http::write_json_error(out, 405, "method not allowed: use GET", ka),
        (Method::Post, "/") => {
            let body = rpc_body(shard, &req.body).await;
            http::write_response(out, 200, &body, ka);
        }
        (_, "/") => http::write_json_error(
            out,
            405,
            "method not allowed: use POST with a JSON-RPC body",
            ka,
        ),
        (_, path) => {
            let msg = format!("not found: {}", path.chars().take(200).collect::<String>());
            http::write_json_error(out, 404, &msg, ka)
        }
    }
}

/// Answers a JSON-RPC request or batch.
async fn rpc_body(shard: &Rc<Shard>, body: &[u8]) -> Vec<u8> {
    let parsed = shard.parser.borrow_mut().parse::<BackendMethod>(body);
    let mut w;
    match parsed {
        Err(e) => {
            w = ReplyWriter::new(false);
            w.error_null(&e);
        }
        Ok(Incoming::Single(call)) => {
            w = ReplyWriter::new(false);
            exec(shard, call, &mut w).await;
        }
        Ok(Incoming::Batch(calls)) => {
            w = ReplyWriter::new(true);
            for call in calls {
                exec(shard, call, &mut w).await;
            }
        }
    }
    // A body of notifications only gets an empty array-free 200 with `null`.
    w.finish().unwrap_or_else(|| b"null".to_vec())
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(rpc::INTERNAL_ERROR, format!("internal error: {e}"))
}

/// A refused publish: -32005 when a mailbox was full, else internal.
fn publish_error(e: PublishError) -> RpcError {
    match e {
        PublishError::Overloaded | PublishError::BusUnavailable => {
            RpcError::new(rpc::OVERLOADED, e.to_string())
        }
        PublishError::Gone => internal(e),
    }
}

/// `total_subscribers` on this node alone.
async fn local_total(
    shard: &Rc<Shard>,
    channel: Option<Box<str>>,
) -> Result<serde_json::Value, RpcError> {
    let total = match channel {
        Some(c) => match shard
            .ask_home(&c, HomeQuery::Total)
            .await
            .map_err(internal)?
        {
            HomeAnswer::Total(n) => n as u64,
            _ => return Err(internal("unexpected answer")),
        },
        None => shard
            .gather(Gather::Stats)
            .await
            .iter()
            .map(|r| r.gauges.subscriptions)
            .sum(),
    };
    Ok(json!({"total": total}))
}

/// A method's result as JSON bytes, for the one reply encoder.
type MethodResult = Result<Vec<u8>, RpcError>;

/// `presence` on a channel whose namespace keeps none.
const NO_PRESENCE: &str =
    "permission denied: presence is not kept here (set presence = true in the channel's namespace)";

fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn publish_json(r: &PublishResult) -> serde_json::Value {
    json!({"offset": r.offset, "id": r.id, "subscribers": r.subscribers})
}

async fn exec(shard: &Rc<Shard>, call: Call<BackendMethod>, w: &mut ReplyWriter) {
    let id = call.id.as_deref();
    let result = match call.method {
        Ok(m) if shard.config().ws.dialect == Dialect::Rocketws => run_rocketws(shard, m).await,
        Ok(m) => run_method(shard, m).await,
        Err(e) => Err(e),
    };
    w.reply(id, result.as_deref());
}

/// The backend port in the RocketWS dialect (`[ws] dialect = "rocketws"`):
/// RocketWS's results (see [`rocketws::backend_result`]), always valid
/// JSON; `data` must be an object. Everything else answers natively.
async fn run_rocketws(shard: &Rc<Shard>, method: BackendMethod) -> MethodResult {
    match method {
        BackendMethod::Emit { channel, data } => {
            rocketws::backend_object(&data)?;
            let r = shard
                .publish(&channel, data, None)
                .await
                .map_err(publish_error)?;
            Ok(rocketws::backend_result(BackendResult::Emitted(
                r.subscribers,
            )))
        }
        BackendMethod::NotifyAll { data } => {
            rocketws::backend_object(&data)?;
            let (_, connections) = shard.broadcast(data).await.map_err(publish_error)?;
            Ok(rocketws::backend_result(BackendResult::Notified(
                connections,
            )))
        }
        BackendMethod::AvailableChannels { cursor, limit } => {
            let (channels, _) = channel_page(shard, cursor, limit).await;
            Ok(rocketws::backend_result(BackendResult::ChannelNames(
                &channels,
            )))
        }
        BackendMethod::PublishMany { channels, data } => {
            rocketws::backend_object(&data)?;
            run_method(shard, BackendMethod::PublishMany { channels, data }).await
        }
        other => run_method(shard, other).await,
    }
}

/// One page of the channels with subscribers and their counts, in name
/// order after `cursor`, at most `limit`; and the cursor of the next page
/// when there is one. Each shard sends at most `limit` names.
async fn channel_page(
    shard: &Rc<Shard>,
    cursor: Option<Box<str>>,
    limit: usize,
) -> (Vec<(String, usize)>, Option<String>) {
    // Cluster mode: every live node's channels (this node's alone while
    // the bus is down).
    if let Some(counts) = shard.cluster_counts().await {
        let (page, more) = counts.page(cursor.as_deref(), limit);
        let next = if more {
            page.last().map(|(c, _)| c.clone())
        } else {
            None
        };
        return (page, next);
    }
    let reports = shard
        .gather(Gather::ChannelPage {
            after: cursor.map(Into::into),
            limit,
        })
        .await;
    let mut more = reports.iter().any(|r| r.more_channels);
    let mut channels: Vec<(String, usize)> = reports.into_iter().flat_map(|r| r.channels).collect();
    channels.sort_unstable();
    more |= channels.len() > limit;
    channels.truncate(limit);
    let next = if more {
        channels.last().map(|(c, _)| c.clone())
    } else {
        None
    };
    (channels, next)
}

async fn run_method(shard: &Rc<Shard>, method: BackendMethod) -> MethodResult {
    let value = match method {
        BackendMethod::Emit { channel, data } => {
            let r = shard
                .publish(&channel, data, None)
                .await
                .map_err(publish_error)?;
            publish_json(&r)
        }
        BackendMethod::PublishMany { channels, data } => {
            // A channel refused as overloaded gets an error entry and the
            // others are still published; if every one was refused, the
            // call answers -32005 (nothing published, safe to retry).
            let mut results = Vec::with_capacity(channels.len());
            let mut published = channels.is_empty();
            for channel in channels {
                let mut v = match shard.publish(&channel, data.clone(), None).await {
                    Ok(r) => {
                        published = true;
                        publish_json(&r)
                    }
                    Err(e @ PublishError::Overloaded) => {
                        json!({"error": {"code": rpc::OVERLOADED, "message": e.to_string()}})
                    }
                    Err(e) => return Err(publish_error(e)),
                };
                v["channel"] = json!(&*channel);
                results.push(v);
            }
            if !published {
                return Err(publish_error(PublishError::Overloaded));
            }
            json!(results)
        }
        BackendMethod::NotifyAll { data } => {
            let (id, connections) = shard.broadcast(data).await.map_err(publish_error)?;
            json!({"id": id, "connections": connections})
        }
        BackendMethod::TotalSubscribers { channel } if shard.node.bus.is_some() => {
            match shard.cluster_counts().await {
                Some(counts) => {
                    let total = match &channel {
                        Some(c) => counts.channels.get(&**c).copied().unwrap_or(0),
                        None => counts.subscriptions,
                    };
                    json!({"total": total})
                }
                // The bus is down: this node's own count.
                None => local_total(shard, channel).await?,
            }
        }
        BackendMethod::TotalSubscribers { channel: Some(c) } => match shard
            .ask_home(&c, HomeQuery::Total)
            .await
            .map_err(internal)?
        {
            HomeAnswer::Total(n) => json!({"total": n}),
            _ => return Err(internal("unexpected answer")),
        },
        BackendMethod::TotalSubscribers { channel: None } => {
            let total: u64 = shard
                .gather(Gather::Stats)
                .await
                .iter()
                .map(|r| r.gauges.subscriptions)
                .sum();
            json!({"total": total})
        }
        BackendMethod::AvailableChannels { cursor, limit } => {
            let (page, next) = channel_page(shard, cursor, limit).await;
            let list: Vec<_> = page
                .iter()
                .map(|(c, n)| json!({"channel": c, "subscribers": n}))
                .collect();
            json!({"channels": list, "next_cursor": next})
        }
        BackendMethod::FlushDeadClients => {
            let n: usize = shard
                .gather(Gather::FlushDead)
                .await
                .iter()
                .map(|r| r.flushed)
                .sum();
            json!({"flushed": n})
        }
        BackendMethod::Last { channel: None } => json!({"id": shard.node.last_id()}),
        BackendMethod::Last { channel: Some(c) } => match shard
            .ask_home(&c, HomeQuery::Last)
            .await
            .map_err(internal)?
        {
            HomeAnswer::Last(offset, epoch) => json!({"offset": offset, "epoch": &*epoch}),
            _ => return Err(internal("unexpected answer")),
        },
        BackendMethod::History {
            channel,
            since,
            limit,
        } => {
            return match shard
                .ask_home(&channel, HomeQuery::History { since, limit })
                .await
                .map_err(internal)?
            {
                HomeAnswer::History(h) => Ok(native::history_result(&h)),
                _ => Err(internal("unexpected answer")),
            }
        }
        BackendMethod::Ping => json!({"ping": "ok"}),
        BackendMethod::Disconnect { user } => {
            let n = per_user(shard, Gather::DisconnectUser(user.into())).await;
            json!({"disconnected": n})
        }
        BackendMethod::UnsubscribeUser { user, channel } => {
            let query = Gather::UnsubscribeUser {
                user: user.into(),
                channel: channel.into(),
            };
            json!({"unsubscribed": per_user(shard, query).await})
        }
        BackendMethod::Presence { channel, stats } => {
            let rule = shard.node.access.namespaces.rule(&channel);
            if !rule.presence && !rule.join_leave {
                // Nothing is kept for it (the memory of a presence list is
                // only spent where a namespace asks for it).
                return Err(RpcError::new(rpc::PERMISSION_DENIED, NO_PRESENCE));
            }
            return Ok(shard.presence_json(&channel, stats).await);
        }
        BackendMethod::Info => info(shard).await,
    };
    Ok(json_bytes(&value))
}

/// Runs a per-user query on every shard: the connections it touched.
async fn per_user(shard: &Rc<Shard>, query: Gather) -> usize {
    shard.gather(query).await.iter().map(|r| r.affected).sum()
}

async fn info(shard: &Rc<Shard>) -> serde_json::Value {
    let reports = shard.gather(Gather::Stats).await;
    let mut total = MetricsSnapshot::default();
    let (mut conns, mut subs, mut chans) = (0, 0, 0);
    let shards: Vec<_> = reports
        .iter()
        .map(|r| {
            total.add(&r.metrics);
            conns += r.gauges.connections;
            subs += r.gauges.subscriptions;
            chans += r.home_channels;
            let mut v = json!({
                "shard": r.shard,
                "driver": r.driver,
                "connections": r.gauges.connections,
                "subscriptions": r.gauges.subscriptions,
                "channels": r.gauges.channels,
                "home_channels": r.home_channels,
                "idle_readers": r.internals.idle_readers,
            });
            for (name, _, value) in r.metrics.fields() {
                v[name] = json!(value);
            }
            v
        })
        .collect();
    let mut counters = json!({});
    for (name, _, value) in total.fields() {
        counters[name] = json!(value);
    }
    let heap = crate::ops::alloc_count::snapshot().map(|(live, allocs)| {
        let by_size: Vec<_> = crate::ops::alloc_count::live_by_size()
            .into_iter()
            .map(|(bound, n)| json!([bound, n]))
            .collect();
        json!({"live_bytes": live, "allocations": allocs, "live_by_size": by_size})
    });
    let mut v = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "heap": heap,
        "shards": shards,
        "connections": conns,
        "subscriptions": subs,
        "channels": chans,
        "last_id": shard.node.last_id(),
        "counters": counters,
    });
    // Cluster mode: the whole cluster's counts beside this node's.
    if let Some(bus) = &shard.node.bus {
        let mut c = json!({"node": bus.node_id, "bus": if bus.is_up() { "up" } else { "down" }});
        if let Some(counts) = shard.cluster_counts().await {
            c["nodes"] = json!(counts.nodes);
            c["connections"] = json!(counts.connections);
            c["subscriptions"] = json!(counts.subscriptions);
            c["channels"] = json!(counts.channels.len());
        }
        v["cluster"] = c;
    }
    v
}
