//! Nothing lost silently at the edges: process descriptions and exec records the ring buffer
//! had no room for are counted and exported, as are undecodable records; at shutdown the
//! probes are detached before the flush; and an export request in flight at shutdown is cut
//! at the flush deadline, its items counted as failed.
mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The value of the sample `name{…}` whose labels include all of `with` (exactly the
/// `key="value"` text).
fn sample(body: &str, name: &str, with: &[&str]) -> Option<u64> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| with.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; the PID is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

#[test]
fn lost_process_and_exec_records_are_counted_and_exported() {
    if !require_bpf("lost_process_and_exec_records_are_counted_and_exported") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("agent.jsonl");
    let (mut agent, log) = start_agent(&[
        "--quiet",
        "--rescan-interval",
        "0",
        "--ring-buffer-size",
        "64K",
        "--metrics-listen",
        "127.0.0.1:0",
        "--output",
        out.to_str().unwrap(),
    ]);
    let line = wait_for_line(&log, "serving /metrics and /healthz on http://");
    let addr = line.rsplit("http://").next().unwrap().trim().to_string();
    wait_for_line(&log, "tracing ");

    // With the agent stopped nothing is read: a flood of collections fills the ring buffer,
    // then a new process's description and the exec records of a shell loop find no room.
    signal(agent.0.id(), libc::SIGSTOP);
    let fill = Command::new(SYSTEM_PYTHON)
        .args(["-c", "import gc\nfor _ in range(20000): gc.collect(0)"])
        .status()
        .unwrap();
    let late = Command::new("sh")
        .args([
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done; \
             exec /usr/bin/python3.11 -c 'import gc; gc.collect()'",
        ])
        .status()
        .unwrap();
    signal(agent.0.id(), libc::SIGCONT);
    assert!(fill.success() && late.success());

    // Published once a second.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = metrics_body(&addr);
        let lost = |record: &str| {
            sample(
                &body,
                "pyusdt_events_dropped_total",
                &[
                    &format!("pyusdt_record=\"{record}\""),
                    "reason=\"ring_buffer_full\"",
                ],
            )
        };
        if lost("process").is_some_and(|n| n >= 1) && lost("exec").is_some_and(|n| n >= 1) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "lost records never counted:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // The gc events lost meanwhile are counted as before, and undecodable records (none
    // here: a layout mismatch would be a bug) have their own series.
    assert!(sample(
        &body,
        "pyusdt_events_dropped_total",
        &["cpython_marker=\"gc\""]
    )
    .is_some_and(|n| n > 0));
    assert_eq!(
        sample(
            &body,
            "pyusdt_events_dropped_total",
            &["reason=\"undecodable\""]
        ),
        Some(0),
        "{body}"
    );
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    // The JSON summary has them too.
    let records = read_jsonl(&out);
    let lost = &summary(&records)["records_dropped"];
    assert!(lost["process"].as_u64().unwrap() >= 1, "{lost}");
    assert!(lost["exec"].as_u64().unwrap() >= 1, "{lost}");
}

/// Uprobes a process holds: its BPF links of uprobe type (uprobe_multi, or perf-event uprobes
/// on kernels without it), from /proc/PID/fdinfo.
fn uprobe_links(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|e| {
        let e = e.ok()?;
        let target = std::fs::read_link(e.path()).ok()?;
        if !target.to_string_lossy().contains("bpf_link") {
            return None;
        }
        std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .ok()
    })
    .filter(|info| {
        info.contains("link_type:\tuprobe_multi")
            || (info.contains("link_type:\tperf") && info.contains("event_type:\tuprobe"))
    })
    .count()
}

/// A collector that accepts connections and never answers.
fn silent_collector() -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        let until = Instant::now() + Duration::from_secs(90);
        while Instant::now() < until {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (format!("http://{addr}"), holder)
}

/// An agent exporting to a collector that never answers (timeout 120 s), with a flush
/// deadline of `flush_timeout` seconds, its JSON-lines output in `out`.
fn agent_to_silent_collector(
    endpoint: &str,
    flush_timeout: &str,
    out: &std::path::Path,
) -> (Reaped, std::sync::mpsc::Receiver<String>) {
    let mut agent = Reaped(
        pyusdt()
            .args([
                "agent",
                "--quiet",
                "--rescan-interval",
                "0",
                "--otlp-protocol",
                "http/protobuf",
                "--otlp-endpoint",
                endpoint,
                "--flush-timeout",
                flush_timeout,
                "--output",
                out.to_str().unwrap(),
            ])
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", "120000")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = stderr_lines(&mut agent.0);
    wait_for_line(&lines, "tracing ");
    (agent, lines)
}

#[test]
fn probes_are_detached_before_the_flush() {
    if !require_bpf("probes_are_detached_before_the_flush") {
        return;
    }
    let (endpoint, _collector) = silent_collector();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("agent.jsonl");
    let (mut agent, lines) = agent_to_silent_collector(&endpoint, "8", &out);
    let pid = agent.0.id();
    assert!(uprobe_links(pid) > 0, "no uprobe attached while tracing");

    // A process collecting all the while: its events keep coming until the probes go. (Paced:
    // an unpaced flood outpaces the reader, and the drain that ends each tracing pass, in
    // Tracer::run, lasts as long as the flood.)
    let mut busy = Reaped(
        Command::new(SYSTEM_PYTHON)
            .args([
                "-c",
                "import gc, time\nwhile True:\n    gc.collect(0)\n    time.sleep(0.001)",
            ])
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    signal(pid, libc::SIGTERM);
    wait_for_line(&lines, "stopping");
    // The flush waits for the silent collector: the probes are gone while it does.
    let deadline = Instant::now() + Duration::from_secs(5);
    while uprobe_links(pid) > 0 {
        assert!(
            agent.0.try_wait().unwrap().is_none(),
            "the agent exited with its probes attached to the end"
        );
        assert!(
            Instant::now() < deadline,
            "{} uprobes still attached while flushing",
            uprobe_links(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        agent.0.try_wait().unwrap().is_none(),
        "the agent should still be flushing"
    );
    let status = wait_at_most(&mut agent.0, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    let _ = busy.0.kill();

    // What was read up to the detach is in the summary: the busy process's collections.
    let records = read_jsonl(&out);
    let s = summary(&records);
    assert!(s["received"]["gc"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn an_export_in_flight_is_cut_at_the_flush_deadline() {
    if !require_bpf("an_export_in_flight_is_cut_at_the_flush_deadline") {
        return;
    }
    let (endpoint, _collector) = silent_collector();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("agent.jsonl");
    let (mut agent, _lines) = agent_to_silent_collector(&endpoint, "2", &out);
    let workload = Command::new(SYSTEM_PYTHON)
        .args([
            "-c",
            "import gc, json, decimal\nfor _ in range(5): gc.collect()",
        ])
        .status()
        .unwrap();
    assert!(workload.success());
    // Spans are shipped within 100 ms: a request is in flight to the silent collector.
    std::thread::sleep(Duration::from_secs(1));
    // The collector's timeout (120 s) is far longer than the deadline (2 s): the agent still
    // exits soon after, well before the timeout.
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");

    // What could not be sent is counted as failed, none as exported.
    let records = read_jsonl(&out);
    let s = summary(&records);
    let export = &s["export"];
    let sum = |k: &str| -> u64 {
        export[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum()
    };
    assert!(sum("failed") > 0, "{export}");
    assert_eq!(sum("exported"), 0, "{export}");
    assert!(
        export["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("flush deadline")),
        "{export}"
    );
}

/// A SIGTERM is obeyed under a flood of events: a process collecting as fast as it can keeps
/// the ring buffer from ever being empty, and the last drain used to read until it was, so
/// that the agent never stopped (and the kubelet's SIGKILL would have lost the counts). It
/// must stop on its own, with its summary written and the flood's collections counted.
#[test]
fn a_flood_of_events_does_not_hold_up_the_shutdown() {
    if !require_bpf("a_flood_of_events_does_not_hold_up_the_shutdown") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("agent.jsonl");
    let (mut agent, log) = start_agent(&["--quiet", "--output", out_path.to_str().unwrap()]);
    wait_for_line(&log, "tracing ");
    let flood = Reaped(
        Command::new(SYSTEM_PYTHON)
            .args(["-c", "import gc\nwhile True:\n    gc.collect(0)\n"])
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(30));
    assert!(status.success(), "agent exit: {status:?}");
    let records = read_jsonl(&out_path);
    let flood_pid = u64::from(flood.0.id());
    let collections = records
        .iter()
        .filter(|r| r["type"] == "gc" && r["pid"] == flood_pid)
        .count();
    assert!(collections > 0, "no collection of the flood was reported");
    summary(&records);
}
