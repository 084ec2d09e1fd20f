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

use crate::cli::ClientProtocol;
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
    /// What the connections speak.
    pub protocol: ClientProtocol,
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

/// The command a DMOJ receiver sends after `set-filter`: DMOJ answers it
/// with a `bad-command` error, in order, so the error says the filter is in
/// place (`set-filter` itself has no reply).
const DMOJ_SYNC: &[u8] = br#"{"command":"loadgen-sync"}"#;
/// DMOJ names the command with underscores in its error.
const DMOJ_SYNC_ERROR: &[u8] = b"bad command: loadgen_sync";

/// The Socket.IO event that answers `set-filter`: the filter is in place.
const SIO_STATUS: &[u8] = br#"42["status",{"status":"success"}]"#;

fn subscribe_all(conn: &mut Conn, ctx: &mut Ctx) {
    if ctx.plan.protocol == ClientProtocol::Socketio {
        send_text(conn, ctx, b"40");
        let mut req = br#"42["set-filter",{"filter":["#.to_vec();
        for (i, sub) in conn.subs.iter().enumerate() {
            if i > 0 {
                req.push(b',');
            }
            req.push(b'"');
            req.extend_from_slice(ctx.plan.channel_names[sub.chan as usize].as_bytes());
            req.push(b'"');
        }
        req.extend_from_slice(b"]}]");
        send_text(conn, ctx, &req);
        conn.pending_subs = conn.subs.len();
        conn.state = State::Subscribing;
        return;
    }
    if ctx.plan.protocol == ClientProtocol::Dmoj {
        let mut req = br#"{"command":"set-filter","filter":["#.to_vec();
        for (i, sub) in conn.subs.iter().enumerate() {
            if i > 0 {
                req.push(b',');
            }
            req.push(b'"');
            req.extend_from_slice(ctx.plan.channel_names[sub.chan as usize].as_bytes());
            req.push(b'"');
        }
        req.extend_from_slice(b"]}");
        send_text(conn, ctx, &req);
        send_text(conn, ctx, DMOJ_SYNC);
        conn.pending_subs = conn.subs.len();
        conn.state = State::Subscribing;
        return;
    }
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
    let notice = match ctx.plan.protocol {
        ClientProtocol::Native => scan::classify(payload),
        ClientProtocol::Dmoj => scan::classify_dmoj(payload),
        ClientProtocol::Socketio => {
            if payload == b"2" {
                // Engine.IO v4: the server pings, the client answers.
                send_text(conn, ctx, b"3");
                return Ok(());
            }
            if payload == SIO_STATUS && conn.state == State::Subscribing {
                sync_all(conn, ctx);
                return Ok(());
            }
            scan::classify_socketio(payload)
        }
    };
    match notice {
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
                    mark_open(conn, ctx);
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
        Notice::Error { id: 0, message }
            if message == DMOJ_SYNC_ERROR && conn.state == State::Subscribing =>
        {
            sync_all(conn, ctx);
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

/// DMOJ, Socket.IO: the filter is in place; `seq` starts at 1 per channel.
fn sync_all(conn: &mut Conn, ctx: &mut Ctx) {
    for sub in &mut conn.subs {
        sub.start = 0;
        sub.subscribed = true;
        sub.tracker = OffsetTracker::new(0);
    }
    conn.pending_subs = 0;
    mark_open(conn, ctx);
}

/// Every subscription of `conn` is in place.
fn mark_open(conn: &mut Conn, ctx: &mut Ctx) {
    conn.state = State::Open;
    ctx.stats.opened += 1;
    ctx.stats
        .connect_hist
        .saturating_record(conn.started.elapsed().as_nanos().max(1) as u64);
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

/// How long one `poll` waits for events.
const POLL_TIMEOUT: Duration = Duration::from_millis(5);
/// How often handshake timeouts and the drain condition are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(10);
/// How often chat traffic is generated.
const CHAT_TICK: Duration = Duration::from_millis(1);

impl ThreadStats {
    fn new() -> Self {
        ThreadStats {
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
        }
    }
}

impl Conn {
    /// A connection whose TCP connect to the server is under way.
    fn connecting(sock: TcpStream, channels: &[u32], stalled: bool) -> Self {
        Conn {
            sock,
            state: State::Connecting,
            key: handshake::new_key(),
            started: Instant::now(),
            out: Vec::new(),
            partial: Vec::new(),
            frag: Vec::new(),
            frag_op: 0,
            subs: channels
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
            stalled,
            inflight: Vec::new(),
        }
    }

    /// Still connecting, upgrading or subscribing.
    fn handshaking(&self) -> bool {
        matches!(
            self.state,
            State::Connecting | State::Upgrading | State::Subscribing
        )
    }
}

/// Fault injection progress (see [`ThreadPlan::stall`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    NotYet,
    Stalled(Instant),
    Over,
}

/// One client thread's event loop state: its connections and what it has
/// measured so far. [`run_thread`] drives it one loop turn at a time.
struct Pool<'a> {
    plan: &'a ThreadPlan,
    control: &'a Control,
    poll: Poll,
    conns: Slab<Conn>,
    /// The thread's reusable read buffer.
    rbuf: Vec<u8>,
    ctx: Ctx<'a>,
    /// Next index into `plan.connections` to open.
    next_conn: usize,
    /// Connections not yet subscribed.
    in_handshake: usize,
    /// Subscriptions of closed connections, kept for the final books.
    dead_subs: Vec<Sub>,
    churn_start: Instant,
    churn_opened: u64,
    stall: Stall,
    last_sweep: Instant,
    ready_signalled: bool,
    sent_signalled: bool,
    last_chat_tick: Instant,
    /// Chat: when the measured phase started, and `stats.sent` then.
    run_started: Option<Instant>,
    chat_due_base: u64,
    /// Chat: round-robin position over the open connections.
    rr: usize,
    /// Deliveries already added to `control.delivered`.
    last_progress: u64,
}

impl<'a> Pool<'a> {
    fn new(plan: &'a ThreadPlan, control: &'a Control) -> Self {
        let ctx = Ctx {
            plan,
            stats: ThreadStats::new(),
            now_wall_ns: wall_ns(),
            now_ns: control.since_epoch_ns(),
            finals: None,
            rng: 0x9E37_79B9_7F4A_7C15
                ^ (plan.index as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D),
            next_id: 0,
            acked: vec![0; plan.channel_names.len()],
            scratch: Vec::new(),
            progress: 0,
        };
        Pool {
            plan,
            control,
            poll: Poll::new().expect("epoll instance"),
            conns: Slab::with_capacity(plan.connections.len()),
            rbuf: vec![0u8; READ_BUF],
            ctx,
            next_conn: 0,
            in_handshake: 0,
            dead_subs: Vec::new(),
            churn_start: Instant::now(),
            churn_opened: 0,
            stall: Stall::NotYet,
            last_sweep: Instant::now(),
            ready_signalled: false,
            sent_signalled: false,
            last_chat_tick: Instant::now(),
            run_started: None,
            chat_due_base: 0,
            rr: 0,
            last_progress: 0,
        }
    }

    /// Whether churn is owed another connection by now.
    fn churn_due(&self, rate: f64) -> bool {
        (self.churn_start.elapsed().as_secs_f64() * rate) as u64 > self.churn_opened
    }

    /// The next connection to open, as (its number, its channels), if one
    /// is due.
    fn next_to_open(&mut self) -> Option<(usize, Vec<u32>)> {
        let total = self.plan.connections.len();
        if let Some(rate) = self.plan.churn_rate {
            if !self.churn_due(rate) {
                return None;
            }
            self.churn_opened += 1;
            let n = self.churn_opened as usize;
            Some((n, self.plan.connections[n % total.max(1)].clone()))
        } else {
            if self.next_conn >= total {
                return None;
            }
            self.next_conn += 1;
            let n = self.next_conn - 1;
            Some((n, self.plan.connections[n].clone()))
        }
    }

    /// Opens new connections within the concurrency bound.
    fn open_connections(&mut self, ph: u8) {
        let plan = self.plan;
        let want_more = match plan.churn_rate {
            Some(rate) => ph < phase::DRAIN && self.churn_due(rate),
            None => self.next_conn < plan.connections.len(),
        };
        let concurrency = plan.concurrency.max(1);
        if !want_more || self.in_handshake >= concurrency {
            return;
        }
        for _ in 0..concurrency - self.in_handshake {
            let Some((n, channels)) = self.next_to_open() else {
                break;
            };
            let stalled = plan
                .stall
                .as_ref()
                .is_some_and(|(v, _)| plan.churn_rate.is_none() && v.contains(&n));
            if let Err(e) = self.open(n, &channels, stalled) {
                *self
                    .ctx
                    .stats
                    .connect_failures
                    .entry(io_reason(&e))
                    .or_default() += 1;
            }
        }
    }

    /// Starts connection number `n` and registers it with the poller.
    fn open(&mut self, n: usize, channels: &[u32], stalled: bool) -> io::Result<()> {
        let sock = start_connect(self.plan, n + self.plan.index, stalled)?;
        let entry = self.conns.vacant_entry();
        let mut conn = Conn::connecting(sock, channels, stalled);
        self.poll.registry().register(
            &mut conn.sock,
            Token(entry.key()),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(conn);
        self.in_handshake += 1;
        Ok(())
    }

    /// Fault injection: once the measured phase starts, stalled connections
    /// stop reading for the planned time, then resume.
    fn apply_stall(&mut self, ph: u8) {
        let Some((_, duration)) = &self.plan.stall else {
            return;
        };
        let interest = match self.stall {
            Stall::NotYet if ph >= phase::RUN => {
                self.stall = Stall::Stalled(Instant::now());
                Interest::WRITABLE
            }
            Stall::Stalled(since) if since.elapsed() >= *duration => {
                self.stall = Stall::Over;
                Interest::READABLE | Interest::WRITABLE
            }
            _ => return,
        };
        for (k, c) in self.conns.iter_mut().filter(|(_, c)| c.stalled) {
            let _ = self
                .poll
                .registry()
                .reregister(&mut c.sock, Token(k), interest);
        }
    }

    /// Handles one readiness event of one connection.
    fn handle_event(&mut self, ev: &mio::event::Event) {
        let key = ev.token().0;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
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
                        conn.out.extend_from_slice(&handshake::request(
                            &self.plan.host_header,
                            &self.plan.path,
                            &conn.key,
                        ));
                        conn.state = State::Upgrading;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(e) => result = Err(End::ConnectFailed(io_reason(&e))),
                }
            }
        }
        if result.is_ok() && ev.is_readable() && conn.state != State::Connecting {
            result = handle_readable(conn, &mut self.ctx, &mut self.rbuf);
        }
        if result.is_ok() && !conn.out.is_empty() {
            result = flush(conn);
        }
        let was_handshaking = matches!(
            before,
            State::Connecting | State::Upgrading | State::Subscribing
        );
        if was_handshaking && conn.state == State::Open {
            self.in_handshake -= 1;
            self.control.open.fetch_add(1, Ordering::Relaxed);
            if self.plan.churn_rate.is_some() {
                // Churn: close right after the subscription is confirmed.
                let mask = self.ctx.mask();
                frame::encode_masked(&mut conn.out, opcode::CLOSE, &1000u16.to_be_bytes(), mask);
                conn.state = State::Closing;
                result = flush(conn);
            }
        }
        if let Err(end) = result {
            self.close(key, end);
        }
    }

    /// Removes an ended connection and books why it ended.
    fn close(&mut self, key: usize, end: End) {
        let conn = self.conns.remove(key);
        let handshaking = conn.handshaking();
        if handshaking {
            self.in_handshake -= 1;
        }
        if conn.state == State::Open {
            self.control.open.fetch_sub(1, Ordering::Relaxed);
        }
        let stats = &mut self.ctx.stats;
        match end {
            End::Done => stats.churned += 1,
            End::ConnectFailed(r) => *stats.connect_failures.entry(r).or_default() += 1,
            End::Unexpected(r) if handshaking => *stats.connect_failures.entry(r).or_default() += 1,
            End::Unexpected(r) => {
                stats.unexpected_closes += 1;
                *stats.close_reasons.entry(r).or_default() += 1;
            }
        }
        self.dead_subs.extend(conn.subs);
    }

    /// Whether a sweep (timeouts, drain check) is due this turn.
    fn sweep_due(&mut self) -> bool {
        let due = self.last_sweep.elapsed() >= SWEEP_EVERY;
        if due {
            self.last_sweep = Instant::now();
        }
        due
    }

    /// Drops connections whose handshake took longer than the connect
    /// timeout.
    fn expire_handshakes(&mut self) {
        if self.in_handshake == 0 {
            return;
        }
        let limit = self.plan.connect_timeout;
        let timed_out: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.handshaking() && c.started.elapsed() > limit)
            .map(|(k, _)| k)
            .collect();
        for k in timed_out {
            let conn = self.conns.remove(k);
            self.in_handshake -= 1;
            *self
                .ctx
                .stats
                .connect_failures
                .entry("timeout".into())
                .or_default() += 1;
            self.dead_subs.extend(conn.subs);
        }
    }

    /// Churn: forgets connections whose close handshake never finished.
    fn expire_churned(&mut self) {
        if self.plan.churn_rate.is_none() {
            return;
        }
        let limit = self.plan.connect_timeout * 2;
        let stale: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::Closing && c.started.elapsed() > limit)
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            self.conns.remove(k);
            self.ctx.stats.churned += 1;
        }
    }

    /// Tells the main thread once this thread has finished connecting
    /// (churn threads at once: they never finish).
    fn signal_ready(&mut self) {
        if self.ready_signalled {
            return;
        }
        if self.next_conn >= self.plan.connections.len() && self.in_handshake == 0 {
            self.ready_signalled = true;
            self.ctx.stats.connect_done_ns = self.control.since_epoch_ns();
            self.control.ready.fetch_add(1, Ordering::AcqRel);
        } else if self.plan.churn_rate.is_some() {
            self.ready_signalled = true;
            self.control.ready.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Chat: sends what is due in the measured phase, then, once sending
    /// stops, reports this thread's acknowledged offsets.
    fn chat(&mut self, ph: u8, chat: &ChatPlan) {
        if ph == phase::RUN && self.last_chat_tick.elapsed() >= CHAT_TICK {
            self.last_chat_tick = Instant::now();
            self.send_due_chat(chat);
        }
        if ph >= phase::STOP_SENDING && !self.sent_signalled {
            self.report_acked();
        }
    }

    /// Sends the `send_data` calls due by now at `chat.rate_per_client`,
    /// round-robin over the open connections.
    fn send_due_chat(&mut self, chat: &ChatPlan) {
        let sent = self.ctx.stats.sent;
        let started = *self.run_started.get_or_insert_with(|| {
            self.chat_due_base = sent;
            Instant::now()
        });
        let open: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::Open)
            .map(|(k, _)| k)
            .collect();
        if open.is_empty() {
            return;
        }
        let rate = chat.rate_per_client * open.len() as f64;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        let mut to_send = (self.chat_due_base + due)
            .saturating_sub(self.ctx.stats.sent)
            .min(open.len() as u64 * 4);
        let mut tried = 0;
        while to_send > 0 && tried < open.len() * 2 {
            let k = open[self.rr % open.len()];
            self.rr += 1;
            tried += 1;
            let conn = &mut self.conns[k];
            if chat.messages_per_client.is_some_and(|m| conn.sent >= m) {
                continue;
            }
            send_chat(conn, &mut self.ctx, chat.size);
            to_send -= 1;
        }
        for k in open {
            let conn = &mut self.conns[k];
            if !conn.out.is_empty() {
                // On error the read side reports the close.
                let _ = flush(conn);
            }
        }
    }

    /// Once no own message awaits its ack (or the deadline passed), merges
    /// this thread's acknowledged offsets into `control.acked`.
    fn report_acked(&mut self) {
        let waiting = self
            .conns
            .iter()
            .any(|(_, c)| c.state == State::Open && !c.inflight.is_empty());
        let deadline_passed =
            self.ctx.now_ns > self.control.drain_deadline_ns.load(Ordering::Relaxed);
        if waiting && !deadline_passed {
            return;
        }
        self.sent_signalled = true;
        let mut acked = self.control.acked.lock().expect("acked lock");
        for (m, &x) in acked.iter_mut().zip(&self.ctx.acked) {
            *m = (*m).max(x);
        }
        drop(acked);
        self.control.sent_done.fetch_add(1, Ordering::AcqRel);
    }

    /// Adds the deliveries since the last call to `control.delivered`.
    fn report_progress(&mut self) {
        let d = self.ctx.progress;
        if d != self.last_progress {
            self.control
                .delivered
                .fetch_add(d - self.last_progress, Ordering::Relaxed);
            self.last_progress = d;
        }
    }

    /// In DRAIN: whether every open subscription has received up to its
    /// channel's final offset and every close finished, or the deadline
    /// passed.
    fn drained(&mut self) -> bool {
        if self.ctx.finals.is_none() {
            self.ctx.finals = self.control.finals.get().map(|v| v.as_slice());
        }
        let Some(finals) = self.ctx.finals else {
            return false;
        };
        let pending = self.conns.iter().any(|(_, c)| {
            c.state == State::Open
                && c.subs
                    .iter()
                    .any(|s| s.tracker.outstanding(finals[s.chan as usize]) > 0)
        });
        let closing = self.conns.iter().any(|(_, c)| c.state == State::Closing);
        (!pending && !closing)
            || self.ctx.now_ns > self.control.drain_deadline_ns.load(Ordering::Relaxed)
    }

    /// Closes the books on every subscription, open or closed.
    fn finish(mut self) -> ThreadStats {
        if self.ctx.finals.is_none() {
            self.ctx.finals = self.control.finals.get().map(|v| v.as_slice());
        }
        for (_, conn) in self.conns.iter_mut() {
            self.dead_subs.append(&mut conn.subs);
        }
        let (counts, expected) = close_books(&self.dead_subs, self.ctx.finals);
        self.ctx.stats.counts = counts;
        self.ctx.stats.expected = expected;
        self.ctx.stats
    }
}

/// Runs one client thread to completion.
pub fn run_thread(plan: ThreadPlan, control: Arc<Control>) -> ThreadStats {
    if let Some(core) = plan.core {
        core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
    let mut pool = Pool::new(&plan, &control);
    let mut events = Events::with_capacity(1024);
    loop {
        let ph = control.phase.load(Ordering::Acquire);
        if control.abort.load(Ordering::Relaxed) {
            break;
        }
        pool.open_connections(ph);
        pool.apply_stall(ph);
        if let Err(e) = pool.poll.poll(&mut events, Some(POLL_TIMEOUT)) {
            if e.kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        pool.ctx.now_wall_ns = wall_ns();
        pool.ctx.now_ns = control.since_epoch_ns();
        for ev in events.iter() {
            pool.handle_event(ev);
        }
        let sweep = pool.sweep_due();
        if sweep {
            pool.expire_handshakes();
            pool.expire_churned();
        }
        pool.signal_ready();
        if let Some(chat) = &plan.chat {
            pool.chat(ph, chat);
        }
        pool.report_progress();
        if ph == phase::DRAIN && sweep && pool.drained() {
            break;
        }
    }
    pool.finish()
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
