//! `pyusdt doctor`: every Python process of the host is diagnosed: markers or not (with the
//! fix), what fires on its version, which markers a tracer has enabled now, containers.
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn sleeper(python: &Path) -> Reaped {
    Reaped(
        Command::new(python)
            .args(["-c", "import time; time.sleep(60)"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn of(report: &[Value], pid: u32) -> Value {
    report
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("PID {pid} not diagnosed: {report:?}"))
        .clone()
}

#[test]
fn doctor_diagnoses_each_python_process() {
    if !require_bpf("doctor_diagnoses_each_python_process") {
        return;
    }
    let system = sleeper(Path::new(SYSTEM_PYTHON));
    let mut others = Vec::new();
    for i in interpreters().into_iter().filter(|i| i.minor != 11) {
        others.push((i.minor, sleeper(&i.python)));
    }
    // A marker-less build, where the machine has one (pyenv's python3 on PATH).
    let pyenv = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("python3"))
            .find(|p| p.exists() && p.to_string_lossy().contains(".pyenv"))
    });
    let unmarked = pyenv.as_deref().map(sleeper);
    // A container's interpreter: a copy of python3.11 only its own mount namespace sees.
    let dir = tempfile::tempdir().unwrap();
    let container = Reaped(namespaced_python(dir.path(), &dir.path().join("never")));
    std::thread::sleep(Duration::from_millis(500));

    let report = doctor_json();
    let s = of(&report, system.0.id());
    assert_eq!(s["markers"], true);
    assert_eq!(s["cpython_version"], "3.11.2");
    assert_eq!(s["function_markers"], "return only (entry in line mode)");
    assert_eq!(s["enabled_now"], serde_json::json!([]), "no tracer yet");
    assert!(s["advice"].as_str().unwrap().contains("--line-mode"));
    for (minor, p) in &others {
        let d = of(&report, p.0.id());
        assert_eq!(d["markers"], true);
        let expected = if *minor <= 10 || *minor == 15 {
            "entry+return"
        } else {
            "none"
        };
        assert_eq!(d["function_markers"], expected, "3.{minor}");
    }
    let c = of(&report, container.0.id());
    assert_eq!(c["in_container"], true);
    assert_eq!(c["markers"], true, "{c}");
    assert!(
        c["interpreter"].as_str().unwrap().starts_with("/proc/"),
        "{c}"
    );
    assert_eq!(s["in_container"], false);
    if let Some(p) = &unmarked {
        let d = of(&report, p.0.id());
        assert_eq!(d["markers"], false);
        assert!(
            d["advice"].as_str().unwrap().contains("--with-dtrace"),
            "{d}"
        );
    } else {
        eprintln!("NOTE: no pyenv python3 on PATH: the marker-less case is not checked");
    }

    // With an agent attached, the semaphores of the markers it traces are set in the process.
    let (mut agent, log) = start_agent(&["--quiet"]);
    wait_for_line(&log, "tracing ");
    let s = of(&doctor_json(), system.0.id());
    let enabled: Vec<&str> = s["enabled_now"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for m in [
        "gc__done",
        "gc__start",
        "import__find__load__done",
        "import__find__load__start",
    ] {
        assert!(
            enabled.contains(&m),
            "{m} enabled while the agent runs: {enabled:?}"
        );
    }
    assert!(
        !enabled.contains(&"audit"),
        "audit is not traced by default"
    );
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success());
    let s = of(&doctor_json(), system.0.id());
    assert_eq!(
        s["enabled_now"],
        serde_json::json!([]),
        "released when the agent stops"
    );
}

/// With no Python process, doctor says what it examined and how to start; with one, it shows
/// its whole command line (a cut one hides which of many similar processes it is).
#[test]
fn doctor_says_what_it_checked_and_shows_whole_command_lines() {
    if !require_bpf("doctor_says_what_it_checked_and_shows_whole_command_lines") {
        return;
    }
    // A PID namespace of its own: no Python process there.
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(binary())
        .arg("doctor")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("no Python process found: none of the")
            && stdout.contains("pyusdt list /usr/bin/python3.11"),
        "{stdout}"
    );

    let long_arg = format!("--marker-{}", "x".repeat(150));
    let sleeper = Reaped(
        Command::new(SYSTEM_PYTHON)
            .args(["-c", "import time; time.sleep(60)", &long_arg])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = pyusdt().arg("doctor").output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("PID {} (", sleeper.0.id())))
        .unwrap_or_else(|| panic!("PID {} not diagnosed: {stdout}", sleeper.0.id()));
    assert!(line.contains(&long_arg), "command line cut: {line}");
}
