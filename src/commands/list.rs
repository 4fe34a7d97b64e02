//! `pyusdt list`: the markers of a file or process, as `readelf -n` / `dtrace -l` users expect,
//! plus what can actually fire on that CPython version.
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::cli::ListArgs;
use crate::discover::entry_probe::EntryProbe;
use crate::discover::process;
use crate::discover::stapsdt::ObjectKind;
use crate::discover::{hooks, Binary, DiscoverError, NO_MARKERS_HINT};
use crate::exit::{CliError, CliResult, Exit};

#[derive(Serialize)]
struct FileReport<'a> {
    path: &'a std::path::Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    kind: ObjectKind,
    cpython_version: Option<String>,
    stapsdt_base: Option<u64>,
    markers: Vec<MarkerReport<'a>>,
    /// CPython markers this file lacks, with why (e.g. 3.12+ has no function markers).
    absent: Vec<AbsentMarker>,
    /// A CPython without markers: the functions and data that could stand in for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    hooks: Option<HooksReport>,
}

#[derive(Serialize)]
struct HooksReport {
    found: Vec<HookReport>,
    /// `_PyRuntime`'s debug offsets (3.13+): the version they give.
    debug_offsets: Option<String>,
    /// The hook points looked for and not found.
    missing: Vec<&'static str>,
    /// What is traced through them, per signal, or why not.
    signals: Vec<SignalReport>,
}

#[derive(Serialize)]
struct SignalReport {
    /// `import`, `gc`, `audit`.
    signal: &'static str,
    traced: bool,
    /// The function probed.
    #[serde(skip_serializing_if = "Option::is_none")]
    through: Option<&'static str>,
    /// Its source, as events carry it (`symbol_table`, `exported_symbol`, `derived`).
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    why_not: Option<String>,
}

impl SignalReport {
    fn of(signal: &'static str, site: Result<hooks::Site, &String>) -> SignalReport {
        match site {
            Ok(site) => SignalReport {
                signal,
                traced: true,
                through: Some(site.symbol),
                source: Some(site.source.signal().label()),
                why_not: None,
            },
            Err(why) => SignalReport {
                signal,
                traced: false,
                through: None,
                source: None,
                why_not: Some(why.clone()),
            },
        }
    }
}

#[derive(Serialize)]
struct HookReport {
    name: &'static str,
    address: u64,
    size: u64,
    source: &'static str,
    gives: &'static str,
    /// Where its entry probe goes when not at its first byte, and the instruction there
    /// (src/discover/entry_probe.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    entry_probe: Option<EntryProbe>,
}

#[derive(Serialize)]
struct AbsentMarker {
    name: &'static str,
    note: String,
}

#[derive(Serialize)]
struct MarkerReport<'a> {
    #[serde(flatten)]
    marker: &'a crate::discover::Marker,
    /// `fires`, `line-mode-only`, `unverified`, `unknown-version`; absent for other providers.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

pub fn run(args: &ListArgs) -> CliResult<i32> {
    let (files, pid) = match (&args.path, args.pid) {
        (Some(path), _) => (vec![path.clone()], None),
        (None, Some(pid)) => (process::files_of(pid)?.via_proc_root(), Some(pid)),
        (None, None) => return Err(CliError::new(Exit::Usage, "give a PATH or --pid PID")),
    };
    let binaries = open_all(&files, pid)?;
    let reports = binaries
        .iter()
        .map(|b| report(b, pid))
        .collect::<Result<Vec<FileReport<'_>>, _>>()?;

    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "files": reports }))
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write_tables(&mut out, &reports)
    };
    // A closed pipe (`| head`) is not an error worth a message.
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(CliError::new(
                Exit::Failure,
                format!("writing the listing: {e}"),
            ));
        }
    }

    if binaries.iter().any(Binary::traceable) {
        return Ok(0);
    }
    // A --enable-shared interpreter: point at the library that has the markers.
    if let Some(lib) = binaries.iter().find_map(Binary::linked_libpython) {
        let lib_file = Binary::open(&lib);
        if lib_file.as_ref().is_ok_and(|l| l.markerless) {
            return Err(CliError::new(
                Exit::NoMarkers,
                format!(
                    "{} has no CPython markers, nor its libpython {}, whose hook points stand \
                     in for some of them: run `pyusdt list {}`. {NO_MARKERS_HINT}",
                    files[0].display(),
                    lib.display(),
                    lib.display()
                ),
            ));
        }
        if lib_file.is_ok_and(|l| l.has_python_markers()) {
            return Err(CliError::new(
                Exit::NoMarkers,
                format!(
                    "{} has no CPython markers itself: it is linked with {}, which has them \
                     (a --enable-shared build): run `pyusdt list {}`",
                    files[0].display(),
                    lib.display(),
                    lib.display()
                ),
            ));
        }
    }
    let what = match pid {
        Some(pid) => format!("PID {pid} uses no interpreter file with CPython markers"),
        None => format!("{} has no CPython markers", files[0].display()),
    };
    Err(CliError::new(
        Exit::NoMarkers,
        format!("{what}. {NO_MARKERS_HINT}"),
    ))
}

/// Opens the files of a listing; for a PID, a process must look like Python at least by name.
fn open_all(files: &[PathBuf], pid: Option<i32>) -> CliResult<Vec<Binary>> {
    let mut binaries = Vec::new();
    for (i, path) in files.iter().enumerate() {
        match Binary::open(path) {
            Ok(b) => binaries.push(b),
            // For a PID only the executable must open: libraries are best effort.
            Err(e) if pid.is_none() || i == 0 => return Err(e.into()),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    if let Some(pid) = pid {
        let looks_python = binaries.iter().any(|b| {
            b.has_python_markers()
                || b.version.is_some()
                || b.path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(process::is_python_name)
        });
        if !looks_python {
            let exe = files[0].display().to_string();
            return Err(process::ProcessError::NotPython { pid, exe }.into());
        }
    }
    Ok(binaries)
}

fn report(b: &Binary, pid: Option<i32>) -> Result<FileReport<'_>, DiscoverError> {
    let hooks = b.hooks()?;
    let signals = b.hook_plan().map_or_else(Vec::new, |plan| {
        vec![
            SignalReport::of("import", plan.imports.as_ref().map(|i| i.site)),
            SignalReport::of("gc", plan.gc.as_ref().map(|g| g.site)),
            SignalReport::of("audit", plan.audit.as_ref().copied()),
        ]
    });
    Ok(FileReport {
        path: &b.path,
        pid,
        kind: b.notes.kind,
        cpython_version: b.version.map(|v| v.to_string()),
        stapsdt_base: b.notes.stapsdt_base,
        markers: b
            .notes
            .markers
            .iter()
            .map(|m| {
                let python = m.provider == crate::discover::PROVIDER;
                let firing = b.firing(&m.name);
                MarkerReport {
                    marker: m,
                    status: python.then(|| firing.status()),
                    note: python.then(|| firing.explain(&m.name, b.version)),
                }
            })
            .collect(),
        absent: if b.has_python_markers() {
            CPYTHON_MARKERS
                .into_iter()
                .filter(|name| !b.has_marker(name))
                .map(|name| AbsentMarker {
                    name,
                    note: b.firing(name).explain(name, b.version),
                })
                .collect()
        } else {
            Vec::new()
        },
        hooks: hooks.map(|h| HooksReport {
            found: h
                .found
                .iter()
                .map(|f| HookReport {
                    name: f.name,
                    address: f.address,
                    size: f.size,
                    source: f.source.label(),
                    gives: f.gives,
                    entry_probe: f.entry_probe.clone(),
                })
                .collect(),
            debug_offsets: h.debug_offsets.map(|d| d.version()),
            missing: hooks::WANTED
                .iter()
                .map(|&(name, _)| name)
                .filter(|name| !h.found.iter().any(|f| f.name == *name))
                .collect(),
            signals,
        }),
    })
}

/// The markers of CPython's `Include/pydtrace.d` that have call sites in some release.
const CPYTHON_MARKERS: [&str; 8] = [
    "function__entry",
    "function__return",
    "line",
    "gc__start",
    "gc__done",
    "import__find__load__start",
    "import__find__load__done",
    "audit",
];

fn write_tables(out: &mut impl Write, reports: &[FileReport<'_>]) -> std::io::Result<()> {
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        let version = r.cpython_version.as_deref().map_or_else(
            || "CPython version unknown".to_string(),
            |v| format!("CPython {v}"),
        );
        let kind = match r.kind {
            ObjectKind::Executable => "executable",
            ObjectKind::PieExecutable => "PIE executable",
            ObjectKind::SharedLibrary => "shared library",
            ObjectKind::Other => "ELF object",
        };
        writeln!(
            out,
            "{}: {kind}, {version}, {} USDT markers",
            r.path.display(),
            r.markers.len()
        )?;
        if r.markers.is_empty() {
            writeln!(out, "  no USDT markers")?;
            if let Some(h) = &r.hooks {
                write_hooks(out, h)?;
            }
            continue;
        }
        writeln!(
            out,
            "  {:<8} {:<26} {:<18} {:<18} {:<15} ARGUMENTS",
            "PROVIDER", "MARKER", "ADDRESS", "SEMAPHORE", "FIRES"
        )?;
        for m in &r.markers {
            let sema = m
                .marker
                .semaphore
                .map_or_else(|| "-".to_string(), |s| format!("{s:#018x}"));
            writeln!(
                out,
                "  {:<8} {:<26} {:#018x} {:<18} {:<15} {}",
                m.marker.provider,
                m.marker.name,
                m.marker.address,
                sema,
                m.status.unwrap_or("-"),
                m.marker.args
            )?;
        }
        // Explain every python marker that does not simply fire (3.15's fire with caveats), and
        // the ones this version lacks.
        for m in r
            .markers
            .iter()
            .filter(|m| m.status.is_some() && m.note.as_deref() != Some("fires"))
        {
            writeln!(
                out,
                "  note: {}: {}",
                m.marker.name,
                m.note.as_deref().unwrap_or("")
            )?;
        }
        for a in &r.absent {
            writeln!(out, "  note: {}: {}", a.name, a.note)?;
        }
    }
    Ok(())
}

/// The hook points of a CPython without markers, and what is traced through them.
fn write_hooks(out: &mut impl Write, h: &HooksReport) -> std::io::Result<()> {
    for s in &h.signals {
        match (s.through, s.source, &s.why_not) {
            (Some(through), Some(source), _) => {
                writeln!(out, "  {:<7} traced at {through} ({source})", s.signal)?
            }
            (_, _, why) => writeln!(
                out,
                "  {:<7} not traced: {}",
                s.signal,
                why.as_deref().unwrap_or("?")
            )?,
        }
    }
    if h.found.is_empty() {
        return writeln!(
            out,
            "  no symbols of the hook points either (a static, stripped build)"
        );
    }
    writeln!(out, "  hook points that stand in for markers:")?;
    writeln!(
        out,
        "  {:<27} {:<13} {:<18} {:>6}  WOULD GIVE",
        "SYMBOL", "SOURCE", "ADDRESS", "SIZE"
    )?;
    for f in &h.found {
        // A derived function's size is not known: only its start is.
        let size = match f.size {
            0 => "-".to_string(),
            n => n.to_string(),
        };
        writeln!(
            out,
            "  {:<27} {:<13} {:#018x} {:>6}  {}",
            f.name, f.source, f.address, size, f.gives
        )?;
    }
    for f in &h.found {
        if let Some(p) = &f.entry_probe {
            writeln!(
                out,
                "  note: {}'s probe goes at +{:#x} ({}), which the kernel emulates: its first \
                 instruction would be single-stepped",
                f.name,
                p.address - f.address,
                p.instruction
            )?;
        }
    }
    if let Some(v) = &h.debug_offsets {
        writeln!(
            out,
            "  note: _PyRuntime starts with the debug offsets of CPython {v}"
        )?;
    }
    if !h.missing.is_empty() {
        writeln!(out, "  note: not found: {}", h.missing.join(", "))?;
    }
    Ok(())
}
