//! `pyusdt agent`: trace every Python process of the host, running now or started later.
use std::collections::HashSet;
use std::mem::MaybeUninit;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cli::AgentArgs;
use crate::discover::interpreters::{discover_process, process_file_ids, Scan};
use crate::pipeline::{
    interpreters_to_trace, no_interpreter_error, signal_flag, Session, Terminal,
};

/// How often container files that no process uses any more are released, and exited
/// processes dropped from the summary's table.
const RELEASE_EVERY: Duration = Duration::from_secs(1);
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

    let execs = session.exec_queue();
    let mut next_rescan = rescan.map(|d| Instant::now() + d);
    let mut next_release = Instant::now() + RELEASE_EVERY;
    loop {
        session.trace(|| {
            !stop()
                && execs.borrow().is_empty()
                && next_rescan.is_none_or(|t| Instant::now() < t)
                && Instant::now() < next_release
        })?;
        if stop() {
            break;
        }
        // Processes that exec'd: a new container's interpreter is attached now, not at the
        // next rescan. Files examined before cost a stat.
        let pids = std::mem::take(&mut *execs.borrow_mut());
        let mut attached = 0;
        for pid in pids {
            if !t.no_discover {
                let found = discover_process(pid as i32, &mut examined);
                attached += session.attach_all(&found.with_markers);
                session.note_users(pid, &process_file_ids(pid as i32));
            }
            session.offer_functions(pid);
        }
        if attached > 0 {
            tracing::info!("now tracing {} interpreter files", session.attached_files());
            session.follow_running_processes();
        }
        if Instant::now() >= next_release {
            session.release_unused_files(&mut examined);
            // Bounded memory whatever the rescan setting: exited processes leave the table.
            session.retire_exited_processes();
            next_release = Instant::now() + RELEASE_EVERY;
        }
        if next_rescan.is_some_and(|t| Instant::now() >= t) {
            // Interpreter files that appeared since (new installs, new containers); files seen
            // before are skipped with a stat.
            let found = interpreters_to_trace(&[], None, scan, &mut examined)?;
            if session.attach_all(&found) > 0 {
                tracing::info!("now tracing {} interpreter files", session.attached_files());
            }
            session.follow_running_processes();
            next_rescan = rescan.map(|d| Instant::now() + d);
        }
    }
    let refused: Vec<String> = crate::discover::refusals::counts()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(reason, n)| format!("{} {n}", reason.label()))
        .collect();
    if !refused.is_empty() {
        tracing::warn!(
            "files and mappings refused (pyusdt.discovery.refused): {}",
            refused.join(", ")
        );
    }
    tracing::info!("stopping: detaching and flushing");
    session.finish()?;
    Ok(0)
}
