//! `ringcast-loadgen`: the companion load generator of ringcast (SPEC §8).
//!
//! Opens thousands of WebSocket connections, drives publications through
//! the backend port, and reports deliveries/s, loss, duplicates, reordering,
//! latency and — given the server's pid — what the server spent.
//!
//! # Layout
//! - [`cli`]: arguments, validation (one line, exit 2).
//! - [`run`]: scenarios, thread and process pools, phases, the report.
//! - [`client`]: the per-thread mio event loop of WebSocket connections.
//! - [`publisher`]: pipelined `emit` calls to the backend port.
//! - [`frame`], [`handshake`], [`scan`]: the client protocol without I/O.
//! - [`tracker`]: loss/duplicate/reorder accounting per subscription.
//! - [`report`]: the report, its merging, the human table.
//! - [`procstat`], [`sys`]: /proc readings and the few raw system calls.

pub mod cli;
pub mod client;
pub mod frame;
pub mod handshake;
pub mod procstat;
pub mod publisher;
pub mod report;
pub mod run;
pub mod scan;
pub mod sys;
pub mod tracker;

use clap::Parser;
use std::process::ExitCode;

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("ringcast-loadgen: {msg}");
    ExitCode::from(2)
}

/// The whole program; `main.rs` only calls this.
pub fn main_entry() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
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
            let first = text.lines().next().unwrap_or("invalid arguments");
            return usage_error(first.trim_start_matches("error: "));
        }
    };
    let settings = match cli::validate(cli) {
        Ok(s) => s,
        Err(msg) => return usage_error(&msg),
    };
    if let Ok(spec) = std::env::var(run::WORKER_ENV) {
        return match run::run_worker(&settings, &spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringcast-loadgen worker {spec}: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let report = match run::run(&settings) {
        Ok(r) => r,
        Err(e) => {
            if let Some(u) = e.downcast_ref::<run::UsageError>() {
                return usage_error(&u.0);
            }
            eprintln!("ringcast-loadgen: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    if let Some(path) = &settings.opts.json {
        let json = serde_json::to_string_pretty(&report).expect("report serializes");
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("ringcast-loadgen: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let failures = report.failures();
    if !failures.is_empty() {
        eprintln!("ringcast-loadgen: FAILED: {}", failures.join(", "));
        if !settings.opts.allow_loss {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
