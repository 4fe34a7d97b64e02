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
    // Other tests of this file run interpreter copies in their own mount namespaces at the
    // same time (this agent attaches and releases those too): the count settles at or below
    // the baseline once every copy it saw has exited.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fd_count(agent_pid) > baseline && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = fd_count(agent_pid);
    assert!(
        left <= baseline,
        "the copy's attachments are released ({left} held, {baseline} before)"
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

/// Collects 5 times once told to on stdin, with automatic collections off (so exactly 5
/// gen-2 collections happen), and leaves without the shutdown's collections.
const COLLECT_5: &str = "import gc, os, sys\ngc.disable()\nsys.stdin.readline()\n\
                         for _ in range(5):\n    gc.collect()\nos._exit(0)\n";

/// A python3.11 running `COLLECT_5`.
fn collector() -> Reaped {
    Reaped(
        Command::new(SYSTEM_PYTHON)
            .args(["-c", COLLECT_5])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The same from a copy of python3.11 at `dir`/python3.11 that only exists in a mount
/// namespace of its own (a tmpfs over `dir`, like a container's file, released when the
/// process exits), owned by uid 4321, mode 0700, and run as that uid.
fn foreign_collector(dir: &std::path::Path) -> Reaped {
    let script = format!(
        "mount -t tmpfs -o mode=0711 none {d} && cp {SYSTEM_PYTHON} {d}/python3.11 && \
         chown 4321:4321 {d}/python3.11 && chmod 0700 {d}/python3.11 && \
         exec setpriv --reuid 4321 --regid 4321 --clear-groups {d}/python3.11 -c \"$0\"",
        d = dir.display()
    );
    Reaped(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .arg(COLLECT_5)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn go(p: &mut Reaped) {
    use std::io::Write;
    let mut stdin = p.0.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    assert!(p.0.wait().unwrap().success());
}

/// After loading its BPF programs the agent becomes uid/gid 65534 with no supplementary group,
/// holds only CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH and CAP_LEASE (effective,
/// permitted and bounding sets; nothing inheritable or ambient) in every thread, cannot regain
/// more through an exec, and still writes its --output (created before the change, in a
/// directory only root may enter) and traces: a python3.11 started afterwards, and one whose
/// interpreter file is found afterwards, a container's copy that only its owner (another uid)
/// may read, run as that uid. Each reports exactly its 5 explicit collections.
#[test]
fn agent_keeps_only_the_capabilities_it_needs() {
    if !require_bpf("agent_keeps_only_the_capabilities_it_needs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap(); // mode 0700, root's
    let out_path = dir.path().join("agent.jsonl");
    let (mut agent, log) = start_agent(&["--quiet", "--output", out_path.to_str().unwrap()]);
    wait_for_line(&log, "now runs as uid 65534 gid 65534");
    wait_for_line(&log, "tracing ");
    let expected: u64 = [2u32, 19, 28, 38, 39].iter().map(|c| 1u64 << c).sum();
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{}/task", agent.0.id()))
        .unwrap()
        .map(|t| t.unwrap().path())
        .collect();
    for task in tasks {
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let line = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {}", task.display()))
                .trim()
                .to_string()
        };
        let field = |name: &str| u64::from_str_radix(&line(name), 16).unwrap();
        let ids = |name: &str| -> Vec<u32> {
            line(name)
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect()
        };
        let task = task.display();
        assert_eq!(
            ids("Uid:"),
            [65534; 4],
            "{task}: real, effective, saved, fs uid"
        );
        assert_eq!(
            ids("Gid:"),
            [65534; 4],
            "{task}: real, effective, saved, fs gid"
        );
        assert_eq!(line("Groups:"), "", "{task}: supplementary groups");
        assert_eq!(field("CapEff:"), expected, "{task}: effective set");
        assert_eq!(field("CapPrm:"), expected, "{task}: permitted set");
        assert_eq!(field("CapBnd:"), expected, "{task}: bounding set");
        assert_eq!(field("CapInh:"), 0, "{task}: inheritable set");
        assert_eq!(field("CapAmb:"), 0, "{task}: ambient set");
        assert_eq!(line("NoNewPrivs:"), "1", "{task}");
    }

    // A process of the attached interpreter, started after the change.
    let mut host = collector();
    // A new interpreter file, found at exec after the change, through /proc/PID/root: the
    // agent's uid may neither read it nor enter the directory above it (root's, mode 0700),
    // nor read the maps of its process; it still does, with CAP_DAC_READ_SEARCH and
    // CAP_SYS_PTRACE.
    let own = dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    let mut other = foreign_collector(&own);
    wait_exe(other.0.id(), "python3.11");
    let status = std::fs::read_to_string(format!("/proc/{}/status", other.0.id())).unwrap();
    assert!(status.contains("Uid:\t4321\t"), "{status}");
    wait_for_line(
        &log,
        &format!("attached /proc/{}/root{}", other.0.id(), own.display()),
    );
    let pids = [host.0.id(), other.0.id()];
    go(&mut host);
    go(&mut other);
    std::thread::sleep(Duration::from_millis(300)); // a drain interval or two
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status:?}");

    let records = read_jsonl(&out_path);
    for pid in pids {
        let collections = records
            .iter()
            .filter(|r| r["type"] == "gc" && r["pid"] == pid && r["generation"] == 2)
            .count();
        assert_eq!(collections, 5, "gen-2 collections of PID {pid}");
    }
}

/// An agent started without CAP_SETUID (dropped from its bounding set before the exec, as a
/// container that does not grant it) cannot become another user: it stops with an error that
/// names the failed call and what to do, before tracing anything. With
/// --allow-privileged-after-attach it runs on, and says loudly that it runs privileged.
#[test]
fn agent_stops_when_it_cannot_reduce_its_privileges() {
    if !require_bpf("agent_stops_when_it_cannot_reduce_its_privileges") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let without_setuid = |extra: &[&str]| {
        let mut c = pyusdt();
        c.args(["agent", "--quiet"]).args(extra);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            c.pre_exec(|| {
                const CAP_SETUID: libc::c_ulong = 7;
                if libc::prctl(libc::PR_CAPBSET_DROP, CAP_SETUID, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    };
    let out = without_setuid(&[])
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in [
        "reducing privileges after attach",
        "setresuid(65534, 65534, 65534) failed",
        "CAP_SETUID",
        "--allow-privileged-after-attach",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
    assert!(!stderr.contains("tracing "), "{stderr}");

    let mut agent = Reaped(
        without_setuid(&["--allow-privileged-after-attach"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = stderr_lines(&mut agent.0);
    let warning = wait_for_line(&log, "RUNNING PRIVILEGED");
    assert!(warning.contains("setresuid"), "{warning}");
    wait_for_line(&log, "tracing ");
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status:?}");
}
