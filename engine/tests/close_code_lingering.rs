//! A connection the server fails (message too big, protocol error) ends
//! with a close frame the client can read, however much the client was
//! still sending: the server shuts down writing and discards input for a
//! bounded time instead of closing with unread data (which resets the
//! connection and loses the close frame in the client's kernel).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;

/// A masked frame header for `len` payload bytes (64-bit length form).
fn header(opcode: u8, len: u64, masked: bool) -> Vec<u8> {
    let mut h = vec![0x80 | opcode, if masked { 0x80 | 127 } else { 127 }];
    h.extend_from_slice(&len.to_be_bytes());
    if masked {
        h.extend_from_slice(&[0, 0, 0, 0]);
    }
    h
}

/// Reads frames until the close frame; returns its status code.
fn close_code(s: &mut TcpStream) -> Result<u16, String> {
    loop {
        let mut head = [0u8; 2];
        s.read_exact(&mut head).map_err(|e| format!("read: {e}"))?;
        let len = match head[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).map_err(|e| format!("read: {e}"))?;
                u16::from_be_bytes(l) as usize
            }
            127 => return Err("unexpected 64-bit frame".into()),
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload)
            .map_err(|e| format!("read: {e}"))?;
        if head[0] & 0x0f == 0x8 {
            return payload
                .get(..2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .ok_or_else(|| "close frame without a code".into());
        }
    }
}

/// Sends `head` and `body` bytes the way a client that does not read while
/// it writes would, then reads the close code.
fn send_then_read_close(server: &Server, head: &[u8], body: usize) -> Result<u16, String> {
    let mut s = deaf_client(server);
    s.write_all(head).map_err(|e| format!("write: {e}"))?;
    let chunk = vec![0u8; 64 * 1024];
    let mut left = body;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n])
            .map_err(|e| format!("write after {} bytes: {e}", body - left))?;
        left -= n;
    }
    close_code(&mut s)
}

#[test]
fn a_message_too_big_is_answered_with_1009_every_time() {
    let server = Server::start(&[]);
    const MESSAGE: usize = 1_000_000;
    let mut failures = Vec::new();
    for i in 0..100 {
        match send_then_read_close(&server, &header(0x1, MESSAGE as u64, true), MESSAGE) {
            Ok(1009) => {}
            other => failures.push((i, other)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 100: {failures:?}",
        failures.len()
    );
}

#[test]
fn a_protocol_error_is_answered_with_1002_every_time() {
    let server = Server::start(&[]);
    let mut failures = Vec::new();
    for i in 0..20 {
        // An unmasked client frame, followed by its 256 KiB payload.
        match send_then_read_close(&server, &header(0x2, 256 * 1024, false), 256 * 1024) {
            Ok(1002) => {}
            other => failures.push((i, other)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 20: {failures:?}",
        failures.len()
    );
}
