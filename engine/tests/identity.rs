//! Identity and access (issue 15) against the real engine, with real
//! signed tokens: every upgrade rejection with its status and reason,
//! `alg: none` and key confusion, `connect` / `refresh` / expiry close
//! codes, namespace rules (owner across two shards, groups, subscription
//! tokens, read-only, history off), presence across shards, and the
//! backend's `disconnect` / `unsubscribe` per user. A Python backend signs
//! a token with PyJWT.

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::Message;

const SECRET: &str = "identity-test-secret-32-bytes-ok";

fn keys() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn user(sub: &str) -> String {
    hs(json!({"sub": sub, "exp": now() + 600}))
}

/// A server with the config file `toml` (written to a temp file).
fn start(toml: &str, extra: &[&str]) -> Server {
    let dir = std::env::temp_dir().join(format!(
        "ringcast-identity-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ringcast.toml");
    std::fs::write(&path, toml).unwrap();
    let mut args = vec!["--config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

const NAMESPACES: &str = r#"
[[auth.namespaces]]
prefix = "user:"
subscribe = "owner"
presence = true

[[auth.namespaces]]
prefix = "staff:"
subscribe = "groups"
groups = ["staff"]

[[auth.namespaces]]
prefix = "vip:"
subscribe = "token"

[[auth.namespaces]]
prefix = "ro:"
publish = false
presence = true

[[auth.namespaces]]
prefix = "nohist:"
history = false

[[auth.namespaces]]
prefix = "room:"
presence = true
join_leave = true
"#;

fn secret_config(required: bool) -> String {
    format!("[auth]\nrequired = {required}\nhmac_secret = \"{SECRET}\"\n{NAMESPACES}")
}

/// The raw answer to an upgrade of `path` with `headers`: status and body.
fn upgrade(server: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(server.ws).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let resp = read_http_response(&mut r);
    (resp.status, resp.body)
}

fn ws_with_token(server: &Server, token: &str) -> Ws {
    server.ws(&format!("/?token={token}"))
}

/// The close frame's code and reason (skipping anything before it).
fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        match read_message(ws) {
            Ok(Message::Close(Some(c))) => return (u16::from(c.code), c.reason.to_string()),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

fn error_of(v: &Value) -> (i64, String) {
    let e = &v["error"];
    assert!(e.is_object(), "expected an error: {v}");
    (
        e["code"].as_i64().unwrap(),
        e["message"].as_str().unwrap().to_string(),
    )
}

fn b64(v: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

#[test]
fn every_upgrade_rejection_has_its_status_and_reason() {
    let server = start(&secret_config(true), &[]);
    // A good connection, before and after the bad ones.
    let mut good = ws_with_token(&server, &user("ann"));
    subscribe(&mut good, "room");

    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(format!(r#"{{"sub":"admin","exp":{}}}"#, now() + 60).as_bytes())
    );
    let wrong_secret = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "ann"}),
        &EncodingKey::from_secret(b"not the secret"),
    )
    .unwrap();
    let rs256 = encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "ann"}),
        &EncodingKey::from_rsa_pem(&std::fs::read(keys().join("rsa_private.pem")).unwrap())
            .unwrap(),
    )
    .unwrap();
    let cases = [
        (format!("/?token={none}"), "token algorithm not accepted"),
        (format!("/?token={}", rs256), "token algorithm not accepted"),
        (format!("/?token={wrong_secret}"), "invalid token signature"),
        (
            format!("/?token={}", hs(json!({"sub": "ann", "exp": now() - 1}))),
            "token expired",
        ),
        (
            format!("/?token={}", hs(json!({"sub": "ann", "nbf": now() + 600}))),
            "token not yet valid",
        ),
        (
            format!("/?token={}", hs(json!({"sub": 42}))),
            "invalid token claims",
        ),
        ("/?token=abc".to_string(), "invalid token"),
        ("/?dialect=rocketws".to_string(), "token required"),
    ];
    for (path, reason) in &cases {
        let (status, body) = upgrade(&server, path, &[]);
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body, format!(r#"{{"error":"{reason}"}}"#), "{path}");
    }
    // The same refusals for a token in Authorization: Bearer.
    let bearer = format!("Bearer {wrong_secret}");
    let (status, body) = upgrade(&server, "/", &[("Authorization", &bearer)]);
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"error":"invalid token signature"}"#)
    );
    let bearer = format!("Bearer {}", user("bob"));
    let (status, _) = upgrade(&server, "/", &[("Authorization", &bearer)]);
    assert_eq!(status, 101);
    let two = [
        ("Authorization", bearer.as_str()),
        ("Authorization", bearer.as_str()),
    ];
    let (status, body) = upgrade(&server, "/", &two);
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"error":"invalid token"}"#)
    );

    // The good connection is unaffected.
    server.emit("room", json!({"n": 1}));
    assert_eq!(recv(&mut good)["params"]["data"], json!({"n": 1}));
}

#[test]
fn key_confusion_with_the_rs256_public_key_is_refused() {
    let pem = keys().join("rsa_public.pem");
    let toml = format!(
        "[auth]\nrequired = true\npublic_key = {:?}\n",
        pem.to_str().unwrap()
    );
    let server = start(&toml, &[]);
    let public = std::fs::read(&pem).unwrap();
    // An attacker signs HS256 with the public key as the secret.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "admin"}),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    let (status, body) = upgrade(&server, &format!("/?token={forged}"), &[]);
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"error":"token algorithm not accepted"}"#)
    );
    let good = encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "ann", "exp": now() + 60}),
        &EncodingKey::from_rsa_pem(&std::fs::read(keys().join("rsa_private.pem")).unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut ws = ws_with_token(&server, &good);
    assert_eq!(
        rpc(&mut ws, 1, "heartbeat", json!({}))["result"],
        json!({"heartbeat": "ok"})
    );
}

#[test]
fn es256_tokens_through_a_jwks_file() {
    let jwks = keys().join("jwks.json");
    let toml = format!(
        "[auth]\nrequired = true\njwks = {:?}\n",
        jwks.to_str().unwrap()
    );
    let server = start(&toml, &[]);
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec-1".into());
    let t = encode(
        &h,
        &json!({"sub": "eve", "exp": now() + 60}),
        &EncodingKey::from_ec_pem(&std::fs::read(keys().join("ec_private.pem")).unwrap()).unwrap(),
    )
    .unwrap();
    let mut ws = ws_with_token(&server, &t);
    assert_eq!(
        rpc(&mut ws, 1, "heartbeat", json!({}))["result"],
        json!({"heartbeat": "ok"})
    );
}

#[test]
fn connect_first_or_close_4001() {
    let server = start(&secret_config(true), &["--handshake-timeout", "1"]);
    let mut ws = server.ws("/");
    let r = rpc(&mut ws, 1, "subscribe", json!({"channel": "room"}));
    assert_eq!(error_of(&r), (-32006, "unauthorized: connect first".into()));
    let expired = hs(json!({"sub": "ann", "exp": now() - 5}));
    let r = rpc(&mut ws, 2, "connect", json!({"token": expired}));
    assert_eq!(error_of(&r), (-32006, "unauthorized: token expired".into()));
    let r = rpc(&mut ws, 3, "connect", json!({"token": 5}));
    assert_eq!(error_of(&r).0, -32602);
    let exp = now() + 600;
    let r = rpc(
        &mut ws,
        4,
        "connect",
        json!({"token": hs(json!({"sub": "ann", "exp": exp}))}),
    );
    assert_eq!(r["result"], json!({"user": "ann", "exp": exp}));
    let r = rpc(&mut ws, 5, "connect", json!({"token": user("ann")}));
    assert_eq!(
        error_of(&r),
        (-32004, "permission denied: already connected".into())
    );
    subscribe(&mut ws, "room");

    // One that never connects is closed with 4001 after the timeout.
    let mut idle = server.ws("/");
    let t0 = Instant::now();
    assert_eq!(close_of(&mut idle), (4001, "unauthorized".into()));
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    // The connected one is unaffected.
    server.emit("room", json!(1));
    assert_eq!(recv(&mut ws)["params"]["data"], json!(1));
}

#[test]
fn expiry_closes_4003_unless_refreshed() {
    let server = start(&secret_config(false), &[]);
    let short = hs(json!({"sub": "ann", "exp": now() + 2}));
    let mut lazy = ws_with_token(&server, &short);
    let mut keen = ws_with_token(&server, &short);
    let r = rpc(&mut keen, 1, "refresh", json!({"token": user("bob")}));
    assert_eq!(
        error_of(&r),
        (
            -32006,
            "unauthorized: token is for another channel or user".into()
        )
    );
    let exp = now() + 600;
    let r = rpc(
        &mut keen,
        2,
        "refresh",
        json!({"token": hs(json!({"sub": "ann", "exp": exp}))}),
    );
    assert_eq!(r["result"], json!({"user": "ann", "exp": exp}));
    assert_eq!(close_of(&mut lazy), (4003, "token expired".into()));
    assert_eq!(
        rpc(&mut keen, 3, "heartbeat", json!({}))["result"],
        json!({"heartbeat": "ok"})
    );
    // Anonymous connections (auth not required) have nothing to expire.
    let mut anon = server.ws("/");
    let r = rpc(&mut anon, 1, "refresh", json!({"token": user("ann")}));
    assert_eq!(error_of(&r), (-32006, "unauthorized: connect first".into()));
}

/// Connections for `sub` until both shards hold at least one.
fn user_on_both_shards(server: &Server, sub: &str) -> Vec<Ws> {
    let mut out = Vec::new();
    let base = server.connections_per_shard();
    for _ in 0..200 {
        out.push(ws_with_token(server, &user(sub)));
        let now = server.connections_per_shard();
        if out.len() >= 2 && now.iter().zip(&base).all(|(n, b)| n > b) {
            return out;
        }
    }
    panic!("{sub}'s connections did not spread over both shards");
}

#[test]
fn namespace_rules_across_two_shards() {
    let server = start(&secret_config(false), &["--shards", "2"]);
    let mut anns = user_on_both_shards(&server, "ann");
    let mut bob = ws_with_token(&server, &user("bob"));
    let mut anon = server.ws("/");

    // Owner: every connection of ann, on both shards; nobody else.
    for ws in &mut anns {
        subscribe(ws, "user:ann");
    }
    let r = rpc(&mut bob, 1, "subscribe", json!({"channel": "user:ann"}));
    assert_eq!(
        error_of(&r),
        (
            -32004,
            "permission denied: only the channel's owner may subscribe".into()
        )
    );
    let r = rpc(&mut anon, 1, "subscribe", json!({"channel": "user:ann"}));
    assert_eq!(error_of(&r).0, -32004);
    let sent = server.emit("user:ann", json!({"dm": 1}));
    assert_eq!(sent["subscribers"], json!(anns.len()), "{sent}");
    for ws in &mut anns {
        assert_eq!(recv(ws)["params"]["data"], json!({"dm": 1}));
    }

    // Groups.
    let mut staff = ws_with_token(
        &server,
        &hs(json!({"sub": "sam", "groups": ["staff"], "exp": now() + 60})),
    );
    subscribe(&mut staff, "staff:room");
    let r = rpc(&mut bob, 2, "subscribe", json!({"channel": "staff:room"}));
    assert_eq!(
        error_of(&r),
        (
            -32004,
            "permission denied: not in a group allowed here".into()
        )
    );

    // Subscription tokens.
    let r = rpc(&mut bob, 3, "subscribe", json!({"channel": "vip:1"}));
    assert_eq!(
        error_of(&r),
        (
            -32004,
            "permission denied: a subscription token for this channel is required".into()
        )
    );
    let for_ann = hs(json!({"sub": "ann", "channel": "vip:1", "exp": now() + 60}));
    let r = rpc(
        &mut bob,
        4,
        "subscribe",
        json!({"channel": "vip:1", "token": for_ann}),
    );
    assert_eq!(
        error_of(&r),
        (
            -32006,
            "unauthorized: token is for another channel or user".into()
        )
    );
    let other = hs(json!({"sub": "bob", "channel": "vip:2", "exp": now() + 60}));
    let r = rpc(
        &mut bob,
        5,
        "subscribe",
        json!({"channel": "vip:1", "token": other}),
    );
    assert_eq!(error_of(&r).0, -32006);
    let expired = hs(json!({"sub": "bob", "channel": "vip:1", "exp": now() - 1}));
    let r = rpc(
        &mut bob,
        6,
        "subscribe",
        json!({"channel": "vip:1", "token": expired}),
    );
    assert_eq!(error_of(&r), (-32006, "unauthorized: token expired".into()));
    let ok = hs(json!({"sub": "bob", "channel": "vip:1", "exp": now() + 60}));
    let r = rpc(
        &mut bob,
        7,
        "subscribe",
        json!({"channel": "vip:1", "token": ok}),
    );
    assert_eq!(r["result"]["channel"], "vip:1", "{r}");
    // Anyone may use a token the backend signed without a user.
    let open = hs(json!({"sub": "", "channel": "vip:1"}));
    let r = rpc(
        &mut anon,
        2,
        "subscribe",
        json!({"channel": "vip:1", "token": open}),
    );
    assert_eq!(r["result"]["channel"], "vip:1", "{r}");

    // Read-only and history off; default channels as today.
    subscribe(&mut bob, "ro:news");
    let r = rpc(
        &mut bob,
        8,
        "send_data",
        json!({"channel": "ro:news", "data": 1}),
    );
    assert_eq!(
        error_of(&r),
        (
            -32004,
            "permission denied: clients may not publish here".into()
        )
    );
    let r = rpc(&mut bob, 9, "history", json!({"channel": "nohist:x"}));
    assert_eq!(
        error_of(&r),
        (-32004, "permission denied: history is off here".into())
    );
    subscribe(&mut anon, "lobby");
    subscribe(&mut bob, "lobby");
    let r = rpc(
        &mut anon,
        3,
        "send_data",
        json!({"channel": "lobby", "data": 2}),
    );
    assert_eq!(r["result"]["subscribers"], json!(1), "{r}");
    assert_eq!(recv(&mut bob)["params"]["data"], json!(2));
    // The token's own channel list narrows what it may join.
    let mut narrow = ws_with_token(
        &server,
        &hs(json!({"sub": "nat", "channels": ["lobby"], "exp": now() + 60})),
    );
    subscribe(&mut narrow, "lobby");
    let r = rpc(&mut narrow, 2, "subscribe", json!({"channel": "other"}));
    assert_eq!(
        error_of(&r),
        (
            -32004,
            "permission denied: the connection token does not allow this channel".into()
        )
    );
}

#[test]
fn presence_across_shards_and_per_user_backend_calls() {
    let server = start(&secret_config(false), &["--shards", "2"]);
    let mut anns = user_on_both_shards(&server, "ann");
    let mut bob = ws_with_token(
        &server,
        &hs(json!({"sub": "bob", "info": {"name": "Bob"}, "exp": now() + 600})),
    );
    for ws in anns.iter_mut().chain([&mut bob]) {
        subscribe(ws, "ro:room");
    }
    let p = server.call("presence", json!({"channel": "ro:room"}));
    let entries = p["presence"].as_object().unwrap();
    assert_eq!(entries.len(), anns.len() + 1, "{p}");
    let shards: std::collections::HashSet<&str> = entries
        .keys()
        .map(|k| k.split('.').next().unwrap())
        .collect();
    assert_eq!(shards.len(), 2, "subscribers on both shards: {p}");
    assert!(entries
        .values()
        .any(|e| e["user"] == "bob" && e["info"] == json!({"name": "Bob"})));
    assert_eq!(
        server.call("presence_stats", json!({"channel": "ro:room"})),
        json!({"num_clients": anns.len() + 1, "num_users": 2})
    );
    // Clients ask where the namespace allows it.
    let r = rpc(&mut bob, 5, "presence_stats", json!({"channel": "ro:room"}));
    assert_eq!(r["result"]["num_users"], json!(2), "{r}");
    let r = rpc(&mut bob, 6, "presence", json!({"channel": "lobby"}));
    assert_eq!(
        error_of(&r),
        (-32004, "permission denied: presence is off here".into())
    );
    // The backend too: nothing is kept for such a channel.
    let r = server.backend("presence", json!({"channel": "lobby"}));
    assert_eq!(
        r["error"],
        json!({"code": -32004, "message": "permission denied: presence is not kept here (set presence = true in the channel's namespace)"})
    );

    // unsubscribe {user, channel}: bob stops receiving, ann does not.
    let r = server.call("unsubscribe", json!({"user": "bob", "channel": "ro:room"}));
    assert_eq!(r, json!({"unsubscribed": 1}));
    server.emit("ro:room", json!("after"));
    for ws in &mut anns {
        assert_eq!(recv(ws)["params"]["data"], json!("after"));
    }
    assert_silent(&mut bob, Duration::from_millis(300));

    // disconnect {user}: all of ann's connections, on every shard, 4004.
    let r = server.call("disconnect", json!({"user": "ann"}));
    assert_eq!(r, json!({"disconnected": anns.len()}));
    for ws in &mut anns {
        assert_eq!(close_of(ws), (4004, "disconnected".into()));
    }
    assert_eq!(
        rpc(&mut bob, 7, "heartbeat", json!({}))["result"],
        json!({"heartbeat": "ok"})
    );
    assert_eq!(
        server.call("presence_stats", json!({"channel": "ro:room"})),
        json!({"num_clients": 0, "num_users": 0})
    );
    let bad = server.backend("disconnect", json!({"user": ""}));
    assert_eq!(
        bad["error"],
        json!({"code": -32602, "message": "invalid params: \"user\" must be a non-empty string"})
    );
}

#[test]
fn a_python_backend_signs_a_token_with_pyjwt() {
    let has = Command::new("python3")
        .args(["-c", "import jwt"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        skip_or_fail("python3 module `jwt` (PyJWT) is missing (pip install -r engine/tests/clients/requirements.txt)");
        return;
    }
    let server = start(&secret_config(true), &[]);
    let out = Command::new("python3")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/make_token.py"))
        .args([SECRET, "py-user"])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let mut ws = ws_with_token(&server, token.trim());
    subscribe(&mut ws, "user:py-user");
    let p = server.call("presence", json!({"channel": "user:py-user"}));
    let e = p["presence"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(e["user"], "py-user");
    assert_eq!(e["info"], json!({"name": "From Python"}));
}

#[test]
fn join_and_leave_events_reach_subscribers_on_both_shards() {
    let server = start(&secret_config(false), &["--shards", "2"]);
    let mut anns = user_on_both_shards(&server, "ann");
    for ws in &mut anns {
        subscribe(ws, "room:1");
    }
    let mut bob = ws_with_token(
        &server,
        &hs(json!({"sub": "bob", "info": {"name": "Bob"}, "exp": now() + 600})),
    );
    subscribe(&mut bob, "room:1");
    let n = anns.len();
    for (i, ws) in anns.iter_mut().enumerate() {
        // Joins of ann's later connections, then bob's.
        let mut last = Value::Null;
        for _ in 0..(n - 1 - i) + 1 {
            last = recv(ws);
            assert_eq!(last["method"], "join", "{last}");
        }
        assert_eq!(last["params"]["channel"], "room:1");
        assert_eq!(last["params"]["user"], "bob");
        assert_eq!(last["params"]["info"], json!({"name": "Bob"}));
    }
    drop(bob);
    for ws in &mut anns {
        let v = recv(ws);
        assert_eq!(v["method"], "leave", "{v}");
        assert_eq!(v["params"]["user"], "bob");
    }
    // Channels without join_leave get no events.
    let mut a = ws_with_token(&server, &user("ann"));
    subscribe(&mut a, "lobby");
    let mut b = server.ws("/");
    subscribe(&mut b, "lobby");
    assert_silent(&mut a, Duration::from_millis(300));
}

#[test]
fn user_channel_publications_reach_every_connection_of_the_user_on_both_shards() {
    let server = start(&secret_config(false), &["--shards", "2"]);
    let mut anns = user_on_both_shards(&server, "ann");
    // One of ann's connections also subscribed: it gets it once all the same.
    subscribe(&mut anns[0], "user:ann");
    let mut bob = ws_with_token(&server, &user("bob"));
    let mut anon = server.ws("/");
    server.emit("user:ann", json!("for ann"));
    for ws in &mut anns {
        let v = recv(ws);
        assert_eq!(v["params"]["channel"], "user:ann", "{v}");
        assert_eq!(v["params"]["data"], "for ann", "{v}");
    }
    for ws in anns.iter_mut().chain([&mut bob, &mut anon]) {
        assert_silent(ws, Duration::from_millis(200));
    }

    // unsubscribe {user, channel} on every shard: all of ann's
    // connections leave "lobby", bob stays.
    for ws in anns.iter_mut().chain([&mut bob]) {
        subscribe(ws, "lobby");
    }
    let r = server.call("unsubscribe", json!({"user": "ann", "channel": "lobby"}));
    assert_eq!(r, json!({"unsubscribed": anns.len()}));
    server.emit("lobby", json!("after"));
    assert_eq!(recv(&mut bob)["params"]["data"], "after");
    for ws in &mut anns {
        assert_silent(ws, Duration::from_millis(200));
    }
}
