//! The running pipeline shared by `run` and `agent` (and the pieces `top` and `flow` reuse):
//! flag checks, pre-flight, loading BPF, the sinks, the event loop with its periodic tasks,
//! name resolution of code locations, per-process probes under the budget, and shutdown.
//!
//! Data path: `discover` → `attach` → `decode` → `model` → `report`/`export`; this module
//! wires them together and the commands (src/commands/) only parse flags and call it.
use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::discover::interpreters::{discover, Scan};
use crate::discover::{Binary, NO_MARKERS_HINT};
use crate::exit::{CliError, CliResult, Exit};

pub mod code_names;
pub mod flags;
mod follow;
pub mod host;
pub mod kernel_metrics;
pub mod probes;
mod session;
mod shutdown;
mod trace;

pub use session::Session;

/// Where the human-readable stream and summary go.
#[derive(Debug, Clone, Copy)]
pub enum Terminal {
    Stdout,
    /// `run`: keep the command's stdout clean.
    Stderr,
}

impl Terminal {
    fn writer(self) -> Box<dyn Write> {
        match self {
            Terminal::Stdout => Box::new(std::io::BufWriter::new(std::io::stdout())),
            Terminal::Stderr => Box::new(std::io::BufWriter::new(std::io::stderr())),
        }
    }
}

/// The files to attach to: `user_paths` (from --python; unreadable or untraceable ones are
/// errors), `implied` (e.g. the interpreter of `run`'s command, already checked), and what
/// `scan` finds. CPythons found by the scan that cannot be traced (no markers, no hook points)
/// are worth a warning. May be empty.
/// `examined`: see `discover`.
pub fn interpreters_to_trace(
    user_paths: &[std::path::PathBuf],
    implied: Option<std::path::PathBuf>,
    scan: Scan,
    examined: &mut HashSet<(u64, u64)>,
) -> CliResult<Vec<Binary>> {
    let mut explicit = user_paths.to_vec();
    explicit.extend(implied);
    let found = discover(&explicit, scan, examined);
    if let Some(e) = found.errors.into_iter().next() {
        return Err(e.into());
    }
    for b in &found.untraceable {
        if user_paths.contains(&b.path) {
            return Err(CliError::new(
                Exit::NoMarkers,
                format!(
                    "--python {} has no CPython markers, nor hook points pyusdt can trace \
                     through. {NO_MARKERS_HINT}",
                    b.path.display()
                ),
            ));
        }
        let version = b.version.map_or_else(|| "?".into(), |v| v.to_string());
        // A --enable-shared build: its processes are traced through the libpython it links.
        match b.linked_libpython() {
            Some(lib) if traced_through(&lib, &found.traceable) => tracing::debug!(
                "{} (CPython {version}) is traced through {}",
                b.path.display(),
                lib.display()
            ),
            Some(lib) => tracing::warn!(
                "{} (CPython {version}) has no markers, nor has the {} it links, nor hook \
                 points to stand in for them: processes using it are not traced",
                b.path.display(),
                lib.display()
            ),
            None => tracing::warn!(
                "{} (CPython {version}) has no markers, nor hook points to stand in for them: \
                 processes using it are not traced",
                b.path.display()
            ),
        }
    }
    Ok(found.traceable)
}

/// Whether `lib` (a libpython an executable links) is one of the files to attach, by device
/// and inode (it may have been found under another path).
fn traced_through(lib: &std::path::Path, attached: &[Binary]) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = crate::discover::safe_open::split_proc_root(lib)
        .and_then(|(pid, inner)| crate::discover::safe_open::id_in_root(pid, &inner))
        .or_else(|| std::fs::metadata(lib).ok().map(|m| (m.dev(), m.ino())));
    id.is_some_and(|id| attached.iter().any(|b| b.id == id))
}

/// The error for `--pid` naming a process that does not run CPython (`top --pid` on a
/// `sleep`): not a missing `--with-dtrace`.
pub fn not_python_error(files: &crate::discover::process::ProcessFiles, pid: i32) -> CliError {
    let exe = files.executable().map_or_else(
        || "?".into(),
        |p| crate::text::safe(&p.to_string_lossy()).into_owned(),
    );
    CliError::new(
        Exit::NoMarkers,
        format!(
            "PID {pid} ({exe}) is not a Python process: it runs no CPython interpreter and maps \
             no libpython"
        ),
    )
}

/// The error for "nothing to attach to".
pub fn no_interpreter_error() -> CliError {
    CliError::new(
        Exit::NoMarkers,
        format!("found no interpreter with CPython markers to attach to. {NO_MARKERS_HINT}"),
    )
}

/// A flag raised by `signal`: the event loop looks at it between polls.
pub fn signal_flag(signal: libc::c_int) -> CliResult<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal, Arc::clone(&flag))
        .map_err(|e| CliError::new(Exit::Failure, format!("installing a signal handler: {e}")))?;
    Ok(flag)
}
