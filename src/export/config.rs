//! Export configuration: command-line flags, then the standard `OTEL_*` environment, then the
//! config file (`--config`), then defaults — the first that sets a value wins.
//!
//! Over 500 lines only with its tests (300), which check each setting's precedence.
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::metrics::Temporality;

pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
pub const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
pub const OTEL_EXPORTER_OTLP_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
pub const OTEL_EXPORTER_OTLP_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
pub const OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: &str =
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
pub const OTEL_METRIC_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
pub const OTEL_BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
pub const OTEL_BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
pub const OTEL_BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";

/// The three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    fn env_infix(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
            Signal::Logs => "LOGS",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Where and how one signal is sent. Its Debug shows header names, never their values (API
/// keys).
#[derive(Clone, PartialEq)]
pub struct SignalConfig {
    pub protocol: Protocol,
    /// Full URL: for HTTP including `/v1/<signal>`, for gRPC the server's address.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub gzip: bool,
    /// PEM certificates trusted for this endpoint besides the system's roots (a private CA).
    pub ca_pem: Option<Vec<u8>>,
}

/// Header names with their values redacted, for Debug.
pub(super) struct RedactedHeaders<'a>(pub(super) Vec<&'a str>);

impl fmt::Debug for RedactedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|k| (k, "<redacted>")))
            .finish()
    }
}

impl fmt::Debug for SignalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("SignalConfig")
            .field("protocol", &self.protocol)
            .field("url", &self.url)
            .field("headers", &RedactedHeaders(names))
            .field("timeout", &self.timeout)
            .field("gzip", &self.gzip)
            .field("ca_pem_bytes", &self.ca_pem.as_ref().map(Vec::len))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExporterKind {
    /// OTLP to a collector.
    Otlp(Vec<(Signal, SignalConfig)>),
    /// No OpenTelemetry export: the console stream and summary only.
    Console,
    /// OTLP/JSON lines, one Export…ServiceRequest per line (the Collector's file exporter format).
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    pub exporter: ExporterKind,
    pub temporality: Temporality,
    pub metric_interval: Duration,
    pub schedule_delay: Duration,
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    /// Globs of audit event names exported as log records.
    pub audit_log_events: String,
    /// Decode the first arguments of common audit events into log attributes.
    pub audit_args: bool,
    pub resource_command_line: bool,
}

/// What the command line says (None: not given).
#[derive(Debug, Clone, Default)]
pub struct ExportFlags {
    pub exporter: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub otlp_file: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub audit_log_events: Option<String>,
    pub audit_args: bool,
    pub resource_command_line: bool,
}

pub use super::config_file::{
    read_file, FileAudit, FileBatch, FileConfig, FileMetrics, FileOtlp, FileResource,
};

/// A setting pyusdt cannot use, with what to give instead.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read --config {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--config {}: {source}", path.display())]
    ParseFile {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{name}={value}: expected milliseconds")]
    Milliseconds { name: String, value: String },
    #[error("{name}={value}: expected a positive integer")]
    Count { name: String, value: String },
    #[error("--otlp-protocol: {0}")]
    ProtocolFlag(Box<ConfigError>),
    #[error(
        "--otlp-file is written only by the file exporter, and the exporter is `{0}`: drop \
         --otlp-file, or use --exporter file"
    )]
    FileWithoutFileExporter(String),
    #[error("--exporter file needs --otlp-file PATH (or `file` in --config)")]
    FileExporterWithoutPath,
    #[error("mixing grpc and http/protobuf between signals is not supported")]
    MixedProtocols,
    #[error("unknown exporter `{0}`: choose otlp, console or file")]
    UnknownExporter(String),
    #[error("{OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE}={0}: expected cumulative, delta or lowmemory")]
    Temporality(String),
    #[error(transparent)]
    AuditPatterns(#[from] crate::globs::PatternError),
    #[error("OTLP protocol http/json is not supported: use http/protobuf or grpc")]
    JsonProtocol,
    #[error("unknown OTLP protocol `{0}`: use grpc or http/protobuf")]
    UnknownProtocol(String),
    #[error(
        "OTLP endpoint `{0}` must start with http:// or https:// (e.g. http://127.0.0.1:4318)"
    )]
    Endpoint(String),
    #[error("OTLP header name `{0}` is not a valid HTTP header name")]
    HeaderName(String),
    #[error("OTLP header `{0}` has control characters in its value")]
    HeaderValue(String),
    #[error("OTLP timeout `{0}`: expected milliseconds")]
    Timeout(String),
    #[error("OTLP compression `{0}`: use gzip or none")]
    Compression(String),
    #[error(
        "{0} (client certificates for mutual TLS) is not supported yet; terminate mutual TLS \
         in a local Collector and export to it"
    )]
    ClientCertificate(String),
    #[error("OTLP CA certificate {} ({source_name}): {problem}", path.display())]
    Certificate {
        path: PathBuf,
        /// Where the path was given (the variable, or the configuration file).
        source_name: String,
        problem: String,
    },
}

impl ExportConfig {
    /// Resolves the configuration. `env` looks up environment variables (std::env::var in
    /// production, a map in tests).
    pub fn resolve(
        flags: &ExportFlags,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ExportConfig, ConfigError> {
        let file = match &flags.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let ms = |name: &str, v: Option<String>| -> Result<Option<Duration>, ConfigError> {
            v.map(|s| {
                s.trim()
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| ConfigError::Milliseconds {
                        name: name.into(),
                        value: s.clone(),
                    })
            })
            .transpose()
        };
        let count = |name: &str, v: Option<String>| -> Result<Option<usize>, ConfigError> {
            v.map(|s| {
                s.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| ConfigError::Count {
                        name: name.into(),
                        value: s.clone(),
                    })
            })
            .transpose()
        };

        let any_endpoint = flags.otlp_endpoint.is_some()
            || env(OTEL_EXPORTER_OTLP_ENDPOINT).is_some()
            || Signal::ALL
                .iter()
                .any(|s| env(&format!("OTEL_EXPORTER_OTLP_{}_ENDPOINT", s.env_infix())).is_some())
            || file.otlp.endpoint.is_some();
        // A flag that would otherwise be ignored silently is an error, or says what it means.
        if let Some(p) = &flags.otlp_protocol {
            parse_protocol(p).map_err(|e| ConfigError::ProtocolFlag(Box::new(e)))?;
        }
        let kind = flags
            .exporter
            .clone()
            .or(file.exporter.clone())
            .unwrap_or_else(|| {
                if flags.otlp_file.is_some() {
                    "file"
                } else if any_endpoint {
                    "otlp"
                } else {
                    "console"
                }
                .into()
            });
        if flags.otlp_file.is_some() && kind != "file" {
            return Err(ConfigError::FileWithoutFileExporter(kind));
        }
        let exporter = match kind.as_str() {
            "console" => ExporterKind::Console,
            "file" => ExporterKind::File(
                flags
                    .otlp_file
                    .clone()
                    .or(file.file.clone())
                    .ok_or(ConfigError::FileExporterWithoutPath)?,
            ),
            "otlp" => {
                let signals: Vec<(Signal, SignalConfig)> = Signal::ALL
                    .iter()
                    .map(|&s| Ok((s, signal_config(s, flags, &file, &env)?)))
                    .collect::<Result<_, ConfigError>>()?;
                if signals
                    .iter()
                    .any(|(_, c)| c.protocol != signals[0].1.protocol)
                {
                    return Err(ConfigError::MixedProtocols);
                }
                ExporterKind::Otlp(signals)
            }
            other => return Err(ConfigError::UnknownExporter(other.into())),
        };

        let temporality = match env(OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE)
            .or(file.metrics.temporality.clone())
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("cumulative") => Temporality::Cumulative,
            // lowmemory: delta for counters and histograms, which is all pyusdt exports.
            Some("delta") | Some("lowmemory") => Temporality::Delta,
            Some(other) => return Err(ConfigError::Temporality(other.into())),
        };
        let audit_log_events = flags
            .audit_log_events
            .clone()
            .or(file.audit.log_events.as_ref().map(|v| v.join(",")))
            .unwrap_or_else(|| "*".into());
        crate::model::logs::AuditFilter::parse(&audit_log_events)?;
        Ok(ExportConfig {
            exporter,
            temporality,
            metric_interval: ms(
                OTEL_METRIC_EXPORT_INTERVAL,
                env(OTEL_METRIC_EXPORT_INTERVAL),
            )?
            .or(file.metrics.interval_ms.map(Duration::from_millis))
            .unwrap_or(Duration::from_secs(60)),
            schedule_delay: ms(OTEL_BSP_SCHEDULE_DELAY, env(OTEL_BSP_SCHEDULE_DELAY))?
                .or(file.batch.schedule_delay_ms.map(Duration::from_millis))
                .unwrap_or(Duration::from_secs(5)),
            max_queue_size: count(OTEL_BSP_MAX_QUEUE_SIZE, env(OTEL_BSP_MAX_QUEUE_SIZE))?
                .or(file.batch.max_queue_size)
                .unwrap_or(2048),
            max_export_batch_size: count(
                OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
                env(OTEL_BSP_MAX_EXPORT_BATCH_SIZE),
            )?
            .or(file.batch.max_export_batch_size)
            .unwrap_or(512),
            audit_log_events,
            audit_args: flags.audit_args || file.audit.args.unwrap_or(false),
            resource_command_line: flags.resource_command_line
                || file.resource.command_line.unwrap_or(false),
        })
    }
}

impl ExportConfig {
    /// A warning when OTLP headers (API keys, tokens) would cross the network unencrypted:
    /// sent over plain http:// to a host other than this one's loopback (localhost,
    /// 127.0.0.0/8, ::1 are exempt: that traffic never leaves the host). Header names only.
    pub fn clear_text_header_warning(&self) -> Option<String> {
        let ExporterKind::Otlp(signals) = &self.exporter else {
            return None;
        };
        let (mut names, mut hosts, mut which) = (Vec::new(), Vec::new(), Vec::new());
        for (signal, c) in signals {
            let Some(host) = clear_text_host(&c.url).filter(|_| !c.headers.is_empty()) else {
                continue;
            };
            which.push(signal.name());
            if !hosts.contains(&host) {
                hosts.push(host);
            }
            for (k, _) in &c.headers {
                if !names.contains(&k.as_str()) {
                    names.push(k.as_str());
                }
            }
        }
        (!which.is_empty()).then(|| {
            format!(
                "OTLP headers ({}) would be sent unencrypted over http:// to {} ({}): anyone on \
                 the network path can read them. Use an https:// endpoint, or a Collector on \
                 this host (loopback endpoints are exempt from this warning)",
                names.join(", "),
                hosts.join(", "),
                which.join(", ")
            )
        })
    }
}

/// The `host[:port]` of a plain http:// URL whose host is not a loopback name or address.
fn clear_text_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| match ip {
            std::net::IpAddr::V4(a) => a.is_loopback(),
            std::net::IpAddr::V6(a) => {
                a.is_loopback() || a.to_ipv4_mapped().is_some_and(|m| m.is_loopback())
            }
        });
    (!loopback).then_some(host_port)
}

/// `grpc` or `http/protobuf`, with what to do otherwise.
fn parse_protocol(name: &str) -> Result<Protocol, ConfigError> {
    match name.trim() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "http/json" => Err(ConfigError::JsonProtocol),
        other => Err(ConfigError::UnknownProtocol(other.into())),
    }
}

/// An endpoint as the user gave it, before /v1/<signal> is appended: an error names it as
/// given, not as derived (`not-a-url/v1/traces`).
fn check_endpoint(url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(ConfigError::Endpoint(url.into()))
    }
}

fn signal_config(
    signal: Signal,
    flags: &ExportFlags,
    file: &FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SignalConfig, ConfigError> {
    let per = |suffix: &str| {
        env(&format!(
            "OTEL_EXPORTER_OTLP_{}_{suffix}",
            signal.env_infix()
        ))
    };
    let protocol_name = flags
        .otlp_protocol
        .clone()
        .or_else(|| per("PROTOCOL"))
        .or_else(|| env(OTEL_EXPORTER_OTLP_PROTOCOL))
        .or(file.otlp.protocol.clone())
        .unwrap_or_else(|| "http/protobuf".into());
    let protocol = parse_protocol(&protocol_name)?;
    // A signal-specific endpoint is used as given; the general one gets /v1/<signal> for HTTP.
    let url = match (per("ENDPOINT"), protocol) {
        (Some(url), _) if flags.otlp_endpoint.is_none() => url,
        _ => {
            let base = flags
                .otlp_endpoint
                .clone()
                .or_else(|| env(OTEL_EXPORTER_OTLP_ENDPOINT))
                .or(file.otlp.endpoint.clone())
                .unwrap_or_else(|| match protocol {
                    Protocol::Grpc => "http://localhost:4317".into(),
                    Protocol::HttpProtobuf => "http://localhost:4318".into(),
                });
            check_endpoint(&base)?;
            match protocol {
                Protocol::Grpc => base,
                Protocol::HttpProtobuf => {
                    format!("{}/v1/{}", base.trim_end_matches('/'), signal.name())
                }
            }
        }
    };
    check_endpoint(&url)?;
    let mut headers: Vec<(String, String)> = file
        .otlp
        .headers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    for list in [env(OTEL_EXPORTER_OTLP_HEADERS), per("HEADERS")]
        .into_iter()
        .flatten()
    {
        for (k, v) in crate::model::resource::parse_resource_attributes(&list) {
            headers.retain(|(hk, _)| !hk.eq_ignore_ascii_case(&k));
            headers.push((k.to_ascii_lowercase(), v));
        }
    }
    for (k, v) in &headers {
        let name_ok = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !name_ok {
            return Err(ConfigError::HeaderName(k.clone()));
        }
        if v.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(ConfigError::HeaderValue(k.clone()));
        }
    }
    let timeout_ms = match per("TIMEOUT").or_else(|| env(OTEL_EXPORTER_OTLP_TIMEOUT)) {
        Some(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| ConfigError::Timeout(s.clone()))?,
        None => file.otlp.timeout_ms.unwrap_or(10_000),
    };
    let gzip = match per("COMPRESSION")
        .or_else(|| env(OTEL_EXPORTER_OTLP_COMPRESSION))
        .or(file.otlp.compression.clone())
        .as_deref()
        .map(str::trim)
    {
        None | Some("none") => false,
        Some("gzip") => true,
        Some(other) => return Err(ConfigError::Compression(other.into())),
    };
    // Client certificates (mutual TLS) are not implemented: refuse rather than connect without.
    for suffix in ["CLIENT_CERTIFICATE", "CLIENT_KEY"] {
        let general = format!("OTEL_EXPORTER_OTLP_{suffix}");
        if env(&general).is_some() || per(suffix).is_some() {
            return Err(ConfigError::ClientCertificate(general));
        }
    }
    let per_signal = format!("OTEL_EXPORTER_OTLP_{}_CERTIFICATE", signal.env_infix());
    let ca = per("CERTIFICATE")
        .map(|p| (PathBuf::from(p), per_signal))
        .or_else(|| {
            env(OTEL_EXPORTER_OTLP_CERTIFICATE)
                .map(|p| (PathBuf::from(p), OTEL_EXPORTER_OTLP_CERTIFICATE.to_string()))
        })
        .or_else(|| {
            file.otlp
                .certificate
                .clone()
                .map(|p| (p, "`certificate` in --config".to_string()))
        });
    let ca_pem = ca
        .map(|(path, source)| read_pem_certificates(&path, &source))
        .transpose()?;
    Ok(SignalConfig {
        protocol,
        url,
        headers,
        timeout: Duration::from_millis(timeout_ms.max(1)),
        gzip,
        ca_pem,
    })
}

/// The CA file of OTEL_EXPORTER_OTLP_CERTIFICATE: read now, so that a wrong path or a file that
/// is not PEM stops pyusdt at start-up instead of failing every export later.
fn read_pem_certificates(path: &Path, source: &str) -> Result<Vec<u8>, ConfigError> {
    let problem = |problem: String| ConfigError::Certificate {
        path: path.to_path_buf(),
        source_name: source.to_string(),
        problem,
    };
    let pem = std::fs::read(path).map_err(|e| problem(e.to_string()))?;
    // Parsed now: the gRPC client would skip a certificate it cannot parse, and then every
    // export would fail on an untrusted collector although the CA was given.
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        Ok(_) => Err(problem(
            "no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
        )),
        Err(e) => Err(problem(format!("not a valid PEM certificate: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The configuration, or the error's message as the user reads it.
    fn resolve(flags: ExportFlags, vars: &[(&str, &str)]) -> Result<ExportConfig, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ExportConfig::resolve(&flags, &move |k| map.get(k).cloned()).map_err(|e| e.to_string())
    }

    fn otlp(c: &ExportConfig, s: Signal) -> SignalConfig {
        match &c.exporter {
            ExporterKind::Otlp(v) => v.iter().find(|(x, _)| *x == s).unwrap().1.clone(),
            other => panic!("not otlp: {other:?}"),
        }
    }

    /// Flags that used to be ignored or misreported (issue 23 item 7).
    #[test]
    fn flags_are_never_ignored_silently() {
        let e = resolve(
            ExportFlags {
                otlp_endpoint: Some("not-a-url".into()),
                ..Default::default()
            },
            &[],
        )
        .unwrap_err();
        assert!(e.contains("`not-a-url` must start with http://"), "{e}");
        let e = resolve(
            ExportFlags {
                otlp_protocol: Some("bogus".into()),
                ..Default::default()
            },
            &[],
        )
        .unwrap_err();
        assert!(
            e.contains("--otlp-protocol: unknown OTLP protocol `bogus`"),
            "{e}"
        );
        let c = resolve(
            ExportFlags {
                otlp_file: Some("/tmp/out.jsonl".into()),
                ..Default::default()
            },
            &[],
        )
        .unwrap();
        assert_eq!(c.exporter, ExporterKind::File("/tmp/out.jsonl".into()));
        let e = resolve(
            ExportFlags {
                otlp_file: Some("/tmp/out.jsonl".into()),
                exporter: Some("console".into()),
                ..Default::default()
            },
            &[],
        )
        .unwrap_err();
        assert!(
            e.contains("--otlp-file is written only by the file exporter"),
            "{e}"
        );
    }

    #[test]
    fn console_without_endpoint() {
        assert_eq!(
            resolve(ExportFlags::default(), &[]).unwrap().exporter,
            ExporterKind::Console
        );
    }

    #[test]
    fn standard_environment() {
        let c = resolve(
            ExportFlags::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                (
                    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                    "http://logs:9999/custom",
                ),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,X-Tenant=t1"),
                ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-tenant=t2"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
            ],
        )
        .unwrap();
        let t = otlp(&c, Signal::Traces);
        assert_eq!(t.url, "http://collector:4318/v1/traces");
        assert_eq!(t.protocol, Protocol::HttpProtobuf);
        assert!(t.gzip);
        assert_eq!(t.timeout, Duration::from_millis(2500));
        assert!(t.headers.contains(&("api-key".into(), "a b".into())));
        assert_eq!(otlp(&c, Signal::Logs).url, "http://logs:9999/custom");
        assert!(otlp(&c, Signal::Metrics)
            .headers
            .contains(&("x-tenant".into(), "t2".into())));
        assert_eq!(c.temporality, Temporality::Delta);
    }

    #[test]
    fn grpc_endpoint_is_used_as_is_and_flags_win() {
        let flags = ExportFlags {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            otlp_protocol: Some("grpc".into()),
            ..Default::default()
        };
        let c = resolve(
            flags,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:1")],
        )
        .unwrap();
        assert_eq!(otlp(&c, Signal::Metrics).url, "http://127.0.0.1:4317");
    }

    #[test]
    fn tls_settings_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, not_pem, corrupt) = (
            dir.path().join("ca.pem"),
            dir.path().join("notes.txt"),
            dir.path().join("corrupt.pem"),
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&pem, ca.pem()).unwrap();
        std::fs::write(&not_pem, "hello").unwrap();
        std::fs::write(
            &corrupt,
            "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let with = |vars: &[(&str, &str)]| {
            let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")];
            all.extend_from_slice(vars);
            resolve(ExportFlags::default(), &all)
        };
        let pem_s = pem.to_str().unwrap();
        let c = with(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", pem_s)]).unwrap();
        assert!(otlp(&c, Signal::Logs).ca_pem.is_some());
        // The per-signal file wins for its signal only.
        let c = with(&[("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", pem_s)]).unwrap();
        assert!(otlp(&c, Signal::Traces).ca_pem.is_some());
        assert!(otlp(&c, Signal::Metrics).ca_pem.is_none());
        let e = with(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/no/such/ca.pem")]).unwrap_err();
        assert!(
            e.contains("/no/such/ca.pem") && e.contains("No such file"),
            "{e}"
        );
        let e = with(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", not_pem.to_str().unwrap())]).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = with(&[(
            "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE",
            corrupt.to_str().unwrap(),
        )])
        .unwrap_err();
        assert!(
            e.contains("not a valid PEM") && e.contains("OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE"),
            "{e}"
        );
        let e = with(&[("OTEL_EXPORTER_OTLP_CLIENT_KEY", pem_s)]).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = resolve(
            ExportFlags::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
        );
        assert!(e.unwrap_err().contains("must start with http://"));
        let e = resolve(
            ExportFlags::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
            ],
        );
        assert!(e.unwrap_err().contains("unknown OTLP protocol `thrift`"));
        let e = resolve(
            ExportFlags {
                exporter: Some("file".into()),
                ..Default::default()
            },
            &[],
        );
        assert!(e.unwrap_err().contains("--otlp-file"));
        let e = resolve(
            ExportFlags::default(),
            &[("OTEL_METRIC_EXPORT_INTERVAL", "soon")],
        );
        assert!(e.unwrap_err().contains("expected milliseconds"));
        let e = resolve(
            ExportFlags::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=x%0Ay"),
            ],
        );
        assert!(e.unwrap_err().contains("control characters"));
        let e = resolve(
            ExportFlags::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"),
                ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc"),
            ],
        );
        assert!(e.unwrap_err().contains("mixing"));
    }

    #[test]
    fn the_documented_example_parses_and_resolves() {
        let file: FileConfig = toml::from_str(include_str!("../../deploy/pyusdt.toml")).unwrap();
        assert_eq!(file.otlp.protocol.as_deref(), Some("grpc"));
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/pyusdt.toml");
        let flags = ExportFlags {
            config: Some(path.into()),
            ..Default::default()
        };
        let c = resolve(flags, &[]).unwrap();
        let t = otlp(&c, Signal::Traces);
        assert_eq!(
            (t.protocol, t.url.as_str(), t.gzip),
            (Protocol::Grpc, "http://127.0.0.1:4317", true)
        );
        assert!(c.audit_log_events.contains("subprocess.Popen"));
    }

    #[test]
    fn headers_over_plain_http_to_another_host_are_warned_of() {
        let with = |endpoint: &str| {
            resolve(
                ExportFlags::default(),
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                    ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr3t,x-team=a"),
                ],
            )
            .unwrap()
            .clear_text_header_warning()
        };
        let w = with("http://collector.example:4318").expect("a warning");
        assert!(w.contains("api-key, x-team"), "{w}");
        assert!(
            w.contains("collector.example:4318 (traces, metrics, logs)"),
            "{w}"
        );
        assert!(!w.contains("s3cr3t"), "{w}");
        let w = with("http://user@10.0.0.1:4318").expect("a warning");
        assert!(w.contains(" 10.0.0.1:4318 "), "{w}");
        for quiet in [
            "https://collector.example:4318",
            "http://localhost:4318",
            "http://LOCALHOST:4318",
            "http://127.0.0.1:4318",
            "http://127.8.9.10",
            "http://[::1]:4318",
            "http://[::ffff:127.0.0.1]:4318",
        ] {
            assert_eq!(with(quiet), None, "{quiet}");
        }
        assert!(with("http://[2001:db8::1]:4318").is_some());
        // Only signals that carry headers count.
        let c = resolve(
            ExportFlags::default(),
            &[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "https://collector.example:4318",
                ),
                (
                    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                    "http://logs.example/v1/logs",
                ),
                (
                    "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
                    "authorization=Bearer%20t0k3n",
                ),
            ],
        )
        .unwrap();
        let w = c.clear_text_header_warning().expect("a warning");
        assert!(
            w.contains("(authorization)") && w.contains("logs.example (logs)"),
            "{w}"
        );
        assert!(!w.contains("t0k3n"), "{w}");
        // No headers, nothing to warn of.
        let c = resolve(
            ExportFlags::default(),
            &[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector.example:4318",
            )],
        )
        .unwrap();
        assert_eq!(c.clear_text_header_warning(), None);
    }

    #[test]
    fn debug_never_shows_header_values() {
        let c = resolve(
            ExportFlags::default(),
            &[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "https://collector.example:4318",
                ),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=canary-4f1d"),
            ],
        )
        .unwrap();
        for shown in [format!("{c:?}"), format!("{c:#?}")] {
            assert!(!shown.contains("canary-4f1d"), "{shown}");
            assert!(shown.contains("api-key"), "the names stay: {shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        let file: FileConfig =
            toml::from_str("[otlp]\nheaders = { authorization = \"Bearer canary-77ab\" }\n")
                .unwrap();
        let shown = format!("{file:?}");
        assert!(!shown.contains("canary-77ab"), "{shown}");
        assert!(shown.contains("authorization"), "{shown}");
    }

    #[test]
    fn config_file_unknown_keys_are_errors() {
        let err = toml::from_str::<FileConfig>("[otlp]\nendpont = \"http://x\"\n").unwrap_err();
        assert!(err.to_string().contains("endpont"), "{err}");
        let ok: FileConfig = toml::from_str(
            "exporter = \"otlp\"\n[otlp]\nendpoint = \"http://x:4317\"\nprotocol = \"grpc\"\n[audit]\nlog_events = [\"open\"]\n",
        )
        .unwrap();
        assert_eq!(ok.audit.log_events.unwrap(), vec!["open"]);
    }
}
