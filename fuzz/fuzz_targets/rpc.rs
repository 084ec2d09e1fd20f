//! AFL++ target: `ringcast_fuzz::rpc` (see its documentation and
//! `fuzz/README.md`). Persistent mode: one process runs many inputs.
fn main() {
    afl::fuzz!(|data: &[u8]| ringcast_fuzz::rpc(data));
}
