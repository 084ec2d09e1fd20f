//! Turns one comparison run into a Markdown table (stdout) and a PNG chart.
//!
//! `chart RUN_DIR OUT_PNG`
//!
//! `RUN_DIR` is what `bench/compare.sh` wrote: `servers.txt` (one server
//! name a line, in run order) and `SERVER/SCENARIO.json` (the load
//! generator's `--json` report) plus `SERVER/SCENARIO.server.json` (the
//! server's CPU time and peak RSS, read from `/proc` by compare.sh). The
//! loadgen's field names are looked up by a list of accepted spellings, so
//! the chart keeps working while that report evolves; a figure that cannot
//! be found is shown as `–`.
//!
//! The chart has three panels: deliveries/s at saturation, server CPU ns
//! per delivery at a fixed fan-out rate, and p99 latency at that rate. Text
//! needs a TrueType font: the first of a few usual system paths (or
//! `CHART_FONT`) is loaded at run time; without one the bars are drawn
//! unlabelled, in the colour order listed in the table's first column.

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
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(out, (1200, 420 * panels.len() as u32)).into_drawing_area();
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(run), Some(png)) = (args.next(), args.next()) else {
        eprintln!("usage: chart RUN_DIR OUT_PNG");
        std::process::exit(2);
    };
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
    if !text {
        eprintln!("chart: no TrueType font found (set CHART_FONT); drawing bars without labels");
    }
    draw(Path::new(&png), &names, &panels, text)?;
    Ok(())
}
