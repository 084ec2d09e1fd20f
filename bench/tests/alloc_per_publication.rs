//! Delivering one publication allocates the same whatever the number of
//! subscribers: the frame is shared, never copied per subscriber.

#[path = "../benches/common/delivery.rs"]
mod delivery;

use delivery::{CountingAlloc, Shard};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn allocations_per_publication_do_not_grow_with_subscribers() {
    let counts: Vec<_> = [1u32, 100, 10_000]
        .into_iter()
        .map(|subs| Shard::new(subs).measure(20))
        .collect();
    for m in &counts {
        assert_eq!(
            m.allocs_per_publication, counts[0].allocs_per_publication,
            "allocations per publication at {} subscribers: {counts:?}",
            m.subscribers
        );
    }
    // A handful for the frame and the Arc, not one per subscriber.
    assert!(counts[0].allocs_per_publication <= 8.0, "{counts:?}");
    for m in &counts {
        println!(
            "{:>6} subscribers: {} allocs ({} bytes) per publication, {:.1} ns per delivery",
            m.subscribers, m.allocs_per_publication, m.bytes_per_publication, m.ns_per_delivery
        );
    }
}
