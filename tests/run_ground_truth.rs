//! `pyusdt run` against a workload's own ground truth (gc.callbacks, sys.addaudithook).
mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;

fn events<'a>(records: &'a [Value], kind: &str, pid: u64) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == kind && r["pid"].as_u64() == Some(pid))
        .collect()
}

#[test]
fn run_matches_the_workloads_ground_truth() {
    if !require_bpf("run_matches_the_workloads_ground_truth") {
        return;
    }
    let versions = interpreters();
    for interp in &versions {
        check_ground_truth(interp);
    }
    let covered: Vec<String> = versions.iter().map(|i| format!("3.{}", i.minor)).collect();
    eprintln!("ground truth checked on CPython {}", covered.join(", "));
}

fn check_ground_truth(interp: &Interpreter) {
    let dir = tempfile::tempdir().unwrap();
    // A Python process that is not the command's descendant: `run` must not report it, although
    // it uses the same interpreter file and imports and collects throughout.
    let bystander = Reaped(
        std::process::Command::new(SYSTEM_PYTHON)
            .args(["-c", "import gc, time\nwhile True:\n    try:\n        import pyusdt_bystander\n    except ImportError:\n        pass\n    gc.collect()\n    time.sleep(0.01)\n"])
            .spawn()
            .unwrap(),
    );
    let truth_path = dir.path().join("truth.json");
    let out_path = dir.path().join("events.jsonl");
    let out = pyusdt_on_fresh_host()
        .args(["run", "--probes", "gc,import,audit", "--quiet", "--output"])
        .arg(&out_path)
        .arg("--")
        .arg(&interp.python)
        .arg(workload("ground_truth.py"))
        .arg(&truth_path)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    let v = interp.minor;
    assert!(out.status.success(), "3.{v}: pyusdt run failed: {stderr}");
    assert!(
        stderr.contains("events received"),
        "no summary on stderr: {stderr}"
    );

    let truth: Value =
        serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    let records = read_jsonl(&out_path);
    let pid = truth["pid"].as_u64().unwrap();
    let main_tid = truth["main_tid"].as_u64().unwrap();

    // The window: between the begin and end sentinels of the main thread.
    let audits = events(&records, "audit", pid);
    let at = |name: &str| {
        audits
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("sentinel {name} not traced"))["end_ns"]
            .as_u64()
            .unwrap()
    };
    let (begin, end) = (at("pyusdt.truth.begin"), at("pyusdt.truth.end"));
    let in_window = |r: &&&Value| {
        let t = r["end_ns"].as_u64().unwrap();
        t > begin && t < end
    };

    // GC: same collections, same generation and count, in order, per thread.
    let mut traced_gc: BTreeMap<u64, Vec<(i64, i64)>> = BTreeMap::new();
    for r in events(&records, "gc", pid).iter().filter(in_window) {
        assert!(
            r["duration_ns"].as_u64().is_some(),
            "gc without duration: {r}"
        );
        traced_gc
            .entry(r["tid"].as_u64().unwrap())
            .or_default()
            .push((
                r["generation"].as_i64().unwrap(),
                r["collected"].as_i64().unwrap(),
            ));
    }
    let mut truth_gc: BTreeMap<u64, Vec<(i64, i64)>> = BTreeMap::new();
    for g in truth["gc"].as_array().unwrap() {
        truth_gc
            .entry(g["tid"].as_u64().unwrap())
            .or_default()
            .push((
                g["generation"].as_i64().unwrap(),
                g["collected"].as_i64().unwrap(),
            ));
    }
    assert_eq!(truth_gc.len(), 2, "the workload collects on two threads");
    assert!(
        truth_gc.values().flatten().any(|&(_, c)| c > 0),
        "no garbage collected"
    );
    assert_eq!(
        traced_gc, truth_gc,
        "3.{v}: GC per thread differs from gc.callbacks"
    );

    // Audit: same names, same order, per thread.
    let mut traced_audit: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for r in audits.iter().filter(in_window) {
        traced_audit
            .entry(r["tid"].as_u64().unwrap())
            .or_default()
            .push(r["name"].as_str().unwrap().to_string());
    }
    let mut truth_audit: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for a in truth["audit"].as_array().unwrap() {
        truth_audit
            .entry(a["tid"].as_u64().unwrap())
            .or_default()
            .push(a["name"].as_str().unwrap().to_string());
    }
    assert!(truth_audit[&main_tid].iter().any(|n| n == "open"));
    assert_eq!(
        traced_audit, truth_audit,
        "3.{v}: audit events differ from sys.addaudithook's"
    );

    // Imports: every attempted import is traced on its thread with the right found flag;
    // dotted names bring their parents; every traced found module ended up in sys.modules.
    let imports: Vec<_> = events(&records, "import", pid)
        .into_iter()
        .filter(|r| in_window(&r))
        .collect();
    for t in truth["imports"].as_array().unwrap() {
        let hit = imports
            .iter()
            .find(|r| r["module"] == t["module"] && r["tid"] == t["tid"])
            .unwrap_or_else(|| panic!("import {} not traced", t["module"]));
        assert_eq!(hit["found"], t["found"], "found flag of {}", t["module"]);
        assert!(hit["duration_ns"].as_u64().is_some());
    }
    for parent in ["xml", "xml.dom"] {
        assert!(
            imports.iter().any(|r| r["module"] == parent),
            "parent {parent} not traced"
        );
    }
    let loaded: Vec<&str> = truth["modules_loaded"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for r in &imports {
        let m = r["module"].as_str().unwrap();
        assert_eq!(
            r["found"].as_bool().unwrap(),
            loaded.contains(&m),
            "found flag of {m}"
        );
    }
    assert!(
        imports.iter().any(|r| r["found"] == false),
        "no not-found import traced"
    );

    // Nesting: importing xml.dom.minidom imports its missing parents from inside (through
    // builtins.__import__), so xml's import runs within xml.dom's, within xml.dom.minidom's;
    // each is one level deeper and within the enclosing import's time.
    let span = |m: &str| {
        let r = imports.iter().find(|r| r["module"] == m).unwrap();
        (
            r["start_ns"].as_u64().unwrap(),
            r["end_ns"].as_u64().unwrap(),
            r["depth"].as_u64().unwrap(),
        )
    };
    let (xml, dom, minidom) = (span("xml"), span("xml.dom"), span("xml.dom.minidom"));
    assert_eq!(minidom.2 + 1, dom.2, "xml.dom is nested in xml.dom.minidom");
    assert_eq!(dom.2 + 1, xml.2, "xml is nested in xml.dom");
    assert!(
        minidom.0 < dom.0 && dom.1 < minidom.1,
        "{minidom:?} {dom:?}"
    );
    assert!(dom.0 < xml.0 && xml.1 < dom.1, "{dom:?} {xml:?}");

    // Start-up: probes were live before the first Python instruction (site is imported then).
    assert!(
        events(&records, "import", pid)
            .iter()
            .any(|r| r["module"] == "site"),
        "start-up import of site was missed"
    );

    // The Python child the workload started was followed from its start.
    let child = truth["child_pid"].as_u64().unwrap();
    assert!(
        !events(&records, "gc", child).is_empty(),
        "child's gc.collect() not traced"
    );
    assert!(events(&records, "import", child)
        .iter()
        .any(|r| r["module"] == "site"));

    // Nothing from outside the command's process tree.
    let outsider = bystander.0.id() as u64;
    assert!(
        records.iter().all(|r| r["pid"].as_u64() != Some(outsider)),
        "bystander traced"
    );
    assert!(!records.iter().any(|r| r["module"] == "pyusdt_bystander"));

    // Nothing lost.
    let s = summary(&records);
    assert_eq!(
        s["dropped"],
        serde_json::json!({"gc": 0, "import": 0, "audit": 0})
    );
    assert_eq!(s["unpaired_gc_starts"], 0);
}

/// An audit event raised inside an import is nested in it (depth 1), one raised after it is
/// not (depth 0): the BPF side looks at the thread's stack only while some import is in
/// progress, and knows the depth is 0 otherwise.
#[test]
fn audit_events_know_the_imports_they_are_raised_in() {
    if !require_bpf("audit_events_know_the_imports_they_are_raised_in") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pyusdt_audit_inside.py"),
        "import sys\nsys.audit('pyusdt.inside')\n",
    )
    .unwrap();
    let out_path = dir.path().join("events.jsonl");
    let script = format!(
        "import sys\nsys.path.insert(0, {:?})\nimport pyusdt_audit_inside\nsys.audit('pyusdt.after')\nid(1)\n",
        dir.path().display().to_string()
    );
    let out = pyusdt()
        .args(["run", "--probes", "import,audit", "--quiet", "--output"])
        .arg(&out_path)
        .args(["--", SYSTEM_PYTHON, "-c", &script])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "pyusdt run failed: {stderr}");
    let records = read_jsonl(&out_path);
    let depth_of = |name: &str| {
        records
            .iter()
            .find(|r| r["type"] == "audit" && r["name"] == name)
            .unwrap_or_else(|| panic!("{name} not traced"))["depth"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(depth_of("pyusdt.inside"), 1);
    assert_eq!(depth_of("pyusdt.after"), 0);
    // A literal-named event (sent by address) after the import, at depth 0 too.
    let ids: Vec<u64> = records
        .iter()
        .filter(|r| r["type"] == "audit" && r["name"] == "builtins.id")
        .map(|r| r["depth"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0], "{records:?}");
}
