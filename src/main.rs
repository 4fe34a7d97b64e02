//! pyusdt: CPython's USDT markers (gc, import, audit) as events, from a sidecar process.
//!
//! The command line; the data path (`discover` → `attach` → `decode` → `report`) is the
//! library's (src/lib.rs).

use std::io::{IsTerminal, Write};

use clap::Parser;
use tracing_subscriber::EnvFilter;

use pyusdt::cli::{Cli, Command};
use pyusdt::commands;

fn main() {
    let cli = Cli::parse();
    // Our own diagnostics go to stderr; PYUSDT_LOG=debug (or any EnvFilter directive) for more.
    // `--quiet` keeps warnings and errors only. kube's own retry logs are off:
    // src/k8s/watch.rs says once what is wrong and what to do.
    let quiet = match &cli.command {
        Command::Run(a) => a.trace.quiet,
        Command::Agent(a) => a.trace.quiet,
        _ => false,
    };
    let level = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_env("PYUSDT_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},kube_runtime=off,kube_client=off")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        // A closed stderr (`pyusdt run ... 2>&1 | head -1`) must end our output quietly, as
        // `ls | head` does, never tracing or the command: by default the subscriber reports
        // a failed write with eprintln!, which panics on EPIPE.
        .log_internal_errors(false)
        .init();

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
            // Not eprintln!: it panics when stderr is a closed pipe.
            let _ = writeln!(std::io::stderr(), "pyusdt: error: {e}");
            std::process::exit(e.exit as i32);
        }
    }
}
