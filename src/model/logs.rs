//! Audit events as OpenTelemetry log records (event name `cpython.audit`).
use globset::{Glob, GlobSet, GlobSetBuilder};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};

use super::attrs;
use crate::decode::Event;
use crate::report::clock::Clock;

/// Which audit event names become log records (all are counted in metrics regardless).
pub struct AuditFilter {
    globs: GlobSet,
}

impl AuditFilter {
    /// Comma-separated globs such as `open,subprocess.*,socket.*`.
    pub fn parse(list: &str) -> Result<AuditFilter, String> {
        let mut builder = GlobSetBuilder::new();
        for pattern in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let glob = Glob::new(pattern)
                .map_err(|e| format!("bad audit event pattern `{pattern}`: {e}"))?;
            builder.add(glob);
        }
        let globs = builder
            .build()
            .map_err(|e| format!("bad audit event patterns `{list}`: {e}"))?;
        Ok(AuditFilter { globs })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.globs.is_match(name)
    }
}

pub struct LogBuffer {
    clock: Clock,
    filter: AuditFilter,
    max_queue: usize,
    ready: Vec<(u32, LogRecord)>,
    /// Records not kept because the queue was full (exporter behind).
    pub dropped: u64,
}

impl LogBuffer {
    pub fn new(clock: Clock, filter: AuditFilter, max_queue: usize) -> LogBuffer {
        LogBuffer {
            clock,
            filter,
            max_queue,
            ready: Vec::new(),
            dropped: 0,
        }
    }

    pub fn record(&mut self, event: &Event<'_>) {
        self.record_sampled(event, None);
    }

    /// As `record`, for an audit event seen while its process's audit marker was sampled at
    /// `ratio` (the overhead budget): the record says so (`pyusdt.sampling.ratio`), so that
    /// counts can be scaled.
    pub fn record_sampled(&mut self, event: &Event<'_>, ratio: Option<f64>) {
        let Event::Audit {
            header, name, args, ..
        } = event
        else {
            return;
        };
        if !self.filter.matches(name) {
            return;
        }
        if self.ready.len() >= self.max_queue {
            self.dropped += 1;
            return;
        }
        let time = self.clock.unix_nanos(header.end_ns);
        let mut attributes = vec![
            attrs::string(attrs::AUDIT_EVENT, name.as_ref()),
            attrs::int(attrs::THREAD_ID, i64::from(header.tid)),
        ];
        if let Some(r) = ratio {
            attributes.push(attrs::double("pyusdt.sampling.ratio", r));
        }
        if let Some(raw) = args {
            for (i, value) in super::audit_args::decode(name, raw.layout, raw.args)
                .into_iter()
                .enumerate()
            {
                if let Some(v) = value {
                    // Arguments carry secrets (a URL with a password, a token in argv).
                    let v = super::redact::redact(&v).into_owned();
                    attributes.push(attrs::string(&format!("cpython.audit.arg.{i}"), v));
                }
            }
        }
        let record = LogRecord {
            time_unix_nano: time,
            observed_time_unix_nano: time,
            severity_number: SeverityNumber::Info as i32,
            severity_text: "INFO".into(),
            event_name: "cpython.audit".into(),
            body: Some(attrs::any_string(name.as_ref())),
            attributes,
            ..Default::default()
        };
        self.ready.push((header.pid, record));
    }

    pub fn take_ready(&mut self) -> Vec<(u32, LogRecord)> {
        std::mem::take(&mut self.ready)
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let f = AuditFilter::parse("open, subprocess.*").unwrap();
        assert!(f.matches("open") && f.matches("subprocess.Popen"));
        assert!(!f.matches("builtins.id") && !f.matches("os.open"));
        assert!(AuditFilter::parse("*").unwrap().matches("anything.at.all"));
        assert!(AuditFilter::parse("[").is_err());
    }
}
