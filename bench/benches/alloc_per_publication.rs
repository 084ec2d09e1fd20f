//! Allocations per publication at 1, 100 and 10,000 subscribers, counted by
//! a global allocator wrapper.
//!
//! ringcast's claim is "one serialization per publication": the frame is
//! built once and each subscriber gets a reference-counted handle to it in
//! its (pre-sized) outbound queue. If a per-subscriber allocation crept in
//! (a copy, a boxed message, a growing queue) the count would grow with the
//! subscriber count; here it must not. Also prints the in-memory cost per
//! delivery (table scan + refcount + queue push), a floor under the
//! end-to-end CPU per delivery. Fails (exit 1) if the count grows.
//!
//! `cargo bench -p ringcast-bench --bench alloc_per_publication`

#[path = "common/delivery.rs"]
mod delivery;

use delivery::{CountingAlloc, Shard};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn main() {
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let rounds = if quick { 5 } else { 200 };
    println!("alloc_per_publication: {rounds} publications each, after 100 warm-up");
    println!(
        "{:>12} {:>16} {:>16} {:>14}",
        "subscribers", "allocs/pub", "bytes/pub", "ns/delivery"
    );
    let mut results = Vec::new();
    for subs in [1u32, 100, 10_000] {
        let m = Shard::new(subs).measure(rounds);
        println!(
            "{:>12} {:>16.2} {:>16.1} {:>14.2}",
            m.subscribers, m.allocs_per_publication, m.bytes_per_publication, m.ns_per_delivery
        );
        results.push(m);
    }
    let base = results[0].allocs_per_publication;
    if results.iter().any(|m| m.allocs_per_publication > base) {
        eprintln!("FAIL: allocations per publication grow with subscribers");
        std::process::exit(1);
    }
    println!("ok: allocations per publication do not depend on the subscriber count");
}
