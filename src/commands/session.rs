//! A tracing session shared by `run` and `agent`: pre-flight, attach, drain events into the
//! sinks, and the closing summary.
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libbpf_rs::OpenObject;

use crate::attach::{Tracer, TracerOptions};
use crate::cli::TraceArgs;
use crate::commands::process_probes::ProcessProbes;
use crate::decode;
use crate::discover::interpreters::{discover, Scan};
use crate::discover::{Binary, NO_MARKERS_HINT};
use crate::exit::{CliError, CliResult, Exit};
use crate::export::config::{ExportConfig, ExportFlags, ExporterKind};
use crate::model::resource::ProcessFacts;
use crate::probes::Probe;
use crate::report::clock::Clock;
use crate::report::console::Console;
use crate::report::jsonl::JsonLines;
use crate::report::otlp::{OtlpSink, OwnStats};
use crate::report::summary::{ExportSummary, Summary};
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
    /// CPython version per attached file, for `process.runtime.version`.
    versions: Rc<RefCell<HashMap<(u64, u64), String>>>,
    attach_failures: u64,
    flush_timeout: Duration,
    /// Records that failed to decode (a BPF/Rust layout mismatch): counted, reported.
    undecodable: u64,
    /// Names of the code locations of function records (`--probes function`).
    code_names: crate::code_names::CodeNames,
    /// With --probes function, or audit under --max-overhead: the probes attached per
    /// process and their budget.
    functions: Option<RefCell<ProcessProbes>>,
    /// Files without usable function markers, and why (said when none has them).
    function_refusals: Vec<String>,
    /// Whether event PIDs are this process's PIDs (not when `run` is in a container).
    pids_are_ours: bool,
    /// --metrics-only: the aggregates kept in the kernel.
    kernel_metrics: Option<crate::commands::kernel_metrics::KernelMetrics>,
    /// `run`: follow the processes of the traced set (else: those that send events).
    follow_processes: bool,
    /// `agent`: PIDs that exec'd since the last look (new interpreter files?).
    execs: Rc<RefCell<Vec<u32>>>,
    /// Attached files seen only through a process's root (a container's copy), and the PIDs
    /// known to use them: released when none is left, so that no uprobe outlives its
    /// container.
    container_files: HashMap<(u64, u64), (std::path::PathBuf, HashSet<u32>)>,
}

impl<'obj> Session<'obj> {
    /// Checks privileges and kernel, loads BPF and opens the sinks. Attaches nothing yet.
    /// `default_max_overhead`: the function probes' budget when --max-overhead is not given.
    /// `privileges`: whom `agent` becomes once the BPF object is loaded (None: `run`, whose
    /// command would inherit reduced privileges, keeps them).
    pub fn start(
        storage: &'obj mut MaybeUninit<OpenObject>,
        args: &TraceArgs,
        follow_processes: bool,
        terminal: Terminal,
        default_max_overhead: Option<f64>,
        privileges: Option<crate::privileges::Policy>,
    ) -> CliResult<Session<'obj>> {
        let flags = ExportFlags {
            exporter: args.exporter.clone(),
            otlp_endpoint: args.otlp_endpoint.clone(),
            otlp_protocol: args.otlp_protocol.clone(),
            otlp_file: args.otlp_file.clone(),
            config: args.config.clone(),
            audit_log_events: args.audit_logs.clone(),
            audit_args: args.audit_args,
            resource_command_line: args.resource_command_line,
        };
        let export = ExportConfig::resolve(&flags, &|k| std::env::var(k).ok())
            .map_err(|e| CliError::new(Exit::Usage, e))?;
        if let Some(warning) = export.clear_text_header_warning() {
            tracing::warn!("{warning}");
        }
        let functions = crate::report::FunctionFilter::new(
            args.function_include.as_deref(),
            args.function_exclude.as_deref(),
        )
        .map_err(|e| CliError::new(Exit::Usage, e))?;
        if args.metrics_only && (export.audit_args || args.audit_logs.is_some()) {
            return Err(CliError::new(
                Exit::Usage,
                "--audit-args and --audit-logs shape audit log records, which --metrics-only \
                 does not export",
            ));
        }
        if export.audit_args && !args.probes.iter().any(|p| p == Probe::Audit) {
            return Err(CliError::new(
                Exit::Usage,
                "--audit-args needs the audit marker: add --probes gc,import,audit",
            ));
        }
        let function_probes = args.probes.iter().any(|p| p == Probe::Function);
        let audit_probe = args.probes.iter().any(|p| p == Probe::Audit);
        if !function_probes && args.line_mode {
            return Err(CliError::new(
                Exit::Usage,
                "--line-mode concerns function probes: add --probes …,function",
            ));
        }
        if !function_probes && !audit_probe && args.max_overhead.is_some() {
            return Err(CliError::new(
                Exit::Usage,
                "--max-overhead governs the costly probes, function and audit: add --probes \
                 …,function or --probes …,audit",
            ));
        }
        // The audit marker is governed when a budget is asked for explicitly: it is then
        // attached per process (one uprobe each), rather than once per interpreter file.
        let audit_budget = args.max_overhead.and_then(|m| m.0).filter(|_| audit_probe);
        let console_only = export.exporter == ExporterKind::Console;
        // The views that print an audit event's argument count: the console and JSON lines.
        let shows_nargs = (console_only && !args.quiet) || args.output.is_some();
        // Only the agent reads other processes' /proc entries; `run` follows its own children.
        crate::preflight::check_tracing(!follow_processes)?;
        let tracer = Tracer::load(
            storage,
            TracerOptions {
                probes: args.probes.clone(),
                ring_buffer_bytes: args.ring_buffer_size,
                follow_processes,
                audit_args: export.audit_args,
                audit_nargs: shows_nargs,
                count_functions: false,
                flow: None,
                min_function_ns: args.min_duration.as_nanos() as u64,
                report_execs: !follow_processes,
                audit_per_process: audit_budget.is_some(),
                metrics_only: args.metrics_only,
            },
        )?;
        let clock = Clock::now();
        // The files the sinks write are created now: `agent` stops being root below, and its
        // new user could not create them where root can.
        let jsonl = match &args.output {
            Some(path) => Some(JsonLines::create(path, clock).map_err(|e| {
                CliError::new(
                    Exit::Failure,
                    format!("cannot write --output {}: {e}", path.display()),
                )
            })?),
            None => None,
        };
        if let ExporterKind::File(path) = &export.exporter {
            crate::export::file::create_early(path).map_err(|e| CliError::new(Exit::Failure, e))?;
        }
        if let Some(policy) = privileges {
            // The BPF object is loaded, the output files are open, and no other thread runs
            // yet (the exporter, HTTP and Kubernetes threads start below, as the new user).
            crate::privileges::apply(policy).map_err(|e| {
                CliError::new(
                    Exit::Failure,
                    format!("reducing privileges after attach: {e}"),
                )
            })?;
        }
        let per_process_functions = (function_probes || audit_budget.is_some())
            .then(|| {
                let max = args.max_overhead.map_or(default_max_overhead, |m| m.0);
                process_probes_with_budget(
                    function_probes,
                    args.line_mode,
                    audit_budget.is_some(),
                    max,
                )
            })
            .map(RefCell::new);
        let versions: Rc<RefCell<HashMap<(u64, u64), String>>> = Rc::default();
        let lookup = Rc::clone(&versions);
        let mut otlp = OtlpSink::new(
            export,
            clock,
            Box::new(move |pid| runtime_version(pid, &lookup.borrow())),
        )
        .map_err(|e| CliError::new(Exit::Failure, e))?;
        let mut prom = match &args.metrics_listen {
            Some(addr) => {
                let published = crate::serve::Published::default();
                let bound = crate::serve::start(addr, published.clone())
                    .map_err(|e| CliError::new(Exit::Usage, e))?;
                tracing::info!("serving /metrics and /healthz on http://{bound}");
                Some(crate::report::prom::PromSink::new(
                    clock,
                    published,
                    args.resource_command_line,
                ))
            }
            None => None,
        };
        // The agent in Kubernetes: pod metadata from a node-scoped watch (None elsewhere).
        if !follow_processes {
            if let Some(pods) = crate::k8s::watch::start() {
                if let Some(o) = &mut otlp {
                    o.set_pods(pods.clone());
                }
                if let Some(p) = &mut prom {
                    p.set_pods(pods);
                }
            }
        }
        let mut summary = Summary::default();
        if let Some(f) = &per_process_functions {
            let table = Rc::clone(&f.borrow().table);
            if let Some(o) = &mut otlp {
                o.set_sampling(Rc::clone(&table));
            }
            if let Some(p) = &mut prom {
                p.set_sampling(Rc::clone(&table));
            }
            summary.set_sampling(table);
        }
        Ok(Session {
            tracer,
            sinks: Sinks {
                functions,
                console: (console_only && !args.quiet)
                    .then(|| Console::new(terminal.writer(), clock)),
                jsonl,
                otlp,
                prom,
                summary,
                metrics_only: args.metrics_only,
            },
            terminal,
            started: Instant::now(),
            attached_ids: HashSet::new(),
            versions,
            attach_failures: 0,
            flush_timeout: Duration::from_secs(args.flush_timeout),
            undecodable: 0,
            code_names: Default::default(),
            functions: per_process_functions,
            function_refusals: Vec::new(),
            pids_are_ours: true,
            kernel_metrics: args.metrics_only.then(Default::default),
            follow_processes,
            execs: Rc::default(),
            container_files: HashMap::new(),
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
            // Per-process probes are attached later, per process: the file counts as attached.
            let mut per_process = false;
            if let Some(f) = &self.functions {
                let mut f = f.borrow_mut();
                if f.wants_functions() {
                    if let Err(why) = f.function_markers(b) {
                        tracing::info!("{}: no function spans: {why}", b.path.display());
                        self.function_refusals
                            .push(format!("{}: {why}", b.path.display()));
                    }
                }
                if f.covers(b) {
                    f.add_binary(b);
                    per_process = true;
                }
            }
            match self.tracer.attach(b) {
                Ok(markers) if markers.is_empty() && per_process => {
                    tracing::info!(
                        "{}: function or audit probes are attached per process using it",
                        b.path.display()
                    );
                    self.attached_ids.insert(b.id);
                    if let Some(v) = b.version {
                        self.versions.borrow_mut().insert(b.id, v.to_string());
                    }
                    n += 1;
                }
                Ok(markers) if markers.is_empty() => {
                    tracing::warn!(
                        "{}: none of the selected markers is in this file",
                        b.path.display()
                    )
                }
                Ok(markers) => {
                    if let Some(pid) = b.found_in.or_else(|| container_pid(&b.path)) {
                        self.container_files
                            .insert(b.id, (b.path.clone(), HashSet::from([pid])));
                    }
                    let version = b
                        .version
                        .map_or_else(|| "unknown version".into(), |v| format!("CPython {v}"));
                    tracing::info!(
                        "attached {} ({version}): {}",
                        b.path.display(),
                        markers.join(", ")
                    );
                    self.attached_ids.insert(b.id);
                    if let Some(v) = b.version {
                        self.versions.borrow_mut().insert(b.id, v.to_string());
                    }
                    n += 1;
                }
                // Counted in pyusdt.discovery.refused and said once per reason already.
                Err(e) if e.is_refusal() => {}
                Err(e) => {
                    self.attach_failures += 1;
                    tracing::warn!("{e}")
                }
            }
        }
        n
    }

    /// With --probes function and no attached file that can give function spans: says why,
    /// per file, as a warning.
    pub fn warn_without_function_probes(&self) {
        let Some(f) = &self.functions else {
            return;
        };
        if !f.borrow().wants_functions() || f.borrow().has_function_binaries() {
            return;
        }
        for why in &self.function_refusals {
            tracing::warn!("no function spans: {why}");
        }
    }

    /// Names `run`'s command in the summary before its first event (it may be gone by the
    /// time /proc could be read). Its OTLP resource comes from its own environment, which the
    /// BPF side reads at its first event.
    pub fn name_process(&mut self, pid: u32, command: &str) {
        self.sinks.summary.name_process(pid, command);
    }

    /// PIDs in events are not this process's PIDs (pyusdt runs in another PID namespace):
    /// /proc/PID and liveness checks would look at the wrong processes.
    pub fn pids_are_foreign(&mut self) {
        self.pids_are_ours = false;
        if let Some(o) = &mut self.sinks.otlp {
            o.pids_are_foreign();
        }
        if let Some(p) = &mut self.sinks.prom {
            p.pids_are_foreign();
        }
    }

    /// Per-process probes for a process about to exec `binary` (`run`'s command, stopped
    /// before its exec): `local_pid` as this process sees it, `host_pid` as events report it.
    pub fn follow_functions(&mut self, host_pid: u32, local_pid: i32, binary: &Binary) {
        if let Some(f) = &self.functions {
            let mut f = f.borrow_mut();
            if f.covers(binary) {
                f.follow(&self.tracer, host_pid, local_pid, binary);
            }
        }
    }

    /// Function probes for a process that exec'd (`agent`): looked at again even if it was
    /// not a Python process before.
    pub fn offer_functions(&mut self, pid: u32) {
        if let Some(f) = &self.functions {
            f.borrow_mut().offer(&self.tracer, pid, true);
        }
    }

    /// Function probes for the running processes that use an attached file (`agent`).
    pub fn follow_running_processes(&mut self) {
        let Some(f) = &self.functions else {
            return;
        };
        let mut f = f.borrow_mut();
        f.prune_ignored();
        if !f.has_binaries() {
            return;
        }
        let own = std::process::id();
        for pid in crate::discover::process::all_pids() {
            if pid as u32 != own {
                f.offer(&self.tracer, pid as u32, false);
            }
        }
    }

    /// See `Summary::retire_exited`.
    pub fn retire_exited_processes(&mut self) {
        self.sinks.summary.retire_exited();
    }

    pub fn attached_files(&self) -> usize {
        self.attached_ids.len()
    }

    /// The PIDs that exec'd since the last call (`agent`; filled while tracing).
    pub fn exec_queue(&self) -> Rc<RefCell<Vec<u32>>> {
        Rc::clone(&self.execs)
    }

    /// Notes that `pid` uses the files `ids`: those attached from a container's root are kept
    /// while it lives. A file attached through /proc/PID/root has that PID as a user.
    pub fn note_users(&mut self, pid: u32, ids: &[(u64, u64)]) {
        for id in ids {
            if let Some((_, users)) = self.container_files.get_mut(id) {
                users.insert(pid);
            }
        }
    }

    /// Releases the attached container files that no living process uses any more, and
    /// forgets them in `examined` (a new container with the same file attaches it again).
    /// Files the host itself has are kept: processes started later use them.
    pub fn release_unused_files(&mut self, examined: &mut HashSet<(u64, u64)>) {
        let mut gone = Vec::new();
        for (id, (path, users)) in self.container_files.iter_mut() {
            users.retain(|&pid| crate::discover::process::is_alive(pid));
            if users.is_empty() {
                gone.push((*id, path.clone()));
            }
        }
        if gone.is_empty() {
            return;
        }
        // Known users are gone, but a process forked from one (not exec'd) may still run the
        // file: look at every process before releasing.
        for pid in crate::discover::process::all_pids() {
            let ids = crate::discover::interpreters::process_file_ids(pid);
            gone.retain(|(id, _)| {
                let used = ids.contains(id);
                if used {
                    if let Some((_, users)) = self.container_files.get_mut(id) {
                        users.insert(pid as u32);
                    }
                }
                !used
            });
            if gone.is_empty() {
                return;
            }
        }
        for (id, path) in gone {
            self.container_files.remove(&id);
            self.tracer.detach_file(id);
            self.attached_ids.remove(&id);
            self.versions.borrow_mut().remove(&id);
            examined.remove(&id);
            tracing::info!("released {}: no process uses it any more", path.display());
        }
        // Slots are free again: files refused for want of one are looked at anew.
        for id in self.tracer.take_refused_for_bound() {
            examined.remove(&id);
        }
    }

    /// Delivers events until `keep_going` returns false, then drains what is pending.
    /// Output is flushed every `FLUSH_INTERVAL`, not per event; telemetry is shipped when due.
    pub fn trace(&mut self, mut keep_going: impl FnMut() -> bool) -> CliResult<()> {
        let builds_resources = self.sinks.otlp.is_some() || self.sinks.prom.is_some();
        let sinks = RefCell::new(&mut self.sinks);
        let undecodable = Cell::new(self.undecodable);
        let code_names = RefCell::new(&mut self.code_names);
        let mut flushed_at = Instant::now();
        let tracer = &self.tracer;
        let functions = self.functions.as_ref();
        let pids_are_ours = self.pids_are_ours;
        let follow_processes = self.follow_processes;
        // Processes that sent their first event: candidates for function probes (`agent`).
        let new_pids = RefCell::new(Vec::new());
        let execs = Rc::clone(&self.execs);
        let attach_failures = self.attach_failures;
        let mut kernel_metrics = self.kernel_metrics.as_mut();
        let own = |summary: &Summary| {
            let stats = tracer.stats().unwrap_or_default();
            OwnStats {
                received: summary.received(),
                dropped: stats.dropped,
                function_dropped: stats.function_dropped + code_names.borrow().unresolved,
                attach_failures,
                process_dropped: stats.process_dropped,
                exec_dropped: stats.exec_dropped,
                undecodable: undecodable.get(),
                resource_refused: crate::model::env_attributes::counted(),
            }
        };
        let mut pruned_at = Instant::now();
        tracer.run(
            |data| match decode::decode(data) {
                Ok(record) => {
                    if let decode::Record::Process(p) = &record {
                        // Once per description, whichever sinks build its resource.
                        if builds_resources {
                            let env = ProcessFacts::environment_of(p, pids_are_ours);
                            crate::model::env_attributes::count(&env.refused);
                        }
                    }
                    match &record {
                        decode::Record::Process(p) if functions.is_some() => {
                            new_pids.borrow_mut().push(p.pid);
                        }
                        decode::Record::Exec { pid } => execs.borrow_mut().push(*pid),
                        decode::Record::AuditRef {
                            header,
                            nargs,
                            image,
                            name_vaddr,
                        } => {
                            let name = tracer.audit_name(*image, *name_vaddr);
                            let event = decode::Event::Audit {
                                header: *header,
                                name: std::borrow::Cow::Borrowed(&name),
                                nargs: *nargs,
                                args: None,
                            };
                            return sinks.borrow_mut().handle(&decode::Record::Event(event));
                        }
                        decode::Record::Function { .. } | decode::Record::FunctionRef { .. } => {
                            let mut names = code_names.borrow_mut();
                            if let Some(event) = names.event_of(&record) {
                                return sinks.borrow_mut().handle(&decode::Record::Event(event));
                            }
                            if let decode::Record::FunctionRef { code, .. } = &record {
                                // Its next call sends the names again.
                                tracer.forget_code(code);
                            }
                            if names.unresolved == 1 {
                                tracing::warn!(
                                    "a call whose code's names are not known was dropped \
                                     (counted with the dropped calls; further ones not logged)"
                                );
                            }
                            return;
                        }
                        _ => {}
                    }
                    sinks.borrow_mut().handle(&record)
                }
                Err(e) => {
                    undecodable.set(undecodable.get() + 1);
                    if undecodable.get() == 1 {
                        tracing::error!(
                            "undecodable ring buffer record: {e} (counted; further ones not logged)"
                        );
                    }
                }
            },
            || {
                if let Some(f) = functions.filter(|f| f.borrow_mut().due()) {
                    let mut f = f.borrow_mut();
                    if pids_are_ours {
                        // A process that sent its first event runs an interpreter now, even if
                        // it was something else (`sh -c 'exec python3 …'`) when last looked at.
                        for pid in std::mem::take(&mut *new_pids.borrow_mut()) {
                            f.offer(tracer, pid, true);
                        }
                        if follow_processes {
                            for pid in tracer.traced_pids() {
                                f.offer(tracer, pid, false);
                            }
                        }
                    }
                    f.tick(tracer, pids_are_ours);
                }
                let prune = pids_are_ours && pruned_at.elapsed() >= Duration::from_secs(1);
                let mut s = sinks.borrow_mut();
                if let Some(a) = kernel_metrics.as_deref_mut() {
                    // Before names are pruned: an exited process's calls are read with them.
                    a.read(
                        tracer,
                        &mut s,
                        &mut code_names.borrow_mut(),
                        pids_are_ours,
                        prune,
                    );
                }
                // Between polls, once a second: the names of processes gone since the last time.
                if prune {
                    code_names
                        .borrow_mut()
                        .prune_exited(crate::discover::process::is_alive);
                    pruned_at = Instant::now();
                }
                if flushed_at.elapsed() >= FLUSH_INTERVAL {
                    s.flush();
                    flushed_at = Instant::now();
                }
                let Sinks {
                    otlp,
                    summary,
                    prom,
                    ..
                } = &mut **s;
                if let Some(o) = otlp {
                    o.tick(&|| own(summary));
                }
                if let Some(p) = prom {
                    // Asked for only when due (once a second), not per poll.
                    p.tick(&|| (own(summary), otlp.as_ref().map(|o| o.export_stats())));
                }
                keep_going()
            },
        )?;
        sinks.borrow_mut().flush();
        self.undecodable = undecodable.get();
        Ok(())
    }

    /// Detaches every probe on the interpreters: markers of attached files and per-process
    /// probes (shutdown). The process tracepoints stay (they only forget state, and report
    /// execs), and the files stay open: the last records and counts may name their audit events.
    fn detach_probes(&mut self) {
        if let Some(f) = &self.functions {
            f.borrow().detach_all(&self.tracer);
        }
        for id in self.attached_ids.drain() {
            self.tracer.detach_links(id);
        }
        self.container_files.clear();
    }

    /// Prints the summary (and writes the JSON summary record); returns an error when the
    /// JSON output could not be written.
    pub fn finish(mut self) -> CliResult<()> {
        // Probes off first, then one more drain: events written until the detach are read (or
        // counted as dropped) and go into the flush below, and none is written during it.
        self.detach_probes();
        self.trace(|| false)?;
        if let Some(a) = &mut self.kernel_metrics {
            // The last counts, before the summary and the final metrics export.
            a.finish(
                &self.tracer,
                &mut self.sinks,
                &mut self.code_names,
                self.pids_are_ours,
            );
        }
        let mut stats = self.tracer.stats()?;
        // Calls whose code names were not known are lost calls, like those the ring dropped.
        stats.function_dropped += self.code_names.unresolved;
        let elapsed = self.started.elapsed().as_secs_f64();
        self.sinks.flush();
        let own = OwnStats {
            received: self.sinks.summary.received(),
            dropped: stats.dropped,
            function_dropped: stats.function_dropped,
            attach_failures: self.attach_failures,
            process_dropped: stats.process_dropped,
            exec_dropped: stats.exec_dropped,
            undecodable: self.undecodable,
            resource_refused: crate::model::env_attributes::counted(),
        };
        let export = self.sinks.otlp.take().map(|o| {
            let (counts, (orphaned, without_start)) = o.finish(&own, self.flush_timeout);
            ExportSummary {
                counts,
                orphaned,
                without_start,
            }
        });
        let mut text = self.sinks.summary.render(&stats, elapsed, export.as_ref());
        if self.code_names.unresolved > 0 {
            text.push_str(&format!(
                "  of the calls dropped, {} because their code's names were not known\n",
                self.code_names.unresolved
            ));
        }
        if self.undecodable > 0 {
            text.push_str(&format!(
                "  {} undecodable records (a bug: please report)\n",
                self.undecodable
            ));
        }
        let mut out = self.terminal.writer();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        if let Some(j) = &mut self.sinks.jsonl {
            j.put(&self.sinks.summary.to_record(&stats, export.as_ref()));
            j.finish()
                .map_err(|e| CliError::new(Exit::Failure, format!("writing --output: {e}")))?;
        }
        Ok(())
    }
}

/// Per-process probes (function probes, the governed audit marker) within the budget
/// `max_share` (none: every call, whatever it costs).
fn process_probes_with_budget(
    functions: bool,
    line_mode: bool,
    audit: bool,
    max_share: Option<f64>,
) -> ProcessProbes {
    let what = match (functions, audit) {
        (true, true) => "function and audit probes",
        (true, false) => "function probes",
        _ => "the audit marker",
    };
    match max_share {
        Some(max) => tracing::info!(
            "{what} limited to {:.1} % of each process's time (--max-overhead)",
            max * 100.0
        ),
        None => tracing::info!("{what} on every call (--max-overhead off)"),
    }
    ProcessProbes::new(functions, line_mode, audit, max_share)
}

/// The PID whose root a file was found through (`/proc/PID/root/…`): a container's file.
fn container_pid(path: &std::path::Path) -> Option<u32> {
    let rest = path.to_str()?.strip_prefix("/proc/")?;
    let (pid, tail) = rest.split_once('/')?;
    tail.starts_with("root/")
        .then(|| pid.parse().ok())
        .flatten()
}

/// The CPython version of the attached file a process maps, from /proc/PID/maps (device and
/// inode of each mapping).
fn runtime_version(pid: u32, versions: &HashMap<(u64, u64), String>) -> Option<String> {
    let maps = procfs::process::Process::new(pid as i32)
        .ok()?
        .maps()
        .ok()?;
    maps.iter().find_map(|m| {
        let id =
            crate::discover::process::mapped_file(pid as i32, m, |id| versions.contains_key(id))?;
        versions.get(&id).cloned()
    })
}
