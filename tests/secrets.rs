//! Secrets: OTLP headers (API keys) are never printed and are warned about when they would
//! cross the network in clear text; a traced process's environment variables other than
//! `OTEL_*` (AWS keys, tokens) never leave it.
mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

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

/// A process with a secret in its environment (and 20 KiB of other variables before its
/// OTEL_* ones, beyond what a fixed window of the environment would reach) is traced by the
/// agent with JSON lines and the OTLP file exporter: the secret appears nowhere in pyusdt's
/// output, the BPF side copied exactly the process's OTEL_SERVICE_NAME entry (its debug line
/// names what arrived, and how many bytes), and that service name is on the process's
/// resource.
#[test]
fn environment_secrets_never_reach_the_output() {
    if !require_bpf("environment_secrets_never_reach_the_output") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("agent.jsonl");
    let otlp_file = dir.path().join("otlp.jsonl");
    let mut agent = Reaped(
        pyusdt()
            .env("PYUSDT_LOG", "debug")
            .args(["agent", "--quiet", "--output", jsonl.to_str().unwrap()])
            .args([
                "--exporter",
                "file",
                "--otlp-file",
                otlp_file.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = agent.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let log = stderr_lines(&mut agent.0);
    wait_for_line(&log, "tracing ");

    let canary = format!("canary-{}-AKIAIOSFODNN7", std::process::id());
    let service = "secrets-test";
    let python = Command::new(SYSTEM_PYTHON)
        .env_clear()
        // Command sorts the environment by name: AWS_…, BULK_…, then OTEL_SERVICE_NAME.
        .env("AWS_SECRET_ACCESS_KEY", &canary)
        .env("BULK_0", "x".repeat(10_000))
        .env("BULK_1", "y".repeat(10_000))
        .env("OTEL_SERVICE_NAME", service)
        .args([
            "-c",
            "import gc, os\ngc.disable()\nfor _ in range(3):\n    gc.collect()\nos._exit(0)\n",
        ])
        .status()
        .unwrap();
    assert!(python.success());
    std::thread::sleep(Duration::from_millis(300)); // a drain interval or two
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status:?}");
    let stderr: Vec<String> = log.iter().collect();
    let stdout = reader.join().unwrap();

    // The process's record: only its OTEL_* entry came, whole.
    let records = read_jsonl(&jsonl);
    let pid = records
        .iter()
        .filter(|r| r["type"] == "gc" && r["generation"] == 2)
        .map(|r| r["pid"].as_u64().unwrap())
        .find(|&pid| {
            stderr
                .iter()
                .any(|l| l.contains(&format!("process {pid}: ")) && l.contains("OTEL_SERVICE_NAME"))
        })
        .unwrap_or_else(|| panic!("the process was not described: {stderr:#?}"));
    let described = stderr
        .iter()
        .find(|l| l.contains(&format!("process {pid}: ")))
        .unwrap();
    let entry = format!("OTEL_SERVICE_NAME={service}\0");
    assert!(
        described.ends_with(&format!(
            "process {pid}: {} bytes of environment copied: OTEL_SERVICE_NAME",
            entry.len()
        )),
        "{described}"
    );
    let collections = records
        .iter()
        .filter(|r| r["type"] == "gc" && r["pid"] == pid && r["generation"] == 2)
        .count();
    assert_eq!(collections, 3, "gen-2 collections of PID {pid}");

    // service.name still comes from the process's own OTEL_SERVICE_NAME.
    let exported = std::fs::read_to_string(&otlp_file).unwrap();
    assert!(
        exported.contains(&format!("\"stringValue\":\"{service}\"")),
        "no resource with service.name {service} in the OTLP file"
    );
    for (what, text) in [
        ("stdout", stdout),
        ("stderr", stderr.join("\n")),
        ("--output", std::fs::read_to_string(&jsonl).unwrap()),
        ("--otlp-file", exported),
    ] {
        assert!(
            !text.contains(&canary),
            "the secret is in the agent's {what}"
        );
        assert!(
            !text.contains(&"x".repeat(100)),
            "another variable is in {what}"
        );
    }
}
