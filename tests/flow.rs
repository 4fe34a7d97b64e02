//! `pyusdt flow`: the call tree of a process, compared with the process's own sys.setprofile
//! record of the same run, on every version with function markers.
mod common;

use common::*;
use serde_json::Value;

#[test]
fn flow_prints_the_call_tree_the_profiler_sees() {
    if !require_bpf("flow_prints_the_call_tree_the_profiler_sees") {
        return;
    }
    let mut checked = Vec::new();
    for interp in interpreters() {
        let v = interp.minor;
        let dir = tempfile::tempdir().unwrap();
        let truth_path = dir.path().join("truth.json");
        // The truth: the script's own profiler record of a run without pyusdt.
        let profiled = std::process::Command::new(&interp.python)
            .arg(workload("flow_tree.py"))
            .arg(&truth_path)
            .output()
            .unwrap();
        assert!(profiled.status.success(), "3.{v}: {}", text(&profiled).1);
        // The traced run has no profiler: on 3.11 only pyusdt's line mode makes entries fire.
        let out = pyusdt()
            .args(["flow", "--from", "start", "--"])
            .arg(&interp.python)
            .arg(workload("flow_tree.py"))
            .arg(&truth_path)
            .arg("--no-profile")
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        if (12..=14).contains(&v) {
            assert_eq!(out.status.code(), Some(4), "3.{v}: {stdout}{stderr}");
            assert!(stderr.contains("no function markers"), "3.{v}: {stderr}");
            continue;
        }
        assert!(out.status.success(), "3.{v}: {stderr}");
        if v == 11 {
            assert!(
                stderr.contains("line marker is enabled for PID"),
                "{stderr}"
            );
        }
        let truth: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
        let expected: Vec<(String, String)> = truth
            .iter()
            .map(|e| {
                let arrow = if e[0] == "call" { "->" } else { "<-" };
                (arrow.to_string(), e[1].as_str().unwrap().to_string())
            })
            .collect();
        // "   12 pid:tid     -> /path/flow_tree.py:leaf:17"
        let traced: Vec<(String, String)> = stdout
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace().skip(2);
                let arrow = words.next()?.to_string();
                let location = words.next()?;
                let mut parts = location.rsplitn(3, ':');
                let _line = parts.next()?;
                let function = parts.next()?.to_string();
                Some((arrow, function))
            })
            .filter(|(_, f)| f != "_pyusdt_profile")
            .collect();
        // 3.15 fires an entry, and no return, when a generator is created: start() creates two
        // (the generator expression and gen()). Everything else is as the profiler saw it.
        let (traced, creations) = without_unreturned_entries(traced);
        assert_eq!(creations, if v == 15 { 2 } else { 0 }, "3.{v}: {stdout}");
        assert_eq!(traced.first().map(|t| t.1.as_str()), Some("start"));
        assert_eq!(
            traced, expected,
            "3.{v}: flow differs from sys.setprofile:\n{stdout}"
        );
        // Indentation follows depth: leaf inside middle is two levels in.
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("    -> ") && l.contains(":leaf:")),
            "{stdout}"
        );
        checked.push(format!("3.{v}"));
    }
    eprintln!(
        "flow checked against sys.setprofile on {}",
        checked.join(", ")
    );
}

/// The trace without the entries that no return ends (matched by name, innermost first), and
/// how many there were.
fn without_unreturned_entries(traced: Vec<(String, String)>) -> (Vec<(String, String)>, usize) {
    let mut open: Vec<usize> = Vec::new();
    let mut unreturned = Vec::new();
    for (i, (arrow, name)) in traced.iter().enumerate() {
        if arrow == "->" {
            open.push(i);
        } else if let Some(k) = open.iter().rposition(|&j| traced[j].1 == *name) {
            unreturned.extend(open.drain(k + 1..));
            open.pop();
        }
    }
    unreturned.extend(open);
    let n = unreturned.len();
    let kept = traced
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !unreturned.contains(i))
        .map(|(_, t)| t)
        .collect();
    (kept, n)
}

/// `flow --pid` on a process already running a nested loop (step → handler → fib): the tree
/// is indented from the first entry seen, as with a command (issue 23, item 5: every line at
/// depth 0 once). A return of a frame entered before the attach ends nothing seen.
#[test]
fn flow_pid_of_a_running_process_shows_the_nesting() {
    if !require_bpf("flow_pid_of_a_running_process_shows_the_nesting") {
        return;
    }
    let Some(interp) = interpreter_with_entries("flow --pid") else {
        return;
    };
    let code = "import time\n\
                def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)\n\
                def handler(): return fib(3)\n\
                def step():\n    while True:\n        handler()\n        time.sleep(0.001)\n\
                step()\n";
    let busy = Reaped(
        std::process::Command::new(&interp.python)
            .args(["-c", code])
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut flow = Reaped(
        pyusdt()
            .args(["flow", "--pid", &busy.0.id().to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Read as it comes: a full pipe would stop flow.
    let mut stdout = flow.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
        out
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stop(
        &mut flow.0,
        libc::SIGINT,
        std::time::Duration::from_secs(20),
    );
    let out = reader.join().unwrap();
    // The indentation of each entry, by function.
    let indent = |l: &str| {
        let rest = l.trim_start().splitn(3, ' ').nth(2).unwrap_or("");
        rest.len() - rest.trim_start().len()
    };
    // From the first handler entry on (fib calls seen before it began before the attach).
    let from_handler: Vec<&str> = out
        .lines()
        .skip_while(|l| !(l.contains("-> ") && l.ends_with(":handler:3")))
        .collect();
    let entries = |suffix: &str| -> Vec<usize> {
        from_handler
            .iter()
            .filter(|l| l.contains("-> ") && l.ends_with(suffix))
            .map(|l| indent(l))
            .collect()
    };
    let handlers = entries(":handler:3");
    let fibs = entries(":fib:2");
    assert!(
        handlers.len() >= 3 && fibs.len() >= 9,
        "too few calls seen:\n{out}"
    );
    let h = handlers.iter().min().unwrap();
    assert!(
        fibs.iter().all(|f| f > h),
        "fib is not indented below handler:\n{}",
        out.lines().take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(
        fibs.iter().max().unwrap() >= &(h + 6),
        "fib's recursion is not indented:\n{}",
        out.lines().take(40).collect::<Vec<_>>().join("\n")
    );
}
