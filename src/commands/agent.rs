//! `pyusdt agent`: trace every Python process of the host, running now or started later.
use std::collections::HashSet;
use std::mem::MaybeUninit;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cli::AgentArgs;
use crate::discover::interpreters::Scan;
use crate::pipeline::{
    interpreters_to_trace, no_interpreter_error, signal_flag, Session, Terminal,
};

use crate::exit::{CliError, CliResult, Exit};
use crate::pipeline::host::Host;

pub fn run(args: &AgentArgs) -> CliResult<i32> {
    let t = &args.trace;
    if t.no_discover && t.pythons.is_empty() {
        return Err(CliError::new(
            Exit::Usage,
            "--no-discover needs at least one --python PATH to attach to",
        ));
    }
    let scan = Scan {
        processes: !t.no_discover,
        locations: !t.no_discover,
    };
    // Without discovery there is nothing new to find: no rescan.
    let rescan = (args.rescan_interval > 0 && !t.no_discover)
        .then(|| Duration::from_secs(args.rescan_interval));
    let mut examined = HashSet::new();
    let binaries = interpreters_to_trace(&t.pythons, None, scan, &mut examined)?;
    // A node's interpreters may all arrive later (containers): wait for them, unless nothing
    // would ever look.
    if binaries.is_empty() && rescan.is_none() {
        return Err(no_interpreter_error());
    }

    let interrupted = signal_flag(libc::SIGINT)?;
    let terminated = signal_flag(libc::SIGTERM)?;
    let stop = || interrupted.load(Ordering::Relaxed) || terminated.load(Ordering::Relaxed);

    let mut storage = MaybeUninit::uninit();
    let privileges = crate::privileges::Policy {
        run_as: args.run_as.unwrap_or(crate::privileges::NOBODY),
        explicit: args.run_as.is_some(),
        allow_privileged: args.allow_privileged_after_attach,
    };
    let mut session = Session::start(
        &mut storage,
        t,
        false,
        Terminal::Stdout,
        Some(0.05),
        Some(privileges),
    )?;
    session.tracer.limit_files(args.max_interpreter_files);
    session.attach_all(&binaries);
    session.warn_without_function_probes();
    session.follow_running_processes();
    if session.attached_files() == 0 {
        tracing::warn!(
            "no interpreter with CPython markers attached yet; looking again every {} s",
            args.rescan_interval
        );
    }
    tracing::info!(
        "tracing {} in {} interpreter files (every process using them, now and later); \
         stop with Ctrl-C or SIGTERM",
        t.probes,
        session.attached_files()
    );

    session.follow_host(
        &Host {
            scan,
            rescan,
            discover: !t.no_discover,
        },
        &mut examined,
        stop,
    )?;
    crate::pipeline::host::warn_refusals();
    tracing::info!("stopping: detaching and flushing");
    session.finish()?;
    Ok(0)
}
