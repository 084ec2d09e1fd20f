//! TODO: websocket
