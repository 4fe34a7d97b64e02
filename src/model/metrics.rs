//! Metrics aggregated in user space per process, exported per interval:
//! `cpython.gc.collections`, `cpython.gc.collected_objects`, `cpython.gc.duration`,
//! `cpython.import.duration`, `cpython.audit.events`, and pyusdt's own counters.
//!
//! Over 500 lines with its tests (120); the aggregator itself is 515.
use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{HistogramDataPoint, Metric};

use super::attrs;
use super::location::CodeLocation;
use super::points::histogram;
pub use super::points::{counter, double_point, gauge, int_point};
use super::FastHash;
use crate::decode::{Event, SignalSource};

/// Function series per process before new functions go to the overflow series.
pub const MAX_FUNCTION_SERIES: usize = 1000;
/// Audit event names per process before new names go to the overflow series: a traced program
/// chooses them (sys.audit), so they must not grow the agent's memory or the export without end.
pub const MAX_AUDIT_SERIES: usize = 1000;

/// Bucket bounds in seconds for pauses and import times: 10 µs to 10 s.
pub const DURATION_BOUNDS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// DURATION_BOUNDS in nanoseconds: the bounds the BPF side buckets durations with when it
/// aggregates (--metrics-only), written into its `duration_bounds_ns` before load.
pub fn duration_bounds_ns() -> [u64; DURATION_BOUNDS.len()] {
    DURATION_BOUNDS.map(|s| (s * 1e9).round() as u64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
}

/// Durations of one series aggregated in the kernel (--metrics-only, bpf/pyusdt.h
/// `duration_agg`): the increase since the last read, with the lifetime minimum and maximum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelDurations {
    /// Ends seen (collections, imports).
    pub events: u64,
    /// Of them, those whose start was seen: in the buckets.
    pub timed: u64,
    pub sum_ns: u64,
    /// Per bucket of DURATION_BOUNDS (and one above the last bound).
    pub buckets: [u64; DURATION_BOUNDS.len() + 1],
    /// GC: objects collected.
    pub extra: i64,
    /// Over the process's life (the kernel cannot tell an interval's), when any was timed.
    pub min_ns: Option<u64>,
    pub max_ns: Option<u64>,
}

/// One series' increase read from the kernel (--metrics-only), as every sink takes it.
#[derive(Debug, Clone, Copy)]
pub enum KernelUpdate<'a> {
    /// Collections of `generation` (-1: start not seen).
    Gc {
        generation: i32,
        d: &'a KernelDurations,
    },
    /// Imports: `found` (the module loaded), `top_level` (not nested in another import).
    Import {
        found: bool,
        top_level: bool,
        d: &'a KernelDurations,
    },
    /// Calls of function `name` of `file`.
    Function {
        name: &'a str,
        file: &'a str,
        d: &'a KernelDurations,
    },
    /// `n` audit events named `name`.
    Audit { name: &'a str, n: u64 },
}

#[derive(Debug, Clone, Default)]
struct Hist {
    counts: [u64; DURATION_BOUNDS.len() + 1],
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    /// Kernel aggregates merged under delta temporality: the interval's min and max are not
    /// known (only the lifetime ones), so none is exported.
    min_max_unknown: bool,
}

impl Hist {
    fn record(&mut self, seconds: f64) {
        let i = DURATION_BOUNDS.partition_point(|&b| b < seconds);
        self.counts[i] += 1;
        if self.count == 0 || seconds < self.min {
            self.min = seconds;
        }
        if self.count == 0 || seconds > self.max {
            self.max = seconds;
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// Adds kernel aggregates; `lifetime_min_max`: the lifetime min and max are this
    /// histogram's (cumulative temporality).
    fn merge(&mut self, d: &KernelDurations, lifetime_min_max: bool) {
        if d.timed == 0 {
            return;
        }
        for (c, n) in self.counts.iter_mut().zip(d.buckets) {
            *c += n;
        }
        match (lifetime_min_max, d.min_ns, d.max_ns) {
            (true, Some(lo), Some(hi)) => {
                let (lo, hi) = (lo as f64 / 1e9, hi as f64 / 1e9);
                if self.count == 0 || lo < self.min {
                    self.min = lo;
                }
                if self.count == 0 || hi > self.max {
                    self.max = hi;
                }
            }
            _ => self.min_max_unknown = true,
        }
        self.count += d.timed;
        self.sum += d.sum_ns as f64 / 1e9;
    }

    fn point(&self, attributes: Vec<KeyValue>, start: u64, now: u64) -> HistogramDataPoint {
        let min_max = self.count > 0 && !self.min_max_unknown;
        HistogramDataPoint {
            attributes,
            start_time_unix_nano: start,
            time_unix_nano: now,
            count: self.count,
            sum: Some(self.sum),
            bucket_counts: self.counts.to_vec(),
            explicit_bounds: DURATION_BOUNDS.to_vec(),
            min: min_max.then_some(self.min),
            max: min_max.then_some(self.max),
            ..Default::default()
        }
    }
}

#[derive(Debug, Default)]
struct ProcessMetrics {
    /// Start of the current aggregation (first event, or the last delta export).
    start_ns: u64,
    /// By generation (-1: unknown), one entry for the three GC metrics: one lookup per
    /// collection.
    gc: BTreeMap<i64, GcSeries>,
    import_duration: BTreeMap<bool, Hist>,
    /// Looked up per event: hashed (FastHash), sorted at export.
    audit_events: HashMap<Box<str>, u64, FastHash>,
    /// Events of names beyond MAX_AUDIT_SERIES.
    audit_overflow: u64,
    /// file → function → index in `function_values` (two levels: looked up without
    /// allocating); sorted at export.
    function_series: HashMap<Box<str>, FunctionsOfFile, FastHash>,
    /// Calls and durations of each function series.
    function_values: Vec<(u64, Hist)>,
    /// Code location (`CodeLocation::id`) → its series (None: the overflow series). Calls are
    /// looked up here, by an integer, rather than by two strings.
    function_of_location: HashMap<u64, Option<usize>, FastHash>,
    /// Calls of functions beyond MAX_FUNCTION_SERIES.
    function_overflow: Option<(u64, Hist)>,
    /// Something changed since the last export (delta: nothing to send otherwise).
    dirty: bool,
    /// Where collections, imports and audit events were seen: a hook point's source is an
    /// attribute of their points (`pyusdt.signal.source`), the markers' none.
    gc_source: SignalSource,
    import_source: SignalSource,
    audit_source: SignalSource,
}

/// The attributes `a`, and the source where it is a hook point's.
fn sourced(mut a: Vec<KeyValue>, source: SignalSource) -> Vec<KeyValue> {
    if source != SignalSource::Marker {
        a.push(attrs::string(attrs::SIGNAL_SOURCE, source.label()));
    }
    a
}

#[derive(Debug, Default)]
struct GcSeries {
    collections: u64,
    collected: i64,
    /// Empty (count 0) until a collection with a known duration.
    duration: Hist,
}

/// One file's functions: name → index in `function_values`.
type FunctionsOfFile = HashMap<Box<str>, usize, FastHash>;

/// Beyond this many code locations remembered per process, the memo is cleared: a location
/// is one code object, and a program can make them without end (`exec()` or `compile()` of
/// new source).
const MAX_LOCATIONS: usize = 4 * MAX_FUNCTION_SERIES;

impl ProcessMetrics {
    /// The index of one function's series in `function_values`, made on its first call.
    /// Bounded cardinality: None beyond the limit (the overflow series).
    fn function_index(&mut self, file: &str, name: &str) -> Option<usize> {
        if let Some(&i) = self.function_series.get(file).and_then(|f| f.get(name)) {
            return Some(i);
        }
        if self.function_values.len() >= MAX_FUNCTION_SERIES {
            return None;
        }
        let i = self.function_values.len();
        self.function_values.push(Default::default());
        self.function_series
            .entry(file.into())
            .or_default()
            .insert(name.into(), i);
        Some(i)
    }

    fn function_values_at(&mut self, index: Option<usize>) -> &mut (u64, Hist) {
        match index {
            Some(i) => &mut self.function_values[i],
            None => self.function_overflow.get_or_insert_with(Default::default),
        }
    }

    /// The calls and durations of one function.
    fn function_series(&mut self, file: &str, name: &str) -> &mut (u64, Hist) {
        let index = self.function_index(file, name);
        self.function_values_at(index)
    }

    /// The calls and durations of the function at `location` (the same series as by its
    /// names).
    fn function_series_at(&mut self, location: &CodeLocation) -> &mut (u64, Hist) {
        let index = match self.function_of_location.get(&location.id) {
            Some(&index) => index,
            None => {
                let index = self.function_index(&location.file, &location.name);
                if self.function_of_location.len() >= MAX_LOCATIONS {
                    self.function_of_location.clear();
                }
                self.function_of_location.insert(location.id, index);
                index
            }
        };
        self.function_values_at(index)
    }

    /// `n` more audit events named `name`; beyond the limit, in the overflow series.
    fn add_audit(&mut self, name: &str, n: u64) {
        if let Some(c) = self.audit_events.get_mut(name) {
            *c += n;
        } else if self.audit_events.len() < MAX_AUDIT_SERIES {
            self.audit_events.insert(name.into(), n);
        } else {
            self.audit_overflow += n;
        }
    }
}

/// The counts of a hashed map, by name (a stable order in the export).
fn sorted_by_name(counts: &HashMap<Box<str>, u64, FastHash>) -> Vec<(&str, u64)> {
    let mut v: Vec<(&str, u64)> = counts.iter().map(|(k, n)| (k.as_ref(), *n)).collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v
}

/// Per-process aggregates, turned into OTLP metrics on `collect`.
pub struct MetricsAggregator {
    temporality: Temporality,
    processes: HashMap<u32, ProcessMetrics, FastHash>,
}

impl MetricsAggregator {
    pub fn new(temporality: Temporality) -> MetricsAggregator {
        MetricsAggregator {
            temporality,
            processes: HashMap::default(),
        }
    }

    fn process(&mut self, pid: u32, now_unix_ns: u64) -> &mut ProcessMetrics {
        let p = self.processes.entry(pid).or_insert_with(|| ProcessMetrics {
            start_ns: now_unix_ns,
            ..Default::default()
        });
        p.dirty = true;
        p
    }

    /// What the kernel aggregated for process `pid` since the last read (--metrics-only),
    /// read at `now_unix_ns`.
    pub fn add_kernel(&mut self, pid: u32, update: KernelUpdate<'_>, now_unix_ns: u64) {
        let lifetime = self.temporality == Temporality::Cumulative;
        let p = self.process(pid, now_unix_ns);
        match update {
            KernelUpdate::Gc { generation, d } => {
                let s = p.gc.entry(i64::from(generation)).or_default();
                s.collections += d.events;
                s.collected += d.extra;
                s.duration.merge(d, lifetime);
            }
            KernelUpdate::Import { found, d, .. } => {
                if d.timed > 0 {
                    p.import_duration
                        .entry(found)
                        .or_default()
                        .merge(d, lifetime);
                }
            }
            KernelUpdate::Function { name, file, d } => {
                let s = p.function_series(file, name);
                s.0 += d.events;
                s.1.merge(d, lifetime);
            }
            KernelUpdate::Audit { name, n } => p.add_audit(name, n),
        }
    }

    /// `now_unix_ns`: the event's end in wall-clock time.
    pub fn record(&mut self, event: &Event<'_>, now_unix_ns: u64) {
        let h = event.header();
        let p = self.process(h.pid, now_unix_ns);
        match event {
            Event::Gc {
                generation,
                collected,
                ..
            } => {
                // A collection whose start was not seen has no generation: -1 keeps it counted.
                p.gc_source = h.source;
                let s = p.gc.entry(generation.map_or(-1, i64::from)).or_default();
                s.collections += 1;
                s.collected += collected;
                if let Some(ns) = h.duration_ns() {
                    s.duration.record(ns as f64 / 1e9);
                }
            }
            Event::Import { found, .. } => {
                p.import_source = h.source;
                if let Some(ns) = h.duration_ns() {
                    p.import_duration
                        .entry(*found)
                        .or_default()
                        .record(ns as f64 / 1e9);
                }
            }
            Event::Function {
                name,
                file,
                location,
                ..
            } => {
                let s = match location {
                    Some(l) => p.function_series_at(l),
                    None => p.function_series(file, name),
                };
                s.0 += 1;
                if let Some(ns) = h.duration_ns() {
                    s.1.record(ns as f64 / 1e9);
                }
            }
            Event::Audit { name, .. } => {
                p.audit_source = h.source;
                p.add_audit(name, 1)
            }
        }
    }

    /// The metrics of every process with something to report, by PID. Delta temporality
    /// resets the aggregates.
    pub fn collect(&mut self, now: u64) -> Vec<(u32, Vec<Metric>)> {
        let temporality = self.temporality;
        let mut out = Vec::new();
        for (pid, p) in &mut self.processes {
            if temporality == Temporality::Delta && !p.dirty {
                continue;
            }
            out.push((*pid, process_metrics(p, temporality, now)));
            p.dirty = false;
            if temporality == Temporality::Delta {
                *p = ProcessMetrics {
                    start_ns: now,
                    ..Default::default()
                };
            }
        }
        out.sort_by_key(|(pid, _)| *pid);
        out
    }

    /// The metrics of one process (before its PID is reused), without resetting them.
    pub fn collect_one(&mut self, pid: u32, now: u64) -> Option<Vec<Metric>> {
        let p = self.processes.get(&pid)?;
        Some(process_metrics(p, self.temporality, now))
    }

    /// Drops a process that exited, after its last values were collected.
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    pub fn pids(&self) -> Vec<u32> {
        self.processes.keys().copied().collect()
    }
}

fn process_metrics(p: &ProcessMetrics, t: Temporality, now: u64) -> Vec<Metric> {
    let gen = |g: i64| sourced(vec![attrs::int(attrs::GC_GENERATION, g)], p.gc_source);
    let mut metrics = Vec::new();
    if !p.gc.is_empty() {
        metrics.push(counter(
            attrs::CPYTHON_GC_COLLECTIONS,
            "Garbage collections (gc__start/gc__done pairs and lone gc__done).",
            "{collection}",
            t,
            p.gc.iter()
                .map(|(g, s)| int_point(gen(*g), s.collections as i64, p.start_ns, now))
                .collect(),
        ));
        metrics.push(counter(
            "cpython.gc.collected_objects",
            "Objects freed by collections: gc__done reports collected + uncollectable.",
            "{object}",
            t,
            p.gc.iter()
                .map(|(g, s)| int_point(gen(*g), s.collected, p.start_ns, now))
                .collect(),
        ));
    }
    if p.gc.values().any(|s| s.duration.count > 0) {
        metrics.push(histogram(
            "cpython.gc.duration",
            "Duration of garbage collections: the pause of the collecting thread.",
            t,
            p.gc.iter()
                .filter(|(_, s)| s.duration.count > 0)
                .map(|(g, s)| s.duration.point(gen(*g), p.start_ns, now))
                .collect(),
        ));
    }
    if !p.import_duration.is_empty() {
        metrics.push(histogram(
            "cpython.import.duration",
            "Duration of module imports through the C import path.",
            t,
            p.import_duration
                .iter()
                .map(|(found, h)| {
                    let found = vec![attrs::boolean(attrs::IMPORT_FOUND, *found)];
                    h.point(sourced(found, p.import_source), p.start_ns, now)
                })
                .collect(),
        ));
    }
    if !p.function_values.is_empty() || p.function_overflow.is_some() {
        let mut sorted: Vec<(&str, &str, &(u64, Hist))> = p
            .function_series
            .iter()
            .flat_map(|(file, by_name)| {
                by_name
                    .iter()
                    .map(move |(name, &i)| (file.as_ref(), name.as_ref(), &p.function_values[i]))
            })
            .collect();
        sorted.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let series: Vec<(Vec<KeyValue>, &(u64, Hist))> = sorted
            .into_iter()
            .map(|(file, name, s)| {
                let a = vec![
                    attrs::string(attrs::CODE_FUNCTION_NAME, name),
                    attrs::string(attrs::CODE_FILE_PATH, file),
                ];
                (a, s)
            })
            .chain(
                p.function_overflow
                    .iter()
                    .map(|s| (vec![attrs::boolean("otel.metric.overflow", true)], s)),
            )
            .collect();
        metrics.push(counter(
            "cpython.function.calls",
            "Calls reported by function probes (those lasting at least --min-duration).",
            "{call}",
            t,
            series
                .iter()
                .map(|(a, (n, _))| int_point(a.clone(), *n as i64, p.start_ns, now))
                .collect(),
        ));
        metrics.push(histogram(
            "cpython.function.duration",
            "Duration of the calls reported by function probes.",
            t,
            series
                .iter()
                .map(|(a, (_, h))| h.point(a.clone(), p.start_ns, now))
                .collect(),
        ));
    }
    if !p.audit_events.is_empty() {
        let overflow = (p.audit_overflow > 0).then(|| {
            (
                vec![attrs::boolean("otel.metric.overflow", true)],
                p.audit_overflow,
            )
        });
        metrics.push(counter(
            "cpython.audit.events",
            "Audit events raised (sys.audit and the interpreter's own).",
            "{event}",
            t,
            sorted_by_name(&p.audit_events)
                .into_iter()
                .map(|(name, n)| (vec![attrs::string(attrs::AUDIT_EVENT, name)], n))
                .chain(overflow)
                .map(|(a, n)| (sourced(a, p.audit_source), n))
                .map(|(a, n)| int_point(a, n as i64, p.start_ns, now))
                .collect(),
        ));
    }
    metrics
}

#[cfg(test)]
mod tests {
    #[test]
    fn nanosecond_bounds_are_the_exported_ones() {
        let ns = super::duration_bounds_ns();
        for (n, s) in ns.iter().zip(super::DURATION_BOUNDS) {
            assert_eq!(*n as f64 / 1e9, s, "{n} ns");
        }
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{ns:?}");
    }

    use super::*;

    use crate::decode::{Event, Header};
    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, number_data_point::Value, NumberDataPoint,
    };
    use std::borrow::Cow;
    use std::sync::Arc;

    /// A 1 ms call of `name` in app.py by process 1, its location interned or not.
    fn call<'a>(name: &str, location: Option<&'a Arc<CodeLocation>>) -> Event<'a> {
        Event::Function {
            header: Header {
                start_ns: Some(0),
                end_ns: 1_000_000,
                pid: 1,
                tid: 1,
                depth: 0,
                source: Default::default(),
            },
            name: Cow::Owned(name.into()),
            file: Cow::Borrowed("app.py"),
            line: 1,
            location,
        }
    }

    /// The points of the first process's counter `name`.
    fn sum_points<'a>(metrics: &'a [(u32, Vec<Metric>)], name: &str) -> &'a [NumberDataPoint] {
        let metric = metrics[0].1.iter().find(|x| x.name == name).unwrap();
        let Some(Data::Sum(sum)) = &metric.data else {
            panic!("{name} is not a sum")
        };
        &sum.data_points
    }

    /// The value of the point marked `otel.metric.overflow`.
    fn overflow_value(points: &[NumberDataPoint]) -> Option<Value> {
        points
            .iter()
            .find(|p| {
                p.attributes
                    .iter()
                    .any(|kv| kv.key == "otel.metric.overflow")
            })
            .unwrap()
            .value
    }

    #[test]
    fn function_series_are_bounded_with_an_overflow_series() {
        let mut m = MetricsAggregator::new(Temporality::Cumulative);
        for i in 0..MAX_FUNCTION_SERIES + 5 {
            m.record(&call(&format!("f{i}"), None), 0);
        }
        let metrics = m.collect(1);
        let points = sum_points(&metrics, "cpython.function.calls");
        assert_eq!(points.len(), MAX_FUNCTION_SERIES + 1);
        assert_eq!(overflow_value(points), Some(Value::AsInt(5)));
    }

    #[test]
    fn calls_of_code_locations_with_the_same_names_are_one_series() {
        let f = CodeLocation::new("f", "app.py", 1);
        // Another code object of the same function (redefined, or a second image).
        let f_again = CodeLocation::new("f", "app.py", 1);
        let g = CodeLocation::new("g", "app.py", 9);
        let mut m = MetricsAggregator::new(Temporality::Cumulative);
        for e in [
            call("f", Some(&f)),
            call("f", Some(&f)),
            call("f", Some(&f_again)),
            call("f", None),
            call("g", Some(&g)),
        ] {
            m.record(&e, 0);
        }
        let metrics = m.collect(1);
        let counts: Vec<(String, Option<Value>)> = sum_points(&metrics, "cpython.function.calls")
            .iter()
            .map(|p| (format!("{:?}", p.attributes[0].value), p.value))
            .collect();
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert!(counts[0].0.contains("\"f\"") && counts[0].1 == Some(Value::AsInt(4)));
        assert!(counts[1].0.contains("\"g\"") && counts[1].1 == Some(Value::AsInt(1)));
    }

    #[test]
    fn audit_series_are_bounded_with_an_overflow_series() {
        let mut m = MetricsAggregator::new(Temporality::Cumulative);
        for i in 0..MAX_AUDIT_SERIES + 5 {
            let name = format!("app.event{i}");
            m.add_kernel(1, KernelUpdate::Audit { name: &name, n: 2 }, 0);
        }
        let metrics = m.collect(1);
        let points = sum_points(&metrics, "cpython.audit.events");
        assert_eq!(points.len(), MAX_AUDIT_SERIES + 1);
        assert_eq!(overflow_value(points), Some(Value::AsInt(10)));
    }

    /// Collections seen at a hook point carry its source; the markers' carry none.
    #[test]
    fn points_of_hook_points_name_their_source() {
        for (pid, source, want) in [
            (1, SignalSource::Derived, Some("derived")),
            (2, SignalSource::Marker, None),
        ] {
            let mut m = MetricsAggregator::new(Temporality::Cumulative);
            let header = Header {
                start_ns: Some(0),
                end_ns: 1_000,
                pid,
                tid: pid,
                depth: 0,
                source,
            };
            let gc = Event::Gc {
                header,
                generation: Some(0),
                collected: 3,
            };
            m.record(&gc, 1);
            let metrics = m.collect(2);
            let point = &sum_points(&metrics, attrs::CPYTHON_GC_COLLECTIONS)[0];
            let got = point
                .attributes
                .iter()
                .find(|a| a.key == attrs::SIGNAL_SOURCE)
                .map(|a| format!("{:?}", a.value));
            assert_eq!(got.is_some(), want.is_some(), "{:?}", point.attributes);
            if let (Some(got), Some(want)) = (got, want) {
                assert!(got.contains(want), "{got}");
            }
        }
    }

    #[test]
    fn buckets() {
        let mut h = Hist::default();
        for s in [0.000_005, 0.000_01, 0.000_011, 20.0] {
            h.record(s);
        }
        // upper bounds are inclusive: 10 µs falls in the first bucket
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[DURATION_BOUNDS.len()], 1);
        assert_eq!(h.count, 4);
        assert_eq!(h.max, 20.0);
    }
}
