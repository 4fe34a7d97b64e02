//! `--metrics-only` with the audit marker: audit events are counted in the kernel per process
//! and name (bpf/pyusdt.bpf.c `audit_counts`), and this reads the counts between ring-buffer
//! polls, handing the increase since the last read to the sinks. A process's counts are
//! deleted from the kernel once it has exited and they were read for the last time.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::attach::Tracer;
use crate::report::Sinks;

/// How often the counts are read (the metrics export interval is longer).
const READ_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct AuditCounts {
    /// What the kernel had counted at the last read, per (PID, event name).
    last: HashMap<(u32, String), u64>,
    read_at: Option<Instant>,
}

impl AuditCounts {
    /// Reads the counts when due (`force`: now, e.g. before the summary).
    pub fn read(
        &mut self,
        tracer: &Tracer<'_>,
        sinks: &mut Sinks,
        pids_are_ours: bool,
        force: bool,
    ) {
        if !force && self.read_at.is_some_and(|t| t.elapsed() < READ_EVERY) {
            return;
        }
        self.read_at = Some(Instant::now());
        let now = crate::report::clock::monotonic_ns();
        // Processes gone before this read (looked at first): nothing can add to their counts
        // any more, so this read is their last.
        let exited: HashSet<u32> = if pids_are_ours {
            self.last
                .keys()
                .map(|(pid, _)| *pid)
                .filter(|&pid| !crate::discover::process::is_alive(pid))
                .collect()
        } else {
            HashSet::new()
        };
        for c in tracer.audit_counts() {
            let seen = self.last.entry((c.pid, c.name.clone())).or_insert(0);
            // The kernel's counts only grow while the key lives.
            if c.count > *seen {
                sinks.audit_counted(c.pid, &c.name, c.count - *seen, now);
                *seen = c.count;
            }
        }
        if !exited.is_empty() {
            tracer.forget_audit_counts(&exited);
            self.last.retain(|(pid, _), _| !exited.contains(pid));
        }
    }
}
