//! `pyusdt run` inside its own PID namespace (as in a container without hostPID): the command
//! is still followed, events carry host PIDs, and the summary names the command. Its child's
//! audit events arrive too (there, the audit marker is attached per file: the kernel's PIDs of
//! the descendants do not name them inside the namespace).
mod common;

use std::process::Command;

use common::*;

#[test]
fn run_follows_its_command_from_inside_a_pid_namespace() {
    if !require_bpf("run_follows_its_command_from_inside_a_pid_namespace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("ns.jsonl");
    let code = "import os, subprocess, sys\ntry:\n    __import__(f'pyusdt_nspid_{os.getpid()}')\nexcept ImportError:\n    pass\nsubprocess.run([sys.executable, '-S', '-c', 'for i in range(100): id(i)'])\n";
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_pyusdt"))
        .args(["run", "--quiet", "--probes", "gc,import,audit", "--output"])
        .arg(&out_path)
        .args(["--", SYSTEM_PYTHON, "-c", code])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let records = read_jsonl(&out_path);
    let probe = records
        .iter()
        .find(|r| {
            r["module"]
                .as_str()
                .is_some_and(|m| m.starts_with("pyusdt_nspid_"))
        })
        .expect("the command's import was not traced from inside a PID namespace");
    // The module name has the PID inside the namespace (small); the event the host PID.
    let ns_pid: u64 = probe["module"].as_str().unwrap()["pyusdt_nspid_".len()..]
        .parse()
        .unwrap();
    let host_pid = probe["pid"].as_u64().unwrap();
    assert_ne!(ns_pid, host_pid, "the namespace did not separate PIDs");
    assert!(
        stderr.contains(&format!("PID {host_pid} ({SYSTEM_PYTHON} -c")),
        "summary does not name the command under its host PID: {stderr}"
    );
    let child_ids = records
        .iter()
        .filter(|r| r["name"] == "builtins.id" && r["pid"] != host_pid)
        .count();
    assert_eq!(child_ids, 100, "the child's audit events: {stderr}");
}
