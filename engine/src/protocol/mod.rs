//! Wire protocols, without I/O: every parser and encoder here works on byte
//! slices, takes time as an argument and is unit-tested without a socket.
//!
//! Transport: [`codec`], [`handshake`], [`websocket`], [`deflate`]
//! (permessage-deflate), [`http`]. Messages:
//! [`rpc`] (JSON-RPC 2.0). The client protocols behind one seam,
//! [`adapter::Protocol`]: [`native`], [`rocketws`], [`dmoj`], [`jobs`],
//! [`ws4redis`], [`socketio`].
#![forbid(unsafe_code)]

pub mod adapter;
pub mod codec;
pub mod deflate;
pub mod dmoj;
pub mod handshake;
pub mod http;
pub mod jobs;
pub mod native;
pub mod rocketws;
pub mod rpc;
pub mod socketio;
pub mod websocket;
pub mod ws4redis;
