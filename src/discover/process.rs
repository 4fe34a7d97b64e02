//! From a PID to the interpreter files it runs: `/proc/PID/exe`, and the libpython mappings of
//! `/proc/PID/maps` (read line by line, bounded), opened as `safe_open` does.
use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use procfs::process::{MMapPath, Process};
use procfs::ProcError;

use super::refusals;
use super::safe_open::{self, OpenError, OpenedFile};

/// Why a PID could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// No process has this PID (or it exited meanwhile).
    #[error("no process with PID {0}")]
    NoSuchProcess(i32),
    /// /proc/PID/maps or /proc/PID/root is not readable by this user.
    #[error("cannot read /proc/{0}/maps: permission denied (run as root, or with CAP_SYS_PTRACE)")]
    PermissionDenied(i32),
    /// The process maps neither a python executable nor libpython.
    #[error(
        "PID {pid} ({exe}) is not a Python process: it maps no python executable or libpython"
    )]
    NotPython { pid: i32, exe: String },
    /// Anything else /proc reported.
    #[error("cannot inspect PID {pid}: {reason}")]
    Other { pid: i32, reason: String },
}

fn proc_error(pid: i32, e: ProcError) -> ProcessError {
    match e {
        ProcError::NotFound(_) => ProcessError::NoSuchProcess(pid),
        ProcError::PermissionDenied(_) => ProcessError::PermissionDenied(pid),
        other => ProcessError::Other {
            pid,
            reason: other.to_string(),
        },
    }
}

/// Mappings read per process at most: a process may have tens of thousands (the kernel's
/// default `vm.max_map_count` is 65530). Beyond, the rest is not looked at (counted as
/// `too_many_mappings`): such a process may go untraced, nothing else.
pub const MAX_MAPPINGS: usize = 65_536;

/// Distinct files named like libpython looked at per process (one process maps one; a
/// process mapping thousands of files so named would make each look cost as many opens).
pub const MAX_LIBS_PER_PROCESS: usize = 8;

/// One line of /proc/PID/maps, the fields discovery uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// (device, inode) of the mapped file, as the kernel gives it (on overlayfs: the layer's).
    pub id: (u64, u64),
    /// The mapped file's path in the process's mount namespace (a deleted file's ends with
    /// " (deleted)").
    pub path: PathBuf,
}

/// The file-backed mappings of `pid`, at most `MAX_MAPPINGS` lines read (streamed: the
/// memory used does not grow with the process's mappings beyond those kept by `keep`).
pub fn mappings(pid: i32, keep: impl Fn(&Path) -> bool) -> Result<Vec<Mapping>, ProcessError> {
    use std::io::BufRead;
    let file = std::fs::File::open(format!("/proc/{pid}/maps")).map_err(|e| io_error(pid, e))?;
    let mut out = Vec::new();
    let mut lines = std::io::BufReader::new(file).split(b'\n');
    for n in 0.. {
        let Some(line) = lines.next() else {
            break;
        };
        if n == MAX_MAPPINGS {
            refusals::refuse(
                refusals::Reason::TooManyMappings,
                &format_args!("the mappings of PID {pid} beyond the first {MAX_MAPPINGS}"),
            );
            break;
        }
        let line = line.map_err(|e| io_error(pid, e))?;
        if let Some(m) = parse_mapping(&line).filter(|m| keep(&m.path)) {
            out.push(m);
        }
    }
    Ok(out)
}

fn io_error(pid: i32, e: std::io::Error) -> ProcessError {
    match e.kind() {
        std::io::ErrorKind::NotFound => ProcessError::NoSuchProcess(pid),
        std::io::ErrorKind::PermissionDenied => ProcessError::PermissionDenied(pid),
        // A process that exits while its maps are read.
        _ if e.raw_os_error() == Some(libc::ESRCH) => ProcessError::NoSuchProcess(pid),
        _ => ProcessError::Other {
            pid,
            reason: e.to_string(),
        },
    }
}

/// `start-end perms offset major:minor inode path`; None for anonymous mappings.
fn parse_mapping(line: &[u8]) -> Option<Mapping> {
    let line = std::str::from_utf8(line).ok()?;
    let mut fields = line.splitn(6, ' ');
    let (range, _perms, _offset, dev, inode) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let path = fields.next()?.trim_start_matches(' ');
    if !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    Some(Mapping {
        start: hex(start)?,
        end: hex(end)?,
        id: (
            libc::makedev(hex(major)? as u32, hex(minor)? as u32),
            inode.parse().ok()?,
        ),
        path: PathBuf::from(path),
    })
}

/// The files of a process that may carry CPython markers.
#[derive(Debug, Clone)]
pub struct ProcessFiles {
    pid: i32,
    /// Paths inside the process's mount namespace: the executable, then libpython mappings.
    inner: Vec<PathBuf>,
    /// The libpython mappings, one per file (device, inode).
    libs: Vec<Mapping>,
}

/// A file of a process, opened (`ProcessFiles::open`), not read yet.
#[derive(Debug)]
pub struct Candidate {
    pub file: OpenedFile,
    /// For messages: the plain path when the host sees the same file there, else the path
    /// through /proc/PID/root.
    pub path: PathBuf,
    /// Its real file name (which may tell the CPython version).
    pub name: Option<String>,
}

impl ProcessFiles {
    /// As `/proc/PID/root/…` paths: always the process's own files, whatever its namespace.
    /// Whether the process runs CPython at all: it maps a libpython, or its executable is
    /// named like an interpreter or is a CPython (static build, or an embedder carrying one).
    pub fn runs_python(&self) -> bool {
        if !self.libs.is_empty() {
            return true;
        }
        let Some(exe) = self.inner.first() else {
            return false;
        };
        exe.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_python_name)
            || super::Binary::open(&host_path(self.pid, exe))
                .is_ok_and(|b| b.version.is_some() || b.has_python_markers())
    }

    /// The executable, as the process sees it.
    pub fn executable(&self) -> Option<&Path> {
        self.inner.first().map(PathBuf::as_path)
    }

    pub fn via_proc_root(&self) -> Vec<PathBuf> {
        self.inner.iter().map(|p| host_path(self.pid, p)).collect()
    }

    /// As plain paths where the host sees the same files there, else through /proc/PID/root.
    pub fn stable(&self) -> Vec<PathBuf> {
        self.inner
            .iter()
            .map(|p| stable_path(self.pid, p))
            .collect()
    }

    /// (device, inode) of its libpython mappings, as /proc/PID/maps gives them.
    pub fn mapped_ids(&self) -> Vec<(u64, u64)> {
        self.libs.iter().map(|m| m.id).collect()
    }

    /// Its executable and libpython paths, inside its mount namespace.
    pub fn inner_paths(&self) -> &[PathBuf] {
        &self.inner
    }

    /// Opens the files the process really runs and maps, skipping those `known` has: the
    /// executable through /proc/PID/exe (the file exec'd, even if deleted or replaced since),
    /// each libpython through /proc/PID/map_files (needs CAP_SYS_ADMIN: at start-up), else by
    /// its path resolved inside the process's root and checked against the mapping's
    /// (device, inode). What cannot be opened is skipped; what is refused is counted.
    pub fn open(&self, known: impl Fn(&(u64, u64)) -> bool) -> Vec<Candidate> {
        let pid = self.pid;
        let mut out = Vec::new();
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let mut offer = |opened: Result<OpenedFile, OpenError>, inner: &Path| match opened {
            Ok(file) if known(&file.id) => {}
            Ok(file) => {
                let inner = live_path(inner);
                out.push(Candidate {
                    path: display_path(pid, &inner, file.id),
                    name: inner
                        .file_name()
                        .and_then(|n| n.to_str())
                        .map(str::to_owned),
                    file,
                })
            }
            Err(OpenError::Refused(reason)) => {
                refusals::refuse(reason, &host_path(pid, inner).display())
            }
            Err(OpenError::Io(_)) => {}
        };
        if let Some(inner) = self.inner.first() {
            offer(safe_open::open_proc_link(&exe), inner);
        }
        for m in &self.libs {
            if known(&m.id) {
                continue;
            }
            let link = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
            let opened = match safe_open::open_proc_link(&link) {
                Err(OpenError::Io(_)) if is_deleted(&m.path) => continue,
                Err(OpenError::Io(_)) => {
                    safe_open::open_in_root(pid, &m.path, false).and_then(|f| {
                        if f.is_mapped_file(m.id) {
                            Ok(f)
                        } else {
                            Err(OpenError::Refused(refusals::Reason::NotTheMappedFile))
                        }
                    })
                }
                other => other,
            };
            offer(opened, &m.path);
        }
        out
    }
}

fn is_deleted(path: &Path) -> bool {
    path.as_os_str().as_encoded_bytes().ends_with(b" (deleted)")
}

/// The path without the " (deleted)" the kernel appends to a deleted file's.
fn live_path(path: &Path) -> PathBuf {
    let bytes = path.as_os_str().as_encoded_bytes();
    match bytes.strip_suffix(b" (deleted)") {
        Some(live) => PathBuf::from(std::ffi::OsStr::from_bytes(live)),
        None => path.to_path_buf(),
    }
}

/// Whether a file name is a CPython interpreter or libpython.
pub fn is_python_name(name: &str) -> bool {
    name.starts_with("libpython")
        || name
            .strip_prefix("python")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_digit()))
            && !name.ends_with("-config")
}

/// The (device, inode) of a mapping of process `pid` that `known` accepts (a `Binary::id`):
/// what /proc/PID/maps says, then (overlayfs can show the lower layer's there)
/// the mapped path resolved inside the process's root, as discovery identified the file.
/// The second costs an open (`O_PATH`, nothing read): only for mappings named like an
/// interpreter or libpython.
pub fn mapped_file(
    pid: i32,
    m: &procfs::process::MemoryMap,
    known: impl Fn(&(u64, u64)) -> bool,
) -> Option<(u64, u64)> {
    let id = (libc::makedev(m.dev.0 as u32, m.dev.1 as u32), m.inode);
    if known(&id) {
        return Some(id);
    }
    let MMapPath::Path(inner) = &m.pathname else {
        return None;
    };
    let named = inner
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(is_python_name);
    if !named {
        return None;
    }
    let id = safe_open::id_in_root(pid, inner)?;
    known(&id).then_some(id)
}

/// Path of `inner` (a path inside the process's mount namespace) as the host can open it.
pub fn host_path(pid: i32, inner: &Path) -> PathBuf {
    let rel = inner.strip_prefix("/").unwrap_or(inner);
    PathBuf::from(format!("/proc/{pid}/root")).join(rel)
}

/// The plain path when the host sees the very same file there (same device and inode), else
/// the `/proc/PID/root` path: plain paths stay valid after the process exits and read better.
fn stable_path(pid: i32, inner: &Path) -> PathBuf {
    match safe_open::id_in_root(pid, inner) {
        Some(id) => display_path(pid, inner, id),
        None => host_path(pid, inner),
    }
}

/// `stable_path` for a file already identified (`id`).
fn display_path(pid: i32, inner: &Path, id: (u64, u64)) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    // lstat: the name itself, as the mapped path is canonical.
    let host = std::fs::symlink_metadata(inner)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    if host == Some(id) {
        inner.to_path_buf()
    } else {
        host_path(pid, inner)
    }
}

/// The executable and libpython mappings of `pid` (mappings de-duplicated by file).
pub fn files_of(pid: i32) -> Result<ProcessFiles, ProcessError> {
    let process = Process::new(pid).map_err(|e| proc_error(pid, e))?;
    let exe = process.exe().map_err(|e| proc_error(pid, e))?;
    let is_libpython = |path: &Path| {
        path.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libpython"))
    };
    let mut seen = HashSet::new();
    let mut libs = Vec::new();
    for m in mappings(pid, is_libpython)? {
        if !seen.insert(m.id) {
            continue;
        }
        if libs.len() == MAX_LIBS_PER_PROCESS {
            refusals::refuse(
                refusals::Reason::TooManyFiles,
                &format_args!("the libpython files of PID {pid} beyond {MAX_LIBS_PER_PROCESS}"),
            );
            break;
        }
        libs.push(m);
    }
    let mut inner = vec![exe];
    let mut paths = HashSet::new();
    for m in &libs {
        if paths.insert(&m.path) {
            inner.push(m.path.clone());
        }
    }
    Ok(ProcessFiles { pid, inner, libs })
}

/// A NUL-separated argv (as in /proc/PID/cmdline) joined by spaces; `None` when empty.
pub fn join_argv(argv: &[u8]) -> Option<String> {
    let words: Vec<_> = argv
        .split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .map(String::from_utf8_lossy)
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// The `KEY=VALUE` entries of a NUL-separated environment (as in /proc/PID/environ).
pub fn env_entries(env: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    env.split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
}

/// Whether a process exists (signal 0 checks without sending anything).
pub fn is_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 performs only the existence and permission checks.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether this process sees the host's PIDs (the initial PID namespace, whose inode is
/// fixed: PROC_PID_INIT_INO), as BPF programs report them.
pub fn in_host_pid_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
    std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == PROC_PID_INIT_INO)
}

/// Every PID on the host (a racy snapshot: processes come and go).
pub fn all_pids() -> Vec<i32> {
    procfs::process::all_processes()
        .map(|it| it.filter_map(|p| p.ok()).map(|p| p.pid()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_names() {
        for yes in [
            "python3",
            "python3.11",
            "python",
            "libpython3.11.so.1.0",
            "python3.13t",
        ] {
            assert!(is_python_name(yes), "{yes}");
        }
        for no in ["python3.11-config", "pythonista", "bash", "ipython"] {
            assert!(!is_python_name(no), "{no}");
        }
    }

    #[test]
    fn maps_lines() {
        let m = parse_mapping(
            b"7f12a0000000-7f12a0200000 r--p 00000000 fd:01 1234567                    \
              /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 (deleted)",
        )
        .unwrap();
        assert_eq!((m.start, m.end), (0x7f12_a000_0000, 0x7f12_a020_0000));
        assert_eq!(m.id, (libc::makedev(0xfd, 1), 1_234_567));
        assert!(is_deleted(&m.path));
        assert_eq!(
            live_path(&m.path),
            PathBuf::from("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0")
        );
        assert_eq!(
            parse_mapping(b"7ffd1000-7ffd2000 rw-p 00000000 00:00 0                  [stack]"),
            None
        );
        assert_eq!(parse_mapping(b"garbage"), None);
    }

    #[test]
    fn own_mappings_are_read() {
        let pid = std::process::id() as i32;
        let maps = mappings(pid, |_| true).unwrap();
        assert!(!maps.is_empty());
    }

    #[test]
    fn host_paths_go_through_proc_root() {
        assert_eq!(
            host_path(42, Path::new("/usr/bin/python3.11")),
            PathBuf::from("/proc/42/root/usr/bin/python3.11")
        );
    }
}
