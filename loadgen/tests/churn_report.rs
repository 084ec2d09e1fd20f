//! `churn`'s report says how many connections came and went, over how
//! long, at what rate against the one asked for (not "N open of -c").
mod common;

#[test]
fn churn_report_shows_connections_per_second_against_the_rate_asked() {
    let engine = common::Engine::start(&[]);
    let (code, r, text) = common::loadgen_report(
        &engine,
        &[
            "churn",
            "-c",
            "10",
            "--channels",
            "2",
            "--rate",
            "200",
            "-d",
            "2",
        ],
    );
    assert_eq!(code, 0, "{text}");
    let churned = r["churned"].as_u64().unwrap();
    let secs = r["churn_seconds"].as_f64().unwrap();
    assert_eq!(r["churn_target_per_s"].as_f64(), Some(200.0), "{r}");
    // 2 s at 200/s, on a shared machine: most of the 400, never more
    // than the rate allows over the time it ran.
    assert!(
        (300..=(secs * 200.0) as u64 + 1).contains(&churned),
        "{churned} in {secs} s\n{text}"
    );
    assert!((2.0..10.0).contains(&secs), "{secs}\n{text}");
    let row = text
        .lines()
        .find(|l| l.contains("churned connections"))
        .unwrap_or_else(|| panic!("no churn row:\n{text}"));
    assert!(
        row.contains(&format!(
            "{churned} opened, subscribed and closed in {secs:.1} s"
        )) && row.contains("(asked 200/s)"),
        "{row}"
    );
    assert!(!text.contains("open of"), "{text}");
    // The JSON's connect figures are the churn's, not zero.
    assert_eq!(r["connections_open"].as_u64(), Some(churned), "{r}");
    assert_eq!(r["connect_seconds"].as_f64(), Some(secs), "{r}");
    let per_s = r["connects_per_s"].as_f64().unwrap_or(0.0);
    assert!(
        (per_s - churned as f64 / secs).abs() < 1e-6 * per_s.max(1.0),
        "{per_s} vs {churned} in {secs} s"
    );
}
