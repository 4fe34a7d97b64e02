//! Every error a user can meet here gives a message naming the problem and a documented exit
//! code — never a panic.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::*;

fn assert_error(out: &Output, code: i32, needles: &[&str]) {
    let (stdout, stderr) = text(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs pyusdt as user `nobody` (needs root to switch).
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_pyusdt"))
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn missing_privileges_are_named() {
    if !require_bpf("missing_privileges_are_named") {
        return;
    }
    let out = as_nobody(&["run", "--", SYSTEM_PYTHON, "-c", "pass"]);
    assert_error(&out, 5, &["CAP_BPF", "CAP_PERFMON", "uid 65534", "setcap"]);
    let out = as_nobody(&["agent"]);
    assert_error(&out, 5, &["CAP_BPF"]);
}

#[test]
fn unreadable_file_is_a_permission_error() {
    if !require_bpf("unreadable_file_is_a_permission_error") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = dir.path().join("python3.11");
    std::fs::copy(SYSTEM_PYTHON, &f).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = as_nobody(&["list", f.to_str().unwrap()]);
    assert_error(&out, 5, &["cannot open", "Permission denied"]);
}

#[test]
fn bad_files_and_pids() {
    let out = pyusdt()
        .args(["list", "/nonexistent/python3.11"])
        .output()
        .unwrap();
    assert_error(&out, 3, &["cannot open /nonexistent/python3.11"]);

    let out = pyusdt().args(["list", "/bin/ls"]).output().unwrap();
    assert_error(
        &out,
        4,
        &["has no CPython markers", "--with-dtrace", "Docker Hub"],
    );

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("python3");
    std::fs::write(
        &script,
        "#!/usr/bin/env bash\nexec pyenv exec python3 \"$@\"\n",
    )
    .unwrap();
    let out = pyusdt().arg("list").arg(&script).output().unwrap();
    assert_error(&out, 4, &["not an ELF", "pyenv shim"]);

    // Truncated and corrupted ELF files: an error, not a crash.
    let elf = std::fs::read("/bin/ls").unwrap();
    for (i, len) in [4usize, 64, 100, 4096].into_iter().enumerate() {
        let p = dir.path().join(format!("trunc{i}"));
        std::fs::write(&p, &elf[..len]).unwrap();
        let out = pyusdt().arg("list").arg(&p).output().unwrap();
        let code = out.status.code();
        assert!(
            matches!(code, Some(4)),
            "truncated to {len}: {:?} {}",
            code,
            text(&out).1
        );
    }

    let out = pyusdt()
        .args(["list", "--pid", "99999999"])
        .output()
        .unwrap();
    assert_error(&out, 3, &["no process with PID 99999999"]);

    let sleeper = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(50));
    let pid = sleeper.0.id().to_string();
    let out = pyusdt().args(["list", "--pid", &pid]).output().unwrap();
    assert_error(&out, 4, &["is not a Python process"]);
}

#[test]
fn bad_command_lines() {
    let out = pyusdt()
        .args(["run", "--probes", "gc,functions", "--", "true"])
        .output()
        .unwrap();
    assert_error(&out, 2, &["unknown probe `functions`"]);
    let out = pyusdt()
        .args(["run", "--ring-buffer-size", "3M", "--", "true"])
        .output()
        .unwrap();
    assert_error(&out, 2, &["power of two"]);
    let out = pyusdt().args(["agent", "--no-discover"]).output().unwrap();
    assert_error(&out, 2, &["--no-discover needs at least one --python"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pyusdt.toml");
    std::fs::write(&cfg, "[otlp]\nendpont = \"http://127.0.0.1:4317\"\n").unwrap();
    let out = pyusdt()
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_error(&out, 2, &["unknown field `endpont`", "pyusdt.toml"]);
    let out = pyusdt()
        .args(["run", "--otlp-endpoint", "collector:4317", "--", "true"])
        .output()
        .unwrap();
    assert_error(&out, 2, &["must start with http:// or https://"]);
    let out = pyusdt()
        .args(["run", "--audit-logs", "open,[", "--", "true"])
        .output()
        .unwrap();
    assert_error(&out, 2, &["bad audit event pattern `[`"]);
    let out = pyusdt()
        .args(["run", "--audit-args", "--", "true"])
        .output()
        .unwrap();
    assert_error(&out, 2, &["--audit-args needs the audit marker"]);
    let out = pyusdt().args(["list"]).output().unwrap();
    assert_error(&out, 2, &["PATH"]);
    let out = pyusdt()
        .args(["run", "--", "pyusdt-no-such-command"])
        .output()
        .unwrap();
    assert_error(&out, 127, &["command not found: pyusdt-no-such-command"]);
}

#[test]
fn run_passes_the_commands_exit_code_and_output_through() {
    if !require_bpf("run_passes_the_commands_exit_code_and_output_through") {
        return;
    }
    let out = pyusdt()
        .args([
            "run",
            "--",
            SYSTEM_PYTHON,
            "-c",
            "print('out'); import sys; sys.exit(7)",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(
        text(&out).0,
        "out\n",
        "the command's stdout must pass through untouched"
    );
    let out = pyusdt()
        .args([
            "run",
            "--quiet",
            "--",
            SYSTEM_PYTHON,
            "-c",
            "import os; os.kill(os.getpid(), 9)",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(128 + 9));
}

/// `pyusdt run ... 2>&1 | head -1`: once the reader of pyusdt's stderr is gone, its output
/// ends quietly, and the command still runs and its exit code still passes through (this
/// panicked with "failed printing to stderr: Broken pipe" before the command ran).
#[test]
fn a_closed_stderr_stops_the_output_not_the_command() {
    if !require_bpf("a_closed_stderr_stops_the_output_not_the_command") {
        return;
    }
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let mut child = Reaped(
        pyusdt()
            .args(["run", "-q", "--probes", "gc,function", "--"])
            .arg(SYSTEM_PYTHON)
            .arg("-c")
            .arg(format!(
                "import time; time.sleep(0.5); open({:?}, 'w'); raise SystemExit(3)",
                ran.to_str().unwrap()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(stderr)
        .read_line(&mut first)
        .unwrap();
    // The reader closes its end here, as `head -1` does.
    let status = wait_at_most(&mut child.0, std::time::Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(3),
        "pyusdt must pass the command's exit code through, after a first line {first:?}"
    );
    assert!(ran.exists(), "the command never ran");
}

/// `-q` keeps the summary, warnings and errors, and nothing informational.
#[test]
fn quiet_prints_no_informational_lines() {
    if !require_bpf("quiet_prints_no_informational_lines") {
        return;
    }
    let out = Command::new(binary())
        .env_remove("PYUSDT_LOG")
        .args([
            "run",
            "-q",
            "--probes",
            "gc",
            "--",
            SYSTEM_PYTHON,
            "-c",
            "pass",
        ])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("pyusdt: traced"), "no summary: {stderr}");
    assert!(!stderr.contains("INFO"), "-q printed INFO lines: {stderr}");
}

/// An unreachable collector: the wait at exit is announced, not silent, and the error names
/// the cause in words, not as a dump of the gRPC library's structures (issue 23 item 7).
#[test]
fn an_unreachable_collector_is_said_in_words_at_exit() {
    if !require_bpf("an_unreachable_collector_is_said_in_words_at_exit") {
        return;
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    for protocol in ["grpc", "http/protobuf"] {
        let out = pyusdt()
            .args(["run", "-q", "--probes", "gc", "--flush-timeout", "1"])
            .args(["--otlp-protocol", protocol, "--otlp-endpoint", &endpoint])
            .args(["--", SYSTEM_PYTHON, "-c", "pass"])
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("the collector is not accepting exports")
                && stderr.contains("Connection refused"),
            "{protocol}: {stderr}"
        );
        assert!(
            !stderr.contains("source:") && !stderr.contains("Os {"),
            "{protocol}: a Debug dump: {stderr}"
        );
    }
}

#[test]
fn run_warns_when_the_command_python_has_no_markers() {
    if !require_bpf("run_warns_when_the_command_python_has_no_markers") {
        return;
    }
    // A marker-less "CPython" (named like one, as a pyenv or Docker Hub build would be).
    let dir = tempfile::tempdir().unwrap();
    let python = dir.path().join("python3.99");
    std::fs::write(dir.path().join("main.c"), "int main(void) { return 0; }\n").unwrap();
    compile(&dir.path().join("main.c"), &python, &[]);
    let out = pyusdt()
        .args(["run", "--quiet", "--"])
        .arg(&python)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("python3.99 (CPython 3.99), which has no CPython markers"),
        "{stderr}"
    );
    assert!(stderr.contains("no events"), "{stderr}");
}

/// Issue 23, item 7: what pyusdt says is true. A program that is not Python is named as such
/// (`run -- /bin/ls`, `top --pid`/`flow --pid` of a `sleep`), not sent to rebuild a Python with
/// --with-dtrace; a --enable-shared interpreter is not said to be untraced when its libpython
/// is attached; function probes that cannot work say why even with -q.
#[test]
fn messages_name_what_is_not_python_and_what_is_traced() {
    if !require_bpf("messages_name_what_is_not_python_and_what_is_traced") {
        return;
    }
    let out = pyusdt()
        .args(["run", "--", "/bin/ls", "/"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("/bin/ls is not a Python program"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no events: /bin/ls is not a Python program"),
        "{stderr}"
    );

    let sleeper = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
    let pid = sleeper.0.id().to_string();
    for cmd in [
        &["top", "--once", "--pid", &pid][..],
        &["flow", "--pid", &pid][..],
    ] {
        let out = pyusdt().args(cmd).output().unwrap();
        assert_error(
            &out,
            4,
            &[&format!(
                "PID {pid} (/usr/bin/sleep) is not a Python process"
            )],
        );
        let (_, stderr) = text(&out);
        assert!(!stderr.contains("--with-dtrace"), "{cmd:?}: {stderr}");
    }

    // 3.11 without line mode: entries do not fire, so no function spans; said with -q too.
    let out = pyusdt()
        .args(["run", "-q", "--probes", "function", "--"])
        .arg(SYSTEM_PYTHON)
        .args(["-c", "pass"])
        .output()
        .unwrap();
    assert_error(
        &out,
        1,
        &["no function spans: /usr/bin/python3.11", "--line-mode"],
    );
    let (_, stderr) = text(&out);
    assert!(!stderr.contains("none of the selected markers"), "{stderr}");

    // A --enable-shared 3.9 running: traced through its libpython, no warning about it.
    if let Some(i) = interpreters().into_iter().find(|i| i.minor == 9) {
        let busy = Reaped(
            Command::new(&i.python)
                .args(["-c", "import time; time.sleep(30)"])
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        let out = pyusdt()
            .args(["top", "--once", "--interval", "0.2"])
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(
            !stderr.contains("python3.9 (CPython 3.9) has no markers"),
            "{stderr}"
        );
        assert!(stderr.contains("libpython3.9.so.1.0"), "{stderr}");
        drop(busy);
    }
}
