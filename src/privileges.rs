//! Least privilege for `agent`: once the BPF object is loaded, the agent becomes an unprivileged
//! user (65534, nobody/nogroup, unless `--run-as`) that keeps only the capabilities it still
//! uses, in its effective and permitted sets, with nothing in its bounding, inheritable or
//! ambient sets beyond them and no way to gain more through an exec (no_new_privs):
//!
//! - CAP_SYS_PTRACE: the kernel's ptrace access check for other processes' /proc/PID/maps, exe,
//!   root, environ and mem — every traced process belongs to another uid now;
//! - CAP_DAC_READ_SEARCH: opening files the new uid may not read: interpreter files in other
//!   users' and containers' directories (through /proc/PID/root), /proc/PID/environ (mode 0400);
//! - CAP_BPF: before Linux 6.5, bpf(2) refuses every command without it while
//!   kernel.unprivileged_bpf_disabled is set (the default): map reads in the event loop,
//!   attaching to files found later;
//! - CAP_PERFMON: uprobe perf events, which libbpf attaches where the kernel has no
//!   uprobe_multi links (before 6.6);
//! - CAP_LEASE: a read lease on each interpreter file while libbpf parses it (a mapping that a
//!   truncation would turn into SIGBUS; see discover/lease.rs): the new uid owns none of them.
//!
//! On 6.18, tests/agent.rs passes without CAP_BPF or without CAP_PERFMON (uprobe_multi links,
//! per-command checks), and fails without either of the other two (tried): all four are kept,
//! since libbpf picks the attach mechanism by kernel.
//!
//! Without uid 0 and without CAP_DAC_OVERRIDE or CAP_FOWNER, the agent can read the host's files
//! but no longer write root-owned ones (through /proc/1/root or otherwise).
//!
//! Credentials belong to a thread: the change is made while the process has one thread (checked),
//! so that every thread started later inherits it. Every call is checked, and the result is read
//! back; `run` keeps its privileges (its command would inherit the reduced set).
use std::fmt;

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_LEASE: u32 = 28;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What the agent keeps.
pub const AGENT: &[u32] = &[
    CAP_DAC_READ_SEARCH,
    CAP_SYS_PTRACE,
    CAP_LEASE,
    CAP_PERFMON,
    CAP_BPF,
];

/// The identity the agent takes after attaching, unless `--run-as` says otherwise.
pub const NOBODY: Identity = Identity {
    uid: 65534,
    gid: 65534,
};

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// A uid and gid to run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

impl Identity {
    /// `UID` or `UID:GID` (numbers: names would need the host's user database, which a
    /// container does not have). The gid defaults to the uid. Neither may be 0.
    pub fn parse(s: &str) -> Result<Identity, String> {
        let number = |what: &str, v: &str| -> Result<u32, String> {
            match v.trim().parse::<u32>() {
                Ok(0) => Err(format!(
                    "--run-as {s}: {what} 0 is root; the point is to stop being root \
                     (--allow-privileged-after-attach keeps the privileges instead)"
                )),
                // (uid_t)-1 means "unchanged" to setresuid.
                Ok(u32::MAX) | Err(_) => Err(format!(
                    "--run-as {s}: expected UID or UID:GID, numbers between 1 and 4294967294"
                )),
                Ok(n) => Ok(n),
            }
        };
        match s.split_once(':') {
            Some((u, g)) => Ok(Identity {
                uid: number("uid", u)?,
                gid: number("gid", g)?,
            }),
            None => {
                let uid = number("uid", s)?;
                Ok(Identity { uid, gid: uid })
            }
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {} gid {}", self.uid, self.gid)
    }
}

/// Why the privileges could not be reduced.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error(
        "{threads} threads are running: credentials are per thread, so they must be changed \
         before any other thread starts (a bug in pyusdt)"
    )]
    Threaded { threads: usize },
    #[error(
        "{call} failed: {source}. The agent needs CAP_SETUID, CAP_SETGID and CAP_SETPCAP to \
         become {target} after attaching (it drops them at once): grant them (the DaemonSet \
         adds them), or pass --allow-privileged-after-attach to run on with the privileges \
         it was given"
    )]
    Call {
        call: String,
        target: Identity,
        source: std::io::Error,
    },
    #[error("{call} failed: {source}")]
    Read {
        call: &'static str,
        source: std::io::Error,
    },
    #[error("after the change, {0}")]
    Verify(String),
}

/// `agent`'s choice: whom to become after attaching, and whether a failure may be survived.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub run_as: Identity,
    /// `--run-as` was given: change even when already unprivileged.
    pub explicit: bool,
    /// `--allow-privileged-after-attach`.
    pub allow_privileged: bool,
}

/// Applies `policy` (see `drop_after_attach`) and logs the outcome. A failure stops the agent
/// unless the policy allows running on, then with a warning.
pub fn apply(policy: Policy) -> Result<(), DropError> {
    match drop_after_attach(AGENT, policy.run_as, policy.explicit) {
        Ok(d) => {
            let who = d.identity.map_or_else(
                || "kept its non-root user".to_string(),
                |i| format!("now runs as {i}"),
            );
            tracing::info!(
                "privileges reduced: {who}, dropped {} capabilities, kept BPF, PERFMON, \
                 SYS_PTRACE, DAC_READ_SEARCH; no_new_privs set",
                d.dropped
            );
            if !d.missing.is_empty() {
                let names: Vec<String> = d.missing.iter().map(|&c| name(c)).collect();
                tracing::warn!(
                    "{} not granted: files and processes that need it are not traced",
                    names.join(", ")
                );
            }
            Ok(())
        }
        Err(e) if policy.allow_privileged => {
            tracing::warn!(
                "RUNNING PRIVILEGED: the privileges could not be reduced after attaching and \
                 --allow-privileged-after-attach was given: {e}"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// What the change did, for the log.
#[derive(Debug)]
pub struct Dropped {
    /// The identity now held; None when it was kept (already unprivileged).
    pub identity: Option<Identity>,
    /// Capabilities removed from the effective set.
    pub dropped: usize,
    /// Capabilities of `keep` that the process did not have to begin with.
    pub missing: Vec<u32>,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The name of a capability, for messages.
pub fn name(cap: u32) -> String {
    match cap {
        CAP_DAC_READ_SEARCH => "CAP_DAC_READ_SEARCH".into(),
        CAP_SYS_PTRACE => "CAP_SYS_PTRACE".into(),
        CAP_LEASE => "CAP_LEASE".into(),
        CAP_PERFMON => "CAP_PERFMON".into(),
        CAP_BPF => "CAP_BPF".into(),
        other => format!("capability {other}"),
    }
}

fn capget() -> Result<[CapData; 2], DropError> {
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
        return Err(DropError::Read {
            call: "capget",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(data)
}

fn mask_of(caps: &[u32]) -> [u32; 2] {
    let mut m = [0u32; 2];
    for &cap in caps {
        m[(cap / 32) as usize] |= 1 << (cap % 32);
    }
    m
}

fn threads() -> Result<usize, DropError> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|source| DropError::Read {
            call: "reading /proc/self/status",
            source,
        })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| DropError::Verify("/proc/self/status has no Threads: line".into()))
}

fn resuid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid writes three uid_t through valid pointers and cannot fail with them.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

fn resgid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresgid writes three gid_t through valid pointers and cannot fail with them.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

/// The supplementary groups.
fn groups() -> Result<Vec<libc::gid_t>, DropError> {
    let read = || DropError::Read {
        call: "getgroups",
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: with size 0, getgroups only returns the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(read());
    }
    let mut g = vec![0; n as usize];
    // SAFETY: `g` holds `n` gid_t.
    let n = unsafe { libc::getgroups(n, g.as_mut_ptr()) };
    if n < 0 {
        return Err(read());
    }
    g.truncate(n as usize);
    Ok(g)
}

/// Becomes `target` (unless the process is unprivileged already and `explicit` is false)
/// keeping only `keep` of the capabilities it has; sets no_new_privs. Must run while the
/// process has a single thread.
pub fn drop_after_attach(
    keep: &[u32],
    target: Identity,
    explicit: bool,
) -> Result<Dropped, DropError> {
    let n = threads()?;
    if n != 1 {
        return Err(DropError::Threaded { threads: n });
    }
    let call = |call: &str| DropError::Call {
        call: call.to_string(),
        target,
        source: std::io::Error::last_os_error(),
    };
    let before = capget()?;
    let wanted = mask_of(keep);
    let missing: Vec<u32> = keep
        .iter()
        .copied()
        .filter(|&c| before[(c / 32) as usize].permitted & (1 << (c % 32)) == 0)
        .collect();

    let (ruid, euid, suid) = resuid();
    let (rgid, egid, sgid) = resgid();
    let unprivileged = [ruid, euid, suid, rgid, egid, sgid]
        .iter()
        .all(|&id| id != 0);
    let change = explicit || !unprivileged;

    // The bounding set first, while CAP_SETPCAP is held: nothing dropped can come back through
    // an exec. Capabilities the kernel does not know end the walk (EINVAL). A process that is
    // not root and stays so (file capabilities, `setcap`) usually lacks CAP_SETPCAP: with
    // no_new_privs, a non-root exec gains nothing whatever the bounding set holds, so it is
    // left as it is then.
    const CAP_SETPCAP: u32 = 8;
    let setpcap = before[0].effective & (1 << CAP_SETPCAP) != 0;
    if change || setpcap {
        for cap in 0..64u32 {
            if wanted[(cap / 32) as usize] & (1 << (cap % 32)) != 0 {
                continue;
            }
            // SAFETY: prctl with integer arguments only.
            let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
            if held < 0 {
                break;
            }
            if held == 1 {
                // SAFETY: prctl with integer arguments only.
                let r =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
                if r != 0 {
                    return Err(call(&format!(
                        "dropping capability {cap} from the bounding set (PR_CAPBSET_DROP)"
                    )));
                }
            }
        }
    }

    if change {
        // The permitted set survives the uid change only with keep-caps (the effective set is
        // cleared all the same, and raised again below).
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
            return Err(call("prctl(PR_SET_KEEPCAPS)"));
        }
        // Groups before the uid: setgroups and setresgid need CAP_SETGID, which a non-root
        // uid has lost. Root's supplementary groups (disk, adm, …) go too.
        // SAFETY: an empty list; glibc applies it to every thread (there is one).
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            return Err(call("setgroups([])"));
        }
        // SAFETY: integer arguments; glibc applies it to every thread.
        if unsafe { libc::setresgid(target.gid, target.gid, target.gid) } != 0 {
            return Err(call(&format!("setresgid({0}, {0}, {0})", target.gid)));
        }
        // SAFETY: integer arguments; glibc applies it to every thread.
        if unsafe { libc::setresuid(target.uid, target.uid, target.uid) } != 0 {
            return Err(call(&format!("setresuid({0}, {0}, {0})", target.uid)));
        }
        // SAFETY: prctl with integer arguments only. Keep-caps has done its work; an exec
        // would clear it anyway.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) } != 0 {
            return Err(call("prctl(PR_SET_KEEPCAPS, 0)"));
        }
    }

    let mut data = before;
    for (d, w) in data.iter_mut().zip(wanted) {
        d.permitted &= w;
        d.effective = d.permitted;
        d.inheritable = 0;
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads the header and two CapData words.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(call("capset"));
    }
    // No ambient capabilities either (an exec would otherwise keep them).
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(call("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"));
    }
    // SAFETY: prctl with integer arguments only. No privilege can be gained by an exec now.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(call("prctl(PR_SET_NO_NEW_PRIVS)"));
    }

    // Read back what the kernel holds now.
    let after = capget()?;
    if after != data {
        return Err(DropError::Verify(format!(
            "the capability sets are {after:x?}, not {data:x?}"
        )));
    }
    if change {
        let want = (target.uid, target.uid, target.uid);
        if resuid() != want {
            return Err(DropError::Verify(format!(
                "the uids are {:?}, not {want:?}",
                resuid()
            )));
        }
        let want = (target.gid, target.gid, target.gid);
        if resgid() != want {
            return Err(DropError::Verify(format!(
                "the gids are {:?}, not {want:?}",
                resgid()
            )));
        }
        let g = groups()?;
        if !g.is_empty() {
            return Err(DropError::Verify(format!(
                "supplementary groups {g:?} are left"
            )));
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } != 1 {
        return Err(DropError::Verify("no_new_privs is not set".into()));
    }
    let count = |d: &[CapData; 2]| d[0].effective.count_ones() + d[1].effective.count_ones();
    Ok(Dropped {
        identity: change.then_some(target),
        dropped: count(&before).saturating_sub(count(&after)) as usize,
        missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_takes_uid_or_uid_and_gid_never_root() {
        assert_eq!(
            Identity::parse("1000").unwrap(),
            Identity {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(
            Identity::parse("65534:65533").unwrap(),
            Identity {
                uid: 65534,
                gid: 65533
            }
        );
        assert!(Identity::parse("0").unwrap_err().contains("root"));
        assert!(Identity::parse("1000:0").unwrap_err().contains("gid 0"));
        assert!(Identity::parse("nobody").is_err());
        assert!(Identity::parse("4294967295").is_err());
        assert!(Identity::parse("1:2:3").is_err());
    }
}
