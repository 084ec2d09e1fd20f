//! Deterministic JSON payloads of (about) a requested size, shaped like real
//! application events: an array of small objects with numbers, strings and
//! nested arrays, not one long string (which would flatter any parser).
#![forbid(unsafe_code)]

/// A compact JSON object of exactly `len` bytes (`len >= 16`).
pub fn json_object(len: usize) -> String {
    assert!(len >= 16, "payload too small: {len}");
    let mut items = String::new();
    let mut i = 0u32;
    loop {
        let item = format!(
            r#"{}{{"id":{i},"name":"item-{i}","price":{}.{},"tags":["a","b"],"ok":true}}"#,
            if i == 0 { "" } else { "," },
            i * 7 % 100,
            i % 10
        );
        // `{"items":[` + items + `],"pad":""}` must stay within len.
        if 10 + items.len() + item.len() + 11 > len {
            break;
        }
        items.push_str(&item);
        i += 1;
    }
    let mut out = format!(r#"{{"items":[{items}],"pad":""#);
    let fill = len.saturating_sub(out.len() + 2);
    out.extend(std::iter::repeat_n('x', fill));
    out.push_str("\"}");
    if out.len() > len {
        // Too small for the envelope: a plain padded string object.
        let fill = len - r#"{"p":""}"#.len();
        out = format!(r#"{{"p":"{}"}}"#, "x".repeat(fill));
    }
    debug_assert_eq!(out.len(), len);
    out
}

/// A client `send_data` JSON-RPC request of exactly `len` bytes.
pub fn send_data_request(len: usize) -> String {
    let envelope =
        r#"{"jsonrpc":"2.0","id":1,"method":"send_data","params":{"channel":"chat","data":}}"#;
    let data = json_object(len.saturating_sub(envelope.len()).max(16));
    format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"send_data","params":{{"channel":"chat","data":{data}}}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_exact_and_valid_json() {
        for len in [16, 20, 64, 100, 256, 1024, 4096] {
            let s = json_object(len);
            assert_eq!(s.len(), len, "{s}");
            serde_json::from_str::<serde_json::Value>(&s).unwrap();
        }
        for len in [128, 256, 1024, 4096] {
            let s = send_data_request(len);
            assert_eq!(s.len(), len, "{s}");
            serde_json::from_str::<serde_json::Value>(&s).unwrap();
        }
    }
}
