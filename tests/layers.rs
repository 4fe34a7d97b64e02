//! The layering of src/: a module imports only from its own layer or the layers below it.
//! Reads every `crate::…` path of src/ (no root, no BPF) and fails on an upward import, so the
//! data path stays visible in the tree:
//!
//! discover < attach < decode < model < report/export < pipeline < commands
//!
//! Utilities are importable from any layer; their own imports are held to the rank given.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module of src/ (a file or a directory), its rank, and whether any layer may
/// import it (a utility).
const MODULES: &[(&str, u8, bool)] = &[
    // The skeleton's types and the BPF ABI (abi.rs: its values as user space reads them), the human formatting of counts and untrusted
    // strings, the marker names, the overhead budget's arithmetic, the privilege drop.
    ("bpf", 0, true),
    ("abi", 0, true),
    ("text", 0, true),
    ("probes", 0, true),
    ("budget", 0, true),
    ("privileges", 0, true),
    ("globs", 0, true),
    // Which files carry markers; Kubernetes pod metadata (read like /proc: a source).
    ("discover", 1, false),
    ("k8s", 1, false),
    // BPF loaded and attached; the audit names read from the attached files for it.
    ("attach", 2, false),
    ("audit_names", 2, false),
    // The budget's memory between runs: its file is opened as discover opens files.
    ("budget_memory", 2, false),
    // The command line's types and errors: they name attach's and discover's errors and
    // limits, and every layer above may return them.
    ("exit", 2, true),
    ("cli", 2, true),
    ("preflight", 2, true),
    ("decode", 3, false),
    ("model", 4, false),
    ("report", 5, false),
    ("export", 5, false),
    ("serve", 5, false),
    ("pipeline", 6, false),
    ("commands", 7, false),
];

/// Upward imports that remain, each with why; the test also fails when one is no longer
/// needed, so that this list only shrinks. (importer, imported module path prefix, why)
const KNOWN: &[(&str, &str, &str)] = &[
    (
        "attach",
        "crate::model::metrics::",
        "the in-kernel aggregates use the model's histogram: read into its type \
         (KernelDurations), bucketed with its bounds (written into the BPF side at load)",
    ),
    (
        "audit_names",
        "crate::model::FastHash",
        "the per-event hasher is defined with the model",
    ),
    (
        "decode",
        "crate::model::location",
        "a decoded call borrows its interned code location, built with the model's wire \
         encoding",
    ),
];

fn rank(module: &str) -> Option<(u8, bool)> {
    MODULES
        .iter()
        .find(|(m, _, _)| *m == module)
        .map(|&(_, r, u)| (r, u))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of src/ belongs to (`src/model/spans.rs` → `model`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src/");
    let first = rel.components().next().expect("non-empty path");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// Every `crate::a::b::…` path in the code (comments skipped), with `use crate::{x, y}`
/// groups expanded to their first segment.
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i..];
            if let Some(group) = tail.strip_prefix("crate::{") {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let item = item.trim();
                    if !item.is_empty() {
                        out.push(format!("crate::{item}"));
                    }
                }
            } else {
                let end = tail
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(tail.len());
                out.push(tail[..end].to_string());
            }
            rest = &tail["crate::".len()..];
        }
    }
    out
}

#[test]
fn imports_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut used_exceptions = BTreeSet::new();
    for file in &files {
        let importer = module_of(&src, file);
        if importer == "main" || importer == "lib" {
            continue; // the binary and the crate root see everything
        }
        let Some((from, _)) = rank(&importer) else {
            violations.push(format!(
                "{}: module `{importer}` has no layer: add it to MODULES in tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("source is readable");
        for path in crate_paths(&text) {
            let target = path["crate::".len()..]
                .split("::")
                .next()
                .unwrap_or("")
                .to_string();
            if target.is_empty() || target == importer {
                continue;
            }
            let Some((to, utility)) = rank(&target) else {
                violations.push(format!("{}: `{path}`: unknown module", file.display()));
                continue;
            };
            if utility || to <= from {
                continue;
            }
            if let Some(k) = KNOWN
                .iter()
                .position(|(m, prefix, _)| *m == importer && path.starts_with(prefix))
            {
                used_exceptions.insert(k);
                continue;
            }
            violations.push(format!(
                "{}: `{importer}` (layer {from}) imports `{path}` (layer {to}): move the \
                 shared piece down, or the code up",
                file.display()
            ));
        }
    }
    for (k, (m, prefix, _)) in KNOWN.iter().enumerate() {
        if !used_exceptions.contains(&k) {
            violations.push(format!(
                "the known exception `{m}` → `{prefix}` is no longer needed: remove it from KNOWN"
            ));
        }
    }
    assert!(violations.is_empty(), "\n{}", violations.join("\n"));
}

#[test]
fn the_parser_sees_grouped_and_inline_paths() {
    let paths = crate_paths(
        "use crate::{model, report::Sinks};\n// crate::commands in a comment\n\
         let x = crate::decode::c_string(&v);",
    );
    assert_eq!(
        paths,
        [
            "crate::model",
            "crate::report::Sinks",
            "crate::decode::c_string"
        ]
    );
}

#[test]
fn an_upward_import_is_caught() {
    // report (5) importing the pipeline (6) is what moved the sampling table into the model.
    let (report, _) = rank("report").expect("report has a layer");
    let (pipeline, utility) = rank("pipeline").expect("pipeline has a layer");
    assert!(pipeline > report && !utility);
}
