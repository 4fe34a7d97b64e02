//! Audit event names that are string literals of an interpreter file: the BPF side sends such
//! a name as its address in the file (`Record::AuditRef`), not as a copy per event, and the
//! name is read here from the file once.
//!
//! Events raised from C (`PySys_Audit("builtins.id", …)`, most of them) are named by a literal
//! in the file's `.rodata`, which the process maps exactly as the file holds it. The BPF side
//! tells such a name by its address (bpf: `literal_name`): the marker's address in the process
//! (the trap's) minus its address in the file is the file's load bias. That takes one marker
//! site per file, which every build seen has. Names given to `sys.audit()` from Python live in
//! Python strings and are still copied per event.
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::bpf;
use crate::discover::stapsdt::Segment;
use crate::discover::Binary;
use crate::model::FastHash;

/// `AUDIT_IMAGES` of bpf/pyusdt.h: interpreter files whose names can be sent by address.
/// Files beyond it (an agent that has seen a thousand interpreter builds) have their names
/// copied per event, as `sys.audit()` names are.
const MAX_IMAGES: usize = 1024;
/// `AUDIT_NAME_LEN - 1` of bpf/pyusdt.h: a literal is cut where a copied name would be, so
/// that one name is one metric series whichever way it came.
const NAME_MAX: usize = 63;
/// Names kept; beyond, all are dropped and read again as they come (a file holds a few
/// hundred audit event names).
const MAX_NAMES: usize = 65_536;
/// Files whose descriptor is held for reading names at most (as `MAX_ATTACHED_FILES` of
/// src/attach/mod.rs): one each, shared with the file's `Binary`, given back when the file is
/// released (`forget`).
const MAX_OPEN_IMAGES: usize = 256;

#[derive(Default)]
pub struct AuditNames {
    /// Interpreter files by (device, inode): their index + 1, None when their names cannot
    /// be sent by address.
    by_file: HashMap<(u64, u64), Option<u32>>,
    images: Vec<Image>,
    names: HashMap<(u32, u64), Arc<str>, FastHash>,
    /// Names that could not be read from their file (reported empty, as a failed copy is,
    /// and logged once).
    unreadable: u64,
}

struct Image {
    /// The descriptor of the file examined and attached (shared with its `Binary`, not opened
    /// again): names are read from that file, even once a package upgrade has replaced it on
    /// disk. None once the file is released.
    file: Option<Arc<OwnedFd>>,
    /// The audit marker's address in the file.
    site: u64,
    rodata: Segment,
}

impl AuditNames {
    /// The `audit_images` entry of bpf/pyusdt.h for `binary`, and its index + 1 (for the
    /// attachment's cookie); None when the file's names cannot be sent by address: more or
    /// fewer than one audit marker, no read-only `.rodata`, the file not readable here, or
    /// `MAX_IMAGES` files already.
    pub fn register(&mut self, binary: &Binary) -> Option<(u32, bpf::audit_image)> {
        let index = match self.by_file.get(&binary.id) {
            Some(known) => (*known)?,
            None => {
                let added = self.add(binary);
                self.by_file.insert(binary.id, added);
                added?
            }
        };
        let image = &self.images[index as usize - 1];
        Some((
            index,
            bpf::audit_image {
                site: image.site,
                ro_start: image.rodata.vaddr,
                ro_end: image.rodata.vaddr + image.rodata.size,
            },
        ))
    }

    fn add(&mut self, binary: &Binary) -> Option<u32> {
        let open = self.images.iter().filter(|im| im.file.is_some()).count();
        if self.images.len() >= MAX_IMAGES || open >= MAX_OPEN_IMAGES {
            return None;
        }
        let mut sites = binary.python_markers().filter(|m| m.name == "audit");
        let site = sites.next()?.address;
        if sites.next().is_some() {
            return None;
        }
        let rodata = binary.notes.rodata?;
        self.images.push(Image {
            file: Some(binary.shared_fd()),
            site,
            rodata,
        });
        Some(self.images.len() as u32)
    }

    /// The index + 1 of a registered file whose names come by address.
    pub fn index_of(&self, id: (u64, u64)) -> Option<u32> {
        self.by_file.get(&id).copied().flatten()
    }

    /// Gives back the descriptor of a file no longer attached (`Tracer::detach_file`): its
    /// names, if any still come, are reported empty. Its index is not reused (events in
    /// flight may carry it).
    pub fn forget(&mut self, id: (u64, u64)) {
        if let Some(Some(index)) = self.by_file.remove(&id) {
            if let Some(im) = self.images.get_mut(index as usize - 1) {
                im.file = None;
            }
        }
    }

    /// The name at `vaddr` in the file registered as `image` (index + 1), read at its first
    /// use; empty (and counted in `unreadable`) when it cannot be read.
    pub fn name(&mut self, image: u32, vaddr: u64) -> Arc<str> {
        if let Some(name) = self.names.get(&(image, vaddr)) {
            return Arc::clone(name);
        }
        let name = self.read(image, vaddr).unwrap_or_else(|| {
            self.unreadable += 1;
            if self.unreadable == 1 {
                tracing::warn!(
                    "an audit event's name could not be read from its interpreter file \
                     (reported empty; further ones not logged)"
                );
            }
            Arc::from("")
        });
        if self.names.len() >= MAX_NAMES {
            self.names.clear();
        }
        self.names.insert((image, vaddr), Arc::clone(&name));
        name
    }

    fn read(&self, image: u32, vaddr: u64) -> Option<Arc<str>> {
        let im = self.images.get((image as usize).checked_sub(1)?)?;
        let within = vaddr
            .checked_sub(im.rodata.vaddr)
            .filter(|&o| o < im.rodata.size)?;
        let len = (im.rodata.size - within).min(NAME_MAX as u64) as usize;
        let mut buf = [0u8; NAME_MAX];
        // pread: a file truncated since gives an error (an empty name), never a SIGBUS.
        crate::discover::safe_open::read_exact_at(
            im.file.as_ref()?.as_fd(),
            &mut buf[..len],
            im.rodata.offset + within,
        )
        .ok()?;
        let end = buf[..len].iter().position(|&b| b == 0).unwrap_or(len);
        Some(Arc::from(String::from_utf8_lossy(&buf[..end]).as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interpreter with the markers, when this machine has one (Debian's python3.11).
    fn system_python() -> Option<Binary> {
        Binary::open(std::path::Path::new("/usr/bin/python3.11")).ok()
    }

    #[test]
    fn names_are_read_from_the_files_rodata() {
        let Some(binary) = system_python() else {
            // scripts/setup.sh installs it: CI has it.
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "no /usr/bin/python3.11"
            );
            eprintln!("skipped: /usr/bin/python3.11 is not here (scripts/setup.sh installs it)");
            return;
        };
        let mut names = AuditNames::default();
        let (index, entry) = names
            .register(&binary)
            .expect("one audit marker, a .rodata");
        assert_eq!(index, 1);
        assert!(entry.ro_start < entry.ro_end);
        // Registering the same file again gives the same entry.
        assert_eq!(names.register(&binary).map(|(i, _)| i), Some(1));
        // Where the literal "builtins.id" is in the file: its virtual address.
        let data = std::fs::read(&binary.path).unwrap();
        let rodata = binary.notes.rodata.unwrap();
        let seg = &data[rodata.offset as usize..(rodata.offset + rodata.size) as usize];
        let at = seg
            .windows(12)
            .position(|w| w == b"builtins.id\0")
            .expect("the literal is in .rodata");
        let vaddr = rodata.vaddr + at as u64;
        assert_eq!(&*names.name(1, vaddr), "builtins.id");
        assert_eq!(names.unreadable, 0);
        // Outside the segment, or an image never registered: empty, counted.
        assert_eq!(&*names.name(1, rodata.vaddr + rodata.size), "");
        assert_eq!(&*names.name(7, vaddr), "");
        assert_eq!(names.unreadable, 2);
    }
}
