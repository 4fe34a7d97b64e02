//! `pyusdt run` inside its own PID namespace (as in a container without hostPID): the command
//! is still followed, events carry host PIDs, and the summary names the command.
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
    let code = "import os\ntry:\n    __import__(f'pyusdt_nspid_{os.getpid()}')\nexcept ImportError:\n    pass\n";
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_pyusdt"))
        .args(["run", "--quiet", "--output"])
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
}
