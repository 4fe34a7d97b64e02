//! OTLP/HTTP with protobuf bodies through reqwest (rustls with the ring provider), gzip when
//! asked; which answers are retried, and after how long, is `retry`'s decision.
use std::io::Write;
use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::bytes::Bytes;
use prost::Message;

use super::config::{Signal, SignalConfig};
use super::{retry, Payload, SendError, StartError};

pub struct HttpTransport {
    /// One client per signal: each may trust its own CA (OTEL_EXPORTER_OTLP_<SIGNAL>_CERTIFICATE).
    signals: Vec<(Signal, SignalConfig, reqwest::Client)>,
}

impl HttpTransport {
    pub fn new(signals: &[(Signal, SignalConfig)]) -> Result<HttpTransport, StartError> {
        // reqwest is built without a default crypto provider: use ring, as tonic does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let signals = signals
            .iter()
            .map(|(signal, config)| Ok((*signal, config.clone(), client(config)?)))
            .collect::<Result<_, StartError>>()?;
        Ok(HttpTransport { signals })
    }

    pub async fn send(&mut self, payload: &Payload) -> Result<u64, SendError> {
        let signal = payload.signal();
        let Some((_, config, client)) = self.signals.iter().find(|(s, _, _)| *s == signal) else {
            return Err(fatal(format!("no endpoint for {}", signal.name())));
        };
        // Spans and log records are already protobuf (model::wire): sent as they are.
        let body: Bytes = match payload {
            Payload::Traces(r) => r.body(),
            Payload::Metrics(r) => r.encode_to_vec().into(),
            Payload::Logs(r) => r.body(),
        };
        let mut req = client
            .post(&config.url)
            .timeout(config.timeout)
            .header("content-type", "application/x-protobuf");
        let body = if config.gzip {
            req = req.header("content-encoding", "gzip");
            gzip(&body).map_err(|e| fatal(format!("gzip: {e}")))?.into()
        } else {
            body
        };
        for (k, v) in &config.headers {
            // Sensitive: shown as such by Debug (never in a log), never HPACK-indexed.
            let mut value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| fatal(format!("OTLP header `{k}` has a value HTTP cannot carry")))?;
            value.set_sensitive(true);
            req = req.header(k.as_str(), value);
        }
        let resp = req.body(body).send().await.map_err(|e| {
            let cause = super::error_chain(&e);
            match retry::certificate_refused(&e) {
                // Retrying cannot make a certificate trusted.
                Some(hint) => fatal(format!("POST {}: {cause}; {hint}", config.url)),
                // Connection refused, reset, timed out: the collector may come back.
                None => SendError {
                    retryable: true,
                    message: format!("POST {}: {cause}", config.url),
                    retry_after: None,
                },
            }
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| retry::retry_after(v.as_bytes(), SystemTime::now()));
        let bytes = resp.bytes().await.unwrap_or_default();
        if status.is_success() {
            let rejected = match signal {
                Signal::Traces => ExportTraceServiceResponse::decode(bytes.as_ref())
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map_or(0, |p| p.rejected_spans),
                Signal::Metrics => ExportMetricsServiceResponse::decode(bytes.as_ref())
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map_or(0, |p| p.rejected_data_points),
                Signal::Logs => ExportLogsServiceResponse::decode(bytes.as_ref())
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map_or(0, |p| p.rejected_log_records),
            };
            return Ok(rejected.max(0) as u64);
        }
        Err(SendError {
            retryable: retry::http_retryable(status.as_u16()),
            message: format!("POST {}: HTTP {status}", config.url),
            retry_after,
        })
    }
}

/// System roots, plus the configured CA's certificates. Verification is always on.
fn client(config: &SignalConfig) -> Result<reqwest::Client, StartError> {
    let mut builder = reqwest::Client::builder();
    if let Some(pem) = &config.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|source| {
            StartError::Certificate {
                url: config.url.clone(),
                source,
            }
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(StartError::HttpClient)
}

fn fatal(message: String) -> SendError {
    SendError {
        retryable: false,
        message,
        retry_after: None,
    }
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data)?;
    enc.finish()
}
