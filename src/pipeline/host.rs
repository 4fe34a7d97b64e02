//! `agent`'s loop over the host: the event loop interrupted to attach the interpreter files
//! of processes that exec'd and of a periodic rescan, and to release container files no
//! process uses any more.
use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{interpreters_to_trace, Session};
use crate::discover::interpreters::{discover_process, process_file_ids, Scan};
use crate::exit::CliResult;

/// How often container files that no process uses any more are released, and exited
/// processes dropped from the summary's table.
const RELEASE_EVERY: Duration = Duration::from_secs(1);

/// What `agent` looks for while tracing.
pub struct Host {
    pub scan: Scan,
    /// How often to scan for new interpreter files (None: never).
    pub rescan: Option<Duration>,
    /// Discovery is on: the files of processes that exec'd are looked at.
    pub discover: bool,
}

impl Session<'_> {
    /// Traces until `stop`, attaching what appears meanwhile. `examined`: the files looked at
    /// so far (see `discover`).
    pub fn follow_host(
        &mut self,
        host: &Host,
        examined: &mut HashSet<(u64, u64)>,
        stop: impl Fn() -> bool,
    ) -> CliResult<()> {
        let execs = self.exec_queue();
        let mut next_rescan = host.rescan.map(|d| Instant::now() + d);
        let mut next_release = Instant::now() + RELEASE_EVERY;
        loop {
            self.trace(|| {
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
                if host.discover {
                    let found = discover_process(pid as i32, examined);
                    attached += self.attach_all(&found.traceable);
                    self.note_users(pid, &process_file_ids(pid as i32));
                }
                self.offer_functions(pid);
            }
            if attached > 0 {
                tracing::info!("now tracing {} interpreter files", self.attached_files());
                self.follow_running_processes();
            }
            if Instant::now() >= next_release {
                self.release_unused_files(examined);
                // Bounded memory whatever the rescan setting: exited processes leave the table.
                self.retire_exited_processes();
                next_release = Instant::now() + RELEASE_EVERY;
            }
            if next_rescan.is_some_and(|t| Instant::now() >= t) {
                // Interpreter files that appeared since (new installs, new containers); files seen
                // before are skipped with a stat.
                let found = interpreters_to_trace(&[], None, host.scan, examined)?;
                if self.attach_all(&found) > 0 {
                    tracing::info!("now tracing {} interpreter files", self.attached_files());
                }
                self.follow_running_processes();
                next_rescan = host.rescan.map(|d| Instant::now() + d);
            }
        }
        Ok(())
    }
}

/// Says which files and mappings were refused, and how many (also in
/// pyusdt.discovery.refused).
pub fn warn_refusals() {
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
}
