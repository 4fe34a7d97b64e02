//! In Kubernetes the agent's pod has a UTS namespace of its own, so the kernel's hostname is the
//! pod's (`pyusdt-x7k2p`), not the node's. With K8S_NODE_NAME set (the DaemonSet passes
//! `spec.nodeName` through the downward API), `host.name` and `k8s.node.name` are the node's
//! name on the agent's own resource and on each traced process's.
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const NODE: &str = "node-7.pool-a.example.internal";

/// The value of label `name` in a sample line (values here need no unescaping).
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    line[start..].split('"').next()
}

#[test]
fn host_name_and_node_name_are_the_nodes() {
    if !require_bpf("host_name_and_node_name_are_the_nodes") {
        return;
    }
    let mut agent = Reaped(
        pyusdt_on_fresh_host()
            .args(["agent", "--probes", "gc", "--exporter", "file"])
            .args([
                "--otlp-file",
                "/dev/null",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .env("K8S_NODE_NAME", NODE)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = stderr_lines(&mut agent.0);
    let line = wait_for_line(&log, "serving /metrics and /healthz on http://");
    let addr = line.rsplit("http://").next().unwrap().trim().to_string();
    wait_for_line(&log, "tracing ");

    // Collects, then waits on stdin so that its series stay while /metrics is read.
    let python = Reaped(
        Command::new("/usr/bin/python3.11")
            .args(["-c", "import gc, sys; gc.collect(); sys.stdin.read()"])
            .env("OTEL_SERVICE_NAME", "node-name-test")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = python.0.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (traced, own) = loop {
        let body = metrics_body(&addr);
        let traced = body
            .lines()
            .find(|l| {
                l.starts_with("cpython_gc_collections_total{")
                    && label(l, "process_pid") == Some(pid.as_str())
            })
            .map(str::to_string);
        let own = body
            .lines()
            .find(|l| l.starts_with("pyusdt_events_received_total{"))
            .map(str::to_string);
        if let (Some(t), Some(o)) = (traced, own) {
            break (t, o);
        }
        assert!(
            Instant::now() < deadline,
            "no GC series of pid {pid} in /metrics after 20 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(python);

    let kernel_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(
        kernel_hostname.trim(),
        NODE,
        "the test needs another hostname"
    );
    for (what, line) in [("traced process", &traced), ("agent", &own)] {
        assert_eq!(label(line, "host_name"), Some(NODE), "{what}: {line}");
        assert_eq!(label(line, "k8s_node_name"), Some(NODE), "{what}: {line}");
    }
    stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(20));
}
