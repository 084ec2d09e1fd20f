//! Publications the engine really drops (slow-consumer policy `drop`, a
//! stalled reader) are reported as loss, and the run fails.
mod common;

#[test]
fn dropped_publications_are_reported_as_loss() {
    let engine =
        common::Engine::start(&["--slow-consumer", "drop", "--max-outbound-bytes", "4096"]);
    let (code, r, text) = common::loadgen_report(
        &engine,
        &[
            "saturate",
            "-c",
            "10",
            "-n",
            "4000",
            "--size",
            "2000",
            "-d",
            "60",
            "--stall-connections",
            "1",
            "--stall-seconds",
            "3",
            "--drain-timeout",
            "5",
        ],
    );
    assert_ne!(code, 0, "loss must fail the run: {text}");
    let lost = r["lost"].as_u64().unwrap();
    assert!(lost > 0, "{text}");
    // Every publication is either delivered or counted lost, exactly once.
    assert_eq!(r["deliveries"].as_u64().unwrap() + lost, 40_000, "{text}");
    assert_eq!(r["duplicates"], 0);
    assert!(text.contains("lost deliveries"), "{text}");

    // --allow-loss turns the failure into exit 0 with the same accounting.
    let (code, r, text) = common::loadgen_report(
        &engine,
        &[
            "saturate",
            "-c",
            "4",
            "-n",
            "3000",
            "--size",
            "2000",
            "-d",
            "60",
            "--stall-connections",
            "1",
            "--stall-seconds",
            "3",
            "--allow-loss",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(r["lost"].as_u64().unwrap() > 0, "{text}");
}
