//! A second ringcast on the same ports refuses to start (SO_REUSEPORT
//! would otherwise let it take half of the first one's connections), and
//! the first keeps serving.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

#[test]
fn second_instance_on_the_same_ports_refuses_to_start() {
    let server = Server::start(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args([
            "serve",
            "--ws-listen",
            &server.ws.to_string(),
            "--backend-listen",
            &server.backend.to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is another ringcast running?") && err.contains("ws.listen"),
        "{err}"
    );

    let mut ws = server.ws("/");
    subscribe(&mut ws, "still-here");
    server.emit("still-here", json!(1));
    assert_eq!(recv(&mut ws)["params"]["data"], 1);
}
