//! Faults pyusdt must survive without losing anything silently or harming what it traces: a
//! collector that is down for 30 s and comes back, a collector that answers every export 2 s
//! late, a SIGKILL of the agent while it holds semaphores in a running program, many threads
//! interleaving their calls, and the traced program's own output and exit code.
mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::otlp::{self, attr_int};
use common::*;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value;

/// The agent's documented ceiling at 1 M events/s (bench/README.md, "The agent's footprint"): a
/// stalled collector must not push it past that.
const RSS_CEILING_KIB: u64 = 64 * 1024;

/// One test at a time: `run` attaches gc and import probes to the interpreter file, which sets
/// their semaphores in every process using it, so a concurrent test would keep semaphores set
/// in the program whose semaphores the SIGKILL test watches fall to zero. (Serial, the
/// timing-bound tests also get the machine to themselves.)
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn counts(v: &Value) -> [u64; 3] {
    [0, 1, 2].map(|i| v[i].as_u64().expect("a count"))
}

/// `pyusdt run` of tests/workloads/steady.py for `seconds`, exporting to `endpoint`, with its
/// RSS sampled every 500 ms by the caller.
fn start_steady_run(endpoint: &str, protocol: &str, seconds: u32, out: &std::path::Path) -> Child {
    pyusdt()
        .args(["run", "--quiet", "--flush-timeout", "5", "--output"])
        .arg(out)
        .args(["--otlp-endpoint", endpoint, "--otlp-protocol", protocol])
        // A batch every 200 ms: over a 30 s outage far more batches than the queue holds.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .args(["--", SYSTEM_PYTHON])
        .arg(workload("steady.py"))
        .arg(seconds.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group: a failing test ends the traced workload too (Reaped).
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Every span is accounted for: what the collector holds is what pyusdt counts as exported,
/// and exported + failed + dropped is every span pyusdt made. Returns the summary's counts.
fn assert_accounted(records: &[Value], r: &otlp::Received, what: &str) -> [[u64; 3]; 3] {
    let s = summary(records);
    let e = &s["export"];
    let (exported, failed, dropped) = (
        counts(&e["exported"]),
        counts(&e["failed"]),
        counts(&e["dropped"]),
    );
    assert_eq!(
        exported,
        otlp::item_counts(r),
        "{what}: pyusdt's exported counts differ from what the collector holds"
    );
    assert_eq!(
        exported[0] + failed[0] + dropped[0],
        span_records(records).len() as u64,
        "{what}: spans neither exported nor counted as failed or dropped"
    );
    assert_eq!(
        s["dropped"],
        serde_json::json!({"gc": 0, "import": 0, "audit": 0}),
        "{what}: a slow export must not slow the ring buffer's reader"
    );
    eprintln!(
        "{what}: {} spans made; exported {exported:?}, failed {failed:?}, dropped {dropped:?} \
         (spans, metric points, log records)",
        span_records(records).len()
    );
    [exported, failed, dropped]
}

/// The collector refuses connections for 30 s (nothing listens on its port), then comes back
/// on the same port. Tracing goes on throughout; memory stays bounded while the queue is full;
/// what fits the queue is delivered when the collector returns, the rest is counted; spans made
/// after its return all arrive.
#[test]
fn collector_down_for_30_s_then_back() {
    if !require_bpf("collector_down_for_30_s_then_back") {
        return;
    }
    let _serial = serial();
    // A port nobody listens on until the collector "comes back": below the ephemeral range, so
    // that no outgoing connection is given it in the meantime.
    let addr = (20_000..30_000)
        .find_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
        .expect("a free port below the ephemeral range")
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let started = Instant::now();
    let mut run = Reaped(start_steady_run(
        &format!("http://{addr}"),
        "http/protobuf",
        40,
        &out,
    ));
    let pid = run.0.id();
    let mut rss = Vec::new();
    while started.elapsed() < Duration::from_secs(30) {
        rss.push((started.elapsed(), rss_kib(pid)));
        std::thread::sleep(Duration::from_millis(500));
    }
    let back_ns = unix_now_ns();
    let receiver = otlp::http_at(&addr.to_string());
    let status = wait_at_most(&mut run.0, Duration::from_secs(40));
    assert!(status.success(), "{status:?}");

    let records = read_jsonl(&out);
    let r = receiver.received();
    let [exported, _, dropped] = assert_accounted(&records, &r, "collector down 30 s");
    assert!(
        summary(&records)["export"]["retries"].as_u64().unwrap() > 0,
        "no retries"
    );
    assert!(
        dropped[0] > 0,
        "30 s of batches every 200 ms cannot fit a 64-batch queue: drops must be counted"
    );
    assert!(
        exported[0] > 0,
        "nothing delivered after the collector came back"
    );

    // Memory: bounded, and flat once the queue is full (the later half of the outage).
    let max = rss.iter().map(|(_, k)| *k).max().unwrap();
    eprintln!("collector down 30 s: pyusdt RSS at most {max} KiB");
    assert!(max < RSS_CEILING_KIB, "RSS reached {max} KiB: {rss:?}");
    let at = |secs: u64| {
        rss.iter()
            .find(|(t, _)| *t >= Duration::from_secs(secs))
            .unwrap()
            .1
    };
    let last = rss.last().unwrap().1;
    assert!(
        last < at(18) + 4 * 1024,
        "RSS still growing with the queue full: {rss:?}"
    );

    // Every import made more than 6 s after the collector returned (the longest backoff is
    // 5 s) is delivered: tracing never stopped, and the queue drained.
    let received: BTreeSet<String> = otlp::spans(&r).into_iter().map(|s| s.item.name).collect();
    let late: Vec<&str> = span_records(&records)
        .into_iter()
        .filter(|rec| {
            rec["type"] == "import"
                && rec["time_unix_nano"].as_u64().unwrap() > back_ns + 6e9 as u64
        })
        .map(|rec| rec["module"].as_str().unwrap())
        .collect();
    assert!(
        late.len() > 50,
        "only {} imports after the return",
        late.len()
    );
    for module in late {
        assert!(
            received.contains(&format!("import {module}")),
            "import {module}, made after the collector was back, never arrived"
        );
    }
}

/// A collector that answers every export 2 s late (gRPC): pyusdt keeps reading the ring buffer
/// at full speed, its memory stays bounded, it exits within its flush timeout plus one export,
/// and every span is exported or counted.
#[test]
fn slow_collector_answering_after_2_s() {
    if !require_bpf("slow_collector_answering_after_2_s") {
        return;
    }
    let _serial = serial();
    let receiver = otlp::grpc();
    receiver.answer_after(Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let started = Instant::now();
    let mut run = Reaped(start_steady_run(&receiver.endpoint, "grpc", 10, &out));
    let pid = run.0.id();
    let mut max_rss = 0;
    while run.0.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(10) {
        max_rss = max_rss.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    // 10 s of work, --flush-timeout 5, one export in flight (2 s), and start-up.
    let status = wait_at_most(&mut run.0, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(24),
        "exit took {:?}",
        started.elapsed()
    );
    eprintln!(
        "collector 2 s late: pyusdt RSS at most {max_rss} KiB, exit after {:?}",
        started.elapsed()
    );
    assert!(max_rss < RSS_CEILING_KIB, "RSS reached {max_rss} KiB");
    let records = read_jsonl(&out);
    let r = receiver.received();
    let [exported, failed, dropped] = assert_accounted(&records, &r, "collector 2 s late");
    assert!(exported[0] > 0, "nothing delivered to the slow collector");
    assert!(
        failed[0] + dropped[0] > 0,
        "50 batches at 2 s each cannot all be delivered in 15 s; the rest must be counted"
    );
}

/// The semaphores a running program has enabled, as `pyusdt doctor --json` reads them from its
/// memory (None: doctor does not list the process).
fn enabled_markers(pid: u32) -> Option<Vec<String>> {
    diagnosis(pid).map(|p| {
        p["enabled_now"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect()
    })
}

const STDIN: &[u8] = b"some input\nfor the traced program\n";

/// Runs tests/workloads/well_behaved.py untraced: (exit code, stdout, stderr).
fn untraced_behaviour() -> (Option<i32>, Vec<u8>, Vec<u8>) {
    let mut child = Command::new(SYSTEM_PYTHON)
        .arg(workload("well_behaved.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(STDIN).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    (out.status.code(), out.stdout, out.stderr)
}

/// SIGKILL gives pyusdt no chance to clean up: the kernel must. A program traced with every
/// probe (function probes in line mode set its semaphores) goes on running, its semaphores
/// return to zero, and its output and exit code are those of an untraced run.
#[test]
fn sigkill_of_the_agent_leaves_traced_programs_running() {
    if !require_bpf("sigkill_of_the_agent_leaves_traced_programs_running") {
        return;
    }
    let _serial = serial();
    let expected = untraced_behaviour();
    let mut program = Reaped(
        Command::new(SYSTEM_PYTHON)
            .arg(workload("well_behaved.py"))
            .arg("8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = program.0.id();
    let (mut agent, lines) = start_agent(&[
        "--probes",
        "gc,import,audit,function",
        "--line-mode",
        "--max-overhead",
        "off",
        "--rescan-interval",
        "0",
    ]);
    wait_for_line(&lines, "tracing ");
    let deadline = Instant::now() + Duration::from_secs(10);
    let enabled = loop {
        let enabled = enabled_markers(pid).expect("doctor lists the program");
        if enabled.iter().any(|m| m == "line") && enabled.iter().any(|m| m == "gc__start") {
            break enabled;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never enabled line and gc markers in {pid}: {enabled:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    let status = stop(&mut agent.0, libc::SIGKILL, Duration::from_secs(5));
    assert_eq!(status.code(), None, "killed by SIGKILL");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !enabled_markers(pid)
        .expect("the program still runs")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "semaphores still set 5 s after the agent died (it had {enabled:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        program.0.try_wait().unwrap().is_none(),
        "the traced program died with the agent"
    );

    // Its output is a few hundred bytes: the pipes hold it until it is read.
    let child = &mut program.0;
    child.stdin.take().unwrap().write_all(STDIN).unwrap();
    let status = wait_at_most(child, Duration::from_secs(30));
    let read = |pipe: &mut dyn std::io::Read| {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).unwrap();
        bytes
    };
    let stdout = read(child.stdout.as_mut().unwrap());
    let stderr = read(child.stderr.as_mut().unwrap());
    assert_eq!(
        (status.code(), stdout, stderr),
        expected,
        "the program behaved differently after its tracer was killed"
    );
}

/// Exit code, stdout and stderr (bytes that are not UTF-8 included), stdin, a child process and a
/// handled signal: the same under `pyusdt run` with every probe as without it.
#[test]
fn traced_programs_behave_as_untraced() {
    if !require_bpf("traced_programs_behave_as_untraced") {
        return;
    }
    let _serial = serial();
    let expected = untraced_behaviour();
    let dir = tempfile::tempdir().unwrap();
    let (input, stdout, stderr) = (
        dir.path().join("in"),
        dir.path().join("out"),
        dir.path().join("err"),
    );
    std::fs::write(&input, STDIN).unwrap();
    // The program's own streams go to files (pyusdt's summary shares the terminal's stderr).
    // It works for 2 s: `sh` exec'ing it gets function probes once its first event is seen.
    let script = format!(
        "exec {SYSTEM_PYTHON} {} 2 <{} >{} 2>{}",
        workload("well_behaved.py").display(),
        input.display(),
        stdout.display(),
        stderr.display()
    );
    let out = pyusdt()
        .args([
            "run",
            "--quiet",
            "--probes",
            "gc,import,audit,function",
            "--line-mode",
            "--max-overhead",
            "off",
            "--output",
        ])
        .arg(dir.path().join("events.jsonl"))
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    let traced = (
        out.status.code(),
        std::fs::read(&stdout).unwrap(),
        std::fs::read(&stderr).unwrap(),
    );
    assert_eq!(traced, expected, "pyusdt: {}", text(&out).1);
    let records = read_jsonl(&dir.path().join("events.jsonl"));
    assert!(
        records.iter().any(|r| r["type"] == "function"),
        "the program was not traced at all"
    );
}

/// Six threads calling work -> level1 -> level2 at the same time: each span's parent is on its
/// own thread, in the same trace, and encloses it in time; GC spans hang under the call of the
/// thread that collected.
/// Twelve Python processes at once, each with its own function probes (line mode), exiting
/// together: their links are released on threads of their own while the next ones are
/// attached. libbpf's USDT manager is not thread-safe, and unserialized this corrupted
/// pyusdt's heap (`double free or corruption`, `realloc(): invalid next size`) in 2 runs of 8;
/// here 8 runs must all end cleanly, with every process's calls seen.
#[test]
fn processes_attached_while_others_detach_leave_the_tracer_whole() {
    if !require_bpf("processes_attached_while_others_detach_leave_the_tracer_whole") {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "for i in $(seq 1 12); do {SYSTEM_PYTHON} -c '\
         def f(n): return n if n < 2 else f(n-1) + f(n-2)\nf(18)' & done; wait"
    );
    for run in 0..8 {
        let events = dir.path().join(format!("events-{run}.jsonl"));
        let out = pyusdt()
            .args([
                "run",
                "--quiet",
                "--probes",
                "gc,import,audit,function",
                "--line-mode",
                "--max-overhead",
                "off",
                "--output",
            ])
            .arg(&events)
            .args(["--", "sh", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "run {run}: {:?}\n{}",
            out.status,
            text(&out).1
        );
        let records = read_jsonl(&events);
        let pids: BTreeSet<u64> = records
            .iter()
            .filter(|r| r["type"] == "function")
            .filter_map(|r| r["pid"].as_u64())
            .collect();
        assert_eq!(pids.len(), 12, "run {run}: calls of every process");
    }
}

#[test]
fn spans_of_interleaved_threads_stay_well_nested() {
    if !require_bpf("spans_of_interleaved_threads_stay_well_nested") {
        return;
    }
    let _serial = serial();
    let receiver = otlp::http();
    let out = pyusdt()
        .args([
            "run",
            "--quiet",
            "--probes",
            "gc,function",
            "--line-mode",
            "--max-overhead",
            "off",
            "--min-duration",
            "1ms",
            "--otlp-endpoint",
            &receiver.endpoint,
        ])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .args(["--", SYSTEM_PYTHON])
        .arg(workload("threads.py"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let r = receiver.received();
    let spans: Vec<Span> = otlp::spans(&r).into_iter().map(|s| s.item).collect();
    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (&s.span_id[..], s)).collect();
    let thread = |s: &Span| attr_int(&s.attributes, "thread.id").expect("thread.id");
    let named = |name: &'static str| spans.iter().filter(move |s| s.name == name);

    for (name, parent) in [("work", "run"), ("level1", "work"), ("level2", "level1")] {
        assert_eq!(named(name).count(), 30, "{name}: 6 threads × 5 rounds");
        for s in named(name) {
            let p = by_id
                .get(&s.parent_span_id[..])
                .unwrap_or_else(|| panic!("{name}: parent span missing"));
            assert_eq!(p.name, parent, "{name} under {}", p.name);
        }
    }
    let threads: BTreeSet<i64> = named("level2").map(thread).collect();
    assert_eq!(threads.len(), 6, "one thread id per thread: {threads:?}");

    // Every child: same thread, same trace, within its parent's time.
    let mut checked = 0;
    for s in spans.iter().filter(|s| !s.parent_span_id.is_empty()) {
        let Some(p) = by_id.get(&s.parent_span_id[..]) else {
            panic!("{}: parent span missing", s.name)
        };
        assert_eq!(
            thread(s),
            thread(p),
            "{} under {} of another thread",
            s.name,
            p.name
        );
        assert_eq!(
            s.trace_id, p.trace_id,
            "{} in another trace than {}",
            s.name, p.name
        );
        assert!(
            p.start_time_unix_nano <= s.start_time_unix_nano
                && s.end_time_unix_nano <= p.end_time_unix_nano,
            "{} not within {}",
            s.name,
            p.name
        );
        checked += 1;
    }
    assert!(checked >= 90, "only {checked} child spans");

    // The first thread's level2 collects: its GC spans are children of its level2 calls.
    let gc_under_level2 = spans
        .iter()
        .filter(|s| s.name.starts_with("gc"))
        .filter_map(|s| by_id.get(&s.parent_span_id[..]))
        .filter(|p| p.name == "level2")
        .count();
    assert!(
        gc_under_level2 >= 5,
        "GC spans under level2: {gc_under_level2}"
    );
}

/// The keys of one of a process's BPF maps, found by name among its descriptors (bpftool).
fn bpf_map_keys(pid: u32, name: &str) -> Vec<u64> {
    let ids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .map(|id| id.trim().to_string())
        })
        .collect();
    let bpftool = |args: &[&str]| -> Value {
        let out = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .expect("bpftool (scripts/setup.sh installs it)");
        assert!(out.status.success(), "bpftool {args:?}: {}", text(&out).1);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let id = ids
        .iter()
        .find(|id| bpftool(&["map", "show", "id", id])["name"] == name)
        .unwrap_or_else(|| panic!("process {pid} holds no BPF map named {name}"));
    bpftool(&["map", "dump", "id", id])
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| match entry["formatted"]["key"].as_u64() {
            Some(key) => key,
            // Without BTF: the key's bytes, little-endian.
            None => entry["key"]
                .as_array()
                .unwrap()
                .iter()
                .rev()
                .map(|b| {
                    u64::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
                })
                .fold(0, |acc, b| acc << 8 | b),
        })
        .collect()
}

/// Processes that exit in the middle of a collection (a finalizer calls os._exit inside
/// gc.collect) or of an import (the module's body calls os._exit): pyusdt reports no pause or
/// import whose end it did not see, keeps no per-thread pairing state of theirs in its BPF
/// maps (a thread id reused later would pair with it), and traces the next process normally.
#[test]
fn processes_exiting_mid_gc_or_mid_import_leave_nothing_behind() {
    if !require_bpf("processes_exiting_mid_gc_or_mid_import_leave_nothing_behind") {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pyusdt_dies_in_import.py"),
        "import os\nos._exit(0)\n",
    )
    .unwrap();
    let out = dir.path().join("agent.jsonl");
    let (mut agent, lines) = start_agent(&[
        "--rescan-interval",
        "0",
        "--quiet",
        "--output",
        out.to_str().unwrap(),
    ]);
    wait_for_line(&lines, "tracing ");
    let agent_pid = agent.0.id();

    // A process stopped inside a collection (its finalizer sleeps): its thread's GC start is
    // in the agent's map, which shows the check below can see it. Killed there, it is gone.
    let mut stuck = Reaped(
        Command::new(SYSTEM_PYTHON)
            .args([
                "-c",
                "import gc, time\n\
                 class Slow:\n    def __del__(self):\n        print('in gc', flush=True)\n        time.sleep(60)\n\
                 s = Slow()\ns.cycle = s\ndel s\ngc.collect()\n",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stuck_pid = stuck.0.id() as u64;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(stuck.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "in gc\n");
    assert!(
        bpf_map_keys(agent_pid, "gc_starts").contains(&stuck_pid),
        "the collection in progress is not in the agent's map"
    );
    stop(&mut stuck.0, libc::SIGKILL, Duration::from_secs(5));

    let mid_gc = "import gc, os\n\
                  class Dies:\n    def __del__(self):\n        os._exit(0)\n\
                  d = Dies()\nd.cycle = d\ndel d\ngc.collect()\nprint('not reached')\n";
    let (mut died_in_gc, mut died_in_import) = (Vec::new(), Vec::new());
    for i in 0..100 {
        let mut cmd = Command::new(SYSTEM_PYTHON);
        if i % 2 == 0 {
            cmd.args(["-c", mid_gc]);
        } else {
            cmd.args(["-c", "import pyusdt_dies_in_import\nprint('not reached')"])
                .current_dir(dir.path());
        }
        let child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        let done = child.wait_with_output().unwrap();
        assert!(done.status.success() && done.stdout.is_empty(), "{done:?}");
        if i % 2 == 0 {
            died_in_gc.push(pid as u64);
        } else {
            died_in_import.push(pid as u64);
        }
    }
    let normal = Command::new(SYSTEM_PYTHON)
        .args(["-c", "import gc, json\ngc.collect()"])
        .spawn()
        .unwrap();
    let normal_pid = normal.id() as u64;
    assert!(normal.wait_with_output().unwrap().status.success());
    std::thread::sleep(Duration::from_millis(500));

    // Import and call stacks are task-local storage (`span_stacks`): the kernel frees them
    // with the thread, and they have no keys to list. Collections in progress are keyed by tid.
    let gc_starts = bpf_map_keys(agent_pid, "gc_starts");
    for pid in died_in_gc.iter().chain(&died_in_import).chain([&stuck_pid]) {
        assert!(
            !gc_starts.contains(pid),
            "pairing state of exited thread {pid} left in the agent's maps"
        );
    }
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");

    let records = read_jsonl(&out);
    let of = |pid: u64| records.iter().filter(move |r| r["pid"] == pid);
    for pid in &died_in_import {
        assert!(
            !of(*pid).any(|r| r["module"] == "pyusdt_dies_in_import"),
            "an import of {pid} that never finished was reported"
        );
        assert!(
            of(*pid).any(|r| r["type"] == "import"),
            "{pid} not traced at all"
        );
    }
    for pid in &died_in_gc {
        // Its interpreter collected before (start-up); the collection it died in never ended.
        assert!(
            of(*pid).any(|r| r["type"] == "gc"),
            "{pid} not traced at all"
        );
        for r in of(*pid).filter(|r| r["type"] == "gc") {
            assert!(
                r["duration_ns"].as_u64().unwrap() < 100_000_000,
                "a GC pause of {pid} that never ended was reported: {r}"
            );
        }
        assert!(
            !of(*pid).any(|r| r["type"] == "gc" && r["generation"] == 2),
            "{pid}: the full collection it died in was reported"
        );
    }
    assert!(
        of(normal_pid).any(|r| r["type"] == "gc" && r["generation"] == 2)
            && of(normal_pid).any(|r| r["module"] == "json" && r["depth"] == 0),
        "the process after them was not traced normally"
    );
}
