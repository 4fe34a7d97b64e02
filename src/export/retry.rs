//! The retry policy of OTLP exports, as the OTLP specification says: which failures are worth
//! another try, how long the server asked us to wait (HTTP `Retry-After` as delta-seconds or
//! HTTP-date, gRPC `RetryInfo` in `grpc-status-details-bin`), and otherwise an exponential
//! backoff with jitter.
//! Not opentelemetry-otlp's `retry` module: that crate is not a dependency (it brings the SDK's
//! exporters and clients), and its `retry_with_backoff` owns the loop and sleeps without a way to
//! cut the wait at our flush deadline or to count each retry, and jitters with a clock hash.
use std::time::{Duration, SystemTime};

use tonic::Code;

/// Retry budget of one batch while running: no retry starts whose wait would end after it.
pub const MAX_RETRY_ELAPSED: Duration = Duration::from_secs(60);
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A `Retry-After` value is at most 29 bytes (an IMF-fixdate); longer ones are not read.
const MAX_RETRY_AFTER_LEN: usize = 64;
/// `grpc-status-details-bin` larger than this is not decoded (a RetryInfo is a few bytes).
const MAX_STATUS_DETAILS_LEN: usize = 16 * 1024;

/// The OTLP/HTTP status codes worth another try.
pub fn http_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// The wait a `Retry-After` value asks for: delta-seconds, or an HTTP-date (all three forms of
/// RFC 9110; a date already past asks for no wait). None: absent or unreadable.
pub fn retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    if value.len() > MAX_RETRY_AFTER_LEN {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is a very long wait, not an unreadable header.
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What a failed gRPC export says about retrying.
#[derive(Debug, PartialEq)]
pub struct GrpcVerdict {
    pub retryable: bool,
    /// The server's RetryInfo.retry_delay, when the failure is retryable and it gave one.
    pub delay: Option<Duration>,
}

/// The specification's retryable codes; RESOURCE_EXHAUSTED only when the server says recovery
/// is possible by attaching a RetryInfo. `details` is the status's `grpc-status-details-bin`.
pub fn grpc_verdict(code: Code, details: &[u8]) -> GrpcVerdict {
    let info = retry_info(details);
    let retryable = match code {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => info.is_some(),
        _ => false,
    };
    GrpcVerdict {
        retryable,
        delay: info.flatten().filter(|_| retryable),
    }
}

/// google.rpc.Status, as far as RetryInfo needs it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

/// google.protobuf.Any.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// google.rpc.RetryInfo.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// google.protobuf.Duration.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// None: no RetryInfo; Some(None): a RetryInfo without a delay; Some(Some(d)): wait d.
fn retry_info(details: &[u8]) -> Option<Option<Duration>> {
    use prost::Message;
    if details.is_empty() || details.len() > MAX_STATUS_DETAILS_LEN {
        return None;
    }
    let status = RpcStatus::decode(details).ok()?;
    let any = status
        .details
        .iter()
        .find(|a| a.type_url.rsplit('/').next() == Some("google.rpc.RetryInfo"))?;
    let info = RetryInfo::decode(any.value.as_slice()).ok()?;
    Some(info.retry_delay.map(|d| {
        // A negative delay asks for none.
        Duration::from_secs(d.seconds.max(0) as u64)
            + Duration::from_nanos(d.nanos.clamp(0, 999_999_999) as u64)
    }))
}

/// Exponential backoff of one batch: 250 ms doubling to 5 s, each wait jittered.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: INITIAL_BACKOFF,
        }
    }
}

impl Backoff {
    /// The wait before the next try: the server's delay when it asked for one, but never less
    /// than our own jittered backoff (a server answering `Retry-After: 0` must not make us spin).
    pub fn wait(&mut self, asked: Option<Duration>) -> Duration {
        let own = jittered(self.next, fastrand::f64());
        self.next = (self.next * 2).min(MAX_BACKOFF);
        asked.map_or(own, |a| a.max(own))
    }
}

/// `base` scaled into [base/2, base] by `unit` in [0, 1]: exporters that failed together (a
/// collector restart) do not all come back at the same instant, and the wait still grows.
pub fn jittered(base: Duration, unit: f64) -> Duration {
    base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// What to say when a send failed on the collector's certificate (None: it did not). Found by
/// the error's type in the cause chain (rustls's verdict), not by its text. Retrying cannot fix
/// a certificate, so such a failure is not retried.
pub fn certificate_refused(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(rustls::Error::InvalidCertificate(why)) = c.downcast_ref::<rustls::Error>() {
            return Some(match why {
                rustls::CertificateError::UnknownIssuer => {
                    "the collector's certificate is not trusted: set \
                     OTEL_EXPORTER_OTLP_CERTIFICATE to the PEM file of its CA"
                }
                // Expired, not yet valid, or for another name: the CA file would not help.
                _ => "the collector's certificate was refused (see the reason above)",
            });
        }
        // io::Error's source() skips the error it wraps (reqwest nests two): step into it.
        cause = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn at(s: &str) -> SystemTime {
        httpdate::parse_http_date(s).unwrap()
    }

    #[test]
    fn retry_after_reads_seconds_and_all_three_date_forms() {
        let now = at("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(retry_after(b"120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(b" 0 ", now), Some(Duration::ZERO));
        let later = Some(Duration::from_secs(23));
        assert_eq!(retry_after(b"Sun, 06 Nov 1994 08:50:00 GMT", now), later);
        assert_eq!(retry_after(b"Sunday, 06-Nov-94 08:50:00 GMT", now), later);
        assert_eq!(retry_after(b"Sun Nov  6 08:50:00 1994", now), later);
        // A date already past: retry without waiting for the server.
        assert_eq!(
            retry_after(b"Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(b"99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_refuses_what_is_neither_form() {
        let now = SystemTime::UNIX_EPOCH;
        for bad in [
            &b""[..],
            b"-5",
            b"1.5",
            b"soon",
            b"Sun, 06 Nov 1994 25:00:00 GMT",
            b"\xff\xfe",
            &[b'1'; 65],
        ] {
            assert_eq!(retry_after(bad, now), None, "{bad:?}");
        }
    }

    fn details(type_url: &str, delay: Option<(i64, i32)>) -> Vec<u8> {
        let info = RetryInfo {
            retry_delay: delay.map(|(seconds, nanos)| ProtoDuration { seconds, nanos }),
        };
        RpcStatus {
            details: vec![ProtoAny {
                type_url: type_url.into(),
                value: info.encode_to_vec(),
            }],
        }
        .encode_to_vec()
    }

    const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";

    #[test]
    fn grpc_codes_follow_the_specification() {
        for code in [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ] {
            assert!(grpc_verdict(code, &[]).retryable, "{code:?}");
        }
        for code in [
            Code::Unknown,
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Unimplemented,
            Code::Internal,
            Code::ResourceExhausted,
        ] {
            assert!(!grpc_verdict(code, &[]).retryable, "{code:?}");
        }
    }

    #[test]
    fn retry_info_makes_resource_exhausted_retryable_and_sets_the_delay() {
        let d = details(RETRY_INFO, Some((2, 500_000_000)));
        assert_eq!(
            grpc_verdict(Code::ResourceExhausted, &d),
            GrpcVerdict {
                retryable: true,
                delay: Some(Duration::from_millis(2500))
            }
        );
        // Without a delay it still signals that recovery is possible.
        let d = details(RETRY_INFO, None);
        assert_eq!(
            grpc_verdict(Code::ResourceExhausted, &d),
            GrpcVerdict {
                retryable: true,
                delay: None
            }
        );
        let d = details(RETRY_INFO, Some((-3, -1)));
        assert_eq!(
            grpc_verdict(Code::Unavailable, &d).delay,
            Some(Duration::ZERO)
        );
        // Other detail types, garbage, and a non-retryable code with a RetryInfo.
        let other = details("type.googleapis.com/google.rpc.DebugInfo", Some((1, 0)));
        assert!(!grpc_verdict(Code::ResourceExhausted, &other).retryable);
        assert!(!grpc_verdict(Code::ResourceExhausted, b"\xff\xff\xff").retryable);
        let d = details(RETRY_INFO, Some((1, 0)));
        assert_eq!(
            grpc_verdict(Code::InvalidArgument, &d),
            GrpcVerdict {
                retryable: false,
                delay: None
            }
        );
    }

    #[test]
    fn jitter_stays_between_half_and_whole_backoff() {
        let base = Duration::from_secs(4);
        assert_eq!(jittered(base, 0.0), Duration::from_secs(2));
        assert_eq!(jittered(base, 1.0), base);
        assert_eq!(jittered(base, 7.0), base);
        let mut b = Backoff::default();
        let mut ceiling = INITIAL_BACKOFF;
        for _ in 0..10 {
            let w = b.wait(None);
            assert!(
                w >= ceiling / 2 && w <= ceiling,
                "{w:?} outside {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(MAX_BACKOFF);
        }
    }

    #[test]
    fn the_server_delay_wins_unless_shorter_than_the_backoff() {
        let mut b = Backoff::default();
        assert_eq!(
            b.wait(Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        let w = b.wait(Some(Duration::ZERO));
        assert!(w >= INITIAL_BACKOFF, "{w:?}");
    }

    #[test]
    fn certificate_refusals_are_found_by_type_in_io_errors() {
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown);
        let io = std::io::Error::other(io);
        assert!(certificate_refused(&io).unwrap().contains("CERTIFICATE"));
        let expired = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        assert!(certificate_refused(&expired)
            .unwrap()
            .contains("was refused"));
        // The words alone do not make it a certificate failure.
        let text = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        assert_eq!(certificate_refused(&text), None);
    }
}
