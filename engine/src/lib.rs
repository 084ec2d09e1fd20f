//! ringcast: a thread-per-core WebSocket push engine.
//!
//! Backends publish to named channels over an HTTP port; every subscribed
//! WebSocket client receives each publication. One pinned monoio runtime per
//! core, SO_REUSEPORT listeners, shard-local channel tables, and one
//! serialization per publication shared by reference with every shard.
//!
//! # Layout
//!
//! The tree is grouped by layer. The first two are sans-IO (no sockets,
//! unit-tested on values and byte slices); the I/O layer uses them; the
//! operator tools sit beside. Configuration ([`ops::config`]) is read by
//! every layer.
//!
//! - [`pubsub`]: the publish/subscribe core. [`pubsub::ops`] (the
//!   operations a client can ask for and the engine's answers: the whole
//!   vocabulary between protocols and runtime), [`pubsub::publication`] (a
//!   publication and its wire forms, each built once),
//!   [`pubsub::channel_table`] (a shard's channel -> local subscribers),
//!   [`pubsub::home_shard`] (offsets, epochs and history of the channels a
//!   shard is home to).
//! - [`protocol`]: wire protocols. Transport: [`protocol::codec`] (RFC 6455
//!   frame header, masking), [`protocol::handshake`] (the upgrade and its
//!   answers), [`protocol::websocket`] (per-connection state machine),
//!   [`protocol::deflate`] (permessage-deflate: negotiation, compressed
//!   twins built once per publication, bounded inflate),
//!   [`protocol::http`] (HTTP/1.1 requests and responses),
//!   [`protocol::rpc`] (JSON-RPC 2.0 for both ports). Client protocols, one
//!   module each behind [`protocol::adapter::Protocol`]:
//!   [`protocol::native`], [`protocol::rocketws`], [`protocol::dmoj`].
//! - [`runtime`]: the I/O layer, which only moves bytes and runs
//!   operations: [`runtime::shard`] (a shard's connections, delivery,
//!   channels across shards, mailboxes, timers, WebSocket sessions),
//!   [`runtime::backend`] (the backend port), [`runtime::long_poll`]
//!   (DMOJ's long-poll over plain HTTP), [`runtime::dashboard`] (its
//!   live page for operators), [`runtime::start`] (listeners and shard
//!   threads; sits above shard and backend), [`runtime::io`],
//!   [`runtime::sys`] (every `unsafe` block).
//! - [`ops`]: what operators touch: [`ops::config`], [`ops::cli`],
//!   [`ops::metrics`], [`ops::doctor`], [`ops::shell`],
//!   [`ops::alloc_count`].
//! - [`cluster`]: cluster mode, several nodes sharing channels through
//!   Redis: [`cluster::wire`] (keys, bus messages, the per-channel
//!   sequencer; sans-IO) and [`cluster::bus`] (the bridge thread talking
//!   to Redis), see docs/CLUSTER.md.

pub mod access;
pub mod cluster;
pub mod ops;
pub mod protocol;
pub mod pubsub;
pub mod runtime;
pub mod sources;
