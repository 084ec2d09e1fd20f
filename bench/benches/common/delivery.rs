//! Shared by `benches/alloc_per_publication.rs` and
//! `tests/alloc_per_publication.rs`: a counting global allocator and a
//! shard-shaped delivery loop (channel table -> per-connection frame queues).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringcast::pubsub::channel_table::ChannelTable;
use ringcast::pubsub::home_shard::HomeShard;
use ringcast::pubsub::publication::Publication;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting allocations (and reallocations).
pub struct CountingAlloc;

// SAFETY: forwards every call unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counters have no effect on the memory.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same layout the caller gave us.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// (allocations, bytes allocated) so far.
pub fn allocated() -> (u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
    )
}

/// What one shard holds for delivery: the channel's home state, its table
/// of local subscribers and each connection's queue of outbound frames.
pub struct Shard {
    home: HomeShard,
    table: ChannelTable,
    queues: Vec<VecDeque<Bytes>>,
    data: Bytes,
    next_id: u64,
}

/// Per-publication figures at steady state.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub subscribers: usize,
    pub allocs_per_publication: f64,
    pub bytes_per_publication: f64,
    pub ns_per_delivery: f64,
}

impl Shard {
    /// `subscribers` connections subscribed to `chat`, each queue with
    /// room for 8 frames already.
    pub fn new(subscribers: u32) -> Self {
        let mut table = ChannelTable::new();
        let mut home = HomeShard::new(0, 1, 64, Duration::from_secs(300), 1_732_240_000_000);
        let now = Instant::now();
        for conn in 0..subscribers {
            table.subscribe("chat", conn);
            home.subscribe("chat", 0, None, now);
        }
        Shard {
            home,
            table,
            queues: (0..subscribers)
                .map(|_| VecDeque::with_capacity(8))
                .collect(),
            data: Bytes::from_static(br#"{"text":"hello","user":"ann","n":42}"#),
            next_id: 1_732_240_000_000,
        }
    }

    /// Publishes once on the home shard and queues the frame on every
    /// local subscriber; returns deliveries made.
    pub fn publish_and_deliver(&mut self, now: Instant) -> usize {
        self.next_id += 1;
        let (id, data) = (self.next_id, &self.data);
        let published = self.home.publish("chat", now, |name, offset| {
            Publication::message(name, offset, id, 1_732_240_000, data.clone())
        });
        let frame = &published.publication.native;
        let mut n = 0;
        if let Some(subs) = self.table.subscribers("chat") {
            for &conn in subs {
                self.queues[conn as usize].push_back(frame.clone());
                n += 1;
            }
        }
        n
    }

    /// What the writer does after a flush: the queued frames are gone.
    pub fn flush(&mut self) {
        for q in &mut self.queues {
            q.clear();
        }
    }

    /// Warms up (history ring full, channel created), then counts
    /// allocations over `rounds` publications.
    pub fn measure(&mut self, rounds: u32) -> Measured {
        let now = Instant::now();
        for _ in 0..100 {
            self.publish_and_deliver(now);
            self.flush();
        }
        let mut allocs = 0;
        let mut bytes = 0;
        let mut elapsed = Duration::ZERO;
        let mut deliveries = 0usize;
        for _ in 0..rounds {
            let (a0, b0) = allocated();
            let t0 = Instant::now();
            deliveries += self.publish_and_deliver(now);
            elapsed += t0.elapsed();
            let (a1, b1) = allocated();
            allocs += a1 - a0;
            bytes += b1 - b0;
            self.flush();
        }
        Measured {
            subscribers: self.queues.len(),
            allocs_per_publication: allocs as f64 / f64::from(rounds),
            bytes_per_publication: bytes as f64 / f64::from(rounds),
            ns_per_delivery: elapsed.as_nanos() as f64 / deliveries.max(1) as f64,
        }
    }
}
