//! A traced process chooses its own OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, which
//! become labels of every `/metrics` series and attributes of its OTLP resource. A hostile one
//! (10,000 attributes, a huge environment, `le`, `process.pid`, `host.name`, `k8s.*`, label
//! names Prometheus cannot take) must not break the exposition, spoof what pyusdt derives, or
//! grow without bound; what is refused is counted; and a well-behaved process alongside is still
//! traced in full.
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::otlp;
use common::*;

/// The label names and values of a sample line (`name{a="1",b="2"} value`), as the text
/// format defines them; panics on a malformed line.
fn sample_labels(line: &str) -> Vec<(String, String)> {
    let Some(open) = line.find('{') else {
        return Vec::new();
    };
    let mut labels = Vec::new();
    let mut rest = &line[open + 1..];
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            assert!(after.starts_with(' '), "no value after labels: {line}");
            return labels;
        }
        rest = rest.strip_prefix(',').unwrap_or(rest);
        let eq = rest
            .find("=\"")
            .unwrap_or_else(|| panic!("bad label in {line}"));
        let name = &rest[..eq];
        assert!(
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "invalid label name {name:?} in {line}"
        );
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated value in {line}"),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[eq + 2 + end + 1..];
    }
}

/// A sample's value by metric name and label subset.
fn sample(body: &str, name: &str, with: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            let labels = sample_labels(l);
            with.iter()
                .all(|(k, v)| labels.iter().any(|(n, x)| n == k && x == v))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

#[test]
fn a_hostile_environment_cannot_break_metrics_or_spoof_the_resource() {
    if !require_bpf("a_hostile_environment_cannot_break_metrics_or_spoof_the_resource") {
        return;
    }
    let receiver = otlp::http();
    let (mut agent, log) = start_agent(&[
        "--quiet",
        "--rescan-interval",
        "0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--otlp-endpoint",
        &receiver.endpoint,
    ]);
    let line = wait_for_line(&log, "serving /metrics and /healthz on http://");
    let addr = line.rsplit("http://").next().unwrap().trim().to_string();
    wait_for_line(&log, "tracing ");

    // Spoofs and reserved names first (within the 4 KiB read), then 10,000 more attributes.
    let mut attributes = vec![
        "le=x",
        "quantile=0.5",
        "__name__=evil",
        "job=evil",
        "process.pid=1",
        "process_pid=1",
        "host.name=evil",
        "k8s.pod.name=x",
        "container.id=evil",
        "cpython.gc.generation=9",
        "bad key{}\"\\=sanitized",
        "newline=v%0Aw",
        "team=ok",
        "9lives=digit",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    attributes.extend((0..10_000).map(|i| format!("a{i}=v")));
    let hostile_attributes = attributes.join(",");
    let hostile = Command::new(SYSTEM_PYTHON)
        .args([
            "-c",
            "import gc, sys\nfor _ in range(3): gc.collect()\nsys.stdin.read()",
        ])
        .env("OTEL_SERVICE_NAME", "hostile-env")
        .env("OTEL_RESOURCE_ATTRIBUTES", &hostile_attributes)
        // A huge environment: the BPF side's copy is cut, /proc/PID/environ is read.
        .env("PYUSDT_TEST_FILLER", "x".repeat(120 * 1024))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let hostile = Reaped(hostile);
    let hostile_pid = hostile.0.id();

    // A well-behaved process alongside: its explicit collections are all reported.
    let good = Command::new(SYSTEM_PYTHON)
        .args([
            "-c",
            "import gc, sys\nfor _ in range(5): gc.collect()\nsys.stdin.read()",
        ])
        .env("OTEL_SERVICE_NAME", "well-behaved")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let good = Reaped(good);
    let good_pid = good.0.id().to_string();

    // Published once a second; wait for both processes' series.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = metrics_body(&addr);
        let gen2 = |service: &str| {
            sample(
                &body,
                "cpython_gc_collections_total",
                &[("service_name", service), ("cpython_gc_generation", "2")],
            )
        };
        if gen2("hostile-env").is_some_and(|v| v >= 3.0)
            && gen2("well-behaved").is_some_and(|v| v >= 5.0)
        {
            break body;
        }
        assert!(Instant::now() < deadline, "series never appeared:\n{body}");
        std::thread::sleep(Duration::from_millis(300));
    };

    // Well-formed: every sample line parses, no label twice, `le` only on buckets.
    promtool_check(&body);
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let labels = sample_labels(line);
        let mut names: Vec<&str> = labels.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a label twice: {line}");
        let les = labels.iter().filter(|(n, _)| n == "le").count();
        let bucket = line.split('{').next().unwrap().ends_with("_bucket");
        assert_eq!(les, usize::from(bucket), "{line}");
        for (n, v) in &labels {
            assert!(!n.starts_with("__"), "{line}");
            assert!(
                !["job", "instance", "quantile"].contains(&n.as_str()),
                "{line}"
            );
            assert_ne!(v, "evil", "{line}");
        }
    }

    // The hostile process's series: pyusdt's values win, the spoofs are gone, its own
    // harmless attributes stay, and at most 32 of them.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let series = body
        .lines()
        .find(|l| {
            l.starts_with("cpython_gc_collections_total{")
                && l.contains("\"hostile-env\"")
                && l.contains("cpython_gc_generation=\"2\"")
        })
        .unwrap();
    let labels = sample_labels(series);
    let value = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(value("process_pid"), Some(hostile_pid.to_string().as_str()));
    assert_eq!(value("host_name"), Some(host.trim()));
    assert_eq!(value("k8s_pod_name"), None);
    assert_ne!(value("container_id"), Some("evil"));
    assert_eq!(value("bad_key____"), Some("sanitized"));
    assert_eq!(value("cpython_gc_generation"), Some("2"));
    assert_eq!(value("team"), Some("ok"));
    assert_eq!(value("_9lives"), Some("digit"));
    let from_env = labels
        .iter()
        .filter(|(n, _)| n == "team" || n == "_9lives" || n == "bad_key____" || n.starts_with('a'))
        .count();
    assert!(from_env <= 32, "{from_env} attributes from the environment");

    // Counted: too many, too long (the variable's tail), reserved, invalid.
    let refused = |reason: &str| {
        sample(
            &body,
            "pyusdt_resource_attributes_refused_total",
            &[("reason", reason)],
        )
        .unwrap_or_else(|| panic!("no refused count for {reason}:\n{body}"))
    };
    assert!(refused("reserved") >= 10.0, "{}", refused("reserved"));
    assert!(refused("invalid") >= 1.0);
    assert!(refused("too_many") >= 1.0);
    assert!(refused("too_long") >= 1.0);

    // The well-behaved process: every explicit collection reported.
    let good_gen2 = sample(
        &body,
        "cpython_gc_collections_total",
        &[("process_pid", &good_pid), ("cpython_gc_generation", "2")],
    )
    .unwrap();
    assert!(good_gen2 >= 5.0, "{good_gen2}");

    drop(hostile);
    drop(good);
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");

    // The OTLP resource holds the same bounded set.
    let r = receiver.received();
    let metrics = otlp::metrics(&r);
    let resource = &metrics
        .iter()
        .find(|m| m.service == "hostile-env")
        .expect("the hostile process's metrics")
        .resource;
    let a = &resource.attributes;
    assert_eq!(
        otlp::attr_int(a, "process.pid"),
        Some(i64::from(hostile_pid))
    );
    assert_eq!(otlp::attr_str(a, "host.name").as_deref(), Some(host.trim()));
    for spoofed in [
        "k8s.pod.name",
        "le",
        "__name__",
        "job",
        "cpython.gc.generation",
    ] {
        assert_eq!(otlp::attr(a, spoofed), None, "{spoofed}");
    }
    assert_eq!(otlp::attr_str(a, "team").as_deref(), Some("ok"));
    let keys: Vec<&str> = a.iter().map(|kv| kv.key.as_str()).collect();
    let mut unique = keys.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "{keys:?}");
    // service.name, process.*, host.name (and container.id where the test runs in one),
    // and at most 32 of its own.
    assert!(a.len() <= 32 + 8, "{} attributes: {keys:?}", a.len());
}
