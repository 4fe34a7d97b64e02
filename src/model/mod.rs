//! The telemetry model: decoded events → OpenTelemetry spans, metrics and log records, under
//! one OTLP resource per traced process (built as OTLP messages, as the Collector does, since
//! the SDK's one-resource-per-provider does not fit an agent that speaks for many processes).
pub mod attrs;
pub mod audit_args;
pub(crate) mod ids;
pub mod logs;
pub mod metrics;
pub mod redact;
pub mod resource;
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

/// A fast, non-cryptographic hash for the maps looked up per event (keys are PIDs, thread IDs
/// and code locations, not chosen by an attacker who sees the hashes): FxHash's multiply-rotate.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        for &b in chunks.remainder() {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_i32(&mut self, i: i32) {
        self.write_u64(i as u32 as u64);
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// `HashMap<K, V, FastHash>`: see `FastHasher`.
pub type FastHash = std::hash::BuildHasherDefault<FastHasher>;
