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
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(CliError::new(
            Exit::Kernel,
            "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): pyusdt's CO-RE programs \
             need a kernel built with CONFIG_DEBUG_INFO_BTF=y (default on Debian 11+, Ubuntu \
             20.10+, Fedora 31+, RHEL 8.2+)",
        ));
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        return Err(CliError::new(
            Exit::Kernel,
            "this kernel has no uprobes (/sys/bus/event_source/devices/uprobe is missing): it \
             must be built with CONFIG_UPROBES=y and CONFIG_UPROBE_EVENTS=y",
        ));
    }
    Ok(())
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
}
