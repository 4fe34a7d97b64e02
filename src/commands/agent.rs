//! `pyusdt agent`: trace every Python process of the host, running now or started later.
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::AgentArgs;
use crate::commands::session::{interpreters_to_trace, Session, Terminal};
use crate::discover::interpreters::{discover, Scan};
use crate::exit::{CliError, CliResult, Exit};

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
    let binaries = interpreters_to_trace(&t.pythons, None, scan)?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(|e| {
            CliError::new(Exit::Failure, format!("installing a signal handler: {e}"))
        })?;
    }

    let mut storage = MaybeUninit::uninit();
    let mut session = Session::start(&mut storage, t, false, Terminal::Stdout)?;
    if session.attach_all(&binaries) == 0 {
        return Err(CliError::new(
            Exit::Failure,
            "could not attach to any interpreter file (see the warnings above)",
        ));
    }
    tracing::info!(
        "tracing {} ({}) in {} interpreter files; stop with Ctrl-C or SIGTERM",
        t.probes,
        "pid -1: every process using them, now and later",
        session.attached_files()
    );

    let rescan = (args.rescan_interval > 0).then(|| Duration::from_secs(args.rescan_interval));
    loop {
        let next_rescan = rescan.map(|d| Instant::now() + d);
        session.trace(|| {
            !stop.load(Ordering::Relaxed) && next_rescan.is_none_or(|t| Instant::now() < t)
        })?;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Interpreters that appeared since (new installs, new containers).
        let found = discover(&[], scan);
        let added = session.attach_all(&found.with_markers);
        if added > 0 {
            tracing::info!("now tracing {} interpreter files", session.attached_files());
        }
    }
    tracing::info!("stopping: detaching and flushing");
    session.finish()?;
    Ok(0)
}
