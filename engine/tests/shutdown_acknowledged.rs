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

/// Reads publications until the close frame: (publications, close code).
fn read_until_close(mut ws: Ws) -> (usize, Option<CloseCode>) {
    let mut n = 0;
    loop {
        match read_message(&mut ws) {
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

/// One run: `subscribers` reading, `publications` pipelined, SIGTERM
/// after `replies_before_term` replies were read.
fn run(subscribers: usize, publications: usize, replies_before_term: usize) {
    let mut server = Server::start(&[]);
    let mut subs: Vec<Ws> = (0..subscribers).map(|_| server.ws("/")).collect();
    for ws in &mut subs {
        subscribe(ws, "feed");
    }
    let readers: Vec<_> = subs
        .into_iter()
        .map(|ws| {
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || read_until_close(ws))
                .unwrap()
        })
        .collect();

    let s = TcpStream::connect(server.backend).unwrap();
    // Replies to a pipelined burst go out after the whole burst is served:
    // 500 cross-shard publishes to 2,000 reading threads take a while.
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut all = String::new();
    for i in 0..publications {
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
        // On a panic the test shows how far the replies got.
        println!("reading reply {acked}");
        let resp = read_http_response(&mut r);
        assert_eq!(resp.status, 200, "{resp:?}");
        let v: Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(v["result"]["subscribers"], subscribers, "{v}");
        *acked += 1;
    };
    for _ in 0..replies_before_term {
        read_reply(&mut acked);
    }
    println!("SIGTERM");
    server.terminate();
    // Every request was sent before the SIGTERM: each gets its reply.
    for _ in replies_before_term..publications {
        read_reply(&mut acked);
    }
    assert_eq!(acked, publications);

    let got: Vec<(usize, Option<CloseCode>)> =
        readers.into_iter().map(|t| t.join().unwrap()).collect();
    let short: Vec<_> = got
        .iter()
        .enumerate()
        .filter(|(_, &(n, code))| n != acked || code != Some(CloseCode::Away))
        .collect();
    assert!(
        short.is_empty(),
        "{} of {subscribers} subscribers missed acknowledged publications or close 1001 \
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
    for replies_before_term in [200, 20, 200, 100, 200] {
        run(200, 200, replies_before_term);
    }
}

/// The case from issue 16, run by hand (`--ignored`): 2,000 subscribers,
/// 500 publications, SIGTERM right after the last acknowledgement.
#[test]
#[ignore]
fn big_case_2000_subscribers_500_publications() {
    run(2000, 500, 500);
}

/// By hand: `SHUTDOWN_CASE=subscribers,publications,replies_before_term`.
#[test]
#[ignore]
fn case_from_env() {
    let case: Vec<usize> = std::env::var("SHUTDOWN_CASE")
        .unwrap_or_default()
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    if let [subscribers, publications, term] = case[..] {
        run(subscribers, publications, term);
    }
}
