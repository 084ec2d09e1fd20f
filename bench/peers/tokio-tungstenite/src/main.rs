//! tokio-tungstenite peer for ringcast's end-to-end comparison: the
//! everyday Rust way to write a push server.
//!
//! Speaks the subset of ringcast's native protocol the load generator uses:
//! WebSocket JSON-RPC `subscribe`/`unsubscribe`, and `emit` on an HTTP
//! backend port, delivering `{"jsonrpc":"2.0","method":"message",...}` with
//! per-channel offsets from 1. A multi-threaded tokio runtime; one
//! `Mutex<HashMap>` of channel -> subscribers' bounded mpsc senders; each
//! connection has a writer task that feeds every queued message to the sink
//! and flushes once. The notification is serialized once and shared
//! (`Utf8Bytes` is reference-counted). A subscriber whose queue is full is
//! dropped (slow consumer).
//!
//! Usage: ringcast-peer-tokio-tungstenite [--ws-listen HOST:PORT]
//!        [--backend-listen HOST:PORT] [--threads N]
//! (or WS_LISTEN / BACKEND_LISTEN / TOKIO_WORKER_THREADS; defaults
//! 0.0.0.0:58000 / 127.0.0.1:59999 / one per CPU)

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames a connection may have queued before it counts as a slow consumer.
const QUEUE: usize = 4096;

struct Channel {
    offset: u64,
    subs: HashMap<u64, mpsc::Sender<Message>>,
}

struct Hub {
    channels: Mutex<HashMap<String, Channel>>,
    next_id: AtomicU64,
    next_conn: AtomicU64,
    epoch: String,
}

impl Hub {
    fn subscribe(&self, name: &str, conn: u64, tx: &mpsc::Sender<Message>) -> u64 {
        let mut channels = self.channels.lock().unwrap();
        let ch = channels.entry(name.to_owned()).or_insert_with(|| Channel {
            offset: 0,
            subs: HashMap::new(),
        });
        ch.subs.insert(conn, tx.clone());
        ch.offset
    }

    fn unsubscribe(&self, name: &str, conn: u64) {
        if let Some(ch) = self.channels.lock().unwrap().get_mut(name) {
            ch.subs.remove(&conn);
        }
    }

    fn emit(&self, name: &str, data: &Value) -> Value {
        let mut channels = self.channels.lock().unwrap();
        let ch = channels.entry(name.to_owned()).or_insert_with(|| Channel {
            offset: 0,
            subs: HashMap::new(),
        });
        ch.offset += 1;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let frame = json!({
            "jsonrpc": "2.0",
            "method": "message",
            "params": {"channel": name, "offset": ch.offset, "id": id, "data": data},
        })
        .to_string();
        let frame = Utf8Bytes::from(frame);
        ch.subs
            .retain(|_, tx| tx.try_send(Message::Text(frame.clone())).is_ok());
        json!({"offset": ch.offset, "id": id, "subscribers": ch.subs.len()})
    }

    fn total(&self, name: &str) -> usize {
        self.channels
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.subs.len())
    }
}

fn reply(id: &Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

fn error(id: &Value, code: i32, message: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()
}

fn channel_param(req: &Value) -> Option<&str> {
    req.pointer("/params/channel")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty() && c.len() <= 255)
}

async fn serve_ws(hub: Arc<Hub>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.feed(msg).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let conn = hub.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut mine = HashSet::new();
    while let Some(Ok(msg)) = source.next().await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(req) = serde_json::from_str::<Value>(&text) else {
            let _ = tx
                .send(Message::text(error(&Value::Null, -32700, "parse error")))
                .await;
            continue;
        };
        let id = req.get("id").cloned();
        let out = match (
            req.get("method").and_then(Value::as_str),
            channel_param(&req),
        ) {
            (Some("subscribe"), Some(ch)) => {
                let offset = hub.subscribe(ch, conn, &tx);
                mine.insert(ch.to_owned());
                reply(
                    &id.clone().unwrap_or_default(),
                    json!({"channel": ch, "offset": offset, "epoch": hub.epoch}),
                )
            }
            (Some("unsubscribe"), Some(ch)) => {
                hub.unsubscribe(ch, conn);
                mine.remove(ch);
                reply(&id.clone().unwrap_or_default(), json!({"channel": ch}))
            }
            (Some("subscribe" | "unsubscribe"), None) => {
                error(&id.clone().unwrap_or_default(), -32602, "invalid params")
            }
            (Some("heartbeat"), _) => {
                reply(&id.clone().unwrap_or_default(), json!({"heartbeat": "ok"}))
            }
            _ => error(&id.clone().unwrap_or_default(), -32601, "method not found"),
        };
        if id.is_some() && tx.send(Message::text(out)).await.is_err() {
            break;
        }
    }
    for ch in &mine {
        hub.unsubscribe(ch, conn);
    }
    drop(tx);
    let _ = writer.await;
}

fn backend_call(hub: &Hub, body: &[u8]) -> String {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return error(&Value::Null, -32700, "parse error");
    };
    let id = req.get("id").cloned().unwrap_or_default();
    match (
        req.get("method").and_then(Value::as_str),
        channel_param(&req),
    ) {
        (Some("emit"), Some(ch)) => {
            let data = req.pointer("/params/data").cloned().unwrap_or_default();
            reply(&id, hub.emit(ch, &data))
        }
        (Some("emit"), None) => error(&id, -32602, "invalid params"),
        (Some("total_subscribers"), ch) => {
            reply(&id, json!({"total": ch.map_or(0, |c| hub.total(c))}))
        }
        (Some("ping"), _) => reply(&id, json!({"ping": "ok"})),
        _ => error(&id, -32601, "method not found"),
    }
}

/// HTTP/1.1 keep-alive: `POST /` JSON-RPC, `GET /health`.
async fn serve_backend(hub: Arc<Hub>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(8192);
    loop {
        // Parse a complete request head + body out of `buf`.
        let (head_len, method, path, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let len = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| {
                            std::str::from_utf8(h.value)
                                .ok()?
                                .trim()
                                .parse::<usize>()
                                .ok()
                        })
                        .unwrap_or(0);
                    let method = req.method.unwrap_or("").to_owned();
                    let path = req.path.unwrap_or("").to_owned();
                    break (n, method, path, len);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => {
                    let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                    return;
                }
            }
            if read_more(&mut stream, &mut buf).await == 0 {
                return;
            }
        };
        while buf.len() < head_len + body_len {
            if read_more(&mut stream, &mut buf).await == 0 {
                return;
            }
        }
        let (status, body) = match (method.as_str(), path.as_str()) {
            ("POST", "/") => (
                "200 OK",
                backend_call(&hub, &buf[head_len..head_len + body_len]),
            ),
            ("GET", "/health") => ("200 OK", "ok".to_owned()),
            _ => ("404 Not Found", r#"{"error":"not found"}"#.to_owned()),
        };
        buf.drain(..head_len + body_len);
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            n
        }
        Err(_) => 0,
    }
}

fn arg(name: &str, env: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env).ok())
        .unwrap_or_else(|| default.to_owned())
}

fn main() -> std::io::Result<()> {
    let ws_addr = arg("--ws-listen", "WS_LISTEN", "0.0.0.0:58000");
    let backend_addr = arg("--backend-listen", "BACKEND_LISTEN", "127.0.0.1:59999");
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Ok(n) = arg("--threads", "TOKIO_WORKER_THREADS", "").parse::<usize>() {
        rt.worker_threads(n);
    }
    rt.build()?.block_on(async move {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let hub = Arc::new(Hub {
            channels: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(now_ms),
            next_conn: AtomicU64::new(0),
            epoch: format!("{:x}", now_ms),
        });
        let ws = TcpListener::bind(&ws_addr).await?;
        let backend = TcpListener::bind(&backend_addr).await?;
        println!("tokio-tungstenite peer: ws {ws_addr} backend {backend_addr}");
        let hub2 = hub.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = backend.accept().await {
                tokio::spawn(serve_backend(hub2.clone(), stream));
            }
        });
        loop {
            let (stream, _) = ws.accept().await?;
            tokio::spawn(serve_ws(hub.clone(), stream));
        }
    })
}
