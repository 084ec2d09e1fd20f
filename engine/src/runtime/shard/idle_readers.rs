//! Idle readers: the read side of connections that wait for input with no
//! task of their own (io_uring driver).
//!
//! A subscriber that only receives spends its life waiting for input it
//! will never send. With a task per connection that wait costs the task
//! (376 bytes with monoio's header) and a poll request in the runtime's
//! table.
//! Here, when a session's read loop is between messages with nothing
//! pending, no deadline and nothing to wake it early, it hands its state
//! ([`Parked`]: the connection, its protocol state, its descriptor count;
//! 56 bytes) to the shard's table and its task ends. A one-shot
//! `POLL_ADD` on the shard's [`sys::PollRing`] waits for the socket; its
//! completion (input, end of stream, an error) or a wake from the engine
//! (a server-side close, a protocol wake-up: [`Shard::wake_reader`]) spawns
//! the session's read loop again with the same state
//! ([`ws_session::resume`]). Writes never need the reader: fan-out goes
//! through the flusher as before.
//!
//! One task per shard ([`run`]) submits the turn's waits and cancellations
//! in one kernel entry, resumes what was woken and sleeps on the ring's
//! descriptor. The ring runs with `COOP_TASKRUN`: a wait's completion is
//! posted when the shard next enters the kernel instead of interrupting
//! it (io_uring's connect path cost 38-43 us of server CPU per connection
//! without, 28-29 with; bench/RESULTS.md). The epoll driver keeps one task
//! per connection.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;

use super::conn::Conn;
use super::signal::LocalSignal;
use super::ws_session;
use super::{ConnRef, Shard, WsSocket};
use crate::protocol::adapter::SessionState;
use crate::pubsub::channel_table::ConnKey;
use crate::runtime::sys;

/// Waits queued per kernel entry (more are submitted early).
const RING_ENTRIES: u32 = 512;

/// A session's read side while it waits in the ring: what its read loop
/// needs to go on (a fresh `WsProtocol` is rebuilt: it was between
/// messages).
pub(crate) struct Parked {
    pub(crate) conn: Rc<Conn>,
    pub(crate) cref: ConnRef,
    pub(crate) state: SessionState,
    pub(crate) counted: Option<WsSocket>,
    /// Tells this wait's completion from a cancelled earlier one of the
    /// same connection.
    gen: u32,
}

impl Parked {
    pub(crate) fn new(
        conn: Rc<Conn>,
        cref: ConnRef,
        state: SessionState,
        counted: Option<WsSocket>,
    ) -> Self {
        Parked {
            conn,
            cref,
            state,
            counted,
            gen: 0,
        }
    }
}

/// The shard's idle read sides, indexed by connection key, and the ring
/// their waits are in.
pub(crate) struct IdleReaders {
    ring: RefCell<sys::PollRing>,
    slots: RefCell<Vec<Option<Parked>>>,
    /// Woken from elsewhere: for [`run`] to resume.
    woken: RefCell<Vec<Parked>>,
    parked: Cell<usize>,
    next_gen: Cell<u32>,
    /// Tells [`run`] that waits are queued or read sides were woken.
    signal: LocalSignal,
    /// The ring failed once: nothing parks any more.
    failed: Cell<bool>,
}

/// A wait's completion token: the connection's key and the wait's
/// generation (31 bits, so no token is `u64::MAX`, the ring's own tag).
fn token(key: ConnKey, gen: u32) -> u64 {
    u64::from(key) | (u64::from(gen) << 32)
}

impl IdleReaders {
    /// `None` if the kernel refuses the ring: sessions then keep their
    /// tasks while idle.
    pub(crate) fn new() -> Option<Self> {
        match sys::PollRing::new(RING_ENTRIES) {
            Ok(ring) => Some(IdleReaders {
                ring: RefCell::new(ring),
                slots: RefCell::new(Vec::new()),
                woken: RefCell::new(Vec::new()),
                parked: Cell::new(0),
                next_gen: Cell::new(0),
                signal: LocalSignal::default(),
                failed: Cell::new(false),
            }),
            Err(e) => {
                tracing::warn!("no poll ring ({e}): idle connections keep a task each");
                None
            }
        }
    }

    /// Whether a read side can park now.
    pub(crate) fn accepting(&self) -> bool {
        !self.failed.get()
    }

    /// Read sides waiting in the ring now.
    pub(crate) fn parked(&self) -> usize {
        self.parked.get()
    }

    /// Parks `p`: arms its socket's wait. `Err(p)` when the ring refused
    /// (the caller goes on reading with its task).
    pub(crate) fn park(&self, mut p: Parked) -> Result<(), Parked> {
        let Some(fd) = p.conn.socket().map(|s| s.as_raw_fd()) else {
            return Err(p);
        };
        let gen = self.next_gen.get().wrapping_add(1) & 0x7fff_ffff;
        self.next_gen.set(gen);
        p.gen = gen;
        let key = p.conn.key;
        if let Err(e) = self.ring.borrow_mut().arm(fd, token(key, gen)) {
            self.fail(&e);
            return Err(p);
        }
        let mut slots = self.slots.borrow_mut();
        let i = key as usize;
        if slots.len() <= i {
            slots.resize_with(i + 1, || None);
        }
        slots[i] = Some(p);
        self.parked.set(self.parked.get() + 1);
        self.signal.notify();
        Ok(())
    }

    /// Takes `conn`'s read side out of the ring if it is parked
    /// (cancelling its wait), for [`run`] to resume it. A connection that
    /// already ended (a stale reference, its key reused) wakes nothing.
    pub(crate) fn wake(&self, conn: &Conn) {
        let key = conn.key;
        let Some(p) = self.take(key, |p| std::ptr::eq(Rc::as_ptr(&p.conn), conn)) else {
            return;
        };
        if let Err(e) = self.ring.borrow_mut().disarm(token(key, p.gen)) {
            // The wait stays armed until the socket has input or ends.
            self.fail(&e);
        }
        self.woken.borrow_mut().push(p);
        self.signal.notify();
    }

    /// The parked read side of `key`, if it is the one `this` names.
    fn take(&self, key: ConnKey, this: impl FnOnce(&Parked) -> bool) -> Option<Parked> {
        let mut slots = self.slots.borrow_mut();
        let slot = slots.get_mut(key as usize)?;
        if !slot.as_ref().is_some_and(this) {
            return None;
        }
        let p = slot.take()?;
        self.parked.set(self.parked.get() - 1);
        Some(p)
    }

    /// The ring failed: nothing parks any more, and everything parked is
    /// resumed to wait with its own task.
    fn fail(&self, e: &std::io::Error) {
        if self.failed.replace(true) {
            return;
        }
        tracing::warn!("poll ring failed ({e}): idle connections keep a task each from now");
        let all: Vec<Parked> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        self.parked.set(0);
        self.woken.borrow_mut().extend(all);
        self.signal.notify();
    }
}

/// The shard's idle-reader task: submits the waits and cancellations each
/// loop turn queued (one kernel entry), resumes the read sides whose wait
/// completed or that were woken, and sleeps until the ring has completions
/// or more is queued.
pub(crate) async fn run(shard: Rc<Shard>) {
    let Some(idle) = &shard.idle_readers else {
        return;
    };
    let waiter = match idle.ring.borrow().waiter() {
        Ok(w) => w,
        Err(e) => {
            idle.fail(&e);
            resume_woken(&shard, idle);
            return;
        }
    };
    let mut done = Vec::new();
    let mut ring_ready = pin!(waiter.readable(false));
    loop {
        let submitted = {
            let mut ring = idle.ring.borrow_mut();
            match ring.needs_submit() {
                true => ring.submit(),
                false => Ok(()),
            }
        };
        if let Err(e) = submitted {
            idle.fail(&e);
        }
        resume_woken(&shard, idle);
        idle.ring.borrow_mut().reap(&mut done);
        for (token, _events) in done.drain(..) {
            // Input, end of stream or an error: the read loop finds out
            // which. A stale token (a wait cancelled after a wake) finds
            // nothing.
            if let Some(p) = idle.take(token as u32, |p| p.gen == (token >> 32) as u32) {
                ws_session::resume(&shard, p, true);
            }
        }
        if idle.ring.borrow_mut().needs_submit() && !idle.failed.get() {
            // More completions wait in the kernel's overflow list.
            continue;
        }
        let mut queued = pin!(idle.signal.wait());
        let ring_woke = poll_fn(|cx| {
            if let Poll::Ready(r) = ring_ready.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            match queued.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match ring_woke {
            Some(Ok(())) => ring_ready.set(waiter.readable(false)),
            Some(Err(e)) => {
                idle.fail(&e);
                resume_woken(&shard, idle);
                return;
            }
            None => {}
        }
    }
}

/// Resumes every read side woken since last time (not by its socket: it
/// first checks why it was woken, then waits again).
fn resume_woken(shard: &Rc<Shard>, idle: &IdleReaders) {
    let woken = std::mem::take(&mut *idle.woken.borrow_mut());
    for p in woken {
        ws_session::resume(shard, p, false);
    }
}

impl Shard {
    /// Wakes `conn`'s reader, parked in the ring or waiting in its task,
    /// so it sees why (a server-side close, a protocol wake-up).
    pub(crate) fn wake_reader(&self, conn: &Conn) {
        conn.wake_reader();
        if let Some(idle) = &self.idle_readers {
            idle.wake(conn);
        }
    }

    /// Wakes `conn`'s session for its protocol ([`Conn::wake_session`]).
    pub(crate) fn wake_session(&self, conn: &Conn) {
        conn.wake_session();
        if let Some(idle) = &self.idle_readers {
            idle.wake(conn);
        }
    }
}
