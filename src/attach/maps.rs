//! Readers and forgetters of the BPF maps: counters, in-kernel aggregates (--metrics-only),
//! audit counts and names, function hits and counts, the processes followed.
use std::collections::{HashMap, HashSet};

use libbpf_rs::{MapCore, MapFlags};

use super::{AttachError, Tracer};
use crate::bpf;
use crate::model::metrics::KernelDurations;

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
    /// Timed `top`: the calls whose return was seen, and their time with (total) and without
    /// (own) the calls they made; a recursive call's total is in its outermost call's alone.
    pub timed: u64,
    pub total_ns: u64,
    pub own_ns: u64,
    pub line: u32,
    /// Counted at function__entry (3.8-3.10, 3.15): timed too, in a timed `top`.
    pub at_entry: bool,
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
    /// Processes not held at their start (gate table full, or the stop refused): their first
    /// calls may have run before their per-process probes were attached.
    pub ungated: u64,
}

impl<'obj> Tracer<'obj> {
    /// Makes the BPF side send the names of `code` again at its next call (user space does not
    /// have them).
    pub fn forget_code(&self, code: &crate::abi::CodeRef) {
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
    pub fn function_aggregates(&self) -> Vec<(crate::abi::CodeRef, KernelDurations)> {
        let mut out = Vec::new();
        for (key, totals) in sum_durations(&self.skel.maps.func_agg) {
            let Ok(k) = plain::from_bytes::<bpf::code_ref>(&key) else {
                continue;
            };
            let code = crate::abi::CodeRef {
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
                timed: v.timed,
                total_ns: v.total_ns,
                own_ns: v.own_ns,
                line: v.line,
                at_entry: v.at_entry != 0,
                name: crate::abi::c_string(&v.name).into_owned(),
                file: crate::abi::c_string(&v.file).into_owned(),
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
            ungated: sums[bpf::STAT_UNGATED as usize],
        })
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
pub(super) fn per_cpu_entries<'m>(
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
