//! `pyusdt run -- CMD`: trace a command and its descendants from their first instruction.
use std::collections::HashSet;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cli::RunArgs;
use crate::commands::child::{fork_stopped, reap, resume};
use crate::discover::interpreters::Scan;
use crate::discover::{process, Binary, NO_MARKERS_HINT};
use crate::exit::{CliError, CliResult, Exit};
use crate::pipeline::{
    interpreters_to_trace, no_interpreter_error, signal_flag, Session, Terminal,
};

pub fn run(args: &RunArgs) -> CliResult<i32> {
    let (resolved, implied) = resolve_command(&args.command)?;
    // The file the command runs (interpreter or libpython): its process gets function probes.
    let implied_binary = implied.as_deref().and_then(|p| Binary::open(p).ok());
    // The usual locations cover the Pythons the command may start; scanning every process of
    // the host is the agent's job.
    let scan = Scan {
        processes: false,
        locations: !args.trace.no_discover,
    };
    let binaries = interpreters_to_trace(&args.trace.pythons, implied, scan, &mut HashSet::new())?;
    if binaries.is_empty() {
        return Err(no_interpreter_error());
    }

    // Registered before the command starts: pyusdt must outlive the command to drain its last
    // events and print the summary. Signals are passed on instead (see `forward`).
    let interrupted = signal_flag(libc::SIGINT)?;
    let terminated = signal_flag(libc::SIGTERM)?;
    // Ctrl-C on a terminal reaches the whole foreground process group, the command included:
    // passing SIGINT on as well would deliver it twice.
    let terminal_delivers_sigint = in_terminal_foreground();

    let mut storage = MaybeUninit::uninit();
    let mut session = Session::start(
        &mut storage,
        &args.trace,
        true,
        Terminal::Stderr,
        None,
        None,
    )?;
    if session.attach_all(&binaries) == 0 {
        session.warn_without_function_probes();
        return Err(CliError::new(
            Exit::Failure,
            "could not attach to any interpreter file (see the warnings above)",
        ));
    }
    session.warn_without_function_probes();
    if command_interpreter(&resolved).is_none() {
        let program = resolved.display().to_string();
        tracing::info!(
            "{program} is not a Python program: the Python processes it starts are traced"
        );
        session.note_not_python(&program);
    }
    // The command is a child of this process: the fork tracepoint adds it to the traced set
    // before it runs a single instruction of its own.
    session.tracer.follow_children_of_self()?;

    if !is_executable(&resolved) {
        return Err(CliError::new(
            Exit::CommandNotExecutable,
            format!("cannot start {}: permission denied", resolved.display()),
        ));
    }
    // Stopped before its exec: function probes scoped to its PID go in first.
    let child_pid = fork_stopped(&resolved, &args.command)?;
    let words: Vec<_> = args.command.iter().map(|w| w.to_string_lossy()).collect();
    // Events carry host PIDs; in a container without the host's PID namespace the child's PID
    // here differs, and /proc/PID would show other processes.
    let host_pid = session
        .tracer
        .first_child_host_pid()
        .unwrap_or(child_pid as u32);
    if host_pid != child_pid as u32 {
        session.pids_are_foreign();
    }
    session.name_process(host_pid, &words.join(" "));
    if let Some(binary) = implied_binary {
        session.follow_functions(host_pid, child_pid, &binary);
    }
    session.hold_starts();
    resume(child_pid);

    let mut status: Option<i32> = None;
    session.trace(|| {
        // Each signal is passed on as often as it arrives: a command that ignores the first
        // SIGTERM gets the second.
        forward(&terminated, libc::SIGTERM, child_pid);
        if !terminal_delivers_sigint {
            forward(&interrupted, libc::SIGINT, child_pid);
        } else {
            interrupted.store(false, Ordering::Relaxed);
        }
        status = reap(child_pid);
        status.is_none()
    })?;
    session.finish()?;
    Ok(status.unwrap_or(1))
}

/// Sends `signal` to the command when `flag` was raised since the last look.
pub(crate) fn forward(flag: &AtomicBool, signal: libc::c_int, child: libc::pid_t) {
    if flag.swap(false, Ordering::Relaxed) {
        // SAFETY: kill has no memory-safety preconditions; `child` is our unreaped child.
        unsafe { libc::kill(child, signal) };
    }
}

/// Whether this process is in the foreground process group of its controlling terminal.
pub(crate) fn in_terminal_foreground() -> bool {
    // SAFETY: tcgetpgrp and getpgrp only read process state; an fd without a terminal gives -1.
    let (fg, own) = unsafe { (libc::tcgetpgrp(libc::STDIN_FILENO), libc::getpgrp()) };
    fg != -1 && fg == own
}

/// Resolves the command to run, and the interpreter file to attach for it: the interpreter it
/// runs, or the libpython that interpreter (or an embedder) links. Warns now, rather than after
/// a silent run, when the command's Python cannot be traced.
pub(crate) fn resolve_command(
    command: &[std::ffi::OsString],
) -> CliResult<(PathBuf, Option<PathBuf>)> {
    let program = &command[0];
    let resolved = resolve_program(program).ok_or_else(|| {
        CliError::new(
            Exit::CommandNotFound,
            format!("command not found: {}", program.to_string_lossy()),
        )
    })?;
    let mut implied = None;
    if let Some(interpreter) = command_interpreter(&resolved) {
        let name = program.to_string_lossy();
        match Binary::open(&interpreter) {
            Ok(b) if b.traceable() => implied = Some(interpreter),
            // A --enable-shared build: the markers (or hook points) are in the libpython it
            // links.
            Ok(b)
                if b.linked_libpython()
                    .is_some_and(|l| Binary::open(&l).is_ok_and(|lib| lib.traceable())) =>
            {
                implied = b.linked_libpython();
            }
            Ok(b) => tracing::warn!(
                "`{name}` runs {}{}, which has no CPython markers, nor hook points pyusdt can \
                 trace through: it will not be traced. {NO_MARKERS_HINT}",
                b.path.display(),
                b.version
                    .map_or_else(String::new, |v| format!(" (CPython {v})")),
            ),
            Err(e) => tracing::warn!("`{name}`: {e}; it will not be traced"),
        }
    }
    Ok((resolved, implied))
}

/// Starts the command (argv[0] as the user typed it).
pub(crate) fn spawn(
    command: &[std::ffi::OsString],
    resolved: &Path,
) -> CliResult<std::process::Child> {
    Command::new(resolved)
        .arg0(&command[0])
        .args(&command[1..])
        .spawn()
        .map_err(|e| {
            let exit = match e.kind() {
                std::io::ErrorKind::NotFound => Exit::CommandNotFound,
                _ => Exit::CommandNotExecutable,
            };
            CliError::new(exit, format!("cannot start {}: {e}", resolved.display()))
        })
}

/// As shells report it: the exit code, or 128 + the signal that killed the command.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// `python3` → the first executable `python3` on PATH; paths with a slash are taken as given.
fn resolve_program(program: &OsStr) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.components().count() > 1 || program.to_string_lossy().contains('/') {
        return p.exists().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(p))
        .find(|c| is_executable(c))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The interpreter a command runs, when it looks like Python: the file itself when it is named
/// like one (a pyenv shim included, so that its lack of markers is reported), else the program
/// of its `#!` line (through `env`), else the file when it carries CPython markers or links
/// libpython (embedders).
fn command_interpreter(resolved: &Path) -> Option<PathBuf> {
    let name = resolved.file_name()?.to_str()?;
    if process::is_python_name(name) {
        return Some(resolved.to_path_buf());
    }
    let head = read_head(resolved)?;
    if !head.starts_with(b"#!") {
        // An embedder: markers of its own (static) or a libpython it links (shared).
        let embeds = Binary::open(resolved)
            .is_ok_and(|b| b.has_python_markers() || b.linked_libpython().is_some());
        return embeds.then(|| resolved.to_path_buf());
    }
    let line = head[2..].split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let first = words.next()?;
    let interpreter = if Path::new(first).file_name()? == "env" {
        let prog = words.find(|w| !w.starts_with('-'))?;
        resolve_program(OsStr::new(prog))?
    } else {
        PathBuf::from(first)
    };
    process::is_python_name(interpreter.file_name()?.to_str()?).then_some(interpreter)
}

fn read_head(p: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0; 256];
    let n = std::fs::File::open(p).ok()?.read(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}
