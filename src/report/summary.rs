//! Per-process aggregates for the closing summary: GC pauses per generation, imports, audit
//! events by name, events received and lost.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::attach::KernelStats;
use crate::decode::Event;
use crate::export::ExportCounts;
use crate::model::metrics::{KernelUpdate, MAX_AUDIT_SERIES};
use crate::model::sampling::{Sampling, SamplingTable};
use crate::text::{count, duration, safe};

/// How many of the slowest imports (and calls) the summary names.
const SLOWEST: usize = 5;

/// The `SLOWEST` longest (duration, name) pairs seen, longest first. Names are copied only
/// when they make the list.
#[derive(Default)]
struct Slowest(Vec<(u64, String)>);

impl Slowest {
    fn offer(&mut self, ns: u64, name: &str) {
        if self.0.len() == SLOWEST && self.0.last().is_some_and(|(min, _)| ns <= *min) {
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
    /// Function probes per process: what the interpreter's markers do, and the sampling.
    sampling: Option<SamplingTable>,
}

struct ProcessSummary {
    command: String,
    first_ns: u64,
    last_ns: u64,
    /// Keyed by generation; `-1`: the start was not seen.
    gc: BTreeMap<i32, GcStats>,
    imports: u64,
    imports_not_found: u64,
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
    pauses: Histogram<u32>,
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
                if let Some(d) = h.duration_ns() {
                    g.pauses.saturating_record(d.max(1));
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
            Event::Audit { name, .. } => p.add_audit(name, 1),
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
            }
        }
    }

    /// The human-readable summary.
    pub fn render(
        &self,
        stats: &KernelStats,
        elapsed_s: f64,
        export: Option<&ExportSummary>,
    ) -> String {
        let received = self.received();
        let total: u64 = received.iter().sum();
        let dropped: u64 = stats.dropped.iter().sum::<u64>() + stats.function_dropped;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pyusdt: traced {elapsed_s:.1} s: {} events received ({} gc, {} import, {} audit), {} dropped{}",
            count(total),
            count(received[0]),
            count(received[1]),
            count(received[2]),
            count(dropped),
            if dropped > 0 {
                format!(
                    " (ring buffer full: {} gc, {} import, {} audit, {} calls; raise --ring-buffer-size)",
                    stats.dropped[0], stats.dropped[1], stats.dropped[2], stats.function_dropped
                )
            } else {
                String::new()
            }
        );
        if stats.unpaired_starts > 0 || stats.imports_too_deep > 0 || stats.calls_too_deep > 0 {
            let _ = writeln!(
                out,
                "  pairing: {} gc starts without done discarded, {} imports nested too deep to time, {} calls nested too deep for a span",
                stats.unpaired_starts, stats.imports_too_deep, stats.calls_too_deep
            );
        }
        if stats.process_dropped > 0 || stats.exec_dropped > 0 {
            let _ = writeln!(
                out,
                "  ring buffer full: {} process descriptions lost (read from /proc instead, where it could be), {} exec records lost (the next rescan finds new interpreters)",
                stats.process_dropped, stats.exec_dropped
            );
        }
        if stats.stacks_reset > 0 {
            let _ = writeln!(
                out,
                "  sampling: {} thread stacks emptied when function probes came back on (calls and imports spanning a gap have no duration)",
                stats.stacks_reset
            );
        }
        for (pid, p) in self.processes.iter().filter(|(_, p)| p.has_events()) {
            let span_s = (p.last_ns.saturating_sub(p.first_ns)) as f64 / 1e9;
            let _ = writeln!(out, "PID {pid} ({}): events over {span_s:.2} s", p.command);
            for (gen, g) in &p.gc {
                let label = if *gen < 0 {
                    "gen ?".to_string()
                } else {
                    format!("gen {gen}")
                };
                let pauses = if g.pauses.is_empty() && g.kernel_timed > 0 {
                    format!(
                        "pause mean {}, max {} (aggregated in the kernel: no percentiles)",
                        duration(g.kernel_sum_ns / g.kernel_timed),
                        duration(g.kernel_max_ns)
                    )
                } else if g.pauses.is_empty() {
                    "pause unknown (start not seen)".to_string()
                } else {
                    format!(
                        "pause p50 {}, p99 {}, max {}",
                        duration(g.pauses.value_at_quantile(0.5)),
                        duration(g.pauses.value_at_quantile(0.99)),
                        duration(g.pauses.max())
                    )
                };
                let _ = writeln!(
                    out,
                    "  gc      {label}: {} collections, {pauses}, {} objects collected",
                    count(g.collections),
                    count(g.collected.max(0) as u64)
                );
            }
            if p.imports > 0 {
                let slowest = if p.imports_in_kernel {
                    "not known (aggregated in the kernel)".to_string()
                } else {
                    p.slowest_imports.to_string()
                };
                let _ = writeln!(
                    out,
                    "  import  {} modules ({} not found), {} in top-level imports; slowest: {slowest}",
                    count(p.imports),
                    count(p.imports_not_found),
                    duration(p.import_total_ns),
                );
            }
            let sampling = self.sampling_of(*pid);
            if let Some((s, markers)) = sampling.and_then(|s| Some((s, s.functions?))) {
                let _ = writeln!(
                    out,
                    "  calls   function markers: {}; {}",
                    markers.label(),
                    sampling_text(&s, "call")
                );
            }
            if p.functions > 0 {
                let _ = writeln!(
                    out,
                    "  calls   {} reported (at least --min-duration); slowest: {}",
                    count(p.functions),
                    p.slowest_functions
                );
            }
            if p.audit_total > 0 {
                let mut by_name: Vec<(&str, u64)> =
                    p.audit.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
                by_name.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                let top: Vec<String> = by_name
                    .iter()
                    .take(8)
                    .map(|(n, c)| format!("{} {}", safe(n), count(*c)))
                    .collect();
                let rate = if span_s > 0.0 {
                    format!("{}/s", count((p.audit_total as f64 / span_s) as u64))
                } else {
                    "-".into()
                };
                let more = by_name.len().saturating_sub(8);
                let itemized: u64 = by_name.iter().map(|(_, c)| c).sum();
                let more = match (more, p.audit_total - itemized) {
                    (0, 0) => String::new(),
                    (m, 0) => format!(", {m} more names"),
                    (m, rest) => format!(
                        ", {m} more names and {} events of names past the first {MAX_AUDIT_SERIES}",
                        count(rest)
                    ),
                };
                let _ = writeln!(
                    out,
                    "  audit   {} events ({rate}): {}{}",
                    count(p.audit_total),
                    top.join(", "),
                    more
                );
            }
            if let Some(s) = sampling.filter(|s| s.audit) {
                let _ = writeln!(
                    out,
                    "  audit   marker under --max-overhead: {}",
                    sampling_text(&s, "audit event")
                );
            }
        }
        if let Some(e) = export {
            let c = &e.counts;
            let _ = writeln!(
                out,
                "  OpenTelemetry: exported {} spans, {} metric points, {} log records; failed {}, dropped {} (queue full){}{}",
                count(c.exported[0]),
                count(c.exported[1]),
                count(c.exported[2]),
                count(c.failed.iter().sum()),
                count(c.dropped.iter().sum()),
                match (e.orphaned, e.without_start) {
                    (0, 0) => String::new(),
                    (o, w) => format!("; {o} span subtrees without their parent, {w} events without a start (no span)"),
                },
                c.last_error.as_ref().map_or_else(String::new, |m| format!("; last error: {m}")),
            );
        }
        if self.retired_processes > 0 {
            let _ = writeln!(
                out,
                "{} processes that exited earlier are counted in the totals above",
                count(self.retired_processes)
            );
        }
        if total == 0 {
            let _ = writeln!(
                out,
                "  no events: no traced process used an attached interpreter"
            );
        }
        out
    }

    /// The machine-readable summary (closing record of `--output`).
    pub fn to_record(&self, stats: &KernelStats, export: Option<&ExportSummary>) -> SummaryRecord {
        let received = self.received();
        SummaryRecord {
            kind: "summary",
            export: export.map(|e| e.counts.clone()),
            received: MarkerCounts::from(received),
            dropped: MarkerCounts::from(stats.dropped),
            unpaired_gc_starts: stats.unpaired_starts,
            imports_too_deep: stats.imports_too_deep,
            records_dropped: RecordCounts {
                process: stats.process_dropped,
                exec: stats.exec_dropped,
            },
            processes: self
                .processes
                .iter()
                .filter(|(_, p)| p.has_events())
                .map(|(pid, p)| ProcessRecord {
                    pid: *pid,
                    command: p.command.clone(),
                    gc_collections: p.gc.values().map(|g| g.collections).sum(),
                    imports: p.imports,
                    imports_not_found: p.imports_not_found,
                    audit_events: p.audit_total,
                    audit_by_name: p.audit.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                    function_probes: self
                        .sampling_of(*pid)
                        .and_then(|s| Some(SamplingRecord::of(&s, Some(s.functions?.label())))),
                    audit_marker: self
                        .sampling_of(*pid)
                        .filter(|s| s.audit)
                        .map(|s| SamplingRecord::of(&s, None)),
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
pub struct MarkerCounts {
    pub gc: u64,
    pub import: u64,
    pub audit: u64,
}

impl From<[u64; 3]> for MarkerCounts {
    fn from(c: [u64; 3]) -> Self {
        MarkerCounts {
            gc: c[0],
            import: c[1],
            audit: c[2],
        }
    }
}

#[derive(Serialize)]
pub struct SummaryRecord {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    export: Option<ExportCounts>,
    received: MarkerCounts,
    dropped: MarkerCounts,
    unpaired_gc_starts: u64,
    imports_too_deep: u64,
    /// Process descriptions and exec records lost in the kernel (ring buffer full).
    records_dropped: RecordCounts,
    processes: Vec<ProcessRecord>,
}

#[derive(Serialize)]
pub struct RecordCounts {
    pub process: u64,
    pub exec: u64,
}

#[derive(Serialize)]
struct ProcessRecord {
    pid: u32,
    command: String,
    gc_collections: u64,
    imports: u64,
    imports_not_found: u64,
    audit_events: u64,
    /// Audit events per event name.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    audit_by_name: std::collections::BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_probes: Option<SamplingRecord>,
    /// The audit marker under --max-overhead (attached per process).
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_marker: Option<SamplingRecord>,
}

/// How a process's per-process probes (function probes, governed audit marker) were sampled.
#[derive(Serialize)]
struct SamplingRecord {
    /// What the function markers do (function probes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    markers: Option<&'static str>,
    /// The duty ratio at the end (1: every call seen).
    sampling_ratio: f64,
    /// Share of the time the probes were attached: counts are this share of the truth.
    observed_share: f64,
    observed_seconds: f64,
    /// What the probes cost the process while on, as a share of its time (estimated).
    measured_cost_share: f64,
}

impl SamplingRecord {
    fn of(s: &Sampling, markers: Option<&'static str>) -> SamplingRecord {
        SamplingRecord {
            markers,
            sampling_ratio: s.ratio,
            observed_share: s.observed_share,
            observed_seconds: s.observed_seconds,
            measured_cost_share: s.measured_share,
        }
    }
}

/// How much of a process's calls (or audit events: `what`) its per-process probes saw.
fn sampling_text(s: &Sampling, what: &str) -> String {
    if s.observed_share >= 0.999 {
        if s.measured_share > 0.0 {
            return format!(
                "every {what} seen (probes cost about {:.1} % of its time)",
                s.measured_share * 100.0
            );
        }
        return format!("every {what} seen");
    }
    format!(
        "sampled to stay within --max-overhead: probes on {:.1} % of the time ({:.1} s), \
         costing about {:.0} % of its time while on; counts cover that share",
        s.observed_share * 100.0,
        s.observed_seconds,
        s.measured_share * 100.0
    )
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
    }
}
