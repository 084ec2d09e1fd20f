//! TODO: rpc
