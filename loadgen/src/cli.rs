//! Command-line interface: scenarios as subcommands, shared options global,
//! Thor's `-a -n -s` at the top level. Bad arguments become one line and
//! exit code 2.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

#[derive(Debug, Parser, Clone)]
#[command(
    name = "ringcast-loadgen",
    version,
    about = "Load generator for ringcast: connections, deliveries/s, loss, latency, server cost",
    after_help = "Without a subcommand, runs Thor's test: -a connections, each receiving -n messages on its own channel."
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
    #[command(flatten)]
    pub opts: Opts,
}

#[derive(Debug, Subcommand, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// C connections subscribe to K channels; publish R messages/s for T seconds through the backend.
    Fanout,
    /// Like fanout, publishing as fast as acknowledgements allow within --window.
    Saturate,
    /// Handshake + subscribe rate, failures by reason, handshake latency.
    Connect,
    /// Hold C connections for T seconds answering pings; sample server RSS.
    Idle,
    /// C clients each send_data --rate times per second to shared channels.
    Chat,
    /// Open and close --rate connections per second for T seconds; server RSS and fds before/after.
    Churn,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Saturate => "saturate",
            Scenario::Connect => "connect",
            Scenario::Idle => "idle",
            Scenario::Chat => "chat",
            Scenario::Churn => "churn",
        }
    }
}

/// What the WebSocket connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientProtocol {
    /// ringcast's JSON-RPC protocol.
    Native,
    /// DMOJ's event daemon receiver protocol.
    Dmoj,
    /// Socket.IO v4 (Engine.IO v4 over WebSocket), as LQDOJ's receivers.
    Socketio,
    /// ws4redis (django-websocket-redis), as Rodan's client.
    Ws4redis,
}

#[derive(Debug, clap::Args, Clone)]
pub struct Opts {
    /// WebSocket server HOST:PORT; several, comma-separated (the nodes
    /// of a ringcast cluster), spread the connections over them, thread
    /// by thread (give at least as many --threads).
    #[arg(
        short = 's',
        long = "server",
        global = true,
        default_value = "127.0.0.1:58000"
    )]
    pub server: String,
    /// Request path of the WebSocket endpoint.
    #[arg(long, global = true, default_value = "/")]
    pub path: String,
    /// Client protocol the connections speak.
    ///
    /// native: JSON-RPC `subscribe`; loss and order are tracked by channel
    /// offsets (from the subscribe result and the backend's emit replies).
    ///
    /// dmoj: DMOJ's event daemon receiver (use `--path /event/` on the
    /// public port with `[protocols.dmoj] enabled = true`, or the receivers
    /// listener as --server). Each connection sends `set-filter` with its
    /// channels, then an unknown command whose `bad-command` error, answered
    /// in order, marks the filter as in place. DMOJ frames
    /// `{"id":I,"channel":C,"message":M}` carry node-wide ids, not offsets,
    /// so loss and order are tracked by the `seq` the publisher puts in each
    /// payload: the message's number on its channel (1, 2, ... per channel,
    /// as offsets on a fresh channel), checked against the highest `seq`
    /// the backend acknowledged. Publishing still goes through the backend
    /// port. Not for `chat` (DMOJ receivers cannot publish).
    ///
    /// socketio: LQDOJ's Socket.IO receivers over Engine.IO v4 WebSocket
    /// (`[protocols.socketio] enabled = true`; --path `/` becomes
    /// `/socket.io/`, and `?EIO=4&transport=websocket` is added). Each
    /// connection sends `40` then `set-filter`; the `status` event that
    /// answers it marks the filter as in place; pings `2` are answered
    /// `3`. Live `42["message",{"id","channel","message"}]` frames are
    /// tracked by `seq` as with dmoj. Not for `chat`.
    ///
    /// ws4redis: Rodan's client (`[protocols.ws4redis] heartbeat` must be
    /// set; --path `/` becomes
    /// `/ws/rodan?subscribe-broadcast&publish-broadcast&echo`). The URL
    /// subscribes; each connection sends --heartbeat, and the server's
    /// heartbeat answering it marks the subscription as in place. Frames
    /// are exactly the published bytes, tracked by `seq` as with dmoj on
    /// the one channel --ws4redis-channel, which the publisher uses. In
    /// Thor mode (no subcommand) each connection also runs Thor's cycle -n
    /// times: send a message (the heartbeat, which is never published),
    /// wait for a frame. Not for `chat`.
    #[arg(long, global = true, value_enum, default_value_t = ClientProtocol::Native, verbatim_doc_comment)]
    pub protocol: ClientProtocol,
    /// Backend (publishing) HOST:PORT.
    #[arg(long, global = true, default_value = "127.0.0.1:59999")]
    pub backend: String,
    /// Connections to open (Thor's -a).
    #[arg(short = 'a', short_alias = 'c', long = "connections", global = true, default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,
    /// Channels; connection i subscribes to channel i mod K (Thor mode: one per connection).
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub channels: Option<u64>,
    /// Publications/s (fanout), send_data/s per client (chat), connections/s (churn).
    #[arg(long, global = true, allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// Seconds to run the measured phase.
    #[arg(
        short = 'd',
        long,
        global = true,
        default_value_t = 10.0,
        allow_negative_numbers = true
    )]
    pub duration: f64,
    /// Publications in total (fanout, saturate) or per client (chat, Thor's -n).
    #[arg(short = 'n', long, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: Option<u64>,
    /// Payload bytes per message.
    #[arg(long, global = true, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub size: u64,
    /// Backend requests in flight at most.
    #[arg(long, global = true, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub window: u64,
    /// Client threads per process, each pinned to its own core.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: u64,
    /// Worker processes to split connections over (for fd limits).
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub processes: u64,
    /// Bind sources round-robin to 127.0.0.1 … 127.0.0.N (0 = kernel's choice).
    #[arg(long, global = true, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=254))]
    pub src_ips: u64,
    /// Connections in handshake at once, in total.
    #[arg(long, global = true, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_concurrency: u64,
    /// Seconds a connection may take to connect, upgrade and subscribe.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds to wait for outstanding deliveries after publishing ends.
    #[arg(long, global = true, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// Publish with Redis PUBLISH to this Redis server (HOST:PORT) instead
    /// of the backend's emit, for a ringcast with `[sources.redis]` on.
    #[arg(long, global = true)]
    pub redis: Option<String>,
    /// ws4redis: the heartbeat string the server is configured with.
    #[arg(long, global = true, default_value = "--heartbeat--")]
    pub heartbeat: String,
    /// ws4redis: the ringcast channel the --path subscribes to (ws4redis's
    /// `{prefix}:broadcast:{facility}`); the publisher publishes there.
    #[arg(long, global = true, default_value = "rodan:broadcast:rodan")]
    pub ws4redis_channel: String,
    /// Seconds to wait for the backend's next answer to a publication;
    /// past it publishing stops and the run fails.
    #[arg(long, global = true, default_value_t = 30.0)]
    pub backend_timeout: f64,
    /// The server's pid: report its CPU per delivery and RSS per connection.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Write the full report as JSON to FILE.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Exit 0 even with loss, duplicates, reordering or unexpected closes.
    #[arg(long, global = true)]
    pub allow_loss: bool,
    /// Do not pin client threads to cores.
    #[arg(long, global = true)]
    pub no_pin: bool,
    /// First core to pin client threads to.
    #[arg(long, global = true, default_value_t = 0)]
    pub first_core: usize,
    /// Channel name prefix (default: lg-<pid>-).
    #[arg(long, global = true)]
    pub channel_prefix: Option<String>,
    /// Testing aid: the first N connections stop reading for --stall-seconds
    /// when publishing starts (shows how a server treats slow consumers).
    #[arg(long, global = true, default_value_t = 0, hide = true)]
    pub stall_connections: u64,
    /// Testing aid: how long stalled connections stop reading.
    #[arg(long, global = true, default_value_t = 2.0, hide = true)]
    pub stall_seconds: f64,
    /// Testing aid: backdate each payload's timestamp by this many ms, a
    /// known delay the latency figures must show.
    #[arg(long, global = true, default_value_t = 0, hide = true)]
    pub ts_backdate_ms: u64,
}

/// Arguments checked and resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub scenario: Scenario,
    pub thor: bool,
    /// The first of `servers`.
    pub server: SocketAddr,
    pub host_header: String,
    /// Every `--server` address, with its Host header.
    pub servers: Vec<(SocketAddr, String)>,
    pub backend: SocketAddr,
    pub opts: Opts,
    pub channels: u64,
    pub src_ips: Vec<IpAddr>,
    /// `--redis`: publish through this Redis server.
    pub redis: Option<SocketAddr>,
}

fn resolve(what: &str, s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("invalid {what} address {s:?}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("invalid {what} address {s:?}: no IPv4 address"))
}

fn positive(name: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("--{name} must be a positive number, got {v}"))
    }
}

/// Checks the parsed arguments; the error is one line for the user.
pub fn validate(cli: Cli) -> Result<Settings, String> {
    let o = cli.opts;
    let thor = cli.scenario.is_none();
    let scenario = cli.scenario.unwrap_or(Scenario::Saturate);
    positive("duration", o.duration)?;
    positive("connect-timeout", o.connect_timeout)?;
    positive("drain-timeout", o.drain_timeout)?;
    positive("backend-timeout", o.backend_timeout)?;
    if let Some(r) = o.rate {
        positive("rate", r)?;
    }
    if o.protocol == ClientProtocol::Dmoj && scenario == Scenario::Chat {
        return Err("--protocol dmoj cannot run chat: DMOJ receivers do not publish".into());
    }
    if o.protocol == ClientProtocol::Socketio && scenario == Scenario::Chat {
        return Err("--protocol socketio cannot run chat: LQDOJ's receivers do not publish".into());
    }
    if o.redis.is_some() && scenario != Scenario::Fanout {
        return Err(
            "--redis publishes with fanout only: Redis answers a PUBLISH before ringcast \
                    has the message, so a window of answers paces nothing (use fanout --rate)"
                .into(),
        );
    }
    if o.protocol == ClientProtocol::Ws4redis && scenario == Scenario::Chat {
        return Err("--protocol ws4redis cannot run chat: publish through the backend".into());
    }
    if o.protocol == ClientProtocol::Ws4redis && o.channels.is_some_and(|c| c != 1) {
        return Err("--protocol ws4redis has one channel, --ws4redis-channel".into());
    }
    if o.protocol == ClientProtocol::Ws4redis && o.heartbeat.is_empty() {
        return Err("--protocol ws4redis needs a --heartbeat string".into());
    }
    let mut o = o;
    if o.protocol == ClientProtocol::Ws4redis && o.path == "/" {
        o.path = "/ws/rodan?subscribe-broadcast&publish-broadcast&echo".into();
    }
    if o.protocol == ClientProtocol::Socketio {
        if o.path == "/" {
            o.path = "/socket.io/".into();
        }
        if !o.path.contains('?') {
            o.path.push_str("?EIO=4&transport=websocket");
        }
    }
    if o.processes > o.connections {
        return Err(format!(
            "--processes {} is more than --connections {}",
            o.processes, o.connections
        ));
    }
    if o.threads * o.processes > o.connections {
        return Err(format!(
            "--threads {} x --processes {} is more than --connections {}",
            o.threads, o.processes, o.connections
        ));
    }
    if let Some(p) = &o.channel_prefix {
        if p.is_empty()
            || p.len() > 200
            || !p
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(format!("--channel-prefix {p:?} must be printable ASCII without spaces, quotes or backslashes"));
        }
    }
    if !o.path.starts_with('/') || o.path.contains(char::is_whitespace) {
        return Err(format!(
            "--path {:?} must start with / and hold no spaces",
            o.path
        ));
    }
    let servers = o
        .server
        .split(',')
        .map(|a| Ok((resolve("--server", a)?, a.to_owned())))
        .collect::<Result<Vec<_>, String>>()?;
    let server = servers[0].0;
    let backend = resolve("--backend", &o.backend)?;
    let redis = o
        .redis
        .as_deref()
        .map(|r| resolve("--redis", r))
        .transpose()?;
    let src_ips: Vec<IpAddr> = (1..=o.src_ips)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
        .collect();
    if !src_ips.is_empty() && servers.iter().any(|(a, _)| !a.ip().is_loopback()) {
        return Err("--src-ips needs a loopback --server (127.0.0.0/8)".into());
    }
    let channels = match o.channels {
        _ if o.protocol == ClientProtocol::Ws4redis => 1,
        Some(k) => k,
        None if thor => o.connections,
        None => 1,
    };
    if channels > 1_000_000 {
        return Err(format!("--channels {channels} is more than 1000000"));
    }
    Ok(Settings {
        scenario,
        thor,
        server,
        host_header: servers[0].1.clone(),
        servers,
        backend,
        opts: o,
        channels,
        src_ips,
        redis,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let mut v = vec!["ringcast-loadgen"];
        v.extend_from_slice(args);
        let cli = Cli::try_parse_from(v).map_err(|e| e.to_string())?;
        validate(cli)
    }

    #[test]
    fn thor_flags() {
        let s = parse(&["-a", "10000", "-n", "1", "-s", "127.0.0.1:9000"]).unwrap();
        assert!(s.thor);
        assert_eq!(s.opts.connections, 10000);
        assert_eq!(s.opts.messages, Some(1));
        assert_eq!(s.channels, 10000);
        assert_eq!(s.server, "127.0.0.1:9000".parse().unwrap());
    }

    #[test]
    fn several_servers_for_a_cluster() {
        let s = parse(&["-a", "9", "-n", "1", "-s", "127.0.0.1:9000,127.0.0.1:9001"]).unwrap();
        let addrs: Vec<String> = s.servers.iter().map(|(a, _)| a.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:9000", "127.0.0.1:9001"]);
        assert_eq!(s.servers[1].1, "127.0.0.1:9001");
        assert_eq!(s.server, "127.0.0.1:9000".parse().unwrap());
        assert!(parse(&["-a", "9", "-n", "1", "-s", "127.0.0.1:9000,nope"]).is_err());
    }

    #[test]
    fn subcommand_with_global_options_either_side() {
        let s = parse(&[
            "--threads",
            "2",
            "fanout",
            "-c",
            "2000",
            "--rate",
            "250",
            "--src-ips",
            "4",
        ])
        .unwrap();
        assert_eq!(s.scenario, Scenario::Fanout);
        assert!(!s.thor);
        assert_eq!(s.opts.threads, 2);
        assert_eq!(s.channels, 1);
        assert_eq!(s.src_ips.len(), 4);
        assert_eq!(s.src_ips[3], "127.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(s.opts.protocol, ClientProtocol::Native);
        let d = parse(&["fanout", "--protocol", "dmoj", "--path", "/event/"]).unwrap();
        assert_eq!(d.opts.protocol, ClientProtocol::Dmoj);
        let s = parse(&["fanout", "--protocol", "socketio"]).unwrap();
        assert_eq!(s.opts.protocol, ClientProtocol::Socketio);
        assert_eq!(s.opts.path, "/socket.io/?EIO=4&transport=websocket");
        let s = parse(&[
            "fanout",
            "--protocol",
            "socketio",
            "--path",
            "/x/?EIO=4&transport=websocket",
        ])
        .unwrap();
        assert_eq!(s.opts.path, "/x/?EIO=4&transport=websocket");
    }

    #[test]
    fn ws4redis_and_redis_options() {
        let s = parse(&["-a", "100", "-n", "10", "--protocol", "ws4redis"]).unwrap();
        assert!(s.thor);
        assert_eq!(s.channels, 1);
        assert_eq!(
            s.opts.path,
            "/ws/rodan?subscribe-broadcast&publish-broadcast&echo"
        );
        assert_eq!(s.opts.heartbeat, "--heartbeat--");
        assert_eq!(s.opts.ws4redis_channel, "rodan:broadcast:rodan");
        let s = parse(&[
            "fanout",
            "--protocol",
            "ws4redis",
            "--redis",
            "127.0.0.1:6379",
        ])
        .unwrap();
        assert_eq!(s.redis, Some("127.0.0.1:6379".parse().unwrap()));
        for (args, error) in [
            (
                &["saturate", "--redis", "127.0.0.1:6379"][..],
                "--redis publishes with fanout only",
            ),
            (
                &["-a", "10", "--redis", "127.0.0.1:6379"][..],
                "--redis publishes with fanout only",
            ),
            (
                &["fanout", "--protocol", "ws4redis", "--channels", "2"][..],
                "--protocol ws4redis has one channel",
            ),
            (
                &["fanout", "--protocol", "ws4redis", "--heartbeat", ""][..],
                "--protocol ws4redis needs a --heartbeat string",
            ),
            (
                &["chat", "--protocol", "ws4redis"][..],
                "--protocol ws4redis cannot run chat",
            ),
            (
                &["fanout", "--backend-timeout", "0"][..],
                "--backend-timeout must be a positive number",
            ),
        ] {
            let e = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"));
            assert!(e.starts_with(error), "{args:?}: {e}");
        }
    }

    #[test]
    fn bad_arguments_are_refused() {
        for args in [
            &["fanout", "--rate", "0"][..],
            &["fanout", "--duration", "-1"],
            &["fanout", "-c", "0"],
            &["fanout", "-c", "2", "--processes", "3"],
            &["fanout", "--server", "nowhere"],
            &["fanout", "--src-ips", "300"],
            &["fanout", "--channel-prefix", "a b"],
            &["bogus"],
            &["fanout", "--threads", "x"],
            &["chat", "--protocol", "dmoj"],
        ] {
            assert!(parse(args).is_err(), "{args:?} accepted");
        }
    }
}
