//! `--metrics-listen`: the same metrics as the OTLP export, aggregated here (cumulative) and
//! published in the Prometheus text format for `/metrics` (src/serve.rs), once a second.
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::metrics::v1::Metric;

use super::own::OwnStats;
use crate::decode::{Event, ProcessRecord};
use crate::export::ExportCounts;
use crate::model::clock::Clock;
use crate::model::metrics::{KernelUpdate, MetricsAggregator, Temporality};
use crate::model::resource::{self, ProcessFacts, Resources};
use crate::serve::Published;

const PUBLISH_EVERY: Duration = Duration::from_secs(1);

pub struct PromSink {
    clock: Clock,
    metrics: MetricsAggregator,
    resources: Resources,
    published: Published,
    last: Option<Instant>,
    started_unix_ns: u64,
    /// Processes found gone at the last publication.
    dead_before: std::collections::HashSet<u32>,
    sampling: Option<crate::model::sampling::SamplingTable>,
    /// Whether event PIDs are this process's PIDs (see `pids_are_foreign`).
    pids_are_ours: bool,
}

impl PromSink {
    pub fn new(clock: Clock, published: Published, with_command_line: bool) -> PromSink {
        PromSink {
            clock,
            metrics: MetricsAggregator::new(Temporality::Cumulative),
            resources: Resources::new(with_command_line, Box::new(|_| None)),
            published,
            last: None,
            dead_before: Default::default(),
            sampling: None,
            pids_are_ours: true,
            started_unix_ns: clock.unix_nanos(crate::model::clock::monotonic_ns()),
        }
    }

    /// PIDs in events are not this process's PIDs: /proc/PID is not read for them.
    pub fn pids_are_foreign(&mut self) {
        self.pids_are_ours = false;
        self.resources.never_read_proc();
    }

    /// Function-probe sampling per process, published with its metrics.
    pub fn set_sampling(&mut self, table: crate::model::sampling::SamplingTable) {
        self.sampling = Some(table);
    }

    /// Series of processes in pods carry the pod's attributes (agent in Kubernetes).
    pub fn set_pods(&mut self, pods: crate::k8s::cache::PodCacheHandle) {
        self.resources.set_pods(pods);
    }

    pub fn describe_process(&mut self, record: &ProcessRecord<'_>) {
        self.resources
            .seed(ProcessFacts::from_record(record, self.pids_are_ours));
    }

    pub fn record(&mut self, event: &Event<'_>) {
        self.metrics
            .record(event, self.clock.unix_nanos(event.header().end_ns));
    }

    /// See `Sinks::kernel_aggregated`.
    pub fn kernel_aggregated(&mut self, pid: u32, update: KernelUpdate<'_>, now_ns: u64) {
        self.metrics
            .add_kernel(pid, update, self.clock.unix_nanos(now_ns));
    }

    /// Publishes when due. `own`: pyusdt's own state, with the OTLP exporter's counts and the
    /// orphaned span subtrees when there is an exporter.
    pub fn tick(&mut self, own: &dyn Fn() -> (OwnStats, Option<(ExportCounts, u64)>)) {
        self.published.beat();
        if self.last.is_some_and(|t| t.elapsed() < PUBLISH_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let (stats, export) = own();
        let now = self.clock.unix_nanos(crate::model::clock::monotonic_ns());
        let per_process = self.metrics.collect(now);
        let mut owned = Vec::new();
        for (pid, mut metrics) in per_process {
            let sampling = self
                .sampling
                .as_ref()
                .and_then(|t| t.borrow().get(&pid).copied());
            if let Some(s) = sampling {
                metrics.extend(super::own::sampling_metrics(&s, self.started_unix_ns, now));
            }
            owned.push((self.resources.get(pid).clone(), metrics));
        }
        let own = resource::own(self.resources.host_name());
        let (counts, orphaned) = export.unwrap_or_default();
        let own_metrics = super::own::metrics(
            &stats,
            &counts,
            orphaned,
            self.metrics.pids().len(),
            self.started_unix_ns,
            now,
        );
        let mut all: Vec<(&_, &[Metric])> = owned.iter().map(|(r, m)| (r, m.as_slice())).collect();
        all.push((&own, &own_metrics));
        self.published
            .set_metrics(crate::export::prometheus::render(&all));
        // A process seen gone at two publications in a row is forgotten: its series end, and
        // memory stays bounded however many processes come and go.
        let dead: std::collections::HashSet<u32> = self
            .metrics
            .pids()
            .into_iter()
            .filter(|&pid| self.pids_are_ours && !crate::discover::process::is_alive(pid))
            .collect();
        for pid in dead.intersection(&self.dead_before) {
            self.metrics.forget(*pid);
            self.resources.forget(*pid);
        }
        self.dead_before = dead;
    }
}
