//! Files and mappings that traced processes offered and pyusdt refused, counted by reason.
//!
//! Everything a traced process names (its executable, its mappings, the files they point at)
//! is hostile input: what does not pass the checks is skipped, counted here, and said once per
//! reason at warn level. The counts are exported as `pyusdt.discovery.refused{reason}` (OTLP
//! self-telemetry and /metrics, src/report/own.rs). Process-wide: discovery, attaching and the
//! audit names all refuse, and none of them should have to carry a counter through.
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a file or mapping was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A FIFO, socket, device or directory where an interpreter file was expected.
    NotRegular,
    /// Larger than pyusdt reads, or ELF headers that point at more data than it reads.
    TooLarge,
    /// Writable by users other than its owner (world-writable, or group-writable by a group
    /// other than root's): anyone could change what is attached under its owner's processes.
    WritableByOthers,
    /// The file shrank or changed while it was read (a truncation mid-parse).
    ChangedWhileRead,
    /// Someone has the file open for writing at attach time (no read lease possible).
    OpenForWriting,
    /// No read lease could be taken (not the file's owner and no CAP_LEASE): attaching would
    /// let the owner truncate it under libbpf's mapping of it.
    NoLease,
    /// The path a process's mappings name leads to a symbolic link (the mapped path is
    /// canonical: a link there was put in after the mapping).
    Symlink,
    /// The path leads to another file than the one the process maps (renamed or swapped).
    NotTheMappedFile,
    /// More interpreter files than `--max-interpreter-files` would be attached, or more
    /// libpython files in one process than are looked at.
    TooManyFiles,
    /// A process with more mappings than are read per process: the rest were not looked at.
    TooManyMappings,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::NotRegular,
        Reason::TooLarge,
        Reason::WritableByOthers,
        Reason::ChangedWhileRead,
        Reason::OpenForWriting,
        Reason::NoLease,
        Reason::Symlink,
        Reason::NotTheMappedFile,
        Reason::TooManyFiles,
        Reason::TooManyMappings,
    ];

    /// The `reason` attribute of `pyusdt.discovery.refused`.
    pub fn label(self) -> &'static str {
        match self {
            Reason::NotRegular => "not_regular",
            Reason::TooLarge => "too_large",
            Reason::WritableByOthers => "writable_by_others",
            Reason::ChangedWhileRead => "changed_while_read",
            Reason::OpenForWriting => "open_for_writing",
            Reason::NoLease => "no_lease",
            Reason::Symlink => "symlink",
            Reason::NotTheMappedFile => "not_the_mapped_file",
            Reason::TooManyFiles => "too_many_files",
            Reason::TooManyMappings => "too_many_mappings",
        }
    }

    /// What it means, for the log line said once per reason.
    fn explain(self) -> &'static str {
        match self {
            Reason::NotRegular => "not a regular file (FIFO, socket, device or directory)",
            Reason::TooLarge => "larger than pyusdt reads",
            Reason::WritableByOthers => "writable by users other than its owner",
            Reason::ChangedWhileRead => "changed (truncated?) while it was read",
            Reason::OpenForWriting => "open for writing by some process at attach time",
            Reason::NoLease => {
                "no read lease (not its owner, no CAP_LEASE): it could be truncated during attach"
            }
            Reason::Symlink => "its mapped path now leads to a symbolic link",
            Reason::NotTheMappedFile => "its path now leads to another file than the one mapped",
            Reason::TooManyFiles => {
                "more interpreter files than --max-interpreter-files (or libpython files in one \
                 process than are looked at)"
            }
            Reason::TooManyMappings => "a process with more mappings than are read per process",
        }
    }

    fn index(self) -> usize {
        Reason::ALL
            .iter()
            .position(|&r| r == self)
            .unwrap_or_default()
    }
}

static COUNTS: [AtomicU64; Reason::ALL.len()] = [const { AtomicU64::new(0) }; Reason::ALL.len()];

/// Counts one refusal of `what` (a path, or a PID's mappings); the first of each reason is
/// logged at warn level, the next ones at debug level.
pub fn refuse(reason: Reason, what: &dyn std::fmt::Display) {
    let before = COUNTS[reason.index()].fetch_add(1, Ordering::Relaxed);
    if before == 0 {
        tracing::warn!(
            "refused {what}: {} (reason {}, counted in pyusdt.discovery.refused; further ones \
             logged at debug level)",
            reason.explain(),
            reason.label()
        );
    } else {
        tracing::debug!("refused {what}: {}", reason.label());
    }
}

/// The refusals so far, per reason (cumulative).
pub fn counts() -> [(Reason, u64); Reason::ALL.len()] {
    Reason::ALL.map(|r| (r, COUNTS[r.index()].load(Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_counted() {
        let labels: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
        let before = counts()[Reason::Symlink.index()].1;
        refuse(Reason::Symlink, &"/x");
        assert_eq!(counts()[Reason::Symlink.index()].1, before + 1);
    }
}
