//! AFL++ target: `ringcast_fuzz::backend_http` (see its documentation and
//! `fuzz/README.md`). Persistent mode: one process runs many inputs.
fn main() {
    afl::fuzz!(|data: &[u8]| ringcast_fuzz::backend_http(data));
}
