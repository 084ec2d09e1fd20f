//! Sans-IO HTTP/1.1 for the backend port: request parsing over a byte
//! slice and response writing into a `Vec<u8>`. No sockets here; the
//! backend's I/O loop feeds bytes in and writes the bytes out.
//!
//! [`parse_request`] parses the first request in a buffer that may hold a
//! partial request or several pipelined ones. It returns `Ok(None)` (and
//! allocates nothing) while the request is incomplete, or the request and
//! how many bytes it took; the caller drops those bytes and calls again.
//!
//! Rules, beyond httparse's request-line and header syntax:
//! - Keep-alive is the default on HTTP/1.1, close on HTTP/1.0;
//!   `Connection: close` / `keep-alive` override it.
//! - The body is framed by `Content-Length`, or by `Transfer-Encoding:
//!   chunked` (decoded into an owned buffer; extensions and trailers are
//!   ignored); neither means an empty body. Both at once, a `Content-Length`
//!   that is not a decimal number, or two different ones are 400; other
//!   transfer codings are 501.
//! - A body over `max_body` is 413 as soon as the head (or the chunk size
//!   that crosses the limit) is seen, without waiting for the body.
//! - A head (request line and headers) over [`MAX_HEAD`] bytes, or more
//!   than [`MAX_HEADERS`] headers, is 431.
//! - Chunked framing (size lines, extensions, trailers) over
//!   [`MAX_CHUNK_OVERHEAD`] bytes is 413.
//!
//! So a request never needs more than [`max_request_len`]`(max_body)`
//! buffered bytes: past that, `parse_request` returns a request or an
//! error, never `Ok(None)`. After any error the stream cannot be resynced:
//! answer with [`write_error`] (which says `Connection: close`) and close.
#![forbid(unsafe_code)]

use std::borrow::Cow;

/// Largest request head (request line + headers + blank line), bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 64;
/// Most bytes of chunked framing (everything but the data) in one body.
pub const MAX_CHUNK_OVERHEAD: usize = 64 * 1024;

/// `Content-Type` of JSON bodies.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// `Content-Type` of plain-text bodies (`GET /health`).
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";
/// `Content-Type` of Prometheus metrics (`GET /metrics`).
pub const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The interim response to `Expect: 100-continue` (see [`expects_continue`]).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The most bytes a caller ever needs to buffer for one request.
pub fn max_request_len(max_body: usize) -> usize {
    MAX_HEAD
        .saturating_add(max_body)
        .saturating_add(MAX_CHUNK_OVERHEAD)
        .saturating_add(2)
}

/// Request method, as far as the backend port cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    /// Anything else (answered with 405).
    Other,
}

/// One parsed request, borrowing from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The request target without query string or fragment.
    pub path: &'a str,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// From `Authorization: Bearer TOKEN` or `X-Api-Key: TOKEN` (both
    /// only when they agree; see [`HttpError::AmbiguousCredentials`]);
    /// surrounding whitespace trimmed.
    pub auth_token: Option<&'a str>,
    /// Borrowed for `Content-Length` bodies, owned when chunked.
    pub body: Cow<'a, [u8]>,
}

/// Why a request was rejected; [`status`](Self::status) is the HTTP
/// status to answer with before closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// 400: not a well-formed HTTP/1.x request.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// 413: body (or its chunked framing) over the limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// 431: head over [`MAX_HEAD`] bytes or over [`MAX_HEADERS`] headers.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// 501: a transfer coding other than `chunked`.
    #[error("unsupported transfer encoding")]
    UnsupportedTransferEncoding,
    /// 401: credentials that say two things (two `Authorization` or two
    /// `X-Api-Key` headers, or the two disagreeing). Refused rather than
    /// picking one: a proxy and the server might pick differently.
    #[error("unauthorized: {0}")]
    AmbiguousCredentials(&'static str),
}

impl HttpError {
    /// The HTTP status code for this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::BodyTooLarge => 413,
            HttpError::HeadersTooLarge => 431,
            HttpError::UnsupportedTransferEncoding => 501,
            HttpError::AmbiguousCredentials(_) => 401,
        }
    }
}

fn malformed(what: &str) -> HttpError {
    HttpError::Malformed(what.to_owned())
}

/// How the body is framed.
enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// What the head says, besides method and path.
struct Head<'a> {
    method: Method,
    path: &'a str,
    keep_alive: bool,
    auth_token: Option<&'a str>,
    expect_continue: bool,
    framing: Framing,
    len: usize,
}

/// Parses the first request in `buf`. `Ok(None)`: incomplete, call again
/// with more bytes. `Ok(Some((request, consumed)))`: the request took the
/// first `consumed` bytes of `buf`.
pub fn parse_request(
    buf: &[u8],
    max_body: usize,
) -> Result<Option<(Request<'_>, usize)>, HttpError> {
    let Some(head) = parse_head(buf, max_body)? else {
        return Ok(None);
    };
    let rest = &buf[head.len..];
    let (body, consumed) = match head.framing {
        Framing::None => (Cow::Borrowed(&rest[..0]), head.len),
        Framing::Length(n) => match rest.get(..n) {
            Some(body) => (Cow::Borrowed(body), head.len + n),
            None => return Ok(None),
        },
        Framing::Chunked => {
            let Some((encoded, decoded)) = walk_chunks(rest, max_body, None)? else {
                return Ok(None);
            };
            let mut body = Vec::with_capacity(decoded);
            walk_chunks(rest, max_body, Some(&mut body))?;
            (Cow::Owned(body), head.len + encoded)
        }
    };
    let request = Request {
        method: head.method,
        path: head.path,
        keep_alive: head.keep_alive,
        auth_token: head.auth_token,
        body,
    };
    Ok(Some((request, consumed)))
}

/// What a complete head says while its body is still on the way: enough
/// to refuse the request before reading (or asking for) the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingHead<'a> {
    /// The request target without query string or fragment.
    pub path: &'a str,
    /// As in [`Request::auth_token`].
    pub auth_token: Option<&'a str>,
    /// `Expect: 100-continue` on HTTP/1.1: once the request is known to be
    /// acceptable, the caller should write [`CONTINUE`] once for it (curl
    /// waits a second for it before sending a body over 1 KiB).
    pub expect_continue: bool,
}

/// The head of the first request in `buf` when it is complete and valid
/// (whether or not its body is). Call it when [`parse_request`] returned
/// `Ok(None)`; `None` while the head itself is incomplete.
pub fn pending_head(buf: &[u8]) -> Option<PendingHead<'_>> {
    match parse_head(buf, usize::MAX) {
        Ok(Some(head)) => Some(PendingHead {
            path: head.path,
            auth_token: head.auth_token,
            expect_continue: head.expect_continue,
        }),
        _ => None,
    }
}

/// Whether the first request in `buf` has a complete head carrying
/// `Expect: 100-continue` (HTTP/1.1); see [`PendingHead::expect_continue`].
pub fn expects_continue(buf: &[u8]) -> bool {
    pending_head(buf).is_some_and(|h| h.expect_continue)
}

fn parse_head(buf: &[u8], max_body: usize) -> Result<Option<Head<'_>>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(HttpError::HeadersTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if len > MAX_HEAD {
        return Err(HttpError::HeadersTooLarge);
    }

    let method = match req.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("/");
    let path = target
        .split_once(['?', '#'])
        .map_or(target, |(path, _)| path);
    let http11 = req.version == Some(1);

    let mut close = false;
    let mut keep = false;
    let mut bearer = None;
    let mut api_key = None;
    let mut authorization_seen = false;
    let mut api_key_seen = false;
    let mut expect_continue = false;
    let mut length: Option<usize> = None;
    let mut too_long = false;
    let mut codings = 0usize;
    let mut last_coding_chunked = false;
    let mut chunked_seen = 0usize;

    for h in req.headers.iter() {
        let name = h.name;
        let value = h.value;
        if name.eq_ignore_ascii_case("content-length") {
            let v = trim(value);
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Err(malformed("invalid Content-Length"));
            }
            // All digits: only overflow can fail, and that is too large.
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<usize>().ok());
            match (n, length) {
                (None, _) => too_long = true,
                (Some(n), Some(prev)) if n != prev => {
                    return Err(malformed("conflicting Content-Length"))
                }
                (Some(n), _) => length = Some(n),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in value.split(|&b| b == b',').map(trim) {
                if coding.is_empty() {
                    continue;
                }
                codings += 1;
                last_coding_chunked = coding.eq_ignore_ascii_case(b"chunked");
                if last_coding_chunked {
                    chunked_seen += 1;
                }
            }
            if codings == 0 {
                return Err(malformed("empty Transfer-Encoding"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep = true;
                }
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            if authorization_seen {
                return Err(HttpError::AmbiguousCredentials(
                    "more than one Authorization header",
                ));
            }
            authorization_seen = true;
            if let Some((scheme, token)) = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().split_once(' '))
            {
                let token = token.trim();
                if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() {
                    bearer = Some(token);
                }
            }
        } else if name.eq_ignore_ascii_case("x-api-key") {
            if api_key_seen {
                return Err(HttpError::AmbiguousCredentials(
                    "more than one X-Api-Key header",
                ));
            }
            api_key_seen = true;
            if let Ok(v) = std::str::from_utf8(value) {
                let v = v.trim();
                if !v.is_empty() {
                    api_key = Some(v);
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = http11 && trim(value).eq_ignore_ascii_case(b"100-continue");
        }
    }

    let framing = if codings > 0 {
        if length.is_some() || too_long {
            return Err(malformed("both Content-Length and Transfer-Encoding"));
        }
        if chunked_seen == 1 && last_coding_chunked && codings == 1 {
            Framing::Chunked
        } else if last_coding_chunked && chunked_seen == 1 {
            return Err(HttpError::UnsupportedTransferEncoding);
        } else {
            return Err(malformed("Transfer-Encoding must end in a single chunked"));
        }
    } else if too_long {
        return Err(HttpError::BodyTooLarge);
    } else {
        match length {
            Some(n) if n > max_body => return Err(HttpError::BodyTooLarge),
            Some(n) => Framing::Length(n),
            None => Framing::None,
        }
    };

    // A non-Bearer `Authorization` (a proxy's Basic credentials) carries no
    // ringcast token, so it does not disagree with an `X-Api-Key`.
    if let (Some(b), Some(k)) = (bearer, api_key) {
        if b != k {
            return Err(HttpError::AmbiguousCredentials(
                "Authorization: Bearer and X-Api-Key disagree",
            ));
        }
    }

    Ok(Some(Head {
        method,
        path,
        keep_alive: !close && (http11 || keep),
        auth_token: bearer.or(api_key),
        expect_continue,
        framing,
        len,
    }))
}

/// `value` without leading and trailing spaces and tabs.
fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Walks a chunked body at the start of `body`. Returns `Ok(None)` while
/// incomplete, else (encoded length including trailers, decoded length).
/// With `out`, appends the decoded data to it.
fn walk_chunks(
    body: &[u8],
    max_body: usize,
    mut out: Option<&mut Vec<u8>>,
) -> Result<Option<(usize, usize)>, HttpError> {
    let mut pos = 0usize;
    let mut total = 0usize;
    // Framing bytes so far (everything but chunk data) must stay bounded,
    // counting a partial size line or trailer as framing.
    let framing_ok = |end: usize, total: usize| end - total <= MAX_CHUNK_OVERHEAD;
    loop {
        let (line, size) = match httparse::parse_chunk_size(&body[pos..]) {
            Ok(httparse::Status::Complete(c)) => c,
            Ok(httparse::Status::Partial) => {
                if !framing_ok(body.len(), total) {
                    return Err(HttpError::BodyTooLarge);
                }
                return Ok(None);
            }
            Err(_) => return Err(malformed("invalid chunk size")),
        };
        pos += line;
        if !framing_ok(pos, total) {
            return Err(HttpError::BodyTooLarge);
        }
        let size = usize::try_from(size).map_err(|_| HttpError::BodyTooLarge)?;
        if size > max_body - total {
            return Err(HttpError::BodyTooLarge);
        }
        if size == 0 {
            break;
        }
        let end = pos
            .checked_add(size)
            .and_then(|e| e.checked_add(2))
            .ok_or(HttpError::BodyTooLarge)?;
        let Some(chunk) = body.get(pos..end) else {
            return Ok(None);
        };
        let (data, crlf) = chunk.split_at(size);
        if crlf != b"\r\n" {
            return Err(malformed("chunk data not followed by CRLF"));
        }
        if let Some(out) = out.as_deref_mut() {
            out.extend_from_slice(data);
        }
        pos = end;
        total += size;
        if !framing_ok(pos, total) {
            return Err(HttpError::BodyTooLarge);
        }
    }
    // Trailer section: header lines, ignored, up to an empty line.
    loop {
        let Some(eol) = body[pos..].windows(2).position(|w| w == b"\r\n") else {
            if !framing_ok(body.len(), total) {
                return Err(HttpError::BodyTooLarge);
            }
            return Ok(None);
        };
        let line_empty = eol == 0;
        pos += eol + 2;
        if !framing_ok(pos, total) {
            return Err(HttpError::BodyTooLarge);
        }
        if line_empty {
            return Ok(Some((pos, total)));
        }
    }
}

/// The reason phrase for the statuses the backend port uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Appends a complete `application/json` response to `out`.
pub fn write_response(out: &mut Vec<u8>, status: u16, body: &[u8], keep_alive: bool) {
    write_response_with(out, status, CONTENT_TYPE_JSON, body, keep_alive);
}

/// Appends a complete response with the given `Content-Type` to `out`.
/// 401 carries `WWW-Authenticate: Bearer`, 405 `Allow: GET, POST`.
pub fn write_response_with(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) {
    let mut num = itoa::Buffer::new();
    out.reserve(128 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(num.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(num.format(body.len()).as_bytes());
    out.extend_from_slice(if keep_alive {
        b"\r\nConnection: keep-alive\r\n".as_slice()
    } else {
        b"\r\nConnection: close\r\n".as_slice()
    });
    match status {
        401 => out.extend_from_slice(b"WWW-Authenticate: Bearer\r\n"),
        405 => out.extend_from_slice(b"Allow: GET, POST\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Appends a JSON error response, body `{"error":"MESSAGE"}`.
pub fn write_json_error(out: &mut Vec<u8>, status: u16, message: &str, keep_alive: bool) {
    let body = serde_json::json!({ "error": message }).to_string();
    write_response(out, status, body.as_bytes(), keep_alive);
}

/// Appends the response for a parse error (`Connection: close`; the
/// connection must be closed after it).
pub fn write_error(out: &mut Vec<u8>, err: &HttpError) {
    write_json_error(out, err.status(), &err.to_string(), false);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    fn one(buf: &[u8]) -> (Request<'_>, usize) {
        match parse_request(buf, MAX) {
            Ok(Some(r)) => r,
            other => panic!(
                "expected a request from {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn err(buf: &[u8]) -> HttpError {
        match parse_request(buf, MAX) {
            Err(e) => e,
            other => panic!(
                "expected an error from {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    #[test]
    fn simple_get() {
        let buf = b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let (r, n) = one(buf);
        assert_eq!(n, buf.len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/health");
        assert!(r.keep_alive);
        assert_eq!(r.auth_token, None);
        assert!(r.body.is_empty());
        assert!(matches!(r.body, Cow::Borrowed(_)));
    }

    #[test]
    fn methods_and_paths() {
        assert_eq!(one(b"POST / HTTP/1.1\r\n\r\n").0.method, Method::Post);
        assert_eq!(one(b"PUT / HTTP/1.1\r\n\r\n").0.method, Method::Other);
        assert_eq!(one(b"HEAD / HTTP/1.1\r\n\r\n").0.method, Method::Other);
        assert_eq!(
            one(b"GET /metrics#frag HTTP/1.1\r\n\r\n").0.path,
            "/metrics"
        );
        assert_eq!(one(b"GET /a/b?c?d HTTP/1.1\r\n\r\n").0.path, "/a/b");
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |b: &[u8]| one(b).0.keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
    }

    #[test]
    fn auth_tokens() {
        let tok = |b: &[u8]| one(b).0.auth_token.map(str::to_owned);
        assert_eq!(
            tok(b"GET / HTTP/1.1\r\nAuthorization: Bearer abc\r\n\r\n").as_deref(),
            Some("abc")
        );
        assert_eq!(
            tok(b"GET / HTTP/1.1\r\nauthorization: bearer  abc \r\n\r\n").as_deref(),
            Some("abc")
        );
        assert_eq!(
            tok(b"GET / HTTP/1.1\r\nX-Api-Key: k1\r\n\r\n").as_deref(),
            Some("k1")
        );
        assert_eq!(
            tok(b"GET / HTTP/1.1\r\nAuthorization: Basic Zm9v\r\n\r\n"),
            None
        );
        assert_eq!(
            tok(b"GET / HTTP/1.1\r\nAuthorization: Basic Zm9v\r\nX-Api-Key: k2\r\n\r\n").as_deref(),
            Some("k2")
        );
        assert_eq!(
            tok(b"GET / HTTP/1.1\r\nX-Api-Key: k2\r\nAuthorization: Bearer k2\r\n\r\n").as_deref(),
            Some("k2")
        );
        assert_eq!(
            tok(b"GET / HTTP/1.1\r\nAuthorization: Bearer\r\n\r\n"),
            None
        );
        assert_eq!(tok(b"GET / HTTP/1.1\r\nX-Api-Key: \r\n\r\n"), None);
    }

    #[test]
    fn credentials_that_say_two_things_are_refused_with_401() {
        for (head, why) in [
            (
                &b"GET / HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n"[..],
                "more than one Authorization header",
            ),
            (
                b"GET / HTTP/1.1\r\nAuthorization: Bearer a\r\nauthorization: Bearer a\r\n\r\n",
                "more than one Authorization header",
            ),
            (
                b"GET / HTTP/1.1\r\nX-Api-Key: a\r\nX-Api-Key: a\r\n\r\n",
                "more than one X-Api-Key header",
            ),
            (
                b"GET / HTTP/1.1\r\nX-Api-Key: k2\r\nAuthorization: Bearer b\r\n\r\n",
                "Authorization: Bearer and X-Api-Key disagree",
            ),
            (
                b"POST / HTTP/1.1\r\nAuthorization: Bearer b\r\nX-Api-Key: k2\r\nContent-Length: 9\r\n\r\n",
                "Authorization: Bearer and X-Api-Key disagree",
            ),
        ] {
            let e = err(head);
            assert_eq!(e, HttpError::AmbiguousCredentials(why));
            assert_eq!(e.status(), 401);
            assert_eq!(e.to_string(), format!("unauthorized: {why}"));
            // Known from the head alone, before any body arrives.
            assert_eq!(pending_head(head), None);
        }
    }

    #[test]
    fn content_length_bodies() {
        let buf = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET";
        let (r, n) = one(buf);
        assert_eq!(&*r.body, b"hello");
        assert!(matches!(r.body, Cow::Borrowed(_)));
        assert_eq!(n, buf.len() - 3);
        // Missing Content-Length on POST: empty body.
        let (r, _) = one(b"POST / HTTP/1.1\r\n\r\n");
        assert!(r.body.is_empty());
        // Same value twice is fine.
        let (r, _) = one(b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nhi");
        assert_eq!(&*r.body, b"hi");
        // Exactly max_body is fine.
        let mut buf = format!("POST / HTTP/1.1\r\nContent-Length: {MAX}\r\n\r\n").into_bytes();
        buf.extend(vec![b'x'; MAX]);
        assert_eq!(one(&buf).0.body.len(), MAX);
    }

    #[test]
    fn bad_content_length_is_400() {
        for cl in ["abc", "-1", "+5", "", "1 2", "0x10", "5, 5", "1.0"] {
            let buf = format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\n");
            assert_eq!(err(buf.as_bytes()).status(), 400, "{cl:?}");
        }
        let e = err(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab");
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn body_too_large_before_the_body_arrives() {
        let buf = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX + 1);
        assert_eq!(err(buf.as_bytes()), HttpError::BodyTooLarge);
        let e = err(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n");
        assert_eq!(e, HttpError::BodyTooLarge);
        // But not before the head is complete.
        let partial = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n", MAX + 1);
        assert_eq!(parse_request(partial.as_bytes(), MAX), Ok(None));
    }

    #[test]
    fn chunked_bodies() {
        let buf = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        let (r, n) = one(buf);
        assert_eq!(&*r.body, b"hello world");
        assert!(matches!(r.body, Cow::Owned(_)));
        assert_eq!(&buf[n..], b"NEXT");

        // Trailers are skipped; hex sizes in either case.
        let buf = b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\na\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let (r, n) = one(buf);
        assert_eq!(r.body.len(), 20);
        assert_eq!(n, buf.len());

        // Empty chunked body.
        let (r, _) = one(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert!(r.body.is_empty());
    }

    #[test]
    fn chunked_errors() {
        let te = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let e = |rest: &str| err(format!("{te}{rest}").as_bytes());
        assert_eq!(e("zz\r\n").status(), 400);
        assert_eq!(e("5\r\nhelloXX").status(), 400);
        // Over max_body as soon as the size line is seen.
        assert_eq!(e(&format!("{:x}\r\n", MAX + 1)), HttpError::BodyTooLarge);
        assert_eq!(
            e(&format!("{:x}\r\n{}\r\n1\r\n", MAX, "x".repeat(MAX))),
            HttpError::BodyTooLarge
        );
        assert_eq!(e("ffffffffffffffff\r\n"), HttpError::BodyTooLarge);
        // Framing flood: endless extension or trailers.
        assert_eq!(
            e(&format!("1;{}", "e".repeat(MAX_CHUNK_OVERHEAD + 1))),
            HttpError::BodyTooLarge
        );
        assert_eq!(
            e(&format!(
                "0\r\n{}",
                "t: 1\r\n".repeat(MAX_CHUNK_OVERHEAD / 6 + 1)
            )),
            HttpError::BodyTooLarge
        );

        let h = |headers: &str| err(format!("POST / HTTP/1.1\r\n{headers}\r\n\r\n").as_bytes());
        assert_eq!(
            h("Transfer-Encoding: chunked\r\nContent-Length: 3").status(),
            400
        );
        assert_eq!(
            h("Transfer-Encoding: gzip"),
            HttpError::Malformed("Transfer-Encoding must end in a single chunked".into())
        );
        assert_eq!(
            h("Transfer-Encoding: gzip, chunked"),
            HttpError::UnsupportedTransferEncoding
        );
        assert_eq!(
            h("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"),
            HttpError::UnsupportedTransferEncoding
        );
        assert_eq!(h("Transfer-Encoding: chunked, chunked").status(), 400);
        assert_eq!(h("Transfer-Encoding: chunked, gzip").status(), 400);
        assert_eq!(h("Transfer-Encoding: ").status(), 400);
    }

    #[test]
    fn head_limits_are_431() {
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(MAX_HEAD));
        // Incomplete but already too large.
        assert_eq!(err(big.as_bytes()), HttpError::HeadersTooLarge);
        // Complete and too large.
        assert_eq!(
            err(format!("{big}\r\n").as_bytes()),
            HttpError::HeadersTooLarge
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(
            err(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            HttpError::HeadersTooLarge
        );
        let ok: String = (0..MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        one(format!("GET / HTTP/1.1\r\n{ok}\r\n").as_bytes());
    }

    #[test]
    fn malformed_is_400() {
        for buf in [
            &b"GET\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / FOO/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(err(buf).status(), 400, "{:?}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let reqs: [&[u8]; 3] = [
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n{\"a\":[1,2]}",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n",
        ];
        for req in reqs {
            for i in 0..req.len() {
                assert_eq!(parse_request(&req[..i], MAX), Ok(None), "prefix {i}");
            }
            assert_eq!(one(req).1, req.len());
        }
    }

    /// An owned copy of a parsed request.
    type Owned = (Method, String, bool, Option<String>, Vec<u8>);

    /// Parses everything complete in `buf`, returning owned copies and the
    /// number of bytes consumed.
    fn drain(buf: &[u8], max_body: usize) -> (Vec<Owned>, usize) {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((r, n)) = parse_request(&buf[at..], max_body).expect("valid") {
            assert!(n > 0);
            out.push((
                r.method,
                r.path.to_owned(),
                r.keep_alive,
                r.auth_token.map(str::to_owned),
                r.body.into_owned(),
            ));
            at += n;
        }
        (out, at)
    }

    #[test]
    fn pipelined_requests_split_at_every_byte() {
        let stream: &[u8] = b"GET /health HTTP/1.1\r\n\r\n\
POST / HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 13\r\n\r\n{\"method\":1}\n\
POST /x?y HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Api-Key: k\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n\
POST / HTTP/1.0\r\n\r\n\
GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n";
        let (all, used) = drain(stream, MAX);
        assert_eq!(used, stream.len());
        assert_eq!(all.len(), 5);
        assert_eq!(all[1].3.as_deref(), Some("t"));
        assert_eq!(all[1].4, b"{\"method\":1}\n");
        assert_eq!(all[2].1, "/x");
        assert_eq!(all[2].3.as_deref(), Some("k"));
        assert_eq!(all[2].4, b"wikipedia");
        assert!(!all[3].2);
        assert!(!all[4].2);

        // Two reads, split at every byte.
        for split in 0..=stream.len() {
            let mut buf = stream[..split].to_vec();
            let (mut got, used) = drain(&buf, MAX);
            buf.drain(..used);
            buf.extend_from_slice(&stream[split..]);
            let (rest, used) = drain(&buf, MAX);
            got.extend(rest);
            assert_eq!(used, buf.len(), "split {split}");
            assert_eq!(got, all, "split {split}");
        }

        // One byte per read.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for &b in stream {
            buf.push(b);
            let (reqs, used) = drain(&buf, MAX);
            got.extend(reqs);
            buf.drain(..used);
        }
        assert!(buf.is_empty());
        assert_eq!(got, all);
    }

    #[test]
    fn incomplete_never_exceeds_max_request_len() {
        // A maximal legal request arriving byte by byte: every incomplete
        // prefix is shorter than max_request_len.
        let max_body = 2048;
        let mut req = format!(
            "POST / HTTP/1.1\r\nX-Pad: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
            "p".repeat(MAX_HEAD - 80)
        )
        .into_bytes();
        req.extend_from_slice(
            format!(
                "{:x};{}\r\n",
                max_body,
                "e".repeat(MAX_CHUNK_OVERHEAD - 100)
            )
            .as_bytes(),
        );
        req.extend(vec![b'x'; max_body]);
        req.extend_from_slice(b"\r\n0\r\n\r\n");
        for i in (0..req.len()).step_by(97) {
            assert_eq!(parse_request(&req[..i], max_body), Ok(None));
            assert!(i < max_request_len(max_body));
        }
        let (r, n) = parse_request(&req, max_body)
            .expect("valid")
            .expect("complete");
        assert_eq!(n, req.len());
        assert_eq!(r.body.len(), max_body);
    }

    #[test]
    fn expect_continue() {
        let head = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2000\r\n\r\n";
        assert!(expects_continue(head));
        assert_eq!(parse_request(head, 4096), Ok(None));
        assert!(!expects_continue(&head[..head.len() - 2]));
        assert!(!expects_continue(
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"
        ));
        assert!(!expects_continue(b"POST / HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn pending_head_is_known_before_the_body() {
        let head = b"POST /x?a=1 HTTP/1.1\r\nX-Api-Key: k\r\nContent-Length: 1000000\r\n\r\n";
        let mut buf = head.to_vec();
        buf.extend_from_slice(&[b'x'; 100]);
        assert_eq!(parse_request(&buf, 1 << 20), Ok(None));
        assert_eq!(
            pending_head(&buf),
            Some(PendingHead {
                path: "/x",
                auth_token: Some("k"),
                expect_continue: false,
            })
        );
        assert_eq!(pending_head(&head[..head.len() - 1]), None);
        assert_eq!(pending_head(b"NOT HTTP\r\n\r\n"), None);
    }

    #[test]
    fn responses() {
        let mut out = Vec::new();
        write_response(&mut out, 200, b"{\"ok\":1}", true);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\nConnection: keep-alive\r\n\r\n{\"ok\":1}"
        );
        out.clear();
        write_response_with(&mut out, 200, CONTENT_TYPE_TEXT, b"ok", false);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        );
        out.clear();
        write_json_error(&mut out, 401, "unauthorized", true);
        let text = String::from_utf8(out.clone()).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(text.contains("WWW-Authenticate: Bearer\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"unauthorized\"}"));
    }

    #[test]
    fn json_errors_are_escaped() {
        let nasty = "bad \"quote\" \\ back\nline\u{1}\u{7f} é";
        let mut out = Vec::new();
        write_json_error(&mut out, 400, nasty, false);
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head end")
            + 4;
        let head = String::from_utf8_lossy(&out[..split]).into_owned();
        let body = &out[split..];
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_slice(body).expect("json");
        assert_eq!(v["error"], nasty);
    }

    #[test]
    fn errors_answer_with_their_status() {
        for (e, status) in [
            (HttpError::Malformed("x".into()), 400),
            (HttpError::BodyTooLarge, 413),
            (HttpError::HeadersTooLarge, 431),
            (HttpError::UnsupportedTransferEncoding, 501),
        ] {
            assert_eq!(e.status(), status);
            let mut out = Vec::new();
            write_error(&mut out, &e);
            let text = String::from_utf8(out).expect("utf8");
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")));
            assert!(text.contains("Connection: close\r\n"));
        }
    }
}
