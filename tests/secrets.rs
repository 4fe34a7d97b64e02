//! Secrets: OTLP headers (API keys) are warned about when they would cross the network in
//! clear text.
mod common;

use common::otlp;
use common::*;

const CLEAR_TEXT_WARNING: &str = "would be sent unencrypted over http://";

/// `pyusdt run` of an empty Python program with OTLP headers holding `canary`; its stderr.
fn run_with_headers(endpoint: &str, protocol: &str, canary: &str) -> String {
    let out = pyusdt()
        .args([
            "run",
            "-q",
            "--flush-timeout",
            "1",
            "--otlp-endpoint",
            endpoint,
        ])
        .args(["--otlp-protocol", protocol])
        .env("OTEL_EXPORTER_OTLP_HEADERS", format!("api-key={canary}"))
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .args(["--", SYSTEM_PYTHON, "-c", "import json"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!stdout.contains(canary), "{stdout}");
    stderr
}

/// Headers for a collector on another host over http:// give one warning at start, naming
/// the header and the host but not the value. A collector on the loopback interface gets no
/// warning, and the header is sent all the same.
#[test]
fn otlp_headers_over_plain_http_to_another_host_are_warned_of_once() {
    if !require_bpf("otlp_headers_over_plain_http_to_another_host_are_warned_of_once") {
        return;
    }
    let canary = format!("canary-{}", std::process::id());
    // TEST-NET-1: not this host, never answers; the flush gives up after a second.
    let stderr = run_with_headers("http://192.0.2.1:4318", "http/protobuf", &canary);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(CLEAR_TEXT_WARNING))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("WARN"), "{stderr}");
    assert!(
        warnings[0].contains("(api-key)") && warnings[0].contains("192.0.2.1:4318"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&canary),
        "the header's value was printed: {stderr}"
    );

    let receiver = otlp::grpc();
    let stderr = run_with_headers(&receiver.endpoint, receiver.protocol, &canary);
    assert!(!stderr.contains(CLEAR_TEXT_WARNING), "{stderr}");
    assert!(!stderr.contains(&canary), "{stderr}");
    assert_eq!(
        receiver.received().headers.get("api-key"),
        Some(&canary),
        "the loopback collector got the header: {stderr}"
    );
}
