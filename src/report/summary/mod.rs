//! Per-process aggregates for the closing summary: GC pauses per generation, imports, audit
//! events by name, events received and lost; rendered for humans (render.rs) and as the last
//! record of `--output` (record.rs).
use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;

use crate::decode::{Event, SignalSource};
use crate::export::ExportCounts;
use crate::model::metrics::{KernelUpdate, MAX_AUDIT_SERIES};
use crate::model::sampling::{Sampling, SamplingTable};

mod record;
mod render;

use crate::text::{duration, safe};
pub use record::SummaryRecord;

/// How many of the slowest imports (and calls) the summary names.
const SLOWEST: usize = 5;

/// The `SLOWEST` longest (duration, name) pairs seen, longest first, one per name (a
/// recursive function would otherwise fill the list with itself). Names are copied only when
/// they make the list.
#[derive(Default)]
struct Slowest(Vec<(u64, String)>);

impl Slowest {
    fn offer(&mut self, ns: u64, name: &str) {
        if self.0.len() == SLOWEST && self.0.last().is_some_and(|(min, _)| ns <= *min) {
            return;
        }
        if let Some(known) = self.0.iter_mut().find(|(_, n)| n == name) {
            known.0 = known.0.max(ns);
            self.0.sort_by_key(|s| std::cmp::Reverse(s.0));
            return;
        }
        self.0.push((ns, name.to_string()));
        self.0.sort_by_key(|s| std::cmp::Reverse(s.0));
        self.0.truncate(SLOWEST);
    }
}

impl std::fmt::Display for Slowest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (ns, name)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} {}", safe(name), duration(*ns))?;
        }
        Ok(())
    }
}
/// Pauses are recorded from 1 µs to 1 hour with 2 significant digits: about 13 KB per
/// (process, generation), and percentiles within 1 %.
const MIN_NS: u64 = 1_000;
const MAX_NS: u64 = 3_600_000_000_000;

#[derive(Default)]
pub struct Summary {
    processes: BTreeMap<u32, ProcessSummary>,
    /// Processes that exited and were dropped from `processes` (agent): how many, and the
    /// events they had, so that totals stay exact while memory stays bounded.
    retired_processes: u64,
    retired_received: [u64; 3],
    retired_calls: u64,
    /// Function probes per process: what the interpreter's markers do, and the sampling.
    sampling: Option<SamplingTable>,
    /// `run`'s command when it is not a Python program (`run -- /bin/ls`): named when nothing
    /// was traced.
    not_python: Option<String>,
}

struct ProcessSummary {
    command: String,
    first_ns: u64,
    last_ns: u64,
    /// Keyed by generation; `-1`: the start was not seen.
    gc: BTreeMap<i32, GcStats>,
    imports: u64,
    imports_not_found: u64,
    /// Where the imports were seen (the process's interpreter file has one source).
    import_source: SignalSource,
    /// Where the audit events were seen.
    audit_source: SignalSource,
    /// Where the collections were seen.
    gc_source: SignalSource,
    import_total_ns: u64,
    slowest_imports: Slowest,
    /// Imports aggregated in the kernel (--metrics-only): no module names.
    imports_in_kernel: bool,
    /// Events per name, for at most MAX_AUDIT_SERIES names (a traced program chooses them).
    audit: HashMap<Box<str>, u64>,
    audit_total: u64,
    /// Calls reported by function probes (those of at least --min-duration).
    functions: u64,
    slowest_functions: Slowest,
}

struct GcStats {
    /// Two significant digits: for the percentiles (within 1 %).
    pauses: Histogram<u32>,
    /// The longest pause exactly, as the stream shows it (the histogram would round it).
    max_ns: u64,
    collections: u64,
    collected: i64,
    /// --metrics-only: pauses aggregated in the kernel (no percentiles): how many were
    /// timed, their total and the longest.
    kernel_timed: u64,
    kernel_sum_ns: u64,
    kernel_max_ns: u64,
}

impl GcStats {
    fn new() -> GcStats {
        GcStats {
            pauses: Histogram::new_with_bounds(MIN_NS, MAX_NS, 2)
                .expect("static histogram bounds are valid"),
            max_ns: 0,
            collections: 0,
            collected: 0,
            kernel_timed: 0,
            kernel_sum_ns: 0,
            kernel_max_ns: 0,
        }
    }
}

impl ProcessSummary {
    /// `n` more audit events named `name`: all counted, the first MAX_AUDIT_SERIES names each.
    fn add_audit(&mut self, name: &str, n: u64) {
        self.audit_total += n;
        if let Some(c) = self.audit.get_mut(name) {
            *c += n;
        } else if self.audit.len() < MAX_AUDIT_SERIES {
            self.audit.insert(name.into(), n);
        }
    }

    fn received(&self) -> [u64; 3] {
        [
            self.gc.values().map(|g| g.collections).sum(),
            self.imports,
            self.audit_total,
        ]
    }

    fn has_events(&self) -> bool {
        !self.gc.is_empty() || self.imports > 0 || self.audit_total > 0 || self.functions > 0
    }

    fn new(command: String, ts: u64) -> ProcessSummary {
        ProcessSummary {
            command,
            first_ns: ts,
            last_ns: ts,
            gc: BTreeMap::new(),
            imports: 0,
            imports_not_found: 0,
            import_source: SignalSource::Marker,
            audit_source: SignalSource::Marker,
            gc_source: SignalSource::Marker,
            import_total_ns: 0,
            slowest_imports: Slowest::default(),
            imports_in_kernel: false,
            audit: HashMap::new(),
            audit_total: 0,
            functions: 0,
            slowest_functions: Slowest::default(),
        }
    }
}

/// The command line of a process, read once when its first event arrives (it may exit soon).
fn command_of(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    crate::discover::process::join_argv(&cmdline)
        .map_or_else(|| "(exited)".to_string(), |c| short_command(&c))
}

/// At most 80 characters, terminal-safe, secrets redacted.
fn short_command(command: &str) -> String {
    let command = crate::model::redact::redact(command);
    let shown = if command.chars().count() > 80 {
        command.chars().take(77).collect::<String>() + "..."
    } else {
        command.to_string()
    };
    safe(&shown).into_owned()
}

impl Summary {
    /// Reports, per process, how its function probes worked (from the budget's table).
    pub fn set_sampling(&mut self, table: SamplingTable) {
        self.sampling = Some(table);
    }

    fn sampling_of(&self, pid: u32) -> Option<Sampling> {
        self.sampling.as_ref()?.borrow().get(&pid).copied()
    }

    /// Names a process before its events arrive (a short-lived command may be gone by then);
    /// the first name given wins.
    /// `run`'s command is not a Python program: said when no event came.
    pub fn note_not_python(&mut self, program: &str) {
        self.not_python = Some(program.to_string());
    }

    pub fn name_process(&mut self, pid: u32, command: &str) {
        self.processes.entry(pid).or_insert_with(|| {
            let mut p = ProcessSummary::new(short_command(command), u64::MAX);
            p.last_ns = 0;
            p
        });
    }

    pub fn record(&mut self, event: &Event<'_>) {
        let h = event.header();
        let p = self
            .processes
            .entry(h.pid)
            .or_insert_with(|| ProcessSummary::new(command_of(h.pid), h.end_ns));
        p.first_ns = p.first_ns.min(h.start_ns.unwrap_or(h.end_ns));
        p.last_ns = p.last_ns.max(h.end_ns);
        match event {
            Event::Gc {
                generation,
                collected,
                ..
            } => {
                let g =
                    p.gc.entry(generation.unwrap_or(-1))
                        .or_insert_with(GcStats::new);
                g.collections += 1;
                g.collected += collected;
                p.gc_source = h.source;
                if let Some(d) = h.duration_ns() {
                    g.pauses.saturating_record(d.max(1));
                    g.max_ns = g.max_ns.max(d);
                }
            }
            Event::Import {
                module,
                found,
                nesting,
                ..
            } => {
                p.imports += 1;
                p.imports_not_found += u64::from(!found);
                p.import_source = h.source;
                if let Some(d) = h.duration_ns() {
                    // Nested imports run inside their parent's time: count top-level ones only.
                    if *nesting == 0 {
                        p.import_total_ns += d;
                    }
                    p.slowest_imports.offer(d, module);
                }
            }
            Event::Function { name, .. } => {
                p.functions += 1;
                if let Some(d) = h.duration_ns() {
                    p.slowest_functions.offer(d, name);
                }
            }
            Event::Audit { name, .. } => {
                p.audit_source = h.source;
                p.add_audit(name, 1);
            }
        }
    }

    fn process_at(&mut self, pid: u32, now_ns: u64) -> &mut ProcessSummary {
        let p = self
            .processes
            .entry(pid)
            .or_insert_with(|| ProcessSummary::new(command_of(pid), now_ns));
        p.last_ns = p.last_ns.max(now_ns);
        p
    }

    /// What the kernel aggregated for process `pid` since the last read (--metrics-only),
    /// read at `now_ns` (CLOCK_MONOTONIC).
    pub fn add_kernel(&mut self, pid: u32, update: KernelUpdate<'_>, now_ns: u64) {
        let p = self.process_at(pid, now_ns);
        match update {
            KernelUpdate::Gc { generation, d } => {
                let g = p.gc.entry(generation).or_insert_with(GcStats::new);
                g.collections += d.events;
                g.collected += d.extra;
                g.kernel_timed += d.timed;
                g.kernel_sum_ns += d.sum_ns;
                g.kernel_max_ns = g.kernel_max_ns.max(d.max_ns.unwrap_or(0));
            }
            KernelUpdate::Import {
                found,
                top_level,
                d,
            } => {
                p.imports += d.events;
                p.imports_in_kernel = true;
                if !found {
                    p.imports_not_found += d.events;
                }
                if top_level {
                    p.import_total_ns += d.sum_ns;
                }
            }
            KernelUpdate::Function { d, .. } => p.functions += d.events,
            KernelUpdate::Audit { name, n } => p.add_audit(name, n),
        }
    }

    /// Number of events recorded per marker (gc, import, audit).
    pub fn received(&self) -> [u64; 3] {
        let mut r = self.retired_received;
        for p in self.processes.values() {
            for (total, n) in r.iter_mut().zip(p.received()) {
                *total += n;
            }
        }
        r
    }

    /// Forgets processes that have exited, keeping their counts in the totals: a long-running
    /// agent sees many processes come and go.
    pub fn retire_exited(&mut self) {
        let gone: Vec<u32> = self
            .processes
            .keys()
            .copied()
            .filter(|&pid| !crate::discover::process::is_alive(pid))
            .collect();
        for pid in gone {
            if let Some(p) = self.processes.remove(&pid) {
                self.retired_processes += 1;
                for (total, n) in self.retired_received.iter_mut().zip(p.received()) {
                    *total += n;
                }
                self.retired_calls += p.functions;
            }
        }
    }
}

/// What the OpenTelemetry export did, for the summary.
pub struct ExportSummary {
    pub counts: ExportCounts,
    /// Span subtrees released without their parent.
    pub orphaned: u64,
    /// GC or import events without a span: their start was not seen (no duration).
    pub without_start: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attach::KernelStats;

    #[test]
    fn audit_names_are_bounded_and_every_event_counted() {
        let mut s = Summary::default();
        for i in 0..MAX_AUDIT_SERIES + 5 {
            let name = format!("app.event{i}");
            s.add_kernel(7, KernelUpdate::Audit { name: &name, n: 2 }, 0);
        }
        let text = s.render(&KernelStats::default(), 1.0, None);
        assert!(text.contains("2,010 events"), "{text}");
        assert!(
            text.contains("992 more names and 10 events of names past the first 1000"),
            "{text}"
        );
    }

    #[test]
    fn slowest_keeps_the_longest_in_order() {
        let mut s = Slowest::default();
        for (ns, name) in [
            (5, "a"),
            (50, "b"),
            (1, "c"),
            (40, "d"),
            (30, "e"),
            (20, "f"),
            (45, "g"),
        ] {
            s.offer(ns, name);
        }
        let names: Vec<&str> = s.0.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["b", "g", "d", "e", "f"]);
        assert_eq!(s.to_string().split(", ").count(), 5);
        // One entry per name, with its longest.
        s.offer(60, "f");
        s.offer(2, "b");
        let names: Vec<&str> = s.0.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["f", "b", "g", "d", "e"]);
    }

    fn header(ns: u64) -> crate::decode::Header {
        crate::decode::Header {
            start_ns: Some(1_000),
            end_ns: 1_000 + ns,
            pid: 7,
            tid: 7,
            depth: 0,
            source: Default::default(),
        }
    }

    /// The summary gives the longest pause and the objects collected as the stream does:
    /// exactly, with the same units and thousands separators (it said "max 28.31 ms" for a
    /// pause the stream showed as 28.20 ms: the histogram's rounding).
    #[test]
    fn pauses_and_counts_read_as_in_the_stream() {
        let mut s = Summary::default();
        for (ns, collected) in [(28_200_000, 60_000), (1_000_000, 3_852)] {
            s.record(&Event::Gc {
                header: header(ns),
                generation: Some(2),
                collected,
            });
        }
        let text = s.render(&KernelStats::default(), 1.0, None);
        assert!(text.contains("max 28.20 ms"), "{text}");
        assert!(text.contains("63,852 objects collected"), "{text}");
    }

    /// Function probes alone: the totals say how many calls were reported, and no "no
    /// events" line contradicts them (issue 23 item 6).
    #[test]
    fn calls_alone_are_events_of_the_summary() {
        let mut s = Summary::default();
        for ns in [30, 20, 10] {
            s.record(&Event::Function {
                header: header(ns),
                name: "fib".into(),
                file: "fib.py".into(),
                line: 1,
                location: None,
            });
        }
        let text = s.render(&KernelStats::default(), 1.0, None);
        assert!(text.contains("0 audit), 3 calls, 0 dropped"), "{text}");
        assert!(!text.contains("no events"), "{text}");
        assert_eq!(text.matches("fib ").count(), 1, "{text}");
    }
}
