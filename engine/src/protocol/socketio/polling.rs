//! Engine.IO v4 HTTP long-polling, sans IO: the requests (`GET`/`POST`/
//! `OPTIONS` on the Socket.IO path), their checks and engine.io's exact
//! error answers, the `\x1e`-separated payloads (binary as `b<base64>`),
//! and the HTTP responses (with CORS for browsers). The I/O is
//! `runtime::engineio_poll`.

use bytes::Bytes;

/// The method of a polling request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Options,
    Other,
}

/// One polling request, head and body read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest {
    pub method: Method,
    /// The target path without the query.
    pub path: String,
    pub eio: Option<String>,
    pub transport: Option<String>,
    pub sid: Option<String>,
    pub origin: Option<String>,
    pub body: Vec<u8>,
    pub keep_alive: bool,
    /// Bytes of the buffer this request took (head and body).
    pub consumed: usize,
}

/// engine.io's error codes and messages (its `Server.errorMessages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EioError {
    TransportUnknown,
    SessionUnknown,
    BadHandshakeMethod,
    BadRequest,
    UnsupportedVersion,
}

impl EioError {
    pub fn code(self) -> u8 {
        match self {
            EioError::TransportUnknown => 0,
            EioError::SessionUnknown => 1,
            EioError::BadHandshakeMethod => 2,
            EioError::BadRequest => 3,
            EioError::UnsupportedVersion => 5,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            EioError::TransportUnknown => "Transport unknown",
            EioError::SessionUnknown => "Session ID unknown",
            EioError::BadHandshakeMethod => "Bad handshake method",
            EioError::BadRequest => "Bad request",
            EioError::UnsupportedVersion => "Unsupported protocol version",
        }
    }

    /// The JSON body engine.io answers with (status 400).
    pub fn body(self) -> Vec<u8> {
        format!(
            r#"{{"code":{},"message":"{}"}}"#,
            self.code(),
            self.message()
        )
        .into_bytes()
    }
}

/// What a polling request asks for, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new session (the open packet).
    Handshake,
    /// The long GET of session `sid`.
    Poll(String),
    /// Packets from the client for session `sid`.
    Send(String),
    /// A CORS preflight.
    Preflight,
}

/// Checks the query as engine.io does: version, transport, then method.
pub fn action(req: &PollRequest) -> Result<Action, EioError> {
    if req.method == Method::Options {
        return Ok(Action::Preflight);
    }
    if req.eio.as_deref() != Some("4") {
        return Err(EioError::UnsupportedVersion);
    }
    if req.transport.as_deref() != Some("polling") {
        return Err(EioError::TransportUnknown);
    }
    match (&req.sid, req.method) {
        (None, Method::Get) => Ok(Action::Handshake),
        (None, _) => Err(EioError::BadHandshakeMethod),
        (Some(sid), Method::Get) => Ok(Action::Poll(sid.clone())),
        (Some(sid), Method::Post) => Ok(Action::Send(sid.clone())),
        (Some(_), _) => Err(EioError::BadRequest),
    }
}

/// A request head is malformed or too large (answered 400/413 and the
/// connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadError(pub u16, pub &'static str);

/// Parses one request from `buf`: `Ok(None)` while incomplete.
pub fn parse(buf: &[u8], max_body: usize) -> Result<Option<PollRequest>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > 16 * 1024 => {
            return Err(HeadError(431, "request head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HeadError(400, "malformed HTTP request")),
    };
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("OPTIONS") => Method::Options,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let mut content_length = 0usize;
    let mut origin = None;
    let mut connection: Option<String> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(HeadError(400, "bad Content-Length"))?;
        } else if h.name.eq_ignore_ascii_case("origin") {
            origin = std::str::from_utf8(h.value).ok().map(str::to_string);
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection = std::str::from_utf8(h.value)
                .ok()
                .map(|v| v.to_ascii_lowercase());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError(
                411,
                "chunked bodies are not accepted: send Content-Length",
            ));
        }
    }
    if content_length > max_body {
        return Err(HeadError(413, "payload too large"));
    }
    let http11 = req.version == Some(1);
    let keep_alive = match connection.as_deref() {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => http11,
    };
    if buf.len() < head_len + content_length {
        return Ok(None);
    }
    Ok(Some(PollRequest {
        method,
        path: path.to_string(),
        eio: param("EIO"),
        transport: param("transport"),
        sid: param("sid"),
        origin,
        body: buf[head_len..head_len + content_length].to_vec(),
        keep_alive,
        consumed: head_len + content_length,
    }))
}

/// One Engine.IO packet of a polling session: text, or binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Text(Bytes),
    Binary(Bytes),
}

/// Splits a POST body into packets (`b` packets decoded from base64).
pub fn split_payload(body: &[u8]) -> Result<Vec<Payload>, &'static str> {
    let mut out = Vec::new();
    for p in body.split(|b| *b == 0x1e) {
        match p.first() {
            None => return Err("empty packet in payload"),
            Some(b'b') => out.push(Payload::Binary(
                base64_decode(&p[1..])
                    .ok_or("bad base64 in binary packet")?
                    .into(),
            )),
            // engine.io's packet types are `0` to `6`; anything else is
            // its parse error, which ends the session.
            Some(b'0'..=b'6') => out.push(Payload::Text(Bytes::copy_from_slice(p))),
            Some(_) => return Err("unknown packet type"),
        }
    }
    Ok(out)
}

/// Joins packets for a GET answer.
pub fn join_payload<'a>(packets: impl IntoIterator<Item = &'a Payload>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in packets.into_iter().enumerate() {
        if i > 0 {
            out.push(0x1e);
        }
        match p {
            Payload::Text(t) => out.extend_from_slice(t),
            Payload::Binary(b) => {
                out.push(b'b');
                base64_encode(b, &mut out);
            }
        }
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

pub fn base64_decode(data: &[u8]) -> Option<Vec<u8>> {
    let data = match data.iter().position(|b| *b == b'=') {
        Some(i) if data[i..].iter().all(|b| *b == b'=') && data.len().is_multiple_of(4) => {
            &data[..i]
        }
        Some(_) => return None,
        None => data,
    };
    if data.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in data {
        let v = B64.iter().position(|b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// An HTTP response to a polling request; `origin`: the request's, echoed
/// for browsers (with credentials, as socket.io's `cors` does).
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    origin: Option<&str>,
) -> Vec<u8> {
    let reason = crate::protocol::http::reason(status);
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: {}\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    if let Some(o) = origin.filter(|o| !o.contains(['\r', '\n'])) {
        out.extend_from_slice(b"Access-Control-Allow-Origin: ");
        out.extend_from_slice(o.as_bytes());
        out.extend_from_slice(b"\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n");
        if status == 204 {
            out.extend_from_slice(
                b"Access-Control-Allow-Methods: GET,POST,OPTIONS\r\nAccess-Control-Allow-Headers: content-type\r\n",
            );
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// An engine.io error answer (400 with its JSON body).
pub fn error_response(e: EioError, keep_alive: bool, origin: Option<&str>) -> Vec<u8> {
    response(400, "application/json", &e.body(), keep_alive, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, method: &str, body: &str) -> Vec<u8> {
        format!(
            "{method} {target} HTTP/1.1\r\nHost: x\r\nOrigin: http://a\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn parses_and_checks_requests() {
        let b = req("/socket.io/?EIO=4&transport=polling&t=x", "GET", "");
        let r = parse(&b, 100).unwrap().unwrap();
        assert_eq!(r.consumed, b.len());
        assert_eq!(r.origin.as_deref(), Some("http://a"));
        assert!(r.keep_alive);
        assert_eq!(action(&r), Ok(Action::Handshake));
        let b = req("/socket.io/?EIO=4&transport=polling&sid=abc", "POST", "40");
        let r = parse(&b, 100).unwrap().unwrap();
        assert_eq!(r.body, b"40");
        assert_eq!(action(&r), Ok(Action::Send("abc".into())));
        assert_eq!(parse(&b[..b.len() - 1], 100), Ok(None));
        for (target, method, err) in [
            (
                "/socket.io/?EIO=3&transport=polling",
                "GET",
                EioError::UnsupportedVersion,
            ),
            (
                "/socket.io/?EIO=4&transport=x",
                "GET",
                EioError::TransportUnknown,
            ),
            ("/socket.io/?EIO=4", "GET", EioError::TransportUnknown),
            (
                "/socket.io/?EIO=4&transport=polling",
                "POST",
                EioError::BadHandshakeMethod,
            ),
            (
                "/socket.io/?EIO=4&transport=polling&sid=a",
                "PUT",
                EioError::BadRequest,
            ),
        ] {
            let r = parse(&req(target, method, ""), 100).unwrap().unwrap();
            assert_eq!(action(&r), Err(err), "{target}");
        }
        assert_eq!(
            parse(&req("/s/?EIO=4", "POST", "0123456789"), 5),
            Err(HeadError(413, "payload too large"))
        );
        assert_eq!(
            EioError::SessionUnknown.body(),
            br#"{"code":1,"message":"Session ID unknown"}"#
        );
    }

    #[test]
    fn payloads_and_base64_round_trip() {
        let ps = split_payload(b"2\x1e42[\"a\"]\x1ebAQID").unwrap();
        assert_eq!(
            ps,
            vec![
                Payload::Text(Bytes::from_static(b"2")),
                Payload::Text(Bytes::from_static(b"42[\"a\"]")),
                Payload::Binary(Bytes::from_static(&[1, 2, 3]))
            ]
        );
        assert_eq!(join_payload(&ps), b"2\x1e42[\"a\"]\x1ebAQID");
        assert!(split_payload(b"2\x1e").is_err());
        assert!(split_payload(b"b!!").is_err());
        assert_eq!(split_payload(b"abc"), Err("unknown packet type"));
        assert_eq!(split_payload(b"4a\x1e7"), Err("unknown packet type"));
        assert_eq!(split_payload(b"6\x1e1").map(|p| p.len()), Ok(2));
        for data in [&b""[..], b"a", b"ab", b"abc", b"abcd", &[0xff, 0, 0x80]] {
            let mut e = Vec::new();
            base64_encode(data, &mut e);
            assert_eq!(base64_decode(&e).as_deref(), Some(data), "{e:?}");
        }
        assert_eq!(base64_decode(b"AQ=="), Some(vec![1]));
        assert_eq!(base64_decode(b"A=Q="), None);
    }

    #[test]
    fn responses_carry_cors_for_browsers() {
        let r = String::from_utf8(response(
            200,
            "text/plain; charset=UTF-8",
            b"ok",
            true,
            Some("http://a"),
        ))
        .unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Access-Control-Allow-Origin: http://a\r\n"));
        assert!(r.ends_with("\r\n\r\nok"));
        let r = String::from_utf8(error_response(EioError::TransportUnknown, false, None)).unwrap();
        assert!(r.starts_with("HTTP/1.1 400 "));
        assert!(r.ends_with(r#"{"code":0,"message":"Transport unknown"}"#));
        assert!(!r.contains("Access-Control"));
    }
}
