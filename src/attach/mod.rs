//! Loads the BPF programs, attaches them to interpreter files and drains the ring buffer:
//! loading (load.rs), links to files and processes (links.rs), map readers (maps.rs) and
//! ring-buffer draining (ring.rs), all methods of the one `Tracer` that owns the object.
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use libbpf_rs::Link;

use crate::audit_names::AuditNames;
use crate::bpf::PyusdtSkel;
use crate::discover::Reason;
use crate::probes::ProbeSet;

mod gate;
mod links;
mod load;
mod maps;
mod ring;

pub use load::parse_ring_size;
pub use maps::{FunctionCount, FunctionHits, KernelStats};

/// What can go wrong loading or attaching.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The kernel refused to load the BPF object.
    #[error("loading the BPF programs failed: {0}")]
    Load(#[source] libbpf_rs::Error),
    /// A marker could not be attached in a file.
    #[error("attaching {marker} in {path} failed: {source}")]
    Attach {
        marker: &'static str,
        path: PathBuf,
        #[source]
        source: libbpf_rs::Error,
    },
    /// A sched tracepoint (fork, exec, exit) could not be attached.
    #[error(
        "attaching the BTF-typed tracepoint {tracepoint} failed: {source} (it needs BTF and \
         BPF_PROG_TYPE_TRACING, Linux 5.5+; `pyusdt doctor` lists the kernel facilities)"
    )]
    Tracepoint {
        tracepoint: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    /// Reading or writing a BPF map failed.
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    /// The BPF object lacks something the loader expects (a build problem).
    #[error("BPF object: {0}")]
    Object(String),
    /// The ring buffer could not be set up.
    #[error("ring buffer: {0}")]
    RingBuffer(#[source] libbpf_rs::Error),
    /// Polling the ring buffer failed.
    #[error("ring buffer: {0}")]
    RingBufferPoll(#[source] std::io::Error),
    /// This process's PID namespace could not be identified (`pyusdt run`).
    #[error("BPF object: cannot identify this process's PID namespace: {0}")]
    PidNamespace(#[source] std::io::Error),
    /// The file is not attached: counted in `pyusdt.discovery.refused` (and said once per
    /// reason), not an attach failure.
    #[error("{path}: not attached ({})", .reason.label())]
    Refused { path: PathBuf, reason: Reason },
}

impl AttachError {
    /// Whether this is a refusal (counted and logged once per reason already).
    pub fn is_refusal(&self) -> bool {
        matches!(self, AttachError::Refused { .. })
    }
}

/// Interpreter files attached for every process using them, at most: each costs a few
/// uprobes and, for audit names, a descriptor. Files found through processes are released
/// when no process uses them, so that a user who starts many copies cannot hold the slots
/// after their processes exit. Beyond: refused, counted as `too_many_files`.
pub const MAX_ATTACHED_FILES: usize = 256;

/// Loader settings (set in the BPF object before it is loaded).
#[derive(Debug, Clone)]
pub struct TracerOptions {
    pub probes: ProbeSet,
    /// Ring buffer size in bytes: a power of two, a multiple of the page size.
    pub ring_buffer_bytes: u32,
    /// Only trace processes started by this one (see `follow_children_of_self`).
    pub follow_processes: bool,
    /// Copy the first arguments of audit events (--audit-args).
    pub audit_args: bool,
    /// Read each audit event's argument count (a view shows it): a read of the traced
    /// process's memory per event, so only where it is wanted.
    pub audit_nargs: bool,
    /// Load the in-kernel call counters (`pyusdt top`).
    pub count_functions: bool,
    /// With `count_functions`: also time each call where function__entry fires (own and
    /// total time per function, `pyusdt top`), at the cost of a probe at each return.
    pub time_functions: bool,
    /// Load the flow programs (`pyusdt flow`); `Some(true)` also reports line events.
    pub flow: Option<bool>,
    /// Function probes: calls shorter than this are not sent to user space.
    pub min_function_ns: u64,
    /// Report every exec (`agent`: new interpreter files are looked for at once).
    pub report_execs: bool,
    /// Attach the audit marker per process (`attach_process`), not per file: the overhead
    /// budget then switches it off for a process whose audit events cost too much.
    pub audit_per_process: bool,
    /// --metrics-only: aggregate GC and import durations and count audit events in the
    /// kernel, with no record per event; read with `gc_aggregates`, `import_aggregates` and
    /// `audit_counts`.
    pub metrics_only: bool,
}

/// What `attach_process` attaches for one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessPlan {
    /// Function probes: `Some` with their settings.
    pub functions: Option<FunctionPlan>,
    /// The audit marker (with `TracerOptions::audit_per_process`).
    pub audit: bool,
    /// The call counter of `top` (with `TracerOptions::count_functions`), with the epoch of
    /// this attachment (a thread's timed calls from before it are dropped): at function__entry
    /// where it fires for every call, else at function__return.
    pub counter: Option<u32>,
}

/// Settings of one attachment of a process's function probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionPlan {
    /// New for each attachment of a process: a thread stack from before is emptied, so that
    /// nothing pairs across a gap.
    pub epoch: u32,
    /// Count entries and returns (are entries firing at all?).
    pub count_hits: bool,
    /// Also attach the line marker, whose semaphore makes 3.11 fire function__entry for
    /// every call (slow).
    pub line_mode: bool,
}

/// The loaded BPF object and its attachments. Dropping it detaches everything, and the kernel
/// releases the semaphores it had set.
///
/// Field order matters: fields drop in declaration order, and USDT links refer to the object's
/// USDT manager, so every link must be destroyed before the skeleton (a use-after-free
/// otherwise: the agent crashed on exit once links to files of vanished mount namespaces were
/// detached after the object).
pub struct Tracer<'obj> {
    links: Vec<Link>,
    /// The markers attached per interpreter file, by (device, inode): released on their own
    /// when no process uses a file any more (a container's copy).
    file_links: HashMap<(u64, u64), Vec<Link>>,
    _process_links: Vec<Link>,
    /// Probes attached per process (host PID), function probes and the governed audit marker:
    /// switched off and on by the overhead budget, between ring-buffer polls (hence a
    /// RefCell: `run` holds the tracer shared).
    process_links: RefCell<HashMap<u32, Vec<Link>>>,
    /// Threads releasing links (`detach_process_soon`): joined before the links and the
    /// object drop.
    detach_threads: RefCell<Vec<std::thread::JoinHandle<()>>>,
    /// Interpreter files whose audit event names come by address, and the names read.
    audit_names: RefCell<AuditNames>,
    /// Files attached for every process at most (`limit_files`).
    max_files: usize,
    /// Files refused because `max_files` were attached: looked at again once some are
    /// released (`take_refused_for_bound`).
    refused_for_bound: HashSet<(u64, u64)>,
    options: TracerOptions,
    /// Traced processes are held at their start (gate.rs).
    gate_open: bool,
    skel: PyusdtSkel<'obj>,
}

impl Drop for Tracer<'_> {
    /// No process is left stopped by the gate, whichever way pyusdt ends (short of SIGKILL).
    fn drop(&mut self) {
        self.close_gate();
        // No link may outlive the object's USDT manager, nor be destroyed while another is.
        self.join_detach_threads();
    }
}
