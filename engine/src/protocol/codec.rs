//! RFC 6455 frame codec: header decode/encode and payload masking.
//!
//! Plain functions over byte slices, no I/O and no state. [`decode_header`]
//! reads a (client) frame header and says `Ok(None)` when more bytes are
//! needed; [`encode_header`], [`write_frame`] and [`write_close`] produce
//! unmasked server frames straight into the caller's buffer; [`apply_mask`]
//! (un)masks a payload in place, in pieces if need be. The per-connection
//! rules (masking required, fragmentation, UTF-8, close codes) live in
//! [`crate::protocol::websocket`]; the errors of both layers are [`ProtocolError`].
#![forbid(unsafe_code)]

use thiserror::Error;

/// Close status codes used by the server (RFC 6455 section 7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Server going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Data inconsistent with the message type (invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation (slow consumer).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// Message too big.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Unexpected server condition.
    pub const INTERNAL_ERROR: u16 = 1011;

    /// Whether `code` may appear in a close frame on the wire.
    ///
    /// Rejects codes below 1000, 1004 (reserved), 1005/1006/1015 (never sent),
    /// 1016–2999 (reserved for future RFCs) and 5000 and up.
    pub fn is_valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Largest payload of a control frame (ping, pong, close).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest frame header: 2 bytes, 8-byte extended length, 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;

/// Longest server (unmasked) frame header.
pub const MAX_SERVER_HEADER_LEN: usize = 10;

/// A protocol violation by the peer, or a limit it crossed.
///
/// Each one maps to the close code the server sends before dropping the
/// connection, see [`ProtocolError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// Opcodes 3–7 and 11–15 are reserved.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A 64-bit payload length with its most significant bit set.
    #[error("payload length has the most significant bit set")]
    InvalidLength,
    /// RSV1–3 set without a negotiated extension.
    #[error("reserved bits set ({0:#05b})")]
    ReservedBits(u8),
    /// Client frames must be masked.
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// Control frames must not be fragmented.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// Control frames carry at most 125 bytes.
    #[error("control frame payload of {0} bytes (max 125)")]
    ControlTooLong(u64),
    /// A continuation frame without a message in progress.
    #[error("continuation frame without a started message")]
    UnexpectedContinuation,
    /// A new text/binary frame while a fragmented message is in progress.
    #[error("new data frame inside a fragmented message")]
    ExpectedContinuation,
    /// A text message (or close reason) that is not valid UTF-8.
    #[error("invalid UTF-8 in text payload")]
    InvalidUtf8,
    /// A compressed message (permessage-deflate) that does not inflate.
    #[error("invalid compressed data")]
    InvalidCompressedData,
    /// A message longer than the configured maximum.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooBig {
        /// Declared or accumulated size.
        size: u64,
        /// The configured limit.
        max: usize,
    },
    /// A close frame with a 1-byte payload.
    #[error("close frame with a 1-byte payload")]
    InvalidClosePayload,
    /// A close code that must not appear on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
}

impl ProtocolError {
    /// The close code to send for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCompressedData => {
                close_code::INVALID_PAYLOAD
            }
            ProtocolError::MessageTooBig { .. } => close_code::MESSAGE_TOO_BIG,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

/// A frame opcode (RFC 6455 section 5.2). Reserved opcodes are not
/// representable: [`OpCode::from_u8`] rejects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: first (or only) frame of a text message.
    Text,
    /// 0x2: first (or only) frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Parses the low 4 bits of the first header byte.
    pub fn from_u8(bits: u8) -> Result<Self, ProtocolError> {
        Ok(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1, RSV2, RSV3 as the low three bits (`0b100` = RSV1).
    pub rsv: u8,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, present on client frames.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes (at most `i64::MAX`).
    pub payload_len: u64,
}

/// Decodes the frame header at the front of `buf`.
///
/// Returns the header and its length in bytes, `Ok(None)` when `buf` does
/// not hold the whole header yet (nothing is allocated), or an error for a
/// reserved opcode or a 64-bit length with the top bit set. Masking, RSV and
/// control-frame rules are checked by the caller (they depend on the side).
pub fn decode_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    let opcode = OpCode::from_u8(b0 & 0x0F)?;
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x07;
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7F;

    let mut pos = 2;
    let payload_len = match len7 {
        126 => {
            let Some(bytes) = buf.get(2..4) else {
                return Ok(None);
            };
            pos = 4;
            u64::from(u16::from_be_bytes([bytes[0], bytes[1]]))
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            pos = 10;
            let mut arr = [0u8; 8];
            arr.copy_from_slice(bytes);
            let len = u64::from_be_bytes(arr);
            if len & (1 << 63) != 0 {
                return Err(ProtocolError::InvalidLength);
            }
            len
        }
        n => u64::from(n),
    };

    let mask = if masked {
        let Some(bytes) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        pos += 4;
        Some([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        None
    };

    Ok(Some((
        FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
        },
        pos,
    )))
}

/// Encodes an unmasked (server) frame header into `out`, returns its length
/// (2, 4 or 10).
pub fn encode_header(fin: bool, opcode: OpCode, payload_len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = (if fin { 0x80 } else { 0 }) | opcode.as_u8();
    if payload_len < 126 {
        // Fits in 7 bits by the check above.
        out[1] = payload_len as u8;
        2
    } else if let Ok(len16) = u16::try_from(payload_len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len16.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// Appends a complete, unfragmented, unmasked frame to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut header = [0u8; MAX_SERVER_HEADER_LEN];
    let n = encode_header(true, opcode, payload.len(), &mut header);
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` to `out`.
///
/// The reason is cut at a character boundary so that the payload fits the
/// 125-byte control frame limit.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let reason = truncate_utf8(reason, MAX_CONTROL_PAYLOAD - 2);
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    write_frame(out, OpCode::Close, &payload[..2 + reason.len()]);
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// XORs `buf` with the masking key, in place (masking and unmasking are the
/// same operation).
///
/// `offset` is the position of `buf[0]` inside the frame payload, so a
/// payload can be unmasked in pieces: `apply_mask(&mut p[..n], m, 0)` then
/// `apply_mask(&mut p[n..], m, n)`. Works a `u64` at a time on the aligned
/// middle of `buf`, byte by byte on the head and tail.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    // Rotate the key so that key[0] applies to buf[0].
    let mut key = [0u8; 4];
    for (i, k) in key.iter_mut().enumerate() {
        *k = mask[(offset + i) % 4];
    }

    // Byte-wise head up to the first 8-byte aligned address.
    let misalign = (buf.as_ptr() as usize) % 8;
    let head_len = ((8 - misalign) % 8).min(buf.len());
    let (head, rest) = buf.split_at_mut(head_len);
    for (i, b) in head.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    key.rotate_left(head_len % 4);

    // Aligned middle, eight bytes at a time.
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = rest.chunks_exact_mut(8);
    for chunk in &mut chunks {
        if let Ok(word) = <&mut [u8; 8]>::try_from(chunk) {
            *word = (u64::from_ne_bytes(*word) ^ wide).to_ne_bytes();
        }
    }

    // Tail: fewer than 8 bytes, starting at a multiple of 8 (so of 4).
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= mask[(offset + i) % 4];
        }
    }

    #[test]
    fn mask_matches_naive_at_every_alignment_length_and_offset() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let original: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37)).collect();
        for align in 0..8 {
            for len in 0..=70 {
                for offset in 0..4 {
                    let mut fast = original.clone();
                    let mut slow = original.clone();
                    apply_mask(&mut fast[align..align + len], mask, offset);
                    naive_mask(&mut slow[align..align + len], mask, offset);
                    assert_eq!(fast, slow, "align {align} len {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn mask_in_pieces_equals_mask_at_once() {
        let mask = [0xde, 0xad, 0xbe, 0xef];
        let original: Vec<u8> = (0..=255u8).collect();
        for split in 0..original.len() {
            let mut whole = original.clone();
            apply_mask(&mut whole, mask, 0);
            let mut pieces = original.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split);
            assert_eq!(whole, pieces, "split {split}");
        }
    }

    #[test]
    fn mask_twice_is_identity() {
        let mask = [1, 2, 3, 4];
        let mut data = b"Hello, WebSocket world!".to_vec();
        apply_mask(&mut data, mask, 3);
        assert_ne!(&data[..], b"Hello, WebSocket world!");
        apply_mask(&mut data, mask, 3);
        assert_eq!(&data[..], b"Hello, WebSocket world!");
    }

    #[test]
    fn decode_rfc_examples() {
        // RFC 6455 5.7: unmasked "Hello".
        let (h, n) = decode_header(&[0x81, 0x05, 0x48, 0x65]).unwrap().unwrap();
        assert_eq!(n, 2);
        assert!(h.fin);
        assert_eq!(h.opcode, OpCode::Text);
        assert_eq!(h.payload_len, 5);
        assert_eq!(h.mask, None);

        // Masked "Hello".
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = decode_header(&frame).unwrap().unwrap();
        assert_eq!(n, 6);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        let mut payload = frame[n..].to_vec();
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(payload, b"Hello");

        // Fragmented: first fragment, fin = 0.
        let (h, _) = decode_header(&[0x01, 0x03]).unwrap().unwrap();
        assert!(!h.fin);
        assert_eq!(h.opcode, OpCode::Text);

        // 256 bytes binary, 16-bit length.
        let (h, n) = decode_header(&[0x82, 0x7E, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.opcode, h.payload_len, n), (OpCode::Binary, 256, 4));

        // 64 KiB binary, 64-bit length.
        let (h, n) = decode_header(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
    }

    #[test]
    fn decode_incomplete_at_every_prefix() {
        let frame = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for len in 0..frame.len() {
            assert_eq!(decode_header(&frame[..len]), Ok(None), "prefix {len}");
        }
        let (h, n) = decode_header(&frame).unwrap().unwrap();
        assert_eq!(n, 14);
        assert_eq!(h.mask, Some([1, 2, 3, 4]));
        assert_eq!(h.payload_len, 65536);
    }

    #[test]
    fn decode_rsv_bits() {
        let (h, _) = decode_header(&[0xC1, 0x00]).unwrap().unwrap();
        assert_eq!(h.rsv, 0b100);
        let (h, _) = decode_header(&[0x91, 0x00]).unwrap().unwrap();
        assert_eq!(h.rsv, 0b001);
    }

    #[test]
    fn decode_rejects_reserved_opcodes() {
        for op in (3..=7).chain(11..=15) {
            assert_eq!(
                decode_header(&[0x80 | op, 0x00]),
                Err(ProtocolError::ReservedOpcode(op))
            );
        }
        // Rejected as soon as the first two bytes are in.
        assert_eq!(
            decode_header(&[0x83, 0xFF]),
            Err(ProtocolError::ReservedOpcode(3))
        );
    }

    #[test]
    fn decode_rejects_top_bit_length() {
        assert_eq!(
            decode_header(&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::InvalidLength)
        );
    }

    #[test]
    fn encode_roundtrips_through_decode() {
        for &len in &[0usize, 1, 125, 126, 127, 65535, 65536, 1 << 32] {
            for op in [OpCode::Text, OpCode::Binary, OpCode::Ping, OpCode::Close] {
                for fin in [true, false] {
                    let mut out = [0u8; 10];
                    let n = encode_header(fin, op, len, &mut out);
                    let expected_len = match len {
                        0..=125 => 2,
                        126..=65535 => 4,
                        _ => 10,
                    };
                    assert_eq!(n, expected_len);
                    let (h, m) = decode_header(&out[..n]).unwrap().unwrap();
                    assert_eq!(m, n);
                    assert_eq!(h.payload_len, len as u64);
                    assert_eq!(h.opcode, op);
                    assert_eq!(h.fin, fin);
                    assert_eq!(h.mask, None);
                    assert_eq!(h.rsv, 0);
                }
            }
        }
    }

    #[test]
    fn write_frame_appends() {
        let mut out = vec![0xAA];
        write_frame(&mut out, OpCode::Text, b"hi");
        assert_eq!(out, [0xAA, 0x81, 0x02, b'h', b'i']);
    }

    #[test]
    fn write_close_with_reason() {
        let mut out = Vec::new();
        write_close(&mut out, 1008, "slow consumer");
        assert_eq!(&out[..4], &[0x88, 15, 0x03, 0xF0]);
        assert_eq!(&out[4..], b"slow consumer");
    }

    #[test]
    fn write_close_truncates_reason_on_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut out = Vec::new();
        write_close(&mut out, 1000, &reason);
        let (h, n) = decode_header(&out).unwrap().unwrap();
        assert!(h.payload_len as usize <= MAX_CONTROL_PAYLOAD);
        assert_eq!(out.len(), n + h.payload_len as usize);
        assert!(std::str::from_utf8(&out[n + 2..]).is_ok());
        assert_eq!(out.len() - n - 2, 122);
    }

    #[test]
    fn close_code_validity() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1014, 3000, 4999,
        ] {
            assert!(close_code::is_valid_on_wire(code), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert!(!close_code::is_valid_on_wire(code), "{code}");
        }
    }

    #[test]
    fn error_close_codes() {
        assert_eq!(ProtocolError::InvalidUtf8.close_code(), 1007);
        assert_eq!(
            ProtocolError::MessageTooBig { size: 2, max: 1 }.close_code(),
            1009
        );
        assert_eq!(ProtocolError::UnmaskedFrame.close_code(), 1002);
    }
}
