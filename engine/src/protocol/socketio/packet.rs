//! Socket.IO v5 packets (socketio/socket.io-protocol), sans-IO: the
//! payload of an Engine.IO message, `<type>[<#attachments>-][<nsp>,][<ackId>][JSON]`.
#![forbid(unsafe_code)]

/// A Socket.IO packet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl Kind {
    fn digit(self) -> u8 {
        match self {
            Kind::Connect => b'0',
            Kind::Disconnect => b'1',
            Kind::Event => b'2',
            Kind::Ack => b'3',
            Kind::ConnectError => b'4',
            Kind::BinaryEvent => b'5',
            Kind::BinaryAck => b'6',
        }
    }
}

/// One decoded packet; `data` is the raw JSON (empty when absent).
#[derive(Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub kind: Kind,
    pub nsp: &'a str,
    pub ack: Option<u64>,
    pub data: &'a [u8],
}

/// Why a packet is refused (the close reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketError(pub &'static str);

/// Decodes a Socket.IO packet (without the Engine.IO `4`). Binary packets
/// (`5`, `6`) are refused: ringcast carries JSON only.
pub fn decode(msg: &[u8]) -> Result<Packet<'_>, PacketError> {
    let Some((&t, mut rest)) = msg.split_first() else {
        return Err(PacketError("invalid Socket.IO packet: empty"));
    };
    let kind = match t {
        b'0' => Kind::Connect,
        b'1' => Kind::Disconnect,
        b'2' => Kind::Event,
        b'3' => Kind::Ack,
        b'4' => Kind::ConnectError,
        b'5' | b'6' => {
            return Err(PacketError(
                "binary Socket.IO packets are not supported (JSON only)",
            ))
        }
        _ => return Err(PacketError("invalid Socket.IO packet type")),
    };
    let mut nsp = "/";
    if rest.first() == Some(&b'/') {
        let end = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
        nsp = std::str::from_utf8(&rest[..end])
            .map_err(|_| PacketError("invalid Socket.IO packet: namespace is not UTF-8"))?;
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let ack = if digits > 0 {
        let mut id: u64 = 0;
        for &d in &rest[..digits] {
            id = id
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(d - b'0')))
                .ok_or(PacketError("invalid Socket.IO packet: ack id too large"))?;
        }
        rest = &rest[digits..];
        Some(id)
    } else {
        None
    };
    Ok(Packet {
        kind,
        nsp,
        ack,
        data: rest,
    })
}

/// A server packet inside an Engine.IO message: `4<type>[<nsp>,][<ack>]<data>`.
pub fn encode(kind: Kind, nsp: &str, ack: Option<u64>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + nsp.len() + data.len() + 20);
    out.push(b'4');
    out.push(kind.digit());
    if nsp != "/" {
        out.extend_from_slice(nsp.as_bytes());
        out.push(b',');
    }
    if let Some(id) = ack {
        out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// `42["<name>",<json>]` on the main namespace.
pub fn event(name: &str, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + name.len() + json.len());
    out.extend_from_slice(b"42[\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(json);
    out.push(b']');
    out
}

/// `43<id>[<json>]` on the main namespace.
pub fn ack(id: u64, json: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(json.len() + 2);
    data.push(b'[');
    data.extend_from_slice(json);
    data.push(b']');
    encode(Kind::Ack, "/", Some(id), &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kind: Kind, nsp: &'static str, ack: Option<u64>, data: &'static str) -> Packet<'static> {
        Packet {
            kind,
            nsp,
            ack,
            data: data.as_bytes(),
        }
    }

    #[test]
    fn decodes_the_specs_examples() {
        assert_eq!(decode(b"0"), Ok(p(Kind::Connect, "/", None, "")));
        assert_eq!(
            decode(br#"0{"token":"123"}"#),
            Ok(p(Kind::Connect, "/", None, r#"{"token":"123"}"#))
        );
        assert_eq!(
            decode(b"0/admin,"),
            Ok(p(Kind::Connect, "/admin", None, ""))
        );
        assert_eq!(decode(b"0/admin"), Ok(p(Kind::Connect, "/admin", None, "")));
        assert_eq!(
            decode(br#"2["hey","Jude"]"#),
            Ok(p(Kind::Event, "/", None, r#"["hey","Jude"]"#))
        );
        assert_eq!(
            decode(br#"212["foo"]"#),
            Ok(p(Kind::Event, "/", Some(12), r#"["foo"]"#))
        );
        assert_eq!(
            decode(br#"2/admin,456["project:delete",123]"#),
            Ok(p(
                Kind::Event,
                "/admin",
                Some(456),
                r#"["project:delete",123]"#
            ))
        );
        assert_eq!(decode(b"312[]"), Ok(p(Kind::Ack, "/", Some(12), "[]")));
        assert_eq!(decode(b"1"), Ok(p(Kind::Disconnect, "/", None, "")));
    }

    #[test]
    fn refuses_binary_and_garbage() {
        assert_eq!(
            decode(br#"51-["baz",{"_placeholder":true,"num":0}]"#),
            Err(PacketError(
                "binary Socket.IO packets are not supported (JSON only)"
            ))
        );
        assert_eq!(
            decode(b"9"),
            Err(PacketError("invalid Socket.IO packet type"))
        );
        assert_eq!(
            decode(b""),
            Err(PacketError("invalid Socket.IO packet: empty"))
        );
        assert_eq!(
            decode(b"299999999999999999999999[\"a\"]"),
            Err(PacketError("invalid Socket.IO packet: ack id too large"))
        );
    }

    #[test]
    fn encodes_server_packets() {
        assert_eq!(
            encode(Kind::Connect, "/", None, br#"{"sid":"x"}"#),
            br#"40{"sid":"x"}"#
        );
        assert_eq!(
            encode(
                Kind::ConnectError,
                "/admin",
                None,
                br#"{"message":"Invalid namespace"}"#
            ),
            br#"44/admin,{"message":"Invalid namespace"}"#
        );
        assert_eq!(ack(12, br#""bar""#), br#"4312["bar"]"#);
        assert_eq!(
            event("status", br#"{"status":"success"}"#),
            br#"42["status",{"status":"success"}]"#
        );
        assert_eq!(encode(Kind::Disconnect, "/", None, b""), b"41");
    }
}
