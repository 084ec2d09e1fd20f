//! The per-connection WebSocket protocol state machine (server side).
//!
//! [`WsProtocol`] turns the client's bytes into messages and control
//! replies without doing any I/O: the connection task hands it what it has
//! read, gets complete messages through a callback, and writes whatever
//! was appended to its outbound buffer (pongs, close frames). It enforces
//! RFC 6455's server duties: client frames masked, no RSV bits (but RSV1
//! on the first frame of a compressed message when permessage-deflate was
//! agreed, see [`crate::protocol::deflate`]), no reserved opcodes, control frame rules, fragmentation order, UTF-8 in text (also
//! across fragments), the message size limit and the close handshake.
//!
//! It is kept small because tens of thousands of idle connections each hold
//! one: 16 bytes, and no buffer unless a fragmented message is in progress.
//! A compressed message is inflated once complete by the caller's
//! [`Inflater`] (one per shard), so no inflate state lives here either.
//!
//! # Buffering contract
//!
//! A frame is processed only once it is entirely in `input`; frames are
//! never consumed partially. A data frame's declared length is checked
//! against `max_message_size` as soon as its header is in, so the caller's
//! read buffer never needs to hold more than
//! `max_message_size + `[`MAX_HEADER_LEN`] (14) bytes to make progress.
#![forbid(unsafe_code)]

use crate::protocol::codec::{
    apply_mask, close_code, decode_header, write_close, write_frame, FrameHeader, OpCode,
    MAX_CONTROL_PAYLOAD,
};
use crate::protocol::deflate::Inflater;

/// RSV1 as [`FrameHeader::rsv`] holds it: the message is compressed.
const RSV1: u8 = 0b100;

pub use crate::protocol::codec::{ProtocolError, MAX_HEADER_LEN};

/// The type of a complete data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// UTF-8 text (already validated).
    Text,
    /// Binary data.
    Binary,
}

/// What [`WsProtocol::handle_input`] did with its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes at the front of `input` that were processed; keep the rest.
    pub consumed: usize,
    /// The client's close frame was received (the reply, if any, is in
    /// `out`). Later frames are ignored; close the connection once `out`
    /// is flushed.
    pub closed: bool,
}

/// A fragmented message being reassembled. Boxed so an idle connection
/// pays one pointer for it.
#[derive(Debug)]
struct Fragmented {
    kind: MessageKind,
    /// The message is compressed (RSV1 on its first frame): `data` is
    /// deflate data, inflated and validated once complete.
    compressed: bool,
    /// The payload so far.
    data: Vec<u8>,
    /// For text: `data[..validated]` is valid UTF-8; what follows (at most
    /// 3 bytes) is the start of a character cut by a fragment boundary.
    validated: usize,
}

/// Per-connection WebSocket protocol state, server side.
#[derive(Debug, Default)]
pub struct WsProtocol {
    fragmented: Option<Box<Fragmented>>,
    /// A close frame was received, or a protocol error ended the connection.
    closed: bool,
    /// A close frame was sent (echoed, or by [`WsProtocol::send_close`]).
    close_sent: bool,
    /// permessage-deflate was agreed: RSV1 marks a compressed message.
    deflate: bool,
}

impl WsProtocol {
    /// A connection right after the handshake.
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection that agreed permessage-deflate in its handshake: a
    /// data message whose first frame has RSV1 is compressed (inflated by
    /// [`WsProtocol::handle_input_inflating`]); RSV1 anywhere else is
    /// still 1002.
    pub fn with_deflate(deflate: bool) -> Self {
        WsProtocol {
            deflate,
            ..Self::default()
        }
    }

    /// Whether the client's close frame was received or the connection
    /// failed with a protocol error.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether the connection is between messages: no fragmented message
    /// under way and not closed. Such a reader holds nothing but its
    /// `deflate` flag, so it can be dropped while the connection idles and
    /// rebuilt with [`WsProtocol::with_deflate`].
    pub fn between_messages(&self) -> bool {
        self.fragmented.is_none() && !self.closed && !self.close_sent
    }

    /// Whether a close frame has been appended to an output buffer.
    pub fn is_close_sent(&self) -> bool {
        self.close_sent
    }

    /// Starts a server-initiated close (1001 on shutdown, 1008 for a slow
    /// consumer, …): appends the close frame to `out` unless one was sent
    /// already. The client's close reply is then not echoed again.
    pub fn send_close(&mut self, code: u16, reason: &str, out: &mut Vec<u8>) {
        if !self.close_sent {
            self.close_sent = true;
            write_close(out, code, reason);
        }
    }

    /// Parses every complete frame at the front of `input` (client frames;
    /// unmasks in place, so `input` is `&mut`).
    ///
    /// Complete data messages go to `on_message` (text already validated as
    /// UTF-8; an unfragmented frame is passed as a slice of `input`, no
    /// copy). A ping appends a pong with the same payload to `out`; a pong
    /// goes to `on_pong`. A close frame appends the echoed close to `out`
    /// and sets `closed`. Stops at the first incomplete frame; the caller
    /// keeps `input[consumed..]` for next time (see the module's buffering
    /// contract).
    ///
    /// On a protocol violation the close frame with the right code is
    /// appended to `out`, the state becomes closed, and the error is
    /// returned; drop the connection once `out` is flushed.
    pub fn handle_input(
        &mut self,
        input: &mut [u8],
        max_message_size: usize,
        out: &mut Vec<u8>,
        on_message: impl FnMut(MessageKind, &[u8]),
        on_pong: impl FnMut(&[u8]),
    ) -> Result<Progress, ProtocolError> {
        self.handle(input, max_message_size, None, out, on_message, on_pong)
    }

    /// [`WsProtocol::handle_input`] for a connection that agreed
    /// permessage-deflate: a compressed message is inflated by `inflater`
    /// once complete, its inflated size bounded by `max_message_size`
    /// (past it: 1009), and then validated and passed on like any other.
    pub fn handle_input_inflating(
        &mut self,
        input: &mut [u8],
        max_message_size: usize,
        inflater: &mut Inflater,
        out: &mut Vec<u8>,
        on_message: impl FnMut(MessageKind, &[u8]),
        on_pong: impl FnMut(&[u8]),
    ) -> Result<Progress, ProtocolError> {
        let inflater = Some(inflater);
        self.handle(input, max_message_size, inflater, out, on_message, on_pong)
    }

    fn handle(
        &mut self,
        input: &mut [u8],
        max_message_size: usize,
        mut inflater: Option<&mut Inflater>,
        out: &mut Vec<u8>,
        mut on_message: impl FnMut(MessageKind, &[u8]),
        mut on_pong: impl FnMut(&[u8]),
    ) -> Result<Progress, ProtocolError> {
        let mut pos = 0;
        while !self.closed {
            let rest = &input[pos..];
            let (header, header_len) = match decode_header(rest) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(err) => return Err(self.fail(err, out)),
            };
            let payload_len = match self.check_header(&header, max_message_size) {
                Ok(len) => len,
                Err(err) => return Err(self.fail(err, out)),
            };
            if rest.len() - header_len < payload_len {
                break;
            }
            let start = pos + header_len;
            let end = start + payload_len;
            pos = end;
            let payload = &mut input[start..end];
            if let Some(mask) = header.mask {
                apply_mask(payload, mask, 0);
            }
            let inflater = inflater.as_deref_mut();
            let max = max_message_size;
            let on_message = &mut on_message;
            if let Err(err) = self.handle_frame(
                &header,
                payload,
                max,
                inflater,
                out,
                on_message,
                &mut on_pong,
            ) {
                return Err(self.fail(err, out));
            }
        }
        if self.closed {
            // Frames after the close frame are ignored.
            pos = input.len();
        }
        Ok(Progress {
            consumed: pos,
            closed: self.closed,
        })
    }

    /// Checks everything that can be decided from the header alone, and
    /// returns the payload length.
    fn check_header(
        &self,
        header: &FrameHeader,
        max_message_size: usize,
    ) -> Result<usize, ProtocolError> {
        let compressed_start = header.rsv == RSV1
            && self.deflate
            && matches!(header.opcode, OpCode::Text | OpCode::Binary);
        if header.rsv != 0 && !compressed_start {
            return Err(ProtocolError::ReservedBits(header.rsv));
        }
        if header.mask.is_none() {
            return Err(ProtocolError::UnmaskedFrame);
        }
        let too_big = |size: u64| ProtocolError::MessageTooBig {
            size,
            max: max_message_size,
        };
        match header.opcode {
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                if !header.fin {
                    return Err(ProtocolError::FragmentedControl);
                }
                if header.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(ProtocolError::ControlTooLong(header.payload_len));
                }
            }
            OpCode::Text | OpCode::Binary => {
                if self.fragmented.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                if header.payload_len > max_message_size as u64 {
                    return Err(too_big(header.payload_len));
                }
            }
            OpCode::Continuation => {
                let Some(frag) = &self.fragmented else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                let size = (frag.data.len() as u64).saturating_add(header.payload_len);
                if size > max_message_size as u64 {
                    return Err(too_big(size));
                }
            }
        }
        // Bounded by max_message_size or 125 above.
        usize::try_from(header.payload_len).map_err(|_| too_big(header.payload_len))
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_frame(
        &mut self,
        header: &FrameHeader,
        payload: &[u8],
        max_message_size: usize,
        inflater: Option<&mut Inflater>,
        out: &mut Vec<u8>,
        on_message: &mut impl FnMut(MessageKind, &[u8]),
        on_pong: &mut impl FnMut(&[u8]),
    ) -> Result<(), ProtocolError> {
        match header.opcode {
            OpCode::Ping => {
                if !self.close_sent {
                    write_frame(out, OpCode::Pong, payload);
                }
            }
            OpCode::Pong => on_pong(payload),
            OpCode::Close => self.handle_close(payload, out)?,
            OpCode::Text | OpCode::Binary => {
                let kind = if header.opcode == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                let compressed = header.rsv == RSV1;
                if header.fin {
                    let message = if compressed {
                        let inflater = inflater.ok_or(ProtocolError::ReservedBits(header.rsv))?;
                        inflater.inflate(payload, max_message_size)?
                    } else {
                        payload
                    };
                    if kind == MessageKind::Text && std::str::from_utf8(message).is_err() {
                        return Err(ProtocolError::InvalidUtf8);
                    }
                    on_message(kind, message);
                } else {
                    let mut frag = Box::new(Fragmented {
                        kind,
                        compressed,
                        data: payload.to_vec(),
                        validated: 0,
                    });
                    frag.validate()?;
                    self.fragmented = Some(frag);
                }
            }
            OpCode::Continuation => {
                let Some(frag) = self.fragmented.as_mut() else {
                    // check_header rejected this already.
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                frag.data.extend_from_slice(payload);
                frag.validate()?;
                if header.fin {
                    if frag.compressed {
                        let inflater = inflater.ok_or(ProtocolError::ReservedBits(RSV1))?;
                        let message = inflater.inflate(&frag.data, max_message_size)?;
                        if frag.kind == MessageKind::Text && std::str::from_utf8(message).is_err() {
                            return Err(ProtocolError::InvalidUtf8);
                        }
                        on_message(frag.kind, message);
                    } else {
                        if frag.kind == MessageKind::Text && frag.validated != frag.data.len() {
                            // Ends inside a character.
                            return Err(ProtocolError::InvalidUtf8);
                        }
                        on_message(frag.kind, &frag.data);
                    }
                    // Frees the reassembly buffer.
                    self.fragmented = None;
                }
            }
        }
        Ok(())
    }

    fn handle_close(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let code = match payload {
            [] => None,
            [_] => return Err(ProtocolError::InvalidClosePayload),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !close_code::is_valid_on_wire(code) {
                    return Err(ProtocolError::InvalidCloseCode(code));
                }
                if std::str::from_utf8(reason).is_err() {
                    return Err(ProtocolError::InvalidUtf8);
                }
                Some(code)
            }
        };
        self.closed = true;
        self.fragmented = None;
        if !self.close_sent {
            self.close_sent = true;
            match code {
                Some(code) => write_close(out, code, ""),
                None => write_frame(out, OpCode::Close, &[]),
            }
        }
        Ok(())
    }

    /// Ends the connection for `err`: appends the close frame for it (unless
    /// a close was sent already) and drops any partial message.
    fn fail(&mut self, err: ProtocolError, out: &mut Vec<u8>) -> ProtocolError {
        self.send_close(err.close_code(), "", out);
        self.closed = true;
        self.fragmented = None;
        err
    }
}

impl Fragmented {
    /// Validates the text received since the last call, leaving an
    /// incomplete trailing character (at most 3 bytes) for the next
    /// fragment. Fails as soon as a sequence is known to be invalid.
    fn validate(&mut self) -> Result<(), ProtocolError> {
        if self.kind != MessageKind::Text || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.validated..]) {
            Ok(_) => self.validated = self.data.len(),
            Err(e) if e.error_len().is_none() => self.validated += e.valid_up_to(),
            Err(_) => return Err(ProtocolError::InvalidUtf8),
        }
        Ok(())
    }
}

/// A close frame (server to client) with `code` and `reason` (cut to fit
/// 123 bytes at a character boundary).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + reason.len().min(MAX_CONTROL_PAYLOAD));
    write_close(&mut out, code, reason);
    out
}

/// A ping frame (server to client). `payload` must be at most 125 bytes;
/// longer payloads are cut.
pub fn ping_frame(payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let mut out = Vec::with_capacity(2 + payload.len());
    write_frame(&mut out, OpCode::Ping, payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];
    const MAX: usize = 1024;

    /// A masked client frame with an arbitrary first byte.
    fn raw_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut header = [0u8; 10];
        let n =
            crate::protocol::codec::encode_header(true, OpCode::Text, payload.len(), &mut header);
        header[0] = b0;
        header[1] |= 0x80;
        out.extend_from_slice(&header[..n]);
        out.extend_from_slice(&MASK);
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[start..], MASK, 0);
        out
    }

    fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        raw_frame((if fin { 0x80 } else { 0 }) | op.as_u8(), payload)
    }

    #[derive(Debug, Default)]
    struct Run {
        messages: Vec<(MessageKind, Vec<u8>)>,
        pongs: Vec<Vec<u8>>,
        out: Vec<u8>,
        result: Option<Result<Progress, ProtocolError>>,
    }

    fn run(ws: &mut WsProtocol, input: &[u8]) -> Run {
        let mut r = Run::default();
        let mut buf = input.to_vec();
        let mut messages = Vec::new();
        let mut pongs = Vec::new();
        let res = ws.handle_input(
            &mut buf,
            MAX,
            &mut r.out,
            |k, p| messages.push((k, p.to_vec())),
            |p| pongs.push(p.to_vec()),
        );
        r.messages = messages;
        r.pongs = pongs;
        r.result = Some(res);
        r
    }

    fn run_all(input: &[u8]) -> Run {
        run(&mut WsProtocol::new(), input)
    }

    fn close_payload(out: &[u8]) -> Vec<u8> {
        let (h, n) = decode_header(out).unwrap().unwrap();
        assert_eq!(h.opcode, OpCode::Close);
        assert_eq!(h.mask, None);
        out[n..n + h.payload_len as usize].to_vec()
    }

    fn assert_fails(input: &[u8], code: u16) {
        let mut ws = WsProtocol::new();
        let r = run(&mut ws, input);
        let err = r.result.unwrap().unwrap_err();
        assert_eq!(err.close_code(), code, "{err}");
        assert_eq!(close_payload(&r.out), code.to_be_bytes());
        assert!(ws.is_closed());
    }

    fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    #[test]
    fn is_small() {
        assert!(std::mem::size_of::<WsProtocol>() <= 16);
    }

    #[test]
    fn single_text_message() {
        let input = frame(true, OpCode::Text, b"hello");
        let r = run_all(&input);
        assert_eq!(
            r.result.unwrap().unwrap(),
            Progress {
                consumed: input.len(),
                closed: false
            }
        );
        assert_eq!(r.messages, [(MessageKind::Text, b"hello".to_vec())]);
        assert!(r.out.is_empty());
    }

    #[test]
    fn several_frames_and_a_partial_one() {
        let mut input = cat(&[
            frame(true, OpCode::Binary, &[0, 1, 2]),
            frame(true, OpCode::Text, b"x"),
        ]);
        let full = input.len();
        let next = frame(true, OpCode::Text, &[b'a'; 300]);
        input.extend_from_slice(&next[..next.len() - 1]);
        let mut ws = WsProtocol::new();
        let r = run(&mut ws, &input);
        assert_eq!(r.result.unwrap().unwrap().consumed, full);
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[0], (MessageKind::Binary, vec![0, 1, 2]));

        // Feeding the frame byte by byte never consumes it early.
        for len in 0..next.len() {
            let r = run(&mut ws, &next[..len]);
            assert_eq!(r.result.unwrap().unwrap().consumed, 0);
            assert!(r.messages.is_empty());
        }
        let r = run(&mut ws, &next);
        assert_eq!(r.result.unwrap().unwrap().consumed, next.len());
        assert_eq!(r.messages, [(MessageKind::Text, vec![b'a'; 300])]);
    }

    #[test]
    fn unfragmented_message_is_a_slice_of_input() {
        let mut input = frame(true, OpCode::Binary, b"abc");
        let range = input.as_ptr_range();
        let mut ws = WsProtocol::new();
        let mut out = Vec::new();
        let mut seen = false;
        ws.handle_input(
            &mut input,
            MAX,
            &mut out,
            |_, p| {
                seen = true;
                assert!(range.contains(&p.as_ptr()));
            },
            |_| {},
        )
        .unwrap();
        assert!(seen);
    }

    #[test]
    fn ping_gets_pong_with_same_payload() {
        let r = run_all(&frame(true, OpCode::Ping, b"are you there"));
        let mut expected = Vec::new();
        write_frame(&mut expected, OpCode::Pong, b"are you there");
        assert_eq!(r.out, expected);
    }

    #[test]
    fn pong_goes_to_callback() {
        let r = run_all(&frame(true, OpCode::Pong, b"123"));
        assert_eq!(r.pongs, [b"123".to_vec()]);
        assert!(r.out.is_empty());
    }

    #[test]
    fn unmasked_frame_is_1002() {
        let mut input = Vec::new();
        write_frame(&mut input, OpCode::Text, b"hi");
        assert_fails(&input, 1002);
    }

    #[test]
    fn rsv_bits_are_1002() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            assert_fails(&raw_frame(0x80 | rsv | 0x1, b"hi"), 1002);
        }
    }

    #[test]
    fn reserved_opcodes_are_1002() {
        for op in (3..=7).chain(11..=15) {
            assert_fails(&raw_frame(0x80 | op, b""), 1002);
        }
    }

    #[test]
    fn fragmented_control_is_1002() {
        for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
            assert_fails(&frame(false, op, b""), 1002);
        }
    }

    #[test]
    fn long_control_is_1002() {
        for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
            assert_fails(&frame(true, op, &[b'a'; 126]), 1002);
        }
        // 125 is fine.
        let r = run_all(&frame(true, OpCode::Ping, &[b'a'; 125]));
        assert!(r.result.unwrap().is_ok());
    }

    #[test]
    fn lone_continuation_is_1002() {
        assert_fails(&frame(true, OpCode::Continuation, b"x"), 1002);
        assert_fails(&frame(false, OpCode::Continuation, b"x"), 1002);
    }

    #[test]
    fn new_message_inside_fragmented_is_1002() {
        for op in [OpCode::Text, OpCode::Binary] {
            let input = cat(&[frame(false, OpCode::Text, b"a"), frame(true, op, b"b")]);
            assert_fails(&input, 1002);
        }
    }

    #[test]
    fn fragmented_message_with_interleaved_control_frames() {
        let input = cat(&[
            frame(false, OpCode::Text, b"Hel"),
            frame(true, OpCode::Ping, b"p"),
            frame(false, OpCode::Continuation, b"lo, "),
            frame(true, OpCode::Pong, b"q"),
            frame(true, OpCode::Continuation, b"world"),
        ]);
        let mut ws = WsProtocol::new();
        let r = run(&mut ws, &input);
        assert_eq!(r.result.unwrap().unwrap().consumed, input.len());
        assert_eq!(r.messages, [(MessageKind::Text, b"Hello, world".to_vec())]);
        assert_eq!(r.pongs, [b"q".to_vec()]);
        let mut pong = Vec::new();
        write_frame(&mut pong, OpCode::Pong, b"p");
        assert_eq!(r.out, pong);
        assert!(ws.fragmented.is_none(), "buffer freed after the message");
    }

    #[test]
    fn fragmented_message_across_calls() {
        let mut ws = WsProtocol::new();
        let r = run(&mut ws, &frame(false, OpCode::Binary, &[1, 2]));
        assert!(r.messages.is_empty());
        assert!(ws.fragmented.is_some());
        let r = run(&mut ws, &frame(false, OpCode::Continuation, &[]));
        assert!(r.messages.is_empty());
        let r = run(&mut ws, &frame(true, OpCode::Continuation, &[3]));
        assert_eq!(r.messages, [(MessageKind::Binary, vec![1, 2, 3])]);
        assert!(ws.fragmented.is_none());
    }

    #[test]
    fn between_messages_only_outside_a_fragmented_message_and_before_close() {
        let mut ws = WsProtocol::with_deflate(true);
        assert!(ws.between_messages());
        run(&mut ws, &frame(false, OpCode::Text, b"a"));
        assert!(!ws.between_messages(), "a fragmented message is under way");
        run(&mut ws, &frame(true, OpCode::Continuation, b"b"));
        assert!(ws.between_messages());
        run(&mut ws, &frame(true, OpCode::Close, &[0x03, 0xe8]));
        assert!(!ws.between_messages(), "closed");
        let mut ws = WsProtocol::new();
        ws.send_close(1001, "", &mut Vec::new());
        assert!(!ws.between_messages(), "a close was sent");
    }

    #[test]
    fn invalid_utf8_is_1007() {
        assert_fails(&frame(true, OpCode::Text, b"\xff"), 1007);
        assert_fails(&frame(true, OpCode::Text, b"a\xed\xa0\x80b"), 1007);
        // Truncated at the end of an unfragmented message.
        assert_fails(&frame(true, OpCode::Text, b"\xe2\x82"), 1007);
        // Binary is not checked.
        let r = run_all(&frame(true, OpCode::Binary, b"\xff"));
        assert!(r.result.unwrap().is_ok());
    }

    #[test]
    fn valid_utf8_split_mid_character_across_fragments() {
        let text = "κόσμε €𝄞".as_bytes();
        for split1 in 0..=text.len() {
            for split2 in split1..=text.len() {
                let input = cat(&[
                    frame(false, OpCode::Text, &text[..split1]),
                    frame(false, OpCode::Continuation, &text[split1..split2]),
                    frame(true, OpCode::Continuation, &text[split2..]),
                ]);
                let r = run_all(&input);
                assert!(r.result.unwrap().is_ok(), "{split1} {split2}");
                assert_eq!(r.messages, [(MessageKind::Text, text.to_vec())]);
            }
        }
    }

    #[test]
    fn invalid_utf8_split_across_fragments_is_1007() {
        // A 4-byte lead followed by an invalid continuation in the next fragment.
        let input = cat(&[
            frame(false, OpCode::Text, b"ok\xf0\x90"),
            frame(true, OpCode::Continuation, b"\x28ok"),
        ]);
        assert_fails(&input, 1007);
        // Message ends inside a character.
        let input = cat(&[
            frame(false, OpCode::Text, b"ok"),
            frame(true, OpCode::Continuation, b"\xe2\x82"),
        ]);
        assert_fails(&input, 1007);
    }

    #[test]
    fn invalid_utf8_fails_fast_before_fin() {
        let mut ws = WsProtocol::new();
        let r = run(&mut ws, &frame(false, OpCode::Text, b"ok\xed\xa0"));
        assert_eq!(r.result.unwrap().unwrap_err().close_code(), 1007);
        assert_eq!(close_payload(&r.out), 1007u16.to_be_bytes());
    }

    #[test]
    fn too_big_single_frame_is_1009_from_header_alone() {
        let input = frame(true, OpCode::Binary, &vec![0; MAX + 1]);
        // Only the header is available: decided before the payload arrives.
        assert_fails(&input[..8], 1009);
        assert_fails(&input, 1009);
        let r = run_all(&frame(true, OpCode::Binary, &vec![0; MAX]));
        assert_eq!(r.messages.len(), 1);
    }

    #[test]
    fn too_big_fragmented_is_1009() {
        let input = cat(&[
            frame(false, OpCode::Text, &vec![b'a'; MAX / 2]),
            frame(false, OpCode::Continuation, &vec![b'a'; MAX / 2]),
            frame(true, OpCode::Continuation, b"a"),
        ]);
        assert_fails(&input, 1009);
    }

    #[test]
    fn close_empty_is_echoed_empty() {
        let mut ws = WsProtocol::new();
        let r = run(&mut ws, &frame(true, OpCode::Close, b""));
        assert!(r.result.unwrap().unwrap().closed);
        assert_eq!(r.out, [0x88, 0x00]);
        assert!(ws.is_closed());
    }

    #[test]
    fn close_valid_code_is_echoed() {
        for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice("bye ✓".as_bytes());
            let r = run_all(&frame(true, OpCode::Close, &payload));
            assert!(r.result.unwrap().unwrap().closed);
            assert_eq!(close_payload(&r.out), code.to_be_bytes());
        }
    }

    #[test]
    fn close_one_byte_is_1002() {
        assert_fails(&frame(true, OpCode::Close, &[0x03]), 1002);
    }

    #[test]
    fn close_invalid_codes_are_1002() {
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert_fails(&frame(true, OpCode::Close, &code.to_be_bytes()), 1002);
        }
    }

    #[test]
    fn close_invalid_utf8_reason_is_1007() {
        assert_fails(&frame(true, OpCode::Close, b"\x03\xe8\xff"), 1007);
    }

    #[test]
    fn frames_after_close_are_ignored() {
        let input = cat(&[
            frame(true, OpCode::Close, &1000u16.to_be_bytes()),
            frame(true, OpCode::Text, b"late"),
            frame(true, OpCode::Ping, b"late"),
            vec![0x83, 0x00], // even garbage
        ]);
        let mut ws = WsProtocol::new();
        let r = run(&mut ws, &input);
        assert_eq!(
            r.result.unwrap().unwrap(),
            Progress {
                consumed: input.len(),
                closed: true
            }
        );
        assert!(r.messages.is_empty());
        assert_eq!(close_payload(&r.out), 1000u16.to_be_bytes());
        // And later calls too.
        let r = run(&mut ws, &frame(true, OpCode::Text, b"later"));
        assert!(r.messages.is_empty());
        assert!(r.out.is_empty());
    }

    #[test]
    fn server_initiated_close_is_not_echoed_twice() {
        let mut ws = WsProtocol::new();
        let mut out = Vec::new();
        ws.send_close(1001, "server shutdown", &mut out);
        ws.send_close(1001, "server shutdown", &mut out);
        assert_eq!(out, close_frame(close_code::GOING_AWAY, "server shutdown"));
        assert!(ws.is_close_sent());
        assert!(!ws.is_closed());
        // No pong after our close; the client's close completes the handshake.
        let input = cat(&[
            frame(true, OpCode::Ping, b"x"),
            frame(true, OpCode::Close, &1001u16.to_be_bytes()),
        ]);
        let r = run(&mut ws, &input);
        assert!(r.result.unwrap().unwrap().closed);
        assert!(r.out.is_empty());
    }

    #[test]
    fn helpers() {
        let slow = close_frame(close_code::POLICY_VIOLATION, "slow consumer");
        assert_eq!(close_payload(&slow)[..2], 1008u16.to_be_bytes());
        assert_eq!(&close_payload(&slow)[2..], b"slow consumer");
        assert_eq!(ping_frame(b"t"), [0x89, 0x01, b't']);
        assert_eq!(ping_frame(&[0; 200]).len(), 2 + 125);
    }

    #[test]
    fn large_frame_lengths() {
        // 16-bit and 64-bit lengths from a client.
        let big = MAX - 4;
        let r = run_all(&frame(true, OpCode::Binary, &vec![7; big]));
        assert_eq!(r.messages[0].1.len(), big);
        let mut input = raw_frame(0x82, &[]);
        input[1] = 0x80 | 127;
        input.splice(2..2, [0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_fails(&input, 1009);
        // Without a limit the frame just waits for its payload.
        let mut ws = WsProtocol::new();
        let mut out = Vec::new();
        let progress = ws
            .handle_input(&mut input, usize::MAX, &mut out, |_, _| {}, |_| {})
            .unwrap();
        assert_eq!(progress.consumed, 0);
        assert!(out.is_empty());
    }

    /// Raw deflate of `data`, sync-flushed, without the trailing 00 00 ff ff.
    fn deflated(data: &[u8]) -> Vec<u8> {
        use flate2::{Compress, Compression, FlushCompress};
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 1024);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        out.truncate(out.len() - 4);
        out
    }

    fn run_deflate(input: &[u8], inflater: &mut Inflater) -> Run {
        let mut ws = WsProtocol::with_deflate(true);
        let mut r = Run::default();
        let mut buf = input.to_vec();
        let mut messages = Vec::new();
        r.result = Some(ws.handle_input_inflating(
            &mut buf,
            MAX,
            inflater,
            &mut r.out,
            |k, p| messages.push((k, p.to_vec())),
            |_| {},
        ));
        r.messages = messages;
        r
    }

    fn assert_deflate_fails(input: &[u8], code: u16) {
        let r = run_deflate(input, &mut Inflater::new());
        let err = r.result.unwrap().unwrap_err();
        assert_eq!(err.close_code(), code, "{err}");
        assert_eq!(close_payload(&r.out), code.to_be_bytes());
    }

    #[test]
    fn compressed_messages_are_inflated_when_agreed() {
        let text = "compressed ✓ ".repeat(20);
        let z = deflated(text.as_bytes());
        let mut inflater = Inflater::new();
        let (a, b) = z.split_at(z.len() / 2);
        let input = cat(&[
            // RSV1 on the first frame only.
            raw_frame(0x80 | 0x40 | 0x1, &z),
            frame(true, OpCode::Text, b"plain"),
            raw_frame(0x40 | 0x2, a),
            frame(true, OpCode::Ping, b"p"),
            frame(true, OpCode::Continuation, b),
        ]);
        let r = run_deflate(&input, &mut inflater);
        assert_eq!(r.result.unwrap().unwrap().consumed, input.len());
        assert_eq!(
            r.messages,
            [
                (MessageKind::Text, text.clone().into_bytes()),
                (MessageKind::Text, b"plain".to_vec()),
                (MessageKind::Binary, text.into_bytes()),
            ]
        );
    }

    #[test]
    fn rsv1_misuse_is_1002() {
        let z = deflated(b"hello");
        // Not agreed: RSV1 is a reserved bit as before.
        assert_fails(&raw_frame(0x80 | 0x40 | 0x1, &z), 1002);
        // Agreed, but on a continuation, a control frame, or RSV2/RSV3.
        let input = cat(&[frame(false, OpCode::Text, b"a"), raw_frame(0x80 | 0x40, &z)]);
        assert_deflate_fails(&input, 1002);
        for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
            assert_deflate_fails(&raw_frame(0x80 | 0x40 | op.as_u8(), b""), 1002);
        }
        for rsv in [0x20, 0x10, 0x60] {
            assert_deflate_fails(&raw_frame(0x80 | rsv | 0x1, &z), 1002);
        }
        // Agreed but read without an inflater.
        let mut ws = WsProtocol::with_deflate(true);
        let mut buf = raw_frame(0x80 | 0x40 | 0x1, &z);
        let mut out = Vec::new();
        let err = ws
            .handle_input(&mut buf, MAX, &mut out, |_, _| {}, |_| {})
            .unwrap_err();
        assert_eq!(err.close_code(), 1002);
    }

    #[test]
    fn compressed_bomb_is_1009_and_bad_data_1007() {
        let bomb = deflated(&vec![b'a'; 256 << 10]);
        assert!(bomb.len() < MAX, "the bomb itself is small: {}", bomb.len());
        assert_deflate_fails(&raw_frame(0x80 | 0x40 | 0x2, &bomb), 1009);
        // Just under the limit inflates.
        let r = run_deflate(
            &raw_frame(0x80 | 0x40 | 0x2, &deflated(&[b'a'; MAX])),
            &mut Inflater::new(),
        );
        assert_eq!(r.messages[0].1.len(), MAX);
        // Corrupt deflate data, and invalid UTF-8 inside compressed text.
        assert_deflate_fails(&raw_frame(0x80 | 0x40 | 0x1, &[0xff, 0xff]), 1007);
        assert_deflate_fails(&raw_frame(0x80 | 0x40 | 0x1, &deflated(b"a\xffb")), 1007);
    }

    #[test]
    fn interop_with_tungstenite_frames() {
        use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode as TOp};
        use tungstenite::protocol::frame::{CloseFrame, Frame};

        fn client(frame: Frame) -> Vec<u8> {
            let mut header = frame.header().clone();
            header.mask = Some([9, 8, 7, 6]);
            let mut out = Vec::new();
            Frame::from_payload(header, frame.into_payload())
                .format(&mut out)
                .unwrap();
            out
        }
        let big = vec![b'z'; 70_000];
        let input = cat(&[
            client(Frame::message("fragmented ", TOp::Data(Data::Text), false)),
            client(Frame::ping(&b"p"[..])),
            client(Frame::message("text", TOp::Data(Data::Continue), true)),
            client(Frame::message(big.clone(), TOp::Data(Data::Binary), true)),
            client(Frame::close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "bye".into(),
            }))),
        ]);
        let mut buf = input.clone();
        let mut ws = WsProtocol::new();
        let mut out = Vec::new();
        let mut messages = Vec::new();
        let progress = ws
            .handle_input(
                &mut buf,
                100_000,
                &mut out,
                |k, p| messages.push((k, p.to_vec())),
                |_| {},
            )
            .unwrap();
        assert_eq!(progress.consumed, input.len());
        assert!(progress.closed);
        assert_eq!(
            messages[0],
            (MessageKind::Text, b"fragmented text".to_vec())
        );
        assert_eq!(messages[1], (MessageKind::Binary, big));

        // Our server frames parse as tungstenite frames: the pong, then the close.
        let mut cursor = std::io::Cursor::new(&out[..]);
        let (header, len) = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor)
            .unwrap()
            .unwrap();
        assert_eq!(
            header.opcode,
            TOp::Control(tungstenite::protocol::frame::coding::Control::Pong)
        );
        assert_eq!((header.mask, len), (None, 1));
        cursor.set_position(cursor.position() + len);
        let (header, len) = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor)
            .unwrap()
            .unwrap();
        assert_eq!(
            header.opcode,
            TOp::Control(tungstenite::protocol::frame::coding::Control::Close)
        );
        assert_eq!(len, 2);
        assert_eq!(&out[out.len() - 2..], 1001u16.to_be_bytes());
    }
}
