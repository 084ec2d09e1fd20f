//! Engine configuration: one plain struct with `Default`, loaded from TOML,
//! `RINGCAST_*` environment variables and command-line flags (in increasing
//! precedence), validated once at start with an error naming the key.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which monoio driver each shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// io_uring, falling back to epoll with a warning when unavailable.
    Auto,
    /// io_uring only; start fails when it is unavailable.
    Uring,
    /// epoll only.
    Epoll,
}

/// What happens when a connection's queued outbound bytes pass
/// `max_outbound_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumerPolicy {
    /// Close with 1008 "slow consumer".
    Disconnect,
    /// Drop whole frames; the client sees a gap in offsets.
    Drop,
}

/// Client dialect spoken on the WebSocket port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// ringcast's JSON-RPC 2.0 protocol (SPEC section 3).
    Native,
    /// RocketWS's results and publication envelope.
    Rocketws,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// The whole engine configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Number of shards (one pinned thread each). `0` = one per CPU in the
    /// process's affinity mask.
    pub shards: usize,
    /// monoio driver. Default `auto`.
    pub driver: DriverKind,
    /// `info`, `debug`, ... Default `info`.
    pub log_level: String,
    /// Default `human`.
    pub log_format: LogFormat,
    /// Seconds to wait for clients to close on SIGTERM/SIGINT. Default 10.
    pub shutdown_timeout: u64,
    pub ws: WsConfig,
    pub backend: BackendConfig,
    pub limits: LimitsConfig,
    pub history: HistoryConfig,
}

/// `[ws]`: the WebSocket port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Listen address. Default `0.0.0.0:58000`.
    pub listen: SocketAddr,
    /// Listen backlog per shard. Default 4096.
    pub backlog: u32,
    /// Dialect for the whole port. Default `native`.
    pub dialect: Dialect,
    /// Allowed `Origin` header values; empty = any.
    pub allowed_origins: Vec<String>,
    /// Seconds between server pings. Default 25.
    pub ping_interval: u64,
    /// Seconds a client has to answer a ping. Default 10.
    pub pong_timeout: u64,
    /// Seconds a client has to finish the upgrade. Default 5.
    pub handshake_timeout: u64,
}

/// `[backend]`: the HTTP port backends publish through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// Listen address. Default `127.0.0.1:59999`.
    pub listen: SocketAddr,
    /// Bearer token / X-Api-Key required on every request but `/health`.
    /// Empty = no auth.
    pub api_token: String,
    /// Largest request body in bytes. Default 1 MiB.
    pub max_body: usize,
}

/// `[limits]`: per-connection limits (SPEC section 7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections per process; 0 = bounded only by the fd limit.
    pub max_connections: usize,
    /// Default 128.
    pub max_subscriptions_per_connection: usize,
    /// Largest client message in bytes (close 1009 past it). Default 64 KiB.
    pub max_message_size: usize,
    /// Token-bucket refill, requests per second. Default 100.
    pub rate_per_sec: u32,
    /// Token-bucket size. Default 200.
    pub rate_burst: u32,
    /// Queued outbound bytes per connection before the slow-consumer
    /// policy applies. Default 1 MiB.
    pub max_outbound_bytes: usize,
    /// Default `disconnect`.
    pub slow_consumer: SlowConsumerPolicy,
}

/// `[history]`: per-channel publication history kept by the home shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Publications kept per channel. Default 64; 0 = none.
    pub size: usize,
    /// Seconds a publication stays in history. Default 300.
    pub ttl: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            shards: 0,
            driver: DriverKind::Auto,
            log_level: "info".into(),
            log_format: LogFormat::Human,
            shutdown_timeout: 10,
            ws: WsConfig::default(),
            backend: BackendConfig::default(),
            limits: LimitsConfig::default(),
            history: HistoryConfig::default(),
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 58000)),
            backlog: 4096,
            dialect: Dialect::Native,
            allowed_origins: Vec::new(),
            ping_interval: 25,
            pong_timeout: 10,
            handshake_timeout: 5,
        }
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 59999)),
            api_token: String::new(),
            max_body: 1 << 20,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 0,
            max_subscriptions_per_connection: 128,
            max_message_size: 64 << 10,
            rate_per_sec: 100,
            rate_burst: 200,
            max_outbound_bytes: 1 << 20,
            slow_consumer: SlowConsumerPolicy::Disconnect,
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { size: 64, ttl: 300 }
    }
}

impl Config {
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ws.ping_interval)
    }
    pub fn pong_timeout(&self) -> Duration {
        Duration::from_secs(self.ws.pong_timeout)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.ws.handshake_timeout)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }
}
