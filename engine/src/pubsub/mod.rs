//! The publish/subscribe core, without I/O: a publication and its wire
//! forms, a shard's channel table, and the per-channel state its home shard
//! keeps (offsets, epoch, history, interested shards).
#![forbid(unsafe_code)]

pub mod channel_table;
pub mod home_shard;
pub mod ops;
pub mod publication;
