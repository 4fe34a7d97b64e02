//! OTLP/gRPC through tonic: one lazily connected channel per signal endpoint, gzip when asked,
//! TLS for https endpoints, headers as metadata.
use std::str::FromStr;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

use super::config::{Signal, SignalConfig};
use super::{retry, Payload, SendError, StartError};
use crate::model::wire::Encoded;

struct Target {
    channel: Channel,
    config: SignalConfig,
}

pub struct GrpcTransport {
    traces: Target,
    metrics: Target,
    logs: Target,
}

impl GrpcTransport {
    /// Must run inside a tokio runtime (the channels connect in background tasks).
    pub fn new(signals: &[(Signal, SignalConfig)]) -> Result<GrpcTransport, StartError> {
        let target = |s: Signal| -> Result<Target, StartError> {
            let config = signals
                .iter()
                .find(|(x, _)| *x == s)
                .map(|(_, c)| c.clone())
                .ok_or(StartError::NoSignal(s.name()))?;
            let mut endpoint = Endpoint::from_str(&config.url)
                .map_err(|source| StartError::Endpoint {
                    url: config.url.clone(),
                    source,
                })?
                .timeout(config.timeout)
                .connect_timeout(config.timeout);
            if config.url.starts_with("https://") {
                // System roots, plus the configured CA's certificates. Verification is always on.
                // tonic refuses to connect when the system has no roots at all, even with a CA
                // given: look first (a minimal image may carry only the private CA).
                let system_roots = !rustls_native_certs::load_native_certs().certs.is_empty();
                let mut tls = ClientTlsConfig::new();
                match (&config.ca_pem, system_roots) {
                    (Some(pem), true) => {
                        tls = tls
                            .with_native_roots()
                            .ca_certificate(Certificate::from_pem(pem))
                    }
                    (Some(pem), false) => tls = tls.ca_certificate(Certificate::from_pem(pem)),
                    (None, true) => tls = tls.with_native_roots(),
                    (None, false) => return Err(StartError::NoSystemRoots(config.url.clone())),
                }
                endpoint = endpoint.tls_config(tls).map_err(|source| StartError::Tls {
                    url: config.url.clone(),
                    source,
                })?;
            }
            for (k, v) in &config.headers {
                MetadataKey::<tonic::metadata::Ascii>::from_bytes(k.as_bytes())
                    .map_err(|_| StartError::GrpcHeaderName(k.clone()))?;
                MetadataValue::try_from(v.as_str())
                    .map_err(|_| StartError::GrpcHeaderValue(k.clone()))?;
            }
            Ok(Target {
                channel: endpoint.connect_lazy(),
                config,
            })
        };
        Ok(GrpcTransport {
            traces: target(Signal::Traces)?,
            metrics: target(Signal::Metrics)?,
            logs: target(Signal::Logs)?,
        })
    }

    pub async fn send(&mut self, payload: &Payload) -> Result<u64, SendError> {
        // One arm per signal: the three generated clients share no trait.
        macro_rules! export {
            ($target:expr, $client:ident, $request:expr, $rejected:ident) => {{
                let t = &$target;
                let mut c = $client::new(t.channel.clone());
                if t.config.gzip {
                    c = c.send_compressed(CompressionEncoding::Gzip);
                }
                let resp = c
                    .export(request($request.clone(), &t.config))
                    .await
                    .map_err(status_error)?;
                Ok(resp
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| p.$rejected.max(0) as u64))
            }};
        }
        match payload {
            Payload::Traces(r) => {
                let resp: ExportTraceServiceResponse =
                    unary(&self.traces, r, TRACE_SERVICE, TRACE_EXPORT).await?;
                Ok(resp
                    .partial_success
                    .map_or(0, |p| p.rejected_spans.max(0) as u64))
            }
            Payload::Metrics(r) => {
                export!(self.metrics, MetricsServiceClient, r, rejected_data_points)
            }
            Payload::Logs(r) => {
                let resp: ExportLogsServiceResponse =
                    unary(&self.logs, r, LOGS_SERVICE, LOGS_EXPORT).await?;
                Ok(resp
                    .partial_success
                    .map_or(0, |p| p.rejected_log_records.max(0) as u64))
            }
        }
    }
}

const TRACE_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const LOGS_SERVICE: &str = "opentelemetry.proto.collector.logs.v1.LogsService";
const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// One Export call with an already encoded request, as the generated client makes it.
async fn unary<Req, Resp>(
    t: &Target,
    request_bytes: &Encoded<Req>,
    service: &'static str,
    path: &'static str,
) -> Result<Resp, SendError>
where
    Req: Send + 'static,
    Resp: prost::Message + Default + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(t.channel.clone());
    if t.config.gzip {
        grpc = grpc.send_compressed(CompressionEncoding::Gzip);
    }
    grpc.ready().await.map_err(|e| {
        status_error(tonic::Status::unknown(format!(
            "Service was not ready: {e}"
        )))
    })?;
    let codec = tonic_prost::ProstCodec::<Encoded<Req>, Resp>::default();
    let mut req = request(request_bytes.clone(), &t.config);
    req.extensions_mut()
        .insert(tonic::GrpcMethod::new(service, "Export"));
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let resp = grpc.unary(req, path, codec).await.map_err(status_error)?;
    Ok(resp.into_inner())
}

fn request<T>(message: T, config: &SignalConfig) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(config.timeout);
    let md: &mut MetadataMap = req.metadata_mut();
    for (k, v) in &config.headers {
        // Validated in `new`.
        if let (Ok(key), Ok(mut value)) = (
            MetadataKey::from_bytes(k.as_bytes()),
            MetadataValue::try_from(v.as_str()),
        ) {
            // Sensitive: shown as such by Debug (never in a log), never HPACK-indexed.
            value.set_sensitive(true);
            md.insert(key, value);
        }
    }
    req
}

/// Retryable, and after how long, as `retry` decides from the code and the status details.
fn status_error(status: tonic::Status) -> SendError {
    let verdict = retry::grpc_verdict(status.code(), status.details());
    // Transport failures carry their cause (refused, TLS alert …) in the source chain only.
    // The status's own Display dumps that chain in Debug form: its message, then the sources.
    let mut parts = vec![status.message().to_string()];
    let mut source = std::error::Error::source(&status);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    let cause = parts.join(": ");
    let message = format!("gRPC {:?}: {cause}", status.code());
    match retry::certificate_refused(&status) {
        // Retrying cannot make a certificate trusted.
        Some(hint) => SendError {
            retryable: false,
            message: format!("{message}; {hint}"),
            retry_after: None,
        },
        None => SendError {
            retryable: verdict.retryable,
            message,
            retry_after: verdict.delay,
        },
    }
}
