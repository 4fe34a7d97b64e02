//! Least privilege for `agent`: once the BPF object is loaded, the agent keeps only the
//! capabilities it still uses, and drops the others from its effective, permitted, inheritable
//! and bounding sets, for good:
//!
//! - CAP_BPF and CAP_PERFMON: attaching uprobes to interpreter files found later (new
//!   containers) and to processes (function probes);
//! - CAP_SYS_PTRACE: reading other processes' /proc/PID/maps, root, exe and environ (the
//!   kernel's ptrace access check);
//! - CAP_DAC_READ_SEARCH: opening /proc/PID/environ of processes of other users (mode 0400).
//!
//! It runs before any other thread starts (capabilities are per thread). `run` keeps its
//! privileges: the command it starts would inherit the reduced set.
use std::fs;

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What the agent keeps.
pub const AGENT: &[u32] = &[CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_PERFMON, CAP_BPF];

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Keeps only the capabilities in `keep` (of those the process has). Returns how many were
/// dropped from the effective set, for the log.
pub fn keep_only(keep: &[u32]) -> Result<usize, String> {
    let last_cap: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    // CAP_BPF and CAP_PERFMON exist from Linux 5.8; older kernels need CAP_SYS_ADMIN for both,
    // and pyusdt's pre-flight refuses them anyway.
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData words for version 3, as `data` provides.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(format!(
            "reading capabilities: {}",
            std::io::Error::last_os_error()
        ));
    }
    let bit = |cap: u32| (cap / 32) as usize;
    let mask = |cap: u32| 1u32 << (cap % 32);
    let mut wanted = [0u32; 2];
    for &cap in keep {
        wanted[bit(cap)] |= mask(cap);
    }
    let before = data[0].effective.count_ones() + data[1].effective.count_ones();
    // The bounding set first (needs CAP_SETPCAP, still held): nothing dropped can come back
    // through an exec.
    for cap in 0..=last_cap {
        if wanted[bit(cap)] & mask(cap) == 0 {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    for (d, w) in data.iter_mut().zip(wanted) {
        d.permitted &= w;
        d.effective &= w;
        d.inheritable = 0;
    }
    // SAFETY: capset reads the header and two CapData words.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(format!(
            "dropping capabilities: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: prctl with integer arguments only. No privilege can be gained by an exec now.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    let after = data[0].effective.count_ones() + data[1].effective.count_ones();
    Ok((before - after) as usize)
}
