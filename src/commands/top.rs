//! `pyusdt top`: where a Python program's time goes, per function: calls, own time (less the
//! calls it made) and total time, counted and timed in the kernel (one map entry per process
//! and code object; nothing per call crosses to user space), printed as a table (or JSON) per
//! interval, or once over a command's whole run.
use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::mem::MaybeUninit;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::attach::{FunctionCount, Tracer, TracerOptions};
use crate::cli::{TopArgs, TopSort};
use crate::commands::run::{exit_code, forward, in_terminal_foreground, resolve_command, spawn};
use crate::discover::interpreters::Scan;
use crate::exit::{CliError, CliResult, Exit};
use crate::model::sampling::SamplingTable;
use crate::pipeline::probes::ProcessProbes;
use crate::pipeline::{interpreters_to_trace, no_interpreter_error, signal_flag};
use crate::probes::ProbeSet;
use crate::text::{count, duration, safe};

pub fn run(args: &TopArgs) -> CliResult<i32> {
    let with_command = !args.command.is_empty();
    let (resolved, implied) = if with_command {
        let (r, i) = resolve_command(&args.command)?;
        (Some(r), i)
    } else {
        (None, None)
    };
    let scan = Scan {
        processes: !with_command && !args.no_discover,
        locations: !args.no_discover,
    };
    // The command's own interpreter must have function markers, or its table stays empty.
    if let Some(b) = implied
        .as_deref()
        .and_then(|p| crate::discover::Binary::open(p).ok())
    {
        if !b.has_marker("function__return") && !b.has_marker("function__entry") {
            return Err(CliError::new(
                Exit::NoMarkers,
                format!(
                    "{} has no function markers to count calls with: {}",
                    b.path.display(),
                    b.firing("function__return")
                        .explain("function__return", b.version)
                ),
            ));
        }
    }
    // --pid: that process's own files, probes for it alone (no other process pays).
    let (binaries, attach_pid) = match (args.pid, with_command) {
        (Some(pid), false) => {
            let files = crate::discover::process::files_of(pid as i32)?;
            if !files.runs_python() {
                return Err(crate::pipeline::not_python_error(&files, pid as i32));
            }
            let files = files.via_proc_root();
            let found: Vec<_> = files
                .iter()
                .filter_map(|f| crate::discover::Binary::open(f).ok())
                .filter(|b| b.has_python_markers())
                .collect();
            (found, pid as i32)
        }
        _ => (
            interpreters_to_trace(&args.pythons, implied, scan, &mut HashSet::new())?,
            -1,
        ),
    };
    if binaries.is_empty() {
        return Err(no_interpreter_error());
    }
    crate::preflight::check_tracing(!with_command)?;

    let mut storage = MaybeUninit::uninit();
    let mut tracer = Tracer::load(
        &mut storage,
        TracerOptions {
            probes: ProbeSet::none(),
            ring_buffer_bytes: 4096 * 4,
            follow_processes: with_command,
            audit_args: false,
            audit_nargs: false,
            count_functions: true,
            time_functions: !args.calls_only,
            flow: None,
            min_function_ns: 0,
            report_execs: false,
            audit_per_process: false,
            metrics_only: false,
        },
    )?;
    // --max-overhead: counters per process, switched off and on by the budget. With a
    // command: counters on its processes alone (held at their start until attached, see
    // bpf/gate.h), so that no other Python process on the host pays for them; except from a
    // PID namespace of its own, where the kernel's PIDs of its descendants do not name them
    // here (counters per file then, the kernel keeping the command's calls only).
    let budget = args.max_overhead.and_then(|m| m.0);
    let per_process =
        budget.is_some() || (with_command && crate::discover::process::in_host_pid_namespace());
    let mut governor = per_process.then(|| Governor {
        probes: ProcessProbes::counters(budget),
        pid: args.pid,
        every_process: args.pid.is_none() && !with_command,
        children: with_command,
        scanned_at: None,
    });
    let mut counted_on = Vec::new();
    for b in &binaries {
        let version = b
            .version
            .map_or_else(|| "unknown version".into(), |v| format!("CPython {v}"));
        if let Some(g) = &mut governor {
            if g.probes.covers(b) {
                g.probes.add_binary(b);
                match budget {
                    Some(max) => tracing::info!(
                        "counting calls of {} ({version}) per process, within --max-overhead \
                         {:.1} %",
                        b.path.display(),
                        max * 100.0
                    ),
                    None => tracing::info!(
                        "counting calls of {} ({version}) at {}, in the command's processes{}",
                        b.path.display(),
                        if b.entries_fire() {
                            "function__entry"
                        } else {
                            "function__return"
                        },
                        untimed_note(b, args)
                    ),
                }
                counted_on.push(version);
            }
            continue;
        }
        match tracer.attach_function_counter(b, attach_pid)? {
            Some(marker) => {
                tracing::info!(
                    "counting calls of {} ({version}) at {marker}{}",
                    b.path.display(),
                    untimed_note(b, args)
                );
                counted_on.push(version);
            }
            None => tracing::warn!(
                "{} ({version}) has no function markers: {}",
                b.path.display(),
                b.firing("function__return")
                    .explain("function__return", b.version)
            ),
        }
    }
    if counted_on.is_empty() {
        return Err(CliError::new(
            Exit::NoMarkers,
            "no interpreter here has function markers to count calls with: CPython 3.12 to 3.14 \
             have none (removed with PEP 669); 3.8-3.11 and 3.15 builds with --with-dtrace do",
        ));
    }

    let interrupted = signal_flag(libc::SIGINT)?;
    let terminated = signal_flag(libc::SIGTERM)?;
    let mut out = std::io::stdout().lock();
    let interval = Duration::from_secs_f64(args.interval.max(0.1));
    let sampling = governor
        .as_ref()
        .filter(|_| budget.is_some())
        .map(|g| g.probes.table.clone());
    let mut govern = |tracer: &Tracer<'_>| {
        if let Some(g) = &mut governor {
            g.tick(tracer);
        }
    };

    let Some(resolved) = resolved else {
        // All processes, table per interval, until SIGINT/SIGTERM (or one table with --once);
        // a full-screen view on a terminal.
        let mut view = View::new(args, sampling);
        if !args.once && !args.json && std::io::stdout().is_terminal() {
            crate::commands::top_tui::run(&mut view, &tracer, interval, &mut || {
                govern(&tracer);
                interrupted.load(Ordering::Relaxed) || terminated.load(Ordering::Relaxed)
            })
            .map_err(|e| CliError::new(Exit::Failure, format!("terminal: {e}")))?;
            report_lost(&tracer)?;
            return Ok(0);
        }
        loop {
            let started = Instant::now();
            while started.elapsed() < interval {
                if interrupted.load(Ordering::Relaxed) || terminated.load(Ordering::Relaxed) {
                    report_lost(&tracer)?;
                    return Ok(0);
                }
                govern(&tracer);
                std::thread::sleep(Duration::from_millis(GOVERN_STEP_MS));
            }
            view.print(&mut out, &tracer, started.elapsed());
            if args.once {
                report_lost(&tracer)?;
                return Ok(0);
            }
        }
    };

    // With a command: its whole run, one table at its exit (and per interval unless --once).
    tracer.follow_children_of_self()?;
    if per_process && crate::discover::process::in_host_pid_namespace() {
        tracer.open_gate();
    }
    let mut child = spawn(&args.command, &resolved)?;
    let child_pid = child.id() as libc::pid_t;
    let terminal_delivers_sigint = in_terminal_foreground();
    let mut view = View::new(args, sampling);
    view.cumulative = true;
    let started = Instant::now();
    // One table, at the command's exit: the command writes to the same stdout, and a table
    // printed while it runs would land between (or inside) its own lines.
    let mut last_look = Instant::now();
    let status: ExitStatus = loop {
        forward(&terminated, libc::SIGTERM, child_pid);
        if !terminal_delivers_sigint {
            forward(&interrupted, libc::SIGINT, child_pid);
        }
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => {
                return Err(CliError::new(
                    Exit::Failure,
                    format!("waiting for the command: {e}"),
                ))
            }
        }
        if last_look.elapsed() >= interval {
            // Names now, while the processes live: the table comes at the command's exit.
            view.note_names(&tracer);
            last_look = Instant::now();
        }
        govern(&tracer);
        std::thread::sleep(Duration::from_millis(GOVERN_STEP_MS));
    };
    view.print(&mut out, &tracer, started.elapsed());
    report_lost(&tracer)?;
    Ok(exit_code(status))
}

/// What the log line of a counted file adds when its calls cannot be timed.
fn untimed_note(binary: &crate::discover::Binary, args: &TopArgs) -> &'static str {
    if args.calls_only || binary.entries_fire() {
        ""
    } else {
        " (not timed: this version fires no function__entry for every call, so calls are \
         counted at their return and have no duration)"
    }
}

/// How long the loops sleep between looks at the signals and the budget.
const GOVERN_STEP_MS: u64 = 20;
/// How often a governed `top` looks for new processes to count.
const SCAN_EVERY: Duration = Duration::from_secs(1);

/// `top --max-overhead`: follows the processes to count, and applies the budget.
struct Governor {
    probes: ProcessProbes,
    /// --pid: that process alone.
    pid: Option<u32>,
    /// Every process using a counted file (no --pid, no command).
    every_process: bool,
    /// A command: it and its descendants (the kernel's set of traced PIDs).
    children: bool,
    scanned_at: Option<Instant>,
}

impl Governor {
    fn tick(&mut self, tracer: &Tracer<'_>) {
        // The command's processes held at their start: counted from their first call.
        for pid in tracer.held() {
            self.probes.offer_started(tracer, pid);
            tracer.release(pid);
        }
        if !self.probes.due() {
            return;
        }
        let scan = self.scanned_at.is_none_or(|t| t.elapsed() >= SCAN_EVERY);
        if scan {
            self.scanned_at = Some(Instant::now());
            self.probes.prune_ignored();
            if let Some(pid) = self.pid {
                self.probes.offer(tracer, pid, false);
            }
            if self.every_process {
                let own = std::process::id();
                for pid in crate::discover::process::all_pids() {
                    if pid as u32 != own {
                        self.probes.offer(tracer, pid as u32, false);
                    }
                }
            }
        }
        if self.children {
            // New descendants at once; those that were not Python processes when looked at
            // (an exec may have come since) again once a second, not at every look.
            for pid in tracer.traced_pids() {
                self.probes.offer(tracer, pid, scan);
            }
        }
        self.probes.tick(tracer, true);
    }
}

/// Says how many calls the full counting table could not count, if any.
fn report_lost(tracer: &Tracer<'_>) -> CliResult<()> {
    let stats = tracer.stats()?;
    if stats.function_table_full > 0 {
        tracing::warn!(
            "{} calls not counted: more distinct functions than the counting table holds",
            count(stats.function_table_full)
        );
    }
    if stats.calls_too_deep > 0 {
        tracing::warn!(
            "{} calls counted but not timed: nested deeper than the 64 Python frames a \
             thread's timing stack holds (bpf/pyusdt.h SPAN_STACK_DEPTH)",
            count(stats.calls_too_deep)
        );
    }
    Ok(())
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub pid: u32,
    /// The process's name (its `comm`), terminal-safe, without blanks.
    pub process: String,
    pub calls: u64,
    pub rate: f64,
    pub share: f64,
    /// Time in the calls that returned, less the calls they made (`None`: not timed, its
    /// interpreter fires no function__entry, or --calls-only).
    pub own_ns: Option<u64>,
    /// Time in the calls that returned, with the calls they made (a recursive call's in its
    /// outermost call's only).
    pub total_ns: Option<u64>,
    /// `own_ns` and `total_ns` in percent of the interval (of one thread's time: a function
    /// running on several threads at once may exceed 100).
    pub own_share: Option<f64>,
    pub total_share: Option<f64>,
    /// FILE:LINE as shown, the file and line apart (JSON).
    pub location: String,
    pub file: String,
    /// `None` where the marker gave none (3.15 enters a class body at -1, a module at 0).
    pub line: Option<u32>,
    pub function: String,
}

impl Row {
    /// The order of `key`: greatest first; rows without time after the timed ones.
    pub fn order(key: TopSort, a: &Row, b: &Row) -> std::cmp::Ordering {
        let by_calls = b.calls.cmp(&a.calls);
        match key {
            TopSort::Calls => by_calls,
            TopSort::Own => b.own_ns.cmp(&a.own_ns).then(by_calls),
            TopSort::Total => b.total_ns.cmp(&a.total_ns).then(by_calls),
        }
    }
}

/// Calls, own and total ns of a function so far.
type Totals = (u64, u64, u64);

/// What was shown last, to show calls per interval.
pub struct View {
    previous: HashMap<(u32, (u64, u64, u32)), Totals>,
    limit: usize,
    /// Calls are timed (no --calls-only).
    pub timed: bool,
    /// Row order of the text and JSON output (the full-screen view has its own).
    pub sort: TopSort,
    json: bool,
    pub pid: Option<u32>,
    /// Totals since the start instead of per interval (a command's whole run).
    cumulative: bool,
    /// --max-overhead: how each process's counter was sampled.
    sampling: Option<SamplingTable>,
    /// Process names seen, kept for the rows of processes that have exited since (bounded:
    /// pruned to the processes in the kernel's table).
    names: HashMap<u32, String>,
}

impl View {
    fn new(args: &TopArgs, sampling: Option<SamplingTable>) -> View {
        let timed = !args.calls_only;
        View {
            previous: HashMap::new(),
            limit: args.limit,
            timed,
            sort: args
                .sort
                .unwrap_or(if timed { TopSort::Own } else { TopSort::Calls }),
            json: args.json,
            pid: args.pid,
            cumulative: false,
            sampling,
            names: HashMap::new(),
        }
    }

    /// Reads the names of the counted processes not named yet.
    pub fn note_names(&mut self, tracer: &Tracer<'_>) {
        let pids: HashSet<u32> = tracer.function_counts().iter().map(|c| c.pid).collect();
        self.names.retain(|pid, _| pids.contains(pid));
        for pid in pids {
            self.name_of(pid);
        }
    }

    /// The process's name, read once (`-` when it exited before being looked at).
    fn name_of(&mut self, pid: u32) -> String {
        if let Some(n) = self.names.get(&pid) {
            return n.clone();
        }
        let name = process_name(pid);
        if name != "-" {
            self.names.insert(pid, name.clone());
        }
        name
    }

    /// The processes among `pids` whose counter was sampled (--max-overhead), with the share
    /// of the time it was attached, sorted by PID.
    pub fn sampled(&self, pids: impl Iterator<Item = u32>) -> Vec<(u32, f64)> {
        let Some(table) = &self.sampling else {
            return Vec::new();
        };
        let table = table.borrow();
        let mut out: Vec<(u32, f64)> = pids
            .filter_map(|pid| Some((pid, table.get(&pid)?.observed_share)))
            .filter(|(_, share)| *share < 0.999)
            .collect();
        out.sort_by_key(|(pid, _)| *pid);
        out.dedup_by_key(|(pid, _)| *pid);
        out
    }

    /// The rows since the last call (or since the start when cumulative), in `self.sort`'s
    /// order, and the total number of calls.
    pub fn rows(&mut self, tracer: &Tracer<'_>, elapsed: Duration) -> (Vec<Row>, u64) {
        let all = tracer.function_counts();
        let zero = (0, 0, 0);
        let mut deltas: Vec<(Totals, &FunctionCount)> = all
            .iter()
            .filter(|c| self.pid.is_none_or(|p| p == c.pid))
            .map(|c| {
                let before = if self.cumulative {
                    zero
                } else {
                    self.previous.get(&(c.pid, c.code)).copied().unwrap_or(zero)
                };
                let now = (c.calls, c.total_ns, c.own_ns);
                let delta = (
                    now.0.saturating_sub(before.0),
                    now.1.saturating_sub(before.1),
                    now.2.saturating_sub(before.2),
                );
                (delta, c)
            })
            .filter(|((calls, total, _), _)| *calls > 0 || *total > 0)
            .collect();
        deltas.sort_by(|a, b| a.1.pid.cmp(&b.1.pid).then(a.1.name.cmp(&b.1.name)));
        let total: u64 = deltas.iter().map(|((n, _, _), _)| n).sum();
        let mut names = HashMap::new();
        for (_, c) in &deltas {
            names.entry(c.pid).or_insert_with(|| self.name_of(c.pid));
        }
        let secs = elapsed.as_secs_f64().max(1e-3);
        let percent_of_interval = |ns: u64| 100.0 * ns as f64 / (secs * 1e9);
        let mut rows: Vec<Row> = deltas
            .iter()
            .map(|((n, total_ns, own_ns), c)| {
                // The marker's int, kept as u32 by the kernel side.
                let line = u32::try_from(c.line as i32).ok().filter(|&n| n > 0);
                // Counted at entry, and so timed: 3.8-3.10 and 3.15.
                let timed = self.timed && c.at_entry;
                Row {
                    pid: c.pid,
                    process: names.get(&c.pid).cloned().unwrap_or_else(|| "-".into()),
                    calls: *n,
                    rate: *n as f64 / secs,
                    share: 100.0 * *n as f64 / total.max(1) as f64,
                    own_ns: timed.then_some(*own_ns),
                    total_ns: timed.then_some(*total_ns),
                    own_share: timed.then(|| percent_of_interval(*own_ns)),
                    total_share: timed.then(|| percent_of_interval(*total_ns)),
                    location: match line {
                        Some(n) => format!("{}:{n}", safe(&c.file)),
                        None => safe(&c.file).into_owned(),
                    },
                    file: c.file.clone(),
                    line,
                    function: safe(&c.name).into_owned(),
                }
            })
            .collect();
        let key = self.sort;
        rows.sort_by(|a, b| Row::order(key, a, b));
        self.previous = all
            .iter()
            .map(|c| ((c.pid, c.code), (c.calls, c.total_ns, c.own_ns)))
            .collect();
        // Forget processes that exited (all of them, not only those shown): the kernel table
        // stays bounded.
        if !self.cumulative {
            let seen: HashSet<u32> = self.previous.keys().map(|(pid, _)| *pid).collect();
            let gone: Vec<u32> = seen
                .into_iter()
                .filter(|&p| !crate::discover::process::is_alive(p))
                .collect();
            if !gone.is_empty() {
                self.names.retain(|pid, _| !gone.contains(pid));
                tracer.forget_function_counts(&gone);
            }
        }
        (rows, total)
    }

    /// One table: text, or a JSON object on one line (--json).
    fn print(&mut self, out: &mut impl Write, tracer: &Tracer<'_>, elapsed: Duration) {
        if self.json {
            self.print_json(out, tracer, elapsed);
        } else {
            self.print_text(out, tracer, elapsed);
        }
    }

    /// The table as one JSON object (JSON Lines: one per interval): times in seconds, `null`
    /// where a function is not timed.
    fn print_json(&mut self, out: &mut impl Write, tracer: &Tracer<'_>, elapsed: Duration) {
        let (rows, total) = self.rows(tracer, elapsed);
        let processes: HashSet<u32> = rows.iter().map(|r| r.pid).collect();
        let seconds = |ns: Option<u64>| ns.map(|n| n as f64 / 1e9);
        let shown: Vec<serde_json::Value> = rows
            .iter()
            .take(self.limit)
            .map(|r| {
                serde_json::json!({
                    "pid": r.pid,
                    "command": r.process,
                    "calls": r.calls,
                    "calls_per_s": r.rate,
                    "share": r.share,
                    "own_s": seconds(r.own_ns),
                    "total_s": seconds(r.total_ns),
                    "own_share": r.own_share,
                    "total_share": r.total_share,
                    "file": r.file,
                    "line": r.line,
                    "function": r.function,
                })
            })
            .collect();
        let sampled: Vec<serde_json::Value> = self
            .sampled(rows.iter().take(self.limit).map(|r| r.pid))
            .into_iter()
            .map(|(pid, share)| serde_json::json!({"pid": pid, "attached_share": share}))
            .collect();
        let table = serde_json::json!({
            "elapsed_s": elapsed.as_secs_f64(),
            "calls": total,
            "processes": processes.len(),
            "timed": self.timed,
            "sort": format!("{:?}", self.sort).to_lowercase(),
            "rows": shown,
            "sampled": sampled,
        });
        let _ = writeln!(out, "{table}");
        let _ = out.flush();
    }

    /// The table as plain text (pipes, --once).
    fn print_text(&mut self, out: &mut impl Write, tracer: &Tracer<'_>, elapsed: Duration) {
        let (rows, total) = self.rows(tracer, elapsed);
        let processes: HashSet<u32> = rows.iter().map(|r| r.pid).collect();
        let _ = writeln!(
            out,
            "pyusdt top: {} calls in {:.1} s from {} process{}",
            count(total),
            elapsed.as_secs_f64(),
            processes.len(),
            if processes.len() == 1 { "" } else { "es" }
        );
        // Up to FILE:LINE the row fits in 80 columns; FILE:LINE is cut from the left so that
        // the file's name and the line stay. Time columns where some row is timed (3.11's
        // calls are counted at their return, untimed: see the note at the start); CALLS/s and
        // SHARE otherwise.
        let timed = self.timed && rows.iter().any(|r| r.own_ns.is_some());
        let (calls_width, location_width) = if timed {
            (9, TIMED_LOCATION_WIDTH)
        } else {
            (11, LOCATION_WIDTH)
        };
        let middle_header = if timed {
            format!("{:>9} {:>6} {:>9} {:>6}", "OWN", "OWN%", "TOTAL", "TOTAL%")
        } else {
            format!("{:>9} {:>6}", "CALLS/s", "SHARE")
        };
        let _ = writeln!(
            out,
            "{:>7} {:<10} {:>calls_width$} {middle_header}  {:<location_width$} FUNCTION",
            "PID", "COMMAND", "CALLS", "FILE:LINE"
        );
        let time = |ns: Option<u64>| ns.map_or_else(|| "-".into(), duration);
        let percent = |p: Option<f64>| p.map_or_else(|| "-".into(), |p| format!("{p:.1}%"));
        for r in rows.iter().take(self.limit) {
            let middle = if timed {
                format!(
                    "{:>9} {:>6} {:>9} {:>6}",
                    time(r.own_ns),
                    percent(r.own_share),
                    time(r.total_ns),
                    percent(r.total_share)
                )
            } else {
                format!("{:>9} {:>5.1}%", count(r.rate.round() as u64), r.share)
            };
            let _ = writeln!(
                out,
                "{:>7} {:<10} {:>calls_width$} {middle}  {:<location_width$} {}",
                r.pid,
                cut_right(&r.process, 10),
                count(r.calls),
                cut_left(&r.location, location_width),
                r.function
            );
        }
        if timed && rows.iter().take(self.limit).any(|r| r.own_ns.is_none()) {
            let _ = writeln!(
                out,
                "  -: not timed, the interpreter fires no function__entry (CPython 3.11): calls \
                 counted at their return"
            );
        }
        // A sampled count is what was seen while the counter was attached, and says no more:
        // scaling it by the share of the time would understate the truth, since the counter
        // slows the process while attached (fib: it made ~3 % of its calls in 11.7 % of the
        // time). The shares between one process's functions hold for steady work.
        for (pid, share) in self.sampled(rows.iter().take(self.limit).map(|r| r.pid)) {
            let _ = writeln!(
                out,
                "  PID {pid}: sampled (--max-overhead), counter attached {:.1} % of the time: \
                 its CALLS are those made then, a lower bound not scaled to the whole run; \
                 its SHARE column holds for steady work",
                share * 100.0
            );
        }
        let _ = writeln!(out);
        let _ = out.flush();
    }
}

/// Width of FILE:LINE in the plain table: with the columns before it, 72 of 80 columns.
const LOCATION_WIDTH: usize = 22;
/// The same with the OWN and TOTAL columns (CALLS two columns narrower): 80 columns.
const TIMED_LOCATION_WIDTH: usize = 16;

/// The name of a process (`/proc/PID/comm`, set by the process itself: at most 64 bytes read,
/// control characters escaped, blanks replaced so that the table's columns stay columns), or
/// `-` once it has exited.
pub fn process_name(pid: u32) -> String {
    use std::io::Read;
    let mut raw = Vec::with_capacity(64);
    let read = std::fs::File::open(format!("/proc/{pid}/comm"))
        .and_then(|f| f.take(64).read_to_end(&mut raw));
    if read.is_err() {
        return "-".into();
    }
    let name = String::from_utf8_lossy(&raw);
    let name: String = safe(name.trim_end_matches('\n'))
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if name.is_empty() {
        "-".into()
    } else {
        name
    }
}

/// `s` in at most `width` characters, its end kept (`…` for what was cut): a path's file name
/// and line number matter more than its directories.
pub fn cut_left(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    let keep = width.saturating_sub(1);
    std::iter::once('…')
        .chain(s.chars().skip(n - keep))
        .take(width)
        .collect()
}

/// `s` in at most `width` characters, its start kept.
pub fn cut_right(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    s.chars()
        .take(width.saturating_sub(1))
        .chain(std::iter::once('…'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_left_keeps_the_file_and_line() {
        let location = "/home/someone/projects/app/src/app/handlers/orders.py:1234";
        let cut = cut_left(location, LOCATION_WIDTH);
        assert_eq!(cut.chars().count(), LOCATION_WIDTH);
        assert!(
            cut.starts_with('…') && cut.ends_with("/orders.py:1234"),
            "{cut}"
        );
        assert_eq!(cut_left("a.py:1", LOCATION_WIDTH), "a.py:1");
        assert_eq!(cut_left("é/ü/b.py:7", 6), "….py:7");
    }

    #[test]
    fn rows_without_time_come_after_the_timed_ones() {
        let row = |calls, own: Option<u64>| Row {
            pid: 1,
            process: "p".into(),
            calls,
            rate: 0.0,
            share: 0.0,
            own_ns: own,
            total_ns: own,
            own_share: None,
            total_share: None,
            location: String::new(),
            file: String::new(),
            line: None,
            function: String::new(),
        };
        let mut rows = [row(900, None), row(10, Some(5)), row(20, Some(50))];
        rows.sort_by(|a, b| Row::order(TopSort::Own, a, b));
        assert_eq!(
            rows.iter().map(|r| r.calls).collect::<Vec<_>>(),
            [20, 10, 900]
        );
        rows.sort_by(|a, b| Row::order(TopSort::Calls, a, b));
        assert_eq!(rows[0].calls, 900);
    }

    #[test]
    fn cut_right_keeps_the_start() {
        assert_eq!(cut_right("python3.11", 10), "python3.11");
        assert_eq!(cut_right("gunicorn-worker", 10), "gunicorn-…");
    }

    #[test]
    fn a_process_name_is_one_column() {
        assert_eq!(
            process_name(std::process::id()).split_whitespace().count(),
            1
        );
        assert_eq!(process_name(u32::MAX), "-");
    }
}
