//! `--metrics-only`: GC and import durations are aggregated in the kernel per process and
//! series, call durations per code location, and audit events counted per process and name
//! (bpf/pyusdt.bpf.c `gc_agg`, `import_agg`, `func_agg`, `audit_counts`). This reads them between ring-buffer polls and hands the
//! increase since the last read to the sinks. A process's aggregates are deleted from the
//! kernel once it has exited and they were read for the last time.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::attach::Tracer;
use crate::decode::CodeRef;
use crate::model::metrics::{KernelDurations, KernelUpdate};
use crate::pipeline::code_names::CodeNames;
use crate::report::Sinks;

/// How often the aggregates are read (the metrics export interval is longer).
const READ_EVERY: Duration = Duration::from_secs(1);
/// How long calls of a code location wait for its names: the record carrying them can still
/// be on its way through the ring buffer when its later calls are read here.
const NAMES_GRACE: Duration = Duration::from_secs(3);

/// Which kernel table a series comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Table {
    Gc,
    Import,
}

#[derive(Default)]
pub struct KernelMetrics {
    /// What the kernel had at the last read, per (table, PID, series).
    durations: HashMap<(Table, u32, i32), KernelDurations>,
    /// Audit counts at the last read, per (PID, event name).
    audits: HashMap<(u32, String), u64>,
    /// Call durations at the last read, per code location.
    calls: HashMap<CodeRef, KernelDurations>,
    /// Code locations whose calls wait for their names, since when.
    unnamed_since: HashMap<CodeRef, Instant>,
    read_at: Option<Instant>,
}

impl KernelMetrics {
    /// Reads the aggregates when due (`force`: now). Calls are named from `names` (learnt
    /// from each location's first record); those of a location whose names have not come
    /// within NAMES_GRACE are counted as lost, and its names asked for again.
    pub fn read(
        &mut self,
        tracer: &Tracer<'_>,
        sinks: &mut Sinks,
        names: &mut CodeNames,
        pids_are_ours: bool,
        force: bool,
    ) {
        if !force && self.read_at.is_some_and(|t| t.elapsed() < READ_EVERY) {
            return;
        }
        self.read_now(tracer, sinks, names, pids_are_ours, false);
    }

    /// The last read, once the ring buffer is drained: names that have not come never will.
    pub fn finish(
        &mut self,
        tracer: &Tracer<'_>,
        sinks: &mut Sinks,
        names: &mut CodeNames,
        pids_are_ours: bool,
    ) {
        self.read_now(tracer, sinks, names, pids_are_ours, true);
    }

    fn read_now(
        &mut self,
        tracer: &Tracer<'_>,
        sinks: &mut Sinks,
        names: &mut CodeNames,
        pids_are_ours: bool,
        last_read: bool,
    ) {
        self.read_at = Some(Instant::now());
        let now = crate::model::clock::monotonic_ns();
        // Processes gone before this read (looked at first): nothing can add to their
        // aggregates any more, so this read is their last.
        let exited: HashSet<u32> = if pids_are_ours {
            self.pids()
                .filter(|&pid| !crate::discover::process::is_alive(pid))
                .collect()
        } else {
            HashSet::new()
        };
        for (table, all) in [
            (Table::Gc, tracer.gc_aggregates()),
            (Table::Import, tracer.import_aggregates()),
        ] {
            for a in all {
                let last = self.durations.entry((table, a.pid, a.series)).or_default();
                let d = increase(&a.totals, last);
                *last = a.totals;
                if d.events == 0 && d.timed == 0 {
                    continue;
                }
                let update = match table {
                    Table::Gc => KernelUpdate::Gc {
                        generation: a.series,
                        d: &d,
                    },
                    Table::Import => KernelUpdate::Import {
                        found: a.series & 1 != 0,
                        top_level: a.series & 2 != 0,
                        d: &d,
                    },
                };
                sinks.kernel_aggregated(a.pid, update, now);
            }
        }
        for (code, totals) in tracer.function_aggregates() {
            let last = self.calls.entry(code).or_default();
            let d = increase(&totals, last);
            if d.events == 0 && d.timed == 0 {
                continue;
            }
            if let Some((name, file)) = names.names_of(&code) {
                sinks.kernel_aggregated(
                    code.pid,
                    KernelUpdate::Function { name, file, d: &d },
                    now,
                );
                self.unnamed_since.remove(&code);
            } else {
                // The record with the names may still be in the ring, even once the process
                // has exited: its aggregates are kept until then (see below).
                let since = *self.unnamed_since.entry(code).or_insert_with(Instant::now);
                if !last_read && since.elapsed() < NAMES_GRACE {
                    continue; // read again next time, `last` unchanged
                }
                names.unresolved += d.events;
                tracer.forget_code(&code);
                self.unnamed_since.remove(&code);
            }
            *last = totals;
        }
        for c in tracer.audit_counts() {
            let seen = self.audits.entry((c.pid, c.name.clone())).or_insert(0);
            // The kernel's counts only grow while the key lives.
            if c.count > *seen {
                let n = c.count - *seen;
                sinks.kernel_aggregated(c.pid, KernelUpdate::Audit { name: &c.name, n }, now);
                *seen = c.count;
            }
        }
        // An exited process whose calls still wait for their names is forgotten later.
        let exited: HashSet<u32> = exited
            .into_iter()
            .filter(|pid| !self.unnamed_since.keys().any(|code| code.pid == *pid))
            .collect();
        if !exited.is_empty() {
            tracer.forget_aggregates(&exited);
            self.durations
                .retain(|(_, pid, _), _| !exited.contains(pid));
            self.audits.retain(|(pid, _), _| !exited.contains(pid));
            self.calls.retain(|code, _| !exited.contains(&code.pid));
            self.unnamed_since
                .retain(|code, _| !exited.contains(&code.pid));
        }
    }

    fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        let mut pids: HashSet<u32> = self.durations.keys().map(|&(_, pid, _)| pid).collect();
        pids.extend(self.audits.keys().map(|(pid, _)| *pid));
        pids.extend(self.calls.keys().map(|code| code.pid));
        pids.into_iter()
    }
}

/// What was added to a series since `last` (the kernel's totals only grow while its key
/// lives); the minimum and maximum stay the lifetime ones.
fn increase(now: &KernelDurations, last: &KernelDurations) -> KernelDurations {
    let mut buckets = now.buckets;
    for (b, l) in buckets.iter_mut().zip(last.buckets) {
        *b = b.saturating_sub(l);
    }
    KernelDurations {
        events: now.events.saturating_sub(last.events),
        timed: now.timed.saturating_sub(last.timed),
        sum_ns: now.sum_ns.saturating_sub(last.sum_ns),
        buckets,
        extra: now.extra - last.extra,
        min_ns: now.min_ns,
        max_ns: now.max_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increases_are_differences_and_keep_lifetime_extremes() {
        let mut a = KernelDurations {
            events: 3,
            timed: 2,
            sum_ns: 30,
            extra: 7,
            min_ns: Some(10),
            max_ns: Some(20),
            ..Default::default()
        };
        a.buckets[0] = 2;
        let mut b = a.clone();
        b.events = 5;
        b.timed = 4;
        b.sum_ns = 100;
        b.extra = 9;
        b.buckets[0] = 3;
        b.buckets[4] = 1;
        b.max_ns = Some(40);
        let d = increase(&b, &a);
        assert_eq!((d.events, d.timed, d.sum_ns, d.extra), (2, 2, 70, 2));
        assert_eq!((d.buckets[0], d.buckets[4]), (1, 1));
        assert_eq!((d.min_ns, d.max_ns), (Some(10), Some(40)));
    }
}
