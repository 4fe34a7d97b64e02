//! The human-readable closing summary: per process, GC pauses per generation, imports,
//! audit events by name, what was sampled, and what was lost.
use std::fmt::Write;

use super::{ExportSummary, Summary};
use crate::attach::KernelStats;
use crate::decode::SignalSource;
use crate::model::metrics::MAX_AUDIT_SERIES;
use crate::model::sampling::Sampling;
use crate::text::{count, duration, safe};

impl Summary {
    /// The human-readable summary.
    pub fn render(
        &self,
        stats: &KernelStats,
        elapsed_s: f64,
        export: Option<&ExportSummary>,
    ) -> String {
        let received = self.received();
        let total: u64 = received.iter().sum();
        let calls = self.retired_calls + self.processes.values().map(|p| p.functions).sum::<u64>();
        let dropped: u64 = stats.dropped.iter().sum::<u64>() + stats.function_dropped;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pyusdt: traced {elapsed_s:.1} s: {} events received ({} gc, {} import, {} audit){}, {} dropped{}",
            count(total),
            count(received[0]),
            count(received[1]),
            count(received[2]),
            if calls > 0 {
                format!(", {} calls", count(calls))
            } else {
                String::new()
            },
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
                        // A bucket's upper end may pass the exact longest: never above it.
                        duration(g.pauses.value_at_quantile(0.5).min(g.max_ns)),
                        duration(g.pauses.value_at_quantile(0.99).min(g.max_ns)),
                        duration(g.max_ns)
                    )
                };
                let source = match p.gc_source {
                    SignalSource::Marker => String::new(),
                    s => format!("; seen at a hook point ({})", s.label()),
                };
                let _ = writeln!(
                    out,
                    "  gc      {label}: {} collections, {pauses}, {} objects collected{source}",
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
                // A build without markers: say which hook point stood in for them.
                let source = match p.import_source {
                    SignalSource::Marker => String::new(),
                    s => format!("; seen at a hook point ({})", s.label()),
                };
                let _ = writeln!(
                    out,
                    "  import  {} modules ({} not found), {} in top-level imports; slowest: {slowest}{source}",
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
                let source = match p.audit_source {
                    SignalSource::Marker => String::new(),
                    s => format!("; seen at a hook point ({})", s.label()),
                };
                let _ = writeln!(
                    out,
                    "  audit   {} events ({rate}): {}{more}{source}",
                    count(p.audit_total),
                    top.join(", "),
                );
            }
            if let Some(s) = sampling.filter(|s| s.audit) {
                let _ = writeln!(
                    out,
                    "  audit   marker attached to this process alone: {}",
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
        if total == 0 && calls == 0 {
            let _ = match &self.not_python {
                Some(program) => writeln!(
                    out,
                    "  no events: {program} is not a Python program, and started no Python \
                     process using an attached interpreter"
                ),
                None => writeln!(
                    out,
                    "  no events: no traced process used an attached interpreter"
                ),
            };
        }
        out
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
