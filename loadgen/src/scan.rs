//! Fast field extraction from the server's JSON-RPC text frames.
//!
//! The hot path never parses a delivery into a JSON tree: the loadgen
//! controls the payload (`{"ts":NANOS,"seq":K,"pad":"xx…"}`), and the engine
//! wraps it as `{"jsonrpc":"2.0","method":"message","params":{"channel":C,
//! "offset":N,"id":I,"data":{…}}}`, so a few substring searches and integer
//! scans find everything the tracker needs. DMOJ's receiver frames
//! (`{"id":I,"channel":C,"message":{…}}`, see [`classify_dmoj`]) carry no
//! offset; the payload's `seq` stands in for it.
#![forbid(unsafe_code)]

use memchr::memmem;
use std::sync::LazyLock;

static METHOD_MESSAGE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"method\":\"message\""));
static CHANNEL: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"channel\":\""));
static OFFSET: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"offset\":"));
static TS: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"ts\":"));
static ID: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"id\":"));
static RESULT: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"result\":"));
static ERROR: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"error\":"));
static MESSAGE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"message\":\""));

/// What a server text frame is, as far as the loadgen is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice<'a> {
    /// A publication on a channel.
    Message {
        channel: &'a [u8],
        offset: u64,
        /// The loadgen's embedded send time (ns since the Unix epoch).
        ts_ns: Option<u64>,
    },
    /// A successful reply to request `id`; `offset` is the result's offset.
    Reply { id: u64, offset: Option<u64> },
    /// An error reply to request `id` (0 when the id is null).
    Error { id: u64, message: &'a [u8] },
    /// Anything else (broadcasts, unknown notifications).
    Other,
}

/// Parses the unsigned decimal at the start of `s`.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        n += 1;
    }
    (n > 0).then_some(v)
}

fn after<'a>(finder: &memmem::Finder<'_>, hay: &'a [u8]) -> Option<&'a [u8]> {
    finder.find(hay).map(|i| &hay[i + finder.needle().len()..])
}

fn number_after(finder: &memmem::Finder<'_>, hay: &[u8]) -> Option<u64> {
    let rest = after(finder, hay)?;
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    parse_u64(&rest[start..])
}

/// Classifies one server text frame.
pub fn classify(payload: &[u8]) -> Notice<'_> {
    let head = &payload[..payload.len().min(64)];
    if METHOD_MESSAGE.find(head).is_some() {
        let Some(rest) = after(&CHANNEL, payload) else {
            return Notice::Other;
        };
        let Some(end) = memchr::memchr(b'"', rest) else {
            return Notice::Other;
        };
        let channel = &rest[..end];
        let Some(offset) = number_after(&OFFSET, payload) else {
            return Notice::Other;
        };
        let ts_ns = number_after(&TS, payload);
        return Notice::Message {
            channel,
            offset,
            ts_ns,
        };
    }
    if let Some(i) = RESULT.find(payload) {
        let id = number_after(&ID, payload).unwrap_or(0);
        let offset = number_after(&OFFSET, &payload[i..]);
        return Notice::Reply { id, offset };
    }
    if let Some(i) = ERROR.find(payload) {
        let id = number_after(&ID, payload).unwrap_or(0);
        let message = after(&MESSAGE, &payload[i..])
            .map(|m| &m[..memchr::memchr(b'"', m).unwrap_or(m.len())])
            .unwrap_or(b"");
        return Notice::Error { id, message };
    }
    Notice::Other
}

/// Classifies one Socket.IO frame of LQDOJ's receivers: the payload of
/// `42["message",{...}]` as [`classify_dmoj`] does DMOJ's frame, and
/// `42["error",{...}]` as an error with id 0.
pub fn classify_socketio(payload: &[u8]) -> Notice<'_> {
    if let Some(rest) = payload.strip_prefix(b"42[\"message\",") {
        return classify_dmoj(rest);
    }
    if let Some(rest) = payload.strip_prefix(b"42[\"error\",") {
        return classify_dmoj(rest);
    }
    Notice::Other
}

static SEQ: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"seq\":"));
static DMOJ_MESSAGE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"message\":{"));

/// Classifies one frame of DMOJ's receiver protocol. A live message
/// `{"id":I,"channel":C,"message":{"ts":..,"seq":K,..}}` becomes a
/// [`Notice::Message`] whose `offset` is the payload's `seq` (DMOJ's id is
/// node-wide, not per channel); an error object `{"status":"error",...}`
/// becomes a [`Notice::Error`] with id 0.
pub fn classify_dmoj(payload: &[u8]) -> Notice<'_> {
    if payload.starts_with(b"{\"status\":\"error\"") {
        let message = after(&MESSAGE, payload)
            .map(|m| &m[..memchr::memchr(b'"', m).unwrap_or(m.len())])
            .unwrap_or(b"");
        return Notice::Error { id: 0, message };
    }
    if !payload.starts_with(b"{\"id\":") {
        return Notice::Other;
    }
    let Some(rest) = after(&CHANNEL, payload) else {
        return Notice::Other;
    };
    let Some(end) = memchr::memchr(b'"', rest) else {
        return Notice::Other;
    };
    let channel = &rest[..end];
    let Some(data) = after(&DMOJ_MESSAGE, rest) else {
        return Notice::Other;
    };
    let Some(offset) = number_after(&SEQ, data) else {
        return Notice::Other;
    };
    Notice::Message {
        channel,
        offset,
        ts_ns: number_after(&TS, data),
    }
}

/// Extracts `"offset":N` from a backend `emit` response body, or the error.
pub fn emit_result(body: &[u8]) -> Result<u64, String> {
    if let Some(i) = RESULT.find(body) {
        if let Some(o) = number_after(&OFFSET, &body[i..]) {
            return Ok(o);
        }
    }
    Err(String::from_utf8_lossy(body).into_owned())
}

/// Writes the loadgen payload `{"ts":NANOS,"seq":K,"pad":"xx…"}` padded to
/// at least `size` bytes.
pub fn write_payload(out: &mut Vec<u8>, ts_ns: u64, seq: u64, size: usize) {
    let start = out.len();
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b"{\"ts\":");
    out.extend_from_slice(b.format(ts_ns).as_bytes());
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(b.format(seq).as_bytes());
    out.extend_from_slice(b",\"pad\":\"");
    let used = out.len() - start + 2;
    out.resize(out.len() + size.saturating_sub(used), b'x');
    out.extend_from_slice(b"\"}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_a_publication() {
        let f = br#"{"jsonrpc":"2.0","method":"message","params":{"channel":"lg-7","offset":42,"id":1732240000123,"data":{"ts":1700000000000000001,"seq":3,"pad":"xx"}}}"#;
        assert_eq!(
            classify(f),
            Notice::Message {
                channel: b"lg-7",
                offset: 42,
                ts_ns: Some(1_700_000_000_000_000_001)
            }
        );
    }

    #[test]
    fn publication_without_timestamp_still_counts() {
        let f = br#"{"jsonrpc":"2.0","method":"message","params":{"channel":"c","offset":1,"id":5,"data":{"x":1}}}"#;
        assert_eq!(
            classify(f),
            Notice::Message {
                channel: b"c",
                offset: 1,
                ts_ns: None
            }
        );
    }

    #[test]
    fn classifies_replies_and_errors() {
        let r = br#"{"jsonrpc":"2.0","id":7,"result":{"channel":"c","offset":12,"epoch":"ab"}}"#;
        assert_eq!(
            classify(r),
            Notice::Reply {
                id: 7,
                offset: Some(12)
            }
        );
        let h = br#"{"jsonrpc":"2.0","id":8,"result":{"heartbeat":"ok"}}"#;
        assert_eq!(
            classify(h),
            Notice::Reply {
                id: 8,
                offset: None
            }
        );
        let e = br#"{"jsonrpc":"2.0","id":9,"error":{"code":-32001,"message":"not subscribed"}}"#;
        assert_eq!(
            classify(e),
            Notice::Error {
                id: 9,
                message: b"not subscribed"
            }
        );
        let b = br#"{"jsonrpc":"2.0","method":"broadcast","params":{"id":1,"data":{}}}"#;
        assert_eq!(classify(b), Notice::Other);
    }

    #[test]
    fn payload_is_padded_to_size_and_scans_back() {
        let mut out = Vec::new();
        write_payload(&mut out, 123456789, 5, 100);
        assert_eq!(out.len(), 100);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ts"], 123456789);
        assert_eq!(v["seq"], 5);
        let mut small = Vec::new();
        write_payload(&mut small, 1, 1, 0);
        assert!(serde_json::from_slice::<serde_json::Value>(&small).is_ok());
    }

    #[test]
    fn classifies_socketio_frames() {
        assert_eq!(
            classify_socketio(
                br#"42["message",{"id":5,"channel":"c","message":{"ts":7,"seq":3}}]"#
            ),
            Notice::Message {
                channel: b"c",
                offset: 3,
                ts_ns: Some(7)
            }
        );
        assert_eq!(
            classify_socketio(br#"42["error",{"status":"error","code":"x","message":"boom"}]"#),
            Notice::Error {
                id: 0,
                message: b"boom"
            }
        );
        assert_eq!(classify_socketio(b"2"), Notice::Other);
        assert_eq!(classify_socketio(br#"0{"sid":"x"}"#), Notice::Other);
    }

    #[test]
    fn classifies_dmoj_frames() {
        let f = br#"{"id":1732240000123,"channel":"lg-7","message":{"ts":1700000000000000001,"seq":3,"pad":"xx"}}"#;
        assert_eq!(
            classify_dmoj(f),
            Notice::Message {
                channel: b"lg-7",
                offset: 3,
                ts_ns: Some(1_700_000_000_000_000_001)
            }
        );
        let e = br#"{"status":"error","code":"bad-command","message":"bad command: loadgen_sync"}"#;
        assert_eq!(
            classify_dmoj(e),
            Notice::Error {
                id: 0,
                message: b"bad command: loadgen_sync"
            }
        );
        // Not the loadgen's payload: no seq to track.
        assert_eq!(
            classify_dmoj(br#"{"id":5,"channel":"c","message":{"x":1}}"#),
            Notice::Other
        );
        assert_eq!(classify_dmoj(b"{}"), Notice::Other);
    }

    #[test]
    fn emit_results() {
        assert_eq!(
            emit_result(
                br#"{"jsonrpc":"2.0","id":1,"result":{"offset":9,"id":3,"subscribers":2}}"#
            ),
            Ok(9)
        );
        assert!(emit_result(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602}}"#).is_err());
    }

    #[test]
    fn parse_u64_edges() {
        assert_eq!(parse_u64(b"0,"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615}"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"x"), None);
    }
}
