//! Checks made before loading BPF, so that failures name their cause: privileges and kernel.
use std::path::Path;

use crate::exit::{CliError, CliResult, Exit};

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process (`CapEff` of /proc/self/status).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Which of the capabilities tracing needs are missing, by name. `other_processes`: whether
/// other processes' /proc/PID/maps and /proc/PID/root must be read (agent discovery).
pub fn missing_capabilities(caps: u64, other_processes: bool) -> Vec<&'static str> {
    let has = |bit: u32| caps & (1 << bit) != 0;
    let admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !admin {
        missing.push("CAP_BPF (load BPF programs and maps)");
    }
    if !has(CAP_PERFMON) && !admin {
        missing.push("CAP_PERFMON (attach uprobes)");
    }
    if other_processes && !has(CAP_SYS_PTRACE) && !has(CAP_DAC_READ_SEARCH) && !admin {
        missing.push("CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH (read other processes' /proc/PID/maps and /proc/PID/root)");
    }
    missing
}

/// Everything `run` and `agent` need before loading BPF.
pub fn check_tracing(other_processes: bool) -> CliResult<()> {
    let missing = missing_capabilities(effective_caps(), other_processes);
    if !missing.is_empty() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let who = if uid == 0 {
            "running as root but".to_string()
        } else {
            format!("running as uid {uid},")
        };
        return Err(CliError::new(
            Exit::Privileges,
            format!(
                "tracing needs privileges: {who} missing {}. Run with sudo, or grant them: \
                 sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep $(command -v pyusdt)",
                missing.join(", ")
            ),
        ));
    }
    if let Some(missing) = kernel_features()
        .into_iter()
        .find(|f| f.state == FeatureState::Missing)
    {
        return Err(CliError::new(Exit::Kernel, missing.explain()));
    }
    Ok(())
}

/// Whether the running kernel has a facility pyusdt needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureState {
    Present,
    Missing,
    /// Probing it needs CAP_BPF (or root), which this process lacks.
    NotChecked,
}

/// A kernel facility pyusdt needs, in words, with what it is for and what to do without it.
#[derive(Debug, Clone)]
pub struct KernelFeature {
    pub name: &'static str,
    pub needed_for: &'static str,
    pub fix: &'static str,
    pub state: FeatureState,
}

impl KernelFeature {
    /// The message for a missing feature: what, why, what to do.
    pub fn explain(&self) -> String {
        format!(
            "this kernel lacks {} (needed for {}): {}",
            self.name, self.needed_for, self.fix
        )
    }
}

/// Every kernel facility the BPF object needs, checked the way the loader will use it:
/// files of sysfs for BTF and the uprobe PMU, and libbpf's probes (a tiny map or program
/// loaded and freed) for the rest. None of them needs tracefs or debugfs.
pub fn kernel_features() -> Vec<KernelFeature> {
    let file = |p: &str| {
        if Path::new(p).exists() {
            FeatureState::Present
        } else {
            FeatureState::Missing
        }
    };
    let caps = effective_caps();
    let can_probe = caps & (1 << CAP_BPF) != 0 || caps & (1 << CAP_SYS_ADMIN) != 0;
    let probe = |supported: libbpf_rs::Result<bool>| match supported {
        _ if !can_probe => FeatureState::NotChecked,
        Ok(true) => FeatureState::Present,
        Ok(false) => FeatureState::Missing,
        // EPERM and the like: the probe itself could not run.
        Err(_) => FeatureState::NotChecked,
    };
    vec![
        KernelFeature {
            name: "BTF type information (/sys/kernel/btf/vmlinux)",
            needed_for: "CO-RE programs and the BTF-typed sched tracepoints",
            fix: "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (default on Debian 11+, Ubuntu \
                  20.10+, Fedora 31+, RHEL 8.2+)",
            state: file("/sys/kernel/btf/vmlinux"),
        },
        KernelFeature {
            name: "uprobes (/sys/bus/event_source/devices/uprobe)",
            needed_for: "attaching to CPython's markers",
            fix: "use a kernel built with CONFIG_UPROBES=y and CONFIG_UPROBE_EVENTS=y",
            state: file("/sys/bus/event_source/devices/uprobe/type"),
        },
        KernelFeature {
            name: "BTF-typed sched tracepoints (tp_btf sched_process_fork/exec/exit, Linux 5.5+)",
            needed_for: "following forks, execs and exits without tracefs",
            fix: "use Linux 5.11 or newer with BTF (every facility here is there by 5.11)",
            state: sched_tracepoints(),
        },
        KernelFeature {
            name: "BPF ring buffers (BPF_MAP_TYPE_RINGBUF, Linux 5.8+)",
            needed_for: "sending events to user space",
            fix: "use Linux 5.11 or newer",
            state: probe(libbpf_rs::MapType::RingBuf.is_supported()),
        },
        KernelFeature {
            name: "BPF task storage (BPF_MAP_TYPE_TASK_STORAGE, Linux 5.11+)",
            needed_for: "each thread's stack of collections, imports and calls",
            fix: "use Linux 5.11 or newer",
            state: probe(libbpf_rs::MapType::TaskStorage.is_supported()),
        },
    ]
}

/// Whether the kernel's BTF describes the sched tracepoints as BTF-typed ones
/// (`btf_trace_<name>` typedefs), which is what SEC("tp_btf/...") programs attach to.
/// libbpf's own probe of BPF_PROG_TYPE_TRACING matches a verifier message that newer
/// kernels word differently (it says "missing" on 6.18), so the BTF is read instead.
fn sched_tracepoints() -> FeatureState {
    let Ok(btf) = libbpf_rs::btf::Btf::from_vmlinux() else {
        return FeatureState::Missing;
    };
    let all = [
        "btf_trace_sched_process_fork",
        "btf_trace_sched_process_exec",
        "btf_trace_sched_process_exit",
    ]
    .iter()
    .all(|name| {
        btf.type_by_name::<libbpf_rs::btf::BtfType<'_>>(name)
            .is_some()
    });
    if all {
        FeatureState::Present
    } else {
        FeatureState::Missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        assert_eq!(missing_capabilities(1 << CAP_SYS_ADMIN, true).len(), 0);
        let minimal = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_DAC_READ_SEARCH);
        assert_eq!(missing_capabilities(minimal, true).len(), 0);
        assert_eq!(missing_capabilities(0, true).len(), 3);
        assert_eq!(missing_capabilities(0, false).len(), 2);
        assert!(missing_capabilities(1 << CAP_BPF, true)[0].starts_with("CAP_PERFMON"));
    }

    #[test]
    fn a_missing_feature_says_what_and_what_to_do() {
        let f = KernelFeature {
            name: "BPF ring buffers",
            needed_for: "sending events",
            fix: "use Linux 5.11 or newer",
            state: FeatureState::Missing,
        };
        assert_eq!(
            f.explain(),
            "this kernel lacks BPF ring buffers (needed for sending events): use Linux 5.11 or newer"
        );
    }
}
