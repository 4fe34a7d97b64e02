//! A tracing session: its state, and `start` (flags checked, pre-flight, BPF loaded,
//! privileges dropped, the sinks, the HTTP server and the pod watch started).
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::time::{Duration, Instant};

use libbpf_rs::OpenObject;

use super::flags::{self, Checked};
use super::probes::ProcessProbes;
use super::Terminal;
use crate::attach::{Tracer, TracerOptions};
use crate::budget_memory::BudgetMemory;
use crate::cli::TraceArgs;
use crate::exit::{CliError, CliResult, Exit};
use crate::export::config::ExporterKind;
use crate::model::clock::Clock;
use crate::probes::Probe;
use crate::report::console::Console;
use crate::report::jsonl::JsonLines;
use crate::report::otlp::OtlpSink;
use crate::report::summary::Summary;
use crate::report::Sinks;

pub struct Session<'obj> {
    pub tracer: Tracer<'obj>,
    pub(super) sinks: Sinks,
    pub(super) terminal: Terminal,
    pub(super) started: Instant,
    pub(super) attached_ids: HashSet<(u64, u64)>,
    /// CPython version per attached file, for `process.runtime.version`.
    pub(super) versions: Rc<RefCell<HashMap<(u64, u64), String>>>,
    pub(super) attach_failures: u64,
    pub(super) flush_timeout: Duration,
    /// Records that failed to decode (a BPF/Rust layout mismatch): counted, reported.
    pub(super) undecodable: u64,
    /// Names of the code locations of function records (`--probes function`).
    pub(super) code_names: crate::pipeline::code_names::CodeNames,
    /// With --probes function, or audit under --max-overhead: the probes attached per
    /// process and their budget.
    pub(super) functions: Option<RefCell<ProcessProbes>>,
    /// Files without usable function markers, and why (said when none has them).
    pub(super) function_refusals: Vec<String>,
    /// Whether event PIDs are this process's PIDs (not when `run` is in a container).
    pub(super) pids_are_ours: bool,
    /// --metrics-only: the aggregates kept in the kernel.
    pub(super) kernel_metrics: Option<crate::pipeline::kernel_metrics::KernelMetrics>,
    /// `run`: follow the processes of the traced set (else: those that send events).
    pub(super) follow_processes: bool,
    /// `agent`: PIDs that exec'd since the last look (new interpreter files?).
    pub(super) execs: Rc<RefCell<Vec<u32>>>,
    /// Attached files seen only through a process's root (a container's copy), and the PIDs
    /// known to use them: released when none is left, so that no uprobe outlives its
    /// container.
    pub(super) container_files: HashMap<(u64, u64), (std::path::PathBuf, HashSet<u32>)>,
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
        let Checked {
            export,
            functions,
            function_probes,
            audit_budget,
        } = flags::check(args, &|k| std::env::var(k).ok())?;
        let console_only = export.exporter == ExporterKind::Console;
        // The views that print an audit event's argument count: the console and JSON lines.
        let shows_nargs = (console_only && !args.quiet) || args.output.is_some();
        // Only the agent reads other processes' /proc entries; `run` follows its own children.
        crate::preflight::check_tracing(!follow_processes)?;
        // `run -- CMD`: the audit marker is attached to the command's processes alone (as
        // function probes always are): attached per file, every Python process on the host
        // would have it enabled and pay for it. Not from a PID namespace of its own, where
        // the kernel's PIDs of the command's descendants do not name them here.
        let audit_per_process = audit_budget.is_some()
            || (follow_processes
                && args.probes.iter().any(|p| p == Probe::Audit)
                && crate::discover::process::in_host_pid_namespace());
        let tracer = Tracer::load(
            storage,
            TracerOptions {
                probes: args.probes.clone(),
                ring_buffer_bytes: args.ring_buffer_size,
                follow_processes,
                audit_args: export.audit_args,
                audit_nargs: shows_nargs,
                count_functions: false,
                time_functions: false,
                flow: None,
                min_function_ns: args.min_duration.as_nanos() as u64,
                report_execs: !follow_processes,
                audit_per_process,
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
            crate::export::file::create_early(path)
                .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
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
        let per_process_functions = (function_probes || audit_per_process)
            .then(|| {
                let max = args.max_overhead.map_or(default_max_overhead, |m| m.0);
                let mut p = process_probes_with_budget(
                    function_probes,
                    args.line_mode,
                    audit_per_process,
                    max,
                );
                // `run` keeps what its budget learns between runs; `agent`, unprivileged
                // once attached, does not (src/budget_memory.rs).
                if privileges.is_none() {
                    if let Some(memory) = BudgetMemory::from_env(p.probe_set()) {
                        p.remember_kinds(memory);
                    }
                }
                p
            })
            .map(RefCell::new);
        let versions: Rc<RefCell<HashMap<(u64, u64), String>>> = Rc::default();
        let lookup = Rc::clone(&versions);
        let mut otlp = OtlpSink::new(
            export,
            clock,
            Box::new(move |pid| runtime_version(pid, &lookup.borrow())),
        )
        .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
        let mut prom = match &args.metrics_listen {
            Some(addr) => {
                let published = crate::serve::Published::default();
                let bound = crate::serve::start(addr, published.clone())
                    .map_err(|e| CliError::new(Exit::Usage, e.to_string()))?;
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
