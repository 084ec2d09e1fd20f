//! The WebSocket opening handshake (RFC 6455 section 4.2), server side.
//!
//! [`parse_upgrade`] reads the client's HTTP/1.1 upgrade request from a byte
//! slice (parsed by httparse) and either accepts it as an [`Upgrade`] —
//! which knows its request target, `Origin` and `Sec-WebSocket-Accept` and
//! writes the `101 Switching Protocols` answer, with the
//! `permessage-deflate` agreement when one was reached
//! ([`crate::protocol::deflate::negotiate`]) — or rejects it with a
//! [`HandshakeError`] that writes the matching 400/403/426 answer. Short
//! input is `Ok(None)`; the connection task reads more and calls again.
#![forbid(unsafe_code)]

use thiserror::Error;
use tungstenite::handshake::derive_accept_key;

use crate::protocol::deflate::{self, Agreement};

/// Longest accepted request head (request line and headers), in bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Most header fields accepted in an upgrade request.
pub const MAX_HEADERS: usize = 64;

/// Why an upgrade request was rejected. [`HandshakeError::response`] is the
/// HTTP answer to send before closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// No end of headers within [`MAX_REQUEST_HEAD`] bytes.
    #[error("request headers too large")]
    TooLarge,
    /// Not parseable as HTTP/1.x (or more than [`MAX_HEADERS`] headers).
    #[error("malformed HTTP request: {0}")]
    Malformed(#[from] httparse::Error),
    /// A method other than GET.
    #[error("method must be GET")]
    MethodNotGet,
    /// An HTTP version other than 1.1.
    #[error("HTTP/1.1 required")]
    HttpVersion,
    /// No `Host` header.
    #[error("missing Host header")]
    MissingHost,
    /// No `Upgrade: websocket` header: not a WebSocket request at all.
    #[error("missing Upgrade: websocket header")]
    NotWebSocket,
    /// `Connection` does not list `upgrade`.
    #[error("Connection header must contain upgrade")]
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Key` missing, repeated, or not base64 of 16 bytes.
    #[error("missing or invalid Sec-WebSocket-Key")]
    InvalidKey,
    /// `Sec-WebSocket-Version` missing or not 13.
    #[error("unsupported Sec-WebSocket-Version, 13 required")]
    UnsupportedVersion,
    /// `Origin` not in the configured allow-list.
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// The server holds as many WebSocket connections as it may
    /// (`limits.max_connections`, or the open-file limit less the
    /// descriptors kept for the backend port).
    #[error("server at capacity")]
    AtCapacity,
    /// The protocol that serves the request's path refused it
    /// ([`crate::protocol::adapter::Protocol::accept`]).
    #[error("{}", .0.reason)]
    Refused(Refused),
}

/// An upgrade a protocol refuses: the HTTP status (400, 401, 403, 404, ...)
/// and a short static reason for the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: &'static str,
}

impl HandshakeError {
    /// The HTTP status code of the rejection.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::OriginNotAllowed => 403,
            HandshakeError::AtCapacity => 503,
            HandshakeError::Refused(r) => r.status,
            _ => 400,
        }
    }

    /// The short reason put in the JSON body.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::TooLarge => "request headers too large",
            HandshakeError::Malformed(_) => "malformed HTTP request",
            HandshakeError::MethodNotGet => "method must be GET",
            HandshakeError::HttpVersion => "HTTP/1.1 required",
            HandshakeError::MissingHost => "missing Host header",
            HandshakeError::NotWebSocket => "missing Upgrade: websocket header",
            HandshakeError::MissingConnectionUpgrade => "Connection header must contain upgrade",
            HandshakeError::InvalidKey => "missing or invalid Sec-WebSocket-Key",
            HandshakeError::UnsupportedVersion => "unsupported Sec-WebSocket-Version",
            HandshakeError::OriginNotAllowed => "origin not allowed",
            HandshakeError::AtCapacity => "server at capacity: try again later",
            HandshakeError::Refused(r) => r.reason,
        }
    }

    /// The complete HTTP response for this rejection: status line,
    /// `Content-Type: application/json`, `Connection: close`,
    /// `Content-Length`, and a `{"error":"<reason>"}` body; 426 also names
    /// the supported version (`Sec-WebSocket-Version: 13`).
    pub fn response(&self) -> Vec<u8> {
        let status = self.status();
        let status_text = match status {
            426 => "Upgrade Required",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            429 => "Too Many Requests",
            503 => "Service Unavailable",
            _ => "Bad Request",
        };
        // Reasons are static ASCII without quotes or backslashes.
        let body = format!("{{\"error\":\"{}\"}}", self.reason());
        let extra = match status {
            426 => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            503 => "Retry-After: 1\r\n",
            _ => "",
        };
        format!(
            "HTTP/1.1 {status} {status_text}\r\n\
             Content-Type: application/json\r\n\
             Connection: close\r\n\
             Content-Length: {}\r\n\
             {extra}\r\n\
             {body}",
            body.len()
        )
        .into_bytes()
    }
}

/// An accepted upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Length of the request head; bytes after it are already WebSocket
    /// frames.
    pub consumed: usize,
    /// The request target as sent, e.g. `/ws/foo?subscribe-broadcast&echo`.
    pub path: String,
    /// The `Origin` header, if any.
    pub origin: Option<String>,
    /// The `Sec-WebSocket-Accept` value for the response.
    pub accept: String,
    /// The `permessage-deflate` offer accepted, if the client made an
    /// acceptable one; set it to `None` to decline (compression off).
    pub deflate: Option<Agreement>,
}

impl Upgrade {
    /// The request target without its query string, e.g. `/ws/foo`.
    pub fn path_without_query(&self) -> &str {
        match self.path.split_once('?') {
            Some((path, _)) => path,
            None => &self.path,
        }
    }

    /// The query string without the `?`, if there is one.
    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, query)| query)
    }

    /// The raw (not percent-decoded) value of the first query parameter
    /// called `name`: `Some("")` for a bare flag (`?echo`), `None` when
    /// absent.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// Appends the `101 Switching Protocols` response to `out`.
    pub fn write_response_101(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: ",
        );
        out.extend_from_slice(self.accept.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(agreement) = &self.deflate {
            agreement.write_response_header(out);
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The `101 Switching Protocols` response.
    pub fn response_101(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        self.write_response_101(&mut out);
        out
    }
}

/// Parses the upgrade request at the front of `buf`.
///
/// `Ok(None)`: the request head is not complete yet (no empty line); read
/// more and call again with the whole buffer. A head longer than
/// [`MAX_REQUEST_HEAD`] is an error.
///
/// `allowed_origins`: when non-empty, a request whose `Origin` is not in the
/// list (ASCII case-insensitive) is rejected with 403. A request without
/// `Origin` is accepted: browsers always send one, so its absence means a
/// non-browser client, which could send any value anyway.
pub fn parse_upgrade(
    buf: &[u8],
    allowed_origins: &[String],
) -> Result<Option<Upgrade>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = &buf[..buf.len().min(MAX_REQUEST_HEAD)];
    let consumed = match req.parse(head)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() > MAX_REQUEST_HEAD => {
            return Err(HandshakeError::TooLarge)
        }
        httparse::Status::Partial => return Ok(None),
    };

    if req.method != Some("GET") {
        return Err(HandshakeError::MethodNotGet);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::HttpVersion);
    }
    let path = req.path.unwrap_or("/");

    let mut host = false;
    let mut upgrade = false;
    let mut connection_upgrade = false;
    let mut key: Option<&[u8]> = None;
    let mut key_count = 0;
    let mut version_ok = false;
    let mut version_bad = false;
    let mut origin: Option<&[u8]> = None;
    let mut deflate = None;
    for header in req.headers.iter() {
        let name = header.name;
        let value = header.value.trim_ascii();
        if name.eq_ignore_ascii_case("host") {
            host = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(value, b"websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= has_token(value, b"upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value);
            key_count += 1;
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            if value == b"13" {
                version_ok = true;
            } else {
                version_bad = true;
            }
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") && deflate.is_none() {
            deflate = deflate::negotiate(value);
        }
    }

    if !host {
        return Err(HandshakeError::MissingHost);
    }
    if !upgrade {
        return Err(HandshakeError::NotWebSocket);
    }
    if !connection_upgrade {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    if !version_ok || version_bad {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = match key {
        Some(key) if key_count == 1 && is_base64_of_16_bytes(key) => key,
        _ => return Err(HandshakeError::InvalidKey),
    };
    let origin = match origin {
        Some(origin) => Some(
            std::str::from_utf8(origin)
                .map_err(|_| HandshakeError::OriginNotAllowed)?
                .to_owned(),
        ),
        None => None,
    };
    if let Some(origin) = &origin {
        if !allowed_origins.is_empty()
            && !allowed_origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        {
            return Err(HandshakeError::OriginNotAllowed);
        }
    }

    Ok(Some(Upgrade {
        consumed,
        path: path.to_owned(),
        origin,
        accept: derive_accept_key(key),
        deflate,
    }))
}

/// Whether the comma-separated header value lists `token` (ASCII
/// case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether `key` is the canonical base64 encoding of exactly 16 bytes:
/// 22 alphabet characters, the last one carrying only 2 bits, then `==`.
fn is_base64_of_16_bytes(key: &[u8]) -> bool {
    let is_b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    match key {
        [body @ .., last, b'=', b'='] if body.len() == 21 => {
            body.iter().all(is_b64) && matches!(last, b'A' | b'Q' | b'g' | b'w')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQUEST: &str = "GET /chat HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn request(target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut req = format!("GET {target} HTTP/1.1\r\n");
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        req.into_bytes()
    }

    fn base_headers() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Host", "localhost:58000"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ]
    }

    fn with(name: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
        let mut headers: Vec<_> = base_headers()
            .into_iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
            .collect();
        headers.push((name, value));
        headers
    }

    fn without(name: &str) -> Vec<(&'static str, &'static str)> {
        base_headers()
            .into_iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
            .collect()
    }

    fn parse(req: &[u8]) -> Result<Option<Upgrade>, HandshakeError> {
        parse_upgrade(req, &[])
    }

    #[test]
    fn rfc_example() {
        let up = parse(RFC_REQUEST.as_bytes()).unwrap().unwrap();
        assert_eq!(up.consumed, RFC_REQUEST.len());
        assert_eq!(up.path, "/chat");
        assert_eq!(up.origin.as_deref(), Some("http://example.com"));
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let resp = String::from_utf8(up.response_101()).unwrap();
        assert_eq!(
            resp,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn incomplete_at_every_prefix() {
        let req = RFC_REQUEST.as_bytes();
        for len in 0..req.len() {
            assert_eq!(parse(&req[..len]), Ok(None), "prefix {len}");
        }
    }

    #[test]
    fn trailing_frame_bytes_are_not_consumed() {
        let mut req = RFC_REQUEST.as_bytes().to_vec();
        req.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let up = parse(&req).unwrap().unwrap();
        assert_eq!(up.consumed, RFC_REQUEST.len());
    }

    #[test]
    fn path_and_query() {
        let req = request(
            "/ws/foo?subscribe-broadcast&echo&dialect=rocketws&x=",
            &base_headers(),
        );
        let up = parse(&req).unwrap().unwrap();
        assert_eq!(
            up.path,
            "/ws/foo?subscribe-broadcast&echo&dialect=rocketws&x="
        );
        assert_eq!(up.path_without_query(), "/ws/foo");
        assert_eq!(
            up.query(),
            Some("subscribe-broadcast&echo&dialect=rocketws&x=")
        );
        assert_eq!(up.query_param("dialect"), Some("rocketws"));
        assert_eq!(up.query_param("echo"), Some(""));
        assert_eq!(up.query_param("subscribe-broadcast"), Some(""));
        assert_eq!(up.query_param("x"), Some(""));
        assert_eq!(up.query_param("publish-broadcast"), None);
        assert_eq!(up.query_param("ech"), None);

        let up = parse(&request("/", &base_headers())).unwrap().unwrap();
        assert_eq!(up.path_without_query(), "/");
        assert_eq!(up.query(), None);
        assert_eq!(up.query_param("dialect"), None);
    }

    #[test]
    fn tokens_are_case_insensitive_lists() {
        let headers = vec![
            ("host", "h"),
            ("UPGRADE", "WebSocket"),
            ("connection", "keep-alive, UPGRADE"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("SEC-WEBSOCKET-VERSION", "13"),
        ];
        assert!(parse(&request("/", &headers)).unwrap().is_some());
    }

    #[test]
    fn method_and_version() {
        let mut req = request("/", &base_headers());
        req.splice(0..3, b"POST".iter().copied());
        assert_eq!(parse(&req), Err(HandshakeError::MethodNotGet));

        let req = String::from_utf8(request("/", &base_headers()))
            .unwrap()
            .replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(parse(req.as_bytes()), Err(HandshakeError::HttpVersion));
    }

    #[test]
    fn malformed_is_400() {
        let err = parse(b"\x00\x01garbage\r\n\r\n").unwrap_err();
        assert!(matches!(err, HandshakeError::Malformed(_)));
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn too_large() {
        let mut req = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
        req.resize(MAX_REQUEST_HEAD + 1, b'a');
        assert_eq!(parse(&req), Err(HandshakeError::TooLarge));
        // Exactly at the limit is still incomplete.
        assert_eq!(parse(&req[..MAX_REQUEST_HEAD]), Ok(None));
    }

    #[test]
    fn too_many_headers() {
        let mut headers = base_headers();
        headers.extend(std::iter::repeat_n(("X-A", "b"), MAX_HEADERS));
        let err = parse(&request("/", &headers)).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::Malformed(httparse::Error::TooManyHeaders)
        );
    }

    #[test]
    fn missing_headers_are_400() {
        let cases = [
            ("Host", HandshakeError::MissingHost),
            ("Upgrade", HandshakeError::NotWebSocket),
            ("Connection", HandshakeError::MissingConnectionUpgrade),
            ("Sec-WebSocket-Key", HandshakeError::InvalidKey),
        ];
        for (name, expected) in cases {
            let err = parse(&request("/", &without(name))).unwrap_err();
            assert_eq!(err, expected);
            assert_eq!(err.status(), 400);
        }
        assert_eq!(
            parse(&request("/", &with("Upgrade", "h2c"))),
            Err(HandshakeError::NotWebSocket)
        );
        assert_eq!(
            parse(&request("/", &with("Connection", "keep-alive"))),
            Err(HandshakeError::MissingConnectionUpgrade)
        );
    }

    #[test]
    fn key_must_be_base64_of_16_bytes() {
        for bad in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25jZQ===",
            "dGhlIHNhbXBsZSBub25jZSE=", // 17 bytes
            "dGhlIHNhbXBsZSBub25j",
            "dGhlIHNhbXBsZSBub25jZR==", // non-canonical last char
            "dGhlIHNhbXBsZSBub2*jZQ==",
        ] {
            let err = parse(&request("/", &with("Sec-WebSocket-Key", bad))).unwrap_err();
            assert_eq!(err, HandshakeError::InvalidKey, "{bad:?}");
        }
        for good in ["AAAAAAAAAAAAAAAAAAAAAA==", "/+/+/+/+/+/+/+/+/+/+/w=="] {
            assert!(parse(&request("/", &with("Sec-WebSocket-Key", good))).is_ok());
        }
        // Repeated key.
        let mut headers = base_headers();
        headers.push(("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA=="));
        assert_eq!(
            parse(&request("/", &headers)),
            Err(HandshakeError::InvalidKey)
        );
    }

    #[test]
    fn version_must_be_13_else_426() {
        for req in [
            request("/", &without("Sec-WebSocket-Version")),
            request("/", &with("Sec-WebSocket-Version", "8")),
        ] {
            let err = parse(&req).unwrap_err();
            assert_eq!(err, HandshakeError::UnsupportedVersion);
            assert_eq!(err.status(), 426);
            let resp = String::from_utf8(err.response()).unwrap();
            assert!(resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
            assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        }
    }

    #[test]
    fn origin_allow_list() {
        let allowed = vec!["https://app.example".to_owned()];
        let req = request("/", &with("Origin", "https://evil.example"));
        let err = parse_upgrade(&req, &allowed).unwrap_err();
        assert_eq!(err, HandshakeError::OriginNotAllowed);
        assert_eq!(err.status(), 403);
        // Empty list allows any.
        assert!(parse_upgrade(&req, &[]).unwrap().is_some());

        let req = request("/", &with("Origin", "https://APP.example"));
        let up = parse_upgrade(&req, &allowed).unwrap().unwrap();
        assert_eq!(up.origin.as_deref(), Some("https://APP.example"));

        // No Origin: not a browser, accepted.
        let up = parse_upgrade(&request("/", &base_headers()), &allowed)
            .unwrap()
            .unwrap();
        assert_eq!(up.origin, None);
    }

    #[test]
    fn rejection_response_is_complete_http_with_json_body() {
        let errors = [
            HandshakeError::TooLarge,
            HandshakeError::Malformed(httparse::Error::Token),
            HandshakeError::MethodNotGet,
            HandshakeError::HttpVersion,
            HandshakeError::MissingHost,
            HandshakeError::NotWebSocket,
            HandshakeError::MissingConnectionUpgrade,
            HandshakeError::InvalidKey,
            HandshakeError::UnsupportedVersion,
            HandshakeError::OriginNotAllowed,
            HandshakeError::AtCapacity,
        ];
        for err in errors {
            let resp = err.response();
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut parsed = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head) = parsed.parse(&resp).unwrap() else {
                panic!("incomplete response for {err}");
            };
            assert_eq!(parsed.code, Some(err.status()));
            let header = |name: &str| {
                parsed
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| std::str::from_utf8(h.value).unwrap().to_owned())
            };
            assert_eq!(header("Content-Type").as_deref(), Some("application/json"));
            assert_eq!(header("Connection").as_deref(), Some("close"));
            let body = &resp[head..];
            assert_eq!(header("Content-Length"), Some(body.len().to_string()));
            let json: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(json["error"], err.reason());
        }
    }

    #[test]
    fn permessage_deflate_in_the_101() {
        let ext = "Sec-WebSocket-Extensions";
        let up = parse(&request(
            "/",
            &with(ext, "permessage-deflate; client_max_window_bits"),
        ))
        .unwrap()
        .unwrap();
        let resp = String::from_utf8(up.response_101()).unwrap();
        assert!(resp.ends_with(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover\r\n\r\n"
        ));
        // Several header lines: the first acceptable offer in order.
        let mut headers = with(ext, "x-other, permessage-deflate; bogus");
        headers.push((ext, "permessage-deflate; server_max_window_bits=11"));
        headers.push((ext, "permessage-deflate"));
        let up = parse(&request("/", &headers)).unwrap().unwrap();
        assert_eq!(up.deflate.unwrap().server_window_bits, 11);
        // Malformed or foreign offers are declined, never a failed upgrade.
        for offer in [
            "permessage-deflate; x=1",
            "x-webkit-deflate-frame",
            "\"",
            ";;,,",
        ] {
            let up = parse(&request("/", &with(ext, offer))).unwrap().unwrap();
            assert_eq!(up.deflate, None, "{offer:?}");
            assert!(!String::from_utf8(up.response_101()).unwrap().contains(ext));
        }
        // Declined by configuration: the 101 does not name it.
        let mut up = parse(&request("/", &with(ext, "permessage-deflate")))
            .unwrap()
            .unwrap();
        assert!(up.deflate.is_some());
        up.deflate = None;
        assert!(!String::from_utf8(up.response_101()).unwrap().contains(ext));
    }

    #[test]
    fn interop_with_tungstenite_client_request() {
        use tungstenite::client::IntoClientRequest;
        let request = "ws://localhost:58000/ws/foo?subscribe-broadcast&echo"
            .into_client_request()
            .unwrap();
        let (bytes, key) = tungstenite::handshake::client::generate_request(request).unwrap();
        let up = parse_upgrade(&bytes, &[]).unwrap().unwrap();
        assert_eq!(up.consumed, bytes.len());
        assert_eq!(up.path_without_query(), "/ws/foo");
        assert_eq!(up.query_param("echo"), Some(""));
        assert_eq!(up.accept, derive_accept_key(key.as_bytes()));
    }
}
