//! Opening, configuring and loading the BPF object: the read-only switches, the ring size,
//! which programs load, and the sched tracepoints every session needs.
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;

use super::{AttachError, Tracer, TracerOptions, MAX_ATTACHED_FILES};
use crate::bpf::PyusdtSkelBuilder;
use crate::probes::Probe;

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
        rodata.time_calls = options.count_functions && options.time_functions;
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
        // Hook points of builds without markers (bpf/hooks.h).
        let imports = options.probes.iter().any(|p| p == Probe::Import);
        for prog in [
            &mut open.progs.hook_import_entry,
            &mut open.progs.hook_import_return,
        ] {
            prog.set_autoload(imports);
        }
        let gc = options.probes.iter().any(|p| p == Probe::Gc);
        for prog in [
            &mut open.progs.hook_gc_entry,
            &mut open.progs.hook_gc_return,
            &mut open.progs.hook_gc_stats_entry,
            &mut open.progs.hook_gc_stats_return,
        ] {
            prog.set_autoload(gc);
        }
        let audit = options.probes.iter().any(|p| p == Probe::Audit);
        open.progs.hook_audit_entry.set_autoload(audit);
        if super::links::uprobe_multi() {
            // Attached as uprobe_multi links, as libbpf attaches the markers on such kernels
            // (src/attach/links.rs: attach_function says why).
            for prog in [
                &mut open.progs.hook_import_entry,
                &mut open.progs.hook_import_return,
                &mut open.progs.hook_gc_entry,
                &mut open.progs.hook_gc_return,
                &mut open.progs.hook_gc_stats_entry,
                &mut open.progs.hook_gc_stats_return,
                &mut open.progs.hook_audit_entry,
            ] {
                prog.set_attach_type(libbpf_rs::ProgramAttachType::TraceUprobeMulti);
            }
        }
        open.progs
            .time_return
            .set_autoload(options.count_functions && options.time_functions);
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
            detach_threads: RefCell::default(),
            audit_names: RefCell::default(),
            max_files: MAX_ATTACHED_FILES,
            refused_for_bound: HashSet::new(),
            options,
            gate_open: false,
            skel,
        })
    }

    /// Attaches `attach` to at most `n` files (`MAX_ATTACHED_FILES` unless said).
    pub fn limit_files(&mut self, n: usize) {
        self.max_files = n;
    }

    /// Traces every process this process starts from now on, and their descendants (the fork
    /// tracepoint). This process is recognised by its PID in its own PID namespace, which is
    /// right whether or not pyusdt shares the host's PID namespace.
    pub fn follow_children_of_self(&mut self) -> Result<(), AttachError> {
        use std::os::unix::fs::MetadataExt;
        let ns = std::fs::metadata("/proc/self/ns/pid").map_err(AttachError::PidNamespace)?;
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
    use crate::bpf;

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
