//! Shard runtime.
