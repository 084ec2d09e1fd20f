//! ringcast: a thread-per-core WebSocket push engine.
//!
//! Backends publish to named channels over an HTTP port; every subscribed
//! WebSocket client receives each publication. One pinned monoio runtime per
//! core, SO_REUSEPORT listeners, shard-local channel tables, and one
//! serialization per publication shared by reference with every shard.
//!
//! # Layout
//!
//! The tree is grouped by layer; each layer only uses the ones above it in
//! this list.
//!
//! - [`protocol`]: wire protocols without I/O, tested on byte slices:
//!   [`protocol::codec`] (RFC 6455 frame header, masking),
//!   [`protocol::handshake`] (the upgrade request and its answers),
//!   [`protocol::websocket`] (per-connection WebSocket state machine),
//!   [`protocol::rpc`] (JSON-RPC 2.0 for both ports), [`protocol::http`]
//!   (HTTP/1.1 requests and responses).
//! - [`pubsub`]: the publish/subscribe core without I/O:
//!   [`pubsub::publication`] (a publication and its wire forms, built once),
//!   [`pubsub::channel_table`] (a shard's channel -> local subscribers),
//!   [`pubsub::home_shard`] (offsets, epochs, history of the channels a
//!   shard is home to).
//! - [`runtime`]: the I/O layer: [`runtime::shard`] (a shard's connections,
//!   delivery, mailboxes, WebSocket sessions), [`runtime::backend`] (the
//!   backend port), [`runtime::node`] (starts the shard threads and
//!   listeners), [`runtime::sys`] (every `unsafe` block).
//! - [`ops`]: what operators touch: [`ops::config`], [`ops::cli`],
//!   [`ops::metrics`], [`ops::dashboard`] (the backend port's live page),
//!   [`ops::doctor`], [`ops::shell`], [`ops::alloc_count`].

pub mod ops;
pub mod protocol;
pub mod pubsub;
pub mod runtime;
