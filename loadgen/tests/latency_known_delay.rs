//! Latency comes from the payload's embedded timestamp: a known injected
//! delay (timestamps backdated by 250 ms) shows up in every percentile.
mod common;

#[test]
fn latency_reflects_a_known_delay() {
    let engine = common::Engine::start(&[]);
    let (code, r, text) = common::loadgen_report(
        &engine,
        &[
            "fanout",
            "-c",
            "100",
            "--rate",
            "100",
            "-d",
            "1",
            "--ts-backdate-ms",
            "250",
        ],
    );
    assert_eq!(code, 0, "{text}");
    let l = &r["latency_ns"];
    assert_eq!(l["count"], r["deliveries"]);
    let min = l["min"].as_u64().unwrap();
    let p50 = l["p50"].as_u64().unwrap();
    assert!(
        min >= 250_000_000,
        "min {min} below the injected 250 ms: {text}"
    );
    assert!(
        p50 < 400_000_000,
        "p50 {p50} far above the injected 250 ms: {text}"
    );
}
