//! Acknowledged publications are not lost at shutdown: with subscribers
//! reading and publications pipelined on one backend connection, SIGTERM
//! (right after the last acknowledgement, or with requests still being
//! answered) lets every publication acknowledged to the backend reach
//! every subscriber before its close 1001, and the backend gets a reply
//! for every request it had sent.

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::Message;

const SUBSCRIBERS: usize = 200;
const PUBLICATIONS: usize = 200;

/// Reads publications until the close frame: (publications, close code).
fn read_until_close(mut ws: Ws) -> (usize, Option<CloseCode>) {
    let mut n = 0;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                if v["method"] == "message" {
                    n += 1;
                }
            }
            Ok(Message::Close(f)) => return (n, f.map(|f| f.code)),
            Ok(_) => {}
            Err(_) => return (n, None),
        }
    }
}

/// One run: SIGTERM after `replies_before_term` replies were read.
fn run(replies_before_term: usize) {
    let mut server = Server::start(&[]);
    let mut subs: Vec<Ws> = (0..SUBSCRIBERS).map(|_| server.ws("/")).collect();
    for ws in &mut subs {
        subscribe(ws, "feed");
    }
    let readers: Vec<_> = subs
        .into_iter()
        .map(|ws| std::thread::spawn(move || read_until_close(ws)))
        .collect();

    let s = TcpStream::connect(server.backend).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut all = String::new();
    for i in 0..PUBLICATIONS {
        let body = json!({"jsonrpc":"2.0","id":i,"method":"emit",
                          "params":{"channel":"feed","data":{"n":i}}})
        .to_string();
        all.push_str(&format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    (&s).write_all(all.as_bytes()).unwrap();
    let mut r = BufReader::new(&s);
    let mut acked = 0;
    let mut read_reply = |acked: &mut usize| {
        let resp = read_http_response(&mut r);
        assert_eq!(resp.status, 200, "{resp:?}");
        let v: Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(v["result"]["subscribers"], SUBSCRIBERS, "{v}");
        *acked += 1;
    };
    for _ in 0..replies_before_term {
        read_reply(&mut acked);
    }
    server.terminate();
    // Every request was sent before the SIGTERM: each gets its reply.
    for _ in replies_before_term..PUBLICATIONS {
        read_reply(&mut acked);
    }
    assert_eq!(acked, PUBLICATIONS);

    let got: Vec<(usize, Option<CloseCode>)> =
        readers.into_iter().map(|t| t.join().unwrap()).collect();
    let short: Vec<_> = got
        .iter()
        .enumerate()
        .filter(|(_, &(n, code))| n != acked || code != Some(CloseCode::Away))
        .collect();
    assert!(
        short.is_empty(),
        "{} of {SUBSCRIBERS} subscribers missed acknowledged publications or close 1001 \
         (acked {acked}): {:?}",
        short.len(),
        &short[..short.len().min(5)]
    );
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
}

#[test]
fn acknowledged_publications_reach_every_subscriber_before_1001() {
    // SIGTERM right after the last acknowledgement (three times), and with
    // most of the pipelined requests still to be answered (twice).
    for replies_before_term in [PUBLICATIONS, 20, PUBLICATIONS, 100, PUBLICATIONS] {
        run(replies_before_term);
    }
}
