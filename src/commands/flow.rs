//! `pyusdt flow`: the call tree of one process, in the spirit of DTrace's `py_flowinfo.d` and
//! SystemTap's `show-call-hierarchy.stp` — one line per entry and return, indented by depth.
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::mem::MaybeUninit;
use std::sync::atomic::Ordering;

use crate::attach::{Tracer, TracerOptions};
use crate::cli::FlowArgs;
use crate::commands::child::{fork_stopped, reap};
use crate::commands::run::{in_terminal_foreground, resolve_command};
use crate::decode::{self, FlowKind, FlowRecord, Record};
use crate::discover::{process, Binary};
use crate::exit::{CliError, CliResult, Exit};
use crate::pipeline::signal_flag;
use crate::probes::ProbeSet;
use crate::text::safe;

pub fn run(args: &FlowArgs) -> CliResult<i32> {
    let command = !args.command.is_empty();
    if command == args.pid.is_some() {
        return Err(CliError::new(
            Exit::Usage,
            "give the process to follow: --pid PID, or a command after `--` (not both)",
        ));
    }
    // The interpreter files the process uses.
    let (binaries, resolved) = if let Some(pid) = args.pid {
        let files = process::files_of(pid)?;
        if !files.runs_python() {
            return Err(crate::pipeline::not_python_error(&files, pid));
        }
        let files = files.via_proc_root();
        let binaries: Vec<Binary> = files.iter().filter_map(|f| Binary::open(f).ok()).collect();
        (binaries, None)
    } else {
        let (resolved, implied) = resolve_command(&args.command)?;
        let implied = implied.ok_or_else(|| {
            CliError::new(
                Exit::NoMarkers,
                format!(
                    "{} does not run a CPython with markers: nothing to follow",
                    resolved.display()
                ),
            )
        })?;
        (vec![Binary::open(&implied)?], Some(resolved))
    };
    let usable: Vec<&Binary> = binaries
        .iter()
        .filter(|b| b.has_marker("function__return"))
        .collect();
    if usable.is_empty() {
        let why = binaries
            .iter()
            .find(|b| b.has_python_markers())
            .map(|b| {
                b.firing("function__entry")
                    .explain("function__entry", b.version)
            })
            .unwrap_or_else(|| crate::discover::NO_MARKERS_HINT.to_string());
        return Err(CliError::new(
            Exit::NoMarkers,
            format!("this interpreter has no function markers: {why}"),
        ));
    }
    crate::preflight::check_tracing(args.pid.is_some())?;

    let mut storage = MaybeUninit::uninit();
    let mut tracer = Tracer::load(
        &mut storage,
        TracerOptions {
            probes: ProbeSet::none(),
            ring_buffer_bytes: 16 << 20,
            follow_processes: false,
            audit_args: false,
            audit_nargs: false,
            count_functions: false,
            time_functions: false,
            flow: Some(args.lines),
            min_function_ns: 0,
            report_execs: false,
            audit_per_process: false,
            metrics_only: false,
        },
    )?;

    let interrupted = signal_flag(libc::SIGINT)?;
    let terminated = signal_flag(libc::SIGTERM)?;
    let pid = match (args.pid, &resolved) {
        (Some(pid), _) => pid,
        (None, Some(resolved)) => fork_stopped(resolved, &args.command)?,
        (None, None) => return Err(CliError::new(Exit::Usage, "nothing to follow")),
    };
    let mut attached = 0;
    let abandon = |pid: i32| {
        // SAFETY: kill and waitpid have no memory-safety preconditions; `pid` is our child,
        // stopped before its exec: it is killed and reaped, never left behind.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    };
    for b in &usable {
        match tracer.attach_flow(b, pid) {
            Ok(Some(true)) => {
                attached += 1;
                tracing::warn!(
                    "CPython {}: function__entry fires only on the tracing path; \
                     the line marker is enabled for PID {pid} alone, which makes it much slower \
                     on call-heavy code",
                    b.version.map_or_else(|| "3.11".into(), |v| v.to_string())
                )
            }
            Ok(Some(false)) => attached += 1,
            Ok(None) => {}
            Err(e) => {
                if resolved.is_some() {
                    abandon(pid);
                }
                return Err(e.into());
            }
        }
    }
    if attached == 0 {
        if resolved.is_some() {
            abandon(pid);
        }
        return Err(CliError::new(
            Exit::NoMarkers,
            "no interpreter file of this process fires function entries: nothing to follow",
        ));
    }
    if resolved.is_some() {
        // SAFETY: as above; the child waits stopped before its exec.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }

    let terminal_delivers_sigint = in_terminal_foreground();
    let mut printer = Printer::new(args.from.clone());
    let out = std::cell::RefCell::new(BufWriter::new(std::io::stdout().lock()));
    let mut exit_status: Option<i32> = None;
    tracer.run(
        |data| {
            if let Ok(Record::Flow(f)) = decode::decode(data) {
                printer.print(&mut *out.borrow_mut(), &f);
            }
        },
        || {
            let _ = out.borrow_mut().flush();
            if resolved.is_some() {
                for (flag, signal) in [(&terminated, libc::SIGTERM), (&interrupted, libc::SIGINT)] {
                    if flag.swap(false, Ordering::Relaxed)
                        && (signal != libc::SIGINT || !terminal_delivers_sigint)
                    {
                        // SAFETY: as above.
                        unsafe { libc::kill(pid, signal) };
                    }
                }
                exit_status = reap(pid);
                exit_status.is_none()
            } else {
                !(interrupted.load(Ordering::Relaxed) || terminated.load(Ordering::Relaxed))
                    && process::is_alive(pid as u32)
            }
        },
    )?;
    let _ = out.borrow_mut().flush();
    let stats = tracer.stats()?;
    if stats.flow_dropped > 0 {
        tracing::warn!(
            "{} records lost (ring buffer full): the tree above has gaps",
            stats.flow_dropped
        );
    }
    Ok(exit_status.unwrap_or(0))
}

/// How many levels deep the call a return of `name` ends is: the innermost call, or on 3.15,
/// where creating a generator or coroutine fires an entry with no return, the matching one of
/// the 4 below it (the creations above it are dropped; as in the kernel's span pairing).
fn return_level(stack: &[String], name: &str) -> usize {
    let n = stack.len();
    if stack.last().is_some_and(|top| top != name) {
        for k in (n.saturating_sub(5)..n - 1).rev() {
            if stack[k] == name {
                return k + 1;
            }
        }
    }
    n
}

/// Indents by per-thread depth; with `--from FUNC`, prints a thread only while FUNC runs.
struct Printer {
    from: Option<String>,
    /// Per thread: the names of the calls in progress, innermost last.
    stacks: HashMap<u32, Vec<String>>,
    /// Per thread: the depth at which `from` was entered.
    active: HashMap<u32, i32>,
    first_ns: Option<u64>,
}

impl Printer {
    fn new(from: Option<String>) -> Printer {
        Printer {
            from,
            stacks: HashMap::new(),
            active: HashMap::new(),
            first_ns: None,
        }
    }

    fn print(&mut self, out: &mut impl Write, f: &FlowRecord<'_>) {
        let h = f.header;
        let tid = h.tid;
        // 3.15's __init__ shim returns at line -1 and had no entry: it ends no call.
        if f.kind == FlowKind::Return && f.line < 0 {
            return;
        }
        let stack = self.stacks.entry(tid).or_default();
        let level = match f.kind {
            FlowKind::Entry => {
                stack.push(f.name.to_string());
                stack.len() as i32
            }
            FlowKind::Return => {
                let l = return_level(stack, &f.name);
                stack.truncate(l.saturating_sub(1));
                l as i32
            }
            FlowKind::Line => stack.len() as i32,
        };
        if let Some(from) = &self.from {
            match (self.active.get(&tid), f.kind) {
                (None, FlowKind::Entry) if f.name == from.as_str() => {
                    self.active.insert(tid, level);
                }
                (None, _) => return,
                _ => {}
            }
        }
        let base = self.active.get(&tid).map_or(1, |d| *d);
        let indent = usize::try_from(level - base).unwrap_or(0) * 2;
        let t0 = *self.first_ns.get_or_insert(h.end_ns);
        let us = h.end_ns.saturating_sub(t0) / 1000;
        let arrow = match f.kind {
            FlowKind::Entry => "->",
            FlowKind::Return => "<-",
            FlowKind::Line => "..",
        };
        let _ = writeln!(
            out,
            "{us:>10} {}:{} {:indent$}{arrow} {}:{}:{}",
            h.pid,
            tid,
            "",
            safe(&f.file),
            safe(&f.name),
            f.line
        );
        if f.kind == FlowKind::Return && self.active.get(&tid) == Some(&level) {
            self.active.remove(&tid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::return_level;

    #[test]
    fn returns_skip_creation_entries() {
        let stack: Vec<String> = ["start", "gen", "consume", "<genexpr>"]
            .map(String::from)
            .to_vec();
        // The innermost call returns: one level up.
        assert_eq!(return_level(&stack, "<genexpr>"), 4);
        // consume returns over a generator it created and never finished (3.15).
        assert_eq!(return_level(&stack, "consume"), 3);
        // No match: the innermost is ended, as on 3.8-3.11.
        assert_eq!(return_level(&stack, "other"), 4);
        assert_eq!(return_level(&[], "x"), 0);
    }
}
