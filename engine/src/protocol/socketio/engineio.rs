//! Engine.IO v4 packets (socketio/engine.io-protocol), sans-IO: one packet
//! per WebSocket text message, `<type>[<data>]`, and the open packet the
//! server greets with.
#![forbid(unsafe_code)]

/// One Engine.IO packet a client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `1`: the client closes the connection.
    Close,
    /// `2`: a ping (with `probe`, an upgrade probe).
    Ping(&'a [u8]),
    /// `3`: the answer to the server's ping.
    Pong(&'a [u8]),
    /// `4`: a message (a Socket.IO packet).
    Message(&'a [u8]),
    /// `5`: the upgrade is done.
    Upgrade,
    /// `6`: nothing.
    Noop,
}

/// Why a client's Engine.IO packet is refused (the close reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketError(pub &'static str);

/// Decodes one WebSocket message as an Engine.IO packet.
pub fn decode(msg: &[u8]) -> Result<Packet<'_>, PacketError> {
    let Some((&kind, data)) = msg.split_first() else {
        return Err(PacketError("invalid Engine.IO packet: empty message"));
    };
    match kind {
        b'1' => Ok(Packet::Close),
        b'2' => Ok(Packet::Ping(data)),
        b'3' => Ok(Packet::Pong(data)),
        b'4' => Ok(Packet::Message(data)),
        b'5' => Ok(Packet::Upgrade),
        b'6' => Ok(Packet::Noop),
        b'0' => Err(PacketError(
            "invalid Engine.IO packet: open is sent by the server",
        )),
        _ => Err(PacketError("invalid Engine.IO packet type")),
    }
}

/// The timing and size the open packet announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenParams {
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    pub max_payload: usize,
}

/// `0{"sid":S,"upgrades":[...],"pingInterval":I,"pingTimeout":T,"maxPayload":M}`
/// (engine.io's key order).
pub fn open_packet(sid: &str, upgrades: &[&str], p: OpenParams) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(br#"0{"sid":""#);
    out.extend_from_slice(sid.as_bytes());
    out.extend_from_slice(br#"","upgrades":["#);
    for (i, u) in upgrades.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(u.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(br#"],"pingInterval":"#);
    out.extend_from_slice(itoa::Buffer::new().format(p.ping_interval_ms).as_bytes());
    out.extend_from_slice(br#","pingTimeout":"#);
    out.extend_from_slice(itoa::Buffer::new().format(p.ping_timeout_ms).as_bytes());
    out.extend_from_slice(br#","maxPayload":"#);
    out.extend_from_slice(itoa::Buffer::new().format(p.max_payload).as_bytes());
    out.push(b'}');
    out
}

const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A session id: 20 URL-safe characters from 15 bytes of the OS CSPRNG
/// (120 bits, unguessable). `None` if the OS has no randomness to give.
pub fn new_sid() -> Option<String> {
    let mut raw = [0u8; 15];
    getrandom::getrandom(&mut raw).ok()?;
    Some(sid_from(&raw))
}

/// The 20-character id of 15 random bytes (URL-safe base64, no padding).
pub fn sid_from(raw: &[u8; 15]) -> String {
    let mut out = String::with_capacity(20);
    for chunk in raw.chunks(3) {
        let n = u32::from(chunk[0]) << 16 | u32::from(chunk[1]) << 8 | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            out.push(char::from(URL_SAFE[(n >> shift & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_client_packet_type() {
        assert_eq!(decode(b"1"), Ok(Packet::Close));
        assert_eq!(decode(b"2probe"), Ok(Packet::Ping(b"probe")));
        assert_eq!(decode(b"3"), Ok(Packet::Pong(b"")));
        assert_eq!(decode(b"42[\"a\"]"), Ok(Packet::Message(b"2[\"a\"]")));
        assert_eq!(decode(b"5"), Ok(Packet::Upgrade));
        assert_eq!(decode(b"6"), Ok(Packet::Noop));
    }

    #[test]
    fn refuses_bad_packets_with_a_reason() {
        assert_eq!(
            decode(b""),
            Err(PacketError("invalid Engine.IO packet: empty message"))
        );
        assert_eq!(
            decode(b"7"),
            Err(PacketError("invalid Engine.IO packet type"))
        );
        assert_eq!(
            decode(b"x42"),
            Err(PacketError("invalid Engine.IO packet type"))
        );
        assert!(decode(b"0{}").is_err());
    }

    #[test]
    fn open_packet_matches_engine_io_byte_for_byte() {
        let p = OpenParams {
            ping_interval_ms: 25000,
            ping_timeout_ms: 300000,
            max_payload: 10000,
        };
        assert_eq!(
            String::from_utf8(open_packet("lv_VI97HAXpY6yYWAAAC", &[], p)).unwrap(),
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":[],"pingInterval":25000,"pingTimeout":300000,"maxPayload":10000}"#
        );
        assert_eq!(
            String::from_utf8(open_packet("s", &["websocket"], p)).unwrap(),
            r#"0{"sid":"s","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":300000,"maxPayload":10000}"#
        );
    }

    #[test]
    fn sids_are_20_url_safe_chars_and_differ() {
        assert_eq!(sid_from(&[0; 15]), "AAAAAAAAAAAAAAAAAAAA");
        assert_eq!(sid_from(&[255; 15]), "____________________");
        let a = new_sid().unwrap();
        let b = new_sid().unwrap();
        assert_eq!(a.len(), 20);
        assert!(a.bytes().all(|c| URL_SAFE.contains(&c)));
        assert_ne!(a, b);
    }
}
