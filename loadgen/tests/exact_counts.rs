//! 1,000 connections over 4 channels get exactly every publication.
mod common;

#[test]
fn thousand_connections_receive_exactly_every_publication() {
    let engine = common::Engine::start(&[]);
    let (code, r, text) = common::loadgen_report(
        &engine,
        &[
            "fanout",
            "-c",
            "1000",
            "--channels",
            "4",
            "--rate",
            "400",
            "-n",
            "400",
            "-d",
            "30",
            "--threads",
            "2",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["connections_open"], 1000, "{text}");
    assert_eq!(r["publications"], 400, "{text}");
    // 100 publications per channel, 250 subscribers each.
    assert_eq!(r["expected_deliveries"], 100_000, "{text}");
    assert_eq!(r["deliveries"], 100_000, "{text}");
    for k in ["lost", "duplicates", "reordered", "unexpected_closes"] {
        assert_eq!(r[k], 0, "{k}: {text}");
    }
    assert_eq!(r["latency_ns"]["count"], 100_000);
    assert!(
        r["server"]["ns_per_delivery"].as_f64().unwrap_or(0.0) > 0.0,
        "{text}"
    );
}

#[test]
fn worker_processes_merge_into_exact_counts() {
    let engine = common::Engine::start(&[]);
    let (code, r, text) =
        common::loadgen_report(&engine, &["-a", "1000", "-n", "3", "--processes", "2"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["processes"], 2);
    assert_eq!(r["connections_open"], 1000);
    assert_eq!(r["deliveries"], 3000, "{text}");
    assert_eq!(r["lost"], 0);
}
