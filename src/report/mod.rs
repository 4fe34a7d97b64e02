//! Where decoded events go without a collector: a live console stream, JSON lines, a summary.
pub mod clock;
pub mod console;
pub mod jsonl;
pub mod otlp;
pub mod summary;
pub mod text;

use crate::decode::{Event, ProcessRecord, Record};

/// Every sink an event is handed to, in order. One thread owns it: no locks on the hot path.
pub struct Sinks {
    pub console: Option<console::Console>,
    pub jsonl: Option<jsonl::JsonLines>,
    pub otlp: Option<otlp::OtlpSink>,
    pub summary: summary::Summary,
}

impl Sinks {
    pub fn handle(&mut self, record: &Record<'_>) {
        match record {
            Record::Event(e) => self.event(e),
            Record::Process(p) => self.process(p),
            // Only `pyusdt flow` loads the flow programs, and it reads its records itself.
            Record::Flow(_) => {}
        }
    }

    /// A process's description, before its first event.
    fn process(&mut self, p: &ProcessRecord<'_>) {
        if let Some(c) = p.command_line() {
            self.summary.name_process(p.pid, &c);
        }
        if let Some(o) = &mut self.otlp {
            o.describe_process(p);
        }
    }

    fn event(&mut self, event: &Event<'_>) {
        self.summary.record(event);
        if let Some(c) = &mut self.console {
            c.write(event);
        }
        if let Some(j) = &mut self.jsonl {
            j.write(event);
        }
        if let Some(o) = &mut self.otlp {
            o.record(event);
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
