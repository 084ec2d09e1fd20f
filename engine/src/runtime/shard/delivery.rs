//! Getting frames to connections: the outbound budget and slow-consumer
//! policy, server-initiated closes, fan-out of a publication to local
//! subscribers, and the flusher that writes each dirty connection once per
//! loop turn.

use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use super::*;
use crate::ops::metrics::ShardMetrics;
use crate::protocol::adapter::protocol;
use crate::protocol::codec::close_code;
use crate::protocol::deflate::{frame_payload_len, Agreement};
use crate::protocol::websocket::close_frame;
use crate::pubsub::channel_table::ConnKey;
use crate::pubsub::publication::Publication;
use crate::runtime::sys;

/// Sends per kernel entry of the io_uring driver's flusher.
const SEND_RING: u32 = 256;

/// The flusher sends what it gathered once this many bytes are waiting,
/// even if the ring has room: the arena stays small.
const ARENA_SOFT_MAX: usize = 256 * 1024;

/// The io_uring driver's flusher state: the ring and the buffers one
/// batch of sends uses, kept from turn to turn (no allocation per flush).
pub(crate) struct SendBatch {
    ring: sys::SendRing,
    /// The gathered bytes of every connection in the batch.
    arena: Vec<u8>,
    conns: Vec<Rc<Conn>>,
    sends: Vec<(std::os::fd::RawFd, std::ops::Range<usize>)>,
    results: Vec<std::io::Result<usize>>,
}

impl SendBatch {
    /// `None` when the kernel refuses another ring: the flusher then sends
    /// with one syscall per connection.
    pub(crate) fn new() -> Option<Self> {
        match sys::SendRing::new(SEND_RING) {
            Ok(ring) => Some(SendBatch {
                ring,
                arena: Vec::new(),
                conns: Vec::new(),
                sends: Vec::new(),
                results: Vec::new(),
            }),
            Err(e) => {
                tracing::warn!("no send ring ({e}): one send syscall per connection");
                None
            }
        }
    }
}

impl Shard {
    pub(super) fn offer(&self, conn: &Rc<Conn>, frame: &Bytes, now: Instant) -> bool {
        if !conn.is_open() {
            return false;
        }
        let cfg = &self.node.config.limits;
        match conn.enqueue(frame.clone(), cfg.max_outbound_bytes, cfg.slow_consumer) {
            Enqueued::Queued => {
                if protocol(conn.proto).one_shot() {
                    // Its answer is complete: nothing more goes to it.
                    conn.mark_closing(now);
                }
                self.mark_dirty(conn);
                true
            }
            Enqueued::Dropped => {
                ShardMetrics::inc(&self.metrics.dropped_deliveries);
                false
            }
            Enqueued::OverBudget => {
                self.slow_consumer(conn, now);
                false
            }
        }
    }

    /// Queues a control frame (pong, ping) under the outbound budget: past
    /// it the connection is closed as a slow consumer (policy
    /// `disconnect`) or its reader holds off (policy `drop`).
    pub fn send_control(&self, conn: &Rc<Conn>, frame: Bytes) {
        let cfg = &self.node.config.limits;
        match conn.enqueue_owed(frame, cfg.max_outbound_bytes, cfg.slow_consumer) {
            Enqueued::OverBudget => self.slow_consumer(conn, Instant::now()),
            _ => self.mark_dirty(conn),
        }
    }

    /// Puts a reply where its hold was, under the outbound budget like
    /// [`Shard::send_control`].
    pub fn send_reply(&self, conn: &Rc<Conn>, hold: u32, frame: Option<Bytes>) {
        let Some(frame) = frame else {
            conn.fill_hold(hold, None);
            // Frames queued behind the hold (a publication that arrived
            // while the call ran, the caller's own echo among them) were
            // skipped by a flush that met the hold first: they are writable
            // only now.
            if conn.has_writable() {
                self.mark_dirty(conn);
            }
            return;
        };
        let cfg = &self.node.config.limits;
        match conn.fill_hold_owed(hold, frame, cfg.max_outbound_bytes, cfg.slow_consumer) {
            Enqueued::OverBudget => {
                conn.fill_hold(hold, None);
                self.slow_consumer(conn, Instant::now());
            }
            _ => self.mark_dirty(conn),
        }
    }

    /// Closes `conn` with 1008 "slow consumer", dropping what it had queued.
    fn slow_consumer(&self, conn: &Rc<Conn>, now: Instant) {
        if !conn.is_open() {
            return;
        }
        ShardMetrics::inc(&self.metrics.slow_consumer_disconnects);
        self.close_conn(
            conn,
            close_code::POLICY_VIOLATION,
            "slow consumer",
            true,
            now,
        );
    }

    pub fn mark_dirty(&self, conn: &Conn) {
        if !conn.dirty.replace(true) {
            self.dirty.borrow_mut().push(conn.key);
            self.flush_signal.notify();
        }
    }

    /// Starts a server-side close: queue the close frame, stop the reader.
    pub fn close_conn(
        &self,
        conn: &Rc<Conn>,
        code: u16,
        reason: &str,
        discard: bool,
        now: Instant,
    ) {
        if !protocol(conn.proto).websocket() {
            // A parked HTTP request: no close frame, just stop it.
            conn.mark_closing(now);
            // Its task waits for readability: end-of-stream wakes it.
            sys::shutdown_socket(conn.fd(), std::net::Shutdown::Read);
            return;
        }
        if conn.begin_close(Bytes::from(close_frame(code, reason)), discard, now) {
            self.mark_dirty(conn);
            // The reader stops, cleans up and drains (a lingering close).
            self.wake_reader(conn);
        }
    }

    /// The form of `p` that `conn`'s protocol delivers (built once per
    /// publication, then shared), or its compressed twin when `conn`
    /// agreed permessage-deflate and the form is big enough (also built
    /// once, by this shard's deflater, and shared).
    pub(super) fn frame_for<'a>(&self, conn: &Conn, p: &'a Publication) -> &'a Bytes {
        let slot = usize::from(conn.proto);
        let plain = p.form(slot, |p| protocol(conn.proto).encode_publication(p));
        let Some(agreement) = Agreement::from_byte(conn.deflate) else {
            return plain;
        };
        let len = frame_payload_len(plain).unwrap_or(0);
        if len < self.config().ws.compression_min_size || !agreement.may_send_compressed(len) {
            return plain;
        }
        p.compressed_form(slot, plain, |plain| {
            self.deflater.borrow_mut().compress_frame(plain)
        })
    }

    /// Delivers a channel publication to this shard's subscribers.
    pub fn deliver(&self, p: &Publication, exclude: Option<ConnKey>) -> usize {
        let Some(channel) = p.channel.as_deref() else {
            return 0;
        };
        let table = self.table.borrow();
        let subs = table.subscribers(channel);
        let conns = self.conns.borrow();
        let now = Instant::now();
        let mut n = 0;
        for &key in subs.into_iter().flatten() {
            if Some(key) == exclude {
                continue;
            }
            if let Some(conn) = conns.get(key) {
                n += self.offer(conn, self.frame_for(conn, p), now) as usize;
            }
        }
        // `user:{sub}`: also the user's connections that did not subscribe
        // (each authenticated connection is in its own user channel).
        if let Some(user) = self.personal_user(channel) {
            let users = self.users.borrow();
            for &key in users.conns(user) {
                if Some(key) == exclude || subs.is_some_and(|s| s.contains(&key)) {
                    continue;
                }
                if let Some(conn) = conns.get(key) {
                    n += self.offer(conn, self.frame_for(conn, p), now) as usize;
                }
            }
        }
        ShardMetrics::add(&self.metrics.deliveries, n as u64);
        n
    }

    /// Delivers a broadcast to every local connection once.
    pub fn deliver_all(&self, p: &Publication) -> usize {
        let conns = self.conns.borrow();
        let now = Instant::now();
        let mut n = 0;
        for conn in conns.iter() {
            n += self.offer(conn, self.frame_for(conn, p), now) as usize;
        }
        ShardMetrics::add(&self.metrics.deliveries, n as u64);
        n
    }

    pub async fn run_flusher(self: Rc<Self>) {
        loop {
            self.flush_signal.wait().await;
            let mut batch = std::mem::take(&mut *self.spare_dirty.borrow_mut());
            std::mem::swap(&mut batch, &mut *self.dirty.borrow_mut());
            match &self.send_batch {
                Some(sb) => self.flush_batched(&mut sb.borrow_mut(), &mut batch),
                None => {
                    for key in batch.drain(..) {
                        let conn = self.conns.borrow().get(key).cloned();
                        if let Some(conn) = conn {
                            conn.dirty.set(false);
                            self.flush_conn(&conn);
                        }
                    }
                }
            }
            *self.spare_dirty.borrow_mut() = batch;
        }
    }

    /// The io_uring driver's flush of the dirty connections: each one's
    /// writable frames (up to [`GATHER_MAX`](conn::GATHER_MAX) bytes) are
    /// copied into one arena and sent with one kernel entry per
    /// [`SEND_RING`] connections. A connection whose head frame alone is
    /// larger, or that has no socket, is flushed on its own as before.
    fn flush_batched(self: &Rc<Self>, sb: &mut SendBatch, keys: &mut Vec<ConnKey>) {
        for key in keys.drain(..) {
            let Some(conn) = self.conns.borrow().get(key).cloned() else {
                continue;
            };
            conn.dirty.set(false);
            if conn.write_blocked.get() {
                continue;
            }
            let Some(fd) = conn.socket().map(|s| s.as_raw_fd()) else {
                // A polling session's connection: its frames go to its queue.
                self.flush_conn(&conn);
                continue;
            };
            let start = sb.arena.len();
            let n = conn.gather_into(&mut sb.arena, conn::GATHER_MAX);
            if n == 0 {
                // Nothing to send, or a head frame too large to copy.
                self.flush_conn(&conn);
                continue;
            }
            sb.sends.push((fd, start..start + n));
            sb.conns.push(conn);
            if sb.sends.len() == sb.ring.capacity() || sb.arena.len() >= ARENA_SOFT_MAX {
                self.send_gathered(sb);
            }
        }
        self.send_gathered(sb);
    }

    /// Sends what [`flush_batched`](Self::flush_batched) gathered, then
    /// settles each connection as [`flush_conn`](Self::flush_conn) does.
    fn send_gathered(self: &Rc<Self>, sb: &mut SendBatch) {
        if sb.sends.is_empty() {
            return;
        }
        let SendBatch {
            ring,
            arena,
            conns,
            sends,
            results,
        } = sb;
        let budget = self.node.config.limits.max_outbound_bytes;
        if ring.send_all(arena, sends, results).is_err() {
            // The ring itself failed (not a socket): each on its own.
            results.clear();
        }
        for (i, conn) in conns.drain(..).enumerate() {
            // As `flush_now` reports it: (everything offered went, bytes).
            let attempt = match results.get(i) {
                Some(Ok(n)) => {
                    conn.sent(*n);
                    Some((*n == sends[i].1.len(), *n))
                }
                Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => Some((false, 0)),
                Some(Err(e)) if e.kind() != std::io::ErrorKind::Interrupted => None,
                // Interrupted, or the ring failed: on its own.
                _ => {
                    self.flush_conn(&conn);
                    continue;
                }
            };
            conn.release_reader(budget);
            self.settle(&conn, attempt);
            if attempt.is_some_and(|(all, _)| all) && conn.has_writable() {
                // More than one send's worth was queued.
                self.flush_conn(&conn);
            }
        }
        arena.clear();
        sends.clear();
        results.clear();
    }

    /// Writes what `conn`'s socket takes now, through the shard's gather
    /// buffer.
    pub(crate) fn flush_now(&self, conn: &Conn) -> std::io::Result<(bool, usize)> {
        let r = conn.flush(&mut self.gather.borrow_mut());
        conn.release_reader(self.node.config.limits.max_outbound_bytes);
        r
    }

    /// One flush attempt; starts a writer task if the socket is full.
    pub fn flush_conn(self: &Rc<Self>, conn: &Rc<Conn>) {
        if conn.write_blocked.get() {
            return;
        }
        let attempt = self.flush_now(conn).ok();
        self.settle(conn, attempt);
    }

    /// After a write attempt (`Some((drained, bytes))`, `None`: the peer
    /// is gone): counts what left, starts a writer task if the socket was
    /// full, or stops the reader, which cleans up.
    fn settle(self: &Rc<Self>, conn: &Rc<Conn>, attempt: Option<(bool, usize)>) {
        match attempt {
            Some((drained, n)) => {
                ShardMetrics::add(&self.metrics.bytes_out, n as u64);
                if !drained {
                    conn.write_blocked.set(true);
                    monoio::spawn(wait_writable(self.clone(), conn.clone()));
                }
            }
            None => {
                conn.mark_closing(Instant::now());
                self.wake_reader(conn);
            }
        }
    }
}

async fn wait_writable(shard: Rc<Shard>, conn: Rc<Conn>) {
    while let Some(stream) = conn.socket() {
        if stream.writable(false).await.is_err() {
            break;
        }
        match shard.flush_now(&conn) {
            Ok((drained, n)) => {
                ShardMetrics::add(&shard.metrics.bytes_out, n as u64);
                if drained {
                    break;
                }
            }
            Err(_) => {
                conn.mark_closing(Instant::now());
                sys::shutdown_socket(conn.fd(), Shutdown::Both);
                break;
            }
        }
    }
    conn.write_blocked.set(false);
    if conn.has_writable() {
        shard.mark_dirty(&conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::config::Config;
    use std::io::Read;

    /// A publication queued behind an unanswered call's hold, a flush
    /// meanwhile (it stops at the hold), then the call ends with no reply:
    /// the publication still goes out. (It stayed queued until the next
    /// write to that connection: a ws4redis `echo` lost under load.)
    #[test]
    fn frames_behind_a_reply_less_hold_are_flushed() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut peer, stream) = super::super::loopback_pair();
            let shard = Shard::new(0, Node::new(Config::default(), 1), "epoll");
            let (conn, _) = shard.add_conn(|key| Conn::new(key, stream, 0, 1, Instant::now()));
            let hold = conn.push_hold();
            assert!(shard.offer(&conn, &Bytes::from_static(b"echo"), Instant::now()));
            // The flusher's turn: nothing is writable ahead of the hold.
            conn.dirty.set(false);
            shard.flush_conn(&conn);
            assert!(!conn.has_writable(), "the hold is first");
            shard.send_reply(&conn, hold, None);
            assert!(
                conn.dirty.get(),
                "the frame behind the hold waits for no flush"
            );
            conn.dirty.set(false);
            shard.flush_conn(&conn);
            let mut got = [0u8; 4];
            peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            peer.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"echo");
        });
    }
}
