//! Engine configuration: one plain struct with `Default`, loaded from TOML,
//! `RINGCAST_*` environment variables and command-line flags (in increasing
//! precedence), validated once at start with an error naming the key.
//!
//! [`Config::load`] merges the layers as TOML tables (defaults, then the
//! file, then the environment, then [`Overrides`] built from the flags by
//! [`crate::ops::cli`]) and deserializes the result once. Every value from a
//! layer is type-checked on its own as it is merged, so a bad value is
//! reported against the key, variable or flag it came from, on one line:
//!
//! ```text
//! invalid config: limits.max_message_size: must be at least 126 bytes (got 10)
//! invalid config: RINGCAST_WS_LISTEN: invalid socket address "abc" (expected HOST:PORT)
//! invalid config: ws.backlg: unknown key (in ringcast.toml)
//! ```
//!
//! Environment variables are `RINGCAST_` followed by the dotted key path
//! upper-cased with `.` replaced by `_` (`RINGCAST_SHARDS`,
//! `RINGCAST_WS_LISTEN`, `RINGCAST_LIMITS_MAX_MESSAGE_SIZE`, ...); lists
//! such as `ws.allowed_origins` are comma-separated. Any other `RINGCAST_*`
//! variable is an error, except the ones in [`RESERVED_ENV`]
//! (`RINGCAST_LOG`, a tracing filter directive, and `RINGCAST_CONFIG`, the
//! config file path read by the CLI).
//!
//! Addresses (`ws.listen`, `backend.listen`) accept `IP:PORT` or
//! `HOST:PORT`; a host name is resolved once at load time (IPv4 first).
//!
//! Each key is declared once, in a `config_section!` block: its doc comment
//! (which states its unit, bounds and default) and `pub name: Type =
//! default,`. That one declaration makes the struct field, its `Default`,
//! its environment variable, and its commented entry in
//! [`Config::default_toml`]. To add a key, add that line to its section;
//! to add a `[section]`, declare its struct with `config_section!` and add
//! it as a field of its parent (the field's doc comment heads the section).
//! A field of a new plain type (an enum, say) needs `impl ConfigValue for
//! Type {}`. Rules the types cannot express go in [`Config::validate`].
#![forbid(unsafe_code)]

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

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

/// What a node does with publications while the cluster bus (Redis) is
/// unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusLoss {
    /// Refuse them: `-32005 bus unavailable` (HTTP 503 where a protocol
    /// answers in HTTP).
    Refuse,
    /// Deliver them on this node only; offsets continue locally and
    /// clients recovering later are told of the gap.
    Local,
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

/// Whether the WebSocket port compresses messages (permessage-deflate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Decline every `permessage-deflate` offer.
    Off,
    /// Accept it; each publication form is compressed once and the same
    /// bytes go to every compressing subscriber.
    Shared,
}

/// Whose jobs a `jobs` connection sees and may kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobScope {
    /// Its own only (jobs belong to the connection that started them).
    Connection,
    /// Every connection's, as django-websockets' shared table.
    Global,
}

/// How `jobs` replies are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobReplies {
    /// JSON: `{"status":"Ok"}`.
    Json,
    /// django-websockets' Python reprs: `{'status':'Ok'}`.
    Python,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Declares a config section: the struct (with serde's `default` and
/// `deny_unknown_fields`), its `Default` and its [`ConfigValue::SECTION`]
/// from one list of fields, each written as its doc comment and
/// `pub name: Type = default,`.
///
/// A field's doc comment is the only description of its key: it is the
/// rustdoc and, line for line, the comment above the key in
/// [`Config::default_toml`]. A field whose type is itself declared here is
/// a `[section]`; its doc comment heads the section.
macro_rules! config_section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                pub $field:ident : $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($field: $default,)*
                }
            }
        }

        impl ConfigValue for $name {
            const SECTION: Option<&'static [KeyDoc]> = Some(&[$(
                KeyDoc {
                    name: stringify!($field),
                    doc: &[$($doc),*],
                    section: <$ty as ConfigValue>::SECTION,
                },
            )*]);
        }
    };
}

/// A type a config key can hold. Sections declared with `config_section!`
/// list their keys; every other type is a plain value (add an empty `impl`
/// for a new one).
trait ConfigValue {
    /// The keys of a section, in declaration order; `None` for a value.
    const SECTION: Option<&'static [KeyDoc]> = None;
}

impl ConfigValue for bool {}
impl ConfigValue for u32 {}
impl ConfigValue for u64 {}
impl ConfigValue for usize {}
impl ConfigValue for String {}
impl ConfigValue for SocketAddr {}
impl<T> ConfigValue for Vec<T> {}
impl<T> ConfigValue for Option<T> {}
impl ConfigValue for DriverKind {}
impl ConfigValue for SlowConsumerPolicy {}
impl ConfigValue for BusLoss {}
impl ConfigValue for Dialect {}
impl ConfigValue for LogFormat {}
impl ConfigValue for Compression {}
impl ConfigValue for JobScope {}
impl ConfigValue for JobReplies {}

/// One declared key: its name, its doc comment lines (as `#[doc]` holds
/// them, with a leading space) and, for a section, that section's keys.
#[derive(Debug)]
struct KeyDoc {
    name: &'static str,
    doc: &'static [&'static str],
    section: Option<&'static [KeyDoc]>,
}

config_section! {
    /// The whole engine configuration.
    pub struct Config {
        /// Number of shards, one pinned thread each. 0 = one per CPU the
        /// process may run on. At most 1024. Default 0.
        pub shards: usize = 0,
        /// Event-loop driver: `auto` (io_uring, falling back to epoll with a
        /// warning), `uring` (io_uring only) or `epoll`. Default `auto`.
        pub driver: DriverKind = DriverKind::Auto,
        /// Log level: `trace`, `debug`, `info`, `warn` or `error`
        /// (RINGCAST_LOG may hold a finer tracing filter). Default `info`.
        pub log_level: String = "info".into(),
        /// Log format: `human` or `json`. Default `human`.
        pub log_format: LogFormat = LogFormat::Human,
        /// Seconds to wait for clients to close on SIGTERM/SIGINT before
        /// exiting. At least 1. Default 10.
        pub shutdown_timeout: u64 = 10,
        /// The WebSocket port clients connect to.
        pub ws: WsConfig = WsConfig::default(),
        /// The HTTP port backends publish through.
        pub backend: BackendConfig = BackendConfig::default(),
        /// Per-connection limits on the WebSocket port (SPEC section 7).
        pub limits: LimitsConfig = LimitsConfig::default(),
        /// Per-channel publication history kept by the channel's home shard.
        pub history: HistoryConfig = HistoryConfig::default(),
        /// Which wire protocol serves which URL path of the WebSocket port.
        /// A connection on no configured path speaks `ws.dialect`;
        /// `?dialect=NAME` in the URL chooses for one connection.
        pub protocols: ProtocolsConfig = ProtocolsConfig::default(),
        /// Connection tokens (JWT) and channel namespaces with permissions
        /// (README, "Authentication and permissions").
        pub auth: AuthConfig = AuthConfig::default(),
        /// Message sources besides the backend port (Redis, ...).
        pub sources: SourcesConfig = SourcesConfig::default(),
        /// Cluster mode: several nodes sharing channels through Redis
        /// (docs/CLUSTER.md). Off unless `cluster.redis` is set.
        pub cluster: ClusterConfig = ClusterConfig::default(),
    }
}

config_section! {
    /// `[cluster]`: channels shared by several nodes through Redis 7.
    pub struct ClusterConfig {
        /// Redis URL of the bus: `redis://[:password@]host:port/db`, or
        /// `redis+cluster://host:port,host:port,...` for a Redis Cluster
        /// (sharded pub/sub); empty = cluster mode off (nothing changes,
        /// no Redis needed). Default empty.
        pub redis: String = String::new(),
        /// Replicas that must hold each publication before it is
        /// acknowledged (`WAIT n` after the publish script, on the
        /// channel's master); 0 = do not wait. Default 0.
        pub replicas_ack: u32 = 0,
        /// While Redis is unreachable: `refuse` publications (-32005 bus
        /// unavailable) or deliver them `local`ly only. Default refuse.
        pub on_bus_loss: BusLoss = BusLoss::Refuse,
        /// Seconds a channel's offset and epoch stay in Redis after its
        /// last publication or subscriber; at least `history.ttl`.
        /// Default 86400.
        pub channel_ttl: u64 = 86400,
        /// Seconds a node's share of the cluster-wide counts
        /// (`total_subscribers`, `available_channels`, `info`) outlives
        /// its last heartbeat; heartbeats go every third of it. At least
        /// 3. Default 6.
        pub node_ttl: u64 = 6,
    }
}

impl ClusterConfig {
    /// Whether cluster mode is on.
    pub fn enabled(&self) -> bool {
        !self.redis.is_empty()
    }

    fn validate(&self, history_ttl: u64) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        crate::cluster::wire::Target::parse(&self.redis)
            .map_err(|e| ConfigError::invalid("cluster.redis", e))?;
        if self.node_ttl < 3 {
            return Err(ConfigError::invalid(
                "cluster.node_ttl",
                format!("must be at least 3 s (got {})", self.node_ttl),
            ));
        }
        if self.channel_ttl < history_ttl.max(1) {
            return Err(ConfigError::invalid(
                "cluster.channel_ttl",
                format!(
                    "must be at least history.ttl ({history_ttl}) (got {})",
                    self.channel_ttl
                ),
            ));
        }
        Ok(())
    }
}

impl AuthConfig {
    /// The keys tokens are verified with (files read now).
    pub fn verifier(&self) -> Result<crate::access::Verifier, ConfigError> {
        crate::access::Verifier::from_config(&self.hmac_secret, &self.public_key, &self.jwks)
            .map_err(|(key, msg)| ConfigError::invalid(key, msg))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        use crate::access::SubscribeRule;
        let verifier = self.verifier()?;
        let signed = self
            .namespaces
            .iter()
            .any(|r| r.subscribe == SubscribeRule::Token);
        if (self.required || signed) && verifier.is_empty() {
            let key = if self.required {
                "auth.required"
            } else {
                "auth.namespaces"
            };
            return Err(ConfigError::invalid(
                key,
                "tokens need a key: set auth.hmac_secret, auth.public_key or auth.jwks",
            ));
        }
        for (i, r) in self.namespaces.iter().enumerate() {
            if r.subscribe == SubscribeRule::Groups && r.groups.is_empty() {
                return Err(ConfigError::invalid(
                    &format!("auth.namespaces[{i}].groups"),
                    format!(
                        "subscribe = \"groups\" needs a non-empty groups list (prefix {:?})",
                        r.prefix
                    ),
                ));
            }
            if self.namespaces[..i].iter().any(|o| o.prefix == r.prefix) {
                return Err(ConfigError::invalid(
                    &format!("auth.namespaces[{i}].prefix"),
                    format!("{:?} is given twice", r.prefix),
                ));
            }
        }
        Ok(())
    }
}

config_section! {
    /// `[auth]`: connection tokens and channel permissions.
    pub struct AuthConfig {
        /// Every WebSocket connection must present a valid token (`?token=`,
        /// `Authorization: Bearer`, or a first `connect` call on the native
        /// protocol); false keeps anonymous connections. Default false.
        pub required: bool = false,
        /// HS256 shared secret tokens are signed with; empty = none.
        /// Default empty.
        pub hmac_secret: String = String::new(),
        /// Path of a PEM public key (RSA for RS256, EC P-256 for ES256)
        /// tokens are signed for; empty = none. Default empty.
        pub public_key: String = String::new(),
        /// Path of a JWKS file (`{"keys":[...]}`, RS256/ES256 keys chosen
        /// by `kid`); empty = none. Default empty.
        pub jwks: String = String::new(),
        /// Channel namespaces, `[[auth.namespaces]]` tables: `prefix`,
        /// `subscribe` (`anyone`, `authenticated`, `owner`, `token`,
        /// `groups`), `groups`, `publish`, `history`, `presence`,
        /// `join_leave`. Channels no prefix names keep today's rules.
        /// Default empty.
        pub namespaces: Vec<crate::access::Rule> = Vec::new(),
    }
}

config_section! {
    /// `[sources]`: systems ringcast takes publications from.
    pub struct SourcesConfig {
        /// Redis pub/sub, as ws4redis uses it.
        pub redis: RedisSourceConfig = RedisSourceConfig::default(),
        /// An AMQP 0-9-1 broker (RabbitMQ), as DMOJ's AMQP event server
        /// uses it.
        pub amqp: AmqpSourceConfig = AmqpSourceConfig::default(),
        /// PostgreSQL LISTEN/NOTIFY.
        pub postgres: PostgresSourceConfig = PostgresSourceConfig::default(),
    }
}

config_section! {
    /// `[sources.amqp]`: publish what an AMQP exchange carries (DMOJ's
    /// and LQDOJ's `event_poster_amqp.py`, RocketWS's old source).
    pub struct AmqpSourceConfig {
        /// Take publications from the broker. Default false.
        pub enabled: bool = false,
        /// Broker URL: `amqp://user:pass@host:port/vhost` (vhost
        /// URL-encoded: `%2f` is `/`), or `amqps://` for TLS with the
        /// system's roots. DMOJ's `EVENT_DAEMON_AMQP`. Default
        /// `amqp://127.0.0.1:5672/%2f`.
        pub url: String = "amqp://127.0.0.1:5672/%2f".into(),
        /// Exchange to bind to (DMOJ's `EVENT_DAEMON_AMQP_EXCHANGE`).
        /// Default `dmoj-events`.
        pub exchange: String = "dmoj-events".into(),
        /// Type the exchange is declared with when it does not exist yet
        /// (`topic`, `fanout`, `direct`, `headers`); empty = do not declare
        /// it, it must exist. Default `topic`.
        pub exchange_type: String = "topic".into(),
        /// Binding key. Default `#` (every routing key, `''` included).
        pub binding_key: String = "#".into(),
        /// A named durable queue to consume; empty = an exclusive,
        /// auto-deleted queue per node, as DMOJ's event server binds.
        /// Default empty.
        pub queue: String = String::new(),
        /// Deliveries in flight, unacknowledged (basic.qos). 1..=65535.
        /// Default 256.
        pub prefetch: u32 = 256,
        /// Exchange rejected bodies are dead-lettered to (the queue's
        /// `x-dead-letter-exchange`); empty = rejected bodies are dropped.
        /// Default empty.
        pub dead_letter_exchange: String = String::new(),
        /// Publish each body as is on this one channel (RocketWS's old
        /// source) instead of reading DMOJ's
        /// `{"id":N,"channel":C,"message":M}`. Default empty.
        pub channel: String = String::new(),
    }
}

config_section! {
    /// `[sources.postgres]`: publish what PostgreSQL NOTIFYs carry.
    pub struct PostgresSourceConfig {
        /// Take publications from PostgreSQL. Default false.
        pub enabled: bool = false,
        /// Connection string (a `postgresql://` URL, or
        /// `host=... port=... user=... dbname=...`; no TLS). Default
        /// `postgresql://postgres@127.0.0.1/postgres`.
        pub url: String = "postgresql://postgres@127.0.0.1/postgres".into(),
        /// Channels to LISTEN on. Default `["ringcast"]`.
        pub listen: Vec<String> = vec!["ringcast".into()],
        /// Where a payload that is not `{"channel": C, "data": D}` is
        /// published (e.g. `rodan:broadcast:rodan`); empty = such payloads
        /// are skipped. Default empty.
        pub channel: String = String::new(),
    }
}

config_section! {
    /// `[sources.redis]`: publish what Redis channels carry (ws4redis's
    /// `WS4REDIS_CONNECTION`).
    pub struct RedisSourceConfig {
        /// Take publications from Redis. Default false.
        pub enabled: bool = false,
        /// Redis URL: `redis://[:password@]host:port/db`, or
        /// `redis+unix:///path?db=N`. Default `redis://127.0.0.1:6379/0`.
        pub url: String = "redis://127.0.0.1:6379/0".into(),
        /// Channel patterns to PSUBSCRIBE; each message is published on
        /// the ringcast channel of the same name. Empty = ws4redis's
        /// `{prefix}:broadcast:*`, `:user:*`, `:group:*`, `:session:*`
        /// with `protocols.ws4redis.prefix`. Default empty.
        pub patterns: Vec<String> = Vec::new(),
    }
}

config_section! {
    /// `[protocols]`: one sub-section per wire protocol.
    pub struct ProtocolsConfig {
        /// ringcast's JSON-RPC 2.0 protocol.
        pub native: ProtocolRoute = ProtocolRoute::default(),
        /// RocketWS's dialect (results, envelopes).
        pub rocketws: ProtocolRoute = ProtocolRoute::default(),
        /// DMOJ's event daemon (`websocket/daemon.js`): receivers, senders
        /// and long-poll, on DMOJ's own ports and on this port's paths.
        pub dmoj: DmojConfig = DmojConfig::default(),
        /// django-websockets' timed jobs (`request`, `kill`, `status`).
        pub jobs: JobsConfig = JobsConfig::default(),
        /// ws4redis (django-websocket-redis) endpoints, as Rodan uses them.
        pub ws4redis: Ws4redisConfig = Ws4redisConfig::default(),
        /// Socket.IO v4 (Engine.IO v4 over WebSocket) with LQDOJ's event
        /// daemon's events (`websocket/daemon.js` of LQDOJ).
        pub socketio: SocketIoConfig = SocketIoConfig::default(),
    }
}

config_section! {
    /// `[protocols.socketio]`: LQDOJ's Socket.IO event daemon, as a
    /// drop-in (Engine.IO v4 over WebSocket).
    pub struct SocketIoConfig {
        /// Serve Socket.IO: the path and listener below. Default false.
        pub enabled: bool = false,
        /// URL path on this port, with everything below it; empty = none.
        /// Default `/socket.io/`.
        pub path: String = "/socket.io/".into(),
        /// LQDOJ's own listener (every path speaks Socket.IO); IP:PORT or
        /// HOST:PORT, empty = none. Default `127.0.0.1:15100`.
        pub listen: String = "127.0.0.1:15100".into(),
        /// The token a `{role:"sender"}` connection must give in its
        /// CONNECT auth (Django's `EVENT_DAEMON_KEY`); empty = no sender
        /// is accepted. Default empty.
        pub token: String = String::new(),
        /// Milliseconds between the server's Engine.IO pings. At least
        /// 100. Default 25000.
        pub ping_interval: u64 = 25_000,
        /// Milliseconds a ping waits for its pong before the connection
        /// closes. At least 100. Default 300000 (LQDOJ's).
        pub ping_timeout: u64 = 300_000,
        /// Milliseconds a connection may take to join a namespace. At
        /// least 100. Default 45000.
        pub connect_timeout: u64 = 45_000,
        /// Client-role connections at once before `server-capacity`
        /// (LQDOJ's `max_connections`; senders not counted). Default 5000.
        pub max_clients: usize = 5000,
        /// Channels one `set-filter` may name. At least 1. Default 10.
        pub max_subscriptions: usize = 10,
    }
}

impl SocketIoConfig {
    /// LQDOJ's listener, if enabled and configured.
    pub fn listener(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let value = &self.listen;
        if !self.enabled || value.trim().is_empty() {
            return Ok(None);
        }
        value
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(Some)
            .ok_or_else(|| {
                ConfigError::invalid(
                    "protocols.socketio.listen",
                    format!(
                        "invalid socket address {value:?} (expected HOST:PORT, or empty for none)"
                    ),
                )
            })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.listener()?;
        for (key, v) in [
            ("protocols.socketio.ping_interval", self.ping_interval),
            ("protocols.socketio.ping_timeout", self.ping_timeout),
            ("protocols.socketio.connect_timeout", self.connect_timeout),
        ] {
            if v < 100 {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be at least 100 ms (got {v})"),
                ));
            }
        }
        if self.max_subscriptions < 1 {
            return Err(ConfigError::invalid(
                "protocols.socketio.max_subscriptions",
                "must be at least 1 (got 0)",
            ));
        }
        Ok(())
    }
}

config_section! {
    /// `[protocols.ws4redis]`: django-websocket-redis's endpoint
    /// (`/ws/<facility>?subscribe-broadcast&publish-broadcast&echo`).
    pub struct Ws4redisConfig {
        /// URL path (ws4redis's `WEBSOCKET_URL`); the rest of the request
        /// path is the facility. Empty = not served. Default `/ws/`.
        pub path: String = "/ws/".into(),
        /// Channel name prefix (`WS4REDIS_PREFIX`): channels are
        /// `{prefix}:broadcast:{facility}`, or `broadcast:{facility}` when
        /// empty. Default empty.
        pub prefix: String = String::new(),
        /// Seconds a client's publication is kept as its channel's last
        /// message, sent first to every (re)connecting subscriber
        /// (`WS4REDIS_EXPIRE`); 0 = none kept. Default 3600.
        pub expire: u64 = 3600,
        /// Heartbeat string (`WS4REDIS_HEARTBEAT`, Rodan's `--heartbeat--`):
        /// sent after every client message and after 4 s without one; a
        /// client message equal to it is never published. Empty = no
        /// heartbeats. Default empty.
        pub heartbeat: String = String::new(),
    }
}

config_section! {
    /// `[protocols.jobs]`: django-websockets' "REST using Websockets"
    /// timed jobs, as a drop-in.
    pub struct JobsConfig {
        /// URL path served, with everything below it; `/` serves every path
        /// no other protocol claims (the demo's page connects to the site
        /// root); empty = none. Default `/jobs`.
        pub path: String = "/jobs".into(),
        /// Longest job a client may request, in seconds (a longer `time`
        /// is refused with an error). 1..=86400. Default 3600.
        pub max_job_seconds: u64 = 3600,
        /// Jobs one connection may have running at once; a `request` past
        /// it is refused with an error and starts nothing. 1..=1000000.
        /// Default 1000.
        pub max_jobs_per_connection: usize = 1000,
        /// Whose jobs `status` lists and `kill` may stop: `connection`
        /// (the connection's own) or `global` (every connection's, as the
        /// demo's shared table). Default `connection`.
        pub scope: JobScope = JobScope::Connection,
        /// Reply style: `json` (`{"status":"Ok"}`) or `python` (the demo's
        /// exact Python reprs, `{'status':'Ok'}`). Default `json`.
        pub replies: JobReplies = JobReplies::Json,
    }
}

/// Longest accepted `protocols.jobs.max_job_seconds`: one day.
pub const MAX_JOB_SECONDS: u64 = 86_400;
/// Most accepted `protocols.jobs.max_jobs_per_connection`.
pub const MAX_JOBS_PER_CONNECTION: usize = 1_000_000;

config_section! {
    /// `[protocols.dmoj]`: DMOJ's event daemon, as a drop-in.
    pub struct DmojConfig {
        /// Serve the DMOJ protocol: the listeners and paths below. Off,
        /// none of them is served. Default false.
        pub enabled: bool = false,
        /// Receivers (browsers) on this port: URL path with everything
        /// below it; empty = none. Default `/event/`.
        pub path: String = "/event/".into(),
        /// Long-poll (plain HTTP `GET /channels/<a>|<b>?last=<id>`) on this
        /// port: URL path prefix; empty = none. Default `/channels/`.
        pub poll_path: String = "/channels/".into(),
        /// Receivers' own WebSocket listener (DMOJ's `get_port`), any
        /// path; IP:PORT or HOST:PORT, empty = none. Default
        /// `127.0.0.1:15100`.
        pub receivers: String = "127.0.0.1:15100".into(),
        /// Senders' WebSocket listener (DMOJ's `post_port`, used by
        /// `EVENT_DAEMON_POST`), any path; empty = none. Keep it on
        /// loopback or set `key`. Default `127.0.0.1:15101`.
        pub senders: String = "127.0.0.1:15101".into(),
        /// Long-poll HTTP listener (DMOJ's `http_port`); empty = none.
        /// Default `127.0.0.1:15102`.
        pub long_poll: String = "127.0.0.1:15102".into(),
        /// Key senders must give with `{"command":"auth","key":K}` before
        /// `post` (Django's `EVENT_DAEMON_KEY`); empty = no authentication.
        /// Default empty.
        pub key: String = String::new(),
        /// Seconds a long-poll waits for a message before answering 504
        /// `{"error": "timeout"}`. At least 1. Default 29.
        pub long_poll_timeout: u64 = 29,
        /// Messages kept for replay (DMOJ's `max_queue`): while enabled,
        /// each channel keeps at least this many (`history.size` is raised
        /// to it). Default 50.
        pub max_queue: usize = 50,
    }
}

impl DmojConfig {
    /// The listeners to open: (key, address) of each non-empty address,
    /// none when not enabled.
    pub fn listeners(&self) -> Result<Vec<(&'static str, SocketAddr)>, ConfigError> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (key, value) in [
            ("protocols.dmoj.receivers", &self.receivers),
            ("protocols.dmoj.senders", &self.senders),
            ("protocols.dmoj.long_poll", &self.long_poll),
        ] {
            if value.trim().is_empty() {
                continue;
            }
            let addr = value
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    ConfigError::invalid(
                        key,
                        format!("invalid socket address {value:?} (expected HOST:PORT, or empty for none)"),
                    )
                })?;
            out.push((key, addr));
        }
        Ok(out)
    }

    /// The public port's long-poll path prefix, if served.
    pub fn public_poll_path(&self) -> Option<&str> {
        (self.enabled && !self.poll_path.is_empty()).then_some(&*self.poll_path)
    }
}

config_section! {
    /// Where one protocol is served.
    pub struct ProtocolRoute {
        /// URL path served by this protocol, with everything below it
        /// (e.g. `/rocketws` also serves `/rocketws/x`); must start with `/`
        /// and differ from the other protocols' paths; empty = none.
        /// Default empty.
        pub path: String = String::new(),
    }
}

config_section! {
    /// `[ws]`: the WebSocket port.
    pub struct WsConfig {
        /// Listen address, IP:PORT or HOST:PORT. Default `0.0.0.0:58000`.
        pub listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 58000)),
        /// Listen backlog per shard, 1..=65535. Default 4096.
        pub backlog: u32 = 4096,
        /// Client dialect for the whole port: `native` (JSON-RPC 2.0) or
        /// `rocketws` (RocketWS results and envelopes). Default `native`.
        pub dialect: Dialect = Dialect::Native,
        /// Allowed `Origin` header values, e.g. ["https://example.com"];
        /// empty = any. Default empty.
        pub allowed_origins: Vec<String> = Vec::new(),
        /// Seconds between server pings. At least 1. Default 25.
        pub ping_interval: u64 = 25,
        /// Seconds a client has to answer a ping before it is closed. At
        /// least 1. Default 10.
        pub pong_timeout: u64 = 10,
        /// Seconds a client has to finish the WebSocket upgrade. At least 1.
        /// Default 5.
        pub handshake_timeout: u64 = 5,
        /// Whether clients may publish to channels they are subscribed to
        /// with `send_data`; false answers `send_data` with -32004
        /// permission denied. Default true.
        pub client_publish: bool = true,
        /// permessage-deflate (RFC 7692): `off` declines it; `shared`
        /// accepts it and compresses each publication once, the same
        /// bytes for every compressing subscriber. Default `off`.
        pub compression: Compression = Compression::Off,
        /// Publications whose payload is smaller than this many bytes go
        /// out uncompressed even to compressing clients. Default 256.
        pub compression_min_size: usize = 256,
    }
}

config_section! {
    /// `[backend]`: the HTTP port backends publish through.
    pub struct BackendConfig {
        /// Listen address, IP:PORT or HOST:PORT; must differ from
        /// `ws.listen`. Default `127.0.0.1:59999`.
        pub listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 59999)),
        /// Token required as `Authorization: Bearer TOKEN` or
        /// `X-Api-Key: TOKEN` on every request but `GET /health`. Empty = no
        /// authentication. Default empty.
        pub api_token: String = String::new(),
        /// Allow `listen` on a non-loopback address with no `api_token`
        /// (anyone who reaches the port may then publish to every client).
        /// Without it such a config refuses to start. Default false.
        pub insecure: bool = false,
        /// Largest request body in bytes (413 past it). At least 1024.
        /// Default 1048576 (1 MiB).
        pub max_body: usize = 1 << 20,
        /// Seconds a backend connection may stay open with no input (idle
        /// between requests, or a request stalled part-way, which gets 408)
        /// before it is closed. At least 1. Default 60.
        pub idle_timeout: u64 = 60,
    }
}

config_section! {
    /// `[limits]`: per-connection limits (SPEC section 7).
    pub struct LimitsConfig {
        /// Connections per process. 0 = bounded only by the file-descriptor
        /// limit. Default 0.
        pub max_connections: usize = 0,
        /// Channels one connection may subscribe to. At least 1.
        /// Default 128.
        pub max_subscriptions_per_connection: usize = 128,
        /// Largest client message in bytes; past it the connection is closed
        /// with 1009. 126..=67108864 (64 MiB). Default 65536 (64 KiB).
        pub max_message_size: usize = 64 << 10,
        /// Client requests per second (token-bucket refill). At least 1.
        /// Default 100.
        pub rate_per_sec: u32 = 100,
        /// Client request burst (token-bucket size). At least 1. Default 200.
        pub rate_burst: u32 = 200,
        /// Bytes queued for one connection before the slow-consumer policy
        /// applies. At least 1024. Default 1048576 (1 MiB).
        pub max_outbound_bytes: usize = 1 << 20,
        /// What happens past `max_outbound_bytes`: `disconnect` (close 1008
        /// "slow consumer") or `drop` (drop whole publications; the client
        /// sees a gap in offsets). Replies, errors and pongs count against
        /// the budget too: past it they close the connection under
        /// `disconnect`; under `drop` they are kept and the server stops
        /// reading from the client until its queue is back under budget.
        /// Default `disconnect`.
        pub slow_consumer: SlowConsumerPolicy = SlowConsumerPolicy::Disconnect,
        /// Kernel send buffer (`SO_SNDBUF`) of each WebSocket connection,
        /// in bytes: what a slow consumer can hold in the kernel on top of
        /// `max_outbound_bytes` (Linux doubles the value for its own
        /// bookkeeping and stops auto-tuning it). 0 = the kernel default,
        /// auto-tuned up to the `net.ipv4.tcp_wmem` maximum (4 MiB and
        /// more), which lets a consumer fall that far behind unnoticed.
        /// 0 or 4096..=67108864 (64 MiB). Default 65536 (64 KiB).
        pub socket_send_buffer: usize = 64 << 10,
        /// Most calls in one JSON-RPC batch from a client; a longer batch
        /// is answered with one -32600 error. At least 1. Default 100.
        pub max_batch_length: usize = 100,
        /// Messages a shard's cross-shard mailbox holds before a publish
        /// sent to it (or causing deliveries to it) is refused with
        /// "overloaded: try again" (JSON-RPC -32005). Deliveries and acks
        /// are never refused. At least 1024. Default 65536.
        pub mailbox_capacity: usize = 1 << 16,
    }
}

config_section! {
    /// `[history]`: per-channel publication history kept by the home shard.
    pub struct HistoryConfig {
        /// Publications kept per channel. 0 = none; at most 1000000.
        /// Default 64.
        pub size: usize = 64,
        /// Seconds a publication stays in history. Default 300.
        pub ttl: u64 = 300,
    }
}

impl SourcesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.redis;
        let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
        if r.enabled && !schemes.iter().any(|s| r.url.starts_with(s)) {
            return Err(ConfigError::invalid(
                "sources.redis.url",
                format!(
                    "must be a redis://, rediss://, redis+unix:// or unix:// URL (got {:?})",
                    r.url
                ),
            ));
        }
        let a = &self.amqp;
        if a.enabled {
            if !["amqp://", "amqps://"].iter().any(|s| a.url.starts_with(s)) {
                return Err(ConfigError::invalid(
                    "sources.amqp.url",
                    format!("must be an amqp:// or amqps:// URL (got {:?})", a.url),
                ));
            }
            if a.exchange.is_empty() {
                return Err(ConfigError::invalid(
                    "sources.amqp.exchange",
                    "must name the exchange the poster publishes to (got \"\")",
                ));
            }
            let types = ["", "topic", "fanout", "direct", "headers"];
            if !types.contains(&a.exchange_type.as_str()) {
                return Err(ConfigError::invalid(
                    "sources.amqp.exchange_type",
                    format!(
                        "must be topic, fanout, direct, headers or empty (got {:?})",
                        a.exchange_type
                    ),
                ));
            }
            if a.prefetch == 0 || a.prefetch > u32::from(u16::MAX) {
                return Err(ConfigError::invalid(
                    "sources.amqp.prefetch",
                    format!("must be 1 to 65535 (got {})", a.prefetch),
                ));
            }
            if !a.channel.is_empty() && !crate::protocol::rpc::valid_channel(&a.channel) {
                return Err(ConfigError::invalid(
                    "sources.amqp.channel",
                    format!("is not a valid channel name (got {:?})", a.channel),
                ));
            }
        }
        Ok(())
    }
}

impl ProtocolsConfig {
    /// Every protocol's path key and value, for validation and routing.
    pub fn paths(&self) -> [(&'static str, &str); 7] {
        let on = self.dmoj.enabled;
        let sio = self.socketio.enabled;
        [
            ("protocols.native.path", &self.native.path),
            ("protocols.rocketws.path", &self.rocketws.path),
            ("protocols.dmoj.path", if on { &self.dmoj.path } else { "" }),
            (
                "protocols.dmoj.poll_path",
                if on { &self.dmoj.poll_path } else { "" },
            ),
            ("protocols.jobs.path", &self.jobs.path),
            ("protocols.ws4redis.path", &self.ws4redis.path),
            (
                "protocols.socketio.path",
                if sio { &self.socketio.path } else { "" },
            ),
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.dmoj.listeners()?;
        self.socketio.validate()?;
        if let Some(addr) = self.socketio.listener()? {
            if let Some((key, _)) = self.dmoj.listeners()?.into_iter().find(|&(_, a)| a == addr) {
                return Err(ConfigError::invalid(
                    "protocols.socketio.listen",
                    format!("must differ from {key} (both are {addr}; set one of them to \"\")"),
                ));
            }
        }
        if self.dmoj.long_poll_timeout < 1 {
            return Err(ConfigError::invalid(
                "protocols.dmoj.long_poll_timeout",
                format!("must be at least 1 s (got {})", self.dmoj.long_poll_timeout),
            ));
        }
        let jobs = &self.jobs;
        if !(1..=MAX_JOB_SECONDS).contains(&jobs.max_job_seconds) {
            return Err(ConfigError::invalid(
                "protocols.jobs.max_job_seconds",
                format!(
                    "must be 1..={MAX_JOB_SECONDS} s (got {})",
                    jobs.max_job_seconds
                ),
            ));
        }
        if !(1..=MAX_JOBS_PER_CONNECTION).contains(&jobs.max_jobs_per_connection) {
            return Err(ConfigError::invalid(
                "protocols.jobs.max_jobs_per_connection",
                format!(
                    "must be 1..={MAX_JOBS_PER_CONNECTION} (got {})",
                    jobs.max_jobs_per_connection
                ),
            ));
        }
        let paths = self.paths();
        for (i, (key, path)) in paths.iter().enumerate() {
            if path.is_empty() {
                continue;
            }
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be a URL path starting with / (got {path:?})"),
                ));
            }
            let trimmed = path.trim_end_matches('/');
            if let Some((other, _)) = paths[..i]
                .iter()
                .find(|(_, p)| !p.is_empty() && p.trim_end_matches('/') == trimmed)
            {
                return Err(ConfigError::invalid(
                    key,
                    format!("must differ from {other} (both are {path:?})"),
                ));
            }
        }
        Ok(())
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
    pub fn backend_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.backend.idle_timeout)
    }
    /// Publications kept per channel: `history.size`, raised to
    /// `protocols.dmoj.max_queue` while DMOJ is enabled.
    pub fn history_size(&self) -> usize {
        let d = &self.protocols.dmoj;
        if d.enabled {
            self.history.size.max(d.max_queue.min(MAX_HISTORY_SIZE))
        } else {
            self.history.size
        }
    }
}

/// Prefix of the environment variables [`Config::load`] reads.
pub const ENV_PREFIX: &str = "RINGCAST_";

/// `RINGCAST_*` variables that are not config keys and that
/// [`Config::load`] ignores: `RINGCAST_LOG` (a `tracing` filter directive
/// that refines `log_level`) and `RINGCAST_CONFIG` (the config file path,
/// read by the CLI as the default of `--config`).
pub const RESERVED_ENV: &[&str] = &["RINGCAST_LOG", "RINGCAST_CONFIG"];

/// Config keys whose value is a socket address.
const ADDRESS_KEYS: &[&str] = &["ws.listen", "backend.listen"];

/// Accepted values of `log_level`.
pub const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// Smallest nonzero `limits.socket_send_buffer`: 4 KiB.
pub const MIN_SOCKET_BUFFER: usize = 4 << 10;
/// Largest accepted `limits.socket_send_buffer`: 64 MiB.
pub const MAX_SOCKET_BUFFER: usize = 64 << 20;

/// Smallest accepted `limits.max_message_size` (the largest payload a
/// 7-bit WebSocket length can carry, plus one).
pub const MIN_MESSAGE_SIZE: usize = 126;
/// Largest accepted `limits.max_message_size`: 64 MiB.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;
/// Largest accepted `shards`.
pub const MAX_SHARDS: usize = 1024;
/// Largest accepted `history.size`.
pub const MAX_HISTORY_SIZE: usize = 1_000_000;

/// Why a configuration was rejected. Every variant displays as one line
/// starting with `invalid config:` and naming the key, environment
/// variable or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("invalid config: cannot read {}: {}", path.display(), one_line(&source.to_string()))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("invalid config: {}:{line}:{column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// 1-based, in characters.
        column: usize,
        message: String,
    },
    /// A key in the config file is unknown or has a value of the wrong type.
    #[error("invalid config: {key}: {message} (in {})", path.display())]
    File {
        path: PathBuf,
        /// Dotted key path, e.g. `ws.listen`.
        key: String,
        message: String,
    },
    /// A `RINGCAST_*` variable is unknown or has an unusable value.
    #[error("invalid config: {var}: {message}")]
    Env { var: String, message: String },
    /// A command-line flag has an unusable value.
    #[error("invalid config: {flag}: {message}")]
    Flag { flag: String, message: String },
    /// The merged configuration breaks a rule of [`Config::validate`].
    #[error("invalid config: {key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// Process exit code for a configuration error (SPEC section 2).
    pub const EXIT_CODE: i32 = 2;

    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Values set by command-line flags, the highest-precedence layer of
/// [`Config::load`]. Built by [`crate::ops::cli::ServeArgs::overrides`]; tests
/// and embedders may build their own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    entries: Vec<Override>,
}

#[derive(Debug, Clone, PartialEq)]
struct Override {
    flag: String,
    key: String,
    value: Value,
}

impl Overrides {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the dotted config `key` to `value`; errors name `flag`
    /// (e.g. `--shards`). A later `set` of the same key wins.
    pub fn set(
        &mut self,
        flag: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) {
        self.entries.push(Override {
            flag: flag.into(),
            key: key.into(),
            value: value.into(),
        });
    }

    /// Whether no flag was set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Where a layer's value came from, for error messages.
#[derive(Clone, Copy)]
enum Origin<'a> {
    File(&'a Path),
    Env(&'a str),
    Flag(&'a str),
}

impl Origin<'_> {
    fn error(self, key: &str, message: impl Into<String>) -> ConfigError {
        let message = one_line(&message.into());
        match self {
            Origin::File(path) => ConfigError::File {
                path: path.to_owned(),
                key: key.to_owned(),
                message,
            },
            Origin::Env(var) => ConfigError::Env {
                var: var.to_owned(),
                message,
            },
            Origin::Flag(flag) => ConfigError::Flag {
                flag: flag.to_owned(),
                message,
            },
        }
    }
}

/// Collapses all whitespace runs (including newlines) into single spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Config {
    /// Loads the configuration: defaults, overlaid by the TOML `file` (if
    /// any), by the `RINGCAST_*` variables in `env` (other variables are
    /// ignored), by `overrides`; then [`validate`](Self::validate)s it.
    ///
    /// `env` is usually `std::env::vars()`; passing it in keeps this
    /// function pure for tests.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let schema = defaults_table();
        let mut merged = schema.clone();

        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            merge_file(&mut merged, &schema, path, &text)?;
        }

        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .filter(|(name, _)| !RESERVED_ENV.contains(&name.as_str()))
            .collect();
        vars.sort();
        if !vars.is_empty() {
            let keys = env_keys(&schema);
            for (var, raw) in &vars {
                let origin = Origin::Env(var);
                let Some((key, default)) = keys
                    .iter()
                    .find(|(name, _, _)| name == var)
                    .map(|(_, k, d)| (k, d))
                else {
                    return Err(origin.error(
                        var,
                        "unknown setting (`ringcast config --print-default` lists the keys)",
                    ));
                };
                let value = env_value(default, raw).map_err(|m| origin.error(key, m))?;
                set_leaf(&mut merged, &schema, key, value, origin)?;
            }
        }

        for o in &overrides.entries {
            set_leaf(
                &mut merged,
                &schema,
                &o.key,
                o.value.clone(),
                Origin::Flag(&o.flag),
            )?;
        }

        let config: Config = merged
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::invalid("config", e.message()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules the types cannot express; the error names the
    /// first key that breaks one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn at_least<T: PartialOrd + std::fmt::Display>(
            key: &str,
            value: T,
            min: T,
            unit: &str,
        ) -> Result<(), ConfigError> {
            if value < min {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be at least {min}{unit} (got {value})"),
                ));
            }
            Ok(())
        }
        fn at_most<T: PartialOrd + std::fmt::Display>(
            key: &str,
            value: T,
            max: T,
            unit: &str,
        ) -> Result<(), ConfigError> {
            if value > max {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be at most {max}{unit} (got {value})"),
                ));
            }
            Ok(())
        }

        at_most("shards", self.shards, MAX_SHARDS, "")?;
        if !LOG_LEVELS
            .iter()
            .any(|l| l.eq_ignore_ascii_case(self.log_level.trim()))
        {
            return Err(ConfigError::invalid(
                "log_level",
                format!(
                    "must be one of {} (got {:?})",
                    LOG_LEVELS.join(", "),
                    self.log_level
                ),
            ));
        }
        at_least("shutdown_timeout", self.shutdown_timeout, 1, " s")?;

        let ws = &self.ws;
        at_least("ws.backlog", ws.backlog, 1, "")?;
        at_most("ws.backlog", ws.backlog, 65535, "")?;
        at_least("ws.ping_interval", ws.ping_interval, 1, " s")?;
        at_least("ws.pong_timeout", ws.pong_timeout, 1, " s")?;
        at_least("ws.handshake_timeout", ws.handshake_timeout, 1, " s")?;

        let b = &self.backend;
        if addresses_clash(ws.listen, b.listen) {
            return Err(ConfigError::invalid(
                "backend.listen",
                format!(
                    "must differ from ws.listen (both use {} and {})",
                    b.listen, ws.listen
                ),
            ));
        }
        at_least("backend.max_body", b.max_body, 1024, " bytes")?;
        at_least("backend.idle_timeout", b.idle_timeout, 1, " s")?;
        self.protocols.validate()?;
        self.sources.validate()?;
        self.cluster.validate(self.history.ttl)?;

        let l = &self.limits;
        at_least(
            "limits.max_subscriptions_per_connection",
            l.max_subscriptions_per_connection,
            1,
            "",
        )?;
        at_least(
            "limits.max_message_size",
            l.max_message_size,
            MIN_MESSAGE_SIZE,
            " bytes",
        )?;
        at_most(
            "limits.max_message_size",
            l.max_message_size,
            MAX_MESSAGE_SIZE,
            " bytes",
        )?;
        at_least("limits.rate_per_sec", l.rate_per_sec, 1, "")?;
        at_least("limits.rate_burst", l.rate_burst, 1, "")?;
        at_least(
            "limits.max_outbound_bytes",
            l.max_outbound_bytes,
            1024,
            " bytes",
        )?;
        at_least("limits.max_batch_length", l.max_batch_length, 1, "")?;
        if (1..MIN_SOCKET_BUFFER).contains(&l.socket_send_buffer) {
            return Err(ConfigError::invalid(
                "limits.socket_send_buffer",
                format!(
                    "must be 0 (the kernel default) or at least {MIN_SOCKET_BUFFER} bytes (got {})",
                    l.socket_send_buffer
                ),
            ));
        }
        at_most(
            "limits.socket_send_buffer",
            l.socket_send_buffer,
            MAX_SOCKET_BUFFER,
            " bytes",
        )?;
        at_least("limits.mailbox_capacity", l.mailbox_capacity, 1024, "")?;

        at_most("history.size", self.history.size, MAX_HISTORY_SIZE, "")?;
        self.auth.validate()?;
        // Last: a config with other errors names those first.
        if self.backend.api_token.is_empty()
            && !self.backend.listen.ip().is_loopback()
            && !self.backend.insecure
        {
            // The backend port publishes to every client and reads every
            // channel: open to the network without a token, anyone who
            // reaches it can.
            return Err(ConfigError::invalid(
                "backend.api_token",
                format!(
                    "required when backend.listen ({}) is not a loopback address: \
                     set a token (--api-token), listen on 127.0.0.1, or accept an \
                     unauthenticated backend with backend.insecure = true \
                     (--insecure-backend)",
                    self.backend.listen
                ),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML (no comments), e.g. for
    /// `ringcast config --check`. Contains `backend.api_token`; see
    /// [`redacted`](Self::redacted).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// A copy with secrets (`backend.api_token`) replaced by `"<redacted>"`
    /// when set, for printing and logging.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if !c.auth.hmac_secret.is_empty() {
            c.auth.hmac_secret = "<redacted>".into();
        }
        if !c.backend.api_token.is_empty() {
            c.backend.api_token = "<redacted>".into();
        }
        if !c.protocols.socketio.token.is_empty() {
            c.protocols.socketio.token = "<redacted>".into();
        }
        if !c.protocols.dmoj.key.is_empty() {
            c.protocols.dmoj.key = "<redacted>".into();
        }
        for url in [&mut c.sources.redis.url, &mut c.sources.amqp.url] {
            if let Some((scheme, rest)) = url.split_once("://") {
                if let Some((_, host)) = rest.split_once('@') {
                    *url = format!("{scheme}://<redacted>@{host}");
                }
            }
        }
        let pg = &c.sources.postgres.url;
        let url_password = pg
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .is_some_and(|(user, _)| user.contains(':'));
        if pg.contains("password") || url_password {
            c.sources.postgres.url = "<redacted>".into();
        }
        c
    }

    /// The environment variable that sets the dotted `key`
    /// (`limits.max_message_size` -> `RINGCAST_LIMITS_MAX_MESSAGE_SIZE`).
    pub fn env_var_for(key: &str) -> String {
        format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
    }

    /// A commented TOML file with every key at its default value; parsed
    /// back it equals `Config::default()`. Printed by
    /// `ringcast config --print-default`.
    ///
    /// Generated from `Config::default()` and the fields' doc comments
    /// (see `config_section!`), so a new field appears here by itself.
    pub fn default_toml() -> String {
        let mut out = String::from(DEFAULT_TOML_HEADER);
        let keys = <Config as ConfigValue>::SECTION.unwrap_or_default();
        write_section(&mut out, "", keys, &defaults_table());
        out
    }
}

/// The top of [`Config::default_toml`].
const DEFAULT_TOML_HEADER: &str = "\
# ringcast configuration, every key at its default value.
#
# Precedence: command-line flags > RINGCAST_* environment variables > this
# file > built-in defaults. Each key can also be set through the environment
# as RINGCAST_ + the dotted key path upper-cased with \".\" -> \"_\", e.g.
# RINGCAST_SHARDS=4, RINGCAST_WS_LISTEN=0.0.0.0:58000,
# RINGCAST_LIMITS_MAX_MESSAGE_SIZE=65536 (lists comma-separated).
";

/// Appends `doc` as `#` comment lines.
fn write_doc(out: &mut String, doc: &[&str]) {
    for line in doc {
        let line = line.strip_prefix(' ').unwrap_or(line).trim_end();
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
    }
}

/// Appends the section at dotted `path` ("" for the top level): each plain
/// key under its doc comment, then each sub-section under its doc comment
/// and `[header]`. Keys without a value (a `None` option) are left out.
fn write_section(out: &mut String, path: &str, keys: &[KeyDoc], values: &Table) {
    for key in keys.iter().filter(|k| k.section.is_none()) {
        let Some(value) = values.get(key.name) else {
            continue;
        };
        if path.is_empty() {
            out.push('\n');
        }
        write_doc(out, key.doc);
        out.push_str(&format!("{} = {value}\n", key.name));
    }
    for key in keys {
        let (Some(section), Some(Value::Table(table))) = (key.section, values.get(key.name)) else {
            continue;
        };
        let path = if path.is_empty() {
            key.name.to_owned()
        } else {
            format!("{path}.{}", key.name)
        };
        out.push('\n');
        write_doc(out, key.doc);
        out.push_str(&format!("[{path}]\n"));
        write_section(out, &path, section, table);
    }
}

/// Two listen addresses that cannot both be bound: same port (not 0) and
/// the same IP, or either a wildcard of the same family.
fn addresses_clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    a.ip() == b.ip()
        || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()))
}

/// `Config::default()` as a TOML table: the layer every other one is merged
/// into, and the schema (which keys exist, which are tables, each leaf's
/// TOML type).
fn defaults_table() -> Table {
    Table::try_from(Config::default()).unwrap_or_default()
}

/// Every leaf key of the schema: (environment variable, dotted key,
/// default value).
fn env_keys(schema: &Table) -> Vec<(String, String, Value)> {
    fn walk(table: &Table, prefix: &str, out: &mut Vec<(String, String, Value)>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Table(t) => walk(t, &key, out),
                _ => out.push((Config::env_var_for(&key), key, v.clone())),
            }
        }
    }
    let mut out = Vec::new();
    walk(schema, "", &mut out);
    out
}

/// Converts an environment variable's text to the TOML type of the key's
/// default value.
fn env_value(default: &Value, raw: &str) -> Result<Value, String> {
    let t = raw.trim();
    match default {
        Value::Integer(_) => t
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        Value::Float(_) => t
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("expected a number, got {raw:?}")),
        Value::Boolean(_) => match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err(format!("expected true or false, got {raw:?}")),
        },
        Value::Array(_) => Ok(Value::Array(
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        )),
        _ => Ok(Value::String(raw.to_owned())),
    }
}

/// Parses the config file and merges each of its leaves into `merged`.
fn merge_file(
    merged: &mut Table,
    schema: &Table,
    path: &Path,
    text: &str,
) -> Result<(), ConfigError> {
    let table: Table = toml::from_str(text).map_err(|e: toml::de::Error| {
        let (line, column) = e
            .span()
            .map(|span| line_col(text, span.start))
            .unwrap_or((1, 1));
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: one_line(e.message()),
        }
    })?;
    let mut leaves = Vec::new();
    file_leaves(&table, schema, "", &mut leaves);
    for (key, value) in leaves {
        set_leaf(merged, schema, &key, value, Origin::File(path))?;
    }
    Ok(())
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The file's leaves: a value is descended into only when both it and the
/// schema's value at that key are tables, so `ws = 5` is one leaf `ws`
/// (wrong type) and `[nope]` is one leaf `nope` (unknown key).
fn file_leaves(table: &Table, schema: &Table, prefix: &str, out: &mut Vec<(String, Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (v, schema.get(k)) {
            (Value::Table(t), Some(Value::Table(s))) => file_leaves(t, s, &key, out),
            _ => out.push((key, v.clone())),
        }
    }
}

/// Looks up the dotted `key` in `table`.
fn get_path<'t>(table: &'t Table, key: &str) -> Option<&'t Value> {
    let mut parts = key.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// A table holding only `value` at the dotted `key`.
fn single(key: &str, value: Value) -> Table {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut table = Table::new();
    table.insert(last.to_owned(), value);
    while let Some(part) = parts.pop() {
        let mut outer = Table::new();
        outer.insert(part.to_owned(), Value::Table(table));
        table = outer;
    }
    table
}

/// Type-checks `value` for the dotted `key` on its own (so an error is
/// attributed to it) and stores it in `merged`.
fn set_leaf(
    merged: &mut Table,
    schema: &Table,
    key: &str,
    mut value: Value,
    origin: Origin<'_>,
) -> Result<(), ConfigError> {
    if get_path(schema, key).is_none() {
        return Err(origin.error(key, "unknown key"));
    }
    if ADDRESS_KEYS.contains(&key) {
        if let Value::String(s) = &value {
            let addr = resolve_addr(s).map_err(|m| origin.error(key, m))?;
            value = Value::String(addr.to_string());
        }
    }
    let probe = single(key, value.clone());
    if let Err(e) = probe.try_into::<Config>() {
        let message = e.message();
        // serde names the Rust type of a section; say what the file needs.
        let message = match message.find("expected struct ") {
            Some(at) => format!("{}expected a table", &message[..at]),
            None => message.to_owned(),
        };
        return Err(origin.error(key, message));
    }
    // Insert, creating intermediate tables as needed; the schema check
    // above guarantees every parent is a table in `merged` too.
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut table = merged;
    for part in parts {
        let entry = table
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        match entry {
            Value::Table(t) => table = t,
            _ => return Err(origin.error(key, "not a table")),
        }
    }
    table.insert(last.to_owned(), value);
    Ok(())
}

/// Parses `IP:PORT`, or resolves `HOST:PORT` (first IPv4 address, else
/// the first address).
pub fn resolve_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = || format!("invalid socket address {s:?} (expected HOST:PORT)");
    let Some((host, port)) = t.rsplit_once(':') else {
        return Err(bad());
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    let addrs: Vec<SocketAddr> = t
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?}: {}", one_line(&e.to_string())))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("cannot resolve {s:?}: no addresses"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn write_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringcast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    fn load_err(file: Option<&Path>, vars: &[(&str, &str)], o: &Overrides) -> String {
        match Config::load(file, env(vars), o) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => {
                let s = e.to_string();
                assert!(!s.contains('\n'), "multi-line error: {s}");
                assert!(s.starts_with("invalid config: "), "{s}");
                s
            }
        }
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults valid");
        let c = Config::load(None, Vec::new(), &Overrides::new()).expect("load");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn default_toml_round_trips() {
        let text = Config::default_toml();
        let parsed: Config = toml::from_str(&text).expect("default toml parses");
        assert_eq!(parsed, Config::default());
        // Every key is written out, not left to serde defaults.
        let table: Table = toml::from_str(&text).expect("table");
        assert_eq!(table, defaults_table());
        // Every key has a comment line right above it.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let is_key = line.contains(" = ") && !line.starts_with('#');
            if is_key {
                assert!(
                    i > 0 && lines[i - 1].starts_with('#'),
                    "no comment for {line}"
                );
            }
        }
    }

    /// Every leaf of a serialized `Config`, as a dotted key.
    fn leaf_keys(table: &Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Table(t) => leaf_keys(t, &key, out),
                _ => out.push(key),
            }
        }
    }

    #[test]
    fn every_field_is_in_default_toml_with_its_doc() {
        let text = Config::default_toml();
        let lines: Vec<&str> = text.lines().collect();
        let mut keys = Vec::new();
        leaf_keys(&defaults_table(), "", &mut keys);
        assert!(!keys.is_empty());
        for key in &keys {
            let (section, name) = match key.rsplit_once('.') {
                Some((s, n)) => (format!("[{s}]"), n),
                None => (String::new(), key.as_str()),
            };
            // The key's line, inside its own section.
            let start = if section.is_empty() {
                0
            } else {
                lines
                    .iter()
                    .position(|l| *l == section)
                    .unwrap_or_else(|| panic!("no {section} in:\n{text}"))
                    + 1
            };
            let end = lines[start..]
                .iter()
                .position(|l| l.starts_with('['))
                .map_or(lines.len(), |i| start + i);
            let at = lines[start..end]
                .iter()
                .position(|l| l.starts_with(&format!("{name} = ")))
                .unwrap_or_else(|| panic!("{key} missing from default_toml:\n{text}"))
                + start;
            assert!(
                lines[at - 1].starts_with("# ") && lines[at - 1].len() > 2,
                "{key} has no doc comment"
            );
        }
    }

    #[test]
    fn declared_keys_match_serialized_keys() {
        // Walk the declarations, not the serialized values: a field that
        // serde renamed or skipped would show up here.
        fn walk(keys: &[KeyDoc], prefix: &str, out: &mut Vec<String>) {
            for k in keys {
                let key = if prefix.is_empty() {
                    k.name.to_owned()
                } else {
                    format!("{prefix}.{}", k.name)
                };
                assert!(!k.doc.is_empty(), "{key} has no doc comment");
                match k.section {
                    Some(s) => walk(s, &key, out),
                    None => out.push(key),
                }
            }
        }
        let mut declared = Vec::new();
        walk(
            <Config as ConfigValue>::SECTION.unwrap_or_default(),
            "",
            &mut declared,
        );
        let mut serialized = Vec::new();
        leaf_keys(&defaults_table(), "", &mut serialized);
        declared.sort();
        serialized.sort();
        assert_eq!(declared, serialized);
    }

    #[test]
    fn documented_defaults_match() {
        // "Default X." in a doc comment must be the value written below it.
        let text = Config::default_toml();
        let lines: Vec<&str> = text.lines().collect();
        let mut doc = String::new();
        for line in &lines {
            if let Some(c) = line.strip_prefix("# ") {
                doc.push_str(c);
                doc.push(' ');
                continue;
            }
            if let Some((key, value)) = line.split_once(" = ") {
                let said = doc
                    .rsplit_once("Default ")
                    .map(|(_, d)| d.split(' ').next().unwrap_or_default())
                    .unwrap_or_else(|| panic!("{key}: doc says no default"));
                let said = said.trim_end_matches('.').trim_matches('`');
                let value = value.trim_matches('"');
                let ok = said == value || (said == "empty" && matches!(value, "" | "[]"));
                assert!(ok, "{key}: doc says default {said}, value is {value}");
            }
            doc.clear();
        }
    }

    #[test]
    fn documented_bounds_match_constants() {
        let text = Config::default_toml();
        for bound in [
            format!("At most {MAX_SHARDS}."),
            format!("{MIN_MESSAGE_SIZE}..={MAX_MESSAGE_SIZE} "),
            format!("at most {MAX_HISTORY_SIZE}."),
        ] {
            assert!(text.contains(&bound), "{bound:?} not in:\n{text}");
        }
    }

    #[test]
    fn default_toml_loads_as_file() {
        let path = write_file("default.toml", &Config::default_toml());
        let c = Config::load(Some(&path), Vec::new(), &Overrides::new()).expect("load");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn precedence_flags_env_file_defaults() {
        let path = write_file(
            "prec.toml",
            "shards = 2\nlog_level = \"debug\"\n[history]\nsize = 10\nttl = 7\n",
        );
        let vars = [
            ("RINGCAST_SHARDS", "3"),
            ("RINGCAST_HISTORY_SIZE", "11"),
            ("PATH", "/bin"),
            ("RINGCAST_LOG", "ringcast=trace"),
            ("RINGCAST_CONFIG", "/nonexistent"),
        ];
        let mut o = Overrides::new();
        o.set("--shards", "shards", 4);
        let c = Config::load(Some(&path), env(&vars), &o).expect("load");
        assert_eq!(c.shards, 4); // flag
        assert_eq!(c.history.size, 11); // env
        assert_eq!(c.history.ttl, 7); // file
        assert_eq!(c.log_level, "debug"); // file
        assert_eq!(c.ws.backlog, 4096); // default
    }

    #[test]
    fn env_sets_every_type() {
        let vars = [
            ("RINGCAST_DRIVER", "epoll"),
            ("RINGCAST_WS_LISTEN", "127.0.0.1:1234"),
            (
                "RINGCAST_WS_ALLOWED_ORIGINS",
                "https://a.example, https://b.example,",
            ),
            ("RINGCAST_BACKEND_API_TOKEN", "s3cret"),
            ("RINGCAST_LIMITS_MAX_MESSAGE_SIZE", "1000"),
            ("RINGCAST_LIMITS_SLOW_CONSUMER", "drop"),
            ("RINGCAST_WS_DIALECT", "rocketws"),
            ("RINGCAST_LOG_FORMAT", "json"),
        ];
        let c = Config::load(None, env(&vars), &Overrides::new()).expect("load");
        assert_eq!(c.driver, DriverKind::Epoll);
        assert_eq!(c.ws.listen, SocketAddr::from(([127, 0, 0, 1], 1234)));
        assert_eq!(
            c.ws.allowed_origins,
            vec![
                "https://a.example".to_owned(),
                "https://b.example".to_owned()
            ]
        );
        assert_eq!(c.backend.api_token, "s3cret");
        assert_eq!(c.limits.max_message_size, 1000);
        assert_eq!(c.limits.slow_consumer, SlowConsumerPolicy::Drop);
        assert_eq!(c.ws.dialect, Dialect::Rocketws);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn env_names_cover_every_key() {
        let keys = env_keys(&defaults_table());
        for var in [
            "RINGCAST_SHARDS",
            "RINGCAST_DRIVER",
            "RINGCAST_LOG_LEVEL",
            "RINGCAST_LOG_FORMAT",
            "RINGCAST_SHUTDOWN_TIMEOUT",
            "RINGCAST_WS_LISTEN",
            "RINGCAST_WS_BACKLOG",
            "RINGCAST_WS_DIALECT",
            "RINGCAST_WS_ALLOWED_ORIGINS",
            "RINGCAST_WS_PING_INTERVAL",
            "RINGCAST_WS_PONG_TIMEOUT",
            "RINGCAST_WS_HANDSHAKE_TIMEOUT",
            "RINGCAST_WS_CLIENT_PUBLISH",
            "RINGCAST_WS_COMPRESSION",
            "RINGCAST_WS_COMPRESSION_MIN_SIZE",
            "RINGCAST_BACKEND_LISTEN",
            "RINGCAST_BACKEND_API_TOKEN",
            "RINGCAST_BACKEND_INSECURE",
            "RINGCAST_BACKEND_MAX_BODY",
            "RINGCAST_BACKEND_IDLE_TIMEOUT",
            "RINGCAST_LIMITS_MAX_CONNECTIONS",
            "RINGCAST_LIMITS_MAX_SUBSCRIPTIONS_PER_CONNECTION",
            "RINGCAST_LIMITS_MAX_MESSAGE_SIZE",
            "RINGCAST_LIMITS_RATE_PER_SEC",
            "RINGCAST_LIMITS_RATE_BURST",
            "RINGCAST_LIMITS_MAX_OUTBOUND_BYTES",
            "RINGCAST_LIMITS_SLOW_CONSUMER",
            "RINGCAST_LIMITS_MAX_BATCH_LENGTH",
            "RINGCAST_LIMITS_SOCKET_SEND_BUFFER",
            "RINGCAST_HISTORY_SIZE",
            "RINGCAST_HISTORY_TTL",
            "RINGCAST_PROTOCOLS_NATIVE_PATH",
            "RINGCAST_PROTOCOLS_ROCKETWS_PATH",
            "RINGCAST_PROTOCOLS_DMOJ_ENABLED",
            "RINGCAST_PROTOCOLS_DMOJ_PATH",
            "RINGCAST_PROTOCOLS_DMOJ_POLL_PATH",
            "RINGCAST_PROTOCOLS_DMOJ_RECEIVERS",
            "RINGCAST_PROTOCOLS_DMOJ_SENDERS",
            "RINGCAST_PROTOCOLS_DMOJ_LONG_POLL",
            "RINGCAST_PROTOCOLS_DMOJ_KEY",
            "RINGCAST_PROTOCOLS_DMOJ_LONG_POLL_TIMEOUT",
            "RINGCAST_PROTOCOLS_DMOJ_MAX_QUEUE",
            "RINGCAST_LIMITS_MAILBOX_CAPACITY",
            "RINGCAST_AUTH_REQUIRED",
            "RINGCAST_AUTH_HMAC_SECRET",
            "RINGCAST_AUTH_PUBLIC_KEY",
            "RINGCAST_AUTH_JWKS",
            "RINGCAST_AUTH_NAMESPACES",
            "RINGCAST_PROTOCOLS_JOBS_PATH",
            "RINGCAST_PROTOCOLS_JOBS_MAX_JOB_SECONDS",
            "RINGCAST_PROTOCOLS_JOBS_MAX_JOBS_PER_CONNECTION",
            "RINGCAST_PROTOCOLS_JOBS_SCOPE",
            "RINGCAST_PROTOCOLS_JOBS_REPLIES",
            "RINGCAST_PROTOCOLS_WS4REDIS_PATH",
            "RINGCAST_PROTOCOLS_WS4REDIS_PREFIX",
            "RINGCAST_PROTOCOLS_WS4REDIS_EXPIRE",
            "RINGCAST_PROTOCOLS_WS4REDIS_HEARTBEAT",
            "RINGCAST_SOURCES_REDIS_ENABLED",
            "RINGCAST_SOURCES_REDIS_URL",
            "RINGCAST_SOURCES_REDIS_PATTERNS",
            "RINGCAST_SOURCES_AMQP_ENABLED",
            "RINGCAST_SOURCES_AMQP_URL",
            "RINGCAST_SOURCES_AMQP_EXCHANGE",
            "RINGCAST_SOURCES_AMQP_EXCHANGE_TYPE",
            "RINGCAST_SOURCES_AMQP_BINDING_KEY",
            "RINGCAST_SOURCES_AMQP_QUEUE",
            "RINGCAST_SOURCES_AMQP_PREFETCH",
            "RINGCAST_SOURCES_AMQP_DEAD_LETTER_EXCHANGE",
            "RINGCAST_SOURCES_AMQP_CHANNEL",
            "RINGCAST_SOURCES_POSTGRES_ENABLED",
            "RINGCAST_SOURCES_POSTGRES_URL",
            "RINGCAST_SOURCES_POSTGRES_LISTEN",
            "RINGCAST_SOURCES_POSTGRES_CHANNEL",
            "RINGCAST_PROTOCOLS_SOCKETIO_ENABLED",
            "RINGCAST_PROTOCOLS_SOCKETIO_PATH",
            "RINGCAST_PROTOCOLS_SOCKETIO_LISTEN",
            "RINGCAST_PROTOCOLS_SOCKETIO_TOKEN",
            "RINGCAST_PROTOCOLS_SOCKETIO_PING_INTERVAL",
            "RINGCAST_PROTOCOLS_SOCKETIO_PING_TIMEOUT",
            "RINGCAST_PROTOCOLS_SOCKETIO_CONNECT_TIMEOUT",
            "RINGCAST_PROTOCOLS_SOCKETIO_MAX_CLIENTS",
            "RINGCAST_PROTOCOLS_SOCKETIO_MAX_SUBSCRIPTIONS",
            "RINGCAST_CLUSTER_REDIS",
            "RINGCAST_CLUSTER_ON_BUS_LOSS",
            "RINGCAST_CLUSTER_CHANNEL_TTL",
            "RINGCAST_CLUSTER_REPLICAS_ACK",
            "RINGCAST_CLUSTER_NODE_TTL",
        ] {
            assert!(keys.iter().any(|(v, _, _)| v == var), "{var}");
        }
        assert_eq!(keys.len(), 87);
    }

    #[test]
    fn socketio_settings_are_checked() {
        let o = Overrides::new();
        let on = ("RINGCAST_PROTOCOLS_SOCKETIO_ENABLED", "true");
        assert_eq!(
            load_err(None, &[on, ("RINGCAST_PROTOCOLS_DMOJ_ENABLED", "true")], &o),
            "invalid config: protocols.socketio.listen: must differ from protocols.dmoj.receivers (both are 127.0.0.1:15100; set one of them to \"\")"
        );
        assert_eq!(
            load_err(None, &[on, ("RINGCAST_PROTOCOLS_SOCKETIO_LISTEN", "nope")], &o),
            "invalid config: protocols.socketio.listen: invalid socket address \"nope\" (expected HOST:PORT, or empty for none)"
        );
        assert_eq!(
            load_err(
                None,
                &[on, ("RINGCAST_PROTOCOLS_SOCKETIO_PING_TIMEOUT", "5")],
                &o
            ),
            "invalid config: protocols.socketio.ping_timeout: must be at least 100 ms (got 5)"
        );
        assert_eq!(
            load_err(
                None,
                &[on, ("RINGCAST_PROTOCOLS_SOCKETIO_MAX_SUBSCRIPTIONS", "0")],
                &o
            ),
            "invalid config: protocols.socketio.max_subscriptions: must be at least 1 (got 0)"
        );
        assert_eq!(
            load_err(
                None,
                &[on, ("RINGCAST_PROTOCOLS_SOCKETIO_PATH", "/event/"), ("RINGCAST_PROTOCOLS_DMOJ_ENABLED", "true"), ("RINGCAST_PROTOCOLS_DMOJ_RECEIVERS", "")],
                &o
            ),
            "invalid config: protocols.socketio.path: must differ from protocols.dmoj.path (both are \"/event/\")"
        );
    }

    #[test]
    fn auth_errors_name_the_key() {
        let o = Overrides::new();
        assert_eq!(
            load_err(None, &[("RINGCAST_AUTH_REQUIRED", "true")], &o),
            "invalid config: auth.required: tokens need a key: set auth.hmac_secret, auth.public_key or auth.jwks"
        );
        assert_eq!(
            load_err(
                None,
                &[("RINGCAST_AUTH_PUBLIC_KEY", "/nonexistent.pem")],
                &o
            )
            .split(':')
            .take(3)
            .collect::<Vec<_>>()
            .join(":"),
            "invalid config: auth.public_key: cannot read \"/nonexistent.pem\""
        );
        let f = write_file(
            "auth-groups.toml",
            "[[auth.namespaces]]\nprefix = \"s:\"\nsubscribe = \"groups\"\n",
        );
        assert_eq!(
            load_err(Some(&f), &[], &o),
            "invalid config: auth.namespaces[0].groups: subscribe = \"groups\" needs a non-empty groups list (prefix \"s:\")"
        );
        let f = write_file(
            "auth-token.toml",
            "[[auth.namespaces]]\nprefix = \"v:\"\nsubscribe = \"token\"\n",
        );
        assert_eq!(
            load_err(Some(&f), &[], &o),
            "invalid config: auth.namespaces: tokens need a key: set auth.hmac_secret, auth.public_key or auth.jwks"
        );
        let f = write_file(
            "auth-typo.toml",
            "[[auth.namespaces]]\nprefix = \"v:\"\nsubscribe = \"nobody\"\n",
        );
        assert!(load_err(Some(&f), &[], &o).contains("nobody"));
    }

    #[test]
    fn env_errors_name_the_variable() {
        let o = Overrides::new();
        assert_eq!(
            load_err(None, &[("RINGCAST_WS_LISTEN", "abc")], &o),
            "invalid config: RINGCAST_WS_LISTEN: invalid socket address \"abc\" (expected HOST:PORT)"
        );
        let e = load_err(None, &[("RINGCAST_SHARDS", "four")], &o);
        assert_eq!(
            e,
            "invalid config: RINGCAST_SHARDS: expected an integer, got \"four\""
        );
        let e = load_err(None, &[("RINGCAST_SHARDS", "-1")], &o);
        assert!(e.starts_with("invalid config: RINGCAST_SHARDS: "), "{e}");
        let e = load_err(None, &[("RINGCAST_DRIVER", "kqueue")], &o);
        assert!(e.starts_with("invalid config: RINGCAST_DRIVER: "), "{e}");
        assert!(e.contains("kqueue"), "{e}");
        let e = load_err(None, &[("RINGCAST_WS_BACKLOG", "99999999999")], &o);
        assert!(
            e.starts_with("invalid config: RINGCAST_WS_BACKLOG: "),
            "{e}"
        );
        let e = load_err(None, &[("RINGCAST_NOPE", "1")], &o);
        assert!(
            e.starts_with("invalid config: RINGCAST_NOPE: unknown setting"),
            "{e}"
        );
    }

    #[test]
    fn file_errors_name_the_key() {
        let o = Overrides::new();
        let p = write_file("unknown.toml", "[ws]\nbacklg = 5\n");
        let e = load_err(Some(&p), &[], &o);
        assert!(
            e.starts_with("invalid config: ws.backlg: unknown key (in "),
            "{e}"
        );

        let p = write_file("unknown_table.toml", "[nope]\na = 1\n");
        let e = load_err(Some(&p), &[], &o);
        assert!(e.starts_with("invalid config: nope: unknown key"), "{e}");

        let p = write_file("type.toml", "[limits]\nmax_message_size = \"big\"\n");
        let e = load_err(Some(&p), &[], &o);
        assert!(
            e.starts_with("invalid config: limits.max_message_size: invalid type"),
            "{e}"
        );

        let p = write_file("compression.toml", "[ws]\ncompression = \"gzip\"\n");
        let e = load_err(Some(&p), &[], &o);
        assert!(
            e.starts_with("invalid config: ws.compression: unknown variant `gzip`"),
            "{e}"
        );

        let p = write_file("table_type.toml", "ws = 5\n");
        let e = load_err(Some(&p), &[], &o);
        assert!(
            e.starts_with("invalid config: ws: invalid type: integer `5`, expected a table (in "),
            "{e}"
        );

        let p = write_file("addr.toml", "[backend]\nlisten = \"nowhere\"\n");
        let e = load_err(Some(&p), &[], &o);
        assert!(
            e.starts_with("invalid config: backend.listen: invalid socket address \"nowhere\""),
            "{e}"
        );

        let p = write_file("syntax.toml", "shards = 1\nws = [\n");
        let e = load_err(Some(&p), &[], &o);
        assert!(e.contains("syntax.toml:"), "{e}");

        let p = write_file("dup.toml", "shards = 1\nshards = 2\n");
        let e = load_err(Some(&p), &[], &o);
        assert!(e.contains("dup.toml:2:"), "{e}");

        let missing = std::env::temp_dir().join("ringcast-definitely-missing.toml");
        let e = load_err(Some(&missing), &[], &o);
        assert!(e.starts_with("invalid config: cannot read "), "{e}");
    }

    #[test]
    fn flag_errors_name_the_flag() {
        let mut o = Overrides::new();
        o.set("--driver", "driver", "kqueue");
        let e = load_err(None, &[], &o);
        assert!(e.starts_with("invalid config: --driver: "), "{e}");

        let mut o = Overrides::new();
        o.set("--ws-listen", "ws.listen", "abc");
        let e = load_err(None, &[], &o);
        assert_eq!(
            e,
            "invalid config: --ws-listen: invalid socket address \"abc\" (expected HOST:PORT)"
        );
    }

    #[test]
    fn host_names_resolve() {
        let mut o = Overrides::new();
        o.set("--ws-conn", "ws.listen", "localhost:58001");
        let c = Config::load(None, Vec::new(), &o).expect("localhost resolves");
        assert_eq!(c.ws.listen.port(), 58001);
        assert!(c.ws.listen.ip().is_loopback());
        assert!(resolve_addr("[::1]:80").is_ok());
        assert!(resolve_addr(":80").is_err());
        assert!(resolve_addr("host:").is_err());
        assert!(resolve_addr("host:99999").is_err());
    }

    #[test]
    fn validate_rules() {
        type Edit = fn(&mut Config);
        let cases: &[(Edit, &str)] = &[
            (|c| c.shards = 1025, "invalid config: shards: must be at most 1024 (got 1025)"),
            (|c| c.ws.backlog = 0, "invalid config: ws.backlog: must be at least 1 (got 0)"),
            (|c| c.limits.mailbox_capacity = 1023, "invalid config: limits.mailbox_capacity: must be at least 1024 (got 1023)"),
            (|c| c.protocols.rocketws.path = "rocketws".into(), "invalid config: protocols.rocketws.path: must be a URL path starting with / (got \"rocketws\")"),
            (|c| c.protocols.rocketws.path = "/a?b".into(), "invalid config: protocols.rocketws.path: must be a URL path starting with / (got \"/a?b\")"),
            (|c| { c.protocols.native.path = "/x".into(); c.protocols.rocketws.path = "/x/".into() }, "invalid config: protocols.rocketws.path: must differ from protocols.native.path (both are \"/x/\")"),
            (|c| c.ws.backlog = 65536, "invalid config: ws.backlog: must be at most 65535 (got 65536)"),
            (|c| c.ws.ping_interval = 0, "invalid config: ws.ping_interval: must be at least 1 s (got 0)"),
            (|c| c.ws.pong_timeout = 0, "invalid config: ws.pong_timeout: must be at least 1 s (got 0)"),
            (|c| c.ws.handshake_timeout = 0, "invalid config: ws.handshake_timeout: must be at least 1 s (got 0)"),
            (|c| c.limits.max_message_size = 10, "invalid config: limits.max_message_size: must be at least 126 bytes (got 10)"),
            (|c| c.limits.max_message_size = (64 << 20) + 1, "invalid config: limits.max_message_size: must be at most 67108864 bytes (got 67108865)"),
            (|c| c.limits.max_subscriptions_per_connection = 0, "invalid config: limits.max_subscriptions_per_connection: must be at least 1 (got 0)"),
            (|c| c.limits.rate_per_sec = 0, "invalid config: limits.rate_per_sec: must be at least 1 (got 0)"),
            (|c| c.limits.rate_burst = 0, "invalid config: limits.rate_burst: must be at least 1 (got 0)"),
            (|c| c.limits.max_outbound_bytes = 1023, "invalid config: limits.max_outbound_bytes: must be at least 1024 bytes (got 1023)"),
            (|c| c.backend.idle_timeout = 0, "invalid config: backend.idle_timeout: must be at least 1 s (got 0)"),
            (|c| c.limits.max_batch_length = 0, "invalid config: limits.max_batch_length: must be at least 1 (got 0)"),
            (|c| c.limits.socket_send_buffer = 4095, "invalid config: limits.socket_send_buffer: must be 0 (the kernel default) or at least 4096 bytes (got 4095)"),
            (|c| c.limits.socket_send_buffer = (64 << 20) + 1, "invalid config: limits.socket_send_buffer: must be at most 67108864 bytes (got 67108865)"),
            (|c| c.backend.max_body = 1023, "invalid config: backend.max_body: must be at least 1024 bytes (got 1023)"),
            (|c| c.history.size = 1_000_001, "invalid config: history.size: must be at most 1000000 (got 1000001)"),
            (|c| c.shutdown_timeout = 0, "invalid config: shutdown_timeout: must be at least 1 s (got 0)"),
            (|c| c.protocols.jobs.max_job_seconds = 0, "invalid config: protocols.jobs.max_job_seconds: must be 1..=86400 s (got 0)"),
            (|c| c.protocols.jobs.max_job_seconds = 86_401, "invalid config: protocols.jobs.max_job_seconds: must be 1..=86400 s (got 86401)"),
            (|c| c.protocols.jobs.max_jobs_per_connection = 0, "invalid config: protocols.jobs.max_jobs_per_connection: must be 1..=1000000 (got 0)"),
            (|c| c.protocols.jobs.path = "jobs".into(), "invalid config: protocols.jobs.path: must be a URL path starting with / (got \"jobs\")"),
            (|c| c.protocols.rocketws.path = "/jobs/".into(), "invalid config: protocols.jobs.path: must differ from protocols.rocketws.path (both are \"/jobs\")"),
            (|c| c.log_level = "loud".into(), "invalid config: log_level: must be one of trace, debug, info, warn, error (got \"loud\")"),
            (|c| c.backend.listen = c.ws.listen, "invalid config: backend.listen: must differ from ws.listen (both use 0.0.0.0:58000 and 0.0.0.0:58000)"),
            (|c| c.backend.listen = SocketAddr::from(([127, 0, 0, 1], 58000)), "invalid config: backend.listen: must differ from ws.listen (both use 127.0.0.1:58000 and 0.0.0.0:58000)"),
            (|c| c.backend.listen = SocketAddr::from(([10, 0, 0, 5], 59999)), "invalid config: backend.api_token: required when backend.listen (10.0.0.5:59999) is not a loopback address: set a token (--api-token), listen on 127.0.0.1, or accept an unauthenticated backend with backend.insecure = true (--insecure-backend)"),
        ];
        for (edit, want) in cases {
            let mut c = Config::default();
            edit(&mut c);
            let got = c.validate().expect_err(want).to_string();
            assert_eq!(&got, want);
        }
        // Boundaries that are fine.
        let mut c = Config {
            shards: 1024,
            ..Config::default()
        };
        c.ws.backlog = 65535;
        c.limits.max_message_size = 126;
        c.limits.socket_send_buffer = 0;
        c.history.size = 0;
        c.log_level = "WARN".into();
        c.protocols.jobs.path = "/".into();
        c.protocols.jobs.max_job_seconds = 86_400;
        c.ws.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.backend.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.validate().expect("boundaries valid");
        c.limits.max_message_size = 64 << 20;
        c.limits.socket_send_buffer = 4096;
        c.ws.listen = SocketAddr::from(([127, 0, 0, 1], 58000));
        c.backend.listen = SocketAddr::from(([127, 0, 0, 2], 58000));
        c.validate().expect("boundaries valid");
        // A non-loopback backend with a token, or said to be insecure.
        c.backend.listen = SocketAddr::from(([0, 0, 0, 0], 59999));
        c.backend.api_token = "t".into();
        c.validate().expect("a token");
        c.backend.api_token.clear();
        c.backend.insecure = true;
        c.validate().expect("insecure on purpose");
    }

    #[test]
    fn load_validates() {
        let e = load_err(
            None,
            &[("RINGCAST_LIMITS_MAX_MESSAGE_SIZE", "10")],
            &Overrides::new(),
        );
        assert_eq!(
            e,
            "invalid config: limits.max_message_size: must be at least 126 bytes (got 10)"
        );
    }

    #[test]
    fn to_toml_round_trips_and_redacts() {
        let mut c = Config::default();
        c.backend.api_token = "s3cret".into();
        c.ws.allowed_origins = vec!["https://x".into()];
        let back: Config = toml::from_str(&c.to_toml()).expect("parse");
        assert_eq!(back, c);
        assert!(!c.redacted().to_toml().contains("s3cret"));
        assert_eq!(Config::default().redacted(), Config::default());
        assert_eq!(
            Config::env_var_for("limits.max_message_size"),
            "RINGCAST_LIMITS_MAX_MESSAGE_SIZE"
        );
    }
}
