//! Turns one comparison run into a Markdown table (stdout) and a PNG chart.
//!
//! `chart [--matrix] RUN_DIR OUT_PNG`
//!
//! `RUN_DIR` is what `bench/compare.sh` wrote: `servers.txt` (one server
//! name a line, in run order) and, per load, `SERVER/LOAD.json` (the load
//! generator's `--json` report) plus `SERVER/LOAD.server.json` (the load as
//! compare.sh asked for it, and the server's CPU time and peak RSS read from
//! `/proc`). The loadgen's field names are looked up by a list of accepted
//! spellings, so the chart keeps working while that report evolves; a
//! figure that cannot be found is shown as `–`.
//!
//! Two layouts, chosen by the file names found in the run directory
//! (`--matrix` forces the second):
//!
//! - The suite's four scenarios (`idle`, `connect`, `fanout`, `saturate`
//!   only): one table row per server, and a chart with three panels:
//!   deliveries/s at saturation, server CPU ns per delivery at a fixed
//!   fan-out rate, and p99 latency at that rate.
//! - Anything else (`compare.sh --matrix`: `fanout-10k-50`, `saturate-32`,
//!   ...): one table row per (load, server), loads ordered by kind (fan-out
//!   by subscribers then rate, both descending; saturation by window;
//!   connect; idle), servers in run order; and a chart with one panel per
//!   load (CPU per delivery, connects/s or RSS per connection).
//!
//! Text needs a TrueType font: the first of a few usual system paths (or
//! `CHART_FONT`) is loaded at run time; without one the bars are drawn
//! unlabelled, in the colour order given with the table.

use std::fs;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

const COLOURS: [(u8, u8, u8, &str); 8] = [
    (31, 119, 180, "blue"),
    (255, 127, 14, "orange"),
    (44, 160, 44, "green"),
    (214, 39, 40, "red"),
    (148, 103, 189, "purple"),
    (140, 86, 75, "brown"),
    (227, 119, 194, "pink"),
    (127, 127, 127, "grey"),
];

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Looks for the first key (any depth, case-insensitive) among `keys`;
/// each key comes with the factor that converts it to the wanted unit.
fn find(v: &Value, keys: &[(&str, f64)]) -> Option<f64> {
    for &(key, factor) in keys {
        if let Some(x) = find_key(v, key) {
            return Some(x * factor);
        }
    }
    None
}

/// `key` at any depth; a dotted key (`latency_ns.p99`) is a path from the
/// top.
fn find_key(v: &Value, key: &str) -> Option<f64> {
    if key.contains('.') {
        return key.split('.').try_fold(v, |v, k| v.get(k))?.as_f64();
    }
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                if k.eq_ignore_ascii_case(key) {
                    if let Some(n) = x.as_f64() {
                        return Some(n);
                    }
                }
            }
            map.values().find_map(|x| find_key(x, key))
        }
        Value::Array(items) => items.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

fn load(path: &Path) -> Option<Value> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// One server's figures.
#[derive(Default, Clone)]
struct Row {
    name: String,
    connects_per_s: Option<f64>,
    idle_kib_per_conn: Option<f64>,
    fanout_deliveries_per_s: Option<f64>,
    fanout_cpu_ns: Option<f64>,
    fanout_p99_ms: Option<f64>,
    fanout_lost: Option<f64>,
    saturate_deliveries_per_s: Option<f64>,
    saturate_cpu_ns: Option<f64>,
}

const DELIVERY_RATE: [(&str, f64); 5] = [
    ("deliveries_per_sec", 1.0),
    ("deliveries_per_second", 1.0),
    ("deliveries_per_s", 1.0),
    ("delivery_rate", 1.0),
    ("deliveries_s", 1.0),
];
const DELIVERIES: [(&str, f64); 4] = [
    ("deliveries", 1.0),
    ("delivered", 1.0),
    ("total_deliveries", 1.0),
    ("received", 1.0),
];
const CPU_NS: [(&str, f64); 5] = [
    ("server.ns_per_delivery", 1.0),
    ("server_cpu_ns_per_delivery", 1.0),
    ("cpu_ns_per_delivery", 1.0),
    ("server_cpu_us_per_delivery", 1e3),
    ("cpu_us_per_delivery", 1e3),
];
const P99_MS: [(&str, f64); 7] = [
    ("latency_ns.p99", 1e-6),
    ("p99_ms", 1.0),
    ("latency_p99_ms", 1.0),
    ("p99_us", 1e-3),
    ("latency_p99_us", 1e-3),
    ("p99_ns", 1e-6),
    ("latency_p99_ns", 1e-6),
];

fn scenario(dir: &Path, name: &str) -> (Option<Value>, Option<Value>) {
    (
        load(&dir.join(format!("{name}.json"))),
        load(&dir.join(format!("{name}.server.json"))),
    )
}

/// CPU per delivery: the loadgen's own figure, else the server's CPU time
/// from /proc divided by the deliveries the loadgen counted.
fn cpu_per_delivery(report: &Option<Value>, server: &Option<Value>) -> Option<f64> {
    let report = report.as_ref()?;
    find(report, &CPU_NS).or_else(|| {
        let cpu_ns = find(server.as_ref()?, &[("cpu_ns", 1.0)])?;
        let deliveries = find(report, &DELIVERIES)?;
        (deliveries > 0.0).then(|| cpu_ns / deliveries)
    })
}

fn row(run: &Path, name: &str) -> Row {
    let dir = run.join(name);
    let (connect, _) = scenario(&dir, "connect");
    let (idle, idle_server) = scenario(&dir, "idle");
    let (fanout, fanout_server) = scenario(&dir, "fanout");
    let (saturate, saturate_server) = scenario(&dir, "saturate");
    let idle_kib = idle
        .as_ref()
        .and_then(|r| {
            find(
                r,
                &[
                    ("server.rss_per_connection_bytes", 1.0 / 1024.0),
                    ("rss_per_connection_kib", 1.0),
                    ("rss_per_connection_bytes", 1.0 / 1024.0),
                    ("bytes_per_connection", 1.0 / 1024.0),
                    ("memory_per_connection_bytes", 1.0 / 1024.0),
                ],
            )
        })
        .or_else(|| find(idle_server.as_ref()?, &[("rss_kib_per_connection", 1.0)]));
    Row {
        name: name.to_owned(),
        connects_per_s: connect.as_ref().and_then(|r| {
            find(
                r,
                &[
                    ("connects_per_s", 1.0),
                    ("connects_per_sec", 1.0),
                    ("connect_rate", 1.0),
                    ("connections_per_sec", 1.0),
                    ("connects_per_second", 1.0),
                ],
            )
        }),
        idle_kib_per_conn: idle_kib,
        fanout_deliveries_per_s: fanout.as_ref().and_then(|r| find(r, &DELIVERY_RATE)),
        fanout_cpu_ns: cpu_per_delivery(&fanout, &fanout_server),
        fanout_p99_ms: fanout.as_ref().and_then(|r| find(r, &P99_MS)),
        fanout_lost: fanout
            .as_ref()
            .and_then(|r| find(r, &[("lost", 1.0), ("loss", 1.0)])),
        saturate_deliveries_per_s: saturate.as_ref().and_then(|r| find(r, &DELIVERY_RATE)),
        saturate_cpu_ns: cpu_per_delivery(&saturate, &saturate_server),
    }
}

fn fmt(x: Option<f64>, decimals: usize) -> String {
    x.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

fn table(rows: &[Row]) -> String {
    let uws = rows.iter().find(|r| r.name == "uws");
    let ratio = |r: &Row, pick: fn(&Row) -> Option<f64>| match (pick(r), uws.and_then(pick)) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".to_owned(),
    };
    let mut out = String::new();
    out.push_str(
        "| server (chart colour) | connects/s | idle KiB/conn | fan-out deliveries/s | fan-out CPU ns/delivery | vs uWS | fan-out p99 ms | lost | saturate deliveries/s | saturate CPU ns/delivery | vs uWS |\n",
    );
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for (i, r) in rows.iter().enumerate() {
        out.push_str(&format!(
            "| {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            COLOURS[i % COLOURS.len()].3,
            fmt(r.connects_per_s, 0),
            fmt(r.idle_kib_per_conn, 1),
            fmt(r.fanout_deliveries_per_s, 0),
            fmt(r.fanout_cpu_ns, 0),
            ratio(r, |r| r.fanout_cpu_ns),
            fmt(r.fanout_p99_ms, 2),
            fmt(r.fanout_lost, 0),
            fmt(r.saturate_deliveries_per_s, 0),
            fmt(r.saturate_cpu_ns, 0),
            ratio(r, |r| r.saturate_cpu_ns),
        ));
    }
    out
}

/// Loads the labels' font; false (and a warning) when there is none.
fn register_font() -> bool {
    let candidates = std::env::var("CHART_FONT")
        .ok()
        .into_iter()
        .chain(FONT_PATHS.iter().map(|s| (*s).to_owned()));
    for path in candidates {
        if let Ok(bytes) = fs::read(&path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    eprintln!("chart: no TrueType font found (set CHART_FONT); drawing bars without labels");
    false
}

/// A number with as many decimals as it needs to be read at a glance.
fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

type Panel<'a> = (&'a str, Vec<Option<f64>>);

fn draw(
    out: &Path,
    names: &[String],
    panels: &[Panel<'_>],
    text: bool,
    panel_height: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let root =
        BitMapBackend::new(out, (1200, panel_height * panels.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((panels.len(), 1));
    for (area, (title, values)) in areas.iter().zip(panels) {
        let max = values
            .iter()
            .flatten()
            .copied()
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.15;
        let n = names.len();
        let mut builder = ChartBuilder::on(area);
        builder.margin(20);
        if text {
            builder
                .caption(*title, ("sans-serif", 24))
                .x_label_area_size(40)
                .y_label_area_size(80);
        }
        let mut chart = builder.build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0.0f64..max)?;
        if text {
            let label = |x: &f64| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            };
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n * 2 + 1)
                .x_label_formatter(&label)
                .y_label_formatter(&|y: &f64| short(*y))
                .label_style(("sans-serif", 15))
                .draw()?;
        } else {
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(0)
                .draw()?;
        }
        for (i, v) in values.iter().enumerate() {
            let (r, g, b, _) = COLOURS[i % COLOURS.len()];
            let Some(v) = *v else { continue };
            let x = i as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x - 0.35, 0.0), (x + 0.35, v)],
                RGBColor(r, g, b).filled(),
            )))?;
            if text {
                chart.draw_series(std::iter::once(Text::new(
                    short(v),
                    (x - 0.2, v + max * 0.02),
                    ("sans-serif", 15),
                )))?;
            }
        }
    }
    root.present()?;
    Ok(())
}

// ---- the matrix: one row per (load, server) ---------------------------------

/// The scenarios of the suite's default run; a run directory holding only
/// these gets the one-row-per-server table.
const SUITE: [&str; 4] = ["idle", "connect", "fanout", "saturate"];

const P50_MS: [(&str, f64); 4] = [
    ("latency_ns.p50", 1e-6),
    ("p50_ms", 1.0),
    ("latency_p50_ms", 1.0),
    ("p50_us", 1e-3),
];

/// The loads measured for one server: the stems of `LOAD.json` and
/// `LOAD.server.json` (a load whose loadgen wrote no report still counts).
fn loads(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".json")?;
            Some(stem.strip_suffix(".server").unwrap_or(stem).to_owned())
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// One load of the matrix, as compare.sh recorded it.
struct Load {
    name: String,
    kind: String,
    connections: Option<f64>,
    rate: Option<f64>,
    window: Option<f64>,
}

impl Load {
    /// Read from the first server that ran it: compare.sh's
    /// `LOAD.server.json`, else the loadgen's report.
    fn read(run: &Path, servers: &[String], name: &str) -> Load {
        let (report, server) = servers
            .iter()
            .map(|s| scenario(&run.join(s), name))
            .find(|(r, s)| r.is_some() || s.is_some())
            .unwrap_or((None, None));
        let text = |v: &Option<Value>, k: &str| {
            v.as_ref()?
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let num = |v: &Option<Value>, k: &str| v.as_ref()?.get(k)?.as_f64();
        Load {
            name: name.to_owned(),
            kind: text(&server, "scenario")
                .or_else(|| text(&report, "scenario"))
                .unwrap_or_else(|| name.split('-').next().unwrap_or(name).to_owned()),
            connections: num(&server, "connections").or_else(|| num(&report, "connections_target")),
            rate: num(&server, "rate"),
            window: num(&server, "window"),
        }
    }

    /// Whether the load publishes (deliveries, CPU per delivery, latency
    /// and loss apply).
    fn delivers(&self) -> bool {
        !matches!(self.kind.as_str(), "connect" | "idle")
    }

    /// Fan-out by subscribers then rate, both descending; saturation by
    /// window then subscribers; connect; idle; anything else by name.
    fn order(&self) -> (u8, i64, i64, &str) {
        let n = |x: Option<f64>| x.map_or(0, |v| v.round() as i64);
        match self.kind.as_str() {
            "fanout" => (0, -n(self.connections), -n(self.rate), &self.name),
            "saturate" => (1, n(self.window), n(self.connections), &self.name),
            "connect" => (2, 0, 0, &self.name),
            "idle" => (3, 0, 0, &self.name),
            _ => (4, 0, 0, &self.name),
        }
    }

    fn describe(&self) -> String {
        let count = |x: Option<f64>| x.map_or_else(|| "?".to_owned(), thousands);
        let conns = count(self.connections);
        match self.kind.as_str() {
            "fanout" => format!("{conns} subscribers × {} pub/s", count(self.rate)),
            "saturate" => format!("{conns} subscribers, {} in flight", count(self.window)),
            "connect" => format!("{conns} connections"),
            "idle" => format!("{conns} idle connections"),
            other => format!("{other}, {conns} connections"),
        }
    }
}

/// One server's figures under one load.
#[derive(Default)]
struct Cell {
    deliveries_per_s: Option<f64>,
    cpu_ns: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    loss_pct: Option<f64>,
    connects_per_s: Option<f64>,
    rss_bytes_per_conn: Option<f64>,
    /// Whether the loadgen's report was there.
    reported: bool,
    /// What went wrong, for the notes under the table.
    problems: Vec<String>,
}

fn cell(run: &Path, server: &str, load: &Load) -> Cell {
    let (report, srv) = scenario(&run.join(server), &load.name);
    let mut c = Cell::default();
    if srv
        .as_ref()
        .and_then(|s| s.get("loadgen_ok"))
        .and_then(Value::as_bool)
        == Some(false)
    {
        c.problems.push(format!(
            "the load generator failed (`{server}/{}.log`)",
            load.name
        ));
    }
    let Some(r) = report.as_ref() else {
        c.problems.push("no loadgen report".to_owned());
        return c;
    };
    c.reported = true;
    let count = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
    for (n, what) in [
        (count("duplicates"), "duplicate deliveries"),
        (count("reordered"), "reordered deliveries"),
        (count("protocol_errors"), "protocol errors"),
        (count("publish_errors"), "publish errors"),
    ] {
        if n > 0 {
            c.problems.push(format!("{n} {what}"));
        }
    }
    if count("unexpected_closes") > 0 {
        let reasons: Vec<String> = r
            .get("close_reasons")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        c.problems.push(format!(
            "{} unexpected closes ({})",
            count("unexpected_closes"),
            reasons.join(", ")
        ));
    }
    let failed: u64 = r
        .get("connect_failures")
        .and_then(Value::as_object)
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    let (open, target) = (count("connections_open"), count("connections_target"));
    if failed > 0 || open < target {
        c.problems.push(format!(
            "{open} of {target} connections open ({failed} failed)"
        ));
    }
    if load.delivers() {
        c.deliveries_per_s = find(r, &DELIVERY_RATE);
        c.cpu_ns = cpu_per_delivery(&report, &srv);
        c.p50_ms = find(r, &P50_MS);
        c.p99_ms = find(r, &P99_MS);
        let lost = find(r, &[("lost", 1.0)]);
        let expected = find(r, &[("expected_deliveries", 1.0)]);
        c.loss_pct = match (lost, expected) {
            (Some(l), Some(e)) if e > 0.0 => Some(100.0 * l / e),
            _ => None,
        };
        if expected == Some(0.0) {
            c.problems.push("nothing was published".to_owned());
        }
    }
    match load.kind.as_str() {
        "connect" => c.connects_per_s = find(r, &[("connects_per_s", 1.0)]),
        "idle" => {
            c.rss_bytes_per_conn = find(r, &[("server.rss_per_connection_bytes", 1.0)])
                .or_else(|| find(srv.as_ref()?, &[("rss_kib_per_connection", 1024.0)]));
        }
        _ => {}
    }
    c
}

/// `12,345`.
fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// Milliseconds to three significant digits or so: [`short`], with one
/// more decimal below 1.
fn ms(v: f64) -> String {
    if v.abs() < 1.0 {
        format!("{v:.3}")
    } else {
        short(v)
    }
}

fn percent(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v < 0.001 {
        "<0.001".to_owned()
    } else {
        format!("{v:.3}")
    }
}

/// A figure: blank where it does not apply to the load, `–` where it
/// applies but was not measured.
fn figure(applies: bool, v: Option<f64>, f: fn(f64) -> String) -> String {
    match (applies, v) {
        (false, _) => String::new(),
        (true, None) => "–".to_owned(),
        (true, Some(v)) => f(v),
    }
}

fn matrix_table(loads: &[Load], servers: &[String], cells: &[Vec<Cell>]) -> String {
    let mut out = String::new();
    out.push_str(
        "| load | what | server | deliveries/s | server CPU ns/delivery | p50 ms | p99 ms | loss % | connects/s | RSS B/conn |\n",
    );
    out.push_str("|---|---|---|--:|--:|--:|--:|--:|--:|--:|\n");
    let mut notes = Vec::new();
    // A server without a single report (it did not start, or died at once)
    // gets one note rather than one per load.
    let silent: Vec<bool> = (0..servers.len())
        .map(|i| cells.iter().all(|row| !row[i].reported))
        .collect();
    for (i, server) in servers.iter().enumerate() {
        if silent[i] {
            notes.push(format!(
                "- {server}: no loadgen report for any load (did it start? see `{server}/server.log`)."
            ));
        }
    }
    for (load, row) in loads.iter().zip(cells) {
        let d = load.delivers();
        let (connect, idle) = (load.kind == "connect", load.kind == "idle");
        for ((server, c), &silent) in servers.iter().zip(row).zip(&silent) {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                load.name,
                load.describe(),
                server,
                figure(d, c.deliveries_per_s, thousands),
                figure(d, c.cpu_ns, thousands),
                figure(d, c.p50_ms, ms),
                figure(d, c.p99_ms, ms),
                figure(d, c.loss_pct, percent),
                figure(connect, c.connects_per_s, thousands),
                figure(idle, c.rss_bytes_per_conn, thousands),
            ));
            if !c.problems.is_empty() && !silent {
                notes.push(format!(
                    "- {}, {}: {}.",
                    load.name,
                    server,
                    c.problems.join(", ")
                ));
            }
        }
    }
    out.push_str(
        "\nBlank: does not apply to that load. `–`: applies, but the run gave no figure. \
         Loss: deliveries of acknowledged publications that never arrived, over those expected.\n",
    );
    let colours: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{s} {}", COLOURS[i % COLOURS.len()].3))
        .collect();
    out.push_str(&format!("Chart colours: {}.\n", colours.join(", ")));
    if !notes.is_empty() {
        out.push_str("\nNotes:\n\n");
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    out
}

fn matrix(run: &Path, servers: &[String], png: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut names: Vec<String> = servers.iter().flat_map(|s| loads(&run.join(s))).collect();
    names.sort();
    names.dedup();
    let mut loads: Vec<Load> = names.iter().map(|n| Load::read(run, servers, n)).collect();
    loads.sort_by(|a, b| a.order().cmp(&b.order()));
    let cells: Vec<Vec<Cell>> = loads
        .iter()
        .map(|l| servers.iter().map(|s| cell(run, s, l)).collect())
        .collect();
    print!("{}", matrix_table(&loads, servers, &cells));

    let titles: Vec<String> = loads
        .iter()
        .map(|l| match l.kind.as_str() {
            "connect" => format!("{}: connects/s", l.name),
            "idle" => format!("{}: server RSS bytes per connection", l.name),
            _ => format!("{}: server CPU ns per delivery", l.name),
        })
        .collect();
    let panels: Vec<Panel<'_>> = loads
        .iter()
        .zip(&cells)
        .zip(&titles)
        .map(|((l, row), title)| {
            let pick = |c: &Cell| match l.kind.as_str() {
                "connect" => c.connects_per_s,
                "idle" => c.rss_bytes_per_conn,
                _ => c.cpu_ns,
            };
            (title.as_str(), row.iter().map(pick).collect())
        })
        .collect();
    let text = register_font();
    draw(png, servers, &panels, text, 300)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let force_matrix = args.first().is_some_and(|a| a == "--matrix");
    if force_matrix {
        args.remove(0);
    }
    let [run, png] = <[String; 2]>::try_from(args).unwrap_or_else(|_| {
        eprintln!("usage: chart [--matrix] RUN_DIR OUT_PNG");
        std::process::exit(2);
    });
    let run = PathBuf::from(run);
    let names: Vec<String> = match fs::read_to_string(run.join("servers.txt")) {
        Ok(s) => s
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(_) => {
            let mut v: Vec<String> = fs::read_dir(&run)?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    };
    if force_matrix
        || names
            .iter()
            .flat_map(|n| loads(&run.join(n)))
            .any(|l| !SUITE.contains(&l.as_str()))
    {
        return matrix(&run, &names, Path::new(&png));
    }
    let rows: Vec<Row> = names.iter().map(|n| row(&run, n)).collect();
    print!("{}", table(&rows));

    if let (Some(uws), true) = (rows.iter().find(|r| r.name == "uws"), !rows.is_empty()) {
        for r in rows.iter().filter(|r| r.name.starts_with("ringcast")) {
            if let (Some(a), Some(b)) = (r.fanout_cpu_ns, uws.fanout_cpu_ns) {
                println!(
                    "\nHeadline: {} uses {:.0} ns of server CPU per delivery, {:.2}× uWebSockets.js ({:.0} ns).",
                    r.name,
                    a,
                    a / b,
                    b
                );
            }
        }
    }

    let panels = [
        (
            "deliveries/s at saturation",
            rows.iter().map(|r| r.saturate_deliveries_per_s).collect(),
        ),
        (
            "server CPU ns per delivery (fan-out)",
            rows.iter().map(|r| r.fanout_cpu_ns).collect(),
        ),
        (
            "p99 latency ms (fan-out)",
            rows.iter().map(|r| r.fanout_p99_ms).collect(),
        ),
    ];
    let text = register_font();
    draw(Path::new(&png), &names, &panels, text, 420)?;
    Ok(())
}
