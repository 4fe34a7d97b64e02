//! Opening a file that a traced process names, without letting it block us, steer us to
//! another file, or swap the file after it was checked.
//!
//! Every open goes in two steps: an `O_PATH` descriptor first (no open of a device or FIFO
//! happens, nothing blocks), `fstat` on it, and only a regular file is reopened for reading
//! through `/proc/self/fd/N` (the same inode, whatever the path now leads to). Paths inside a
//! process's root are resolved by `openat2(RESOLVE_IN_ROOT)` relative to `/proc/PID/root`, so
//! that the container's absolute symbolic links and `..` stay inside it. The descriptor is kept
//! (`Binary`): what was examined is what is attached and what audit names are read from.
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::refusals::Reason;

/// Files larger than this are not read (no interpreter or libpython comes near: Debian's
/// libpython3.11 is 7.5 MB, debug builds with symbols some tens of MB).
pub const MAX_FILE_BYTES: u64 = 512 << 20;

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;
/// `statfs.f_type` of overlayfs: its files show the underlying layer's inode in
/// /proc/PID/maps and the overlay's device in `stat`.
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// `struct open_how` of linux/openat2.h (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Why a file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The system said no (missing, permission, the process exited …).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The file is not one pyusdt reads (counted as `reason`).
    #[error("refused: {}", .0.label())]
    Refused(Reason),
}

/// A regular file opened for reading, with what `fstat` said of it.
#[derive(Debug, Clone)]
pub struct OpenedFile {
    fd: Arc<OwnedFd>,
    /// (device, inode).
    pub id: (u64, u64),
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl OpenedFile {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The shared descriptor (kept by whoever reads the file later).
    pub fn shared(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.fd)
    }

    /// Reads exactly `buf.len()` bytes at `offset`; a short read (the file shrank) is
    /// `ChangedWhileRead`. No mapping: a truncation is an error here, never a SIGBUS.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), OpenError> {
        read_exact_at(self.fd(), buf, offset)
    }

    /// Whether the file lives on overlayfs.
    fn on_overlayfs(&self) -> bool {
        let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
        // SAFETY: the descriptor is open; fstatfs writes one statfs into `st`.
        let r = unsafe { libc::fstatfs(self.fd.as_raw_fd(), st.as_mut_ptr()) };
        if r != 0 {
            return false;
        }
        // SAFETY: fstatfs returned 0, so it filled `st`.
        let f_type = unsafe { st.assume_init() }.f_type;
        // Its width differs between architectures.
        #[allow(clippy::useless_conversion)]
        let f_type = i64::from(f_type);
        f_type == OVERLAYFS_SUPER_MAGIC
    }

    /// Whether this is the file a mapping names by (device, inode) in /proc/PID/maps. On
    /// overlayfs the maps show the underlying layer's device: the inode alone is compared.
    pub fn is_mapped_file(&self, mapped: (u64, u64)) -> bool {
        self.id == mapped || (self.id.1 == mapped.1 && self.on_overlayfs())
    }
}

/// Reads exactly `buf.len()` bytes of `fd` at `offset` (`pread`, retried on EINTR).
pub fn read_exact_at(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<(), OpenError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a writable buffer of `rest.len()` bytes; the descriptor is open.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                rest.as_mut_ptr().cast(),
                rest.len(),
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            0 => return Err(OpenError::Refused(Reason::ChangedWhileRead)),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            n => done += n as usize,
        }
    }
    Ok(())
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: the descriptor is open; fstat writes one stat into `st`.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// Takes ownership of a descriptor a syscall returned (or its error).
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `O_PATH` descriptor of `path` (no open of the file itself: a FIFO or device is not touched).
fn o_path(dir: Option<BorrowedFd<'_>>, path: &Path, follow: bool) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    let flags = libc::O_PATH | libc::O_CLOEXEC | nofollow;
    // SAFETY: `c` is a NUL-terminated path; the returned descriptor is owned below.
    let fd = unsafe {
        libc::openat(
            dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd()),
            c.as_ptr(),
            flags,
        )
    };
    owned(fd.into())
}

/// `O_PATH` descriptor of `inner` resolved inside the root directory `root`, as the process
/// whose root it is would resolve it (symbolic links and `..` cannot leave it).
fn o_path_in_root(root: BorrowedFd<'_>, inner: &Path, follow: bool) -> io::Result<OwnedFd> {
    let rel = inner.strip_prefix("/").unwrap_or(inner);
    let c = c_path(if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    })?;
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC | nofollow) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `c` is NUL-terminated, `how` is an open_how of the size passed; the returned
    // descriptor is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    owned(fd)
}

/// From an `O_PATH` descriptor: checks the file and opens it for reading, the same inode.
fn reopen_regular(path_fd: OwnedFd) -> Result<OpenedFile, OpenError> {
    let st = fstat(path_fd.as_fd())?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {}
        libc::S_IFLNK => return Err(OpenError::Refused(Reason::Symlink)),
        _ => return Err(OpenError::Refused(Reason::NotRegular)),
    }
    if st.st_size as u64 > MAX_FILE_BYTES {
        return Err(OpenError::Refused(Reason::TooLarge));
    }
    if writable_by_others(st.st_mode, st.st_gid) {
        return Err(OpenError::Refused(Reason::WritableByOthers));
    }
    let c = c_path(&PathBuf::from(format!(
        "/proc/self/fd/{}",
        path_fd.as_raw_fd()
    )))?;
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: `c` is NUL-terminated; the returned descriptor is owned below.
    let fd = owned(unsafe { libc::open(c.as_ptr(), flags) }.into())?;
    let again = fstat(fd.as_fd())?;
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
        // Cannot happen (the magic link is the same file); checked rather than assumed.
        return Err(OpenError::Refused(Reason::NotTheMappedFile));
    }
    Ok(OpenedFile {
        fd: Arc::new(fd),
        id: (st.st_dev, st.st_ino),
        size: st.st_size as u64,
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
    })
}

/// The policy for files others can change: world-writable files, and group-writable ones
/// whose group is not root's, are refused (any member could rewrite what is attached in the
/// processes of the file's users). The owner's own writes are the owner's business: the
/// uprobes of a file concern only the processes mapping that file.
pub fn writable_by_others(mode: u32, gid: u32) -> bool {
    mode & libc::S_IWOTH != 0 || (mode & libc::S_IWGRP != 0 && gid != 0)
}

/// Opens a file of the host (a path the operator gave, or one of the usual install
/// locations). A `/proc/PID/root/…` path is resolved inside that process's root instead
/// (`open_in_root`). `follow`: whether a symbolic link at the end is followed.
pub fn open_path(path: &Path, follow: bool) -> Result<OpenedFile, OpenError> {
    if let Some((pid, inner)) = split_proc_root(path) {
        return open_in_root(pid, &inner, follow);
    }
    reopen_regular(o_path(None, path, follow)?)
}

/// Opens `inner`, a path in the mount namespace and root of process `pid`, resolved inside
/// that root (`RESOLVE_IN_ROOT`, no magic links).
pub fn open_in_root(pid: i32, inner: &Path, follow: bool) -> Result<OpenedFile, OpenError> {
    let root = o_path(None, Path::new(&format!("/proc/{pid}/root")), true)?;
    reopen_regular(o_path_in_root(root.as_fd(), inner, follow)?)
}

/// Opens what a magic link of /proc names: `/proc/PID/exe` (the file the process runs, even
/// deleted or renamed since) or `/proc/PID/map_files/START-END` (the file of a mapping).
pub fn open_proc_link(link: &Path) -> Result<OpenedFile, OpenError> {
    reopen_regular(o_path(None, link, true)?)
}

/// `(PID, inner path)` of a `/proc/PID/root/inner` path.
pub fn split_proc_root(path: &Path) -> Option<(i32, PathBuf)> {
    let rest = path.to_str()?.strip_prefix("/proc/")?;
    let (pid, tail) = rest.split_once('/')?;
    let inner = tail.strip_prefix("root")?;
    if !(inner.is_empty() || inner.starts_with('/')) {
        return None;
    }
    let inner = if inner.is_empty() { "/" } else { inner };
    Some((pid.parse().ok()?, PathBuf::from(inner)))
}

/// (device, inode) of `inner` resolved inside the root of `pid` (`O_PATH`: nothing is
/// opened for reading, a FIFO does not block).
pub fn id_in_root(pid: i32, inner: &Path) -> Option<(u64, u64)> {
    let root = o_path(None, Path::new(&format!("/proc/{pid}/root")), true).ok()?;
    let fd = o_path_in_root(root.as_fd(), inner, true).ok()?;
    fstat(fd.as_fd()).ok().map(|st| (st.st_dev, st.st_ino))
}

/// Whether `path` leads to a regular file (resolved as `open_path` would), without reading it.
pub fn is_regular(path: &Path) -> bool {
    let fd = match split_proc_root(path) {
        Some((pid, inner)) => o_path(None, Path::new(&format!("/proc/{pid}/root")), true)
            .and_then(|root| o_path_in_root(root.as_fd(), &inner, true)),
        None => o_path(None, path, true),
    };
    fd.and_then(|fd| fstat(fd.as_fd()))
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("python3.11");
        let c = c_path(&fifo).unwrap();
        // SAFETY: `c` is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(matches!(
            open_path(&fifo, true),
            Err(OpenError::Refused(Reason::NotRegular))
        ));
        assert!(matches!(
            open_path(dir.path(), true),
            Err(OpenError::Refused(Reason::NotRegular))
        ));
    }

    #[test]
    fn symlinks_are_refused_where_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("file");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_path(&link, true).is_ok());
        assert!(matches!(
            open_path(&link, false),
            Err(OpenError::Refused(Reason::Symlink))
        ));
    }

    #[test]
    fn files_others_can_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            open_path(&f, true),
            Err(OpenError::Refused(Reason::WritableByOthers))
        ));
        assert!(writable_by_others(0o664, 1000));
        assert!(!writable_by_others(0o664, 0));
        assert!(!writable_by_others(0o755, 1000));
    }

    #[test]
    fn truncation_while_reading_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, vec![1u8; 8192]).unwrap();
        let opened = open_path(&f, true).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(100)
            .unwrap();
        let mut buf = vec![0u8; 4096];
        assert!(matches!(
            opened.read_exact_at(&mut buf, 0),
            Err(OpenError::Refused(Reason::ChangedWhileRead))
        ));
    }

    #[test]
    fn proc_root_paths_are_split() {
        assert_eq!(
            split_proc_root(Path::new("/proc/42/root/usr/bin/python3")),
            Some((42, PathBuf::from("/usr/bin/python3")))
        );
        assert_eq!(split_proc_root(Path::new("/proc/42/rootfs/x")), None);
        assert_eq!(split_proc_root(Path::new("/usr/bin/python3")), None);
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        // Our own root is "/": an absolute link resolves to the same file either way; what is
        // checked is that resolution through /proc/self/root works at all.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        let pid = std::process::id() as i32;
        let opened = open_in_root(pid, &f, false).unwrap();
        assert_eq!(opened.size, 1);
    }
}
