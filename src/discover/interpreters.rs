//! Finds the interpreter files of a host that pyusdt can trace: given paths, running processes and
//! the usual install locations, each file once by (device, inode).
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::process::{self, is_python_name};
use super::{Binary, DiscoverError};

/// Where distributions install CPython executables and libpython.
const USUAL_DIRS: &[&str] = &[
    "/usr/bin",
    "/usr/local/bin",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/local/lib64",
];

/// What discovery found.
#[derive(Debug, Default)]
pub struct Discovered {
    /// Files pyusdt can trace (CPython markers, or hook points standing in for them),
    /// deduplicated.
    pub traceable: Vec<Binary>,
    /// CPython files it cannot (worth a warning: nothing they run is traced).
    pub untraceable: Vec<Binary>,
    /// Explicitly given paths that could not be read.
    pub errors: Vec<DiscoverError>,
}

impl Discovered {
    /// `explicit`: named by the user, so reported even when it does not look like CPython.
    fn add(&mut self, seen: &mut HashSet<(u64, u64)>, binary: Binary, explicit: bool) {
        if !seen.insert(binary.id) {
            return;
        }
        if binary.traceable() {
            self.traceable.push(binary);
        } else if explicit || binary.version.is_some() {
            self.untraceable.push(binary);
        }
    }
}

/// Where to look besides the paths given explicitly.
#[derive(Debug, Clone, Copy)]
pub struct Scan {
    /// Executables and libpython mappings of running processes.
    pub processes: bool,
    /// The usual install locations (/usr/bin, /usr/lib/<arch>-linux-gnu, …).
    pub locations: bool,
}

/// Collects interpreter files: `explicit` paths (errors reported), then what `scan` selects:
/// the usual install locations first (files the host installed: kept attached), then the
/// files of running processes (released once no process uses them).
/// `examined` holds the (device, inode) of files looked at before: they are skipped after an
/// `fstat`, and every file examined now is added, so that a periodic rescan costs little and
/// does not report the same file twice.
pub fn discover(
    explicit: &[PathBuf],
    scan: Scan,
    examined: &mut HashSet<(u64, u64)>,
) -> Discovered {
    let mut found = Discovered::default();
    let seen = examined;
    for path in explicit {
        match Binary::open(path) {
            Ok(b) => found.add(seen, b, true),
            Err(e) => found.errors.push(e),
        }
    }
    if scan.locations {
        for path in usual_candidates() {
            if file_id(&path).is_some_and(|id| seen.contains(&id)) {
                continue;
            }
            // Candidates are best effort: a file may be unreadable.
            if let Ok(b) = Binary::open(&path) {
                found.add(seen, b, false);
            }
        }
    }
    if scan.processes {
        let own = std::process::id() as i32;
        for pid in process::all_pids().into_iter().filter(|&pid| pid != own) {
            add_process_files(pid, seen, &mut found);
        }
    }
    found
}

/// The interpreter files of one process (`agent`, at its exec): its executable and libpython
/// mappings, and the libpython its executable links (at exec time the dynamic loader has not
/// mapped it yet). Best effort: a process may be gone already. Files in `examined` are skipped.
pub fn discover_process(pid: i32, examined: &mut HashSet<(u64, u64)>) -> Discovered {
    let mut found = Discovered::default();
    add_process_files(pid, examined, &mut found);
    found
}

/// Adds the files of `pid` not in `seen` to `found` (see `discover_process`).
fn add_process_files(pid: i32, seen: &mut HashSet<(u64, u64)>, found: &mut Discovered) {
    let Ok(files) = process::files_of(pid) else {
        return;
    };
    for c in files.open(|id| seen.contains(id)) {
        let id = c.file.id;
        let Ok(mut b) = Binary::inspect(c.file, c.path, c.name.as_deref()) else {
            // Not looked at again (a process cannot make each look cost a read).
            seen.insert(id);
            continue;
        };
        b.found_in = Some(pid as u32);
        let lib = if b.has_python_markers() {
            None
        } else {
            b.linked_libpython()
        };
        found.add(seen, b, false);
        let Some(lib) = lib else {
            continue;
        };
        // Resolved inside the process's root when the executable was seen through it.
        if let Ok(mut l) = Binary::open(&lib) {
            if !seen.contains(&l.id) {
                l.found_in = Some(pid as u32);
                found.add(seen, l, false);
            }
        }
    }
}

/// (device, inode) of the files a process runs: its executable and libpython mappings.
pub fn process_file_ids(pid: i32) -> Vec<(u64, u64)> {
    let Ok(files) = process::files_of(pid) else {
        return Vec::new();
    };
    let mut ids = files.mapped_ids();
    ids.extend(file_id(Path::new(&format!("/proc/{pid}/exe"))));
    ids.extend(
        files
            .inner_paths()
            .iter()
            .filter_map(|p| super::safe_open::id_in_root(pid, p)),
    );
    ids
}

/// (device, inode) of a host path (`stat`: nothing is opened).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Files named like CPython interpreters in the usual directories (and their multiarch subdirs).
fn usual_candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = USUAL_DIRS.iter().map(PathBuf::from).collect();
    for base in ["/usr/lib", "/lib"] {
        dirs.extend(multiarch_dirs(Path::new(base)));
    }
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                is_python_name(n) && (!n.starts_with("libpython") || n.contains(".so"))
            })
        })
        // Report the real file (libpython3.11.so.1.0), not the symlink met first.
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        // Directories such as /usr/lib/python3 are named like interpreters: not candidates
        // (and not refusals: no traced process named them).
        .filter(|p| p.is_file())
        .collect()
}

/// `/usr/lib/x86_64-linux-gnu` and its siblings.
fn multiarch_dirs(base: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(base)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir() && p.to_string_lossy().ends_with("-linux-gnu"))
                .collect()
        })
        .unwrap_or_default()
}
