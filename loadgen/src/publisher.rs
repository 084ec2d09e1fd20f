//! Drives publications through the backend port: `emit` over one keep-alive
//! HTTP/1.1 connection, pipelined, paced to a rate or as fast as a bounded
//! in-flight window allows. A reader thread matches the in-order responses
//! and keeps each channel's highest acknowledged offset.

use crate::scan;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How to publish.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub backend: SocketAddr,
    pub channel_names: Arc<Vec<String>>,
    /// Publications per second in total; `None` = as fast as the window allows.
    pub rate: Option<f64>,
    /// Stop after this long…
    pub duration: Option<Duration>,
    /// …or after this many publications, whichever comes first.
    pub messages: Option<u64>,
    /// Requests in flight at most.
    pub window: u64,
    pub size: usize,
    /// Subtracted from each embedded timestamp (a known, injected delay).
    pub backdate_ns: u64,
    /// How long to wait for the backend's next answer before giving up on
    /// the connection (and stopping publishing).
    pub response_timeout: Duration,
    /// Publish with Redis `PUBLISH` to this server instead of the backend's
    /// `emit` (for a ringcast taking publications from Redis,
    /// `[sources.redis]`); its answer (the receiver count) is the
    /// acknowledgement, the payload's `seq` the publication's number.
    pub redis: Option<SocketAddr>,
}

/// What publishing did.
#[derive(Debug, Default, Clone)]
pub struct PublishResult {
    /// Publications acknowledged (HTTP 200 with an offset).
    pub publications: u64,
    /// Publications written to the backend connection; those neither
    /// acknowledged nor refused are counted in `errors`.
    pub sent: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Highest acknowledged offset per channel index.
    pub finals: Vec<u64>,
    /// Highest acknowledged payload `seq` per channel index (the
    /// publication's number on its channel: 1, 2, ...).
    pub seqs: Vec<u64>,
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Renders one pipelined `emit` request; the payload's `seq` is `seq`.
#[allow(clippy::too_many_arguments)]
pub fn emit_request(
    out: &mut Vec<u8>,
    host: &str,
    id: u64,
    channel: &str,
    seq: u64,
    ts_ns: u64,
    size: usize,
    body: &mut Vec<u8>,
) {
    body.clear();
    body.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    body.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    body.extend_from_slice(b",\"method\":\"emit\",\"params\":{\"channel\":\"");
    body.extend_from_slice(channel.as_bytes());
    body.extend_from_slice(b"\",\"data\":");
    scan::write_payload(body, ts_ns, seq, size);
    body.extend_from_slice(b"}}");
    out.extend_from_slice(b"POST / HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// Renders one pipelined Redis `PUBLISH channel payload` (RESP); the
/// payload's `seq` is `seq`.
pub fn redis_publish_request(
    out: &mut Vec<u8>,
    channel: &str,
    seq: u64,
    ts_ns: u64,
    size: usize,
    body: &mut Vec<u8>,
) {
    body.clear();
    scan::write_payload(body, ts_ns, seq, size);
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n$");
    out.extend_from_slice(n.format(channel.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\r\n$");
    out.extend_from_slice(n.format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// Reads one Redis reply to `PUBLISH`: `Ok(receivers)`, or the error line.
pub fn read_redis_reply(r: &mut impl BufRead) -> io::Result<Result<u64, String>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "Redis closed the connection",
        ));
    }
    let l = line.trim_end();
    if let Some(n) = l.strip_prefix(':') {
        return n
            .parse()
            .map(Ok)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {l:?}")));
    }
    Ok(Err(l.to_string()))
}

/// Reads one HTTP response (status, body) from a buffered stream.
pub fn read_response(r: &mut impl BufRead) -> io::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "backend closed the connection",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            )
        })?;
    let mut len: Option<usize> = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eof in headers",
            ));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(len.unwrap_or(0), 0);
        r.read_exact(&mut body)?;
    }
    Ok((status, body))
}

/// Sends one JSON-RPC call to the backend and returns the response body.
pub fn call(backend: SocketAddr, body: &str) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&backend, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {backend}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut r = BufReader::new(s);
    Ok(read_response(&mut r)?.1)
}

/// Publishes per `plan`; `abort` stops early.
pub fn run(plan: &PublishPlan, abort: &AtomicBool) -> io::Result<PublishResult> {
    let redis = plan.redis.is_some();
    let stream =
        TcpStream::connect_timeout(&plan.redis.unwrap_or(plan.backend), Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(plan.response_timeout))?;
    let reader_stream = stream.try_clone()?;
    let acked = Arc::new(AtomicU64::new(0));
    let channels = plan.channel_names.len();
    let reader_acked = acked.clone();
    let total_sent = Arc::new(AtomicU64::new(u64::MAX));
    let reader_total = total_sent.clone();
    let response_timeout = plan.response_timeout;
    let reader = std::thread::Builder::new()
        .name("lg-backend-reader".into())
        .spawn(move || {
            let mut r = BufReader::with_capacity(64 * 1024, reader_stream);
            let mut res = PublishResult {
                finals: vec![0; channels],
                seqs: vec![0; channels],
                ..Default::default()
            };
            let mut seq = 0u64;
            while seq < reader_total.load(Ordering::Acquire) {
                let answer = if redis {
                    read_redis_reply(&mut r).map(|a| match a {
                        // At least the ringcast source must be subscribed.
                        Ok(n) if n > 0 => (
                            200,
                            format!("{{\"result\":{{\"offset\":{}}}}}", seq + 1).into_bytes(),
                        ),
                        Ok(_) => (
                            503,
                            b"no Redis subscriber (is [sources.redis] on?)".to_vec(),
                        ),
                        Err(e) => (500, e.into_bytes()),
                    })
                } else {
                    read_response(&mut r)
                };
                match answer {
                    Ok((status, body)) => {
                        let chan = (seq % channels as u64) as usize;
                        match scan::emit_result(&body) {
                            Ok(o) if status == 200 => {
                                res.publications += 1;
                                res.finals[chan] = res.finals[chan].max(o);
                                res.seqs[chan] = res.seqs[chan].max(seq / channels as u64 + 1);
                            }
                            Ok(_) | Err(_) => {
                                res.errors += 1;
                                if res.first_error.is_none() {
                                    res.first_error = Some(format!(
                                        "HTTP {status}: {}",
                                        String::from_utf8_lossy(&body)
                                    ));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if seq < reader_total.load(Ordering::Acquire) {
                            let e = if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) {
                                format!(
                                    "the backend did not answer publication {} within {:?} \
                                     ({seq} answered); publishing stopped",
                                    seq + 1,
                                    response_timeout
                                )
                            } else {
                                format!("backend connection: {e}")
                            };
                            res.first_error.get_or_insert(e);
                        }
                        break;
                    }
                }
                seq += 1;
                reader_acked.store(seq, Ordering::Release);
            }
            res
        })?;

    let host = plan.backend.to_string();
    let mut w = stream;
    let mut out = Vec::with_capacity(64 * 1024);
    let mut body = Vec::with_capacity(plan.size + 256);
    let start = Instant::now();
    let mut sent = 0u64;
    let limit = plan.messages.unwrap_or(u64::MAX);
    let mut failed = None;
    loop {
        if abort.load(Ordering::Relaxed) || sent >= limit {
            break;
        }
        // The reader gave up (no answer in time, connection lost): nothing
        // sent from now on could be acknowledged, so stop rather than
        // fill the window with publications nobody accounts for.
        if reader.is_finished() {
            break;
        }
        let elapsed = start.elapsed();
        if plan.duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        let due = match plan.rate {
            Some(r) => ((elapsed.as_secs_f64() * r) as u64 + 1).min(limit),
            None => limit,
        };
        let in_flight = sent - acked.load(Ordering::Acquire);
        let room = plan.window.saturating_sub(in_flight);
        let n = due.saturating_sub(sent).min(room);
        if n == 0 {
            if plan.rate.is_some() {
                // Paced: nothing due yet, or the window is full waiting
                // for answers; either way a spin would only take CPU from
                // the server and the clients.
                std::thread::sleep(Duration::from_micros(200));
            } else {
                std::thread::yield_now();
            }
            continue;
        }
        out.clear();
        let ts = wall_ns().saturating_sub(plan.backdate_ns);
        for _ in 0..n {
            // Round robin: this is publication sent / channels + 1 of its
            // channel.
            let chan = (sent % channels as u64) as usize;
            if redis {
                redis_publish_request(
                    &mut out,
                    &plan.channel_names[chan],
                    sent / channels as u64 + 1,
                    ts,
                    plan.size,
                    &mut body,
                );
            } else {
                emit_request(
                    &mut out,
                    &host,
                    sent + 1,
                    &plan.channel_names[chan],
                    sent / channels as u64 + 1,
                    ts,
                    plan.size,
                    &mut body,
                );
            }
            sent += 1;
        }
        if let Err(e) = w.write_all(&out) {
            failed = Some(e);
            break;
        }
    }
    total_sent.store(sent, Ordering::Release);
    // Wait for the acknowledgements of everything sent.
    let wait_start = Instant::now();
    while acked.load(Ordering::Acquire) < sent
        && wait_start.elapsed() < Duration::from_secs(30)
        && !reader.is_finished()
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Wakes the reader if it is waiting for a response that will not come.
    let _ = w.shutdown(std::net::Shutdown::Both);
    let mut res = reader
        .join()
        .map_err(|_| io::Error::other("backend reader panicked"))?;
    if let Some(e) = failed {
        res.first_error
            .get_or_insert_with(|| format!("backend write: {e}"));
    }
    let unacked = sent.saturating_sub(res.publications + res.errors);
    res.errors += unacked;
    res.sent = sent;
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn emit_request_is_valid_http_and_json() {
        let mut out = Vec::new();
        let mut body = Vec::new();
        emit_request(
            &mut out,
            "127.0.0.1:59999",
            7,
            "lg-0",
            2,
            99,
            100,
            &mut body,
        );
        let text = String::from_utf8(out).unwrap();
        let (head, b) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST / HTTP/1.1\r\n"));
        assert!(head.contains(&format!("Content-Length: {}", b.len())));
        let v: serde_json::Value = serde_json::from_str(b).unwrap();
        assert_eq!(v["method"], "emit");
        assert_eq!(v["id"], 7);
        assert_eq!(v["params"]["channel"], "lg-0");
        assert_eq!(v["params"]["data"]["ts"], 99);
        assert_eq!(v["params"]["data"]["seq"], 2);
    }

    #[test]
    fn redis_publish_is_resp_and_replies_parse() {
        let mut out = Vec::new();
        let mut body = Vec::new();
        redis_publish_request(&mut out, "rodan:broadcast:rodan", 3, 99, 40, &mut body);
        let text = String::from_utf8(out).unwrap();
        let parts: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(
            &parts[..5],
            ["*3", "$7", "PUBLISH", "$21", "rodan:broadcast:rodan"]
        );
        assert_eq!(parts[5], format!("${}", parts[6].len()));
        let v: serde_json::Value = serde_json::from_str(parts[6]).unwrap();
        assert_eq!(v["seq"], 3);
        assert_eq!(v["ts"], 99);
        let mut r = Cursor::new(&b":1\r\n-ERR wrong type\r\n"[..]);
        assert_eq!(read_redis_reply(&mut r).unwrap(), Ok(1));
        assert_eq!(
            read_redis_reply(&mut r).unwrap(),
            Err("-ERR wrong type".to_string())
        );
        assert!(read_redis_reply(&mut r).is_err());
    }

    #[test]
    fn reads_pipelined_responses() {
        let two = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut r = Cursor::new(two.as_bytes());
        assert_eq!(read_response(&mut r).unwrap(), (200, b"{}".to_vec()));
        assert_eq!(read_response(&mut r).unwrap(), (200, b"abc".to_vec()));
        assert!(read_response(&mut r).is_err());
    }
}
