//! OpenTelemetry export end to end: the ground-truth workload under `pyusdt run`, exported over
//! real OTLP/gRPC and OTLP/HTTP to a receiver on loopback, must yield exactly the expected
//! spans, metric points and log records under the right resources.
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use common::otlp::{self, attr_bool, attr_int, attr_str, Receiver};
use common::*;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use serde_json::Value;

/// Runs the ground-truth workload under `pyusdt run` exporting to `receiver`.
/// `metric_interval_ms`: a short interval exports metrics (and checks for exited processes)
/// while spans are still queued; a long one exports once, at exit.
fn run_truth(
    receiver: &Receiver,
    dir: &Path,
    gzip: bool,
    metric_interval_ms: &str,
) -> (Value, Vec<Value>, String) {
    let truth_path = dir.join("truth.json");
    let out_path = dir.join("events.jsonl");
    let out = pyusdt()
        .args(["run", "--probes", "gc,import,audit", "--output"])
        .arg(&out_path)
        .args([
            "--otlp-endpoint",
            &receiver.endpoint,
            "--otlp-protocol",
            receiver.protocol,
        ])
        .env("OTEL_SERVICE_NAME", "pyusdt-truth")
        .env("OTEL_METRIC_EXPORT_INTERVAL", metric_interval_ms)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env(
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            if gzip { "gzip" } else { "none" },
        )
        .args(["--", SYSTEM_PYTHON])
        .arg(workload("ground_truth.py"))
        .arg(&truth_path)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let truth = serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    (truth, read_jsonl(&out_path), stderr)
}

fn check_against_truth(receiver: &Receiver, truth: &Value, events: &[Value], stderr: &str) {
    let pid = truth["pid"].as_i64().unwrap();
    let r = receiver.received();
    let spans = otlp::spans(&r);
    let logs = otlp::logs(&r);
    let mine = |service: &str, p: i64| service == "pyusdt-truth" && p == pid;

    // Resources: the workload's own OTEL_SERVICE_NAME, process and runtime attributes; its
    // child has its own service name, read from its environment.
    let s0 = spans
        .iter()
        .find(|s| s.pid == pid)
        .expect("no span of the workload");
    assert_eq!(s0.service, "pyusdt-truth");
    let ra = &s0.resource.attributes;
    assert_eq!(
        attr_str(ra, "process.runtime.name").as_deref(),
        Some("cpython")
    );
    assert_eq!(
        attr_str(ra, "process.runtime.version").as_deref(),
        Some(system_python_version().as_str())
    );
    assert_eq!(
        attr_str(ra, "process.executable.name").as_deref(),
        Some("python3.11")
    );
    assert!(attr_str(ra, "host.name").is_some());
    assert_eq!(
        attr_str(ra, "process.command_line"),
        None,
        "command lines are opt-in"
    );
    let child = truth["child_pid"].as_i64().unwrap();
    for s in spans.iter().filter(|s| s.pid == child) {
        assert_eq!(s.service, "pyusdt-truth-child", "{:?}", s.resource);
    }
    assert!(
        spans.iter().any(|s| s.pid == child),
        "child's spans missing"
    );

    // The window, from the sentinel audit log records.
    let at = |name: &str| {
        logs.iter()
            .find(|l| {
                mine(&l.service, l.pid)
                    && attr_str(&l.item.attributes, "cpython.audit.event").as_deref() == Some(name)
            })
            .unwrap_or_else(|| panic!("no log record for {name}"))
            .item
            .time_unix_nano
    };
    let (begin, end) = (at("pyusdt.truth.begin"), at("pyusdt.truth.end"));

    // gc.collect spans: per thread, in order, the collections gc.callbacks saw.
    let mut gc_spans: Vec<_> = spans
        .iter()
        .filter(|s| mine(&s.service, s.pid) && s.item.name == "gc.collect")
        .filter(|s| s.item.end_time_unix_nano > begin && s.item.end_time_unix_nano < end)
        .collect();
    gc_spans.sort_by_key(|s| s.item.start_time_unix_nano);
    let mut traced: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
    for s in &gc_spans {
        let a = &s.item.attributes;
        assert_eq!(s.item.kind, 1, "INTERNAL");
        traced
            .entry(attr_int(a, "thread.id").unwrap())
            .or_default()
            .push((
                attr_int(a, "cpython.gc.generation").unwrap(),
                attr_int(a, "cpython.gc.collected_objects").unwrap(),
            ));
    }
    let mut expected: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
    for g in truth["gc"].as_array().unwrap() {
        expected
            .entry(g["tid"].as_i64().unwrap())
            .or_default()
            .push((
                g["generation"].as_i64().unwrap(),
                g["collected"].as_i64().unwrap(),
            ));
    }
    assert_eq!(
        traced, expected,
        "gc.collect spans differ from gc.callbacks"
    );

    // Import spans: names, attributes, ERROR status when not found, nesting by parent span.
    let import_span = |m: &str| {
        spans
            .iter()
            .find(|s| mine(&s.service, s.pid) && s.item.name == format!("import {m}"))
            .unwrap_or_else(|| panic!("no span `import {m}`"))
    };
    for t in truth["imports"].as_array().unwrap() {
        let m = t["module"].as_str().unwrap();
        let s = import_span(m);
        let found = t["found"].as_bool().unwrap();
        assert_eq!(
            attr_str(&s.item.attributes, "cpython.import.module").as_deref(),
            Some(m)
        );
        assert_eq!(
            attr_bool(&s.item.attributes, "cpython.import.found"),
            Some(found)
        );
        let status = s.item.status.clone().unwrap_or_default().code;
        assert_eq!(status == 2, !found, "status of import {m}");
    }
    let (minidom, dom, xml) = (
        import_span("xml.dom.minidom"),
        import_span("xml.dom"),
        import_span("xml"),
    );
    assert!(
        minidom.item.parent_span_id.is_empty(),
        "top-level import is a root span"
    );
    assert_eq!(dom.item.parent_span_id, minidom.item.span_id);
    assert_eq!(xml.item.parent_span_id, dom.item.span_id);
    assert_eq!(xml.item.trace_id, minidom.item.trace_id);
    // The collection run by a module's import is a child of that import's span.
    let gc_import = import_span("pyusdt_gc_in_import");
    assert!(
        spans.iter().any(|s| s.item.name == "gc.collect"
            && s.item.parent_span_id == gc_import.item.span_id
            && s.item.trace_id == gc_import.item.trace_id),
        "the GC inside `import pyusdt_gc_in_import` is not its child"
    );

    // Audit log records: per thread, in order, what sys.addaudithook saw.
    let mut traced_audit: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for l in logs.iter().filter(|l| mine(&l.service, l.pid)) {
        let t = l.item.time_unix_nano;
        if t <= begin || t >= end {
            continue;
        }
        assert_eq!(l.item.event_name, "cpython.audit");
        let name = attr_str(&l.item.attributes, "cpython.audit.event").unwrap();
        traced_audit
            .entry(attr_int(&l.item.attributes, "thread.id").unwrap())
            .or_default()
            .push(name);
    }
    let mut expected_audit: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for a in truth["audit"].as_array().unwrap() {
        expected_audit
            .entry(a["tid"].as_i64().unwrap())
            .or_default()
            .push(a["name"].as_str().unwrap().to_string());
    }
    assert_eq!(
        traced_audit, expected_audit,
        "audit log records differ from the audit hook"
    );

    // Metrics (one cumulative export at exit): counts and sums equal to every event of the
    // process (the JSON lines written beside them).
    let ev = |kind: &'static str| {
        events
            .iter()
            .filter(move |e| e["type"] == kind && e["pid"].as_i64() == Some(pid))
    };
    let metrics: Vec<_> = otlp::metrics(&r)
        .into_iter()
        .filter(|m| mine(&m.service, m.pid))
        .collect();
    let metric = |name: &str| {
        metrics
            .iter()
            .rev()
            .find(|m| m.item.name == name)
            .unwrap_or_else(|| panic!("no metric {name}"))
            .item
            .clone()
    };
    let mut gc_by_gen: HashMap<i64, (u64, i64, f64)> = HashMap::new();
    for e in ev("gc") {
        let g = gc_by_gen
            .entry(e["generation"].as_i64().unwrap())
            .or_default();
        g.0 += 1;
        g.1 += e["collected"].as_i64().unwrap();
        g.2 += e["duration_ns"].as_u64().unwrap() as f64 / 1e9;
    }
    let Some(Data::Sum(collections)) = metric("cpython.gc.collections").data else {
        panic!()
    };
    assert!(collections.is_monotonic);
    assert_eq!(
        collections.aggregation_temporality, 2,
        "cumulative by default"
    );
    let Some(Data::Sum(collected)) = metric("cpython.gc.collected_objects").data else {
        panic!()
    };
    let Some(Data::Histogram(durations)) = metric("cpython.gc.duration").data else {
        panic!()
    };
    assert_eq!(metric("cpython.gc.duration").unit, "s");
    assert_eq!(collections.data_points.len(), gc_by_gen.len());
    for (gen, (n, objects, seconds)) in &gc_by_gen {
        let by_gen = |a: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
            attr_int(a, "cpython.gc.generation") == Some(*gen)
        };
        let c = collections
            .data_points
            .iter()
            .find(|p| by_gen(&p.attributes))
            .unwrap();
        assert_eq!(
            c.value,
            Some(number_data_point::Value::AsInt(*n as i64)),
            "collections of gen {gen}"
        );
        let o = collected
            .data_points
            .iter()
            .find(|p| by_gen(&p.attributes))
            .unwrap();
        assert_eq!(
            o.value,
            Some(number_data_point::Value::AsInt(*objects)),
            "objects of gen {gen}"
        );
        let h = durations
            .data_points
            .iter()
            .find(|p| by_gen(&p.attributes))
            .unwrap();
        assert_eq!(h.count, *n);
        assert_eq!(h.bucket_counts.iter().sum::<u64>(), *n);
        assert!(
            (h.sum.unwrap() - seconds).abs() < 1e-6,
            "pause sum of gen {gen}"
        );
    }
    let Some(Data::Histogram(imports)) = metric("cpython.import.duration").data else {
        panic!()
    };
    for found in [true, false] {
        let n = ev("import").filter(|e| e["found"] == found).count() as u64;
        let p = imports
            .data_points
            .iter()
            .find(|p| attr_bool(&p.attributes, "cpython.import.found") == Some(found))
            .unwrap();
        assert_eq!(p.count, n, "imports found={found}");
        assert!(
            p.attributes
                .iter()
                .all(|kv| kv.key != "cpython.import.module"),
            "no module names on metrics"
        );
    }
    let Some(Data::Sum(audits)) = metric("cpython.audit.events").data else {
        panic!()
    };
    let mut audit_counts: HashMap<String, i64> = HashMap::new();
    for e in ev("audit") {
        *audit_counts
            .entry(e["name"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert_eq!(audits.data_points.len(), audit_counts.len());
    for p in &audits.data_points {
        let name = attr_str(&p.attributes, "cpython.audit.event").unwrap();
        assert_eq!(
            p.value,
            Some(number_data_point::Value::AsInt(audit_counts[&name])),
            "{name}"
        );
    }

    // Self-telemetry under pyusdt's own resource, and nothing lost.
    let own: Vec<_> = otlp::metrics(&r)
        .into_iter()
        .filter(|m| m.service == "pyusdt")
        .collect();
    for name in [
        "pyusdt.events.received",
        "pyusdt.events.dropped",
        "pyusdt.export.items",
        "pyusdt.attach.failures",
        "pyusdt.discovery.refused",
        "pyusdt.processes.traced",
    ] {
        assert!(
            own.iter().any(|m| m.item.name == name),
            "self-telemetry {name} missing"
        );
    }
    assert!(stderr.contains("failed 0, dropped 0"), "{stderr}");
    let s = summary(events);
    assert_eq!(s["export"]["failed"], serde_json::json!([0, 0, 0]));
    assert_eq!(s["export"]["dropped"], serde_json::json!([0, 0, 0]));
    let exported_spans = s["export"]["exported"][0].as_u64().unwrap();
    assert_eq!(exported_spans, spans.len() as u64);
    assert_eq!(
        s["export"]["exported"][2].as_u64().unwrap(),
        logs.len() as u64
    );
}

#[test]
fn otlp_grpc_matches_the_ground_truth() {
    if !require_bpf("otlp_grpc_matches_the_ground_truth") {
        return;
    }
    let receiver = otlp::grpc();
    let dir = tempfile::tempdir().unwrap();
    let (truth, events, stderr) = run_truth(&receiver, dir.path(), false, "600000");
    check_against_truth(&receiver, &truth, &events, &stderr);
}

#[test]
fn otlp_http_gzip_matches_the_ground_truth() {
    if !require_bpf("otlp_http_gzip_matches_the_ground_truth") {
        return;
    }
    let receiver = otlp::http();
    let dir = tempfile::tempdir().unwrap();
    let (truth, events, stderr) = run_truth(&receiver, dir.path(), true, "100");
    check_against_truth(&receiver, &truth, &events, &stderr);
}

#[test]
fn a_process_that_execs_is_described_again() {
    if !require_bpf("a_process_that_execs_is_described_again") {
        return;
    }
    let receiver = otlp::http();
    let out = pyusdt()
        .args([
            "run",
            "-q",
            "--probes",
            "audit",
            "--otlp-endpoint",
            &receiver.endpoint,
        ])
        .args(["--otlp-protocol", receiver.protocol])
        .env("OTEL_SERVICE_NAME", "pyusdt-exec-before")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .args(["--", SYSTEM_PYTHON])
        .arg(workload("exec_again.py"))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let logs = otlp::logs(&receiver.received());
    let sentinel = |name: &str| {
        logs.iter()
            .find(|l| attr_str(&l.item.attributes, "cpython.audit.event").as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no log record for {name}: {stderr}"))
    };
    let (before, after) = (
        sentinel("pyusdt.exec.before"),
        sentinel("pyusdt.exec.after"),
    );
    assert_eq!(before.pid, after.pid, "execve keeps the PID");
    assert_eq!(before.service, "pyusdt-exec-before");
    assert_eq!(
        after.service, "pyusdt-exec-after",
        "the program started by execve is described again: {:?}",
        after.resource
    );
}

/// `3.11.2`, as the interpreter itself says.
fn system_python_version() -> String {
    let out = std::process::Command::new(SYSTEM_PYTHON)
        .args(["-c", "import platform; print(platform.python_version())"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
