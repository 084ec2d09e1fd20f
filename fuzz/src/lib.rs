//! The bodies of ringcast's fuzz targets, one function per target, sans-IO:
//! each takes the fuzzer's bytes, drives a parser of `ringcast::protocol`
//! with them and asserts what must hold for any input. The binaries in
//! `fuzz_targets/` only hand AFL++'s input to these (see `fuzz/README.md`).
#![forbid(unsafe_code)]

use ringcast::protocol::codec::{apply_mask, decode_header, encode_header};
use ringcast::protocol::deflate::{self, Inflater};
use ringcast::protocol::dmoj::{self, Poll, Role};
use ringcast::protocol::handshake::{parse_upgrade, MAX_REQUEST_HEAD};
use ringcast::protocol::http::{
    max_request_len, parse_request, write_error, write_response, HttpError,
};
use ringcast::protocol::rpc::{self, BackendMethod, Incoming, RpcParser};
use ringcast::protocol::websocket::{MessageKind, WsProtocol};
use ringcast::pubsub::ops::Op;

const MAX_MESSAGE: usize = 64 * 1024;

/// The frame header decoder, masking and the per-connection WebSocket state
/// machine with arbitrary client bytes.
pub fn frame_decoder(data: &[u8]) {
    // The header decoder: a header never claims more bytes than it was given,
    // and a server header re-encodes to the same length and opcode.
    if let Ok(Some((header, len))) = decode_header(data) {
        assert!(len <= data.len() && (2..=14).contains(&len));
        if let Ok(payload_len) = usize::try_from(header.payload_len) {
            let mut out = [0u8; 10];
            let n = encode_header(header.fin, header.opcode, payload_len, &mut out);
            let (again, m) = decode_header(&out[..n])
                .ok()
                .flatten()
                .expect("re-decodes");
            assert_eq!(m, n);
            assert_eq!((again.fin, again.opcode), (header.fin, header.opcode));
            assert_eq!(again.payload_len, header.payload_len);
        }
    }

    // Masking in two pieces equals masking at once.
    if data.len() >= 5 {
        let mask = [data[0], data[1], data[2], data[3]];
        let split = usize::from(data[4]) % (data.len() - 4);
        let mut whole = data[5..].to_vec();
        apply_mask(&mut whole, mask, 1);
        let mut pieces = data[5..].to_vec();
        let (a, b) = pieces.split_at_mut(split.min(data.len() - 5));
        let a_len = a.len();
        apply_mask(a, mask, 1);
        apply_mask(b, mask, 1 + a_len);
        assert_eq!(whole, pieces);
    }

    // The state machine, fed in two reads as a connection would be.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(stream.len());
    let mut ws = WsProtocol::new();
    let mut out = Vec::new();
    let mut buf = stream[..cut].to_vec();
    for next in [&stream[cut..], &[][..]] {
        let result = ws.handle_input(
            &mut buf,
            MAX_MESSAGE,
            &mut out,
            |kind, payload| {
                if kind == MessageKind::Text {
                    assert!(std::str::from_utf8(payload).is_ok());
                }
                assert!(payload.len() <= MAX_MESSAGE);
            },
            |payload| assert!(payload.len() <= 125),
        );
        match result {
            Ok(progress) => {
                assert!(progress.consumed <= buf.len());
                buf.drain(..progress.consumed);
                buf.extend_from_slice(next);
            }
            Err(_) => {
                assert!(ws.is_closed());
                break;
            }
        }
    }
    // Everything the server wrote is a sequence of well-formed server frames.
    let mut rest = &out[..];
    while !rest.is_empty() {
        let (header, len) = decode_header(rest)
            .ok()
            .flatten()
            .expect("server frame");
        assert!(header.mask.is_none());
        rest = &rest[len + header.payload_len as usize..];
    }
}

/// The HTTP upgrade request parser and its responses.
pub fn handshake(data: &[u8]) {
    let allowed = ["https://app.example".to_owned()];
    for origins in [&allowed[..], &[]] {
        match parse_upgrade(data, origins) {
            Ok(None) => assert!(data.len() <= MAX_REQUEST_HEAD),
            Ok(Some(upgrade)) => {
                assert!(upgrade.consumed <= data.len());
                assert!(upgrade.path.starts_with(upgrade.path_without_query()));
                let _ = upgrade.query_param("dialect");
                let response = upgrade.response_101();
                assert!(response.starts_with(b"HTTP/1.1 101 "));
                assert!(response.ends_with(b"\r\n\r\n"));
            }
            Err(err) => {
                let response = err.response();
                assert!(response.starts_with(b"HTTP/1.1 "));
            }
        }
    }
}

/// The backend port's HTTP/1.1 parser: pipelined requests, chunked bodies,
/// limits.
///
/// Input: the first byte picks `max_body` (byte * 8, so the 413 paths are
/// reachable with small inputs); the rest is the byte stream. Checks that
/// the parser never panics, always makes progress, keeps bodies within
/// `max_body`, never asks for more than `max_request_len` bytes, gives the
/// same request when the stream is cut right after it, and calls every
/// strict prefix of a request incomplete.
pub fn backend_http(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let max_body = usize::from(selector) * 8;
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let buf = &stream[at..];
        match parse_request(buf, max_body) {
            Ok(Some((request, used))) => {
                assert!(used > 0 && used <= buf.len());
                assert!(request.body.len() <= max_body);
                let exact = parse_request(&buf[..used], max_body);
                assert_eq!(exact, Ok(Some((request.clone(), used))));
                for cut in [used - 1, used / 2] {
                    let prefix = parse_request(&buf[..cut], max_body);
                    assert_eq!(prefix, Ok(None), "prefix {cut} of {used}");
                }
                out.clear();
                write_response(&mut out, 200, &request.body, request.keep_alive);
                at += used;
            }
            Ok(None) => {
                assert!(buf.len() < max_request_len(max_body));
                break;
            }
            Err(e) => {
                assert!(matches!(e.status(), 400 | 401 | 413 | 431 | 501));
                if let HttpError::Malformed(m) = &e {
                    assert!(!m.is_empty());
                }
                out.clear();
                write_error(&mut out, &e);
                break;
            }
        }
    }
}

/// The JSON-RPC 2.0 parser with both method sets (client operations and
/// backend methods), and the replies written for what it returns: every
/// reply is valid JSON, ids are echoed as JSON values.
///
/// Input: the first byte picks the client batch limit (0..=255); the rest
/// is one frame or body.
pub fn rpc(data: &[u8]) {
    let Some((&max_batch, text)) = data.split_first() else {
        return;
    };
    let max_batch = usize::from(max_batch);
    let mut parser = RpcParser::new().with_client_batch(max_batch);
    let client = parser.parse_client::<Op>(text);
    if let Ok(Incoming::Batch(calls)) = &client {
        assert!(!calls.is_empty() && calls.len() <= max_batch);
    }
    check_rpc_replies(client);
    // The same parser again (its buffers are reused), backend methods.
    let backend = parser.parse::<BackendMethod>(text);
    if let Ok(Incoming::Single(call)) = &backend {
        if let Ok(BackendMethod::Emit { channel, .. }) = &call.method {
            assert!(rpc::valid_channel(channel));
        }
    }
    check_rpc_replies(backend);
}

fn check_rpc_replies<M>(parsed: Result<Incoming<M>, rpc::RpcError>) {
    let mut out = Vec::new();
    match parsed {
        Err(e) => rpc::write_error(&mut out, None, &e),
        Ok(Incoming::Single(call)) => write_call(&mut out, &call),
        Ok(Incoming::Batch(calls)) => {
            out.push(b'[');
            for (i, call) in calls.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_call(&mut out, call);
            }
            out.push(b']');
        }
    }
    let mut copy = out.clone();
    assert!(
        simd_json_valid(&mut copy),
        "reply is not JSON: {}",
        String::from_utf8_lossy(&out)
    );
}

fn write_call<M>(out: &mut Vec<u8>, call: &rpc::Call<M>) {
    let id = call.id.as_deref().unwrap_or(b"null");
    match &call.method {
        Ok(_) => rpc::write_result(out, id, b"true"),
        Err(e) => rpc::write_error(out, Some(id), e),
    }
}

fn simd_json_valid(json: &mut [u8]) -> bool {
    // Reuse the parser the engine uses: a reply it cannot read back is a bug.
    RpcParser::new()
        .parse::<BackendMethod>(json)
        .map(|_| true)
        .unwrap_or_else(|e| e.code != rpc::PARSE_ERROR)
}

/// DMOJ's event-server commands for both roles, and its long-poll request
/// head under a fixed prefix.
pub fn dmoj(data: &[u8]) {
    for role in [Role::Receiver, Role::Sender] {
        if let Err(e) = dmoj::parse_command(data, role) {
            assert!(!e.code.is_empty());
            let json = e.to_json();
            assert!(json.starts_with(b"{") && json.ends_with(b"}"));
        }
    }
    match dmoj::parse_poll(data, "/channels/") {
        Poll::Incomplete => assert!(data.len() <= dmoj::MAX_POLL_HEAD),
        Poll::Wait(request, consumed) => {
            assert!(consumed <= data.len());
            assert!(!request.channels.is_empty());
        }
        Poll::Answer {
            response, consumed, ..
        } => {
            assert!(consumed <= data.len());
            assert!(response.starts_with(b"HTTP/1.1 "));
        }
    }
}

/// permessage-deflate: the offer negotiation, and the bounded inflater with
/// arbitrary compressed data (never more than `max` bytes out).
///
/// Input: the first byte's low bit picks which; for the inflater the
/// second byte picks `max` (byte * 64).
pub fn deflate(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector & 1 == 0 {
        if let Some(agreement) = deflate::negotiate(rest) {
            assert!((8..=15).contains(&agreement.server_window_bits));
            let byte = deflate::Agreement::to_byte(Some(agreement));
            let kept = deflate::Agreement::from_byte(byte).expect("an agreement packs to 8..=15");
            assert_eq!(kept.server_window_bits, agreement.server_window_bits);
            for len in [0, 255, 256, 32 * 1024, 32 * 1024 + 1] {
                assert_eq!(
                    kept.may_send_compressed(len),
                    agreement.may_send_compressed(len)
                );
            }
            let mut header = Vec::new();
            agreement.write_response_header(&mut header);
            assert!(header.ends_with(b"\r\n"));
        }
        return;
    }
    let Some((&max, compressed)) = rest.split_first() else {
        return;
    };
    let max = usize::from(max) * 64;
    let mut inflater = Inflater::new();
    for _ in 0..2 {
        // Twice on one inflater: it is reset per message, as a shard's is.
        match inflater.inflate(compressed, max) {
            Ok(plain) => assert!(plain.len() <= max),
            Err(e) => assert!(matches!(
                e,
                ringcast::protocol::codec::ProtocolError::MessageTooBig { .. }
                    | ringcast::protocol::codec::ProtocolError::InvalidCompressedData
            )),
        }
    }
}
