//! `--metrics-only`: metrics alone over OTLP, with audit events counted in the kernel per
//! process and name (no record per event): the counts are exact, and no span or log record
//! is sent.
mod common;

use common::otlp::{self, attr_str};
use common::*;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};

/// Raises `AUDITS` custom audit events from 3 threads, imports a module and collects.
const SCRIPT: &str = r#"
import sys, threading, gc
def raise_some(n):
    for i in range(n):
        sys.audit("pyusdt.test", i)
threads = [threading.Thread(target=raise_some, args=(10_000,)) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join()
import json
gc.collect()
"#;
const AUDITS: i64 = 30_000;

#[test]
fn audit_events_are_counted_in_the_kernel_and_exported_as_metrics_only() {
    if !require_bpf("audit_events_are_counted_in_the_kernel_and_exported_as_metrics_only") {
        return;
    }
    let receiver = otlp::http();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("out.jsonl");
    let out = pyusdt()
        .args([
            "run",
            "--quiet",
            "--probes",
            "gc,import,audit",
            "--metrics-only",
        ])
        .args(["--otlp-endpoint", &receiver.endpoint, "-o"])
        .arg(&jsonl)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .args(["--", SYSTEM_PYTHON, "-c", SCRIPT])
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");

    // No record per audit event reached pyusdt: the -o file has GC and import events only.
    let records = read_jsonl(&jsonl);
    assert!(
        records.iter().all(|r| r["type"] != "audit"),
        "audit records in -o"
    );
    assert!(records.iter().any(|r| r["type"] == "gc"));
    let s = summary(&records);
    assert_eq!(s["dropped"]["audit"], 0, "{err}");
    let process = &s["processes"][0];
    assert_eq!(process["audit_by_name"]["pyusdt.test"], AUDITS, "{process}");

    let r = receiver.received();
    assert!(
        otlp::logs(&r).is_empty(),
        "log records under --metrics-only"
    );
    assert!(otlp::spans(&r).is_empty(), "spans under --metrics-only");
    // The last cumulative point of cpython.audit.events for the event: every one counted.
    let last = otlp::metrics(&r)
        .into_iter()
        .filter(|m| m.item.name == "cpython.audit.events")
        .filter_map(|m| match m.item.data {
            Some(Data::Sum(s)) => Some(s.data_points),
            _ => None,
        })
        .flatten()
        .filter(|p| {
            attr_str(&p.attributes, "cpython.audit.event").as_deref() == Some("pyusdt.test")
        })
        .last()
        .expect("cpython.audit.events{cpython.audit.event=pyusdt.test}");
    assert_eq!(last.value, Some(Value::AsInt(AUDITS)));
    // GC still has its duration histogram.
    assert!(otlp::metrics(&r)
        .iter()
        .any(|m| m.item.name == "cpython.gc.duration"));
}

#[test]
fn metrics_only_refuses_audit_log_options() {
    let out = pyusdt()
        .args([
            "run",
            "--probes",
            "audit",
            "--metrics-only",
            "--audit-args",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("which --metrics-only does not export"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
