//! Command-line interface: the clap definitions `main` parses, and the
//! bridge from flags to [`Config`].
//!
//! `ringcast` with no subcommand is `ringcast serve`. Every config key has a
//! flag in [`ServeArgs`]; a flag that is given becomes an entry of
//! [`Overrides`], the highest-precedence layer of [`Config::load`] (flags >
//! `RINGCAST_*` environment > `--config` file > defaults). Flags are parsed
//! to their types by clap, so a malformed number or an unknown enum value is
//! a clap error (exit code 2); anything clap lets through and the config
//! then rejects comes back as a one-line [`ConfigError`] naming the flag or
//! key, which `main` prints before exiting with [`ConfigError::EXIT_CODE`].
//!
//! RocketWS spellings are accepted: `--ws-conn HOST:PORT` is
//! `--ws-listen`, `--ms-conn HOST:PORT` (later `--transport`) is `--backend-listen`; host names
//! such as `localhost:58000` are resolved.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::ops::config::{resolve_addr, Config, ConfigError, Overrides};

/// Default backend URL of `ringcast shell` (RocketWS's default).
pub const DEFAULT_SHELL_URL: &str = "http://127.0.0.1:59999";

/// `ringcast`: a thread-per-core WebSocket push server.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ringcast",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `serve`, which runs when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Cli {
    /// The subcommand to run: the one given, or `serve` with the top-level
    /// flags.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

/// `ringcast` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the engine (the default).
    Serve(ServeArgs),
    /// Print the commented default config, or check a config and print it.
    Config(ConfigArgs),
    /// Interactive backend console: emit, notify_all, total_subscribers, ...
    Shell(ShellArgs),
    /// Check this host (kernel, io_uring, limits) against the configuration.
    Doctor(ServeArgs),
}

/// `ringcast config`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("action").required(true).args(["print_default", "check"])))]
pub struct ConfigArgs {
    /// Print a commented TOML file with every key at its default.
    #[arg(long)]
    pub print_default: bool,
    /// Load the configuration (flags, environment, --config file), validate
    /// it and print the effective values (api_token redacted).
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `ringcast shell`.
#[derive(Debug, Clone, Args)]
pub struct ShellArgs {
    /// Backend URL.
    #[arg(long, value_name = "URL", default_value = DEFAULT_SHELL_URL)]
    pub url: String,
    /// API token, sent as `Authorization: Bearer TOKEN`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RINGCAST_BACKEND_API_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

/// Flags of `serve` (and `doctor`, `config --check`): one per config key.
/// Unset flags leave the key to the environment, file or default.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, value_name = "FILE", env = "RINGCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Shards (pinned threads); 0 = one per CPU. [config: shards]
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Event-loop driver. [config: driver]
    #[arg(long, value_name = "DRIVER", value_parser = ["auto", "uring", "epoll"])]
    pub driver: Option<String>,
    /// WebSocket listen address. [config: ws.listen]
    #[arg(long, value_name = "ADDR", visible_alias = "ws-conn", value_parser = parse_addr)]
    pub ws_listen: Option<SocketAddr>,
    /// Backend (HTTP) listen address. [config: backend.listen]
    #[arg(long, value_name = "ADDR", visible_aliases = ["ms-conn", "transport"], value_parser = parse_addr)]
    pub backend_listen: Option<SocketAddr>,
    /// Token required on the backend port. [config: backend.api_token]
    #[arg(long, value_name = "TOKEN")]
    pub api_token: Option<String>,
    /// Allow a non-loopback backend.listen without a token.
    /// [config: backend.insecure = true]
    #[arg(long)]
    pub insecure_backend: bool,
    /// Log level. [config: log_level]
    #[arg(long, value_name = "LEVEL", value_parser = ["trace", "debug", "info", "warn", "error"])]
    pub log_level: Option<String>,
    /// Log format. [config: log_format]
    #[arg(long, value_name = "FORMAT", value_parser = ["human", "json"])]
    pub log_format: Option<String>,
    /// Listen backlog per shard. [config: ws.backlog]
    #[arg(long, value_name = "N")]
    pub backlog: Option<u32>,
    /// Connection limit; 0 = fd limit. [config: limits.max_connections]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Channels per connection. [config: limits.max_subscriptions_per_connection]
    #[arg(long, value_name = "N")]
    pub max_subscriptions: Option<usize>,
    /// Largest client message, bytes. [config: limits.max_message_size]
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<usize>,
    /// Queued bytes per connection before the slow-consumer policy.
    /// [config: limits.max_outbound_bytes]
    #[arg(long, value_name = "BYTES")]
    pub max_outbound_bytes: Option<usize>,
    /// Slow-consumer policy. [config: limits.slow_consumer]
    #[arg(long, value_name = "POLICY", value_parser = ["disconnect", "drop"])]
    pub slow_consumer: Option<String>,
    /// Client dialect for the WebSocket port. [config: ws.dialect]
    #[arg(long, value_name = "DIALECT", value_parser = ["native", "rocketws"])]
    pub dialect: Option<String>,
    /// Seconds between server pings. [config: ws.ping_interval]
    #[arg(long, value_name = "SECS")]
    pub ping_interval: Option<u64>,
    /// Seconds to answer a ping. [config: ws.pong_timeout]
    #[arg(long, value_name = "SECS")]
    pub pong_timeout: Option<u64>,
    /// Seconds to finish the upgrade. [config: ws.handshake_timeout]
    #[arg(long, value_name = "SECS")]
    pub handshake_timeout: Option<u64>,
    /// Refuse client send_data with -32004. [config: ws.client_publish = false]
    #[arg(long)]
    pub no_client_publish: bool,
    /// Seconds to drain on SIGTERM/SIGINT. [config: shutdown_timeout]
    #[arg(long, value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,
    /// Publications kept per channel. [config: history.size]
    #[arg(long, value_name = "N")]
    pub history_size: Option<usize>,
    /// Seconds a publication stays in history. [config: history.ttl]
    #[arg(long, value_name = "SECS")]
    pub history_ttl: Option<u64>,
    /// Client requests per second. [config: limits.rate_per_sec]
    #[arg(long, value_name = "N")]
    pub rate_per_sec: Option<u32>,
    /// Client request burst. [config: limits.rate_burst]
    #[arg(long, value_name = "N")]
    pub rate_burst: Option<u32>,
    /// Allowed Origin (repeatable); replaces the configured list.
    /// [config: ws.allowed_origins]
    #[arg(long, value_name = "ORIGIN", action = clap::ArgAction::Append)]
    pub allowed_origin: Vec<String>,
}

/// clap value parser for `IP:PORT` / `HOST:PORT`.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    resolve_addr(s)
}

/// Sets an integer key if the flag was given. TOML integers are `i64`;
/// values past `i64::MAX` saturate, which the key's range check or type
/// check then rejects as too large.
fn set_int<T: TryInto<i64>>(o: &mut Overrides, flag: &str, key: &str, v: Option<T>) {
    if let Some(v) = v {
        o.set(flag, key, v.try_into().unwrap_or(i64::MAX));
    }
}

impl ServeArgs {
    /// The flags that were given, as the top layer of [`Config::load`].
    pub fn overrides(&self) -> Overrides {
        let mut o = Overrides::new();
        set_int(&mut o, "--shards", "shards", self.shards);
        if let Some(v) = &self.driver {
            o.set("--driver", "driver", v.as_str());
        }
        if let Some(v) = self.ws_listen {
            o.set("--ws-listen", "ws.listen", v.to_string());
        }
        if let Some(v) = self.backend_listen {
            o.set("--backend-listen", "backend.listen", v.to_string());
        }
        if let Some(v) = &self.api_token {
            o.set("--api-token", "backend.api_token", v.as_str());
        }
        if self.insecure_backend {
            o.set("--insecure-backend", "backend.insecure", true);
        }
        if let Some(v) = &self.log_level {
            o.set("--log-level", "log_level", v.as_str());
        }
        if let Some(v) = &self.log_format {
            o.set("--log-format", "log_format", v.as_str());
        }
        set_int(&mut o, "--backlog", "ws.backlog", self.backlog);
        set_int(
            &mut o,
            "--max-connections",
            "limits.max_connections",
            self.max_connections,
        );
        set_int(
            &mut o,
            "--max-subscriptions",
            "limits.max_subscriptions_per_connection",
            self.max_subscriptions,
        );
        set_int(
            &mut o,
            "--max-message-size",
            "limits.max_message_size",
            self.max_message_size,
        );
        set_int(
            &mut o,
            "--max-outbound-bytes",
            "limits.max_outbound_bytes",
            self.max_outbound_bytes,
        );
        if let Some(v) = &self.slow_consumer {
            o.set("--slow-consumer", "limits.slow_consumer", v.as_str());
        }
        if let Some(v) = &self.dialect {
            o.set("--dialect", "ws.dialect", v.as_str());
        }
        set_int(
            &mut o,
            "--ping-interval",
            "ws.ping_interval",
            self.ping_interval,
        );
        set_int(
            &mut o,
            "--pong-timeout",
            "ws.pong_timeout",
            self.pong_timeout,
        );
        set_int(
            &mut o,
            "--handshake-timeout",
            "ws.handshake_timeout",
            self.handshake_timeout,
        );
        set_int(
            &mut o,
            "--shutdown-timeout",
            "shutdown_timeout",
            self.shutdown_timeout,
        );
        if self.no_client_publish {
            o.set("--no-client-publish", "ws.client_publish", false);
        }
        set_int(&mut o, "--history-size", "history.size", self.history_size);
        set_int(&mut o, "--history-ttl", "history.ttl", self.history_ttl);
        set_int(
            &mut o,
            "--rate-per-sec",
            "limits.rate_per_sec",
            self.rate_per_sec,
        );
        set_int(&mut o, "--rate-burst", "limits.rate_burst", self.rate_burst);
        if !self.allowed_origin.is_empty() {
            let list: Vec<toml::Value> = self
                .allowed_origin
                .iter()
                .map(|s| toml::Value::String(s.clone()))
                .collect();
            o.set("--allowed-origin", "ws.allowed_origins", list);
        }
        o
    }

    /// Loads and validates the configuration from these flags, the real
    /// process environment and the `--config` file.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        self.load_config_with_env(process_env())
    }

    /// [`load_config`](Self::load_config) with an explicit environment
    /// (for tests).
    pub fn load_config_with_env(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), env, &self.overrides())
    }
}

/// The process environment. Variables whose name is not UTF-8 cannot be
/// `RINGCAST_*` and are skipped; a non-UTF-8 value is passed on lossily
/// (and then fails its key's type check).
fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v): (OsString, OsString)| {
            let k = k.into_string().ok()?;
            let v = v
                .into_string()
                .unwrap_or_else(|v| v.to_string_lossy().into_owned());
            Some((k, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::config::{DriverKind, SlowConsumerPolicy};
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ringcast").chain(args.iter().copied()))
    }

    fn serve(args: &[&str]) -> ServeArgs {
        match parse(args).expect("parses").into_command() {
            Command::Serve(s) => s,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_is_serve() {
        let s = serve(&["--shards", "3"]);
        assert_eq!(s.shards, Some(3));
        let s = serve(&["serve", "--shards", "5"]);
        assert_eq!(s.shards, Some(5));
        let s = serve(&[]);
        let c = s.load_config_with_env(Vec::new()).expect("defaults");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn every_flag_reaches_its_key() {
        let s = serve(&[
            "--shards",
            "2",
            "--driver",
            "epoll",
            "--ws-listen",
            "127.0.0.1:7000",
            "--backend-listen",
            "127.0.0.1:7001",
            "--api-token",
            "tok",
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "--backlog",
            "128",
            "--max-connections",
            "1000",
            "--max-subscriptions",
            "7",
            "--max-message-size",
            "2048",
            "--max-outbound-bytes",
            "4096",
            "--slow-consumer",
            "drop",
            "--dialect",
            "rocketws",
            "--ping-interval",
            "3",
            "--pong-timeout",
            "4",
            "--handshake-timeout",
            "6",
            "--shutdown-timeout",
            "8",
            "--history-size",
            "9",
            "--history-ttl",
            "11",
            "--rate-per-sec",
            "12",
            "--rate-burst",
            "13",
            "--allowed-origin",
            "https://a",
            "--allowed-origin",
            "https://b",
        ]);
        let c = s.load_config_with_env(Vec::new()).expect("valid");
        assert_eq!(c.shards, 2);
        assert_eq!(c.driver, DriverKind::Epoll);
        assert_eq!(c.ws.listen, SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert_eq!(c.backend.listen, SocketAddr::from(([127, 0, 0, 1], 7001)));
        assert_eq!(c.backend.api_token, "tok");
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.log_format, crate::ops::config::LogFormat::Json);
        assert_eq!(c.ws.backlog, 128);
        assert_eq!(c.limits.max_connections, 1000);
        assert_eq!(c.limits.max_subscriptions_per_connection, 7);
        assert_eq!(c.limits.max_message_size, 2048);
        assert_eq!(c.limits.max_outbound_bytes, 4096);
        assert_eq!(c.limits.slow_consumer, SlowConsumerPolicy::Drop);
        assert_eq!(c.ws.dialect, crate::ops::config::Dialect::Rocketws);
        assert_eq!(c.ws.ping_interval, 3);
        assert_eq!(c.ws.pong_timeout, 4);
        assert_eq!(c.ws.handshake_timeout, 6);
        assert_eq!(c.shutdown_timeout, 8);
        assert_eq!(c.history.size, 9);
        assert_eq!(c.history.ttl, 11);
        assert_eq!(c.limits.rate_per_sec, 12);
        assert_eq!(c.limits.rate_burst, 13);
        assert_eq!(
            c.ws.allowed_origins,
            vec!["https://a".to_owned(), "https://b".to_owned()]
        );
    }

    #[test]
    fn rocketws_aliases_resolve_host_names() {
        let s = serve(&[
            "--ws-conn",
            "localhost:58000",
            "--ms-conn",
            "127.0.0.1:58001",
        ]);
        let c = s.load_config_with_env(Vec::new()).expect("valid");
        assert_eq!(c.ws.listen.port(), 58000);
        assert!(c.ws.listen.ip().is_loopback());
        assert_eq!(c.backend.listen, SocketAddr::from(([127, 0, 0, 1], 58001)));
    }

    #[test]
    fn flags_beat_env() {
        let s = serve(&["--shards", "2"]);
        let env = vec![
            ("RINGCAST_SHARDS".to_owned(), "9".to_owned()),
            ("RINGCAST_HISTORY_TTL".to_owned(), "5".to_owned()),
        ];
        let c = s.load_config_with_env(env).expect("valid");
        assert_eq!(c.shards, 2);
        assert_eq!(c.history.ttl, 5);
    }

    #[test]
    fn bad_flag_values_exit_2() {
        for args in [
            &["--shards", "many"][..],
            &["--driver", "kqueue"],
            &["--ws-listen", "abc"],
            &["--ms-conn", "nowhere"],
            &["--backlog", "-1"],
            &["--slow-consumer", "wait"],
            &["--bogus"],
        ] {
            let e = parse(args).expect_err("rejected");
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
        let e = parse(&["--ws-listen", "abc"])
            .expect_err("rejected")
            .to_string();
        assert!(e.contains("invalid socket address \"abc\""), "{e}");
    }

    #[test]
    fn out_of_range_flags_name_the_key() {
        let s = serve(&["--max-message-size", "10"]);
        let e = s.load_config_with_env(Vec::new()).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "invalid config: limits.max_message_size: must be at least 126 bytes (got 10)"
        );
        let s = serve(&["--backlog", "70000"]);
        let e = s.load_config_with_env(Vec::new()).expect_err("invalid");
        assert!(
            e.to_string().starts_with("invalid config: ws.backlog: "),
            "{e}"
        );
        let s = serve(&["--shards", "18446744073709551615"]);
        let e = s.load_config_with_env(Vec::new()).expect_err("invalid");
        assert!(e.to_string().starts_with("invalid config: shards: "), "{e}");
    }

    #[test]
    fn subcommands() {
        match parse(&["config", "--print-default"])
            .expect("parses")
            .into_command()
        {
            Command::Config(c) => assert!(c.print_default && !c.check),
            other => panic!("{other:?}"),
        }
        match parse(&["config", "--check", "--shards", "2"])
            .expect("parses")
            .into_command()
        {
            Command::Config(c) => {
                assert!(c.check);
                assert_eq!(c.serve.shards, Some(2));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["config"]).is_err());
        assert!(parse(&["config", "--check", "--print-default"]).is_err());
        match parse(&["shell"]).expect("parses").into_command() {
            Command::Shell(s) => assert_eq!(s.url, DEFAULT_SHELL_URL),
            other => panic!("{other:?}"),
        }
        match parse(&["shell", "--url", "http://h:1", "--token", "t"])
            .expect("parses")
            .into_command()
        {
            Command::Shell(s) => {
                assert_eq!(s.url, "http://h:1");
                assert_eq!(s.token.as_deref(), Some("t"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["doctor", "--driver", "uring"])
            .expect("parses")
            .into_command()
        {
            Command::Doctor(s) => assert_eq!(s.driver.as_deref(), Some("uring")),
            other => panic!("{other:?}"),
        }
        // Top-level serve flags do not mix with a subcommand.
        assert!(parse(&["--shards", "2", "shell"]).is_err());
    }
}
