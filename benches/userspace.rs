//! The user-space path per ring-buffer record, on one core: decoding, span/metric/log building,
//! and the OTLP sink up to encoded protobuf bytes (issue #6: at least 2 M events/s).
//!
//! `cargo bench --bench userspace` prints each stage's throughput in elem/s (one element = one
//! ring-buffer record). The records are built byte for byte as bpf/pyusdt.bpf.c writes them
//! (the skeleton's `#[repr(C)]` structs of bpf/pyusdt.h), 8-byte aligned as libbpf's ring
//! buffer hands them over, from a synthetic but shaped workload: request handlers on 4
//! processes × 4 threads whose reported calls (function probes, 300 functions) nest up to 3
//! deep, with lazy imports (nested, some failing), collections at any depth and audit events
//! in between. The mix is printed first.
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use prost::Message;

use pyusdt::bpf::MARKER_PROCESS;
use pyusdt::bpf::{audit_event, code_ref, event_header, function_event, function_ref_event};
use pyusdt::bpf::{gc_event, import_event, process_event, MARKER_AUDIT, MARKER_FUNCTION};
use pyusdt::bpf::{MARKER_FUNCTION_REF, MARKER_GC, MARKER_IMPORT};
use pyusdt::decode::{decode, Record};
use pyusdt::export::config::{ExportConfig, ExportFlags};
use pyusdt::export::{Batch, Exporter, Payload};
use pyusdt::model::clock::{monotonic_ns, Clock};
use pyusdt::model::logs::{AuditFilter, LogBuffer};
use pyusdt::model::metrics::{MetricsAggregator, Temporality};
use pyusdt::model::spans::SpanAssembler;
use pyusdt::pipeline::code_names::CodeNames;
use pyusdt::report::otlp::{OtlpSink, OwnStats};

/// Records per benchmark iteration (about 25 ms of traffic at 2 M events/s).
const EVENTS: usize = 50_000;
/// Records handled between two calls of the sink's `tick`, as between ring-buffer polls.
const POLL: usize = 1_000;
const PIDS: [u32; 4] = [4101, 4102, 4103, 4104];
const THREADS_PER_PID: u32 = 4;

/// Ring-buffer records back to back, each at an 8-byte aligned offset.
#[derive(Clone)]
struct Records {
    words: Vec<u64>,
    /// (offset in bytes, length in bytes)
    spans: Vec<(usize, usize)>,
}

impl Records {
    fn new() -> Records {
        Records {
            words: Vec::new(),
            spans: Vec::new(),
        }
    }

    fn push<T>(&mut self, v: &T) {
        let len = std::mem::size_of::<T>();
        let offset = self.words.len() * 8;
        self.words.resize(self.words.len() + len.div_ceil(8), 0);
        // SAFETY: copying the bytes of a plain #[repr(C)] value into the zeroed words just
        // added, which are at least `len` bytes long.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (v as *const T).cast::<u8>(),
                self.words.as_mut_ptr().cast::<u8>().add(offset),
                len,
            );
        }
        self.spans.push((offset, len));
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: viewing a Vec<u64>'s memory as bytes, within its length.
        unsafe {
            std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.words.len() * 8)
        }
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let all = self.bytes();
        self.spans.iter().map(move |&(o, l)| &all[o..o + l])
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    /// Moves every timestamp so that the first record starts at `base` (CLOCK_MONOTONIC ns):
    /// the sink releases spans waiting for a parent once they look 30 s old.
    fn rebase(&mut self, base: u64) {
        let first = self.words[self.spans[0].0 / 8];
        let delta = base.wrapping_sub(first);
        for &(o, _) in &self.spans {
            let w = o / 8;
            // event_header: start_ns (0 when the start was not seen), then end_ns.
            if self.words[w] != 0 {
                self.words[w] = self.words[w].wrapping_add(delta);
            }
            self.words[w + 1] = self.words[w + 1].wrapping_add(delta);
        }
    }
}

fn c_str<const N: usize>(dst: &mut [i8; N], s: &str) {
    for (d, b) in dst.iter_mut().zip(s.bytes().take(N - 1)) {
        *d = b as i8;
    }
}

/// xorshift64: the same workload every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `p` percent.
    fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

const AUDIT_NAMES: [&str; 10] = [
    "open",
    "os.listdir",
    "os.scandir",
    "socket.connect",
    "socket.getaddrinfo",
    "compile",
    "exec",
    "import",
    "sys._getframe",
    "object.__setattr__",
];

const MODULES: [&str; 12] = [
    "json",
    "json.decoder",
    "email.mime.text",
    "decimal",
    "xml.etree.ElementTree",
    "shop.payments.stripe_adapter",
    "shop.reports.pdf",
    "urllib.parse",
    "ujson",
    "jinja2.ext",
    "sqlalchemy.dialects.postgresql.psycopg2",
    "yaml",
];

/// One thread's state while generating: its clock and the spans in progress.
struct Thread {
    pid: u32,
    tid: u32,
    now: u64,
    depth: u8,
}

struct Workload {
    rng: Rng,
    out: Records,
    /// (file, function) pairs of the traced code.
    functions: Vec<(String, String)>,
    /// (pid, function) whose names were sent: later calls are references, as the BPF side
    /// sends them.
    sent: std::collections::HashSet<(u32, usize)>,
}

impl Workload {
    fn header(t: &Thread, marker: u8, start: u64) -> event_header {
        event_header {
            start_ns: start,
            end_ns: t.now,
            pid: t.pid,
            tid: t.tid,
            marker,
            depth: t.depth,
            source: 0,
            _pad: [0; 5],
        }
    }

    /// What happens inside a span on `t`, at `t.depth`: calls, imports, collections, audits.
    fn body(&mut self, t: &mut Thread, level: u32) {
        let steps = 1 + self.rng.below(if level == 0 { 5 } else { 3 });
        for _ in 0..steps {
            t.now += 200 + self.rng.below(3_000);
            // Innermost calls (level 3) do no further reported calls.
            let roll = if level < 3 {
                self.rng.below(100)
            } else {
                50 + self.rng.below(50)
            };
            match roll {
                0..=49 => self.call(t, level + 1),
                50..=55 => self.import(t, 0),
                56..=69 => self.gc(t),
                _ => self.audit(t),
            }
        }
    }

    fn call(&mut self, t: &mut Thread, level: u32) {
        let start = t.now;
        t.depth += 1;
        self.body(t, level);
        t.depth -= 1;
        t.now += 500 + self.rng.below(20_000);
        let i = self.rng.below(self.functions.len() as u64) as usize;
        let code = code_ref {
            mm: 0xffff_8880_0000_0000 + u64::from(t.pid) * 4096,
            name_ptr: 0x7f00_0010_0000 + i as u64 * 64,
            file_ptr: 0x7f00_0020_0000 + i as u64 * 128,
            line: 10 + i as i32 * 7,
            tgid: t.pid,
        };
        if self.sent.insert((t.pid, i)) {
            let mut e = function_event {
                h: Self::header(t, MARKER_FUNCTION, start),
                code,
                ..Default::default()
            };
            c_str(&mut e.file, &self.functions[i].0);
            c_str(&mut e.name, &self.functions[i].1);
            self.out.push(&e);
        } else {
            self.out.push(&function_ref_event {
                h: Self::header(t, MARKER_FUNCTION_REF, start),
                code,
            });
        }
    }

    fn import(&mut self, t: &mut Thread, nesting: u32) {
        let start = t.now;
        t.depth += 1;
        if nesting < 2 && self.rng.pct(40) {
            t.now += 1_000;
            self.import(t, nesting + 1);
        }
        t.depth -= 1;
        t.now += 20_000 + self.rng.below(400_000);
        let mut e = import_event {
            h: Self::header(t, MARKER_IMPORT, start),
            found: i32::from(!self.rng.pct(5)),
            nesting,
            ..Default::default()
        };
        c_str(
            &mut e.module,
            MODULES[self.rng.below(MODULES.len() as u64) as usize],
        );
        self.out.push(&e);
    }

    fn gc(&mut self, t: &mut Thread) {
        let start = t.now;
        let generation = [0, 0, 0, 0, 0, 0, 1, 1, 2][self.rng.below(9) as usize];
        t.now += 30_000 + self.rng.below(200_000) * (1 + generation as u64 * 10);
        let e = gc_event {
            h: Self::header(t, MARKER_GC, start),
            collected: self.rng.below(5_000) as i64,
            generation,
            _pad: 0,
        };
        self.out.push(&e);
    }

    fn audit(&mut self, t: &mut Thread) {
        let mut e = audit_event {
            h: Self::header(t, MARKER_AUDIT, 0),
            nargs: 1 + self.rng.below(3) as i64,
            ..Default::default()
        };
        c_str(
            &mut e.name,
            AUDIT_NAMES[self.rng.below(AUDIT_NAMES.len() as u64) as usize],
        );
        self.out.push(&e);
    }
}

/// The process descriptions (one per PID, before its first event) and `n` or a few more events.
fn workload(n: usize) -> (Records, Records) {
    let mut processes = Records::new();
    for (i, &pid) in PIDS.iter().enumerate() {
        let mut e = process_event {
            h: event_header {
                start_ns: 0,
                end_ns: 1,
                pid,
                tid: pid,
                marker: MARKER_PROCESS,
                depth: 0,
                source: 0,
                _pad: [0; 5],
            },
            ..Default::default()
        };
        let args = format!("/usr/bin/python3\0-m\0gunicorn\0shop.wsgi:app\0--workers={i}\0");
        let env = "HOME=/srv\0OTEL_SERVICE_NAME=shop\0PATH=/usr/bin:/bin\0LANG=C.UTF-8\0";
        for (d, s) in e.args.iter_mut().zip(args.bytes()) {
            *d = s as i8;
        }
        for (d, s) in e.env.iter_mut().zip(env.bytes()) {
            *d = s as i8;
        }
        e.args_len = args.len() as u32;
        e.env_len = env.len() as u32;
        c_str(&mut e.comm, "gunicorn");
        processes.push(&e);
    }

    let packages = [
        "shop/views",
        "shop/models",
        "shop/cart",
        "shop/payments",
        "lib/db",
    ];
    let functions = (0..300)
        .map(|i| {
            let file = format!("/srv/app/{}_{}.py", packages[i % packages.len()], i / 25);
            (file, format!("handle_{i}"))
        })
        .collect();
    let mut w = Workload {
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        out: Records::new(),
        functions,
        sent: Default::default(),
    };
    let mut threads: Vec<Thread> = PIDS
        .iter()
        .flat_map(|&pid| {
            (0..THREADS_PER_PID).map(move |i| Thread {
                pid,
                tid: pid + i,
                now: 1_000_000_000,
                depth: 0,
            })
        })
        .collect();
    // One request (a call tree ending at depth 0) at a time per thread, threads interleaved.
    while w.out.len() < n {
        let t = w.rng.below(threads.len() as u64) as usize;
        let t = &mut threads[t];
        t.now += 10_000;
        w.call(t, 0);
    }
    (processes, w.out)
}

fn mix(records: &Records) -> String {
    let mut n = [0usize; 4];
    for data in records.iter() {
        match data[24] {
            MARKER_GC => n[0] += 1,
            MARKER_IMPORT => n[1] += 1,
            MARKER_AUDIT => n[2] += 1,
            MARKER_FUNCTION | MARKER_FUNCTION_REF => n[3] += 1,
            _ => {}
        }
    }
    let pct = |k: usize| 100.0 * k as f64 / records.len() as f64;
    format!(
        "{} records: gc {:.0}%, import {:.0}%, audit {:.0}%, function {:.0}%, {} bytes",
        records.len(),
        pct(n[0]),
        pct(n[1]),
        pct(n[2]),
        pct(n[3]),
        records.spans.iter().map(|s| s.1).sum::<usize>()
    )
}

fn config() -> ExportConfig {
    // The defaults (batch 512, queue 2048, metrics every 60 s, every audit event logged); the
    // exporter is replaced by an in-memory one.
    let flags = ExportFlags {
        exporter: Some("file".into()),
        otlp_file: Some("/dev/null".into()),
        ..Default::default()
    };
    ExportConfig::resolve(&flags, &|_| None).expect("default export config")
}

fn encoded_len(payload: &Payload) -> usize {
    // The body as the OTLP/HTTP transport (the default protocol) makes it: spans and log
    // records were encoded by the sink and are sent as they are; metrics are encoded here.
    // (For gRPC, tonic's codec copies the encoded spans and records once more, on the
    // exporter's thread.)
    match payload {
        Payload::Traces(r) => r.body().len(),
        Payload::Metrics(r) => r.encode_to_vec().len(),
        Payload::Logs(r) => r.body().len(),
    }
}

/// The CPU time of the benchmarking thread: what one core spends, whatever else runs on the
/// machine (wall-clock time would count the time the thread waited for a core).
/// `PYUSDT_BENCH_WALL=1` measures wall-clock time instead.
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }

    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, ns: &u64) -> f64 {
        *ns as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, as wall-clock time's.
        WallTime.formatter()
    }
}

/// Stage (a): ring-buffer bytes to typed, borrowed events.
fn decode_pass(records: &Records) {
    for data in records.iter() {
        black_box(decode(black_box(data)).ok());
    }
}

/// Stage (b): decoding, then the OTel model: span pairing (parent/child per thread), metric
/// aggregation and audit log records; ready spans and logs are taken at every poll.
struct Model {
    clock: Clock,
    spans: SpanAssembler,
    metrics: MetricsAggregator,
    logs: LogBuffer,
}

impl Model {
    fn new() -> Model {
        let clock = Clock::now();
        Model {
            clock,
            spans: SpanAssembler::new(clock),
            metrics: MetricsAggregator::new(Temporality::Cumulative),
            logs: LogBuffer::new(clock, AuditFilter::parse("*").unwrap(), 2048),
        }
    }

    fn pass(&mut self, records: &Records) {
        let mut names = CodeNames::default();
        for (i, data) in records.iter().enumerate() {
            let Ok(record) = decode(data) else { continue };
            if let Some(e) = names.event_of(&record) {
                self.spans.record(&e);
                self.metrics
                    .record(&e, self.clock.unix_nanos(e.header().end_ns));
                self.logs.record(&e);
            }
            if i % POLL == POLL - 1 {
                black_box(self.spans.take_ready());
                black_box(self.logs.take_ready());
            }
        }
        black_box(self.spans.take_ready());
        black_box(self.logs.take_ready());
    }
}

/// Stage (c): the whole path of `pyusdt run/agent --exporter otlp` on one thread: decoding,
/// OtlpSink::record, its tick between polls (batching per resource), and at the end its finish
/// (the rest of the spans and logs, and one metrics export), with every request made into an
/// OTLP/HTTP body (`encoded_len`; on the exporter's thread in pyusdt, counted here as if on
/// the same core). A fresh sink per pass, its processes described
/// beforehand (`sink_setup`, not timed).
struct SinkPass {
    sink: OtlpSink,
    batches: Receiver<Batch>,
    /// The records, timestamped now.
    records: Records,
}

fn sink_setup(processes: &Records, records: &Records) -> SinkPass {
    let mut records = records.clone();
    records.rebase(monotonic_ns());
    let (exporter, batches) = Exporter::in_memory(64);
    let mut sink = OtlpSink::with_exporter(
        config(),
        Clock::now(),
        Box::new(|_| Some("3.12.3".into())),
        exporter,
    )
    .unwrap();
    sink.pids_are_foreign();
    for data in processes.iter() {
        if let Ok(Record::Process(p)) = decode(data) {
            sink.describe_process(&p);
        }
    }
    SinkPass {
        sink,
        batches,
        records,
    }
}

/// Returns the bytes encoded, and what is dropped after the measurement.
fn sink_pass(pass: SinkPass) -> (usize, Receiver<Batch>, Records) {
    let SinkPass {
        mut sink,
        batches,
        records,
    } = pass;
    let own = OwnStats::default();
    let mut bytes = 0usize;
    let mut names = CodeNames::default();
    for (i, data) in records.iter().enumerate() {
        match decode(data) {
            Ok(Record::Process(p)) => sink.describe_process(&p),
            Ok(record) => {
                if let Some(e) = names.event_of(&record) {
                    sink.record(&e);
                }
            }
            Err(_) => {}
        }
        if i % POLL == POLL - 1 {
            sink.tick(&|| own);
            bytes += batches
                .try_iter()
                .map(|b| encoded_len(&b.payload))
                .sum::<usize>();
        }
    }
    let (counts, _) = sink.finish(&own, Duration::ZERO);
    assert_eq!(counts.dropped, [0; 3], "the in-memory queue overflowed");
    bytes += batches
        .try_iter()
        .map(|b| encoded_len(&b.payload))
        .sum::<usize>();
    (bytes, batches, records)
}

/// Counts heap allocations (and reallocations), for the allocations per record of each stage.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    f();
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

fn userspace<M: Measurement>(c: &mut Criterion<M>) {
    let (processes, records) = workload(EVENTS);
    eprintln!("workload: {}", mix(&records));
    let n = records.len() as u64;
    // Allocations per record of each stage (the model's second pass: its maps are warm).
    let mut model = Model::new();
    model.pass(&records);
    let setup = sink_setup(&processes, &records);
    let per = |k: u64| k as f64 / n as f64;
    eprintln!(
        "allocations per record: decode {:.2}, decode+model {:.2}, decode+otlp_sink+encode {:.2}",
        per(allocations(|| decode_pass(&records))),
        per(allocations(|| model.pass(&records))),
        per(allocations(|| {
            black_box(sink_pass(setup));
        })),
    );

    let mut g = c.benchmark_group("userspace");
    g.throughput(Throughput::Elements(n))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat);
    g.bench_function("decode", |b| b.iter(|| decode_pass(&records)));
    g.bench_function("decode+model", |b| {
        let mut model = Model::new();
        b.iter(|| model.pass(&records))
    });
    g.bench_function("decode+otlp_sink+encode", |b| {
        b.iter_batched(
            || sink_setup(&processes, &records),
            |pass| {
                let (bytes, batches, records) = sink_pass(pass);
                // Dropped after the measurement.
                (black_box(bytes), batches, records)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn cpu_time(c: &mut Criterion) {
    if std::env::var_os("PYUSDT_BENCH_WALL").is_some() {
        userspace(c);
    } else {
        userspace(
            &mut Criterion::default()
                .with_measurement(ThreadCpuTime)
                .configure_from_args(),
        );
    }
}

criterion_group!(benches, cpu_time);
criterion_main!(benches);
