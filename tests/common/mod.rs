//! Helpers shared by the end-to-end tests: the binary under test, the privileged-test gate,
//! processes that never outlive a test, and JSON-lines output.
#![allow(dead_code)]

pub mod otlp;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Debian's CPython, built --with-dtrace (pyenv's `python3.11` on PATH has no markers).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3.11";
pub const SYSTEM_LIBPYTHON: &str = "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0";

/// The binary under test: cargo's, or `PYUSDT_BIN` (scripts/test.sh runs the adversarial
/// suites against the release build that way, as it is shipped).
pub fn binary() -> PathBuf {
    std::env::var_os("PYUSDT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pyusdt")))
}

/// The binary, logging at info, keeping no budget memory between runs (src/budget_memory.rs):
/// each test's processes are learned from nothing, whatever ran before. Tests of the memory
/// set `PYUSDT_STATE_DIR` themselves.
pub fn pyusdt() -> Command {
    let mut c = Command::new(binary());
    c.env("PYUSDT_LOG", "info").env("PYUSDT_STATE_DIR", "");
    c
}

/// Unmounts every tracefs and debugfs of a private mount namespace, checks that none is left,
/// then execs its arguments (same PID: signals and `Reaped` reach pyusdt itself).
const FRESH_HOST: &str = r#"
mounted() { sed -n 's/^[^ ]* [^ ]* [^ ]* [^ ]* \([^ ]*\) .* - \(tracefs\|debugfs\) .*/\1/p' /proc/self/mountinfo; }
for m in $(mounted | sort -r); do umount -l "$m" || { echo "fresh host: cannot unmount $m" >&2; exit 97; }; done
[ -z "$(mounted)" ] || { echo "fresh host: tracefs or debugfs still mounted" >&2; exit 98; }
exec "$@"
"#;

/// `pyusdt` as on a freshly booted host: in a mount namespace of its own where no tracefs and
/// no debugfs is mounted, whatever this machine has mounted. Catches any dependence on them
/// (libbpf looks tracepoint ids up in tracefs for SEC("tracepoint/...") programs).
pub fn pyusdt_on_fresh_host() -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        FRESH_HOST,
        "sh",
    ])
    .arg(binary())
    .env("PYUSDT_LOG", "info")
    .env("PYUSDT_STATE_DIR", "");
    c
}

pub fn workload(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(name)
}

/// Whether tests needing root, BPF and Debian's python3.11 can run here. Outside CI they skip
/// with the reason; with CI=true they fail, since a skipped test proves nothing.
pub fn require_bpf(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let missing = if !root {
        Some("not running as root")
    } else if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("kernel without BTF")
    } else if !Path::new(SYSTEM_PYTHON).exists() {
        Some("Debian's /usr/bin/python3.11 is not installed (scripts/setup.sh installs it)")
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test} needs root, BPF and {SYSTEM_PYTHON}: {why} (CI=true: not skipping)")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// A child process ended by its PID when the guard drops (never by name). A child started as
/// the leader of its own process group (`Command::process_group(0)`) is ended with its group,
/// so that what it started (`pyusdt run`'s command) does not outlive the test either.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let pid = self.0.id() as i32;
            // SAFETY: getpgid and kill have no memory-safety preconditions; the child is ours
            // and not yet reaped, so its PID (and group ID) cannot have been reused.
            unsafe {
                if libc::getpgid(pid) == pid {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends `signal` to a child and waits at most `limit` for it to exit.
pub fn stop(child: &mut Child, signal: i32, limit: Duration) -> std::process::ExitStatus {
    // SAFETY: kill has no memory-safety preconditions; the child is ours and unreaped.
    unsafe { libc::kill(child.id() as i32, signal) };
    wait_at_most(child, limit)
}

/// Waits at most `limit` for a child to exit (the test fails otherwise).
pub fn wait_at_most(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process {} still running after {limit:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Compiles one C file with the system compiler (gcc from scripts/setup.sh).
pub fn compile(source: &Path, out: &Path, flags: &[&str]) {
    let cc = Command::new("cc")
        .args(flags)
        .arg(source)
        .arg("-o")
        .arg(out)
        .output()
        .expect("cc");
    assert!(
        cc.status.success(),
        "cc {}: {}",
        source.display(),
        text(&cc).1
    );
}

/// Lines of a child's stderr, read by a background thread (the child never blocks on a full
/// pipe, whether or not the lines are read).
pub fn stderr_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits (20 s at most) for a line containing `needle`; returns it.
pub fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let mut seen = Vec::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("never saw {needle:?}: {seen:#?}"));
        if line.contains(needle) {
            return line;
        }
        seen.push(line);
    }
}

/// Starts `pyusdt agent ARGS` with its stderr lines, on a fresh host (`pyusdt_on_fresh_host`).
pub fn start_agent(args: &[&str]) -> (Reaped, std::sync::mpsc::Receiver<String>) {
    let mut agent = Reaped(
        pyusdt_on_fresh_host()
            .arg("agent")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = stderr_lines(&mut agent.0);
    (agent, lines)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// GC and import records of a JSON-lines output that have a duration: each one is a span in
/// the OTLP export.
pub fn span_records(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| (r["type"] == "gc" || r["type"] == "import") && r["duration_ns"].is_u64())
        .collect()
}

/// The closing summary record of a JSON-lines output.
pub fn summary(records: &[Value]) -> &Value {
    let last = records.last().expect("empty output");
    assert_eq!(last["type"], "summary", "last record is not the summary");
    last
}

/// `pyusdt doctor --json`'s diagnoses, one per Python process of the host.
pub fn doctor_json() -> Vec<Value> {
    let out = pyusdt().args(["doctor", "--json"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "doctor: {stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    v["processes"].as_array().unwrap().clone()
}

/// `pyusdt doctor --json`'s diagnosis of `pid` (None: doctor does not list it).
pub fn diagnosis(pid: u32) -> Option<Value> {
    doctor_json().into_iter().find(|p| p["pid"] == pid)
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A marker-bearing CPython the end-to-end tests run on.
#[derive(Debug, Clone)]
pub struct Interpreter {
    pub minor: u32,
    pub python: PathBuf,
    /// `python3.X-config`, for building embedders.
    pub config: PathBuf,
    /// Extra linker flags for embedders (a run path for builds outside the default directories).
    pub embed_ldflags: Vec<String>,
    /// Whether `config` and the headers are there to build an embedder (not for the unpacked
    /// Debian binaries of 3.14 and 3.15, which bring their own glibc).
    pub embeddable: bool,
}

/// Where scripts/python-matrix.sh keeps its builds.
pub fn matrix_cache() -> PathBuf {
    std::env::var_os("PYUSDT_MATRIX_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/pyusdt-test"))
}

/// Debian's 3.11, then the versions scripts/python-matrix.sh provides (3.9 and 3.13 built,
/// 3.14 and 3.15 Debian's own binaries). With CI=true the matrix versions must be there (set
/// PYUSDT_MATRIX_OPTIONAL=1 to accept fewer).
pub fn interpreters() -> Vec<Interpreter> {
    let mut all = vec![Interpreter {
        minor: 11,
        python: PathBuf::from(SYSTEM_PYTHON),
        config: PathBuf::from("/usr/bin/python3.11-config"),
        embed_ldflags: Vec::new(),
        embeddable: true,
    }];
    for minor in [9u32, 13, 14, 15] {
        let prefix = matrix_cache().join(format!("python-3.{minor}"));
        let python = prefix.join(format!("bin/python3.{minor}"));
        if python.exists() {
            all.push(Interpreter {
                minor,
                python,
                config: prefix.join(format!("bin/python3.{minor}-config")),
                embed_ldflags: vec![format!("-Wl,-rpath,{}", prefix.join("lib").display())],
                embeddable: minor <= 13,
            });
        } else if std::env::var("CI").as_deref() == Ok("true")
            && std::env::var("PYUSDT_MATRIX_OPTIONAL").is_err()
        {
            panic!(
                "{} missing: scripts/python-matrix.sh builds it",
                python.display()
            );
        } else {
            eprintln!(
                "NOTE: CPython 3.{minor} not built ({}); scripts/python-matrix.sh builds it",
                python.display()
            );
        }
    }
    all
}

/// A built interpreter whose function__entry fires for every call (3.8-3.10), for the tests of
/// function spans and entry counting; None, with a note naming `what` was not checked, when
/// none is built (outside CI: `interpreters` fails CI for a missing build).
pub fn interpreter_with_entries(what: &str) -> Option<Interpreter> {
    let found = interpreters().into_iter().find(|i| i.minor <= 10);
    if found.is_none() {
        eprintln!("NOTE: no CPython <= 3.10 built (scripts/python-matrix.sh): {what} not checked");
    }
    found
}

/// Every provided interpreter whose function__entry fires for every frame: 3.8-3.10 and 3.15
/// (where a generator's creation fires one more entry). Empty, with a note naming `what`, when
/// none is there (outside CI: `interpreters` fails CI for a missing one).
pub fn interpreters_with_entries(what: &str) -> Vec<Interpreter> {
    let found: Vec<_> = interpreters()
        .into_iter()
        .filter(|i| i.minor <= 10 || i.minor == 15)
        .collect();
    if found.is_empty() {
        eprintln!(
            "NOTE: no CPython <= 3.10 nor 3.15 (scripts/python-matrix.sh): {what} not checked"
        );
    }
    found
}

/// A Python process in its own mount namespace, running a copy of python3.11 that only exists
/// there (a tmpfs mounted over `dir`): like a container's interpreter, invisible to the host
/// except through /proc/PID/root. It waits for `go` to exist, then imports a module named after
/// its PID and collects.
pub fn namespaced_python(dir: &Path, go: &Path) -> std::process::Child {
    namespaced_python_with(dir, go, false)
}

/// As `namespaced_python`; `own_pids`: also in its own PID namespace (as PID 1 there, so the
/// module it imports is `pyusdt_ns_1`), like a container without the host's PIDs.
pub fn namespaced_python_with(dir: &Path, go: &Path, own_pids: bool) -> std::process::Child {
    let code = format!(
        "import os, gc, time\n\
         while not os.path.exists({go:?}): time.sleep(0.02)\n\
         try:\n    __import__(f'pyusdt_ns_{{os.getpid()}}')\nexcept ImportError:\n    pass\n\
         gc.collect()\n",
        go = go.to_str().unwrap()
    );
    let script = format!(
        "mount -t tmpfs none {d} && cp {SYSTEM_PYTHON} {d}/python3.11 && exec {d}/python3.11 -c \"$0\"",
        d = dir.display()
    );
    let pid_ns: &[&str] = if own_pids { &["--pid", "--fork"] } else { &[] };
    std::process::Command::new("unshare")
        .args(pid_ns)
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            &code,
        ])
        .spawn()
        .unwrap()
}

/// Checks a Prometheus exposition with Prometheus's own linter (`promtool check metrics`);
/// outside CI a machine without promtool skips the check.
pub fn promtool_check(body: &str) {
    use std::io::Write;
    use std::process::Stdio;
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut promtool) => {
            promtool
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let out = promtool.wait_with_output().unwrap();
            let (o, e) = text(&out);
            assert!(out.status.success(), "promtool check metrics: {o}{e}");
        }
        Err(_) => assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "promtool missing: scripts/setup.sh installs prometheus"
        ),
    }
}

/// The body of `GET /metrics` from an agent's endpoint at `addr` (the answer must be 200 OK).
pub fn metrics_body(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    body.to_string()
}
