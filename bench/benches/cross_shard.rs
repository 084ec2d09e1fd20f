//! Cross-shard handoff: a crossbeam `SegQueue` push/pop of shared frames
//! plus the wake-up of an idle shard, in batches of 1 … 64.
//!
//! A publication whose subscribers live on other shards crosses a mailbox
//! once per interested shard. The engine pushes onto the target's queue and
//! wakes it only if it announced it was going idle (an atomic `sleeping`
//! flag). The wake (a futex via `thread::park`/`unpark`, or an `eventfd`
//! write + read as an io_uring loop would use) costs microseconds, the push
//! nanoseconds, so the per-message figure at each batch size shows how much
//! batching buys. Every batch here finds the consumer asleep: the worst
//! case, one wake per batch. `same_thread` is the queue alone.

use std::hint::black_box;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::SegQueue;
use ringcast_bench::sys::{eventfd, eventfd_signal, eventfd_wait};

const BATCHES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// How a sleeping shard is woken.
enum Waker {
    Park(Thread),
    EventFd(Arc<OwnedFd>),
}

impl Waker {
    fn wake(&self) {
        match self {
            Waker::Park(t) => t.unpark(),
            Waker::EventFd(fd) => eventfd_signal(&**fd).expect("eventfd write"),
        }
    }
}

/// One shard's inbox, as the engine's shard runtime shapes it.
#[derive(Default)]
struct Mailbox {
    queue: SegQueue<Bytes>,
    sleeping: AtomicBool,
    consumed: AtomicU64,
    stop: AtomicBool,
}

/// A consumer thread draining `mailbox` and sleeping when it is empty.
struct Consumer {
    mailbox: Arc<Mailbox>,
    waker: Waker,
    handle: Option<JoinHandle<()>>,
    sent: u64,
}

impl Consumer {
    fn spawn(use_eventfd: bool) -> Self {
        let mailbox = Arc::new(Mailbox::default());
        let efd = use_eventfd.then(|| Arc::new(eventfd().expect("eventfd")));
        let (mb, efd2) = (mailbox.clone(), efd.clone());
        let handle = thread::spawn(move || loop {
            let mut n = 0;
            while let Some(frame) = mb.queue.pop() {
                black_box(frame);
                n += 1;
            }
            if n > 0 {
                mb.consumed.fetch_add(n, Ordering::Release);
                continue;
            }
            if mb.stop.load(Ordering::Acquire) {
                return;
            }
            // Announce sleep, then look once more: a push that raced the
            // announcement is either seen here or wakes us.
            mb.sleeping.store(true, Ordering::SeqCst);
            if !mb.queue.is_empty() || mb.stop.load(Ordering::Acquire) {
                mb.sleeping.store(false, Ordering::SeqCst);
                continue;
            }
            match &efd2 {
                Some(fd) => {
                    eventfd_wait(&**fd).expect("eventfd read");
                }
                None => thread::park(),
            }
            mb.sleeping.store(false, Ordering::SeqCst);
        });
        let waker = match efd {
            Some(fd) => Waker::EventFd(fd),
            None => Waker::Park(handle.thread().clone()),
        };
        Consumer {
            mailbox,
            waker,
            handle: Some(handle),
            sent: 0,
        }
    }

    /// Hands `batch` frames to the consumer, wakes it if it sleeps, and
    /// waits until it has taken them all.
    fn handoff(&mut self, frame: &Bytes, batch: usize) {
        for _ in 0..batch {
            self.mailbox.queue.push(frame.clone());
        }
        if self.mailbox.sleeping.swap(false, Ordering::SeqCst) {
            self.waker.wake();
        }
        self.sent += batch as u64;
        let mut spins = 0u32;
        while self.mailbox.consumed.load(Ordering::Acquire) < self.sent {
            spins += 1;
            if spins < 200 {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.mailbox.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(h) = self.handle.take() {
            h.join().expect("consumer thread");
        }
    }
}

fn cross_shard(c: &mut Criterion) {
    let frame = Bytes::from(vec![0x81u8; 100]);
    let mut g = c.benchmark_group("cross_shard");
    for batch in BATCHES {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(
            BenchmarkId::new("same_thread", batch),
            &batch,
            |b, &batch| {
                let q = SegQueue::new();
                b.iter(|| {
                    for _ in 0..batch {
                        q.push(frame.clone());
                    }
                    while let Some(f) = q.pop() {
                        black_box(f);
                    }
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("park_wake", batch), &batch, |b, &batch| {
            let mut consumer = Consumer::spawn(false);
            b.iter(|| consumer.handoff(&frame, batch))
        });
        g.bench_with_input(
            BenchmarkId::new("eventfd_wake", batch),
            &batch,
            |b, &batch| {
                let mut consumer = Consumer::spawn(true);
                b.iter(|| consumer.handoff(&frame, batch))
            },
        );
    }
    g.finish();
}

criterion_group!(benches, cross_shard);
criterion_main!(benches);
