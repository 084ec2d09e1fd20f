//! The run report: what was measured, how reports of worker processes merge,
//! and how it reads as a table for a person.
#![forbid(unsafe_code)]

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A latency histogram in microseconds-or-nanoseconds (see the field name),
/// stored as recorded (value, count) pairs so reports from worker processes
/// merge exactly.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    /// (value, count) pairs of the histogram, for merging.
    pub buckets: Vec<(u64, u64)>,
}

/// Creates the histogram every part of the loadgen uses: 1 ns … 1 hour, 3
/// significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("static histogram bounds")
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
            buckets: h
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        }
    }

    pub fn to_histogram(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for &(v, c) in &self.buckets {
            h.saturating_record_n(v, c);
        }
        h
    }

    pub fn merge(&mut self, other: &LatencySummary) {
        let mut h = self.to_histogram();
        h.add(other.to_histogram()).expect("same histogram bounds");
        *self = LatencySummary::from_histogram(&h);
    }
}

/// What the server cost, from /proc over the measured window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerCost {
    pub pid: u32,
    pub cpu_ns: u64,
    pub ns_per_delivery: Option<f64>,
    pub rss_before_bytes: u64,
    pub rss_connected_bytes: u64,
    pub rss_after_bytes: u64,
    pub rss_per_connection_bytes: Option<f64>,
    pub fds_before: Option<u64>,
    pub fds_after: Option<u64>,
    /// (seconds since start, RSS bytes) samples, for `idle`.
    pub rss_samples: Vec<(f64, u64)>,
}

/// The full report of one run (or of one worker process, before merging).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub processes: u32,
    pub threads: u32,
    pub connections_target: u64,
    pub connections_open: u64,
    pub connect_failures: BTreeMap<String, u64>,
    pub connect_seconds: f64,
    pub connects_per_s: f64,
    /// Upgrade + subscribe round trip, ns.
    pub connect_latency_ns: LatencySummary,
    pub channels: u64,
    pub publications: u64,
    pub publish_errors: u64,
    /// Seconds from the first publication to the last delivery.
    pub window_seconds: f64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub unexpected_closes: u64,
    pub close_reasons: BTreeMap<String, u64>,
    pub protocol_errors: u64,
    pub rpc_errors: BTreeMap<String, u64>,
    /// End-to-end latency from the payload's timestamp, ns.
    pub latency_ns: LatencySummary,
    /// This tool's own CPU time (user + system) over the window.
    pub client_cpu_ns: u64,
    pub client_ns_per_delivery: Option<f64>,
    pub server: Option<ServerCost>,
    /// Churn: connections opened and closed.
    pub churned: u64,
    /// Churn: seconds the churn ran for (the measured phase).
    #[serde(default)]
    pub churn_seconds: f64,
    /// Churn: connections per second asked for (`--rate`).
    #[serde(default)]
    pub churn_target_per_s: f64,
    pub server_info: Option<serde_json::Value>,
    /// When the last delivery arrived (ns since the Unix epoch); merging
    /// worker reports takes the latest.
    #[serde(default)]
    pub last_delivery_wall_ns: u64,
}

impl Report {
    /// Folds a worker process's report into this one. Counters add up,
    /// histograms merge, times take the longest.
    pub fn merge(&mut self, o: &Report) {
        self.processes += o.processes;
        self.threads += o.threads;
        self.connections_target += o.connections_target;
        self.connections_open += o.connections_open;
        for (k, v) in &o.connect_failures {
            *self.connect_failures.entry(k.clone()).or_default() += v;
        }
        self.connect_seconds = self.connect_seconds.max(o.connect_seconds);
        self.connect_latency_ns.merge(&o.connect_latency_ns);
        self.publications += o.publications;
        self.publish_errors += o.publish_errors;
        self.window_seconds = self.window_seconds.max(o.window_seconds);
        self.expected_deliveries += o.expected_deliveries;
        self.deliveries += o.deliveries;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.unexpected_closes += o.unexpected_closes;
        for (k, v) in &o.close_reasons {
            *self.close_reasons.entry(k.clone()).or_default() += v;
        }
        self.protocol_errors += o.protocol_errors;
        for (k, v) in &o.rpc_errors {
            *self.rpc_errors.entry(k.clone()).or_default() += v;
        }
        self.latency_ns.merge(&o.latency_ns);
        self.client_cpu_ns += o.client_cpu_ns;
        self.churned += o.churned;
        self.churn_seconds = self.churn_seconds.max(o.churn_seconds);
        self.churn_target_per_s = self.churn_target_per_s.max(o.churn_target_per_s);
        self.last_delivery_wall_ns = self.last_delivery_wall_ns.max(o.last_delivery_wall_ns);
        self.finish_rates();
    }

    /// Recomputes the derived rates from the counters.
    pub fn finish_rates(&mut self) {
        self.deliveries_per_s = rate(self.deliveries, self.window_seconds);
        self.connects_per_s = rate(self.connections_open, self.connect_seconds);
        self.client_ns_per_delivery =
            (self.deliveries > 0).then(|| self.client_cpu_ns as f64 / self.deliveries as f64);
        let deliveries = self.deliveries;
        let conns = self.connections_open;
        if let Some(s) = &mut self.server {
            s.ns_per_delivery = (deliveries > 0).then(|| s.cpu_ns as f64 / deliveries as f64);
            s.rss_per_connection_bytes = (conns > 0 && s.rss_connected_bytes > 0)
                .then(|| (s.rss_connected_bytes as f64 - s.rss_before_bytes as f64) / conns as f64);
        }
    }

    /// Problems that make the run fail (unless losses are allowed).
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        let mut check = |n: u64, what: &str| {
            if n > 0 {
                f.push(format!("{n} {what}"));
            }
        };
        check(self.lost, "lost deliveries");
        check(self.duplicates, "duplicate deliveries");
        check(self.reordered, "reordered deliveries");
        check(self.unexpected_closes, "unexpected closes");
        check(self.protocol_errors, "protocol errors");
        check(self.publish_errors, "publish errors");
        check(self.connect_failures.values().sum(), "failed connections");
        f
    }

    /// The human table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<26} {v}");
        };
        row(
            "scenario",
            format!(
                "{} ({} process(es), {} thread(s))",
                self.scenario, self.processes, self.threads
            ),
        );
        if self.scenario == "churn" {
            // Connections come and go: a count "open of --connections"
            // means nothing here; the rate achieved against the one asked
            // for does.
            let rate = if self.churn_seconds > 0.0 {
                self.churned as f64 / self.churn_seconds
            } else {
                0.0
            };
            row(
                "churned connections",
                format!(
                    "{} opened, subscribed and closed in {:.1} s: {:.0}/s (asked {:.0}/s)",
                    self.churned, self.churn_seconds, rate, self.churn_target_per_s
                ),
            );
        } else {
            row(
                "connections",
                format!(
                    "{} open of {} ({:.0}/s over {:.2} s)",
                    self.connections_open,
                    self.connections_target,
                    self.connects_per_s,
                    self.connect_seconds
                ),
            );
        }
        if !self.connect_failures.is_empty() {
            row("connect failures", format!("{:?}", self.connect_failures));
        }
        if self.connect_latency_ns.count > 0 {
            row(
                "connect+subscribe latency",
                fmt_latency(&self.connect_latency_ns),
            );
        }
        if self.publications > 0 || self.deliveries > 0 {
            row("channels", self.channels.to_string());
            row(
                "publications",
                format!("{} ({} errors)", self.publications, self.publish_errors),
            );
            row(
                "deliveries",
                format!(
                    "{} of {} expected",
                    self.deliveries, self.expected_deliveries
                ),
            );
            row(
                "deliveries/s",
                format!(
                    "{:.0} over {:.3} s",
                    self.deliveries_per_s, self.window_seconds
                ),
            );
            row(
                "lost / dup / reordered",
                format!("{} / {} / {}", self.lost, self.duplicates, self.reordered),
            );
            row("latency", fmt_latency(&self.latency_ns));
        }
        row(
            "unexpected closes",
            format!("{} {:?}", self.unexpected_closes, self.close_reasons),
        );
        if self.protocol_errors > 0 || !self.rpc_errors.is_empty() {
            row(
                "errors",
                format!(
                    "{} protocol, rpc {:?}",
                    self.protocol_errors, self.rpc_errors
                ),
            );
        }
        row(
            "loadgen CPU",
            match self.client_ns_per_delivery {
                Some(n) => format!(
                    "{:.3} s, {n:.0} ns/delivery",
                    self.client_cpu_ns as f64 / 1e9
                ),
                None => format!("{:.3} s", self.client_cpu_ns as f64 / 1e9),
            },
        );
        if let Some(s) = &self.server {
            row(
                "server CPU",
                match s.ns_per_delivery {
                    Some(n) => format!(
                        "{:.3} s, {n:.0} ns/delivery (pid {})",
                        s.cpu_ns as f64 / 1e9,
                        s.pid
                    ),
                    None => format!("{:.3} s (pid {})", s.cpu_ns as f64 / 1e9, s.pid),
                },
            );
            row(
                "server RSS",
                format!(
                    "{} before, {} connected, {} after{}",
                    mib(s.rss_before_bytes),
                    mib(s.rss_connected_bytes),
                    mib(s.rss_after_bytes),
                    s.rss_per_connection_bytes
                        .map(|b| format!(", {b:.0} B/connection"))
                        .unwrap_or_default()
                ),
            );
            if let (Some(a), Some(b)) = (s.fds_before, s.fds_after) {
                row("server open fds", format!("{a} before, {b} after"));
            }
        }
        t
    }
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// `p50 … max` in microseconds.
pub fn fmt_latency(l: &LatencySummary) -> String {
    if l.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {} p90 {} p99 {} p99.9 {} max {} us ({} samples)",
        us(l.p50),
        us(l.p90),
        us(l.p99),
        us(l.p999),
        us(l.max),
        l.count
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(values: &[u64]) -> LatencySummary {
        let mut h = new_histogram();
        for &v in values {
            h.record(v).unwrap();
        }
        LatencySummary::from_histogram(&h)
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let values: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let s = summary(&values);
        assert_eq!(s.count, 1000);
        let close = |a: u64, b: u64| (a as f64 - b as f64).abs() / (b as f64) < 0.002;
        assert!(close(s.p50, 500_000), "{}", s.p50);
        assert!(close(s.p90, 900_000), "{}", s.p90);
        assert!(close(s.p99, 990_000), "{}", s.p99);
        assert!(close(s.max, 1_000_000));
        assert!(close(s.min, 1000));
    }

    #[test]
    fn histograms_merge_exactly_through_buckets() {
        let a: Vec<u64> = (1..500).map(|i| i * 37).collect();
        let b: Vec<u64> = (1..700).map(|i| i * 91 + 5).collect();
        let mut all = a.clone();
        all.extend(&b);
        let mut m = summary(&a);
        m.merge(&summary(&b));
        assert_eq!(m, summary(&all));
        // Through JSON, as worker reports travel.
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<LatencySummary>(&json).unwrap(), m);
    }

    #[test]
    fn reports_merge_counters_and_rates() {
        let mut a = Report {
            processes: 1,
            threads: 2,
            connections_target: 10,
            connections_open: 10,
            deliveries: 100,
            expected_deliveries: 100,
            window_seconds: 1.0,
            connect_seconds: 0.5,
            client_cpu_ns: 1000,
            ..Default::default()
        };
        a.connect_failures.insert("refused".into(), 1);
        let mut b = a.clone();
        b.window_seconds = 2.0;
        b.lost = 3;
        a.merge(&b);
        assert_eq!(a.processes, 2);
        assert_eq!(a.connections_open, 20);
        assert_eq!(a.deliveries, 200);
        assert_eq!(a.lost, 3);
        assert_eq!(a.connect_failures["refused"], 2);
        assert_eq!(a.window_seconds, 2.0);
        assert_eq!(a.deliveries_per_s, 100.0);
        assert_eq!(a.client_ns_per_delivery, Some(10.0));
        assert_eq!(
            a.failures(),
            vec![
                "3 lost deliveries".to_string(),
                "2 failed connections".to_string()
            ]
        );
    }

    #[test]
    fn clean_report_has_no_failures_and_a_table() {
        let mut r = Report {
            scenario: "fanout".into(),
            deliveries: 5,
            publications: 5,
            ..Default::default()
        };
        r.server = Some(ServerCost {
            pid: 1,
            cpu_ns: 50,
            rss_before_bytes: 100,
            rss_connected_bytes: 300,
            ..Default::default()
        });
        r.connections_open = 2;
        r.finish_rates();
        assert!(r.failures().is_empty());
        let s = r.server.as_ref().unwrap();
        assert_eq!(s.ns_per_delivery, Some(10.0));
        assert_eq!(s.rss_per_connection_bytes, Some(100.0));
        let t = r.table();
        assert!(t.contains("deliveries/s"));
        assert!(t.contains("10 ns/delivery"));
    }

    #[test]
    fn churn_table_shows_the_rate_not_open_of_target() {
        let r = Report {
            scenario: "churn".into(),
            connections_target: 100,
            connections_open: 5018,
            churned: 5000,
            churn_seconds: 5.0,
            churn_target_per_s: 1000.0,
            ..Default::default()
        };
        let t = r.table();
        assert!(
            t.contains("churned connections        5000 opened, subscribed and closed in 5.0 s: 1000/s (asked 1000/s)"),
            "{t}"
        );
        assert!(!t.contains("open of"), "{t}");
        // Other scenarios keep the open-of-target row.
        let f = Report {
            scenario: "idle".into(),
            connections_target: 100,
            connections_open: 100,
            ..Default::default()
        };
        assert!(f.table().contains("100 open of 100"), "{}", f.table());
    }
}
