//! Attribute and metric names (the contract with dashboards and alerts) and `KeyValue`
//! constructors. Names come from `opentelemetry-semantic-conventions` (its development-stage
//! names behind `semconv_experimental`) wherever it has them; the names it lacks are below,
//! each saying why.
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};

pub use opentelemetry_semantic_conventions::attribute::{
    CODE_FILE_PATH, CODE_FUNCTION_NAME, CODE_LINE_NUMBER, CONTAINER_ID, CPYTHON_GC_GENERATION,
    HOST_NAME, K8S_CONTAINER_NAME, K8S_CRONJOB_NAME, K8S_DAEMONSET_NAME, K8S_DEPLOYMENT_NAME,
    K8S_JOB_NAME, K8S_NAMESPACE_NAME, K8S_NODE_NAME, K8S_POD_NAME, K8S_POD_UID,
    K8S_REPLICASET_NAME, K8S_STATEFULSET_NAME, PROCESS_COMMAND_LINE, PROCESS_EXECUTABLE_NAME,
    PROCESS_EXECUTABLE_PATH, PROCESS_PID, PROCESS_RUNTIME_NAME, PROCESS_RUNTIME_VERSION,
    SERVICE_NAME, SERVICE_VERSION, THREAD_ID,
};
pub use opentelemetry_semantic_conventions::metric::CPYTHON_GC_COLLECTIONS;

/// A GC span's generation: the conventions' attribute of the `cpython.gc.*` metrics.
pub const GC_GENERATION: &str = CPYTHON_GC_GENERATION;
/// A GC span's objects freed. The conventions name only the metric (collected and
/// uncollectable apart); the marker reports their sum, per collection, as this attribute.
pub const GC_COLLECTED_OBJECTS: &str = "cpython.gc.collected_objects";
/// Imports and audit events have no conventions: pyusdt's names, in the `cpython.` namespace
/// the conventions use for the interpreter's own metrics.
pub const IMPORT_MODULE: &str = "cpython.import.module";
pub const IMPORT_FOUND: &str = "cpython.import.found";
pub const AUDIT_EVENT: &str = "cpython.audit.event";
/// Where a GC or import span, or an audit record, was seen: `usdt` (the marker),
/// `symbol_table`, `exported_symbol` or `derived` (hook points of builds without markers).
pub const SIGNAL_SOURCE: &str = "pyusdt.signal.source";

pub fn string(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

pub fn int(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

pub fn double(key: &str, value: f64) -> KeyValue {
    kv(key, Value::DoubleValue(value))
}

pub fn boolean(key: &str, value: bool) -> KeyValue {
    kv(key, Value::BoolValue(value))
}

pub fn any_string(value: impl Into<String>) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(value.into())),
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// Namespaces (as Prometheus label prefixes, dots sanitised) of the attributes that pyusdt's
/// metric points carry, and single names: a resource attribute chosen by a traced process
/// may not take these label names, or it would merge into a point's own label on `/metrics`.
const POINT_LABEL_PREFIXES: [&str; 5] = ["cpython_", "code_", "thread_", "pyusdt_", "otel_"];
const POINT_LABEL_NAMES: [&str; 2] = ["outcome", "reason"];

/// Whether `label` (a sanitised attribute name) is, or may become, a metric point's label.
pub fn is_point_attribute_label(label: &str) -> bool {
    POINT_LABEL_NAMES.contains(&label) || POINT_LABEL_PREFIXES.iter().any(|p| label.starts_with(p))
}

/// The Prometheus label name of an attribute (`k8s.pod.name` → `k8s_pod_name`):
/// `[a-zA-Z_][a-zA-Z0-9_]*`, also the rule for Prometheus metric names.
pub fn label_name(attribute: &str) -> String {
    let mut out: String = attribute
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_point_attribute_is_in_a_reserved_namespace() {
        for name in [
            super::GC_GENERATION,
            super::GC_COLLECTED_OBJECTS,
            super::IMPORT_MODULE,
            super::IMPORT_FOUND,
            super::AUDIT_EVENT,
            super::THREAD_ID,
            super::CODE_FUNCTION_NAME,
            super::CODE_FILE_PATH,
            super::CODE_LINE_NUMBER,
            "cpython.marker",
            "otel.signal",
            "otel.metric.overflow",
            "outcome",
            "reason",
            "pyusdt.function_markers",
            "pyusdt.record",
        ] {
            let label = super::label_name(name);
            assert!(super::is_point_attribute_label(&label), "{name}");
        }
    }
}
