//! Hook points of a CPython file without markers (issue 24): the functions and data that
//! stand in for the markers on builds made without `--with-dtrace` (the official `python:*`
//! images, uv's, conda's, pyenv's). They are looked for in this order, each source named: the
//! symbol table (`.symtab`, which pyenv's and debug builds keep, with the interpreter's internal
//! functions), then the exported symbols (`.dynsym`, which every `--enable-shared` build keeps,
//! the stripped official images included), then internal functions derived from exported
//! ones' machine code (src/discover/derive.rs, validated or refused). `plan` says which signals
//! can be traced through what was found (bpf/hooks.h: imports, GC, audit), and why not the
//! others.
//!
//! The file is someone else's: the tables were read within `image::MAX_READ_BYTES`, names are
//! compared, never printed from the file, a function's code is read with one bounded `pread`
//! of at most `derive::MAX_FUNCTION_BYTES`, `.eh_frame` with one of at most
//! `unwind::MAX_EH_FRAME_BYTES`, and `_PyRuntime`'s debug offsets with one of 184 bytes.
use object::read::elf::ElfFile64;
use object::{Endianness, Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

use super::safe_open::OpenedFile;
use super::version::CPythonVersion;
use super::{derive, entry_probe, unwind};

/// Where an event was seen (`enum signal_source` of bpf/pyusdt.h): a CPython marker, or a
/// hook point of a build without markers (src/discover/hooks.rs) and where that was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignalSource {
    #[default]
    Marker,
    SymbolTable,
    Exported,
    Derived,
}

impl SignalSource {
    /// The value of the `pyusdt.signal.source` attribute and of JSON output's `source`.
    pub fn label(self) -> &'static str {
        match self {
            SignalSource::Marker => "usdt",
            SignalSource::SymbolTable => "symbol_table",
            SignalSource::Exported => "exported_symbol",
            SignalSource::Derived => "derived",
        }
    }

    /// The byte the BPF programs write (and their cookie carries); unknown values read as
    /// the marker's, which is what every other event is.
    pub fn from_byte(b: u8) -> SignalSource {
        match b {
            1 => SignalSource::SymbolTable,
            2 => SignalSource::Exported,
            3 => SignalSource::Derived,
            _ => SignalSource::Marker,
        }
    }

    pub fn byte(self) -> u8 {
        self as u8
    }
}

/// Where a hook point was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `.symtab`: every function, static ones included.
    SymbolTable,
    /// `.dynsym`: the exported API only.
    Exported,
    /// The target of a call in an exported function's code, validated (src/discover/derive.rs).
    Derived,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::SymbolTable => "symbol table",
            Source::Exported => "exported",
            Source::Derived => "derived",
        }
    }

    /// What the events seen through it carry.
    pub fn signal(self) -> SignalSource {
        match self {
            Source::SymbolTable => SignalSource::SymbolTable,
            Source::Exported => SignalSource::Exported,
            Source::Derived => SignalSource::Derived,
        }
    }
}

/// One hook point found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// One of `WANTED`'s names.
    pub name: &'static str,
    /// What it would give (`WANTED`'s description).
    pub gives: &'static str,
    pub address: u64,
    pub size: u64,
    pub source: Source,
    /// Where its first byte is in the file, for a function whose code the file holds: where
    /// a uprobe is attached.
    pub file_offset: Option<u64>,
    /// Where an entry probe goes instead, when the kernel would single-step the entry and a
    /// later instruction is exactly as good (src/discover/entry_probe.rs): the audit hook's.
    pub entry_probe: Option<entry_probe::EntryProbe>,
}

impl Hook {
    /// Where in the file an entry probe is attached: at `entry_probe` when placed, else at
    /// the first byte.
    pub fn entry_probe_offset(&self) -> Option<u64> {
        let start = self.file_offset?;
        Some(match &self.entry_probe {
            Some(p) => start + (p.address - self.address),
            None => start,
        })
    }
}

/// The debug offsets at the start of `_PyRuntime` (CPython 3.13+, `_Py_DebugOffsets`): the
/// cookie `xdebugpy`, then the version as `PY_VERSION_HEX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugOffsets {
    pub version_hex: u64,
    /// Where the GC statistics are (3.13, validated).
    pub gc_stats: Option<GcStatsLayout>,
}

/// How to reach the GC statistics from a thread state: `tstate->interp`, then the
/// statistics' offset in the interpreter state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcStatsLayout {
    pub tstate_interp: u64,
    pub interp_stats: u64,
}

impl DebugOffsets {
    /// `3.13.5` from 0x030d05f0.
    pub fn version(&self) -> String {
        let v = self.version_hex;
        format!(
            "{}.{}.{}",
            (v >> 24) & 0xff,
            (v >> 16) & 0xff,
            (v >> 8) & 0xff
        )
    }
}

/// What a file without markers offers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// In `WANTED`'s order; each name at most once (the symbol table's, when both have it).
    pub found: Vec<Hook>,
    /// Read from `_PyRuntime` when it was found and starts with the cookie.
    pub debug_offsets: Option<DebugOffsets>,
    /// Derivations tried and refused: the function wanted, and why.
    pub refused: Vec<(&'static str, String)>,
}

/// The hook points looked for, and what each would give (the measurements of issue 24).
pub const WANTED: &[(&str, &str)] = &[
    (
        "PyObject_CallMethodObjArgs",
        "imports: its call of importlib's _find_and_load, as the import markers (exact)",
    ),
    (
        "sys_audit_tstate",
        "audit: every event raised from C (internal: symbol table, or derived from PySys_Audit)",
    ),
    (
        "PySys_Audit",
        "audit: events raised through the public API only (422 of 673 measured)",
    ),
    (
        "gc_collect_main",
        "GC: each collection, its generation, collected and pause (internal: symbol table, or derived on 3.11-3.13)",
    ),
    (
        "PyGC_Collect",
        "GC: gc_collect_main is derived from its call with generation 2 (through gc_collect_with_callback on 3.11-3.12)",
    ),
    (
        "_Py_HandlePending",
        "GC: gc_collect_main is called from it with generation -1 on 3.13 (a second derivation)",
    ),
    (
        "_PyRuntime",
        "runtime state: debug offsets on 3.13+, where the GC statistics are",
    ),
];

/// The cookie of `_Py_DebugOffsets`.
const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// The hook points of the 64-bit ELF image `data` (read with `image::Parts::symbols`) of
/// CPython `version`, the internal functions derived from `file`'s code where no symbol table
/// has them, and `_PyRuntime`'s debug offsets read from `file`. `None` for a file that does
/// not parse.
pub fn find(data: &[u8], file: &OpenedFile, version: Option<CPythonVersion>) -> Option<Hooks> {
    let elf = ElfFile64::<Endianness>::parse(data).ok()?;
    let mut hooks = Hooks::default();
    for &wanted in WANTED {
        let hook = lookup(elf.symbols(), wanted, Source::SymbolTable)
            .or_else(|| lookup(elf.dynamic_symbols(), wanted, Source::Exported));
        if let Some(mut hook) = hook {
            if hook.name != "_PyRuntime" {
                hook.file_offset = code_offset(&elf, hook.address, hook.size);
            }
            hooks.found.push(hook);
        }
    }
    if let Some(runtime) = hooks.found.iter().find(|h| h.name == "_PyRuntime") {
        hooks.debug_offsets = debug_offsets(&elf, runtime, file);
    }
    derive_missing(&elf, file, version, &mut hooks);
    // The audit program reads the thread state and the event: arguments 0 and 1.
    place_entry_probe(&elf, file, &mut hooks, "sys_audit_tstate", &[0, 1]);
    Some(hooks)
}

/// Code beyond this is not read to check an entry probe's place (libpython's is 2-4 MB).
const MAX_CODE_BYTES: u64 = 64 << 20;

/// Moves the entry probe of the function `name` off an instruction the kernel single-steps,
/// where a later one is exactly as good for a probe reading the arguments `reads`
/// (src/discover/entry_probe.rs). Anything not read or not clear leaves it at the entry.
fn place_entry_probe(
    elf: &ElfFile64<'_, Endianness>,
    file: &OpenedFile,
    hooks: &mut Hooks,
    name: &str,
    reads: &[usize],
) {
    let Some(hook) = hooks.found.iter_mut().find(|h| h.name == name) else {
        return;
    };
    let Some(offset) = hook.file_offset else {
        return;
    };
    let Some(len) = usize::try_from(hook.size)
        .ok()
        .filter(|n| (1..=derive::MAX_FUNCTION_BYTES).contains(n))
    else {
        return;
    };
    let mut bytes = vec![0u8; len];
    if file.read_exact_at(&mut bytes, offset).is_err() {
        return;
    }
    let function = derive::Function {
        address: hook.address,
        bytes: &bytes,
    };
    let Ok(Some(at)) = entry_probe::cheaper_entry(function, reads) else {
        return;
    };
    let Ok(layout) = derivation_layout(elf, file) else {
        return;
    };
    let Some(code) = read_code(elf, file) else {
        return;
    };
    if entry_probe::lands_in(
        &layout.functions,
        &code,
        &(hook.address + 1..at.address + 1),
    ) {
        return;
    }
    hook.entry_probe = Some(at);
}

/// The executable sections' addresses and bytes, in bounded reads (`MAX_CODE_BYTES` in all).
fn read_code(elf: &ElfFile64<'_, Endianness>, file: &OpenedFile) -> Option<Vec<(u64, Vec<u8>)>> {
    let mut total = 0u64;
    let mut code = Vec::new();
    for section in elf.sections() {
        if section.kind() != object::SectionKind::Text {
            continue;
        }
        let (offset, size) = section.file_range()?;
        total = total.checked_add(size).filter(|t| *t <= MAX_CODE_BYTES)?;
        let mut bytes = vec![0u8; usize::try_from(size).ok()?];
        file.read_exact_at(&mut bytes, offset).ok()?;
        code.push((section.address(), bytes));
    }
    Some(code)
}

/// The internal functions not found in a symbol table, derived from the exported functions
/// that call them (src/discover/derive.rs): `sys_audit_tstate` from `PySys_Audit`; on 3.11
/// and 3.12 `gc_collect_main` from `PyGC_Collect` through `gc_collect_with_callback`, on 3.13
/// from both `PyGC_Collect` and `_Py_HandlePending`, which must agree.
fn derive_missing(
    elf: &ElfFile64<'_, Endianness>,
    file: &OpenedFile,
    version: Option<CPythonVersion>,
    hooks: &mut Hooks,
) {
    let has = |hooks: &Hooks, name: &str| hooks.found.iter().any(|h| h.name == name);
    let gc = version.and_then(gc_way);
    let wants_gc = gc.is_some() && !has(hooks, "gc_collect_main");
    if has(hooks, "sys_audit_tstate") && !wants_gc {
        return;
    }
    let layout = match derivation_layout(elf, file) {
        Ok(l) => l,
        Err(why) => {
            hooks.refused.push(("sys_audit_tstate", why.clone()));
            if wants_gc {
                hooks.refused.push(("gc_collect_main", why));
            }
            return;
        }
    };
    let wrapper = |hooks: &Hooks, name: &str| {
        hooks
            .found
            .iter()
            .find(|h| h.name == name)
            .map(|h| (h.address, h.size))
    };
    if !has(hooks, "sys_audit_tstate") {
        if let Some((address, size)) = wrapper(hooks, "PySys_Audit") {
            let derived = derive_from(elf, file, &layout, address, size, derive::audit_worker)
                .map_err(|why| format!("from PySys_Audit: {why}"));
            add_derived(elf, hooks, "sys_audit_tstate", derived);
        }
    }
    if wants_gc && gc == Some(GcWay::Statistics) {
        // 3.13: PyGC_Collect and _Py_HandlePending both call gc_collect_main, with generation
        // 2 and -1: two derivations that must agree.
        let from = |hooks: &Hooks, name: &str, f| {
            let (address, size) = wrapper(hooks, name).ok_or(format!("{name} not found"))?;
            derive_from(elf, file, &layout, address, size, f)
                .map_err(|why| format!("from {name}: {why}"))
        };
        let manual = from(hooks, "PyGC_Collect", derive::gc_with_callback);
        // -1 is given in _Py_HandlePending itself, or, where PGO kept _Py_RunGC apart, in the
        // function it hands its thread state to.
        let auto = from(hooks, "_Py_HandlePending", derive::gc_auto).or_else(|direct| {
            let run_gc = from(hooks, "_Py_HandlePending", derive::tstate_passed_on)
                .map_err(|_| direct.clone())?;
            let len = run_gc.bounds.end - run_gc.bounds.start;
            derive_from(elf, file, &layout, run_gc.address, len, derive::gc_auto)
                .map_err(|why| format!("{direct}; nor through {:#x}: {why}", run_gc.address))
        });
        let derived = match (manual, auto) {
            (Ok(a), Ok(b)) if a == b => Ok(a),
            (Ok(a), Ok(b)) => Err(format!(
                "PyGC_Collect calls {:#x}, _Py_HandlePending {:#x}: not one collector",
                a.address, b.address
            )),
            (Err(why), _) | (_, Err(why)) => Err(why),
        };
        add_derived(elf, hooks, "gc_collect_main", derived);
    } else if wants_gc {
        if let Some((address, size)) = wrapper(hooks, "PyGC_Collect") {
            let derived = derive_from(elf, file, &layout, address, size, derive::gc_with_callback)
                .map_err(|why| format!("from PyGC_Collect: {why}"))
                .and_then(|w| {
                    let len = w.bounds.end - w.bounds.start;
                    derive_from(elf, file, &layout, w.address, len, derive::gc_main).map_err(
                        |why| format!("from gc_collect_with_callback at {:#x}: {why}", w.address),
                    )
                });
            add_derived(elf, hooks, "gc_collect_main", derived);
        }
    }
}

/// How a version's collections are read at `gc_collect_main` (bpf/hooks.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcWay {
    /// 3.11, 3.12: its second argument is the generation, it returns n + m.
    GenerationArgument,
    /// 3.13: it is given -1 for "the one due" and picks it inside, or returns at once when
    /// none is due: the generation is the one whose statistics counted a collection.
    Statistics,
}

/// How `gc_collect_main` of CPython `v` is read, if it is known.
pub fn gc_way(v: CPythonVersion) -> Option<GcWay> {
    match (v.major, v.minor) {
        (3, 11..=12) => Some(GcWay::GenerationArgument),
        (3, 13) => Some(GcWay::Statistics),
        _ => None,
    }
}

/// Records the function `name` derived, or why not.
fn add_derived(
    elf: &ElfFile64<'_, Endianness>,
    hooks: &mut Hooks,
    name: &'static str,
    derived: Result<derive::Derived, String>,
) {
    let derived = derived.and_then(|d| {
        let offset = code_offset(elf, d.address, d.bounds.end - d.bounds.start)
            .ok_or_else(|| format!("{:#x} is not in the file's code", d.address))?;
        Ok((d, offset))
    });
    let (d, file_offset) = match derived {
        Ok(found) => found,
        Err(why) => {
            hooks.refused.push((name, why));
            return;
        }
    };
    let at = WANTED.iter().position(|(n, _)| *n == name).unwrap_or(0);
    let hook = Hook {
        name,
        gives: WANTED[at].1,
        address: d.address,
        size: d.bounds.end - d.bounds.start,
        source: Source::Derived,
        file_offset: Some(file_offset),
        entry_probe: None,
    };
    // Keep WANTED's order.
    let i = hooks
        .found
        .iter()
        .position(|h| WANTED.iter().position(|(n, _)| *n == h.name) > Some(at))
        .unwrap_or(hooks.found.len());
    hooks.found.insert(i, hook);
}

/// What derivations check targets against: `.text`, the functions of `.eh_frame` (one bounded
/// read), the exported functions.
fn derivation_layout(
    elf: &ElfFile64<'_, Endianness>,
    file: &OpenedFile,
) -> Result<derive::Layout, String> {
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(format!(
            "derivation reads x86-64 code only, not {:?}",
            elf.architecture()
        ));
    }
    let text = text_range(elf).ok_or("no .text section")?;
    text_is_loaded_as_said(elf)?;
    let eh = elf.section_by_name(".eh_frame").ok_or("no .eh_frame")?;
    let (offset, size) = eh.file_range().ok_or(".eh_frame not in the file")?;
    let size = usize::try_from(size)
        .ok()
        .filter(|n| *n <= unwind::MAX_EH_FRAME_BYTES)
        .ok_or_else(|| format!(".eh_frame of {size} bytes is too large"))?;
    let mut bytes = vec![0u8; size];
    file.read_exact_at(&mut bytes, offset)
        .map_err(|e| format!(".eh_frame not read: {e}"))?;
    let functions = unwind::Functions::parse(&bytes, eh.address(), text.start)?;
    Ok(derive::Layout {
        text,
        functions,
        exported: elf
            .dynamic_symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
            .map(|s| s.address()..s.address().saturating_add(s.size()))
            .collect(),
    })
}

/// What `derive` finds in the code of the function at `address` (`size` bytes).
fn derive_from(
    elf: &ElfFile64<'_, Endianness>,
    file: &OpenedFile,
    layout: &derive::Layout,
    address: u64,
    size: u64,
    derive: fn(derive::Function<'_>, &derive::Layout) -> Result<derive::Derived, String>,
) -> Result<derive::Derived, String> {
    let len = usize::try_from(size)
        .ok()
        .filter(|n| (1..=derive::MAX_FUNCTION_BYTES).contains(n))
        .ok_or_else(|| format!("{size} bytes is not a wrapper's size"))?;
    let offset = code_offset(elf, address, size).ok_or("not in the file's code")?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, offset)
        .map_err(|e| format!("code not read: {e}"))?;
    derive(
        derive::Function {
            address,
            bytes: &bytes,
        },
        layout,
    )
}

/// Whether the segment the kernel maps `.text` from puts it where its section header says:
/// code is decoded and uprobes placed by file offset, call targets computed by address, and
/// the two must agree for what runs to be what was checked.
fn text_is_loaded_as_said(elf: &ElfFile64<'_, Endianness>) -> Result<(), String> {
    let text = elf.section_by_name(".text").ok_or("no .text section")?;
    let (offset, _) = text.file_range().ok_or(".text not in the file")?;
    let loaded = elf.segments().any(|seg| {
        let (seg_offset, seg_size) = seg.file_range();
        let within = offset.wrapping_sub(seg_offset);
        offset >= seg_offset
            && within < seg_size
            && seg.address().checked_add(within) == Some(text.address())
    });
    if loaded {
        Ok(())
    } else {
        Err(".text is not loaded where its section header says".into())
    }
}

/// The addresses of the `.text` section.
fn text_range(elf: &ElfFile64<'_, Endianness>) -> Option<std::ops::Range<u64>> {
    let text = elf.section_by_name(".text")?;
    Some(text.address()..text.address().checked_add(text.size())?)
}

fn lookup<'data, S>(
    symbols: S,
    (name, gives): (&'static str, &'static str),
    source: Source,
) -> Option<Hook>
where
    S: Iterator,
    S::Item: ObjectSymbol<'data>,
{
    let data_symbol = name == "_PyRuntime";
    symbols
        .filter(|s| s.is_definition() && s.name_bytes().ok() == Some(name.as_bytes()))
        .find(|s| {
            if data_symbol {
                s.kind() == SymbolKind::Data
            } else {
                s.kind() == SymbolKind::Text && s.size() > 0
            }
        })
        .map(|s| Hook {
            name,
            gives,
            address: s.address(),
            size: s.size(),
            source,
            file_offset: None,
            entry_probe: None,
        })
}

/// The file offset of the function at `address` (`size` bytes), when it lies wholly inside an
/// executable section whose bytes the file holds: a symbol pointing anywhere else is not a
/// place to attach.
fn code_offset(elf: &ElfFile64<'_, Endianness>, address: u64, size: u64) -> Option<u64> {
    let end = address.checked_add(size)?;
    let section = elf.sections().find(|s| {
        // Text: SHT_PROGBITS with SHF_EXECINSTR.
        s.kind() == object::SectionKind::Text
            && address >= s.address()
            && end <= s.address().saturating_add(s.size())
    })?;
    let (offset, len) = section.file_range()?;
    let within = address - section.address();
    (within.checked_add(size)? <= len).then(|| offset.checked_add(within))?
}

/// A hook point a signal is traced through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    pub symbol: &'static str,
    pub file_offset: u64,
    pub source: Source,
}

/// Imports, through `PyObject_CallMethodObjArgs`'s calls of `_find_and_load` (bpf/hooks.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSite {
    pub site: Site,
    /// Where a compact ASCII str's characters start: the size of the version's PyASCIIObject.
    pub str_data_offset: u64,
}

impl ImportSite {
    /// The BPF programs' cookie (bpf/hooks.h): the data offset, and the events' source.
    pub fn cookie(&self) -> u64 {
        self.str_data_offset | u64::from(self.site.source.signal().byte()) << 8
    }
}

/// What a CPython file without markers can be traced through, per signal, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub imports: Result<ImportSite, String>,
    pub gc: Result<GcSite, String>,
    pub audit: Result<Site, String>,
}

impl Plan {
    /// Whether anything can be traced.
    pub fn any(&self) -> bool {
        self.imports.is_ok() || self.gc.is_ok() || self.audit.is_ok()
    }
}

/// What `hooks` of a file of CPython `version` allow (`free_threaded`: a `t` build, whose
/// objects have a larger header). Fails closed: an unknown version or layout traces nothing.
pub fn plan(hooks: &Hooks, version: Option<CPythonVersion>, free_threaded: bool) -> Plan {
    Plan {
        imports: import_site(hooks, version, free_threaded),
        gc: gc_site(hooks, version),
        audit: audit_site(hooks, version),
    }
}

/// GC, at `gc_collect_main`'s entry and returns (bpf/hooks.h): on 3.11 and 3.12 with its
/// generation argument, on 3.13 by its statistics (where `_PyRuntime`'s debug offsets say,
/// validated).
fn gc_site(hooks: &Hooks, version: Option<CPythonVersion>) -> Result<GcSite, String> {
    const SYMBOL: &str = "gc_collect_main";
    let v = version.ok_or("the CPython version is not known")?;
    let way = gc_way(v).ok_or(format!("CPython {v}: its collector is not known"))?;
    let site = found_site(hooks, SYMBOL, "PyGC_Collect")?;
    let stats = match way {
        GcWay::GenerationArgument => None,
        GcWay::Statistics => Some(
            hooks
                .debug_offsets
                .and_then(|d| d.gc_stats)
                .ok_or("_PyRuntime's debug offsets do not say where the GC statistics are")?,
        ),
    };
    Ok(GcSite { site, stats })
}

/// GC through `gc_collect_main`, and where its statistics are when it is read by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcSite {
    pub site: Site,
    pub stats: Option<GcStatsLayout>,
}

impl GcSite {
    /// The BPF programs' cookie (bpf/hooks.h): the events' source in bits 8-15; with
    /// statistics, `tstate->interp`'s offset in bits 16-31 and the statistics' offset in the
    /// interpreter state in bits 32-63.
    pub fn cookie(&self) -> u64 {
        let source = u64::from(self.site.source.signal().byte()) << 8;
        match self.stats {
            None => source,
            Some(s) => source | (s.tstate_interp & 0xffff) << 16 | s.interp_stats << 32,
        }
    }
}

/// The site of `symbol`, or why there is none (`from`: what it is derived from).
fn found_site(hooks: &Hooks, symbol: &'static str, from: &str) -> Result<Site, String> {
    let Some(hook) = hooks.found.iter().find(|h| h.name == symbol) else {
        return Err(match hooks.refused.iter().find(|(n, _)| *n == symbol) {
            Some((_, why)) => format!("{symbol} not derived: {why}"),
            None => format!("{symbol} not found, nor {from} to derive it from"),
        });
    };
    let file_offset = hook
        .file_offset
        .ok_or_else(|| format!("{symbol} is not in the file's code"))?;
    Ok(Site {
        symbol,
        file_offset,
        source: hook.source,
    })
}

/// Audit events, at `sys_audit_tstate(tstate, event, format, va)`'s entry (bpf/hooks.h), or
/// where it is as good and cheaper (src/discover/entry_probe.rs): the function every event
/// raised from C passes through, 3.9 to 3.14 (3.8's `PySys_Audit` did the
/// work itself). It reads a `char *` only: no object layout, free-threaded builds included.
fn audit_site(hooks: &Hooks, version: Option<CPythonVersion>) -> Result<Site, String> {
    const SYMBOL: &str = "sys_audit_tstate";
    let v = version.ok_or("the CPython version is not known")?;
    if !matches!((v.major, v.minor), (3, 9..=14)) {
        return Err(format!("CPython {v}: its audit function is not known"));
    }
    let mut site = found_site(hooks, SYMBOL, "PySys_Audit")?;
    // An entry probe only: it may go where the kernel need not single-step.
    let hook = hooks.found.iter().find(|h| h.name == SYMBOL);
    if let Some(offset) = hook.and_then(Hook::entry_probe_offset) {
        site.file_offset = offset;
    }
    Ok(site)
}

fn import_site(
    hooks: &Hooks,
    version: Option<CPythonVersion>,
    free_threaded: bool,
) -> Result<ImportSite, String> {
    const SYMBOL: &str = "PyObject_CallMethodObjArgs";
    let v = version.ok_or("the CPython version is not known")?;
    if free_threaded {
        return Err("a free-threaded build: its object layout is not read".into());
    }
    // sizeof(PyASCIIObject) on 64-bit builds: 3.11 still has `wstr` (48 bytes), 3.12 removed
    // it (40). Before 3.11, import.c calls another function (_PyObject_CallMethodIdObjArgs).
    let str_data_offset = match (v.major, v.minor) {
        (3, 11) => 48,
        (3, 12..=14) => 40,
        _ => {
            return Err(format!(
                "CPython {v}: its import call and str layout are not known"
            ))
        }
    };
    let hook = hooks
        .found
        .iter()
        .find(|h| h.name == SYMBOL)
        .ok_or_else(|| format!("{SYMBOL} not found"))?;
    let file_offset = hook
        .file_offset
        .ok_or_else(|| format!("{SYMBOL} is not in the file's code"))?;
    Ok(ImportSite {
        site: Site {
            symbol: SYMBOL,
            file_offset,
            source: hook.source,
        },
        str_data_offset,
    })
}

/// `_PyRuntime`'s first 16 bytes, read from the file at the address's place in its section:
/// the debug offsets when they start with the cookie.
fn debug_offsets(
    elf: &ElfFile64<'_, Endianness>,
    runtime: &Hook,
    file: &OpenedFile,
) -> Option<DebugOffsets> {
    let address = runtime.address;
    let want = DEBUG_OFFSETS_READ as u64;
    let section = elf.sections().find(|s| {
        let start = s.address();
        address >= start && address.saturating_add(want) <= start.saturating_add(s.size())
    })?;
    let (offset, size) = section.file_range()?;
    let within = address - section.address();
    if within.saturating_add(want) > size {
        return None;
    }
    let mut head = [0u8; DEBUG_OFFSETS_READ];
    file.read_exact_at(&mut head, offset.checked_add(within)?)
        .ok()?;
    if &head[..8] != DEBUG_COOKIE {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or_default());
    let version_hex = word(8);
    // A plausible 3.x version, or the bytes are not what the cookie promised.
    if (version_hex >> 24) != 3 {
        return None;
    }
    let minor = (version_hex >> 16) & 0xff;
    Some(DebugOffsets {
        version_hex,
        gc_stats: (minor == 13)
            .then(|| gc_stats_313(word, runtime.size))
            .flatten(),
    })
}

/// Bytes of `_Py_DebugOffsets` read: up to `thread_state.interp` (3.13's layout).
const DEBUG_OFFSETS_READ: usize = 0xb8;

/// Where 3.13's GC statistics are, from its debug offsets (`word(at)`: the u64 at `at`), when
/// they are what 3.13.0 to 3.13.5 have (measured on the official-like, matrix and pyenv
/// builds): `free_threaded` 0, `runtime_state.size` the size of `_PyRuntime` itself, and the
/// offsets inside the sizes they belong to. `generation_stats` is 0x80 into the GC state (its
/// layout, which the debug offsets do not give: `gc.get_stats()` equals what is read there).
fn gc_stats_313(word: impl Fn(usize) -> u64, runtime_size: u64) -> Option<GcStatsLayout> {
    const MAX_STATE: u64 = 1 << 20;
    let (free_threaded, runtime_state_size) = (word(0x10), word(0x18));
    let (interp_size, interp_gc) = (word(0x30), word(0x50));
    let (tstate_size, tstate_interp) = (word(0x98), word(0xb0));
    let stats = interp_gc.checked_add(GC_STATS_IN_GC_313)?;
    let valid = free_threaded == 0
        && runtime_state_size == runtime_size
        && interp_size < MAX_STATE
        && tstate_size < MAX_STATE
        && stats.checked_add(GC_STATS_BYTES)? <= interp_size
        && tstate_interp.checked_add(8)? <= tstate_size
        // The cookie's widths (GcSite::cookie): 16 bits, and 32 (below MAX_STATE anyway).
        && tstate_interp <= 0xffff;
    valid.then_some(GcStatsLayout {
        tstate_interp,
        interp_stats: stats,
    })
}

/// `generation_stats` in 3.13's `struct _gc_runtime_state`: after the trash list, three ints,
/// three generations (24 bytes each), `generation0` and the permanent generation.
const GC_STATS_IN_GC_313: u64 = 0x80;
/// Three generations of {collections, collected, uncollectable}.
const GC_STATS_BYTES: u64 = 72;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::image::{self, Parts};
    use crate::discover::safe_open::open_path;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::path::Path;

    /// Debian's python3.11 read as a file without markers would be: its tables, for mutating.
    fn sample() -> Option<(OpenedFile, Vec<u8>)> {
        let file = open_path(Path::new("/usr/bin/python3.11"), true).ok()?;
        let parts = Parts {
            rodata: false,
            symbols: true,
        };
        let data = image::read(&file, parts).ok()?;
        Some((file, data))
    }

    #[test]
    fn finds_the_exported_functions_of_a_real_interpreter() {
        let Some((file, data)) = sample() else {
            eprintln!("skipped: no /usr/bin/python3.11");
            return;
        };
        let hooks = find(&data, &file, None).unwrap();
        let names: Vec<_> = hooks.found.iter().map(|h| h.name).collect();
        assert!(names.contains(&"PyGC_Collect"), "{names:?}");
        assert!(names.contains(&"_PyRuntime"), "{names:?}");
        // 3.11 has no debug offsets.
        assert_eq!(hooks.debug_offsets, None);
    }

    /// Derived from exported functions' code, sys_audit_tstate, gc_collect_with_callback and
    /// gc_collect_main are where pyenv's symbol table says they are (3.11 and 3.12), and a
    /// wrapper whose code is another function's is refused.
    #[test]
    fn derivation_agrees_with_symbol_tables() {
        let home = std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
        let mut checked = 0;
        for (dir, minor) in [("3.11.7", 11), ("3.12.1", 12)] {
            let path = home.join(format!(
                ".pyenv/versions/{dir}/lib/libpython3.{minor}.so.1.0"
            ));
            let Ok(file) = open_path(&path, true) else {
                eprintln!("NOTE: no pyenv {dir}: not checked");
                continue;
            };
            let parts = Parts {
                rodata: false,
                symbols: true,
            };
            let data = image::read(&file, parts).unwrap();
            let hooks = find(&data, &file, None).unwrap();
            let by_name = |n: &str| hooks.found.iter().find(|h| h.name == n).unwrap().clone();
            let elf = ElfFile64::<Endianness>::parse(&*data).unwrap();
            let layout = derivation_layout(&elf, &file).unwrap();
            let derive = |wrapper: &Hook, f| {
                derive_from(&elf, &file, &layout, wrapper.address, wrapper.size, f)
                    .map(|d| d.address)
            };
            let (wrapper, worker) = (by_name("PySys_Audit"), by_name("sys_audit_tstate"));
            assert_eq!(worker.source, Source::SymbolTable);
            assert_eq!(
                derive(&wrapper, derive::audit_worker),
                Ok(worker.address),
                "pyenv {dir}"
            );
            // Another function's code in its place: refused, not guessed.
            let other = by_name("PyObject_CallMethodObjArgs");
            assert!(derive(&other, derive::audit_worker).is_err());
            // GC, in two steps as on a stripped build: where pyenv's compiler inlined
            // gc_collect_with_callback into PyGC_Collect (no symbol of its own), three calls
            // there take generation 2 and the derivation refuses; otherwise it lands where the
            // symbol table has gc_collect_main.
            let mut stripped = hooks.clone();
            stripped.found.retain(|h| h.name != "gc_collect_main");
            let v = CPythonVersion {
                major: 3,
                minor,
                micro: None,
            };
            derive_missing(&elf, &file, Some(v), &mut stripped);
            let derived = stripped.found.iter().find(|h| h.name == "gc_collect_main");
            let symbols = elf_symbols(&elf);
            match derived {
                Some(h) => assert_eq!(h.address, by_name("gc_collect_main").address),
                None => {
                    assert!(!symbols.contains_key("gc_collect_with_callback"));
                    let why = &stripped
                        .refused
                        .iter()
                        .find(|(n, _)| *n == "gc_collect_main");
                    eprintln!("pyenv {dir}: gc_collect_main not derived: {why:?}");
                }
            }
            checked += 1;
        }
        eprintln!("checked {checked} pyenv builds");
    }

    /// 3.13.5's debug offsets (the words read from the official-like build): the GC
    /// statistics 0x80 into the GC state at 0x1ce8, reached through tstate->interp at 0x10;
    /// any word changed out of what 3.13 has is refused.
    #[test]
    fn gc_statistics_come_from_validated_debug_offsets() {
        let words: HashMap<usize, u64> = [
            (0x10, 0),
            (0x18, 0x452f0),
            (0x30, 0x2f9a0),
            (0x50, 0x1ce8),
            (0x98, 0x130),
            (0xb0, 0x10),
        ]
        .into();
        let word = |w: &HashMap<usize, u64>| {
            let w = w.clone();
            move |at: usize| w.get(&at).copied().unwrap_or(0)
        };
        assert_eq!(
            gc_stats_313(word(&words), 0x452f0),
            Some(GcStatsLayout {
                tstate_interp: 0x10,
                interp_stats: 0x1ce8 + 0x80
            })
        );
        assert_eq!(
            gc_stats_313(word(&words), 0x452f8),
            None,
            "another runtime size"
        );
        for (at, bad) in [(0x10, 1), (0x50, 0x2f9a0), (0xb0, 0x130), (0x30, 1 << 40)] {
            let mut w = words.clone();
            w.insert(at, bad);
            assert_eq!(gc_stats_313(word(&w), 0x452f0), None, "{at:#x} = {bad:#x}");
        }
    }

    fn elf_symbols(elf: &ElfFile64<'_, Endianness>) -> HashMap<String, u64> {
        elf.symbols()
            .filter_map(|s| Some((s.name().ok()?.to_string(), s.address())))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Garbage and damaged tables give fewer hooks or none, never a panic, and every hook
        /// found still names one of `WANTED`.
        #[test]
        fn damaged_tables_never_panic(flips in proptest::collection::vec((any::<u32>(), any::<u8>()), 1..64)) {
            let Some((file, mut data)) = sample() else { return Ok(()); };
            // Damage the headers and the first MB, where the tables are.
            let span = data.len().min(1 << 20);
            for (at, byte) in flips {
                let i = at as usize % span;
                data[i] ^= byte | 1;
            }
            if let Some(h) = find(&data, &file, None) {
                prop_assert!(h.found.iter().all(|f| WANTED.iter().any(|(n, _)| *n == f.name)));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let Some((file, _)) = sample() else { return Ok(()); };
            let _ = find(&bytes, &file, None);
        }
    }
}
