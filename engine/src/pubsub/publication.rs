//! A publication and its wire forms, built once.
//!
//! The home shard serializes a publication exactly once into a complete
//! server-to-client WebSocket frame (`native`) held in a reference-counted
//! buffer. Every shard writes those same bytes to each local subscriber. Every
//! other protocol's form (RocketWS's envelope, ...) is cached beside it,
//! built on first use by whichever shard needs it and then shared the same
//! way. A form's permessage-deflate twin ([`Publication::compressed_form`])
//! is cached the same way, in a second array allocated only when a
//! compressing subscriber first asks. Nothing here runs per subscriber.
#![forbid(unsafe_code)]

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::codec::{encode_header, OpCode};

/// Wire forms a publication can cache (one per registered protocol).
pub const MAX_FORMS: usize = 8;

/// What kind of publication this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubKind {
    /// A publication to one channel (`emit`, `send_data`, `publish_many`).
    Message,
    /// A `notify_all` broadcast to every connection.
    Broadcast,
}

/// One publication, shared by every shard that delivers it.
#[derive(Debug)]
pub struct Publication {
    pub kind: PubKind,
    /// The channel, for `Message`s.
    pub channel: Option<Arc<str>>,
    /// Per-channel offset (0 for broadcasts).
    pub offset: u64,
    /// Node-wide id.
    pub id: u64,
    /// Unix time of publication in seconds (RocketWS's `__ts`).
    pub ts_secs: u64,
    /// The publication's `data` as compact JSON.
    pub data: Bytes,
    /// The complete native-dialect text frame.
    pub native: Bytes,
    /// Other protocols' forms, allocated when the first one is built.
    forms: OnceLock<Box<[OnceLock<Bytes>; MAX_FORMS - 1]>>,
    /// Each form's compressed twin (permessage-deflate), allocated when
    /// the first one is built.
    compressed: OnceLock<Box<[OnceLock<Bytes>; MAX_FORMS]>>,
}

impl Publication {
    /// A publication whose native frame carries `json`.
    fn new(
        kind: PubKind,
        channel: Option<Arc<str>>,
        offset: u64,
        id: u64,
        ts_secs: u64,
        json: &[u8],
        data: Bytes,
    ) -> Self {
        Publication {
            kind,
            channel,
            offset,
            id,
            ts_secs,
            native: text_frame(json),
            data,
            forms: OnceLock::new(),
            compressed: OnceLock::new(),
        }
    }

    /// Builds a channel publication and its native frame.
    pub fn message(channel: Arc<str>, offset: u64, id: u64, ts_secs: u64, data: Bytes) -> Self {
        let mut json = Vec::with_capacity(96 + channel.len() + data.len());
        json.extend_from_slice(br#"{"jsonrpc":"2.0","method":"message","params":{"channel":"#);
        write_json_str(&mut json, &channel);
        json.extend_from_slice(br#","offset":"#);
        json.extend_from_slice(itoa::Buffer::new().format(offset).as_bytes());
        json.extend_from_slice(br#","id":"#);
        json.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        json.extend_from_slice(br#","data":"#);
        json.extend_from_slice(&data);
        json.extend_from_slice(b"}}");
        Self::new(
            PubKind::Message,
            Some(channel),
            offset,
            id,
            ts_secs,
            &json,
            data,
        )
    }

    /// Builds a `notify_all` broadcast and its native frame.
    pub fn broadcast(id: u64, ts_secs: u64, data: Bytes) -> Self {
        let mut json = Vec::with_capacity(64 + data.len());
        json.extend_from_slice(br#"{"jsonrpc":"2.0","method":"broadcast","params":{"id":"#);
        json.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        json.extend_from_slice(br#","data":"#);
        json.extend_from_slice(&data);
        json.extend_from_slice(b"}}");
        Self::new(PubKind::Broadcast, None, 0, id, ts_secs, &json, data)
    }

    /// The wire form in `slot` (a protocol's index in the registry),
    /// built by `build` on first use by whichever shard asks first, then
    /// shared by every subscriber of that form on every shard. Slot 0 is
    /// the native frame, built eagerly.
    pub fn form(&self, slot: usize, build: impl FnOnce(&Publication) -> Bytes) -> &Bytes {
        if slot == 0 {
            return &self.native;
        }
        let forms = self.forms.get_or_init(Default::default);
        forms[slot - 1].get_or_init(|| build(self))
    }

    /// The compressed twin of `plain`, the form in `slot`: built by
    /// `compress` on first use by whichever shard's compressing subscriber
    /// asks first, then shared by every compressing subscriber of that
    /// form on every shard (see [`crate::protocol::deflate`]).
    pub fn compressed_form(
        &self,
        slot: usize,
        plain: &Bytes,
        compress: impl FnOnce(&Bytes) -> Bytes,
    ) -> &Bytes {
        let twins = self.compressed.get_or_init(Default::default);
        twins[slot].get_or_init(|| compress(plain))
    }

    /// `{"offset":N,"id":I,"data":...}` as listed by `history`.
    pub fn write_history_entry(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"offset":"#);
        out.extend_from_slice(itoa::Buffer::new().format(self.offset).as_bytes());
        out.extend_from_slice(br#","id":"#);
        out.extend_from_slice(itoa::Buffer::new().format(self.id).as_bytes());
        out.extend_from_slice(br#","data":"#);
        out.extend_from_slice(&self.data);
        out.push(b'}');
    }
}

/// A complete unfragmented server text frame carrying `payload`, in a
/// buffer that is already shared: every later clone (one per subscriber)
/// only bumps a reference count, where a frame frozen from a plain
/// `BytesMut` would allocate its shared header on the first clone.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut header = [0u8; 10];
    let h = encode_header(true, OpCode::Text, payload.len(), &mut header);
    let mut buf = BytesMut::with_capacity(h + payload.len());
    buf.put_slice(&header[..h]);
    buf.put_slice(payload);
    buf.split().freeze()
}

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &[u8]) -> &str {
        let start = if frame[1] & 0x7f == 126 { 4 } else { 2 };
        std::str::from_utf8(&frame[start..]).unwrap()
    }

    #[test]
    fn native_message_frame() {
        let p = Publication::message(
            Arc::from("chat"),
            42,
            7,
            1,
            Bytes::from_static(b"{\"a\":1}"),
        );
        assert_eq!(p.native[0], 0x81);
        assert_eq!(
            payload(&p.native),
            r#"{"jsonrpc":"2.0","method":"message","params":{"channel":"chat","offset":42,"id":7,"data":{"a":1}}}"#
        );
        let v: serde_json::Value = serde_json::from_str(payload(&p.native)).unwrap();
        assert_eq!(v["params"]["offset"], 42);
    }

    #[test]
    fn broadcast_frame() {
        let p = Publication::broadcast(9, 1, Bytes::from_static(b"[1,2]"));
        assert_eq!(
            payload(&p.native),
            r#"{"jsonrpc":"2.0","method":"broadcast","params":{"id":9,"data":[1,2]}}"#
        );
    }

    #[test]
    fn long_payload_uses_extended_length() {
        let data = Bytes::from(format!("\"{}\"", "x".repeat(300)));
        let p = Publication::message(Arc::from("c"), 1, 1, 1, data);
        assert_eq!(p.native[1], 126);
        let len = u16::from_be_bytes([p.native[2], p.native[3]]) as usize;
        assert_eq!(len, p.native.len() - 4);
    }

    #[test]
    fn compressed_twin_is_built_once_and_shared() {
        use crate::protocol::deflate::{frame_payload_len, Deflater, Inflater};
        let data = Bytes::from(format!("{{\"text\":\"{}\"}}", "hello world ".repeat(40)));
        let p = Publication::message(Arc::from("news"), 3, 4, 1, data);
        let mut deflater = Deflater::new();
        let mut builds = 0;
        let mut twin = |slot: usize| {
            let plain = p.form(slot, |p| text_frame(&p.data)).clone();
            p.compressed_form(slot, &plain, |plain| {
                builds += 1;
                deflater.compress_frame(plain)
            })
            .clone()
        };
        let a = twin(0);
        let b = twin(0);
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "the same bytes for every subscriber"
        );
        let other = twin(1);
        assert_ne!(other.as_ptr(), a.as_ptr(), "each form has its own twin");
        assert_eq!(twin(1).as_ptr(), other.as_ptr());
        assert_eq!(builds, 2);
        assert_eq!(a[0] & 0x40, 0x40, "RSV1");
        assert!(a.len() < p.native.len() / 3);
        let len = frame_payload_len(&a).unwrap();
        let mut inflater = Inflater::new();
        assert_eq!(
            inflater.inflate(&a[a.len() - len..], 1 << 20).unwrap(),
            payload(&p.native).as_bytes()
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = Vec::new();
        write_json_str(&mut out, "a\"b\\c\u{1}");
        assert_eq!(out, b"\"a\\\"b\\\\c\\u0001\"");
    }
}
