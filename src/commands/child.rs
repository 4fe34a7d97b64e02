//! The command of `run` and `flow`, started stopped: probes scoped to its PID are attached
//! before it runs a single instruction of its own, then it is let go.
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use crate::exit::{CliError, CliResult, Exit};

/// Forks a child that stops itself before exec, so that probes scoped to its PID are in place
/// before its first instruction.
pub fn fork_stopped(program: &std::path::Path, argv: &[std::ffi::OsString]) -> CliResult<i32> {
    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| CliError::new(Exit::Usage, "an argument contains a NUL byte"))
    };
    let path = cstr(program.as_os_str().as_bytes())?;
    let args: Vec<CString> = argv
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<CliResult<_>>()?;
    let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: the child only calls async-signal-safe functions (raise, execv, _exit) on data
    // prepared before the fork; pyusdt has a single thread at this point.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(CliError::new(
            Exit::Failure,
            format!("fork: {}", std::io::Error::last_os_error()),
        ));
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            // Rust ignores SIGPIPE and pyusdt's threads may block signals: the command
            // starts with the defaults, as Command::spawn would give it.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::raise(libc::SIGSTOP);
            libc::execv(path.as_ptr(), ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child to stop; `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
    if r != pid || !libc::WIFSTOPPED(status) {
        return Err(CliError::new(
            Exit::CommandNotExecutable,
            "the command did not start",
        ));
    }
    Ok(pid)
}

/// The child's exit code once it has exited (128 + signal when killed).
pub fn reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: non-blocking wait for our own child; `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r != pid {
        return if r < 0 { Some(1) } else { None };
    }
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}

/// Lets a child started by `fork_stopped` go on (into its exec).
pub fn resume(pid: i32) {
    // SAFETY: kill has no memory-safety preconditions; `pid` is our stopped child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
}
