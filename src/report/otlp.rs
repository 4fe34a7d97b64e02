//! The OpenTelemetry sink: events → spans, metrics and log records (src/model), batched per
//! the OTel batch settings and handed to the exporter thread (src/export).
//!
//! Over 500 lines only with its tests (90).
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, ScopeMetrics};

use crate::decode::{Event, ProcessRecord};
use crate::export::config::{ExportConfig, ExporterKind};
use crate::export::{Batch, ExportCounts, Exporter, Payload};
use crate::model::clock::Clock;
use crate::model::fields;
use crate::model::logs::{AuditFilter, LogBuffer};
use crate::model::metrics::{KernelUpdate, MetricsAggregator};
use crate::model::resource::{self, ProcessFacts, Resources};
use crate::model::sampling::SamplingTable;
use crate::model::scope;
use crate::model::spans::SpanAssembler;
use crate::model::wire::{self, Encoded};

/// A thread whose spans wait this long for their parent's end releases them as roots.
const STALE_PARENT: Duration = Duration::from_secs(30);
/// How long an exited process's resource and metrics are kept: longer than `STALE_PARENT`, so
/// that its last spans still find their resource.
const FORGET_AFTER: Duration = Duration::from_secs(60);

pub use super::own::OwnStats;

pub struct OtlpSink {
    clock: Clock,
    config: ExportConfig,
    resources: Resources,
    spans: SpanAssembler,
    metrics: MetricsAggregator,
    logs: LogBuffer,
    exporter: Exporter,
    last_batch: Instant,
    last_metrics: Instant,
    started_unix_ns: u64,
    /// PIDs with a process description (a second one means PID reuse).
    described: HashSet<u32>,
    /// Exited processes and when they were first seen gone.
    dead_since: HashMap<u32, Instant>,
    /// Whether event PIDs are this process's PIDs (same PID namespace).
    pids_are_ours: bool,
    /// Per-process probes and their sampling (--probes function, audit under a budget).
    sampling: Option<SamplingTable>,
}

/// Why the OTLP sink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Start(#[from] crate::export::StartError),
    #[error(transparent)]
    AuditPatterns(#[from] crate::globs::PatternError),
}

impl OtlpSink {
    /// `None` for the console exporter. `runtime_version` tells the CPython version a process runs.
    pub fn new(
        config: ExportConfig,
        clock: Clock,
        runtime_version: Box<dyn Fn(u32) -> Option<String>>,
    ) -> Result<Option<OtlpSink>, SinkError> {
        if config.exporter == ExporterKind::Console {
            return Ok(None);
        }
        let Some(exporter) = Exporter::start(&config.exporter)? else {
            return Ok(None);
        };
        OtlpSink::with_exporter(config, clock, runtime_version, exporter).map(Some)
    }

    /// As `new`, handing batches to `exporter` (`Exporter::in_memory` in benchmarks).
    #[doc(hidden)]
    pub fn with_exporter(
        config: ExportConfig,
        clock: Clock,
        runtime_version: Box<dyn Fn(u32) -> Option<String>>,
        exporter: Exporter,
    ) -> Result<OtlpSink, SinkError> {
        let filter = AuditFilter::parse(&config.audit_log_events)?;
        Ok(OtlpSink {
            clock,
            resources: Resources::new(config.resource_command_line, runtime_version),
            spans: SpanAssembler::new(clock),
            metrics: MetricsAggregator::new(config.temporality),
            logs: LogBuffer::new(clock, filter, config.max_queue_size),
            exporter,
            last_batch: Instant::now(),
            last_metrics: Instant::now(),
            started_unix_ns: clock.unix_nanos(crate::model::clock::monotonic_ns()),
            described: HashSet::new(),
            dead_since: HashMap::new(),
            pids_are_ours: true,
            sampling: None,
            config,
        })
    }

    /// PIDs in events are not this process's PIDs (another PID namespace): never look them
    /// up in /proc or probe their liveness; rely on what the BPF side read.
    pub fn pids_are_foreign(&mut self) {
        self.pids_are_ours = false;
        self.resources.never_read_proc();
    }

    /// A process described by the BPF side at its first event, from its own memory, so right
    /// even when it has exited since. A second description of a PID means the PID was reused:
    /// what the old process left is shipped under its resource first.
    pub fn describe_process(&mut self, record: &ProcessRecord<'_>) {
        if !self.described.insert(record.pid) {
            self.flush_process(record.pid);
        }
        let facts = ProcessFacts::from_record(record, self.pids_are_ours);
        self.dead_since.remove(&record.pid);
        self.resources.seed_with_version(facts);
    }

    /// Ships everything held for `pid` (its PID is about to describe another process).
    fn flush_process(&mut self, pid: u32) {
        self.spans.release_stale(0, 0);
        self.ship_spans_and_logs();
        let now = self.clock.unix_nanos(crate::model::clock::monotonic_ns());
        if let Some(metrics) = self.metrics.collect_one(pid, now) {
            let items = count_points(&metrics);
            let request = ExportMetricsServiceRequest {
                resource_metrics: vec![self.resource_metrics(pid, metrics)],
            };
            self.exporter.submit(Batch {
                payload: Payload::Metrics(request),
                items,
            });
        }
        self.metrics.forget(pid);
        self.resources.forget(pid);
    }

    /// Resources of processes in pods carry the pod's attributes (agent in Kubernetes).
    pub fn set_pods(&mut self, pods: crate::k8s::cache::PodCacheHandle) {
        self.resources.set_pods(pods);
    }

    /// Function spans, audit log records and metrics say how the process's per-process
    /// probes were sampled.
    pub fn set_sampling(&mut self, table: SamplingTable) {
        self.sampling = Some(table);
    }

    /// See `Sinks::kernel_aggregated`.
    pub fn kernel_aggregated(&mut self, pid: u32, update: KernelUpdate<'_>, now_ns: u64) {
        self.metrics
            .add_kernel(pid, update, self.clock.unix_nanos(now_ns));
    }

    /// --metrics-only: the event counts in the metrics alone (no span, no log record).
    pub fn record_metrics(&mut self, event: &Event<'_>) {
        self.metrics
            .record(event, self.clock.unix_nanos(event.header().end_ns));
    }

    pub fn record(&mut self, event: &Event<'_>) {
        // The sampling ratio of a process's per-process probes (below 1: sampled).
        let sampled = |of_audit: bool| {
            let table = self.sampling.as_ref()?.borrow();
            let s = table.get(&event.header().pid)?;
            let governed = if of_audit {
                s.audit
            } else {
                s.functions.is_some()
            };
            Some(s.ratio).filter(|r| governed && *r < 1.0)
        };
        match event {
            Event::Function { .. } => self.spans.record_sampled(event, sampled(false)),
            Event::Audit { .. } => self.logs.record_sampled(event, sampled(true)),
            _ => self.spans.record(event),
        }
        self.record_metrics(event);
        // Bounded memory: a full queue is shipped now rather than grown.
        if self.spans.ready_len() >= self.config.max_queue_size
            || self.logs.ready_len() >= self.config.max_queue_size
        {
            self.ship_spans_and_logs();
        }
    }

    /// Called between ring-buffer polls: ships batches and metrics when due.
    pub fn tick(&mut self, own: &dyn Fn() -> OwnStats) {
        let full = self.config.max_export_batch_size;
        if self.last_batch.elapsed() >= self.config.schedule_delay
            || self.spans.ready_len() >= full
            || self.logs.ready_len() >= full
        {
            self.spans.release_stale(
                crate::model::clock::monotonic_ns(),
                STALE_PARENT.as_nanos() as u64,
            );
            self.ship_spans_and_logs();
        }
        if self.last_metrics.elapsed() >= self.config.metric_interval {
            self.ship_metrics(&own());
        }
    }

    /// Ships everything (spans still waiting for a parent become roots) and stops the
    /// exporter after at most `grace` of retries.
    /// Returns the export counts, and the span subtrees released without their parent and
    /// the events without a span (no start seen).
    pub fn finish(mut self, own: &OwnStats, grace: Duration) -> (ExportCounts, (u64, u64)) {
        self.spans.release_stale(0, 0);
        self.ship_spans_and_logs();
        self.ship_metrics(own);
        let spans = (self.spans.orphaned, self.spans.without_start);
        (self.exporter.shutdown(grace), spans)
    }

    fn ship_spans_and_logs(&mut self) {
        self.last_batch = Instant::now();
        // Requests are written as protobuf directly (model::wire), each field of
        // ExportTraceServiceRequest / ExportLogsServiceRequest as prost writes it.
        let spans = self.spans.take_ready();
        self.ship(
            spans,
            256,
            |s, buf| s.encode(buf, fields::scope_items::ITEMS),
            |buf| Payload::Traces(Encoded::new(buf)),
        );
        let logs = self.logs.take_ready();
        self.ship(
            logs,
            128,
            |r, buf| r.encode(buf, fields::scope_items::ITEMS),
            |buf| Payload::Logs(Encoded::new(buf)),
        );
    }

    /// Queues `ready` items as export requests of at most the batch size; `guess`: bytes per
    /// item to reserve, `payload`: the request's kind.
    fn ship<T>(
        &mut self,
        ready: Vec<(u32, T)>,
        guess: usize,
        encode: impl Fn(&T, &mut Vec<u8>),
        payload: impl Fn(Vec<u8>) -> Payload,
    ) {
        let scope = scope();
        let mut order = Vec::new();
        for batch in ready.chunks(self.config.max_export_batch_size.max(1)) {
            by_process(batch, &mut order);
            let capacity = guess * batch.len();
            let buf = encode_request(
                &mut self.resources,
                &scope,
                batch,
                &order,
                capacity,
                &encode,
            );
            self.exporter.submit(Batch {
                payload: payload(buf),
                items: batch.len() as u64,
            });
        }
    }

    fn ship_metrics(&mut self, own: &OwnStats) {
        self.last_metrics = Instant::now();
        let now = self.clock.unix_nanos(crate::model::clock::monotonic_ns());
        let mut resource_metrics = Vec::new();
        let mut points = 0u64;
        let per_process = self.metrics.collect(now);
        for (pid, mut metrics) in per_process {
            metrics.extend(self.sampling_metrics(pid, now));
            points += count_points(&metrics);
            resource_metrics.push(self.resource_metrics(pid, metrics));
        }
        let own_metrics = self.own_metrics(own, now);
        points += count_points(&own_metrics);
        resource_metrics.push(ResourceMetrics {
            resource: Some(resource::own(self.resources.host_name())),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: own_metrics,
                ..Default::default()
            }],
            ..Default::default()
        });
        self.exporter.submit(Batch {
            payload: Payload::Metrics(ExportMetricsServiceRequest { resource_metrics }),
            items: points,
        });
        self.forget_exited();
    }

    /// Forgets processes gone for at least `FORGET_AFTER` (their last values have been
    /// exported, and spans waiting for a parent were released meanwhile). Not when PIDs are
    /// foreign: a PID reuse then shows as a new process description instead.
    fn forget_exited(&mut self) {
        if !self.pids_are_ours {
            return;
        }
        let now = Instant::now();
        for pid in self.metrics.pids() {
            if crate::discover::process::is_alive(pid) {
                self.dead_since.remove(&pid);
                continue;
            }
            let since = *self.dead_since.entry(pid).or_insert(now);
            if now.duration_since(since) >= FORGET_AFTER {
                self.dead_since.remove(&pid);
                self.described.remove(&pid);
                self.metrics.forget(pid);
                self.resources.forget(pid);
            }
        }
    }

    fn resource_metrics(&mut self, pid: u32, metrics: Vec<Metric>) -> ResourceMetrics {
        ResourceMetrics {
            resource: Some(self.resources.get(pid).clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// How the process's per-process probes were sampled: the current ratio, and the time
    /// they were attached (divide call or audit counts by its rate to scale them to the whole
    /// time).
    fn sampling_metrics(&self, pid: u32, now: u64) -> Vec<Metric> {
        let Some(s) = self
            .sampling
            .as_ref()
            .and_then(|t| t.borrow().get(&pid).copied())
        else {
            return Vec::new();
        };
        super::own::sampling_metrics(&s, self.started_unix_ns, now)
    }

    /// Cumulative counters of pyusdt itself, under its own resource.
    fn own_metrics(&self, own: &OwnStats, now: u64) -> Vec<Metric> {
        super::own::metrics(
            own,
            &self.exporter.counts(),
            self.spans.orphaned,
            self.metrics.pids().len(),
            self.started_unix_ns,
            now,
        )
    }

    /// What the exporter did, and the span subtrees released without their parent: for the
    /// self-telemetry of `/metrics`.
    pub fn export_stats(&self) -> (ExportCounts, u64) {
        (self.exporter.counts(), self.spans.orphaned)
    }
}

/// The items of `batch` by process: `order` is set to their indices, sorted by PID, each
/// process's items in the order they came. Items are encoded from where they are, not moved
/// into a map per process.
fn by_process<T>(batch: &[(u32, T)], order: &mut Vec<u64>) {
    order.clear();
    order.extend(
        batch
            .iter()
            .enumerate()
            .map(|(i, (pid, _))| u64::from(*pid) << 32 | i as u64),
    );
    order.sort_unstable();
}

/// The body of an ExportTraceServiceRequest or ExportLogsServiceRequest, which share their
/// layout: per process, `ResourceX { resource, scope_X: [ScopeX { scope, items }] }` (field 1
/// each time, and 1, 2 inside), as prost writes it. `encode` writes one item as field 2;
/// `order`: the items by process (`by_process`).
fn encode_request<T>(
    resources: &mut Resources,
    scope: &InstrumentationScope,
    batch: &[(u32, T)],
    order: &[u64],
    capacity: usize,
    encode: impl Fn(&T, &mut Vec<u8>),
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(capacity);
    for process in order.chunk_by(|a, b| a >> 32 == b >> 32) {
        let resource = resources.get((process[0] >> 32) as u32);
        wire::message(&mut buf, fields::REQUEST_RESOURCE_ITEMS, 3, |buf| {
            wire::prost_message(buf, fields::resource_items::RESOURCE, resource);
            wire::message(buf, fields::resource_items::SCOPE_ITEMS, 3, |buf| {
                wire::prost_message(buf, fields::scope_items::SCOPE, scope);
                for &key in process {
                    encode(&batch[key as u32 as usize].1, buf);
                }
            });
        });
    }
    buf
}

fn count_points(metrics: &[Metric]) -> u64 {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    metrics
        .iter()
        .map(|m| match &m.data {
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            _ => 0,
        } as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_items_are_grouped_by_process() {
        let items: Vec<(u32, char)> = vec![(2, 'a'), (1, 'b'), (2, 'c'), (1, 'd'), (3, 'e')];
        let mut order = Vec::new();
        by_process(&items, &mut order);
        let grouped: Vec<Vec<(u32, char)>> = order
            .chunk_by(|a, b| a >> 32 == b >> 32)
            .map(|p| p.iter().map(|&k| items[k as u32 as usize]).collect())
            .collect();
        assert_eq!(
            grouped,
            [
                vec![(1, 'b'), (1, 'd')],
                vec![(2, 'a'), (2, 'c')],
                vec![(3, 'e')]
            ]
        );
        by_process(&items[..0], &mut order);
        assert!(order.is_empty());
    }

    #[test]
    fn requests_are_the_bytes_prost_writes() {
        use crate::decode::Header;
        use crate::export::config::ExportFlags;
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        use std::borrow::Cow;
        let flags = ExportFlags {
            exporter: Some("file".into()),
            otlp_file: Some("/dev/null".into()),
            ..Default::default()
        };
        let config = ExportConfig::resolve(&flags, &|_| None).unwrap();
        let (exporter, rx) = Exporter::in_memory(16);
        let mut sink =
            OtlpSink::with_exporter(config, Clock::now(), Box::new(|_| None), exporter).unwrap();
        sink.pids_are_foreign();
        for pid in [7, 3] {
            let header = |depth| Header {
                source: Default::default(),
                start_ns: Some(10),
                end_ns: 20,
                pid,
                tid: pid,
                depth,
            };
            sink.record(&Event::Gc {
                header: header(1),
                generation: Some(1),
                collected: 3,
            });
            sink.record(&Event::Import {
                header: header(0),
                module: Cow::Borrowed("json"),
                found: true,
                nesting: 0,
            });
            sink.record(&Event::Audit {
                header: header(0),
                name: Cow::Borrowed("open"),
                nargs: Some(1),
                args: None,
            });
        }
        sink.finish(&OwnStats::default(), Duration::ZERO);
        let (mut traces, mut logs) = (0, 0);
        for batch in rx.try_iter() {
            match batch.payload {
                Payload::Traces(r) => {
                    let decoded = ExportTraceServiceRequest::decode(r.as_bytes()).unwrap();
                    assert_eq!(decoded.resource_spans.len(), 2);
                    assert_eq!(decoded.encode_to_vec(), r.as_bytes());
                    traces += 1;
                }
                Payload::Logs(r) => {
                    let decoded = ExportLogsServiceRequest::decode(r.as_bytes()).unwrap();
                    assert_eq!(decoded.resource_logs.len(), 2);
                    assert_eq!(decoded.encode_to_vec(), r.as_bytes());
                    logs += 1;
                }
                Payload::Metrics(_) => {}
            }
        }
        assert_eq!((traces, logs), (1, 1));
    }
}
