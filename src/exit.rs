//! Exit codes and the errors the CLI reports: each names the problem and what to do.
use std::fmt;

/// Documented exit codes (docs/commands.md, "Exit codes"). `run` otherwise exits with its
/// command's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Anything not covered below (I/O errors, BPF failures).
    Failure = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    /// The file or PID does not exist.
    NotFound = 3,
    /// The file or process has no CPython markers (or is not Python).
    NoMarkers = 4,
    /// Not root / missing capabilities.
    Privileges = 5,
    /// The kernel lacks what pyusdt needs (BTF, uprobes).
    Kernel = 6,
    /// `run`: the command could not be started (as shells do).
    CommandNotExecutable = 126,
    /// `run`: the command was not found (as shells do).
    CommandNotFound = 127,
}

/// An error for the user: printed as `pyusdt: error: …` and turned into an exit code.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::new(Exit::Failure, format!("{e:#}"))
    }
}

impl From<crate::discover::DiscoverError> for CliError {
    fn from(e: crate::discover::DiscoverError) -> Self {
        use crate::discover::DiscoverError as D;
        let exit = match &e {
            D::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Exit::NotFound
            }
            D::Open { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                Exit::Privileges
            }
            D::Open { .. } | D::Refused { .. } => Exit::Failure,
            D::NotElf { .. } | D::Malformed { .. } => Exit::NoMarkers,
        };
        CliError::new(exit, e.to_string())
    }
}

impl From<crate::discover::process::ProcessError> for CliError {
    fn from(e: crate::discover::process::ProcessError) -> Self {
        use crate::discover::process::ProcessError as P;
        let exit = match &e {
            P::NoSuchProcess(_) => Exit::NotFound,
            P::PermissionDenied(_) => Exit::Privileges,
            P::NotPython { .. } => Exit::NoMarkers,
            P::Other { .. } => Exit::Failure,
        };
        CliError::new(exit, e.to_string())
    }
}

impl From<crate::attach::AttachError> for CliError {
    fn from(e: crate::attach::AttachError) -> Self {
        use crate::attach::AttachError as A;
        let permission =
            |err: &libbpf_rs::Error| err.kind() == libbpf_rs::ErrorKind::PermissionDenied;
        match &e {
            A::Load(err) | A::Attach { source: err, .. } | A::Tracepoint { source: err, .. }
                if permission(err) =>
            {
                CliError::new(
                    Exit::Privileges,
                    format!("{e}: run as root or grant CAP_BPF and CAP_PERFMON"),
                )
            }
            A::Tracepoint { .. } => CliError::new(Exit::Kernel, e.to_string()),
            A::Load(_) => CliError::new(
                Exit::Failure,
                format!("{e} (`pyusdt doctor` lists the kernel facilities pyusdt needs)"),
            ),
            _ => CliError::new(Exit::Failure, e.to_string()),
        }
    }
}

pub type CliResult<T> = Result<T, CliError>;
