//! Fuzzes the frame header decoder, masking and the per-connection
//! WebSocket state machine with arbitrary client bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::protocol::codec::{apply_mask, decode_header, encode_header};
use ringcast::protocol::websocket::WsProtocol;

const MAX_MESSAGE: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
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
                if kind == ringcast::protocol::websocket::MessageKind::Text {
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
});
