//! An optional counting wrapper around the global allocator (cargo feature
//! `count-alloc`): live heap bytes, the number of allocations, and live
//! allocations by size, read by `info` so memory per connection (and where
//! each of its bytes goes) and allocations per publication can be measured
//! on the real engine. Off by default: a few relaxed atomics per allocation
//! are not free.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

pub static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
pub static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Width of a size class in [`LIVE_BY_SIZE`].
pub const SIZE_STEP: usize = 16;
/// Size classes counted one by one; larger allocations share the last.
const SIZE_CLASSES: usize = 2048 / SIZE_STEP;

/// Live allocations by requested size: class `i` counts sizes in
/// `(i * 16, (i + 1) * 16]` (class 0 also counts zero), the last class
/// everything above 2032 bytes.
static LIVE_BY_SIZE: [AtomicU64; SIZE_CLASSES] = [const { AtomicU64::new(0) }; SIZE_CLASSES];

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

/// Live allocations by size class, as (largest size of the class, live
/// count) for the classes that have any; the last class's bound is
/// `usize::MAX`. Empty when counting is not compiled in.
pub fn live_by_size() -> Vec<(usize, u64)> {
    LIVE_BY_SIZE
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let n = n.load(Ordering::Relaxed);
            let bound = if i + 1 == SIZE_CLASSES {
                usize::MAX
            } else {
                (i + 1) * SIZE_STEP
            };
            (n > 0).then_some((bound, n))
        })
        .collect()
}

fn class(size: usize) -> &'static AtomicU64 {
    let i = size.saturating_sub(1) / SIZE_STEP;
    &LIVE_BY_SIZE[i.min(SIZE_CLASSES - 1)]
}

pub fn on_alloc(size: usize) {
    LIVE_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    class(size).fetch_add(1, Ordering::Relaxed);
}

pub fn on_dealloc(size: usize) {
    LIVE_BYTES.fetch_sub(size as u64, Ordering::Relaxed);
    class(size).fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_are_sixteen_bytes_wide_up_to_2_kib() {
        let at = |size| std::ptr::from_ref(class(size));
        assert_eq!(at(0), std::ptr::from_ref(&LIVE_BY_SIZE[0]));
        assert_eq!(at(16), std::ptr::from_ref(&LIVE_BY_SIZE[0]));
        assert_eq!(at(17), std::ptr::from_ref(&LIVE_BY_SIZE[1]));
        assert_eq!(at(576), std::ptr::from_ref(&LIVE_BY_SIZE[35]));
        assert_eq!(at(2048), std::ptr::from_ref(&LIVE_BY_SIZE[127]));
        assert_eq!(at(1 << 20), std::ptr::from_ref(&LIVE_BY_SIZE[127]));
    }
}
