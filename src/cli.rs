//! Command-line interface (clap derive): what each subcommand and option means.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::attach::parse_ring_size;
use crate::probes::ProbeSet;

/// Turns CPython's USDT markers (gc, import, audit) into events, with no change to the traced
/// program and no restart.
#[derive(Debug, Parser)]
#[command(name = "pyusdt", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the USDT markers of a CPython executable or libpython, or of a running process.
    ///
    /// Prints provider, marker, address, semaphore, argument spec and whether the marker can
    /// fire on that CPython version. No privileges needed for files you can read.
    #[command(
        after_help = "Examples:\n  pyusdt list /usr/bin/python3.11\n  pyusdt list --pid 4242"
    )]
    List(ListArgs),
    /// For each Python process of the host (containers included): whether its interpreter has
    /// markers, what fires on its version, which markers a tracer has enabled now, and what to
    /// do when something is missing.
    #[command(after_help = "Examples:\n  sudo pyusdt doctor\n  sudo pyusdt doctor --json")]
    Doctor(DoctorArgs),
    /// Run a command and trace it and the processes it starts; print a summary at exit and exit
    /// with the command's exit code.
    ///
    /// Probes are attached before the command starts, so nothing of its start-up is missed. The
    /// event stream and summary go to stderr; the command's own stdout is untouched.
    #[command(
        after_help = "Examples:\n  sudo pyusdt run -- /usr/bin/python3.11 app.py\n  \
                            sudo pyusdt run --probes gc,import,audit -o events.jsonl -- python3 app.py"
    )]
    Run(RunArgs),
    /// Trace every Python process on the host that uses a marker-bearing interpreter, running
    /// now or started later, until SIGINT or SIGTERM.
    #[command(after_help = "Examples:\n  \
                            sudo OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 pyusdt agent\n  \
                            sudo pyusdt agent --metrics-listen 9464 --exporter console")]
    Agent(AgentArgs),
    /// The most frequently called Python functions, counted in the kernel: a table per
    /// interval for every Python process, or over a command's whole run (`-- CMD`).
    ///
    /// Counts come from function__entry where it fires for every call (CPython 3.8-3.10, 3.15;
    /// 3.15 also counts a generator's creation) and from function__return on 3.11, where every
    /// call returns once (a generator also returns at each yield). 3.12-3.14 have no function
    /// markers.
    #[command(
        after_help = "Examples:\n  sudo pyusdt top\n  sudo pyusdt top --once -- python3.9 script.py"
    )]
    Top(TopArgs),
    /// The call tree of one process: a line per function entry and return, indented by
    /// depth per thread (DTrace's py_flowinfo.d, SystemTap's show-call-hierarchy.stp).
    ///
    /// Needs function markers: CPython 3.8-3.11 or 3.15 built --with-dtrace. On 3.11, entries
    /// fire only on the interpreter's tracing path, so flow enables the line marker for that
    /// process alone, which slows it down a lot. 3.12-3.14 have no function markers.
    #[command(
        after_help = "Examples:\n  sudo pyusdt flow -- python3.9 script.py\n  sudo pyusdt flow --pid 4242 --from handle_request"
    )]
    Flow(FlowArgs),
}

#[derive(Debug, Args)]
pub struct FlowArgs {
    /// Follow this running process.
    #[arg(long)]
    pub pid: Option<i32>,
    /// Print a thread only from an entry into this function until its return.
    #[arg(long, value_name = "FUNC")]
    pub from: Option<String>,
    /// Also print the line marker's events (every line executed).
    #[arg(long)]
    pub lines: bool,
    /// A command to run and follow from its first instruction, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Seconds per table (with a command: one table, at its exit, after its own output).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub interval: f64,
    /// Rows per table.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
    /// Print one table and exit (with a command: one table over its whole run, at its exit).
    #[arg(long)]
    pub once: bool,
    /// Only this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Row order: own time (the default; time in a function less the calls it made), total
    /// time (with those calls), or calls. Processes whose interpreter fires no
    /// function__entry (3.11) have counts only and come after the timed rows.
    #[arg(long, value_enum, value_name = "KEY")]
    pub sort: Option<TopSort>,
    /// Count calls only, without timing them: one probe per call instead of two (at entry
    /// and return), so cheaper; the table then has no OWN and TOTAL columns.
    #[arg(long)]
    pub calls_only: bool,
    /// One JSON object per table (JSON Lines) instead of the text table.
    #[arg(long)]
    pub json: bool,
    /// Interpreter or libpython file to attach to (repeatable), besides the ones discovered.
    #[arg(long = "python", value_name = "PATH")]
    pub pythons: Vec<PathBuf>,
    /// Attach only to the files given with --python (and the command's interpreter).
    #[arg(long)]
    pub no_discover: bool,
    /// The share of a process's time the call counter may cost, in percent (e.g. 5), or `off`
    /// (the default). With a budget the counter is attached per process, and a process it
    /// would cost more is counted in short windows only: the table says so, and its counts
    /// are the calls made in those windows (a lower bound, not scaled to the whole run).
    #[arg(long, value_name = "PCT", value_parser = parse_max_overhead)]
    pub max_overhead: Option<MaxOverhead>,
    /// A command to run and count the calls of (and of the processes it starts), after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

/// `top --sort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopSort {
    Own,
    Total,
    Calls,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON instead of the report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Interpreter or libpython file to inspect (e.g. /usr/bin/python3.11).
    #[arg(required_unless_present = "pid", conflicts_with = "pid")]
    pub path: Option<PathBuf>,
    /// Inspect the interpreter files mapped by this process (through /proc/PID/root).
    #[arg(long)]
    pub pid: Option<i32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options shared by `run` and `agent`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Markers to trace, comma-separated: gc, import, audit, function.
    ///
    /// gc and import cost nothing measurable. audit is opt-in: enabling it makes the interpreter
    /// build an argument tuple and take a uprobe trap for every audit event, and ordinary code
    /// raises many: id() raises builtins.id, so copy.deepcopy/dataclasses.asdict-heavy code can
    /// run tens of percent slower (bench/overhead.py measures it). The summary reports the audit
    /// event rate per process.
    ///
    /// function is opt-in too: a span per call of at least --min-duration, nested per thread
    /// (GC and import spans under the call that ran them). Every Python call then takes two
    /// uprobe traps. Needs function__entry: CPython 3.8-3.10 or 3.15 (3.11 fires entries only
    /// in line mode, 3.12-3.14 have no function markers).
    #[arg(long, default_value = "gc,import", value_parser = clap::value_parser!(ProbeSet))]
    pub probes: ProbeSet,
    /// With --probes function: calls shorter than this are dropped in the kernel (no
    /// ring-buffer traffic), e.g. 1ms, 250us, 0.
    #[arg(long, default_value = "1ms", value_parser = parse_duration, value_name = "DURATION")]
    pub min_duration: std::time::Duration,
    /// With --probes function: only calls whose function or file matches one of these globs
    /// (comma-separated) become spans and metrics.
    #[arg(long, value_name = "GLOBS")]
    pub function_include: Option<String>,
    /// With --probes function: calls whose function or file matches one of these globs are
    /// not exported.
    #[arg(long, value_name = "GLOBS")]
    pub function_exclude: Option<String>,
    /// With --probes function on CPython 3.11: enable the line marker in each traced process,
    /// which makes function__entry fire for every call (3.11 fires it only on its tracing
    /// path). Costly: that path runs code many times slower; keep --max-overhead on.
    #[arg(long)]
    pub line_mode: bool,
    /// With --probes function: the share of a traced process's time its function probes may
    /// cost, in percent (e.g. 5), or `off`. A process whose probes would cost more is
    /// sampled: probes off, and on again in short windows, with the sampling ratio exported.
    /// Default: 5 for `agent`, off for `run`. Given with --probes audit, it governs the audit
    /// marker too (attached per process then).
    #[arg(long, value_name = "PCT", value_parser = parse_max_overhead)]
    pub max_overhead: Option<MaxOverhead>,
    /// Interpreter or libpython file to attach to (repeatable). By default pyusdt also finds the
    /// marker-bearing interpreters in the usual install locations (and, for `agent`, those of
    /// running processes).
    #[arg(long = "python", value_name = "PATH")]
    pub pythons: Vec<PathBuf>,
    /// Attach only to the files given with --python (and, for `run`, the command's interpreter).
    #[arg(long)]
    pub no_discover: bool,
    /// Also write every event as JSON lines to FILE, ending with a summary record.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Do not print the live event stream, nor informational messages (the summary, warnings
    /// and errors are still printed). The stream is only printed with the console exporter.
    #[arg(long, short)]
    pub quiet: bool,
    /// Where telemetry goes: `otlp` (to a collector), `console` (the event stream and summary
    /// only) or `file` (OTLP/JSON lines, see --otlp-file). Default: otlp when an endpoint is
    /// configured (--otlp-endpoint, OTEL_EXPORTER_OTLP_ENDPOINT or a per-signal variant,
    /// --config), else console.
    #[arg(long, value_parser = ["otlp", "console", "file"])]
    pub exporter: Option<String>,
    /// OTLP endpoint, e.g. http://127.0.0.1:4317 (gRPC) or http://127.0.0.1:4318 (HTTP);
    /// overrides OTEL_EXPORTER_OTLP_ENDPOINT. https:// uses TLS.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol: grpc or http/protobuf (default, as the OTLP specification says);
    /// overrides OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// File for --exporter file: one OTLP/JSON Export…ServiceRequest per line.
    #[arg(long, value_name = "PATH")]
    pub otlp_file: Option<PathBuf>,
    /// TOML file with export settings not covered by flags and OTEL_* variables (see
    /// deploy/pyusdt.toml). Flags win over the environment, which wins over the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Export metrics only: no spans, no log records. The BPF programs then aggregate in the
    /// kernel, with no record per event: audit events counted per process and name, GC and
    /// import durations in the buckets of the exported histograms (the summary gives mean and
    /// max pauses, not percentiles).
    #[arg(long)]
    pub metrics_only: bool,
    /// Audit event names exported as log records: comma-separated globs (default `*`). All
    /// audit events are counted in cpython.audit.events regardless.
    #[arg(long, value_name = "GLOBS")]
    pub audit_logs: Option<String>,
    /// Export the first arguments of common audit events (open, os.system, subprocess.Popen,
    /// socket.connect, exec, compile, import) as log attributes cpython.audit.arg.N: str, int,
    /// bytes, bool and None, truncated to 64 characters. Off by default: arguments can carry
    /// secrets. Needs --probes …,audit.
    #[arg(long)]
    pub audit_args: bool,
    /// Add process.command_line to each process's resource (off: command lines can carry
    /// secrets).
    #[arg(long)]
    pub resource_command_line: bool,
    /// At exit, how long to keep retrying exports that have not been delivered, in seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub flush_timeout: u64,
    /// Serve `/metrics` (Prometheus text format, named as a Collector's prometheus exporter
    /// names them) and `/healthz` on this address, e.g. 127.0.0.1:9464; a bare port (9464)
    /// means loopback. Off by default; bind to loopback unless the scraper needs otherwise.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Size of the BPF ring buffer (power of two, e.g. 256K, 4M). Events that do not fit are
    /// dropped and counted, never lost silently.
    #[arg(long, default_value = "4M", value_parser = parse_ring_size, value_name = "SIZE")]
    pub ring_buffer_size: u32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// The command to run, after `--`.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// How often to look for interpreter files not attached yet (new installs, new
    /// containers), in seconds; 0 disables the rescan.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub rescan_interval: u64,
    /// The unprivileged user the agent becomes once its BPF programs are loaded (numbers;
    /// the gid defaults to the uid). It keeps only CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE,
    /// CAP_DAC_READ_SEARCH and CAP_LEASE. An agent started as another non-root user stays that user unless
    /// this is given.
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_run_as)]
    pub run_as: Option<crate::privileges::Identity>,
    /// Run on, with a warning, when the privileges cannot be reduced after attaching (by
    /// default the agent stops: it needs CAP_SETUID, CAP_SETGID and CAP_SETPCAP for it).
    #[arg(long)]
    pub allow_privileged_after_attach: bool,
    /// Interpreter files attached at most (each costs a few uprobes and a descriptor); files
    /// beyond are refused and counted (pyusdt.discovery.refused, reason too_many_files).
    /// Files found through processes are released when no process uses them any more.
    #[arg(long, default_value_t = crate::attach::MAX_ATTACHED_FILES, value_name = "N")]
    pub max_interpreter_files: usize,
}

fn parse_run_as(s: &str) -> Result<crate::privileges::Identity, String> {
    crate::privileges::Identity::parse(s)
}

/// `--max-overhead`: a share of the traced process's time (0.05 = 5 %), or `None`: no budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxOverhead(pub Option<f64>);

fn parse_max_overhead(s: &str) -> Result<MaxOverhead, String> {
    crate::budget::parse_max_overhead(s).map(MaxOverhead)
}

/// `1ms`, `250us`, `2s`, `500ns`, `0`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 1ms, 250us, 2s)"))?;
    let scale = match unit {
        "" if n == 0.0 => 0.0,
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => return Err(format!("`{s}`: unit must be ns, us, ms or s")),
    };
    Ok(std::time::Duration::from_secs_f64(n * scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every example of every command's `--help` parses: the examples cannot rot.
    #[test]
    fn help_examples_parse() {
        let cli = Cli::command();
        let mut checked = 0;
        for sub in cli.get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            let examples: Vec<&str> = help.lines().filter_map(|l| l.strip_prefix("  ")).collect();
            assert!(!examples.is_empty(), "{} has no example", sub.get_name());
            for example in examples {
                let words: Vec<&str> = example
                    .split_whitespace()
                    .filter(|w| *w != "sudo" && !w.contains('='))
                    .collect();
                assert_eq!(words[0], "pyusdt", "{example}");
                if let Err(e) = Cli::try_parse_from(&words) {
                    panic!("`{example}` does not parse: {e}");
                }
                checked += 1;
            }
        }
        assert!(checked >= 12, "{checked} examples");
    }
}
