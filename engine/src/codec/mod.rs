//! RFC 6455 frame codec.
