//! An ELF file read without mapping it: a buffer the size of the file, zeroed and filled only
//! where the parsers look (headers, notes, the dynamic section, `.rodata`, and the symbol
//! tables of a CPython without markers), read with
//! `pread`. A file truncated meanwhile gives an error, not a SIGBUS; the bytes read are
//! bounded whatever the headers claim; the pages never filled are never touched, so they cost
//! address space, not memory.
use object::elf;
use object::read::elf::{FileHeader, SectionHeader};
use object::{Endianness, FileKind};

use super::refusals::Reason;
use super::safe_open::{OpenError, OpenedFile};

/// Bytes read from one file at most (Debian's python3.11 needs about 2.6 MB: its `.rodata`).
pub const MAX_READ_BYTES: u64 = 64 << 20;
/// The first bytes, read from every file: ELF header, and the `#!` line of a script.
const HEAD_BYTES: u64 = 4096;
/// `.rodata` beyond this is not read (the version then comes from the file name alone).
const MAX_RODATA_BYTES: u64 = 32 << 20;
/// A symbol table (or its strings) beyond this is not read (libpython's `.dynsym` is about
/// 40 KB, a debug build's `.symtab` a few MB).
const MAX_SYMBOLS_BYTES: u64 = 16 << 20;

/// What to read beyond the headers, notes and dynamic section.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parts {
    /// `.rodata`: the CPython version is read there (only worth it for files that look like
    /// CPython).
    pub rodata: bool,
    /// `.symtab`, `.dynsym` and their strings: the hook points of a CPython without markers
    /// (src/discover/hooks.rs).
    pub symbols: bool,
}

struct Filler<'a> {
    file: &'a OpenedFile,
    buf: Vec<u8>,
    budget: u64,
}

impl Filler<'_> {
    /// Reads `[offset, offset + size)` (clipped to the file) into the buffer.
    fn fill(&mut self, offset: u64, size: u64) -> Result<(), OpenError> {
        let len = self.buf.len() as u64;
        let start = offset.min(len);
        let end = offset.saturating_add(size).min(len);
        let n = end - start;
        if n == 0 {
            return Ok(());
        }
        if n > self.budget {
            return Err(OpenError::Refused(Reason::TooLarge));
        }
        self.budget -= n;
        self.file
            .read_exact_at(&mut self.buf[start as usize..end as usize], start)
    }
}

/// The file's bytes where the parsers of this module's callers look, zeros elsewhere, and
/// the `parts` asked for.
pub fn read(file: &OpenedFile, parts: Parts) -> Result<Vec<u8>, OpenError> {
    let mut f = Filler {
        file,
        // Zeroed allocation: calloc maps fresh zero pages, none touched until filled.
        buf: vec![0u8; file.size as usize],
        budget: MAX_READ_BYTES,
    };
    f.fill(0, HEAD_BYTES)?;
    match FileKind::parse(&*f.buf) {
        Ok(FileKind::Elf32) => fill_elf::<elf::FileHeader32<Endianness>>(&mut f, parts)?,
        Ok(FileKind::Elf64) => fill_elf::<elf::FileHeader64<Endianness>>(&mut f, parts)?,
        // Not ELF: the caller says so, from the first bytes.
        _ => {}
    }
    Ok(f.buf)
}

/// Fills the program and section headers, the section names, every note section, the
/// dynamic section and its strings, and the `parts` asked for. Malformed headers stop the
/// filling: the parser then reports them.
fn fill_elf<Elf: FileHeader<Endian = Endianness>>(
    f: &mut Filler<'_>,
    parts: Parts,
) -> Result<(), OpenError> {
    let header: Elf = match Elf::parse(&*f.buf) {
        Ok(h) => *h,
        Err(_) => return Ok(()),
    };
    let Ok(endian) = header.endian() else {
        return Ok(());
    };
    let phoff: u64 = header.e_phoff(endian).into();
    let phsize = u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian));
    let shoff: u64 = header.e_shoff(endian).into();
    let shentsize = u64::from(header.e_shentsize(endian));
    // Section 0 first: with more than 0xff00 sections, it holds their count.
    f.fill(shoff, shentsize)?;
    let shnum = header.shnum(endian, &*f.buf).unwrap_or(0) as u64;
    f.fill(phoff, phsize)?;
    f.fill(shoff, shnum.saturating_mul(shentsize))?;
    // Section names: the string table the header points at.
    let strndx = header.shstrndx(endian, &*f.buf).unwrap_or(0) as usize;
    let names = section_range::<Elf>(&header, endian, &f.buf, strndx);
    if let Some((off, size)) = names {
        f.fill(off, size)?;
    }
    let Ok(sections) = header.sections(endian, &*f.buf) else {
        return Ok(());
    };
    let mut wanted = Vec::new();
    for s in sections.iter() {
        let (off, size): (u64, u64) = (s.sh_offset(endian).into(), s.sh_size(endian).into());
        match s.sh_type(endian) {
            elf::SHT_NOBITS => {}
            elf::SHT_NOTE => wanted.push((off, size)),
            elf::SHT_DYNAMIC => {
                wanted.push((off, size));
                let link = s.sh_link(endian) as usize;
                wanted.extend(section_range::<Elf>(&header, endian, &f.buf, link));
            }
            elf::SHT_SYMTAB | elf::SHT_DYNSYM if parts.symbols && size <= MAX_SYMBOLS_BYTES => {
                wanted.push((off, size));
                let link = s.sh_link(endian) as usize;
                wanted.extend(
                    section_range::<Elf>(&header, endian, &f.buf, link)
                        .filter(|&(_, size)| size <= MAX_SYMBOLS_BYTES),
                );
            }
            _ if parts.rodata
                && sections.section_name(endian, s).ok() == Some(&b".rodata"[..])
                && size <= MAX_RODATA_BYTES =>
            {
                wanted.push((off, size))
            }
            _ => {}
        }
    }
    for (off, size) in wanted {
        f.fill(off, size)?;
    }
    Ok(())
}

/// File range of section `index` (none for a section without file bytes).
fn section_range<Elf: FileHeader<Endian = Endianness>>(
    header: &Elf,
    endian: Endianness,
    data: &[u8],
    index: usize,
) -> Option<(u64, u64)> {
    let sections = header.sections(endian, data).ok()?;
    let s = sections.section(object::SectionIndex(index)).ok()?;
    if s.sh_type(endian) == elf::SHT_NOBITS {
        return None;
    }
    Some((s.sh_offset(endian).into(), s.sh_size(endian).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::safe_open::open_path;
    use std::path::Path;

    /// The sparse image parses the same as the whole file.
    #[test]
    fn same_notes_as_the_whole_file() {
        let path = Path::new("/usr/bin/python3.11");
        let Ok(opened) = open_path(path, true) else {
            eprintln!("skipped: no /usr/bin/python3.11");
            return;
        };
        let parts = Parts {
            rodata: true,
            symbols: false,
        };
        let sparse = read(&opened, parts).unwrap();
        let whole = std::fs::read(path).unwrap();
        let a = crate::discover::stapsdt::read(&sparse).unwrap();
        let b = crate::discover::stapsdt::read(&whole).unwrap();
        assert_eq!(a.markers, b.markers);
        assert_eq!(a.needed, b.needed);
        assert_eq!(a.rodata, b.rodata);
        assert!(!a.markers.is_empty());
    }
}
