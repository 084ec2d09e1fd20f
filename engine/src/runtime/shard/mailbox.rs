//! Cross-shard mailboxes: a lock-free queue per shard plus a wake-up that
//! fires only when the receiving shard is idle.
//!
//! A producer pushes, then wakes the consumer only if the consumer has said
//! it is going to sleep. A busy shard therefore drains bursts of messages
//! with no wake-ups at all; an idle one costs one cross-thread wake (monoio's
//! eventfd unpark) for the whole burst that follows.

use std::future::poll_fn;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::task::Poll;

use crossbeam_queue::SegQueue;
use futures_util::task::AtomicWaker;

/// One shard's inbox. Many producers (every other shard), one consumer.
pub struct Mailbox<T> {
    queue: SegQueue<T>,
    waker: AtomicWaker,
    sleeping: AtomicBool,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Mailbox<T> {
    pub fn new() -> Self {
        Mailbox {
            queue: SegQueue::new(),
            waker: AtomicWaker::new(),
            sleeping: AtomicBool::new(false),
        }
    }

    /// Enqueues `msg`; wakes the owner only if it is asleep.
    pub fn push(&self, msg: T) {
        self.queue.push(msg);
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Takes one message without waiting.
    pub fn try_pop(&self) -> Option<T> {
        self.queue.pop()
    }

    /// Waits for the next message (consumer side only).
    pub async fn recv(&self) -> T {
        poll_fn(|cx| {
            if let Some(m) = self.queue.pop() {
                return Poll::Ready(m);
            }
            self.waker.register(cx.waker());
            self.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            // A push that raced with going to sleep must not be missed.
            if let Some(m) = self.queue.pop() {
                self.sleeping.store(false, Ordering::Relaxed);
                return Poll::Ready(m);
            }
            Poll::Pending
        })
        .await
    }

    /// Messages waiting now (approximate under concurrency).
    pub fn len(&self) -> usize {
        self.queue.len()
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
        let mb = Arc::new(Mailbox::<(u32, u32)>::new());
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
}
