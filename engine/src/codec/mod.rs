//! RFC 6455 frame codec (placeholder until the codec branch lands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

pub fn encode_header(fin: bool, opcode: OpCode, payload_len: usize, out: &mut [u8; 10]) -> usize {
    let op = match opcode {
        OpCode::Continuation => 0,
        OpCode::Text => 1,
        OpCode::Binary => 2,
        OpCode::Close => 8,
        OpCode::Ping => 9,
        OpCode::Pong => 10,
    };
    out[0] = if fin { 0x80 } else { 0 } | op;
    if payload_len < 126 {
        out[1] = payload_len as u8;
        2
    } else if payload_len <= 0xffff {
        out[1] = 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}
