//! GC, import and function spans with parent/child per thread.
//!
//! Events arrive when they end, children before their parents, each with the number of spans
//! still in progress on its thread (`depth`: imports and, with function probes, calls). An
//! event at depth d > 0 belongs to the import or call that will end at depth d − 1 on the same
//! thread, so completed subtrees wait in `pending[d − 1]` until it ends; a subtree whose root
//! ends at depth 0 gets its trace ID and is ready to export.
//!
//! A span that ends adopts every waiting subtree at its level or deeper that started after it
//! did: deeper ones had a parent in between that was not reported (a call shorter than
//! --min-duration) or whose end was lost, and it is their nearest reported ancestor. Subtrees
//! that started before it, or whose thread went idle, are released as roots (orphans).
//!
//! Over 500 lines: the assembler and the span encoder are one concern (530 lines), and its
//! tests (160) check the nesting and the bytes against prost's.
use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
#[cfg(test)]
use opentelemetry_proto::tonic::trace::v1::{Span, Status};

use super::attrs;
use super::fields::{span, status};
use super::ids::IdGenerator;
use super::location::CodeLocation;
use super::wire::{self, Value};
use super::FastHash;
use crate::decode::{Event, SignalSource};
use crate::model::clock::Clock;

/// A span as pyusdt makes them: what tells it apart, without the OTLP message's strings
/// (`encode` writes its protobuf bytes directly; `to_proto`, in tests, builds it with prost).
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData {
    /// Zero until the span's subtree is released.
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Zero for a root (span IDs are never zero).
    pub parent_span_id: [u8; 8],
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub tid: u32,
    pub what: What,
    /// `pyusdt.sampling.ratio` of a function span.
    pub sampling_ratio: Option<f64>,
    /// `pyusdt.signal.source` of a GC or import span (function spans come from markers only).
    pub source: SignalSource,
}

#[derive(Debug, Clone, PartialEq)]
pub enum What {
    Gc {
        generation: i32,
        collected: i64,
    },
    Import {
        module: Box<str>,
        found: bool,
    },
    /// The called code, shared by all its calls' spans.
    Function(Arc<CodeLocation>),
}

const IMPORT_NOT_FOUND: &str = "module not found (the import raised)";

impl SpanData {
    /// The span's name as `to_proto` gives it (allocates; for tests and debugging).
    pub fn name(&self) -> String {
        match &self.what {
            What::Gc { .. } => "gc.collect".into(),
            What::Import { module, .. } => format!("import {module}"),
            What::Function(location) => location.name.to_string(),
        }
    }

    /// The OTLP message of the span, built with prost: only for the tests, which check that
    /// `encode` writes the same bytes.
    #[cfg(test)]
    pub fn to_proto(&self) -> Span {
        let tid = attrs::int(attrs::THREAD_ID, i64::from(self.tid));
        let mut span = Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            parent_span_id: if self.parent_span_id == [0; 8] {
                Vec::new()
            } else {
                self.parent_span_id.to_vec()
            },
            name: self.name(),
            kind: SpanKind::Internal as i32,
            start_time_unix_nano: self.start_time_unix_nano,
            end_time_unix_nano: self.end_time_unix_nano,
            ..Default::default()
        };
        match &self.what {
            What::Gc {
                generation,
                collected,
            } => {
                span.attributes = vec![
                    attrs::int(attrs::GC_GENERATION, i64::from(*generation)),
                    attrs::int(attrs::GC_COLLECTED_OBJECTS, *collected),
                    tid,
                    attrs::string(attrs::SIGNAL_SOURCE, self.source.label()),
                ];
            }
            What::Import { module, found } => {
                span.attributes = vec![
                    attrs::string(attrs::IMPORT_MODULE, module.as_ref()),
                    attrs::boolean(attrs::IMPORT_FOUND, *found),
                    tid,
                    attrs::string(attrs::SIGNAL_SOURCE, self.source.label()),
                ];
                if !found {
                    span.status = Some(Status {
                        code: StatusCode::Error as i32,
                        message: IMPORT_NOT_FOUND.into(),
                    });
                }
            }
            What::Function(location) => {
                span.attributes = vec![
                    attrs::string(attrs::CODE_FUNCTION_NAME, location.name.as_ref()),
                    attrs::string(attrs::CODE_FILE_PATH, location.file.as_ref()),
                    attrs::int(attrs::CODE_LINE_NUMBER, i64::from(location.line)),
                    tid,
                ];
                if let Some(r) = self.sampling_ratio {
                    span.attributes
                        .push(attrs::double("pyusdt.sampling.ratio", r));
                }
            }
        }
        span
    }

    /// Writes the span as a `Span` message in field `field`: the bytes prost writes for
    /// `to_proto()` (checked by the tests).
    pub fn encode(&self, buf: &mut Vec<u8>, field: u32) {
        wire::message(buf, field, 2, |buf| {
            wire::bytes(buf, span::TRACE_ID, &self.trace_id);
            wire::bytes(buf, span::SPAN_ID, &self.span_id);
            if self.parent_span_id != [0; 8] {
                wire::bytes(buf, span::PARENT_SPAN_ID, &self.parent_span_id);
            }
            match &self.what {
                What::Gc { .. } => wire::bytes(buf, span::NAME, b"gc.collect"),
                What::Import { module, .. } => {
                    const PREFIX: &[u8] = b"import ";
                    wire::key(buf, span::NAME, wire::LEN);
                    wire::varint(buf, (PREFIX.len() + module.len()) as u64);
                    buf.extend_from_slice(PREFIX);
                    buf.extend_from_slice(module.as_bytes());
                }
                What::Function(location) => {
                    wire::bytes_opt(buf, span::NAME, location.name.as_bytes())
                }
            }
            wire::varint_opt(buf, span::KIND, SpanKind::Internal as u64);
            wire::fixed64_opt(buf, span::START_TIME_UNIX_NANO, self.start_time_unix_nano);
            wire::fixed64_opt(buf, span::END_TIME_UNIX_NANO, self.end_time_unix_nano);
            let tid = Value::Int(i64::from(self.tid));
            let source = Value::Str(self.source.label().as_bytes());
            match &self.what {
                What::Gc {
                    generation,
                    collected,
                } => {
                    let g = Value::Int(i64::from(*generation));
                    wire::attribute(buf, span::ATTRIBUTES, attrs::GC_GENERATION, g);
                    wire::attribute(
                        buf,
                        span::ATTRIBUTES,
                        attrs::GC_COLLECTED_OBJECTS,
                        Value::Int(*collected),
                    );
                    wire::attribute(buf, span::ATTRIBUTES, attrs::THREAD_ID, tid);
                    wire::attribute(buf, span::ATTRIBUTES, attrs::SIGNAL_SOURCE, source);
                }
                What::Import { module, found } => {
                    let m = Value::Str(module.as_bytes());
                    wire::attribute(buf, span::ATTRIBUTES, attrs::IMPORT_MODULE, m);
                    wire::attribute(
                        buf,
                        span::ATTRIBUTES,
                        attrs::IMPORT_FOUND,
                        Value::Bool(*found),
                    );
                    wire::attribute(buf, span::ATTRIBUTES, attrs::THREAD_ID, tid);
                    wire::attribute(buf, span::ATTRIBUTES, attrs::SIGNAL_SOURCE, source);
                    if !found {
                        wire::message(buf, span::STATUS, 1, |buf| {
                            wire::bytes(buf, status::MESSAGE, IMPORT_NOT_FOUND.as_bytes());
                            wire::varint_opt(buf, status::CODE, StatusCode::Error as u64);
                        });
                    }
                }
                What::Function(location) => {
                    // code.function.name, code.file.path, code.line.number: encoded once.
                    buf.extend_from_slice(location.span_attributes());
                    wire::attribute(buf, span::ATTRIBUTES, attrs::THREAD_ID, tid);
                    if let Some(r) = self.sampling_ratio {
                        wire::attribute(
                            buf,
                            span::ATTRIBUTES,
                            "pyusdt.sampling.ratio",
                            Value::Double(r),
                        );
                    }
                }
            }
        });
    }
}

/// A completed span and its descendants, the subtree root first.
type Subtree = Vec<SpanData>;

#[derive(Default)]
struct ThreadState {
    /// `pending[level]`: subtrees waiting for the import that ends at depth `level`.
    pending: Vec<Vec<Subtree>>,
    /// The subtrees in `pending`, all levels together.
    pending_len: usize,
    /// When this thread last produced a span (CLOCK_MONOTONIC ns).
    last_ns: u64,
}

impl ThreadState {
    fn wait(&mut self, level: usize, subtree: Subtree) {
        self.pending[level].push(subtree);
        self.pending_len += 1;
        debug_assert_eq!(
            self.pending_len,
            self.pending.iter().map(Vec::len).sum::<usize>()
        );
    }

    /// The subtrees waiting at `level` or deeper, moved to `out` (shallowest level first).
    /// The emptied levels keep their memory for the next subtrees.
    fn take_from(&mut self, level: usize, out: &mut Vec<Subtree>) {
        for waiting in self.pending.iter_mut().skip(level) {
            self.pending_len -= waiting.len();
            out.append(waiting);
        }
    }
}

pub struct SpanAssembler {
    ids: IdGenerator,
    clock: Clock,
    threads: HashMap<(u32, u32), ThreadState, FastHash>,
    /// Spans ready for export, with the PID whose resource they belong under.
    ready: Vec<(u32, SpanData)>,
    /// Subtrees released without their parent (lost end, exited thread, pairing bound).
    pub orphaned: u64,
    /// Events without a span: their start was not seen, so they have no duration.
    pub without_start: u64,
    /// The sampling ratio of the function event being recorded (`record_sampled`).
    sampling_ratio: Option<f64>,
    /// The subtrees a span may adopt, kept between events for its memory.
    scratch: Vec<Subtree>,
    /// Emptied subtrees, kept for their memory: most spans of nested calls and imports make
    /// one, which would otherwise be an allocation each.
    spare: Vec<Subtree>,
}

/// At most this many emptied subtrees are kept, each of at most `MAX_SPARE_CAPACITY` spans
/// (about 200 KB at most, kept after a burst).
const MAX_SPARE: usize = 128;
const MAX_SPARE_CAPACITY: usize = 16;

/// A thread holding more waiting spans than this releases them (bounded memory).
const MAX_PENDING_PER_THREAD: usize = 4096;

impl SpanAssembler {
    pub fn new(clock: Clock) -> SpanAssembler {
        SpanAssembler {
            ids: IdGenerator::new(),
            clock,
            threads: HashMap::default(),
            ready: Vec::new(),
            orphaned: 0,
            without_start: 0,
            sampling_ratio: None,
            scratch: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// As `record`, for a call seen while its process's function probes were sampled at
    /// `ratio` (the overhead budget): the span says so (`pyusdt.sampling.ratio`).
    pub fn record_sampled(&mut self, event: &Event<'_>, ratio: Option<f64>) {
        self.sampling_ratio = ratio;
        self.record(event);
        self.sampling_ratio = None;
    }

    /// Takes a GC or import event (audit events have no span).
    pub fn record(&mut self, event: &Event<'_>) {
        if matches!(event, Event::Audit { .. }) {
            return;
        }
        let h = *event.header();
        let depth = usize::from(h.depth);
        let is_parent = matches!(event, Event::Import { .. } | Event::Function { .. });
        let span = self.span_of(event);
        // One lookup of the thread; spans are released through `out`, beside it.
        let state = self.threads.entry((h.pid, h.tid)).or_default();
        let mut out = Release {
            ids: &self.ids,
            ready: &mut self.ready,
            orphaned: &mut self.orphaned,
            spare: &mut self.spare,
            pid: h.pid,
        };
        state.last_ns = h.end_ns;
        // What waits at `depth` or deeper ran inside an import or call ending at `depth`.
        let mut candidates = std::mem::take(&mut self.scratch);
        if is_parent {
            state.take_from(depth, &mut candidates);
        }

        let Some(span) = span else {
            self.without_start += 1;
            for orphan in candidates.drain(..) {
                out.subtree(orphan, true);
            }
            self.scratch = candidates;
            return;
        };
        // Only what ran within this span is its child. A subtree that started before it ran
        // in an earlier sibling that was not reported (too short, excluded, or its end lost):
        // it keeps waiting for the enclosing span, one level up (a root at depth 0).
        let start = span.start_time_unix_nano;
        let is_child = |c: &Subtree| c[0].start_time_unix_nano >= start;
        let child_spans: usize = candidates
            .iter()
            .filter(|c| is_child(c))
            .map(Vec::len)
            .sum();
        if depth > 0 && state.pending.len() < depth {
            state.pending.resize_with(depth, Vec::new);
        }
        if depth == 0 && child_spans == 0 {
            // A root without children (most spans): no subtree to build.
            for orphan in candidates.drain(..) {
                out.subtree(orphan, true);
            }
            self.scratch = candidates;
            out.root(span);
            return;
        }
        let mut subtree = out.new_subtree(1 + child_spans);
        let span_id = span.span_id;
        subtree.push(span);
        for mut c in candidates.drain(..) {
            if is_child(&c) {
                c[0].parent_span_id = span_id;
                subtree.append(&mut c);
                out.recycle(c);
            } else if depth == 0 {
                out.subtree(c, true);
            } else {
                state.wait(depth - 1, c);
            }
        }
        self.scratch = candidates;
        if depth == 0 {
            out.subtree(subtree, false);
            return;
        }
        state.wait(depth - 1, subtree);
        if state.pending_len > MAX_PENDING_PER_THREAD {
            let mut all = Vec::new();
            state.take_from(0, &mut all);
            for orphan in all {
                out.subtree(orphan, true);
            }
        }
    }

    /// Gives each subtree a trace ID and makes it ready; `orphans` are counted as such.
    fn release(&mut self, pid: u32, subtrees: Vec<Subtree>, orphans: bool) {
        let mut out = Release {
            ids: &self.ids,
            ready: &mut self.ready,
            orphaned: &mut self.orphaned,
            spare: &mut self.spare,
            pid,
        };
        for subtree in subtrees {
            out.subtree(subtree, orphans);
        }
    }

    /// Releases subtrees of threads idle for longer than `idle_ns` (their parent's end was
    /// lost or the process is gone), or of every thread when `idle_ns` is 0 (shutdown).
    pub fn release_stale(&mut self, now_ns: u64, idle_ns: u64) {
        let stale: Vec<(u32, u32)> = self
            .threads
            .iter()
            .filter(|(_, s)| idle_ns == 0 || now_ns.saturating_sub(s.last_ns) > idle_ns)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            if let Some(mut state) = self.threads.remove(&key) {
                let mut all = Vec::new();
                state.take_from(0, &mut all);
                self.release(key.0, all, true);
            }
        }
        // A busy thread under a frame that never returns (a serve loop) would hold its spans
        // forever: those waiting longer than `idle_ns` go out as roots.
        let cutoff = self.clock.unix_nanos(now_ns).saturating_sub(idle_ns);
        let mut old = Vec::new();
        for ((pid, _), state) in &mut self.threads {
            for level in &mut state.pending {
                if level.iter().all(|t| t[0].end_time_unix_nano >= cutoff) {
                    continue;
                }
                let (keep, stale): (Vec<Subtree>, Vec<Subtree>) = std::mem::take(level)
                    .into_iter()
                    .partition(|t| t[0].end_time_unix_nano >= cutoff);
                *level = keep;
                state.pending_len -= stale.len();
                old.extend(stale.into_iter().map(|t| (*pid, t)));
            }
        }
        for (pid, subtree) in old {
            self.release(pid, vec![subtree], true);
        }
    }

    /// Spans ready for export (drained).
    pub fn take_ready(&mut self) -> Vec<(u32, SpanData)> {
        std::mem::take(&mut self.ready)
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    fn span_of(&self, event: &Event<'_>) -> Option<SpanData> {
        let h = event.header();
        let start = h.start_ns?;
        let span_id = self.ids.span_id_bytes();
        let (what, sampling_ratio) = match event {
            Event::Gc {
                generation,
                collected,
                ..
            } => (
                What::Gc {
                    generation: (*generation)?,
                    collected: *collected,
                },
                None,
            ),
            Event::Import { module, found, .. } => (
                What::Import {
                    module: module.as_ref().into(),
                    found: *found,
                },
                None,
            ),
            Event::Function {
                name,
                file,
                line,
                location,
                ..
            } => {
                // Interned by CodeNames: the span shares it. Otherwise (tests) it is made here.
                let location = match location {
                    Some(l) => Arc::clone(l),
                    None => CodeLocation::new(name, file, *line),
                };
                (What::Function(location), self.sampling_ratio)
            }
            Event::Audit { .. } => return None,
        };
        Some(SpanData {
            trace_id: [0; 16],
            span_id,
            parent_span_id: [0; 8],
            start_time_unix_nano: self.clock.unix_nanos(start),
            end_time_unix_nano: self.clock.unix_nanos(h.end_ns),
            tid: h.tid,
            what,
            sampling_ratio,
            source: h.source,
        })
    }
}

/// Where completed subtrees go: the ready spans of one process, beside a borrowed thread state.
struct Release<'a> {
    ids: &'a IdGenerator,
    ready: &'a mut Vec<(u32, SpanData)>,
    orphaned: &'a mut u64,
    spare: &'a mut Vec<Subtree>,
    pid: u32,
}

impl Release<'_> {
    /// Gives the subtree a trace ID and makes it ready; an orphan is counted as such.
    fn subtree(&mut self, mut subtree: Subtree, orphan: bool) {
        if orphan {
            *self.orphaned += 1;
        }
        let trace_id = self.ids.trace_id_bytes();
        for mut span in subtree.drain(..) {
            span.trace_id = trace_id;
            self.ready.push((self.pid, span));
        }
        self.recycle(subtree);
    }

    /// A root span without children: a subtree of its own.
    fn root(&mut self, mut span: SpanData) {
        span.trace_id = self.ids.trace_id_bytes();
        self.ready.push((self.pid, span));
    }

    /// An empty subtree with room for `spans`, from the spare ones when there are.
    fn new_subtree(&mut self, spans: usize) -> Subtree {
        let mut subtree = self.spare.pop().unwrap_or_default();
        subtree.reserve(spans);
        subtree
    }

    /// Keeps an emptied subtree's memory for the next one (within bounds).
    fn recycle(&mut self, subtree: Subtree) {
        debug_assert!(subtree.is_empty());
        if self.spare.len() < MAX_SPARE && subtree.capacity() <= MAX_SPARE_CAPACITY {
            self.spare.push(subtree);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::decode::Header;

    fn header(tid: u32, start: u64, end: u64, depth: u8) -> Header {
        Header {
            start_ns: Some(start),
            end_ns: end,
            pid: 1,
            tid,
            depth,
            source: Default::default(),
        }
    }

    fn import(tid: u32, m: &'static str, start: u64, end: u64, depth: u8) -> Event<'static> {
        Event::Import {
            header: header(tid, start, end, depth),
            module: Cow::Borrowed(m),
            found: true,
            nesting: 0,
        }
    }

    fn gc(tid: u32, start: u64, end: u64, depth: u8) -> Event<'static> {
        Event::Gc {
            header: header(tid, start, end, depth),
            generation: Some(0),
            collected: 1,
        }
    }

    fn by_name(spans: &[(u32, SpanData)], name: &str) -> Span {
        spans
            .iter()
            .find(|(_, s)| s.name() == name)
            .unwrap()
            .1
            .to_proto()
    }

    #[test]
    fn children_end_first_and_find_their_parents() {
        let mut a = SpanAssembler::new(Clock::now());
        // Thread 1: import a { import b { gc } ; gc }, and thread 2 interleaved.
        a.record(&gc(1, 30, 31, 2));
        a.record(&import(2, "other", 10, 40, 0));
        a.record(&import(1, "b", 20, 35, 1));
        a.record(&gc(1, 36, 37, 1));
        assert_eq!(a.ready_len(), 1, "only thread 2's root is complete");
        a.record(&import(1, "a", 10, 50, 0));
        let spans = a.take_ready();
        assert_eq!(spans.len(), 5);
        let (sa, sb) = (by_name(&spans, "import a"), by_name(&spans, "import b"));
        assert!(sa.parent_span_id.is_empty());
        assert_eq!(sb.parent_span_id, sa.span_id);
        let gcs: Vec<_> = spans
            .iter()
            .filter(|(_, s)| s.name() == "gc.collect")
            .map(|(_, s)| s.to_proto())
            .collect();
        assert_eq!(gcs.len(), 2);
        assert!(gcs.iter().any(|g| g.parent_span_id == sb.span_id));
        assert!(gcs.iter().any(|g| g.parent_span_id == sa.span_id));
        assert!(spans
            .iter()
            .filter(|(_, s)| s.name() != "import other")
            .all(|(_, s)| s.trace_id[..] == sa.trace_id[..]));
        assert_ne!(by_name(&spans, "import other").trace_id, sa.trace_id);
        assert_eq!(a.orphaned, 0);
    }

    #[test]
    fn a_span_from_an_unreported_sibling_waits_for_the_enclosing_span() {
        let mut a = SpanAssembler::new(Clock::now());
        // f { g (not reported) { gc } ; h (reported) } : the gc belongs under f, not h.
        a.record(&gc(1, 12, 13, 2));
        a.record(&import(1, "h", 20, 30, 1));
        a.record(&import(1, "f", 10, 40, 0));
        let spans = a.take_ready();
        let (f, h) = (by_name(&spans, "import f"), by_name(&spans, "import h"));
        let g = by_name(&spans, "gc.collect");
        assert_eq!(g.parent_span_id, f.span_id, "the gc waited for f");
        assert_eq!(h.parent_span_id, f.span_id);
        assert_eq!(a.orphaned, 0);
    }

    #[test]
    fn a_lost_import_end_does_not_lend_its_children_to_the_next_import() {
        let mut a = SpanAssembler::new(Clock::now());
        a.record(&gc(1, 30, 31, 1)); // inside import B, whose end is lost
        a.record(&import(1, "c", 40, 50, 0)); // C ends at the same depth later
        let spans = a.take_ready();
        let c = by_name(&spans, "import c");
        let g = by_name(&spans, "gc.collect");
        assert!(g.parent_span_id.is_empty(), "the gc is not C's child");
        assert_ne!(g.trace_id, c.trace_id);
        assert_eq!(a.orphaned, 1);
    }

    #[test]
    fn the_nearest_reported_ancestor_adopts_and_idle_threads_release() {
        let mut a = SpanAssembler::new(Clock::now());
        a.record(&gc(1, 1, 2, 3)); // its parents at depths 1 and 2 are not reported
        a.record(&import(1, "top", 0, 10, 0));
        let spans = a.take_ready();
        assert_eq!(spans.len(), 2);
        assert_eq!(
            by_name(&spans, "gc.collect").parent_span_id,
            by_name(&spans, "import top").span_id
        );
        assert_eq!(a.orphaned, 0);
        a.record(&gc(1, 11, 12, 1));
        a.release_stale(0, 0);
        assert_eq!(a.take_ready().len(), 1);
        assert_eq!(a.orphaned, 1);
    }

    #[test]
    fn encoded_spans_are_the_bytes_prost_writes() {
        let mut a = SpanAssembler::new(Clock::now());
        a.record(&gc(1, 30, 31, 1));
        a.record(&Event::Import {
            header: header(1, 20, 40, 0),
            module: Cow::Borrowed("missing.module"),
            found: false,
            nesting: 0,
        });
        a.record(&import(2, "json", 10, 50, 0));
        let long = "x".repeat(300);
        a.record_sampled(
            &Event::Function {
                header: header(3, 5, 6, 0),
                name: Cow::Borrowed("handle"),
                file: Cow::Borrowed(&long),
                line: 12,
                location: None,
            },
            Some(0.25),
        );
        a.record(&Event::Function {
            header: header(3, 7, 9, 0),
            name: Cow::Borrowed(""),
            file: Cow::Borrowed("a.py"),
            line: 0,
            location: None,
        });
        let spans = a.take_ready();
        assert_eq!(spans.len(), 5);
        assert!(spans.iter().any(|(_, s)| s.parent_span_id != [0; 8]));
        for (_, span) in &spans {
            let mut buf = vec![1, 2];
            span.encode(&mut buf, 2);
            let mut want = vec![1, 2];
            prost::encoding::message::encode(2, &span.to_proto(), &mut want);
            assert_eq!(buf, want, "{}", span.name());
        }
    }
}
