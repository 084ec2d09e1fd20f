//! ringcast: a thread-per-core WebSocket push engine.
//!
//! Backends publish to named channels over an HTTP port; every subscribed
//! WebSocket client receives each publication. One pinned monoio runtime per
//! core, SO_REUSEPORT listeners, shard-local channel tables, and one
//! serialization per publication shared by reference with every shard.
//!
//! # Layout
//!
//! Sans-IO protocol logic (no sockets, unit-tested on byte slices):
//! - [`codec`]: RFC 6455 frame header decode/encode and masking.
//! - [`handshake`]: the HTTP upgrade request parser and 101/400/403/426
//!   answers.
//! - [`websocket`]: the per-connection WebSocket state machine
//!   (fragmentation, UTF-8, control frames, close handshake).
//! - [`rpc`]: JSON-RPC 2.0 for both ports (parse, typed methods, replies).
//! - [`publication`]: builds a publication's frame once.
//! - [`channel_table`]: a shard's channel -> local subscribers index.
//! - [`home_shard`]: per-channel state kept by the channel's home shard
//!   (offsets, epoch, history, which shards are interested).
//! - [`backend::http`]: HTTP/1.1 request parsing for the backend port.
//!
//! The I/O layer (moves bytes, owns sockets):
//! - [`shard`]: the shard runtime: threads, listeners, connections,
//!   cross-shard mailboxes.
//! - [`backend`]: the backend port's JSON-RPC methods over HTTP.
//! - [`sys`]: every `unsafe` block (syscalls, the counting allocator).
//!
//! Around them: [`config`], [`cli`], [`metrics`], [`doctor`], [`shell`],
//! [`alloc_count`].

pub mod alloc_count;
pub mod backend;
pub mod channel_table;
pub mod cli;
pub mod codec;
pub mod config;
pub mod doctor;
pub mod handshake;
pub mod home_shard;
pub mod metrics;
pub mod publication;
pub mod rpc;
pub mod shard;
pub mod shell;
pub mod sys;
pub mod websocket;
