//! A tracing session shared by `run` and `agent`: pre-flight, attach, drain events into the
//! sinks, and the closing summary.
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io::Write;
use std::mem::MaybeUninit;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libbpf_rs::OpenObject;

use crate::attach::{Tracer, TracerOptions};
use crate::cli::TraceArgs;
use crate::decode;
use crate::discover::interpreters::{discover, Scan};
use crate::discover::{Binary, NO_MARKERS_HINT};
use crate::exit::{CliError, CliResult, Exit};
use crate::report::clock::Clock;
use crate::report::console::Console;
use crate::report::jsonl::JsonLines;
use crate::report::summary::Summary;
use crate::report::Sinks;

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

/// The files to attach to: `user_paths` (from --python; unreadable or marker-less ones are
/// errors), `implied` (e.g. the interpreter of `run`'s command, already checked), and what
/// `scan` finds. Marker-less CPythons found by the scan are worth a warning. May be empty.
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
    for b in &found.without_markers {
        if user_paths.contains(&b.path) {
            return Err(CliError::new(
                Exit::NoMarkers,
                format!(
                    "--python {} has no CPython markers. {NO_MARKERS_HINT}",
                    b.path.display()
                ),
            ));
        }
        tracing::warn!(
            "{} (CPython {}) has no markers: processes using it are not traced",
            b.path.display(),
            b.version.map_or_else(|| "?".into(), |v| v.to_string())
        );
    }
    Ok(found.with_markers)
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

/// How often the console stream and JSON lines are flushed.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

pub struct Session<'obj> {
    pub tracer: Tracer<'obj>,
    sinks: Sinks,
    terminal: Terminal,
    started: Instant,
    attached_ids: HashSet<(u64, u64)>,
    /// Records that failed to decode (a BPF/Rust layout mismatch): counted, reported.
    undecodable: u64,
}

impl<'obj> Session<'obj> {
    /// Checks privileges and kernel, loads BPF and opens the sinks. Attaches nothing yet.
    pub fn start(
        storage: &'obj mut MaybeUninit<OpenObject>,
        args: &TraceArgs,
        follow_processes: bool,
        terminal: Terminal,
    ) -> CliResult<Session<'obj>> {
        // Only the agent reads other processes' /proc entries; `run` follows its own children.
        crate::preflight::check_tracing(!follow_processes)?;
        let tracer = Tracer::load(
            storage,
            TracerOptions {
                probes: args.probes.clone(),
                ring_buffer_bytes: args.ring_buffer_size,
                follow_processes,
            },
        )?;
        let clock = Clock::now();
        let jsonl = match &args.output {
            Some(path) => Some(JsonLines::create(path, clock).map_err(|e| {
                CliError::new(
                    Exit::Failure,
                    format!("cannot write --output {}: {e}", path.display()),
                )
            })?),
            None => None,
        };
        Ok(Session {
            tracer,
            sinks: Sinks {
                console: (!args.quiet).then(|| Console::new(terminal.writer(), clock)),
                jsonl,
                summary: Summary::default(),
            },
            terminal,
            started: Instant::now(),
            attached_ids: HashSet::new(),
            undecodable: 0,
        })
    }

    /// Attaches to each file not attached yet; returns how many files were newly attached.
    /// A file that cannot be attached is reported and skipped, so one bad file does not stop
    /// the others; the caller decides whether zero is fatal.
    pub fn attach_all(&mut self, binaries: &[Binary]) -> usize {
        let mut n = 0;
        for b in binaries {
            if self.attached_ids.contains(&b.id) {
                continue;
            }
            match self.tracer.attach(b) {
                Ok(markers) if markers.is_empty() => {
                    tracing::warn!(
                        "{}: none of the selected markers is in this file",
                        b.path.display()
                    )
                }
                Ok(markers) => {
                    let version = b
                        .version
                        .map_or_else(|| "unknown version".into(), |v| format!("CPython {v}"));
                    tracing::info!(
                        "attached {} ({version}): {}",
                        b.path.display(),
                        markers.join(", ")
                    );
                    self.attached_ids.insert(b.id);
                    n += 1;
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
        n
    }

    /// Names a process in the summary before its first event (see `Summary::name_process`).
    pub fn name_process(&mut self, pid: u32, command: &str) {
        self.sinks.summary.name_process(pid, command);
    }

    /// See `Summary::retire_exited`.
    pub fn retire_exited_processes(&mut self) {
        self.sinks.summary.retire_exited();
    }

    pub fn attached_files(&self) -> usize {
        self.attached_ids.len()
    }

    /// Delivers events until `keep_going` returns false, then drains what is pending.
    /// Output is flushed every `FLUSH_INTERVAL`, not per event.
    pub fn trace(&mut self, mut keep_going: impl FnMut() -> bool) -> CliResult<()> {
        let sinks = RefCell::new(&mut self.sinks);
        let undecodable = Cell::new(self.undecodable);
        let mut flushed_at = Instant::now();
        self.tracer.run(
            |data| match decode::decode(data) {
                Ok(event) => sinks.borrow_mut().handle(&event),
                Err(e) => {
                    undecodable.set(undecodable.get() + 1);
                    if undecodable.get() == 1 {
                        tracing::error!("undecodable ring buffer record: {e} (counted; further ones not logged)");
                    }
                }
            },
            || {
                if flushed_at.elapsed() >= FLUSH_INTERVAL {
                    sinks.borrow_mut().flush();
                    flushed_at = Instant::now();
                }
                keep_going()
            },
        )?;
        sinks.borrow_mut().flush();
        self.undecodable = undecodable.get();
        Ok(())
    }

    /// Prints the summary (and writes the JSON summary record); returns an error when the
    /// JSON output could not be written.
    pub fn finish(mut self) -> CliResult<()> {
        let stats = self.tracer.stats()?;
        let elapsed = self.started.elapsed().as_secs_f64();
        self.sinks.flush();
        let mut text = self.sinks.summary.render(&stats, elapsed);
        if self.undecodable > 0 {
            text.push_str(&format!(
                "  {} undecodable records (a bug: please report)\n",
                self.undecodable
            ));
        }
        let mut out = self.terminal.writer();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        if let Some(j) = &mut self.sinks.jsonl {
            j.put(&self.sinks.summary.to_record(&stats));
            j.finish()
                .map_err(|e| CliError::new(Exit::Failure, format!("writing --output: {e}")))?;
        }
        Ok(())
    }
}
