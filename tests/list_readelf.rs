//! `pyusdt list` against `readelf -n`: same markers, addresses, semaphores and argument specs.
mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

/// (name, location, base, semaphore, args) of each python note, as readelf prints them.
fn readelf_notes(path: &str) -> Vec<(String, u64, u64, u64, String)> {
    let out = Command::new("readelf")
        .args(["-n", "--wide", path])
        .output()
        .expect("readelf (binutils) is installed by scripts/setup.sh");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap();
    let mut notes = Vec::new();
    let mut lines = text.lines().map(str::trim).peekable();
    while let Some(line) = lines.next() {
        if !line.ends_with("Provider: python") {
            continue;
        }
        let name = lines
            .next()
            .unwrap()
            .strip_prefix("Name: ")
            .unwrap()
            .to_string();
        // Location: 0x..., Base: 0x..., Semaphore: 0x...
        let loc_line = lines.next().unwrap();
        let fields: Vec<&str> = loc_line
            .split(',')
            .map(|f| f.split(": ").nth(1).unwrap())
            .collect();
        let args = lines
            .next_if(|l| l.starts_with("Arguments:"))
            .map(|l| l.trim_start_matches("Arguments:").trim().to_string())
            .unwrap_or_default();
        notes.push((name, hex(fields[0]), hex(fields[1]), hex(fields[2]), args));
    }
    notes
}

fn pyusdt_notes(path: &str) -> Vec<(String, u64, u64, u64, String)> {
    let out = pyusdt().args(["list", "--json", path]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["files"][0]["markers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["provider"] == "python")
        .map(|m| {
            // Unprelinked files: the adjusted address equals the note's location.
            assert_eq!(m["address"], m["note_location"]);
            (
                m["name"].as_str().unwrap().to_string(),
                m["note_location"].as_u64().unwrap(),
                m["note_base"].as_u64().unwrap(),
                m["semaphore"].as_u64().unwrap_or(0),
                m["args"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn list_matches_readelf_on_debian_python_and_libpython() {
    for path in [SYSTEM_PYTHON, SYSTEM_LIBPYTHON] {
        if !Path::new(path).exists() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "{path} missing in CI"
            );
            eprintln!("SKIPPED for {path}: not installed (scripts/setup.sh installs it)");
            continue;
        }
        let expected = readelf_notes(path);
        assert_eq!(expected.len(), 8, "Debian's 3.11 carries 8 python markers");
        assert_eq!(pyusdt_notes(path), expected, "{path}");
    }
}

#[test]
fn list_says_what_can_fire_on_3_11() {
    if !Path::new(SYSTEM_PYTHON).exists() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"));
        return;
    }
    let out = pyusdt().args(["list", SYSTEM_PYTHON]).output().unwrap();
    let (stdout, _) = text(&out);
    assert!(stdout.contains("CPython 3.11.2"), "{stdout}");
    let entry = stdout
        .lines()
        .find(|l| l.contains("function__entry "))
        .unwrap();
    assert!(entry.contains("line-mode-only"), "{entry}");
    assert!(stdout.contains("gh-98894"));
    let ret = stdout
        .lines()
        .find(|l| l.contains("function__return "))
        .unwrap();
    assert!(ret.contains(" fires "), "{ret}");
}

#[test]
fn list_pid_finds_the_interpreter_through_proc_root() {
    if !require_bpf("list_pid_finds_the_interpreter_through_proc_root") {
        return;
    }
    let child = Reaped(
        Command::new(SYSTEM_PYTHON)
            .args(["-c", "import time; time.sleep(30)"])
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id().to_string();
    // The exe link is set at exec: wait until the process is python, not our fork.
    for _ in 0..100 {
        if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("python3.11")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = pyusdt()
        .args(["list", "--json", "--pid", &pid])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = &v["files"][0];
    assert_eq!(file["path"], format!("/proc/{pid}/root/usr/bin/python3.11"));
    assert_eq!(file["pid"].as_u64().unwrap().to_string(), pid);
    assert_eq!(file["cpython_version"], "3.11.2");
    assert_eq!(file["markers"].as_array().unwrap().len(), 8);
}

#[test]
fn list_on_3_12_says_function_markers_are_gone() {
    // No marker-bearing 3.12+ is installed here: a PIE with python gc/audit markers named
    // `python3.12` stands in (its version comes from its name). The listing must say that the
    // function and line markers do not exist on 3.12, not merely omit them.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("python3.12");
    compile(&workload("sdt_pie.c"), &exe, &["-fPIE", "-pie"]);
    let out = pyusdt().arg("list").arg(&exe).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("CPython 3.12"), "{stdout}");
    for gone in ["function__entry", "function__return", "line"] {
        let note = stdout
            .lines()
            .find(|l| l.contains(&format!("note: {gone}:")))
            .unwrap_or_else(|| panic!("no note about {gone}: {stdout}"));
        assert!(
            note.contains("no call site") && note.contains("PEP 669"),
            "{note}"
        );
    }
    let gc = stdout.lines().find(|l| l.contains("gc__start")).unwrap();
    assert!(gc.contains(" fires "), "{gc}");
}

#[test]
fn list_matches_readelf_on_a_pie_with_semaphores() {
    let sdt_h = Path::new("/usr/include/x86_64-linux-gnu/sys/sdt.h");
    if !sdt_h.exists() && !Path::new("/usr/include/sys/sdt.h").exists() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "systemtap-sdt-dev missing in CI"
        );
        eprintln!("SKIPPED: <sys/sdt.h> missing (scripts/setup.sh installs systemtap-sdt-dev)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("sdt_pie");
    compile(&workload("sdt_pie.c"), &exe, &["-O2", "-fPIE", "-pie"]);
    let path = exe.to_str().unwrap();
    let expected = readelf_notes(path);
    assert_eq!(expected.len(), 2);
    assert_eq!(pyusdt_notes(path), expected);

    let out = pyusdt().args(["list", "--json", path]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = &v["files"][0];
    assert_eq!(file["kind"], "pie-executable");
    assert_eq!(file["cpython_version"], Value::Null);
    let markers = file["markers"].as_array().unwrap();
    let gc = markers.iter().find(|m| m["name"] == "gc__start").unwrap();
    assert!(gc["semaphore"].as_u64().is_some() && gc["semaphore_offset"].as_u64().is_some());
    assert_eq!(
        gc["status"], "unknown-version",
        "never claim a marker fires on an unknown build"
    );
    let audit = markers.iter().find(|m| m["name"] == "audit").unwrap();
    assert_ne!(
        audit["semaphore"], gc["semaphore"],
        "each marker has its own semaphore"
    );
}

/// The file of an interpreter that carries its markers (the libpython of the built shared
/// 3.9 and 3.13; Debian's executables for 3.11, 3.14 and 3.15).
fn marker_file(interp: &Interpreter) -> String {
    if interp.minor == 11 {
        return SYSTEM_PYTHON.into();
    }
    if interp.minor >= 14 {
        return interp.python.to_string_lossy().into_owned();
    }
    let lib = interp
        .python
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join(format!("lib/libpython3.{}.so.1.0", interp.minor));
    lib.to_string_lossy().into_owned()
}

#[test]
fn list_reports_what_fires_on_each_version() {
    if !Path::new(SYSTEM_PYTHON).exists() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"));
        return;
    }
    for interp in interpreters() {
        let path = marker_file(&interp);
        let v = interp.minor;
        // Same notes as readelf, on every version.
        assert_eq!(pyusdt_notes(&path), readelf_notes(&path), "3.{v}: {path}");
        let out = pyusdt().args(["list", "--json", &path]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out).1);
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let file = &doc["files"][0];
        assert!(file["cpython_version"]
            .as_str()
            .unwrap()
            .starts_with(&format!("3.{v}.")));
        let status = |m: &str| {
            file["markers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == m)
                .map(|x| x["status"].as_str().unwrap().to_string())
        };
        let absent = |m: &str| {
            file["absent"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == m)
                .map(|x| x["note"].as_str().unwrap().to_string())
        };
        for m in [
            "gc__start",
            "gc__done",
            "import__find__load__start",
            "import__find__load__done",
            "audit",
        ] {
            assert_eq!(status(m).as_deref(), Some("fires"), "3.{v} {m}");
        }
        match v {
            9 => {
                for m in ["function__entry", "function__return", "line"] {
                    assert_eq!(status(m).as_deref(), Some("fires"), "3.9 {m}");
                }
            }
            11 => {
                assert_eq!(status("function__entry").as_deref(), Some("line-mode-only"));
                assert_eq!(status("function__return").as_deref(), Some("fires"));
            }
            13 | 14 => {
                for m in ["function__entry", "function__return", "line"] {
                    assert_eq!(status(m), None, "3.{v} has no {m} note");
                    let note =
                        absent(m).unwrap_or_else(|| panic!("3.{v}: {m} not reported absent"));
                    assert!(note.contains("no call site"), "{note}");
                }
            }
            15 => {
                for m in ["function__entry", "function__return"] {
                    assert_eq!(status(m).as_deref(), Some("fires"), "3.15 {m}");
                }
                assert_eq!(status("line"), None, "3.15 has no line note");
                let note = absent("line").expect("3.15: line not reported absent");
                assert!(note.contains("only the function markers"), "{note}");
            }
            other => panic!("unexpected version 3.{other}"),
        }
    }
}

#[test]
fn compatibility_table_matches_what_list_reports() {
    let compat = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/compatibility.md");
    let text = std::fs::read_to_string(&compat).unwrap();
    let table = text
        .split("<!-- compat:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- compat:end -->").next())
        .expect("docs/compatibility.md has no compatibility table markers");
    let rows: Vec<Vec<String>> = table
        .lines()
        .filter(|l| l.starts_with("| 3."))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    let columns: [&[&str]; 6] = [
        &["gc__start", "gc__done"],
        &["import__find__load__start", "import__find__load__done"],
        &["audit"],
        &["function__entry"],
        &["function__return"],
        &["line"],
    ];
    let mut checked = Vec::new();
    for interp in interpreters() {
        let path = marker_file(&interp);
        let out = pyusdt().args(["list", "--json", &path]).output().unwrap();
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let file = &doc["files"][0];
        let version = file["cpython_version"].as_str().unwrap().to_string();
        // Rows are per minor release: the archive may serve a newer micro release later.
        let minor = format!("3.{}.", interp.minor);
        let row = rows
            .iter()
            .find(|r| r[0].starts_with(&minor))
            .unwrap_or_else(|| panic!("docs/compatibility.md table has no row for {version}"));
        for (i, markers) in columns.iter().enumerate() {
            let statuses: Vec<String> = markers
                .iter()
                .map(|m| {
                    file["markers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|x| x["name"] == *m)
                        .map_or("absent".to_string(), |x| {
                            x["status"].as_str().unwrap().to_string()
                        })
                })
                .collect();
            let mut cell = statuses.clone();
            cell.dedup();
            assert_eq!(
                row[i + 1],
                cell.join(" / "),
                "docs/compatibility.md row {version}, column {markers:?}"
            );
        }
        checked.push(version);
    }
    eprintln!("docs/compatibility.md rows checked: {}", checked.join(", "));
}

#[test]
fn installed_markerless_interpreters_are_reported_as_such() {
    // pyenv builds on this machine kind carry no markers: real marker-less CPythons.
    let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
    let Ok(versions) = std::fs::read_dir(Path::new(&root).join("versions")) else {
        eprintln!("NOTE: no pyenv interpreters here; the marker-less case is covered by fixtures in tests/errors.rs");
        return;
    };
    let mut seen = 0;
    for entry in versions.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(minor) = name.strip_prefix("3.").and_then(|r| r.split('.').next()) else {
            continue;
        };
        let python = entry.path().join(format!("bin/python3.{minor}"));
        if !python.exists() {
            continue;
        }
        let out = pyusdt().arg("list").arg(&python).output().unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(4), "{name}: {stdout}{stderr}");
        assert!(
            stdout.contains(&format!("CPython 3.{minor}")),
            "{name}: version not detected: {stdout}"
        );
        assert!(
            stderr.contains("--with-dtrace") && stderr.contains("pyenv"),
            "{name}: {stderr}"
        );
        // `run` traces its imports through hook points of its symbol table (issue 24), and
        // the summary says so (root only: it loads BPF).
        // SAFETY: geteuid has no preconditions.
        if seen == 0 && unsafe { libc::geteuid() } == 0 {
            let out = pyusdt()
                .args(["run", "--quiet", "--"])
                .arg(&python)
                .args(["-c", "import json"])
                .output()
                .unwrap();
            let (_, stderr) = text(&out);
            assert!(out.status.success(), "{name}: {stderr}");
            assert!(
                stderr.contains("PyObject_CallMethodObjArgs")
                    && stderr.contains("seen at a hook point (symbol_table)"),
                "{name}: {stderr}"
            );
        }
        seen += 1;
    }
    eprintln!("marker-less pyenv interpreters checked: {seen}");
}
