//! What the overhead budget learned about kinds of processes (src/pipeline/probes.rs: the
//! interpreter file and the first words of the command line), kept between runs of
//! `pyusdt run` (issue 22): what their probes cost, and the kind's balance. A command-line tool,
//! a test run or a cron job run under `pyusdt run` again then starts its first process sampled,
//! as the later processes of one run already do, instead of paying a fully traced first stretch
//! each time.
//!
//! The file is pyusdt's own state, but a file system is shared: it lives in a directory of its
//! own (`$PYUSDT_STATE_DIR`, else /var/lib/pyusdt as root), which must be a real directory
//! owned by this user and writable by nobody else (created 0700 if absent); the file is opened
//! as traced processes' files are (`safe_open`: not through a link, a regular file only), must
//! be owned by this user, is read up to `MAX_FILE_BYTES`, and each line is checked (counts
//! bounded, numbers finite and in range); anything else is ignored with a warning. It is
//! written whole to a new file and renamed.
//! `agent` keeps none: it runs as an unprivileged user once attached, and a directory that
//! user may write is one other processes of that user could write too.
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::discover::safe_open::{self, OpenError};

/// The environment variable naming the directory; set empty, nothing is kept.
pub const STATE_DIR_ENV: &str = "PYUSDT_STATE_DIR";
const DEFAULT_DIR: &str = "/var/lib/pyusdt";
const FILE_NAME: &str = "budget-kinds";
const HEADER: &str = "pyusdt budget kinds 1";
/// Lines kept (each about 60 bytes), and bytes read.
pub const MAX_KINDS: usize = 4096;
const MAX_FILE_BYTES: u64 = 512 << 10;
/// A kind's cost is a share of its time (scaled by the user-space factors: above 1 for probes
/// that slow a process down more than tenfold); beyond this a line is not pyusdt's.
const MAX_SHARE: f64 = 100.0;
/// Balances beyond this (ns, either way) are not pyusdt's either (the budget carries at most
/// a second of debt, and a window of credit).
const MAX_BALANCE_NS: f64 = 1e10;

/// What is remembered of one kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Remembered {
    pub share: f64,
    pub balance_ns: f64,
}

/// The memory of one set of probes (`probe_set`: kinds cost differently under function probes
/// and under the audit marker).
#[derive(Debug, Clone)]
pub struct BudgetMemory {
    dir: PathBuf,
    probe_set: u64,
}

impl BudgetMemory {
    /// The memory at `$PYUSDT_STATE_DIR`, or at /var/lib/pyusdt when running as root; `None`
    /// when the variable is set empty, or neither applies.
    pub fn from_env(probe_set: u64) -> Option<BudgetMemory> {
        let dir = match std::env::var_os(STATE_DIR_ENV) {
            Some(d) if d.is_empty() => return None,
            Some(d) => PathBuf::from(d),
            None if euid() == 0 => PathBuf::from(DEFAULT_DIR),
            None => return None,
        };
        Some(BudgetMemory { dir, probe_set })
    }

    #[cfg(test)]
    fn at(dir: &Path, probe_set: u64) -> BudgetMemory {
        BudgetMemory {
            dir: dir.to_path_buf(),
            probe_set,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kinds remembered for this set of probes. Nothing (and a warning) when the file or
    /// its directory is not as it must be; nothing, silently, when there is none yet.
    pub fn load(&self) -> HashMap<u64, Remembered> {
        match self.read() {
            Ok(lines) => parse(&lines)
                .into_iter()
                .filter(|(set, _, _)| *set == self.probe_set)
                .map(|(_, kind, r)| (kind, r))
                .collect(),
            Err(None) => HashMap::new(),
            Err(Some(why)) => {
                tracing::warn!(
                    "{}: not used ({why}); processes' kinds are learned again",
                    self.file().display()
                );
                HashMap::new()
            }
        }
    }

    /// Replaces this set's kinds with `kinds` (at most `MAX_KINDS` in all, this set's first),
    /// keeping the other sets' lines.
    pub fn save(&self, kinds: &HashMap<u64, Remembered>) -> Result<(), String> {
        self.ensure_dir()?;
        let others = match self.read() {
            Ok(text) => parse(&text)
                .into_iter()
                .filter(|(set, _, _)| *set != self.probe_set)
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut out = format!("{HEADER}\n");
        let ours = kinds.iter().map(|(k, r)| (self.probe_set, *k, *r));
        for (set, kind, r) in ours.chain(others).take(MAX_KINDS) {
            out.push_str(&format!(
                "{set:016x} {kind:016x} {:.6} {:.0}\n",
                r.share, r.balance_ns
            ));
        }
        let tmp = self
            .dir
            .join(format!("{FILE_NAME}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            // No fsync: this runs in the event loop, and a file cut by a crash is refused whole
            // (no header) or line by line, and learned again.
            .and_then(|mut f| f.write_all(out.as_bytes()))
            .and_then(|_| fs::rename(&tmp, self.file()));
        written.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("{}: {e}", self.file().display())
        })
    }

    fn file(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Creates the directory (0700) when absent, and checks it: see `check_dir`.
    fn ensure_dir(&self) -> Result<(), String> {
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("{}: {e}", self.dir.display())),
        }
        check_dir(&self.dir)
    }

    /// The file's text. `Err(None)`: there is none; `Err(Some(why))`: it is not to be used.
    /// Opened as traced processes' files are (src/discover/safe_open.rs: `O_PATH` first, a
    /// regular file only, not through a link, nothing that blocks), then bounded and read.
    fn read(&self) -> Result<String, Option<String>> {
        match fs::symlink_metadata(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(None),
            _ => check_dir(&self.dir).map_err(Some)?,
        }
        let file = match safe_open::open_path(&self.file(), false) {
            Err(OpenError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Err(None),
            Err(e) => return Err(Some(e.to_string())),
            Ok(f) => f,
        };
        if file.uid != euid() || file.mode & 0o022 != 0 {
            return Err(Some("not owned by this user, or writable by others".into()));
        }
        if file.size > MAX_FILE_BYTES {
            return Err(Some(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        let mut bytes = vec![0u8; file.size as usize];
        file.read_exact_at(&mut bytes, 0)
            .map_err(|e| Some(e.to_string()))?;
        String::from_utf8(bytes).map_err(|_| Some("not UTF-8".into()))
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A directory of this user's that nobody else may write (so nobody else can replace the file).
fn check_dir(dir: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.file_type().is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != euid() || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is not owned by this user, or is writable by others",
            dir.display()
        ));
    }
    Ok(())
}

/// The valid lines of a memory file: (probe set, kind, what is remembered). A file that does
/// not start with the header gives none; lines that are not four valid fields are skipped.
fn parse(text: &str) -> Vec<(u64, u64, Remembered)> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Vec::new();
    }
    lines
        .take(MAX_KINDS)
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let set = u64::from_str_radix(fields.next()?, 16).ok()?;
            let kind = u64::from_str_radix(fields.next()?, 16).ok()?;
            let share: f64 = fields.next()?.parse().ok()?;
            let balance_ns: f64 = fields.next()?.parse().ok()?;
            let valid = fields.next().is_none()
                && share.is_finite()
                && (0.0..=MAX_SHARE).contains(&share)
                && balance_ns.is_finite()
                && balance_ns.abs() <= MAX_BALANCE_NS;
            valid.then_some((set, kind, Remembered { share, balance_ns }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;

    fn kinds(n: u64) -> HashMap<u64, Remembered> {
        (0..n)
            .map(|k| {
                (
                    k,
                    Remembered {
                        share: 0.5 + k as f64 / 100.0,
                        balance_ns: -1e6 * k as f64,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn saved_kinds_are_loaded_per_probe_set() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let functions = BudgetMemory::at(&state, 1);
        let audit = BudgetMemory::at(&state, 2);
        assert!(functions.load().is_empty());
        functions.save(&kinds(3)).unwrap();
        audit.save(&kinds(1)).unwrap();
        assert_eq!(functions.load(), kinds(3));
        assert_eq!(audit.load(), kinds(1));
        let mode = fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let file = fs::metadata(state.join(FILE_NAME)).unwrap().permissions();
        assert_eq!(file.mode() & 0o777, 0o600);
        // Bounded whatever is saved.
        functions.save(&kinds(MAX_KINDS as u64 + 10)).unwrap();
        assert_eq!(functions.load().len(), MAX_KINDS);
    }

    #[test]
    fn files_not_as_they_must_be_are_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let memory = BudgetMemory::at(&state, 1);
        memory.save(&kinds(2)).unwrap();
        // A link in place of the file.
        let elsewhere = dir.path().join("elsewhere");
        fs::rename(state.join(FILE_NAME), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.join(FILE_NAME)).unwrap();
        assert!(memory.load().is_empty());
        fs::remove_file(state.join(FILE_NAME)).unwrap();
        // A directory in its place.
        fs::create_dir(state.join(FILE_NAME)).unwrap();
        assert!(memory.load().is_empty());
        fs::remove_dir(state.join(FILE_NAME)).unwrap();
        // A directory others may write: neither read nor written.
        fs::rename(&elsewhere, state.join(FILE_NAME)).unwrap();
        assert_eq!(memory.load().len(), 2);
        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(memory.load().is_empty());
        assert!(memory.save(&kinds(1)).is_err());
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        // A file too large.
        let big = format!("{HEADER}\n{}", "x".repeat(MAX_FILE_BYTES as usize));
        fs::write(state.join(FILE_NAME), big).unwrap();
        assert!(memory.load().is_empty());
        // The directory a link.
        let linked = BudgetMemory::at(&dir.path().join("link"), 1);
        std::os::unix::fs::symlink(&state, dir.path().join("link")).unwrap();
        assert!(linked.load().is_empty());
        assert!(linked.save(&kinds(1)).is_err());
    }

    #[test]
    fn lines_out_of_range_are_skipped() {
        let text = format!(
            "{HEADER}\n\
             0000000000000001 00000000000000aa 0.5 -1000\n\
             0000000000000001 00000000000000ab NaN 0\n\
             0000000000000001 00000000000000ac 0.5 inf\n\
             0000000000000001 00000000000000ad -0.5 0\n\
             0000000000000001 00000000000000ae 0.5 0 extra\n\
             0000000000000001 zz 0.5 0\n\
             0000000000000001 00000000000000af 1e300 0\n"
        );
        let lines = parse(&text);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].1, 0xaa);
        assert!(parse("not the header\n0000000000000001 00000000000000aa 0.5 0\n").is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary text never panics, and what it gives is in range.
        #[test]
        fn arbitrary_files_give_valid_kinds(body in ".{0,400}") {
            for (_, _, r) in parse(&format!("{HEADER}\n{body}")) {
                prop_assert!(r.share.is_finite() && (0.0..=MAX_SHARE).contains(&r.share));
                prop_assert!(r.balance_ns.is_finite() && r.balance_ns.abs() <= MAX_BALANCE_NS);
            }
        }
    }
}
