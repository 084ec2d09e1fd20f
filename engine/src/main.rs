//! The `ringcast` binary: `serve` (default), `config`, `shell`, `doctor`.

use std::process::ExitCode;

use clap::Parser as _;
use mimalloc::MiMalloc;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use ringcast::ops::cli::{Cli, Command, ServeArgs};
use ringcast::ops::config::{Config, ConfigError, LogFormat};

#[cfg(not(feature = "count-alloc"))]
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[cfg(feature = "count-alloc")]
#[global_allocator]
static GLOBAL: ringcast::runtime::sys::CountingAlloc<MiMalloc> =
    ringcast::runtime::sys::CountingAlloc(MiMalloc);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    match cli.into_command() {
        Command::Serve(args) => serve(&args),
        Command::Config(args) => {
            if args.print_default {
                print!("{}", Config::default_toml());
                return ExitCode::SUCCESS;
            }
            match args.serve.load_config() {
                Ok(c) => {
                    print!("{}", c.redacted().to_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => config_error(&e),
            }
        }
        Command::Shell(args) => exit(ringcast::ops::shell::run(&args.url, args.token.as_deref())),
        Command::Doctor(args) => match args.load_config() {
            Ok(c) => exit(ringcast::ops::doctor::run(&c)),
            Err(e) => config_error(&e),
        },
    }
}

/// Help and version print as clap prints them; any other command-line
/// error becomes one line naming the flag, exit code 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| {
        !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
    });
    let first = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    let rest: Vec<&str> = lines.filter(|l| l.starts_with('[')).collect();
    let prefix = if e.kind() == ErrorKind::InvalidValue || e.kind() == ErrorKind::ValueValidation {
        "invalid config: "
    } else {
        ""
    };
    if rest.is_empty() {
        eprintln!("{prefix}{first}");
    } else {
        eprintln!("{prefix}{first} {}", rest.join(" "));
    }
    exit(2)
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    exit(ConfigError::EXIT_CODE)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGCAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match args.load_config() {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    init_logging(&config);
    // Transparent huge pages make the allocator's arenas resident 2 MiB at a
    // time; with tens of thousands of small per-connection objects that
    // costs more RSS than it saves in TLB misses.
    if let Err(e) = ringcast::runtime::sys::disable_transparent_huge_pages() {
        tracing::debug!("could not disable transparent huge pages: {e}");
    }
    // Signals are caught before any shard runs, so none is lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = config.shutdown_timeout();
    let node = match ringcast::runtime::run(config) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(e.exit_code());
        }
    };
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down: closing clients with 1001");
    }
    node.shutdown();
    if !node.join(timeout + std::time::Duration::from_secs(1)) {
        tracing::warn!("shutdown_timeout passed with shards still closing; exiting");
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
