//! Fuzzes the backend port's sans-IO HTTP/1.1 parser
//! (`ringcast::protocol::http`): pipelined requests, chunked bodies, limits.
//!
//! Input: the first byte picks `max_body` (byte * 8, so the 413 paths are
//! reachable with small inputs); the rest is the byte stream. Checks that
//! the parser never panics, always makes progress, keeps bodies within
//! `max_body`, never asks for more than `max_request_len` bytes, gives the
//! same request when the stream is cut right after it, and calls every
//! strict prefix of a request incomplete.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::protocol::http::{
    max_request_len, parse_request, write_error, write_response, HttpError,
};

fuzz_target!(|data: &[u8]| {
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
                assert!(matches!(e.status(), 400 | 413 | 431 | 501));
                if let HttpError::Malformed(m) = &e {
                    assert!(!m.is_empty());
                }
                out.clear();
                write_error(&mut out, &e);
                break;
            }
        }
    }
});
