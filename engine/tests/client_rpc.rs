//! The native JSON-RPC 2.0 client protocol over a real WebSocket (SPEC
//! section 3, section 6 for `since`): every method, every error code,
//! batches and notifications, garbage input, `send_data` and `notify_all`
//! fan-out over both shards, and catch-up with `since`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tungstenite::protocol::Message;

/// Reads until the reply with `id`; returns what arrived before it and it.
fn until_reply(ws: &mut Ws, id: u64) -> (Vec<Value>, Value) {
    let mut before = Vec::new();
    loop {
        let v = recv(ws);
        if v.get("id") == Some(&json!(id)) {
            return (before, v);
        }
        before.push(v);
    }
}

/// Asserts `v` is a JSON-RPC error with `code`, a non-empty message and `id`.
fn assert_error(v: &Value, code: i64, id: Value) {
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert_eq!(v["id"], id, "{v}");
    assert!(v.get("result").is_none(), "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(!msg.is_empty(), "error message must not be empty: {v}");
}

/// Asserts `v` is the publication of `channel` at `offset`.
fn assert_message(v: &Value, channel: &str, offset: u64) {
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert_eq!(v["method"], "message", "{v}");
    assert!(
        v.get("id").is_none(),
        "a publication is a notification: {v}"
    );
    assert_eq!(v["params"]["channel"], channel, "{v}");
    assert_eq!(v["params"]["offset"], offset, "{v}");
    assert!(v["params"]["id"].is_u64(), "{v}");
}

fn heartbeat_ok(ws: &mut Ws, id: u64) {
    let r = rpc(ws, id, "heartbeat", json!(null));
    assert_eq!(r["result"], json!({"heartbeat": "ok"}), "{r}");
}

#[test]
fn every_method_answers_with_its_result_shape() {
    let server = Server::start(&[]);
    let mut ws = server.ws("/");

    // heartbeat, with and without params.
    send_text(&mut ws, r#"{"jsonrpc":"2.0","id":1,"method":"heartbeat"}"#);
    let r = recv(&mut ws);
    assert_eq!(
        r,
        json!({"jsonrpc":"2.0","id":1,"result":{"heartbeat":"ok"}})
    );
    heartbeat_ok(&mut ws, 2);
    // String ids come back as they were sent.
    send_text(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":"abc","method":"heartbeat"}"#,
    );
    assert_eq!(recv(&mut ws)["id"], "abc");

    // subscribe: channel, offset of the channel, epoch string.
    let r = rpc(&mut ws, 3, "subscribe", json!({"channel": "shape"}));
    let res = &r["result"];
    assert_eq!(res["channel"], "shape", "{r}");
    assert_eq!(res["offset"], 0, "{r}");
    let epoch = res["epoch"]
        .as_str()
        .expect("epoch is a string")
        .to_string();
    assert!(!epoch.is_empty());
    assert!(
        res.get("recovered").is_none(),
        "no since, no recovered: {r}"
    );
    assert!(res.get("missed").is_none(), "{r}");

    // Publications arrive as `message` notifications.
    for n in 0..3 {
        let e = server.emit("shape", json!({"n": n}));
        assert_eq!(e["offset"], n + 1);
        let m = recv(&mut ws);
        assert_message(&m, "shape", n + 1);
        assert_eq!(m["params"]["data"], json!({"n": n}));
        assert_eq!(m["params"]["id"], e["id"]);
    }

    // Subscribing again changes nothing and reports where the channel is.
    let r = rpc(&mut ws, 4, "subscribe", json!({"channel": "shape"}));
    assert_eq!(r["result"]["offset"], 3, "{r}");
    assert_eq!(r["result"]["epoch"], epoch.as_str(), "{r}");
    let e = server.emit("shape", json!({"n": 3}));
    assert_eq!(e["subscribers"], 1, "{e}");
    assert_message(&recv(&mut ws), "shape", 4);
    assert_silent(&mut ws, Duration::from_millis(200));

    // history: publications with offset, id and data; offset and epoch.
    let r = rpc(&mut ws, 5, "history", json!({"channel": "shape"}));
    let h = &r["result"];
    assert_eq!(h["offset"], 4, "{r}");
    assert_eq!(h["epoch"], epoch.as_str(), "{r}");
    let pubs = h["publications"].as_array().expect("publications array");
    assert_eq!(pubs.len(), 4, "{r}");
    for (i, p) in pubs.iter().enumerate() {
        assert_eq!(p["offset"], i as u64 + 1, "{r}");
        assert!(p["id"].is_u64(), "{r}");
        assert_eq!(p["data"], json!({"n": i}), "{r}");
    }
    let r = rpc(
        &mut ws,
        6,
        "history",
        json!({"channel": "shape", "since": {"offset": 2, "epoch": epoch}, "limit": 1}),
    );
    let pubs = r["result"]["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 1, "{r}");
    assert_eq!(pubs[0]["offset"], 3, "{r}");

    // send_data: offset and subscribers; not echoed to the sender.
    send(
        &mut ws,
        json!({"jsonrpc":"2.0","id":7,"method":"send_data",
               "params":{"channel": "shape", "data": {"hello": 1}}}),
    );
    let (echo, r) = until_reply(&mut ws, 7);
    assert!(echo.is_empty(), "sender got its own message: {echo:?}");
    assert_eq!(r["result"]["offset"], 5, "{r}");
    assert!(r["result"]["subscribers"].is_u64(), "{r}");
    assert_silent(&mut ws, Duration::from_millis(200));

    // unsubscribe: the channel; nothing arrives afterwards.
    let r = rpc(&mut ws, 8, "unsubscribe", json!({"channel": "shape"}));
    assert_eq!(r["result"], json!({"channel": "shape"}), "{r}");
    let e = server.emit("shape", json!("after"));
    assert_eq!(e["subscribers"], 0, "{e}");
    assert_silent(&mut ws, Duration::from_millis(300));
    heartbeat_ok(&mut ws, 9);
}

#[test]
fn every_error_code() {
    let server = Server::start(&[]);
    let mut ws = server.ws("/");

    // -32700 parse error, id null.
    send_text(&mut ws, r#"{"jsonrpc":"2.0","id":1,"method":"#);
    assert_error(&recv(&mut ws), -32700, Value::Null);

    // -32600 invalid request, in its several forms.
    send_text(&mut ws, r#"{"id":2,"method":"heartbeat"}"#);
    assert_error(&recv(&mut ws), -32600, json!(2));
    send_text(&mut ws, r#"{"jsonrpc":"1.0","id":3,"method":"heartbeat"}"#);
    assert_error(&recv(&mut ws), -32600, json!(3));
    send_text(&mut ws, r#"{"jsonrpc":"2.0","id":4}"#);
    assert_error(&recv(&mut ws), -32600, json!(4));
    send_text(&mut ws, r#"{"jsonrpc":"2.0","id":5,"method":7}"#);
    assert_error(&recv(&mut ws), -32600, json!(5));
    send_text(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":6,"method":"heartbeat","params":"x"}"#,
    );
    assert_error(&recv(&mut ws), -32600, json!(6));
    send_text(&mut ws, "[]");
    assert_error(&recv(&mut ws), -32600, Value::Null);
    send_text(&mut ws, "5");
    assert_error(&recv(&mut ws), -32600, Value::Null);

    // -32601 method not found.
    let r = rpc(&mut ws, 10, "no_such_method", json!({}));
    assert_error(&r, -32601, json!(10));

    // -32602 invalid params.
    let r = rpc(&mut ws, 11, "subscribe", json!({}));
    assert_error(&r, -32602, json!(11));
    let r = rpc(&mut ws, 12, "subscribe", json!({"channel": "has space"}));
    assert_error(&r, -32602, json!(12));
    let r = rpc(&mut ws, 13, "subscribe", json!({"channel": ""}));
    assert_error(&r, -32602, json!(13));
    let r = rpc(
        &mut ws,
        14,
        "subscribe",
        json!({"channel": "x".repeat(256)}),
    );
    assert_error(&r, -32602, json!(14));
    let r = rpc(&mut ws, 15, "subscribe", json!({"channel": 5}));
    assert_error(&r, -32602, json!(15));
    let r = rpc(
        &mut ws,
        16,
        "subscribe",
        json!({"channel": "ok", "since": {"offset": -1, "epoch": "e"}}),
    );
    assert_error(&r, -32602, json!(16));
    let r = rpc(&mut ws, 17, "send_data", json!({"channel": "ok"}));
    assert_error(&r, -32602, json!(17));
    let r = rpc(&mut ws, 18, "unsubscribe", json!(["ok"]));
    assert_error(&r, -32602, json!(18));

    // -32001 not subscribed: unsubscribe and send_data.
    let r = rpc(&mut ws, 20, "unsubscribe", json!({"channel": "never"}));
    assert_error(&r, -32001, json!(20));
    let r = rpc(
        &mut ws,
        21,
        "send_data",
        json!({"channel": "never", "data": {"x": 1}}),
    );
    assert_error(&r, -32001, json!(21));
    // Nothing was published by the refused send_data.
    let last = server.call("last", json!({"channel": "never"}));
    assert_eq!(last["offset"], 0, "{last}");
    subscribe(&mut ws, "once");
    let r = rpc(&mut ws, 22, "unsubscribe", json!({"channel": "once"}));
    assert!(r.get("result").is_some(), "{r}");
    let r = rpc(&mut ws, 23, "unsubscribe", json!({"channel": "once"}));
    assert_error(&r, -32001, json!(23));

    // None of it closed the connection.
    heartbeat_ok(&mut ws, 30);
}

#[test]
fn subscription_limit_is_32002_naming_the_limit() {
    let server = Server::start(&["--max-subscriptions", "2"]);
    let mut ws = server.ws("/");
    subscribe(&mut ws, "a");
    subscribe(&mut ws, "b");
    let r = rpc(&mut ws, 5, "subscribe", json!({"channel": "c"}));
    assert_error(&r, -32002, json!(5));
    assert_eq!(
        r["error"]["data"]["limit"], "max_subscriptions_per_connection",
        "{r}"
    );
    // Not subscribed to c: an emit there reaches nobody.
    let e = server.emit("c", json!(1));
    assert_eq!(e["subscribers"], 0, "{e}");
    // Re-subscribing to a channel already held is not a new subscription.
    let r = rpc(&mut ws, 6, "subscribe", json!({"channel": "a"}));
    assert!(r.get("result").is_some(), "{r}");
    // Leaving one makes room again.
    let r = rpc(&mut ws, 7, "unsubscribe", json!({"channel": "b"}));
    assert!(r.get("result").is_some(), "{r}");
    let r = rpc(&mut ws, 8, "subscribe", json!({"channel": "c"}));
    assert_eq!(r["result"]["channel"], "c", "{r}");
    // The limit is per connection.
    let mut other = server.ws("/");
    subscribe(&mut other, "x");
    subscribe(&mut other, "y");
    heartbeat_ok(&mut ws, 9);
}

#[test]
fn request_rate_limit_is_32003() {
    let server = Server::start(&["--rate-per-sec", "1", "--rate-burst", "3"]);
    let mut ws = server.ws("/");
    // One frame, six calls: the burst of 3 passes, the rest are refused
    // (at most one token can come back meanwhile).
    let batch: Vec<Value> = (1..=6)
        .map(|id| json!({"jsonrpc":"2.0","id":id,"method":"heartbeat"}))
        .collect();
    send_text(&mut ws, &Value::Array(batch).to_string());
    let replies = recv(&mut ws);
    let replies = replies.as_array().expect("batch reply");
    assert_eq!(replies.len(), 6, "{replies:?}");
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["id"], i as u64 + 1, "{r}");
    }
    for r in &replies[..3] {
        assert_eq!(r["result"], json!({"heartbeat":"ok"}), "{r}");
    }
    let limited: Vec<&Value> = replies[3..]
        .iter()
        .filter(|r| r.get("error").is_some())
        .collect();
    assert!(limited.len() >= 2, "{replies:?}");
    for r in limited {
        assert_error(r, -32003, r["id"].clone());
    }
    // Separate frames are limited too, and the connection stays open.
    for id in 10..14 {
        send(
            &mut ws,
            json!({"jsonrpc":"2.0","id":id,"method":"heartbeat"}),
        );
    }
    let mut codes = Vec::new();
    for id in 10..14 {
        let r = recv(&mut ws);
        assert_eq!(r["id"], id, "{r}");
        if r.get("error").is_some() {
            assert_error(&r, -32003, json!(id));
            codes.push(id);
        }
    }
    assert!(codes.len() >= 2, "expected -32003 replies: {codes:?}");
    // Tokens come back at 1/s.
    std::thread::sleep(Duration::from_millis(2500));
    heartbeat_ok(&mut ws, 20);
}

#[test]
fn batches_and_notifications() {
    let server = Server::start(&[]);
    let mut ws = server.ws("/");

    // A notification gets no reply, even a failing one.
    send_text(&mut ws, r#"{"jsonrpc":"2.0","method":"heartbeat"}"#);
    send_text(&mut ws, r#"{"jsonrpc":"2.0","method":"no_such_method"}"#);
    send_text(
        &mut ws,
        r#"{"jsonrpc":"2.0","method":"unsubscribe","params":{"channel":"none"}}"#,
    );
    assert_silent(&mut ws, Duration::from_millis(300));
    // ...but it is executed.
    send_text(
        &mut ws,
        r#"{"jsonrpc":"2.0","method":"subscribe","params":{"channel":"quiet"}}"#,
    );
    let (before, _) = until_reply_after_heartbeat(&mut ws, 1);
    assert!(before.is_empty(), "{before:?}");
    let e = server.emit("quiet", json!("q"));
    assert_eq!(e["subscribers"], 1, "{e}");
    assert_message(&recv(&mut ws), "quiet", 1);

    // A batch: array of replies in order, notifications left out.
    let batch = json!([
        {"jsonrpc":"2.0","id":1,"method":"heartbeat"},
        {"jsonrpc":"2.0","method":"heartbeat"},
        {"jsonrpc":"2.0","id":"two","method":"no_such_method"},
        {"jsonrpc":"2.0","id":3,"method":"subscribe","params":{"channel":"batched"}},
        {"jsonrpc":"2.0","method":"subscribe","params":{"channel":"batched2"}},
        {"jsonrpc":"2.0","id":4,"method":"unsubscribe","params":{"channel":"nope"}},
        5,
        {"jsonrpc":"2.0","id":6,"method":"subscribe","params":{"channel":"a b"}}
    ]);
    send_text(&mut ws, &batch.to_string());
    let r = recv(&mut ws);
    let arr = r
        .as_array()
        .unwrap_or_else(|| panic!("batch reply is an array: {r}"));
    assert_eq!(arr.len(), 6, "{r}");
    assert_eq!(
        arr[0],
        json!({"jsonrpc":"2.0","id":1,"result":{"heartbeat":"ok"}})
    );
    assert_error(&arr[1], -32601, json!("two"));
    assert_eq!(arr[2]["id"], 3, "{r}");
    assert_eq!(arr[2]["result"]["channel"], "batched", "{r}");
    assert_error(&arr[3], -32001, json!(4));
    assert_error(&arr[4], -32600, Value::Null);
    assert_error(&arr[5], -32602, json!(6));
    // Both subscriptions of the batch took effect.
    let total = server.call("total_subscribers", json!({"channel": "batched2"}));
    assert_eq!(total["total"], 1, "{total}");

    // A batch of notifications only: no reply at all.
    let batch = json!([
        {"jsonrpc":"2.0","method":"heartbeat"},
        {"jsonrpc":"2.0","method":"unsubscribe","params":{"channel":"batched2"}}
    ]);
    send_text(&mut ws, &batch.to_string());
    assert_silent(&mut ws, Duration::from_millis(300));
    let (before, _) = until_reply_after_heartbeat(&mut ws, 7);
    assert!(before.is_empty(), "{before:?}");
    let total = server.call("total_subscribers", json!({"channel": "batched2"}));
    assert_eq!(total["total"], 0, "{total}");

    // A batch of one is still an array.
    send_text(
        &mut ws,
        r#"[{"jsonrpc":"2.0","id":8,"method":"heartbeat"}]"#,
    );
    let r = recv(&mut ws);
    assert_eq!(
        r,
        json!([{"jsonrpc":"2.0","id":8,"result":{"heartbeat":"ok"}}])
    );
}

/// Sends a heartbeat with `id` and reads up to its reply.
fn until_reply_after_heartbeat(ws: &mut Ws, id: u64) -> (Vec<Value>, Value) {
    send(ws, json!({"jsonrpc":"2.0","id":id,"method":"heartbeat"}));
    let (before, r) = until_reply(ws, id);
    assert_eq!(r["result"], json!({"heartbeat":"ok"}), "{r}");
    (before, r)
}

#[test]
fn garbage_leaves_the_connection_open_and_others_unaffected() {
    let server = Server::start(&[]);
    let mut watcher = server.ws("/");
    subscribe(&mut watcher, "steady");
    let mut ws = server.ws("/");

    let garbage: Vec<(Message, Option<i64>)> = vec![
        (Message::text("{nope"), Some(-32700)),
        (Message::text("[]"), Some(-32600)),
        (Message::text("5"), Some(-32600)),
        (Message::text(""), Some(-32700)),
        (Message::text("null"), Some(-32600)),
        (
            Message::text(r#"{"jsonrpc":"2.0","id":1,"method":"heart"#),
            Some(-32700),
        ),
        (
            Message::binary(vec![0xff, 0x00, 0x13, 0x37, 0xfe, b'{', 0x80, 0x01]),
            None,
        ),
    ];
    for (i, (frame, code)) in garbage.into_iter().enumerate() {
        let id = 100 + i as u64;
        ws.send(frame).unwrap();
        let (before, _) = until_reply_after_heartbeat(&mut ws, id);
        match code {
            Some(code) => {
                assert_eq!(before.len(), 1, "garbage #{i}: one error reply: {before:?}");
                assert_error(&before[0], code, Value::Null);
            }
            None => {
                // Junk in a binary frame: at most a parse error, id null.
                assert!(before.len() <= 1, "garbage #{i}: {before:?}");
                for v in &before {
                    assert_error(v, -32700, Value::Null);
                }
            }
        }
        // The other connection keeps receiving meanwhile.
        let e = server.emit("steady", json!({"i": i}));
        let m = recv(&mut watcher);
        assert_message(&m, "steady", i as u64 + 1);
        assert_eq!(m["params"]["id"], e["id"]);
    }
    // The garbage sender still works fully.
    subscribe(&mut ws, "steady");
    server.emit("steady", json!("last"));
    assert_message(&recv(&mut ws), "steady", 8);
    assert_message(&recv(&mut watcher), "steady", 8);
}

#[test]
fn send_data_reaches_other_subscribers_on_both_shards_not_the_sender() {
    let server = Server::start(&[]);
    let mut clients = clients_on_both_shards(&server, 2);
    for ws in clients.iter_mut() {
        subscribe(ws, "room");
    }
    let n = clients.len();
    for sender in [0, n - 1] {
        let data = json!({"from": sender, "text": "hi"});
        send(
            &mut clients[sender],
            json!({"jsonrpc":"2.0","id":40,"method":"send_data",
                   "params":{"channel": "room", "data": data}}),
        );
        let (echo, r) = until_reply(&mut clients[sender], 40);
        assert!(echo.is_empty(), "sender got its own message: {echo:?}");
        let res = &r["result"];
        let offset = res["offset"].as_u64().unwrap_or_else(|| panic!("{r}"));
        let subs = res["subscribers"].as_u64().unwrap_or_else(|| panic!("{r}"));
        assert!(
            subs as usize == n || subs as usize == n - 1,
            "subscribers {subs} with {n} subscribed: {r}"
        );
        for (i, ws) in clients.iter_mut().enumerate() {
            if i == sender {
                continue;
            }
            let m = recv(ws);
            assert_message(&m, "room", offset);
            assert_eq!(m["params"]["data"], data, "client {i}");
        }
        for ws in clients.iter_mut() {
            assert_silent(ws, Duration::from_millis(100));
        }
    }
    // The sender still gets what others publish.
    let e = server.emit("room", json!("backend"));
    for ws in clients.iter_mut() {
        assert_message(&recv(ws), "room", e["offset"].as_u64().unwrap());
    }
}

#[test]
fn notify_all_reaches_each_connection_exactly_once() {
    let server = Server::start(&[]);
    let mut clients = clients_on_both_shards(&server, 2);
    // Some clients are in three channels, some in one, some in none.
    for (i, ws) in clients.iter_mut().enumerate() {
        let k = i % 3;
        for c in ["n1", "n2", "n3"]
            .iter()
            .take(if k == 0 { 3 } else { k - 1 })
        {
            subscribe(ws, c);
        }
    }
    let data = json!({"alert": "everyone"});
    let r = server.call("notify_all", json!({"data": data}));
    assert_eq!(r["connections"], clients.len(), "{r}");
    let id = r["id"].as_u64().expect("broadcast id");
    for (i, ws) in clients.iter_mut().enumerate() {
        let m = recv(ws);
        assert_eq!(
            m,
            json!({"jsonrpc":"2.0","method":"broadcast","params":{"id":id,"data":data}}),
            "client {i}"
        );
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        // Exactly once: nothing more (a duplicate would arrive promptly).
        assert_silent(ws, Duration::from_millis(150));
        heartbeat_ok(ws, 50 + i as u64);
    }
    // Ids keep increasing past the broadcast.
    let e = server.emit("n1", json!(1));
    assert!(e["id"].as_u64().unwrap() > id, "{e}");
}

/// Reads publications of `channel` and the reply with `id` (in whatever
/// order) until the reply is in and the last offset is `last`.
fn collect_catch_up(ws: &mut Ws, id: u64, channel: &str, last: u64) -> (Value, Vec<Value>) {
    let mut reply = None;
    let mut pubs: Vec<Value> = Vec::new();
    while reply.is_none() || pubs.last().map(|p| p["params"]["offset"].as_u64()) != Some(Some(last))
    {
        let v = recv(ws);
        if v.get("id") == Some(&json!(id)) {
            assert!(reply.is_none(), "two replies: {v}");
            reply = Some(v);
            continue;
        }
        assert_eq!(v["method"], "message", "{v}");
        assert_eq!(v["params"]["channel"], channel, "{v}");
        pubs.push(v);
        assert!(pubs.len() <= 1000, "runaway");
    }
    (reply.unwrap(), pubs)
}

fn offsets(pubs: &[Value]) -> Vec<u64> {
    pubs.iter()
        .map(|p| p["params"]["offset"].as_u64().unwrap())
        .collect()
}

#[test]
fn since_replays_missed_then_live_without_gap_or_duplicate() {
    let server = Server::start(&[]);
    // A steady subscriber keeps the channel (and its history) alive.
    let mut steady = server.ws("/");
    let first = subscribe(&mut steady, "seam");
    let epoch = first["epoch"].as_str().unwrap().to_string();
    // The client that will come back has seen offsets 1..=3.
    let mut gone = server.ws("/");
    subscribe(&mut gone, "seam");
    for n in 1..=3u64 {
        server.emit("seam", json!({"n": n}));
        assert_message(&recv(&mut gone), "seam", n);
    }
    drop(gone);
    for n in 4..=6u64 {
        server.emit("seam", json!({"n": n}));
    }
    let last = 60u64;
    let (reply, pubs) = std::thread::scope(|s| {
        let server = &server;
        // Live publications race the re-subscription.
        s.spawn(move || {
            for n in 7..=last {
                let r = server.emit("seam", json!({"n": n}));
                assert_eq!(r["offset"], n);
            }
        });
        let mut back = server.ws("/");
        send(
            &mut back,
            json!({"jsonrpc":"2.0","id":9,"method":"subscribe",
                   "params":{"channel":"seam","since":{"offset":3,"epoch":epoch}}}),
        );
        let out = collect_catch_up(&mut back, 9, "seam", last);
        assert_silent(&mut back, Duration::from_millis(200));
        out
    });
    let res = &reply["result"];
    assert_eq!(res["channel"], "seam", "{reply}");
    assert_eq!(res["epoch"], epoch.as_str(), "{reply}");
    assert_eq!(res["recovered"], true, "{reply}");
    assert!(res.get("missed").is_none(), "{reply}");
    let at = res["offset"].as_u64().unwrap();
    assert!((6..=last).contains(&at), "{reply}");
    let want: Vec<u64> = (4..=last).collect();
    assert_eq!(
        offsets(&pubs),
        want,
        "missed ones, then live ones: no gap, no duplicate"
    );
    for p in &pubs {
        assert_eq!(p["params"]["data"]["n"], p["params"]["offset"]);
    }
    // The steady subscriber saw everything once, in order.
    let mut seen = Vec::new();
    for _ in 0..last {
        seen.push(recv(&mut steady)["params"]["offset"].as_u64().unwrap());
    }
    assert_eq!(seen, (1..=last).collect::<Vec<_>>());
}

#[test]
fn since_with_unknown_epoch_is_not_recovered() {
    let server = Server::start(&[]);
    let mut steady = server.ws("/");
    let first = subscribe(&mut steady, "epochs");
    for n in 1..=2 {
        server.emit("epochs", json!(n));
    }
    let mut back = server.ws("/");
    let r = rpc(
        &mut back,
        3,
        "subscribe",
        json!({"channel":"epochs","since":{"offset":1,"epoch":"not-this-epoch"}}),
    );
    let res = &r["result"];
    assert_eq!(res["recovered"], false, "{r}");
    assert_eq!(res["epoch"], first["epoch"], "{r}");
    assert_ne!(res["epoch"], "not-this-epoch", "{r}");
    assert_eq!(res["offset"], 2, "{r}");
    // Live publications follow.
    server.emit("epochs", json!(3));
    loop {
        let m = recv(&mut back);
        assert_eq!(m["method"], "message", "{m}");
        if m["params"]["offset"] == 3 {
            break;
        }
    }
}

#[test]
fn since_past_the_history_ring_names_the_missed_range() {
    let server = Server::start(&["--history-size", "2"]);
    let mut steady = server.ws("/");
    let first = subscribe(&mut steady, "ring");
    let epoch = first["epoch"].as_str().unwrap().to_string();
    // The returning client saw 1..=3, then missed 4..=8; the ring holds 7, 8.
    for n in 1..=8 {
        server.emit("ring", json!({"n": n}));
    }
    let mut back = server.ws("/");
    send(
        &mut back,
        json!({"jsonrpc":"2.0","id":4,"method":"subscribe",
               "params":{"channel":"ring","since":{"offset":3,"epoch":epoch}}}),
    );
    let (reply, pubs) = collect_catch_up(&mut back, 4, "ring", 8);
    let res = &reply["result"];
    assert_eq!(res["recovered"], false, "{reply}");
    assert_eq!(res["missed"], json!({"from": 4, "to": 6}), "{reply}");
    assert_eq!(res["offset"], 8, "{reply}");
    assert_eq!(res["epoch"], epoch.as_str(), "{reply}");
    assert_eq!(offsets(&pubs), vec![7, 8], "what the ring still holds");
    assert_silent(&mut back, Duration::from_millis(200));
    server.emit("ring", json!({"n": 9}));
    assert_message(&recv(&mut back), "ring", 9);
}
