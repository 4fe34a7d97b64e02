//! Function spans over OTLP (--probes function) on an interpreter whose every call has an
//! entry (3.9): parent/child per thread, durations, --min-duration decided in the kernel, the
//! GC span under the call that ran it, and include/exclude globs.
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
    let Some(interp) = interpreters().into_iter().find(|i| i.minor <= 10) else {
        eprintln!(
            "NOTE: no CPython <= 3.10 built (scripts/python-matrix.sh): function spans not checked"
        );
        return;
    };
    let spans = spans_of(&interp, &[]);
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
    let spans = spans_of(&interp, &["--function-exclude", "inner"]);
    let outer = named(&spans, "outer")[0];
    assert!(named(&spans, "inner").is_empty());
    let gc = gc_within(&spans, outer);
    assert_eq!(gc.parent_span_id, outer.span_id);
    // Including only outer has the same effect.
    let spans = spans_of(&interp, &["--function-include", "outer"]);
    assert_eq!(named(&spans, "outer").len(), 1);
    assert!(named(&spans, "inner").is_empty() && named(&spans, "<module>").is_empty());
}
