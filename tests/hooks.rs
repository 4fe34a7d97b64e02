//! Hook points of CPythons without markers (`pyusdt list`, issue 24), against binutils' `nm`:
//! the same symbols at the same addresses, from the symbol table where a build keeps one
//! (pyenv's) and from the exported symbols where it is stripped (builds like the official
//! images, made by scripts/python-matrix.sh), and `_PyRuntime`'s debug offsets against the
//! interpreter's own version; `doctor` on a running process of such a build.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

/// Defined symbols as `nm` prints them (`-D`: the exported ones), name → address.
fn nm(path: &Path, exported: bool) -> HashMap<String, u64> {
    let mut cmd = Command::new("nm");
    cmd.arg("--defined-only");
    if exported {
        cmd.arg("-D");
    }
    let out = cmd
        .arg(path)
        .output()
        .expect("nm (binutils) is installed by scripts/setup.sh");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, _, name) = (f.next()?, f.next()?, f.next()?);
            Some((name.to_string(), u64::from_str_radix(addr, 16).ok()?))
        })
        .collect()
}

/// binutils' `objdump -d` of `len` bytes from `address` in `path`, without raw bytes.
fn objdump(path: &Path, address: u64, len: u64) -> String {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(format!("--start-address={address:#x}"))
        .arg(format!("--stop-address={:#x}", address + len))
        .arg(path)
        .output()
        .expect("objdump (binutils) is installed by scripts/setup.sh");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The target of the one direct call from the function at `address` (`size` bytes) to another
/// function of `.text` that follows a line containing `after` (within three instructions; ""
/// for any), as binutils' `objdump` disassembles it (calls through the PLT print `@plt`, calls
/// through a register no address).
fn objdump_local_call(path: &Path, address: u64, size: u64, after: &str) -> Option<u64> {
    let body = objdump(path, address, size);
    let lines: Vec<&str> = body.lines().collect();
    let calls: Vec<u64> = lines
        .iter()
        .enumerate()
        .filter(|(n, l)| {
            let preceded = lines[n.saturating_sub(3)..*n]
                .iter()
                .any(|p| p.contains(after));
            l.contains("\tcall ") && !l.contains("@plt") && preceded
        })
        .map(|(_, l)| l)
        .filter_map(|l| {
            let target = l.split("call").nth(1)?.split_whitespace().next()?;
            u64::from_str_radix(target, 16).ok()
        })
        .collect();
    (calls.len() == 1).then(|| calls[0])
}

/// `pyusdt list --json PATH`: the file's report, and the exit status.
fn list(path: &Path) -> (Value, i32, String) {
    let out = pyusdt()
        .args(["list", "--json"])
        .arg(path)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    (
        v["files"][0].clone(),
        out.status.code().unwrap_or(-1),
        stderr,
    )
}

fn found(report: &Value) -> HashMap<String, (u64, String)> {
    report["hooks"]["found"]
        .as_array()
        .unwrap_or_else(|| panic!("no hooks: {report}"))
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_string(),
                (
                    h["address"].as_u64().unwrap(),
                    h["source"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

fn interpreter_version(python: &Path) -> String {
    let out = Command::new(python)
        .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn libpython(prefix: &Path, minor: u32) -> PathBuf {
    prefix.join(format!("lib/libpython3.{minor}.so.1.0"))
}

/// The 3.13.5 built like the images with PGO (scripts/python-matrix.sh).
fn pgo_python() -> PathBuf {
    matrix_cache().join("python-3.13-official-pgo/bin/python3.13")
}

/// Built like the official images: no markers, stripped to `.dynsym` (3.11, 3.13, and 3.13
/// with PGO as the images have it). Every hook point found is exported, at nm's address; the
/// internal functions are derived where objdump shows the wrappers call them; the debug offsets
/// say the interpreter's version on 3.13 and are absent on 3.11, which has none.
#[test]
fn stripped_builds_show_their_exported_hook_points() {
    let mut checked = 0;
    for (minor, variant) in [(11u32, "official"), (13, "official"), (13, "official-pgo")] {
        let prefix = matrix_cache().join(format!("python-3.{minor}-{variant}"));
        let python = prefix.join(format!("bin/python3.{minor}"));
        if !python.exists() {
            let why = format!(
                "{} missing: PYUSDT_MATRIX_VERSIONS=3.{minor}-{variant} bash \
                 scripts/python-matrix.sh builds it (scripts/setup.sh --deps-only does)",
                python.display()
            );
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("NOTE: {why}");
            continue;
        }
        let lib = libpython(&prefix, minor);
        let (report, code, stderr) = list(&lib);
        assert_eq!(code, 0, "traceable through hook points: exit 0\n{stderr}");
        assert_eq!(report["markers"].as_array().unwrap().len(), 0);
        let signals = &report["hooks"]["signals"];
        assert_eq!(signals[0]["signal"], "import", "{signals}");
        assert_eq!(signals[0]["through"], "PyObject_CallMethodObjArgs");
        assert_eq!(signals[0]["source"], "exported_symbol");
        // GC: through gc_collect_main, derived in two steps on 3.11, from two callers that
        // agree on 3.13.
        assert_eq!(signals[1]["signal"], "gc", "{signals}");
        assert_eq!(signals[1]["through"], "gc_collect_main", "{signals}");
        assert_eq!(signals[1]["source"], "derived");
        assert_eq!(signals[2]["signal"], "audit", "{signals}");
        assert_eq!(signals[2]["through"], "sys_audit_tstate");
        assert_eq!(signals[2]["source"], "derived");
        let hooks = found(&report);
        let exported = nm(&lib, true);
        let mut want = vec![
            "PyObject_CallMethodObjArgs",
            "PySys_Audit",
            "PyGC_Collect",
            "_PyRuntime",
        ];
        if minor >= 13 {
            want.push("_Py_HandlePending");
        }
        for name in &want {
            let (address, source) = hooks
                .get(*name)
                .unwrap_or_else(|| panic!("3.{minor}: {name} not found: {report}"));
            assert_eq!(source, "exported", "3.{minor}: {name}");
            assert_eq!(Some(address), exported.get(*name), "3.{minor}: {name}");
        }
        // sys_audit_tstate, derived from PySys_Audit's code: where objdump shows its call;
        // on 3.13 gc_collect_main too, from PyGC_Collect's (3.11 derives it in two steps).
        let size = |name: &str| {
            report["hooks"]["found"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["name"] == name)
                .and_then(|h| h["size"].as_u64())
                .unwrap()
        };
        let mut derived = vec![("sys_audit_tstate", "PySys_Audit", "")];
        if minor == 13 {
            derived.push(("gc_collect_main", "PyGC_Collect", "$0x2,%esi"));
        }
        for (name, from, after) in derived {
            let (address, source) = &hooks[name];
            assert_eq!(source, "derived", "3.{minor} {variant}: {name}");
            let call = objdump_local_call(&lib, exported[from], size(from), after);
            assert_eq!(Some(*address), call, "3.{minor} {variant}: {name}");
        }
        assert_eq!(hooks.len(), want.len() + 2, "3.{minor}: {report}");
        assert_eq!(hooks["gc_collect_main"].1, "derived");
        // 3.11 does not export _Py_HandlePending; nothing else is missing.
        let missing = report["hooks"]["missing"].to_string();
        let want_missing = if minor == 11 {
            r#"["_Py_HandlePending"]"#
        } else {
            "[]"
        };
        assert_eq!(missing, want_missing, "3.{minor}: {report}");
        let debug = &report["hooks"]["debug_offsets"];
        if minor >= 13 {
            assert_eq!(debug.as_str(), Some(interpreter_version(&python).as_str()));
        } else {
            assert!(debug.is_null(), "3.11 has no debug offsets: {debug}");
        }
        // Its executable holds nothing: pointed at the library.
        let (_, code, stderr) = list(&python);
        assert_eq!(code, 4);
        assert!(
            stderr.contains(&format!("nor its libpython {}", lib.display())),
            "{stderr}"
        );
        checked += 1;
    }
    eprintln!("checked {checked} stripped builds");
}

/// pyenv's builds keep `.symtab`: the internal functions are found there, and preferred to
/// the exported symbols for the exported ones too (same address). Checked on the pyenv
/// interpreters this machine carries, 3.11 and 3.13, when present.
#[test]
fn symbol_tables_give_the_internal_functions() {
    let Some(home) = std::env::var_os("HOME") else {
        return;
    };
    let versions = PathBuf::from(home).join(".pyenv/versions");
    let mut checked = 0;
    for (minor, dir) in [(11u32, "3.11.7"), (13, "3.13.0")] {
        let prefix = versions.join(dir);
        let lib = libpython(&prefix, minor);
        if !lib.exists() {
            eprintln!("NOTE: no pyenv {dir} ({}): not checked", lib.display());
            continue;
        }
        let (report, code, stderr) = list(&lib);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(report["hooks"]["signals"][0]["source"], "symbol_table");
        let hooks = found(&report);
        let symbols = nm(&lib, false);
        for name in [
            "gc_collect_main",
            "sys_audit_tstate",
            "PyGC_Collect",
            "_PyRuntime",
        ] {
            let (address, source) = hooks
                .get(name)
                .unwrap_or_else(|| panic!("pyenv {dir}: {name} not found: {report}"));
            assert_eq!(source, "symbol table", "pyenv {dir}: {name}");
            assert_eq!(Some(address), symbols.get(name), "pyenv {dir}: {name}");
        }
        let python = prefix.join(format!("bin/python3.{minor}"));
        let debug = &report["hooks"]["debug_offsets"];
        if minor >= 13 {
            assert_eq!(debug.as_str(), Some(interpreter_version(&python).as_str()));
        }
        checked += 1;
    }
    eprintln!("checked {checked} pyenv builds");
}

/// The audit hook's entry probe goes at the first instruction the kernel emulates (a push, a
/// one-byte nop, a direct jump or call), never single-stepped, as binutils' objdump reads the
/// function: at the entry where it is one (the images' builds, with frame pointers: `push
/// %rbp`); after `test %rdi,%rdi` at the `je` on pyenv's builds. Checked on every build here
/// without markers.
#[test]
fn audit_probes_go_where_the_kernel_emulates() {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let mut libs: Vec<PathBuf> = [
        "3.11.7/lib/libpython3.11.so.1.0",
        "3.12.1/lib/libpython3.12.so.1.0",
        "3.13.0/lib/libpython3.13.so.1.0",
    ]
    .iter()
    .map(|l| home.join(".pyenv/versions").join(l))
    .collect();
    for (minor, variant) in [(11u32, "official"), (13, "official"), (13, "official-pgo")] {
        let prefix = matrix_cache().join(format!("python-3.{minor}-{variant}"));
        libs.push(libpython(&prefix, minor));
    }
    let mut moved = 0;
    let mut checked = 0;
    for lib in libs.iter().filter(|l| l.exists()) {
        let (report, code, stderr) = list(lib);
        assert_eq!(code, 0, "{stderr}");
        let hook = report["hooks"]["found"]
            .as_array()
            .and_then(|a| a.iter().find(|h| h["name"] == "sys_audit_tstate"))
            .unwrap_or_else(|| panic!("{}: no sys_audit_tstate: {report}", lib.display()))
            .clone();
        let address = hook["address"].as_u64().unwrap();
        let code = objdump_instructions(lib, address, 32);
        let emulated = |mnemonic: &str| {
            mnemonic == "push"
                || mnemonic == "nop"
                || mnemonic == "call"
                || mnemonic.starts_with('j')
        };
        let first = code
            .iter()
            .position(|(_, m)| emulated(m))
            .unwrap_or_else(|| panic!("{}: {code:?}", lib.display()));
        // The straight line up to it: no branch before it.
        assert!(code[..first]
            .iter()
            .all(|(_, m)| !m.starts_with('j') && m != "ret"));
        let probe = &hook["entry_probe"];
        if first == 0 {
            assert!(probe.is_null(), "{}: {hook}", lib.display());
        } else {
            assert_eq!(
                probe["address"].as_u64(),
                Some(code[first].0),
                "{}",
                lib.display()
            );
            assert_eq!(probe["instruction"].as_str(), Some(code[first].1.as_str()));
            moved += 1;
        }
        checked += 1;
    }
    eprintln!("checked {checked} builds, the probe moved on {moved}");
    let pyenv_builds = libs[..3].iter().filter(|l| l.exists()).count();
    assert!(
        moved >= pyenv_builds,
        "pyenv's builds start with test %rdi,%rdi"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(
            checked >= 3,
            "the matrix's builds are made by scripts/setup.sh"
        );
    }
}

/// The instructions from `address` (`len` bytes) as objdump decodes them: address, mnemonic.
fn objdump_instructions(path: &Path, address: u64, len: u64) -> Vec<(u64, String)> {
    objdump(path, address, len)
        .lines()
        .filter_map(|l| {
            let (at, rest) = l.trim().split_once(":\t")?;
            let at = u64::from_str_radix(at, 16).ok()?;
            Some((at, rest.split_whitespace().next()?.to_string()))
        })
        .collect()
}

/// A build with markers is listed by its markers alone.
#[test]
fn builds_with_markers_have_no_hook_section() {
    let (report, code, stderr) = list(Path::new(SYSTEM_PYTHON));
    assert_eq!(code, 0, "{stderr}");
    assert!(report.get("hooks").is_none(), "{report}");
}

/// `doctor` on a running process of a build without markers names the file whose hook points
/// were looked for (the libpython, not the executable), the hook points with their source,
/// and what is traced through them.
#[test]
fn doctor_shows_a_running_processs_hook_points() {
    let Some(home) = std::env::var_os("HOME") else {
        return;
    };
    let prefix = PathBuf::from(home).join(".pyenv/versions/3.13.0");
    let python = prefix.join("bin/python3.13");
    if !python.exists() {
        eprintln!("NOTE: no pyenv 3.13.0 ({}): not checked", python.display());
        return;
    }
    let mut child = Reaped(
        Command::new(&python)
            .args([
                "-c",
                "import sys, time; print(1, flush=True); time.sleep(60)",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Running its program (its libpython mapped) once it printed.
    let mut first = [0u8; 1];
    std::io::Read::read_exact(child.0.stdout.as_mut().unwrap(), &mut first).unwrap();
    let pid = child.0.id();

    let me = diagnosis(pid).unwrap_or_else(|| panic!("PID {pid} not diagnosed"));
    assert_eq!(me["markers"], false, "{me}");
    assert_eq!(
        me["interpreter"].as_str(),
        Some(libpython(&prefix, 13).to_str().unwrap()),
        "{me}"
    );
    let points = me["hook_points"].as_array().unwrap();
    for name in ["gc_collect_main", "sys_audit_tstate", "_PyRuntime"] {
        assert!(
            points
                .iter()
                .any(|p| p["name"] == name && p["source"] == "symbol table"),
            "{name}: {me}"
        );
    }

    let out = pyusdt().arg("doctor").output().unwrap();
    let (stdout, _) = text(&out);
    let block: String = stdout
        .split("\nPID ")
        .find(|b| b.starts_with(&format!("{pid} ")))
        .unwrap_or_else(|| panic!("PID {pid}: {stdout}"))
        .to_string();
    assert!(
        block.contains("hook points  symbol table: ")
            && block.contains("traced at    import: PyObject_CallMethodObjArgs (symbol_table)"),
        "{block}"
    );
}

/// Imports: the (module, found, depth) records of `pyusdt run` on a build without markers,
/// seen at PyObject_CallMethodObjArgs, equal the import markers' on the same source built with
/// them, record for record (3.11.2: Debian's python3.11 and its source built like the official
/// images; 3.13.5: the matrix's --with-dtrace and official-like builds), and every one names
/// its source. The workload imports packages, submodules, C extensions, a module that does
/// not exist and one by importlib, from a thread too.
#[test]
fn imports_without_markers_equal_the_markers_of_the_same_source() {
    if !require_bpf("imports_without_markers_equal_the_markers_of_the_same_source") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.py");
    std::fs::write(
        &app,
        "import json, decimal, fractions, threading, importlib\n\
         try:\n    import no_such_module_pyusdt\nexcept ImportError:\n    pass\n\
         importlib.import_module('html.parser')\n\
         t = threading.Thread(target=lambda: __import__('csv'))\nt.start(); t.join()\n\
         print(len(json.dumps({'a': 1})))\n",
    )
    .unwrap();
    let pairs = [
        (
            PathBuf::from(SYSTEM_PYTHON),
            matrix_cache().join("python-3.11-official/bin/python3.11"),
        ),
        (
            matrix_cache().join("python-3.13/bin/python3.13"),
            matrix_cache().join("python-3.13-official/bin/python3.13"),
        ),
        (
            matrix_cache().join("python-3.13/bin/python3.13"),
            pgo_python(),
        ),
    ];
    let mut checked = 0;
    for (with, without) in &pairs {
        if !with.exists() || !without.exists() {
            let why = format!(
                "{} or {} missing: scripts/setup.sh --deps-only builds them",
                with.display(),
                without.display()
            );
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("NOTE: {why}");
            continue;
        }
        let markers = imports_of(with, &app, dir.path());
        let hooks = imports_of(without, &app, dir.path());
        assert!(markers.len() > 40, "{}: {markers:?}", with.display());
        assert!(markers.iter().all(|(.., source)| source == "usdt"));
        assert!(hooks.iter().all(|(.., source)| source == "exported_symbol"));
        let strip = |v: &[(String, bool, u64, String)]| {
            v.iter()
                .map(|(m, f, d, _)| (m.clone(), *f, *d))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            strip(&markers),
            strip(&hooks),
            "{} vs {}",
            with.display(),
            without.display()
        );
        assert!(hooks
            .iter()
            .any(|(m, f, ..)| m == "no_such_module_pyusdt" && !f));
        assert!(hooks.iter().any(|(m, ..)| m == "csv"));
        eprintln!(
            "{} vs {}: {} import records equal",
            with.display(),
            without.display(),
            hooks.len()
        );
        checked += 1;
    }
    eprintln!("checked {checked} pairs");
}

/// `pyusdt run -o` of `python -I -S app`: its import records as (module, found, depth, source).
fn imports_of(python: &Path, app: &Path, dir: &Path) -> Vec<(String, bool, u64, String)> {
    let out_file = dir.join("out.jsonl");
    let out = pyusdt()
        .args(["run", "-q", "-o"])
        .arg(&out_file)
        .arg("--")
        .arg(python)
        .args(["-I", "-S"])
        .arg(app)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        python.display(),
        text(&out).1
    );
    read_jsonl(&out_file)
        .iter()
        .filter(|r| r["type"] == "import")
        .map(|r| {
            (
                r["module"].as_str().unwrap().to_string(),
                r["found"].as_bool().unwrap(),
                r["depth"].as_u64().unwrap(),
                r["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Audit: the event names of `pyusdt run --probes audit` on a build without markers, seen at
/// sys_audit_tstate (derived from PySys_Audit's code, or from pyenv's symbol table), equal
/// CPython's own: those an audit hook the workload adds sees (`sys.addaudithook`), in order,
/// then the two the interpreter raises at exit after clearing the hooks. On 3.13.5 the whole
/// sequence, start-up included, also equals the markers' on the same source built with them
/// (3.11: Debian's build raises one more `import` than the official-like one, in CPython's own
/// count too, so the two are held to their own ground truth only).
#[test]
fn audit_without_markers_equals_cpythons_own_events() {
    if !require_bpf("audit_without_markers_equals_cpythons_own_events") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.py");
    std::fs::write(
        &app,
        "import sys, json, os\n\
         seen = []\n\
         sys.addaudithook(lambda e, a: seen.append(e))\n\
         import decimal, fractions\n\
         exec('x = 1')\n\
         compile('y = 2', 'f', 'exec')\n\
         sys._getframe()\n\
         open(os.devnull).close()\n\
         for i in range(50):\n    sys.audit('pyusdt.test', i)\n\
         with open(sys.argv[1], 'w') as f:\n    json.dump(seen, f)\n",
    )
    .unwrap();
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let builds = [
        (matrix_cache().join("python-3.13/bin/python3.13"), "usdt"),
        (
            matrix_cache().join("python-3.13-official/bin/python3.13"),
            "derived",
        ),
        (pgo_python(), "derived"),
        (PathBuf::from(SYSTEM_PYTHON), "usdt"),
        (
            matrix_cache().join("python-3.11-official/bin/python3.11"),
            "derived",
        ),
        (
            home.join(".pyenv/versions/3.13.0/bin/python3.13"),
            "symbol_table",
        ),
        (pgo_python(), "derived"),
    ];
    let mut seen = HashMap::new();
    for (python, source) in &builds {
        if !python.exists() {
            let why = format!("{}: missing", python.display());
            let pyenv = python.starts_with(&home);
            assert!(
                pyenv || std::env::var("CI").as_deref() != Ok("true"),
                "{why}"
            );
            eprintln!("NOTE: {why}");
            continue;
        }
        let truth_file = dir.path().join("truth.json");
        let events = audit_of(python, &app, &truth_file, dir.path());
        assert!(
            events.iter().all(|(_, s)| s == source),
            "{}: {events:?}",
            python.display()
        );
        let names: Vec<String> = events.into_iter().map(|(n, _)| n).collect();
        let truth: Vec<String> =
            serde_json::from_str(&std::fs::read_to_string(&truth_file).unwrap()).unwrap();
        let hook_added = names
            .iter()
            .position(|n| n == "sys.addaudithook")
            .unwrap_or_else(|| panic!("{}: {names:?}", python.display()));
        let mut expected = truth.clone();
        expected.extend(
            [
                "cpython.PyInterpreterState_Clear",
                "cpython._PySys_ClearAuditHooks",
            ]
            .map(String::from),
        );
        assert_eq!(
            names[hook_added + 1..],
            expected[..],
            "{}",
            python.display()
        );
        assert_eq!(
            truth.iter().filter(|n| *n == "pyusdt.test").count(),
            50,
            "sys.audit() from Python is seen"
        );
        eprintln!(
            "{}: {} audit events ({source}), the {} after the hook equal CPython's",
            python.display(),
            names.len(),
            expected.len()
        );
        seen.insert(python.clone(), names);
    }
    for without in [&builds[1].0, &builds[2].0] {
        if let (Some(a), Some(b)) = (seen.get(&builds[0].0), seen.get(without)) {
            assert_eq!(a, b, "3.13.5 with markers and {}", without.display());
        }
    }
}

/// `pyusdt run --probes audit -o` of `python -I -S app TRUTH`: its audit records as
/// (name, source).
fn audit_of(python: &Path, app: &Path, truth: &Path, dir: &Path) -> Vec<(String, String)> {
    let out_file = dir.join("audit.jsonl");
    let out = pyusdt()
        .args(["run", "-q", "--probes", "audit", "-o"])
        .arg(&out_file)
        .arg("--")
        .arg(python)
        .args(["-I", "-S"])
        .arg(app)
        .arg(truth)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        python.display(),
        text(&out).1
    );
    read_jsonl(&out_file)
        .iter()
        .filter(|r| r["type"] == "audit")
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// GC: the (generation, collected) records of `pyusdt run --probes gc` on a build without
/// markers, seen at gc_collect_main (derived from PyGC_Collect's code, through
/// gc_collect_with_callback on the official-like 3.11.2, checked against _Py_HandlePending's on
/// the official-like 3.13.5; from the symbol table on pyenv's 3.11.7, 3.12.1 and 3.13.0; on
/// 3.13 read by the GC statistics), hold CPython's own: what `gc.callbacks` reports
/// (generation, collected + uncollectable) while the program listens, in order and without a
/// gap; the records before and after are the collections of start-up and shutdown. On 3.11.2
/// and 3.13.5 the whole sequence equals the markers' of the same source built with them.
#[test]
fn gc_without_markers_equals_the_markers_and_gc_callbacks() {
    if !require_bpf("gc_without_markers_equals_the_markers_and_gc_callbacks") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.py");
    std::fs::write(
        &app,
        "import gc, sys, json\n\
         seen = []\n\
         def cb(phase, info):\n\
         \x20   if phase == 'stop':\n\
         \x20       seen.append((info['generation'], info['collected'] + info['uncollectable']))\n\
         gc.callbacks.append(cb)\n\
         class Node:\n    other = None\n\
         for k in range(3):\n\
         \x20   for i in range(100 * (k + 1)):\n\
         \x20       a, b = Node(), Node(); a.other = b; b.other = a\n\
         \x20   gc.collect(k)\n\
         junk = []\n\
         for i in range(100000):\n\
         \x20   junk.append({'i': i, 'l': [i]})\n\
         \x20   if i % 3 == 0:\n\
         \x20       a = Node(); a.other = a\n\
         gc.callbacks.remove(cb)\n\
         with open(sys.argv[1], 'w') as f:\n    json.dump(seen, f)\n",
    )
    .unwrap();
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let builds = [
        (PathBuf::from(SYSTEM_PYTHON), "usdt"),
        (
            matrix_cache().join("python-3.11-official/bin/python3.11"),
            "derived",
        ),
        (matrix_cache().join("python-3.13/bin/python3.13"), "usdt"),
        (
            matrix_cache().join("python-3.13-official/bin/python3.13"),
            "derived",
        ),
        (
            home.join(".pyenv/versions/3.11.7/bin/python3.11"),
            "symbol_table",
        ),
        (
            home.join(".pyenv/versions/3.12.1/bin/python3.12"),
            "symbol_table",
        ),
        (
            home.join(".pyenv/versions/3.13.0/bin/python3.13"),
            "symbol_table",
        ),
        (pgo_python(), "derived"),
    ];
    let mut seen = HashMap::new();
    for (python, source) in &builds {
        if !python.exists() {
            let why = format!("{}: missing", python.display());
            let pyenv = python.starts_with(&home);
            assert!(
                pyenv || std::env::var("CI").as_deref() != Ok("true"),
                "{why}"
            );
            eprintln!("NOTE: {why}");
            continue;
        }
        let truth_file = dir.path().join("truth.json");
        let records = gc_of(python, &app, &truth_file, dir.path());
        assert!(
            records.iter().all(|(.., s)| s == source),
            "{}: {records:?}",
            python.display()
        );
        let pairs: Vec<(i64, i64)> = records.iter().map(|(g, c, _)| (*g, *c)).collect();
        let truth: Vec<(i64, i64)> =
            serde_json::from_str(&std::fs::read_to_string(&truth_file).unwrap()).unwrap();
        assert!(truth.len() > 100, "{}: {truth:?}", python.display());
        // The three explicit collections: 200, 400, 600 objects of cycles (and what else was
        // garbage then).
        assert_eq!(
            truth[..3].iter().map(|t| t.0).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        let at = pairs
            .windows(truth.len())
            .position(|w| w == truth.as_slice())
            .unwrap_or_else(|| {
                panic!(
                    "{}: gc.callbacks' {} collections are not a run of pyusdt's {}",
                    python.display(),
                    truth.len(),
                    pairs.len()
                )
            });
        eprintln!(
            "{}: {} collections ({source}), the {} of gc.callbacks from the {}th on",
            python.display(),
            pairs.len(),
            truth.len(),
            at + 1
        );
        seen.insert(python.clone(), pairs);
    }
    // With and without markers: 3.11.2, 3.13.5, 3.13.5 with PGO.
    for (with, without) in [(0, 1), (2, 3), (2, 7)] {
        let (with, without) = (&builds[with].0, &builds[without].0);
        if let (Some(a), Some(b)) = (seen.get(with), seen.get(without)) {
            assert_eq!(a, b, "{} and {}", with.display(), without.display());
        }
    }
}

/// `pyusdt run --probes gc -o` of `python -I -S app TRUTH`: its GC records as (generation,
/// collected, source).
fn gc_of(python: &Path, app: &Path, truth: &Path, dir: &Path) -> Vec<(i64, i64, String)> {
    let out_file = dir.join("gc.jsonl");
    let out = pyusdt()
        .args(["run", "-q", "--probes", "gc", "-o"])
        .arg(&out_file)
        .arg("--")
        .arg(python)
        .args(["-I", "-S"])
        .arg(app)
        .arg(truth)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        python.display(),
        text(&out).1
    );
    read_jsonl(&out_file)
        .iter()
        .filter(|r| r["type"] == "gc")
        .map(|r| {
            (
                r["generation"].as_i64().unwrap(),
                r["collected"].as_i64().unwrap(),
                r["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `pyusdt agent` (an unprivileged user once attached) traces a process of the official-like
/// 3.13.5 started after it: its imports, collections and audit events, each seen at the hook
/// point its source names. The program imports and collects after a pause, once the agent has
/// had the time to attach to its interpreter file.
#[test]
fn agent_traces_builds_without_markers() {
    if !require_bpf("agent_traces_builds_without_markers") {
        return;
    }
    let python = matrix_cache().join("python-3.13-official/bin/python3.13");
    if !python.exists() {
        let why = format!("{} missing: scripts/setup.sh builds it", python.display());
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("NOTE: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("agent.jsonl");
    let out = out_file.to_str().unwrap();
    let (mut agent, log) = start_agent(&["--probes", "gc,import,audit", "-o", out]);
    wait_for_line(&log, "tracing ");
    let status = Command::new(&python)
        .args([
            "-I",
            "-S",
            "-c",
            "import time; time.sleep(1); import json, fractions, gc; gc.collect(); id(1)",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(std::time::Duration::from_secs(1));
    let stopped = stop(
        &mut agent.0,
        libc::SIGTERM,
        std::time::Duration::from_secs(10),
    );
    assert!(stopped.success());
    let records = read_jsonl(&out_file);
    let seen = |kind: &str, source: &str| {
        records
            .iter()
            .filter(|r| r["type"] == kind && r["source"] == source)
            .count()
    };
    let summary = format!(
        "import {} gc {} audit {}",
        seen("import", "exported_symbol"),
        seen("gc", "derived"),
        seen("audit", "derived")
    );
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "import" && r["module"] == "fractions"),
        "{summary}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "gc" && r["generation"] == 2 && r["source"] == "derived"),
        "{summary}"
    );
    assert!(
        records.iter().any(|r| r["type"] == "audit"
            && r["name"] == "builtins.id"
            && r["source"] == "derived"),
        "{summary}"
    );
    eprintln!("agent on 3.13.5 official-like: {summary}");
}
