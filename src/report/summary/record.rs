//! The machine-readable closing summary: the last record of `--output`.
use crate::export::ExportCounts;

use serde::Serialize;

use super::{ExportSummary, Summary};
use crate::attach::KernelStats;
use crate::model::sampling::Sampling;

impl Summary {
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
                    gc_source: (!p.gc.is_empty()).then(|| p.gc_source.label()),
                    imports: p.imports,
                    imports_not_found: p.imports_not_found,
                    import_source: (p.imports > 0).then(|| p.import_source.label()),
                    audit_events: p.audit_total,
                    audit_source: (p.audit_total > 0).then(|| p.audit_source.label()),
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
    /// Where the collections were seen (`usdt`, or a hook point's source).
    #[serde(skip_serializing_if = "Option::is_none")]
    gc_source: Option<&'static str>,
    imports: u64,
    imports_not_found: u64,
    /// Where the imports were seen (`usdt`, or a hook point's source).
    #[serde(skip_serializing_if = "Option::is_none")]
    import_source: Option<&'static str>,
    audit_events: u64,
    /// Where the audit events were seen (`usdt`, or a hook point's source).
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_source: Option<&'static str>,
    /// Audit events per event name.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    audit_by_name: std::collections::BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_probes: Option<SamplingRecord>,
    /// The audit marker attached per process (`run`'s processes, or under --max-overhead).
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
