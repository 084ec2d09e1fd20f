//! permessage-deflate (RFC 7692), without I/O: the negotiation in the
//! upgrade, the compressed twin of a publication's frame, and the bounded
//! inflation of a client's compressed message.
//!
//! # Compressed once per publication
//!
//! Compressing per subscriber would cost far more CPU than sending. So
//! ringcast always answers `server_no_context_takeover`: each message is
//! compressed from an empty LZ77 window, which makes the compressed bytes
//! of a message the same for every receiver, and a publication's form is
//! compressed at most once ([`Deflater::compress_frame`], cached beside the plain
//! forms in [`crate::pubsub::publication::Publication::compressed_form`])
//! and shared by reference like the plain frame. A server may add
//! `server_no_context_takeover` to any response (RFC 7692 section 7.1.1.1).
//!
//! # No inflate state between messages
//!
//! ringcast also always answers `client_no_context_takeover`, which
//! RFC 7692 section 7.1.1.2 lets a server include whether or not the offer
//! had it ("A server MAY include the client_no_context_takeover extension
//! parameter in an extension negotiation response"). The client then starts
//! every message from an empty window, so no inflate state has to live
//! between two messages: one [`Inflater`] per shard is reset per message,
//! and an idle connection holds no compression state at all (one byte in
//! its `Conn` saying what was agreed).
//!
//! # Window sizes
//!
//! - `client_max_window_bits` (with or without a value) is accepted and not
//!   echoed: the [`Inflater`] uses a 15-bit window, which reads streams
//!   made with any smaller one (section 7.1.2.2 lets the server omit it).
//! - `server_max_window_bits=N` (8..=15) is accepted and echoed, as
//!   section 7.1.2.1 requires. The shared twin is compressed with a 15-bit
//!   window, but a message compressed from an empty window never refers
//!   further back than its own length, so a twin whose plain payload is at
//!   most 2^N bytes uses a window of at most 2^N and is sent compressed;
//!   longer ones go to that client uncompressed, which RFC 7692 always
//!   allows (RSV1 is per message). See [`Agreement::may_send_compressed`].
//!
//! An offer with an unknown, repeated or malformed parameter is declined
//! (section 7.1: "a server MUST decline an extension negotiation offer"
//! it cannot accept) and the next one is tried; declining only means no
//! `Sec-WebSocket-Extensions` in the 101, never a failed upgrade.
//!
//! Replies and control frames are sent uncompressed (allowed: a message
//! is compressed only when its first frame has RSV1).
#![forbid(unsafe_code)]

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::protocol::codec::{decode_header, encode_header, ProtocolError};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// RSV1 in a frame header's first byte: "this message is compressed".
pub const RSV1: u8 = 0x40;

/// The four bytes a sync flush ends with, removed from every compressed
/// message on the wire and put back before inflating (section 7.2.1).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// zlib level for the shared twins: the cost is paid once per publication,
/// so the default level (6) rather than the fastest.
const LEVEL: u32 = 6;

/// What was agreed for one connection: a `permessage-deflate` offer the
/// server accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// `server_max_window_bits` from the offer, or 15 when absent.
    pub server_window_bits: u8,
    /// Whether the offer named `server_max_window_bits` (then it is echoed).
    echo_server_window: bool,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` response header line (with CRLF).
    pub fn write_response_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            b"Sec-WebSocket-Extensions: permessage-deflate; \
              server_no_context_takeover; client_no_context_takeover",
        );
        if self.echo_server_window {
            out.extend_from_slice(b"; server_max_window_bits=");
            out.extend_from_slice(
                itoa::Buffer::new()
                    .format(self.server_window_bits)
                    .as_bytes(),
            );
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Whether a message whose plain payload is `len` bytes may go out
    /// compressed to this client: always with a 15-bit window, otherwise
    /// only when the message fits the client's window (see the module
    /// docs).
    pub fn may_send_compressed(&self, len: usize) -> bool {
        self.server_window_bits >= 15 || len <= 1usize << self.server_window_bits
    }

    /// The agreement packed in one byte for a connection's state: 0 is
    /// "no compression", otherwise the server window bits (8..=15).
    pub fn to_byte(agreement: Option<Agreement>) -> u8 {
        agreement.map_or(0, |a| a.server_window_bits)
    }

    /// The inverse of [`Agreement::to_byte`] for the checks that matter
    /// after the handshake.
    pub fn from_byte(byte: u8) -> Option<Agreement> {
        (8..=15).contains(&byte).then_some(Agreement {
            server_window_bits: byte,
            echo_server_window: byte < 15,
        })
    }
}

/// Negotiates from one `Sec-WebSocket-Extensions` header value: the first
/// acceptable `permessage-deflate` offer in it, or `None`. Call it for each
/// such header in order and keep the first answer.
pub fn negotiate(header_value: &[u8]) -> Option<Agreement> {
    split_unquoted(header_value, b',').find_map(accept_offer)
}

/// Accepts one extension offer (`name; param; param=value`) if it is an
/// acceptable `permessage-deflate` offer.
fn accept_offer(offer: &[u8]) -> Option<Agreement> {
    let mut parts = split_unquoted(offer, b';');
    let name = parts.next()?.trim_ascii();
    if !name.eq_ignore_ascii_case(EXTENSION.as_bytes()) {
        return None;
    }
    let mut server_nct = false;
    let mut client_nct = false;
    let mut server_bits: Option<u8> = None;
    let mut client_bits = false;
    for param in parts {
        let (key, value) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => (
                param[..eq].trim_ascii(),
                Some(unquote(param[eq + 1..].trim_ascii())?),
            ),
            None => (param.trim_ascii(), None),
        };
        let seen = match key {
            b"server_no_context_takeover" if value.is_none() => &mut server_nct,
            b"client_no_context_takeover" if value.is_none() => &mut client_nct,
            b"server_max_window_bits" => {
                if server_bits.is_some() {
                    return None;
                }
                server_bits = Some(window_bits(&value?)?);
                continue;
            }
            b"client_max_window_bits" => {
                if let Some(value) = value {
                    window_bits(&value)?;
                }
                &mut client_bits
            }
            // Unknown parameter, or a value where none is allowed.
            _ => return None,
        };
        if std::mem::replace(seen, true) {
            // Repeated parameter.
            return None;
        }
    }
    Some(Agreement {
        server_window_bits: server_bits.unwrap_or(15),
        echo_server_window: server_bits.is_some(),
    })
}

/// A window-bits value: a decimal 8..=15 without leading zeros.
fn window_bits(value: &[u8]) -> Option<u8> {
    match value {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// A parameter value as a token or a quoted-string (RFC 7230 section
/// 3.2.6), unquoted; `None` when malformed.
fn unquote(value: &[u8]) -> Option<Vec<u8>> {
    let Some(inner) = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
    else {
        let is_token = !value.is_empty() && value.iter().all(|&b| is_tchar(b));
        return is_token.then(|| value.to_vec());
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => out.push(*bytes.next()?),
            b'"' => return None,
            _ => out.push(b),
        }
    }
    Some(out)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits on `sep` outside quoted strings.
fn split_unquoted(value: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, &b) in s.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if b == sep && !quoted {
                rest = Some(&s[i + 1..]);
                return Some(&s[..i]);
            }
        }
        rest = None;
        Some(s)
    })
}

/// The payload length of a complete unfragmented server frame, or `None`
/// when `frame` is not exactly one such frame.
pub fn frame_payload_len(frame: &[u8]) -> Option<usize> {
    let (header, header_len) = decode_header(frame).ok()??;
    let len = usize::try_from(header.payload_len).ok()?;
    (header.fin && header.mask.is_none() && header_len + len == frame.len()).then_some(len)
}

/// A shard's compressor for the shared twins, allocated on first use (a
/// zlib deflate state is a few hundred KiB) and reset per message.
#[derive(Default)]
pub struct Deflater {
    compress: Option<Compress>,
    buf: Vec<u8>,
}

impl Deflater {
    pub fn new() -> Self {
        Self::default()
    }

    /// The compressed twin of `plain`, a complete unfragmented server data
    /// frame: the same message as one frame with RSV1 set and its payload
    /// deflated (raw deflate, sync flush, the trailing `00 00 ff ff`
    /// removed), in a buffer that is already shared. Returns `plain` itself
    /// (a reference-count bump) when it is not such a frame or when
    /// compression would not make it smaller.
    pub fn compress_frame(&mut self, plain: &Bytes) -> Bytes {
        let Some(len) = frame_payload_len(plain) else {
            return plain.clone();
        };
        let payload = &plain[plain.len() - len..];
        if !self.deflate(payload) {
            return plain.clone();
        }
        let mut header = [0u8; 10];
        let h = encode_header(
            true,
            crate::protocol::codec::OpCode::Text,
            self.buf.len(),
            &mut header,
        );
        if h + self.buf.len() >= plain.len() {
            return plain.clone();
        }
        // FIN, RSV1 and the plain frame's opcode.
        header[0] = 0x80 | RSV1 | (plain[0] & 0x0f);
        let mut frame = BytesMut::with_capacity(h + self.buf.len());
        frame.put_slice(&header[..h]);
        frame.put_slice(&self.buf);
        if self.buf.capacity() > 256 << 10 {
            // A rare huge publication: do not keep its buffer.
            self.buf = Vec::new();
        }
        frame.split().freeze()
    }

    /// Deflates `payload` into `self.buf` as one message; false if the
    /// compressor failed (then the plain frame is sent).
    fn deflate(&mut self, payload: &[u8]) -> bool {
        let compress = self
            .compress
            .get_or_insert_with(|| Compress::new(Compression::new(LEVEL), false));
        compress.reset();
        self.buf.clear();
        self.buf.reserve(payload.len() / 2 + 64);
        let mut input = payload;
        loop {
            if self.buf.len() == self.buf.capacity() {
                self.buf.reserve(self.buf.capacity().max(64));
            }
            let before = compress.total_in();
            let Ok(_) = compress.compress_vec(input, &mut self.buf, FlushCompress::Sync) else {
                return false;
            };
            let used = (compress.total_in() - before) as usize;
            input = &input[used..];
            // Done when all input is in and the flush fitted (output room
            // left over means zlib had nothing more to write).
            if input.is_empty() && self.buf.len() < self.buf.capacity() {
                break;
            }
        }
        match self.buf.strip_suffix(&SYNC_TAIL) {
            Some(body) => {
                let n = body.len();
                self.buf.truncate(n);
                true
            }
            None => false,
        }
    }
}

/// A shard's inflater for clients' compressed messages: one per shard,
/// reset per message (clients are told `client_no_context_takeover`), so
/// no connection holds inflate state.
#[derive(Default)]
pub struct Inflater {
    decompress: Option<Decompress>,
    out: Vec<u8>,
}

impl Inflater {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inflates one complete compressed message (its frames' payloads
    /// joined), at most `max` bytes of output: more is
    /// [`ProtocolError::MessageTooBig`] (close 1009, however small the
    /// input: a zip bomb stops at `max`), a corrupt stream is
    /// [`ProtocolError::InvalidCompressedData`] (1007).
    pub fn inflate(&mut self, data: &[u8], max: usize) -> Result<&[u8], ProtocolError> {
        let d = self
            .decompress
            .get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        if self.out.capacity() > 1 << 20 {
            // Do not keep the buffer of an unusually large message.
            self.out = Vec::new();
        }
        self.out.clear();
        let too_big = |size: usize| ProtocolError::MessageTooBig {
            size: size as u64,
            max,
        };
        'parts: for (i, part) in [data, &SYNC_TAIL[..]].into_iter().enumerate() {
            let mut input = part;
            loop {
                if self.out.len() == self.out.capacity() {
                    // Room for one byte past `max`, to see that it is exceeded.
                    let room = (max + 1 - self.out.len().min(max)).min(self.out.len().max(4096));
                    self.out.reserve_exact(room);
                }
                let (in_before, out_before) = (d.total_in(), self.out.len());
                let status = d
                    .decompress_vec(input, &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| ProtocolError::InvalidCompressedData)?;
                if self.out.len() > max {
                    return Err(too_big(self.out.len()));
                }
                let used = (d.total_in() - in_before) as usize;
                input = &input[used..];
                if status == Status::StreamEnd {
                    // A final block ends the message; nothing may follow but
                    // the tail we added.
                    if i == 0 && !input.is_empty() {
                        return Err(ProtocolError::InvalidCompressedData);
                    }
                    break 'parts;
                }
                let room_left = self.out.len() < self.out.capacity();
                if input.is_empty() && room_left {
                    break;
                }
                if used == 0 && self.out.len() == out_before && room_left {
                    // No progress with input and room: a stream that never ends.
                    return Err(ProtocolError::InvalidCompressedData);
                }
            }
        }
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::publication::text_frame;

    fn agreed(offer: &str) -> Option<Agreement> {
        negotiate(offer.as_bytes())
    }

    fn response(offer: &str) -> Option<String> {
        agreed(offer).map(|a| {
            let mut out = Vec::new();
            a.write_response_header(&mut out);
            String::from_utf8(out).unwrap()
        })
    }

    const BASE: &str = "Sec-WebSocket-Extensions: permessage-deflate; \
                        server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn negotiation_matrix() {
        let plain = Some(format!("{BASE}\r\n"));
        let cases: &[(&str, Option<String>)] = &[
            // What browsers and common clients send.
            ("permessage-deflate", plain.clone()),
            ("permessage-deflate; client_max_window_bits", plain.clone()),
            ("permessage-deflate; client_max_window_bits=10", plain.clone()),
            ("permessage-deflate; client_max_window_bits=\"12\"", plain.clone()),
            ("permessage-deflate; server_no_context_takeover", plain.clone()),
            ("permessage-deflate; client_no_context_takeover", plain.clone()),
            (
                "permessage-deflate;server_no_context_takeover;client_no_context_takeover;client_max_window_bits",
                plain.clone(),
            ),
            ("PerMessage-Deflate ;  client_max_window_bits", plain.clone()),
            (
                "permessage-deflate; server_max_window_bits=10",
                Some(format!("{BASE}; server_max_window_bits=10\r\n")),
            ),
            (
                "permessage-deflate; server_max_window_bits=8; client_max_window_bits=15",
                Some(format!("{BASE}; server_max_window_bits=8\r\n")),
            ),
            (
                "permessage-deflate; server_max_window_bits=15",
                Some(format!("{BASE}; server_max_window_bits=15\r\n")),
            ),
            // Other extensions only.
            ("x-webkit-deflate-frame", None),
            ("", None),
            // Malformed offers are declined.
            ("permessage-deflate; foo", None),
            ("permessage-deflate; foo=1", None),
            ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
            ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
            ("permessage-deflate; client_max_window_bits; client_max_window_bits=9", None),
            ("permessage-deflate; server_max_window_bits=10; server_max_window_bits=10", None),
            ("permessage-deflate; server_no_context_takeover=1", None),
            ("permessage-deflate; server_max_window_bits", None),
            ("permessage-deflate; server_max_window_bits=7", None),
            ("permessage-deflate; server_max_window_bits=16", None),
            ("permessage-deflate; server_max_window_bits=010", None),
            ("permessage-deflate; client_max_window_bits=0", None),
            ("permessage-deflate; client_max_window_bits=abc", None),
            ("permessage-deflate; client_max_window_bits=\"1\"2\"", None),
            ("permessage-deflate; client_max_window_bits=", None),
        ];
        for (offer, expected) in cases {
            assert_eq!(&response(offer), expected, "offer {offer:?}");
        }
    }

    #[test]
    fn first_acceptable_offer_wins() {
        // A malformed first offer falls back to the next one.
        let a = agreed("permessage-deflate; bogus, permessage-deflate; server_max_window_bits=12")
            .unwrap();
        assert_eq!(a.server_window_bits, 12);
        let a = agreed(
            "x-foo; q=\"a, permessage-deflate\", permessage-deflate; client_max_window_bits",
        )
        .unwrap();
        assert_eq!(a.server_window_bits, 15);
        let a = agreed("permessage-deflate; server_max_window_bits=9, permessage-deflate").unwrap();
        assert_eq!(a.server_window_bits, 9);
    }

    #[test]
    fn window_limits_what_goes_out_compressed() {
        let a = agreed("permessage-deflate").unwrap();
        assert!(a.may_send_compressed(1 << 20));
        let a = agreed("permessage-deflate; server_max_window_bits=9").unwrap();
        assert!(a.may_send_compressed(512));
        assert!(!a.may_send_compressed(513));
        assert_eq!(Agreement::from_byte(Agreement::to_byte(Some(a))), Some(a));
        assert_eq!(Agreement::to_byte(None), 0);
        assert_eq!(Agreement::from_byte(0), None);
    }

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("[");
        for i in 0..n {
            s.push_str(&format!(
                "{{\"id\":{i},\"name\":\"item {i}\",\"price\":{}.5,\"tags\":[\"a\",\"b\"]}},",
                i * 3
            ));
        }
        s.push_str("null]");
        s.into_bytes()
    }

    /// Inflates a twin's payload the way a client does, with flate2 alone.
    fn client_inflate(frame: &[u8]) -> Vec<u8> {
        let len = frame_payload_len(frame).unwrap();
        let mut data = frame[frame.len() - len..].to_vec();
        data.extend_from_slice(&SYNC_TAIL);
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&data, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    #[test]
    fn compressed_twin_is_one_rsv1_frame_that_inflates_to_the_payload() {
        let payload = json(40);
        let plain = text_frame(&payload);
        let mut deflater = Deflater::new();
        let twin = deflater.compress_frame(&plain);
        assert_eq!(twin[0], 0x80 | RSV1 | 0x1, "FIN, RSV1, text");
        assert!(
            twin.len() * 3 < plain.len(),
            "{} vs {}",
            twin.len(),
            plain.len()
        );
        assert_eq!(client_inflate(&twin), payload);
        assert!(!twin.ends_with(&SYNC_TAIL));
        // The compressor is reused: a second message from an empty window
        // gives the same bytes as the first (no context takeover).
        assert_eq!(deflater.compress_frame(&plain), twin);
        // And the shard inflater reads it back too.
        let mut inflater = Inflater::new();
        let len = frame_payload_len(&twin).unwrap();
        assert_eq!(
            inflater
                .inflate(&twin[twin.len() - len..], 1 << 20)
                .unwrap(),
            &payload[..]
        );
    }

    #[test]
    fn incompressible_or_odd_frames_stay_plain() {
        let mut deflater = Deflater::new();
        let tiny = text_frame(b"{}");
        assert_eq!(deflater.compress_frame(&tiny).as_ptr(), tiny.as_ptr());
        // Two frames in one buffer are not one message.
        let mut two = text_frame(&json(5)).to_vec();
        two.extend_from_slice(&text_frame(b"x"));
        let two = Bytes::from(two);
        assert_eq!(deflater.compress_frame(&two).as_ptr(), two.as_ptr());
        // Random bytes do not shrink.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let plain = text_frame(&noise);
        assert_eq!(deflater.compress_frame(&plain).as_ptr(), plain.as_ptr());
    }

    fn compress_raw(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(9), false);
        let mut out = Vec::with_capacity(data.len() + 1024);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&SYNC_TAIL));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn inflate_is_bounded() {
        let mut inflater = Inflater::new();
        let bomb = compress_raw(&vec![b'a'; 10 << 20]);
        assert!(bomb.len() < 20 << 10, "{}", bomb.len());
        let err = inflater.inflate(&bomb, 64 << 10).unwrap_err();
        assert_eq!(err.close_code(), 1009);
        assert!(inflater.out.capacity() <= 2 * (64 << 10) + 4096);
        // Exactly at the limit is fine; one past is not.
        let exact = compress_raw(&[b'b'; 1000]);
        assert_eq!(inflater.inflate(&exact, 1000).unwrap(), &[b'b'; 1000][..]);
        assert_eq!(
            inflater.inflate(&exact, 999).unwrap_err().close_code(),
            1009
        );
        // The inflater is reset per message.
        let msg = compress_raw(b"hello");
        assert_eq!(inflater.inflate(&msg, 100).unwrap(), b"hello");
        assert_eq!(inflater.inflate(&msg, 100).unwrap(), b"hello");
    }

    #[test]
    fn corrupt_streams_are_1007() {
        let mut inflater = Inflater::new();
        for bad in [&[0xffu8, 0xff, 0xff][..], &[0x07]] {
            let err = inflater.inflate(bad, 1000).unwrap_err();
            assert_eq!(err.close_code(), 1007, "{bad:?}");
        }
        // A final block followed by more bytes.
        let mut c = Compress::new(Compression::new(6), false);
        let mut fin = Vec::with_capacity(100);
        c.compress_vec(b"x", &mut fin, FlushCompress::Finish)
            .unwrap();
        assert_eq!(inflater.inflate(&fin, 100).unwrap(), b"x");
        fin.extend_from_slice(b"junk");
        assert_eq!(inflater.inflate(&fin, 100).unwrap_err().close_code(), 1007);
        // Still usable after an error.
        assert_eq!(inflater.inflate(&compress_raw(b"ok"), 100).unwrap(), b"ok");
    }
}
