//! Function spans over OTLP (--probes function) on the interpreters whose every call has an
//! entry (3.9, 3.15) and on Debian's 3.11 in line mode: parent/child per thread, durations,
//! --min-duration decided in the kernel, the GC span under the call that ran it, and
//! include/exclude globs. And the overhead budget: a call-heavy process is sampled, and its
//! spans and metrics say so.
mod common;

use common::otlp::{self, attr_int, attr_str};
use common::*;
use opentelemetry_proto::tonic::trace::v1::Span;

fn spans_of(interp: &Interpreter, extra: &[&str]) -> Vec<Span> {
    let receiver = otlp::http();
    let out = pyusdt()
        .args([
            "run",
            "--quiet",
            "--probes",
            "gc,function",
            "--min-duration",
            "5ms",
        ])
        .args(extra)
        .args(["--otlp-endpoint", &receiver.endpoint])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .arg("--")
        .arg(&interp.python)
        .arg(workload("sleepy.py"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let r = receiver.received();
    otlp::spans(&r).into_iter().map(|s| s.item).collect()
}

/// The GC span that ran within `call` (the whole script is one trace under `<module>`).
fn gc_within<'a>(spans: &'a [Span], call: &Span) -> &'a Span {
    spans
        .iter()
        .find(|s| {
            s.name == "gc.collect"
                && s.start_time_unix_nano >= call.start_time_unix_nano
                && s.end_time_unix_nano <= call.end_time_unix_nano
        })
        .unwrap_or_else(|| panic!("no GC span within {}", call.name))
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[test]
fn function_spans_nest_and_time_calls() {
    if !require_bpf("function_spans_nest_and_time_calls") {
        return;
    }
    // 3.9, and 3.15 where the function markers are back.
    for interp in interpreters_with_entries("function spans") {
        check_spans(&interp, &[]);
    }
}

/// 3.11 fires function__entry only on its tracing path: --line-mode turns it on for the traced
/// process, and the spans are then as exact as on 3.9.
#[test]
fn function_spans_in_line_mode_on_3_11() {
    if !require_bpf("function_spans_in_line_mode_on_3_11") {
        return;
    }
    let interp = interpreters()
        .into_iter()
        .find(|i| i.minor == 11)
        .expect("Debian's python3.11");
    check_spans(&interp, &["--line-mode"]);

    // Without --line-mode, 3.11 gives no function spans, and says why.
    let out = pyusdt()
        .args(["run", "--quiet", "--probes", "function", "--"])
        .arg(&interp.python)
        .arg(workload("sleepy.py"))
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success(), "nothing to attach: {err}");
    assert!(err.contains("--line-mode makes entries fire"), "{err}");
}

fn check_spans(interp: &Interpreter, mode: &[&str]) {
    let spans = spans_of(interp, mode);
    let (outer, inner) = (named(&spans, "outer"), named(&spans, "inner"));
    assert_eq!(
        (outer.len(), inner.len()),
        (1, 1),
        "one span per call of outer and inner"
    );
    let (outer, inner) = (outer[0], inner[0]);
    assert!(
        named(&spans, "quick").is_empty(),
        "quick is shorter than --min-duration"
    );
    assert_eq!(inner.parent_span_id, outer.span_id);
    assert_eq!(inner.trace_id, outer.trace_id);
    let ms = |s: &Span| (s.end_time_unix_nano - s.start_time_unix_nano) as f64 / 1e6;
    // Sleeps overshoot a little on a busy machine: bounds that catch wrong pairing, not jitter.
    assert!(
        (20.0..32.0).contains(&ms(inner)),
        "inner took {} ms",
        ms(inner)
    );
    assert!(
        (30.0..48.0).contains(&ms(outer)),
        "outer took {} ms",
        ms(outer)
    );
    let a = &inner.attributes;
    assert_eq!(attr_str(a, "code.function.name").as_deref(), Some("inner"));
    assert!(attr_str(a, "code.file.path")
        .unwrap()
        .ends_with("sleepy.py"));
    assert_eq!(attr_int(a, "code.line.number"), Some(9), "the def line");
    // gc.collect() inside inner: its GC span is a child of inner's span.
    let gc = gc_within(&spans, outer);
    assert_eq!(gc.parent_span_id, inner.span_id);

    // A GC in a short, unreported call hangs under the enclosing reported call, not under the
    // reported sibling that ends after it.
    let case = named(&spans, "sibling_case")[0];
    let sibling = named(&spans, "slow_sibling")[0];
    assert!(
        named(&spans, "short_with_gc").is_empty(),
        "short_with_gc is below --min-duration"
    );
    assert_eq!(sibling.parent_span_id, case.span_id);
    let young = gc_within(&spans, case);
    assert_eq!(young.parent_span_id, case.span_id);

    // Excluding inner: its GC span moves up to the nearest reported call.
    let spans = spans_of(interp, &[mode, &["--function-exclude", "inner"]].concat());
    let outer = named(&spans, "outer")[0];
    assert!(named(&spans, "inner").is_empty());
    let gc = gc_within(&spans, outer);
    assert_eq!(gc.parent_span_id, outer.span_id);
    // Including only outer has the same effect.
    let spans = spans_of(interp, &[mode, &["--function-include", "outer"]].concat());
    assert_eq!(named(&spans, "outer").len(), 1);
    assert!(named(&spans, "inner").is_empty() && named(&spans, "<module>").is_empty());
}

/// A call-heavy process whose function probes would cost it far more than --max-overhead is
/// sampled: probes on for a small share of the time, spans marked with the sampling ratio, the
/// ratio and observed time exported as metrics, the summary saying how much was seen.
#[test]
fn overhead_budget_samples_call_heavy_processes() {
    if !require_bpf("overhead_budget_samples_call_heavy_processes") {
        return;
    }
    let Some(interp) = interpreter_with_entries("budget") else {
        return;
    };
    let receiver = otlp::http();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("out.jsonl");
    let bench = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/call_heavy.py");
    let out = pyusdt()
        .args([
            "run",
            "--quiet",
            "--probes",
            "function",
            "--max-overhead",
            "5",
        ])
        .args(["--otlp-endpoint", &receiver.endpoint, "-o"])
        .arg(&jsonl)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .arg("--")
        .arg(&interp.python)
        .arg(&bench)
        .arg("3")
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("sampled to stay within --max-overhead"),
        "{err}"
    );

    let records = read_jsonl(&jsonl);
    let probes = &summary(&records)["processes"][0]["function_probes"];
    let observed = probes["observed_share"].as_f64().unwrap();
    let ratio = probes["sampling_ratio"].as_f64().unwrap();
    // fib under function probes spends most of its time in them: a 5 % budget leaves the
    // probes on for a small share of the run.
    assert!(
        observed > 0.0 && observed < 0.3,
        "observed share {observed}"
    );
    assert!(ratio > 0.0 && ratio < 0.2, "sampling ratio {ratio}");
    assert_eq!(probes["markers"], "entry+return");

    let r = receiver.received();
    let fib: Vec<_> = otlp::spans(&r)
        .into_iter()
        .filter(|s| s.item.name == "fib")
        .collect();
    // Calls before the first measurement (the first 100 ms) were seen unsampled; those of
    // the sampling windows carry the ratio.
    let sampled = fib
        .iter()
        .filter(|s| otlp::attr(&s.item.attributes, "pyusdt.sampling.ratio").is_some())
        .count();
    assert!(
        sampled > 0,
        "{} fib spans, none marked as sampled",
        fib.len()
    );
    let names: Vec<String> = otlp::metrics(&r).into_iter().map(|m| m.item.name).collect();
    for n in [
        "pyusdt.function.sampling.ratio",
        "pyusdt.function.observed_time",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
}
