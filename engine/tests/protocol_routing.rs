//! Protocols by URL path on the WebSocket port (`[protocols.*] path`): each
//! path speaks its protocol, everything else the port's dialect, and
//! `?dialect=` still chooses per connection. A bad path is refused at start.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

#[test]
fn each_path_speaks_its_protocol_and_a_publication_reaches_both_forms() {
    let server = Server::start_with(&[], &[("RINGCAST_PROTOCOLS_ROCKETWS_PATH", "/rocketws")]);
    let mut rocket = server.ws("/rocketws/lobby");
    let mut native = server.ws("/");
    let mut elsewhere = server.ws("/rocketwsx");
    let r = rpc(&mut rocket, 1, "subscribe", json!({"channel": "room"}));
    assert_eq!(r["result"], "subscribed", "{r}");
    assert_eq!(subscribe(&mut native, "room")["channel"], "room");
    assert_eq!(
        subscribe(&mut elsewhere, "room")["channel"],
        "room",
        "a path that only shares a prefix is not the protocol's"
    );
    server.emit("room", json!({"n": 1}));
    let got = recv(&mut rocket);
    assert_eq!(got["n"], 1, "{got}");
    assert_eq!(got["__type"], "message");
    assert_eq!(recv(&mut native)["params"]["data"]["n"], 1);
    assert_eq!(recv(&mut elsewhere)["params"]["data"]["n"], 1);
    // The query parameter still wins over the path.
    let mut forced = server.ws("/rocketws?dialect=native");
    assert_eq!(subscribe(&mut forced, "room")["channel"], "room");
}

#[test]
fn a_path_that_is_not_a_path_is_refused_at_start() {
    for (value, message) in [
        (
            "rocketws",
            "invalid config: protocols.rocketws.path: must be a URL path starting with / (got \"rocketws\")",
        ),
        (
            "/a?b=1",
            "invalid config: protocols.rocketws.path: must be a URL path starting with / (got \"/a?b=1\")",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["serve", "--ws-listen", "127.0.0.1:0", "--backend-listen", "127.0.0.1:0"])
            .env("RINGCAST_PROTOCOLS_ROCKETWS_PATH", value)
            .stdin(Stdio::null())
            .output()
            .expect("run ringcast");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
    }
}
