//! Discovery: which files carry CPython's USDT markers, which markers can fire, and where they are.
pub mod interpreters;
pub mod process;
pub mod stapsdt;
pub mod version;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

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
    /// The file is not an ELF object (a script, a shim, a directory …).
    #[error("{path} is not an ELF executable or shared library{hint}")]
    NotElf { path: PathBuf, hint: String },
    /// The file is an ELF object whose headers or notes are damaged.
    #[error("{path}: malformed ELF: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

/// A file on disk with its USDT notes and, when it is a CPython, its version.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Path as given or as found (may go through `/proc/PID/root`).
    pub path: PathBuf,
    /// (device, inode): the identity used to attach each file once.
    pub id: (u64, u64),
    pub notes: SdtNotes,
    pub version: Option<CPythonVersion>,
}

impl Binary {
    /// Opens and inspects `path`. Reads only what the ELF headers point at (the file is mapped).
    pub fn open(path: &Path) -> Result<Binary, DiscoverError> {
        let open_err = |source| DiscoverError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if meta.is_dir() {
            return Err(open_err(std::io::Error::other("is a directory")));
        }
        // SAFETY: the mapping is read-only and private; a concurrent truncation of the file
        // could fault, which is the accepted risk of every ELF reader that maps (readelf,
        // libbpf). Interpreters are not rewritten in place by package managers (they rename).
        let map = unsafe { Mmap::map(&file) }.map_err(open_err)?;
        let notes = stapsdt::read(&map).map_err(|e| match e {
            stapsdt::ParseError::NotElf => DiscoverError::NotElf {
                path: path.to_path_buf(),
                hint: not_elf_hint(&map),
            },
            stapsdt::ParseError::Malformed(reason) => DiscoverError::Malformed {
                path: path.to_path_buf(),
                reason,
            },
        })?;
        let version = version::detect(path, &map, &notes);
        Ok(Binary {
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
            notes,
            version,
        })
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
        dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
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
(python-build-standalone), conda-forge and manylinux builds do not. Use the distribution's \
python3 (e.g. /usr/bin/python3.11) or rebuild with ./configure --with-dtrace.";

fn not_elf_hint(data: &[u8]) -> String {
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
