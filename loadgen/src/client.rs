//! The WebSocket client pool: one pinned thread per `--threads`, each a mio
//! edge-triggered event loop over its share of the connections.
//!
//! A thread owns one reusable read buffer; server frames are decoded in
//! place from it ([`crate::frame`]) and deliveries are scanned, not parsed
//! ([`crate::scan`]). A connection moves Connecting → Upgrading →
//! Subscribing → Open (→ Closing). The main thread steers all pools through
//! [`Control`]: it waits until every connection is subscribed, lets the
//! measured phase run, then hands over each channel's final offset so the
//! threads can drain and close their books.

use crate::frame::{self, opcode};
use crate::handshake;
use crate::report::new_histogram;
use crate::scan::{self, Notice};
use crate::tracker::{Counts, OffsetTracker};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Socket, Type};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest server frame accepted.
const MAX_FRAME: usize = 16 << 20;
const READ_BUF: usize = 256 * 1024;

/// Phases the main thread moves the pools through.
pub mod phase {
    /// Connecting and subscribing.
    pub const CONNECT: u8 = 0;
    /// Measured phase: receive (and, for chat, send).
    pub const RUN: u8 = 1;
    /// Chat: stop sending, wait for own acks, report them.
    pub const STOP_SENDING: u8 = 2;
    /// Final offsets are known: drain, then finish.
    pub const DRAIN: u8 = 3;
}

/// Shared steering state between the main thread and the client threads.
#[derive(Default)]
pub struct Control {
    pub phase: AtomicU8,
    /// Threads that finished connecting.
    pub ready: AtomicUsize,
    /// Threads that finished sending (chat) and merged their acked offsets.
    pub sent_done: AtomicUsize,
    /// Connections currently subscribed, for progress.
    pub open: AtomicU64,
    /// Deliveries so far, for progress.
    pub delivered: AtomicU64,
    /// Final offset per channel index, set once before DRAIN.
    pub finals: OnceLock<Vec<u64>>,
    /// Chat: highest acknowledged own offset per channel, merged by threads.
    pub acked: Mutex<Vec<u64>>,
    /// Give up waiting for deliveries at this time (ns since `epoch`).
    pub drain_deadline_ns: AtomicU64,
    /// Abort everything (Ctrl-C or fatal error elsewhere).
    pub abort: AtomicBool,
    /// The pools' shared time origin.
    pub epoch: OnceLock<Instant>,
}

impl Control {
    pub fn new(channels: usize) -> Arc<Self> {
        let c = Control {
            acked: Mutex::new(vec![0; channels]),
            ..Default::default()
        };
        let _ = c.epoch.set(Instant::now());
        Arc::new(c)
    }

    pub fn since_epoch_ns(&self) -> u64 {
        self.epoch.get().expect("epoch set").elapsed().as_nanos() as u64
    }
}

/// Client-originated traffic for `chat`.
#[derive(Debug, Clone)]
pub struct ChatPlan {
    /// `send_data` calls per second per client.
    pub rate_per_client: f64,
    /// Stop after this many per client (Thor's `-n`).
    pub messages_per_client: Option<u64>,
    pub size: usize,
}

/// What one client thread does.
#[derive(Debug, Clone)]
pub struct ThreadPlan {
    pub index: usize,
    pub core: Option<usize>,
    pub server: SocketAddr,
    pub host_header: String,
    pub path: String,
    /// Source addresses to bind, round-robin; empty = let the kernel pick.
    pub src_ips: Vec<IpAddr>,
    /// Channel names by index.
    pub channel_names: Arc<Vec<String>>,
    /// For each connection of this thread: the channel indexes it subscribes.
    pub connections: Vec<Vec<u32>>,
    /// Connections in handshake at once.
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub chat: Option<ChatPlan>,
    /// Fault injection: connections at these indexes of `connections` stop
    /// reading (with a tiny receive buffer) for this long once the measured
    /// phase starts, so a server can be seen dropping or disconnecting them.
    pub stall: Option<(Vec<usize>, Duration)>,
    /// Churn: open this many connections per second (for this thread),
    /// closing each once subscribed, until DRAIN.
    pub churn_rate: Option<f64>,
}

/// What one client thread measured.
#[derive(Debug)]
pub struct ThreadStats {
    pub opened: u64,
    pub connect_failures: BTreeMap<String, u64>,
    pub connect_hist: Histogram<u64>,
    pub latency: Histogram<u64>,
    pub counts: Counts,
    pub expected: u64,
    pub unexpected_closes: u64,
    pub close_reasons: BTreeMap<String, u64>,
    pub protocol_errors: u64,
    pub rpc_errors: BTreeMap<String, u64>,
    pub sent: u64,
    pub churned: u64,
    /// When the last delivery arrived (ns since the Unix epoch).
    pub last_delivery_wall_ns: u64,
    pub connect_done_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Upgrading,
    Subscribing,
    Open,
    Closing,
}

struct Sub {
    chan: u32,
    start: u64,
    subscribed: bool,
    own: u64,
    tracker: OffsetTracker,
}

struct Conn {
    sock: TcpStream,
    state: State,
    key: String,
    started: Instant,
    out: Vec<u8>,
    partial: Vec<u8>,
    frag: Vec<u8>,
    frag_op: u8,
    subs: Vec<Sub>,
    pending_subs: usize,
    sent: u64,
    stalled: bool,
    /// Own `send_data` ids in flight: id -> channel index.
    inflight: Vec<(u64, u32)>,
}

enum End {
    /// Closed by us on purpose.
    Done,
    /// The server or the network ended it.
    Unexpected(String),
    ConnectFailed(String),
}

struct Ctx<'a> {
    plan: &'a ThreadPlan,
    stats: ThreadStats,
    now_wall_ns: u64,
    now_ns: u64,
    finals: Option<&'a [u64]>,
    rng: u64,
    next_id: u64,
    acked: Vec<u64>,
    scratch: Vec<u8>,
    /// Deliveries so far, for progress only.
    progress: u64,
}

impl Ctx<'_> {
    fn mask(&mut self) -> [u8; 4] {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng as u32).to_ne_bytes()
    }
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn start_connect(plan: &ThreadPlan, n: usize, small_rcvbuf: bool) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(plan.server), Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    if small_rcvbuf {
        sock.set_recv_buffer_size(4096)?;
    }
    sock.set_tcp_nodelay(true)?;
    if !plan.src_ips.is_empty() {
        let ip = plan.src_ips[n % plan.src_ips.len()];
        let _ = crate::sys::set_bind_address_no_port(&sock);
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match sock.connect(&plan.server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::TimedOut => "timeout".into(),
        io::ErrorKind::AddrNotAvailable => "no source port".into(),
        _ => match e.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => "too many open files".into(),
            _ => e.kind().to_string(),
        },
    }
}

fn send_text(conn: &mut Conn, ctx: &mut Ctx, text: &[u8]) {
    let mask = ctx.mask();
    frame::encode_masked(&mut conn.out, opcode::TEXT, text, mask);
}

fn subscribe_all(conn: &mut Conn, ctx: &mut Ctx) {
    for i in 0..conn.subs.len() {
        let chan = conn.subs[i].chan as usize;
        ctx.next_id += 1;
        let req = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"subscribe\",\"params\":{{\"channel\":\"{}\"}}}}",
            ctx.next_id, ctx.plan.channel_names[chan]
        );
        conn.inflight.push((ctx.next_id, u32::MAX - i as u32));
        send_text(conn, ctx, req.as_bytes());
    }
    conn.pending_subs = conn.subs.len();
    conn.state = State::Subscribing;
}

fn send_chat(conn: &mut Conn, ctx: &mut Ctx, size: usize) {
    let Some(sub) = conn.subs.first() else { return };
    let chan = sub.chan;
    ctx.next_id += 1;
    let id = ctx.next_id;
    let mut req = std::mem::take(&mut ctx.scratch);
    req.clear();
    req.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    req.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    req.extend_from_slice(b",\"method\":\"send_data\",\"params\":{\"channel\":\"");
    req.extend_from_slice(ctx.plan.channel_names[chan as usize].as_bytes());
    req.extend_from_slice(b"\",\"data\":");
    scan::write_payload(&mut req, wall_ns(), conn.sent, size);
    req.extend_from_slice(b"}}");
    send_text(conn, ctx, &req);
    ctx.scratch = req;
    conn.inflight.push((id, chan));
    conn.sent += 1;
    ctx.stats.sent += 1;
}

/// Handles one complete text message from the server.
fn handle_text(conn: &mut Conn, ctx: &mut Ctx, payload: &[u8]) -> Result<(), End> {
    match scan::classify(payload) {
        Notice::Message {
            channel,
            offset,
            ts_ns,
        } => {
            let names = &ctx.plan.channel_names;
            let Some(sub) = conn
                .subs
                .iter_mut()
                .find(|s| names[s.chan as usize].as_bytes() == channel)
            else {
                *ctx.stats
                    .rpc_errors
                    .entry("message on unknown channel".into())
                    .or_default() += 1;
                return Ok(());
            };
            if !sub.subscribed {
                // Arrived before the subscribe result: the result's offset
                // will be at or past it. Ignore; it precedes our window.
                return Ok(());
            }
            sub.tracker.handle_delivery(offset);
            ctx.progress += 1;
            ctx.stats.last_delivery_wall_ns = ctx.now_wall_ns;
            if let Some(ts) = ts_ns {
                ctx.stats
                    .latency
                    .saturating_record(ctx.now_wall_ns.saturating_sub(ts).max(1));
            }
        }
        Notice::Reply { id, offset } => {
            let Some(i) = conn.inflight.iter().position(|&(x, _)| x == id) else {
                return Ok(());
            };
            let (_, tag) = conn.inflight.swap_remove(i);
            if tag > u32::MAX - conn.subs.len() as u32 && conn.state == State::Subscribing {
                let sub = &mut conn.subs[(u32::MAX - tag) as usize];
                let start = offset.unwrap_or(0);
                sub.start = start;
                sub.subscribed = true;
                sub.tracker = OffsetTracker::new(start);
                conn.pending_subs -= 1;
                if conn.pending_subs == 0 {
                    conn.state = State::Open;
                    ctx.stats.opened += 1;
                    ctx.stats
                        .connect_hist
                        .saturating_record(conn.started.elapsed().as_nanos().max(1) as u64);
                }
            } else if let Some(o) = offset {
                if let Some(sub) = conn.subs.iter_mut().find(|s| s.chan == tag) {
                    sub.tracker.handle_own(o);
                    sub.own += 1;
                }
                let a = &mut ctx.acked[tag as usize];
                *a = (*a).max(o);
            }
        }
        Notice::Error { id, message } => {
            if let Some(i) = conn.inflight.iter().position(|&(x, _)| x == id) {
                conn.inflight.swap_remove(i);
            }
            let msg = String::from_utf8_lossy(message).into_owned();
            *ctx.stats.rpc_errors.entry(msg.clone()).or_default() += 1;
            if conn.state == State::Subscribing {
                return Err(End::ConnectFailed(format!("subscribe error: {msg}")));
            }
        }
        Notice::Other => {}
    }
    Ok(())
}

/// Decodes and handles every complete frame in `data`; returns the bytes used.
fn handle_frames(conn: &mut Conn, ctx: &mut Ctx, data: &[u8]) -> Result<usize, End> {
    let mut pos = 0;
    if conn.state == State::Upgrading {
        match handshake::parse_response(data, &conn.key) {
            Ok(None) => return Ok(0),
            Ok(Some(n)) => {
                pos = n;
                subscribe_all(conn, ctx);
            }
            Err(e) => return Err(End::ConnectFailed(e.to_string())),
        }
    }
    loop {
        let (f, n) = match frame::decode(&data[pos..], MAX_FRAME) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(pos),
            Err(e) => {
                ctx.stats.protocol_errors += 1;
                return Err(End::Unexpected(format!("protocol error: {e}")));
            }
        };
        pos += n;
        match f.opcode {
            opcode::TEXT | opcode::BINARY if f.fin => handle_text(conn, ctx, f.payload)?,
            opcode::TEXT | opcode::BINARY => {
                conn.frag_op = f.opcode;
                conn.frag.clear();
                conn.frag.extend_from_slice(f.payload);
            }
            opcode::CONTINUATION => {
                conn.frag.extend_from_slice(f.payload);
                if f.fin {
                    let whole = std::mem::take(&mut conn.frag);
                    handle_text(conn, ctx, &whole)?;
                    conn.frag = whole;
                    conn.frag.clear();
                }
            }
            opcode::PING => {
                let mask = ctx.mask();
                frame::encode_masked(&mut conn.out, opcode::PONG, f.payload, mask);
            }
            opcode::PONG => {}
            opcode::CLOSE => {
                if conn.state == State::Closing {
                    return Err(End::Done);
                }
                let (code, reason) = frame::close_reason(f.payload);
                let mask = ctx.mask();
                frame::encode_masked(
                    &mut conn.out,
                    opcode::CLOSE,
                    &f.payload[..f.payload.len().min(2)],
                    mask,
                );
                let _ = conn.sock.write(&conn.out);
                return Err(End::Unexpected(
                    format!("close {code} {reason}").trim_end().to_string(),
                ));
            }
            _ => {}
        }
    }
}

fn flush(conn: &mut Conn) -> Result<(), End> {
    while !conn.out.is_empty() {
        match conn.sock.write(&conn.out) {
            Ok(0) => return Err(End::Unexpected("write returned 0".into())),
            Ok(n) => {
                conn.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(End::Unexpected(io_reason(&e))),
        }
    }
    Ok(())
}

/// Reads everything available on `conn` and handles it.
fn handle_readable(conn: &mut Conn, ctx: &mut Ctx, rbuf: &mut Vec<u8>) -> Result<(), End> {
    let mut filled = conn.partial.len();
    if filled > rbuf.len() {
        rbuf.resize(filled.next_power_of_two(), 0);
    }
    rbuf[..filled].copy_from_slice(&conn.partial);
    conn.partial.clear();
    loop {
        if filled == rbuf.len() {
            let l = rbuf.len();
            rbuf.resize(l * 2, 0);
        }
        let space = rbuf.len() - filled;
        match conn.sock.read(&mut rbuf[filled..]) {
            Ok(0) => {
                return Err(if conn.state == State::Closing {
                    End::Done
                } else if conn.state == State::Open {
                    End::Unexpected("eof".into())
                } else {
                    End::ConnectFailed("eof during handshake".into())
                });
            }
            Ok(n) => {
                filled += n;
                let used = handle_frames(conn, ctx, &rbuf[..filled])?;
                rbuf.copy_within(used..filled, 0);
                filled -= used;
                // A short read drained the socket: with edge triggering the
                // next arrival raises a new event.
                if n < space {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(
                    if conn.state == State::Open || conn.state == State::Closing {
                        End::Unexpected(io_reason(&e))
                    } else {
                        End::ConnectFailed(io_reason(&e))
                    },
                )
            }
        }
    }
    conn.partial.extend_from_slice(&rbuf[..filled]);
    Ok(())
}

/// Runs one client thread to completion.
pub fn run_thread(plan: ThreadPlan, control: Arc<Control>) -> ThreadStats {
    if let Some(core) = plan.core {
        core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
    let mut poll = Poll::new().expect("epoll instance");
    let mut events = Events::with_capacity(1024);
    let mut conns: Slab<Conn> = Slab::with_capacity(plan.connections.len());
    let mut rbuf = vec![0u8; READ_BUF];
    let channels = plan.channel_names.len();
    let mut ctx = Ctx {
        plan: &plan,
        stats: ThreadStats {
            opened: 0,
            connect_failures: BTreeMap::new(),
            connect_hist: new_histogram(),
            latency: new_histogram(),
            counts: Counts::default(),
            expected: 0,
            unexpected_closes: 0,
            close_reasons: BTreeMap::new(),
            protocol_errors: 0,
            rpc_errors: BTreeMap::new(),
            sent: 0,
            churned: 0,
            last_delivery_wall_ns: 0,
            connect_done_ns: 0,
        },
        now_wall_ns: wall_ns(),
        now_ns: control.since_epoch_ns(),
        finals: None,
        rng: 0x9E37_79B9_7F4A_7C15 ^ (plan.index as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D),
        next_id: 0,
        acked: vec![0; channels],
        scratch: Vec::new(),
        progress: 0,
    };
    let mut last_sweep = Instant::now();
    let mut stall_state = 0u8;
    let mut stall_started = Instant::now();
    let mut last_chat_tick = Instant::now();
    let mut next_conn = 0usize; // next index into plan.connections to open
    let mut in_handshake = 0usize;
    let mut ready_signalled = false;
    let mut sent_signalled = false;
    let mut dead_subs: Vec<Sub> = Vec::new();
    let churn_start = Instant::now();
    let mut churn_opened = 0u64;
    let mut run_started: Option<Instant> = None;
    let mut chat_due_base = 0u64;
    let mut rr = 0usize;
    let mut last_progress = 0u64;
    let poll_timeout = Duration::from_millis(5);

    let total = plan.connections.len();
    loop {
        let ph = control.phase.load(Ordering::Acquire);
        if control.abort.load(Ordering::Relaxed) {
            break;
        }
        // Open new connections within the concurrency bound.
        let churning = plan.churn_rate.is_some() && ph < phase::DRAIN;
        let want_more = if let Some(rate) = plan.churn_rate {
            churning && (churn_start.elapsed().as_secs_f64() * rate) as u64 > churn_opened
        } else {
            next_conn < total
        };
        if want_more && in_handshake < plan.concurrency.max(1) {
            let mut budget = plan.concurrency.max(1) - in_handshake;
            while budget > 0 {
                let (n, subs) = if plan.churn_rate.is_some() {
                    if (churn_start.elapsed().as_secs_f64() * plan.churn_rate.unwrap_or(0.0)) as u64
                        <= churn_opened
                    {
                        break;
                    }
                    churn_opened += 1;
                    let n = churn_opened as usize;
                    (n, plan.connections[n % total.max(1)].clone())
                } else {
                    if next_conn >= total {
                        break;
                    }
                    next_conn += 1;
                    (next_conn - 1, plan.connections[next_conn - 1].clone())
                };
                budget -= 1;
                let stall = plan
                    .stall
                    .as_ref()
                    .is_some_and(|(v, _)| plan.churn_rate.is_none() && v.contains(&n));
                match start_connect(&plan, n + plan.index, stall) {
                    Ok(sock) => {
                        let entry = conns.vacant_entry();
                        let mut conn = Conn {
                            sock,
                            state: State::Connecting,
                            key: handshake::new_key(),
                            started: Instant::now(),
                            out: Vec::new(),
                            partial: Vec::new(),
                            frag: Vec::new(),
                            frag_op: 0,
                            subs: subs
                                .iter()
                                .map(|&c| Sub {
                                    chan: c,
                                    start: 0,
                                    subscribed: false,
                                    own: 0,
                                    tracker: OffsetTracker::new(0),
                                })
                                .collect(),
                            pending_subs: 0,
                            sent: 0,
                            stalled: stall,
                            inflight: Vec::new(),
                        };
                        if let Err(e) = poll.registry().register(
                            &mut conn.sock,
                            Token(entry.key()),
                            Interest::READABLE | Interest::WRITABLE,
                        ) {
                            *ctx.stats.connect_failures.entry(io_reason(&e)).or_default() += 1;
                            continue;
                        }
                        entry.insert(conn);
                        in_handshake += 1;
                    }
                    Err(e) => {
                        *ctx.stats.connect_failures.entry(io_reason(&e)).or_default() += 1;
                    }
                }
            }
        }

        if let Some((_, d)) = &plan.stall {
            if ph >= phase::RUN && stall_state == 0 {
                stall_state = 1;
                stall_started = Instant::now();
                for (k, c) in conns.iter_mut().filter(|(_, c)| c.stalled) {
                    let _ = poll
                        .registry()
                        .reregister(&mut c.sock, Token(k), Interest::WRITABLE);
                }
            } else if stall_state == 1 && stall_started.elapsed() >= *d {
                stall_state = 2;
                for (k, c) in conns.iter_mut().filter(|(_, c)| c.stalled) {
                    let _ = poll.registry().reregister(
                        &mut c.sock,
                        Token(k),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                }
            }
        }
        if let Err(e) = poll.poll(&mut events, Some(poll_timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        ctx.now_wall_ns = wall_ns();
        ctx.now_ns = control.since_epoch_ns();
        for ev in events.iter() {
            let key = ev.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            let before = conn.state;
            let mut result: Result<(), End> = Ok(());
            if conn.state == State::Connecting {
                if ev.is_error() || ev.is_read_closed() || ev.is_write_closed() {
                    let err = conn
                        .sock
                        .take_error()
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| io::Error::other("connect failed"));
                    result = Err(End::ConnectFailed(io_reason(&err)));
                } else if ev.is_writable() {
                    match conn.sock.peer_addr() {
                        Ok(_) => {
                            let host = &plan.host_header;
                            conn.out.extend_from_slice(&handshake::request(
                                host, &plan.path, &conn.key,
                            ));
                            conn.state = State::Upgrading;
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
                        Err(e) => result = Err(End::ConnectFailed(io_reason(&e))),
                    }
                }
            }
            if result.is_ok() && ev.is_readable() && conn.state != State::Connecting {
                result = handle_readable(conn, &mut ctx, &mut rbuf);
            }
            if result.is_ok() && !conn.out.is_empty() {
                result = flush(conn);
            }
            let after = conn.state;
            let was_handshaking = matches!(
                before,
                State::Connecting | State::Upgrading | State::Subscribing
            );
            if was_handshaking && after == State::Open {
                in_handshake -= 1;
                control.open.fetch_add(1, Ordering::Relaxed);
                if plan.churn_rate.is_some() {
                    // Churn: close right after the subscription is confirmed.
                    let mask = ctx.mask();
                    frame::encode_masked(
                        &mut conn.out,
                        opcode::CLOSE,
                        &1000u16.to_be_bytes(),
                        mask,
                    );
                    conn.state = State::Closing;
                    result = flush(conn);
                }
            }
            if let Err(end) = result {
                let conn = conns.remove(key);
                let handshaking = matches!(
                    conn.state,
                    State::Connecting | State::Upgrading | State::Subscribing
                );
                if handshaking {
                    in_handshake -= 1;
                }
                if conn.state == State::Open {
                    control.open.fetch_sub(1, Ordering::Relaxed);
                }
                match end {
                    End::Done => ctx.stats.churned += 1,
                    End::ConnectFailed(r) => *ctx.stats.connect_failures.entry(r).or_default() += 1,
                    End::Unexpected(r) if handshaking => {
                        *ctx.stats.connect_failures.entry(r).or_default() += 1
                    }
                    End::Unexpected(r) => {
                        ctx.stats.unexpected_closes += 1;
                        *ctx.stats.close_reasons.entry(r).or_default() += 1;
                    }
                }
                dead_subs.extend(conn.subs);
            }
        }

        let sweep = last_sweep.elapsed() >= Duration::from_millis(10);
        if sweep {
            last_sweep = Instant::now();
        }
        // Connect timeouts.
        if in_handshake > 0 && sweep {
            let timed_out: Vec<usize> = conns
                .iter()
                .filter(|(_, c)| {
                    matches!(
                        c.state,
                        State::Connecting | State::Upgrading | State::Subscribing
                    ) && c.started.elapsed() > plan.connect_timeout
                })
                .map(|(k, _)| k)
                .collect();
            for k in timed_out {
                let conn = conns.remove(k);
                in_handshake -= 1;
                *ctx.stats
                    .connect_failures
                    .entry("timeout".into())
                    .or_default() += 1;
                dead_subs.extend(conn.subs);
            }
        }
        if plan.churn_rate.is_some() && sweep {
            let stale: Vec<usize> = conns
                .iter()
                .filter(|(_, c)| {
                    c.state == State::Closing && c.started.elapsed() > plan.connect_timeout * 2
                })
                .map(|(k, _)| k)
                .collect();
            for k in stale {
                conns.remove(k);
                ctx.stats.churned += 1;
            }
        }

        if !ready_signalled && next_conn >= total && in_handshake == 0 {
            ready_signalled = true;
            ctx.stats.connect_done_ns = control.since_epoch_ns();
            control.ready.fetch_add(1, Ordering::AcqRel);
        }
        if plan.churn_rate.is_some() && !ready_signalled {
            ready_signalled = true;
            control.ready.fetch_add(1, Ordering::AcqRel);
        }

        // Chat sending.
        if let Some(chat) = &plan.chat {
            if ph == phase::RUN && last_chat_tick.elapsed() >= Duration::from_millis(1) {
                last_chat_tick = Instant::now();
                let started = *run_started.get_or_insert_with(|| {
                    chat_due_base = ctx.stats.sent;
                    Instant::now()
                });
                let open: Vec<usize> = conns
                    .iter()
                    .filter(|(_, c)| c.state == State::Open)
                    .map(|(k, _)| k)
                    .collect();
                if !open.is_empty() {
                    let rate = chat.rate_per_client * open.len() as f64;
                    let due = (started.elapsed().as_secs_f64() * rate) as u64;
                    let mut to_send = (chat_due_base + due)
                        .saturating_sub(ctx.stats.sent)
                        .min(open.len() as u64 * 4);
                    let mut tried = 0;
                    while to_send > 0 && tried < open.len() * 2 {
                        let k = open[rr % open.len()];
                        rr += 1;
                        tried += 1;
                        let conn = &mut conns[k];
                        if chat.messages_per_client.is_some_and(|m| conn.sent >= m) {
                            continue;
                        }
                        send_chat(conn, &mut ctx, chat.size);
                        to_send -= 1;
                    }
                    for k in open {
                        let conn = &mut conns[k];
                        if !conn.out.is_empty() && flush(conn).is_err() {
                            // The read side reports the close.
                        }
                    }
                }
            }
            if ph >= phase::STOP_SENDING && !sent_signalled {
                let waiting = conns
                    .iter()
                    .any(|(_, c)| c.state == State::Open && !c.inflight.is_empty());
                let deadline_passed =
                    ctx.now_ns > control.drain_deadline_ns.load(Ordering::Relaxed);
                if !waiting || deadline_passed {
                    sent_signalled = true;
                    let mut a = control.acked.lock().expect("acked lock");
                    for (m, &x) in a.iter_mut().zip(&ctx.acked) {
                        *m = (*m).max(x);
                    }
                    drop(a);
                    control.sent_done.fetch_add(1, Ordering::AcqRel);
                }
            }
        }

        let d = ctx.progress;
        if d != last_progress {
            control
                .delivered
                .fetch_add(d - last_progress, Ordering::Relaxed);
            last_progress = d;
        }

        if ph == phase::DRAIN && sweep {
            if ctx.finals.is_none() {
                ctx.finals = control.finals.get().map(|v| v.as_slice());
            }
            let Some(finals) = ctx.finals else { continue };
            let pending = conns.iter().any(|(_, c)| {
                c.state == State::Open
                    && c.subs
                        .iter()
                        .any(|s| s.tracker.outstanding(finals[s.chan as usize]) > 0)
            });
            let closing = conns.iter().any(|(_, c)| c.state == State::Closing);
            if (!pending && !closing)
                || ctx.now_ns > control.drain_deadline_ns.load(Ordering::Relaxed)
            {
                break;
            }
        }
    }

    // Close the books on every subscription, open or closed.
    if ctx.finals.is_none() {
        ctx.finals = control.finals.get().map(|v| v.as_slice());
    }
    for (_, conn) in conns.iter_mut() {
        dead_subs.append(&mut conn.subs);
    }
    let (counts, expected) = close_books(&dead_subs, ctx.finals);
    ctx.stats.counts = counts;
    ctx.stats.expected = expected;
    ctx.stats
}

/// Final counts and expected deliveries of a set of subscriptions.
fn close_books(subs: &[Sub], finals: Option<&[u64]>) -> (Counts, u64) {
    let mut total = Counts::default();
    let mut expected = 0;
    for s in subs.iter().filter(|s| s.subscribed) {
        let mut t = s.tracker.clone();
        let c = match finals {
            Some(f) => {
                let fin = f[s.chan as usize];
                expected += fin.saturating_sub(s.start).saturating_sub(s.own);
                t.finish(fin)
            }
            None => t.counts,
        };
        total.add(&c);
    }
    (total, expected)
}
