//! Backend port.

pub mod http;
