//! The telemetry model: decoded events → OpenTelemetry spans, metrics and log records, under
//! one OTLP resource per traced process (built as OTLP messages, as the Collector does, since
//! the SDK's one-resource-per-provider does not fit an agent that speaks for many processes).
pub mod attrs;
pub mod audit_args;
pub mod clock;
pub mod env_attributes;
pub mod fields;
pub(crate) mod ids;
pub mod location;
pub mod logs;
pub mod metrics;
pub mod points;
pub mod redact;
pub mod resource;
pub mod sampling;
pub mod spans;
pub mod wire;

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;

/// The instrumentation scope of everything pyusdt reports.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "pyusdt".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The hasher of the maps looked up per event (PIDs, thread IDs, code locations, audit event
/// and function names): FxHash, rustc's, cheaper than the default SipHash on short keys. It is
/// not keyed: a traced program that chose colliding audit event or function names would slow
/// the agent's lookups of its own entries, at most `metrics::MAX_AUDIT_SERIES` and
/// `MAX_FUNCTION_SERIES` of them per process.
pub type FastHash = rustc_hash::FxBuildHasher;
