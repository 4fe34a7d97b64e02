//! The OTLP retry rules, each against a real receiver on 127.0.0.1 that answers as scripted:
//! which HTTP statuses and gRPC codes are retried, Retry-After in both forms, gRPC RetryInfo,
//! waits beyond the retry budget, and certificate failures (never retried). The exporter is
//! pyusdt's own (`Exporter`), fed one batch of metric points; no BPF needed.
//! Timings are checked only as lower bounds (a wait the server asked for): a slow machine can
//! only make them longer.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
use pyusdt::export::config::{ExporterKind, Protocol, Signal, SignalConfig};
use pyusdt::export::{Batch, ExportCounts, Exporter, Payload};

const ITEMS: u64 = 5;
const GRACE: Duration = Duration::from_secs(30);

/// Exports one batch of `ITEMS` metric points and waits until it is delivered or given up.
fn export_once(protocol: Protocol, endpoint: &str, ca_pem: Option<Vec<u8>>) -> ExportCounts {
    let signals = [Signal::Traces, Signal::Metrics, Signal::Logs]
        .into_iter()
        .map(|s| {
            let url = match protocol {
                Protocol::Grpc => endpoint.to_string(),
                Protocol::HttpProtobuf => format!("{endpoint}/v1/{}", s.name()),
            };
            let config = SignalConfig {
                protocol,
                url,
                headers: vec![],
                timeout: Duration::from_secs(10),
                gzip: false,
                ca_pem: ca_pem.clone(),
            };
            (s, config)
        })
        .collect();
    let exporter = Exporter::start(&ExporterKind::Otlp(signals))
        .unwrap()
        .unwrap();
    exporter.submit(Batch {
        payload: Payload::Metrics(ExportMetricsServiceRequest::default()),
        items: ITEMS,
    });
    exporter.shutdown(GRACE)
}

fn delivered(c: &ExportCounts) -> bool {
    c.exported == [0, ITEMS, 0] && c.failed == [0, 0, 0]
}

fn given_up(c: &ExportCounts) -> bool {
    c.exported == [0, 0, 0] && c.failed == [0, ITEMS, 0]
}

/// An OTLP/HTTP receiver answering the first requests with the scripted heads (status line and
/// headers), the rest with 200; it keeps the arrival time of every request.
struct HttpReceiver {
    endpoint: String,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

fn http_receiver(script: Vec<String>) -> HttpReceiver {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(Mutex::new(script.into_iter()));
    let seen = Arc::clone(&arrivals);
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let (seen, script) = (Arc::clone(&seen), Arc::clone(&script));
            std::thread::spawn(move || serve(conn, &seen, &script));
        }
    });
    HttpReceiver { endpoint, arrivals }
}

fn serve(
    conn: std::net::TcpStream,
    seen: &Mutex<Vec<Instant>>,
    script: &Mutex<std::vec::IntoIter<String>>,
) {
    let mut reader = BufReader::new(conn);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.lock().unwrap().push(Instant::now());
        let head = script.lock().unwrap().next();
        let answer = match head {
            Some(head) => format!("{head}\r\nContent-Length: 0\r\n\r\n").into_bytes(),
            None => {
                let body = ExportMetricsServiceResponse::default().encode_to_vec();
                let mut a = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n\
                     Content-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                a.extend(body);
                a
            }
        };
        if reader.get_mut().write_all(&answer).is_err() {
            return;
        }
    }
}

fn gap(arrivals: &[Instant]) -> Duration {
    arrivals[1] - arrivals[0]
}

#[test]
fn http_retries_exactly_the_statuses_the_specification_lists() {
    for code in [429, 502, 503, 504] {
        let r = http_receiver(vec![format!("HTTP/1.1 {code} Try Again")]);
        let c = export_once(Protocol::HttpProtobuf, &r.endpoint, None);
        assert!(delivered(&c), "{code}: {c:?}");
        assert_eq!(r.arrivals.lock().unwrap().len(), 2, "{code}");
        assert_eq!(c.retries, 1, "{code}");
    }
    for code in [400, 401, 403, 404, 413, 500] {
        let r = http_receiver(vec![format!("HTTP/1.1 {code} No")]);
        let c = export_once(Protocol::HttpProtobuf, &r.endpoint, None);
        assert!(given_up(&c), "{code}: {c:?}");
        assert_eq!(r.arrivals.lock().unwrap().len(), 1, "{code} was retried");
        assert_eq!(c.retries, 0, "{code}");
        assert!(c.last_error.unwrap().contains(&code.to_string()));
    }
}

#[test]
fn http_retry_after_in_seconds_is_waited_for() {
    // Our own first backoff is at most 250 ms: a gap of 2 s is the server's.
    let r = http_receiver(vec![
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2".into()
    ]);
    let c = export_once(Protocol::HttpProtobuf, &r.endpoint, None);
    assert!(delivered(&c), "{c:?}");
    let arrivals = r.arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 2);
    assert!(
        gap(&arrivals) >= Duration::from_secs(2),
        "{:?}",
        gap(&arrivals)
    );
}

#[test]
fn http_retry_after_as_a_date_is_waited_for() {
    // Whole seconds: 3 s ahead is at least 2 s ahead once formatted.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
    let r = http_receiver(vec![format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {date}"
    )]);
    let c = export_once(Protocol::HttpProtobuf, &r.endpoint, None);
    assert!(delivered(&c), "{c:?}");
    let arrivals = r.arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 2);
    assert!(
        gap(&arrivals) >= Duration::from_secs(1),
        "{:?}",
        gap(&arrivals)
    );
}

#[test]
fn a_wait_beyond_what_is_left_gives_up_at_once() {
    let far = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    for value in ["3600".to_string(), far] {
        let r = http_receiver(vec![format!(
            "HTTP/1.1 429 Slow Down\r\nRetry-After: {value}"
        )]);
        let c = export_once(Protocol::HttpProtobuf, &r.endpoint, None);
        assert!(given_up(&c), "{value}: {c:?}");
        assert_eq!(r.arrivals.lock().unwrap().len(), 1, "{value}");
        assert_eq!(c.retries, 0);
        let error = c.last_error.unwrap();
        assert!(error.contains("asked to wait"), "{error}");
    }
}

/// google.rpc.Status with one google.protobuf.Any, as a collector writes it into
/// grpc-status-details-bin.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

fn with_retry_info(code: tonic::Code, seconds: i64) -> tonic::Status {
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration { seconds, nanos: 0 }),
    };
    let details = RpcStatus {
        code: code as i32,
        message: "over quota".into(),
        details: vec![ProtoAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: info.encode_to_vec(),
        }],
    };
    tonic::Status::with_details(code, "over quota", details.encode_to_vec().into())
}

/// An OTLP/gRPC metrics receiver failing the first calls with the scripted statuses.
#[derive(Clone)]
struct GrpcScript {
    script: Arc<Mutex<std::vec::IntoIter<tonic::Status>>>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

#[tonic::async_trait]
impl MetricsService for GrpcScript {
    async fn export(
        &self,
        _: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.arrivals.lock().unwrap().push(Instant::now());
        match self.script.lock().unwrap().next() {
            Some(status) => Err(status),
            None => Ok(tonic::Response::new(ExportMetricsServiceResponse::default())),
        }
    }
}

/// Serves until dropped (the runtime ends with it).
struct GrpcReceiver {
    endpoint: String,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    _runtime: tokio::runtime::Runtime,
}

fn grpc_receiver(script: Vec<tonic::Status>) -> GrpcReceiver {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let service = GrpcScript {
        script: Arc::new(Mutex::new(script.into_iter())),
        arrivals: Arc::default(),
    };
    let arrivals = Arc::clone(&service.arrivals);
    runtime.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    GrpcReceiver {
        endpoint,
        arrivals,
        _runtime: runtime,
    }
}

#[test]
fn grpc_retries_the_specification_codes_only() {
    use tonic::Code;
    for code in [
        Code::Cancelled,
        Code::DeadlineExceeded,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unavailable,
        Code::DataLoss,
    ] {
        let r = grpc_receiver(vec![tonic::Status::new(code, "try again")]);
        let c = export_once(Protocol::Grpc, &r.endpoint, None);
        assert!(delivered(&c), "{code:?}: {c:?}");
        assert_eq!(r.arrivals.lock().unwrap().len(), 2, "{code:?}");
    }
    // RESOURCE_EXHAUSTED without a RetryInfo: the server did not say it can recover.
    for code in [
        Code::ResourceExhausted,
        Code::InvalidArgument,
        Code::Unauthenticated,
        Code::Internal,
    ] {
        let r = grpc_receiver(vec![tonic::Status::new(code, "no")]);
        let c = export_once(Protocol::Grpc, &r.endpoint, None);
        assert!(given_up(&c), "{code:?}: {c:?}");
        assert_eq!(r.arrivals.lock().unwrap().len(), 1, "{code:?} was retried");
        assert_eq!(c.retries, 0);
    }
}

#[test]
fn grpc_retry_info_makes_resource_exhausted_retryable_and_sets_the_wait() {
    let r = grpc_receiver(vec![with_retry_info(tonic::Code::ResourceExhausted, 2)]);
    let c = export_once(Protocol::Grpc, &r.endpoint, None);
    assert!(delivered(&c), "{c:?}");
    assert_eq!(c.retries, 1);
    let arrivals = r.arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 2);
    // Our own first backoff is at most 250 ms: a gap of 2 s is the server's.
    assert!(
        gap(&arrivals) >= Duration::from_secs(2),
        "{:?}",
        gap(&arrivals)
    );
    drop(arrivals);

    let r = grpc_receiver(vec![with_retry_info(tonic::Code::Unavailable, 3600)]);
    let c = export_once(Protocol::Grpc, &r.endpoint, None);
    assert!(given_up(&c), "{c:?}");
    assert_eq!(r.arrivals.lock().unwrap().len(), 1);
    assert!(c.last_error.unwrap().contains("asked to wait"));
}

#[test]
fn an_untrusted_certificate_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::tls::pki(dir.path());
    for (receiver, protocol) in [
        (common::otlp::https(&pki), Protocol::HttpProtobuf),
        (common::otlp::grpcs(&pki), Protocol::Grpc),
    ] {
        // No CA given: the system roots do not know the test CA.
        let c = export_once(protocol, &receiver.endpoint, None);
        assert!(given_up(&c), "{protocol:?}: {c:?}");
        assert_eq!(c.retries, 0, "{protocol:?}: a certificate was retried");
        let error = c.last_error.unwrap();
        assert!(error.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"), "{error}");
        // With the CA the same receiver is trusted: the refusal was the certificate's.
        let ca = std::fs::read(&pki.ca_file).unwrap();
        let c = export_once(protocol, &receiver.endpoint, Some(ca));
        assert!(delivered(&c), "{protocol:?}: {c:?}");
    }
}
