//! The `--enable-shared` case: a C program embedding libpython3.11 is traced through the
//! library's markers (the executable itself has none).
mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const PYTHON_CONFIG: &str = "/usr/bin/python3.11-config";

#[test]
fn embedded_interpreter_is_traced_through_libpython() {
    if !require_bpf("embedded_interpreter_is_traced_through_libpython") {
        return;
    }
    assert!(
        Path::new(PYTHON_CONFIG).exists(),
        "{PYTHON_CONFIG} missing: scripts/setup.sh installs python3.11-dev"
    );
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("embed");
    let flags = Command::new(PYTHON_CONFIG)
        .args(["--embed", "--cflags", "--ldflags"])
        .output()
        .unwrap();
    assert!(flags.status.success());
    let flags = String::from_utf8(flags.stdout).unwrap();
    let cc = Command::new("cc")
        .arg(workload("embed.c"))
        .arg("-o")
        .arg(&exe)
        .args(flags.split_whitespace())
        .output()
        .unwrap();
    assert!(cc.status.success(), "cc: {}", text(&cc).1);

    // The executable carries no markers of its own.
    let listed = pyusdt().arg("list").arg(&exe).output().unwrap();
    assert_eq!(listed.status.code(), Some(4), "{}", text(&listed).1);

    let out_path = dir.path().join("embed.jsonl");
    let out = pyusdt()
        .args(["run", "--quiet", "--output"])
        .arg(&out_path)
        .arg("--")
        .arg(&exe)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("libpython3.11.so.1.0"),
        "libpython not attached: {stderr}"
    );

    let records = read_jsonl(&out_path);
    let probe = records
        .iter()
        .find(|r| {
            r["type"] == "import"
                && r["module"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("pyusdt_embedded_"))
        })
        .expect("the embedded interpreter's import was not traced");
    assert_eq!(probe["module"], format!("pyusdt_embedded_{}", probe["pid"]));
    assert_eq!(probe["found"], false);
    let pid = &probe["pid"];
    assert!(records.iter().any(|r| r["type"] == "import"
        && r["pid"] == *pid
        && r["module"] == "json"
        && r["found"] == true));
    assert!(records
        .iter()
        .any(|r| r["type"] == "gc" && r["pid"] == *pid && r["generation"] == 2));
}
