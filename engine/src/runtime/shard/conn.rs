//! A WebSocket connection's shard-side state and its outbound queue.
//!
//! Frames for a connection are queued as shared `Bytes` (a publication's
//! frame is the same buffer for every subscriber) and leave in one
//! non-blocking `send` per flush: a lone frame straight from the shared
//! buffer, several joined in the shard's gather buffer first. A `Hold` marks where a reply that is
//! still being computed (it waits on another shard) will go: nothing queued
//! behind it is sent before it, which keeps a subscribe's reply ahead of the
//! channel's first live publications.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use monoio::net::TcpStream;

use crate::ops::config::SlowConsumerPolicy;
use crate::protocol::adapter::ProtocolId;
use crate::pubsub::channel_table::ConnKey;
use crate::runtime::engineio_poll::Session as PollSession;
use crate::runtime::shard::tick::Tick;
use crate::runtime::sys;

/// Frames are gathered into one send up to this many bytes.
pub const GATHER_MAX: usize = 64 * 1024;

/// Room (queue slots) an empty queue that was busy in the last second
/// keeps at the shard's once-a-second tick; a backlog's larger room, and
/// any room above one slot of a queue that held at most one item all
/// second, is given back then ([`Outbound::release_room`]).
const KEEP_ROOM: usize = 4;

enum OutItem {
    Frame(Bytes),
    Hold(u32),
}

/// Frames waiting to be written.
#[derive(Default)]
pub struct Outbound {
    items: VecDeque<OutItem>,
    /// Bytes of the first frame already written.
    head_written: usize,
    /// Bytes queued and not yet written (holds excluded).
    queued: usize,
    next_hold: u32,
    /// Most items queued at once since the last tick.
    deepest: u32,
}

/// What an enqueue did under the slow-consumer policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Policy `drop`: the frame was dropped.
    Dropped,
    /// Policy `disconnect`: the budget is exceeded; close the connection.
    OverBudget,
}

impl Outbound {
    /// Anything that could be written now.
    pub fn has_writable(&self) -> bool {
        matches!(self.items.front(), Some(OutItem::Frame(_)))
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Frames queued and not yet completely written.
    pub fn frames(&self) -> usize {
        self.items
            .iter()
            .filter(|i| matches!(i, OutItem::Frame(_)))
            .count()
    }

    fn push(&mut self, frame: Bytes) {
        self.queued += frame.len();
        self.push_item(OutItem::Frame(frame));
    }

    /// Whether an owed frame of `len` bytes must not be queued: over the
    /// budget under policy `disconnect` (under `drop` it always is).
    fn owed_over_budget(&self, len: usize, budget: usize, policy: SlowConsumerPolicy) -> bool {
        self.queued + len > budget && policy == SlowConsumerPolicy::Disconnect
    }

    fn push_hold(&mut self) -> u32 {
        self.next_hold = self.next_hold.wrapping_add(1);
        self.push_item(OutItem::Hold(self.next_hold));
        self.next_hold
    }

    /// The first item gets room for exactly one: a mostly idle connection
    /// never queues more than a reply or a ping at a time. Busier ones grow
    /// by doubling and keep their capacity while they are busy, so steady
    /// fan-out allocates nothing per delivery; the room a backlog grew is
    /// given back once a second at most ([`Outbound::release_room`]).
    fn push_item(&mut self, item: OutItem) {
        if self.items.capacity() == 0 {
            self.items.reserve_exact(1);
        }
        self.items.push_back(item);
        self.deepest = self.deepest.max(self.items.len() as u32);
    }

    fn fill_hold(&mut self, token: u32, frame: Option<Bytes>) {
        let Some(pos) = self
            .items
            .iter()
            .position(|i| matches!(i, OutItem::Hold(t) if *t == token))
        else {
            return;
        };
        match frame {
            Some(f) => {
                self.queued += f.len();
                self.items[pos] = OutItem::Frame(f);
            }
            None => {
                self.items.remove(pos);
            }
        }
    }

    /// Gives back the room a backlog grew once the queue has drained
    /// (called by the shard's once-a-second tick, so a connection that
    /// bursts and drains reallocates at most once a second). Without it a
    /// moment when the shard fell behind would leave every subscriber's
    /// queue at its high-water capacity for the life of the connection.
    /// A queue that held two or more items in the last second keeps up to
    /// [`KEEP_ROOM`] slots, so one that often holds a few reallocates
    /// nothing; one that held at most one item all second goes back to
    /// the single slot an idle connection needs. (A churn of connections
    /// that kept the shard busy for a moment left every steady
    /// subscriber's queue at four slots, 128 bytes, before this.)
    fn release_room(&mut self) -> bool {
        let busy = self.deepest > 1;
        self.deepest = self.items.len() as u32;
        let cap = self.items.capacity();
        if self.items.is_empty() && (cap > KEEP_ROOM || (cap > 1 && !busy)) {
            self.items = VecDeque::new();
            return true;
        }
        false
    }

    /// Takes the frames up to the first hold (a socket-less connection's
    /// flush: they go to its polling session's queue).
    fn take_frames(&mut self, mut each: impl FnMut(Bytes)) -> usize {
        let mut n = 0;
        while let Some(OutItem::Frame(_)) = self.items.front() {
            if let Some(OutItem::Frame(f)) = self.items.pop_front() {
                n += f.len();
                each(f);
            }
        }
        self.queued -= n.min(self.queued);
        self.head_written = 0;
        n
    }

    /// Puts a frame first (older than everything queued).
    fn push_front(&mut self, frame: Bytes) {
        self.queued += frame.len();
        self.items.push_front(OutItem::Frame(frame));
    }

    /// Drops every frame not yet started (keeps a partly written head so
    /// the stream stays well-formed).
    fn discard_unstarted(&mut self) {
        let keep_head = self.head_written > 0;
        let head = if keep_head {
            self.items.pop_front()
        } else {
            None
        };
        self.items.clear();
        self.queued = 0;
        if let Some(OutItem::Frame(f)) = head {
            self.queued = f.len() - self.head_written;
            self.items.push_back(OutItem::Frame(f));
        }
    }

    /// Writes as much as the socket takes: a lone frame straight from its
    /// shared buffer, several frames gathered into `gather` (up to
    /// [`GATHER_MAX`] bytes) and sent with one `send`. On this kernel one
    /// contiguous buffer beats both `writev` and a write per frame (see
    /// the `write_coalescing` bench). `Ok((true, n))` when everything
    /// writable went out.
    fn write_to(&mut self, fd: RawFd, gather: &mut Vec<u8>) -> io::Result<(bool, usize)> {
        let mut total = 0;
        loop {
            let Some(OutItem::Frame(first)) = self.items.front() else {
                return Ok((true, total));
            };
            let head = &first[self.head_written..];
            let alone =
                head.len() >= GATHER_MAX || !matches!(self.items.get(1), Some(OutItem::Frame(_)));
            let out: &[u8] = if alone {
                head
            } else {
                // The head is under GATHER_MAX here, so it goes first.
                gather.clear();
                self.gather_into(gather, GATHER_MAX);
                gather
            };
            let offered = out.len();
            let written = match sys::send_nonblocking(fd, out) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((false, total)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += written;
            self.advance(written);
            if written < offered {
                return Ok((false, total));
            }
        }
    }

    /// Appends to `arena` what one send would write now: the writable
    /// frames from the head, at most `max` bytes. Returns how many bytes
    /// it appended (0 when nothing is writable, or the head frame's rest
    /// alone is over `max`). Nothing counts as written until
    /// [`advance`](Self::advance).
    fn gather_into(&self, arena: &mut Vec<u8>, max: usize) -> usize {
        let start = arena.len();
        for (i, item) in self.items.iter().enumerate() {
            let OutItem::Frame(f) = item else { break };
            let part = if i == 0 {
                &f[self.head_written..]
            } else {
                &f[..]
            };
            if arena.len() - start + part.len() > max {
                break;
            }
            arena.extend_from_slice(part);
        }
        arena.len() - start
    }

    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(OutItem::Frame(f)) = self.items.front() else {
                break;
            };
            let left = f.len() - self.head_written;
            if n >= left {
                n -= left;
                self.head_written = 0;
                self.items.pop_front();
            } else {
                self.head_written += n;
                n = 0;
            }
        }
    }
}

/// Liveness and lifecycle of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Open,
    /// A close frame is queued; the reader is stopping.
    Closing,
}

/// A token bucket for the per-connection request rate.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f32,
    last: Tick,
}

impl TokenBucket {
    pub fn new(burst: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: burst as f32,
            last: Tick::of(now),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        // Whole milliseconds: the next refill counts from this tick, so
        // nothing is lost to rounding.
        let now = Tick::of(now);
        let dt = now.since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + dt * rate as f32).min(burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One connection as its shard sees it: a WebSocket client, a parked
/// HTTP request, or an Engine.IO polling session (no socket of its own
/// until the client upgrades; its frames go to the session's queue).
pub struct Conn {
    pub key: ConnKey,
    stream: OnceCell<TcpStream>,
    /// The Engine.IO polling session a socket-less connection serves.
    polled: Option<Arc<PollSession>>,
    /// The wire protocol it speaks (`protocol::adapter::PROTOCOLS`).
    pub proto: ProtocolId,
    /// The permessage-deflate agreement, packed
    /// (`protocol::deflate::Agreement::to_byte`); 0 = uncompressed.
    pub deflate: u8,
    out: RefCell<Outbound>,
    state: Cell<ConnState>,
    /// Queued in the shard's dirty list, waiting for the flusher.
    pub(crate) dirty: Cell<bool>,
    /// A writer task is waiting for the socket to drain.
    pub(crate) write_blocked: Cell<bool>,
    pub(crate) ping_sent: Cell<Option<Tick>>,
    pub(crate) last_seen: Cell<Tick>,
    pub(crate) closing_since: Cell<Option<Tick>>,
    pub(crate) bucket: Cell<TokenBucket>,
    /// Channels this connection is subscribed to (interned in the table).
    pub(crate) subs: RefCell<Vec<Rc<str>>>,
    /// The session task while it waits for input: a server-side close
    /// wakes it so it stops reading (see [`Conn::wake_reader`]).
    reader: Cell<Option<Waker>>,
    /// The reader waits for the queue to drain under budget.
    throttled: Cell<bool>,
    /// Who it is (`None`: anonymous); one pointer, shared claims.
    ident: Cell<Option<Rc<crate::access::Identity>>>,
    /// Its protocol's session was woken from elsewhere
    /// ([`Conn::wake_session`]): the session runs the protocol's
    /// `on_deadline` at once.
    woken: Cell<bool>,
}

impl Conn {
    pub fn new(
        key: ConnKey,
        stream: TcpStream,
        proto: ProtocolId,
        burst: u32,
        now: Instant,
    ) -> Self {
        let sock = OnceCell::new();
        let _ = sock.set(stream);
        Self::build(key, sock, None, proto, burst, now)
    }

    /// A connection without a socket for the Engine.IO polling session
    /// `session`: what is queued for it goes to the session's queue (a
    /// GET takes it), until [`Conn::attach_socket`] gives it the client's
    /// WebSocket.
    pub(crate) fn socketless(
        key: ConnKey,
        session: Arc<PollSession>,
        proto: ProtocolId,
        burst: u32,
        now: Instant,
    ) -> Self {
        Self::build(key, OnceCell::new(), Some(session), proto, burst, now)
    }

    fn build(
        key: ConnKey,
        stream: OnceCell<TcpStream>,
        polled: Option<Arc<PollSession>>,
        proto: ProtocolId,
        burst: u32,
        now: Instant,
    ) -> Self {
        Conn {
            key,
            stream,
            polled,
            proto,
            deflate: 0,
            out: RefCell::new(Outbound::default()),
            state: Cell::new(ConnState::Open),
            dirty: Cell::new(false),
            write_blocked: Cell::new(false),
            ping_sent: Cell::new(None),
            last_seen: Cell::new(Tick::of(now)),
            closing_since: Cell::new(None),
            bucket: Cell::new(TokenBucket::new(burst, now)),
            subs: RefCell::new(Vec::new()),
            reader: Cell::new(None),
            throttled: Cell::new(false),
            ident: Cell::new(None),
            woken: Cell::new(false),
        }
    }

    /// Who it is, if it presented a token.
    pub fn identity(&self) -> Option<Rc<crate::access::Identity>> {
        let id = self.ident.take();
        self.ident.set(id.clone());
        id
    }

    pub(crate) fn set_identity(&self, id: Option<Rc<crate::access::Identity>>) {
        self.ident.set(id);
    }

    pub(crate) fn take_identity(&self) -> Option<Rc<crate::access::Identity>> {
        self.ident.take()
    }

    /// The same connection with permessage-deflate agreed (packed).
    pub fn with_deflate(mut self, deflate: u8) -> Self {
        self.deflate = deflate;
        self
    }

    /// Its socket; `None` for a polling session not upgraded.
    pub fn socket(&self) -> Option<&TcpStream> {
        self.stream.get()
    }

    /// The socket's descriptor, -1 without one (then a `shutdown` on it
    /// fails harmlessly).
    pub fn fd(&self) -> RawFd {
        self.socket().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// A polling session's connection takes the client's WebSocket: what
    /// the session's queue still held (`older`, already framed) goes out
    /// first, then what is queued here. False if it had a socket already.
    pub(crate) fn attach_socket(&self, stream: TcpStream, older: Vec<Bytes>) -> bool {
        if self.stream.set(stream).is_err() {
            return false;
        }
        let mut out = self.out.borrow_mut();
        for f in older.into_iter().rev() {
            out.push_front(f);
        }
        true
    }

    /// The polling session it serves (while it has no socket).
    pub(crate) fn polled(&self) -> Option<&Arc<PollSession>> {
        self.polled.as_ref().filter(|_| self.stream.get().is_none())
    }

    pub fn state(&self) -> ConnState {
        self.state.get()
    }

    pub fn is_open(&self) -> bool {
        self.state.get() == ConnState::Open
    }

    /// Queues a frame under the byte budget and policy.
    pub fn enqueue(&self, frame: Bytes, budget: usize, policy: SlowConsumerPolicy) -> Enqueued {
        let mut out = self.out.borrow_mut();
        if out.queued + frame.len() > budget {
            return match policy {
                SlowConsumerPolicy::Drop => Enqueued::Dropped,
                SlowConsumerPolicy::Disconnect => Enqueued::OverBudget,
            };
        }
        out.push(frame);
        Enqueued::Queued
    }

    /// Queues a frame that is owed to the client (a reply, an error, a
    /// pong, a ping): never dropped, but under the budget like the rest.
    /// `OverBudget` (nothing queued) under policy `disconnect`; under
    /// `drop` it is queued and the reader holds off until the queue is
    /// back under budget (see [`Conn::throttle_reader`]).
    pub fn enqueue_owed(
        &self,
        frame: Bytes,
        budget: usize,
        policy: SlowConsumerPolicy,
    ) -> Enqueued {
        let mut out = self.out.borrow_mut();
        if out.owed_over_budget(frame.len(), budget, policy) {
            return Enqueued::OverBudget;
        }
        out.push(frame);
        Enqueued::Queued
    }

    /// Puts a reply where its hold was, under the same rule as
    /// [`Conn::enqueue_owed`]; an over-budget reply leaves the hold in place.
    pub fn fill_hold_owed(
        &self,
        token: u32,
        frame: Bytes,
        budget: usize,
        policy: SlowConsumerPolicy,
    ) -> Enqueued {
        let mut out = self.out.borrow_mut();
        if out.owed_over_budget(frame.len(), budget, policy) {
            return Enqueued::OverBudget;
        }
        out.fill_hold(token, Some(frame));
        Enqueued::Queued
    }

    /// Gives back the queue room a drained backlog left (see
    /// [`Outbound::release_room`]); true if it did.
    pub fn release_room(&self) -> bool {
        self.out.borrow_mut().release_room()
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.borrow().queued
    }

    pub fn push_hold(&self) -> u32 {
        self.out.borrow_mut().push_hold()
    }

    pub fn fill_hold(&self, token: u32, frame: Option<Bytes>) {
        self.out.borrow_mut().fill_hold(token, frame);
    }

    /// Marks the connection closing with `close_frame` as the last thing it
    /// will be sent; `discard` drops what was queued before (slow consumer).
    /// Returns false if it was already closing.
    pub fn begin_close(&self, close_frame: Bytes, discard: bool, now: Instant) -> bool {
        if self.state.get() != ConnState::Open {
            return false;
        }
        self.state.set(ConnState::Closing);
        self.closing_since.set(Some(Tick::of(now)));
        let mut out = self.out.borrow_mut();
        if discard {
            out.discard_unstarted();
        }
        out.push(close_frame);
        true
    }

    /// Marks closing without sending anything (the peer is gone).
    pub fn mark_closing(&self, now: Instant) {
        if self.state.get() == ConnState::Open {
            self.state.set(ConnState::Closing);
            self.closing_since.set(Some(Tick::of(now)));
        }
    }

    /// Parks the reading task while more than `budget` bytes are queued;
    /// true if it must wait. The flush that brings the queue back under
    /// budget wakes it ([`Conn::release_reader`]).
    pub(crate) fn throttle_reader(&self, budget: usize, waker: &Waker) -> bool {
        if self.queued() <= budget {
            return false;
        }
        self.throttled.set(true);
        self.park_reader(waker);
        true
    }

    /// Wakes a throttled reader once the queue is back under `budget`.
    pub(crate) fn release_reader(&self, budget: usize) {
        if self.throttled.get() && self.queued() <= budget {
            self.throttled.set(false);
            self.wake_reader();
        }
    }

    /// Remembers the reading task's waker while it waits for input.
    pub(crate) fn park_reader(&self, waker: &Waker) {
        let w = match self.reader.take() {
            Some(w) if w.will_wake(waker) => w,
            _ => waker.clone(),
        };
        self.reader.set(Some(w));
    }

    /// Wakes the reading task (it sees the connection is no longer open and
    /// stops). Used instead of `shutdown(SHUT_RD)`, after which Linux would
    /// answer any further client data with a reset once our FIN is out,
    /// losing the close frame.
    pub(crate) fn wake_reader(&self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    /// Wakes the session for its protocol (`protocol::adapter::SessionWake`):
    /// it calls the protocol's `on_deadline` as soon as it waits again.
    pub(crate) fn wake_session(&self) {
        self.woken.set(true);
        self.wake_reader();
    }

    /// Whether the session was woken and has not yet seen it.
    pub(crate) fn is_woken(&self) -> bool {
        self.woken.get()
    }

    /// Whether the session was woken since last asked (and forget it).
    pub(crate) fn take_woken(&self) -> bool {
        self.woken.replace(false)
    }

    /// Forgets the reading task (it has stopped reading).
    pub(crate) fn unpark_reader(&self) {
        self.reader.take();
    }

    /// Writes what the socket takes now, using `gather` (the shard's
    /// buffer) to join several frames. `Ok((drained, bytes))`.
    /// A socket-less connection hands its frames to its polling session.
    pub fn flush(&self, gather: &mut Vec<u8>) -> io::Result<(bool, usize)> {
        match (self.socket(), self.polled()) {
            (Some(s), _) => self.out.borrow_mut().write_to(s.as_raw_fd(), gather),
            (None, Some(session)) => {
                let mut out = self.out.borrow_mut();
                let n = session.push_frames(|push| out.take_frames(push));
                Ok((true, n))
            }
            (None, None) => Ok((true, 0)),
        }
    }

    pub fn has_writable(&self) -> bool {
        self.out.borrow().has_writable()
    }

    /// Copies what one send would write now, up to `max` bytes, to the end
    /// of `arena` (see [`Outbound::gather_into`]).
    pub(crate) fn gather_into(&self, arena: &mut Vec<u8>, max: usize) -> usize {
        self.out.borrow().gather_into(arena, max)
    }

    /// The kernel took `n` bytes of what [`Conn::gather_into`] gathered.
    pub(crate) fn sent(&self, n: usize) {
        self.out.borrow_mut().advance(n);
    }

    /// Frames queued and not completely written.
    pub fn unsent_frames(&self) -> usize {
        self.out.borrow().frames()
    }

    /// The socket back, once the connection is forgotten (a long-poll
    /// connection serves its next request with it).
    pub fn into_stream(self) -> Option<TcpStream> {
        self.stream.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_keep_later_frames_back_and_fill_in_place() {
        let mut o = Outbound::default();
        o.push(Bytes::from_static(b"a"));
        let h = o.push_hold();
        o.push(Bytes::from_static(b"c"));
        assert_eq!(o.queued, 2);
        o.advance(1);
        assert!(!o.has_writable());
        o.fill_hold(h, Some(Bytes::from_static(b"bb")));
        assert!(o.has_writable());
        assert_eq!(o.queued, 3);
        o.advance(3);
        assert!(o.is_empty());
    }

    #[test]
    fn drained_backlog_gives_its_room_back_and_busy_queues_keep_it() {
        let mut o = Outbound::default();
        for _ in 0..100 {
            o.push(Bytes::from_static(b"x"));
        }
        assert!(o.items.capacity() >= 100);
        assert!(!o.release_room(), "a queue with frames keeps its room");
        o.advance(100);
        assert!(o.is_empty());
        assert!(o.release_room());
        assert_eq!(o.items.capacity(), 0);
        o.push(Bytes::from_static(b"y"));
        o.advance(1);
        assert!(!o.release_room(), "the room of a quiet connection is kept");
        assert_eq!(o.items.capacity(), 1);
    }

    #[test]
    fn a_short_burst_keeps_its_room_while_busy_and_gives_it_back_after_a_quiet_second() {
        let mut o = Outbound::default();
        let burst = |o: &mut Outbound| {
            for _ in 0..3 {
                o.push(Bytes::from_static(b"x"));
            }
            o.advance(3);
        };
        burst(&mut o);
        let room = o.items.capacity();
        assert!((2..=KEEP_ROOM).contains(&room));
        assert!(!o.release_room(), "busy in the last second: the room stays");
        burst(&mut o);
        assert!(!o.release_room(), "still busy");
        assert_eq!(o.items.capacity(), room, "nothing reallocated");
        // A second of single frames (fan-out that keeps up).
        for _ in 0..20 {
            o.push(Bytes::from_static(b"y"));
            o.advance(1);
        }
        assert!(o.release_room(), "a quiet second gives the room back");
        assert_eq!(o.items.capacity(), 0);
        o.push(Bytes::from_static(b"z"));
        assert_eq!(o.items.capacity(), 1, "one slot again");
        assert!(!o.release_room(), "a queue with a frame keeps its room");
        o.advance(1);
        assert!(!o.release_room(), "one slot is never given back");
    }

    #[test]
    fn empty_hold_is_removed() {
        let mut o = Outbound::default();
        let h = o.push_hold();
        o.push(Bytes::from_static(b"x"));
        o.fill_hold(h, None);
        assert!(o.has_writable());
    }

    #[test]
    fn a_gathered_send_takes_frames_up_to_a_hold_and_the_limit() {
        let mut o = Outbound::default();
        o.push(Bytes::from_static(b"hello"));
        o.push(Bytes::from_static(b"world"));
        o.advance(2);
        let mut arena = b"other connection's|".to_vec();
        // From inside the head frame, whole frames after it, up to `max`.
        assert_eq!(o.gather_into(&mut arena, 8), 8);
        assert_eq!(&arena[19..], b"lloworld");
        let mut arena = Vec::new();
        assert_eq!(o.gather_into(&mut arena, 7), 3, "only what fits whole");
        assert_eq!(o.gather_into(&mut arena, 2), 0, "the head alone is over");
        // Gathering writes nothing: the kernel's count does.
        assert_eq!(o.queued, 8);
        o.advance(5);
        assert_eq!((o.items.len(), o.head_written, o.queued), (1, 2, 3));
        // Nothing behind a hold goes.
        let h = o.push_hold();
        o.push(Bytes::from_static(b"later"));
        let mut arena = Vec::new();
        assert_eq!(o.gather_into(&mut arena, 64), 3);
        o.advance(3);
        assert_eq!(o.gather_into(&mut arena, 64), 0);
        o.fill_hold(h, None);
        assert_eq!(o.gather_into(&mut arena, 64), 5);
    }

    #[test]
    fn partial_writes_advance_inside_frames() {
        let mut o = Outbound::default();
        o.push(Bytes::from_static(b"hello"));
        o.push(Bytes::from_static(b"world"));
        o.advance(3);
        assert_eq!(o.head_written, 3);
        assert_eq!(o.queued, 7);
        o.advance(4);
        assert_eq!(o.head_written, 2);
        assert_eq!(o.items.len(), 1);
    }

    #[test]
    fn discard_keeps_a_started_frame() {
        let mut o = Outbound::default();
        o.push(Bytes::from_static(b"hello"));
        o.push(Bytes::from_static(b"world"));
        o.advance(2);
        o.discard_unstarted();
        assert_eq!(o.items.len(), 1);
        assert_eq!(o.queued, 3);
    }

    #[test]
    fn frames_leave_in_order_alone_or_gathered() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut gather = Vec::new();
        let mut o = Outbound::default();
        o.push(Bytes::from_static(b"one"));
        assert_eq!(o.write_to(a.as_raw_fd(), &mut gather).unwrap(), (true, 3));
        assert!(
            gather.is_empty(),
            "a lone frame is sent from its own buffer"
        );
        o.push(Bytes::from_static(b"two"));
        o.push(Bytes::from_static(b"three"));
        let h = o.push_hold();
        o.push(Bytes::from_static(b"held"));
        assert_eq!(o.write_to(a.as_raw_fd(), &mut gather).unwrap(), (true, 8));
        o.fill_hold(h, Some(Bytes::from_static(b"reply")));
        assert_eq!(o.write_to(a.as_raw_fd(), &mut gather).unwrap(), (true, 9));
        let mut got = vec![0u8; 20];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"onetwothreereplyheld");
        assert!(o.is_empty());
    }

    #[test]
    fn token_bucket_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, t0);
        assert!(b.take(1, 2, t0));
        assert!(b.take(1, 2, t0));
        assert!(!b.take(1, 2, t0));
        assert!(b.take(1, 2, t0 + std::time::Duration::from_millis(1100)));
    }
}
