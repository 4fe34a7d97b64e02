//! `--metrics-only`: metrics alone over OTLP, aggregated in the kernel with no record per
//! event: audit events counted per process and name (exactly), GC and import durations in
//! the buckets of the exported histograms. No span or log record is sent.
mod common;

use common::otlp::{self, attr_str};
use common::*;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};

/// Raises `AUDITS` custom audit events from 3 threads (names in Python strings, copied by the
/// BPF side), and as many `builtins.id` (a literal of the interpreter, counted by address),
/// imports a module, makes garbage and collects 5 times explicitly; prints the collections
/// per generation the interpreter made (gc.get_stats() counts them where the markers fire)
/// and the `builtins.id` events an audit hook saw, then leaves without the shutdown's own
/// collections.
const SCRIPT: &str = r#"
import os, sys, threading, gc, itertools
ids = itertools.count()
sys.addaudithook(lambda event, args: event == "builtins.id" and next(ids))
def raise_some(n):
    for i in range(n):
        sys.audit("pyusdt.test", i)
        id(i)
threads = [threading.Thread(target=raise_some, args=(10_000,)) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join()
import json
for _ in range(50_000):
    a = []
    a.append(a)
for _ in range(5):
    gc.collect()
print(*(s["collections"] for s in gc.get_stats()), next(ids), flush=True)
os._exit(0)
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
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "{err}");
    let mut made: Vec<i64> = stdout
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(made.len() == 4 && made[2] >= 5, "{stdout}");
    let ids = made.pop().unwrap();
    assert!(ids >= AUDITS, "{stdout}");

    // No record per event reached pyusdt: the -o file has the summary alone.
    let records = read_jsonl(&jsonl);
    assert_eq!(records.len(), 1, "event records in -o: {records:?}");
    let s = summary(&records);
    assert_eq!(
        s["dropped"],
        serde_json::json!({"gc": 0, "import": 0, "audit": 0}),
        "{err}"
    );
    let process = &s["processes"][0];
    assert_eq!(process["audit_by_name"]["pyusdt.test"], AUDITS, "{process}");
    assert_eq!(process["audit_by_name"]["builtins.id"], ids, "{process}");
    // Every collection the interpreter made.
    let collections = process["gc_collections"].as_i64().unwrap();
    assert_eq!(collections, made.iter().sum::<i64>(), "{stdout}");
    assert!(process["imports"].as_u64().unwrap() >= 1, "{process}");
    assert!(err.contains("aggregated in the kernel"), "{err}");

    let r = receiver.received();
    assert!(
        otlp::logs(&r).is_empty(),
        "log records under --metrics-only"
    );
    assert!(otlp::spans(&r).is_empty(), "spans under --metrics-only");
    // The last cumulative point of cpython.audit.events for each event: every one counted.
    for (name, raised) in [("pyusdt.test", AUDITS), ("builtins.id", ids)] {
        let last = otlp::metrics(&r)
            .into_iter()
            .filter(|m| m.item.name == "cpython.audit.events")
            .filter_map(|m| match m.item.data {
                Some(Data::Sum(s)) => Some(s.data_points),
                _ => None,
            })
            .flatten()
            .rfind(|p| attr_str(&p.attributes, "cpython.audit.event").as_deref() == Some(name))
            .unwrap_or_else(|| panic!("cpython.audit.events{{cpython.audit.event={name}}}"));
        assert_eq!(last.value, Some(Value::AsInt(raised)), "{name}");
    }

    // The last export of the GC metrics holds every collection the summary counted, and the
    // histograms are consistent: bucket counts add up, min <= max, sum within them.
    let last_of = |name: &str| {
        otlp::metrics(&r)
            .into_iter()
            .rfind(|m| m.item.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .item
            .data
    };
    let Some(Data::Sum(c)) = last_of("cpython.gc.collections") else {
        panic!("cpython.gc.collections is not a sum")
    };
    // Per generation, as the interpreter counted them.
    for (g, n) in made.iter().enumerate() {
        let point = c
            .data_points
            .iter()
            .find(|p| otlp::attr_int(&p.attributes, "cpython.gc.generation") == Some(g as i64));
        let counted = match point.and_then(|p| p.value) {
            Some(Value::AsInt(k)) => k,
            _ => 0,
        };
        assert_eq!(counted, *n, "generation {g}");
    }
    for name in ["cpython.gc.duration", "cpython.import.duration"] {
        let Some(Data::Histogram(h)) = last_of(name) else {
            panic!("{name} is not a histogram")
        };
        assert!(!h.data_points.is_empty(), "{name}");
        for p in &h.data_points {
            assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count, "{name}");
            assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1, "{name}");
            let (min, max, sum) = (p.min.unwrap(), p.max.unwrap(), p.sum.unwrap());
            assert!(min > 0.0 && min <= max, "{name}: min {min} max {max}");
            let n = p.count as f64;
            assert!(
                sum >= min * n * 0.999 && sum <= max * n * 1.001,
                "{name}: sum {sum}"
            );
        }
    }
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

/// Function probes under --metrics-only: each code location's first call comes as a record
/// carrying its names, the others are aggregated in the kernel under them; every call is in
/// cpython.function.calls and in the duration histogram, and no span is sent.
#[test]
fn function_calls_are_aggregated_in_the_kernel() {
    if !require_bpf("function_calls_are_aggregated_in_the_kernel") {
        return;
    }
    // On 3.15 the generator expression's creation fires an entry with no return.
    for interp in interpreters_with_entries("function metrics") {
        check_function_metrics(&interp);
    }
}

fn check_function_metrics(interp: &Interpreter) {
    const CALLS: i64 = 20_000;
    let script = format!(
        "def leaf(i):\n    return i\ndef work(n):\n    return sum(leaf(i) for i in range(n))\n\
         import threading\nts = [threading.Thread(target=work, args=({},)) for _ in range(2)]\n\
         [t.start() for t in ts]\n[t.join() for t in ts]\n",
        CALLS / 2
    );
    let receiver = otlp::http();
    let out = pyusdt()
        .args(["run", "--quiet", "--probes", "function", "--metrics-only"])
        .args(["--min-duration", "0", "--function-include", "leaf,work"])
        .args(["--otlp-endpoint", &receiver.endpoint])
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .arg("--")
        .arg(&interp.python)
        .args(["-c", &script])
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("calls dropped"), "{err}");
    let r = receiver.received();
    assert!(otlp::spans(&r).is_empty(), "spans under --metrics-only");
    let series = |metric: &str, function: &str| {
        otlp::metrics(&r)
            .into_iter()
            .filter(|m| m.item.name == metric)
            .filter_map(|m| m.item.data)
            .flat_map(|d| match d {
                Data::Sum(s) => s
                    .data_points
                    .into_iter()
                    .filter(|p| {
                        attr_str(&p.attributes, "code.function.name").as_deref() == Some(function)
                    })
                    .map(|p| match p.value {
                        Some(Value::AsInt(n)) => n,
                        _ => -1,
                    })
                    .collect::<Vec<_>>(),
                Data::Histogram(h) => h
                    .data_points
                    .into_iter()
                    .filter(|p| {
                        attr_str(&p.attributes, "code.function.name").as_deref() == Some(function)
                    })
                    .map(|p| p.count as i64)
                    .collect(),
                _ => vec![],
            })
            .next_back()
            .unwrap_or_else(|| panic!("no {metric} for {function}"))
    };
    assert_eq!(series("cpython.function.calls", "leaf"), CALLS);
    assert_eq!(series("cpython.function.duration", "leaf"), CALLS);
    assert_eq!(series("cpython.function.calls", "work"), 2);
}
