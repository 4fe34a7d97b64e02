//! Hostile processes against a real `pyusdt agent` (issue 18, section 2): files that a traced
//! process names and that are not what they seem. Each test runs the attack as an
//! unprivileged user (uid 65534) and asserts that the agent keeps tracing a well-behaved
//! Python alongside (every explicit `gc.collect()` reported), and that no uprobe went where it
//! should not: every uprobe of the host is listed with its file and offsets (the kernel's
//! `bpf_link_info`, what `bpftool link` shows; Debian's bpftool 7.1 predates uprobe_multi links
//! and prints no file for them, so the same query is made here through libbpf-rs).
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::*;
use libbpf_rs::query::{LinkInfoIter, LinkTypeInfo};

/// The unprivileged user the attacks run as.
const NOBODY: u32 = 65534;
/// Explicit collections of the well-behaved process.
const COLLECTIONS: usize = 20;

/// One test at a time: each starts an agent and lists every uprobe of the host.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every uprobe attached on the host: (file, offsets). USDT probes attach as uprobe_multi links
/// on this kernel; single uprobes (perf events) are listed too.
fn uprobes() -> Vec<(String, Vec<u64>)> {
    LinkInfoIter::default()
        .filter_map(|link| match link.info {
            LinkTypeInfo::UprobeMulti(u) => {
                Some((u.path?.to_string_lossy().into_owned(), u.offsets))
            }
            _ => None,
        })
        .collect()
}

/// The files that process `pid` (the agent) holds uprobes on: its link descriptors
/// (/proc/PID/fdinfo names their link IDs), matched with every link's information. Other
/// agents on the machine may hold uprobes on the same files: these are not counted.
fn files_probed_by(pid: u32) -> std::collections::BTreeSet<String> {
    let ids: std::collections::HashSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|rd| {
            rd.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .filter_map(|info| {
                    info.lines()
                        .find_map(|l| l.strip_prefix("link_id:"))
                        .and_then(|id| id.trim().parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    LinkInfoIter::default()
        .filter(|link| ids.contains(&link.id))
        .filter_map(|link| match link.info {
            LinkTypeInfo::UprobeMulti(u) => Some(u.path?.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

/// The uprobes on files under `dir`.
fn uprobes_under(dir: &Path) -> Vec<(String, Vec<u64>)> {
    let prefix = dir.to_string_lossy().into_owned();
    uprobes()
        .into_iter()
        .filter(|(path, _)| path.starts_with(&prefix))
        .collect()
}

/// A directory the attacker owns, with a world-traversable path.
fn attacker_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A Python script run as the attacker (uid/gid 65534).
fn as_nobody(program: &Path) -> Command {
    let mut c = Command::new(program);
    c.uid(NOBODY).gid(NOBODY).stdin(Stdio::null());
    c
}

/// `python -c` of a script that waits for `go`, then collects `n` times, automatic collection
/// off, and exits without the interpreter's finalization (which collects too): its
/// collections are exactly the explicit ones.
fn collector_script(n: usize) -> String {
    format!(
        "import gc, os, sys, time\ngc.disable()\n\
         while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n\
         for _ in range({n}): gc.collect()\n\
         sys.stdout.flush()\nos._exit(0)\n"
    )
}

fn wait_exe(pid: u32, target: &str) {
    for _ in 0..500 {
        if std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|p| p.to_string_lossy().starts_with(target))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("process {pid} never ran {target}");
}

/// The agent under test, with its /metrics address and JSON-lines output.
struct Agent {
    child: Reaped,
    log: Receiver<String>,
    addr: String,
    out: PathBuf,
}

fn start(dir: &Path, extra: &[&str]) -> Agent {
    let out = dir.join("agent.jsonl");
    let mut args = vec![
        "--quiet",
        "--rescan-interval",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let (child, log) = start_agent(&args);
    let line = wait_for_line(&log, "serving /metrics and /healthz on http://");
    let addr = line.rsplit("http://").next().unwrap().trim().to_string();
    Agent {
        child,
        log,
        addr,
        out,
    }
}

impl Agent {
    /// `pyusdt_discovery_refused_total{reason}` as /metrics says it now.
    fn refused(&self, reason: &str) -> u64 {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr).unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        let needle = format!("reason=\"{reason}\"}}");
        body.lines()
            .filter(|l| l.starts_with("pyusdt_discovery_refused_total{") && l.contains(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Waits (20 s at most) until the refusals of `reason` reach `at_least`.
    fn wait_refused(&self, reason: &str, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = self.refused(reason);
            if n >= at_least {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "refused{{reason={reason}}} stayed at {n}, expected at least {at_least}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the agent and returns the lines it logged then (it stays an `Agent`: `stop` ends it).
    fn stop_lines(&self) -> Vec<String> {
        // SAFETY: kill has no memory-safety preconditions; the child is ours and unreaped.
        unsafe { libc::kill(self.child.0.id() as i32, libc::SIGTERM) };
        let mut lines = Vec::new();
        while let Ok(line) = self.log.recv_timeout(Duration::from_secs(20)) {
            let done = line.contains("stopping: detaching");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    }

    /// Stops the agent (it must exit cleanly) and returns its records.
    fn stop(mut self) -> Vec<serde_json::Value> {
        std::thread::sleep(Duration::from_millis(300));
        let status = stop(&mut self.child.0, libc::SIGTERM, Duration::from_secs(20));
        assert!(status.success(), "agent exit: {status:?}");
        read_jsonl(&self.out)
    }
}

/// A python3.11, run as the attacker, that maps the first page of each of `files` and then
/// `anonymous` pages one by one (alternating protections: no two merge into one mapping), and
/// waits for `go`. Returns once all are mapped.
fn mapper(go: &Path, anonymous: usize, files: &[impl AsRef<std::ffi::OsStr>]) -> Reaped {
    let mut p = Reaped(
        as_nobody(Path::new(SYSTEM_PYTHON))
            .args([
                "-c",
                "import mmap, os, sys, time\n\
                 keep = []\n\
                 for p in sys.argv[3:]:\n\
                 \x20   f = open(p, 'rb')\n\
                 \x20   keep.append(mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ))\n\
                 for i in range(int(sys.argv[2])):\n\
                 \x20   prot = mmap.PROT_READ if i % 2 else mmap.PROT_READ | mmap.PROT_WRITE\n\
                 \x20   keep.append(mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE, prot=prot))\n\
                 print('ready', flush=True)\n\
                 while not os.path.exists(sys.argv[1]): time.sleep(0.05)\n",
            ])
            .arg(go)
            .arg(anonymous.to_string())
            .args(files)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = [0u8; 6];
    p.0.stdout.take().unwrap().read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");
    p
}

/// Explicit collections (generation 2) reported for `pid`.
fn collections(records: &[serde_json::Value], pid: u32) -> usize {
    records
        .iter()
        .filter(|r| r["type"] == "gc" && r["pid"] == pid && r["generation"] == 2)
        .count()
}

/// The well-behaved Python of every test: Debian's python3.11, started once the agent traces,
/// `COLLECTIONS` explicit collections after `go` appears.
fn well_behaved(go: &Path) -> Reaped {
    Reaped(
        Command::new(SYSTEM_PYTHON)
            .args(["-c", &collector_script(COLLECTIONS)])
            .arg(go)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn finish(mut p: Reaped) -> u32 {
    let pid = p.0.id();
    assert!(wait_at_most(&mut p.0, Duration::from_secs(30)).success());
    pid
}

/// The reproduction of issue 18: a copy of python3.11 is started, deleted, and a FIFO named
/// `<path> (deleted)` (what /proc/PID/exe and /proc/PID/maps then show) put in its place. The
/// agent used to block for ever in `open()` of the FIFO at start-up, tracing nothing on the
/// whole host. Now it opens the executable through /proc/PID/exe (the file really run), never
/// the FIFO: it starts, traces the well-behaved process, and also traces the attacker's
/// process through its deleted executable (a uprobe on `<path> (deleted)` can only be on the
/// deleted regular file: the kernel attaches no uprobe to a FIFO).
#[test]
fn a_fifo_in_place_of_a_deleted_interpreter_blocks_nothing() {
    if !require_bpf("a_fifo_in_place_of_a_deleted_interpreter_blocks_nothing") {
        return;
    }
    let _serial = serial();
    let dir = attacker_dir();
    let work = tempfile::tempdir().unwrap();
    let copy = dir.path().join("python3.11");
    std::fs::copy(SYSTEM_PYTHON, &copy).unwrap();
    let go = work.path().join("go");
    let attacker = Reaped(
        as_nobody(&copy)
            .args(["-c", &collector_script(3)])
            .arg(&go)
            .spawn()
            .unwrap(),
    );
    wait_exe(attacker.0.id(), copy.to_str().unwrap());
    std::fs::remove_file(&copy).unwrap();
    let fifo = format!("{} (deleted)", copy.display());
    let status = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "mkfifo"])
        .arg(&fifo)
        .status()
        .expect("setpriv (util-linux)");
    assert!(status.success());

    let agent = start(work.path(), &[]);
    // Does not hang at start-up, nor at the rescans that look at the process again.
    // Found at start-up: attached before the agent says it traces.
    wait_for_line(&agent.log, "attached /proc/");
    wait_for_line(&agent.log, "tracing ");
    let victim = well_behaved(&go);
    std::fs::write(&go, b"").unwrap();
    let victim_pid = finish(victim);
    let attacker_pid = finish(attacker);

    let probes = uprobes_under(dir.path());
    assert!(
        probes.iter().all(|(path, _)| *path == fifo),
        "uprobes on unexpected files: {probes:?}"
    );
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo(),
        "the decoy is still a FIFO"
    );
    let records = agent.stop();
    assert_eq!(collections(&records, victim_pid), COLLECTIONS);
    // Its deleted executable was attached: the descriptor, not the path, was used.
    assert_eq!(collections(&records, attacker_pid), 3);
}

/// A path swapped after the process started: the attacker runs a copy of python3.11 from a
/// directory they own, then renames another marker-bearing file (a copy of libpython) over its
/// path. Resolving the path again (as the agent and libbpf did) examines and attaches the
/// file swapped in, which the process does not run: a trap and a semaphore write in a file of
/// the attacker's choosing. The agent now examines the file through /proc/PID/exe and attaches
/// through that same descriptor (`/proc/self/fd/N`): the uprobes are on the file the process
/// runs (shown as `<path> (deleted)`: no path leads to it any more, so only the descriptor can
/// have reached it) and none is on the file now at the path. The race itself (a swap between
/// examination and attach) cannot be timed from outside; this proves that attaching does not
/// go through the path at all, which closes it.
#[test]
fn a_path_swapped_after_start_is_not_what_gets_attached() {
    if !require_bpf("a_path_swapped_after_start_is_not_what_gets_attached") {
        return;
    }
    let _serial = serial();
    let dir = attacker_dir();
    let work = tempfile::tempdir().unwrap();
    let path = dir.path().join("python3.11");
    std::fs::copy(SYSTEM_PYTHON, &path).unwrap();
    let staged = dir.path().join("staged");
    std::fs::copy(SYSTEM_LIBPYTHON, &staged).unwrap();
    let go = work.path().join("go");
    let attacker = Reaped(
        as_nobody(&path)
            .args(["-c", &collector_script(3)])
            .arg(&go)
            .spawn()
            .unwrap(),
    );
    wait_exe(attacker.0.id(), path.to_str().unwrap());
    // The swap, by the directory's owner.
    let status = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "mv",
            "-f",
        ])
        .arg(&staged)
        .arg(&path)
        .status()
        .expect("setpriv (util-linux)");
    assert!(status.success());

    let agent = start(work.path(), &[]);
    // Found at start-up: attached before the agent says it traces.
    wait_for_line(&agent.log, "attached /proc/");
    wait_for_line(&agent.log, "tracing ");
    let victim = well_behaved(&go);
    std::fs::write(&go, b"").unwrap();
    let victim_pid = finish(victim);
    let attacker_pid = finish(attacker);

    let probes = uprobes_under(dir.path());
    let path = path.to_string_lossy().into_owned();
    let deleted = format!("{path} (deleted)");
    assert!(
        !probes.iter().any(|(p, _)| *p == path),
        "a uprobe is on the file swapped in: {probes:?}"
    );
    assert!(
        probes.iter().any(|(p, _)| *p == deleted),
        "no uprobe on the file the process runs: {probes:?}"
    );
    let records = agent.stop();
    assert_eq!(collections(&records, victim_pid), COLLECTIONS);
    assert_eq!(collections(&records, attacker_pid), 3);
}

/// Copies of libpython that their owner truncates in a loop, and replaces by new ones, while
/// its processes map them and the agent discovers them (tests/workloads/truncating_mapper.py).
/// A mapped read of such a file used to kill the agent with SIGBUS. The agent reads with `pread` (a short read is refused as changed_while_read),
/// and libbpf, which maps the file, only gets a file under a read lease, which a file open
/// for writing (open_for_writing) or owned by another user without CAP_LEASE (no_lease)
/// cannot get: the agent survives, keeps tracing, and any uprobe under the attacker's
/// directory is on one of the copies.
#[test]
fn files_truncated_while_discovered_do_not_kill_the_agent() {
    if !require_bpf("files_truncated_while_discovered_do_not_kill_the_agent") {
        return;
    }
    let _serial = serial();
    let dir = attacker_dir();
    let work = tempfile::tempdir().unwrap();
    let go = work.path().join("go");
    let agent = start(work.path(), &[]);
    wait_for_line(&agent.log, "tracing ");

    let mut attackers = Vec::new();
    let mut copies = Vec::new();
    for i in 0..2 {
        let copy = dir.path().join(format!("libpython3.11.so.{i}"));
        let attacker = as_nobody(Path::new(SYSTEM_PYTHON))
            .arg(workload("truncating_mapper.py"))
            .arg(&copy)
            .arg(SYSTEM_LIBPYTHON)
            .arg(&go)
            .spawn()
            .unwrap();
        attackers.push(Reaped(attacker));
        copies.push(copy.to_string_lossy().into_owned());
    }
    // Several rescans while the files are truncated.
    std::thread::sleep(Duration::from_secs(4));
    let victim = well_behaved(&go);
    std::fs::write(&go, b"").unwrap();
    let victim_pid = finish(victim);
    for a in attackers {
        finish(a);
    }

    // Which defence caught each examination depends on the race: said, not asserted.
    for reason in ["changed_while_read", "open_for_writing", "no_lease"] {
        eprintln!("refused {reason}: {}", agent.refused(reason));
    }
    let probes = uprobes_under(dir.path());
    assert!(
        probes
            .iter()
            .all(|(p, _)| copies.iter().any(|c| p.starts_with(c.as_str()))),
        "uprobes on unexpected files: {probes:?}"
    );
    let records = agent.stop();
    assert_eq!(collections(&records, victim_pid), COLLECTIONS);
}

/// A process with about 30,000 mappings, eight of them copies of libpython (distinct files
/// with markers), against an agent allowed six interpreter files. The agent stays responsive
/// (mappings are streamed and de-duplicated with a set), attaches no more files than allowed,
/// counts the others as refused (too_many_files), and releases the copies once the process
/// has exited (files found through a process do not hold their slots for ever); the copies
/// refused then are attached once slots are free and a process maps them.
#[test]
fn many_mappings_and_many_files_stay_bounded() {
    if !require_bpf("many_mappings_and_many_files_stay_bounded") {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let go = work.path().join("go");
    const MAX: usize = 6;
    // No more than the libpython files looked at per process (8): every copy is examined,
    // and those not attached are refused for want of a slot.
    const COPIES: usize = 8;
    let max = MAX.to_string();
    let agent = start(work.path(), &["--max-interpreter-files", &max]);
    wait_for_line(&agent.log, "tracing ");
    let agent_pid = agent.child.0.id();
    // The host's own files (and those of whatever else runs here), attached first.
    let before = files_probed_by(agent_pid).len();
    assert!(before < MAX, "the host alone has {before} files");

    let mut copies = Vec::new();
    for i in 0..COPIES {
        let copy = dir.path().join(format!("libpython3.11-copy{i}.so"));
        std::fs::copy(SYSTEM_LIBPYTHON, &copy).unwrap();
        copies.push(copy);
    }
    let hog = mapper(&go, 30_000, &copies);
    let mappings = std::fs::read_to_string(format!("/proc/{}/maps", hog.0.id()))
        .unwrap()
        .lines()
        .count();
    assert!(mappings >= 30_000, "only {mappings} mappings");

    let allowed = MAX - before;
    let refused = agent.wait_refused("too_many_files", (COPIES - allowed) as u64);
    let probed = files_probed_by(agent_pid);
    let prefix = dir.path().to_string_lossy().into_owned();
    let attached: std::collections::BTreeSet<&String> =
        probed.iter().filter(|p| p.starts_with(&prefix)).collect();
    assert!(
        probed.len() <= MAX,
        "{} files attached: {probed:?}",
        probed.len()
    );
    assert!(
        !attached.is_empty() && attached.len() <= allowed,
        "{allowed} copies may be attached, {refused} refusals: {attached:?}"
    );
    // Still responsive: the well-behaved process is traced in full.
    let victim = well_behaved(&go);
    std::fs::write(&go, b"").unwrap();
    let victim_pid = finish(victim);
    finish(hog);
    // The copies no process uses any more are released.
    wait_for_line(&agent.log, "released ");
    let deadline = Instant::now() + Duration::from_secs(20);
    while files_probed_by(agent_pid)
        .iter()
        .any(|p| p.starts_with(&prefix))
    {
        assert!(Instant::now() < deadline, "the copies were never released");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Their slots are free again: copies refused before are attached now that a process maps
    // them (they are not left out as examined for good).
    let refused_before: Vec<&PathBuf> = copies
        .iter()
        .filter(|c| !attached.contains(&c.to_string_lossy().into_owned()))
        .collect();
    let go_late = work.path().join("go-late");
    let late = mapper(&go_late, 0, &refused_before);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !files_probed_by(agent_pid)
        .iter()
        .any(|p| refused_before.iter().any(|c| c.to_string_lossy() == **p))
    {
        assert!(
            Instant::now() < deadline,
            "copies refused for want of a slot were never attached once slots were free"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::write(&go_late, b"").unwrap();
    finish(late);
    // The refusals are said again when the agent stops.
    let stopping = agent.stop_lines();
    assert!(
        stopping
            .iter()
            .any(|l| l.contains("refused (pyusdt.discovery.refused): ")
                && l.contains("too_many_files")),
        "{stopping:?}"
    );
    let records = agent.stop();
    assert_eq!(collections(&records, victim_pid), COLLECTIONS);
}
