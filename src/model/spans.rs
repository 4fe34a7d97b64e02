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
use std::collections::HashMap;

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span, Status};

use super::attrs;
use super::ids::IdGenerator;
use crate::decode::Event;
use crate::report::clock::Clock;

/// A completed span and its descendants, the subtree root first.
type Subtree = Vec<Span>;

#[derive(Default)]
struct ThreadState {
    /// `pending[level]`: subtrees waiting for the import that ends at depth `level`.
    pending: Vec<Vec<Subtree>>,
    /// When this thread last produced a span (CLOCK_MONOTONIC ns).
    last_ns: u64,
}

impl ThreadState {
    fn pending_len(&self) -> usize {
        self.pending.iter().flatten().map(Vec::len).sum()
    }

    /// The subtrees waiting at `level` or deeper, moved to `out` (shallowest level first).
    /// The emptied levels keep their memory for the next subtrees.
    fn take_from(&mut self, level: usize, out: &mut Vec<Subtree>) {
        for waiting in self.pending.iter_mut().skip(level) {
            out.append(waiting);
        }
    }
}

pub struct SpanAssembler {
    ids: IdGenerator,
    clock: Clock,
    threads: HashMap<(u32, u32), ThreadState>,
    /// Spans ready for export, with the PID whose resource they belong under.
    ready: Vec<(u32, Span)>,
    /// Subtrees released without their parent (lost end, exited thread, pairing bound).
    pub orphaned: u64,
    /// Events without a span: their start was not seen, so they have no duration.
    pub without_start: u64,
    /// The sampling ratio of the function event being recorded (`record_sampled`).
    sampling_ratio: Option<f64>,
}

/// A thread holding more waiting spans than this releases them (bounded memory).
const MAX_PENDING_PER_THREAD: usize = 4096;

impl SpanAssembler {
    pub fn new(clock: Clock) -> SpanAssembler {
        SpanAssembler {
            ids: IdGenerator::new(),
            clock,
            threads: HashMap::new(),
            ready: Vec::new(),
            orphaned: 0,
            without_start: 0,
            sampling_ratio: None,
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
            pid: h.pid,
        };
        state.last_ns = h.end_ns;
        // What waits at `depth` or deeper ran inside an import or call ending at `depth`.
        let mut candidates: Vec<Subtree> = Vec::new();
        if is_parent {
            state.take_from(depth, &mut candidates);
        }

        let Some(span) = span else {
            self.without_start += 1;
            for orphan in candidates {
                out.subtree(orphan, true);
            }
            return;
        };
        // Only what ran within this span is its child. A subtree that started before it ran
        // in an earlier sibling that was not reported (too short, excluded, or its end lost):
        // it keeps waiting for the enclosing span, one level up (a root at depth 0).
        let (children, earlier): (Vec<Subtree>, Vec<Subtree>) = candidates
            .into_iter()
            .partition(|c| c[0].start_time_unix_nano >= span.start_time_unix_nano);
        if depth == 0 {
            for orphan in earlier {
                out.subtree(orphan, true);
            }
        } else if !earlier.is_empty() {
            if state.pending.len() < depth {
                state.pending.resize_with(depth, Vec::new);
            }
            state.pending[depth - 1].extend(earlier);
        }
        if depth == 0 && children.is_empty() {
            // A root without children (most spans): no subtree to build.
            out.subtree(std::iter::once(span), false);
            return;
        }
        let mut subtree = Vec::with_capacity(1 + children.iter().map(Vec::len).sum::<usize>());
        subtree.push(span);
        for mut child in children {
            child[0].parent_span_id = subtree[0].span_id.clone();
            subtree.append(&mut child);
        }
        if depth == 0 {
            out.subtree(subtree, false);
            return;
        }
        let level = depth - 1;
        if state.pending.len() <= level {
            state.pending.resize_with(level + 1, Vec::new);
        }
        state.pending[level].push(subtree);
        if state.pending_len() > MAX_PENDING_PER_THREAD {
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
                let (keep, stale): (Vec<Subtree>, Vec<Subtree>) = std::mem::take(level)
                    .into_iter()
                    .partition(|t| t[0].end_time_unix_nano >= cutoff);
                *level = keep;
                old.extend(stale.into_iter().map(|t| (*pid, t)));
            }
        }
        for (pid, subtree) in old {
            self.release(pid, vec![subtree], true);
        }
    }

    /// Spans ready for export (drained).
    pub fn take_ready(&mut self) -> Vec<(u32, Span)> {
        std::mem::take(&mut self.ready)
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    fn span_of(&self, event: &Event<'_>) -> Option<Span> {
        let h = event.header();
        let start = h.start_ns?;
        let mut span = Span {
            span_id: self.ids.span_id(),
            kind: SpanKind::Internal as i32,
            start_time_unix_nano: self.clock.unix_nanos(start),
            end_time_unix_nano: self.clock.unix_nanos(h.end_ns),
            ..Default::default()
        };
        match event {
            Event::Gc {
                generation,
                collected,
                ..
            } => {
                span.name = "gc.collect".into();
                span.attributes = vec![
                    attrs::int(attrs::GC_GENERATION, i64::from((*generation)?)),
                    attrs::int(attrs::GC_COLLECTED_OBJECTS, *collected),
                    attrs::int(attrs::THREAD_ID, i64::from(h.tid)),
                ];
            }
            Event::Import { module, found, .. } => {
                span.name = format!("import {module}");
                span.attributes = vec![
                    attrs::string(attrs::IMPORT_MODULE, module.as_ref()),
                    attrs::boolean(attrs::IMPORT_FOUND, *found),
                    attrs::int(attrs::THREAD_ID, i64::from(h.tid)),
                ];
                if !found {
                    span.status = Some(Status {
                        code: StatusCode::Error as i32,
                        message: "module not found (the import raised)".into(),
                    });
                }
            }
            Event::Function {
                name, file, line, ..
            } => {
                span.name = name.to_string();
                span.attributes = vec![
                    attrs::string("code.function.name", name.as_ref()),
                    attrs::string("code.file.path", file.as_ref()),
                    attrs::int("code.line.number", i64::from(*line)),
                    attrs::int(attrs::THREAD_ID, i64::from(h.tid)),
                ];
                if let Some(r) = self.sampling_ratio {
                    span.attributes
                        .push(attrs::double("pyusdt.sampling.ratio", r));
                }
            }
            Event::Audit { .. } => return None,
        }
        Some(span)
    }
}

/// Where completed subtrees go: the ready spans of one process, beside a borrowed thread state.
struct Release<'a> {
    ids: &'a IdGenerator,
    ready: &'a mut Vec<(u32, Span)>,
    orphaned: &'a mut u64,
    pid: u32,
}

impl Release<'_> {
    /// Gives the subtree a trace ID and makes it ready; an orphan is counted as such.
    fn subtree(&mut self, subtree: impl IntoIterator<Item = Span>, orphan: bool) {
        if orphan {
            *self.orphaned += 1;
        }
        let mut trace_id = self.ids.trace_id();
        let mut spans = subtree.into_iter().peekable();
        while let Some(mut span) = spans.next() {
            // The last span takes the ID itself, the others a copy.
            span.trace_id = if spans.peek().is_some() {
                trace_id.clone()
            } else {
                std::mem::take(&mut trace_id)
            };
            self.ready.push((self.pid, span));
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

    fn by_name(spans: &[(u32, Span)], name: &str) -> Span {
        spans
            .iter()
            .find(|(_, s)| s.name == name)
            .unwrap()
            .1
            .clone()
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
            .filter(|(_, s)| s.name == "gc.collect")
            .map(|(_, s)| s)
            .collect();
        assert_eq!(gcs.len(), 2);
        assert!(gcs.iter().any(|g| g.parent_span_id == sb.span_id));
        assert!(gcs.iter().any(|g| g.parent_span_id == sa.span_id));
        assert!(spans
            .iter()
            .filter(|(_, s)| s.name != "import other")
            .all(|(_, s)| s.trace_id == sa.trace_id));
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
}
