//! Loads the BPF programs, attaches them to interpreter files and drains the ring buffer.
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBufferBuilder, UsdtOpts};

use crate::audit_names::AuditNames;
use crate::bpf::{self, PyusdtSkel, PyusdtSkelBuilder};
use crate::discover::lease::Lease;
use crate::discover::{refusals, Binary, Reason, PROVIDER};
use crate::model::metrics::KernelDurations;
use crate::probes::{Probe, ProbeSet};

/// How long one poll waits when no wakeup comes: the latency bound of a quiet stream,
/// since the BPF side only wakes user space once a CPU has written `wakeup_bytes`.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest the last drain of `Tracer::run` goes on while producers still write.
const FINAL_DRAIN: Duration = Duration::from_secs(3);

/// Records handled between two looks at `keep_going` (a few ms of work).
const CONSUME_BATCH: usize = 8192;

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
    /// The ring buffer could not be set up or polled.
    #[error("ring buffer: {0}")]
    RingBuffer(String),
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

/// One series of durations aggregated in the kernel so far (--metrics-only).
#[derive(Debug, Clone, PartialEq)]
pub struct DurationAggregate {
    pub pid: u32,
    /// GC: the generation (-1: start not seen); imports: found (bit 0) | top-level (bit 1).
    pub series: i32,
    /// Cumulative totals (min and max over the process's life).
    pub totals: KernelDurations,
}

/// Audit events of one process and name, counted in the kernel so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCount {
    pub pid: u32,
    pub name: String,
    pub count: u64,
}

/// What `attach_process` attaches for one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessPlan {
    /// Function probes: `Some` with their settings.
    pub functions: Option<FunctionPlan>,
    /// The audit marker (with `TracerOptions::audit_per_process`).
    pub audit: bool,
    /// The call counter of `top` (with `TracerOptions::count_functions`): at function__entry
    /// where it fires for every call, else at function__return.
    pub counter: bool,
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

/// `FUNC_COUNT_HITS` of bpf/pyusdt.h: a function probe's cookie bit asking for hit counts.
const FUNC_COUNT_HITS: u64 = 1 << 32;

/// Function-marker hits of one process so far (cumulative), counted in the kernel where asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionHits {
    pub entries: u64,
    pub returns: u64,
}

/// Calls of one function of one process, counted in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCount {
    pub pid: u32,
    /// Addresses of its file and name strings, and its def line when counted at entry: the
    /// function's identity in its process.
    pub code: (u64, u64, u32),
    pub calls: u64,
    pub line: u32,
    pub name: String,
    pub file: String,
}

/// Counters kept by the BPF side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Events lost because the ring buffer was full, per marker (gc, import, audit).
    pub dropped: [u64; 3],
    /// gc__start seen twice on a thread without gc__done between (a lost done).
    pub unpaired_starts: u64,
    /// Imports nested deeper than the BPF stack: reported without a duration.
    pub imports_too_deep: u64,
    /// Calls not counted because the counting table was full.
    pub function_table_full: u64,
    /// Flow records lost because the ring buffer was full.
    pub flow_dropped: u64,
    /// Function events lost because the ring buffer was full.
    pub function_dropped: u64,
    /// Calls nested deeper than the BPF stack: no span for them.
    pub calls_too_deep: u64,
    /// Thread stacks emptied after a sampling gap (calls spanning it have no duration).
    pub stacks_reset: u64,
    /// Process descriptions and exec records lost because the ring buffer was full.
    pub process_dropped: u64,
    pub exec_dropped: u64,
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
    /// Interpreter files whose audit event names come by address, and the names read.
    audit_names: RefCell<AuditNames>,
    /// Files attached for every process at most (`limit_files`).
    max_files: usize,
    /// Files refused because `max_files` were attached: looked at again once some are
    /// released (`take_refused_for_bound`).
    refused_for_bound: HashSet<(u64, u64)>,
    options: TracerOptions,
    skel: PyusdtSkel<'obj>,
}

impl<'obj> Tracer<'obj> {
    /// Opens, configures and loads the BPF object. `storage` outlives the tracer.
    pub fn load(
        storage: &'obj mut MaybeUninit<OpenObject>,
        options: TracerOptions,
    ) -> Result<Self, AttachError> {
        let mut open = PyusdtSkelBuilder::default()
            .open(storage)
            .map_err(AttachError::Load)?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| AttachError::Object("BPF object without .rodata".into()))?;
        // Wake user space at a quarter of the buffer, and never later than 256 KiB pending: each
        // CPU wakes it after writing its share of that.
        let pending = (u64::from(options.ring_buffer_bytes) / 4).min(256 * 1024);
        // Online CPUs, not possible ones: a VM with many hot-plug slots would otherwise wake
        // user space every few records.
        // SAFETY: sysconf has no preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let cpus = u64::try_from(online).unwrap_or(1).max(1);
        rodata.wakeup_bytes = (pending / cpus).max(1);
        rodata.filter_tgid = options.follow_processes;
        rodata.audit_args = options.audit_args;
        rodata.audit_nargs = options.audit_nargs;
        rodata.flow_lines = options.flow == Some(true);
        rodata.min_function_ns = options.min_function_ns;
        rodata.report_execs = options.report_execs;
        rodata.metrics_only = options.metrics_only;
        rodata.function_probes = options.probes.iter().any(|p| p == Probe::Function);
        // The histogram's one source; an array of another length does not compile.
        rodata.duration_bounds_ns = crate::model::metrics::duration_bounds_ns();
        open.maps
            .events
            .set_max_entries(options.ring_buffer_bytes)
            .map_err(|source| AttachError::Map {
                map: "events",
                source,
            })?;
        open.progs
            .follow_fork
            .set_autoload(options.follow_processes);
        open.progs.count_entry.set_autoload(options.count_functions);
        for prog in [
            &mut open.progs.flow_entry,
            &mut open.progs.flow_return,
            &mut open.progs.flow_line,
        ] {
            prog.set_autoload(options.flow.is_some());
        }
        open.progs
            .count_return
            .set_autoload(options.count_functions);
        if !options.probes.iter().any(|p| p == Probe::Function) {
            // An LRU is preallocated too: keep it minimal (one entry per CPU) when unused.
            let cpus = libbpf_rs::num_possible_cpus().unwrap_or(1).max(1) as u32;
            open.maps
                .code_sent
                .set_max_entries(cpus)
                .map_err(|source| AttachError::Map {
                    map: "code_sent",
                    source,
                })?;
        }
        if !options.metrics_only {
            // Preallocated too.
            for (map, name) in [
                (&mut open.maps.audit_counts, "audit_counts"),
                (&mut open.maps.audit_ref_counts, "audit_ref_counts"),
                (&mut open.maps.gc_agg, "gc_agg"),
                (&mut open.maps.import_agg, "import_agg"),
                (&mut open.maps.func_agg, "func_agg"),
            ] {
                map.set_max_entries(1)
                    .map_err(|source| AttachError::Map { map: name, source })?;
            }
        }
        if !options.count_functions {
            // The counting table is preallocated: keep it minimal when unused.
            open.maps
                .func_counts
                .set_max_entries(1)
                .map_err(|source| AttachError::Map {
                    map: "func_counts",
                    source,
                })?;
        }
        let skel = open.load().map_err(AttachError::Load)?;
        let tracepoint = |tracepoint| move |source| AttachError::Tracepoint { tracepoint, source };
        let mut process_links = vec![
            skel.progs
                .forget_exited
                .attach()
                .map_err(tracepoint("sched/sched_process_exit"))?,
            skel.progs
                .forget_exec
                .attach()
                .map_err(tracepoint("sched/sched_process_exec"))?,
        ];
        if options.follow_processes {
            process_links.push(
                skel.progs
                    .follow_fork
                    .attach()
                    .map_err(tracepoint("sched/sched_process_fork"))?,
            );
        }
        Ok(Tracer {
            links: Vec::new(),
            file_links: HashMap::new(),
            _process_links: process_links,
            process_links: RefCell::default(),
            audit_names: RefCell::default(),
            max_files: MAX_ATTACHED_FILES,
            refused_for_bound: HashSet::new(),
            options,
            skel,
        })
    }

    /// Attaches `attach` to at most `n` files (`MAX_ATTACHED_FILES` unless said).
    pub fn limit_files(&mut self, n: usize) {
        self.max_files = n;
    }

    /// Attaches every selected probe to `binary` for all processes mapping it (pid -1): the
    /// kernel sets the markers' semaphores in running processes and in those started later.
    /// Returns the markers attached; those the file lacks are skipped.
    pub fn attach(&mut self, binary: &Binary) -> Result<Vec<&'static str>, AttachError> {
        if !self.file_links.contains_key(&binary.id) && self.file_links.len() >= self.max_files {
            self.refused_for_bound.insert(binary.id);
            return Err(refused(binary, Reason::TooManyFiles));
        }
        let _lease = lease(binary)?;
        let mut attached = Vec::new();
        let mut new_links = Vec::new();
        // Only the audit program reads the cookie.
        let cookie = self.audit_cookie(binary);
        let opts = || UsdtOpts {
            cookie,
            ..Default::default()
        };
        for probe in self.options.probes.iter() {
            // Function probes, and audit under a budget, are attached per process
            // (`attach_process`), so that the overhead budget can switch them off for one
            // process.
            if probe == Probe::Function || (probe == Probe::Audit && self.options.audit_per_process)
            {
                continue;
            }
            for &marker in probe.markers() {
                if !binary.has_marker(marker) {
                    continue;
                }
                let link = attach_marker(self.program(marker), -1, binary, marker, Some(opts()))?;
                new_links.push(link);
                attached.push(marker);
            }
        }
        // All or nothing per file: a half-attached gc (start without done) would mislead.
        self.file_links
            .entry(binary.id)
            .or_default()
            .extend(new_links);
        Ok(attached)
    }

    /// The files refused because the bound was reached, since the last call: once files are
    /// released, the caller looks at them again (discovery skips files examined before).
    pub fn take_refused_for_bound(&mut self) -> Vec<(u64, u64)> {
        self.refused_for_bound.drain().collect()
    }

    /// Detaches every marker attached to the file `id` (see `attach`) and gives back its
    /// descriptor, once the audit event names the kernel has counted for it
    /// (--metrics-only) are read: those counts are exported after the detach.
    pub fn detach_file(&mut self, id: (u64, u64)) {
        self.detach_links(id);
        let mut names = self.audit_names.borrow_mut();
        if let Some(image) = names.index_of(id) {
            for (key, _) in per_cpu_entries(&self.skel.maps.audit_ref_counts) {
                if let Ok(k) = plain::from_bytes::<bpf::audit_ref_count_key>(&key) {
                    if k.image == image {
                        names.name(k.image, k.name_vaddr);
                    }
                }
            }
        }
        names.forget(id);
    }

    /// Detaches every marker attached to the file `id`, and keeps its descriptor: at
    /// shutdown, records still in the ring buffer and the last counts may name its audit
    /// events. Starts go before dones (the reverse of attaching), so that no start is left
    /// waiting for its done.
    pub fn detach_links(&mut self, id: (u64, u64)) {
        if let Some(mut links) = self.file_links.remove(&id) {
            while let Some(link) = links.pop() {
                drop(link);
            }
        }
    }

    /// Attaches the per-process probes of `plan` to `binary` for one process: `pid` as this
    /// process sees it, `host_pid` as events report it (the key to detach with).
    pub fn attach_process(
        &self,
        binary: &Binary,
        pid: i32,
        host_pid: u32,
        plan: ProcessPlan,
    ) -> Result<(), AttachError> {
        let p = &self.skel.progs;
        let mut steps = Vec::new();
        if let Some(f) = plan.functions {
            let cookie = u64::from(f.epoch) | if f.count_hits { FUNC_COUNT_HITS } else { 0 };
            steps.push(("function__return", &p.function_return, cookie));
            steps.push(("function__entry", &p.function_entry, cookie));
            if f.line_mode {
                steps.push(("line", &p.function_line, cookie));
            }
        }
        if plan.audit && binary.has_marker("audit") {
            steps.push(("audit", &p.audit, self.audit_cookie(binary)));
        }
        if plan.counter {
            if binary.entries_fire() {
                steps.push(("function__entry", &p.count_entry, 0));
            } else if binary.has_marker("function__return") {
                steps.push(("function__return", &p.count_return, 0));
            }
        }
        let _lease = lease(binary)?;
        let mut links = Vec::new();
        for (marker, prog, cookie) in steps {
            let opts = UsdtOpts {
                cookie,
                ..Default::default()
            };
            links.push(attach_marker(prog, pid, binary, marker, Some(opts))?);
        }
        self.process_links.borrow_mut().insert(host_pid, links);
        Ok(())
    }

    /// Detaches the per-process probes of one process: the kernel releases their semaphores,
    /// so that the interpreter stops calling the markers at all (and builds no audit tuples).
    pub fn detach_process(&self, host_pid: u32) {
        if let Some(mut links) = self.process_links.borrow_mut().remove(&host_pid) {
            // Entries go before returns (the reverse of attaching): a return without its entry
            // is ignored, while entries without returns would fill the thread's stack.
            while let Some(link) = links.pop() {
                drop(link);
            }
        }
    }

    /// Makes the BPF side send the names of `code` again at its next call (user space does not
    /// have them).
    pub fn forget_code(&self, code: &crate::decode::CodeRef) {
        let key = bpf::code_ref {
            mm: code.mm,
            name_ptr: code.name_ptr,
            file_ptr: code.file_ptr,
            line: code.line,
            tgid: code.pid,
        };
        // SAFETY: code_ref is a #[repr(C)] struct of integers without padding (bpf/pyusdt.h),
        // so all its bytes are initialised; the slice covers exactly it.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&key as *const bpf::code_ref).cast::<u8>(),
                std::mem::size_of::<bpf::code_ref>(),
            )
        };
        // Absent already (evicted): nothing to do.
        let _ = self.skel.maps.code_sent.delete(bytes);
    }

    /// Audit events counted in the kernel so far (--metrics-only), per process and name,
    /// summed over the CPUs.
    pub fn audit_counts(&self) -> Vec<AuditCount> {
        let mut out = Vec::new();
        for (key, per_cpu) in per_cpu_entries(&self.skel.maps.audit_counts) {
            let Ok(k) = plain::from_bytes::<bpf::audit_count_key>(&key) else {
                continue;
            };
            let name: Vec<u8> = k
                .name
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            out.push(AuditCount {
                pid: k.tgid,
                name: String::from_utf8_lossy(&name).into_owned(),
                count: sum_per_cpu(&per_cpu),
            });
        }
        let mut names = self.audit_names.borrow_mut();
        for (key, per_cpu) in per_cpu_entries(&self.skel.maps.audit_ref_counts) {
            let Ok(k) = plain::from_bytes::<bpf::audit_ref_count_key>(&key) else {
                continue;
            };
            out.push(AuditCount {
                pid: k.tgid,
                name: names.name(k.image, k.name_vaddr).to_string(),
                count: sum_per_cpu(&per_cpu),
            });
        }
        out
    }

    /// The name of an audit event that came by address (`Record::AuditRef`).
    pub fn audit_name(&self, image: u32, vaddr: u64) -> std::sync::Arc<str> {
        self.audit_names.borrow_mut().name(image, vaddr)
    }

    /// The audit program's cookie for `binary` (see `audit_cookie`), with its `audit_images`
    /// entry when its event names can be sent by address (written to the BPF map first).
    fn audit_cookie(&self, binary: &Binary) -> u64 {
        let cookie = audit_cookie(binary);
        if !self.options.probes.iter().any(|p| p == Probe::Audit) {
            return cookie;
        }
        let Some((index, entry)) = self.audit_names.borrow_mut().register(binary) else {
            return cookie;
        };
        let key = (index - 1).to_ne_bytes();
        // SAFETY: audit_image is a #[repr(C)] struct of three u64 (bpf/pyusdt.h), without
        // padding; the slice covers exactly it.
        let value = unsafe {
            std::slice::from_raw_parts(
                (&entry as *const bpf::audit_image).cast::<u8>(),
                std::mem::size_of::<bpf::audit_image>(),
            )
        };
        match self
            .skel
            .maps
            .audit_images
            .update(&key, value, MapFlags::ANY)
        {
            Ok(()) => cookie | (u64::from(index) << 16),
            Err(e) => {
                tracing::warn!(
                    "audit names of {} will be copied per event: {e}",
                    binary.path.display()
                );
                cookie
            }
        }
    }

    /// GC durations aggregated in the kernel so far (--metrics-only).
    pub fn gc_aggregates(&self) -> Vec<DurationAggregate> {
        durations(&self.skel.maps.gc_agg)
    }

    /// Import durations aggregated in the kernel so far (--metrics-only).
    pub fn import_aggregates(&self) -> Vec<DurationAggregate> {
        durations(&self.skel.maps.import_agg)
    }

    /// Call durations per code location aggregated in the kernel so far (--metrics-only
    /// with function probes): the calls after each location's first, whose record carried
    /// its names.
    pub fn function_aggregates(&self) -> Vec<(crate::decode::CodeRef, KernelDurations)> {
        let mut out = Vec::new();
        for (key, totals) in sum_durations(&self.skel.maps.func_agg) {
            let Ok(k) = plain::from_bytes::<bpf::code_ref>(&key) else {
                continue;
            };
            let code = crate::decode::CodeRef {
                pid: k.tgid,
                mm: k.mm,
                name_ptr: k.name_ptr,
                file_ptr: k.file_ptr,
                line: k.line,
            };
            out.push((code, totals));
        }
        out
    }

    /// Deletes the kernel aggregates (--metrics-only) of processes that exited, once read
    /// for the last time. Every key of the audit, GC and import maps starts with the
    /// process's tgid; the code locations' keys carry it too.
    pub fn forget_aggregates(&self, pids: &HashSet<u32>) {
        // Keys are collected before any is deleted: the kernel's walk restarts from the first
        // key once the one it continues from is gone.
        let m = &self.skel.maps;
        for map in [
            &m.audit_counts,
            &m.audit_ref_counts,
            &m.gc_agg,
            &m.import_agg,
        ] {
            let doomed: Vec<Vec<u8>> = map
                .keys()
                .filter(|key| {
                    let tgid = key.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok());
                    tgid.is_some_and(|t| pids.contains(&u32::from_ne_bytes(t)))
                })
                .collect();
            for key in doomed {
                let _ = map.delete(&key);
            }
        }
        let doomed: Vec<Vec<u8>> = m
            .func_agg
            .keys()
            .filter(|key| {
                plain::from_bytes::<bpf::code_ref>(key).is_ok_and(|k| pids.contains(&k.tgid))
            })
            .collect();
        for key in doomed {
            let _ = m.func_agg.delete(&key);
        }
    }

    /// The processes `run` follows (its command and their descendants), as host PIDs.
    pub fn traced_pids(&self) -> Vec<u32> {
        self.skel
            .maps
            .traced
            .keys()
            .filter_map(|k| <[u8; 4]>::try_from(k.as_slice()).ok())
            .map(u32::from_ne_bytes)
            .collect()
    }

    /// Function-marker hits per process so far.
    pub fn function_hits(&self) -> HashMap<u32, FunctionHits> {
        let mut out = HashMap::new();
        for (key, value) in entries(&self.skel.maps.func_hits) {
            let (Ok(pid), Ok(h)) = (
                <[u8; 4]>::try_from(key.as_slice()),
                plain::from_bytes::<bpf::func_hits>(&value),
            ) else {
                continue;
            };
            out.insert(
                u32::from_ne_bytes(pid),
                FunctionHits {
                    entries: h.entries,
                    returns: h.returns,
                },
            );
        }
        out
    }

    /// The host PID of the first process started after `follow_children_of_self` (the command
    /// of `pyusdt run`), as the events report it even when pyusdt runs in its own PID namespace.
    pub fn first_child_host_pid(&self) -> Option<u32> {
        let pid = self.skel.maps.bss_data.as_deref()?.runner_first_child;
        (pid != 0).then_some(pid)
    }

    /// Attaches the call counter to `binary`: to function__entry where it fires for every call
    /// (3.8–3.10), else to function__return (3.11, where entries need the slow line mode; every
    /// call returns once). Returns the marker used, or `None` when the file has neither.
    /// `pid`: -1 for every process using the file, else that process alone.
    pub fn attach_function_counter(
        &mut self,
        binary: &Binary,
        pid: i32,
    ) -> Result<Option<&'static str>, AttachError> {
        let (marker, prog) = if binary.entries_fire() {
            ("function__entry", &self.skel.progs.count_entry)
        } else if binary.has_marker("function__return") {
            ("function__return", &self.skel.progs.count_return)
        } else {
            return Ok(None);
        };
        let _lease = lease(binary)?;
        let link = attach_marker(prog, pid, binary, marker, None)?;
        self.links.push(link);
        Ok(Some(marker))
    }

    /// Attaches the flow programs to `binary` for process `pid` only (so that the semaphores,
    /// and on 3.11 the slow line mode, concern that process alone). Returns whether the line
    /// marker had to be enabled to make entries fire (3.11), or `None` without function markers.
    pub fn attach_flow(&mut self, binary: &Binary, pid: i32) -> Result<Option<bool>, AttachError> {
        use crate::discover::Firing;
        let line_mode = binary.firing("function__entry") == Firing::OnlyWhenLineEnabled;
        if !binary.has_marker("function__return") || !(binary.entries_fire() || line_mode) {
            return Ok(None);
        }
        let lines = self.options.flow == Some(true) || line_mode;
        let p = &self.skel.progs;
        let mut plan = vec![
            ("function__entry", &p.flow_entry),
            ("function__return", &p.flow_return),
        ];
        if lines && binary.has_marker("line") {
            plan.push(("line", &p.flow_line));
        }
        let _lease = lease(binary)?;
        for (marker, prog) in plan {
            let link = attach_marker(prog, pid, binary, marker, None)?;
            self.links.push(link);
        }
        Ok(Some(line_mode))
    }

    /// The call counts so far (cumulative), one per (process, code object).
    pub fn function_counts(&self) -> Vec<FunctionCount> {
        let mut out = Vec::new();
        for (key, value) in entries(&self.skel.maps.func_counts) {
            let (Ok(k), Ok(v)) = (
                plain::from_bytes::<bpf::func_key>(&key),
                plain::from_bytes::<bpf::func_count>(&value),
            ) else {
                continue;
            };
            out.push(FunctionCount {
                pid: k.pid,
                code: (k.file, k.name, k.line),
                calls: v.calls,
                line: v.line,
                name: crate::decode::c_string(&v.name).into_owned(),
                file: crate::decode::c_string(&v.file).into_owned(),
            });
        }
        out
    }

    /// Drops the counters of processes that exited (bounded table).
    pub fn forget_function_counts(&self, pids: &[u32]) {
        let map = &self.skel.maps.func_counts;
        let keys: Vec<Vec<u8>> = map.keys().collect();
        for key in keys {
            if plain::from_bytes::<bpf::func_key>(&key).is_ok_and(|k| pids.contains(&k.pid)) {
                let _ = map.delete(&key);
            }
        }
    }

    /// The BPF program handling `marker` (one of `Probe::markers`).
    fn program(&self, marker: &str) -> &libbpf_rs::ProgramMut<'obj> {
        let p = &self.skel.progs;
        match marker {
            "gc__start" => &p.gc_start,
            "gc__done" => &p.gc_done,
            "import__find__load__start" => &p.import_start,
            "import__find__load__done" => &p.import_done,
            "function__entry" => &p.function_entry,
            "function__return" => &p.function_return,
            _ => &p.audit,
        }
    }

    /// Traces every process this process starts from now on, and their descendants (the fork
    /// tracepoint). This process is recognised by its PID in its own PID namespace, which is
    /// right whether or not pyusdt shares the host's PID namespace.
    pub fn follow_children_of_self(&mut self) -> Result<(), AttachError> {
        use std::os::unix::fs::MetadataExt;
        let ns = std::fs::metadata("/proc/self/ns/pid").map_err(|e| {
            AttachError::Object(format!("cannot identify this process's PID namespace: {e}"))
        })?;
        let bss = self
            .skel
            .maps
            .bss_data
            .as_deref_mut()
            .ok_or_else(|| AttachError::Object("BPF object without .bss".into()))?;
        bss.runner_ns_dev = ns.dev();
        bss.runner_ns_ino = ns.ino();
        bss.runner_ns_tgid = std::process::id();
        Ok(())
    }

    /// Sums the per-CPU counters of the BPF side.
    pub fn stats(&self) -> Result<KernelStats, AttachError> {
        let mut sums = [0u64; bpf::STAT_COUNT as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            let key = (i as u32).to_ne_bytes();
            let per_cpu = self
                .skel
                .maps
                .stats
                .lookup_percpu(&key, MapFlags::ANY)
                .map_err(|source| AttachError::Map {
                    map: "stats",
                    source,
                })?
                .unwrap_or_default();
            *sum = sum_per_cpu(&per_cpu);
        }
        Ok(KernelStats {
            dropped: [
                sums[bpf::STAT_DROP_GC as usize],
                sums[bpf::STAT_DROP_IMPORT as usize],
                sums[bpf::STAT_DROP_AUDIT as usize],
            ],
            unpaired_starts: sums[bpf::STAT_UNPAIRED_START as usize],
            imports_too_deep: sums[bpf::STAT_IMPORT_TOO_DEEP as usize],
            function_table_full: sums[bpf::STAT_FUNC_TABLE_FULL as usize],
            flow_dropped: sums[bpf::STAT_DROP_FLOW as usize],
            function_dropped: sums[bpf::STAT_DROP_FUNCTION as usize],
            calls_too_deep: sums[bpf::STAT_CALLS_TOO_DEEP as usize],
            stacks_reset: sums[bpf::STAT_STACK_RESET as usize],
            process_dropped: sums[bpf::STAT_DROP_PROCESS as usize],
            exec_dropped: sums[bpf::STAT_DROP_EXEC as usize],
        })
    }

    /// Delivers every record to `on_record` until `keep_going` says stop, then drains what is
    /// left. `keep_going` is asked at least every `DRAIN_INTERVAL`.
    pub fn run(
        &self,
        on_record: impl FnMut(&[u8]),
        mut keep_going: impl FnMut() -> bool,
    ) -> Result<(), AttachError> {
        let mut on_record = on_record;
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&self.skel.maps.events, move |data| {
                on_record(data);
                0
            })
            .map_err(|e| AttachError::RingBuffer(e.to_string()))?;
        let ring = builder
            .build()
            .map_err(|e| AttachError::RingBuffer(e.to_string()))?;
        let check = |ret: i32| -> Result<(), AttachError> {
            // EINTR: a signal arrived (SIGINT/SIGTERM/SIGCHLD); the loop condition decides.
            if ret < 0 && ret != -libc::EINTR {
                return Err(AttachError::RingBuffer(
                    std::io::Error::from_raw_os_error(-ret).to_string(),
                ));
            }
            Ok(())
        };
        while keep_going() {
            // Waits for a wakeup or the drain timer without consuming: libbpf's poll consumes
            // until the ring is empty, which under a flood the producers outpace for seconds,
            // and `keep_going` (the budget, new processes, exports) would wait as long.
            let mut ready = libc::epoll_event { events: 0, u64: 0 };
            // SAFETY: the epoll descriptor belongs to `ring`, alive here; `ready` is one
            // writable event, as maxevents says.
            let n = unsafe {
                libc::epoll_wait(
                    ring.epoll_fd(),
                    &mut ready,
                    1,
                    DRAIN_INTERVAL.as_millis() as i32,
                )
            };
            if n < 0 {
                check(
                    -std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO),
                )?;
            }
            // Records below the wakeup threshold are taken here too, on the timer.
            check(ring.consume_raw_n(CONSUME_BATCH))?;
        }
        // What is pending, in batches, until a batch comes back short: not libbpf's
        // consume-until-empty, which a producer faster than this reader (a loop of
        // gc.collect(0)) never lets end, so that a SIGTERM would wait for the flood to stop
        // and the kubelet's SIGKILL lose the counts. Bounded in time; the caller detaches the
        // probes and drains again (`Session::finish`), and then nothing refills the ring.
        let deadline = std::time::Instant::now() + FINAL_DRAIN;
        loop {
            let n = ring.consume_raw_n(CONSUME_BATCH);
            check(n)?;
            if n < CONSUME_BATCH as i32 || std::time::Instant::now() >= deadline {
                return Ok(());
            }
        }
    }
}

/// The series of a `duration_agg` map keyed by `duration_key`, summed over the CPUs.
fn durations(map: &libbpf_rs::Map<'_>) -> Vec<DurationAggregate> {
    sum_durations(map)
        .into_iter()
        .filter_map(|(key, totals)| {
            let k = plain::from_bytes::<bpf::duration_key>(&key).ok()?;
            Some(DurationAggregate {
                pid: k.tgid,
                series: k.series,
                totals,
            })
        })
        .collect()
}

/// A hash map's entries, key and value; entries deleted while the map is walked are skipped.
fn entries<'m>(map: &'m libbpf_rs::Map<'_>) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + 'm {
    map.keys().filter_map(move |key| {
        let value = map.lookup(&key, MapFlags::ANY).ok()??;
        Some((key, value))
    })
}

/// The same for a per-CPU hash map: each entry's key and its value on every CPU.
fn per_cpu_entries<'m>(
    map: &'m libbpf_rs::Map<'_>,
) -> impl Iterator<Item = (Vec<u8>, Vec<Vec<u8>>)> + 'm {
    map.keys().filter_map(move |key| {
        let per_cpu = map.lookup_percpu(&key, MapFlags::ANY).ok()??;
        Some((key, per_cpu))
    })
}

/// A per-CPU `u64` counter, summed over the CPUs.
fn sum_per_cpu(per_cpu: &[Vec<u8>]) -> u64 {
    per_cpu
        .iter()
        .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
        .map(u64::from_ne_bytes)
        .sum()
}

/// The entries of a `duration_agg` map, each summed over the CPUs, with their raw keys.
fn sum_durations(map: &libbpf_rs::Map<'_>) -> Vec<(Vec<u8>, KernelDurations)> {
    let mut out = Vec::new();
    for (key, per_cpu) in per_cpu_entries(map) {
        let mut t = KernelDurations::default();
        for v in &per_cpu {
            let Ok(a) = plain::from_bytes::<bpf::duration_agg>(v) else {
                continue;
            };
            // The slot is copied while its CPU may be updating it: the buckets are the count
            // (a torn copy could hold a bucket's increment before `timed`'s).
            t.events += a.events;
            t.sum_ns += a.sum_ns;
            t.extra += a.extra;
            for (b, n) in t.buckets.iter_mut().zip(a.buckets) {
                *b += n;
            }
            if a.timed > 0 {
                t.min_ns = Some(t.min_ns.map_or(a.min_ns, |m| m.min(a.min_ns)));
                t.max_ns = Some(t.max_ns.map_or(a.max_ns, |m| m.max(a.max_ns)));
            }
            t.timed += a.buckets.iter().sum::<u64>();
        }
        out.push((key, t));
    }
    out
}

/// Attaches `prog` to `marker` of `binary` for `pid` (-1: every process mapping the file),
/// through the descriptor of the file examined (`Binary::attach_path`), under a `Lease`.
fn attach_marker(
    prog: &libbpf_rs::ProgramMut<'_>,
    pid: i32,
    binary: &Binary,
    marker: &'static str,
    opts: Option<UsdtOpts>,
) -> Result<Link, AttachError> {
    let path = binary.attach_path();
    let attached = match opts {
        Some(o) => prog.attach_usdt_with_opts(pid, &path, PROVIDER, marker, o),
        None => prog.attach_usdt(pid, &path, PROVIDER, marker),
    };
    attached.map_err(|source| AttachError::Attach {
        marker,
        path: binary.path.clone(),
        source,
    })
}

/// A read lease on `binary` while libbpf attaches to it (see `discover::lease`); a refusal
/// is counted and is the error.
/// `None` for a host file that only the host's root can truncate (see `Lease::needed`).
fn lease(binary: &Binary) -> Result<Option<Lease<'_>>, AttachError> {
    if !Lease::needed(binary.file(), &binary.path) {
        return Ok(None);
    }
    Lease::take(binary.file().fd())
        .map(Some)
        .map_err(|reason| refused(binary, reason))
}

/// Counts a refusal of `binary` and makes it the error.
fn refused(binary: &Binary, reason: Reason) -> AttachError {
    refusals::refuse(reason, &binary.path.display());
    AttachError::Refused {
        path: binary.path.clone(),
        reason,
    }
}

/// The audit program's cookie: it reads the argument tuple's ob_size at this offset (0:
/// unknown); the CPython minor version rides along for decoding audit arguments in user space.
/// Bits 16-31 (`Tracer::audit_cookie`): the file's `audit_images` index + 1.
fn audit_cookie(binary: &Binary) -> u64 {
    let minor = binary.version.map_or(0, |v| u64::from(v.minor.min(255)));
    ob_size_offset(binary) | (minor << 8)
}

/// Where a CPython build keeps a tuple's `ob_size`: offset 16 on 64-bit GIL builds (after
/// `ob_refcnt` and `ob_type`). Free-threaded builds (`python3.13t`, `libpython3.13t.so`) have a
/// larger object header that is not decoded: their audit argument count stays unknown.
fn ob_size_offset(binary: &Binary) -> u64 {
    let name = binary
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let version_and_rest = name.trim_start_matches("lib").trim_start_matches("python");
    let abi_flag = version_and_rest.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    let free_threaded = abi_flag.starts_with('t');
    if cfg!(target_pointer_width = "64") && !free_threaded {
        16
    } else {
        0
    }
}

/// Parses a ring buffer size such as `4M`, `256K` or `65536`, checked the way the kernel wants it.
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1024u64),
        Some((i, 'M' | 'm')) => (&s[..i], 1024 * 1024),
        Some((i, 'G' | 'g')) => (&s[..i], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 4M, 256K, 65536)"))?;
    let bytes = n.saturating_mul(mult);
    let page = page_size();
    if bytes < page || !bytes.is_power_of_two() || bytes > (1 << 30) {
        return Err(format!(
            "ring buffer size must be a power of two between {page} bytes (the page size) and 1G, got {bytes}"
        ));
    }
    Ok(bytes as u32)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("4M"), Ok(4 << 20));
        assert_eq!(parse_ring_size("64k"), Ok(64 << 10));
        assert_eq!(parse_ring_size("8192"), Ok(8192));
        assert!(parse_ring_size("3M").is_err());
        assert!(parse_ring_size("1").is_err());
        assert!(parse_ring_size("lots").is_err());
        assert!(parse_ring_size("4G").is_err());
    }

    /// The histogram bounds have one source: the object carries none (load writes
    /// DURATION_BOUNDS in ns), and its buckets are the exported ones (opening needs no root).
    #[test]
    fn histogram_bounds_come_from_the_model() {
        use crate::model::metrics::DURATION_BOUNDS;
        let mut storage = MaybeUninit::uninit();
        let open = PyusdtSkelBuilder::default()
            .open(&mut storage)
            .expect("the BPF object opens");
        let rodata = open.maps.rodata_data.as_deref().expect(".rodata");
        assert!(rodata.duration_bounds_ns.iter().all(|&b| b == 0));
        assert_eq!(rodata.duration_bounds_ns.len(), DURATION_BOUNDS.len());
        let agg = bpf::duration_agg::default();
        assert_eq!(agg.buckets.len(), DURATION_BOUNDS.len() + 1);
    }
}
