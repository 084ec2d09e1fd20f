//! TODO: home_shard
