//! From a PID to the interpreter files it runs: `/proc/PID/maps`, opened through `/proc/PID/root`.
use std::path::{Path, PathBuf};

use procfs::process::{MMapPath, Process};
use procfs::ProcError;

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

/// The files of a process that may carry CPython markers.
#[derive(Debug, Clone)]
pub struct ProcessFiles {
    pid: i32,
    /// Paths inside the process's mount namespace: the executable, then libpython mappings.
    inner: Vec<PathBuf>,
}

impl ProcessFiles {
    /// As `/proc/PID/root/…` paths: always the process's own files, whatever its namespace.
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
/// the mapped path `stat`'ed through the process's root, as discovery identified the file.
/// The second costs a `stat`: only for mappings named like an interpreter or libpython.
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
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(host_path(pid, inner)).ok()?;
    let id = (meta.dev(), meta.ino());
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
    use std::os::unix::fs::MetadataExt;
    let via_root = host_path(pid, inner);
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    match (id(&via_root), id(inner)) {
        (Some(a), Some(b)) if a == b => inner.to_path_buf(),
        _ => via_root,
    }
}

/// The executable and libpython mappings of `pid`.
pub fn files_of(pid: i32) -> Result<ProcessFiles, ProcessError> {
    let process = Process::new(pid).map_err(|e| proc_error(pid, e))?;
    let exe = process.exe().map_err(|e| proc_error(pid, e))?;
    let maps = process.maps().map_err(|e| proc_error(pid, e))?;
    let mut inner = vec![exe];
    for map in maps {
        let MMapPath::Path(path) = map.pathname else {
            continue;
        };
        let is_libpython = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libpython"));
        if is_libpython && !inner.contains(&path) {
            inner.push(path);
        }
    }
    Ok(ProcessFiles { pid, inner })
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
    fn host_paths_go_through_proc_root() {
        assert_eq!(
            host_path(42, Path::new("/usr/bin/python3.11")),
            PathBuf::from("/proc/42/root/usr/bin/python3.11")
        );
    }
}
