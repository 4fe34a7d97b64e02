//! Parser of SystemTap SDT notes (`.note.stapsdt`, note type 3, owner "stapsdt").
//!
//! Each note holds three addresses of the ELF word size — the marker's location, the link-time
//! address of `.stapsdt.base`, and the semaphore (0 when there is none) — followed by three
//! NUL-terminated strings: provider, name, argument spec. When a file was prelinked the note's
//! base differs from the section's actual address and locations shift by the difference
//! (<https://sourceware.org/systemtap/wiki/UserSpaceProbeImplementation>); libbpf, which does the
//! attaching, applies the same rule, so what `pyusdt list` prints is where the probes go.
use object::elf;
use object::read::elf::{FileHeader, NoteIterator, ProgramHeader, SectionHeader};
use object::{Endianness, FileKind};
use serde::Serialize;

const NT_STAPSDT: u32 = 3;
const STAPSDT_OWNER: &[u8] = b"stapsdt";

/// One USDT marker as the file declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Marker {
    pub provider: String,
    pub name: String,
    /// Virtual address of the marker (the note's location, adjusted for prelinking).
    pub address: u64,
    /// The location exactly as written in the note (what `readelf -n` prints).
    pub note_location: u64,
    /// The `.stapsdt.base` address written in the note.
    pub note_base: u64,
    /// Semaphore address (a 2-byte counter in `.probes`), `None` when the marker has none.
    pub semaphore: Option<u64>,
    /// Offset of the marker in the file: where the uprobe goes.
    pub file_offset: Option<u64>,
    /// Offset of the semaphore in the file: the uprobe's `ref_ctr_offset`.
    pub semaphore_offset: Option<u64>,
    /// Argument spec, e.g. `-4@112(%rsp) 8@%rax`.
    pub args: String,
}

/// What kind of ELF object a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectKind {
    /// ET_EXEC: loaded at its link-time address.
    Executable,
    /// ET_DYN with an interpreter: a position-independent executable.
    PieExecutable,
    /// ET_DYN without an interpreter: a shared library such as libpython3.X.so.1.0.
    SharedLibrary,
    /// Anything else (relocatable object, core file).
    Other,
}

/// The USDT notes of one ELF file.
#[derive(Debug, Clone, Serialize)]
pub struct SdtNotes {
    pub kind: ObjectKind,
    /// Actual address of `.stapsdt.base`, when the file has that section.
    pub stapsdt_base: Option<u64>,
    pub markers: Vec<Marker>,
    /// Shared libraries the file needs (DT_NEEDED), e.g. `libpython3.9.so.1.0`.
    #[serde(skip)]
    pub needed: Vec<String>,
    /// Its library search path (DT_RUNPATH, else DT_RPATH), `:`-separated entries.
    #[serde(skip)]
    pub runpath: Vec<String>,
    /// The read-only loadable segment holding `.rodata`, where the file's string literals
    /// are: the process maps it exactly as the file holds it. None when the file has no
    /// `.rodata`, or maps it writable.
    #[serde(skip)]
    pub rodata: Option<Segment>,
}

/// A loadable segment: `size` bytes of the file from `offset`, mapped at `vaddr` (plus the
/// load bias of a position-independent file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    /// Bytes the file holds (p_filesz).
    pub size: u64,
}

/// Why a buffer could not be read as ELF with SDT notes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The bytes do not start with an ELF header.
    #[error("not an ELF file")]
    NotElf,
    /// Headers, sections or notes are inconsistent or truncated.
    #[error("{0}")]
    Malformed(String),
}

/// Reads every SDT note of an ELF file held in memory.
pub fn read(data: &[u8]) -> Result<SdtNotes, ParseError> {
    match FileKind::parse(data) {
        Ok(FileKind::Elf32) => read_elf::<elf::FileHeader32<Endianness>>(data),
        Ok(FileKind::Elf64) => read_elf::<elf::FileHeader64<Endianness>>(data),
        _ => Err(ParseError::NotElf),
    }
}

fn malformed(e: object::Error) -> ParseError {
    ParseError::Malformed(e.to_string())
}

fn read_elf<Elf: FileHeader<Endian = Endianness>>(data: &[u8]) -> Result<SdtNotes, ParseError> {
    let header = Elf::parse(data).map_err(malformed)?;
    let endian = header.endian().map_err(malformed)?;
    let segments = header.program_headers(endian, data).map_err(malformed)?;
    let sections = header.sections(endian, data).map_err(malformed)?;

    let has_interp = segments.iter().any(|s| s.p_type(endian) == elf::PT_INTERP);
    let kind = match header.e_type(endian) {
        elf::ET_EXEC => ObjectKind::Executable,
        elf::ET_DYN if has_interp => ObjectKind::PieExecutable,
        elf::ET_DYN => ObjectKind::SharedLibrary,
        _ => ObjectKind::Other,
    };
    let stapsdt_base = sections
        .section_by_name(endian, b".stapsdt.base")
        .map(|(_, s)| s.sh_addr(endian).into());

    // The PT_LOAD segment whose file bytes hold a virtual address.
    let load_segment = |vaddr: u64| {
        segments.iter().find(|s| {
            let start: u64 = s.p_vaddr(endian).into();
            let size: u64 = s.p_filesz(endian).into();
            s.p_type(endian) == elf::PT_LOAD && vaddr >= start && vaddr - start < size
        })
    };
    // Virtual address -> file offset through the segment that maps it.
    let file_offset = |vaddr: u64| -> Option<u64> {
        let s = load_segment(vaddr)?;
        let start: u64 = s.p_vaddr(endian).into();
        let offset: u64 = s.p_offset(endian).into();
        Some(offset + (vaddr - start))
    };

    let mut markers = Vec::new();
    for section in sections.iter() {
        if sections.section_name(endian, section).ok() != Some(&b".note.stapsdt"[..]) {
            continue;
        }
        let Some(mut notes) = section.notes(endian, data).map_err(malformed)? else {
            continue;
        };
        read_notes::<Elf>(
            &mut notes,
            endian,
            header.is_type_64(),
            stapsdt_base,
            &mut markers,
        )?;
    }
    for m in &mut markers {
        m.file_offset = file_offset(m.address);
        m.semaphore_offset = m.semaphore.and_then(file_offset);
    }
    let (needed, runpath) = linkage::<Elf>(&sections, endian, data);
    let rodata = sections
        .section_by_name(endian, b".rodata")
        .and_then(|(_, section)| load_segment(section.sh_addr(endian).into()))
        .filter(|s| (s.p_flags(endian) & elf::PF_W).0 == 0)
        .map(|s| Segment {
            vaddr: s.p_vaddr(endian).into(),
            offset: s.p_offset(endian).into(),
            size: s.p_filesz(endian).into(),
        });
    Ok(SdtNotes {
        kind,
        stapsdt_base,
        markers,
        needed,
        runpath,
        rodata,
    })
}

/// DT_NEEDED and the run path of a dynamically linked file (best effort: empty when absent).
fn linkage<'a, Elf: FileHeader<Endian = Endianness>>(
    sections: &object::read::elf::SectionTable<'a, Elf, &'a [u8]>,
    endian: Endianness,
    data: &'a [u8],
) -> (Vec<String>, Vec<String>) {
    let Ok(table) = sections.dynamic_table(endian, data) else {
        return (Vec::new(), Vec::new());
    };
    let (mut needed, mut runpath, mut rpath) = (Vec::new(), Vec::new(), Vec::new());
    for d in table.iter() {
        let Ok(s) = table.string(d) else { continue };
        let s = String::from_utf8_lossy(s).into_owned();
        match d.tag {
            elf::DT_NEEDED => needed.push(s),
            elf::DT_RUNPATH => runpath.extend(s.split(':').map(String::from)),
            elf::DT_RPATH => rpath.extend(s.split(':').map(String::from)),
            _ => {}
        }
    }
    (needed, if runpath.is_empty() { rpath } else { runpath })
}

fn read_notes<Elf: FileHeader<Endian = Endianness>>(
    notes: &mut NoteIterator<'_, Elf>,
    endian: Endianness,
    is_64: bool,
    stapsdt_base: Option<u64>,
    out: &mut Vec<Marker>,
) -> Result<(), ParseError> {
    while let Some(note) = notes.next().map_err(malformed)? {
        if note.name() != STAPSDT_OWNER || note.n_type(endian).0 != NT_STAPSDT {
            continue;
        }
        out.push(parse_desc(note.desc(), endian, is_64, stapsdt_base)?);
    }
    Ok(())
}

/// Decodes one note descriptor: 3 addresses, then provider, name and args strings.
fn parse_desc(
    desc: &[u8],
    endian: Endianness,
    is_64: bool,
    stapsdt_base: Option<u64>,
) -> Result<Marker, ParseError> {
    let word = if is_64 { 8 } else { 4 };
    if desc.len() < 3 * word {
        return Err(ParseError::Malformed(format!(
            "stapsdt note of {} bytes is shorter than its three addresses",
            desc.len()
        )));
    }
    let addr = |i: usize| -> u64 {
        let b = &desc[i * word..(i + 1) * word];
        match (is_64, endian) {
            (true, Endianness::Little) => u64::from_le_bytes(b.try_into().unwrap_or_default()),
            (true, Endianness::Big) => u64::from_be_bytes(b.try_into().unwrap_or_default()),
            (false, Endianness::Little) => {
                u32::from_le_bytes(b.try_into().unwrap_or_default()).into()
            }
            (false, Endianness::Big) => u32::from_be_bytes(b.try_into().unwrap_or_default()).into(),
        }
    };
    let (location, note_base, semaphore) = (addr(0), addr(1), addr(2));
    let mut strings = desc[3 * word..].split(|&b| b == 0);
    let mut next_str = |what: &str| -> Result<String, ParseError> {
        strings
            .next()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .ok_or_else(|| ParseError::Malformed(format!("stapsdt note without its {what}")))
    };
    let provider = next_str("provider")?;
    let name = next_str("name")?;
    // A marker without arguments may end right after its name.
    let args = next_str("arguments").unwrap_or_default();
    if provider.is_empty() || name.is_empty() {
        return Err(ParseError::Malformed(
            "stapsdt note with an empty provider or name".into(),
        ));
    }
    // Prelink moved the file: shift by how far .stapsdt.base moved from where the note says.
    let shift = |a: u64| match stapsdt_base {
        Some(actual) if note_base != 0 => a.wrapping_add(actual.wrapping_sub(note_base)),
        _ => a,
    };
    Ok(Marker {
        provider,
        name,
        address: shift(location),
        note_location: location,
        note_base,
        // Like libbpf, which places the uprobe's reference counter, the semaphore is not shifted.
        semaphore: (semaphore != 0).then_some(semaphore),
        file_offset: None,
        semaphore_offset: None,
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(loc: u64, base: u64, sema: u64, strs: &[&str]) -> Vec<u8> {
        let mut d = Vec::new();
        for a in [loc, base, sema] {
            d.extend_from_slice(&a.to_le_bytes());
        }
        for s in strs {
            d.extend_from_slice(s.as_bytes());
            d.push(0);
        }
        d
    }

    #[test]
    fn decodes_a_note_descriptor() {
        let d = desc(0x1000, 0x2000, 0x3000, &["python", "gc__start", "-4@%ebx"]);
        let m = parse_desc(&d, Endianness::Little, true, Some(0x2000)).unwrap();
        assert_eq!(
            (m.provider.as_str(), m.name.as_str()),
            ("python", "gc__start")
        );
        assert_eq!((m.address, m.semaphore), (0x1000, Some(0x3000)));
        assert_eq!(m.args, "-4@%ebx");
    }

    #[test]
    fn prelinked_file_shifts_by_base_difference() {
        let d = desc(0x1000, 0x2000, 0x3000, &["python", "x", ""]);
        let m = parse_desc(&d, Endianness::Little, true, Some(0x2100)).unwrap();
        assert_eq!((m.address, m.semaphore), (0x1100, Some(0x3000)));
        assert_eq!(m.note_location, 0x1000);
    }

    #[test]
    fn no_semaphore_is_none() {
        let d = desc(0x1000, 0x2000, 0, &["python", "x", ""]);
        assert_eq!(
            parse_desc(&d, Endianness::Little, true, None)
                .unwrap()
                .semaphore,
            None
        );
    }

    #[test]
    fn truncated_descriptors_are_errors_not_panics() {
        let full = desc(0x1000, 0x2000, 0x3000, &["python", "gc__start", "-4@%ebx"]);
        for len in 0..full.len() {
            let _ = parse_desc(&full[..len], Endianness::Little, true, None);
        }
        assert!(parse_desc(&full[..20], Endianness::Little, true, None).is_err());
        assert!(parse_desc(&full[..24], Endianness::Little, true, None).is_err());
    }

    #[test]
    fn garbage_is_not_elf() {
        assert_eq!(
            read(b"#!/bin/sh\necho hi\n").unwrap_err(),
            ParseError::NotElf
        );
        assert!(read(b"\x7fELF\x02\x01\x01").is_err());
    }

    // The parser reads untrusted files (any process's executable, through /proc/PID/root):
    // whatever the bytes, it returns notes or an error, never panics. Failing cases that
    // proptest finds are kept in proptest-regressions/ and replayed first.
    mod untrusted {
        use super::super::read;
        use object::{Object, ObjectSection};
        use proptest::prelude::*;
        use std::sync::OnceLock;

        /// A real marker-bearing ELF file (Debian's python3.11, or the test's PIE fixture
        /// fallback: the test is skipped without one), and its .note.stapsdt range.
        fn real() -> Option<&'static (Vec<u8>, std::ops::Range<usize>)> {
            static REAL: OnceLock<Option<(Vec<u8>, std::ops::Range<usize>)>> = OnceLock::new();
            REAL.get_or_init(|| {
                let data = std::fs::read("/usr/bin/python3.11").ok()?;
                let file = object::File::parse(&*data).ok()?;
                let (start, len) = file.section_by_name(".note.stapsdt")?.file_range()?;
                Some((data.clone(), start as usize..(start + len) as usize))
            })
            .as_ref()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = read(&data);
            }

            #[test]
            fn elf_headers_with_arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..4096)) {
                // A valid ELF64 identification, so the parser goes past the magic.
                let mut data = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
                data.extend_from_slice(&[0; 8]);
                data.extend_from_slice(&body);
                let _ = read(&data);
            }

            #[test]
            fn mutated_real_notes_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..64)) {
                let Some((real, notes)) = real() else {
                    return Ok(());
                };
                let mut data = real.clone();
                for (at, byte) in flips {
                    data[notes.start + at.index(notes.len())] = byte;
                }
                let _ = read(&data);
            }
        }
    }
}
