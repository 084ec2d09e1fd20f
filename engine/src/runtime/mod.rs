//! The I/O layer: shard threads and their monoio runtimes, the WebSocket
//! sessions, the backend port, and every `unsafe` syscall (in [`sys`]).
//! [`start`] starts it all and sits above [`shard`] and [`backend`].

pub mod backend;
pub mod dashboard;
pub mod engineio_poll;
pub mod io;
pub mod long_poll;
pub mod shard;
pub mod start;
pub mod sys;

pub use start::{run, shard_count, RunningNode, StartError};
