//! Decodes ring-buffer records (layouts of bpf/pyusdt.h) into borrowed, typed events.
//!
//! Over 500 lines only with its tests (200), property tests of the untrusted records among them.
use std::borrow::Cow;
use std::sync::Arc;

use crate::abi::bytes;
pub use crate::abi::{c_string, CodeRef};
use crate::bpf::{
    self, audit_arg, audit_args_event, audit_event, audit_ref_event, event_header, flow_event,
    function_event, function_ref_event, gc_event, import_event, process_event,
};
pub use crate::discover::hooks::SignalSource;

/// What every event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// CLOCK_MONOTONIC ns at the start marker; `None` when only the done half was seen.
    pub start_ns: Option<u64>,
    /// CLOCK_MONOTONIC ns at the done marker (audit: at the marker).
    pub end_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// Spans still in progress on the thread when the event ended: imports and, with function
    /// probes, calls (nesting for spans).
    pub depth: u8,
    /// Where the event was seen: a marker, or a hook point of a build without markers.
    pub source: SignalSource,
}

impl Header {
    pub fn duration_ns(&self) -> Option<u64> {
        self.start_ns.map(|s| self.end_ns.saturating_sub(s))
    }
}

/// One decoded event; strings borrow from the ring buffer when they are valid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    Gc {
        header: Header,
        /// `None` when gc__start was not seen (attached mid-collection).
        generation: Option<i32>,
        /// gc__done's argument: collected + uncollectable objects.
        collected: i64,
    },
    Import {
        header: Header,
        module: Cow<'a, str>,
        found: bool,
        /// Imports still in progress on the thread (0: a top-level import).
        nesting: u32,
    },
    Audit {
        header: Header,
        name: Cow<'a, str>,
        /// Length of the audit argument tuple, `None` when it could not be read.
        nargs: Option<i64>,
        /// The first arguments' raw memory, with --audit-args.
        args: Option<RawAuditArgs<'a>>,
    },
    /// A call that lasted at least --min-duration (function probes).
    Function {
        header: Header,
        name: Cow<'a, str>,
        file: Cow<'a, str>,
        /// The function's first line.
        line: i32,
        /// The same names, interned, once `CodeNames` has seen the record (None when read
        /// straight from the ring buffer): spans and metric series share it.
        location: Option<&'a Arc<crate::model::location::CodeLocation>>,
    },
}

/// Audit arguments as the BPF side copied them (see model::audit_args for their decoding).
#[derive(Debug, Clone, Copy)]
pub struct RawAuditArgs<'a> {
    /// The attachment's cookie: ob_size offset in bits 0-7, CPython minor version in 8-15.
    pub layout: u64,
    pub args: &'a [audit_arg],
}

impl PartialEq for RawAuditArgs<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.layout == other.layout && std::ptr::eq(self.args, other.args)
    }
}

impl Eq for RawAuditArgs<'_> {}

/// Sent before a process's first event: its description, read from its own memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRecord<'a> {
    pub pid: u32,
    pub comm: Cow<'a, str>,
    /// NUL-separated argv (empty when it could not be read).
    pub args: &'a [u8],
    /// The process's `OTEL_*` environment variables, NUL-separated `KEY=VALUE` entries: the
    /// BPF side copies no other variable (they may hold secrets).
    pub env: &'a [u8],
    /// An `OTEL_*` variable may be missing (the environment was unreadable, or too long).
    pub env_truncated: bool,
}

impl ProcessRecord<'_> {
    /// The command line, arguments joined by spaces.
    pub fn command_line(&self) -> Option<String> {
        crate::discover::process::join_argv(self.args)
    }

    /// `KEY=VALUE` pairs of the environment; when it was truncated, the last (possibly cut)
    /// entry is left out.
    pub fn environment(&self) -> impl Iterator<Item = (&str, &str)> {
        let complete = if self.env_truncated {
            // Up to the last NUL: the entry after it may be cut.
            &self.env[..self.env.iter().rposition(|&b| b == 0).unwrap_or(0)]
        } else {
            self.env
        };
        crate::discover::process::env_entries(complete)
    }
}

/// A function entry, return or line of `pyusdt flow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord<'a> {
    pub header: Header,
    pub kind: FlowKind,
    pub line: i32,
    pub name: Cow<'a, str>,
    pub file: Cow<'a, str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKind {
    Entry,
    Return,
    Line,
}

/// A ring-buffer record: a marker's event, a process description, or a flow record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Event(Event<'a>),
    /// A completed call with its code's names (`event` is an `Event::Function`), sent for the
    /// first call of that code: later calls are `FunctionRef`s.
    Function {
        event: Event<'a>,
        code: CodeRef,
    },
    /// A completed call of code whose names an earlier `Function` record carried.
    FunctionRef {
        header: Header,
        code: CodeRef,
    },
    /// An audit event whose name is a literal of the interpreter file, sent as its address
    /// there (src/audit_names.rs reads it).
    AuditRef {
        header: Header,
        nargs: Option<i64>,
        /// The file: its `audit_images` index + 1.
        image: u32,
        name_vaddr: u64,
    },
    Process(ProcessRecord<'a>),
    Flow(FlowRecord<'a>),
    /// A process exec'd a program (`agent`): its host PID.
    Exec {
        pid: u32,
    },
}

impl Event<'_> {
    pub fn header(&self) -> &Header {
        match self {
            Event::Gc { header, .. }
            | Event::Import { header, .. }
            | Event::Audit { header, .. }
            | Event::Function { header, .. } => header,
        }
    }
}

/// A record that does not match any layout: a bug or a version skew between BPF and Rust.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than its layout.
    #[error("truncated record of {len} bytes for marker {marker}")]
    Truncated { marker: u8, len: usize },
    /// The record is not aligned for its layout (libbpf's ring buffer aligns to 8 bytes).
    #[error("misaligned record for marker {0}")]
    Misaligned(u8),
    /// The marker byte is none of bpf/pyusdt.h's `enum marker`.
    #[error("unknown marker {0}")]
    UnknownMarker(u8),
}

pub fn decode(data: &[u8]) -> Result<Record<'_>, DecodeError> {
    let raw: &event_header = read(data, u8::MAX)?;
    let header = Header {
        start_ns: (raw.start_ns != 0).then_some(raw.start_ns),
        end_ns: raw.end_ns,
        pid: raw.pid,
        tid: raw.tid,
        depth: raw.depth,
        source: SignalSource::from_byte(raw.source),
    };
    match raw.marker {
        bpf::MARKER_GC => {
            let e: &gc_event = read(data, raw.marker)?;
            Ok(Record::Event(Event::Gc {
                header,
                generation: (e.generation >= 0).then_some(e.generation),
                collected: e.collected,
            }))
        }
        bpf::MARKER_IMPORT => {
            let e: &import_event = read(data, raw.marker)?;
            Ok(Record::Event(Event::Import {
                header,
                module: c_string(&e.module),
                found: e.found != 0,
                nesting: e.nesting,
            }))
        }
        bpf::MARKER_AUDIT => {
            let e: &audit_event = read(data, raw.marker)?;
            Ok(Record::Event(Event::Audit {
                header,
                name: c_string(&e.name),
                nargs: (e.nargs >= 0).then_some(e.nargs),
                args: None,
            }))
        }
        bpf::MARKER_AUDIT_ARGS => {
            let e: &audit_args_event = read(data, raw.marker)?;
            Ok(Record::Event(Event::Audit {
                header,
                name: c_string(&e.base.name),
                nargs: (e.base.nargs >= 0).then_some(e.base.nargs),
                args: Some(RawAuditArgs {
                    layout: e.layout,
                    args: &e.args,
                }),
            }))
        }
        bpf::MARKER_AUDIT_REF => {
            let e: &audit_ref_event = read(data, raw.marker)?;
            Ok(Record::AuditRef {
                header,
                nargs: (e.nargs >= 0).then_some(e.nargs),
                image: e.image,
                name_vaddr: e.name_vaddr,
            })
        }
        bpf::MARKER_PROCESS => {
            let e: &process_event = read(data, raw.marker)?;
            let args = bytes(&e.args);
            let env = bytes(&e.env);
            Ok(Record::Process(ProcessRecord {
                pid: header.pid,
                comm: c_string(&e.comm),
                args: &args[..(e.args_len as usize).min(args.len())],
                env: &env[..(e.env_len as usize).min(env.len())],
                env_truncated: e.truncated & 2 != 0,
            }))
        }
        bpf::MARKER_FUNCTION => {
            let e: &function_event = read(data, raw.marker)?;
            Ok(Record::Function {
                event: Event::Function {
                    header,
                    name: c_string(&e.name),
                    file: c_string(&e.file),
                    line: e.code.line,
                    location: None,
                },
                code: code_ref(&e.code),
            })
        }
        bpf::MARKER_FUNCTION_REF => {
            let e: &function_ref_event = read(data, raw.marker)?;
            Ok(Record::FunctionRef {
                header,
                code: code_ref(&e.code),
            })
        }
        bpf::MARKER_FLOW => {
            let e: &flow_event = read(data, raw.marker)?;
            let kind = match e.kind {
                0 => FlowKind::Entry,
                1 => FlowKind::Return,
                _ => FlowKind::Line,
            };
            Ok(Record::Flow(FlowRecord {
                header,
                kind,
                line: e.line,
                name: c_string(&e.name),
                file: c_string(&e.file),
            }))
        }
        bpf::MARKER_EXEC => Ok(Record::Exec { pid: raw.pid }),
        other => Err(DecodeError::UnknownMarker(other)),
    }
}

fn code_ref(c: &crate::bpf::code_ref) -> CodeRef {
    CodeRef {
        pid: c.tgid,
        mm: c.mm,
        name_ptr: c.name_ptr,
        file_ptr: c.file_ptr,
        line: c.line,
    }
}

fn read<T: plain::Plain>(data: &[u8], marker: u8) -> Result<&T, DecodeError> {
    plain::from_bytes(data).map_err(|e| match e {
        plain::Error::BadAlignment => DecodeError::Misaligned(marker),
        plain::Error::TooShort => DecodeError::Truncated {
            marker,
            len: data.len(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain #[repr(C)] value for a test fixture.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn c_strings_end_at_the_first_nul_or_the_array() {
        let raw = |s: &[u8]| s.iter().map(|&b| b as i8).collect::<Vec<i8>>();
        assert_eq!(c_string(&raw(b"json\0xx\0")), "json");
        assert_eq!(c_string(&raw(b"full")), "full");
        assert_eq!(c_string(&raw(b"\0rest")), "");
        assert_eq!(c_string(&raw(b"caf\xe9\0")), "caf\u{fffd}");
    }

    fn header(marker: u8) -> event_header {
        event_header {
            start_ns: 100,
            end_ns: 350,
            pid: 7,
            tid: 8,
            marker,
            depth: 1,
            source: 0,
            _pad: [0; 5],
        }
    }

    #[test]
    fn decodes_import_with_invalid_utf8_and_no_nul() {
        let mut e = import_event {
            h: header(bpf::MARKER_IMPORT),
            found: 0,
            ..Default::default()
        };
        for (i, b) in e.module.iter_mut().enumerate() {
            *b = if i == 3 { -1 } else { b'a' as i8 };
        }
        let data = bytes_of(&e);
        let Record::Event(Event::Import {
            header,
            module,
            found,
            ..
        }) = decode(&data).unwrap()
        else {
            panic!("not an import")
        };
        assert!(!found);
        assert_eq!(header.duration_ns(), Some(250));
        assert_eq!(module.chars().count(), 128);
        assert!(module.contains('\u{fffd}'));
    }

    #[test]
    fn audit_by_address_keeps_the_file_and_address_and_an_unread_count_is_none() {
        let e = audit_ref_event {
            h: header(bpf::MARKER_AUDIT_REF),
            nargs: -1,
            image: 3,
            _pad: 0,
            name_vaddr: 0x6d_2040,
        };
        assert_eq!(
            decode(&bytes_of(&e)).unwrap(),
            Record::AuditRef {
                header: Header {
                    start_ns: Some(100),
                    end_ns: 350,
                    pid: 7,
                    tid: 8,
                    depth: 1,
                    source: Default::default(),
                },
                nargs: None,
                image: 3,
                name_vaddr: 0x6d_2040,
            }
        );
    }

    #[test]
    fn gc_without_start_has_no_duration_or_generation() {
        let mut h = header(bpf::MARKER_GC);
        h.start_ns = 0;
        let e = gc_event {
            h,
            collected: 5,
            generation: -1,
            _pad: 0,
        };
        let data = bytes_of(&e);
        let Record::Event(ev) = decode(&data).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(ev.header().duration_ns(), None);
        assert!(matches!(
            ev,
            Event::Gc {
                generation: None,
                collected: 5,
                ..
            }
        ));
    }

    #[test]
    fn process_record_gives_command_line_and_environment() {
        let mut e = process_event {
            h: header(bpf::MARKER_PROCESS),
            ..Default::default()
        };
        let args = b"python3\0app.py\0";
        let env = b"HOME=/root\0OTEL_SERVICE_NAME=shop\0";
        for (d, s) in e.args.iter_mut().zip(args) {
            *d = *s as i8;
        }
        for (d, s) in e.env.iter_mut().zip(env) {
            *d = *s as i8;
        }
        e.args_len = args.len() as u32;
        e.env_len = env.len() as u32;
        let data = bytes_of(&e);
        let Record::Process(p) = decode(&data).unwrap() else {
            panic!("not a process record")
        };
        assert_eq!(p.command_line().as_deref(), Some("python3 app.py"));
        let vars: Vec<_> = p.environment().collect();
        assert_eq!(vars, vec![("HOME", "/root"), ("OTEL_SERVICE_NAME", "shop")]);
        // Truncated mid-entry: the cut entry is dropped, not read as `OTEL_SERVICE_NAME=sh`.
        let cut = ProcessRecord {
            env: &env[..env.len() - 3],
            env_truncated: true,
            ..p.clone()
        };
        assert_eq!(
            cut.environment().collect::<Vec<_>>(),
            vec![("HOME", "/root")]
        );
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let e = gc_event {
            h: header(bpf::MARKER_GC),
            ..Default::default()
        };
        let data = bytes_of(&e);
        for len in 0..data.len() {
            assert!(matches!(
                decode(&data[..len]),
                Err(DecodeError::Truncated { .. })
            ));
        }
        let h = header(200);
        assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::UnknownMarker(200)));
    }

    // Ring-buffer records are written by the BPF side, but their strings come from the traced
    // process: whatever the bytes and length, decoding returns a record or an error.
    mod untrusted {
        use super::super::decode;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_records_never_panic(data in proptest::collection::vec(any::<u8>(), 0..20000)) {
                let _ = decode(&data);
            }

            #[test]
            fn every_marker_with_arbitrary_bodies_never_panics(
                marker in 0u8..12,
                body in proptest::collection::vec(any::<u8>(), 0..20000),
            ) {
                // A header that names `marker`, then anything: lengths and strings unchecked.
                let mut data = vec![0u8; 32];
                data[24] = marker;
                data.extend_from_slice(&body);
                // 8-byte alignment, as libbpf's ring buffer gives.
                let aligned: Vec<u64> = data
                    .chunks(8)
                    .map(|c| {
                        let mut w = [0u8; 8];
                        w[..c.len()].copy_from_slice(c);
                        u64::from_ne_bytes(w)
                    })
                    .collect();
                // SAFETY: viewing a Vec<u64>'s memory as bytes, within its length.
                let bytes = unsafe {
                    std::slice::from_raw_parts(aligned.as_ptr().cast::<u8>(), aligned.len() * 8)
                };
                let _ = decode(bytes);
            }
        }
    }
}
