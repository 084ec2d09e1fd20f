//! AFL++ target: `ringcast_fuzz::handshake` (see its documentation and
//! `fuzz/README.md`). Persistent mode: one process runs many inputs.
fn main() {
    afl::fuzz!(|data: &[u8]| ringcast_fuzz::handshake(data));
}
