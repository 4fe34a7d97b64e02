//! OTLP over TLS against receivers that speak it (gRPC with tonic, HTTP with rustls), with a
//! private CA made for the test: the collector's certificate is verified by default, so an
//! untrusted one delivers nothing and says how to fix it; trusting the CA through
//! OTEL_EXPORTER_OTLP_CERTIFICATE delivers everything. Headers reach the collector and never
//! pyusdt's own log, even at debug level.
mod common;

use std::path::Path;

use common::otlp;
use common::*;

const SECRET: &str = "pyusdt-test-secret-4f1c";

fn traced_run(receiver: &otlp::Receiver, ca: Option<&Path>, out: &Path) -> (bool, String) {
    let mut cmd = pyusdt();
    cmd.args(["run", "--quiet", "--flush-timeout", "3", "--output"])
        .arg(out)
        .args([
            "--otlp-endpoint",
            &receiver.endpoint,
            "--otlp-protocol",
            receiver.protocol,
        ])
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("authorization=Bearer {SECRET}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("PYUSDT_LOG", "debug")
        .args(["--", SYSTEM_PYTHON, "-c", "import json, gc; gc.collect()"]);
    if let Some(ca) = ca {
        cmd.env("OTEL_EXPORTER_OTLP_CERTIFICATE", ca);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), text(&out).1)
}

fn span_count(records: &[serde_json::Value]) -> u64 {
    span_records(records).len() as u64
}

#[test]
fn otlp_over_tls_verifies_the_collector_and_trusts_a_given_ca() {
    if !require_bpf("otlp_over_tls_verifies_the_collector_and_trusts_a_given_ca") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = common::tls::pki(dir.path());
    for make in [otlp::https, otlp::grpcs] {
        // Not trusted: the system roots do not know the test CA.
        let receiver = make(&pki);
        let out = dir.path().join("untrusted.jsonl");
        let (ok, stderr) = traced_run(&receiver, None, &out);
        assert!(
            ok,
            "tracing must not fail because the export does: {stderr}"
        );
        let records = read_jsonl(&out);
        assert!(span_count(&records) > 0, "the workload made no span");
        let e = &summary(&records)["export"];
        {
            let r = receiver.received();
            assert_eq!(
                otlp::item_counts(&r),
                [0, 0, 0],
                "{}: delivered to an untrusted collector",
                receiver.protocol
            );
        }
        assert_eq!(
            e["failed"][0].as_u64().unwrap() + e["dropped"][0].as_u64().unwrap(),
            span_count(&records),
            "{}: undelivered spans not counted",
            receiver.protocol
        );
        assert_eq!(
            e["retries"], 0,
            "{}: an untrusted certificate is not worth a retry",
            receiver.protocol
        );
        assert!(
            stderr.contains("not trusted") && stderr.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
            "{}: the error must name the problem and the fix: {stderr}",
            receiver.protocol
        );

        // Trusted through the CA file: everything arrives, with the header.
        let receiver = make(&pki);
        let out = dir.path().join("trusted.jsonl");
        let (ok, stderr) = traced_run(&receiver, Some(&pki.ca_file), &out);
        assert!(ok, "{stderr}");
        let records = read_jsonl(&out);
        let e = &summary(&records)["export"];
        let r = receiver.received();
        assert_eq!(
            otlp::spans(&r).len() as u64,
            span_count(&records),
            "{}: spans lost over TLS",
            receiver.protocol
        );
        assert_eq!(e["failed"], serde_json::json!([0, 0, 0]), "{stderr}");
        assert_eq!(
            r.headers.get("authorization").map(String::as_str),
            Some(format!("Bearer {SECRET}").as_str()),
            "{}: the header did not reach the collector",
            receiver.protocol
        );
        assert!(
            !stderr.contains(SECRET),
            "{}: a header value reached pyusdt's log: {stderr}",
            receiver.protocol
        );
    }
}

/// A host (or minimal image) without system CA certificates: OTLP/gRPC over TLS works with the
/// private CA alone, and without one pyusdt says what is missing before it traces anything.
#[test]
fn grpc_over_tls_without_system_roots() {
    if !require_bpf("grpc_over_tls_without_system_roots") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = common::tls::pki(dir.path());
    let empty = dir.path().join("no-roots");
    std::fs::create_dir(&empty).unwrap();
    let receiver = otlp::grpcs(&pki);
    let run = |ca: Option<&Path>| {
        let mut cmd = pyusdt();
        cmd.args(["run", "--quiet", "--flush-timeout", "3"])
            .args([
                "--otlp-endpoint",
                &receiver.endpoint,
                "--otlp-protocol",
                "grpc",
            ])
            // rustls-native-certs reads the system roots from these, when set.
            .env("SSL_CERT_FILE", dir.path().join("none.pem"))
            .env("SSL_CERT_DIR", &empty)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .args(["--", SYSTEM_PYTHON, "-c", "import json, gc; gc.collect()"]);
        if let Some(ca) = ca {
            cmd.env("OTEL_EXPORTER_OTLP_CERTIFICATE", ca);
        }
        cmd.output().unwrap()
    };
    let out = run(None);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no system CA certificates") && stderr.contains("ca-certificates"),
        "{stderr}"
    );
    let out = run(Some(&pki.ca_file));
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(
        !otlp::spans(&receiver.received()).is_empty(),
        "nothing delivered with the private CA alone"
    );
}
