//! The operator's dashboard on the backend port: `GET /dashboard` (one
//! self-contained HTML page, its CSS and JS embedded in the binary) and
//! `GET /dashboard/events`, a `text/event-stream` of one JSON sample a
//! second built from the shards' existing counters
//! ([`Gather::Stats`], the data `info` reads; rates are differences between
//! successive samples).
//!
//! It costs nothing while nobody watches: there is no per-publication work
//! for it, and the sampling loop exists only while an event-stream client is
//! connected. It ends when the client goes, when a write stalls, or when the
//! shard shuts down.
//!
//! Auth follows the other backend paths (`Authorization: Bearer`,
//! `X-Api-Key`) and also accepts `?token=TOKEN`, because a browser cannot
//! put headers on a page load or an `EventSource`. The page passes its own
//! `?token=` on to the event stream.
//!
//! The backend's I/O loop hands every `/dashboard…` request to [`route`];
//! on [`Route::EventStream`] it gives the connection to [`stream_events`].

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use serde_json::{json, Value};

use crate::ops::config::Config;
use crate::ops::metrics::MetricsSnapshot;
use crate::protocol::http::{self, Method, Request};
use crate::runtime::io::write_all;
use crate::runtime::shard::{unix_ms, Gather, Shard, ShardReport};
use crate::runtime::sys;

/// The page path.
pub const PAGE_PATH: &str = "/dashboard";
/// The server-sent events path.
pub const EVENTS_PATH: &str = "/dashboard/events";
/// Channels listed by subscribers.
pub const TOP_CHANNELS: usize = 10;
/// Seconds between samples.
const INTERVAL: Duration = Duration::from_secs(1);
/// Every this many samples the feed also refreshes the top channels
/// ([`Gather::TopChannels`] walks every channel, so not every second).
const CHANNELS_EVERY: u64 = 5;
/// A client that takes longer than this to take one sample is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The page: markup, then the stylesheet and the script inlined, so one
/// response carries everything and nothing is fetched from elsewhere.
pub const PAGE: &str = concat!(
    include_str!("../../assets/dashboard.html"),
    "<style>\n",
    include_str!("../../assets/dashboard.css"),
    "</style>\n<script>\n",
    include_str!("../../assets/dashboard.js"),
    "</script>\n</body>\n</html>\n"
);

/// Whether `path` is the dashboard's.
pub fn owns(path: &str) -> bool {
    path == PAGE_PATH || path.starts_with("/dashboard/")
}

/// What [`route`] did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A complete response is in `out`.
    Answered,
    /// An authorized `GET /dashboard/events`: the caller hands the
    /// connection to [`stream_events`].
    EventStream,
}

/// Answers a `/dashboard…` request. `head` is the raw request (for the
/// query string, which [`Request::path`] leaves out).
pub fn route(config: &Config, req: &Request<'_>, head: &[u8], out: &mut Vec<u8>) -> Route {
    let ka = req.keep_alive;
    if !authorized(config, req.auth_token, head) {
        http::write_json_error(out, 401, "unauthorized: missing or wrong api token", ka);
        return Route::Answered;
    }
    match (req.method, req.path) {
        (Method::Get, PAGE_PATH) => {
            write_page(out, ka);
            Route::Answered
        }
        (Method::Get, EVENTS_PATH) => Route::EventStream,
        (_, PAGE_PATH | EVENTS_PATH) => {
            http::write_json_error(out, 405, "method not allowed: use GET", ka);
            Route::Answered
        }
        (_, path) => {
            let msg = format!("not found: {}", path.chars().take(200).collect::<String>());
            http::write_json_error(out, 404, &msg, ka);
            Route::Answered
        }
    }
}

fn write_page(out: &mut Vec<u8>, keep_alive: bool) {
    let head = format!(
        "HTTP/1.1 200 OK\r\n\
         Content-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-store\r\n\
         Referrer-Policy: no-referrer\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
         style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'\r\n\
         Connection: {}\r\n\r\n",
        PAGE.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(PAGE.as_bytes());
}

/// Whether a `/dashboard…` request carries the api token (header or
/// `?token=`), or none is configured. `head` is the raw request.
pub fn authorized(config: &Config, auth_token: Option<&str>, head: &[u8]) -> bool {
    let token = config.backend.api_token.as_str();
    if token.is_empty() {
        return true;
    }
    let given = auth_token.map(str::to_owned).or_else(|| query_token(head));
    given.is_some_and(|g| crate::access::ct_eq(g.as_bytes(), token.as_bytes()))
}

/// The `token` parameter of the request line's query string, decoded.
fn query_token(head: &[u8]) -> Option<String> {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next()?;
    let target = line.split(|&b| b == b' ').nth(1)?;
    let query = &target[target.iter().position(|&b| b == b'?')? + 1..];
    let query = query.split(|&b| b == b'#').next().unwrap_or_default();
    query
        .split(|&b| b == b'&')
        .find_map(|pair| pair.strip_prefix(b"token="))
        .and_then(percent_decode)
}

/// `application/x-www-form-urlencoded` value decoding; `None` for a bad
/// escape or bytes that are not UTF-8.
fn percent_decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The response head of the event stream (no length: the stream ends
/// when the connection does), and the client's reconnect delay.
const EVENTS_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/event-stream\r\n\
Cache-Control: no-store\r\n\
X-Accel-Buffering: no\r\n\
Connection: close\r\n\r\n\
retry: 2000\n\n";

/// Serves `GET /dashboard/events` on `stream` until the client goes, a
/// write stalls for 10 s, or the shard shuts down.
pub async fn stream_events(shard: &Rc<Shard>, stream: &TcpStream) {
    if !write_within(stream, EVENTS_HEAD).await {
        return;
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
    let mut feed = Feed::default();
    let mut probe = [0u8; 512];
    for tick in 0u64.. {
        let query = if tick % CHANNELS_EVERY == 0 {
            Gather::TopChannels(TOP_CHANNELS)
        } else {
            Gather::Stats
        };
        let reports = monoio::select! {
            r = shard.gather(query.clone()) => r,
            _ = shard.shutdown.wait() => return,
        };
        let sample = feed.sample(
            query,
            &reports,
            Instant::now(),
            unix_ms(),
            shard.node.start_ms,
        );
        let event = format!("data: {sample}\n\n");
        if !write_within(stream, event.as_bytes()).await {
            return;
        }
        // Wait a second; the client going away or shutdown ends the loop.
        loop {
            let readable = monoio::select! {
                _ = monoio::time::sleep(INTERVAL) => false,
                _ = shard.shutdown.wait() => return,
                r = stream.readable(false) => {
                    if r.is_err() {
                        return;
                    }
                    true
                }
            };
            if !readable {
                break;
            }
            // An event-stream client sends nothing more; read whatever it
            // does send, and stop on end-of-stream or an error.
            match sys::recv_nonblocking(fd, &mut probe) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

async fn write_within(stream: &TcpStream, bytes: &[u8]) -> bool {
    matches!(
        monoio::time::timeout(WRITE_TIMEOUT, write_all(stream, bytes)).await,
        Ok(Ok(()))
    )
}

/// Turns successive gathers into samples: counters, gauges and per-second
/// rates, per shard and in total.
#[derive(Default)]
pub struct Feed {
    prev: Option<(Instant, Vec<(usize, MetricsSnapshot)>)>,
    top: Vec<(String, usize)>,
}

/// A counter read out of a snapshot.
type Counter = fn(&MetricsSnapshot) -> u64;

/// The counters shown as rates, with the name of the rate.
const RATES: [(&str, Counter); 5] = [
    ("publications_per_s", |m| m.publications),
    ("deliveries_per_s", |m| m.deliveries),
    ("slow_consumer_disconnects_per_s", |m| {
        m.slow_consumer_disconnects
    }),
    ("dropped_deliveries_per_s", |m| m.dropped_deliveries),
    ("bytes_out_per_s", |m| m.bytes_out),
];

impl Feed {
    /// One sample from `reports` (the answers to `query`, in shard order)
    /// taken at `now`. Rates are `null` in the first sample. A
    /// [`Gather::TopChannels`] refreshes the top channels; other samples repeat
    /// the last list.
    pub fn sample(
        &mut self,
        query: Gather,
        reports: &[ShardReport],
        now: Instant,
        now_ms: u64,
        start_ms: u64,
    ) -> Value {
        let elapsed = self
            .prev
            .as_ref()
            .map(|(t, _)| now.duration_since(*t).as_secs_f64())
            .filter(|s| *s > 0.0);
        let prev_of = |shard: usize| {
            self.prev
                .as_ref()
                .and_then(|(_, p)| p.iter().find(|(s, _)| *s == shard).map(|(_, m)| *m))
        };
        let mut total = MetricsSnapshot::default();
        let mut total_prev = MetricsSnapshot::default();
        let (mut conns, mut subs, mut chans) = (0u64, 0u64, 0u64);
        let mut all_prev = true;
        let mut shards = Vec::with_capacity(reports.len());
        for r in reports {
            let prev = prev_of(r.shard);
            total.add(&r.metrics);
            match &prev {
                Some(p) => total_prev.add(p),
                None => all_prev = false,
            }
            conns += r.gauges.connections;
            subs += r.gauges.subscriptions;
            chans += r.home_channels as u64;
            let mut v = figures(
                r.gauges.connections,
                r.gauges.subscriptions,
                r.home_channels as u64,
                &r.metrics,
                prev.as_ref().zip(elapsed),
            );
            v["shard"] = json!(r.shard);
            v["driver"] = json!(r.driver);
            shards.push(v);
        }
        let total_rates = (all_prev && !reports.is_empty()).then_some(&total_prev);
        let total = figures(conns, subs, chans, &total, total_rates.zip(elapsed));
        if matches!(query, Gather::TopChannels(_)) {
            self.top = top_channels(reports);
        }
        let drivers: Vec<&str> = {
            let mut d: Vec<&str> = reports.iter().map(|r| r.driver).collect();
            d.dedup();
            d
        };
        self.prev = Some((now, reports.iter().map(|r| (r.shard, r.metrics)).collect()));
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "time_ms": now_ms,
            "uptime_s": now_ms.saturating_sub(start_ms) / 1000,
            "driver": drivers.join(", "),
            "total": total,
            "shards": shards,
            "top_channels": self
                .top
                .iter()
                .map(|(c, n)| json!({"channel": c, "subscribers": n}))
                .collect::<Vec<_>>(),
        })
    }
}

/// Gauges, counters and (given the previous counters and the seconds
/// since) rates of one shard or of the total.
fn figures(
    connections: u64,
    subscriptions: u64,
    channels: u64,
    m: &MetricsSnapshot,
    prev: Option<(&MetricsSnapshot, f64)>,
) -> Value {
    let mut v = json!({
        "connections": connections,
        "subscriptions": subscriptions,
        "channels": channels,
        "publications": m.publications,
        "deliveries": m.deliveries,
        "slow_consumer_disconnects": m.slow_consumer_disconnects,
        "dropped_deliveries": m.dropped_deliveries,
    });
    for (name, get) in RATES {
        v[name] = match prev {
            Some((p, secs)) => {
                let per_s = get(m).saturating_sub(get(p)) as f64 / secs;
                json!((per_s * 10.0).round() / 10.0)
            }
            None => Value::Null,
        };
    }
    v
}

/// The [`TOP_CHANNELS`] channels with the most subscribers (ties by name).
fn top_channels(reports: &[ShardReport]) -> Vec<(String, usize)> {
    let mut all: Vec<(String, usize)> = reports.iter().flat_map(|r| r.channels.clone()).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(TOP_CHANNELS);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metrics::Gauges;

    fn report(shard: usize, connections: u64, deliveries: u64) -> ShardReport {
        ShardReport {
            shard,
            driver: "epoll",
            gauges: Gauges {
                connections,
                subscriptions: connections,
                channels: 1,
            },
            home_channels: 1,
            metrics: MetricsSnapshot {
                deliveries,
                ..MetricsSnapshot::default()
            },
            ..ShardReport::default()
        }
    }

    #[test]
    fn first_sample_has_no_rates_then_rates_are_differences_per_second() {
        let mut feed = Feed::default();
        let t0 = Instant::now();
        let s = feed.sample(
            Gather::Stats,
            &[report(0, 3, 100), report(1, 2, 50)],
            t0,
            5_000,
            1_000,
        );
        assert_eq!(s["total"]["connections"], 5);
        assert_eq!(s["total"]["deliveries"], 150);
        assert!(s["total"]["deliveries_per_s"].is_null());
        assert_eq!(s["uptime_s"], 4);
        assert_eq!(s["driver"], "epoll");
        let t1 = t0 + Duration::from_secs(2);
        let s = feed.sample(
            Gather::Stats,
            &[report(0, 3, 300), report(1, 2, 60)],
            t1,
            7_000,
            1_000,
        );
        assert_eq!(s["shards"][0]["deliveries_per_s"], 100.0);
        assert_eq!(s["shards"][1]["deliveries_per_s"], 5.0);
        assert_eq!(s["total"]["deliveries_per_s"], 105.0);
    }

    #[test]
    fn a_shard_missing_from_the_previous_sample_gives_no_total_rate() {
        let mut feed = Feed::default();
        let t0 = Instant::now();
        feed.sample(Gather::Stats, &[report(0, 1, 10)], t0, 0, 0);
        let s = feed.sample(
            Gather::Stats,
            &[report(0, 1, 20), report(1, 1, 5)],
            t0 + Duration::from_secs(1),
            0,
            0,
        );
        assert_eq!(s["shards"][0]["deliveries_per_s"], 10.0);
        assert!(s["shards"][1]["deliveries_per_s"].is_null());
        assert!(s["total"]["deliveries_per_s"].is_null());
    }

    #[test]
    fn top_channels_by_subscribers_then_name_at_most_ten() {
        let mut a = report(0, 0, 0);
        a.channels = (0..8).map(|i| (format!("a{i}"), i)).collect();
        let mut b = report(1, 0, 0);
        b.channels = (0..8).map(|i| (format!("b{i}"), i)).collect();
        let mut feed = Feed::default();
        let s = feed.sample(
            Gather::TopChannels(TOP_CHANNELS),
            &[a, b],
            Instant::now(),
            0,
            0,
        );
        let top = s["top_channels"].as_array().unwrap();
        assert_eq!(top.len(), TOP_CHANNELS);
        assert_eq!(top[0], json!({"channel": "a7", "subscribers": 7}));
        assert_eq!(top[1], json!({"channel": "b7", "subscribers": 7}));
        // A stats-only sample keeps the list.
        let s = feed.sample(Gather::Stats, &[report(0, 0, 0)], Instant::now(), 0, 0);
        assert_eq!(s["top_channels"].as_array().unwrap().len(), TOP_CHANNELS);
    }

    #[test]
    fn query_token_is_found_and_decoded() {
        let head = b"GET /dashboard?x=1&token=a%2Bb+c HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(query_token(head).as_deref(), Some("a+b c"));
        assert_eq!(query_token(b"GET /dashboard HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            query_token(b"GET /dashboard?token=%zz HTTP/1.1\r\n\r\n"),
            None
        );
        assert_eq!(
            query_token(b"GET /dashboard?token=%4 HTTP/1.1\r\n\r\n"),
            None
        );
        assert_eq!(query_token(b"GET /dashboard?tokens=x HTTP/1.1\r\n"), None);
        assert_eq!(query_token(b""), None);
    }

    #[test]
    fn page_is_small_and_self_contained() {
        assert!(PAGE.len() < 48 * 1024, "{} bytes", PAGE.len());
        assert!(PAGE.starts_with("<!doctype html>"));
        // Nothing loaded from elsewhere (the SVG namespace is a name, not a fetch).
        for fetch in ["src=", "href=", "@import", "url(", "https://"] {
            assert!(!PAGE.contains(fetch), "page contains {fetch}");
        }
        assert!(PAGE.contains(EVENTS_PATH));
    }
}
