//! WebSocket frame codec for the client side of RFC 6455.
//!
//! Server frames arrive unmasked and are decoded in place from the reader's
//! buffer ([`decode`] borrows the payload, allocates nothing and says
//! `Ok(None)` when the buffer holds only part of a frame). Client frames are
//! masked by [`encode_masked`] straight into the connection's output buffer.
#![forbid(unsafe_code)]

/// Frame opcodes the client cares about.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// A decoded server frame borrowing its payload from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: u8,
    pub payload: &'a [u8],
}

/// Ways a server frame can break the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("server sent a masked frame")]
    MaskedServerFrame,
    #[error("reserved bits set without an extension")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("control frame longer than 125 bytes or fragmented")]
    BadControlFrame,
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(u64),
}

/// Decodes one frame from the start of `buf`.
///
/// Returns the frame and the number of bytes it occupies, `Ok(None)` when
/// `buf` holds only part of a frame, or an error when the bytes break the
/// protocol. Frames longer than `max_payload` are refused.
pub fn decode(buf: &[u8], max_payload: usize) -> Result<Option<(Frame<'_>, usize)>, ProtocolError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    if b1 & 0x80 != 0 {
        return Err(ProtocolError::MaskedServerFrame);
    }
    let fin = b0 & 0x80 != 0;
    let op = b0 & 0x0F;
    match op {
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {}
        opcode::CLOSE | opcode::PING | opcode::PONG => {
            if !fin || (b1 & 0x7F) > 125 {
                return Err(ProtocolError::BadControlFrame);
            }
        }
        other => return Err(ProtocolError::UnknownOpcode(other)),
    }
    let (len, header) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > max_payload as u64 {
        return Err(ProtocolError::TooLarge(len));
    }
    let total = header + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            fin,
            opcode: op,
            payload: &buf[header..total],
        },
        total,
    )))
}

/// XORs `data` with `mask`, as if `data` started `offset` bytes into the
/// masked payload.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = mask;
    m.rotate_left(offset % 4);
    let word = u32::from_ne_bytes(m);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i];
    }
}

/// Appends a complete, final, masked client frame to `out`.
pub fn encode_masked(out: &mut Vec<u8>, op: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | op);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// Appends an unmasked (server-style) frame; used by tests and the local
/// reference sender.
pub fn encode_unmasked(out: &mut Vec<u8>, op: u8, payload: &[u8]) {
    out.push(0x80 | op);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Parses a close frame payload into (code, reason).
pub fn close_reason(payload: &[u8]) -> (u16, String) {
    if payload.len() < 2 {
        return (1005, String::new());
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    (code, String::from_utf8_lossy(&payload[2..]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_mask(data: &[u8], mask: [u8; 4], offset: usize) -> Vec<u8> {
        data.iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[(i + offset) % 4])
            .collect()
    }

    #[test]
    fn masking_matches_naive_at_every_alignment_and_length() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..67u8).collect();
        for offset in 0..8 {
            for len in 0..data.len() {
                let mut d = data[..len].to_vec();
                apply_mask(&mut d, mask, offset);
                assert_eq!(
                    d,
                    naive_mask(&data[..len], mask, offset),
                    "off {offset} len {len}"
                );
            }
        }
    }

    #[test]
    fn masking_twice_is_identity() {
        let mut d = b"hello masked world".to_vec();
        apply_mask(&mut d, [1, 2, 3, 4], 3);
        apply_mask(&mut d, [1, 2, 3, 4], 3);
        assert_eq!(d, b"hello masked world");
    }

    #[test]
    fn decodes_every_length_form() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload = vec![b'a'; len];
            let mut buf = Vec::new();
            encode_unmasked(&mut buf, opcode::TEXT, &payload);
            let (f, used) = decode(&buf, 1 << 20).unwrap().unwrap();
            assert_eq!(used, buf.len());
            assert_eq!(f.payload.len(), len);
            assert!(f.fin);
            assert_eq!(f.opcode, opcode::TEXT);
            // Every strict prefix is incomplete, never an error.
            for cut in [0, 1, 2, 3, buf.len() - 1] {
                if cut < buf.len() {
                    assert_eq!(
                        decode(&buf[..cut], 1 << 20).unwrap(),
                        None,
                        "len {len} cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn decodes_control_frames_and_two_frames_back_to_back() {
        let mut buf = Vec::new();
        encode_unmasked(&mut buf, opcode::PING, b"p");
        encode_unmasked(&mut buf, opcode::CLOSE, &[0x03, 0xE8, b'b', b'y', b'e']);
        let (f, n) = decode(&buf, 100).unwrap().unwrap();
        assert_eq!((f.opcode, f.payload), (opcode::PING, &b"p"[..]));
        let (f2, n2) = decode(&buf[n..], 100).unwrap().unwrap();
        assert_eq!(f2.opcode, opcode::CLOSE);
        assert_eq!(n + n2, buf.len());
        assert_eq!(close_reason(f2.payload), (1000, "bye".to_string()));
        assert_eq!(close_reason(&[]), (1005, String::new()));
    }

    #[test]
    fn rejects_protocol_violations() {
        assert_eq!(
            decode(&[0x81, 0x81, 0, 0, 0, 0, 0], 10),
            Err(ProtocolError::MaskedServerFrame)
        );
        assert_eq!(decode(&[0xC1, 0x00], 10), Err(ProtocolError::ReservedBits));
        assert_eq!(
            decode(&[0x83, 0x00], 10),
            Err(ProtocolError::UnknownOpcode(3))
        );
        assert_eq!(
            decode(&[0x09, 0x00], 10),
            Err(ProtocolError::BadControlFrame)
        );
        assert_eq!(
            decode(&[0x89, 126, 0, 200], 1000),
            Err(ProtocolError::BadControlFrame)
        );
        assert_eq!(
            decode(&[0x81, 126, 0x10, 0], 10),
            Err(ProtocolError::TooLarge(4096))
        );
    }

    #[test]
    fn continuation_frames_decode_with_fin_flag() {
        let buf = [0x01, 0x01, b'a', 0x80, 0x01, b'b'];
        let (f, n) = decode(&buf, 10).unwrap().unwrap();
        assert!(!f.fin);
        let (f2, _) = decode(&buf[n..], 10).unwrap().unwrap();
        assert!(f2.fin);
        assert_eq!(f2.opcode, opcode::CONTINUATION);
    }

    #[test]
    fn encode_masked_roundtrips_at_all_sizes() {
        for len in [0usize, 5, 125, 126, 300, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            let mask = [9, 8, 7, 6];
            encode_masked(&mut out, opcode::TEXT, &payload, mask);
            assert_eq!(out[0], 0x81);
            assert_ne!(out[1] & 0x80, 0);
            let header = match out[1] & 0x7F {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            assert_eq!(&out[header..header + 4], &mask);
            let mut body = out[header + 4..].to_vec();
            apply_mask(&mut body, mask, 0);
            assert_eq!(body, payload);
        }
    }
}
