//! Cross-shard mailboxes: a lock-free queue per shard plus a wake-up that
//! fires only when the receiving shard is idle.
//!
//! A producer pushes, then wakes the consumer only if the consumer has said
//! it is going to sleep. A busy shard therefore drains bursts of messages
//! with no wake-ups at all; an idle one costs one cross-thread wake (monoio's
//! eventfd unpark) for the whole burst that follows.
//!
//! # The bound (`limits.mailbox_capacity`)
//!
//! Each mailbox counts the messages it holds. Two kinds of push:
//!
//! - [`Mailbox::try_push`] for *requests that start work*: a publish sent to
//!   its channel's home shard. When the mailbox already holds `capacity`
//!   messages the message is handed back and the publisher answers
//!   "overloaded: try again" (JSON-RPC -32005 on the backend port and to
//!   native/RocketWS clients, `overloaded` to DMOJ). Nothing was
//!   published, so nothing acknowledged is lost.
//! - [`Mailbox::push`] for *consequences*, which are never refused:
//!   deliveries (`Deliver`, `Broadcast`), subscription acks, unsubscribes,
//!   shutdown, and the questions a waiting connection asks (subscribe,
//!   history, gathers: one in flight per connection, so bounded by the
//!   connection limit). Refusing a delivery would lose a publication that
//!   was already acknowledged, and refusing an unsubscribe would leak a
//!   subscriber count. Deliveries stay bounded instead by *admission at the
//!   home shard*: a publication is accepted only if every other shard it
//!   will be delivered to has room ([`Mailbox::has_room`]), checked before
//!   its offset is assigned, and `notify_all` only if every shard has room.
//!   A mailbox can therefore exceed `capacity` only by the deliveries of
//!   publications admitted at the same moment on other home shards (at most
//!   one per shard), plus acks and unsubscribes, which the subscriptions
//!   bound.
//!
//! The count is one relaxed atomic add per push and one subtract per pop,
//! on the cache line the queue's own indices already share.

use std::future::poll_fn;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

use crossbeam_queue::SegQueue;
use futures_util::task::AtomicWaker;

/// One shard's inbox. Many producers (every other shard), one consumer.
pub struct Mailbox<T> {
    queue: SegQueue<T>,
    waker: AtomicWaker,
    sleeping: AtomicBool,
    /// Messages pushed and not yet popped.
    len: AtomicUsize,
    /// Messages past which [`try_push`](Self::try_push) refuses.
    capacity: usize,
}

impl<T> Mailbox<T> {
    /// A mailbox that refuses requests once it holds `capacity` messages.
    pub fn new(capacity: usize) -> Self {
        Mailbox {
            queue: SegQueue::new(),
            waker: AtomicWaker::new(),
            sleeping: AtomicBool::new(false),
            len: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Enqueues a request unless the mailbox holds `capacity` messages;
    /// hands `msg` back when it is full.
    pub fn try_push(&self, msg: T) -> Result<(), T> {
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.len.fetch_sub(1, Ordering::Relaxed);
            return Err(msg);
        }
        self.enqueue(msg);
        Ok(())
    }

    /// Enqueues a consequence (delivery, ack, shutdown) past the bound;
    /// wakes the owner only if it is asleep.
    pub fn push(&self, msg: T) {
        self.len.fetch_add(1, Ordering::Relaxed);
        self.enqueue(msg);
    }

    /// True while the mailbox holds fewer than `capacity` messages.
    pub fn has_room(&self) -> bool {
        self.len.load(Ordering::Relaxed) < self.capacity
    }

    fn enqueue(&self, msg: T) {
        self.queue.push(msg);
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Takes one message without waiting.
    pub fn try_pop(&self) -> Option<T> {
        self.pop()
    }

    fn pop(&self) -> Option<T> {
        let m = self.queue.pop()?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(m)
    }

    /// Waits for the next message (consumer side only).
    pub async fn recv(&self) -> T {
        poll_fn(|cx| {
            if let Some(m) = self.pop() {
                return Poll::Ready(m);
            }
            self.waker.register(cx.waker());
            self.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            // A push that raced with going to sleep must not be missed.
            if let Some(m) = self.pop() {
                self.sleeping.store(false, Ordering::Relaxed);
                return Poll::Ready(m);
            }
            Poll::Pending
        })
        .await
    }

    /// Messages waiting now (approximate under concurrency).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn delivers_everything_across_threads_in_order_per_producer() {
        let mb = Arc::new(Mailbox::<(u32, u32)>::new(usize::MAX));
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let mb = mb.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        mb.push((p, i));
                    }
                })
            })
            .collect();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let mut next = [0u32; 2];
            for _ in 0..40_000 {
                let (p, i) = mb.recv().await;
                assert_eq!(i, next[p as usize]);
                next[p as usize] += 1;
            }
            next
        });
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(got, [20_000, 20_000]);
        assert!(mb.is_empty());
    }

    #[test]
    fn requests_are_refused_at_capacity_and_consequences_are_not() {
        let mb = Mailbox::<u32>::new(3);
        for i in 0..3 {
            assert_eq!(mb.try_push(i), Ok(()));
        }
        assert!(!mb.has_room());
        assert_eq!(mb.try_push(9), Err(9));
        assert_eq!(mb.len(), 3);
        // A delivery goes in past the bound.
        mb.push(10);
        assert_eq!(mb.len(), 4);
        assert_eq!(mb.try_push(11), Err(11));
        // Popping frees room again, one slot per message.
        assert_eq!(mb.try_pop(), Some(0));
        assert_eq!(mb.try_pop(), Some(1));
        assert!(mb.has_room());
        assert_eq!(mb.try_push(12), Ok(()));
        assert_eq!(mb.try_push(13), Err(13));
        let rest: Vec<u32> = std::iter::from_fn(|| mb.try_pop()).collect();
        assert_eq!(rest, [2, 10, 12]);
        assert!(mb.is_empty() && mb.has_room());
    }

    #[test]
    fn the_bound_holds_across_threads() {
        let mb = Arc::new(Mailbox::<u32>::new(1000));
        let producers: Vec<_> = (0..4)
            .map(|_| {
                let mb = mb.clone();
                std::thread::spawn(move || (0..10_000).filter(|&i| mb.try_push(i).is_ok()).count())
            })
            .collect();
        let accepted: usize = producers.into_iter().map(|p| p.join().unwrap()).sum();
        assert_eq!(accepted, 1000);
        assert_eq!(mb.len(), 1000);
    }
}
