//! Where decoded events go without a collector: a live console stream, JSON lines, a summary.
pub mod console;
pub mod jsonl;
pub mod otlp;
pub mod own;
pub mod prom;
pub mod summary;

use crate::decode::{Event, ProcessRecord, Record};
use crate::model::metrics::KernelUpdate;

/// `--function-include` / `--function-exclude`: which calls are reported.
#[derive(Default)]
pub struct FunctionFilter {
    include: Option<globset::GlobSet>,
    exclude: Option<globset::GlobSet>,
}

impl FunctionFilter {
    pub fn new(
        include: Option<&str>,
        exclude: Option<&str>,
    ) -> Result<FunctionFilter, crate::globs::PatternError> {
        Ok(FunctionFilter {
            include: include
                .map(|l| crate::globs::parse(l, "--function-include"))
                .transpose()?,
            exclude: exclude
                .map(|l| crate::globs::parse(l, "--function-exclude"))
                .transpose()?,
        })
    }

    /// A call is reported when its function or file matches an include glob (or there are
    /// none) and neither matches an exclude glob.
    pub fn selects(&self, function: &str, file: &str) -> bool {
        let hit = |s: &globset::GlobSet| s.is_match(function) || s.is_match(file);
        self.include.as_ref().is_none_or(hit) && !self.exclude.as_ref().is_some_and(hit)
    }
}

/// Every sink an event is handed to, in order. One thread owns it: no locks on the hot path.
pub struct Sinks {
    pub functions: FunctionFilter,
    pub console: Option<console::Console>,
    pub jsonl: Option<jsonl::JsonLines>,
    pub otlp: Option<otlp::OtlpSink>,
    /// `--metrics-listen`: metrics for `/metrics`.
    pub prom: Option<prom::PromSink>,
    pub summary: summary::Summary,
    /// --metrics-only: the few records that still come (a code location's first call,
    /// carrying its names) feed the metrics and summary alone, not the event streams.
    pub metrics_only: bool,
}

impl Sinks {
    pub fn handle(&mut self, record: &Record<'_>) {
        match record {
            Record::Event(e) => self.event(e),
            Record::Process(p) => self.process(p),
            // The session learns and looks up code names (src/pipeline/code_names.rs), reads audit names
            // (src/audit_names.rs), and hands these on as events.
            Record::Function { .. } | Record::FunctionRef { .. } | Record::AuditRef { .. } => {}
            // Only `pyusdt flow` loads the flow programs, and it reads its records itself;
            // exec records are for discovery (the session).
            Record::Flow(_) | Record::Exec { .. } => {}
        }
    }

    /// A process's description, before its first event.
    fn process(&mut self, p: &ProcessRecord<'_>) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            // Names only: values are the process's own.
            let names: Vec<&str> = p.environment().map(|(k, _)| k).collect();
            tracing::debug!(
                "process {}: {} bytes of environment copied: {}{}",
                p.pid,
                p.env.len(),
                names.join(" "),
                if p.env_truncated { " (incomplete)" } else { "" }
            );
        }
        if let Some(c) = p.command_line() {
            self.summary.name_process(p.pid, &c);
        }
        if let Some(o) = &mut self.otlp {
            o.describe_process(p);
        }
        if let Some(m) = &mut self.prom {
            m.describe_process(p);
        }
    }

    fn event(&mut self, event: &Event<'_>) {
        if let Event::Function { name, file, .. } = event {
            if !self.functions.selects(name, file) {
                return;
            }
        }
        self.summary.record(event);
        if self.metrics_only {
            if let Some(o) = &mut self.otlp {
                o.record_metrics(event);
            }
            if let Some(m) = &mut self.prom {
                m.record(event);
            }
            return;
        }
        if let Some(c) = &mut self.console {
            c.write(event);
        }
        if let Some(j) = &mut self.jsonl {
            j.write(event);
        }
        if let Some(o) = &mut self.otlp {
            o.record(event);
        }
        if let Some(m) = &mut self.prom {
            m.record(event);
        }
    }

    /// What the kernel aggregated for process `pid` since the last read (--metrics-only:
    /// no record per event), read at `now_ns` (CLOCK_MONOTONIC). Calls go through the
    /// function filters, as recorded calls do.
    pub fn kernel_aggregated(&mut self, pid: u32, update: KernelUpdate<'_>, now_ns: u64) {
        if let KernelUpdate::Function { name, file, .. } = update {
            if !self.functions.selects(name, file) {
                return;
            }
        }
        self.summary.add_kernel(pid, update, now_ns);
        if let Some(o) = &mut self.otlp {
            o.kernel_aggregated(pid, update, now_ns);
        }
        if let Some(m) = &mut self.prom {
            m.kernel_aggregated(pid, update, now_ns);
        }
    }

    /// Pushes buffered output out; JSON write errors are kept and reported by `finish`.
    pub fn flush(&mut self) {
        if let Some(c) = &mut self.console {
            let _ = c.flush();
        }
        if let Some(j) = &mut self.jsonl {
            j.flush_quietly();
        }
    }
}
