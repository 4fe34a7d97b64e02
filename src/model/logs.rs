//! Audit events as OpenTelemetry log records (event name `cpython.audit`).
use std::collections::HashSet;
use std::sync::Arc;

use globset::GlobSet;
#[cfg(test)]
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::logs::v1::SeverityNumber;

use super::attrs;
use super::fields::log_record;
use super::wire::{self, Value};
use super::FastHash;
use crate::decode::{Event, SignalSource};
use crate::model::clock::Clock;

/// Which audit event names become log records (all are counted in metrics regardless).
pub struct AuditFilter {
    globs: GlobSet,
    /// One of the patterns is `*` (the default): every name matches, no glob to run.
    all: bool,
}

impl AuditFilter {
    /// Comma-separated globs such as `open,subprocess.*,socket.*`.
    pub fn parse(list: &str) -> Result<AuditFilter, crate::globs::PatternError> {
        let all = list.split(',').any(|p| p.trim() == "*");
        let globs = crate::globs::parse(list, "audit event pattern")?;
        Ok(AuditFilter { globs, all })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.all || self.globs.is_match(name)
    }
}

/// An audit event's log record as pyusdt makes them: `to_proto` builds the OTLP message,
/// `encode` writes its protobuf bytes directly.
#[derive(Debug, Clone, PartialEq)]
pub struct LogData {
    pub time_unix_nano: u64,
    pub tid: u32,
    /// The audit event's name (shared by the records of that name).
    pub name: Arc<str>,
    pub sampling_ratio: Option<f64>,
    /// Decoded and redacted arguments (--audit-args), by position.
    pub args: Vec<(usize, String)>,
    /// Where the event was seen: the audit marker, or a hook point of a build without one.
    pub source: SignalSource,
}

const SEVERITY_TEXT: &str = "INFO";
const EVENT_NAME: &str = "cpython.audit";

impl LogData {
    /// The OTLP message of the record, built with prost: only for the tests, which check
    /// that `encode` writes the same bytes.
    #[cfg(test)]
    pub fn to_proto(&self) -> LogRecord {
        let mut attributes = vec![
            attrs::string(attrs::AUDIT_EVENT, self.name.as_ref()),
            attrs::int(attrs::THREAD_ID, i64::from(self.tid)),
            attrs::string(attrs::SIGNAL_SOURCE, self.source.label()),
        ];
        if let Some(r) = self.sampling_ratio {
            attributes.push(attrs::double("pyusdt.sampling.ratio", r));
        }
        for (i, v) in &self.args {
            attributes.push(attrs::string(&format!("cpython.audit.arg.{i}"), v.clone()));
        }
        LogRecord {
            time_unix_nano: self.time_unix_nano,
            observed_time_unix_nano: self.time_unix_nano,
            severity_number: SeverityNumber::Info as i32,
            severity_text: SEVERITY_TEXT.into(),
            event_name: EVENT_NAME.into(),
            body: Some(attrs::any_string(self.name.as_ref())),
            attributes,
            ..Default::default()
        }
    }

    /// Writes the record as a `LogRecord` message in field `field`: the bytes prost writes
    /// for `to_proto()`.
    pub fn encode(&self, buf: &mut Vec<u8>, field: u32) {
        wire::message(buf, field, 1, |buf| {
            let name = Value::Str(self.name.as_bytes());
            // In tag order, as prost writes them.
            wire::fixed64_opt(buf, log_record::TIME_UNIX_NANO, self.time_unix_nano);
            wire::varint_opt(
                buf,
                log_record::SEVERITY_NUMBER,
                SeverityNumber::Info as u64,
            );
            wire::bytes_opt(buf, log_record::SEVERITY_TEXT, SEVERITY_TEXT.as_bytes());
            wire::any_value(buf, log_record::BODY, name);
            wire::attribute(buf, log_record::ATTRIBUTES, attrs::AUDIT_EVENT, name);
            let tid = Value::Int(i64::from(self.tid));
            wire::attribute(buf, log_record::ATTRIBUTES, attrs::THREAD_ID, tid);
            let source = Value::Str(self.source.label().as_bytes());
            wire::attribute(buf, log_record::ATTRIBUTES, attrs::SIGNAL_SOURCE, source);
            if let Some(r) = self.sampling_ratio {
                wire::attribute(
                    buf,
                    log_record::ATTRIBUTES,
                    "pyusdt.sampling.ratio",
                    Value::Double(r),
                );
            }
            for (i, v) in &self.args {
                let k = format!("cpython.audit.arg.{i}");
                wire::attribute(buf, log_record::ATTRIBUTES, &k, Value::Str(v.as_bytes()));
            }
            wire::fixed64_opt(
                buf,
                log_record::OBSERVED_TIME_UNIX_NANO,
                self.time_unix_nano,
            );
            wire::bytes_opt(buf, log_record::EVENT_NAME, EVENT_NAME.as_bytes());
        });
    }
}

pub struct LogBuffer {
    clock: Clock,
    filter: AuditFilter,
    max_queue: usize,
    ready: Vec<(u32, LogData)>,
    /// The event names seen, each allocated once rather than per record.
    names: HashSet<Arc<str>, FastHash>,
    /// Records not kept because the queue was full (exporter behind).
    pub dropped: u64,
}

/// Beyond this many distinct event names, the remembered ones are forgotten (a program can
/// choose names without end).
const MAX_NAMES: usize = 4096;

impl LogBuffer {
    pub fn new(clock: Clock, filter: AuditFilter, max_queue: usize) -> LogBuffer {
        LogBuffer {
            clock,
            filter,
            max_queue,
            ready: Vec::new(),
            names: HashSet::default(),
            dropped: 0,
        }
    }

    fn interned(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.names.get(name) {
            return Arc::clone(known);
        }
        if self.names.len() >= MAX_NAMES {
            self.names.clear();
        }
        let new: Arc<str> = name.into();
        self.names.insert(Arc::clone(&new));
        new
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
        let mut decoded = Vec::new();
        if let Some(raw) = args {
            for (i, value) in super::audit_args::decode(name, raw.layout, raw.args)
                .into_iter()
                .enumerate()
            {
                if let Some(v) = value {
                    // Arguments carry secrets (a URL with a password, a token in argv).
                    decoded.push((i, super::redact::redact(&v).into_owned()));
                }
            }
        }
        let record = LogData {
            time_unix_nano: self.clock.unix_nanos(header.end_ns),
            tid: header.tid,
            name: self.interned(name),
            sampling_ratio: ratio,
            args: decoded,
            source: header.source,
        };
        self.ready.push((header.pid, record));
    }

    pub fn take_ready(&mut self) -> Vec<(u32, LogData)> {
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

    #[test]
    fn encoded_records_are_the_bytes_prost_writes() {
        let records = [
            LogData {
                time_unix_nano: 1_700_000_000_000_000_000,
                tid: 42,
                name: "open".into(),
                sampling_ratio: None,
                args: Vec::new(),
                source: SignalSource::Marker,
            },
            LogData {
                time_unix_nano: 0,
                tid: 0,
                name: "".into(),
                sampling_ratio: Some(0.5),
                args: vec![(0, "/etc/passwd".into()), (2, "x".repeat(200))],
                source: SignalSource::Derived,
            },
        ];
        for r in &records {
            let mut buf = vec![7];
            r.encode(&mut buf, 2);
            let mut want = vec![7];
            prost::encoding::message::encode(2, &r.to_proto(), &mut want);
            assert_eq!(buf, want);
        }
    }
}
