//! `ws.client_publish = false` answers `send_data` with -32004 permission
//! denied and publishes nothing; subscribing still works.

mod common;

use common::*;
use serde_json::json;

#[test]
fn send_data_is_permission_denied_when_clients_may_not_publish() {
    let server = Server::start(&["--no-client-publish"]);
    let mut a = server.ws("/");
    let mut b = server.ws("/");
    subscribe(&mut a, "room");
    subscribe(&mut b, "room");
    let r = rpc(
        &mut a,
        7,
        "send_data",
        json!({"channel": "room", "data": {"x": 1}}),
    );
    assert_eq!(r["error"]["code"], -32004, "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("permission denied"));
    assert_silent(&mut b, std::time::Duration::from_millis(200));
    // The backend still publishes, and the connection stays usable.
    server.emit("room", json!({"from": "backend"}));
    assert_eq!(recv(&mut b)["params"]["data"]["from"], "backend");
    assert_eq!(recv(&mut a)["params"]["data"]["from"], "backend");
    assert_eq!(
        rpc(&mut a, 8, "heartbeat", json!(null))["result"]["heartbeat"],
        "ok"
    );
}

#[test]
fn client_publish_is_allowed_by_default() {
    let server = Server::start(&[]);
    let mut a = server.ws("/");
    let mut b = server.ws("/");
    subscribe(&mut a, "room");
    subscribe(&mut b, "room");
    let r = rpc(
        &mut a,
        7,
        "send_data",
        json!({"channel": "room", "data": 1}),
    );
    assert_eq!(r["result"]["subscribers"], 1, "{r}");
    assert_eq!(recv(&mut b)["params"]["data"], 1);
}
