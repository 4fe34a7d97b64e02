//! The `--enable-shared` case: a C program embedding libpython3.11 is traced through the
//! library's markers (the executable itself has none).
mod common;

use std::process::Command;

use common::*;

#[test]
fn embedded_interpreter_is_traced_through_libpython() {
    if !require_bpf("embedded_interpreter_is_traced_through_libpython") {
        return;
    }
    // 3.14 and 3.15 are Debian's binaries with their own glibc: nothing to build against.
    for interp in interpreters().into_iter().filter(|i| i.embeddable) {
        check_embedding(&interp);
    }
}

fn check_embedding(interp: &Interpreter) {
    let v = interp.minor;
    assert!(
        interp.config.exists(),
        "{} missing: scripts/setup.sh installs python3.11-dev",
        interp.config.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("embed");
    let flags = Command::new(&interp.config)
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
        .args(&interp.embed_ldflags)
        .output()
        .unwrap();
    assert!(cc.status.success(), "3.{v}: cc: {}", text(&cc).1);

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
    assert!(out.status.success(), "3.{v}: {stderr}");
    let lib = format!("libpython3.{v}.so.1.0");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("attached ") && l.contains(&lib)),
        "3.{v}: {lib} not attached: {stderr}"
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
        .unwrap_or_else(|| panic!("3.{v}: the embedded interpreter's import was not traced"));
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
