//! Shipping OTLP requests: a bounded queue to one exporter thread, which sends each batch over
//! gRPC or HTTP (or writes OTLP/JSON lines) and retries with backoff on transient failures.
//! Every item is accounted for: exported, rejected/failed, or dropped because the queue was full.
pub mod config;
mod config_file;
pub(crate) mod file;
mod grpc;
mod http;
pub mod prometheus;
mod retry;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::model::wire::Encoded;
use config::{ExporterKind, Signal};

/// Batches waiting for the exporter thread; beyond this, new batches are dropped and counted.
const QUEUE_BATCHES: usize = 64;

/// An error and its causes, "outer: inner: innermost", without repeats.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Spans and log records arrive encoded (`model::wire`: written without building the prost
/// messages); metrics, exported once per interval, as prost messages.
pub enum Payload {
    Traces(Encoded<ExportTraceServiceRequest>),
    Metrics(ExportMetricsServiceRequest),
    Logs(Encoded<ExportLogsServiceRequest>),
}

impl Payload {
    pub fn signal(&self) -> Signal {
        match self {
            Payload::Traces(_) => Signal::Traces,
            Payload::Metrics(_) => Signal::Metrics,
            Payload::Logs(_) => Signal::Logs,
        }
    }
}

/// One request and the number of items (spans, data points, log records) it carries.
pub struct Batch {
    pub payload: Payload,
    pub items: u64,
}

/// Why a send failed.
#[derive(Debug)]
pub struct SendError {
    /// UNAVAILABLE, 429, 503 …: worth another try (`retry`).
    pub retryable: bool,
    pub message: String,
    /// A delay the server asked for (Retry-After, RetryInfo).
    pub retry_after: Option<Duration>,
}

/// Per-signal counters of what happened to exported items.
#[derive(Debug, Default)]
pub struct ExportStats {
    exported: [AtomicU64; 3],
    failed: [AtomicU64; 3],
    dropped: [AtomicU64; 3],
    retries: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of `ExportStats` at one moment.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportCounts {
    /// Accepted by the receiver, per signal (traces, metrics, logs).
    pub exported: [u64; 3],
    /// Rejected by the receiver or given up after retries.
    pub failed: [u64; 3],
    /// Never sent: the queue to the exporter was full.
    pub dropped: [u64; 3],
    pub retries: u64,
    pub last_error: Option<String>,
}

fn index(s: Signal) -> usize {
    match s {
        Signal::Traces => 0,
        Signal::Metrics => 1,
        Signal::Logs => 2,
    }
}

impl ExportStats {
    pub fn counts(&self) -> ExportCounts {
        let load = |a: &[AtomicU64; 3]| a.each_ref().map(|v| v.load(Ordering::Relaxed));
        ExportCounts {
            exported: load(&self.exported),
            failed: load(&self.failed),
            dropped: load(&self.dropped),
            retries: self.retries.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    fn add(field: &[AtomicU64; 3], s: Signal, n: u64) {
        field[index(s)].fetch_add(n, Ordering::Relaxed);
    }

    fn error(&self, message: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(message);
        }
    }
}

/// Where batches go.
enum Transport {
    Grpc(Box<grpc::GrpcTransport>),
    Http(http::HttpTransport),
    File(file::FileTransport),
}

impl Transport {
    /// Sends one batch once; `Ok(rejected)` is the number of items the receiver refused.
    async fn send(&mut self, payload: &Payload) -> Result<u64, SendError> {
        match self {
            Transport::Grpc(t) => t.send(payload).await,
            Transport::Http(t) => t.send(payload).await,
            Transport::File(t) => t.send(payload),
        }
    }
}

/// The handle of the exporter thread.
pub struct Exporter {
    tx: Option<SyncSender<Batch>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<ExportStats>,
    /// Set at shutdown: after it, retries stop at `shutdown_deadline`.
    stopping: Arc<AtomicBool>,
    shutdown_deadline: Arc<Mutex<Option<Instant>>>,
}

/// Why the exporter cannot start, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("starting the exporter's {what}: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write --otlp-file {}: {source} (give a writable path)", path.display())]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("OTLP CA certificate for {url}: {source}")]
    Certificate {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("no OTLP configuration for {0}")]
    NoSignal(&'static str),
    #[error("bad OTLP endpoint {url}: {source}")]
    Endpoint {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "{0}: no system CA certificates to verify the collector with: install them (Debian: \
         ca-certificates) or set OTEL_EXPORTER_OTLP_CERTIFICATE to the PEM file of its CA"
    )]
    NoSystemRoots(String),
    #[error("TLS for {url}: {source}")]
    Tls {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("OTLP header name `{0}` is not a valid gRPC metadata key")]
    GrpcHeaderName(String),
    #[error("OTLP header `{0}` has a value gRPC cannot carry")]
    GrpcHeaderValue(String),
}

impl Exporter {
    /// Starts the exporter thread; `None` for the console exporter (nothing to ship).
    pub fn start(kind: &ExporterKind) -> Result<Option<Exporter>, StartError> {
        let stats = Arc::new(ExportStats::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let shutdown_deadline = Arc::new(Mutex::new(None));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| StartError::Thread {
                what: "runtime",
                source,
            })?;
        let transport = match kind {
            ExporterKind::Console => return Ok(None),
            ExporterKind::Otlp(signals) if signals.is_empty() => return Ok(None),
            ExporterKind::File(path) => Transport::File(file::FileTransport::create(path)?),
            ExporterKind::Otlp(signals) => {
                // ExportConfig::resolve refuses mixed protocols.
                match signals[0].1.protocol {
                    config::Protocol::Grpc => {
                        let _guard = runtime.enter();
                        Transport::Grpc(Box::new(grpc::GrpcTransport::new(signals)?))
                    }
                    config::Protocol::HttpProtobuf => {
                        Transport::Http(http::HttpTransport::new(signals)?)
                    }
                }
            }
        };
        let (tx, rx) = sync_channel(QUEUE_BATCHES);
        let worker = Worker {
            rx,
            transport,
            stats: Arc::clone(&stats),
            stopping: Arc::clone(&stopping),
            shutdown_deadline: Arc::clone(&shutdown_deadline),
            warned_at_exit: false,
        };
        let thread = std::thread::Builder::new()
            .name("pyusdt-export".into())
            .spawn(move || worker.run(runtime))
            .map_err(|source| StartError::Thread {
                what: "thread",
                source,
            })?;
        Ok(Some(Exporter {
            tx: Some(tx),
            thread: Some(thread),
            stats,
            stopping,
            shutdown_deadline,
        }))
    }

    /// An exporter without a thread or transport: batches wait in a queue of `capacity` for
    /// the caller to take from the receiver, as the exporter thread would (benchmarks).
    #[doc(hidden)]
    pub fn in_memory(capacity: usize) -> (Exporter, Receiver<Batch>) {
        let (tx, rx) = sync_channel(capacity);
        let exporter = Exporter {
            tx: Some(tx),
            thread: None,
            stats: Arc::default(),
            stopping: Arc::default(),
            shutdown_deadline: Arc::default(),
        };
        (exporter, rx)
    }

    /// Queues a batch without blocking the event loop; a full queue drops it (counted).
    pub fn submit(&self, batch: Batch) {
        let Some(tx) = &self.tx else { return };
        let signal = batch.payload.signal();
        let items = batch.items;
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                ExportStats::add(&self.stats.dropped, signal, items)
            }
        }
    }

    pub fn counts(&self) -> ExportCounts {
        self.stats.counts()
    }

    /// Sends what is queued, retrying for at most `grace`, then stops the thread.
    pub fn shutdown(mut self, grace: Duration) -> ExportCounts {
        if let Ok(mut d) = self.shutdown_deadline.lock() {
            *d = Some(Instant::now() + grace);
        }
        self.stopping.store(true, Ordering::Relaxed);
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stats.counts()
    }
}

struct Worker {
    rx: Receiver<Batch>,
    transport: Transport,
    stats: Arc<ExportStats>,
    stopping: Arc<AtomicBool>,
    shutdown_deadline: Arc<Mutex<Option<Instant>>>,
    /// `say_why_exit_waits` has spoken.
    warned_at_exit: bool,
}

/// Resolves once the flush deadline has passed (never while running).
async fn past_deadline(stopping: Arc<AtomicBool>, deadline: Arc<Mutex<Option<Instant>>>) {
    let step = Duration::from_millis(50);
    loop {
        let due = stopping.load(Ordering::Relaxed)
            && deadline
                .lock()
                .ok()
                .and_then(|d| *d)
                .is_some_and(|d| Instant::now() >= d);
        if due {
            return;
        }
        tokio::time::sleep(step).await;
    }
}

impl Worker {
    fn run(mut self, runtime: tokio::runtime::Runtime) {
        while let Ok(batch) = self.rx.recv() {
            runtime.block_on(self.deliver(batch));
        }
    }

    fn past_deadline(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
            && self
                .shutdown_deadline
                .lock()
                .ok()
                .and_then(|d| *d)
                .is_some_and(|d| Instant::now() >= d)
    }

    async fn deliver(&mut self, batch: Batch) {
        let signal = batch.payload.signal();
        let started = Instant::now();
        let mut backoff = retry::Backoff::default();
        let mut last_failure: Option<String> = None;
        loop {
            if self.past_deadline() {
                ExportStats::add(&self.stats.failed, signal, batch.items);
                // Keep the receiver's answer as the error to report, when there was one.
                if let Some(cause) = last_failure {
                    self.stats.error(format!("{}: {cause}", signal.name()));
                } else if self.stats.counts().last_error.is_none() {
                    self.stats.error(format!(
                        "{}: not delivered by the flush deadline",
                        signal.name()
                    ));
                }
                return;
            }
            // A request in flight is cut at the flush deadline too: with a collector that
            // answers late (its timeout longer than the pod's grace period), the counts would
            // otherwise be lost to the kubelet's SIGKILL.
            let sent = {
                let send = std::pin::pin!(self.transport.send(&batch.payload));
                let cut = std::pin::pin!(past_deadline(
                    Arc::clone(&self.stopping),
                    Arc::clone(&self.shutdown_deadline)
                ));
                match futures_util::future::select(send, cut).await {
                    futures_util::future::Either::Left((sent, _)) => Some(sent),
                    futures_util::future::Either::Right(((), _)) => None,
                }
            };
            let Some(sent) = sent else {
                ExportStats::add(&self.stats.failed, signal, batch.items);
                self.stats.error(format!(
                    "{}: not delivered by the flush deadline (the collector had not answered)",
                    signal.name()
                ));
                return;
            };
            match sent {
                Ok(rejected) => {
                    let rejected = rejected.min(batch.items);
                    ExportStats::add(&self.stats.exported, signal, batch.items - rejected);
                    if rejected > 0 {
                        ExportStats::add(&self.stats.failed, signal, rejected);
                        self.stats.error(format!(
                            "{}: receiver rejected {rejected} items",
                            signal.name()
                        ));
                    }
                    return;
                }
                Err(e) if e.retryable => {
                    let wait = backoff.wait(e.retry_after);
                    if let Some(why) = self.beyond_budget(wait, started, e.retry_after) {
                        ExportStats::add(&self.stats.failed, signal, batch.items);
                        tracing::warn!("{} export failed: {}; {why}", signal.name(), e.message);
                        self.stats
                            .error(format!("{}: {}; {why}", signal.name(), e.message));
                        return;
                    }
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("{} export failed, retrying: {}", signal.name(), e.message);
                    self.say_why_exit_waits(&e.message);
                    self.stats
                        .error(format!("{}: {}", signal.name(), e.message));
                    last_failure = Some(e.message);
                    self.sleep_unless_past_deadline(wait).await;
                }
                Err(e) => {
                    ExportStats::add(&self.stats.failed, signal, batch.items);
                    tracing::warn!("{} export failed: {}", signal.name(), e.message);
                    self.stats
                        .error(format!("{}: {}", signal.name(), e.message));
                    return;
                }
            }
        }
    }

    /// Once, when pyusdt is stopping and an export must be retried: the exit then waits up to
    /// the flush deadline, and the user should know why rather than watch a silent terminal.
    fn say_why_exit_waits(&mut self, cause: &str) {
        if self.warned_at_exit || !self.stopping.load(Ordering::Relaxed) {
            return;
        }
        self.warned_at_exit = true;
        let left = self
            .shutdown_deadline
            .lock()
            .ok()
            .and_then(|d| *d)
            .map(|d| d.saturating_duration_since(Instant::now()));
        if let Some(left) = left {
            tracing::warn!(
                "the collector is not accepting exports ({cause}): retrying what is queued for \
                 at most {:.1} s more before exiting (--flush-timeout)",
                left.as_secs_f64()
            );
        }
    }

    /// Why a retry after `wait` would come too late (None: it would not): past the batch's
    /// retry budget, or past the flush deadline when stopping. Giving up now frees the thread for
    /// the batches behind instead of sleeping for nothing.
    fn beyond_budget(
        &self,
        wait: Duration,
        started: Instant,
        asked: Option<Duration>,
    ) -> Option<String> {
        let budget = retry::MAX_RETRY_ELAPSED.saturating_sub(started.elapsed());
        let flush = self
            .stopping
            .load(Ordering::Relaxed)
            .then(|| self.shutdown_deadline.lock().ok().and_then(|d| *d))
            .flatten()
            .map(|d| d.saturating_duration_since(Instant::now()));
        let left = flush.map_or(budget, |f| f.min(budget));
        if wait < left {
            return None;
        }
        Some(match asked {
            Some(a) if a >= left => format!(
                "the collector asked to wait {:.1} s, beyond the {:.1} s left to deliver",
                a.as_secs_f64(),
                left.as_secs_f64()
            ),
            _ => format!(
                "not delivered within the retry budget ({} s, or --flush-timeout when stopping)",
                retry::MAX_RETRY_ELAPSED.as_secs()
            ),
        })
    }

    async fn sleep_unless_past_deadline(&self, wait: Duration) {
        let step = Duration::from_millis(50);
        let end = Instant::now() + wait;
        while Instant::now() < end && !self.past_deadline() {
            tokio::time::sleep(step.min(end - Instant::now())).await;
        }
    }
}
