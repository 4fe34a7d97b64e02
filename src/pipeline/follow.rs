//! Which files and processes a session follows: attaching files, per-process probes, and
//! releasing container files no process uses any more.
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use super::Session;
use crate::discover::Binary;

impl Session<'_> {
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
            let mut refused_functions = false;
            if let Some(f) = &self.functions {
                let mut f = f.borrow_mut();
                if f.wants_functions() {
                    if let Err(why) = f.function_markers(b) {
                        refused_functions = true;
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
                // The file's function markers cannot give spans (said above, and again by
                // `warn_without_function_probes` if no file can): nothing more to say.
                Ok(markers) if markers.is_empty() && refused_functions => {}
                Ok(markers) if markers.is_empty() => {
                    let selected: Vec<&str> = self
                        .tracer
                        .selected_probes()
                        .iter()
                        .flat_map(|p| p.markers().iter().copied())
                        .collect();
                    tracing::warn!(
                        "{} has none of the selected markers ({}): not attached",
                        b.path.display(),
                        selected.join(", ")
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

    /// `run`'s command is not a Python program: the summary says so when nothing was traced.
    pub fn note_not_python(&mut self, program: &str) {
        self.sinks.summary.note_not_python(program);
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

    /// Holds the command's processes at their start until their per-process probes are
    /// attached (bpf/gate.h), where there are per-process probes and the kernel's PIDs are
    /// this process's (they are signalled by them).
    pub fn hold_starts(&mut self) {
        if self.functions.is_some() && self.pids_are_ours {
            self.tracer.open_gate();
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
}

/// The PID whose root a file was found through (`/proc/PID/root/…`): a container's file.
fn container_pid(path: &std::path::Path) -> Option<u32> {
    let rest = path.to_str()?.strip_prefix("/proc/")?;
    let (pid, tail) = rest.split_once('/')?;
    tail.starts_with("root/")
        .then(|| pid.parse().ok())
        .flatten()
}
