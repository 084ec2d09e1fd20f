//! The client side of the WebSocket upgrade, without I/O.
//!
//! [`request`] renders the HTTP/1.1 upgrade request; [`parse_response`]
//! checks the server's `101 Switching Protocols` answer against the key and
//! says how many bytes of the buffer it used (any rest is frame data).
#![forbid(unsafe_code)]

use tungstenite::handshake::derive_accept_key;

/// Why an upgrade failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("unparsable HTTP response: {0}")]
    Http(String),
    #[error("server answered HTTP {0} instead of 101")]
    Status(u16),
    #[error("missing or wrong Upgrade/Connection header")]
    NotUpgrade,
    #[error("Sec-WebSocket-Accept does not match the key")]
    BadAccept,
    #[error("response headers larger than 16 KiB")]
    TooLarge,
}

/// A fresh random `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    tungstenite::handshake::client::generate_key()
}

/// Renders the upgrade request for `path` on `host` (as `host:port`).
pub fn request(host: &str, path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Checks a (possibly partial) upgrade response. `Ok(None)` means more bytes
/// are needed; `Ok(Some(n))` means the first `n` bytes were the response.
pub fn parse_response(buf: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let used = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > 16 * 1024 {
                return Err(HandshakeError::TooLarge);
            }
            return Ok(None);
        }
        Err(e) => return Err(HandshakeError::Http(e.to_string())),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(HandshakeError::Status(code));
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let upgrade_ok = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
    let connection_ok = header("connection").is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    if !upgrade_ok || !connection_ok {
        return Err(HandshakeError::NotUpgrade);
    }
    let expected = derive_accept_key(key.as_bytes());
    match header("sec-websocket-accept") {
        Some(v) if v.trim_ascii() == expected.as_bytes() => Ok(Some(used)),
        _ => Err(HandshakeError::BadAccept),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(key: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
    }

    #[test]
    fn request_has_the_required_headers() {
        let r = String::from_utf8(request("127.0.0.1:58000", "/", "abc")).unwrap();
        assert!(r.starts_with("GET / HTTP/1.1\r\nHost: 127.0.0.1:58000\r\n"));
        assert!(r.contains("Sec-WebSocket-Key: abc\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn accepts_a_good_response_and_leaves_trailing_frame_bytes() {
        let key = new_key();
        let mut buf = response(&key).into_bytes();
        let n = buf.len();
        buf.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(parse_response(&buf, &key), Ok(Some(n)));
        assert_eq!(parse_response(&buf[..n - 3], &key), Ok(None));
    }

    #[test]
    fn rejects_wrong_status_and_wrong_accept() {
        let key = new_key();
        let bad = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(bad.as_bytes(), &key),
            Err(HandshakeError::Status(403))
        );
        let other = response("c29tZSBvdGhlciBrZXk=");
        assert_eq!(
            parse_response(other.as_bytes(), &key),
            Err(HandshakeError::BadAccept)
        );
        let no_upgrade = "HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert_eq!(
            parse_response(no_upgrade.as_bytes(), &key),
            Err(HandshakeError::NotUpgrade)
        );
    }
}
