//! The I/O layer: shard threads and their monoio runtimes, the WebSocket
//! sessions, the backend port, and every `unsafe` syscall (in [`sys`]).
//! [`node`] starts it all and sits above [`shard`] and [`backend`].

pub mod backend;
pub mod io;
pub mod node;
pub mod shard;
pub mod sys;

pub use node::{run, shard_count, RunningNode};
