//! A freshly booted host mounts neither tracefs nor debugfs, and a non-root user with the
//! advised file capabilities has no access to them either: pyusdt must need neither, and name
//! any kernel facility it really lacks. (The `agent` and `run` ground-truth tests also run on a
//! fresh host: `common::start_agent`, tests/run_ground_truth.rs.)
mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;
use serde_json::Value;

#[test]
fn doctor_lists_the_kernel_facilities_and_needs_no_tracefs() {
    if !require_bpf("doctor_lists_the_kernel_facilities_and_needs_no_tracefs") {
        return;
    }
    let out = pyusdt_on_fresh_host()
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let features = v["kernel"]["features"].as_array().expect("kernel.features");
    let names: Vec<&str> = features.iter().filter_map(|f| f["name"].as_str()).collect();
    for wanted in [
        "BTF type",
        "uprobes",
        "sched tracepoints",
        "ring buffers",
        "task storage",
    ] {
        assert!(
            names.iter().any(|n| n.contains(wanted)),
            "{wanted} not checked: {names:?}"
        );
    }
    for f in features {
        assert_eq!(f["state"], "present", "{f}");
    }

    let out = pyusdt_on_fresh_host().arg("doctor").output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("tracefs and debugfs are not needed") && stdout.contains("  ok "),
        "{stdout}"
    );
}

/// A kernel without BTF, as pyusdt sees one when /sys/kernel/btf is hidden: the error names
/// the facility and what to do, with the kernel exit code, before anything is loaded.
#[test]
fn a_missing_kernel_facility_is_named_with_the_fix() {
    if !require_bpf("a_missing_kernel_facility_is_named_with_the_fix") {
        return;
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /sys/kernel/btf && exec \"$@\"")
        .arg("sh")
        .arg(binary())
        .args(["run", "--probes", "gc", "--", SYSTEM_PYTHON, "-c", "pass"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("this kernel lacks BTF type information")
            && stderr.contains("CONFIG_DEBUG_INFO_BTF=y"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The advice pyusdt gives a non-root user (`setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep`)
/// works: a copy of the binary with exactly those file capabilities, run as `nobody` on a fresh
/// host, traces every collection of its command.
#[test]
fn the_advised_file_capabilities_are_enough_for_a_non_root_user() {
    if !require_bpf("the_advised_file_capabilities_are_enough_for_a_non_root_user") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let copy = dir.path().join("pyusdt");
    std::fs::copy(binary(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let setcap = Command::new("setcap")
        .arg("cap_bpf,cap_perfmon,cap_sys_ptrace+ep")
        .arg(&copy)
        .output()
        .expect("setcap (Debian libcap2-bin, installed by scripts/setup.sh)");
    assert!(setcap.status.success(), "{}", text(&setcap).1);

    let out_path = dir.path().join("events.jsonl");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "for m in /sys/kernel/debug /sys/kernel/tracing; do umount -l $m 2>/dev/null; done; \
             exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \"$@\"",
        )
        .arg("sh")
        .arg(&copy)
        .args(["run", "--quiet", "--probes", "gc", "--output"])
        .arg(&out_path)
        .args([
            "--",
            SYSTEM_PYTHON,
            "-c",
            "import gc\nfor _ in range(5): gc.collect()",
        ])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let records = read_jsonl(&out_path);
    let explicit = records
        .iter()
        .filter(|r| r["type"] == "gc" && r["generation"] == 2)
        .count();
    assert!(
        explicit >= 5,
        "{explicit} full collections traced of the 5 gc.collect() calls: {stderr}"
    );
}
