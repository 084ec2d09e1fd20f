//! Fuzzes the HTTP upgrade request parser and its responses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::protocol::handshake::parse_upgrade;

fuzz_target!(|data: &[u8]| {
    let allowed = ["https://app.example".to_owned()];
    for origins in [&allowed[..], &[]] {
        match parse_upgrade(data, origins) {
            Ok(None) => assert!(data.len() <= ringcast::protocol::handshake::MAX_REQUEST_HEAD),
            Ok(Some(upgrade)) => {
                assert!(upgrade.consumed <= data.len());
                assert!(upgrade.path.starts_with(upgrade.path_without_query()));
                let _ = upgrade.query_param("dialect");
                let response = upgrade.response_101();
                assert!(response.ends_with(b"\r\n\r\n"));
            }
            Err(err) => {
                let response = err.response();
                assert!(response.starts_with(b"HTTP/1.1 "));
            }
        }
    }
});
