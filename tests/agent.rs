//! `pyusdt agent`: processes started after it attach get traced (kernel-set semaphores) and
//! events are attributed to the right PID.
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn wait_exe(pid: u32, suffix: &str) {
    for _ in 0..500 {
        if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with(suffix)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("process {pid} never ran {suffix}");
}

#[test]
fn agent_traces_processes_started_later_with_the_right_pids() {
    if !require_bpf("agent_traces_processes_started_later_with_the_right_pids") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("agent.jsonl");
    let out = out_path.to_str().unwrap();
    let (mut agent, log) = start_agent(&["--quiet", "--output", out]);
    // Probes are attached once the agent says it is tracing.
    wait_for_line(&log, "tracing ");

    // Two processes at once, each importing a module named after its own PID.
    let code = "import os, gc, time\n\
                try:\n    __import__(f'pyusdt_probe_{os.getpid()}')\nexcept ImportError:\n    pass\n\
                gc.collect()\ntime.sleep(0.3)\n";
    let kids: Vec<Reaped> = (0..2)
        .map(|_| {
            Reaped(
                Command::new(SYSTEM_PYTHON)
                    .args(["-c", code])
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let pids: Vec<u32> = kids.iter().map(|k| k.0.id()).collect();
    for mut k in kids {
        assert!(k.0.wait().unwrap().success());
    }
    std::thread::sleep(Duration::from_millis(300)); // a drain interval or two
    let status = stop(&mut agent.0, libc::SIGINT, Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status:?}");

    let records = read_jsonl(&out_path);
    for &pid in &pids {
        let probes: Vec<_> = records
            .iter()
            .filter(|r| r["type"] == "import")
            .filter(|r| {
                r["module"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("pyusdt_probe_"))
            })
            .filter(|r| r["module"] == format!("pyusdt_probe_{pid}"))
            .collect();
        assert_eq!(probes.len(), 1, "probe import of {pid}");
        assert_eq!(
            probes[0]["pid"], pid,
            "import attributed to the wrong process"
        );
        assert_eq!(probes[0]["found"], false);
        assert!(
            records
                .iter()
                .any(|r| r["type"] == "gc" && r["pid"] == pid && r["generation"] == 2),
            "gc.collect() of {pid} not traced"
        );
    }
    // No probe import carries another process's PID.
    for r in records.iter().filter(|r| {
        r["module"]
            .as_str()
            .is_some_and(|m| m.starts_with("pyusdt_probe_"))
    }) {
        assert_eq!(r["module"], format!("pyusdt_probe_{}", r["pid"]));
    }
    let s = summary(&records);
    assert_eq!(
        s["dropped"],
        serde_json::json!({"gc": 0, "import": 0, "audit": 0})
    );
}

#[test]
fn agent_traces_running_processes_and_new_files_in_other_mount_namespaces() {
    if !require_bpf("agent_traces_running_processes_and_new_files_in_other_mount_namespaces") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (before_dir, after_dir) = (dir.path().join("before"), dir.path().join("after"));
    std::fs::create_dir(&before_dir).unwrap();
    std::fs::create_dir(&after_dir).unwrap();
    let go = dir.path().join("go");
    let out_path = dir.path().join("agent.jsonl");

    // Started before the agent, from a file the host cannot see by its path.
    let before = Reaped(namespaced_python(&before_dir, &go));
    wait_exe(before.0.id(), "python3.11");
    assert!(
        !before_dir.join("python3.11").exists(),
        "the copy must be invisible to the host"
    );
    let listed = pyusdt()
        .args(["list", "--pid", &before.0.id().to_string()])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&listed);
    assert!(listed.status.success(), "{stderr}");
    let inner = format!(
        "/proc/{}/root{}/python3.11",
        before.0.id(),
        before_dir.display()
    );
    assert!(
        stdout.starts_with(&inner),
        "list --pid did not go through /proc/PID/root: {stdout}"
    );

    let out = out_path.to_str().unwrap();
    let (mut agent, log) = start_agent(&["--quiet", "--rescan-interval", "1", "--output", out]);
    wait_for_line(&log, "tracing ");

    // Started after: a new file, found by the rescan.
    let after = Reaped(namespaced_python(&after_dir, &go));
    wait_exe(after.0.id(), "python3.11");
    wait_for_line(&log, "now tracing");

    std::fs::write(&go, b"").unwrap();
    let pids = [before.0.id(), after.0.id()];
    for mut p in [before, after] {
        assert!(p.0.wait().unwrap().success());
    }
    std::thread::sleep(Duration::from_millis(300));
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status:?}");

    let records = read_jsonl(&out_path);
    for pid in pids {
        let hit = records
            .iter()
            .find(|r| r["type"] == "import" && r["module"] == format!("pyusdt_ns_{pid}"))
            .unwrap_or_else(|| panic!("import of namespaced process {pid} not traced"));
        assert_eq!(hit["pid"], pid);
        assert!(records
            .iter()
            .any(|r| r["type"] == "gc" && r["pid"] == pid && r["generation"] == 2));
    }
}

/// The uprobe attachments a process holds: its BPF link and perf event descriptors (other
/// descriptors come and go while it reads /proc).
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| {
            let t = target.to_string_lossy();
            t == "anon_inode:bpf_link" || t == "anon_inode:[perf_event]"
        })
        .count()
}

/// With the rescan off, a container's interpreter copy is still found: at its exec (the
/// sched_process_exec tracepoint), not by scanning /proc. The container has its own mount and
/// PID namespaces. When its process exits, its attachments are released (no uprobe outlives
/// its container).
#[test]
fn agent_attaches_container_files_at_exec_and_releases_them() {
    if !require_bpf("agent_attaches_container_files_at_exec_and_releases_them") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns_dir = dir.path().join("ns");
    std::fs::create_dir(&ns_dir).unwrap();
    let go = dir.path().join("go");
    let out_path = dir.path().join("agent.jsonl");
    let out = out_path.to_str().unwrap();
    let (mut agent, log) = start_agent(&["--quiet", "--rescan-interval", "0", "--output", out]);
    wait_for_line(&log, "tracing ");
    let agent_pid = agent.0.id();
    let baseline = fd_count(agent_pid);

    let container = Reaped(namespaced_python_with(&ns_dir, &go, true));
    wait_for_line(&log, "now tracing");
    let attached = fd_count(agent_pid);
    assert!(
        attached > baseline,
        "attaching the copy holds descriptors ({baseline} before, {attached} after)"
    );
    std::fs::write(&go, b"").unwrap();
    let mut container = container;
    assert!(container.0.wait().unwrap().success());
    wait_for_line(&log, "released ");
    assert_eq!(
        fd_count(agent_pid),
        baseline,
        "the copy's attachments are released"
    );
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status:?}");
    // PID 1 in its namespace; events carry its host PID.
    let records = read_jsonl(&out_path);
    let import = records
        .iter()
        .find(|r| r["type"] == "import" && r["module"] == "pyusdt_ns_1")
        .expect("the container's process was traced");
    assert!(import["pid"].as_u64().unwrap() > 1, "a host PID: {import}");
}

/// 500 short-lived Python processes in a row: the agent keeps tracing them all and holds no
/// more descriptors (attachments) or memory afterwards than after the first 50.
#[test]
fn agent_stays_bounded_over_500_short_lived_processes() {
    if !require_bpf("agent_stays_bounded_over_500_short_lived_processes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("agent.jsonl");
    // Only the system interpreter: the other tests of this file start containers meanwhile,
    // whose files a discovering agent would attach and release (descriptors coming and going).
    let (mut agent, log) = start_agent(&[
        "--quiet",
        "--no-discover",
        "--python",
        SYSTEM_PYTHON,
        "--output",
        out_path.to_str().unwrap(),
    ]);
    wait_for_line(&log, "tracing ");
    let agent_pid = agent.0.id();
    let run = |n: usize| {
        for _ in 0..n {
            let status = Command::new(SYSTEM_PYTHON)
                .args(["-c", "import gc; gc.collect()"])
                .status()
                .unwrap();
            assert!(status.success());
        }
    };
    run(50);
    std::thread::sleep(Duration::from_millis(1500));
    let (fds, rss) = (fd_count(agent_pid), rss_kib(agent_pid));
    run(450);
    // A release pass and the summary's bookkeeping: what exited is forgotten.
    std::thread::sleep(Duration::from_millis(2500));
    let (fds_after, rss_after) = (fd_count(agent_pid), rss_kib(agent_pid));
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status:?}");
    assert_eq!(
        fds_after, fds,
        "descriptors after 50 and after 500 processes"
    );
    assert!(
        rss_after < rss + 4 * 1024,
        "agent RSS grew from {rss} KiB to {rss_after} KiB over 450 processes"
    );
    // Every process was traced: one explicit gen-2 collection each.
    let records = read_jsonl(&out_path);
    let pids: std::collections::HashSet<_> = records
        .iter()
        .filter(|r| r["type"] == "gc" && r["generation"] == 2)
        .map(|r| r["pid"].as_u64().unwrap())
        .collect();
    assert!(pids.len() >= 500, "{} of 500 processes traced", pids.len());
}

/// After loading its BPF programs the agent holds only CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE
/// and CAP_DAC_READ_SEARCH (effective, permitted and bounding sets), cannot regain more through
/// an exec, and still attaches and traces (the other tests of this file run the same way).
#[test]
fn agent_keeps_only_the_capabilities_it_needs() {
    if !require_bpf("agent_keeps_only_the_capabilities_it_needs") {
        return;
    }
    let (mut agent, log) = start_agent(&["--quiet"]);
    wait_for_line(&log, "tracing ");
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.0.id())).unwrap();
    let field = |name: &str| {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim();
        u64::from_str_radix(v, 16).unwrap_or_else(|_| v.parse().unwrap())
    };
    let expected: u64 = [2u32, 19, 38, 39].iter().map(|c| 1u64 << c).sum();
    assert_eq!(field("CapEff:"), expected, "effective set");
    assert_eq!(field("CapPrm:"), expected, "permitted set");
    assert_eq!(field("CapBnd:"), expected, "bounding set");
    assert_eq!(field("CapInh:"), 0, "inheritable set");
    assert_eq!(field("NoNewPrivs:"), 1);
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status:?}");
}
