//! Wire protocols, without I/O: every parser and encoder here works on byte
//! slices, takes time as an argument and is unit-tested without a socket.
#![forbid(unsafe_code)]

pub mod codec;
pub mod handshake;
pub mod http;
pub mod rpc;
pub mod websocket;
