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
