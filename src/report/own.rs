//! pyusdt's self-telemetry, the same for the OTLP export and `/metrics`.
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::Metric;

use crate::export::ExportCounts;
use crate::model::attrs;
use crate::model::metrics::{counter, gauge, int_point, Temporality};

/// pyusdt's own state, reported as its self-telemetry.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnStats {
    /// Events received per marker (gc, import, audit).
    pub received: [u64; 3],
    /// Events lost in the kernel (ring buffer full) per marker.
    pub dropped: [u64; 3],
    /// Function spans lost: ring buffer full, or their code's names not known.
    pub function_dropped: u64,
    /// Files that could not be attached.
    pub attach_failures: u64,
    /// Process descriptions and exec records lost in the kernel (ring buffer full).
    pub process_dropped: u64,
    pub exec_dropped: u64,
    /// Records read that did not decode (a BPF/Rust layout mismatch).
    pub undecodable: u64,
    /// Resource attributes of traced processes' environments left out, by reason.
    pub resource_refused: crate::model::env_attributes::Refusals,
}

/// pyusdt's own counters (cumulative), under its own resource: events received and dropped
/// per marker, export outcomes per signal, attach failures, refused files by reason,
/// orphaned span subtrees, and the processes with metrics. Shared by the OTLP export and `/metrics`.
pub fn metrics(
    own: &OwnStats,
    counts: &ExportCounts,
    orphaned: u64,
    processes: usize,
    start: u64,
    now: u64,
) -> Vec<Metric> {
    let c = Temporality::Cumulative;
    let markers = ["gc", "import", "audit"];
    let by_marker = |values: [u64; 3]| -> Vec<_> {
        markers
            .iter()
            .zip(values)
            .map(|(m, v)| {
                int_point(
                    vec![attrs::string("cpython.marker", *m)],
                    v as i64,
                    start,
                    now,
                )
            })
            .collect()
    };
    let mut export_points = Vec::new();
    for (i, signal) in ["traces", "metrics", "logs"].iter().enumerate() {
        for (outcome, v) in [
            ("exported", counts.exported[i]),
            ("failed", counts.failed[i]),
            ("dropped", counts.dropped[i]),
        ] {
            let a: Vec<KeyValue> = vec![
                attrs::string("otel.signal", *signal),
                attrs::string("outcome", outcome),
            ];
            export_points.push(int_point(a, v as i64, start, now));
        }
    }
    vec![
        counter(
            "pyusdt.events.received",
            "Events read from the ring buffer.",
            "{event}",
            c,
            by_marker(own.received),
        ),
        counter(
            "pyusdt.events.dropped",
            "Events lost because the ring buffer was full (function: also calls whose code \
             names were not known); process descriptions and exec records lost so (by \
             pyusdt.record); records that did not decode (reason undecodable).",
            "{event}",
            c,
            by_marker(own.dropped)
                .into_iter()
                .chain([
                    int_point(
                        vec![attrs::string("cpython.marker", "function")],
                        own.function_dropped as i64,
                        start,
                        now,
                    ),
                    int_point(
                        vec![
                            attrs::string("pyusdt.record", "process"),
                            attrs::string("reason", "ring_buffer_full"),
                        ],
                        own.process_dropped as i64,
                        start,
                        now,
                    ),
                    int_point(
                        vec![
                            attrs::string("pyusdt.record", "exec"),
                            attrs::string("reason", "ring_buffer_full"),
                        ],
                        own.exec_dropped as i64,
                        start,
                        now,
                    ),
                    int_point(
                        vec![attrs::string("reason", "undecodable")],
                        own.undecodable as i64,
                        start,
                        now,
                    ),
                ])
                .collect(),
        ),
        counter(
            "pyusdt.export.items",
            "Spans, metric points and log records by outcome.",
            "{item}",
            c,
            export_points,
        ),
        counter(
            "pyusdt.attach.failures",
            "Interpreter files that could not be attached.",
            "{file}",
            c,
            vec![int_point(vec![], own.attach_failures as i64, start, now)],
        ),
        counter(
            "pyusdt.discovery.refused",
            "Files and mappings named by traced processes that were not read or attached, by \
             reason (src/discover/refusals.rs).",
            "{file}",
            c,
            refused_points(start, now),
        ),
        counter(
            "pyusdt.spans.orphaned",
            "Span subtrees exported without their parent (its end was lost).",
            "{span}",
            c,
            vec![int_point(vec![], orphaned as i64, start, now)],
        ),
        gauge(
            "pyusdt.processes.traced",
            "Processes with metrics in this export.",
            "{process}",
            vec![int_point(vec![], processes as i64, start, now)],
        ),
        counter(
            "pyusdt.resource.attributes.refused",
            "Resource attributes a traced process's environment set that were left out: \
             too many, too long, reserved (pyusdt derives them, or Prometheus reserves the \
             name), invalid, or a duplicate label name.",
            "{attribute}",
            c,
            crate::model::env_attributes::Refusal::ALL
                .iter()
                .map(|r| {
                    int_point(
                        vec![attrs::string("reason", r.label())],
                        own.resource_refused.get(*r) as i64,
                        start,
                        now,
                    )
                })
                .collect(),
        ),
    ]
}

/// One point per refusal reason, zeros included: a series exists before its first refusal.
fn refused_points(
    start: u64,
    now: u64,
) -> Vec<opentelemetry_proto::tonic::metrics::v1::NumberDataPoint> {
    crate::discover::refusals::counts()
        .iter()
        .map(|(reason, n)| {
            int_point(
                vec![attrs::string("reason", reason.label())],
                *n as i64,
                start,
                now,
            )
        })
        .collect()
}

/// How a process's per-process probes are sampled (the overhead budget): the current duty
/// ratio, and the time they were attached (divide call or audit counts by its rate to scale
/// them), for its function probes and its governed audit marker.
pub fn sampling_metrics(s: &crate::model::sampling::Sampling, start: u64, now: u64) -> Vec<Metric> {
    let mut out = Vec::new();
    if let Some(markers) = s.functions {
        out.extend(function_sampling_metrics(s, markers, start, now));
    }
    if s.audit {
        out.extend([
            gauge(
                "pyusdt.audit.sampling.ratio",
                "Duty ratio of the process's audit marker now (--max-overhead): the share of \
                 the time it is attached (1: always, every audit event seen).",
                "1",
                vec![crate::model::metrics::double_point(
                    vec![],
                    s.ratio,
                    start,
                    now,
                )],
            ),
            counter(
                "pyusdt.audit.observed_time",
                "Time the process's audit marker was attached: audit counts cover it.",
                "s",
                Temporality::Cumulative,
                vec![crate::model::metrics::double_point(
                    vec![],
                    s.observed_seconds,
                    start,
                    now,
                )],
            ),
        ]);
    }
    out
}

fn function_sampling_metrics(
    s: &crate::model::sampling::Sampling,
    markers: crate::model::sampling::FunctionMarkers,
    start: u64,
    now: u64,
) -> Vec<Metric> {
    let markers = vec![attrs::string("pyusdt.function_markers", markers.label())];
    vec![
        gauge(
            "pyusdt.function.sampling.ratio",
            "Duty ratio of the process's function probes now: the share of the time they are \
             attached (1: always, every call seen).",
            "1",
            vec![crate::model::metrics::double_point(
                markers.clone(),
                s.ratio,
                start,
                now,
            )],
        ),
        counter(
            "pyusdt.function.observed_time",
            "Time the process's function probes were attached: calls and durations cover it.",
            "s",
            Temporality::Cumulative,
            vec![crate::model::metrics::double_point(
                markers,
                s.observed_seconds,
                start,
                now,
            )],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;

    /// The value of the `pyusdt.events.dropped` point with exactly these attributes.
    fn dropped(metrics: &[Metric], want: &[(&str, &str)]) -> Option<i64> {
        let m = metrics.iter().find(|m| m.name == "pyusdt.events.dropped")?;
        let Some(Data::Sum(s)) = &m.data else {
            return None;
        };
        s.data_points
            .iter()
            .find(|p| {
                p.attributes.len() == want.len()
                    && want
                        .iter()
                        .all(|(k, v)| p.attributes.contains(&attrs::string(k, *v)))
            })
            .and_then(|p| match p.value {
                Some(Value::AsInt(v)) => Some(v),
                _ => None,
            })
    }

    #[test]
    fn lost_and_undecodable_records_are_reasons_of_dropped_events() {
        let own = OwnStats {
            process_dropped: 2,
            exec_dropped: 5,
            undecodable: 3,
            ..Default::default()
        };
        let m = metrics(&own, &ExportCounts::default(), 0, 0, 0, 1);
        assert_eq!(dropped(&m, &[("reason", "undecodable")]), Some(3));
        assert_eq!(
            dropped(
                &m,
                &[("pyusdt.record", "process"), ("reason", "ring_buffer_full")]
            ),
            Some(2)
        );
        assert_eq!(
            dropped(
                &m,
                &[("pyusdt.record", "exec"), ("reason", "ring_buffer_full")]
            ),
            Some(5)
        );
        assert_eq!(dropped(&m, &[("cpython.marker", "gc")]), Some(0));
    }

    #[test]
    fn refusals_have_a_series_per_reason() {
        let all = metrics(&OwnStats::default(), &ExportCounts::default(), 0, 0, 1, 2);
        let refused = all
            .iter()
            .find(|m| m.name == "pyusdt.discovery.refused")
            .expect("pyusdt.discovery.refused");
        let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(sum)) = &refused.data
        else {
            panic!("not a sum: {refused:?}");
        };
        let reasons: Vec<String> = sum
            .data_points
            .iter()
            .flat_map(|p| &p.attributes)
            .filter(|a| a.key == "reason")
            .map(|a| format!("{:?}", a.value))
            .collect();
        assert_eq!(reasons.len(), crate::discover::Reason::ALL.len());
        assert!(reasons.iter().any(|r| r.contains("too_many_files")));
    }
}
