//! Finds the marker-bearing interpreter files of a host: given paths, running processes and
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
    /// Files with CPython markers, deduplicated.
    pub with_markers: Vec<Binary>,
    /// CPython files without markers (worth a warning: nothing they run is traced).
    pub without_markers: Vec<Binary>,
    /// Explicitly given paths that could not be read.
    pub errors: Vec<DiscoverError>,
}

impl Discovered {
    /// `explicit`: named by the user, so reported even when it does not look like CPython.
    fn add(&mut self, seen: &mut HashSet<(u64, u64)>, binary: Binary, explicit: bool) {
        if !seen.insert(binary.id) {
            return;
        }
        if binary.has_python_markers() {
            self.with_markers.push(binary);
        } else if explicit || binary.version.is_some() {
            self.without_markers.push(binary);
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

/// Collects interpreter files: `explicit` paths (errors reported), then what `scan` selects.
/// `examined` holds the (device, inode) of files looked at before: they are skipped with a
/// `stat`, and every file examined now is added, so that a periodic rescan costs little and
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
    let running = if scan.processes {
        running_candidates()
    } else {
        Vec::new()
    };
    let usual = if scan.locations {
        usual_candidates()
    } else {
        Vec::new()
    };
    for path in running.into_iter().chain(usual) {
        if file_id(&path).is_some_and(|id| seen.contains(&id)) {
            continue;
        }
        // Candidates are best effort: a process may exit, a file may be unreadable.
        if let Ok(b) = Binary::open(&path) {
            found.add(seen, b, false);
        }
    }
    found
}

/// The interpreter files of one process (`agent`, at its exec): its executable and libpython
/// mappings, and the libpython its executable links (at exec time the dynamic loader has not
/// mapped it yet). Best effort: a process may be gone already. Files in `examined` are skipped.
pub fn discover_process(pid: i32, examined: &mut HashSet<(u64, u64)>) -> Discovered {
    let mut found = Discovered::default();
    let Ok(files) = process::files_of(pid) else {
        return found;
    };
    let is_new =
        |p: &Path, seen: &HashSet<(u64, u64)>| !file_id(p).is_some_and(|id| seen.contains(&id));
    for path in files.stable() {
        if !is_new(&path, examined) {
            continue;
        }
        let Ok(b) = Binary::open(&path) else {
            continue;
        };
        let lib = if b.has_python_markers() {
            None
        } else {
            b.linked_libpython()
        };
        found.add(examined, b, false);
        if let Some(lib) = lib.filter(|l| is_new(l, examined)) {
            if let Ok(l) = Binary::open(&lib) {
                found.add(examined, l, false);
            }
        }
    }
    found
}

/// (device, inode) of the files a process runs: its executable and libpython mappings.
pub fn process_file_ids(pid: i32) -> Vec<(u64, u64)> {
    process::files_of(pid)
        .map(|f| {
            f.via_proc_root()
                .iter()
                .filter_map(|p| file_id(p))
                .collect()
        })
        .unwrap_or_default()
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Executables and libpython files of every running process, as host paths.
fn running_candidates() -> Vec<PathBuf> {
    let own = std::process::id() as i32;
    process::all_pids()
        .into_iter()
        .filter(|&pid| pid != own)
        .filter_map(|pid| process::files_of(pid).ok())
        .flat_map(|p| p.stable())
        .collect()
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
