//! Probes attached per process, so that the overhead budget (src/budget.rs) can switch them
//! off for one process: function probes (`--probes function`, and 3.11's line mode then slows
//! down only the processes it is meant for), the audit marker when a budget is set
//! (`--probes audit --max-overhead PCT`), since each audit event costs the interpreter a tuple
//! and a uprobe trap, and `top`'s call counter (`top --max-overhead PCT`).
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use crate::attach::{FunctionHits, FunctionPlan, ProcessPlan, Tracer};
use crate::budget::{self, ProcessBudget, Switch};
use crate::budget_memory::{BudgetMemory, Remembered};
use crate::discover::{process, Binary, Firing};
use crate::model::sampling::{FunctionMarkers, Sampling, SamplingTable};

/// Processes kept in the sampling table after they exit (for the summary), at most.
const MAX_TABLE: usize = 4096;
/// How often processes are looked at (new ones, the budget, exits).
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(25);
/// Returns seen without a single entry before concluding that entries do not fire.
const ENTRY_EVIDENCE: u64 = 1000;
/// How often what was learned of kinds is written, at most (and when the run ends).
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

struct Followed {
    /// PID as this process sees it (for attaching).
    local_pid: i32,
    /// The file, as this process reaches it (through its own root: a container's file may
    /// have been found through another process's root, which may be gone).
    binary: Binary,
    budget: ProcessBudget,
    hits: FunctionHits,
    /// Function probes and what its markers do (`None`: none, or given up on).
    functions: Option<FunctionMarkers>,
    /// Its audit marker is attached per process.
    audit: bool,
    /// `top`'s call counter is attached per process.
    counter: bool,
    /// Probes detached for good (attaching failed).
    given_up: bool,
    /// Its kind (`workload_kind`), under a budget: what its probes cost is learned for the
    /// next process of the kind.
    kind: Option<u64>,
    /// What its probes cost it, as far as known (`ProcessBudget::known_share`).
    known_share: Option<f64>,
    /// The first process of its kind: what it costs is its kind's cost until it exits.
    first_of_kind: bool,
    /// Its probes are being detached on another thread (set when done), since then.
    detaching: Option<(Arc<AtomicBool>, Instant)>,
}

pub struct ProcessProbes {
    /// Function probes are selected (`--probes function`).
    functions: bool,
    line_mode: bool,
    /// The audit marker is attached per process, under the budget.
    audit: bool,
    /// `top --max-overhead`: its call counter is attached per process, under the budget.
    counter: bool,
    max_share: Option<f64>,
    binaries: Vec<Binary>,
    followed: HashMap<u32, Followed>,
    /// PIDs looked at that use none of the files (not looked at again).
    ignored: HashSet<u32>,
    /// Under a budget: what the probes cost each kind of process (interpreter file and its
    /// first arguments), learned from the processes of that kind that exited, so that the
    /// next one is sampled from its start (`ProcessBudget::learned`). Bounded (`MAX_TABLE`).
    learned: HashMap<u64, KindCost>,
    /// Executables looked at by `file_at_start` (by device and inode): the added file they
    /// run or link, if any. Bounded (`MAX_TABLE`).
    executables: HashMap<(u64, u64), Option<(u64, u64)>>,
    /// Where what was learned is kept between runs (`remember_kinds`), whether it changed
    /// since it was last saved, and when that was.
    memory: Option<BudgetMemory>,
    memory_unsaved: bool,
    saved_at: Option<Instant>,
    next_epoch: u32,
    /// Nanoseconds per clock tick of /proc/PID/stat.
    ns_per_tick: u64,
    /// When `due` last said yes.
    last_look: Option<Instant>,
    pub table: SamplingTable,
}

impl ProcessProbes {
    /// `functions`: function probes are selected; `audit`: the audit marker is governed too;
    /// `max_share`: the budget (--max-overhead), `None` for none.
    pub fn new(
        functions: bool,
        line_mode: bool,
        audit: bool,
        max_share: Option<f64>,
    ) -> ProcessProbes {
        ProcessProbes {
            functions,
            line_mode,
            audit,
            counter: false,
            max_share,
            binaries: Vec::new(),
            followed: HashMap::new(),
            ignored: HashSet::new(),
            executables: HashMap::new(),
            learned: HashMap::new(),
            memory: None,
            memory_unsaved: false,
            saved_at: None,
            next_epoch: 1,
            ns_per_tick: 1_000_000_000 / procfs::ticks_per_second().max(1),
            last_look: None,
            table: Rc::default(),
        }
    }

    /// `top --max-overhead`: the call counter of each process using an added file, within
    /// the budget `max_share`.
    pub fn counters(max_share: Option<f64>) -> ProcessProbes {
        let mut p = ProcessProbes::new(false, false, false, max_share);
        p.counter = true;
        p
    }

    /// Whether function probes are selected.
    pub fn wants_functions(&self) -> bool {
        self.functions
    }

    /// Whether processes using `binary` get per-process probes: function probes it can
    /// carry, or its audit marker when governed.
    pub fn covers(&self, binary: &Binary) -> bool {
        (self.functions && self.function_markers(binary).is_ok())
            || (self.audit && binary.can_trace_audit())
            || (self.counter && binary.has_marker("function__return"))
    }

    /// What a process using `binary` gets attached now: its function probes (new `epoch`)
    /// when `functions` says what its markers do, and the governed audit marker.
    fn plan(&self, functions: Option<FunctionMarkers>, audit: bool, epoch: u32) -> ProcessPlan {
        ProcessPlan {
            functions: functions.map(|m| FunctionPlan {
                epoch,
                count_hits: m == FunctionMarkers::Unverified,
                line_mode: m == FunctionMarkers::LineMode,
            }),
            audit,
            counter: self.counter.then_some(epoch),
        }
    }

    /// Whether function probes can be attached for processes using `binary`; says why not.
    pub fn function_markers(&self, binary: &Binary) -> Result<FunctionMarkers, String> {
        if !binary.has_marker("function__return") || !binary.has_marker("function__entry") {
            return Err(binary
                .firing("function__entry")
                .explain("function__entry", binary.version));
        }
        match binary.firing("function__entry") {
            Firing::Fires => Ok(FunctionMarkers::EntryAndReturn),
            Firing::Unverified => Ok(FunctionMarkers::Unverified),
            Firing::OnlyWhenLineEnabled if self.line_mode && binary.has_marker("line") => {
                Ok(FunctionMarkers::LineMode)
            }
            Firing::OnlyWhenLineEnabled => Err(format!(
                "{}; --line-mode makes entries fire, at a high cost (the interpreter's slow \
                 tracing path, limited by --max-overhead)",
                Firing::OnlyWhenLineEnabled.explain("function__entry", binary.version)
            )),
            other => Err(other.explain("function__entry", binary.version)),
        }
    }

    /// Adds a file whose processes get per-process probes (checked with `covers`).
    pub fn add_binary(&mut self, binary: &Binary) {
        if !self.binaries.iter().any(|b| b.id == binary.id) {
            self.binaries.push(binary.clone());
        }
    }

    pub fn has_binaries(&self) -> bool {
        !self.binaries.is_empty()
    }

    /// Whether any added file can give function spans.
    pub fn has_function_binaries(&self) -> bool {
        self.functions
            && self
                .binaries
                .iter()
                .any(|b| self.function_markers(b).is_ok())
    }

    /// Follows process `host_pid` (`local_pid` here) that runs `binary` (an added file), or
    /// is about to: attaches its probes now. Returns false when attaching failed.
    pub fn follow(
        &mut self,
        tracer: &Tracer<'_>,
        host_pid: u32,
        local_pid: i32,
        binary: &Binary,
    ) -> bool {
        self.add_binary(binary);
        self.follow_file(tracer, host_pid, local_pid, binary.clone())
    }

    fn follow_file(
        &mut self,
        tracer: &Tracer<'_>,
        host_pid: u32,
        local_pid: i32,
        binary: Binary,
    ) -> bool {
        if self.followed.contains_key(&host_pid) {
            return true;
        }
        let epoch = self.next_epoch();
        let functions = self
            .functions
            .then(|| self.function_markers(&binary).ok())
            .flatten();
        let audit = self.audit && binary.can_trace_audit();
        let counter = self.counter && binary.has_marker("function__return");
        if functions.is_none() && !audit && !counter {
            return false;
        }
        let now = Instant::now();
        let cost = kernel_time_ns(local_pid, self.ns_per_tick).unwrap_or(0);
        // The audit marker's hidden user-space share is the larger.
        let factor = if audit {
            budget::AUDIT_USER_SPACE_FACTOR
        } else {
            budget::FUNCTION_USER_SPACE_FACTOR
        };
        let kind = self
            .max_share
            .and_then(|_| workload_kind(local_pid, binary.id));
        let budget = match (self.max_share, kind.and_then(|k| self.learned.get_mut(&k))) {
            (Some(max), Some(known)) => {
                // The kind's balance moves to this process (another one of the kind starting
                // meanwhile starts from nothing) and comes back when it exits.
                let carried = std::mem::take(&mut known.balance_ns);
                tracing::debug!(
                    "PID {host_pid}: its kind's probes cost {:.3} of its time, {:.1} ms carried",
                    known.share,
                    carried / 1e6
                );
                ProcessBudget::learned(max, factor, now, cost, known.share, carried)
            }
            _ => ProcessBudget::new(self.max_share, factor, now, cost),
        };
        // A kind known to cost more than the budget starts detached (sampled from its start).
        if budget.is_on() {
            let plan = self.plan(functions, audit, epoch);
            if let Err(e) = tracer.attach_process(&binary, local_pid, host_pid, plan) {
                tracing::warn!("PID {host_pid}: no per-process probes: {e}");
                self.ignored.insert(host_pid);
                return false;
            }
            if functions == Some(FunctionMarkers::LineMode) {
                tracing::warn!(
                    "PID {host_pid} (CPython {}): line mode on for this process alone, so that \
                     function__entry fires; its code runs on the interpreter's slow tracing path",
                    binary
                        .version
                        .map_or_else(|| "3.11".into(), |v| v.to_string())
                );
            }
        }
        self.followed.insert(
            host_pid,
            Followed {
                local_pid,
                binary,
                budget,
                hits: FunctionHits::default(),
                functions,
                audit,
                counter,
                given_up: false,
                kind,
                known_share: None,
                first_of_kind: false,
                detaching: None,
            },
        );
        true
    }

    /// A process seen in an event or found by a scan: followed when it maps one of the files.
    /// Only for PIDs of this PID namespace. `recheck`: look again at a process that used none
    /// of them before (it sent its first event since, so it may have exec'd an interpreter).
    pub fn offer(&mut self, tracer: &Tracer<'_>, pid: u32, recheck: bool) {
        if self.followed.contains_key(&pid) || (!recheck && self.ignored.contains(&pid)) {
            return;
        }
        self.ignored.remove(&pid);
        match self.file_of(pid) {
            Some(binary) => {
                self.follow_file(tracer, pid, pid as i32, binary);
            }
            None => {
                self.ignored.insert(pid);
            }
        }
    }

    /// A process held at its start by the gate (`Tracer::held`: a new program, or a fork):
    /// followed when it maps an added file, or is about to (its executable is one, or links
    /// one), before it is let go. A followed process that started another program is
    /// followed anew when that program uses another file.
    pub fn offer_started(&mut self, tracer: &Tracer<'_>, pid: u32) {
        let binary = self.file_of(pid).or_else(|| self.file_at_start(pid));
        if let Some(f) = self.followed.get(&pid) {
            if binary.as_ref().is_some_and(|b| b.id == f.binary.id) {
                return;
            }
            tracer.detach_process(pid);
            self.followed.remove(&pid);
        }
        self.ignored.remove(&pid);
        match binary {
            Some(b) => {
                self.follow_file(tracer, pid, pid as i32, b);
            }
            None => {
                self.ignored.insert(pid);
            }
        }
    }

    /// The added file a process that has just started its program will map: its executable,
    /// or the libpython its executable links (not mapped yet: the dynamic loader has not
    /// run). Read through /proc/PID (the executable and its links, resolved in its root).
    fn file_at_start(&mut self, pid: u32) -> Option<Binary> {
        use crate::discover::safe_open;
        let exe = safe_open::open_proc_link(std::path::Path::new(&format!("/proc/{pid}/exe")));
        let exe_id = exe.ok()?.id;
        let found = match self.executables.get(&exe_id) {
            Some(found) => *found,
            None => {
                let found = self.added_file_of_executable(pid, exe_id);
                if self.executables.len() >= MAX_TABLE {
                    self.executables.clear();
                }
                self.executables.insert(exe_id, found);
                found
            }
        };
        let b = self.binaries.iter().find(|b| Some(b.id) == found)?;
        Some(b.clone())
    }

    /// The added file executable `exe_id` of process `pid` is, or links (see `file_at_start`).
    fn added_file_of_executable(&self, pid: u32, exe_id: (u64, u64)) -> Option<(u64, u64)> {
        use crate::discover::safe_open;
        if self.binaries.iter().any(|b| b.id == exe_id) {
            return Some(exe_id);
        }
        let inner = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let exe = Binary::open(&process::host_path(pid as i32, &inner)).ok()?;
        if exe.id != exe_id {
            return None; // replaced since
        }
        let lib = exe.linked_libpython()?;
        let (root_pid, lib_inner) = safe_open::split_proc_root(&lib)?;
        let id = safe_open::id_in_root(root_pid, &lib_inner)?;
        self.binaries.iter().any(|b| b.id == id).then_some(id)
    }

    /// Detaches the probes of every followed process (at shutdown: nothing more is written
    /// into the ring buffer after its last drain).
    pub fn detach_all(&self, tracer: &Tracer<'_>) {
        for pid in self.followed.keys() {
            tracer.detach_process(*pid);
        }
    }

    /// Forgets the processes that exited among those looked at and not followed.
    pub fn prune_ignored(&mut self) {
        self.ignored.retain(|&pid| process::is_alive(pid));
    }

    /// Which added file process `pid` maps, as reached through its own root. Mapped paths are
    /// compared by `stat` through /proc/PID/root, as the files were identified: on overlayfs
    /// the device and inode that /proc/PID/maps shows can be the lower layer's.
    fn file_of(&self, pid: u32) -> Option<Binary> {
        let maps = procfs::process::Process::new(pid as i32)
            .ok()?
            .maps()
            .ok()?;
        maps.iter().find_map(|m| {
            let procfs::process::MMapPath::Path(inner) = &m.pathname else {
                return None;
            };
            let id = process::mapped_file(pid as i32, m, |id| {
                self.binaries.iter().any(|b| b.id == *id)
            })?;
            let mut b = self.binaries.iter().find(|b| b.id == id)?.clone();
            b.path = process::host_path(pid as i32, inner);
            Some(b)
        })
    }

    fn next_epoch(&mut self) -> u32 {
        let e = self.next_epoch;
        self.next_epoch = self.next_epoch.wrapping_add(1).max(1);
        e
    }

    /// Whether it is time to look at the processes again: polls can return many times a second
    /// under load, and each look reads /proc and a BPF map.
    pub fn due(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last_look
            .is_some_and(|t| now.duration_since(t) < LOOK_EVERY)
        {
            return false;
        }
        self.last_look = Some(now);
        true
    }

    /// Applies the budget, watches unverified interpreters for entries and forgets processes
    /// that exited. Called between ring-buffer polls.
    pub fn tick(&mut self, tracer: &Tracer<'_>, pids_are_ours: bool) {
        if self.followed.is_empty() {
            return;
        }
        let now = Instant::now();
        let hits = tracer.function_hits();
        let ns_per_tick = self.ns_per_tick;
        let mut exited = Vec::new();
        let mut switches = Vec::new();
        for (&pid, f) in self.followed.iter_mut() {
            let stat = procfs::process::Process::new(f.local_pid).and_then(|p| p.stat());
            let Ok(stat) = stat.map_err(|_| ()).and_then(|s| {
                // A zombie or a reused PID is not the process followed.
                if s.state == 'Z' || (pids_are_ours && !process::is_alive(pid)) {
                    Err(())
                } else {
                    Ok(s)
                }
            }) else {
                exited.push(pid);
                continue;
            };
            if let Some(h) = hits.get(&pid) {
                f.hits = *h;
            }
            if let Some((done, since)) = &f.detaching {
                if !done.load(std::sync::atomic::Ordering::Acquire) {
                    continue;
                }
                tracing::debug!("PID {pid}: Detach took {:?}", since.elapsed());
                f.detaching = None;
                f.budget.switched(now, stat.stime * ns_per_tick);
            }
            if f.given_up {
                continue;
            }
            if f.functions == Some(FunctionMarkers::Unverified) {
                if f.hits.entries > 0 {
                    f.functions = Some(FunctionMarkers::EntryAndReturn);
                } else if f.hits.returns >= ENTRY_EVIDENCE {
                    tracing::warn!(
                        "PID {pid}: {} returns and no function__entry: this interpreter does \
                         not fire entries, so calls have no duration; function probes detached",
                        f.hits.returns
                    );
                    // Reported as such; its governed audit marker, if any, stays.
                    f.functions = None;
                    tracer.detach_process(pid);
                    if (f.audit || f.counter) && f.budget.is_on() {
                        switches.push((pid, Switch::Attach));
                    } else if !f.audit && !f.counter {
                        f.given_up = true;
                    }
                    continue;
                }
            }
            if let Some(share) = f.budget.known_share(now, stat.stime * ns_per_tick) {
                f.known_share = Some(share);
                // The next process of its kind may start before this one exits (a test
                // runner's next worker): it is sampled from its start as soon as the cost is
                // known; the balance follows when this one exits.
                if let Some(kind) = f.kind {
                    if !self.learned.contains_key(&kind) && self.learned.len() < MAX_TABLE {
                        f.first_of_kind = true;
                    }
                    if f.first_of_kind {
                        let entry = self.learned.entry(kind).or_insert(KindCost {
                            share,
                            balance_ns: 0.0,
                        });
                        entry.share = share;
                    }
                }
            }
            if let Some(s) = f.budget.tick(now, stat.stime * ns_per_tick) {
                tracing::debug!(
                    "PID {pid}: {s:?} after {:?} on, measured {:.3}, balance {:.1} ms",
                    f.budget.observed(now),
                    f.budget.measured_share,
                    f.budget.balance_ns(now) / 1e6
                );
                switches.push((pid, s));
            }
        }
        for (pid, switch) in switches {
            let started = Instant::now();
            match switch {
                Switch::Detach => {
                    // Released on a thread of its own: the switch ends when the kernel is done.
                    if let Some(done) = tracer.detach_process_soon(pid) {
                        if let Some(f) = self.followed.get_mut(&pid) {
                            f.detaching = Some((done, started));
                        }
                        continue;
                    }
                }
                Switch::Attach => {
                    let epoch = self.next_epoch();
                    let f = &self.followed[&pid];
                    let plan = self.plan(f.functions, f.audit, epoch);
                    if let Err(e) = tracer.attach_process(&f.binary, f.local_pid, pid, plan) {
                        tracing::warn!("PID {pid}: probes not attached again: {e}");
                        if let Some(f) = self.followed.get_mut(&pid) {
                            f.given_up = true;
                        }
                        continue;
                    }
                }
            }
            // Measured once the switch is done: a detach takes tens of ms (src/budget.rs).
            tracing::debug!("PID {pid}: {switch:?} took {:?}", started.elapsed());
            if let Some(f) = self.followed.get_mut(&pid) {
                if let Some(cost) = kernel_time_ns(f.local_pid, ns_per_tick) {
                    f.budget.switched(Instant::now(), cost);
                }
            }
        }
        for pid in exited {
            let _ = tracer.detach_process_soon(pid);
            if let Some(mut f) = self.followed.remove(&pid) {
                self.learn_from(pid, &mut f, now);
            }
        }
        if self.memory_unsaved && self.saved_at.is_none_or(|t| t.elapsed() >= SAVE_EVERY) {
            self.save_kinds();
        }
        let mut table = self.table.borrow_mut();
        // Exited processes stay in the table for the summary; an agent seeing thousands come
        // and go keeps only those it still follows.
        if table.len() > MAX_TABLE {
            table.retain(|pid, _| self.followed.contains_key(pid));
        }
        for (&pid, f) in &self.followed {
            table.insert(
                pid,
                Sampling {
                    ratio: f.budget.ratio(),
                    observed_share: f.budget.observed_share(now),
                    observed_seconds: f.budget.observed(now).as_secs_f64(),
                    measured_share: f.budget.mean_measured_share(),
                    functions: f.functions,
                    audit: f.audit,
                },
            );
        }
    }
}

impl ProcessProbes {
    /// What process `pid` (exited, or no longer followed) tells about its kind: what its
    /// probes cost, and its balance, carried to the kind's next process.
    fn learn_from(&mut self, pid: u32, f: &mut Followed, now: Instant) {
        let Some(kind) = f.kind else { return };
        let balance = f.budget.settle(now);
        let known = self.learned.get(&kind).copied();
        let share = match (known, f.known_share) {
            (_, Some(s)) if f.first_of_kind => s,
            // Half the last one, half what was known: a kind's processes vary.
            (Some(k), Some(s)) => (k.share + s) / 2.0,
            (None, Some(s)) => s,
            (Some(k), None) => k.share,
            (None, None) => return,
        };
        if known.is_none() && self.learned.len() >= MAX_TABLE {
            self.learned.clear();
        }
        // A process of the kind that started before this exit was noticed took the kind's
        // balance without this one's (a loop's next process starts within the 25 ms between
        // looks): the balance goes to the newest such process, so that the kind keeps one
        // account. Carried back to the kind instead, it made two, alternating between
        // processes, one in credit taking windows while the other was in debt.
        let heir = self
            .followed
            .iter_mut()
            .filter(|(_, g)| g.kind == Some(kind))
            .max_by_key(|(_, g)| g.budget.followed_since());
        let entry = self.learned.entry(kind).or_insert(KindCost {
            share,
            balance_ns: 0.0,
        });
        entry.share = share;
        match heir {
            Some((heir_pid, heir)) => {
                heir.budget.inherit(balance);
                tracing::debug!(
                    "PID {pid} exited: its kind's probes cost {share:.3}, {:.1} ms on its \
                     account, left to PID {heir_pid}",
                    balance / 1e6
                );
            }
            None => {
                entry.balance_ns = budget::carried(entry.balance_ns + balance, share);
                tracing::debug!(
                    "PID {pid} exited: its kind's probes cost {share:.3}, {:.1} ms on its account",
                    entry.balance_ns / 1e6
                );
            }
        }
        self.memory_unsaved = self.memory.is_some();
    }

    /// Keeps what was learned of kinds between runs (`run`; src/budget_memory.rs): the kinds
    /// remembered from earlier runs are known from now on.
    pub fn remember_kinds(&mut self, memory: BudgetMemory) {
        if self.max_share.is_none() {
            return;
        }
        let remembered = memory.load();
        for (kind, r) in &remembered {
            self.learned.insert(
                *kind,
                KindCost {
                    share: r.share,
                    balance_ns: budget::carried(r.balance_ns, r.share),
                },
            );
        }
        if !remembered.is_empty() {
            tracing::info!(
                "{} kinds of process remembered from {} (what their probes cost)",
                remembered.len(),
                memory.dir().display()
            );
        }
        self.memory = Some(memory);
    }

    /// This set of probes, for the memory: kinds cost differently under each.
    pub fn probe_set(&self) -> u64 {
        u64::from(self.functions)
            | u64::from(self.line_mode) << 1
            | u64::from(self.audit) << 2
            | u64::from(self.counter) << 3
    }

    fn save_kinds(&mut self) {
        let Some(memory) = &self.memory else { return };
        let kinds = self
            .learned
            .iter()
            .map(|(k, c)| {
                let r = Remembered {
                    share: c.share,
                    balance_ns: c.balance_ns,
                };
                (*k, r)
            })
            .collect();
        if let Err(e) = memory.save(&kinds) {
            tracing::warn!("what the budget learned is not kept: {e}");
            // Not tried again in this run.
            self.memory = None;
        }
        self.memory_unsaved = false;
        self.saved_at = Some(Instant::now());
    }
}

impl Drop for ProcessProbes {
    /// The processes still followed end with this run: what they tell is kept too.
    fn drop(&mut self) {
        if self.memory.is_none() {
            return;
        }
        let now = Instant::now();
        for (pid, mut f) in std::mem::take(&mut self.followed) {
            self.learn_from(pid, &mut f, now);
        }
        if self.memory_unsaved {
            self.save_kinds();
        }
    }
}

/// What the probes cost a kind of process (`workload_kind`), as learned from its processes that
/// exited: their share of its time while on, and the budget's balance left to the next one
/// (`ProcessBudget::settle`).
#[derive(Debug, Clone, Copy)]
struct KindCost {
    share: f64,
    balance_ns: f64,
}

/// A process's kind, for learning what probes cost it: the interpreter file (`id`) and its
/// first three arguments (`python3 -m pytest`, `python3 tool.py`), read from /proc/PID/cmdline
/// (at most 4 KiB: it is the process's to choose).
fn workload_kind(local_pid: i32, id: (u64, u64)) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    use std::io::Read;
    let file = std::fs::File::open(format!("/proc/{local_pid}/cmdline")).ok()?;
    let mut head = Vec::with_capacity(4096);
    file.take(4096).read_to_end(&mut head).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    for word in head.split(|&b| b == 0).take(3) {
        word.hash(&mut h);
    }
    Some(h.finish())
}

/// What the probes can have cost process `local_pid` so far: its system time (the uprobe traps
/// and BPF programs run in its context, in the kernel), in ns.
fn kernel_time_ns(local_pid: i32, ns_per_tick: u64) -> Option<u64> {
    let stat = procfs::process::Process::new(local_pid).ok()?.stat().ok()?;
    Some(stat.stime * ns_per_tick)
}
