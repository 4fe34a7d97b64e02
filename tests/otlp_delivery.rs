//! OTLP delivery: one agent speaking for several processes (one resource each), retries when
//! the receiver refuses, exact accounting of what could not be delivered, and the file
//! exporter's OTLP/JSON checked with the official protobuf JSON mapping.
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::otlp;
use common::*;

#[test]
fn agent_exports_each_process_under_its_own_resource() {
    if !require_bpf("agent_exports_each_process_under_its_own_resource") {
        return;
    }
    let receiver = otlp::http();
    let mut agent = Reaped(
        pyusdt()
            .args([
                "agent",
                "--rescan-interval",
                "0",
                "--otlp-endpoint",
                &receiver.endpoint,
            ])
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = stderr_lines(&mut agent.0);
    wait_for_line(&lines, "tracing ");

    let code = "import os, gc\ntry:\n    __import__(f'pyusdt_svc_{os.getpid()}')\nexcept ImportError:\n    pass\ngc.collect()\n";
    let kids: Vec<(u32, &str)> = ["shop-frontend", "shop-billing"]
        .into_iter()
        .map(|service| {
            let mut c = Command::new(SYSTEM_PYTHON)
                .args(["-c", code])
                .env("OTEL_SERVICE_NAME", service)
                .spawn()
                .unwrap();
            let pid = c.id();
            assert!(c.wait().unwrap().success());
            (pid, service)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // SIGTERM: the agent flushes what it holds before exiting.
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");

    let r = receiver.received();
    let spans = otlp::spans(&r);
    for (pid, service) in &kids {
        let probe = spans
            .iter()
            .find(|s| s.item.name == format!("import pyusdt_svc_{pid}"))
            .unwrap_or_else(|| panic!("span of process {pid} missing"));
        assert_eq!(probe.service, *service);
        assert_eq!(probe.pid, i64::from(*pid));
        // Nothing of this process under another resource, nothing of another under this one.
        for s in spans.iter().filter(|s| s.pid == i64::from(*pid)) {
            assert_eq!(s.service, *service);
        }
        let gcs = otlp::metrics(&r)
            .into_iter()
            .filter(|m| m.item.name == "cpython.gc.collections" && m.pid == i64::from(*pid))
            .collect::<Vec<_>>();
        assert!(!gcs.is_empty(), "no metrics under the resource of {pid}");
        assert!(gcs.iter().all(|m| m.service == *service));
    }
}

#[test]
fn refused_exports_are_retried_and_nothing_is_lost() {
    if !require_bpf("refused_exports_are_retried_and_nothing_is_lost") {
        return;
    }
    for receiver in [otlp::grpc(), otlp::http()] {
        receiver.refuse(3);
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("events.jsonl");
        let out = pyusdt()
            .args(["run", "--quiet", "--output"])
            .arg(&out_path)
            .args([
                "--otlp-endpoint",
                &receiver.endpoint,
                "--otlp-protocol",
                receiver.protocol,
            ])
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .args(["--", SYSTEM_PYTHON, "-c", "import json, gc; gc.collect()"])
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let records = read_jsonl(&out_path);
        let s = summary(&records);
        let spans_expected = span_records(&records).len();
        let r = receiver.received();
        assert_eq!(
            r.refused, 3,
            "{}: the receiver refused 3 exports",
            receiver.protocol
        );
        assert_eq!(
            otlp::spans(&r).len(),
            spans_expected,
            "{}: spans lost",
            receiver.protocol
        );
        assert!(s["export"]["retries"].as_u64().unwrap() >= 3);
        assert_eq!(s["export"]["failed"], serde_json::json!([0, 0, 0]));
        assert_eq!(s["export"]["dropped"], serde_json::json!([0, 0, 0]));
        // Every item pyusdt counts as exported arrived: spans, metric points, log records.
        assert_eq!(
            s["export"]["exported"],
            serde_json::json!(otlp::item_counts(&r)),
            "{}",
            receiver.protocol
        );
    }
}

#[test]
fn what_the_retry_budget_cannot_save_is_counted() {
    if !require_bpf("what_the_retry_budget_cannot_save_is_counted") {
        return;
    }
    let receiver = otlp::http();
    receiver.refuse(usize::MAX);
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("events.jsonl");
    let out = pyusdt()
        .args(["run", "--quiet", "--flush-timeout", "1", "--output"])
        .arg(&out_path)
        .args(["--otlp-endpoint", &receiver.endpoint])
        .args(["--", SYSTEM_PYTHON, "-c", "import json"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(
        out.status.success(),
        "tracing must not fail because the collector does: {stderr}"
    );
    let records = read_jsonl(&out_path);
    let s = summary(&records);
    let spans_expected = span_records(&records).len() as u64;
    let e = &s["export"];
    let (exported, failed, dropped) = (&e["exported"], &e["failed"], &e["dropped"]);
    assert_eq!(exported, &serde_json::json!([0, 0, 0]));
    assert_eq!(
        failed[0].as_u64().unwrap() + dropped[0].as_u64().unwrap(),
        spans_expected
    );
    assert!(
        failed[1].as_u64().unwrap() > 0,
        "metric points not counted as failed"
    );
    assert!(
        stderr.contains("last error") && stderr.contains("503"),
        "{stderr}"
    );
}

#[test]
fn file_exporter_writes_otlp_json_that_protobuf_parses() {
    if !require_bpf("file_exporter_writes_otlp_json_that_protobuf_parses") {
        return;
    }
    let venv_python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/otlp-venv/bin/python");
    if !venv_python.exists() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "target/otlp-venv missing: scripts/setup.sh creates it"
        );
        eprintln!("SKIPPED: target/otlp-venv missing (scripts/setup.sh --deps-only creates it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otlp.jsonl");
    let out = pyusdt()
        .args([
            "run",
            "--probes",
            "gc,import,audit",
            "--exporter",
            "file",
            "--otlp-file",
        ])
        .arg(&file)
        .args(["--", SYSTEM_PYTHON, "-c", "import json, gc; gc.collect()"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let check = Command::new(&venv_python)
        .arg(workload("check_otlp_json.py"))
        .arg(&file)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&check);
    assert!(check.status.success(), "{stdout}{stderr}");
    // One line per request, each signal present.
    for signal in ["traces", "metrics", "logs"] {
        assert!(stdout.contains(&format!("{signal}: ")), "{stdout}");
    }
}

#[test]
fn audit_arguments_are_decoded_only_when_asked() {
    if !require_bpf("audit_arguments_are_decoded_only_when_asked") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("written-by-the-workload.txt");
    let target = target.to_str().unwrap();
    // Every string exported, resources included, for the redaction checks.
    let everything = std::cell::RefCell::new(String::new());
    let run = |extra: &[&str]| {
        let receiver = otlp::http();
        let out = pyusdt()
            .args(["run", "--quiet", "--probes", "gc,import,audit"])
            .args(extra)
            .args(["--audit-logs", "open,os.system,subprocess.Popen,compile"])
            .args(["--otlp-endpoint", &receiver.endpoint])
            .args(["--", SYSTEM_PYTHON])
            .arg(workload("audit_args.py"))
            .arg(target)
            .arg("--token=s3cr3t-tok")
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let r = receiver.received();
        everything.replace(format!("{:?}{stdout}{stderr}", *r));
        otlp::logs(&r)
            .into_iter()
            .map(|l| {
                l.item
                    .attributes
                    .iter()
                    .filter_map(|kv| {
                        Some((kv.key.clone(), otlp::attr_str(&l.item.attributes, &kv.key)?))
                    })
                    .collect::<Vec<(String, String)>>()
            })
            .collect::<Vec<_>>()
    };
    let has = |records: &[Vec<(String, String)>], event: &str, args: &[&str]| {
        records.iter().any(|attrs| {
            let get = |k: &str| {
                attrs
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            };
            get("cpython.audit.event") == Some(event)
                && args
                    .iter()
                    .enumerate()
                    .all(|(i, a)| get(&format!("cpython.audit.arg.{i}")) == Some(a))
        })
    };
    let with = run(&["--audit-args", "--resource-command-line"]);
    // Secrets in arguments and command lines are redacted, everywhere: log attributes,
    // resources, the summary.
    assert!(has(&with, "os.system", &["b'true --password=<redacted>'"]));
    let all = everything.borrow().clone();
    assert!(
        !all.contains("hunter2") && !all.contains("s3cr3t-tok"),
        "a secret leaked"
    );
    assert!(
        all.contains("--token=<redacted>"),
        "the command line is exported, redacted"
    );
    assert!(
        has(&with, "open", &[target, "w"]),
        "open(path, 'w') not decoded"
    );
    assert!(has(&with, "os.system", &["b'true'"]));
    assert!(has(&with, "subprocess.Popen", &["/bin/true", "<list>"]));
    assert!(has(&with, "compile", &["b'1+1'", "<pyusdt-test>"]));

    let without = run(&[]);
    assert!(
        has(&without, "open", &[]),
        "log records are there without --audit-args"
    );
    assert!(
        without
            .iter()
            .flatten()
            .all(|(k, _)| !k.starts_with("cpython.audit.arg.")),
        "arguments exported without --audit-args"
    );
}
