//! pyusdt: CPython's USDT markers (gc, import, audit) as events, from a sidecar process.
//!
//! Data path: `discover` (which files carry markers) → `attach` (BPF programs on them) →
//! `decode` (ring buffer records) → `report` (console, JSON lines, summary).
mod attach;
mod bpf;
mod budget;
mod cli;
mod code_names;
mod commands;
mod decode;
mod discover;
mod exit;
mod export;
mod k8s;
mod model;
mod preflight;
mod privileges;
mod probes;
mod report;
mod serve;

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() {
    // Our own diagnostics go to stderr; PYUSDT_LOG=debug (or any EnvFilter directive) for more.
    // kube's own retry logs are off: src/k8s/watch.rs says once what is wrong and what to do.
    let filter = EnvFilter::try_from_env("PYUSDT_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,kube_runtime=off,kube_client=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();

    let cli = Cli::parse();
    let result = match &cli.command {
        Command::List(args) => commands::list::run(args),
        Command::Doctor(args) => commands::doctor::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Agent(args) => commands::agent::run(args),
        Command::Top(args) => commands::top::run(args),
        Command::Flow(args) => commands::flow::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("pyusdt: error: {e}");
            std::process::exit(e.exit as i32);
        }
    }
}
