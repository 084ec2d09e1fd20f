//! PostgreSQL as a message source (`[sources.postgres]`): LISTEN on the
//! configured channels and publish each NOTIFY. A payload
//! `{"channel": C, "data": D}` is published on ringcast channel C (D as
//! it is when a JSON string, else D's JSON text); any other payload is
//! published, as it is, on `sources.postgres.channel` (skipped when that
//! is empty). With `tuning/sql/rodan_notify.sql` a Rodan database
//! notifies its clients without Redis or plpython.
//!
//! Runs on a bridge thread of its own (current-thread tokio runtime);
//! reconnects with a doubling backoff (100 ms to 5 s) and LISTENs again
//! after the database restarts. NOTIFY is at most once: what is sent
//! while disconnected is lost, nothing is delivered twice.
#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

use super::SourceState;
use crate::runtime::shard::Node;

/// The ringcast channel and data of one NOTIFY payload, or `None` to skip.
pub fn route(payload: &str, raw_channel: &str) -> Option<(String, Bytes)> {
    if payload.starts_with('{') {
        if let Ok(serde_json::Value::Object(mut m)) = serde_json::from_str(payload) {
            if let (Some(serde_json::Value::String(c)), Some(d)) =
                (m.remove("channel"), m.remove("data"))
            {
                if m.is_empty() {
                    let data = match d {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    return Some((c, Bytes::from(data)));
                }
            }
        }
    }
    (!raw_channel.is_empty()).then(|| {
        (
            raw_channel.to_owned(),
            Bytes::copy_from_slice(payload.as_bytes()),
        )
    })
}

/// Starts the bridge thread.
pub fn start(node: Arc<Node>, state: Arc<SourceState>) -> std::io::Result<()> {
    super::spawn_bridge("postgres", move || run(node, state))
}

/// A LISTEN statement for `channel` (quoted as an identifier).
fn listen_sql(channel: &str) -> String {
    format!("LISTEN \"{}\"", channel.replace('"', "\"\""))
}

async fn run(node: Arc<Node>, state: Arc<SourceState>) {
    let cfg = &node.config.sources.postgres;
    let mut backoff = super::Backoff::default();
    let mut first = true;
    loop {
        let (client, mut connection) =
            match tokio_postgres::connect(&cfg.url, tokio_postgres::NoTls).await {
                Ok(c) => c,
                Err(e) => {
                    let delay = backoff.delay();
                    tracing::warn!("postgres source: cannot connect: {e}; retry in {delay:?}");
                    backoff.wait().await;
                    continue;
                }
            };
        let mut messages =
            futures_util::stream::poll_fn(move |cx| connection.poll_message(cx)).boxed();
        let listen = async {
            for ch in &cfg.listen {
                client.batch_execute(&listen_sql(ch)).await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        };
        // The connection must be polled for the LISTENs to complete.
        let mut listen = std::pin::pin!(listen);
        let listened = loop {
            tokio::select! {
                r = &mut listen => break r,
                m = messages.next() => if m.is_none() { break Ok(()) },
            }
        };
        if let Err(e) = listened {
            let delay = backoff.delay();
            tracing::warn!("postgres source: LISTEN failed: {e}; retry in {delay:?}");
            backoff.wait().await;
            continue;
        }
        if !first {
            state.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        backoff.reset();
        state.set_connected(true);
        tracing::info!("postgres source: listening on {:?}", cfg.listen);
        while let Some(m) = messages.next().await {
            let n = match m {
                Ok(AsyncMessage::Notification(n)) => n,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("postgres source: {e}");
                    break;
                }
            };
            match route(n.payload(), &cfg.channel) {
                Some((channel, data)) if crate::protocol::rpc::valid_channel(&channel) => {
                    if !super::publish(&node, &channel, data).await {
                        return;
                    }
                    state.messages.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    state.skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        state.set_connected(false);
        tracing::warn!("postgres source: connection lost; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_route_by_channel_or_to_the_raw_channel() {
        let (c, d) = route(r#"{"channel": "a", "data": {"x": 1}}"#, "").unwrap();
        assert_eq!((c.as_str(), &d[..]), ("a", &br#"{"x":1}"#[..]));
        let (c, d) = route(r#"{"channel":"a","data":"{\"s\": 1}"}"#, "").unwrap();
        assert_eq!((c.as_str(), &d[..]), ("a", &br#"{"s": 1}"#[..]));
        // Rodan's payload has no channel: raw, to the configured channel.
        let rodan = r#"{"status": "updated", "model": "workflowrun", "uuid": "00"}"#;
        let (c, d) = route(rodan, "rodan:broadcast:rodan").unwrap();
        assert_eq!(
            (c.as_str(), &d[..]),
            ("rodan:broadcast:rodan", rodan.as_bytes())
        );
        assert_eq!(route(rodan, ""), None);
        assert_eq!(route("plain", ""), None);
        assert_eq!(listen_sql("a\"b"), "LISTEN \"a\"\"b\"");
    }
}
