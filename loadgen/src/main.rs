mod frame;
mod handshake;
mod scan;
mod tracker;
fn main() {}
