//! Single-thread wake-up primitives for tasks of one shard.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use slab::Slab;

/// Wakes one waiting task; a notification with no waiter is remembered.
#[derive(Default)]
pub struct LocalSignal {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl LocalSignal {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// A flag that, once raised, stays raised and releases every waiter.
///
/// Each [`LatchWait`] holds at most one slot in the waiter list, refreshed
/// in place when it is polled again and freed when it is dropped, so a loop
/// that races a new wait against other work on every turn (the accept
/// loops, `select!` against shutdown) keeps the list as long as the number
/// of waits alive at once, not the number ever made.
#[derive(Default)]
pub struct Latch {
    raised: Cell<bool>,
    waiters: RefCell<Slab<Waker>>,
}

impl Latch {
    pub fn raise(&self) {
        self.raised.set(true);
        // Take the wakers out first: a woken task may drop its wait, which
        // borrows the list again.
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, w) in waiters {
            w.wake();
        }
    }

    pub fn is_raised(&self) -> bool {
        self.raised.get()
    }

    /// Resolves once the latch is raised.
    pub fn wait(&self) -> LatchWait<'_> {
        LatchWait {
            latch: self,
            slot: None,
        }
    }

    /// (waits registered now, slots allocated for them).
    pub fn waiter_slots(&self) -> (usize, usize) {
        let w = self.waiters.borrow();
        (w.len(), w.capacity())
    }
}

/// The future of [`Latch::wait`].
pub struct LatchWait<'a> {
    latch: &'a Latch,
    /// This wait's entry in the latch's waiter list, once registered.
    slot: Option<usize>,
}

impl Future for LatchWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let latch = self.latch;
        if latch.raised.get() {
            self.slot = None;
            return Poll::Ready(());
        }
        let mut waiters = latch.waiters.borrow_mut();
        match self.slot.and_then(|k| waiters.get_mut(k)) {
            Some(w) => {
                if !w.will_wake(cx.waker()) {
                    *w = cx.waker().clone();
                }
            }
            None => self.slot = Some(waiters.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for LatchWait<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.slot.take() {
            if !self.latch.raised.get() {
                self.latch.waiters.borrow_mut().try_remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once(w: &mut LatchWait<'_>) -> Poll<()> {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        Pin::new(w).poll(&mut cx)
    }

    #[test]
    fn abandoned_waits_leave_nothing_behind() {
        let latch = Latch::default();
        for _ in 0..10_000 {
            let mut w = latch.wait();
            assert!(poll_once(&mut w).is_pending());
            assert!(poll_once(&mut w).is_pending());
        }
        assert_eq!(latch.waiter_slots().0, 0);
        assert!(latch.waiter_slots().1 <= 4, "{:?}", latch.waiter_slots());
    }

    #[test]
    fn raise_releases_every_live_wait() {
        let latch = Latch::default();
        let mut a = latch.wait();
        let mut b = latch.wait();
        assert!(poll_once(&mut a).is_pending());
        assert!(poll_once(&mut b).is_pending());
        assert_eq!(latch.waiter_slots().0, 2);
        latch.raise();
        assert!(poll_once(&mut a).is_ready());
        drop(b);
        assert!(poll_once(&mut latch.wait()).is_ready());
        assert_eq!(latch.waiter_slots().0, 0);
    }
}
