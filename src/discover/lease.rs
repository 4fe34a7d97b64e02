//! A read lease on an examined file while libbpf attaches to it.
//!
//! libbpf maps the file to read its notes (libelf, `ELF_C_READ_MMAP` in libbpf's elf.c): a
//! truncation meanwhile would kill pyusdt with SIGBUS. Under a read lease (`F_SETLEASE
//! F_RDLCK`), whoever opens the file for writing or truncates it waits until the lease is
//! released (or the kernel's lease-break-time passes, 45 s by default); a file someone already
//! has open for writing gets no lease (`open_for_writing`). Taking a lease needs to own the
//! file or CAP_LEASE (`no_lease` otherwise), and a file system that supports leases.
use std::os::fd::{AsRawFd, BorrowedFd};

use super::refusals::Reason;

/// Held while libbpf reads the file; released when dropped.
pub struct Lease<'a> {
    fd: BorrowedFd<'a>,
}

impl<'a> Lease<'a> {
    /// Whether someone pyusdt does not trust could truncate the file: anything not owned by
    /// root, and anything reached through /proc (a process's root, exe or mapping: a
    /// container's root can write its own image's files, root-owned or not). A host file
    /// (same inode at the same path on the host) owned by root and not
    /// writable by group or others (those are refused before) can only be truncated by the
    /// host's root, who needs no such trick: no lease, and so no CAP_LEASE, for it (the
    /// `setcap` advice for `run` then holds with three capabilities).
    pub fn needed(file: &super::safe_open::OpenedFile, path: &std::path::Path) -> bool {
        file.uid != 0 || path.starts_with("/proc")
    }

    /// A read lease on `fd` (opened read-only), or why not.
    pub fn take(fd: BorrowedFd<'a>) -> Result<Lease<'a>, Reason> {
        ignore_lease_breaks();
        // SAFETY: fcntl on an open descriptor, integer arguments only.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
        if r == 0 {
            return Ok(Lease { fd });
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => Err(Reason::OpenForWriting),
            _ => Err(Reason::NoLease),
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // SAFETY: fcntl on an open descriptor, integer arguments only.
        unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    }
}

/// A lease break is signalled with SIGIO, whose default action ends the process: a handler
/// that does nothing is installed once (a handler, unlike SIG_IGN, is not inherited by the
/// command `run` starts).
fn ignore_lease_breaks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Err(e) = signal_hook::flag::register(libc::SIGIO, flag) {
            tracing::warn!("cannot handle SIGIO (lease breaks): {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::safe_open::open_path;
    use std::time::Duration;

    #[test]
    fn only_files_others_could_truncate_need_a_lease() {
        let sh = std::path::Path::new("/bin/sh");
        let opened = open_path(sh, true).unwrap();
        assert_eq!(opened.uid, 0, "/bin/sh is root's");
        assert!(!Lease::needed(&opened, sh), "a root-owned host file");
        let via_root = std::path::Path::new("/proc/1/root/bin/sh");
        assert!(Lease::needed(&opened, via_root), "reached through /proc");
        let mut theirs = open_path(sh, true).unwrap();
        theirs.uid = 1000;
        assert!(Lease::needed(&theirs, sh), "owned by a user");
    }

    #[test]
    fn a_file_open_for_writing_gets_no_lease() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        let opened = open_path(&f, true).unwrap();
        let writer = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        assert!(matches!(
            Lease::take(opened.fd()),
            Err(Reason::OpenForWriting)
        ));
        drop(writer);
        assert!(Lease::take(opened.fd()).is_ok());
    }

    /// A truncation waits for the lease's release: the file keeps its size while it is held
    /// (and the lease break does not kill the test process). The file is the test's own: its
    /// owner may lease it without CAP_LEASE.
    #[test]
    fn a_truncation_waits_for_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, vec![7u8; 8192]).unwrap();
        let opened = open_path(&f, true).unwrap();
        let lease = Lease::take(opened.fd()).unwrap();
        let path = f.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let truncator = std::thread::spawn(move || {
            tx.send(()).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(0)
                .unwrap();
        });
        rx.recv().unwrap();
        // The truncating thread is blocked in open() for writing while the lease is held.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 8192);
        drop(lease);
        truncator.join().unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 0);
    }
}
