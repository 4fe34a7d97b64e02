//! `--metrics-listen`: `/metrics` in the Prometheus text format (valid for `promtool check
//! metrics`, named as deploy/'s dashboard and alerts expect) with the same counts as the
//! agent's own event stream, `/healthz` for a liveness probe, nothing else answered.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

/// (status line, body) of one HTTP request.
fn request(addr: &str, method: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn agent_serves_prometheus_metrics_and_health() {
    if !require_bpf("agent_serves_prometheus_metrics_and_health") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("agent.jsonl");
    let (mut agent, log) = start_agent(&[
        "--quiet",
        "--metrics-listen",
        "127.0.0.1:0",
        "--output",
        out_path.to_str().unwrap(),
    ]);
    let line = wait_for_line(&log, "serving /metrics and /healthz on http://");
    let addr = line.rsplit("http://").next().unwrap().trim().to_string();
    wait_for_line(&log, "tracing ");

    let workload = Command::new(SYSTEM_PYTHON)
        .args(["-c", "import gc\nfor _ in range(5): gc.collect()"])
        .env("OTEL_SERVICE_NAME", "metrics-endpoint-test")
        .status()
        .unwrap();
    assert!(workload.success());
    // Published once a second.
    std::thread::sleep(Duration::from_millis(2500));
    let (status, body) = request(&addr, "GET", "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(request(&addr, "GET", "/healthz").0, "HTTP/1.1 200 OK");
    assert_eq!(request(&addr, "GET", "/nope").0, "HTTP/1.1 404 Not Found");
    assert_eq!(
        request(&addr, "POST", "/metrics").0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status:?}");

    // The exposition is valid, as Prometheus's own linter reads it.
    promtool_check(&body);

    // The gen-2 collections of the process, as /metrics counts them and as the event stream
    // saw them: the same (5 explicit ones, and the one at interpreter exit).
    let records = read_jsonl(&out_path);
    let pid = records
        .iter()
        .find(|r| r["type"] == "gc" && r["generation"] == 2)
        .map(|r| r["pid"].as_u64().unwrap())
        .expect("the workload's collections");
    let events = records
        .iter()
        .filter(|r| r["type"] == "gc" && r["generation"] == 2 && r["pid"] == pid)
        .count();
    assert!(events >= 5, "{events} gen-2 collections seen");
    let series = body
        .lines()
        .find(|l| {
            l.starts_with("cpython_gc_collections_total{")
                && l.contains("service_name=\"metrics-endpoint-test\"")
                && l.contains(&format!("process_pid=\"{pid}\""))
                && l.contains("cpython_gc_generation=\"2\"")
        })
        .unwrap_or_else(|| panic!("no gen-2 series for PID {pid}:\n{body}"));
    let value: usize = series.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, events, "{series}");
    // What the dashboard and alerts query is there.
    for name in [
        "cpython_gc_duration_seconds_bucket{",
        "cpython_import_duration_seconds_count{",
        "pyusdt_events_dropped_total{",
    ] {
        assert!(body.contains(name), "{name} in /metrics");
    }
}

/// The listening TCP sockets of a process: (local address as /proc/net/tcp* writes it, port).
fn listening_sockets(pid: u32) -> Vec<(String, u16)> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A: LISTEN), inode.
            if f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let (ip, port) = f[1].split_once(':').unwrap();
                found.push((ip.to_string(), u16::from_str_radix(port, 16).unwrap()));
            }
        }
    }
    found
}

/// Without --metrics-listen the agent listens nowhere; with a bare port, on loopback only.
#[test]
fn the_agent_listens_only_where_told() {
    if !require_bpf("the_agent_listens_only_where_told") {
        return;
    }
    let (mut quiet, log) = start_agent(&["--quiet"]);
    wait_for_line(&log, "tracing ");
    assert_eq!(
        listening_sockets(quiet.0.id()),
        vec![],
        "a listening socket nobody asked for"
    );
    stop(&mut quiet.0, libc::SIGTERM, Duration::from_secs(10));

    let (mut serving, log) = start_agent(&["--quiet", "--metrics-listen", "0"]);
    let line = wait_for_line(&log, "serving /metrics and /healthz on http://");
    wait_for_line(&log, "tracing ");
    let port: u16 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    // 0100007F: 127.0.0.1 in /proc/net/tcp's byte order.
    assert_eq!(
        listening_sockets(serving.0.id()),
        vec![("0100007F".to_string(), port)],
        "{line}"
    );
    stop(&mut serving.0, libc::SIGTERM, Duration::from_secs(10));
}
