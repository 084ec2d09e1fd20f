//! The bodies of ringcast's fuzz targets, one function per target, sans-IO:
//! each takes the fuzzer's bytes, drives a parser of `ringcast::protocol`
//! with them and asserts what must hold for any input. The binaries in
//! `fuzz_targets/` only hand AFL++'s input to these (see `fuzz/README.md`).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use ringcast::ops::config::{Config, JobReplies};
use ringcast::protocol::adapter::{Answer, Protocol};
use ringcast::protocol::codec::{apply_mask, decode_header, encode_header};
use ringcast::protocol::deflate::{self, Inflater};
use ringcast::protocol::dmoj::{self, Poll, Role};
use ringcast::protocol::handshake::{parse_upgrade, Upgrade, MAX_REQUEST_HEAD};
use ringcast::protocol::http::{
    max_request_len, parse_request, write_error, write_response, HttpError,
};
use ringcast::protocol::jobs::{Jobs, JobsState};
use ringcast::protocol::rpc::{self, BackendMethod, Incoming, ReplyWriter, RpcParser};
use ringcast::protocol::socketio::engineio::{self, Packet as EioPacket};
use ringcast::protocol::socketio::packet as sio_packet;
use ringcast::protocol::socketio::polling::{self, Payload};
use ringcast::protocol::websocket::{MessageKind, WsProtocol};
use ringcast::protocol::ws4redis::{self, Ws4redis};
use ringcast::pubsub::ops::{Op, Outcome};

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
            let (again, m) = decode_header(&out[..n]).ok().flatten().expect("re-decodes");
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
        let (header, len) = decode_header(rest).ok().flatten().expect("server frame");
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

/// The WebSocket frames in `buf` (server frames, unmasked), as payloads.
fn server_frames(buf: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let (header, len) = decode_header(rest)
            .ok()
            .flatten()
            .expect("a reply holds whole server frames");
        assert!(header.fin && header.mask.is_none());
        let n = usize::try_from(header.payload_len).expect("fits");
        let end = len + n;
        assert!(end <= rest.len(), "frame runs past the reply");
        frames.push(rest[len..end].to_vec());
        rest = &rest[end..];
    }
    frames
}

fn reply_frames(reply: ReplyWriter) -> Vec<Vec<u8>> {
    reply
        .finish_frames()
        .map(|b| server_frames(&b))
        .unwrap_or_default()
}

/// ws4redis: the query flags (case-insensitive keys, values ignored), the
/// facility and channel the path makes, and a session with arbitrary
/// client messages.
///
/// Input: the first byte picks the configuration (heartbeat on/off, base
/// path, prefix); then the request target up to the first NUL; then client
/// messages separated by NULs.
pub fn ws4redis(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0);
    let target = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let query = target.split_once('?').map(|(_, q)| q);
    let flags = ws4redis::parse_flags(query);
    // Keys are compared case-insensitively: shouting the query changes
    // nothing.
    let upper = query.map(str::to_ascii_uppercase);
    assert_eq!(
        flags,
        ws4redis::parse_flags(upper.as_deref()),
        "case changed the flags"
    );
    // Without a connection token there is nobody to name user, group or
    // session channels after: such a request must be refused (403).
    let needs_identity = |a: &ws4redis::Audience| a.user || a.group || a.session;
    let anonymous_ok = !needs_identity(&flags.subscribe) && !needs_identity(&flags.publish);

    let mut cfg = Config::default();
    let w = &mut cfg.protocols.ws4redis;
    let heartbeat: &[u8] = b"--heartbeat--";
    if sel & 1 == 1 {
        w.heartbeat = "--heartbeat--".into();
    }
    if sel & 2 == 2 {
        w.path = "/ws".into();
    }
    if sel & 4 == 4 {
        w.prefix = "rodan".into();
    }
    let path = target.split_once('?').map_or(target.as_str(), |(p, _)| p);
    let facility = ws4redis::facility(&w.path, path);
    assert!(path.ends_with(facility));
    let channel = ws4redis::broadcast_channel(&w.prefix, facility);
    assert!(channel.ends_with(facility));

    let up = Upgrade {
        consumed: 0,
        path: target.clone(),
        origin: None,
        accept: String::new(),
        deflate: None,
    };
    let t0 = Instant::now();
    let opened = match Ws4redis.accept(&cfg, &up, t0) {
        Err(e) => {
            assert!(
                e.status == 400 || e.status == 403,
                "refused with {}",
                e.status
            );
            return;
        }
        Ok(o) => o,
    };
    assert!(anonymous_ok && rpc::valid_channel(&channel));
    let mut state = opened.state;
    if let Some(first) = opened.first {
        assert_eq!(first.calls.len(), 1);
        match &first.calls[0].op {
            Ok(Op::Subscribe { channel: c, .. }) => assert_eq!(&**c, channel.as_str()),
            other => panic!("first exchange runs {other:?}"),
        }
    }
    let hb_on = sel & 1 == 1;
    let mut parser = RpcParser::new();
    let mut now = t0;
    for msg in parts {
        now += Duration::from_millis(u64::from(msg.first().copied().unwrap_or(0)) * 40);
        if let Some(due) = Ws4redis.next_deadline(&state) {
            assert!(hb_on);
            if due <= now {
                let mut reply = ReplyWriter::new(false);
                assert!(Ws4redis.on_deadline(&mut state, now, &mut reply).is_none());
                assert_eq!(reply_frames(reply), [heartbeat]);
                assert!(Ws4redis.next_deadline(&state).expect("still beating") > now);
            }
        } else {
            assert!(!hb_on);
        }
        let ex = Ws4redis.handle_message(&mut state, msg, &mut parser, now);
        assert!(ex.calls.len() <= 1);
        // A heartbeat after every message, and nothing else before the
        // calls ran.
        let frames = reply_frames(ex.reply);
        if hb_on {
            assert_eq!(frames, [heartbeat]);
        } else {
            assert!(frames.is_empty());
        }
        for call in &ex.calls {
            assert!(call.id.is_none());
            assert!(!(hb_on && msg == heartbeat), "a heartbeat was published");
            assert!(!msg.is_empty());
            match &call.op {
                Ok(Op::Relay {
                    channel: c, data, ..
                }) => {
                    assert_eq!(&**c, channel.as_str());
                    assert_eq!(&data[..], msg);
                }
                Ok(other) => panic!("a message ran {other:?}"),
                Err(e) => {
                    assert!(std::str::from_utf8(msg).is_err());
                    let mut reply = ReplyWriter::new(false);
                    Ws4redis.write_answer(&mut state, &mut reply, None, Answer::Rejected(e));
                    for f in reply_frames(reply) {
                        let v: serde_json::Value =
                            serde_json::from_slice(&f).expect("errors are JSON");
                        assert!(v.get("error").is_some());
                    }
                }
            }
        }
    }
}

/// The timed-jobs protocol, driven as a session would be: arbitrary client
/// messages at made-up instants, answers written, deadlines polled.
///
/// Input: the first byte picks the configuration (JSON or Python replies,
/// jobs per connection 1-4, longest job 1 s or 3600 s); then messages
/// separated by NULs, each one's first byte also the time step before it
/// (x 25 ms).
pub fn jobs(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut cfg = Config::default();
    let j = &mut cfg.protocols.jobs;
    let python = sel & 1 == 1;
    if python {
        j.replies = JobReplies::Python;
    }
    j.max_jobs_per_connection = usize::from((sel >> 1) & 3) + 1;
    j.max_job_seconds = if sel & 8 == 8 { 1 } else { 3600 };
    let max_jobs = j.max_jobs_per_connection;
    let mut state = Jobs.open(&cfg);
    let mut parser = RpcParser::new();
    let t0 = Instant::now();
    let mut now = t0;
    let check = |frame: &[u8]| {
        if python {
            assert!(frame.starts_with(b"{") && frame.ends_with(b"}"));
        } else {
            let v: serde_json::Value = serde_json::from_slice(frame).expect("a JSON reply is JSON");
            assert!(v.is_object(), "not an object: {v}");
        }
    };
    let peer = || "127.0.0.1:1".to_string();
    for msg in rest.split(|&b| b == 0) {
        now += Duration::from_millis(u64::from(msg.first().copied().unwrap_or(0)) * 25);
        if let Some(due) = Jobs.next_deadline(&state) {
            // Never a deadline beyond the longest job from now.
            assert!(due <= now + Duration::from_secs(3600));
            if due <= now {
                let mut reply = ReplyWriter::new(false);
                assert!(Jobs.on_deadline(&mut state, now, &mut reply).is_none());
                let frames = reply_frames(reply);
                assert!(!frames.is_empty(), "a deadline passed with nothing due");
                frames.iter().for_each(|f| check(f));
                if let Some(next) = Jobs.next_deadline(&state) {
                    assert!(next > now, "a due job was left behind");
                }
            }
        }
        let ex = Jobs.handle_message(&mut state, msg, &mut parser, now);
        assert_eq!(ex.calls.len(), 1);
        let op = ex.calls[0].op.as_ref().expect("one heartbeat call");
        let mut reply = ex.reply;
        Jobs.write_answer(
            &mut state,
            &mut reply,
            None,
            Answer::Done {
                op,
                result: Ok(Outcome::Heartbeat),
                peer: &peer,
            },
        );
        // Every message is answered (a request that starts a job: later).
        let frames = reply_frames(reply);
        frames.iter().for_each(|f| check(f));
        let s = state.get::<JobsState>().expect("jobs state");
        assert!(s.len() <= max_jobs);
    }
    // Everything falls due eventually, and then nothing is left.
    let end = now + Duration::from_secs(3601);
    let mut reply = ReplyWriter::new(false);
    Jobs.on_deadline(&mut state, end, &mut reply);
    reply_frames(reply).iter().for_each(|f| check(f));
    assert_eq!(Jobs.next_deadline(&state), None);
    assert!(state.get::<JobsState>().expect("jobs state").is_empty());
}

/// Engine.IO packets and Socket.IO v5 packets as a WebSocket message
/// carries them, and the polling transport's payloads (`\x1e`-separated,
/// `b` + base64 for binary).
pub fn engineio(data: &[u8]) {
    // Engine.IO: one type digit, then data handed on as it is.
    match engineio::decode(data) {
        Ok(p) => {
            assert!(matches!(data[0], b'1'..=b'6'));
            match p {
                EioPacket::Ping(d) | EioPacket::Pong(d) | EioPacket::Message(d) => {
                    assert_eq!(d, &data[1..]);
                }
                _ => {}
            }
            if let EioPacket::Message(sio) = p {
                socketio_packet(sio);
            }
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
    socketio_packet(data);

    // Polling payloads: what splits joins back into what splits the same.
    if let Ok(packets) = polling::split_payload(data) {
        assert!(!packets.is_empty());
        let joined = polling::join_payload(&packets);
        assert_eq!(polling::split_payload(&joined).as_ref(), Ok(&packets));
        let texts = packets
            .iter()
            .filter(|p| matches!(p, Payload::Text(_)))
            .count();
        let has_binary = texts < packets.len();
        if !has_binary {
            assert_eq!(joined, data, "a text-only payload joins back byte for byte");
        }
    }
    // base64 both ways.
    let mut encoded = Vec::new();
    polling::base64_encode(data, &mut encoded);
    assert_eq!(encoded.len() % 4, 0);
    assert_eq!(polling::base64_decode(&encoded).as_deref(), Some(data));
    if let Some(plain) = polling::base64_decode(data) {
        assert!(plain.len() <= data.len());
    }
}

/// A Socket.IO packet: decode, and where the server's encoder can say the
/// same thing, encode and decode back to it.
fn socketio_packet(msg: &[u8]) {
    let Ok(p) = sio_packet::decode(msg) else {
        return;
    };
    // The data never starts with the digits of an ack id.
    assert!(!p.data.first().is_some_and(u8::is_ascii_digit));
    assert!(p.nsp.starts_with('/') && !p.nsp.contains(','));
    // The server writes the main namespace implicitly: data starting with
    // '/' would then read as a namespace. Its data is JSON, so that cannot
    // happen; leave it out.
    if p.nsp == "/" && p.ack.is_none() && p.data.first() == Some(&b'/') {
        return;
    }
    let encoded = sio_packet::encode(p.kind, p.nsp, p.ack, p.data);
    assert_eq!(encoded[0], b'4');
    let again = sio_packet::decode(&encoded[1..]).expect("an encoded packet decodes");
    assert_eq!(again, p);
}
