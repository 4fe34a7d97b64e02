//! `pyusdt doctor`: for each Python process of the host (containers included), whether its
//! interpreter carries markers, what can fire on its version, whether a tracer has the markers
//! enabled right now (their semaphores), and what to do when something is missing.
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::discover::{process, Binary, Firing};
use crate::exit::{CliError, CliResult, Exit};
use crate::text::safe;

#[derive(Debug, Serialize)]
struct Diagnosis {
    pid: i32,
    command: String,
    /// The file with the markers (or the interpreter, when it has none), as the host opens it.
    interpreter: PathBuf,
    cpython_version: Option<String>,
    /// Whether the process's mount namespace differs from pyusdt's (a container).
    in_container: bool,
    markers: bool,
    /// What the function markers give on this version: `entry+return`, `return only (entry in
    /// line mode)`, `none`, `unverified`.
    function_markers: &'static str,
    /// Markers whose semaphore is set in this process now: some tracer has them enabled.
    enabled_now: Vec<String>,
    /// Without markers: the hook points found in the interpreter (`pyusdt list` has their
    /// addresses).
    #[serde(skip_serializing_if = "Option::is_none")]
    hook_points: Option<Vec<HookPoint>>,
    /// Without markers: the signals traced through hook points, as `import: SYMBOL (source)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    traced_through_hooks: Vec<String>,
    advice: String,
}

#[derive(Debug, Serialize)]
struct HookPoint {
    name: &'static str,
    /// `symbol table` or `exported`.
    source: &'static str,
}

pub fn run(args: &DoctorArgs) -> CliResult<i32> {
    let own_mnt = std::fs::read_link("/proc/self/ns/mnt").ok();
    let own_pid = std::process::id() as i32;
    // Files are opened once each, whatever the number of processes using them.
    let mut opened: HashMap<PathBuf, Option<Binary>> = HashMap::new();
    let mut found = Vec::new();
    let mut unreadable = 0;
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut examined = 0usize;
    for pid in process::all_pids() {
        if pid == own_pid {
            continue;
        }
        examined += 1;
        let files = match process::files_of(pid) {
            Ok(f) => f,
            // As root, only a process exiting meanwhile can refuse.
            Err(process::ProcessError::PermissionDenied(_)) if !is_root => {
                unreadable += 1;
                continue;
            }
            Err(_) => continue,
        };
        // Plain paths where the host sees the same file (they read better), else through the
        // process's root.
        let paths = files.stable();
        let Some(exe) = paths.first() else {
            continue;
        };
        let python_named = exe
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(process::is_python_name);
        if !python_named && paths.len() < 2 {
            continue; // neither a python executable nor a libpython mapping
        }
        let binaries: Vec<Binary> = paths
            .iter()
            .filter_map(|p| {
                opened
                    .entry(p.clone())
                    .or_insert_with(|| Binary::open(p).ok())
                    .clone()
            })
            .collect();
        let Some(main) = binaries
            .iter()
            .find(|b| b.has_python_markers())
            // Without markers: the file whose hook points were looked for (the libpython of
            // an --enable-shared build, not its executable).
            .or_else(|| binaries.iter().find(|b| b.markerless))
            .or_else(|| binaries.iter().find(|b| b.version.is_some()))
            .or(binaries.first())
        else {
            continue;
        };
        let in_container =
            own_mnt.is_some() && std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() != own_mnt;
        found.push(diagnose(pid, main, in_container));
    }

    let kernel = kernel_report();
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({ "kernel": kernel, "processes": found }),
        )
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
    } else {
        write_kernel(&mut out, &kernel)
            .and_then(|()| write_table(&mut out, &found, examined, unreadable))
    };
    written.map_err(|e| CliError::new(Exit::Failure, format!("writing the report: {e}")))?;
    Ok(0)
}

/// The kernel facilities tracing needs, as `run` and `agent` check them before loading.
#[derive(Debug, Serialize)]
struct KernelReport {
    release: String,
    features: Vec<FeatureReport>,
}

#[derive(Debug, Serialize)]
struct FeatureReport {
    name: &'static str,
    /// `present`, `missing`, or `not checked` (probing needs CAP_BPF).
    state: &'static str,
    needed_for: &'static str,
    fix: &'static str,
}

fn kernel_report() -> KernelReport {
    use crate::preflight::FeatureState;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let features = crate::preflight::kernel_features()
        .into_iter()
        .map(|f| FeatureReport {
            name: f.name,
            state: match f.state {
                FeatureState::Present => "present",
                FeatureState::Missing => "missing",
                FeatureState::NotChecked => "not checked",
            },
            needed_for: f.needed_for,
            fix: f.fix,
        })
        .collect();
    KernelReport { release, features }
}

fn write_kernel(out: &mut impl Write, kernel: &KernelReport) -> std::io::Result<()> {
    writeln!(
        out,
        "kernel {} (tracefs and debugfs are not needed)",
        safe(&kernel.release)
    )?;
    for f in &kernel.features {
        match f.state {
            "present" => writeln!(out, "  ok           {}", f.name)?,
            "missing" => writeln!(
                out,
                "  MISSING      {} (needed for {}): {}",
                f.name, f.needed_for, f.fix
            )?,
            _ => writeln!(
                out,
                "  not checked  {} (probing needs CAP_BPF or root)",
                f.name
            )?,
        }
    }
    Ok(())
}

fn diagnose(pid: i32, binary: &Binary, in_container: bool) -> Diagnosis {
    let command = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| process::join_argv(&c))
        .map(|c| crate::model::redact::redact(&c).into_owned())
        .unwrap_or_else(|| "(exited)".into());
    let markers = binary.has_python_markers();
    let function_markers = match binary.firing("function__entry") {
        _ if !markers => "none",
        Firing::Fires => "entry+return",
        Firing::OnlyWhenLineEnabled => "return only (entry in line mode)",
        Firing::Unverified | Firing::UnknownVersion => "unverified",
        Firing::NotInBinary => "none",
    };
    Diagnosis {
        pid,
        command,
        interpreter: binary.path.clone(),
        cpython_version: binary.version.map(|v| v.to_string()),
        in_container,
        markers,
        function_markers,
        enabled_now: if markers {
            enabled_markers(pid, binary)
        } else {
            Vec::new()
        },
        // A table that cannot be read is shown as none found, with the reason logged.
        hook_points: hook_points(binary).map(|h| {
            h.found
                .iter()
                .map(|f| HookPoint {
                    name: f.name,
                    source: f.source.label(),
                })
                .collect()
        }),
        traced_through_hooks: traced_through_hooks(binary),
        advice: advice(binary, in_container),
    }
}

/// The signals a file without markers gives through hook points (`pyusdt run` and `agent`
/// attach them), as `import: PyObject_CallMethodObjArgs (exported_symbol)`.
fn traced_through_hooks(binary: &Binary) -> Vec<String> {
    let Some(plan) = binary.hook_plan() else {
        return Vec::new();
    };
    let sites = [
        ("import", plan.imports.as_ref().ok().map(|i| i.site)),
        ("gc", plan.gc.as_ref().ok().map(|g| g.site)),
        ("audit", plan.audit.as_ref().ok().copied()),
    ];
    sites
        .into_iter()
        .filter_map(|(signal, site)| {
            site.map(|s| format!("{signal}: {} ({})", s.symbol, s.source.signal().label()))
        })
        .collect()
}

fn hook_points(binary: &Binary) -> Option<crate::discover::hooks::Hooks> {
    binary
        .hooks()
        .inspect_err(|e| tracing::warn!("hook points not read: {e}"))
        .ok()
        .flatten()
}

/// "a", "a and b", "a, b and c".
fn listed(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// What to do, for this interpreter.
fn advice(binary: &Binary, in_container: bool) -> String {
    let minor = binary.version.map(|v| (v.major, v.minor));
    if !binary.has_python_markers() {
        let path = binary.path.to_string_lossy();
        // What comes through hook points (the `traced at` line says where), what needs markers.
        let (mut through, mut not) = (Vec::new(), Vec::new());
        if let Some(p) = binary.hook_plan() {
            for (name, ok) in [
                ("imports", p.imports.is_ok()),
                ("GC", p.gc.is_ok()),
                ("audit", p.audit.is_ok()),
            ] {
                if ok {
                    through.push(name)
                } else {
                    not.push(name)
                }
            }
        }
        not.push("calls");
        let partly = if through.is_empty() {
            String::new()
        } else {
            format!(
                "{} {} traced through hook points; {} need markers. ",
                listed(&through),
                if through.len() == 1 { "is" } else { "are" },
                listed(&not)
            )
        };
        let fix = if path.contains("/.pyenv/") {
            "pyenv build without markers: rebuild with PYTHON_CONFIGURE_OPTS=--with-dtrace, or \
             use the distribution's python3"
        } else if in_container {
            "the image's CPython was built without --with-dtrace (the Docker Hub python:* images \
             are): use a Debian/Ubuntu/Fedora-based image's python3, or build with --with-dtrace"
        } else {
            "built without --with-dtrace: use the distribution's python3 (Debian/Ubuntu/Fedora/\
             RHEL carry the markers) or rebuild with ./configure --with-dtrace"
        };
        return format!("{partly}{fix}");
    }
    match minor {
        Some((3, m)) if m <= 10 => "everything works: gc, import, audit and function spans".into(),
        Some((3, 11)) => "gc, import, audit work; function spans need --line-mode (slow, kept \
                          within --max-overhead); `top` counts calls through returns"
            .into(),
        Some((3, 12..=14)) => "gc, import, audit work; 3.12-3.14 have no function markers \
                               (calls: sys.monitoring or a sampling profiler; 3.15 has them again)"
            .into(),
        Some((3, 15)) => "everything works: gc, import, audit and function spans (a generator's \
                          creation is counted as a call by `top`; code run by the JIT has no \
                          function events)"
            .into(),
        _ => "gc, import, audit should work; this version is not verified: function markers \
              are checked at run time"
            .into(),
    }
}

/// The python markers whose semaphore (a 2-byte counter the kernel raises per attached
/// tracer) is non-zero in the process: read from its memory at the semaphore's address.
fn enabled_markers(pid: i32, binary: &Binary) -> Vec<String> {
    let Ok(maps) = procfs::process::Process::new(pid).and_then(|p| p.maps()) else {
        return Vec::new();
    };
    let Ok(mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
        return Vec::new();
    };
    // The file's mappings: by device and inode, or (overlayfs can show the lower layer's in
    // /proc/PID/maps) by the mapped path, stat'ed through the process's root as the file was.
    let mappings: Vec<_> = maps
        .iter()
        .filter(|m| process::mapped_file(pid, m, |id| *id == binary.id).is_some())
        .collect();
    let mut enabled: Vec<String> = binary
        .python_markers()
        .filter_map(|m| {
            let off = m.semaphore_offset?;
            let map = mappings.iter().find(|map| {
                off >= map.offset && off < map.offset + (map.address.1 - map.address.0)
            })?;
            let addr = map.address.0 + (off - map.offset);
            let mut counter = [0u8; 2];
            mem.read_exact_at(&mut counter, addr).ok()?;
            (u16::from_ne_bytes(counter) > 0).then(|| m.name.clone())
        })
        .collect();
    enabled.sort();
    enabled.dedup();
    enabled
}

fn write_table(
    out: &mut impl Write,
    found: &[Diagnosis],
    examined: usize,
    unreadable: usize,
) -> std::io::Result<()> {
    if found.is_empty() {
        writeln!(
            out,
            "no Python process found: none of the {examined} processes examined runs a python \
             executable or maps a libpython.\nStart one and run `pyusdt doctor` again (e.g. \
             /usr/bin/python3.11 -c 'import time; time.sleep(600)' &), or inspect an \
             interpreter file without running it: pyusdt list /usr/bin/python3.11"
        )?;
    }
    for d in found {
        // The whole command line (escaped, secrets redacted): a cut one hides which of many
        // similar processes this is.
        writeln!(out, "PID {} ({})", d.pid, safe(&d.command))?;
        writeln!(
            out,
            "  interpreter  {}{}",
            safe(&d.interpreter.to_string_lossy()),
            if d.in_container { " (container)" } else { "" }
        )?;
        writeln!(
            out,
            "  CPython      {}",
            d.cpython_version.as_deref().unwrap_or("version unknown")
        )?;
        writeln!(
            out,
            "  markers      {}",
            if d.markers {
                format!("yes; function markers: {}", d.function_markers)
            } else {
                "none".into()
            }
        )?;
        if d.markers {
            writeln!(
                out,
                "  enabled now  {}",
                if d.enabled_now.is_empty() {
                    "none (no tracer attached)".into()
                } else {
                    d.enabled_now.join(", ")
                }
            )?;
        }
        if let Some(hooks) = &d.hook_points {
            // Grouped by where they were found, in the order looked for.
            let mut sources: Vec<(&str, Vec<&str>)> = Vec::new();
            for h in hooks {
                match sources.iter_mut().find(|(s, _)| *s == h.source) {
                    Some((_, names)) => names.push(h.name),
                    None => sources.push((h.source, vec![h.name])),
                }
            }
            let found = if sources.is_empty() {
                "none found".to_string()
            } else {
                sources
                    .iter()
                    .map(|(source, names)| format!("{source}: {}", names.join(", ")))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            writeln!(
                out,
                "  hook points  {found} (`pyusdt list {}`)",
                safe(&d.interpreter.to_string_lossy())
            )?;
            let traced = if d.traced_through_hooks.is_empty() {
                "nothing".to_string()
            } else {
                d.traced_through_hooks.join("; ")
            };
            writeln!(out, "  traced at    {traced}")?;
        }
        writeln!(out, "  advice       {}", d.advice)?;
    }
    if unreadable > 0 {
        writeln!(
            out,
            "{unreadable} processes could not be inspected (permission denied: run as root)"
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn advice_names_the_fix() {
        let b = Binary::open(Path::new("/bin/sh")).unwrap();
        assert!(advice(&b, true).contains("python:*"));
        assert!(advice(&b, false).contains("--with-dtrace"));
    }
}
