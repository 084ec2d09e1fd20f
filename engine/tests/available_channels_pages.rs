//! `available_channels` is paginated: `limit` (default 1000, at most
//! 10000) and `cursor` (the last name of the previous page) walk every
//! channel once, in name order, however many there are; the RocketWS
//! dialect's list of names is bounded the same way.

mod common;

use common::*;
use serde_json::{json, Value};

const N: usize = 250;

/// One client subscribed to `N` channels (spread over both shards' homes).
fn subscribed(server: &Server) -> Ws {
    let mut ws = server.ws("/");
    let calls: Vec<Value> = (0..N)
        .map(|i| json!({"jsonrpc":"2.0","id":i,"method":"subscribe","params":{"channel":format!("ch-{i:03}")}}))
        .collect();
    send(&mut ws, Value::Array(calls));
    let replies = recv(&mut ws);
    assert_eq!(replies.as_array().map(Vec::len), Some(N), "{replies}");
    ws
}

const FLAGS: &[&str] = &["--max-subscriptions", "1000", "--rate-burst", "1000"];
/// The test subscribes its channels in one batch of N calls.
const ENV: &[(&str, &str)] = &[("RINGCAST_LIMITS_MAX_BATCH_LENGTH", "1000")];

#[test]
fn pages_walk_every_channel_once_in_order() {
    let server = Server::start_with(FLAGS, ENV);
    let _ws = subscribed(&server);
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    let mut pages = 0;
    loop {
        let r = server.call("available_channels", json!({"limit": 37, "cursor": cursor}));
        let page = r["channels"].as_array().unwrap_or_else(|| panic!("{r}"));
        assert!(page.len() <= 37, "{r}");
        for c in page {
            assert_eq!(c["subscribers"], 1, "{c}");
            seen.push(c["channel"].as_str().unwrap().to_string());
        }
        pages += 1;
        cursor = r["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
        assert_eq!(cursor.as_str(), seen.last().map(String::as_str));
    }
    let want: Vec<String> = (0..N).map(|i| format!("ch-{i:03}")).collect();
    assert_eq!(seen, want);
    assert_eq!(pages, N.div_ceil(37));
    // The default page holds them all and says there is no next page.
    let r = server.call("available_channels", json!(null));
    assert_eq!(r["channels"].as_array().unwrap().len(), N);
    assert_eq!(r["next_cursor"], Value::Null);
    // Limits out of range are invalid params.
    for limit in [json!(0), json!(10_001), json!("5")] {
        let v = server.backend("available_channels", json!({"limit": limit}));
        assert_eq!(v["error"]["code"], -32602, "{v}");
    }
}

#[test]
fn rocketws_dialect_lists_names_bounded_by_limit() {
    let mut flags = FLAGS.to_vec();
    flags.extend(["--dialect", "rocketws"]);
    let server = Server::start_with(&flags, ENV);
    let _ws = subscribed(&server);
    let r = server.call(
        "available_channels",
        json!({"limit": 10, "cursor": "ch-100"}),
    );
    let want: Vec<String> = (101..111).map(|i| format!("ch-{i:03}")).collect();
    assert_eq!(r, json!(want));
}
