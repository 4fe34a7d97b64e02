//! Links: the markers attached per interpreter file (for every process mapping it), per
//! process (function probes, the governed audit marker, `top`'s counter, `flow`), and
//! detached again; each attach under a read lease of the file.
use libbpf_rs::{Link, MapCore, MapFlags, UprobeOpts, UsdtOpts};
use std::mem::take;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::maps::per_cpu_entries;
use super::{AttachError, ProcessPlan, Tracer};
use crate::bpf;
use crate::discover::lease::Lease;
use crate::discover::{hooks, refusals, Binary, Reason, PROVIDER};
use crate::probes::Probe;

/// `FUNC_COUNT_HITS` of bpf/pyusdt.h: a function probe's cookie bit asking for hit counts.
const FUNC_COUNT_HITS: u64 = 1 << 32;

/// libbpf's USDT manager (one per BPF object) is not thread-safe: attaching a USDT link takes
/// spec IDs from its free list, and destroying one gives them back with `realloc`. Links are
/// destroyed on threads of their own (`detach_process_soon`) while the event loop attaches
/// others: unserialized, the two corrupted the heap (`realloc(): invalid next size`, 1 run in
/// 9 of tests/faults.rs). Every USDT link is created and destroyed under this lock.
static USDT_MANAGER: Mutex<()> = Mutex::new(());

/// The lock of `USDT_MANAGER` (a panic while holding it leaves nothing half-done that a later
/// holder could trip on: libbpf's calls return before the guard drops).
pub(super) fn usdt_manager() -> MutexGuard<'static, ()> {
    USDT_MANAGER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<'obj> Tracer<'obj> {
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
                let link = attach_marker(self.program(marker), -1, binary, marker, Some(opts()));
                let link = link.inspect_err(|_| release_in_order(take(&mut new_links)))?;
                new_links.push(link);
                attached.push(marker);
            }
        }
        if !binary.has_python_markers() {
            if let Some(plan) = binary.hook_plan() {
                let hooked = self.attach_hooks(binary, plan, &mut new_links);
                attached.extend(hooked.inspect_err(|_| release_in_order(take(&mut new_links)))?);
            }
        }
        // All or nothing per file: a half-attached gc (start without done) would mislead.
        self.file_links
            .entry(binary.id)
            .or_default()
            .extend(new_links);
        Ok(attached)
    }

    /// Attaches the selected probes that `plan` can stand in for, on a file without markers,
    /// for every process mapping it: imports at `PyObject_CallMethodObjArgs`, GC at
    /// `gc_collect_main`, audit at `sys_audit_tstate` (bpf/hooks.h).
    /// Returns the functions attached at.
    fn attach_hooks(
        &self,
        binary: &Binary,
        plan: &hooks::Plan,
        links: &mut Vec<Link>,
    ) -> Result<Vec<&'static str>, AttachError> {
        let mut attached = Vec::new();
        let wants = |p: Probe| self.options.probes.iter().any(|q| q == p);
        if wants(Probe::Import) {
            if let Ok(site) = &plan.imports {
                let p = &self.skel.progs;
                // The return first: an entry seen before its return's probe exists would stay
                // pushed (released in the reverse order).
                for (prog, retprobe) in
                    [(&p.hook_import_return, true), (&p.hook_import_entry, false)]
                {
                    let opts = UprobeOpts {
                        cookie: site.cookie(),
                        retprobe,
                        ..Default::default()
                    };
                    links.push(attach_function(prog, binary, -1, site.site, opts)?);
                }
                attached.push(site.site.symbol);
            }
        }
        if wants(Probe::Gc) {
            if let Ok(gc) = &plan.gc {
                let p = &self.skel.progs;
                // Read by its arguments, or by its statistics (3.13): bpf/hooks.h.
                let (entry, ret) = match gc.stats {
                    None => (&p.hook_gc_entry, &p.hook_gc_return),
                    Some(_) => (&p.hook_gc_stats_entry, &p.hook_gc_stats_return),
                };
                // The return first, as for imports.
                for (prog, retprobe) in [(ret, true), (entry, false)] {
                    let opts = UprobeOpts {
                        retprobe,
                        cookie: gc.cookie(),
                        ..Default::default()
                    };
                    links.push(attach_function(prog, binary, -1, gc.site, opts)?);
                }
                attached.push(gc.site.symbol);
            }
        }
        // Per process instead (`attach_process`) when the audit marker would be.
        if wants(Probe::Audit) && !self.options.audit_per_process {
            if let Ok(site) = &plan.audit {
                let opts = hook_opts(site);
                links.push(attach_function(
                    &self.skel.progs.hook_audit_entry,
                    binary,
                    -1,
                    *site,
                    opts,
                )?);
                attached.push(site.symbol);
            }
        }
        Ok(attached)
    }

    /// The probes the tracer was loaded for (`--probes`).
    pub fn selected_probes(&self) -> &crate::probes::ProbeSet {
        &self.options.probes
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
        if let Some(links) = self.file_links.remove(&id) {
            release_in_order(links);
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
        // On a file without markers, audit at its hook point (bpf/hooks.h) for this process.
        let mut audit_hook = None;
        if plan.audit && binary.has_marker("audit") {
            steps.push(("audit", &p.audit, self.audit_cookie(binary)));
        } else if plan.audit {
            audit_hook = binary
                .hook_plan()
                .and_then(|h| h.audit.as_ref().ok().copied());
        }
        if let Some(epoch) = plan.counter {
            let epoch = u64::from(epoch);
            if binary.entries_fire() {
                // Returns before entries: detaching pops entries first (see detach_process).
                if self.options.time_functions {
                    steps.push(("function__return", &p.time_return, epoch));
                }
                steps.push(("function__entry", &p.count_entry, epoch));
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
            let link = attach_marker(prog, pid, binary, marker, Some(opts));
            let link = link.inspect_err(|_| release_in_order(take(&mut links)))?;
            links.push(link);
        }
        if let Some(site) = audit_hook {
            let opts = hook_opts(&site);
            let link = attach_function(&p.hook_audit_entry, binary, pid, site, opts);
            let link = link.inspect_err(|_| release_in_order(take(&mut links)))?;
            links.push(link);
        }
        self.process_links.borrow_mut().insert(host_pid, links);
        Ok(())
    }

    /// Detaches the per-process probes of one process: the kernel releases their semaphores,
    /// so that the interpreter stops calling the markers at all (and builds no audit tuples).
    pub fn detach_process(&self, host_pid: u32) {
        if let Some(links) = self.process_links.borrow_mut().remove(&host_pid) {
            release_in_order(links);
        }
    }

    /// Detaches them as `detach_process` does, on a thread of their own: releasing a link
    /// waits for RCU grace periods (a detach took 70–130 ms here), during which the event loop
    /// stood still, for every process. The flag says when the kernel is done (the overhead
    /// budget measures the process from then); `None`: nothing to detach, or done already.
    pub fn detach_process_soon(&self, host_pid: u32) -> Option<Arc<AtomicBool>> {
        let links = self.process_links.borrow_mut().remove(&host_pid)?;
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        // A thread that cannot start drops its closure, and with it the links, at once.
        let thread = std::thread::Builder::new()
            .name("pyusdt-detach".into())
            .spawn(move || {
                release_in_order(links);
                flag.store(true, Ordering::Release);
            })
            .ok()?;
        // Joined before the object goes (Tracer's drop): the links refer to its USDT manager.
        let mut threads = self.detach_threads.borrow_mut();
        threads.retain(|t| !t.is_finished());
        threads.push(thread);
        Some(done)
    }

    /// Waits for the links released on threads of their own (`detach_process_soon`).
    pub(super) fn join_detach_threads(&self) {
        for thread in self.detach_threads.borrow_mut().drain(..) {
            let _ = thread.join();
        }
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

    /// Attaches the call counter to `binary`: to function__entry where it fires for every call
    /// (3.8–3.10, 3.15), else to function__return (3.11, where entries need the slow line mode;
    /// every call returns once). With `TracerOptions::time_functions` and entries firing, also
    /// the timer at function__return. Returns the marker counted at, or `None` when the file
    /// has neither. `pid`: -1 for every process using the file, else that process alone.
    pub fn attach_function_counter(
        &mut self,
        binary: &Binary,
        pid: i32,
    ) -> Result<Option<&'static str>, AttachError> {
        let p = &self.skel.progs;
        let mut plan = Vec::new();
        let marker = if binary.entries_fire() {
            if self.options.time_functions {
                plan.push(("function__return", &p.time_return));
            }
            plan.push(("function__entry", &p.count_entry));
            "function__entry"
        } else if binary.has_marker("function__return") {
            plan.push(("function__return", &p.count_return));
            "function__return"
        } else {
            return Ok(None);
        };
        let _lease = lease(binary)?;
        for (m, prog) in plan {
            let link = attach_marker(prog, pid, binary, m, None)?;
            self.links.push(link);
        }
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
    let _manager = usdt_manager();
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

/// A GC or audit hook's options: its cookie carries the events' source (bpf/hooks.h).
fn hook_opts(site: &hooks::Site) -> UprobeOpts {
    UprobeOpts {
        cookie: u64::from(site.source.signal().byte()) << 8,
        ..Default::default()
    }
}

/// Whether the kernel has uprobe_multi links (Linux 6.6+), which libbpf uses for the markers
/// there: the hook points are attached the same way (load.rs sets their programs' attach type
/// to match). A perf-event uprobe for every process (pid -1) is a system-wide perf event, which
/// the agent, once it runs as an unprivileged user, was refused (EACCES on 6.18, CAP_PERFMON
/// kept): the links the markers use are not.
pub(super) fn uprobe_multi() -> bool {
    static MULTI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MULTI.get_or_init(|| {
        let release = procfs_release().unwrap_or_default();
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (major, minor) >= (6, 6)
    })
}

/// The kernel release (`6.18.44-…`).
fn procfs_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Attaches `prog` at a hook point of `binary` (its entry, or its returns with
/// `opts.retprobe`) for process `pid` (-1: every process mapping the file), through the
/// examined file's descriptor: a uprobe_multi link where the kernel has them, else a perf
/// event.
fn attach_function(
    prog: &libbpf_rs::ProgramMut<'_>,
    binary: &Binary,
    pid: i32,
    site: hooks::Site,
    opts: UprobeOpts,
) -> Result<Link, AttachError> {
    let offset = usize::try_from(site.file_offset).map_err(|_| {
        AttachError::Object(format!(
            "{}: offset of {} out of range",
            binary.path.display(),
            site.symbol
        ))
    })?;
    let attached = if uprobe_multi() {
        let multi = libbpf_rs::UprobeMultiOpts {
            offsets: vec![offset],
            cookies: vec![opts.cookie],
            retprobe: opts.retprobe,
            ..Default::default()
        };
        prog.attach_uprobe_multi_with_opts(pid, binary.attach_path(), "", multi)
    } else {
        prog.attach_uprobe_with_opts(pid, binary.attach_path(), offset, opts)
    };
    attached.map_err(|source| AttachError::Attach {
        marker: site.symbol,
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
    if cfg!(target_pointer_width = "64") && !binary.free_threaded() {
        16
    } else {
        0
    }
}

/// Releases a process's links, entries before returns (the reverse of attaching): a return
/// without its entry is ignored, while entries without returns would fill the thread's stack
/// (released together, on threads of their own, they filled it 2,294 times in 6 s of fib).
fn release_in_order(mut links: Vec<Link>) {
    let _manager = usdt_manager();
    while let Some(link) = links.pop() {
        drop(link);
    }
}
