//! Discovery: which files carry CPython's USDT markers, which markers can fire, and where they are.
pub mod derive;
pub mod entry_probe;
pub mod hooks;
pub mod image;
pub mod interpreters;
pub mod lease;
pub mod process;
pub mod refusals;
pub mod safe_open;
pub mod stapsdt;
pub mod unwind;
pub mod version;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use refusals::Reason;
use safe_open::{OpenError, OpenedFile};
pub use stapsdt::{Marker, SdtNotes};
pub use version::{CPythonVersion, Firing};

/// The USDT provider name CPython's markers use.
pub const PROVIDER: &str = "python";

/// Why a file could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The file does not exist or cannot be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not one pyusdt reads: a FIFO, device, socket or directory, too large,
    /// writable by others, or changed while it was read (counted in
    /// `pyusdt.discovery.refused`).
    #[error("{path}: refused ({}): {}", .reason.label(), refused_hint(*.reason))]
    Refused { path: PathBuf, reason: Reason },
    /// The file is not an ELF object (a script, a shim, a directory …).
    #[error("{path} is not an ELF executable or shared library{hint}")]
    NotElf { path: PathBuf, hint: String },
    /// The file is an ELF object whose headers or notes are damaged.
    #[error("{path}: malformed ELF: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

fn refused_hint(reason: Reason) -> &'static str {
    match reason {
        Reason::NotRegular => "not a regular file; name the interpreter file itself",
        Reason::TooLarge => "larger than an interpreter file can be",
        Reason::WritableByOthers => {
            "users other than its owner can write it; remove the group/world write permission \
             (chmod go-w)"
        }
        Reason::ChangedWhileRead => "it changed while it was read; try again",
        _ => "see pyusdt.discovery.refused",
    }
}

impl DiscoverError {
    /// Counts a refusal (`pyusdt.discovery.refused`) and makes it an error.
    fn from_open(path: &Path, e: OpenError) -> DiscoverError {
        match e {
            OpenError::Io(source) => DiscoverError::Open {
                path: path.to_path_buf(),
                source,
            },
            OpenError::Refused(reason) => {
                refusals::refuse(reason, &path.display());
                DiscoverError::Refused {
                    path: path.to_path_buf(),
                    reason,
                }
            }
        }
    }
}

/// A file on disk with its USDT notes and, when it is a CPython, its version. It holds the
/// file open: attaching goes through this descriptor (`attach_path`), so that what was
/// examined is what is attached, whatever its path leads to since.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Path as given or as found (may go through `/proc/PID/root`): for messages, and for
    /// finding the libpython it links. Never opened again to attach.
    pub path: PathBuf,
    /// (device, inode): the identity used to attach each file once.
    pub id: (u64, u64),
    pub notes: SdtNotes,
    pub version: Option<CPythonVersion>,
    /// A CPython whose interpreter is in this file and which has no markers: the file whose
    /// hook points could stand in for them (issue 24; `hooks()`).
    pub markerless: bool,
    /// `hook_plan()`, made at its first call.
    plan: std::sync::OnceLock<Option<hooks::Plan>>,
    /// The process through which the file was found (its executable or a mapping), when it
    /// was: the file is released once no process uses it any more.
    pub found_in: Option<u32>,
    file: OpenedFile,
}

impl Binary {
    /// Opens and inspects `path` (a symbolic link at its end is followed; a `/proc/PID/root/…`
    /// path is resolved inside that root). Reads only what the ELF headers point at, with
    /// `pread`: a file truncated meanwhile is an error, not a crash.
    pub fn open(path: &Path) -> Result<Binary, DiscoverError> {
        let file =
            safe_open::open_path(path, true).map_err(|e| DiscoverError::from_open(path, e))?;
        // The real name (python3 -> python3.11) tells the version: resolved on the host only
        // (a process's root may hold links to anywhere).
        let real = match safe_open::split_proc_root(path) {
            None => std::fs::canonicalize(path).ok(),
            Some(_) => None,
        };
        let name = real.as_deref().unwrap_or(path).file_name();
        let name = name.and_then(|n| n.to_str()).map(str::to_owned);
        Binary::inspect(file, path.to_path_buf(), name.as_deref())
    }

    /// Inspects a file already opened (`safe_open`), known as `path`; `name`: its real file
    /// name, which may tell the CPython version.
    pub fn inspect(
        file: OpenedFile,
        path: PathBuf,
        name: Option<&str>,
    ) -> Result<Binary, DiscoverError> {
        let read =
            |parts| image::read(&file, parts).map_err(|e| DiscoverError::from_open(&path, e));
        let mut data = read(image::Parts::default())?;
        let notes = stapsdt::read(&data).map_err(|e| match e {
            stapsdt::ParseError::NotElf => DiscoverError::NotElf {
                path: path.clone(),
                hint: not_elf_hint(&data),
            },
            stapsdt::ParseError::Malformed(reason) => DiscoverError::Malformed {
                path: path.clone(),
                reason,
            },
        })?;
        let python = version::looks_like_python(name, &notes);
        // Without markers, and not an executable whose libpython holds the interpreter.
        let markerless = python
            && !notes.markers.iter().any(|m| m.provider == PROVIDER)
            && !notes.needed.iter().any(|n| n.starts_with("libpython"));
        if python {
            // Its version string is in .rodata: read it too (headers again, a few KB).
            data = read(image::Parts {
                rodata: true,
                symbols: false,
            })?;
        }
        let version = version::detect(name, &data, &notes);
        Ok(Binary {
            path,
            id: file.id,
            notes,
            version,
            markerless,
            plan: std::sync::OnceLock::new(),
            found_in: None,
            file,
        })
    }

    /// The hook points of a CPython without markers (`None` for any other file, or one whose
    /// tables do not parse). Reads the symbol tables (up to 16 MB each): only for the files
    /// that have no markers.
    pub fn hooks(&self) -> Result<Option<hooks::Hooks>, DiscoverError> {
        if !self.markerless {
            return Ok(None);
        }
        let parts = image::Parts {
            rodata: false,
            symbols: true,
        };
        let data =
            image::read(&self.file, parts).map_err(|e| DiscoverError::from_open(&self.path, e))?;
        Ok(hooks::find(&data, &self.file, self.version))
    }

    /// What a CPython without markers can be traced through (`None` for any other file, or
    /// when its tables cannot be read: said once). Made once per file.
    pub fn hook_plan(&self) -> Option<&hooks::Plan> {
        self.plan
            .get_or_init(|| match self.hooks() {
                Ok(found) => found.map(|h| hooks::plan(&h, self.version, self.free_threaded())),
                Err(e) => {
                    tracing::warn!("hook points not read: {e}");
                    None
                }
            })
            .as_ref()
    }

    /// Whether audit events can be traced: the audit marker, or on a file without markers its
    /// audit hook point.
    pub fn can_trace_audit(&self) -> bool {
        self.has_marker("audit")
            || (!self.has_python_markers() && self.hook_plan().is_some_and(|p| p.audit.is_ok()))
    }

    /// Whether pyusdt can trace this file: its markers, or hook points standing in for them.
    pub fn traceable(&self) -> bool {
        self.has_python_markers() || self.hook_plan().is_some_and(hooks::Plan::any)
    }

    /// A free-threaded build (`python3.13t`, `libpython3.13t.so`), by its file name: its
    /// objects have a larger header, whose fields pyusdt does not read.
    pub fn free_threaded(&self) -> bool {
        let name = self.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let version_and_rest = name.trim_start_matches("lib").trim_start_matches("python");
        let abi_flag =
            version_and_rest.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
        abi_flag.starts_with('t')
    }

    /// The path libbpf is given to attach: this process's descriptor of the examined file.
    /// libbpf opens it to read the notes, and the kernel resolves it for the uprobe: both
    /// reach the very inode examined, not whatever the file's path leads to now.
    pub fn attach_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.fd().as_raw_fd()))
    }

    /// The examined file (for a read lease while attaching, and reading audit names).
    pub fn file(&self) -> &OpenedFile {
        &self.file
    }

    /// The descriptor of the examined file, shared.
    pub fn shared_fd(&self) -> Arc<OwnedFd> {
        self.file.shared()
    }

    /// The CPython markers in this file (provider `python`).
    pub fn python_markers(&self) -> impl Iterator<Item = &Marker> {
        self.notes.markers.iter().filter(|m| m.provider == PROVIDER)
    }

    pub fn has_python_markers(&self) -> bool {
        self.python_markers().next().is_some()
    }

    pub fn has_marker(&self, name: &str) -> bool {
        self.python_markers().any(|m| m.name == name)
    }

    /// The libpython this file is dynamically linked with, found the way the dynamic loader
    /// would (its run path, then the default directories), seen from the same root as the file.
    /// A CPython built `--enable-shared` keeps its markers there, not in the executable.
    pub fn linked_libpython(&self) -> Option<PathBuf> {
        let name = self
            .notes
            .needed
            .iter()
            .find(|n| n.starts_with("libpython"))?;
        let path = self.path.to_string_lossy();
        // Files opened through /proc/PID/root: resolve inside the same root.
        let root = path
            .strip_prefix("/proc/")
            .and_then(|rest| rest.split_once("/root/"))
            .map(|(pid, _)| PathBuf::from(format!("/proc/{pid}/root")));
        let origin = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut dirs: Vec<PathBuf> = self
            .notes
            .runpath
            .iter()
            .map(|d| {
                if let Some(rest) = d
                    .strip_prefix("$ORIGIN")
                    .or_else(|| d.strip_prefix("${ORIGIN}"))
                {
                    origin.join(rest.trim_start_matches('/'))
                } else {
                    within(&root, Path::new(d))
                }
            })
            .collect();
        for d in ["/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib"] {
            dirs.push(within(&root, Path::new(d)));
        }
        for base in ["/usr/lib", "/lib"] {
            let multiarch = format!("{base}/{}-linux-gnu", std::env::consts::ARCH);
            dirs.push(within(&root, Path::new(&multiarch)));
        }
        dirs.into_iter()
            .map(|d| d.join(name))
            .find(|p| safe_open::is_regular(p))
    }

    /// Whether function__entry fires for every call here (3.8–3.10, or a newer release with the
    /// marker, unverified): what pairing entries with returns needs.
    pub fn entries_fire(&self) -> bool {
        matches!(
            self.firing("function__entry"),
            Firing::Fires | Firing::Unverified
        )
    }

    /// Whether `marker` can fire on this file (see `version::firing`).
    pub fn firing(&self, marker: &str) -> Firing {
        version::firing(marker, self.version, self.has_marker(marker))
    }
}

fn within(root: &Option<PathBuf>, path: &Path) -> PathBuf {
    match root {
        Some(r) => r.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    }
}

/// Builds that ship without markers, and what to do about it: said wherever a file lacks them.
pub const NO_MARKERS_HINT: &str =
    "CPython carries USDT markers only when built with --with-dtrace: \
Debian/Ubuntu system python3, Fedora/RHEL/UBI have them; Docker Hub python:* images, pyenv, uv \
(python-build-standalone), conda-forge and manylinux builds do not. Without them, pyusdt traces \
imports (3.11-3.14), GC (3.11-3.13) and audit events (3.9-3.14) at hook points of x86-64 builds \
(`pyusdt list FILE` shows what a file allows). For function probes and everything, use the distribution's python3 (e.g. /usr/bin/python3.11) or \
rebuild with ./configure --with-dtrace.";

fn not_elf_hint(data: &[u8]) -> String {
    // The first page only (all that was read of a file that is not ELF).
    let data = &data[..data.len().min(4096)];
    if data.starts_with(b"#!") {
        let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        if line.contains("pyenv") || data.windows(5).any(|w| w == b"pyenv") {
            return format!(
                " (a pyenv shim: `{}`; pyenv builds carry no markers, point at the real \
                 interpreter, e.g. /usr/bin/python3.11)",
                line.trim()
            );
        }
        return format!(" (a script: `{}`)", line.trim());
    }
    String::new()
}
