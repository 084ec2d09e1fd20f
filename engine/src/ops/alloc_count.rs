//! An optional counting wrapper around the global allocator (cargo feature
//! `count-alloc`): live heap bytes and the number of allocations, read by
//! `info` so memory per connection and allocations per publication can be
//! measured on the real engine. Off by default: two relaxed atomics per
//! allocation are not free.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

pub static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
pub static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// (live heap bytes, allocations so far), when counting is compiled in.
pub fn snapshot() -> Option<(u64, u64)> {
    if cfg!(feature = "count-alloc") {
        Some((
            LIVE_BYTES.load(Ordering::Relaxed),
            ALLOCATIONS.load(Ordering::Relaxed),
        ))
    } else {
        None
    }
}

pub fn on_alloc(size: usize) {
    LIVE_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
}

pub fn on_dealloc(size: usize) {
    LIVE_BYTES.fetch_sub(size as u64, Ordering::Relaxed);
}
