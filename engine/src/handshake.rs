//! TODO: handshake
